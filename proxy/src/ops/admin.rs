//! The admin listener (default 127.0.0.1:9901, never the public port): Prometheus metrics,
//! health, and the routes in force — for operators and their tooling.
//!
//! - `GET /metrics`  Prometheus text format
//! - `GET /health/live` (also `/healthz`)  200 while the process serves
//! - `GET /health/ready` (also `/readyz`)  200 when every route's stable pool can serve (a
//!   local model that runs, a remote pool with a healthy endpoint); 503 and what is not ready
//!   otherwise. Canaries and shadows that cannot serve are listed as `degraded` (their routes
//!   fall back to stable) without failing readiness.
//! - `GET /health/startup`  200 once the config is loaded and every pool warmed (the listener
//!   only exists from then on)
//! - `GET /admin/routes`  weights in force and the split served over the last minute
//! - `GET /admin/config` (also `/config`)  the routes, weights, stickiness, shadows and pools
//!   in force (no keys), with the reload status: generation, content hash, when it was
//!   loaded, the last refused reload and its errors, settings waiting for a restart
//! - `GET /admin/config/diff`  what each recent reload changed, newest first
//! - `POST /admin/reload`  reload now (as the file watcher and SIGHUP do); 200 when applied or
//!   unchanged, 422 with every error when refused
//! - `GET /admin/rollouts`  every rollout: status, step, weight, the open window's figures,
//!   decisions with their reasons
//! - `POST /admin/rollouts/{route}/{pause|resume|promote|abort}`  the operator's word (404:
//!   no such rollout; 409: not possible in its state)
//! - `GET /admin/shadow/report[?route=&since=1h]`  shadow comparisons, JSON
//! - `GET /admin/shadow/report.html[?route=&since=]`  the same as a self-contained page
//!
//! A request whose `Host` is neither the listener's address, `localhost` (on a loopback or
//! wildcard listener) nor a name in `listen.admin_hosts` is refused with 403, and so is a
//! `POST` whose `Origin` is not one of those: a web page in an operator's browser cannot
//! reach the listener through DNS rebinding, nor change anything with a cross-site form.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::{PoolSpec, Sticky};
use crate::reload::{Outcome, Reloader, Trigger};
use crate::routing::snapshot::{Backend, Snapshot};
use crate::shadow::store::Recorder;
use crate::shadow::{html, report};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::observed::Observed;

pub struct Admin {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub reloader: Arc<Reloader>,
    pub observed: Arc<Observed>,
    pub token: Option<String>,
    pub connections: Arc<crate::admission::connections::Connections>,
    pub budget: Arc<crate::admission::budget::Budget>,
    pub quality: Arc<crate::quality::Quality>,
}

/// Whether `host` (a `Host` header, or an `Origin`'s host and port) names this listener:
/// its own address, `localhost` when it listens on loopback or everywhere, an address of
/// this machine when it listens everywhere, or a configured name.
fn host_allowed(host: &str, listener: std::net::SocketAddr, names: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    if names.iter().any(|n| n.eq_ignore_ascii_case(&host)) {
        return true;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:9901
        match rest.split_once(']') {
            Some((addr, tail)) => (addr, tail.strip_prefix(':')),
            None => return false,
        }
    } else if host.matches(':').count() > 1 {
        (host.as_str(), None)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host.as_str(), None),
        }
    };
    if port.is_some_and(|p| p.parse::<u16>().ok() != Some(listener.port())) {
        return false;
    }
    if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return true;
    }
    let ip = listener.ip();
    match name.parse::<std::net::IpAddr>() {
        Ok(literal) => literal == ip || ip.is_unspecified(),
        Err(_) => name == "localhost" && (ip.is_loopback() || ip.is_unspecified()),
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static parts are valid")
}

impl Admin {
    /// Writes what the store has pending, then reads the report (off the async threads).
    async fn shadow_report(&self, query: Option<&str>, as_html: bool) -> http::Response<Vec<u8>> {
        let q = match report::Query::from_params(query) {
            Ok(q) => q,
            Err(e) => {
                return reply(
                    400,
                    "application/json",
                    inference::error::error_body(&e).into_bytes(),
                );
            }
        };
        self.recorder.flush(std::time::Duration::from_secs(5)).await;
        let path = self.recorder.path.clone();
        let built = tokio::task::spawn_blocking(move || report::read(&path, &q)).await;
        match built {
            Ok(Ok(r)) if as_html => {
                use crate::shadow::quality_html;
                let quality = quality_html::section(&self.quality_json());
                let sections = [(quality_html::ID, quality_html::TITLE)];
                reply(
                    200,
                    "text/html; charset=utf-8",
                    html::page_with(&r, &quality, &sections).into_bytes(),
                )
            }
            Ok(Ok(r)) => reply(
                200,
                "application/json",
                serde_json::to_vec_pretty(&r).expect("reports serialize"),
            ),
            Ok(Err(e)) => reply(
                503,
                "application/json",
                inference::error::error_body(&e).into_bytes(),
            ),
            Err(e) => reply(
                500,
                "application/json",
                inference::error::error_body(&format!("report failed: {e}")).into_bytes(),
            ),
        }
    }

    /// Gauges are read at scrape time rather than kept up to date on every request.
    fn refresh_gauges(&self, snap: &Snapshot) {
        // Reset first: pools and routes a reload removed must not linger.
        self.metrics.queue_depth.reset();
        self.metrics.healthy_endpoints.reset();
        self.metrics.pool_ready.reset();
        for (name, backend) in &snap.pools {
            match backend {
                Backend::Local(p) => self
                    .metrics
                    .queue_depth
                    .with_label_values(&[name])
                    .set(p.queue_depth() as i64),
                Backend::Remote(r) => self
                    .metrics
                    .healthy_endpoints
                    .with_label_values(&[name])
                    .set(r.healthy_endpoints() as i64),
            }
        }
        for (name, backend) in &snap.pools {
            self.metrics
                .pool_ready
                .with_label_values(&[name])
                .set(i64::from(backend.ready()));
        }
        self.metrics.canary_weight.reset();
        for r in snap.config.routes.values() {
            self.metrics
                .canary_weight
                .with_label_values(&[r.model.as_str()])
                .set(r.canary.as_ref().map_or(0, |c| i64::from(c.weight)));
        }
        self.metrics
            .tracked_clients
            .with_label_values(&["all"])
            .set(snap.limiters.tracked() as i64);
        self.metrics.connections_open.set(self.connections.open() as i64);
        self.metrics.inflight_bytes.set(self.budget.used() as i64);
        self.metrics
            .shadow_store_backlog
            .set(self.recorder.backlog_bytes() as i64);
        self.metrics
            .shadow_store_lag
            .set(self.recorder.lag().as_secs_f64());
        if let Some(shared) = &snap.shared_limiter {
            self.metrics.set_redis_up(shared.up());
        }
        let cache = &self.metrics.cache;
        cache.bytes.reset();
        cache.entries.reset();
        for (route, c) in &snap.caches {
            c.settle();
            let t = c.take_counts();
            let route = route.as_str();
            cache.requests.with_label_values(&[route, "hit"]).inc_by(t.hits);
            cache
                .requests
                .with_label_values(&[route, "miss"])
                .inc_by(t.misses);
            cache
                .evictions
                .with_label_values(&[route, "size"])
                .inc_by(t.evicted_size);
            cache
                .evictions
                .with_label_values(&[route, "expired"])
                .inc_by(t.expired);
            cache.bytes.with_label_values(&[route]).set(c.bytes() as i64);
            cache.entries.with_label_values(&[route]).set(c.len() as i64);
        }
    }

    /// `(problems, degraded, pools)`: stable pools that cannot serve (readiness fails),
    /// canary and shadow pools that cannot (their routes fall back), and every pool's state.
    fn readiness(snap: &Snapshot) -> (Vec<String>, Vec<String>, serde_json::Value) {
        let why = |backend: &Backend| match backend {
            Backend::Local(p) if !p.healthy() => Some("its model failed its last runs".to_string()),
            Backend::Remote(r) if r.healthy_endpoints() == 0 => Some("no healthy endpoint".to_string()),
            _ => None,
        };
        let (mut problems, mut degraded) = (Vec::new(), Vec::new());
        for route in snap.config.routes.values() {
            let roles = std::iter::once(("stable", &route.stable))
                .chain(route.canary.iter().map(|c| ("canary", &c.pool)))
                .chain(route.shadows.iter().map(|s| ("shadow", &s.pool)));
            for (role, pool) in roles {
                if let Some(reason) = snap.pools.get(pool).and_then(why) {
                    let line = format!("route {}: {role} pool {pool}: {reason}", route.model);
                    if role == "stable" {
                        problems.push(line);
                    } else {
                        degraded.push(line);
                    }
                }
            }
        }
        let pools: serde_json::Map<String, serde_json::Value> = snap
            .pools
            .iter()
            .map(|(name, b)| (name.clone(), json!({"ready": b.ready(), "reason": why(b)})))
            .collect();
        (problems, degraded, pools.into())
    }

    /// `GET /admin/quality`: drift, accuracy and the verdict per route; the verdict's 5xx
    /// rates come from the request counters (read from the family, so that no series is made).
    pub fn quality_json(&self) -> serde_json::Value {
        use prometheus::core::Collector;
        let families = self.metrics.requests.collect();
        let outcomes = |route: &str, variant: &str, version: &str| {
            let (mut all, mut errors) = (0u64, 0u64);
            for m in families.iter().flat_map(|f| f.get_metric()) {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                if label("route") == route && label("variant") == variant && label("version") == version {
                    let n = m.get_counter().get_value() as u64;
                    all += n;
                    if label("status_class") == "5xx" {
                        errors += n;
                    }
                }
            }
            (all, errors)
        };
        self.quality.summary(outcomes)
    }

    fn routes_json(&self, snap: &Snapshot) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = snap
            .config
            .routes
            .values()
            .map(|r| {
                let (stable, canary) = self.observed.last_minute(&r.model);
                let total = stable + canary;
                json!({
                    "model": r.model,
                    "stable": r.stable,
                    "canary": r.canary.as_ref().map(|c| json!({"pool": c.pool, "weight": c.weight})),
                    "observed_last_minute": {
                        "stable": stable,
                        "canary": canary,
                        "canary_share": if total > 0 { json!(canary as f64 / total as f64) } else { json!(null) },
                    },
                    "cache": snap.caches.get(&r.model).map(|c| {
                        let (hits, misses) = c.totals();
                        let lookups = hits + misses;
                        json!({
                            "ttl_s": c.spec().ttl.as_secs_f64(),
                            "max_bytes": c.spec().max_bytes,
                            "bytes": c.bytes(),
                            "entries": c.len(),
                            "hits": hits,
                            "misses": misses,
                            "hit_ratio": if lookups > 0 { json!(hits as f64 / lookups as f64) } else { json!(null) },
                        })
                    }),
                })
            })
            .collect();
        json!({"generation": self.reloader.status().generation, "routes": routes})
    }

    /// The admin token, when one is set, on `/admin/` paths (constant-time comparison).
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else { return true };
        let headers = &session.req_header().headers;
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()));
        presented.is_some_and(|p| {
            constant_time_eq::constant_time_eq_32(
                &crate::config::keys::digest(p),
                &crate::config::keys::digest(token),
            )
        })
    }

    fn config_json(snap: &Snapshot) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = snap
            .config
            .routes
            .values()
            .map(|r| {
                json!({
                    "model": r.model,
                    "stable": r.stable,
                    "canary": r.canary.as_ref().map(|c| json!({"pool": c.pool, "weight": c.weight})),
                    "sticky": match &r.sticky { Sticky::None => json!("none"), Sticky::ApiKey => json!("api_key"), Sticky::Header(h) => json!({"header": h}) },
                    "shadows": r.shadows.iter().map(|s| json!({"pool": s.pool, "percent": s.percent})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let pools: serde_json::Map<String, serde_json::Value> = snap
            .config
            .pools
            .iter()
            .map(|(name, spec)| {
                let v = match (spec, snap.pools.get(name)) {
                    (PoolSpec::Local(l), _) => json!({"kind": "local", "model": l.model, "version": l.version, "instances": l.pool.instances, "max_batch": l.pool.max_batch}),
                    (PoolSpec::Http(h), Some(Backend::Remote(r))) => json!({"kind": h.kind(), "model": h.model, "version": h.version, "endpoints": h.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(), "addresses": r.addresses().iter().map(|(a, ready)| json!({"address": a.to_string(), "healthy": ready})).collect::<Vec<_>>(), "healthy_endpoints": r.healthy_endpoints()}),
                    (PoolSpec::Http(h), _) => json!({"kind": h.kind(), "model": h.model, "version": h.version}),
                };
                (name.clone(), v)
            })
            .collect();
        let sh = &snap.config.shadow;
        let shadow = json!({
            "max_in_flight": sh.max_in_flight,
            "timeout_ms": sh.timeout.as_millis() as u64,
            "max_body_bytes": sh.max_body_bytes,
            "store": sh.store.display().to_string(),
            "keep_records": sh.keep_records,
            "keep_hours": sh.keep_age.as_secs() / 3600,
            "sample_agreements": sh.sample_agreements,
            "flush_ms": sh.flush_interval.as_millis() as u64,
            "max_cpu_percent": sh.max_cpu_percent,
            "max_backlog_bytes": sh.max_backlog_bytes,
            "local_copies": sh.local_copies.name(),
            "max_queued": sh.max_queued,
        });
        let rl = &snap.config.rate_limits;
        let rate =
            |r: &crate::config::Rate| json!({"per_second": r.per_second.get(), "burst": r.burst.get()});
        let rate_limits = json!({
            "default": rate(&rl.default),
            "tiers": rl.tiers.iter().map(|(k, v)| (k.clone(), rate(v))).collect::<serde_json::Map<_, _>>(),
            "per_ip": rate(&rl.per_ip),
            "shared": snap.shared_limiter.as_ref().map(|s| json!({
                "redis": s.settings().url_redacted(),
                "prefix": s.settings().prefix,
                "timeout_ms": s.settings().timeout.as_millis() as u64,
                "on_unavailable": s.settings().on_unavailable.as_str(),
                "redis_up": s.up(),
            })),
        });
        let l = &snap.config.limits;
        let limits = json!({
            "max_body_bytes": l.max_body_bytes,
            "max_header_bytes": l.max_header_bytes,
            "handshake_timeout_ms": l.handshake_timeout.as_millis() as u64,
            "header_timeout_ms": l.header_timeout.as_millis() as u64,
            "body_timeout_ms": l.body_timeout.as_millis() as u64,
            "idle_timeout_s": l.idle_timeout.as_secs(),
            "max_connections": l.max_connections,
            "max_rows": l.max_rows,
            "max_answer_bytes": l.max_answer_bytes,
            "max_inflight_bytes": l.max_inflight_bytes,
            "max_inflight_bytes_per_key": l.max_inflight_bytes_per_key,
        });
        json!({"file": snap.config.file.display().to_string(), "routes": routes, "pools": pools, "rate_limits": rate_limits, "limits": limits, "shadow": shadow, "keys": snap.keys.len()})
    }

    /// `POST /admin/rollouts/{route}/{pause|resume|promote|abort}`: the operator's word,
    /// applied at once; answers the route's rollout as `GET /admin/rollouts` shows it.
    async fn rollout_command(&self, path: &str, post: bool) -> http::Response<Vec<u8>> {
        use crate::rollout::{Command, Refusal};
        let error = |status: u16, message: String| {
            reply(
                status,
                "application/json",
                inference::error::error_body(&message).into_bytes(),
            )
        };
        let rest = &path["/admin/rollouts/".len()..];
        let Some((route, command)) = rest.rsplit_once('/') else {
            return error(
                404,
                format!("{path}: use POST /admin/rollouts/ROUTE/pause|resume|promote|abort"),
            );
        };
        if !post {
            return error(405, format!("{path}: POST it"));
        }
        let command: Command = match command.parse() {
            Ok(c) => c,
            Err(e) => return error(404, e),
        };
        let rollouts = self.reloader.rollouts().clone();
        match rollouts.command(route, command) {
            Ok(_) => {
                let reloader = self.reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.apply_rollouts()).await;
                let view = rollouts.view();
                reply(
                    200,
                    "application/json",
                    view["rollouts"][route].to_string().into_bytes(),
                )
            }
            Err(Refusal::NoRollout(m)) => error(404, m),
            Err(Refusal::Conflict(m)) => error(409, m),
        }
    }

    /// Runs a reload off the async threads (models may load) and says what happened: the keys
    /// file (on its own), then the config.
    async fn reload(&self) -> http::Response<Vec<u8>> {
        let reloader = self.reloader.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let keys = reloader.reload_keys(Trigger::Admin);
            (keys, reloader.reload(Trigger::Admin))
        })
        .await;
        let (keys, outcome) = match outcome {
            Ok((keys, config)) => (Some(keys), Ok(config)),
            Err(e) => (None, Err(e)),
        };
        let keys_json = match &keys {
            Some(Outcome::Applied(a)) => json!({"result": "ok", "summary": a.diff.to_string()}),
            Some(Outcome::Rejected(r)) => json!({"result": "rejected", "errors": r.errors}),
            _ => json!({"result": "unchanged"}),
        };
        let keys_refused = matches!(keys, Some(Outcome::Rejected(_)));
        let generation = self.reloader.status().generation;
        let (status, body) = match outcome {
            Ok(Outcome::Unchanged) => (
                200,
                json!({"result": "unchanged", "generation": generation, "message": "the files are what is in force"}),
            ),
            Ok(Outcome::Applied(a)) => (
                200,
                json!({"result": "ok", "generation": a.generation, "summary": a.diff.to_string(), "diff": a.diff}),
            ),
            Ok(Outcome::Rejected(r)) => (
                422,
                json!({"result": "rejected", "generation": generation, "errors": r.errors, "message": format!("generation {generation} keeps serving")}),
            ),
            Err(e) => (500, json!({"result": "failed", "error": e.to_string()})),
        };
        let mut body = body;
        body["keys"] = keys_json;
        let status = if status == 200 && keys_refused {
            422
        } else {
            status
        };
        reply(status, "application/json", body.to_string().into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let snap = self.state.load_full();
        let path = session.req_header().uri.path().to_string();
        let post = session.req_header().method == http::Method::POST;
        let headers = &session.req_header().headers;
        let names = &snap.config.admin_hosts;
        let listener = snap.config.admin;
        let host = headers
            .get(http::header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{0}"));
        if let Some(host) = host
            && !host_allowed(host, listener, names)
        {
            return reply(
                403,
                "application/json",
                inference::error::error_body(&format!(
                    "Host {host:?} is not this admin listener's ({listener}, localhost, or listen.admin_hosts)"
                ))
                .into_bytes(),
            );
        }
        if post && let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let host = origin.split_once("://").map_or(origin, |(_, h)| h);
            if !host_allowed(host, listener, names) {
                return reply(
                    403,
                    "application/json",
                    inference::error::error_body(&format!(
                        "a POST from Origin {origin:?} is refused: only this listener's own pages may change anything"
                    ))
                    .into_bytes(),
                );
            }
        }
        match path.as_str() {
            "/metrics" => {
                self.refresh_gauges(&snap);
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/health/live" | "/healthz" => reply(200, "application/json", br#"{"live":true}"#.to_vec()),
            "/health/startup" => reply(
                200,
                "application/json",
                json!({"started": true, "generation": self.reloader.status().generation})
                    .to_string()
                    .into_bytes(),
            ),
            "/health/ready" | "/readyz" => {
                let (problems, degraded, pools) = Self::readiness(&snap);
                let status = if problems.is_empty() { 200 } else { 503 };
                let body = json!({
                    "ready": problems.is_empty(),
                    "generation": self.reloader.status().generation,
                    "problems": problems,
                    "degraded": degraded,
                    "pools": pools,
                });
                reply(status, "application/json", body.to_string().into_bytes())
            }
            p if (p.starts_with("/admin/") || p == "/config") && !self.authorized(session) => {
                let mut r = reply(
                    401,
                    "application/json",
                    inference::error::error_body("this admin path needs the admin token: Authorization: Bearer <token>").into_bytes(),
                );
                r.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
                r
            }
            "/admin/reload" if post => self.reload().await,
            "/admin/reload" => reply(
                405,
                "application/json",
                inference::error::error_body("POST /admin/reload reloads the config").into_bytes(),
            ),
            "/admin/routes" => reply(
                200,
                "application/json",
                self.routes_json(&snap).to_string().into_bytes(),
            ),
            "/admin/shadow/report" | "/admin/shadow/report.html" => {
                let query = session.req_header().uri.query().map(str::to_string);
                self.shadow_report(query.as_deref(), path.ends_with(".html")).await
            }
            "/admin/quality" => reply(200, "application/json", self.quality_json().to_string().into_bytes()),
            "/admin/config" | "/config" => {
                let (snap, status) = self.reloader.in_force();
                let mut body = Self::config_json(&snap);
                body["reload"] = json!(status);
                reply(200, "application/json", body.to_string().into_bytes())
            }
            "/admin/rollouts" => reply(
                200,
                "application/json",
                self.reloader.rollouts().view().to_string().into_bytes(),
            ),
            p if p.starts_with("/admin/rollouts/") => self.rollout_command(p, post).await,
            "/admin/config/diff" => {
                let status = self.reloader.status();
                let body = json!({"generation": status.generation, "reloads": status.history});
                reply(200, "application/json", body.to_string().into_bytes())
            }
            _ => reply(
                404,
                "application/json",
                inference::error::error_body(&format!(
                    "no admin route for {path}; try /metrics, /health/live, /health/ready, /health/startup, /admin/routes, /admin/config, /admin/config/diff, POST /admin/reload, /admin/rollouts, POST /admin/rollouts/ROUTE/pause|resume|promote|abort, /admin/shadow/report, /admin/shadow/report.html, /admin/quality"
                ))
                .into_bytes(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn hosts_of_the_listener_are_allowed_and_others_refused() {
        let loopback: std::net::SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let names = vec!["gateway-admin.internal".to_string()];
        for (host, listener, ok) in [
            ("127.0.0.1:9901", loopback, true),
            ("localhost:9901", loopback, true),
            ("LOCALHOST", loopback, true),
            ("127.0.0.1:9902", loopback, false),
            ("evil.example:9901", loopback, false),
            ("evil.example", loopback, false),
            ("10.1.2.3:9901", loopback, false),
            ("10.1.2.3:9901", any, true),
            ("[::1]:9901", any, true),
            ("gateway-admin.internal", loopback, true),
            ("gateway-admin.internal:9901", any, true),
            ("attacker.localhost", loopback, false),
        ] {
            assert_eq!(host_allowed(host, listener, &names), ok, "{host} on {listener}");
        }
    }
}
