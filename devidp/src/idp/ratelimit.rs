//! Okta-like rate limits per endpoint, switchable at run time, so tests and `make soak` can run
//! against limits like Okta's.
//!
//! Like Okta, a limit is a number of requests per fixed window (a minute by default) that
//! resets at a known time: every answer of a limited endpoint carries `X-Rate-Limit-Limit`,
//! `X-Rate-Limit-Remaining` and `X-Rate-Limit-Reset` (epoch seconds of the window's end), and
//! beyond the limit the endpoint answers 429 with Okta's `E0000047` body until the reset.
//! Windows are aligned on multiples of their length since the epoch (a minute starts at :00).
//! The limit applies before faults (Okta's limiter is in front of everything), and every
//! request still counts in the endpoint's calls. Each endpoint counts the 429s it answered.
//!
//! Set through [`IdpHandle::set_rate_limit`] or the admin API:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /_dev/rate_limit` | `{"endpoint":"token","limit":50,"window_secs":60}` (`window_secs` default 60) | 204 |
//! | `DELETE /_dev/rate_limit[?endpoint=token]` | | 204 (all endpoints without `endpoint`) |
//! | `GET /_dev/rate_limit` | | 200 `{"token":{"limit","window_secs","used","remaining","reset","rate_limited"} or null, ...}` |
//!
//! Setting or clearing an endpoint's limit starts its window and its count of 429s afresh.
//!
//! ## Concurrent requests
//!
//! Okta also limits the requests an org has in progress at once, across all its endpoints
//! (Integrator Free orgs: 35; Workforce and Customer Identity orgs: 75). A request beyond that
//! limit is answered at once with 429 and the same `E0000047` body; `X-Rate-Limit-Limit` and
//! `X-Rate-Limit-Remaining` are then `0`, and `X-Rate-Limit-Reset` is an estimate (here: a minute
//! ahead; Okta's documented example is two minutes ahead). Here the limit covers the four
//! endpoints that count calls (discovery, token, introspect, keys) and `/v1/revoke`, not the
//! admin API. A request is in progress from the moment its body was read until its answer is
//! ready, the configured latency and any fault's delay included; one refused for concurrency
//! never counts as in progress, nor toward a per-endpoint window. It is checked first, before
//! the per-endpoint limits. The server counts the 429s it answered for concurrency and the
//! largest number of requests it had in progress at once (kept whether or not a limit is set).
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /_dev/concurrency` | `{"limit":35}` | 204 |
//! | `DELETE /_dev/concurrency` | | 204 |
//! | `GET /_dev/concurrency` | | 200 `{"limit" (or null),"in_flight","max_in_flight","rate_limited"}` |
//!
//! Setting or clearing the limit starts its count of 429s afresh, and the maximum from the
//! requests in progress at that moment.

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Endpoint, IdpHandle, Req, Shared};
use crate::serve::Resp;
use crate::util::{self, json_response, method_not_allowed, okta_error, response};

/// A limit: at most `limit` requests per window of `window_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub window_secs: u64,
}

impl RateLimit {
    /// `limit` requests per minute, as Okta counts.
    pub fn per_minute(limit: u32) -> RateLimit {
        RateLimit {
            limit,
            window_secs: 60,
        }
    }
}

/// One endpoint's limit and its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    limit: RateLimit,
    /// Index of the current window (epoch seconds / window length).
    index: i64,
    used: u32,
    /// 429s answered since the limit was set.
    rate_limited: u64,
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decision {
    limit: u32,
    remaining: u32,
    /// Epoch seconds of the window's end.
    reset: i64,
    allowed: bool,
}

/// Every endpoint's limit (none by default).
#[derive(Debug, Default)]
pub(super) struct Limits {
    windows: [Option<Window>; Endpoint::ALL.len()],
}

impl Limits {
    /// Counts one request at `now_s`; `None` when the endpoint has no limit.
    pub(super) fn check(&mut self, ep: Endpoint, now_s: i64) -> Option<Decision> {
        let w = self.windows[ep.index()].as_mut()?;
        let length = i64::try_from(w.limit.window_secs.max(1)).unwrap_or(i64::MAX);
        let index = now_s.div_euclid(length);
        if index != w.index {
            w.index = index;
            w.used = 0;
        }
        let allowed = w.used < w.limit.limit;
        if allowed {
            w.used += 1;
        } else {
            w.rate_limited += 1;
        }
        Some(Decision {
            limit: w.limit.limit,
            remaining: w.limit.limit - w.used,
            reset: index.saturating_add(1).saturating_mul(length),
            allowed,
        })
    }

    fn set(&mut self, ep: Endpoint, limit: Option<RateLimit>) {
        self.windows[ep.index()] = limit.map(|limit| Window {
            limit,
            index: i64::MIN,
            used: 0,
            rate_limited: 0,
        });
    }

    fn describe(&self, ep: Endpoint, now_s: i64) -> Value {
        let Some(mut w) = self.windows[ep.index()] else {
            return Value::Null;
        };
        let length = i64::try_from(w.limit.window_secs.max(1)).unwrap_or(i64::MAX);
        let index = now_s.div_euclid(length);
        if index != w.index {
            w.used = 0;
        }
        json!({
            "limit": w.limit.limit,
            "window_secs": w.limit.window_secs,
            "used": w.used,
            "remaining": w.limit.limit - w.used,
            "reset": index.saturating_add(1).saturating_mul(length),
            "rate_limited": w.rate_limited,
        })
    }
}

/// The org's concurrent-request limit (none by default) and what it saw.
#[derive(Debug, Default)]
pub(super) struct Concurrency {
    limit: Option<u32>,
    in_flight: u32,
    max_in_flight: u32,
    /// 429s answered for concurrency since the limit was set.
    rate_limited: u64,
}

impl Concurrency {
    /// Admits one request, which is then in progress until [`Concurrency::release`]; false (and
    /// counted as a 429) when the limit is reached.
    pub(super) fn admit(&mut self) -> bool {
        if self.limit.is_some_and(|limit| self.in_flight >= limit) {
            self.rate_limited += 1;
            return false;
        }
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
        true
    }

    /// One admitted request is answered (or gone).
    pub(super) fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn set(&mut self, limit: Option<u32>) {
        self.limit = limit;
        self.rate_limited = 0;
        self.max_in_flight = self.in_flight;
    }

    /// Forgets the maximum seen so far (it restarts from the requests in progress now).
    pub(super) fn reset_max(&mut self) {
        self.max_in_flight = self.in_flight;
    }

    fn describe(&self) -> Value {
        json!({
            "limit": self.limit,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": self.rate_limited,
        })
    }
}

/// How far ahead a concurrency 429's `X-Rate-Limit-Reset` is (Okta: "only an estimate").
pub(super) const CONCURRENCY_RESET_SECS: i64 = 60;

/// Okta's 429 for a request beyond the concurrent-request limit: `X-Rate-Limit-Limit` and
/// `X-Rate-Limit-Remaining` are 0, `X-Rate-Limit-Reset` an estimate.
pub(super) fn concurrency_refusal(now_s: i64) -> Resp {
    let mut resp = okta_error(
        StatusCode::TOO_MANY_REQUESTS,
        "E0000047",
        "API call exceeded rate limit due to too many requests.",
    );
    let d = Decision {
        limit: 0,
        remaining: 0,
        reset: now_s.saturating_add(CONCURRENCY_RESET_SECS),
        allowed: false,
    };
    annotate(&mut resp, Some(&d));
    util::set_header(&mut resp, "x-okta-request-id", &util::random_id(27));
    resp
}

/// Okta's 429 when the limiter refused the request.
pub(super) fn refusal(decision: Option<&Decision>) -> Option<Resp> {
    let d = decision.filter(|d| !d.allowed)?;
    let mut resp = okta_error(
        StatusCode::TOO_MANY_REQUESTS,
        "E0000047",
        "API call exceeded rate limit due to too many requests.",
    );
    annotate(&mut resp, Some(d));
    util::set_header(&mut resp, "x-okta-request-id", &util::random_id(27));
    Some(resp)
}

/// Okta's rate-limit headers on an answer of a limited endpoint (replacing any already there).
pub(super) fn annotate(resp: &mut Resp, decision: Option<&Decision>) {
    let Some(d) = decision else {
        return;
    };
    for (name, value) in [
        ("x-rate-limit-limit", d.limit.to_string()),
        ("x-rate-limit-remaining", d.remaining.to_string()),
        ("x-rate-limit-reset", d.reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
}

impl IdpHandle {
    /// Limits `ep` to `limit` (replacing any limit it had, with a fresh window and count).
    pub fn set_rate_limit(&self, ep: Endpoint, limit: RateLimit) {
        self.shared.lock().limits.set(ep, Some(limit));
    }

    /// Removes `ep`'s limit.
    pub fn clear_rate_limit(&self, ep: Endpoint) {
        self.shared.lock().limits.set(ep, None);
    }

    /// Removes every per-endpoint limit (not the concurrent-request limit).
    pub fn clear_rate_limits(&self) {
        self.shared.lock().limits = Limits::default();
    }

    /// The 429s `ep`'s limiter answered since its limit was set (0 without a limit). Not the
    /// 429s for concurrency: see [`IdpHandle::concurrency_limited`].
    pub fn rate_limited(&self, ep: Endpoint) -> u64 {
        self.shared.lock().limits.windows[ep.index()].map_or(0, |w| w.rate_limited)
    }

    /// Limits the requests in progress at once, all Okta endpoints together, to `limit` (Okta:
    /// 35 on Integrator Free orgs, 75 on paid ones); replaces any such limit, and starts its
    /// count of 429s and the maximum in progress afresh.
    pub fn set_concurrency_limit(&self, limit: u32) {
        self.shared.lock().concurrency.set(Some(limit));
    }

    /// Removes the concurrent-request limit (the count of 429s and the maximum start afresh).
    pub fn clear_concurrency_limit(&self) {
        self.shared.lock().concurrency.set(None);
    }

    /// The 429s answered for concurrency since the limit was set or cleared.
    pub fn concurrency_limited(&self) -> u64 {
        self.shared.lock().concurrency.rate_limited
    }

    /// Okta-endpoint requests in progress now.
    pub fn in_flight(&self) -> u32 {
        self.shared.lock().concurrency.in_flight
    }

    /// The most Okta-endpoint requests in progress at once since the server started, the
    /// concurrency limit was set or cleared, or [`IdpHandle::reset_counters`] (with or without
    /// a limit).
    pub fn max_in_flight(&self) -> u32 {
        self.shared.lock().concurrency.max_in_flight
    }
}

/// `POST /_dev/rate_limit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitDto {
    endpoint: String,
    limit: u32,
    #[serde(default = "minute")]
    window_secs: u64,
}

fn minute() -> u64 {
    60
}

fn bad_request(message: &str) -> Resp {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

fn unknown_endpoint() -> Resp {
    bad_request("'endpoint' must be one of discovery, token, introspect, keys")
}

/// The admin API's `/_dev/rate_limit`.
pub(super) fn admin(shared: &Shared, req: &Req) -> Resp {
    match req.method {
        Method::GET => current(shared),
        Method::POST => set_from(shared, req.body.as_deref().unwrap_or_default()),
        Method::DELETE => clear_from(shared, req.query.as_deref()),
        _ => method_not_allowed("GET, POST, DELETE"),
    }
}

/// `POST /_dev/concurrency`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcurrencyDto {
    limit: u32,
}

/// The admin API's `/_dev/concurrency`.
pub(super) fn concurrency_admin(shared: &Shared, req: &Req) -> Resp {
    match req.method {
        Method::GET => json_response(StatusCode::OK, &shared.lock().concurrency.describe()),
        Method::POST => {
            let body = req.body.as_deref().unwrap_or_default();
            match serde_json::from_slice::<ConcurrencyDto>(body) {
                Ok(dto) => {
                    shared.lock().concurrency.set(Some(dto.limit));
                    response(StatusCode::NO_CONTENT, None, "")
                }
                Err(e) => invalid_json(&e),
            }
        }
        Method::DELETE => {
            shared.lock().concurrency.set(None);
            response(StatusCode::NO_CONTENT, None, "")
        }
        _ => method_not_allowed("GET, POST, DELETE"),
    }
}

/// 400 naming what is wrong with a JSON body (the serde error names the field; it never quotes
/// a value back).
fn invalid_json(e: &serde_json::Error) -> Resp {
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line") {
        msg.truncate(i);
    }
    bad_request(&format!("invalid JSON body: {}", msg.replace('`', "'")))
}

fn current(shared: &Shared) -> Resp {
    let now = util::now();
    let limits = &shared.lock().limits;
    let mut out = Map::new();
    for ep in Endpoint::ALL {
        out.insert(ep.name().into(), limits.describe(ep, now));
    }
    json_response(StatusCode::OK, &Value::Object(out))
}

fn set_from(shared: &Shared, body: &[u8]) -> Resp {
    let dto: RateLimitDto = match serde_json::from_slice(body) {
        Ok(dto) => dto,
        Err(e) => return invalid_json(&e),
    };
    let Some(ep) = Endpoint::from_name(&dto.endpoint) else {
        return unknown_endpoint();
    };
    if dto.window_secs == 0 {
        return bad_request("'window_secs' must be at least 1");
    }
    let limit = RateLimit {
        limit: dto.limit,
        window_secs: dto.window_secs,
    };
    shared.lock().limits.set(ep, Some(limit));
    response(StatusCode::NO_CONTENT, None, "")
}

fn clear_from(shared: &Shared, query: Option<&str>) -> Resp {
    let endpoint = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "endpoint")
            .map(|(_, v)| v.into_owned())
    });
    match endpoint.map(|name| Endpoint::from_name(&name)) {
        None => shared.lock().limits = Limits::default(),
        Some(Some(ep)) => shared.lock().limits.set(ep, None),
        Some(None) => return unknown_endpoint(),
    }
    response(StatusCode::NO_CONTENT, None, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000; // a multiple of 20, not of 60

    fn limited(limit: u32, window_secs: u64) -> Limits {
        let mut l = Limits::default();
        l.set(Endpoint::Token, Some(RateLimit { limit, window_secs }));
        l
    }

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_it_resets() {
        let mut l = limited(3, 60);
        let reset = (NOW / 60 + 1) * 60;
        for remaining in [2, 1, 0] {
            let d = l.check(Endpoint::Token, NOW).unwrap();
            assert_eq!(
                d,
                Decision {
                    limit: 3,
                    remaining,
                    reset,
                    allowed: true
                }
            );
        }
        for _ in 0..5 {
            let d = l.check(Endpoint::Token, reset - 1).unwrap();
            assert!(!d.allowed);
            assert_eq!((d.remaining, d.reset), (0, reset));
        }
        assert_eq!(l.windows[Endpoint::Token.index()].unwrap().rate_limited, 5);
        // the next window starts afresh
        let d = l.check(Endpoint::Token, reset).unwrap();
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset), (2, reset + 60));
    }

    #[test]
    fn endpoints_are_limited_separately_and_unlimited_by_default() {
        let mut l = limited(1, 60);
        assert!(l.check(Endpoint::Token, NOW).unwrap().allowed);
        assert!(!l.check(Endpoint::Token, NOW).unwrap().allowed);
        for ep in [Endpoint::Introspect, Endpoint::Discovery, Endpoint::Keys] {
            assert_eq!(l.check(ep, NOW), None);
        }
        l.set(Endpoint::Token, None);
        assert_eq!(l.check(Endpoint::Token, NOW), None);
    }

    #[test]
    fn a_zero_limit_refuses_everything_and_windows_are_aligned() {
        let mut l = limited(0, 20);
        let d = l.check(Endpoint::Token, NOW).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reset, NOW + 20);
        let d = l.check(Endpoint::Token, NOW + 19).unwrap();
        assert_eq!(d.reset, NOW + 20);
        assert_eq!(l.describe(Endpoint::Token, NOW)["rate_limited"], json!(2));
        assert_eq!(l.describe(Endpoint::Keys, NOW), Value::Null);
    }

    #[test]
    fn concurrency_admits_up_to_its_limit_and_counts_refusals_and_the_maximum() {
        let mut c = Concurrency::default();
        // without a limit everything is admitted, and the maximum is still kept
        for _ in 0..5 {
            assert!(c.admit());
        }
        assert_eq!((c.in_flight, c.max_in_flight, c.rate_limited), (5, 5, 0));
        for _ in 0..5 {
            c.release();
        }
        c.set(Some(2));
        assert_eq!((c.in_flight, c.max_in_flight), (0, 0));
        assert!(c.admit());
        assert!(c.admit());
        assert!(!c.admit());
        assert!(!c.admit());
        assert_eq!((c.in_flight, c.max_in_flight, c.rate_limited), (2, 2, 2));
        // one answered: room for one more
        c.release();
        assert!(c.admit());
        assert!(!c.admit());
        assert_eq!(c.rate_limited, 3);
        // a limit of 0 refuses everything; clearing starts the counts afresh
        c.set(Some(0));
        assert!(!c.admit());
        assert_eq!(c.describe()["rate_limited"], json!(1));
        assert_eq!(c.describe()["limit"], json!(0));
        c.set(None);
        assert_eq!(c.describe()["limit"], Value::Null);
        assert_eq!((c.in_flight, c.max_in_flight, c.rate_limited), (2, 2, 0));
        c.release();
        c.release();
        c.release(); // never below zero
        assert_eq!(c.in_flight, 0);
        c.reset_max();
        assert_eq!(c.max_in_flight, 0);
    }

    #[test]
    fn a_concurrency_refusal_says_0_and_0_and_an_estimated_reset() {
        let resp = concurrency_refusal(NOW);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = |n: &str| resp.headers().get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-rate-limit-limit"), "0");
        assert_eq!(h("x-rate-limit-remaining"), "0");
        assert_eq!(
            h("x-rate-limit-reset"),
            (NOW + CONCURRENCY_RESET_SECS).to_string()
        );
        assert!(resp.headers().get("x-okta-request-id").is_some());
    }

    #[test]
    fn refusal_is_oktas_429_with_the_headers() {
        let mut l = limited(1, 60);
        let ok = l.check(Endpoint::Token, NOW);
        assert!(refusal(ok.as_ref()).is_none());
        assert!(refusal(None).is_none());
        let no = l.check(Endpoint::Token, NOW);
        let resp = refusal(no.as_ref()).unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = |n: &str| resp.headers().get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-rate-limit-limit"), "1");
        assert_eq!(h("x-rate-limit-remaining"), "0");
        assert_eq!(h("x-rate-limit-reset"), ((NOW / 60 + 1) * 60).to_string());
        assert_eq!(
            resp.headers().get_all("x-rate-limit-limit").iter().count(),
            1
        );
    }
}
