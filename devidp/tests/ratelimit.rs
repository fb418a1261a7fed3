//! The dev IdP's Okta-like rate limiter over real HTTP: headers on every answer, 429 beyond the
//! limit, one limit per endpoint, switchable through the handle and the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use okta_dev_idp::{Endpoint, IdpHandle, RateLimit, TokenSpec};
use serde_json::{json, Value};

fn send(req: ureq::RequestBuilder<ureq::typestate::WithBody>, body: &str) -> Answer {
    to_answer(req.send(body))
}

fn idp() -> IdpHandle {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    idp.register_client("0oaApp", "s3cret", &["api:read"]);
    idp.register_client("0oaGateway", "gw-secret", &[]);
    idp
}

fn token(idp: &IdpHandle, secret: &str) -> Answer {
    let req = agent()
        .post(format!("{}/v1/token", idp.issuer()))
        .content_type("application/x-www-form-urlencoded")
        .header("authorization", basic("0oaApp", secret));
    send(req, "grant_type=client_credentials&scope=api%3Aread")
}

fn introspect(idp: &IdpHandle, token: &str) -> Answer {
    let req = agent()
        .post(format!("{}/v1/introspect", idp.issuer()))
        .content_type("application/x-www-form-urlencoded")
        .header("authorization", basic("0oaGateway", "gw-secret"));
    send(req, &format!("token={token}"))
}

fn admin_url(idp: &IdpHandle) -> String {
    format!("http://{}/_dev/rate_limit", idp.addr())
}

fn admin_post(idp: &IdpHandle, body: &Value) -> Answer {
    let req = agent()
        .post(admin_url(idp))
        .content_type("application/json");
    send(req, &body.to_string())
}

fn admin_get(idp: &IdpHandle) -> Value {
    let a = to_answer(agent().get(admin_url(idp)).call());
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

fn admin_delete(idp: &IdpHandle, query: &str) -> u16 {
    to_answer(agent().delete(format!("{}{query}", admin_url(idp))).call()).status
}

/// A window so long (about 31 years) that no test run straddles two of them.
const LONG: u64 = 1_000_000_000;

#[test]
fn every_answer_carries_the_headers_and_beyond_the_limit_it_is_oktas_429() {
    let idp = idp();
    idp.set_rate_limit(
        Endpoint::Token,
        RateLimit {
            limit: 3,
            window_secs: LONG,
        },
    );
    let reset = (now() / LONG as i64 + 1) * LONG as i64;
    // answers of every kind count and carry the headers: 200, and 401 for a wrong secret
    for (i, secret) in ["s3cret", "wrong", "s3cret"].iter().enumerate() {
        let a = token(&idp, secret);
        assert_eq!(a.status, if i == 1 { 401 } else { 200 }, "{}", a.body);
        assert_eq!(a.number("x-rate-limit-limit"), 3);
        assert_eq!(a.number("x-rate-limit-remaining"), 2 - i as i64);
        assert_eq!(a.number("x-rate-limit-reset"), reset);
    }
    for n in 1..=2 {
        let a = token(&idp, "s3cret");
        assert_eq!(a.status, 429, "{}", a.body);
        assert_eq!(a.number("x-rate-limit-limit"), 3);
        assert_eq!(a.number("x-rate-limit-remaining"), 0);
        assert_eq!(a.number("x-rate-limit-reset"), reset);
        assert!(a.header("x-okta-request-id").is_some());
        let body = a.json();
        assert_eq!(body["errorCode"], "E0000047");
        assert_eq!(
            body["errorSummary"],
            "API call exceeded rate limit due to too many requests."
        );
        assert_eq!(body["errorCauses"], json!([]));
        assert_eq!(idp.rate_limited(Endpoint::Token), n);
    }
    // every request still counts as a call
    assert_eq!(idp.calls(Endpoint::Token), 5);
    // another endpoint has its own limit: none here
    let minted = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    let a = introspect(&idp, &minted);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["active"], true);
    assert_eq!(a.header("x-rate-limit-limit"), None);
    assert_eq!(idp.rate_limited(Endpoint::Introspect), 0);
    // cleared: back to normal, no headers
    idp.clear_rate_limit(Endpoint::Token);
    let a = token(&idp, "s3cret");
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-rate-limit-remaining"), None);
    assert_eq!(idp.rate_limited(Endpoint::Token), 0);
}

#[test]
fn per_minute_windows_reset_on_the_minute() {
    let idp = idp();
    idp.set_rate_limit(Endpoint::Token, RateLimit::per_minute(100));
    let before = now();
    let a = token(&idp, "s3cret");
    assert_eq!(a.status, 200);
    let reset = a.number("x-rate-limit-reset");
    assert_eq!(reset % 60, 0);
    assert!(reset > before && reset <= now() + 60, "{reset}");
    assert!(a.number("x-rate-limit-remaining") >= 98);
}

#[test]
fn the_admin_api_sets_shows_and_clears_limits() {
    let idp = idp();
    let minted = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    let set = admin_post(
        &idp,
        &json!({"endpoint": "introspect", "limit": 1, "window_secs": LONG}),
    );
    assert_eq!(set.status, 204, "{}", set.body);
    assert_eq!(introspect(&idp, &minted).status, 200);
    let a = introspect(&idp, &minted);
    assert_eq!(a.status, 429);
    assert_eq!(a.number("x-rate-limit-limit"), 1);
    let shown = admin_get(&idp);
    assert_eq!(shown["introspect"]["limit"], 1);
    assert_eq!(shown["introspect"]["window_secs"], LONG);
    assert_eq!(shown["introspect"]["used"], 1);
    assert_eq!(shown["introspect"]["remaining"], 0);
    assert_eq!(shown["introspect"]["rate_limited"], 1);
    assert_eq!(shown["token"], Value::Null);
    // the default window is a minute
    let set = admin_post(&idp, &json!({"endpoint": "token", "limit": 10}));
    assert_eq!(set.status, 204, "{}", set.body);
    assert_eq!(admin_get(&idp)["token"]["window_secs"], 60);
    assert_eq!(admin_delete(&idp, "?endpoint=introspect"), 204);
    assert_eq!(introspect(&idp, &minted).status, 200);
    assert_eq!(admin_get(&idp)["introspect"], Value::Null);
    assert_eq!(admin_delete(&idp, ""), 204);
    assert_eq!(admin_get(&idp)["token"], Value::Null);
    // bad requests name the problem
    for body in [
        json!({"endpoint": "nope", "limit": 1}),
        json!({"endpoint": "token", "limit": 1, "window_secs": 0}),
        json!({"endpoint": "token", "limit": -1}),
        json!({"endpoint": "token", "limit": 1, "burst": 2}),
        json!({"limit": 1}),
    ] {
        let a = admin_post(&idp, &body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.json()["error"].is_string());
    }
    assert_eq!(admin_delete(&idp, "?endpoint=nope"), 400);
    let put = agent().put(admin_url(&idp)).send("{}");
    assert_eq!(to_answer(put).status, 405);
}
