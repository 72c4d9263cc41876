//! What operators watch: /metrics passes `promtool check metrics` under load and keeps its
//! label sets bounded against hostile paths and keys; every series the Grafana dashboard and
//! the alert rules use exists; the rules pass `promtool`'s checks and unit tests; readiness
//! reflects a broken model (never a client's input that breaks it), and a canary that cannot
//! serve hands its traffic to stable.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        found,
        "promtool is missing: scripts/setup.sh installs it (Debian package prometheus)"
    );
    Command::new("promtool")
}

/// Metric names (`gateway_…`, without histogram suffixes) that a text mentions.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("gateway_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

/// Series (name and labels) in a scrape.
fn series(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

const BODY: &str = "rate_limits: {default: {per_second: 100000, burst: 100000}, tiers: {batch: {per_second: 2000, burst: 4000}}}\n\
pools:\n  cancer-v1: {local: {model: breast-cancer, version: 1}}\n  cancer-v2: {local: {model: breast-cancer, version: 2}}\n  cancer-v3: {local: {model: breast-cancer, version: 3}}\n\
shadow: {flush_ms: 50}\n\
routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    canary: {pool: cancer-v2, weight: 50}\n    shadows: [{pool: cancer-v3, percent: 100}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_under_load_stay_bounded_and_cover_the_dashboard_and_alerts() {
    let _alone = one_at_a_time().await;
    let g = start(BODY);
    // Traffic of every kind: both variants, shadows, an unknown key, a disabled key, a
    // refused reload.
    for i in 0..200 {
        let r = infer(
            &g,
            if i % 2 == 0 { Proto::H1 } else { Proto::H2 },
            &g.keys.dev,
            "breast-cancer",
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        infer(&g, Proto::H1, "gwk_nope", "breast-cancer", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        infer(&g, Proto::H1, &g.keys.disabled, "breast-cancer", &[])
            .await
            .status,
        403
    );
    g.write_config(&g.config_text(&BODY.replace("weight: 50", "weight: 500")));
    let start = Instant::now();
    while !admin_get(&g, "/metrics")
        .await
        .1
        .contains("gateway_config_reload_total{result=\"rejected\"} 1")
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the bad file was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // shadows land

    let (status, scrape) = admin_get(&g, "/metrics").await;
    assert_eq!(status, 200);
    let dir = temp_dir("promtool");
    std::fs::write(dir.join("metrics.txt"), &scrape).unwrap();
    let out = promtool()
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(dir.join("metrics.txt")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "gateway_requests_total{route=\"breast-cancer\",status_class=\"2xx\",variant=\"canary\",version=\"2\"}",
        "gateway_requests_total{route=\"breast-cancer\",status_class=\"2xx\",variant=\"stable\",version=\"1\"}",
        "gateway_requests_total{route=\"breast-cancer\",status_class=\"2xx\",variant=\"shadow\",version=\"3\"}",
        "gateway_auth_failures_total{reason=\"unknown\"} 1",
        "gateway_auth_failures_total{reason=\"disabled\"} 1",
        "gateway_inference_duration_seconds_count{route=\"breast-cancer\",variant=\"canary\"}",
        "gateway_prediction_confidence_count{route=\"breast-cancer\",variant=\"stable\"}",
        "gateway_predictions_total{class=",
        "gateway_pool_batch_size_count{pool=\"cancer-v1\"}",
        "gateway_pool_ready{pool=\"cancer-v1\"} 1",
        "gateway_route_canary_weight{route=\"breast-cancer\"} 50",
        "gateway_config_generation 1",
        "gateway_build_info{",
    ] {
        assert!(scrape.contains(expected), "no {expected} in\n{scrape}");
    }

    // The dashboard and the alert rules use only metrics the gateway exports, and every
    // family exported so far is one the registry declares.
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/gateway-dashboard.json")).unwrap();
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).unwrap();
    let declared: BTreeSet<String> = proxy::telemetry::metrics::Metrics::new()
        .names()
        .iter()
        .cloned()
        .collect();
    for name in names_in(&dashboard).union(&names_in(&rules)) {
        assert!(
            declared.contains(name),
            "{name} is used by deploy/ but the gateway has no such metric"
        );
    }
    for name in names_in(&scrape) {
        assert!(declared.contains(&name), "{name} is exported but not declared");
    }

    // 2,000 distinct paths and keys add no series.
    let before = series(&admin_get(&g, "/metrics").await.1);
    for i in 0..1000 {
        // Refusals may close the connection: one each.
        let key = format!("gwk_{i:064}");
        let path = format!("/v2/models/m{i}/infer");
        send(&g, Proto::H1, "POST", &path, &[("x-api-key", key.as_str())], "{}").await;
        send(&g, Proto::H1, "GET", &format!("/random/{i}"), &[], "").await;
    }
    let after = series(&admin_get(&g, "/metrics").await.1);
    let added: Vec<_> = after.difference(&before).collect();
    // Only the label sets of the kinds of refusal just made may appear (once each).
    assert!(added.len() <= 6, "hostile requests added series: {added:?}");
}

#[test]
fn the_dashboard_is_well_formed_and_the_alert_rules_pass_promtool() {
    let deploy = repo().join("deploy");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/gateway-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    for field in ["uid", "title", "panels", "templating", "schemaVersion"] {
        assert!(!dashboard[field].is_null(), "dashboard has no {field}");
    }
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].is_u64(),
                "panel {} has no gridPos.{k}",
                p["title"]
            );
        }
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty());
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("gateway_"), "{expr}");
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{expr}");
        }
    }
    // What the issue asks the dashboard to show.
    for topic in [
        "request rate",
        "error rate",
        "p50 / p95 / p99",
        "canary / stable",
        "shadow agreement",
        "confidence",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "no panel about {topic}: {titles:?}"
        );
    }

    let out = promtool()
        .args(["check", "rules"])
        .arg(deploy.join("prometheus/alerts.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The unit tests feed each alert the series it is for, and healthy ones.
    let out = promtool()
        .args(["test", "rules"])
        .arg(deploy.join("prometheus/alerts.test.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gather_body(route_extra: &str) -> String {
    format!(
        "models_dir: {}\npools:\n  g1: {{local: {{model: gather, version: 1}}}}\n  g2: {{local: {{model: gather, version: 1}}}}\n\
         routes:\n  - model: gather\n    stable: g1\n{route_extra}",
        repo().join("inference/tests/fixtures/models").display()
    )
}

/// `index` 3 answers 30; `index` 50 makes ONNX Runtime's Gather fail.
async fn gather(g: &Gateway, index: i64, extra: &[(&str, &str)]) -> Reply {
    let body =
        format!(r#"{{"inputs":[{{"name":"index","datatype":"INT64","shape":[1,1],"data":[{index}]}}]}}"#);
    let mut headers = vec![("x-api-key", g.keys.dev.as_str())];
    headers.extend_from_slice(extra);
    send(g, Proto::H1, "POST", "/v2/models/gather/infer", &headers, body).await
}

async fn ready(g: &Gateway) -> (u16, Value) {
    let (status, body) = admin_get(g, "/health/ready").await;
    (status, serde_json::from_str(&body).unwrap())
}

/// A gateway on [`gather_body`] whose pool `pool` is a [`breakable_pool`] of the gather model.
fn start_breakable(route_extra: &str, pool: &str) -> (Gateway, Arc<AtomicBool>) {
    let broken = Arc::new(AtomicBool::new(false));
    let model = repo().join("inference/tests/fixtures/models/gather/1/model.onnx");
    let flag = broken.clone();
    let g = start_patched(&gather_body(route_extra), Layout::File, |snap| {
        snap.pools
            .insert(pool.to_string(), breakable_pool(&model, "gather", flag));
    });
    (g, broken)
}

/// Inputs that make ONNX Runtime fail (an index out of range) are the client's: each gets a
/// 400, and the pool stays ready however many come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_inputs_do_not_make_a_pool_unready() {
    let _alone = one_at_a_time().await;
    let g = start(&gather_body(""));
    for _ in 0..3 * inference::pool::UNHEALTHY_AFTER {
        let r = gather(&g, 50, &[]).await;
        assert_eq!(r.status, 400, "{}", r.error());
        assert!(r.error().contains("cannot run on this input"), "{}", r.error());
    }
    assert_eq!(ready(&g).await.0, 200);
    assert_eq!(gather(&g, 3, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reflects_a_model_that_keeps_failing_and_recovers() {
    let _alone = one_at_a_time().await;
    let (g, broken) = start_breakable("", "g1");
    assert_eq!(ready(&g).await.0, 200);
    assert_eq!(admin_get(&g, "/health/live").await.0, 200);
    assert_eq!(admin_get(&g, "/health/startup").await.0, 200);
    assert_eq!(gather(&g, 3, &[]).await.status, 200);
    broken.store(true, Ordering::Relaxed);
    for _ in 0..inference::pool::UNHEALTHY_AFTER {
        assert_eq!(gather(&g, 3, &[]).await.status, 500);
    }
    let (status, body) = ready(&g).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["pools"]["g1"]["ready"], false);
    assert!(
        body["problems"][0].as_str().unwrap().contains("stable pool g1"),
        "{body}"
    );
    // The upkeep loop probes it with one inference; once it runs, the pool is ready again.
    broken.store(false, Ordering::Relaxed);
    let start = Instant::now();
    while ready(&g).await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the pool never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_cannot_serve_hands_its_traffic_to_stable() {
    let _alone = one_at_a_time().await;
    let (g, broken) = start_breakable("    canary: {pool: g2, weight: 100}\n", "g2");
    assert_eq!(gather(&g, 3, &[]).await.header("x-model-variant"), Some("canary"));
    broken.store(true, Ordering::Relaxed);
    for _ in 0..inference::pool::UNHEALTHY_AFTER {
        assert_eq!(gather(&g, 3, &[("x-canary", "true")]).await.status, 500);
    }
    // Weight 100, but the canary fails: stable answers, and it is counted.
    let r = gather(&g, 3, &[]).await;
    assert_eq!((r.status, r.header("x-model-variant")), (200, Some("stable")));
    let (_, metrics) = admin_get(&g, "/metrics").await;
    assert!(
        metrics.contains("gateway_canary_fallback_total{route=\"gather\"} 1"),
        "{metrics}"
    );
    // Still ready (stable serves), with the canary listed as degraded.
    let (status, body) = ready(&g).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["degraded"][0].as_str().unwrap().contains("canary pool g2"),
        "{body}"
    );
    // The split is recorded after the answer is written (the record step), so the client can
    // ask before the I/O thread has recorded it: wait for it, within a bound.
    let start = Instant::now();
    loop {
        let routes: Value = serde_json::from_str(&admin_get(&g, "/admin/routes").await.1).unwrap();
        let observed = &routes["routes"][0]["observed_last_minute"];
        assert_eq!(routes["routes"][0]["canary"]["weight"], 100);
        if observed["stable"].as_u64().unwrap() >= 1 && observed["canary"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{routes}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
