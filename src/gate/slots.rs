//! The shared-slot protocol: the only code that knows how verdicts, leases and failures sit in
//! proxy-wasm shared data and how they are changed with compare-and-swap. Every write is a
//! read-modify-write through [`update`], which retries a lost race a few times; callers say
//! what the new value is given the current one, never how to get it there.
//!
//! Hosts differ on CAS 0: Envoy writes unconditionally, ngx_wasm_module creates only. Writes
//! here always pass the CAS just read (0 only for a key that does not exist yet), which means
//! the same on both.

use crate::cache::{CacheEntry, CacheKey, Names};

/// Value and CAS token of a shared-data key; writes with a CAS token.
pub trait SharedData {
    /// `None` if the key does not exist.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// `cas` is the token last read for the key (0 for a key that does not exist).
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    CasMismatch,
    Other,
}

/// How a read-modify-write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Written,
    /// The change function chose not to write.
    Declined,
    /// Others won the race every time.
    Lost,
    /// The host refused the write (shared memory full, ...).
    Failed,
}

/// Races lost in a row before a read-modify-write gives up.
const CAS_TRIES: usize = 4;
/// An empty slot holds this, so that it exists and compare-and-swap protects it.
const EMPTY_SLOT: &[u8] = b"\0";

/// Reads `name`, asks `change` for the new value (`None`: leave it), and writes it if nobody
/// wrote in between; retries a lost race.
pub fn update(
    shared: &dyn SharedData,
    name: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Update {
    for _ in 0..CAS_TRIES {
        let current = shared.shared_get(name);
        let cas = current.as_ref().map_or(0, |(_, cas)| *cas);
        let Some(value) = change(current.as_ref().map(|(bytes, _)| bytes.as_slice())) else {
            return Update::Declined;
        };
        match shared.shared_set(name, &value, cas) {
            Ok(()) => return Update::Written,
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Other) => return Update::Failed,
        }
    }
    Update::Lost
}

/// Writes `name` whatever it holds.
pub fn overwrite(shared: &dyn SharedData, name: &str, value: &[u8]) {
    update(shared, name, |_| Some(value.to_vec()));
}

/// The slot's entry for `key`: an empty one when the slot holds nothing readable or another
/// key's entry is decoded as is (callers compare keys).
fn entry_of(bytes: Option<&[u8]>, key: &CacheKey) -> CacheEntry {
    bytes
        .and_then(CacheEntry::decode)
        .unwrap_or_else(|| CacheEntry::empty(*key))
}

/// One configuration's slot table.
#[derive(Debug, Clone)]
pub struct Slots {
    names: Names,
    count: u32,
}

impl Slots {
    pub fn new(names: Names, count: u32) -> Slots {
        Slots { names, count }
    }

    fn name(&self, key: &CacheKey) -> String {
        self.names.slot(key.slot(self.count))
    }

    /// Makes every slot exist, so that compare-and-swap guards each of them (Envoy ignores CAS
    /// for a key that does not exist yet). Once per table: later workers see the marker.
    pub fn create_all(&self, shared: &dyn SharedData) {
        let ready = self.names.slots_ready();
        if shared.shared_get(&ready).is_some() {
            return;
        }
        for slot in 0..self.count {
            let name = self.names.slot(slot);
            if shared.shared_get(&name).is_none() {
                let _ = shared.shared_set(&name, EMPTY_SLOT, 0);
            }
        }
        let _ = shared.shared_set(&ready, b"1", 0);
    }

    /// What the slot for `key` holds now.
    pub fn read(&self, shared: &dyn SharedData, key: &CacheKey) -> CacheEntry {
        entry_of(
            shared
                .shared_get(&self.name(key))
                .as_ref()
                .map(|(b, _)| b.as_slice()),
            key,
        )
    }

    /// Reads the slot, lets `decide` look at it, and writes a lease until `until_ms` when it
    /// says so. A colliding entry for another key gives way to the lease.
    pub fn lease_if(
        &self,
        shared: &dyn SharedData,
        key: &CacheKey,
        until_ms: u64,
        mut decide: impl FnMut(&CacheEntry) -> bool,
    ) -> Update {
        update(shared, &self.name(key), |bytes| {
            let entry = entry_of(bytes, key);
            if !decide(&entry) {
                return None;
            }
            let mut leased = if entry.key == *key {
                entry
            } else {
                CacheEntry::empty(*key)
            };
            leased.lease_until_ms = until_ms;
            Some(leased.encode())
        })
    }

    /// Writes a verdict, unless the slot already holds a newer one for the same key: an older,
    /// slower answer never overwrites a newer verdict.
    pub fn store(&self, shared: &dyn SharedData, entry: &CacheEntry) -> bool {
        let bytes = entry.encode();
        let written = update(shared, &self.name(&entry.key), |current| {
            let current = entry_of(current, &entry.key);
            let newer = current.key == entry.key
                && current.verdict.is_some()
                && current.decided_at_ms > entry.decided_at_ms;
            (!newer).then(|| bytes.clone())
        });
        written == Update::Written
    }

    /// Ends a lease on `key`, recording when the call failed (if it did), so that followers
    /// give up (or take over) now instead of at the lease's end.
    pub fn release(&self, shared: &dyn SharedData, key: &CacheKey, failed_at_ms: Option<u64>) {
        update(shared, &self.name(key), |bytes| {
            let mut entry = entry_of(bytes, key);
            if entry.key != *key {
                return None;
            }
            entry.lease_until_ms = 0;
            if let Some(at) = failed_at_ms {
                entry.failed_at_ms = at;
            }
            Some(entry.encode())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cached;
    use crate::verdict::Denial;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Shared data that loses the next `races` writes, as if another worker wrote first.
    #[derive(Default)]
    struct Racy {
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        races: Cell<usize>,
        writes: Cell<usize>,
    }

    impl SharedData for Racy {
        fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data.borrow().get(key).cloned()
        }
        fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
            self.writes.set(self.writes.get() + 1);
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map_or(0, |(_, c)| *c);
            if self.races.get() > 0 || (cas != current) {
                self.races.set(self.races.get().saturating_sub(1));
                let bumped = data.get(key).map(|(v, c)| (v.clone(), c + 1));
                if let Some(v) = bumped {
                    data.insert(key.to_string(), v);
                }
                return Err(SharedError::CasMismatch);
            }
            data.insert(key.to_string(), (value.to_vec(), current + 1));
            Ok(())
        }
    }

    fn slots() -> Slots {
        Slots::new(Names::new(&[9; 32]), 8)
    }

    fn verdict(key: CacheKey, decided_at_ms: u64) -> CacheEntry {
        CacheEntry {
            decided_at_ms,
            expires_at_ms: decided_at_ms + 1_000,
            verdict: Some(Cached::Deny(Denial::InvalidClient)),
            ..CacheEntry::empty(key)
        }
    }

    #[test]
    fn update_retries_lost_races_then_gives_up() {
        let shared = Racy::default();
        overwrite(&shared, "k", b"a");
        shared.races.set(2);
        assert_eq!(
            update(&shared, "k", |_| Some(b"b".to_vec())),
            Update::Written
        );
        assert_eq!(shared.shared_get("k").unwrap().0, b"b");
        shared.races.set(10);
        assert_eq!(update(&shared, "k", |_| Some(b"c".to_vec())), Update::Lost);
        assert_eq!(update(&shared, "k", |_| None), Update::Declined);
    }

    #[test]
    fn create_all_makes_every_slot_once() {
        let shared = Racy::default();
        slots().create_all(&shared);
        assert_eq!(shared.data.borrow().len(), 9);
        let writes = shared.writes.get();
        slots().create_all(&shared);
        assert_eq!(
            shared.writes.get(),
            writes,
            "a second worker writes nothing"
        );
    }

    #[test]
    fn an_older_verdict_never_replaces_a_newer_one() {
        let shared = Racy::default();
        let s = slots();
        let key = CacheKey([1; 32]);
        assert!(s.store(&shared, &verdict(key, 2_000)));
        assert!(!s.store(&shared, &verdict(key, 1_000)));
        assert_eq!(s.read(&shared, &key).decided_at_ms, 2_000);
        assert!(s.store(&shared, &verdict(key, 3_000)));
    }

    #[test]
    fn a_lease_displaces_a_colliding_key_and_release_records_the_failure() {
        let shared = Racy::default();
        let s = Slots::new(Names::new(&[9; 32]), 1);
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        s.store(&shared, &verdict(a, 1_000));
        assert_eq!(s.lease_if(&shared, &b, 5_000, |_| true), Update::Written);
        let e = s.read(&shared, &b);
        assert_eq!((e.key, e.lease_until_ms, e.verdict), (b, 5_000, None));
        // releasing another key's lease changes nothing
        s.release(&shared, &a, Some(4_000));
        assert_eq!(s.read(&shared, &b).lease_until_ms, 5_000);
        s.release(&shared, &b, Some(4_000));
        let e = s.read(&shared, &b);
        assert_eq!((e.lease_until_ms, e.failed_at_ms), (0, 4_000));
        assert_eq!(s.lease_if(&shared, &b, 9_000, |_| false), Update::Declined);
    }
}
