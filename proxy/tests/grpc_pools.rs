//! Remote `grpc` pools: a real `inference-server --grpc-listen` behind the gateway serves
//! REST, `/predict` and gRPC callers with the local pool's answers and refusals, is mirrored
//! to like any shadow pool, is health-checked with `ModelReady`, is retried once on another
//! endpoint only when a call cannot have reached a server, and keeps the pool's timeout and
//! the gRPC client's deadline.

use std::time::Duration;

use crate::common::grpc::*;
use crate::common::*;
use serde_json::{Value, json};
use tonic::Code;

/// Waits until `model` answers a REST inference with 200: a remote pool learns its upstream's
/// signature at its first health check. The answer, or a panic after 10 s.
async fn until_served(g: &Gateway, model: &str, body: &str) -> Reply {
    let mut last = None;
    for _ in 0..100 {
        let r = send(
            g,
            Proto::H2,
            "POST",
            &format!("/v2/models/{model}/infer"),
            &[("x-api-key", &g.keys.dev), ("content-type", "application/json")],
            body.to_string(),
        )
        .await;
        if r.status == 200 {
            return r;
        }
        last = Some((r.status, r.body.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{model} was never served: {last:?}");
}

async fn rest(g: &Gateway, path: &str, body: String) -> Reply {
    send(
        g,
        Proto::H1,
        "POST",
        path,
        &[("x-api-key", &g.keys.dev), ("content-type", "application/json")],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_pool_answers_every_caller_as_a_local_pool_does() {
    let _alone = one_at_a_time().await;
    let upstream = Upstream::start_grpc();
    let g = start(&format!(
        "pools:
  cancer-v1: {{local: {{model: breast-cancer, version: 1}}}}
  remote: {{grpc: {{endpoints: [\"{}\"], model: breast-cancer, version: 1, health_check: {{interval_ms: 100}}}}}}
shadow: {{sample_agreements: 0, flush_ms: 50}}
routes:
  - model: breast-cancer
    stable: remote
  - model: local
    stable: cancer-v1
  - model: shadowed
    stable: cancer-v1
    shadows: [{{pool: remote, percent: 100}}]
",
        upstream.addr
    ));
    let (rows, _) = testdata_rows();
    let first = until_served(&g, "breast-cancer", &row_body(&rows[0])).await;
    assert_eq!(first.header("x-model-version"), Some("1"));
    assert_eq!(first.header("x-model-variant"), Some("stable"));

    // REST: the same outputs as the local pool's, row by row.
    for row in &rows[..5] {
        let remote = rest(&g, "/v2/models/breast-cancer/infer", row_body(row)).await;
        let local = rest(&g, "/v2/models/local/infer", row_body(row)).await;
        assert_eq!(remote.status, 200, "{:?}", remote.body);
        assert_eq!(remote.json()["outputs"], local.json()["outputs"]);
        assert_eq!(remote.json()["model_version"], "1");
    }
    // /predict.
    let features = json!({"features": [rows[1], rows[2]]}).to_string();
    let remote = rest(&g, "/predict/breast-cancer", features.clone()).await;
    let local = rest(&g, "/predict/local", features).await;
    assert_eq!(remote.status, 200, "{:?}", remote.body);
    assert_eq!(remote.json()["predictions"], local.json()["predictions"]);

    // gRPC callers.
    let mut c = Client::new(channel(&g).await);
    let key = g.keys.dev.clone();
    let call = |model: &str, row: &[f32]| with_meta(row_request(model, row), &[("x-api-key", &key)]);
    let remote = c.model_infer(call("breast-cancer", &rows[3])).await.unwrap();
    assert_eq!(
        remote
            .metadata()
            .get("x-model-version")
            .unwrap()
            .to_str()
            .unwrap(),
        "1"
    );
    let local = c.model_infer(call("local", &rows[3])).await.unwrap();
    assert_eq!(
        probabilities(&remote.into_inner()),
        probabilities(&local.into_inner())
    );

    // The upstream's refusal keeps its status (REST) or code (gRPC) and its text, which is
    // the local pool's.
    let short = row_body(&rows[0][..3]);
    let remote = rest(&g, "/v2/models/breast-cancer/infer", short.clone()).await;
    let local = rest(&g, "/v2/models/local/infer", short).await;
    assert_eq!((remote.status, local.status), (400, 400));
    assert_eq!(remote.error(), local.error());
    let refused = c
        .model_infer(call("breast-cancer", &rows[0][..3]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), local.error());

    // Metadata and readiness come from the pool.
    let meta = send(&g, Proto::H1, "GET", "/v2/models/breast-cancer", &[], "").await;
    let local_meta = send(&g, Proto::H1, "GET", "/v2/models/local", &[], "").await;
    assert_eq!(meta.json()["inputs"], local_meta.json()["inputs"]);
    assert_eq!(meta.json()["outputs"], local_meta.json()["outputs"]);
    let ready = send(&g, Proto::H1, "GET", "/v2/models/breast-cancer/ready", &[], "").await;
    assert_eq!(ready.status, 200);
    let config = send(&g, Proto::H1, "GET", "/v2/models/breast-cancer/config", &[], "").await;
    assert_eq!(config.status, 404, "{:?}", config.body);
    assert!(config.error().contains("grpc pool"), "{}", config.error());
    let (_, config) = admin_get(&g, "/admin/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["pools"]["remote"]["kind"], "grpc", "{config}");
    assert_eq!(config["pools"]["remote"]["healthy_endpoints"], 1);

    // A shadow: every copy compared, all agreeing (the same model on both sides).
    let n = 12;
    for row in &rows[..n] {
        assert_eq!(
            rest(&g, "/v2/models/shadowed/infer", row_body(row)).await.status,
            200
        );
    }
    let mut pair = Value::Null;
    for _ in 0..100 {
        let (_, text) = admin_get(&g, "/admin/shadow/report?latest=1000").await;
        let report: Value = serde_json::from_str(&text).unwrap();
        pair = report["pairs"][0].clone();
        if pair["compared"].as_u64() == Some(n as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pair["route"], "shadowed");
    assert_eq!(pair["compared"], n, "{pair}");
    assert_eq!(pair["shadow_errors"], 0, "{pair}");
    assert_eq!(pair["disagreements"], 0, "{pair}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_pools_check_health_retry_only_undelivered_calls_and_keep_deadlines() {
    let _alone = one_at_a_time().await;
    let (a, b) = (Upstream::start_grpc(), Upstream::start_grpc());
    let single_port = free_port();
    let single = Upstream::start_grpc_on(single_port);
    let slow = Upstream::start_slow(Speaks::Grpc);
    let slow_rest = Upstream::start_slow(Speaks::Rest);
    let pool = |endpoints: &str, model: &str, extra: &str| {
        format!("{{grpc: {{endpoints: [{endpoints}], model: {model}, version: 1{extra}}}}}")
    };
    let g = start(&format!(
        "pools:
  pair: {}
  single: {}
  slow: {}
  slow-long: {}
  slow-http: {{http: {{endpoints: [\"{}\"], model: slow, version: 1, timeout_ms: 5000}}}}
routes:
  - {{model: pair, stable: pair}}
  - {{model: single, stable: single}}
  - {{model: slow, stable: slow}}
  - {{model: slow-long, stable: slow-long}}
  - {{model: slow-http, stable: slow-http}}
",
        // Checked once at start, then not for ten minutes: a stopped endpoint stays "healthy".
        pool(
            &format!("\"{}\", \"{}\"", a.addr, b.addr),
            "breast-cancer",
            ", health_check: {interval_ms: 600000}"
        ),
        pool(
            &format!("\"{}\"", single.addr),
            "breast-cancer",
            ", health_check: {interval_ms: 100}"
        ),
        pool(&format!("\"{}\"", slow.addr), "slow", ", timeout_ms: 100"),
        pool(&format!("\"{}\"", slow.addr), "slow", ", timeout_ms: 5000"),
        slow_rest.addr,
    ));
    let (rows, _) = testdata_rows();
    let body = row_body(&rows[0]);
    until_served(&g, "pair", &body).await;
    until_served(&g, "single", &body).await;

    // One endpoint of two stops. Its calls cannot be delivered (its connection is closed,
    // then refused), so each is retried on the other endpoint: every request is answered.
    b.stop();
    for i in 0..10 {
        let r = rest(&g, "/v2/models/pair/infer", body.clone()).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }

    // The only endpoint stops: its health check fails, and callers get 503 / UNAVAILABLE
    // with the same text. It comes back on the same port: served again.
    single.stop();
    let mut refused = None;
    for _ in 0..50 {
        let r = rest(&g, "/v2/models/single/infer", body.clone()).await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("the stopped endpoint failed its health check");
    assert_eq!(refused.error(), "no healthy endpoint in pool single");
    let mut c = Client::new(channel(&g).await);
    let key = g.keys.dev.clone();
    let status = c
        .model_infer(with_meta(row_request("single", &rows[0]), &[("x-api-key", &key)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "no healthy endpoint in pool single");
    let _back = Upstream::start_grpc_on(single_port);
    until_served(&g, "single", &body).await;

    // The pool's timeout: 504 with the pool's limit.
    let x =
        json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).to_string();
    let r = rest(&g, "/v2/models/slow/infer", x.clone()).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert_eq!(r.error(), "upstream of pool slow did not answer within 100 ms");

    // A gRPC client's deadline, shorter than the pool's timeout, through a grpc pool and an
    // http pool: DEADLINE_EXCEEDED from the gateway, with REST's text for it.
    for model in ["slow-long", "slow-http"] {
        let mut request = with_meta(
            inference::protocol::grpc::pb::ModelInferRequest {
                model_name: model.into(),
                inputs: vec![
                    inference::protocol::grpc::pb::model_infer_request::InferInputTensor {
                        name: "x".into(),
                        datatype: "FP32".into(),
                        shape: vec![1, 1],
                        ..Default::default()
                    },
                ],
                raw_input_contents: vec![1f32.to_le_bytes().to_vec()],
                ..Default::default()
            },
            &[("x-api-key", &key)],
        );
        request.set_timeout(Duration::from_millis(150));
        let status = c.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{model}: {status:?}");
        assert_eq!(
            status.message(),
            "no answer within the client's deadline of 150 ms",
            "{model}"
        );
    }
    drop(a);
}
