//! Prometheus metrics, in a registry the gateway owns (no global registry: two gateways in
//! one process keep separate counts). Labels are bounded sets: route names and pool names
//! from the config, variants, status codes, error kinds. Never keys, never tenants' input.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub errors: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub healthy_endpoints: IntGaugeVec,
    pub tracked_clients: IntGaugeVec,
    pub shadow_requests: IntCounterVec,
    pub shadow_agreements: IntCounterVec,
    pub shadow_disagreements: IntCounterVec,
    pub shadow_prob_delta: HistogramVec,
    pub shadow_errors: IntCounterVec,
    pub shadow_dropped: IntCounterVec,
    pub shadow_records_lost: IntCounter,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_loaded_at: IntGauge,
    pub in_flight: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("gateway".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by route, variant and status",
            ),
            &["route", "variant", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request start to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route", "variant"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "errors_total",
                "Requests refused or failed, by kind (auth, rate limit, upstream, ...)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("pool_queue_depth", "Requests waiting in a local pool's queue"),
            &["pool"],
        )
        .expect("valid metric");
        let healthy_endpoints = IntGaugeVec::new(
            Opts::new(
                "pool_healthy_endpoints",
                "Endpoints of a remote pool that pass their health check",
            ),
            &["pool"],
        )
        .expect("valid metric");
        let tracked_clients = IntGaugeVec::new(
            Opts::new(
                "ratelimit_tracked_clients",
                "Keys and client IPs with rate-limiter state",
            ),
            &["limiter"],
        )
        .expect("valid metric");
        // Shadows: labelled by route and versions from the config, never by request content.
        let pair = ["route", "primary_version", "shadow_version"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let shadow_requests = counter(
            "shadow_requests_total",
            "Mirrored requests whose shadow answered, failed or timed out",
            &pair,
        );
        let shadow_agreements = counter(
            "shadow_agreement_total",
            "Mirrored requests where every prediction of the shadow agreed with the primary",
            &pair,
        );
        let shadow_disagreements = counter(
            "shadow_disagreement_total",
            "Mirrored requests where any prediction of the shadow differed from the primary",
            &pair,
        );
        let shadow_prob_delta = HistogramVec::new(
            HistogramOpts::new(
                "shadow_prob_delta",
                "Per prediction, the largest absolute difference of a class probability, shadow vs primary",
            )
            .buckets(crate::shadow::store::DELTA_BOUNDS.to_vec()),
            &pair,
        )
        .expect("valid metric");
        let shadow_errors = counter(
            "shadow_errors_total",
            "Shadow requests that failed or timed out (never seen by clients)",
            &["route", "shadow"],
        );
        let shadow_dropped = counter(
            "shadow_dropped_total",
            "Copies not made: the route's in-flight cap was reached, or the body was over the cap",
            &["route", "shadow", "reason"],
        );
        let shadow_records_lost = IntCounter::new(
            "shadow_records_lost_total",
            "Comparison events lost because the store's queue was full",
        )
        .expect("valid metric");
        let config_reloads = counter(
            "config_reload_total",
            "Config reloads that were applied (ok) or refused while the old config kept serving (rejected)",
            &["result"],
        );
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let config_generation = gauge(
            "config_generation",
            "Generation of the config in force: 1 at start, +1 per applied reload",
        );
        let config_loaded_at = gauge(
            "config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (Unix time)",
        );
        let in_flight = gauge("requests_in_flight", "Client requests being answered right now");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(errors.clone()),
            Box::new(queue_depth.clone()),
            Box::new(healthy_endpoints.clone()),
            Box::new(tracked_clients.clone()),
            Box::new(shadow_requests.clone()),
            Box::new(shadow_agreements.clone()),
            Box::new(shadow_disagreements.clone()),
            Box::new(shadow_prob_delta.clone()),
            Box::new(shadow_errors.clone()),
            Box::new(shadow_dropped.clone()),
            Box::new(shadow_records_lost.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(config_loaded_at.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            duration,
            errors,
            queue_depth,
            healthy_endpoints,
            tracked_clients,
            shadow_requests,
            shadow_agreements,
            shadow_disagreements,
            shadow_prob_delta,
            shadow_errors,
            shadow_dropped,
            shadow_records_lost,
            config_reloads,
            config_generation,
            config_loaded_at,
            in_flight,
        }
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
