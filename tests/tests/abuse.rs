//! Abuse resistance (issue 11) in real Envoy: an anonymous client with a fast loop cannot spend
//! Okta's rate limit, evict a valid verdict, or lock a live app out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::client::KeepAlive;
use okta_dcr_auth_tests::*;
use serde_json::json;

/// Sends requests with `authorization(thread, i)` on `threads` keep-alive connections until
/// `stop` is set or `duration` has passed; the count of each status.
fn flood(
    stack: &Stack,
    threads: usize,
    duration: Duration,
    stop: &AtomicBool,
    authorization: impl Fn(usize, usize) -> String + Sync,
) -> BTreeMap<u16, u64> {
    let addr = stack.listener();
    let until = Instant::now() + duration;
    let authorization = &authorization;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut conn = KeepAlive::new(addr);
                    let mut statuses = BTreeMap::new();
                    let mut i = 0;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        let status = conn
                            .get("/", &authorization(t, i))
                            .unwrap_or_else(|e| panic!("flood request {t}/{i}: {e}"));
                        *statuses.entry(status).or_insert(0u64) += 1;
                        i += 1;
                    }
                    statuses
                })
            })
            .collect();
        let mut total = BTreeMap::new();
        for h in handles {
            let statuses = h
                .join()
                .unwrap_or_else(|_| panic!("a flood thread panicked"));
            for (status, n) in statuses {
                *total.entry(status).or_insert(0) += n;
            }
        }
        total
    })
}

/// A stack for a flood: the wasm log at info (at trace, every host call of every flood request
/// would be logged, and the drop-time secret sweep would read millions of lines).
fn flood_stack(config: serde_json::Value) -> Stack {
    Stack::builder()
        .route("/", filter_config(config))
        .component_log_level("wasm", "info")
        .start()
}

fn ratio_ok(statuses: &BTreeMap<u16, u64>) -> f64 {
    let total: u64 = statuses.values().sum();
    statuses.get(&200).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

#[test]
fn bad_secrets_never_lock_out_a_live_client() {
    let stack = Stack::start(filter_config(json!({ "cache_ttl_s": 1 })));
    let app = stack.client("0oa8liveApp", "live-Secret_1a2b3c4d", &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "{r:#?}");
    for i in 0..5 {
        let guess = format!("guess-Secret_{i}");
        stack.track_secret(&guess);
        let r = stack.get("/", &[("authorization", &app.basic_with_secret(&guess))]);
        assert_eq!(r.status, 401);
    }
    let calls = stack.token_calls();
    let r = stack.get(
        "/",
        &[("authorization", &app.basic_with_secret("guess-Secret_6"))],
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        stack.token_calls(),
        calls,
        "the sixth guess is refused locally"
    );
    // the live secret still passes, from the cache and once its verdict expired
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "{r:#?}");
    std::thread::sleep(Duration::from_millis(1_100));
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "a refresh is never throttled: {r:#?}");
    assert_eq!(stack.token_calls(), calls + 1);
}

#[test]
fn a_flood_of_bogus_credentials_then_an_outage_keeps_every_valid_client() {
    let slots = 64;
    let stack = flood_stack(json!({
        "cache_slots": slots,
        "cache_ttl_s": 2,
        "stale_if_error_s": 600,
        "idp_calls_per_minute": 100_000,
        "max_client_failures": 0,
    }));
    let apps: Vec<TestClient> = (0..20)
        .map(|i| {
            stack.client(
                &format!("0oa8valid{i}"),
                &format!("valid-Secret_{i}x"),
                &[SCOPE],
            )
        })
        .collect();
    for app in &apps {
        let r = stack.get("/", &[("authorization", &app.basic())]);
        assert_eq!(r.status, 200, "{r:#?}");
    }
    // 10 x cache_slots distinct bogus credentials
    let stop = AtomicBool::new(false);
    let per_thread = 10 * slots / 4;
    let bogus = |t: usize, i: usize| basic_header(&format!("0oa8bogus{t}x{i}"), "bogus-Secret");
    let addr = stack.listener();
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                let mut conn = KeepAlive::new(addr);
                for i in 0..per_thread {
                    let status = conn.get("/", &bogus(t, i)).unwrap_or(0);
                    assert_eq!(status, 401, "bogus {t}/{i}");
                }
            });
        }
    });
    assert!(!stop.load(Ordering::Relaxed));
    assert!(stack.token_calls() >= (20 + 10 * slots) as u64);
    // the verdicts expire, then Okta fails: every valid client is served its stale verdict
    std::thread::sleep(Duration::from_millis(2_100));
    stack
        .idp
        .set_fault(Endpoint::Token, fault(FaultAnswer::Status(503)));
    for (i, app) in apps.iter().enumerate() {
        let r = stack.get("/", &[("authorization", &app.basic())]);
        assert_eq!(r.status, 200, "valid client {i} lost its verdict: {r:#?}");
    }
}

#[test]
fn the_budget_holds_under_a_flood_and_known_clients_keep_working() {
    // Okta-like limits on the dev IdP, well above the filter's budget (600 a minute)
    // the introspection budget: bogus opaque tokens must each be worth a call
    let stack = flood_stack(json!({
        "cache_ttl_s": 5,
        "stale_if_error_s": 60,
        "bearer_validation": "introspection",
        "bearer_format": "opaque",
    }));
    stack
        .idp
        .set_rate_limit(Endpoint::Token, RateLimit::per_minute(1_200));
    stack
        .idp
        .set_rate_limit(Endpoint::Introspect, RateLimit::per_minute(1_200));
    let apps: Vec<TestClient> = (0..20)
        .map(|i| {
            stack.client(
                &format!("0oa8known{i}"),
                &format!("known-Secret_{i}y"),
                &[SCOPE],
            )
        })
        .collect();
    for app in &apps {
        assert_eq!(
            stack.get("/", &[("authorization", &app.basic())]).status,
            200
        );
    }
    let (token_before, introspect_before) = (
        stack.idp.calls(Endpoint::Token),
        stack.idp.calls(Endpoint::Introspect),
    );
    let echo_before = stack.echo.count();
    let stop = AtomicBool::new(false);
    let duration = Duration::from_secs(20);
    let (valid, basic_flood, bearer_flood) = std::thread::scope(|s| {
        let basic = s.spawn(|| {
            flood(&stack, 3, duration, &stop, |t, i| {
                basic_header(&format!("0oa8flood{t}x{i}"), "flood-Secret")
            })
        });
        let bearer = s.spawn(|| {
            flood(&stack, 2, duration, &stop, |t, i| {
                format!("Bearer eyJhbGciOiJSUzI1NiJ9.flood{t}x{i}.bogusSignature")
            })
        });
        let valid = flood(&stack, 2, duration, &stop, |t, i| {
            apps[(t + 2 * i) % apps.len()].basic()
        });
        (valid, basic.join(), bearer.join())
    });
    let (basic_flood, bearer_flood) = (
        basic_flood.unwrap_or_else(|_| panic!("basic flood")),
        bearer_flood.unwrap_or_else(|_| panic!("bearer flood")),
    );
    eprintln!("valid {valid:?}; bogus Basic {basic_flood:?}; bogus Bearer {bearer_flood:?}");
    let token_calls = stack.idp.calls(Endpoint::Token) - token_before;
    let introspect_calls = stack.idp.calls(Endpoint::Introspect) - introspect_before;
    eprintln!("IdP calls during the flood: token {token_calls}, introspect {introspect_calls}");
    assert!(ratio_ok(&valid) >= 0.999, "known clients: {valid:?}");
    assert_eq!(
        stack.idp.rate_limited(Endpoint::Token),
        0,
        "Okta never said 429"
    );
    assert_eq!(stack.idp.rate_limited(Endpoint::Introspect), 0);
    assert!(
        token_calls <= 600,
        "token calls {token_calls} over the budget"
    );
    assert!(
        introspect_calls <= 600,
        "introspect calls {introspect_calls} over the budget"
    );
    for (what, statuses) in [("Basic", &basic_flood), ("Bearer", &bearer_flood)] {
        assert!(
            statuses.keys().all(|s| *s == 401 || *s == 503),
            "bogus {what}: {statuses:?}"
        );
        assert!(
            statuses.get(&503).copied().unwrap_or(0) > 0,
            "the budget was never reached"
        );
    }
    assert_eq!(
        stack.echo.count() - echo_before,
        valid.get(&200).copied().unwrap_or(0),
        "only the known clients reached the upstream"
    );
}
