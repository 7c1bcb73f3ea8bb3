//! The chat-host role (`roles.chat_host`): the relay for this host's nginx workers, the
//! publisher endpoints, presence, and the demo tokens.

pub mod demo;
pub mod presence;
pub mod publish;
pub mod relay;
