#!/usr/bin/env bash
# The RSA libraries considered for the filter's RS256 check, side by side under V8 (node):
# bench/jwt-wasm built once per candidate feature (and once as the filter's own jwt::verify),
# copied to target/jwt-wasm/, then timed by run.mjs in interleaved rounds (ROUNDS, default 7).
# ring's C parts need clang for wasm32 (Debian's `clang`: `make clang` installs it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v clang >/dev/null 2>&1 || make -s clang
out=target/jwt-wasm
mkdir -p "$out"
build() { # name, cargo args...
  local name=$1
  shift
  cargo build --quiet --release --target wasm32-wasip1 -p bench-jwt-wasm "$@"
  cp target/wasm32-wasip1/release/bench_jwt_wasm.wasm "$out/$name.wasm"
}
build filter-verify
build rsa010 --features rsa010
build rsa09 --features rsa09
build ring --features ring
# rsa 0.10 with crypto-bigint's own limb choice on wasm32 (64-bit: each product a __multi3
# call): RUSTFLAGS replaces .cargo/config.toml's cpubits="32". Separate target dir: other flags.
RUSTFLAGS='--cfg cpubits="64"' CARGO_TARGET_DIR=target/jwt-wasm-64 \
  cargo build --quiet --release --target wasm32-wasip1 -p bench-jwt-wasm --features rsa010
cp target/jwt-wasm-64/wasm32-wasip1/release/bench_jwt_wasm.wasm "$out/rsa010-limb64.wasm"
node bench/jwt-wasm/run.mjs "$out"/{filter-verify,rsa010,rsa010-limb64,rsa09,ring}.wasm
