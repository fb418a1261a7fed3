//! How one request moves: from the cache, through discovery and the lease on its key, to its
//! own IdP call or another's, or to a stale verdict or a 503 when no verdict can come.
//!
//! Decide, then act. The decision ([`route`], then [`admit`]) is a pure function of what the
//! request is, what its cache slot holds, where discovery stands, and what admission says
//! ([`Facts`], read without a write). The slot protocol takes the request's lease only when the
//! decision is to lead, retrying the decision on a lost race; and only once the lease is won
//! does [`Gate::lead`] take the budget's call and then the failure throttle's turn, so that a
//! lost race spends nothing and a budget refusal spends no turn.

use super::admission::{call_class, Facts};
use super::answer::endpoint_of;
use super::bearer::Local;
use super::discovery::Discovery;
use super::slots::Update;
use super::{
    ContextId, Deferred, Gate, Host, NotSent, Parked, Pending, Purpose, Resume, Stage, Step,
};
use crate::budget::CallClass;
use crate::cache::{CacheEntry, Cached, Freshness};
use crate::config::Config;
use crate::credentials::Credential;
use crate::local::Copy;
use crate::okta::{self, IdpRequest};

/// What a request does next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Move {
    /// A fresh verdict is there.
    Cached(Cached, u64, u64),
    /// No verdict can come in time: a stale one, or 503 (with `Retry-After` when known).
    GiveUp(Option<u64>),
    WaitForDiscovery,
    /// `OwnRequestOnly`: nobody could wake this request, so it asks for the endpoints itself.
    Discover,
    Follow,
    /// The gateway has `max_idp_calls_in_flight` calls out to this Okta org (for this caller):
    /// no verdict now.
    AtCap,
    /// Call the IdP, taking the lease first unless (`OwnRequestOnly`) another request holds it.
    Lead {
        take_lease: bool,
    },
}

/// Where the decision stands before admission: a move, or a call to the IdP that admission
/// must allow (`take_lease`: nobody else holds the key's lease).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Move(Move),
    Admit { take_lease: bool },
}

/// What the gate knows beyond the slot when it decides.
#[derive(Debug, Clone, Copy)]
struct Situation {
    /// Discovery is done.
    ready: bool,
    /// When discovery is tried again, if it is not done.
    retry_at: Option<u64>,
    /// The host resumes only the request whose callback runs (`Resume::OwnRequestOnly`).
    own_only: bool,
    lease_ms: u64,
}

impl Situation {
    fn of(gate: &Gate) -> Situation {
        Situation {
            ready: gate.discovery.is_ready(),
            retry_at: gate.discovery.retry_at(),
            own_only: gate.resume == Resume::OwnRequestOnly,
            lease_ms: gate.lease_ms,
        }
    }
}

/// Before discovery is done: give up when it cannot be done by the request's deadline (or,
/// `OwnRequestOnly`, now), ask for it where nobody else could wake the request, or wait.
fn while_discovering(req: &Pending, s: Situation, now: u64) -> Move {
    let retry_at = s.retry_at.unwrap_or(now);
    match () {
        _ if retry_at > req.deadline_ms(s.lease_ms) || (s.own_only && retry_at > now) => {
            Move::GiveUp(None)
        }
        _ if s.own_only => Move::Discover,
        _ => Move::WaitForDiscovery,
    }
}

/// The first part of the decision, over what the slot holds: a fresh verdict, the end of a
/// follower's wait, discovery, another request's lease.
fn route(req: &Pending, entry: &CacheEntry, s: Situation, now: u64) -> Route {
    if let Freshness::Fresh(verdict) = entry.freshness(&req.key, now, 0) {
        let cached = Move::Cached(verdict.clone(), entry.decided_at_ms, entry.expires_at_ms);
        return Route::Move(cached);
    }
    let deadline = req.deadline_ms(s.lease_ms);
    let following = matches!(req.stage, Stage::Following { .. });
    if following && entry.key == req.key && entry.failed_at_ms >= req.arrived_ms {
        // The call it was waiting on failed.
        return Route::Move(Move::GiveUp(None));
    }
    if !s.ready {
        return Route::Move(while_discovering(req, s, now));
    }
    let theirs = entry.leased(&req.key, now);
    match () {
        _ if theirs && !s.own_only && now > deadline => Route::Move(Move::GiveUp(None)),
        _ if theirs && !s.own_only => Route::Move(Move::Follow),
        _ => Route::Admit {
            take_lease: !theirs,
        },
    }
}

/// The rest of the decision, over what admission says for a caller of `class`: the quota
/// guard's pause, the budget, the gateway's calls in flight, the failure throttle (which a
/// known-good credential is exempt from).
fn admit(facts: &Facts, class: CallClass, take_lease: bool) -> Move {
    if let Some(seconds) = facts.paused_for_s {
        // Okta asked us to back off, or keeps failing.
        return Move::GiveUp(Some(seconds));
    }
    if let Err(seconds) = facts.budget(class) {
        return Move::GiveUp(Some(seconds));
    }
    if !facts.place_left(class) {
        return Move::AtCap;
    }
    match facts.throttle {
        // Too many invalid secrets for this client id, and not its turn.
        Err(seconds) if class == CallClass::Unknown => Move::GiveUp(Some(seconds)),
        _ => Move::Lead { take_lease },
    }
}

/// A decision, the slot content it was made on, and what became of the lease.
#[derive(Debug)]
struct Decided {
    next: Move,
    seen: CacheEntry,
    update: Update,
}

/// Why a credential without a usable verdict gets 503 at once, for the log.
const AT_CAP: &str =
    "IdP calls in flight on this gateway at its bound (max_idp_calls_in_flight): no new call";

/// Why an IdP call may not leave, for the log.
pub(super) const NOT_SENT: &str = "IdP call could not be sent (is idp_upstream a known cluster with a healthy host, or is its circuit breaker full?)";

impl Gate {
    /// Moves a request as far as it can go: cache, discovery, lease, IdP call.
    pub(super) fn advance(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        req: Pending,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        if let Some(copy) = self.local.get(&req.raw, now) {
            let (verdict, counted) = (copy.verdict.clone(), req.stage.counted());
            return self.answers.cached(
                ctx,
                req.credential.scheme(),
                &req.key,
                counted,
                verdict,
                host,
            );
        }
        let mut req = match self.check_bearer_locally(ctx, caller, req, now, host) {
            Local::Decided(step) => return step,
            Local::ToIdp(req) => req,
        };
        let decided = self.decide(&req, now, host);
        if !matches!(decided.next, Move::Cached(..)) {
            req.missed(host);
        }
        self.make_move(ctx, caller, req, decided, now, host)
    }

    /// Decides over the request's slot, and takes its lease when the decision is to lead (a
    /// lost race decides again, on what the winner wrote). Admission's facts are read once, and
    /// only when the decision comes to them.
    fn decide(&self, req: &Pending, now: u64, host: &dyn Host) -> Decided {
        let situation = Situation::of(self);
        let endpoint = endpoint_of(&req.credential);
        let mut facts: Option<Facts> = None;
        let mut next = Move::GiveUp(None);
        let mut seen = CacheEntry::empty(req.key);
        let lease_until = now + situation.lease_ms;
        let update = self
            .slots
            .lease_if(host, &req.key, lease_until, now, |entry| {
                next = match route(req, entry, situation, now) {
                    Route::Move(m) => m,
                    Route::Admit { take_lease } => {
                        let facts = facts.get_or_insert_with(|| {
                            self.admission.facts(endpoint, &req.credential, now, host)
                        });
                        admit(facts, call_class(&req.key, entry, now), take_lease)
                    }
                };
                seen = entry.clone();
                matches!(next, Move::Lead { take_lease: true })
            });
        Decided { next, seen, update }
    }

    /// A request that needs discovery's endpoints for something else than its own IdP call (a
    /// Bearer token's key set): the moves [`route`] makes while discovery is not done.
    pub(super) fn wait_for_discovery(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        req: Pending,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let next = while_discovering(&req, Situation::of(self), now);
        let seen = self.slots.read(host, &req.key);
        let decided = Decided {
            next,
            seen,
            update: Update::Declined,
        };
        self.make_move(ctx, caller, req, decided, now, host)
    }

    /// Carries out a decision.
    fn make_move(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        req: Pending,
        Decided { next, seen, update }: Decided,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let deadline_ms = req.deadline_ms(self.lease_ms);
        let lost = update == Update::Lost;
        let answers = self.answers;
        match next {
            // A request that may not wait gets its answer now; a call it needs is the root's.
            Move::Discover | Move::WaitForDiscovery | Move::Follow | Move::Lead { .. }
                if !req.can_wait && (!matches!(next, Move::Lead { take_lease: true }) || lost) =>
            {
                answers.no_verdict(ctx, &req, &seen, Some(1), now, host)
            }
            // A fresh verdict another worker (or an earlier request) put in shared data: this
            // worker keeps a copy, found next time by the exact `Authorization` bytes.
            Move::Cached(verdict, decided, expires) => {
                let scheme = req.credential.scheme();
                let copy = Copy::of(verdict.clone(), scheme, req.key, decided, expires);
                self.local.put(&req.raw, copy);
                let counted = req.stage.counted();
                answers.cached(ctx, scheme, &req.key, counted, verdict, host)
            }
            Move::GiveUp(retry) => answers.no_verdict(ctx, &req, &seen, retry, now, host),
            Move::AtCap => {
                self.warnings.warn(now, format_args!("[{ctx}] {AT_CAP}"));
                answers.no_verdict(ctx, &req, &seen, Some(1), now, host)
            }
            Move::Discover => {
                let doc = okta::DiscoveryDocument::OAuthAuthorizationServer;
                self.dispatch_discovery(caller, doc, now, host);
                if !self.discovery.in_flight() {
                    return answers.no_verdict(ctx, &req, &seen, None, now, host);
                }
                self.paused
                    .park(ctx, Parked::Discovery { req, deadline_ms })
            }
            Move::WaitForDiscovery => {
                let discovery = Parked::Discovery { req, deadline_ms };
                self.paused.park(ctx, discovery)
            }
            // Another request's call, or the race for the lease lost every time: wait for it.
            Move::Follow | Move::Lead { .. } if next == Move::Follow || lost => {
                self.paused.park(ctx, Parked::Follower { req, deadline_ms })
            }
            Move::Follow | Move::Lead { .. } => self.lead(ctx, caller, req, &seen, now, host),
        }
    }

    /// Sends this request's own IdP call (its lease is won) and parks it as the leader: first
    /// the budget's call, then the failure throttle's turn, then a place among the gateway's
    /// calls in flight. A request that may not wait has the root send it at its next tick.
    fn lead(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        req: Pending,
        seen: &CacheEntry,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let Some(request) = idp_request(&self.config, &self.discovery, &req.credential) else {
            self.slots.release(host, &req.key, None);
            return self.answers.no_verdict(ctx, &req, seen, None, now, host);
        };
        let endpoint = endpoint_of(&req.credential);
        let class = call_class(&req.key, seen, now);
        let taken = self
            .admission
            .take_call(endpoint, class, &req.credential, now, host);
        if let Err((retry_after_s, why)) = taken {
            // No call: whoever waits on this lease gives up now too.
            self.slots.release(host, &req.key, Some(now));
            if let Some(why) = why {
                self.warnings
                    .warn(now, format_args!("[{ctx}] {} {why}", endpoint.name()));
            }
            return self
                .answers
                .no_verdict(ctx, &req, seen, Some(retry_after_s), now, host);
        }
        if !req.can_wait {
            // The root makes the call at its next tick, so that it outlives this request: the
            // verdict is there for its retry (`Retry-After: 1`).
            let call = Deferred::verdict(req.key, req.credential.clone(), class);
            self.calls.defer(call);
            return self.answers.no_verdict(ctx, &req, seen, Some(1), now, host);
        }
        let purpose = Purpose::verdict(req.key, req.credential.clone(), ctx);
        let (failed_at, why) = match self.send(caller, &request, (purpose, class), now, host) {
            Ok(call) => {
                let lease_until_ms = now + self.lease_ms;
                let leader = Parked::Leader {
                    req,
                    call,
                    lease_until_ms,
                };
                return self.paused.park(ctx, leader);
            }
            Err(NotSent::AtCap) => (None, AT_CAP),
            Err(NotSent::Refused) => {
                // The proxy's own refusal (its circuit breaker full): calls already queued there
                // may time out without Okta being at fault (`guard::silence_explained`).
                self.health.proxy_refused(endpoint, now);
                (Some(now), NOT_SENT)
            }
        };
        self.slots.release(host, &req.key, failed_at);
        self.warnings.warn(now, format_args!("[{ctx}] {why}"));
        self.answers.no_verdict(ctx, &req, seen, Some(1), now, host)
    }
}

/// The IdP call that gives a verdict on `credential`, once its endpoint is known.
pub(super) fn idp_request(
    config: &Config,
    discovery: &Discovery,
    credential: &Credential,
) -> Option<IdpRequest> {
    let endpoints = discovery.endpoints();
    match credential {
        Credential::Basic(client) => {
            let path = endpoints.token_path.as_deref()?;
            Some(okta::token_request(config, path, client))
        }
        Credential::Bearer(token) => {
            let path = endpoints.introspection_path.as_deref()?;
            Some(okta::introspection_request(config, path, token))
        }
    }
}
