#!/usr/bin/env python3
"""`make bench` driver (run through bench/run.sh, which builds and installs what this needs).

Measures, on loopback, Envoy configurations that differ only in their HTTP filters:

  none         no filter
  empty        the cheapest proxy-wasm filter (bench/empty-filter: reads one header, continues)
  basic_auth   Envoy's native envoy.filters.http.basic_auth, an htpasswd {SHA} user
  okta_basic   okta-dcr-auth, warm cache, Basic client credentials
  okta_bearer  okta-dcr-auth, warm cache, Bearer token (the same Envoy as okta_basic)

each on two listeners: `direct` (the route is a direct_response) and `upstream` (the route goes to
an upstream Envoy that answers with a direct_response). Envoy under test: --concurrency 1, pinned
to core 1 (with the upstream Envoy); load generators pinned to core 0. Configurations are
interleaved round by round. Then: the cold path against the dev IdP with a fixed delay, Envoy's
RSS with a full cache, the host calls of one request (Envoy's wasm trace log), and the core's
per-request work natively (criterion). Writes bench/RESULTS.md and bench/out/results.json.

Only standard library. Every process it starts runs in its own session and is stopped by id.
"""

import base64
import hashlib
import http.client
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LOGS = OUT / "logs"
CONFIGS = OUT / "configs"

# Relative paths are relative to the repository root.
ENVOY = ROOT / os.environ.get("ENVOY", ".venv/bin/envoy")
DEVIDP = ROOT / os.environ.get("DEVIDP", "target/release/okta-dev-idp")
WRK = os.environ.get("WRK", "wrk")
OHA = os.environ.get("OHA", str(ROOT / "bench/.tools/bin/oha"))
BUILT_OKTA_WASM = ROOT / "target/wasm32-wasip1/release/okta_dcr_auth.wasm"
BUILT_EMPTY_WASM = ROOT / "target/wasm32-wasip1/release/empty_filter.wasm"
# Every Envoy loads copies taken at the start, so that a rebuild during the run changes nothing.
OKTA_WASM = ROOT / "bench/out/wasm/okta_dcr_auth.wasm"
EMPTY_WASM = ROOT / "bench/out/wasm/empty_filter.wasm"

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "1")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "0")
# A rate low enough that oha's 1 ms pacing sends one request at a time: the filter's own added
# latency, without the queue that bursts at half the knee build in the one worker.
LOW_RATE = int(os.environ.get("BENCH_LOW_RATE", "1000"))
LOW_SECONDS = min(SECONDS, 4)
COLD_N = int(os.environ.get("BENCH_COLD_N", "200"))
COLD_BURST = int(os.environ.get("BENCH_COLD_BURST", "50"))
COLD_BURST_WIDTH = 4
IDP_DELAY_MS = int(os.environ.get("BENCH_IDP_DELAY_MS", "20"))
CACHE_SLOTS = 16384  # the filter's default `cache_slots`
SKIP_CRITERION = os.environ.get("BENCH_SKIP_CRITERION") == "1"

DEMO_ID = "0oa6demoDcrClient4kong"
DEMO_SECRET = "demo-Secret_4kong-DCR"
INTROSPECT_ID = "0oa6gatewayIntrospect"
INTROSPECT_SECRET = "gateway-Introspection_Secret"
HTPASSWD_USER, HTPASSWD_PASSWORD = "bench", "bench-Password_1"

COLUMNS = ["none", "empty", "basic_auth", "okta_basic", "okta_bearer"]
SETS = ["direct", "upstream"]
# Which Envoy serves each column.
ENVOY_OF = {
    "none": "none",
    "empty": "empty",
    "basic_auth": "basic_auth",
    "okta_basic": "okta",
    "okta_bearer": "okta",
}


def log(msg):
    print(f"bench: {msg}", flush=True)


def b64(s):
    return base64.b64encode(s.encode()).decode()


# --- processes -------------------------------------------------------------------------------

PROCS = []


class Proc:
    def __init__(self, name, argv, cpu=None):
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        self.argv = argv
        self.logf = open(self.log_path, "wb")
        # taskset execs the program, so the pid is the program's own.
        self.p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=ROOT)
        PROCS.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.logf.close()
        if self in PROCS:
            PROCS.remove(self)

    def tail(self, n=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def stop_all():
    for p in list(PROCS):
        p.stop()


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def cpu_ns(pid):
    """CPU time of every thread of `pid`, ns (schedstat: time on CPU)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def core_busy_ns(cpu):
    """Time core `cpu` spent busy, ns (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = list(map(int, line.split()[1:]))
                return (sum(v[:8]) - v[3] - v[4]) * 1e9 / os.sysconf("SC_CLK_TCK")
    return 0.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- HTTP ------------------------------------------------------------------------------------

def http_request(method, port, path, body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict((k.lower(), v) for k, v in r.getheaders())
    finally:
        conn.close()



def wait_until(what, check, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise SystemExit(f"bench: {what}: {proc.name} exited; the end of {proc.log_path}:\n{proc.tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    tail = f"; the end of {proc.log_path}:\n{proc.tail()}" if proc else ""
    raise SystemExit(f"bench: {what}: not ready after {timeout}s{tail}")


class Client:
    """One keep-alive connection, timing each request (perf_counter)."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, headers):
        t0 = time.perf_counter()
        self.conn.request("GET", "/", headers=headers)
        r = self.conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0

    def post(self, path, body, headers):
        t0 = time.perf_counter()
        self.conn.request("POST", path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, time.perf_counter() - t0, data

    def close(self):
        self.conn.close()


# --- the dev IdP -----------------------------------------------------------------------------

class Idp:
    def __init__(self, port):
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}/oauth2/default"
        self.proc = Proc("idp", [str(DEVIDP), "idp", "--listen", f"127.0.0.1:{port}", "--demo"], cpu=CLIENT_CPU)
        wait_until("dev IdP", lambda: http_request(
            "GET", port, "/oauth2/default/.well-known/oauth-authorization-server")[0] == 200, 20, self.proc)
        self.admin = Client(port)

    def _admin(self, method, path, obj=None):
        body = json.dumps(obj) if obj is not None else None
        self.admin.conn.request(method, path, body=body,
                                headers={"content-type": "application/json"} if body else {})
        r = self.admin.conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise SystemExit(f"bench: dev IdP {method} {path}: {r.status} {data[:200]!r}")
        return json.loads(data) if data else None

    def register(self, client_id, secret, scopes=("api:read",)):
        self._admin("POST", "/_dev/clients", {"id": client_id, "secret": secret, "scopes": list(scopes)})

    def mint(self, client_id=DEMO_ID, scopes=("api:read",), expires_in_secs=7200):
        return self._admin("POST", "/_dev/tokens", {
            "client_id": client_id, "scopes": list(scopes), "expires_in_secs": expires_in_secs})["access_token"]

    def delay(self, endpoint, ms):
        self._admin("POST", "/_dev/fault", {"endpoint": endpoint, "delay_ms": ms})

    def clear_faults(self):
        self._admin("DELETE", "/_dev/fault")

    def stats(self):
        return self._admin("GET", "/_dev/stats")

    def reset(self):
        self._admin("POST", "/_dev/reset")


# --- Envoy configurations --------------------------------------------------------------------

def okta_config_json(idp, extra=None):
    """The filter's configuration, as the exact bytes Envoy hands it (its digest scopes the cache)."""
    cfg = {
        "issuer": idp.issuer,
        "idp_upstream": "okta",
        "introspection_client_id": INTROSPECT_ID,
        "introspection_client_secret": INTROSPECT_SECRET,
        "scopes": ["api:read"],
        # Warm runs stay warm for the whole bench (the default, 300 s, would refresh mid-run).
        "cache_ttl_s": 3600,
    }
    cfg.update(extra or {})
    return json.dumps(cfg, separators=(",", ":"))


def wasm_filter(name, path, configuration=None):
    config = {
        "name": name,
        "failure_policy": "FAIL_CLOSED",
        "vm_config": {
            "vm_id": name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(path)}},
        },
    }
    if configuration is not None:
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration,
        }
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                         "config": config},
    }


def htpasswd_sha(user, password):
    return f"{user}:{{SHA}}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def http_filters(kind, okta_json=None):
    if kind == "none":
        return []
    if kind == "empty":
        return [wasm_filter("bench-empty", EMPTY_WASM)]
    if kind == "basic_auth":
        return [{
            "name": "envoy.filters.http.basic_auth",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
                "users": {"inline_string": htpasswd_sha(HTPASSWD_USER, HTPASSWD_PASSWORD) + "\n"},
                # Like okta-dcr-auth, tell the upstream who called.
                "forward_username_header": "x-credential-identifier",
            },
        }]
    if kind == "okta":
        return [wasm_filter("okta-dcr-auth", OKTA_WASM, okta_json)]
    raise ValueError(kind)


def listener(name, port, route, filters):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": name, "virtual_hosts": [
                    {"name": "all", "domains": ["*"], "routes": [dict({"match": {"prefix": "/"}}, **route)]}]},
                "http_filters": filters + [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def cluster(name, port):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


DIRECT = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
TO_UPSTREAM = {"route": {"cluster": "upstream"}}


def envoy_config(admin_port, listeners, idp_port, upstream_port):
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            # The same clusters everywhere: only the HTTP filters differ.
            "clusters": [cluster("okta", idp_port), cluster("upstream", upstream_port)],
        },
    }


class Envoy:
    def __init__(self, name, config, concurrency=1, cpu=SERVER_CPU, extra_args=()):
        self.name = name
        self.config_path = CONFIGS / f"{name}.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.ports = {l["name"]: l["address"]["socket_address"]["port_value"]
                      for l in config["static_resources"]["listeners"]}
        self.argv = [str(ENVOY), "-c", str(self.config_path), "--concurrency", str(concurrency),
                     "--disable-hot-restart", "--log-level", "warn", *extra_args]
        self.proc = Proc(f"envoy-{name}", self.argv, cpu=cpu)
        wait_until(f"Envoy {name}", lambda: http_request("GET", self.admin_port, "/ready")[0] == 200, 60, self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def stats(self, prefix="wasmcustom.okta_dcr_auth"):
        _, body, _ = http_request("GET", self.admin_port, f"/stats?filter=^{prefix}")
        out = {}
        for line in body.decode().splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k.strip()] = int(v)
        return out


# --- load generators -------------------------------------------------------------------------

def wrk(port, header, seconds):
    argv = ["taskset", "-c", CLIENT_CPU, WRK, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
            "-H", f"Authorization: {header}", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    err = re.search(r"Socket errors: (.*)", out)
    if not m or not n:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    if bad or err:
        raise SystemExit(f"bench: wrk saw failures on port {port}:\n{out}")
    return float(m.group(1)), int(n.group(1))


def oha(port, header, seconds, rate):
    argv = ["taskset", "-c", CLIENT_CPU, OHA, "-z", f"{seconds}s", "-q", str(rate), "-c", str(CONNECTIONS),
            "--latency-correction", "--no-tui", "--output-format", "json", "--worker-threads", "1",
            "-H", f"Authorization: {header}", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    if set(codes) - {"200"} or j.get("errorDistribution"):
        # oha counts requests cut by its own deadline as errors: tolerate those, nothing else.
        errs = {k: v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
        if set(codes) - {"200"} or errs:
            raise SystemExit(f"bench: oha saw failures on port {port}: {codes} {errs}")
    p = j["latencyPercentiles"]
    return {
        "rps": j["summary"]["requestsPerSec"],
        "p50_us": p["p50"] * 1e6,
        "p99_us": p["p99"] * 1e6,
        "p99.9_us": p["p99.9"] * 1e6,
    }


# --- statistics ------------------------------------------------------------------------------

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[i]


# --- phases ----------------------------------------------------------------------------------

def start_envoys(idp, upstream_port):
    okta_json = okta_config_json(idp)
    envoys = {}
    for kind in ["none", "empty", "basic_auth", "okta"]:
        admin, direct, proxied = free_ports(3)
        filters = http_filters(kind, okta_json)
        cfg = envoy_config(admin, [listener("direct", direct, DIRECT, filters),
                                   listener("upstream", proxied, TO_UPSTREAM, filters)],
                           idp.port, upstream_port)
        envoys[kind] = Envoy(kind, cfg)
    return envoys, okta_json


def start_upstream(idp_port):
    admin, port = free_ports(2)
    cfg = envoy_config(admin, [listener("origin", port, DIRECT, [])], idp_port, port)
    return Envoy("upstream-origin", cfg), port


def check_and_warm(envoys, headers):
    """Every column answers 200 on both listeners (okta: the first request fills the cache)."""
    for col in COLUMNS:
        env = envoys[ENVOY_OF[col]]
        for s in SETS:
            port = env.ports[s]
            wait_until(f"{col}/{s} answers 200",
                       lambda: http_request("GET", port, "/", headers={"authorization": headers[col]})[0] == 200,
                       20, env.proc)
    # A wrong credential is refused where a filter checks it: the filters really run.
    for col in ["basic_auth", "okta_basic"]:
        port = envoys[ENVOY_OF[col]].ports["direct"]
        st = http_request("GET", port, "/", headers={"authorization": "Basic " + b64("nobody:wrong")})[0]
        if st != 401:
            raise SystemExit(f"bench: {col}: a wrong credential got {st}, not 401")
    for col in COLUMNS:
        for s in SETS:
            wrk(envoys[ENVOY_OF[col]].ports[s], headers[col], 1)


def throughput_phase(envoys, headers, upstream):
    runs = {s: {c: [] for c in COLUMNS} for s in SETS}
    for r in range(ROUNDS):
        for s in SETS:
            for col in COLUMNS:
                env = envoys[ENVOY_OF[col]]
                pids = [env.pid] + ([upstream.pid] if s == "upstream" else [])
                b0, t0 = core_busy_ns(SERVER_CPU), time.monotonic()
                c0 = [cpu_ns(p) for p in pids]
                rps, n = wrk(env.ports[s], headers[col], SECONDS)
                c1 = [cpu_ns(p) for p in pids]
                b1, t1 = core_busy_ns(SERVER_CPU), time.monotonic()
                ours = sum(b - a for a, b in zip(c0, c1))
                runs[s][col].append({
                    "rps": rps,
                    "requests": n,
                    "cpu_us_per_req": (c1[0] - c0[0]) / n / 1000,
                    "upstream_cpu_us_per_req": (c1[1] - c0[1]) / n / 1000 if len(pids) > 1 else None,
                    # Share of the server core that went to anything but the Envoy(s) measured.
                    "foreign_share": max(0.0, (b1 - b0 - ours) / ((t1 - t0) * 1e9)),
                })
            log(f"throughput round {r + 1}/{ROUNDS} {s}: " +
                "  ".join(f"{c}={runs[s][c][-1]['rps']:.0f}" for c in COLUMNS))
    return runs


def latency_phase(envoys, headers, rates, sets=SETS, seconds=SECONDS):
    runs = {s: {c: [] for c in COLUMNS} for s in sets}
    for r in range(ROUNDS):
        for s in sets:
            for col in COLUMNS:
                env = envoys[ENVOY_OF[col]]
                runs[s][col].append(oha(env.ports[s], headers[col], seconds, rates[s]))
            log(f"latency round {r + 1}/{ROUNDS} {s} at {rates[s]} rps: " +
                "  ".join(f"{c}=p99 {runs[s][c][-1]['p99_us']:.0f}us" for c in COLUMNS))
    return runs


def cold_phase(idp, envoys):
    """Unique credentials per request, the IdP answering after a fixed delay."""
    env = envoys["okta"]
    port = env.ports["direct"]
    n, m = COLD_N, COLD_BURST
    log(f"cold path: registering {2 * n + m} clients and minting {2 * n + m} tokens at the dev IdP")
    run_id = int(time.time())
    basic = [(f"0oacold{run_id}x{i:05d}", f"cold-Secret-{i:05d}-{run_id}") for i in range(2 * n + m)]
    for cid, secret in basic:
        idp.register(cid, secret)
    tokens = [idp.mint() for _ in range(2 * n + m)]
    direct_basic, cold_basic, burst_basic = basic[:n], basic[n:2 * n], basic[2 * n:]
    direct_tokens, cold_tokens, burst_tokens = tokens[:n], tokens[n:2 * n], tokens[2 * n:]

    idp.delay("token", IDP_DELAY_MS)
    idp.delay("introspect", IDP_DELAY_MS)
    res = {"delay_ms": IDP_DELAY_MS, "n": n, "burst": m, "burst_width": COLD_BURST_WIDTH}
    try:
        # The IdP's own latency, asked directly by the same client with fresh credentials.
        c = Client(idp.port)
        own_token, own_introspect = [], []
        form = "grant_type=client_credentials&scope=api%3Aread"
        for cid, secret in direct_basic:
            st, dt, _ = c.post("/oauth2/default/v1/token", form, {
                "authorization": "Basic " + b64(f"{cid}:{secret}"),
                "content-type": "application/x-www-form-urlencoded"})
            assert st == 200, st
            own_token.append(dt)
        auth = "Basic " + b64(f"{INTROSPECT_ID}:{INTROSPECT_SECRET}")
        for tok in direct_tokens:
            body = urllib.parse.urlencode({"token": tok, "token_type_hint": "access_token"})
            st, dt, _ = c.post("/oauth2/default/v1/introspect", body, {
                "authorization": auth, "content-type": "application/x-www-form-urlencoded"})
            assert st == 200, st
            own_introspect.append(dt)
        c.close()

        # The same client through Envoy, one request per new credential.
        idp.reset()
        before = env.stats()
        c = Client(port)
        thru_basic = []
        for cid, secret in cold_basic:
            st, dt = c.get({"authorization": "Basic " + b64(f"{cid}:{secret}")})
            if st != 200:
                raise SystemExit(f"bench: cold Basic request got {st}")
            thru_basic.append(dt)
        thru_bearer = []
        for tok in cold_tokens:
            st, dt = c.get({"authorization": "Bearer " + tok})
            if st != 200:
                raise SystemExit(f"bench: cold Bearer request got {st}")
            thru_bearer.append(dt)
        # Warm, for reference: the same client, a cached credential.
        warm = []
        for _ in range(n):
            st, dt = c.get({"authorization": "Basic " + b64(f"{cold_basic[0][0]}:{cold_basic[0][1]}")})
            warm.append(dt)
        c.close()
        seq_stats = idp.stats()

        # Bursts: COLD_BURST_WIDTH concurrent requests with the same new credential, each on its
        # own connection: still one IdP call per credential.
        idp.reset()
        statuses = []

        def burst(header):
            barrier = threading.Barrier(COLD_BURST_WIDTH)
            clients = [Client(port) for _ in range(COLD_BURST_WIDTH)]

            def one(cl):
                barrier.wait()
                statuses.append(cl.get({"authorization": header})[0])

            ts = [threading.Thread(target=one, args=(cl,)) for cl in clients]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for cl in clients:
                cl.close()

        for cid, secret in burst_basic:
            burst("Basic " + b64(f"{cid}:{secret}"))
        for tok in burst_tokens:
            burst("Bearer " + tok)
        burst_stats = idp.stats()
        after = env.stats()
    finally:
        idp.clear_faults()

    def summary(xs):
        return {"p50_ms": pct(xs, 50) * 1e3, "p99_ms": pct(xs, 99) * 1e3, "max_ms": max(xs) * 1e3}

    res.update({
        "idp_own_token": summary(own_token),
        "idp_own_introspect": summary(own_introspect),
        "through_basic": summary(thru_basic),
        "through_bearer": summary(thru_bearer),
        "warm_same_client": summary(warm),
        "added_basic_p50_ms": (pct(thru_basic, 50) - pct(own_token, 50)) * 1e3,
        "added_basic_p99_ms": (pct(thru_basic, 99) - pct(own_token, 99)) * 1e3,
        "added_bearer_p50_ms": (pct(thru_bearer, 50) - pct(own_introspect, 50)) * 1e3,
        "added_bearer_p99_ms": (pct(thru_bearer, 99) - pct(own_introspect, 99)) * 1e3,
        "beyond_delay_basic_p50_ms": pct(thru_basic, 50) * 1e3 - IDP_DELAY_MS,
        "beyond_delay_bearer_p50_ms": pct(thru_bearer, 50) * 1e3 - IDP_DELAY_MS,
        "idp_calls_sequential": {"token": seq_stats["token"], "introspect": seq_stats["introspect"],
                                 "discovery": seq_stats["discovery"]},
        "idp_calls_burst": {"token": burst_stats["token"], "introspect": burst_stats["introspect"],
                            "discovery": burst_stats["discovery"]},
        "burst_statuses": {str(k): statuses.count(k) for k in sorted(set(statuses))},
        "filter_metrics_delta": {k.replace("wasmcustom.okta_dcr_auth_", ""): after.get(k, 0) - before.get(k, 0)
                                 for k in after if after.get(k, 0) != before.get(k, 0)},
    })
    log(f"cold path: added p50 Basic {res['added_basic_p50_ms']:.3f} ms, Bearer {res['added_bearer_p50_ms']:.3f} ms; "
        f"IdP calls {res['idp_calls_sequential']} for {n}+{n} credentials, burst {res['idp_calls_burst']} for {m}+{m}")
    return res


def slot_of(digest, client_id, secret, slots):
    h = hashlib.sha256(digest + b"basic\0" + client_id.encode() + b"\0" + secret.encode()).digest()
    return int.from_bytes(h[:8], "little") % slots


def fill_credentials(okta_json, slots):
    """One Basic credential per slot, found by mirroring CacheKey (src/cache.rs): SHA-256 over the
    configuration's digest, `basic\\0`, the id, `\\0`, the secret; the slot is its first 8 bytes,
    little-endian, modulo `cache_slots`. Checked afterwards through the filter's own hit counter."""
    digest = hashlib.sha256(okta_json.encode()).digest()
    found = {}
    i = 0
    while len(found) < slots:
        cid, secret = f"0oafill{i:07d}", f"fill-Secret-{i:07d}"
        found.setdefault(slot_of(digest, cid, secret, slots), (cid, secret))
        i += 1
    return list(found.values()), i


def parallel_requests(port, headers_list, width=8):
    """Sends each header once, over `width` keep-alive connections; returns the statuses."""
    statuses = [0] * len(headers_list)

    def worker(k):
        c = Client(port)
        for j in range(k, len(headers_list), width):
            statuses[j] = c.get({"authorization": headers_list[j]})[0]
        c.close()

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(width)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses


def memory_phase(idp, upstream_port):
    """RSS with 2 workers: no filter, the empty filter, and okta-dcr-auth empty then with a full
    default cache (one entry in every one of the 16384 slots, each the size a real Basic
    verdict has: client id, scope and the ~1 KB access token Okta issued)."""
    okta_json = okta_config_json(idp, {"cache_slots": CACHE_SLOTS})
    envs = {}
    for kind in ["none", "empty", "okta"]:
        admin, port = free_ports(2)
        cfg = envoy_config(admin, [listener("direct", port, DIRECT, http_filters(kind, okta_json))],
                           idp.port, upstream_port)
        envs[kind] = Envoy(f"mem-{kind}", cfg, concurrency=2, cpu=f"{CLIENT_CPU},{SERVER_CPU}")
    res = {"concurrency": 2, "cache_slots": CACHE_SLOTS}
    try:
        creds, tried = fill_credentials(okta_json, CACHE_SLOTS)
        log(f"memory: {CACHE_SLOTS} credentials cover every slot ({tried} candidates hashed); registering them")
        for cid, secret in creds:
            idp.register(cid, secret)
        fill = ["Basic " + b64(f"{cid}:{secret}") for cid, secret in creds]
        demo = "Basic " + b64(f"{DEMO_ID}:{DEMO_SECRET}")
        # Same traffic to the reference Envoys, so that buffers and allocator caches compare.
        for kind in ["none", "empty", "okta"]:
            st = parallel_requests(envs[kind].ports["direct"], [demo] * 200)
            assert set(st) == {200}, (kind, set(st))
        time.sleep(1)
        res["rss_start_kib"] = {k: rss_kib(e.pid) for k, e in envs.items()}
        log(f"memory: filling the cache with {len(fill)} credentials (one IdP call each)")
        before = envs["okta"].stats()
        st = parallel_requests(envs["okta"].ports["direct"], fill)
        if set(st) != {200}:
            raise SystemExit(f"bench: memory fill: statuses {sorted(set(st))}")
        mid = envs["okta"].stats()
        st = parallel_requests(envs["okta"].ports["direct"], fill)
        after = envs["okta"].stats()
        for kind in ["none", "empty"]:
            parallel_requests(envs[kind].ports["direct"], [demo] * (2 * len(fill)))
        time.sleep(1)
        key = "wasmcustom.okta_dcr_auth_cache_{}"
        res["fill"] = {
            "credentials": len(fill),
            "first_pass_misses": mid.get(key.format("misses"), 0) - before.get(key.format("misses"), 0),
            "second_pass_hits": after.get(key.format("hits"), 0) - mid.get(key.format("hits"), 0),
            "second_pass_misses": after.get(key.format("misses"), 0) - mid.get(key.format("misses"), 0),
        }
        res["rss_full_kib"] = {k: rss_kib(e.pid) for k, e in envs.items()}
        res["added_full_vs_none_mib"] = (res["rss_full_kib"]["okta"] - res["rss_full_kib"]["none"]) / 1024
        res["added_full_vs_empty_mib"] = (res["rss_full_kib"]["okta"] - res["rss_full_kib"]["empty"]) / 1024
        log(f"memory: RSS full {res['rss_full_kib']} KiB; okta - none = {res['added_full_vs_none_mib']:.1f} MiB; "
            f"fill {res['fill']}")
    finally:
        for e in envs.values():
            e.proc.stop()
    return res


def host_calls_phase(idp, upstream_port, headers):
    """Envoy's wasm trace log for one warm request: every VM->host call and host->VM callback."""
    okta_json = okta_config_json(idp)
    res = {}
    for kind, col in [("empty", "empty"), ("okta", "okta_basic"), ("okta", "okta_bearer")]:
        admin, port = free_ports(2)
        cfg = envoy_config(admin, [listener("direct", port, DIRECT, http_filters(kind, okta_json))],
                           idp.port, upstream_port)
        env = Envoy(f"trace-{col}", cfg, extra_args=("--component-log-level", "wasm:trace"))
        try:
            h = {"authorization": headers[col]}
            for _ in range(2):  # the first fills the cache and settles the VM
                st = http_request("GET", port, "/", headers=h)[0]
                assert st == 200, (col, st)
            time.sleep(0.3)
            start = env.proc.log_path.stat().st_size
            st = http_request("GET", port, "/", headers=h)[0]
            assert st == 200, (col, st)
            time.sleep(0.5)
            with open(env.proc.log_path, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            to_host, to_vm = {}, {}
            # Lines of the threads interleave: follow each thread's call nesting, and leave out
            # whatever happens inside a root context's tick (not the request's work).
            stacks = {}
            for line in text.splitlines():
                t = re.match(r"\[[^]]*\]\[(\d+)\]", line)
                if not t:
                    continue
                stack = stacks.setdefault(t.group(1), [])
                in_tick = "proxy_on_tick" in stack
                m = re.search(r"\[host->vm\] ([a-z_0-9]+)", line)
                if m:
                    stack.append(m.group(1))
                    if not in_tick and m.group(1) != "proxy_on_tick":
                        to_vm[m.group(1)] = to_vm.get(m.group(1), 0) + 1
                    continue
                if re.search(r"\[host<-vm\] ", line) and stack:
                    stack.pop()
                    continue
                m = re.search(r"\[vm->host\] (?:env\.)?([a-z_0-9]+)", line)
                if m and not in_tick:
                    to_host[m.group(1)] = to_host.get(m.group(1), 0) + 1
            res[col] = {"vm_to_host": to_host, "host_to_vm": to_vm,
                        "vm_to_host_total": sum(to_host.values()), "host_to_vm_total": sum(to_vm.values())}
            (OUT / f"trace-{col}.log").write_text(text)
        finally:
            env.proc.stop()
    log("host calls per warm request: " + ", ".join(
        f"{c}: {r['vm_to_host_total']} VM->host, {r['host_to_vm_total']} host->VM" for c, r in res.items()))
    return res


def criterion_phase():
    if SKIP_CRITERION:
        return None
    argv = ["taskset", "-c", SERVER_CPU, "cargo", "bench", "-q", "-p", "okta-dcr-auth", "--bench", "core", "--",
            "--warm-up-time", "1", "--measurement-time", "3", "--noplot"]
    log("criterion: " + " ".join(argv))
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    (OUT / "criterion.txt").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"bench: criterion failed:\n{out.stderr[-3000:]}")
    results = {}
    base = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "criterion"
    for est in sorted(base.glob("*/*/new/estimates.json")):
        group, name = est.parts[-4], est.parts[-3]
        j = json.loads(est.read_text())
        results[f"{group}/{name}"] = {
            "median_ns": j["median"]["point_estimate"],
            "lo_ns": j["median"]["confidence_interval"]["lower_bound"],
            "hi_ns": j["median"]["confidence_interval"]["upper_bound"],
        }
    return {"argv": argv, "results": results}


# --- report ----------------------------------------------------------------------------------

def sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "(not found)"


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "load_at_start": load,
        "envoy": sh([str(ENVOY), "--version"]).splitlines()[-1] if ENVOY.exists() else "?",
        "rustc": sh(["rustc", "--version"]),
        "wrk": (sh([WRK, "-v"]) or subprocess.run([WRK, "-v"], capture_output=True, text=True).stderr).splitlines()[0],
        "oha": sh([OHA, "--version"]),
        "python": platform.python_version(),
    }


def summarize_throughput(runs):
    out = {}
    for s in SETS:
        out[s] = {}
        for col in COLUMNS:
            rs = runs[s][col]
            rps = [r["rps"] for r in rs]
            vs_none = [r["rps"] / n["rps"] for r, n in zip(rs, runs[s]["none"])]
            vs_empty = [r["rps"] / e["rps"] for r, e in zip(rs, runs[s]["empty"])]
            cpu = [r["cpu_us_per_req"] for r in rs]
            out[s][col] = {
                "rps": rps, "median_rps": med(rps),
                "ratio_vs_none": vs_none, "median_ratio_vs_none": med(vs_none),
                "ratio_vs_empty": vs_empty, "median_ratio_vs_empty": med(vs_empty),
                "cpu_us_per_req": cpu, "median_cpu_us_per_req": med(cpu),
                "median_cpu_added_vs_empty_us": med([a - b["cpu_us_per_req"] for a, b in zip(cpu, runs[s]["empty"])]),
                # The throughput ratio Envoy's own CPU time implies: robust to other load on the core.
                "median_cpu_ratio_vs_empty": med([b["cpu_us_per_req"] / a for a, b in zip(cpu, runs[s]["empty"])]),
                "foreign_share": [r["foreign_share"] for r in rs],
                "median_cpu_added_vs_none_us": med([a - b["cpu_us_per_req"] for a, b in zip(cpu, runs[s]["none"])]),
            }
            up = [r["upstream_cpu_us_per_req"] for r in rs if r["upstream_cpu_us_per_req"] is not None]
            if up:
                out[s][col]["median_upstream_cpu_us_per_req"] = med(up)
    return out


def summarize_latency(runs):
    out = {}
    for s in runs:
        out[s] = {}
        for col in COLUMNS:
            rs = runs[s][col]
            d = {"runs": rs}
            for q in ["p50_us", "p99_us", "p99.9_us"]:
                d[f"median_{q}"] = med([r[q] for r in rs])
                d[f"added_vs_none_{q}"] = med([r[q] - n[q] for r, n in zip(rs, runs[s]["none"])])
                d[f"added_vs_empty_{q}"] = med([r[q] - e[q] for r, e in zip(rs, runs[s]["empty"])])
            d["median_rps"] = med([r["rps"] for r in rs])
            out[s][col] = d
    return out


def fmt(x, nd=0):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:,.{nd}f}"


def passfail(ok):
    return "**met**" if ok else "**MISSED**"


def write_results(ctx):
    m = ctx["machine"]
    tp, lat = ctx["throughput"], ctx["latency"]
    L = []
    a = L.append
    a("# okta-dcr-auth benchmark results")
    a("")
    a(f"Written by `make bench` ({ctx['finished']}, {ctx['elapsed_s']:.0f} s, "
      f"BENCH_ROUNDS={ROUNDS}, BENCH_SECONDS={SECONDS}). Raw numbers: `bench/out/results.json`.")
    a("")
    a("## Goals (issue 5)")
    a("")
    a("| goal | measured | |")
    a("|---|---|---|")
    for g in ctx["goals"]:
        a(f"| {g['goal']} | {g['measured']} | {passfail(g['ok'])} |")
    a("")
    a("## Machine and versions")
    a("")
    a(f"- {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}; load average at start {m['load_at_start']}, "
      f"at end {ctx['load_at_end']}")
    a(f"- Envoy: `{m['envoy']}`")
    a(f"- {m['rustc']}; {m['wrk']}; {m['oha']}; Python {m['python']}")
    a(f"- `.wasm`: okta_dcr_auth.wasm {ctx['wasm']['okta']:,} bytes ({ctx['wasm']['okta'] / 1024:.0f} KiB); "
      f"empty_filter.wasm {ctx['wasm']['empty']:,} bytes; built from commit {ctx['wasm']['commit']}, "
      f"okta_dcr_auth.wasm SHA-256 `{ctx['wasm']['okta_sha256'][:16]}…`")
    a("")
    a("The machine is shared (other builds and tests may run on it): a load average above ~0.5 at start "
      "means the numbers are noisy. Envoy's CPU time per request (from `/proc/PID/task/*/schedstat`) is "
      "counted per process, so it is less sensitive to other load than requests per second.")
    a("")
    a("## Setup")
    a("")
    a("Envoy configurations rendered into `bench/out/configs/`, identical but for the HTTP filters:")
    a("")
    a("- `none`: no filter; `empty`: bench/empty-filter (reads `authorization` with one host call, continues); "
      "`basic_auth`: `envoy.filters.http.basic_auth`, one htpasswd `{SHA}` user, `forward_username_header`; "
      "`okta_basic`, `okta_bearer`: okta-dcr-auth (the same Envoy), warm cache, "
      "Basic client credentials (`forward_access_token`: the upstream gets the ~0.5 KB token Okta issued) "
      "or a Bearer token (~0.8 KB JWT).")
    a("- Each Envoy has two listeners: `direct` (route = `direct_response`) and `upstream` (route to an "
      "upstream Envoy, itself a `direct_response`, pinned to the same core as the Envoy under test).")
    a(f"- Envoy `--concurrency 1`, `taskset -c {SERVER_CPU}`; load generators `taskset -c {CLIENT_CPU}`, "
      f"{CONNECTIONS} keep-alive connections. Rounds: {ROUNDS}, each runs every column of both sets in turn "
      f"(none, empty, basic_auth, okta_basic, okta_bearer), {SECONDS} s each.")
    a("")
    a("Commands (ports vary per run):")
    a("")
    a("```")
    for c in ctx["commands"]:
        a(c)
    a("```")
    a("")
    for s in SETS:
        a(f"## Throughput, `{s}` (wrk, closed loop)")
        a("")
        a("Requests per second per round; ratios are per round, then the median. Envoy CPU us/req: the Envoy "
          "process's CPU time (all threads) over the run divided by the requests served; CPU ratio vs empty: "
          "empty's CPU per request over this one's, the throughput ratio a core of its own would give. When "
          "the load generator's core saturates first (it can, for none and empty), or when other work "
          "shares the server core, requests per second understate the difference; CPU per request does not.")
        a("")
        a("| config | " + " | ".join(f"r{i + 1}" for i in range(ROUNDS)) +
          " | median rps | vs none | vs empty | Envoy CPU us/req | added CPU us/req vs empty | CPU ratio vs empty |")
        a("|---|" + "---|" * ROUNDS + "---|---|---|---|---|---|")
        for col in COLUMNS:
            d = tp[s][col]
            a(f"| {col} | " + " | ".join(fmt(x) for x in d["rps"]) +
              f" | {fmt(d['median_rps'])} | {d['median_ratio_vs_none']:.3f} | {d['median_ratio_vs_empty']:.3f} | "
              f"{d['median_cpu_us_per_req']:.2f} | {d['median_cpu_added_vs_empty_us']:+.2f} | "
              f"{d['median_cpu_ratio_vs_empty']:.3f} |")
        a("")
        a("Other load on the server core during each run (share of the core not used by the Envoy measured; "
          "above ~0.05 the run was disturbed): " + "; ".join(
            f"{col} " + " ".join(f"{x:.2f}" for x in tp[s][col]["foreign_share"]) for col in COLUMNS))
        a("")
        a("Per-round ratio vs empty: " + "; ".join(
            f"{col} " + " ".join(f"{x:.3f}" for x in tp[s][col]["ratio_vs_empty"]) for col in COLUMNS[2:]))
        if s == "upstream":
            a("")
            a("Upstream Envoy CPU per request (median): " + ", ".join(
                f"{col} {tp[s][col].get('median_upstream_cpu_us_per_req', float('nan')):.2f} us" for col in COLUMNS))
        a("")
    tables = [(s, lat, ctx["rates"][s],
               f"oha, open loop at {ctx['rates'][s]:,} rps = half the median no-filter wrk rate",
               "`oha -q` paces with tokio's 1 ms timer, so requests leave in bursts of about rate/1000 at once, and "
               "the tail includes the queue such a burst forms in the one worker: a filter that adds x us per "
               "request adds up to (burst - 1) * x to the wait of the last request of a burst.") for s in SETS]
    if ctx.get("latency_low"):
        tables.append(("direct", ctx["latency_low"], LOW_RATE,
                       f"oha, open loop at {LOW_RATE:,} rps, {LOW_SECONDS} s per run",
                       "One request per 1 ms tick: no queue, so this is the filter's own added latency."))
    for s, lat, rate, title, note in tables:
        a(f"## Latency, `{s}` ({title})")
        a("")
        a("Microseconds. Added latency: per round against the same round's none / empty run, then the median. "
          + note)
        a("")
        a("| config | p50 per round | p99 per round | p99.9 per round | median p50 | median p99 | median p99.9 | "
          "added p50 / p99 / p99.9 vs none | added p50 / p99 / p99.9 vs empty |")
        a("|---|---|---|---|---|---|---|---|---|")
        for col in COLUMNS:
            d = lat[s][col]
            per = lambda q: " ".join(fmt(r[q]) for r in d["runs"])  # noqa: E731
            a(f"| {col} | {per('p50_us')} | {per('p99_us')} | {per('p99.9_us')} | {fmt(d['median_p50_us'])} | "
              f"{fmt(d['median_p99_us'])} | {fmt(d['median_p99.9_us'])} | "
              f"{d['added_vs_none_p50_us']:+.0f} / {d['added_vs_none_p99_us']:+.0f} / {d['added_vs_none_p99.9_us']:+.0f} | "
              f"{d['added_vs_empty_p50_us']:+.0f} / {d['added_vs_empty_p99_us']:+.0f} / {d['added_vs_empty_p99.9_us']:+.0f} |")
        a("")
        a("Achieved rate (median rps): " + ", ".join(f"{c} {fmt(lat[s][c]['median_rps'])}" for c in COLUMNS))
        a("")
    c = ctx.get("cold")
    if c:
        a(f"## Cold path (dev IdP delay {c['delay_ms']} ms on /token and /introspect)")
        a("")
        a(f"{c['n']} new credentials per path, one request each, in sequence, by one Python client on one "
          f"keep-alive connection (`direct` listener of the okta Envoy). The IdP's own latency is the same client "
          f"asking the IdP directly with {c['n']} other new credentials. Milliseconds.")
        a("")
        a("| | p50 | p99 | max |")
        a("|---|---|---|---|")
        for k, label in [("idp_own_token", "IdP /token directly"), ("through_basic", "Basic through Envoy (cold)"),
                         ("idp_own_introspect", "IdP /introspect directly"),
                         ("through_bearer", "Bearer through Envoy (cold)"),
                         ("warm_same_client", "warm Basic through Envoy, same client")]:
            a(f"| {label} | {c[k]['p50_ms']:.3f} | {c[k]['p99_ms']:.3f} | {c[k]['max_ms']:.3f} |")
        a("")
        a(f"- Added beyond the IdP's own latency: Basic p50 {c['added_basic_p50_ms']:+.3f} ms, "
          f"p99 {c['added_basic_p99_ms']:+.3f} ms; Bearer p50 {c['added_bearer_p50_ms']:+.3f} ms, "
          f"p99 {c['added_bearer_p99_ms']:+.3f} ms.")
        a(f"- Beyond the nominal {c['delay_ms']} ms delay (includes the IdP's own work and timer slack): "
          f"Basic p50 {c['beyond_delay_basic_p50_ms']:+.3f} ms, Bearer p50 {c['beyond_delay_bearer_p50_ms']:+.3f} ms.")
        a(f"- IdP calls (dev IdP `/_dev/stats`) for {c['n']} Basic + {c['n']} Bearer credentials: "
          f"{c['idp_calls_sequential']}.")
        a(f"- Bursts: {c['burst']} Basic + {c['burst']} Bearer new credentials, each sent by {c['burst_width']} "
          f"concurrent connections at once: IdP calls {c['idp_calls_burst']}, answers {c['burst_statuses']}.")
        a(f"- Filter metrics over the cold phase: {c['filter_metrics_delta']}")
        a("")
    mem = ctx.get("memory")
    if mem:
        a("## Memory (Envoy VmRSS, `--concurrency 2`)")
        a("")
        a(f"okta-dcr-auth with the default `cache_slots` ({mem['cache_slots']}), filled with one Basic verdict "
          f"per slot (each with the access token Okta issued). Fill check: {mem['fill']}. The reference Envoys "
          f"served the same number of requests.")
        a("")
        a("| Envoy | RSS after start + 200 requests (MiB) | RSS after the fill (MiB) |")
        a("|---|---|---|")
        for k in ["none", "empty", "okta"]:
            a(f"| {k} | {mem['rss_start_kib'][k] / 1024:.1f} | {mem['rss_full_kib'][k] / 1024:.1f} |")
        a("")
        a(f"okta-dcr-auth with a full cache − no filter: **{mem['added_full_vs_none_mib']:.1f} MiB**; "
          f"− empty filter: {mem['added_full_vs_empty_mib']:.1f} MiB.")
        a("")
    hc = ctx.get("host_calls")
    if hc:
        a("## Host calls in one warm request (Envoy `--component-log-level wasm:trace`)")
        a("")
        a("| config | VM→host calls | host→VM callbacks |")
        a("|---|---|---|")
        for col, r in hc.items():
            vh = ", ".join(f"{k} ×{v}" for k, v in sorted(r["vm_to_host"].items()))
            hv = ", ".join(f"{k} ×{v}" for k, v in sorted(r["host_to_vm"].items()))
            a(f"| {col} | {r['vm_to_host_total']}: {vh} | {r['host_to_vm_total']}: {hv} |")
        a("")
    cr = ctx.get("criterion")
    if cr:
        a("## The core natively (criterion, `benches/core.rs`)")
        a("")
        a(f"`{' '.join(cr['argv'])}`. Median time per call, with its 95% confidence interval.")
        a("")
        a("| benchmark | median | 95% CI |")
        a("|---|---|---|")
        for k, v in cr["results"].items():
            a(f"| {k} | {v['median_ns']:.0f} ns | {v['lo_ns']:.0f} – {v['hi_ns']:.0f} ns |")
        a("")
    a("## Reproduce")
    a("")
    a("```sh")
    a("make bench                                  # full run (defaults: BENCH_ROUNDS=5 BENCH_SECONDS=6)")
    a("make bench BENCH_ROUNDS=5 BENCH_SECONDS=5   # shorter")
    a("```")
    a("")
    a("`bench/run.sh` installs `wrk` (apt-get, on Debian) and `oha` (cargo install into bench/.tools) when "
      "missing, builds the filter, the empty filter and the dev IdP, then runs `bench/bench.py`.")
    (ROOT / "bench" / "RESULTS.md").write_text("\n".join(L) + "\n")


def goals(ctx):
    tp, lat = ctx["throughput"], ctx["latency"]
    out = []
    for s in SETS:
        for col in ["okta_basic", "okta_bearer"]:
            r = tp[s][col]["median_ratio_vs_empty"]
            cr = tp[s][col]["median_cpu_ratio_vs_empty"]
            out.append({"goal": f"warm {col.split('_')[1]} throughput ≥ 0.95 × empty filter ({s})",
                        "measured": f"{r:.3f} (CPU-time ratio {cr:.3f}, "
                                    f"{tp[s][col]['median_cpu_added_vs_empty_us']:+.1f} us/req)",
                        "ok": r >= 0.95})
    for s in SETS:
        for col in ["okta_basic", "okta_bearer"]:
            v = lat[s][col]["added_vs_empty_p99_us"]
            out.append({"goal": f"added p99 over empty ≤ 50 us ({col}, {s}, {ctx['rates'][s]:,} rps)",
                        "measured": f"{v:+.0f} us", "ok": v <= 50})
    if ctx.get("latency_low"):
        for col in ["okta_basic", "okta_bearer"]:
            v = ctx["latency_low"]["direct"][col]["added_vs_empty_p99_us"]
            out.append({"goal": f"(reference, no queue) added p99 over empty ≤ 50 us ({col}, direct, {LOW_RATE:,} rps)",
                        "measured": f"{v:+.0f} us", "ok": v <= 50})
    c = ctx.get("cold")
    if c:
        worst = max(c["added_basic_p50_ms"], c["added_bearer_p50_ms"])
        out.append({"goal": "cold path adds ≤ 1 ms beyond the IdP's own latency (p50)",
                    "measured": f"Basic {c['added_basic_p50_ms']:+.3f} ms, Bearer {c['added_bearer_p50_ms']:+.3f} ms "
                                f"(p99 {c['added_basic_p99_ms']:+.3f} / {c['added_bearer_p99_ms']:+.3f})",
                    "ok": worst <= 1.0})
        seq, bur = c["idp_calls_sequential"], c["idp_calls_burst"]
        ok = (seq["token"] == c["n"] and seq["introspect"] == c["n"]
              and bur["token"] == c["burst"] and bur["introspect"] == c["burst"])
        out.append({"goal": "exactly one IdP call per credential",
                    "measured": f"sequential {seq['token']}+{seq['introspect']} for {c['n']}+{c['n']}; "
                                f"bursts of {c['burst_width']}: {bur['token']}+{bur['introspect']} for "
                                f"{c['burst']}+{c['burst']}", "ok": ok})
    w = ctx["wasm"]["okta"]
    out.append({"goal": ".wasm ≤ 400 KB", "measured": f"{w:,} bytes ({w / 1000:.0f} kB)", "ok": w <= 400_000})
    mem = ctx.get("memory")
    if mem:
        v = mem["added_full_vs_none_mib"]
        full = mem["fill"]["second_pass_misses"] == 0
        out.append({"goal": "RSS with a full default cache ≤ 60 MB above no filter (2 workers)",
                    "measured": f"{v:.1f} MiB ({v * 1.048576:.1f} MB)" + ("" if full else " (cache not entirely full)"),
                    "ok": v * 1.048576 <= 60})
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    CONFIGS.mkdir(exist_ok=True)
    for f in [ENVOY, DEVIDP, BUILT_OKTA_WASM, BUILT_EMPTY_WASM, Path(OHA)]:
        if not Path(f).exists():
            raise SystemExit(f"bench: {f} is missing: run `make bench`, which builds it")
    OKTA_WASM.parent.mkdir(exist_ok=True)
    for src, dst in [(BUILT_OKTA_WASM, OKTA_WASM), (BUILT_EMPTY_WASM, EMPTY_WASM)]:
        dst.write_bytes(src.read_bytes())
    t0 = time.time()
    ctx = {"machine": machine()}
    log(f"machine: {ctx['machine']}")
    ctx["wasm"] = {"okta": OKTA_WASM.stat().st_size, "empty": EMPTY_WASM.stat().st_size,
                   "okta_sha256": hashlib.sha256(OKTA_WASM.read_bytes()).hexdigest(),
                   "commit": sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) +
                   (" (with uncommitted changes)" if sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]) else "")}

    ctx["criterion"] = criterion_phase()

    idp_port, = free_ports(1)
    idp = Idp(idp_port)
    upstream, upstream_port = start_upstream(idp.port)
    envoys, okta_json = start_envoys(idp, upstream_port)
    token = idp.mint(expires_in_secs=7200)
    headers = {
        "none": "Basic " + b64(f"{DEMO_ID}:{DEMO_SECRET}"),
        "empty": "Basic " + b64(f"{DEMO_ID}:{DEMO_SECRET}"),
        "basic_auth": "Basic " + b64(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"),
        "okta_basic": "Basic " + b64(f"{DEMO_ID}:{DEMO_SECRET}"),
        "okta_bearer": "Bearer " + token,
    }
    ctx["commands"] = [
        f"{os.path.relpath(DEVIDP, ROOT)} idp --listen 127.0.0.1:IDP_PORT --demo     # taskset -c {CLIENT_CPU}",
        f"taskset -c {SERVER_CPU} {os.path.relpath(ENVOY, ROOT)} "
        f"-c bench/out/configs/NAME.json --concurrency 1 --disable-hot-restart --log-level warn",
        f"taskset -c {CLIENT_CPU} wrk -t1 -c{CONNECTIONS} -d{SECONDS}s -H 'Authorization: ...' http://127.0.0.1:PORT/",
        f"taskset -c {CLIENT_CPU} bench/.tools/bin/oha -z {SECONDS}s -q RATE -c {CONNECTIONS} --latency-correction "
        f"--no-tui --output-format json --worker-threads 1 -H 'Authorization: ...' http://127.0.0.1:PORT/",
    ]
    if ctx["criterion"]:
        ctx["commands"].append(" ".join(ctx["criterion"]["argv"]))
    try:
        check_and_warm(envoys, headers)
        okta_before = envoys["okta"].stats()
        log(f"throughput: {ROUNDS} rounds x {len(SETS)} sets x {len(COLUMNS)} configs x {SECONDS} s")
        tp_runs = throughput_phase(envoys, headers, upstream)
        ctx["throughput"] = summarize_throughput(tp_runs)
        ctx["rates"] = {s: int(round(ctx["throughput"][s]["none"]["median_rps"] / 2, -2)) for s in SETS}
        log(f"latency: {ROUNDS} rounds at {ctx['rates']} rps")
        lat_runs = latency_phase(envoys, headers, ctx["rates"])
        ctx["latency"] = summarize_latency(lat_runs)
        if LOW_RATE:
            log(f"latency at a low rate: {ROUNDS} rounds at {LOW_RATE} rps, direct")
            low_runs = latency_phase(envoys, headers, {"direct": LOW_RATE}, ["direct"], LOW_SECONDS)
            ctx["latency_low"] = summarize_latency(low_runs)
        okta_after = envoys["okta"].stats()
        ctx["warm_misses"] = (okta_after.get("wasmcustom.okta_dcr_auth_cache_misses", 0)
                              - okta_before.get("wasmcustom.okta_dcr_auth_cache_misses", 0))
        if ctx["warm_misses"]:
            log(f"warning: {ctx['warm_misses']} cache misses during the warm runs")
        ctx["cold"] = cold_phase(idp, envoys)
        for e in envoys.values():
            e.proc.stop()
        ctx["memory"] = memory_phase(idp, upstream_port)
        ctx["host_calls"] = host_calls_phase(idp, upstream_port, headers)
    finally:
        stop_all()
    with open("/proc/loadavg") as f:
        ctx["load_at_end"] = " ".join(f.read().split()[:3])
    ctx["elapsed_s"] = time.time() - t0
    ctx["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ctx["goals"] = goals(ctx)
    (OUT / "results.json").write_text(json.dumps(ctx, indent=1, default=str))
    write_results(ctx)
    log(f"done in {ctx['elapsed_s']:.0f} s: bench/RESULTS.md")
    for g in ctx["goals"]:
        log(f"  {'met   ' if g['ok'] else 'MISSED'} {g['goal']}: {g['measured']}")


if __name__ == "__main__":
    def on_signal(signum, _frame):
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        main()
    finally:
        stop_all()
