//! The core's work per request, natively: reading `Authorization`, the cache key (SHA-256),
//! decoding a realistic cache entry, and the whole warm-cache `Gate::on_request` over the gate's fake
//! host, its cache set holding the verdict. `make bench` runs it (`cargo bench --bench
//! core`); under valgrind it is also the callgrind target (`bench/run.sh` prints how).
//!
//! The values are sized like real ones: a 20-character Okta client id, a 40-character DCR
//! secret, a ~1 KB RS256 access token.

// Bench setup failing is a broken bench, not a request to survive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};

use okta_dcr_auth_core::cache::{set_of, sets_for, CacheEntry, CacheKey, CacheSet, Cached, Names};
use okta_dcr_auth_core::config::Config;
use okta_dcr_auth_core::credentials::{parse_authorization, Accepted, Credential};
use okta_dcr_auth_core::gate::fake::{CasModel, FakeHost};
use okta_dcr_auth_core::gate::{ContextId, Gate, Resume, SharedData, Step};
use okta_dcr_auth_core::verdict::Grant;

const CLIENT_ID: &str = "0oa8f5j3ecb5w3dF35d7";
const CLIENT_SECRET: &str = "Lh2RK3e4oxJfHlkc0aGPGIxYnDyX9qeZ8Bn1c6kM";
const NOW_MS: u64 = 1_800_000_000_000;

const CONFIG: &str = r#"{
  "issuer": "http://127.0.0.1:9001/oauth2/default",
  "idp_upstream": "okta",
  "token_endpoint": "http://127.0.0.1:9001/oauth2/default/v1/token",
  "introspection_endpoint": "http://127.0.0.1:9001/oauth2/default/v1/introspect",
  "bearer_validation": "introspection",
  "bearer_format": "opaque",
  "audience": "api://default",
  "introspection_client_id": "0oa6gatewayIntrospect",
  "introspection_client_secret": "gateway-Introspection_Secret",
  "scopes": ["api:read"]
}"#;

/// A JWT-shaped token of Okta's size: header, claims, RS256 signature (base64url).
fn access_token() -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header =
        b64.encode(br#"{"kid":"f3dHk2pXqV0bGk7Kq4zX3y9s1mWcR2tL8nJ5uB6aE0o","alg":"RS256"}"#);
    let claims = b64.encode(format!(
        r#"{{"ver":1,"jti":"AT.o9b2kC8yQ4Zr1mV7xN3pL6sT0wE5hJ2gF8dA1cK4uY","iss":"https://dev-12345678.okta.com/oauth2/default","aud":"api://default","iat":1800000000,"exp":1800003600,"cid":"{CLIENT_ID}","scp":["api:read"],"sub":"{CLIENT_ID}","app_id":"{CLIENT_ID}"}}"#
    ));
    let signature = b64.encode([0x5au8; 256]);
    format!("{header}.{claims}.{signature}")
}

fn accepted() -> Accepted {
    Accepted {
        basic: true,
        bearer: true,
        raw_basic: true,
    }
}

/// An allow verdict for `credential`, as one entry's bytes.
fn entry_bytes(config: &Config, credential: &Credential, access_token: Option<String>) -> Vec<u8> {
    entry(config, credential, access_token).encode()
}

/// The cache set's bytes as the host hands them over: the verdict in one of its ways.
fn set_bytes(config: &Config, credential: &Credential, access_token: Option<String>) -> Vec<u8> {
    let mut set = CacheSet::default();
    set.ways[0] = Some(entry(config, credential, access_token));
    set.encode()
}

fn entry(config: &Config, credential: &Credential, access_token: Option<String>) -> CacheEntry {
    CacheEntry {
        key: CacheKey::new(&config.digest, credential),
        decided_at_ms: NOW_MS - 1_000,
        expires_at_ms: NOW_MS + 3_600_000,
        verdict: Some(Cached::Allow(Grant {
            identity: CLIENT_ID.into(),
            scope: "api:read".into(),
            access_token,
        })),
        lease_until_ms: 0,
        failed_at_ms: 0,
    }
}

fn benches(c: &mut Criterion) {
    let config = Config::from_json(CONFIG.as_bytes()).expect("bench config");
    let token = access_token();
    let basic_b64 = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let basic_raw = format!("Basic {CLIENT_ID}:{CLIENT_SECRET}");
    let bearer = format!("Bearer {token}");
    let basic_credential = parse_authorization(&[basic_b64.as_bytes()], accepted()).unwrap();
    let bearer_credential = parse_authorization(&[bearer.as_bytes()], accepted()).unwrap();
    // Basic: the entry carries the token Okta issued (forwarded upstream); Bearer: it does not.
    let basic_entry = entry_bytes(&config, &basic_credential, Some(token.clone()));
    let bearer_entry = entry_bytes(&config, &bearer_credential, None);
    let basic_set = set_bytes(&config, &basic_credential, Some(token.clone()));
    let bearer_set = set_bytes(&config, &bearer_credential, None);

    let mut g = c.benchmark_group("parse_authorization");
    for (name, value) in [
        ("basic_base64", &basic_b64),
        ("basic_raw", &basic_raw),
        ("bearer", &bearer),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| parse_authorization(black_box(&[value.as_bytes()]), accepted()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cache_key");
    for (name, credential) in [("basic", &basic_credential), ("bearer", &bearer_credential)] {
        g.bench_function(name, |b| {
            b.iter(|| CacheKey::new(black_box(&config.digest), black_box(credential)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cache_entry_decode");
    for (name, bytes) in [
        ("basic_with_token", &basic_entry),
        ("bearer", &bearer_entry),
    ] {
        g.bench_function(name, |b| b.iter(|| CacheEntry::decode(black_box(bytes))));
    }
    g.finish();

    // The whole warm path of the core, as the glue calls it: parse, key, slot name, read and
    // decode the slot, freshness, the grant and the upstream edits.
    let mut g = c.benchmark_group("gate_warm_hit");
    for (name, value, slot) in [
        ("basic", &basic_b64, &basic_set),
        ("bearer", &bearer, &bearer_set),
    ] {
        let host = FakeHost::at(CasModel::Envoy, NOW_MS);
        let mut gate = Gate::new(
            config.clone(),
            ContextId(1),
            Resume::AnyRequest,
            NOW_MS,
            &host,
        );
        // The verdict in its cache set, as another worker would have left it.
        let credential = parse_authorization(&[value.as_bytes()], accepted()).unwrap();
        let key = CacheKey::new(&config.digest, &credential);
        let set = set_of(&key, sets_for(config.cache_slots));
        let set_name = Names::stable(&config.issuer).set(set);
        host.shared_set(&set_name, slot, 0).unwrap();
        match gate.on_request(ContextId(2), &[value.as_bytes()], true, NOW_MS, &host) {
            Step::Forward(_) => {}
            other => panic!("{name}: expected a cache hit, got {other:?}"),
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                gate.on_request(
                    ContextId(2),
                    black_box(&[value.as_bytes()]),
                    true,
                    NOW_MS,
                    &host,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
