//! This replica's feedback store: predictions kept in memory, oldest first out, within
//! `quality.feedback.max_bytes` as the process's memory counts them.
//!
//! Per shard, the predictions wait in a ring in the order they came, each record whole in its
//! slot, and a hash table of 16-byte entries (the id's hash, the slot's sequence number) finds
//! them by id. Why not a map from id to record: its buckets held the records themselves (some
//! 230 bytes, at most 7/8 full, so up to twice that per prediction) and the eviction queue a
//! second copy of every id, so a store that counted 63 MiB took 175 MiB (`VmRSS` of a gateway
//! before and after 360,000 requests, a one-off in `docs/limits.md`; 63 MiB now); and every
//! eviction read the evicted id twice, from memory no cache held. Here eviction finds its
//! table entry by hash and sequence number, reading no id.
//!
//! Why the record lives in its slot, its strings shared: a full store evicts one prediction
//! for every one it keeps, from memory written a few hundred thousand requests before, which
//! no cache holds. With the record boxed and its id, tenant, route, variant, version and
//! classes each on the heap, an eviction read (and freed) seven such places, and keeping
//! predictions cost the gateway about 2.7 µs per request proxied at its maximum rate
//! (20.3 µs against 17.6 with `feedback.enabled: false`; 18.6–19.1 with a 1 MiB store that
//! the caches held: a one-off with wrk, docs/performance.md). Now a record is one slot: the
//! id inline when it is at most [`INLINE_ID`] bytes (the gateway's own ids are 32), the
//! classes inline for up to two rows, the strings interned per shard ([`Strings`]), and
//! what a join adds (shadows, labels) boxed, only for the predictions that get them.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::Mutex;
use smallvec::SmallVec;

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

/// The bound of one shard, at most: about 3,800 one-row predictions.
const SHARD_BYTES: usize = 1 << 20;
const MAX_SHARDS: usize = 256;

/// Records a [`Local::put`] could not file at once, per shard, at most (the lock is held for
/// microseconds; beyond this the put waits for it).
const PENDING: usize = 64;

/// Ids up to this long are kept in the slot; longer ones (clients' own, up to 128 bytes) on
/// the heap.
const INLINE_ID: usize = 32;

/// Distinct origins a shard's [`Strings`] shares, at most.
const MAX_STRINGS: usize = 256;

struct Shard {
    /// Whether `pending` may hold puts: read on every put, beside the lock it takes, where
    /// the queue's own ends are two cache lines a put rarely finds warm (its pop was 0.6% of
    /// the I/O thread's samples at 40,000 requests/s, `perf`).
    queued: AtomicBool,
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
    strings: Strings,
    bytes: usize,
    seq: u64,
}

/// What a shard's records share, one copy each: a prediction's tenant, route, variant and
/// version (its origin), a shadow's pool and version. A record holds a count on its origin
/// instead of strings of its own, so that evicting it frees nothing cold and its slot stays
/// small. An origin is one of a few per gateway. The table is weighed with the shard (its
/// origins stay while the process runs) and holds at most [`MAX_STRINGS`] of them within an
/// eighth of the shard's bytes; past that (a gateway with that many tenants) a record gets an
/// origin of its own, weighed with it.
#[derive(Default)]
struct Strings {
    table: HashTable<Arc<[Box<str>]>>,
    hasher: foldhash::fast::FixedState,
    /// What the table's origins weigh.
    bytes: usize,
}

impl Strings {
    fn hash<'a>(hasher: &foldhash::fast::FixedState, parts: impl Iterator<Item = &'a str>) -> u64 {
        let mut h = hasher.build_hasher();
        for p in parts {
            h.write(p.as_bytes());
            h.write_u8(0xff); // not UTF-8: ("ab", "c") and ("a", "bc") differ
        }
        h.finish()
    }

    /// The origin of these parts, and what it adds to the record that takes it: nothing when
    /// shared, its weight when the record's own. `room`: the bytes the table may hold.
    fn get(&mut self, parts: &[&str], room: usize) -> (Arc<[Box<str>]>, usize) {
        let hash = Strings::hash(&self.hasher, parts.iter().copied());
        let same =
            |t: &Arc<[Box<str>]>| t.len() == parts.len() && t.iter().zip(parts).all(|(a, b)| **a == **b);
        if let Some(found) = self.table.find(hash, same) {
            return (found.clone(), 0);
        }
        let new: Arc<[Box<str>]> = parts.iter().map(|p| Box::from(*p)).collect();
        // The Arc's counts and the boxes' pointers, then the strings.
        let weight = heap(16 + 16 * parts.len()) + parts.iter().map(|p| heap(p.len())).sum::<usize>();
        if self.table.len() >= MAX_STRINGS || self.bytes + weight > room {
            return (new, weight);
        }
        self.bytes += weight;
        let hasher = &self.hasher;
        self.table.insert_unique(hash, new.clone(), |t| {
            Strings::hash(hasher, t.iter().map(|p| &**p))
        });
        (new, 0)
    }
}

struct Slot {
    hash: u64,
    seq: u64,
    kept: Kept,
}

/// One prediction, whole in its slot but for what joins add.
struct Kept {
    /// When it was put (Unix ms): the eviction reads no further than the slot.
    at_ms: u64,
    /// Tenant, route, variant and version.
    origin: Arc<[Box<str>]>,
    id: SmallVec<[u8; INLINE_ID]>,
    classes: SmallVec<[i64; 2]>,
    /// The shadows' classes and the labels, once either came.
    joined: Option<Box<Joined>>,
    forced: bool,
    ambiguous: bool,
    bytes: u32,
}

#[derive(Default)]
struct Joined {
    shadows: SmallVec<[ShadowKept; 1]>,
    labels: Option<Vec<i64>>,
}

/// A shadow's classes, as [`ShadowServed`] with its strings interned.
struct ShadowKept {
    /// Pool and version.
    origin: Arc<[Box<str>]>,
    classes: SmallVec<[i64; 2]>,
}

impl ShadowKept {
    fn served(&self) -> ShadowServed {
        let [pool, version] = &*self.origin else {
            unreachable!("a shadow's origin has two parts")
        };
        ShadowServed {
            pool: pool.to_string(),
            version: version.to_string(),
            classes: self.classes.to_vec(),
        }
    }
}

impl Kept {
    fn served(&self) -> Served {
        let [tenant, route, variant, version] = &*self.origin else {
            unreachable!("an origin has four parts")
        };
        Served {
            tenant: tenant.to_string(),
            route: route.to_string(),
            variant: variant.to_string(),
            version: version.to_string(),
            forced: self.forced,
            classes: self.classes.to_vec(),
            at_ms: self.at_ms,
        }
    }

    fn labels(&self) -> Option<&Vec<i64>> {
        self.joined.as_ref()?.labels.as_ref()
    }

    /// Adds `extra` bytes to the record's weight.
    fn grow(&mut self, extra: usize) {
        self.bytes = self.bytes.saturating_add(extra as u32);
    }
}

/// Bytes of a heap allocation of `n` bytes, about: rounded up to 16 (mimalloc's size classes
/// up to 128 bytes; a little coarser above).
fn heap(n: usize) -> usize {
    if n == 0 { 0 } else { n.next_multiple_of(16) }
}

/// What keeping one prediction costs: its slot in the ring and its entry in the table, each
/// twice (both grow by doubling: at most half empty), and the heap of an id or classes too
/// long for the slot (its origin: [`Strings::get`]).
fn weight(id: &str, s: &Served) -> usize {
    let spilled = |len: usize, inline: usize| if len > inline { heap(len) } else { 0 };
    2 * size_of::<Slot>()
        + 2 * (size_of::<(u64, u64)>() + 1)
        + spilled(id.len(), INLINE_ID)
        + spilled(8 * s.classes.len(), 16)
}

/// What a shadow's record adds: the box of joins with the first, a place in its list for
/// each after the first (which grows by doubling), and classes too long for the place.
fn shadow_weight(first: bool, s: &ShadowServed) -> usize {
    let place = if first {
        heap(size_of::<Joined>())
    } else {
        2 * size_of::<ShadowKept>()
    };
    place
        + if s.classes.len() > 2 {
            heap(8 * s.classes.len())
        } else {
            0
        }
}

impl Inner {
    /// The place in `ring` of the prediction under `id`.
    fn find(&self, hash: u64, id: &str) -> Option<usize> {
        let base = self.ring.front()?.seq;
        let place = |seq: u64| (seq - base) as usize;
        self.table
            .find(hash, |&(h, seq)| {
                h == hash && *self.ring[place(seq)].kept.id == *id.as_bytes()
            })
            .map(|&(_, seq)| place(seq))
    }

    fn get_mut(&mut self, hash: u64, id: &str) -> Option<&mut Kept> {
        let i = self.find(hash, id)?;
        Some(&mut self.ring[i].kept)
    }

    /// The shared or own origin of these parts ([`Strings::get`]), the table's growth counted
    /// with the shard; also what it adds to the record that takes it.
    fn origin(&mut self, parts: &[&str], shard_bytes: usize) -> (Arc<[Box<str>]>, usize) {
        let before = self.strings.bytes;
        let got = self.strings.get(parts, shard_bytes / 8);
        self.bytes += self.strings.bytes - before;
        got
    }
}

impl Local {
    pub fn new(max_bytes: usize, ttl: Duration) -> Local {
        let n = max_bytes.div_ceil(SHARD_BYTES).clamp(1, MAX_SHARDS);
        Local {
            shards: (0..n)
                .map(|_| Shard {
                    queued: AtomicBool::new(false),
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
        // A put that queues sets the flag after its record is in: one whose flag this misses
        // is filed by the next holder, and its own put has not returned yet.
        if !shard.queued.load(Ordering::Acquire) || !shard.queued.swap(false, Ordering::AcqRel) {
            return;
        }
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
                Ok(()) => {
                    shard.queued.store(true, Ordering::Release);
                    return;
                }
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
        let parts = [
            &*served.tenant,
            &*served.route,
            &*served.variant,
            &*served.version,
        ];
        let (origin, own) = g.origin(&parts, self.shard_bytes);
        let bytes = weight(id, &served) + own;
        let seq = g.seq + 1;
        g.seq = seq;
        g.table.insert_unique(hash, (hash, seq), |&(h, _)| h);
        let kept = Kept {
            at_ms: now,
            origin,
            id: SmallVec::from_slice(id.as_bytes()),
            classes: SmallVec::from_vec(served.classes),
            joined: None,
            forced: served.forced,
            ambiguous: false,
            bytes: bytes as u32,
        };
        g.ring.push_back(Slot { hash, seq, kept });
        g.bytes += bytes;
        // The oldest go while over the bound or kept for long enough.
        let keep_ms = self.keep.as_millis() as u64;
        while let Some(front) = g.ring.front() {
            if g.bytes <= self.shard_bytes && front.kept.at_ms + keep_ms >= now {
                break;
            }
            let old = g.ring.pop_front().expect("the front was just read");
            if let Ok(entry) = g.table.find_entry(old.hash, |&(_, seq)| seq == old.seq) {
                entry.remove();
            }
            g.bytes -= old.kept.bytes as usize;
        }
    }

    /// Remembers a shadow's classes; when the request's labels came already, gives them
    /// back with the labels and the primary's record, so the caller counts the shadow now.
    pub fn add_shadow(&self, id: &str, shadow: ShadowServed) -> Option<(Served, Vec<i64>, ShadowServed)> {
        let (hash, mut g) = self.lock(id);
        let i = g.find(hash, id)?;
        let kept = &g.ring[i].kept;
        if kept.ambiguous {
            return None;
        }
        if let Some(labels) = kept.labels() {
            return Some((kept.served(), labels.clone(), shadow));
        }
        let first = kept.joined.is_none();
        if kept
            .joined
            .as_ref()
            .is_some_and(|j| j.shadows.len() >= MAX_SHADOWS)
        {
            return None;
        }
        let (origin, own) = g.origin(&[&shadow.pool, &shadow.version], self.shard_bytes);
        let extra = shadow_weight(first, &shadow) + own;
        let kept = &mut g.ring[i].kept;
        kept.joined
            .get_or_insert_with(Box::default)
            .shadows
            .push(ShadowKept {
                origin,
                classes: SmallVec::from_vec(shadow.classes),
            });
        kept.grow(extra);
        g.bytes += extra;
        None
    }

    pub fn lookup(&self, id: &str) -> Found {
        let (hash, g) = self.lock(id);
        match g.find(hash, id).map(|i| &g.ring[i].kept) {
            None => Found::Unknown,
            Some(k) if k.ambiguous => Found::Ambiguous,
            Some(k) if k.labels().is_some() => Found::Duplicate,
            Some(k) => Found::Open(k.served()),
        }
    }

    /// Marks the request labelled; the shadows recorded so far, or `None` when someone else
    /// marked it first (or it went meanwhile).
    pub fn mark(&self, id: &str, labels: &[i64]) -> Option<Vec<ShadowServed>> {
        let (hash, mut g) = self.lock(id);
        let kept = g.get_mut(hash, id)?;
        if kept.labels().is_some() || kept.ambiguous {
            return None;
        }
        let mut extra = heap(8 * labels.len());
        if kept.joined.is_none() {
            extra += heap(size_of::<Joined>());
        }
        let joined = kept.joined.get_or_insert_with(Box::default);
        joined.labels = Some(labels.to_vec());
        let shadows = std::mem::take(&mut joined.shadows);
        kept.grow(extra);
        g.bytes += extra;
        Some(shadows.iter().map(ShadowKept::served).collect())
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
        // The slot and the table entry, twice each (both grow by doubling); a 32-byte id and
        // one class fit in the slot. The first record's origin ("t", "r", "stable", "1": the
        // Arc and four boxes, then four strings) is the shard's, once.
        let slot = 2 * size_of::<Slot>() + 2 * 17;
        let origin = 80 + 4 * 16;
        s.put("0123456789abcdef0123456789abcdef", served(1, vec![1]));
        assert_eq!(s.bytes(), slot + origin);
        // A client's longer id and three classes spill to the heap, and count.
        let long = "x".repeat(100);
        s.put(&long, served(1, vec![1, 0, 1]));
        assert_eq!(s.bytes(), 2 * slot + origin + 112 + 32);
        let shadow = ShadowServed {
            pool: "p".into(),
            version: "3".into(),
            classes: vec![1],
        };
        // The first shadow brings the box of joins and its origin ("p", "3").
        s.add_shadow("0123456789abcdef0123456789abcdef", shadow.clone());
        let joined = heap(size_of::<Joined>());
        let shadow_origin = 48 + 2 * 16;
        let so_far = 2 * slot + origin + 144 + joined + shadow_origin;
        assert_eq!(s.bytes(), so_far);
        s.add_shadow("0123456789abcdef0123456789abcdef", shadow);
        assert_eq!(s.bytes(), so_far + 2 * size_of::<ShadowKept>());
        // A slot stays within two cache lines: what a full store's eviction reads.
        assert!(size_of::<Slot>() <= 128, "{}", size_of::<Slot>());
    }

    #[test]
    fn records_share_their_origins_and_past_the_shared_ones_pay_for_their_own() {
        let s = Local::new(1 << 20, Duration::from_secs(60));
        s.put("a", served(1, vec![1]));
        s.put("b", served(2, vec![0]));
        {
            let g = s.shards[0].inner.lock();
            assert!(Arc::ptr_eq(&g.ring[0].kept.origin, &g.ring[1].kept.origin));
        }
        let with_tenant = |i: usize| {
            let mut one = served(3, vec![1]);
            one.tenant = format!("tenant{i:04}");
            one
        };
        for i in 1..MAX_STRINGS {
            s.put(&format!("t{i}"), with_tenant(i));
        }
        let full = s.bytes();
        assert_eq!(s.shards[0].inner.lock().strings.table.len(), MAX_STRINGS);
        // One more tenant: its origin is the record's own, weighed with it.
        s.put("past", with_tenant(MAX_STRINGS));
        let slot = 2 * size_of::<Slot>() + 2 * 17;
        assert_eq!(s.bytes(), full + slot + 80 + 16 + 16 + 16 + 16);
        assert_eq!(s.shards[0].inner.lock().strings.table.len(), MAX_STRINGS);
        assert_eq!(s.lookup("a"), Found::Open(served(1, vec![1])));
        let Found::Open(past) = s.lookup("past") else {
            panic!("the newest record is kept")
        };
        assert_eq!(past.tenant, format!("tenant{MAX_STRINGS:04}"));
    }

    #[test]
    fn shared_origins_stay_within_an_eighth_of_a_shard() {
        let s = Local::new(64 << 10, Duration::from_secs(60));
        for i in 0..MAX_STRINGS {
            let mut one = served(1, vec![1]);
            one.tenant = format!("{i:0100}");
            s.put(&format!("t{i}"), one);
            let g = s.shards[0].inner.lock();
            assert!(g.strings.bytes <= (64 << 10) / 8, "{}", g.strings.bytes);
            assert!(g.bytes <= 64 << 10, "{}", g.bytes);
        }
        assert!(s.shards[0].inner.lock().strings.table.len() < MAX_STRINGS);
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
