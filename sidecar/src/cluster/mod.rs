//! What the hosts know of each other: the Redis link, the live hosts and their load, who is
//! joined where, and the control bus.

pub mod control;
pub mod members;
pub mod redis;
pub mod registry;
