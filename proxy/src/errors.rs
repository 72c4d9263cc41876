//! One error type for everything the gateway can refuse or fail with, and one map from error
//! to status. Inference errors keep the statuses and messages `inference-server` gives, so a
//! client sees the same answer through the gateway as from the server itself.

use std::time::Duration;

use inference::InferError;

/// The outcome of one rate-limit check (`admission::ratelimit`), with what the `RateLimit-*` headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests allowed in a burst (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests that could be made right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the allowance is full again (`RateLimit-Reset`).
    pub reset_secs: u64,
    /// Seconds to wait before retrying, when refused (`Retry-After`, at least 1).
    pub retry_after_secs: u64,
    /// The sustained rate, for the error message.
    pub per_second: u32,
}

impl Decision {
    /// `(name, value)` pairs for the response.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ]
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// Anything the inference path refuses (400, 404, 405, 413, 503) or fails with (500).
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    MissingKey,
    #[error("invalid API key")]
    UnknownKey,
    #[error("API key {0} is disabled")]
    DisabledKey(String),
    #[error("rate limit exceeded ({} requests/s, bursts of {}); retry in {} s", .0.per_second, .0.limit, .0.retry_after_secs)]
    RateLimited(Decision),
    /// Shared limits are configured to fail closed and Redis cannot answer.
    #[error("rate limiter unavailable: the shared limit store (Redis) does not answer; retry shortly")]
    LimiterUnavailable,
    #[error("request headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// A header the gateway reads has a value it cannot use (`x-canary: maybe`).
    #[error("{0}")]
    BadHeader(String),
    #[error("no healthy endpoint in pool {pool}")]
    NoHealthyUpstream { pool: String },
    #[error("upstream of pool {pool} failed: {reason}")]
    BadGateway { pool: String, reason: String },
    #[error("upstream of pool {pool} did not answer within {timeout_ms} ms")]
    GatewayTimeout { pool: String, timeout_ms: u128 },
    /// A gRPC upstream's refusal, passed on as REST passes an `http` upstream's: the HTTP
    /// status of its code, its message.
    #[error("{message}")]
    Upstream { status: u16, message: String },
    /// The bytes of requests in flight are at their budget (all requests, or this key's).
    #[error("the gateway is at its budget for requests in flight{}; retry shortly", if *.per_key { " from this API key" } else { "" })]
    Busy { per_key: bool },
    /// A versioned path from a key that may not choose the variant.
    #[error(
        "this API key may not choose the model version (auth.may_choose_variant); call /v2/models/{model}/infer"
    )]
    VariantChoiceNotAllowed { model: String },
    /// Too many failed authentications from this client address.
    #[error("too many failed authentications from this address; retry in {0} s")]
    AuthFailuresLimited(u64),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Infer(e) => e.status(),
            GatewayError::MissingKey | GatewayError::UnknownKey => 401,
            GatewayError::DisabledKey(_) => 403,
            GatewayError::RateLimited(_) => 429,
            GatewayError::LimiterUnavailable => 503,
            GatewayError::HeadersTooLarge { .. } => 431,
            GatewayError::BadHeader(_) => 400,
            GatewayError::NoHealthyUpstream { .. } => 503,
            GatewayError::BadGateway { .. } => 502,
            GatewayError::GatewayTimeout { .. } => 504,
            GatewayError::Upstream { status, .. } => *status,
            GatewayError::Busy { .. } => 503,
            GatewayError::VariantChoiceNotAllowed { .. } => 403,
            GatewayError::AuthFailuresLimited(_) => 429,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Infer(e) => e.retry_after(),
            GatewayError::RateLimited(d) => Some(Duration::from_secs(d.retry_after_secs.max(1))),
            GatewayError::NoHealthyUpstream { .. }
            | GatewayError::LimiterUnavailable
            | GatewayError::Busy { .. } => Some(Duration::from_secs(1)),
            GatewayError::AuthFailuresLimited(secs) => Some(Duration::from_secs((*secs).max(1))),
            _ => None,
        }
    }

    /// Headers the status calls for, besides `Retry-After`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::MissingKey => vec![("www-authenticate", "Bearer realm=\"gateway\"".into())],
            GatewayError::UnknownKey => {
                vec![(
                    "www-authenticate",
                    "Bearer realm=\"gateway\", error=\"invalid_token\"".into(),
                )]
            }
            GatewayError::Infer(InferError::MethodNotAllowed { allowed, .. }) => {
                vec![("allow", allowed.to_string())]
            }
            GatewayError::RateLimited(d) => d.headers().to_vec(),
            _ => Vec::new(),
        }
    }

    /// `{"error": "..."}`.
    pub fn body(&self) -> String {
        inference::error::error_body(&self.to_string())
    }

    /// A short, fixed label for metrics (never a message, never a key).
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Infer(InferError::BadRequest(_)) => "bad_request",
            GatewayError::Infer(InferError::NotFound(_)) => "not_found",
            GatewayError::Infer(InferError::MethodNotAllowed { .. }) => "method_not_allowed",
            GatewayError::Infer(InferError::PayloadTooLarge { .. }) => "payload_too_large",
            GatewayError::Infer(InferError::TooManyRows { .. }) => "too_many_rows",
            GatewayError::Infer(InferError::AnswerTooLarge { .. }) => "answer_too_large",
            GatewayError::Infer(InferError::BodyTimeout { .. }) => "body_timeout",
            GatewayError::Infer(InferError::Deadline { .. }) => "deadline",
            GatewayError::Infer(InferError::Overloaded { .. }) => "overloaded",
            GatewayError::Infer(InferError::NotReady(_)) => "not_ready",
            GatewayError::Infer(InferError::Internal(_)) => "internal",
            GatewayError::MissingKey => "missing_key",
            GatewayError::UnknownKey => "unknown_key",
            GatewayError::DisabledKey(_) => "disabled_key",
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::LimiterUnavailable => "limiter_unavailable",
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::BadHeader(_) => "bad_header",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::BadGateway { .. } => "bad_gateway",
            GatewayError::GatewayTimeout { .. } => "gateway_timeout",
            GatewayError::Upstream { .. } => "upstream_refused",
            GatewayError::Busy { .. } => "inflight_budget",
            GatewayError::VariantChoiceNotAllowed { .. } => "variant_choice_not_allowed",
            GatewayError::AuthFailuresLimited(_) => "auth_failures_limited",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_status_map() {
        let decision = Decision {
            allowed: false,
            limit: 4,
            remaining: 0,
            reset_secs: 2,
            retry_after_secs: 2,
            per_second: 2,
        };
        let cases: Vec<(GatewayError, u16)> = vec![
            (InferError::bad_request("x").into(), 400),
            (InferError::NotFound("m".into()).into(), 404),
            (InferError::PayloadTooLarge { limit: 1 }.into(), 413),
            (GatewayError::MissingKey, 401),
            (GatewayError::UnknownKey, 401),
            (GatewayError::DisabledKey("key_1".into()), 403),
            (GatewayError::RateLimited(decision), 429),
            (GatewayError::LimiterUnavailable, 503),
            (GatewayError::HeadersTooLarge { limit: 10 }, 431),
            (GatewayError::NoHealthyUpstream { pool: "p".into() }, 503),
            (
                GatewayError::BadGateway {
                    pool: "p".into(),
                    reason: "refused".into(),
                },
                502,
            ),
            (
                GatewayError::GatewayTimeout {
                    pool: "p".into(),
                    timeout_ms: 5,
                },
                504,
            ),
            (
                GatewayError::Upstream {
                    status: 400,
                    message: "bad shape".into(),
                },
                400,
            ),
            (GatewayError::Busy { per_key: true }, 503),
            (GatewayError::VariantChoiceNotAllowed { model: "m".into() }, 403),
            (GatewayError::AuthFailuresLimited(3), 429),
            (InferError::TooManyRows { rows: 9, limit: 2 }.into(), 413),
            (InferError::BodyTimeout { limit_ms: 5 }.into(), 408),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e}");
            let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
            assert_eq!(body["error"], e.to_string());
        }
        let limited = GatewayError::RateLimited(decision);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
        assert!(
            limited
                .headers()
                .iter()
                .any(|(k, v)| *k == "ratelimit-limit" && v == "4")
        );
        assert!(
            GatewayError::MissingKey
                .headers()
                .iter()
                .any(|(k, _)| *k == "www-authenticate")
        );
    }
}
