//! A forged-token flood (issue 21), in real Envoy and on ngx_wasm_module: a client sends RS256
//! tokens under the published `kid` with claims that pass every check but the signature, each one
//! new (no cached verdict), as fast as it can on several connections, so that each costs the
//! filter a full signature check; meanwhile known apps keep calling with their cached tokens and
//! a new valid token arrives every second. Every forged token is a 401, every valid request a
//! 200. Correctness only: the valid clients' throughput and p99 with and without the flood are
//! printed (`--nocapture`), never asserted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::client::{self, KeepAlive};
use okta_dcr_auth_tests::*;
use serde_json::{json, Value};

const TOKEN_CLIENT: &str = "0oa9floodTokenClient";

/// Valid requests: statuses and latencies.
#[derive(Default)]
struct Valid {
    statuses: BTreeMap<u16, u64>,
    latencies: Vec<Duration>,
}

impl Valid {
    fn add(&mut self, other: Valid) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_insert(0) += n;
        }
        self.latencies.extend(other.latencies);
    }

    fn summary(&mut self, seconds: f64) -> String {
        self.latencies.sort();
        let p = |q: f64| {
            let i = ((self.latencies.len() as f64 * q) as usize).min(self.latencies.len() - 1);
            self.latencies[i].as_secs_f64() * 1e6
        };
        format!(
            "{:.0} req/s, p50 {:.0} us, p99 {:.0} us, {:?}",
            self.latencies.len() as f64 / seconds,
            p(0.5),
            p(0.99),
            self.statuses
        )
    }
}

/// The known apps' cached tokens on `connections` keep-alive connections until `until`.
fn known_apps(stack: &Stack, tokens: &[String], connections: usize, until: Instant) -> Valid {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|t| {
                s.spawn(move || {
                    let mut conn = KeepAlive::new(stack.listener());
                    let mut valid = Valid::default();
                    let mut i = t;
                    while Instant::now() < until {
                        let auth = format!("Bearer {}", tokens[i % tokens.len()]);
                        let t0 = Instant::now();
                        let status = conn.get("/", &auth).unwrap_or(0);
                        valid.latencies.push(t0.elapsed());
                        *valid.statuses.entry(status).or_insert(0) += 1;
                        i += connections;
                    }
                    valid
                })
            })
            .collect();
        let mut all = Valid::default();
        for h in handles {
            all.add(h.join().unwrap_or_default());
        }
        all
    })
}

/// A token under the published `kid` whose claims pass, and whose signature is another token's:
/// new bytes each time (a unique `jti`), so no verdict is cached and each is a full check.
fn forged(stack: &Stack, header: &str, signature: &str, t: usize, i: usize) -> String {
    let now = now_s();
    let claims: Value = json!({
        "ver": 1, "jti": format!("AT.forged.{t}.{i}"), "iss": stack.issuer(),
        "aud": "api://default", "iat": now, "exp": now + 3600, "cid": TOKEN_CLIENT,
        "scp": [SCOPE], "sub": TOKEN_CLIENT, "app_id": TOKEN_CLIENT,
    });
    format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    )
}

#[test]
fn a_forged_token_flood_is_all_401_while_valid_clients_all_pass() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({})))
        .component_log_level("wasm", "info")
        .start();
    let spec = || app_token_spec(TOKEN_CLIENT, TOKEN_CLIENT, &[SCOPE]);
    let tokens: Vec<String> = (0..4).map(|_| stack.mint(spec())).collect();
    for t in &tokens {
        let r = stack.get("/", &[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(r.status, 200, "{r:#?}");
    }
    // The forgeries' header is a genuine token's (published kid, RS256); their signature is one
    // made by a key the issuer never published, over other claims.
    let genuine = stack.mint(spec());
    let header = genuine.split('.').next().unwrap_or_default().to_string();
    let unpublished = {
        let mut s = spec();
        s.signing = Signing::UnpublishedKey;
        stack.idp.mint_token(s)
    };
    let signature = unpublished
        .split('.')
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let one = forged(&stack, &header, &signature, 9, 9);
    let r = stack.get("/", &[("authorization", &format!("Bearer {one}"))]);
    assert_local_reply(&r, 401);
    assert_eq!(r.www_authenticate(), vec![INVALID_TOKEN_CHALLENGE]);

    let seconds = 5;
    let duration = Duration::from_secs(seconds);
    // Without the flood: the known apps alone.
    let mut before = known_apps(&stack, &tokens, 2, Instant::now() + duration);
    let upstream_before = stack.echo.count();

    let until = Instant::now() + duration;
    let (mut during, forgeries, newcomers) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            client::flood(
                stack.listener(),
                3,
                |_| Instant::now() < until,
                |t, i| format!("Bearer {}", forged(&stack, &header, &signature, t, i)),
            )
        });
        // A new valid token every second.
        let newcomers = s.spawn(|| {
            let mut statuses = BTreeMap::new();
            while Instant::now() + Duration::from_secs(1) < until {
                std::thread::sleep(Duration::from_secs(1));
                let token = stack.mint(spec());
                let r = stack.get("/", &[("authorization", &format!("Bearer {token}"))]);
                *statuses.entry(r.status).or_insert(0u64) += 1;
            }
            statuses
        });
        let valid = known_apps(&stack, &tokens, 2, until);
        (
            valid,
            flood.join().unwrap_or_default(),
            newcomers.join().unwrap_or_default(),
        )
    });
    let seconds = seconds as f64;
    eprintln!("known apps without the flood: {}", before.summary(seconds));
    eprintln!("known apps during the flood: {}", during.summary(seconds));
    eprintln!(
        "forged tokens: {:.0}/s {forgeries:?}; new valid tokens {newcomers:?}",
        forgeries.values().sum::<u64>() as f64 / seconds
    );
    assert_eq!(
        forgeries.keys().copied().collect::<Vec<_>>(),
        vec![401],
        "every forged token is a 401"
    );
    assert!(forgeries[&401] > 0);
    for (what, statuses) in [
        ("known apps without the flood", &before.statuses),
        ("known apps during the flood", &during.statuses),
        ("new valid tokens", &newcomers),
    ] {
        assert_eq!(
            statuses.keys().copied().collect::<Vec<_>>(),
            vec![200],
            "{what}: every valid request passes"
        );
    }
    assert!(newcomers[&200] >= 2, "{newcomers:?}");
    let valid_requests = during.statuses[&200] + newcomers[&200];
    assert_eq!(
        stack.echo.count() - upstream_before,
        valid_requests,
        "only the valid requests went upstream"
    );
    assert_eq!(stack.idp.calls(Endpoint::Introspect), 0);
}
