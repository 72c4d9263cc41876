//! The gateway end to end, over real TLS with a real client (HTTP/1.1 and HTTP/2), real
//! model pools. Remote pools: `remote_pools.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

const SPLIT_ROUTES: &str = "\
routes:
  - model: breast-cancer
    stable: cancer-v1
    canary: {pool: cancer-v2, weight: 10}
  - model: digits
    stable: digits-v1
";

fn default_gateway() -> Gateway {
    start(&format!("{LOCAL_POOLS}{SPLIT_ROUTES}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn inference_over_h1_and_h2_with_variant_headers() {
    let g = default_gateway();
    for proto in [Proto::H1, Proto::H2] {
        let r = infer(&g, proto, &g.keys.dev, "breast-cancer", &[("x-canary", "false")]).await;
        assert_eq!(r.status, 200, "{proto:?}: {:?}", r.body);
        let want_alpn: &[u8] = if proto == Proto::H2 { b"h2" } else { b"http/1.1" };
        assert_eq!(r.alpn.as_deref(), Some(want_alpn));
        assert_eq!(r.header("x-model-variant"), Some("stable"));
        assert_eq!(r.header("x-model-version"), Some("1"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let id = r.header("x-request-id").expect("request id").to_string();
        let body = r.json();
        assert_eq!(body["model_name"], "breast-cancer");
        assert_eq!(body["model_version"], "1");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["outputs"][1]["shape"], json!([1, 2]));

        let canary = infer(&g, proto, &g.keys.dev, "breast-cancer", &[("x-canary", "true")]).await;
        assert_eq!(canary.status, 200);
        assert_eq!(canary.header("x-model-variant"), Some("canary"));
        assert_eq!(canary.header("x-model-version"), Some("2"));
        assert_eq!(canary.json()["model_version"], "2");
    }
    // A caller's request id is kept.
    let r = infer(
        &g,
        Proto::H1,
        &g.keys.dev,
        "digits",
        &[("x-request-id", "trace-42")],
    )
    .await;
    assert_eq!(r.status, 400, "example.json has 30 features; digits takes 64");
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    assert!(r.error().contains("expects [-1, 64]"), "{}", r.error());
    g.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_1_3_both_work() {
    let g = default_gateway();
    let ca = g.dir.join("ca.crt");
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let tls = client_tls_versions(&ca, &[version]);
        let mut conn = connect(g.https, &tls, Proto::H2).await;
        assert_eq!(conn.tls_version, Some(want));
        let r = conn.send("GET", "/v2/health/live", &[], "").await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys() {
    let g = default_gateway();
    let missing = send(
        &g,
        Proto::H1,
        "POST",
        "/v2/models/breast-cancer/infer",
        &[],
        example(),
    )
    .await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert!(missing.error().contains("missing API key"));
    let unknown = infer(&g, Proto::H2, "gwk_not-a-key", "breast-cancer", &[]).await;
    assert_eq!(unknown.status, 401);
    assert!(
        unknown
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(unknown.error(), "invalid API key");
    let disabled = infer(&g, Proto::H1, &g.keys.disabled, "breast-cancer", &[]).await;
    assert_eq!(disabled.status, 403);
    assert!(disabled.error().contains("is disabled"), "{}", disabled.error());
    assert!(
        !disabled.error().contains(&g.keys.disabled),
        "the key never appears in answers"
    );
    let bearer = format!("Bearer {}", g.keys.dev);
    let ok = send(
        &g,
        Proto::H1,
        "POST",
        "/v2/models/breast-cancer/infer",
        &[("authorization", &bearer)],
        example(),
    )
    .await;
    assert_eq!(ok.status, 200);
    // The keyless paths need no key.
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/breast-cancer",
        "/v2/models/breast-cancer/ready",
    ] {
        assert_eq!(
            send(&g, Proto::H1, "GET", path, &[], "").await.status,
            200,
            "{path}"
        );
    }
}

/// A refusal sent before the body is read keeps an HTTP/1.1 connection open when the body
/// is small (it is read and dropped first), and closes it when the body is too large.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_keep_http1_connections_for_small_bodies() {
    let g = default_gateway();
    let path = "/v2/models/breast-cancer/infer";
    let good = [("x-api-key", g.keys.dev.as_str())];
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    for refused in [
        vec![],
        vec![("x-api-key", "wrong")],
        vec![("x-api-key", g.keys.disabled.as_str())],
    ] {
        let r = conn.send("POST", path, &refused, example()).await;
        assert!(matches!(r.status, 401 | 403), "{:?}", r.body);
        assert_ne!(r.header("connection"), Some("close"));
        let r = conn.try_send("POST", path, &good, example()).await;
        assert_eq!(r.map(|r| r.status), Ok(200), "the connection survives a refusal");
    }
    // Over the drain limit (64 KiB): refused, and the connection is not reused. The client,
    // still sending its body, reads the refusal rather than a reset (the gateway reads the
    // rest before it closes); without that, about one attempt in ten here saw a reset.
    let big = format!("{{\"inputs\": [], \"pad\": \"{}\"}}", "x".repeat(100 * 1024));
    for _ in 0..10 {
        let r = conn
            .try_send("POST", path, &[("x-api-key", "wrong")], big.clone())
            .await
            .map(|r| r.status);
        assert_eq!(r, Ok(401), "the refusal reaches a client still sending");
        assert!(
            conn.try_send("POST", path, &good, example()).await.is_err(),
            "a connection with an unread body must not carry another request"
        );
        conn = connect(g.https, &g.tls, Proto::H1).await;
    }
}

/// A request pingora cannot parse gets the gateway's JSON error and a request id, then the
/// connection closes (where the next request would begin is unknown).
#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_the_json_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = default_gateway();
    let mut config = (*g.tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: localhost\r\nbad header line\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("content-type: application/json"), "{answer}");
    assert!(answer.contains("x-request-id: "), "{answer}");
    assert!(answer.contains("\"error\":\"malformed request"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_per_key_tier_and_ip() {
    let g = start(&format!(
        "rate_limits:\n  default: {{per_second: 1, burst: 3}}\n  tiers: {{batch: {{per_second: 1, burst: 6}}}}\n  per_ip: {{per_second: 1, burst: 2}}\n{LOCAL_POOLS}{SPLIT_ROUTES}"
    ));
    let mut conn = connect(g.https, &g.tls, Proto::H2).await;
    let headers = [("x-api-key", g.keys.dev.as_str())];
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let r = conn
            .send("POST", "/v2/models/breast-cancer/infer", &headers, example())
            .await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let limited = last.unwrap();
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(limited.header("ratelimit-limit"), Some("3"));
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    assert!(limited.header("ratelimit-reset").is_some());
    assert!(
        limited.error().contains("rate limit exceeded"),
        "{}",
        limited.error()
    );
    // Another key has its own allowance; its tier's burst is 6.
    let batch = [("x-api-key", g.keys.batch.as_str())];
    let mut ok = 0;
    for _ in 0..7 {
        if conn
            .send("POST", "/v2/models/breast-cancer/infer", &batch, example())
            .await
            .status
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 6);
    // Keyless paths: limited per client IP (burst 2).
    let health: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(conn.send("GET", "/v2/health/live", &[], "").await.status);
        }
        v
    };
    assert_eq!(health, vec![200, 200, 429]);
}

/// method, path, headers, body, expected status, expected message
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn routing_errors_and_limits() {
    let g = start(&format!(
        "limits: {{max_body_bytes: 2048, max_header_bytes: 1024}}\n{LOCAL_POOLS}{SPLIT_ROUTES}"
    ));
    let key = g.keys.dev.as_str();
    let k = ("x-api-key", key);
    let big_body = format!("{{\"inputs\": [], \"pad\": \"{}\"}}", "x".repeat(4000));
    let big_header = "y".repeat(2000);
    let cases: Vec<Case> = vec![
        ("POST", "/v2/models/nope/infer", vec![k], example(), 404, "unknown model \"nope\""),
        ("POST", "/v2/models/breast-cancer/versions/7/infer", vec![k], example(), 404, "unknown version \"7\" of model \"breast-cancer\" (available: 1, 2)"),
        ("GET", "/elsewhere", vec![], String::new(), 404, "no route for /elsewhere"),
        ("GET", "/v2/models/breast-cancer/infer", vec![k], String::new(), 405, "allowed: POST"),
        ("DELETE", "/v2/health/live", vec![], String::new(), 405, "allowed: GET"),
        ("POST", "/v2/models/breast-cancer/infer", vec![k], big_body, 413, "larger than the limit of 2048 bytes"),
        ("POST", "/v2/models/breast-cancer/infer", vec![k, ("x-padding", big_header.as_str())], example(), 431, "headers are larger than the limit of 1024 bytes"),
        ("POST", "/v2/models/breast-cancer/infer", vec![k, ("x-canary", "maybe")], example(), 400, "x-canary must be \"true\" or \"false\""),
        ("POST", "/v2/models/digits/infer", vec![k, ("x-canary", "true")], example(), 400, "model \"digits\" has no canary"),
        ("POST", "/v2/models/breast-cancer/infer", vec![k], "{".into(), 400, "invalid inference request JSON"),
        ("POST", "/v2/models/breast-cancer/infer", vec![k], json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": vec![0.5; 30]}]}).to_string(), 400, "datatype FP64 but the model expects FP32"),
    ];
    for proto in [Proto::H1, Proto::H2] {
        for (method, path, headers, body, status, message) in &cases {
            let r = send(&g, proto, method, path, headers, body.clone()).await;
            assert_eq!(r.status, *status, "{proto:?} {method} {path}: {:?}", r.body);
            assert!(
                r.header("x-request-id").is_some(),
                "{path}: every response has a request id"
            );
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert!(
                r.error().contains(message),
                "{proto:?} {method} {path}: {:?} lacks {message:?}",
                r.error()
            );
        }
    }
    // A versioned path pins the variant serving that version.
    let r = send(
        &g,
        Proto::H2,
        "POST",
        "/v2/models/breast-cancer/versions/2/infer",
        &[k],
        example(),
    )
    .await;
    assert_eq!((r.status, r.header("x-model-variant")), (200, Some("canary")));
}

/// HTTP/1.1 requests sent back to back in one write are answered in order by the gateway's
/// own reader. A request it does not read (a chunked body, HTTP/1.0) goes with the connection
/// to pingora's session, which gets the bytes already read and serves what follows.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_http1_requests_and_the_handoff_to_pingora() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = default_gateway();
    let body = example();
    let key = g.keys.dev.clone();
    let path = "/v2/models/breast-cancer/versions/1/infer";
    let plain = |extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let http10 = format!(
        "POST {path} HTTP/1.0\r\nhost: localhost\r\nx-api-key: {key}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // In one write; the connection closes after the last answer, cleanly.
    // (requests, answers, of which 200): a GET of the infer path is answered 405.
    let get_and_close = plain("connection: close\r\n").replace("POST", "GET");
    for (requests, answers, ok) in [
        (vec![plain(""), plain(""), plain("connection: close\r\n")], 3, 3),
        (vec![plain(""), get_and_close], 2, 1),
        (vec![plain(""), http10], 2, 2),
    ] {
        let mut tls = connect_raw_h1(&g).await;
        tls.write_all(requests.concat().as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut answer))
            .await
            .expect("the connection closes after the last answer");
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(end.is_ok(), "{end:?} after {answer}");
        assert_eq!(answer.matches("x-request-id: ").count(), answers, "{answer}");
        assert_eq!(answer.matches(" 200 ok\r\n").count(), ok, "{answer}");
        assert!(answer.ends_with("}"), "{answer}");
    }
    // One at a time: plain, chunked (handed over), then plain ones served by pingora.
    let mut tls = connect_raw_h1(&g).await;
    for request in [plain(""), chunked, plain(""), plain("")] {
        tls.write_all(request.as_bytes()).await.unwrap();
        let (head, reply) = read_h1_answer(&mut tls).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("x-model-variant: stable\r\n"), "{head}");
        assert!(reply.contains("\"outputs\""), "{reply}");
    }
}

/// One HTTP/1.1 answer with a `content-length`: its header (lower case) and its body.
async fn read_h1_answer(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert_eq!(n, 1, "the connection closed in an answer's header");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let length: usize = head
        .split("content-length: ")
        .nth(1)
        .and_then(|v| v.split("\r\n").next()?.parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// A TLS connection that offers only HTTP/1.1, for requests written by hand.
async fn connect_raw_h1(g: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = (*g.tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A chunked body (no length declared) is cut off with 413 once it passes the limit.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_over_the_limit() {
    let g = start(&format!(
        "limits: {{max_body_bytes: 2048}}\n{LOCAL_POOLS}{SPLIT_ROUTES}"
    ));
    let tls = (*g.tls).clone();
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chunk = "z".repeat(1000);
    let mut req = format!(
        "POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: localhost\r\nx-api-key: {}\r\ntransfer-encoding: chunked\r\n\r\n",
        g.keys.dev
    );
    for _ in 0..4 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let _ = stream.write_all(req.as_bytes()).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("larger than the limit of 2048 bytes"), "{text}");
}

/// The same canary share end to end as through the router: 100,000 requests at weight 10,
/// split per request, on HTTP/2 connections with many requests in flight.
#[tokio::test(flavor = "multi_thread")]
async fn weight_10_end_to_end() {
    let g = start(&format!(
        "rate_limits: {{default: {{per_second: 1000000, burst: 1000000}}, tiers: {{batch: {{per_second: 1, burst: 1}}}}}}\n{LOCAL_POOLS}{SPLIT_ROUTES}"
    ));
    let total = 100_000usize;
    let connections = 8;
    let per_task = total / (connections * 16);
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(connect(g.https, &g.tls, Proto::H2).await.h2_sender());
    }
    let mut tasks = Vec::new();
    for i in 0..connections * 16 {
        // h2 senders clone onto the same connection: 16 requests in flight per connection.
        let mut sender = senders[i % connections].clone();
        let key = g.keys.dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut canary = 0usize;
            for _ in 0..per_task {
                let req = hyper::Request::builder()
                    .method("POST")
                    .uri("https://localhost/v2/models/breast-cancer/infer")
                    .header("x-api-key", key.as_str())
                    .body(http_body_util::Full::new(bytes::Bytes::from(example())))
                    .unwrap();
                sender.ready().await.unwrap();
                let res = sender.send_request(req).await.unwrap();
                assert_eq!(res.status(), 200);
                if res.headers().get("x-model-variant").unwrap() == "canary" {
                    canary += 1;
                }
                // Read to the end: a body dropped unread makes the client reset the stream
                // (CANCEL), and the answer's DATA frame arriving after that counts toward
                // h2's limit of local error resets per connection (1,024), which a busy
                // machine crossed: the client then closed the connection (ENHANCE_YOUR_CALM).
                http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
            }
            canary
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await.unwrap();
    }
    let sent = per_task * connections * 16;
    let share = canary as f64 / sent as f64 * 100.0;
    assert!(sent >= 99_000, "{sent}");
    assert!(
        (share - 10.0).abs() <= 0.5,
        "canary share {share:.2}% over {sent} requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_by_key_keeps_the_variant() {
    let g = start(&format!(
        "{LOCAL_POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    canary: {{pool: cancer-v2, weight: 50}}\n    sticky: api_key\n"
    ));
    for key in [&g.keys.dev, &g.keys.batch] {
        let mut conn = connect(g.https, &g.tls, Proto::H2).await;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let r = send_example(&mut conn, key).await;
            seen.insert(r.header("x-model-variant").unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "a key keeps its variant: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_json_endpoint() {
    let g = default_gateway();
    let features = json!({"features": json!(serde_json::from_str::<serde_json::Value>(&example()).unwrap()["inputs"][0]["data"])});
    let r = send(
        &g,
        Proto::H2,
        "POST",
        "/predict/breast-cancer",
        &[("x-api-key", &g.keys.dev), ("x-canary", "false")],
        features.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["prediction"], 0);
    assert_eq!(v["model_version"], "1");
    assert!(v["confidence"].as_f64().unwrap() > 0.9);
    let rows = json!({"features": [features["features"], features["features"]]});
    let many = send(
        &g,
        Proto::H1,
        "POST",
        "/predict/breast-cancer",
        &[("x-api-key", &g.keys.dev)],
        rows.to_string(),
    )
    .await
    .json();
    assert_eq!(many["predictions"].as_array().unwrap().len(), 2);
    let bad = send(
        &g,
        Proto::H1,
        "POST",
        "/predict/breast-cancer",
        &[("x-api-key", &g.keys.dev)],
        r#"{"features": [1, 2]}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().contains("takes 30 features per row, got 2"),
        "{}",
        bad.error()
    );
    let nokey = send(
        &g,
        Proto::H1,
        "POST",
        "/predict/breast-cancer",
        &[],
        features.to_string(),
    )
    .await;
    assert_eq!(nokey.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_metrics_and_config() {
    let g = default_gateway();
    infer(
        &g,
        Proto::H1,
        &g.keys.dev,
        "breast-cancer",
        &[("x-canary", "false")],
    )
    .await;
    infer(&g, Proto::H1, "wrong", "breast-cancer", &[]).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let get = |path: &str| {
        let client = client.clone();
        let uri: hyper::Uri = format!("http://{}{path}", g.admin).parse().unwrap();
        async move {
            let r = client.get(uri).await.unwrap();
            let status = r.status().as_u16();
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    // The access log and metrics are written after the response: give them a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .contains("gateway_requests_total{route=\"breast-cancer\",status_class=\"2xx\",variant=\"stable\",version=\"1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_errors_total{kind=\"unknown_key\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(&g.keys.dev), "keys never appear in metrics");
    let (status, config) = get("/admin/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["routes"][0]["canary"]["weight"], 10);
    assert_eq!(
        (
            &config["shadow"]["max_in_flight"],
            &config["shadow"]["max_queued"],
            &config["shadow"]["local_copies"]
        ),
        (&json!(64), &json!(4096), &json!("auto")),
        "the shadow settings in force: {}",
        config["shadow"]
    );
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(get("/nope").await.0, 404);
}

/// The threads of this process with this name, by id.
fn threads_named(name: &str) -> std::collections::HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == name).then(|| t.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// A gateway started after another one in this process has shut down completely (its grace
/// period over, its I/O threads gone) serves. pingora's no-steal workers once found their
/// runtime through a thread-local slot that outlived its thread: a new worker could inherit
/// the dead runtime, the new listeners closed at once and nothing answered
/// (cloudflare/pingora#981, patched in `vendor/pingora-runtime`: vendor/README.md).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_started_after_another_has_shut_down_serves() {
    let body = format!(
        "server: {{threads: 2, access_log: false, shutdown_grace_s: 1}}\n{LOCAL_POOLS}{SPLIT_ROUTES}"
    );
    let before = threads_named("gateway");
    let first = start(&body);
    let r = infer(&first, Proto::H1, &first.keys.dev, "breast-cancer", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Its I/O threads: the ones named for pingora's service that it brought (another test's
    // gateway may have brought some too: then this waits for those as well, at most 20 s).
    let its: Vec<String> = threads_named("gateway").difference(&before).cloned().collect();
    assert!(!its.is_empty(), "the gateway's I/O threads are named `gateway`");
    first.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while its.iter().any(|t| threads_named("gateway").contains(t)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for round in 0..3 {
        let g = start(&body);
        for proto in [Proto::H1, Proto::H2] {
            let r = infer(&g, proto, &g.keys.dev, "breast-cancer", &[]).await;
            assert_eq!(
                r.status, 200,
                "gateway {round} after the first, {proto:?}: {:?}",
                r.body
            );
        }
    }
}
