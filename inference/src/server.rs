//! `inference-server`: a model repository served over the Open Inference Protocol with hyper.
//!
//! Every answer, success or error, carries `x-request-id`; every error is `{"error": "..."}`
//! with the status from [`InferError::status`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::error::InferError;
use crate::protocol::body::BodyReader;
use crate::protocol::metadata::{ModelConfig, ModelMetadataAnswer, ModelReady, ServerMetadata, to_json};
use crate::protocol::request_id::request_id;
use crate::protocol::{self, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_BODY_BYTES, Endpoint, ModelRef};
use crate::repository::ModelRepository;

/// How long a shutdown waits for requests in flight before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The server's limits. Each bounds what one client can hold (time, memory, a connection);
/// `docs/limits.md` gives the reasons and the gateway's equivalents.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Larger bodies: 413.
    pub max_body_bytes: usize,
    /// Larger request heads (request line and headers): 431. hyper's read buffer is the limit,
    /// and it cannot be set below 8 KiB.
    pub max_header_bytes: usize,
    /// A request's head must arrive within this time of the connection opening or of the
    /// previous answer; otherwise the connection closes. hyper times the wait for the next
    /// request and the head itself as one, so this also closes idle HTTP/1.1 connections.
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this time (408 otherwise).
    pub body_timeout: Duration,
    /// A connection that moves no byte for this long is closed (HTTP/2: GOAWAY first).
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Answers larger than this are refused (413) before they are encoded.
    pub max_answer_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// The server's state: the models, and the limits it enforces.
pub struct InferenceServer {
    repo: Arc<ModelRepository>,
    options: ServerOptions,
}

type HttpResponse = Response<Full<Bytes>>;

/// Notes when a connection last moved a byte, for the idle timeout.
struct Watched<T> {
    inner: T,
    born: Instant,
    /// Milliseconds after `born` of the last read or write that moved bytes.
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.last
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl InferenceServer {
    pub fn new(repo: Arc<ModelRepository>, options: ServerOptions) -> Arc<InferenceServer> {
        Arc::new(InferenceServer { repo, options })
    }

    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.repo
    }

    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown` resolves,
    /// then lets requests in flight finish (up to 10 s).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let limits = &self.options;
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(100);
        let builder = Arc::new(builder);
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let refused = AtomicU64::new(0);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Over the connection limit: closed at once, before a byte is read.
                if refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::warn!(
                        max = limits.max_connections,
                        refused = refused.load(Ordering::Relaxed),
                        "connection limit reached: new connections are closed at once"
                    );
                }
                drop(stream);
                continue;
            };
            // Responses are small and written whole: Nagle would only add latency.
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let last = Arc::new(AtomicU64::new(0));
            let io = Watched {
                inner: stream,
                born: Instant::now(),
                last: last.clone(),
            };
            let builder = builder.clone();
            let idle = limits.idle_timeout;
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let born = io.born;
                let conn = builder.serve_connection(TokioIo::new(io), service);
                tokio::pin!(conn);
                let mut closing = false;
                loop {
                    let quiet_for = born
                        .elapsed()
                        .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                    let check_in = idle.saturating_sub(quiet_for).max(Duration::from_millis(10));
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, "connection ended with an error: {e}");
                            }
                            return;
                        }
                        changed = stopping.changed(), if !closing => {
                            if changed.is_err() || *stopping.borrow() {
                                closing = true;
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                        () = tokio::time::sleep(check_in), if !closing => {
                            let quiet = born.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                            if quiet >= idle {
                                tracing::debug!(%peer, "closing a connection idle for {quiet:?}");
                                closing = true;
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                    }
                }
            });
        }
        tracing::info!("shutting down: waiting for requests in flight");
        let _ = stop.send(true);
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        tokio::select! {
            _ = slots.acquire_many(all) => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; closing them");
            }
        }
    }

    /// Answers one request. Never fails: every error becomes a JSON error response.
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let request_id = request_id(req.headers().get("x-request-id").map(|v| v.as_bytes()));
        let mut response = match self.route(req, &request_id).await {
            Ok(response) => response,
            Err(e) => error_response(&e),
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }

    async fn route(&self, req: Request<Incoming>, request_id: &str) -> Result<HttpResponse, InferError> {
        let path = req.uri().path().to_string();
        let Some(endpoint) = Endpoint::parse(&path) else {
            return Err(InferError::NotFound(format!("no route for {path}")));
        };
        if req.method().as_str() != endpoint.method() {
            return Err(InferError::MethodNotAllowed {
                method: req.method().to_string(),
                path: path.clone(),
                allowed: endpoint.method(),
            });
        }
        match endpoint {
            Endpoint::Live => Ok(json_response(StatusCode::OK, json!({"live": true}).to_string())),
            Endpoint::Ready => {
                let ready = !self.repo.is_empty();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Ok(json_response(status, json!({"ready": ready}).to_string()))
            }
            Endpoint::Server => Ok(json_response(
                StatusCode::OK,
                to_json(&ServerMetadata::of("inference-server")),
            )),
            Endpoint::Model(m) => {
                let pool = self.pool(m)?;
                Ok(json_response(
                    StatusCode::OK,
                    to_json(&ModelMetadataAnswer::of(
                        pool.metadata(),
                        &pool.metadata().name,
                        self.repo.versions(m.model),
                    )),
                ))
            }
            Endpoint::ModelReady(m) => {
                let pool = self.pool(m)?;
                let meta = pool.metadata();
                let body = ModelReady {
                    name: meta.name.clone(),
                    version: meta.version.clone(),
                    ready: true,
                };
                Ok(json_response(StatusCode::OK, to_json(&body)))
            }
            Endpoint::ModelConfig(m) => {
                let pool = self.pool(m)?;
                Ok(json_response(
                    StatusCode::OK,
                    to_json(&ModelConfig::of(pool.metadata(), pool.config().max_batch)),
                ))
            }
            Endpoint::Infer(m) => self.infer(m, req, request_id).await,
        }
    }

    fn pool(&self, m: ModelRef<'_>) -> Result<&Arc<crate::pool::Pool>, InferError> {
        self.repo.get(m.model, m.version)
    }

    async fn infer(
        &self,
        m: ModelRef<'_>,
        req: Request<Incoming>,
        request_id: &str,
    ) -> Result<HttpResponse, InferError> {
        let pool = self.pool(m)?.clone();
        let header_length = req
            .headers()
            .get(protocol::HEADER_LENGTH)
            .map(|v| v.to_str().unwrap_or("?").to_string());
        let body = read_body(req, self.options.max_body_bytes, self.options.body_timeout).await?;
        let request = protocol::decode_request(&body, header_length.as_deref())?;
        let selected = protocol::select_outputs(pool.metadata(), &request)?;
        let id = request.id.clone().unwrap_or_else(|| request_id.to_string());
        let outputs = pool.infer(request.inputs).await?;
        let meta = pool.metadata();
        let encoded = protocol::encode_response(
            meta,
            &meta.name,
            &meta.version,
            &id,
            &selected,
            &outputs,
            self.options.max_answer_bytes,
        )?;
        Ok(encoded_response(encoded))
    }
}

/// Reads the whole body under the protocol's rules ([`protocol::body::BodyReader`]): 413 for
/// one larger than `limit` (by its declared length, or as soon as the bytes read pass it), 408
/// for one that has not arrived within `deadline`.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, InferError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = BodyReader::new(limit, declared)?;
    let mut incoming = req.into_body();
    let read = async {
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame.map_err(BodyReader::failed)?.into_data() {
                body.push(data)?;
            }
        }
        Ok::<(), InferError>(())
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| BodyReader::timed_out(deadline))??;
    Ok(body.finish())
}

pub fn json_response(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The one place an error becomes a response: status, `{"error"}` body, and the headers
/// the status calls for (`Retry-After` on 503, `Allow` on 405).
pub fn error_response(e: &InferError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, e.body());
    if let Some(after) = e.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    if let InferError::MethodNotAllowed { allowed, .. } = e {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    response
}

fn encoded_response(encoded: protocol::EncodedResponse) -> HttpResponse {
    let content_type = encoded.content_type();
    let json_len = encoded.json_len;
    let mut response = Response::new(Full::new(Bytes::from(encoded.body)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(n) = json_len {
        headers.insert(protocol::HEADER_LENGTH, HeaderValue::from(n));
    }
    response
}

/// Binds `addr`, with a message that says what to do when the port is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: the address is in use (another server running? pick another with --listen)")
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_32_lower_case_hex_digits() {
        let ids: Vec<String> = (0..200)
            .map(|_| crate::protocol::request_id::new_request_id())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            let value = u128::from_str_radix(id, 16).unwrap();
            assert_eq!(&format!("{value:032x}"), id);
        }
        // Random: every hex digit shows up, and no id repeats.
        assert!(
            b"0123456789abcdef"
                .iter()
                .all(|d| ids.iter().any(|id| id.as_bytes().contains(d)))
        );
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }
}
