//! Hostile input and IdP faults (issue 6): every bad input and failure we know of, each checked
//! for the status, the challenge, that nothing reached the upstream, what the IdP was asked (or
//! that it was not), and that nothing was cached wrongly (a valid request afterwards still
//! validates, with the IdP calls it should take).
//!
//! Cases already pinned elsewhere are not repeated here: `basic.rs` (the bare `Basic`, `!!!`
//! base64, no colon, empty id or secret, `\u{1}`/`%0A`/`%1B`/`%00`/`%FF` after decoding, reserved
//! characters properly encoded, scheme case, two `Authorization` headers, the spoofed identity
//! headers on an allowed Basic request), `bearer.rs` (Bearer without a token, with spaces, quotes
//! or other non-b64token bytes; `active` missing, a string, `1`, `null`; introspection 500,
//! garbage, 429, timeout and reset; the gateway's own client refused), `idp.rs` (token endpoint
//! 500, 502, garbage, HTML, empty 200, reset, 429, timeout), `cache.rs` (concurrency, stale,
//! quota, rotation, revocation, per-route scope and audience).
//!
//! Every stack runs Envoy with the `wasm` log component at trace and is swept, when dropped, for
//! every secret, token and IdP answer body the test used (bodies carry distinctive markers that
//! are tracked like secrets).
//!
//! The `failure_policy` tests load `tests/panic-filter` (a filter that panics on demand) and need
//! it built first: `cargo build --release --target wasm32-wasip1 -p okta-dcr-auth-panic-filter`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::*;
use serde_json::{json, Value};

// These tests are about the introspection path, as it was before local JWT checks.
use okta_dcr_auth_tests::introspection_filter_config as filter_config;

const APP_ID: &str = "0oa8hostileApp";
const APP_SECRET: &str = "hostile-Secret_5e4d3c2b1a09";

// ---- helpers ----

/// The default test configuration with a smaller cache (1024 slots instead of 16384): the filter
/// creates every slot at start, and at `wasm` trace Envoy logs each of those host calls, so the
/// log (and its sweep) shrinks sixteenfold. A slot collision could only cost an extra IdP call;
/// where a test counts calls to prove a verdict was cached, it sends the same credential again
/// before any other credential could take its slot.
fn config(extra: Value) -> Value {
    let mut c = filter_config(json!({ "cache_slots": 1024 }));
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

/// What the IdP and the upstream saw so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    token: u64,
    introspect: u64,
    upstream: u64,
}

fn seen(stack: &Stack) -> Seen {
    Seen {
        token: stack.token_calls(),
        introspect: stack.idp.calls(Endpoint::Introspect),
        upstream: stack.echo.count(),
    }
}

/// A local reply with exactly these challenges (in order), and nothing new upstream or at the IdP
/// since `before`.
fn assert_refused_alone(
    stack: &Stack,
    before: Seen,
    what: &str,
    r: &Response,
    status: u16,
    challenges: &[&str],
) {
    assert_eq!(r.status, status, "{what}: {r:#?}");
    assert_local_reply(r, status);
    assert_eq!(
        okta_dcr_auth_tests::challenges(r),
        challenges,
        "{what}: {r:#?}"
    );
    assert_eq!(
        seen(stack),
        before,
        "{what}: refused, so neither the upstream nor the IdP may see it"
    );
}

/// 401 with the Basic challenge, nothing upstream, no IdP call.
fn assert_basic_401_alone(stack: &Stack, before: Seen, what: &str, r: &Response) {
    assert_refused_alone(stack, before, what, r, 401, &[BASIC_CHALLENGE]);
}

/// 401 with both challenges (no credentials this filter speaks), nothing upstream, no IdP call.
fn assert_no_credentials_alone(stack: &Stack, before: Seen, what: &str, r: &Response) {
    assert_eq!(r.status, 401, "{what}: {r:#?}");
    assert_local_reply(r, 401);
    let mut challenges = challenges(r);
    challenges.sort_unstable();
    assert_eq!(
        challenges,
        vec![BASIC_CHALLENGE, BEARER_CHALLENGE],
        "{what}: {r:#?}"
    );
    assert_eq!(seen(stack), before, "{what}: nothing upstream, no IdP call");
}

/// A 503 from the filter: no challenge, a JSON message.
fn assert_503(what: &str, r: &Response) {
    assert_eq!(r.status, 503, "{what}: {r:#?}");
    assert_local_503(r);
}

/// The request went upstream as `identity` (the last upstream request).
fn assert_last_upstream_is(stack: &Stack, what: &str, identity: &str) {
    let reqs = stack.upstream();
    let req = reqs
        .last()
        .unwrap_or_else(|| panic!("{what}: nothing reached the upstream"));
    assert_eq!(
        upstream_header(req, "x-credential-identifier"),
        vec![identity],
        "{what}: {req:#?}"
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token for `client`, with the default scope and a claim that marks it as ours.
fn mint(stack: &Stack, client: &str) -> String {
    let mut spec = TokenSpec::for_client(client, &[SCOPE]);
    spec.claims
        .insert("hostile_marker".into(), json!("claim-Marker_0f1e2d3c"));
    let token = stack.idp.mint_token(spec);
    stack.track_secret(&token);
    stack.track_secret("claim-Marker_0f1e2d3c");
    token
}

/// Envoy still runs and logged no wasm failure (panic, trap, failed callback).
fn assert_vm_healthy(stack: &mut Stack) {
    assert!(stack.envoy_running(), "Envoy is not running");
    let failures = vm_failure_lines(&stack.envoy_log());
    assert!(
        failures.is_empty(),
        "the wasm VM failed:\n{}",
        failures.join("\n")
    );
}

/// A custom IdP answer.
fn custom(status: u16, content_type: &str, body: String, headers: &[(&str, &str)]) -> Fault {
    Fault::answer(FaultAnswer::Custom {
        status,
        content_type: content_type.into(),
        body,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    })
}

/// Sends `head` (a request head without `connection: close`) and hangs up after `after`,
/// without reading an answer. Returns what had arrived by then (nothing, normally).
fn hang_up_after(addr: SocketAddr, head: &str, after: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(head.as_bytes())
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    s.set_read_timeout(Some(after)).ok();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    drop(s);
    got
}

fn get_head(path: &str, authorization: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: {authorization}\r\n\r\n")
}

/// Lines of the Envoy log that say a wasm VM failed: a panic, a trap, a failed callback.
fn vm_failure_lines(log: &str) -> Vec<String> {
    const SIGNS: [&str; 6] = [
        "panicked",
        "Uncaught",
        "RuntimeError",
        "Function: proxy_",
        "Wasm VM failed",
        "abort",
    ];
    log.lines()
        .filter(|l| l.contains("][wasm]") && SIGNS.iter().any(|s| l.contains(s)))
        .map(str::to_string)
        .collect()
}

// ---- parsing ----

/// A secret only the malformed cases use, so the sweep can look for it.
const MALFORMED_SECRET: &str = "malformed-Secret_7c6b5a49";

/// Standard base64 of `id:secret` (no form-encoding), with some `+` or `/` in it.
fn b64_with_plus_or_slash(id: &str) -> (String, String) {
    for n in 0..64 {
        let secret = format!("{MALFORMED_SECRET}?>{}", "~".repeat(n % 4));
        let secret = format!("{secret}{}", "?".repeat(n / 4));
        let enc = b64(format!("{id}:{secret}").as_bytes());
        if enc.contains('+') || enc.contains('/') {
            return (secret, enc);
        }
    }
    panic!("no secret found whose base64 has + or /");
}

#[test]
fn malformed_basic_credentials_are_401_without_an_idp_call_and_cache_nothing() {
    let mut stack = Stack::start(config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    stack.track_secret(MALFORMED_SECRET);
    let good = b64(format!("{APP_ID}:{APP_SECRET}").as_bytes());
    let malformed = b64(format!("{APP_ID}:{MALFORMED_SECRET}").as_bytes());
    let (url_secret, with_plus_or_slash) = b64_with_plus_or_slash(APP_ID);
    stack.track_secret(&url_secret);
    let url_safe = with_plus_or_slash.replace('+', "-").replace('/', "_");
    let unpadded = b64(format!("{APP_ID}:{MALFORMED_SECRET}x").as_bytes());
    assert!(unpadded.ends_with('='), "{unpadded}");
    let enc = |pair: &[u8]| format!("Basic {}", b64(pair));
    let pair = |secret: &str| format!("{APP_ID}:{secret}");
    let ten_kib = format!("{MALFORMED_SECRET}{}", "k".repeat(10 * 1024));
    stack.track_secret(&ten_kib);
    // Most secrets below contain one of these: the sweep finds any of them in the log.
    stack.track_secret("Secret_1234");
    stack.track_secret("Escape_123");

    let cases: Vec<(&str, String)> = vec![
        ("only tabs after the scheme", "Basic \t \t".into()),
        (
            "a space inside the base64",
            format!("Basic {} {}", &malformed[..8], &malformed[8..]),
        ),
        (
            "a tab inside the base64",
            format!("Basic {}\t{}", &malformed[..8], &malformed[8..]),
        ),
        ("`*` in the base64", format!("Basic *{}", &malformed[1..])),
        (
            "`.` in the base64",
            format!("Basic {}.", &malformed[..malformed.len() - 1]),
        ),
        ("`~` in the base64", format!("Basic ~{}", &malformed[1..])),
        ("`%` in the base64", format!("Basic %{}", &malformed[1..])),
        (
            "a non-ASCII letter in the base64",
            format!("Basic \u{e9}{}", &malformed[1..]),
        ),
        (
            "padding missing",
            format!("Basic {}", unpadded.trim_end_matches('=')),
        ),
        ("padding doubled", format!("Basic {unpadded}==")),
        (
            "padding in the middle",
            format!("Basic {}={}", &malformed[..8], &malformed[8..]),
        ),
        ("the URL-safe alphabet", format!("Basic {url_safe}")),
        (
            "`%zz` in the secret",
            enc(pair("bad%zzEscape_123").as_bytes()),
        ),
        (
            "`%zz` in the id",
            enc(format!("0oa8%zz:{MALFORMED_SECRET}").as_bytes()),
        ),
        ("a `%` at the end", enc(pair("badEscape_123%").as_bytes())),
        (
            "a truncated escape `%2`",
            enc(pair("badEscape_123%2").as_bytes()),
        ),
        ("`%G1`", enc(pair("badEscape%G1_123").as_bytes())),
        (
            "`%zz` in the raw form",
            format!("Basic {APP_ID}:bad%zzEscape_123"),
        ),
        (
            "a NUL after base64",
            enc(pair("nul\0Secret_1234").as_bytes()),
        ),
        (
            "a NUL in the id after base64",
            enc(format!("0oa8\0x:{MALFORMED_SECRET}").as_bytes()),
        ),
        ("a LF after base64", enc(pair("lf\nSecret_1234").as_bytes())),
        ("a CR after base64", enc(pair("cr\rSecret_1234").as_bytes())),
        (
            "a tab after base64",
            enc(pair("tab\tSecret_1234").as_bytes()),
        ),
        (
            "DEL after base64",
            enc(pair("del\x7fSecret_1234").as_bytes()),
        ),
        (
            "C1 NEL (U+0085) after base64",
            enc(pair("nel\u{85}Secret_1234").as_bytes()),
        ),
        (
            "`%7F` after form-decoding",
            enc(pair("del%7FSecret_1234").as_bytes()),
        ),
        (
            "`%C2%85` after form-decoding",
            enc(pair("nel%C2%85Secret_1234").as_bytes()),
        ),
        (
            "`%0D` after form-decoding",
            enc(pair("cr%0DSecret_1234").as_bytes()),
        ),
        (
            "an overlong `/` (C0 AF)",
            enc(&[pair("").as_bytes(), b"over\xc0\xafSecret_1234"].concat()),
        ),
        (
            "a UTF-16 surrogate (ED A0 80)",
            enc(&[pair("").as_bytes(), b"sur\xed\xa0\x80Secret_1234"].concat()),
        ),
        (
            "a lone continuation byte",
            enc(&[pair("").as_bytes(), b"cont\x80Secret_1234"].concat()),
        ),
        (
            "`%C0%AF` after form-decoding",
            enc(pair("over%C0%AFSecret_1234").as_bytes()),
        ),
        (
            "`%ED%A0%80` after form-decoding",
            enc(pair("sur%ED%A0%80Secret_1234").as_bytes()),
        ),
        ("a 10 KiB Basic credential", enc(pair(&ten_kib).as_bytes())),
        (
            "a 10 KiB raw credential",
            format!("Basic {}", pair(&ten_kib)),
        ),
    ];
    for (what, value) in &cases {
        let before = seen(&stack);
        let r = stack.get("/", &[("authorization", value)]);
        if on_ngx() && value.len() > 8192 {
            // nginx refuses a header line over `large_client_header_buffers` (8 KiB by
            // default) with its own 400 before any filter runs.
            assert_eq!(r.status, 400, "{what}: {r:#?}");
            assert_eq!(seen(&stack), before, "{what}: refused by nginx");
            continue;
        }
        assert_basic_401_alone(&stack, before, what, &r);
    }
    assert_eq!(
        stack.token_calls(),
        0,
        "no malformed credential reached the IdP"
    );

    // The same credential in standard base64 is well-formed: it goes to the IdP (and is wrong).
    let r = stack.get(
        "/",
        &[("authorization", &format!("Basic {with_plus_or_slash}"))],
    );
    assert_eq!(r.status, 401, "standard alphabet: {r:#?}");
    assert_eq!(r.www_authenticate(), vec![BASIC_CHALLENGE]);
    assert_eq!(stack.token_calls(), 1);
    assert_eq!(stack.idp.token_requests()[0].client_secret, url_secret);

    // Nothing was cached wrongly: the valid pair validates with one call, then from the cache.
    for (what, value) in [
        (
            "valid, scheme in capitals and a tab",
            format!("BASIC\t{good}"),
        ),
        (
            "valid, spaces and tabs around",
            format!("bAsIc \t \t{good}"),
        ),
        ("valid, raw form", format!("basic\t{APP_ID}:{APP_SECRET}")),
        ("valid", app.basic()),
    ] {
        let r = stack.get("/", &[("authorization", &value)]);
        assert_eq!(r.status, 200, "{what}: {r:#?}");
        assert_last_upstream_is(&stack, what, APP_ID);
    }
    assert_eq!(
        stack.token_calls(),
        2,
        "one call for the valid pair, whatever the spelling; then the cache"
    );
    // Leading and trailing whitespace of the header value: Envoy trims it before the filter.
    let r = stack.request_raw(
        format!(
            "GET / HTTP/1.1\r\nhost: x\r\nauthorization: \t  Basic {good} \t \r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "whitespace around the value: {r:#?}");
    assert_eq!(stack.token_calls(), 2);
    assert_vm_healthy(&mut stack);
}

#[test]
fn plus_percent_and_colon_are_form_decoded_exactly_once() {
    let mut stack = Stack::start(config(json!({})));
    // A `+`, a `:` and a space in one secret, a `+` and `:` in another, a literal `%2B` in a third.
    let plus = stack.client("0oa8plusColonApp", "plus+Colon:Sp ace_1a2b", &[SCOPE]);
    let raw = stack.client("0oa8rawPlusApp", "raw+Colon:Secret_3c4d", &[SCOPE]);
    let dbl = stack.client("0oa8doubleEncApp", "double%2BEncoded_5e6f", &[SCOPE]);
    for decoded in [
        "plus Colon:Sp ace_1a2b",
        "raw Colon:Secret_3c4d",
        "double+Encoded_5e6f",
    ] {
        stack.track_secret(decoded);
    }
    let unencoded =
        |c: &TestClient| format!("Basic {}", b64(format!("{}:{}", c.id, c.secret).as_bytes()));
    assert!(
        String::from_utf8_lossy(
            &base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                dbl.basic().trim_start_matches("Basic ")
            )
            .unwrap_or_default()
        )
        .contains("double%252BEncoded"),
        "the harness form-encodes before base64"
    );
    // (what, Authorization, client, the secret the IdP must be asked about, status). Each wrong
    // spelling comes before the right one, so a cached refusal of it must not answer the other.
    let cases: Vec<(&str, String, &TestClient, &str, u16)> = vec![
        // RFC 6749 2.3.1: an unencoded `+` is a space.
        (
            "`+` unencoded in base64",
            unencoded(&plus),
            &plus,
            "plus Colon:Sp ace_1a2b",
            401,
        ),
        (
            "`%2B`, `%3A` and `+` in base64",
            plus.basic(),
            &plus,
            "plus+Colon:Sp ace_1a2b",
            200,
        ),
        // The raw form is form-decoded too.
        (
            "`+` unencoded in the raw form",
            format!("Basic {}:{}", raw.id, raw.secret),
            &raw,
            "raw Colon:Secret_3c4d",
            401,
        ),
        (
            "`%2B` and `%3A` in the raw form",
            format!("Basic {}:raw%2BColon%3ASecret_3c4d", raw.id),
            &raw,
            "raw+Colon:Secret_3c4d",
            200,
        ),
        // A secret with a literal `%2B`: unencoded it decodes to `+`; form-encoded (`%252B`) it
        // is decoded once, and the IdP sees `%2B`.
        (
            "a literal `%2B` unencoded",
            unencoded(&dbl),
            &dbl,
            "double+Encoded_5e6f",
            401,
        ),
        ("`%252B`", dbl.basic(), &dbl, "double%2BEncoded_5e6f", 200),
    ];
    for (what, value, client, asked, status) in &cases {
        let before = seen(&stack);
        let r = stack.get("/", &[("authorization", value)]);
        assert_eq!(r.status, *status, "{what}: {r:#?}");
        let calls = stack.idp.token_requests();
        assert_eq!(calls.len() as u64, before.token + 1, "{what}: one IdP call");
        let call = &calls[calls.len() - 1];
        assert_eq!(
            (call.client_id.as_str(), call.client_secret.as_str()),
            (client.id.as_str(), *asked),
            "{what}"
        );
        if *status == 200 {
            assert_eq!(stack.echo.count(), before.upstream + 1, "{what}");
            assert_last_upstream_is(&stack, what, &client.id);
        } else {
            assert_local_reply(&r, 401);
            assert_eq!(r.www_authenticate(), vec![BASIC_CHALLENGE], "{what}");
            assert_eq!(stack.echo.count(), before.upstream, "{what}: went upstream");
        }
        // At once again: the same verdict, from the cache (nothing came in between that could
        // have taken its slot).
        let r = stack.get("/", &[("authorization", value)]);
        assert_eq!(r.status, *status, "{what}, again: {r:#?}");
        assert_eq!(
            stack.token_calls(),
            before.token + 1,
            "{what}, again: from the cache"
        );
    }
    // An unencoded `:` inside the secret is fine (the pair splits at the first colon): the same
    // secret as the encoded spelling, so the same cached verdict.
    let before = seen(&stack);
    let r = stack.get(
        "/",
        &[(
            "authorization",
            &format!("Basic {}:raw%2BColon:Secret_3c4d", raw.id),
        )],
    );
    assert_eq!(r.status, 200, "a bare `:` in the secret: {r:#?}");
    assert_last_upstream_is(&stack, "bare `:`", &raw.id);
    assert!(stack.token_calls() <= before.token + 1);
    assert_vm_healthy(&mut stack);
}

#[test]
fn odd_authorization_headers_are_refused_before_the_idp() {
    let mut stack = Stack::start(config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let token = mint(&stack, APP_ID);
    let listener = stack.listener();
    let good = app.basic();
    let good_b64 = good.trim_start_matches("Basic ").to_string();

    // What Envoy 1.40's HTTP/1 codec does with line-breaking and control bytes in a value.
    let raw = |value: &[u8]| -> Vec<u8> {
        [
            b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: ".as_slice(),
            value,
            b"\r\nconnection: close\r\n\r\n".as_slice(),
        ]
        .concat()
    };
    let split = |mid: &str| format!("Basic {}{mid}{}", &good_b64[..10], &good_b64[10..]);
    // A bare LF, a NUL and other control bytes: Envoy answers 400 before any filter runs.
    for (what, mid) in [
        ("a bare LF", "\n"),
        ("a NUL", "\0"),
        ("a control byte (0x01)", "\u{1}"),
        ("DEL", "\u{7f}"),
    ] {
        let before = seen(&stack);
        let r = client::send_raw(
            listener,
            &raw(split(mid).as_bytes()),
            client::DEFAULT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        if on_ngx() {
            // nginx ends the line at a bare LF (the filter then sees a cut credential: 401) and
            // refuses the other bytes itself (400).
            assert!(matches!(r.status, 400 | 401), "{what}: {r:#?}");
        } else {
            assert_eq!(r.status, 400, "{what}: Envoy's codec refuses it: {r:#?}");
            assert!(
                r.www_authenticate().is_empty(),
                "{what}: the codec's answer, not the filter's: {r:#?}"
            );
        }
        assert_eq!(
            seen(&stack),
            before,
            "{what}: nothing upstream, no IdP call"
        );
    }
    // obs-fold (CRLF, then a space): Envoy unfolds it into a space, which the filter refuses
    // inside a credential.
    let before = seen(&stack);
    let r = stack.request_raw(&raw(split("\r\n ").as_bytes()));
    if on_ngx() {
        // nginx does not unfold: the continuation is a header line of its own, and the
        // credential the filter sees is cut (401), or nginx refuses the line (400).
        assert!(matches!(r.status, 400 | 401), "obs-fold: {r:#?}");
        assert_eq!(
            seen(&stack),
            before,
            "obs-fold: nothing upstream, no IdP call"
        );
    } else {
        assert_basic_401_alone(&stack, before, "obs-fold inside the base64", &r);
    }
    // A bare CR: Envoy drops it, so the filter sees (and validates) the credential without it,
    // and the upstream gets the filter's headers: what was checked is what goes on. nginx
    // refuses the request (400).
    let r = stack.request_raw(&raw(split("\r").as_bytes()));
    if on_ngx() {
        assert_eq!(r.status, 400, "a bare CR is refused by nginx: {r:#?}");
        assert_eq!(
            seen(&stack),
            before,
            "bare CR: nothing upstream, no IdP call"
        );
    } else {
        assert_eq!(r.status, 200, "a bare CR is removed by Envoy: {r:#?}");
        assert_last_upstream_is(&stack, "bare CR", APP_ID);
        assert_eq!(
            seen(&stack),
            Seen {
                token: 1,
                introspect: 0,
                upstream: 1
            }
        );
    }
    stack.echo.clear();
    stack.idp.reset_counters();

    // obs-text (bytes 0x80-0xFF) passes Envoy's codec and reaches the filter as bytes.
    for (what, value) in [
        (
            "invalid UTF-8 in the raw form",
            [b"Basic ".as_slice(), APP_ID.as_bytes(), b":s\xffcret_0001"].concat(),
        ),
        (
            "invalid UTF-8 in base64",
            [b"Basic \xfe".as_slice(), &good_b64.as_bytes()[1..]].concat(),
        ),
    ] {
        let before = seen(&stack);
        let r = stack.request_raw(&raw(&value));
        assert_basic_401_alone(&stack, before, what, &r);
    }
    let before = seen(&stack);
    let r = stack.request_raw(&raw(b"Bearer abc\xffdef"));
    assert_refused_alone(
        &stack,
        before,
        "invalid UTF-8 in a token",
        &r,
        401,
        &[INVALID_TOKEN_CHALLENGE],
    );

    // Sizes: Envoy's own limit on request headers (60 KiB by default) answers before the filter;
    // under it, the filter refuses credentials over 8 KiB without asking the IdP.
    let huge = format!("{}{}", &token, "A".repeat(60 * 1024));
    let before = seen(&stack);
    let r = stack.get("/", &[("authorization", &bearer(&huge))]);
    eprintln!("a 60 KiB token: {} {:?}", r.status, r.www_authenticate());
    // nginx: a header line over `large_client_header_buffers` (8 KiB by default) is its own 400.
    let over_limit = if on_ngx() { 400 } else { 431 };
    assert_eq!(
        r.status, over_limit,
        "a 60 KiB header is over the host's limit: {r:#?}"
    );
    assert_eq!(
        seen(&stack),
        before,
        "60 KiB token: nothing upstream, no IdP call"
    );
    let big = format!("{}{}", &token, "A".repeat(40 * 1024));
    let before = seen(&stack);
    let r = stack.get("/", &[("authorization", &bearer(&big))]);
    if on_ngx() {
        assert_eq!(
            r.status, 400,
            "a 40 KiB token is over nginx's limit: {r:#?}"
        );
        assert_eq!(
            seen(&stack),
            before,
            "40 KiB token: nothing upstream, no IdP call"
        );
    } else {
        assert_refused_alone(
            &stack,
            before,
            "a 40 KiB token",
            &r,
            401,
            &[INVALID_TOKEN_CHALLENGE],
        );
    }
    let basic_60 = format!(
        "Basic {}",
        b64(format!("{APP_ID}:{}", "s".repeat(46 * 1024)).as_bytes())
    );
    let before = seen(&stack);
    let r = stack.get("/", &[("authorization", &basic_60)]);
    assert_eq!(r.status, over_limit, "a 61 KiB Basic header: {r:#?}");
    assert_eq!(
        seen(&stack),
        before,
        "60 KiB Basic: nothing upstream, no IdP call"
    );

    // Schemes the filter does not speak: both challenges, no IdP call.
    for value in [
        "Digest username=\"0oa8hostileApp\", realm=\"api\", nonce=\"abc\", response=\"def\"",
        "Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXe",
        "Token abc.def.ghi",
        "Basicx YWJjOmRlZg==",
        "Bearer-Token abc",
        "MAC id=\"h480djs93hd8\"",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830",
        "YWJjOmRlZg==",
        "0oa8hostileApp:hostile-Secret_5e4d3c2b1a09",
    ] {
        let before = seen(&stack);
        let r = stack.get("/", &[("authorization", value)]);
        assert_no_credentials_alone(&stack, before, value, &r);
    }

    // Several credentials in one value or in several headers: 400, whatever each would say alone.
    let both_valid: [(&str, String); 2] = [
        ("Authorization", good.clone()),
        ("aUtHoRiZaTiOn", bearer(&token)),
    ];
    let before = seen(&stack);
    let pairs: Vec<(&str, &str)> = both_valid.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let r = stack.get("/", &pairs);
    if on_ngx() {
        // nginx refuses a second Authorization header with its own 400 before any filter.
        assert_eq!(r.status, 400, "two Authorization headers: {r:#?}");
        assert_eq!(
            seen(&stack),
            before,
            "two headers: nothing upstream, no IdP call"
        );
    } else {
        assert_refused_alone(
            &stack,
            before,
            "a valid Basic and a valid Bearer in two headers",
            &r,
            400,
            &[INVALID_REQUEST_CHALLENGE],
        );
    }
    for value in [
        format!("{}, {}", bearer(&token), good),
        format!("bearer {token},basic {good_b64}"),
        format!("{good},\t{good}"),
        format!("Digest x, {}", bearer(&token)),
        format!("{good},"),
        format!(",{good}"),
    ] {
        let before = seen(&stack);
        let r = stack.get("/", &[("authorization", &value)]);
        assert_refused_alone(
            &stack,
            before,
            &value,
            &r,
            400,
            &[INVALID_REQUEST_CHALLENGE],
        );
    }
    assert_eq!(
        seen(&stack),
        Seen {
            token: 0,
            introspect: 0,
            upstream: 0
        }
    );

    // Nothing cached wrongly: both credentials validate (the token with one introspection; the
    // Basic pair from the verdict the bare-CR request cached, since it was the valid pair; on
    // ngx_wasm_module, where nginx refused that request, with one token call).
    let r = stack.get("/", &[("authorization", &good)]);
    assert_eq!(r.status, 200, "{r:#?}");
    let r = stack.get("/", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(
        seen(&stack),
        Seen {
            token: u64::from(on_ngx()),
            introspect: 1,
            upstream: 2
        }
    );
    stack.track_secret(&huge);
    assert_vm_healthy(&mut stack);
}

// ---- identity headers ----

const SPOOFS: [(&str, &str); 10] = [
    ("x-credential_identifier", "spoofed-mixed-1"),
    ("X_Credential-Identifier", "spoofed-mixed-2"),
    ("x_credential_IDENTIFIER", "spoofed-mixed-3"),
    ("x-authenticated_scope", "spoofed-mixed-4"),
    ("X_AUTHENTICATED_SCOPE", "spoofed-upper-5"),
    ("x-credential-identifier", "spoofed-copy-6"),
    ("x-credential-identifier", "spoofed-copy-7"),
    ("X-Credential-Identifier", "spoofed-copy-8"),
    ("x_credential_identifier", "spoofed-copy-9"),
    ("x-authenticated-scope", "spoofed-copy-10"),
];

#[test]
fn spoofed_identity_headers_in_every_spelling_never_reach_the_upstream() {
    let mut stack = Stack::start(config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let no_scope = stack.client(
        "0oa8noScopeApp",
        "noScope-Secret_1029384756",
        &["api:write"],
    );
    let token = mint(&stack, "0oa8bearerApp");
    let with = |auth: Option<&str>| -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = SPOOFS
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if let Some(a) = auth {
            h.insert(3, ("authorization".into(), a.to_string()));
        }
        h
    };
    let send = |auth: Option<&str>| {
        let h = with(auth);
        let refs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        stack.get("/", &refs)
    };

    if on_ngx() {
        // SPOOFS holds several copies of one name, which ngx_wasm_module cannot take out of
        // what nginx forwards: every request is refused before anything else (spoofing.rs has
        // the single-copy cases that pass there).
        for (what, auth) in [
            ("Basic", Some(app.basic())),
            ("Bearer", Some(bearer(&token))),
            ("no credentials", None),
            ("no scope", Some(no_scope.basic())),
        ] {
            let r = send(auth.as_deref());
            assert_local_reply(&r, 400);
            assert_eq!(
                r.www_authenticate(),
                vec![INVALID_REQUEST_CHALLENGE],
                "{what}"
            );
            assert!(!r.body.contains("spoofed"), "{what}: {r:#?}");
        }
        assert_eq!(
            seen(&stack),
            Seen {
                token: 0,
                introspect: 0,
                upstream: 0
            }
        );
        assert_vm_healthy(&mut stack);
        return;
    }

    // Allowed, both paths: only the filter's values arrive.
    for (what, auth, identity) in [
        ("Basic", app.basic(), APP_ID),
        ("Bearer", bearer(&token), "0oa8bearerApp"),
    ] {
        stack.echo.clear();
        let r = send(Some(&auth));
        assert_eq!(r.status, 200, "{what}: {r:#?}");
        let req = stack.single_upstream_request();
        assert_eq!(
            upstream_header(&req, "x-credential-identifier"),
            vec![identity],
            "{what}: {req:#?}"
        );
        assert_eq!(
            upstream_header(&req, "x-authenticated-scope"),
            vec![SCOPE],
            "{what}: {req:#?}"
        );
        for (name, value) in &req.headers {
            let folded = name.replace('_', "-");
            let ours = ["x-credential-identifier", "x-authenticated-scope"];
            assert!(
                !value.contains("spoofed")
                    && (!ours.contains(&folded.as_str()) || ours.contains(&name.as_str())),
                "{what}: a client-sent identity header reached the upstream: {name}: {value}"
            );
        }
    }

    // Refused for every reason: nothing at all reaches the upstream.
    stack.echo.clear();
    let wrong = app.basic_with_secret("wrong-Secret_5647382910");
    stack.track_secret("wrong-Secret_5647382910");
    let two = format!("{},{}", app.basic(), bearer(&token));
    for (what, auth, status) in [
        ("no credentials", None, 401),
        ("malformed", Some("Basic !!!".to_string()), 401),
        ("wrong secret", Some(wrong), 401),
        (
            "inactive token",
            Some(bearer("inactive.Token_0123456789")),
            401,
        ),
        ("no scope", Some(no_scope.basic()), 403),
        ("two credentials", Some(two), 400),
    ] {
        let r = send(auth.as_deref());
        assert_eq!(r.status, status, "{what}: {r:#?}");
        assert_local_reply(&r, status);
        assert!(!r.body.contains("spoofed"), "{what}: {r:#?}");
        assert_eq!(
            stack.echo.count(),
            0,
            "{what}: a refused request reached the upstream"
        );
    }
    stack
        .idp
        .set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Status(500)));
    let r = send(Some(&basic_header(
        "0oa8otherApp",
        "other-Secret_9988776655",
    )));
    stack.track_secret("other-Secret_9988776655");
    assert_503("IdP failing", &r);
    assert_eq!(
        stack.echo.count(),
        0,
        "IdP failing: a refused request reached the upstream"
    );
    assert_vm_healthy(&mut stack);
}

/// The issue lists `.` spellings among the spoofing tricks: an upstream that folds `.` into `-`
/// or `_` (as some CGI-style header-to-variable mappings do) would read them as the identity.
#[test]
fn spoofed_identity_headers_with_dots_never_reach_the_upstream() {
    let stack = Stack::start(config(json!({})));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let r = stack.get(
        "/",
        &[
            ("x.credential.identifier", "spoofed-dot-1"),
            ("X-Credential.Identifier", "spoofed-dot-2"),
            ("x.authenticated.scope", "spoofed-dot-3"),
            ("authorization", &app.basic()),
        ],
    );
    if on_ngx() {
        // The harness's nginx lets `.` names through (`ignore_invalid_headers off`), hashed
        // without the `.`: the filter cannot empty them there and refuses the request.
        assert_local_reply(&r, 400);
        assert_eq!(stack.echo.count(), 0);
        return;
    }
    assert_eq!(r.status, 200, "{r:#?}");
    let req = stack.single_upstream_request();
    for (name, value) in &req.headers {
        assert!(
            !value.contains("spoofed"),
            "a client-sent identity header reached the upstream: {name}: {value}"
        );
    }
}

// ---- IdP answers ----

/// One case of an IdP answer matrix: the fault, and the filter's timeout on its route.
struct IdpCase {
    what: &'static str,
    fault: Fault,
    timeout_ms: u64,
}

fn case(what: &'static str, fault: Fault) -> IdpCase {
    IdpCase {
        what,
        fault,
        timeout_ms: 1000,
    }
}

/// A stack with one route per case (`/case-N/`), each with its own configuration (so that one
/// case's failures, which the quota guard counts per configuration, never touch another's).
/// Every `idp-body-...` marker in a custom answer's body is tracked like a secret, so the log
/// sweep proves no IdP body reached the log.
fn matrix_stack(cases: &[IdpCase]) -> Stack {
    let mut b = Stack::builder();
    for (i, c) in cases.iter().enumerate() {
        b = b.route(
            &format!("/case-{i}/"),
            filter_config(json!({ "cache_slots": 64 + i, "idp_timeout_ms": c.timeout_ms })),
        );
    }
    let stack = b.start();
    for c in cases {
        if let FaultAnswer::Custom { body, .. } = &c.fault.answer {
            for (i, _) in body.match_indices("idp-body-") {
                let marker: String = body[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                stack.track_secret(&marker);
            }
        }
    }
    stack
}

/// Runs each case on its own route: with the fault on, a request with `auth` is a 503 (no
/// challenge, nothing upstream) after exactly one call to `ep`; with it off, the same request
/// passes after one more call (the failure was not cached), then from the cache.
fn run_idp_matrix(stack: &Stack, ep: Endpoint, auth: &str, identity: &str, cases: &[IdpCase]) {
    let calls = || stack.idp.calls(ep);
    for (i, case) in cases.iter().enumerate() {
        let path = format!("/case-{i}/r");
        let what = case.what;
        stack.idp.set_fault(ep, case.fault.clone());
        let before = seen(stack);
        let started = Instant::now();
        let r = stack.get(&path, &[("authorization", auth)]);
        let took = started.elapsed();
        assert_503(what, &r);
        assert_eq!(stack.echo.count(), before.upstream, "{what}: went upstream");
        assert_eq!(
            calls() - before_calls(ep, before),
            1,
            "{what}: one IdP call"
        );
        assert!(
            took < Duration::from_millis(case.timeout_ms + 1500),
            "{what}: answered after {took:?}"
        );
        if !case.fault.delay.is_zero() {
            assert!(
                took >= Duration::from_millis(case.timeout_ms * 8 / 10),
                "{what}: answered after {took:?}, before idp_timeout_ms {}",
                case.timeout_ms
            );
        }
        stack.idp.clear_faults();
        let r = if matches!(case.fault.answer, FaultAnswer::Custom { status: 429, .. }) {
            // The 429 paused this configuration's calls until its reset (1 s).
            eventually(Duration::from_secs(5), "a 200 after the rate limit", || {
                let r = stack.get(&path, &[("authorization", auth)]);
                match r.status {
                    200 => Some(r),
                    503 => None,
                    s => panic!("{what}: after the 429: {s}: {r:#?}"),
                }
            })
        } else {
            stack.get(&path, &[("authorization", auth)])
        };
        assert_eq!(r.status, 200, "{what}: after the fault is gone: {r:#?}");
        assert_last_upstream_is(stack, what, identity);
        assert_eq!(
            calls() - before_calls(ep, before),
            2,
            "{what}: the failure was not cached: the valid request asked the IdP again, once"
        );
        let r = stack.get(&path, &[("authorization", auth)]);
        assert_eq!(r.status, 200, "{what}: cached: {r:#?}");
        assert_eq!(calls() - before_calls(ep, before), 2, "{what}: now cached");
        eprintln!("{what}: 503 after {took:?}, then 200");
    }
}

fn before_calls(ep: Endpoint, s: Seen) -> u64 {
    match ep {
        Endpoint::Token => s.token,
        Endpoint::Introspect => s.introspect,
        _ => 0,
    }
}

/// A JSON body of about `size` bytes: `fields` then a padding field.
fn padded_json(fields: Value, size: usize) -> String {
    let mut v = fields;
    v["padding"] = json!("p".repeat(size));
    v.to_string()
}

fn okta_error_body(code: &str, marker: &str) -> String {
    json!({"errorCode": code, "errorSummary": marker, "errorLink": code, "errorId": marker, "errorCauses": []})
        .to_string()
}

fn oauth_error_body(error: &str, marker: &str) -> String {
    json!({"error": error, "error_description": marker}).to_string()
}

/// The unreadable, unexpected and failing answers any IdP call can get, with distinctive bodies.
/// `valid` is a good answer for the endpoint (sent padded to 1 MiB, and with a 307).
fn common_cases(valid: Value) -> Vec<IdpCase> {
    let json = "application/json";
    let html = "<!DOCTYPE html><html><body><h1>idp-body-html-Maintenance_77</h1></body></html>";
    let mut huge = valid.clone();
    huge["marker"] = json!("idp-body-huge-Answer_88");
    let reset_at = (now_s() + 1).to_string();
    vec![
        case("HTML 200", custom(200, "text/html", html.into(), &[])),
        case(
            "HTML 200 said to be JSON",
            custom(200, json, html.into(), &[]),
        ),
        case(
            "empty 200 without a content type",
            custom(200, "", String::new(), &[]),
        ),
        case("JSON null", custom(200, json, "null".into(), &[])),
        IdpCase {
            what: "1 MiB JSON (a valid answer, padded)",
            fault: custom(200, json, padded_json(huge, 1 << 20), &[]),
            timeout_ms: 2000,
        },
        case(
            "301 to the same endpoint",
            custom(
                301,
                "text/html",
                "idp-body-moved-Permanently_11".into(),
                &[("location", "/oauth2/default/v1/token")],
            ),
        ),
        case(
            "302",
            custom(
                302,
                "",
                "idp-body-found-Elsewhere_12".into(),
                &[("location", "https://login.example.com/")],
            ),
        ),
        case(
            "307 with a valid body",
            custom(307, json, valid.to_string(), &[("location", "/v1/token")]),
        ),
        case(
            "429 (Retry-After 1)",
            custom(
                429,
                json,
                okta_error_body("E0000047", "idp-body-rate-Limited_13"),
                &[("retry-after", "1"), ("x-rate-limit-reset", &reset_at)],
            ),
        ),
        case(
            "500",
            custom(
                500,
                json,
                okta_error_body("E0000009", "idp-body-server-Error_14"),
                &[],
            ),
        ),
        case(
            "503",
            custom(503, "text/plain", "idp-body-unavailable-Now_15".into(), &[]),
        ),
        case(
            "504",
            custom(504, "text/html", "idp-body-gateway-Timeout_16".into(), &[]),
        ),
        case(
            "reset connection",
            Fault::answer(FaultAnswer::ResetConnection),
        ),
        IdpCase {
            what: "delay past idp_timeout_ms",
            fault: Fault::delay(Duration::from_millis(2500)),
            timeout_ms: 600,
        },
    ]
}

#[test]
fn every_unusable_token_endpoint_answer_is_503_and_never_cached() {
    let json = "application/json";
    let valid = json!({"token_type": "Bearer", "expires_in": 3600, "access_token": "idp-body-valid-Token_10", "scope": SCOPE});
    let mut cases = common_cases(valid);
    // The token endpoint's errors that are not a verdict on the client's credentials.
    cases.extend([
        case(
            "400 invalid_request",
            custom(
                400,
                json,
                oauth_error_body("invalid_request", "idp-body-invalid-Request_17"),
                &[],
            ),
        ),
        case(
            "401 that is not JSON",
            custom(
                401,
                "text/html",
                "<html>idp-body-login-Page_19</html>".into(),
                &[],
            ),
        ),
        case(
            "403 access_denied",
            custom(
                403,
                json,
                oauth_error_body("access_denied", "idp-body-access-Denied_20"),
                &[],
            ),
        ),
    ]);
    let mut stack = matrix_stack(&cases);
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    run_idp_matrix(&stack, Endpoint::Token, &app.basic(), APP_ID, &cases);
    assert_eq!(stack.idp.calls(Endpoint::Introspect), 0);
    assert_vm_healthy(&mut stack);
}

#[test]
fn every_unusable_introspection_answer_is_503_and_never_cached() {
    let json = "application/json";
    let valid = json!({"active": true, "scope": SCOPE, "client_id": APP_ID, "app_id": APP_ID, "exp": now_s() + 3600, "token_type": "Bearer"});
    let mut cases = common_cases(valid);
    cases.extend([
        // A 401 at introspection refuses the gateway's own client: never the token's fault.
        case(
            "401 invalid_client (the gateway refused)",
            custom(
                401,
                json,
                oauth_error_body("invalid_client", "idp-body-gateway-Refused_21"),
                &[("www-authenticate", "Basic realm=\"okta\"")],
            ),
        ),
        case(
            "400 invalid_request",
            custom(
                400,
                json,
                oauth_error_body("invalid_request", "idp-body-introspect-Invalid_22"),
                &[],
            ),
        ),
    ]);
    let mut stack = matrix_stack(&cases);
    let token = mint(&stack, APP_ID);
    run_idp_matrix(
        &stack,
        Endpoint::Introspect,
        &bearer(&token),
        APP_ID,
        &cases,
    );
    assert_eq!(stack.token_calls(), 0);
    assert_vm_healthy(&mut stack);
}

// ---- clients that give up ----

/// Both endpoints configured: no discovery, so a request's IdP call is always sent from its own
/// context (see below for the other case).
fn no_discovery() -> Value {
    config(json!({
        "token_endpoint": "{issuer}/v1/token",
        "introspection_endpoint": "{issuer}/v1/introspect",
    }))
}

/// A client that gives up while its IdP call is out. Envoy cancels the HTTP calls a context sent
/// when that context goes away, so what happens to the late answer depends on which context
/// sent the call:
/// - the request's own (the usual case): the call dies with the request, its answer is never
///   seen, nothing is cached, and the next request asks the IdP itself;
/// - the plugin's root context (a request that waited for discovery, or a follower taking over a
///   lease, is sent on from a tick or another call's answer): the call outlives the request and
///   its answer is cached like any verdict, so the next request is served from the cache.
///
/// Either way nothing goes upstream for the request that left, and the filter keeps working.
#[test]
fn an_answer_arriving_after_the_client_gave_up_is_dropped_or_cached_by_who_sent_the_call() {
    let mut stack = Stack::builder()
        .route("/direct/", no_discovery())
        .route("/", config(json!({})))
        // Discovery for `/` answers 1.5 s after the plugin starts: the first request waits.
        .with_idp(|idp| idp.set_fault(Endpoint::Discovery, delay(Duration::from_millis(1500))))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let token = mint(&stack, APP_ID);
    let listener = stack.listener();

    // The root context's call: a request parked for discovery, gone before its call's answer.
    stack
        .idp
        .set_fault(Endpoint::Token, Fault::delay(Duration::from_millis(800)));
    let sent = Instant::now();
    let mut parked = TcpStream::connect(listener).unwrap_or_else(|e| panic!("connect: {e}"));
    parked
        .write_all(get_head("/parked", &app.basic()).as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    eventually(
        Duration::from_secs(5),
        "the parked request's IdP call",
        || (stack.token_calls() == 1).then_some(()),
    );
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the request did not wait for discovery (its call came after {waited:?}): Envoy took \
         longer than the 1.5 s discovery delay to start?"
    );
    drop(parked);
    std::thread::sleep(Duration::from_millis(1100));
    stack.idp.clear_faults();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "after the parked client gave up: {r:#?}");
    assert_eq!(
        stack.token_calls(),
        1,
        "the root context's call outlived its request: its answer was cached"
    );
    assert_eq!(
        stack.echo.count(),
        1,
        "only the second request went upstream"
    );
    stack.echo.clear();
    stack.idp.reset_counters();

    // The request's own call: it dies with the request.
    for (ep, auth) in [
        (Endpoint::Token, app.basic()),
        (Endpoint::Introspect, bearer(&token)),
    ] {
        stack
            .idp
            .set_fault(ep, Fault::delay(Duration::from_millis(800)));
        let before = seen(&stack);
        let got = hang_up_after(
            listener,
            &get_head("/direct/gone", &auth),
            Duration::from_millis(200),
        );
        assert!(
            got.is_empty(),
            "{ep:?}: an answer before the IdP's: {}",
            String::from_utf8_lossy(&got)
        );
        let calls = eventually(Duration::from_secs(2), "the IdP call", || {
            let n = stack.idp.calls(ep) - before_calls(ep, before);
            (n > 0).then_some(n)
        });
        assert_eq!(calls, 1, "{ep:?}");
        // The IdP answers at 800 ms, to nobody.
        std::thread::sleep(Duration::from_millis(900));
        stack.idp.clear_faults();
        let r = stack.get("/direct/next", &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "{ep:?}: after the client gave up: {r:#?}");
        assert_last_upstream_is(&stack, "after", APP_ID);
        assert_eq!(
            stack.echo.count(),
            before.upstream + 1,
            "{ep:?}: only the second request went upstream"
        );
        // ngx_wasm_module keeps a request whose client left until its call answers (nginx
        // notices the closed connection only when it writes): the answer is cached as usual and
        // the next request uses it. Envoy drops the call with the request.
        let calls = if on_ngx() { 1 } else { 2 };
        assert_eq!(
            stack.idp.calls(ep) - before_calls(ep, before),
            calls,
            "{ep:?}: the abandoned call's answer was dropped (Envoy) or cached (ngx_wasm_module)"
        );
        let r = stack.get("/direct/next", &[("authorization", &auth)]);
        assert_eq!(r.status, 200);
        assert_eq!(
            stack.idp.calls(ep) - before_calls(ep, before),
            calls,
            "{ep:?}: then cached"
        );
    }
    assert_vm_healthy(&mut stack);
}

#[test]
fn when_the_request_holding_the_idp_call_hangs_up_a_waiting_one_takes_over() {
    // One worker, so that the second request is a follower of the first on the same worker;
    // no discovery, so that the leader's call is its own (it dies with it).
    let mut stack = Stack::builder()
        .route("/", no_discovery())
        .concurrency(1)
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    stack
        .idp
        .set_fault(Endpoint::Token, Fault::delay(Duration::from_millis(1500)));
    let auth = app.basic();
    // The leader: its call is at the IdP before the follower comes.
    let mut leader =
        TcpStream::connect(stack.listener()).unwrap_or_else(|e| panic!("connect: {e}"));
    leader
        .write_all(get_head("/leader", &auth).as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    eventually(Duration::from_secs(2), "the leader's IdP call", || {
        (stack.token_calls() == 1).then_some(())
    });
    let started = Instant::now();
    let r = std::thread::scope(|s| {
        let follower = s.spawn(|| stack.get("/follower", &[("authorization", &auth)]));
        // The follower is parked behind the leader's lease; now the leader's client hangs up.
        std::thread::sleep(Duration::from_millis(300));
        drop(leader);
        follower.join()
    });
    let took = started.elapsed();
    let r = r.unwrap_or_else(|_| panic!("the follower's request failed"));
    assert_eq!(r.status, 200, "the follower takes over the lease: {r:#?}");
    assert_eq!(
        stack.token_calls(),
        2,
        "the leader's call died with it; the follower made its own"
    );
    let reqs = stack.upstream();
    assert_eq!(reqs.len(), 1, "only the follower went upstream: {reqs:#?}");
    assert!(reqs[0].path.starts_with("/follower"), "{reqs:#?}");
    // It did not wait for the dead call's answer (1.5 s) and then its own (1.5 s more) by luck:
    // it took over when the leader left.
    assert!(
        took < Duration::from_millis(300 + 1500 + 1000),
        "follower answered after {took:?}"
    );
    eprintln!("follower answered {took:?} after it came");
    assert_vm_healthy(&mut stack);
}

#[test]
fn clients_hanging_up_while_calls_are_pending_leave_the_filter_working() {
    let stack = Stack::start(config(json!({ "idp_timeout_ms": 2000 })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let listener = stack.listener();
    // The IdP answers after 1 s; the clients hang up between 20 and 480 ms.
    stack
        .idp
        .set_fault(Endpoint::Token, Fault::delay(Duration::from_millis(1000)));
    stack.idp.set_fault(
        Endpoint::Introspect,
        Fault::delay(Duration::from_millis(1000)),
    );
    // 24 requests, each its own credential (so each is a leader), half Basic, half Bearer;
    // every client hangs up at a different point while its call is pending.
    let mut auths = Vec::new();
    for i in 0..12 {
        let secret = format!("hangup-Secret_{i:04}abcdef");
        let c = stack.client(&format!("0oa8hangup{i}"), &secret, &[SCOPE]);
        auths.push(c.basic());
        auths.push(bearer(&mint(&stack, &c.id)));
    }
    std::thread::scope(|s| {
        for (i, auth) in auths.iter().enumerate() {
            s.spawn(move || {
                hang_up_after(
                    listener,
                    &get_head("/hangup", auth),
                    Duration::from_millis(20 + 20 * i as u64),
                )
            });
        }
    });
    // Past the IdP's answers (to nobody, or cached when the root context sent the call).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        stack.echo.count(),
        0,
        "a request whose client left went upstream"
    );
    stack.idp.clear_faults();
    // Everything still works, on both workers: valid, invalid, cached.
    for i in 0..6 {
        let r = stack.get("/after", &[("authorization", &app.basic())]);
        assert_eq!(r.status, 200, "request {i} after the hang-ups: {r:#?}");
        let r = stack.get("/after", &[("authorization", &auths[1])]);
        assert_eq!(
            r.status, 200,
            "bearer request {i} after the hang-ups: {r:#?}"
        );
        let r = stack.get(
            "/after",
            &[(
                "authorization",
                &app.basic_with_secret("after-Wrong_0011223344"),
            )],
        );
        assert_eq!(r.status, 401, "{r:#?}");
    }
    stack.track_secret("after-Wrong_0011223344");
    let mut stack = stack;
    assert_vm_healthy(&mut stack);
}

// ---- the VM failing: failure_policy ----

/// The panic filter: `target/wasm32-wasip1/release/panic_filter.wasm`.
fn panic_filter_wasm() -> PathBuf {
    let path = envoy::target_dir().join("wasm32-wasip1/release/panic_filter.wasm");
    assert!(
        path.is_file(),
        "the panic filter is missing: {}\nbuild it with `cargo build --release --target \
         wasm32-wasip1 -p okta-dcr-auth-panic-filter` in {}",
        path.display(),
        envoy::workspace_root().display()
    );
    path
}

/// Envoy (2 workers, a VM each) with the panic filter under `policy`, in front of an echo.
struct PanicStack {
    envoy: envoy::Envoy,
    echo: EchoHandle,
}

impl PanicStack {
    fn start(policy: &str) -> PanicStack {
        let wasm = panic_filter_wasm();
        let echo = EchoHandle::spawn("127.0.0.1:0").unwrap_or_else(|e| panic!("echo: {e}"));
        let routes = [RouteSpec {
            prefix: "/".into(),
            filter_config: Some("{}".into()),
        }];
        let clusters = [ClusterSpec::new("upstream", echo.addr())];
        let mut bootstrap = envoy::render_bootstrap(&routes, &clusters, Some(&wasm), None);
        let filter = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
            ["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"];
        assert_eq!(
            filter["failure_policy"], "FAIL_CLOSED",
            "the harness bootstrap changed"
        );
        filter["failure_policy"] = json!(policy);
        filter["vm_config"]["vm_id"] = json!("panic-filter");
        let dir = envoy::run_dir(&format!("panic-{policy}"));
        let envoy = envoy::Envoy::start(&bootstrap, &envoy::EnvoyOptions::default(), &dir)
            .unwrap_or_else(|f| panic!("{f}"));
        PanicStack { envoy, echo }
    }

    fn get(&self, headers: &[(&str, &str)]) -> Response {
        self.envoy.get("/", headers)
    }

    /// Statuses of plain requests (no `x-panic`) until both answers were seen, or `max` requests.
    /// Envoy spreads connections over both workers; only one VM crashed.
    fn statuses_until_both(&self, max: usize) -> Vec<u16> {
        let mut out = Vec::new();
        while out.len() < max && !(out.contains(&200) && out.contains(&503)) {
            out.push(self.get(&[]).status);
        }
        out
    }

    /// Every request that reached the upstream went through the filter (it sets a header).
    fn assert_upstream_went_through_the_filter(&self) -> usize {
        let reqs = self.echo.requests();
        for r in &reqs {
            assert_eq!(
                upstream_header(r, "x-panic-filter"),
                vec!["passed"],
                "a request reached the upstream without the filter: {r:#?}"
            );
        }
        reqs.len()
    }

    /// Crashes the VM of whichever worker takes the request: the request gets Envoy's 503.
    fn crash(&self) {
        let r = self.get(&[("x-panic", "1")]);
        assert_eq!(r.status, 503, "the request whose filter panicked: {r:#?}");
        assert!(r.www_authenticate().is_empty(), "{r:#?}");
        assert_eq!(self.echo.count(), 0, "the panicking request went upstream");
        let log = self.envoy.log();
        let failures = vm_failure_lines(&log);
        assert!(
            failures.iter().any(|l| l.contains("panicked"))
                && failures
                    .iter()
                    .any(|l| l.contains("Function: proxy_on_request_headers failed")),
            "Envoy should log the panic and the failed callback:\n{log}"
        );
    }
}

impl Drop for PanicStack {
    fn drop(&mut self) {
        let log = self.envoy.log();
        self.envoy.stop();
        if std::thread::panicking() {
            eprintln!("==== Envoy log ====\n{log}\n==== end of Envoy log ====");
        } else {
            let _ = std::fs::remove_dir_all(self.envoy.dir());
        }
    }
}

/// What a crashed VM means under each policy, in Envoy 1.40 (each worker has its own VM; a panic
/// with `panic = "abort"` traps it, Envoy logs the panic message at critical and
/// `Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable` at error):
/// - `FAIL_CLOSED` (the shipped configurations): the request is answered 503 (Envoy's own, empty
///   body, no challenge), and so is every later request on that worker: the crashed VM is not
///   replaced (still 503 well after FAIL_RELOAD's backoff). The other worker, whose VM did not
///   crash, goes on.
/// - `FAIL_RELOAD`: the same 503, then a new VM after a backoff (`reload_config`, 1 s by default).
/// - `FAIL_OPEN`: the request is answered 503 too, but every later request on that worker goes
///   upstream WITHOUT the filter: for an authentication filter, unauthenticated.
#[test]
fn fail_closed_answers_503_once_the_vm_crashed_and_never_lets_a_request_through() {
    if envoy_only("Envoy's failure_policy (ngx_wasm_module: `a_trap_on_ngx_...`)") {
        return;
    }
    let p = PanicStack::start("FAIL_CLOSED");
    let r = p.get(&[]);
    assert_eq!(
        r.status, 200,
        "the filter passes requests before it crashes: {r:#?}"
    );
    p.echo.clear();
    p.crash();
    std::thread::sleep(Duration::from_millis(1500));
    let statuses = p.statuses_until_both(40);
    eprintln!("FAIL_CLOSED, after the crash and 1.5 s: {statuses:?}");
    assert!(
        statuses.contains(&503),
        "the crashed worker still refuses: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(p.assert_upstream_went_through_the_filter(), passed);
}

#[test]
fn fail_reload_answers_503_for_the_crash_then_runs_a_fresh_vm() {
    if envoy_only("Envoy's failure_policy (ngx_wasm_module: `a_trap_on_ngx_...`)") {
        return;
    }
    let p = PanicStack::start("FAIL_RELOAD");
    p.crash();
    std::thread::sleep(Duration::from_millis(1500));
    let statuses: Vec<u16> = (0..12).map(|_| p.get(&[]).status).collect();
    eprintln!("FAIL_RELOAD, 1.5 s after the crash: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a fresh VM serves: {statuses:?}"
    );
    assert_eq!(p.assert_upstream_went_through_the_filter(), statuses.len());
    let log = p.envoy.log();
    let created = log.matches("Thread-Local Wasm created").count();
    assert!(
        created >= 3,
        "a VM was created again after the crash:\n{log}"
    );
}

#[test]
fn fail_open_lets_requests_skip_a_crashed_filter() {
    if envoy_only("Envoy's failure_policy (ngx_wasm_module: `a_trap_on_ngx_...`)") {
        return;
    }
    let p = PanicStack::start("FAIL_OPEN");
    p.crash();
    let mut skipped = 0;
    for _ in 0..40 {
        let r = p.get(&[]);
        assert_eq!(r.status, 200, "{r:#?}");
        if skipped > 0 {
            break;
        }
        skipped = p
            .echo
            .requests()
            .iter()
            .filter(|r| upstream_header(r, "x-panic-filter").is_empty())
            .count();
    }
    eprintln!("FAIL_OPEN: {skipped} request(s) went upstream without the crashed filter");
    assert!(
        skipped > 0,
        "FAIL_OPEN should let requests past the crashed VM"
    );
}

/// ngx_wasm_module has no failure policy: a filter that traps fails that request with 500 (it
/// never goes upstream), and the next request runs on a new instance of the module.
#[test]
fn a_trap_on_ngx_is_a_500_for_that_request_and_the_next_ones_run_on_a_new_instance() {
    if !on_ngx() {
        eprintln!("ngx_wasm_module only (Envoy: the failure_policy tests)");
        return;
    }
    let wasm = panic_filter_wasm();
    let echo = EchoHandle::spawn("127.0.0.1:0").unwrap_or_else(|e| panic!("echo: {e}"));
    let routes = [RouteSpec {
        prefix: "/".into(),
        filter_config: Some("{}".into()),
    }];
    let opts = NgxOptions {
        workers: 1,
        ..NgxOptions::default()
    };
    let dir = envoy::run_dir("panic-ngx");
    let conf = |port| ngx::render_conf(&routes, echo.addr(), Some(&wasm), port, &opts);
    let host = ngx::Ngx::start(conf, &opts, &dir).unwrap_or_else(|f| panic!("{f}"));
    let get = |headers: &[(&str, &str)]| {
        client::send(
            host.listener(),
            "GET",
            "/",
            headers,
            client::DEFAULT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("GET through nginx: {e}"))
    };
    assert_eq!(
        get(&[]).status,
        200,
        "the filter passes requests before it traps"
    );
    echo.clear();
    let r = get(&[("x-panic", "1")]);
    assert_eq!(r.status, 500, "the request whose filter panicked: {r:#?}");
    assert_eq!(echo.count(), 0, "the panicking request went upstream");
    for _ in 0..5 {
        assert_eq!(
            get(&[]).status,
            200,
            "the next requests run on a new instance"
        );
    }
    for r in echo.requests() {
        assert_eq!(
            upstream_header(&r, "x-panic-filter"),
            vec!["passed"],
            "a request reached the upstream without the filter: {r:#?}"
        );
    }
    assert!(host.log().contains("panicked"), "nginx logs the panic");
    let _ = std::fs::remove_dir_all(&dir);
}
