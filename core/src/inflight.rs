//! The IdP calls a gateway (all its workers) has out to one Okta org: one shared-data record of
//! the calls' deadlines, taken with compare-and-swap before a call is sent and given back when
//! its answer arrives. A call whose answer never comes back to the filter (its request went
//! away) holds its place until its deadline, as it may still be out at Okta. This bounds the
//! gateway's concurrent requests to Okta (`max_idp_calls_in_flight`), whose own limit is per
//! org (35 on Integrator Free, 75 on paid orgs), whatever the number of workers.
//!
//! A share of the bound is kept for calls that matter most (refreshes of known-good
//! credentials, discovery and the key set): other calls may fill only four fifths of it, so
//! that calls of clients that hung up cannot leave known apps without their refresh. This
//! module is the arithmetic only.

use crate::budget::CallClass;

const MAGIC: &[u8; 4] = b"OIF\x01";

/// The deadlines of the calls out, in ms since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    until: Vec<u64>,
}

/// How many calls may be out when a caller of `class` would add one.
pub fn cap_for(cap: usize, class: CallClass) -> usize {
    match class {
        CallClass::Refresh => cap,
        CallClass::Unknown => cap - cap / 5,
    }
}

impl InFlight {
    /// The record in shared data; anything unreadable is an empty one.
    pub fn decode(bytes: &[u8]) -> InFlight {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return InFlight::default();
        };
        if rest.len() % 8 != 0 {
            return InFlight::default();
        }
        let until = rest
            .chunks_exact(8)
            .map(|c| <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes))
            .collect();
        InFlight { until }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.until.len());
        out.extend_from_slice(MAGIC);
        for u in &self.until {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    }

    /// Calls out at `now_ms`.
    pub fn live(&self, now_ms: u64) -> usize {
        self.until.iter().filter(|u| **u > now_ms).count()
    }

    /// One more call, out until `until_ms`, if fewer than `cap_for(cap, class)` are out: the
    /// record to write back (calls past their deadline dropped), or `None`.
    pub fn try_take(
        &self,
        now_ms: u64,
        until_ms: u64,
        cap: usize,
        class: CallClass,
    ) -> Option<InFlight> {
        let mut until: Vec<u64> = self.until.iter().copied().filter(|u| *u > now_ms).collect();
        if until.len() >= cap_for(cap, class) {
            return None;
        }
        until.push(until_ms);
        Some(InFlight { until })
    }

    /// The call out until `until_ms` came back.
    pub fn release(&self, until_ms: u64, now_ms: u64) -> InFlight {
        let mut until: Vec<u64> = self.until.iter().copied().filter(|u| *u > now_ms).collect();
        if let Some(i) = until.iter().position(|u| *u == until_ms) {
            until.swap_remove(i);
        }
        InFlight { until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn calls_out_are_bounded_and_refreshes_keep_a_fifth() {
        let mut r = InFlight::default();
        for i in 0..8 {
            r = r
                .try_take(T0, T0 + 4_000 + i, 10, CallClass::Unknown)
                .unwrap_or_else(|| panic!("unknown call {i}"));
        }
        assert_eq!(r.try_take(T0, T0 + 5_000, 10, CallClass::Unknown), None);
        let r = r
            .try_take(T0, T0 + 5_000, 10, CallClass::Refresh)
            .and_then(|r| r.try_take(T0, T0 + 5_001, 10, CallClass::Refresh));
        let r = r.unwrap_or_default();
        assert_eq!(r.live(T0), 10);
        assert_eq!(r.try_take(T0, T0 + 5_002, 10, CallClass::Refresh), None);
        // An answer gives its place back; a lost call holds it until its deadline.
        let back = r.release(T0 + 4_000, T0 + 1);
        assert_eq!(back.live(T0 + 1), 9);
        assert!(back
            .try_take(T0 + 1, T0 + 6_000, 10, CallClass::Refresh)
            .is_some());
        assert_eq!(r.live(T0 + 4_007), 2, "past their deadline");
        assert!(r
            .try_take(T0 + 4_007, T0 + 9_000, 10, CallClass::Unknown)
            .is_some());
    }

    #[test]
    fn records_round_trip_and_anything_unreadable_is_empty() {
        let r = InFlight::default()
            .try_take(T0, T0 + 1, 4, CallClass::Refresh)
            .unwrap_or_default();
        assert_eq!(InFlight::decode(&r.encode()), r);
        for garbage in [&b""[..], b"OIF\x01\0", b"nope"] {
            assert_eq!(InFlight::decode(garbage), InFlight::default());
        }
        assert_eq!(InFlight::default().release(T0, T0), InFlight::default());
    }
}
