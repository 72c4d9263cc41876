//! `http` pools: remote Open Inference Protocol servers (our `inference-server`, or Triton)
//! reached through pingora's upstream machinery: its load balancer (round-robin over the
//! endpoints that pass pingora's active HTTP health checks), its HTTP connector and kept-alive
//! connection pool, its HTTP/1.1 client.
//!
//! Requests are forwarded whole by [`forward`] rather than streamed through pingora's proxy
//! state machine: inference bodies are small and already read (the gateway must see them to
//! check their size and, for the simple endpoint, convert them), and measured on this
//! project's benchmark the direct exchange costs well under half the CPU per request of
//! the general-purpose streaming path (loadtests/bench_gateway.sh).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inference::{DataType, ModelMetadata, TensorSpec};
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::errors::GatewayError;

use crate::config::HttpSpec;

pub struct RemotePool {
    pub name: String,
    pub spec: HttpSpec,
    lb: LoadBalancer<RoundRobin>,
    /// The upstream's model signature, fetched once an endpoint answers; the simple JSON
    /// endpoint needs it to build requests.
    metadata: ArcSwapOption<ModelMetadata>,
    last_check: Mutex<Option<Instant>>,
}

impl RemotePool {
    pub fn new(name: &str, spec: HttpSpec) -> Result<RemotePool, String> {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(spec.endpoints.iter().map(|a| a.to_string()))
            .map_err(|e| format!("pool {name}: {e}"))?;
        let mut hc = HttpHealthCheck::new("localhost", false);
        hc.req = pingora::http::RequestHeader::build("GET", spec.health_path.as_bytes(), None)
            .map_err(|e| format!("pool {name}: health check path: {e}"))?;
        hc.req
            .insert_header("host", "localhost")
            .map_err(|e| e.to_string())?;
        hc.peer_template.options.connection_timeout = Some(spec.connect_timeout);
        hc.peer_template.options.read_timeout = Some(spec.timeout.min(Duration::from_secs(2)));
        hc.consecutive_failure = 1;
        hc.consecutive_success = 1;
        lb.set_health_check(Box::new(hc));
        Ok(RemotePool {
            name: name.to_string(),
            spec,
            lb,
            metadata: ArcSwapOption::empty(),
            last_check: Mutex::new(None),
        })
    }

    /// A healthy endpoint, round-robin; `avoid` skips the one that just failed to connect.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let n = self.spec.endpoints.len().max(1) * 2;
        self.lb
            .select_with(b"", n, |backend, healthy| {
                healthy && backend.addr.as_inet() != avoid.as_ref()
            })
            .and_then(|b| b.addr.as_inet().copied())
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count()
    }

    /// The pingora peer for an endpoint, with this pool's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.spec.connect_timeout);
        peer.options.read_timeout = Some(self.spec.timeout);
        peer.options.write_timeout = Some(self.spec.timeout);
        // Kept-alive upstream connections are reused for this long when idle.
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Box::new(peer)
    }

    /// The upstream path for a protocol path's tail (`/infer`, `/ready`, ``).
    pub fn upstream_path(&self, tail: &str) -> String {
        format!(
            "/v2/models/{}/versions/{}{tail}",
            self.spec.model, self.spec.version
        )
    }

    pub fn metadata(&self) -> Option<Arc<ModelMetadata>> {
        self.metadata.load_full()
    }

    /// Runs a health check when its interval has passed (or `force`), then fetches the model
    /// signature if it is not known yet and an endpoint is up.
    pub async fn maintain(&self, force: bool) {
        let due = {
            let mut last = self.last_check.lock();
            let due = force || last.is_none_or(|t| t.elapsed() >= self.spec.health_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if !due {
            return;
        }
        self.lb.backends().run_health_check(true).await;
        if self.metadata.load().is_none()
            && let Some(addr) = self.select(None)
        {
            match fetch_metadata(addr, &self.upstream_path(""), self.spec.timeout).await {
                Ok(meta) => self.metadata.store(Some(Arc::new(meta))),
                Err(e) => tracing::warn!(pool = %self.name, "cannot fetch model metadata from {addr}: {e}"),
            }
        }
    }
}

/// A request to forward: method, upstream path, body, and the headers the upstream needs.
pub struct Outbound<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Bytes,
    pub request_id: &'a str,
    pub content_type: Option<&'a str>,
    /// The binary tensor extension's `Inference-Header-Content-Length`, passed through.
    pub header_length: Option<&'a str>,
    /// Largest answer accepted from the upstream.
    pub max_response_bytes: usize,
}

/// What came back.
pub struct Inbound {
    pub status: u16,
    pub content_type: Option<String>,
    pub header_length: Option<String>,
    pub body: Bytes,
    pub endpoint: SocketAddr,
}

/// Sends one request to a healthy endpoint and reads the whole answer.
///
/// At most one retry, and only when the request cannot have reached a server: the connect
/// failed, or writing to a pooled connection failed (the server had closed it). Once a
/// request is written it is never sent again — inference need not be idempotent.
pub async fn forward(
    pool: &RemotePool,
    connector: &Connector,
    out: &Outbound<'_>,
) -> Result<Inbound, GatewayError> {
    let mut avoid = None;
    for attempt in 0..2 {
        let addr = pool.select(avoid).or_else(|| pool.select(None)).ok_or_else(|| {
            GatewayError::NoHealthyUpstream {
                pool: pool.name.clone(),
            }
        })?;
        let peer = pool.peer(addr);
        match exchange(pool, connector, &peer, addr, out).await {
            Ok(inbound) => return Ok(inbound),
            Err(Failure::NotDelivered(reason)) if attempt == 0 => {
                tracing::debug!(pool = %pool.name, %addr, "retrying once on another endpoint: {reason}");
                avoid = Some(addr);
            }
            Err(Failure::NotDelivered(reason)) | Err(Failure::Failed(reason)) => {
                return Err(GatewayError::BadGateway {
                    pool: pool.name.clone(),
                    reason,
                });
            }
            Err(Failure::TimedOut) => {
                return Err(GatewayError::GatewayTimeout {
                    pool: pool.name.clone(),
                    timeout_ms: pool.spec.timeout.as_millis(),
                });
            }
        }
    }
    unreachable!("the second attempt always returns")
}

enum Failure {
    /// The request did not reach the server: safe to retry.
    NotDelivered(String),
    Failed(String),
    TimedOut,
}

fn describe(e: &Error) -> String {
    match e.etype() {
        ErrorType::ConnectRefused => "connection refused".into(),
        ErrorType::ConnectTimedout => "connect timed out".into(),
        _ => e.to_string(),
    }
}

async fn exchange(
    pool: &RemotePool,
    connector: &Connector,
    peer: &HttpPeer,
    addr: SocketAddr,
    out: &Outbound<'_>,
) -> Result<Inbound, Failure> {
    let (session, reused) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| Failure::NotDelivered(describe(&e)))?;
    let HttpSession::H1(mut h1) = session else {
        return Err(Failure::Failed("upstream did not speak HTTP/1.1".into()));
    };
    let mut req = RequestHeader::build(out.method, out.path.as_bytes(), Some(6))
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let header = |req: &mut RequestHeader, k: &'static str, v: &str| {
        req.insert_header(k, v)
            .map_err(|e| Failure::Failed(e.to_string()))
    };
    header(&mut req, "host", &addr.to_string())?;
    header(&mut req, "content-length", &out.body.len().to_string())?;
    header(&mut req, "x-request-id", out.request_id)?;
    if let Some(ct) = out.content_type {
        header(&mut req, "content-type", ct)?;
    }
    if let Some(n) = out.header_length {
        header(&mut req, inference::protocol::HEADER_LENGTH, n)?;
    }
    let deadline = pool.spec.timeout;
    let write = async {
        h1.write_request_header(Box::new(req)).await?;
        if !out.body.is_empty() {
            h1.write_body(&out.body).await?;
        }
        h1.finish_body().await
    };
    match tokio::time::timeout(deadline, write).await {
        Err(_) => return Err(Failure::TimedOut),
        // A pooled connection the server had closed: nothing was delivered.
        Ok(Err(e)) if reused => return Err(Failure::NotDelivered(describe(&e))),
        Ok(Err(e)) => return Err(Failure::Failed(describe(&e))),
        Ok(Ok(_)) => {}
    }
    let read = async {
        h1.read_response().await?;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = h1.read_body_bytes().await? {
            if body.len() + chunk.len() > out.max_response_bytes {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream answer over the size limit",
                );
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let body = match tokio::time::timeout(deadline, read).await {
        Err(_) => return Err(Failure::TimedOut),
        Ok(Err(e)) => return Err(Failure::Failed(describe(&e))),
        Ok(Ok(body)) => body,
    };
    let resp = h1
        .resp_header()
        .ok_or_else(|| Failure::Failed("no response header".into()))?;
    let get = |name: &str| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let inbound = Inbound {
        status: resp.status.as_u16(),
        content_type: get("content-type"),
        header_length: get(inference::protocol::HEADER_LENGTH),
        body,
        endpoint: addr,
    };
    h1.respect_keepalive();
    connector
        .release_http_session(HttpSession::H1(h1), peer, peer.options.idle_timeout)
        .await;
    Ok(inbound)
}

/// `GET /v2/models/{m}/versions/{v}` from one endpoint, as a [`ModelMetadata`].
async fn fetch_metadata(addr: SocketAddr, path: &str, timeout: Duration) -> Result<ModelMetadata, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let response = tokio::time::timeout(timeout, client.get(uri))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let specs = |key: &str| -> Result<Vec<TensorSpec>, String> {
        v[key]
            .as_array()
            .ok_or_else(|| format!("no {key} in the metadata"))?
            .iter()
            .map(|t| {
                Ok(TensorSpec {
                    name: t["name"].as_str().ok_or("tensor without a name")?.to_string(),
                    datatype: DataType::parse(t["datatype"].as_str().unwrap_or(""))?,
                    shape: t["shape"]
                        .as_array()
                        .ok_or("tensor without a shape")?
                        .iter()
                        .filter_map(|d| d.as_i64())
                        .collect(),
                })
            })
            .collect()
    };
    let inputs = specs("inputs")?;
    let outputs = specs("outputs")?;
    let batchable = inputs
        .iter()
        .chain(&outputs)
        .all(|s| s.shape.first() == Some(&-1));
    Ok(ModelMetadata {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        version: path.rsplit('/').next().unwrap_or_default().to_string(),
        platform: "remote",
        inputs,
        outputs,
        batchable,
    })
}
