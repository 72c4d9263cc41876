//! The prediction cache's series (counted in `crate::cache`, added up here when scraped).

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

pub struct CacheMetrics {
    pub requests: IntCounterVec,
    pub bytes: IntGaugeVec,
    pub entries: IntGaugeVec,
    pub evictions: IntCounterVec,
}

impl CacheMetrics {
    pub fn new() -> (CacheMetrics, Vec<Box<dyn Collector>>) {
        let m = CacheMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "cache_requests_total",
                    "Prediction cache lookups by route and result (hit, miss); a hit is answered without the model",
                ),
                &["route", "result"],
            )
            .expect("valid metric"),
            bytes: IntGaugeVec::new(
                Opts::new(
                    "cache_bytes",
                    "Bytes the route's prediction cache holds (keys, outputs and bookkeeping), bounded by its max_bytes",
                ),
                &["route"],
            )
            .expect("valid metric"),
            entries: IntGaugeVec::new(
                Opts::new("cache_entries", "Answers the route's prediction cache holds"),
                &["route"],
            )
            .expect("valid metric"),
            evictions: IntCounterVec::new(
                Opts::new(
                    "cache_evictions_total",
                    "Cached answers removed by route and reason (size: room for newer ones; expired: older than the TTL)",
                ),
                &["route", "reason"],
            )
            .expect("valid metric"),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.entries.clone()),
            Box::new(m.evictions.clone()),
        ];
        (m, collectors)
    }
}
