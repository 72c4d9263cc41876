//! The gateway's integration tests that may run side by side, one module per file beside
//! this one, in one test binary; `one_at_a_time.rs` holds those that may not.
//!
//! Why few binaries: every test binary links the whole gateway (pingora, rustls, tonic, ONNX
//! Runtime's bindings) and compiles `common/` again, and building them was the largest part
//! of CI (`cargo build --timings`, a cold build on 2 cores: 412 s of CPU for 16 binaries).
//!
//! Run one file's tests with `cargo test --release -p proxy --test end_to_end gateway::`.

mod common;

mod cli;
mod connections;
mod dns;
mod gateway;
mod hostile;
mod memory;
mod reload;
mod remote_pools;
mod shared_limits;
mod signals;
