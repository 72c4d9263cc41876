//! ONNX Runtime model pools with dynamic batching, and the Open Inference Protocol around
//! them. The gateway (`proxy/`) embeds the pools in-process; the `inference-server` binary
//! serves them over HTTP for deployments that put models on their own machines.
//!
//! - [`alloc`]: the binaries' global allocator (mimalloc).
//! - [`runtime`]: finds and loads the ONNX Runtime library, once per process.
//! - [`shapes`]: output shapes an exporter left out, given to ONNX Runtime so that it fuses.
//! - [`model`]: a model's signature from its graph; request checks against it.
//! - [`engine`]: runs one batch, sorts out its failures, counts it.
//! - [`pool`]: per-model-version worker threads, bounded queue, dynamic batching.
//! - [`batch`]: stacking requests into a batch and splitting the outputs back.
//! - [`repository`]: the `<name>/<version>/model.onnx` layout on disk.
//! - [`protocol`]: Open Inference Protocol paths, JSON and binary bodies.
//! - [`server`]: the hyper server behind `inference-server`.
//! - [`grpc`]: the same over gRPC (`inference-server --grpc-listen`).

// Layers, bottom first: each module uses only those declared before it
// (scripts/module_cycles.py inference/src 1 --layers).
pub mod alloc;
pub mod runtime;
pub mod shapes;
pub mod tensor;
pub mod error;
pub mod priority;
pub mod model;
pub mod batch;
pub mod runner;
pub mod engine;
pub mod pool;
pub mod repository;
pub mod protocol;
pub mod server;
pub mod grpc;

pub use error::InferError;
pub use model::{LoadError, ModelMetadata, NamedTensor, TensorSpec};
pub use pool::{Batching, Pool, PoolConfig, Runner};
pub use repository::ModelRepository;
pub use tensor::{DataType, Tensor, TensorData};
