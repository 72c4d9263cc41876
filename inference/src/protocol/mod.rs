//! The Open Inference Protocol (KServe v2 REST, as Triton, KServe and MLServer speak it).

pub mod codec;
pub mod endpoint;
pub mod json;

pub use codec::{
    EncodedResponse, HEADER_LENGTH, InferRequest, InferResponse, decode_request, decode_response,
    encode_request, encode_response, select_outputs,
};
pub use endpoint::{Endpoint, ModelRef};
