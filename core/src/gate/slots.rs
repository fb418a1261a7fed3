//! The shared-slot protocol: the only code that knows how verdicts, leases and failures sit in
//! proxy-wasm shared data and how they are changed with compare-and-swap. The cache is
//! set-associative ([`crate::cache::CacheSet`]: [`crate::cache::WAYS`] entries per shared-data
//! key, an eviction order that keeps live positive verdicts), and every write is a
//! read-modify-write through [`update`], which retries a lost race a few times; callers say
//! what the new value is given the current one, never how to get it there.
//!
//! Hosts differ on CAS 0: Envoy writes unconditionally, ngx_wasm_module creates only. Writes
//! here always pass the CAS just read (0 only for a key that does not exist yet), which means
//! the same on both.

use super::frame;
use crate::cache::{
    set_of, sets_for, sets_marker, sets_to_create, CacheEntry, CacheKey, CacheSet, Cached, Names,
    NotWritten,
};

/// Value and CAS token of a shared-data key; writes with a CAS token. A host gives its bytes
/// (`host_get`, `host_set`); everything else reads and writes values through the provided
/// methods, which keep them in [`frame`]s.
pub trait SharedData {
    /// The host's bytes for `key` and their CAS; `None` if the key does not exist.
    fn host_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes the host's bytes if `key`'s CAS is `cas`.
    fn host_set(&self, key: &str, bytes: &[u8], cas: u32) -> Result<(), SharedError>;

    /// `key`'s value and CAS; `None` if the key does not exist. A value that never reads whole
    /// reads as empty (see [`frame::read`]).
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        frame::read(|| self.host_get(key)).map(|r| (r.payload, r.cas))
    }

    /// `cas` is the token last read for the key (0 for a key that does not exist). A write that
    /// replaces a value it read goes through [`update`], which keeps the frame's length.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        self.host_set(key, &frame::seal(value, 0), cas)
    }
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
    /// The set has no way this may take (every one holds a live positive verdict).
    NoRoom,
    /// Others won the race every time.
    Lost,
    /// The host refused the write (shared memory full, ...).
    Failed,
}

/// Races lost in a row before a read-modify-write gives up.
const CAS_TRIES: usize = 4;
/// A new set holds this, so that it exists and compare-and-swap protects it.
const EMPTY_SET: &[u8] = b"\0";

/// Reads `name`, asks `change` for the new value, and writes it if nobody wrote in between;
/// retries a lost race.
pub fn update<S: SharedData + ?Sized>(
    shared: &S,
    name: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Result<Vec<u8>, NotWritten>,
) -> Update {
    for _ in 0..CAS_TRIES {
        let current = frame::read(|| shared.host_get(name));
        let (cas, frame_len) = current.as_ref().map_or((0, 0), |r| (r.cas, r.frame_len));
        let value = match change(current.as_ref().map(|r| r.payload.as_slice())) {
            Ok(value) => value,
            Err(NotWritten::Declined) => return Update::Declined,
            Err(NotWritten::NoRoom) => return Update::NoRoom,
        };
        match shared.host_set(name, &frame::seal(&value, frame_len), cas) {
            Ok(()) => return Update::Written,
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Other) => return Update::Failed,
        }
    }
    Update::Lost
}

/// Writes `name` whatever it holds.
pub fn overwrite<S: SharedData + ?Sized>(shared: &S, name: &str, value: &[u8]) {
    update(shared, name, |_| Ok(value.to_vec()));
}

/// The verdict cache's sets in shared data.
#[derive(Debug, Clone)]
pub struct Slots {
    names: Names,
    sets: u32,
    stale_if_error_ms: u64,
}

impl Slots {
    pub fn new(names: Names, cache_slots: u32, stale_if_error_ms: u64) -> Slots {
        Slots {
            names,
            sets: sets_for(cache_slots),
            stale_if_error_ms,
        }
    }

    fn name(&self, key: &CacheKey) -> String {
        self.names.set(set_of(key, self.sets))
    }

    /// Makes every set exist, so that compare-and-swap guards each of them (Envoy ignores CAS
    /// for a key that does not exist yet). The marker holds how many exist: a configuration
    /// with more sets than any before creates only the missing ones, a later worker none.
    pub fn create_all<S: SharedData + ?Sized>(&self, shared: &S) {
        let marker = self.names.slots_ready();
        let current = shared.shared_get(&marker);
        let missing = sets_to_create(current.as_ref().map(|(b, _)| b.as_slice()), self.sets);
        if missing.is_empty() {
            return;
        }
        for set in missing {
            let name = self.names.set(set);
            if shared.shared_get(&name).is_none() {
                let _ = shared.shared_set(&name, EMPTY_SET, 0);
            }
        }
        let wanted = self.sets;
        update(shared, &marker, |bytes| {
            if sets_to_create(bytes, wanted).is_empty() {
                return Err(NotWritten::Declined);
            }
            Ok(sets_marker(wanted).to_vec())
        });
    }

    /// What the cache holds for `key` now (an empty entry when nothing).
    pub fn read<S: SharedData + ?Sized>(&self, shared: &S, key: &CacheKey) -> CacheEntry {
        let bytes = shared.shared_get(&self.name(key));
        CacheSet::entry_for(bytes.as_ref().map(|(b, _)| b.as_slice()), key)
    }

    /// Reads `key`'s entry, lets `decide` look at it, and writes a lease until `until_ms` when
    /// it says so. A newcomer takes a way under the eviction order; [`Update::NoRoom`] when
    /// every way holds a live positive verdict (the caller goes on with no shared lease).
    pub fn lease_if<S: SharedData + ?Sized>(
        &self,
        shared: &S,
        key: &CacheKey,
        until_ms: u64,
        now_ms: u64,
        mut decide: impl FnMut(&CacheEntry) -> bool,
    ) -> Update {
        let stale = self.stale_if_error_ms;
        update(shared, &self.name(key), |bytes| {
            CacheSet::with_lease(bytes, key, until_ms, now_ms, stale, &mut decide)
        })
    }

    /// Caches a verdict for every worker, decided now, until `expires_at_ms`; whether it was
    /// written (a worker-local copy is kept only of what shared data holds). With nothing to
    /// keep (a zero TTL), it only lets followers go.
    pub fn keep<S: SharedData + ?Sized>(
        &self,
        shared: &S,
        key: CacheKey,
        now_ms: u64,
        expires_at_ms: u64,
        verdict: Cached,
    ) -> bool {
        if expires_at_ms <= now_ms {
            self.release(shared, &key, None);
            return false;
        }
        let entry = CacheEntry {
            decided_at_ms: now_ms,
            expires_at_ms,
            verdict: Some(verdict),
            ..CacheEntry::empty(key)
        };
        self.store(shared, &entry, now_ms)
    }

    /// Writes a verdict, unless the cache already holds a newer one for the same key (an older,
    /// slower answer never overwrites a newer verdict). Whether this worker may keep a copy:
    /// written, or (a negative verdict) no room in the set.
    pub fn store<S: SharedData + ?Sized>(
        &self,
        shared: &S,
        entry: &CacheEntry,
        now_ms: u64,
    ) -> bool {
        let stale = self.stale_if_error_ms;
        let written = update(shared, &self.name(&entry.key), |bytes| {
            CacheSet::with_verdict(bytes, entry, now_ms, stale)
        });
        matches!(written, Update::Written | Update::NoRoom)
    }

    /// Ends a lease on `key`, recording when the call failed (if it did), so that followers
    /// give up (or take over) now instead of at the lease's end.
    pub fn release<S: SharedData + ?Sized>(
        &self,
        shared: &S,
        key: &CacheKey,
        failed_at_ms: Option<u64>,
    ) {
        update(shared, &self.name(key), |bytes| {
            CacheSet::with_release(bytes, key, failed_at_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cached;
    use crate::gate::fake::{CasModel, FakeHost};
    use crate::verdict::{Denial, Grant};

    /// Shared data as ngx_wasm_module has it (a CAS must match exactly), where races can be
    /// staged.
    fn shared() -> FakeHost {
        FakeHost::at(CasModel::CreateOnly, 0)
    }

    fn slots() -> Slots {
        Slots::new(Names::stable("https://o.okta.com/oauth2/default"), 32, 0)
    }

    fn verdict(key: CacheKey, decided_at_ms: u64, verdict: Cached) -> CacheEntry {
        CacheEntry {
            decided_at_ms,
            expires_at_ms: decided_at_ms + 1_000,
            verdict: Some(verdict),
            ..CacheEntry::empty(key)
        }
    }

    fn deny(key: CacheKey, decided_at_ms: u64) -> CacheEntry {
        verdict(key, decided_at_ms, Cached::Deny(Denial::InvalidClient))
    }

    fn allow(key: CacheKey, decided_at_ms: u64) -> CacheEntry {
        let grant = Grant {
            identity: "app".into(),
            scope: String::new(),
            access_token: None,
        };
        verdict(key, decided_at_ms, Cached::Allow(grant))
    }

    #[test]
    fn a_value_keeps_its_largest_length_and_a_foreign_one_is_replaced() {
        let shared = shared();
        let host_len = |key: &str| shared.host_get(key).unwrap().0.len();
        overwrite(&shared, "k", &[1u8; 300]);
        let longest = host_len("k");
        // Shorter values after it: the host's value keeps its length (ngx_wasm_module then
        // overwrites its node in place instead of freeing it), the payload is the new one.
        for n in [0, 10, 200] {
            overwrite(&shared, "k", &vec![2u8; n]);
            assert_eq!(host_len("k"), longest);
            assert_eq!(shared.shared_get("k").unwrap().0, vec![2u8; n]);
        }
        // Bytes that are no frame (another build's, or a torn copy every time) read as empty,
        // with their CAS, so that a write replaces them.
        let (_, cas) = shared.host_get("k").unwrap();
        shared.host_set("k", b"no frame", cas).unwrap();
        let (value, cas) = shared.shared_get("k").unwrap();
        assert!(value.is_empty());
        assert_eq!(
            update(&shared, "k", |bytes| {
                assert_eq!(bytes, Some(&b""[..]));
                Ok(b"new".to_vec())
            }),
            Update::Written
        );
        assert_eq!(shared.shared_get("k").unwrap().0, b"new");
        assert_ne!(shared.shared_get("k").unwrap().1, cas);
    }

    #[test]
    fn update_retries_lost_races_then_gives_up() {
        let shared = shared();
        overwrite(&shared, "k", b"a");
        shared.lose_next_writes_to("", 2);
        assert_eq!(update(&shared, "k", |_| Ok(b"b".to_vec())), Update::Written);
        assert_eq!(shared.shared_get("k").unwrap().0, b"b");
        shared.lose_next_writes_to("", 10);
        assert_eq!(update(&shared, "k", |_| Ok(b"c".to_vec())), Update::Lost);
        assert_eq!(
            update(&shared, "k", |_| Err(NotWritten::Declined)),
            Update::Declined
        );
        assert_eq!(
            update(&shared, "k", |_| Err(NotWritten::NoRoom)),
            Update::NoRoom
        );
    }

    #[test]
    fn create_all_makes_every_set_once_and_only_the_missing_ones_later() {
        let shared = shared();
        slots().create_all(&shared);
        assert_eq!(shared.snapshot().len(), 8 + 1, "8 sets and the marker");
        let writes = shared.writes.get();
        slots().create_all(&shared);
        assert_eq!(
            shared.writes.get(),
            writes,
            "a second worker writes nothing"
        );
        // a configuration with a bigger table adds the missing sets; a smaller one nothing
        let bigger = Slots::new(Names::stable("https://o.okta.com/oauth2/x"), 64, 0);
        bigger.create_all(&shared);
        assert_eq!(shared.snapshot().len(), 16 + 1);
        let writes = shared.writes.get();
        slots().create_all(&shared);
        assert_eq!(shared.writes.get(), writes);
    }

    #[test]
    fn an_older_verdict_never_replaces_a_newer_one() {
        let shared = shared();
        let s = slots();
        let key = CacheKey([1; 32]);
        assert!(s.store(&shared, &deny(key, 2_000), 2_000));
        assert!(!s.store(&shared, &deny(key, 1_000), 2_000));
        assert_eq!(s.read(&shared, &key).decided_at_ms, 2_000);
        assert!(s.store(&shared, &deny(key, 3_000), 3_000));
    }

    #[test]
    fn leases_and_negatives_never_evict_live_positive_verdicts() {
        let shared = shared();
        let s = Slots::new(
            Names::stable("https://o.okta.com/oauth2/default"),
            4,
            60_000,
        );
        let valid: Vec<CacheKey> = (1..=4).map(|i| CacheKey([i; 32])).collect();
        for key in &valid {
            assert!(s.store(&shared, &allow(*key, 1_000), 1_000));
        }
        // long expired but inside stale_if_error: still kept
        let now = 30_000;
        for i in 0..100u8 {
            let bogus = CacheKey([100 + i; 32]);
            assert_eq!(
                s.lease_if(&shared, &bogus, now + 5_000, now, |_| true),
                Update::NoRoom
            );
            assert!(
                s.store(&shared, &deny(bogus, now), now),
                "kept as a local copy only"
            );
        }
        for key in &valid {
            assert!(s.read(&shared, key).had_positive_verdict(key, now));
        }
    }

    #[test]
    fn release_records_the_failure_of_its_own_key_only() {
        let shared = shared();
        let s = Slots::new(Names::stable("https://o.okta.com/oauth2/default"), 4, 0);
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        s.store(&shared, &deny(a, 1_000), 1_000);
        assert_eq!(
            s.lease_if(&shared, &b, 5_000, 1_000, |_| true),
            Update::Written
        );
        let e = s.read(&shared, &b);
        assert_eq!((e.key, e.lease_until_ms, e.verdict), (b, 5_000, None));
        assert_eq!(
            s.read(&shared, &a).verdict,
            deny(a, 1_000).verdict,
            "two ways"
        );
        s.release(&shared, &a, Some(4_000));
        assert_eq!(s.read(&shared, &b).lease_until_ms, 5_000);
        s.release(&shared, &b, Some(4_000));
        let e = s.read(&shared, &b);
        assert_eq!((e.lease_until_ms, e.failed_at_ms), (0, 4_000));
        assert_eq!(
            s.lease_if(&shared, &b, 9_000, 4_000, |_| false),
            Update::Declined
        );
    }
}
