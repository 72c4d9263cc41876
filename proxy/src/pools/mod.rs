//! Upstreams. Local pools are `inference::Pool` (ONNX Runtime in process, dynamic batching),
//! answered by `service::local`; [`remote`] pools forward to Open Inference Protocol servers.

pub mod remote;
