//! What the store keeps per (route, primary version, shadow, shadow version, minute): the
//! exact figures of every compared pair, which add up over minutes and replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::record::Record;

use crate::predictions::DELTA_BOUNDS;

/// Latency histogram: bucket i holds [10 µs × 1.1^i, 10 µs × 1.1^(i+1)), so a quantile read
/// from it is within 5% of the true value.
const LATENCY_BASE_US: f64 = 10.0;
const LATENCY_RATIO: f64 = 1.1;
const LATENCY_BUCKETS: u16 = 200;

pub fn latency_bucket(d: Duration) -> u16 {
    let us = (d.as_secs_f64() * 1e6).max(LATENCY_BASE_US);
    ((us / LATENCY_BASE_US).ln() / LATENCY_RATIO.ln())
        .floor()
        .min((LATENCY_BUCKETS - 1) as f64) as u16
}

/// The quantile `q` of a latency histogram, in milliseconds (bucket's geometric middle).
pub fn latency_quantile_ms(hist: &BTreeMap<u16, u64>, q: f64) -> Option<f64> {
    let total: u64 = hist.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (&bucket, &count) in hist {
        seen += count;
        if seen >= rank {
            let us = LATENCY_BASE_US * LATENCY_RATIO.powf(bucket as f64 + 0.5);
            return Some(us / 1e3);
        }
    }
    None
}

/// A minute's (or any window's, once merged) figures for one pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Mirrored requests whose shadow answered or failed.
    pub requests: u64,
    /// Requests where both sides answered and were compared.
    pub compared: u64,
    /// Compared requests with any disagreement or mismatch.
    pub disagreements: u64,
    /// Compared requests whose outputs differ in name, shape or type.
    #[serde(default)]
    pub mismatches: u64,
    /// Predictions (rows) compared, and those whose classes agree.
    pub rows: u64,
    pub agreeing_rows: u64,
    /// Per-prediction largest probability delta: sum, count, max, histogram (DELTA_BOUNDS).
    pub delta_sum: f64,
    pub delta_count: u64,
    pub delta_max: f64,
    pub delta_hist: Vec<u64>,
    pub top_k_sum: f64,
    pub top_k_count: u64,
    pub primary_errors: u64,
    pub shadow_errors: u64,
    pub primary_latency: BTreeMap<u16, u64>,
    pub shadow_latency: BTreeMap<u16, u64>,
    /// Copies not made, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// primary class → shadow class → predictions.
    pub confusion: BTreeMap<i64, BTreeMap<i64, u64>>,
}

impl Aggregate {
    pub fn add(&mut self, r: &Record) {
        self.requests += 1;
        *self
            .primary_latency
            .entry(latency_bucket(r.primary_latency))
            .or_default() += 1;
        if let Some(d) = r.shadow_latency {
            *self.shadow_latency.entry(latency_bucket(d)).or_default() += 1;
        }
        self.primary_errors += r.primary.is_err() as u64;
        self.shadow_errors += r.shadow.is_err() as u64;
        let Some(c) = &r.comparison else {
            return;
        };
        self.compared += 1;
        self.disagreements += !c.agrees() as u64;
        self.mismatches += !c.mismatches.is_empty() as u64;
        self.rows += c.rows as u64;
        self.agreeing_rows += c.agreeing_rows as u64;
        if self.delta_hist.len() != DELTA_BOUNDS.len() + 1 {
            self.delta_hist = vec![0; DELTA_BOUNDS.len() + 1];
        }
        for &d in &c.row_max_delta {
            self.delta_sum += d;
            self.delta_count += 1;
            self.delta_max = self.delta_max.max(d);
            let bucket = DELTA_BOUNDS
                .iter()
                .position(|&b| d <= b)
                .unwrap_or(DELTA_BOUNDS.len());
            self.delta_hist[bucket] += 1;
        }
        if let Some(k) = c.top_k_overlap {
            self.top_k_sum += k;
            self.top_k_count += 1;
        }
        for (p, s) in c.primary_classes.iter().zip(&c.shadow_classes) {
            *self.confusion.entry(*p).or_default().entry(*s).or_default() += 1;
        }
    }

    pub fn merge(&mut self, o: &Aggregate) {
        self.requests += o.requests;
        self.compared += o.compared;
        self.disagreements += o.disagreements;
        self.mismatches += o.mismatches;
        self.rows += o.rows;
        self.agreeing_rows += o.agreeing_rows;
        self.delta_sum += o.delta_sum;
        self.delta_count += o.delta_count;
        self.delta_max = self.delta_max.max(o.delta_max);
        if self.delta_hist.len() < o.delta_hist.len() {
            self.delta_hist.resize(o.delta_hist.len(), 0);
        }
        for (a, b) in self.delta_hist.iter_mut().zip(&o.delta_hist) {
            *a += b;
        }
        self.top_k_sum += o.top_k_sum;
        self.top_k_count += o.top_k_count;
        self.primary_errors += o.primary_errors;
        self.shadow_errors += o.shadow_errors;
        for (k, v) in &o.primary_latency {
            *self.primary_latency.entry(*k).or_default() += v;
        }
        for (k, v) in &o.shadow_latency {
            *self.shadow_latency.entry(*k).or_default() += v;
        }
        for (k, v) in &o.dropped {
            *self.dropped.entry(k.clone()).or_default() += v;
        }
        for (p, row) in &o.confusion {
            let mine = self.confusion.entry(*p).or_default();
            for (s, n) in row {
                *mine.entry(*s).or_default() += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_read_back_within_five_percent() {
        for ms in [0.05, 0.3, 1.0, 2.7, 15.0, 480.0, 5000.0] {
            let mut h = BTreeMap::new();
            h.insert(latency_bucket(Duration::from_secs_f64(ms / 1e3)), 1);
            let got = latency_quantile_ms(&h, 0.5).unwrap();
            assert!((got / ms - 1.0).abs() <= 0.05, "{ms} ms read back as {got}");
        }
        let mut h = BTreeMap::new();
        for i in 1..=100u64 {
            *h.entry(latency_bucket(Duration::from_millis(i))).or_insert(0) += 1;
        }
        let p99 = latency_quantile_ms(&h, 0.99).unwrap();
        assert!((p99 / 99.0 - 1.0).abs() <= 0.05, "{p99}");
    }
}
