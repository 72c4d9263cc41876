//! A circuit breaker per shadow pool: a shadow that keeps failing (errors, resets, time-outs)
//! is given a rest instead of a copy of every request. Broken shadows would otherwise cost
//! the gateway a connection, a wait and a record per request, for no information: the
//! report already says they fail. Copies skipped while it rests are counted as dropped
//! (`shadow_failing`).
//!
//! After [`TRIP_AFTER`] failures in a row the breaker opens for [`FIRST_REST`]; then one copy
//! goes through as a probe: success closes it, failure doubles the rest (up to [`MAX_REST`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const TRIP_AFTER: u32 = 5;
pub const FIRST_REST: Duration = Duration::from_secs(1);
pub const MAX_REST: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    failures: u32,
    rest: Duration,
    /// Open until then; afterwards one probe is let through.
    open_until: Option<Instant>,
    probing: bool,
}

#[derive(Default)]
pub struct Breakers(Mutex<HashMap<String, State>>);

impl Breakers {
    /// Whether `pool` gets a copy now.
    pub fn allow(&self, pool: &str, now: Instant) -> bool {
        let mut map = self.0.lock();
        let Some(s) = map.get_mut(pool) else {
            return true;
        };
        match s.open_until {
            None => true,
            Some(t) if now < t => false,
            Some(_) if s.probing => false,
            Some(_) => {
                s.probing = true;
                true
            }
        }
    }

    /// The outcome of a copy sent to `pool`.
    pub fn report(&self, pool: &str, ok: bool, now: Instant) {
        let mut map = self.0.lock();
        if ok {
            // The common case allocates nothing: only failing pools have an entry.
            map.remove(pool);
            return;
        }
        let s = map.entry(pool.to_string()).or_default();
        s.failures += 1;
        if s.probing || (s.open_until.is_none() && s.failures >= TRIP_AFTER) {
            s.rest = if s.probing {
                (s.rest * 2).min(MAX_REST)
            } else {
                FIRST_REST
            };
            s.open_until = Some(now + s.rest);
            s.probing = false;
            tracing::warn!(
                pool,
                failures = s.failures,
                "shadow keeps failing: no copies for {} ms",
                s.rest.as_millis()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_rests_probes_and_recovers() {
        let b = Breakers::default();
        let t0 = Instant::now();
        for _ in 0..TRIP_AFTER - 1 {
            b.report("s", false, t0);
            assert!(b.allow("s", t0), "not yet tripped");
        }
        b.report("s", false, t0);
        assert!(!b.allow("s", t0));
        assert!(!b.allow("s", t0 + FIRST_REST / 2));
        // One probe after the rest; no second until it reports.
        let t1 = t0 + FIRST_REST;
        assert!(b.allow("s", t1));
        assert!(!b.allow("s", t1));
        // The probe fails: twice the rest.
        b.report("s", false, t1);
        assert!(!b.allow("s", t1 + FIRST_REST));
        let t2 = t1 + FIRST_REST * 2;
        assert!(b.allow("s", t2));
        b.report("s", true, t2);
        assert!(b.allow("s", t2) && b.allow("s", t2), "closed again");
        assert!(b.allow("other", t0), "pools are independent");
    }

    #[test]
    fn rests_stop_growing() {
        let b = Breakers::default();
        let mut t = Instant::now();
        for _ in 0..TRIP_AFTER {
            b.report("s", false, t);
        }
        for _ in 0..20 {
            t += MAX_REST;
            assert!(b.allow("s", t));
            b.report("s", false, t);
        }
        assert!(b.allow("s", t + MAX_REST));
    }
}
