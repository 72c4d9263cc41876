//! `inference-server`'s limits, over real sockets: bodies over the limit, overload, bodies
//! that must never make it panic, and hostile clients (slow, silent, too many, too large).

use std::time::Duration;

use crate::common::*;
use inference::PoolConfig;
use inference::server::ServerOptions;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A body that declares no length (chunked) is cut off as soon as it passes the limit.
#[tokio::test]
async fn chunked_bodies_over_the_limit_get_413() {
    let s = server().await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let chunk = "x".repeat(16 * 1024);
    let mut request = String::from(
        "POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for _ in 0..8 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before it has read everything we send.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("larger than the limit of 65536 bytes"), "{text}");
}

/// Overload through HTTP: 503 with Retry-After, while the requests already accepted succeed.
#[tokio::test]
async fn overload_is_503_with_retry_after() {
    let repo = slow_repo();
    let s = TestServer::start(repo, ServerOptions::default()).await;
    let c = client();
    let body = json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]});
    // Eight at once: at most one running and two queued; the rest are shed.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, url, body) = (c.clone(), s.url("/v2/models/slow/infer"), body.clone());
            tokio::spawn(async move { post_json(&c, &url, &body).await })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(r.error().contains("overloaded"), "{}", r.error());
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    // At least the queue's worth is accepted (three when the worker took one off the queue
    // before the others arrived), and every accepted request succeeds (no other status).
    assert!(ok >= 2, "the accepted requests succeed ({ok} did)");
    assert!(shed >= 1, "some requests are shed");
    assert_eq!(ok + shed, 8);
}

/// Malformed and mutated bodies: each is answered (never a panic, never a 500), and the
/// server keeps serving afterwards.
#[tokio::test]
async fn malformed_bodies_never_panic() {
    let s = server().await;
    let c = client();
    let url = s.url("/v2/models/breast-cancer/infer");
    let valid = example().to_string();
    let mut bodies: Vec<Vec<u8>> = [
        "", "null", "1", "\"x\"", "{\"inputs\": null}", "{\"inputs\": [null]}", "{\"inputs\": [{}]}",
        "{\"inputs\": [{\"name\": 1}]}", "{\"inputs\": [{\"name\": \"input\", \"shape\": [1e400], \"datatype\": \"FP32\", \"data\": []}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [18446744073709551615, 2], \"datatype\": \"FP32\", \"data\": [1]}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [4294967296, 4294967296, 4294967296], \"datatype\": \"FP32\", \"data\": [1]}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 30], \"datatype\": \"FP32\", \"data\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 30], \"datatype\": \"FP32\", \"data\": {\"a\": 1}}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 30], \"datatype\": \"FP32\", \"parameters\": {\"binary_data_size\": -1}}]}",
        "\u{0}\u{1}\u{2}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Deterministic mutations of a valid body: byte flips, truncations, duplications.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid_bytes = valid.as_bytes();
    for _ in 0..300 {
        let mut b = valid_bytes.to_vec();
        match next() % 3 {
            0 => {
                for _ in 0..(1 + next() % 4) {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
            }
            1 => b.truncate((next() as usize) % b.len()),
            _ => {
                let i = (next() as usize) % b.len();
                let j = i + (next() as usize) % (b.len() - i);
                let piece = b[i..j].to_vec();
                b.splice(j..j, piece);
            }
        }
        bodies.push(b);
    }
    for body in bodies {
        let r = send(&c, "POST", &url, &[], body.clone()).await;
        assert!(
            r.status == 200 || r.status == 400,
            "{} for {:?}: {:?}",
            r.status,
            String::from_utf8_lossy(&body),
            r.body
        );
        if r.status == 400 {
            assert!(!r.error().is_empty());
        }
    }
    assert_eq!(post_json(&c, &url, &example()).await.status, 200, "still serving");
    s.stop().await;
}

/// The same limits as the gateway's, on `inference-server`: a header that trickles in or
/// never ends, a body that never comes, an idle connection, a header block over the limit,
/// connections over the cap, too many rows, names listed twice, an answer over the cap.
#[tokio::test]
async fn hostile_clients_meet_the_servers_limits() {
    let repo = load(
        models_dir(),
        PoolConfig {
            max_rows: 8,
            ..PoolConfig::default()
        },
    );
    let s = TestServer::start(
        repo,
        ServerOptions {
            max_header_bytes: 8192,
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            max_connections: 4,
            max_answer_bytes: 1024,
            ..ServerOptions::default()
        },
    )
    .await;
    let c = client();
    let url = s.url("/v2/models/breast-cancer/infer");
    let row = example()["inputs"][0]["data"].clone();
    let rows = |n: usize| json!({"inputs": [{"name": "input", "shape": [n, 30], "datatype": "FP32", "data": vec![row.clone(); n]}]});

    // Connections that send too slowly, or nothing, are closed by their deadline: read until
    // the server closes, and say how long it held on.
    async fn held(addr: std::net::SocketAddr, sent: &[u8], trickle: Option<&[u8]>) -> (Duration, String) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        tcp.write_all(sent).await.unwrap();
        if let Some(slow) = trickle {
            for b in slow {
                if tcp.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        (started.elapsed(), String::from_utf8_lossy(&answer).to_string())
    }
    let (took, _) = held(
        s.addr,
        b"GET /v2 HTTP/1.1\r\n",
        Some(b"host: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    )
    .await;
    assert!(
        took < Duration::from_millis(1500),
        "a trickling header was held {took:?}"
    );
    let (took, answer) = held(
        s.addr,
        b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
        None,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took < Duration::from_millis(1500),
        "a missing body was held {took:?}"
    );
    let (took, answer) = held(s.addr, b"", None).await;
    assert!(
        answer.is_empty() && took < Duration::from_millis(1500),
        "an idle connection was held {took:?}"
    );
    let (_, answer) = held(
        s.addr,
        format!(
            "GET /v2 HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(9000)
        )
        .as_bytes(),
        None,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Connections over the cap are closed at once; the ones inside it are served.
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (took, answer) = held(s.addr, b"GET /v2 HTTP/1.1\r\nhost: x\r\n\r\n", None).await;
    assert!(
        answer.is_empty() && took < Duration::from_millis(300),
        "over the cap: {took:?} {answer}"
    );
    drop(open);
    tokio::time::sleep(Duration::from_millis(50)).await;

    for (body, status, message) in [
        (rows(9), 413, "9 rows; this model takes at most 8"),
        (
            rows(8)
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("outputs".into(), json!([{"name": "label"}, {"name": "label"}]));
                    json!(o)
                })
                .unwrap(),
            400,
            "listed more than once",
        ),
        (
            rows(8),
            413,
            "the answer would be larger than the limit of 1024 bytes",
        ),
        (rows(1), 200, ""),
    ] {
        let r = post_json(&c, &url, &body).await;
        assert_eq!(r.status, status, "{:?}", r.body);
        if status != 200 {
            assert!(r.error().contains(message), "{}", r.error());
        }
    }
    s.stop().await;
}
