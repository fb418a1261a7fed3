//! Client-sent identity headers never reach the upstream, in any case or spelling, on either host
//! (CONTRACT "Upstream"; issue 13: on ngx_wasm_module they did).
//!
//! Envoy removes a request header for good. ngx_wasm_module 9136e463 only hides it from the
//! filter (it zeroes the entry's hash in nginx's `headers_in`), and nginx's proxy module forwards
//! every entry anyway; an entry can only be overwritten in place. So on ngx the filter overwrites
//! each client-sent identity header (with its own value, or an empty one), and refuses with 400
//! what it cannot overwrite: several copies of one name, or a name nginx hashed without its `.`
//! (these harness nginx settings let `.` and `_` names through: `ignore_invalid_headers off`,
//! `underscores_in_headers on`). Either way no client value goes upstream, which is what every
//! test here asserts first.

use okta_dcr_auth_tests::*;
use serde_json::json;

const APP_ID: &str = "0oa8spoofApp";
const APP_SECRET: &str = "spoof-Secret_7d6c5b4a3928";
const OURS: [&str; 2] = ["x-credential-identifier", "x-authenticated-scope"];

/// No header of any upstream request carries a client's `spoofed-...` value.
fn assert_no_spoofed_value_upstream(stack: &Stack, what: &str) {
    for req in stack.upstream() {
        for (name, value) in &req.headers {
            assert!(
                !value.contains("spoofed"),
                "{what}: a client-sent identity header reached the upstream: {name}: {value}\n{req:#?}"
            );
        }
    }
}

/// Other spellings of our headers (`_`, `.`, for `-`): none on Envoy; on ngx_wasm_module, at most
/// an empty value (the entry nginx still forwards after the filter emptied and removed it).
fn assert_other_spellings_gone(req: &EchoRequest, what: &str) {
    for (name, value) in &req.headers {
        let folded = name.to_ascii_lowercase().replace(['_', '.'], "-");
        if OURS.contains(&folded.as_str()) && !OURS.contains(&name.as_str()) {
            assert!(
                on_ngx() && value.is_empty(),
                "{what}: {name}: {value:?} reached the upstream\n{req:#?}"
            );
        }
    }
}

fn assert_refused_400(stack: &Stack, r: &Response, what: &str) {
    assert_local_reply(r, 400);
    assert_eq!(
        r.www_authenticate(),
        vec![INVALID_REQUEST_CHALLENGE],
        "{what}: {r:#?}"
    );
    assert_eq!(stack.echo.count(), 0, "{what}: went upstream");
}

fn with(spoofs: &[(&'static str, &'static str)], auth: &str) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = spoofs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    h.insert(h.len() / 2, ("authorization".into(), auth.into()));
    h
}

fn send(stack: &Stack, headers: &[(String, String)]) -> Response {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    stack.get("/", &refs)
}

/// Basic and Bearer credentials of one app, and the identity each forwards.
fn credentials(stack: &Stack) -> Vec<(&'static str, String, &'static str)> {
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let token = stack
        .idp
        .mint_token(TokenSpec::for_client("0oa8spoofBearer", &[SCOPE]));
    stack.track_secret(&token);
    vec![
        ("Basic", app.basic(), APP_ID),
        ("Bearer", format!("Bearer {token}"), "0oa8spoofBearer"),
    ]
}

#[test]
fn one_copy_of_each_spelling_is_overwritten_or_removed_on_both_hosts() {
    let stack = Stack::start(filter_config(json!({})));
    let spoofs = [
        ("X-Credential-Identifier", "spoofed-id-upper"),
        ("x_credential_identifier", "spoofed-id-underscore"),
        ("X_Authenticated_Scope", "spoofed-scope-underscore"),
        ("x-AUTHENTICATED-scope", "spoofed-scope-mixed"),
    ];
    for (what, auth, identity) in credentials(&stack) {
        stack.echo.clear();
        let r = send(&stack, &with(&spoofs, &auth));
        assert_eq!(r.status, 200, "{what}: {r:#?}");
        assert_no_spoofed_value_upstream(&stack, what);
        let req = stack.single_upstream_request();
        assert_eq!(
            upstream_header(&req, OURS[0]),
            vec![identity],
            "{what}: {req:#?}"
        );
        assert_eq!(
            upstream_header(&req, OURS[1]),
            vec![SCOPE],
            "{what}: {req:#?}"
        );
        assert_other_spellings_gone(&req, what);
    }
}

/// Envoy removes every copy. ngx_wasm_module can overwrite only the first copy of a name and
/// hides the rest, which nginx still forwards: the filter refuses the request (400) there.
#[test]
fn several_copies_are_removed_on_envoy_and_refused_on_ngx() {
    let stack = Stack::start(filter_config(json!({})));
    let cases: [(&str, &[(&str, &str)]); 3] = [
        (
            "two identical copies",
            &[
                ("x-credential-identifier", "spoofed-copy-1"),
                ("x-credential-identifier", "spoofed-copy-2"),
            ],
        ),
        (
            "two copies in different case",
            &[
                ("X-Authenticated-Scope", "spoofed-copy-3"),
                ("x-authenticated-scope", "spoofed-copy-4"),
            ],
        ),
        (
            "two underscore copies",
            &[
                ("x_credential_identifier", "spoofed-copy-5"),
                ("X_CREDENTIAL_IDENTIFIER", "spoofed-copy-6"),
            ],
        ),
    ];
    let creds = credentials(&stack);
    for (case, spoofs) in cases {
        for (what, auth, identity) in &creds {
            let what = format!("{case}, {what}");
            stack.echo.clear();
            let calls = stack.token_calls();
            let r = send(&stack, &with(spoofs, auth));
            if on_ngx() {
                assert_refused_400(&stack, &r, &what);
                assert_eq!(
                    stack.token_calls(),
                    calls,
                    "{what}: refused before any IdP call"
                );
            } else {
                assert_eq!(r.status, 200, "{what}: {r:#?}");
                let req = stack.single_upstream_request();
                assert_eq!(upstream_header(&req, OURS[0]), vec![*identity], "{what}");
                assert_eq!(upstream_header(&req, OURS[1]), vec![SCOPE], "{what}");
                assert_other_spellings_gone(&req, &what);
            }
            assert_no_spoofed_value_upstream(&stack, &what);
        }
    }
}

/// nginx hashes a header name without the characters it finds invalid (`.` here): the filter's
/// edit does not find that entry, so on ngx_wasm_module the request is refused. (With nginx's
/// default `ignore_invalid_headers on` such headers never reach the filter nor the upstream.)
#[test]
fn dotted_spellings_are_removed_on_envoy_and_refused_on_ngx() {
    let stack = Stack::start(filter_config(json!({})));
    let spoofs = [
        ("x.credential.identifier", "spoofed-dot-1"),
        ("X-Credential.Identifier", "spoofed-dot-2"),
        ("x.authenticated.scope", "spoofed-dot-3"),
    ];
    for (what, auth, identity) in credentials(&stack) {
        stack.echo.clear();
        let r = send(&stack, &with(&spoofs, &auth));
        if on_ngx() {
            assert_refused_400(&stack, &r, what);
        } else {
            assert_eq!(r.status, 200, "{what}: {r:#?}");
            let req = stack.single_upstream_request();
            assert_eq!(upstream_header(&req, OURS[0]), vec![identity], "{what}");
            assert_other_spellings_gone(&req, what);
        }
        assert_no_spoofed_value_upstream(&stack, what);
    }
}

/// A grant without scopes sends no `x-authenticated-scope`: the client's copy is removed (Envoy)
/// or emptied (ngx_wasm_module, where nginx forwards the emptied entry).
#[test]
fn a_spoofed_scope_is_not_forwarded_when_the_grant_has_no_scope() {
    let stack = Stack::start(filter_config(json!({ "scopes": [] })));
    let token = stack
        .idp
        .mint_token(TokenSpec::for_client("0oa8spoofNoScope", &[]));
    stack.track_secret(&token);
    let r = send(
        &stack,
        &with(
            &[("x-authenticated-scope", "spoofed-admin")],
            &format!("Bearer {token}"),
        ),
    );
    assert_eq!(r.status, 200, "{r:#?}");
    assert_no_spoofed_value_upstream(&stack, "no scope");
    let req = stack.single_upstream_request();
    assert_eq!(upstream_header(&req, OURS[0]), vec!["0oa8spoofNoScope"]);
    let scope = upstream_header(&req, OURS[1]);
    if on_ngx() {
        assert!(scope.iter().all(|v| v.is_empty()), "{req:#?}");
    } else {
        assert!(scope.is_empty(), "{req:#?}");
    }
}

/// Refused requests never go upstream, spoofed headers or not.
#[test]
fn spoofed_headers_on_refused_requests_go_nowhere() {
    let stack = Stack::start(filter_config(json!({})));
    let spoofs = [
        ("X-Credential-Identifier", "spoofed-id"),
        ("x_authenticated_scope", "spoofed-scope"),
    ];
    stack.track_secret("wrong-Secret_0192837465");
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    for (what, auth, status) in [
        ("malformed", "Basic !!!".to_string(), 401),
        (
            "wrong secret",
            app.basic_with_secret("wrong-Secret_0192837465"),
            401,
        ),
    ] {
        let r = send(&stack, &with(&spoofs, &auth));
        assert_eq!(r.status, status, "{what}: {r:#?}");
        assert!(!r.body.contains("spoofed"), "{what}: {r:#?}");
    }
    assert_eq!(stack.echo.count(), 0);
}
