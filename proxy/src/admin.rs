//! The admin listener (default 127.0.0.1:9901, never the public port): Prometheus metrics,
//! liveness and readiness, and the routes in force — for operators and their tooling.
//!
//! - `GET /metrics`  Prometheus text format
//! - `GET /healthz`  200 while the process serves
//! - `GET /readyz`   200 when every route's stable pool can serve; 503 and the reasons if not
//! - `GET /admin/config` (also `/config`)  the routes, weights, stickiness, shadows and pools
//!   in force (no keys), with the reload status: generation, content hash, when it was
//!   loaded, the last refused reload and its errors, settings waiting for a restart
//! - `GET /admin/config/diff`  what each recent reload changed, newest first
//! - `POST /admin/reload`  reload now (as the file watcher and SIGHUP do); 200 when applied or
//!   unchanged, 422 with every error when refused
//! - `GET /admin/shadow/report[?route=&since=1h]`  shadow comparisons, JSON
//! - `GET /admin/shadow/report.html[?route=&since=]`  the same as a self-contained page

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::{PoolSpec, Sticky};
use crate::metrics::Metrics;
use crate::reload::{Outcome, Reloader, Trigger};
use crate::shadow::store::Recorder;
use crate::shadow::{html, report};
use crate::state::{Backend, Snapshot};

pub struct Admin {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub reloader: Arc<Reloader>,
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
            Ok(Ok(r)) if as_html => reply(200, "text/html; charset=utf-8", html::page(&r).into_bytes()),
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
        self.metrics
            .tracked_clients
            .with_label_values(&["all"])
            .set(snap.limiters.tracked() as i64);
    }

    fn readiness(snap: &Snapshot) -> Vec<String> {
        snap.config
            .routes
            .values()
            .filter_map(|route| match snap.pools.get(&route.stable) {
                Some(Backend::Remote(r)) if r.healthy_endpoints() == 0 => Some(format!(
                    "route {}: stable pool {} has no healthy endpoint",
                    route.model, r.name
                )),
                _ => None,
            })
            .collect()
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
                    (PoolSpec::Http(h), Some(Backend::Remote(r))) => json!({"kind": "http", "model": h.model, "version": h.version, "endpoints": h.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(), "healthy_endpoints": r.healthy_endpoints()}),
                    (PoolSpec::Http(h), _) => json!({"kind": "http", "model": h.model, "version": h.version}),
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
        });
        json!({"file": snap.config.file.display().to_string(), "routes": routes, "pools": pools, "shadow": shadow, "keys": snap.keys.len()})
    }

    /// Runs a reload off the async threads (models may load) and says what happened.
    async fn reload(&self) -> http::Response<Vec<u8>> {
        let reloader = self.reloader.clone();
        let outcome = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await;
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
        reply(status, "application/json", body.to_string().into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let snap = self.state.load_full();
        let path = session.req_header().uri.path().to_string();
        let post = session.req_header().method == http::Method::POST;
        match path.as_str() {
            "/admin/reload" if post => self.reload().await,
            "/admin/reload" => reply(
                405,
                "application/json",
                inference::error::error_body("POST /admin/reload reloads the config").into_bytes(),
            ),
            "/metrics" => {
                self.refresh_gauges(&snap);
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/healthz" => reply(200, "application/json", br#"{"live":true}"#.to_vec()),
            "/readyz" => {
                let problems = Self::readiness(&snap);
                let status = if problems.is_empty() { 200 } else { 503 };
                reply(
                    status,
                    "application/json",
                    json!({"ready": problems.is_empty(), "problems": problems})
                        .to_string()
                        .into_bytes(),
                )
            }
            "/admin/shadow/report" | "/admin/shadow/report.html" => {
                let query = session.req_header().uri.query().map(str::to_string);
                self.shadow_report(query.as_deref(), path.ends_with(".html")).await
            }
            "/admin/config" | "/config" => {
                let mut body = Self::config_json(&snap);
                body["reload"] = json!(self.reloader.status());
                reply(200, "application/json", body.to_string().into_bytes())
            }
            "/admin/config/diff" => {
                let status = self.reloader.status();
                let body = json!({"generation": status.generation, "reloads": status.history});
                reply(200, "application/json", body.to_string().into_bytes())
            }
            _ => reply(
                404,
                "application/json",
                inference::error::error_body(&format!(
                    "no admin route for {path}; try /metrics, /healthz, /readyz, /admin/config, /admin/config/diff, POST /admin/reload, /admin/shadow/report, /admin/shadow/report.html"
                ))
                .into_bytes(),
            ),
        }
    }
}
