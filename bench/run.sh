#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs, builds it, and runs bench/bench.py, which
# writes bench/RESULTS.md (and bench/out/). Run it through `make bench`, which first builds the
# filter (.wasm), the dev IdP and installs Envoy.
#
#   BENCH_ROUNDS    rounds, each running every configuration in turn (default 5, at least 5 for
#                   the published numbers)
#   BENCH_SECONDS   seconds per wrk run (default 6)
#   BENCH_LAT_SECONDS   seconds per paced latency run, after a 0.5 s warm-up (default: BENCH_SECONDS,
#                   at most 4)
#   BENCH_SKIP_CRITERION=1   skip the native criterion benchmark
#   BENCH_JWT=0     without the jwt_authn peer, okta_bearer_jwt and the cold JWT phase (on by
#                   default)
#   BENCH_REG_APPS  applications in the registrations phase's document (default 100000)
#   BENCH_REG_WARM_ROUNDS   rounds of its warm-path comparison (default 4 × BENCH_ROUNDS)
#
# Tools: wrk from apt-get (Debian) when missing; bench-pacer (bench/pacer, open-loop latency with
# evenly spaced sends) and the dev IdP's `authz` subcommand (the ext_authz service) built here.
#
# The machine should be otherwise idle: Envoy (with its upstream Envoy and the ext_authz service)
# is pinned to core 1, the load generators to core 0. Never part of `make test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export BENCH_ROUNDS=${BENCH_ROUNDS:-5}
export BENCH_SECONDS=${BENCH_SECONDS:-6}
export ENVOY=${ENVOY:-.venv/bin/envoy}
export DEVIDP=${DEVIDP:-target/release/okta-dev-idp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

say() { printf 'bench: %s\n' "$*"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

(( BENCH_ROUNDS >= 1 )) || die "BENCH_ROUNDS must be a positive number"
(( BENCH_SECONDS >= 1 )) || die "BENCH_SECONDS must be a positive number"
export PACER=${PACER:-target/release/bench-pacer}
(( $(nproc) >= 2 )) || die "needs at least 2 CPUs (Envoy on one, the load generator on the other)"
for tool in taskset python3 cargo; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done

# --- tools -----------------------------------------------------------------------------------

if ! command -v wrk >/dev/null; then
  if [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null; then
    say "installing wrk (apt-get)"
    sudo_=""
    (( EUID == 0 )) || sudo_=sudo
    $sudo_ apt-get install -y wrk >/dev/null 2>&1 || { $sudo_ apt-get update -qq && $sudo_ apt-get install -y wrk; }
  else
    die "wrk is needed: install it with your package manager"
  fi
fi

# --- builds ----------------------------------------------------------------------------------

say "building the empty filter (bench/empty-filter) for wasm32-wasip1"
cargo build --quiet --release --target wasm32-wasip1 -p bench-empty-filter
say "building bench-pacer (bench/pacer)"
cargo build --quiet --release -p bench-pacer
if [[ ${BENCH_SKIP_CRITERION:-0} != 1 ]]; then
  say "building the native core benchmarks (core/benches/core.rs, registrations.rs)"
  cargo bench --quiet -p okta-dcr-auth-core --bench core --bench registrations --no-run
fi

# --- run -------------------------------------------------------------------------------------

say "checking every Envoy configuration (envoy --mode validate)"
python3 bench/bench.py --validate
say "running: BENCH_ROUNDS=$BENCH_ROUNDS BENCH_SECONDS=$BENCH_SECONDS BENCH_JWT=${BENCH_JWT:-1} (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
exec python3 bench/bench.py
