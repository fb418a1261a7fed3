#!/usr/bin/env python3
"""The cold-JWT phase of bench.py (Envoy CPU per never-seen RS256 token, okta_bearer_jwt against
jwt_authn in the same run) for several builds of the filter, in interleaved rounds:
`python3 bench/jwt_cold_candidates.py NAME=path.wasm ...` (ROUNDS, default 3; BENCH_JWT_COLD_N
tokens per phase). Needs what `make bench` builds (Envoy in .venv, the dev IdP, the empty filter).
Prints one line per round and build, then the medians."""
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

builds = [a.split("=", 1) for a in sys.argv[1:]]
if not builds or any(len(b) != 2 for b in builds):
    raise SystemExit(__doc__)
rounds = int(os.environ.get("ROUNDS", "3"))
bench.prepare([bench.ENVOY, bench.DEVIDP, bench.BUILT_OKTA_WASM, bench.BUILT_EMPTY_WASM])
bench.COLUMNS = ["okta_bearer_jwt", "jwt_authn"]
added = {name: {"okta_bearer_jwt": [], "jwt_authn": []} for name, _ in builds}
try:
    idp_port, = bench.free_ports(1)
    idp = bench.Idp(idp_port)
    upstream, upstream_port = bench.start_upstream(idp.port)
    for r in range(rounds):
        for name, path in builds:
            bench.OKTA_WASM.write_bytes(Path(path).read_bytes())
            envoys, _ = bench.start_envoys(idp, upstream_port, None)
            res = bench.jwt_cold_phase(idp, envoys)
            for e in envoys.values():
                e.proc.stop()
            for col in added[name]:
                added[name][col].append(res[col]["added_cpu_us_per_new_token"])
            print(f"round {r + 1} {name}: okta_bearer_jwt +{added[name]['okta_bearer_jwt'][-1]:.1f} us, "
                  f"jwt_authn +{added[name]['jwt_authn'][-1]:.1f} us per new token", flush=True)
finally:
    bench.stop_all()
for name, cols in added.items():
    print(f"{name}: median over {rounds} rounds: okta_bearer_jwt +{statistics.median(cols['okta_bearer_jwt']):.1f} us, "
          f"jwt_authn +{statistics.median(cols['jwt_authn']):.1f} us of Envoy CPU per new token")
