//! The cost of a Bearer JWT's first sight, natively: the whole `jwt::verify` of an Okta-shaped
//! RS256 access token (2048-bit key, as Okta's; and 4096-bit, the largest accepted), `peek`,
//! and reading a two-key JWKS. `cargo bench --bench jwt`. The keys are the dev IdP's
//! development keys (devidp/keys/, public on purpose).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, PrivateKey};
use sha2::{Digest, Sha256};

use okta_dcr_auth_core::jwt::{peek, verify, Alg, JwtPolicy, KeySet};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://dev-12345678.okta.com/oauth2/default";

fn key(pem: &str) -> PrivateKey {
    PrivateKey::from_pkcs1_pem(pem).unwrap()
}

fn jwk(kid: &str, key: &PrivateKey) -> String {
    let n = key.n().to_be_bytes();
    let start = n.iter().position(|&b| b != 0).unwrap();
    format!(
        r#"{{"kty":"RSA","alg":"RS256","kid":"{kid}","use":"sig","e":"AQAB","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(&n[start..])
    )
}

/// An access token shaped like Okta's, signed RS256 with `key` as `kid`.
fn token(kid: &str, key: &PrivateKey) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"kid":"{kid}","alg":"RS256"}}"#));
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"ver":1,"jti":"AT.o9b2kC8yQ4Zr1mV7xN3pL6sT0wE5hJ2gF8dA1cK4uY","iss":"{ISSUER}","aud":"api://default","iat":{},"exp":{},"cid":"0oa8f5j3ecb5w3dF35d7","scp":["api:read"],"sub":"0oa8f5j3ecb5w3dF35d7","app_id":"0oa8f5j3ecb5w3dF35d7"}}"#,
        NOW - 10,
        NOW + 3600
    ));
    let input = format!("{header}.{claims}");
    let sig = key
        .sign(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(input.as_bytes()),
        )
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn bench(c: &mut Criterion) {
    let k2048 = key(include_str!("../../devidp/keys/dev-rsa-1.pem"));
    let k4096 = key(include_str!("../../devidp/keys/test-rsa-4096.pem"));
    let body = format!(
        r#"{{"keys":[{},{}]}}"#,
        jwk("kid-2048", &k2048),
        jwk("kid-4096", &k4096)
    );
    let (keys, _) = KeySet::parse(body.as_bytes()).unwrap();
    let policy = JwtPolicy {
        issuer: ISSUER.into(),
        audience: "api://default".into(),
        algorithms: vec![Alg::RS256],
        clock_skew_s: 60,
        scopes: vec!["api:read".into()],
        app_claim: "app_id".into(),
    };
    let t2048 = token("kid-2048", &k2048);
    let t4096 = token("kid-4096", &k4096);
    assert!(verify(&t2048, &keys, &policy, NOW).is_ok());
    assert!(verify(&t4096, &keys, &policy, NOW).is_ok());

    c.bench_function("jwt verify RS256 2048-bit (Okta token)", |b| {
        b.iter(|| verify(black_box(&t2048), &keys, &policy, NOW).unwrap())
    });
    c.bench_function("jwt verify RS256 4096-bit", |b| {
        b.iter(|| verify(black_box(&t4096), &keys, &policy, NOW).unwrap())
    });
    c.bench_function("jwt peek", |b| {
        b.iter(|| peek(black_box(&t2048), ISSUER, NOW, 60).unwrap())
    });
    c.bench_function("jwks parse (2048 + 4096-bit keys)", |b| {
        b.iter(|| KeySet::parse(black_box(body.as_bytes())).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
