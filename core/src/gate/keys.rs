//! The issuer's key set as the gate holds it: the shared record through which one worker's
//! fetch serves every worker (when it was fetched, when a fetch was last tried, when a token
//! last asked for a refresh, the single-flight lease, the raw JWKS body), the rules that say
//! when a fetch may be made, and each worker's parsed copy. No I/O: the gate reads and writes
//! the record through the slot protocol and sends the calls this allows.
//!
//! When a fetch may go out:
//! - no keys yet: at once, then at most every [`RETRY_WITHOUT_KEYS_MS`] while it fails;
//! - a token names an unknown `kid`: at most once per [`REFRESH_INTERVAL_MS`] across all
//!   workers, so a flood of made-up `kid`s costs at most one fetch per 30 s;
//! - the set is older than [`MAX_AGE_MS`]: on tick, tried at most every 30 s while it fails.
//!
//! A fetch counts as an attempt (for these intervals) when it completes: answered, failed or
//! timed out, or refused by the proxy. A fetch that never completed (its call was lost with the
//! request that sent it) leaves no mark, so an anonymous client who hangs up cannot make the
//! filter believe it tried. A failed fetch changes nothing else: the last good set keeps
//! serving.

use crate::jwks::{JwksError, KeySet};
use crate::jwt::{self, JwtError, JwtPolicy, Verified};
use crate::signatures::SignatureBudget;

/// An unknown `kid` refreshes the set at most this often, all workers together.
pub const REFRESH_INTERVAL_MS: u64 = 30_000;
/// A set is refreshed at least this often.
pub const MAX_AGE_MS: u64 = 3_600_000;
/// While no set was ever fetched, attempts are this far apart at least.
pub const RETRY_WITHOUT_KEYS_MS: u64 = 2_000;

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No set was ever fetched.
    NoKeys,
    /// A token names a `kid` the set does not have.
    UnknownKid,
    /// The set is older than [`MAX_AGE_MS`].
    Periodic,
}

/// The shared record (one shared-data key per issuer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeysRecord {
    /// When `body` was fetched (0: never).
    pub fetched_at_ms: u64,
    /// When a fetch was last sent, for whatever reason.
    pub last_attempt_ms: u64,
    /// When a fetch was last sent for an unknown `kid`.
    pub last_refresh_ms: u64,
    /// A worker's fetch is out until then.
    pub lease_until_ms: u64,
    /// The last good JWKS document (empty: none).
    pub body: Vec<u8>,
}

const HEADER: usize = 4 * 8;

impl KeysRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.body.len());
        for n in [
            self.fetched_at_ms,
            self.last_attempt_ms,
            self.last_refresh_ms,
            self.lease_until_ms,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// `None` for anything this did not write (an empty value, a foreign record).
    pub fn decode(bytes: &[u8]) -> Option<KeysRecord> {
        let (header, body) = bytes.split_at_checked(HEADER)?;
        let mut n = header
            .chunks_exact(8)
            .map(|c| <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes));
        Some(KeysRecord {
            fetched_at_ms: n.next()?,
            last_attempt_ms: n.next()?,
            last_refresh_ms: n.next()?,
            lease_until_ms: n.next()?,
            body: body.to_vec(),
        })
    }

    /// Whether a fetch for `why` may be sent now.
    pub fn may_fetch(&self, why: Why, now_ms: u64) -> bool {
        if self.lease_until_ms > now_ms {
            return false;
        }
        match why {
            Why::NoKeys => {
                self.fetched_at_ms == 0
                    && now_ms >= self.last_attempt_ms.saturating_add(RETRY_WITHOUT_KEYS_MS)
            }
            Why::UnknownKid => now_ms >= self.last_refresh_ms.saturating_add(REFRESH_INTERVAL_MS),
            Why::Periodic => {
                now_ms >= self.fetched_at_ms.saturating_add(MAX_AGE_MS)
                    && now_ms >= self.last_attempt_ms.saturating_add(REFRESH_INTERVAL_MS)
            }
        }
    }

    /// The record with this worker's lease until `until_ms`. Nothing is stamped yet: only a
    /// fetch that completes counts as an attempt ([`KeysRecord::attempted`]).
    pub fn leased(&self, until_ms: u64) -> KeysRecord {
        KeysRecord {
            lease_until_ms: until_ms,
            ..self.clone()
        }
    }

    /// The record after a fetch for `why`, sent at `sent_ms`, completed (well or not).
    pub fn attempted(&self, why: Why, sent_ms: u64) -> KeysRecord {
        KeysRecord {
            last_attempt_ms: self.last_attempt_ms.max(sent_ms),
            last_refresh_ms: if why == Why::UnknownKid {
                self.last_refresh_ms.max(sent_ms)
            } else {
                self.last_refresh_ms
            },
            ..self.clone()
        }
    }

    /// The record after a good fetch: the new body, the lease released.
    pub fn fetched(&self, body: &[u8], now_ms: u64) -> KeysRecord {
        KeysRecord {
            fetched_at_ms: now_ms,
            lease_until_ms: 0,
            body: body.to_vec(),
            ..self.clone()
        }
    }

    /// The record after a failed fetch: the last good body stays, the lease is released.
    pub fn released(&self) -> KeysRecord {
        KeysRecord {
            lease_until_ms: 0,
            ..self.clone()
        }
    }

    /// Whether a fetch is out (some worker holds the lease).
    pub fn in_flight(&self, now_ms: u64) -> bool {
        self.lease_until_ms > now_ms
    }
}

/// What [`Keys::adopt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Nothing newer than what this worker holds.
    Unchanged,
    /// A newer set is in use; `skipped` keys could not be used.
    New { skipped: usize },
    /// The record's body is no usable set (this worker keeps its own).
    Unusable(JwksError),
}

/// One worker's parsed copy of the shared set.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    set: Option<KeySet>,
    /// `fetched_at_ms` of the record `set` came from.
    fetched_at_ms: u64,
    /// This worker looks for a periodic refresh again no sooner than this.
    next_check_ms: u64,
}

impl Keys {
    /// The set in use, if any was ever fetched.
    pub fn set(&self) -> Option<&KeySet> {
        self.set.as_ref()
    }

    /// Takes the record's set if it is newer than this worker's.
    pub fn adopt(&mut self, record: &KeysRecord) -> Adopted {
        if record.fetched_at_ms <= self.fetched_at_ms || record.body.is_empty() {
            return Adopted::Unchanged;
        }
        match KeySet::parse(&record.body) {
            Ok((set, skipped)) => {
                self.set = Some(set);
                self.fetched_at_ms = record.fetched_at_ms;
                Adopted::New { skipped }
            }
            Err(e) => Adopted::Unusable(e),
        }
    }

    /// Verifies `token` with this worker's set (an empty one before any was fetched) under
    /// `policy` (`None`: not a `jwt` mode, nothing passes).
    /// The signature is checked only when `signatures` admits it (else [`JwtError::Busy`]).
    pub fn verify(
        &self,
        token: &str,
        policy: Option<&JwtPolicy>,
        signatures: &mut SignatureBudget,
        now_ms: u64,
    ) -> Result<Verified, JwtError> {
        let Some(policy) = policy else {
            return Err(JwtError::Invalid("not in a jwt mode"));
        };
        let empty = KeySet::default();
        let set = self.set.as_ref().unwrap_or(&empty);
        let unverified = jwt::check(token, set, policy, now_ms / 1000)?;
        if signatures
            .admit(unverified.claimed_identity(), now_ms)
            .is_err()
        {
            return Err(JwtError::Busy);
        }
        let verified = unverified.verify()?;
        signatures.verified(&verified.identity, now_ms);
        Ok(verified)
    }

    /// Takes a newer set another worker fetched, if `record` (the shared one) holds it; a body
    /// that is no usable set is warned about (`root` names the worker) and this worker keeps its
    /// own.
    pub(crate) fn adopt_shared(
        &mut self,
        record: &KeysRecord,
        warnings: &mut super::steps::Warnings,
        root: super::ContextId,
        now_ms: u64,
    ) -> bool {
        match self.adopt(record) {
            Adopted::New { .. } => true,
            Adopted::Unchanged => false,
            Adopted::Unusable(e) => {
                let why = e.describe();
                warnings.warn(
                    now_ms,
                    format_args!("[{root}] the shared key set is unusable: {why}"),
                );
                false
            }
        }
    }

    /// The set this worker just fetched (and shared).
    pub fn install(&mut self, set: KeySet, fetched_at_ms: u64) {
        self.set = Some(set);
        self.fetched_at_ms = fetched_at_ms;
    }

    /// A periodic refresh was looked into now: not again for [`REFRESH_INTERVAL_MS`].
    pub fn checked(&mut self, now_ms: u64) {
        self.next_check_ms = now_ms.saturating_add(REFRESH_INTERVAL_MS);
    }

    /// When the set in use is due for its periodic refresh.
    pub fn refresh_due_at(&self) -> Option<u64> {
        self.set.as_ref().map(|_| {
            self.fetched_at_ms
                .saturating_add(MAX_AGE_MS)
                .max(self.next_check_ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn the_record_round_trips_and_refuses_foreign_bytes() {
        let r = KeysRecord {
            fetched_at_ms: 1,
            last_attempt_ms: 2,
            last_refresh_ms: 3,
            lease_until_ms: 4,
            body: b"{\"keys\":[]}".to_vec(),
        };
        assert_eq!(KeysRecord::decode(&r.encode()), Some(r));
        assert_eq!(KeysRecord::decode(b"\0"), None);
        assert_eq!(
            KeysRecord::decode(&KeysRecord::default().encode()),
            Some(KeysRecord::default())
        );
    }

    #[test]
    fn no_keys_fetches_at_once_then_backs_off() {
        let r = KeysRecord::default();
        assert!(r.may_fetch(Why::NoKeys, NOW));
        let leased = r.leased(NOW + 4_000);
        assert!(!leased.may_fetch(Why::NoKeys, NOW + 1), "single flight");
        assert!(leased.in_flight(NOW + 1));
        let failed = leased.released().attempted(Why::NoKeys, NOW);
        assert!(!failed.may_fetch(Why::NoKeys, NOW + 1_000));
        assert!(failed.may_fetch(Why::NoKeys, NOW + RETRY_WITHOUT_KEYS_MS));
        assert!(
            failed.may_fetch(Why::UnknownKid, NOW + 1),
            "the first fetch was no refresh"
        );
        let good = failed.fetched(b"body", NOW + 2);
        assert!(!good.may_fetch(Why::NoKeys, NOW + 10 * RETRY_WITHOUT_KEYS_MS));
        assert_eq!(good.body, b"body");
    }

    #[test]
    fn unknown_kids_refresh_at_most_once_per_interval() {
        let r = KeysRecord::default().fetched(b"b", NOW);
        assert!(r.may_fetch(Why::UnknownKid, NOW));
        let leased = r.leased(NOW + 4_000);
        let done = leased
            .fetched(b"b2", NOW + 100)
            .attempted(Why::UnknownKid, NOW);
        for t in [NOW + 100, NOW + 10_000, NOW + REFRESH_INTERVAL_MS - 1] {
            assert!(!done.may_fetch(Why::UnknownKid, t));
        }
        assert!(done.may_fetch(Why::UnknownKid, NOW + REFRESH_INTERVAL_MS));
        // a failed refresh counts too
        assert!(!leased
            .released()
            .attempted(Why::UnknownKid, NOW)
            .may_fetch(Why::UnknownKid, NOW + REFRESH_INTERVAL_MS - 1));
    }

    #[test]
    fn a_fetch_that_never_completed_is_no_attempt() {
        let r = KeysRecord::default().fetched(b"b", NOW);
        // Its lease ran out (or was released) without an answer: nothing was stamped.
        let lost = r.leased(NOW + 4_000).released();
        assert!(lost.may_fetch(Why::UnknownKid, NOW + 1));
        let expired = r.leased(NOW + 4_000);
        assert!(expired.may_fetch(Why::UnknownKid, NOW + 4_000));
        let periodic = r.leased(NOW + MAX_AGE_MS + 4_000);
        assert!(periodic.may_fetch(Why::Periodic, NOW + MAX_AGE_MS + 4_000));
        let empty = KeysRecord::default().leased(NOW + 4_000).released();
        assert!(empty.may_fetch(Why::NoKeys, NOW + 1));
    }

    #[test]
    fn the_set_is_refreshed_hourly_and_retried_every_interval() {
        let r = KeysRecord::default().fetched(b"b", NOW);
        assert!(!r.may_fetch(Why::Periodic, NOW + MAX_AGE_MS - 1));
        let due = NOW + MAX_AGE_MS;
        assert!(r.may_fetch(Why::Periodic, due));
        let failed = r
            .leased(due + 4_000)
            .released()
            .attempted(Why::Periodic, due);
        assert!(!failed.may_fetch(Why::Periodic, due + 1_000));
        assert!(failed.may_fetch(Why::Periodic, due + REFRESH_INTERVAL_MS));
        assert!(failed.may_fetch(Why::UnknownKid, due + 1), "not a refresh");
    }

    #[test]
    fn a_worker_adopts_only_newer_usable_sets() {
        let good = crate::jwt::tests::key_set_body();
        let mut keys = Keys::default();
        assert!(keys.set().is_none() && keys.refresh_due_at().is_none());
        let r = KeysRecord::default().fetched(&good, NOW);
        assert_eq!(keys.adopt(&r), Adopted::New { skipped: 0 });
        assert_eq!(keys.adopt(&r), Adopted::Unchanged);
        assert_eq!(keys.refresh_due_at(), Some(NOW + MAX_AGE_MS));
        keys.checked(NOW + MAX_AGE_MS);
        assert_eq!(
            keys.refresh_due_at(),
            Some(NOW + MAX_AGE_MS + REFRESH_INTERVAL_MS)
        );
        let bad = r.fetched(b"[]", NOW + 1);
        assert_eq!(keys.adopt(&bad), Adopted::Unusable(JwksError::Malformed));
        assert!(keys.set().is_some(), "the last good set stays");
    }
}
