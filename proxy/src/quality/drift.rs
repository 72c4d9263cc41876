//! Input drift: per (route, variant) a fixed-size ring of recently sampled input rows and
//! predicted classes, and the population stability index (PSI) of each feature against the
//! model version's reference profile, computed off the request path.
//!
//! PSI = Σ over bins of (live share − reference share) · ln(live share / reference share).
//! Shares are floored at [`FLOOR`] so that an empty bin gives a large, finite figure. The
//! usual reading: below 0.1 no shift, 0.1–0.2 moderate, above 0.2 a shift worth a look.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;

use super::profile::Profile;

/// Smallest share a bin counts with (empty bins would make the index infinite).
pub const FLOOR: f64 = 1e-4;

/// The population stability index of `live` counts against `reference` shares.
pub fn psi(live: &[u64], reference: &[f64]) -> f64 {
    let total: u64 = live.iter().sum();
    if total == 0 {
        return 0.0;
    }
    live.iter()
        .zip(reference)
        .map(|(&n, &r)| {
            let a = (n as f64 / total as f64).max(FLOOR);
            let e = r.max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// The recent rows of one (route, variant): `capacity` rows of `width` features and the
/// classes predicted for recent rows, each a ring overwritten oldest first. Memory is fixed
/// when the window is made: `capacity · (width · 4 + 8)` bytes.
pub struct Window {
    pub version: String,
    pub profile: Option<Arc<Profile>>,
    width: usize,
    capacity: usize,
    /// Requests seen, for 1-in-N sampling.
    seen: AtomicU64,
    rows: Mutex<Ring<f32>>,
    classes: Mutex<Ring<i64>>,
}

struct Ring<T> {
    data: Vec<T>,
    /// Items written so far (the next goes at `written % capacity`).
    written: u64,
}

impl<T: Copy> Ring<T> {
    fn push(&mut self, items: &[T], item_len: usize, capacity: usize) {
        for item in items.chunks_exact(item_len) {
            let at = (self.written % capacity as u64) as usize * item_len;
            if self.data.len() < at + item_len {
                self.data.extend_from_slice(item);
            } else {
                self.data[at..at + item_len].copy_from_slice(item);
            }
            self.written += 1;
        }
    }
}

impl Window {
    pub fn new(version: String, profile: Option<Arc<Profile>>, width: usize, capacity: usize) -> Window {
        let width = width.max(1);
        Window {
            version,
            profile,
            width,
            capacity,
            seen: AtomicU64::new(0),
            rows: Mutex::new(Ring {
                data: Vec::with_capacity(width * capacity),
                written: 0,
            }),
            classes: Mutex::new(Ring {
                data: Vec::with_capacity(capacity),
                written: 0,
            }),
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether this request is one of the 1 in `every` recorded.
    pub fn sampled(&self, every: u64) -> bool {
        self.seen.fetch_add(1, Relaxed).is_multiple_of(every.max(1))
    }

    /// Adds rows (row-major, `width` values each; a partial row is ignored). At most
    /// `capacity` rows are kept from one call.
    pub fn record_rows(&self, values: &[f32]) {
        let full = values.len() - values.len() % self.width;
        let keep = full.min(self.capacity * self.width);
        let values = &values[full - keep..full];
        self.rows.lock().push(values, self.width, self.capacity);
    }

    pub fn record_classes(&self, classes: &[i64]) {
        let keep = classes.len().min(self.capacity);
        self.classes
            .lock()
            .push(&classes[classes.len() - keep..], 1, self.capacity);
    }

    /// The bytes its rings hold (fixed once full).
    pub fn bytes(&self) -> usize {
        self.rows.lock().data.capacity() * 4 + self.classes.lock().data.capacity() * 8
    }

    /// Rows recorded since the window was made.
    pub fn rows_seen(&self) -> u64 {
        self.rows.lock().written
    }

    /// The drift figures of what the window holds now (called off the request path; the
    /// rows are copied out under the lock, then binned).
    pub fn figures(&self, min_rows: usize, threshold: f64) -> Figures {
        let (rows, seen) = {
            let r = self.rows.lock();
            (r.data.clone(), r.written)
        };
        let classes: Vec<i64> = self.classes.lock().data.clone();
        let n = rows.len() / self.width.max(1);
        let mut f = Figures {
            version: self.version.clone(),
            rows: n,
            rows_seen: seen,
            predictions: classes.len(),
            profile: self.profile.is_some(),
            input_psi: None,
            prediction_psi: None,
            features: Vec::new(),
            class_shares: class_shares(&classes),
        };
        let Some(profile) = &self.profile else { return f };
        if n >= min_rows && n > 0 {
            let mut features: Vec<FeatureDrift> = profile
                .features
                .iter()
                .enumerate()
                .map(|(i, feat)| {
                    let mut counts = vec![0u64; feat.shares.len()];
                    let mut sum = 0.0;
                    for row in rows.chunks_exact(self.width) {
                        let v = f64::from(row[i]);
                        counts[feat.bin(v)] += 1;
                        sum += v;
                    }
                    FeatureDrift {
                        name: feat.name.clone(),
                        psi: psi(&counts, &feat.shares),
                        mean: sum / n as f64,
                        drifted: false,
                    }
                })
                .collect();
            for d in &mut features {
                d.drifted = d.psi > threshold;
            }
            f.input_psi = features.iter().map(|d| d.psi).reduce(f64::max);
            features.sort_by(|a, b| b.psi.total_cmp(&a.psi));
            f.features = features;
        }
        if classes.len() >= min_rows {
            f.prediction_psi = Some(class_psi(
                &f.class_shares,
                |c| profile.class_share(c),
                &profile.classes,
            ));
        }
        f
    }
}

/// Each class's share of `classes`, by class.
fn class_shares(classes: &[i64]) -> Vec<(i64, f64)> {
    let mut counts = std::collections::BTreeMap::<i64, u64>::new();
    for c in classes {
        *counts.entry(*c).or_default() += 1;
    }
    let n = classes.len().max(1) as f64;
    counts.into_iter().map(|(c, k)| (c, k as f64 / n)).collect()
}

/// PSI between live class shares and reference shares over the union of the classes.
pub fn class_psi(live: &[(i64, f64)], reference: impl Fn(i64) -> f64, known: &[i64]) -> f64 {
    let mut classes: Vec<i64> = live
        .iter()
        .map(|(c, _)| *c)
        .chain(known.iter().copied())
        .collect();
    classes.sort_unstable();
    classes.dedup();
    classes
        .iter()
        .map(|&c| {
            let a = live
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(0.0, |(_, s)| *s)
                .max(FLOOR);
            let e = reference(c).max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// What one window says, for the metrics, the admin API and the report.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub version: String,
    /// Rows and predictions the window holds now.
    pub rows: usize,
    /// Rows recorded since the window was made (the figures are of the last `rows` of them).
    pub rows_seen: u64,
    pub predictions: usize,
    /// Whether the model version has a reference profile (without one, drift is unavailable).
    pub profile: bool,
    /// The largest feature PSI; `None` while the window holds fewer than `min_rows` rows or
    /// without a profile.
    pub input_psi: Option<f64>,
    /// PSI of the predicted classes against the training labels' shares.
    pub prediction_psi: Option<f64>,
    /// Every feature, the most drifted first.
    pub features: Vec<FeatureDrift>,
    pub class_shares: Vec<(i64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FeatureDrift {
    pub name: String,
    pub psi: f64,
    /// The feature's mean in the window (to say which way it moved).
    pub mean: f64,
    /// Over the configured threshold.
    pub drifted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_equal_shares_and_grows_with_the_shift() {
        assert!(psi(&[10, 10, 10, 10], &[0.25; 4]).abs() < 1e-12);
        let small = psi(&[12, 10, 10, 8], &[0.25; 4]);
        let large = psi(&[40, 0, 0, 0], &[0.25; 4]);
        assert!(small > 0.0 && small < 0.05, "{small}");
        assert!(large > 2.0, "{large}");
        // By hand: shares .3,.25,.25,.2 against .25 each.
        let by_hand = 0.05 * (0.3f64 / 0.25).ln() - 0.05 * (0.2f64 / 0.25).ln();
        assert!((small - by_hand).abs() < 1e-12);
    }

    #[test]
    fn the_ring_keeps_the_most_recent_rows_within_its_capacity() {
        let w = Window::new("1".into(), None, 2, 3);
        w.record_rows(&[1.0, 1.0, 2.0, 2.0]);
        w.record_rows(&[3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0, 7.0]);
        let rows = w.rows.lock().data.clone();
        assert_eq!(rows.len(), 6);
        let mut firsts: Vec<f32> = rows.chunks(2).map(|r| r[0]).collect();
        firsts.sort_by(f32::total_cmp);
        assert_eq!(firsts, vec![4.0, 5.0, 6.0]);
        assert_eq!(w.rows_seen(), 5, "one call keeps at most `capacity` rows");
        let f = w.figures(1, 0.2);
        assert!(
            !f.profile && f.input_psi.is_none(),
            "no profile: drift unavailable, not zero"
        );
    }

    #[test]
    fn one_in_n_sampling() {
        let w = Window::new("1".into(), None, 1, 1);
        let taken = (0..100).filter(|_| w.sampled(10)).count();
        assert_eq!(taken, 10);
    }
}
