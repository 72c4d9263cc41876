//! `quality:`: input drift windows and feedback joins (`docs/quality.md` explains each
//! figure; `docs/limits.md` each bound).

use std::time::Duration;

use serde::Deserialize;

use super::{Errors, Path, positive};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityFile {
    #[serde(default)]
    pub drift: DriftFile,
    #[serde(default)]
    pub feedback: FeedbackFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftFile {
    #[serde(default = "default_window")]
    pub window: i64,
    #[serde(default = "one")]
    pub sample_every: i64,
    #[serde(default = "default_min_rows")]
    pub min_rows: i64,
    #[serde(default = "default_interval")]
    pub interval_ms: i64,
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

fn default_window() -> i64 {
    1000
}
fn one() -> i64 {
    1
}
fn default_min_rows() -> i64 {
    200
}
fn default_interval() -> i64 {
    5000
}
// Above the textbook 0.2: with a few hundred training rows as the reference, noise alone
// reaches 0.2 in a third of in-distribution windows (loadtests/bench_quality.sh, docs/quality.md).
fn default_threshold() -> f64 {
    0.25
}

impl Default for DriftFile {
    fn default() -> Self {
        DriftFile {
            window: default_window(),
            sample_every: one(),
            min_rows: default_min_rows(),
            interval_ms: default_interval(),
            threshold: default_threshold(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackFile {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_ttl")]
    pub ttl_s: i64,
    #[serde(default = "default_store_bytes")]
    pub max_bytes: i64,
    #[serde(default)]
    pub redis: Option<FeedbackRedisFile>,
}

fn yes() -> bool {
    true
}
fn default_ttl() -> i64 {
    3600
}
fn default_store_bytes() -> i64 {
    64 << 20
}

impl Default for FeedbackFile {
    fn default() -> Self {
        FeedbackFile {
            enabled: true,
            ttl_s: default_ttl(),
            max_bytes: default_store_bytes(),
            redis: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRedisFile {
    pub url: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: i64,
}

fn default_prefix() -> String {
    "gateway:fb".into()
}
fn default_timeout() -> i64 {
    200
}

#[derive(Clone, Debug, PartialEq)]
pub struct QualitySettings {
    pub drift: DriftSettings,
    pub feedback: FeedbackSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DriftSettings {
    /// Rows kept per (route, variant).
    pub window: usize,
    /// One request in this many is recorded.
    pub sample_every: u64,
    /// Fewer rows in a window: drift is "unavailable", not a noisy figure.
    pub min_rows: usize,
    /// How often the figures are computed (off the request path).
    pub interval: Duration,
    /// A feature whose PSI is over this is "drifted" on the admin API and the report.
    pub threshold: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackSettings {
    pub enabled: bool,
    pub ttl: Duration,
    /// The local store's memory bound.
    pub max_bytes: usize,
    pub redis: Option<FeedbackRedis>,
}

#[derive(Clone, PartialEq)]
pub struct FeedbackRedis {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
}

// By hand, so that a reload's diff never shows a password.
impl std::fmt::Debug for FeedbackRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackRedis")
            .field("url", &super::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub fn quality(errors: &mut Errors, q: QualityFile) -> QualitySettings {
    let at = Path::root().key("quality");
    let d = at.key("drift");
    let f = at.key("feedback");
    if !(q.drift.threshold > 0.0 && q.drift.threshold.is_finite()) {
        errors.add(
            &d.key("threshold"),
            format!("must be a positive number, got {}", q.drift.threshold),
        );
    }
    let window = positive(errors, q.drift.window, 10, 1_000_000, &d.key("window"));
    let min_rows = positive(errors, q.drift.min_rows, 1, 1_000_000, &d.key("min_rows"));
    if min_rows > window {
        errors.add(
            &d.key("min_rows"),
            format!("{min_rows} is more than the window ({window} rows)"),
        );
    }
    let redis = q.feedback.redis.map(|r| {
        if let Err(e) = redis::Client::open(r.url.as_str()) {
            errors.add(&f.key("redis").key("url"), format!("not a Redis URL: {e}"));
        }
        FeedbackRedis {
            url: r.url,
            prefix: r.prefix,
            timeout: Duration::from_millis(positive(
                errors,
                r.timeout_ms,
                1,
                60_000,
                &f.key("redis").key("timeout_ms"),
            ) as u64),
        }
    });
    QualitySettings {
        drift: DriftSettings {
            window,
            sample_every: positive(errors, q.drift.sample_every, 1, 1_000_000, &d.key("sample_every")) as u64,
            min_rows,
            interval: Duration::from_millis(positive(
                errors,
                q.drift.interval_ms,
                100,
                3_600_000,
                &d.key("interval_ms"),
            ) as u64),
            threshold: q.drift.threshold,
        },
        feedback: FeedbackSettings {
            enabled: q.feedback.enabled,
            ttl: Duration::from_secs(
                positive(errors, q.feedback.ttl_s, 1, 30 * 86_400, &f.key("ttl_s")) as u64,
            ),
            max_bytes: positive(
                errors,
                q.feedback.max_bytes,
                1 << 16,
                1 << 36,
                &f.key("max_bytes"),
            ),
            redis,
        },
    }
}
