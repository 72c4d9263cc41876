//! Model quality through a real gateway, with the bundled models and their held-out rows
//! (`models/testdata/*-heldout.json`, with true labels): input drift stays under the
//! threshold on in-distribution rows and rises above it on shifted ones; feedback with the
//! true labels gives exactly the accuracy of the answers; every bad feedback gets its own
//! status; a canary worse on labelled traffic is rolled back by the accuracy gate; and
//! feedback joins across two gateways sharing a real Redis. The figures themselves (requests
//! to detect, false-alarm rate, cost) come from `loadtests/bench_quality.sh`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

const POOLS: &str = "pools:\n  cancer-v1: {local: {model: breast-cancer, version: 1}}\n  cancer-v2: {local: {model: breast-cancer, version: 2}}\n  cancer-v3: {local: {model: breast-cancer, version: 3}}\n";

/// Held-out rows and their true labels.
fn heldout() -> (Vec<Vec<f32>>, Vec<i64>) {
    heldout_rows("breast-cancer")
}

fn body(rows: &[Vec<f32>]) -> String {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "input", "shape": [rows.len(), 30], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// One answered prediction: its request id, variant and predicted labels.
struct Answer {
    id: String,
    variant: String,
    labels: Vec<i64>,
}

async fn predict(conn: &mut Connection, key: &str, rows: &[Vec<f32>], extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("x-api-key", key), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    let r = conn
        .send("POST", "/v2/models/breast-cancer/infer", &headers, body(rows))
        .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let out = r.json();
    let label = out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Answer {
        id: r.header("x-request-id").unwrap().to_string(),
        variant: r.header("x-model-variant").unwrap_or("-").to_string(),
        labels: label,
    }
}

async fn feedback(g: &Gateway, key: &str, body: String) -> Reply {
    send(
        g,
        Proto::H1,
        "POST",
        "/v2/models/breast-cancer/feedback",
        &[("x-api-key", key), ("content-type", "application/json")],
        body,
    )
    .await
}

async fn quality(g: &Gateway) -> Value {
    let (status, body) = admin_get(g, "/admin/quality").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the drift figures were computed over at least `rows` rows.
async fn drift_after(g: &Gateway, variant: &str, rows: u64) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let q = quality(g).await;
        let d = q["routes"]["breast-cancer"]["drift"][variant].clone();
        if d["rows"].as_u64().unwrap_or(0) >= rows || Instant::now() > until {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_stays_low_on_heldout_rows_and_rises_on_shifted_ones() {
    let _alone = one_at_a_time().await;
    // The window holds exactly two copies of the 143 held-out rows, so its figure is the
    // held-out set's own PSI against the training profile (0.174 on "mean symmetry").
    // A models folder with breast-cancer/1 and its profile, and the same model as "plain"
    // without one: a model without a profile serves as before; its drift is unavailable.
    let models = temp_dir("models");
    for (name, profile) in [("breast-cancer", true), ("plain", false)] {
        let dir = models.join(name).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        let from = repo().join("models/breast-cancer/1");
        std::fs::copy(from.join("model.onnx"), dir.join("model.onnx")).unwrap();
        if profile {
            std::fs::copy(from.join("profile.json"), dir.join("profile.json")).unwrap();
        }
    }
    let g = start(&format!(
        // About 460 requests as fast as the pool answers: past the default key rate's burst.
        "models_dir: {}\nrate_limits: {{default: {{per_second: 100000, burst: 100000}}, tiers: {{batch: {{per_second: 2000, burst: 4000}}}}}}\nquality: {{drift: {{window: 286, min_rows: 100, interval_ms: 100}}}}\npools:\n  cancer-v1: {{local: {{model: breast-cancer, version: 1}}}}\n  plain-v1: {{local: {{model: plain, version: 1}}}}\nroutes:\n  - model: breast-cancer\n    stable: cancer-v1\n  - model: plain\n    stable: plain-v1\n",
        models.display()
    ));
    let (rows, _) = heldout();
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    for _ in 0..2 {
        for chunk in rows.chunks(11) {
            predict(&mut conn, &g.keys.dev, chunk, &[]).await;
        }
    }
    let before = drift_after(&g, "stable", 286).await;
    let psi = before["input_psi"].as_f64().unwrap();
    assert!(psi < 0.2, "in-distribution rows: PSI {psi} {before:#}");
    assert!(
        before["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["drifted"] == false)
    );
    let gauge = metric(
        &g,
        "gateway_input_drift_psi{route=\"breast-cancer\",variant=\"stable\"}",
    )
    .await;
    assert!(
        (gauge - psi).abs() < 1e-9,
        "the gauge says what the admin API says: {gauge} vs {psi}"
    );
    // The same rows with every feature 20% larger, one row per request: within one window
    // (286 requests) the figure is over the threshold.
    let shifted: Vec<Vec<f32>> = rows.iter().map(|r| r.iter().map(|x| x * 1.2).collect()).collect();
    for r in shifted.iter().cycle().take(286) {
        predict(&mut conn, &g.keys.dev, std::slice::from_ref(r), &[]).await;
    }
    // The figures are computed at idle priority: wait (at most 10 s) until they are of a
    // window that holds only the shifted rows (its figure crosses the threshold earlier,
    // while some features still have unshifted rows in it).
    let until = Instant::now() + Duration::from_secs(10);
    let seen = 2 * rows.len() as u64 + 286;
    let after = loop {
        let d = quality(&g).await["routes"]["breast-cancer"]["drift"]["stable"].clone();
        if d["rows_seen"].as_u64().unwrap_or(0) >= seen || Instant::now() > until {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let psi = after["input_psi"].as_f64().unwrap();
    assert!(psi > 0.2, "shifted rows: PSI {psi}");
    let drifted: Vec<&str> = after["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["drifted"] == true)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(drifted.len() > 10, "most features moved: {drifted:?}");
    assert!(
        metric(
            &g,
            "gateway_input_drift_psi{route=\"breast-cancer\",variant=\"stable\"}"
        )
        .await
            > 0.2
    );
    assert!(after["prediction_psi"].as_f64().is_some());

    // The model without a profile: served, its drift unavailable (not 0), no gauge.
    for r in &rows {
        let headers = [
            ("x-api-key", g.keys.dev.as_str()),
            ("content-type", "application/json"),
        ];
        let reply = conn
            .send(
                "POST",
                "/v2/models/plain/infer",
                &headers,
                body(std::slice::from_ref(r)),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.error());
    }
    let until = Instant::now() + Duration::from_secs(10);
    let plain = loop {
        let d = quality(&g).await["routes"]["plain"]["drift"]["stable"].clone();
        if d["predictions"].as_u64().unwrap_or(0) >= rows.len() as u64 || Instant::now() > until {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(plain["profile"], false, "{plain:#}");
    assert!(plain["input_psi"].is_null(), "{plain:#}");
    assert!(plain["prediction_psi"].is_null(), "{plain:#}");
    let (_, scrape) = admin_get(&g, "/metrics").await;
    assert!(
        !scrape.contains("gateway_input_drift_psi{route=\"plain\""),
        "no gauge without a profile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_gives_exactly_the_accuracy_of_the_answers_and_refuses_what_it_cannot_join() {
    let _alone = one_at_a_time().await;
    let g = start(&format!(
        "{POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    canary: {{pool: cancer-v2, weight: 50}}\n    shadows: [{{pool: cancer-v3, percent: 100}}]\n"
    ));
    let (rows, labels) = heldout();
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    let mut items = Vec::new();
    // (variant) -> (labelled, correct), from the answers themselves.
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut at = 0;
    for (i, size) in [1usize, 2, 3, 5].iter().cycle().enumerate() {
        if at >= rows.len() {
            break;
        }
        let end = (at + size).min(rows.len());
        let key = if i % 2 == 0 { &g.keys.dev } else { &g.keys.batch };
        let a = predict(&mut conn, key, &rows[at..end], &[]).await;
        let truth = &labels[at..end];
        let e = expected.entry(a.variant.clone()).or_default();
        e.0 += truth.len() as u64;
        e.1 += a.labels.iter().zip(truth).filter(|(p, t)| p == t).count() as u64;
        items.push((key.clone(), json!({"request_id": a.id, "labels": truth})));
        at = end;
    }
    assert!(expected.len() == 2, "both variants answered: {expected:?}");
    // One list per key (a key's tenant owns its predictions).
    for key in [&g.keys.dev, &g.keys.batch] {
        let list: Vec<&Value> = items.iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect();
        let r = feedback(&g, key, serde_json::to_string(&list).unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.error());
        let a = r.json();
        assert_eq!(a["joined"].as_u64().unwrap() as usize, list.len(), "{a:#}");
    }
    // The shadow's answers arrive on their own time; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let q = quality(&g).await;
    let route = &q["routes"]["breast-cancer"];
    for (variant, (labelled, correct)) in &expected {
        let t = route["accuracy"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["predicted_by"] == variant.as_str())
            .unwrap_or_else(|| panic!("{variant} in {route:#}"));
        assert_eq!(
            (t["labelled"].as_u64().unwrap(), t["correct"].as_u64().unwrap()),
            (*labelled, *correct)
        );
        let series = format!(
            "gateway_feedback_labels_total{{result=\"correct\",route=\"breast-cancer\",variant=\"{variant}\""
        );
        assert_eq!(metric(&g, &series).await as u64, *correct);
        let lo_hi = t["interval95"].as_array().unwrap();
        let acc = t["accuracy"].as_f64().unwrap();
        assert!(lo_hi[0].as_f64().unwrap() <= acc && acc <= lo_hi[1].as_f64().unwrap());
    }
    let shadow = &route["shadows"][0];
    assert_eq!(shadow["shadow"], "cancer-v3");
    assert_eq!(
        shadow["shadow_accuracy"]["labelled"].as_u64().unwrap(),
        rows.len() as u64,
        "{shadow:#}"
    );
    assert_eq!(
        shadow["primary_on_same_requests"]["labelled"].as_u64().unwrap(),
        rows.len() as u64
    );
    let verdict = &route["verdict"]["accuracy"];
    assert!(
        verdict["text"].as_str().unwrap().contains("at n ="),
        "{verdict:#}"
    );

    // Bad feedback: each its own status and message, and nothing joined by mistake.
    let one = predict(&mut conn, &g.keys.dev, &rows[..2], &[]).await;
    let fb = |id: &str, labels: Value| json!({"request_id": id, "labels": labels}).to_string();
    let r = feedback(&g, &g.keys.batch, fb(&one.id, json!([1, 1]))).await;
    assert_eq!(r.status, 403, "another tenant's prediction: {}", r.error());
    let r = feedback(&g, &g.keys.dev, fb(&one.id, json!([1]))).await;
    assert_eq!(r.status, 400, "one label for two rows");
    assert!(r.error().contains("one label per row"), "{}", r.error());
    let r = feedback(&g, &g.keys.dev, fb("no-such-request", json!([1]))).await;
    assert_eq!(r.status, 404, "{}", r.error());
    let r = feedback(&g, &g.keys.dev, "{\"labels\": [1]}".into()).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("request_id"), "{}", r.error());
    let r = feedback(&g, &g.keys.dev, fb(&one.id, json!([1, 0]))).await;
    assert_eq!(
        r.status,
        200,
        "the right tenant and rows still join: {}",
        r.error()
    );
    let r = feedback(&g, &g.keys.dev, fb(&one.id, json!([1, 0]))).await;
    assert_eq!(r.status, 409, "a second label for the same request");
    let r = feedback(&g, "not-a-key", fb(&one.id, json!([1, 0]))).await;
    assert_eq!(r.status, 401);
    // A client's own request id used twice names two predictions: never joined.
    predict(&mut conn, &g.keys.dev, &rows[..1], &[("x-request-id", "mine-1")]).await;
    predict(&mut conn, &g.keys.dev, &rows[1..2], &[("x-request-id", "mine-1")]).await;
    let r = feedback(&g, &g.keys.dev, fb("mine-1", json!([1]))).await;
    assert_eq!(r.status, 409);
    assert!(r.error().contains("more than one prediction"), "{}", r.error());
    // MAX_FEEDBACK_ROWS: a prediction of 1,024 rows is kept for its labels; one of 1,025
    // is not (its feedback is unknown, 404).
    let many = |n: usize| -> Vec<Vec<f32>> { rows.iter().cycle().take(n).cloned().collect() };
    for (n, status) in [(1024, 200), (1025, 404)] {
        let a = predict(&mut conn, &g.keys.dev, &many(n), &[]).await;
        let r = feedback(&g, &g.keys.dev, fb(&a.id, json!(vec![0; n]))).await;
        assert_eq!(r.status, status, "a prediction of {n} rows: {:?}", r.body);
    }
    // MAX_ITEMS: a body of 10,000 items is read (each unknown here); 10,001 is refused whole.
    for (n, status) in [(10_000, 200), (10_001, 400)] {
        let list: Vec<Value> = (0..n)
            .map(|i| json!({"request_id": format!("x{i}"), "labels": [0]}))
            .collect();
        let r = feedback(&g, &g.keys.dev, serde_json::to_string(&list).unwrap()).await;
        assert_eq!(r.status, status, "{n} items: {:?}", r.body);
        if status == 400 {
            assert!(r.error().contains("at most 10000"), "{}", r.error());
        }
    }
    let r = send(
        &g,
        Proto::H1,
        "GET",
        "/v2/models/breast-cancer/feedback",
        &[("x-api-key", &g.keys.dev)],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_worse_on_labelled_traffic_is_rolled_back_by_the_accuracy_gate() {
    let _alone = one_at_a_time().await;
    // Traffic made of rows stable (the logistic regression) gets right and the canary (the
    // random forest) gets wrong, mixed with rows both get right: the canary is worse on it.
    let policy = "{steps: [50, 100], interval: 2s, min_requests: 10, gates: {min_accuracy_delta: -0.02, min_labels: 20}, on_failure: rollback}";
    let g = start(&format!(
        "{POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v2\n    canary: {{pool: cancer-v3, weight: 0, rollout: {policy}}}\n"
    ));
    let (rows, labels) = heldout();
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    let ask = |v: &'static str| [("x-canary", if v == "canary" { "true" } else { "false" })];
    let mut traffic = Vec::new();
    for (row, label) in rows.iter().zip(&labels) {
        let s = predict(&mut conn, &g.keys.dev, std::slice::from_ref(row), &ask("stable")).await;
        let c = predict(&mut conn, &g.keys.dev, std::slice::from_ref(row), &ask("canary")).await;
        let (s_ok, c_ok) = (s.labels[0] == *label, c.labels[0] == *label);
        if s_ok && !c_ok {
            traffic.extend(std::iter::repeat_n((row.clone(), *label), 3));
        } else if s_ok && c_ok {
            traffic.push((row.clone(), *label));
        }
    }
    assert!(traffic.len() > 60, "{} rows", traffic.len());
    let until = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let state = loop {
        let (row, label) = &traffic[i % traffic.len()];
        i += 1;
        // Keys of tenant "bulk" get the split (only "dev" may choose a variant).
        let a = predict(&mut conn, &g.keys.batch, std::slice::from_ref(row), &[]).await;
        let r = feedback(
            &g,
            &g.keys.batch,
            json!({"request_id": a.id, "labels": [label]}).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.error());
        if i % 20 == 0 {
            let (_, body) = admin_get(&g, "/admin/rollouts").await;
            let s: Value = serde_json::from_str(&body).unwrap();
            let r = s["rollouts"]["breast-cancer"].clone();
            if r["status"] != "running" || Instant::now() > until {
                break r;
            }
        }
    };
    assert_eq!(state["status"], "rolled_back", "{state:#}");
    let last = state["history"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["reason"].as_str().unwrap().contains("accuracy canary"),
        "{last:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_joins_across_two_gateways_sharing_redis() {
    let _alone = one_at_a_time().await;
    let redis = Redis::start();
    let conf = format!(
        "quality: {{feedback: {{redis: {{url: \"{}\", prefix: fleet}}}}}}\n{POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{{pool: cancer-v3, percent: 100}}]\n",
        redis.url()
    );
    let a = start(&conf);
    let b = start(&conf);
    // Both replicas must share keys (a fleet shares its keys file): b takes a's.
    std::fs::copy(a.dir.join("api-keys.yaml"), b.dir.join("api-keys.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rows, labels) = heldout();
    let mut conn = connect(a.https, &a.tls, Proto::H1).await;
    let mut list = Vec::new();
    let mut correct = 0;
    for (row, label) in rows.iter().zip(&labels).take(40) {
        let p = predict(&mut conn, &a.keys.dev, std::slice::from_ref(row), &[]).await;
        correct += u64::from(p.labels[0] == *label);
        list.push(json!({"request_id": p.id, "labels": [label]}));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = feedback(&b, &a.keys.dev, serde_json::to_string(&list).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(r.json()["joined"], 40, "{}", r.json());
    // The same labels at the first replica: duplicates, not a second count.
    let r = feedback(&a, &a.keys.dev, serde_json::to_string(&list).unwrap()).await;
    assert_eq!(r.json()["duplicate"], 40, "{}", r.json());
    let q = quality(&b).await;
    let route = &q["routes"]["breast-cancer"];
    assert_eq!(route["accuracy"][0]["labelled"], 40, "{route:#}");
    assert_eq!(route["accuracy"][0]["correct"], correct);
    // The shadow ran on replica a; its classes waited in Redis and joined on b.
    assert_eq!(
        route["shadows"][0]["shadow_accuracy"]["labelled"], 40,
        "{route:#}"
    );
    assert!(!redis.keys("fleet").is_empty());
}
