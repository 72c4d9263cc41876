//! Unit tests of the upstream exchange: request bytes, answer framing, metadata.

use super::wire::*;
use super::*;

fn outbound<'a>(body: &'static [u8], content_type: Option<&'a str>, request_id: &'a str) -> Outbound<'a> {
    Outbound {
        method: "POST",
        path: "/v2/models/m/versions/1/infer",
        body: Bytes::from_static(body),
        request_id,
        content_type,
        header_length: None,
        max_response_bytes: 1 << 20,
    }
}

#[test]
fn the_request_is_one_buffer_with_its_body() {
    let wire = request_wire(
        &outbound(b"{\"inputs\":[]}", Some("application/json"), "r-1"),
        "10.0.0.7:8000",
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&wire).unwrap(),
        "POST /v2/models/m/versions/1/infer HTTP/1.1\r\nhost: 10.0.0.7:8000\r\ncontent-length: 13\r\n\
         x-request-id: r-1\r\ncontent-type: application/json\r\n\r\n{\"inputs\":[]}"
    );
    let get = Outbound {
        method: "GET",
        path: "/v2/models/m/versions/1",
        ..outbound(b"", None, "r-2")
    };
    assert_eq!(
        std::str::from_utf8(&request_wire(&get, "h:1").unwrap()).unwrap(),
        "GET /v2/models/m/versions/1 HTTP/1.1\r\nhost: h:1\r\ncontent-length: 0\r\nx-request-id: r-2\r\n\r\n"
    );
}

#[test]
fn requests_alternate_over_healthy_endpoints() {
    let endpoints: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
    let pool = RemotePool::new(
        "p",
        HttpSpec {
            endpoints: endpoints
                .iter()
                .map(|&a| crate::config::EndpointSpec::Address(a))
                .collect(),
            dns_refresh: Duration::from_secs(5),
            model: "m".into(),
            version: 1,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            health_path: "/v2/health/ready".into(),
            profile: None,
            protocol: crate::config::RemoteProtocol::Http,
        },
    );
    // Endpoints count as healthy until a check says otherwise; asking does not take a turn.
    let picks: Vec<SocketAddr> = (0..4)
        .map(|_| {
            assert!(pool.any_healthy());
            pool.select(None).unwrap()
        })
        .collect();
    assert_eq!(picks, [endpoints[0], endpoints[1], endpoints[0], endpoints[1]]);
    assert_eq!(pool.select(Some(endpoints[0])), Some(endpoints[1]));
    assert_eq!(pool.select(Some(endpoints[0])), Some(endpoints[1]));
}

/// What `read_answer` makes of `wire`, sent in pieces of `piece` bytes, then the stream
/// closed when `close` (else left open).
async fn answer(wire: &[u8], piece: usize, close: bool, max: usize) -> Result<Answer, String> {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let wire = wire.to_vec();
    let writer = tokio::spawn(async move {
        for part in wire.chunks(piece.max(1)) {
            theirs.write_all(part).await.unwrap();
            tokio::task::yield_now().await;
        }
        if !close {
            // Kept open until the reader is done.
            std::future::pending::<()>().await;
        }
    });
    let mut stream: Stream = Box::new(ours);
    let got = read_answer(&mut stream, max).await;
    writer.abort();
    got
}

#[tokio::test]
async fn answers_framed_by_length_chunks_or_close() {
    let plain =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
    for piece in [1, 7, plain.len()] {
        let a = answer(plain, piece, false, 1 << 20).await.unwrap();
        assert_eq!(
            (a.status, &a.body[..], a.keep_alive),
            (200, &b"{\"ok\":true}"[..], true)
        );
        assert_eq!(a.content_type.as_deref(), Some("application/json"));
    }

    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nx-trailer: 1\r\n\r\n";
    for piece in [1, 5, chunked.len()] {
        let a = answer(chunked, piece, false, 1 << 20).await.unwrap();
        assert_eq!((&a.body[..], a.keep_alive), (&b"abcdefg"[..], true));
    }

    // Neither length nor chunks: the body ends with the connection, which is not reused.
    let a = answer(b"HTTP/1.1 503 Busy\r\n\r\nlater", 3, true, 1 << 20)
        .await
        .unwrap();
    assert_eq!((a.status, &a.body[..], a.keep_alive), (503, &b"later"[..], false));

    // An interim answer is skipped; `connection: close` and HTTP/1.0 end reuse.
    let a = answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        4,
        false,
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!((a.status, &a.body[..], a.keep_alive), (200, &b"ok"[..], false));
    let a = answer(
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        64,
        false,
        1 << 20,
    )
    .await
    .unwrap();
    assert!(!a.keep_alive);
    let a = answer(b"HTTP/1.1 204 No Content\r\n\r\n", 64, false, 1 << 20)
        .await
        .unwrap();
    assert_eq!((a.status, a.body.len(), a.keep_alive), (204, 0, true));
    let a = answer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ninference-header-content-length: 1\r\n\r\n{",
        64,
        false,
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(a.header_length.as_deref(), Some("1"));
}

#[tokio::test]
async fn broken_or_oversized_answers_are_errors() {
    let cases: [(&[u8], bool, usize); 7] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", true, 1 << 20),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nab",
            false,
            1 << 20,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n", false, 10),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            false,
            1 << 20,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false,
            1 << 20,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\n",
            false,
            16,
        ),
        (b"NOT HTTP\r\n\r\n", false, 1 << 20),
    ];
    for (wire, close, max) in cases {
        let got = answer(wire, 64, close, max).await;
        assert!(got.is_err(), "{:?} gave {got:?}", String::from_utf8_lossy(wire));
    }
    assert!(
        answer(b"", 1, true, 1 << 20).await.is_err(),
        "closed before answering"
    );
}

#[tokio::test]
async fn idle_connections_closed_by_the_server_are_not_reused() {
    let idle = IdleConnections {
        list: Mutex::new(Vec::new()),
        timeout: Duration::from_secs(60),
    };
    let (open, _open_peer) = tokio::io::duplex(64);
    let (closed, closed_peer) = tokio::io::duplex(64);
    idle.put(Box::new(open));
    idle.put(Box::new(closed));
    assert_eq!(idle.len(), 2);
    drop(closed_peer);
    idle.purge();
    assert_eq!(idle.len(), 1, "the closed one is dropped");
    assert!(idle.take().is_some());
    assert!(idle.take().is_none());

    let expired = IdleConnections {
        list: Mutex::new(Vec::new()),
        timeout: Duration::ZERO,
    };
    let (s, _peer) = tokio::io::duplex(64);
    expired.put(Box::new(s));
    assert!(expired.take().is_none(), "idle longer than the timeout");
}

#[test]
fn a_line_break_in_a_value_is_refused() {
    assert!(request_wire(&outbound(b"", Some("text/plain\r\nx-evil: 1"), "r"), "h:1").is_err());
    assert!(request_wire(&outbound(b"", None, "r\n"), "h:1").is_err());
}
