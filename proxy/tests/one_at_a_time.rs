//! The gateway's integration tests whose outcome depends on this process's CPU, one module per
//! file beside this one, in one test binary where they run one at a time: each takes
//! [`common::one_at_a_time`] first.
//!
//! A gateway admits shadow copies by the spare CPU of the process it runs in
//! (`proxy/src/shadow/admission.rs`), and runs a copy on an I/O thread only when the model was
//! timed fast. These files count on copies being made: in one binary with the other tests,
//! side by side, another test's load shed them (`shadows.rs`'
//! `copies_beyond_the_waiting_bound…` failed with 119 copies dropped as `no_spare_cpu`).
//! `shadow_isolation.rs` times the primary against the shadows and keeps a binary of its own.
//!
//! Run one file's tests with `cargo test --release -p proxy --test one_at_a_time shadows::`.

mod common;

mod cache;
mod grpc;
mod grpc_pools;
mod observability;
mod quality;
mod rollouts;
mod shadows;
