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
}

impl BudgetConfig {
    /// `calls_per_minute` with the default reserved share.
    pub fn new(calls_per_minute: u32) -> BudgetConfig {
        BudgetConfig {
            calls_per_minute,
            reserved_percent: DEFAULT_RESERVED_PERCENT,
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
        if next.used() >= allowed {
            let went_back = next.head_s < self.head_s;
            return Err(Refused {
                retry_after_s: next.seconds_until_below(allowed),
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

    #[test]
    fn a_full_window_refuses_until_its_oldest_calls_leave() {
        let cfg = BudgetConfig::new(10);
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
            let cfg = BudgetConfig {
                calls_per_minute: 1 + rng.below(300) as u32,
                reserved_percent: rng.below(60) as u32,
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
        let cfg = BudgetConfig::new(5);
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
