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
    if !failed.is_empty() {
        Verdict::Fail(failed.join("; "))
    } else if !waiting.is_empty() {
        Verdict::Inconclusive(waiting.join("; "))
    } else {
        Verdict::Pass(passed.join("; "))
    }
}
