//! A forged-token flood (issue 21), in real Envoy and on ngx_wasm_module: a client sends RS256
//! tokens under the published `kid` with claims that pass every check but the signature, each one
//! new (no cached verdict), as fast as it can on several connections, so that each would cost the
//! filter a full signature check; half of them name a known app, half an app of their own.
//! Meanwhile known apps keep calling with their cached tokens and another known app brings a new
//! valid token every second. Each worker checks at most `max_signature_checks_per_s` signatures a
//! second (core/src/signatures.rs): a forged token is a 401 when checked, a 503 with
//! `Retry-After` beyond the bound, never a 200; every valid request is a 200. The valid clients'
//! throughput and p99 with and without the flood are printed (`--nocapture`), never asserted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::client::{self, KeepAlive};
use okta_dcr_auth_tests::*;
use serde_json::{json, Value};

const TOKEN_CLIENT: &str = "0oa9floodTokenClient";
/// Per worker: the flood's loop outruns it on any machine. Half for apps a worker never
/// verified, a tenth per app.
const SIGNATURE_BOUND: u64 = 100;
/// A known app whose new tokens come during the flood.
const OTHER_CLIENT: &str = "0oa9floodOtherClient";

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
/// new bytes each time (a unique `jti`), so no verdict is cached and each needs a full check.
/// Every other one names the known app `TOKEN_CLIENT`, the others an app of their own.
fn forged(stack: &Stack, header: &str, signature: &str, t: usize, i: usize) -> String {
    let now = now_s();
    let app = if i.is_multiple_of(2) {
        TOKEN_CLIENT.to_string()
    } else {
        format!("0oa9forged{t}x{i}")
    };
    let claims: Value = json!({
        "ver": 1, "jti": format!("AT.forged.{t}.{i}"), "iss": stack.issuer(),
        "aud": "api://default", "iat": now, "exp": now + 3600, "cid": app,
        "scp": [SCOPE], "sub": app, "app_id": app,
    });
    format!(
        "{header}.{}.{signature}",
        b64url(claims.to_string().as_bytes())
    )
}

#[test]
fn a_forged_token_flood_gets_401_or_503_while_valid_clients_all_pass() {
    let stack = Stack::builder()
        .route(
            "/",
            filter_config(json!({ "max_signature_checks_per_s": SIGNATURE_BOUND })),
        )
        .component_log_level("wasm", "info")
        .start();
    let spec = || app_token_spec(TOKEN_CLIENT, TOKEN_CLIENT, &[SCOPE]);
    let tokens: Vec<String> = (0..4).map(|_| stack.mint(spec())).collect();
    let other = || app_token_spec(OTHER_CLIENT, OTHER_CLIENT, &[SCOPE]);
    // Both apps become known to every worker (a token of theirs verified there, or its verdict
    // read from shared data): each request is a new connection, which any worker may take.
    let others: Vec<String> = (0..4).map(|_| stack.mint(other())).collect();
    for _ in 0..16 {
        for t in tokens.iter().chain(&others) {
            let r = stack.get("/", &[("authorization", &format!("Bearer {t}"))]);
            assert_eq!(r.status, 200, "{r:#?}");
        }
    }
    // The forgeries' header and signature are a genuine token's (published kid, RS256), over
    // other claims: a signature made with the published key is below its modulus, so a check
    // goes through the whole modular exponentiation before the padding fails. (One made with
    // another key may be above it and refused at once: an attacker would not send that.)
    let genuine = stack.mint(spec());
    let header = genuine.split('.').next().unwrap_or_default().to_string();
    let signature = genuine.split('.').nth(2).unwrap_or_default().to_string();
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
        // A new valid token of the other known app every second.
        let newcomers = s.spawn(|| {
            let mut statuses = BTreeMap::new();
            while Instant::now() + Duration::from_secs(1) < until {
                std::thread::sleep(Duration::from_secs(1));
                let token = stack.mint(other());
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
    assert!(
        forgeries.keys().all(|s| [401, 503].contains(s)),
        "a forged token is a 401, or a 503 beyond the signature bound: {forgeries:?}"
    );
    assert!(forgeries.get(&401).is_some_and(|n| *n > 0), "{forgeries:?}");
    // The bound held: per worker and second, at most the unknown apps' half and the named known
    // app's tenth were checked (2 workers, the flood's seconds and one more on each side).
    let checked_at_most =
        2 * (SIGNATURE_BOUND / 2 + SIGNATURE_BOUND / 10) * (duration.as_secs() + 2);
    assert!(
        forgeries[&401] <= checked_at_most && forgeries.get(&503).is_some_and(|n| *n > 0),
        "signature checks beyond the bound ({checked_at_most} at most): {forgeries:?}"
    );
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
