//! How one request moves: from the cache, through discovery and the lease on its key, to its
//! own IdP call or another's, or to a stale verdict or a 503 when no verdict can come.

use super::slots::Update;
use super::{
    ContextId, Deferred, Gate, Host, NotSent, Parked, Pending, Purpose, Resume, Stage, Step,
    LEASE_MARGIN_MS,
};
use crate::budget::CallClass;
use crate::cache::{CacheEntry, Cached, Freshness};
use crate::credentials::Credential;
use crate::local::Copy;
use crate::okta::{self, IdpRequest};

/// What a request does next, given what its slot holds.
#[derive(Debug)]
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

/// Why an IdP call may not leave, for the log.
const NOT_SENT: &str = "IdP call could not be sent (is idp_upstream a known cluster with a healthy host, or is its circuit breaker full?)";

impl Gate {
    pub(super) fn lease_ms(&self) -> u64 {
        self.config.idp_timeout_ms + LEASE_MARGIN_MS
    }

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
            let verdict = copy.verdict.clone();
            let counted = req.stage.counted();
            return self.cached(
                ctx,
                req.credential.scheme(),
                &req.key,
                counted,
                verdict,
                host,
            );
        }
        let mut req = match self.check_bearer_locally(ctx, caller, req, now, host) {
            Ok(step) => return step,
            Err(req) => req,
        };
        let lease_until = now + self.lease_ms();
        let mut seen = CacheEntry::empty(req.key);
        let mut next = Move::GiveUp(None);
        let update = self
            .slots
            .lease_if(host, &req.key, lease_until, now, |entry| {
                next = self.next_move(&req, entry, now, host);
                seen = entry.clone();
                matches!(next, Move::Lead { take_lease: true })
            });
        if !matches!(next, Move::Cached(..)) {
            req.missed(host);
        }
        self.make_move(ctx, caller, req, next, &seen, update, now, host)
    }

    /// Carries out what `next_move` decided.
    #[allow(clippy::too_many_arguments)]
    fn make_move(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        req: Pending,
        next: Move,
        seen: &CacheEntry,
        update: Update,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let deadline_ms = req.deadline_ms(self.lease_ms());
        match next {
            // A request that may not wait gets its answer now; a call it needs is the root's.
            Move::Discover | Move::WaitForDiscovery | Move::Follow if !req.can_wait => {
                self.no_verdict(ctx, &req, Some(seen), Some(1), now, host)
            }
            Move::Lead { take_lease }
                if !req.can_wait && (!take_lease || update == Update::Lost) =>
            {
                self.no_verdict(ctx, &req, Some(seen), Some(1), now, host)
            }
            Move::Cached(verdict, decided_at_ms, expires_at_ms) => {
                self.copy_of_shared(ctx, &req, verdict, decided_at_ms, expires_at_ms, host)
            }
            Move::GiveUp(retry_after_s) => {
                self.no_verdict(ctx, &req, Some(seen), retry_after_s, now, host)
            }
            Move::AtCap => self.at_cap(ctx, &req, seen, now, host),
            Move::Discover => {
                self.dispatch_discovery(
                    caller,
                    okta::DiscoveryDocument::OAuthAuthorizationServer,
                    now,
                    host,
                );
                if !self.discovery.in_flight() {
                    return self.no_verdict(ctx, &req, Some(seen), None, now, host);
                }
                self.park(ctx, Parked::Discovery { req, deadline_ms })
            }
            Move::WaitForDiscovery => self.park(ctx, Parked::Discovery { req, deadline_ms }),
            Move::Follow => self.park(ctx, Parked::Follower { req, deadline_ms }),
            // Lost the race for the lease every time: wait for whoever won.
            Move::Lead { .. } if update == Update::Lost => {
                self.park(ctx, Parked::Follower { req, deadline_ms })
            }
            Move::Lead { .. } => {
                let lease_until = now + self.lease_ms();
                self.lead(ctx, caller, req, seen, lease_until, now, host)
            }
        }
    }

    /// A fresh verdict another worker (or an earlier request) put in shared data: this worker
    /// keeps a copy, found next time by the exact `Authorization` bytes.
    fn copy_of_shared(
        &mut self,
        ctx: ContextId,
        req: &Pending,
        verdict: Cached,
        decided_at_ms: u64,
        expires_at_ms: u64,
        host: &dyn Host,
    ) -> Step {
        let scheme = req.credential.scheme();
        let copy = Copy {
            verdict: verdict.clone(),
            scheme,
            key: req.key,
            decided_at_ms,
            expires_at_ms,
        };
        self.local.put(&req.raw, copy);
        self.cached(ctx, scheme, &req.key, req.stage.counted(), verdict, host)
    }

    pub(super) fn park(&mut self, ctx: ContextId, parked: Parked) -> Step {
        self.parked.insert(ctx, parked);
        Step::Wait
    }

    /// The decision itself, over what the slot holds; no writes.
    fn next_move(&self, req: &Pending, entry: &CacheEntry, now: u64, host: &dyn Host) -> Move {
        if let Freshness::Fresh(verdict) = entry.freshness(&req.key, now, 0) {
            return Move::Cached(verdict.clone(), entry.decided_at_ms, entry.expires_at_ms);
        }
        let own_only = self.resume == Resume::OwnRequestOnly;
        let deadline = req.deadline_ms(self.lease_ms());
        let following = matches!(req.stage, Stage::Following { .. });
        if following && entry.key == req.key && entry.failed_at_ms >= req.arrived_ms {
            // The call we were waiting on failed.
            return Move::GiveUp(None);
        }
        if !self.discovery.is_ready() {
            let retry_at = self.discovery.retry_at().unwrap_or(now);
            return match () {
                _ if retry_at > deadline || (own_only && retry_at > now) => Move::GiveUp(None),
                _ if own_only => Move::Discover,
                _ => Move::WaitForDiscovery,
            };
        }
        let theirs = entry.leased(&req.key, now);
        if theirs && !own_only {
            return if now > deadline {
                Move::GiveUp(None)
            } else {
                Move::Follow
            };
        }
        let endpoint = super::answer::endpoint_of(&req.credential);
        if let Some(seconds) = self.paused_for(endpoint, now, host) {
            // The quota guard: Okta asked us to back off, or keeps failing.
            return Move::GiveUp(Some(seconds));
        }
        if let Err(seconds) = self.budget_left(endpoint, &req.key, entry, now, host) {
            return Move::GiveUp(Some(seconds));
        }
        let class = super::admission::call_class(&req.key, entry, now);
        if !self.call_place_left(class, now, host) {
            return Move::AtCap;
        }
        if let Err(seconds) = self.throttle_turn(&req.credential, &req.key, entry, now, host) {
            // Too many invalid secrets for this client id, and not its turn.
            return Move::GiveUp(Some(seconds));
        }
        Move::Lead {
            take_lease: !theirs,
        }
    }

    /// Sends this request's own IdP call and parks it as the leader.
    #[allow(clippy::too_many_arguments)]
    fn lead(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        req: Pending,
        seen: &CacheEntry,
        lease_until_ms: u64,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let Some(request) = self.idp_request(&req.credential) else {
            self.slots.release(host, &req.key, None);
            return self.no_verdict(ctx, &req, Some(seen), None, now, host);
        };
        let endpoint = super::answer::endpoint_of(&req.credential);
        if let Err(retry_after_s) = self.take_budget(endpoint, &req.key, seen, now, host) {
            // No call: whoever waits on this lease gives up now too.
            self.slots.release(host, &req.key, Some(now));
            let why = "call budget spent (idp_calls_per_minute): no call";
            self.warn(now, format_args!("[{ctx}] {} {why}", endpoint.name()));
            return self.no_verdict(ctx, &req, Some(seen), Some(retry_after_s), now, host);
        }
        if !req.can_wait {
            // The root makes the call at its next tick, so that it outlives this request: the
            // verdict is there for its retry (`Retry-After: 1`).
            self.deferred.push(Deferred::Verdict {
                key: req.key,
                credential: req.credential.clone(),
                class: super::admission::call_class(&req.key, seen, now),
            });
            return self.no_verdict(ctx, &req, Some(seen), Some(1), now, host);
        }
        let purpose = Purpose::Verdict {
            key: req.key,
            credential: req.credential.clone(),
            leader: ctx,
        };
        let class = super::admission::call_class(&req.key, seen, now);
        match self.send(caller, &request, (purpose, class), now, host) {
            Ok(call) => self.park(
                ctx,
                Parked::Leader {
                    req,
                    call,
                    lease_until_ms,
                },
            ),
            Err(NotSent::AtCap) => {
                self.slots.release(host, &req.key, None);
                self.at_cap(ctx, &req, seen, now, host)
            }
            Err(NotSent::Refused) => {
                // The proxy's own refusal (its circuit breaker full): calls already queued there
                // may time out without Okta being at fault (`guard::silence_explained`).
                self.silence_explained_ms[endpoint.index()] = now;
                self.warn(now, format_args!("[{ctx}] {NOT_SENT}"));
                self.slots.release(host, &req.key, Some(now));
                self.no_verdict(ctx, &req, Some(seen), Some(1), now, host)
            }
        }
    }

    /// The gateway has its bound of calls in flight out: no verdict now.
    fn at_cap(
        &mut self,
        ctx: ContextId,
        req: &Pending,
        seen: &CacheEntry,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let cap = self.config.max_idp_calls_in_flight;
        let why = "IdP calls in flight on this gateway (max_idp_calls_in_flight): no new call";
        self.warn(now, format_args!("[{ctx}] {cap} {why}"));
        self.no_verdict(ctx, req, Some(seen), Some(1), now, host)
    }

    /// The root sends a verdict call a request that could not wait asked for (its lease and
    /// budget were taken then); the answer is cached for the request's retry.
    pub(super) fn send_deferred_verdict(
        &mut self,
        (key, credential, class): (crate::cache::CacheKey, Credential, CallClass),
        now: u64,
        host: &dyn Host,
    ) {
        let root = self.root;
        let Some(request) = self.idp_request(&credential) else {
            self.slots.release(host, &key, None);
            return;
        };
        let endpoint = super::answer::endpoint_of(&credential);
        let purpose = Purpose::Verdict {
            key,
            credential,
            leader: root,
        };
        match self.send(root, &request, (purpose, class), now, host) {
            Ok(_) => {}
            Err(NotSent::AtCap) => self.slots.release(host, &key, None),
            Err(NotSent::Refused) => {
                self.silence_explained_ms[endpoint.index()] = now;
                self.warn(now, format_args!("[{root}] {NOT_SENT}"));
                self.slots.release(host, &key, Some(now));
            }
        }
    }

    fn idp_request(&self, credential: &Credential) -> Option<IdpRequest> {
        let endpoints = self.discovery.endpoints();
        match credential {
            Credential::Basic(client) => {
                let path = endpoints.token_path.as_deref()?;
                Some(okta::token_request(&self.config, path, client))
            }
            Credential::Bearer(token) => {
                let path = endpoints.introspection_path.as_deref()?;
                Some(okta::introspection_request(&self.config, path, token))
            }
        }
    }
}
