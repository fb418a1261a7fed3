//! The nginx + ngx_wasm_module side of the harness (Kong Gateway's wasm engine, built by
//! `make kong-engine`): where the engine is, the `nginx.conf` each test runs with, and one nginx
//! master (with its workers) per test.
//!
//! The configuration mirrors the Envoy bootstrap: one `server` on a loopback port, one
//! `location` per route with `proxy_wasm okta_dcr_auth '<json>'` in front of `proxy_pass` to the
//! echo upstream, `shm_kv * 64m` for the filter's shared data, 2 workers. Two settings open the
//! door wider than nginx's defaults, so that the tests see the worst case an operator can
//! configure: `underscores_in_headers on` (the `_` spellings of the identity headers reach the
//! filter) and `ignore_invalid_headers off` (so do names with `.`).
//!
//! The listener has `reuseport`, as Kong's default `proxy_listen` does: each worker gets its own
//! socket and the kernel spreads connections over them (without it, one worker can take a whole
//! burst).
//!
//! nginx cannot listen on port 0 and say which port it got, so the harness picks a free port and
//! retries with another when nginx could not bind it.

use std::collections::BTreeSet;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{self, Response};
use crate::envoy::{workspace_root, ClusterSpec, RouteSpec, StartFailure};

/// How long nginx may take to become ready (wasmtime compiles the module when nginx starts).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The filter's module name in `wasm {}` (Kong names it after the file).
pub const MODULE: &str = "okta_dcr_auth";

/// A path only the harness uses, answered by nginx itself: readiness.
const READY_PATH: &str = "/__harness_ready";

/// The engine directory: `$OKTA_NGX_ENGINE` when set, else what `scripts/kong-engine.sh --dir`
/// names (the cache outside the clone).
pub fn engine_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OKTA_NGX_ENGINE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let script = workspace_root().join("scripts/kong-engine.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--dir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The nginx binary: `$NGX_BIN` when set, else the engine's `sbin/nginx` (`sbin/nginx-debug`
/// with `OKTA_NGX_DEBUG=1`, or when `debug_build`). Panics with the command that builds it when
/// it is missing.
pub fn nginx_binary(debug_build: bool) -> PathBuf {
    if let Some(bin) = std::env::var_os("NGX_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let debug = debug_build || std::env::var("OKTA_NGX_DEBUG").is_ok_and(|v| v == "1");
    let path = engine_dir()
        .join("sbin")
        .join(if debug { "nginx-debug" } else { "nginx" });
    assert!(
        path.is_file(),
        "nginx with ngx_wasm_module not found at {}: run `make kong-engine` in {} (about 13 \
         minutes on 2 cores the first time; the result is cached outside the clone)",
        path.display(),
        workspace_root().display()
    );
    path
}

/// How nginx is run.
#[derive(Debug, Clone)]
pub struct NgxOptions {
    pub workers: u32,
    /// `error_log` level: `debug` shows the filter's debug lines (a release nginx logs nothing
    /// else at that level).
    pub log_level: String,
    /// Run `sbin/nginx-debug` (`--with-debug`: ngx_wasm_module's assertions are on).
    pub debug_build: bool,
    /// A second listener, `listen ... http2` on another loopback port: HTTP/2 without TLS
    /// (h2c), for clients with prior knowledge. nginx 1.22 takes only HTTP/2 on such a listener,
    /// so the HTTP/1.1 one stays as it is.
    pub http2: bool,
}

impl Default for NgxOptions {
    fn default() -> Self {
        NgxOptions {
            workers: 2,
            log_level: "debug".into(),
            debug_build: false,
            http2: false,
        }
    }
}

/// Quotes `s` as one nginx configuration argument (single quotes; `\` and `'` escaped).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The `location` for a route prefix: exact prefixes, longest wins (Envoy takes the first
/// match in order; the tests' prefixes never depend on the difference).
fn location(prefix: &str) -> String {
    format!("location {}", quote(prefix))
}

/// Renders `nginx.conf` for these routes. `upstream` is the echo server; `wasm` the filter.
pub fn render_conf(
    routes: &[RouteSpec],
    upstream: SocketAddr,
    wasm: Option<&Path>,
    port: u16,
    opts: &NgxOptions,
) -> String {
    let mut conf = format!(
        "# written by the okta-dcr-auth test harness (tests/src/ngx.rs)\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         pid nginx.pid;\n\
         error_log error.log {level};\n\
         events {{ worker_connections 1024; }}\n",
        workers = opts.workers,
        level = opts.log_level,
    );
    if let Some(wasm) = wasm {
        conf.push_str(&format!(
            "wasm {{\n    module {MODULE} {};\n    shm_kv * 64m;\n}}\n",
            quote(&wasm.display().to_string())
        ));
    }
    conf.push_str(&format!(
        "http {{\n\
         \x20   access_log off;\n\
         \x20   underscores_in_headers on;\n\
         \x20   ignore_invalid_headers off;\n\
         \x20   client_body_temp_path tmp/client_body;\n\
         \x20   proxy_temp_path tmp/proxy;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port} reuseport;\n\
         \x20       location = {READY_PATH} {{ return 200 \"ready\\n\"; }}\n"
    ));
    for route in routes {
        conf.push_str(&format!("        {} {{\n", location(&route.prefix)));
        if let Some(config) = &route.filter_config {
            conf.push_str(&format!(
                "            proxy_wasm {MODULE} {};\n",
                quote(config)
            ));
        }
        conf.push_str(&format!(
            "            proxy_pass http://{upstream};\n\
             \x20           proxy_read_timeout 10s;\n\
             \x20       }}\n"
        ));
    }
    conf.push_str("    }\n}\n");
    conf
}

/// `conf` (as [`render_conf`] wrote it for `port`) with a second listener on `http2_port` that
/// speaks HTTP/2 without TLS (`listen ... http2`), in the same `server`.
fn with_http2_listener(conf: &str, port: u16, http2_port: u16) -> String {
    let listen = format!("listen 127.0.0.1:{port} reuseport;\n");
    let both = format!("{listen}        listen 127.0.0.1:{http2_port} http2 reuseport;\n");
    conf.replacen(&listen, &both, 1)
}

/// On ngx_wasm_module `idp_upstream` is a `host:port`: a cluster name the tests use is replaced
/// by its address.
pub fn resolve_upstream(config: &mut serde_json::Value, clusters: &[ClusterSpec]) {
    if let Some(up) = config.get_mut("idp_upstream") {
        if let Some(c) = clusters
            .iter()
            .find(|c| up.as_str() == Some(c.name.as_str()))
        {
            *up = serde_json::Value::String(c.addr.to_string());
        }
    }
}

/// A free loopback port, as far as anyone can know before binding it, and never one this
/// process handed out before: with `reuseport` a second nginx could bind the same port and
/// share its connections, where without it the bind would fail.
fn free_port() -> u16 {
    static USED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        if used.insert(port) {
            return port;
        }
    }
}

/// A running nginx master and its workers. Stopped (and waited for) on drop.
pub struct Ngx {
    child: Child,
    dir: PathBuf,
    log_path: PathBuf,
    listener: SocketAddr,
    http2_listener: Option<SocketAddr>,
    stopped: bool,
}

impl Ngx {
    /// Writes `nginx.conf` into `dir` (rendered by `conf` for a port), starts nginx and waits
    /// until a worker answers. Retries on another port when the one picked was taken.
    pub fn start(
        conf: impl Fn(u16) -> String,
        opts: &NgxOptions,
        dir: &Path,
    ) -> Result<Ngx, StartFailure> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            match Ngx::start_on(&conf(port), port, opts, dir) {
                Ok(ngx) => return Ok(ngx),
                Err(f) if f.log.contains("Address already in use") => last = Some(f),
                Err(f) => return Err(f),
            }
        }
        Err(last.unwrap_or_else(|| unreachable_failure(dir)))
    }

    fn start_on(conf: &str, port: u16, opts: &NgxOptions, dir: &Path) -> Result<Ngx, StartFailure> {
        let http2_listener = opts
            .http2
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let conf = match http2_listener {
            Some(h2) => with_http2_listener(conf, port, h2.port()),
            None => conf.to_string(),
        };
        let nginx = nginx_binary(opts.debug_build);
        let conf_path = dir.join("nginx.conf");
        let log_path = dir.join("error.log");
        let _ = fs::remove_file(&log_path);
        for sub in ["tmp", "logs"] {
            let _ = fs::create_dir_all(dir.join(sub));
        }
        fs::write(&conf_path, &conf)
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap_or_else(|e| panic!("open stderr.log: {e}"));
        let out_err = out.try_clone().unwrap_or_else(|e| panic!("dup: {e}"));
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&log_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(out_err))
            // Its own process group, so that a stop reaches the workers too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nginx.display()));
        let mut ngx = Ngx {
            child,
            dir: dir.to_path_buf(),
            log_path,
            listener: SocketAddr::from(([127, 0, 0, 1], port)),
            http2_listener,
            stopped: false,
        };
        match ngx.wait_ready() {
            Ok(()) => Ok(ngx),
            Err((reason, status)) => {
                ngx.stop();
                Err(StartFailure {
                    reason,
                    status,
                    log: ngx.log(),
                    dir: ngx.dir.clone(),
                })
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), (String, Option<ExitStatus>)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("not probed yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Err((format!("nginx exited with {status}"), Some(status)));
            }
            let log = self.log();
            // A worker that fails to start (e.g. on_configure refused) exits with code 2 and is
            // not restarted: nothing would ever answer.
            if log.contains("exited with fatal code") {
                // Say why: the module did not load (an import the host declares otherwise), or
                // the filter refused its configuration, ...
                let why = log
                    .lines()
                    .find(|l| l.contains("[error]") || l.contains("[emerg]"))
                    .unwrap_or("");
                return Err((
                    format!("an nginx worker exited with a fatal code: {why}"),
                    None,
                ));
            }
            if Instant::now() > deadline {
                return Err((format!("not ready after {READY_TIMEOUT:?} ({last})"), None));
            }
            match client::send(
                self.listener,
                "GET",
                READY_PATH,
                &[],
                Duration::from_secs(1),
            ) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{READY_PATH}: {}", r.status),
                Err(e) => last = format!("{READY_PATH}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// The h2c listener ([`NgxOptions::http2`]), if there is one.
    pub fn http2_listener(&self) -> Option<SocketAddr> {
        self.http2_listener
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The error log so far, then whatever nginx wrote to stdout and stderr.
    pub fn log(&self) -> String {
        let mut text = fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Ok(b) = fs::read(self.dir.join("stderr.log")) {
            text.push_str(&String::from_utf8_lossy(&b));
        }
        text
    }

    /// Whether the master still runs.
    pub fn is_running(&mut self) -> bool {
        !self.stopped && matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether a worker connection answers at all (a master whose workers died still accepts).
    pub fn answers(&self) -> bool {
        client::send(
            self.listener,
            "GET",
            READY_PATH,
            &[],
            Duration::from_secs(2),
        )
        .is_ok_and(|r: Response| r.status == 200)
    }

    /// SIGTERM (fast shutdown) to the master, then SIGKILL to the whole group after 5 s.
    /// Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (workers of a killed master included).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    /// Connects to the listener and returns once the connection is open (for tests that hold
    /// connections).
    pub fn connect(&self) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&self.listener, Duration::from_secs(2))
    }
}

fn unreachable_failure(dir: &Path) -> StartFailure {
    StartFailure {
        reason: "no port could be bound".into(),
        status: None,
        log: String::new(),
        dir: dir.to_path_buf(),
    }
}

impl Drop for Ngx {
    fn drop(&mut self) {
        self.stop();
    }
}
