//! Bearer tokens end to end (issue 3): RFC 7662 introspection at the dev IdP, what the client gets
//! back, what reaches the upstream, how often the IdP is asked, and what is cached.
//!
//! Every token a test mints goes through [`mint`], which tracks it, so the drop-time sweep of the
//! Envoy log (wasm component at trace) looks for it as well as for the introspection secret; most
//! tests also sweep explicitly, and harder ([`assert_tokens_not_in_log`]: parts of tokens too).
//!
//! Every Envoy here has the default 16384 cache slots, whose set-up alone is most of a log at
//! trace; tests share a stack where they can, to keep the file's run time modest.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use okta_dcr_auth_tests::*;
use serde_json::json;

// These tests are about the introspection path, as it was before local JWT checks.
use okta_dcr_auth_tests::introspection_filter_config as filter_config;

/// The token's client (`cid`, `sub`, the introspection's `client_id`).
const TOKEN_CLIENT: &str = "0oa9bearerTokenClient";
/// The DCR app named by the token's `app_id` claim (Okta's `app.clientId`), deliberately not the
/// client id, so that the tests see which one the filter picked.
const APP_ID: &str = "0oa9dcrAppFromClaim";

fn spec(scopes: &[&str]) -> TokenSpec {
    app_token_spec(TOKEN_CLIENT, APP_ID, scopes)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `/v1/introspect` calls the IdP received, for any token.
fn introspections(stack: &Stack) -> u64 {
    stack.idp.calls(Endpoint::Introspect)
}

/// A 200 introspection answer with exactly this JSON body (for answers the dev IdP would never
/// give by itself).
fn introspection_answer(body: &str) -> Fault {
    fault(FaultAnswer::Custom {
        status: 200,
        content_type: "application/json".into(),
        body: body.into(),
        headers: vec![],
    })
}

/// The request reached the upstream exactly once: as `identity` with `scope`, with the client's
/// `Authorization` exactly as sent. Clears the echo, so that later denials can check that nothing
/// else went up.
fn assert_forwarded(
    stack: &Stack,
    authorization: &str,
    identity: &str,
    scope: &str,
) -> EchoRequest {
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![identity],
        "{req:#?}"
    );
    assert_eq!(
        upstream_header(&req, "x-authenticated-scope"),
        vec![scope],
        "{req:#?}"
    );
    assert_eq!(
        upstream_header(&req, "authorization"),
        vec![authorization],
        "the client's Authorization goes upstream unchanged: {req:#?}"
    );
    stack.echo.clear();
    req
}

/// A 200 from the echo upstream, forwarded as [`APP_ID`] with `scope`.
fn assert_passes(stack: &Stack, r: &Response, authorization: &str, scope: &str) {
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert!(
        r.json().get("method").is_some(),
        "the echo answered: {r:#?}"
    );
    assert_forwarded(stack, authorization, APP_ID, scope);
}

/// A local reply with `status`, exactly `challenges`, a JSON message, and nothing upstream.
fn assert_denied(stack: &Stack, r: &Response, status: u16, challenges: &[&str]) {
    assert_local_reply(r, status);
    assert_eq!(r.www_authenticate(), challenges, "answer: {r:#?}");
    assert_eq!(
        stack.echo.count(),
        0,
        "a denied request reached the upstream: {:#?}",
        stack.upstream()
    );
}

fn assert_invalid_token(stack: &Stack, r: &Response) {
    assert_denied(stack, r, 401, &[INVALID_TOKEN_CHALLENGE]);
}

fn assert_insufficient_scope(stack: &Stack, r: &Response, required: &str) {
    assert_denied(
        stack,
        r,
        403,
        &[insufficient_scope_challenge(required).as_str()],
    );
}

/// A 503: no challenge, a JSON message, nothing upstream.
fn assert_503(stack: &Stack, r: &Response) {
    assert_local_503(r);
    assert_eq!(
        stack.echo.count(),
        0,
        "a denied request reached the upstream"
    );
}

/// Asserts that none of `tokens` is in the Envoy log, nor the introspection secret: whole, in
/// every line and spelling ([`assert_no_secret_in_log`]); and in part (the JWT payload or
/// signature alone: half a token is still a leak; its `jti`, which only the token or an
/// introspection answer could have put there) in every line but the host's ABI trace
/// (`wasm_vm.cc`: function names and integers, nine lines in ten of a log at trace), which would
/// make this sweep take seconds.
fn assert_tokens_not_in_log(stack: &Stack, tokens: &[&str]) {
    let mut whole: Vec<&str> = tokens.to_vec();
    whole.push(GATEWAY_CLIENT_SECRET);
    assert_no_secret_in_log(stack, &whole);

    let mut parts: Vec<String> = Vec::new();
    for token in tokens {
        parts.extend(token.split('.').skip(1).map(str::to_string));
        if let Some(jti) = jwt_claims(token).and_then(|c| c["jti"].as_str().map(str::to_string)) {
            parts.push(jti);
        }
    }
    let log = stack.envoy_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("wasm_vm.cc")).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let found = find_secrets_in_log(&lines.join("\n"), &parts);
    assert!(
        found.is_empty(),
        "parts of tokens in the Envoy log:\n{}",
        found.join("\n")
    );
}

#[test]
fn active_token_with_the_scope_reaches_upstream_as_the_app_and_is_introspected_once() {
    let stack = Stack::start(filter_config(json!({})));
    let token = stack.mint(spec(&[SCOPE, "api:write"]));
    let auth = bearer(&token);

    let r = stack.get(
        "/orders/42?expand=lines",
        &[
            ("x-credential-identifier", "spoofed-app"),
            ("authorization", &auth),
        ],
    );
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let req = assert_forwarded(&stack, &auth, APP_ID, "api:read api:write");
    assert!(req.path.starts_with("/orders/42"), "{req:#?}");
    assert_eq!(stack.idp.introspections(&token), 1);
    assert_eq!(introspections(&stack), 1);
    assert_eq!(stack.token_calls(), 0, "a Bearer token needs no token call");

    for i in 0..10 {
        let r = stack.get(&format!("/r/{i}"), &[("authorization", &auth)]);
        assert_passes(&stack, &r, &auth, "api:read api:write");
    }
    assert_eq!(
        stack.idp.introspections(&token),
        1,
        "the positive verdict is cached: ten more requests, no more introspections"
    );
    assert_eq!(introspections(&stack), 1);
}

#[test]
fn refused_tokens_get_the_contract_answer_after_one_introspection() {
    let stack = Stack::start(filter_config(json!({})));
    let issuer = stack.issuer();
    let mut refused: Vec<(String, String, &str)> = Vec::new();

    // Inactive: never issued (well-formed all the same), and revoked.
    let unknown = "eyJraWQiOiJ1bmtub3duIn0.eyJzdWIiOiJub2JvZHkifQ.bm90LWlzc3VlZC1ieS10aGUtSWRQ";
    stack.track_secret(unknown);
    refused.push((
        "never issued".into(),
        unknown.into(),
        INVALID_TOKEN_CHALLENGE,
    ));
    let revoked = stack.mint(spec(&[SCOPE]));
    stack.idp.revoke(&revoked);
    refused.push(("revoked".into(), revoked, INVALID_TOKEN_CHALLENGE));

    // Expired: the IdP still says `active: true`, with an `exp` a minute ago.
    let mut expired = spec(&[SCOPE]);
    expired.expires_in_secs = -60;
    expired.introspect_active_even_if_expired = true;
    refused.push((
        "expired".into(),
        stack.mint(expired),
        INVALID_TOKEN_CHALLENGE,
    ));

    // Another issuer.
    for other in [
        "https://evil.okta.com/oauth2/default".to_string(),
        format!("{issuer}2"),
        issuer.replace("/oauth2/default", "/oauth2/other"),
    ] {
        let mut s = spec(&[SCOPE]);
        s.issuer = Some(other.clone());
        refused.push((
            format!("issuer {other}"),
            stack.mint(s),
            INVALID_TOKEN_CHALLENGE,
        ));
    }

    // Active, but without the scope (`api:reader` is not `api:read`).
    let insufficient = insufficient_scope_challenge(SCOPE);
    for scopes in [&["api:write"][..], &["api:reader"], &[]] {
        refused.push((
            format!("scopes {scopes:?}"),
            stack.mint(spec(scopes)),
            insufficient.as_str(),
        ));
    }

    for (what, token, challenge) in &refused {
        let status = if *challenge == INVALID_TOKEN_CHALLENGE {
            401
        } else {
            403
        };
        for attempt in 0..2 {
            let r = stack.get("/", &[("authorization", &bearer(token))]);
            assert_eq!(r.status, status, "{what} (attempt {attempt}): {r:#?}");
            assert_denied(&stack, &r, status, &[challenge]);
            assert_eq!(
                stack.idp.introspections(token),
                1,
                "{what}: one introspection; the repeat is answered by the negative cache"
            );
        }
    }
    assert_eq!(introspections(&stack), refused.len() as u64);
    assert_eq!(stack.token_calls(), 0);

    let log = stack.envoy_log();
    assert!(
        plugin_log_lines(&log)
            .iter()
            .any(|l| l.contains("[debug]") || l.contains("[trace]")),
        "the plugin's own debug lines should be in the log (wasm at trace)"
    );
    let tokens: Vec<&str> = refused.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_tokens_not_in_log(&stack, &tokens);
}

#[test]
fn token_is_not_accepted_from_the_cache_once_its_exp_passed() {
    let stack = Stack::start(filter_config(json!({})));
    // One the IdP calls inactive once expired, one it still calls active (with the past exp):
    // either way only a new introspection may decide, and it must say no.
    let mut plain = spec(&[SCOPE]);
    plain.expires_in_secs = 2;
    let mut still_active = plain.clone();
    still_active.introspect_active_even_if_expired = true;
    let minted = Instant::now();
    let tokens = [stack.mint(plain), stack.mint(still_active)];
    let exp = tokens
        .iter()
        .map(|t| jwt_claims(t).and_then(|c| c["exp"].as_u64()).unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(exp > now_s(), "exp {exp} is already past");

    for token in &tokens {
        let r = stack.get("/", &[("authorization", &bearer(token))]);
        assert_passes(&stack, &r, &bearer(token), SCOPE);
        assert_eq!(stack.idp.introspections(token), 1);
    }
    // Before exp (at least a second away when minted), the verdicts come from the cache.
    if minted.elapsed() < Duration::from_millis(800) {
        for token in &tokens {
            let r = stack.get("/", &[("authorization", &bearer(token))]);
            assert_passes(&stack, &r, &bearer(token), SCOPE);
            assert_eq!(stack.idp.introspections(token), 1, "cached before exp");
        }
    }

    // Just past exp (whole seconds, as in the token).
    let past_exp = UNIX_EPOCH + Duration::from_millis(exp * 1000 + 300);
    if let Ok(wait) = past_exp.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
    for token in &tokens {
        let r = stack.get("/", &[("authorization", &bearer(token))]);
        assert_invalid_token(&stack, &r);
        assert_eq!(
            stack.idp.introspections(token),
            2,
            "an expired token's cached verdict must not be used"
        );
    }
}

#[test]
fn introspection_client_refused_by_the_idp_is_503_and_logged_without_the_secret() {
    let wrong = "wrong-Gateway_Secret-7e6d5c4b3a";
    let stack = Stack::start(filter_config(
        json!({ "introspection_client_secret": wrong }),
    ));
    stack.track_secret(wrong);
    let token = stack.mint(spec(&[SCOPE]));
    for n in 1..=2 {
        let r = stack.get("/", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 503, "never a 401 to the client: {r:#?}");
        assert_503(&stack, &r);
        assert_eq!(
            stack.idp.introspections(&token),
            n,
            "the gateway's own failure is not a verdict on the token: never cached"
        );
    }
    let line = eventually(
        Duration::from_secs(5),
        "a warning or error from the filter about its introspection client",
        || {
            let log = stack.envoy_log();
            plugin_log_lines(&log)
                .into_iter()
                .find(|l| {
                    (l.contains("[warning]")
                        || l.contains("[warn]")
                        || l.contains("[error]")
                        || l.contains("[critical]"))
                        && l.to_ascii_lowercase().contains("introspection")
                })
                .map(str::to_string)
        },
    );
    eprintln!("the filter logged: {line}");
    assert_no_secret_in_log(&stack, &[wrong]);
    assert_tokens_not_in_log(&stack, &[&token]);
}

#[test]
fn idp_faults_and_unusable_introspection_answers_are_503_never_cached_then_recover() {
    // One worker: the filter pauses IdP calls after a few failures in a row on a worker, which
    // would keep later rounds from reaching the IdP; with one worker every round's recovery
    // resets that count. A 429 pauses calls until its reset: it comes last.
    let stack = Stack::builder()
        .concurrency(1)
        .route("/slow", filter_config(json!({ "idp_timeout_ms": 300 })))
        .route("/", filter_config(json!({})))
        .start();
    let claims = format!(
        r#""scope":"{SCOPE}","client_id":"{TOKEN_CLIENT}","app_id":"{APP_ID}","exp":{},"iat":{},"iss":"{}","aud":"api://default","token_type":"Bearer""#,
        now_s() + 3600,
        now_s(),
        stack.issuer()
    );
    let rounds: Vec<(&str, &str, Fault)> = vec![
        ("500", "/", fault(FaultAnswer::Status(500))),
        ("garbage", "/", fault(FaultAnswer::Garbage)),
        ("connection reset", "/", fault(FaultAnswer::ResetConnection)),
        ("HTML 200", "/", fault(FaultAnswer::Html)),
        ("empty 200", "/", fault(FaultAnswer::EmptyOk)),
        (
            r#""active":"true" (a string)"#,
            "/",
            introspection_answer(&format!(r#"{{"active":"true",{claims}}}"#)),
        ),
        (
            r#""active":1"#,
            "/",
            introspection_answer(&format!(r#"{{"active":1,{claims}}}"#)),
        ),
        (
            "no active",
            "/",
            introspection_answer(&format!(r#"{{{claims}}}"#)),
        ),
        (
            "an array",
            "/",
            introspection_answer(&format!(r#"[{{"active":true,{claims}}}]"#)),
        ),
        (
            "slower than idp_timeout_ms",
            "/slow",
            delay(Duration::from_millis(1500)),
        ),
        (
            "429",
            "/",
            fault(FaultAnswer::RateLimited { reset_in_secs: 1 }),
        ),
    ];
    let mut tokens = Vec::new();
    for (what, path, fault) in rounds {
        let rate_limited = matches!(fault.answer, FaultAnswer::RateLimited { .. });
        let slow = !fault.delay.is_zero();
        let token = stack.mint(spec(&[SCOPE]));
        let auth = bearer(&token);
        stack.idp.set_fault(Endpoint::Introspect, fault);

        for attempt in 1..=2u64 {
            let started = Instant::now();
            let r = stack.get(path, &[("authorization", &auth)]);
            let took = started.elapsed();
            assert_eq!(r.status, 503, "{what}, attempt {attempt}: {r:#?}");
            assert_503(&stack, &r);
            if slow {
                assert!(
                    took >= Duration::from_millis(250) && took < Duration::from_millis(1400),
                    "{what}: answered after {took:?}, idp_timeout_ms is 300"
                );
            }
            let calls = stack.idp.introspections(&token);
            if rate_limited && attempt == 2 {
                // The filter may hold calls back until the reset.
                assert!((1..=2).contains(&calls), "{what}: {calls} introspections");
            } else {
                assert_eq!(calls, attempt, "{what}: a failure is never cached");
            }
        }

        stack.idp.clear_faults();
        let before = stack.idp.introspections(&token);
        let r = if rate_limited {
            eventually(
                Duration::from_secs(6),
                "a 200 once the rate limit reset",
                || {
                    let r = stack.get(path, &[("authorization", &auth)]);
                    match r.status {
                        200 => Some(r),
                        503 => None,
                        other => panic!("{what}: while rate limited: {other}: {r:#?}"),
                    }
                },
            )
        } else {
            stack.get(path, &[("authorization", &auth)])
        };
        assert_eq!(r.status, 200, "{what}: after recovery: {r:#?}");
        assert_passes(&stack, &r, &auth, SCOPE);
        assert_eq!(
            stack.idp.introspections(&token),
            before + 1,
            "{what}: the 200 comes from one new introspection"
        );
        tokens.push(token);
    }
    assert_eq!(stack.token_calls(), 0);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_tokens_not_in_log(&stack, &refs);
}

#[test]
fn scheme_is_case_insensitive_and_tokens_outside_b64token_are_401_without_an_introspection() {
    let stack = Stack::start(filter_config(json!({})));
    let token = stack.mint(spec(&[SCOPE]));
    for scheme in ["bearer", "BEARER", "bEaReR", "Bearer"] {
        let auth = format!("{scheme} {token}");
        let r = stack.get("/", &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "scheme {scheme:?}: {r:#?}");
        assert_passes(&stack, &r, &auth, SCOPE);
    }
    assert_eq!(
        stack.idp.introspections(&token),
        1,
        "the scheme's spelling does not make another credential"
    );

    let values = [
        format!("Bearer \"{token}\""),
        format!("Bearer {token} extra"),
        format!("Bearer {token}%20"),
        format!("Bearer {token}\u{e9}"),
        "Bearer \"abc\"".to_string(),
        "Bearer abc def".to_string(),
        "Bearer abc%2Edef".to_string(),
        "Bearer t\u{f6}ken".to_string(),
        "Bearer a=b".to_string(),
        "Bearer ==".to_string(),
        "Bearer abc;def".to_string(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
    ];
    for value in &values {
        let r = stack.get("/", &[("authorization", value)]);
        assert_eq!(r.status, 401, "{value:?}: {r:#?}");
        assert_invalid_token(&stack, &r);
    }
    assert_eq!(
        introspections(&stack),
        1,
        "malformed tokens never reach the IdP"
    );
    assert_tokens_not_in_log(&stack, &[&token]);
}

#[test]
fn app_claim_falls_back_to_cid_then_client_id() {
    let stack = Stack::start(filter_config(json!({ "app_claim": "dcr_app" })));

    // The configured claim wins over app_id, cid and client_id.
    let mut with_claim = spec(&[SCOPE]);
    with_claim
        .claims
        .insert("dcr_app".into(), json!("0oa9viaDcrAppClaim"));
    let token = stack.mint(with_claim);
    let auth = bearer(&token);
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_forwarded(&stack, &auth, "0oa9viaDcrAppClaim", SCOPE);

    // Without it: the dev IdP, like Okta, answers `client_id` (the token's cid), never `app_id`.
    let token = stack.mint(spec(&[SCOPE]));
    let auth = bearer(&token);
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_forwarded(&stack, &auth, TOKEN_CLIENT, SCOPE);

    // An introspection answer that carries `cid` too: cid comes before client_id.
    let token = stack.mint(spec(&[SCOPE]));
    let auth = bearer(&token);
    let body = json!({
        "active": true, "scope": SCOPE, "cid": "0oa9fromCid", "client_id": "0oa9fromClientId",
        "app_id": APP_ID, "exp": now_s() + 3600, "iat": now_s(), "iss": stack.issuer(),
        "aud": "api://default", "token_type": "Bearer",
    });
    stack.idp.set_fault(
        Endpoint::Introspect,
        introspection_answer(&body.to_string()),
    );
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_forwarded(&stack, &auth, "0oa9fromCid", SCOPE);
    assert_eq!(introspections(&stack), 3);
}

#[test]
fn accept_restricts_the_schemes_without_an_idp_call() {
    let stack = Stack::builder()
        .route(
            "/basic-only",
            filter_config(json!({
                "accept": ["basic"],
                "introspection_client_id": null,
                "introspection_client_secret": null,
            })),
        )
        .route(
            "/bearer-only",
            filter_config(json!({ "accept": ["bearer"] })),
        )
        .start();
    let app = stack.client("0oa9acceptApp", "accept-Secret_5a6b7c8d9e", &[SCOPE]);
    let token = stack.mint(spec(&[SCOPE]));

    let r = stack.get("/basic-only", &[("authorization", &bearer(&token))]);
    assert_denied(&stack, &r, 401, &[BASIC_CHALLENGE]);
    assert_eq!(
        introspections(&stack),
        0,
        "a refused scheme never reaches the IdP"
    );

    let r = stack.get("/bearer-only", &[("authorization", &app.basic())]);
    assert_denied(&stack, &r, 401, &[BEARER_CHALLENGE]);
    let r = stack.get("/bearer-only", &[("authorization", &app.raw())]);
    assert_denied(&stack, &r, 401, &[BEARER_CHALLENGE]);
    assert_eq!(
        stack.token_calls(),
        0,
        "a refused scheme never reaches the IdP"
    );

    // Each route still takes its own scheme.
    let auth = bearer(&token);
    let r = stack.get("/bearer-only", &[("authorization", &auth)]);
    assert_passes(&stack, &r, &auth, SCOPE);
    assert_eq!(introspections(&stack), 1);
    let r = stack.get("/basic-only", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(stack.token_calls(), 1);
}

#[test]
fn audience_and_scopes_are_checked_per_route_and_a_change_revalidates_the_token() {
    let stack = Stack::builder()
        // no audience check on these three (introspection mode makes it optional)
        .route(
            "/read",
            filter_config(json!({ "scopes": ["api:read"], "audience": null })),
        )
        .route(
            "/write",
            filter_config(json!({ "scopes": ["api:write"], "audience": null })),
        )
        .route(
            "/both",
            filter_config(json!({ "scopes": ["api:read", "api:write"], "audience": null })),
        )
        .route(
            "/orders",
            filter_config(json!({ "scopes": ["api:read"], "audience": "api://orders" })),
        )
        .start();

    // Another scope is another decision: one introspection per route, then each is cached. The
    // audience api://default is not the one /orders wants: 401 there.
    let both = stack.mint(spec(&["api:read", "api:write"]));
    let auth = bearer(&both);
    for round in 0..2 {
        for path in ["/read", "/write", "/both"] {
            let r = stack.get(path, &[("authorization", &auth)]);
            assert_eq!(r.status, 200, "{path}, round {round}: {r:#?}");
            assert_passes(&stack, &r, &auth, "api:read api:write");
        }
        let r = stack.get("/orders", &[("authorization", &auth)]);
        assert_invalid_token(&stack, &r);
        assert_eq!(
            stack.idp.introspections(&both),
            4,
            "round {round}: one introspection per route, the rest from each route's cache"
        );
    }

    // A yes on /read is not reused where more scope is needed.
    let read = stack.mint(spec(&["api:read"]));
    let auth = bearer(&read);
    let r = stack.get("/read", &[("authorization", &auth)]);
    assert_passes(&stack, &r, &auth, "api:read");
    let r = stack.get("/write", &[("authorization", &auth)]);
    assert_insufficient_scope(&stack, &r, "api:write");
    let r = stack.get("/both", &[("authorization", &auth)]);
    assert_insufficient_scope(&stack, &r, "api:read api:write");
    assert_eq!(stack.idp.introspections(&read), 3);

    // A yes without an audience check is not reused where there is one, nor the reverse.
    let mut orders = spec(&["api:read"]);
    orders.audience = Some("api://orders".into());
    let orders = stack.mint(orders);
    let auth = bearer(&orders);
    let r = stack.get("/orders", &[("authorization", &auth)]);
    assert_passes(&stack, &r, &auth, "api:read");
    let r = stack.get("/read", &[("authorization", &auth)]);
    assert_passes(&stack, &r, &auth, "api:read");
    assert_eq!(stack.idp.introspections(&orders), 2);

    // `aud` as a list: it must contain the audience, exactly.
    for (aud, status) in [
        (json!(["api://default", "api://orders"]), 200),
        (json!(["api://default", "api://ordersX"]), 401),
        (json!("api://orders/"), 401),
    ] {
        let mut s = spec(&["api:read"]);
        s.claims.insert("aud".into(), aud.clone());
        let token = stack.mint(s);
        let auth = bearer(&token);
        let r = stack.get("/orders", &[("authorization", &auth)]);
        assert_eq!(r.status, status, "aud {aud}: {r:#?}");
        if status == 200 {
            assert_passes(&stack, &r, &auth, "api:read");
        } else {
            assert_invalid_token(&stack, &r);
        }
        assert_eq!(stack.idp.introspections(&token), 1);
    }
}

/// The introspection client's secret from the VM's environment (Envoy's
/// `vm_config.environment_variables`, which Istio's `vmConfig.env` and Envoy Gateway's
/// `env.hostKeys` fill), not from the configuration: tokens are introspected with it, and it
/// never reaches the log.
#[test]
fn the_introspection_secret_can_come_from_the_vms_environment() {
    if envoy_only("vm_config.environment_variables") {
        return;
    }
    let stack = Stack::builder()
        .envoy_env("OKTA_INTROSPECTION_CLIENT_SECRET", GATEWAY_CLIENT_SECRET)
        .route(
            "/",
            introspection_filter_config(json!({
                "introspection_client_secret": null,
                "introspection_client_secret_env": "OKTA_INTROSPECTION_CLIENT_SECRET",
            })),
        )
        .start();
    stack.track_secret(GATEWAY_CLIENT_SECRET);
    let token = stack.mint(spec(&[SCOPE]));
    let auth = bearer(&token);
    let r = stack.get("/r", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_forwarded(&stack, &auth, APP_ID, SCOPE);
    assert_eq!(stack.idp.introspections(&token), 1);
}
