//! The request state machine's event API: a request arrives, an IdP answer arrives, the clock
//! ticks, a request goes away. This module owns the tables of parked requests and of calls in
//! flight and nothing else; the cache slots ([`slots`]), discovery ([`discovery`]), the quota
//! guard ([`guard`]) and the reply and upstream edits (`verdict`, `upstream`) are decided in
//! their own modules. It sees the host only through [`Host`], and time only as an argument, so
//! a fake host in unit tests drives every path.
//!
//! A request's life: `on_request` answers at once (cache hit, malformed input) or parks the
//! request ([`Parked`]) as waiting for discovery, for its own IdP call (leader), or for
//! another worker's (follower). `on_idp_answer` and `on_tick` later hand back a [`Step`] for
//! each parked request that can go on; [`Gate::next_deadline`] says when a tick has work.

mod admission;
mod answer;
mod bearer;
mod calls;
mod discovery;
#[doc(hidden)]
pub mod fake;
mod flow;
pub mod frame;
pub mod guard;
mod key_fetch;
mod keys;
pub mod registrations;
mod requests;
pub mod slots;
mod steps;
mod tick;

use crate::budget::CallClass;
use crate::cache::{CacheKey, Names};
use crate::config::Config;
use crate::credentials::{parse_authorization, CredentialError};
use crate::local::LocalCache;
use crate::metrics::{CallResult, Counter, DenyReason, Gauge, IdpEndpoint};
use crate::okta::{self, DiscoveryDocument, IdpAnswer, IdpRequest};
use crate::signatures::SignatureBudget;
use crate::upstream::Forward;
use crate::verdict::Denial;

use admission::Admission;
use calls::{Call, Calls, Deferred, Purpose};
use discovery::{Discovery, Next};
use guard::EndpointHealth;
use keys::Keys;
use registrations::Registry;
use requests::{Parked, Paused, Pending, Stage};
use slots::{overwrite, Slots};
pub use slots::{SharedData, SharedError};
use steps::{deny_reason, refuse, Answers, Warnings};

/// The host as the gate needs it: shared data, IdP calls, metrics. No clock: every event
/// carries its time.
pub trait Host: SharedData {
    /// Sends one IdP call through `upstream`, on behalf of context `caller`: its answer comes
    /// to that context, and the call dies with it (Envoy). The host must be told: Envoy keeps
    /// the effective context of an earlier callback, which would otherwise get the call.
    fn dispatch(
        &self,
        caller: ContextId,
        upstream: &str,
        request: &IdpRequest,
        timeout_ms: u64,
    ) -> Result<CallToken, DispatchError>;
    fn count(&self, counter: Counter);
    /// Records how long an IdP call took.
    fn observe_idp_latency(&self, ms: u64);
    /// Sets a gauge (a host without gauges ignores it).
    fn gauge(&self, _gauge: Gauge, _value: u64) {}
}

/// The host refused to send an IdP call (unknown upstream, no memory, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchError;

/// Why the gate did not send an IdP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotSent {
    /// The gateway has `max_idp_calls_in_flight` calls out to this org (for this caller).
    AtCap,
    /// The proxy refused it ([`DispatchError`]).
    Refused,
}

/// A proxy-wasm context: a request's, or the root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId(pub u32);

impl std::fmt::Display for ContextId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The host's token for an IdP call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallToken(pub u32);

/// Which paused requests the host lets a callback act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Any (Envoy): a request may wait for a call another request or the root made.
    AnyRequest,
    /// Only the request whose callback is running (ngx_wasm_module: its
    /// `set_effective_context` does nothing). A request then never waits for anyone else: it
    /// makes its own discovery and IdP calls.
    OwnRequestOnly,
}

/// What to do with a request: a decision, which the glue turns into header edits or a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Forward(Forward),
    Deny(Denial),
    /// 503: no verdict now, and none is asked for before `retry_after_s` (`Retry-After`).
    Unavailable {
        retry_after_s: u64,
    },
    /// 503 (`product` set): no registrations document may answer now (none yet, or past
    /// `registrations_max_age_s`); come back after `retry_after_s`.
    NoRegistrations {
        retry_after_s: u64,
    },
    /// Stay paused; a later event hands back this request's step.
    Wait,
}

/// Extra time beyond the IdP timeout that a lease, or a wait for one, may last.
const LEASE_MARGIN_MS: u64 = 1_000;
/// IdP trouble is logged at warn at most this often per worker.
const WARN_INTERVAL_MS: u64 = 10_000;
/// At most this many verdicts are copied per worker in front of shared data.
const LOCAL_CACHE_ENTRIES: usize = 1_024;
/// Tick period the glue sets once: how soon a follower sees another worker's verdict.
pub const TICK_MS: u64 = 10;

/// Per worker, per plugin configuration.
pub struct Gate {
    config: Config,
    names: Names,
    slots: Slots,
    discovery: Discovery,
    /// This worker's copy of the issuer's key set (`jwt` modes).
    keys: Keys,
    /// Registrations (`product` set): who may pass, and this worker's copy of the document.
    registry: Registry,
    admission: Admission,
    health: EndpointHealth,
    paused: Paused,
    calls: Calls,
    local: LocalCache,
    /// This worker's bound on token signature checks.
    signatures: SignatureBudget,
    /// The root context: log lines that belong to no request, and tick-driven calls.
    root: ContextId,
    resume: Resume,
    /// Until when this worker's own key set fetch without the lease may be out
    /// (`OwnRequestOnly`, no keys yet): one at a time.
    own_fetch_until_ms: u64,
    /// When this configuration next announces its bound of calls in flight to the org.
    next_announce_ms: u64,
    answers: Answers,
    warnings: Warnings,
    /// How long a call may take before its lease (and its place in flight) ends.
    lease_ms: u64,
}

/// A call that got its answer: where it went, when it was sent (what the quota guard needs of a
/// failure), and the request that sent it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    endpoint: IdpEndpoint,
    at_ms: u64,
    by: ContextId,
}

impl Gate {
    /// The gate of one configuration in one worker, ready for requests: every cache slot
    /// exists, and endpoints another worker discovered are taken. Discovery, when still
    /// needed, starts at the first tick: some hosts (ngx_wasm_module) refuse IdP calls during
    /// plugin start.
    pub fn new(config: Config, root: ContextId, resume: Resume, now: u64, host: &dyn Host) -> Gate {
        let names = Names::stable(&config.issuer);
        let slots = Slots::new(names.clone(), config.cache_slots, config.stale_if_error_ms);
        slots.create_all(host);
        let discovery = Discovery::new(config.endpoints.clone(), config.needs());
        // A seed no client can know, so that nobody can make credentials collide on purpose.
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            config.digest,
        );
        let capacity = LOCAL_CACHE_ENTRIES.min(config.cache_slots as usize);
        let local = LocalCache::new(capacity, seed);
        let config_lease_ms = config.idp_timeout_ms + LEASE_MARGIN_MS;
        let (config_forward, config_stale_ms) =
            (config.forward_access_token, config.stale_if_error_ms);
        let max_signature_checks_per_s = config.max_signature_checks_per_s;
        let admission = Admission::new(&config, names.clone(), config_lease_ms);
        let registry = Registry::new(&config, &names, root, host);
        let mut gate = Gate {
            config,
            names,
            slots,
            discovery,
            keys: Keys::default(),
            registry,
            admission,
            health: EndpointHealth::default(),
            paused: Paused::default(),
            calls: Calls::default(),
            local,
            signatures: SignatureBudget::new(max_signature_checks_per_s),
            root,
            resume,
            own_fetch_until_ms: 0,
            next_announce_ms: 0,
            answers: Answers::new(config_forward, config_stale_ms),
            warnings: Warnings::default(),
            lease_ms: config_lease_ms,
        };
        gate.admission.announce_bound(now, host);
        gate.next_announce_ms = now + crate::inflight::CAP_MEMORY_MS / 2;
        if !gate.discovery.is_ready() {
            adopt_shared_endpoints(&mut gate.discovery, &gate.names, now, host);
        }
        gate
    }

    /// A new request; `can_wait`: whether the host lets it wait for an IdP answer (when not,
    /// it gets its answer at once: a verdict, or 503 with `Retry-After` while the root asks
    /// the IdP for it).
    pub fn on_request(
        &mut self,
        ctx: ContextId,
        authorization: &[&[u8]],
        can_wait: bool,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        if let [raw] = authorization {
            if let Some(copy) = self.local.get(raw, now) {
                let (verdict, scheme, key) = (copy.verdict.clone(), copy.scheme, copy.key);
                let step = self.answers.cached(ctx, scheme, &key, false, verdict, host);
                return self.registry.settle(ctx, step, now, host);
            }
        }
        let credential = match parse_authorization(authorization, self.config.accepted) {
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
                return refuse(ctx, None, denial, reason, host);
            }
        };
        if let Some(step) = self.registry.precheck(ctx, &credential, now, host) {
            return step;
        }
        let req = Pending {
            raw: authorization.first().copied().unwrap_or_default().into(),
            key: CacheKey::new(&self.config.digest, &credential),
            credential,
            arrived_ms: now,
            stage: Stage::Arrived,
            can_wait,
        };
        let step = self.advance(ctx, ctx, req, now, host);
        self.registry.settle(ctx, step, now, host)
    }

    /// An IdP answer arrived, in the context `caller` (the context now active).
    pub fn on_idp_answer(
        &mut self,
        caller: ContextId,
        token: CallToken,
        answer: IdpAnswer<'_>,
        now: u64,
        host: &dyn Host,
    ) -> Vec<(ContextId, Step)> {
        if self.registry.on_answer(token, answer, now, host) {
            return Vec::new();
        }
        let Some(call) = self.calls.answered(token) else {
            return Vec::new();
        };
        self.admission
            .give_back_call_place(call.place_until, now, host);
        let elapsed = now.saturating_sub(call.started_ms);
        let endpoint = match &call.purpose {
            Purpose::Discovery(_) | Purpose::Keys { .. } => IdpEndpoint::Discovery,
            Purpose::Verdict { credential, .. } => answer::endpoint_of(credential),
        };
        let result = CallResult::of(answer.status, elapsed, self.config.idp_timeout_ms);
        host.count(Counter::IdpCall(endpoint, result));
        host.observe_idp_latency(elapsed);
        let steps = match call.purpose {
            Purpose::Discovery(doc) => self.on_discovery_answer(caller, doc, answer, now, host),
            Purpose::Keys { why, leased } => {
                let sent = (why, leased, call.started_ms);
                self.on_keys_answer(caller, answer, sent, now, host)
            }
            Purpose::Verdict {
                key,
                credential,
                leader,
            } => {
                let sent = Sent {
                    endpoint,
                    at_ms: call.started_ms,
                    by: leader,
                };
                self.on_verdict_answer(key, &credential, answer, sent, now, host)
            }
        };
        self.registry.settle_all(steps, now, host)
    }

    /// The most bytes of `token`'s answer body to read: a registrations document's cap for
    /// its fetch, `None` for an IdP call (the glue's own bound).
    pub fn answer_limit(&self, token: CallToken) -> Option<usize> {
        self.registry.answer_limit(token)
    }

    /// The request is gone (client hung up, stream reset). A call it owned is lost with it
    /// (its answer will never come back): its lease on a verdict is released for a follower to
    /// take over at once, and its key set fetch is sent again by the root (the lease stays), so
    /// that no client can hold back a key set refresh by hanging up. A lost call may still be
    /// out at the IdP, and counts as in flight until its timeout.
    pub fn on_request_gone(&mut self, ctx: ContextId, _now: u64, host: &dyn Host) {
        let Some(parked) = self.paused.take(ctx) else {
            return;
        };
        // Its calls' places among the gateway's calls in flight stay taken until their
        // deadlines: they may still be out at the IdP (Envoy does not cancel them).
        for call in self.calls.lost_with(ctx) {
            if let Purpose::Keys { why, leased: true } = call.purpose {
                self.calls.defer(Deferred::Keys(why));
            }
        }
        if let Parked::Leader { req, .. } = parked {
            self.slots.release(host, &req.key, None);
        }
    }

    fn on_discovery_answer(
        &mut self,
        caller: ContextId,
        doc: DiscoveryDocument,
        answer: IdpAnswer<'_>,
        now: u64,
        host: &dyn Host,
    ) -> Vec<(ContextId, Step)> {
        let result = okta::read_discovery(&self.config, answer, now / 1000);
        match self.discovery.on_answer(doc, result, now) {
            Next::Ready { newly: true } => {
                log::info!("[{}] endpoints discovered from the issuer", self.root);
                overwrite(host, &self.names.discovery(), &self.discovery.record(now));
            }
            Next::Ready { newly: false } => {}
            Next::Fetch(next) => {
                self.dispatch_discovery(caller, next, now, host);
                if self.discovery.in_flight() {
                    return Vec::new();
                }
            }
            Next::Retry { in_ms, why } => discovery_failed(self.root, in_ms, &why),
        }
        // Requests parked for discovery go on now, or fail if the retry is too late. With
        // `OwnRequestOnly`, only the request that made this call can be answered from here.
        self.resume_parked(caller, now, host, |p| matches!(p, Parked::Discovery { .. }))
    }

    /// Moves on every request parked for what `waited` matches (with `OwnRequestOnly`, only the
    /// caller: the host could not act on another request from here).
    fn resume_parked(
        &mut self,
        caller: ContextId,
        now: u64,
        host: &dyn Host,
        waited: impl Fn(&Parked) -> bool,
    ) -> Vec<(ContextId, Step)> {
        let own_only = self.resume == Resume::OwnRequestOnly;
        let ids = self
            .paused
            .ids(|id, p| waited(p) && (!own_only || id == caller));
        let mut steps = Vec::new();
        for ctx in ids {
            if let Some(parked) = self.paused.take(ctx) {
                let step = self.advance(ctx, caller, parked.into_req(), now, host);
                if step != Step::Wait {
                    steps.push((ctx, step));
                }
            }
        }
        steps
    }

    /// Sends `request` to the IdP on behalf of `caller`, if the gateway has a place among its
    /// calls in flight for a caller of `class`, and records the call for its answer.
    fn send(
        &mut self,
        caller: ContextId,
        request: &IdpRequest,
        (purpose, class): (Purpose, CallClass),
        now: u64,
        host: &dyn Host,
    ) -> Result<CallToken, NotSent> {
        let place_until = self
            .admission
            .take_call_place(class, now, host)
            .ok_or(NotSent::AtCap)?;
        let upstream = &self.config.idp_upstream;
        let timeout = self.config.idp_timeout_ms;
        let Ok(token) = host.dispatch(caller, upstream, request, timeout) else {
            self.admission.give_back_call_place(place_until, now, host);
            return Err(NotSent::Refused);
        };
        let call = Call {
            purpose,
            started_ms: now,
            place_until,
            owner: caller,
        };
        self.calls.record(token, call);
        Ok(token)
    }

    fn dispatch_discovery(
        &mut self,
        caller: ContextId,
        doc: DiscoveryDocument,
        now: u64,
        host: &dyn Host,
    ) {
        let request = okta::discovery_request(&self.config, doc);
        let purpose = (Purpose::Discovery(doc), CallClass::Refresh);
        match self.send(caller, &request, purpose, now, host) {
            Ok(_) => self.discovery.sent(),
            Err(_) => {
                host.count(Counter::IdpCall(
                    IdpEndpoint::Discovery,
                    CallResult::Failure,
                ));
                let why = "the call could not be sent (is idp_upstream a known cluster with a healthy host?)";
                if let Next::Retry { in_ms, why } = self.discovery.failed(now, why) {
                    discovery_failed(self.root, in_ms, &why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

fn discovery_failed(root: ContextId, in_ms: u64, why: &str) {
    log::warn!("[{root}] discovery at the issuer failed: {why}; retrying in {in_ms} ms");
}

/// Takes the endpoints another worker discovered, if the shared record holds them.
fn adopt_shared_endpoints(
    discovery: &mut Discovery,
    names: &Names,
    now: u64,
    host: &dyn Host,
) -> bool {
    host.shared_get(&names.discovery())
        .is_some_and(|(record, _)| discovery.adopt(&record, now))
}
