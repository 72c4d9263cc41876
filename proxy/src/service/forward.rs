//! Answers through a remote pool: the body forwarded as it came (or, for `/predict`, made
//! into an Open Inference Protocol request), the upstream's answer passed on with the
//! gateway's headers, and read afterwards for the prediction metrics and the shadows.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderName;
use inference::protocol;

use super::exchange::Exchange;
use super::local::busy;
use super::{Ctx, Gateway, Kind};
use crate::config::Route;
use crate::errors::GatewayError;
use crate::http::names::INFERENCE_HEADER_LENGTH;
use crate::pools::remote::{self, RemotePool};
use crate::routing::snapshot::Snapshot;
use crate::service::predict;
use crate::shadow;

impl Gateway {
    pub(super) async fn answer_remote(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
        route: &Route,
        pool: Arc<RemotePool>,
        kind: Kind,
    ) -> Result<(), GatewayError> {
        let version = ctx.model_version.clone().unwrap_or_default();
        if !pool.any_healthy() {
            return Err(GatewayError::NoHealthyUpstream {
                pool: pool.name.clone(),
            });
        }
        let limits = &snap.config.limits;
        let caps = crate::admission::budget::Caps::of(limits);
        let (method, path) = match kind {
            Kind::Infer | Kind::Simple => ("POST", Cow::Borrowed(pool.infer_path())),
            Kind::Metadata => ("GET", Cow::Owned(pool.upstream_path(""))),
            Kind::Ready => ("GET", Cow::Owned(pool.upstream_path("/ready"))),
            Kind::Config => ("GET", Cow::Owned(pool.upstream_path("/config"))),
        };
        let mut held = self.hold(ctx);
        let body = if method == "POST" {
            session.read_body(limits.max_body_bytes, &mut held, caps).await?
        } else {
            Bytes::new()
        };
        let headers = &session.req_header().headers;
        let header_str = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let mut features = None;
        let body = if kind == Kind::Simple {
            let meta = pool.metadata().ok_or_else(|| super::local::not_ready(&pool))?;
            // The features as f64 and their protocol JSON: at most 8 + 24 bytes per element.
            held.grow((body.len() / 2 + 1) * 32, caps).map_err(busy)?;
            let f = predict::parse(&body)?;
            let oip = predict::to_oip_body(&meta, &f)?;
            held.shrink_to(body.len() + f.values.len() * 8 + oip.len());
            features = Some(f);
            Bytes::from(oip)
        } else {
            body
        };
        let mirrored = method == "POST";
        let picks = if mirrored {
            self.mirror.pick(snap, route, &version, body.len())
        } else {
            Vec::new()
        };
        ctx.shadows = picks.len();
        let copy = (!picks.is_empty()).then(|| shadow::Input::Oip {
            body: body.clone(),
            header_length: if kind == Kind::Simple {
                None
            } else {
                header_str(INFERENCE_HEADER_LENGTH).map(str::to_string)
            },
        });
        if let Some(w) = &ctx.drift {
            // Decoded off the request path (the gateway forwards remote bodies undecoded).
            let header_length = if kind == Kind::Simple {
                None
            } else {
                header_str(INFERENCE_HEADER_LENGTH).map(str::to_string)
            };
            self.quality.record_body(w.clone(), body.clone(), header_length);
        }
        let out = remote::Outbound {
            method,
            path: &path,
            body,
            request_id: &ctx.request_id,
            content_type: if kind == Kind::Simple {
                Some("application/json")
            } else {
                header_str(http::header::CONTENT_TYPE)
            },
            header_length: if kind == Kind::Simple {
                None
            } else {
                header_str(INFERENCE_HEADER_LENGTH)
            },
            max_response_bytes: limits.max_answer_bytes,
        };
        let started = Instant::now();
        let result = remote::forward(&pool, &self.connector, &out).await;
        drop(held);
        ctx.inference = Some(started.elapsed());
        let shadows = copy.map(|input| (picks, input, started.elapsed()));
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                self.mirror(snap, ctx, shadows, || shadow::Primary::Failed(e.to_string()));
                return Err(e);
            }
        };
        ctx.upstream = Some(answer.endpoint);
        // The answer is decoded for the prediction metrics after it has been sent.
        let observed =
            (mirrored && answer.status == 200).then(|| (answer.body.clone(), answer.header_length.clone()));
        let primary = shadows.as_ref().map(|_| shadow::Primary::Oip {
            status: answer.status,
            body: answer.body.clone(),
            header_length: answer.header_length.clone(),
        });
        let (body, content_type) = match (&features, answer.status) {
            (Some(f), 200) => (
                Bytes::from(predict::respond_from_oip(&answer.body, f, &version)?),
                "application/json".to_string(),
            ),
            // Upstream errors are already {"error": ...}: passed on unchanged, status included.
            _ => (
                answer.body,
                answer.content_type.unwrap_or_else(|| "application/json".into()),
            ),
        };
        let mut extra = Vec::new();
        if let Some(n) = answer.header_length.filter(|_| features.is_none()) {
            extra.push((protocol::HEADER_LENGTH, n));
        }
        self.respond(session, ctx, answer.status, &content_type, body, &extra)
            .await;
        if let Some((body, header_length)) = observed {
            let predictions = header_length
                .is_none()
                .then(|| crate::predictions::predictions_from_json(&body))
                .flatten()
                .or_else(|| {
                    let decoded = protocol::decode_response(&body, header_length.as_deref()).ok()?;
                    Some(crate::predictions::predictions(&decoded.outputs))
                });
            if let Some(predictions) = predictions {
                self.record_predictions(ctx, &route.model, predictions);
            }
        }
        if let Some(primary) = primary {
            self.mirror(snap, ctx, shadows, || primary);
        }
        Ok(())
    }
}
