//! Header names the gateway reads or writes on every request, made once.
//!
//! Looking a header up by a `&str` name parses, lower-cases and checks the name every time
//! (about 350 instructions for `x-api-key`): a `HeaderName` is only hashed.

use http::HeaderName;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_CANARY: HeaderName = HeaderName::from_static("x-canary");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_MODEL_VARIANT: HeaderName = HeaderName::from_static("x-model-variant");
pub const X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// gRPC's status, in the trailers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The binary tensor extension's `Inference-Header-Content-Length`.
pub const INFERENCE_HEADER_LENGTH: HeaderName = HeaderName::from_static(inference::protocol::HEADER_LENGTH);

#[cfg(test)]
mod tests {
    #[test]
    fn the_length_header_is_the_protocol_s() {
        assert_eq!(
            super::INFERENCE_HEADER_LENGTH.as_str(),
            inference::protocol::HEADER_LENGTH
        );
    }
}
