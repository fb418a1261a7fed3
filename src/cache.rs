//! The verdict cache's shape in proxy-wasm shared data: which key a credential maps to, and
//! the bytes of an entry. Shared data never evicts, so the table is fixed: `cache_slots` slots
//! per configuration, each holding at most one entry, the newer colliding entry replacing the
//! older. An entry carries the full key hash, so a slot collision is a miss, never a wrong hit.

use sha2::{Digest, Sha256};

use crate::credentials::Credential;
use crate::verdict::{Denial, Grant};

/// Keyed hash of (configuration, scheme, whole credential). The key is the configuration's
/// digest, which covers the introspection secret: a cache key says nothing about the
/// credential to anyone who cannot read the configuration, and nothing crosses configurations.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", hex(&self.0[..6]))
    }
}

impl CacheKey {
    pub fn new(config_digest: &[u8; 32], credential: &Credential) -> CacheKey {
        let mut h = Sha256::new();
        h.update(config_digest);
        match credential {
            Credential::Basic(c) => {
                h.update(b"basic\0");
                h.update(c.client_id.as_bytes());
                // Neither part contains NUL (refused when parsing), so this is unambiguous.
                h.update(b"\0");
                h.update(c.client_secret.as_bytes());
            }
            Credential::Bearer(token) => {
                h.update(b"bearer\0");
                h.update(token.as_bytes());
            }
        }
        CacheKey(h.finalize().into())
    }

    pub fn slot(&self, slots: u32) -> u32 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(first) % u64::from(slots.max(1))) as u32
    }
}

/// Names of the shared-data keys of one configuration: `okta-dcr-auth/<ns>/<slot>` plus a
/// constant few (`/discovery`, ...). `ns` is a prefix of the configuration digest.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(config_digest: &[u8; 32]) -> Names {
        Names {
            prefix: format!("okta-dcr-auth/{}/", hex(&config_digest[..8])),
        }
    }

    pub fn slot(&self, slot: u32) -> String {
        format!("{}{slot}", self.prefix)
    }

    pub fn discovery(&self) -> String {
        format!("{}discovery", self.prefix)
    }

    /// Present once every slot exists, so that later workers skip creating them.
    pub fn slots_ready(&self) -> String {
        format!("{}slots", self.prefix)
    }

    /// Until when (ms since epoch) no worker calls this IdP endpoint: its quota guard.
    pub fn guard(&self, endpoint: crate::metrics::IdpEndpoint) -> String {
        format!("{}guard/{}", self.prefix, endpoint.name())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cached decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Allow(Grant),
    Deny(Denial),
}

/// One slot's content. A slot may carry a verdict, a lease (someone is asking the IdP for this
/// key right now), and the time the last attempt failed, all for the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: CacheKey,
    /// When the verdict was reached (ms since epoch); 0 when there is none.
    pub decided_at_ms: u64,
    pub expires_at_ms: u64,
    pub verdict: Option<Cached>,
    /// Until when a worker holds the right to ask the IdP for this key.
    pub lease_until_ms: u64,
    /// When the last IdP call for this key failed; waiters that started before it give up.
    pub failed_at_ms: u64,
}

/// What a lookup found for a key at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness<'a> {
    Fresh(&'a Cached),
    /// A positive verdict expired less than `stale_if_error` ago.
    Stale(&'a Grant),
    Absent,
}

/// An entry decided more than this far in the future means the clock went back: distrust it.
const CLOCK_SKEW_MS: u64 = 1_000;

/// False when a verdict claims to be decided after `now_ms`: the clock went back since, and its
/// expiry cannot be trusted.
pub(crate) fn decided_in_the_past(decided_at_ms: u64, now_ms: u64) -> bool {
    decided_at_ms <= now_ms.saturating_add(CLOCK_SKEW_MS)
}

impl CacheEntry {
    pub fn empty(key: CacheKey) -> CacheEntry {
        CacheEntry {
            key,
            decided_at_ms: 0,
            expires_at_ms: 0,
            verdict: None,
            lease_until_ms: 0,
            failed_at_ms: 0,
        }
    }

    pub fn freshness(&self, key: &CacheKey, now_ms: u64, stale_if_error_ms: u64) -> Freshness<'_> {
        let Some(verdict) = self.verdict.as_ref().filter(|_| self.key == *key) else {
            return Freshness::Absent;
        };
        if !decided_in_the_past(self.decided_at_ms, now_ms) {
            return Freshness::Absent;
        }
        if now_ms < self.expires_at_ms {
            return Freshness::Fresh(verdict);
        }
        match verdict {
            Cached::Allow(grant)
                if now_ms < self.expires_at_ms.saturating_add(stale_if_error_ms) =>
            {
                Freshness::Stale(grant)
            }
            _ => Freshness::Absent,
        }
    }

    /// Someone else is asking the IdP for this key right now.
    pub fn leased(&self, key: &CacheKey, now_ms: u64) -> bool {
        self.key == *key && self.lease_until_ms > now_ms
    }

    // Encoding: magic, then fixed fields little-endian, then the verdict. Length-prefixed
    // strings; the decoder refuses anything truncated, trailing or foreign.
    const MAGIC: &'static [u8; 4] = b"ODA\x01";

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&self.key.0);
        for n in [
            self.decided_at_ms,
            self.expires_at_ms,
            self.lease_until_ms,
            self.failed_at_ms,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        match &self.verdict {
            None => out.push(0),
            Some(Cached::Allow(grant)) => {
                out.push(1);
                put_str(&mut out, &grant.identity);
                put_str(&mut out, &grant.scope);
                match &grant.access_token {
                    None => out.push(0),
                    Some(t) => {
                        out.push(1);
                        put_str(&mut out, t);
                    }
                }
            }
            Some(Cached::Deny(denial)) => {
                out.push(2);
                out.push(match denial {
                    Denial::InvalidClient => 1,
                    Denial::InvalidToken => 2,
                    Denial::InsufficientScope => 3,
                    // Only the three definite "no"s above are ever cached.
                    _ => 0,
                });
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<CacheEntry> {
        let mut r = Reader(bytes);
        if r.take(4)? != Self::MAGIC {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take(32)?);
        let decided_at_ms = r.u64()?;
        let expires_at_ms = r.u64()?;
        let lease_until_ms = r.u64()?;
        let failed_at_ms = r.u64()?;
        let verdict = match r.u8()? {
            0 => None,
            1 => {
                let identity = r.string()?;
                let scope = r.string()?;
                let access_token = match r.u8()? {
                    0 => None,
                    1 => Some(r.string()?),
                    _ => return None,
                };
                Some(Cached::Allow(Grant {
                    identity,
                    scope,
                    access_token,
                }))
            }
            2 => Some(Cached::Deny(match r.u8()? {
                1 => Denial::InvalidClient,
                2 => Denial::InvalidToken,
                3 => Denial::InsufficientScope,
                _ => return None,
            })),
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(CacheEntry {
            key: CacheKey(key),
            decided_at_ms,
            expires_at_ms,
            verdict,
            lease_until_ms,
            failed_at_ms,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string stored is bounded far below 4 GiB (credentials are at most 8 KiB, and
    // IdP answers are read from bounded bodies).
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(b))
    }
    fn string(&mut self) -> Option<String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let len = u32::from_le_bytes(b) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ClientCredentials;

    fn basic(id: &str, secret: &str) -> Credential {
        Credential::Basic(ClientCredentials {
            client_id: id.into(),
            client_secret: secret.into(),
        })
    }

    fn allow_entry() -> CacheEntry {
        CacheEntry {
            key: CacheKey([7; 32]),
            decided_at_ms: 1_000,
            expires_at_ms: 301_000,
            verdict: Some(Cached::Allow(Grant {
                identity: "0oa-app".into(),
                scope: "api:read".into(),
                access_token: Some("eyJ.token".into()),
            })),
            lease_until_ms: 5,
            failed_at_ms: 6,
        }
    }

    #[test]
    fn key_covers_configuration_scheme_and_whole_credential() {
        let cfg_a = [1u8; 32];
        let cfg_b = [2u8; 32];
        let k = CacheKey::new(&cfg_a, &basic("app", "secret"));
        assert_eq!(k, CacheKey::new(&cfg_a, &basic("app", "secret")));
        assert_ne!(k, CacheKey::new(&cfg_a, &basic("app", "secret2")));
        assert_ne!(k, CacheKey::new(&cfg_a, &basic("app", "Secret")));
        assert_ne!(k, CacheKey::new(&cfg_b, &basic("app", "secret")));
        assert_ne!(k, CacheKey::new(&cfg_a, &basic("apps", "ecret")));
        assert_ne!(
            CacheKey::new(&cfg_a, &Credential::Bearer("tok".into())),
            CacheKey::new(&cfg_a, &Credential::Bearer("tok2".into()))
        );
        assert!(k.slot(16) < 16);
        assert_eq!(k.slot(1), 0);
    }

    #[test]
    fn entries_round_trip() {
        let e = allow_entry();
        assert_eq!(CacheEntry::decode(&e.encode()), Some(e));
        for denial in [
            Denial::InvalidClient,
            Denial::InvalidToken,
            Denial::InsufficientScope,
        ] {
            let e = CacheEntry {
                verdict: Some(Cached::Deny(denial)),
                ..allow_entry()
            };
            assert_eq!(CacheEntry::decode(&e.encode()), Some(e));
        }
        let e = CacheEntry::empty(CacheKey([3; 32]));
        assert_eq!(CacheEntry::decode(&e.encode()), Some(e));
    }

    #[test]
    fn decoder_refuses_truncated_trailing_and_foreign_bytes() {
        let bytes = allow_entry().encode();
        for n in 0..bytes.len() {
            assert_eq!(CacheEntry::decode(&bytes[..n]), None, "truncated at {n}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(CacheEntry::decode(&trailing), None);
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert_eq!(CacheEntry::decode(&foreign), None);
        assert_eq!(CacheEntry::decode(b""), None);
        assert_eq!(CacheEntry::decode(b"{\"json\":true}"), None);
        let mut bad_tag = CacheEntry::empty(CacheKey([0; 32])).encode();
        *bad_tag.last_mut().unwrap() = 9;
        assert_eq!(CacheEntry::decode(&bad_tag), None);
        // a length prefix pointing past the end
        let mut long = bytes.clone();
        long[4 + 32 + 32 + 1] = 0xff;
        assert_eq!(CacheEntry::decode(&long), None);
    }

    #[test]
    fn freshness_respects_key_expiry_stale_window_and_clock_jumps() {
        let e = allow_entry();
        let key = e.key;
        let other = CacheKey([8; 32]);
        assert!(matches!(e.freshness(&key, 2_000, 0), Freshness::Fresh(_)));
        assert_eq!(e.freshness(&other, 2_000, 0), Freshness::Absent);
        assert_eq!(e.freshness(&key, 301_000, 0), Freshness::Absent);
        assert!(matches!(
            e.freshness(&key, 301_000, 10_000),
            Freshness::Stale(_)
        ));
        assert_eq!(e.freshness(&key, 311_000, 10_000), Freshness::Absent);
        // decided "in the future": the clock went back; never trusted
        let jumped = CacheEntry {
            decided_at_ms: 500_000,
            expires_at_ms: 800_000,
            ..allow_entry()
        };
        assert_eq!(jumped.freshness(&key, 2_000, 0), Freshness::Absent);
        // negative verdicts are never served stale
        let deny = CacheEntry {
            verdict: Some(Cached::Deny(Denial::InvalidClient)),
            ..allow_entry()
        };
        assert_eq!(deny.freshness(&key, 301_000, 10_000), Freshness::Absent);
    }
}
