//! The soak (issue 6, `make soak`, about 80 s; never part of `make test`): `wrk` with
//! `tests/soak/soak.lua` against Envoy (2 workers) with the filter, in front of the dev IdP and
//! the echo, mixing valid Basic, valid Bearer, wrong secrets, inactive tokens and garbage over
//! many connections, in four phases: healthy, the IdP failing (delays past the timeout, 5xx,
//! resets, 429, slow answers), healthy again, and an attack: while the wrk mix goes on, an
//! anonymous client floods distinct bogus Basic credentials, bogus JWT-shaped tokens for this
//! issuer and garbage as fast as it can, against a dev IdP with Okta-like rate limits.
//!
//! In the attack, valid requests must be 99.9% 200, Okta must never answer 429 (the filter's
//! budget holds), and the IdP calls stay within the budget.
//!
//! The run fails when a single request with invalid credentials reached the upstream (the echo
//! records every request; each carries `x-soak-kind`), when the upstream saw another identity
//! than the credential's, when a single valid request was answered 401 or 403, or when one was
//! refused at all while the IdP was healthy. A 503 is allowed for valid requests only while the
//! faults are on and in a short recovery after them (the filter's quota guard may hold IdP calls
//! back for up to 10 s after repeated failures). Cached verdicts let many valid requests pass
//! during the faults.
//!
//! Knobs: `SOAK_SECS` (80), `SOAK_CONNECTIONS` (32, one wrk thread each).
//!
//!     cargo test -p okta-dcr-auth-tests --test soak -- --ignored --nocapture

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::client;
use okta_dcr_auth_tests::*;
use serde_json::json;

// These tests are about the introspection path, as it was before local JWT checks.
use okta_dcr_auth_tests::introspection_filter_config as filter_config;

/// Valid clients (and as many valid tokens, wrong secrets, inactive tokens).
const CLIENTS: usize = 16;
/// The filter's IdP timeout; the fault delays are on either side of it.
const IDP_TIMEOUT_MS: u64 = 1000;
/// The filter's longest quota-guard pause after repeated failures (gate.rs FAILURE_MAX_PAUSE_MS).
const MAX_PAUSE: Duration = Duration::from_millis(10_000 + IDP_TIMEOUT_MS);
/// The longest a request may wait for a verdict once calls are allowed again (a lease: the
/// timeout and 1 s), and a second for the answer to travel.
const SETTLE: Duration = Duration::from_millis(2 * IDP_TIMEOUT_MS + 2000);
/// The filter's IdP call budget per endpoint: sized for the soak's clients as docs/operations.md's
/// fleet sizing says (16 credentials per endpoint refreshed every 2 s: 480 calls a minute, within
/// the 20% reserved for refreshes).
const BUDGET: u64 = 3_000;
/// The dev IdP's Okta-like limit per endpoint during the attack, above the budget.
const OKTA_LIMIT: u32 = 3_600;
/// Connections of the attacker: distinct bogus Basic, bogus JWT-shaped tokens, garbage.
const ATTACK_THREADS: usize = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Healthy,
    Faults,
    Recovery,
    HealthyAgain,
    Attack,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Faults => "faults",
            Phase::Recovery => "recovery",
            Phase::HealthyAgain => "healthy-again",
            Phase::Attack => "attack",
        }
    }
}

/// One step of the fault schedule: what the token and introspection endpoints do.
struct FaultStep {
    what: &'static str,
    token: Option<Fault>,
    introspect: Option<Fault>,
    /// How long after the step's end the filter's quota guard may still hold IdP calls back:
    /// 10 s after repeated 5xx or silence (its longest pause, counted from a call that fails up
    /// to the timeout later), the reset (+1 s) after a 429, nothing after answers that are
    /// verdicts.
    pause_after: Duration,
}

fn fault_schedule() -> Vec<FaultStep> {
    let slow = |ms| Some(delay(Duration::from_millis(ms)));
    vec![
        FaultStep {
            what: "token: delay past the timeout; introspection: 500",
            token: slow(IDP_TIMEOUT_MS + 500),
            introspect: Some(fault(FaultAnswer::Status(500))),
            pause_after: MAX_PAUSE,
        },
        FaultStep {
            what: "token: 503; introspection: connection reset",
            token: Some(fault(FaultAnswer::Status(503))),
            introspect: Some(fault(FaultAnswer::ResetConnection)),
            pause_after: MAX_PAUSE,
        },
        FaultStep {
            what: "both: delay past the timeout",
            token: slow(IDP_TIMEOUT_MS + 500),
            introspect: slow(IDP_TIMEOUT_MS + 500),
            pause_after: MAX_PAUSE,
        },
        FaultStep {
            what: "both: 429 (reset in 2 s)",
            token: Some(fault(FaultAnswer::RateLimited { reset_in_secs: 2 })),
            introspect: Some(fault(FaultAnswer::RateLimited { reset_in_secs: 2 })),
            pause_after: Duration::from_secs(3),
        },
        FaultStep {
            what: "both: slow (300 ms, within the timeout)",
            token: slow(300),
            introspect: slow(300),
            pause_after: Duration::ZERO,
        },
    ]
}

/// Whether a case is sent with valid credentials (as `x-soak-kind` says).
fn is_valid(what: &str) -> bool {
    what == "basic" || what == "bearer"
}

/// What reached the upstream, checked as it comes (the echo keeps the last 10 000 requests, so
/// the test reads it often and only the new tail each time).
#[derive(Default)]
struct Upstream {
    seen: HashSet<String>,
    by_what: BTreeMap<String, u64>,
    violations: Vec<String>,
    /// Tokens that went upstream (Okta's, forwarded on the Basic path; the clients' on Bearer).
    tokens: HashSet<String>,
}

impl Upstream {
    fn poll(&mut self, echo: &EchoHandle) {
        let records = echo.requests();
        let mut new = Vec::new();
        for r in records.iter().rev() {
            let seq = r.header("x-soak-seq").unwrap_or("").to_string();
            if self.seen.contains(&seq) {
                break;
            }
            new.push((seq, r));
        }
        for (seq, r) in new.into_iter().rev() {
            let kind = r.header("x-soak-kind").unwrap_or("");
            let what = r.header("x-soak-what").unwrap_or("");
            if kind != "valid" || !is_valid(what) {
                self.violations.push(format!(
                    "an invalid request reached the upstream ({kind} {what} {seq}): {r:?}"
                ));
            }
            let identity = upstream_header(r, "x-credential-identifier");
            let expected = r.header("x-soak-id").unwrap_or("<none>");
            if identity != [expected] {
                self.violations.push(format!(
                    "identity {identity:?} upstream for a credential of {expected} ({seq}): {r:?}"
                ));
            }
            if let Some(auth) = r.header("authorization") {
                if !auth.starts_with("Bearer ") {
                    self.violations.push(format!(
                        "a non-Bearer authorization went upstream ({seq}): {r:?}"
                    ));
                }
                self.tokens
                    .insert(auth.trim_start_matches("Bearer ").to_string());
            }
            *self.by_what.entry(what.to_string()).or_default() += 1;
            if !self.seen.insert(seq.clone()) || seq.is_empty() {
                self.violations
                    .push(format!("a request without a unique x-soak-seq: {r:?}"));
            }
        }
    }
}

/// wrk's tallies: (what, status, 100 ms bucket) -> count, and its summary line.
struct Tallies {
    counts: Vec<(String, u16, u64, u64)>,
    summary: BTreeMap<String, u64>,
}

fn read_tallies(path: &PathBuf) -> Tallies {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("wrk wrote no tallies to {}: {e}", path.display()));
    let mut counts = Vec::new();
    let mut summary = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.first() == Some(&"summary") {
            for kv in &parts[1..] {
                if let Some((k, v)) = kv.split_once('=') {
                    summary.insert(k.to_string(), v.parse().unwrap_or(0));
                }
            }
        } else if let [what, status, bucket, count] = parts[..] {
            counts.push((
                what.to_string(),
                status.parse().unwrap_or(0),
                bucket.parse().unwrap_or(0),
                count.parse().unwrap_or(0),
            ));
        }
    }
    Tallies { counts, summary }
}

/// What the attack phase must show: valid requests 99.9% 200, no 429 from the dev IdP, IdP calls
/// within the budget, the attacker refused (401, or 503 past the budget).
fn attack_failures(
    table: &BTreeMap<(Phase, String), BTreeMap<u16, u64>>,
    attack: &BTreeMap<u16, u64>,
    calls: Option<(u64, u64)>,
    stack: &Stack,
) -> Vec<String> {
    let Some((token_calls, introspections)) = calls else {
        return vec!["the attack phase never began (SOAK_SECS too short?)".into()];
    };
    let mut failures = Vec::new();
    let (mut ok, mut all) = (0, 0);
    for ((phase, what), by_status) in table {
        if *phase == Phase::Attack && is_valid(what) {
            ok += by_status.get(&200).copied().unwrap_or(0);
            all += by_status.values().sum::<u64>();
        }
    }
    eprintln!(
        "attack: valid {ok} of {all} answered 200; the attacker's {attack:?}; IdP calls during \
         it: token {token_calls}, introspection {introspections} (budget {BUDGET} a minute each)"
    );
    if all == 0 || (ok as f64) < 0.999 * all as f64 {
        failures.push(format!(
            "attack: only {ok} of {all} valid requests answered 200"
        ));
    }
    if attack.keys().any(|s| ![401, 503].contains(s)) || attack.is_empty() {
        failures.push(format!("attack: the attacker got {attack:?}"));
    }
    for ep in [Endpoint::Token, Endpoint::Introspect] {
        let limited = stack.idp.rate_limited(ep);
        if limited > 0 {
            failures.push(format!(
                "attack: the dev IdP answered {limited} x 429 on {ep:?}"
            ));
        }
    }
    if token_calls.max(introspections) > BUDGET {
        failures.push(format!(
            "attack: {token_calls} token and {introspections} introspection calls, over the budget"
        ));
    }
    failures
}

/// The Lua file of credentials the script reads (`SOAK_CREDS`).
fn lua_string(s: &str) -> String {
    format!("{s:?}")
}

#[test]
#[ignore = "the soak: about 60 s of load (make soak)"]
fn soak() {
    let secs = env_u64("SOAK_SECS", 80).max(40);
    let connections = env_u64("SOAK_CONNECTIONS", 32).max(2);
    let wrk = std::env::var("WRK").unwrap_or_else(|_| "wrk".into());
    let has_wrk = Command::new(&wrk)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        has_wrk,
        "wrk not found ({wrk}): `apt-get install -y wrk` (make soak does it)"
    );
    let script = envoy::workspace_root().join("tests/soak/soak.lua");
    assert!(script.is_file(), "{} is missing", script.display());
    let dir = envoy::target_dir().join("soak");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let creds_path = dir.join("creds.lua");
    let out_path = dir.join("tallies.txt");
    let _ = std::fs::remove_file(&out_path);

    // Short cache lifetimes, so that verdicts expire and the IdP is asked all along (and
    // during the faults); trace would log every host call of every request: info.
    let mut stack = Stack::builder()
        .route(
            "/",
            filter_config(json!({
                "cache_ttl_s": 2,
                "negative_cache_ttl_s": 1,
                "idp_timeout_ms": IDP_TIMEOUT_MS,
                "idp_calls_per_minute": BUDGET,
                // local refusal of what cannot be this issuer's JWT (the garbage costs no call)
                "bearer_format": "jwt",
            })),
        )
        .component_log_level("wasm", "info")
        .start();
    // The drop-time sweep would look for every token of the 10 000 upstream records: sweep here,
    // once per distinct secret.
    stack.no_sweep_on_drop();

    let mut secrets: Vec<String> = vec![
        GATEWAY_CLIENT_SECRET.to_string(),
        "attack-Secret".to_string(),
    ];
    let mut lua = String::from("return {\n");
    let (mut basic, mut bearer, mut wrong, mut inactive, mut two) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..CLIENTS {
        let id = format!("0oa8soakApp{i:02}");
        let secret = format!("soak-Secret_{i:02}_7d1c9e4b2a");
        let app = stack.client(&id, &secret, &[SCOPE]);
        let auth = if i % 2 == 0 { app.basic() } else { app.raw() };
        basic.push(format!("{{{}, {}}}", lua_string(&auth), lua_string(&id)));
        let token = stack.idp.mint_token(TokenSpec::for_client(&id, &[SCOPE]));
        bearer.push(format!(
            "{{{}, {}}}",
            lua_string(&format!("Bearer {token}")),
            lua_string(&id)
        ));
        let wrong_secret = format!("soak-Wrong_{i:02}_3f8a6c0e5d");
        wrong.push(lua_string(&app.basic_with_secret(&wrong_secret)));
        let mut spec = TokenSpec::for_client(&id, &[SCOPE]);
        if i % 2 == 0 {
            spec.expires_in_secs = -60;
        }
        let dead = stack.idp.mint_token(spec);
        if i % 2 == 1 {
            stack.idp.revoke(&dead);
        }
        inactive.push(lua_string(&format!("Bearer {dead}")));
        two.push(lua_string(&format!("{}, Bearer {token}", app.basic())));
        secrets.extend([secret, wrong_secret, token, dead]);
    }
    for (name, list) in [
        ("basic", basic),
        ("bearer", bearer),
        ("wrong", wrong),
        ("inactive", inactive),
        ("two", two),
    ] {
        let _ = writeln!(lua, "  {name} = {{\n    {}\n  }},", list.join(",\n    "));
    }
    lua.push_str("}\n");
    std::fs::write(&creds_path, lua).unwrap_or_else(|e| panic!("{}: {e}", creds_path.display()));

    // Phases: healthy for a quarter, faults for a quarter (five steps), healthy again, and the
    // attack in the last quarter (once the recovery is over).
    let quarter = Duration::from_secs(secs / 4);
    let attack_at = Duration::from_secs(secs - secs / 4);
    let schedule = fault_schedule();
    let step_len = quarter / schedule.len() as u32;
    let url = format!("http://{}/soak", stack.listener());
    eprintln!(
        "soak: {secs} s, {connections} connections, Envoy --concurrency 2, {CLIENTS} clients; {url}"
    );
    let started = Instant::now();
    let mut child = Command::new(&wrk)
        .args([
            "-t",
            &connections.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-d", &format!("{secs}s"), "--timeout", "5s", "--latency"])
        .arg("-s")
        .arg(&script)
        .arg(&url)
        .env("SOAK_CREDS", &creds_path)
        .env("SOAK_OUT", &out_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {wrk}: {e}"));

    let mut upstream = Upstream::default();
    // (epoch ms when it began, phase), and the IdP's counters at each change.
    let mut phases: Vec<(u64, Phase)> = vec![(epoch_ms(), Phase::Healthy)];
    let mut idp_marks: Vec<(Phase, u64, u64)> = vec![(Phase::Healthy, 0, 0)];
    let counters = |s: &Stack| (s.token_calls(), s.idp.calls(Endpoint::Introspect));
    let mut step_on: Option<usize> = None;
    let mut faults_over = false;
    let mut last_poll = Instant::now();
    let wrk_ends = started + Duration::from_secs(secs);
    let issuer = stack.issuer();
    let attack = std::thread::scope(|scope| {
        let mut attack = None;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if attack.is_none() && idp_marks.len() == 4 && started.elapsed() >= attack_at {
                let (tk, int) = counters(&stack);
                phases.push((epoch_ms(), Phase::Attack));
                idp_marks.push((Phase::Attack, tk, int));
                for ep in [Endpoint::Token, Endpoint::Introspect] {
                    stack
                        .idp
                        .set_rate_limit(ep, RateLimit::per_minute(OKTA_LIMIT));
                }
                eprintln!(
                    "soak: {:>5.1} s: attack: {ATTACK_THREADS} connections of bogus credentials; \
                 the dev IdP limits each endpoint to {OKTA_LIMIT} calls a minute",
                    started.elapsed().as_secs_f64()
                );
                let (listener, issuer) = (stack.listener(), issuer.as_str());
                attack = Some(scope.spawn(move || {
                    client::flood(
                        listener,
                        ATTACK_THREADS,
                        |_| Instant::now() < wrk_ends,
                        |t, i| match t {
                            0 => basic_header(&format!("0oa8attack{i}"), "attack-Secret"),
                            1 => jwt_shaped(issuer, &format!("attack{i}")),
                            _ => format!("Bearer garbage{i}"),
                        },
                    )
                }));
            }
            let t = started.elapsed();
            let want = (t >= quarter && t < 2 * quarter).then(|| {
                (((t - quarter).as_millis() / step_len.as_millis().max(1)) as usize)
                    .min(schedule.len() - 1)
            });
            if want != step_on {
                if let Some(i) = want {
                    let step = &schedule[i];
                    stack.idp.clear_faults();
                    if let Some(f) = &step.token {
                        stack.idp.set_fault(Endpoint::Token, f.clone());
                    }
                    if let Some(f) = &step.introspect {
                        stack.idp.set_fault(Endpoint::Introspect, f.clone());
                    }
                    if step_on.is_none() {
                        let (tk, int) = counters(&stack);
                        phases.push((epoch_ms(), Phase::Faults));
                        idp_marks.push((Phase::Faults, tk, int));
                    }
                    eprintln!("soak: {:>5.1} s: faults: {}", t.as_secs_f64(), step.what);
                } else if !faults_over {
                    stack.idp.clear_faults();
                    faults_over = true;
                    let now = epoch_ms();
                    let (tk, int) = counters(&stack);
                    phases.push((now, Phase::Recovery));
                    idp_marks.push((Phase::Recovery, tk, int));
                    // Until the last pause a fault step may have caused is over, and requests
                    // waiting then had their verdict.
                    let steps = schedule.len() as u32;
                    let recovery = schedule
                        .iter()
                        .enumerate()
                        .map(|(i, st)| {
                            (step_len * (i as u32 + 1) + st.pause_after)
                                .saturating_sub(step_len * steps)
                        })
                        .max()
                        .unwrap_or_default()
                        + SETTLE;
                    phases.push((now + recovery.as_millis() as u64, Phase::HealthyAgain));
                    eprintln!(
                        "soak: {:>5.1} s: faults cleared; 503 allowed for {:.1} s more",
                        t.as_secs_f64(),
                        (phases[phases.len() - 1].0 - now) as f64 / 1000.0
                    );
                }
                step_on = want;
            }
            if faults_over && idp_marks.len() == 3 && epoch_ms() >= phases[phases.len() - 1].0 {
                let (tk, int) = counters(&stack);
                idp_marks.push((Phase::HealthyAgain, tk, int));
            }
            if last_poll.elapsed() >= Duration::from_millis(200) {
                upstream.poll(&stack.echo);
                last_poll = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        attack.map(|h| h.join().unwrap_or_default())
    });
    let attack = attack.unwrap_or_default();
    let wall = started.elapsed();
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wrk: {e}"));
    upstream.poll(&stack.echo);
    let wrk_out = String::from_utf8_lossy(&output.stdout).into_owned();
    let wrk_err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "wrk failed ({}):\n{wrk_out}\n{wrk_err}",
        output.status
    );
    let (token_calls, introspections) = counters(&stack);
    let echo_count = stack.echo.count();
    let tallies = read_tallies(&out_path);

    // ---- the verdicts, by phase ----
    let phase_of = |bucket: u64| -> Phase {
        // A 100 ms bucket belongs to the latest phase that began before its end: a bucket that
        // straddles a change counts as the later (less strict at the start of the faults, the
        // recovery's end is far from the faults).
        let end = bucket * 100 + 100;
        phases
            .iter()
            .rev()
            .find(|(at, _)| *at < end)
            .map(|(_, p)| *p)
            .unwrap_or(Phase::Healthy)
    };
    let phase_of = |bucket: u64| {
        // ...but the healthy-again phase starts strictly after its time.
        let p = phase_of(bucket);
        if p == Phase::HealthyAgain && bucket * 100 < phases[phases.len() - 1].0 {
            Phase::Recovery
        } else {
            p
        }
    };
    let mut table: BTreeMap<(Phase, String), BTreeMap<u16, u64>> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut total = 0;
    for (what, status, bucket, count) in &tallies.counts {
        let phase = phase_of(*bucket);
        total += count;
        *table
            .entry((phase, what.clone()))
            .or_default()
            .entry(*status)
            .or_default() += count;
        let valid = is_valid(what);
        let bad = if valid {
            match (status, phase) {
                (200, _) => None,
                (401 | 403, _) => Some("a valid request refused with 401/403"),
                (503, Phase::Faults | Phase::Recovery) => None,
                // counted below: at most 0.1% of the attack's valid requests
                (503, Phase::Attack) => None,
                _ => Some("a valid request refused while the IdP was healthy"),
            }
        } else {
            match status {
                200 => Some("an invalid request answered 200"),
                _ => None,
            }
        };
        if let Some(why) = bad {
            failures.push(format!(
                "{why}: {count} x {what} -> {status} in {} (at {} ms)",
                phase.name(),
                bucket * 100
            ));
        }
    }
    failures.extend(upstream.violations.iter().take(20).cloned());
    let attack_calls = idp_marks
        .iter()
        .find(|(p, _, _)| *p == Phase::Attack)
        .map(|(_, t, i)| (token_calls - t, introspections - i));
    failures.extend(attack_failures(&table, &attack, attack_calls, &stack));
    if upstream.seen.len() as u64 != echo_count {
        failures.push(format!(
            "could not check every upstream request: saw {} of {echo_count}",
            upstream.seen.len()
        ));
    }
    let errors: u64 = ["connect", "read", "write", "timeout"]
        .iter()
        .map(|k| tallies.summary.get(*k).copied().unwrap_or(0))
        .sum();
    if errors > 0 {
        failures.push(format!("wrk saw {errors} socket errors or timeouts"));
    }
    let forwarded_valid: u64 = tallies
        .counts
        .iter()
        .filter(|(w, s, _, _)| is_valid(w) && *s == 200)
        .map(|(_, _, _, c)| c)
        .sum();
    // Requests in flight when wrk stops reach the upstream without being tallied.
    if forwarded_valid > echo_count || echo_count - forwarded_valid > connections {
        failures.push(format!(
            "{forwarded_valid} valid requests answered 200, but {echo_count} reached the upstream"
        ));
    }

    // ---- the summary ----
    let mut s = String::new();
    let requests = tallies.summary.get("requests").copied().unwrap_or(total);
    let _ = writeln!(
        s,
        "\n==== soak summary ====\n{requests} requests in {:.1} s ({:.0}/s), {connections} connections, {CLIENTS} clients",
        wall.as_secs_f64(),
        requests as f64 / wall.as_secs_f64()
    );
    let statuses: Vec<u16> = {
        let mut all: Vec<u16> = table.values().flat_map(|m| m.keys().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let _ = write!(s, "{:<14} {:<17}", "phase", "case");
    for st in &statuses {
        let _ = write!(s, " {st:>7}");
    }
    let _ = writeln!(s);
    for ((phase, what), by_status) in &table {
        let _ = write!(s, "{:<14} {:<17}", phase.name(), what);
        for st in &statuses {
            let _ = write!(s, " {:>7}", by_status.get(st).copied().unwrap_or(0));
        }
        let _ = writeln!(s);
    }
    let mut by_kind: BTreeMap<(Phase, &str), BTreeMap<u16, u64>> = BTreeMap::new();
    for ((phase, what), by_status) in &table {
        let kind = if is_valid(what) { "valid" } else { "invalid" };
        for (st, n) in by_status {
            *by_kind
                .entry((*phase, kind))
                .or_default()
                .entry(*st)
                .or_default() += n;
        }
    }
    for ((phase, kind), by_status) in &by_kind {
        let _ = writeln!(s, "{:<14} {kind:<8} {by_status:?}", phase.name());
    }
    let _ = write!(s, "IdP calls (token / introspection):");
    let mut marks: Vec<(&str, u64, u64)> = idp_marks
        .iter()
        .map(|(p, t, i)| (p.name(), *t, *i))
        .collect();
    marks.push(("end", token_calls, introspections));
    for w in marks.windows(2) {
        let _ = write!(s, " {} {}/{};", w[0].0, w[1].1 - w[0].1, w[1].2 - w[0].2);
    }
    let _ = writeln!(s, " total {token_calls}/{introspections}");
    if let Some((cleared, _)) = phases.iter().find(|(_, p)| *p == Phase::Recovery) {
        let last_503 = tallies
            .counts
            .iter()
            .filter(|(w, st, _, _)| is_valid(w) && *st == 503)
            .map(|(_, _, b, _)| b * 100 + 100)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "the last valid request answered 503 came {:+.1} s after the faults were cleared",
            (last_503 as f64 - *cleared as f64) / 1000.0
        );
    }
    let _ = writeln!(
        s,
        "upstream: {echo_count} requests, {} checked, by case {:?}",
        upstream.seen.len(),
        upstream.by_what
    );
    let _ = writeln!(s, "wrk: {:?}", tallies.summary);
    let _ = writeln!(s, "{}", wrk_out.trim_end());
    eprintln!("{s}");

    // ---- secrets in the log ----
    secrets.extend(upstream.tokens.iter().cloned());
    secrets.sort();
    secrets.dedup();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let log = stack.envoy_log();
    let leaks = find_secrets_in_log(&log, &refs);
    failures.extend(leaks.into_iter().take(5));
    let warnings: Vec<&str> = plugin_log_lines(&log)
        .into_iter()
        .filter(|l| l.contains("[warning]") || l.contains("[error]") || l.contains("[critical]"))
        .collect();
    eprintln!(
        "the filter's warnings ({}):\n{}",
        warnings.len(),
        warnings
            .iter()
            .take(12)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stack.envoy_running(), "Envoy died during the soak");
    assert!(
        failures.is_empty(),
        "soak failed:\n{}\n{s}",
        failures.join("\n")
    );
    eprintln!("soak: passed");
}
