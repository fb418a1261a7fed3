//! The Bearer path before any introspection: in the `jwt` modes, a token is verified locally
//! with this worker's key set, after the worker-local copy and the shared verdict cache (so a
//! signature is checked once per token per gateway); in `introspection` mode with
//! `bearer_format: "jwt"`, what cannot be a JWT access token of this issuer is refused without
//! an IdP call. A token naming an unknown `kid` waits for the key set (`key_fetch`).

use super::key_fetch::{keys_record_name, read_keys_record, Fetch};
use super::keys::Why;
use super::{deny_reason, refuse, ContextId, Gate, Host, Parked, Pending, Resume, Stage, Step};
use crate::cache::{Cached, Freshness};
use crate::config::{BearerFormat, BearerValidation, Config};
use crate::credentials::Credential;
use crate::jwt::{self, JwtError, Verified};
use crate::local::Copy;
use crate::metrics::DenyReason;
use crate::verdict::Denial;

/// What the local part of the Bearer path did with a request.
#[derive(Debug)]
pub(super) enum Local {
    Decided(Step),
    /// It goes on to the IdP path.
    ToIdp(Pending),
}

/// While no key set was ever fetched, a 503 says to come back after this long.
const NO_KEYS_RETRY_AFTER_S: u64 = 2;

impl Gate {
    /// The local part of the Bearer path: a step when it decided, or the request for the IdP
    /// path (Basic, introspection, or a token verified in `jwt+introspection`).
    pub(super) fn check_bearer_locally(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        mut req: Pending,
        now: u64,
        host: &dyn Host,
    ) -> Local {
        if req.stage.past_local_checks() || !matches!(req.credential, Credential::Bearer(_)) {
            return Local::ToIdp(req);
        }
        if self.config.jwt.is_none() {
            return match peek_refusal(&self.config, &req.credential, now) {
                Some(e) => {
                    log::debug!(
                        "[{ctx}] not a JWT access token of this issuer: {}",
                        e.describe()
                    );
                    let denial = Denial::InvalidToken;
                    Local::Decided(refuse(ctx, None, denial, DenyReason::Malformed, host))
                }
                None => Local::ToIdp(req),
            };
        }
        if let Some(step) = self.shared_verdict(ctx, &mut req, now, host) {
            return Local::Decided(step);
        }
        let Credential::Bearer(token) = &req.credential else {
            return Local::ToIdp(req);
        };
        // With this worker's set; on an unknown `kid`, once more with a newer set another worker
        // fetched, if there is one.
        let token = token.clone();
        let policy = self.config.jwt.as_ref();
        let mut verified = self.keys.verify(&token, policy, &mut self.signatures, now);
        if matches!(verified, Err(JwtError::UnknownKid(_))) {
            let name = keys_record_name(&self.discovery, &self.names);
            let record = read_keys_record(host, name.as_deref());
            if self
                .keys
                .adopt_shared(&record, &mut self.warnings, self.root, now)
            {
                let policy = self.config.jwt.as_ref();
                verified = self.keys.verify(&token, policy, &mut self.signatures, now);
            }
        }
        Local::Decided(match verified {
            Ok(_) if self.config.bearer_validation == BearerValidation::JwtThenIntrospection => {
                req.stage = Stage::ToIdp;
                return Local::ToIdp(req);
            }
            Ok(verified) => self.jwt_decided(ctx, req, Ok(verified), now, host),
            Err(JwtError::UnknownKid(_)) => self.wait_for_keys(ctx, caller, req, now, host),
            Err(JwtError::Busy) => self.answers.busy(ctx, host),
            Err(e) => self.jwt_decided(ctx, req, Err(e), now, host),
        })
    }

    /// A fresh verdict in shared data (another worker, or this one earlier, decided).
    fn shared_verdict(
        &mut self,
        ctx: ContextId,
        req: &mut Pending,
        now: u64,
        host: &dyn Host,
    ) -> Option<Step> {
        let entry = self.slots.read(host, &req.key);
        if let Freshness::Fresh(verdict) = entry.freshness(&req.key, now, 0) {
            let verdict = verdict.clone();
            if let Cached::Allow(grant) = &verdict {
                // Verified by another worker (or earlier): the app is known here too.
                self.signatures.verified(&grant.identity, now);
            }
            let scheme = req.credential.scheme();
            self.local.put(
                &req.raw,
                Copy {
                    verdict: verdict.clone(),
                    scheme,
                    key: req.key,
                    decided_at_ms: entry.decided_at_ms,
                    expires_at_ms: entry.expires_at_ms,
                },
            );
            let counted = req.stage.counted();
            return Some(
                self.answers
                    .cached(ctx, scheme, &req.key, counted, verdict, host),
            );
        }
        req.missed(host);
        None
    }

    /// A token decided locally: a verified one is cached for every worker until the earlier of
    /// its `exp` and `cache_ttl_s` and forwarded as it came; a definite no is cached for
    /// `negative_cache_ttl_s` (401 or 403). This worker keeps a copy of what shared data holds.
    fn jwt_decided(
        &mut self,
        ctx: ContextId,
        req: Pending,
        decided: Result<Verified, JwtError>,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        let (verdict, expires, step) = match decided {
            Ok(verified) => {
                let expires =
                    (now + self.config.cache_ttl_ms).min(verified.exp.saturating_mul(1000));
                let grant = verified.grant();
                let step = self.answers.allow(req.credential.scheme(), grant.clone());
                (Cached::Allow(grant), expires, step)
            }
            Err(error) => {
                log::debug!("[{ctx}] bearer token refused: {}", error.describe());
                let denial = error.denial();
                let step = refuse(ctx, Some(&req.key), denial, deny_reason(denial), host);
                let expires = now + self.config.negative_cache_ttl_ms;
                (Cached::Deny(denial), expires, step)
            }
        };
        if self
            .slots
            .keep(host, req.key, now, expires, verdict.clone())
        {
            let copy = Copy {
                verdict,
                scheme: req.credential.scheme(),
                key: req.key,
                decided_at_ms: now,
                expires_at_ms: expires,
            };
            self.local.put(&req.raw, copy);
        }
        step
    }

    /// An unknown `kid` (or no key set yet): fetch the set if that is allowed now and wait for
    /// it; wait for another request's fetch; or decide with the keys there are.
    fn wait_for_keys(
        &mut self,
        ctx: ContextId,
        caller: ContextId,
        mut req: Pending,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        if req.stage == Stage::KeysAwaited {
            return self.without_new_keys(ctx, req, now, host);
        }
        if !self.discovery.is_ready() {
            // The key set's URL comes from discovery: wait for it like any other request.
            return self.wait_for_discovery(ctx, caller, req, now, host);
        }
        let why = if self.keys.set().is_none() {
            Why::NoKeys
        } else {
            Why::UnknownKid
        };
        let deadline_ms = req.arrived_ms + self.lease_ms;
        req.stage = Stage::KeysAwaited;
        let own_only = self.resume == Resume::OwnRequestOnly;
        // A request sends the fetch itself only where it can wait for nothing else.
        let own = own_only && req.can_wait;
        let fetch = match self.fetch_keys(caller, own, why, now, host) {
            Fetch::InFlight if own && why == Why::NoKeys => self.fetch_own_keys(caller, now, host),
            fetch => fetch,
        };
        match fetch {
            // The root fetches; this request may not wait: its retry finds the new set.
            Fetch::Sent | Fetch::InFlight if !req.can_wait => {
                Step::Unavailable { retry_after_s: 1 }
            }
            Fetch::Sent => self.paused.park(ctx, Parked::Keys { req, deadline_ms }),
            Fetch::InFlight if !own_only && now <= deadline_ms => {
                self.paused.park(ctx, Parked::Keys { req, deadline_ms })
            }
            _ => self.without_new_keys(ctx, req, now, host),
        }
    }

    /// No newer key set can come for this request: an unknown `kid` is an invalid token (not
    /// cached: a rotation may make it known soon); without any key set, 503.
    pub(super) fn without_new_keys(
        &mut self,
        ctx: ContextId,
        req: Pending,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        if self.keys.set().is_none() {
            self.warnings.warn(
                now,
                format_args!("[{ctx}] no key set from the issuer yet: Bearer tokens get 503"),
            );
            return self.answers.no_verdict(
                ctx,
                &req,
                &self.slots.read(host, &req.key),
                Some(NO_KEYS_RETRY_AFTER_S),
                now,
                host,
            );
        }
        log::debug!("[{ctx}] bearer token refused: its kid is not in the key set");
        let denial = Denial::InvalidToken;
        refuse(ctx, Some(&req.key), denial, deny_reason(denial), host)
    }
}

/// `introspection` mode, `bearer_format: "jwt"`: why `credential` cannot be a JWT access token
/// of this issuer (shape, issuer, expiry; no signature), if it cannot; `None` for anything that
/// goes on to the IdP.
fn peek_refusal(config: &Config, credential: &Credential, now: u64) -> Option<JwtError> {
    let Credential::Bearer(token) = credential else {
        return None;
    };
    if config.bearer_format == BearerFormat::Opaque {
        return None;
    }
    jwt::peek(token, &config.issuer, now / 1000, config.clock_skew_s).err()
}
