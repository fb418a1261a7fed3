//! A bound on the token signatures one worker checks per second (`max_signature_checks_per_s`).
//!
//! A signature check is the filter's one expensive step (about 300 µs of Envoy CPU for RS256,
//! docs/benchmarks.md), and it is only needed for a token with no verdict yet: a forged token
//! whose claims would pass costs one, so a client sending them in a loop could take a worker.
//! Each worker checks at most `per_second` signatures a second, and a token beyond that gets
//! 503 with `Retry-After: 1` (not 401: nothing was decided); its verdict is not cached.
//!
//! Within the bound, a share an attacker cannot spend:
//! - apps **not yet known to this worker** (no token of theirs verified here in the last
//!   [`KNOWN_FOR_MS`]) together use at most half of it: a flood of forged tokens under new app
//!   names (the app claim is the attacker's to write) leaves the other half to known apps;
//! - **one app** uses at most a tenth of it (at least 1) in a second, so a flood of forged tokens
//!   naming a known app (an app claim can be read from any of its tokens) spends that app's
//!   share, not the others'. The named app's own new tokens compete with the flood that second
//!   (503, then a retry); every other app's are unaffected.
//!
//! With registrations, a token naming an app that is not approved for the product is refused
//! before its signature (403) and spends nothing here, so only registered app names can.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::FixedState;

/// An app stays known this long after a token of theirs was verified on the worker.
pub const KNOWN_FOR_MS: u64 = 24 * 3600 * 1000;
/// The most apps a worker remembers as known (about 24 bytes each).
pub const MAX_KNOWN: usize = 16_384;
const SEED: u64 = 0x7369_672d_6275_6467;

/// One worker's signature checks this second, and the apps it verified a token of.
#[derive(Debug, Clone)]
pub struct SignatureBudget {
    per_second: u32,
    second: u64,
    used: u32,
    used_by_unknown: u32,
    used_by_app: HashMap<u64, u32>,
    /// App (hash) → when a token of theirs was last verified here.
    known: HashMap<u64, u64>,
}

/// Why [`SignatureBudget::admit`] refused a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The worker's checks for this second are spent.
    Worker,
    /// The share of apps not yet known here is spent.
    UnknownApps,
    /// This app's share is spent.
    App,
}

impl SignatureBudget {
    pub fn new(per_second: u32) -> SignatureBudget {
        SignatureBudget {
            per_second: per_second.max(1),
            second: 0,
            used: 0,
            used_by_unknown: 0,
            used_by_app: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Whether a token claiming to be `app` may have its signature checked now; counts it when
    /// so.
    pub fn admit(&mut self, app: &str, now_ms: u64) -> Result<(), Busy> {
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.used = 0;
            self.used_by_unknown = 0;
            self.used_by_app.clear();
        }
        let app = hash(app);
        let known = self
            .known
            .get(&app)
            .is_some_and(|at| now_ms.saturating_sub(*at) <= KNOWN_FOR_MS);
        let by_app = self.used_by_app.get(&app).copied().unwrap_or(0);
        if self.used >= self.per_second {
            return Err(Busy::Worker);
        }
        if !known && self.used_by_unknown >= (self.per_second / 2).max(1) {
            return Err(Busy::UnknownApps);
        }
        if by_app >= (self.per_second / 10).max(1) {
            return Err(Busy::App);
        }
        self.used += 1;
        if !known {
            self.used_by_unknown += 1;
        }
        self.used_by_app.insert(app, by_app + 1);
        Ok(())
    }

    /// A token of `app` was verified: the app is known here from now on.
    pub fn verified(&mut self, app: &str, now_ms: u64) {
        let app = hash(app);
        if let Some(at) = self.known.get_mut(&app) {
            *at = now_ms;
            return;
        }
        if self.known.len() >= MAX_KNOWN {
            self.known
                .retain(|_, at| now_ms.saturating_sub(*at) <= KNOWN_FOR_MS);
        }
        if self.known.len() < MAX_KNOWN {
            self.known.insert(app, now_ms);
        }
    }
}

fn hash(app: &str) -> u64 {
    FixedState::with_seed(SEED).hash_one(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(b: &mut SignatureBudget, app: &str, n: u32, now_ms: u64) -> u32 {
        (0..n).filter(|_| b.admit(app, now_ms).is_ok()).count() as u32
    }

    #[test]
    fn a_worker_checks_at_most_its_bound_in_a_second_then_again_the_next() {
        let mut b = SignatureBudget::new(100);
        for i in 0..10 {
            b.verified(&format!("app{i}"), 0);
        }
        let total: u32 = (0..10)
            .map(|i| admitted(&mut b, &format!("app{i}"), 50, 1_000))
            .sum();
        assert_eq!(total, 100);
        assert_eq!(b.admit("app0", 1_999), Err(Busy::Worker));
        assert_eq!(admitted(&mut b, "app0", 50, 2_000), 10);
    }

    #[test]
    fn a_flood_under_new_app_names_leaves_known_apps_half_the_bound() {
        let mut b = SignatureBudget::new(100);
        for i in 0..10 {
            b.verified(&format!("known{i}"), 0);
        }
        // Forged tokens, each under a name of its own, as fast as they come.
        let flood = (0..10_000)
            .filter(|i| b.admit(&format!("forged{i}"), 5_000).is_ok())
            .count();
        assert_eq!(flood, 50);
        assert_eq!(b.admit("forged-more", 5_000), Err(Busy::UnknownApps));
        // Every known app still gets its share of the other half that second.
        let known: u32 = (0..10)
            .map(|i| admitted(&mut b, &format!("known{i}"), 5, 5_000))
            .sum();
        assert_eq!(known, 50);
    }

    #[test]
    fn a_flood_naming_one_known_app_spends_that_apps_share_only() {
        let mut b = SignatureBudget::new(100);
        b.verified("victim", 0);
        b.verified("other", 0);
        assert_eq!(admitted(&mut b, "victim", 10_000, 1_000), 10);
        assert_eq!(b.admit("victim", 1_000), Err(Busy::App));
        assert_eq!(admitted(&mut b, "other", 10, 1_000), 10);
        // A new app too, from the unknown share.
        assert_eq!(b.admit("newcomer", 1_000), Ok(()));
    }

    #[test]
    fn an_app_is_known_for_a_day_after_its_last_verified_token() {
        let mut b = SignatureBudget::new(10);
        b.verified("app", 0);
        // Unknown share: 5 a second; the app's own: 1. Known: not held to the unknown share.
        for i in 0..5 {
            b.admit(&format!("x{i}"), 1_000).unwrap();
        }
        assert_eq!(b.admit("app", 1_000), Ok(()));
        for i in 0..5 {
            b.admit(&format!("y{i}"), KNOWN_FOR_MS + 1_000).unwrap();
        }
        assert_eq!(b.admit("app", KNOWN_FOR_MS + 1_000), Err(Busy::UnknownApps));
    }

    #[test]
    fn the_known_apps_it_remembers_are_bounded() {
        let mut b = SignatureBudget::new(10);
        for i in 0..(MAX_KNOWN + 1_000) {
            b.verified(&format!("app{i}"), 1_000);
        }
        assert_eq!(b.known.len(), MAX_KNOWN);
        // A day later the old ones make room.
        b.verified("late", KNOWN_FOR_MS + 2_000);
        assert_eq!(b.known.len(), 1);
        // A bound of 0 still lets one check a second through.
        let mut zero = SignatureBudget::new(0);
        assert_eq!(zero.admit("a", 0), Ok(()));
        assert_eq!(zero.admit("a", 0), Err(Busy::Worker));
    }
}
