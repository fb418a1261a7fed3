//! Fetching the issuer's key set for every worker: the lease in the shared record (single
//! flight), the call (counted and guarded as a discovery call), its answer (the new set shared,
//! or the last good one kept), and waking the requests that waited for it. The rules of when a
//! fetch may go out are `keys`'s.
//!
//! The root sends the fetch, from its own callback (at once on a tick, else at the next one): a
//! request's call would die with the request, and an anonymous client could then hold back
//! every refresh by hanging up. Only a request that can wait for nothing but its own call
//! (`OwnRequestOnly`) sends its own; if it goes away, the root sends the fetch again.

use super::answer::note_failure;
use super::discovery::Discovery;
use super::keys::{KeysRecord, Why};
use super::slots::{update, Update};
use super::{ContextId, Deferred, Gate, Host, NotSent, Parked, Purpose, Sent, Step};
use crate::budget::CallClass;
use crate::cache::{Names, NotWritten};
use crate::metrics::{CallResult, Counter, IdpEndpoint};
use crate::okta::{self, IdpAnswer, JwksAnswerError};

/// What came of asking for a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetch {
    /// This worker's call is out.
    Sent,
    /// Another fetch is out (some worker holds the lease).
    InFlight,
    /// Not now: too soon after the last one, the endpoint paused, or no call could be sent.
    NotNow,
}

impl Gate {
    /// Takes the shared lease if `why` allows a fetch now, and has it sent: by `caller` when it
    /// is the root, or when `own` (a request that can only wait for its own call); otherwise
    /// by the root at its next tick.
    pub(super) fn fetch_keys(
        &mut self,
        caller: ContextId,
        own: bool,
        why: Why,
        now: u64,
        host: &dyn Host,
    ) -> Fetch {
        let Some(path) = self.discovery.endpoints().jwks_path.clone() else {
            return Fetch::NotNow;
        };
        if self
            .admission
            .paused_for(IdpEndpoint::Discovery, now, host)
            .is_some()
            || !self
                .admission
                .call_place_left(CallClass::Refresh, now, host)
        {
            return Fetch::NotNow;
        }
        let until = now + self.lease_ms;
        let mut in_flight = false;
        let written = update(host, &self.names.jwks(&path), |bytes| {
            let record = bytes.and_then(KeysRecord::decode).unwrap_or_default();
            in_flight = record.in_flight(now);
            if record.may_fetch(why, now) {
                Ok(record.leased(until).encode())
            } else {
                Err(NotWritten::Declined)
            }
        });
        match written {
            Update::Written if caller == self.root || own => {
                self.send_fetch(caller, &path, why, true, now, host)
            }
            Update::Written => {
                self.calls.defer(Deferred::Keys(why));
                Fetch::Sent
            }
            _ if in_flight => Fetch::InFlight,
            _ => Fetch::NotNow,
        }
    }

    /// `OwnRequestOnly`, no keys yet, another request's fetch out: this request cannot wait
    /// for it, so it sends its own (without the lease, as a Basic request there makes its own
    /// call). Never for an unknown `kid`: that stays once per 30 s.
    pub(super) fn fetch_own_keys(&mut self, caller: ContextId, now: u64, host: &dyn Host) -> Fetch {
        // One such fetch per worker at a time, until its answer or its deadline (a request that
        // goes away takes its call's answer with it, not the call): a flood of first requests
        // must not become a flood of key set fetches.
        if now < self.own_fetch_until_ms {
            return Fetch::NotNow;
        }
        let Some(path) = self.discovery.endpoints().jwks_path.clone() else {
            return Fetch::NotNow;
        };
        if !self
            .admission
            .call_place_left(CallClass::Unknown, now, host)
        {
            return Fetch::NotNow;
        }
        let fetch = self.send_fetch(caller, &path, Why::NoKeys, false, now, host);
        if fetch == Fetch::Sent {
            self.own_fetch_until_ms = now + self.lease_ms;
        }
        fetch
    }

    pub(super) fn send_fetch(
        &mut self,
        caller: ContextId,
        path: &str,
        why: Why,
        leased: bool,
        now: u64,
        host: &dyn Host,
    ) -> Fetch {
        let request = okta::jwks_request(&self.config, path);
        // A request's own fetch without the lease (`OwnRequestOnly`, no keys yet) is no more
        // than any unknown credential's call: it may not take the refresh reserve.
        let class = if leased {
            CallClass::Refresh
        } else {
            CallClass::Unknown
        };
        let purpose = (Purpose::Keys { why, leased }, class);
        match self.send(caller, &request, purpose, now, host) {
            Ok(_) => Fetch::Sent,
            Err(not_sent) => {
                host.count(Counter::IdpCall(
                    IdpEndpoint::Discovery,
                    CallResult::Failure,
                ));
                match not_sent {
                    // No place in flight: nothing was tried, so nothing counts.
                    NotSent::AtCap if leased => end_keys_lease(
                        host,
                        keys_record_name(&self.discovery, &self.names).as_deref(),
                        None,
                    ),
                    NotSent::AtCap => {}
                    // The proxy's refusal completes the attempt.
                    NotSent::Refused => {
                        self.warnings.warn(
                            now,
                            format_args!("[{caller}] the key set fetch could not be sent (is idp_upstream a known cluster with a healthy host?)"),
                        );
                        if leased {
                            let name = keys_record_name(&self.discovery, &self.names);
                            end_keys_lease(host, name.as_deref(), Some((why, now)));
                        }
                    }
                }
                Fetch::NotNow
            }
        }
    }

    /// The key set answer: a usable set is shared with every worker and used at once; anything
    /// else keeps the last good set. Requests waiting for keys go on either way.
    pub(super) fn on_keys_answer(
        &mut self,
        caller: ContextId,
        answer: IdpAnswer<'_>,
        (why, leased, sent_ms): (Why, bool, u64),
        now: u64,
        host: &dyn Host,
    ) -> Vec<(ContextId, Step)> {
        if !leased {
            self.own_fetch_until_ms = 0;
        }
        let sent = Sent {
            endpoint: IdpEndpoint::Discovery,
            at_ms: sent_ms,
            by: caller,
        };
        match okta::read_jwks(answer, now / 1000) {
            Ok((set, skipped)) => {
                self.health.heard_from(sent.endpoint, true, now);
                if skipped > 0 {
                    log::warn!(
                        "[{}] the issuer's key set has {skipped} key(s) that cannot verify signatures: skipped",
                        self.root
                    );
                }
                log::info!("[{}] key set fetched: {} key(s)", self.root, set.len());
                if let Some(name) = keys_record_name(&self.discovery, &self.names) {
                    update(host, &name, |bytes| {
                        let record = bytes.and_then(KeysRecord::decode).unwrap_or_default();
                        let mut fetched = record.fetched(answer.body, now);
                        if !leased {
                            // Another worker's lease (a refresh in flight) is not this
                            // fetch's to end.
                            fetched.lease_until_ms = record.lease_until_ms;
                        }
                        Ok(fetched.attempted(why, sent_ms).encode())
                    });
                }
                self.keys.install(set, now);
            }
            Err(e) => {
                let (root, why_failed) = (self.root, e.describe());
                let keeps = "the last good set stays in use";
                let message = format_args!("[{root}] key set fetch failed: {why_failed}; {keeps}");
                self.warnings.warn(now, message);
                if leased {
                    let name = keys_record_name(&self.discovery, &self.names);
                    end_keys_lease(host, name.as_deref(), Some((why, sent_ms)));
                }
                if let JwksAnswerError::Failed(failure) = e {
                    let (admission, health) = (&self.admission, &mut self.health);
                    note_failure(self.root, admission, health, failure, sent, now, host);
                }
            }
        }
        // Every request waiting for keys goes on (with `OwnRequestOnly`, only `caller`'s).
        self.resume_parked(caller, now, host, |p| matches!(p, Parked::Keys { .. }))
    }

    /// On tick: whether requests waiting for keys should look again (a newer set arrived, or
    /// no fetch is out any more), and the periodic refresh when it is due.
    pub(super) fn tick_keys(&mut self, waiting: bool, now: u64, host: &dyn Host) -> bool {
        let due = self.config.jwt.is_some()
            && self.discovery.is_ready()
            && self.keys.refresh_due_at().is_some_and(|at| at <= now);
        if !waiting && !due {
            return false;
        }
        let record = read_keys_record(
            host,
            keys_record_name(&self.discovery, &self.names).as_deref(),
        );
        let newer = self
            .keys
            .adopt_shared(&record, &mut self.warnings, self.root, now);
        if due && !newer {
            self.keys.checked(now);
            self.fetch_keys(self.root, false, Why::Periodic, now, host);
        }
        waiting && (newer || !record.in_flight(now))
    }
}

/// The shared record named `name` (an empty one when there is none yet).
pub(super) fn read_keys_record(host: &dyn Host, name: Option<&str>) -> KeysRecord {
    name.and_then(|name| host.shared_get(name))
        .and_then(|(bytes, _)| KeysRecord::decode(&bytes))
        .unwrap_or_default()
}

/// Ends this worker's lease on the key set record `name`; `attempt`: the fetch it covered
/// completed (for `why`, sent at the time given) and counts, or `None`: nothing was tried. The
/// body stays.
fn end_keys_lease(host: &dyn Host, name: Option<&str>, attempt: Option<(Why, u64)>) {
    let Some(name) = name else {
        return;
    };
    update(host, name, |bytes| {
        let record = bytes.and_then(KeysRecord::decode).unwrap_or_default();
        let released = record.released();
        Ok(match attempt {
            Some((why, sent_ms)) => released.attempted(why, sent_ms),
            None => released,
        }
        .encode())
    });
}

/// The shared-data name of the key set's record, once its URL is known.
pub(super) fn keys_record_name(discovery: &Discovery, names: &Names) -> Option<String> {
    let path = discovery.endpoints().jwks_path.as_deref()?;
    Some(names.jwks(path))
}
