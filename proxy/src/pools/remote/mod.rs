//! Remote pools: Open Inference Protocol servers (our `inference-server`, or Triton). `grpc`
//! pools speak its gRPC form ([`grpc`]: one HTTP/2 connection per endpoint, `ModelReady` as
//! the health check) with the endpoints, round-robin, timeouts and retry rule below. `http`
//! pools speak REST through pingora's transport connector (connect timeouts, TCP options, TLS
//! when asked), with an HTTP health check per endpoint (`GET` its path, 200 passes); requests
//! go round-robin over the endpoints that pass.
//!
//! Endpoints given as host names are looked up again every `dns_refresh_ms` ([`resolve`]):
//! every address a name has is an endpoint (a Kubernetes headless Service spreads the load
//! over its pods). An address that appears is health-checked before it takes requests; one
//! that disappears takes no new ones, while those in flight on it finish (they hold it).
//! A failed lookup keeps the addresses the name had.
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

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inference::ModelMetadata;
use inference::protocol::metadata::ModelMetadataAnswer;
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::errors::GatewayError;

use crate::config::{HttpSpec, RemoteProtocol};

mod grpc;
mod resolve;
mod wire;
use wire::{read_answer, request_wire};

pub struct RemotePool {
    pub name: String,
    pub spec: HttpSpec,
    /// The endpoints now: each address of each entry of `spec.endpoints`, with its health.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The addresses each entry of `spec.endpoints` had at its last successful lookup.
    resolved: Mutex<resolve::Known>,
    /// Round-robin position.
    next: AtomicUsize,
    /// The upstream's model signature, fetched once an endpoint answers; the simple JSON
    /// endpoint needs it to build requests.
    metadata: ArcSwapOption<ModelMetadata>,
    last_check: Mutex<Option<Instant>>,
    /// `http` pools' health checks (the pool's connect timeout).
    checker: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    /// `/v2/models/{model}/versions/{version}`, and the same with `/infer`.
    model_path: String,
    infer_path: String,
}

impl RemotePool {
    /// Names are looked up here, blocking (building a config runs off the request path); one
    /// that does not resolve yet has no endpoint until it does.
    pub fn new(name: &str, spec: HttpSpec) -> RemotePool {
        let known = resolve::Known::now(name, &spec.endpoints);
        let endpoints = known
            .addresses()
            .into_iter()
            .map(|addr| Arc::new(Endpoint::new(addr, &spec, true)))
            .collect();
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_nodelay(true);
        let model_path = format!("/v2/models/{}/versions/{}", spec.model, spec.version);
        RemotePool {
            infer_path: format!("{model_path}/infer"),
            model_path,
            name: name.to_string(),
            // A new connection per check, as pingora's check made: it proves the server still
            // accepts connections, and none lingers to an address that has left.
            checker: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
            spec,
            endpoints: ArcSwap::from_pointee(endpoints),
            resolved: Mutex::new(known),
            next: AtomicUsize::new(0),
            metadata: ArcSwapOption::empty(),
            last_check: Mutex::new(None),
        }
    }

    /// A healthy endpoint, round-robin; `avoid` skips the one that just failed to connect.
    fn pick(&self, avoid: Option<SocketAddr>) -> Option<Arc<Endpoint>> {
        let list = self.endpoints.load();
        let n = list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &list[(start + i) % n])
            .find(|e| Some(e.addr) != avoid && e.ready.load(Ordering::Relaxed))
            .cloned()
    }

    /// A healthy endpoint for an attempt: another than `avoid` if there is one, else any.
    fn pick_for_attempt(&self, avoid: Option<SocketAddr>) -> Result<Arc<Endpoint>, GatewayError> {
        self.pick(avoid)
            .or_else(|| self.pick(None))
            .ok_or_else(|| GatewayError::NoHealthyUpstream {
                pool: self.name.clone(),
            })
    }

    /// The address of a healthy endpoint, if there is one.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        self.pick(avoid).map(|e| e.addr)
    }

    /// Whether any endpoint passes its health check; unlike [`Self::select`], it does not
    /// move the round-robin on (a check before each request would skip every other endpoint).
    pub fn any_healthy(&self) -> bool {
        self.endpoints
            .load()
            .iter()
            .any(|e| e.ready.load(Ordering::Relaxed))
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.endpoints
            .load()
            .iter()
            .filter(|e| e.ready.load(Ordering::Relaxed))
            .count()
    }

    /// The entries of `endpoints` that did not resolve at their last lookup, and why.
    pub fn unresolved(&self) -> Vec<(usize, String, String)> {
        self.resolved.lock().unresolved()
    }

    /// Every endpoint's address and whether it passes its health check, in order.
    pub fn addresses(&self) -> Vec<(SocketAddr, bool)> {
        self.endpoints
            .load()
            .iter()
            .map(|e| (e.addr, e.ready.load(Ordering::Relaxed)))
            .collect()
    }

    /// An endpoint's readiness, logged when it changes.
    fn set_ready(&self, e: &Endpoint, ready: bool, why: impl FnOnce() -> String) {
        if e.ready.swap(ready, Ordering::Relaxed) != ready {
            if ready {
                tracing::info!(pool = %self.name, endpoint = %e.addr, "endpoint is healthy");
            } else {
                tracing::warn!(pool = %self.name, endpoint = %e.addr, "endpoint is unhealthy: {}", why());
            }
        }
    }

    /// One health check of every endpoint at once: `ModelReady` for a `grpc` pool, `GET` of
    /// the health path for an `http` one (200 passes).
    async fn check_all(&self) {
        let list = self.endpoints.load_full();
        let mut checks = tokio::task::JoinSet::new();
        for (i, e) in list.iter().enumerate() {
            let (e, spec, checker) = (e.clone(), self.spec.clone(), self.checker.clone());
            checks.spawn(async move {
                let t = health_timeout(&spec);
                let result = match spec.protocol {
                    RemoteProtocol::Grpc => {
                        grpc::model_ready(&e.channel, spec.connect_timeout, t, &spec.model, spec.version)
                            .await
                    }
                    RemoteProtocol::Http => check_http(&checker, e.addr, &spec.health_path, t).await,
                };
                (i, result)
            });
        }
        while let Some(done) = checks.join_next().await {
            if let Ok((i, result)) = done {
                let failure = result.err();
                self.set_ready(&list[i], failure.is_none(), || failure.unwrap_or_default());
            }
        }
    }

    /// Looks the names up again; on a change, the new endpoint list (kept endpoints keep
    /// their health and connections; new ones wait for a health check). Whether it changed.
    async fn refresh_names(&self) -> bool {
        let fresh = resolve::lookup(&self.spec.endpoints).await;
        let addresses = {
            let mut known = self.resolved.lock();
            if !known.update(&self.name, fresh) {
                return false;
            }
            known.addresses()
        };
        let old = self.endpoints.load_full();
        let list: Vec<Arc<Endpoint>> = addresses
            .iter()
            .map(|&addr| match old.iter().find(|e| e.addr == addr) {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint::new(addr, &self.spec, false)),
            })
            .collect();
        let added: Vec<SocketAddr> = addresses
            .iter()
            .filter(|a| !old.iter().any(|e| e.addr == **a))
            .copied()
            .collect();
        let removed: Vec<SocketAddr> = old
            .iter()
            .map(|e| e.addr)
            .filter(|a| !addresses.contains(a))
            .collect();
        tracing::info!(pool = %self.name, ?added, ?removed, "endpoints follow DNS: {} now", list.len());
        self.endpoints.store(Arc::new(list));
        true
    }

    pub fn is_grpc(&self) -> bool {
        self.spec.protocol == RemoteProtocol::Grpc
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
        let names_due = self.resolved.lock().due(self.spec.dns_refresh) || force;
        // A changed list is checked at once: new addresses wait for it before taking requests.
        let changed = names_due && self.refresh_names().await;
        if !due && !changed {
            return;
        }
        self.check_all().await;
        for e in self.endpoints.load().iter() {
            e.idle.purge();
        }
        if self.metadata.load().is_none()
            && let Some(e) = self.pick(None)
        {
            let addr = e.addr;
            let fetched = if self.is_grpc() {
                let spec = &self.spec;
                grpc::metadata(
                    &e.channel,
                    spec.connect_timeout,
                    spec.timeout,
                    &spec.model,
                    spec.version,
                )
                .await
            } else {
                fetch_metadata(addr, &self.upstream_path(""), self.spec.timeout).await
            };
            match fetched {
                Ok(meta) => self.metadata.store(Some(Arc::new(meta))),
                Err(e) => tracing::warn!(pool = %self.name, "cannot fetch model metadata from {addr}: {e}"),
            }
        }
    }
}

/// One upstream endpoint, with what every request to it reuses.
struct Endpoint {
    addr: SocketAddr,
    /// Whether its last health check passed (the config's addresses: true until the first
    /// one says otherwise; addresses a lookup adds later: false until one passes).
    ready: AtomicBool,
    /// pingora's peer, with this pool's timeouts.
    peer: HttpPeer,
    /// Kept-alive connections to this endpoint.
    idle: IdleConnections,
    /// The `host` header's value.
    host: String,
    /// A `grpc` pool's connection to it.
    channel: Arc<grpc::Channel>,
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
    fn new(addr: SocketAddr, spec: &HttpSpec, ready: bool) -> Endpoint {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(spec.connect_timeout);
        peer.options.read_timeout = Some(spec.timeout);
        peer.options.write_timeout = Some(spec.timeout);
        // Kept-alive upstream connections are reused for this long when idle.
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Endpoint {
            addr,
            ready: AtomicBool::new(ready),
            idle: IdleConnections {
                list: Mutex::new(Vec::new()),
                timeout: peer.options.idle_timeout.unwrap_or(Duration::from_secs(60)),
            },
            peer,
            host: addr.to_string(),
            channel: Arc::new(grpc::Channel::new(addr)),
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
        let endpoint = pool.pick_for_attempt(avoid)?;
        let addr = endpoint.addr;
        match exchange(pool, connector, &endpoint, out).await {
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

/// A health check's wait: the pool's timeout, at most 2 s (a check that waits longer only
/// delays the next one).
fn health_timeout(spec: &HttpSpec) -> Duration {
    spec.timeout.min(Duration::from_secs(2))
}

/// `ModelInfer` on a healthy endpoint of a `grpc` pool, under the same rules as
/// [`forward`]: at most one retry, on another endpoint, only when the call cannot have
/// reached a server. `deadline` is a gRPC client's (when to give up, and the `grpc-timeout`
/// it set): it bounds the call when it comes before the pool's timeout. The upstream's
/// refusals keep their code and message.
pub async fn infer_grpc(
    pool: &RemotePool,
    request: &inference::protocol::grpc::pb::ModelInferRequest,
    request_id: &str,
    deadline: Option<(Instant, Duration)>,
    max_answer: usize,
) -> Result<(inference::protocol::grpc::pb::ModelInferResponse, SocketAddr), GatewayError> {
    let left = deadline.map(|(at, limit)| (at.saturating_duration_since(Instant::now()), limit));
    let client_limit = left.filter(|(d, _)| *d < pool.spec.timeout);
    let timeout = client_limit.map_or(pool.spec.timeout, |(d, _)| d);
    let client_limit = client_limit.map(|(_, limit)| limit);
    let mut avoid = None;
    for attempt in 0..2 {
        let endpoint = pool.pick_for_attempt(avoid)?;
        let addr = endpoint.addr;
        let result = grpc::infer(
            &endpoint.channel,
            pool.spec.connect_timeout,
            timeout,
            request,
            request_id,
            max_answer,
        )
        .await;
        match result {
            Ok(Ok(answer)) => return Ok((answer, addr)),
            // The deadline sent with the call passed at the upstream first: the same timeout.
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(timed_out(pool, client_limit));
            }
            Ok(Err(status)) => {
                let http = inference::protocol::grpc::http_status_of(status.code());
                let message = if http >= 500 {
                    format!(
                        "upstream of pool {} answered {:?}: {}",
                        pool.name,
                        status.code(),
                        status.message()
                    )
                } else {
                    status.message().to_string()
                };
                return Err(GatewayError::Upstream {
                    status: http,
                    message,
                });
            }
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
            Err(Failure::TimedOut) => return Err(timed_out(pool, client_limit)),
        }
    }
    unreachable!("the second attempt always returns")
}

/// The pool's timeout (504), or the client's deadline when it was the shorter.
fn timed_out(pool: &RemotePool, client_limit: Option<Duration>) -> GatewayError {
    match client_limit {
        Some(limit) => inference::InferError::Deadline {
            limit_ms: limit.as_millis() as u64,
        }
        .into(),
        None => GatewayError::GatewayTimeout {
            pool: pool.name.clone(),
            timeout_ms: pool.spec.timeout.as_millis(),
        },
    }
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

/// An `http` pool's health check of one endpoint: `GET path` answers 200 within `timeout`.
async fn check_http(
    checker: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let request = hyper::Request::get(format!("http://{addr}{path}"))
        .header("host", "localhost")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = checker
            .request(request)
            .await
            .map_err(|e| match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            })?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status != 200 {
            return Err(format!("{path} answered {}", status.as_u16()));
        }
        Ok(())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{path} timed out after {} ms", timeout.as_millis()))?
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
    let answer: ModelMetadataAnswer = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    answer.into_model(path.rsplit('/').next().unwrap_or_default(), "remote")
}

#[cfg(test)]
mod tests;
