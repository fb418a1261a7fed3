//! The quota guard's rules, one guard per IdP endpoint (`metrics::IdpEndpoint`): when Okta
//! says "too many requests", or keeps failing, every worker stops calling that endpoint for a
//! while. This module owns the rules only: how a failed call moves a worker's count of failures
//! in a row for the endpoint and the endpoint's shared "paused until" time. The caller keeps that
//! time in one shared-data record per endpoint ([`encode`]/[`decode`], `cache::Names::guard`)
//! and raises it with compare-and-swap.
//!
//! The rules live in one pure function ([`pause_until`]) that also keeps the count, with a
//! worker's state in [`EndpointHealth`], plus:
//! - one place, [`classify`], says which failures are Okta's trouble; an answer the local proxy
//!   made itself for its own reasons ([`IdpFailure::Local`]: circuit breaker overflow, no
//!   healthy host) is not: it neither counts toward a pause nor resets the count. A connection
//!   to Okta that failed is Okta out of reach, and counts;
//! - a pause further ahead than any pause the guard sets ([`MAX_PAUSE_MS`]) was written before
//!   the clock went back and is not trusted ([`is_paused`]), so a clock jump cannot switch an
//!   endpoint off for longer than Okta asked.
//!
//! The rules:
//! - a 429 pauses until Okta's `X-Rate-Limit-Reset` (or `Retry-After`), at least
//!   [`RATE_LIMIT_MIN_PAUSE_MS`] from now; without a usable time, [`RATE_LIMIT_DEFAULT_PAUSE_MS`];
//! - [`FAILURES_BEFORE_PAUSE`] server errors or silences in a row pause for
//!   [`FAILURE_PAUSE_MS`], doubling with every further one up to [`FAILURE_MAX_PAUSE_MS`];
//! - calls that were already out when a pause began fail together: while paused, a server error
//!   or silence neither counts nor lengthens the pause;
//! - a pause is only ever raised, never shortened, by a failure;
//! - a silence of a call sent before the endpoint's last positive answer, or before the proxy's
//!   last overflow for it, is explained ([`silence_explained`]).

use crate::metrics::IdpEndpoint;
use crate::okta::{IdpFailure, LocalCause};

/// After a 429 without a usable reset time, calls pause this long.
pub const RATE_LIMIT_DEFAULT_PAUSE_MS: u64 = 2_000;
/// With a reset time, at least this long (a reset already past means our clock and Okta's
/// disagree).
pub const RATE_LIMIT_MIN_PAUSE_MS: u64 = 1_000;
/// This many server errors or silences in a row pause calls...
pub const FAILURES_BEFORE_PAUSE: u32 = 3;
/// ...for this long, doubling while they go on...
pub const FAILURE_PAUSE_MS: u64 = 1_000;
/// ...up to this.
pub const FAILURE_MAX_PAUSE_MS: u64 = 10_000;
/// No pause is ever longer than this (Okta's reset is read with the same bound), so a record
/// further ahead than this was written before the clock went back and is not trusted.
pub const MAX_PAUSE_MS: u64 = 3_600_000 + RATE_LIMIT_MIN_PAUSE_MS;

/// How a failed call counts toward the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Okta asked us to slow down (429).
    RateLimited { until_s: Option<u64> },
    /// Okta failed or did not answer (5xx, silence, reset): counts toward a pause.
    Outage,
    /// Not a sign of Okta's load: the proxy's own answers, and answers that are Okta's but say
    /// nothing about its health (unexpected status, unreadable body, the gateway's own client
    /// refused). Neither counts nor resets the failures in a row.
    Ignored,
}

/// Where a failure falls. The one place that says which failures are Okta's trouble.
pub fn classify(failure: IdpFailure) -> FailureClass {
    match failure {
        IdpFailure::RateLimited { until_s } => FailureClass::RateLimited { until_s },
        // A connection to Okta that failed or was reset is Okta out of reach: it counts, or an
        // outage of that kind would spend the whole call budget (the refresh reserve included)
        // in seconds, and starve known clients for a minute after Okta is back.
        IdpFailure::ServerError(_)
        | IdpFailure::NoAnswer
        | IdpFailure::Local(LocalCause::ConnectFailure) => FailureClass::Outage,
        IdpFailure::Local(LocalCause::Overloaded | LocalCause::NoHealthyUpstream)
        | IdpFailure::UnexpectedStatus(_)
        | IdpFailure::Unreadable
        | IdpFailure::GatewayRejected => FailureClass::Ignored,
    }
}

/// Whether a silence (no answer, or a 504: Envoy's own timeout) says nothing about Okta: since
/// the silent call was sent, this worker saw either a positive answer from the endpoint (a grant,
/// an active token, a key set: Okta was answering, and no anonymous client can cause one) or the
/// proxy's own refusal of a call to it (an overflow answer, or a call it would not send: its
/// queue for the IdP was full, so calls were held up on the gateway's side, behind the
/// cluster's circuit breaker, which the shipped sizing never lets the filter's cap reach). Such a failure neither counts
/// toward a pause nor resets the count. A refusal (`invalid_client`, an inactive token) does not
/// explain a silence: anyone can have one made at will.
pub fn silence_explained(failure: IdpFailure, sent_ms: u64, last_explained_ms: u64) -> bool {
    matches!(failure, IdpFailure::NoAnswer | IdpFailure::ServerError(504))
        && last_explained_ms >= sent_ms
        && last_explained_ms > 0
}

/// A refusal (`invalid_client`, an inactive token) ends a run of failures only when the last
/// one is this old (`Gate::heard_from`): anyone can have refusals made at will.
pub const OUTAGE_MEMORY_MS: u64 = 30_000;

/// What one failed call changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// This worker's count of failures in a row for the endpoint, after this one. A verdict
    /// (any answer that decides a credential) resets it to 0.
    pub failures_in_a_row: u32,
    /// Raise the endpoint's shared pause to this time (ms since epoch); `None`: leave it as it
    /// is. Only ever later than the pause the caller passed in.
    pub pause_until_ms: Option<u64>,
}

/// The guard's decision on one failed call to an endpoint. `current_pause_until_ms` is what the
/// endpoint's shared record holds (0: never paused), `failures_in_a_row` this worker's count
/// for the endpoint before this failure.
pub fn pause_until(
    failure: IdpFailure,
    now_ms: u64,
    current_pause_until_ms: u64,
    failures_in_a_row: u32,
) -> Decision {
    let current = trusted(now_ms, current_pause_until_ms);
    let unchanged = Decision {
        failures_in_a_row,
        pause_until_ms: None,
    };
    let (failures_in_a_row, until) = match classify(failure) {
        FailureClass::Ignored => return unchanged,
        FailureClass::RateLimited { until_s: Some(s) } => (
            failures_in_a_row,
            s.saturating_mul(1000)
                .max(now_ms.saturating_add(RATE_LIMIT_MIN_PAUSE_MS)),
        ),
        FailureClass::RateLimited { until_s: None } => (
            failures_in_a_row,
            now_ms.saturating_add(RATE_LIMIT_DEFAULT_PAUSE_MS),
        ),
        // Calls already out when a pause began fail together: they do not make it longer.
        FailureClass::Outage if current > now_ms => return unchanged,
        FailureClass::Outage => {
            let failures = failures_in_a_row.saturating_add(1);
            if failures < FAILURES_BEFORE_PAUSE {
                return Decision {
                    failures_in_a_row: failures,
                    pause_until_ms: None,
                };
            }
            let doublings = (failures - FAILURES_BEFORE_PAUSE).min(4);
            let pause = (FAILURE_PAUSE_MS << doublings).min(FAILURE_MAX_PAUSE_MS);
            (failures, now_ms.saturating_add(pause))
        }
    };
    let until = until.min(now_ms.saturating_add(MAX_PAUSE_MS));
    Decision {
        failures_in_a_row,
        pause_until_ms: (until > current).then_some(until),
    }
}

/// Whether calls to the endpoint are paused now, given its shared record.
pub fn is_paused(now_ms: u64, pause_until_ms: u64) -> bool {
    trusted(now_ms, pause_until_ms) > now_ms
}

/// The pause as far as it can be believed: one further ahead than any pause the guard sets
/// was written before the clock went back, and counts as none.
fn trusted(now_ms: u64, pause_until_ms: u64) -> u64 {
    if pause_until_ms > now_ms.saturating_add(MAX_PAUSE_MS) {
        0
    } else {
        pause_until_ms
    }
}

/// The shared record: "paused until", ms since epoch, little-endian (as today's guard key).
pub fn encode(pause_until_ms: u64) -> [u8; 8] {
    pause_until_ms.to_le_bytes()
}

/// Anything but 8 bytes reads as "not paused".
pub fn decode(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_le_bytes)
}

/// One worker's view of each endpoint's health, which the shared pause is decided from: its
/// failures in a row, when a silence of it is explained, and when it last counted an outage.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    failures_in_a_row: [u32; IdpEndpoint::COUNT],
    /// When this worker last had a positive answer from each endpoint, or the proxy's own
    /// refusal or overflow answer for it (see [`silence_explained`]).
    silence_explained_ms: [u64; IdpEndpoint::COUNT],
    /// When this worker last counted a failure of each endpoint toward a pause.
    last_outage_ms: [u64; IdpEndpoint::COUNT],
}

impl EndpointHealth {
    #[cfg(test)]
    pub fn failures_in_a_row(&self) -> [u32; IdpEndpoint::COUNT] {
        self.failures_in_a_row
    }

    /// The proxy itself refused or overflowed a call to `endpoint`: calls queued behind it may
    /// time out without Okta being at fault.
    pub fn proxy_refused(&mut self, endpoint: IdpEndpoint, now_ms: u64) {
        self.silence_explained_ms[endpoint.index()] = now_ms;
    }

    /// A verdict from `endpoint`. A positive one resets its failures in a row and explains the
    /// silences of calls sent before it; a refusal resets them only once the last failure is
    /// [`OUTAGE_MEMORY_MS`] old, so that an anonymous client's 401s, had at will between the
    /// silences of a half-hanging Okta, cannot keep the guard from counting them.
    pub fn heard_from(&mut self, endpoint: IdpEndpoint, positive: bool, now_ms: u64) {
        let i = endpoint.index();
        if positive || now_ms.saturating_sub(self.last_outage_ms[i]) > OUTAGE_MEMORY_MS {
            self.failures_in_a_row[i] = 0;
        }
        if positive {
            self.silence_explained_ms[i] = now_ms;
        }
    }

    /// A call to `endpoint` sent at `sent_ms` failed: until when the endpoint's shared pause
    /// must be raised (`current_pause_until_ms` is what it holds), if at all. Answers the proxy
    /// made itself (overflow, no healthy host) are not Okta's and change nothing.
    pub fn note_failure(
        &mut self,
        endpoint: IdpEndpoint,
        failure: IdpFailure,
        sent_ms: u64,
        current_pause_until_ms: u64,
        now_ms: u64,
    ) -> Option<u64> {
        let i = endpoint.index();
        if failure == IdpFailure::Local(LocalCause::Overloaded) {
            self.silence_explained_ms[i] = now_ms;
        }
        if silence_explained(failure, sent_ms, self.silence_explained_ms[i]) {
            return None;
        }
        let in_a_row = self.failures_in_a_row[i];
        let decision = pause_until(failure, now_ms, current_pause_until_ms, in_a_row);
        if decision.failures_in_a_row > in_a_row {
            self.last_outage_ms[i] = now_ms;
        }
        self.failures_in_a_row[i] = decision.failures_in_a_row;
        decision.pause_until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn decide(failure: IdpFailure, current: u64, in_a_row: u32) -> Decision {
        pause_until(failure, NOW, current, in_a_row)
    }

    fn pause(until: u64, in_a_row: u32) -> Decision {
        Decision {
            failures_in_a_row: in_a_row,
            pause_until_ms: Some(until),
        }
    }

    fn none(in_a_row: u32) -> Decision {
        Decision {
            failures_in_a_row: in_a_row,
            pause_until_ms: None,
        }
    }

    #[test]
    fn a_silence_is_explained_only_by_a_verdict_after_the_call_was_sent() {
        let sent = NOW - 3_000;
        for silence in [IdpFailure::NoAnswer, IdpFailure::ServerError(504)] {
            assert!(silence_explained(silence, sent, sent + 1));
            assert!(silence_explained(silence, sent, sent));
            assert!(!silence_explained(silence, sent, sent - 1));
            assert!(!silence_explained(silence, 0, 0));
        }
        for other in [
            IdpFailure::ServerError(500),
            IdpFailure::RateLimited { until_s: None },
        ] {
            assert!(!silence_explained(other, sent, NOW));
        }
    }

    #[test]
    fn a_429_pauses_until_okta_resets_at_least_the_minimum() {
        let at = |s: u64| IdpFailure::RateLimited { until_s: Some(s) };
        assert_eq!(decide(at(NOW / 1000 + 30), 0, 0), pause(NOW + 30_000, 0));
        // a reset already past: our clock and Okta's disagree
        assert_eq!(
            decide(at(NOW / 1000 - 5), 0, 1),
            pause(NOW + RATE_LIMIT_MIN_PAUSE_MS, 1)
        );
        assert_eq!(
            decide(IdpFailure::RateLimited { until_s: None }, 0, 2),
            pause(NOW + RATE_LIMIT_DEFAULT_PAUSE_MS, 2)
        );
        // a later 429 lengthens a pause, an earlier one leaves it
        assert_eq!(
            decide(at(NOW / 1000 + 30), NOW + 10_000, 0),
            pause(NOW + 30_000, 0)
        );
        assert_eq!(decide(at(NOW / 1000 + 5), NOW + 10_000, 0), none(0));
        // even a wild reset is bounded
        assert_eq!(decide(at(u64::MAX), 0, 0), pause(NOW + MAX_PAUSE_MS, 0));
    }

    #[test]
    fn failures_in_a_row_pause_from_the_third_doubling_to_the_maximum() {
        let fail = IdpFailure::ServerError(500);
        assert_eq!(decide(fail, 0, 0), none(1));
        assert_eq!(decide(IdpFailure::NoAnswer, 0, 1), none(2));
        let expected = [1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000];
        for (i, ms) in expected.iter().enumerate() {
            let before = FAILURES_BEFORE_PAUSE - 1 + i as u32;
            assert_eq!(decide(fail, 0, before), pause(NOW + ms, before + 1), "{i}");
        }
        assert_eq!(decide(fail, 0, u32::MAX), pause(NOW + 10_000, u32::MAX));
    }

    #[test]
    fn calls_already_out_when_a_pause_began_do_not_lengthen_it() {
        for failure in [IdpFailure::ServerError(503), IdpFailure::NoAnswer] {
            assert_eq!(decide(failure, NOW + 1, 7), none(7));
        }
        // a pause that has ended is no pause
        assert_eq!(
            decide(IdpFailure::NoAnswer, NOW, 2),
            pause(NOW + FAILURE_PAUSE_MS, 3)
        );
    }

    #[test]
    fn connections_to_okta_that_fail_count_like_silences() {
        let reset = IdpFailure::Local(LocalCause::ConnectFailure);
        assert_eq!(classify(reset), FailureClass::Outage);
        assert_eq!(decide(reset, 0, 0), none(1));
        assert_eq!(decide(reset, 0, 2), pause(NOW + FAILURE_PAUSE_MS, 3));
    }

    #[test]
    fn the_proxys_own_answers_and_non_health_failures_change_nothing() {
        for failure in [
            IdpFailure::Local(LocalCause::Overloaded),
            IdpFailure::Local(LocalCause::NoHealthyUpstream),
            IdpFailure::UnexpectedStatus(400),
            IdpFailure::Unreadable,
            IdpFailure::GatewayRejected,
        ] {
            assert_eq!(classify(failure), FailureClass::Ignored, "{failure:?}");
            for in_a_row in [0, 2, 9] {
                assert_eq!(decide(failure, 0, in_a_row), none(in_a_row), "{failure:?}");
            }
        }
        // a thousand overflows in a flood never pause; the next real failures count from
        // where they were
        let mut in_a_row = 0;
        for _ in 0..1_000 {
            let d = decide(IdpFailure::Local(LocalCause::Overloaded), 0, in_a_row);
            assert_eq!(d.pause_until_ms, None);
            in_a_row = d.failures_in_a_row;
        }
        assert_eq!(in_a_row, 0);
    }

    #[test]
    fn a_pause_written_before_the_clock_went_back_is_not_trusted() {
        assert!(is_paused(NOW, NOW + 1));
        assert!(!is_paused(NOW, NOW));
        assert!(!is_paused(NOW, 0));
        assert!(is_paused(NOW, NOW + MAX_PAUSE_MS));
        assert!(!is_paused(NOW, NOW + MAX_PAUSE_MS + 1));
        // and it does not hold back a real pause either
        assert_eq!(
            decide(IdpFailure::NoAnswer, NOW + 2 * MAX_PAUSE_MS, 2),
            pause(NOW + FAILURE_PAUSE_MS, 3)
        );
    }

    #[test]
    fn records_round_trip_and_garbage_is_no_pause() {
        assert_eq!(decode(&encode(NOW)), NOW);
        assert_eq!(decode(b""), 0);
        assert_eq!(decode(b"\0"), 0);
        assert_eq!(decode(&[1; 9]), 0);
    }
}
