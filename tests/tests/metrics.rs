//! Metrics (issue 7): after known traffic, Envoy's admin `/stats` and `/stats/prometheus` show the
//! filter's counters with the right counts.
//!
//! Envoy only: nginx with ngx_wasm_module has no endpoint that shows them (Kong 3.9's Prometheus
//! plugin does, as `pw_okta_dcr_auth_*`, which needs Kong itself).

use std::time::Duration;

use okta_dcr_auth_tests::*;
use serde_json::json;

/// The counter as `/stats` names it: Envoy keeps metrics a wasm filter defines in its
/// `wasmcustom` namespace.
fn counter(stack: &Stack, name: &str) -> u64 {
    stack.filter_counter(name)
}

#[test]
fn counters_follow_known_traffic() {
    if envoy_only("the filter's counters in Envoy's admin /stats") {
        return;
    }
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client("0oa7metricsApp", "metrics-Secret-1", &[SCOPE]);
    let no_scope = stack.client("0oa7metricsNoScope", "metrics-Secret-2", &["api:write"]);

    // 3 allowed: one token call, then two cache hits
    for _ in 0..3 {
        assert_eq!(
            stack.get("/", &[("authorization", &app.basic())]).status,
            200
        );
    }
    // 2 invalid: one token call (401), then a negative hit
    for _ in 0..2 {
        let wrong = app.basic_with_secret("wrong-Secret");
        assert_eq!(stack.get("/", &[("authorization", &wrong)]).status, 401);
    }
    // 1 insufficient scope (Okta invalid_scope)
    assert_eq!(
        stack
            .get("/", &[("authorization", &no_scope.basic())])
            .status,
        403
    );
    // 2 malformed, 1 without credentials: no IdP call
    assert_eq!(
        stack.get("/", &[("authorization", "Basic !!!")]).status,
        401
    );
    assert_eq!(
        stack
            .get("/", &[("authorization", "Bearer \"quoted\"")])
            .status,
        401
    );
    assert_eq!(stack.get("/", &[]).status, 401);
    // 1 IdP unavailable: a 500 from the token endpoint
    stack
        .idp
        .set_fault(Endpoint::Token, fault(FaultAnswer::Status(500)));
    let down = stack.client("0oa7metricsDown", "metrics-Secret-3", &[SCOPE]);
    assert_eq!(
        stack.get("/", &[("authorization", &down.basic())]).status,
        503
    );
    stack.idp.clear_faults();

    for (name, expected) in [
        ("requests_allowed", 3),
        ("requests_denied_invalid", 2),
        ("requests_denied_insufficient_scope", 1),
        ("requests_denied_malformed", 2),
        ("requests_denied_no_credentials", 1),
        ("requests_denied_idp_unavailable", 1),
        ("cache_hits", 2),
        ("cache_negative_hits", 1),
        ("cache_misses", 4),
        ("cache_stale_serves", 0),
        ("idp_token_ok", 1),
        ("idp_token_4xx", 2),
        ("idp_token_5xx", 1),
        ("idp_token_timeout", 0),
        ("idp_introspect_ok", 0),
    ] {
        assert_eq!(counter(&stack, name), expected, "okta_dcr_auth_{name}");
    }
    // discovery ran once per VM at most, and succeeded
    let discovery_ok = counter(&stack, "idp_discovery_ok");
    assert!(
        (1..=3).contains(&discovery_ok),
        "idp_discovery_ok = {discovery_ok}"
    );

    // Prometheus: the custom namespace is dropped, the names are ours
    let prometheus = stack.admin("/stats/prometheus").body;
    assert!(
        prometheus
            .lines()
            .any(|l| l.starts_with("okta_dcr_auth_requests_allowed") && l.ends_with(" 3")),
        "okta_dcr_auth_requests_allowed 3 in /stats/prometheus:\n{}",
        prometheus
            .lines()
            .filter(|l| l.contains("okta_dcr_auth"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        prometheus.contains("# TYPE okta_dcr_auth_idp_latency_ms histogram"),
        "the IdP latency histogram in /stats/prometheus"
    );
}

#[test]
fn timeouts_and_stale_serves_are_counted() {
    if envoy_only("the filter's counters in Envoy's admin /stats") {
        return;
    }
    let stack = Stack::start(filter_config(json!({
        "idp_timeout_ms": 300,
        "cache_ttl_s": 1,
        "stale_if_error_s": 60,
    })));
    let app = stack.client("0oa7metricsStale", "metrics-Secret-4", &[SCOPE]);
    assert_eq!(
        stack.get("/", &[("authorization", &app.basic())]).status,
        200
    );
    std::thread::sleep(Duration::from_millis(1_100));
    stack
        .idp
        .set_fault(Endpoint::Token, delay(Duration::from_millis(1_000)));
    // expired, and the IdP times out: served stale
    assert_eq!(
        stack.get("/", &[("authorization", &app.basic())]).status,
        200
    );
    stack.idp.clear_faults();
    // Envoy ends a call that ran out of time with its own 504: counted as a timeout, not a 5xx
    assert_eq!(counter(&stack, "idp_token_timeout"), 1);
    assert_eq!(counter(&stack, "idp_token_5xx"), 0);
    assert_eq!(counter(&stack, "cache_stale_serves"), 1);
    assert_eq!(counter(&stack, "requests_allowed"), 2);
}
