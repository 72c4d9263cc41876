//! Operating the gateway: the admin listener ([`admin`]: metrics, health, config, reports,
//! rollouts) and background upkeep ([`upkeep`]: remote health checks, probes of failing local
//! pools, eviction of idle limiter state and dropped routes).

pub mod admin;
pub mod upkeep;
