//! Unit tests of `jwt` (and the fixtures `jwks`'s tests share): tokens signed with the dev IdP's
//! development keys (`devidp/keys/`, public on purpose, never used elsewhere).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, PrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::*;

pub(crate) const NOW: u64 = 1_800_000_000;
pub(crate) const ISSUER: &str = "https://dev-123.okta.com/oauth2/default";

pub(crate) use crate::jwks::tests::{dev_key, n_of};

pub(crate) fn jwk(kid: &str, key: &PrivateKey, extra: &str) -> String {
    crate::jwks::tests::jwk_json(kid, &n_of(key), extra)
}

/// Published: `k1` (dev key 1, `alg: RS256`), `k2` (dev key 2, no `alg`), `k4096`.
pub(crate) fn key_set() -> KeySet {
    let body = crate::jwks::tests::doc(&[
        jwk("k1", &dev_key("1"), r#","alg":"RS256""#),
        jwk("k2", &dev_key("2"), ""),
        jwk("k4096", &dev_key("4096"), ""),
    ]);
    KeySet::parse(&body).unwrap().0
}

/// A JWKS document publishing `k1` (dev key 1) and `k2` (dev key 2).
pub(crate) fn key_set_body() -> Vec<u8> {
    crate::jwks::tests::doc(&[
        jwk("k1", &dev_key("1"), r#","alg":"RS256""#),
        jwk("k2", &dev_key("2"), ""),
    ])
}

pub(crate) fn policy() -> JwtPolicy {
    JwtPolicy {
        issuer: ISSUER.into(),
        audience: "api://default".into(),
        algorithms: vec![Alg::RS256],
        clock_skew_s: 60,
        scopes: vec!["api:read".into()],
        app_claim: "app_id".into(),
    }
}

pub(crate) fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A compact JWS of `header` and `claims`, signed with `alg` (an RS name) under `key`.
pub(crate) fn sign(header: &Value, claims: &Value, key: &PrivateKey) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let (scheme, hashed) = match header["alg"].as_str() {
        Some("RS384") => (
            Pkcs1v15Sign::new::<Sha384>(),
            Sha384::digest(input.as_bytes()).to_vec(),
        ),
        Some("RS512") => (
            Pkcs1v15Sign::new::<Sha512>(),
            Sha512::digest(input.as_bytes()).to_vec(),
        ),
        _ => (
            Pkcs1v15Sign::new::<Sha256>(),
            Sha256::digest(input.as_bytes()).to_vec(),
        ),
    };
    let signature = key.sign(scheme, &hashed).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Okta's access token claims for the app `0oa-app` (client `0oa-client`), scope `api:read`.
pub(crate) fn claims() -> Value {
    json!({
        "ver": 1,
        "jti": "AT.abc",
        "iss": ISSUER,
        "aud": "api://default",
        "iat": NOW - 10,
        "exp": NOW + 3600,
        "cid": "0oa-client",
        "uid": "00u-user",
        "scp": ["api:read", "api:write"],
        "sub": "0oa-client",
        "app_id": "0oa-app",
    })
}

fn header(kid: &str) -> Value {
    json!({ "kid": kid, "alg": "RS256" })
}

/// `claims()` with `changes` applied (`null` removes the claim).
fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// Signed with dev key 1 as `k1`.
fn token(claims: &Value) -> String {
    sign(&header("k1"), claims, &dev_key("1"))
}

fn check(token: &str) -> Result<Verified, JwtError> {
    verify(token, &key_set(), &policy(), NOW)
}

fn invalid(token: &str) -> &'static str {
    match check(token) {
        Err(JwtError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn okta_access_token_is_verified() {
    let v = check(&token(&claims())).unwrap();
    assert_eq!(v.identity, "0oa-app");
    assert_eq!(v.scope, "api:read api:write");
    assert_eq!(v.exp, NOW + 3600);
    let grant = v.grant();
    assert_eq!(
        (
            grant.identity.as_str(),
            grant.scope.as_str(),
            grant.access_token
        ),
        ("0oa-app", "api:read api:write", None)
    );
}

#[test]
fn identity_claim_order_and_configured_claim() {
    let t = token(&claims_with(json!({"app_id": null})));
    assert_eq!(check(&t).unwrap().identity, "0oa-client");
    let t = token(&claims_with(
        json!({"app_id": null, "cid": null, "client_id": "0oa-c2"}),
    ));
    assert_eq!(check(&t).unwrap().identity, "0oa-c2");
    // A present app claim decides: one that is no non-empty string is refused, not skipped for
    // `cid` (an app claim naming one app, `cid` another, must never pass as the other).
    for odd in [
        json!(""),
        json!(7),
        json!(["0oa-client"]),
        json!({"id": "0oa-client"}),
    ] {
        let t = token(&claims_with(json!({ "app_id": odd })));
        assert_eq!(
            invalid(&t),
            "identity claim not a non-empty string",
            "{odd}"
        );
    }
    let t = token(&claims_with(json!({"app_id": null, "cid": ""})));
    assert_eq!(invalid(&t), "identity claim not a non-empty string");
    let t = token(&claims_with(json!({"app_id": null, "cid": null})));
    assert_eq!(invalid(&t), "no identity claim");
    let t = token(&claims_with(json!({"app_id": "evil\r\nx-admin: 1"})));
    assert_eq!(invalid(&t), "identity claim not header-safe");
    let mut p = policy();
    p.app_claim = "application".into();
    let t = token(&claims_with(json!({"application": "0oa-other"})));
    assert_eq!(
        verify(&t, &key_set(), &p, NOW).unwrap().identity,
        "0oa-other"
    );
}

#[test]
fn scopes_from_scp_or_scope() {
    let t = token(&claims_with(
        json!({"scp": null, "scope": "api:read openid"}),
    ));
    assert_eq!(check(&t).unwrap().scope, "api:read openid");
    let t = token(&claims_with(json!({"scp": "api:read"})));
    assert_eq!(check(&t).unwrap().scope, "api:read");
    for missing in [
        json!({"scp": ["api:write"]}),
        json!({"scp": []}),
        json!({"scp": null}),
        json!({"scp": null, "scope": "api:readx"}),
    ] {
        assert_eq!(
            check(&token(&claims_with(missing.clone()))),
            Err(JwtError::InsufficientScope),
            "{missing}"
        );
    }
    for malformed in [
        json!({"scp": ["api:read", 1]}),
        json!({"scp": ["api:read", "a b"]}),
        json!({"scp": ["api:read", ""]}),
        json!({"scp": ["api:read", "a\nb"]}),
        json!({"scp": {"api:read": true}}),
        json!({"scp": null, "scope": ["api:read"]}),
    ] {
        assert_eq!(
            invalid(&token(&claims_with(malformed.clone()))),
            "malformed scope claim",
            "{malformed}"
        );
    }
    let mut p = policy();
    p.scopes.clear();
    let t = token(&claims_with(json!({"scp": null})));
    assert_eq!(verify(&t, &key_set(), &p, NOW).unwrap().scope, "");
}

#[test]
fn forged_and_tampered_signatures_are_refused() {
    // Signed with a key that is not in the set, under a kid that is.
    let forged = sign(&header("k1"), &claims(), &dev_key("unpublished"));
    assert_eq!(invalid(&forged), "bad signature");
    // Another published key's signature under k1's name.
    let swapped = sign(&header("k1"), &claims(), &dev_key("2"));
    assert_eq!(invalid(&swapped), "bad signature");
    // Payload changed after signing.
    let genuine = token(&claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    let changed = b64(&claims_with(json!({"app_id": "0oa-admin"})));
    assert_eq!(
        invalid(&format!("{}.{changed}.{}", parts[0], parts[2])),
        "bad signature"
    );
    // Header changed after signing (another kid whose key also allows RS256).
    let h2 = b64(&header("k2"));
    assert_eq!(
        invalid(&format!("{h2}.{}.{}", parts[1], parts[2])),
        "bad signature"
    );
    // Truncated and extended signatures.
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    for bad in [
        &sig[..255],
        &[&sig[..], &[0u8][..]].concat()[..],
        &[0u8; 256],
    ] {
        let t = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(bad));
        assert_eq!(invalid(&t), "bad signature");
    }
    // A forged token that is also missing the scope is a 401, not a 403.
    let forged = sign(
        &header("k1"),
        &claims_with(json!({"scp": []})),
        &dev_key("unpublished"),
    );
    assert_eq!(invalid(&forged), "bad signature");
}

#[test]
fn none_and_hmac_are_never_accepted() {
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims())
    );
    assert_eq!(invalid(&unsigned), "segment is not base64url");
    let none = format!(
        "{}.{}.AA",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims())
    );
    assert_eq!(invalid(&none), "alg not allowed");
    // HS256 keyed with the public key's bytes (the classic algorithm confusion).
    let public = rsa::PublicKey::from(dev_key("1"));
    let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
    for alg in [
        "HS256", "HS384", "HS512", "none", "None", "rs256", "ES256", "PS256",
    ] {
        let input = format!(
            "{}.{}",
            b64(&json!({"alg": alg, "kid": "k1"})),
            b64(&claims())
        );
        let mac = crate::jwt::tests::hmac_sha256(pem.as_bytes(), input.as_bytes());
        let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac));
        assert_eq!(invalid(&t), "alg not allowed", "{alg}");
        // Even with every algorithm this filter knows allowed.
        let mut p = policy();
        p.algorithms = Alg::ALL.to_vec();
        assert_eq!(
            verify(&t, &key_set(), &p, NOW),
            Err(JwtError::Invalid("alg not allowed"))
        );
    }
    let no_alg = sign(&json!({"kid": "k1"}), &claims(), &dev_key("1"));
    assert_eq!(invalid(&no_alg), "alg");
}

/// RFC 2104 with SHA-256, for the algorithm-confusion test.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[test]
fn algorithm_must_be_allowed_and_match_the_key() {
    let rs512 = sign(
        &json!({"alg": "RS512", "kid": "k2"}),
        &claims(),
        &dev_key("2"),
    );
    assert_eq!(invalid(&rs512), "alg not allowed");
    let mut p = policy();
    p.algorithms = vec![Alg::RS256, Alg::RS384, Alg::RS512];
    assert!(verify(&rs512, &key_set(), &p, NOW).is_ok());
    let rs384 = sign(
        &json!({"alg": "RS384", "kid": "k2"}),
        &claims(),
        &dev_key("2"),
    );
    assert!(verify(&rs384, &key_set(), &p, NOW).is_ok());
    // k1 states alg RS256: an RS512 token may not use it, even signed with the right key.
    let on_k1 = sign(
        &json!({"alg": "RS512", "kid": "k1"}),
        &claims(),
        &dev_key("1"),
    );
    assert_eq!(
        verify(&on_k1, &key_set(), &p, NOW),
        Err(JwtError::Invalid("alg does not match the key"))
    );
    // The largest modulus accepted.
    let big = sign(&header("k4096"), &claims(), &dev_key("4096"));
    assert!(check(&big).is_ok());
}

#[test]
fn kid_is_required_and_unknown_ones_ask_for_a_refresh() {
    let t = sign(&header("k9"), &claims(), &dev_key("unpublished"));
    assert_eq!(check(&t), Err(JwtError::UnknownKid("k9".into())));
    assert_eq!(
        JwtError::UnknownKid("k9".into()).denial(),
        Denial::InvalidToken
    );
    let t = sign(&json!({"alg": "RS256"}), &claims(), &dev_key("1"));
    assert_eq!(invalid(&t), "no kid");
    for kid in [json!(""), json!(7), json!("a\nb"), json!("k".repeat(257))] {
        let t = sign(
            &json!({"alg": "RS256", "kid": kid}),
            &claims(),
            &dev_key("1"),
        );
        assert_eq!(invalid(&t), "kid");
    }
    // A token that fails a check needing no key never asks for a refresh.
    for c in [
        json!({"iss": "https://evil.example.com/oauth2/default"}),
        json!({"aud": "api://other"}),
        json!({"exp": NOW - 3600}),
        json!({"nbf": NOW + 3600}),
    ] {
        let t = sign(&header("k9"), &claims_with(c), &dev_key("unpublished"));
        assert!(matches!(check(&t), Err(JwtError::Invalid(_))));
    }
    let crit = sign(
        &json!({"alg": "RS256", "kid": "k9", "crit": ["exp"]}),
        &claims(),
        &dev_key("1"),
    );
    assert_eq!(invalid(&crit), "crit header");
}

#[test]
fn key_pointing_headers_are_never_used() {
    let attacker = dev_key("unpublished");
    let embedded = json!({"kty": "RSA", "kid": "evil", "e": "AQAB", "n": n_of(&attacker)});
    for extra in [
        json!({"jku": "https://evil.example.com/jwks"}),
        json!({"x5u": "https://evil.example.com/cert.pem"}),
        json!({"jwk": embedded}),
        json!({"x5c": ["MIIB"]}),
    ] {
        let mut h = json!({"alg": "RS256", "kid": "evil"});
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        // Signed by the attacker under their own kid: unknown here, whatever the header says.
        assert_eq!(
            check(&sign(&h, &claims(), &attacker)),
            Err(JwtError::UnknownKid("evil".into()))
        );
        // Under a published kid: the published key decides.
        h["kid"] = json!("k1");
        assert_eq!(invalid(&sign(&h, &claims(), &attacker)), "bad signature");
        // The genuine issuer adding such a parameter changes nothing.
        assert!(check(&sign(&h, &claims(), &dev_key("1"))).is_ok());
    }
}

#[test]
fn lifetime_with_skew() {
    let ok = [
        json!({"exp": NOW + 1}),
        json!({"exp": NOW - 59}),
        json!({"exp": (NOW + 100) as f64 + 0.5}),
        json!({"nbf": NOW + 60, "iat": NOW + 60}),
        json!({"nbf": NOW - 1000, "iat": null}),
    ];
    for c in ok {
        assert!(check(&token(&claims_with(c.clone()))).is_ok(), "{c}");
    }
    let refused = [
        (json!({"exp": NOW - 60}), "expired"),
        (json!({"exp": 0}), "expired"),
        (json!({"exp": null}), "no exp"),
        (json!({"exp": "1900000000"}), "exp"),
        (json!({"exp": -1}), "exp"),
        (json!({"nbf": NOW + 61}), "nbf in the future"),
        (json!({"nbf": "soon"}), "nbf"),
        (json!({"iat": NOW + 61}), "iat in the future"),
        (json!({"iat": [1]}), "iat"),
    ];
    for (c, reason) in refused {
        assert_eq!(invalid(&token(&claims_with(c.clone()))), reason, "{c}");
    }
    let mut p = policy();
    p.clock_skew_s = 0;
    let t = token(&claims_with(json!({"exp": NOW})));
    assert_eq!(
        verify(&t, &key_set(), &p, NOW),
        Err(JwtError::Invalid("expired"))
    );
}

#[test]
fn issuer_and_audience() {
    let t = token(&claims_with(json!({"iss": format!("{ISSUER}/")})));
    assert!(check(&t).is_ok());
    let t = token(&claims_with(
        json!({"aud": ["api://other", "api://default"]}),
    ));
    assert!(check(&t).is_ok());
    for (c, reason) in [
        (
            json!({"iss": "https://dev-123.okta.com/oauth2/other"}),
            "wrong or missing iss",
        ),
        (
            json!({"iss": "https://dev-123.okta.com"}),
            "wrong or missing iss",
        ),
        (json!({"iss": null}), "wrong or missing iss"),
        (json!({"iss": [ISSUER]}), "wrong or missing iss"),
        (json!({"aud": "api://other"}), "wrong or missing aud"),
        (json!({"aud": null}), "wrong or missing aud"),
        (json!({"aud": []}), "wrong or missing aud"),
        (json!({"aud": ["api://defaul"]}), "wrong or missing aud"),
        (json!({"aud": {"api://default": 1}}), "wrong or missing aud"),
    ] {
        assert_eq!(invalid(&token(&claims_with(c.clone()))), reason, "{c}");
    }
}

#[test]
fn shapes_refused() {
    let good = token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let std_sig = STANDARD.encode(URL_SAFE_NO_PAD.decode(s).unwrap());
    let long_claims = claims_with(json!({"pad": "x".repeat(MAX_TOKEN_LEN)}));
    let bad = [
        (String::new(), "not three segments"),
        (format!("{h}.{p}"), "not three segments"),
        (format!("{h}.{p}.{s}.{s}"), "not three segments"),
        (format!("{h}.{p}.{s}."), "not three segments"),
        (format!("{h}.{p}.{s}=="), "segment is not base64url"),
        (format!("{h}=.{p}.{s}"), "segment is not base64url"),
        (format!("{h}.{p}.{std_sig}"), "segment is not base64url"),
        (format!("{h}. {p}.{s}"), "segment is not base64url"),
        (format!("{h}.{p}\n.{s}"), "segment is not base64url"),
        (format!(".{p}.{s}"), "segment is not base64url"),
        (format!("{h}..{s}"), "segment is not base64url"),
        (format!("{h}.{p}.A"), "segment is not base64url"),
        (format!("{}.{p}.{s}", b64(&json!(["RS256"]))), "header"),
        (
            format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode("{\"alg\":")),
            "header",
        ),
        (format!("{h}.{}.{s}", b64(&json!("claims"))), "payload"),
        (
            format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(b"\xff\xfe")),
            "payload",
        ),
        (
            format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode("{} {}")),
            "payload",
        ),
        (token(&long_claims), "token too long"),
    ];
    for (t, reason) in bad {
        assert_eq!(invalid(&t), reason, "{t:?}");
    }
}

#[test]
fn peek_checks_shape_issuer_and_expiry_only() {
    let t = token(&claims());
    assert_eq!(
        peek(&t, ISSUER, NOW, 60),
        Ok(Peeked {
            kid: Some("k1".into()),
            alg: "RS256".into(),
            exp: NOW + 3600
        })
    );
    // No signature, audience or scope check: a forged token for another API passes the peek.
    let forged = sign(
        &json!({"alg": "RS256"}),
        &claims_with(json!({"aud": "x", "scp": []})),
        &dev_key("unpublished"),
    );
    assert_eq!(peek(&forged, ISSUER, NOW, 60).unwrap().kid, None);
    assert!(matches!(
        peek(&t, "https://other.okta.com/oauth2/default", NOW, 60),
        Err(JwtError::Invalid("wrong or missing iss"))
    ));
    assert!(matches!(
        peek(&t, ISSUER, NOW + 3600 + 60, 60),
        Err(JwtError::Invalid("expired"))
    ));
    assert!(peek(&t, ISSUER, NOW + 3600 + 59, 60).is_ok());
    for garbage in ["", "abc", "a.b.c", "opaque-token-00Tk3y", "a.b"] {
        assert!(peek(garbage, ISSUER, NOW, 60).is_err(), "{garbage}");
    }
    let long_alg = sign(&json!({"alg": "RS256".repeat(4)}), &claims(), &dev_key("1"));
    assert!(peek(&long_alg, ISSUER, NOW, 60).is_err());
}

#[test]
fn errors_never_carry_token_or_claim_values() {
    let secret = "0oa-SECRET-app";
    let cases = [
        token(&claims_with(json!({"app_id": format!("{secret}\n")}))),
        token(&claims_with(json!({"aud": secret}))),
        token(&claims_with(json!({"iss": secret}))),
        token(&claims_with(json!({"scp": [secret]}))),
        sign(
            &header("k1"),
            &claims_with(json!({"app_id": secret})),
            &dev_key("2"),
        ),
    ];
    for t in cases {
        let err = check(&t).unwrap_err();
        let text = format!("{err:?} {}", err.describe());
        assert!(!text.contains(secret) && !text.contains(&t[..20]), "{text}");
    }
    let v = check(&token(&claims())).unwrap();
    assert!(!format!("{v:?}").contains("eyJ"));
}

/// Before any key set was fetched, `verify` against an empty set says whether a fetch could
/// help: a token that fails a check needing no key is refused outright, any other asks for keys.
#[test]
fn empty_key_set_tells_whether_a_fetch_could_help() {
    let none = KeySet::default();
    let p = policy();
    assert_eq!(
        verify(&token(&claims()), &none, &p, NOW),
        Err(JwtError::UnknownKid("k1".into()))
    );
    for refused in [
        "garbage".to_string(),
        token(&claims_with(json!({"aud": "api://other"}))),
        token(&claims_with(json!({"exp": NOW - 3600}))),
        sign(
            &json!({"alg": "HS256", "kid": "k1"}),
            &claims(),
            &dev_key("1"),
        ),
    ] {
        assert!(matches!(
            verify(&refused, &none, &p, NOW),
            Err(JwtError::Invalid(_))
        ));
    }
}

/// The signature checks `verify` makes for `token` (counted by `Jwk::verifies` on this thread).
fn signature_checks(token: &str, keys: &KeySet) -> (Result<Verified, JwtError>, u64) {
    let before = crate::jwks::SIGNATURE_CHECKS.with(|c| c.get());
    let result = verify(token, keys, &policy(), NOW);
    (
        result,
        crate::jwks::SIGNATURE_CHECKS.with(|c| c.get()) - before,
    )
}

#[test]
fn cheap_refusals_come_before_the_signature_check() {
    let keys = key_set();
    let forger = dev_key("unpublished");
    // Forged (a published kid, another key) and failing a check that needs no signature: each
    // is refused without one, whatever the failing claim or header.
    let mut refused = Vec::new();
    for c in [
        json!({"iss": "https://evil.example.com/oauth2/default"}),
        json!({"iss": null}),
        json!({"aud": "api://other"}),
        json!({"aud": null}),
        json!({"exp": NOW - 3600}),
        json!({"exp": null}),
        json!({"exp": "tomorrow"}),
        json!({"nbf": NOW + 3600}),
        json!({"iat": NOW + 3600}),
        json!({"scp": ["api:read", 1]}),
        json!({"scp": {"api:read": true}}),
        json!({"app_id": null, "cid": null, "client_id": null}),
        json!({"app_id": "a\nb"}),
    ] {
        refused.push(sign(&header("k1"), &claims_with(c), &forger));
    }
    for h in [
        json!({"alg": "RS256"}),
        json!({"alg": "RS256", "kid": ""}),
        json!({"alg": "RS512", "kid": "k1"}),
        json!({"alg": "RS384", "kid": "k2"}),
        json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
        json!({"alg": "RS256", "kid": "k9"}),
    ] {
        refused.push(sign(&h, &claims(), &forger));
    }
    let genuine = token(&claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    for (header, signature) in [
        (b64(&json!({"alg": "none", "kid": "k1"})), "AA"),
        (b64(&json!({"alg": "HS256", "kid": "k1"})), parts[2]),
    ] {
        refused.push(format!("{header}.{}.{signature}", parts[1]));
    }
    refused.push(format!("{}.{}", parts[0], parts[1]));
    refused.push(format!("{}.{}.{}", parts[0], "e30", parts[2]));
    for t in &refused {
        let (result, checks) = signature_checks(t, &keys);
        assert!(result.is_err(), "{t}");
        assert_eq!(checks, 0, "a signature check for {result:?}");
    }
    // A forged token whose claims would pass costs exactly one check, and so does a genuine one.
    let forged = sign(&header("k1"), &claims(), &forger);
    assert_eq!(
        signature_checks(&forged, &keys),
        (Err(JwtError::Invalid("bad signature")), 1)
    );
    assert!(matches!(signature_checks(&genuine, &keys), (Ok(_), 1)));
    // Only a missing scope is decided after the signature (401 when forged, 403 when genuine).
    let no_scope = claims_with(json!({"scp": ["api:write"]}));
    assert_eq!(
        signature_checks(&sign(&header("k1"), &no_scope, &forger), &keys),
        (Err(JwtError::Invalid("bad signature")), 1)
    );
    assert_eq!(
        signature_checks(&token(&no_scope), &keys),
        (Err(JwtError::InsufficientScope), 1)
    );
}

/// The signature check attacked at its bounds: lengths, values at and above the modulus, a
/// key with exponent 3, a 4096-bit key given a 2048-bit signature and the other way round.
#[test]
fn signature_values_at_the_bounds() {
    let e3 = dev_key("e3");
    let body = crate::jwks::tests::doc(&[
        jwk("k1", &dev_key("1"), r#","alg":"RS256""#),
        jwk("k4096", &dev_key("4096"), ""),
        crate::jwks::tests::jwk_json("e3", &n_of(&e3), "").replace("AQAB", "Aw"),
    ]);
    let keys = KeySet::parse(&body).unwrap().0;
    let run = |t: &str| verify(t, &keys, &policy(), NOW);
    // Exponent 3 verifies genuine tokens and refuses forged ones.
    assert!(run(&sign(&header("e3"), &claims(), &e3)).is_ok());
    assert_eq!(
        run(&sign(&header("e3"), &claims(), &dev_key("1"))),
        Err(JwtError::Invalid("bad signature"))
    );
    let genuine = token(&claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    let n = URL_SAFE_NO_PAD.decode(n_of(&dev_key("1"))).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let mut n_plus_1 = n.clone();
    *n_plus_1.last_mut().unwrap() = n_plus_1.last().unwrap().wrapping_add(1);
    let one = [&[0u8; 255][..], &[1u8][..]].concat();
    let big_sig = URL_SAFE_NO_PAD
        .decode(
            sign(&header("k4096"), &claims(), &dev_key("4096"))
                .split('.')
                .nth(2)
                .unwrap(),
        )
        .unwrap();
    for bad in [
        n.clone(),                               // the modulus itself
        n_plus_1,                                // above the modulus
        vec![0xff; 256],                         // the largest 256-byte value
        vec![0; 256],                            // zero
        one,                                     // one: 1^e = 1
        [&n[..255], &[n[255] - 1][..]].concat(), // n - 1: (n-1)^e = n-1 with e odd
        [&[0u8][..], &sig[..]].concat(),         // 257 bytes, same value
        sig[1..].to_vec(),                       // 255 bytes
        [&sig[..], &sig[..]].concat(),           // 512 bytes
        big_sig.clone(),                         // a 4096-bit key's signature
        vec![0; 1],
    ] {
        let t = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&bad));
        assert_eq!(run(&t), Err(JwtError::Invalid("bad signature")));
    }
    // A 2048-bit signature for the 4096-bit key.
    let h = b64(&header("k4096"));
    let t = format!("{h}.{}.{}", parts[1], parts[2]);
    assert_eq!(run(&t), Err(JwtError::Invalid("bad signature")));
    let t = format!(
        "{h}.{}.{}",
        parts[1],
        URL_SAFE_NO_PAD.encode([&[0u8; 256][..], &sig[..]].concat())
    );
    assert_eq!(run(&t), Err(JwtError::Invalid("bad signature")));
    assert!(run(&genuine).is_ok());
}
