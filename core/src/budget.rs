//! The IdP call budget: how many calls per minute the gateway (all its workers) may make to one
//! Okta endpoint, and who may make them. One shared-data record per endpoint holds the calls
//! admitted in the last minute; a worker reads it, asks [`Budget::try_take`], and writes the
//! updated record back with compare-and-swap before it dispatches the call (on a CAS mismatch
//! it reads again; if it keeps losing, it makes no call). This module is the arithmetic only.
//!
//! The record is a sliding window of one-second buckets: the current second and the 60 before
//! it. A call is admitted while the calls those 61 buckets hold stay under the limit, so over
//! any 60 s (in fact 60 s plus the current partial second) no more than `calls_per_minute`
//! calls are admitted, whatever the bursts. A share of the budget ([`BudgetConfig::reserved`],
//! 20% by default, at least one call) is kept for [`CallClass::Refresh`]: calls for a credential
//! that had a positive verdict. Calls for unknown credentials are admitted only while the window
//! holds fewer than `calls_per_minute - reserved`, so a flood of them can never take the
//! reserved share, and a known-good client's refresh always finds room.
//!
//! Calls are also paced: at most [`BudgetConfig::per_second`] are admitted in any one second (a
//! tenth of the minute's budget, at least 2; the reserved share applies within it too), so a
//! gateway never fires its whole minute at once, and its calls in flight stay near its rate
//! times Okta's latency.
//!
//! Each route configuration has a budget of its own ([`RouteBudget`]): a flood on one route
//! spends nothing of another's. The records of one Okta org form a small table (64 per
//! endpoint) with an owner tag, taken over only when idle for a minute, so that their number
//! does not grow with configuration versions.
//!
//! Time is the caller's `now_ms`. When it goes back, the buckets are kept, re-anchored at the
//! new "now" and moved one second newer (a call's real age is then never overestimated): every
//! call already counted stays counted until its real minute is over, so a clock jump never
//! admits a call the window would have refused. Integer arithmetic only.

/// Width of a bucket.
const BUCKET_MS: u64 = 1_000;
/// The current second and the 60 before it (see the module doc for why 61).
const BUCKETS: usize = 61;
/// The reserved share when the configuration says nothing else.
pub const DEFAULT_RESERVED_PERCENT: u32 = 20;

/// Who is asking for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// A credential whose own cache entry holds a positive verdict (fresh, expired or stale):
    /// re-checking a known-good client. May use the whole budget.
    Refresh,
    /// Anything else: never seen, negative, or a lease with no verdict. May not use the
    /// reserved share.
    Unknown,
}

/// The budget of one endpoint, from the configuration (`idp_calls_per_minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    pub calls_per_minute: u32,
    /// Percentage of `calls_per_minute` only [`CallClass::Refresh`] may use (capped at 100).
    pub reserved_percent: u32,
    /// At most this many calls in any one second ([`paced`]).
    pub per_second: u64,
}

/// The burst a budget of `calls_per_minute` allows in one second: a tenth of it, at least 2.
pub fn paced(calls_per_minute: u32) -> u64 {
    u64::from(calls_per_minute).div_ceil(10).max(2)
}

impl BudgetConfig {
    /// `calls_per_minute` with the default reserved share, paced.
    pub fn new(calls_per_minute: u32) -> BudgetConfig {
        BudgetConfig {
            calls_per_minute,
            reserved_percent: DEFAULT_RESERVED_PERCENT,
            per_second: paced(calls_per_minute),
        }
    }

    /// How many calls the current second may hold for a caller of this class to be admitted:
    /// unknown callers leave a fifth of it (at least one call) to refreshes.
    pub fn per_second_limit(&self, class: CallClass) -> u64 {
        match class {
            CallClass::Refresh => self.per_second,
            CallClass::Unknown => self.per_second.saturating_sub((self.per_second / 5).max(1)),
        }
    }

    /// Calls only refreshes may use: the percentage rounded up, so any non-zero share reserves
    /// at least one call.
    pub fn reserved(&self) -> u64 {
        let cpm = u64::from(self.calls_per_minute);
        let pct = u64::from(self.reserved_percent.min(100));
        (cpm * pct).div_ceil(100)
    }

    /// How many calls the window may hold for a caller of this class to be admitted.
    pub fn limit(&self, class: CallClass) -> u64 {
        let cpm = u64::from(self.calls_per_minute);
        match class {
            CallClass::Refresh => cpm,
            CallClass::Unknown => cpm - self.reserved(),
        }
    }
}

/// Route budgets per org and endpoint: the table's size.
pub const ROUTE_SLOTS: u64 = 64;
/// How many of the table's records a route looks at, from the one its tag names.
pub const ROUTE_PROBES: u64 = 4;

/// One route configuration's budget record: whose it is (a tag of the configuration), and its
/// window. Another route takes it over only once it is idle (no call in its window).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteBudget {
    pub owner: [u8; 8],
    pub budget: Budget,
}

const ROUTE_MAGIC: &[u8; 4] = b"OBR\x01";

impl RouteBudget {
    /// The record in shared data; anything unreadable is an idle record of nobody.
    pub fn decode(bytes: &[u8]) -> RouteBudget {
        match bytes.split_at_checked(12) {
            Some((head, rest)) if head.starts_with(ROUTE_MAGIC) => {
                let mut owner = [0u8; 8];
                owner.copy_from_slice(&head[4..12]);
                RouteBudget {
                    owner,
                    budget: Budget::decode(rest),
                }
            }
            _ => RouteBudget::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + ENCODED_LEN);
        out.extend_from_slice(ROUTE_MAGIC);
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.budget.encode());
        out
    }

    /// The window `owner` may use at `now_ms`: its own, or a fresh one if this record is
    /// nobody's or idle; `None` while another route uses it.
    pub fn window_for(&self, owner: &[u8; 8], now_ms: u64) -> Option<Budget> {
        if self.owner == *owner {
            Some(self.budget.clone())
        } else if self.budget.used_at(now_ms) == 0 {
            Some(Budget::default())
        } else {
            None
        }
    }
}

/// The table slots a route with tag `owner` looks at, in order.
pub fn route_slots(owner: &[u8; 8]) -> impl Iterator<Item = u64> {
    let base = u64::from_le_bytes(*owner) % ROUTE_SLOTS;
    (0..ROUTE_PROBES).map(move |i| (base + i) % ROUTE_SLOTS)
}

/// No call now; try again in `retry_after_s` seconds (for `Retry-After`, at most 61).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_s: u64,
    /// The record to write back (with CAS; losing the race does not matter) although no call
    /// is admitted: the clock went back and the window was re-anchored at the new "now".
    /// Without it, a full window would stay full until the clock caught up again.
    pub write_back: Option<Box<Budget>>,
}

/// One endpoint's calls in the last minute, as kept in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The second (since the epoch) `counts[0]` stands for; `counts[i]` is `i` seconds before.
    head_s: u64,
    counts: [u32; BUCKETS],
}

impl Default for Budget {
    /// An empty window: the whole budget available.
    fn default() -> Budget {
        Budget {
            head_s: 0,
            counts: [0; BUCKETS],
        }
    }
}

const MAGIC: &[u8; 4] = b"OBU\x01";
const ENCODED_LEN: usize = 4 + 8 + 4 * BUCKETS;

impl Budget {
    /// The record in shared data; anything unreadable (missing, empty, foreign, truncated) is
    /// an empty window. Only the filter writes these keys.
    pub fn decode(bytes: &[u8]) -> Budget {
        if bytes.len() != ENCODED_LEN || !bytes.starts_with(MAGIC) {
            return Budget::default();
        }
        let mut head = [0u8; 8];
        head.copy_from_slice(&bytes[4..12]);
        let mut counts = [0u32; BUCKETS];
        for (count, chunk) in counts.iter_mut().zip(bytes[12..].chunks_exact(4)) {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            *count = u32::from_le_bytes(b);
        }
        Budget {
            head_s: u64::from_le_bytes(head),
            counts,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.head_s.to_le_bytes());
        for count in &self.counts {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// Admits one call of `class` at `now_ms`: the record to write back (with CAS) before the
    /// call is made, or how long to wait.
    pub fn try_take(
        &self,
        now_ms: u64,
        class: CallClass,
        limit: &BudgetConfig,
    ) -> Result<Budget, Refused> {
        let mut next = self.at(now_ms);
        let allowed = limit.limit(class);
        let went_back = next.head_s < self.head_s;
        if next.used() >= allowed {
            return Err(Refused {
                retry_after_s: next.seconds_until_below(allowed),
                write_back: went_back.then(|| Box::new(next)),
            });
        }
        if u64::from(next.counts[0]) >= limit.per_second_limit(class) {
            // This second's burst is spent: the next second has room.
            return Err(Refused {
                retry_after_s: 1,
                write_back: went_back.then(|| Box::new(next)),
            });
        }
        next.counts[0] = next.counts[0].saturating_add(1);
        Ok(next)
    }

    /// Calls a caller of `class` could still make now.
    pub fn remaining(&self, now_ms: u64, class: CallClass, limit: &BudgetConfig) -> u64 {
        limit.limit(class).saturating_sub(self.at(now_ms).used())
    }

    /// Calls admitted in the window that ends at `now_ms`.
    pub fn used_at(&self, now_ms: u64) -> u64 {
        self.at(now_ms).used()
    }

    fn used(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    /// The window as seen at `now_ms`: buckets older than a minute dropped. A `now` before the
    /// record's head (the clock went back) re-anchors the head there and drops nothing.
    fn at(&self, now_ms: u64) -> Budget {
        let now_s = now_ms / BUCKET_MS;
        let mut next = self.clone();
        next.head_s = now_s;
        if now_s == self.head_s {
            return next;
        }
        if now_s < self.head_s {
            // How long ago, in real time, a call was made is unknown once the clock went back;
            // all that is known is that a call `i` buckets before the head is at least `i - 1`
            // seconds old. So each bucket moves one newer: it then leaves the window no earlier
            // than its calls' real minute ends.
            next.counts[0] = self.counts[0].saturating_add(self.counts[1]);
            next.counts.copy_within(2..BUCKETS, 1);
            next.counts[BUCKETS - 1] = 0;
            return next;
        }
        let shift = now_s - self.head_s;
        if shift >= BUCKETS as u64 {
            next.counts = [0; BUCKETS];
            return next;
        }
        // `shift` < BUCKETS, so it fits a usize.
        let shift = shift as usize;
        next.counts.copy_within(0..BUCKETS - shift, shift);
        next.counts[..shift].fill(0);
        next
    }

    /// Whole seconds until the oldest buckets leaving the window bring it under `allowed`
    /// (a minute when nothing ever will: a zero budget).
    fn seconds_until_below(&self, allowed: u64) -> u64 {
        let mut used = self.used();
        for d in 1..=BUCKETS {
            used -= u64::from(self.counts[BUCKETS - d]);
            if used < allowed {
                return d as u64;
            }
        }
        BUCKETS as u64 - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    /// A small deterministic generator: the property tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn take(b: &mut Budget, now: u64, class: CallClass, cfg: &BudgetConfig) -> bool {
        match b.try_take(now, class, cfg) {
            Ok(next) => {
                // Every write goes through shared data: encode and decode each time.
                *b = Budget::decode(&next.encode());
                true
            }
            Err(r) => {
                assert!((1..=61).contains(&r.retry_after_s), "{r:?}");
                if let Some(next) = r.write_back {
                    *b = Budget::decode(&next.encode());
                }
                false
            }
        }
    }

    /// The most calls admitted in any 60 s of `times` (sorted, ms).
    fn max_in_a_minute(times: &[u64]) -> usize {
        let (mut best, mut end) = (0, 0);
        for (start, t) in times.iter().enumerate() {
            while end < times.len() && times[end] < t + 60_000 {
                end += 1;
            }
            best = best.max(end - start);
        }
        best
    }

    #[test]
    fn reserved_share_is_rounded_up_and_never_over_the_budget() {
        let cfg = |cpm, pct| BudgetConfig {
            calls_per_minute: cpm,
            reserved_percent: pct,
            per_second: paced(cpm),
        };
        assert_eq!(BudgetConfig::new(600).reserved(), 120);
        assert_eq!(BudgetConfig::new(600).limit(CallClass::Unknown), 480);
        assert_eq!(BudgetConfig::new(600).limit(CallClass::Refresh), 600);
        assert_eq!(BudgetConfig::new(1).reserved(), 1);
        assert_eq!(BudgetConfig::new(1).limit(CallClass::Unknown), 0);
        assert_eq!(BudgetConfig::new(7).reserved(), 2);
        assert_eq!(cfg(10, 0).limit(CallClass::Unknown), 10);
        assert_eq!(cfg(10, 250).limit(CallClass::Unknown), 0);
        assert_eq!(cfg(0, 20).limit(CallClass::Refresh), 0);
        assert_eq!(
            BudgetConfig::new(u32::MAX).limit(CallClass::Refresh),
            u64::from(u32::MAX)
        );
    }

    /// The per-minute arithmetic alone (pacing only refuses more).
    fn unpaced(calls_per_minute: u32) -> BudgetConfig {
        BudgetConfig {
            per_second: u64::MAX,
            ..BudgetConfig::new(calls_per_minute)
        }
    }

    #[test]
    fn a_full_window_refuses_until_its_oldest_calls_leave() {
        let cfg = unpaced(10);
        let mut b = Budget::default();
        for i in 0..8 {
            assert!(take(&mut b, T0 + i * 100, CallClass::Unknown, &cfg), "{i}");
        }
        // second 0 leaves the window at 61 s
        assert_eq!(
            b.try_take(T0 + 900, CallClass::Unknown, &cfg),
            Err(Refused {
                retry_after_s: 61,
                write_back: None
            })
        );
        assert_eq!(b.remaining(T0 + 900, CallClass::Refresh, &cfg), 2);
        assert!(take(&mut b, T0 + 59_999, CallClass::Refresh, &cfg));
        assert!(take(&mut b, T0 + 59_999, CallClass::Refresh, &cfg));
        assert_eq!(
            b.try_take(T0 + 59_999, CallClass::Refresh, &cfg),
            Err(Refused {
                retry_after_s: 2,
                write_back: None
            })
        );
        // 60.999 s later the first second is still inside the window; at 61 s it has left.
        assert!(b.try_take(T0 + 60_999, CallClass::Refresh, &cfg).is_err());
        assert_eq!(b.used_at(T0 + 61_000), 2);
        assert!(take(&mut b, T0 + 61_000, CallClass::Unknown, &cfg));
        assert_eq!(b.used_at(T0 + 1_000_000), 0);
    }

    #[test]
    fn unknown_callers_never_take_the_reserved_share() {
        let cfg = BudgetConfig::new(600);
        let mut b = Budget::default();
        let mut rng = Rng(7);
        let mut now = T0;
        let mut unknown = Vec::new();
        let mut next_refresh = T0 + 30_000;
        // A flood of unknown credentials for five minutes, at up to 50 attempts a second...
        while now < T0 + 300_000 {
            if take(&mut b, now, CallClass::Unknown, &cfg) {
                unknown.push(now);
            }
            // ...while known clients refresh at 100 a minute (under the reserve of 120): every
            // refresh gets its call.
            if now >= next_refresh {
                assert!(
                    take(&mut b, now, CallClass::Refresh, &cfg),
                    "refresh refused at {}",
                    now - T0
                );
                next_refresh += 600;
            }
            now += rng.below(40);
        }
        assert_eq!(max_in_a_minute(&unknown), 480);
    }

    #[test]
    fn no_minute_ever_holds_more_than_the_budget() {
        for seed in 1..25u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let cpm = 1 + rng.below(300) as u32;
            let cfg = BudgetConfig {
                calls_per_minute: cpm,
                reserved_percent: rng.below(60) as u32,
                per_second: if seed % 2 == 0 { paced(cpm) } else { u64::MAX },
            };
            let mut b = Budget::default();
            let mut now = T0 + rng.below(1_000);
            let mut admitted = Vec::new();
            for _ in 0..8_000 {
                let class = if rng.below(3) == 0 {
                    CallClass::Refresh
                } else {
                    CallClass::Unknown
                };
                if take(&mut b, now, class, &cfg) {
                    admitted.push(now);
                }
                // bursts at the same millisecond, short gaps, and the odd long silence
                now += match rng.below(10) {
                    0..=3 => 0,
                    4..=8 => rng.below(500),
                    _ => rng.below(90_000),
                };
            }
            let max = max_in_a_minute(&admitted);
            assert!(max <= cfg.calls_per_minute as usize, "{cfg:?}: {max}");
            assert!(max > 0);
        }
    }

    #[test]
    fn a_clock_going_back_never_mints_calls() {
        for seed in 1..25u64 {
            let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let cfg = BudgetConfig::new(1 + rng.below(100) as u32);
            let mut b = Budget::default();
            // `real` only moves forward; the clock the budget sees sometimes jumps back.
            let mut real = T0;
            let mut behind = 0u64;
            let mut admitted = Vec::new();
            for _ in 0..8_000 {
                // now and then a jump back of up to two minutes, often a jitter under 1.5 s
                match rng.below(1_000) {
                    0 => behind += rng.below(120_000),
                    1..=4 => behind += rng.below(1_500),
                    _ => {}
                }
                let clock = real - behind;
                if take(&mut b, clock, CallClass::Refresh, &cfg) {
                    admitted.push(real);
                }
                real += rng.below(300);
            }
            let max = max_in_a_minute(&admitted);
            assert!(max <= cfg.calls_per_minute as usize, "{cfg:?}: {max}");
        }
    }

    #[test]
    fn a_clock_far_in_the_past_does_not_lock_the_budget() {
        let cfg = unpaced(5);
        let mut b = Budget::default();
        for _ in 0..5 {
            assert!(take(&mut b, T0, CallClass::Refresh, &cfg));
        }
        // The clock went back a day: the five calls stay counted for a minute of the new time,
        // then the budget is back (not a day later).
        let back = T0 - 86_400_000;
        assert!(!take(&mut b, back, CallClass::Refresh, &cfg));
        assert!(!take(&mut b, back + 60_000, CallClass::Refresh, &cfg));
        assert!(take(&mut b, back + 61_000, CallClass::Refresh, &cfg));
    }

    #[test]
    fn calls_are_paced_a_tenth_of_the_minute_a_second_with_room_for_refreshes() {
        let cfg = BudgetConfig::new(600);
        assert_eq!(
            (
                cfg.per_second_limit(CallClass::Refresh),
                cfg.per_second_limit(CallClass::Unknown)
            ),
            (60, 48)
        );
        let mut b = Budget::default();
        let mut unknown = 0;
        for _ in 0..1_000 {
            unknown += usize::from(take(&mut b, T0, CallClass::Unknown, &cfg));
        }
        assert_eq!(unknown, 48, "not the whole minute in one second");
        assert_eq!(
            b.try_take(T0 + 999, CallClass::Unknown, &cfg).map(|_| ()),
            Err(Refused {
                retry_after_s: 1,
                write_back: None
            })
        );
        for _ in 0..12 {
            assert!(take(&mut b, T0 + 500, CallClass::Refresh, &cfg));
        }
        assert!(!take(&mut b, T0 + 500, CallClass::Refresh, &cfg));
        assert!(
            take(&mut b, T0 + 1_000, CallClass::Unknown, &cfg),
            "the next second"
        );
        // Small budgets: at least two a second, one of them for refreshes.
        let small = BudgetConfig::new(5);
        assert_eq!(
            (
                small.per_second_limit(CallClass::Refresh),
                small.per_second_limit(CallClass::Unknown)
            ),
            (2, 1)
        );
        // Paced or not, a minute never holds more than the budget.
        let mut b = Budget::default();
        let admitted = (0..600u64)
            .filter(|i| take(&mut b, T0 + i * 100, CallClass::Refresh, &cfg))
            .count();
        assert_eq!(admitted, 600);
        assert!(!take(&mut b, T0 + 60_000, CallClass::Refresh, &cfg));
    }

    #[test]
    fn a_route_record_is_its_owners_and_taken_over_only_when_idle() {
        let (a, b) = ([1u8; 8], [2u8; 8]);
        let cfg = BudgetConfig::new(100);
        let empty = RouteBudget::default();
        assert_eq!(empty.window_for(&a, T0), Some(Budget::default()));
        let mut window = Budget::default();
        assert!(take(&mut window, T0, CallClass::Unknown, &cfg));
        let mine = RouteBudget {
            owner: a,
            budget: window.clone(),
        };
        assert_eq!(RouteBudget::decode(&mine.encode()), mine);
        assert_eq!(mine.window_for(&a, T0 + 1), Some(window));
        assert_eq!(mine.window_for(&b, T0 + 1), None, "busy: another route's");
        assert_eq!(
            mine.window_for(&b, T0 + 61_000),
            Some(Budget::default()),
            "idle"
        );
        for garbage in [&b""[..], b"OBR\x01", b"\0\0\0\0\0\0\0\0\0\0\0\0\0"] {
            assert_eq!(RouteBudget::decode(garbage), RouteBudget::default());
        }
        let slots: Vec<u64> = route_slots(&[255; 8]).collect();
        assert_eq!(slots.len(), ROUTE_PROBES as usize);
        assert!(slots.iter().all(|s| *s < ROUTE_SLOTS));
    }

    #[test]
    fn a_zero_budget_admits_nothing() {
        let cfg = BudgetConfig::new(0);
        let b = Budget::default();
        for class in [CallClass::Refresh, CallClass::Unknown] {
            assert_eq!(
                b.try_take(T0, class, &cfg),
                Err(Refused {
                    retry_after_s: 60,
                    write_back: None
                })
            );
        }
    }

    #[test]
    fn records_round_trip_and_anything_unreadable_is_an_empty_window() {
        let cfg = BudgetConfig::new(100);
        let mut b = Budget::default();
        for i in 0..50 {
            assert!(take(&mut b, T0 + i * 700, CallClass::Unknown, &cfg));
        }
        let bytes = b.encode();
        assert_eq!(bytes.len(), ENCODED_LEN);
        assert_eq!(Budget::decode(&bytes), b);
        for garbage in [&b""[..], b"\0", &bytes[..bytes.len() - 1], b"{\"calls\":1}"] {
            assert_eq!(Budget::decode(garbage), Budget::default());
        }
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert_eq!(Budget::decode(&foreign), Budget::default());
        let mut trailing = bytes;
        trailing.push(0);
        assert_eq!(Budget::decode(&trailing), Budget::default());
        assert_eq!(
            Budget::default().remaining(T0, CallClass::Unknown, &cfg),
            80
        );
    }
}
