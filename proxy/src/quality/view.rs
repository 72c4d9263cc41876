//! `/admin/quality` as text for a terminal (`gateway report --quality`): per route, the
//! verdict in plain words, accuracy per predictor with its interval, the shadows' accuracy
//! beside the primary's on the same requests, and the most drifted features.

use std::fmt::Write;

use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

pub(crate) fn pct(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn interval(v: &Value) -> String {
    match v.as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
        Some((Some(lo), Some(hi))) => format!("{:.1}–{:.1}%", 100.0 * lo, 100.0 * hi),
        _ => "-".into(),
    }
}

/// Indents a table under its title.
pub(crate) fn indented(t: &Table) -> String {
    t.to_string().lines().map(|l| format!("  {l}\n")).collect()
}

pub fn text(summary: &Value) -> String {
    let mut out =
        String::from("model quality (this replica's view: drift of its own traffic, labels it joined)\n");
    let Some(routes) = summary["routes"].as_object().filter(|r| !r.is_empty()) else {
        out.push_str("\nno predictions recorded yet\n");
        return out;
    };
    for (route, r) in routes {
        let _ = writeln!(out, "\n{route}");
        for part in ["accuracy", "errors"] {
            if let Some(text) = r["verdict"][part]["text"].as_str() {
                let _ = writeln!(out, "  verdict, {text}");
            }
        }
        let mut t = table(&[
            "predicted by",
            "version",
            "labelled",
            "correct",
            "accuracy",
            "95% interval",
        ]);
        for a in r["accuracy"].as_array().into_iter().flatten() {
            t.add_row(vec![
                a["predicted_by"].as_str().unwrap_or("-").to_string(),
                a["version"].as_str().unwrap_or("-").to_string(),
                a["labelled"].to_string(),
                a["correct"].to_string(),
                pct(&a["accuracy"]),
                interval(&a["interval95"]),
            ]);
        }
        for s in r["shadows"].as_array().into_iter().flatten() {
            let (sh, p) = (&s["shadow_accuracy"], &s["primary_on_same_requests"]);
            t.add_row(vec![
                format!("shadow {}", s["shadow"].as_str().unwrap_or("-")),
                s["version"].as_str().unwrap_or("-").to_string(),
                sh["labelled"].to_string(),
                sh["correct"].to_string(),
                pct(&sh["accuracy"]),
                interval(&sh["interval95"]),
            ]);
            t.add_row(vec![
                "  primary, same requests".to_string(),
                "".into(),
                p["labelled"].to_string(),
                p["correct"].to_string(),
                pct(&p["accuracy"]),
                interval(&p["interval95"]),
            ]);
        }
        out.push_str(&indented(&t));
        let mut d = table(&[
            "variant",
            "version",
            "rows",
            "input PSI",
            "prediction PSI",
            "most drifted features",
        ]);
        for (variant, f) in r["drift"].as_object().into_iter().flatten() {
            let top: Vec<String> = f["features"]
                .as_array()
                .into_iter()
                .flatten()
                .take(3)
                .map(|x| {
                    format!(
                        "{} {:.3}",
                        x["name"].as_str().unwrap_or("?"),
                        x["psi"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            let unavailable = if f["profile"] == false {
                "no profile"
            } else {
                "too few rows"
            };
            d.add_row(vec![
                variant.clone(),
                f["version"].as_str().unwrap_or("-").to_string(),
                f["rows"].to_string(),
                f["input_psi"]
                    .as_f64()
                    .map_or(unavailable.to_string(), |x| format!("{x:.3}")),
                num(&f["prediction_psi"], 3),
                top.join(", "),
            ]);
        }
        out.push_str(&indented(&d));
        if let Some(psi) = r["predicted_classes_canary_vs_stable_psi"].as_f64() {
            let _ = writeln!(out, "  predicted classes, canary vs stable: PSI {psi:.3}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn says_what_is_unavailable_and_why() {
        let v = serde_json::json!({"routes": {"m": {
            "drift": {"stable": {"version": "1", "rows": 3, "profile": false, "input_psi": null, "prediction_psi": null, "features": []}},
            "accuracy": [{"predicted_by": "stable", "version": "1", "labelled": 4, "correct": 3, "accuracy": 0.75, "interval95": [0.3, 0.95]}],
            "shadows": [],
            "verdict": {"accuracy": {"text": "accuracy: no labelled predictions of both canary and stable yet"}}
        }}});
        let t = super::text(&v);
        assert!(
            t.contains("no profile") && t.contains("75.00%") && t.contains("30.0–95.0%"),
            "{t}"
        );
        assert!(super::text(&serde_json::json!({"routes": {}})).contains("no predictions recorded yet"));
    }
}
