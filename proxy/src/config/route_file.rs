//! What operators write under `routes:` (serde types; `file.rs` has the rest of the file and
//! re-exports these): routes, canaries and their rollouts, stickiness, shadows, the cache.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The public model name: `POST /v2/models/<model>/infer`.
    pub model: String,
    pub stable: String,
    #[serde(default)]
    pub canary: Option<CanaryFile>,
    #[serde(default)]
    pub sticky: Option<StickyFile>,
    /// Mixed into the sticky hash; change it to reshuffle which clients get the canary.
    #[serde(default)]
    pub salt: Option<String>,
    #[serde(default)]
    pub shadows: Vec<ShadowFile>,
    /// The prediction cache (off unless given).
    #[serde(default)]
    pub cache: Option<CacheFile>,
}

/// `cache: {ttl: 60s, max_bytes: 64MiB, pools: {cancer-v2: {ttl: 10s}}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub ttl: String,
    #[serde(default)]
    pub max_bytes: Option<SizeFile>,
    /// Per pool of the route: its own TTL (`0s`: its answers are never cached).
    #[serde(default)]
    pub pools: BTreeMap<String, CachePoolFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePoolFile {
    pub ttl: String,
}

/// A size: bytes, or a string with a unit (`64MiB`, `512 KiB`, `1GB`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeFile {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    pub pool: String,
    /// Percent of traffic, 0–100.
    pub weight: i64,
    /// A progressive rollout the gateway runs by itself.
    #[serde(default)]
    pub rollout: Option<RolloutFile>,
}

/// `rollout: {steps: [5, 25, 50, 100], interval: 5m, min_requests: 500, gates: {...},
/// on_failure: rollback}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub steps: Vec<i64>,
    /// How long each step is watched before its gates are evaluated (`30s`, `5m`, `1h`).
    pub interval: String,
    /// Canary requests a window needs before its gates count (fewer: wait).
    #[serde(default = "default_min_requests")]
    pub min_requests: i64,
    #[serde(default)]
    pub gates: GatesFile,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_min_requests() -> i64 {
    100
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    /// Canary error rate minus stable error rate, at most (0.01: one point).
    pub max_error_rate_delta: Option<f64>,
    /// Canary p99 latency over stable p99 latency, at most.
    pub max_p99_ratio: Option<f64>,
    /// Share of mirrored predictions where the canary model agrees with stable, at least
    /// (needs a shadow of the canary pool on the route).
    pub min_shadow_agreement: Option<f64>,
    /// Comparisons a window needs before the agreement gate counts.
    pub min_comparisons: Option<i64>,
    /// The canary traffic's largest input-feature PSI against the training profile, at most.
    pub max_input_drift_psi: Option<f64>,
    /// Canary accuracy minus stable accuracy from feedback labels, at least (-0.01: one
    /// point worse is still fine).
    pub min_accuracy_delta: Option<f64>,
    /// Labels each variant needs in a window before the accuracy gate counts.
    pub min_labels: Option<i64>,
}

/// What a failed gate does: `rollback` (weight 0) or `hold` (keep the weight, stop).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Rollback,
    Hold,
}

/// `sticky: api_key`, `sticky: none`, or `sticky: {header: x-user-id}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StickyFile {
    Named(String),
    Header { header: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    pub pool: String,
    /// Percent of the route's requests copied to this pool, 0–100.
    pub percent: i64,
}
