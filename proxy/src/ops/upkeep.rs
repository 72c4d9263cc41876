//! Background upkeep, following whatever snapshot is current: health checks of remote pools
//! (each at its own interval), probes of local pools whose model keeps failing, eviction of
//! idle rate-limiter state and of routes the config dropped, the TLS handshake deadline, the
//! log's summary of failed handshakes, and the input drift figures (every
//! `quality.drift.interval_ms`), which rollouts' drift gates read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::routing::snapshot::{Backend, Snapshot};
use crate::telemetry::observed::Observed;

/// How often the loop looks at what is due. Health checks themselves run at their pool's
/// configured interval.
const TICK: Duration = Duration::from_millis(100);
/// Idle limiter state is dropped this often; between runs the LRU bound holds memory.
const EVICT_EVERY: Duration = Duration::from_secs(10);

/// A local pool that failed its last runs is probed this often with one warm-up inference;
/// a success makes it ready again (it gets no client traffic while it is not).
const PROBE_EVERY: Duration = Duration::from_secs(2);

pub struct Maintenance {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub observed: Arc<Observed>,
    pub connections: Arc<crate::admission::connections::Connections>,
    pub quality: Arc<crate::quality::Quality>,
    pub rollouts: Arc<crate::rollout::Rollouts>,
}

impl Maintenance {
    /// Drift figures: binning windows and decoding remote bodies is CPU work, so it runs on
    /// a thread of its own at idle priority (like the shadows'), which gets the CPU only
    /// when the client path leaves it free; then handed to the rollouts of routes with a
    /// canary. Started once; it follows the current snapshot.
    fn start_drift(&self) {
        let (quality, rollouts, state) = (self.quality.clone(), self.rollouts.clone(), self.state.clone());
        let started = std::thread::Builder::new().name("quality".into()).spawn(move || {
            inference::priority::idle();
            loop {
                std::thread::sleep(state.load().config.quality.drift.interval);
                let snap = state.load_full();
                let routes = &snap.config.routes;
                quality.compute(&snap.config.quality.drift, |r, v| {
                    routes
                        .get(r)
                        .is_some_and(|route| v == crate::config::Variant::Stable || route.canary.is_some())
                });
                for (name, route) in routes {
                    if route.canary.is_some() {
                        let psi = quality
                            .drift(name, crate::config::Variant::Canary)
                            .and_then(|f| f.input_psi);
                        rollouts.observe_drift(name, psi);
                    }
                }
            }
        });
        if let Err(e) = started {
            tracing::warn!("no drift figures: cannot start their thread: {e}");
        }
    }
}

/// The summary of failed client TLS handshakes, when one is due (`flush`: at shutdown).
fn log_handshake_failures(flush: bool) {
    if let Some(line) = crate::telemetry::handshakes::summary_due(Instant::now(), flush) {
        tracing::warn!("{line}");
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_evict = Instant::now();
        let mut last_probe = Instant::now();
        self.start_drift();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    log_handshake_failures(true);
                    return;
                }
                _ = tick.tick() => {}
            }
            log_handshake_failures(false);
            let snap = self.state.load_full();
            self.connections.sweep(snap.config.limits.handshake_timeout);
            for backend in snap.pools.values() {
                if let Backend::Remote(pool) = backend {
                    pool.maintain(false).await;
                }
            }
            if last_evict.elapsed() >= EVICT_EVERY {
                snap.limiters.evict_idle();
                self.observed.retain(|r| snap.config.routes.contains_key(r));
                last_evict = Instant::now();
            }
            if last_probe.elapsed() >= PROBE_EVERY {
                last_probe = Instant::now();
                for (name, backend) in &snap.pools {
                    let Backend::Local(pool) = backend else { continue };
                    if pool.healthy() {
                        continue;
                    }
                    let pool = pool.clone();
                    let probe = tokio::task::spawn_blocking(move || pool.warm(PROBE_EVERY)).await;
                    match probe {
                        Ok(Ok(())) => tracing::info!(pool = %name, "pool answers again: ready"),
                        Ok(Err(e)) => tracing::warn!(pool = %name, "pool still failing: {e}"),
                        Err(e) => tracing::warn!(pool = %name, "pool probe failed: {e}"),
                    }
                }
            }
        }
    }
}
