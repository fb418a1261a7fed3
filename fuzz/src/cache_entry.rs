//! `cache_entry`: the verdict cache's entry encoding in shared data (`cache::CacheEntry`).
//!
//! Input: any bytes, used twice. As they are, they are a shared-data value to decode (the
//! seeds are encoded entries, from `seeds()` below). Read through `arbitrary`, they are
//! a structured entry to encode, and the times to ask it about.
//!
//! Properties: decoding never panics and is canonical (`decode(x) == Some(e)` implies
//! `e.encode() == x`, so one verdict has one encoding); every entry the filter can store
//! round-trips (`decode(e.encode()) == Some(e)`), and an entry with a denial that is never
//! cached (no credentials, duplicate header, IdP unavailable) decodes to nothing, a miss;
//! `freshness` and `leased` never panic, answer only for the entry's own key, serve a verdict
//! fresh only before it expires and stale only when it is a grant.

use arbitrary::{Arbitrary, Unstructured};
use okta_dcr_auth_core::cache::{CacheEntry, CacheKey, Cached, Freshness};
use okta_dcr_auth_core::verdict::{Denial, Grant};

pub fn check(data: &[u8]) {
    if let Some(entry) = CacheEntry::decode(data) {
        assert_eq!(entry.encode(), data, "non-canonical encoding of {entry:?}");
    }
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let (entry, storable) = input.entry.build();
    let decoded = CacheEntry::decode(&entry.encode());
    if storable {
        assert_eq!(decoded.as_ref(), Some(&entry));
    } else {
        assert_eq!(decoded, None, "a never-cached denial decoded: {entry:?}");
    }
    freshness(
        &entry,
        &CacheKey(input.other_key),
        input.now_ms,
        input.stale_if_error_ms,
    );
}

fn freshness(entry: &CacheEntry, other: &CacheKey, now_ms: u64, stale_ms: u64) {
    if other != &entry.key {
        assert_eq!(entry.freshness(other, now_ms, stale_ms), Freshness::Absent);
        assert!(!entry.leased(other, now_ms));
    }
    assert_eq!(
        entry.leased(&entry.key, now_ms),
        entry.lease_until_ms > now_ms
    );
    match entry.freshness(&entry.key, now_ms, stale_ms) {
        Freshness::Fresh(v) => {
            assert_eq!(Some(v), entry.verdict.as_ref());
            assert!(now_ms < entry.expires_at_ms);
            assert!(entry.decided_at_ms <= now_ms.saturating_add(1_000));
        }
        Freshness::Stale(grant) => {
            assert_eq!(entry.verdict, Some(Cached::Allow(grant.clone())));
            assert!(now_ms >= entry.expires_at_ms);
            assert!(now_ms - entry.expires_at_ms < stale_ms);
        }
        Freshness::Absent => {}
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    entry: ArbitraryEntry,
    other_key: [u8; 32],
    now_ms: u64,
    stale_if_error_ms: u64,
}

/// `CacheEntry` with every field the fuzzer may choose (the crate's types are not `Arbitrary`).
#[derive(Debug, Arbitrary)]
pub struct ArbitraryEntry {
    key: [u8; 32],
    decided_at_ms: u64,
    expires_at_ms: u64,
    lease_until_ms: u64,
    failed_at_ms: u64,
    verdict: ArbitraryVerdict,
}

#[derive(Debug, Arbitrary)]
enum ArbitraryVerdict {
    None,
    Allow {
        identity: String,
        scope: String,
        access_token: Option<String>,
    },
    Deny(u8),
}

const DENIALS: [(Denial, bool); 6] = [
    (Denial::InvalidClient, true),
    (Denial::InvalidToken, true),
    (Denial::InsufficientScope, true),
    (Denial::NoCredentials, false),
    (Denial::DuplicateAuthorization, false),
    (Denial::IdpUnavailable, false),
];

impl ArbitraryEntry {
    /// The entry, and whether the filter ever stores its verdict.
    fn build(self) -> (CacheEntry, bool) {
        let (verdict, storable) = match self.verdict {
            ArbitraryVerdict::None => (None, true),
            ArbitraryVerdict::Allow {
                identity,
                scope,
                access_token,
            } => (
                Some(Cached::Allow(Grant {
                    identity,
                    scope,
                    access_token,
                })),
                true,
            ),
            ArbitraryVerdict::Deny(n) => {
                let (denial, storable) = DENIALS[usize::from(n) % DENIALS.len()];
                (Some(Cached::Deny(denial)), storable)
            }
        };
        let entry = CacheEntry {
            key: CacheKey(self.key),
            decided_at_ms: self.decided_at_ms,
            expires_at_ms: self.expires_at_ms,
            verdict,
            lease_until_ms: self.lease_until_ms,
            failed_at_ms: self.failed_at_ms,
        };
        (entry, storable)
    }
}

/// The seed corpus: one entry of each shape the filter writes, as `encode` writes it.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let key = |b: u8| CacheKey([b; 32]);
    let decided = 1_700_000_000_000;
    let grant = |token: Option<&str>| {
        Cached::Allow(Grant {
            identity: "0oa8dcrAppClientId".into(),
            scope: "api:read api:write".into(),
            access_token: token.map(str::to_string),
        })
    };
    let entry = |k: u8, verdict: Option<Cached>, ttl_ms: u64, lease: u64, failed: u64| CacheEntry {
        key: key(k),
        decided_at_ms: if verdict.is_some() { decided } else { 0 },
        expires_at_ms: if verdict.is_some() {
            decided + ttl_ms
        } else {
            0
        },
        verdict,
        lease_until_ms: lease,
        failed_at_ms: failed,
    };
    let jwt =
        "eyJraWQiOiJkZXYiLCJhbGciOiJIUzI1NiJ9.eyJ2ZXIiOjEsImNpZCI6IjBvYThkY3IifQ.c2lnbmF0dXJl";
    vec![
        ("empty", CacheEntry::empty(key(1)).encode()),
        ("leased", entry(2, None, 0, decided + 3_000, 0).encode()),
        ("lease-failed", entry(3, None, 0, 0, decided + 250).encode()),
        (
            "allow-basic-with-token",
            entry(4, Some(grant(Some(jwt))), 300_000, 0, 0).encode(),
        ),
        (
            "allow-bearer-no-token",
            entry(5, Some(grant(None)), 60_000, 0, 0).encode(),
        ),
        (
            "allow-stale-after-failure",
            entry(6, Some(grant(None)), 300_000, 0, decided + 400_000).encode(),
        ),
        (
            "deny-invalid-client",
            entry(7, Some(Cached::Deny(Denial::InvalidClient)), 30_000, 0, 0).encode(),
        ),
        (
            "deny-invalid-token",
            entry(8, Some(Cached::Deny(Denial::InvalidToken)), 30_000, 0, 0).encode(),
        ),
        (
            "deny-insufficient-scope",
            entry(
                9,
                Some(Cached::Deny(Denial::InsufficientScope)),
                30_000,
                0,
                0,
            )
            .encode(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `corpus/cache_entry/` holds exactly what `seeds()` encodes today. After a change of the
    /// encoding, `FUZZ_WRITE_SEEDS=1 cargo test` rewrites the files.
    #[test]
    fn cache_entry_seeds_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/cache_entry");
        let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
        for (name, bytes) in super::seeds() {
            let path = dir.join(name);
            if write {
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(
                std::fs::read(&path).ok(),
                Some(bytes),
                "{} is stale: FUZZ_WRITE_SEEDS=1 cargo test",
                path.display()
            );
        }
    }
}
