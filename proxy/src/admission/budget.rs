//! The budget for bytes of requests in flight (`limits.max_inflight_bytes`): bodies as they
//! are read and the tensors decoded from them, for every request together, and at most
//! `limits.max_inflight_bytes_per_key` of it for one API key, so that one client's flood of
//! large requests cannot take the whole budget from the others. A request that would go over
//! either is answered 503 with `Retry-After` instead of growing the process.
//!
//! Bytes are held by a [`Held`] that lives as long as the request and gives them back when
//! dropped, however the request ends. The cost on the request path is two atomic additions
//! and two short lock-free-in-practice shard locks per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

const SHARDS: usize = 16;

#[derive(Default)]
pub struct Budget {
    used: AtomicUsize,
    /// Bytes held per key digest (entries leave when they reach 0).
    by_key: [Mutex<HashMap<[u8; 32], usize, foldhash::fast::FixedState>>; SHARDS],
}

/// The limits a reservation is checked against (from the config in force).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub total: usize,
    pub per_key: usize,
}

impl Caps {
    /// The caps `limits:` sets (`max_inflight_bytes`, `max_inflight_bytes_per_key`).
    pub fn of(limits: &crate::config::limits::Limits) -> Caps {
        Caps {
            total: limits.max_inflight_bytes,
            per_key: limits.max_inflight_bytes_per_key,
        }
    }
}

/// Which cap a reservation would have crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Total,
    Key,
}

impl Budget {
    /// Bytes held by every request now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty holding for one request of the key with this digest.
    pub fn hold(self: &Arc<Self>, key: [u8; 32]) -> Held {
        Held {
            budget: self.clone(),
            key,
            bytes: 0,
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], usize, foldhash::fast::FixedState>> {
        &self.by_key[usize::from(key[0]) % SHARDS]
    }

    fn take(&self, key: &[u8; 32], bytes: usize, caps: Caps) -> Result<(), Over> {
        let mut shard = self.shard(key).lock();
        let mine = shard.get(key).copied().unwrap_or(0);
        if mine + bytes > caps.per_key {
            return Err(Over::Key);
        }
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > caps.total {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Over::Total);
        }
        *shard.entry(*key).or_insert(0) += bytes;
        Ok(())
    }

    fn give(&self, key: &[u8; 32], bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        let mut shard = self.shard(key).lock();
        if let Some(mine) = shard.get_mut(key) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                shard.remove(key);
            }
        }
    }
}

/// One request's bytes in the budget; given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    key: [u8; 32],
    bytes: usize,
}

impl Held {
    /// Holds `more` bytes as well, or refuses (holding what it held).
    pub fn grow(&mut self, more: usize, caps: Caps) -> Result<(), Over> {
        if more == 0 {
            return Ok(());
        }
        self.budget.take(&self.key, more, caps)?;
        self.bytes += more;
        Ok(())
    }

    /// Gives back what is held beyond `bytes` (an estimate turned out larger than the truth).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give(&self.key, self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(&self.key, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_are_capped_in_total_and_per_key_and_given_back() {
        let budget = Arc::new(Budget::default());
        let caps = Caps {
            total: 100,
            per_key: 60,
        };
        let mut a = budget.hold([1; 32]);
        assert_eq!(a.grow(50, caps), Ok(()));
        assert_eq!(a.grow(20, caps), Err(Over::Key), "one key: 60 at most");
        let mut a2 = budget.hold([1; 32]);
        assert_eq!(a2.grow(10, caps), Ok(()), "its two requests share the 60");
        assert_eq!(a2.grow(1, caps), Err(Over::Key));
        let mut b = budget.hold([2; 32]);
        assert_eq!(b.grow(40, caps), Ok(()));
        assert_eq!(b.grow(1, caps), Err(Over::Total));
        assert_eq!(budget.used(), 100);
        a.shrink_to(10);
        assert_eq!(budget.used(), 60);
        drop(a);
        drop(a2);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(
            budget.by_key.iter().all(|s| s.lock().is_empty()),
            "no entry is left behind"
        );
    }
}
