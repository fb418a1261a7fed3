//! The failure throttle for Basic credentials: after `max_client_failures` `invalid_client`
//! answers for one client id within `client_failure_window_s`, further secrets for that id that
//! have no verdict yet go to Okta at most one per `window / max_client_failures` ([`probe`])
//! until the window has passed; the others are answered 503 with `Retry-After`, not 401: the
//! filter has not checked them.
//! The caller consults it only after the cache: a secret with a positive verdict (fresh or
//! stale) is served from the cache and never meets the throttle, so guessing secrets for a live
//! app cannot lock the app out; what an attacker can do is keep that app's *new* secrets (a
//! rotation) waiting for Okta's verdict until the window passes.
//!
//! Memory is bounded: records live in a fixed set of [`SLOTS`] shared-data keys, one per slot,
//! and a client id maps to the slot `keyed hash of the id mod SLOTS` ([`client_key`],
//! [`slot_of`]). A record counts the failures of every id in its slot and names none of them,
//! so a collision only adds another id's failures to the count: throttling gets stricter for
//! the colliding ids, and nothing that would have been refused is ever let through. The key is
//! keyed with the configuration digest, so an attacker cannot choose ids that land in a given
//! app's slot.
//!
//! The caller reads a slot's record, asks [`refuses`] before calling Okta, and after an
//! `invalid_client` answer writes [`note_failure`]'s record back with compare-and-swap.

use sha2::{Digest, Sha256};

/// Failure records per gateway; each holds 16 bytes.
pub const SLOTS: u32 = 4_096;
/// A record whose window starts further ahead than this (ms) was written before the clock went
/// back.
const CLOCK_SKEW_MS: u64 = 1_000;

/// The `invalid_client` answers counted in one slot's current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureRecord {
    /// When the window began: the first failure after the previous window ended (ms).
    pub window_start_ms: u64,
    /// Failures since then, of every client id in the slot.
    pub failures: u32,
    /// When a secret was last let through to Okta while the slot refused ([`probe`]).
    pub last_probe_ms: u64,
}

const MAGIC: &[u8; 4] = b"OTH\x02";
const ENCODED_LEN: usize = 4 + 8 + 4 + 8;

impl FailureRecord {
    /// Anything unreadable is an empty record. Only the filter writes these keys.
    pub fn decode(bytes: &[u8]) -> FailureRecord {
        if bytes.len() != ENCODED_LEN || !bytes.starts_with(MAGIC) {
            return FailureRecord::default();
        }
        let mut start = [0u8; 8];
        start.copy_from_slice(&bytes[4..12]);
        let mut failures = [0u8; 4];
        failures.copy_from_slice(&bytes[12..16]);
        let mut probe = [0u8; 8];
        probe.copy_from_slice(&bytes[16..24]);
        FailureRecord {
            window_start_ms: u64::from_le_bytes(start),
            failures: u32::from_le_bytes(failures),
            last_probe_ms: u64::from_le_bytes(probe),
        }
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4..12].copy_from_slice(&self.window_start_ms.to_le_bytes());
        out[12..16].copy_from_slice(&self.failures.to_le_bytes());
        out[16..].copy_from_slice(&self.last_probe_ms.to_le_bytes());
        out
    }
}

/// Keyed hash of a client id: the configuration digest is the key, so neither the shared-data
/// name nor its slot says which id it is to anyone who cannot read the configuration.
pub fn client_key(config_digest: &[u8; 32], client_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(config_digest);
    h.update(b"throttle\0");
    h.update(client_id.as_bytes());
    h.finalize().into()
}

/// The slot of a client key among `slots` (at least one).
pub fn slot_of(client_key: &[u8; 32], slots: u32) -> u32 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&client_key[..8]);
    // The remainder is below `slots`, a u32.
    (u64::from_le_bytes(first) % u64::from(slots.max(1))) as u32
}

/// The record after one more `invalid_client` answer at `now_ms`. A window that has passed
/// starts over; a clock that went back keeps the count (stricter) and restarts the window at
/// the new "now", so it ends one window from now, not when the clock catches up. A zero window
/// turns the throttle off.
pub fn note_failure(record: FailureRecord, now_ms: u64, window_ms: u64) -> FailureRecord {
    if window_ms == 0 {
        return FailureRecord::default();
    }
    let went_back = now_ms.saturating_add(CLOCK_SKEW_MS) < record.window_start_ms;
    if went_back {
        return FailureRecord {
            window_start_ms: now_ms,
            failures: record.failures.saturating_add(1),
            ..record
        };
    }
    if now_ms >= record.window_start_ms.saturating_add(window_ms) {
        return FailureRecord {
            window_start_ms: now_ms,
            failures: 1,
            ..record
        };
    }
    FailureRecord {
        failures: record.failures.saturating_add(1),
        ..record
    }
}

/// While a slot refuses, one unverified secret may still go to Okta every `interval_ms`: the
/// record that takes that turn (write it back with compare-and-swap, then call), or how long
/// until the next turn (ms). This is what keeps a live app's valid secret from being locked
/// out when its cached verdict is gone (a restart, a new node): an attacker who keeps the
/// slot refusing must also win every turn, and each turn costs Okta one call at most.
pub fn probe(record: &FailureRecord, now_ms: u64, interval_ms: u64) -> Result<FailureRecord, u64> {
    let next = record.last_probe_ms.saturating_add(interval_ms);
    // A turn dated after now (the clock went back) is not waited for.
    if now_ms >= next || record.last_probe_ms > now_ms.saturating_add(CLOCK_SKEW_MS) {
        return Ok(FailureRecord {
            last_probe_ms: now_ms,
            ..*record
        });
    }
    Err(next - now_ms)
}

/// Whether a secret without a verdict for a client id in this slot is refused locally now.
/// `max_failures` 0 turns the throttle off. A record from more than a window in the future
/// (the clock went back that far) refuses nothing: the next failure re-anchors it (see
/// [`note_failure`]), so such a jump costs at most one Okta call per slot, and never a verdict.
pub fn refuses(record: &FailureRecord, now_ms: u64, max_failures: u32, window_ms: u64) -> bool {
    if max_failures == 0 || record.failures < max_failures {
        return false;
    }
    let ends = record.window_start_ms.saturating_add(window_ms);
    let from_the_future = record.window_start_ms > now_ms.saturating_add(window_ms);
    now_ms < ends && !from_the_future
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const WINDOW: u64 = 60_000;
    const MAX: u32 = 5;

    fn failures(times: &[u64]) -> FailureRecord {
        times.iter().fold(FailureRecord::default(), |r, t| {
            // every write goes through shared data
            FailureRecord::decode(&note_failure(r, *t, WINDOW).encode())
        })
    }

    #[test]
    fn the_fifth_failure_in_a_window_refuses_until_it_passes() {
        let r = failures(&[T0, T0 + 1_000, T0 + 2_000, T0 + 3_000]);
        assert!(!refuses(&r, T0 + 3_000, MAX, WINDOW));
        let r = note_failure(r, T0 + 4_000, WINDOW);
        assert_eq!(r.failures, 5);
        assert!(refuses(&r, T0 + 4_000, MAX, WINDOW));
        assert!(refuses(&r, T0 + WINDOW - 1, MAX, WINDOW));
        assert!(!refuses(&r, T0 + WINDOW, MAX, WINDOW));
        // the next failure starts a new window
        let r = note_failure(r, T0 + WINDOW + 5, WINDOW);
        assert_eq!(
            r,
            FailureRecord {
                window_start_ms: T0 + WINDOW + 5,
                failures: 1,
                last_probe_ms: 0
            }
        );
        assert!(!refuses(&r, T0 + WINDOW + 5, MAX, WINDOW));
    }

    #[test]
    fn failures_spread_over_more_than_a_window_never_refuse() {
        let times: Vec<u64> = (0..50).map(|i| T0 + i * 15_000).collect();
        let mut r = FailureRecord::default();
        for t in times {
            assert!(!refuses(&r, t, MAX, WINDOW), "at {t}");
            r = note_failure(r, t, WINDOW);
        }
    }

    #[test]
    fn an_attacker_gets_at_most_max_failures_per_window() {
        // One guess every 10 ms for ten minutes; a refused guess never reaches Okta, so it
        // is never noted.
        let mut r = FailureRecord::default();
        let mut to_okta = Vec::new();
        let mut t = T0;
        while t < T0 + 600_000 {
            if !refuses(&r, t, MAX, WINDOW) {
                to_okta.push(t);
                r = note_failure(r, t, WINDOW);
            }
            t += 10;
        }
        for (i, start) in to_okta.iter().enumerate() {
            let in_window = to_okta[i..]
                .iter()
                .take_while(|u| **u < start + WINDOW)
                .count();
            assert!(in_window <= MAX as usize, "{in_window} from {start}");
        }
        assert_eq!(to_okta.len(), 50);
    }

    #[test]
    fn a_clock_going_back_keeps_the_count_and_ends_one_window_later() {
        let r = failures(&[T0; 5]);
        let back = T0 - 3_600_000;
        // a record from an hour "in the future" refuses nothing...
        assert!(!refuses(&r, back, MAX, WINDOW));
        // ...until the failure that gets through re-anchors it, with its count
        let r = note_failure(r, back, WINDOW);
        assert_eq!(
            r,
            FailureRecord {
                window_start_ms: back,
                failures: 6,
                last_probe_ms: 0
            }
        );
        assert!(refuses(&r, back + 1, MAX, WINDOW));
        assert!(!refuses(&r, back + WINDOW, MAX, WINDOW));
        // a small step back within the window changes nothing
        let r = failures(&[T0; 5]);
        assert!(refuses(&r, T0 - 500, MAX, WINDOW));
        assert_eq!(note_failure(r, T0 - 500, WINDOW).window_start_ms, T0);
    }

    #[test]
    fn zero_turns_it_off() {
        let r = failures(&[T0; 10]);
        assert!(!refuses(&r, T0, 0, WINDOW));
        assert_eq!(note_failure(r, T0, 0), FailureRecord::default());
        assert!(!refuses(&FailureRecord::default(), T0, MAX, 0));
    }

    #[test]
    fn a_collision_only_adds_failures() {
        let digest = [9u8; 32];
        // Find two ids sharing a slot among 8 slots.
        let ids: Vec<String> = (0..20).map(|i| format!("0oa-app-{i}")).collect();
        let slot = |id: &str| slot_of(&client_key(&digest, id), 8);
        let (a, b) = ids
            .iter()
            .flat_map(|a| ids.iter().map(move |b| (a, b)))
            .find(|(a, b)| a != b && slot(a) == slot(b))
            .expect("20 ids in 8 slots collide");
        // `a` fails three times, `b` twice: both are now throttled (stricter for each), and
        // no failure of either ever lowers the other's count.
        let mut shared = FailureRecord::default();
        for t in 0..3 {
            shared = note_failure(shared, T0 + t, WINDOW);
        }
        let before_b = shared.failures;
        for t in 3..5 {
            shared = note_failure(shared, T0 + t, WINDOW);
            assert!(shared.failures > before_b);
        }
        assert!(refuses(&shared, T0 + 10, MAX, WINDOW), "{a} and {b}");
    }

    #[test]
    fn keys_are_keyed_and_slots_in_range() {
        let k = client_key(&[1; 32], "0oa-app");
        assert_eq!(k, client_key(&[1; 32], "0oa-app"));
        assert_ne!(k, client_key(&[2; 32], "0oa-app"));
        assert_ne!(k, client_key(&[1; 32], "0oa-app2"));
        for id in ["a", "b", "0oa6demoDcrClient4kong"] {
            assert!(slot_of(&client_key(&[1; 32], id), SLOTS) < SLOTS);
        }
        assert_eq!(slot_of(&k, 0), 0);
        assert_eq!(slot_of(&k, 1), 0);
    }

    #[test]
    fn a_refusing_slot_still_lets_one_secret_through_per_interval() {
        let r = failures(&[T0; 5]);
        assert!(refuses(&r, T0 + 1, MAX, WINDOW));
        let interval = WINDOW / u64::from(MAX);
        let taken = probe(&r, T0 + 1, interval).expect("the first turn is free");
        assert_eq!(taken.last_probe_ms, T0 + 1);
        assert_eq!(probe(&taken, T0 + 2, interval), Err(interval - 1));
        assert!(probe(&taken, T0 + 1 + interval, interval).is_ok());
        // a turn dated after now (the clock went back) is not waited for
        assert!(probe(&taken, T0 - 3_600_000, interval).is_ok());
        // a failure keeps the turn
        assert_eq!(note_failure(taken, T0 + 3, WINDOW).last_probe_ms, T0 + 1);
    }

    #[test]
    fn records_round_trip_and_garbage_is_empty() {
        let r = FailureRecord {
            window_start_ms: T0,
            failures: 7,
            last_probe_ms: T0 + 9,
        };
        assert_eq!(FailureRecord::decode(&r.encode()), r);
        let bytes = r.encode();
        for garbage in [&b""[..], b"\0", &bytes[..23], b"0123456789abcdefg"] {
            assert_eq!(FailureRecord::decode(garbage), FailureRecord::default());
        }
        let mut foreign = bytes;
        foreign[0] = b'X';
        assert_eq!(FailureRecord::decode(&foreign), FailureRecord::default());
    }
}
