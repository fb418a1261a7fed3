//! The dev IdP's Okta-like concurrent-request limit and its latency, over real HTTP: requests in
//! progress across all Okta endpoints are counted (the latency and fault delays included), one
//! beyond the limit gets Okta's 429 with `X-Rate-Limit-Limit: 0`, `X-Rate-Limit-Remaining: 0`,
//! the server counts those 429s and the most requests it had in progress at once; settable
//! through the handle and the admin API. Also: clones of a handle share one server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use okta_dev_idp::{Endpoint, Fault, IdpHandle, RateLimit, TokenSpec};
use serde_json::{json, Value};

fn idp() -> IdpHandle {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    idp.register_client("0oaApp", "s3cret", &["api:read"]);
    idp.register_client("0oaGateway", "gw-secret", &[]);
    idp
}

/// One request to `ep` (a valid one: each answers 200 when not limited).
fn call(idp: &IdpHandle, ep: Endpoint, token: &str) -> Answer {
    let iss = idp.issuer();
    let form = "application/x-www-form-urlencoded";
    match ep {
        Endpoint::Token => to_answer(
            agent()
                .post(format!("{iss}/v1/token"))
                .content_type(form)
                .header("authorization", basic("0oaApp", "s3cret"))
                .send("grant_type=client_credentials&scope=api%3Aread"),
        ),
        Endpoint::Introspect => to_answer(
            agent()
                .post(format!("{iss}/v1/introspect"))
                .content_type(form)
                .header("authorization", basic("0oaGateway", "gw-secret"))
                .send(format!("token={token}")),
        ),
        Endpoint::Keys => to_answer(agent().get(format!("{iss}/v1/keys")).call()),
        Endpoint::Discovery => to_answer(
            agent()
                .get(format!("{iss}/.well-known/oauth-authorization-server"))
                .call(),
        ),
        Endpoint::Registrations => to_answer(agent().get(idp.registrations_uri()).call()),
    }
}

/// `eps.len()` requests at once (one thread each, released together); the answers in order.
fn at_once(idp: &IdpHandle, eps: &[Endpoint]) -> Vec<Answer> {
    let token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    let barrier = Barrier::new(eps.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = eps
            .iter()
            .map(|&ep| {
                let (barrier, token) = (&barrier, &token);
                s.spawn(move || {
                    barrier.wait();
                    call(idp, ep, token)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn admin(idp: &IdpHandle, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let url = format!("http://{}{path}", idp.addr());
    let a = agent();
    to_answer(match (method, body) {
        ("GET", _) => a.get(url).call(),
        ("DELETE", _) => a.delete(url).call(),
        ("POST", Some(b)) => a
            .post(url)
            .content_type("application/json")
            .send(b.to_string()),
        ("PUT", _) => a.put(url).send("{}"),
        _ => panic!("{method} {path}"),
    })
}

const ALL: [Endpoint; 4] = [
    Endpoint::Token,
    Endpoint::Introspect,
    Endpoint::Keys,
    Endpoint::Discovery,
];

#[test]
fn beyond_the_concurrent_limit_every_endpoint_answers_oktas_429_with_0_and_0() {
    let idp = idp();
    // A latency long enough that all eight requests are in progress together.
    idp.set_latency(Duration::from_millis(1_500));
    idp.set_concurrency_limit(4);
    let eps: Vec<Endpoint> = ALL.iter().chain(ALL.iter()).copied().collect();
    let before = now();
    let answers = at_once(&idp, &eps);
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!((ok, refused.len()), (4, 4), "{answers:#?}");
    for a in &refused {
        assert_eq!(a.number("x-rate-limit-limit"), 0, "{a:#?}");
        assert_eq!(a.number("x-rate-limit-remaining"), 0, "{a:#?}");
        let reset = a.number("x-rate-limit-reset");
        assert!(
            reset >= before + 59 && reset <= now() + 61,
            "an estimate about a minute ahead: {reset}"
        );
        assert!(a.header("x-okta-request-id").is_some());
        let body = a.json();
        assert_eq!(body["errorCode"], "E0000047");
        assert_eq!(
            body["errorSummary"],
            "API call exceeded rate limit due to too many requests."
        );
        assert_eq!(body["errorCauses"], json!([]));
    }
    assert_eq!(idp.concurrency_limited(), 4);
    assert_eq!(idp.max_in_flight(), 4);
    assert_eq!(idp.in_flight(), 0, "every answer released its request");
    // every request counts as a call of its endpoint, refused or not
    for ep in ALL {
        assert_eq!(idp.calls(ep), 2, "{ep:?}");
    }
    // none of them was limited per endpoint (there is no such limit here)
    for ep in ALL {
        assert_eq!(idp.rate_limited(ep), 0);
    }
    // the requests are answered: room again
    idp.set_latency(Duration::ZERO);
    assert_eq!(call(&idp, Endpoint::Token, "").status, 200);
    // cleared: no limit, the counts start afresh
    idp.set_latency(Duration::from_millis(1_500));
    idp.clear_concurrency_limit();
    assert_eq!(idp.concurrency_limited(), 0);
    let answers = at_once(&idp, &eps);
    assert!(answers.iter().all(|a| a.status == 200), "{answers:#?}");
    assert_eq!(idp.concurrency_limited(), 0);
    assert_eq!(idp.max_in_flight(), 8, "kept without a limit too");
}

#[test]
fn a_fault_delay_counts_as_in_progress_and_a_concurrency_429_spends_no_window() {
    let idp = idp();
    idp.set_rate_limit(Endpoint::Token, RateLimit::per_minute(100));
    idp.set_concurrency_limit(1);
    // no latency: only the fault's delay keeps the first request in progress
    idp.set_fault(Endpoint::Token, Fault::delay(Duration::from_millis(1_500)));
    let answers = at_once(&idp, &[Endpoint::Token, Endpoint::Token]);
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "{answers:#?}");
    assert_eq!(idp.max_in_flight(), 1);
    let admitted = answers.iter().find(|a| a.status == 200).unwrap();
    assert_eq!(admitted.number("x-rate-limit-remaining"), 99);
    // a concurrency 429 on a limited endpoint says 0/0, not the window's numbers...
    let token_429 = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(token_429.number("x-rate-limit-limit"), 0);
    // ...and did not count toward the window: the next request leaves 98, not 97
    idp.clear_fault(Endpoint::Token);
    let a = call(&idp, Endpoint::Token, "");
    assert_eq!(a.status, 200);
    assert_eq!(a.number("x-rate-limit-limit"), 100);
    assert_eq!(a.number("x-rate-limit-remaining"), 98);
    assert_eq!(idp.rate_limited(Endpoint::Token), 0);
    assert_eq!(idp.concurrency_limited(), 1);
}

#[test]
fn the_latency_delays_every_okta_endpoint_and_not_the_admin_api() {
    let idp = idp();
    let latency = Duration::from_millis(300);
    idp.set_latency(latency);
    assert_eq!(idp.latency(), latency);
    idp.set_fault(Endpoint::Keys, Fault::delay(Duration::from_millis(200)));
    let token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    for ep in ALL {
        let started = Instant::now();
        let a = call(&idp, ep, &token);
        let took = started.elapsed();
        assert_eq!(a.status, 200, "{ep:?}: {a:#?}");
        let least = if ep == Endpoint::Keys {
            latency + Duration::from_millis(200)
        } else {
            latency
        };
        assert!(took >= least, "{ep:?} answered in {took:?}");
    }
    let started = Instant::now();
    assert_eq!(admin(&idp, "GET", "/_dev/stats", None).status, 200);
    assert!(started.elapsed() < latency, "the admin API has no latency");
}

#[test]
fn the_admin_api_sets_shows_and_clears_the_concurrency_limit_and_the_latency() {
    let idp = idp();
    let shown = admin(&idp, "GET", "/_dev/concurrency", None);
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(
        shown.json(),
        json!({"limit": null, "in_flight": 0, "max_in_flight": 0, "rate_limited": 0})
    );
    let set = admin(&idp, "POST", "/_dev/latency", Some(&json!({"ms": 1_500})));
    assert_eq!(set.status, 204, "{}", set.body);
    assert_eq!(idp.latency(), Duration::from_millis(1_500));
    assert_eq!(
        admin(&idp, "GET", "/_dev/latency", None).json(),
        json!({"ms": 1_500})
    );
    let set = admin(
        &idp,
        "POST",
        "/_dev/concurrency",
        Some(&json!({"limit": 2})),
    );
    assert_eq!(set.status, 204, "{}", set.body);
    let answers = at_once(
        &idp,
        &[
            Endpoint::Discovery,
            Endpoint::Discovery,
            Endpoint::Discovery,
        ],
    );
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429], "{answers:#?}");
    let shown = admin(&idp, "GET", "/_dev/concurrency", None).json();
    assert_eq!(
        shown,
        json!({"limit": 2, "in_flight": 0, "max_in_flight": 2, "rate_limited": 1})
    );
    assert_eq!(idp.concurrency_limited(), 1);
    // POST /_dev/reset restarts the maximum, not the count of 429s
    assert_eq!(
        admin(&idp, "POST", "/_dev/reset", Some(&json!({}))).status,
        204
    );
    assert_eq!(idp.max_in_flight(), 0);
    assert_eq!(idp.concurrency_limited(), 1);
    assert_eq!(admin(&idp, "DELETE", "/_dev/concurrency", None).status, 204);
    assert_eq!(
        admin(&idp, "GET", "/_dev/concurrency", None).json()["limit"],
        Value::Null
    );
    assert_eq!(admin(&idp, "DELETE", "/_dev/latency", None).status, 204);
    assert_eq!(idp.latency(), Duration::ZERO);
    // bad requests name the problem
    for (path, body) in [
        ("/_dev/concurrency", json!({"limit": -1})),
        ("/_dev/concurrency", json!({"limit": 1, "burst": 2})),
        ("/_dev/concurrency", json!({})),
        ("/_dev/latency", json!({"ms": "slow"})),
        ("/_dev/latency", json!({})),
    ] {
        let a = admin(&idp, "POST", path, Some(&body));
        assert_eq!(a.status, 400, "{path} {body}: {}", a.body);
        assert!(a.json()["error"].is_string());
    }
    for path in ["/_dev/concurrency", "/_dev/latency"] {
        assert_eq!(admin(&idp, "PUT", path, None).status, 405, "{path}");
    }
}

#[test]
fn clones_of_a_handle_share_one_server_until_the_last_is_dropped() {
    let idp = idp();
    let other = idp.clone();
    assert_eq!(other.addr(), idp.addr());
    other.register_client("0oaSecond", "second-secret", &[]);
    assert!(idp.clients().iter().any(|c| c.id == "0oaSecond"));
    assert_eq!(call(&other, Endpoint::Keys, "").status, 200);
    assert_eq!(idp.calls(Endpoint::Keys), 1);
    let addr = idp.addr();
    drop(idp);
    assert_eq!(call(&other, Endpoint::Discovery, "").status, 200);
    drop(other);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the server stops with the last handle"
    );
}
