//! What a rollout step watches: per variant, requests, server errors, a latency histogram
//! and feedback labels (joined, correct); the canary model's agreement with stable on
//! mirrored requests; and the latest input drift of the canary's traffic. Counted with
//! atomics on the request path; read and replaced when a window closes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::config::Variant;

/// Latency buckets grow by 5% from 50 µs: p99 is read to within 5%, up to about an hour.
const GROWTH: f64 = 1.05;
const FIRST_US: f64 = 50.0;
const BUCKETS: usize = 320;

fn bucket(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    (((us / FIRST_US).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in milliseconds.
fn bucket_ms(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32) / 1000.0
}

#[derive(Default)]
struct VariantCounts {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Vec<AtomicU64>,
    labelled: AtomicU64,
    correct: AtomicU64,
}

impl VariantCounts {
    fn new() -> Self {
        VariantCounts {
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    fn p99_ms(&self) -> Option<f64> {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_ms(i));
            }
        }
        None
    }
}

/// One step's observations.
pub struct Window {
    stable: VariantCounts,
    canary: VariantCounts,
    comparisons: AtomicU64,
    agreements: AtomicU64,
    /// The canary's largest feature PSI, as last computed (f64 bits; NaN: unavailable).
    drift: AtomicU64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            stable: VariantCounts::new(),
            canary: VariantCounts::new(),
            comparisons: AtomicU64::new(0),
            agreements: AtomicU64::new(0),
            drift: AtomicU64::new(f64::NAN.to_bits()),
        }
    }
}

impl Window {
    /// A request the route answered with `variant`. Server errors (5xx) count against the
    /// variant; client errors do not.
    pub fn request(&self, variant: Variant, status: u16, latency: Duration) {
        let v = match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        };
        v.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            v.errors.fetch_add(1, Relaxed);
        }
        v.latency[bucket(latency)].fetch_add(1, Relaxed);
    }

    /// A mirrored request: stable answered, the canary's model was the shadow.
    pub fn comparison(&self, agrees: bool) {
        self.comparisons.fetch_add(1, Relaxed);
        if agrees {
            self.agreements.fetch_add(1, Relaxed);
        }
    }

    /// Feedback labels joined with predictions `variant` made: `correct` of `labelled`.
    pub fn labels(&self, variant: Variant, correct: u64, labelled: u64) {
        let v = match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        };
        v.labelled.fetch_add(labelled, Relaxed);
        v.correct.fetch_add(correct, Relaxed);
    }

    /// The canary traffic's input drift as last computed.
    pub fn drift(&self, psi: Option<f64>) {
        self.drift.store(psi.unwrap_or(f64::NAN).to_bits(), Relaxed);
    }

    pub fn figures(&self) -> Figures {
        let rate = |v: &VariantCounts| {
            let n = v.requests.load(Relaxed);
            (n > 0).then(|| v.errors.load(Relaxed) as f64 / n as f64)
        };
        let comparisons = self.comparisons.load(Relaxed);
        Figures {
            canary_requests: self.canary.requests.load(Relaxed),
            stable_requests: self.stable.requests.load(Relaxed),
            canary_error_rate: rate(&self.canary),
            stable_error_rate: rate(&self.stable),
            canary_p99_ms: self.canary.p99_ms(),
            stable_p99_ms: self.stable.p99_ms(),
            comparisons,
            agreement: (comparisons > 0).then(|| self.agreements.load(Relaxed) as f64 / comparisons as f64),
            canary_labelled: self.canary.labelled.load(Relaxed),
            canary_correct: self.canary.correct.load(Relaxed),
            stable_labelled: self.stable.labelled.load(Relaxed),
            stable_correct: self.stable.correct.load(Relaxed),
            input_drift_psi: Some(f64::from_bits(self.drift.load(Relaxed))).filter(|x| !x.is_nan()),
        }
    }
}

/// What a decision was made on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Figures {
    pub canary_requests: u64,
    pub stable_requests: u64,
    pub canary_error_rate: Option<f64>,
    pub stable_error_rate: Option<f64>,
    pub canary_p99_ms: Option<f64>,
    pub stable_p99_ms: Option<f64>,
    pub comparisons: u64,
    pub agreement: Option<f64>,
    // Defaults: state files written before these existed still load.
    #[serde(default)]
    pub canary_labelled: u64,
    #[serde(default)]
    pub canary_correct: u64,
    #[serde(default)]
    pub stable_labelled: u64,
    #[serde(default)]
    pub stable_correct: u64,
    #[serde(default)]
    pub input_drift_psi: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_read_within_five_percent() {
        let w = Window::default();
        for i in 0..1000u64 {
            // 1..=1000 ms: p99 is 990 ms.
            w.request(Variant::Stable, 200, Duration::from_millis(i + 1));
        }
        let p99 = w.figures().stable_p99_ms.unwrap();
        assert!((p99 / 990.0 - 1.0).abs() <= 0.05, "{p99}");
        w.request(Variant::Canary, 503, Duration::from_micros(10));
        w.request(Variant::Canary, 404, Duration::from_micros(10));
        let f = w.figures();
        assert_eq!(
            f.canary_error_rate,
            Some(0.5),
            "404 is the client's error, 503 the canary's"
        );
        assert_eq!(f.agreement, None);
        w.comparison(true);
        w.comparison(false);
        assert_eq!(w.figures().agreement, Some(0.5));
    }
}
