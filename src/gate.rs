//! The request state machine: from the client's `Authorization` to a verdict, through the
//! shared cache, a per-key lease (one IdP call per credential across all workers), discovery
//! and the IdP call. It sees the host only through [`Host`], so a fake host in unit tests
//! drives every path; the proxy-wasm glue turns host events into calls here and applies the
//! [`Step`]s that come back.
//!
//! A request's life: `on_request` answers at once (cache hit, malformed input) or parks the
//! request as waiting for discovery, for its own IdP call (leader), or for another worker's
//! (follower). `on_idp_answer` and `on_tick` later hand back a `Step` for each parked request.

use std::collections::HashMap;

use crate::cache::{CacheEntry, CacheKey, Cached, Freshness, LocalCache, Names};
use crate::config::Config;
use crate::credentials::{parse_authorization, Accepted, Credential, CredentialError};
use crate::metrics::{CallResult, Counter, DenyReason, IdpEndpoint};
use crate::okta::{
    self, DiscoveryDocument, DiscoveryError, Endpoints, IdpAnswer, IdpRequest, Outcome,
};
use crate::verdict::{Denial, Grant, LocalReply};

/// The host as the gate needs it.
pub trait Host {
    /// Wall-clock time, ms since the epoch.
    fn now_ms(&self) -> u64;
    /// Value and CAS token of a shared-data key, `None` if the key does not exist.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes a shared-data key; `cas` 0 writes unconditionally.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError>;
    /// Sends one IdP call; returns the call's token. The answer comes to whichever context was
    /// active when this was called.
    fn dispatch(&self, config: &Config, request: &IdpRequest) -> Result<u32, DispatchError>;
    /// Bumps a counter.
    fn count(&self, counter: Counter);
    /// Records how long an IdP call took.
    fn observe_idp_latency(&self, ms: u64);
}

/// The host refused to send an IdP call (unknown upstream, no memory, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    CasMismatch,
    Other,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Forward(Forward),
    Reply(Denial, LocalReply),
    /// Stay paused; a later call hands back this request's step.
    Wait,
}

/// Upstream edits for an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub identity: String,
    pub scope: String,
    pub authorization: AuthorizationEdit,
}

#[derive(Clone, PartialEq, Eq)]
pub enum AuthorizationEdit {
    /// Bearer path: the client's token goes upstream unchanged.
    Keep,
    /// Basic path without `forward_access_token`: the secret never goes upstream.
    Remove,
    /// Basic path: `Bearer <the token Okta issued>`.
    Set(String),
}

impl std::fmt::Debug for AuthorizationEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthorizationEdit::Keep => "Keep",
            AuthorizationEdit::Remove => "Remove",
            AuthorizationEdit::Set(_) => "Set(<redacted>)",
        })
    }
}

/// Extra time beyond the IdP timeout that a lease, or a wait for one, may last.
const LEASE_MARGIN_MS: u64 = 1_000;
/// Discovery retries back off from this to `DISCOVERY_MAX_BACKOFF_MS`.
const DISCOVERY_MIN_BACKOFF_MS: u64 = 500;
const DISCOVERY_MAX_BACKOFF_MS: u64 = 15_000;
/// Discovered endpoints shared between workers are trusted this long.
const DISCOVERY_SHARED_TTL_MS: u64 = 3_600_000;
/// An empty slot holds this, so that it exists and compare-and-swap protects it.
const EMPTY_SLOT: &[u8] = b"\0";
/// IdP trouble is logged at warn at most this often per worker.
const WARN_INTERVAL_MS: u64 = 10_000;
/// After a 429 without a usable reset time, calls pause this long; with one, at least the
/// minimum (a reset already past means our clock and Okta's disagree).
const RATE_LIMIT_DEFAULT_PAUSE_MS: u64 = 2_000;
const RATE_LIMIT_MIN_PAUSE_MS: u64 = 1_000;
/// This many failures in a row (5xx, no answer) pause calls, from `FAILURE_PAUSE_MS` doubling
/// up to `FAILURE_MAX_PAUSE_MS` while they go on.
const FAILURES_BEFORE_PAUSE: u32 = 3;
const FAILURE_PAUSE_MS: u64 = 1_000;
const FAILURE_MAX_PAUSE_MS: u64 = 10_000;
/// At most this many verdicts are copied per worker in front of shared data.
const LOCAL_CACHE_ENTRIES: usize = 1_024;
/// Tick period the glue sets once: how soon a follower sees another worker's verdict.
pub const TICK_MS: u64 = 10;

#[derive(Debug)]
enum Discovery {
    Ready,
    InFlight { attempt: u32 },
    RetryAt { at_ms: u64, attempt: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Discovery,
    /// Our own IdP call is out.
    Leader,
    /// Another request holds the lease.
    Follower,
}

#[derive(Debug)]
struct Waiting {
    credential: Credential,
    key: CacheKey,
    since_ms: u64,
    deadline_ms: u64,
    phase: Phase,
    /// Whether its cache lookup was counted (hit or miss), so retries do not count again.
    counted: bool,
}

#[derive(Debug)]
enum Purpose {
    Discovery(DiscoveryDocument),
    Verdict {
        key: CacheKey,
        credential: Credential,
        leader: u32,
    },
}

#[derive(Debug)]
struct Call {
    purpose: Purpose,
    started_ms: u64,
    /// The context the host attributes the call to; if that request goes away, so does the call.
    owner: u32,
}

/// Per worker, per plugin configuration.
pub struct Gate {
    config: Config,
    names: Names,
    accepted: Accepted,
    discovery: Discovery,
    endpoints: Endpoints,
    waiting: HashMap<u32, Waiting>,
    calls: HashMap<u32, Call>,
    local: LocalCache,
    last_warn_ms: u64,
    /// The root context's id, for log lines that belong to no request.
    root: u32,
    /// The host cannot resume a request from another context (see `set_solo`).
    solo: bool,
    /// IdP failures in a row seen by this worker (reset by any answer that is a verdict).
    failures_in_a_row: u32,
}

impl Gate {
    pub fn new(config: Config) -> Gate {
        let names = Names::new(&config.digest);
        let accepted = Accepted {
            basic: config.accept_basic,
            bearer: config.accept_bearer,
            raw_basic: config.allow_raw_basic,
        };
        let endpoints = Endpoints {
            token_path: config.token_path.clone(),
            introspection_path: config.introspection_path.clone(),
        };
        let discovery = if config.needs_discovery() {
            Discovery::RetryAt {
                at_ms: 0,
                attempt: 0,
            }
        } else {
            Discovery::Ready
        };
        let local = LocalCache::with_capacity(LOCAL_CACHE_ENTRIES.min(config.cache_slots as usize));
        Gate {
            config,
            names,
            accepted,
            discovery,
            endpoints,
            waiting: HashMap::new(),
            calls: HashMap::new(),
            local,
            last_warn_ms: 0,
            root: 0,
            solo: false,
            failures_in_a_row: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// At plugin start: make every slot exist, so that compare-and-swap guards each of them
    /// (the host ignores CAS for a key that does not exist yet), and take discovered endpoints
    /// from another worker, or start discovery. `root` is the context dispatches belong to.
    pub fn start(&mut self, root: u32, host: &dyn Host) {
        self.root = root;
        let ready = self.names.slots_ready();
        if host.shared_get(&ready).is_none() {
            for slot in 0..self.config.cache_slots {
                let name = self.names.slot(slot);
                if host.shared_get(&name).is_none() {
                    let _ = host.shared_set(&name, EMPTY_SLOT, 0);
                }
            }
            let _ = host.shared_set(&ready, b"1", 0);
        }
        // Discovery, when needed, starts at the first tick: some hosts (ngx_wasm_module) refuse
        // IdP calls during plugin start.
        if let Discovery::RetryAt { .. } = self.discovery {
            self.adopt_shared_endpoints(host);
        }
    }

    /// Tells the gate whether the host can act on a request from another context's callback
    /// (Envoy can; ngx_wasm_module cannot: its `set_effective_context` does nothing). When it
    /// cannot, a request never waits for someone else: it makes its own discovery and IdP
    /// calls, and only the request whose callback is running is ever answered.
    pub fn set_solo(&mut self, solo: bool) {
        self.solo = solo;
    }

    /// A new request. `authorization` holds every `Authorization` value it carries.
    pub fn on_request(&mut self, ctx: u32, authorization: &[&[u8]], host: &dyn Host) -> Step {
        let credential = match parse_authorization(authorization, self.accepted) {
            Ok(c) => c,
            Err(e) => {
                let (denial, reason) = match e {
                    CredentialError::Missing => (Denial::NoCredentials, DenyReason::NoCredentials),
                    CredentialError::Duplicate => {
                        (Denial::DuplicateAuthorization, DenyReason::Malformed)
                    }
                    CredentialError::MalformedBasic => {
                        (Denial::InvalidClient, DenyReason::Malformed)
                    }
                    CredentialError::MalformedBearer => {
                        (Denial::InvalidToken, DenyReason::Malformed)
                    }
                };
                return self.refuse(ctx, None, denial, reason, host);
            }
        };
        let key = CacheKey::new(&self.config.digest, &credential);
        let now = host.now_ms();
        let waiting = Waiting {
            credential,
            key,
            since_ms: now,
            deadline_ms: now + self.config.idp_timeout_ms + LEASE_MARGIN_MS,
            phase: Phase::Discovery,
            counted: false,
        };
        self.advance(ctx, ctx, waiting, now, host)
    }

    /// An IdP answer arrived, in the context `caller` (the context now active).
    pub fn on_idp_answer(
        &mut self,
        caller: u32,
        token: u32,
        answer: IdpAnswer<'_>,
        host: &dyn Host,
    ) -> Vec<(u32, Step)> {
        let Some(call) = self.calls.remove(&token) else {
            return Vec::new();
        };
        let elapsed = host.now_ms().saturating_sub(call.started_ms);
        let endpoint = match &call.purpose {
            Purpose::Discovery(_) => IdpEndpoint::Discovery,
            Purpose::Verdict {
                credential: Credential::Basic(_),
                ..
            } => IdpEndpoint::Token,
            Purpose::Verdict {
                credential: Credential::Bearer(_),
                ..
            } => IdpEndpoint::Introspection,
        };
        let result = CallResult::of(answer.status, elapsed, self.config.idp_timeout_ms);
        host.count(Counter::IdpCall(endpoint, result));
        host.observe_idp_latency(elapsed);
        match call.purpose {
            Purpose::Discovery(doc) => self.on_discovery_answer(caller, doc, answer, host),
            Purpose::Verdict {
                key,
                credential,
                leader,
            } => self.on_verdict_answer(key, &credential, leader, answer, host),
        }
    }

    /// The root context's tick: retries discovery, wakes followers, enforces deadlines.
    pub fn on_tick(&mut self, root: u32, host: &dyn Host) -> Vec<(u32, Step)> {
        // Most ticks have nothing to do: do not even ask the time.
        let idle = self.waiting.is_empty() || self.solo;
        if idle
            && matches!(
                self.discovery,
                Discovery::Ready | Discovery::InFlight { .. }
            )
        {
            return Vec::new();
        }
        let now = host.now_ms();
        if matches!(self.discovery, Discovery::RetryAt { at_ms, .. } if at_ms <= now)
            && !self.adopt_shared_endpoints(host)
        {
            self.start_discovery(root, host);
        }
        // Solo, requests are never answered from the root context: the host could not apply it.
        if self.waiting.is_empty() || self.solo {
            return Vec::new();
        }
        let discovered = matches!(self.discovery, Discovery::Ready);
        let mut steps = Vec::new();
        let parked: Vec<(u32, Phase, u64)> = self
            .waiting
            .iter()
            .map(|(id, w)| (*id, w.phase, w.deadline_ms))
            .collect();
        for (ctx, phase, deadline_ms) in parked {
            let step = match phase {
                // The host always answers a call, if only with its timeout; this is a backstop.
                Phase::Leader if now > deadline_ms + self.config.idp_timeout_ms => {
                    self.calls
                        .retain(|_, c| !matches!(c.purpose, Purpose::Verdict { leader, .. } if leader == ctx));
                    self.unavailable(ctx, host)
                }
                Phase::Leader => continue,
                Phase::Discovery if !discovered && now <= deadline_ms => continue,
                Phase::Discovery if !discovered => self.unavailable(ctx, host),
                Phase::Discovery | Phase::Follower => match self.waiting.remove(&ctx) {
                    Some(w) => self.advance(ctx, root, w, now, host),
                    None => continue,
                },
            };
            if step != Step::Wait {
                steps.push((ctx, step));
            }
        }
        steps
    }

    /// The request is gone (client hung up, stream reset). A call it owned dies with it: the
    /// host cancels it, so its lease is released for a follower to take over at once.
    pub fn on_request_gone(&mut self, ctx: u32, host: &dyn Host) {
        let Some(w) = self.waiting.remove(&ctx) else {
            return;
        };
        if matches!(w.phase, Phase::Leader) {
            let before = self.calls.len();
            self.calls.retain(|_, c| c.owner != ctx);
            if self.calls.len() != before {
                self.release_lease(&w.key, host, false);
            }
        }
    }

    /// Moves a request as far as it can go: cache, discovery, lease, IdP call.
    fn advance(
        &mut self,
        ctx: u32,
        caller: u32,
        mut w: Waiting,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        if let Some(verdict) = self.local.get(&w.key, now).cloned() {
            return self.cached(ctx, &w, verdict, host);
        }
        let slot = self.names.slot(w.key.slot(self.config.cache_slots));
        for _attempt in 0..4 {
            let (entry, cas) = read_slot(host, &slot, &w.key);
            match entry.freshness(&w.key, now, 0) {
                Freshness::Fresh(verdict) => {
                    let verdict = verdict.clone();
                    self.local.put(
                        w.key,
                        verdict.clone(),
                        entry.decided_at_ms,
                        entry.expires_at_ms,
                    );
                    return self.cached(ctx, &w, verdict, host);
                }
                _ if !w.counted => {
                    host.count(Counter::CacheMiss);
                    w.counted = true;
                }
                _ => {}
            }
            if matches!(w.phase, Phase::Follower)
                && entry.key == w.key
                && entry.failed_at_ms >= w.since_ms
            {
                // The call we were waiting on failed.
                return self.unavailable_or_stale(ctx, &w, &entry, now, host);
            }
            if !matches!(self.discovery, Discovery::Ready) {
                let retry_at = match self.discovery {
                    Discovery::RetryAt { at_ms, .. } => at_ms,
                    _ => now,
                };
                if retry_at > w.deadline_ms || (self.solo && retry_at > now) {
                    return self.unavailable_or_stale(ctx, &w, &entry, now, host);
                }
                if self.solo {
                    // Nobody could wake this request: it asks for the endpoints itself.
                    let attempt = self.discovery_attempt();
                    self.dispatch_discovery(
                        caller,
                        DiscoveryDocument::OAuthAuthorizationServer,
                        attempt,
                        host,
                    );
                    if !matches!(self.discovery, Discovery::InFlight { .. }) {
                        return self.unavailable_or_stale(ctx, &w, &entry, now, host);
                    }
                }
                w.phase = Phase::Discovery;
                self.waiting.insert(ctx, w);
                return Step::Wait;
            }
            if entry.leased(&w.key, now) && !self.solo {
                if now > w.deadline_ms {
                    return self.unavailable_or_stale(ctx, &w, &entry, now, host);
                }
                w.phase = Phase::Follower;
                self.waiting.insert(ctx, w);
                return Step::Wait;
            }
            if self.paused_until(host) > now {
                // The quota guard: Okta asked us to back off, or keeps failing.
                return self.unavailable_or_stale(ctx, &w, &entry, now, host);
            }
            // Take the lease (unless, solo, someone else holds it: then this request asks the
            // IdP on its own). A colliding entry for another key gives way to this one.
            let lease_until = now + self.config.idp_timeout_ms + LEASE_MARGIN_MS;
            let mut leased = if entry.key == w.key {
                entry.clone()
            } else {
                CacheEntry::empty(w.key)
            };
            leased.lease_until_ms = lease_until;
            let theirs = self.solo && entry.leased(&w.key, now);
            if !theirs {
                match host.shared_set(&slot, &leased.encode(), cas) {
                    Ok(()) => {}
                    Err(SharedError::CasMismatch) => continue,
                    Err(SharedError::Other) => {}
                }
            }
            let request = match self.idp_request(&w.credential) {
                Some(r) => r,
                None => return self.unavailable(ctx, host),
            };
            return match host.dispatch(&self.config, &request) {
                Ok(token) => {
                    self.calls.insert(
                        token,
                        Call {
                            started_ms: now,
                            purpose: Purpose::Verdict {
                                key: w.key,
                                credential: w.credential.clone(),
                                leader: ctx,
                            },
                            owner: caller,
                        },
                    );
                    w.phase = Phase::Leader;
                    w.deadline_ms = lease_until;
                    self.waiting.insert(ctx, w);
                    Step::Wait
                }
                Err(DispatchError) => {
                    self.warn(
                        now,
                        format_args!("[{ctx}] IdP call could not be sent (is idp_upstream a known cluster with a healthy host?)"),
                    );
                    self.release_lease(&w.key, host, true);
                    self.unavailable_or_stale(ctx, &w, &entry, now, host)
                }
            };
        }
        // Lost the race for the lease four times in a row: wait for whoever won.
        w.phase = Phase::Follower;
        self.waiting.insert(ctx, w);
        Step::Wait
    }

    /// Answers from a fresh cached verdict.
    fn cached(&self, ctx: u32, w: &Waiting, verdict: Cached, host: &dyn Host) -> Step {
        match verdict {
            Cached::Allow(grant) => {
                if !w.counted {
                    host.count(Counter::CacheHit);
                }
                self.allow(&w.credential, grant, host)
            }
            Cached::Deny(d) => {
                if !w.counted {
                    host.count(Counter::CacheNegativeHit);
                }
                self.deny(ctx, Some(&w.credential), d, host)
            }
        }
    }

    fn idp_request(&self, credential: &Credential) -> Option<IdpRequest> {
        match credential {
            Credential::Basic(client) => {
                let path = self.endpoints.token_path.as_deref()?;
                Some(okta::token_request(&self.config, path, client))
            }
            Credential::Bearer(token) => {
                let path = self.endpoints.introspection_path.as_deref()?;
                Some(okta::introspection_request(&self.config, path, token))
            }
        }
    }

    fn on_verdict_answer(
        &mut self,
        key: CacheKey,
        credential: &Credential,
        leader: u32,
        answer: IdpAnswer<'_>,
        host: &dyn Host,
    ) -> Vec<(u32, Step)> {
        let now = host.now_ms();
        let outcome = match credential {
            Credential::Basic(client) => okta::read_token_answer(client, answer, now / 1000),
            Credential::Bearer(_) => okta::read_introspection(&self.config, answer, now / 1000),
        };
        let verdict = match outcome {
            Outcome::Granted {
                grant,
                expires_at_s,
            } => {
                let mut expires = now + self.config.cache_ttl_ms;
                if let Some(exp) = expires_at_s {
                    expires = expires.min(exp.saturating_mul(1000));
                }
                self.store(&key, now, expires, Cached::Allow(grant.clone()), host);
                Ok(Cached::Allow(grant))
            }
            Outcome::Denied(denial) => {
                self.store(
                    &key,
                    now,
                    now + self.config.negative_cache_ttl_ms,
                    Cached::Deny(denial),
                    host,
                );
                Ok(Cached::Deny(denial))
            }
            Outcome::Failed(failure) => {
                self.warn(
                    now,
                    format_args!("[{leader}] IdP call failed: {}", failure.describe()),
                );
                self.release_lease(&key, host, true);
                self.note_failure(failure, now, host);
                Err(failure)
            }
        };
        if verdict.is_ok() {
            self.failures_in_a_row = 0;
        }
        // The leader and every request of this worker waiting on the same key (solo, only the
        // leader: the others have calls of their own, and the host could not answer them here).
        let solo = self.solo;
        let mut ids: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(id, w)| {
                w.key == key && !matches!(w.phase, Phase::Discovery) && (!solo || **id == leader)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable_by_key(|id| *id != leader);
        // After a failure, what the slot still holds (a stale verdict, perhaps), read once.
        let remaining = if verdict.is_err() {
            let slot = self.names.slot(key.slot(self.config.cache_slots));
            read_slot(host, &slot, &key).0
        } else {
            CacheEntry::empty(key)
        };
        let mut steps = Vec::new();
        for ctx in ids {
            let Some(w) = self.waiting.remove(&ctx) else {
                continue;
            };
            let step = match &verdict {
                Ok(Cached::Allow(grant)) => self.allow(&w.credential, grant.clone(), host),
                Ok(Cached::Deny(d)) => self.deny(ctx, Some(&w.credential), *d, host),
                Err(_) => self.unavailable_or_stale(ctx, &w, &remaining, now, host),
            };
            steps.push((ctx, step));
        }
        steps
    }

    /// Writes a verdict, unless the slot already holds a newer one for the same key: an older,
    /// slower answer never overwrites a newer verdict.
    fn store(
        &mut self,
        key: &CacheKey,
        now: u64,
        expires_at_ms: u64,
        verdict: Cached,
        host: &dyn Host,
    ) {
        if expires_at_ms <= now {
            // Nothing to keep (a zero TTL): just let followers go.
            self.release_lease(key, host, false);
            return;
        }
        let slot = self.names.slot(key.slot(self.config.cache_slots));
        let entry = CacheEntry {
            key: *key,
            decided_at_ms: now,
            expires_at_ms,
            verdict: Some(verdict.clone()),
            lease_until_ms: 0,
            failed_at_ms: 0,
        };
        let bytes = entry.encode();
        for _ in 0..4 {
            let (current, cas) = read_slot(host, &slot, key);
            if current.key == *key && current.verdict.is_some() && current.decided_at_ms > now {
                return;
            }
            match host.shared_set(&slot, &bytes, cas) {
                Err(SharedError::CasMismatch) => continue,
                Ok(()) => {
                    self.local.put(*key, verdict, now, expires_at_ms);
                    return;
                }
                Err(SharedError::Other) => return,
            }
        }
    }

    /// Until when IdP calls are paused for all workers (0: not paused).
    fn paused_until(&self, host: &dyn Host) -> u64 {
        host.shared_get(&self.names.guard())
            .and_then(|(bytes, _)| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// A 429 pauses calls until Okta's reset; repeated 5xx or silence pause them briefly, longer
    /// while it goes on. The pause is shared: every worker stops calling.
    fn note_failure(&mut self, failure: okta::IdpFailure, now: u64, host: &dyn Host) {
        use okta::IdpFailure::{NoAnswer, RateLimited, ServerError};
        let paused_until = self.paused_until(host);
        let until = match failure {
            RateLimited { until_s: Some(s) } => {
                s.saturating_mul(1000).max(now + RATE_LIMIT_MIN_PAUSE_MS)
            }
            RateLimited { until_s: None } => now + RATE_LIMIT_DEFAULT_PAUSE_MS,
            // Calls already out when a pause began fail together: they do not make it longer.
            ServerError(_) | NoAnswer if paused_until > now => return,
            ServerError(_) | NoAnswer => {
                self.failures_in_a_row += 1;
                if self.failures_in_a_row < FAILURES_BEFORE_PAUSE {
                    return;
                }
                let doublings = (self.failures_in_a_row - FAILURES_BEFORE_PAUSE).min(4);
                now + (FAILURE_PAUSE_MS << doublings).min(FAILURE_MAX_PAUSE_MS)
            }
            _ => return,
        };
        if until > paused_until {
            // A line of its own, not folded into the rate-limited failure warnings: operators
            // need to see a pause, and there is at most one per pause.
            log::warn!(
                "[{}] pausing IdP calls for {} ms: {}",
                self.root,
                until - now,
                failure.describe()
            );
            overwrite(host, &self.names.guard(), &until.to_le_bytes());
        }
    }

    /// Ends our lease on a key, recording a failure when there was one, so that followers give
    /// up (or take over) now instead of at the lease's end.
    fn release_lease(&self, key: &CacheKey, host: &dyn Host, failed: bool) {
        let slot = self.names.slot(key.slot(self.config.cache_slots));
        let now = host.now_ms();
        for _ in 0..4 {
            let (mut entry, cas) = read_slot(host, &slot, key);
            if entry.key != *key {
                return;
            }
            entry.lease_until_ms = 0;
            if failed {
                entry.failed_at_ms = now;
            }
            match host.shared_set(&slot, &entry.encode(), cas) {
                Err(SharedError::CasMismatch) => continue,
                _ => return,
            }
        }
    }

    fn on_discovery_answer(
        &mut self,
        caller: u32,
        doc: DiscoveryDocument,
        answer: IdpAnswer<'_>,
        host: &dyn Host,
    ) -> Vec<(u32, Step)> {
        let now = host.now_ms();
        let attempt = self.discovery_attempt();
        // A second answer (several requests asked, solo) changes nothing once discovery is done.
        let result = okta::read_discovery(&self.config, answer, now / 1000);
        let result = if matches!(self.discovery, Discovery::Ready) {
            Ok(self.endpoints.clone())
        } else {
            result
        };
        match result {
            Ok(found) => {
                let token_path = self.endpoints.token_path.take().or(found.token_path);
                let introspection_path = self
                    .endpoints
                    .introspection_path
                    .take()
                    .or(found.introspection_path);
                self.endpoints = Endpoints {
                    token_path,
                    introspection_path,
                };
                let missing = (self.config.accept_basic && self.endpoints.token_path.is_none())
                    || (self.config.accept_bearer && self.endpoints.introspection_path.is_none());
                if missing {
                    self.discovery_failed(
                        now,
                        attempt,
                        "the discovery document lacks a needed endpoint",
                    );
                } else {
                    log::info!("[{}] endpoints discovered from the issuer", self.root);
                    self.discovery = Discovery::Ready;
                    self.share_endpoints(now, host);
                }
            }
            Err(DiscoveryError::NotFound) if doc == DiscoveryDocument::OAuthAuthorizationServer => {
                self.dispatch_discovery(
                    caller,
                    DiscoveryDocument::OpenIdConfiguration,
                    attempt,
                    host,
                );
                if matches!(self.discovery, Discovery::InFlight { .. }) {
                    return Vec::new();
                }
            }
            Err(DiscoveryError::NotFound) => {
                self.discovery_failed(now, attempt, "no discovery document (404)")
            }
            Err(DiscoveryError::Mismatch(why)) => self.discovery_failed(now, attempt, why),
            Err(DiscoveryError::Failed(f)) => {
                let why = f.describe();
                self.discovery_failed(now, attempt, &why)
            }
        }
        // Requests parked for discovery go on now (Ready) or fail if the retry is too late.
        // Solo, only the request that made this call can be answered from here.
        let solo = self.solo;
        let ids: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(id, w)| matches!(w.phase, Phase::Discovery) && (!solo || **id == caller))
            .map(|(id, _)| *id)
            .collect();
        let mut steps = Vec::new();
        for ctx in ids {
            if let Some(w) = self.waiting.remove(&ctx) {
                let step = self.advance(ctx, caller, w, now, host);
                if step != Step::Wait {
                    steps.push((ctx, step));
                }
            }
        }
        steps
    }

    fn discovery_failed(&mut self, now: u64, attempt: u32, why: &str) {
        let backoff = (DISCOVERY_MIN_BACKOFF_MS << attempt.min(10)).min(DISCOVERY_MAX_BACKOFF_MS);
        log::warn!(
            "[{}] discovery at the issuer failed: {why}; retrying in {backoff} ms",
            self.root
        );
        self.discovery = Discovery::RetryAt {
            at_ms: now + backoff,
            attempt: attempt + 1,
        };
    }

    fn discovery_attempt(&self) -> u32 {
        match self.discovery {
            Discovery::RetryAt { attempt, .. } | Discovery::InFlight { attempt } => attempt,
            Discovery::Ready => 0,
        }
    }

    fn start_discovery(&mut self, root: u32, host: &dyn Host) {
        let attempt = self.discovery_attempt();
        self.dispatch_discovery(
            root,
            DiscoveryDocument::OAuthAuthorizationServer,
            attempt,
            host,
        );
    }

    fn dispatch_discovery(
        &mut self,
        caller: u32,
        doc: DiscoveryDocument,
        attempt: u32,
        host: &dyn Host,
    ) {
        let request = okta::discovery_request(&self.config, doc);
        match host.dispatch(&self.config, &request) {
            Ok(token) => {
                let call = Call {
                    purpose: Purpose::Discovery(doc),
                    started_ms: host.now_ms(),
                    owner: caller,
                };
                self.calls.insert(token, call);
                self.discovery = Discovery::InFlight { attempt };
            }
            Err(DispatchError) => {
                host.count(Counter::IdpCall(
                    IdpEndpoint::Discovery,
                    CallResult::Failure,
                ));
                self.discovery_failed(
                    host.now_ms(),
                    attempt,
                    "the call could not be sent (is idp_upstream a known cluster with a healthy host?)",
                );
            }
        }
    }

    fn share_endpoints(&self, now: u64, host: &dyn Host) {
        let value = format!(
            "{}\n{}\n{}",
            now,
            self.endpoints.token_path.as_deref().unwrap_or_default(),
            self.endpoints
                .introspection_path
                .as_deref()
                .unwrap_or_default()
        );
        overwrite(host, &self.names.discovery(), value.as_bytes());
    }

    fn adopt_shared_endpoints(&mut self, host: &dyn Host) -> bool {
        let Some((bytes, _)) = host.shared_get(&self.names.discovery()) else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return false;
        };
        let mut parts = text.split('\n');
        let (Some(at), Some(token), Some(introspect)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let fresh = at
            .parse::<u64>()
            .is_ok_and(|at| host.now_ms().saturating_sub(at) < DISCOVERY_SHARED_TTL_MS);
        let non_empty = |p: &str| (!p.is_empty()).then(|| p.to_string());
        if !fresh {
            return false;
        }
        let token_path = self
            .endpoints
            .token_path
            .clone()
            .or_else(|| non_empty(token));
        let introspection_path = self
            .endpoints
            .introspection_path
            .clone()
            .or_else(|| non_empty(introspect));
        if (self.config.accept_basic && token_path.is_none())
            || (self.config.accept_bearer && introspection_path.is_none())
        {
            return false;
        }
        self.endpoints = Endpoints {
            token_path,
            introspection_path,
        };
        self.discovery = Discovery::Ready;
        true
    }

    fn allow(&self, credential: &Credential, grant: Grant, host: &dyn Host) -> Step {
        // No log line: this is the hot path, and the metrics count it.
        host.count(Counter::Allowed);
        let authorization = match credential {
            Credential::Bearer(_) => AuthorizationEdit::Keep,
            Credential::Basic(_) => match grant.access_token {
                Some(token) if self.config.forward_access_token => {
                    AuthorizationEdit::Set(format!("Bearer {token}"))
                }
                _ => AuthorizationEdit::Remove,
            },
        };
        Step::Forward(Forward {
            identity: grant.identity,
            scope: grant.scope,
            authorization,
        })
    }

    /// A denial decided by the IdP, a cached verdict of its, or its absence.
    fn deny(
        &self,
        ctx: u32,
        credential: Option<&Credential>,
        denial: Denial,
        host: &dyn Host,
    ) -> Step {
        let reason = match denial {
            Denial::NoCredentials => DenyReason::NoCredentials,
            Denial::DuplicateAuthorization => DenyReason::Malformed,
            Denial::InvalidClient | Denial::InvalidToken => DenyReason::Invalid,
            Denial::InsufficientScope => DenyReason::InsufficientScope,
            Denial::IdpUnavailable => DenyReason::IdpUnavailable,
        };
        self.refuse(ctx, credential, denial, reason, host)
    }

    /// Every refusal: counted by reason, one debug line, one reply.
    fn refuse(
        &self,
        ctx: u32,
        credential: Option<&Credential>,
        denial: Denial,
        reason: DenyReason,
        host: &dyn Host,
    ) -> Step {
        host.count(Counter::Denied(reason));
        match credential {
            Some(Credential::Basic(c)) => {
                log::debug!("[{ctx}] denied: {} (app {})", denial.reason(), c.client_id)
            }
            _ => log::debug!("[{ctx}] denied: {}", denial.reason()),
        }
        Step::Reply(denial, denial.reply(&self.config))
    }

    fn unavailable(&mut self, ctx: u32, host: &dyn Host) -> Step {
        self.waiting.remove(&ctx);
        self.deny(ctx, None, Denial::IdpUnavailable, host)
    }

    /// No verdict from the IdP: a recently expired positive verdict when `stale_if_error_s`
    /// allows it, else 503.
    fn unavailable_or_stale(
        &mut self,
        ctx: u32,
        w: &Waiting,
        entry: &CacheEntry,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        self.waiting.remove(&ctx);
        if let Freshness::Stale(grant) = entry.freshness(&w.key, now, self.config.stale_if_error_ms)
        {
            host.count(Counter::CacheStale);
            log::debug!("[{ctx}] IdP unavailable: serving a stale verdict");
            return self.allow(&w.credential, grant.clone(), host);
        }
        self.deny(ctx, Some(&w.credential), Denial::IdpUnavailable, host)
    }

    fn warn(&mut self, now: u64, message: std::fmt::Arguments<'_>) {
        if now >= self.last_warn_ms + WARN_INTERVAL_MS || self.last_warn_ms == 0 {
            self.last_warn_ms = now;
            log::warn!("{message}");
        } else {
            log::debug!("{message}");
        }
    }
}

/// Writes a shared-data key whatever it holds. Always with the current CAS: ngx_wasm_module
/// reads CAS 0 as "create only", Envoy as "unconditional".
fn overwrite(host: &dyn Host, key: &str, value: &[u8]) {
    for _ in 0..4 {
        let cas = host.shared_get(key).map_or(0, |(_, cas)| cas);
        if host.shared_set(key, value, cas) != Err(SharedError::CasMismatch) {
            return;
        }
    }
}

/// The slot's entry (an empty one for `key` when the slot holds nothing readable) and its CAS.
fn read_slot(host: &dyn Host, slot: &str, key: &CacheKey) -> (CacheEntry, u32) {
    match host.shared_get(slot) {
        Some((bytes, cas)) => (
            CacheEntry::decode(&bytes).unwrap_or_else(|| CacheEntry::empty(*key)),
            cas,
        ),
        None => (CacheEntry::empty(*key), 0),
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
