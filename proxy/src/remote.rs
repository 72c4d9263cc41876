//! `http` pools: remote Open Inference Protocol servers (our `inference-server`, or Triton)
//! reached through pingora's upstream machinery: its load balancer's active HTTP health
//! checks (requests go round-robin over the endpoints that pass them), its transport
//! connector and kept-alive connection pool, its HTTP/1.1 response reader.
//!
//! Requests are forwarded whole by [`forward`] rather than streamed through pingora's proxy
//! state machine: inference bodies are small and already read (the gateway must see them to
//! check their size and, for the simple endpoint, convert them), and measured on this
//! project's benchmark the direct exchange costs well under half the CPU per request of
//! the general-purpose streaming path (loadtests/bench_gateway.sh). The request line,
//! headers and body leave in one write: pingora's client writes the header and the body
//! separately, and each write to a loopback or LAN peer is a segment and a wake-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inference::{DataType, ModelMetadata, TensorSpec};
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use tokio::io::AsyncWriteExt;

use crate::errors::GatewayError;

use crate::config::HttpSpec;

pub struct RemotePool {
    pub name: String,
    pub spec: HttpSpec,
    /// Runs the health checks and keeps each endpoint's readiness.
    lb: LoadBalancer<RoundRobin>,
    endpoints: Vec<Endpoint>,
    /// Round-robin position.
    next: AtomicUsize,
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
        let endpoints = spec
            .endpoints
            .iter()
            .map(|&addr| Endpoint::new(addr, &spec))
            .collect();
        Ok(RemotePool {
            name: name.to_string(),
            spec,
            lb,
            endpoints,
            next: AtomicUsize::new(0),
            metadata: ArcSwapOption::empty(),
            last_check: Mutex::new(None),
        })
    }

    /// A healthy endpoint, round-robin; `avoid` skips the one that just failed to connect.
    fn pick(&self, avoid: Option<SocketAddr>) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let backends = self.lb.backends();
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| Some(e.addr) != avoid && backends.ready(&e.backend))
    }

    /// The address of a healthy endpoint, if there is one.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        self.pick(avoid).map(|e| e.addr)
    }

    /// Whether any endpoint passes its health check; unlike [`Self::select`], it does not
    /// move the round-robin on (a check before each request would skip every other endpoint).
    pub fn any_healthy(&self) -> bool {
        let backends = self.lb.backends();
        self.endpoints.iter().any(|e| backends.ready(&e.backend))
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count()
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

/// One upstream endpoint, with what every request to it reuses.
struct Endpoint {
    addr: SocketAddr,
    /// The load balancer's key for its health.
    backend: Backend,
    /// pingora's peer, with this pool's timeouts, and its connection-pool key.
    peer: HttpPeer,
    reuse_hash: u64,
    /// The `host` header's value.
    host: String,
}

impl Endpoint {
    fn new(addr: SocketAddr, spec: &HttpSpec) -> Endpoint {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(spec.connect_timeout);
        peer.options.read_timeout = Some(spec.timeout);
        peer.options.write_timeout = Some(spec.timeout);
        // Kept-alive upstream connections are reused for this long when idle.
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Endpoint {
            addr,
            backend: Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            },
            reuse_hash: peer.reuse_hash(),
            peer,
            host: addr.to_string(),
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
    connector: &TransportConnector,
    out: &Outbound<'_>,
) -> Result<Inbound, GatewayError> {
    let mut avoid = None;
    for attempt in 0..2 {
        let endpoint =
            pool.pick(avoid)
                .or_else(|| pool.pick(None))
                .ok_or_else(|| GatewayError::NoHealthyUpstream {
                    pool: pool.name.clone(),
                })?;
        let addr = endpoint.addr;
        match exchange(pool, connector, endpoint, out).await {
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
    connector: &TransportConnector,
    endpoint: &Endpoint,
    out: &Outbound<'_>,
) -> Result<Inbound, Failure> {
    let peer = &endpoint.peer;
    let (mut stream, reused) = match connector.reused_stream(peer).await {
        Some(stream) => (stream, true),
        // Connecting (a TLS client handshake included) is a future of about 8 KB: boxed, so
        // that every request's future neither carries nor copies it for the rare new connection.
        None => (
            Box::pin(connector.new_stream(peer))
                .await
                .map_err(|e| Failure::NotDelivered(describe(&e)))?,
            false,
        ),
    };
    let wire = request_wire(out, &endpoint.host).map_err(|e| Failure::Failed(e.into()))?;
    let deadline = pool.spec.timeout;
    let write = async {
        stream.write_all(&wire).await?;
        stream.flush().await
    };
    match tokio::time::timeout(deadline, write).await {
        Err(_) => return Err(Failure::TimedOut),
        // A pooled connection the server had closed: nothing was delivered.
        Ok(Err(e)) if reused => return Err(Failure::NotDelivered(e.to_string())),
        Ok(Err(e)) => return Err(Failure::Failed(e.to_string())),
        Ok(Ok(())) => {}
    }
    let mut h1 = HttpSession::new_with_options(stream, peer);
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
        endpoint: endpoint.addr,
    };
    h1.respect_keepalive();
    if let Some(stream) = h1.reuse().await {
        connector.release_stream(stream, endpoint.reuse_hash, peer.options.idle_timeout);
    }
    Ok(inbound)
}

/// The request line, headers and body, to be written at once.
fn request_wire(out: &Outbound<'_>, host: &str) -> Result<BytesMut, &'static str> {
    // Values that come from the client were parsed as header values already (no CR or LF);
    // the check keeps a request from ever being split, whatever the caller passes.
    let fields = [
        out.path,
        out.request_id,
        out.content_type.unwrap_or(""),
        out.header_length.unwrap_or(""),
    ];
    if fields.iter().any(|f| f.bytes().any(|b| b == b'\r' || b == b'\n')) {
        return Err("a header value holds a line break");
    }
    let mut wire = BytesMut::with_capacity(256 + out.path.len() + out.request_id.len() + out.body.len());
    let put = |wire: &mut BytesMut, parts: &[&[u8]]| parts.iter().for_each(|p| wire.put_slice(p));
    put(
        &mut wire,
        &[out.method.as_bytes(), b" ", out.path.as_bytes(), b" HTTP/1.1\r\n"],
    );
    let length = out.body.len().to_string();
    let mut headers = vec![
        ("host", host),
        ("content-length", length.as_str()),
        ("x-request-id", out.request_id),
    ];
    headers.extend(out.content_type.map(|v| ("content-type", v)));
    headers.extend(out.header_length.map(|v| (inference::protocol::HEADER_LENGTH, v)));
    for (name, value) in headers {
        put(&mut wire, &[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
    }
    put(&mut wire, &[b"\r\n", &out.body]);
    Ok(wire)
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

#[cfg(test)]
mod tests {
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
                endpoints: endpoints.clone(),
                model: "m".into(),
                version: 1,
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                health_interval: Duration::from_secs(1),
                health_path: "/v2/health/ready".into(),
            },
        )
        .unwrap();
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

    #[test]
    fn a_line_break_in_a_value_is_refused() {
        assert!(request_wire(&outbound(b"", Some("text/plain\r\nx-evil: 1"), "r"), "h:1").is_err());
        assert!(request_wire(&outbound(b"", None, "r\n"), "h:1").is_err());
    }
}
