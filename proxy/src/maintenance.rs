//! Background upkeep, following whatever snapshot is current: health checks of remote pools
//! (each at its own interval) and eviction of idle rate-limiter state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::{Backend, Snapshot};

/// How often the loop looks at what is due. Health checks themselves run at their pool's
/// configured interval.
const TICK: Duration = Duration::from_millis(100);
/// Idle limiter state is dropped this often; between runs the LRU bound holds memory.
const EVICT_EVERY: Duration = Duration::from_secs(10);

pub struct Maintenance {
    pub state: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_evict = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.state.load_full();
            for backend in snap.pools.values() {
                if let Backend::Remote(pool) = backend {
                    pool.maintain(false).await;
                }
            }
            if last_evict.elapsed() >= EVICT_EVERY {
                snap.limiters.evict_idle();
                last_evict = Instant::now();
            }
        }
    }
}
