//! What the gateway counts: the Prometheus registry and its series ([`metrics`]), and the
//! split served over the last minute ([`observed`], for `/admin/routes`); failed TLS
//! handshakes, counted and summed up in the log ([`handshakes`]).

pub mod cache;
pub mod handshakes;
pub mod metrics;
pub mod observed;
pub mod quality;
