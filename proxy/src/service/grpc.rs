//! gRPC callers on the same TLS port (ALPN h2, `content-type: application/grpc`):
//! `inference.GRPCInferenceService` and `grpc.health.v1.Health/Check`, through the same steps
//! as REST. Metadata are HTTP/2 headers, so the key (`x-api-key`, `authorization`), the
//! rate limits, `x-canary` and stickiness read them unchanged; the answer carries
//! `x-request-id`, `x-model-variant`, `x-model-version` and the rate-limit fields as
//! metadata, and every refusal becomes the matching gRPC status with REST's message
//! ([`inference::protocol::grpc::code_of`]), `retry-after` as metadata.
//!
//! Local pools answer in process from the decoded tensors, and a remote `grpc` pool is sent
//! them raw (`service::local`); a remote `http` pool is sent the same tensors as an Open
//! Inference Protocol JSON request and its answer is transcoded back (and compared by
//! shadows like any other). A client's `grpc-timeout` bounds the wait for the model
//! (DEADLINE_EXCEEDED, a tenth early as `inference-server` does) and is passed on to a
//! `grpc` pool's upstream.

use std::sync::Arc;

use bytes::Bytes;
use inference::protocol::grpc::{self as codec, pb};
use inference::protocol::{self, ModelRef};
use inference::{InferError, NamedTensor, Tensor};
use prost::Message;

use super::exchange::Exchange;
use super::local::{Engine, busy, in_signature_order, not_ready, within};
use super::{Ctx, Gateway, Kind};
use crate::errors::GatewayError;
use crate::http::names::GRPC_STATUS;
use crate::pools::remote::{self, RemotePool};
use crate::routing::snapshot::{Backend, Snapshot};
use crate::shadow;

const SERVICE: &str = "/inference.GRPCInferenceService/";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Whether a request is a gRPC call (the gateway answers it in gRPC's framing).
pub(super) fn is_grpc(session: &Exchange<'_>) -> bool {
    session.is_http2()
        && session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The method as a metric label: one of a fixed few, never what a client made up.
fn method_label(method: &str) -> &'static str {
    match method {
        "ServerLive" => "ServerLive",
        "ServerReady" => "ServerReady",
        "ServerMetadata" => "ServerMetadata",
        "ModelReady" => "ModelReady",
        "ModelMetadata" => "ModelMetadata",
        "ModelInfer" => "ModelInfer",
        "Check" => "Check",
        _ => "other",
    }
}

/// The one length-prefixed message of a unary call.
fn unframe(body: &[u8]) -> Result<&[u8], InferError> {
    let Some((head, message)) = body.split_first_chunk::<5>() else {
        return Err(InferError::bad_request(format!(
            "a gRPC request carries one length-prefixed message; this one has {} bytes",
            body.len()
        )));
    };
    if head[0] != 0 {
        return Err(InferError::bad_request(
            "compressed gRPC messages are not accepted: send them uncompressed (grpc-encoding identity)",
        ));
    }
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if message.len() != n {
        return Err(InferError::bad_request(format!(
            "the gRPC message's prefix says {n} bytes but {} follow (one message per call)",
            message.len()
        )));
    }
    Ok(message)
}

fn decode<M: Message + Default>(body: &[u8]) -> Result<M, GatewayError> {
    M::decode(unframe(body)?)
        .map_err(|e| InferError::bad_request(format!("the gRPC message does not decode: {e}")).into())
}

/// The gRPC status of a gateway error, with the message and `retry-after` REST gives.
fn status(e: &GatewayError) -> tonic::Status {
    codec::status_of(e.status(), e.to_string(), e.retry_after())
}

impl Gateway {
    /// One gRPC call; errors are answered by the caller ([`Self::respond_grpc_error`]).
    pub(super) async fn handle_grpc(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
    ) -> Result<(), GatewayError> {
        crate::admission::limits::check_headers(session.req_header(), snap.config.limits.max_header_bytes)?;
        let path = session.req_header().uri.path().to_string();
        let method = if path == HEALTH_CHECK {
            "Check"
        } else {
            path.strip_prefix(SERVICE).unwrap_or("")
        };
        ctx.grpc = Some((method_label(method), "UNKNOWN"));
        match method {
            "ServerLive" => {
                self.limit_by_ip(session, ctx, snap)?;
                self.respond_grpc(session, ctx, &pb::ServerLiveResponse { live: true })
                    .await;
            }
            "ServerReady" => {
                self.limit_by_ip(session, ctx, snap)?;
                self.respond_grpc(session, ctx, &pb::ServerReadyResponse { ready: true })
                    .await;
            }
            "ServerMetadata" => {
                self.limit_by_ip(session, ctx, snap)?;
                self.respond_grpc(session, ctx, &codec::server_metadata("gateway"))
                    .await;
            }
            "Check" => {
                self.limit_by_ip(session, ctx, snap)?;
                let serving = tonic_health::pb::HealthCheckResponse {
                    status: tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                };
                self.respond_grpc(session, ctx, &serving).await;
            }
            "ModelMetadata" | "ModelReady" => {
                self.limit_by_ip(session, ctx, snap)?;
                let body = self.small_body(session, ctx, snap).await?;
                // Both requests are (name = 1, version = 2).
                let r: pb::ModelReadyRequest = decode(&body)?;
                let model_ref = ModelRef {
                    model: &r.name,
                    version: codec::version(&r.version),
                };
                let route = snap
                    .route(model_ref.model)
                    .ok_or_else(|| InferError::NotFound(format!("unknown model {:?}", model_ref.model)))?;
                ctx.route = Some(route.model.clone());
                let variant = self.choose_variant(session, ctx, snap, route, Kind::Metadata, model_ref)?;
                ctx.variant = Some(variant);
                let pool_name = route.pool(variant);
                ctx.model_version = Some(snap.config.pools[pool_name].version().to_string());
                let backend = &snap.pools[pool_name];
                let meta = match backend {
                    Backend::Local(pool) => Arc::new(pool.metadata().clone()),
                    Backend::Remote(pool) => pool.metadata().ok_or_else(|| not_ready(pool))?,
                };
                if method == "ModelReady" {
                    let ready = backend.ready();
                    self.respond_grpc(session, ctx, &pb::ModelReadyResponse { ready })
                        .await;
                } else {
                    let versions = super::variant::route_versions(route, snap);
                    let answer = codec::model_metadata(&meta, &route.model, versions);
                    self.respond_grpc(session, ctx, &answer).await;
                }
            }
            "ModelInfer" => {
                ctx.deadline = session
                    .req_header()
                    .headers
                    .get("grpc-timeout")
                    .and_then(|v| codec::parse_timeout(v.to_str().ok()?))
                    .map(|limit| (std::time::Instant::now() + codec::early(limit), limit));
                self.authenticate_and_limit(session, ctx, snap).await?;
                self.grpc_infer(session, ctx, snap).await?;
            }
            _ => {
                return Err(InferError::MethodNotAllowed {
                    method: "gRPC".into(),
                    path,
                    allowed: "the methods of inference.GRPCInferenceService (Triton's extensions are not served) and grpc.health.v1.Health/Check",
                }
                .into());
            }
        }
        Ok(())
    }

    /// The body of a metadata call (no key: bounded by the header limit, not the body's).
    async fn small_body(
        &self,
        session: &mut Exchange<'_>,
        ctx: &Ctx,
        snap: &Snapshot,
    ) -> Result<Bytes, GatewayError> {
        let caps = crate::admission::budget::Caps::of(&snap.config.limits);
        let mut held = self.hold(ctx);
        session
            .read_body(snap.config.limits.max_header_bytes, &mut held, caps)
            .await
    }

    async fn grpc_infer(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
    ) -> Result<(), GatewayError> {
        let limits = &snap.config.limits;
        let caps = crate::admission::budget::Caps::of(limits);
        let mut held = self.hold(ctx);
        // The message may be the body limit; its 5-byte prefix is not counted.
        let body = session
            .read_body(limits.max_body_bytes.saturating_add(5), &mut held, caps)
            .await?;
        // Decoded message and tensors: at most the message's size each.
        held.grow(2 * body.len(), caps).map_err(busy)?;
        let message: pb::ModelInferRequest = decode(&body)?;
        let model = message.model_name.clone();
        let version = message.model_version.clone();
        let request = codec::decode_request(message)?;
        let model_ref = ModelRef {
            model: &model,
            version: codec::version(&version),
        };
        let route = snap
            .route(model_ref.model)
            .ok_or_else(|| InferError::NotFound(format!("unknown model {:?}", model_ref.model)))?;
        ctx.route = Some(route.model.clone());
        let variant = self.choose_variant(session, ctx, snap, route, Kind::Infer, model_ref)?;
        ctx.variant = Some(variant);
        let pool_name = route.pool(variant);
        ctx.model_version = Some(snap.config.pools[pool_name].version().to_string());
        ctx.drift = self.drift_window(ctx, snap, pool_name);
        let id = request.id.clone().unwrap_or_else(|| ctx.request_id.clone());
        match snap.pools[pool_name].clone() {
            Backend::Remote(pool) if !pool.is_grpc() => {
                let meta = pool.metadata().ok_or_else(|| not_ready(&pool))?;
                let selected = protocol::select_outputs(&meta, &request)?;
                let outputs = self
                    .transcode_remote(ctx, snap, route, &pool, request.inputs, &id)
                    .await?;
                let answer = codec::encode_response(
                    &meta,
                    &route.model,
                    &meta.version,
                    &id,
                    &selected,
                    &outputs,
                    limits.max_answer_bytes,
                )?;
                drop(held);
                self.respond_grpc(session, ctx, &answer).await;
            }
            backend => {
                let pool = Engine::of(backend)?;
                let meta = pool.metadata();
                let selected = protocol::select_outputs(meta, &request)?;
                let (outputs, shadows) = self
                    .infer_local(snap, ctx, route, &pool, request.inputs, body.len())
                    .await?;
                let answer = codec::encode_response(
                    meta,
                    &route.model,
                    &meta.version,
                    &id,
                    &selected,
                    &outputs,
                    limits.max_answer_bytes,
                )?;
                drop(held);
                self.respond_grpc(session, ctx, &answer).await;
                self.mirror(snap, ctx, shadows, || Self::named(meta, outputs));
            }
        }
        Ok(())
    }

    /// A gRPC caller's tensors through a remote `http` pool: sent as an Open Inference
    /// Protocol JSON request, the answer decoded into the signature's outputs (in its order).
    /// The shadows get the same tensors and the primary's outputs.
    async fn transcode_remote(
        &self,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
        route: &crate::config::Route,
        pool: &RemotePool,
        inputs: Vec<NamedTensor>,
        id: &str,
    ) -> Result<Vec<Tensor>, GatewayError> {
        if !pool.any_healthy() {
            return Err(GatewayError::NoHealthyUpstream {
                pool: pool.name.clone(),
            });
        }
        let meta = pool.metadata().ok_or_else(|| not_ready(pool))?;
        let version = ctx.model_version.clone().unwrap_or_default();
        let body = Bytes::from(protocol::encode_request(id, &inputs));
        let picks = self.mirror.pick(snap, route, &version, body.len());
        ctx.shadows = picks.len();
        if let Some(w) = &ctx.drift {
            self.quality.record_inputs(w, &inputs);
        }
        let copy = (!picks.is_empty()).then_some(inputs);
        let out = remote::Outbound {
            method: "POST",
            path: pool.infer_path(),
            body,
            request_id: &ctx.request_id,
            content_type: Some("application/json"),
            header_length: None,
            max_response_bytes: snap.config.limits.max_answer_bytes,
        };
        let started = std::time::Instant::now();
        let result = within(ctx.deadline, remote::forward(pool, &self.connector, &out)).await;
        ctx.inference = Some(started.elapsed());
        let shadows = copy.map(|inputs| (picks, shadow::Input::Tensors(inputs), started.elapsed()));
        let outputs = result.and_then(|answer| {
            ctx.upstream = Some(answer.endpoint);
            if answer.status != 200 {
                let message = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("upstream answered {}", answer.status));
                return Err(GatewayError::BadGateway {
                    pool: pool.name.clone(),
                    reason: format!("{} {message}", answer.status),
                });
            }
            let decoded = protocol::decode_response(&answer.body, answer.header_length.as_deref())?;
            in_signature_order(pool, &meta, decoded.outputs)
        });
        match outputs {
            Ok(outputs) => {
                let named: Vec<(&str, &Tensor)> = meta
                    .outputs
                    .iter()
                    .map(|spec| spec.name.as_str())
                    .zip(&outputs)
                    .collect();
                self.observe_predictions(ctx, &route.model, &named);
                self.mirror(snap, ctx, shadows, || Self::named(&meta, outputs.clone()));
                Ok(outputs)
            }
            Err(e) => {
                self.mirror(snap, ctx, shadows, || shadow::Primary::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    /// 200, one message, `grpc-status: 0`.
    async fn respond_grpc(&self, session: &mut Exchange<'_>, ctx: &mut Ctx, message: &impl Message) {
        ctx.status = 200;
        answered(ctx, tonic::Code::Ok);
        let mut trailers = http::HeaderMap::new();
        trailers.insert(GRPC_STATUS, http::HeaderValue::from_static("0"));
        let _ = session
            .write_grpc(ctx, Some(codec::frame(message)), trailers)
            .await;
    }

    /// A refusal or failure: no message, the status and REST's text in the trailers. The
    /// metrics and the access log count it under its HTTP status, as REST's.
    pub(super) async fn respond_grpc_error(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        e: GatewayError,
    ) {
        ctx.status = e.status();
        let status = status(&e);
        answered(ctx, status.code());
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(GRPC_STATUS, http::HeaderValue::from_static("13"));
        }
        for (name, value) in e.headers() {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                trailers.insert(name, v);
            }
        }
        ctx.error = Some(e);
        let _ = session.write_grpc(ctx, None, trailers).await;
    }
}

/// Notes the call's code for the metrics (a refusal before the method was read counts as
/// method "other").
fn answered(ctx: &mut Ctx, code: tonic::Code) {
    let method = ctx.grpc.map_or("other", |(m, _)| m);
    ctx.grpc = Some((method, code_name(code)));
}

/// gRPC's names for its codes, as the metrics label them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let m = pb::ModelReadyRequest {
            name: "m".into(),
            version: "2".into(),
        };
        let framed = codec::frame(&m);
        assert_eq!(decode::<pb::ModelReadyRequest>(&framed).unwrap(), m);
        assert!(unframe(&framed[..3]).unwrap_err().to_string().contains("3 bytes"));
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert!(
            unframe(&compressed)
                .unwrap_err()
                .to_string()
                .contains("compressed")
        );
        let mut long = framed.to_vec();
        long.push(0);
        assert!(unframe(&long).unwrap_err().to_string().contains("follow"));
    }
}
