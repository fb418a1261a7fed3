//! How a decision becomes a [`Step`]: every refusal counted by reason and logged once at
//! debug, every grant counted, a stale verdict served when the IdP gives none, and IdP
//! trouble logged at warn at most once per `WARN_INTERVAL_MS`.

use super::{ContextId, Host, Pending, Step, WARN_INTERVAL_MS};
use crate::cache::{CacheEntry, CacheKey, Cached, Freshness};
use crate::credentials::Scheme;
use crate::metrics::{Counter, DenyReason};
use crate::upstream::Forward;
use crate::verdict::{Denial, Grant};

/// How a verdict becomes a [`Step`], with what the configuration says about it: the upstream
/// edits of a grant (`forward_access_token`), and how long an expired positive verdict may
/// still serve while the IdP gives none (`stale_if_error_s`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Answers {
    forward_access_token: bool,
    stale_if_error_ms: u64,
}

impl Answers {
    pub fn new(forward_access_token: bool, stale_if_error_ms: u64) -> Answers {
        Answers {
            forward_access_token,
            stale_if_error_ms,
        }
    }

    /// Answers from a fresh cached verdict (`counted`: the lookup was already counted).
    pub fn cached(
        &self,
        ctx: ContextId,
        scheme: Scheme,
        key: &CacheKey,
        counted: bool,
        verdict: Cached,
        host: &dyn Host,
    ) -> Step {
        match verdict {
            Cached::Allow(grant) => {
                if !counted {
                    host.count(Counter::CacheHit);
                }
                self.allow(scheme, grant)
            }
            Cached::Deny(d) => {
                if !counted {
                    host.count(Counter::CacheNegativeHit);
                }
                refuse(ctx, Some(key), d, deny_reason(d), host)
            }
        }
    }

    /// A grant's step; counted as allowed when it leaves the gate (`Registry::settle`), where
    /// registrations may still refuse it.
    pub fn allow(&self, scheme: Scheme, grant: Grant) -> Step {
        // No log line: this is the hot path, and the metrics count it.
        Step::Forward(Forward::new(scheme, grant, self.forward_access_token))
    }

    /// A token whose signature this worker may not check now (`signatures::SignatureBudget`):
    /// 503, come back in a second; nothing cached.
    pub fn busy(&self, ctx: ContextId, host: &dyn Host) -> Step {
        log::debug!("[{ctx}] bearer token not checked now: signature checks at their bound");
        host.count(Counter::Denied(DenyReason::Busy));
        Step::Unavailable { retry_after_s: 1 }
    }

    /// No verdict from the IdP: a recently expired positive verdict in `entry` (the request's
    /// cache entry as last read) when `stale_if_error_s` allows it, else 503 (with
    /// `Retry-After` when it is known when to come back).
    pub fn no_verdict(
        &self,
        ctx: ContextId,
        req: &Pending,
        entry: &CacheEntry,
        retry_after_s: Option<u64>,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        if let Freshness::Stale(grant) = entry.freshness(&req.key, now, self.stale_if_error_ms) {
            host.count(Counter::CacheStale);
            log::debug!("[{ctx}] IdP unavailable: serving a stale verdict");
            return self.allow(req.credential.scheme(), grant.clone());
        }
        let denial = Denial::IdpUnavailable;
        match (
            refuse(ctx, Some(&req.key), denial, deny_reason(denial), host),
            retry_after_s,
        ) {
            (_, Some(retry_after_s)) => Step::Unavailable { retry_after_s },
            (step, None) => step,
        }
    }
}

/// IdP trouble logged at warn at most once per `WARN_INTERVAL_MS` per worker, at debug otherwise:
/// a failing Okta must not flood the log.
#[derive(Debug, Default)]
pub(super) struct Warnings {
    last_ms: u64,
}

impl Warnings {
    pub fn warn(&mut self, now: u64, message: std::fmt::Arguments<'_>) {
        if now >= self.last_ms + WARN_INTERVAL_MS || self.last_ms == 0 {
            self.last_ms = now;
            log::warn!("{message}");
        } else {
            log::debug!("{message}");
        }
    }
}

/// Every refusal: counted by reason, one debug line, one decision. The line names a Basic
/// credential by a short hash of its cache key: a client id is not known to be one until Okta
/// accepts it (a client that swaps id and secret must not get its secret logged).
pub(super) fn refuse(
    ctx: ContextId,
    key: Option<&CacheKey>,
    denial: Denial,
    reason: DenyReason,
    host: &dyn Host,
) -> Step {
    host.count(Counter::Denied(reason));
    match key {
        Some(key) => log::debug!("[{ctx}] denied: {} ({key:?})", denial.reason()),
        None => log::debug!("[{ctx}] denied: {}", denial.reason()),
    }
    Step::Deny(denial)
}

/// The metrics reason of a denial decided by the IdP, a cached verdict of its, or its absence.
pub(super) fn deny_reason(denial: Denial) -> DenyReason {
    match denial {
        Denial::NoCredentials => DenyReason::NoCredentials,
        Denial::DuplicateAuthorization | Denial::UnremovableHeaders => DenyReason::Malformed,
        Denial::InvalidClient | Denial::InvalidToken => DenyReason::Invalid,
        Denial::InsufficientScope => DenyReason::InsufficientScope,
        Denial::IdpUnavailable => DenyReason::IdpUnavailable,
        Denial::NotRegistered => DenyReason::NotApproved,
        Denial::RegistrationsUnavailable => DenyReason::RegistrationsUnavailable,
    }
}
