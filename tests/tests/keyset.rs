//! Key-set refreshes an anonymous client cannot hold back (issue 18, finding 2), on both hosts.
//!
//! The attack: JWTs with the right `iss`, `aud` and `exp`, a made-up `kid` and no valid
//! signature, while the key endpoint answers in 150 ms. On Envoy each goes on its own connection,
//! which the client resets (`SO_LINGER` 0) 2 ms after sending it. On ngx_wasm_module each follows
//! a request to a route without the filter on the same keep-alive connection (such a request may
//! not wait there: kong/README.md row 12); resets do nothing there (the request's own fetch
//! completed before the fix too). Before the fix a fetch belonged to the request that asked for
//! it and was lost with it (Envoy: the client hung up; ngx: the request was refused), while the
//! refresh stamps stayed: new keys, and a fresh node's first keys, were held back for as long as
//! the flood went on. Now a fetch that no request can wait for is the root context's, and it
//! counts for the once-per-30-s rule when it completes.
//!
//! The dev IdP counts the key fetches it received (`jwks_fetches`) and those it answered
//! (`jwks_answers`: the caller stayed for the answer).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use okta_dcr_auth_tests::*;
use serde_json::json;

const TOKEN_CLIENT: &str = "0oa7keysTokenClient";
const APP_ID: &str = "0oa7keysDcrApp";
/// How long the key endpoint takes to answer in the flood tests (as in the issue).
const KEYS_LATENCY: Duration = Duration::from_millis(150);
/// The filter's once-per-30-s rule for unknown `kid`s.
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// An attacker thread stops after this long, whatever happens to the test.
const ATTACK_LIMIT: Duration = Duration::from_secs(45);
/// ... or after this many requests.
const ATTACK_MAX_PER_THREAD: u64 = 40_000;

fn spec() -> TokenSpec {
    app_token_spec(TOKEN_CLIENT, APP_ID, &[SCOPE])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get(stack: &Stack, token: &str) -> Response {
    stack.get("/", &[("authorization", &bearer(token))])
}

/// The filter on `/` (its log at info: a flood at debug would log every request), `/open`
/// without it, the key endpoint `latency` away.
fn stack(latency: Option<Duration>) -> Stack {
    Stack::builder()
        .open_route("/open")
        .route("/", filter_config(json!({})))
        .component_log_level("wasm", "info")
        .with_idp(move |idp| {
            if let Some(latency) = latency {
                idp.set_fault(Endpoint::Keys, delay(latency));
            }
        })
        .start()
}

/// A token of the issuer in every respect the filter checks before the key (`iss`, `aud`,
/// `exp`, `iat`, scopes, app claim), with a `kid` the issuer never published, and no signature
/// (even `n`) or 256 bytes that are none (odd `n`).
fn made_up_kid_token(issuer: &str, thread: usize, n: u64) -> String {
    let url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = now_s();
    let header = json!({ "alg": "RS256", "kid": format!("made-up-{thread}-{n}-{}", epoch_ms()) });
    let claims = json!({
        "iss": issuer, "aud": "api://default", "iat": now, "exp": now + 3_600,
        "jti": format!("AT.attack.{thread}.{n}"), "cid": TOKEN_CLIENT, "sub": TOKEN_CLIENT,
        "scp": [SCOPE], "app_id": APP_ID,
    });
    let signature: Vec<u8> = if n.is_multiple_of(2) {
        Vec::new()
    } else {
        (0..256u32).map(|i| (i as u8) ^ (n as u8)).collect()
    };
    format!(
        "{}.{}.{}",
        url(header.to_string().as_bytes()),
        url(claims.to_string().as_bytes()),
        url(&signature)
    )
}

/// Closes `stream` with a TCP RST (`SO_LINGER` 0) instead of a FIN.
fn reset(stream: TcpStream) {
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    // Linux values.
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor owned by `stream`, and a pointer to a live `struct linger`
    // of the size passed.
    let _ = unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &linger,
            std::mem::size_of::<Linger>() as u32,
        )
    };
    drop(stream);
}

/// How an attacker thread sends its tokens.
#[derive(Debug, Clone, Copy)]
enum Hangup {
    /// One request per connection, reset 2 ms after it was written.
    Reset,
    /// After a request to `/open` on the same keep-alive connection (ngx_wasm_module refuses
    /// such a request at once when it would wait), then the connection is dropped.
    AfterOpenRoute,
}

/// Attacker threads flooding the filter with made-up `kid`s until stopped (or
/// [`ATTACK_LIMIT`], or [`ATTACK_MAX_PER_THREAD`]).
struct Attacker {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    passed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Attacker {
    /// Two threads, with the hang-up that held refreshes back on each host before the fix:
    /// resets on Envoy, requests after one to `/open` on ngx_wasm_module (resets did not: there
    /// the request's own fetch completed, and so did the refresh).
    fn start(stack: &Stack) -> Attacker {
        let modes = if on_ngx() {
            [Hangup::AfterOpenRoute, Hangup::AfterOpenRoute]
        } else {
            [Hangup::Reset, Hangup::Reset]
        };
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let passed = Arc::new(AtomicU64::new(0));
        let threads = modes
            .into_iter()
            .enumerate()
            .map(|(t, mode)| {
                let (stop, sent, passed) = (stop.clone(), sent.clone(), passed.clone());
                let (addr, issuer) = (stack.listener(), stack.issuer());
                std::thread::spawn(move || {
                    attack(addr, &issuer, t, mode, &stop, &sent, &passed);
                })
            })
            .collect();
        Attacker {
            stop,
            sent,
            passed,
            threads,
        }
    }

    /// Returns once the threads sent `n` requests (and at least 100 ms went by), so that the
    /// flood, not the valid client, asks for the fetch; panics after 5 s.
    fn wait_until_sent(&self, n: u64) {
        std::thread::sleep(Duration::from_millis(100));
        eventually(
            Duration::from_secs(5),
            "the attacker's first requests",
            || (self.sent.load(Ordering::SeqCst) >= n).then_some(()),
        );
    }

    /// Stops the threads; the requests they sent and how many of those got a 200.
    fn stop(mut self) -> (u64, u64) {
        self.halt();
        (
            self.sent.load(Ordering::SeqCst),
            self.passed.load(Ordering::SeqCst),
        )
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.halt();
    }
}

fn attack(
    addr: SocketAddr,
    issuer: &str,
    thread: usize,
    mode: Hangup,
    stop: &AtomicBool,
    sent: &AtomicU64,
    passed: &AtomicU64,
) {
    let started = Instant::now();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst)
        && started.elapsed() < ATTACK_LIMIT
        && n < ATTACK_MAX_PER_THREAD
    {
        let token = made_up_kid_token(issuer, thread, n);
        n += 1;
        let auth = bearer(&token);
        match mode {
            Hangup::Reset => {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                    continue;
                };
                let request = client::request_bytes("GET", "/", &[("authorization", &auth)], true);
                if s.write_all(&request).is_ok() {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
                reset(s);
            }
            Hangup::AfterOpenRoute => {
                let open = client::request_bytes("GET", "/open", &[], true);
                let request = client::request_bytes("GET", "/", &[("authorization", &auth)], true);
                if let Ok((_, r)) =
                    client::send_after(addr, &open, &request, Duration::from_secs(5))
                {
                    sent.fetch_add(1, Ordering::SeqCst);
                    if r.status == 200 {
                        passed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `token` on a new connection every `every` until it gets a 200 or `deadline`; when it
/// passed, and the statuses before.
fn poll_until_200(
    stack: &Stack,
    token: &str,
    deadline: Instant,
    every: Duration,
) -> (Option<Instant>, Vec<u16>) {
    let mut statuses = Vec::new();
    loop {
        let r = get(stack, token);
        if r.status == 200 {
            return (Some(Instant::now()), statuses);
        }
        statuses.push(r.status);
        if Instant::now() >= deadline {
            return (None, statuses);
        }
        std::thread::sleep(every);
    }
}

/// A short summary of statuses: `{status: count}`.
fn tally(statuses: &[u16]) -> std::collections::BTreeMap<u16, usize> {
    let mut t = std::collections::BTreeMap::new();
    for s in statuses {
        *t.entry(*s).or_insert(0) += 1;
    }
    t
}

/// Every request that reached the upstream on the filter's route carries the app's identity.
fn assert_only_the_app_went_upstream(stack: &Stack) {
    for request in stack.upstream() {
        if request.path.starts_with("/open") {
            continue;
        }
        assert_eq!(
            request.header("x-credential-identifier"),
            Some(APP_ID),
            "reached the upstream without the app's verdict: {:?}",
            request.path
        );
    }
}

/// The rotation the attack holds back: the next key is published and signs from now on.
fn rotate(stack: &Stack) {
    stack.idp.publish_next_key();
    stack.idp.switch_signing_key();
}

/// Key set fetches the IdP received and answered, for messages.
fn fetches(stack: &Stack) -> String {
    format!(
        "{} received, {} answered",
        stack.idp.jwks_fetches(),
        stack.idp.jwks_answers()
    )
}

/// Keys rotated in after the filter's last fetch, under a flood of made-up `kid`s from clients
/// who hang up: the attacker's own refresh brings the new key in at once, and after a second
/// rotation the next permitted refresh (30 s after the last) does. Unknown `kid`s cost one
/// completed fetch per 30 s. Before the fix, 0 of 100 new-key tokens passed on Envoy.
#[test]
fn clients_hanging_up_on_unknown_kids_cannot_hold_back_a_rotated_key() {
    let stack = stack(Some(KEYS_LATENCY));
    let r = get(&stack, &stack.mint(spec()));
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(stack.idp.jwks_answers(), 1, "{}", fetches(&stack));
    // Published after the filter's only fetch.
    rotate(&stack);
    let second_key = stack.mint(spec());
    let attacker = Attacker::start(&stack);
    let attack_started = Instant::now();
    // The attacker's unknown kids come first: the refresh they ask for is allowed at once (the
    // first fetch was no refresh); it completes and brings the new key, whoever asked.
    attacker.wait_until_sent(20);
    let (second_passed, before) = poll_until_200(
        &stack,
        &second_key,
        attack_started + Duration::from_secs(4),
        Duration::from_millis(100),
    );
    let Some(second_passed) = second_passed else {
        let (sent, _) = attacker.stop();
        panic!(
            "0 of {} tokens of a key published after the last fetch passed in the 4 s after the \
             flood began: {:?}; key set fetches: {}; attacker requests: {sent}",
            before.len(),
            tally(&before),
            fetches(&stack)
        );
    };
    assert_eq!(stack.idp.jwks_answers(), 2, "{}", fetches(&stack));
    // A second rotation right after: its key is unknown until the next permitted refresh,
    // 30 s after the last one, which the flood must not hold back.
    rotate(&stack);
    let third_key = stack.mint(spec());
    let r = get(&stack, &third_key);
    assert_eq!(
        r.status, 401,
        "an unknown kid within 30 s of the last refresh: no fetch, 401; {r:#?}"
    );
    // The last refresh was sent after the flood began and completed before the second key
    // passed: the next one is allowed between those two points plus 30 s.
    let (passed, before) = poll_until_200(
        &stack,
        &third_key,
        second_passed + REFRESH_INTERVAL + Duration::from_secs(4),
        Duration::from_millis(250),
    );
    let (sent, attacker_passed) = attacker.stop();
    let Some(passed) = passed else {
        panic!(
            "0 of {} tokens of a key published after the last fetch passed within 34 s of that \
             fetch: {:?}; key set fetches: {}; attacker requests: {sent}",
            before.len(),
            tally(&before),
            fetches(&stack)
        );
    };
    eprintln!(
        "second key passed {:?} after the flood began, third key {:?} after the second; {sent} \
         attacker requests; key set fetches: {}",
        second_passed - attack_started,
        passed - second_passed,
        fetches(&stack)
    );
    assert!(
        passed - attack_started >= REFRESH_INTERVAL,
        "a second refresh for an unknown kid {:?} after the flood began (at most one per 30 s)",
        passed - attack_started
    );
    assert!(before.iter().all(|s| *s == 401), "{:?}", tally(&before));
    assert!(sent >= 1_000, "the flood sent only {sent} requests");
    assert_eq!(attacker_passed, 0, "a made-up kid passed");
    // The initial fetch, the attacker's refresh, the one 30 s later: each completed.
    assert_eq!(stack.idp.jwks_answers(), 3, "{}", fetches(&stack));
    assert!(stack.idp.jwks_fetches() <= 4, "{}", fetches(&stack));
    assert_only_the_app_went_upstream(&stack);
}

/// A node that starts under the flood: the attacker's own requests bring the key set in, and a
/// valid client's tokens pass within seconds. Before the fix, on Envoy every Bearer request got
/// 503 for a minute (31 fetches sent, none installed).
#[test]
fn a_fresh_node_under_a_flood_of_unknown_kids_gets_its_keys_within_seconds() {
    let stack = stack(Some(KEYS_LATENCY));
    let token = stack.mint(spec());
    let attacker = Attacker::start(&stack);
    let started = Instant::now();
    // The flood asks for the first key set, and has had it answered, before the valid client
    // comes (whose own fetch on ngx_wasm_module would be one more: see the test below).
    // Before the fix the answer was lost (Envoy) or the fetch never sent (ngx): go on anyway.
    attacker.wait_until_sent(20);
    let until = Instant::now() + Duration::from_secs(2);
    while stack.idp.jwks_answers() == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let (passed, before) = poll_until_200(
        &stack,
        &token,
        started + Duration::from_secs(5),
        Duration::from_millis(200),
    );
    let Some(passed) = passed else {
        let (sent, _) = attacker.stop();
        panic!(
            "0 of {} valid tokens passed in the 5 s after the flood began: {:?}; key set \
             fetches: {}; attacker requests: {sent}",
            before.len(),
            tally(&before),
            fetches(&stack)
        );
    };
    eprintln!(
        "a valid token passed {:?} after the flood began ({:?} before)",
        passed - started,
        tally(&before)
    );
    // And keeps passing, with fresh tokens too, while the flood goes on.
    for i in 0..10u32 {
        let token = if i.is_multiple_of(2) {
            token.clone()
        } else {
            stack.mint(spec())
        };
        let r = get(&stack, &token);
        assert_eq!(r.status, 200, "request {i}: {r:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (sent, attacker_passed) = attacker.stop();
    eprintln!(
        "{sent} attacker requests; key set fetches: {}",
        fetches(&stack)
    );
    assert!(sent >= 200, "the flood sent only {sent} requests");
    assert_eq!(attacker_passed, 0, "a made-up kid passed");
    // The first fetch, and at most one refresh for the unknown kids since.
    assert!(
        (1..=2).contains(&stack.idp.jwks_answers()),
        "{}",
        fetches(&stack)
    );
    assert!(stack.idp.jwks_fetches() <= 2, "{}", fetches(&stack));
    assert_only_the_app_went_upstream(&stack);
}

/// `token` after a request to `/open` on the same keep-alive connection: both answers.
fn after_open_route(stack: &Stack, token: &str) -> (Response, Response) {
    let open = client::request_bytes("GET", "/open", &[], true);
    let auth = bearer(token);
    let request = client::request_bytes("GET", "/", &[("authorization", &auth)], false);
    client::send_after(stack.listener(), &open, &request, client::DEFAULT_TIMEOUT)
        .unwrap_or_else(|e| panic!("two requests on one connection: {e}"))
}

/// A token that needs the key set (the first one, then one of a rotated key), sent after a
/// request to a route without the filter on the same keep-alive connection. On Envoy it waits
/// for the fetch and passes. On ngx_wasm_module it may not wait there (kong/README.md row 12):
/// it gets 503 with `Retry-After: 1` at once, the root fetches the set, and a retry in the same
/// position passes. Before the fix, the refused request's fetch was dropped after its stamps:
/// the IdP never saw it, and every retry got 503 (no keys yet) or 401 (a rotated key).
#[test]
fn a_token_that_needs_the_key_set_on_a_reused_connection_gets_its_fetch_made() {
    let stack = Stack::builder()
        .open_route("/open")
        .route("/", filter_config(json!({})))
        .start();
    for (what, fetched) in [("first token, no key set yet", 1), ("rotated key", 2)] {
        if fetched == 2 {
            rotate(&stack);
        }
        let token = stack.mint(spec());
        let (open, r) = after_open_route(&stack, &token);
        assert_eq!(open.status, 200, "{what}: {open:#?}");
        if on_ngx() {
            assert_local_503(&r);
            assert_eq!(r.header("retry-after"), Some("1"), "{what}: {r:#?}");
            let refused = Instant::now();
            let mut statuses = Vec::new();
            let passed = loop {
                std::thread::sleep(Duration::from_millis(250));
                let (_, r) = after_open_route(&stack, &token);
                if r.status == 200 {
                    break true;
                }
                statuses.push(r.status);
                if refused.elapsed() > Duration::from_secs(3) {
                    break false;
                }
            };
            assert!(
                passed,
                "{what}: no retry passed within 3 s: {:?}; key set fetches: {}",
                tally(&statuses),
                fetches(&stack)
            );
        } else {
            assert_eq!(r.status, 200, "{what}: {r:#?}");
        }
        assert_eq!(
            (stack.idp.jwks_fetches(), stack.idp.jwks_answers()),
            (fetched, fetched),
            "{what}: one fetch each time"
        );
        // And on a connection of its own.
        let r = get(&stack, &token);
        assert_eq!(r.status, 200, "{what}: {r:#?}");
    }
    assert_only_the_app_went_upstream(&stack);
}

/// While the gateway has no key set (the key endpoint hangs), an anonymous flood of JWT-shaped
/// tokens must leave a known Basic app its refreshes. On ngx_wasm_module a first-on-connection
/// Bearer request that finds another fetch out sends a fetch of its own (`fetch_own_keys`,
/// without the lease): those once filled the gateway's `max_idp_calls_in_flight` (known app
/// 49-63 of about 113 served, 135-193 key fetches in 12 s), and now are one per worker until
/// their answer or deadline, in the class of unknown credentials.
#[test]
fn without_a_key_set_a_flood_of_bearer_tokens_leaves_known_apps_their_refreshes() {
    let stack = Stack::builder()
        .route("/", filter_config(json!({ "cache_ttl_s": 1 })))
        .component_log_level("wasm", "info")
        // Every fetch times out (idp_timeout_ms: 3 s): the gateway never gets a key set.
        .with_idp(|idp| idp.set_fault(Endpoint::Keys, delay(Duration::from_secs(10))))
        .start();
    let app = stack.client("0oa7keysKnownApp", "keysKnown-Secret_4r6t", &[SCOPE]);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "{r:#?}");
    let issuer = stack.issuer();
    let stop = AtomicBool::new(false);
    let statuses = std::thread::scope(|s| {
        for t in 0..80 {
            let (issuer, stack, stop) = (&issuer, &stack, &stop);
            s.spawn(move || {
                let until = Instant::now() + Duration::from_secs(20);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    n += 1;
                    let token = made_up_kid_token(issuer, t, n);
                    let _ = stack.try_request("GET", "/", &[("authorization", &bearer(&token))]);
                }
            });
        }
        let mut statuses = Vec::new();
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            statuses.push(stack.get("/", &[("authorization", &app.basic())]).status);
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        statuses
    });
    let served = statuses.iter().filter(|s| **s == 200).count();
    eprintln!(
        "known app {served} of {}: {:?}; key set fetches: {}",
        statuses.len(),
        tally(&statuses),
        fetches(&stack)
    );
    assert!(
        served * 100 >= statuses.len() * 99,
        "known app {served} of {}: {:?}; key set fetches: {}",
        statuses.len(),
        tally(&statuses),
        fetches(&stack)
    );
    // No set yet: the gateway's fetch at most every 2 s after the last one ended (3 s timeout:
    // one per 5 s), and on ngx_wasm_module one of its own per worker until its deadline (4 s):
    // over the ~16 s of this test, at most 4 + 2 x 4, plus the first.
    assert!(stack.idp.jwks_fetches() <= 13, "{}", fetches(&stack));
}

/// On ngx_wasm_module, a valid first-on-connection token that comes while the flood's first fetch
/// is out sends a fetch of its own, without the lease (`fetch_own_keys`: no single flight
/// there). When that fetch completes, it must leave the lease of the unknown-kid refresh another
/// worker has out alone (it used to release it, and the next made-up kid started a second
/// refresh: 4 of 4 runs). Expected at most: the first fetch, one own fetch per worker (2), one
/// refresh.
#[test]
fn a_fetch_of_its_own_does_not_release_the_lease_of_a_refresh() {
    let stack = stack(Some(KEYS_LATENCY));
    let token = stack.mint(spec());
    let attacker = Attacker::start(&stack);
    eventually(Duration::from_secs(5), "the flood's first fetch", || {
        (stack.idp.jwks_fetches() >= 1).then_some(())
    });
    // While that fetch is out (150 ms).
    let r = get(&stack, &token);
    assert_eq!(r.status, 200, "{r:#?}");
    std::thread::sleep(Duration::from_secs(1));
    let (sent, attacker_passed) = attacker.stop();
    eprintln!(
        "{sent} attacker requests; key set fetches: {}",
        fetches(&stack)
    );
    assert_eq!(attacker_passed, 0);
    assert!(stack.idp.jwks_fetches() <= 4, "{}", fetches(&stack));
}
