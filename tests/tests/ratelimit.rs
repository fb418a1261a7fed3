//! Per-application rate limits with Envoy's own `local_ratelimit` filter behind okta-dcr-auth, as
//! the shipped `envoy/ratelimit.yaml` configures it: the file itself runs here, with its
//! addresses pointed at the test's dev IdP and echo, and its bucket sizes read from it.
//!
//! - an app over its limit gets Envoy's 429 while another app, at the same time, gets 200;
//! - a client cannot escape its bucket by sending its own `x-credential-identifier` (the filter
//!   removes it before the limiter reads the header): not into another app's bucket, nor into the
//!   default one;
//! - a request the filter refuses never reaches the limiter: no token taken from any bucket;
//! - the access log names the app the filter vouched for, and the decision.
//!
//! Envoy only: `local_ratelimit` is Envoy's (kong/kong.yaml says why Kong's rate-limiting plugin
//! cannot key on the filter's header).

use std::net::SocketAddr;

use okta_dcr_auth_tests::envoy::{self, Envoy, EnvoyOptions};
use okta_dcr_auth_tests::*;
use serde_json::{json, Value};

/// App A: the demo app, with a small bucket of its own.
const APP_A: &str = "0oa6demoDcrClient4kong";
/// App B: listed with a bucket of its own.
const APP_B: &str = "0oa6goldTierAppExample";
/// App C: not listed, so it takes from the default bucket.
const APP_C: &str = "0oa6unlistedAppExample";
/// The limiter's stat prefix in envoy/ratelimit.yaml.
const STATS: &str = "per_app.http_local_rate_limit";

/// Envoy running envoy/ratelimit.yaml, the dev IdP, the echo, and the buckets the file sets.
struct RateLimited {
    // Declared first so Envoy is gone before the servers it talks to.
    envoy: Envoy,
    /// The shipped access log's lines, written to a file of their own (see `start`).
    access_log: std::path::PathBuf,
    /// Kept alive for the filter's calls.
    _idp: IdpHandle,
    echo: EchoHandle,
    a: TestClient,
    b: TestClient,
    c: TestClient,
    limit_a: u64,
    limit_b: u64,
    limit_default: u64,
}

impl Drop for RateLimited {
    /// Like the harness's stacks: Envoy's files stay when the test failed (or with
    /// OKTA_KEEP_RUN_DIR=1), and go otherwise.
    fn drop(&mut self) {
        self.envoy.stop();
        let dir = self.envoy.dir().to_path_buf();
        if std::thread::panicking() {
            eprintln!("Envoy's log: {}", self.envoy.log_path().display());
        } else if !std::env::var("OKTA_KEEP_RUN_DIR").is_ok_and(|v| v == "1") {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn shipped_config() -> Value {
    let path = envoy::workspace_root().join("envoy/ratelimit.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let yaml: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn named<'a>(list: &'a mut Value, name: &str) -> &'a mut Value {
    list.as_array_mut()
        .and_then(|l| l.iter_mut().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("envoy/ratelimit.yaml: nothing named {name}"))
}

fn point_at(cluster: &mut Value, addr: SocketAddr) {
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"] = json!({ "address": addr.ip().to_string(), "port_value": addr.port() });
}

fn bucket_size(limiter: &Value, app: Option<&str>) -> u64 {
    let bucket = match app {
        None => &limiter["token_bucket"],
        Some(app) => limiter["descriptors"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find(|d| d["entries"] == json!([{ "key": "app", "value": app }]))
            })
            .map(|d| &d["token_bucket"])
            .unwrap_or_else(|| panic!("envoy/ratelimit.yaml: no bucket for {app}")),
    };
    bucket["max_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("envoy/ratelimit.yaml: no max_tokens in {bucket}"))
}

impl RateLimited {
    fn start(name: &str) -> RateLimited {
        let idp = IdpHandle::spawn("127.0.0.1:0").unwrap_or_else(|e| panic!("dev IdP: {e}"));
        let echo = EchoHandle::spawn("127.0.0.1:0").unwrap_or_else(|e| panic!("echo: {e}"));
        let mut config = shipped_config();

        config["admin"]["address"]["socket_address"] =
            json!({ "address": "127.0.0.1", "port_value": 0 });
        let resources = &mut config["static_resources"];
        point_at(named(&mut resources["clusters"], "okta"), idp.addr());
        point_at(named(&mut resources["clusters"], "upstream"), echo.addr());
        let listener = named(&mut resources["listeners"], "gateway");
        listener["address"]["socket_address"]["port_value"] = json!(0);
        let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        // The shipped file logs to stdout, which the harness writes into the same file as
        // Envoy's (trace) log on stderr: a line of one can land inside a line of the other. The
        // same lines go to a file of their own here.
        let dir = envoy::run_dir(name);
        let access_log = dir.join("access.log");
        let logger = &mut hcm["access_log"][0];
        assert_eq!(logger["name"], "envoy.access_loggers.stdout", "{logger:#}");
        logger["name"] = json!("envoy.access_loggers.file");
        logger["typed_config"]["@type"] =
            json!("type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog");
        logger["typed_config"]["path"] = json!(access_log.display().to_string());
        let filters = hcm["http_filters"].as_array_mut().expect("http_filters");
        let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.wasm",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.router"
            ],
            "envoy/ratelimit.yaml: the limiter must come after the filter"
        );
        let plugin = &mut filters[0]["typed_config"]["config"];
        plugin["vm_config"]["code"]["local"]["filename"] =
            json!(envoy::filter_wasm().display().to_string());
        let value = &mut plugin["configuration"]["value"];
        let mut filter_config: Value =
            serde_json::from_str(value.as_str().expect("configuration value")).expect("JSON");
        filter_config["issuer"] = json!(idp.issuer());
        *value = json!(filter_config.to_string());
        let limiter = &filters[1]["typed_config"];
        let (limit_a, limit_b, limit_default) = (
            bucket_size(limiter, Some(APP_A)),
            bucket_size(limiter, Some(APP_B)),
            bucket_size(limiter, None),
        );

        let client = |id: &str, secret: &str| {
            idp.register_client(id, secret, &[SCOPE]);
            TestClient {
                id: id.into(),
                secret: secret.into(),
            }
        };
        let a = client(APP_A, "app-A_Secret-for-ratelimit");
        let b = client(APP_B, "app-B_Secret-for-ratelimit");
        let c = client(APP_C, "app-C_Secret-for-ratelimit");
        // Envoy flushes the access log every 10 s by default.
        let mut options = EnvoyOptions::default();
        options.extra_args.push("--file-flush-interval-msec".into());
        options.extra_args.push("50".into());
        let envoy =
            Envoy::start(&config, &options, &dir).unwrap_or_else(|failure| panic!("{failure}"));
        RateLimited {
            envoy,
            access_log,
            _idp: idp,
            echo,
            a,
            b,
            c,
            limit_a,
            limit_b,
            limit_default,
        }
    }

    fn get(&self, headers: &[(&str, &str)]) -> Response {
        self.envoy.get("/", headers)
    }

    /// A request of `app` (Basic credentials) with these extra headers.
    fn as_app(&self, app: &TestClient, extra: &[(&str, &str)]) -> Response {
        let auth = app.basic();
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.get(&headers)
    }

    /// Asserts an answer of the upstream (200, the echo's JSON) to a request of `app`.
    fn assert_allowed(&self, r: &Response, app: &TestClient) {
        assert_eq!(r.status, 200, "{} should pass: {r:#?}", app.id);
        let last = self.echo.requests().pop().expect("an upstream request");
        assert_eq!(
            upstream_header(&last, "x-credential-identifier"),
            vec![app.id.as_str()],
            "{last:#?}"
        );
    }

    /// Asserts Envoy's rate-limit answer: 429 from local_ratelimit, nothing upstream.
    fn assert_limited(&self, r: &Response, upstream_before: u64) {
        assert_eq!(r.status, 429, "expected Envoy's 429: {r:#?}");
        assert_eq!(r.body.trim(), "local_rate_limited", "{r:#?}");
        assert_eq!(
            self.echo.count(),
            upstream_before,
            "a limited request went upstream"
        );
    }

    /// A counter or gauge of Envoy's admin /stats, 0 when absent.
    fn stat(&self, name: &str) -> u64 {
        let body = self.envoy.admin(&format!("/stats?filter=^{name}$")).body;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The access log's lines (JSON, on Envoy's stdout, which the harness keeps in its log).
    fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits until the access log has `n` lines (Envoy writes it after the answer, and flushes
    /// it every 50 ms here; much later on a loaded machine).
    fn access_log_of(&self, n: usize) -> Vec<Value> {
        eventually(
            std::time::Duration::from_secs(30),
            "the access log lines",
            || {
                let lines = self.access_log();
                (lines.len() >= n).then_some(lines)
            },
        )
    }

    /// No secret in Envoy's log, access log included.
    fn assert_no_secret_logged(&self) {
        let secrets = [&self.a.secret, &self.b.secret, &self.c.secret];
        let refs: Vec<&str> = secrets.iter().map(|s| s.as_str()).collect();
        let logs = format!(
            "{}\n{}",
            self.envoy.log(),
            std::fs::read_to_string(&self.access_log).unwrap_or_default()
        );
        let found = find_secrets_in_log(&logs, &refs);
        assert!(
            found.is_empty(),
            "secrets in Envoy's log:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn an_app_over_its_limit_gets_429_while_another_app_gets_200() {
    if envoy_only("local_ratelimit is Envoy's filter") {
        return;
    }
    let s = RateLimited::start("ratelimit-over");
    for _ in 0..s.limit_a {
        let r = s.as_app(&s.a, &[]);
        s.assert_allowed(&r, &s.a);
    }
    // A is out of tokens; B, at the same time, is not.
    for _ in 0..3 {
        let before = s.echo.count();
        let r = s.as_app(&s.a, &[]);
        s.assert_limited(&r, before);
        let r = s.as_app(&s.b, &[]);
        s.assert_allowed(&r, &s.b);
        assert!(
            r.header("x-ratelimit-remaining").is_some(),
            "the limiter's headers on an answer it let through: {r:#?}"
        );
    }
    assert_eq!(s.stat(&format!("{STATS}.rate_limited")), 3);
    assert_eq!(s.stat(&format!("{STATS}.ok")), s.limit_a + 3);

    // The access log names the app and the decision.
    let total = s.limit_a as usize + 6;
    let log = s.access_log_of(total);
    assert_eq!(
        log.len(),
        total,
        "one access log line per request: {log:#?}"
    );
    let of = |app: &str, status: u64| -> Vec<&Value> {
        log.iter()
            .filter(|l| l["app"] == app && l["status"] == status)
            .collect()
    };
    let limited = of(APP_A, 429);
    assert_eq!(limited.len(), 3, "{log:#?}");
    for line in limited {
        assert_eq!(line["details"], "local_rate_limited", "{line}");
        assert_eq!(line["flags"], "RL", "{line}");
        assert_eq!(line["upstream"], Value::Null, "{line}");
    }
    assert_eq!(of(APP_A, 200).len() as u64, s.limit_a, "{log:#?}");
    for line in of(APP_B, 200) {
        assert_eq!(line["details"], "via_upstream", "{line}");
        assert_eq!(line["scope"], SCOPE, "{line}");
    }
    assert_eq!(of(APP_B, 200).len(), 3, "{log:#?}");
    s.assert_no_secret_logged();
}

#[test]
fn a_client_cannot_escape_its_limit_with_its_own_identity_header() {
    if envoy_only("local_ratelimit is Envoy's filter") {
        return;
    }
    let s = RateLimited::start("ratelimit-spoof");
    for _ in 0..s.limit_a {
        let r = s.as_app(&s.a, &[]);
        s.assert_allowed(&r, &s.a);
    }
    // A's credentials, claiming to be B (every spelling the filter removes), or an unlisted app.
    for spoof in [
        ("x-credential-identifier", APP_B),
        ("X-Credential-Identifier", APP_B),
        ("x_credential_identifier", APP_B),
        ("x-credential-identifier", APP_C),
        ("x-credential-identifier", "someone-else"),
    ] {
        let before = s.echo.count();
        let r = s.as_app(&s.a, &[spoof]);
        s.assert_limited(&r, before);
    }
    // Those tries took nothing from B's bucket nor from the default one: each still has all of its
    // tokens, and not one more.
    for (app, limit) in [(&s.b, s.limit_b), (&s.c, s.limit_default)] {
        for _ in 0..limit {
            let r = s.as_app(app, &[]);
            s.assert_allowed(&r, app);
        }
        let before = s.echo.count();
        let r = s.as_app(app, &[]);
        s.assert_limited(&r, before);
    }
    let log = s.access_log_of(
        s.limit_a as usize + 5 + s.limit_b as usize + 1 + s.limit_default as usize + 1,
    );
    let spoofed: Vec<&Value> = log.iter().filter(|l| l["status"] == 429).collect();
    assert_eq!(spoofed.len(), 7, "{log:#?}");
    assert!(
        spoofed[..5].iter().all(|l| l["app"] == APP_A),
        "the access log names the app the filter vouched for, not the one the client sent: {log:#?}"
    );
    s.assert_no_secret_logged();
}

#[test]
fn refused_requests_never_reach_the_limiter() {
    if envoy_only("local_ratelimit is Envoy's filter") {
        return;
    }
    let s = RateLimited::start("ratelimit-refused");
    // One request of A first: its secret then has a positive verdict, so A's wrong secrets below
    // cannot lock it out (the filter's failure throttle spares a verified secret).
    let r = s.as_app(&s.a, &[]);
    s.assert_allowed(&r, &s.a);
    assert_eq!(s.stat(&format!("{STATS}.enabled")), 1);

    let spoof = ("x-credential-identifier", APP_A);
    let wrong_secret = s.a.basic_with_secret("not-A's-secret");
    let unknown_client = basic_header("0oa6nobodyRegistered", "whatever-Secret");
    let garbage_bearer = "Bearer not.a.token";
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![spoof],
        vec![("authorization", &wrong_secret), spoof],
        vec![("authorization", &unknown_client), spoof],
        vec![("authorization", garbage_bearer), spoof],
    ];
    let upstream = s.echo.count();
    let mut refusals = 0;
    for _ in 0..5 {
        for headers in &refused {
            let r = s.get(headers);
            assert_eq!(r.status, 401, "{r:#?}");
            refusals += 1;
        }
    }
    assert_eq!(s.echo.count(), upstream, "a refused request went upstream");
    assert_eq!(
        s.stat(&format!("{STATS}.enabled")),
        1,
        "refused requests reached the rate limiter"
    );

    // A still has every token but the one it used: limit_a - 1 more pass, then 429.
    for _ in 1..s.limit_a {
        let r = s.as_app(&s.a, &[]);
        s.assert_allowed(&r, &s.a);
    }
    let before = s.echo.count();
    let r = s.as_app(&s.a, &[]);
    s.assert_limited(&r, before);

    // The access log never names an app for a refused request (the client's header was removed).
    let log = s.access_log_of(refusals + s.limit_a as usize + 1);
    let refused_lines: Vec<&Value> = log.iter().filter(|l| l["status"] == 401).collect();
    assert_eq!(refused_lines.len(), refusals, "{log:#?}");
    for line in refused_lines {
        // The filter blanks the identity headers before it decides anything, and fills them only
        // for a request it lets through: a refused one logs no app (empty, or none).
        assert!(
            matches!(line["app"].as_str(), None | Some("")),
            "a refused request logged with an app: {line}"
        );
        assert_eq!(line["flags"], "-", "{line}");
    }
    s.assert_no_secret_logged();
}
