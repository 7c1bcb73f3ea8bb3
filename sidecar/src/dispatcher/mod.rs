//! The dispatcher role (`roles.dispatcher`): which host a client should join, and the
//! public counts browsers poll.

pub mod answer_cache;
pub mod channels;
pub mod join;
