//! The gate driven by the fake host: every path of a request's life without Envoy. Every test
//! is written once for a [`CasModel`] and runs under both (`cas_test!`): Envoy's shared-data
//! semantics and ngx_wasm_module's (CAS 0 creates only).

/// A gate test, run once under each host's shared-data model: `fn name(cas) { ... }` becomes
/// the function and a module `name` with the tests `envoy` and `create_only`.
macro_rules! cas_test {
    ($(#[$meta:meta])* fn $name:ident($cas:ident) $body:block) => {
        $(#[$meta])*
        pub(super) fn $name($cas: CasModel) $body

        mod $name {
            #[test]
            fn envoy() {
                super::$name(super::CasModel::Envoy);
            }

            #[test]
            fn create_only() {
                super::$name(super::CasModel::CreateOnly);
            }
        }
    };
}

use base64::Engine as _;

use super::fake::{CasModel, FakeHost};
use super::guard::{FAILURES_BEFORE_PAUSE, FAILURE_PAUSE_MS, RATE_LIMIT_DEFAULT_PAUSE_MS};
use super::*;
use crate::cache::Cached;
use crate::upstream::AuthorizationEdit;
use crate::verdict::Grant;

const T0: u64 = 1_700_000_000_000;
const ROOT: u32 = 1;

fn config(extra: &str) -> Config {
    Config::from_json(
        format!(
            r#"{{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta",
                "token_endpoint":"https://o.okta.com/oauth2/default/v1/token",
                "introspection_endpoint":"https://o.okta.com/oauth2/default/v1/introspect",
                "introspection_client_id":"gw","introspection_client_secret":"gw-secret",
                "scopes":["api:read"]{slots}{mode}{extra}}}"#,
            slots = if extra.contains("cache_slots") {
                ""
            } else {
                r#","cache_slots":64"#
            },
            // The tests below are about the introspection path (of opaque test tokens) unless
            // they say otherwise.
            mode = if extra.contains("bearer_validation") {
                ""
            } else {
                r#","bearer_validation":"introspection","bearer_format":"opaque""#
            },
        )
        .as_bytes(),
    )
    .expect("test configuration is valid")
}

fn start(config: Config, host: &FakeHost) -> Gate {
    Gate::new(
        config,
        ContextId(ROOT),
        Resume::AnyRequest,
        host.now(),
        host,
    )
}

fn gate(host: &FakeHost, extra: &str) -> Gate {
    start(config(extra), host)
}

fn basic(id: &str, secret: &str) -> Vec<u8> {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
    .into_bytes()
}

fn ask(g: &mut Gate, host: &FakeHost, ctx: u32, authorization: &[u8]) -> Step {
    g.on_request(ContextId(ctx), &[authorization], true, host.now(), host)
}

fn numbered(steps: Vec<(ContextId, Step)>) -> Vec<(u32, Step)> {
    steps.into_iter().map(|(ctx, step)| (ctx.0, step)).collect()
}

/// An IdP answer for call `token`, delivered in context `caller`.
fn deliver(
    g: &mut Gate,
    host: &FakeHost,
    caller: u32,
    token: u32,
    answer: IdpAnswer<'_>,
) -> Vec<(u32, Step)> {
    numbered(g.on_idp_answer(
        ContextId(caller),
        CallToken(token),
        answer,
        host.now(),
        host,
    ))
}

fn answer(g: &mut Gate, host: &FakeHost, token: u32, status: u16, body: &str) -> Vec<(u32, Step)> {
    let headers = vec![(":status".to_string(), status.to_string())];
    let answer = IdpAnswer {
        status: Some(status),
        headers: &headers,
        body: body.as_bytes(),
    };
    deliver(g, host, ROOT, token, answer)
}

fn tick(g: &mut Gate, host: &FakeHost) -> Vec<(u32, Step)> {
    numbered(g.on_tick(host.now(), host))
}

fn token_ok(expires_in: u64) -> String {
    format!(
        r#"{{"token_type":"Bearer","expires_in":{expires_in},"access_token":"okta.jwt.token","scope":"api:read"}}"#
    )
}

const INVALID_CLIENT: &str = r#"{"error":"invalid_client","error_description":"The client secret supplied for a confidential client is invalid."}"#;

fn status(step: &Step) -> u32 {
    match step {
        Step::Forward(_) => 200,
        Step::Deny(denial) => denial.reply(&config("").reply_terms()).status,
        Step::Unavailable { .. } | Step::NoRegistrations { .. } => 503,
        Step::Wait => 0,
    }
}

fn forwarded(step: &Step) -> &Forward {
    match step {
        Step::Forward(f) => f,
        other => panic!("expected a forward, got {other:?}"),
    }
}

cas_test! {
    fn valid_client_is_asked_once_then_served_from_cache(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        assert_eq!(ask(&mut g, &host, 10, &basic("app", "s3cret")), Step::Wait);
        let (token, request) = host.last_call();
        assert_eq!(request.path, "/oauth2/default/v1/token");
        assert_eq!(
            request.body,
            b"grant_type=client_credentials&scope=api%3Aread"
        );
        assert!(request.headers.contains(&(
            "authorization",
            crate::config::client_secret_basic("app", "s3cret")
        )));
        let steps = answer(&mut g, &host, token, 200, &token_ok(3600));
        assert_eq!(steps.len(), 1);
        let f = forwarded(&steps[0].1);
        assert_eq!(steps[0].0, 10);
        assert_eq!((f.identity.as_str(), f.scope.as_str()), ("app", "api:read"));
        assert_eq!(
            f.authorization,
            AuthorizationEdit::Set("Bearer okta.jwt.token".into())
        );
        for ctx in 11..20 {
            assert_eq!(
                status(&ask(&mut g, &host, ctx, &basic("app", "s3cret"))),
                200
            );
        }
        // the raw form of the same credential shares the verdict
        assert_eq!(status(&ask(&mut g, &host, 20, b"Basic app:s3cret")), 200);
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn wrong_secret_is_not_served_from_cache(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        ask(&mut g, &host, 10, &basic("app", "right"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        assert_eq!(ask(&mut g, &host, 11, &basic("app", "wrong")), Step::Wait);
        assert_eq!(host.call_count(), 2);
        let steps = answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        assert_eq!(status(&steps[0].1), 401);
    }
}

cas_test! {
    fn definite_no_is_cached_for_the_negative_ttl_only(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","negative_cache_ttl_s":30"#);
        ask(&mut g, &host, 10, &basic("app", "wrong"));
        let steps = answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        assert_eq!(status(&steps[0].1), 401);
        assert_eq!(status(&ask(&mut g, &host, 11, &basic("app", "wrong"))), 401);
        assert_eq!(host.call_count(), 1);
        host.advance(30_001);
        assert_eq!(ask(&mut g, &host, 12, &basic("app", "wrong")), Step::Wait);
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    fn unauthorized_client_is_a_cached_401(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        ask(&mut g, &host, 10, &basic("app", "s"));
        let body = r#"{"error":"unauthorized_client","error_description":"The client is not authorized to use the provided grant type."}"#;
        let steps = answer(&mut g, &host, host.last_call().0, 400, body);
        assert_eq!(status(&steps[0].1), 401);
        assert_eq!(status(&ask(&mut g, &host, 11, &basic("app", "s"))), 401);
        assert_eq!(
            host.call_count(),
            1,
            "the second refusal comes from the cache"
        );
    }
}

cas_test! {
    fn invalid_scope_is_403(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        ask(&mut g, &host, 10, &basic("app", "s"));
        let steps = answer(
            &mut g,
            &host,
            host.last_call().0,
            400,
            r#"{"error":"invalid_scope","error_description":"One or more scopes are not configured."}"#,
        );
        assert_eq!(status(&steps[0].1), 403);
    }
}

cas_test! {
    fn idp_failures_are_503_and_never_cached(cas) {
        for (code, body) in [
            (500, "oops"),
            (503, ""),
            (429, "{}"),
            (200, "<html>"),
            (200, "{}"),
            (302, ""),
            (400, "{\"error\":\"invalid_request\"}"),
        ] {
            let host = FakeHost::at(cas, T0);
            let mut g = gate(&host, "");
            ask(&mut g, &host, 10, &basic("app", "s"));
            let steps = answer(&mut g, &host, host.last_call().0, code, body);
            assert_eq!(status(&steps[0].1), 503, "{code} {body}");
            host.advance(RATE_LIMIT_DEFAULT_PAUSE_MS); // a 429 pauses calls
            assert_eq!(
                ask(&mut g, &host, 11, &basic("app", "s")),
                Step::Wait,
                "{code} {body}"
            );
            answer(&mut g, &host, host.last_call().0, 200, &token_ok(60));
            assert_eq!(status(&ask(&mut g, &host, 12, &basic("app", "s"))), 200);
        }
    }
}

cas_test! {
    fn no_answer_at_all_is_503(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        ask(&mut g, &host, 10, &basic("app", "s"));
        let steps = deliver(
            &mut g,
            &host,
            ROOT,
            host.last_call().0,
            IdpAnswer {
                status: None,
                headers: &[],
                body: b"",
            },
        );
        assert_eq!(status(&steps[0].1), 503);
    }
}

cas_test! {
    fn dispatch_refused_answers_503_at_once(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        host.refuse_dispatch.set(true);
        assert_eq!(status(&ask(&mut g, &host, 10, &basic("app", "s"))), 503);
        host.refuse_dispatch.set(false);
        // the failed attempt left no lease behind
        assert_eq!(ask(&mut g, &host, 11, &basic("app", "s")), Step::Wait);
    }
}

cas_test! {
    fn verdict_expires_with_the_token(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","cache_ttl_s":300"#);
        ask(&mut g, &host, 10, &basic("app", "s"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(2));
        assert_eq!(status(&ask(&mut g, &host, 11, &basic("app", "s"))), 200);
        host.advance(2_000);
        assert_eq!(ask(&mut g, &host, 12, &basic("app", "s")), Step::Wait);
    }
}

cas_test! {
    fn forward_access_token_false_sends_no_authorization(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","forward_access_token":false"#);
        ask(&mut g, &host, 10, &basic("app", "s"));
        let steps = answer(&mut g, &host, host.last_call().0, 200, &token_ok(60));
        assert_eq!(
            forwarded(&steps[0].1).authorization,
            AuthorizationEdit::Remove
        );
    }
}

cas_test! {
    fn concurrent_first_requests_across_workers_make_one_call(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, "");
        let mut worker_b = gate(&host, "");
        assert_eq!(
            ask(&mut worker_a, &host, 10, &basic("app", "s")),
            Step::Wait
        );
        for ctx in 11..20 {
            assert_eq!(
                ask(&mut worker_a, &host, ctx, &basic("app", "s")),
                Step::Wait
            );
            assert_eq!(
                ask(&mut worker_b, &host, ctx + 100, &basic("app", "s")),
                Step::Wait
            );
        }
        assert_eq!(host.call_count(), 1);
        // the leader's worker answers its own followers at once
        let steps = answer(&mut worker_a, &host, host.last_call().0, 200, &token_ok(60));
        assert_eq!(steps.len(), 10);
        assert!(steps.iter().all(|(_, s)| status(s) == 200));
        assert_eq!(steps[0].0, 10, "the leader first");
        // the other worker's followers see the verdict at the next tick
        host.advance(TICK_MS);
        let steps = tick(&mut worker_b, &host);
        assert_eq!(steps.len(), 9);
        assert!(steps.iter().all(|(_, s)| status(s) == 200));
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn followers_give_up_when_the_leader_fails(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, "");
        let mut worker_b = gate(&host, "");
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        host.advance(1);
        assert_eq!(
            ask(&mut worker_b, &host, 20, &basic("app", "s")),
            Step::Wait
        );
        host.advance(1);
        answer(&mut worker_a, &host, host.last_call().0, 500, "");
        let steps = tick(&mut worker_b, &host);
        assert_eq!(steps.len(), 1);
        assert_eq!(status(&steps[0].1), 503);
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn a_vanished_leader_hands_over_to_a_follower(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, "");
        let mut worker_b = gate(&host, "");
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        assert_eq!(
            ask(&mut worker_b, &host, 20, &basic("app", "s")),
            Step::Wait
        );
        // the client of the leader hangs up: its call dies with it
        worker_a.on_request_gone(ContextId(10), host.now(), &host);
        assert!(tick(&mut worker_b, &host).is_empty());
        assert_eq!(
            host.call_count(),
            2,
            "the follower took the lease and asked"
        );
        let steps = answer(&mut worker_b, &host, host.last_call().0, 200, &token_ok(60));
        assert_eq!((steps[0].0, status(&steps[0].1)), (20, 200));
    }
}

cas_test! {
    fn followers_never_wait_forever(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, r#","idp_timeout_ms":500"#);
        let mut worker_b = gate(&host, r#","idp_timeout_ms":500"#);
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        ask(&mut worker_b, &host, 20, &basic("app", "s"));
        // worker A's answer never comes (the worker died); the lease runs out and B takes over
        host.advance(500 + LEASE_MARGIN_MS + 1);
        assert!(tick(&mut worker_b, &host).is_empty());
        assert_eq!(host.call_count(), 2);
        // and if that one never answers either, the backstop ends the wait
        host.advance(3 * (500 + LEASE_MARGIN_MS));
        let steps = tick(&mut worker_b, &host);
        assert_eq!(status(&steps[0].1), 503);
    }
}

cas_test! {
    fn stale_verdict_serves_while_the_idp_fails_but_a_new_credential_does_not(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","cache_ttl_s":1,"stale_if_error_s":60"#);
        ask(&mut g, &host, 10, &basic("app", "s"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        host.advance(2_000);
        assert_eq!(
            ask(&mut g, &host, 11, &basic("app", "s")),
            Step::Wait,
            "expired: asks again"
        );
        let steps = answer(&mut g, &host, host.last_call().0, 503, "");
        assert_eq!(forwarded(&steps[0].1).identity, "app");
        ask(&mut g, &host, 12, &basic("other", "s"));
        let steps = answer(&mut g, &host, host.last_call().0, 503, "");
        assert_eq!(status(&steps[0].1), 503);
        // past the stale window: 503
        host.advance(60_000);
        ask(&mut g, &host, 13, &basic("app", "s"));
        let steps = answer(&mut g, &host, host.last_call().0, 503, "");
        assert_eq!(status(&steps[0].1), 503);
    }
}

cas_test! {
    fn malformed_input_never_reaches_the_idp(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        assert_eq!(
            status(&g.on_request(ContextId(10), &[], true, host.now(), &host)),
            401
        );
        assert_eq!(status(&ask(&mut g, &host, 11, b"Basic !!!")), 401);
        assert_eq!(status(&ask(&mut g, &host, 12, b"Bearer a b")), 401);
        assert_eq!(
            status(&g.on_request(
                ContextId(13),
                &[b"Basic a:b", b"Basic a:b"],
                true,
                host.now(),
                &host
            )),
            400
        );
        assert_eq!(host.call_count(), 0);
    }
}

cas_test! {
    fn shared_keys_stay_within_the_slots(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","cache_slots":16"#);
        assert_eq!(
            host.snapshot().len(),
            4 + 1 + 1,
            "4 sets of 4 ways, the marker, and the calls in flight"
        );
        for i in 0..500 {
            ask(&mut g, &host, 1000 + i, &basic(&format!("app{i}"), "s"));
            answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        }
        let data = host.snapshot();
        let throttle = data.keys().filter(|k| k.contains("/throttle/")).count();
        assert!(throttle > 0 && throttle <= crate::throttle::SLOTS as usize);
        // the sets, their marker, and per endpoint a budget and a quota guard at most
        assert!(data.len() - throttle <= 4 + 1 + 2 * IdpEndpoint::COUNT);
    }
}

cas_test! {
    fn discovery_runs_first_and_requests_wait_for_it(cas) {
        let host = FakeHost::at(cas, T0);
        let cfg = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8}"#,
        )
        .expect("valid");
        let mut g = start(cfg, &host);
        assert_eq!(host.call_count(), 0, "no IdP call during plugin start");
        tick(&mut g, &host);
        let (discovery, request) = host.last_call();
        assert_eq!(
            request.path,
            "/oauth2/default/.well-known/oauth-authorization-server"
        );
        assert_eq!(ask(&mut g, &host, 10, &basic("app", "s")), Step::Wait);
        assert_eq!(host.call_count(), 1);
        // 404: the OpenID document is tried next
        answer(&mut g, &host, discovery, 404, "");
        let (discovery, request) = host.last_call();
        assert_eq!(
            request.path,
            "/oauth2/default/.well-known/openid-configuration"
        );
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token2"}"#;
        assert!(answer(&mut g, &host, discovery, 200, doc).is_empty());
        let (token, request) = host.last_call();
        assert_eq!(request.path, "/oauth2/default/v1/token2");
        let steps = answer(&mut g, &host, token, 200, &token_ok(60));
        assert_eq!((steps[0].0, status(&steps[0].1)), (10, 200));
        // another worker takes the endpoints from shared data without asking
        let mut other = start(g.config.clone(), &host);
        tick(&mut other, &host);
        assert_eq!(host.call_count(), 3);
    }
}

cas_test! {
    fn failed_discovery_is_retried_and_waiters_get_503_meanwhile(cas) {
        let host = FakeHost::at(cas, T0);
        let cfg = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8,"idp_timeout_ms":200}"#,
        )
        .expect("valid");
        let mut g = start(cfg, &host);
        assert_eq!(host.call_count(), 0, "no IdP call during plugin start");
        tick(&mut g, &host);
        let (discovery, _) = host.last_call();
        assert_eq!(ask(&mut g, &host, 10, &basic("app", "s")), Step::Wait);
        answer(&mut g, &host, discovery, 500, "");
        host.advance(200 + LEASE_MARGIN_MS + 1);
        let steps = tick(&mut g, &host);
        assert_eq!((steps[0].0, status(&steps[0].1)), (10, 503));
        // the retry went out on a tick after the backoff
        assert_eq!(host.call_count(), 2);
        let (discovery, _) = host.last_call();
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token"}"#;
        answer(&mut g, &host, discovery, 200, doc);
        assert_eq!(ask(&mut g, &host, 11, &basic("app", "s")), Step::Wait);
        assert_eq!(host.last_call().1.path, "/oauth2/default/v1/token");
    }
}

cas_test! {
    fn discovery_naming_another_issuer_is_refused(cas) {
        let host = FakeHost::at(cas, T0);
        let cfg = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8}"#,
        )
        .expect("valid");
        let mut g = start(cfg, &host);
        assert_eq!(host.call_count(), 0, "no IdP call during plugin start");
        tick(&mut g, &host);
        let doc = r#"{"issuer":"https://evil.example/oauth2/default","token_endpoint":"https://evil.example/t"}"#;
        answer(&mut g, &host, host.last_call().0, 200, doc);
        assert_eq!(
            status(&ask(&mut g, &host, 10, &basic("app", "s"))),
            0,
            "still waiting for a retry"
        );
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn an_older_answer_never_overwrites_a_newer_verdict(cas) {
        let host = FakeHost::at(cas, T0);
        let g = gate(&host, "");
        let key = CacheKey([5; 32]);
        g.slots.keep(
            &host,
            key,
            T0 + 10,
            T0 + 100_000,
            Cached::Deny(Denial::InvalidClient),
        );
        g.slots.keep(
            &host,
            key,
            T0 + 5,
            T0 + 100_000,
            Cached::Allow(Grant {
                identity: "x".into(),
                scope: String::new(),
                access_token: None,
            }),
        );
        let entry = g.slots.read(&host, &key);
        assert_eq!(entry.verdict, Some(Cached::Deny(Denial::InvalidClient)));
    }
}

cas_test! {
    fn rate_limit_pauses_every_worker_until_the_reset(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, "");
        let mut worker_b = gate(&host, "");
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        let headers = vec![
            (":status".to_string(), "429".to_string()),
            (
                "x-rate-limit-reset".to_string(),
                (T0 / 1000 + 2).to_string(),
            ),
        ];
        let steps = deliver(
            &mut worker_a,
            &host,
            ROOT,
            host.last_call().0,
            IdpAnswer {
                status: Some(429),
                headers: &headers,
                body: b"{}",
            },
        );
        assert_eq!(status(&steps[0].1), 503);
        host.advance(1_000);
        assert_eq!(
            status(&ask(&mut worker_b, &host, 20, &basic("other", "s"))),
            503
        );
        assert_eq!(
            status(&ask(&mut worker_a, &host, 11, &basic("app", "s"))),
            503
        );
        assert_eq!(host.call_count(), 1, "no call before the reset");
        host.advance(1_000);
        assert_eq!(
            ask(&mut worker_b, &host, 21, &basic("other", "s")),
            Step::Wait
        );
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    fn repeated_server_errors_pause_calls_briefly(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        for i in 0..FAILURES_BEFORE_PAUSE {
            assert_eq!(ask(&mut g, &host, 10 + i, &basic("app", "s")), Step::Wait);
            answer(&mut g, &host, host.last_call().0, 500, "");
        }
        let calls = host.call_count();
        assert_eq!(status(&ask(&mut g, &host, 50, &basic("app", "s"))), 503);
        assert_eq!(host.call_count(), calls);
        host.advance(FAILURE_PAUSE_MS);
        assert_eq!(ask(&mut g, &host, 51, &basic("app", "s")), Step::Wait);
        // a verdict ends the streak
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(60));
        assert_eq!(g.health.failures_in_a_row(), [0; IdpEndpoint::COUNT]);
    }
}

cas_test! {
    fn counters_follow_the_traffic(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        ask(&mut g, &host, 10, &basic("app", "s"));
        host.advance(7);
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(60));
        ask(&mut g, &host, 11, &basic("app", "s"));
        ask(&mut g, &host, 12, &basic("app", "wrong"));
        answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        ask(&mut g, &host, 13, &basic("app", "wrong"));
        ask(&mut g, &host, 14, b"Basic !!");
        g.on_request(ContextId(15), &[], true, host.now(), &host);
        ask(&mut g, &host, 16, &basic("down", "s"));
        answer(&mut g, &host, host.last_call().0, 503, "");
        for (name, expected) in [
            ("okta_dcr_auth_requests_allowed", 2),
            ("okta_dcr_auth_requests_denied_invalid", 2),
            ("okta_dcr_auth_requests_denied_malformed", 1),
            ("okta_dcr_auth_requests_denied_no_credentials", 1),
            ("okta_dcr_auth_requests_denied_idp_unavailable", 1),
            ("okta_dcr_auth_cache_hits", 1),
            ("okta_dcr_auth_cache_misses", 3),
            ("okta_dcr_auth_cache_negative_hits", 1),
            ("okta_dcr_auth_idp_token_ok", 1),
            ("okta_dcr_auth_idp_token_4xx", 1),
            ("okta_dcr_auth_idp_token_5xx", 1),
        ] {
            assert_eq!(host.counter(name), expected, "{name}");
        }
        assert_eq!(host.latencies.borrow()[0], 7);
    }
}

pub(super) fn solo_gate(host: &FakeHost, json: &[u8]) -> Gate {
    let config = Config::from_json(json).expect("valid");
    Gate::new(
        config,
        ContextId(ROOT),
        Resume::OwnRequestOnly,
        host.now(),
        host,
    )
}

cas_test! {
    fn solo_host_never_parks_a_request_behind_another(cas) {
        let host = FakeHost::at(cas, T0);
        let json =
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],
            "token_endpoint":"https://o.okta.com/oauth2/default/v1/token","cache_slots":8}"#;
        let mut worker_a = solo_gate(&host, json);
        let mut worker_b = solo_gate(&host, json);
        assert_eq!(
            ask(&mut worker_a, &host, 10, &basic("app", "s")),
            Step::Wait
        );
        let first = host.last_call().0;
        assert_eq!(
            ask(&mut worker_b, &host, 20, &basic("app", "s")),
            Step::Wait
        );
        assert_eq!(
            ask(&mut worker_a, &host, 11, &basic("app", "s")),
            Step::Wait
        );
        assert_eq!(host.call_count(), 3, "each request asks for itself");
        // an answer resolves only the request it belongs to; ticks resolve nothing
        let steps = deliver(
            &mut worker_a,
            &host,
            10,
            first,
            IdpAnswer {
                status: Some(200),
                headers: &[],
                body: token_ok(60).as_bytes(),
            },
        );
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].0, status(&steps[0].1)), (10, 200));
        host.advance(60_000 - 1);
        assert!(tick(&mut worker_b, &host).is_empty());
        // the cache still serves later requests
        assert_eq!(
            status(&ask(&mut worker_b, &host, 21, &basic("app", "s"))),
            200
        );
    }
}

cas_test! {
    /// ngx_wasm_module, a new valid app on a reused connection (an h2 stream after the first): the
    /// request is answered 503 at once, the root asks Okta at its tick, and the retry gets 200 from
    /// the cache, with no second call.
    fn a_request_that_may_not_wait_gets_503_and_its_retry_finds_the_verdict(cas) {
        let host = FakeHost::at(cas, T0);
        let json =
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],
            "token_endpoint":"https://o.okta.com/oauth2/default/v1/token","cache_slots":8}"#;
        let mut g = solo_gate(&host, json);
        let app = basic("app", "s");
        for ctx in [10, 11] {
            // The second one finds the lease of the root's call: no call of its own.
            let step = g.on_request(ContextId(ctx), &[&app], false, host.now(), &host);
            assert_eq!(step, Step::Unavailable { retry_after_s: 1 });
        }
        assert_eq!(host.call_count(), 0);
        assert!(tick(&mut g, &host).is_empty());
        assert_eq!(
            (host.call_count(), host.last_caller()),
            (1, ContextId(ROOT))
        );
        let (call, _) = host.last_call();
        assert!(answer(&mut g, &host, call, 200, &token_ok(60)).is_empty());
        let step = g.on_request(ContextId(12), &[&app], false, host.now(), &host);
        assert_eq!(status(&step), 200);
        assert_eq!(host.call_count(), 1);
    }
}

cas_test! {
    fn solo_request_makes_its_own_discovery_call(cas) {
        let host = FakeHost::at(cas, T0);
        let json = br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8}"#;
        let mut g = solo_gate(&host, json);
        assert_eq!(ask(&mut g, &host, 10, &basic("app", "s")), Step::Wait);
        assert_eq!(ask(&mut g, &host, 11, &basic("app", "s")), Step::Wait);
        let calls = host.calls.borrow().clone();
        assert_eq!(calls.len(), 2);
        assert!(calls
            .iter()
            .all(|(_, r)| r.path.ends_with("/.well-known/oauth-authorization-server")));
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token"}"#;
        let headers = vec![(":status".to_string(), "200".to_string())];
        let steps = deliver(
            &mut g,
            &host,
            11,
            calls[1].0,
            IdpAnswer {
                status: Some(200),
                headers: &headers,
                body: doc.as_bytes(),
            },
        );
        assert!(steps.is_empty(), "request 11 now waits for its token call");
        assert_eq!(host.last_call().1.path, "/oauth2/default/v1/token");
        // the other request's own discovery answer, even a failure, lets it go on
        let steps = deliver(
            &mut g,
            &host,
            10,
            calls[0].0,
            IdpAnswer {
                status: Some(500),
                headers: &[],
                body: b"",
            },
        );
        assert!(steps.is_empty());
        assert_eq!(host.call_count(), 4);
    }
}

cas_test! {
    fn solo_discovery_failure_answers_the_request_at_once(cas) {
        let host = FakeHost::at(cas, T0);
        let json = br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8}"#;
        let mut g = solo_gate(&host, json);
        ask(&mut g, &host, 10, &basic("app", "s"));
        let steps = deliver(
            &mut g,
            &host,
            10,
            host.last_call().0,
            IdpAnswer {
                status: Some(500),
                headers: &[],
                body: b"",
            },
        );
        assert_eq!((steps[0].0, status(&steps[0].1)), (10, 503));
        // during the backoff, a new request is answered at once rather than parked
        assert_eq!(status(&ask(&mut g, &host, 11, &basic("app", "s"))), 503);
    }
}

cas_test! {
    fn a_repeat_credential_is_answered_without_reading_shared_data(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, r#","cache_ttl_s":60"#);
        let mut worker_b = gate(&host, r#","cache_ttl_s":60"#);
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        answer(
            &mut worker_a,
            &host,
            host.last_call().0,
            200,
            &token_ok(3600),
        );
        let reads = host.shared_reads.get();
        assert_eq!(
            status(&ask(&mut worker_a, &host, 11, &basic("app", "s"))),
            200
        );
        assert_eq!(
            host.shared_reads.get(),
            reads,
            "the leader's worker kept a copy"
        );
        // another worker reads the slot once, then keeps its own copy
        assert_eq!(
            status(&ask(&mut worker_b, &host, 20, &basic("app", "s"))),
            200
        );
        let reads = host.shared_reads.get();
        assert_eq!(
            status(&ask(&mut worker_b, &host, 21, &basic("app", "s"))),
            200
        );
        assert_eq!(host.shared_reads.get(), reads);
        assert_eq!(host.counter("okta_dcr_auth_cache_hits"), 3);
        // the copies expire with the verdict
        host.advance(60_000);
        assert_eq!(
            ask(&mut worker_a, &host, 12, &basic("app", "s")),
            Step::Wait
        );
        assert_eq!(
            ask(&mut worker_b, &host, 22, &basic("app", "s")),
            Step::Wait
        );
    }
}

cas_test! {
    fn calls_failing_together_do_not_lengthen_the_pause(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        // twenty different credentials out at once, then all fail
        for i in 0..20 {
            assert_eq!(
                ask(&mut g, &host, 100 + i, &basic(&format!("app{i}"), "s")),
                Step::Wait
            );
        }
        let tokens: Vec<u32> = host.calls.borrow().iter().map(|(t, _)| *t).collect();
        for token in tokens {
            answer(&mut g, &host, token, 500, "");
        }
        // the pause is the first one, not a doubled one
        host.advance(FAILURE_PAUSE_MS);
        assert_eq!(ask(&mut g, &host, 200, &basic("later", "s")), Step::Wait);
    }
}

cas_test! {
    fn the_leader_backstop_serves_a_stale_verdict(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(
            &host,
            r#","cache_ttl_s":1,"stale_if_error_s":60,"idp_timeout_ms":500"#,
        );
        ask(&mut g, &host, 10, &basic("app", "s"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        host.advance(2_000);
        assert_eq!(ask(&mut g, &host, 11, &basic("app", "s")), Step::Wait);
        // the host never answers the call: the backstop ends the wait with the stale verdict
        host.advance(2 * (500 + LEASE_MARGIN_MS) + 1);
        let steps = tick(&mut g, &host);
        assert_eq!(steps.len(), 1);
        assert_eq!(forwarded(&steps[0].1).identity, "app");
        assert_eq!(host.counter("okta_dcr_auth_cache_stale_serves"), 1);
        assert!(g.paused.is_empty() && g.calls.is_empty());
    }
}

cas_test! {
    fn a_discovery_timeout_serves_a_stale_verdict(cas) {
        let host = FakeHost::at(cas, T0);
        let json =
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],
            "cache_slots":8,"cache_ttl_s":1,"stale_if_error_s":86400,"idp_timeout_ms":500}"#;
        let cfg = Config::from_json(json).expect("valid");
        let mut worker_a = start(cfg.clone(), &host);
        tick(&mut worker_a, &host);
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token"}"#;
        answer(&mut worker_a, &host, host.last_call().0, 200, doc);
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        answer(&mut worker_a, &host, host.last_call().0, 200, &token_ok(60));
        // two hours on, a new worker finds the shared endpoints too old and must discover again
        host.advance(7_200_000);
        let mut worker_b = start(cfg, &host);
        assert_eq!(
            ask(&mut worker_b, &host, 20, &basic("app", "s")),
            Step::Wait
        );
        tick(&mut worker_b, &host);
        assert!(host
            .last_call()
            .1
            .path
            .ends_with("oauth-authorization-server"));
        host.advance(500 + LEASE_MARGIN_MS + 1);
        let steps = tick(&mut worker_b, &host);
        assert_eq!(steps.len(), 1);
        assert_eq!(forwarded(&steps[0].1).identity, "app");
    }
}

cas_test! {
    fn next_deadline_says_when_a_tick_has_work(cas) {
        let host = FakeHost::at(cas, T0);
        let mut worker_a = gate(&host, r#","idp_timeout_ms":500"#);
        let mut worker_b = gate(&host, r#","idp_timeout_ms":500"#);
        // idle: no tick work but the bound's announce, every half minute
        let announce = Some(T0 + crate::inflight::CAP_MEMORY_MS / 2);
        assert_eq!(worker_a.next_deadline(), announce);
        ask(&mut worker_a, &host, 10, &basic("app", "s"));
        assert_eq!(
            worker_a.next_deadline(),
            Some(T0 + 500 + LEASE_MARGIN_MS + 500 + 1),
            "a leader: only its backstop"
        );
        ask(&mut worker_b, &host, 20, &basic("app", "s"));
        assert_eq!(
            worker_b.next_deadline(),
            Some(0),
            "a follower polls every tick"
        );
        answer(&mut worker_a, &host, host.last_call().0, 200, &token_ok(60));
        assert_eq!(worker_a.next_deadline(), announce);
        tick(&mut worker_b, &host);
        assert_eq!(worker_b.next_deadline(), announce);
        // a configuration that needs discovery has a retry due at once
        let cfg = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8}"#,
        )
        .expect("valid");
        let mut g = start(cfg, &host);
        assert_eq!(g.next_deadline(), Some(0));
        tick(&mut g, &host);
        assert_eq!(g.next_deadline(), announce, "the call is out");
        answer(&mut g, &host, host.last_call().0, 500, "");
        assert_eq!(g.next_deadline(), Some(host.now() + 500), "the backoff");
    }
}

cas_test! {
    /// Decide, then act: the failure throttle's turn is taken only once the lease is won, and
    /// after the budget's call. A lost race for the lease decides again without having spent
    /// the turn, so an allowed probe stays allowed; and when the budget then refuses, the turn
    /// is still there.
    fn a_lost_lease_race_keeps_an_allowed_probe_and_a_budget_refusal_spends_no_turn(cas) {
        let host = FakeHost::at(cas, T0);
        // 20 calls a minute (16 for unknown credentials), paced: one unknown call a second.
        let extra = r#","cache_ttl_s":1,"max_client_failures":5,"client_failure_window_s":60,"idp_calls_per_minute":20"#;
        let mut g = gate(&host, extra);
        for i in 0..5 {
            host.advance(1_000);
            assert_eq!(ask(&mut g, &host, 10 + i, &basic("live", &format!("bad{i}"))), Step::Wait);
            answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        }
        // Throttled: one unverified secret per turn (every 12 s), the others wait for theirs.
        host.advance(1_000);
        assert_eq!(ask(&mut g, &host, 19, &basic("live", "bad5")), Step::Wait, "a turn");
        answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        host.advance(1_000);
        assert_eq!(status(&ask(&mut g, &host, 20, &basic("live", "bad6"))), 503);
        host.advance(12_000);
        // The turn is due. Another worker writes the cache set between this request's read and
        // its lease: the race is lost once, the decision made again, and the probe goes out.
        host.lose_next_write_to("okta-dcr-auth/set/");
        assert_eq!(ask(&mut g, &host, 21, &basic("live", "good")), Step::Wait);
        answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        // The next turn is due. Right after this request's lease is written, another worker of
        // the same route takes this second's last budget call: the budget refuses this one.
        host.advance(12_000);
        let other = gate(&host, extra);
        host.after_next_write_to("okta-dcr-auth/set/", move |h| {
            while other
                .admission
                .take_budget(IdpEndpoint::Token, crate::budget::CallClass::Unknown, h.now(), h)
                .is_ok()
            {}
        });
        let calls = host.call_count();
        assert!(matches!(
            ask(&mut g, &host, 22, &basic("live", "guess")),
            Step::Unavailable { .. }
        ));
        assert_eq!(host.call_count(), calls, "no call: the budget refused");
        // The turn was not spent: a second later (budget back), the same turn lets one through.
        host.advance(1_000);
        assert_eq!(ask(&mut g, &host, 23, &basic("live", "guess2")), Step::Wait);
        assert_eq!(host.call_count(), calls + 1);
    }
}

#[test]
fn the_fake_host_models_both_hosts_cas() {
    let ngx = FakeHost::at(CasModel::CreateOnly, T0);
    assert_eq!(ngx.shared_set("k", b"a", 7), Err(SharedError::CasMismatch));
    assert_eq!(ngx.shared_set("k", b"a", 0), Ok(()));
    assert_eq!(ngx.shared_set("k", b"b", 0), Err(SharedError::CasMismatch));
    let (_, cas) = ngx.shared_get("k").expect("created");
    assert_eq!(ngx.shared_set("k", b"b", cas), Ok(()));
    let envoy = FakeHost::at(CasModel::Envoy, T0);
    assert_eq!(
        envoy.shared_set("k", b"a", 7),
        Ok(()),
        "ignored for a new key"
    );
    assert_eq!(
        envoy.shared_set("k", b"b", 0),
        Ok(()),
        "0 writes whatever is there"
    );
    assert_eq!(
        envoy.shared_set("k", b"c", 1),
        Err(SharedError::CasMismatch)
    );
    // A staged race: the next write loses, the one after wins.
    envoy.lose_next_write_to("k");
    let (_, cas) = envoy.shared_get("k").expect("there");
    assert_eq!(
        envoy.shared_set("k", b"d", cas),
        Err(SharedError::CasMismatch)
    );
    let (value, cas) = envoy.shared_get("k").expect("there");
    assert_eq!(value, b"b", "the loser wrote nothing");
    assert_eq!(envoy.shared_set("k", b"d", cas), Ok(()));
}

#[path = "tests_jwt.rs"]
mod jwt_paths;

cas_test! {
    fn a_local_copy_never_outlives_the_shared_verdict_nor_matches_a_changed_byte(cas) {
        let host = FakeHost::at(cas, T0);
        // every changed byte below is a call left out: room for all of them, in the same instant
        let mut g = gate(
            &host,
            r#","cache_ttl_s":60,"max_idp_calls_in_flight":200,"idp_calls_per_minute":100000"#,
        );
        let token = "eyJraWQiOiJrMSJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJlLWJ5dGVz";
        let bearer = format!("Bearer {token}");
        ask(&mut g, &host, 10, bearer.as_bytes());
        let exp = T0 / 1000 + 30;
        let active = format!(
            r#"{{"active":true,"scope":"api:read","client_id":"app","exp":{exp},"iss":"https://o.okta.com/oauth2/default"}}"#
        );
        answer(&mut g, &host, host.last_call().0, 200, &active);
        let reads = host.shared_reads.get();
        assert_eq!(status(&ask(&mut g, &host, 11, bearer.as_bytes())), 200);
        assert_eq!(host.shared_reads.get(), reads, "served from the local copy");
        // any changed byte is another credential: never the copy's verdict
        for i in "Bearer ".len()..bearer.len() {
            let mut changed = bearer.clone().into_bytes();
            changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
            let calls = host.call_count();
            let step = ask(&mut g, &host, 100 + i as u32, &changed);
            assert_eq!(step, Step::Wait, "byte {i}");
            assert_eq!(host.call_count(), calls + 1, "byte {i}: asks the IdP");
        }
        let basic_right = basic("app", "s3cret");
        ask(&mut g, &host, 20, &basic_right);
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        assert_eq!(status(&ask(&mut g, &host, 21, &basic_right)), 200);
        assert_eq!(ask(&mut g, &host, 22, &basic("app", "s3creT")), Step::Wait);
        // the token's own expiry bounds the shared verdict, and so the local copy
        host.advance(29_999);
        assert_eq!(status(&ask(&mut g, &host, 12, bearer.as_bytes())), 200);
        host.advance(1);
        assert_eq!(ask(&mut g, &host, 13, bearer.as_bytes()), Step::Wait);
    }
}

cas_test! {
    fn a_rate_limited_token_endpoint_leaves_introspection_working(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        ask(&mut g, &host, 10, &basic("app", "s"));
        answer(&mut g, &host, host.last_call().0, 429, "{}");
        assert_eq!(status(&ask(&mut g, &host, 11, &basic("other", "s"))), 503);
        // the introspection endpoint is not paused
        assert_eq!(
            ask(&mut g, &host, 12, b"Bearer some.opaque.token"),
            Step::Wait
        );
        assert!(host.last_call().1.path.ends_with("/v1/introspect"));
        assert_eq!(host.call_count(), 2);
    }
}

cas_test! {
    fn calls_in_flight_are_capped(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(
            &host,
            r#","max_idp_calls_in_flight":4,"cache_ttl_s":1,"stale_if_error_s":60"#,
        );
        for (ctx, app) in [(1, "known1"), (2, "known2")] {
            ask(&mut g, &host, ctx, &basic(app, "s"));
            answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        }
        host.advance(1_000);
        // 3 of the 4 places for unknown credentials, then none for them
        for i in 0..3 {
            assert_eq!(
                ask(&mut g, &host, 10 + i, &basic(&format!("app{i}"), "s")),
                Step::Wait
            );
        }
        let unknown_call = host.last_call().0;
        assert_eq!(status(&ask(&mut g, &host, 20, &basic("app9", "s"))), 503);
        // the last place is a known app's refresh; beyond the cap, a stale verdict is served
        assert_eq!(ask(&mut g, &host, 21, &basic("known1", "s")), Step::Wait);
        assert_eq!(
            forwarded(&ask(&mut g, &host, 22, &basic("known2", "s"))).identity,
            "known2"
        );
        assert_eq!(host.call_count(), 2 + 3 + 1);
        // answers free places (an unknown credential needs fewer than 3 out, whoever's)
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        answer(&mut g, &host, unknown_call, 401, INVALID_CLIENT);
        assert_eq!(ask(&mut g, &host, 23, &basic("app9", "s")), Step::Wait);
    }
}

cas_test! {
    /// The bound is the gateway's (all workers together), so that a fleet can
    /// be sized against Okta's concurrent-request limit.
    fn calls_in_flight_are_capped_per_gateway_across_workers(cas) {
        let host = FakeHost::at(cas, T0);
        let extra = r#","max_idp_calls_in_flight":5,"cache_ttl_s":1"#;
        let mut a = gate(&host, extra);
        let mut b = gate(&host, extra);
        ask(&mut a, &host, 1, &basic("known", "s"));
        answer(&mut a, &host, host.last_call().0, 200, &token_ok(3600));
        host.advance(2_000);
        // Unknown credentials on both workers: 4 of the 5 places, then none for either.
        for i in 0..10 {
            let w = if i % 2 == 0 { &mut a } else { &mut b };
            ask(w, &host, 10 + i, &basic(&format!("app{i}"), "s"));
        }
        assert_eq!(
            host.call_count(),
            1 + 4,
            "four fifths of the gateway's bound"
        );
        // The known app's refresh takes the fifth, on either worker.
        assert_eq!(ask(&mut b, &host, 30, &basic("known", "s")), Step::Wait);
        assert_eq!(host.call_count(), 6);
        assert_eq!(status(&ask(&mut a, &host, 31, &basic("other", "s"))), 503);
        // Answers on one worker free places for the other (call 6 is the refresh, 3 app1's; an
        // unknown credential needs fewer than four fifths of the bound out, whoever's they are).
        answer(&mut b, &host, 6, 200, &token_ok(3600));
        assert_eq!(status(&ask(&mut a, &host, 33, &basic("other", "s"))), 503);
        answer(&mut b, &host, 3, 401, INVALID_CLIENT);
        assert_eq!(ask(&mut a, &host, 32, &basic("other", "s")), Step::Wait);
        assert_eq!(host.call_count(), 7);
    }
}

cas_test! {
    /// Each route configuration has its own budget. A flood on a route with a
    /// large budget spends nothing of another route's smaller one, nor its refresh reserve.
    fn a_flood_on_one_route_never_spends_another_routes_budget(cas) {
        let host = FakeHost::at(cas, T0);
        let mut route_a = gate(
            &host,
            r#","idp_calls_per_minute":3000,"max_idp_calls_in_flight":10000"#,
        );
        let mut route_b = gate(
            &host,
            r#","idp_calls_per_minute":300,"max_idp_calls_in_flight":10000"#,
        );
        ask(&mut route_b, &host, 1, &basic("known", "s"));
        answer(&mut route_b, &host, host.last_call().0, 200, &token_ok(1));
        // A flood of unknown credentials on route A for 5 s, answered at once.
        let mut flood_calls = 0;
        for i in 0..5_000u32 {
            host.advance(1);
            if ask(
                &mut route_a,
                &host,
                100 + i,
                &basic(&format!("bogus{i}"), "s"),
            ) == Step::Wait
            {
                answer(&mut route_a, &host, host.last_call().0, 401, INVALID_CLIENT);
                flood_calls += 1;
            }
        }
        assert!(
            flood_calls > 300,
            "the flood spent {flood_calls} of route A's budget"
        );
        // Route B: a new app and the known app's refresh both get their call.
        assert_eq!(ask(&mut route_b, &host, 2, &basic("new", "s")), Step::Wait);
        answer(
            &mut route_b,
            &host,
            host.last_call().0,
            200,
            &token_ok(3600),
        );
        assert_eq!(
            ask(&mut route_b, &host, 3, &basic("known", "s")),
            Step::Wait
        );
        // And route A is still held to its own budget.
        host.advance(1);
        let before = host.call_count();
        for i in 0..100u32 {
            ask(
                &mut route_a,
                &host,
                9_000 + i,
                &basic(&format!("late{i}"), "s"),
            );
        }
        assert!(host.call_count() - before <= 300, "route A past its budget");
    }
}

cas_test! {
    fn hung_up_unknown_calls_never_take_a_known_apps_refresh_slot(cas) {
        let host = FakeHost::at(cas, T0);
        // a cap of 5: 4 for unknown credentials, the fifth only for refreshes
        let mut g = gate(
            &host,
            r#","max_idp_calls_in_flight":5,"cache_ttl_s":1,"max_client_failures":0"#,
        );
        ask(&mut g, &host, 1, &basic("known", "s"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        host.advance(1_000);
        // an attacker's guesses, each client hanging up at once: their calls still count
        for i in 0..4 {
            assert_eq!(
                ask(&mut g, &host, 10 + i, &basic(&format!("guess{i}"), "s")),
                Step::Wait
            );
            g.on_request_gone(ContextId(10 + i), host.now(), &host);
        }
        let calls = host.call_count();
        assert_eq!(status(&ask(&mut g, &host, 20, &basic("guess9", "s"))), 503);
        assert_eq!(
            host.call_count(),
            calls,
            "no call for another unknown credential"
        );
        // the known app's refresh still goes out
        assert_eq!(ask(&mut g, &host, 21, &basic("known", "s")), Step::Wait);
        assert_eq!(host.call_count(), calls + 1);
    }
}

cas_test! {
    fn a_flood_of_unknown_credentials_cannot_spend_the_refresh_reserve(cas) {
        let host = FakeHost::at(cas, T0);
        // 10 calls a minute, 2 of them reserved for refreshes of known-good credentials
        let mut g = gate(&host, r#","idp_calls_per_minute":10,"cache_ttl_s":1"#);
        ask(&mut g, &host, 1, &basic("good", "s"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        let mut refused = 0;
        // two a second for 50 s (calls are paced: at most one unknown call a second here)
        for i in 0..100 {
            host.advance(500);
            match ask(&mut g, &host, 100 + i, &basic(&format!("bogus{i}"), "s")) {
                Step::Wait => answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT),
                Step::Unavailable { retry_after_s } => {
                    assert!((1..=61).contains(&retry_after_s));
                    refused += 1;
                    Vec::new()
                }
                other => panic!("unexpected {other:?}"),
            };
        }
        assert_eq!(
            host.call_count(),
            8,
            "1 + 7 unknown: the reserve is untouched"
        );
        assert_eq!(refused, 93);
        // the known-good client's verdict expired: its refresh still gets a call
        host.advance(1_000);
        assert_eq!(ask(&mut g, &host, 2, &basic("good", "s")), Step::Wait);
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        assert_eq!(host.call_count(), 9);
        // a minute later the budget is back
        host.advance(61_000);
        assert_eq!(ask(&mut g, &host, 3, &basic("new", "s")), Step::Wait);
    }
}

cas_test! {
    fn bad_secrets_never_lock_out_a_live_client(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","cache_ttl_s":1,"max_client_failures":5"#);
        ask(&mut g, &host, 1, &basic("live", "good-secret"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        for i in 0..5 {
            ask(&mut g, &host, 10 + i, &basic("live", &format!("guess{i}")));
            answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        }
        // the throttle lets one unverified secret through per 12 s; the others wait (503)
        assert_eq!(ask(&mut g, &host, 20, &basic("live", "guess6")), Step::Wait);
        answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        let calls = host.call_count();
        let step = ask(&mut g, &host, 21, &basic("live", "guess7"));
        assert_eq!(step, Step::Unavailable { retry_after_s: 12 });
        assert_eq!(host.call_count(), calls, "no IdP call");
        // the good secret still passes: from the cache, and its refresh once the verdict expired
        assert_eq!(
            status(&ask(&mut g, &host, 22, &basic("live", "good-secret"))),
            200
        );
        host.advance(1_000);
        assert_eq!(
            ask(&mut g, &host, 23, &basic("live", "good-secret")),
            Step::Wait
        );
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        // another client id is not throttled
        assert_eq!(ask(&mut g, &host, 24, &basic("other", "x")), Step::Wait);
        // the window passes
        host.advance(60_000);
        assert_eq!(ask(&mut g, &host, 25, &basic("live", "guess8")), Step::Wait);
    }
}

cas_test! {
    fn a_live_client_whose_verdict_is_gone_gets_its_turn_despite_bad_secrets(cas) {
        // a new node (nothing cached) while an attacker keeps the client id throttled
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","max_client_failures":5"#);
        for i in 0..5 {
            ask(&mut g, &host, 10 + i, &basic("live", &format!("guess{i}")));
            answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        }
        // the attacker takes this turn...
        ask(&mut g, &host, 20, &basic("live", "guess5"));
        answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        // ...the live client waits for the next one, and is then verified and served
        let step = ask(&mut g, &host, 30, &basic("live", "good-secret"));
        assert!(matches!(step, Step::Unavailable { .. }), "{step:?}");
        host.advance(12_000);
        assert_eq!(
            ask(&mut g, &host, 31, &basic("live", "good-secret")),
            Step::Wait
        );
        let steps = answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        assert_eq!(forwarded(&steps[0].1).identity, "live");
        assert_eq!(
            status(&ask(&mut g, &host, 32, &basic("live", "good-secret"))),
            200
        );
    }
}

cas_test! {
    fn a_flood_of_bogus_credentials_never_evicts_a_valid_verdict(cas) {
        let host = FakeHost::at(cas, T0);
        let extra = r#","cache_slots":256,"cache_ttl_s":5,"stale_if_error_s":3600,"idp_calls_per_minute":100000,"max_client_failures":0"#;
        let mut g = gate(&host, extra);
        for i in 0..16 {
            ask(&mut g, &host, 1 + i, &basic(&format!("valid{i}"), "s"));
            answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        }
        // 10 x cache_slots distinct bogus credentials, from another worker (no local copies)
        let mut attacker = gate(&host, extra);
        for i in 0..2560 {
            ask(
                &mut attacker,
                &host,
                10_000 + i,
                &basic(&format!("bogus{i}"), "s"),
            );
            answer(
                &mut attacker,
                &host,
                host.last_call().0,
                401,
                INVALID_CLIENT,
            );
        }
        // the verdicts expire, then the IdP fails: every valid client is served stale
        host.advance(10_000);
        let mut fresh_worker = gate(&host, extra);
        for i in 0..16 {
            let client = basic(&format!("valid{i}"), "s");
            // asked, and the IdP fails; or (once failures pause calls) not asked at all
            let step = match ask(&mut fresh_worker, &host, 5000 + i, &client) {
                Step::Wait => {
                    answer(&mut fresh_worker, &host, host.last_call().0, 503, "")
                        .remove(0)
                        .1
                }
                answered => answered,
            };
            assert_eq!(forwarded(&step).identity, format!("valid{i}"), "client {i}");
        }
        assert_eq!(host.counter("okta_dcr_auth_cache_stale_serves"), 16);
    }
}

cas_test! {
    fn the_proxys_own_answers_never_pause_calls(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        for i in 0..10 {
            assert_eq!(ask(&mut g, &host, 10 + i, &basic("app", "s")), Step::Wait);
            let headers = vec![
                (":status".to_string(), "503".to_string()),
                ("x-envoy-overloaded".to_string(), "true".to_string()),
            ];
            let answer = IdpAnswer {
                status: Some(503),
                headers: &headers,
                body:
                    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
            };
            let steps = deliver(&mut g, &host, ROOT, host.last_call().0, answer);
            assert_eq!(status(&steps[0].1), 503);
        }
        assert_eq!(host.call_count(), 10, "every request still asked: no pause");
    }
}

/// Ten calls out at once, Envoy holding most of them in its queue; the first one is answered
/// after 2.5 s with `first`, then the nine others time out in Envoy; then a new credential asks.
fn queued_calls_time_out_after(cas: CasModel, first: (u16, &str)) -> (FakeHost, Gate, Step) {
    let host = FakeHost::at(cas, T0);
    let mut g = gate(&host, r#","max_client_failures":0"#);
    let mut tokens = Vec::new();
    for i in 0..10 {
        assert_eq!(
            ask(&mut g, &host, 10 + i, &basic(&format!("app{i}"), "s")),
            Step::Wait
        );
        tokens.push(host.last_call().0);
    }
    host.advance(2_500);
    answer(&mut g, &host, tokens[0], first.0, first.1);
    host.advance(3_500);
    for token in &tokens[1..] {
        let steps = answer(&mut g, &host, *token, 504, "upstream request timeout");
        assert_eq!(status(&steps[0].1), 503);
    }
    let step = ask(&mut g, &host, 50, &basic("new", "s"));
    (host, g, step)
}

cas_test! {
    fn silences_of_calls_queued_behind_a_grant_never_pause_calls(cas) {
        let (host, mut g, step) = queued_calls_time_out_after(cas, (200, &token_ok(60)));
        assert_eq!(step, Step::Wait, "no pause");
        // calls sent after Okta's last grant that go unanswered are an outage: they pause
        for token in 0..FAILURES_BEFORE_PAUSE {
            if token > 0 {
                ask(
                    &mut g,
                    &host,
                    60 + token,
                    &basic(&format!("late{token}"), "s"),
                );
            }
            host.advance(3_000);
            answer(
                &mut g,
                &host,
                host.last_call().0,
                504,
                "upstream request timeout",
            );
        }
        let calls = host.call_count();
        assert_eq!(status(&ask(&mut g, &host, 70, &basic("next", "s"))), 503);
        assert_eq!(host.call_count(), calls, "paused");
    }
}

cas_test! {
    fn an_anonymous_clients_refusals_never_explain_a_silence(cas) {
        // the answer after the calls were sent is a 401 anyone can have made at will
        let (host, _g, step) = queued_calls_time_out_after(cas, (401, INVALID_CLIENT));
        assert_eq!(status(&step), 503, "paused: {step:?}");
        assert_eq!(host.call_count(), 10);
    }
}

cas_test! {
    fn silences_of_calls_queued_behind_the_proxys_overflow_never_pause_calls(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","max_client_failures":0"#);
        let mut tokens = Vec::new();
        for i in 0..10 {
            ask(&mut g, &host, 10 + i, &basic(&format!("app{i}"), "s"));
            tokens.push(host.last_call().0);
        }
        // the last calls found Envoy's queue for the IdP full
        let headers = vec![
            (":status".to_string(), "503".to_string()),
            ("x-envoy-overloaded".to_string(), "true".to_string()),
        ];
        for token in &tokens[5..] {
            let answer = IdpAnswer {
                status: Some(503),
                headers: &headers,
                body:
                    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
            };
            deliver(&mut g, &host, ROOT, *token, answer);
        }
        // the queued ones time out in Envoy
        host.advance(3_000);
        for token in &tokens[1..5] {
            answer(&mut g, &host, *token, 504, "upstream request timeout");
        }
        assert_eq!(
            ask(&mut g, &host, 50, &basic("new", "s")),
            Step::Wait,
            "no pause"
        );
    }
}

cas_test! {
    fn an_anonymous_clients_refusals_between_silences_never_end_the_run(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","max_client_failures":0"#);
        // a half-hanging Okta: each silence is followed by an attacker's fast 401
        for i in 0..FAILURES_BEFORE_PAUSE {
            ask(&mut g, &host, 10 + i, &basic(&format!("legit{i}"), "s"));
            host.advance(3_000);
            answer(
                &mut g,
                &host,
                host.last_call().0,
                504,
                "upstream request timeout",
            );
            ask(&mut g, &host, 30 + i, &basic(&format!("bogus{i}"), "s"));
            answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        }
        let calls = host.call_count();
        assert_eq!(
            status(&ask(&mut g, &host, 50, &basic("next", "s"))),
            503,
            "paused"
        );
        assert_eq!(host.call_count(), calls);
        // long after the last failure, a refusal does end the run
        host.advance(guard::OUTAGE_MEMORY_MS + guard::FAILURE_MAX_PAUSE_MS);
        ask(&mut g, &host, 60, &basic("late", "s"));
        answer(&mut g, &host, host.last_call().0, 401, INVALID_CLIENT);
        assert_eq!(g.health.failures_in_a_row(), [0; IdpEndpoint::COUNT]);
    }
}

cas_test! {
    fn silences_of_calls_queued_behind_a_refused_dispatch_never_pause_calls(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, r#","max_client_failures":0"#);
        for i in 0..4 {
            ask(&mut g, &host, 10 + i, &basic(&format!("app{i}"), "s"));
        }
        // Envoy's circuit breaker is full: the next call is not even sent
        host.refuse_dispatch.set(true);
        assert_eq!(status(&ask(&mut g, &host, 20, &basic("late", "s"))), 503);
        host.refuse_dispatch.set(false);
        host.advance(3_000);
        for token in 1..=4 {
            answer(&mut g, &host, token, 504, "upstream request timeout");
        }
        assert_eq!(
            ask(&mut g, &host, 50, &basic("new", "s")),
            Step::Wait,
            "no pause"
        );
    }
}

cas_test! {
    fn an_expired_verdict_still_marks_a_known_client_through_a_flood(cas) {
        let host = FakeHost::at(cas, T0);
        // one set of 4 ways, no stale window, 10 calls a minute (2 reserved for refreshes)
        let extra =
            r#","cache_slots":4,"cache_ttl_s":1,"idp_calls_per_minute":10,"max_client_failures":0"#;
        let mut g = gate(&host, extra);
        ask(&mut g, &host, 1, &basic("good", "s"));
        answer(&mut g, &host, host.last_call().0, 200, &token_ok(3600));
        host.advance(2_000);
        // a flood of unknown credentials from another worker spends the unknown share (two a
        // second for 25 s: calls are paced)
        let mut attacker = gate(&host, extra);
        for i in 0..50 {
            host.advance(500);
            if ask(
                &mut attacker,
                &host,
                100 + i,
                &basic(&format!("bogus{i}"), "s"),
            ) == Step::Wait
            {
                answer(
                    &mut attacker,
                    &host,
                    host.last_call().0,
                    401,
                    INVALID_CLIENT,
                );
            }
        }
        assert_eq!(
            host.call_count(),
            8,
            "the unknown share: 8 of 10, the first good call's included"
        );
        // past the budget, bogus credentials do not even touch the cache
        let set = host.snapshot();
        for i in 50..60 {
            let step = ask(
                &mut attacker,
                &host,
                100 + i,
                &basic(&format!("bogus{i}"), "s"),
            );
            assert!(matches!(step, Step::Unavailable { .. }), "{step:?}");
        }
        assert_eq!(host.snapshot(), set, "no lease written past the budget");
        // the known client's expired verdict is still there: its refresh uses the reserve
        let mut fresh_worker = gate(&host, extra);
        assert_eq!(
            ask(&mut fresh_worker, &host, 2, &basic("good", "s")),
            Step::Wait
        );
        let steps = answer(
            &mut fresh_worker,
            &host,
            host.last_call().0,
            200,
            &token_ok(3600),
        );
        assert_eq!(forwarded(&steps[0].1).identity, "good");
    }
}

cas_test! {
    fn calls_of_requests_that_went_away_still_count_as_in_flight(cas) {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(
            &host,
            r#","max_idp_calls_in_flight":3,"idp_timeout_ms":500"#,
        );
        // 2 of the 3 places for unknown credentials (one is kept for refreshes)
        for ctx in [10, 11] {
            assert_eq!(
                ask(&mut g, &host, ctx, &basic(&format!("app{ctx}"), "s")),
                Step::Wait
            );
            // the client hangs up: Envoy drops the answer, but the call is still out
            g.on_request_gone(ContextId(ctx), host.now(), &host);
        }
        assert_eq!(status(&ask(&mut g, &host, 12, &basic("app12", "s"))), 503);
        assert_eq!(host.call_count(), 2);
        // once those calls have timed out, the place is free again
        host.advance(500 + LEASE_MARGIN_MS + 1);
        assert_eq!(ask(&mut g, &host, 13, &basic("app13", "s")), Step::Wait);
    }
}

cas_test! {
    fn discovery_calls_of_requests_that_went_away_stop_counting_after_their_timeout(cas) {
        // ngx_wasm_module: a request refused while it waited for its own discovery call (the
        // filter's 503 cancels that call) must not hold a place among the calls in flight for good.
        let host = FakeHost::at(cas, T0);
        let json = br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"],"cache_slots":8,"max_idp_calls_in_flight":2,"idp_timeout_ms":500}"#;
        let mut g = solo_gate(&host, json);
        for ctx in [10, 11] {
            assert_eq!(
                ask(&mut g, &host, ctx, &basic(&format!("app{ctx}"), "s")),
                Step::Wait
            );
            g.on_request_gone(ContextId(ctx), host.now(), &host);
        }
        host.advance(500 + LEASE_MARGIN_MS + 1);
        assert_eq!(ask(&mut g, &host, 12, &basic("app12", "s")), Step::Wait);
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token"}"#;
        let headers = vec![(":status".to_string(), "200".to_string())];
        let steps = deliver(
            &mut g,
            &host,
            12,
            host.last_call().0,
            IdpAnswer {
                status: Some(200),
                headers: &headers,
                body: doc.as_bytes(),
            },
        );
        assert!(
            steps.is_empty(),
            "request 12 waits for its token call: {steps:?}"
        );
        assert_eq!(host.last_call().1.path, "/oauth2/default/v1/token");
    }
}
