//! `inference-server`: a model repository served over the Open Inference Protocol with hyper.
//!
//! Every answer, success or error, carries `x-request-id`; every error is `{"error": "..."}`
//! with the status from [`InferError::status`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::InferError;
use crate::model::ModelMetadata;
use crate::protocol::json::{ModelMetadataJson, TensorMetadataJson};
use crate::protocol::{self, Endpoint, ModelRef};
use crate::repository::ModelRepository;

/// Requests over this size are refused with 413 before they are read. 4 MiB holds a batch of
/// tens of thousands of rows of the bundled models in JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// How long a shutdown waits for requests in flight before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct ServerOptions {
    pub max_body_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The server's state: the models, and the limits it enforces.
pub struct InferenceServer {
    repo: Arc<ModelRepository>,
    options: ServerOptions,
}

type HttpResponse = Response<Full<Bytes>>;

impl InferenceServer {
    pub fn new(repo: Arc<ModelRepository>, options: ServerOptions) -> Arc<InferenceServer> {
        Arc::new(InferenceServer { repo, options })
    }

    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.repo
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown` resolves,
    /// then lets requests in flight finish (up to 10 s).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
            // Responses are small and written whole: Nagle would only add latency.
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "connection ended with an error: {e}");
                }
            });
        }
        tracing::info!("shutting down: waiting for requests in flight");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; closing them");
            }
        }
    }

    /// Answers one request. Never fails: every error becomes a JSON error response.
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
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
            Endpoint::Server => Ok(json_response(StatusCode::OK, server_metadata())),
            Endpoint::Model(m) => {
                let pool = self.pool(m)?;
                Ok(json_response(
                    StatusCode::OK,
                    model_metadata(pool.metadata(), self.repo.versions(m.model)),
                ))
            }
            Endpoint::ModelReady(m) => {
                let pool = self.pool(m)?;
                let meta = pool.metadata();
                let body = json!({"name": meta.name, "version": meta.version, "ready": true});
                Ok(json_response(StatusCode::OK, body.to_string()))
            }
            Endpoint::ModelConfig(m) => {
                let pool = self.pool(m)?;
                Ok(json_response(
                    StatusCode::OK,
                    model_config(pool.metadata(), pool.config().max_batch),
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
        let body = read_body(req, self.options.max_body_bytes).await?;
        let request = protocol::decode_request(&body, header_length.as_deref())?;
        let selected = protocol::select_outputs(pool.metadata(), &request)?;
        let id = request.id.clone().unwrap_or_else(|| request_id.to_string());
        let outputs = pool.infer(request.inputs).await?;
        let meta = pool.metadata();
        let encoded = protocol::encode_response(meta, &meta.name, &meta.version, &id, &selected, &outputs);
        Ok(encoded_response(encoded))
    }
}

/// Reads the whole body, refusing (413) one larger than `limit` — by its declared length
/// before reading anything, or as soon as the bytes read pass the limit.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, InferError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(InferError::PayloadTooLarge { limit });
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(InferError::PayloadTooLarge { limit })
        }
        Err(e) => Err(InferError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// A random 128-bit id, hex: unique enough to find one request in the logs.
pub fn new_request_id() -> String {
    // 32 lower-case hex digits, as `format!("{:032x}")` writes them, at a third of its cost
    // (every request without an id of its own makes one).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for byte in rand::random::<u128>().to_be_bytes() {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 15)]));
    }
    id
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
    let protocol::EncodedResponse { body, json_len } = encoded;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    match json_len {
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Some(n) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(protocol::HEADER_LENGTH, HeaderValue::from(n));
        }
    }
    response
}

pub fn server_metadata() -> String {
    json!({
        "name": "inference-server",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration"],
    })
    .to_string()
}

pub fn model_metadata(meta: &ModelMetadata, versions: Vec<String>) -> String {
    let body = ModelMetadataJson {
        name: &meta.name,
        versions,
        platform: meta.platform,
        inputs: tensor_metadata(&meta.inputs),
        outputs: tensor_metadata(&meta.outputs),
    };
    serde_json::to_string(&body).expect("metadata always serializes")
}

fn tensor_metadata(specs: &[crate::model::TensorSpec]) -> Vec<TensorMetadataJson<'_>> {
    specs
        .iter()
        .map(|s| TensorMetadataJson {
            name: &s.name,
            datatype: s.datatype.as_str(),
            shape: &s.shape,
        })
        .collect()
}

/// A Triton-style model configuration: `max_batch_size` > 0 means the first dimension is the
/// batch and `dims` leave it out, as Triton clients expect.
pub fn model_config(meta: &ModelMetadata, max_batch: usize) -> String {
    let max_batch_size = if meta.batchable { max_batch } else { 0 };
    let tensors =
        |specs: &[crate::model::TensorSpec]| -> Vec<serde_json::Value> {
            specs
            .iter()
            .map(|s| {
                let dims = if meta.batchable { &s.shape[1..] } else { &s.shape[..] };
                json!({"name": s.name, "data_type": format!("TYPE_{}", s.datatype.as_str()), "dims": dims})
            })
            .collect()
        };
    json!({
        "name": meta.name,
        "platform": meta.platform,
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": tensors(&meta.inputs),
        "output": tensors(&meta.outputs),
    })
    .to_string()
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
        let ids: Vec<String> = (0..200).map(|_| super::new_request_id()).collect();
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
