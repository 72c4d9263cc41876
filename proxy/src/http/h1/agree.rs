//! The gateway's reader and pingora's HTTP/1 session on the same bytes, side by side: what the
//! property test (`tests.rs`) and the fuzz target `h1_request` (`fuzz/`) compare. The gateway
//! itself does not use it.

use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use tokio::io::AsyncWriteExt;

use super::{Conn, Next, Waits};

/// What a reader made of some bytes: the request it read (method, target, header fields in
/// order, body), or `None` when it did not serve them.
pub type Read = Option<(String, String, Vec<(String, Vec<u8>)>, Vec<u8>)>;

fn fields(req: &RequestHeader) -> Vec<(String, Vec<u8>)> {
    req.headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// The gateway's reader on `bytes` from a client that then half-closes: reads end after them,
/// nothing waits for more, and what the reader writes (a `100 Continue`) is taken.
pub async fn ours(bytes: &[u8]) -> Read {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    b.shutdown().await.ok()?;
    let mut conn = Conn::with_buffer(Box::new(a), bytes);
    let waits = Waits {
        idle: Duration::from_millis(50),
        header: Duration::from_millis(50),
        max_header_bytes: 64 * 1024,
    };
    if conn.next_request(waits).await != Next::Request {
        return None;
    }
    let req = conn.req_header();
    let head = (req.method.to_string(), req.uri.to_string(), fields(req));
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = conn.read_body(Instant::now() + Duration::from_millis(50)).await {
        body.extend_from_slice(&chunk);
    }
    drop(b);
    Some((head.0, head.1, head.2, body))
}

/// pingora's session on the same bytes, from the same client.
pub async fn pingoras(bytes: &[u8]) -> Read {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    b.write_all(bytes).await.ok()?;
    b.shutdown().await.ok()?;
    let mut session = pingora::protocols::http::ServerSession::new_http1(Box::new(a));
    if !matches!(session.read_request().await, Ok(true)) {
        return None;
    }
    let req = session.req_header();
    let head = (req.method.to_string(), req.uri.to_string(), fields(req));
    let mut body = Vec::new();
    // A body that ends early: both readers see the bytes there were.
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
    }
    Some((head.0, head.1, head.2, body))
}
