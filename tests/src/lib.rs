//! Integration-test harness for okta-dcr-auth: the built `.wasm` in a real Envoy 1.40, in front of
//! the dev IdP (`okta-dev-idp`) and an echo upstream, all on loopback port 0.
//!
//! Each test builds its own [`Stack`]: a dev IdP and an echo server on their own threads, and one
//! Envoy process (`--concurrency 2`, `wasm` log component at trace, everything else at info) with
//! the filter in front of the router. The stack is torn down when it is dropped; when the test is
//! failing, the whole Envoy log is printed first. When the test passed, the drop also sweeps the
//! Envoy log for every secret and token the stack knows of (see [`Stack::track_secret`]).
//!
//! ```no_run
//! use okta_dcr_auth_tests::*;
//! let stack = Stack::start(filter_config(serde_json::json!({})));
//! let app = stack.client("0oaApp", "app-Secret_123", &[SCOPE]);
//! let r = stack.get("/", &[("authorization", &app.basic())]);
//! assert_eq!(r.status, 200);
//! ```

pub mod client;
pub mod envoy;

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

pub use client::Response;
pub use envoy::{ClusterSpec, EnvoyOptions, RouteSpec, StartFailure};
pub use okta_dev_idp::{
    EchoHandle, EchoRequest, Endpoint, Fault, FaultAnswer, IdpHandle, IdpOptions, RateLimit,
    Signing, TokenRequestRecord, TokenSpec,
};

/// The scope the default test configuration requires.
pub const SCOPE: &str = "api:read";
/// The gateway's own introspection client, registered in every stack's IdP.
pub const GATEWAY_CLIENT_ID: &str = "0oa6gatewayIntrospect";
pub const GATEWAY_CLIENT_SECRET: &str = "gateway-Introspection_Secret-for-tests";

/// The filter configuration most tests start from: the default `accept` (both schemes), the
/// gateway's introspection client, `scopes: ["api:read"]`, merged with `overrides` (a `null`
/// value removes a key). `issuer` and `idp_upstream` are filled by the stack unless set.
pub fn filter_config(overrides: Value) -> Value {
    let mut base = json!({
        "audience": "api://default",
        "introspection_client_id": GATEWAY_CLIENT_ID,
        "introspection_client_secret": GATEWAY_CLIENT_SECRET,
        "scopes": [SCOPE],
    });
    merge(&mut base, overrides);
    base
}

fn merge(base: &mut Value, overrides: Value) {
    match (base.as_object_mut(), overrides) {
        (Some(b), Value::Object(o)) => {
            for (k, v) in o {
                b.insert(k, v);
            }
        }
        (_, Value::Null) => {}
        (_, other) => *base = other,
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 2.3.1 asks for it before
/// base64 in `client_secret_basic`).
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `Basic base64(urlencode(id):urlencode(secret))`, the RFC 6749 2.3.1 form.
pub fn basic_header(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        b64(format!("{}:{}", form_encode(id), form_encode(secret)).as_bytes())
    )
}

/// `Basic ID:SECRET` unencoded, as the Konnect docs print it.
pub fn raw_basic_header(id: &str, secret: &str) -> String {
    format!("Basic {id}:{secret}")
}

/// Standard base64 with padding.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The claims of a JWT (its payload, base64url-decoded), or None when it is not a JWT.
pub fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Asserts a local reply from the filter: the status, a JSON body with a string `message`, and no
/// sign that the request went upstream (the echo's JSON has no `message`). Returns the message.
pub fn assert_local_reply(r: &Response, status: u16) -> String {
    assert_eq!(r.status, status, "unexpected status; answer: {r:#?}");
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "a local reply should say content-type application/json, got {ct:?}; answer: {r:#?}"
    );
    let message = r.message();
    assert!(!message.trim().is_empty(), "empty message; answer: {r:#?}");
    message
}

/// The challenge for missing, malformed or invalid Basic credentials (realm `api`).
pub const BASIC_CHALLENGE: &str = "Basic realm=\"api\", charset=\"UTF-8\"";
/// The bare Bearer challenge (realm `api`), sent with the Basic one when no credentials came.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"api\"";
/// The challenge for several `Authorization` headers.
pub const INVALID_REQUEST_CHALLENGE: &str = "Bearer realm=\"api\", error=\"invalid_request\"";

/// The `insufficient_scope` challenge naming the required scope(s).
pub fn insufficient_scope_challenge(scope: &str) -> String {
    format!("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"{scope}\"")
}

/// A fault answered at once.
pub fn fault(answer: FaultAnswer) -> Fault {
    Fault::answer(answer)
}

/// A normal answer after `delay`.
pub fn delay(delay: Duration) -> Fault {
    Fault::delay(delay)
}

/// The lines the plugin itself logged (Envoy prefixes them with `wasm log`).
pub fn plugin_log_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("wasm log")).collect()
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout` naming `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client registered in the stack's IdP; its secret is tracked for the log sweep.
#[derive(Debug, Clone)]
pub struct TestClient {
    pub id: String,
    pub secret: String,
}

impl TestClient {
    /// `Basic base64(urlencode(id):urlencode(secret))`
    pub fn basic(&self) -> String {
        basic_header(&self.id, &self.secret)
    }

    /// `Basic id:secret`, unencoded.
    pub fn raw(&self) -> String {
        raw_basic_header(&self.id, &self.secret)
    }

    /// The base64 form with another secret.
    pub fn basic_with_secret(&self, secret: &str) -> String {
        basic_header(&self.id, secret)
    }
}

/// What one route does: run the filter with this configuration, or not at all.
#[derive(Debug, Clone)]
enum RouteFilter {
    /// JSON, completed with `issuer` and `idp_upstream` at start.
    Json(Value),
    /// Passed to the plugin verbatim.
    Raw(String),
    None,
}

/// Set-up run on the IdP before Envoy starts.
type IdpSetup = Box<dyn FnOnce(&IdpHandle)>;

/// Builds a [`Stack`] with more than one route, extra clusters, other log levels, or IdP set-up
/// that must happen before Envoy starts.
pub struct StackBuilder {
    name: String,
    routes: Vec<(String, RouteFilter)>,
    clusters: Vec<(String, SocketAddr)>,
    options: EnvoyOptions,
    idp_options: Option<IdpOptions>,
    before_envoy: Vec<IdpSetup>,
}

impl StackBuilder {
    /// Adds a route (prefix match; routes are tried in the order added) with the filter
    /// configured by `config` (JSON object; the stack fills `issuer` and `idp_upstream` unless
    /// set, a `null` value removes the key, and `{issuer}` / `{idp_addr}` in any string become
    /// the IdP's issuer / `host:port`).
    pub fn route(mut self, prefix: &str, config: Value) -> Self {
        self.routes.push((prefix.into(), RouteFilter::Json(config)));
        self
    }

    /// Adds a route whose plugin configuration is this exact text (nothing filled in).
    pub fn route_raw_config(mut self, prefix: &str, config: &str) -> Self {
        self.routes
            .push((prefix.into(), RouteFilter::Raw(config.into())));
        self
    }

    /// Adds a route without the filter (straight to the echo upstream).
    pub fn open_route(mut self, prefix: &str) -> Self {
        self.routes.push((prefix.into(), RouteFilter::None));
        self
    }

    /// Adds a static cluster.
    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push((name.into(), addr));
        self
    }

    /// Sets one component's log level (`--component-log-level`), e.g. `("http", "debug")`.
    pub fn component_log_level(mut self, component: &str, level: &str) -> Self {
        self.options
            .component_log_levels
            .retain(|(c, _)| c != component);
        self.options
            .component_log_levels
            .push((component.into(), level.into()));
        self
    }

    /// Envoy's default log level (`-l`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.options.log_level = level.into();
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.options.concurrency = n;
        self
    }

    pub fn envoy_arg(mut self, arg: &str) -> Self {
        self.options.extra_args.push(arg.into());
        self
    }

    pub fn idp_options(mut self, opts: IdpOptions) -> Self {
        self.idp_options = Some(opts);
        self
    }

    /// Runs `f` on the IdP after it started and before Envoy does (faults on discovery, ...).
    pub fn with_idp(mut self, f: impl FnOnce(&IdpHandle) + 'static) -> Self {
        self.before_envoy.push(Box::new(f));
        self
    }

    /// The name used for the test's directory (default: the test's thread name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Starts everything; panics (with Envoy's log) when Envoy does not become ready.
    pub fn start(self) -> Stack {
        match self.try_start() {
            Ok(stack) => stack,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Starts everything; `Err` when Envoy exits or does not become ready in time.
    pub fn try_start(self) -> Result<Stack, StartFailure> {
        let idp = match self.idp_options {
            Some(opts) => IdpHandle::spawn_with("127.0.0.1:0", opts),
            None => IdpHandle::spawn("127.0.0.1:0"),
        }
        .unwrap_or_else(|e| panic!("dev IdP did not start: {e}"));
        let echo =
            EchoHandle::spawn("127.0.0.1:0").unwrap_or_else(|e| panic!("echo did not start: {e}"));
        idp.register_client(GATEWAY_CLIENT_ID, GATEWAY_CLIENT_SECRET, &[]);
        for f in self.before_envoy {
            f(&idp);
        }

        let issuer = idp.issuer();
        let routes: Vec<RouteSpec> = if self.routes.is_empty() {
            vec![RouteSpec {
                prefix: "/".into(),
                filter_config: None,
            }]
        } else {
            self.routes
                .into_iter()
                .map(|(prefix, filter)| RouteSpec {
                    prefix,
                    filter_config: match filter {
                        RouteFilter::Json(v) => {
                            Some(complete_config(v, &issuer, idp.addr()).to_string())
                        }
                        RouteFilter::Raw(s) => Some(s),
                        RouteFilter::None => None,
                    },
                })
                .collect()
        };
        let mut clusters = vec![
            ClusterSpec {
                name: "okta".into(),
                addr: idp.addr(),
            },
            ClusterSpec {
                name: "upstream".into(),
                addr: echo.addr(),
            },
        ];
        clusters.extend(
            self.clusters
                .into_iter()
                .map(|(name, addr)| ClusterSpec { name, addr }),
        );
        let wasm = routes
            .iter()
            .any(|r| r.filter_config.is_some())
            .then(envoy::filter_wasm);
        let bootstrap = envoy::render_bootstrap(&routes, &clusters, wasm.as_deref());
        let dir = envoy::run_dir(&self.name);
        let envoy = envoy::Envoy::start(&bootstrap, &self.options, &dir)?;
        Ok(Stack {
            envoy,
            idp,
            echo,
            secrets: Mutex::new(vec![GATEWAY_CLIENT_SECRET.to_string()]),
            sweep_on_drop: true,
        })
    }
}

/// Fills `issuer` and `idp_upstream` unless present, drops keys set to `null`, and replaces the
/// placeholders `{issuer}` and `{idp_addr}` (the IdP's `host:port`) in every string.
fn complete_config(mut config: Value, issuer: &str, idp_addr: SocketAddr) -> Value {
    if let Some(obj) = config.as_object_mut() {
        obj.entry("issuer").or_insert_with(|| json!(issuer));
        obj.entry("idp_upstream").or_insert_with(|| json!("okta"));
        obj.retain(|_, v| !v.is_null());
    }
    fill_placeholders(&mut config, issuer, &idp_addr.to_string());
    config
}

fn fill_placeholders(v: &mut Value, issuer: &str, idp_addr: &str) {
    match v {
        Value::String(s) => {
            *s = s
                .replace("{issuer}", issuer)
                .replace("{idp_addr}", idp_addr)
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| fill_placeholders(i, issuer, idp_addr)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|i| fill_placeholders(i, issuer, idp_addr)),
        _ => {}
    }
}

/// One test's world: the dev IdP, the echo upstream, and Envoy with the filter in between.
pub struct Stack {
    // Declared first so Envoy is gone before the servers it talks to.
    envoy: envoy::Envoy,
    pub idp: IdpHandle,
    pub echo: EchoHandle,
    secrets: Mutex<Vec<String>>,
    sweep_on_drop: bool,
}

impl Stack {
    /// One route `/` with the filter configured by `filter_config` (see [`StackBuilder::route`]).
    pub fn start(filter_config: Value) -> Stack {
        Stack::builder().route("/", filter_config).start()
    }

    /// Envoy without the filter: `/` goes straight to the echo upstream.
    pub fn start_without_filter() -> Stack {
        Stack::builder().open_route("/").start()
    }

    pub fn builder() -> StackBuilder {
        let name = std::thread::current()
            .name()
            .map(|n| n.rsplit("::").next().unwrap_or(n).to_string())
            .unwrap_or_else(|| "stack".into());
        StackBuilder {
            name,
            routes: Vec::new(),
            clusters: Vec::new(),
            options: EnvoyOptions::default(),
            idp_options: None,
            before_envoy: Vec::new(),
        }
    }

    /// The issuer the filter was configured with (unless the test set its own).
    pub fn issuer(&self) -> String {
        self.idp.issuer()
    }

    /// Envoy's listener.
    pub fn listener(&self) -> SocketAddr {
        self.envoy.listener()
    }

    /// Registers a client in the IdP and tracks its secret for the log sweep.
    pub fn client(&self, id: &str, secret: &str, scopes: &[&str]) -> TestClient {
        self.idp.register_client(id, secret, scopes);
        self.track_secret(secret);
        TestClient {
            id: id.into(),
            secret: secret.into(),
        }
    }

    /// Adds a secret to what the drop-time log sweep looks for; its base64 and form-encoded
    /// spellings are swept by [`assert_no_secret_in_log`] too.
    pub fn track_secret(&self, secret: &str) {
        if let Ok(mut s) = self.secrets.lock() {
            s.push(secret.to_string());
        }
    }

    /// Skip the drop-time log sweep (for tests that put a secret in the log on purpose).
    pub fn no_sweep_on_drop(&mut self) {
        self.sweep_on_drop = false;
    }

    /// Sends one request to Envoy (headers exactly as given, duplicates and odd case included).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request(method, path, headers)
            .unwrap_or_else(|e| panic!("{method} {path} through Envoy: {e}"))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        client::send(
            self.listener(),
            method,
            path,
            headers,
            client::DEFAULT_TIMEOUT,
        )
    }

    /// `GET path` with these headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers)
    }

    /// Sends these exact bytes to the listener.
    pub fn request_raw(&self, bytes: &[u8]) -> Response {
        client::send_raw(self.listener(), bytes, client::DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("raw request through Envoy: {e}"))
    }

    /// GET on Envoy's admin API.
    pub fn admin(&self, path: &str) -> Response {
        self.envoy.admin(path)
    }

    /// A counter or gauge from the admin `/stats`, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let body = self.admin(&format!("/stats?filter=^{name}$")).body;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Everything Envoy logged so far.
    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    /// Whether Envoy is still running.
    pub fn envoy_running(&mut self) -> bool {
        self.envoy.is_running()
    }

    /// `/v1/token` calls the IdP received.
    pub fn token_calls(&self) -> u64 {
        self.idp.calls(Endpoint::Token)
    }

    /// Discovery document requests the IdP received.
    pub fn discovery_calls(&self) -> u64 {
        self.idp.calls(Endpoint::Discovery)
    }

    /// Every request the echo upstream received.
    pub fn upstream(&self) -> Vec<EchoRequest> {
        self.echo.requests()
    }

    /// The only request the echo upstream received since the last `echo.clear()`.
    pub fn single_upstream_request(&self) -> EchoRequest {
        let mut reqs = self.echo.requests();
        assert_eq!(
            reqs.len(),
            1,
            "expected exactly one upstream request, got {reqs:#?}"
        );
        reqs.remove(0)
    }

    /// Every secret and token to look for in the log: tracked secrets and the access tokens that
    /// went upstream.
    fn known_secrets(&self) -> Vec<String> {
        let mut all = self.secrets.lock().map(|s| s.clone()).unwrap_or_default();
        for req in self.echo.requests() {
            for (name, value) in &req.headers {
                if name == "authorization" {
                    if let Some((_, token)) = value.split_once(' ') {
                        all.push(token.trim().to_string());
                    }
                }
            }
        }
        all
    }
}

/// Every value of a header in an upstream request (names are lowercase there).
pub fn upstream_header<'a>(req: &'a EchoRequest, name: &str) -> Vec<&'a str> {
    req.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Spellings of a secret that would betray it in a log: as is, form-encoded, base64 of the bare
/// secret at the three alignments (what survives inside a longer base64 string).
fn spellings(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_string(), form_encode(secret)];
    for pad in 0..3 {
        let mut bytes = vec![b'x'; pad];
        bytes.extend_from_slice(secret.as_bytes());
        let enc = b64(&bytes);
        // Drop the characters that mix in the padding bytes or the tail.
        let skip = (pad * 4).div_ceil(3);
        let usable = enc.len().saturating_sub(skip + 4);
        if usable >= 8 {
            out.push(enc[skip..skip + usable].to_string());
        }
    }
    out.retain(|s| s.len() >= 6);
    out.sort();
    out.dedup();
    out
}

/// The lines of `log` containing any spelling of any of `secrets`, with what matched.
pub fn find_secrets_in_log(log: &str, secrets: &[&str]) -> Vec<String> {
    let needles: Vec<(String, String)> = secrets
        .iter()
        .flat_map(|s| spellings(s).into_iter().map(move |sp| (s.to_string(), sp)))
        .collect();
    log.lines()
        .filter_map(|line| {
            needles
                .iter()
                .find(|(_, sp)| line.contains(sp.as_str()))
                .map(|(s, sp)| format!("secret {s:?} (as {sp:?}) in: {line}"))
        })
        .collect()
}

/// Asserts that none of `secrets` (nor the secrets the stack tracks, nor the tokens that went
/// upstream), in any spelling, appears in Envoy's log so far.
pub fn assert_no_secret_in_log(stack: &Stack, secrets: &[&str]) {
    let mut all: Vec<String> = stack.known_secrets();
    all.extend(secrets.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let found = find_secrets_in_log(&stack.envoy_log(), &refs);
    assert!(
        found.is_empty(),
        "secrets in the Envoy log:\n{}",
        found.join("\n")
    );
}

impl Drop for Stack {
    fn drop(&mut self) {
        let secrets = self.known_secrets();
        self.envoy.stop();
        let log = self.envoy.log();
        let dir = self.envoy.dir().to_path_buf();
        if std::thread::panicking() {
            eprintln!(
                "==== Envoy log ({}) ====\n{log}\n==== end of Envoy log ====",
                self.envoy.log_path().display()
            );
            return;
        }
        if self.sweep_on_drop {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let found = find_secrets_in_log(&log, &refs);
            if !found.is_empty() {
                eprintln!(
                    "==== Envoy log ({}) ====\n{log}\n==== end of Envoy log ====",
                    self.envoy.log_path().display()
                );
                panic!("secrets in the Envoy log:\n{}", found.join("\n"));
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_form_encodes_before_base64() {
        let h = basic_header("id", "a:b+c%d/e");
        let enc = h.strip_prefix("Basic ").unwrap();
        let dec = base64::engine::general_purpose::STANDARD
            .decode(enc)
            .unwrap();
        assert_eq!(String::from_utf8(dec).unwrap(), "id:a%3Ab%2Bc%25d%2Fe");
    }

    #[test]
    fn finds_secrets_inside_longer_base64() {
        let secret = "s3cret-Value_42";
        let header = basic_header("0oaClient", secret);
        let log = format!("[debug] wasm log: got {header}\n[info] ok\n");
        assert_eq!(find_secrets_in_log(&log, &[secret]).len(), 1);
        assert!(find_secrets_in_log("[info] nothing here", &[secret]).is_empty());
        assert_eq!(
            find_secrets_in_log(&format!("x={}", form_encode("a:b+c%d/e1")), &["a:b+c%d/e1"]).len(),
            1
        );
    }

    #[test]
    fn config_gets_issuer_and_upstream_unless_set() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9001));
        let c = complete_config(filter_config(json!({"scopes": null})), "http://i", addr);
        assert_eq!(c["issuer"], "http://i");
        assert_eq!(c["idp_upstream"], "okta");
        assert!(c.get("scopes").is_none());
        let c = complete_config(
            json!({"issuer": "https://x", "idp_upstream": "nope", "token_endpoint": "{issuer}/v1/token",
                   "idp_authority": "{idp_addr}", "accept": ["{issuer}"]}),
            "http://i",
            addr,
        );
        assert_eq!(c["issuer"], "https://x");
        assert_eq!(c["idp_upstream"], "nope");
        assert_eq!(c["token_endpoint"], "http://i/v1/token");
        assert_eq!(c["idp_authority"], "127.0.0.1:9001");
        assert_eq!(c["accept"][0], "http://i");
    }
}
