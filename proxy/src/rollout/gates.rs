//! A window's figures against a rollout's gates: pass, fail, or not enough to tell.

use super::Figures;
use crate::config::Rollout;

/// What a window's figures say about the gates.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass(String),
    Fail(String),
    Inconclusive(String),
}

/// The gates of `policy` on one window's figures.
pub fn evaluate(policy: &Rollout, f: &Figures) -> Verdict {
    if f.canary_requests < policy.min_requests {
        return Verdict::Inconclusive(format!(
            "{} canary requests in the window, {} needed",
            f.canary_requests, policy.min_requests
        ));
    }
    let (mut failed, mut waiting, mut passed) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(max) = policy.max_error_rate_delta {
        let (c, s) = (
            f.canary_error_rate.unwrap_or(0.0),
            f.stable_error_rate.unwrap_or(0.0),
        );
        let text = format!(
            "error rate canary {:.2}% vs stable {:.2}% (Δ {:+.2} points, at most {:.2})",
            c * 100.0,
            s * 100.0,
            (c - s) * 100.0,
            max * 100.0
        );
        if c - s > max {
            failed.push(text)
        } else {
            passed.push(text)
        }
    }
    if let Some(max) = policy.max_p99_ratio {
        match (f.canary_p99_ms, f.stable_p99_ms) {
            (Some(c), Some(s)) if s > 0.0 => {
                let text = format!(
                    "p99 canary {c:.2} ms vs stable {s:.2} ms (×{:.2}, at most ×{max:.2})",
                    c / s
                );
                if c / s > max {
                    failed.push(text)
                } else {
                    passed.push(text)
                }
            }
            _ => waiting.push("no stable latency to compare with".to_string()),
        }
    }
    if let Some(min) = policy.min_shadow_agreement {
        match f.agreement {
            Some(a) if f.comparisons >= policy.min_comparisons => {
                let text = format!(
                    "shadow agreement {:.2}% over {} comparisons (at least {:.2}%)",
                    a * 100.0,
                    f.comparisons,
                    min * 100.0
                );
                if a < min {
                    failed.push(text)
                } else {
                    passed.push(text)
                }
            }
            _ => waiting.push(format!(
                "{} shadow comparisons, {} needed",
                f.comparisons, policy.min_comparisons
            )),
        }
    }
    if let Some(max) = policy.max_input_drift_psi {
        match f.input_drift_psi {
            Some(psi) => {
                let text = format!("canary input drift PSI {psi:.3} (at most {max:.3})");
                if psi > max {
                    failed.push(text)
                } else {
                    passed.push(text)
                }
            }
            None => {
                waiting.push("canary input drift not available yet (window not full, or no profile)".into())
            }
        }
    }
    if let Some(min) = policy.min_accuracy_delta {
        let n = policy.min_labels;
        if f.canary_labelled < n || f.stable_labelled < n {
            waiting.push(format!(
                "labels canary {} / stable {}, {n} each needed",
                f.canary_labelled, f.stable_labelled
            ));
        } else {
            let c = f.canary_correct as f64 / f.canary_labelled as f64;
            let s = f.stable_correct as f64 / f.stable_labelled as f64;
            let text = format!(
                "accuracy canary {:.2}% vs stable {:.2}% over {} + {} labels (Δ {:+.2} points, at least {:+.2})",
                c * 100.0,
                s * 100.0,
                f.canary_labelled,
                f.stable_labelled,
                (c - s) * 100.0,
                min * 100.0
            );
            if c - s < min {
                failed.push(text)
            } else {
                passed.push(text)
            }
        }
    }
    if !failed.is_empty() {
        Verdict::Fail(failed.join("; "))
    } else if !waiting.is_empty() {
        Verdict::Inconclusive(waiting.join("; "))
    } else {
        Verdict::Pass(passed.join("; "))
    }
}
