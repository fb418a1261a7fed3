//! HTTP/2 streams that are not their connection's first (issue 18, finding 5), on both hosts.
//!
//! On ngx_wasm_module only a connection's first request may wait for an IdP answer
//! (kong/README.md row 12): a later HTTP/2 stream that needs one is answered 503 with
//! `Retry-After: 1` at once, and the root context makes the call it needed, so that a retry on the
//! same connection finds the verdict (`Connection: close` does not end an HTTP/2 connection, so
//! the client keeps using it). Before the fix the refused stream's call was dropped: every retry
//! on that connection got 503 and the IdP never saw a call. On Envoy such a stream waits for its
//! verdict like any other request.
//!
//! The client is `h2load` (Debian's nghttp2-client: h2c with prior knowledge, one connection,
//! requests at the times its script says); curl 7.88 cannot reuse an h2c connection ("Error in
//! the HTTP2 framing layer"). A counting TCP relay in front of the host shows that every stream
//! went on one connection. `h2load` takes headers only on its command line: the app's test secret
//! is visible in the process list while it runs (loopback, a secret of this test's IdP only).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use okta_dcr_auth_tests::*;
use serde_json::json;

const APP_ID: &str = "0oa7h2NewApp";
const APP_SECRET: &str = "h2NewApp-Secret_5k7m9p";

/// A TCP relay to `target` that counts the connections it accepted. Stops when dropped.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking: {e}"));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: a test never needs the relay for longer.
            let until = Instant::now() + Duration::from_secs(60);
            while !halt.load(Ordering::SeqCst) && Instant::now() < until {
                match listener.accept() {
                    Ok((client, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = client.set_nonblocking(false);
                        if let Ok(host) = TcpStream::connect(target) {
                            pump(client, host);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies bytes both ways between `a` and `b` until either side closes (detached threads: they
/// end with the connection, which the host or the client closes).
fn pump(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [
        (a.try_clone(), b.try_clone()),
        (b.try_clone(), a.try_clone()),
    ]
    .into_iter()
    .filter_map(|(f, t)| Some((f.ok()?, t.ok()?)))
    {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

/// Panics, saying what to install, when there is no `h2load`.
fn require_h2load() {
    let found = Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the HTTP/2 tests need h2load (Debian: apt-get install nghttp2-client)"
    );
}

/// Sends `GET path` at each `(offset, path)` of `script` on one h2c connection to `addr`, every
/// request with `authorization`; the status of each, in the order sent (0: no answer).
fn h2load(addr: SocketAddr, authorization: &str, script: &[(Duration, &str)]) -> Vec<u16> {
    require_h2load();
    let log = std::env::temp_dir().join(format!(
        "okta-h2load-{}-{}.tsv",
        std::process::id(),
        epoch_ms()
    ));
    let mut child = Command::new("h2load")
        .args(["-c1", "-m1", "-N", "10s", "--timing-script-file=-"])
        .arg(format!("--log-file={}", log.display()))
        .arg("-H")
        .arg(format!("authorization: {authorization}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run h2load: {e}"));
    let lines: String = script
        .iter()
        .map(|(at, path)| format!("{}\thttp://{addr}{path}\n", at.as_millis()))
        .collect();
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.as_bytes())
            .unwrap_or_else(|e| panic!("h2load's script: {e}"));
    }
    let last = script.last().map_or(Duration::ZERO, |(at, _)| *at);
    let deadline = Instant::now() + last + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&log);
                panic!("h2load did not finish in time");
            }
        }
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("h2load's output: {e}"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    // start time (us since the epoch), status, duration; one line per request that ended.
    let mut ended: Vec<(u64, u16)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    ended.sort_unstable();
    let mut statuses: Vec<u16> = ended.into_iter().map(|(_, s)| s).collect();
    if statuses.len() != script.len() {
        eprintln!(
            "h2load: {} of {} requests ended:\n{}{}",
            statuses.len(),
            script.len(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    statuses.resize(script.len(), 0);
    statuses
}

/// A stream to a route without the filter, then streams for an app the gateway has not seen, a
/// second apart (`Retry-After: 1`), all on one HTTP/2 connection: on ngx_wasm_module the first
/// of them gets 503 and the next one 200; on Envoy the first one 200. One token call either way.
#[test]
fn a_new_app_on_a_reused_http2_connection_passes_within_a_few_retries() {
    let stack = Stack::builder()
        .http2()
        .open_route("/open")
        .route("/", filter_config(json!({})))
        .start();
    let app = stack.client(APP_ID, APP_SECRET, &[SCOPE]);
    let relay = Relay::start(stack.http2_listener());
    let ms = Duration::from_millis;
    let script = [
        (ms(0), "/open"),
        (ms(200), "/api"),
        (ms(1_200), "/api"),
        (ms(2_200), "/api"),
        (ms(3_200), "/api"),
    ];
    let got = h2load(relay.addr, &app.basic(), &script);
    eprintln!("statuses: {got:?}; token calls: {}", stack.token_calls());
    assert_eq!(relay.connections(), 1, "one connection for every stream");
    assert_eq!(got[0], 200, "{got:?}");
    if on_ngx() {
        assert_eq!(got[1], 503, "not the connection's first stream: {got:?}");
    }
    let Some(first_ok) = got[1..].iter().position(|s| *s == 200) else {
        panic!(
            "no stream for the new app passed on its connection: {got:?}; token calls: {}",
            stack.token_calls()
        );
    };
    let allowed = if on_ngx() { 1 } else { 0 };
    assert!(
        first_ok <= allowed,
        "{first_ok} refusals before the first 200: {got:?}"
    );
    assert!(got[1 + first_ok..].iter().all(|s| *s == 200), "{got:?}");
    assert_eq!(stack.token_calls(), 1, "one verdict call for the app");
    let api: Vec<_> = stack
        .upstream()
        .into_iter()
        .filter(|r| !r.path.starts_with("/open"))
        .collect();
    assert_eq!(api.len(), got.len() - 1 - first_ok, "{api:#?}");
    for request in &api {
        assert_eq!(request.header("x-credential-identifier"), Some(APP_ID));
    }
}

/// The same for a Bearer token when the gateway has no key set yet: on ngx_wasm_module the
/// reused stream gets 503, the root fetches the key set, and the next stream passes.
#[test]
fn a_first_bearer_token_on_a_reused_http2_connection_passes_within_a_few_retries() {
    let stack = Stack::builder()
        .http2()
        .open_route("/open")
        .route("/", filter_config(json!({})))
        .start();
    let token = stack.mint(app_token_spec("0oa7h2TokenClient", APP_ID, &[SCOPE]));
    let relay = Relay::start(stack.http2_listener());
    let ms = Duration::from_millis;
    let script = [
        (ms(0), "/open"),
        (ms(200), "/api"),
        (ms(1_200), "/api"),
        (ms(2_200), "/api"),
    ];
    let got = h2load(relay.addr, &format!("Bearer {token}"), &script);
    eprintln!(
        "statuses: {got:?}; key set fetches: {}",
        stack.idp.jwks_fetches()
    );
    assert_eq!(relay.connections(), 1, "one connection for every stream");
    let expected: &[u16] = if on_ngx() {
        &[200, 503, 200, 200]
    } else {
        &[200, 200, 200, 200]
    };
    assert_eq!(got, expected);
    assert_eq!(stack.idp.jwks_fetches(), 1, "one key set fetch");
}
