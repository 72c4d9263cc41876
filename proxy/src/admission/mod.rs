//! Who may come in, and with how much, before a request is routed:
//!
//! - [`connections`]: client connections from accept (the cap, the PROXY header, the TLS
//!   handshake deadline);
//! - [`limits`]: header sizes and request ids; [`budget`]: bytes in flight, in all and per key;
//! - [`auth`]: API keys → tenant (the keys file itself is `config::keys`);
//! - [`ratelimit`]: per key and tier, per address, failed keys per address; shared in Redis.

pub mod auth;
pub mod budget;
pub mod connections;
pub mod limits;
pub mod ratelimit;
