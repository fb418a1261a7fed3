//! A configuration change reaching a running Envoy (file-based LDS, as a control plane's push):
//! a request in flight when the change lands finishes on the configuration it started with; the
//! next request gets the new one. docs/deployment.md, "Changing the configuration without
//! restarting proxies", relies on it.
//!
//! Envoy only: the change goes through Envoy's LDS.

use std::thread;
use std::time::Duration;

use okta_dcr_auth_tests::*;
use serde_json::json;

/// How long Okta takes to answer the in-flight request's token call (within `idp_timeout_ms`).
const SLOW_TOKEN: Duration = Duration::from_secs(6);

#[test]
fn a_request_in_flight_finishes_on_the_configuration_it_started_with() {
    if envoy_only("file-based LDS") {
        return;
    }
    let stack = Stack::builder()
        .file_lds()
        .route(
            "/",
            filter_config(json!({ "accept": ["basic"], "idp_timeout_ms": 20000 })),
        )
        .start();
    let app = stack.client("0oaRolloutApp", "rollout-App_Secret-1", &[SCOPE]);

    stack.idp.set_fault(Endpoint::Token, delay(SLOW_TOKEN));
    let listener = stack.listener();
    let header = app.basic();
    let in_flight = thread::spawn(move || {
        client::send(
            listener,
            "GET",
            "/",
            &[("authorization", &header)],
            client::DEFAULT_TIMEOUT,
        )
    });
    eventually(Duration::from_secs(5), "the in-flight token call", || {
        (stack.token_calls() >= 1).then_some(())
    });

    // The new configuration requires a scope the app was not granted.
    stack.reload_filter_config(
        0,
        filter_config(
            json!({ "accept": ["basic"], "idp_timeout_ms": 20000, "scopes": ["api:write"] }),
        ),
    );
    assert!(
        !in_flight.is_finished(),
        "the request finished before the new configuration was in place: the test proves nothing"
    );
    let r = in_flight
        .join()
        .expect("the in-flight request's thread")
        .expect("the in-flight request");
    assert_eq!(r.status, 200, "the old configuration's answer: {r:#?}");
    let up = stack.single_upstream_request();
    assert_eq!(upstream_header(&up, "x-authenticated-scope"), vec![SCOPE]);

    // The next request runs under the new configuration: Okta refuses the scope.
    stack.idp.clear_faults();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_local_reply(&r, 403);
    assert_eq!(
        stack.upstream().len(),
        1,
        "the refused request went upstream"
    );
}
