//! What a client may hold before its request is routed: connections (how many, how long a
//! TLS handshake may take, who may speak for its address) and bytes in flight. Header sizes,
//! request ids and API keys are in [`crate::limits`] and [`crate::auth`]; rate limits in
//! [`crate::ratelimit`].

pub mod budget;
pub mod connections;
