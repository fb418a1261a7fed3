//! Each worker's copies of verdicts, in front of shared data, found by the exact
//! `Authorization` bytes the client sent: a repeat credential costs no decoding, no SHA-256, no
//! host call. A fast seeded hash finds a copy and a full byte comparison confirms it, so a
//! changed secret or token byte never matches. A copy keeps the shared entry's expiry, so it
//! never outlives it, and the revocation bound is the shared cache's.
//!
//! Bounded: at most `capacity` positive copies and a quarter as many negative ones, and at most
//! [`MAX_BYTES`] of credential bytes in all. Negative copies (which an anonymous client can
//! create at will) live in their own table and never push a positive copy out; when a table is
//! full, one entry goes (an expired one if the first few looked at hold one).

use std::collections::HashMap;

use foldhash::fast::FixedState;

use crate::cache::{CacheKey, Cached};
use crate::credentials::Scheme;

/// Credential bytes kept per worker and configuration, both tables together.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;
/// Entries looked at for an expired one before an arbitrary one is evicted.
const EVICTION_PROBES: usize = 8;

/// A copy of a verdict: what the gate needs to answer without the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub verdict: Cached,
    pub scheme: Scheme,
    /// The shared cache key, for log lines.
    pub key: CacheKey,
    pub decided_at_ms: u64,
    pub expires_at_ms: u64,
}

impl Copy {
    pub fn of(
        verdict: Cached,
        scheme: Scheme,
        key: CacheKey,
        decided_at_ms: u64,
        expires_at_ms: u64,
    ) -> Copy {
        Copy {
            verdict,
            scheme,
            key,
            decided_at_ms,
            expires_at_ms,
        }
    }
}

type Table = HashMap<Box<[u8]>, Copy, FixedState>;

#[derive(Debug)]
pub struct LocalCache {
    allowed: Table,
    denied: Table,
    capacity: usize,
    bytes: usize,
}

impl LocalCache {
    /// `seed` keys the hash: a client cannot make its credentials collide on purpose without it.
    pub fn new(capacity: usize, seed: u64) -> LocalCache {
        LocalCache {
            allowed: HashMap::with_hasher(FixedState::with_seed(seed)),
            denied: HashMap::with_hasher(FixedState::with_seed(seed.rotate_left(32))),
            capacity,
            bytes: 0,
        }
    }

    /// The copy for exactly these `Authorization` bytes, if it is still fresh (the rules of a
    /// shared entry: not past its expiry, not decided in the future). A stale copy is dropped.
    pub fn get(&mut self, authorization: &[u8], now_ms: u64) -> Option<&Copy> {
        let fresh = |c: &Copy| {
            crate::cache::decided_in_the_past(c.decided_at_ms, now_ms) && now_ms < c.expires_at_ms
        };
        if self.allowed.get(authorization).is_some_and(fresh) {
            return self.allowed.get(authorization);
        }
        if self.denied.get(authorization).is_some_and(fresh) {
            return self.denied.get(authorization);
        }
        self.remove(authorization);
        None
    }

    pub fn put(&mut self, authorization: &[u8], copy: Copy) {
        if self.capacity == 0 || authorization.len() > MAX_BYTES / 64 {
            return;
        }
        self.remove(authorization);
        let (limit, denied) = match copy.verdict {
            Cached::Allow(_) => (self.capacity, false),
            Cached::Deny(_) => ((self.capacity / 4).max(1), true),
        };
        while self.table(denied).len() >= limit
            || self.bytes + authorization.len() > MAX_BYTES && !self.table(denied).is_empty()
        {
            self.evict_one(denied, copy.decided_at_ms);
        }
        if self.bytes + authorization.len() > MAX_BYTES {
            // Only the other table's entries are left: a negative copy never evicts a positive
            // one, and a positive one is simply not kept.
            return;
        }
        self.bytes += authorization.len();
        self.table_mut(denied).insert(authorization.into(), copy);
    }

    pub fn len(&self) -> usize {
        self.allowed.len() + self.denied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self, denied: bool) -> &Table {
        if denied {
            &self.denied
        } else {
            &self.allowed
        }
    }

    fn table_mut(&mut self, denied: bool) -> &mut Table {
        if denied {
            &mut self.denied
        } else {
            &mut self.allowed
        }
    }

    fn remove(&mut self, authorization: &[u8]) {
        for denied in [false, true] {
            if self.table_mut(denied).remove(authorization).is_some() {
                self.bytes -= authorization.len();
            }
        }
    }

    /// Drops one entry of a table: an expired one among the first few, else the first.
    fn evict_one(&mut self, denied: bool, now_ms: u64) {
        let table = self.table(denied);
        let victim = table
            .iter()
            .take(EVICTION_PROBES)
            .find(|(_, c)| c.expires_at_ms <= now_ms)
            .or_else(|| table.iter().next())
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Denial, Grant};

    fn allow(expires_at_ms: u64) -> Copy {
        Copy {
            verdict: Cached::Allow(Grant {
                identity: "0oaApp".into(),
                scope: "api:read".into(),
                access_token: None,
            }),
            scheme: Scheme::Bearer,
            key: CacheKey([1; 32]),
            decided_at_ms: 1_000,
            expires_at_ms,
        }
    }

    fn deny() -> Copy {
        Copy {
            verdict: Cached::Deny(Denial::InvalidToken),
            ..allow(5_000)
        }
    }

    #[test]
    fn a_copy_never_outlives_its_expiry_nor_a_clock_that_went_back() {
        let mut local = LocalCache::new(4, 7);
        local.put(b"Bearer abc", allow(5_000));
        assert!(local.get(b"Bearer abc", 4_999).is_some());
        assert!(local.get(b"Bearer abc", 5_000).is_none());
        assert!(local.is_empty(), "an expired copy is dropped");
        local.put(
            b"Bearer abc",
            Copy {
                decided_at_ms: 900_000,
                ..allow(990_000)
            },
        );
        assert!(
            local.get(b"Bearer abc", 2_000).is_none(),
            "decided in the future"
        );
    }

    #[test]
    fn a_changed_byte_never_matches() {
        let mut local = LocalCache::new(64, 7);
        let token = b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".to_vec();
        local.put(&token, allow(5_000));
        for i in 0..token.len() {
            let mut changed = token.clone();
            changed[i] ^= 0x01;
            assert!(local.get(&changed, 2_000).is_none(), "byte {i}");
        }
        assert!(local.get(&token[..token.len() - 1], 2_000).is_none());
        let mut longer = token.clone();
        longer.push(b'A');
        assert!(local.get(&longer, 2_000).is_none());
        assert!(local.get(&token, 2_000).is_some());
    }

    #[test]
    fn negatives_never_push_out_positives() {
        let mut local = LocalCache::new(8, 7);
        for i in 0..8u8 {
            local.put(&[b'A', i], allow(5_000));
        }
        for i in 0..1_000u32 {
            local.put(&i.to_le_bytes(), deny());
            assert!(local.denied.len() <= 2);
        }
        for i in 0..8u8 {
            assert!(local.get(&[b'A', i], 2_000).is_some(), "positive {i} kept");
        }
    }

    #[test]
    fn positives_evict_one_at_a_time_and_expired_first() {
        let mut local = LocalCache::new(4, 7);
        local.put(b"old", allow(1_500));
        for k in [b"k1", b"k2", b"k3"] {
            local.put(k, allow(9_000));
        }
        local.put(
            b"new",
            Copy {
                decided_at_ms: 2_000,
                ..allow(9_000)
            },
        );
        assert_eq!(local.len(), 4);
        assert!(local.get(b"old", 2_000).is_none(), "the expired copy went");
        for k in [b"k1".as_slice(), b"k2", b"k3", b"new"] {
            assert!(local.get(k, 2_000).is_some());
        }
        local.put(b"more", allow(9_000));
        assert_eq!(local.len(), 4, "one evicted, not all");
    }

    #[test]
    fn memory_is_bounded_by_bytes_too() {
        let mut local = LocalCache::new(100_000, 7);
        let big = vec![b'x'; 8 * 1024];
        for i in 0..1_000u32 {
            let mut k = big.clone();
            k[..4].copy_from_slice(&i.to_le_bytes());
            local.put(&k, allow(9_000));
            assert!(local.bytes <= MAX_BYTES);
        }
        assert!(local.len() <= MAX_BYTES / big.len());
    }
}
