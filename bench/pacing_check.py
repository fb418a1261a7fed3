#!/usr/bin/env python3
"""How evenly does a load generator pace? Measured on the wire, not from the tool's own report.

Starts `okta-dev-idp authz` (answers 200 at once) on the server core, captures the request
packets to it on loopback with tcpdump, runs each load generator at a fixed rate on the client
core, and prints the distribution of the gaps between consecutive requests as they arrived. An even
pacer has gaps near 1/rate; a tool that paces with a 1 ms timer shows mostly ~0 us gaps (a burst)
and a ~1 ms gap between bursts.

    python3 bench/pacing_check.py [RATE] [SECONDS]      # default 10000 rps, 3 s

Needs tcpdump (apt-get install tcpdump), the dev IdP and bench-pacer built (`make bench` builds
them), and checks whichever of h2load (nghttp2-client) and oha (bench/.tools/bin/oha) are present.
Not part of `make bench`: run by hand to check the claim that bench-pacer paces evenly.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVIDP = ROOT / os.environ.get("DEVIDP", "target/release/okta-dev-idp")
PACER = ROOT / os.environ.get("PACER", "target/release/bench-pacer")
OHA = ROOT / "bench/.tools/bin/oha"
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "1")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "0")
CONNECTIONS = 32
HEADER = "Authorization: Basic YmVuY2g6YmVuY2g="


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def generators(port, rate, seconds):
    url = f"http://127.0.0.1:{port}/"
    out = {"bench-pacer": [str(PACER), "--addr", f"127.0.0.1:{port}", "--rate", str(rate), "--seconds",
                           str(seconds), "--warmup", "0", "--connections", str(CONNECTIONS), "-H", HEADER]}
    if shutil.which("h2load"):
        # --rps is per client: spread the rate over the connections.
        out["h2load --h1 --rps"] = ["h2load", "--h1", "-t1", f"-c{CONNECTIONS}", f"--rps={rate / CONNECTIONS:g}",
                                    f"-D{seconds}", "-H", HEADER, url]
    if OHA.exists():
        out["oha -q"] = [str(OHA), "-z", f"{seconds}s", "-q", str(rate), "-c", str(CONNECTIONS),
                         "--latency-correction", "--no-tui", "--worker-threads", "1", "-H", HEADER, url]
    return out


def pct(xs, q):
    return xs[min(len(xs) - 1, max(0, int(q / 100 * len(xs))))]


def main():
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    period = 1e6 / rate
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", SERVER_CPU, str(DEVIDP), "authz", "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)
    print(f"rate {rate} rps (period {period:.1f} us), {seconds} s, {CONNECTIONS} connections; "
          f"gaps between request packets arriving at port {port}, in us")
    print(f"{'generator':<20} {'packets':>8} {'p1':>7} {'p10':>7} {'p50':>7} {'p90':>7} {'p99':>7} "
          f"{'share < period/4':>17} {'stdev':>7}")
    try:
        for name, argv in generators(port, rate, seconds).items():
            with tempfile.NamedTemporaryFile(suffix=".pcap") as cap:
                dump = subprocess.Popen(
                    ["tcpdump", "-i", "lo", "-nn", "-s", "128", "-B", "32768", "-w", cap.name,
                     f"tcp dst port {port} and (tcp[tcpflags] & tcp-push != 0)"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                time.sleep(1)
                subprocess.run(["taskset", "-c", CLIENT_CPU] + argv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                os.killpg(dump.pid, signal.SIGINT)
                dump.wait()
                text = subprocess.run(["tcpdump", "-r", cap.name, "-nn", "-tt"], capture_output=True,
                                      text=True).stdout
            ts = [float(line.split()[0]) for line in text.splitlines() if line[:1].isdigit()]
            # Leave out the first and last 10%: connection set-up and the end.
            cut = len(ts) // 10
            ts = ts[cut:len(ts) - cut]
            gaps = sorted((b - a) * 1e6 for a, b in zip(ts, ts[1:]))
            if len(gaps) < 100:
                print(f"{name:<20} too few packets captured ({len(gaps)})")
                continue
            burst = sum(1 for g in gaps if g < period / 4) / len(gaps)
            print(f"{name:<20} {len(ts):>8} {pct(gaps, 1):>7.1f} {pct(gaps, 10):>7.1f} {pct(gaps, 50):>7.1f} "
                  f"{pct(gaps, 90):>7.1f} {pct(gaps, 99):>7.1f} {burst:>17.2f} {statistics.pstdev(gaps):>7.1f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


if __name__ == "__main__":
    main()
