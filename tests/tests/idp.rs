//! The filter against an IdP that fails (issue 2): every failure is a 503 that is never cached
//! and never lets the request through; discovery, its overrides, and its retry.

use std::time::{Duration, Instant};

use okta_dcr_auth_tests::*;
use serde_json::json;

// These tests are about the introspection path, as it was before local JWT checks.
use okta_dcr_auth_tests::introspection_filter_config as filter_config;

const APP_ID: &str = "0oa8faultApp";
const APP_SECRET: &str = "fault-Secret_6b5a4c3d2e1f";

/// A 503 from the filter: no challenge, a JSON message, nothing upstream.
fn assert_503(stack: &Stack, r: &Response) {
    assert_local_503(r);
    assert_eq!(
        stack.echo.count(),
        0,
        "a request went upstream without a verdict"
    );
}

/// With `fault` on the token endpoint the request is a 503 after asking the IdP; the failure is
/// not cached: once the fault is cleared the same credentials pass, with a new IdP call.
///
/// A 429 carries `X-Rate-Limit-Reset`; a filter may hold back until then, so for it the second
/// attempt need not reach the IdP, and recovery is awaited until just past the reset (1 s).
fn fault_is_503_then_recovers(fault: Fault) {
    let rate_limited = matches!(fault.answer, FaultAnswer::RateLimited { .. });
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    stack.idp.set_fault(Endpoint::Token, fault);

    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_503(&stack, &r);
    let calls = stack.token_calls();
    assert_eq!(calls, 1, "the IdP was asked once");
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_503(&stack, &r);
    if !rate_limited {
        assert_eq!(stack.token_calls(), 2, "a failure must not be cached");
    }

    stack.idp.clear_faults();
    let before = stack.token_calls();
    let r = if rate_limited {
        eventually(
            Duration::from_secs(5),
            "a 200 after the rate limit resets",
            || {
                let r = stack.get("/", &[("authorization", &app.basic())]);
                (r.status == 200).then_some(r)
            },
        )
    } else {
        stack.get("/", &[("authorization", &app.basic())])
    };
    assert_eq!(r.status, 200, "after recovery: {r:#?}");
    assert!(
        stack.token_calls() > before,
        "the 200 comes from a new IdP call"
    );
    assert_eq!(
        upstream_header(&stack.single_upstream_request(), "x-credential-identifier"),
        vec![APP_ID]
    );
}

#[test]
fn idp_500_is_503_then_recovers() {
    fault_is_503_then_recovers(fault(FaultAnswer::Status(500)));
}

#[test]
fn idp_garbage_answer_is_503_then_recovers() {
    fault_is_503_then_recovers(fault(FaultAnswer::Garbage));
}

#[test]
fn idp_rate_limit_is_503_then_recovers() {
    fault_is_503_then_recovers(fault(FaultAnswer::RateLimited { reset_in_secs: 1 }));
}

#[test]
fn a_429_on_the_token_endpoint_leaves_introspection_working() {
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let mut spec = TokenSpec::for_client(APP_ID, &[SCOPE]);
    spec.claims.insert("app_id".into(), json!(APP_ID));
    let token = stack.idp.mint_token(spec);
    stack.track_secret(&token);
    stack.idp.set_fault(
        Endpoint::Token,
        fault(FaultAnswer::RateLimited { reset_in_secs: 30 }),
    );
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_503(&stack, &r);
    // the token endpoint is paused for every worker until its reset...
    let other = stack.client("0oa8otherFaultApp", "other-Secret_9a8b7c6d", &[SCOPE]);
    let r = stack.get("/", &[("authorization", &other.basic())]);
    assert_503(&stack, &r);
    assert_eq!(stack.token_calls(), 1, "no call while the pause lasts");
    // ...and introspection is not
    let r = stack.get("/", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(r.status, 200, "introspection still works: {r:#?}");
    assert_eq!(stack.idp.calls(Endpoint::Introspect), 1);
}

#[test]
fn idp_slower_than_idp_timeout_is_503_then_recovers() {
    let stack = Stack::start(filter_config(json!({ "idp_timeout_ms": 300 })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    stack
        .idp
        .set_fault(Endpoint::Token, delay(Duration::from_secs(3)));

    let started = Instant::now();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    let took = started.elapsed();
    assert_503(&stack, &r);
    assert!(
        took < Duration::from_millis(2000),
        "answered after {took:?}, idp_timeout_ms is 300"
    );
    assert!(
        took >= Duration::from_millis(250),
        "answered after {took:?}, before the timeout"
    );
    assert_eq!(stack.token_calls(), 1);

    stack.idp.clear_faults();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "after recovery: {r:#?}");
}

#[test]
fn other_unusable_idp_answers_are_503() {
    let stack = Stack::start(filter_config(json!({ "idp_timeout_ms": 1000 })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let answers = [
        FaultAnswer::Status(502),
        FaultAnswer::Html,
        FaultAnswer::EmptyOk,
        FaultAnswer::ResetConnection,
        FaultAnswer::Custom {
            status: 200,
            content_type: "application/json".into(),
            body: r#"{"token_type":"Bearer","expires_in":3600}"#.into(),
            headers: vec![],
        },
        FaultAnswer::Custom {
            status: 200,
            content_type: "application/json".into(),
            body: r#"[1,2,3]"#.into(),
            headers: vec![],
        },
    ];
    for answer in answers {
        let shown = format!("{answer:?}");
        stack.idp.set_fault(Endpoint::Token, fault(answer));
        let r = stack.get("/", &[("authorization", &app.basic())]);
        assert_eq!(r.status, 503, "IdP answer {shown}: {r:#?}");
        assert_503(&stack, &r);
    }
    stack.idp.clear_faults();
    assert_eq!(
        stack.get("/", &[("authorization", &app.basic())]).status,
        200
    );
}

/// Both endpoint overrides, on the IdP's own endpoints: nothing needs discovery.
fn overrides(extra: serde_json::Value) -> serde_json::Value {
    let mut config = filter_config(json!({
        "token_endpoint": "{issuer}/v1/token",
        "introspection_endpoint": "{issuer}/v1/introspect",
    }));
    if let (Some(c), serde_json::Value::Object(e)) = (config.as_object_mut(), extra) {
        c.extend(e);
    }
    config
}

#[test]
fn unknown_idp_cluster_is_503_at_once() {
    let stack = Stack::start(overrides(json!({ "idp_upstream": "nope" })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let started = Instant::now();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    let took = started.elapsed();
    assert_503(&stack, &r);
    assert!(
        took < Duration::from_millis(1000),
        "answered after {took:?}: a failed dispatch must answer at once"
    );
    assert_eq!(stack.token_calls(), 0);
    // And again: nothing is left paused, nothing cached.
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_503(&stack, &r);
}

#[test]
fn endpoints_are_taken_from_discovery() {
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert!(
        stack.discovery_calls() >= 1,
        "the token endpoint must come from the discovery document"
    );
    assert_eq!(stack.token_calls(), 1);
}

#[test]
fn endpoint_overrides_need_no_discovery() {
    let stack = Stack::builder()
        .route("/", overrides(json!({})))
        // Discovery would fail: only the overrides can make this work.
        .with_idp(|idp| idp.set_fault(Endpoint::Discovery, fault(FaultAnswer::Status(500))))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(stack.token_calls(), 1);
    assert_eq!(
        stack.discovery_calls(),
        0,
        "with both endpoints configured there is nothing to discover"
    );
}

#[test]
fn requests_before_discovery_completes_wait_for_it() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({ "idp_timeout_ms": 5000 })))
        .with_idp(|idp| idp.set_fault(Endpoint::Discovery, delay(Duration::from_millis(2500))))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let started = Instant::now();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(
        r.status, 200,
        "a request that arrives during discovery waits for it: {r:#?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "answered in {:?}: was discovery really still running?",
        started.elapsed()
    );
    assert_eq!(stack.token_calls(), 1);
}

#[test]
fn failed_discovery_is_retried_and_requests_then_pass() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({ "idp_timeout_ms": 1000 })))
        .with_idp(|idp| idp.set_fault(Endpoint::Discovery, fault(FaultAnswer::Status(500))))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let auth = app.basic();

    // While discovery fails, a request either waits or is a 503; it never passes or gets a 401.
    let started = Instant::now();
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_503(&stack, &r);
    eprintln!(
        "503 after {:?}, {} discovery calls",
        started.elapsed(),
        stack.discovery_calls()
    );
    assert_eq!(stack.token_calls(), 0);
    let failed = stack.discovery_calls();
    assert!(failed >= 1);

    stack.idp.clear_faults();
    let r = eventually(
        Duration::from_secs(20),
        "a 200 after discovery recovers",
        || {
            let r = stack.get("/", &[("authorization", &auth)]);
            match r.status {
                200 => Some(r),
                503 => None,
                other => panic!("while discovery recovers: {other}: {r:#?}"),
            }
        },
    );
    assert_eq!(r.status, 200);
    eprintln!(
        "200 {:?} after the first request, {} discovery calls",
        started.elapsed(),
        stack.discovery_calls()
    );
    assert!(
        stack.discovery_calls() > failed,
        "discovery must be retried"
    );
}

#[test]
fn stale_verdict_is_served_within_stale_if_error_s_when_the_idp_fails() {
    let stack = Stack::builder()
        .route(
            "/stale",
            filter_config(json!({ "cache_ttl_s": 1, "stale_if_error_s": 60 })),
        )
        .route("/", filter_config(json!({ "cache_ttl_s": 1 })))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let auth = app.basic();
    assert_eq!(stack.get("/stale", &[("authorization", &auth)]).status, 200);
    assert_eq!(stack.get("/fresh", &[("authorization", &auth)]).status, 200);
    assert_eq!(stack.token_calls(), 2);
    std::thread::sleep(Duration::from_millis(1300));
    stack
        .idp
        .set_fault(Endpoint::Token, fault(FaultAnswer::Status(500)));
    stack.echo.clear();

    let r = stack.get("/stale", &[("authorization", &auth)]);
    assert_eq!(
        r.status, 200,
        "the expired verdict serves while the IdP fails: {r:#?}"
    );
    assert_eq!(stack.token_calls(), 3, "the IdP is asked first");
    assert_eq!(
        upstream_header(&stack.single_upstream_request(), "x-credential-identifier"),
        vec![APP_ID]
    );
    stack.echo.clear();

    let r = stack.get("/fresh", &[("authorization", &auth)]);
    assert_503(&stack, &r);
}
