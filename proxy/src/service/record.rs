//! Step 6 of the flow, after the answer: the request's metrics and prediction metrics, the
//! access log, the split observed, the rollout windows, the input and predicted classes for
//! drift (sampled), what feedback will need to join, and the copies to shadows.

use std::sync::Arc;
use std::time::Duration;

use super::exchange::Exchange;
use super::{Ctx, Gateway};
use crate::config::Variant;
use crate::routing::snapshot::Snapshot;
use crate::shadow;

/// The shadows a request goes to, its input, and the primary's latency.
pub(super) type Shadows = (Vec<shadow::Pick>, shadow::Input, Duration);

impl Gateway {
    /// Class counts and confidence of a classifier's predictions, by route and variant.
    pub(super) fn observe_predictions<O: crate::predictions::Output>(
        &self,
        ctx: &Ctx,
        route: &str,
        outputs: &[O],
    ) {
        self.record_predictions(ctx, route, crate::predictions::predictions(outputs));
    }

    pub(super) fn record_predictions(&self, ctx: &Ctx, route: &str, predictions: Vec<(i64, Option<f64>)>) {
        if predictions.is_empty() {
            return;
        }
        self.record_quality(ctx, route, &predictions);
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
                .with_label_values(&[route, variant, crate::telemetry::metrics::class_label(class)])
                .inc();
        }
    }

    /// The drift window of the request's route variant when this request is sampled.
    pub(super) fn drift_window(
        &self,
        ctx: &Ctx,
        snap: &Snapshot,
        pool: &str,
    ) -> Option<Arc<crate::quality::drift::Window>> {
        let (Some(route), Some(variant), Some(version)) = (&ctx.route, ctx.variant, &ctx.model_version)
        else {
            return None;
        };
        let settings = &snap.config.quality.drift;
        let window = self
            .quality
            .window(route, variant, version, snap.profiles.get(pool), settings.window);
        window.sampled(settings.sample_every).then_some(window)
    }

    /// The predicted classes into the drift window (sampled requests), and what feedback
    /// will need to join them with their labels (requests with a key).
    fn record_quality(&self, ctx: &Ctx, route: &str, predictions: &[(i64, Option<f64>)]) {
        let keep = self.quality.feedback_enabled() && predictions.len() <= crate::quality::MAX_FEEDBACK_ROWS;
        if ctx.drift.is_none() && !keep {
            return;
        }
        let classes: Vec<i64> = predictions.iter().map(|(c, _)| *c).collect();
        if let Some(w) = &ctx.drift {
            w.record_classes(&classes);
        }
        if let (Some(key), Some(variant), Some(version)) = (&ctx.key, ctx.variant, &ctx.model_version)
            && keep
        {
            let served = crate::quality::store::Served {
                tenant: key.tenant.clone(),
                route: route.to_string(),
                variant: variant.as_str().to_string(),
                version: version.clone(),
                forced: ctx.forced,
                classes,
                at_ms: self.quality.now_ms(),
            };
            self.quality.served(&ctx.request_id, served);
        }
    }

    /// The metric series of the request's route and variant, once both are known.
    pub(super) fn series<'c>(&self, ctx: &'c Ctx) -> Option<&'c crate::telemetry::metrics::VariantSeries> {
        let (Some(snap), Some(route), Some(variant), Some(version)) =
            (&ctx.snapshot, &ctx.route, ctx.variant, &ctx.model_version)
        else {
            return None;
        };
        snap.series.get(&self.metrics, route, variant, version)
    }

    /// Copies a request to its shadows, with what the primary answered (built only when
    /// there are shadows). Called after the client's answer is written.
    pub(super) fn mirror(
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

    pub(super) fn log(&self, session: &Exchange<'_>, ctx: &Ctx) {
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
                .with_label_values(&[
                    route,
                    variant,
                    version,
                    crate::telemetry::metrics::status_class(status),
                ])
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
        if let Some((method, code)) = ctx.grpc {
            m.grpc_requests.with_label_values(&[route, method, code]).inc();
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
                protocol = if ctx.grpc.is_some() { "grpc" } else { "http" },
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
                cache = ctx.cache.unwrap_or("-"),
            );
        }
    }
}
