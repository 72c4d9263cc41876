//! Per-key limits shared by every replica through Redis: one GCRA state per key, updated
//! atomically by a Lua script ([`gcra.lua`](gcra.lua)) on Redis' clock, so that N replicas
//! admit what one would.
//!
//! Redis is a dependency that can fail. A call slower than `timeout_ms`, or any error, makes
//! the caller apply `on_unavailable` (open: this replica's local limits; closed: 503); after
//! a failure the connection is dropped and Redis is left alone for [`PROBE_EVERY`]; then one
//! request probes it (connecting afresh), so that a dead Redis costs each request nothing
//! rather than a time-out. Going down and coming back
//! are logged once each; every request decided without Redis is counted by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::Decision;
use crate::config::{Rate, RedisLimits};

/// After Redis failed, requests skip it this long; then one request probes it.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Why Redis gave no decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// It did not answer within `timeout_ms`.
    Timeout,
    /// Connection refused or lost, or an error reply.
    Error,
    /// It failed recently and is not probed yet.
    Resting,
}

impl Unavailable {
    pub fn label(self) -> &'static str {
        match self {
            Unavailable::Timeout => "timeout",
            Unavailable::Error => "error",
            Unavailable::Resting => "resting",
        }
    }
}

pub struct SharedLimiter {
    settings: RedisLimits,
    client: redis::Client,
    connection: AsyncConnectionConfig,
    /// One multiplexed connection carries every request; dropped on a failure, made again
    /// by the next probe.
    conn: Arc<ArcSwapOption<MultiplexedConnection>>,
    script: Arc<redis::Script>,
    /// The connection and its reconnects live on this runtime, not on one of pingora's.
    runtime: Option<tokio::runtime::Runtime>,
    started: Instant,
    /// Nanoseconds since `started` before which requests skip Redis (0: Redis is up).
    rest_until: AtomicU64,
    /// Whether the last call failed: going down and coming back are logged once each.
    down: AtomicBool,
}

impl SharedLimiter {
    /// Connects, waiting at most the configured time-out: a gateway whose Redis is down
    /// still starts (and applies the configured policy until a probe reaches it).
    pub fn new(settings: &RedisLimits) -> Result<SharedLimiter, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("rate_limits.redis.url {}: {e}", settings.url_redacted()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ratelimit-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis limiter's runtime: {e}"))?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(settings.timeout));
        let limiter = SharedLimiter {
            settings: settings.clone(),
            client,
            connection,
            conn: Arc::new(ArcSwapOption::empty()),
            script: Arc::new(redis::Script::new(include_str!("gcra.lua"))),
            runtime: Some(runtime),
            started: Instant::now(),
            rest_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        };
        // On a thread of its own: the caller may be inside an async runtime, where blocking
        // on another one is not allowed.
        let (handle, client, config) = (
            limiter.runtime.as_ref().expect("set above").handle().clone(),
            limiter.client.clone(),
            limiter.connection.clone(),
        );
        let first = std::thread::spawn(move || {
            handle.block_on(async { client.get_multiplexed_async_connection_with_config(&config).await })
        })
        .join()
        .map_err(|_| "the Redis limiter's first connection attempt panicked".to_string())?;
        match first {
            Ok(c) => limiter.conn.store(Some(Arc::new(c))),
            Err(e) => {
                limiter.down.store(true, Ordering::Relaxed);
                limiter.rest_until.store(
                    limiter.now_ns() + PROBE_EVERY.as_nanos() as u64,
                    Ordering::Relaxed,
                );
                tracing::warn!(
                    redis = %settings.url_redacted(),
                    error = %e,
                    "shared rate limits: cannot reach Redis; {} until it answers",
                    policy_text(settings)
                );
            }
        }
        Ok(limiter)
    }

    pub fn settings(&self) -> &RedisLimits {
        &self.settings
    }

    /// Whether the last call reached Redis (for `/metrics` and `/admin/config`).
    pub fn up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// One request of the key with this digest, at this rate, counted in Redis.
    pub async fn check(&self, rate: Rate, key_digest: &[u8; 32]) -> Result<Decision, Unavailable> {
        let now = self.now_ns();
        let rest_until = self.rest_until.load(Ordering::Relaxed);
        if rest_until != 0 {
            // Resting: only the request that moves the deadline on gets to probe.
            let probe_at = rest_until;
            if now < probe_at
                || self
                    .rest_until
                    .compare_exchange(
                        probe_at,
                        now + PROBE_EVERY.as_nanos() as u64,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                return Err(Unavailable::Resting);
            }
        }
        let outcome = self.call(rate, key_digest).await;
        match &outcome {
            Ok(_) => {
                self.rest_until.store(0, Ordering::Relaxed);
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        redis = %self.settings.url_redacted(),
                        "shared rate limits: Redis answers again; per-key limits are shared across replicas"
                    );
                }
            }
            Err(why) => {
                self.rest_until
                    .store(self.now_ns() + PROBE_EVERY.as_nanos() as u64, Ordering::Relaxed);
                if *why != Unavailable::Resting {
                    // The next probe connects afresh.
                    self.conn.store(None);
                }
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        redis = %self.settings.url_redacted(),
                        reason = why.label(),
                        "shared rate limits: Redis is unavailable; {} until it answers (probed every {} ms)",
                        policy_text(&self.settings),
                        PROBE_EVERY.as_millis()
                    );
                }
            }
        }
        outcome
    }

    async fn call(&self, rate: Rate, key_digest: &[u8; 32]) -> Result<Decision, Unavailable> {
        let Some(runtime) = &self.runtime else {
            return Err(Unavailable::Error);
        };
        let interval_us = 1e6 / rate.per_second.get() as f64;
        // 128 bits of the key's SHA-256 digest name its state: never the key itself.
        let key = format!("{}:{}", self.settings.prefix, hex::encode(&key_digest[..16]));
        let burst = rate.burst.get();
        let (existing, slot) = (self.conn.load_full(), self.conn.clone());
        let (client, config) = (self.client.clone(), self.connection.clone());
        let script = self.script.clone();
        let task = runtime.spawn(async move {
            let mut conn = match existing {
                Some(c) => (*c).clone(),
                None => {
                    let c = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    slot.store(Some(Arc::new(c.clone())));
                    c
                }
            };
            let mut invocation = script.key(key);
            invocation.arg(format!("{interval_us:.6}")).arg(burst);
            invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn).await
        });
        let reply = match tokio::time::timeout(self.settings.timeout, task).await {
            Err(_) => return Err(Unavailable::Timeout),
            Ok(Err(_)) => return Err(Unavailable::Error),
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "shared rate limits: Redis call failed");
                return Err(if e.is_timeout() {
                    Unavailable::Timeout
                } else {
                    Unavailable::Error
                });
            }
            Ok(Ok(Ok(reply))) => reply,
        };
        Ok(decision(rate, reply))
    }
}

fn policy_text(settings: &RedisLimits) -> &'static str {
    match settings.on_unavailable {
        crate::config::OnUnavailable::Open => "fail open: each replica applies its local limits",
        crate::config::OnUnavailable::Closed => "fail closed: keyed requests get 503",
    }
}

/// The script's reply `(allowed, remaining, retry_after_us, reset_us)` as a [`Decision`].
fn decision(rate: Rate, (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64)) -> Decision {
    let secs_ceil = |us: i64| (us.max(0) as u64).div_ceil(1_000_000);
    let allowed = allowed == 1;
    Decision {
        allowed,
        limit: rate.burst.get(),
        remaining: remaining.clamp(0, rate.burst.get() as i64) as u32,
        reset_secs: if allowed {
            secs_ceil(reset_us)
        } else {
            secs_ceil(retry_us).max(1)
        },
        retry_after_secs: if allowed { 0 } else { secs_ceil(retry_us).max(1) },
        per_second: rate.per_second.get(),
    }
}

impl Drop for SharedLimiter {
    fn drop(&mut self) {
        // A replaced snapshot may be dropped on an async thread, where dropping a runtime
        // the blocking way would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn replies_become_headers() {
        let rate = Rate {
            per_second: NonZeroU32::new(2).unwrap(),
            burst: NonZeroU32::new(4).unwrap(),
        };
        let ok = decision(rate, (1, 3, 0, 500_000));
        assert!(ok.allowed);
        assert_eq!(
            (ok.limit, ok.remaining, ok.reset_secs, ok.retry_after_secs),
            (4, 3, 1, 0)
        );
        let refused = decision(rate, (0, 0, 1_200_000, 1_700_000));
        assert!(!refused.allowed);
        assert_eq!(
            (refused.remaining, refused.retry_after_secs, refused.reset_secs),
            (0, 2, 2)
        );
        // Retry-After is at least 1 even when the wait is shorter.
        assert_eq!(decision(rate, (0, 0, 10, 10)).retry_after_secs, 1);
    }
}
