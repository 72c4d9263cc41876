//! The prediction cache through the real gateway (TLS, real pools): hits and misses per
//! variant, sticky clients, JSON, binary tensors, `/predict` and gRPC sharing entries, a
//! version change by reload, the byte bound, and the metrics. The clock, the hash collision
//! and the key itself are tested in `proxy/src/cache/`.

use std::time::{Duration, Instant};

use crate::common::grpc::{channel, row_request, with_meta};
use crate::common::*;
use serde_json::Value;

const BODY: &str = "pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
  cancer-v2: {local: {model: breast-cancer, version: 2}}
routes:
  - model: breast-cancer
    stable: cancer-v1
    canary: {pool: cancer-v2, weight: 50}
    cache: {ttl: 60s, max_bytes: 1MiB}
  - model: uncached
    stable: cancer-v1
    canary: {pool: cancer-v2, weight: 50}
";

fn row(i: usize) -> Vec<f32> {
    let (rows, _) = heldout_rows("breast-cancer");
    rows[i % rows.len()].clone()
}

async fn post(g: &Gateway, path: &str, headers: &[(&str, &str)], body: impl Into<bytes::Bytes>) -> Reply {
    let mut h = vec![
        ("x-api-key", g.keys.dev.as_str()),
        ("content-type", "application/json"),
    ];
    h.extend_from_slice(headers);
    send(g, Proto::H2, "POST", path, &h, body).await
}

/// The outputs of an answer, without its id (the request's own).
fn outputs(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["outputs"].clone()
}

/// An inference on the cached route.
async fn ask(g: &Gateway, headers: &[(&str, &str)], body: impl Into<bytes::Bytes>) -> Reply {
    post(g, "/v2/models/breast-cancer/infer", headers, body).await
}

/// Waits (at most 5 s) until the config in force is generation `n`.
async fn reloaded(g: &Gateway, n: u64) {
    let until = Instant::now() + Duration::from_secs(5);
    while routes(g).await["generation"] != n {
        assert!(Instant::now() < until, "no reload to generation {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn routes(g: &Gateway) -> Value {
    let (status, body) = admin_get(g, "/admin/routes").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Waits (at most 5 s) until the stable variant's drift window has seen `rows` rows, then
/// labels request "second" (a hit): feedback joins it.
async fn drift_rows_and_a_label(g: &Gateway, rows: u64) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, q) = admin_get(g, "/admin/quality").await;
        let q: Value = serde_json::from_str(&q).unwrap();
        if q["routes"]["breast-cancer"]["drift"]["stable"]["rows_seen"] == rows {
            break;
        }
        assert!(
            Instant::now() < until,
            "not every hit's row is in the drift window: {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fb = serde_json::json!({"request_id": "second", "labels": [1]}).to_string();
    let r = post(g, "/v2/models/breast-cancer/feedback", &[], fb).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["joined"], 1, "{}", r.json());
}

async fn cache_of(g: &Gateway) -> Value {
    routes(g).await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "breast-cancer")
        .unwrap()["cache"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variant_gets_its_own_answers_and_the_request_keeps_its_id() {
    let _alone = one_at_a_time().await;
    let g = start(BODY);
    let body = row_body(&row(0));
    for (canary, version) in [("false", "1"), ("true", "2")] {
        let uncached = post(
            &g,
            "/v2/models/uncached/infer",
            &[("x-canary", canary)],
            body.clone(),
        )
        .await;
        assert_eq!(
            uncached.header("x-cache"),
            None,
            "a route without cache: no field"
        );
        let first = ask(&g, &[("x-canary", canary)], body.clone()).await;
        assert_eq!(first.header("x-cache"), Some("miss"));
        let again = ask(
            &g,
            &[("x-canary", canary), ("x-request-id", "mine-1")],
            body.clone(),
        )
        .await;
        assert_eq!(again.header("x-cache"), Some("hit"));
        let variant = if canary == "true" { "canary" } else { "stable" };
        for r in [&first, &again] {
            assert_eq!(r.header("x-model-variant"), Some(variant));
            assert_eq!(r.header("x-model-version"), Some(version));
            assert_eq!(r.json()["model_version"], version);
        }
        assert_eq!(outputs(&again), outputs(&uncached), "the model's own answer");
        // The request id is this request's, in the field and in the body.
        assert_eq!(again.header("x-request-id"), Some("mine-1"));
        assert_eq!(again.json()["id"], "mine-1");
    }
    // The two versions' answers differ for this row, so a crossed answer would show.
    let stable = ask(&g, &[("x-canary", "false")], body.clone()).await;
    let canary = ask(&g, &[("x-canary", "true")], body.clone()).await;
    assert_ne!(outputs(&stable), outputs(&canary));

    let c = cache_of(&g).await;
    assert_eq!(
        (c["hits"].as_u64(), c["misses"].as_u64()),
        (Some(4), Some(2)),
        "{c}"
    );
    assert_eq!(c["hit_ratio"].as_f64(), Some(4.0 / 6.0));
    assert_eq!(c["entries"], 2);
    assert_eq!(
        metric(
            &g,
            "gateway_cache_requests_total{result=\"hit\",route=\"breast-cancer\"}"
        )
        .await,
        4.0
    );
    assert_eq!(
        metric(
            &g,
            "gateway_cache_requests_total{result=\"miss\",route=\"breast-cancer\"}"
        )
        .await,
        2.0
    );
    // Cached answers count in the request metrics with their variant.
    let answered = |variant: &'static str| {
        let g = &g;
        async move {
            metric(
                g,
                &format!(
                    "gateway_requests_total{{route=\"breast-cancer\",status_class=\"2xx\",variant=\"{variant}\""
                ),
            )
            .await
        }
    };
    assert_eq!(answered("stable").await, 3.0);
    assert_eq!(answered("canary").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_keep_their_variant_s_answers() {
    let _alone = one_at_a_time().await;
    let g = start(&BODY.replace(
        "    cache: {ttl: 60s, max_bytes: 1MiB}",
        "    sticky: {header: x-user-id}\n    cache: {ttl: 60s, max_bytes: 1MiB}",
    ));
    let body = row_body(&row(3));
    // Users until both variants have one.
    let mut users: Vec<(String, String)> = Vec::new();
    for u in 0..200 {
        let user = format!("user-{u}");
        let r = ask(&g, &[("x-user-id", &user)], body.clone()).await;
        let variant = r.header("x-model-variant").unwrap().to_string();
        if !users.iter().any(|(_, v)| *v == variant) {
            users.push((user, variant));
        }
        if users.len() == 2 {
            break;
        }
    }
    assert_eq!(users.len(), 2, "both variants seen");
    for _ in 0..3 {
        for (user, variant) in &users {
            let r = ask(&g, &[("x-user-id", user)], body.clone()).await;
            assert_eq!(r.header("x-cache"), Some("hit"));
            assert_eq!(r.header("x-model-variant"), Some(variant.as_str()));
            let canary = if variant == "canary" { "true" } else { "false" };
            let own = post(
                &g,
                "/v2/models/uncached/infer",
                &[("x-canary", canary)],
                body.clone(),
            )
            .await;
            assert_eq!(outputs(&r), outputs(&own), "{user} got its variant's answer");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_binary_predict_and_grpc_share_an_entry() {
    let _alone = one_at_a_time().await;
    let g = start(&BODY.replace("weight: 50", "weight: 0"));
    let values = row(5);
    let json = ask(&g, &[], row_body(&values)).await;
    assert_eq!(json.header("x-cache"), Some("miss"));
    // The same tensor in Triton's binary form.
    let header =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, values.len()], "datatype": "FP32",
        "parameters": {"binary_data_size": values.len() * 4}}]})
        .to_string();
    let mut binary = header.clone().into_bytes();
    binary.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let length = header.len().to_string();
    let r = ask(
        &g,
        &[
            ("content-type", "application/octet-stream"),
            ("inference-header-content-length", &length),
        ],
        binary,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-cache"), Some("hit"));
    // `/predict` with the same features.
    let predict = post(
        &g,
        "/predict/breast-cancer",
        &[],
        serde_json::json!({"features": values}).to_string(),
    )
    .await;
    assert_eq!(predict.status, 200, "{:?}", predict.body);
    assert_eq!(predict.header("x-cache"), Some("hit"));
    // gRPC, raw tensors.
    let mut client = crate::common::grpc::Client::new(channel(&g).await);
    let answer = client
        .model_infer(with_meta(
            row_request("breast-cancer", &values),
            &[("x-api-key", &g.keys.dev)],
        ))
        .await
        .unwrap();
    assert_eq!(answer.metadata().get("x-cache").unwrap(), "hit");
    assert_eq!(answer.metadata().get("x-model-variant").unwrap(), "stable");
    assert_eq!(cache_of(&g).await["entries"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_version_frees_the_old_answers() {
    let _alone = one_at_a_time().await;
    let body = "pools:\n  cancer: {local: {model: breast-cancer, version: 1}}\nroutes:\n  - model: breast-cancer\n    stable: cancer\n    cache: {ttl: 60s}\n";
    let g = start(body);
    for i in 0..20 {
        ask(&g, &[], row_body(&row(i))).await;
    }
    let r = ask(&g, &[], row_body(&row(0))).await;
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert_eq!(cache_of(&g).await["entries"], 20);
    g.write_config(&g.config_text(&body.replace("version: 1", "version: 2")));
    reloaded(&g, 2).await;
    assert_eq!(
        cache_of(&g).await["entries"],
        0,
        "version 1's answers freed at once"
    );
    let r = ask(&g, &[], row_body(&row(0))).await;
    assert_eq!(r.header("x-cache"), Some("miss"));
    assert_eq!(r.header("x-model-version"), Some("2"));
    // A reload that changes nothing of the route keeps the answers.
    g.write_config(&g.config_text(&format!(
        "{}\n# touched\n",
        body.replace("version: 1", "version: 2")
    )));
    reloaded(&g, 3).await;
    let r = ask(&g, &[], row_body(&row(0))).await;
    assert_eq!(r.header("x-cache"), Some("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_keeps_every_answer_with_its_variant() {
    let _alone = one_at_a_time().await;
    let g = start(BODY);
    let body = row_body(&row(11));
    let mut answers = Vec::new();
    for canary in ["false", "true"] {
        let r = ask(&g, &[("x-canary", canary)], body.clone()).await;
        assert_eq!(r.header("x-cache"), Some("miss"));
        answers.push(outputs(&r));
    }
    // A rollout step: the weight moves by a reload (as the rollout engine applies it).
    g.write_config(&g.config_text(&BODY.replacen("weight: 50", "weight: 100", 1)));
    reloaded(&g, 2).await;
    for (i, (canary, version)) in [("false", "1"), ("true", "2")].into_iter().enumerate() {
        let r = ask(&g, &[("x-canary", canary)], body.clone()).await;
        assert_eq!(r.header("x-cache"), Some("hit"), "kept over the weight change");
        assert_eq!(r.header("x-model-version"), Some(version));
        assert_eq!(outputs(&r), answers[i]);
    }
    // Chosen by the weight now (100: canary), from the canary's entry.
    let r = ask(&g, &[], body).await;
    assert_eq!(r.header("x-model-variant"), Some("canary"));
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert_eq!(outputs(&r), answers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_still_feeds_shadows_drift_and_feedback() {
    let _alone = one_at_a_time().await;
    let g = start(
        "pools:\n  cancer-v1: {local: {model: breast-cancer, version: 1}}\n  cancer-v3: {local: {model: breast-cancer, version: 3}}\nquality: {drift: {window: 200, min_rows: 1, interval_ms: 100}}\nroutes:\n  - model: breast-cancer\n    stable: cancer-v1\n    shadows: [{pool: cancer-v3, percent: 100}]\n    cache: {ttl: 60s}\n",
    );
    let body = row_body(&row(7));
    let first = ask(&g, &[("x-request-id", "first")], body.clone()).await;
    let second = ask(&g, &[("x-request-id", "second")], body).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(second.header("x-cache"), Some("hit"));
    // Both were copied to the shadow and compared.
    let compared = || async {
        metric(&g, "gateway_shadow_agreement_total{").await
            + metric(&g, "gateway_shadow_disagreement_total{").await
    };
    let until = Instant::now() + Duration::from_secs(5);
    while compared().await < 2.0 {
        assert!(Instant::now() < until, "the hit was not mirrored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both rows are in the drift window, and the hit's own request id takes a label.
    drift_rows_and_a_label(&g, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_inputs_stays_within_max_bytes() {
    let _alone = one_at_a_time().await;
    let g = start(
        "rate_limits: {default: {per_second: 100000, burst: 100000}, tiers: {batch: {per_second: 10, burst: 10}}}\npools:\n  cancer: {local: {model: breast-cancer, version: 1}}\nroutes:\n  - model: breast-cancer\n    stable: cancer\n    cache: {ttl: 60s, max_bytes: 64KiB}\n",
    );
    let mut conn = connect(g.https, &g.tls, Proto::H2).await;
    let headers = [
        ("x-api-key", g.keys.dev.as_str()),
        ("content-type", "application/json"),
    ];
    for i in 0..2000 {
        let mut values = row(i);
        values[0] += i as f32; // every request distinct
        let r = conn
            .send(
                "POST",
                "/v2/models/breast-cancer/infer",
                &headers,
                row_body(&values),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache"), Some("miss"));
    }
    let bytes = metric(&g, "gateway_cache_bytes{route=\"breast-cancer\"}").await;
    assert!(bytes > 0.0 && bytes <= 65536.0, "{bytes} bytes");
    let evicted = metric(
        &g,
        "gateway_cache_evictions_total{reason=\"size\",route=\"breast-cancer\"}",
    )
    .await;
    assert!(evicted > 1000.0, "{evicted} evicted");
}

#[test]
fn bad_cache_settings_are_refused_precisely() {
    let dir = temp_dir("cache-config");
    let shipped = std::fs::read_to_string(repo().join("routes.yaml"))
        .unwrap()
        .replace(
            "models_dir: models",
            &format!("models_dir: {}", repo().join("models").display()),
        );
    for (cache, expected) in [
        ("{ttl: 0s}", "routes[0].cache.ttl: must be between 1s and 24h"),
        ("{ttl: soon}", "routes[0].cache.ttl: \"soon\""),
        (
            "{ttl: 60s, max_bytes: 12 parsecs}",
            "routes[0].cache.max_bytes: \"12 parsecs\"",
        ),
        (
            "{ttl: 60s, max_bytes: 100}",
            "routes[0].cache.max_bytes: must be between 64KiB and 64GiB",
        ),
        (
            "{ttl: 60s, pools: {cancer-v3: {ttl: 1s}}}",
            "routes[0].cache.pools.cancer-v3: not a pool this route answers from",
        ),
        ("{ttl: 60s, size: 1}", "unknown field `size`"),
    ] {
        let file = dir.join("routes.yaml");
        let text = shipped.replace(
            "    sticky: api_key ",
            &format!("    cache: {cache}\n    sticky: api_key "),
        );
        assert!(text.contains("cache:"));
        std::fs::write(&file, text).unwrap();
        let out = gateway().arg("check").arg(&file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{cache}: accepted\n{text}");
        assert!(text.contains(expected), "{cache}: wanted {expected:?} in\n{text}");
    }
}

/// A route without shadows answers a body it has seen from the answer it wrote (no decoding,
/// no encoding): each request still gets its own id, the binary form its own JSON length,
/// and the drift window and feedback still get the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_seen_again_gets_the_written_answer_with_its_own_id() {
    let _alone = one_at_a_time().await;
    let g = start(
        "pools:\n  cancer: {local: {model: breast-cancer, version: 1}}\nquality: {drift: {window: 200, min_rows: 1, interval_ms: 100}}\nroutes:\n  - model: breast-cancer\n    stable: cancer\n    cache: {ttl: 60s}\n",
    );
    let body = row_body(&row(3));
    let mut answers = Vec::new();
    for (id, cache) in [
        ("first", "miss"),
        ("second", "hit"),
        ("a-third-and-longer-id", "hit"),
    ] {
        let r = ask(&g, &[("x-request-id", id)], body.clone()).await;
        assert_eq!(r.header("x-cache"), Some(cache), "{id}");
        assert_eq!(r.json()["id"], id, "the request's own id");
        assert_eq!(r.header("content-type"), Some("application/json"));
        answers.push(outputs(&r));
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // A body that names its answer's id: that id, on every hit.
    let named = serde_json::json!({"id": "client-7", "inputs": [{"name": "input", "shape": [1, 30],
        "datatype": "FP32", "data": row(3)}]})
    .to_string();
    for cache in ["hit", "hit"] {
        let r = ask(&g, &[("x-request-id", "not-this")], named.clone()).await;
        assert_eq!(r.header("x-cache"), Some(cache));
        assert_eq!(r.json()["id"], "client-7");
        assert_eq!(outputs(&r), answers[0]);
    }
    // Binary outputs: the JSON length follows the id written in.
    let header = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
        "parameters": {"binary_data_size": 120}}], "parameters": {"binary_data_output": true}})
    .to_string();
    let mut binary = header.clone().into_bytes();
    binary.extend(row(3).iter().flat_map(|v| v.to_le_bytes()));
    let length = header.len().to_string();
    let mut tails = Vec::new();
    for id in ["b", "a-much-longer-request-id"] {
        let r = ask(
            &g,
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &length),
                ("x-request-id", id),
            ],
            binary.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("x-cache"), Some("hit"), "the inputs were seen as JSON");
        let n: usize = r
            .header("inference-header-content-length")
            .unwrap()
            .parse()
            .unwrap();
        let json: Value = serde_json::from_slice(&r.body[..n]).unwrap();
        assert_eq!(json["id"], id);
        tails.push(r.body[n..].to_vec());
    }
    assert_eq!(tails[0], tails[1], "the same binary outputs");
    assert!(!tails[0].is_empty());
    // Every request's row is in the drift window, and a hit's id takes a label.
    drift_rows_and_a_label(&g, 7).await;
    let c = cache_of(&g).await;
    assert_eq!(
        (c["hits"].as_u64(), c["misses"].as_u64(), c["entries"].as_u64()),
        (Some(6), Some(1), Some(1)),
        "{c}"
    );
}
