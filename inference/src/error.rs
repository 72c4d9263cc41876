//! One error type for everything a caller of the inference path can see, and one map from
//! error to HTTP status. The server and the gateway both answer with [`InferError::status`]
//! and [`InferError::body`], so a client sees the same status and JSON for the same mistake
//! whichever of the two it talks to.

use std::time::Duration;

/// Why an inference request was not answered with outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The request is malformed or does not fit the model (shape, dtype, names, values).
    #[error("{0}")]
    BadRequest(String),
    /// No such model, or no such version of it.
    #[error("{0}")]
    NotFound(String),
    /// The path exists but not with this method.
    #[error("method {method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// The body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// More rows than the model takes in one request.
    #[error("the request has {rows} rows; this model takes at most {limit} per request (send several)")]
    TooManyRows { rows: usize, limit: usize },
    /// The answer would be larger than the configured limit.
    #[error("the answer would be larger than the limit of {limit} bytes; ask for fewer rows or outputs")]
    AnswerTooLarge { limit: usize },
    /// The request's body did not arrive within the deadline (slow or stalled client).
    #[error("the request body did not arrive within {limit_ms} ms")]
    BodyTimeout { limit_ms: u64 },
    /// The client's own deadline (gRPC's `grpc-timeout`) passed before the answer was ready.
    #[error("no answer within the client's deadline of {limit_ms} ms")]
    Deadline { limit_ms: u64 },
    /// The pool's queue is full: the request was shed before any work was done on it.
    #[error("model {model} is overloaded (queue of {capacity} requests is full); retry later")]
    Overloaded { model: String, capacity: usize },
    /// The model exists but cannot serve now (loading, shutting down).
    #[error("{0}")]
    NotReady(String),
    /// ONNX Runtime failed, or a worker panicked, while running the batch this request was in.
    #[error("inference failed: {0}")]
    Internal(String),
}

impl InferError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        InferError::BadRequest(msg.into())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            InferError::BadRequest(_) => 400,
            InferError::NotFound(_) => 404,
            InferError::MethodNotAllowed { .. } => 405,
            InferError::BodyTimeout { .. } => 408,
            InferError::Deadline { .. } => 504,
            InferError::PayloadTooLarge { .. }
            | InferError::TooManyRows { .. }
            | InferError::AnswerTooLarge { .. } => 413,
            InferError::Overloaded { .. } | InferError::NotReady(_) => 503,
            InferError::Internal(_) => 500,
        }
    }

    /// How long a client should wait before retrying, for errors where a retry can succeed.
    /// One second is the smallest value `Retry-After` can express; queues drain much faster.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InferError::Overloaded { .. } | InferError::NotReady(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The JSON body every error is answered with: `{"error": "..."}`.
    pub fn body(&self) -> String {
        error_body(&self.to_string())
    }
}

/// `{"error": message}`, escaped properly.
pub fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retry_after() {
        let overloaded = InferError::Overloaded {
            model: "m".into(),
            capacity: 4,
        };
        assert_eq!(overloaded.status(), 503);
        assert_eq!(overloaded.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(InferError::bad_request("x").status(), 400);
        assert_eq!(InferError::bad_request("x").retry_after(), None);
        assert_eq!(InferError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(InferError::TooManyRows { rows: 2, limit: 1 }.status(), 413);
        assert_eq!(InferError::AnswerTooLarge { limit: 1 }.status(), 413);
        assert_eq!(InferError::NotFound("m".into()).status(), 404);
    }

    #[test]
    fn body_is_escaped_json() {
        let body = InferError::bad_request("input \"x\"\n").body();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "input \"x\"\n");
    }
}
