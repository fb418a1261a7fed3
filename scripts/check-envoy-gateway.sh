#!/usr/bin/env bash
# `make validate`: deploy/envoy-gateway/ without a cluster. scripts/render-envoy-gateway.mjs
# renders the Envoy configuration Envoy Gateway would generate for its EnvoyExtensionPolicy (the
# filter, with the built .wasm as its code) and applies its EnvoyPatchPolicy (the `okta`
# cluster); `envoy --mode validate` must accept the result, which also hands the filter its
# configuration. Then the self-check: the same with the patch left out, with an unknown field in
# the patched cluster, and with an unknown field in the filter's configuration must each fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY=${ENVOY:-.venv/bin/envoy}
WASM=target/wasm32-wasip1/release/okta_dcr_auth.wasm
[[ -x $ENVOY ]] || { echo "check-envoy-gateway: $ENVOY is missing: run \`make setup\`" >&2; exit 1; }
[[ -f $WASM ]] || { echo "check-envoy-gateway: $WASM is missing: run \`make wasm\`" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/okta-dcr-auth-eg.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# MUTATION: renders and validates; prints what failed, returns non-zero on a failure.
render_and_validate() {
  local out
  out=$(node scripts/render-envoy-gateway.mjs "$WASM" "$tmp/eg.json" "$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
  OKTA_INTROSPECTION_CLIENT_SECRET=EXAMPLE-introspection-client-secret "$ENVOY" --mode validate --log-level warn --disable-hot-restart -c "$tmp/eg.json" 2>&1 || return 1
}

failed=0
echo "Envoy Gateway manifests (the generated configuration, envoy --mode validate):"
if out=$(render_and_validate); then
  printf '  ok    deploy/envoy-gateway: EnvoyExtensionPolicy + EnvoyPatchPolicy, as Envoy Gateway renders them\n'
else
  printf '  FAIL  deploy/envoy-gateway\n'; printf '%s\n' "$out" | sed 's/^/        /'; failed=1
fi
for mutation in no-okta-cluster bad-cluster bad-config; do
  if out=$(render_and_validate "$mutation"); then
    printf '  FAIL  self-check: %s is accepted\n' "$mutation"; failed=1
  else
    printf '  ok    self-check: %s is refused (%s)\n' "$mutation" \
      "$(printf '%s\n' "$out" | grep -Eo "names no cluster|'[a-z_]+'\)|Unable to create Wasm plugin [a-z-]+" \
         | sed -E "s/^'([a-z_]+)'\)$/unknown field \1/" | head -n 1)"
  fi
done
exit "$failed"
