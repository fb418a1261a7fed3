//! Registrations through the gate, on the fake host: every row of the decision table (inline
//! document), and the fetch of `registrations_uri` (single flight, `ETag` and 304, the last
//! good copy, 503 before the first, the maximum age, other workers adopting it). Each test runs
//! under both hosts' shared-data models.

use base64::Engine as _;

use super::super::fake::{CasModel, FakeHost};
use super::super::*;
use super::{BODY_SIZE, LOOK_MS};
use crate::metrics::{Gauge, RegistrationsFetch};
use crate::registrations::record::RegistrationsRecord;

const T0: u64 = 1_700_000_000_000;
const ROOT: u32 = 1;
const CASES: [CasModel; 2] = [CasModel::Envoy, CasModel::CreateOnly];
const FORBIDDEN: &str = "the application is not registered, or not approved, for this API";

/// Apps: `0oaApproved` (approved, with context), `0oaPending`, `0oaRevoked`, `0oaRejected`,
/// `0oaOther` (approved for another product only), `0oaAbc` (approved, no context).
const DOCUMENT: &str = r#"{"applications":[
  {"client_id":"0oaApproved","application_id":"app-1","developer_id":"dev-9","name":"A",
   "registrations":[{"product":"payments-v1","status":"approved"},{"product":"orders-v2","status":"pending"}]},
  {"client_id":"0oaPending","application_id":"app-2","registrations":[{"product":"payments-v1","status":"pending"}]},
  {"client_id":"0oaRevoked","registrations":[{"product":"payments-v1","status":"revoked"}]},
  {"client_id":"0oaRejected","registrations":[{"product":"payments-v1","status":"rejected"}]},
  {"client_id":"0oaOther","registrations":[{"product":"orders-v2","status":"approved"}]},
  {"client_id":"0oaAbc","registrations":[{"product":"payments-v1","status":"approved"}]}
]}"#;

const URI: &str = r#","product":"payments-v1","registrations_uri":"https://portal.example.com/registrations","registrations_refresh_s":10,"registrations_max_age_s":60"#;

fn config(extra: &str) -> Config {
    Config::from_json(
        format!(
            r#"{{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta",
                "token_endpoint":"https://o.okta.com/oauth2/default/v1/token",
                "introspection_endpoint":"https://o.okta.com/oauth2/default/v1/introspect",
                "introspection_client_id":"gw","introspection_client_secret":"gw-secret",
                "bearer_validation":"introspection","bearer_format":"opaque",
                "scopes":["api:read"],"cache_slots":64,"cache_ttl_s":300{extra}}}"#
        )
        .as_bytes(),
    )
    .expect("test configuration is valid")
}

fn inline() -> String {
    format!(r#","product":"payments-v1","registrations":{DOCUMENT}"#)
}

fn gate(host: &FakeHost, extra: &str) -> Gate {
    Gate::new(
        config(extra),
        ContextId(ROOT),
        Resume::AnyRequest,
        host.now(),
        host,
    )
}

fn basic(id: &str, secret: &str) -> Vec<u8> {
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
    .into_bytes()
}

fn ask(g: &mut Gate, host: &FakeHost, ctx: u32, authorization: &[u8]) -> Step {
    g.on_request(ContextId(ctx), &[authorization], true, host.now(), host)
}

fn answer_with(
    g: &mut Gate,
    host: &FakeHost,
    token: u32,
    status: Option<u16>,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<(ContextId, Step)> {
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(status) = status {
        all.push((":status".into(), status.to_string()));
    }
    let answer = IdpAnswer {
        status,
        headers: &all,
        body: body.as_bytes(),
    };
    g.on_idp_answer(ContextId(ROOT), CallToken(token), answer, host.now(), host)
}

fn answer(g: &mut Gate, host: &FakeHost, token: u32, body: &str) -> Vec<(ContextId, Step)> {
    answer_with(g, host, token, Some(200), &[], body)
}

fn token_ok() -> String {
    r#"{"token_type":"Bearer","expires_in":3600,"access_token":"okta.jwt.token","scope":"api:read"}"#.into()
}

fn active(app: &str) -> String {
    let exp = T0 / 1000 + 3_600;
    format!(
        r#"{{"active":true,"scope":"api:read","client_id":"{app}","exp":{exp},"iss":"https://o.okta.com/oauth2/default"}}"#
    )
}

fn forbidden(step: &Step) -> bool {
    *step == Step::Deny(Denial::NotRegistered)
}

fn forwarded(step: &Step) -> &crate::upstream::Forward {
    match step {
        Step::Forward(f) => f,
        other => panic!("not forwarded: {other:?}"),
    }
}

/// A Basic request that is approved: its IdP call answered, its step.
fn approved_basic(g: &mut Gate, host: &FakeHost, ctx: u32, auth: &[u8]) -> Step {
    assert_eq!(ask(g, host, ctx, auth), Step::Wait);
    let steps = answer(g, host, host.last_call().0, &token_ok());
    assert_eq!(steps.len(), 1, "{steps:?}");
    steps.into_iter().next().map(|(_, s)| s).unwrap()
}

#[test]
fn the_403_says_what_is_wrong() {
    let terms = config("").reply_terms();
    let reply = Denial::NotRegistered.reply(&terms);
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains(FORBIDDEN), "{}", reply.body);
}

#[test]
fn an_unknown_basic_client_id_is_an_invalid_client_without_an_idp_call() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, &inline());
        let reads = host.shared_reads.get();
        for ctx in 10..20 {
            let step = ask(&mut g, &host, ctx, &basic("0oaUnknown", "whatever-secret"));
            assert_eq!(step, Step::Deny(Denial::InvalidClient));
        }
        assert_eq!(host.call_count(), 0, "no IdP call");
        assert_eq!(host.shared_reads.get(), reads, "not even the cache is read");
        assert_eq!(
            host.counter("okta_dcr_auth_requests_denied_unregistered"),
            10
        );
        assert_eq!(host.counter("okta_dcr_auth_requests_denied_invalid"), 0);
        // ids are exact: no case folding, no trimming
        for id in ["0oaapproved", "0OAAPPROVED", " 0oaApproved", "0oaApproved "] {
            let step = ask(&mut g, &host, 30, &basic(id, "s"));
            assert_eq!(step, Step::Deny(Denial::InvalidClient), "{id:?}");
        }
        assert_eq!(host.call_count(), 0);
    }
}

#[test]
fn a_known_basic_client_without_an_approved_registration_gets_403_and_its_secret_is_not_checked() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, &inline());
        for id in ["0oaPending", "0oaRevoked", "0oaRejected", "0oaOther"] {
            let step = ask(&mut g, &host, 10, &basic(id, "any-secret-at-all"));
            assert!(forbidden(&step), "{id}: {step:?}");
        }
        assert_eq!(host.call_count(), 0, "no IdP call");
        assert_eq!(
            host.counter("okta_dcr_auth_requests_denied_not_approved"),
            4
        );
        assert_eq!(host.counter("okta_dcr_auth_requests_allowed"), 0);
    }
}

#[test]
fn an_approved_basic_client_goes_to_the_idp_and_upstream_gets_its_context() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, &inline());
        let auth = basic("0oaApproved", "right-secret");
        let step = approved_basic(&mut g, &host, 10, &auth);
        let f = forwarded(&step);
        assert_eq!(f.identity, "0oaApproved");
        assert_eq!(f.application_id.as_deref(), Some("app-1"));
        assert_eq!(f.developer_id.as_deref(), Some("dev-9"));
        assert_eq!(host.call_count(), 1);
        // from the worker-local copy: the context again, no call
        let again = ask(&mut g, &host, 11, &auth);
        assert_eq!(forwarded(&again).application_id.as_deref(), Some("app-1"));
        assert_eq!(host.call_count(), 1);
        assert_eq!(host.counter("okta_dcr_auth_requests_allowed"), 2);
        // an approved app without context: none goes upstream
        let step = approved_basic(&mut g, &host, 12, &basic("0oaAbc", "s"));
        assert_eq!(forwarded(&step).application_id, None);
    }
}

#[test]
fn a_basic_client_id_is_looked_up_after_its_form_decoding() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, &inline());
        // `0oa%41bc` is the client `0oaAbc` (RFC 6749 2.3.1), as Okta reads it
        let step = approved_basic(&mut g, &host, 10, &basic("0oa%41bc", "s"));
        assert_eq!(forwarded(&step).identity, "0oaAbc");
        let step = ask(&mut g, &host, 11, &basic("0oa%50ending", "s"));
        assert!(forbidden(&step), "0oaPending: {step:?}");
    }
}

#[test]
fn a_verified_bearer_token_of_an_unapproved_or_unknown_app_gets_403() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, &inline());
        for (n, (app, ok)) in [
            ("0oaApproved", true),
            ("0oaPending", false),
            ("0oaRevoked", false),
            ("0oaNobody", false),
        ]
        .into_iter()
        .enumerate()
        {
            let ctx = 10 + n as u32;
            let bearer = format!("Bearer opaque-token-{n}");
            assert_eq!(ask(&mut g, &host, ctx, bearer.as_bytes()), Step::Wait);
            let steps = answer(&mut g, &host, host.last_call().0, &active(app));
            let step = &steps[0].1;
            if ok {
                assert_eq!(forwarded(step).application_id.as_deref(), Some("app-1"));
            } else {
                assert!(forbidden(step), "{app}: {step:?}");
            }
            // the cached verdict is checked again
            let again = ask(&mut g, &host, ctx + 100, bearer.as_bytes());
            assert_eq!(matches!(again, Step::Forward(_)), ok, "{app}");
        }
        assert_eq!(
            host.counter("okta_dcr_auth_requests_denied_unregistered"),
            2
        );
        assert_eq!(
            host.counter("okta_dcr_auth_requests_denied_not_approved"),
            4
        );
        // a token that does not verify: 401 as without registrations
        assert_eq!(ask(&mut g, &host, 50, b"Bearer inactive-token"), Step::Wait);
        let steps = answer(&mut g, &host, host.last_call().0, r#"{"active":false}"#);
        assert_eq!(steps[0].1, Step::Deny(Denial::InvalidToken));
    }
}

#[test]
fn without_product_nobody_is_checked() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, "");
        let step = approved_basic(&mut g, &host, 10, &basic("0oaNobody", "s"));
        assert_eq!(forwarded(&step).application_id, None);
        assert_eq!(g.next_deadline().map(|d| d > T0), Some(true));
    }
}

// ---- the fetched document ----

/// A worker's tick at the host's time.
fn tick(g: &mut Gate, host: &FakeHost) -> Vec<(ContextId, Step)> {
    g.on_tick(host.now(), host)
}

/// The last call, when it is the registrations fetch.
fn fetch_call(host: &FakeHost) -> (u32, crate::okta::IdpRequest) {
    let (token, request) = host.last_call();
    assert_eq!(request.path, "/registrations", "{request:?}");
    (token, request)
}

fn record(host: &FakeHost) -> RegistrationsRecord {
    let names = crate::cache::Names::stable("https://o.okta.com/oauth2/default");
    let key = "okta\nportal.example.com\n/registrations\npayments-v1";
    let (bytes, _) = host
        .shared_get(&names.registrations(key, "record"))
        .expect("the record exists");
    RegistrationsRecord::decode(&bytes).expect("a record")
}

/// A gate on `host` whose first fetch got `DOCUMENT` with `ETag` `"v1"`.
fn fetched_gate(host: &FakeHost) -> Gate {
    let mut g = gate(host, URI);
    tick(&mut g, host);
    let (token, _) = fetch_call(host);
    answer_with(
        &mut g,
        host,
        token,
        Some(200),
        &[("ETag", "\"v1\"")],
        DOCUMENT,
    );
    g
}

#[test]
fn before_the_first_document_credentials_get_503_and_the_root_fetches() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, URI);
        let step = ask(&mut g, &host, 10, &basic("0oaApproved", "s"));
        assert_eq!(step, Step::NoRegistrations { retry_after_s: 2 });
        let step = ask(&mut g, &host, 11, b"Bearer opaque");
        assert_eq!(step, Step::NoRegistrations { retry_after_s: 2 });
        assert_eq!(
            ask(&mut g, &host, 12, b""),
            Step::Deny(Denial::NoCredentials)
        );
        assert_eq!(host.call_count(), 0, "requests send nothing");
        assert_eq!(
            host.counter("okta_dcr_auth_requests_denied_registrations_unavailable"),
            2
        );
        assert!(g.next_deadline().is_some_and(|d| d <= T0));
        tick(&mut g, &host);
        let (token, request) = fetch_call(&host);
        assert_eq!(host.last_caller(), ContextId(ROOT), "the root's call");
        assert_eq!(request.header(":authority"), Some("portal.example.com"));
        assert_eq!(request.header("if-none-match"), None);
        assert!(record(&host).in_flight(host.now()), "the lease is taken");
        host.advance(LOOK_MS);
        tick(&mut g, &host);
        assert_eq!(host.call_count(), 1, "single flight");
        host.advance(5);
        answer_with(
            &mut g,
            &host,
            token,
            Some(200),
            &[("etag", "\"v1\"")],
            DOCUMENT,
        );
        assert_eq!(host.counter("okta_dcr_auth_registrations_fetched"), 1);
        assert_eq!(
            host.gauge_value(Gauge::RegistrationsBytes),
            Some(DOCUMENT.len() as u64)
        );
        assert_eq!(host.gauge_value(Gauge::RegistrationsApplications), Some(6));
        let r = record(&host);
        assert_eq!(
            (r.etag.as_str(), r.in_flight(host.now())),
            ("\"v1\"", false)
        );
        let step = approved_basic(&mut g, &host, 13, &basic("0oaApproved", "s"));
        assert_eq!(forwarded(&step).application_id.as_deref(), Some("app-1"));
        assert!(forbidden(&ask(
            &mut g,
            &host,
            14,
            &basic("0oaPending", "s")
        )));
    }
}

#[test]
fn an_unchanged_document_is_revalidated_with_its_etag_and_a_304_copies_nothing() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = fetched_gate(&host);
        let calls = host.call_count();
        host.advance(9_000);
        tick(&mut g, &host);
        assert_eq!(
            host.call_count(),
            calls,
            "not before registrations_refresh_s"
        );
        host.advance(1_000);
        tick(&mut g, &host);
        let (token, request) = fetch_call(&host);
        assert_eq!(request.header("if-none-match"), Some("\"v1\""));
        let before = host.snapshot();
        let generation = record(&host).generation;
        answer_with(&mut g, &host, token, Some(304), &[], "");
        assert_eq!(host.counter("okta_dcr_auth_registrations_not_modified"), 1);
        let after = host.snapshot();
        let changed: Vec<&String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(changed.len(), 1, "only the record: {changed:?}");
        assert!(changed[0].ends_with("/record"));
        let r = record(&host);
        assert_eq!((r.generation, r.validated_at_ms), (generation, host.now()));
    }
}

#[test]
fn a_revocation_stops_an_app_with_a_cached_positive_verdict_at_the_next_fetch() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = fetched_gate(&host);
        let auth = basic("0oaApproved", "right-secret");
        assert!(matches!(
            approved_basic(&mut g, &host, 10, &auth),
            Step::Forward(_)
        ));
        assert!(matches!(ask(&mut g, &host, 11, &auth), Step::Forward(_)));
        let bearer = b"Bearer approved-token";
        assert_eq!(ask(&mut g, &host, 12, bearer), Step::Wait);
        answer(&mut g, &host, host.last_call().0, &active("0oaApproved"));
        host.advance(10_000);
        tick(&mut g, &host);
        let (token, _) = fetch_call(&host);
        let revoked = DOCUMENT.replace(
            r#"{"product":"payments-v1","status":"approved"},{"product":"orders-v2""#,
            r#"{"product":"payments-v1","status":"revoked"},{"product":"orders-v2""#,
        );
        answer_with(
            &mut g,
            &host,
            token,
            Some(200),
            &[("etag", "\"v2\"")],
            &revoked,
        );
        let calls = host.call_count();
        assert!(
            forbidden(&ask(&mut g, &host, 13, &auth)),
            "the local copy is no way around"
        );
        assert!(forbidden(&ask(&mut g, &host, 14, bearer)));
        assert_eq!(host.call_count(), calls);
        assert_eq!(
            host.counter("okta_dcr_auth_requests_denied_not_approved"),
            2
        );
    }
}

#[test]
fn other_workers_adopt_the_shared_document_without_fetching() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut first = gate(&host, URI);
        let mut second = gate(&host, URI);
        tick(&mut first, &host);
        tick(&mut second, &host);
        assert_eq!(host.call_count(), 1, "one fetch for the gateway");
        let (token, _) = fetch_call(&host);
        answer_with(
            &mut first,
            &host,
            token,
            Some(200),
            &[("etag", "\"v1\"")],
            DOCUMENT,
        );
        // a request on the second worker before its tick takes the shared copy
        let step = ask(&mut second, &host, 20, &basic("0oaPending", "s"));
        assert!(forbidden(&step), "{step:?}");
        // a change: the second worker sees it at its next look
        host.advance(10_000);
        tick(&mut second, &host);
        let (token, _) = fetch_call(&host);
        let removed = DOCUMENT.replace("0oaPending", "0oaGone");
        answer_with(&mut second, &host, token, Some(200), &[], &removed);
        host.advance(LOOK_MS);
        tick(&mut first, &host);
        let step = ask(&mut first, &host, 21, &basic("0oaPending", "s"));
        assert_eq!(
            step,
            Step::Deny(Denial::InvalidClient),
            "removed: unknown now"
        );
        assert_eq!(host.call_count(), 2);
        assert_eq!(
            record(&host).etag,
            "",
            "no ETag this time: the next fetch is unconditional"
        );
    }
}

#[test]
fn a_failing_malformed_or_oversized_document_keeps_the_last_good_one() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = fetched_gate(&host);
        let generation = record(&host).generation;
        let failures: [(Option<u16>, &[(&str, &str)], &str); 5] = [
            (None, &[], ""),
            (Some(500), &[], "oops"),
            (Some(200), &[], "{\"applications\": 5}"),
            (Some(200), &[], "<html>"),
            (Some(200), &[(BODY_SIZE, "70000000")], ""),
        ];
        for (n, (status, headers, body)) in failures.into_iter().enumerate() {
            host.advance(10_000);
            tick(&mut g, &host);
            let (token, _) = fetch_call(&host);
            answer_with(&mut g, &host, token, status, headers, body);
            assert_eq!(
                host.counter("okta_dcr_auth_registrations_failed"),
                n as u64 + 1
            );
            let r = record(&host);
            assert_eq!(
                r.generation, generation,
                "{n}: the last good document stays"
            );
            assert!(!r.in_flight(host.now()), "{n}: lease released");
            assert!(forbidden(&ask(
                &mut g,
                &host,
                10,
                &basic("0oaPending", "s")
            )));
        }
        assert_eq!(
            host.counter("okta_dcr_auth_registrations_fetched"),
            1,
            "only the first"
        );
    }
}

#[test]
fn past_its_maximum_age_the_last_document_answers_no_more_until_the_source_answers() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = fetched_gate(&host);
        // the source fails from now on: every fetch times out
        for _ in 0..6 {
            host.advance(10_000);
            tick(&mut g, &host);
            let (token, _) = fetch_call(&host);
            answer_with(&mut g, &host, token, None, &[], "");
        }
        assert!(
            forbidden(&ask(&mut g, &host, 10, &basic("0oaPending", "s"))),
            "60 s: still"
        );
        host.advance(1_000);
        let step = ask(&mut g, &host, 11, &basic("0oaPending", "s"));
        assert_eq!(
            step,
            Step::NoRegistrations { retry_after_s: 10 },
            "past 60 s"
        );
        host.advance(9_000);
        tick(&mut g, &host);
        let (token, _) = fetch_call(&host);
        answer_with(&mut g, &host, token, Some(304), &[], "");
        assert!(
            forbidden(&ask(&mut g, &host, 12, &basic("0oaPending", "s"))),
            "confirmed"
        );
        assert_eq!(host.gauge_value(Gauge::RegistrationsAgeS), Some(0));
    }
}

#[test]
fn a_fetch_that_cannot_be_sent_counts_as_a_failed_attempt() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = gate(&host, URI);
        host.refuse_dispatch.set(true);
        tick(&mut g, &host);
        assert_eq!(
            host.counter(&Counter::Registrations(RegistrationsFetch::Failed).name()),
            1
        );
        assert!(!record(&host).in_flight(host.now()));
        host.refuse_dispatch.set(false);
        host.advance(LOOK_MS);
        tick(&mut g, &host);
        assert_eq!(host.call_count(), 0, "retried after 2 s, not at once");
        host.advance(2_000);
        tick(&mut g, &host);
        assert_eq!(host.call_count(), 1);
    }
}

#[test]
fn a_fetch_whose_answer_never_comes_is_given_up_and_the_worker_fetches_again() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        // Every worker's fetch gets lost in turn (the host never reports its answer).
        let mut workers = [fetched_gate(&host), gate(&host, URI)];
        let calls = host.call_count();
        host.advance(10_000);
        for _ in 0..20 {
            for g in workers.iter_mut() {
                tick(g, &host);
            }
            host.advance(LOOK_MS * 10);
        }
        let lost = host.call_count() - calls;
        assert!(lost >= 2, "{lost} fetches");
        // Then the source answers again: a new fetch goes out, and a revocation is seen.
        host.advance(12_000);
        let before = host.call_count();
        for g in workers.iter_mut() {
            tick(g, &host);
        }
        assert_eq!(host.call_count(), before + 1, "{cas:?}: a new fetch");
        let (token, _) = fetch_call(&host);
        let revoked = DOCUMENT.replace(r#""client_id":"0oaApproved""#, r#""client_id":"0oaGone""#);
        let owner = workers
            .iter_mut()
            .position(|g| g.answer_limit(CallToken(token)).is_some())
            .expect("a worker sent it");
        answer_with(&mut workers[owner], &host, token, Some(200), &[], &revoked);
        for g in workers.iter_mut() {
            host.advance(LOOK_MS);
            tick(g, &host);
            let step = ask(g, &host, 10, &basic("0oaApproved", "s"));
            assert_eq!(step, Step::Deny(Denial::InvalidClient), "{cas:?}");
        }
        assert!(host.counter(&Counter::Registrations(RegistrationsFetch::Failed).name()) >= 1);
    }
}

#[test]
fn a_late_answer_never_replaces_the_document_of_a_later_fetch() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut first = fetched_gate(&host);
        let mut second = gate(&host, URI);
        host.advance(10_000);
        tick(&mut first, &host);
        let (late, _) = fetch_call(&host);
        // its lease runs out: the second worker fetches, and its answer comes first
        host.advance(11_001);
        tick(&mut second, &host);
        let (token, _) = fetch_call(&host);
        let newer = DOCUMENT.replace("0oaPending", "0oaNewer");
        answer_with(&mut second, &host, token, Some(200), &[], &newer);
        let generation = record(&host).generation;
        answer_with(&mut first, &host, late, Some(200), &[], DOCUMENT);
        assert_eq!(
            record(&host).generation,
            generation,
            "the later fetch's stays"
        );
        let step = ask(&mut first, &host, 10, &basic("0oaPending", "s"));
        assert_eq!(
            step,
            Step::Deny(Denial::InvalidClient),
            "the newer document"
        );
    }
}

#[test]
fn a_flood_of_unregistered_basic_ids_costs_no_idp_call_and_no_shared_read() {
    for cas in CASES {
        let host = FakeHost::at(cas, T0);
        let mut g = fetched_gate(&host);
        let calls = host.call_count();
        let reads = host.shared_reads.get();
        for i in 0..2_000u32 {
            let step = ask(&mut g, &host, 100 + i, &basic(&format!("0oaFlood{i}"), "x"));
            assert_eq!(step, Step::Deny(Denial::InvalidClient));
        }
        assert_eq!(host.call_count(), calls);
        assert_eq!(host.shared_reads.get(), reads);
    }
}
