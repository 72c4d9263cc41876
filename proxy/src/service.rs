//! The gateway's pingora HTTP application: each step hands its work to one module, so
//! [`Gateway::serve`] reads like the request flow in DESIGN.md.
//!
//! Every request is answered by the gateway itself: local pools in-process, remote pools
//! through [`remote::forward`] (pingora's connector, connection pool and health checks), and
//! every answer — success or error — leaves through the same writer with the same headers.
//! That is why this is an [`HttpServerApp`] on pingora's server sessions rather than a
//! `ProxyHttp`: the proxy framework's streaming phases, cache and modules were never entered,
//! yet its per-request state (a session with a cache, and a 12 KB future moved into a box on
//! every request) cost an eighth of a proxied request's instructions (callgrind, 124k → 109k).
//! For the same reason plain HTTP/1.1 requests are read and answered by the gateway's own
//! [`h1`] reader (59.5k → 45.5k); the handlers see either through [`Exchange`].

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use inference::InferError;
use inference::protocol::{self, Endpoint, ModelRef};
use pingora::ErrorType;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession as Session;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;

use crate::coalesce::Coalesced;
use crate::config::OnUnavailable;
use crate::config::Route;
use crate::errors::GatewayError;
use crate::h1;
use crate::keys::KeyInfo;
use crate::limits;
use crate::metrics::Metrics;
use crate::names::{
    INFERENCE_HEADER_LENGTH, RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET, X_CANARY,
    X_MODEL_VARIANT, X_MODEL_VERSION, X_REQUEST_ID,
};
use crate::ratelimit::Decision;
use crate::remote;
use crate::shadow::{self, Mirror};
use crate::simple;
use crate::split::{self, Variant};
use crate::state::{Backend, Snapshot};

pub struct Gateway {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Upstream connections for remote pools, kept alive between requests.
    pub connector: Arc<TransportConnector>,
    pub mirror: Mirror,
    /// The split served over the last minute, for `GET /admin/routes`.
    pub observed: Arc<crate::observed::Observed>,
    /// When a canary fallback was last logged (Unix seconds): at most one line per 10 s.
    pub fallback_logged: std::sync::atomic::AtomicU64,
    /// Rollouts watch every answer of the routes they move.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// Set when the server shuts down: connections waiting for their next request close.
    pub closing: Closing,
}

/// Shutdown, as seen by connections idle between requests (kept-alive HTTP/1 ones).
#[derive(Default)]
pub struct Closing {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Closing {
    fn start(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Returns once shutdown has begun.
    async fn wait(&self) {
        // Created before the flag is read: `notify_waiters` reaches it even before it is polled.
        let notified = self.notify.notified();
        if self.flag.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Per-request state, shared by the phases.
#[derive(Default)]
pub struct Ctx {
    request_id: String,
    started: Option<Instant>,
    /// The one config snapshot this request uses from start to end.
    snapshot: Option<Arc<Snapshot>>,
    route: Option<String>,
    variant: Option<Variant>,
    model_version: Option<String>,
    key: Option<Arc<KeyInfo>>,
    rate: Option<Decision>,
    /// The endpoint a remote pool's request went to, for the access log.
    upstream: Option<SocketAddr>,
    error: Option<GatewayError>,
    status: u16,
    /// Time in the model (local pool or remote answer), for the inference histogram.
    inference: Option<Duration>,
    /// Shadows this request was copied to (for the access log).
    shadows: usize,
    /// Counts the request as in flight until it ends (graceful shutdown waits for zero).
    _in_flight: Option<InFlight>,
    /// The HTTP/1 connection's last API key, kept from one request to the next.
    key_memo: Option<Box<crate::auth::KeyMemo>>,
}

/// Holds one count of `gateway_requests_in_flight` while it lives.
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: &prometheus::IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The kinds of request the gateway serves, from the path.
enum Target<'a> {
    Protocol(Endpoint<'a>),
    /// `POST /predict/{model}`
    Simple(&'a str),
}

fn parse_target(path: &str) -> Option<Target<'_>> {
    if let Some(model) = path.strip_prefix("/predict/") {
        return (!model.is_empty() && !model.contains('/')).then_some(Target::Simple(model));
    }
    Endpoint::parse(path).map(Target::Protocol)
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
    ) -> Result<(), GatewayError> {
        // 1. Size limits on what has been read so far: the headers.
        limits::check_headers(session.req_header(), snap.config.limits.max_header_bytes)?;

        // 2. What is being asked for; unknown paths and wrong methods are answered first.
        let path = session.req_header().uri.path().to_string();
        let target =
            parse_target(&path).ok_or_else(|| InferError::NotFound(format!("no route for {path}")))?;
        let kind = target_kind(&target);
        let method = session.req_header().method.clone();
        let allowed = match &target {
            Target::Protocol(e) => e.method(),
            Target::Simple(_) => "POST",
        };
        if method.as_str() != allowed {
            return Err(InferError::MethodNotAllowed {
                method: method.to_string(),
                path: path.clone(),
                allowed,
            }
            .into());
        }

        let model_ref = match target {
            Target::Protocol(Endpoint::Live) => {
                return self.keyless(session, ctx, snap, r#"{"live":true}"#.into()).await;
            }
            Target::Protocol(Endpoint::Ready) => {
                return self.keyless(session, ctx, snap, r#"{"ready":true}"#.into()).await;
            }
            Target::Protocol(Endpoint::Server) => {
                let body = serde_json::json!({
                    "name": "gateway",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data", "model_configuration"],
                });
                return self.keyless(session, ctx, snap, body.to_string()).await;
            }
            Target::Protocol(Endpoint::Model(m) | Endpoint::ModelReady(m) | Endpoint::ModelConfig(m)) => {
                self.limit_by_ip(session, ctx, snap)?;
                m
            }
            Target::Protocol(Endpoint::Infer(m)) => {
                self.authenticate_and_limit(session, ctx, snap).await?;
                m
            }
            Target::Simple(model) => {
                self.authenticate_and_limit(session, ctx, snap).await?;
                ModelRef { model, version: None }
            }
        };

        // 3. Route and variant.
        let route = snap
            .route(model_ref.model)
            .ok_or_else(|| InferError::NotFound(format!("unknown model {:?}", model_ref.model)))?;
        ctx.route = Some(route.model.clone());
        let variant = match model_ref.version {
            Some(v) => variant_for_version(route, snap, v)?,
            None => {
                let headers = &session.req_header().headers;
                let sticky_header = match &route.sticky {
                    crate::config::Sticky::Header(h) => headers.get(h.as_str()).map(|v| v.as_bytes()),
                    _ => None,
                };
                let request = split::Request {
                    x_canary: headers.get(X_CANARY).map(|v| v.as_bytes()),
                    key_digest: ctx.key.as_ref().map(|k| k.digest()),
                    sticky_header,
                };
                let chosen = split::choose(route, &request, split::random_bucket)?;
                // The weight (not a tester's x-canary) picked a canary that cannot serve:
                // stable answers instead, and it is said.
                if chosen == Variant::Canary && request.x_canary.is_none() {
                    self.fall_back_if_not_ready(snap, route)
                } else {
                    chosen
                }
            }
        };
        ctx.variant = Some(variant);
        let pool_name = match variant {
            Variant::Stable => &route.stable,
            Variant::Canary => {
                &route
                    .canary
                    .as_ref()
                    .expect("split chose an existing canary")
                    .pool
            }
        };
        let backend = snap
            .pools
            .get(pool_name)
            .expect("validated: routes name existing pools")
            .clone();
        let spec = &snap.config.pools[pool_name];
        ctx.model_version = Some(spec.version().to_string());

        // 4. Answer: in-process, or through the remote pool.
        let limit = snap.config.limits.max_body_bytes;
        match (backend, kind) {
            (Backend::Local(pool), kind) => {
                let meta = pool.metadata();
                match (kind, model_ref) {
                    (Kind::Infer, _) => {
                        let body = read_body(session, limit).await?;
                        let header_length = session
                            .req_header()
                            .headers
                            .get(INFERENCE_HEADER_LENGTH)
                            .map(|v| v.to_str().unwrap_or("?").to_string());
                        let request = protocol::decode_request(&body, header_length.as_deref())?;
                        let selected = protocol::select_outputs(meta, &request)?;
                        let id = request.id.clone().unwrap_or_else(|| ctx.request_id.clone());
                        let version = &meta.version;
                        let (outputs, shadows) = self
                            .infer_local(snap, ctx, route, &pool, request.inputs, body.len())
                            .await?;
                        let encoded =
                            protocol::encode_response(meta, &route.model, version, &id, &selected, &outputs);
                        let content_type = if encoded.json_len.is_some() {
                            "application/octet-stream"
                        } else {
                            "application/json"
                        };
                        let mut extra = Vec::new();
                        if let Some(n) = encoded.json_len {
                            extra.push((protocol::HEADER_LENGTH, n.to_string()));
                        }
                        self.respond(session, ctx, 200, content_type, Bytes::from(encoded.body), &extra)
                            .await;
                        self.mirror(snap, ctx, shadows, || Self::named(meta, outputs));
                    }
                    (Kind::Simple, _) => {
                        let body = read_body(session, limit).await?;
                        let features = simple::parse(&body)?;
                        let inputs = simple::to_inputs(meta, &features)?;
                        let (outputs, shadows) = self
                            .infer_local(snap, ctx, route, &pool, inputs, body.len())
                            .await?;
                        let named: Vec<(String, inference::Tensor)> =
                            meta.outputs.iter().map(|s| s.name.clone()).zip(outputs).collect();
                        let answer = simple::respond(&named, &features, &meta.version)?;
                        self.respond(session, ctx, 200, "application/json", Bytes::from(answer), &[])
                            .await;
                        let outputs = named.into_iter().map(|(_, t)| t).collect();
                        self.mirror(snap, ctx, shadows, || Self::named(meta, outputs));
                    }
                    (Kind::Metadata, m) => {
                        let versions = route_versions(route, snap);
                        let mut body = serde_json::from_str::<serde_json::Value>(
                            &inference::server::model_metadata(meta, versions),
                        )
                        .expect("metadata is JSON");
                        body["name"] = serde_json::json!(m.model);
                        self.respond_json(session, ctx, body.to_string()).await;
                    }
                    (Kind::Ready, m) => {
                        let body =
                            serde_json::json!({"name": m.model, "version": meta.version, "ready": true});
                        self.respond_json(session, ctx, body.to_string()).await;
                    }
                    (Kind::Config, _) => {
                        let body = inference::server::model_config(meta, pool.config().max_batch);
                        self.respond_json(session, ctx, body).await;
                    }
                }
                Ok(())
            }
            (Backend::Remote(pool), kind) => {
                if !pool.any_healthy() {
                    return Err(GatewayError::NoHealthyUpstream {
                        pool: pool.name.clone(),
                    });
                }
                let (method, path) = match kind {
                    Kind::Infer | Kind::Simple => ("POST", Cow::Borrowed(pool.infer_path())),
                    Kind::Metadata => ("GET", Cow::Owned(pool.upstream_path(""))),
                    Kind::Ready => ("GET", Cow::Owned(pool.upstream_path("/ready"))),
                    Kind::Config => ("GET", Cow::Owned(pool.upstream_path("/config"))),
                };
                let body = if method == "POST" {
                    read_body(session, limit).await?
                } else {
                    Bytes::new()
                };
                let headers = &session.req_header().headers;
                let header_str = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
                let mut features = None;
                let body = if kind == Kind::Simple {
                    let meta = pool.metadata().ok_or_else(|| {
                        InferError::NotReady(format!(
                            "pool {} has not yet learnt the model's signature from its upstream",
                            pool.name
                        ))
                    })?;
                    let f = simple::parse(&body)?;
                    let oip = simple::to_oip_body(&meta, &f)?;
                    features = Some(f);
                    Bytes::from(oip)
                } else {
                    body
                };
                let version = spec.version().to_string();
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
                    max_response_bytes: limit.max(1 << 20),
                };
                let started = Instant::now();
                let result = remote::forward(&pool, &self.connector, &out).await;
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
                let observed = (mirrored && answer.status == 200)
                    .then(|| (answer.body.clone(), answer.header_length.clone()));
                let primary = shadows.as_ref().map(|_| shadow::Primary::Oip {
                    status: answer.status,
                    body: answer.body.clone(),
                    header_length: answer.header_length.clone(),
                });
                let (body, content_type) = match (&features, answer.status) {
                    (Some(f), 200) => (
                        Bytes::from(simple::respond_from_oip(&answer.body, f, &version)?),
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
                        .then(|| shadow::compare::predictions_from_json(&body))
                        .flatten()
                        .or_else(|| {
                            let decoded = protocol::decode_response(&body, header_length.as_deref()).ok()?;
                            Some(shadow::compare::predictions(&decoded.outputs))
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
    }

    /// Runs a local pool, keeping a copy of the inputs when the route's shadows want one.
    /// A failed inference is still mirrored (the shadow's answer is worth recording).
    async fn infer_local(
        &self,
        snap: &Arc<Snapshot>,
        ctx: &mut Ctx,
        route: &Route,
        pool: &inference::Pool,
        inputs: Vec<inference::NamedTensor>,
        body_len: usize,
    ) -> Result<(Vec<inference::Tensor>, Option<Shadows>), GatewayError> {
        let picks = self.mirror.pick(snap, route, &pool.metadata().version, body_len);
        ctx.shadows = picks.len();
        let copy = (!picks.is_empty()).then(|| inputs.clone());
        let started = Instant::now();
        let result = pool.infer(inputs).await;
        ctx.inference = Some(started.elapsed());
        let shadows = copy.map(|inputs| (picks, shadow::Input::Tensors(inputs), started.elapsed()));
        match result {
            Ok(outputs) => {
                let named: Vec<(&str, &inference::Tensor)> = pool
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
                Err(e.into())
            }
        }
    }

    /// Class counts and confidence of a classifier's predictions, by route and variant.
    fn observe_predictions<O: shadow::compare::Output>(&self, ctx: &Ctx, route: &str, outputs: &[O]) {
        self.record_predictions(ctx, route, shadow::compare::predictions(outputs));
    }

    fn record_predictions(&self, ctx: &Ctx, route: &str, predictions: Vec<(i64, Option<f64>)>) {
        if predictions.is_empty() {
            return;
        }
        if let Some(series) = self.series(ctx) {
            for (class, top) in predictions {
                series.prediction(&self.metrics, class, top);
            }
            return;
        }
        let variant = ctx.variant.map_or("-", Variant::as_str);
        let confidence = self.metrics.confidence.with_label_values(&[route, variant]);
        for (class, top) in predictions {
            if let Some(p) = top {
                confidence.observe(p);
            }
            self.metrics
                .predictions
                .with_label_values(&[route, variant, crate::metrics::class_label(class)])
                .inc();
        }
    }

    /// The metric series of the request's route and variant, once both are known.
    fn series<'c>(&self, ctx: &'c Ctx) -> Option<&'c crate::metrics::VariantSeries> {
        let (Some(snap), Some(route), Some(variant), Some(version)) =
            (&ctx.snapshot, &ctx.route, ctx.variant, &ctx.model_version)
        else {
            return None;
        };
        snap.series.get(&self.metrics, route, variant, version)
    }

    /// Stable, when the canary the weight chose cannot serve (a local model failing every
    /// run, a remote pool without a healthy endpoint); counted, and logged at most every 10 s.
    fn fall_back_if_not_ready(&self, snap: &Snapshot, route: &Route) -> Variant {
        let Some(canary) = &route.canary else {
            return Variant::Stable;
        };
        if snap.pools.get(&canary.pool).is_none_or(Backend::ready) {
            return Variant::Canary;
        }
        self.metrics
            .canary_fallback
            .with_label_values(&[route.model.as_str()])
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.fallback_logged.load(std::sync::atomic::Ordering::Relaxed);
        if now >= last + 10
            && self
                .fallback_logged
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                route = %route.model,
                canary = %canary.pool,
                "canary pool not ready: its share of traffic goes to stable (gateway_canary_fallback_total)"
            );
        }
        Variant::Stable
    }

    /// Copies a request to its shadows, with what the primary answered (built only when
    /// there are shadows). Called after the client's answer is written.
    fn mirror(
        &self,
        snap: &Arc<Snapshot>,
        ctx: &Ctx,
        shadows: Option<Shadows>,
        primary: impl FnOnce() -> shadow::Primary,
    ) {
        if let Some((picks, input, latency)) = shadows {
            let job = shadow::Job {
                request_id: ctx.request_id.clone(),
                input,
                primary: primary(),
                primary_latency: latency,
            };
            self.mirror.spawn(snap.clone(), picks, job);
        }
    }

    /// Names the outputs of a local pool for [`Self::mirror`].
    fn named(meta: &inference::ModelMetadata, outputs: Vec<inference::Tensor>) -> shadow::Primary {
        shadow::Primary::Outputs(
            meta.outputs
                .iter()
                .zip(outputs)
                .map(|(spec, tensor)| inference::NamedTensor {
                    name: spec.name.clone(),
                    tensor,
                })
                .collect(),
        )
    }

    /// Health and server metadata: no key, limited per client IP.
    async fn keyless(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
        body: String,
    ) -> Result<(), GatewayError> {
        self.limit_by_ip(session, ctx, snap)?;
        self.respond_json(session, ctx, body).await;
        Ok(())
    }

    /// 200 with a JSON body.
    async fn respond_json(&self, session: &mut Exchange<'_>, ctx: &mut Ctx, body: String) {
        self.respond(session, ctx, 200, "application/json", Bytes::from(body), &[])
            .await;
    }

    fn limit_by_ip(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) else {
            return Ok(());
        };
        let decision = snap.limiters.check_ip(ip);
        self.limited(ctx, decision, "per_ip")
    }

    /// Records a rate-limit decision; a refusal is counted by tier (never by key or address).
    fn limited(&self, ctx: &mut Ctx, decision: Decision, tier: &str) -> Result<(), GatewayError> {
        ctx.rate = Some(decision);
        if decision.allowed {
            Ok(())
        } else {
            self.metrics.rate_limited.with_label_values(&[tier]).inc();
            Err(GatewayError::RateLimited(decision))
        }
    }

    async fn authenticate_and_limit(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        let key = crate::auth::authenticate(
            &snap.keys,
            &session.req_header().headers,
            ctx.key_memo.as_deref_mut(),
        )
        .inspect_err(|e| {
            let reason = match e {
                GatewayError::MissingKey => "missing",
                GatewayError::UnknownKey => "unknown",
                GatewayError::DisabledKey(_) => "disabled",
                _ => "other",
            };
            self.metrics.auth_failures.with_label_values(&[reason]).inc();
        })?;
        let decision = match &snap.shared_limiter {
            None => snap.limiters.check_key(&key.tier, key.digest()),
            Some(shared) => {
                let rate = snap.config.rate_limits.for_tier(&key.tier);
                match shared.check(rate, key.digest()).await {
                    Ok(d) => d,
                    Err(why) => {
                        let policy = shared.settings().on_unavailable;
                        self.metrics
                            .ratelimit_unavailable
                            .with_label_values(&[why.label(), policy.as_str()])
                            .inc();
                        match policy {
                            OnUnavailable::Open => snap.limiters.check_key(&key.tier, key.digest()),
                            OnUnavailable::Closed => {
                                ctx.key = Some(key);
                                return Err(GatewayError::LimiterUnavailable);
                            }
                        }
                    }
                }
            }
        };
        // Counted before the key moves into the context (its tier is the label).
        let refused = self.limited(ctx, decision, &key.tier);
        ctx.key = Some(key);
        refused
    }

    /// Writes a complete response with the gateway's headers.
    async fn respond(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(&'static str, String)],
    ) {
        ctx.status = status;
        // A response sent before the request body was read (a refusal) leaves bytes on the
        // connection that would be parsed as the next request: read a small declared body
        // first, so that the client keeps its connection (a refused client would otherwise
        // pay a new TLS handshake per request); close the connection in any other case.
        let closing = !session.is_body_done() && !drain_small_body(session).await;
        if closing {
            session.close_after();
        }
        let head = Head {
            content_type,
            length: body.len(),
            ctx,
            extra,
        };
        if session.write_response(status, &head, body).await.is_ok() && closing {
            linger(session).await;
        }
    }

    async fn respond_error(&self, session: &mut Exchange<'_>, ctx: &mut Ctx, e: GatewayError) {
        let mut extra = e.headers();
        if let Some(after) = e.retry_after() {
            extra.push(("retry-after", after.as_secs().max(1).to_string()));
        }
        let status = e.status();
        let body = Bytes::from(e.body());
        ctx.error = Some(e);
        self.respond(session, ctx, status, "application/json", body, &extra)
            .await;
    }
}

/// Bodies up to this size are read and dropped before a refusal, within [`DRAIN_TIMEOUT`].
const DRAIN_MAX_BYTES: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads and drops an HTTP/1 request body not yet read, when it declares a length of at most
/// [`DRAIN_MAX_BYTES`] and arrives within [`DRAIN_TIMEOUT`]. True when the connection can
/// carry another request. (HTTP/2 needs none of this: a stream ends on its own.)
async fn drain_small_body(session: &mut Exchange<'_>) -> bool {
    if session.is_http2() {
        return true;
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_none_or(|n| n > DRAIN_MAX_BYTES) {
        return false;
    }
    let drain = async {
        while session.read_request_body().await?.is_some() {}
        Ok::<(), String>(())
    };
    matches!(tokio::time::timeout(DRAIN_TIMEOUT, drain).await, Ok(Ok(()))) && session.is_body_done()
}

/// After a refusal on a connection that will close, the client's body is read and dropped for
/// at most this long, up to [`LINGER_MAX_BYTES`] (nginx's "lingering close").
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 4 << 20;

/// Reads what remains of a request body after its answer was sent, before the connection
/// closes. Closing a socket with unread bytes makes the kernel reset the connection, and a
/// reset destroys what the client had received but not yet read: a client still sending a
/// large body would see "connection reset" instead of the 401 or 413 it was sent.
async fn linger(session: &mut Exchange<'_>) {
    let drain = async {
        let mut read = 0;
        while read <= LINGER_MAX_BYTES {
            match session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The shadows a request goes to, its input, and the primary's latency.
type Shadows = (Vec<shadow::Pick>, shadow::Input, Duration);

/// Which protocol action a path asks for (the model-independent ones were answered before).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Infer,
    Simple,
    Metadata,
    Ready,
    Config,
}

fn target_kind(target: &Target<'_>) -> Kind {
    match target {
        Target::Simple(_) => Kind::Simple,
        Target::Protocol(Endpoint::ModelReady(_)) => Kind::Ready,
        Target::Protocol(Endpoint::ModelConfig(_)) => Kind::Config,
        Target::Protocol(Endpoint::Model(_)) => Kind::Metadata,
        _ => Kind::Infer,
    }
}

/// A versioned path pins the variant whose pool serves that version.
fn variant_for_version(route: &Route, snap: &Snapshot, version: &str) -> Result<Variant, GatewayError> {
    // The path's version as a number, when written as one would write it ("7", not "07").
    let asked = (version == "0" || !version.starts_with('0'))
        .then(|| version.parse::<u64>().ok())
        .flatten()
        .filter(|_| version.bytes().all(|b| b.is_ascii_digit()));
    let serves = |pool: &str| asked.is_some() && snap.config.pools.get(pool).map(|p| p.version()) == asked;
    if serves(&route.stable) {
        return Ok(Variant::Stable);
    }
    if let Some(c) = &route.canary
        && serves(&c.pool)
    {
        return Ok(Variant::Canary);
    }
    Err(InferError::NotFound(format!(
        "unknown version {version:?} of model {:?} (available: {})",
        route.model,
        route_versions(route, snap).join(", ")
    ))
    .into())
}

/// The versions a route serves (stable first).
fn route_versions(route: &Route, snap: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = std::iter::once(&route.stable)
        .chain(route.canary.iter().map(|c| &c.pool))
        .filter_map(|p| snap.config.pools.get(p).map(|s| s.version().to_string()))
        .collect();
    v.dedup();
    v
}

fn content_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole request body, refusing one over `limit` (413) as soon as it is known.
async fn read_body(session: &mut Exchange<'_>, limit: usize) -> Result<Bytes, GatewayError> {
    if content_length(session.req_header()).is_some_and(|n| n > limit) {
        return Err(InferError::PayloadTooLarge { limit }.into());
    }
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(InferError::PayloadTooLarge { limit }.into());
                }
                // The usual case, a body that came whole: kept as it is, not copied again.
                if body.is_empty() && session.is_body_done() {
                    return Ok(chunk);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(InferError::bad_request(format!("could not read the request body: {e}")).into());
            }
        }
    }
}

/// An answer's header fields: its type and length, `x-request-id`, the variant and version,
/// the rate-limit state, then `extra` (which replaces a field of the same name).
struct Head<'a> {
    content_type: &'a str,
    length: usize,
    ctx: &'a Ctx,
    extra: &'a [(&'static str, String)],
}

impl h1::Fields for Head<'_> {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        let ctx = self.ctx;
        let mut n = itoa::Buffer::new();
        f(b"content-type", self.content_type.as_bytes());
        f(b"content-length", n.format(self.length).as_bytes());
        f(X_REQUEST_ID.as_str().as_bytes(), ctx.request_id.as_bytes());
        if let Some(v) = ctx.variant {
            f(X_MODEL_VARIANT.as_str().as_bytes(), v.as_str().as_bytes());
        }
        if let Some(v) = &ctx.model_version {
            f(X_MODEL_VERSION.as_str().as_bytes(), v.as_bytes());
        }
        if let Some(d) = &ctx.rate {
            let replaced = |name: &HeaderName| self.extra.iter().any(|(k, _)| *k == name.as_str());
            for (name, value) in [
                (&RATELIMIT_LIMIT, u64::from(d.limit)),
                (&RATELIMIT_REMAINING, u64::from(d.remaining)),
                (&RATELIMIT_RESET, d.reset_secs),
            ] {
                if !replaced(name) {
                    f(name.as_str().as_bytes(), n.format(value).as_bytes());
                }
            }
        }
        for (k, v) in self.extra {
            f(k.as_bytes(), v.as_bytes());
        }
    }
}

impl Head<'_> {
    /// The same fields as a header map, for pingora's sessions (names in lower case, as
    /// HTTP/2 requires anyway; a value a header may not hold is left out).
    fn response_header(&self, status: u16) -> ResponseHeader {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = &mut parts.headers;
        headers.reserve(10);
        h1::Fields::each(self, &mut |name, value| {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(k, v);
            }
        });
        ResponseHeader::from(parts)
    }
}

/// One request's side of a connection: pingora's session (HTTP/2, and the HTTP/1 requests the
/// gateway's own reader hands over), or that reader ([`h1::Conn`]).
pub enum Exchange<'a> {
    Pingora(&'a mut Session),
    H1(&'a mut h1::Conn),
}

impl Exchange<'_> {
    fn req_header(&self) -> &RequestHeader {
        match self {
            Exchange::Pingora(s) => s.req_header(),
            Exchange::H1(c) => c.req_header(),
        }
    }

    async fn read_request_body(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Exchange::Pingora(s) => s.read_request_body().await.map_err(|e| e.to_string()),
            Exchange::H1(c) => c.read_body().await.map_err(|e| e.to_string()),
        }
    }

    fn is_body_done(&mut self) -> bool {
        match self {
            Exchange::Pingora(s) => s.is_body_done(),
            Exchange::H1(c) => c.is_body_done(),
        }
    }

    fn is_http2(&self) -> bool {
        matches!(self, Exchange::Pingora(s) if s.is_http2())
    }

    /// The answer about to be written ends the connection.
    fn close_after(&mut self) {
        match self {
            Exchange::Pingora(s) => s.set_keepalive(None),
            Exchange::H1(c) => c.close_after(),
        }
    }

    async fn write_response(&mut self, status: u16, head: &Head<'_>, body: Bytes) -> Result<(), ()> {
        match self {
            Exchange::Pingora(s) => {
                s.write_response_header(Box::new(head.response_header(status)))
                    .await
                    .map_err(drop)?;
                s.write_response_body(body, true).await.map_err(drop)
            }
            Exchange::H1(c) => c.write_response(status, head, &body).await.map_err(drop),
        }
    }

    fn response_status(&self) -> Option<u16> {
        match self {
            Exchange::Pingora(s) => s.response_written().map(|r| r.status.as_u16()),
            Exchange::H1(c) => c.response_status(),
        }
    }

    fn client_addr(&self) -> Option<&pingora::protocols::l4::socket::SocketAddr> {
        match self {
            Exchange::Pingora(s) => s.client_addr(),
            Exchange::H1(c) => c.client_addr(),
        }
    }

    fn body_bytes_read(&self) -> usize {
        match self {
            Exchange::Pingora(s) => s.body_bytes_read(),
            Exchange::H1(c) => c.body_bytes_read(),
        }
    }

    fn body_bytes_sent(&self) -> usize {
        match self {
            Exchange::Pingora(s) => s.body_bytes_sent(),
            Exchange::H1(c) => c.body_bytes_sent(),
        }
    }
}

impl Gateway {
    /// One request, from its header (already read) to its answer.
    async fn serve(&self, session: &mut Exchange<'_>, ctx: &mut Ctx) {
        ctx.started = Some(Instant::now());
        ctx._in_flight = Some(InFlight::enter(&self.metrics.in_flight));
        ctx.request_id = limits::request_id(session.req_header());
        let snap = self.state.load_full();
        ctx.snapshot = Some(snap.clone());
        if let Err(e) = self.handle(session, ctx, &snap).await {
            self.respond_error(session, ctx, e).await;
        }
    }

    /// A request pingora could not parse: the same JSON error as everything else, then the
    /// connection closes (where the next request would start is unknown).
    async fn refuse_unparsed(&self, session: &mut Session, e: &pingora::Error) {
        let error: GatewayError = InferError::bad_request(format!("malformed request: {e}")).into();
        let body = Bytes::from(error.body());
        let Ok(mut header) = ResponseHeader::build_no_case(error.status(), Some(4)) else {
            return;
        };
        let _ = header.append_header(http::header::CONTENT_TYPE, "application/json");
        let _ = header.append_header(http::header::CONTENT_LENGTH, body.len());
        let _ = header.append_header(X_REQUEST_ID, inference::server::new_request_id());
        let _ = session.write_error_response(header, body).await;
        self.metrics.errors.with_label_values(&[error.kind()]).inc();
    }

    fn log(&self, session: &Exchange<'_>, ctx: &Ctx) {
        let status = match ctx.status {
            0 => session.response_status().unwrap_or(0),
            s => s,
        };
        let route = ctx.route.as_deref().unwrap_or("-");
        let variant = ctx.variant.map_or("-", Variant::as_str);
        let elapsed = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        let m = &self.metrics;
        let version = ctx.model_version.as_deref().unwrap_or("-");
        if let (Some(r), Some(v)) = (&ctx.route, ctx.variant) {
            self.observed.record(r, v);
            self.rollouts.observe(r, v, status, elapsed);
        }
        if let Some(series) = self.series(ctx) {
            series.request(m, status, elapsed, ctx.inference);
        } else {
            // Refused before a variant was chosen (or for a route a reload removed).
            m.requests
                .with_label_values(&[route, variant, version, crate::metrics::status_class(status)])
                .inc();
            m.duration
                .with_label_values(&[route, variant])
                .observe(elapsed.as_secs_f64());
            if let Some(d) = ctx.inference {
                m.inference
                    .with_label_values(&[route, variant])
                    .observe(d.as_secs_f64());
            }
        }
        if let Some(err) = &ctx.error {
            m.errors.with_label_values(&[err.kind()]).inc();
        }
        let access_log = ctx.snapshot.as_ref().is_some_and(|s| s.config.access_log);
        if access_log {
            let req = session.req_header();
            let client = session.client_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(
                target: "access",
                request_id = %ctx.request_id,
                client = %client,
                method = %req.method,
                path = %req.uri.path(),
                status,
                route,
                variant,
                version = ctx.model_version.as_deref().unwrap_or("-"),
                tenant = ctx.key.as_ref().map_or("-", |k| k.tenant.as_str()),
                key = ctx.key.as_ref().map_or("-", |k| k.id.as_str()),
                upstream = ctx.upstream.map(|a| a.to_string()).unwrap_or_default(),
                error = ctx.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                ms = elapsed.as_secs_f64() * 1e3,
                bytes_in = session.body_bytes_read(),
                bytes_out = session.body_bytes_sent(),
                rate_limited = ctx.rate.is_some_and(|d| !d.allowed),
                rate_remaining = ctx.rate.map_or(-1, |d| i64::from(d.remaining)),
                shadows = ctx.shadows,
            );
        }
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    /// Called by pingora for each request: per HTTP/1 request on a kept-alive connection, per
    /// HTTP/2 stream. Returns the connection when it can carry another request.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: Session,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            // Biased: a request already buffered is served even when shutdown has begun.
            biased;
            read = session.read_request() => read,
            _ = self.closing.wait() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if e.etype() == &ErrorType::InvalidHTTPHeader {
                    self.refuse_unparsed(&mut session, &e).await;
                } else {
                    tracing::debug!("reading a request failed: {e}");
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            // Shutting down: this answer tells the client not to reuse the connection.
            session.set_keepalive(None);
        }
        if session.req_header().method == http::Method::CONNECT {
            // CONNECT changes how the rest of the connection is framed: answer, then close.
            session.set_keepalive(None);
        }
        let mut ctx = Ctx {
            key_memo: match session.take_connection_user_context() {
                Some(memo) => memo.downcast().ok(),
                None => (!session.is_http2()).then(Box::default),
            },
            ..Ctx::default()
        };
        let mut exchange = Exchange::Pingora(&mut session);
        self.serve(&mut exchange, &mut ctx).await;
        self.log(&exchange, &ctx);
        let mut settings = HttpPersistentSettings::for_session(&session);
        if let Some(memo) = ctx.key_memo.take() {
            settings.set_user_context(memo);
        }
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }

    /// Pingora calls this when shutdown begins.
    async fn http_cleanup(&self) {
        self.closing.start();
    }
}

impl Gateway {
    /// An HTTP/1 connection, read by the gateway's own reader ([`h1`]) until a request it does
    /// not serve; from there on, pingora's session has the connection (and what was read).
    async fn serve_h1(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut conn = h1::Conn::new(stream);
        let mut memo = Some(Box::default());
        loop {
            let next = tokio::select! {
                // Biased: a request already buffered is served even when shutdown has begun.
                biased;
                next = conn.next_request() => next,
                _ = self.closing.wait() => return None,
            };
            match next {
                h1::Next::Request => {}
                h1::Next::Closed => return None,
                h1::Next::Handoff => {
                    let (stream, read) = conn.into_handoff();
                    let stream: Stream = Box::new(Coalesced::with_prefix(stream, read));
                    return ServerApp::process_new(self, stream, shutdown).await;
                }
            }
            if *shutdown.borrow() {
                // Shutting down: this answer tells the client not to reuse the connection.
                conn.close_after();
            }
            let mut ctx = Ctx {
                key_memo: memo.take(),
                ..Ctx::default()
            };
            let mut exchange = Exchange::H1(&mut conn);
            self.serve(&mut exchange, &mut ctx).await;
            self.log(&exchange, &ctx);
            memo = ctx.key_memo.take();
            if !conn.reusable() {
                conn.shutdown().await;
                return None;
            }
        }
    }
}

/// What pingora's listener runs: HTTP/2 connections go to pingora's session, HTTP/1 ones to
/// the gateway's own reader first ([`Gateway::serve_h1`]).
pub struct Front(pub Arc<Gateway>);

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        match stream.selected_alpn_proto() {
            Some(ALPN::H2) => self.0.process_new(stream, shutdown).await,
            _ => self.0.serve_h1(stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        self.0.http_cleanup().await;
    }
}
