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

use std::time::Duration;

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

mod local;
pub use local::Local;

/// Shadows remembered per request, at most (routes have a handful).
pub(super) const MAX_SHADOWS: usize = 16;

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
