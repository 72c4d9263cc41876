//! The split actually served, per route, over the last minute (for `GET /admin/routes`):
//! 60 one-second slots of stable and canary answers. Routes come from the config, so the map
//! is as bounded as the config is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::config::Variant;

const SLOTS: usize = 60;

#[derive(Default)]
pub struct Observed {
    routes: RwLock<HashMap<String, Arc<Mutex<Window>>>>,
}

/// `(second, stable, canary)` per slot; a slot whose second is stale counts as empty.
struct Window([(u64, u64, u64); SLOTS]);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Observed {
    pub fn record(&self, route: &str, variant: Variant) {
        self.record_at(route, variant, now_secs());
    }

    fn record_at(&self, route: &str, variant: Variant, second: u64) {
        let window = self.routes.read().get(route).cloned();
        let window = window.unwrap_or_else(|| {
            self.routes
                .write()
                .entry(route.to_string())
                .or_insert_with(|| Arc::new(Mutex::new(Window([(0, 0, 0); SLOTS]))))
                .clone()
        });
        let mut w = window.lock();
        let slot = &mut w.0[(second % SLOTS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        match variant {
            Variant::Stable => slot.1 += 1,
            Variant::Canary => slot.2 += 1,
        }
    }

    /// `(stable, canary)` answers of the last 60 seconds.
    pub fn last_minute(&self, route: &str) -> (u64, u64) {
        self.last_minute_at(route, now_secs())
    }

    fn last_minute_at(&self, route: &str, now: u64) -> (u64, u64) {
        let Some(window) = self.routes.read().get(route).cloned() else {
            return (0, 0);
        };
        let w = window.lock();
        w.0.iter()
            .filter(|(second, _, _)| *second + (SLOTS as u64) > now && *second <= now)
            .fold((0, 0), |(s, c), (_, ds, dc)| (s + ds, c + dc))
    }

    /// Forgets routes the config no longer has.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.routes.write().retain(|route, _| keep(route));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_sixty_seconds_only() {
        let o = Observed::default();
        for _ in 0..3 {
            o.record_at("r", Variant::Stable, 1000);
        }
        o.record_at("r", Variant::Canary, 1030);
        assert_eq!(o.last_minute_at("r", 1030), (3, 1));
        assert_eq!(o.last_minute_at("r", 1059), (3, 1));
        // 1000 has left the window; its slot is reused by 1060.
        assert_eq!(o.last_minute_at("r", 1060), (0, 1));
        o.record_at("r", Variant::Canary, 1060);
        assert_eq!(o.last_minute_at("r", 1060), (0, 2));
        assert_eq!(o.last_minute_at("other", 1060), (0, 0));
        o.retain(|r| r != "r");
        assert_eq!(o.last_minute_at("r", 1060), (0, 0));
    }
}
