//! Who may cause an IdP call, and when: the quota guard's pause per endpoint ([`guard`]), the
//! call budget per route and endpoint ([`crate::budget`], with a share only refreshes of
//! known-good credentials may use), the gateway's bound of calls in flight
//! ([`crate::inflight`]), and the per-client-id failure throttle on the Basic path
//! ([`crate::throttle`]). [`Admission`] owns the rules' parameters and the shared-data records
//! they live in: it reads them into [`Facts`] (no writes) for the decision, and takes a budget
//! call, a throttle turn or an in-flight place (compare-and-swap through the slot protocol's
//! [`update`]) only once the decision is made and the request's lease is won.

use super::guard;
use super::slots::{overwrite, update, Update};
use super::Host;
use crate::budget::{route_slots, BudgetConfig, CallClass, RouteBudget, ROUTE_PROBES};
use crate::cache::{CacheEntry, CacheKey, Names, NotWritten};
use crate::config::Config;
use crate::credentials::Credential;
use crate::inflight::InFlight;
use crate::metrics::IdpEndpoint;
use crate::throttle::{self, FailureRecord};

/// What admission says about one more call now, as read from shared data: the decision is a
/// pure function of these and of what the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Facts {
    /// Seconds until the endpoint's pause ends, when the quota guard pauses it.
    pub paused_for_s: Option<u64>,
    /// The route's budget, by call class (`Err`: seconds until it has room).
    budget: [Result<(), u64>; 2],
    /// Whether the gateway has a place among its calls in flight, by call class.
    place: [bool; 2],
    /// The failure throttle for a Basic secret that never had a positive verdict (`Err`:
    /// seconds until its client id's next turn).
    pub throttle: Result<(), u64>,
}

impl Facts {
    pub fn budget(&self, class: CallClass) -> Result<(), u64> {
        self.budget[class_index(class)]
    }

    pub fn place_left(&self, class: CallClass) -> bool {
        self.place[class_index(class)]
    }
}

fn class_index(class: CallClass) -> usize {
    match class {
        CallClass::Refresh => 0,
        CallClass::Unknown => 1,
    }
}

/// The admission rules of one configuration, and where their records are.
#[derive(Debug, Clone)]
pub(super) struct Admission {
    names: Names,
    budget: BudgetConfig,
    /// This route's tag in the table of route budgets: its configuration's.
    route_tag: [u8; 8],
    max_in_flight: usize,
    /// How long a call may be out: its place in flight lasts that long at most.
    call_ms: u64,
    max_client_failures: u32,
    failure_window_ms: u64,
    digest: [u8; 32],
}

impl Admission {
    pub fn new(config: &Config, names: Names, call_ms: u64) -> Admission {
        let mut route_tag = [0u8; 8];
        route_tag.copy_from_slice(&config.digest[..8]);
        Admission {
            names,
            budget: BudgetConfig::new(config.idp_calls_per_minute),
            route_tag,
            max_in_flight: config.max_idp_calls_in_flight,
            call_ms,
            max_client_failures: config.max_client_failures,
            failure_window_ms: config.client_failure_window_ms,
            digest: config.digest,
        }
    }

    /// The facts for a call to `endpoint` about `credential` now: reads, no writes.
    pub fn facts(
        &self,
        endpoint: IdpEndpoint,
        credential: &Credential,
        now: u64,
        host: &dyn Host,
    ) -> Facts {
        let window = self.route_window(endpoint, now, host);
        let budget = [CallClass::Refresh, CallClass::Unknown].map(|class| {
            window
                .try_take(now, class, &self.budget)
                .map(|_| ())
                .map_err(|refused| refused.retry_after_s.max(1))
        });
        let in_flight = self.in_flight(host);
        let place = [CallClass::Refresh, CallClass::Unknown]
            .map(|class| in_flight.has_room(now, self.max_in_flight, class));
        Facts {
            paused_for_s: self.paused_for(endpoint, now, host),
            budget,
            place,
            throttle: self.throttle_turn(credential, now, host, false),
        }
    }

    /// Seconds until calls to `endpoint` may resume, if the quota guard pauses them.
    pub fn paused_for(&self, endpoint: IdpEndpoint, now: u64, host: &dyn Host) -> Option<u64> {
        let until = self.pause_until(endpoint, host);
        guard::is_paused(now, until).then(|| (until - now).div_ceil(1000))
    }

    /// The endpoint's shared pause (0: never paused).
    pub fn pause_until(&self, endpoint: IdpEndpoint, host: &dyn Host) -> u64 {
        host.shared_get(&self.names.guard(endpoint))
            .map_or(0, |(bytes, _)| guard::decode(&bytes))
    }

    /// Pauses calls to `endpoint` for every worker until `until_ms`.
    pub fn pause(&self, endpoint: IdpEndpoint, until_ms: u64, host: &dyn Host) {
        overwrite(host, &self.names.guard(endpoint), &guard::encode(until_ms));
    }

    /// This route's window for `endpoint`: the first of its table slots that is its own,
    /// nobody's or idle (an empty window), else empty.
    fn route_window(
        &self,
        endpoint: IdpEndpoint,
        now: u64,
        host: &dyn Host,
    ) -> crate::budget::Budget {
        route_slots(&self.route_tag)
            .find_map(|slot| {
                let bytes = host.shared_get(&self.names.budget(endpoint, slot));
                let record = bytes
                    .map(|(b, _)| RouteBudget::decode(&b))
                    .unwrap_or_default();
                record.window_for(&self.route_tag, now)
            })
            .unwrap_or_default()
    }

    /// Takes one call of `class` from this route's budget for `endpoint`; `Err(seconds)` when
    /// there is none. The route's record is the first of its table slots that is its own,
    /// nobody's or idle; should all be other routes' (a table crowded at that spot), the first
    /// is shared.
    pub fn take_budget(
        &self,
        endpoint: IdpEndpoint,
        class: CallClass,
        now: u64,
        host: &dyn Host,
    ) -> Result<(), u64> {
        let tag = self.route_tag;
        let mut retry_after_s = 1;
        for (probe, slot) in route_slots(&tag).enumerate() {
            let shared = probe + 1 == ROUTE_PROBES as usize;
            let mut outcome = Admitted::Busy;
            let written = update(host, &self.names.budget(endpoint, slot), |bytes| {
                let record = bytes.map(RouteBudget::decode).unwrap_or_default();
                let (owner, window) = match record.window_for(&tag, now) {
                    Some(window) => (tag, window),
                    None if shared => (record.owner, record.budget),
                    None => {
                        outcome = Admitted::Busy;
                        return Err(NotWritten::Declined);
                    }
                };
                match window.try_take(now, class, &self.budget) {
                    Ok(next) => {
                        outcome = Admitted::Yes;
                        Ok(RouteBudget {
                            owner,
                            budget: next,
                        }
                        .encode())
                    }
                    Err(refused) => {
                        outcome = Admitted::No;
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
                Admitted::Yes if written == Update::Written => return Ok(()),
                Admitted::Busy => continue,
                _ => return Err(retry_after_s),
            }
        }
        Err(retry_after_s)
    }

    /// Takes what a call needs once the request's lease is won: the budget's call, then, for an
    /// unknown credential, the failure throttle's turn (so that a budget refusal spends no turn).
    /// `Err((seconds, why))`: no call, come back in that many seconds; `why` is for the log when
    /// it is worth a warning (a spent budget; a throttled client id is no news).
    pub fn take_call(
        &self,
        endpoint: IdpEndpoint,
        class: CallClass,
        credential: &Credential,
        now: u64,
        host: &dyn Host,
    ) -> Result<(), (u64, Option<&'static str>)> {
        let budget = "call budget spent (idp_calls_per_minute): no call";
        self.take_budget(endpoint, class, now, host)
            .map_err(|seconds| (seconds, Some(budget)))?;
        if class == CallClass::Unknown {
            self.throttle_turn(credential, now, host, true)
                .map_err(|seconds| (seconds, None))?;
        }
        Ok(())
    }

    /// The failure throttle, for a Basic credential about to go to Okta: `Err(seconds)` when
    /// its client id had `max_client_failures` `invalid_client` answers within the window and
    /// this is not its turn (one unverified secret per `window / max_client_failures` still
    /// goes through, so a live app whose cached verdict is gone is not locked out). `take`:
    /// whether to take the turn (after the request's lease is won), or only look.
    pub fn throttle_turn(
        &self,
        credential: &Credential,
        now: u64,
        host: &dyn Host,
        take: bool,
    ) -> Result<(), u64> {
        let Credential::Basic(client) = credential else {
            return Ok(());
        };
        let max = self.max_client_failures;
        if max == 0 {
            return Ok(());
        }
        let window = self.failure_window_ms;
        let interval = (window / u64::from(max)).max(1_000);
        let mut wait_ms = None;
        update(host, &self.throttle_name(&client.client_id), |bytes| {
            let record = bytes.map(FailureRecord::decode).unwrap_or_default();
            wait_ms = None;
            if !throttle::refuses(&record, now, max, window) {
                return Err(NotWritten::Declined);
            }
            match throttle::probe(&record, now, interval) {
                Ok(turn) if take => Ok(turn.encode().to_vec()),
                Ok(_) => Err(NotWritten::Declined),
                Err(ms) => {
                    wait_ms = Some(ms);
                    Err(NotWritten::Declined)
                }
            }
        });
        wait_ms.map_or(Ok(()), |ms| Err(ms.div_ceil(1000).max(1)))
    }

    /// Counts an `invalid_client` answer against its client id.
    pub fn note_client_failure(&self, credential: &Credential, now: u64, host: &dyn Host) {
        let Credential::Basic(client) = credential else {
            return;
        };
        if self.max_client_failures == 0 {
            return;
        }
        let window = self.failure_window_ms;
        update(host, &self.throttle_name(&client.client_id), |bytes| {
            let record = bytes.map(FailureRecord::decode).unwrap_or_default();
            Ok(throttle::note_failure(record, now, window)
                .encode()
                .to_vec())
        });
    }

    fn throttle_name(&self, client_id: &str) -> String {
        let client = throttle::client_key(&self.digest, client_id);
        self.names
            .throttle(throttle::slot_of(&client, throttle::SLOTS))
    }

    /// Whether the gateway has room for one more call to this Okta org for a caller of
    /// `class` (a look: [`Admission::take_call_place`] takes it).
    pub fn call_place_left(&self, class: CallClass, now: u64, host: &dyn Host) -> bool {
        self.in_flight(host)
            .has_room(now, self.max_in_flight, class)
    }

    /// Holds every configuration of the org to this one's bound, if it is the smallest in force
    /// (see [`crate::inflight::CAP_MEMORY_MS`]).
    pub fn announce_bound(&self, now: u64, host: &dyn Host) {
        update(host, &self.names.in_flight(), |bytes| {
            let record = bytes.map(InFlight::decode).unwrap_or_default();
            record
                .announced(self.max_in_flight, now)
                .map(|r| r.encode())
                .ok_or(NotWritten::Declined)
        });
    }

    fn in_flight(&self, host: &dyn Host) -> InFlight {
        host.shared_get(&self.names.in_flight())
            .map(|(bytes, _)| InFlight::decode(&bytes))
            .unwrap_or_default()
    }

    /// Takes a place among the gateway's calls in flight to this Okta org, until the call's
    /// deadline; `None` when there is none for this caller.
    pub fn take_call_place(&self, class: CallClass, now: u64, host: &dyn Host) -> Option<u64> {
        let until = now + self.call_ms;
        let cap = self.max_in_flight;
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
    pub fn give_back_call_place(&self, until: u64, now: u64, host: &dyn Host) {
        update(host, &self.names.in_flight(), |bytes| {
            let record = bytes.map(InFlight::decode).unwrap_or_default();
            Ok(record.release(until, now).encode())
        });
    }
}

/// What a route budget's record said to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    Yes,
    No,
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
