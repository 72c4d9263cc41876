//! Rate limits: GCRA (governor) per API key, with a quota per tier, and per client IP for the
//! paths that need no key.
//!
//! Memory is bounded: limiter state lives in an LRU of `max_tracked_clients` entries (split
//! over shards to keep lock contention low), and [`RateLimiters::evict_idle`] drops every
//! entry whose state is indistinguishable from a fresh one. Forgetting a client can only
//! give it a fresh burst back — never block it wrongly.
//!
//! With `rate_limits.redis`, per-key limits are shared by every replica ([`shared`]) and
//! these local limiters serve as the fallback while Redis cannot answer (`on_unavailable:
//! open`).

pub mod auth_failures;
pub mod shared;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;

use crate::config::{Rate, RateLimits};
use crate::errors::Decision;

const SHARDS: usize = 16;

/// A keyed state store with a hard size bound: an LRU per shard, holding each key's GCRA
/// "theoretical arrival time".
pub struct BoundedStore<K: Hash + Eq> {
    shards: Vec<Mutex<lru::LruCache<K, u64>>>,
    /// Picks the shard; foldhash rather than SipHash (a key's digest or an address).
    hasher: foldhash::fast::RandomState,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    pub fn new(capacity: usize) -> Self {
        let per_shard = NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).expect("at least 1");
        BoundedStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(lru::LruCache::new(per_shard)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<lru::LruCache<K, u64>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(key).lock();
        let previous = shard.get(key).copied().map(Nanos::new);
        let (outcome, tat) = f(previous)?;
        shard.put(key.clone(), tat.as_u64());
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let stale: Vec<K> = shard
                .iter()
                .filter(|(_, tat)| **tat <= drop_below.as_u64())
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                shard.pop(&k);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Limiter<K, C> = RateLimiter<K, BoundedStore<K>, C, StateInformationMiddleware>;

/// Who is being limited by IP. IPv6 clients are grouped by /64, the block a single host is
/// usually given, so rotating addresses within it does not buy a fresh allowance each time.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct IpKey(u128);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(u32::from(v4) as u128),
                None => IpKey((u128::from(v6) >> 64) << 64 | (1 << 63)),
            },
        }
    }
}

/// All of the gateway's limiters. Generic over the clock so that tests run on a fake one.
pub struct RateLimiters<C: Clock = QuantaClock> {
    tiers: BTreeMap<String, (Rate, Limiter<[u8; 32], C>)>,
    default: (Rate, Limiter<[u8; 32], C>),
    per_ip: (Rate, Limiter<IpKey, C>),
    /// Failed authentications per client address.
    pub auth_failures: auth_failures::AuthFailures<C>,
    clock: C,
}

fn quota(rate: Rate) -> Quota {
    Quota::per_second(rate.per_second).allow_burst(rate.burst)
}

impl RateLimiters<QuantaClock> {
    pub fn new(config: &RateLimits) -> Self {
        Self::with_clock(config, QuantaClock::default())
    }
}

impl<C: Clock + Clone> RateLimiters<C> {
    pub fn with_clock(config: &RateLimits, clock: C) -> Self {
        let cap = config.max_tracked_clients;
        let keyed = |rate: Rate| {
            (
                rate,
                Limiter::new(quota(rate), BoundedStore::new(cap), clock.clone()),
            )
        };
        RateLimiters {
            tiers: config
                .tiers
                .iter()
                .map(|(name, rate)| (name.clone(), keyed(*rate)))
                .collect(),
            default: keyed(config.default),
            per_ip: (
                config.per_ip,
                Limiter::new(quota(config.per_ip), BoundedStore::new(cap), clock.clone()),
            ),
            auth_failures: auth_failures::AuthFailures::new(config.auth_failures, cap, clock.clone()),
            clock,
        }
    }

    /// Checks one request of the key with this digest, in its tier.
    pub fn check_key(&self, tier: &str, key_digest: &[u8; 32]) -> Decision {
        let (rate, limiter) = self.tiers.get(tier).unwrap_or(&self.default);
        self.decide(*rate, limiter.check_key(key_digest))
    }

    /// Checks one keyless request from this client address.
    pub fn check_ip(&self, ip: IpAddr) -> Decision {
        let (rate, limiter) = &self.per_ip;
        self.decide(*rate, limiter.check_key(&IpKey::from(ip)))
    }

    fn decide(
        &self,
        rate: Rate,
        outcome: Result<governor::middleware::StateSnapshot, governor::NotUntil<C::Instant>>,
    ) -> Decision {
        let q = quota(rate);
        let interval = q.replenish_interval();
        let limit = rate.burst.get();
        let secs_ceil = |d: Duration| d.as_nanos().div_ceil(1_000_000_000) as u64;
        match outcome {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_secs: secs_ceil(interval * limit.saturating_sub(remaining)),
                    retry_after_secs: 0,
                    per_second: rate.per_second.get(),
                }
            }
            Err(not_until) => {
                let wait = secs_ceil(not_until.wait_time_from(self.clock.now())).max(1);
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_secs: wait,
                    retry_after_secs: wait,
                    per_second: rate.per_second.get(),
                }
            }
        }
    }

    /// Forgets clients whose allowance is full again (their state equals a fresh one).
    pub fn evict_idle(&self) {
        for (_, limiter) in self.tiers.values().chain(std::iter::once(&self.default)) {
            limiter.retain_recent();
        }
        self.per_ip.1.retain_recent();
        self.auth_failures.evict_idle();
    }

    /// Clients tracked right now, over all limiters.
    pub fn tracked(&self) -> usize {
        self.tiers
            .values()
            .chain(std::iter::once(&self.default))
            .map(|(_, l)| l.len())
            .sum::<usize>()
            + self.per_ip.1.len()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits(per_second: u32, burst: u32, cap: usize) -> RateLimits {
        let rate = Rate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        };
        RateLimits {
            default: rate,
            tiers: BTreeMap::from([(
                "batch".to_string(),
                Rate {
                    per_second: NonZeroU32::new(per_second * 10).unwrap(),
                    burst: NonZeroU32::new(burst).unwrap(),
                },
            )]),
            per_ip: rate,
            max_tracked_clients: cap,
            redis: None,
            auth_failures: rate,
        }
    }

    /// Ten times the allowed rate for 60 s: exactly rate × 60 + burst get through (± 1).
    #[test]
    fn sixty_seconds_of_tenfold_overload() {
        // Rates whose replenish interval is a whole number of offered-request steps, so that
        // discrete arrivals do not round the allowance down.
        for (rate, burst) in [(10u32, 20u32), (200, 400), (8, 1), (25, 5)] {
            let clock = FakeRelativeClock::default();
            let limiters = RateLimiters::with_clock(&limits(rate, burst, 100), clock.clone());
            let key = [7u8; 32];
            let offered_per_second = rate * 10;
            let step = Duration::from_nanos(1_000_000_000 / offered_per_second as u64);
            let mut allowed = 0u64;
            for _ in 0..offered_per_second * 60 {
                if limiters.check_key("default", &key).allowed {
                    allowed += 1;
                }
                clock.advance(step);
            }
            let expected = rate as u64 * 60 + burst as u64;
            assert!(
                allowed.abs_diff(expected) <= 1,
                "rate {rate} burst {burst}: {allowed} allowed, expected {expected}"
            );
        }
    }

    #[test]
    fn refusals_say_when_to_retry_and_headers_count_down() {
        let clock = FakeRelativeClock::default();
        let limiters = RateLimiters::with_clock(&limits(1, 3, 100), clock.clone());
        let key = [1u8; 32];
        let remaining: Vec<u32> = (0..3)
            .map(|_| limiters.check_key("default", &key).remaining)
            .collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = limiters.check_key("default", &key);
        assert!(!refused.allowed);
        assert_eq!(
            (refused.limit, refused.remaining, refused.retry_after_secs),
            (3, 0, 1)
        );
        clock.advance(Duration::from_secs(1));
        assert!(limiters.check_key("default", &key).allowed);
    }

    #[test]
    fn tiers_have_their_own_quota_and_keys_do_not_share() {
        let clock = FakeRelativeClock::default();
        let limiters = RateLimiters::with_clock(&limits(1, 1, 100), clock.clone());
        assert!(limiters.check_key("default", &[1; 32]).allowed);
        assert!(!limiters.check_key("default", &[1; 32]).allowed);
        assert!(
            limiters.check_key("default", &[2; 32]).allowed,
            "another key has its own allowance"
        );
        // batch: 10/s — after 100 ms one more request is allowed, unlike the default tier.
        assert!(limiters.check_key("batch", &[3; 32]).allowed);
        clock.advance(Duration::from_millis(100));
        assert!(limiters.check_key("batch", &[3; 32]).allowed);
        assert!(!limiters.check_key("default", &[1; 32]).allowed);
        // An unknown tier falls back to the default quota.
        assert_eq!(limiters.check_key("gold", &[4; 32]).per_second, 1);
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_are_evicted() {
        let clock = FakeRelativeClock::default();
        let limiters = RateLimiters::with_clock(&limits(5, 5, 64), clock.clone());
        for i in 0..10_000u32 {
            limiters.check_ip(IpAddr::from(i.to_be_bytes()));
        }
        assert!(
            limiters.tracked() <= 64 + SHARDS,
            "{} tracked",
            limiters.tracked()
        );
        assert!(limiters.tracked() > 0);
        clock.advance(Duration::from_secs(10));
        limiters.evict_idle();
        assert_eq!(limiters.tracked(), 0);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::from(a), IpKey::from(b));
        assert_ne!(IpKey::from(a), IpKey::from(c));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(IpKey::from(v4), IpKey::from(mapped));
    }
}
