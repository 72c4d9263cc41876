//! `grpc` pools: the endpoints, round-robin, health checks, timeouts and retry rule of `http`
//! pools ([`super`]), spoken to in `inference.GRPCInferenceService` (Triton's port 8001,
//! `inference-server --grpc-listen`): `ModelInfer` with raw tensors, `ModelReady` for the
//! pool's model and version as the health check, `ModelMetadata` for the signature.
//!
//! Each endpoint keeps one HTTP/2 connection (hyper's client), which carries every call to
//! it at once: gRPC servers expect few long-lived connections with many streams, not a
//! connection per call in flight. A call is retried on another endpoint only when it cannot
//! have reached a server: the connect failed, or the kept connection had closed before the
//! call was written (hyper hands the request back). Once written it is never sent again.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use inference::ModelMetadata;
use inference::protocol::grpc::{self as codec, pb};
use parking_lot::Mutex;
use prost::Message;

use super::Failure;

const SERVICE: &str = "/inference.GRPCInferenceService/";

/// One endpoint's connection, made when first needed and again after it closes.
pub(super) struct Channel {
    addr: SocketAddr,
    kept: Mutex<Option<SendRequest<Full<Bytes>>>>,
    /// One connect at a time: the calls that find no connection wait for the same one.
    connecting: tokio::sync::Mutex<()>,
}

impl Channel {
    pub(super) fn new(addr: SocketAddr) -> Channel {
        Channel {
            addr,
            kept: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn live(&self) -> Option<SendRequest<Full<Bytes>>> {
        let kept = self.kept.lock();
        kept.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The kept connection if it is open, else a new one.
    async fn sender(&self, connect_timeout: Duration) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let s = connect(self.addr, connect_timeout).await?;
        *self.kept.lock() = Some(s.clone());
        Ok(s)
    }
}

/// A plaintext HTTP/2 connection (gRPC servers inside a cluster listen without TLS, as the
/// gateway's `http` pools reach theirs).
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<Full<Bytes>>, String> {
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => e.to_string(),
            })?;
        // A call is a few small frames: without it, each would wait for the peer's ACK.
        let _ = tcp.set_nodelay(true);
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Idle connections are probed, so that one a server or a middlebox dropped
            // is noticed before a call is written to it.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "gRPC upstream connection ended: {e}");
            }
        });
        Ok(send)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

/// What a call came back with: the answer's message, or the status the upstream refused it
/// with (its code and message, passed on).
pub(super) type Answer<M> = Result<M, tonic::Status>;

/// One unary call of `method` on `channel`, its whole exchange within `timeout` (also sent
/// as `grpc-timeout`, so the upstream stops working when the gateway stops waiting).
pub(super) async fn unary<M: Message + Default>(
    channel: &Channel,
    connect_timeout: Duration,
    timeout: Duration,
    method: &str,
    message: &impl Message,
    request_id: &str,
    max_answer: usize,
) -> Result<Answer<M>, Failure> {
    let call = async {
        let mut send = channel
            .sender(connect_timeout)
            .await
            .map_err(Failure::NotDelivered)?;
        // New in every call: sent as a literal HPACK never indexes, as the answers' ids are
        // (`service::exchange::Head::response_header` says why).
        let mut id = http::HeaderValue::from_str(request_id).map_err(|e| Failure::Failed(e.to_string()))?;
        id.set_sensitive(true);
        let request = http::Request::post(format!("http://{}{SERVICE}{method}", channel.addr))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("grpc-timeout", codec::timeout_value(timeout))
            .header("x-request-id", id)
            .body(Full::new(codec::frame(message)))
            .map_err(|e| Failure::Failed(e.to_string()))?;
        let response = match send.try_send_request(request).await {
            Ok(r) => r,
            Err(e) if e.message().is_some() => return Err(Failure::NotDelivered(e.into_error().to_string())),
            Err(e) => return Err(Failure::Failed(e.into_error().to_string())),
        };
        if response.status() != http::StatusCode::OK {
            return Err(Failure::Failed(format!(
                "the upstream answered HTTP status {} to a gRPC call",
                response.status()
            )));
        }
        // A refusal may come in the header alone ("trailers-only").
        if let Some(status) = tonic::Status::from_header_map(response.headers())
            && status.code() != tonic::Code::Ok
        {
            return Ok(Err(status));
        }
        let body = Limited::new(response.into_body(), max_answer.saturating_add(5))
            .collect()
            .await
            .map_err(|e| {
                Failure::Failed(if e.is::<http_body_util::LengthLimitError>() {
                    "the upstream's answer is over the size limit".to_string()
                } else {
                    e.to_string()
                })
            })?;
        let trailers = body.trailers().cloned().unwrap_or_default();
        let mut bytes = body.to_bytes();
        match tonic::Status::from_header_map(&trailers) {
            Some(status) if status.code() != tonic::Code::Ok => return Ok(Err(status)),
            Some(_) => {}
            None => return Err(Failure::Failed("the upstream's answer has no grpc-status".into())),
        }
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(Failure::Failed(
                "the upstream's answer is not one uncompressed gRPC message".into(),
            ));
        }
        let n = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        bytes.advance(5);
        if bytes.len() != n {
            return Err(Failure::Failed(
                "the upstream's gRPC message is not the length its prefix says".into(),
            ));
        }
        M::decode(bytes)
            .map(Ok)
            .map_err(|e| Failure::Failed(format!("the upstream's answer does not decode: {e}")))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(Failure::TimedOut))
}

/// `ModelInfer` on one endpoint.
pub(super) async fn infer(
    channel: &Channel,
    connect_timeout: Duration,
    timeout: Duration,
    request: &pb::ModelInferRequest,
    request_id: &str,
    max_answer: usize,
) -> Result<Answer<pb::ModelInferResponse>, Failure> {
    unary(
        channel,
        connect_timeout,
        timeout,
        "ModelInfer",
        request,
        request_id,
        max_answer,
    )
    .await
}

fn describe(f: Failure) -> String {
    match f {
        Failure::NotDelivered(r) | Failure::Failed(r) => r,
        Failure::TimedOut => "timed out".into(),
    }
}

/// The health check: `ModelReady` for the pool's model and version answers `ready: true`.
pub(super) async fn model_ready(
    channel: &Channel,
    connect_timeout: Duration,
    timeout: Duration,
    model: &str,
    version: u64,
) -> Result<(), String> {
    let request = pb::ModelReadyRequest {
        name: model.to_string(),
        version: version.to_string(),
    };
    let answer: Answer<pb::ModelReadyResponse> = unary(
        channel,
        connect_timeout,
        timeout,
        "ModelReady",
        &request,
        "health-check",
        1024,
    )
    .await
    .map_err(describe)?;
    match answer {
        Ok(r) if r.ready => Ok(()),
        Ok(_) => Err(format!("model {model} version {version} is not ready")),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// `ModelMetadata` for the pool's model and version, as the signature requests are checked
/// against.
pub(super) async fn metadata(
    channel: &Channel,
    connect_timeout: Duration,
    timeout: Duration,
    model: &str,
    version: u64,
) -> Result<ModelMetadata, String> {
    let request = pb::ModelMetadataRequest {
        name: model.to_string(),
        version: version.to_string(),
    };
    let answer: Answer<pb::ModelMetadataResponse> = unary(
        channel,
        connect_timeout,
        timeout,
        "ModelMetadata",
        &request,
        "metadata",
        1 << 20,
    )
    .await
    .map_err(describe)?;
    let answer = answer.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    codec::metadata_answer(answer).into_model(&version.to_string(), "remote")
}
