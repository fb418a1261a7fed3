//! Bearer tokens verified locally (issue 12) in real Envoy: the default `jwt` mode against the
//! dev IdP's RS256 tokens and JWKS (`/v1/keys`, named by discovery's `jwks_uri`), the forgeries
//! the filter must refuse at no IdP cost, the key set's fetch and refresh rules, key rotation
//! without a restart, and `jwt+introspection`.

use std::net::TcpListener;
use std::time::Duration;

use okta_dcr_auth_tests::*;
use serde_json::{json, Value};

const TOKEN_CLIENT: &str = "0oa9jwtTokenClient";
const APP_ID: &str = "0oa9jwtDcrApp";

fn spec(scopes: &[&str]) -> TokenSpec {
    app_token_spec(TOKEN_CLIENT, APP_ID, scopes)
}

fn raw(stack: &Stack, header: &Value, claims: &Value, signing: Signing) -> String {
    let token = stack.idp.mint_raw(header, claims, signing);
    stack.track_secret(&token);
    token
}

fn get(stack: &Stack, token: &str) -> Response {
    stack.get("/", &[("authorization", &format!("Bearer {token}"))])
}

fn introspections(stack: &Stack) -> u64 {
    stack.idp.calls(Endpoint::Introspect)
}

/// Okta-shaped claims for [`TOKEN_CLIENT`], alive for an hour.
fn claims(stack: &Stack) -> Value {
    let now = now_s();
    json!({
        "ver": 1, "jti": format!("AT.{now}.{}", rand_suffix()), "iss": stack.issuer(),
        "aud": "api://default", "iat": now, "exp": now + 3600, "cid": TOKEN_CLIENT,
        "scp": [SCOPE], "sub": TOKEN_CLIENT, "app_id": APP_ID,
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn header(stack: &Stack) -> Value {
    json!({ "kid": stack.idp.signing_kid(), "alg": "RS256" })
}

fn assert_passes(stack: &Stack, r: &Response) {
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![APP_ID]
    );
    assert_eq!(upstream_header(&req, "x-authenticated-scope"), vec![SCOPE]);
    assert_eq!(
        upstream_header(&req, "authorization").len(),
        1,
        "token kept"
    );
    stack.echo.clear();
}

fn assert_invalid_token(stack: &Stack, r: &Response) {
    assert_local_reply(r, 401);
    assert_eq!(r.www_authenticate(), vec![INVALID_TOKEN_CHALLENGE]);
    assert_eq!(stack.echo.count(), 0, "nothing went upstream");
}

fn jwt_stack() -> Stack {
    Stack::start(filter_config(json!({})))
}

#[test]
fn a_valid_token_passes_with_zero_introspection_calls() {
    let stack = jwt_stack();
    let token = stack.mint(spec(&[SCOPE, "api:write"]));
    let r = get(&stack, &token);
    assert_eq!(r.status, 200, "{r:#?}");
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "x-credential-identifier"),
        vec![APP_ID]
    );
    assert_eq!(
        upstream_header(&req, "x-authenticated-scope"),
        vec!["api:read api:write"]
    );
    assert_eq!(
        upstream_header(&req, "authorization"),
        vec![format!("Bearer {token}").as_str()]
    );
    stack.echo.clear();
    for _ in 0..5 {
        assert_eq!(get(&stack, &token).status, 200);
    }
    assert_eq!(stack.echo.count(), 5);
    assert_eq!(introspections(&stack), 0);
    assert_eq!(
        stack.idp.jwks_fetches(),
        1,
        "one key set fetch for every worker"
    );
}

#[test]
fn forgeries_and_foreign_tokens_are_refused_without_introspection() {
    let stack = jwt_stack();
    // the key set is there first, so that the forgeries below are judged by it
    assert_passes(&stack, &get(&stack, &stack.mint(spec(&[SCOPE]))));
    let genuine = stack.mint(spec(&[SCOPE]));
    let mut changed = claims(&stack);
    changed["app_id"] = json!("0oa9someoneElse");
    let mut expired = spec(&[SCOPE]);
    expired.expires_in_secs = -3600;
    let mut not_yet = claims(&stack);
    not_yet["nbf"] = json!(now_s() + 3600);
    let mut wrong_iss = spec(&[SCOPE]);
    wrong_iss.issuer = Some("https://evil.example/oauth2/default".into());
    let mut wrong_aud = spec(&[SCOPE]);
    wrong_aud.audience = Some("api://other".into());
    let mut no_aud = claims(&stack);
    no_aud.as_object_mut().map(|c| c.remove("aud"));
    let none_header = json!({ "kid": stack.idp.signing_kid(), "alg": "none" });
    let hs_header = json!({ "kid": stack.idp.signing_kid(), "alg": "HS256" });
    let forged = {
        let mut s = spec(&[SCOPE]);
        s.signing = Signing::UnpublishedKey;
        stack.mint(s)
    };
    let cases: Vec<(&str, String)> = vec![
        ("forged signature", forged),
        (
            "payload changed after signing",
            IdpHandle::with_payload(&genuine, &changed),
        ),
        (
            "alg none",
            raw(&stack, &none_header, &claims(&stack), Signing::None),
        ),
        (
            "HS256 keyed with the public key",
            raw(
                &stack,
                &hs_header,
                &claims(&stack),
                Signing::Hs256WithPublicKey,
            ),
        ),
        ("expired", stack.mint(expired)),
        (
            "nbf in the future",
            raw(&stack, &header(&stack), &not_yet, Signing::Genuine),
        ),
        ("wrong iss", stack.mint(wrong_iss)),
        ("wrong aud", stack.mint(wrong_aud)),
        (
            "missing aud",
            raw(&stack, &header(&stack), &no_aud, Signing::Genuine),
        ),
    ];
    for (what, token) in &cases {
        let r = get(&stack, token);
        assert_eq!(r.status, 401, "{what}: {r:#?}");
        assert_invalid_token(&stack, &r);
    }
    assert_eq!(introspections(&stack), 0);
    assert_eq!(stack.idp.jwks_fetches(), 1, "known kids: no refresh");
}

#[test]
fn a_missing_scope_is_403() {
    let stack = jwt_stack();
    let r = get(&stack, &stack.mint(spec(&["api:write"])));
    assert_local_reply(&r, 403);
    assert_eq!(
        r.www_authenticate(),
        vec![insufficient_scope_challenge(SCOPE)]
    );
    assert_eq!(introspections(&stack), 0);
}

#[test]
fn unknown_kids_cost_one_fetch_then_at_most_one_per_30_s() {
    let stack = jwt_stack();
    let mut h = header(&stack);
    h["kid"] = json!("made-up-kid");
    let r = get(
        &stack,
        &raw(&stack, &h, &claims(&stack), Signing::UnpublishedKey),
    );
    assert_invalid_token(&stack, &r);
    assert_eq!(stack.idp.jwks_fetches(), 1, "one fetch, then 401");
    // the first unknown kid after the first fetch may refresh once; then none for 30 s
    for i in 0..1000 {
        let mut h = header(&stack);
        h["kid"] = json!(format!("random-{i}-{}", rand_suffix()));
        let token = stack
            .idp
            .mint_raw(&h, &claims(&stack), Signing::UnpublishedKey);
        assert_eq!(get(&stack, &token).status, 401);
    }
    assert!(
        stack.idp.jwks_fetches() <= 2,
        "1,000 random kids: {} fetches",
        stack.idp.jwks_fetches()
    );
    assert_eq!(introspections(&stack), 0);
}

#[test]
fn a_rotated_key_passes_after_one_fetch_without_a_restart() {
    let stack = jwt_stack();
    assert_passes(&stack, &get(&stack, &stack.mint(spec(&[SCOPE]))));
    assert_eq!(stack.idp.jwks_fetches(), 1);
    stack.idp.publish_next_key();
    let new_kid = stack.idp.switch_signing_key();
    let token = stack.mint(spec(&[SCOPE]));
    assert!(token.len() > 10 && !new_kid.is_empty());
    assert_passes(&stack, &get(&stack, &token));
    assert_eq!(stack.idp.jwks_fetches(), 2, "one refresh for the new kid");
    // tokens of the old key still pass while it is published and cached
    stack.idp.retire_old_keys();
    assert_passes(&stack, &get(&stack, &stack.mint(spec(&[SCOPE]))));
    assert_eq!(stack.idp.jwks_fetches(), 2);
}

#[test]
fn key_pointing_headers_are_never_followed() {
    let attacker = TcpListener::bind("127.0.0.1:0").expect("bind");
    attacker.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}/keys", attacker.local_addr().expect("addr"));
    let stack = jwt_stack();
    let mut h = header(&stack);
    h["kid"] = json!("attacker-kid");
    h["jku"] = json!(url);
    h["x5u"] = json!(url);
    let token = raw(&stack, &h, &claims(&stack), Signing::UnpublishedKey);
    assert_invalid_token(&stack, &get(&stack, &token));
    // the same with the genuine kid: the published key refuses the attacker's signature
    let mut h = header(&stack);
    h["jku"] = json!(url);
    let token = raw(&stack, &h, &claims(&stack), Signing::UnpublishedKey);
    assert_invalid_token(&stack, &get(&stack, &token));
    std::thread::sleep(Duration::from_millis(200));
    assert!(attacker.accept().is_err(), "the attacker's URL was called");
}

#[test]
fn with_the_key_set_down_the_last_good_keys_keep_working() {
    let stack = jwt_stack();
    assert_passes(&stack, &get(&stack, &stack.mint(spec(&[SCOPE]))));
    stack
        .idp
        .set_fault(Endpoint::Keys, fault(FaultAnswer::Status(503)));
    let mut h = header(&stack);
    h["kid"] = json!("unknown-while-down");
    let r = get(
        &stack,
        &raw(&stack, &h, &claims(&stack), Signing::UnpublishedKey),
    );
    assert_invalid_token(&stack, &r);
    for _ in 0..3 {
        assert_passes(&stack, &get(&stack, &stack.mint(spec(&[SCOPE]))));
    }
}

#[test]
fn with_the_key_set_down_and_no_keys_yet_bearer_is_503() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({})))
        .with_idp(|idp| idp.set_fault(Endpoint::Keys, fault(FaultAnswer::Status(503))))
        .start();
    let r = get(&stack, &stack.mint(spec(&[SCOPE])));
    assert_local_reply(&r, 503);
    assert_eq!(stack.echo.count(), 0);
    stack.idp.clear_faults();
    // the next attempt comes soon: the same token then passes
    let token = stack.mint(spec(&[SCOPE]));
    let r = eventually(Duration::from_secs(10), "the keys arrive", || {
        let r = get(&stack, &token);
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.status, 200);
}

#[test]
fn jwt_plus_introspection_refuses_revoked_tokens_and_never_introspects_forgeries() {
    let stack = Stack::start(filter_config(
        json!({ "bearer_validation": "jwt+introspection" }),
    ));
    let token = stack.mint(spec(&[SCOPE]));
    assert_passes(&stack, &get(&stack, &token));
    assert_eq!(introspections(&stack), 1);
    let revoked = stack.mint(spec(&[SCOPE]));
    stack.idp.revoke(&revoked);
    assert_invalid_token(&stack, &get(&stack, &revoked));
    assert_eq!(
        introspections(&stack),
        2,
        "well signed: introspected, refused"
    );
    let mut forged = spec(&[SCOPE]);
    forged.signing = Signing::UnpublishedKey;
    let forged = stack.mint(forged);
    assert_invalid_token(&stack, &get(&stack, &forged));
    assert_eq!(introspections(&stack), 2, "a forgery never reaches Okta");
}

#[test]
fn introspection_mode_refuses_what_cannot_be_a_jwt_without_a_call() {
    let stack = Stack::start(filter_config(
        json!({ "bearer_validation": "introspection" }),
    ));
    assert_invalid_token(&stack, &get(&stack, "opaque-garbage"));
    assert_eq!(introspections(&stack), 0);
    assert_passes(&stack, &get(&stack, &stack.mint(spec(&[SCOPE]))));
    assert_eq!(introspections(&stack), 1);
    assert_eq!(
        stack.idp.jwks_fetches(),
        0,
        "no key set in introspection mode"
    );
}

#[test]
fn a_token_from_the_dev_idps_grant_passes_in_the_default_mode() {
    // what `make run` prints: a client-credentials token from the IdP, then a Bearer call
    let stack = jwt_stack();
    let app = stack.client("0oa9jwtGrantApp", "grant-Secret_9z", &[SCOPE]);
    let body = format!("grant_type=client_credentials&scope={SCOPE}");
    let path = format!(
        "{}/v1/token",
        stack.issuer().split_once("//").map_or("", |(_, rest)| rest)
    );
    let path = &path[path.find('/').unwrap_or(0)..];
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        stack.idp.addr(),
        app.basic(),
        body.len()
    );
    let r = okta_dcr_auth_tests::client::send_raw(
        stack.idp.addr(),
        request.as_bytes(),
        Duration::from_secs(5),
    )
    .expect("the IdP answers");
    assert_eq!(r.status, 200, "{r:#?}");
    let token = r.json()["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    stack.track_secret(&token);
    let r = get(&stack, &token);
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(introspections(&stack), 0);
}
