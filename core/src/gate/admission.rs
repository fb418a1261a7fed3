//! Who may cause an IdP call, and when: the quota guard's pause per endpoint ([`guard`]), the
//! call budget per endpoint shared by all workers ([`crate::budget`], with a share only
//! refreshes of known-good credentials may use), and the per-client-id failure throttle on the
//! Basic path ([`crate::throttle`]). Each is one small shared-data record read (and, for a
//! call, written with compare-and-swap) through the slot protocol's [`update`].

use super::guard;
use super::slots::{overwrite, update, Update};
use super::{Gate, Host, Sent};
use crate::budget::{route_slots, BudgetConfig, CallClass, RouteBudget, ROUTE_PROBES};
use crate::cache::{CacheEntry, CacheKey, NotWritten};
use crate::credentials::Credential;
use crate::inflight::{cap_for, InFlight};
use crate::metrics::IdpEndpoint;
use crate::okta::{IdpFailure, LocalCause};
use crate::throttle::{self, FailureRecord};

impl Gate {
    /// Seconds until calls to `endpoint` may resume, if the quota guard pauses them.
    pub(super) fn paused_for(
        &self,
        endpoint: IdpEndpoint,
        now: u64,
        host: &dyn Host,
    ) -> Option<u64> {
        let until = host
            .shared_get(&self.names.guard(endpoint))
            .map_or(0, |(bytes, _)| guard::decode(&bytes));
        guard::is_paused(now, until).then(|| (until - now).div_ceil(1000))
    }

    /// A failed call may pause its endpoint for every worker: a 429 until Okta's reset,
    /// repeated 5xx or silence briefly, longer while it goes on. Answers the proxy made itself
    /// (overflow, no healthy host) are not Okta's and change nothing.
    pub(super) fn note_failure(
        &mut self,
        failure: IdpFailure,
        sent: Sent,
        now: u64,
        host: &dyn Host,
    ) {
        let endpoint = sent.endpoint;
        if failure == IdpFailure::Local(LocalCause::Overloaded) {
            self.silence_explained_ms[endpoint.index()] = now;
        }
        let explained = self.silence_explained_ms[endpoint.index()];
        if guard::silence_explained(failure, sent.at_ms, explained) {
            return;
        }
        let name = self.names.guard(endpoint);
        let current = host
            .shared_get(&name)
            .map_or(0, |(bytes, _)| guard::decode(&bytes));
        let in_a_row = &mut self.failures_in_a_row[endpoint.index()];
        let decision = guard::pause_until(failure, now, current, *in_a_row);
        if decision.failures_in_a_row > *in_a_row {
            self.last_outage_ms[endpoint.index()] = now;
        }
        *in_a_row = decision.failures_in_a_row;
        if let Some(until) = decision.pause_until_ms {
            // A line of its own, not folded into the rate-limited failure warnings: operators
            // need to see a pause, and there is at most one per pause.
            log::warn!(
                "[{}] pausing {} calls for {} ms: {}",
                self.root,
                endpoint.name(),
                until - now,
                failure.describe()
            );
            overwrite(host, &name, &guard::encode(until));
        }
    }

    /// A verdict from `endpoint`. A positive one resets its failures in a row and explains the
    /// silences of calls sent before it (`guard::silence_explained`); a refusal resets them only
    /// once the last failure is `guard::OUTAGE_MEMORY_MS` old, so that an anonymous client's
    /// 401s, had at will between the silences of a half-hanging Okta, cannot keep the guard from
    /// counting them.
    pub(super) fn heard_from(&mut self, endpoint: IdpEndpoint, positive: bool, now: u64) {
        let i = endpoint.index();
        if positive || now.saturating_sub(self.last_outage_ms[i]) > guard::OUTAGE_MEMORY_MS {
            self.failures_in_a_row[i] = 0;
        }
        if positive {
            self.silence_explained_ms[i] = now;
        }
    }

    /// This route's tag in the table of route budgets: its configuration's.
    fn route_tag(&self) -> [u8; 8] {
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&self.config.digest[..8]);
        tag
    }

    /// Whether this route's budget for `endpoint` has a call left for this caller now
    /// (nothing is taken): checked before a lease is written, so that a flood past the budget
    /// churns no cache set.
    pub(super) fn budget_left(
        &self,
        endpoint: IdpEndpoint,
        key: &CacheKey,
        seen: &CacheEntry,
        now: u64,
        host: &dyn Host,
    ) -> Result<(), u64> {
        let class = call_class(key, seen, now);
        let limit = BudgetConfig::new(self.config.idp_calls_per_minute);
        let tag = self.route_tag();
        let window = route_slots(&tag)
            .find_map(|slot| {
                let bytes = host.shared_get(&self.names.budget(endpoint, slot));
                let record = bytes
                    .map(|(b, _)| RouteBudget::decode(&b))
                    .unwrap_or_default();
                record.window_for(&tag, now)
            })
            .unwrap_or_default();
        window
            .try_take(now, class, &limit)
            .map(|_| ())
            .map_err(|refused| refused.retry_after_s.max(1))
    }

    /// Takes one call from this route's budget for `endpoint`; `Err(seconds)` when there is
    /// none for this caller: a credential whose entry held a positive verdict (a refresh) may
    /// use the reserved share, any other only the rest. The route's record is the first of its
    /// table slots that is its own, nobody's or idle; should all be other routes' (a table
    /// crowded at that spot), the first is shared.
    pub(super) fn take_budget(
        &self,
        endpoint: IdpEndpoint,
        key: &CacheKey,
        seen: &CacheEntry,
        now: u64,
        host: &dyn Host,
    ) -> Result<(), u64> {
        let class = call_class(key, seen, now);
        let limit = BudgetConfig::new(self.config.idp_calls_per_minute);
        let tag = self.route_tag();
        let mut retry_after_s = 1;
        for (probe, slot) in route_slots(&tag).enumerate() {
            let shared = probe + 1 == ROUTE_PROBES as usize;
            let mut outcome = Admission::Busy;
            let written = update(host, &self.names.budget(endpoint, slot), |bytes| {
                let record = bytes.map(RouteBudget::decode).unwrap_or_default();
                let (owner, window) = match record.window_for(&tag, now) {
                    Some(window) => (tag, window),
                    None if shared => (record.owner, record.budget),
                    None => {
                        outcome = Admission::Busy;
                        return Err(NotWritten::Declined);
                    }
                };
                match window.try_take(now, class, &limit) {
                    Ok(next) => {
                        outcome = Admission::Admitted;
                        Ok(RouteBudget {
                            owner,
                            budget: next,
                        }
                        .encode())
                    }
                    Err(refused) => {
                        outcome = Admission::Refused;
                        retry_after_s = refused.retry_after_s.max(1);
                        // The clock went back: the re-anchored window is written all the same.
                        let reanchored = refused
                            .write_back
                            .map(|b| RouteBudget { owner, budget: *b });
                        reanchored.map(|r| r.encode()).ok_or(NotWritten::Declined)
                    }
                }
            });
            match outcome {
                Admission::Admitted if written == Update::Written => return Ok(()),
                Admission::Busy => continue,
                _ => return Err(retry_after_s),
            }
        }
        Err(retry_after_s)
    }

    /// The failure throttle, for a Basic credential about to go to Okta: `Err(seconds)` when
    /// its client id had `max_client_failures` `invalid_client` answers within the window and
    /// this is not its turn (one unverified secret per `window / max_client_failures` still
    /// goes through, so a live app whose cached verdict is gone is not locked out). A secret
    /// that had a positive verdict is never held back.
    pub(super) fn throttle_turn(
        &self,
        credential: &Credential,
        key: &CacheKey,
        seen: &CacheEntry,
        now: u64,
        host: &dyn Host,
    ) -> Result<(), u64> {
        let Credential::Basic(client) = credential else {
            return Ok(());
        };
        let max = self.config.max_client_failures;
        if max == 0 || seen.had_positive_verdict(key, now) {
            return Ok(());
        }
        let window = self.config.client_failure_window_ms;
        let interval = (window / u64::from(max)).max(1_000);
        let mut wait_ms = None;
        update(host, &self.throttle_name(&client.client_id), |bytes| {
            let record = bytes.map(FailureRecord::decode).unwrap_or_default();
            wait_ms = None;
            if !throttle::refuses(&record, now, max, window) {
                return Err(NotWritten::Declined);
            }
            match throttle::probe(&record, now, interval) {
                Ok(turn) => Ok(turn.encode().to_vec()),
                Err(ms) => {
                    wait_ms = Some(ms);
                    Err(NotWritten::Declined)
                }
            }
        });
        wait_ms.map_or(Ok(()), |ms| Err(ms.div_ceil(1000).max(1)))
    }

    /// Counts an `invalid_client` answer against its client id.
    pub(super) fn note_client_failure(&self, credential: &Credential, now: u64, host: &dyn Host) {
        let Credential::Basic(client) = credential else {
            return;
        };
        if self.config.max_client_failures == 0 {
            return;
        }
        let window = self.config.client_failure_window_ms;
        update(host, &self.throttle_name(&client.client_id), |bytes| {
            let record = bytes.map(FailureRecord::decode).unwrap_or_default();
            Ok(throttle::note_failure(record, now, window)
                .encode()
                .to_vec())
        });
    }

    fn throttle_name(&self, client_id: &str) -> String {
        let client = throttle::client_key(&self.config.digest, client_id);
        self.names
            .throttle(throttle::slot_of(&client, throttle::SLOTS))
    }
}

impl Gate {
    /// Whether the gateway has room for one more call to this Okta org for this caller (a
    /// peek: [`Gate::take_call_place`] takes it).
    pub(super) fn call_place_left(&self, class: CallClass, now: u64, host: &dyn Host) -> bool {
        let cap = self.config.max_idp_calls_in_flight;
        let live = host
            .shared_get(&self.names.in_flight())
            .map_or(0, |(bytes, _)| InFlight::decode(&bytes).live(now));
        live < cap_for(cap, class)
    }

    /// Takes a place among the gateway's calls in flight to this Okta org, until the call's
    /// deadline; `None` when there is none for this caller.
    pub(super) fn take_call_place(
        &self,
        class: CallClass,
        now: u64,
        host: &dyn Host,
    ) -> Option<u64> {
        let cap = self.config.max_idp_calls_in_flight;
        let until = now + self.lease_ms();
        let written = update(host, &self.names.in_flight(), |bytes| {
            let record = bytes.map(InFlight::decode).unwrap_or_default();
            record
                .try_take(now, until, cap, class)
                .map(|r| r.encode())
                .ok_or(NotWritten::Declined)
        });
        (written == Update::Written).then_some(until)
    }

    /// A call's answer came back: its place is free.
    pub(super) fn give_back_call_place(&self, until: u64, now: u64, host: &dyn Host) {
        update(host, &self.names.in_flight(), |bytes| {
            let record = bytes.map(InFlight::decode).unwrap_or_default();
            Ok(record.release(until, now).encode())
        });
    }
}

/// What a route budget's record said to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admitted,
    Refused,
    /// Another route's record: try the next.
    Busy,
}

/// A call for a credential whose entry held a positive verdict is a refresh: it may use the
/// budget's reserved share and the whole in-flight bound.
pub(super) fn call_class(key: &CacheKey, seen: &CacheEntry, now: u64) -> CallClass {
    if seen.had_positive_verdict(key, now) {
        CallClass::Refresh
    } else {
        CallClass::Unknown
    }
}
