//! The IdP calls a gateway (all its workers) has out to one Okta org: one shared-data record of
//! the calls' deadlines, taken with compare-and-swap before a call is sent and given back when
//! its answer arrives. A call whose answer never comes back to the filter (its request went
//! away) holds its place until its deadline, as it may still be out at Okta. This bounds the
//! gateway's concurrent requests to Okta (`max_idp_calls_in_flight`), whose own limit is per
//! org (35 on Integrator Free, 75 on paid orgs), whatever the number of workers.
//!
//! Every route of an org shares the record, and so one bound: the smallest
//! `max_idp_calls_in_flight` among the org's configurations that took a place in the last
//! [`CAP_MEMORY_MS`] applies to all of them (the record carries it). Otherwise a route with a
//! large bound could fill the record past a smaller route's whole bound.
//!
//! A share of the bound is kept for calls that matter most (refreshes of known-good
//! credentials, discovery and the key set): other calls may fill only four fifths of it, so
//! that calls of clients that hung up cannot leave known apps without their refresh. This
//! module is the arithmetic only.

use crate::budget::CallClass;

const MAGIC: &[u8; 4] = b"OIF\x02";
const HEADER: usize = 4 + 4 + 8;

/// For this long after a configuration took a place, its bound holds for every configuration
/// of the org with a larger one.
pub const CAP_MEMORY_MS: u64 = 60_000;

/// The calls out, and the smallest bound in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// The smallest bound of a configuration that took a place since `cap_set_ms` (0: none).
    cap: u32,
    cap_set_ms: u64,
    /// The deadlines of the calls out, in ms since the epoch.
    until: Vec<u64>,
}

/// How many calls may be out when a caller of `class` would add one: unknown credentials leave
/// a fifth of the bound to the others, and at least one place once the bound has two.
pub fn cap_for(cap: usize, class: CallClass) -> usize {
    match class {
        CallClass::Refresh => cap,
        CallClass::Unknown if cap >= 2 => cap - (cap / 5).max(1),
        CallClass::Unknown => cap,
    }
}

impl InFlight {
    /// The record in shared data; anything unreadable is an empty one.
    pub fn decode(bytes: &[u8]) -> InFlight {
        let Some((header, rest)) = bytes.split_at_checked(HEADER) else {
            return InFlight::default();
        };
        if !header.starts_with(MAGIC) || rest.len() % 8 != 0 {
            return InFlight::default();
        }
        let word = |range: std::ops::Range<usize>| {
            header.get(range).map_or(0, |b| {
                b.iter()
                    .rev()
                    .fold(0u64, |n, byte| (n << 8) | u64::from(*byte))
            })
        };
        let until = rest
            .chunks_exact(8)
            .map(|c| <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes))
            .collect();
        InFlight {
            cap: u32::try_from(word(4..8)).unwrap_or(0),
            cap_set_ms: word(8..16),
            until,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 * self.until.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.cap.to_le_bytes());
        out.extend_from_slice(&self.cap_set_ms.to_le_bytes());
        for u in &self.until {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    }

    /// The bound for a configuration whose own is `mine`: the smaller of it and the org's
    /// smallest in force.
    pub fn bound(&self, mine: usize, now_ms: u64) -> usize {
        let recent = now_ms < self.cap_set_ms.saturating_add(CAP_MEMORY_MS);
        match usize::try_from(self.cap) {
            Ok(theirs) if theirs > 0 && recent => mine.min(theirs),
            _ => mine,
        }
    }

    /// The record with `cap` as the org's bound from now, if it is the smallest in force (a
    /// configuration announces its bound when it starts and every half [`CAP_MEMORY_MS`], so
    /// that a route which is idle, or finds the record full, still holds the others to it).
    pub fn announced(&self, cap: usize, now_ms: u64) -> Option<InFlight> {
        (cap <= self.bound(cap, now_ms)).then(|| InFlight {
            cap: u32::try_from(cap).unwrap_or(u32::MAX),
            cap_set_ms: now_ms,
            ..self.clone()
        })
    }

    /// Whether a caller of `class` whose configuration's bound is `cap` has a place now.
    pub fn has_room(&self, now_ms: u64, cap: usize, class: CallClass) -> bool {
        self.live(now_ms) < cap_for(self.bound(cap, now_ms), class)
    }

    /// Calls out at `now_ms`.
    pub fn live(&self, now_ms: u64) -> usize {
        self.until.iter().filter(|u| **u > now_ms).count()
    }

    /// One more call, out until `until_ms`, if the caller has a place ([`InFlight::has_room`]):
    /// the record to write back (calls past their deadline dropped, the caller's bound kept as
    /// the org's when it is the smallest), or `None`.
    pub fn try_take(
        &self,
        now_ms: u64,
        until_ms: u64,
        cap: usize,
        class: CallClass,
    ) -> Option<InFlight> {
        if !self.has_room(now_ms, cap, class) {
            return None;
        }
        let mut next = InFlight {
            until: self.until.iter().copied().filter(|u| *u > now_ms).collect(),
            ..self.clone()
        };
        next.until.push(until_ms);
        if cap <= self.bound(cap, now_ms) {
            next.cap = u32::try_from(cap).unwrap_or(u32::MAX);
            next.cap_set_ms = now_ms;
        }
        Some(next)
    }

    /// The call out until `until_ms` came back.
    pub fn release(&self, until_ms: u64, now_ms: u64) -> InFlight {
        let mut until: Vec<u64> = self.until.iter().copied().filter(|u| *u > now_ms).collect();
        if let Some(i) = until.iter().position(|u| *u == until_ms) {
            until.swap_remove(i);
        }
        InFlight {
            until,
            ..self.clone()
        }
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
    fn a_small_bound_still_keeps_a_place_for_refreshes() {
        assert_eq!(cap_for(1, CallClass::Unknown), 1);
        for cap in 2..=9 {
            assert_eq!(cap_for(cap, CallClass::Unknown), cap - 1, "{cap}");
            assert_eq!(cap_for(cap, CallClass::Refresh), cap);
        }
        assert_eq!(cap_for(10, CallClass::Unknown), 8);
        assert_eq!(cap_for(64, CallClass::Unknown), 52);
        // Unknown calls fill their share of a bound of 4; a refresh still gets the last place.
        let mut r = InFlight::default();
        while let Some(next) = r.try_take(T0, T0 + 4_000, 4, CallClass::Unknown) {
            r = next;
        }
        assert_eq!(r.live(T0), 3);
        assert!(r.try_take(T0, T0 + 4_000, 4, CallClass::Refresh).is_some());
    }

    #[test]
    fn the_smallest_bound_of_the_orgs_routes_holds_for_all_of_them() {
        // Route B (bound 8) took a place: route A (bound 64) is held to 8 for a minute.
        let r = InFlight::default()
            .try_take(T0, T0 + 4_000, 8, CallClass::Refresh)
            .unwrap_or_default();
        let mut a = r.clone();
        let mut taken = 0;
        while let Some(next) = a.try_take(T0, T0 + 4_000, 64, CallClass::Unknown) {
            a = next;
            taken += 1;
        }
        assert_eq!(a.live(T0), 7, "A's unknown calls stop at 8 - 1");
        assert_eq!(taken, 6);
        assert!(
            a.has_room(T0, 8, CallClass::Refresh),
            "B's refresh keeps its place"
        );
        // A minute after B last took a place, A's own bound is back.
        let later = T0 + CAP_MEMORY_MS + 5_000;
        assert_eq!(a.bound(64, later), 64);
        assert!(a.has_room(later, 64, CallClass::Unknown));
        // A route that announces its bound holds the others to it before it takes a place.
        let full = InFlight::default();
        let announced = full.announced(8, T0).unwrap_or_default();
        assert_eq!(announced.bound(64, T0 + 1), 8);
        assert_eq!(announced.announced(64, T0 + 1), None, "not the smallest");
        // And a larger bound never replaces the smaller one in force.
        let kept = a.try_take(T0 + 1, T0 + 5_000, 8, CallClass::Refresh);
        assert_eq!(kept.map(|k| k.bound(64, T0 + 1)), Some(8));
    }

    #[test]
    fn records_round_trip_and_anything_unreadable_is_empty() {
        let r = InFlight::default()
            .try_take(T0, T0 + 1, 4, CallClass::Refresh)
            .unwrap_or_default();
        assert_eq!(InFlight::decode(&r.encode()), r);
        for garbage in [
            &b""[..],
            b"OIF\x02\0",
            b"OIF\x01\0\0\0\0\0\0\0\0\0\0\0\0",
            b"nope",
        ] {
            assert_eq!(InFlight::decode(garbage), InFlight::default());
        }
        assert_eq!(InFlight::default().release(T0, T0), InFlight::default());
    }
}
