//! The gate's Bearer path in the `jwt` modes, driven by the fake host: local verification, the
//! shared verdict, the key set's single flight and refresh rules, and what the other modes do
//! with a token before introspection. Tokens are signed with the dev IdP's development keys.

use serde_json::{json, Value};

use super::*;
use crate::jwt::tests::{dev_key, jwk, key_set_body, sign};

const KEYS_PATH: &str = "/oauth2/default/v1/keys";
const INTROSPECT_PATH: &str = "/oauth2/default/v1/introspect";

fn jwt_gate(host: &FakeHost, mode: &str, extra: &str) -> Gate {
    gate(
        host,
        &format!(
            r#","bearer_validation":"{mode}","audience":"api://default","jwks_uri":"https://o.okta.com/oauth2/default/v1/keys"{extra}"#
        ),
    )
}

/// Okta-shaped access token claims, alive for an hour from `now_ms`.
fn claims(now_ms: u64, jti: &str) -> Value {
    let now = now_ms / 1000;
    json!({
        "ver": 1, "jti": jti, "iss": "https://o.okta.com/oauth2/default", "aud": "api://default",
        "iat": now, "exp": now + 3600, "cid": "0oa-client", "scp": ["api:read"],
        "sub": "0oa-client", "app_id": "0oa-app",
    })
}

fn bearer_signed(kid: &str, key: &str, claims: &Value) -> Vec<u8> {
    let header = json!({ "kid": kid, "alg": "RS256" });
    format!("Bearer {}", sign(&header, claims, &dev_key(key))).into_bytes()
}

fn valid(host: &FakeHost, jti: &str) -> Vec<u8> {
    bearer_signed("k1", "1", &claims(host.now(), jti))
}

fn keys_body(kids: &[(&str, &str)]) -> String {
    let keys: Vec<String> = kids
        .iter()
        .map(|(kid, key)| jwk(kid, &dev_key(key), ""))
        .collect();
    String::from_utf8(crate::jwks::tests::doc(&keys)).expect("JSON")
}

fn published() -> String {
    String::from_utf8(key_set_body()).expect("JSON")
}

/// The root sends the key set fetch a request asked for at its next tick (a request's call
/// would die with it); answers it with `body` (status 200). Steps of that tick come first.
fn answer_keys(g: &mut Gate, host: &FakeHost, body: &str) -> Vec<(u32, Step)> {
    let mut steps = tick(g, host);
    let (token, request) = host.last_call();
    assert_eq!((request.method, request.path.as_str()), ("GET", KEYS_PATH));
    assert_eq!(
        host.last_caller(),
        ContextId(ROOT),
        "the root owns the fetch"
    );
    steps.extend(answer(g, host, token, 200, body));
    steps
}

fn paths(host: &FakeHost) -> Vec<String> {
    host.calls
        .borrow()
        .iter()
        .map(|(_, r)| r.path.clone())
        .collect()
}

/// A worker that fetched the published keys with a first valid token.
fn warmed(host: &FakeHost, mode: &str) -> Gate {
    let mut g = jwt_gate(host, mode, "");
    assert_eq!(ask(&mut g, host, 2, &valid(host, "warm")), Step::Wait);
    let steps = answer_keys(&mut g, host, &published());
    assert!(steps.iter().all(|(_, s)| *s != Step::Wait));
    g
}

cas_test! {
    fn a_valid_jwt_is_verified_locally_and_cached_for_every_worker(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = jwt_gate(&host, "jwt", "");
        let token = valid(&host, "AT.1");
        assert_eq!(ask(&mut g, &host, 10, &token), Step::Wait, "no keys yet");
        let steps = answer_keys(&mut g, &host, &published());
        assert_eq!(steps.len(), 1);
        let f = forwarded(&steps[0].1);
        assert_eq!(
            (f.identity.as_str(), f.scope.as_str()),
            ("0oa-app", "api:read")
        );
        assert_eq!(
            f.authorization,
            AuthorizationEdit::Keep,
            "the token goes on as it came"
        );
        assert_eq!(status(&ask(&mut g, &host, 11, &token)), 200);
        // another worker: the shared verdict, no key set needed
        let mut other = jwt_gate(&host, "jwt", "");
        assert_eq!(status(&ask(&mut other, &host, 12, &token)), 200);
        assert_eq!(paths(&host), vec![KEYS_PATH], "one fetch, no introspection");
        // a new token on the other worker: the shared key set, no second fetch
        assert_eq!(
            status(&ask(&mut other, &host, 13, &valid(&host, "AT.2"))),
            200
        );
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn forged_tampered_foreign_and_scopeless_jwts_are_refused_without_a_call(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = warmed(&host, "jwt");
        let now = host.now();
        let forged = bearer_signed("k1", "unpublished", &claims(now, "f"));
        let good = String::from_utf8(valid(&host, "t")).expect("ascii");
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil_payload = crate::jwt::tests::b64(&json!({"app_id": "evil"}));
        parts[1] = &evil_payload;
        let tampered = parts.join(".").into_bytes();
        let mut expired = claims(now, "e");
        expired["exp"] = json!(now / 1000 - 3600);
        let mut foreign = claims(now, "a");
        foreign["aud"] = json!("api://other");
        let mut scopeless = claims(now, "s");
        scopeless["scp"] = json!(["other"]);
        for (token, code) in [
            (forged, 401),
            (tampered, 401),
            (bearer_signed("k1", "1", &expired), 401),
            (bearer_signed("k1", "1", &foreign), 401),
            (bearer_signed("k1", "1", &scopeless), 403),
            (b"Bearer not.a.jwt".to_vec(), 401),
        ] {
            assert_eq!(status(&ask(&mut g, &host, 20, &token)), code);
            // refused again from the cache (the same worker's copy, or shared data)
            let mut other = jwt_gate(&host, "jwt", "");
            assert_eq!(status(&ask(&mut other, &host, 21, &token)), code);
        }
        assert_eq!(host.call_count(), 1, "only the first key set fetch");
        assert!(host.counter("okta_dcr_auth_cache_negative_hits") >= 4);
    }
}

cas_test! {
    fn an_unknown_kid_refreshes_the_keys_at_most_once_per_interval(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = warmed(&host, "jwt");
        let unknown = |host: &FakeHost, kid: &str| bearer_signed(kid, "2", &claims(host.now(), kid));
        assert_eq!(ask(&mut g, &host, 10, &unknown(&host, "k9")), Step::Wait);
        let steps = answer_keys(&mut g, &host, &published());
        assert_eq!(status(&steps[0].1), 401, "still unknown after the refresh");
        // a flood of made-up kids, across workers: no fetch within the interval
        let mut other = jwt_gate(&host, "jwt", "");
        for i in 0..100 {
            let w = if i % 2 == 0 { &mut g } else { &mut other };
            let step = ask(w, &host, 100 + i, &unknown(&host, &format!("kid{i}")));
            assert_eq!(status(&step), 401);
            host.advance(100);
        }
        assert_eq!(host.call_count(), 2);
        host.advance(keys::REFRESH_INTERVAL_MS);
        assert_eq!(ask(&mut g, &host, 300, &unknown(&host, "k10")), Step::Wait);
        tick(&mut g, &host);
        assert_eq!(host.call_count(), 3);
    }
}

cas_test! {
    fn a_rotated_key_is_fetched_and_used_without_a_restart(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = jwt_gate(&host, "jwt", "");
        ask(&mut g, &host, 1, &valid(&host, "first"));
        answer_keys(&mut g, &host, &keys_body(&[("k1", "1")]));
        let next = bearer_signed("k2", "2", &claims(host.now(), "next"));
        assert_eq!(ask(&mut g, &host, 10, &next), Step::Wait);
        let steps = answer_keys(&mut g, &host, &keys_body(&[("k1", "1"), ("k2", "2")]));
        assert_eq!(numbered_statuses(&steps), vec![(10, 200)]);
        assert_eq!(status(&ask(&mut g, &host, 11, &valid(&host, "old"))), 200);
    }
}

fn numbered_statuses(steps: &[(u32, Step)]) -> Vec<(u32, u32)> {
    steps.iter().map(|(c, s)| (*c, status(s))).collect()
}

cas_test! {
    fn without_keys_a_failed_fetch_is_503_and_later_the_last_good_keys_stay(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = jwt_gate(&host, "jwt", "");
        assert_eq!(ask(&mut g, &host, 10, &valid(&host, "a")), Step::Wait);
        tick(&mut g, &host);
        let steps = answer(&mut g, &host, host.last_call().0, 503, "");
        assert_eq!(numbered_statuses(&steps), vec![(10, 503)]);
        // not again at once: 503 without a call
        assert_eq!(status(&ask(&mut g, &host, 11, &valid(&host, "b"))), 503);
        assert_eq!(host.call_count(), 1);
        host.advance(keys::RETRY_WITHOUT_KEYS_MS);
        assert_eq!(ask(&mut g, &host, 12, &valid(&host, "c")), Step::Wait);
        let steps = answer_keys(&mut g, &host, &published());
        assert_eq!(numbered_statuses(&steps), vec![(12, 200)]);
        // a refresh that fails keeps the set: known kids pass, the unknown one is a 401
        let unknown = bearer_signed("k9", "2", &claims(host.now(), "u"));
        assert_eq!(ask(&mut g, &host, 13, &unknown), Step::Wait);
        tick(&mut g, &host);
        let steps = answer(&mut g, &host, host.last_call().0, 500, "");
        assert_eq!(numbered_statuses(&steps), vec![(13, 401)]);
        assert_eq!(status(&ask(&mut g, &host, 14, &valid(&host, "d"))), 200);
    }
}

cas_test! {
    fn a_second_worker_waits_for_the_first_workers_fetch(cas) {
        let host = FakeHost::at(cas, T0);
        let mut a = jwt_gate(&host, "jwt", "");
        let mut b = jwt_gate(&host, "jwt", "");
        assert_eq!(ask(&mut a, &host, 10, &valid(&host, "a")), Step::Wait);
        assert_eq!(ask(&mut b, &host, 20, &valid(&host, "b")), Step::Wait);
        assert!(tick(&mut a, &host).is_empty(), "the root sends the fetch");
        assert_eq!(host.call_count(), 1, "single flight across workers");
        assert_eq!(b.next_deadline(), Some(0));
        assert!(tick(&mut b, &host).is_empty(), "still in flight");
        let (token, _) = host.last_call();
        let steps = answer(&mut a, &host, token, 200, &published());
        assert_eq!(numbered_statuses(&steps), vec![(10, 200)]);
        assert_eq!(numbered_statuses(&tick(&mut b, &host)), vec![(20, 200)]);
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn a_waiter_whose_fetch_never_ends_gives_up_at_its_deadline(cas) {
        let host = FakeHost::at(cas, T0);
        let mut a = jwt_gate(&host, "jwt", "");
        let mut b = jwt_gate(&host, "jwt", "");
        ask(&mut a, &host, 10, &valid(&host, "a"));
        assert_eq!(ask(&mut b, &host, 20, &valid(&host, "b")), Step::Wait);
        host.advance(3_000 + 1_000 + 1);
        assert_eq!(numbered_statuses(&tick(&mut b, &host)), vec![(20, 503)]);
    }
}

cas_test! {
    fn the_key_set_is_refreshed_hourly_on_tick(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = warmed(&host, "jwt");
        assert_eq!(g.keys.refresh_due_at(), Some(T0 + keys::MAX_AGE_MS));
        host.advance(keys::MAX_AGE_MS);
        assert!(tick(&mut g, &host).is_empty());
        assert_eq!(host.call_count(), 2);
        answer_keys(&mut g, &host, &keys_body(&[("k2", "2")]));
        let rotated = bearer_signed("k2", "2", &claims(host.now(), "r"));
        assert_eq!(status(&ask(&mut g, &host, 10, &rotated)), 200);
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    fn a_request_gone_never_takes_the_key_set_fetch_with_it(cas) {
        let host = FakeHost::at(cas, T0);
        let mut a = jwt_gate(&host, "jwt", "");
        assert_eq!(ask(&mut a, &host, 10, &valid(&host, "a")), Step::Wait);
        // The client hangs up before the root's tick: the fetch goes out all the same, the root's.
        a.on_request_gone(ContextId(10), host.now(), &host);
        assert!(tick(&mut a, &host).is_empty());
        assert_eq!(
            (host.call_count(), host.last_caller()),
            (1, ContextId(ROOT))
        );
        // Another worker's request waits for it, and passes when it answers.
        let mut b = jwt_gate(&host, "jwt", "");
        assert_eq!(ask(&mut b, &host, 20, &valid(&host, "b")), Step::Wait);
        let (token, _) = host.last_call();
        assert!(answer(&mut a, &host, token, 200, &published()).is_empty());
        assert_eq!(numbered_statuses(&tick(&mut b, &host)), vec![(20, 200)]);
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    /// Unknown-`kid` tokens whose clients hang up at once, in a
    /// loop. The fetches they cause complete (the root owns them), so a key published since is
    /// taken up by the next permitted refresh, and the hourly refresh is not held back.
    fn clients_that_hang_up_cannot_hold_back_a_key_set_refresh(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = warmed(&host, "jwt");
        let bogus = |host: &FakeHost, i: u64| {
            let kid = format!("made-up-{i}");
            bearer_signed(&kid, "2", &claims(host.now(), &kid))
        };
        // The attacker's token takes the lease, then hangs up; the root's fetch still answers,
        // with the key set of now, in which a new key k2 is already published.
        assert_eq!(ask(&mut g, &host, 10, &bogus(&host, 0)), Step::Wait);
        g.on_request_gone(ContextId(10), host.now(), &host);
        answer_keys(&mut g, &host, &keys_body(&[("k1", "1"), ("k2", "2")]));
        let rotated = bearer_signed("k2", "2", &claims(host.now(), "r"));
        assert_eq!(status(&ask(&mut g, &host, 11, &rotated)), 200);
        // Hang-ups for two refresh intervals: the fetches they cause complete (answered here as
        // soon as the root sends them), and count: at most one per interval.
        let calls = host.call_count();
        let interval_steps = keys::REFRESH_INTERVAL_MS / 100;
        for i in 1..=2 * interval_steps {
            let ctx = 100 + u32::try_from(i).unwrap_or(0);
            if ask(&mut g, &host, ctx, &bogus(&host, i)) == Step::Wait {
                g.on_request_gone(ContextId(ctx), host.now(), &host);
            }
            let before = host.call_count();
            tick(&mut g, &host);
            if host.call_count() > before {
                assert_eq!(host.last_caller(), ContextId(ROOT));
                let (token, _) = host.last_call();
                answer(
                    &mut g,
                    &host,
                    token,
                    200,
                    &keys_body(&[("k1", "1"), ("k2", "2")]),
                );
            }
            host.advance(100);
        }
        assert!(
            host.call_count() - calls <= 2,
            "{} fetches",
            host.call_count() - calls
        );
        // The hourly refresh still happens on time.
        host.advance(keys::MAX_AGE_MS);
        let before = host.call_count();
        tick(&mut g, &host);
        assert_eq!(
            host.call_count(),
            before + 1,
            "the periodic refresh went out"
        );
        assert_eq!(host.last_caller(), ContextId(ROOT));
    }
}

cas_test! {
    fn jwt_plus_introspection_verifies_first_then_introspects(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = warmed(&host, "jwt+introspection");
        assert_eq!(
            paths(&host),
            vec![KEYS_PATH, INTROSPECT_PATH],
            "the warm token"
        );
        let forged = bearer_signed("k1", "unpublished", &claims(host.now(), "f"));
        assert_eq!(status(&ask(&mut g, &host, 10, &forged)), 401);
        assert_eq!(host.call_count(), 2, "a forged token never reaches Okta");
        let revoked = valid(&host, "revoked");
        assert_eq!(ask(&mut g, &host, 11, &revoked), Step::Wait);
        assert_eq!(host.last_call().1.path, INTROSPECT_PATH);
        let steps = answer(
            &mut g,
            &host,
            host.last_call().0,
            200,
            r#"{"active":false}"#,
        );
        assert_eq!(numbered_statuses(&steps), vec![(11, 401)]);
        assert_eq!(status(&ask(&mut g, &host, 12, &revoked)), 401, "cached");
        assert_eq!(host.call_count(), 3);
    }
}

cas_test! {
    fn introspection_mode_refuses_what_cannot_be_a_jwt_without_a_call(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","bearer_validation":"introspection""#);
        assert_eq!(
            status(&ask(&mut g, &host, 10, b"Bearer opaque-garbage")),
            401
        );
        let mut expired = claims(host.now(), "e");
        expired["exp"] = json!(host.now() / 1000 - 3600);
        assert_eq!(
            status(&ask(&mut g, &host, 11, &bearer_signed("k1", "1", &expired))),
            401
        );
        assert_eq!(host.call_count(), 0);
        assert_eq!(ask(&mut g, &host, 12, &valid(&host, "v")), Step::Wait);
        assert_eq!(paths(&host), vec![INTROSPECT_PATH]);
    }
}

cas_test! {
    fn the_key_set_url_comes_from_discovery_when_not_configured(cas) {
        let host = FakeHost::at(cas, T0);
        let cfg = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["bearer"],
                "audience":"api://default","scopes":["api:read"]}"#,
        )
        .expect("valid");
        let mut g = start(cfg, &host);
        assert_eq!(ask(&mut g, &host, 10, &valid(&host, "a")), Step::Wait);
        assert!(tick(&mut g, &host).is_empty());
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","jwks_uri":"https://o.okta.com/oauth2/default/v1/keys"}"#;
        let steps = answer(&mut g, &host, host.last_call().0, 200, doc);
        assert!(steps.is_empty(), "parked again, for the keys");
        let steps = answer_keys(&mut g, &host, &published());
        assert_eq!(numbered_statuses(&steps), vec![(10, 200)]);
    }
}

cas_test! {
    fn a_first_token_with_an_unknown_kid_costs_one_fetch(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = jwt_gate(&host, "jwt", "");
        let unknown = bearer_signed("k9", "2", &claims(host.now(), "u"));
        assert_eq!(ask(&mut g, &host, 10, &unknown), Step::Wait);
        let steps = answer_keys(&mut g, &host, &published());
        assert_eq!(numbered_statuses(&steps), vec![(10, 401)]);
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    /// ngx_wasm_module: a request is answered only in its own context, so it fetches the keys
    /// itself and never waits for another request's fetch.
    fn with_own_request_only_a_request_fetches_its_own_keys(cas) {
        let host = FakeHost::at(cas, T0);
        let json = br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["bearer"],
            "audience":"api://default","scopes":["api:read"],"cache_slots":8,
            "jwks_uri":"https://o.okta.com/oauth2/default/v1/keys"}"#;
        let mut g = solo_gate(&host, json);
        assert_eq!(ask(&mut g, &host, 10, &valid(&host, "a")), Step::Wait);
        let first = host.last_call().0;
        // another request meanwhile: it cannot wait for that fetch here, so it makes its own
        assert_eq!(ask(&mut g, &host, 11, &valid(&host, "b")), Step::Wait);
        let second = host.last_call().0;
        assert_eq!(host.call_count(), 2);
        let headers = vec![(":status".to_string(), "200".to_string())];
        let body = published();
        let answer = IdpAnswer {
            status: Some(200),
            headers: &headers,
            body: body.as_bytes(),
        };
        let steps = deliver(&mut g, &host, 11, second, answer);
        assert_eq!(numbered_statuses(&steps), vec![(11, 200)], "only its own");
        let steps = deliver(&mut g, &host, 10, first, answer);
        assert_eq!(numbered_statuses(&steps), vec![(10, 200)]);
        assert_eq!(status(&ask(&mut g, &host, 12, &valid(&host, "c"))), 200);
        // an unknown kid while a fetch is out: no fetch of its own (at most once per 30 s)
        let unknown = bearer_signed("k9", "2", &claims(host.now(), "u"));
        assert_eq!(ask(&mut g, &host, 13, &unknown), Step::Wait);
        assert_eq!(status(&ask(&mut g, &host, 14, &unknown)), 401);
        assert_eq!(host.call_count(), 3);
    }
}

cas_test! {
    /// ngx_wasm_module: a request's own fetch dies with it; the root sends it again at its tick,
    /// under the same lease, and nothing was stamped for the lost one.
    fn with_own_request_only_a_lost_fetch_is_sent_again_by_the_root(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = solo_gate(&host, SOLO_BEARER);
        assert_eq!(ask(&mut g, &host, 10, &valid(&host, "a")), Step::Wait);
        assert_eq!(
            host.last_caller(),
            ContextId(10),
            "its own, since it may wait for it"
        );
        g.on_request_gone(ContextId(10), host.now(), &host);
        assert!(tick(&mut g, &host).is_empty());
        assert_eq!(
            (host.call_count(), host.last_caller()),
            (2, ContextId(ROOT))
        );
        let (token, _) = host.last_call();
        assert!(answer(&mut g, &host, token, 200, &published()).is_empty());
        assert_eq!(status(&ask(&mut g, &host, 11, &valid(&host, "b"))), 200);
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    /// ngx_wasm_module: a request that may not wait (not its connection's first) is answered at
    /// once, and the root makes the call it needs, so that its retry passes.
    fn a_request_that_may_not_wait_gets_503_and_its_retry_finds_the_keys(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = solo_gate(&host, SOLO_BEARER);
        let token = valid(&host, "a");
        let step = g.on_request(ContextId(10), &[&token], false, host.now(), &host);
        assert_eq!(step, Step::Unavailable { retry_after_s: 1 });
        assert_eq!(
            host.call_count(),
            0,
            "no call owned by a request that is answered"
        );
        assert!(tick(&mut g, &host).is_empty());
        assert_eq!(
            (host.call_count(), host.last_caller()),
            (1, ContextId(ROOT))
        );
        let (call, _) = host.last_call();
        answer(&mut g, &host, call, 200, &keys_body(&[("k1", "1")]));
        let step = g.on_request(ContextId(11), &[&token], false, host.now(), &host);
        assert_eq!(status(&step), 200);
        // A new key on a reused connection: the same, within the refresh rules.
        let rotated = bearer_signed("k2", "2", &claims(host.now(), "r"));
        let step = g.on_request(ContextId(12), &[&rotated], false, host.now(), &host);
        assert_eq!(step, Step::Unavailable { retry_after_s: 1 });
        tick(&mut g, &host);
        let (call, _) = host.last_call();
        answer(
            &mut g,
            &host,
            call,
            200,
            &keys_body(&[("k1", "1"), ("k2", "2")]),
        );
        let step = g.on_request(ContextId(13), &[&rotated], false, host.now(), &host);
        assert_eq!(status(&step), 200);
        // Another unknown kid within the interval: no fetch, a plain 401.
        let unknown = bearer_signed("k9", "2", &claims(host.now(), "u"));
        let step = g.on_request(ContextId(14), &[&unknown], false, host.now(), &host);
        assert_eq!(status(&step), 401);
        tick(&mut g, &host);
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    /// ngx_wasm_module, no key set yet, another fetch out: a request's own fetch without the
    /// lease is one per worker until its answer or deadline (also when its request goes away),
    /// and its answer leaves the other worker's lease alone.
    fn with_own_request_only_own_fetches_are_one_at_a_time_and_leave_the_lease(cas) {
        let host = FakeHost::at(cas, T0);
        let mut a = solo_gate(&host, SOLO_BEARER);
        let mut b = solo_gate(&host, SOLO_BEARER);
        assert_eq!(ask(&mut a, &host, 10, &valid(&host, "a")), Step::Wait, "a's leased fetch");
        let leased = host.last_call().0;
        assert_eq!(ask(&mut b, &host, 20, &valid(&host, "b")), Step::Wait, "b's own fetch");
        let own = host.last_call().0;
        for ctx in 21..30 {
            assert_eq!(status(&ask(&mut b, &host, ctx, &valid(&host, "c"))), 503);
        }
        assert_eq!(host.call_count(), 2, "one own fetch per worker");
        // The own fetch answers: the set is shared, and a's lease stays a's.
        let headers = vec![(":status".to_string(), "200".to_string())];
        let body = published();
        let ok = IdpAnswer {
            status: Some(200),
            headers: &headers,
            body: body.as_bytes(),
        };
        assert_eq!(numbered_statuses(&deliver(&mut b, &host, 20, own, ok)), vec![(20, 200)]);
        assert!(super::key_fetch::read_keys_record(&host, super::key_fetch::keys_record_name(&a.discovery, &a.names).as_deref()).in_flight(host.now()), "a's lease was not released");
        answer(&mut a, &host, leased, 200, &published());
        assert!(!super::key_fetch::read_keys_record(&host, super::key_fetch::keys_record_name(&a.discovery, &a.names).as_deref()).in_flight(host.now()));
        // A lost own fetch still holds its worker's turn until its deadline.
        let host = FakeHost::at(cas, T0);
        let mut a = solo_gate(&host, SOLO_BEARER);
        let mut b = solo_gate(&host, SOLO_BEARER);
        ask(&mut a, &host, 10, &valid(&host, "a"));
        assert_eq!(ask(&mut b, &host, 20, &valid(&host, "b")), Step::Wait);
        b.on_request_gone(ContextId(20), host.now(), &host);
        assert_eq!(status(&ask(&mut b, &host, 21, &valid(&host, "c"))), 503);
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    /// A key set fetch that finds no place among the calls in flight tried nothing: it does
    /// not count toward the once-per-30-s rule.
    fn a_fetch_that_found_no_place_is_no_attempt(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = warmed(&host, "jwt");
        let unknown = |host: &FakeHost, kid: &str| bearer_signed(kid, "2", &claims(host.now(), kid));
        assert_eq!(ask(&mut g, &host, 10, &unknown(&host, "k8")), Step::Wait);
        // Before the root's tick, other workers fill every place.
        let full = (0..64).fold(crate::inflight::InFlight::default(), |r, i| {
            r.try_take(host.now(), host.now() + 4_000 + i, 64, crate::budget::CallClass::Refresh)
                .unwrap_or(r)
        });
        let name = crate::cache::Names::stable("https://o.okta.com/oauth2/default").in_flight();
        overwrite(&host, &name, &full.encode());
        let calls = host.call_count();
        tick(&mut g, &host);
        assert_eq!(host.call_count(), calls, "no place: not sent");
        // The places free up: the next unknown kid may fetch at once.
        host.advance(5_000);
        let steps = tick(&mut g, &host);
        assert!(steps.iter().all(|(_, s)| status(s) == 401));
        assert_eq!(ask(&mut g, &host, 11, &unknown(&host, "k9")), Step::Wait);
        tick(&mut g, &host);
        assert_eq!(host.call_count(), calls + 1, "not held back 30 s");
    }
}

const SOLO_BEARER: &[u8] =
    br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["bearer"],
    "audience":"api://default","scopes":["api:read"],"cache_slots":8,
    "jwks_uri":"https://o.okta.com/oauth2/default/v1/keys"}"#;

cas_test! {
    fn another_key_set_url_of_the_same_issuer_is_its_own_record(cas) {
        let host = FakeHost::at(cas, T0);
        let _a = warmed(&host, "jwt");
        let mut b = gate(
            &host,
            r#","bearer_validation":"jwt","audience":"api://default","jwks_uri":"https://o.okta.com/oauth2/default/v1/other-keys""#,
        );
        assert_eq!(ask(&mut b, &host, 10, &valid(&host, "b")), Step::Wait);
        tick(&mut b, &host);
        assert_eq!(host.last_call().1.path, "/oauth2/default/v1/other-keys");
    }
}

cas_test! {
    /// ngx_wasm_module, no `jwks_uri`: a token's key set URL comes from discovery. A request
    /// that may wait asks for it itself, then fetches the keys itself; one that may not wait is
    /// answered at once; during discovery's backoff, a token gets 503 without waiting.
    fn with_own_request_only_a_token_waits_for_its_own_discovery_first(cas) {
        let host = FakeHost::at(cas, T0);
        let json = br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["bearer"],
            "audience":"api://default","scopes":["api:read"],"cache_slots":8}"#;
        let mut g = solo_gate(&host, json);
        let token = valid(&host, "a");
        let step = g.on_request(ContextId(9), &[&token], false, host.now(), &host);
        assert_eq!(step, Step::Unavailable { retry_after_s: 1 }, "may not wait");
        assert_eq!(host.call_count(), 0);
        assert_eq!(ask(&mut g, &host, 10, &token), Step::Wait);
        let (call, request) = host.last_call();
        assert!(request.path.ends_with("/.well-known/oauth-authorization-server"));
        assert_eq!(host.last_caller(), ContextId(10), "its own discovery call");
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token","jwks_uri":"https://o.okta.com/oauth2/default/v1/keys"}"#;
        let headers = vec![(":status".to_string(), "200".to_string())];
        let discovered = IdpAnswer {
            status: Some(200),
            headers: &headers,
            body: doc.as_bytes(),
        };
        let steps = deliver(&mut g, &host, 10, call, discovered);
        assert!(steps.is_empty(), "request 10 now waits for its key set fetch");
        assert_eq!(host.last_call().1.path, KEYS_PATH);
        assert_eq!(host.last_caller(), ContextId(10), "its own fetch too");
        let keys = published();
        let fetched = IdpAnswer {
            status: Some(200),
            headers: &headers,
            body: keys.as_bytes(),
        };
        let steps = deliver(&mut g, &host, 10, host.last_call().0, fetched);
        assert_eq!(numbered_statuses(&steps), vec![(10, 200)]);

        // another gateway whose discovery failed: within the backoff, 503 at once
        let host = FakeHost::at(cas, T0);
        let mut other = solo_gate(&host, json);
        assert_eq!(ask(&mut other, &host, 20, &valid(&host, "b")), Step::Wait);
        let failed = IdpAnswer {
            status: Some(500),
            headers: &[],
            body: b"",
        };
        let steps = deliver(&mut other, &host, 20, host.last_call().0, failed);
        assert_eq!(numbered_statuses(&steps), vec![(20, 503)]);
        let calls = host.call_count();
        assert_eq!(status(&ask(&mut other, &host, 21, &valid(&host, "c"))), 503);
        assert_eq!(host.call_count(), calls, "no call during the backoff");
    }
}

cas_test! {
    fn forged_tokens_beyond_the_workers_signature_bound_get_503_and_spend_no_known_apps_share(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = jwt_gate(&host, "jwt", r#","max_signature_checks_per_s":10"#);
        assert_eq!(ask(&mut g, &host, 2, &valid(&host, "warm")), Step::Wait);
        answer_keys(&mut g, &host, &published());
        host.advance(1_000);
        // Forged tokens under the published kid, with claims that pass, each naming an app of
        // its own: the unknown apps' half of the bound gets a check (401), the rest 503.
        let forged = |i: u32| {
            let mut c = claims(host.now(), &format!("f{i}"));
            c["app_id"] = json!(format!("0oa-forged{i}"));
            bearer_signed("k1", "unpublished", &c)
        };
        let statuses: Vec<u32> = (0..20)
            .map(|i| status(&ask(&mut g, &host, 100 + i, &forged(i))))
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5);
        assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 15);
        match ask(&mut g, &host, 200, &forged(99)) {
            Step::Unavailable { retry_after_s } => assert_eq!(retry_after_s, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(host.counter("okta_dcr_auth_requests_denied_signature_checks_busy"), 16);
        // The known app (its first token verified above) still has its share this second.
        assert_eq!(status(&ask(&mut g, &host, 300, &valid(&host, "new"))), 200);
        // A token refused as busy was not decided: its retry the next second is checked (401).
        host.advance(1_000);
        assert_eq!(status(&ask(&mut g, &host, 400, &forged(19))), 401);
        assert_eq!(host.call_count(), 1, "only the key set fetch");
    }
}
