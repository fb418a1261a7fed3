//! The contract between the dev IdP and the filter's local JWT check (`okta_dcr_auth_core::jwt`):
//! the key set served at `jwks_uri` verifies every genuine token, through rotations, and none of
//! the hostile ones. Natively, over real HTTP, without Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use okta_dcr_auth_core::jwt::{verify, Alg, JwtError, JwtPolicy, KeySet};
use okta_dev_idp::{IdpHandle, Signing, TokenSpec};
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn get(url: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The key set as the filter would fetch it: `jwks_uri` from discovery, then that document.
fn fetch_keys(idp: &IdpHandle) -> KeySet {
    let discovery: Value = serde_json::from_str(&get(&format!(
        "{}/.well-known/oauth-authorization-server",
        idp.issuer()
    )))
    .unwrap();
    let body = get(discovery["jwks_uri"].as_str().unwrap());
    let (keys, skipped) = KeySet::parse(body.as_bytes()).unwrap();
    assert_eq!(skipped, 0);
    keys
}

fn policy(idp: &IdpHandle) -> JwtPolicy {
    JwtPolicy {
        issuer: idp.issuer(),
        audience: "api://default".into(),
        algorithms: vec![Alg::RS256],
        clock_skew_s: 60,
        scopes: vec!["api:read".into()],
        app_claim: "app_id".into(),
    }
}

fn spec() -> TokenSpec {
    let mut s = TokenSpec::for_client("0oaTokenClient", &["api:read", "api:write"]);
    s.claims.insert("app_id".into(), json!("0oaDcrApp"));
    s
}

#[test]
fn genuine_tokens_pass_through_a_rotation() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    let policy = policy(&idp);
    let keys = fetch_keys(&idp);
    let token = idp.mint_token(spec());
    let v = verify(&token, &keys, &policy, now()).unwrap();
    assert_eq!(
        (v.identity.as_str(), v.scope.as_str()),
        ("0oaDcrApp", "api:read api:write")
    );
    assert!(v.exp > now() + 3500);

    // Okta publishes the next key before signing with it: a set fetched in between knows both.
    idp.publish_next_key();
    let keys = fetch_keys(&idp);
    assert_eq!(keys.len(), 2);
    idp.switch_signing_key();
    let rotated = idp.mint_token(spec());
    assert!(verify(&rotated, &keys, &policy, now()).is_ok());

    // Without that fetch, the new kid is unknown until the set is refreshed.
    let stale = KeySet::parse(
        json!({"keys": [idp.jwks()["keys"][0].clone()]})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
    .0;
    assert_eq!(
        verify(&rotated, &stale, &policy, now()),
        Err(JwtError::UnknownKid(idp.signing_kid()))
    );

    // After retirement, tokens under the old kid need a key the set no longer has.
    idp.retire_old_keys();
    let keys = fetch_keys(&idp);
    assert!(matches!(
        verify(&token, &keys, &policy, now()),
        Err(JwtError::UnknownKid(_))
    ));
    assert!(verify(&rotated, &keys, &policy, now()).is_ok());
    let again = idp.rotate_keys();
    let keys = fetch_keys(&idp);
    assert_eq!(keys.kids().collect::<Vec<_>>(), [again.as_str()]);
    assert!(verify(&idp.mint_token(spec()), &keys, &policy, now()).is_ok());
}

#[test]
fn hostile_tokens_are_refused() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    let policy = policy(&idp);
    let keys = fetch_keys(&idp);
    let check = |t: &str| verify(t, &keys, &policy, now());
    let invalid = |t: &str| matches!(check(t), Err(JwtError::Invalid(_)));
    let with = |f: &dyn Fn(&mut TokenSpec)| {
        let mut s = spec();
        f(&mut s);
        idp.mint_token(s)
    };

    assert!(invalid(&with(&|s| s.signing = Signing::UnpublishedKey)));
    assert!(invalid(&with(&|s| s.signing = Signing::None)));
    assert!(invalid(&with(&|s| s.signing = Signing::Hs256WithPublicKey)));
    assert!(invalid(&with(
        &|s| s.signing = Signing::Hs256(b"k".to_vec())
    )));
    assert!(invalid(&IdpHandle::with_payload(
        &idp.mint_token(spec()),
        &json!({"iss": idp.issuer(), "aud": "api://default", "exp": now() + 60, "cid": "0oaAdmin", "scp": ["api:read"]}),
    )));
    assert!(invalid(&with(&|s| s.expires_in_secs = -120)));
    assert!(invalid(&with(&|s| {
        s.claims.insert("nbf".into(), json!(now() + 600));
    })));
    assert!(invalid(&with(
        &|s| s.issuer = Some("http://127.0.0.1:9/oauth2/default".into())
    )));
    assert!(invalid(&with(&|s| s.audience = Some("api://other".into()))));
    assert!(invalid(&with(&|s| {
        s.claims.insert("aud".into(), Value::Null);
    })));
    assert!(invalid(&with(&|s| {
        s.header.insert("kid".into(), Value::Null);
    })));
    assert!(invalid(&with(&|s| {
        s.header.insert("crit".into(), json!(["exp"]));
    })));
    assert_eq!(
        check(&with(&|s| s.scopes = vec!["api:write".into()])),
        Err(JwtError::InsufficientScope)
    );
    let unknown = with(&|s| {
        s.signing = Signing::UnpublishedKey;
        s.header.insert("kid".into(), json!("attacker-kid"));
        s.header
            .insert("jku".into(), json!("http://127.0.0.1:9/jwks.json"));
    });
    assert_eq!(
        check(&unknown),
        Err(JwtError::UnknownKid("attacker-kid".into()))
    );
}
