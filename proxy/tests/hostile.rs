//! Hostile clients against the real gateway, over real TLS: a table of requests an attacker
//! (some with a valid key) would send — broken framing, smuggling, amplification, huge
//! shapes, bad UTF-8, header floods, names listed twice, slow and idle clients against short
//! deadlines, a connection that never starts TLS. Each gets its documented answer (a status,
//! or a connection closed by a deadline), nothing panics anywhere in the process, and a good
//! request on a fresh connection after each still gets 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short deadlines and small limits, so that crossing each takes little time and data.
const BODY: &str = "\
limits: {handshake_timeout_ms: 500, header_timeout_ms: 400, body_timeout_ms: 400, idle_timeout_s: 1,
         max_body_bytes: 65536, max_header_bytes: 4096, max_rows: 64, max_answer_bytes: 65536,
         max_inflight_bytes: 8388608, max_inflight_bytes_per_key: 2097152}
rate_limits: {default: {per_second: 10000, burst: 10000}, per_ip: {per_second: 10000, burst: 10000},
              tiers: {batch: {per_second: 10000, burst: 10000}}, auth_failures: {per_second: 1000, burst: 10000}}
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
  cancer-v2: {local: {model: breast-cancer, version: 2}}
routes:
  - model: breast-cancer
    stable: cancer-v1
    canary: {pool: cancer-v2, weight: 0}
";

/// What the client does, in order.
#[derive(Clone)]
enum Step {
    Send(Vec<u8>),
    /// Sends these bytes one at a time, this far apart.
    Trickle(Vec<u8>, Duration),
    Pause(Duration),
}

/// What the gateway must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Answers with this status (the first final answer).
    Status(u16),
    /// Answers with this status and closes the connection.
    StatusThenClose(u16),
    /// Closes the connection without an answer, within this time (a deadline).
    CloseWithin(Duration),
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    expect: Expect,
}

/// What came back.
#[derive(Debug)]
struct Outcome {
    statuses: Vec<u16>,
    /// The answers' text, lower case.
    text: String,
    closed: bool,
    took: Duration,
}

fn tls_config(g: &Gateway, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut config = (*g.tls).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Runs `steps` on a fresh TLS connection; reads until the connection closes, or `final`
/// final answers have come and no more bytes follow for a moment.
async fn run(g: &Gateway, steps: &[Step], finals: usize) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config(g, b"http/1.1"))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let started = Instant::now();
    for step in steps {
        match step {
            Step::Send(bytes) => {
                if tls.write_all(bytes).await.is_err() {
                    break;
                }
            }
            Step::Trickle(bytes, every) => {
                for b in bytes {
                    if tls.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(*every).await;
                }
            }
            Step::Pause(d) => tokio::time::sleep(*d).await,
        }
    }
    let _ = tls.flush().await;
    read_answers(&mut tls, started, finals).await
}

async fn read_answers(tls: &mut (impl AsyncReadExt + Unpin), started: Instant, finals: usize) -> Outcome {
    let mut got = Vec::new();
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let complete = final_answers(&got).len() >= finals;
        // An answer that says the connection closes is followed by the close (after at
        // most a second of reading what the client still sends: a lingering close).
        let closing = String::from_utf8_lossy(&got)
            .to_ascii_lowercase()
            .contains("connection: close\r\n");
        let wait = if complete && !closing {
            Duration::from_millis(100)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout(wait, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Outcome {
        statuses: final_answers(&got),
        text: String::from_utf8_lossy(&got).to_lowercase(),
        closed,
        took: started.elapsed(),
    }
}

/// The statuses of the complete answers in `bytes` (100 Continue included).
fn final_answers(bytes: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut rest = bytes;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(rest) else {
            return statuses;
        };
        let status = response.code.unwrap_or(0);
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .unwrap_or(0);
        if rest.len() < head + length {
            return statuses;
        }
        statuses.push(status);
        rest = &rest[head + length..];
    }
}

fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn infer_body(shape: &str, data: &str) -> String {
    format!(r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","data":{data}}}]}}"#)
}

fn row() -> String {
    serde_json::to_string(&testdata_rows().0[0]).unwrap()
}

fn cases(g: &Gateway) -> Vec<Case> {
    let key = format!("x-api-key: {}\r\n", g.keys.dev);
    let other = format!("x-api-key: {}\r\n", g.keys.batch);
    let infer = "/v2/models/breast-cancer/infer";
    let good = infer_body("[1, 30]", &row());
    let send = |b: Vec<u8>| vec![Step::Send(b)];
    let text = |t: &str| vec![Step::Send(t.as_bytes().to_vec())];
    let status = Expect::Status;
    let closes = Expect::StatusThenClose;
    let rows = |n: usize| format!("[{}]", vec![row(); n].join(","));
    let binary_header = r#"{"inputs":[{"name":"input","shape":[1,30],"datatype":"FP32","parameters":{"binary_data_size":120}}]}"#;
    let binary = |length: &str, extra: usize| {
        let mut body = binary_header.as_bytes().to_vec();
        body.extend(std::iter::repeat_n(0u8, 120 + extra));
        let mut req = format!(
            "POST {infer} HTTP/1.1\r\nhost: localhost\r\n{key}inference-header-content-length: {length}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend(body);
        req
    };
    let mut nested = "[".repeat(30_000);
    nested.push_str(&"]".repeat(30_000));
    let dup_outputs = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,30],"datatype":"FP32","data":{}}}],"outputs":[{}]}}"#,
        row(),
        vec![r#"{"name":"probabilities"}"#; 2000].join(",")
    );
    vec![
        // --- a control ---
        Case { name: "a good request", steps: send(post(infer, &key, &good)), expect: status(200) },
        // --- framing ---
        Case { name: "garbage request line", steps: text("HELLO THERE\r\n\r\n"), expect: closes(400) },
        Case { name: "header line without a colon", steps: text("GET /v2 HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n"), expect: closes(400) },
        Case { name: "obsolete line folding", steps: text("GET /v2 HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n"), expect: closes(400) },
        Case { name: "null byte in the target", steps: text("GET /v2\0x HTTP/1.1\r\nhost: x\r\n\r\n"), expect: status(404) },
        Case { name: "HTTP/0.9 request", steps: text("GET /v2\r\n\r\n"), expect: closes(400) },
        Case { name: "unknown HTTP version", steps: text("GET /v2 HTTP/3.7\r\nhost: x\r\n\r\n"), expect: closes(400) },
        Case { name: "HTTP/1.0 is served and closed", steps: text("GET /v2/health/live HTTP/1.0\r\n\r\n"), expect: closes(200) },
        Case { name: "absolute-form target", steps: text("GET https://localhost/v2/health/live HTTP/1.1\r\nhost: localhost\r\n\r\n"), expect: status(200) },
        Case { name: "unknown method", steps: text("BREW /v2 HTTP/1.1\r\nhost: x\r\n\r\n"), expect: status(405) },
        Case { name: "CONNECT", steps: text("CONNECT localhost:443 HTTP/1.1\r\nhost: localhost:443\r\n\r\n"), expect: closes(404) },
        Case { name: "TRACE", steps: text("TRACE /v2 HTTP/1.1\r\nhost: x\r\n\r\n"), expect: status(405) },
        // --- smuggling ---
        // Read by its transfer-encoding alone, and the connection closed after (RFC 9112 6.1).
        Case { name: "content-length and transfer-encoding", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")), expect: closes(400) },
        Case { name: "two different content-lengths", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc")), expect: closes(400) },
        Case { name: "content-length with a sign", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc")), expect: closes(400) },
        Case { name: "content-length of 20 digits", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}content-length: 99999999999999999999\r\n\r\n")), expect: closes(400) },
        Case { name: "transfer-encoding gzip only", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: gzip\r\n\r\n")), expect: closes(400) },
        Case { name: "chunk size not hex", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")), expect: closes(400) },
        Case { name: "a valid chunked body", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: chunked\r\n\r\n{:x}\r\n{good}\r\n0\r\n\r\n", good.len())), expect: status(200) },
        Case { name: "a request after the body is read as the next one", steps: send([post(infer, &key, &good), b"SMUGGLED /admin HTTP/1.1\r\n\r\n".to_vec()].concat()), expect: status(200) },
        // --- sizes ---
        Case { name: "declared body over the limit", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}content-length: 10000000\r\n\r\n")), expect: closes(413) },
        Case { name: "chunked body over the limit", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: chunked\r\n\r\n{}0\r\n\r\n", format!("4000\r\n{}\r\n", "a".repeat(0x4000)).repeat(5))), expect: closes(413) },
        Case { name: "one huge header", steps: text(&format!("GET /v2 HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(8000))), expect: closes(431) },
        Case { name: "a flood of small headers", steps: text(&format!("GET /v2 HTTP/1.1\r\nhost: x\r\n{}\r\n", (0..400).map(|i| format!("x-h{i}: v\r\n")).collect::<String>())), expect: closes(431) },
        Case { name: "a huge target", steps: text(&format!("GET /v2/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(8000))), expect: closes(431) },
        Case { name: "a huge API key", steps: text(&format!("GET /v2 HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n", "k".repeat(5000))), expect: closes(431) },
        Case { name: "more rows than the model takes", steps: send(post(infer, &key, &infer_body("[65, 30]", &rows(65)))), expect: status(413) },
        Case { name: "an output listed 2,000 times", steps: send(post(infer, &key, &dup_outputs)), expect: status(400) },
        Case { name: "an input given twice", steps: send(post(infer, &key, &format!(r#"{{"inputs":[{{"name":"input","shape":[1,30],"datatype":"FP32","data":{r}}},{{"name":"input","shape":[1,30],"datatype":"FP32","data":{r}}}]}}"#, r = row()))), expect: status(400) },
        Case { name: "a shape of a billion rows", steps: send(post(infer, &key, &infer_body("[1000000000, 30]", &row()))), expect: status(400) },
        Case { name: "a shape whose product overflows", steps: send(post(infer, &key, &infer_body("[4611686018427387904, 4611686018427387904]", "[1]"))), expect: status(400) },
        Case { name: "a negative dimension", steps: send(post(infer, &key, &infer_body("[-1, 30]", &row()))), expect: status(400) },
        // --- bodies ---
        Case { name: "invalid JSON", steps: send(post(infer, &key, "{\"inputs\": [")), expect: status(400) },
        Case { name: "an empty body", steps: send(post(infer, &key, "")), expect: status(400) },
        Case { name: "data nested 30,000 deep", steps: send(post(infer, &key, &infer_body("[1, 30]", &nested))), expect: status(400) },
        Case { name: "a body nested 30,000 deep", steps: send(post(infer, &key, &nested)), expect: status(400) },
        Case { name: "a number too large for any float", steps: send(post(infer, &key, &infer_body("[1, 1]", "[1e400]"))), expect: status(400) },
        Case { name: "strings in data", steps: send(post(infer, &key, &infer_body("[1, 30]", &format!("[{}]", vec!["\"a\""; 30].join(","))))), expect: status(400) },
        Case { name: "invalid UTF-8 in the body", steps: send([format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}content-length: 4\r\n\r\n").into_bytes(), vec![0xff, 0xfe, 0xfd, 0xfc]].concat()), expect: status(400) },
        Case { name: "an unknown output", steps: send(post(infer, &key, &format!(r#"{{"inputs":[{{"name":"input","shape":[1,30],"datatype":"FP32","data":{}}}],"outputs":[{{"name":"secrets"}}]}}"#, row()))), expect: status(400) },
        Case { name: "binary header length past the body", steps: send(binary("100000", 0)), expect: status(400) },
        Case { name: "binary header length not a number", steps: send(binary("lots", 0)), expect: status(400) },
        Case { name: "binary data left over", steps: send(binary(&binary_header.len().to_string(), 8)), expect: status(400) },
        Case { name: "binary data that is good", steps: send(binary(&binary_header.len().to_string(), 0)), expect: status(200) },
        Case { name: "/predict with ragged rows", steps: send(post("/predict/breast-cancer", &key, &format!(r#"{{"features": [{}, [1, 2]]}}"#, row()))), expect: status(400) },
        Case { name: "/predict with a 10,000-column first row", steps: send(post("/predict/breast-cancer", &key, &format!(r#"{{"features": [[{}], [1]]}}"#, vec!["0"; 10_000].join(",")))), expect: status(400) },
        Case { name: "/predict with strings", steps: send(post("/predict/breast-cancer", &key, r#"{"features": ["a"]}"#)), expect: status(400) },
        // --- keys ---
        Case { name: "no key", steps: send(post(infer, "", &good)), expect: status(401) },
        Case { name: "an unknown key", steps: send(post(infer, "x-api-key: gwk_nope\r\n", &good)), expect: status(401) },
        Case { name: "a disabled key", steps: send(post(infer, &format!("x-api-key: {}\r\n", g.keys.disabled), &good)), expect: status(403) },
        Case { name: "two different x-api-key", steps: send(post(infer, &format!("{key}{other}"), &good)), expect: status(400) },
        Case { name: "x-api-key and a different bearer", steps: send(post(infer, &format!("{key}authorization: Bearer {}\r\n", g.keys.batch), &good)), expect: status(400) },
        Case { name: "the same key twice", steps: send(post(infer, &format!("{key}{key}"), &good)), expect: status(200) },
        Case { name: "a key of invalid UTF-8", steps: send([b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: x\r\nx-api-key: \xff\xfe\r\ncontent-length: 2\r\n\r\n{}".to_vec()].concat()), expect: status(401) },
        // --- choosing the variant ---
        Case { name: "x-canary from a key that may not choose: the split answers", steps: send(post(infer, &format!("{other}x-canary: true\r\n"), &good)), expect: status(200) },
        Case { name: "a versioned inference from a key that may not", steps: send(post("/v2/models/breast-cancer/versions/2/infer", &other, &good)), expect: status(403) },
        Case { name: "x-canary that is not a boolean", steps: send(post(infer, &format!("{key}x-canary: maybe\r\n"), &good)), expect: status(400) },
        // --- paths ---
        Case { name: "path traversal", steps: text("GET /v2/models/../../../etc/passwd HTTP/1.1\r\nhost: x\r\n\r\n"), expect: status(404) },
        Case { name: "a model name of 3 KB", steps: send(post(&format!("/v2/models/{}/infer", "m".repeat(3000)), &key, &good)), expect: status(404) },
        Case { name: "GET on the infer path", steps: text(&format!("GET {infer} HTTP/1.1\r\nhost: x\r\n\r\n")), expect: status(405) },
        // --- expectations ---
        Case { name: "100-continue is answered", steps: vec![Step::Send(format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}expect: 100-continue\r\ncontent-length: {}\r\n\r\n", good.len()).into_bytes()), Step::Pause(Duration::from_millis(100)), Step::Send(good.clone().into_bytes())], expect: status(100) },
        Case { name: "100-continue with a chunked body (pingora's reader)", steps: vec![Step::Send(format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}expect: 100-continue\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes()), Step::Pause(Duration::from_millis(100)), Step::Send(format!("{:x}\r\n{good}\r\n0\r\n\r\n", good.len()).into_bytes())], expect: status(100) },
        Case { name: "100-continue refused without a key: no body asked for", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n")), expect: closes(401) },
        Case { name: "an expectation other than 100-continue", steps: text("GET /v2 HTTP/1.1\r\nhost: x\r\nexpect: tea\r\n\r\n"), expect: status(200) },
        // --- slow and idle clients ---
        Case { name: "a header trickling in (slowloris)", steps: vec![Step::Trickle(b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaa".to_vec(), Duration::from_millis(50))], expect: closes(408) },
        Case { name: "a header begun and left", steps: vec![Step::Send(b"GET /v2 HTTP/1.1\r\nho".to_vec())], expect: closes(408) },
        Case { name: "a body trickling in", steps: vec![Step::Send(format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}content-length: {}\r\n\r\n", good.len()).into_bytes()), Step::Trickle(good.as_bytes()[..30].to_vec(), Duration::from_millis(50))], expect: closes(408) },
        Case { name: "a body promised and never sent", steps: text(&format!("POST {infer} HTTP/1.1\r\nhost: x\r\n{key}content-length: 100\r\n\r\n")), expect: closes(408) },
        Case { name: "a connection that sends nothing", steps: vec![], expect: Expect::CloseWithin(Duration::from_millis(2500)) },
        Case { name: "a pipelined burst", steps: send([post(infer, &key, &good), post(infer, &key, &good), b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()].concat()), expect: status(200) },
        Case { name: "control characters in a header value", steps: send(post(infer, &format!("{key}x-request-id: a\x01b\r\n"), &good)), expect: closes(400) },
        Case { name: "a request id with spaces is not echoed", steps: send(post(infer, &format!("{key}x-request-id: not echoed\r\n"), &good)), expect: status(200) },
    ]
}

/// Panics anywhere in this process (the gateway's threads and tasks included).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

async fn good_request_succeeds(g: &Gateway) {
    let r = infer(g, Proto::H1, &g.keys.dev, "breast-cancer", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_each_get_their_answer_and_nothing_breaks() {
    count_panics();
    let g = start(BODY);
    let table = cases(&g);
    assert!(table.len() >= 50, "{} cases", table.len());
    let mut report = Vec::new();
    for case in &table {
        // A 100 Continue is an answer of its own: the final one follows.
        let finals = if case.expect == Expect::Status(100) { 2 } else { 1 };
        let out = run(&g, &case.steps, finals).await;
        let ok = match case.expect {
            Expect::Status(s) => out.statuses.first() == Some(&s),
            Expect::StatusThenClose(s) => out.statuses.first() == Some(&s) && out.closed,
            Expect::CloseWithin(d) => out.statuses.is_empty() && out.closed && out.took <= d,
        };
        report.push(format!(
            "{:<60} {:?} -> {:?} closed={} in {:?}",
            case.name, case.expect, out.statuses, out.closed, out.took
        ));
        assert!(ok, "{}: expected {:?}, got {out:?}", case.name, case.expect);
        // Details some cases promise beyond their status.
        match case.name {
            "100-continue is answered" | "100-continue with a chunked body (pingora's reader)" => {
                assert_eq!(out.statuses, [100, 200], "{}", out.text)
            }
            "a request id with spaces is not echoed" => {
                assert!(!out.text.contains("not echoed"), "{}", out.text)
            }
            "a pipelined burst" => assert_eq!(out.statuses, [200, 200, 200], "{}", out.text),
            "x-canary from a key that may not choose: the split answers" => {
                assert!(out.text.contains("x-model-variant: stable"), "{}", out.text)
            }
            name if name.starts_with("garbage") || name.contains("huge API key") => {
                // The refusal never quotes the request (which may hold a key).
                assert!(
                    !out.text.contains("kkkkkkkk") && !out.text.contains("there"),
                    "{}",
                    out.text
                )
            }
            _ => {}
        }
        good_request_succeeds(&g).await;
    }
    eprintln!("{} hostile requests:\n{}", report.len(), report.join("\n"));
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "something panicked");
    // The deadlines crossed above are counted, by phase.
    for (phase, cases) in [("header", 2.0), ("body", 2.0)] {
        let name = format!("gateway_connection_timeouts_total{{phase=\"{phase}\"}}");
        let counted = metric(&g, &name).await;
        assert!(counted >= cases, "{name} = {counted}");
    }
}

/// A connection that never starts its TLS handshake is closed at the handshake deadline, and
/// one that sends garbage instead of a ClientHello at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_tls_are_closed() {
    let g = start(BODY);
    for (bytes, within) in [
        (&b""[..], Duration::from_millis(1500)),
        (b"GET / HTTP/1.1\r\n\r\n", Duration::from_millis(1500)),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        let mut total = 0;
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => total += n,
                Err(_) => break false,
            }
        };
        let took = started.elapsed();
        eprintln!(
            "{:?}: closed after {took:?} ({total} bytes)",
            String::from_utf8_lossy(bytes)
        );
        assert!(closed && took <= within, "held {took:?}");
    }
    let timeouts = metric(&g, "gateway_connection_timeouts_total{phase=\"tls_handshake\"}").await;
    assert!(timeouts >= 1.0, "{timeouts}");
    good_request_succeeds(&g).await;
}

/// HTTP/2: a connection that sends only its preface and SETTINGS is closed by the idle
/// timeout; a stream whose body never comes gets 408; a header list over the limit 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http2_clients() {
    let g = start(BODY);
    // Preface and an empty SETTINGS frame, then nothing.
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config(&g, b"h2"))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("an idle HTTP/2 connection is still open after 5 s"),
        }
    }
    let held = started.elapsed();
    eprintln!("HTTP/2 preface only: closed after {held:?}");
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_millis(2500),
        "{held:?}"
    );

    // A stream that sends its header and no body.
    struct Never;
    impl hyper::body::Body for Never {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_config(&g, b"h2"))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, h2) = hyper::client::conn::http2::handshake::<_, _, Never>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(h2);
    let request = hyper::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{}/v2/models/breast-cancer/infer",
            g.https.port()
        ))
        .header("x-api-key", g.keys.dev.as_str())
        .body(Never)
        .unwrap();
    sender.ready().await.unwrap();
    let started = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A header list over the limit (4 KiB here).
    let mut conn = connect(g.https, &g.tls, Proto::H2).await;
    let big = "a".repeat(6000);
    let r = conn.send("GET", "/v2", &[("x-big", big.as_str())], "").await;
    assert_eq!(r.status, 431);
    good_request_succeeds(&g).await;
}

/// Repeated failed authentications from one address are refused with 429 before any key is
/// looked at — a valid one included — until the allowance returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let g = start(&BODY.replace(
        "auth_failures: {per_second: 1000, burst: 10000}",
        "auth_failures: {per_second: 1, burst: 5}",
    ));
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    let body = example();
    let path = "/v2/models/breast-cancer/infer";
    for _ in 0..5 {
        let r = conn
            .send("POST", path, &[("x-api-key", "gwk_guess")], body.clone())
            .await;
        assert_eq!(r.status, 401);
    }
    let r = conn
        .send("POST", path, &[("x-api-key", "gwk_guess")], body.clone())
        .await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert!(r.header("retry-after").is_some());
    let r = conn
        .send("POST", path, &[("x-api-key", g.keys.dev.as_str())], body.clone())
        .await;
    assert_eq!(
        r.status, 429,
        "a valid key from the same address waits too: {:?}",
        r.body
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (A fresh connection: the idle timeout here is 1 s.)
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    let r = conn
        .send("POST", path, &[("x-api-key", g.keys.dev.as_str())], body)
        .await;
    assert_eq!(r.status, 200);
    assert!(metric(&g, "gateway_auth_failures_total{reason=\"limited\"}").await >= 1.0);
}

/// The admin listener refuses a foreign `Host` (DNS rebinding), a state-changing request
/// from a foreign `Origin` (a cross-site form), and out-of-range report parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_refuses_foreign_hosts_origins_and_bad_parameters() {
    let g = start(BODY);
    let raw = |request: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(g.admin).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    };
    let own = g.admin.to_string();
    for (request, want) in [
        (
            format!("GET /health/live HTTP/1.1\r\nhost: {own}\r\nconnection: close\r\n\r\n"),
            200,
        ),
        (
            format!(
                "GET /health/live HTTP/1.1\r\nhost: localhost:{}\r\nconnection: close\r\n\r\n",
                g.admin.port()
            ),
            200,
        ),
        (
            "GET /admin/config HTTP/1.1\r\nhost: rebind.attacker.example\r\nconnection: close\r\n\r\n"
                .to_string(),
            403,
        ),
        (
            "GET /metrics HTTP/1.1\r\nhost: attacker.example:9901\r\nconnection: close\r\n\r\n".to_string(),
            403,
        ),
        (
            format!(
                "POST /admin/reload HTTP/1.1\r\nhost: {own}\r\norigin: https://attacker.example\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
            403,
        ),
        (
            format!(
                "POST /admin/reload HTTP/1.1\r\nhost: {own}\r\norigin: http://{own}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
            200,
        ),
        (
            format!(
                "GET /admin/shadow/report?since=100000000000y HTTP/1.1\r\nhost: {own}\r\nconnection: close\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /admin/shadow/report?latest=100000000000000000000 HTTP/1.1\r\nhost: {own}\r\nconnection: close\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /admin/shadow/report?latest=5000 HTTP/1.1\r\nhost: {own}\r\nconnection: close\r\n\r\n"
            ),
            400,
        ),
        (
            format!("GET /admin/shadow/report?bogus=1 HTTP/1.1\r\nhost: {own}\r\nconnection: close\r\n\r\n"),
            400,
        ),
    ] {
        let (status, text) = raw(request.clone()).await;
        assert_eq!(status, want, "{request}\n{text}");
    }
}
