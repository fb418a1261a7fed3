//! `jwt`: the local Bearer JWT check (`jwt::peek`, `jwt::verify`) and the key set reader
//! (`jwks::KeySet::parse`) on arbitrary input, against a fixed policy and key set, at a fixed time.
//!
//! Input: a mode line, then the mode's data (so seeds are readable and hand-editable):
//!
//! ```text
//! token                 <- the rest, as it is, is the Bearer token
//! eyJraWQiOi...
//!
//! sign                  <- the next line is the JOSE header, the rest the payload (raw bytes,
//! {"kid":"k1",...}         any JSON or none); the harness base64url-encodes them and signs
//! {"iss":...}              RS256 with dev key 1 (published as `k1`), so that the fuzzer
//!                          reaches the claim checks behind a valid signature
//!
//! jwks                  <- the rest is a key set document; a genuine token is then checked
//! {"keys":[...]}           against it
//! ```
//!
//! Any other first line: the whole input is the token.
//!
//! The fixed key set publishes `k1` (dev key 1, `alg: RS256`) and `k2` (dev key 2, no `alg`);
//! the policy wants issuer [`ISSUER`], audience `api://default`, scope `api:read`, app claim
//! `app_id`, 60 s of skew, and allows RS256, RS384 and RS512.
//!
//! Properties: never panics; an accepted token's own header and payload (read independently)
//! have an allowed `alg`, no `crit`, a `kid` in the key set, `iss` = the issuer, an `aud` that is
//! or contains the audience, an `exp` in the future (with skew) equal to the verdict's, and
//! `nbf`/`iat` not in the future; its identity is non-empty and it and the scope are header-safe,
//! and the scope holds every required one; an accepted token also passes `peek` with the same
//! `kid` and `exp`; an unknown `kid` is one the set does not have and is header-safe; a `peek`
//! that passes saw this issuer and a live `exp`; a key set has at most 32 keys, unique
//! header-safe `kid`s, and never more keys plus skipped ones than entries.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use okta_dcr_auth_core::jwt::{peek, verify, Alg, JwtError, JwtPolicy, KeySet, Verified};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, PrivateKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{checked, header_safe};

/// 2027-01-15T08:00:00Z: the seeds' times are relative to it.
pub const NOW_S: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://dev-12345678.okta.com/oauth2/default";
const AUDIENCE: &str = "api://default";
const SKEW_S: u64 = 60;

/// Dev key 1 (`devidp/keys/`, public on purpose): signs `sign` inputs, published as `k1`.
fn signing_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        PrivateKey::from_pkcs1_pem(include_str!("../../devidp/keys/dev-rsa-1.pem"))
            .expect("committed dev key")
    })
}

fn jwk(kid: &str, key: &PrivateKey, extra: &str) -> String {
    let n = key.n().to_be_bytes();
    let start = n.iter().position(|&b| b != 0).unwrap_or(0);
    format!(
        r#"{{"kty":"RSA","kid":"{kid}","use":"sig","e":"AQAB","n":"{}"{extra}}}"#,
        URL_SAFE_NO_PAD.encode(&n[start..])
    )
}

fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k2 = PrivateKey::from_pkcs1_pem(include_str!("../../devidp/keys/dev-rsa-2.pem"))
            .expect("committed dev key");
        let doc = format!(
            r#"{{"keys":[{},{}]}}"#,
            jwk("k1", signing_key(), r#","alg":"RS256""#),
            jwk("k2", &k2, "")
        );
        KeySet::parse(doc.as_bytes()).expect("fixed key set").0
    })
}

fn policy() -> &'static JwtPolicy {
    static POLICY: OnceLock<JwtPolicy> = OnceLock::new();
    POLICY.get_or_init(|| JwtPolicy {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        algorithms: vec![Alg::RS256, Alg::RS384, Alg::RS512],
        clock_skew_s: SKEW_S,
        scopes: vec!["api:read".into()],
        app_claim: "app_id".into(),
    })
}

/// A compact JWS of these exact header and payload bytes, RS256-signed with dev key 1.
pub fn sign(header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = signing_key()
        .sign(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(input.as_bytes()),
        )
        .expect("RS256 signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

pub fn check(data: &[u8]) {
    let (mode, rest) = split_line(data);
    match mode {
        b"token" => token(&String::from_utf8_lossy(rest)),
        b"sign" => {
            let (header, payload) = split_line(rest);
            token(&sign(header, payload));
        }
        b"jwks" => jwks(rest),
        _ => token(&String::from_utf8_lossy(data)),
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn token(token: &str) {
    let peeked = peek(token, ISSUER, NOW_S, SKEW_S);
    if let Ok(p) = &peeked {
        if checked("peek-issuer-and-exp") {
            let (_, claims) = decode(token).expect("peek passed a token that does not decode");
            assert!(issuer_matches(&claims), "peek passed another issuer");
            assert!(
                p.exp.saturating_add(SKEW_S) > NOW_S,
                "peek passed an expired token"
            );
            assert!(header_safe(&p.alg) && p.kid.as_deref().is_none_or(header_safe));
        }
    }
    match verify(token, key_set(), policy(), NOW_S) {
        Ok(v) => accepted(token, &v, peeked.ok()),
        Err(JwtError::UnknownKid(kid)) if checked("unknown-kid") => {
            assert!(key_set().get(&kid).is_none(), "known kid reported unknown");
            assert!(header_safe(&kid) && !kid.is_empty() && kid.len() <= 256);
        }
        Err(_) => {}
    }
}

/// Header and payload read independently of the code under test.
fn decode(token: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let mut parts = token.split('.');
    let mut object = || -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(map) => Some(map),
            _ => None,
        }
    };
    Some((object()?, object()?))
}

fn issuer_matches(claims: &Map<String, Value>) -> bool {
    claims
        .get("iss")
        .and_then(Value::as_str)
        .is_some_and(|iss| iss.trim_end_matches('/') == ISSUER)
}

fn seconds(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))
}

fn accepted(token: &str, v: &Verified, peeked: Option<okta_dcr_auth_core::jwt::Peeked>) {
    if !checked("accepted-meets-policy") {
        return;
    }
    let (header, claims) = decode(token).expect("accepted a token that does not decode");
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    assert!(
        Alg::from_name(alg).is_some_and(|a| policy().algorithms.contains(&a)),
        "alg {alg:?}"
    );
    assert!(!header.contains_key("crit"), "accepted a crit header");
    let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
    assert!(key_set().get(kid).is_some(), "accepted an unknown kid");
    assert!(issuer_matches(&claims), "accepted another issuer");
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "accepted another audience");
    let exp = seconds(&claims, "exp").expect("accepted without exp");
    assert_eq!(v.exp, exp);
    assert!(
        exp.saturating_add(SKEW_S) > NOW_S,
        "accepted an expired token"
    );
    for name in ["nbf", "iat"] {
        if let Some(t) = seconds(&claims, name) {
            assert!(t <= NOW_S + SKEW_S, "accepted {name} in the future");
        }
    }
    assert!(!v.identity.is_empty() && header_safe(&v.identity));
    assert!(header_safe(&v.scope));
    for required in &policy().scopes {
        assert!(v.scope.split(' ').any(|g| g == required), "scope missing");
    }
    let peeked = peeked.expect("accepted a token peek refuses");
    assert_eq!((peeked.kid.as_deref(), peeked.exp), (Some(kid), exp));
}

fn jwks(body: &[u8]) {
    let Ok((keys, skipped)) = KeySet::parse(body) else {
        return;
    };
    if checked("key-set-bounds") {
        let entries = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("keys").and_then(Value::as_array).map(Vec::len))
            .expect("accepted a key set without a keys array");
        assert!(keys.len() <= 32 && keys.len() + skipped == entries);
        let mut kids: Vec<&str> = keys.kids().collect();
        assert!(kids.iter().all(|k| !k.is_empty() && header_safe(k)));
        kids.sort_unstable();
        kids.dedup();
        assert_eq!(kids.len(), keys.len(), "duplicate kid");
    }
    // A genuine token against this set: accepted only if the set has `k1` with the right key.
    static GENUINE: OnceLock<String> = OnceLock::new();
    let genuine = GENUINE.get_or_init(|| {
        let payload = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"cid":"0oa-client","scp":["api:read"]}}"#,
            NOW_S + 3600
        );
        sign(br#"{"kid":"k1","alg":"RS256"}"#, payload.as_bytes())
    });
    if verify(genuine, &keys, policy(), NOW_S).is_ok() && checked("key-set-kid") {
        assert!(keys.get("k1").is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/jwt");
        std::fs::read(path.join(name)).unwrap()
    }

    /// The token a `token` or `sign` seed stands for.
    fn token_of(data: &[u8]) -> String {
        let (mode, rest) = split_line(data);
        match mode {
            b"sign" => {
                let (header, payload) = split_line(rest);
                sign(header, payload)
            }
            _ => String::from_utf8_lossy(rest).into_owned(),
        }
    }

    fn verdict(name: &str) -> Result<Verified, JwtError> {
        verify(&token_of(&seed(name)), key_set(), policy(), NOW_S)
    }

    /// The seeds still reach the paths they are named for (a seed that silently turned into a
    /// refusal of another kind would leave the accepted paths unfuzzed).
    #[test]
    fn seeds_reach_their_paths() {
        for accepted in [
            "token-okta-genuine",
            "token-rs512-k2",
            "sign-okta-claims",
            "sign-scope-string",
            "sign-aud-array",
            "sign-iss-trailing-slash",
            "sign-expired-within-skew",
            "sign-float-exp",
            "sign-identity-fallback-client-id",
        ] {
            assert!(
                verdict(accepted).is_ok(),
                "{accepted}: {:?}",
                verdict(accepted)
            );
        }
        assert_eq!(
            verdict("sign-okta-claims").unwrap().identity,
            "0oa8dcrAppClientId"
        );
        assert_eq!(
            verdict("sign-missing-scope"),
            Err(JwtError::InsufficientScope)
        );
        assert_eq!(
            verdict("token-unknown-kid"),
            Err(JwtError::UnknownKid("attacker-kid".into()))
        );
        for (refused, reason) in [
            ("token-forged-unpublished-key", "bad signature"),
            ("token-other-published-key", "bad signature"),
            ("token-payload-changed-after-signing", "bad signature"),
            ("token-alg-none", "segment is not base64url"),
            ("token-hs256-public-key-secret", "alg not allowed"),
            ("sign-alg-rs512-on-k1", "alg does not match the key"),
            ("sign-crit", "crit header"),
            ("sign-no-kid", "no kid"),
            ("sign-expired", "expired"),
            ("sign-nbf-future", "nbf in the future"),
            ("sign-wrong-aud", "wrong or missing aud"),
            ("sign-identity-newline", "identity claim not header-safe"),
        ] {
            assert_eq!(
                verdict(refused),
                Err(JwtError::Invalid(reason)),
                "{refused}"
            );
        }
        // The genuine token is accepted against these sets, or not.
        let genuine_passes = |name: &str| {
            let data = seed(name);
            let (_, body) = split_line(&data);
            let (keys, _) = KeySet::parse(body).unwrap();
            let payload = format!(
                r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"cid":"c","scp":["api:read"]}}"#,
                NOW_S + 60
            );
            verify(
                &sign(br#"{"kid":"k1","alg":"RS256"}"#, payload.as_bytes()),
                &keys,
                policy(),
                NOW_S,
            )
            .is_ok()
        };
        assert!(genuine_passes("jwks-okta-two-keys"));
        assert!(genuine_passes("jwks-junk-keys"));
        assert!(!genuine_passes("jwks-k1-is-another-key"));
    }
}
