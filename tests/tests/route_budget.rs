//! Each route configuration has an IdP call budget of its own (docs/operations.md, "Abuse
//! resistance"): an anonymous flood on one route spends nothing of another route's budget or
//! its refresh reserve. Before, every route of an Okta org checked its own limit against one
//! shared window, and a flood on a route with a large budget left a route with a smaller one
//! without calls: its known apps were served 50 of 594 times (8.4%).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::client::KeepAlive;
use okta_dcr_auth_tests::*;
use serde_json::json;

#[test]
fn a_flood_on_one_route_leaves_another_routes_known_apps_their_refreshes() {
    let stack = Stack::builder()
        .route(
            "/a/",
            filter_config(json!({ "idp_calls_per_minute": 3_000, "max_client_failures": 0 })),
        )
        .route(
            "/b/",
            filter_config(json!({ "idp_calls_per_minute": 300, "cache_ttl_s": 3 })),
        )
        // Tens of thousands of refusals: a log at trace would be gigabytes to sweep.
        .component_log_level("wasm", "info")
        .start();
    let apps: Vec<TestClient> = (0..5)
        .map(|i| {
            stack.client(
                &format!("0oa9routeB{i}"),
                &format!("routeB-Secret_{i}q"),
                &[SCOPE],
            )
        })
        .collect();
    for app in &apps {
        let r = stack.get("/b/r", &[("authorization", &app.basic())]);
        assert_eq!(r.status, 200, "{r:#?}");
    }
    let before = stack.token_calls();
    let stop = AtomicBool::new(false);
    let (known, flood) = std::thread::scope(|s| {
        let flooders: Vec<_> = (0..3)
            .map(|t| {
                let (stack, stop) = (&stack, &stop);
                s.spawn(move || {
                    let mut conn = KeepAlive::new(stack.listener());
                    let mut statuses = BTreeMap::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) && i < 200_000 {
                        let bogus = basic_header(&format!("0oa9floodA{t}x{i}"), "bogus-Secret_1");
                        let status = conn.get("/a/x", &bogus).unwrap_or(0);
                        *statuses.entry(status).or_insert(0u64) += 1;
                        i += 1;
                    }
                    statuses
                })
            })
            .collect();
        // The known apps of route B call on for 12 s: each verdict expires every 3 s.
        let mut known = BTreeMap::new();
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            for app in &apps {
                let status = stack.get("/b/r", &[("authorization", &app.basic())]).status;
                *known.entry(status).or_insert(0u64) += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        let mut flood = BTreeMap::new();
        for f in flooders {
            for (status, n) in f.join().unwrap_or_default() {
                *flood.entry(status).or_insert(0u64) += n;
            }
        }
        (known, flood)
    });
    let calls = stack.token_calls() - before;
    eprintln!(
        "route B's known apps: {known:?}; the flood on route A: {flood:?}; {calls} token calls"
    );
    let total: u64 = known.values().sum();
    let served = known.get(&200).copied().unwrap_or(0);
    assert!(
        served * 1000 >= total * 999,
        "route B's known apps served {served} of {total}: {known:?}"
    );
    // The flood was real: it spent more than route B's whole budget for the minute.
    assert!(calls > 300, "{calls} token calls");
    assert!(flood.keys().all(|s| [401, 503].contains(s)), "{flood:?}");
}
