//! The model-quality part of the report page (`/admin/shadow/report.html`): per route the
//! A/B verdict in plain words, accuracy per predictor with its interval and over time, the
//! shadows' accuracy beside the primary's on the same requests, and input drift per feature.

use std::fmt::Write;

use serde_json::Value;

use super::html::esc;

fn pct(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
}

fn interval(v: &Value) -> String {
    match v.as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
        Some((Some(lo), Some(hi))) => format!("{:.1}–{:.1}%", 100.0 * lo, 100.0 * hi),
        _ => "-".into(),
    }
}

/// Accuracy per minute as a small inline SVG line (minutes with labels only).
fn sparkline(history: &Value) -> String {
    let points: Vec<(f64, f64)> = history
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let (m, n, c) = (h[0].as_f64()?, h[1].as_f64()?, h[2].as_f64()?);
            (n > 0.0).then_some((m, c / n))
        })
        .collect();
    if points.len() < 2 {
        return String::from("<span class=none>one minute so far</span>");
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0.max(points[0].0 + 60.0));
    // From a round tenth under the lowest minute to 100%: a fall of a few points shows.
    let lowest = points.iter().map(|p| p.1).fold(1.0, f64::min);
    let floor = ((lowest - 0.05).max(0.0) * 10.0).floor() / 10.0;
    let (w, h) = (220.0, 40.0);
    let path: Vec<String> = points
        .iter()
        .map(|(t, a)| {
            format!(
                "{:.1},{:.1}",
                (t - t0) / (t1 - t0) * w,
                h - (a - floor) / (1.0 - floor).max(1e-9) * h
            )
        })
        .collect();
    format!(
        r##"<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="accuracy per minute, {lo:.0}% to 100%"><rect width="{w}" height="{h}" fill="#f6f6f6"/><polyline fill="none" stroke="#1a73e8" stroke-width="1.5" points="{}"/></svg> <small>{lo:.0}–100%</small>"##,
        path.join(" "),
        lo = floor * 100.0,
    )
}

fn accuracy_row(out: &mut String, who: &str, version: &str, t: &Value, over_time: bool) {
    let _ = write!(
        out,
        "<tr><th style=text-align:left>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(who),
        esc(version),
        t["labelled"],
        t["correct"],
        pct(&t["accuracy"]),
        interval(&t["interval95"]),
        if over_time {
            sparkline(&t["history"])
        } else {
            String::new()
        },
    );
}

/// The section, from `/admin/quality`'s JSON.
/// The section's id and title, for the page's contents line.
pub const ID: &str = "quality";
pub const TITLE: &str = "Model quality: accuracy from feedback, input drift";

pub fn section(summary: &Value) -> String {
    let mut out = format!("<section id={ID}><h2>{TITLE}</h2>");
    let Some(routes) = summary["routes"].as_object().filter(|r| !r.is_empty()) else {
        out.push_str("<p class=none>No predictions recorded yet. Drift needs traffic; accuracy needs labels: <code>POST /v2/models/{model}/feedback</code> (docs/quality.md).</p></section>");
        return out;
    };
    for (route, r) in routes {
        let _ = write!(out, "<h3>{}</h3>", esc(route));
        for part in ["accuracy", "errors"] {
            if let Some(text) = r["verdict"][part]["text"].as_str() {
                let _ = write!(out, "<p><b>Verdict</b>, {}</p>", esc(text));
            }
        }
        out.push_str("<table><tr><th style=text-align:left>predicted by</th><th>version</th><th>labelled</th><th>correct</th><th>accuracy</th><th>95% interval</th><th>accuracy per minute</th></tr>");
        for a in r["accuracy"].as_array().into_iter().flatten() {
            accuracy_row(
                &mut out,
                a["predicted_by"].as_str().unwrap_or("-"),
                a["version"].as_str().unwrap_or("-"),
                a,
                true,
            );
        }
        for s in r["shadows"].as_array().into_iter().flatten() {
            let who = format!("shadow {} (would have had)", s["shadow"].as_str().unwrap_or("-"));
            accuracy_row(
                &mut out,
                &who,
                s["version"].as_str().unwrap_or("-"),
                &s["shadow_accuracy"],
                true,
            );
            accuracy_row(
                &mut out,
                "the primary, same requests",
                "",
                &s["primary_on_same_requests"],
                false,
            );
        }
        out.push_str("</table>");
        for (variant, f) in r["drift"].as_object().into_iter().flatten() {
            let headline = match (f["input_psi"].as_f64(), f["profile"].as_bool()) {
                (Some(psi), _) => format!("largest feature PSI {psi:.3}"),
                (None, Some(false)) => "unavailable: this model version has no profile".into(),
                (None, _) => "unavailable: too few rows in the window yet".into(),
            };
            let _ = write!(
                out,
                "<p><b>Input drift, {}</b> (v{}, {} rows): {}{}</p>",
                esc(variant),
                esc(f["version"].as_str().unwrap_or("-")),
                f["rows"],
                headline,
                f["prediction_psi"]
                    .as_f64()
                    .map_or(String::new(), |p| format!("; predicted classes PSI {p:.3}")),
            );
            let features: Vec<&Value> = f["features"].as_array().into_iter().flatten().take(10).collect();
            if features.is_empty() {
                continue;
            }
            out.push_str("<table><tr><th style=text-align:left>feature</th><th>PSI</th><th></th><th>mean now</th></tr>");
            for x in features {
                let psi = x["psi"].as_f64().unwrap_or(0.0);
                let colour = if x["drifted"] == true {
                    "#b3261e"
                } else {
                    "#1a73e8"
                };
                let _ = write!(
                    out,
                    r#"<tr><th style=text-align:left>{}</th><td>{psi:.3}</td><td style=width:160px><div style="background:{colour};height:10px;width:{:.0}px"></div></td><td>{:.4}</td></tr>"#,
                    esc(x["name"].as_str().unwrap_or("?")),
                    (psi / 1.0).min(1.0) * 160.0,
                    x["mean"].as_f64().unwrap_or(0.0),
                );
            }
            out.push_str("</table>");
        }
        if let Some(psi) = r["predicted_classes_canary_vs_stable_psi"].as_f64() {
            let _ = write!(out, "<p>Predicted classes, canary vs stable: PSI {psi:.3}</p>");
        }
    }
    out.push_str("<p class=meta>PSI under 0.1: no shift; 0.1–0.25: moderate; over 0.25 (red): a shift worth a look. Intervals are Wilson 95%; the verdict is a two-proportion z-test at 5%.</p></section>");
    out
}
