//! What the operator sees of the rollouts: `GET /admin/rollouts` (JSON), and the same as text
//! for a terminal (`gateway rollout status`): per route, where the rollout stands, the open
//! window's figures beside the gates with what they say so far, and the latest decisions.

use std::fmt::Write;

use comfy_table::Table;
use serde_json::{Value, json};

use super::{Rollouts, Status, Verdict, evaluate};
// The terminal tables of `gateway report --quality`: the same style and percentages.
use crate::quality::view::{indented, pct, table};

/// Decisions the text shows per route, latest last (the JSON has every kept one).
const SHOWN_DECISIONS: usize = 10;

impl Rollouts {
    /// Every rollout, for `GET /admin/rollouts`.
    pub fn view(&self) -> Value {
        let now = self.clock.now();
        let routes = self.routes.lock();
        let policies = self.policies.lock();
        let slots = self.slots.load();
        let list: serde_json::Map<String, Value> = routes
            .iter()
            .map(|(name, s)| {
                let policy = policies.get(name);
                let window = slots.get(name).map(|slot| {
                    let figures = slot.window.load().figures();
                    // What the gates say of the window so far: the decision is taken when it
                    // ends, on the figures it has then.
                    let so_far = policy.filter(|_| s.status == Status::Running).map(|p| {
                        let (result, reason) = match evaluate(p, &figures) {
                            Verdict::Pass(r) => ("pass", r),
                            Verdict::Fail(r) => ("fail", r),
                            Verdict::Inconclusive(r) => ("inconclusive", r),
                        };
                        json!({"result": result, "reason": reason})
                    });
                    json!({
                        "elapsed_s": now.saturating_sub(s.window_started).as_secs_f64(),
                        "figures": figures,
                        "so_far": so_far,
                    })
                });
                let gates = policy.map(|p| {
                    json!({
                        "max_error_rate_delta": p.max_error_rate_delta,
                        "max_p99_ratio": p.max_p99_ratio,
                        "min_shadow_agreement": p.min_shadow_agreement,
                        "min_comparisons": p.min_comparisons,
                        "max_input_drift_psi": p.max_input_drift_psi,
                        "min_accuracy_delta": p.min_accuracy_delta,
                        "min_labels": p.min_labels,
                    })
                });
                let view = json!({
                    "status": s.status,
                    "steps": s.steps,
                    "step": s.step + 1,
                    "weight": s.weight,
                    "weight_in_routes_yaml": s.file_weight,
                    "interval_s": policy.map(|p| p.interval.as_secs_f64()),
                    "min_requests": policy.map(|p| p.min_requests),
                    "gates": gates,
                    "on_failure": policy.map(|p| p.on_failure),
                    "window": window,
                    "history": s.history,
                });
                (name.clone(), view)
            })
            .collect();
        let file = self.file.as_ref().map(|f| f.path().display().to_string());
        json!({"state_file": file, "leader": self.leads(), "rollouts": list})
    }
}

/// `GET /admin/rollouts`'s answer as text.
pub fn text(view: &Value) -> String {
    let mut out = String::new();
    let file = view["state_file"].as_str().unwrap_or("none: kept in memory only");
    let engine = if view["leader"].as_bool() == Some(false) {
        "another process runs the engine (it holds the state file); this one only shows it"
    } else {
        "this process runs the engine"
    };
    let _ = writeln!(out, "rollouts (state file {file}; {engine})");
    match view["rollouts"].as_object().filter(|r| !r.is_empty()) {
        None => out.push_str(
            "\nno rollout: no route's canary has a `rollout:` policy in the config in force \
             (docs/rollouts.md)\n",
        ),
        Some(routes) => {
            for (name, r) in routes {
                out.push('\n');
                out.push_str(&route(name, r));
            }
        }
    }
    out
}

/// One route's rollout (an element of `rollouts`, or the answer to an operator's command).
pub fn route(name: &str, r: &Value) -> String {
    let mut out = String::new();
    let steps: Vec<String> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    let _ = writeln!(
        out,
        "{name}: {}, step {} of {} (weights {}), weight {}",
        r["status"].as_str().unwrap_or("?").replace('_', " "),
        r["step"],
        steps.len(),
        steps.join(", "),
        r["weight"],
    );
    let mut facts = vec![format!("routes.yaml says weight {}", r["weight_in_routes_yaml"])];
    if let Some(f) = r["on_failure"].as_str() {
        facts.push(format!("on a failed gate: {f}"));
    }
    let _ = writeln!(out, "  {}", facts.join("; "));
    let window = &r["window"];
    if window.is_object() {
        let _ = writeln!(
            out,
            "  window: {} of {}",
            seconds(&window["elapsed_s"]),
            seconds(&r["interval_s"])
        );
        // A pass's reason repeats the table; the others say what fails or what is missing.
        match window["so_far"]["result"].as_str() {
            Some("pass") => out.push_str("  so far: pass, every gate\n"),
            Some(result) => {
                let reason = window["so_far"]["reason"].as_str().unwrap_or("");
                let _ = writeln!(out, "  so far: {result}: {reason}");
            }
            None => {}
        }
        out.push_str(&indented(&gate_table(r, &window["figures"])));
    }
    let history = r["history"].as_array().map_or(&[][..], Vec::as_slice);
    if !history.is_empty() {
        let shown = &history[history.len().saturating_sub(SHOWN_DECISIONS)..];
        if shown.len() < history.len() {
            let _ = writeln!(
                out,
                "  decisions, latest {} of {} (all: --format json):",
                shown.len(),
                history.len()
            );
        } else {
            out.push_str("  decisions:\n");
        }
        // Numbers as text first: a JSON value's Display ignores widths.
        let weight = |v: &Value| v.as_u64().map_or("?".into(), |w| w.to_string());
        for d in shown {
            let _ = writeln!(
                out,
                "    {}  {:<12} {:>3} -> {:<3}  {}",
                d["at"].as_str().unwrap_or("?"),
                d["result"].as_str().unwrap_or("?"),
                weight(&d["weight_from"]),
                weight(&d["weight_to"]),
                d["reason"].as_str().unwrap_or("")
            );
        }
    }
    out
}

/// The window's figures beside the gates: a row per gate, and the requests.
fn gate_table(r: &Value, f: &Value) -> Table {
    let g = &r["gates"];
    let mut t = table(&["this window", "canary", "stable", "gate"]);
    let gate = |text: Option<String>| text.unwrap_or_else(|| "-".into());
    t.add_row(vec![
        "requests".into(),
        f["canary_requests"].to_string(),
        f["stable_requests"].to_string(),
        gate(r["min_requests"].as_u64().map(|n| format!("canary at least {n}"))),
    ]);
    t.add_row(vec![
        "error rate".into(),
        pct(&f["canary_error_rate"]),
        pct(&f["stable_error_rate"]),
        gate(
            g["max_error_rate_delta"]
                .as_f64()
                .map(|m| format!("canary - stable at most {:.2} points", 100.0 * m)),
        ),
    ]);
    t.add_row(vec![
        "p99".into(),
        ms(&f["canary_p99_ms"]),
        ms(&f["stable_p99_ms"]),
        gate(
            g["max_p99_ratio"]
                .as_f64()
                .map(|m| format!("canary / stable at most {m:.2}")),
        ),
    ]);
    if g["min_shadow_agreement"].is_number() || f["comparisons"].as_u64().unwrap_or(0) > 0 {
        t.add_row(vec![
            "shadow agreement".into(),
            match f["comparisons"].as_u64().unwrap_or(0) {
                0 => "no comparisons".to_string(),
                n => format!("{} of {n}", pct(&f["agreement"])),
            },
            "-".into(),
            gate(
                g["min_shadow_agreement"]
                    .as_f64()
                    .map(|m| format!("at least {:.2}% over {} or more", 100.0 * m, g["min_comparisons"])),
            ),
        ]);
    }
    let labelled = |v: &str| f[format!("{v}_labelled")].as_u64().unwrap_or(0);
    if g["min_accuracy_delta"].is_number() || labelled("canary") + labelled("stable") > 0 {
        let accuracy = |v: &str| {
            let (n, correct) = (labelled(v), f[format!("{v}_correct")].as_u64().unwrap_or(0));
            match n {
                0 => "no labels".to_string(),
                n => format!("{:.2}% of {n}", 100.0 * correct as f64 / n as f64),
            }
        };
        t.add_row(vec![
            "accuracy".into(),
            accuracy("canary"),
            accuracy("stable"),
            gate(g["min_accuracy_delta"].as_f64().map(|m| {
                format!(
                    "canary - stable at least {:.2} points, {} labels each",
                    100.0 * m,
                    g["min_labels"]
                )
            })),
        ]);
    }
    if g["max_input_drift_psi"].is_number() || f["input_drift_psi"].is_number() {
        t.add_row(vec![
            "input drift (PSI)".into(),
            f["input_drift_psi"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.3}")),
            "-".into(),
            gate(
                g["max_input_drift_psi"]
                    .as_f64()
                    .map(|m| format!("canary's at most {m:.3}")),
            ),
        ]);
    }
    t
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2} ms"))
}

fn seconds(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| {
        humantime::format_duration(std::time::Duration::from_secs(x as u64)).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text with every run of white space made one space: the tables' widths vary.
    fn squeezed(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn running() -> Value {
        json!({
            "status": "running", "steps": [5, 25, 50, 100], "step": 2, "weight": 25,
            "weight_in_routes_yaml": 0, "interval_s": 300.0, "min_requests": 500,
            "gates": {"max_error_rate_delta": 0.01, "max_p99_ratio": 1.2,
                      "min_shadow_agreement": 0.98, "min_comparisons": 100,
                      "max_input_drift_psi": null, "min_accuracy_delta": null, "min_labels": 50},
            "on_failure": "rollback",
            "window": {"elapsed_s": 75.4, "figures": {
                "canary_requests": 120, "stable_requests": 360, "canary_error_rate": 0.0,
                "stable_error_rate": 0.0025, "canary_p99_ms": 1.5, "stable_p99_ms": 1.25,
                "comparisons": 118, "agreement": 0.9915, "canary_labelled": 0,
                "canary_correct": 0, "stable_labelled": 0, "stable_correct": 0,
                "input_drift_psi": null},
                "so_far": {"result": "inconclusive", "reason": "120 canary requests in the window, 500 needed"}},
            "history": (0..12).map(|i| json!({
                "at": format!("2026-12-07T02:{i:02}:00Z"), "result": "inconclusive",
                "weight_from": 25, "weight_to": 25, "reason": format!("decision {i}")})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn a_running_rollout_shows_its_window_beside_its_gates_and_its_latest_decisions() {
        let text = text(&json!({"state_file": "data/rollouts.json", "leader": true,
                                "rollouts": {"breast-cancer": running()}}));
        for want in [
            "rollouts (state file data/rollouts.json; this process runs the engine)",
            "breast-cancer: running, step 2 of 4 (weights 5, 25, 50, 100), weight 25",
            "routes.yaml says weight 0; on a failed gate: rollback",
            "window: 1m 15s of 5m",
            "so far: inconclusive: 120 canary requests in the window, 500 needed",
            "| requests           120      360      canary at least 500",
            "| error rate         0.00%    0.25%    canary - stable at most 1.00 points",
            "| p99                1.50 ms  1.25 ms  canary / stable at most 1.20",
            "| shadow agreement   99.15% of 118  -  at least 98.00% over 100 or more",
            "decisions, latest 10 of 12 (all: --format json):",
            "2026-12-07T02:11:00Z  inconclusive  25 -> 25   decision 11",
        ] {
            assert!(
                squeezed(&text).contains(&squeezed(want)),
                "{want:?} not in:\n{text}"
            );
        }
        // Gates not set and figures not there: no row.
        assert!(!text.contains("accuracy") && !text.contains("drift"), "{text}");
        // Decisions line up: the weights in columns of three.
        assert!(text.contains("inconclusive  25 -> 25   decision 11\n"), "{text}");
        // The two oldest decisions are left to the JSON.
        assert!(
            !text.contains("decision 1\n") && !text.contains("decision 0"),
            "{text}"
        );
    }

    #[test]
    fn quality_gates_show_when_set_and_an_ended_rollout_has_no_window() {
        let mut r = running();
        r["gates"]["min_accuracy_delta"] = json!(-0.01);
        r["gates"]["max_input_drift_psi"] = json!(0.2);
        r["window"]["figures"]["canary_labelled"] = json!(40);
        r["window"]["figures"]["canary_correct"] = json!(38);
        let text = route("breast-cancer", &r);
        for want in [
            "accuracy 95.00% of 40 no labels canary - stable at least -1.00 points, 50 labels each",
            "input drift (PSI) - - canary's at most 0.200",
        ] {
            assert!(squeezed(&text).contains(want), "{want:?} not in:\n{text}");
        }
        r["window"]["so_far"] = json!({"result": "pass", "reason": "error rate … (the table's figures)"});
        r["window"]["figures"]["comparisons"] = json!(0);
        let text = route("breast-cancer", &r);
        assert!(text.contains("so far: pass, every gate\n"), "{text}");
        assert!(!text.contains("the table's figures"), "{text}");
        assert!(
            squeezed(&text).contains("| shadow agreement no comparisons - at least"),
            "{text}"
        );
        r["status"] = json!("rolled_back");
        r["window"] = Value::Null;
        r["history"] = json!([]);
        let text = route("breast-cancer", &r);
        assert!(
            text.starts_with("breast-cancer: rolled back, step 2 of 4"),
            "{text}"
        );
        assert!(!text.contains("window") && !text.contains("decisions"), "{text}");
    }

    #[test]
    fn no_rollout_says_how_to_start_one_and_who_runs_the_engine() {
        let text = text(&json!({"state_file": null, "leader": false, "rollouts": {}}));
        assert!(text.contains("state file none: kept in memory only"), "{text}");
        assert!(text.contains("another process runs the engine"), "{text}");
        assert!(
            text.contains("no rollout: no route's canary has a `rollout:` policy"),
            "{text}"
        );
    }
}
