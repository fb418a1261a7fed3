//! Where the two hosts differ in what a client or an operator sees, each case pinned on both
//! (the table in kong/README.md points here). On Envoy each test checks the contract's answer; on
//! ngx_wasm_module 9136e463 it checks what that host gives, with the reason next to it.

use std::time::Duration;

use okta_dcr_auth_tests::*;
use serde_json::json;

const APP_ID: &str = "0oa8hostDiffApp";
const APP_SECRET: &str = "hostDiff-Secret_1a2b3c4d5e";

/// Several challenges: Envoy sends one `WWW-Authenticate` header each. ngx_wasm_module keeps
/// only the last header of a name in a local reply, so there the filter sends one header with
/// the challenges as a comma-separated list (RFC 9110 11.6.1).
#[test]
fn several_challenges_are_one_header_on_ngx_and_one_each_on_envoy() {
    let stack = Stack::start(filter_config(json!({})));
    let r = stack.get("/", &[]);
    assert_local_reply(&r, 401);
    let mut got = challenges(&r);
    got.sort_unstable();
    assert_eq!(got, vec![BASIC_CHALLENGE, BEARER_CHALLENGE], "{r:#?}");
    let headers = r.www_authenticate();
    if on_ngx() {
        assert_eq!(headers.len(), 1, "{r:#?}");
        assert!(headers[0].contains(", Basic ") || headers[0].contains(", Bearer "));
    } else {
        assert_eq!(headers.len(), 2, "{r:#?}");
    }
}

/// An IdP answer without a body (a reset, a read timeout, an empty 200) makes a 503. Envoy
/// sends the filter's JSON body. ngx_wasm_module would lose the whole reply there (the client
/// got the headers, then the connection closed: an empty reply, and a `--with-debug` worker
/// aborted), so the filter sends it without a body. The debug build's worker must survive.
#[test]
fn a_503_after_a_bodyless_idp_answer_arrives_whole_and_the_debug_worker_survives() {
    // One route (one configuration, so one quota guard) per case: failures on one route do not
    // pause the IdP calls of the next.
    let mut builder = Stack::builder().ngx_debug_build().concurrency(1);
    for route in ["/reset", "/timeout", "/empty", "/status", "/ok"] {
        builder = builder.route(
            route,
            filter_config(json!({ "idp_timeout_ms": 500, "realm": &route[1..] })),
        );
    }
    let mut stack = builder.start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    for (what, route, fault) in [
        (
            "reset",
            "/reset",
            Fault::answer(FaultAnswer::ResetConnection),
        ),
        (
            "read timeout",
            "/timeout",
            delay(Duration::from_millis(1500)),
        ),
        ("empty 200", "/empty", Fault::answer(FaultAnswer::EmptyOk)),
    ] {
        stack.idp.set_fault(Endpoint::Token, fault);
        let r = stack.get(route, &[("authorization", &app.basic())]);
        assert_local_503(&r);
        if on_ngx() {
            assert!(r.body.is_empty(), "{what}: {r:#?}");
            assert_eq!(r.header("content-length"), Some("0"), "{what}: {r:#?}");
        } else {
            assert_eq!(r.message(), "identity provider unavailable", "{what}");
        }
        assert_eq!(stack.echo.count(), 0, "{what}");
    }
    // An IdP answer with a body: the 503 keeps its JSON body on both hosts.
    stack
        .idp
        .set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Status(500)));
    let r = stack.get("/status", &[("authorization", &app.basic())]);
    assert_local_reply(&r, 503);
    stack.idp.clear_faults();
    let r = stack.get("/ok", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "{r:#?}");
    let log = stack.host_log();
    assert!(
        !log.contains("exited on signal") && !log.contains("Assertion"),
        "a worker died:\n{log}"
    );
    assert!(stack.envoy_running());
}

/// Shared data works across workers on both hosts, although ngx_wasm_module's CAS 0 means
/// "create only" where Envoy's means "unconditional": a verdict one worker decided serves the
/// other (the connections go to both workers: `reuseport` on nginx, Envoy's balancing).
#[test]
fn a_verdict_decided_on_one_worker_serves_the_other() {
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "{r:#?}");
    for i in 0..40 {
        let r = stack.get(&format!("/{i}"), &[("authorization", &app.basic())]);
        assert_eq!(r.status, 200, "{r:#?}");
    }
    assert_eq!(stack.token_calls(), 1, "one call, then the shared verdict");
    if on_ngx() {
        // Which workers served: the pids of the filter's request lines (`PID#TID: *CONN`).
        let log = stack.host_log();
        let mut pids: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("[proxy-wasm]") && l.contains("on_request_headers"))
            .filter_map(|l| l.split_whitespace().nth(3))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), 2, "both workers served requests: {pids:?}");
    }
}

/// A secret no client has: an unknown client id with it makes an IdP call, then a 401.
const WRONG_SECRET: &str = "noSuch-Secret_7f3e9a";

/// Every request that reached the upstream carries the identity of one of `ids` and none of
/// the clients' own Basic credentials.
fn assert_upstream_saw_only_verdicts(stack: &Stack, ids: &[String]) {
    for request in stack.echo.requests() {
        let who = request
            .header("x-credential-identifier")
            .unwrap_or_default();
        let auth = request.header("authorization").unwrap_or_default();
        assert!(
            ids.iter().any(|id| id == who) && !auth.starts_with("Basic "),
            "reached the upstream without the filter's verdict: {:?} {who:?}",
            request.path
        );
    }
}

/// Requests that wait for the IdP, one after another on one client's keep-alive connection:
/// each reaches the upstream with its verdict's edits, and one with a wrong secret never does.
/// On ngx_wasm_module 9136e463 such a request went upstream as it was, before its IdP answer,
/// once an earlier request on its connection had been proxied (kong/README.md, bug report F);
/// there the filter has nginx close each connection after its request.
#[test]
fn requests_that_wait_for_the_idp_on_one_keep_alive_connection_go_upstream_only_with_their_verdict()
{
    let stack = Stack::start(filter_config(json!({})));
    stack.track_secret(WRONG_SECRET);
    let apps: Vec<TestClient> = (0..8)
        .map(|i| {
            stack.client(
                &format!("0oa8keepAlive{i}"),
                &format!("keepAlive-Secret_{i}q"),
                &[SCOPE],
            )
        })
        .collect();
    let mut conn = client::KeepAlive::new(stack.listener());
    for (i, app) in apps.iter().enumerate() {
        // a client the worker has not seen: its request waits for a token call
        assert_eq!(conn.get("/", &app.basic()).ok(), Some(200), "client {i}");
        let stranger = basic_header(&format!("0oa8stranger{i}"), WRONG_SECRET);
        assert_eq!(conn.get("/", &stranger).ok(), Some(401), "stranger {i}");
    }
    assert_eq!(stack.echo.count(), apps.len() as u64);
    let ids: Vec<String> = apps.iter().map(|a| a.id.clone()).collect();
    assert_upstream_saw_only_verdicts(&stack, &ids);
    let log = stack.host_log();
    assert!(!log.contains("exited on signal"), "a worker died:\n{log}");
}

/// A connection whose earlier request went to a route without the filter: a request there that
/// must wait for the IdP is answered only after its verdict on Envoy. ngx_wasm_module could
/// forward it before (bug report F): there the filter refuses it with a 503 and closes the
/// connection, and the same request on a new connection passes.
#[test]
fn a_request_that_must_wait_after_one_to_a_route_without_the_filter_never_goes_upstream_early() {
    let stack = Stack::builder()
        .open_route("/open")
        .route("/api", filter_config(json!({})))
        .start();
    stack.track_secret(WRONG_SECRET);
    let app = stack.client("0oa8afterOpen", "afterOpen-Secret_2w", &[SCOPE]);
    let stranger = basic_header("0oa8strangerAfterOpen", WRONG_SECRET);
    let mut conn = client::KeepAlive::new(stack.listener());
    assert_eq!(conn.get("/open", "none").ok(), Some(200));
    let expected = if on_ngx() { 503 } else { 401 };
    assert_eq!(conn.get("/api", &stranger).ok(), Some(expected));
    assert_eq!(conn.get("/open", "none").ok(), Some(200));
    let expected = if on_ngx() { 503 } else { 200 };
    assert_eq!(conn.get("/api", &app.basic()).ok(), Some(expected));
    // the first request on its connection
    let r = stack.get("/api", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "{r:#?}");
    let upstream: Vec<_> = stack
        .echo
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api"))
        .collect();
    assert_eq!(
        upstream.len(),
        if on_ngx() { 1 } else { 2 },
        "{upstream:#?}"
    );
    for request in &upstream {
        assert_eq!(
            request.header("x-credential-identifier"),
            Some("0oa8afterOpen")
        );
    }
}
