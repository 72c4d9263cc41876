//! A circuit breaker per shadow pool: a shadow that keeps failing (errors, resets, time-outs)
//! is given a rest instead of a copy of every request. Broken shadows would otherwise cost
//! the gateway a connection, a wait and a record per request, for no information: the
//! report already says they fail. Copies skipped while it rests are counted as dropped
//! (`shadow_failing`).
//!
//! After [`TRIP_AFTER`] failures in a row the breaker opens for [`FIRST_REST`]; then one copy
//! goes through as a probe: success closes it, failure doubles the rest (up to [`MAX_REST`]).
//!
//! The client path ([`Breakers::allow`]) never waits for the lock: the shadow tasks that
//! [`Breakers::report`] run at idle priority, and one preempted while holding the lock would
//! stall the primary for as long as the busy machine keeps it off the CPU (priority
//! inversion). With no failing pool it takes no lock at all; otherwise it tries the lock, and
//! a copy that finds it taken is skipped as `shadow_failing` (some shadow is failing then).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
pub struct Breakers {
    /// Pools with a failure since their last success.
    failing: Mutex<HashMap<String, State>>,
    /// Their number, read without the lock.
    count: AtomicUsize,
}

impl Breakers {
    /// Whether `pool` gets a copy now. Never waits (see the module comment).
    pub fn allow(&self, pool: &str, now: Instant) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return true;
        }
        let Some(mut map) = self.failing.try_lock() else {
            return false;
        };
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
        // The common case takes no lock and allocates nothing.
        if ok && self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.failing.lock();
        let tripped = if ok {
            map.remove(pool);
            None
        } else {
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
                Some((s.failures, s.rest))
            } else {
                None
            }
        };
        self.count.store(map.len(), Ordering::Release);
        drop(map);
        if let Some((failures, rest)) = tripped {
            tracing::warn!(
                pool,
                failures,
                "shadow keeps failing: no copies for {} ms",
                rest.as_millis()
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
    fn the_client_path_never_waits_for_the_lock() {
        let b = Breakers::default();
        let t0 = Instant::now();
        b.report("s", false, t0);
        let held = b.failing.lock();
        // Some pool is failing and the lock is taken: skipped at once, not waited for.
        assert!(!b.allow("other", t0));
        drop(held);
        assert!(b.allow("other", t0));
        b.report("s", true, t0);
        let _held = b.failing.lock();
        assert!(b.allow("other", t0), "nothing failing: no lock needed");
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
