//! The gateway's `ProxyHttp`: each phase hands its work to one module, so `request_filter`
//! reads like the request flow in DESIGN.md.
//!
//! Local pools are answered inside `request_filter` (no upstream: the response is written
//! there and pingora's proxy phases are skipped). Remote pools continue into pingora's
//! proxy phases: `upstream_peer` picks an endpoint, `upstream_request_filter` rewrites the
//! path to the pool's model and version, `fail_to_connect` allows one retry on a connect
//! failure, and `fail_to_proxy` turns upstream failures into 502/503/504 JSON errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use inference::protocol::{self, Endpoint, ModelRef};
use inference::{InferError, ModelMetadata};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::config::Route;
use crate::errors::GatewayError;
use crate::keys::KeyInfo;
use crate::limits;
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, RateLimiters};
use crate::remote::RemotePool;
use crate::simple::{self, Features};
use crate::split::{self, Variant};
use crate::state::{Backend, Snapshot};

pub struct Gateway {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub limiters: Arc<RateLimiters>,
    pub metrics: Arc<Metrics>,
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
    remote: Option<RemoteCall>,
    error: Option<GatewayError>,
    status: u16,
}

/// A request on its way to a remote pool.
struct RemoteCall {
    pool: Arc<RemotePool>,
    path: String,
    /// The endpoint of the current attempt.
    endpoint: Option<SocketAddr>,
    retried: bool,
    body_seen: usize,
    body_limit: usize,
    simple: Option<SimpleRemote>,
}

/// The simple JSON endpoint over a remote pool: bodies are converted both ways.
struct SimpleRemote {
    meta: Arc<ModelMetadata>,
    request: BytesMut,
    features: Option<Features>,
    upstream_status: u16,
    response: BytesMut,
}

/// What `request_filter` decided.
enum Flow {
    /// A response has been written.
    Done,
    /// Continue to the remote pool in `ctx.remote`.
    Proxy,
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
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
    ) -> Result<Flow, GatewayError> {
        // 1. Size limits on what has been read so far: the headers.
        limits::check_headers(session.req_header(), snap.config.limits.max_header_bytes)?;

        // 2. What is being asked for; unknown paths and wrong methods are answered first.
        let path = session.req_header().uri.path().to_string();
        let target =
            parse_target(&path).ok_or_else(|| InferError::NotFound(format!("no route for {path}")))?;
        let method = session.req_header().method.as_str().to_string();
        let allowed = match &target {
            Target::Protocol(e) => e.method(),
            Target::Simple(_) => "POST",
        };
        if method != allowed {
            return Err(InferError::MethodNotAllowed {
                method,
                path: path.clone(),
                allowed,
            }
            .into());
        }

        let model_ref = match target {
            Target::Protocol(Endpoint::Live) => {
                return self.keyless(session, ctx, r#"{"live":true}"#.into()).await;
            }
            Target::Protocol(Endpoint::Ready) => {
                return self.keyless(session, ctx, r#"{"ready":true}"#.into()).await;
            }
            Target::Protocol(Endpoint::Server) => {
                let body = serde_json::json!({
                    "name": "gateway",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data", "model_configuration"],
                });
                return self.keyless(session, ctx, body.to_string()).await;
            }
            Target::Protocol(Endpoint::Model(m) | Endpoint::ModelReady(m) | Endpoint::ModelConfig(m)) => {
                self.limit_by_ip(session, ctx)?;
                m
            }
            Target::Protocol(Endpoint::Infer(m)) => {
                self.authenticate_and_limit(session, ctx, snap)?;
                m
            }
            Target::Simple(model) => {
                self.authenticate_and_limit(session, ctx, snap)?;
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
                    x_canary: headers.get("x-canary").map(|v| v.as_bytes()),
                    key_digest: ctx.key.as_ref().map(|k| k.digest()),
                    sticky_header,
                };
                split::choose(route, &request, split::random_bucket)?
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
        match (backend, target_kind(&path)) {
            (Backend::Local(pool), kind) => {
                let meta = pool.metadata();
                match (kind, model_ref) {
                    (Kind::Infer, _) => {
                        let body = read_body(session, limit).await?;
                        let header_length = session
                            .req_header()
                            .headers
                            .get(protocol::HEADER_LENGTH)
                            .map(|v| v.to_str().unwrap_or("?").to_string());
                        let request = protocol::decode_request(&body, header_length.as_deref())?;
                        let selected = protocol::select_outputs(meta, &request)?;
                        let id = request.id.clone().unwrap_or_else(|| ctx.request_id.clone());
                        let outputs = pool.infer(request.inputs).await?;
                        let version = &meta.version;
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
                    }
                    (Kind::Simple, _) => {
                        let body = read_body(session, limit).await?;
                        let features = simple::parse(&body)?;
                        let inputs = simple::to_inputs(meta, &features)?;
                        let outputs = pool.infer(inputs).await?;
                        let named: Vec<(String, inference::Tensor)> =
                            meta.outputs.iter().map(|s| s.name.clone()).zip(outputs).collect();
                        let answer = simple::respond(&named, &features, &meta.version)?;
                        self.respond(session, ctx, 200, "application/json", Bytes::from(answer), &[])
                            .await;
                    }
                    (Kind::Metadata, m) => {
                        let versions = route_versions(route, snap);
                        let mut body = serde_json::from_str::<serde_json::Value>(
                            &inference::server::model_metadata(meta, versions),
                        )
                        .expect("metadata is JSON");
                        body["name"] = serde_json::json!(m.model);
                        self.respond(
                            session,
                            ctx,
                            200,
                            "application/json",
                            Bytes::from(body.to_string()),
                            &[],
                        )
                        .await;
                    }
                    (Kind::Ready, m) => {
                        let body =
                            serde_json::json!({"name": m.model, "version": meta.version, "ready": true});
                        self.respond(
                            session,
                            ctx,
                            200,
                            "application/json",
                            Bytes::from(body.to_string()),
                            &[],
                        )
                        .await;
                    }
                    (Kind::Config, _) => {
                        let body = inference::server::model_config(meta, pool.config().max_batch);
                        self.respond(session, ctx, 200, "application/json", Bytes::from(body), &[])
                            .await;
                    }
                }
                Ok(Flow::Done)
            }
            (Backend::Remote(pool), kind) => {
                if pool.select(None).is_none() {
                    return Err(GatewayError::NoHealthyUpstream {
                        pool: pool.name.clone(),
                    });
                }
                let declared = content_length(session.req_header());
                if declared.is_some_and(|n| n > limit) {
                    return Err(InferError::PayloadTooLarge { limit }.into());
                }
                let (path, simple) = match kind {
                    Kind::Infer => (pool.upstream_path("/infer"), None),
                    Kind::Metadata => (pool.upstream_path(""), None),
                    Kind::Ready => (pool.upstream_path("/ready"), None),
                    Kind::Config => (pool.upstream_path("/config"), None),
                    Kind::Simple => {
                        let meta = pool.metadata().ok_or_else(|| {
                            InferError::NotReady(format!(
                                "pool {} has not yet learnt the model's signature from its upstream",
                                pool.name
                            ))
                        })?;
                        let simple = SimpleRemote {
                            meta,
                            request: BytesMut::new(),
                            features: None,
                            upstream_status: 0,
                            response: BytesMut::new(),
                        };
                        (pool.upstream_path("/infer"), Some(simple))
                    }
                };
                ctx.remote = Some(RemoteCall {
                    pool,
                    path,
                    endpoint: None,
                    retried: false,
                    body_seen: 0,
                    body_limit: limit,
                    simple,
                });
                Ok(Flow::Proxy)
            }
        }
    }

    /// Health and server metadata: no key, limited per client IP.
    async fn keyless(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        body: String,
    ) -> Result<Flow, GatewayError> {
        self.limit_by_ip(session, ctx)?;
        self.respond(session, ctx, 200, "application/json", Bytes::from(body), &[])
            .await;
        Ok(Flow::Done)
    }

    fn limit_by_ip(&self, session: &Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
        let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) else {
            return Ok(());
        };
        let decision = self.limiters.check_ip(ip);
        ctx.rate = Some(decision);
        if decision.allowed {
            Ok(())
        } else {
            Err(GatewayError::RateLimited(decision))
        }
    }

    fn authenticate_and_limit(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        let key = crate::auth::authenticate(&snap.keys, &session.req_header().headers)?;
        let decision = self.limiters.check_key(&key.tier, key.digest());
        ctx.key = Some(key);
        ctx.rate = Some(decision);
        if decision.allowed {
            Ok(())
        } else {
            Err(GatewayError::RateLimited(decision))
        }
    }

    /// Writes a complete response with the gateway's headers.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(&'static str, String)],
    ) {
        let mut header = match ResponseHeader::build(status, Some(8)) {
            Ok(h) => h,
            Err(_) => return,
        };
        let _ = header.insert_header("content-type", content_type);
        let _ = header.insert_header("content-length", body.len().to_string());
        for (k, v) in extra {
            let _ = header.insert_header(*k, v.as_str());
        }
        add_gateway_headers(&mut header, ctx);
        ctx.status = status;
        // A response sent before the request body was read leaves bytes on the connection
        // that would be parsed as the next request: close it instead of reusing it.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        if session
            .write_response_header(Box::new(header), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(body), true).await;
        }
    }

    async fn respond_error(&self, session: &mut Session, ctx: &mut Ctx, e: GatewayError) {
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

/// Which protocol action a path asks for (the model-independent ones were answered before).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Infer,
    Simple,
    Metadata,
    Ready,
    Config,
}

fn target_kind(path: &str) -> Kind {
    match parse_target(path) {
        Some(Target::Simple(_)) => Kind::Simple,
        Some(Target::Protocol(Endpoint::ModelReady(_))) => Kind::Ready,
        Some(Target::Protocol(Endpoint::ModelConfig(_))) => Kind::Config,
        Some(Target::Protocol(Endpoint::Model(_))) => Kind::Metadata,
        _ => Kind::Infer,
    }
}

/// A versioned path pins the variant whose pool serves that version.
fn variant_for_version(route: &Route, snap: &Snapshot, version: &str) -> Result<Variant, GatewayError> {
    let version_of = |pool: &str| snap.config.pools.get(pool).map(|p| p.version().to_string());
    if version_of(&route.stable).as_deref() == Some(version) {
        return Ok(Variant::Stable);
    }
    if let Some(c) = &route.canary
        && version_of(&c.pool).as_deref() == Some(version)
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
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, GatewayError> {
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
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(InferError::bad_request(format!("could not read the request body: {e}")).into());
            }
        }
    }
}

/// `x-request-id`, the variant and version, and the rate-limit state.
fn add_gateway_headers(header: &mut ResponseHeader, ctx: &Ctx) {
    let _ = header.insert_header("x-request-id", ctx.request_id.as_str());
    if let Some(v) = ctx.variant {
        let _ = header.insert_header("x-model-variant", v.as_str());
    }
    if let Some(v) = &ctx.model_version {
        let _ = header.insert_header("x-model-version", v.as_str());
    }
    if let Some(d) = &ctx.rate {
        for (k, v) in d.headers() {
            let _ = header.insert_header(k, v);
        }
    }
}

/// Maps a pingora failure on the way to or from an upstream to the gateway's error.
fn upstream_error(e: &Error, remote: Option<&RemoteCall>) -> GatewayError {
    let pool = remote.map_or_else(|| "?".to_string(), |r| r.pool.name.clone());
    match e.etype() {
        ErrorType::HTTPStatus(413) => InferError::PayloadTooLarge {
            limit: remote.map_or(0, |r| r.body_limit),
        }
        .into(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => GatewayError::GatewayTimeout {
            pool,
            timeout_ms: remote.map_or(0, |r| r.pool.spec.timeout.as_millis()),
        },
        ErrorType::ConnectTimedout => GatewayError::BadGateway {
            pool,
            reason: "connect timed out".into(),
        },
        ErrorType::ConnectRefused => GatewayError::BadGateway {
            pool,
            reason: "connection refused".into(),
        },
        _ => GatewayError::BadGateway {
            pool,
            reason: e.etype().as_str().to_string(),
        },
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        ctx.started = Some(Instant::now());
        ctx.request_id = limits::request_id(session.req_header());
        let snap = self.state.load_full();
        ctx.snapshot = Some(snap.clone());
        match self.handle(session, ctx, &snap).await {
            Ok(Flow::Done) => Ok(true),
            Ok(Flow::Proxy) => Ok(false),
            Err(e) => {
                self.respond_error(session, ctx, e).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        let remote = ctx
            .remote
            .as_mut()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        // On the retry, avoid the endpoint that just refused us (if another is healthy).
        let avoid = if remote.retried { remote.endpoint } else { None };
        let Some(addr) = remote.pool.select(avoid).or_else(|| remote.pool.select(None)) else {
            ctx.error = Some(GatewayError::NoHealthyUpstream {
                pool: remote.pool.name.clone(),
            });
            return Err(Error::explain(ErrorType::HTTPStatus(503), "no healthy endpoint"));
        };
        remote.endpoint = Some(addr);
        Ok(remote.pool.peer(addr))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let Some(remote) = &ctx.remote else { return Ok(()) };
        let uri: http::Uri = remote
            .path
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream path"))?;
        upstream.set_uri(uri);
        if let Some(addr) = remote.endpoint {
            upstream.insert_header("host", addr.to_string())?;
        }
        // The client's key is for the gateway; upstream servers never see it.
        upstream.remove_header("authorization");
        upstream.remove_header("x-api-key");
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if remote.simple.is_some() {
            // The body is rewritten (features → tensors), so its length changes.
            upstream.remove_header("content-length");
            upstream.insert_header("transfer-encoding", "chunked")?;
            upstream.insert_header("content-type", "application/json")?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let Some(remote) = ctx.remote.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body.as_ref() {
            remote.body_seen += chunk.len();
            if remote.body_seen > remote.body_limit {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the limit",
                ));
            }
        }
        if let Some(simple) = remote.simple.as_mut() {
            if let Some(chunk) = body.take() {
                simple.request.extend_from_slice(&chunk);
            }
            if end_of_stream {
                let converted = simple::parse(&simple.request).and_then(|f| {
                    let oip = simple::to_oip_body(&simple.meta, &f)?;
                    simple.features = Some(f);
                    Ok(oip)
                });
                match converted {
                    Ok(oip) => *body = Some(Bytes::from(oip)),
                    Err(e) => {
                        ctx.error = Some(e.into());
                        return Err(Error::explain(ErrorType::HTTPStatus(400), "bad simple request"));
                    }
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.status = response.status.as_u16();
        add_gateway_headers(response, ctx);
        if let Some(simple) = ctx.remote.as_mut().and_then(|r| r.simple.as_mut()) {
            simple.upstream_status = response.status.as_u16();
            response.remove_header("content-length");
            response.insert_header("content-type", "application/json")?;
            if !session.is_http2() {
                response.insert_header("transfer-encoding", "chunked")?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<Duration>> {
        let Some(remote) = ctx.remote.as_mut() else {
            return Ok(None);
        };
        let version = ctx.model_version.clone().unwrap_or_default();
        let Some(simple) = remote.simple.as_mut() else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            simple.response.extend_from_slice(&chunk);
        }
        if end_of_stream {
            let upstream = std::mem::take(&mut simple.response).freeze();
            *body = Some(match (simple.upstream_status, &simple.features) {
                (200, Some(f)) => match simple::respond_from_oip(&upstream, f, &version) {
                    Ok(answer) => Bytes::from(answer),
                    Err(e) => Bytes::from(GatewayError::from(e).body()),
                },
                // Upstream errors are already `{"error": ...}`: pass them on unchanged.
                _ => upstream,
            });
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // At most one retry, and only here: the request has not reached any server yet, so
        // sending it again cannot run it twice.
        if let Some(remote) = ctx.remote.as_mut()
            && !remote.retried
        {
            remote.retried = true;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Once a request may have reached a server, it is never retried: inference is not
        // known to be idempotent and the client can decide.
        let mut e = e.more_context(format!("upstream {peer}"));
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let error = ctx
            .error
            .take()
            .unwrap_or_else(|| upstream_error(e, ctx.remote.as_ref()));
        let status = error.status();
        self.respond_error(session, ctx, error).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = match ctx.status {
            0 => session.response_written().map_or(0, |r| r.status.as_u16()),
            s => s,
        };
        let route = ctx.route.as_deref().unwrap_or("-");
        let variant = ctx.variant.map_or("-", Variant::as_str);
        let elapsed = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        let m = &self.metrics;
        m.requests
            .with_label_values(&[route, variant, &status.to_string()])
            .inc();
        m.duration
            .with_label_values(&[route, variant])
            .observe(elapsed.as_secs_f64());
        if let Some(err) = &ctx.error {
            m.errors.with_label_values(&[err.kind()]).inc();
        } else if e.is_some() {
            m.errors.with_label_values(&["proxy"]).inc();
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
                upstream = ctx.remote.as_ref().and_then(|r| r.endpoint).map(|a| a.to_string()).unwrap_or_default(),
                error = ctx.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                ms = elapsed.as_secs_f64() * 1e3,
            );
        }
    }
}
