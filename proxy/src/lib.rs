//! The gateway: one HTTPS endpoint in front of model pools. API keys, rate limits, weighted
//! and header-driven canary splits, local (in-process ONNX Runtime) and remote pools, shadow
//! comparisons and progressive rollouts.
//!
//! The modules are layers, declared below bottom first; each uses only those declared before
//! it (`scripts/module_cycles.py proxy/src 1 --layers`, run by the tests, checks it).
//! `docs/architecture.md` follows one request through them.
//!
//! - foundations: [`durable`] (files written whole, locks), [`http`] (TLS, the HTTP/1.1
//!   reader, answer coalescing, header names), [`errors`] (one error → status map),
//!   [`config`] (files → validated runtime types, the keys file)
//! - building blocks: [`predictions`] (a model's outputs read once), [`telemetry`] (metrics
//!   registry, the split observed), [`admission`] (connections, bytes in flight, header
//!   limits, API keys, rate limits), [`pools`] (remote upstreams; local pools are
//!   `inference::Pool`), [`quality`] (input drift windows, feedback joins, accuracy and the
//!   A/B verdict), [`cache`] (the prediction cache, keyed by model version and canonical
//!   inputs)
//! - the request's view: [`routing`] (the config snapshot a request sees, the split)
//! - features beside the flow: [`rollout`] (the engine and its gates), [`shadow`] (mirroring,
//!   comparison, the store, reports)
//! - the flow: [`service`] (one request, from the connection to the answer)
//! - control: [`reload`] (watching files, validating, swapping), [`ops`] (admin listener,
//!   upkeep), [`server`] (assembly: listeners, background services, shutdown)

pub mod durable;
pub mod errors;
pub mod http;

pub mod config;

pub mod predictions;
pub mod telemetry;

pub mod admission;
pub mod pools;

pub mod quality;
pub mod cache;

pub mod routing;

pub mod rollout;
pub mod shadow;

pub mod service;

pub mod reload;

pub mod ops;
pub mod server;
