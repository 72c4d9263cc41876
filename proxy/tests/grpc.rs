//! gRPC callers through the gateway, on its TLS port (ALPN h2), with a tonic client: every
//! method, keys from metadata, refusals as gRPC statuses with REST's text, the split and
//! `x-canary` from metadata, the variant in the answer's metadata, rate limits with
//! `retry-after`, a remote `http` pool reached by transcoding, and shadows fed by gRPC calls
//! reported exactly as REST's.

use std::sync::Arc;
use std::time::Duration;

use crate::common::grpc::*;
use crate::common::*;
use inference::protocol::grpc::pb;
use serde_json::Value;
use tonic::Code;

const ROUTES: &str = "\
routes:
  - model: breast-cancer
    stable: cancer-v1
    canary: {pool: cancer-v2, weight: 0}
  - model: shadowed-rest
    stable: cancer-v1
    shadows: [{pool: cancer-v2, percent: 100}]
  - model: shadowed-grpc
    stable: cancer-v1
    shadows: [{pool: cancer-v2, percent: 100}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_keys_split_and_refusals() {
    let _alone = one_at_a_time().await;
    let g = start(&format!(
        "rate_limits:\n  default: {{per_second: 1000, burst: 1000}}\n  tiers: {{batch: {{per_second: 1, burst: 2}}}}\n{LOCAL_POOLS}shadow: {{sample_agreements: 0, flush_ms: 50}}\n{ROUTES}"
    ));
    let mut c = Client::new(channel(&g).await);
    let dev = g.keys.dev.clone();
    let (rows, _) = testdata_rows();

    // Health and metadata: no key.
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        c.server_metadata(pb::ServerMetadataRequest {})
            .await
            .unwrap()
            .into_inner()
            .name,
        "gateway"
    );
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "breast-cancer".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "breast-cancer");
    assert_eq!(meta.versions, ["1", "2"]);
    assert_eq!(meta.inputs[0].shape, [-1, 30]);
    assert!(
        c.model_ready(pb::ModelReadyRequest {
            name: "breast-cancer".into(),
            version: "2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .ready
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&g).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Inference: the key from `x-api-key` or `authorization`; the stable answers (weight 0),
    // the same numbers as REST through the gateway.
    let answer = c
        .model_infer(with_meta(
            row_request("breast-cancer", &rows[0]),
            &[("x-api-key", &dev)],
        ))
        .await
        .unwrap();
    assert_eq!(answer.metadata().get("x-model-variant").unwrap(), "stable");
    assert_eq!(answer.metadata().get("x-model-version").unwrap(), "1");
    let request_id = answer
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let answer = answer.into_inner();
    assert_eq!(answer.model_name, "breast-cancer");
    assert_eq!(answer.model_version, "1");
    assert_eq!(answer.id, request_id);
    let mut conn = connect(g.https, &g.tls, Proto::H2).await;
    let r = conn
        .send(
            "POST",
            "/v2/models/breast-cancer/infer",
            &[("x-api-key", dev.as_str())],
            row_body(&rows[0]),
        )
        .await;
    let rest_probabilities: Vec<f32> =
        serde_json::from_value(r.json()["outputs"][1]["data"].clone()).unwrap();
    assert_eq!(probabilities(&answer), rest_probabilities);
    let bearer = format!("Bearer {dev}");
    let canary = c
        .model_infer(with_meta(
            row_request("breast-cancer", &rows[0]),
            &[("authorization", &bearer), ("x-canary", "true")],
        ))
        .await
        .unwrap();
    assert_eq!(canary.metadata().get("x-model-variant").unwrap(), "canary");
    assert_eq!(canary.into_inner().model_version, "2");

    // Refusals: the gRPC code, REST's text.
    let refused = |r: Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>| r.unwrap_err();
    let s = refused(c.model_infer(row_request("breast-cancer", &rows[0])).await);
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(
        s.message(),
        "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
    );
    let s = refused(
        c.model_infer(with_meta(
            row_request("breast-cancer", &rows[0]),
            &[("x-api-key", "nope")],
        ))
        .await,
    );
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unauthenticated, "invalid API key")
    );
    let s = refused(
        c.model_infer(with_meta(
            row_request("breast-cancer", &rows[0]),
            &[("x-api-key", &g.keys.disabled)],
        ))
        .await,
    );
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = refused(
        c.model_infer(with_meta(row_request("nope", &rows[0]), &[("x-api-key", &dev)]))
            .await,
    );
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "unknown model \"nope\"")
    );
    let s = refused(
        c.model_infer(with_meta(
            row_request("breast-cancer", &rows[0][..29]),
            &[("x-api-key", &dev)],
        ))
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("input \"input\""), "{}", s.message());
    let s = refused(
        c.model_infer(with_meta(
            row_request("breast-cancer", &rows[0]),
            &[("x-api-key", &dev), ("x-canary", "maybe")],
        ))
        .await,
    );
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "x-canary must be \"true\" or \"false\", got \"maybe\""
        )
    );
    // A key of the `batch` tier: two at once, then RESOURCE_EXHAUSTED with `retry-after`.
    let batch = g.keys.batch.clone();
    let mut limited = None;
    for _ in 0..4 {
        match c
            .model_infer(with_meta(
                row_request("breast-cancer", &rows[0]),
                &[("x-api-key", &batch)],
            ))
            .await
        {
            Ok(_) => {}
            Err(s) => {
                limited = Some(s);
                break;
            }
        }
    }
    let s = limited.expect("the batch tier's burst of 2 is crossed");
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().starts_with("rate limit exceeded"), "{}", s.message());
    assert!(s.metadata().get("retry-after").is_some());
    // Triton's extensions are not served.
    let mut grpc = tonic::client::Grpc::new(channel(&g).await);
    grpc.ready().await.unwrap();
    let s = grpc
        .unary::<_, pb::ServerLiveResponse, _>(
            tonic::Request::new(pb::ServerLiveRequest {}),
            "/inference.GRPCInferenceService/ModelConfig".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented);

    // The metrics count gRPC calls by method and code.
    let ok = metric(
        &g,
        "gateway_grpc_requests_total{code=\"OK\",method=\"ModelInfer\",route=\"breast-cancer\"}",
    )
    .await;
    assert!(ok >= 3.0, "{ok}");
    let unauthenticated = metric(
        &g,
        "gateway_grpc_requests_total{code=\"UNAUTHENTICATED\",method=\"ModelInfer\",route=\"-\"}",
    )
    .await;
    assert_eq!(unauthenticated, 2.0);

    // Shadows: the same rows by REST to one route and by gRPC to another, both copied to
    // the same shadow: the same report entries.
    let n = rows.len();
    for row in rows.iter().take(n) {
        let r = conn
            .send(
                "POST",
                "/v2/models/shadowed-rest/infer",
                &[("x-api-key", dev.as_str())],
                row_body(row),
            )
            .await;
        assert_eq!(r.status, 200);
        c.model_infer(with_meta(
            row_request("shadowed-grpc", row),
            &[("x-api-key", &dev)],
        ))
        .await
        .unwrap();
    }
    let mut pairs = Vec::new();
    for _ in 0..100 {
        let (_, text) = admin_get(&g, "/admin/shadow/report?latest=1000").await;
        let report: Value = serde_json::from_str(&text).unwrap();
        pairs = report["pairs"].as_array().unwrap().clone();
        if pairs.len() == 2 && pairs.iter().all(|p| p["compared"].as_u64() == Some(n as u64)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by = |route: &str| pairs.iter().find(|p| p["route"] == route).cloned().unwrap();
    let (rest, grpc) = (by("shadowed-rest"), by("shadowed-grpc"));
    for field in [
        "requests",
        "compared",
        "predictions",
        "disagreements",
        "shadow_errors",
        "output_mismatches",
    ] {
        assert_eq!(rest[field], grpc[field], "{field}: {rest} vs {grpc}");
    }
    assert_eq!(grpc["compared"], n);
}

/// A remote `http` pool (an `inference-server`-like upstream: another gateway's REST) serves
/// gRPC callers: their tensors are sent as REST JSON and the answer transcoded back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_http_pool_serves_grpc_callers() {
    let _alone = one_at_a_time().await;
    let upstream = inference_upstream().await;
    let g = start(&format!(
        "pools:\n  remote: {{http: {{endpoints: [\"{upstream}\"], model: breast-cancer, version: 1, health_check: {{interval_ms: 100}}}}}}\nroutes:\n  - model: breast-cancer\n    stable: remote\n"
    ));
    let mut c = Client::new(channel(&g).await);
    let (rows, _) = testdata_rows();
    let key = g.keys.dev.clone();
    let mut answer = None;
    for _ in 0..50 {
        match c
            .model_infer(with_meta(
                row_request("breast-cancer", &rows[0]),
                &[("x-api-key", &key)],
            ))
            .await
        {
            Ok(a) => {
                answer = Some(a.into_inner());
                break;
            }
            // Until the pool has learnt the signature from its upstream.
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("{s:?}"),
        }
    }
    let answer = answer.expect("the remote pool became ready");
    assert_eq!(answer.model_version, "1");
    // The same numbers as the local model's.
    let local = start(&format!(
        "{LOCAL_POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n"
    ));
    let mut lc = Client::new(channel(&local).await);
    let want = lc
        .model_infer(with_meta(
            row_request("breast-cancer", &rows[0]),
            &[("x-api-key", &local.keys.dev)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probabilities(&answer), probabilities(&want));
}

/// `inference-server`'s REST on an ephemeral port, over the bundled models.
async fn inference_upstream() -> std::net::SocketAddr {
    let repo =
        inference::ModelRepository::load(&repo().join("models"), &inference::PoolConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = inference::server::InferenceServer::new(Arc::new(repo), Default::default());
    tokio::spawn(server.serve(listener, std::future::pending()));
    addr
}
