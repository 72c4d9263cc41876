//! Remote pools through the gateway: a real `inference-server` behind it serves, goes down
//! and comes back, a connect failure is 502 and is retried once on another endpoint, and a
//! timeout is 504.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

fn remote_config(endpoints: &[std::net::SocketAddr], timeout_ms: u64) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "pools:\n  remote:\n    http: {{endpoints: [{}], model: breast-cancer, version: 2, connect_timeout_ms: 200, timeout_ms: {timeout_ms}, health_check: {{interval_ms: 100}}}}\n  cancer-v1: {{local: {{model: breast-cancer, version: 1}}}}\nroutes:\n  - model: breast-cancer\n    stable: cancer-v1\n    canary: {{pool: remote, weight: 0}}\n  - model: remote-only\n    stable: remote\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_pool_serves_through_inference_server() {
    let upstream = Upstream::start();
    let g = start(&remote_config(&[upstream.addr], 2000));
    for proto in [Proto::H1, Proto::H2] {
        let r = infer(&g, proto, &g.keys.dev, "breast-cancer", &[("x-canary", "true")]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("x-model-variant"), Some("canary"));
        assert_eq!(r.header("x-model-version"), Some("2"));
        assert_eq!(r.json()["model_version"], "2");
        // The upstream's errors come through unchanged, statuses included.
        let bad = send(
            &g,
            proto,
            "POST",
            "/v2/models/remote-only/infer",
            &[("x-api-key", &g.keys.dev)],
            "{",
        )
        .await;
        assert_eq!(bad.status, 400);
        assert!(
            bad.error().contains("invalid inference request JSON"),
            "{}",
            bad.error()
        );
        // Metadata is proxied too.
        let meta = send(&g, proto, "GET", "/v2/models/remote-only", &[], "").await;
        assert_eq!(meta.status, 200);
        assert_eq!(meta.json()["inputs"][0]["shape"], json!([-1, 30]));
    }
    // The simple endpoint converts both ways.
    let row = serde_json::from_str::<serde_json::Value>(&example()).unwrap()["inputs"][0]["data"].clone();
    let r = send(
        &g,
        Proto::H1,
        "POST",
        "/predict/remote-only",
        &[("x-api-key", &g.keys.dev)],
        json!({"features": row}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["model_version"], "2");
    assert!(r.json()["confidence"].as_f64().is_some());
    // Remote answers feed the prediction metrics too; they are decoded once the answer is
    // sent, so the count may trail the last response by a moment.
    let series = [
        (
            "gateway_prediction_confidence_count{route=\"breast-cancer\",variant=\"canary\"}",
            2.0,
        ),
        (
            "gateway_predictions_total{class=\"0\",route=\"breast-cancer\",variant=\"canary\"}",
            2.0,
        ),
        (
            "gateway_prediction_confidence_count{route=\"remote-only\",variant=\"stable\"}",
            1.0,
        ),
    ];
    for (name, want) in series {
        let started = std::time::Instant::now();
        let mut seen = metric(&g, name).await;
        while seen != want && started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = metric(&g, name).await;
        }
        assert_eq!(seen, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_pool_up_and_down() {
    let up = Upstream::start();
    // A second endpoint where nothing listens: a connect failure is retried once on the
    // healthy endpoint, and the health check soon takes it out of rotation.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = start(&remote_config(&[dead, up.addr], 2000));
    for _ in 0..10 {
        let r = infer(&g, Proto::H2, &g.keys.dev, "remote-only", &[]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // Upstream gone: 502 (connect refused) until the health check notices, then 503.
    up.stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = infer(&g, Proto::H1, &g.keys.dev, "remote-only", &[]).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.error().contains("no healthy endpoint in pool remote"),
        "{}",
        r.error()
    );
    let ready: u16 = {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        client
            .get(format!("http://{}/readyz", g.admin).parse().unwrap())
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        ready, 503,
        "readiness reports the route whose stable pool is down"
    );
    // The local route is unaffected.
    assert_eq!(
        infer(&g, Proto::H1, &g.keys.dev, "breast-cancer", &[])
            .await
            .status,
        200
    );
}

/// Starts a gateway whose remote pool has `endpoints`, where `vanishing` answers the
/// start-up health check and then closes its port. With health checks every 10 minutes,
/// the gateway keeps believing it is up: the next connect to it is refused.
fn start_with_vanishing_endpoint(
    vanishing: std::net::SocketAddr,
    endpoints: &[std::net::SocketAddr],
) -> Gateway {
    let listener = std::net::TcpListener::bind(vanishing).unwrap();
    let serve = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let g = start(&remote_config(endpoints, 2000).replace("interval_ms: 100", "interval_ms: 600000"));
    serve.join().unwrap();
    g
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_pool_connect_failure_is_502() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = start_with_vanishing_endpoint(dead, &[dead]);
    let r = infer(&g, Proto::H1, &g.keys.dev, "remote-only", &[]).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(r.error().contains("connection refused"), "{}", r.error());
}

/// An endpoint that passed its health check and then went away: the connect failure is
/// retried once, on the other endpoint, and every request succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_connect_failure_is_retried_once_on_another_endpoint() {
    let up = Upstream::start();
    let gone: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = start_with_vanishing_endpoint(gone, &[gone, up.addr]);
    for _ in 0..6 {
        let r = infer(&g, Proto::H1, &g.keys.dev, "remote-only", &[]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_pool_timeout_is_504() {
    // An upstream that answers health checks but never answers inference.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                if head.starts_with("GET") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                        .await;
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    let g = start(&remote_config(&[addr], 300));
    let started = std::time::Instant::now();
    let r = infer(&g, Proto::H2, &g.keys.dev, "remote-only", &[]).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert!(
        r.error().contains("did not answer within 300 ms"),
        "{}",
        r.error()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
