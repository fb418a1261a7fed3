//! What an IdP answer decides: the verdict, cached for every worker, for the request that
//! asked and every request of this worker waiting on the same key; or a failure, which
//! releases the lease, falls back to a stale verdict, and may pause calls (the quota guard,
//! in `admission`). An `invalid_client` counts against its client id (the failure throttle).

use super::admission::Admission;
use super::guard::EndpointHealth;
use super::{deny_reason, refuse, ContextId, Gate, Host, Resume, Sent, Step};
use crate::cache::{CacheEntry, CacheKey, Cached};
use crate::credentials::Credential;
use crate::local::Copy;
use crate::metrics::IdpEndpoint;
use crate::okta::{self, IdpAnswer, IdpFailure, Outcome};
use crate::verdict::Denial;

impl Gate {
    pub(super) fn on_verdict_answer(
        &mut self,
        key: CacheKey,
        credential: &Credential,
        answer: IdpAnswer<'_>,
        sent: Sent,
        now: u64,
        host: &dyn Host,
    ) -> Vec<(ContextId, Step)> {
        let outcome = match credential {
            Credential::Basic(client) => okta::read_token_answer(client, answer, now / 1000),
            Credential::Bearer(_) => okta::read_introspection(&self.config, answer, now / 1000),
        };
        let leader = sent.by;
        let verdict = self.settle(key, sent, outcome, now, host);
        if matches!(verdict, Ok((Cached::Deny(Denial::InvalidClient), _))) {
            self.admission.note_client_failure(credential, now, host);
        }
        // After a failure, what the slot still holds (a stale verdict, perhaps), read once.
        let remaining = match verdict {
            Err(_) => self.slots.read(host, &key),
            Ok(_) => CacheEntry::empty(key),
        };
        let mut steps = Vec::new();
        let own_only = self.resume == Resume::OwnRequestOnly;
        for ctx in self.paused.waiting_on(key, leader, own_only) {
            let Some(parked) = self.paused.take(ctx) else {
                continue;
            };
            let req = parked.into_req();
            if let Ok((verdict, Some(stored))) = &verdict {
                // Each request's own spelling of the credential gets its copy.
                let copy = Copy {
                    verdict: verdict.clone(),
                    scheme: req.credential.scheme(),
                    key,
                    decided_at_ms: now,
                    expires_at_ms: *stored,
                };
                self.local.put(&req.raw, copy);
            }
            let step = match &verdict {
                Ok((Cached::Allow(grant), _)) => {
                    self.answers.allow(req.credential.scheme(), grant.clone())
                }
                Ok((Cached::Deny(d), _)) => refuse(ctx, Some(&key), *d, deny_reason(*d), host),
                Err(_) => self
                    .answers
                    .no_verdict(ctx, &req, &remaining, None, now, host),
            };
            steps.push((ctx, step));
        }
        steps
    }

    /// Records what an answer decided: a verdict is cached, a failure releases the lease and
    /// may pause calls.
    fn settle(
        &mut self,
        key: CacheKey,
        sent: Sent,
        outcome: Outcome,
        now: u64,
        host: &dyn Host,
    ) -> Result<(Cached, Option<u64>), IdpFailure> {
        let (verdict, expires) = match outcome {
            Outcome::Granted {
                grant,
                expires_at_s,
            } => {
                let mut expires = now + self.config.cache_ttl_ms;
                if let Some(exp) = expires_at_s {
                    expires = expires.min(exp.saturating_mul(1000));
                }
                (Cached::Allow(grant), expires)
            }
            Outcome::Denied(denial) => (
                Cached::Deny(denial),
                now + self.config.negative_cache_ttl_ms,
            ),
            Outcome::Failed(failure) => {
                let why = failure.describe();
                let leader = sent.by;
                self.warnings
                    .warn(now, format_args!("[{leader}] IdP call failed: {why}"));
                self.slots.release(host, &key, Some(now));
                let root = self.root;
                note_failure(
                    root,
                    &self.admission,
                    &mut self.health,
                    failure,
                    sent,
                    now,
                    host,
                );
                return Err(failure);
            }
        };
        self.health
            .heard_from(sent.endpoint, matches!(verdict, Cached::Allow(_)), now);
        let stored = self.slots.keep(host, key, now, expires, verdict.clone());
        Ok((verdict, stored.then_some(expires)))
    }
}

/// A failed call may pause its endpoint for every worker: a 429 until Okta's reset,
/// repeated 5xx or silence briefly, longer while it goes on (the quota guard, `guard`).
pub(super) fn note_failure(
    root: ContextId,
    admission: &Admission,
    health: &mut EndpointHealth,
    failure: IdpFailure,
    sent: Sent,
    now: u64,
    host: &dyn Host,
) {
    let endpoint = sent.endpoint;
    let current = admission.pause_until(endpoint, host);
    let pause = health.note_failure(endpoint, failure, sent.at_ms, current, now);
    if let Some(until) = pause {
        // A line of its own, not folded into the rate-limited failure warnings: operators
        // need to see a pause, and there is at most one per pause.
        log::warn!(
            "[{root}] pausing {} calls for {} ms: {}",
            endpoint.name(),
            until - now,
            failure.describe()
        );
        admission.pause(endpoint, until, host);
    }
}

/// The endpoint that gives a verdict on a credential.
pub(super) fn endpoint_of(credential: &Credential) -> IdpEndpoint {
    match credential {
        Credential::Basic(_) => IdpEndpoint::Token,
        Credential::Bearer(_) => IdpEndpoint::Introspection,
    }
}
