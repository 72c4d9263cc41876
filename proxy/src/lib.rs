//! The gateway: one HTTPS endpoint in front of model pools. API keys, rate limits, weighted
//! and header-driven canary splits, local (in-process ONNX Runtime) and remote pools.
//!
//! Request flow (see DESIGN.md): [`limits`] → [`auth`] → [`ratelimit`] → snapshot
//! ([`state`]) → [`split`] → local pool or [`remote`] pool → [`metrics`]. The pingora glue is
//! [`service`]; [`server`] assembles listeners and background upkeep. Copies of requests go
//! to shadow models through [`shadow`], which compares and stores what they answer;
//! [`rollout`] moves a canary's weight by itself, step by step, behind gates.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod coalesce;
pub mod config;
pub mod durable;
pub mod errors;
pub mod h1;
pub mod keys;
pub mod limits;
pub mod maintenance;
pub mod metrics;
pub mod names;
pub mod observed;
pub mod ratelimit;
pub mod reload;
pub mod remote;
pub mod rollout;
pub mod server;
pub mod service;
pub mod shadow;
pub mod simple;
pub mod split;
pub mod state;
pub mod tls;
