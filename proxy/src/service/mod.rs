//! The gateway's request flow: [`Gateway::serve`] hands each step to one module, in the order
//! of DESIGN.md, and [`Gateway::handle`] reads like that list:
//!
//! 1. sizes (the header block here; deadlines and connections before, in [`connection`] and
//!    [`crate::admission`]), the request id;
//! 2. what is asked for (path, method);
//! 3. the API key (with the client address's failed-authentication limit) and rate limits;
//! 4. the route in the one config snapshot the request sees, and the variant: `x-canary` or a
//!    versioned path (for keys allowed to choose) > sticky bucket > weight;
//! 5. the answer: a local pool ([`local`]) or a remote one ([`forward`]), body bytes and
//!    decoded tensors held in the in-flight budget;
//! 6. metrics, the access log, the rollout windows, and the shadows.
//!
//! Every request is answered by the gateway itself, and every answer — success or error —
//! leaves through the same writer with the same headers ([`exchange`]). That is why this is
//! an `HttpServerApp` on pingora's server sessions rather than a `ProxyHttp`: the proxy
//! framework's streaming phases, cache and modules were never entered, yet its per-request
//! state (a session with a cache, and a 12 KB future moved into a box on every request) cost
//! an eighth of a proxied request's instructions (callgrind, 124k → 109k). For the same
//! reason plain HTTP/1.1 requests are read and answered by the gateway's own [`crate::h1`]
//! reader (59.5k → 45.5k); the handlers see either through [`exchange::Exchange`].

pub mod connection;
pub mod exchange;
mod forward;
mod local;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use inference::InferError;
use inference::protocol::{Endpoint, ModelRef};
use pingora::apps::HttpServerOptions;
use pingora::connectors::TransportConnector;

use crate::admission::budget::Budget;
use crate::admission::connections::Connections;
use crate::config::OnUnavailable;
use crate::config::Route;
use crate::errors::GatewayError;
use crate::keys::KeyInfo;
use crate::limits;
use crate::metrics::Metrics;
use crate::names::X_CANARY;
use crate::ratelimit::Decision;
use crate::shadow::{self, Mirror};
use crate::split::{self, Variant};
use crate::state::{Backend, Snapshot};
pub use connection::{Closing, Front};
use exchange::{Exchange, Head, drain_small_body, linger};

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
    /// Set when the server shuts down: connections waiting for their next request drain.
    pub closing: Closing,
    /// Bytes of request bodies and decoded tensors in flight.
    pub budget: Arc<Budget>,
    /// Client connections: count, cap, handshake deadline.
    pub connections: Arc<Connections>,
    /// pingora's options for HTTP/2 sessions (their idle timeout).
    pub server_options: HttpServerOptions,
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
    /// The client chose the variant (`x-canary`, a versioned path): its answer says nothing
    /// of how the split serves, so the rollout gates do not count it.
    forced: bool,
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

        // 3. Who asks: health and metadata by address, inference by API key.
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

        // 4. Route and variant.
        let route = snap
            .route(model_ref.model)
            .ok_or_else(|| InferError::NotFound(format!("unknown model {:?}", model_ref.model)))?;
        ctx.route = Some(route.model.clone());
        let variant = self.choose_variant(session, ctx, snap, route, kind, model_ref)?;
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
        ctx.model_version = Some(snap.config.pools[pool_name].version().to_string());

        // 5. The answer: in-process, or through the remote pool.
        match backend {
            Backend::Local(pool) => {
                self.answer_local(session, ctx, snap, route, pool, (kind, model_ref))
                    .await
            }
            Backend::Remote(pool) => self.answer_remote(session, ctx, snap, route, pool, kind).await,
        }
    }

    /// The variant that answers. A versioned path pins the variant serving that version;
    /// otherwise `x-canary`, then stickiness, then the weight ([`split::choose`]). Choosing
    /// (a versioned inference, or `x-canary`) is for keys that `auth.may_choose_variant`
    /// allows: another key's `x-canary` is ignored (and counted), its versioned inference
    /// refused with 403.
    fn choose_variant(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
        route: &Route,
        kind: Kind,
        model_ref: ModelRef<'_>,
    ) -> Result<Variant, GatewayError> {
        let may_choose = ctx
            .key
            .as_ref()
            .is_some_and(|k| snap.config.may_choose_variant.allows(k));
        if let Some(v) = model_ref.version {
            if matches!(kind, Kind::Infer | Kind::Simple) {
                if !may_choose {
                    return Err(GatewayError::VariantChoiceNotAllowed {
                        model: route.model.clone(),
                    });
                }
                ctx.forced = true;
            }
            return variant_for_version(route, snap, v);
        }
        let headers = &session.req_header().headers;
        let sticky_header = match &route.sticky {
            crate::config::Sticky::Header(h) => headers.get(h.as_str()).map(|v| v.as_bytes()),
            _ => None,
        };
        let x_canary = headers.get(X_CANARY).map(|v| v.as_bytes());
        let x_canary = match x_canary {
            Some(_) if ctx.key.is_some() && !may_choose => {
                self.metrics
                    .variant_choice_ignored
                    .with_label_values(&[route.model.as_str()])
                    .inc();
                None
            }
            other => other,
        };
        ctx.forced = x_canary.is_some();
        let request = split::Request {
            x_canary,
            key_digest: ctx.key.as_ref().map(|k| k.digest()),
            sticky_header,
        };
        let chosen = split::choose(route, &request, split::random_bucket)?;
        // The weight (not a tester's x-canary) picked a canary that cannot serve: stable
        // answers instead, and it is said.
        Ok(if chosen == Variant::Canary && request.x_canary.is_none() {
            self.fall_back_if_not_ready(snap, route)
        } else {
            chosen
        })
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
                forced: ctx.forced,
            };
            self.mirror.spawn(snap.clone(), picks, job);
        }
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

    /// The client's address: the connection's peer (or its PROXY header's source), or, from
    /// a trusted proxy, the client it names in `X-Forwarded-For`.
    fn client_ip(&self, session: &Exchange<'_>, snap: &Snapshot) -> Option<IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let forwarded = session
            .req_header()
            .headers
            .get("x-forwarded-for")
            .map(|v| v.as_bytes());
        Some(snap.config.client_address.client_ip(peer, forwarded))
    }

    fn limit_by_ip(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        let Some(ip) = self.client_ip(session, snap) else {
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
        // An address that keeps failing is refused before its key is looked at.
        let ip = self.client_ip(session, snap).map(crate::ratelimit::IpKey::from);
        if let Some(ip) = ip
            && let Some(wait) = snap.limiters.auth_failures.refused(ip)
        {
            self.metrics.auth_failures.with_label_values(&["limited"]).inc();
            return Err(GatewayError::AuthFailuresLimited(wait));
        }
        let found = crate::auth::authenticate(
            &snap.keys,
            &session.req_header().headers,
            ctx.key_memo.as_deref_mut(),
        );
        let key = match found {
            Ok(key) => key,
            Err(e) => {
                let reason = match e {
                    GatewayError::MissingKey => "missing",
                    GatewayError::UnknownKey => "unknown",
                    GatewayError::DisabledKey(_) => "disabled",
                    _ => "other",
                };
                self.metrics.auth_failures.with_label_values(&[reason]).inc();
                // The failure that spends the address's allowance is refused as the next ones are.
                if reason != "other"
                    && let Some(ip) = ip
                    && snap.limiters.auth_failures.failed(ip)
                {
                    let wait = snap.limiters.auth_failures.refused(ip).unwrap_or(1);
                    return Err(GatewayError::AuthFailuresLimited(wait));
                }
                return Err(e);
            }
        };
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
        let closing = session.body_failed() || (!session.is_body_done() && !drain_small_body(session).await);
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
        if matches!(e, GatewayError::HeadersTooLarge { .. }) {
            // A client that sends more header than allowed is not kept.
            session.close_after();
        }
        if matches!(e, GatewayError::Infer(InferError::BodyTimeout { .. })) {
            self.metrics
                .connection_timeouts
                .with_label_values(&["body"])
                .inc();
        }
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
            if !ctx.forced {
                self.rollouts.observe(r, v, status, elapsed);
            }
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
pub(crate) fn route_versions(route: &Route, snap: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = std::iter::once(&route.stable)
        .chain(route.canary.iter().map(|c| &c.pool))
        .filter_map(|p| snap.config.pools.get(p).map(|s| s.version().to_string()))
        .collect();
    v.dedup();
    v
}
