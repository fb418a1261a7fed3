//! The verdict cache under load and outages (issue 4), in a real Envoy with two workers: one IdP
//! call per credential across all workers, stale-if-error, the quota guard after a 429, bounded
//! memory under a flood of distinct bogus credentials, per-configuration keys, and the
//! revocation bound.
//!
//! The negative cache for a wrong secret is pinned by `basic.rs`
//! (`wrong_secret_twice_is_answered_from_the_negative_cache`); its Bearer counterpart (an inactive
//! token twice, one introspection) is the end of the revocation test here.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::client::{self, DEFAULT_TIMEOUT};
use okta_dcr_auth_tests::*;
use serde_json::json;

// These tests are about the introspection path, as it was before local JWT checks.
use okta_dcr_auth_tests::introspection_filter_config as filter_config;

const APP_ID: &str = "0oa9cacheDcrApp";
const APP_SECRET: &str = "cache-Secret_7e6d5c4b3a29";
/// How long the dev IdP takes for the calls the concurrency tests race on.
const SLOW_IDP: Duration = Duration::from_millis(400);
/// Requests sent at once by the single-flight tests.
const CONCURRENT: usize = 64;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Sends `n` `GET path` requests with this `Authorization` at once: one thread and one TCP
/// connection each (so Envoy spreads them over its workers), released together by a barrier.
fn concurrent_gets(stack: &Stack, n: usize, path: &str, authorization: &str) -> Vec<Response> {
    let addr = stack.listener();
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    client::send(
                        addr,
                        "GET",
                        path,
                        &[("authorization", authorization)],
                        DEFAULT_TIMEOUT,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h.join() {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => panic!("concurrent request {i}: {e}"),
                Err(_) => panic!("concurrent request {i}: its thread panicked"),
            })
            .collect()
    })
}

/// Connections accepted so far by each of Envoy's workers (from the per-worker listener stats,
/// `listener.<addr>.worker_<n>.downstream_cx_total`), in worker order; empty when Envoy does
/// not report them.
fn connections_per_worker(stack: &Stack) -> Vec<u64> {
    if on_ngx() {
        return ngx_connections_per_worker(&stack.envoy_log());
    }
    let body = stack
        .admin("/stats?filter=^listener\\..*\\.worker_[0-9]+\\.downstream_cx_total$")
        .body;
    let mut per_worker = BTreeMap::new();
    for line in body.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let Some(worker) = name
            .split('.')
            .find_map(|part| part.strip_prefix("worker_"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<u64>() {
            per_worker.insert(worker, v);
        }
    }
    per_worker.into_values().collect()
}

/// On nginx: the distinct connections (`*N`) each worker (`PID#TID:`) logged a line for, in
/// worker (pid) order. The harness logs at debug, so every connection has lines.
fn ngx_connections_per_worker(log: &str) -> Vec<u64> {
    let mut per_worker: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split_whitespace().skip(3);
        let (Some(pid), Some(conn)) = (words.next(), words.next()) else {
            continue;
        };
        let pid = pid.split('#').next().and_then(|p| p.parse::<u64>().ok());
        let conn = conn.strip_prefix('*').and_then(|c| c.parse::<u64>().ok());
        if let (Some(pid), Some(conn)) = (pid, conn) {
            per_worker.entry(pid).or_default().insert(conn);
        }
    }
    per_worker.into_values().map(|c| c.len() as u64).collect()
}

/// Asserts that every worker accepted at least one connection between `before` and now, so
/// that the requests in between really ran on more than one worker.
fn assert_every_worker_took_connections(stack: &Stack, before: &[u64], what: &str) {
    let after = connections_per_worker(stack);
    assert!(
        after.len() >= 2,
        "Envoy reports no per-worker listener stats: {after:?}"
    );
    let delta: Vec<u64> = after
        .iter()
        .enumerate()
        .map(|(i, a)| a - before.get(i).copied().unwrap_or(0))
        .collect();
    eprintln!("{what}: connections per worker {delta:?}");
    assert!(
        delta.iter().all(|d| *d > 0),
        "{what}: some worker took no connection ({delta:?}); the test did not exercise \
         several workers"
    );
}

/// A 503 from the filter: no challenge, a JSON message.
fn assert_503(r: &Response) {
    assert_local_503(r);
}

/// A counter of the filter's own (`wasmcustom.okta_dcr_auth_<name>`), 0 when absent.
fn filter_stat(stack: &Stack, name: &str) -> u64 {
    stack.filter_counter(name)
}

/// Sleeps until `deadline` (at once when it is past).
fn sleep_until(deadline: Instant) {
    if let Some(d) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// Sleeps until the wall clock reads `ms` since the epoch.
fn sleep_until_epoch_ms(ms: u64) {
    let now = epoch_ms();
    if ms > now {
        std::thread::sleep(Duration::from_millis(ms - now));
    }
}

/// Envoy's heap as the admin `/memory` reports it: (allocated, heap_size), in bytes.
fn envoy_heap(stack: &Stack) -> (u64, u64) {
    let r = stack.admin("/memory");
    let v = r.json();
    let field = |name: &str| -> u64 {
        match &v[name] {
            serde_json::Value::String(s) => s.parse().ok(),
            other => other.as_u64(),
        }
        .unwrap_or_else(|| panic!("admin /memory has no numeric {name:?}: {}", r.body))
    };
    (field("allocated"), field("heap_size"))
}

/// The resident set of the Envoy whose run directory is `<name>-<our pid>-…` (the harness puts
/// it on Envoy's command line), in KiB; None when /proc cannot tell.
fn envoy_rss_kib(name: &str) -> Option<u64> {
    let marker = format!("/integration/{name}-{}-", std::process::id());
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains(&marker) {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    }
    None
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
}

/// Sends one Bearer request per token name `{prefix}-{thread}-{i}` (`per_thread` of them on each
/// of `threads` keep-alive connections, as fast as Envoy answers); the count of each status.
fn flood_bogus_tokens(
    stack: &Stack,
    prefix: &str,
    threads: usize,
    per_thread: usize,
) -> BTreeMap<u16, u64> {
    // RFC 6750 b64token characters only, so the filter takes it to the IdP.
    client::flood(
        stack.listener(),
        threads,
        |i| i < per_thread,
        |t, i| format!("Bearer {prefix}-{t}-{i}.bogusTokenNeverIssued"),
    )
}

// ---------------------------------------------------------------------------------------------
// Single flight
// ---------------------------------------------------------------------------------------------

/// ngx_wasm_module has no single flight: each of the concurrent first requests makes its own
/// call, and so needs its own place in the budget (paced: a tenth of it a second) and among the
/// gateway's calls in flight. Room for the whole burst, on both hosts.
static ROOM_FOR_A_BURST: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(
    || json!({ "idp_calls_per_minute": 100_000, "max_idp_calls_in_flight": 1_000 }),
);

fn assert_every_request_passed(answers: &[Response]) {
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request passes: {statuses:?}\nfirst non-200: {:#?}",
        answers.iter().find(|r| r.status != 200)
    );
}

fn assert_upstream_saw_the_app(stack: &Stack) {
    for req in stack.upstream() {
        assert_eq!(
            upstream_header(&req, "x-credential-identifier"),
            vec![APP_ID]
        );
    }
}

#[test]
fn concurrent_first_basic_requests_on_every_worker_make_one_token_call() {
    let stack = Stack::start(filter_config(ROOM_FOR_A_BURST.clone()));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    stack.idp.set_fault(Endpoint::Token, delay(SLOW_IDP));
    let workers_before = connections_per_worker(&stack);

    let started = Instant::now();
    let answers = concurrent_gets(&stack, CONCURRENT, "/", &app.basic());
    eprintln!(
        "{CONCURRENT} concurrent Basic requests answered in {:?}",
        started.elapsed()
    );

    assert_every_request_passed(&answers);
    if on_ngx() {
        // No single flight on ngx_wasm_module: a request can only be answered from its own
        // callbacks, so each one that finds no verdict makes its own call (kong/README.md).
        let calls = stack.token_calls();
        eprintln!("ngx_wasm_module: {CONCURRENT} concurrent first Basic requests made {calls} token calls");
        assert!(
            (1..=CONCURRENT as u64).contains(&calls),
            "{calls} token calls"
        );
    } else {
        assert_eq!(
            stack.token_calls(),
            1,
            "{CONCURRENT} concurrent first requests with one credential, on every worker, make \
             one token call"
        );
    }
    assert_eq!(stack.echo.count(), CONCURRENT as u64);
    assert_upstream_saw_the_app(&stack);
    assert_every_worker_took_connections(&stack, &workers_before, "Basic single flight");

    // And the verdict is cached: more requests, no more calls.
    stack.idp.clear_faults();
    let calls = stack.token_calls();
    let answers = concurrent_gets(&stack, 8, "/", &app.basic());
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(stack.token_calls(), calls);
}

#[test]
fn concurrent_first_bearer_requests_on_every_worker_make_one_introspection() {
    let stack = Stack::start(filter_config(ROOM_FOR_A_BURST.clone()));
    let token = stack
        .idp
        .mint_token(TokenSpec::for_client(APP_ID, &[SCOPE]));
    stack.track_secret(&token);
    stack.idp.set_fault(Endpoint::Introspect, delay(SLOW_IDP));
    let workers_before = connections_per_worker(&stack);

    let started = Instant::now();
    let answers = concurrent_gets(&stack, CONCURRENT, "/", &format!("Bearer {token}"));
    eprintln!(
        "{CONCURRENT} concurrent Bearer requests answered in {:?}",
        started.elapsed()
    );

    assert_every_request_passed(&answers);
    if on_ngx() {
        let calls = stack.idp.introspections(&token);
        eprintln!(
            "ngx_wasm_module: {CONCURRENT} concurrent first Bearer requests made {calls} introspections"
        );
        assert!(
            (1..=CONCURRENT as u64).contains(&calls),
            "{calls} introspections"
        );
        assert_eq!(stack.idp.calls(Endpoint::Introspect), calls);
    } else {
        assert_eq!(
            stack.idp.introspections(&token),
            1,
            "{CONCURRENT} concurrent first requests with one token, on every worker, make one \
             introspection"
        );
        assert_eq!(stack.idp.calls(Endpoint::Introspect), 1);
    }
    assert_eq!(stack.echo.count(), CONCURRENT as u64);
    assert_upstream_saw_the_app(&stack);
    assert_every_worker_took_connections(&stack, &workers_before, "Bearer single flight");
}

// ---------------------------------------------------------------------------------------------
// Stale if error
// ---------------------------------------------------------------------------------------------

#[test]
fn stale_verdict_serves_while_the_idp_answers_503_and_is_refreshed_once_it_recovers() {
    let stack = Stack::start(filter_config(
        json!({ "cache_ttl_s": 1, "stale_if_error_s": 30 }),
    ));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let newcomer = stack.client("0oa9neverSeenApp", "neverSeen-Secret_a1b2c3d4", &[SCOPE]);

    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let decided = Instant::now();
    assert_eq!(stack.token_calls(), 1);

    // The verdict was decided before `decided`, so it has expired 1 s later.
    sleep_until(decided + Duration::from_millis(1300));
    stack
        .idp
        .set_fault(Endpoint::Token, fault(FaultAnswer::Status(503)));
    stack.echo.clear();

    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(
        r.status, 200,
        "a verdict that expired less than stale_if_error_s ago serves while the IdP answers \
         503: {r:#?}"
    );
    assert_eq!(
        stack.token_calls(),
        2,
        "the IdP is asked before serving stale"
    );
    assert_eq!(
        upstream_header(&stack.single_upstream_request(), "x-credential-identifier"),
        vec![APP_ID]
    );
    if !envoy_only("the cache_stale_serves counter (Envoy's admin /stats)") {
        assert_eq!(filter_stat(&stack, "cache_stale_serves"), 1);
    }
    stack.echo.clear();

    let r = stack.get("/", &[("authorization", &newcomer.basic())]);
    assert_503(&r);
    assert_eq!(
        stack.echo.count(),
        0,
        "a credential never seen gets no stale pass"
    );
    assert_eq!(stack.token_calls(), 3);

    // Two failures so far: below the quota guard's threshold, so the IdP is asked again.
    stack.idp.clear_faults();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "after recovery: {r:#?}");
    assert_eq!(
        stack.token_calls(),
        4,
        "once the IdP is back, the stale verdict is re-validated"
    );
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(stack.token_calls(), 4, "and the fresh verdict is cached");
    let r = stack.get("/", &[("authorization", &newcomer.basic())]);
    assert_eq!(
        r.status, 200,
        "the newcomer passes once the IdP is back: {r:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Quota guard
// ---------------------------------------------------------------------------------------------

#[test]
fn a_429_pauses_idp_calls_on_every_worker_until_the_rate_limit_resets() {
    // The wasm log at debug, not trace: the plugin logs nothing at trace, and Envoy's trace of
    // every host call (some 270 000 lines while 3 VMs create the default 16 384 slots) would
    // make the drop-time sweep for this test's ~70 secrets take a minute.
    let stack = Stack::builder()
        .route("/", filter_config(json!({})))
        .component_log_level("wasm", "debug")
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    stack.idp.set_fault(
        Endpoint::Token,
        fault(FaultAnswer::RateLimited { reset_in_secs: 2 }),
    );

    // The dev IdP's reset is `its epoch second + 2`, so calls are paused from the 429 until a
    // whole second between `floor(sent) + 2` and `floor(answered) + 2`.
    let sent_ms = epoch_ms();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    let answered_ms = epoch_ms();
    assert_503(&r);
    assert_eq!(stack.token_calls(), 1);
    let paused_at_least_until_ms = (sent_ms / 1000 + 2) * 1000;
    let paused_at_most_until_ms = (answered_ms / 1000 + 2) * 1000;
    stack.idp.clear_faults();

    // Meanwhile new credentials (valid ones) get 503 on every worker, and the IdP hears nothing.
    let workers_before = connections_per_worker(&stack);
    let mut probes = 0;
    let mut round = 0;
    while epoch_ms() + 300 < paused_at_least_until_ms {
        let apps: Vec<TestClient> = (0..4)
            .map(|i| {
                stack.client(
                    &format!("0oa9quotaProbe{round}x{i}"),
                    &format!("quotaProbe-Secret_{round}x{i}"),
                    &[SCOPE],
                )
            })
            .collect();
        let addr = stack.listener();
        let answers: Vec<Response> = std::thread::scope(|s| {
            let handles: Vec<_> = apps
                .iter()
                .map(|a| {
                    let auth = a.basic();
                    s.spawn(move || {
                        client::send(
                            addr,
                            "GET",
                            "/",
                            &[("authorization", &auth)],
                            DEFAULT_TIMEOUT,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => panic!("probe: {e}"),
                    Err(_) => panic!("probe thread panicked"),
                })
                .collect()
        });
        for r in &answers {
            assert_503(r);
        }
        probes += answers.len();
        assert_eq!(
            stack.token_calls(),
            1,
            "no IdP call before the rate limit resets ({} ms left)",
            paused_at_least_until_ms.saturating_sub(epoch_ms())
        );
        round += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{probes} probes answered 503 without an IdP call while the rate limit held");
    assert!(probes >= 8, "only {probes} probes fit in the window");
    assert_eq!(stack.echo.count(), 0);
    assert_every_worker_took_connections(&stack, &workers_before, "quota guard probes");

    // Past the reset, a request reaches the IdP again and passes.
    sleep_until_epoch_ms(paused_at_most_until_ms + 100);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "after the rate limit reset: {r:#?}");
    assert_eq!(stack.token_calls(), 2, "one call after the reset");
}

// ---------------------------------------------------------------------------------------------
// Bounded memory
// ---------------------------------------------------------------------------------------------

/// Distinct bogus tokens in the flood (and the warm-up before each heap reading).
const FLOOD_THREADS: usize = 8;
const FLOOD_PER_THREAD: usize = 5_000;
const WARMUP_PER_THREAD: usize = 250;
const FLOOD: usize = FLOOD_THREADS * FLOOD_PER_THREAD;
const WARMUP: usize = FLOOD_THREADS * WARMUP_PER_THREAD;
/// How much Envoy's heap (`/memory` `allocated`) may grow during the flood: allocator noise and
/// bookkeeping. One shared-data key per credential would be several times this (the test
/// measures what a key costs and checks).
const HEAP_GROWTH_BOUND: f64 = 2.0 * 1024.0 * 1024.0;

/// A stack for the heap measurements: `cache_slots` slots, the wasm log at info (a line per
/// decision at debug would only slow the flood down), warmed up with `WARMUP` bogus tokens. The
/// IdP call budget is out of the way: this measures memory, and every bogus token must reach
/// the IdP (and its answer the cache).
fn warm_heap_stack(name: &str, cache_slots: usize) -> Stack {
    let config = json!({ "cache_slots": cache_slots, "idp_calls_per_minute": 100_000 });
    let stack = Stack::builder()
        .name(name)
        .route("/", filter_config(config))
        .component_log_level("wasm", "info")
        .start();
    let statuses = flood_bogus_tokens(&stack, "warmup", FLOOD_THREADS, WARMUP_PER_THREAD);
    assert_eq!(
        statuses,
        BTreeMap::from([(401, WARMUP as u64)]),
        "every unknown token is a 401"
    );
    stack
}

#[test]
fn a_flood_of_distinct_bogus_tokens_leaves_envoys_heap_where_it_was() {
    if envoy_only("Envoy's heap, read from its admin /memory") {
        return;
    }
    const SLOTS: usize = 64;
    let name = "cache_heap_flood";
    let stack = warm_heap_stack(name, SLOTS);
    let (before, heap_before) = envoy_heap(&stack);
    let rss_before = envoy_rss_kib(name);
    let calls_before = stack.idp.calls(Endpoint::Introspect);

    let started = Instant::now();
    let statuses = flood_bogus_tokens(&stack, "flood", FLOOD_THREADS, FLOOD_PER_THREAD);
    let took = started.elapsed();
    eprintln!(
        "{FLOOD} distinct bogus tokens in {took:?} ({:.0} requests/s)",
        FLOOD as f64 / took.as_secs_f64()
    );
    assert_eq!(
        statuses,
        BTreeMap::from([(401, FLOOD as u64)]),
        "every unknown token is a 401"
    );
    assert_eq!(
        stack.idp.calls(Endpoint::Introspect) - calls_before,
        FLOOD as u64,
        "each distinct token is introspected once"
    );

    let (after, heap_after) = envoy_heap(&stack);
    let rss_after = envoy_rss_kib(name);
    let growth = after as f64 - before as f64;
    eprintln!(
        "Envoy /memory with cache_slots {SLOTS}: allocated {before} -> {after} bytes ({}), \
         heap_size {heap_before} -> {heap_after}; VmRSS {rss_before:?} -> {rss_after:?} KiB",
        mib(growth)
    );

    // What keeping one shared-data key per credential would cost, measured in this Envoy: the
    // same warmed-up stack with a table of FLOOD slots (each an existing key, as the filter
    // creates its slots at start) against this one's 64.
    let calibration_name = "cache_heap_calibration";
    let calibration = warm_heap_stack(calibration_name, FLOOD);
    let (with_flood_keys, _) = envoy_heap(&calibration);
    drop(calibration);
    // The table keeps WAYS (4) entries under each shared-data key.
    let per_key_cost = (with_flood_keys as f64 - before as f64) / ((FLOOD - SLOTS) / 4) as f64;
    // The sets hold a 1-byte placeholder; a negative entry is 70 bytes more (magic, key hash,
    // four times, tags), which a per-credential key would add too.
    let estimate = FLOOD as f64 * (per_key_cost + 70.0);
    eprintln!(
        "calibration: {FLOOD} slots allocate {} more than {SLOTS} ({per_key_cost:.0} bytes a \
         key); one key per bogus credential would have grown the heap by about {}",
        mib(with_flood_keys as f64 - before as f64),
        mib(estimate)
    );
    assert!(
        estimate > 2.0 * HEAP_GROWTH_BOUND,
        "one key per credential would cost only {} here (about {per_key_cost:.0} bytes a key): \
         either /memory does not see shared data, or the flood is too small for the bound of {} \
         to tell a leak from noise",
        mib(estimate),
        mib(HEAP_GROWTH_BOUND)
    );

    eprintln!(
        "the growth is worth at most {:.0} shared-data keys",
        growth.max(0.0) / per_key_cost
    );
    assert!(
        growth < HEAP_GROWTH_BOUND,
        "Envoy's heap grew by {} after {FLOOD} distinct bogus tokens with cache_slots {SLOTS} \
         (bound {}; a key per credential would be about {})",
        mib(growth),
        mib(HEAP_GROWTH_BOUND),
        mib(estimate)
    );
}

// ---------------------------------------------------------------------------------------------
// Keys per configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn each_route_configuration_validates_a_token_for_itself() {
    let stack = Stack::builder()
        .route("/any", filter_config(json!({ "audience": null })))
        .route(
            "/orders",
            filter_config(json!({ "audience": "api://orders" })),
        )
        .start();
    let mut for_orders = TokenSpec::for_client(APP_ID, &[SCOPE]);
    for_orders.audience = Some("api://orders".into());
    let for_orders = stack.idp.mint_token(for_orders);
    let elsewhere = stack
        .idp
        .mint_token(TokenSpec::for_client(APP_ID, &[SCOPE]));
    stack.track_secret(&for_orders);
    stack.track_secret(&elsewhere);
    let bearer = |t: &str| format!("Bearer {t}");

    // A token both configurations accept: each asks the IdP once, then answers from its cache.
    let r = stack.get("/any", &[("authorization", &bearer(&for_orders))]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(stack.idp.introspections(&for_orders), 1);
    let r = stack.get("/orders", &[("authorization", &bearer(&for_orders))]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    assert_eq!(
        stack.idp.introspections(&for_orders),
        2,
        "another configuration does not reuse the first one's verdict"
    );
    for path in ["/any", "/orders", "/any", "/orders"] {
        let r = stack.get(path, &[("authorization", &bearer(&for_orders))]);
        assert_eq!(r.status, 200, "{path}: {r:#?}");
    }
    assert_eq!(
        stack.idp.introspections(&for_orders),
        2,
        "both verdicts cached"
    );

    // A token only the first accepts: the cached "yes" of /any does not answer for /orders, and
    // the "no" of /orders does not replace it.
    let r = stack.get("/any", &[("authorization", &bearer(&elsewhere))]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let r = stack.get("/orders", &[("authorization", &bearer(&elsewhere))]);
    assert_local_reply(&r, 401);
    assert_eq!(r.www_authenticate(), vec![INVALID_TOKEN_CHALLENGE]);
    assert_eq!(stack.idp.introspections(&elsewhere), 2);
    let r = stack.get("/any", &[("authorization", &bearer(&elsewhere))]);
    assert_eq!(
        r.status, 200,
        "the first route's verdict still serves: {r:#?}"
    );
    let r = stack.get("/orders", &[("authorization", &bearer(&elsewhere))]);
    assert_local_reply(&r, 401);
    assert_eq!(
        stack.idp.introspections(&elsewhere),
        2,
        "both verdicts cached"
    );
}

// ---------------------------------------------------------------------------------------------
// Revocation bound
// ---------------------------------------------------------------------------------------------

/// The `cache_ttl_s` of the revocation tests.
const SHORT_TTL: Duration = Duration::from_secs(2);
/// Margin past an expiry before asserting the verdict is gone.
const EXPIRY_SLACK: Duration = Duration::from_millis(300);

#[test]
fn a_rotated_away_secret_passes_until_cache_ttl_s_while_the_new_one_works_at_once() {
    let stack = Stack::start(filter_config(json!({ "cache_ttl_s": SHORT_TTL.as_secs() })));
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let rotated = "rotated-Secret_0f1e2d3c4b5a";
    stack.track_secret(rotated);

    let sent = Instant::now();
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let decided = Instant::now();
    assert_eq!(stack.token_calls(), 1);

    stack.idp.set_client_secret(APP_ID, rotated);
    let r = stack.get("/", &[("authorization", &app.basic_with_secret(rotated))]);
    assert_eq!(r.status, 200, "the new secret works at once: {r:#?}");
    assert_eq!(
        stack.token_calls(),
        2,
        "the new secret is a new key: a new call"
    );

    let r = stack.get("/", &[("authorization", &app.basic())]);
    let elapsed = sent.elapsed();
    if elapsed < SHORT_TTL {
        assert_eq!(
            r.status, 200,
            "within cache_ttl_s the old secret's cached verdict still serves (the documented \
             revocation bound): {r:#?}"
        );
        assert_eq!(stack.token_calls(), 2, "served from the cache");
    } else {
        eprintln!("the machine is too slow to check the old secret within its TTL ({elapsed:?})");
    }

    sleep_until(decided + SHORT_TTL + EXPIRY_SLACK);
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_local_reply(&r, 401);
    assert_eq!(r.www_authenticate(), vec![BASIC_CHALLENGE]);
    let calls = stack.token_calls();
    assert_eq!(calls, 3, "past cache_ttl_s the old secret is checked again");
    assert_eq!(
        stack
            .idp
            .token_requests()
            .last()
            .map(|t| t.client_secret.as_str()),
        Some(APP_SECRET)
    );
    let r = stack.get("/", &[("authorization", &app.basic())]);
    assert_local_reply(&r, 401);
    assert_eq!(stack.token_calls(), calls, "and its refusal is cached");
    let r = stack.get("/", &[("authorization", &app.basic_with_secret(rotated))]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
}

#[test]
fn a_revoked_token_passes_until_cache_ttl_s_then_is_refused() {
    let stack = Stack::start(filter_config(json!({ "cache_ttl_s": SHORT_TTL.as_secs() })));
    let token = stack
        .idp
        .mint_token(TokenSpec::for_client(APP_ID, &[SCOPE]));
    stack.track_secret(&token);
    let auth = format!("Bearer {token}");

    let sent = Instant::now();
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "answer: {r:#?}");
    let decided = Instant::now();
    assert_eq!(stack.idp.introspections(&token), 1);

    stack.idp.revoke(&token);
    let r = stack.get("/", &[("authorization", &auth)]);
    let elapsed = sent.elapsed();
    if elapsed < SHORT_TTL {
        assert_eq!(
            r.status, 200,
            "within cache_ttl_s the cached verdict still serves (the documented revocation \
             bound): {r:#?}"
        );
        assert_eq!(stack.idp.introspections(&token), 1, "served from the cache");
    } else {
        eprintln!("the machine is too slow to check the token within its TTL ({elapsed:?})");
    }

    sleep_until(decided + SHORT_TTL + EXPIRY_SLACK);
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_local_reply(&r, 401);
    assert_eq!(r.www_authenticate(), vec![INVALID_TOKEN_CHALLENGE]);
    let calls = stack.idp.introspections(&token);
    assert_eq!(calls, 2, "past cache_ttl_s the token is introspected again");

    // The inactive verdict is a negative cache entry: no more introspections.
    let r = stack.get("/", &[("authorization", &auth)]);
    assert_local_reply(&r, 401);
    assert_eq!(
        stack.idp.introspections(&token),
        calls,
        "an inactive token twice: one introspection"
    );
}
