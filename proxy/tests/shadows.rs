//! Shadow traffic end to end: a real gateway mirrors to a real shadow model, and the report
//! (admin JSON, HTML, metrics, `gateway report`) shows exactly the disagreements that the
//! two models' own outputs predict. Plus the in-flight cap and the body cap.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::*;
use inference::{NamedTensor, Pool, PoolConfig, Tensor, TensorData};
use serde_json::{Value, json};

/// Each row's label from one model version, one row per run (as the gateway sends them).
async fn labels(version: u32, rows: &[Vec<f32>]) -> Vec<i64> {
    let path = repo().join(format!("models/breast-cancer/{version}/model.onnx"));
    let pool = Pool::load(
        "breast-cancer",
        &version.to_string(),
        &path,
        PoolConfig::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    for row in rows {
        let input = NamedTensor {
            name: "input".into(),
            tensor: Tensor::new(vec![1, row.len()], TensorData::F32(row.clone())).unwrap(),
        };
        let outputs = pool.infer(vec![input]).await.unwrap();
        match outputs[0].data() {
            TensorData::I64(v) => out.push(v[0]),
            other => panic!("label is {other:?}"),
        }
    }
    out
}

/// Polls the report until `n` mirrored requests are in it.
async fn report_with(g: &Gateway, n: u64) -> Value {
    for _ in 0..100 {
        let (status, text) = admin_get(g, "/admin/shadow/report?latest=1000").await;
        assert_eq!(status, 200, "{text}");
        let report: Value = serde_json::from_str(&text).unwrap();
        let done: u64 = report["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        if done >= n {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = admin_get(g, "/metrics").await;
    let shadow: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_shadow_"))
        .collect();
    panic!(
        "the report never reached {n} mirrored requests\n{}",
        shadow.join("\n")
    );
}

/// Waits until `n` copies were compared or shed as `no_spare_cpu` (no other drop allowed);
/// gives both counts.
async fn compared_or_shed(g: &Gateway, n: u64) -> (u64, u64) {
    for _ in 0..100 {
        let (_, metrics) = admin_get(g, "/metrics").await;
        let compared = series_in(&metrics, "gateway_shadow_requests_total{") as u64;
        let shed = series_in(&metrics, "gateway_shadow_dropped_total{reason=\"no_spare_cpu\"") as u64;
        let dropped = series_in(&metrics, "gateway_shadow_dropped_total{") as u64;
        assert_eq!(dropped, shed, "copies dropped for another reason\n{metrics}");
        if compared + shed >= n {
            assert_eq!(compared + shed, n, "{metrics}");
            return (compared, shed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} copies were never all compared or shed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disagreeing_shadow_yields_exactly_its_disagreements() {
    let _alone = one_at_a_time().await;
    let rows = boundary_rows();
    let (v1, v2) = (labels(1, &rows).await, labels(2, &rows).await);
    let expected: HashSet<String> = (0..rows.len())
        .filter(|&i| v1[i] != v2[i])
        .map(|i| format!("row-{i}"))
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < rows.len(),
        "the test data must hold both agreements and disagreements ({} of {})",
        expected.len(),
        rows.len()
    );

    // Every copy must be compared: the in-flight cap is raised past the request count. (At
    // the default 64, since the primary's adaptive batching answers a request in about
    // 0.1 ms, copies made faster than the idle-priority shadow finishes them were dropped in
    // three runs of four: the shadows that do not keep up of issue 21.)
    let g = start(&format!(
        "{LOCAL_POOLS}shadow: {{sample_agreements: 0, flush_ms: 50, max_in_flight: 1024}}\nroutes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{{pool: cancer-v2, percent: 100}}]\n"
    ));
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    for (i, row) in rows.iter().enumerate() {
        let id = format!("row-{i}");
        let r = conn
            .send(
                "POST",
                "/v2/models/breast-cancer/infer",
                &[
                    ("x-api-key", g.keys.batch.as_str()),
                    ("x-request-id", id.as_str()),
                ],
                row_body(row),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        // The client gets the primary's answer, never the shadow's.
        assert_eq!(r.json()["outputs"][0]["data"][0], v1[i], "row {i}");
        assert_eq!(r.header("x-model-version"), Some("1"));
    }

    let n = rows.len() as u64;
    let report = report_with(&g, n).await;
    let pairs = report["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 1);
    let p = &pairs[0];
    assert_eq!(
        (
            &p["route"],
            &p["primary_version"],
            &p["shadow"],
            &p["shadow_version"]
        ),
        (
            &json!("breast-cancer"),
            &json!("1"),
            &json!("cancer-v2"),
            &json!("2")
        )
    );
    assert_eq!(p["requests"], n);
    assert_eq!(p["compared"], n);
    assert_eq!(p["predictions"], n);
    assert_eq!(p["disagreements"], expected.len());
    assert_eq!(p["shadow_errors"], 0);
    assert_eq!(p["output_mismatches"], 0, "same outputs, shapes and types");
    let listed: HashSet<String> = p["latest_disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed, expected,
        "the recorded disagreements are exactly the expected rows"
    );
    // Each carries its inputs and both outputs.
    let d = &p["latest_disagreements"][0];
    assert_eq!(d["inputs"][0]["shape"], json!([1, 30]));
    assert_ne!(d["primary"][0]["data"], d["shadow"][0]["data"]);

    // Confusion matrix: primary class × shadow class, as the models' own outputs say.
    let mut want: BTreeMap<(i64, i64), u64> = BTreeMap::new();
    for i in 0..rows.len() {
        *want.entry((v1[i], v2[i])).or_default() += 1;
    }
    let labels: Vec<i64> = p["confusion_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_i64().unwrap())
        .collect();
    for (i, a) in labels.iter().enumerate() {
        for (j, b) in labels.iter().enumerate() {
            assert_eq!(
                p["confusion"][i][j].as_u64().unwrap(),
                want.get(&(*a, *b)).copied().unwrap_or(0),
                "confusion[{a}][{b}]"
            );
        }
    }
    let rate = p["agreement"]["rate"].as_f64().unwrap();
    let [lo, hi] = [0, 1].map(|i| p["agreement"]["ci95"][i].as_f64().unwrap());
    assert!((rate - (n as f64 - expected.len() as f64) / n as f64).abs() < 1e-12);
    assert!(lo < rate && rate < hi);
    assert!(p["prob_delta_max"].as_f64().unwrap() > 0.0);
    assert_eq!(
        p["prob_delta_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>(),
        n
    );
    assert!(p["latency_shadow"]["p99_ms"].as_f64().unwrap() > 0.0);

    // The same figures in Prometheus.
    let (_, metrics) = admin_get(&g, "/metrics").await;
    let labels = r#"{primary_version="1",route="breast-cancer",shadow_version="2"}"#;
    for (name, value) in [
        ("gateway_shadow_requests_total", n),
        ("gateway_shadow_disagreement_total", expected.len() as u64),
        ("gateway_shadow_agreement_total", n - expected.len() as u64),
        ("gateway_shadow_prob_delta_count", n),
    ] {
        let line = format!("{name}{labels} {value}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }

    // The page: self-contained, with every chart.
    let (status, html) = admin_get(&g, "/admin/shadow/report.html").await;
    assert_eq!(status, 200);
    for part in [
        "Agreement over time",
        "probability difference",
        "Confusion matrix",
        "Latency",
        "Latest disagreements",
        "row-",
        "<svg",
    ] {
        assert!(html.contains(part), "{part} missing from the page");
    }
    for external in ["<script", "src=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page must render offline: {external}"
        );
    }
    // Links only within the page: its contents line, to each pair and to model quality.
    let links: Vec<&str> = html.split("href=\"").skip(1).collect();
    assert!(
        links.iter().all(|l| l.starts_with('#')),
        "the page must render offline: {links:?}"
    );
    assert!(
        html.contains("<a href=\"#quality\">"),
        "no link to the quality section"
    );
    for l in &links {
        let id = &l[1..l.find('"').unwrap()];
        assert!(
            html.contains(&format!("id=\"{id}\"")) || html.contains(&format!("id={id}>")),
            "no section {id}"
        );
    }
    // The latest disagreements come folded, with their count.
    assert!(html.contains("<details class=latest><summary><h3>Latest disagreements and errors: "));
    let (status, filtered) = admin_get(&g, "/admin/shadow/report?route=digits").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&filtered).unwrap()["pairs"],
        json!([])
    );
    assert_eq!(admin_get(&g, "/admin/shadow/report?since=soon").await.0, 400);

    // While the gateway writes, `--export` takes a consistent copy (how replicas' stores are
    // collected for merging).
    let store = g.dir.join("data/shadows.sqlite3");
    let fleet = g.dir.join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["report", "--store"])
        .arg(&store)
        .arg("--export")
        .arg(fleet.join("replica-a.sqlite3"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // After a graceful stop the CLI reads the same figures from the store.
    g.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["report", "--format", "json", "--since", "1h", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["pairs"][0]["disagreements"], expected.len());
    assert_eq!(cli["pairs"][0]["requests"], n);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["report", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("breast-cancer: primary v1 vs shadow cancer-v2 (v2)"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{} request(s) disagree", expected.len())),
        "{table}"
    );

    // Replicas keep a store each; collected into one folder they merge into one report. Two
    // copies of this store (one exported live, one copied after the stop) stand for two
    // replicas that saw the same traffic: every count doubles, rates and quantiles do not,
    // and the latest disagreements name their store.
    std::fs::copy(&store, fleet.join("replica-b.sqlite3")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["report", "--format", "json", "--latest", "1000", "--store"])
        .arg(&fleet)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(merged["stores"].as_array().unwrap().len(), 2);
    let (one, both) = (&cli["pairs"][0], &merged["pairs"][0]);
    for field in [
        "requests",
        "compared",
        "disagreements",
        "predictions",
        "agreeing_predictions",
    ] {
        assert_eq!(
            both[field].as_u64().unwrap(),
            2 * one[field].as_u64().unwrap(),
            "{field}"
        );
    }
    for (a, b) in one["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .zip(both["confusion"].as_array().unwrap())
    {
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            assert_eq!(y.as_u64().unwrap(), 2 * x.as_u64().unwrap());
        }
    }
    assert_eq!(both["agreement"]["rate"], one["agreement"]["rate"]);
    assert_eq!(both["latency_primary"], one["latency_primary"]);
    let sources: std::collections::BTreeSet<String> = both["latest_disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["store"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sources.len(), 2, "{sources:?}");
    assert_eq!(
        both["latest_disagreements"].as_array().unwrap().len(),
        2 * expected.len()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["report", "--store"])
        .arg(fleet.join("replica-a.sqlite3"))
        .arg("--store")
        .arg(fleet.join("replica-b.sqlite3"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("merged from 2 stores"), "{table}");
}

/// Copies to a shadow-only local pool run on the I/O thread that answered (`io_threads`, in
/// its quiet turns) or on the shadow runtime's thread (`shadow_thread`), as configured; either
/// way every copy is compared, and the disagreements are exactly those the models predict.
/// Twice through the rows: an I/O thread takes copies once what one costs is known to fit its
/// pool's `inline_max`, and the pool's only lone run before the first copies is its warm-up,
/// ONNX Runtime's first (the first copies may go to the shadow thread and measure it there).
#[tokio::test(flavor = "multi_thread")]
async fn local_copies_run_on_the_configured_thread_and_each_is_compared() {
    let _alone = one_at_a_time().await;
    let rows = boundary_rows();
    let (v1, v2) = (labels(1, &rows).await, labels(2, &rows).await);
    let expected = (0..rows.len()).filter(|&i| v1[i] != v2[i]).count() as u64;
    let n = rows.len() as u64;
    for (setting, thread, other) in [("io_threads", "io", "shadow"), ("shadow_thread", "shadow", "io")] {
        let g = start(&format!(
            // The shadow pool's inline_max well above its run: which thread runs a copy must not
            // depend on how long a run took while the other tests of this file load the CPU
            // (on a slow host, pass 2 ran 48–65 of 324 copies on the shadow thread).
            "pools:\n  cancer-v1: {{local: {{model: breast-cancer, version: 1}}}}\n  cancer-v2: {{local: {{model: breast-cancer, version: 2, inline_max_us: 10000}}}}\nshadow: {{sample_agreements: 0, flush_ms: 50, max_in_flight: 1024, local_copies: {setting}}}\nroutes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{{pool: cancer-v2, percent: 100}}]\n"
        ));
        let mut conn = connect(g.https, &g.tls, Proto::H1).await;
        let ran = |metrics: &str, thread: &str| {
            series_in(
                metrics,
                &format!("gateway_shadow_local_copies_total{{thread=\"{thread}\"}}"),
            ) as u64
        };
        let mut before = (0, 0);
        for pass in 1..=2u64 {
            for (i, row) in rows.iter().enumerate() {
                let r = conn
                    .send(
                        "POST",
                        "/v2/models/breast-cancer/infer",
                        &[("x-api-key", g.keys.batch.as_str())],
                        row_body(row),
                    )
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                assert_eq!(r.json()["outputs"][0]["data"][0], v1[i], "{setting}: row {i}");
            }
            // Every copy is compared or shed by the CPU budget (counted), none lost. The tests
            // of this file run as threads of one process, whose CPU the budget measures: on a
            // slow 2-core host (2026-12-05) the others' load had it shed 11–309 of 648 copies
            // here in most runs. Admission has its own tests (no_copies_without_spare_cpu).
            let (compared, shed) = compared_or_shed(&g, pass * n).await;
            let p = &report_with(&g, compared).await["pairs"][0];
            assert_eq!(p["compared"].as_u64(), Some(compared), "{setting}, pass {pass}");
            let disagreements = p["disagreements"].as_u64().unwrap();
            if shed == 0 {
                assert_eq!(disagreements, pass * expected, "{setting}, pass {pass}");
            } else {
                assert!(disagreements <= pass * expected, "{setting}, pass {pass}");
            }
            let (_, metrics) = admin_get(&g, "/metrics").await;
            let now = (ran(&metrics, thread), ran(&metrics, other));
            assert_eq!(
                now.0 + now.1,
                compared,
                "{setting}: every compared copy ran without a task\n{metrics}"
            );
            if pass == 2 {
                // The first pass may run a few on the shadow thread (a pool's lone run not
                // yet measured); by the second every copy runs where configured.
                assert_eq!(
                    now.1, before.1,
                    "{setting}: the second pass ran on the {thread} thread"
                );
                assert!(
                    now.0 > before.0,
                    "{setting}: the second pass ran copies\n{metrics}"
                );
            }
            before = now;
        }
        if setting == "shadow_thread" {
            assert_eq!(before.1, 0, "no copy ran on an I/O thread");
        }
        // Wherever they ran, the copies' CPU reaches the counter of shadow work (added at
        // the admission's next window, 50 ms on).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let spent = loop {
            let spent = metric(&g, "gateway_shadow_cpu_seconds_total ").await;
            if spent > 0.0 || std::time::Instant::now() > deadline {
                break spent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            spent > 0.0,
            "{setting}: {} copies ran, no shadow CPU counted",
            before.0 + before.1
        );
    }
}

/// `shadow.max_queued` crossed, in both places a copy waits: for an I/O thread's quiet turn
/// and for the shadow runtime's dispatcher. At 4 waiting, eight connections that keep a
/// gateway's I/O threads busy make more copies within a dispatcher's millisecond (or
/// between an I/O thread's quiet turns) than that; the rest are dropped as `queue_full`, and
/// every request is either in the report or counted as dropped.
#[tokio::test(flavor = "multi_thread")]
async fn copies_beyond_the_waiting_bound_are_dropped_and_counted() {
    let _alone = one_at_a_time().await;
    const CONNS: usize = 8;
    const EACH: u64 = 50;
    for setting in ["io_threads", "shadow_thread"] {
        let g = start(&format!(
            "{LOCAL_POOLS}shadow: {{sample_agreements: 0, flush_ms: 50, max_in_flight: 4096, max_queued: 4, local_copies: {setting}}}\n\
             rate_limits: {{tiers: {{batch: {{per_second: 10000000, burst: 10000000}}}}}}\n\
             routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{{pool: cancer-v2, percent: 100}}]\n"
        ));
        let mut tasks = Vec::new();
        for _ in 0..CONNS {
            let mut conn = connect(g.https, &g.tls, Proto::H2).await;
            let key = g.keys.batch.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    assert_eq!(send_example(&mut conn, &key).await.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = CONNS as u64 * EACH;
        let mut seen = (0, Value::Null);
        for _ in 0..100 {
            let (_, text) = admin_get(&g, "/admin/shadow/report?latest=1000").await;
            let report: Value = serde_json::from_str(&text).unwrap();
            let p = &report["pairs"][0];
            let dropped: u64 = p["dropped"]
                .as_object()
                .map_or(0, |d| d.values().map(|v| v.as_u64().unwrap()).sum());
            seen = (p["requests"].as_u64().unwrap_or(0) + dropped, p.clone());
            if seen.0 >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let p = seen.1;
        assert_eq!(
            seen.0, n,
            "{setting}: every request compared or counted as dropped: {p}"
        );
        let compared = p["compared"].as_u64().unwrap();
        let share = p["compared_share"].as_f64().unwrap();
        assert!(
            (share - compared as f64 / n as f64).abs() < 1e-9,
            "{setting}: the report's compared share is compared over copies made: {p}"
        );
        let full = p["dropped"]["queue_full"].as_u64().unwrap_or(0);
        eprintln!(
            "{setting}: {full} of {n} copies dropped as queue_full; {}",
            p["dropped"]
        );
        assert!(full > 0, "{setting}: some copies found 4 waiting: {p}");
        let (_, metrics) = admin_get(&g, "/metrics").await;
        let counted = series_in(
            &metrics,
            "gateway_shadow_dropped_total{reason=\"queue_full\",route=\"breast-cancer\",shadow=\"cancer-v2\"}",
        ) as u64;
        assert_eq!(
            counted, full,
            "{setting}: the metric and the report agree\n{metrics}"
        );
        let thread = if setting == "io_threads" { "io" } else { "shadow" };
        assert!(
            series_in(
                &metrics,
                &format!("gateway_shadow_local_copies_total{{thread=\"{thread}\"}}")
            ) > 0.0,
            "{setting}: copies waited where the setting says\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_beyond_the_caps_are_dropped_and_counted() {
    let _alone = one_at_a_time().await;
    // A shadow that takes 2 s, one slot per route: while one copy waits, the rest are dropped.
    let slow = FakeUpstream::start(Misbehaviour::Sleep(Duration::from_secs(2))).await;
    let g = start(&format!(
        "{LOCAL_POOLS}  slow: {{http: {{endpoints: [\"{}\"], model: breast-cancer, version: 9, timeout_ms: 5000, health_check: {{interval_ms: 100}}}}}}\n\
         shadow: {{max_in_flight: 1, timeout_ms: 3000, max_body_bytes: 100000, flush_ms: 50}}\n\
         routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{{pool: slow, percent: 100}}]\n",
        slow.addr
    ));
    let mut conn = connect(g.https, &g.tls, Proto::H2).await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = conn
            .send(
                "POST",
                "/v2/models/breast-cancer/infer",
                &[("x-api-key", g.keys.batch.as_str())],
                example(),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the client never waits for the slow shadow"
    );
    // A body over the shadow cap is answered but not mirrored.
    let big = json!({"inputs": [{"name": "input", "shape": [2000, 30], "datatype": "FP32", "data": vec![0.5f32; 60000]}]})
        .to_string();
    let r = conn
        .send(
            "POST",
            "/v2/models/breast-cancer/infer",
            &[("x-api-key", g.keys.batch.as_str())],
            big,
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, metrics) = admin_get(&g, "/metrics").await;
    let dropped = |reason: &str| {
        series_in(
            &metrics,
            &format!(
                "gateway_shadow_dropped_total{{reason=\"{reason}\",route=\"breast-cancer\",shadow=\"slow\"}}"
            ),
        ) as u64
    };
    assert_eq!(dropped("in_flight_cap"), 19, "{metrics}");
    assert_eq!(dropped("body_too_large"), 1, "{metrics}");
    // The drops are in the report too, and the one copy made is a shadow error once the
    // shadow's answer (a 500, after 2 s) comes.
    let report = report_with(&g, 1).await;
    let p = &report["pairs"][0];
    assert_eq!(p["dropped"]["in_flight_cap"], 19);
    assert_eq!(p["dropped"]["body_too_large"], 1);
    assert_eq!(p["shadow_errors"], 1);
    assert_eq!(p["primary_errors"], 0);
}

/// `shadow.max_cpu_percent` crossed: a process that uses more of its cores than the limit
/// makes no copies (dropped as `no_spare_cpu`), and every client request is still answered.
#[tokio::test(flavor = "multi_thread")]
async fn no_copies_without_spare_cpu() {
    let _alone = one_at_a_time().await;
    let g = start(
        "shadow: {max_cpu_percent: 1}\n\
         rate_limits: {tiers: {batch: {per_second: 10000000, burst: 10000000}}}\n\
         pools:\n  cancer-v1: {local: {model: breast-cancer, version: 1}}\n  cancer-v3: {local: {model: breast-cancer, version: 3}}\n\
         routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{pool: cancer-v3, percent: 100}]\n",
    );
    // Well over the first window's allowance (a budget measured before any load), for a
    // second: the process then uses over 1% of its cores, so the budget is nothing.
    let end = std::time::Instant::now() + Duration::from_secs(1);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut conn = connect(g.https, &g.tls, Proto::H2).await;
        let key = g.keys.batch.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while std::time::Instant::now() < end {
                assert_eq!(send_example(&mut conn, &key).await.status, 200);
                n += 1;
            }
            n
        }));
    }
    let mut sent = 0u64;
    for t in tasks {
        sent += t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = admin_get(&g, "/metrics").await;
    let count = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let shed = count("gateway_shadow_dropped_total{reason=\"no_spare_cpu\"");
    let made = count("gateway_shadow_requests_total");
    let dropped = count("gateway_shadow_dropped_total{");
    assert!(shed > 0, "{sent} requests, no copy shed:\n{metrics}");
    // The first window's allowance, at most, was copied; the rest was shed.
    assert!(shed * 2 > sent, "{shed} of {sent} shed:\n{metrics}");
    assert_eq!(
        made + dropped,
        sent,
        "every request was copied or dropped:\n{metrics}"
    );
    // The measured cost of a copy and the foreground's CPU are exported.
    for gauge in [
        "gateway_foreground_cpu_cores ",
        "gateway_shadow_copy_cpu_seconds ",
    ] {
        assert!(metrics.contains(gauge), "{metrics}");
    }
}
