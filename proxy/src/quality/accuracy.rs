//! Live accuracy from feedback labels, and the A/B verdict between canary and stable.
//!
//! Per (route, who answered, model version): labels joined, correct ones, the confusion
//! matrix, and a per-minute history. "Who answered" is the variant (stable, canary) or, for
//! a shadow's prediction of the same request, `shadow:<pool>`. Accuracy carries a 95% Wilson
//! interval; canary and stable are compared with a two-proportion z-test (two-sided, 5%).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;
/// Minutes of accuracy history kept per series (a day).
const HISTORY: usize = 24 * 60;
/// Distinct (label, predicted) cells kept per series; labels past it count in accuracy only
/// (a client sending absurd labels cannot grow memory without bound).
const MAX_CELLS: usize = 1024;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    pub labelled: u64,
    pub correct: u64,
    /// (true label, predicted class) → count.
    #[serde(serialize_with = "cells")]
    pub confusion: BTreeMap<(i64, i64), u64>,
    /// (minute as Unix seconds, labelled, correct), oldest first.
    pub history: VecDeque<(u64, u64, u64)>,
}

fn cells<S: serde::Serializer>(m: &BTreeMap<(i64, i64), u64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(m.len()))?;
    for ((label, predicted), n) in m {
        seq.serialize_element(&serde_json::json!({"label": label, "predicted": predicted, "count": n}))?;
    }
    seq.end()
}

impl Tally {
    pub fn add(&mut self, label: i64, predicted: i64, now_s: u64) {
        self.labelled += 1;
        let ok = label == predicted;
        self.correct += u64::from(ok);
        let cells = self.confusion.len();
        if let Some(n) = self.confusion.get_mut(&(label, predicted)) {
            *n += 1;
        } else if cells < MAX_CELLS {
            self.confusion.insert((label, predicted), 1);
        }
        let minute = now_s - now_s % 60;
        match self.history.back_mut() {
            Some((m, l, c)) if *m == minute => {
                *l += 1;
                *c += u64::from(ok);
            }
            _ => {
                self.history.push_back((minute, 1, u64::from(ok)));
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
            }
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    /// The 95% Wilson score interval of the accuracy.
    pub fn interval(&self) -> Option<(f64, f64)> {
        wilson(self.correct, self.labelled)
    }
}

pub fn wilson(successes: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    // At p = 0 or 1 a bound is exactly 0 or 1; floating point would land a hair inside.
    let lo = if successes == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let hi = if successes as f64 == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    Some((lo, hi))
}

/// Two-sided p-value of the two-proportion z-test (pooled), `None` when either side has no
/// observations or the pooled proportion is 0 or 1 (nothing to tell apart).
pub fn two_proportion_p(a: u64, n_a: u64, b: u64, n_b: u64) -> Option<f64> {
    if n_a == 0 || n_b == 0 {
        return None;
    }
    let (pa, pb) = (a as f64 / n_a as f64, b as f64 / n_b as f64);
    let pooled = (a + b) as f64 / (n_a + n_b) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n_a as f64 + 1.0 / n_b as f64)).sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    let z = ((pa - pb) / se).abs();
    Some(libm::erfc(z / std::f64::consts::SQRT_2))
}

/// Labels each side needs before the verdict says more than "not enough labels".
pub const VERDICT_MIN_LABELS: u64 = 30;

/// The plain-words comparison of canary and stable on one measure.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// "better", "worse", "no detectable difference" or "not enough data".
    pub verdict: &'static str,
    /// Canary minus stable, in the measure's own unit (a share).
    pub delta: Option<f64>,
    pub p_value: Option<f64>,
    pub text: String,
}

/// Compares canary and stable proportions; `higher_is_better` says which way is good
/// (accuracy: yes; 5xx rate: no).
pub fn compare(
    what: &str,
    (canary, canary_n): (u64, u64),
    (stable, stable_n): (u64, u64),
    higher_is_better: bool,
    min_n: u64,
) -> Comparison {
    let share = |k: u64, n: u64| k as f64 / n.max(1) as f64;
    if canary_n < min_n || stable_n < min_n {
        return Comparison {
            verdict: "not enough data",
            delta: None,
            p_value: None,
            text: format!(
                "{what}: not enough data yet (canary n = {canary_n}, stable n = {stable_n}; {min_n} each needed)"
            ),
        };
    }
    let delta = share(canary, canary_n) - share(stable, stable_n);
    let p = two_proportion_p(canary, canary_n, stable, stable_n).unwrap_or(1.0);
    let verdict = if p >= 0.05 {
        "no detectable difference"
    } else if (delta > 0.0) == higher_is_better {
        "canary better"
    } else {
        "canary worse"
    };
    let text = format!(
        "{what}: {verdict} at n = {canary_n} (canary) + {stable_n} (stable): canary {:.2}% vs stable {:.2}% (Δ {:+.2} points, p = {p:.3})",
        100.0 * share(canary, canary_n),
        100.0 * share(stable, stable_n),
        100.0 * delta,
    );
    Comparison {
        verdict,
        delta: Some(delta),
        p_value: Some(p),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_the_textbook_figures() {
        // 81 of 263 (Wilson 1927 style example): 0.2553 to 0.3662 (z = 1.96).
        let (lo, hi) = wilson(81, 263).unwrap();
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(10, 10).unwrap();
        assert!(hi == 1.0 && (lo - 0.7225).abs() < 5e-4, "{lo} {hi}");
        assert_eq!(wilson(0, 10).unwrap().0, 0.0);
        assert!(wilson(0, 0).is_none());
    }

    #[test]
    fn two_proportion_test_matches_a_hand_computation() {
        // 90/100 vs 80/100: pooled 0.85, se = sqrt(.85*.15*.02) = 0.0505, z = 1.980, p = 0.0477.
        let p = two_proportion_p(90, 100, 80, 100).unwrap();
        assert!((p - 0.0477).abs() < 5e-4, "{p}");
        assert!(two_proportion_p(50, 100, 50, 100).unwrap() > 0.99);
    }

    #[test]
    fn verdicts_in_plain_words() {
        assert_eq!(
            compare("accuracy", (90, 100), (80, 100), true, 30).verdict,
            "canary better"
        );
        assert_eq!(
            compare("5xx rate", (10, 100), (1, 100), false, 30).verdict,
            "canary worse"
        );
        assert_eq!(
            compare("accuracy", (50, 100), (49, 100), true, 30).verdict,
            "no detectable difference"
        );
        let few = compare("accuracy", (5, 5), (1, 5), true, 30);
        assert_eq!(few.verdict, "not enough data");
        assert!(few.text.contains("canary n = 5"));
    }

    #[test]
    fn tallies_count_and_bound_their_cells() {
        let mut t = Tally::default();
        t.add(1, 1, 120);
        t.add(1, 0, 130);
        t.add(0, 0, 185);
        assert_eq!((t.labelled, t.correct), (3, 2));
        assert_eq!(t.confusion[&(1, 0)], 1);
        assert_eq!(t.history, VecDeque::from(vec![(120, 2, 1), (180, 1, 1)]));
        for label in 0..5000 {
            t.add(label, -1, 200);
        }
        assert_eq!(t.confusion.len(), MAX_CELLS);
        assert_eq!(t.labelled, 5003);
    }
}
