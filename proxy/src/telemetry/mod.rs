//! What the gateway counts: the Prometheus registry and its series ([`metrics`]), and the
//! split served over the last minute ([`observed`], for `/admin/routes`).

pub mod cache;
pub mod metrics;
pub mod observed;
pub mod quality;
