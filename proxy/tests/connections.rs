//! Client connections and addresses: the connection cap (beyond it a connection is closed at
//! accept, before TLS, and counted), the PROXY protocol header of a load balancer from a
//! configured network, and `X-Forwarded-For` from trusted proxies, both seen by the per-IP
//! limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POOLS: &str = "\
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
routes:
  - model: breast-cancer
    stable: cancer-v1
";

/// A TLS connection to the gateway over `tcp` (after whatever was written on it already).
async fn tls_over(
    g: &Gateway,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = (*g.tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// `GET /v2/health/live` (limited per IP) on `tls`: the status.
async fn live(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, extra: &str) -> u16 {
    tls.write_all(
        format!("GET /v2/health/live HTTP/1.1\r\nhost: localhost\r\n{extra}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_accept_and_counted() {
    let g = start(&format!("limits: {{max_connections: 3}}\n{POOLS}"));
    let mut held = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
        held.push(tls_over(&g, tcp).await.unwrap());
    }
    // The fourth is closed before its handshake.
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    assert!(
        tls_over(&g, tcp).await.is_err(),
        "a fourth connection got through"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(
            &g,
            "gateway_connections_refused_total{reason=\"max_connections\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(&g, "gateway_connections_open").await, 3.0);
    // One closes: a new one is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let mut tls = tls_over(&g, tcp).await.unwrap();
    assert_eq!(live(&mut tls, "").await, 200);
}

/// A PROXY header (v1 here, v2 below) from a configured network names the client: the per-IP
/// limit counts the address it names. A connection from such a network without the header
/// is closed; the header from any other network is not read (it would fail TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_name_the_client_for_per_ip_limits() {
    let g = start_with_listen(
        &format!(
            "rate_limits: {{per_ip: {{per_second: 1, burst: 2}}, tiers: {{batch: {{per_second: 9, burst: 9}}}}}}\n{POOLS}"
        ),
        "proxy_protocol: [127.0.0.0/8]",
    );
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 8443\r\n").into_bytes();
    let v2_for = |client: [u8; 4]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        h.extend_from_slice(&client);
        h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x20, 0xfb]);
        h
    };
    let statuses = |header: Vec<u8>| {
        let g = &g;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
            tcp.write_all(&header).await.unwrap();
            match tls_over(g, tcp).await {
                Ok(mut tls) => live(&mut tls, "").await,
                Err(_) => 0,
            }
        }
    };
    // Client A spends its allowance of 2; client B (another address) still has its own.
    assert_eq!(statuses(v1("198.51.100.1")).await, 200);
    assert_eq!(statuses(v2_for([198, 51, 100, 1])).await, 200);
    assert_eq!(statuses(v1("198.51.100.1")).await, 429);
    assert_eq!(statuses(v1("198.51.100.2")).await, 200);
    // From a PROXY network without the header: closed before TLS (and counted; the harness's
    // own check that the port listens was one such connection already).
    let refused = || metric(&g, "gateway_connections_refused_total{reason=\"proxy_protocol\"}");
    let before = refused().await;
    assert_eq!(statuses(Vec::new()).await, 0);
    assert_eq!(refused().await, before + 1.0);
}

/// `X-Forwarded-For` from a trusted proxy names the client for per-IP limits; from anyone
/// else it is the client's own claim and is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    for (trusted, want) in [
        ("[127.0.0.1/32]", [200, 200, 429, 200]),
        ("[10.0.0.0/8]", [200, 200, 429, 429]),
    ] {
        let g = start_with_listen(
            &format!(
                "rate_limits: {{per_ip: {{per_second: 1, burst: 2}}, tiers: {{batch: {{per_second: 9, burst: 9}}}}}}\n{POOLS}"
            ),
            &format!("trusted_proxies: {trusted}"),
        );
        let mut got = Vec::new();
        for client in ["198.51.100.1", "198.51.100.1", "198.51.100.1", "198.51.100.2"] {
            let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
            let mut tls = tls_over(&g, tcp).await.unwrap();
            got.push(live(&mut tls, &format!("x-forwarded-for: 203.0.113.9, {client}\r\n")).await);
        }
        assert_eq!(got, want, "trusted {trusted}");
    }
}
