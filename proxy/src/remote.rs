//! `http` pools: remote Open Inference Protocol servers (our `inference-server`, or Triton)
//! reached through pingora's upstream machinery: its load balancer's active HTTP health
//! checks (requests go round-robin over the endpoints that pass them) and its transport
//! connector (connect timeouts, TCP options, TLS when asked).
//!
//! Requests are forwarded whole by [`forward`] rather than streamed through pingora's proxy
//! state machine: inference bodies are small and already read (the gateway must see them to
//! check their size and, for the simple endpoint, convert them), and measured on this
//! project's benchmark the direct exchange costs well under half the CPU per request of
//! the general-purpose streaming path (loadtests/bench_gateway.sh). The request line,
//! headers and body leave in one write: pingora's client writes the header and the body
//! separately, and each write to a loopback or LAN peer is a segment and a wake-up.
//!
//! Kept-alive connections wait in each endpoint's own idle list, and answers are parsed with
//! `httparse` directly. pingora's connection pool spawned a task per request to watch the
//! connection it was given back, and its HTTP/1 client built a header map with a case map
//! for every answer: together about an eighth of a proxied request's instructions
//! (callgrind). A connection the server closed while idle is found when it is taken (its
//! socket reads as closed) or by the pool's upkeep, and is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inference::{DataType, ModelMetadata, TensorSpec};
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// `/v2/models/{model}/versions/{version}`, and the same with `/infer`.
    model_path: String,
    infer_path: String,
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
        let model_path = format!("/v2/models/{}/versions/{}", spec.model, spec.version);
        let pool = RemotePool {
            infer_path: format!("{model_path}/infer"),
            model_path,
            name: name.to_string(),
            spec,
            lb,
            endpoints,
            next: AtomicUsize::new(0),
            metadata: ArcSwapOption::empty(),
            last_check: Mutex::new(None),
        };
        pool.refresh_readiness();
        Ok(pool)
    }

    /// A healthy endpoint, round-robin; `avoid` skips the one that just failed to connect.
    fn pick(&self, avoid: Option<SocketAddr>) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| Some(e.addr) != avoid && e.ready.load(Ordering::Relaxed))
    }

    /// The address of a healthy endpoint, if there is one.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        self.pick(avoid).map(|e| e.addr)
    }

    /// Whether any endpoint passes its health check; unlike [`Self::select`], it does not
    /// move the round-robin on (a check before each request would skip every other endpoint).
    pub fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.ready.load(Ordering::Relaxed))
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.ready.load(Ordering::Relaxed))
            .count()
    }

    /// Copies each endpoint's readiness from the load balancer, which changes it only when a
    /// health check runs. (Asking the load balancer hashes the backend twice: a tenth of a
    /// request's own work in the gateway, twice per request.)
    fn refresh_readiness(&self) {
        let backends = self.lb.backends();
        for e in &self.endpoints {
            e.ready.store(backends.ready(&e.backend), Ordering::Relaxed);
        }
    }

    /// The upstream path for a protocol path's tail (`/infer`, `/ready`, ``).
    pub fn upstream_path(&self, tail: &str) -> String {
        format!("{}{tail}", self.model_path)
    }

    /// The upstream's inference path (every request's: kept rather than formatted each time).
    pub fn infer_path(&self) -> &str {
        &self.infer_path
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
        self.refresh_readiness();
        for e in &self.endpoints {
            e.idle.purge();
        }
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
    /// Whether its last health check passed (true until the first one says otherwise).
    ready: AtomicBool,
    /// pingora's peer, with this pool's timeouts.
    peer: HttpPeer,
    /// Kept-alive connections to this endpoint.
    idle: IdleConnections,
    /// The `host` header's value.
    host: String,
}

/// Most kept-alive connections an endpoint keeps (more than the gateway's concurrency to one
/// endpoint ever needs on the benchmarks; beyond it a connection is closed once used).
const MAX_IDLE: usize = 512;

/// An endpoint's idle connections, the most recently used last.
struct IdleConnections {
    list: Mutex<Vec<(Stream, Instant)>>,
    /// Connections idle for longer are closed.
    timeout: Duration,
}

impl IdleConnections {
    /// A connection still open, the most recently used first.
    fn take(&self) -> Option<Stream> {
        loop {
            let (mut stream, since) = self.list.lock().pop()?;
            if since.elapsed() < self.timeout && still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps a connection whose answer was read whole. (Whether the server has closed it
    /// since is checked when it is taken, and by [`Self::purge`].)
    fn put(&self, stream: Stream) {
        let mut list = self.list.lock();
        if list.len() < MAX_IDLE {
            list.push((stream, Instant::now()));
        }
    }

    /// Closes connections idle too long, or that the server closed.
    fn purge(&self) {
        let mut list = self.list.lock();
        list.retain_mut(|(stream, since)| since.elapsed() < self.timeout && still_open(stream));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.lock().len()
    }
}

/// Whether an idle connection can carry a request: nothing to read, not even its end. A
/// server never speaks first on an idle HTTP/1 connection, so data means a broken exchange.
/// (The readiness is the runtime's: no system call is made unless the socket has news.)
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        .is_pending()
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
            ready: AtomicBool::new(true),
            idle: IdleConnections {
                list: Mutex::new(Vec::new()),
                timeout: peer.options.idle_timeout.unwrap_or(Duration::from_secs(60)),
            },
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
    let (mut stream, reused) = match endpoint.idle.take() {
        Some(stream) => (stream, true),
        // Connecting (a TLS client handshake included) is a future of about 8 KB: boxed, so
        // that every request's future neither carries nor copies it for the rare new connection.
        None => (
            Box::pin(connector.new_stream(&endpoint.peer))
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
    match fast_timeout(deadline, write).await {
        Err(_) => return Err(Failure::TimedOut),
        // A pooled connection the server had closed: nothing was delivered.
        Ok(Err(e)) if reused => return Err(Failure::NotDelivered(e.to_string())),
        Ok(Err(e)) => return Err(Failure::Failed(e.to_string())),
        Ok(Ok(())) => {}
    }
    let answer = match fast_timeout(deadline, read_answer(&mut stream, out.max_response_bytes)).await {
        Err(_) => return Err(Failure::TimedOut),
        Ok(Err(e)) => return Err(Failure::Failed(e)),
        Ok(Ok(answer)) => answer,
    };
    if answer.keep_alive {
        endpoint.idle.put(stream);
    }
    Ok(Inbound {
        status: answer.status,
        content_type: answer.content_type,
        header_length: answer.header_length,
        body: answer.body,
        endpoint: endpoint.addr,
    })
}

/// Largest answer header accepted from an upstream.
const MAX_ANSWER_HEADER: usize = 64 * 1024;
/// Most header fields an answer may have.
const MAX_ANSWER_FIELDS: usize = 64;

/// An upstream's answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    header_length: Option<String>,
    body: Bytes,
    /// Whether the connection can carry another request.
    keep_alive: bool,
}

/// How an answer's body is delimited (RFC 9112, section 6.3).
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// Reads one HTTP/1 answer: its header (interim `1xx` answers skipped) and its whole body,
/// framed by `content-length`, chunked, or by the end of the connection.
async fn read_answer(stream: &mut Stream, max_body: usize) -> Result<Answer, String> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the upstream closed the connection before answering".into());
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
        let mut head = httparse::Response::new(&mut fields);
        let parsed = head
            .parse(&buf)
            .map_err(|e| format!("invalid answer header from the upstream: {e}"))?;
        let httparse::Status::Complete(header_len) = parsed else {
            if buf.len() > MAX_ANSWER_HEADER {
                return Err("the upstream's answer header is too large".into());
            }
            continue;
        };
        let status = head.code.unwrap_or(0);
        if (100..200).contains(&status) {
            // `100 Continue` and other interim answers: the final one follows.
            buf.advance(header_len);
            if !buf.is_empty() {
                let mut rest = buf.split();
                std::mem::swap(&mut buf, &mut rest);
            }
            continue;
        }
        let mut content_type = None;
        let mut header_length = None;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = head.version == Some(0);
        for field in head.headers.iter() {
            let value = || {
                std::str::from_utf8(field.value)
                    .map(|v| v.trim().to_string())
                    .ok()
            };
            let name = field.name;
            // Lengths compared first: most fields are none of these.
            let is = |wanted: &str| name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted);
            if is("content-length") {
                let n = std::str::from_utf8(field.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or("the upstream sent an invalid content-length")?;
                if length.is_some_and(|m| m != n) {
                    return Err("the upstream sent conflicting content-lengths".into());
                }
                length = Some(n);
            } else if is("transfer-encoding") {
                chunked = field
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !chunked {
                    return Err("the upstream sent a transfer-encoding other than chunked".into());
                }
            } else if is("connection") {
                let v = field.value.trim_ascii();
                if v.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if v.eq_ignore_ascii_case(b"keep-alive") && head.version == Some(0) {
                    close = false;
                }
            } else if is("content-type") {
                content_type = value();
            } else if is(inference::protocol::HEADER_LENGTH) {
                header_length = value();
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            // Both framings at once: chunked wins, and the connection is not trusted again.
            close |= length.is_some();
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            close = true;
            Framing::Close
        };
        buf.advance(header_len);
        let body = read_body(stream, buf, framing, max_body).await?;
        return Ok(Answer {
            status,
            content_type,
            header_length,
            body,
            keep_alive: !close,
        });
    }
}

/// Reads more of an answer that is not complete yet: the connection's end is an error.
async fn more(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), String> {
    match stream.read_buf(buf).await {
        Ok(0) => Err("the upstream closed the connection mid-answer".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The body after the header; `buf` holds what was read past the header already.
async fn read_body(
    stream: &mut Stream,
    mut buf: BytesMut,
    framing: Framing,
    max: usize,
) -> Result<Bytes, String> {
    let too_large = || "the upstream's answer is over the size limit".to_string();
    match framing {
        Framing::Length(n) => {
            if n > max {
                return Err(too_large());
            }
            buf.reserve(n.saturating_sub(buf.len()));
            while buf.len() < n {
                more(stream, &mut buf).await?;
            }
            if buf.len() > n {
                return Err("the upstream sent more than its content-length".into());
            }
            Ok(buf.freeze())
        }
        Framing::Close => loop {
            if buf.len() > max {
                return Err(too_large());
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Ok(buf.freeze()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        },
        Framing::Chunked => {
            let mut body = BytesMut::new();
            loop {
                let (skip, size) = loop {
                    match httparse::parse_chunk_size(&buf) {
                        Ok(httparse::Status::Complete((skip, size))) => break (skip, size),
                        Ok(httparse::Status::Partial) if buf.len() < 1024 => {
                            more(stream, &mut buf).await?;
                        }
                        _ => return Err("the upstream sent an invalid chunk".into()),
                    }
                };
                buf.advance(skip);
                let size = usize::try_from(size).map_err(|_| too_large())?;
                if size == 0 {
                    // Trailer fields, if any, up to the empty line: read and dropped.
                    loop {
                        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                            let line_empty = end == 0;
                            buf.advance(end + 2);
                            if line_empty {
                                break;
                            }
                        } else if buf.len() > MAX_ANSWER_HEADER {
                            return Err("the upstream's trailer is too large".into());
                        } else {
                            more(stream, &mut buf).await?;
                        }
                    }
                    if !buf.is_empty() {
                        return Err("the upstream sent more than its chunked body".into());
                    }
                    return Ok(body.freeze());
                }
                if body.len() + size > max {
                    return Err(too_large());
                }
                while buf.len() < size + 2 {
                    more(stream, &mut buf).await?;
                }
                body.extend_from_slice(&buf[..size]);
                if &buf[size..size + 2] != b"\r\n" {
                    return Err("the upstream sent an invalid chunk".into());
                }
                buf.advance(size + 2);
            }
        }
    }
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
    if fields
        .iter()
        .any(|f| memchr::memchr2(b'\r', b'\n', f.as_bytes()).is_some())
    {
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
}
