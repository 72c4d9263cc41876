//! What one mirrored request leaves behind: the pair of models it was compared under, and
//! the record the store aggregates (every one) and keeps (disagreements, errors, a sample).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use inference::NamedTensor;
use prometheus::{Histogram, IntCounter};
use serde::Serialize;

use super::compare::Comparison;
use crate::telemetry::metrics::Metrics;

/// What a comparison is aggregated under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PairKey {
    pub route: String,
    pub primary_version: String,
    /// The shadow's pool name.
    pub shadow: String,
    pub shadow_version: String,
}

/// [`PairKey`] borrowed, to find a pair without making its key: hashes as the key does (a
/// `String` hashes as its `str`).
#[derive(Hash)]
struct PairRef<'a> {
    route: &'a str,
    primary_version: &'a str,
    shadow: &'a str,
    shadow_version: &'a str,
}

impl hashbrown::Equivalent<Arc<PairKey>> for PairRef<'_> {
    fn equivalent(&self, k: &Arc<PairKey>) -> bool {
        self.route == k.route
            && self.primary_version == k.primary_version
            && self.shadow == k.shadow
            && self.shadow_version == k.shadow_version
    }
}

/// Why a copy was not made: `gateway_shadow_dropped_total`'s `reason`, and the store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    BodyTooLarge,
    ShadowFailing,
    NoSpareCpu,
    InFlightCap,
    QueueFull,
}

impl DropReason {
    /// The series array's length, from the last variant (a reason added after it takes its
    /// place here), not a count kept by hand.
    const COUNT: usize = DropReason::QueueFull as usize + 1;

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BodyTooLarge => "body_too_large",
            DropReason::ShadowFailing => "shadow_failing",
            DropReason::NoSpareCpu => "no_spare_cpu",
            DropReason::InFlightCap => "in_flight_cap",
            DropReason::QueueFull => "queue_full",
        }
    }
}

/// A pair, with the metric series each of its copies writes, each found in its family once
/// (when first written, as the families export only what was written): prometheus hashes every
/// label value and takes a lock per lookup, and a copy wrote five series after cloning four
/// strings for its key.
pub struct Pair {
    pub key: Arc<PairKey>,
    copies: OnceLock<IntCounter>,
    /// `gateway_requests_total` of variant "shadow": 2xx, 5xx.
    answers: [OnceLock<IntCounter>; 2],
    inference: OnceLock<Histogram>,
    agreements: OnceLock<IntCounter>,
    disagreements: OnceLock<IntCounter>,
    prob_delta: OnceLock<Histogram>,
    /// `gateway_shadow_dropped_total`, per [`DropReason`]: at the maximum rate nearly every
    /// copy is dropped, and a lookup by label per drop was most of what a drop cost.
    dropped: [OnceLock<IntCounter>; DropReason::COUNT],
}

impl Pair {
    /// A copy not made.
    pub fn dropped(&self, m: &Metrics, reason: DropReason) {
        let k = &self.key;
        self.dropped[reason as usize]
            .get_or_init(|| {
                m.shadow_dropped
                    .with_label_values(&[&k.route, &k.shadow, reason.as_str()])
            })
            .inc();
    }

    fn labels(&self) -> [&str; 3] {
        let k = &self.key;
        [&k.route, &k.primary_version, &k.shadow_version]
    }

    /// A copy the shadow answered (`ok`) or failed.
    pub fn copied(&self, m: &Metrics, ok: bool, latency: Duration) {
        let k = &self.key;
        self.copies
            .get_or_init(|| m.shadow_requests.with_label_values(&self.labels()))
            .inc();
        // Shadow answers count with the others, as variant "shadow" (5xx: failed or timed out).
        let class = if ok { "2xx" } else { "5xx" };
        self.answers[usize::from(!ok)]
            .get_or_init(|| {
                m.requests
                    .with_label_values(&[&k.route, "shadow", &k.shadow_version, class])
            })
            .inc();
        if ok {
            self.inference
                .get_or_init(|| m.inference.with_label_values(&[&k.route, "shadow"]))
                .observe(latency.as_secs_f64());
        }
    }

    /// A comparison of the two answers: whether they agree, each row's largest difference.
    pub fn compared(&self, m: &Metrics, agrees: bool, row_max_delta: &[f64]) {
        let (series, family) = match agrees {
            true => (&self.agreements, &m.shadow_agreements),
            false => (&self.disagreements, &m.shadow_disagreements),
        };
        series
            .get_or_init(|| family.with_label_values(&self.labels()))
            .inc();
        let hist = self
            .prob_delta
            .get_or_init(|| m.shadow_prob_delta.with_label_values(&self.labels()));
        for &d in row_max_delta {
            hist.observe(d);
        }
    }
}

/// Pairs kept, at most: reloads that change versions leave pairs behind, and past this the
/// cache starts again (its series stay in their families).
const MAX_PAIRS: usize = 1024;

/// Every pair copies went to, with its series. Locked only on the client path (picking a
/// request's shadows), never by an idle-priority thread.
#[derive(Default)]
pub struct Pairs(
    parking_lot::Mutex<hashbrown::HashMap<Arc<PairKey>, Arc<Pair>, foldhash::fast::RandomState>>,
);

impl Pairs {
    pub fn get(&self, route: &str, primary_version: &str, shadow: &str, shadow_version: &str) -> Arc<Pair> {
        let probe = PairRef {
            route,
            primary_version,
            shadow,
            shadow_version,
        };
        let mut pairs = self.0.lock();
        if let Some(pair) = pairs.get(&probe) {
            return pair.clone();
        }
        if pairs.len() >= MAX_PAIRS {
            pairs.clear();
        }
        let key = Arc::new(PairKey {
            route: route.to_string(),
            primary_version: primary_version.to_string(),
            shadow: shadow.to_string(),
            shadow_version: shadow_version.to_string(),
        });
        let pair = Arc::new(Pair {
            key: key.clone(),
            copies: OnceLock::new(),
            answers: Default::default(),
            inference: OnceLock::new(),
            agreements: OnceLock::new(),
            disagreements: OnceLock::new(),
            prob_delta: OnceLock::new(),
            dropped: Default::default(),
        });
        pairs.insert(key, pair.clone());
        pair
    }
}

/// One mirrored request, as the shadow task saw it.
pub struct Record {
    pub at: SystemTime,
    pub key: Arc<PairKey>,
    pub request_id: String,
    pub inputs: Option<Arc<Vec<NamedTensor>>>,
    pub primary: Result<Arc<Vec<NamedTensor>>, String>,
    pub shadow: Result<Vec<NamedTensor>, String>,
    /// Present when both sides answered.
    pub comparison: Option<Comparison>,
    pub primary_latency: Duration,
    pub shadow_latency: Option<Duration>,
}

impl Record {
    /// About what it holds in memory, for the backlog's bound: its tensors, and a little for
    /// everything else.
    pub fn bytes(&self) -> usize {
        let tensors = |t: &[NamedTensor]| -> usize {
            t.iter()
                .map(|n| n.name.len() + n.tensor.data().len() * n.tensor.dtype().size() + 64)
                .sum()
        };
        512 + self.request_id.len()
            + self.inputs.as_deref().map_or(0, |t| tensors(t))
            + self.primary.as_deref().map_or(0, |t| tensors(t))
            + self.shadow.as_deref().map_or(0, tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_found_by_its_borrowed_key_and_only_by_its_own() {
        let pairs = Pairs::default();
        let a = pairs.get("r", "1", "v3", "3");
        // Found without making a key: the borrowed form hashes as the key does.
        assert!(Arc::ptr_eq(&a, &pairs.get("r", "1", "v3", "3")));
        for other in [
            pairs.get("r", "1", "v3", "4"),
            pairs.get("r", "2", "v3", "3"),
            pairs.get("r", "1", "v4", "3"),
            pairs.get("s", "1", "v3", "3"),
            // The fields do not run into each other.
            pairs.get("r", "1v", "3", "3"),
        ] {
            assert!(!Arc::ptr_eq(&a, &other));
        }
        assert_eq!(pairs.0.lock().len(), 6);
        for i in 0..MAX_PAIRS {
            pairs.get("r", "1", "v3", &format!("x{i}"));
        }
        assert!(pairs.0.lock().len() <= MAX_PAIRS, "bounded");
    }
}
