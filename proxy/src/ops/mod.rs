//! Operating the gateway: the admin listener ([`admin`]: metrics, health, config, reports,
//! rollouts), the CLI's client for it ([`client`]), and background upkeep ([`upkeep`]:
//! remote health checks, probes of failing local pools, eviction of idle limiter state and
//! dropped routes).

pub mod admin;
pub mod client;
pub mod upkeep;
