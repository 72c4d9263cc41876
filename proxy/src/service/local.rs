//! Answers from a pool that takes tensors: a local pool (the model run in process) or a
//! remote `grpc` pool (the tensors sent raw in a `ModelInferRequest`). The body is decoded in
//! the gateway, the answer encoded here (Open Inference Protocol, JSON or binary, or
//! `/predict`), shadows given the decoded tensors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use inference::protocol::grpc as codec;
use inference::protocol::metadata::{ModelConfig, ModelMetadataAnswer, ModelReady, to_json};
use inference::protocol::{self, ModelRef};
use inference::{InferError, ModelMetadata, NamedTensor, Pool, Tensor};

use super::exchange::Exchange;
use super::record::Shadows;
use super::{Ctx, Gateway, Kind};
use crate::admission::budget::{Held, Over};
use crate::config::Route;
use crate::errors::GatewayError;
use crate::http::names::INFERENCE_HEADER_LENGTH;
use crate::pools::remote::{self, RemotePool};
use crate::routing::snapshot::{Backend, Snapshot};
use crate::service::predict;
use crate::shadow;

/// The most bytes the tensors decoded from `body` can take: every JSON element is at least
/// two bytes of text (a digit and a separator), and becomes at most the widest input type;
/// binary tensor data is copied as it is.
fn decode_bound(meta: &ModelMetadata, body_len: usize, json_len: usize) -> usize {
    let widest = meta.inputs.iter().map(|s| s.datatype.size()).max().unwrap_or(8);
    (json_len / 2 + 1) * widest + body_len.saturating_sub(json_len)
}

fn tensor_bytes(tensors: &[NamedTensor]) -> usize {
    tensors
        .iter()
        .map(|t| t.tensor.data().len() * t.tensor.dtype().size())
        .sum()
}

/// A pool the gateway hands decoded tensors to.
#[derive(Clone)]
pub(super) enum Engine {
    /// In process.
    Local(Arc<Pool>),
    /// A remote `grpc` pool, with the signature it has learnt from its upstream.
    Grpc(Arc<RemotePool>, Arc<ModelMetadata>),
}

impl Engine {
    /// The engine of a local or `grpc` pool (an `http` pool takes bodies: `answer_remote`).
    /// A `grpc` pool with no healthy endpoint, or whose signature is not known yet, is 503.
    pub(super) fn of(backend: Backend) -> Result<Engine, GatewayError> {
        match backend {
            Backend::Local(pool) => Ok(Engine::Local(pool)),
            Backend::Remote(pool) => {
                if !pool.any_healthy() {
                    return Err(GatewayError::NoHealthyUpstream {
                        pool: pool.name.clone(),
                    });
                }
                let meta = pool.metadata().ok_or_else(|| not_ready(&pool))?;
                Ok(Engine::Grpc(pool, meta))
            }
        }
    }

    pub(super) fn metadata(&self) -> &ModelMetadata {
        match self {
            Engine::Local(pool) => pool.metadata(),
            Engine::Grpc(_, meta) => meta,
        }
    }
}

/// A remote pool that has not yet fetched its model's signature.
pub(super) fn not_ready(pool: &RemotePool) -> GatewayError {
    InferError::NotReady(format!(
        "pool {} has not yet learnt the model's signature from its upstream",
        pool.name
    ))
    .into()
}

/// A remote pool's outputs in its signature's order, whatever order the upstream answered in.
pub(super) fn in_signature_order(
    pool: &RemotePool,
    meta: &ModelMetadata,
    mut outputs: Vec<NamedTensor>,
) -> Result<Vec<Tensor>, GatewayError> {
    meta.outputs
        .iter()
        .map(|spec| {
            let i =
                outputs
                    .iter()
                    .position(|t| t.name == spec.name)
                    .ok_or_else(|| GatewayError::BadGateway {
                        pool: pool.name.clone(),
                        reason: format!("the answer has no output {:?}", spec.name),
                    })?;
            Ok(outputs.swap_remove(i).tensor)
        })
        .collect()
}

/// Waits for `work` until the gRPC client's deadline, if it set one.
pub(super) async fn within<T>(
    deadline: Option<(Instant, Duration)>,
    work: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    match deadline {
        None => work.await,
        Some((at, limit)) => tokio::time::timeout_at(at.into(), work)
            .await
            .unwrap_or_else(|_| {
                Err(InferError::Deadline {
                    limit_ms: limit.as_millis() as u64,
                }
                .into())
            }),
    }
}

pub(super) fn busy(over: Over) -> GatewayError {
    GatewayError::Busy {
        per_key: over == Over::Key,
    }
}

impl Gateway {
    /// `/infer` and `/predict` of a local or `grpc` pool; metadata, readiness and
    /// configuration too.
    pub(super) async fn answer_local(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
        route: &Route,
        pool: Engine,
        (kind, model_ref): (Kind, ModelRef<'_>),
    ) -> Result<(), GatewayError> {
        let limits = &snap.config.limits;
        let caps = crate::admission::budget::Caps::of(limits);
        let meta = pool.metadata();
        match kind {
            Kind::Infer => {
                let mut held = self.hold(ctx);
                let body = session.read_body(limits.max_body_bytes, &mut held, caps).await?;
                let header_length = session
                    .req_header()
                    .headers
                    .get(INFERENCE_HEADER_LENGTH)
                    .map(|v| v.to_str().unwrap_or("?").to_string());
                if let Some(seen) = self.answer_seen(snap, ctx, route, &body, header_length.as_deref()) {
                    let (answer, json_len) = seen?;
                    drop(held);
                    self.respond_answer(session, ctx, answer, json_len).await;
                    return Ok(());
                }
                let json_len = header_length
                    .as_deref()
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(body.len())
                    .min(body.len());
                held.grow(decode_bound(meta, body.len(), json_len), caps)
                    .map_err(busy)?;
                let request = protocol::decode_request(&body, header_length.as_deref())?;
                held.shrink_to(body.len() + tensor_bytes(&request.inputs));
                let selected = protocol::select_outputs(meta, &request)?;
                let id_given = request.id.is_some();
                let id = request.id.clone().unwrap_or_else(|| ctx.request_id.clone());
                let version = &meta.version;
                let (outputs, shadows) = self
                    .infer_local(snap, ctx, route, &pool, request.inputs, body.len())
                    .await?;
                let encoded = protocol::encode_response(
                    meta,
                    &route.model,
                    version,
                    &id,
                    &selected,
                    &outputs,
                    limits.max_answer_bytes,
                )?;
                drop(held);
                let answer = Bytes::from(encoded.body);
                self.respond_answer(session, ctx, answer.clone(), encoded.json_len)
                    .await;
                self.keep_seen(
                    snap,
                    ctx,
                    route,
                    (&body, header_length.as_deref()),
                    (&answer, encoded.json_len),
                    (&id, id_given),
                    (meta, &outputs),
                );
                self.mirror(snap, ctx, shadows, || Self::named(meta, outputs));
            }
            Kind::Simple => {
                let mut held = self.hold(ctx);
                let body = session.read_body(limits.max_body_bytes, &mut held, caps).await?;
                // Features as f64, then the model's tensor: at most 8 + 8 bytes per element.
                held.grow((body.len() / 2 + 1) * 16, caps).map_err(busy)?;
                let features = predict::parse(&body)?;
                let inputs = predict::to_inputs(meta, &features)?;
                held.shrink_to(body.len() + features.values.len() * 8 + tensor_bytes(&inputs));
                let (outputs, shadows) = self
                    .infer_local(snap, ctx, route, &pool, inputs, body.len())
                    .await?;
                let named: Vec<(String, Tensor)> =
                    meta.outputs.iter().map(|s| s.name.clone()).zip(outputs).collect();
                let answer = predict::respond(&named, &features, &meta.version)?;
                drop(held);
                self.respond(session, ctx, 200, "application/json", Bytes::from(answer), &[])
                    .await;
                let outputs = named.into_iter().map(|(_, t)| t).collect();
                self.mirror(snap, ctx, shadows, || Self::named(meta, outputs));
            }
            Kind::Metadata => {
                let versions = super::variant::route_versions(route, snap);
                let body = ModelMetadataAnswer::of(meta, model_ref.model, versions);
                self.respond_json(session, ctx, to_json(&body)).await;
            }
            Kind::Ready => {
                let body = ModelReady {
                    name: model_ref.model.to_string(),
                    version: meta.version.clone(),
                    ready: true,
                };
                self.respond_json(session, ctx, to_json(&body)).await;
            }
            Kind::Config => {
                let Engine::Local(local) = &pool else {
                    return Err(InferError::NotFound(format!(
                        "the model configuration of {} is its upstream's: a grpc pool does not pass it on",
                        model_ref.model
                    ))
                    .into());
                };
                let body = ModelConfig::of(meta, local.config().max_batch);
                self.respond_json(session, ctx, to_json(&body)).await;
            }
        }
        Ok(())
    }

    /// An `/infer` answer: JSON, or JSON followed by raw tensors (`json_len` set, and sent
    /// as `Inference-Header-Content-Length`).
    async fn respond_answer(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        answer: Bytes,
        json_len: Option<usize>,
    ) {
        let extra: Vec<_> = json_len
            .map(|n| (protocol::HEADER_LENGTH, n.to_string()))
            .into_iter()
            .collect();
        self.respond(
            session,
            ctx,
            200,
            protocol::content_type(json_len),
            answer,
            &extra,
        )
        .await;
    }

    /// The request's holding in the in-flight budget (requests with a body have a key).
    pub(super) fn hold(&self, ctx: &Ctx) -> Held {
        let key = ctx.key.as_ref().map_or([0; 32], |k| *k.digest());
        self.budget.hold(key)
    }

    /// Runs a local or `grpc` pool, keeping a copy of the inputs when the route's shadows
    /// want one. A failed inference is still mirrored (the shadow's answer is worth
    /// recording).
    pub(super) async fn infer_local(
        &self,
        snap: &Arc<Snapshot>,
        ctx: &mut Ctx,
        route: &Route,
        pool: &Engine,
        inputs: Vec<NamedTensor>,
        body_len: usize,
    ) -> Result<(Vec<Tensor>, Option<Shadows>), GatewayError> {
        let picks = self.mirror.pick(snap, route, &pool.metadata().version, body_len);
        ctx.shadows = picks.len();
        let copy = (!picks.is_empty()).then(|| inputs.clone());
        if let Some(w) = &ctx.drift {
            self.quality.record_inputs(w, &inputs);
        }
        // The prediction cache, keyed by the pool the split chose and its model version.
        let cache = ctx.variant.map(|v| route.pool(v)).and_then(|served| {
            let c = snap.caches.get(&route.model).filter(|c| c.caches(served))?;
            let version = ctx.model_version.as_deref().unwrap_or_default();
            Some((c, served, c.key(served, version, &inputs)))
        });
        let cached = cache.as_ref().and_then(|(c, _, key)| c.get(key));
        ctx.cache = cache
            .as_ref()
            .map(|_| if cached.is_some() { "hit" } else { "miss" });
        let started = Instant::now();
        let result = match (cached, pool) {
            (Some(found), _) => {
                // On a route without shadows, the body may be kept with its answer (seen.rs).
                if route.shadows.is_empty() {
                    ctx.seen = Some(super::seen::Seen {
                        stored_ms: found.stored_ms,
                        inputs,
                    });
                }
                Ok(found.outputs)
            }
            (None, Engine::Local(pool)) => {
                within(ctx.deadline, async { Ok(pool.infer(inputs).await?) }).await
            }
            (None, Engine::Grpc(pool, meta)) => {
                let spec = &pool.spec;
                let request =
                    codec::encode_request(&spec.model, &spec.version.to_string(), &ctx.request_id, &inputs);
                drop(inputs);
                let max_answer = snap.config.limits.max_answer_bytes;
                remote::infer_grpc(pool, &request, &ctx.request_id, ctx.deadline, max_answer)
                    .await
                    .and_then(|(answer, endpoint)| {
                        ctx.upstream = Some(endpoint);
                        let outputs =
                            codec::decode_response(answer).map_err(|e| GatewayError::BadGateway {
                                pool: pool.name.clone(),
                                reason: format!("unreadable answer: {e}"),
                            })?;
                        in_signature_order(pool, meta, outputs)
                    })
            }
        };
        // A hit took no time in the model: it stays out of the inference histogram.
        ctx.inference = (ctx.cache != Some("hit")).then(|| started.elapsed());
        let shadows = copy.map(|inputs| (picks, shadow::Input::Tensors(inputs), started.elapsed()));
        match result {
            Ok(outputs) => {
                if let (Some((c, served, key)), Some("miss")) = (cache, ctx.cache) {
                    let version = ctx.model_version.as_deref().unwrap_or_default();
                    c.put(key, served, version, &outputs);
                }
                let named: Vec<(&str, &Tensor)> = pool
                    .metadata()
                    .outputs
                    .iter()
                    .map(|spec| spec.name.as_str())
                    .zip(&outputs)
                    .collect();
                self.observe_predictions(ctx, &route.model, &named);
                Ok((outputs, shadows))
            }
            Err(e) => {
                self.mirror(snap, ctx, shadows, || shadow::Primary::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    /// Names a pool's outputs (in its signature's order) for [`Self::mirror`].
    pub(super) fn named(meta: &ModelMetadata, outputs: Vec<Tensor>) -> shadow::Primary {
        shadow::Primary::Outputs(
            meta.outputs
                .iter()
                .zip(outputs)
                .map(|(spec, tensor)| NamedTensor {
                    name: spec.name.clone(),
                    tensor,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference::DataType;

    #[test]
    fn the_decode_bound_holds_for_the_smallest_json_elements() {
        let meta = ModelMetadata {
            name: "m".into(),
            version: "1".into(),
            platform: "test",
            inputs: vec![inference::TensorSpec {
                name: "x".into(),
                datatype: DataType::F64,
                shape: vec![-1, 4],
            }],
            outputs: vec![],
            batchable: true,
        };
        let body = r#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[0,0,0,0,0,0,0,0]}]}"#;
        let decoded = protocol::decode_request(body.as_bytes(), None).unwrap();
        assert!(tensor_bytes(&decoded.inputs) <= decode_bound(&meta, body.len(), body.len()));
    }
}
