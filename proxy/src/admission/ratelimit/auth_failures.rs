//! Failed authentications per client address (`rate_limits.auth_failures`): each missing,
//! unknown or disabled key costs its address one cell of a GCRA allowance; once the allowance
//! is spent, the address is refused with 429 *before* any key it sends is looked at, until
//! the allowance has a cell again. Guessing keys then goes at the configured rate at most,
//! and a flood of bad keys costs a lookup in a small map, not a SHA-256 each.

use std::num::NonZeroUsize;

use governor::clock::{Clock, QuantaClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;

use super::{BoundedStore, IpKey};
use crate::config::Rate;

/// Addresses refused at most at once (the least recently refused are forgotten first; one
/// forgotten gets its next refusal a moment later, when its next failure is counted).
const BLOCKED_CAPACITY: usize = 65_536;

pub struct AuthFailures<C: Clock = QuantaClock> {
    rate: Rate,
    failures: RateLimiter<IpKey, BoundedStore<IpKey>, C, NoOpMiddleware<C::Instant>>,
    /// Addresses whose allowance is spent, and when it has a cell again.
    blocked: Mutex<lru::LruCache<IpKey, C::Instant>>,
    /// Entries in `blocked`: the check every request makes is one atomic load while it is 0.
    any: std::sync::atomic::AtomicUsize,
    clock: C,
}

impl<C: Clock + Clone> AuthFailures<C> {
    pub fn new(rate: Rate, capacity: usize, clock: C) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        AuthFailures {
            rate,
            failures: RateLimiter::new(quota, BoundedStore::new(capacity), clock.clone()),
            blocked: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(BLOCKED_CAPACITY).expect("non-zero"),
            )),
            any: Default::default(),
            clock,
        }
    }

    /// Whole seconds until `ip` may try a key again; `None` when it may now.
    pub fn refused(&self, ip: IpKey) -> Option<u64> {
        if self.any.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return None;
        }
        let mut blocked = self.blocked.lock();
        let until = *blocked.peek(&ip)?;
        let now = self.clock.now();
        if until <= now {
            blocked.pop(&ip);
            self.any
                .store(blocked.len(), std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        let wait: u64 = until.duration_since(now).into();
        Some(wait.div_ceil(1_000_000_000).max(1))
    }

    /// Counts one failure of `ip`; true when that spent its allowance (it is refused from now).
    pub fn failed(&self, ip: IpKey) -> bool {
        match self.failures.check_key(&ip) {
            Ok(()) => false,
            Err(not_until) => {
                let mut blocked = self.blocked.lock();
                blocked.put(ip, not_until.earliest_possible());
                self.any
                    .store(blocked.len(), std::sync::atomic::Ordering::Relaxed);
                true
            }
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn evict_idle(&self) {
        self.failures.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn an_address_that_keeps_failing_is_refused_until_its_allowance_returns() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        };
        let limiter = AuthFailures::new(rate, 100, clock.clone());
        let ip = IpKey::from("203.0.113.7".parse::<IpAddr>().unwrap());
        let other = IpKey::from("203.0.113.8".parse::<IpAddr>().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.refused(ip), None);
            assert!(!limiter.failed(ip));
        }
        assert!(limiter.failed(ip), "the fourth failure spends the allowance");
        assert_eq!(limiter.refused(ip), Some(1));
        assert_eq!(limiter.refused(other), None, "another address is not refused");
        clock.advance(Duration::from_millis(1100));
        assert_eq!(limiter.refused(ip), None, "one cell back after a second");
        assert!(!limiter.failed(ip));
        assert!(limiter.failed(ip));
    }
}
