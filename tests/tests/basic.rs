//! Basic client credentials end to end (issue 2): what the client gets back, what reaches the
//! upstream, what the IdP is asked, and what is cached.
//!
//! Every stack sweeps Envoy's log (wasm component at trace) for the secrets and tokens it knows of
//! when it is dropped.

use std::time::Duration;

use okta_dcr_auth_tests::*;
use serde_json::json;

const APP_ID: &str = "0oa8basicDcrApp";
const APP_SECRET: &str = "app-Secret_4f9c2e7a1b3d";

/// The default configuration and one client allowed the required scope.
fn stack_with_app() -> (Stack, TestClient) {
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE, "api:write"]);
    (stack, app)
}

/// A 401 for Basic credentials: the Basic challenge only, a JSON message, nothing upstream.
fn assert_basic_401(stack: &Stack, r: &Response) {
    assert_local_reply(r, 401);
    assert_eq!(
        r.www_authenticate(),
        vec![BASIC_CHALLENGE],
        "answer: {r:#?}"
    );
    assert_eq!(
        stack.echo.count(),
        0,
        "a denied request reached the upstream"
    );
}

/// The request reached the upstream once, as `client_id` with `scope`, with the access token the
/// IdP issued and none of the client's secret.
fn assert_forwarded_as(stack: &Stack, client_id: &str, secret: &str, scope: &str) -> String {
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![client_id],
        "{req:#?}"
    );
    assert_eq!(
        upstream_header(&req, "x-authenticated-scope"),
        vec![scope],
        "{req:#?}"
    );
    let auth = upstream_header(&req, "authorization");
    assert_eq!(auth.len(), 1, "one authorization upstream: {req:#?}");
    let token = auth[0]
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("upstream authorization is not Bearer: {req:#?}"));
    let claims =
        jwt_claims(token).unwrap_or_else(|| panic!("upstream token is not a JWT: {token}"));
    assert_eq!(claims["cid"], client_id, "token claims: {claims}");
    assert_eq!(claims["app_id"], client_id, "token claims: {claims}");
    assert_eq!(claims["iss"], stack.issuer(), "token claims: {claims}");
    assert_secret_not_upstream(&req, client_id, secret);
    token.to_string()
}

fn assert_secret_not_upstream(req: &EchoRequest, client_id: &str, secret: &str) {
    let forms = [
        secret.to_string(),
        form_encode(secret),
        basic_header(client_id, secret),
        raw_basic_header(client_id, secret),
    ];
    for (name, value) in &req.headers {
        for f in &forms {
            assert!(
                !value.contains(f.as_str()),
                "the client secret went upstream in {name}: {value}"
            );
        }
    }
}

#[test]
fn valid_base64_credentials_reach_upstream_with_the_identity_and_the_okta_token() {
    let (stack, app) = stack_with_app();
    let r = stack.get(
        "/orders/42?expand=lines",
        &[("authorization", &app.basic())],
    );
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(r.json()["method"], "GET", "the echo answered: {r:#?}");
    assert_forwarded_as(&stack, APP_ID, APP_SECRET, SCOPE);
    assert!(stack
        .single_upstream_request()
        .path
        .starts_with("/orders/42"));

    assert_eq!(stack.token_calls(), 1);
    let calls = stack.idp.token_requests();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.client_id, APP_ID);
    assert_eq!(call.client_secret, APP_SECRET);
    assert_eq!(call.grant_type, "client_credentials");
    assert_eq!(call.scope.as_deref(), Some(SCOPE));
    assert!(
        call.authorization_scheme.eq_ignore_ascii_case("basic"),
        "the filter must authenticate as the client with client_secret_basic, got {:?}",
        call.authorization_scheme
    );
}

#[test]
fn raw_basic_credentials_as_the_konnect_docs_print_them_are_accepted() {
    let (stack, app) = stack_with_app();
    let r = stack.get("/", &[("Authorization", &app.raw())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_forwarded_as(&stack, APP_ID, APP_SECRET, SCOPE);
    let calls = stack.idp.token_requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].client_id.as_str(), calls[0].client_secret.as_str()),
        (APP_ID, APP_SECRET)
    );
}

#[test]
fn raw_basic_credentials_are_refused_when_allow_raw_basic_is_false() {
    let stack = Stack::start(filter_config(json!({ "allow_raw_basic": false })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.raw())]);
    assert_basic_401(&stack, &r);
    assert_eq!(
        stack.token_calls(),
        0,
        "a refused form must not reach the IdP"
    );

    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "the base64 form still works: {r:#?}");
}

#[test]
fn scheme_name_is_case_insensitive() {
    let (stack, app) = stack_with_app();
    let b64 = app.basic().trim_start_matches("Basic ").to_string();
    for scheme in ["basic", "BASIC", "bAsIc"] {
        let r = stack.get("/", &[("authorization", &format!("{scheme} {b64}"))]);
        assert_eq!(r.status, 200, "scheme {scheme:?}: {r:#?}");
    }
}

#[test]
fn wrong_secret_is_401_after_asking_the_idp() {
    let (stack, app) = stack_with_app();
    let wrong = "wrong-Secret_0d1e2f3a4b5c";
    stack.track_secret(wrong);
    let r = stack.get("/", &[("authorization", &app.basic_with_secret(wrong))]);
    assert_basic_401(&stack, &r);
    assert_eq!(stack.token_calls(), 1);
    assert_eq!(stack.idp.token_requests()[0].client_secret, wrong);
}

#[test]
fn wrong_secret_is_not_served_from_cache() {
    let (stack, app) = stack_with_app();
    let wrong = "wrong-Secret_9a8b7c6d5e4f";
    stack.track_secret(wrong);

    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(stack.token_calls(), 1);
    stack.echo.clear();

    // Same client, another secret, while the right one's success is cached.
    let r = stack.get("/", &[("authorization", &app.basic_with_secret(wrong))]);
    assert_basic_401(&stack, &r);
    assert_eq!(
        stack.token_calls(),
        2,
        "a wrong secret must be checked at the IdP, not answered by the cached success"
    );

    // The right secret is still served from the cache.
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(stack.token_calls(), 2);
}

#[test]
fn wrong_secret_twice_is_answered_from_the_negative_cache() {
    let (stack, app) = stack_with_app();
    let wrong = "wrong-Secret_1122334455aa";
    stack.track_secret(wrong);
    for _ in 0..2 {
        let r = stack.get("/", &[("authorization", &app.basic_with_secret(wrong))]);
        assert_basic_401(&stack, &r);
    }
    assert_eq!(
        stack.token_calls(),
        1,
        "within negative_cache_ttl_s the second refusal comes from the cache"
    );
}

#[test]
fn unknown_client_is_401() {
    let stack = Stack::start(filter_config(json!({})));
    let secret = "unknown-Secret_77ee66dd55cc";
    stack.track_secret(secret);
    let r = stack.get(
        "/",
        &[("authorization", &basic_header("0oa8notRegistered", secret))],
    );
    assert_basic_401(&stack, &r);
    assert_eq!(stack.token_calls(), 1);
}

#[test]
fn malformed_base64_is_401_without_an_idp_call() {
    let (stack, _app) = stack_with_app();
    for value in [
        "Basic !!!not-base64!!!",
        "Basic YWJj=ZGVm",
        "Basic ====",
        "Basic",
        "Basic ",
    ] {
        let r = stack.get("/", &[("authorization", value)]);
        assert_basic_401(&stack, &r);
    }
    assert_eq!(stack.token_calls(), 0);
}

#[test]
fn credentials_without_a_colon_are_401_without_an_idp_call() {
    let (stack, _app) = stack_with_app();
    let r = stack.get(
        "/",
        &[(
            "authorization",
            &format!("Basic {}", b64(b"0oa8basicDcrAppNoColon")),
        )],
    );
    assert_basic_401(&stack, &r);
    assert_eq!(stack.token_calls(), 0);
}

#[test]
fn empty_client_id_or_secret_is_401_without_an_idp_call() {
    let (stack, _app) = stack_with_app();
    for value in [
        format!("Basic {}", b64(format!(":{APP_SECRET}").as_bytes())),
        format!("Basic {}", b64(format!("{APP_ID}:").as_bytes())),
        format!("Basic {}", b64(b":")),
        format!("Basic :{APP_SECRET}"),
        format!("Basic {APP_ID}:"),
    ] {
        let r = stack.get("/", &[("authorization", &value)]);
        assert_basic_401(&stack, &r);
    }
    assert_eq!(stack.token_calls(), 0);
}

#[test]
fn control_characters_and_invalid_utf8_are_401_without_an_idp_call() {
    let (stack, _app) = stack_with_app();
    let mut invalid_utf8 = format!("{APP_ID}:").into_bytes();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, b'x']);
    for value in [
        format!("Basic {}", b64(format!("{APP_ID}:sec\u{1}ret").as_bytes())),
        // Form-decoding yields a newline, an escape and a NUL.
        format!("Basic {}", b64(format!("{APP_ID}:sec%0Aret").as_bytes())),
        format!("Basic {}", b64(format!("{APP_ID}:sec%1Bret").as_bytes())),
        format!("Basic {}", b64(format!("{APP_ID}%00:secret").as_bytes())),
        // Bytes that are not UTF-8, before and after form-decoding.
        format!("Basic {}", b64(&invalid_utf8)),
        format!("Basic {}", b64(format!("{APP_ID}:sec%FFret").as_bytes())),
        // A tab inside the raw form.
        format!("Basic {APP_ID}:sec\tret"),
    ] {
        let r = stack.get("/", &[("authorization", &value)]);
        assert_basic_401(&stack, &r);
    }
    assert_eq!(stack.token_calls(), 0);
}

#[test]
fn secret_with_reserved_characters_reaches_the_idp_intact() {
    let stack = Stack::start(filter_config(json!({})));
    let secret = "Sec:ret+with%25percent/slash=4f";
    let app = stack.client(APP_ID, secret, &[SCOPE]);
    let header = app.basic();
    // RFC 6749 2.3.1: form-encoded before base64.
    let sent = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            header.trim_start_matches("Basic "),
        )
        .unwrap(),
    )
    .unwrap();
    for encoded in ["%3A", "%2B", "%25", "%2F"] {
        assert!(sent.contains(encoded), "{sent}");
    }

    let r = stack.get("/", &[("authorization", &header)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let calls = stack.idp.token_requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].client_id, APP_ID);
    assert_eq!(
        calls[0].client_secret, secret,
        "the IdP must see the secret exactly as registered"
    );
    assert_forwarded_as(&stack, APP_ID, secret, SCOPE);
}

#[test]
fn client_without_the_required_scope_is_403_insufficient_scope() {
    let stack = Stack::start(filter_config(json!({})));
    let app = stack.client(
        "0oa8otherScopeApp",
        "other-Secret_31415926ab",
        &["api:write"],
    );
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_local_reply(&r, 403);
    assert_eq!(
        r.www_authenticate(),
        vec![insufficient_scope_challenge(SCOPE).as_str()]
    );
    assert_eq!(stack.echo.count(), 0);
    assert_eq!(stack.token_calls(), 1);
}

#[test]
fn missing_authorization_is_401_with_both_challenges() {
    let (stack, _app) = stack_with_app();
    let r = stack.get("/", &[]);
    assert_local_reply(&r, 401);
    let challenges = r.www_authenticate().join(" | ");
    assert!(challenges.contains(BEARER_CHALLENGE), "{challenges}");
    assert!(challenges.contains(BASIC_CHALLENGE), "{challenges}");
    assert_eq!(stack.echo.count(), 0);
    assert_eq!(stack.token_calls(), 0);
}

#[test]
fn missing_authorization_with_basic_only_challenges_for_basic_in_the_configured_realm() {
    let stack = Stack::start(filter_config(json!({
        "accept": ["basic"],
        "realm": "orders",
        "introspection_client_id": null,
        "introspection_client_secret": null,
    })));
    let r = stack.get("/", &[]);
    assert_local_reply(&r, 401);
    assert_eq!(
        r.www_authenticate(),
        vec!["Basic realm=\"orders\", charset=\"UTF-8\""]
    );
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn spoofed_identity_headers_are_replaced_by_the_filters_values() {
    let (stack, app) = stack_with_app();
    let auth = app.basic();
    let r = stack.get(
        "/",
        &[
            ("x-credential-identifier", "spoofed-id-1"),
            ("X-Credential-Identifier", "spoofed-id-2"),
            ("X-AUTHENTICATED-SCOPE", "spoofed-scope-1"),
            ("x_credential_identifier", "spoofed-id-3"),
            ("X_Authenticated_Scope", "spoofed-scope-2"),
            ("x_AUTHENTICATED_scope", "spoofed-scope-3"),
            ("authorization", &auth),
        ],
    );
    if on_ngx() {
        // Several copies of one name: ngx_wasm_module cannot take them all out of what nginx
        // forwards, so the filter refuses the request (spoofing.rs).
        assert_local_reply(&r, 400);
        assert_eq!(stack.echo.count(), 0);
        return;
    }
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![APP_ID],
        "{req:#?}"
    );
    assert_eq!(
        upstream_header(&req, "x-authenticated-scope"),
        vec![SCOPE],
        "{req:#?}"
    );
    assert!(
        upstream_header(&req, "x_credential_identifier").is_empty(),
        "{req:#?}"
    );
    assert!(
        upstream_header(&req, "x_authenticated_scope").is_empty(),
        "{req:#?}"
    );
    for (name, value) in &req.headers {
        assert!(
            !value.contains("spoofed"),
            "a spoofed value reached the upstream in {name}: {value}"
        );
    }
}

#[test]
fn forward_access_token_false_sends_no_authorization_upstream() {
    let stack = Stack::start(filter_config(json!({ "forward_access_token": false })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let req = stack.single_upstream_request();
    assert_removed_upstream(&req, "authorization");
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![APP_ID]
    );
    assert_eq!(upstream_header(&req, "x-authenticated-scope"), vec![SCOPE]);
    assert_secret_not_upstream(&req, APP_ID, APP_SECRET);
}

#[test]
fn two_authorization_headers_are_400_invalid_request() {
    let (stack, app) = stack_with_app();
    let good = app.basic();
    let joined = format!("{good}, Bearer abc.def.ghi");
    // Envoy hands the filter repeated `Authorization` headers as one comma-joined value (see the
    // harness test `envoy_folds_repeated_authorization_headers_into_one_value`), so the last case
    // is the same thing sent that way. (An empty repeat is dropped by Envoy: undetectable.)
    let cases: [&[(&str, &str)]; 4] = [
        &[("authorization", &good), ("authorization", &good)],
        &[
            ("Authorization", &good),
            ("AUTHORIZATION", "Basic Zm9vOmJhcg=="),
        ],
        &[
            ("authorization", &good),
            ("authorization", "Bearer abc.def.ghi"),
        ],
        &[("authorization", &joined)],
    ];
    let mut wrong = Vec::new();
    for headers in cases {
        let r = stack.get("/", headers);
        if on_ngx() && headers.len() > 1 {
            // nginx refuses a second Authorization header with its own 400 (an HTML page, no
            // challenge) before any filter runs.
            assert_eq!(r.status, 400, "{headers:?}: {r:#?}");
            continue;
        }
        let challenges = r.www_authenticate();
        let is_json = r
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json");
        if r.status != 400 || challenges != [INVALID_REQUEST_CHALLENGE] || !is_json {
            wrong.push(format!(
                "{headers:?}\n  -> {} {challenges:?} {}",
                r.status, r.body
            ));
        } else {
            assert_local_reply(&r, 400);
        }
    }
    assert!(
        wrong.is_empty(),
        "expected 400 invalid_request for:\n{}",
        wrong.join("\n")
    );
    assert_eq!(stack.echo.count(), 0);
    assert_eq!(stack.token_calls(), 0);
}

#[test]
fn repeated_requests_make_one_token_call() {
    let (stack, app) = stack_with_app();
    let auth = app.basic();
    for i in 0..10 {
        let r = stack.get(&format!("/r/{i}"), &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "request {i}: {r:#?}");
    }
    assert_eq!(stack.token_calls(), 1);
    let upstream = stack.upstream();
    assert_eq!(upstream.len(), 10);
    let first = upstream_header(&upstream[0], "authorization");
    for req in &upstream {
        assert_eq!(
            upstream_header(req, "authorization"),
            first,
            "the cached token is forwarded"
        );
        assert_eq!(
            upstream_header(req, "x-credential-identifier"),
            vec![APP_ID]
        );
    }
}

#[test]
fn concurrent_first_requests_make_one_token_call() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({})))
        .with_idp(|idp| idp.set_fault(Endpoint::Token, delay(Duration::from_millis(400))))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let auth = app.basic();
    let addr = stack.listener();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    client::send(
                        addr,
                        "GET",
                        "/",
                        &[("authorization", &auth)],
                        client::DEFAULT_TIMEOUT,
                    )
                    .map(|r| r.status)
                    .unwrap_or(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "statuses: {statuses:?}");
    if on_ngx() {
        // ngx_wasm_module cannot resume a request from another one's callback: each first
        // request that finds no verdict makes its own call (kong/README.md).
        let calls = stack.token_calls();
        assert!(
            (1..=8).contains(&calls),
            "8 concurrent first requests make 1 to 8 calls on ngx_wasm_module, made {calls}"
        );
        eprintln!("ngx_wasm_module: 8 concurrent first requests made {calls} token calls");
        return;
    }
    assert_eq!(
        stack.token_calls(),
        1,
        "concurrent first requests, across both workers, make one IdP call"
    );
}

#[test]
fn routes_with_different_configuration_do_not_share_verdicts() {
    let stack = Stack::builder()
        .route("/forwarded", filter_config(json!({})))
        .route("/", filter_config(json!({ "forward_access_token": false })))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let auth = app.basic();

    let r = stack.get("/forwarded", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(
        upstream_header(&stack.single_upstream_request(), "authorization").len(),
        1
    );
    assert_eq!(stack.token_calls(), 1);
    stack.echo.clear();

    let r = stack.get("/other", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_removed_upstream(&stack.single_upstream_request(), "authorization");
    assert_eq!(
        stack.token_calls(),
        2,
        "another configuration must not reuse the first one's verdict"
    );

    for path in ["/forwarded", "/other"] {
        assert_eq!(stack.get(path, &[("authorization", &auth)]).status, 200);
    }
    assert_eq!(
        stack.token_calls(),
        2,
        "each configuration's verdict is cached"
    );
}

#[test]
fn no_secret_in_the_log_with_http_at_info_and_wasm_at_trace() {
    // One stack through every Basic outcome, then an explicit sweep (the drop sweeps again).
    let stack = Stack::builder()
        .route("/", filter_config(json!({})))
        .component_log_level("http", "info")
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let wrong = "wrong-Secret_aa00bb11cc22";
    let special = "Spec:ial+Secret%/value_9";
    let special_app = stack.client("0oa8specialApp", special, &[SCOPE]);
    let no_scope = stack.client(
        "0oa8noScopeApp",
        "noScope-Secret_5566778899",
        &["api:write"],
    );
    for auth in [
        app.basic(),
        app.raw(),
        app.basic_with_secret(wrong),
        special_app.basic(),
        no_scope.basic(),
        basic_header("0oa8unknown", "unknown-Secret_ffeeddccbb"),
    ] {
        stack.get("/", &[("authorization", &auth)]);
    }
    stack.get(
        "/",
        &[
            ("authorization", &app.basic()),
            ("authorization", &app.raw()),
        ],
    );
    assert!(
        !plugin_log_lines(&stack.envoy_log()).is_empty(),
        "the plugin logged nothing at trace?"
    );
    assert_no_secret_in_log(
        &stack,
        &[wrong, "unknown-Secret_ffeeddccbb", APP_SECRET, special],
    );
}

#[test]
fn several_required_scopes_are_all_requested_and_forwarded() {
    let stack = Stack::start(filter_config(
        json!({ "scopes": ["api:read", "api:write"] }),
    ));
    let both = stack.client(APP_ID, APP_SECRET, &["api:read", "api:write"]);
    let r = stack.get("/", &[("authorization", &both.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(
        stack.idp.token_requests()[0].scope.as_deref(),
        Some("api:read api:write")
    );
    assert_forwarded_as(&stack, APP_ID, APP_SECRET, "api:read api:write");

    let one = stack.client(
        "0oa8readOnlyApp",
        "readOnly-Secret_8877665544",
        &["api:read"],
    );
    let r = stack.get("/", &[("authorization", &one.basic())]);
    assert_local_reply(&r, 403);
    assert_eq!(
        r.www_authenticate(),
        vec![insufficient_scope_challenge("api:read api:write").as_str()]
    );
}

#[test]
fn verdicts_expire_after_cache_ttl_s_and_negative_cache_ttl_s() {
    let stack = Stack::start(filter_config(
        json!({ "cache_ttl_s": 1, "negative_cache_ttl_s": 1 }),
    ));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let wrong = "wrong-Secret_ttl0123456789";
    stack.track_secret(wrong);
    for _ in 0..2 {
        assert_eq!(
            stack.get("/", &[("authorization", &app.basic())]).status,
            200
        );
        let r = stack.get("/", &[("authorization", &app.basic_with_secret(wrong))]);
        assert_eq!(r.status, 401);
    }
    assert_eq!(stack.token_calls(), 2, "both verdicts cached");
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        stack.get("/", &[("authorization", &app.basic())]).status,
        200
    );
    assert_eq!(
        stack.token_calls(),
        3,
        "the positive verdict expired after cache_ttl_s"
    );
    let r = stack.get("/", &[("authorization", &app.basic_with_secret(wrong))]);
    assert_eq!(r.status, 401);
    assert_eq!(
        stack.token_calls(),
        4,
        "the negative verdict expired after negative_cache_ttl_s"
    );
}

#[test]
fn verdict_is_not_reused_past_the_access_token_expiry() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({ "cache_ttl_s": 300 })))
        .idp_options(IdpOptions {
            token_ttl_secs: 2,
            ..IdpOptions::default()
        })
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    assert_eq!(
        stack.get("/", &[("authorization", &app.basic())]).status,
        200
    );
    let calls = stack.token_calls();
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(
        stack.get("/", &[("authorization", &app.basic())]).status,
        200
    );
    assert_eq!(
        stack.token_calls(),
        calls + 1,
        "expires_in bounds the cached verdict"
    );
    // Every token that went upstream was still valid when it was forwarded.
    for req in stack.upstream() {
        let token = upstream_header(&req, "authorization")[0].trim_start_matches("Bearer ");
        let exp = jwt_claims(token).unwrap()["exp"].as_u64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            exp + 1 >= now,
            "an expired token went upstream (exp {exp}, now {now})"
        );
    }
}

#[test]
fn unauthorized_client_is_401_and_answered_from_the_negative_cache() {
    let (stack, app) = stack_with_app();
    let body = json!({
        "error": "unauthorized_client",
        "error_description": "The client is not authorized to use the provided grant type."
    })
    .to_string();
    stack.idp.set_fault(
        Endpoint::Token,
        Fault::answer(FaultAnswer::Custom {
            status: 400,
            content_type: "application/json".into(),
            body,
            headers: Vec::new(),
        }),
    );
    for _ in 0..3 {
        let r = stack.get("/", &[("authorization", &app.basic())]);
        assert_basic_401(&stack, &r);
    }
    assert_eq!(
        stack.token_calls(),
        1,
        "a definite no for these credentials: asked once, then cached"
    );
}
