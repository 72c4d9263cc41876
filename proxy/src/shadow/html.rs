//! The report as one self-contained HTML page: inline CSS and server-drawn SVG, no scripts,
//! fonts or anything fetched, so it renders offline and can be saved or mailed as a file.

use std::fmt::Write as _;

use super::report::{PairReport, Report};

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{:.2}%", x * 100.0))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

const W: f64 = 560.0;
const H: f64 = 180.0;
const PAD: f64 = 36.0;

/// Agreement per minute as a line, the y axis spanning the observed range.
fn agreement_chart(p: &PairReport) -> String {
    let points: Vec<(i64, f64)> = p
        .over_time
        .iter()
        .filter_map(|m| m.agreement.map(|a| (m.minute, a)))
        .collect();
    if points.is_empty() {
        return "<p class=none>no compared predictions yet</p>".into();
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0.max(points[0].0 + 60));
    let lo = points.iter().map(|p| p.1).fold(1.0f64, f64::min);
    let lo = ((lo * 20.0).floor() / 20.0).min(0.95);
    let x = |t: i64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (W - 2.0 * PAD);
    let y = |a: f64| H - PAD + -(a - lo) / (1.0 - lo) * (H - 2.0 * PAD);
    let mut svg = format!(r#"<svg viewBox="0 0 {W} {H}" role="img" aria-label="agreement over time">"#);
    for tick in [lo, (lo + 1.0) / 2.0, 1.0] {
        let _ = write!(
            svg,
            r#"<line x1="{PAD}" x2="{}" y1="{y:.1}" y2="{y:.1}" class=grid /><text x="{}" y="{:.1}" class=axis text-anchor=end>{:.0}%</text>"#,
            W - PAD,
            PAD - 4.0,
            y(tick) + 4.0,
            tick * 100.0,
            y = y(tick)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|&(t, a)| format!("{:.1},{:.1}", x(t), y(a)))
        .collect();
    let _ = write!(svg, r#"<polyline points="{}" class=line />"#, path.join(" "));
    for &(t, a) in &points {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" class=dot><title>{}: {:.2}%</title></circle>"#,
            x(t),
            y(a),
            super::report::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64)),
            a * 100.0
        );
    }
    let label = |t: i64| {
        super::report::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64))[11..16]
            .to_string()
    };
    let _ = write!(
        svg,
        r#"<text x="{PAD}" y="{}" class=axis>{} UTC</text><text x="{}" y="{}" class=axis text-anchor=end>{} UTC</text></svg>"#,
        H - 8.0,
        label(t0),
        W - PAD,
        H - 8.0,
        label(t1)
    );
    svg
}

/// Bars of the per-prediction probability delta histogram.
fn delta_histogram(p: &PairReport) -> String {
    let counts = &p.prob_delta_histogram;
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = counts.len() as f64;
    let bw = (W - 2.0 * PAD) / n;
    let mut svg =
        format!(r#"<svg viewBox="0 0 {W} {H}" role="img" aria-label="histogram of probability deltas">"#);
    let mut lower = 0.0;
    for (i, &c) in counts.iter().enumerate() {
        let upper = p.prob_delta_bounds.get(i).copied();
        let label = match upper {
            Some(u) => format!("≤{}", short(u)),
            None => format!(">{}", short(lower)),
        };
        let h = c as f64 / max * (H - 2.0 * PAD);
        let x = PAD + i as f64 * bw;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" class=bar><title>{} &lt; |Δp| {label}: {c}</title></rect><text x="{:.1}" y="{}" class=axis text-anchor=middle>{label}</text>"#,
            x + 2.0,
            H - PAD - h,
            bw - 4.0,
            short(lower),
            x + bw / 2.0,
            H - PAD + 14.0,
        );
        if c > 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" class=value text-anchor=middle>{c}</text>"#,
                x + bw / 2.0,
                H - PAD - h - 3.0
            );
        }
        lower = upper.unwrap_or(lower);
    }
    svg.push_str("</svg>");
    svg
}

fn short(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 0.001 {
        format!("{x:.0e}")
    } else {
        format!("{x}")
    }
}

/// p50 and p99 of either side as paired horizontal bars.
fn latency_chart(p: &PairReport) -> String {
    let rows = [
        ("primary p50", p.latency_primary.p50_ms, "primary"),
        ("shadow p50", p.latency_shadow.p50_ms, "shadow"),
        ("primary p99", p.latency_primary.p99_ms, "primary"),
        ("shadow p99", p.latency_shadow.p99_ms, "shadow"),
    ];
    let max = rows.iter().filter_map(|r| r.1).fold(0.0f64, f64::max);
    if max == 0.0 {
        return "<p class=none>no latencies yet</p>".into();
    }
    let h = 26.0 * rows.len() as f64 + 10.0;
    let mut svg = format!(r#"<svg viewBox="0 0 {W} {h}" role="img" aria-label="latency comparison">"#);
    for (i, (label, v, class)) in rows.iter().enumerate() {
        let y = 8.0 + i as f64 * 26.0;
        let width = v.map_or(0.0, |v| v / max * (W - 200.0));
        let _ = write!(
            svg,
            r#"<text x="96" y="{:.1}" class=axis text-anchor=end>{label}</text><rect x="104" y="{y:.1}" width="{width:.1}" height="18" class="{class}" /><text x="{:.1}" y="{:.1}" class=value>{} ms</text>"#,
            y + 13.0,
            110.0 + width,
            y + 13.0,
            num(*v, 2)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The confusion matrix as a table shaded by count (the diagonal is agreement).
fn confusion(p: &PairReport) -> String {
    if p.confusion_labels.is_empty() {
        return "<p class=none>no class outputs compared yet</p>".into();
    }
    let max = p.confusion.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let mut t = String::from("<table class=heat><tr><th>primary ↓ shadow →</th>");
    for l in &p.confusion_labels {
        let _ = write!(t, "<th>{l}</th>");
    }
    t.push_str("</tr>");
    for (i, (l, row)) in p.confusion_labels.iter().zip(&p.confusion).enumerate() {
        let _ = write!(t, "<tr><th>{l}</th>");
        for (j, &n) in row.iter().enumerate() {
            // Log shading, so that a handful of confusions still show next to thousands.
            let level = if n == 0 {
                0.0
            } else {
                (1.0 + n as f64).ln() / (1.0 + max).ln()
            };
            let hue = if i == j { 210 } else { 10 };
            let light = 97.0 - level * 55.0;
            let ink = if light < 60.0 { "#fff" } else { "#222" };
            let _ = write!(
                t,
                r#"<td style="background:hsl({hue},70%,{light:.0}%);color:{ink}" title="primary {l}, shadow {}: {n}">{n}</td>"#,
                p.confusion_labels[j]
            );
        }
        t.push_str("</tr>");
    }
    t.push_str("</table>");
    t
}

fn json_cell(v: &serde_json::Value) -> String {
    if v.is_null() {
        return "–".into();
    }
    // Show the data arrays compactly; the full JSON is one click away.
    let compact: Vec<String> = v
        .as_array()
        .map(|list| {
            list.iter()
                .map(|t| {
                    let data = t["data"].to_string();
                    let data = if data.chars().count() > 90 {
                        format!("{}…", data.chars().take(90).collect::<String>())
                    } else {
                        data
                    };
                    format!("{}: {data}", t["name"].as_str().unwrap_or("?"))
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "<details><summary>{}</summary><pre>{}</pre></details>",
        esc(&compact.join("; ")),
        esc(&serde_json::to_string_pretty(v).unwrap_or_default())
    )
}

/// The latest disagreements and errors, folded: forty rows of them put the other pairs and
/// the model-quality section (the verdict) screens below the cards a model owner reads first.
fn disagreements(p: &PairReport) -> String {
    if p.latest_disagreements.is_empty() {
        return "<h3>Latest disagreements and errors</h3><p class=none>no disagreements or errors in this window</p>".into();
    }
    let mut t = format!(
        "<details class=latest><summary><h3>Latest disagreements and errors: {} shown, of {} disagreeing and {} with errors</h3></summary>",
        p.latest_disagreements.len(),
        p.disagreements,
        p.primary_errors + p.shadow_errors
    );
    t.push_str(
        "<table class=list><tr><th>time (UTC)</th><th>request id</th><th>max |Δp|</th><th>primary</th><th>shadow</th><th>inputs</th></tr>",
    );
    for d in &p.latest_disagreements {
        let primary = match &d.primary_error {
            Some(e) => format!("<span class=err>error: {}</span>", esc(e)),
            None => json_cell(&d.primary),
        };
        let shadow = match &d.shadow_error {
            Some(e) => format!("<span class=err>error: {}</span>", esc(e)),
            None => json_cell(&d.shadow),
        };
        let _ = write!(
            t,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{primary}</td><td>{shadow}</td><td>{}</td></tr>",
            esc(&d.at.replace('T', " ")),
            esc(&d.request_id),
            num(d.max_delta, 4),
            json_cell(&d.inputs)
        );
    }
    t.push_str("</table></details>");
    t
}

fn pair(p: &PairReport) -> String {
    let k = &p.key;
    let ci = p.agreement.ci95.map_or("–".into(), |[lo, hi]| {
        format!("{} – {}", pct(Some(lo)), pct(Some(hi)))
    });
    let dropped = p.dropped_total();
    // One reason a line: the card stays narrow enough for the five to share a row.
    let dropped_detail: String = p
        .dropped
        .iter()
        .map(|(k, v)| format!("<br>{} {v}", esc(k)))
        .collect();
    format!(
        r#"<section id="{anchor}">
<h2>{route}: primary v{pv} vs shadow <code>{shadow}</code> v{sv}</h2>
<div class=cards>
<div class=card><b>{agree}</b>agreement<small>95% CI {ci}</small></div>
<div class=card><b>{preds}</b>predictions compared<small>{requests} requests, {dis} disagree, {mism} with other outputs</small></div>
<div class=card><b>{dmean}</b>mean max |Δp|<small>max {dmax}</small></div>
<div class=card><b>{share}</b>of the copies compared<small>{dropped} dropped{dropped_detail}</small></div>
<div class=card><b>{perr} / {serr}</b>errors primary / shadow</div>
</div>
<div class=grid>
<figure><figcaption>Agreement over time (per minute)</figcaption>{agreement}</figure>
<figure><figcaption>Largest probability difference per prediction</figcaption>{hist}</figure>
<figure><figcaption>Latency, milliseconds</figcaption>{latency}</figure>
<figure><figcaption>Confusion matrix</figcaption>{confusion}</figure>
</div>
{list}
</section>"#,
        anchor = esc(&anchor(p)),
        route = esc(&k.route),
        pv = esc(&k.primary_version),
        shadow = esc(&k.shadow),
        sv = esc(&k.shadow_version),
        agree = pct(p.agreement.rate),
        preds = p.predictions,
        requests = p.requests,
        dis = p.disagreements,
        mism = p.output_mismatches,
        dmean = num(p.prob_delta_mean, 4),
        dmax = num(p.prob_delta_max, 4),
        perr = p.primary_errors,
        serr = p.shadow_errors,
        share = pct(p.compared_share),
        agreement = agreement_chart(p),
        hist = delta_histogram(p),
        latency = latency_chart(p),
        confusion = confusion(p),
        list = disagreements(p),
    )
}

/// The pair's section id, for the contents line.
fn anchor(p: &PairReport) -> String {
    let k = &p.key;
    format!(
        "{}-v{}-{}-v{}",
        k.route, k.primary_version, k.shadow, k.shadow_version
    )
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        }
    })
    .collect()
}

/// Links to each section, when there is more than one.
fn contents(r: &Report, more: &[(&str, &str)]) -> String {
    let mut links: Vec<String> = r
        .pairs
        .iter()
        .map(|p| {
            let k = &p.key;
            format!(
                "<a href=\"#{}\">{}: v{} vs {} v{}</a>",
                esc(&anchor(p)),
                esc(&k.route),
                esc(&k.primary_version),
                esc(&k.shadow),
                esc(&k.shadow_version)
            )
        })
        .collect();
    links.extend(
        more.iter()
            .map(|(id, title)| format!("<a href=\"#{}\">{}</a>", esc(id), esc(title))),
    );
    if links.len() < 2 {
        return String::new();
    }
    format!("<nav>On this page: {}</nav>", links.join(" · "))
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:0 0 12px}h3{font-size:15px;margin:18px 0 8px}
.meta{color:#666;margin-bottom:16px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:16px 20px;margin:0 0 20px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 14px;min-width:170px}
.card b{display:block;font-size:22px}.card small{display:block;color:#666}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
figure{margin:0;border:1px solid #eee;border-radius:6px;padding:8px}figcaption{font-weight:600;margin-bottom:4px}
svg{width:100%;height:auto}.grid line{stroke:#e5e5e5}.axis{font-size:10px;fill:#666}.value{font-size:10px;fill:#333}
.line{fill:none;stroke:#2a6fdb;stroke-width:2}.dot{fill:#2a6fdb}.bar{fill:#7a9cd6}.primary{fill:#2a6fdb}.shadow{fill:#e08a2c}
svg .grid{stroke:#e5e5e5}
table{border-collapse:collapse}th,td{border:1px solid #e3e3e3;padding:3px 8px;text-align:right;vertical-align:top}
table.list{width:100%;table-layout:fixed}table.list th:nth-child(-n+3){width:11em}table.list td{text-align:left;font-size:12px;overflow-wrap:anywhere}
pre{margin:4px 0;max-height:240px;overflow:auto;white-space:pre-wrap}
details.latest>summary{cursor:pointer;margin:18px 0 8px}details.latest>summary h3{display:inline;margin:0}
nav{margin:0 0 16px}nav a{color:#2a6fdb}
.err{color:#b3261e}.none{color:#888}code{font-size:12px}
";

/// The whole page.
pub fn page(r: &Report) -> String {
    page_with(r, "", &[])
}

/// The page with more sections after the comparisons (the gateway adds model quality), each
/// listed in the contents line by its id and title.
pub fn page_with(r: &Report, more: &str, more_sections: &[(&str, &str)]) -> String {
    let mut body = contents(r, more_sections);
    if r.pairs.is_empty() {
        body.push_str(
            "<section><p class=none>No mirrored requests in this window. Routes with <code>shadows</code> in the config mirror their traffic; send some and reload.</p></section>",
        );
    }
    for p in &r.pairs {
        body.push_str(&pair(p));
    }
    body.push_str(more);
    format!(
        r#"<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>Shadow comparison report</title><style>{STYLE}</style></head>
<body><h1>Shadow comparison report</h1>
<div class=meta>Generated {gen}{since}{route}. Agreement counts predictions whose class is the same on both sides; Δp is the largest absolute difference in any class probability.</div>
{body}
</body></html>
"#,
        gen = esc(&r.generated_at),
        since = r.since.as_ref().map_or(String::new(), |s| format!(", since {}", esc(s))),
        route = r.route.as_ref().map_or(String::new(), |s| format!(", route {}", esc(s))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_it_prints() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn an_empty_report_is_a_page_without_external_references() {
        let r = Report {
            generated_at: "2026-11-22T00:00:00Z".into(),
            since: None,
            route: None,
            stores: vec![],
            pairs: vec![],
        };
        let html = page(&r);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("No mirrored requests"));
        for external in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
    }
}
