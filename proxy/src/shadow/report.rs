//! Reports for model owners, read from the store: per (route, primary version, shadow
//! version), how often the shadow agrees (with a 95% confidence interval), by how much its
//! probabilities differ, how fast each side is, what failed, what was dropped, and which
//! classes it confuses. The same [`Report`] is served as JSON, printed as a table by
//! `gateway report`, and drawn by [`super::html`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use super::record::PairKey;
use super::store::{Aggregate, latency_quantile_ms, unix_ms};
use crate::predictions::DELTA_BOUNDS;

/// What to report on.
#[derive(Clone, Debug)]
pub struct Query {
    /// Only what happened after this time.
    pub since: Option<SystemTime>,
    pub route: Option<String>,
    /// Latest disagreements listed per pair.
    pub latest: usize,
}

impl Query {
    /// From `?route=&since=` (since: a duration such as `1h`, `30m`, `2d`).
    pub fn from_params(query: Option<&str>) -> Result<Query, String> {
        let mut q = Query {
            since: None,
            route: None,
            latest: 20,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "route" if !v.is_empty() => q.route = Some(v.to_string()),
                "since" if !v.is_empty() => q.since = Some(since(v)?),
                "latest" => {
                    q.latest = v
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_LATEST)
                        .ok_or_else(|| format!("latest={v:?}: give a count from 0 to {MAX_LATEST}"))?;
                }
                "route" | "since" => {}
                other => return Err(format!("unknown parameter {other:?} (route, since, latest)")),
            }
        }
        Ok(q)
    }
}

/// Disagreements listed per pair, at most (`latest`): each carries its inputs and outputs.
pub const MAX_LATEST: usize = 1000;

/// `1h` → now minus one hour (at most back to 1970).
pub fn since(text: &str) -> Result<SystemTime, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("since={text:?}: {e} (give a duration such as 15m, 1h, 2d)"))?;
    SystemTime::now()
        .checked_sub(d)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .ok_or_else(|| format!("since={text:?} reaches back before 1970"))
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub since: Option<String>,
    pub route: Option<String>,
    /// The stores read (one per replica when several are merged).
    pub stores: Vec<String>,
    pub pairs: Vec<PairReport>,
}

#[derive(Debug, Serialize)]
pub struct Interval {
    pub rate: Option<f64>,
    /// Wilson score interval, 95%.
    pub ci95: Option<[f64; 2]>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Minute {
    /// Start of the minute, seconds since the Unix epoch.
    pub minute: i64,
    pub requests: u64,
    pub rows: u64,
    pub agreement: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Disagreement {
    pub at: String,
    /// The store it came from, when several are merged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub request_id: String,
    /// None when one side failed (the error says which).
    pub agree: Option<bool>,
    pub max_delta: Option<f64>,
    pub primary_ms: f64,
    pub shadow_ms: Option<f64>,
    pub primary_error: Option<String>,
    pub shadow_error: Option<String>,
    pub inputs: serde_json::Value,
    pub primary: serde_json::Value,
    pub shadow: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct PairReport {
    #[serde(flatten)]
    pub key: PairKey,
    /// Mirrored requests whose shadow answered or failed.
    pub requests: u64,
    pub compared: u64,
    /// Compared requests where any prediction differed.
    pub disagreements: u64,
    /// Compared requests whose outputs differ in name, shape or type (also disagreements).
    pub output_mismatches: u64,
    /// Predictions (rows) compared.
    pub predictions: u64,
    pub agreeing_predictions: u64,
    pub agreement: Interval,
    /// Per prediction, the largest |Δp| over classes: mean and max.
    pub prob_delta_mean: Option<f64>,
    pub prob_delta_max: Option<f64>,
    /// Upper bounds, and one more count for everything above the last bound.
    pub prob_delta_bounds: Vec<f64>,
    pub prob_delta_histogram: Vec<u64>,
    pub top_k_overlap: Option<f64>,
    pub latency_primary: Latency,
    pub latency_shadow: Latency,
    pub primary_errors: u64,
    pub shadow_errors: u64,
    pub dropped: BTreeMap<String, u64>,
    /// Of the copies made for this pair (its shadow's `percent` of the route's requests), the
    /// share compared: `compared` over `requests` and the `dropped` together. Below 1, the
    /// report compares a sample of the mirrored traffic: copies are shed when the machine has
    /// no room for them (docs/shadows.md), so its busiest moments are under-represented.
    pub compared_share: Option<f64>,
    /// Class labels, and matrix[i][j]: predictions the primary put in labels[i] and the
    /// shadow in labels[j].
    pub confusion_labels: Vec<i64>,
    pub confusion: Vec<Vec<u64>>,
    pub over_time: Vec<Minute>,
    pub latest_disagreements: Vec<Disagreement>,
}

impl PairReport {
    /// Copies not made, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// Wilson score interval for k successes in n trials, 95%.
pub fn wilson(k: u64, n: u64) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.959964);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Opens the store read-only; a clear message when it does not exist yet.
pub fn open_read(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!(
            "no shadow store at {} yet (the gateway creates it when it starts; set shadow.store in the config to move it)",
            path.display()
        ));
    }
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|_| c))
    .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Writes a consistent copy of the store at `path` to `out` (`VACUUM INTO`: one file, no
/// WAL, readable anywhere), safe while a gateway is writing to it.
pub fn export(path: &Path, out: &Path) -> Result<(), String> {
    if out.exists() {
        return Err(format!("{} exists: choose a new file", out.display()));
    }
    let conn = open_read(path)?;
    conn.execute("VACUUM INTO ?1", params![out.to_string_lossy()])
        .map_err(|e| format!("cannot copy {} to {}: {e}", path.display(), out.display()))?;
    Ok(())
}

/// Builds the report from the store at `path`.
pub fn read(path: &Path, q: &Query) -> Result<Report, String> {
    read_many(std::slice::from_ref(&path.to_path_buf()), q)
}

/// Builds one report from several stores — one per replica, each of which compared only
/// the requests it answered. Minutes are exact aggregates, so they add up: counts, the
/// confusion matrix and the latency and |Δp| histograms merge without loss, and the
/// agreement rate, its interval and the quantiles are computed from the merged figures.
/// The latest disagreements are the newest over every store, each naming its store.
pub fn read_many(paths: &[PathBuf], q: &Query) -> Result<Report, String> {
    let since_ms = q.since.map_or(0, unix_ms);
    let mut pairs: BTreeMap<PairKey, BTreeMap<i64, Aggregate>> = BTreeMap::new();
    let mut latest: BTreeMap<PairKey, Vec<Disagreement>> = BTreeMap::new();
    for path in paths {
        let conn = open_read(path)?;
        let fail = |e: rusqlite::Error| format!("{}: {e}", path.display());
        let mut stmt = conn
            .prepare(
                "SELECT route, primary_version, shadow, shadow_version, minute, agg FROM minutes
                 WHERE minute >= ?1 AND (?2 IS NULL OR route = ?2)",
            )
            .map_err(fail)?;
        let rows = stmt
            .query_map(params![since_ms.div_euclid(60_000), q.route], |row| {
                Ok((
                    PairKey {
                        route: row.get(0)?,
                        primary_version: row.get(1)?,
                        shadow: row.get(2)?,
                        shadow_version: row.get(3)?,
                    },
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(fail)?;
        for row in rows {
            let (key, minute, agg) = row.map_err(fail)?;
            let agg: Aggregate = serde_json::from_str(&agg)
                .map_err(|e| format!("{}: minute {minute} of {key:?}: {e}", path.display()))?;
            pairs
                .entry(key)
                .or_default()
                .entry(minute)
                .or_default()
                .merge(&agg);
        }
        let source = (paths.len() > 1).then(|| path.display().to_string());
        for key in pairs.keys() {
            let mut found = latest_disagreements(&conn, key, since_ms, q.latest).map_err(fail)?;
            for d in &mut found {
                d.store.clone_from(&source);
            }
            latest.entry(key.clone()).or_default().extend(found);
        }
    }
    let mut out = Vec::new();
    for (key, minutes) in pairs {
        let mut total = Aggregate::default();
        let over_time = minutes
            .iter()
            .map(|(minute, agg)| {
                total.merge(agg);
                Minute {
                    minute: minute * 60,
                    requests: agg.requests,
                    rows: agg.rows,
                    agreement: (agg.rows > 0).then(|| agg.agreeing_rows as f64 / agg.rows as f64),
                }
            })
            .collect();
        let mut newest = latest.remove(&key).unwrap_or_default();
        // RFC 3339 times of one format sort as text; newest first.
        newest.sort_by(|a, b| b.at.cmp(&a.at));
        newest.truncate(q.latest);
        out.push(pair_report(key, &total, over_time, newest));
    }
    Ok(Report {
        generated_at: rfc3339(SystemTime::now()),
        since: q.since.map(rfc3339),
        route: q.route.clone(),
        stores: paths.iter().map(|p| p.display().to_string()).collect(),
        pairs: out,
    })
}

fn latest_disagreements(
    conn: &Connection,
    key: &PairKey,
    since_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Disagreement>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, request_id, agree, max_delta, primary_ms, shadow_ms, primary_error, shadow_error,
                inputs, primary_outputs, shadow_outputs
         FROM records
         WHERE route = ?1 AND primary_version = ?2 AND shadow = ?3 AND shadow_version = ?4
           AND at_ms >= ?5 AND (agree IS NULL OR agree = 0)
         ORDER BY id DESC LIMIT ?6",
    )?;
    let json = |s: Option<String>| {
        s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let rows = stmt.query_map(
        params![
            key.route,
            key.primary_version,
            key.shadow,
            key.shadow_version,
            since_ms,
            limit as i64
        ],
        |row| {
            let at: i64 = row.get(0)?;
            Ok(Disagreement {
                at: rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(at.max(0) as u64)),
                store: None,
                request_id: row.get(1)?,
                agree: row.get::<_, Option<i64>>(2)?.map(|a| a == 1),
                max_delta: row.get(3)?,
                primary_ms: row.get(4)?,
                shadow_ms: row.get(5)?,
                primary_error: row.get(6)?,
                shadow_error: row.get(7)?,
                inputs: json(row.get(8)?),
                primary: json(row.get(9)?),
                shadow: json(row.get(10)?),
            })
        },
    )?;
    rows.collect()
}

fn pair_report(key: PairKey, a: &Aggregate, over_time: Vec<Minute>, latest: Vec<Disagreement>) -> PairReport {
    let mut labels: Vec<i64> = a
        .confusion
        .iter()
        .flat_map(|(p, row)| std::iter::once(*p).chain(row.keys().copied()))
        .collect();
    labels.sort_unstable();
    labels.dedup();
    let confusion = labels
        .iter()
        .map(|p| {
            labels
                .iter()
                .map(|s| a.confusion.get(p).and_then(|r| r.get(s)).copied().unwrap_or(0))
                .collect()
        })
        .collect();
    let mut hist = a.delta_hist.clone();
    hist.resize(DELTA_BOUNDS.len() + 1, 0);
    let made = a.requests + a.dropped.values().sum::<u64>();
    PairReport {
        key,
        requests: a.requests,
        compared: a.compared,
        disagreements: a.disagreements,
        output_mismatches: a.mismatches,
        predictions: a.rows,
        agreeing_predictions: a.agreeing_rows,
        agreement: Interval {
            rate: (a.rows > 0).then(|| a.agreeing_rows as f64 / a.rows as f64),
            ci95: wilson(a.agreeing_rows, a.rows),
        },
        prob_delta_mean: (a.delta_count > 0).then(|| a.delta_sum / a.delta_count as f64),
        prob_delta_max: (a.delta_count > 0).then_some(a.delta_max),
        prob_delta_bounds: DELTA_BOUNDS.to_vec(),
        prob_delta_histogram: hist,
        top_k_overlap: (a.top_k_count > 0).then(|| a.top_k_sum / a.top_k_count as f64),
        latency_primary: Latency {
            p50_ms: latency_quantile_ms(&a.primary_latency, 0.5),
            p99_ms: latency_quantile_ms(&a.primary_latency, 0.99),
        },
        latency_shadow: Latency {
            p50_ms: latency_quantile_ms(&a.shadow_latency, 0.5),
            p99_ms: latency_quantile_ms(&a.shadow_latency, 0.99),
        },
        primary_errors: a.primary_errors,
        shadow_errors: a.shadow_errors,
        dropped: a.dropped.clone(),
        compared_share: (made > 0).then(|| a.compared as f64 / made as f64),
        confusion_labels: labels,
        confusion,
        over_time,
        latest_disagreements: latest,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// A table for the terminal report: plain ASCII (it is piped and mailed as often as read in a
/// terminal), indented under its pair's title, no wrapping.
fn text_table() -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

/// The report as text, for a terminal.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shadow comparison report, {}{}{}",
        r.generated_at,
        r.since.as_ref().map_or(String::new(), |s| format!(", since {s}")),
        r.route.as_ref().map_or(String::new(), |s| format!(", route {s}")),
    );
    if r.stores.len() > 1 {
        let _ = writeln!(
            out,
            "merged from {} stores: {}",
            r.stores.len(),
            r.stores.join(", ")
        );
    }
    if r.pairs.is_empty() {
        let _ = writeln!(out, "\nno mirrored requests in this window");
        return out;
    }
    for p in &r.pairs {
        let k = &p.key;
        let _ = writeln!(
            out,
            "\n{}: primary v{} vs shadow {} (v{})",
            k.route, k.primary_version, k.shadow, k.shadow_version
        );
        let ci = p.agreement.ci95.map_or("-".into(), |[lo, hi]| {
            format!("{:.2}%–{:.2}%", lo * 100.0, hi * 100.0)
        });
        let rows = [
            ("requests mirrored", p.requests.to_string()),
            (
                "copies compared",
                p.compared_share.map_or("-".into(), |r| {
                    let made = p.requests + p.dropped_total();
                    format!("{:.2}% of the {made} made", r * 100.0)
                }),
            ),
            ("predictions compared", p.predictions.to_string()),
            (
                "agreement",
                format!(
                    "{} (95% CI {ci}); {} request(s) disagree",
                    p.agreement
                        .rate
                        .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                    p.disagreements
                ),
            ),
            (
                "probability delta",
                format!(
                    "mean {}, max {}",
                    opt(p.prob_delta_mean, 5),
                    opt(p.prob_delta_max, 5)
                ),
            ),
            ("top-3 overlap", opt(p.top_k_overlap, 3)),
            (
                "output mismatches",
                format!("{} (name, shape or type)", p.output_mismatches),
            ),
            (
                "latency p50 / p99",
                format!(
                    "primary {} / {} ms, shadow {} / {} ms",
                    opt(p.latency_primary.p50_ms, 2),
                    opt(p.latency_primary.p99_ms, 2),
                    opt(p.latency_shadow.p50_ms, 2),
                    opt(p.latency_shadow.p99_ms, 2)
                ),
            ),
            (
                "errors",
                format!("primary {}, shadow {}", p.primary_errors, p.shadow_errors),
            ),
            (
                "dropped",
                if p.dropped.is_empty() {
                    "0".into()
                } else {
                    p.dropped
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
        ];
        let mut figures = text_table();
        for (name, value) in rows {
            figures.add_row(vec![name.to_string(), value]);
        }
        let _ = writeln!(out, "{figures}");
        if !p.confusion_labels.is_empty() {
            let _ = writeln!(out, "  confusion (rows: primary class, columns: shadow class)");
            let mut confusion = text_table();
            let mut head = vec![Cell::new("")];
            head.extend(
                p.confusion_labels
                    .iter()
                    .map(|l| Cell::new(l).set_alignment(CellAlignment::Right)),
            );
            confusion.set_header(head);
            for (l, row) in p.confusion_labels.iter().zip(&p.confusion) {
                let mut cells = vec![Cell::new(l)];
                cells.extend(
                    row.iter()
                        .map(|n| Cell::new(n).set_alignment(CellAlignment::Right)),
                );
                confusion.add_row(cells);
            }
            let _ = writeln!(out, "{confusion}");
        }
        if !p.latest_disagreements.is_empty() {
            let _ = writeln!(out, "  latest disagreements and errors:");
            for d in p.latest_disagreements.iter().take(5) {
                let what = match (&d.primary_error, &d.shadow_error) {
                    (Some(e), _) => format!("primary error: {e}"),
                    (_, Some(e)) => format!("shadow error: {e}"),
                    _ => format!("max |Δp| {}", opt(d.max_delta, 4)),
                };
                let _ = writeln!(out, "    {} {} {what}", d.at, d.request_id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval() {
        assert_eq!(wilson(0, 0), None);
        let [lo, hi] = wilson(95, 100).unwrap();
        // Reference values for 95/100 (Wilson, z = 1.96): 0.8882–0.9785.
        assert!(
            (lo - 0.8882).abs() < 1e-3 && (hi - 0.9785).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson(10, 10).unwrap();
        assert!((hi - 1.0).abs() < 1e-9 && lo > 0.72 && lo < 0.73, "{lo} {hi}");
    }

    #[test]
    fn the_compared_share_counts_every_copy_made() {
        let key = || PairKey {
            route: "r".into(),
            primary_version: "1".into(),
            shadow: "s".into(),
            shadow_version: "2".into(),
        };
        let mut a = Aggregate {
            requests: 6,
            compared: 5, // one shadow failed
            ..Aggregate::default()
        };
        a.dropped.insert("no_spare_cpu".into(), 3);
        a.dropped.insert("queue_full".into(), 1);
        let p = pair_report(key(), &a, vec![], vec![]);
        assert_eq!(p.compared_share, Some(0.5), "5 compared of 6 run and 4 dropped");
        assert!(
            table(&Report {
                generated_at: String::new(),
                since: None,
                route: None,
                stores: vec![],
                pairs: vec![p],
            })
            .contains("50.00% of the 10 made")
        );
        // Nothing made: no share, not a division by zero.
        assert_eq!(
            pair_report(key(), &Aggregate::default(), vec![], vec![]).compared_share,
            None
        );
    }

    #[test]
    fn query_parameters() {
        let q = Query::from_params(Some("route=digits&since=1h")).unwrap();
        assert_eq!(q.route.as_deref(), Some("digits"));
        let age = SystemTime::now().duration_since(q.since.unwrap()).unwrap();
        assert!(age >= Duration::from_secs(3599) && age <= Duration::from_secs(3601));
        assert!(
            Query::from_params(Some("since=yesterday"))
                .unwrap_err()
                .contains("15m")
        );
        assert!(Query::from_params(Some("colour=red")).is_err());
        assert!(Query::from_params(None).unwrap().since.is_none());
        // Out of range: an error, never a panic or a query without bounds.
        for bad in [
            "since=100000000000y",
            "since=600000d",
            "latest=1001",
            "latest=-1",
            "latest=99999999999999999999",
        ] {
            assert!(Query::from_params(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(Query::from_params(Some("latest=1000")).unwrap().latest, 1000);
    }
}
