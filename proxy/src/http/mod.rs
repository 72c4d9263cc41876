//! The front: what a client connection speaks before the gateway knows who it is.
//!
//! - [`tls`]: rustls settings, the swappable certificate resolver, the development CA.
//! - [`h1`]: the gateway's own HTTP/1.1 reader and writer for plain requests (why it exists,
//!   with the measurement: `docs/architecture.md`); anything else goes to pingora's session.
//! - [`coalesce`]: one TLS record per answer on pingora's HTTP/1 sessions.
//! - [`names`]: header names made once.

pub mod coalesce;
pub mod h1;
pub mod names;
pub mod tls;
