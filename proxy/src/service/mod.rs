//! The gateway's request flow: [`Gateway::serve`] hands each step to one module, in the order
//! `docs/architecture.md` follows, and [`Gateway::handle`] reads like that list:
//!
//! 1. sizes (the header block here; deadlines and connections before, in [`connection`] and
//!    [`crate::admission`]), the request id;
//! 2. what is asked for (path, method);
//! 3. who asks ([`admit`]): the API key (after the client address's failed-authentication
//!    limit) and rate limits; health and metadata by address;
//! 4. the route in the one config snapshot the request sees, and the variant ([`variant`]):
//!    `x-canary` or a versioned path (for keys allowed to choose) > sticky bucket > weight;
//! 5. the answer: a local pool ([`local`]) or a remote one ([`forward`]), body bytes and
//!    decoded tensors held in the in-flight budget; `/predict` converted by [`predict`];
//! 6. after the answer ([`record`]): metrics, the access log, the rollout windows, the
//!    input and prediction for drift and what feedback will need to join, and the shadows.
//!    Every answer leaves through [`respond`]. Labels arrive later ([`feedback`]).
//!
//! Every request is answered by the gateway itself, and every answer — success or error —
//! leaves through the same writer with the same headers ([`exchange`]). That is why this is
//! an `HttpServerApp` on pingora's server sessions rather than a `ProxyHttp`: the proxy
//! framework's streaming phases, cache and modules were never entered, yet its per-request
//! state (a session with a cache, and a 12 KB future moved into a box on every request) cost
//! an eighth of a proxied request's instructions (callgrind, 124k → 109k). For the same
//! reason plain HTTP/1.1 requests are read and answered by the gateway's own [`crate::http::h1`]
//! reader (59.5k → 45.5k); the handlers see either through [`exchange::Exchange`].

mod admit;
pub mod connection;
pub mod exchange;
mod feedback;
mod forward;
mod grpc;
mod local;
pub mod predict;
mod record;
mod respond;
mod seen;
mod variant;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use inference::InferError;
use inference::protocol::metadata::{ServerMetadata, to_json};
use inference::protocol::{Endpoint, ModelRef};
use pingora::apps::HttpServerOptions;
use pingora::connectors::TransportConnector;

use crate::admission::budget::Budget;
use crate::admission::connections::Connections;
use crate::admission::limits;
use crate::config::Variant;
use crate::config::keys::KeyInfo;
use crate::errors::Decision;
use crate::errors::GatewayError;
use crate::routing::snapshot::{Backend, Snapshot};
use crate::shadow::Mirror;
use crate::telemetry::metrics::Metrics;
pub use connection::{Closing, Front};
use exchange::Exchange;

pub struct Gateway {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Upstream connections for remote pools, kept alive between requests.
    pub connector: Arc<TransportConnector>,
    pub mirror: Mirror,
    /// The split served over the last minute, for `GET /admin/routes`.
    pub observed: Arc<crate::telemetry::observed::Observed>,
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
    /// Input drift windows, feedback joins, accuracy.
    pub quality: Arc<crate::quality::Quality>,
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
    /// The prediction cache's answer to this request ("hit", "miss"), when its route and
    /// pool cache: the `x-cache` field and the access log.
    cache: Option<&'static str>,
    /// A cache hit whose answer may be kept for its request body (service/seen.rs).
    seen: Option<seen::Seen>,
    /// The drift window this request's input and prediction go to (sampled requests only).
    drift: Option<Arc<crate::quality::drift::Window>>,
    /// Counts the request as in flight until it ends (graceful shutdown waits for zero).
    _in_flight: Option<InFlight>,
    /// A gRPC call: its method (`ModelInfer`, …, as a metric label) and, once answered, its
    /// status code's name.
    grpc: Option<(&'static str, &'static str)>,
    /// A gRPC client's deadline (`grpc-timeout`): when the gateway gives up on the model,
    /// and the limit the client set.
    deadline: Option<(Instant, Duration)>,
    /// The HTTP/1 connection's last API key, kept from one request to the next.
    key_memo: Option<Box<crate::admission::auth::KeyMemo>>,
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
    /// `POST /v2/models/{model}/feedback`: labels for earlier predictions.
    Feedback(&'a str),
}

fn parse_target(path: &str) -> Option<Target<'_>> {
    if let Some(model) = path.strip_prefix("/predict/") {
        return (!model.is_empty() && !model.contains('/')).then_some(Target::Simple(model));
    }
    if let Some(model) = path
        .strip_prefix("/v2/models/")
        .and_then(|rest| rest.strip_suffix("/feedback"))
    {
        return (!model.is_empty() && !model.contains('/')).then_some(Target::Feedback(model));
    }
    Endpoint::parse(path).map(Target::Protocol)
}

impl Gateway {
    /// One request, from its header (already read) to its answer.
    async fn serve(&self, session: &mut Exchange<'_>, ctx: &mut Ctx) {
        ctx.started = Some(Instant::now());
        crate::shadow::client_request_seen();
        ctx._in_flight = Some(InFlight::enter(&self.metrics.in_flight));
        ctx.request_id = limits::request_id(session.req_header());
        let snap = self.state.load_full();
        ctx.snapshot = Some(snap.clone());
        if grpc::is_grpc(session) {
            if let Err(e) = self.handle_grpc(session, ctx, &snap).await {
                self.respond_grpc_error(session, ctx, e).await;
            }
        } else if let Err(e) = self.handle(session, ctx, &snap).await {
            self.respond_error(session, ctx, e).await;
        }
    }

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
            Target::Simple(_) | Target::Feedback(_) => "POST",
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
                let body = ServerMetadata::of("gateway");
                return self.keyless(session, ctx, snap, to_json(&body)).await;
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
            Target::Feedback(model) => {
                self.authenticate_and_limit(session, ctx, snap).await?;
                return self.answer_feedback(session, ctx, snap, model).await;
            }
        };

        // 4. Route and variant.
        let route = snap
            .route(model_ref.model)
            .ok_or_else(|| InferError::NotFound(format!("unknown model {:?}", model_ref.model)))?;
        ctx.route = Some(route.model.clone());
        let variant = self.choose_variant(session, ctx, snap, route, kind, model_ref)?;
        ctx.variant = Some(variant);
        let pool_name = route.pool(variant);
        let backend = snap
            .pools
            .get(pool_name)
            .expect("validated: routes name existing pools")
            .clone();
        ctx.model_version = Some(snap.config.pools[pool_name].version().to_string());
        if matches!(kind, Kind::Infer | Kind::Simple) {
            ctx.drift = self.drift_window(ctx, snap, pool_name);
        }

        // 5. The answer: from tensors (in process, or a `grpc` pool), or a body forwarded.
        match backend {
            Backend::Remote(pool) if !pool.is_grpc() => {
                self.answer_remote(session, ctx, snap, route, pool, kind).await
            }
            backend => {
                let engine = local::Engine::of(backend)?;
                self.answer_local(session, ctx, snap, route, engine, (kind, model_ref))
                    .await
            }
        }
    }
}

/// Which protocol action a path asks for (the model-independent ones were answered before).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Infer,
    Simple,
    Metadata,
    Ready,
    Config,
}

fn target_kind(target: &Target<'_>) -> Kind {
    match target {
        Target::Simple(_) | Target::Feedback(_) => Kind::Simple,
        Target::Protocol(Endpoint::ModelReady(_)) => Kind::Ready,
        Target::Protocol(Endpoint::ModelConfig(_)) => Kind::Config,
        Target::Protocol(Endpoint::Model(_)) => Kind::Metadata,
        _ => Kind::Infer,
    }
}
