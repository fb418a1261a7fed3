//! Registrations (issue 20, CONTRACT "Registrations"): with `product` set, only apps holding an
//! approved registration for it get through, on both hosts. The filter fetches the dev IdP's
//! registrations document (`/_portal/registrations`, with an `ETag`) and the tests change it
//! through the IdP handle, as a portal admin would.
//!
//! Every stack sweeps the host's log for the secrets and tokens it knows of when it is dropped.

use std::time::{Duration, Instant};

use okta_dcr_auth_tests::*;
use okta_dev_idp::Application;
use serde_json::{json, Value};

const PRODUCT: &str = "payments-v1";
const FORBIDDEN: &str = "the application is not registered, or not approved, for this API";

const APPROVED: &str = "0oa8regApproved";
const PENDING: &str = "0oa8regPending";
const REVOKED: &str = "0oa8regRevoked";
const REJECTED: &str = "0oa8regRejected";
/// In the portal, registered for another product only.
const ELSEWHERE: &str = "0oa8regElsewhere";
/// An Okta client the portal does not know.
const STRANGER: &str = "0oa8regStranger";
const SECRET: &str = "reg-Secret_5e4d3c2b1a09";

/// The filter on `/` for `PRODUCT`, its document at the dev IdP, revalidated every second.
fn config(overrides: Value) -> Value {
    let mut c = filter_config(json!({
        "product": PRODUCT,
        "registrations_uri": "http://{idp_addr}/_portal/registrations",
        "registrations_refresh_s": 1,
    }));
    if let (Some(c), Value::Object(o)) = (c.as_object_mut(), overrides) {
        c.extend(o);
    }
    c
}

/// The portal's applications and Okta's clients, before the host starts.
fn portal(idp: &IdpHandle) {
    for (id, status) in [
        (APPROVED, Some("approved")),
        (PENDING, Some("pending")),
        (REVOKED, Some("revoked")),
        (REJECTED, Some("rejected")),
        (ELSEWHERE, None),
    ] {
        idp.add_application(Application {
            client_id: id.into(),
            application_id: format!("app-{id}"),
            developer_id: Some("dev-9".into()),
            name: id.into(),
        });
        if let Some(status) = status {
            idp.set_registration(id, PRODUCT, status);
        }
        idp.set_registration(id, "orders-v2", "approved");
    }
    for id in [APPROVED, PENDING, REVOKED, REJECTED, ELSEWHERE, STRANGER] {
        idp.register_client(id, SECRET, &[SCOPE]);
    }
}

fn start(overrides: Value) -> Stack {
    let stack = Stack::builder()
        .with_idp(portal)
        .route("/", config(overrides))
        .start();
    stack.track_secret(SECRET);
    wait_for_document(&stack);
    stack
}

/// Until the filter answers from a document (503 before the first).
fn wait_for_document(stack: &Stack) {
    let auth = basic_header(STRANGER, SECRET);
    eventually(Duration::from_secs(10), "the first document", || {
        (stack.get("/", &[("authorization", &auth)]).status != 503).then_some(())
    });
}

fn basic(stack: &Stack, id: &str) -> Response {
    stack.get("/", &[("authorization", &basic_header(id, SECRET))])
}

fn assert_403(stack: &Stack, r: &Response, what: &str) {
    assert_eq!(assert_local_reply(r, 403), FORBIDDEN, "{what}: {r:#?}");
    assert!(r.www_authenticate().is_empty(), "{what}: {r:#?}");
    assert!(stack.upstream().is_empty(), "{what}: went upstream: {r:#?}");
}

fn assert_invalid_client(stack: &Stack, r: &Response, what: &str) {
    assert_local_reply(r, 401);
    assert_eq!(
        r.www_authenticate(),
        vec![BASIC_CHALLENGE],
        "{what}: {r:#?}"
    );
    assert!(stack.upstream().is_empty(), "{what}: went upstream");
}

#[test]
fn every_row_of_the_decision_table() {
    let stack = start(json!({}));
    stack.idp.reset_counters();
    let counted = |name: &str| {
        if on_ngx() {
            0
        } else {
            stack.filter_counter(name)
        }
    };
    let (unregistered, not_approved) = (
        counted("requests_denied_unregistered"),
        counted("requests_denied_not_approved"),
    );
    // Basic, unknown to the portal: 401 as an invalid client, no Okta call
    assert_invalid_client(&stack, &basic(&stack, STRANGER), "unknown");
    assert_invalid_client(&stack, &basic(&stack, "0oa8REGAPPROVED"), "case matters");
    // Basic, known without an approved registration: 403, no Okta call, the secret unchecked
    for id in [PENDING, REVOKED, REJECTED, ELSEWHERE] {
        assert_403(&stack, &basic(&stack, id), id);
        let r = stack.get("/", &[("authorization", &basic_header(id, "wrong"))]);
        assert_403(&stack, &r, id);
    }
    assert_eq!(stack.token_calls(), 0, "no Okta call for any of them");
    // approved: 200, the application context upstream, client-sent copies gone
    let r = stack.get(
        "/",
        &[
            ("authorization", &basic_header(APPROVED, SECRET)),
            ("X-Application-Id", "spoofed-app"),
            ("x_developer_id", "spoofed-dev"),
        ],
    );
    assert_eq!(r.status, 200, "{r:#?}");
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-application-id"),
        vec![format!("app-{APPROVED}").as_str()]
    );
    assert_eq!(upstream_header(&req, "x-developer-id"), vec!["dev-9"]);
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![APPROVED]
    );
    assert_removed_upstream(&req, "x_developer_id");
    for (name, value) in &req.headers {
        assert!(!value.contains("spoofed"), "{name}: {value} went upstream");
    }
    assert_eq!(stack.token_calls(), 1);
    // Bearer: a token that verifies, of an app without an approved registration: 403
    stack.echo.clear();
    for (id, ok) in [(APPROVED, true), (PENDING, false), (STRANGER, false)] {
        let token = stack.mint(TokenSpec::for_client(id, &[SCOPE]));
        let r = stack.get("/", &[("authorization", &format!("Bearer {token}"))]);
        if ok {
            assert_eq!(r.status, 200, "{id}: {r:#?}");
            stack.echo.clear();
        } else {
            assert_403(&stack, &r, id);
        }
    }
    // Bearer that does not verify: 401 as without registrations
    let bad = jwt_shaped(&stack.issuer(), "not-signed");
    let r = stack.get("/", &[("authorization", &format!("Bearer {bad}"))]);
    assert_local_reply(&r, 401);
    // no credentials: as without registrations
    assert_local_reply(&stack.get("/", &[]), 401);
    if !on_ngx() {
        assert_eq!(counted("requests_denied_unregistered") - unregistered, 3);
        assert_eq!(counted("requests_denied_not_approved") - not_approved, 9);
    }
}

#[test]
fn a_revoked_registration_stops_an_app_with_a_cached_verdict_within_the_refresh_period() {
    let stack = start(json!({ "cache_ttl_s": 300 }));
    let token = stack.mint(TokenSpec::for_client(APPROVED, &[SCOPE]));
    let bearer = format!("Bearer {token}");
    for _ in 0..3 {
        assert_eq!(basic(&stack, APPROVED).status, 200);
        assert_eq!(stack.get("/", &[("authorization", &bearer)]).status, 200);
    }
    let calls = stack.token_calls();
    assert!(stack.idp.revoke_registration(APPROVED, PRODUCT));
    let revoked = Instant::now();
    eventually(Duration::from_secs(5), "the revocation", || {
        (basic(&stack, APPROVED).status == 403).then_some(())
    });
    let took = revoked.elapsed();
    assert!(took < Duration::from_millis(2_500), "took {took:?}");
    // every other worker looks at the shared record within 100 ms
    std::thread::sleep(Duration::from_millis(300));
    stack.echo.clear();
    // on every worker, and for the token too
    for _ in 0..6 {
        assert_403(&stack, &basic(&stack, APPROVED), "revoked");
        let r = stack.get("/", &[("authorization", &bearer)]);
        assert_403(&stack, &r, "revoked, Bearer");
    }
    assert_eq!(stack.token_calls(), calls, "refused without Okta");
    // approved again: through again, from the cached verdict
    assert!(stack.idp.approve(APPROVED, PRODUCT));
    eventually(Duration::from_secs(5), "the approval", || {
        (basic(&stack, APPROVED).status == 200).then_some(())
    });
    assert_eq!(stack.token_calls(), calls);
}

#[test]
fn an_unchanged_document_is_revalidated_with_304s_once_per_period_for_the_gateway() {
    let stack = start(json!({}));
    let (fetches, not_modified) = (
        stack.idp.registrations_fetches(),
        stack.idp.registrations_not_modified(),
    );
    std::thread::sleep(Duration::from_millis(4_200));
    let fetched = stack.idp.registrations_fetches() - fetches;
    let unchanged = stack.idp.registrations_not_modified() - not_modified;
    // one fetch per second for the whole gateway (every worker), each a 304
    assert!((3..=6).contains(&fetched), "{fetched} fetches in 4.2 s");
    assert_eq!(unchanged, fetched, "every one a 304");
    if !on_ngx() {
        assert!(stack.filter_counter("registrations_not_modified") >= 3);
        assert_eq!(stack.filter_counter("registrations_fetched"), 1);
        assert!(stack.stat("wasmcustom.okta_dcr_auth_registrations_bytes") > 100);
        assert_eq!(
            stack.stat("wasmcustom.okta_dcr_auth_registrations_applications"),
            5
        );
    }
    // a change is a 200 again
    stack.idp.set_registration(STRANGER, PRODUCT, "approved");
    eventually(Duration::from_secs(5), "the new document", || {
        (basic(&stack, STRANGER).status == 200).then_some(())
    });
}

/// Breaks the document at the dev IdP.
type Breaker = Box<dyn Fn(&IdpHandle)>;

#[test]
fn a_failing_malformed_or_oversized_document_keeps_the_last_good_copy() {
    let stack = start(json!({}));
    let failing: Vec<(&str, Breaker)> = vec![
        (
            "500",
            Box::new(|idp: &IdpHandle| {
                idp.set_fault(Endpoint::Registrations, fault(FaultAnswer::Status(500)))
            }),
        ),
        (
            "malformed",
            Box::new(|idp: &IdpHandle| {
                idp.set_registrations_body(Some(br#"{"applications": {"oops": 1}}"#.to_vec()))
            }),
        ),
        (
            "not JSON",
            Box::new(|idp: &IdpHandle| idp.set_registrations_body(Some(b"<html>".to_vec()))),
        ),
        (
            "too large",
            Box::new(|idp: &IdpHandle| {
                // 65 MiB: valid JSON, over the 64 MiB cap
                let mut body = br#"{"applications": [], "padding": ""#.to_vec();
                body.resize(65 * 1024 * 1024, b'x');
                body.extend_from_slice(b"\"}");
                idp.set_registrations_body(Some(body));
            }),
        ),
    ];
    for (what, break_it) in failing {
        break_it(&stack.idp);
        let fetches = stack.idp.registrations_fetches();
        // a fetch of the large one may run into its 10 s timeout (nginx)
        eventually(Duration::from_secs(30), what, || {
            (stack.idp.registrations_fetches() >= fetches + 2).then_some(())
        });
        stack.echo.clear();
        assert_403(&stack, &basic(&stack, PENDING), what);
        assert_invalid_client(&stack, &basic(&stack, STRANGER), what);
        assert_eq!(
            basic(&stack, APPROVED).status,
            200,
            "{what}: the last good copy"
        );
        stack.idp.clear_faults();
        stack.idp.set_registrations_body(None);
    }
    // A slow source: while its fetch is out, requests are answered from the last good copy at
    // once, not held until it answers.
    stack
        .idp
        .set_fault(Endpoint::Registrations, delay(Duration::from_secs(3)));
    let fetches = stack.idp.registrations_fetches();
    eventually(Duration::from_secs(30), "a slow fetch", || {
        (stack.idp.registrations_fetches() > fetches).then_some(())
    });
    let asked = std::time::Instant::now();
    stack.echo.clear();
    assert_403(&stack, &basic(&stack, PENDING), "slow");
    assert_eq!(
        basic(&stack, APPROVED).status,
        200,
        "slow: the last good copy"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "held by the slow fetch: {:?}",
        asked.elapsed()
    );
    stack.idp.clear_faults();
    if !on_ngx() {
        let failed = stack.filter_counter("registrations_failed");
        assert!(failed >= 4, "{failed} failed fetches counted");
    }
    let log = stack.host_log();
    assert!(log.contains("registrations fetch failed"), "warned");
    assert!(!log.contains("oops"), "no document content in the log");
}

#[test]
fn before_the_first_document_credentials_get_503_with_retry_after() {
    let stack = Stack::builder()
        .with_idp(|idp| {
            portal(idp);
            idp.set_fault(Endpoint::Registrations, fault(FaultAnswer::Status(503)));
        })
        .route("/", config(json!({})))
        .start();
    stack.track_secret(SECRET);
    let token = stack.mint(TokenSpec::for_client(APPROVED, &[SCOPE]));
    std::thread::sleep(Duration::from_millis(500));
    for auth in [basic_header(APPROVED, SECRET), format!("Bearer {token}")] {
        let r = stack.get("/", &[("authorization", &auth)]);
        assert_local_503(&r);
        assert_eq!(r.message(), "registrations unavailable", "{r:#?}");
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=2).contains(&retry), "{r:#?}");
    }
    assert_local_reply(&stack.get("/", &[]), 401);
    assert_eq!(stack.token_calls(), 0);
    assert!(stack.upstream().is_empty());
    stack.idp.clear_faults();
    eventually(Duration::from_secs(10), "the first document", || {
        (basic(&stack, APPROVED).status == 200).then_some(())
    });
}

#[test]
fn a_flood_of_unregistered_client_ids_costs_no_okta_call() {
    let stack = start(json!({}));
    stack.idp.reset_counters();
    for i in 0..300 {
        let id = format!("0oa8flood{i:04}");
        let r = stack.get("/", &[("authorization", &basic_header(&id, SECRET))]);
        assert_eq!(r.status, 401, "{id}: {r:#?}");
    }
    // a client id Okta knows but the portal does not, and %-spellings of a registered one
    for id in [STRANGER, "0oa8reg%50ending", "0oa8regPending%00"] {
        let r = basic(&stack, id);
        assert!(matches!(r.status, 401 | 403), "{id}: {r:#?}");
    }
    assert_eq!(stack.token_calls(), 0, "not one Okta call");
    assert!(stack.upstream().is_empty());
}

#[test]
fn an_inline_document_is_enforced_from_the_start() {
    let doc = json!({"applications": [
        {"client_id": APPROVED, "application_id": "app-inline",
         "registrations": [{"product": PRODUCT, "status": "approved"}]},
        {"client_id": PENDING, "registrations": [{"product": PRODUCT, "status": "pending"}]},
    ]});
    let stack = Stack::builder()
        .with_idp(portal)
        .route(
            "/",
            filter_config(json!({ "product": PRODUCT, "registrations": doc })),
        )
        .start();
    stack.track_secret(SECRET);
    assert_eq!(basic(&stack, APPROVED).status, 200);
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-application-id"),
        vec!["app-inline"]
    );
    stack.echo.clear();
    assert_403(&stack, &basic(&stack, PENDING), "pending");
    assert_invalid_client(&stack, &basic(&stack, REVOKED), "not in this document");
    assert_eq!(stack.token_calls(), 1);
    assert_eq!(stack.idp.registrations_fetches(), 0, "nothing fetched");
}

/// Two APIs behind one gateway: two filter instances with their own `product`, each on its
/// own routes, one document. App X is registered for A only, app Y for B only.
#[test]
fn two_products_on_one_gateway_each_let_only_their_own_apps_through() {
    const X: &str = "0oa8regAppX";
    const Y: &str = "0oa8regAppY";
    let products = |product: &str| config(json!({ "product": product }));
    let stack = Stack::builder()
        .with_idp(|idp| {
            portal(idp);
            for (id, product) in [(X, "api-a"), (Y, "api-b")] {
                idp.register_client(id, SECRET, &[SCOPE]);
                idp.set_registration(id, product, "approved");
            }
            idp.set_registration(X, "api-b", "pending");
        })
        .route("/a", products("api-a"))
        .route("/b", products("api-b"))
        .start();
    stack.track_secret(SECRET);
    for path in ["/a", "/b"] {
        let auth = basic_header(STRANGER, SECRET);
        eventually(Duration::from_secs(10), path, || {
            (stack.get(path, &[("authorization", &auth)]).status != 503).then_some(())
        });
    }
    let at = |path: &str, id: &str| {
        stack.echo.clear();
        stack.get(path, &[("authorization", &basic_header(id, SECRET))])
    };
    let r = at("/a", X);
    assert_eq!(r.status, 200, "{r:#?}");
    let doc = stack.idp.registrations_document();
    let app_of = |id: &str| {
        doc["applications"]
            .as_array()
            .and_then(|apps| apps.iter().find(|a| a["client_id"] == id))
            .and_then(|a| a["application_id"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(
        upstream_header(&stack.single_upstream_request(), "x-application-id"),
        vec![app_of(X).as_str()]
    );
    assert_403(&stack, &at("/b", X), "X on B (pending)");
    assert_eq!(at("/b", Y).status, 200);
    assert_403(&stack, &at("/a", Y), "Y on A (not registered)");
    // Bearer tokens the same way
    for (id, ok_on) in [(X, "/a"), (Y, "/b")] {
        let token = stack.mint(TokenSpec::for_client(id, &[SCOPE]));
        for path in ["/a", "/b"] {
            stack.echo.clear();
            let r = stack.get(path, &[("authorization", &format!("Bearer {token}"))]);
            if path == ok_on {
                assert_eq!(r.status, 200, "{id} on {path}: {r:#?}");
            } else {
                assert_403(&stack, &r, &format!("{id} on {path}"));
            }
        }
    }
    // unknown to the portal: 401 on both; known elsewhere only: 403 on both
    for path in ["/a", "/b"] {
        assert_invalid_client(&stack, &at(path, STRANGER), path);
        assert_403(&stack, &at(path, APPROVED), path);
    }
}

/// A realistic large portal: 60,000 applications (about 17 MB of JSON) are fetched, shared with
/// every worker and enforced, on both hosts.
#[test]
fn a_document_of_sixty_thousand_applications_is_fetched_and_enforced() {
    let mut apps: Vec<Value> = (0..60_000)
        .map(|i| {
            json!({
                "client_id": format!("0oa{i:017}"),
                "application_id": format!("6f1c2d3e-4a5b-4c6d-8e9f-{i:012}"),
                "developer_id": format!("0b1c2d3e-4a5b-4c6d-8e9f-{i:012}"),
                "name": format!("Application number {i} of the portal"),
                "registrations": [
                    {"product": PRODUCT, "status": if i % 4 == 0 { "approved" } else { "pending" }},
                    {"product": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "status": "approved"},
                ],
            })
        })
        .collect();
    apps.push(json!({"client_id": APPROVED, "application_id": "app-big",
        "registrations": [{"product": PRODUCT, "status": "approved"}]}));
    let body = json!({ "applications": apps }).to_string().into_bytes();
    assert!(body.len() > 15_000_000, "{} bytes", body.len());
    let stack = Stack::builder()
        .with_idp(move |idp| {
            portal(idp);
            idp.set_registrations_body(Some(body));
        })
        .route("/", config(json!({ "registrations_refresh_s": 2 })))
        .start();
    stack.track_secret(SECRET);
    let auth = basic_header(APPROVED, SECRET);
    let status = eventually(Duration::from_secs(30), "the large document", || {
        let r = stack.get("/", &[("authorization", &auth)]);
        (r.status != 503).then_some(r.status)
    });
    assert_eq!(status, 200);
    let req = stack.single_upstream_request();
    assert_eq!(upstream_header(&req, "x-application-id"), vec!["app-big"]);
    stack.echo.clear();
    // every worker has it (a few requests land on each)
    for _ in 0..6 {
        assert_invalid_client(&stack, &basic(&stack, PENDING), "not in the large document");
    }
    // an unchanged large document: 304s
    let not_modified = stack.idp.registrations_not_modified();
    eventually(Duration::from_secs(10), "a 304", || {
        (stack.idp.registrations_not_modified() > not_modified).then_some(())
    });
}
