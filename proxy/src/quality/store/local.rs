//! This replica's feedback store: predictions kept in memory, oldest first out, within
//! `quality.feedback.max_bytes` as the process's memory counts them.
//!
//! Per shard, the predictions wait in a ring in the order they came (a slot of 32 bytes each,
//! the record boxed), and a hash table of 16-byte entries (the id's hash, the slot's sequence
//! number) finds them by id. Why not a map from id to record: its buckets held the records
//! themselves (some 230 bytes, at most 7/8 full, so up to twice that per prediction) and the
//! eviction queue a second copy of every id, so a store that counted 63 MiB took 175 MiB
//! (`VmRSS` of a gateway before and after 360,000 requests, a one-off in `docs/limits.md`;
//! 63 MiB now); and every eviction read the evicted id twice, from memory no cache
//! held (the map's entry lookups were 3.2% of the I/O thread at 35,000 requests/s, `perf`).
//! Here eviction finds its table entry by hash and sequence number, reading no id.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::Mutex;

use super::{Found, MAX_SHADOWS, Served, ShadowServed};

type Hasher = foldhash::quality::RandomState;

/// This replica's store.
pub struct Local {
    /// Split by request id: a table grows by doubling, copying itself whole under its lock,
    /// and one table for the whole bound paused every request for tens of milliseconds at a
    /// few hundred thousand entries (the p99 of loadtests/bench_gateway.sh). Sizing it once
    /// instead made the process's memory jump to the full bound within a few thousand
    /// requests (a hash table's entries land on every page). A shard copies at most
    /// `SHARD_BYTES` worth when it grows, and grows only as far as it is used.
    shards: Box<[Shard]>,
    /// foldhash, not SipHash: one hash of the id per answer picks the shard (its high bits)
    /// and the table's bucket (its low ones). The quality variant, seeded per process: ids
    /// may be chosen by clients.
    hasher: Hasher,
    shard_bytes: usize,
    keep: Duration,
}

/// The bound of one shard, at most: about 2,400 one-row predictions.
const SHARD_BYTES: usize = 1 << 20;
const MAX_SHARDS: usize = 256;

/// Records a [`Local::put`] could not file at once, per shard, at most (the lock is held for
/// microseconds; beyond this the put waits for it).
const PENDING: usize = 64;

struct Shard {
    inner: Mutex<Inner>,
    /// Puts that found `inner` locked, filed by the next holder before anything else.
    pending: crossbeam_queue::ArrayQueue<(u64, String, Served)>,
}

#[derive(Default)]
struct Inner {
    /// (hash of the id, sequence number) of each slot in `ring`.
    table: HashTable<(u64, u64)>,
    /// Oldest first; sequence numbers follow each other, so a slot's place is its number
    /// less the front's.
    ring: VecDeque<Slot>,
    bytes: usize,
    seq: u64,
}

struct Slot {
    hash: u64,
    seq: u64,
    /// When it was put (Unix ms): the eviction reads no further than the slot.
    at_ms: u64,
    kept: Box<Kept>,
}

struct Kept {
    id: Box<str>,
    served: Served,
    shadows: Vec<ShadowServed>,
    labels: Option<Vec<i64>>,
    ambiguous: bool,
    bytes: usize,
}

/// Bytes of a heap allocation of `n` bytes, about: rounded up to 16 (mimalloc's size classes
/// up to 128 bytes; a little coarser above).
fn heap(n: usize) -> usize {
    if n == 0 { 0 } else { n.next_multiple_of(16) }
}

/// What keeping one prediction costs: its slot in the ring and its entry in the table, each
/// twice (both grow by doubling: at most half empty), the boxed record, and the heap of the
/// id, the strings and the classes.
fn weight(id: &str, s: &Served) -> usize {
    2 * size_of::<Slot>()
        + 2 * (size_of::<(u64, u64)>() + 1)
        + heap(size_of::<Kept>())
        + heap(id.len())
        + heap(s.tenant.len())
        + heap(s.route.len())
        + heap(s.variant.len())
        + heap(s.version.len())
        + heap(8 * s.classes.len())
}

/// What a shadow's record adds (the vector of shadows grows one at a time).
fn shadow_weight(s: &ShadowServed) -> usize {
    size_of::<ShadowServed>() + heap(s.pool.len()) + heap(s.version.len()) + heap(8 * s.classes.len())
}

impl Inner {
    /// The place in `ring` of the prediction under `id`.
    fn find(&self, hash: u64, id: &str) -> Option<usize> {
        let base = self.ring.front()?.seq;
        let place = |seq: u64| (seq - base) as usize;
        self.table
            .find(hash, |&(h, seq)| {
                h == hash && *self.ring[place(seq)].kept.id == *id
            })
            .map(|&(_, seq)| place(seq))
    }

    fn get_mut(&mut self, hash: u64, id: &str) -> Option<&mut Kept> {
        let i = self.find(hash, id)?;
        Some(&mut self.ring[i].kept)
    }
}

impl Local {
    pub fn new(max_bytes: usize, ttl: Duration) -> Local {
        let n = max_bytes.div_ceil(SHARD_BYTES).clamp(1, MAX_SHARDS);
        Local {
            shards: (0..n)
                .map(|_| Shard {
                    inner: Mutex::default(),
                    pending: crossbeam_queue::ArrayQueue::new(PENDING),
                })
                .collect(),
            hasher: Hasher::default(),
            shard_bytes: max_bytes / n,
            keep: ttl * 2,
        }
    }

    /// The id's hash and its shard.
    fn shard(&self, id: &str) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(id);
        // The high half: the table's buckets come from the low bits.
        (hash, &self.shards[(hash >> 32) as usize % self.shards.len()])
    }

    /// The shard of `id`, locked, with its pending puts filed, and the id's hash.
    fn lock(&self, id: &str) -> (u64, parking_lot::MutexGuard<'_, Inner>) {
        let (hash, shard) = self.shard(id);
        let mut g = shard.inner.lock();
        self.file_pending(shard, &mut g);
        (hash, g)
    }

    fn file_pending(&self, shard: &Shard, g: &mut Inner) {
        while let Some((hash, id, served)) = shard.pending.pop() {
            self.insert(g, hash, &id, served);
        }
    }

    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut g = s.inner.lock();
                self.file_pending(s, &mut g);
                g.bytes
            })
            .sum()
    }

    /// Records a prediction; never waits for the lock (see the module comment of `store`).
    pub fn put(&self, id: &str, served: Served) {
        let (hash, shard) = self.shard(id);
        let mut g = match shard.inner.try_lock() {
            Some(g) => g,
            None => match shard.pending.push((hash, id.to_string(), served)) {
                Ok(()) => return,
                Err((_, _, served)) => {
                    let mut g = shard.inner.lock();
                    self.file_pending(shard, &mut g);
                    self.insert(&mut g, hash, id, served);
                    return;
                }
            },
        };
        self.file_pending(shard, &mut g);
        self.insert(&mut g, hash, id, served);
    }

    fn insert(&self, g: &mut Inner, hash: u64, id: &str, served: Served) {
        if let Some(taken) = g.get_mut(hash, id) {
            taken.ambiguous = true;
            return;
        }
        let now = served.at_ms;
        let bytes = weight(id, &served);
        let seq = g.seq + 1;
        g.seq = seq;
        g.table.insert_unique(hash, (hash, seq), |&(h, _)| h);
        g.ring.push_back(Slot {
            hash,
            seq,
            at_ms: now,
            kept: Box::new(Kept {
                id: id.into(),
                served,
                shadows: Vec::new(),
                labels: None,
                ambiguous: false,
                bytes,
            }),
        });
        g.bytes += bytes;
        // The oldest go while over the bound or kept for long enough.
        let keep_ms = self.keep.as_millis() as u64;
        while let Some(front) = g.ring.front() {
            if g.bytes <= self.shard_bytes && front.at_ms + keep_ms >= now {
                break;
            }
            let old = g.ring.pop_front().expect("the front was just read");
            if let Ok(entry) = g.table.find_entry(old.hash, |&(_, seq)| seq == old.seq) {
                entry.remove();
            }
            g.bytes -= old.kept.bytes;
        }
    }

    /// Remembers a shadow's classes; when the request's labels came already, gives them
    /// back with the labels and the primary's record, so the caller counts the shadow now.
    pub fn add_shadow(&self, id: &str, shadow: ShadowServed) -> Option<(Served, Vec<i64>, ShadowServed)> {
        let (hash, mut g) = self.lock(id);
        let kept = g.get_mut(hash, id)?;
        if kept.ambiguous {
            return None;
        }
        if let Some(labels) = &kept.labels {
            return Some((kept.served.clone(), labels.clone(), shadow));
        }
        if kept.shadows.len() < MAX_SHADOWS {
            let extra = shadow_weight(&shadow);
            kept.shadows.reserve_exact(1);
            kept.shadows.push(shadow);
            kept.bytes += extra;
            g.bytes += extra;
        }
        None
    }

    pub fn lookup(&self, id: &str) -> Found {
        let (hash, g) = self.lock(id);
        match g.find(hash, id).map(|i| &g.ring[i].kept) {
            None => Found::Unknown,
            Some(k) if k.ambiguous => Found::Ambiguous,
            Some(k) if k.labels.is_some() => Found::Duplicate,
            Some(k) => Found::Open(k.served.clone()),
        }
    }

    /// Marks the request labelled; the shadows recorded so far, or `None` when someone else
    /// marked it first (or it went meanwhile).
    pub fn mark(&self, id: &str, labels: &[i64]) -> Option<Vec<ShadowServed>> {
        let (hash, mut g) = self.lock(id);
        let kept = g.get_mut(hash, id)?;
        if kept.labels.is_some() || kept.ambiguous {
            return None;
        }
        kept.labels = Some(labels.to_vec());
        let extra = heap(8 * labels.len());
        kept.bytes += extra;
        let shadows = std::mem::take(&mut kept.shadows);
        g.bytes += extra;
        Some(shadows)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn served(at_ms: u64, classes: Vec<i64>) -> Served {
        Served {
            tenant: "t".into(),
            route: "r".into(),
            variant: "stable".into(),
            version: "1".into(),
            forced: false,
            classes,
            at_ms,
        }
    }

    #[test]
    fn local_joins_once_and_refuses_reused_ids() {
        let s = Local::new(1 << 20, Duration::from_secs(60));
        s.put("a", served(1, vec![1, 0]));
        assert_eq!(s.lookup("a"), Found::Open(served(1, vec![1, 0])));
        let shadow = ShadowServed {
            pool: "p".into(),
            version: "3".into(),
            classes: vec![1, 1],
        };
        assert!(s.add_shadow("a", shadow.clone()).is_none());
        assert_eq!(s.mark("a", &[1, 1]), Some(vec![shadow.clone()]));
        assert_eq!(s.mark("a", &[1, 1]), None, "a second mark loses");
        assert_eq!(s.lookup("a"), Found::Duplicate);
        // A shadow that answers after the label is joined at once.
        assert_eq!(
            s.add_shadow("a", shadow.clone()),
            Some((served(1, vec![1, 0]), vec![1, 1], shadow))
        );
        s.put("b", served(2, vec![1]));
        s.put("b", served(3, vec![0]));
        assert_eq!(s.lookup("b"), Found::Ambiguous);
        assert_eq!(s.mark("b", &[1]), None);
        assert_eq!(s.lookup("zzz"), Found::Unknown);
    }

    #[test]
    fn local_stays_within_its_bytes_and_forgets_the_oldest() {
        let s = Local::new(10_000, Duration::from_secs(60));
        for i in 0..1000 {
            s.put(&format!("id{i}"), served(i, vec![1; 4]));
            assert!(s.bytes() <= 10_000);
        }
        assert_eq!(s.lookup("id0"), Found::Unknown);
        assert!(matches!(s.lookup("id999"), Found::Open(_)));
        // Entries older than twice the TTL go when newer ones come.
        s.put("late", served(999 + 121_000, vec![1]));
        assert_eq!(s.lookup("id999"), Found::Unknown);
    }

    #[test]
    fn a_sharded_local_store_stays_within_its_bytes_and_keeps_the_newest() {
        let max = 8 * SHARD_BYTES;
        let s = Local::new(max, Duration::from_secs(60));
        assert_eq!(s.shards.len(), 8);
        for i in 0..100_000 {
            s.put(&format!("id{i}"), served(i, vec![1]));
        }
        assert!(s.bytes() <= max && s.bytes() > max * 9 / 10, "{}", s.bytes());
        for i in 99_000..100_000 {
            assert!(matches!(s.lookup(&format!("id{i}")), Found::Open(_)));
        }
        assert_eq!(s.lookup("id0"), Found::Unknown);
        // Every slot that went took its table entry with it.
        for shard in s.shards.iter() {
            let g = shard.inner.lock();
            assert_eq!(g.table.len(), g.ring.len());
        }
    }

    #[test]
    fn an_id_that_went_is_new_when_it_comes_again_and_a_reused_one_goes_in_its_turn() {
        let s = Local::new(10_000, Duration::from_secs(60));
        s.put("a", served(1, vec![1]));
        s.put("a", served(2, vec![1]));
        assert_eq!(s.lookup("a"), Found::Ambiguous);
        for i in 0..100 {
            s.put(&format!("id{i}"), served(3, vec![1]));
        }
        assert_eq!(
            s.lookup("a"),
            Found::Unknown,
            "the ambiguous entry went oldest first"
        );
        s.put("a", served(4, vec![0]));
        assert_eq!(s.lookup("a"), Found::Open(served(4, vec![0])));
        let g = s.shards[0].inner.lock();
        assert_eq!(g.table.len(), g.ring.len());
    }

    #[test]
    fn the_bytes_count_what_is_held() {
        let s = Local::new(1 << 20, Duration::from_secs(60));
        let one = served(1, vec![1]);
        s.put("0123456789abcdef0123456789abcdef", one.clone());
        let b = s.bytes();
        // The slot, the table entry (twice each: both grow by doubling), the boxed record
        // and six heap allocations.
        let least = 2 * size_of::<Slot>() + 2 * 16 + size_of::<Kept>() + 32 + 5 * 16;
        assert!(b >= least, "{b} < {least}");
        let shadow = ShadowServed {
            pool: "p".into(),
            version: "3".into(),
            classes: vec![1],
        };
        s.add_shadow("0123456789abcdef0123456789abcdef", shadow);
        assert!(s.bytes() >= b + size_of::<ShadowServed>() + 3 * 16);
    }

    #[test]
    fn a_put_that_finds_its_shard_locked_waits_for_nothing_and_is_not_lost() {
        let s = Local::new(1 << 20, Duration::from_secs(60));
        let (_, shard) = s.shard("a");
        let held = shard.inner.lock();
        // As the client path does while an idle-priority shadow task holds the lock.
        s.put("a", served(1, vec![1]));
        for i in 1..PENDING {
            s.put(&format!("more{i}"), served(2, vec![0]));
        }
        assert_eq!(shard.pending.len(), PENDING, "queued, not waited for");
        drop(held);
        assert_eq!(s.lookup("a"), Found::Open(served(1, vec![1])));
        assert!(shard.pending.is_empty(), "filed by the next holder");
        for i in 1..PENDING {
            assert!(matches!(s.lookup(&format!("more{i}")), Found::Open(_)));
        }
    }
}
