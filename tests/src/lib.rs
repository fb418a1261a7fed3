//! Integration-test harness for okta-dcr-auth: the built `.wasm` in a real host, in front of the
//! dev IdP (`okta-dev-idp`) and an echo upstream, all on loopback.
//!
//! The host is Envoy 1.40 (the default) or nginx with ngx_wasm_module, Kong Gateway's wasm engine
//! (`OKTA_TEST_HOST=ngx`, engine from `make kong-engine`); see [`test_host`]. The same tests run on
//! both: where ngx_wasm_module behaves differently by design, a test asserts what it does there
//! (see kong/README.md); what only Envoy has (its admin API) is checked on Envoy only.
//!
//! Each test builds its own [`Stack`]: a dev IdP and an echo server on their own threads, and one
//! host process (2 workers; Envoy: `wasm` log component at trace, everything else at info;
//! nginx: `error_log` at debug) with the filter in front of the proxy to the echo. The stack is
//! torn down when it is dropped; when the test is failing, the whole host log is printed first.
//! When the test passed, the drop also sweeps the host log for every secret and token the stack
//! knows of (see [`Stack::track_secret`]).
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
pub mod ngx;

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

pub use client::Response;
pub use envoy::{ClusterSpec, EnvoyOptions, RouteSpec, StartFailure};
pub use ngx::NgxOptions;
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

/// [`filter_config`] for tests of the introspection path, as it was before local JWT checks:
/// Bearer tokens are introspected, opaque or not, unless `overrides` says otherwise.
pub fn introspection_filter_config(overrides: Value) -> Value {
    let mut config = filter_config(overrides);
    if let Some(fields) = config.as_object_mut() {
        fields
            .entry("bearer_validation")
            .or_insert(json!("introspection"));
        fields.entry("bearer_format").or_insert(json!("opaque"));
    }
    config
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

/// base64url without padding: a JWS segment (RFC 7515 2).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The wall clock, in seconds since the epoch (0 if it is before).
pub fn now_s() -> u64 {
    epoch_ms() / 1000
}

/// The wall clock, in milliseconds since the epoch (0 if it is before).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A Bearer header with a token shaped like one of `issuer`'s access tokens (three base64url
/// segments, JSON header and payload, `iss`, an `exp` an hour ahead, `jti` = `marker`) and a
/// signature nobody made: only verification or the IdP can refuse it.
pub fn jwt_shaped(issuer: &str, marker: &str) -> String {
    let url = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = now_s() + 3_600;
    format!(
        "Bearer {}.{}.Zm9yZ2VkU2lnbmF0dXJl",
        url(json!({ "alg": "RS256", "kid": "flood" })),
        url(json!({ "iss": issuer, "exp": exp, "jti": marker, "aud": "api://default" })),
    )
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

/// Asserts the filter's 503 (IdP unavailable, or not configured): no challenge, and the JSON
/// body of a local reply. On ngx_wasm_module a 503 sent while handling an IdP answer without a
/// body (a call that failed, or an empty answer) has no body either (`Content-Length: 0`): the
/// host would otherwise lose the whole answer (kong/README.md, `ngx_host.rs`).
pub fn assert_local_503(r: &Response) {
    assert_eq!(r.status, 503, "unexpected status; answer: {r:#?}");
    assert!(
        r.www_authenticate().is_empty(),
        "a 503 carries no challenge: {r:#?}"
    );
    if on_ngx() && r.body.is_empty() {
        assert_eq!(r.header("content-length"), Some("0"), "{r:#?}");
        return;
    }
    assert_local_reply(r, 503);
}

/// The challenges of an answer, one per entry: ngx_wasm_module keeps only the last of several
/// `WWW-Authenticate` headers in a local reply, so there the filter sends them in one,
/// comma-separated; this splits that list again (at each `, Basic ` / `, Bearer `).
pub fn challenges(r: &Response) -> Vec<String> {
    let mut out = Vec::new();
    for value in r.www_authenticate() {
        let mut rest = value;
        loop {
            let next = [", Basic ", ", Bearer "]
                .iter()
                .filter_map(|sep| rest.find(sep))
                .min();
            match next {
                Some(i) => {
                    out.push(rest[..i].to_string());
                    rest = &rest[i + 2..];
                }
                None => {
                    out.push(rest.to_string());
                    break;
                }
            }
        }
    }
    out
}

/// Asserts that no value of `name` went upstream: Envoy removes the header; nginx forwards a
/// request header the filter removed with the empty value the filter gave it first (kong/README.md).
pub fn assert_removed_upstream(req: &EchoRequest, name: &str) {
    let values = upstream_header(req, name);
    if on_ngx() {
        assert!(
            values.iter().all(|v| v.is_empty()),
            "{name} should go upstream empty or not at all on ngx_wasm_module: {req:#?}"
        );
    } else {
        assert!(values.is_empty(), "{name} should not go upstream: {req:#?}");
    }
}

/// The challenge for missing, malformed or invalid Basic credentials (realm `api`).
pub const BASIC_CHALLENGE: &str = "Basic realm=\"api\", charset=\"UTF-8\"";
/// The bare Bearer challenge (realm `api`), sent with the Basic one when no credentials came.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"api\"";
/// The challenge for several `Authorization` headers.
pub const INVALID_REQUEST_CHALLENGE: &str = "Bearer realm=\"api\", error=\"invalid_request\"";
/// The challenge for a malformed, inactive, expired, wrong-issuer or wrong-audience token.
pub const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

/// A token for `client` with `scopes`, audience `api://default`, an hour to live, and the app
/// claim `app_id` = `app_id` (Okta's `app.clientId`).
pub fn app_token_spec(client: &str, app_id: &str, scopes: &[&str]) -> TokenSpec {
    let mut spec = TokenSpec::for_client(client, scopes);
    spec.claims.insert("app_id".into(), json!(app_id));
    spec
}

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

/// The lines the plugin itself logged (Envoy prefixes them with `wasm log`; ngx_wasm_module
/// with `[proxy-wasm]["okta_dcr_auth" #N]`, but its own lines about the filter too, so there
/// a plugin line is one whose message starts with the filter's `[context id]`).
pub fn plugin_log_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("wasm log") || is_ngx_plugin_line(l))
        .collect()
}

fn is_ngx_plugin_line(line: &str) -> bool {
    let Some(at) = line.find("[proxy-wasm][\"") else {
        return false;
    };
    let rest = &line[at..];
    rest.find("] [").map(|i| &rest[i + 3..]).is_some_and(|m| {
        m.split(']')
            .next()
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Which host the integration tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Envoy 1.40 with V8 (`OKTA_TEST_HOST` unset or `envoy`).
    Envoy,
    /// nginx 1.22.1 with ngx_wasm_module 9136e463 and wasmtime, Kong 3.9's wasm engine
    /// (`OKTA_TEST_HOST=ngx`).
    Ngx,
}

/// The host named by `OKTA_TEST_HOST` (`envoy`, the default, or `ngx`).
pub fn test_host() -> HostKind {
    match std::env::var("OKTA_TEST_HOST").as_deref() {
        Err(_) | Ok("") | Ok("envoy") => HostKind::Envoy,
        Ok("ngx") | Ok("kong") => HostKind::Ngx,
        Ok(other) => panic!("OKTA_TEST_HOST={other:?}: expected `envoy` or `ngx`"),
    }
}

/// Whether the tests run on nginx + ngx_wasm_module.
pub fn on_ngx() -> bool {
    test_host() == HostKind::Ngx
}

/// For tests of something only Envoy has: true (and a line saying so) on another host.
pub fn envoy_only(what: &str) -> bool {
    if on_ngx() {
        eprintln!("Envoy only, not run on ngx_wasm_module: {what}");
        return true;
    }
    false
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
    ngx_options: NgxOptions,
    idp_options: Option<IdpOptions>,
    before_envoy: Vec<IdpSetup>,
    idp_circuit_breaker: Option<u32>,
    file_lds: bool,
    shared_idp: Option<IdpHandle>,
}

impl StackBuilder {
    /// Gives the `okta` cluster `circuit_breakers` of `max` connections, pending requests and
    /// requests (Envoy only; default: Envoy's, 1024 each).
    pub fn idp_circuit_breaker(mut self, max: u32) -> Self {
        self.idp_circuit_breaker = Some(max);
        self
    }

    /// Envoy reads its listener from a file (file-based LDS) instead of the bootstrap, so that
    /// [`Stack::reload_filter_config`] can change the filter's configuration at run time.
    pub fn file_lds(mut self) -> Self {
        self.file_lds = true;
        self
    }

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

    /// Sets one component's log level (`--component-log-level`), e.g. `("http", "debug")`. On
    /// ngx_wasm_module, the `wasm` component's level is nginx's `error_log` level (the filter's
    /// lines go there).
    pub fn component_log_level(mut self, component: &str, level: &str) -> Self {
        if component == "wasm" && !level.eq_ignore_ascii_case("trace") {
            self.ngx_options.log_level = level.into();
        }
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

    /// Envoy's `--concurrency`, nginx's `worker_processes`.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.options.concurrency = n;
        self.ngx_options.workers = n;
        self
    }

    /// On ngx_wasm_module, run the `--with-debug` nginx (its assertions on), its error log at
    /// `info`: at `debug` that build logs every request header, credentials included. No effect
    /// on Envoy.
    pub fn ngx_debug_build(mut self) -> Self {
        self.ngx_options.debug_build = true;
        self.ngx_options.log_level = "info".into();
        self
    }

    /// The host also takes HTTP/2 without TLS (h2c, prior knowledge) at
    /// [`Stack::http2_listener`]: on nginx a second listener with `http2`; Envoy's listener
    /// takes both protocols already.
    pub fn http2(mut self) -> Self {
        self.ngx_options.http2 = true;
        self
    }

    pub fn envoy_arg(mut self, arg: &str) -> Self {
        self.options.extra_args.push(arg.into());
        self
    }

    /// An environment variable of the Envoy process (the VM sees those in
    /// `envoy::VM_ENV_KEYS`).
    pub fn envoy_env(mut self, key: &str, value: &str) -> Self {
        self.options.env.push((key.into(), value.into()));
        self
    }

    pub fn idp_options(mut self, opts: IdpOptions) -> Self {
        self.idp_options = Some(opts);
        self
    }

    /// Puts the host in front of this IdP (another stack's `stack.idp`) instead of a new one:
    /// several gateways, one Okta org. The IdP's clients, faults, limits and counters are then
    /// shared (its server stops with the last stack); `idp_options` is ignored.
    pub fn shared_idp(mut self, idp: &IdpHandle) -> Self {
        self.shared_idp = Some(idp.clone());
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

    /// Starts everything; panics (with the host's log) when the host does not become ready.
    pub fn start(self) -> Stack {
        match self.try_start() {
            Ok(stack) => stack,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Starts everything; `Err` when the host exits or does not become ready in time (on nginx:
    /// also when a worker exits with a fatal code, as one whose filter refused its
    /// configuration does).
    pub fn try_start(self) -> Result<Stack, StartFailure> {
        let idp = match (self.shared_idp, self.idp_options) {
            (Some(idp), _) => Ok(idp),
            (None, Some(opts)) => IdpHandle::spawn_with("127.0.0.1:0", opts),
            (None, None) => IdpHandle::spawn("127.0.0.1:0"),
        }
        .unwrap_or_else(|e| panic!("dev IdP did not start: {e}"));
        let echo =
            EchoHandle::spawn("127.0.0.1:0").unwrap_or_else(|e| panic!("echo did not start: {e}"));
        idp.register_client(GATEWAY_CLIENT_ID, GATEWAY_CLIENT_SECRET, &[]);
        for f in self.before_envoy {
            f(&idp);
        }

        let issuer = idp.issuer();
        let host = test_host();
        let mut clusters = vec![
            ClusterSpec {
                circuit_breaker: self.idp_circuit_breaker,
                ..ClusterSpec::new("okta", idp.addr())
            },
            ClusterSpec::new("upstream", echo.addr()),
        ];
        clusters.extend(
            self.clusters
                .iter()
                .map(|(name, addr)| ClusterSpec::new(name, *addr)),
        );
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
                            let mut config = complete_config(v, &issuer, idp.addr());
                            if host == HostKind::Ngx {
                                ngx::resolve_upstream(&mut config, &clusters);
                            }
                            Some(config.to_string())
                        }
                        RouteFilter::Raw(s) => Some(s),
                        RouteFilter::None => None,
                    },
                })
                .collect()
        };
        let wasm = routes
            .iter()
            .any(|r| r.filter_config.is_some())
            .then(envoy::filter_wasm);
        let dir = envoy::run_dir(&self.name);
        let mut lds = None;
        let host = match host {
            HostKind::Envoy => {
                let lds_path = self.file_lds.then(|| {
                    let lds_dir = dir.join("lds");
                    std::fs::create_dir_all(&lds_dir)
                        .unwrap_or_else(|e| panic!("create {}: {e}", lds_dir.display()));
                    let path = lds_dir.join("listeners.json");
                    envoy::write_listener(&path, &routes, wasm.as_deref());
                    path
                });
                let bootstrap = envoy::render_bootstrap(
                    &routes,
                    &clusters,
                    wasm.as_deref(),
                    lds_path.as_deref(),
                );
                lds = lds_path.map(|path| Lds {
                    path,
                    routes: routes.clone(),
                    wasm: wasm.clone(),
                });
                Host::Envoy(envoy::Envoy::start(&bootstrap, &self.options, &dir)?)
            }
            HostKind::Ngx => {
                let opts = self.ngx_options;
                let upstream = echo.addr();
                let conf = |port| ngx::render_conf(&routes, upstream, wasm.as_deref(), port, &opts);
                Host::Ngx(ngx::Ngx::start(conf, &opts, &dir)?)
            }
        };
        Ok(Stack {
            host,
            lds: lds.map(Mutex::new),
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

/// The host process of a stack.
enum Host {
    Envoy(envoy::Envoy),
    Ngx(ngx::Ngx),
}

impl Host {
    fn listener(&self) -> SocketAddr {
        match self {
            Host::Envoy(e) => e.listener(),
            Host::Ngx(n) => n.listener(),
        }
    }
    fn log(&self) -> String {
        match self {
            Host::Envoy(e) => e.log(),
            Host::Ngx(n) => n.log(),
        }
    }
    fn log_path(&self) -> &std::path::Path {
        match self {
            Host::Envoy(e) => e.log_path(),
            Host::Ngx(n) => n.log_path(),
        }
    }
    fn dir(&self) -> &std::path::Path {
        match self {
            Host::Envoy(e) => e.dir(),
            Host::Ngx(n) => n.dir(),
        }
    }
    fn is_running(&mut self) -> bool {
        match self {
            Host::Envoy(e) => e.is_running(),
            Host::Ngx(n) => n.is_running() && n.answers(),
        }
    }
    fn stop(&mut self) {
        match self {
            Host::Envoy(e) => e.stop(),
            Host::Ngx(n) => n.stop(),
        }
    }
    fn envoy(&self) -> &envoy::Envoy {
        match self {
            Host::Envoy(e) => e,
            Host::Ngx(_) => panic!(
                "this needs Envoy's admin API; on ngx_wasm_module guard the test with `envoy_only`"
            ),
        }
    }
}

/// What a stack started with file-based LDS needs to write its listener again.
struct Lds {
    path: std::path::PathBuf,
    routes: Vec<RouteSpec>,
    wasm: Option<std::path::PathBuf>,
}

/// One test's world: the dev IdP, the echo upstream, and the host with the filter in between.
pub struct Stack {
    // Declared first so the host is gone before the servers it talks to.
    host: Host,
    lds: Option<Mutex<Lds>>,
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
            ngx_options: NgxOptions::default(),
            idp_options: None,
            before_envoy: Vec::new(),
            idp_circuit_breaker: None,
            file_lds: false,
            shared_idp: None,
        }
    }

    /// The issuer the filter was configured with (unless the test set its own).
    pub fn issuer(&self) -> String {
        self.idp.issuer()
    }

    /// Which host this stack runs.
    pub fn host_kind(&self) -> HostKind {
        match self.host {
            Host::Envoy(_) => HostKind::Envoy,
            Host::Ngx(_) => HostKind::Ngx,
        }
    }

    /// The host's listener.
    pub fn listener(&self) -> SocketAddr {
        self.host.listener()
    }

    /// Where to speak HTTP/2 without TLS (h2c, prior knowledge): Envoy's listener; on nginx the
    /// second listener of a stack built with [`StackBuilder::http2`] (panics without it).
    pub fn http2_listener(&self) -> SocketAddr {
        match &self.host {
            Host::Envoy(e) => e.listener(),
            Host::Ngx(n) => n
                .http2_listener()
                .unwrap_or_else(|| panic!("no h2c listener: build the stack with http2()")),
        }
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

    /// Mints a token at the stack's IdP and tracks it for the drop-time log sweep (tokens that are
    /// refused never go upstream, so the stack would not know them otherwise).
    pub fn mint(&self, spec: TokenSpec) -> String {
        let token = self.idp.mint_token(spec);
        self.track_secret(&token);
        token
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

    /// Sends one request to the host (headers exactly as given, duplicates and odd case included).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request(method, path, headers)
            .unwrap_or_else(|e| panic!("{method} {path} through the host: {e}"))
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
            .unwrap_or_else(|e| panic!("raw request through the host: {e}"))
    }

    /// GET on Envoy's admin API (Envoy only: panics on another host).
    pub fn admin(&self, path: &str) -> Response {
        self.host.envoy().admin(path)
    }

    /// Envoy's resident set in KiB (Envoy only; None when /proc cannot tell).
    pub fn rss_kib(&self) -> Option<u64> {
        self.host.envoy().rss_kib()
    }

    /// Gives the filter of route `index` this configuration (completed as [`StackBuilder::route`]
    /// does) through a file-based LDS update, and waits until Envoy runs the new listener.
    /// Needs [`StackBuilder::file_lds`].
    pub fn reload_filter_config(&self, index: usize, config: Value) {
        let Some(lds) = &self.lds else {
            panic!("reload_filter_config needs a stack built with file_lds()");
        };
        let mut lds = lds.lock().unwrap_or_else(|e| e.into_inner());
        let config = complete_config(config, &self.idp.issuer(), self.idp.addr());
        lds.routes[index].filter_config = Some(config.to_string());
        let updates = self.stat("listener_manager.lds.update_success");
        envoy::write_listener(&lds.path, &lds.routes, lds.wasm.as_deref());
        eventually(Duration::from_secs(20), "the LDS update", || {
            let done = self.stat("listener_manager.lds.update_success") > updates
                && self.stat("listener_manager.total_listeners_warming") == 0;
            done.then_some(())
        });
    }

    /// One of the filter's own counters (`wasmcustom.okta_dcr_auth_<name>`), 0 when absent
    /// (Envoy only). The filter hands its counts to Envoy on its next tick (every 10 ms): this
    /// waits a few ticks first.
    pub fn filter_counter(&self, name: &str) -> u64 {
        std::thread::sleep(Duration::from_millis(60));
        self.stat(&format!("wasmcustom.okta_dcr_auth_{name}"))
    }

    /// A counter or gauge from Envoy's admin `/stats`, 0 when absent (Envoy only).
    pub fn stat(&self, name: &str) -> u64 {
        let body = self.admin(&format!("/stats?filter=^{name}$")).body;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Everything the host logged so far (Envoy's log, or nginx's error log).
    pub fn envoy_log(&self) -> String {
        self.host.log()
    }

    /// Same as [`Stack::envoy_log`].
    pub fn host_log(&self) -> String {
        self.host.log()
    }

    /// Whether the host is still running (nginx: the master runs and a worker answers).
    pub fn envoy_running(&mut self) -> bool {
        self.host.is_running()
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

/// Whether a log line is nginx refusing a client's header line at `info` ("client sent too
/// long header line: ...", "client sent duplicate header line: ..."). nginx quotes the header
/// there, credentials included; Kong's default log level (`notice`) leaves these lines out, and
/// kong/README.md says to keep it at `notice` or above. The filter's own lines never match.
pub fn is_nginx_client_error_line(line: &str) -> bool {
    line.contains(" [info] ") && line.contains(" client sent ") && !line.contains("[proxy-wasm]")
}

/// The lines of `log` containing any spelling of any of `secrets`, with what matched (on
/// ngx_wasm_module, nginx's own client-error lines at `info` aside: see
/// [`is_nginx_client_error_line`]).
pub fn find_secrets_in_log(log: &str, secrets: &[&str]) -> Vec<String> {
    let needles: Vec<(String, String)> = secrets
        .iter()
        .flat_map(|s| spellings(s).into_iter().map(move |sp| (s.to_string(), sp)))
        .collect();
    let ngx = on_ngx();
    log.lines()
        .filter(|line| !(ngx && is_nginx_client_error_line(line)))
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
        "secrets in the host log:\n{}",
        found.join("\n")
    );
}

impl Drop for Stack {
    fn drop(&mut self) {
        let secrets = self.known_secrets();
        self.host.stop();
        let log = self.host.log();
        let dir = self.host.dir().to_path_buf();
        if std::thread::panicking() {
            eprintln!(
                "==== host log ({}) ====\n{log}\n==== end of host log ====",
                self.host.log_path().display()
            );
            return;
        }
        if self.sweep_on_drop {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let found = find_secrets_in_log(&log, &refs);
            if !found.is_empty() {
                eprintln!(
                    "==== host log ({}) ====\n{log}\n==== end of host log ====",
                    self.host.log_path().display()
                );
                panic!("secrets in the host log:\n{}", found.join("\n"));
            }
        }
        // OKTA_KEEP_RUN_DIR=1 keeps the host's files (configuration, log) for a look after a
        // test that passed.
        if std::env::var("OKTA_KEEP_RUN_DIR").is_ok_and(|v| v == "1") {
            eprintln!("host files kept in {}", dir.display());
            return;
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
