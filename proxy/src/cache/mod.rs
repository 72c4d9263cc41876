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
//! - A REST answer served from the cache is also kept as written under the request body
//!   it came in ([`RouteCache::answered`]): a body seen again (byte for byte, with the same
//!   pool and version) is answered without decoding its tensors or encoding the outputs
//!   again, only its own request id written in (the first input's rows are kept for the
//!   drift window, the predictions for the metrics and feedback). Such an entry carries the
//!   age and TTL of the answer it was made from, counts in the bytes, and not in `len` or
//!   the evictions (those count answers).

pub mod key;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
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

/// One cached answer, or a request body seen before and the answer written for it.
struct Entry {
    key: Box<[u8]>,
    pool: Arc<str>,
    version: Arc<str>,
    held: Held,
    /// When the answer was stored (a body's entry: the answer it was made from).
    stored_ms: u64,
    ttl_ms: u64,
}

enum Held {
    Outputs(Vec<Tensor>),
    Body(Arc<Answered>),
}

/// A REST answer as it was written, kept for the request body it answered
/// ([`RouteCache::answered`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    /// JSON, with binary tensors after it when `json_len` is set.
    pub body: Bytes,
    pub json_len: Option<usize>,
    /// Where the answer's `id` (a JSON string) lies in `body` when it was the gateway's
    /// request id (the request body had none): every hit writes its own there.
    pub id_at: Option<Range<usize>>,
    /// The predictions, as the metrics and feedback take them.
    pub predictions: Vec<(i64, Option<f64>)>,
    /// The first input's row length and rows, as the drift window takes them.
    pub rows: Option<(usize, Vec<f32>)>,
}

impl Answered {
    /// The answer's body and JSON length for a request whose id is `request_id`.
    pub fn for_request(&self, request_id: &str) -> (Bytes, Option<usize>) {
        let Some(at) = &self.id_at else {
            return (self.body.clone(), self.json_len);
        };
        let id = serde_json::to_vec(request_id).expect("a string always serializes");
        let mut body = Vec::with_capacity(self.body.len() - at.len() + id.len());
        body.extend_from_slice(&self.body[..at.start]);
        body.extend_from_slice(&id);
        body.extend_from_slice(&self.body[at.end..]);
        let json_len = self.json_len.map(|n| n - at.len() + id.len());
        (Bytes::from(body), json_len)
    }
}

fn weight(e: &Entry) -> u32 {
    let held = match &e.held {
        Held::Outputs(outputs) => outputs
            .iter()
            .map(|t| t.data().len() * t.dtype().size().max(1) + 8 * t.shape().len())
            .sum(),
        Held::Body(a) => {
            a.body.len() + 16 * a.predictions.len() + a.rows.as_ref().map_or(0, |(_, r)| 4 * r.len())
        }
    };
    u32::try_from(OVERHEAD + e.key.len() + held).unwrap_or(u32::MAX)
}

/// What [`RouteCache::get`] found.
#[derive(Debug, PartialEq)]
pub struct Found {
    pub outputs: Vec<Tensor>,
    /// When the answer was stored, on the cache's clock.
    pub stored_ms: u64,
}

/// Counts since the last [`RouteCache::take_counts`] (the metrics add them up).
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    /// Evicted for room, and expired.
    evicted_size: AtomicU64,
    expired: AtomicU64,
    /// Body entries held (inserted less removed, as moka reports removals).
    bodies: AtomicI64,
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
            .eviction_listener(move |_, e: Arc<Entry>, cause| {
                if let Held::Body(_) = e.held {
                    listener.bodies.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
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
    pub fn get(&self, key: &Key) -> Option<Found> {
        let found = self.live(key).and_then(|e| match &e.held {
            Held::Outputs(outputs) => Some(Found {
                outputs: outputs.clone(),
                stored_ms: e.stored_ms,
            }),
            Held::Body(_) => None,
        });
        self.count(found.is_some());
        found
    }

    /// The entry with exactly `key`, if younger than its TTL (an older one is removed).
    fn live(&self, key: &Key) -> Option<Arc<Entry>> {
        let e = self.entries.get(&key.hash)?;
        if *e.key != *key.bytes {
            return None; // another input whose hash collides: never served
        }
        let age = self.clock.now_ms().saturating_sub(e.stored_ms);
        if age >= e.ttl_ms {
            self.entries.invalidate(&key.hash);
            if let Held::Outputs(_) = e.held {
                self.counts.expired.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        Some(e)
    }

    fn count(&self, hit: bool) {
        let (since, total) = match hit {
            true => (&self.counts.hits, &self.hits_total),
            false => (&self.counts.misses, &self.misses_total),
        };
        since.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(1, Ordering::Relaxed);
    }

    /// The key of a REST request `body` (with its `Inference-Header-Content-Length`) to
    /// `pool`, serving model `version`.
    pub fn body_key(&self, pool: &str, version: &str, header_length: Option<&str>, body: &[u8]) -> Key {
        let bytes = key::body(pool, version, header_length, body).into_boxed_slice();
        Key {
            hash: (self.hash)(&bytes),
            bytes,
        }
    }

    /// The answer written for a request body seen before (its [`Self::body_key`]), while the
    /// answer is younger than its TTL: counted as a hit. Nothing is counted when there is
    /// none (the request goes on to [`Self::get`]).
    pub fn answered(&self, key: &Key) -> Option<Arc<Answered>> {
        let answered = self.live(key).and_then(|e| match &e.held {
            Held::Body(a) => Some(a.clone()),
            Held::Outputs(_) => None,
        })?;
        self.count(true);
        Some(answered)
    }

    /// Keeps the answer written for a request body, served by `pool` at model `version`,
    /// for as long as the answer it was made from (stored at `stored_ms`) lives.
    pub fn keep_answered(&self, key: Key, pool: &str, version: &str, stored_ms: u64, answered: Answered) {
        let ttl_ms = self.spec.ttl_of(pool).as_millis() as u64;
        if self.clock.now_ms().saturating_sub(stored_ms) >= ttl_ms {
            return;
        }
        let entry = Entry {
            key: key.bytes,
            pool: pool.into(),
            version: version.into(),
            held: Held::Body(Arc::new(answered)),
            stored_ms,
            ttl_ms,
        };
        self.counts.bodies.fetch_add(1, Ordering::Relaxed);
        self.entries.insert(key.hash, Arc::new(entry));
    }

    /// Keeps `outputs` as the answer to `key`, served by `pool` at model `version`; gives
    /// when it was stored (None: the pool's answers are not cached).
    pub fn put(&self, key: Key, pool: &str, version: &str, outputs: &[Tensor]) -> Option<u64> {
        let ttl = self.spec.ttl_of(pool);
        if ttl.is_zero() {
            return None;
        }
        let stored_ms = self.clock.now_ms();
        let entry = Entry {
            key: key.bytes,
            pool: pool.into(),
            version: version.into(),
            held: Held::Outputs(outputs.to_vec()),
            stored_ms,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.entries.insert(key.hash, Arc::new(entry));
        Some(stored_ms)
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

    /// Answers held now (as [`Self::bytes`]; the bodies kept with them are not counted).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        let bodies = self.counts.bodies.load(Ordering::Relaxed).max(0) as u64;
        self.entries.entry_count().saturating_sub(bodies)
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
