//! The pools' and `inference-server`'s integration tests, one module per file beside this
//! one, in one test binary: each binary links the crate, tonic and ONNX Runtime's bindings
//! and compiles `common/` again (see `proxy/tests/end_to_end.rs` for the measurement).
//! `inline.rs` keeps its own: whether a request runs inline depends on how fast the model
//! was timed, and other tests' load in the same process would slow that timing.
//!
//! Run one file's tests with `cargo test --release -p inference --test end_to_end pool::`.

mod common;

mod parity;
mod pool;
mod server_grpc;
mod server_http;
mod server_limits;
