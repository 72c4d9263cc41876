//! The Open Inference Protocol (KServe v2 REST, as Triton, KServe and MLServer speak it): the
//! one protocol layer both servers use (`inference-server` in `server.rs`, and the gateway).
//!
//! - [`endpoint`]: the paths, parsed once into an enum (which method each takes);
//! - [`codec`]: a request body into typed tensors ([`InferRequest`]) and outputs back into an
//!   answer ([`EncodedResponse`], with its content type), JSON or JSON plus raw tensors (the
//!   binary tensor extension); [`json`] holds the JSON wire types; [`tensors`] what it shares
//!   with gRPC's codec (tensor heads, raw bytes, names given twice, answer bounds);
//! - [`metadata`]: server and model metadata, readiness, Triton's model configuration, typed
//!   both ways;
//! - [`request_id`]: the `x-request-id` rule;
//! - [`body`]: reading a request body under its limits, whatever the transport;
//! - [`grpc`]: the second wire format (gRPC's `inference.GRPCInferenceService`), one more
//!   codec over the same types: it decodes into [`InferRequest`] and encodes the same outputs
//!   and metadata, with the same checks and messages.
//!
//! Each server drives its own transport (hyper's body; the gateway's reader, which also holds
//! the in-flight budget) through the same [`body::BodyReader`].

pub mod body;
pub mod codec;
pub mod endpoint;
pub mod json;
pub mod metadata;
pub mod grpc;
pub mod request_id;
pub mod tensors;

pub use codec::{
    EncodedResponse, HEADER_LENGTH, InferRequest, InferResponse, content_type, decode_request,
    decode_response, encode_request, encode_response, select_outputs,
};
pub use endpoint::{Endpoint, ModelRef};

/// Requests over this size are refused with 413 before they are read. 4 MiB holds a batch of
/// tens of thousands of rows of the bundled models in JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// Answers up to twice the largest request: with names listed once and rows bounded, only a
/// model with very large outputs reaches it.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 8 << 20;
