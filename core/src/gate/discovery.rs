//! Discovery of the issuer's endpoints: its states (ready, a call out, a retry due), the
//! backoff between attempts, configured endpoints that win over discovered ones, and the
//! shared record through which one worker's discovery serves every worker. No I/O: the gate
//! sends the calls this asks for and hands back what came of them.

use crate::config::{Endpoints, Needs};
use crate::okta::{DiscoveryDocument, DiscoveryError};

/// Discovery retries back off from this to `MAX_BACKOFF_MS`.
const MIN_BACKOFF_MS: u64 = 500;
const MAX_BACKOFF_MS: u64 = 15_000;
/// Discovered endpoints shared between workers are trusted this long.
const SHARED_TTL_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    InFlight { attempt: u32 },
    RetryAt { at_ms: u64, attempt: u32 },
}

/// What the gate should do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The endpoints are known; `newly` when this answer made them so.
    Ready { newly: bool },
    /// Ask for this document now.
    Fetch(DiscoveryDocument),
    /// This attempt failed: the next one is due in `in_ms`.
    Retry { in_ms: u64, why: String },
}

#[derive(Debug, Clone)]
pub struct Discovery {
    state: State,
    configured: Endpoints,
    endpoints: Endpoints,
    needs: Needs,
}

impl Discovery {
    /// Ready at once when the configuration names every endpoint it needs; otherwise the
    /// first attempt is due now.
    pub fn new(configured: Endpoints, needs: Needs) -> Discovery {
        let state = if configured.covers(needs) {
            State::Ready
        } else {
            State::RetryAt {
                at_ms: 0,
                attempt: 0,
            }
        };
        Discovery {
            state,
            endpoints: configured.clone(),
            configured,
            needs,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::InFlight { .. })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// When the next attempt is due, if one is waiting to be made.
    pub fn retry_at(&self) -> Option<u64> {
        match self.state {
            State::RetryAt { at_ms, .. } => Some(at_ms),
            _ => None,
        }
    }

    pub fn due(&self, now_ms: u64) -> bool {
        self.retry_at().is_some_and(|at| at <= now_ms)
    }

    fn attempt(&self) -> u32 {
        match self.state {
            State::RetryAt { attempt, .. } | State::InFlight { attempt } => attempt,
            State::Ready => 0,
        }
    }

    /// A discovery call was sent.
    pub fn sent(&mut self) {
        if !self.is_ready() {
            self.state = State::InFlight {
                attempt: self.attempt(),
            };
        }
    }

    /// This attempt failed (`why`, for the log): schedules the next one.
    pub fn failed(&mut self, now_ms: u64, why: impl Into<String>) -> Next {
        let attempt = self.attempt();
        let in_ms = (MIN_BACKOFF_MS << attempt.min(10)).min(MAX_BACKOFF_MS);
        self.state = State::RetryAt {
            at_ms: now_ms + in_ms,
            attempt: attempt + 1,
        };
        Next::Retry {
            in_ms,
            why: why.into(),
        }
    }

    /// What came of asking for `doc`. A second answer (several calls were out) changes nothing
    /// once discovery is done.
    pub fn on_answer(
        &mut self,
        doc: DiscoveryDocument,
        result: Result<Endpoints, DiscoveryError>,
        now_ms: u64,
    ) -> Next {
        if self.is_ready() {
            return Next::Ready { newly: false };
        }
        match result {
            Ok(found) => self.found(found, now_ms),
            Err(DiscoveryError::NotFound) if doc == DiscoveryDocument::OAuthAuthorizationServer => {
                Next::Fetch(DiscoveryDocument::OpenIdConfiguration)
            }
            Err(DiscoveryError::NotFound) => self.failed(now_ms, "no discovery document (404)"),
            Err(DiscoveryError::Mismatch(why)) => self.failed(now_ms, why),
            Err(DiscoveryError::Failed(f)) => self.failed(now_ms, f.describe()),
        }
    }

    fn found(&mut self, found: Endpoints, now_ms: u64) -> Next {
        let endpoints = self.configured.or(found);
        if !endpoints.covers(self.needs) {
            return self.failed(now_ms, "the discovery document lacks a needed endpoint");
        }
        self.endpoints = endpoints;
        self.state = State::Ready;
        Next::Ready { newly: true }
    }

    /// The shared record of the endpoints in use: when, then each `:path` (empty for none).
    pub fn record(&self, now_ms: u64) -> Vec<u8> {
        let e = &self.endpoints;
        format!(
            "{}\n{}\n{}\n{}",
            now_ms,
            e.token_path.as_deref().unwrap_or_default(),
            e.introspection_path.as_deref().unwrap_or_default(),
            e.jwks_path.as_deref().unwrap_or_default(),
        )
        .into_bytes()
    }

    /// Takes the endpoints another worker discovered, if its record is fresh and covers what
    /// this configuration needs. Configured endpoints still win.
    pub fn adopt(&mut self, record: &[u8], now_ms: u64) -> bool {
        let Ok(text) = std::str::from_utf8(record) else {
            return false;
        };
        let mut parts = text.split('\n');
        let (Some(at), Some(token), Some(introspect), Some(jwks), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return false;
        };
        let fresh = at
            .parse::<u64>()
            .is_ok_and(|at| now_ms.saturating_sub(at) < SHARED_TTL_MS);
        let path = |p: &str| (!p.is_empty()).then(|| p.to_string());
        let endpoints = self.configured.or(Endpoints {
            token_path: path(token),
            introspection_path: path(introspect),
            jwks_path: path(jwks),
        });
        if !fresh || !endpoints.covers(self.needs) {
            return false;
        }
        self.endpoints = endpoints;
        self.state = State::Ready;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::okta::IdpFailure;

    const BOTH: Needs = Needs {
        token: true,
        introspection: true,
        jwks: true,
    };
    const NOW: u64 = 1_700_000_000_000;

    fn found() -> Endpoints {
        Endpoints {
            token_path: Some("/t".into()),
            introspection_path: Some("/i".into()),
            jwks_path: Some("/k".into()),
        }
    }

    #[test]
    fn configured_endpoints_need_no_discovery() {
        let d = Discovery::new(found(), BOTH);
        assert!(d.is_ready() && d.retry_at().is_none());
        let d = Discovery::new(
            Endpoints {
                token_path: Some("/t".into()),
                ..Endpoints::default()
            },
            BOTH,
        );
        assert_eq!(d.retry_at(), Some(0), "the first attempt is due at once");
    }

    #[test]
    fn rfc8414_404_falls_back_to_openid_configuration_then_backs_off() {
        let mut d = Discovery::new(Endpoints::default(), BOTH);
        d.sent();
        assert!(d.in_flight());
        let next = d.on_answer(
            DiscoveryDocument::OAuthAuthorizationServer,
            Err(DiscoveryError::NotFound),
            NOW,
        );
        assert_eq!(next, Next::Fetch(DiscoveryDocument::OpenIdConfiguration));
        d.sent();
        let next = d.on_answer(
            DiscoveryDocument::OpenIdConfiguration,
            Err(DiscoveryError::NotFound),
            NOW,
        );
        assert!(matches!(next, Next::Retry { in_ms: 500, .. }), "{next:?}");
        assert_eq!(d.retry_at(), Some(NOW + 500));
        let mut last = 0;
        for _ in 0..12 {
            d.sent();
            let Next::Retry { in_ms, .. } = d.failed(NOW, "x") else {
                panic!("a failure retries")
            };
            assert!(in_ms >= last && in_ms <= 15_000);
            last = in_ms;
        }
        assert_eq!(last, 15_000);
    }

    #[test]
    fn configured_endpoints_win_and_gaps_must_be_filled() {
        let configured = Endpoints {
            token_path: Some("/mine".into()),
            ..Endpoints::default()
        };
        let mut d = Discovery::new(configured, BOTH);
        let only_token = Endpoints {
            token_path: Some("/t".into()),
            ..Endpoints::default()
        };
        let next = d.on_answer(
            DiscoveryDocument::OAuthAuthorizationServer,
            Ok(only_token),
            NOW,
        );
        assert!(matches!(next, Next::Retry { .. }));
        let next = d.on_answer(
            DiscoveryDocument::OAuthAuthorizationServer,
            Ok(found()),
            NOW,
        );
        assert_eq!(next, Next::Ready { newly: true });
        assert_eq!(d.endpoints().token_path.as_deref(), Some("/mine"));
        assert_eq!(d.endpoints().introspection_path.as_deref(), Some("/i"));
        let again = d.on_answer(
            DiscoveryDocument::OAuthAuthorizationServer,
            Err(DiscoveryError::Failed(IdpFailure::NoAnswer)),
            NOW,
        );
        assert_eq!(again, Next::Ready { newly: false });
    }

    #[test]
    fn shared_record_serves_other_workers_while_fresh() {
        let mut a = Discovery::new(Endpoints::default(), BOTH);
        a.on_answer(
            DiscoveryDocument::OAuthAuthorizationServer,
            Ok(found()),
            NOW,
        );
        let record = a.record(NOW);
        let mut b = Discovery::new(Endpoints::default(), BOTH);
        assert!(!b.adopt(&record, NOW + SHARED_TTL_MS), "stale record");
        assert!(!b.adopt(b"garbage", NOW));
        assert!(
            !b.adopt(format!("{NOW}\n/t\n/i\n").as_bytes(), NOW),
            "a gap"
        );
        assert!(
            !b.adopt(format!("{NOW}\n/t\n/i").as_bytes(), NOW),
            "an older record without the key set's path"
        );
        assert!(b.adopt(&record, NOW + 1));
        assert!(b.is_ready());
        assert_eq!(b.endpoints(), a.endpoints());
    }
}
