//! The verdict cache's shape in proxy-wasm shared data: which key a credential maps to, where
//! its entry may live, and the bytes of an entry. Shared data never evicts, so the table is
//! fixed. An entry carries the full key hash, so a collision is a miss, never a wrong hit.
//!
//! The table is set-associative: `cache_slots / WAYS` sets ([`set_of`], [`sets_for`]), one
//! shared-data key per set holding [`WAYS`] entries ([`CacheSet`]), and an eviction order
//! ([`choose_way`]) under which a positive verdict inside its lifetime plus `stale_if_error` is
//! never replaced by a lease, a negative verdict or an unknown credential: a flood of bogus
//! credentials cannot take it away (with one entry per key, each bogus credential would be one
//! more chance to land on a valid client's place). The table's names ([`Names`]) carry no
//! configuration digest: cache keys hash the digest, so versions never answer for each other,
//! and a new configuration version takes the old one's places instead of growing a new table
//! beside it.

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

/// Names of the filter's shared-data keys, in a layout that does not grow with configuration
/// versions:
/// - the cache table is the gateway's, not a version's: `okta-dcr-auth/set/<n>` and its
///   readiness marker `okta-dcr-auth/sets` (see [`sets_to_create`]);
/// - what belongs to an issuer is named by a hash of it: `okta-dcr-auth/i/<issuer>/discovery`
///   and `.../jwks/<path>`;
/// - what belongs to an Okta org (its rate limits) by a hash of the issuer's origin:
///   `okta-dcr-auth/o/<origin>/guard/<endpoint>`, `.../budget/<endpoint>/<slot>` and
///   `.../inflight`;
/// - the failure throttle is the gateway's: `okta-dcr-auth/throttle/<n>`.
///
/// The number of keys is bounded by the largest `cache_slots` ever configured, plus a few per
/// distinct issuer and org, whatever the number of versions.
#[derive(Debug, Clone)]
pub struct Names {
    /// Prefix of the cache's sets.
    table: String,
    /// Prefix of the per-issuer names.
    issuer: String,
    /// Prefix of the per-org names (guard, budget, calls in flight).
    org: String,
}

const NAMESPACE: &str = "okta-dcr-auth/";

impl Names {
    /// The names for `issuer` as configured (`https://dev-123.okta.com/oauth2/default`).
    pub fn stable(issuer: &str) -> Names {
        let issuer = issuer.trim_end_matches('/');
        Names {
            table: format!("{NAMESPACE}set/"),
            issuer: format!("{NAMESPACE}i/{}/", short_hash(issuer)),
            org: format!("{NAMESPACE}o/{}/", short_hash(origin_of(issuer))),
        }
    }

    /// The cache set `set`.
    pub fn set(&self, set: u32) -> String {
        format!("{}{set}", self.table)
    }

    pub fn discovery(&self) -> String {
        format!("{}discovery", self.issuer)
    }

    /// The record of the key set at `jwks_path` (`gate::keys::KeysRecord`): per issuer and
    /// path, so that configurations of one issuer with different `jwks_uri` overrides never
    /// serve each other's keys.
    pub fn jwks(&self, jwks_path: &str) -> String {
        format!("{}jwks/{}", self.issuer, short_hash(jwks_path))
    }

    /// Present once every set exists, so that later workers skip creating them:
    /// `okta-dcr-auth/sets`, holding how many sets exist ([`sets_to_create`]).
    pub fn slots_ready(&self) -> String {
        format!("{NAMESPACE}sets")
    }

    /// Until when (ms since epoch) no worker calls this IdP endpoint: its quota guard.
    pub fn guard(&self, endpoint: crate::metrics::IdpEndpoint) -> String {
        format!("{}guard/{}", self.org, endpoint.name())
    }

    /// Slot `slot` of the table of route budgets of one IdP endpoint
    /// (`budget::RouteBudget::encode`).
    pub fn budget(&self, endpoint: crate::metrics::IdpEndpoint, slot: u64) -> String {
        format!("{}budget/{}/{slot}", self.org, endpoint.name())
    }

    /// The IdP calls the gateway has out to this org (`inflight::InFlight::encode`).
    pub fn in_flight(&self) -> String {
        format!("{}inflight", self.org)
    }

    /// The shared record (`registrations::record::RegistrationsRecord`, `part` `record`) and
    /// document (`part` `body`) of the registrations at `source` (URL and product): per source,
    /// so that configurations of one product and document share one fetch.
    pub fn registrations(&self, source: &str, part: &str) -> String {
        format!("{NAMESPACE}reg/{}/{part}", short_hash(source))
    }

    /// A failure-throttle slot (`throttle::FailureRecord::encode`).
    pub fn throttle(&self, slot: u32) -> String {
        format!("{NAMESPACE}throttle/{slot}")
    }
}

/// `scheme://host[:port]` of a URL (the whole string when it has no path).
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn short_hash(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes())[..8])
}

/// The sets a worker must create at start so that compare-and-swap guards each of them: those
/// from the count the readiness marker holds (`marker`, `None` when it does not exist) up to
/// `wanted`. A configuration with more sets than any before creates only the missing ones;
/// after creating them the worker writes [`sets_marker`]`(wanted)` if it is larger.
pub fn sets_to_create(marker: Option<&[u8]>, wanted: u32) -> std::ops::Range<u32> {
    let created = marker
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    created.min(wanted)..wanted
}

/// The readiness marker's value for `sets` created sets.
pub fn sets_marker(sets: u32) -> [u8; 4] {
    sets.to_le_bytes()
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

    /// Whether this entry says `key` once had a positive verdict (fresh, stale or long
    /// expired): a call for it is a refresh (`budget::CallClass::Refresh`), which may use the
    /// budget's reserved share. Only the IdP's "yes" ever writes one, so no unknown credential
    /// can pass for a refresh. A verdict dated after now (the clock went back) does not count.
    pub fn had_positive_verdict(&self, key: &CacheKey, now_ms: u64) -> bool {
        self.key == *key
            && matches!(self.verdict, Some(Cached::Allow(_)))
            && decided_in_the_past(self.decided_at_ms, now_ms)
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

// ---- set-associative placement ----

/// Entries per set.
pub const WAYS: usize = 4;

/// How many sets a table of `cache_slots` entries has: the entry count stays within
/// `cache_slots` (rounded down to whole sets, at least one set).
pub fn sets_for(cache_slots: u32) -> u32 {
    (cache_slots / WAYS as u32).max(1)
}

/// The set a key lives in, among `sets`.
pub fn set_of(key: &CacheKey, sets: u32) -> u32 {
    key.slot(sets)
}

/// What is about to be written for a key, as far as placement cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A lease (and perhaps a failure mark) for a credential with no verdict here.
    Lease,
    /// A definite "no".
    Negative,
    /// A positive verdict.
    Positive,
}

/// Where a key's entry goes in its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The key already has this way: update it in place.
    Hit(usize),
    /// Put it in this way, replacing what is there.
    Replace(usize),
    /// Nowhere: every way holds a live positive verdict, which a lease or a negative verdict
    /// may not replace. The request goes on without a shared entry: a lease is kept by this
    /// worker only (other workers may make their own call, which the budget bounds), a negative
    /// verdict only in this worker's copies (`local`).
    NotCached,
}

/// Why a way may be taken, lowest first: the eviction order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    Empty,
    /// No usable verdict and no live lease: a negative past its TTL, a positive past its TTL
    /// plus `stale_if_error`, a verdict dated after now (the clock went back), a dead lease.
    Expired,
    Negative,
    /// A live lease for a credential with no verdict here.
    Lease,
    /// A positive verdict past its lifetime plus `stale_if_error`: no longer usable, but it
    /// still marks its credential as known-good (a refresh may use the budget's reserve, the
    /// failure throttle spares it), so nothing an unknown credential brings may replace it.
    Known,
    /// A positive verdict inside its lifetime plus `stale_if_error`.
    Positive,
}

/// A way's claim to stay, and when that claim ends (the earlier ending goes first).
fn claim(way: Option<&CacheEntry>, now_ms: u64, stale_if_error_ms: u64) -> (Claim, u64) {
    let Some(e) = way else {
        return (Claim::Empty, 0);
    };
    let trusted = decided_in_the_past(e.decided_at_ms, now_ms);
    match &e.verdict {
        Some(Cached::Allow(_)) if trusted => {
            let ends = e.expires_at_ms.saturating_add(stale_if_error_ms);
            if now_ms < ends {
                return (Claim::Positive, ends);
            }
            // However long expired, and whether or not its refresh is out: a lease on it is
            // that refresh, and must not make it a lease an unknown credential may evict.
            return (Claim::Known, e.expires_at_ms);
        }
        Some(Cached::Deny(_)) if trusted && now_ms < e.expires_at_ms => {
            return (Claim::Negative, e.expires_at_ms);
        }
        _ => {}
    }
    if e.lease_until_ms > now_ms {
        (Claim::Lease, e.lease_until_ms)
    } else {
        (Claim::Expired, 0)
    }
}

/// Where `key`'s entry goes among its set's `ways`, for what is `incoming`. The order: the
/// key's own way; an empty way; one with nothing usable (a dead lease, a negative past its
/// TTL); a negative verdict; a lease for an unknown credential; a positive verdict past its
/// lifetime plus `stale_if_error` (still the mark of a known-good credential); and only then a
/// live positive verdict. The last two only ever give way to an incoming positive verdict, when
/// every way holds one: the one whose lifetime plus `stale_if_error`
/// ends first goes (the set is too small for the clients that are really there; the loser's
/// workers still hold their copies (`local`) until it expires). A lease or a negative
/// verdict never replaces a live positive verdict: then it is [`Choice::NotCached`]. Within a
/// class, the entry whose claim ends first goes, then the lowest way.
pub fn choose_way(
    ways: &[Option<CacheEntry>],
    key: &CacheKey,
    incoming: Incoming,
    now_ms: u64,
    stale_if_error_ms: u64,
) -> Choice {
    if let Some(i) = ways
        .iter()
        .position(|w| w.as_ref().is_some_and(|e| e.key == *key))
    {
        return Choice::Hit(i);
    }
    let victim = ways
        .iter()
        .enumerate()
        .map(|(i, w)| (claim(w.as_ref(), now_ms, stale_if_error_ms), i))
        .min();
    match victim {
        None => Choice::NotCached,
        Some(((Claim::Positive | Claim::Known, _), _)) if incoming != Incoming::Positive => {
            Choice::NotCached
        }
        Some((_, i)) => Choice::Replace(i),
    }
}

/// Why a change to a set is not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotWritten {
    /// Nothing to do: the caller's `decide` said no, a newer verdict is there, or the key has no
    /// entry to release.
    Declined,
    /// Every way holds a live positive verdict, which this may not replace.
    NoRoom,
}

/// One set's ways as kept under one shared-data key: read, choose, write back with
/// compare-and-swap, so a set changes as a whole and a key is never in two ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSet {
    pub ways: Vec<Option<CacheEntry>>,
}

impl Default for CacheSet {
    fn default() -> CacheSet {
        CacheSet {
            ways: vec![None; WAYS],
        }
    }
}

impl CacheSet {
    const MAGIC: &'static [u8; 4] = b"ODS\x01";

    /// Magic, then per way a `u32` length (0: empty) and the entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + WAYS * 128);
        out.extend_from_slice(Self::MAGIC);
        for way in self.ways.iter().take(WAYS) {
            let bytes = way.as_ref().map(CacheEntry::encode).unwrap_or_default();
            // An entry is bounded far below 4 GiB (see `put_str`).
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        for _ in self.ways.len()..WAYS {
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out
    }

    /// Anything unreadable (the empty marker a new set holds, a foreign or truncated value) is
    /// an empty set: a bad set costs the verdicts it held, never a wrong one.
    pub fn decode(bytes: &[u8]) -> CacheSet {
        Self::ways_of(bytes)
            .and_then(|ways| {
                ways.into_iter()
                    .map(|b| b.map_or(Some(None), |b| CacheEntry::decode(b).map(Some)))
                    .collect::<Option<Vec<_>>>()
            })
            .map_or_else(CacheSet::default, |ways| CacheSet { ways })
    }

    /// `key`'s entry in an encoded set, decoding only that one: the hot path's read.
    pub fn lookup(bytes: &[u8], key: &CacheKey) -> Option<CacheEntry> {
        Self::ways_of(bytes)?
            .into_iter()
            .flatten()
            .find(|b| b.get(4..36) == Some(&key.0[..]))
            .and_then(CacheEntry::decode)
    }

    /// Puts `entry` where [`choose_way`] says; false when it is not cached.
    pub fn place(
        &mut self,
        entry: CacheEntry,
        incoming: Incoming,
        now_ms: u64,
        stale_if_error_ms: u64,
    ) -> bool {
        self.ways.resize(WAYS, None);
        match choose_way(&self.ways, &entry.key, incoming, now_ms, stale_if_error_ms) {
            Choice::Hit(i) | Choice::Replace(i) => {
                self.ways[i] = Some(entry);
                true
            }
            Choice::NotCached => false,
        }
    }

    /// `key`'s entry in a set as read from shared data (`None`: the key does not exist), or an
    /// empty one for `key`: what the slot protocol's `read` returns.
    pub fn entry_for(bytes: Option<&[u8]>, key: &CacheKey) -> CacheEntry {
        bytes
            .and_then(|b| Self::lookup(b, key))
            .unwrap_or_else(|| CacheEntry::empty(*key))
    }

    /// The set to write back for a lease on `key` until `until_ms`, given what the set holds
    /// (`bytes`) and `decide`, which sees `key`'s entry (an empty one if it has none) and says
    /// whether to lease. The key's own way keeps its verdict; a newcomer takes a way under the
    /// eviction order, and never one of a live positive verdict ([`NotWritten::NoRoom`]: go on
    /// with no shared lease, this worker's only).
    pub fn with_lease(
        bytes: Option<&[u8]>,
        key: &CacheKey,
        until_ms: u64,
        now_ms: u64,
        stale_if_error_ms: u64,
        decide: impl FnOnce(&CacheEntry) -> bool,
    ) -> Result<Vec<u8>, NotWritten> {
        let mut set = bytes.map(Self::decode).unwrap_or_default();
        let mut leased = Self::entry_for(bytes, key);
        if !decide(&leased) {
            return Err(NotWritten::Declined);
        }
        leased.lease_until_ms = until_ms;
        if set.place(leased, Incoming::Lease, now_ms, stale_if_error_ms) {
            Ok(set.encode())
        } else {
            Err(NotWritten::NoRoom)
        }
    }

    /// The set to write back with `entry`'s verdict, unless the key's own way already holds a
    /// newer verdict (an older, slower answer never overwrites a newer one:
    /// [`NotWritten::Declined`]) or, for a negative verdict, no way may take it
    /// ([`NotWritten::NoRoom`]: keep it in this worker's copies only).
    pub fn with_verdict(
        bytes: Option<&[u8]>,
        entry: &CacheEntry,
        now_ms: u64,
        stale_if_error_ms: u64,
    ) -> Result<Vec<u8>, NotWritten> {
        let current = Self::entry_for(bytes, &entry.key);
        if current.verdict.is_some() && current.decided_at_ms > entry.decided_at_ms {
            return Err(NotWritten::Declined);
        }
        let incoming = match entry.verdict {
            Some(Cached::Allow(_)) => Incoming::Positive,
            Some(Cached::Deny(_)) => Incoming::Negative,
            None => Incoming::Lease,
        };
        let mut set = bytes.map(Self::decode).unwrap_or_default();
        if set.place(entry.clone(), incoming, now_ms, stale_if_error_ms) {
            Ok(set.encode())
        } else {
            Err(NotWritten::NoRoom)
        }
    }

    /// The set to write back once the lease on `key` ends, recording when the call failed
    /// (if it did); [`NotWritten::Declined`] when the set holds no entry for `key`.
    pub fn with_release(
        bytes: Option<&[u8]>,
        key: &CacheKey,
        failed_at_ms: Option<u64>,
    ) -> Result<Vec<u8>, NotWritten> {
        let mut set = bytes.map(Self::decode).unwrap_or_default();
        let Some(entry) = set.ways.iter_mut().flatten().find(|e| e.key == *key) else {
            return Err(NotWritten::Declined);
        };
        entry.lease_until_ms = 0;
        if let Some(at) = failed_at_ms {
            entry.failed_at_ms = at;
        }
        Ok(set.encode())
    }

    /// The encoded ways' bytes (`None`: empty way), or `None` when the value is not a set.
    fn ways_of(bytes: &[u8]) -> Option<Vec<Option<&[u8]>>> {
        let mut r = Reader(bytes);
        if r.take(4)? != Self::MAGIC {
            return None;
        }
        let mut ways = Vec::with_capacity(WAYS);
        for _ in 0..WAYS {
            let mut len = [0u8; 4];
            len.copy_from_slice(r.take(4)?);
            let len = u32::from_le_bytes(len) as usize;
            ways.push(if len == 0 { None } else { Some(r.take(len)?) });
        }
        r.0.is_empty().then_some(ways)
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

    // ---- set-associative placement ----

    const NOW: u64 = 1_700_000_000_000;
    const STALE: u64 = 60_000;

    fn key(n: u32) -> CacheKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        k[31] = 0xaa;
        CacheKey(k)
    }

    fn grant() -> Cached {
        Cached::Allow(Grant {
            identity: "0oa-app".into(),
            scope: "api:read".into(),
            access_token: Some("eyJ.token".into()),
        })
    }

    fn verdict(n: u32, verdict: Cached, expires_at_ms: u64) -> Option<CacheEntry> {
        Some(CacheEntry {
            decided_at_ms: NOW - 1_000,
            expires_at_ms,
            verdict: Some(verdict),
            ..CacheEntry::empty(key(n))
        })
    }

    fn positive(n: u32, expires_at_ms: u64) -> Option<CacheEntry> {
        verdict(n, grant(), expires_at_ms)
    }

    fn negative(n: u32, expires_at_ms: u64) -> Option<CacheEntry> {
        verdict(n, Cached::Deny(Denial::InvalidClient), expires_at_ms)
    }

    fn lease(n: u32, lease_until_ms: u64) -> Option<CacheEntry> {
        Some(CacheEntry {
            lease_until_ms,
            ..CacheEntry::empty(key(n))
        })
    }

    fn choose(ways: &[Option<CacheEntry>], incoming: Incoming) -> Choice {
        choose_way(ways, &key(99), incoming, NOW, STALE)
    }

    #[test]
    fn eviction_order_own_empty_expired_negative_lease_known_then_positive() {
        let live_pos = positive(1, NOW + 5_000);
        let stale_pos = positive(2, NOW - 5_000); // expired, inside stale_if_error
        let dead_pos = positive(3, NOW - STALE - 1);
        let live_neg = negative(4, NOW + 5_000);
        let dead_neg = negative(5, NOW - 1);
        let live_lease = lease(6, NOW + 3_000);
        let dead_lease = lease(7, NOW - 1);
        for incoming in [Incoming::Lease, Incoming::Negative, Incoming::Positive] {
            let mut own = vec![live_pos.clone(), live_neg.clone(), None, None];
            own[3] = lease(99, NOW + 1);
            assert_eq!(choose(&own, incoming), Choice::Hit(3));
            let ways = [live_pos.clone(), live_neg.clone(), None, live_lease.clone()];
            assert_eq!(choose(&ways, incoming), Choice::Replace(2));
            for expired in [&dead_neg, &dead_lease] {
                let ways = [
                    live_pos.clone(),
                    live_lease.clone(),
                    expired.clone(),
                    live_neg.clone(),
                ];
                assert_eq!(choose(&ways, incoming), Choice::Replace(2), "{expired:?}");
            }
            // a positive verdict past its stale window still marks a known-good credential:
            // a lease or a negative goes first
            let ways = [
                dead_pos.clone(),
                live_lease.clone(),
                live_pos.clone(),
                live_neg.clone(),
            ];
            assert_eq!(choose(&ways, incoming), Choice::Replace(3), "{incoming:?}");
            let ways = [dead_pos.clone(), live_pos.clone(), live_lease.clone(), None];
            assert_eq!(choose(&ways, incoming), Choice::Replace(3));
            let ways = [
                stale_pos.clone(),
                live_lease.clone(),
                live_neg.clone(),
                live_pos.clone(),
            ];
            assert_eq!(choose(&ways, incoming), Choice::Replace(2));
            let ways = [
                stale_pos.clone(),
                live_pos.clone(),
                live_lease.clone(),
                positive(8, NOW + 1),
            ];
            assert_eq!(choose(&ways, incoming), Choice::Replace(2));
        }
    }

    #[test]
    fn a_long_expired_positive_verdict_keeps_its_class_while_its_refresh_is_out() {
        // Expired long ago (past stale_if_error), and its refresh lease is live.
        let refreshing = Some(CacheEntry {
            lease_until_ms: NOW + 3_000,
            ..positive(1, NOW - STALE - 60_000).unwrap_or_else(|| CacheEntry::empty(key(1)))
        });
        let ways = [
            refreshing.clone(),
            lease(2, NOW + 9_000),
            negative(3, NOW + 9_000),
            positive(4, NOW + 9_000),
        ];
        // A bogus lease or negative takes the other lease or the negative, never the refresh.
        for incoming in [Incoming::Lease, Incoming::Negative] {
            assert_ne!(choose(&ways, incoming), Choice::Replace(0), "{incoming:?}");
        }
        let ways = [
            refreshing.clone(),
            positive(2, NOW + 9_000),
            positive(3, NOW + 9_000),
            positive(4, NOW + 9_000),
        ];
        assert_eq!(choose(&ways, Incoming::Lease), Choice::NotCached);
        assert_eq!(choose(&ways, Incoming::Negative), Choice::NotCached);
        assert_eq!(choose(&ways, Incoming::Positive), Choice::Replace(0));
    }

    #[test]
    fn a_set_of_live_positive_verdicts_only_gives_way_to_a_positive_one() {
        let ways = [
            positive(1, NOW + 5_000),
            positive(2, NOW - 30_000), // stale, ends first
            positive(3, NOW + 1_000),
            positive(4, NOW + 9_000),
        ];
        assert_eq!(choose(&ways, Incoming::Lease), Choice::NotCached);
        assert_eq!(choose(&ways, Incoming::Negative), Choice::NotCached);
        assert_eq!(choose(&ways, Incoming::Positive), Choice::Replace(1));
        assert_eq!(
            choose_way(&ways, &key(3), Incoming::Lease, NOW, STALE),
            Choice::Hit(2)
        );
        // once stale_if_error is over it is no longer usable, but still the mark of a
        // known-good credential: only a positive verdict replaces it
        let later = NOW + 40_000;
        assert_eq!(
            choose_way(&ways, &key(99), Incoming::Lease, later, STALE),
            Choice::NotCached
        );
        assert_eq!(
            choose_way(&ways, &key(99), Incoming::Positive, later, STALE),
            Choice::Replace(1)
        );
        assert_eq!(choose(&[], Incoming::Positive), Choice::NotCached);
    }

    #[test]
    fn within_a_class_the_claim_that_ends_first_goes() {
        let ways = [
            negative(1, NOW + 9_000),
            negative(2, NOW + 1_000),
            negative(3, NOW + 1_000),
            negative(4, NOW + 5_000),
        ];
        assert_eq!(choose(&ways, Incoming::Lease), Choice::Replace(1));
        let ways = [
            lease(1, NOW + 9_000),
            lease(2, NOW + 1_000),
            positive(3, NOW),
            lease(4, NOW + 500),
        ];
        assert_eq!(choose(&ways, Incoming::Negative), Choice::Replace(3));
    }

    #[test]
    fn a_verdict_dated_after_now_is_not_trusted_to_stay() {
        let future = Some(CacheEntry {
            decided_at_ms: NOW + 3_600_000,
            ..positive(1, NOW + 3_900_000).unwrap_or_else(|| CacheEntry::empty(key(1)))
        });
        let ways = [
            positive(2, NOW + 1),
            future,
            negative(3, NOW + 1),
            lease(4, NOW + 1),
        ];
        assert_eq!(choose(&ways, Incoming::Lease), Choice::Replace(1));
    }

    /// The eviction promise: after a flood of ten times the table's size in distinct bogus
    /// credentials, every valid client inside its lifetime plus stale_if_error is still there.
    #[test]
    fn a_flood_of_bogus_credentials_never_evicts_a_live_positive_verdict() {
        let cache_slots = 4_096;
        let sets = sets_for(cache_slots);
        let mut table = vec![CacheSet::default(); sets as usize];
        let digest = [5u8; 32];
        let valid: Vec<CacheKey> = (0..50)
            .map(|i| CacheKey::new(&digest, &basic(&format!("0oa-app-{i}"), "s3cret")))
            .collect();
        let mut now = NOW;
        for k in &valid {
            let entry = CacheEntry {
                key: *k,
                decided_at_ms: now,
                expires_at_ms: now + 8_000,
                verdict: Some(grant()),
                lease_until_ms: 0,
                failed_at_ms: 0,
            };
            let set = &mut table[set_of(k, sets) as usize];
            assert!(set.place(entry, Incoming::Positive, now, STALE));
        }
        for i in 0..10 * cache_slots {
            now += 1;
            let k = CacheKey::new(&digest, &basic("bogus", &format!("guess-{i}")));
            let set = &mut table[set_of(&k, sets) as usize];
            // through shared data, as the gate would: decode, place, encode
            let mut decoded = CacheSet::decode(&set.encode());
            let leased = CacheEntry {
                lease_until_ms: now + 4_000,
                ..CacheEntry::empty(k)
            };
            decoded.place(leased, Incoming::Lease, now, STALE);
            let denied = CacheEntry {
                decided_at_ms: now,
                expires_at_ms: now + 30_000,
                verdict: Some(Cached::Deny(Denial::InvalidClient)),
                ..CacheEntry::empty(k)
            };
            decoded.place(denied, Incoming::Negative, now, STALE);
            *set = decoded;
        }
        // The flood took 41 s: every verdict has expired, and is inside stale_if_error.
        for k in &valid {
            let bytes = table[set_of(k, sets) as usize].encode();
            let entry = CacheSet::lookup(&bytes, k).unwrap_or_else(|| CacheEntry::empty(*k));
            assert!(
                matches!(entry.freshness(k, now, STALE), Freshness::Stale(_)),
                "{k:?} lost"
            );
        }
    }

    #[test]
    fn sets_round_trip_and_anything_unreadable_is_an_empty_set() {
        let set = CacheSet {
            ways: vec![positive(1, NOW), None, negative(2, NOW), lease(3, NOW)],
        };
        let bytes = set.encode();
        assert_eq!(CacheSet::decode(&bytes), set);
        assert_eq!(CacheSet::lookup(&bytes, &key(2)), negative(2, NOW));
        assert_eq!(CacheSet::lookup(&bytes, &key(3)), lease(3, NOW));
        assert_eq!(CacheSet::lookup(&bytes, &key(4)), None);
        for n in 0..bytes.len() {
            assert_eq!(CacheSet::decode(&bytes[..n]), CacheSet::default(), "{n}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(CacheSet::decode(&trailing), CacheSet::default());
        assert_eq!(CacheSet::lookup(&trailing, &key(2)), None);
        // today's empty-slot marker, and a direct-mapped entry, are empty sets
        assert_eq!(CacheSet::decode(b"\0"), CacheSet::default());
        assert_eq!(
            CacheSet::decode(&allow_entry().encode()),
            CacheSet::default()
        );
        // a way that does not decode spoils the set, never a lookup of another key's way
        let mut bad = CacheSet::default();
        bad.ways[0] = positive(1, NOW);
        let mut bytes = bad.encode();
        // way 0's entry ends 3 empty ways (12 bytes) before the end; its access token's flag
        // is 14 bytes before the entry's end (flag, length, "eyJ.token")
        let flag = bytes.len() - 12 - 14;
        assert_eq!(bytes[flag], 1);
        bytes[flag] = 7;
        assert_eq!(CacheSet::decode(&bytes), CacheSet::default());
        assert_eq!(CacheSet::lookup(&bytes, &key(1)), None);
        assert_eq!(CacheSet::default().encode().len(), 4 + 4 * WAYS);
    }

    #[test]
    fn only_a_positive_verdict_of_the_same_key_makes_a_refresh() {
        let live = positive(1, NOW + 5_000).unwrap_or_else(|| CacheEntry::empty(key(1)));
        assert!(live.had_positive_verdict(&key(1), NOW));
        assert!(!live.had_positive_verdict(&key(2), NOW));
        // long expired still counts: the credential was good once
        assert!(live.had_positive_verdict(&key(1), NOW + 86_400_000));
        for other in [negative(1, NOW + 5_000), lease(1, NOW + 5_000)] {
            let e = other.unwrap_or_else(|| CacheEntry::empty(key(1)));
            assert!(!e.had_positive_verdict(&key(1), NOW));
        }
        assert!(!live.had_positive_verdict(&key(1), NOW - 3_600_000));
    }

    #[test]
    fn sets_keep_the_entry_count_within_cache_slots() {
        assert_eq!(sets_for(16_384), 4_096);
        assert_eq!(sets_for(10), 2);
        assert_eq!(sets_for(1), 1);
        assert_eq!(sets_for(0), 1);
        let k = key(12_345);
        assert!(set_of(&k, 4_096) < 4_096);
        assert_eq!(set_of(&k, 4_096), k.slot(4_096));
    }

    #[test]
    fn stable_names_do_not_carry_the_configuration_and_stay_bounded() {
        let issuer = "https://dev-1.okta.com/oauth2/default";
        let v1 = Names::stable(issuer);
        let v2 = Names::stable(&format!("{issuer}/"));
        assert_eq!(v1.set(7), "okta-dcr-auth/set/7");
        assert_eq!(v1.set(7), v2.set(7));
        assert_eq!(v1.slots_ready(), "okta-dcr-auth/sets");
        assert_eq!(v1.discovery(), v2.discovery());
        assert_eq!(v1.throttle(3), "okta-dcr-auth/throttle/3");
        let ep = crate::metrics::IdpEndpoint::Token;
        assert!(v1.guard(ep).ends_with("/guard/token"));
        assert!(v1.budget(ep, 3).ends_with("/budget/token/3"));
        // another authorization server of the same org: its own discovery, the org's limits
        let other = Names::stable("https://dev-1.okta.com/oauth2/aus123");
        assert_ne!(other.discovery(), v1.discovery());
        assert_eq!(other.budget(ep, 3), v1.budget(ep, 3));
        assert_eq!(other.in_flight(), v1.in_flight());
        assert_eq!(other.guard(ep), v1.guard(ep));
        let elsewhere = Names::stable("https://dev-2.okta.com/oauth2/default");
        assert_ne!(elsewhere.budget(ep, 3), v1.budget(ep, 3));
        assert_ne!(elsewhere.in_flight(), v1.in_flight());
        assert_ne!(
            v1.guard(ep),
            v1.guard(crate::metrics::IdpEndpoint::Introspection)
        );
        assert_eq!(origin_of("http://127.0.0.1:9/x/y"), "http://127.0.0.1:9");
        assert_eq!(origin_of("https://h"), "https://h");
    }

    #[test]
    fn only_missing_sets_are_created() {
        assert_eq!(sets_to_create(None, 4_096), 0..4_096);
        let marker = sets_marker(1_024);
        assert_eq!(sets_to_create(Some(&marker), 4_096), 1_024..4_096);
        assert_eq!(sets_to_create(Some(&marker), 512), 512..512);
        assert!(sets_to_create(Some(&marker), 512).is_empty());
        assert_eq!(sets_to_create(Some(b"1"), 8), 0..8);
    }

    #[test]
    fn set_changes_follow_the_slot_protocol() {
        // a lease on a new key in an empty (never written) set
        let bytes = CacheSet::with_lease(None, &key(1), NOW + 4_000, NOW, STALE, |e| {
            e.key == key(1) && e.verdict.is_none()
        })
        .unwrap_or_default();
        let leased = CacheSet::entry_for(Some(&bytes), &key(1));
        assert!(leased.leased(&key(1), NOW));
        // declined by the caller
        assert_eq!(
            CacheSet::with_lease(Some(&bytes), &key(1), NOW + 9, NOW, STALE, |e| !e
                .leased(&key(1), NOW)),
            Err(NotWritten::Declined)
        );
        // the verdict replaces the lease in the same way
        let verdict = positive(1, NOW + 8_000).unwrap_or_else(|| CacheEntry::empty(key(1)));
        let bytes = CacheSet::with_verdict(Some(&bytes), &verdict, NOW, STALE).unwrap_or_default();
        assert_eq!(CacheSet::decode(&bytes).ways.iter().flatten().count(), 1);
        assert_eq!(CacheSet::entry_for(Some(&bytes), &key(1)), verdict);
        // an older answer never overwrites it
        let older = CacheEntry {
            decided_at_ms: verdict.decided_at_ms - 1,
            ..verdict.clone()
        };
        assert_eq!(
            CacheSet::with_verdict(Some(&bytes), &older, NOW, STALE),
            Err(NotWritten::Declined)
        );
        // a refresh lease keeps the verdict; its release records the failure
        let bytes = CacheSet::with_lease(Some(&bytes), &key(1), NOW + 4_000, NOW, STALE, |_| true)
            .unwrap_or_default();
        let e = CacheSet::entry_for(Some(&bytes), &key(1));
        assert_eq!((e.verdict.is_some(), e.lease_until_ms), (true, NOW + 4_000));
        let bytes =
            CacheSet::with_release(Some(&bytes), &key(1), Some(NOW + 5)).unwrap_or_default();
        let e = CacheSet::entry_for(Some(&bytes), &key(1));
        assert_eq!((e.lease_until_ms, e.failed_at_ms), (0, NOW + 5));
        assert!(e.verdict.is_some());
        assert_eq!(
            CacheSet::with_release(Some(&bytes), &key(2), None),
            Err(NotWritten::Declined)
        );
        // today's empty-slot marker reads as an empty set
        assert!(CacheSet::with_lease(Some(b"\0"), &key(3), NOW + 1, NOW, STALE, |_| true).is_ok());
    }

    #[test]
    fn a_full_set_of_live_positives_takes_no_lease_and_no_negative() {
        let full = CacheSet {
            ways: (1..=4)
                .map(|n| positive(n, NOW + 1_000 * u64::from(n)))
                .collect(),
        }
        .encode();
        assert_eq!(
            CacheSet::with_lease(Some(&full), &key(9), NOW + 4_000, NOW, STALE, |_| true),
            Err(NotWritten::NoRoom)
        );
        let denied = negative(9, NOW + 30_000).unwrap_or_else(|| CacheEntry::empty(key(9)));
        assert_eq!(
            CacheSet::with_verdict(Some(&full), &denied, NOW, STALE),
            Err(NotWritten::NoRoom)
        );
        // a new positive verdict is stored, in place of the one that ends first
        let granted = positive(9, NOW + 8_000).unwrap_or_else(|| CacheEntry::empty(key(9)));
        let bytes = CacheSet::with_verdict(Some(&full), &granted, NOW, STALE).unwrap_or_default();
        assert_eq!(CacheSet::entry_for(Some(&bytes), &key(9)), granted);
        assert_eq!(CacheSet::lookup(&bytes, &key(1)), None);
        for n in 2..=4 {
            assert!(CacheSet::lookup(&bytes, &key(n)).is_some());
        }
    }
}
