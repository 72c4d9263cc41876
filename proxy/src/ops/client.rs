//! The CLI's client for the admin listener (`gateway health`, `gateway rollout`, and
//! `gateway run` waiting for its own listener to answer): hyper's client, one request at a
//! time on a runtime of its own (the CLI is synchronous).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One request to the admin listener at `admin` (`host:port`): (status, body, trimmed).
/// `token` goes as `Authorization: Bearer` (`GATEWAY_ADMIN_TOKEN`).
pub fn call(
    admin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client: {e}"))?;
    runtime.block_on(async {
        let uri: hyper::Uri = format!("http://{admin}{path}")
            .parse()
            .map_err(|e| format!("--admin {admin}: {e}"))?;
        let mut request = hyper::Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("--admin {admin}: {e}"))?;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let exchange = async {
            let response = client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    format!(
                        "cannot connect to the admin listener {admin} ({}): is the gateway running? \
                         `gateway run` (or scripts/run.sh) starts it; --admin names another address",
                        root_cause(&e)
                    )
                } else {
                    format!("the admin listener {admin} gave no HTTP answer: {e}")
                }
            })?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the answer of {admin}: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            format!(
                "the admin listener {admin} did not answer within {} s",
                timeout.as_secs()
            )
        })?
    })
}

/// The innermost error of a chain: hyper's own says only "client error (Connect)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// Whether `GET /healthz` on the admin listener answers 200 (an unspecified address is
/// asked on loopback).
pub fn answers(admin: SocketAddr) -> bool {
    let mut probe = admin;
    if probe.ip().is_unspecified() {
        probe.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    matches!(
        call(
            &probe.to_string(),
            "GET",
            "/healthz",
            None,
            Duration::from_secs(1)
        ),
        Ok((200, _))
    )
}
