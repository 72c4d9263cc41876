//! The prediction cache: a route's answers kept for its TTL, keyed by the pool and model
//! version that answered and the canonical inputs ([`key`]), so that it can never serve one
//! variant's or version's answer to a request for another, nor one input's to another.
//!
//! - The split chooses the variant first; the key names the pool that variant is served by
//!   and its model version, so canary and stable answers (and sticky clients) never meet.
//! - A reload that changes a pool's model version makes its old entries unreachable at once
//!   (the version is in the key) and frees them ([`RouteCache::retain`]); one that changes
//!   the route's cache settings starts an empty cache.
//! - An entry is served while younger than its TTL, measured on the cache's clock in
//!   milliseconds: at exactly the TTL it is a miss.
//! - Only answers are cached: errors never are.
//! - Bounded by `max_bytes` through moka's weigher (key, outputs and bookkeeping); what goes
//!   beyond is evicted (least recently and least frequently used first) and counted.

pub mod key;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use inference::{NamedTensor, Tensor};
use moka::notification::RemovalCause;

use crate::config::CacheSpec;
use crate::quality::WallClock;
pub use key::Key;

/// The cache's clock: milliseconds since it was made, never going back (a TTL must not
/// stretch when the wall clock is set back).
pub struct Monotonic(std::time::Instant);

impl Monotonic {
    pub fn new() -> Monotonic {
        Monotonic(std::time::Instant::now())
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock for Monotonic {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Bytes an entry costs beyond its key and tensors (moka's node, the `Arc`, the vectors).
const OVERHEAD: usize = 160;

/// One cached answer.
struct Entry {
    key: Box<[u8]>,
    pool: Arc<str>,
    version: Arc<str>,
    outputs: Vec<Tensor>,
    stored_ms: u64,
    ttl_ms: u64,
}

fn weight(e: &Entry) -> u32 {
    let tensors: usize = e
        .outputs
        .iter()
        .map(|t| t.data().len() * t.dtype().size().max(1) + 8 * t.shape().len())
        .sum();
    u32::try_from(OVERHEAD + e.key.len() + tensors).unwrap_or(u32::MAX)
}

/// Counts since the last [`RouteCache::take_counts`] (the metrics add them up).
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    /// Evicted for room, and expired.
    evicted_size: AtomicU64,
    expired: AtomicU64,
}

/// What [`RouteCache::take_counts`] returns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub hits: u64,
    pub misses: u64,
    pub evicted_size: u64,
    pub expired: u64,
}

/// One route's cache.
pub struct RouteCache {
    spec: CacheSpec,
    entries: moka::sync::Cache<u128, Arc<Entry>>,
    clock: Arc<dyn WallClock>,
    hash: fn(&[u8]) -> u128,
    counts: Arc<Counts>,
    /// Hits and misses since the cache was made, for `/admin/routes`.
    hits_total: AtomicU64,
    misses_total: AtomicU64,
}

impl RouteCache {
    pub fn new(spec: CacheSpec, clock: Arc<dyn WallClock>) -> RouteCache {
        Self::with_hash(spec, clock, key::xxh3)
    }

    /// With another hash (tests force collisions with a constant one).
    pub fn with_hash(spec: CacheSpec, clock: Arc<dyn WallClock>, hash: fn(&[u8]) -> u128) -> RouteCache {
        let counts = Arc::new(Counts::default());
        let listener = counts.clone();
        // moka frees what is older than the longest TTL; the exact TTL is checked on lookup.
        let longest = spec
            .pool_ttl
            .values()
            .copied()
            .chain([spec.ttl])
            .max()
            .unwrap_or(spec.ttl);
        let entries = moka::sync::Cache::builder()
            .max_capacity(spec.max_bytes)
            .weigher(|_, e: &Arc<Entry>| weight(e))
            .time_to_live(longest.max(Duration::from_secs(1)))
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                let c = match cause {
                    RemovalCause::Size => &listener.evicted_size,
                    RemovalCause::Expired => &listener.expired,
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                c.fetch_add(1, Ordering::Relaxed);
            })
            .build();
        RouteCache {
            spec,
            entries,
            clock,
            hash,
            counts,
            hits_total: AtomicU64::new(0),
            misses_total: AtomicU64::new(0),
        }
    }

    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    /// Whether `pool`'s answers are cached at all (a TTL of zero: never).
    pub fn caches(&self, pool: &str) -> bool {
        !self.spec.ttl_of(pool).is_zero()
    }

    /// The key of a request to `pool`, serving model `version`.
    pub fn key(&self, pool: &str, version: &str, inputs: &[NamedTensor]) -> Key {
        let bytes = key::canonical(pool, version, inputs).into_boxed_slice();
        Key {
            hash: (self.hash)(&bytes),
            bytes,
        }
    }

    /// The cached outputs for `key`, if an entry with exactly this key is younger than its
    /// TTL. Counts the hit or miss.
    pub fn get(&self, key: &Key) -> Option<Vec<Tensor>> {
        let found = self.entries.get(&key.hash).and_then(|e| {
            if *e.key != *key.bytes {
                return None; // another input whose hash collides: never served
            }
            let age = self.clock.now_ms().saturating_sub(e.stored_ms);
            if age >= e.ttl_ms {
                self.entries.invalidate(&key.hash);
                self.counts.expired.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Some(e.outputs.clone())
        });
        let (since, total) = match found {
            Some(_) => (&self.counts.hits, &self.hits_total),
            None => (&self.counts.misses, &self.misses_total),
        };
        since.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `outputs` as the answer to `key`, served by `pool` at model `version`.
    pub fn put(&self, key: Key, pool: &str, version: &str, outputs: &[Tensor]) {
        let ttl = self.spec.ttl_of(pool);
        if ttl.is_zero() {
            return;
        }
        let entry = Entry {
            key: key.bytes,
            pool: pool.into(),
            version: version.into(),
            outputs: outputs.to_vec(),
            stored_ms: self.clock.now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.entries.insert(key.hash, Arc::new(entry));
    }

    /// After a reload: frees every entry not of one of the `(pool, version)` pairs the
    /// route serves now (they could not be found anyway: both are in the key).
    pub fn retain(&self, served: Vec<(String, String)>) {
        // Fails only without `support_invalidation_closures`, which the builder sets.
        let _ = self.entries.invalidate_entries_if(move |_, e| {
            !served.iter().any(|(p, v)| *e.pool == **p && *e.version == **v)
        });
        self.entries.run_pending_tasks();
    }

    /// Bytes held now (as the weigher counts them), after moka's pending maintenance: for
    /// the admin listener and the metrics, not the request path.
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Entries held now (as [`Self::bytes`]).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hits and misses since the cache was made.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.hits_total.load(Ordering::Relaxed),
            self.misses_total.load(Ordering::Relaxed),
        )
    }

    /// Counts since the last call (for the metrics, which add them up).
    pub fn take_counts(&self) -> Taken {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        Taken {
            hits: take(&self.counts.hits),
            misses: take(&self.counts.misses),
            evicted_size: take(&self.counts.evicted_size),
            expired: take(&self.counts.expired),
        }
    }

    /// Runs moka's pending maintenance (evictions, listener calls) now.
    pub fn settle(&self) {
        self.entries.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;
