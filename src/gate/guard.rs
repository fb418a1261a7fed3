//! The quota guard: when Okta says "too many" (429) or keeps failing, every worker stops
//! calling it for a while. The decision is the pure [`pause_until`]; the pause itself is one
//! shared-data record (until when, ms since the epoch) that the gate reads before each call.

use crate::okta::IdpFailure;

/// After a 429 without a usable reset time, calls pause this long; with one, at least the
/// minimum (a reset already past means our clock and Okta's disagree).
pub const RATE_LIMIT_DEFAULT_PAUSE_MS: u64 = 2_000;
const RATE_LIMIT_MIN_PAUSE_MS: u64 = 1_000;
/// This many failures in a row (5xx, no answer) pause calls, from `FAILURE_PAUSE_MS` doubling
/// up to `FAILURE_MAX_PAUSE_MS` while they go on.
pub const FAILURES_BEFORE_PAUSE: u32 = 3;
pub const FAILURE_PAUSE_MS: u64 = 1_000;
const FAILURE_MAX_PAUSE_MS: u64 = 10_000;

/// Until when calls should pause after `failure` at `now_ms`, given the pause in force
/// (`current_until_ms`, 0 for none) and how many failures in a row this worker has seen
/// including this one. `None`: no new pause (or not a longer one).
pub fn pause_until(
    failure: IdpFailure,
    now_ms: u64,
    current_until_ms: u64,
    failures_in_a_row: u32,
) -> Option<u64> {
    let until = match failure {
        IdpFailure::RateLimited { until_s: Some(s) } => {
            s.saturating_mul(1000).max(now_ms + RATE_LIMIT_MIN_PAUSE_MS)
        }
        IdpFailure::RateLimited { until_s: None } => now_ms + RATE_LIMIT_DEFAULT_PAUSE_MS,
        // Calls already out when a pause began fail together: they do not make it longer.
        IdpFailure::ServerError(_) | IdpFailure::NoAnswer if current_until_ms > now_ms => {
            return None
        }
        IdpFailure::ServerError(_) | IdpFailure::NoAnswer => {
            if failures_in_a_row < FAILURES_BEFORE_PAUSE {
                return None;
            }
            let doublings = (failures_in_a_row - FAILURES_BEFORE_PAUSE).min(4);
            now_ms + (FAILURE_PAUSE_MS << doublings).min(FAILURE_MAX_PAUSE_MS)
        }
        _ => return None,
    };
    (until > current_until_ms).then_some(until)
}

/// Whether `failure` counts toward the failures in a row that pause calls.
pub fn counts_as_trouble(failure: IdpFailure) -> bool {
    matches!(failure, IdpFailure::ServerError(_) | IdpFailure::NoAnswer)
}

/// The shared record: until when (ms since the epoch) no worker calls the IdP.
pub fn decode(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_le_bytes)
}

pub fn encode(until_ms: u64) -> [u8; 8] {
    until_ms.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn rate_limit_pauses_until_okta_reset_but_at_least_a_second() {
        let reset_s = NOW / 1000 + 30;
        assert_eq!(
            pause_until(
                IdpFailure::RateLimited {
                    until_s: Some(reset_s)
                },
                NOW,
                0,
                1
            ),
            Some(reset_s * 1000)
        );
        // a reset in the past: our clock and Okta's disagree
        assert_eq!(
            pause_until(IdpFailure::RateLimited { until_s: Some(1) }, NOW, 0, 1),
            Some(NOW + 1_000)
        );
        assert_eq!(
            pause_until(IdpFailure::RateLimited { until_s: None }, NOW, 0, 1),
            Some(NOW + 2_000)
        );
        // never shortens a longer pause in force
        assert_eq!(
            pause_until(
                IdpFailure::RateLimited { until_s: None },
                NOW,
                NOW + 60_000,
                1
            ),
            None
        );
    }

    #[test]
    fn repeated_failures_pause_briefly_then_longer_up_to_a_cap() {
        let f = IdpFailure::ServerError(500);
        assert_eq!(pause_until(f, NOW, 0, 1), None);
        assert_eq!(pause_until(f, NOW, 0, 2), None);
        assert_eq!(pause_until(f, NOW, 0, 3), Some(NOW + 1_000));
        assert_eq!(
            pause_until(IdpFailure::NoAnswer, NOW, 0, 4),
            Some(NOW + 2_000)
        );
        assert_eq!(pause_until(f, NOW, 0, 50), Some(NOW + 10_000));
        // calls that were out when the pause began do not lengthen it
        assert_eq!(pause_until(f, NOW, NOW + 500, 9), None);
    }

    #[test]
    fn definite_answers_and_unreadable_ones_never_pause() {
        for f in [
            IdpFailure::Unreadable,
            IdpFailure::UnexpectedStatus(400),
            IdpFailure::GatewayRejected,
        ] {
            assert_eq!(pause_until(f, NOW, 0, 99), None, "{f:?}");
            assert!(!counts_as_trouble(f));
        }
    }

    #[test]
    fn the_record_round_trips_and_garbage_means_no_pause() {
        assert_eq!(decode(&encode(NOW)), NOW);
        assert_eq!(decode(b"garbage"), 0);
        assert_eq!(decode(b""), 0);
    }
}
