//! Prometheus metrics, in a registry the gateway owns (no global registry: two gateways in
//! one process keep separate counts). Names follow Prometheus conventions (`gateway_` prefix,
//! `_total` counters, `_seconds` base units). Labels are bounded sets: route and pool names
//! from the config, variants, versions, status classes, error kinds, tiers, and predicted
//! classes of classifiers (capped). Never keys, tenants, paths or anything else a client
//! chooses: an attacker sending 10,000 distinct paths or keys adds no series.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::Variant;

/// Latency buckets (seconds) for requests and inference.
const LATENCY: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Top-class probability buckets.
const CONFIDENCE: [f64; 10] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0];
/// Predicted classes are labelled up to this class number; higher ones count as "other", so
/// a model with a huge output cannot make series without bound.
pub const MAX_CLASS_LABEL: i64 = 100;

/// A predicted class as its metric label: `"0"` to `"100"`, else `"other"` (made once, not
/// formatted on every prediction).
pub fn class_label(class: i64) -> &'static str {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..=MAX_CLASS_LABEL).map(|c| c.to_string()).collect());
    usize::try_from(class)
        .ok()
        .and_then(|c| LABELS.get(c))
        .map_or("other", String::as_str)
}

/// The status classes of `requests_total`, in the order [`VariantSeries`] keeps them.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// A status code's class label (`"2xx"`; `"none"` when no answer was written).
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

fn status_class_index(status: u16) -> usize {
    match status / 100 {
        c @ 1..=5 => usize::from(c - 1),
        _ => 5,
    }
}

/// The series one route variant writes on every answer, found in their families once per
/// config snapshot rather than on every request: prometheus hashes every label value and takes
/// a lock on each lookup, about 225 instructions, five times a request. Series that depend on
/// the answer (status class, predicted class) are made on first use, as before.
pub struct VariantSeries {
    route: String,
    variant: &'static str,
    version: String,
    duration: Histogram,
    inference: Histogram,
    confidence: Histogram,
    requests: [OnceLock<IntCounter>; 6],
    /// By predicted class, `0..=MAX_CLASS_LABEL`, then "other".
    predictions: Vec<OnceLock<IntCounter>>,
}

impl VariantSeries {
    pub fn request(&self, m: &Metrics, status: u16, elapsed: Duration, inference: Option<Duration>) {
        let class = status_class_index(status);
        self.requests[class]
            .get_or_init(|| {
                m.requests.with_label_values(&[
                    &self.route,
                    self.variant,
                    &self.version,
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(d) = inference {
            self.inference.observe(d.as_secs_f64());
        }
    }

    pub fn prediction(&self, m: &Metrics, class: i64, confidence: Option<f64>) {
        if let Some(p) = confidence {
            self.confidence.observe(p);
        }
        let index = usize::try_from(class)
            .ok()
            .filter(|&c| c <= MAX_CLASS_LABEL as usize)
            .unwrap_or(self.predictions.len() - 1);
        self.predictions[index]
            .get_or_init(|| {
                m.predictions
                    .with_label_values(&[&self.route, self.variant, class_label(class)])
            })
            .inc();
    }
}

/// [`VariantSeries`] of every route of one config snapshot (stable and canary), made when
/// first used.
#[derive(Default)]
pub struct SeriesCache(BTreeMap<String, [OnceLock<VariantSeries>; 2]>);

impl SeriesCache {
    pub fn new<'a>(routes: impl Iterator<Item = &'a String>) -> SeriesCache {
        SeriesCache(routes.map(|r| (r.clone(), Default::default())).collect())
    }

    /// The series of `route`'s `variant`, serving `version`; `None` for a route this
    /// snapshot does not have.
    pub fn get(&self, m: &Metrics, route: &str, variant: Variant, version: &str) -> Option<&VariantSeries> {
        let slot = &self.0.get(route)?[variant as usize];
        Some(slot.get_or_init(|| {
            let rv = [route, variant.as_str()];
            VariantSeries {
                route: route.to_string(),
                variant: variant.as_str(),
                version: version.to_string(),
                duration: m.duration.with_label_values(&rv),
                inference: m.inference.with_label_values(&rv),
                confidence: m.confidence.with_label_values(&rv),
                requests: Default::default(),
                predictions: (0..=MAX_CLASS_LABEL + 1).map(|_| OnceLock::new()).collect(),
            }
        }))
    }
}

pub struct Metrics {
    registry: Registry,
    /// Every family this registry can export, exported or not yet (see [`Metrics::names`]).
    names: Vec<String>,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub inference: HistogramVec,
    pub confidence: HistogramVec,
    pub predictions: IntCounterVec,
    pub errors: IntCounterVec,
    pub grpc_requests: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub canary_fallback: IntCounterVec,
    pub ratelimit_unavailable: IntCounterVec,
    pub ratelimit_redis_up: IntGauge,
    redis_up_registered: std::sync::atomic::AtomicBool,
    pub tls_handshake_failures: IntCounter,
    pub queue_depth: IntGaugeVec,
    pub pool_ready: IntGaugeVec,
    pub healthy_endpoints: IntGaugeVec,
    pub canary_weight: IntGaugeVec,
    pub tracked_clients: IntGaugeVec,
    pub shadow_requests: IntCounterVec,
    pub shadow_agreements: IntCounterVec,
    pub shadow_disagreements: IntCounterVec,
    pub shadow_prob_delta: HistogramVec,
    pub shadow_errors: IntCounterVec,
    pub shadow_dropped: IntCounterVec,
    pub shadow_local_copies: IntCounterVec,
    pub shadow_records_lost: IntCounter,
    pub config_reloads: IntCounterVec,
    pub rollout_step: IntGaugeVec,
    /// Drift, feedback and accuracy (`crate::quality`).
    pub quality: super::quality::QualityMetrics,
    /// The prediction cache (`crate::cache`).
    pub cache: super::cache::CacheMetrics,
    pub rollout_decisions: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_loaded_at: IntGauge,
    pub in_flight: IntGauge,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounterVec,
    pub connection_timeouts: IntCounterVec,
    pub inflight_bytes: IntGauge,
    pub variant_choice_ignored: IntCounterVec,
    pub shadow_store_backlog: IntGauge,
    pub shadow_store_lag: prometheus::Gauge,
    /// What the shadow admission measured last ([`crate::shadow::admission`]).
    pub shadow_copy_cpu: prometheus::Gauge,
    pub foreground_cpu: prometheus::Gauge,
    pub shadow_cpu: prometheus::Counter,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("gateway".into()), None).expect("valid prefix");
        let rv = ["route", "variant"];
        // Shadows: labelled by route and versions from the config, never by request content.
        let pair = ["route", "primary_version", "shadow_version"];
        let single = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let (quality, quality_collectors) = super::quality::QualityMetrics::new();
        let (cache, cache_collectors) = super::cache::CacheMetrics::new();
        let m = Metrics {
            quality,
            cache,
            requests: counter(
                "requests_total",
                "Requests answered, by route, variant (stable, canary, shadow; - when refused before routing), model version and status class",
                &["route", "variant", "version", "status_class"],
            ),
            duration: histogram(
                "request_duration_seconds",
                "Time from request start to the end of the response",
                &LATENCY,
                &rv,
            ),
            inference: histogram(
                "inference_duration_seconds",
                "Time in the model: the local pool (queue and run) or the remote pool's answer",
                &LATENCY,
                &rv,
            ),
            confidence: histogram(
                "prediction_confidence",
                "Top-class probability of each prediction (classifiers)",
                &CONFIDENCE,
                &rv,
            ),
            predictions: counter(
                "predictions_total",
                "Predictions by predicted class (classifiers; classes above 100 count as \"other\")",
                &["route", "variant", "class"],
            ),
            errors: counter(
                "errors_total",
                "Requests refused or failed, by kind (auth, rate limit, upstream, ...)",
                &["kind"],
            ),
            // gRPC calls are also in requests_total (under the HTTP status their outcome
            // has): this adds the protocol's view without doubling every request series.
            grpc_requests: counter(
                "grpc_requests_total",
                "gRPC calls answered (also counted in requests_total), by route (- before routing), method and gRPC status code",
                &["route", "method", "code"],
            ),
            auth_failures: counter(
                "auth_failures_total",
                "Requests refused for their API key: missing, unknown or disabled",
                &["reason"],
            ),
            rate_limited: counter(
                "rate_limited_total",
                "Requests refused with 429, by tier (per_ip for the keyless paths)",
                &["tier"],
            ),
            canary_fallback: counter(
                "canary_fallback_total",
                "Requests the weight sent to a canary that was not ready, answered by stable",
                &["route"],
            ),
            ratelimit_unavailable: counter(
                "ratelimit_redis_unavailable_total",
                "Keyed requests decided without the shared limiter (Redis), by why (timeout, error, resting: skipped after a failure) and the policy applied (open: local limits; closed: 503)",
                &["reason", "policy"],
            ),
            ratelimit_redis_up: single(
                "ratelimit_redis_up",
                "1 when the last shared-limit call reached Redis, 0 when it failed (absent without rate_limits.redis)",
            ),
            redis_up_registered: Default::default(),
            tls_handshake_failures: super::handshakes::TLS_HANDSHAKE_FAILURES.clone(),
            queue_depth: gauge(
                "pool_queue_depth",
                "Requests waiting in a local pool's queue",
                &["pool"],
            ),
            pool_ready: gauge(
                "pool_ready",
                "1 when the pool can serve: a local pool's model runs, a remote pool has a healthy endpoint",
                &["pool"],
            ),
            healthy_endpoints: gauge(
                "pool_healthy_endpoints",
                "Endpoints of a remote pool that pass their health check",
                &["pool"],
            ),
            canary_weight: gauge(
                "route_canary_weight",
                "The canary weight in force (percent; 0 without a canary)",
                &["route"],
            ),
            tracked_clients: gauge(
                "ratelimit_tracked_clients",
                "Keys and client IPs with rate-limiter state",
                &["limiter"],
            ),
            shadow_requests: counter(
                "shadow_requests_total",
                "Mirrored requests whose shadow answered, failed or timed out",
                &pair,
            ),
            shadow_agreements: counter(
                "shadow_agreement_total",
                "Mirrored requests where every prediction of the shadow agreed with the primary",
                &pair,
            ),
            shadow_disagreements: counter(
                "shadow_disagreement_total",
                "Mirrored requests where any prediction of the shadow differed from the primary",
                &pair,
            ),
            shadow_prob_delta: histogram(
                "shadow_prob_delta",
                "Per prediction, the largest absolute difference of a class probability, shadow vs primary",
                &crate::predictions::DELTA_BOUNDS,
                &pair,
            ),
            shadow_errors: counter(
                "shadow_errors_total",
                "Shadow requests that failed or timed out (never seen by clients)",
                &["route", "shadow"],
            ),
            shadow_dropped: counter(
                "shadow_dropped_total",
                "Copies not made, by reason: no_spare_cpu, in_flight_cap, queue_full, body_too_large, shadow_failing",
                &["route", "shadow", "reason"],
            ),
            shadow_local_copies: counter(
                "shadow_local_copies_total",
                "Copies to shadow-only local pools run without a task, by thread: io (an I/O thread, in its quiet turns) or shadow (the shadow runtime's)",
                &["thread"],
            ),
            shadow_records_lost: IntCounter::new(
                "shadow_records_lost_total",
                "Comparison events lost because the store's queue was full",
            )
            .expect("valid metric"),
            config_reloads: counter(
                "config_reload_total",
                "Config reloads that were applied (ok) or refused while the old config kept serving (rejected)",
                &["result"],
            ),
            rollout_step: gauge(
                "rollout_step",
                "The step (1-based) of the route's rollout being watched or last reached",
                &["route"],
            ),
            rollout_decisions: counter(
                "rollout_decisions_total",
                "Rollout decisions: pass, fail, inconclusive (gates), and the operator's pause, resume, promote, abort",
                &["route", "result"],
            ),
            config_generation: single(
                "config_generation",
                "Generation of the config in force: 1 at start, +1 per applied reload",
            ),
            config_loaded_at: single(
                "config_last_reload_success_timestamp_seconds",
                "When the config in force was loaded (Unix time)",
            ),
            in_flight: single("requests_in_flight", "Client requests being answered right now"),
            connections_open: single(
                "connections_open",
                "Client connections open (accepted and not yet closed), at most limits.max_connections",
            ),
            connections_refused: counter(
                "connections_refused_total",
                "Client connections closed as they were accepted: max_connections reached, or a bad PROXY protocol header",
                &["reason"],
            ),
            connection_timeouts: counter(
                "connection_timeouts_total",
                "Client connections closed by a deadline: tls_handshake, header (the request's header block), body, idle (no request)",
                &["phase"],
            ),
            inflight_bytes: single(
                "inflight_bytes",
                "Bytes of request bodies and decoded tensors held by requests in flight (limits.max_inflight_bytes)",
            ),
            shadow_store_backlog: single(
                "shadow_store_backlog_bytes",
                "Bytes of comparison records waiting for the shadow store's writer (shadow.max_backlog_bytes)",
            ),
            shadow_store_lag: prometheus::Gauge::new(
                "shadow_store_lag_seconds",
                "Age of the oldest record in the shadow store's last commit: what a crash then would have lost",
            )
            .expect("valid metric"),
            shadow_copy_cpu: prometheus::Gauge::new(
                "shadow_copy_cpu_seconds",
                "CPU time one mirrored copy costs, as the shadow admission last measured it",
            )
            .expect("valid metric"),
            foreground_cpu: prometheus::Gauge::new(
                "foreground_cpu_cores",
                "Cores the process used for everything but shadows in the last admission window",
            )
            .expect("valid metric"),
            shadow_cpu: prometheus::Counter::new(
                "shadow_cpu_seconds_total",
                "CPU time spent on shadow work (copies run, compared and recorded), as the shadow admission measures it",
            )
            .expect("valid metric"),
            variant_choice_ignored: counter(
                "variant_choice_ignored_total",
                "x-canary headers ignored because the key may not choose a variant (auth.may_choose_variant)",
                &["route"],
            ),
            registry,
            names: Vec::new(),
        };
        let mut m = m;
        let build = gauge(
            "build_info",
            "Always 1; the labels say which build this is",
            &["version", "pingora", "onnxruntime"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "0.9", "1.31.1"])
            .set(1);
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.inference.clone()),
            Box::new(m.confidence.clone()),
            Box::new(m.predictions.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.grpc_requests.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.canary_fallback.clone()),
            Box::new(m.ratelimit_unavailable.clone()),
            Box::new(m.tls_handshake_failures.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.pool_ready.clone()),
            Box::new(m.healthy_endpoints.clone()),
            Box::new(m.canary_weight.clone()),
            Box::new(m.tracked_clients.clone()),
            Box::new(m.shadow_requests.clone()),
            Box::new(m.shadow_agreements.clone()),
            Box::new(m.shadow_disagreements.clone()),
            Box::new(m.shadow_prob_delta.clone()),
            Box::new(m.shadow_errors.clone()),
            Box::new(m.shadow_dropped.clone()),
            Box::new(m.shadow_local_copies.clone()),
            Box::new(m.shadow_records_lost.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.rollout_step.clone()),
            Box::new(m.rollout_decisions.clone()),
            Box::new(m.config_generation.clone()),
            Box::new(m.config_loaded_at.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.connection_timeouts.clone()),
            Box::new(m.inflight_bytes.clone()),
            Box::new(m.variant_choice_ignored.clone()),
            Box::new(m.shadow_store_backlog.clone()),
            Box::new(m.shadow_store_lag.clone()),
            Box::new(m.shadow_copy_cpu.clone()),
            Box::new(m.foreground_cpu.clone()),
            Box::new(m.shadow_cpu.clone()),
            Box::new(build),
        ];
        for c in collectors
            .into_iter()
            .chain(quality_collectors)
            .chain(cache_collectors)
        {
            m.names
                .extend(c.desc().iter().map(|d| format!("gateway_{}", d.fq_name)));
            m.registry.register(c).expect("metric names are unique");
        }
        // Registered on first use (`set_redis_up`): absent when limits are not shared.
        m.names.push("gateway_ratelimit_redis_up".into());
        m.names.extend(
            [BATCH_SIZE.0, REJECTED.0, FAILED.0, INLINE.0]
                .iter()
                .map(|n| format!("gateway_{n}")),
        );
        m
    }

    /// Reports whether the shared limiter reaches Redis; the series exists from the first call.
    pub fn set_redis_up(&self, up: bool) {
        self.ratelimit_redis_up.set(i64::from(up));
        if !self
            .redis_up_registered
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self.registry.register(Box::new(self.ratelimit_redis_up.clone()));
        }
    }

    /// The name of every family the gateway exports (counters appear in a scrape only once
    /// they have counted something): what dashboards and alert rules may use.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Adds the per-pool series read from the pools' own counters at scrape time: `pools`
    /// lists the local pools in force (the server reads them from the current snapshot).
    pub fn watch_pools(&self, pools: LocalPools) {
        self.registry
            .register(Box::new(PoolCollector::new(pools)))
            .expect("metric names are unique");
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Local pools count their batches, rejections and failures themselves (the inference crate
/// knows nothing of Prometheus); this reads those counters when scraped (names without the
/// registry's `gateway_` prefix, which the registry adds). A pool a reload
/// replaced starts again from 0, which Prometheus reads as a counter reset.
/// The local pools in force and their counters, read at each scrape.
pub type LocalPools = Box<dyn Fn() -> Vec<(String, inference::pool::StatsSnapshot)> + Send + Sync>;

struct PoolCollector {
    pools: LocalPools,
    descs: Vec<Desc>,
}

const BATCH_SIZE: (&str, &str) = (
    "pool_batch_size",
    "Requests per ONNX Runtime run in a local pool (dynamic batching)",
);
const REJECTED: (&str, &str) = (
    "pool_rejected_total",
    "Requests a local pool refused because its queue was full (503 overloaded)",
);
const FAILED: (&str, &str) = (
    "pool_failed_total",
    "Requests whose inference failed in a local pool",
);
const INLINE: (&str, &str) = (
    "pool_inline_total",
    "Requests a local pool ran on the connection's own thread (a lone request, a fast model)",
);

impl PoolCollector {
    fn new(pools: LocalPools) -> PoolCollector {
        let descs = [BATCH_SIZE, REJECTED, FAILED, INLINE]
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec!["pool".into()],
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        PoolCollector { pools, descs }
    }
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

fn labelled(pool: &str) -> proto::Metric {
    let mut label = proto::LabelPair::default();
    label.set_name("pool".into());
    label.set_value(pool.to_string());
    let mut m = proto::Metric::default();
    m.set_label(vec![label]);
    m
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut batch = family(BATCH_SIZE.0, BATCH_SIZE.1, MetricType::HISTOGRAM);
        let mut rejected = family(REJECTED.0, REJECTED.1, MetricType::COUNTER);
        let mut failed = family(FAILED.0, FAILED.1, MetricType::COUNTER);
        let mut inline = family(INLINE.0, INLINE.1, MetricType::COUNTER);
        for (name, s) in (self.pools)() {
            let mut h = proto::Histogram::default();
            let mut cumulative = 0;
            let mut buckets = Vec::new();
            for (bound, count) in inference::pool::BATCH_BUCKETS.iter().zip(s.batch_sizes) {
                cumulative += count;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound as f64);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            h.set_bucket(buckets);
            h.set_sample_count(s.batches);
            h.set_sample_sum(s.requests as f64);
            let mut m = labelled(&name);
            m.set_histogram(h);
            batch.mut_metric().push(m);
            for (f, value) in [
                (&mut rejected, s.rejected),
                (&mut failed, s.failed),
                (&mut inline, s.inline),
            ] {
                let mut c = proto::Counter::default();
                c.set_value(value as f64);
                let mut m = labelled(&name);
                m.set_counter(c);
                f.mut_metric().push(m);
            }
        }
        [batch, rejected, failed, inline]
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
