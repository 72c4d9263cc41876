//! Prometheus metrics, in a registry the gateway owns (no global registry: two gateways in
//! one process keep separate counts). Labels are bounded sets: route names and pool names
//! from the config, variants, status codes, error kinds. Never keys, never tenants' input.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub errors: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub healthy_endpoints: IntGaugeVec,
    pub tracked_clients: IntGaugeVec,
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
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(errors.clone()),
            Box::new(queue_depth.clone()),
            Box::new(healthy_endpoints.clone()),
            Box::new(tracked_clients.clone()),
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
