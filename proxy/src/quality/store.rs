//! Where predictions wait for their labels: what feedback needs to join (tenant, route,
//! variant, version, the predicted class of each row) under the request id, and the classes
//! each shadow predicted for the same request.
//!
//! - [`Local`]: this replica's memory, a byte-bounded FIFO. Enough for one replica. The
//!   client path's [`Local::put`] never waits for a shard's lock: shadow tasks, at idle
//!   priority, take it too ([`Local::add_shadow`]), and one preempted while holding it would
//!   stall the primary until the busy machine lets it run again (priority inversion). A put
//!   that finds the lock taken leaves its record in the shard's small lock-free queue, which
//!   whoever takes the lock next files first.
//! - [`Redis`]: shared by every replica, so feedback may reach another replica than the
//!   prediction did (a load balancer's choice). Writes go through one ordered queue (a
//!   prediction's record is written before its shadows'); joins are Lua scripts, atomic on
//!   the Redis server, so two replicas can never both join the same request.
//!
//! Both keep an entry for twice the feedback TTL: within the TTL it joins; after, feedback
//! for it is "expired" (not "unknown") until it goes. A joined entry stays as a marker (with
//! its labels, so that a shadow answering after the label arrived is still joined), and a
//! second label for it is a "duplicate". A request id used by two predictions (a client's
//! own `x-request-id`, sent twice) is "ambiguous" and never joins: joining either would risk
//! a wrong join.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What a prediction needs to be joined with its labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Served {
    pub tenant: String,
    pub route: String,
    /// "stable" or "canary".
    pub variant: String,
    pub version: String,
    /// The client chose the variant: counted in accuracy, not in rollout gates.
    pub forced: bool,
    pub classes: Vec<i64>,
    /// When it was answered (Unix milliseconds).
    pub at_ms: u64,
}

/// A shadow's classes for the same request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowServed {
    pub pool: String,
    pub version: String,
    pub classes: Vec<i64>,
}

/// What a lookup found.
#[derive(Debug, PartialEq)]
pub enum Found {
    Open(Served),
    Unknown,
    Duplicate,
    Ambiguous,
}

type Hasher = foldhash::quality::RandomState;

/// Shadows remembered per request, at most (routes have a handful).
pub(super) const MAX_SHADOWS: usize = 16;

/// This replica's store.
pub struct Local {
    /// Split by request id: a table grows by doubling, copying itself whole under its lock,
    /// and one table for the whole bound paused every request for tens of milliseconds at a
    /// few hundred thousand entries (the p99 of loadtests/bench_gateway.sh). Sizing it once
    /// instead made the process's memory jump to the full bound within a few thousand
    /// requests (a hash table's entries land on every page). A shard copies at most
    /// `SHARD_BYTES` worth when it grows, and grows only as far as it is used.
    shards: Box<[Shard]>,
    /// foldhash, not SipHash, for the shard and in the shards' maps: two hashes of the id
    /// on every answer were 0.9% of the client path's CPU at 23,000 requests/s (one-off,
    /// `perf`). The quality variant, seeded per process: ids may be chosen by clients.
    hasher: Hasher,
    shard_bytes: usize,
    keep: Duration,
}

/// The bound of one shard, at most: about 4,000 one-row predictions.
const SHARD_BYTES: usize = 1 << 20;
const MAX_SHARDS: usize = 256;

/// Records a [`Local::put`] could not file at once, per shard, at most (the lock is held for
/// microseconds; beyond this the put waits for it).
const PENDING: usize = 64;

struct Shard {
    inner: Mutex<LocalInner>,
    /// Puts that found `inner` locked, filed by the next holder before anything else.
    pending: crossbeam_queue::ArrayQueue<(String, Served)>,
}

#[derive(Default)]
struct LocalInner {
    map: HashMap<String, Slot, Hasher>,
    /// Insertion order (id, sequence number, when put in Unix ms), for eviction oldest first.
    order: VecDeque<(String, u64, u64)>,
    bytes: usize,
    seq: u64,
}

struct Slot {
    seq: u64,
    served: Served,
    shadows: Vec<ShadowServed>,
    labels: Option<Vec<i64>>,
    ambiguous: bool,
    bytes: usize,
}

fn weight(id: &str, s: &Served) -> usize {
    // The map's and the queue's share, the strings, and the classes.
    160 + 2 * id.len() + s.tenant.len() + s.route.len() + s.version.len() + 8 * s.classes.len()
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

    fn shard(&self, id: &str) -> &Shard {
        let i = self.hasher.hash_one(id) as usize % self.shards.len();
        &self.shards[i]
    }

    /// The shard of `id`, locked, with its pending puts filed.
    fn lock(&self, id: &str) -> parking_lot::MutexGuard<'_, LocalInner> {
        let shard = self.shard(id);
        let mut g = shard.inner.lock();
        self.file_pending(shard, &mut g);
        g
    }

    fn file_pending(&self, shard: &Shard, g: &mut LocalInner) {
        while let Some((id, served)) = shard.pending.pop() {
            self.insert(g, &id, served);
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

    /// Records a prediction; never waits for the lock (see the module comment).
    pub fn put(&self, id: &str, served: Served) {
        let shard = self.shard(id);
        let mut g = match shard.inner.try_lock() {
            Some(g) => g,
            None => match shard.pending.push((id.to_string(), served)) {
                Ok(()) => return,
                Err((_, served)) => {
                    let mut g = shard.inner.lock();
                    self.file_pending(shard, &mut g);
                    self.insert(&mut g, id, served);
                    return;
                }
            },
        };
        self.file_pending(shard, &mut g);
        self.insert(&mut g, id, served);
    }

    fn insert(&self, g: &mut LocalInner, id: &str, served: Served) {
        let now = served.at_ms;
        let bytes = weight(id, &served);
        let seq = g.seq + 1;
        // One lookup on the client path: the entry, not a probe and then an insert.
        match g.map.entry(id.to_string()) {
            Entry::Occupied(mut taken) => {
                taken.get_mut().ambiguous = true;
                return;
            }
            Entry::Vacant(free) => {
                free.insert(Slot {
                    seq,
                    served,
                    shadows: Vec::new(),
                    labels: None,
                    ambiguous: false,
                    bytes,
                });
            }
        }
        g.seq = seq;
        g.order.push_back((id.to_string(), seq, now));
        g.bytes += bytes;
        // The oldest go while over the bound or kept for long enough. The queue carries when
        // each was put, so that deciding costs no lookup; an entry whose id was put again
        // since (a newer sequence number) leaves the newer one alone.
        let keep_ms = self.keep.as_millis() as u64;
        while let Some(&(_, _, at_ms)) = g.order.front() {
            if g.bytes <= self.shard_bytes && at_ms + keep_ms >= now {
                break;
            }
            let (old, old_seq, _) = g.order.pop_front().expect("the front was just read");
            if let Entry::Occupied(slot) = g.map.entry(old)
                && slot.get().seq == old_seq
            {
                g.bytes -= slot.remove().bytes;
            }
        }
    }

    /// Remembers a shadow's classes; when the request's labels came already, gives them
    /// back with the labels and the primary's record, so the caller counts the shadow now.
    pub fn add_shadow(&self, id: &str, shadow: ShadowServed) -> Option<(Served, Vec<i64>, ShadowServed)> {
        let mut g = self.lock(id);
        let slot = g.map.get_mut(id)?;
        if slot.ambiguous {
            return None;
        }
        if let Some(labels) = &slot.labels {
            return Some((slot.served.clone(), labels.clone(), shadow));
        }
        if slot.shadows.len() < MAX_SHADOWS {
            let extra = 64 + shadow.pool.len() + 8 * shadow.classes.len();
            slot.shadows.push(shadow);
            slot.bytes += extra;
            g.bytes += extra;
        }
        None
    }

    pub fn lookup(&self, id: &str) -> Found {
        let g = self.lock(id);
        match g.map.get(id) {
            None => Found::Unknown,
            Some(s) if s.ambiguous => Found::Ambiguous,
            Some(s) if s.labels.is_some() => Found::Duplicate,
            Some(s) => Found::Open(s.served.clone()),
        }
    }

    /// Marks the request labelled; the shadows recorded so far, or `None` when someone else
    /// marked it first (or it went meanwhile).
    pub fn mark(&self, id: &str, labels: &[i64]) -> Option<Vec<ShadowServed>> {
        let mut g = self.lock(id);
        let slot = g.map.get_mut(id)?;
        if slot.labels.is_some() || slot.ambiguous {
            return None;
        }
        slot.labels = Some(labels.to_vec());
        let extra = 8 * labels.len();
        slot.bytes += extra;
        g.bytes += extra;
        Some(std::mem::take(&mut g.map.get_mut(id).expect("present").shadows))
    }
}

/// Lua: record a prediction unless its id is taken (then mark the id ambiguous).
const PUT: &str = r#"
if redis.call('HSETNX', KEYS[1], 'p', ARGV[1]) == 0 then redis.call('HSET', KEYS[1], 'a', '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;
/// Lua: a shadow's classes; returns the primary record and the labels if already joined.
const SHADOW: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'a') == 1 then return false end
local labels = redis.call('HGET', KEYS[1], 'j')
if labels then return {redis.call('HGET', KEYS[1], 'p'), labels} end
if redis.call('HLEN', KEYS[1]) < 3 + tonumber(ARGV[3]) then redis.call('HSET', KEYS[1], 's:' .. ARGV[1], ARGV[2]) end
return false
"#;
/// Lua: what a lookup needs: the record, whether joined, whether ambiguous.
const LOOKUP: &str = r#"
return {redis.call('HGET', KEYS[1], 'p'), redis.call('HEXISTS', KEYS[1], 'j'), redis.call('HEXISTS', KEYS[1], 'a')}
"#;
/// Lua: mark joined (first caller only); returns the shadows' records.
const MARK: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'a') == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], 'j', ARGV[1]) == 0 then return false end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 's:' then table.insert(out, all[i + 1]) end
end
return out
"#;

/// The store shared by replicas.
pub struct Redis {
    prefix: String,
    keep: Duration,
    conn: redis::aio::ConnectionManager,
    put: redis::Script,
    shadow: redis::Script,
    lookup: redis::Script,
    mark: redis::Script,
}

/// A write for [`Redis`], queued by the request path and sent in order by one task.
pub enum Write {
    Put(String, Served),
    Shadow(String, ShadowServed),
}

impl Redis {
    pub async fn connect(url: &str, prefix: &str, timeout: Duration, ttl: Duration) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout));
        let conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Redis {
            prefix: prefix.to_string(),
            keep: ttl * 2,
            conn,
            put: redis::Script::new(PUT),
            shadow: redis::Script::new(SHADOW),
            lookup: redis::Script::new(LOOKUP),
            mark: redis::Script::new(MARK),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}:{id}", self.prefix)
    }

    /// Sends one write; for a shadow of a request already labelled, what to count.
    pub async fn write(&self, w: Write) -> Result<Option<(Served, ShadowServed, Vec<i64>)>, String> {
        let mut conn = self.conn.clone();
        match w {
            Write::Put(id, served) => {
                let json = serde_json::to_string(&served).map_err(|e| e.to_string())?;
                let _: i64 = self
                    .put
                    .key(self.key(&id))
                    .arg(json)
                    .arg(self.keep.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
            Write::Shadow(id, shadow) => {
                let json = serde_json::to_string(&shadow).map_err(|e| e.to_string())?;
                let late: Option<(String, String)> = self
                    .shadow
                    .key(self.key(&id))
                    .arg(&shadow.pool)
                    .arg(json)
                    .arg(MAX_SHADOWS)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(match late {
                    Some((served, labels)) => Some((
                        serde_json::from_str(&served).map_err(|e| e.to_string())?,
                        shadow,
                        serde_json::from_str(&labels).map_err(|e| e.to_string())?,
                    )),
                    None => None,
                })
            }
        }
    }

    pub async fn lookup(&self, id: &str) -> Result<Found, String> {
        let mut conn = self.conn.clone();
        let (served, joined, ambiguous): (Option<String>, i64, i64) = self
            .lookup
            .key(self.key(id))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match served {
            None => Found::Unknown,
            Some(_) if ambiguous == 1 => Found::Ambiguous,
            Some(_) if joined == 1 => Found::Duplicate,
            Some(s) => Found::Open(serde_json::from_str(&s).map_err(|e| e.to_string())?),
        })
    }

    pub async fn mark(&self, id: &str, labels: &[i64]) -> Result<Option<Vec<ShadowServed>>, String> {
        let mut conn = self.conn.clone();
        let labels = serde_json::to_string(labels).map_err(|e| e.to_string())?;
        let shadows: Option<Vec<String>> = self
            .mark
            .key(self.key(id))
            .arg(labels)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        shadows
            .map(|list| {
                list.iter()
                    .map(|s| serde_json::from_str(s).map_err(|e| e.to_string()))
                    .collect()
            })
            .transpose()
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
    }

    #[test]
    fn a_put_that_finds_its_shard_locked_waits_for_nothing_and_is_not_lost() {
        let s = Local::new(1 << 20, Duration::from_secs(60));
        let shard = s.shard("a");
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
