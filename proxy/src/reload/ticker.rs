//! The rollout engine's clock in the server: the engine (`crate::rollout`) judges windows as
//! they end, and the weights it moves are applied as a config generation like any reload
//! (which is why this lives here: the engine itself knows nothing of reloads).

use std::sync::Arc;
use std::time::Duration;

/// How often the engine looks for windows that are over.
const TICK: Duration = Duration::from_millis(200);

/// Runs the engine in the server: evaluates windows as they end, applies moved weights.
pub struct Ticker(pub Arc<super::Reloader>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Ticker {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Stopping: a new process (an upgrade) may run the engine from now.
                    self.0.rollouts().resign();
                    return;
                }
                _ = tick.tick() => {}
            }
            if self.0.rollouts().tick() {
                let reloader = self.0.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.apply_rollouts()).await;
            }
        }
    }
}
