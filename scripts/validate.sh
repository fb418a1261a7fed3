#!/usr/bin/env bash
# `envoy --mode validate` on every Envoy configuration the repository ships (envoy/*.yaml),
# run from the repository root so that their relative path to the filter resolves, and on
# what scripts/render-config.sh makes of them for `make run` (other ports, a real org).
# Validation loads the built filter and hands it each configuration, so the filter's own
# configuration checks run too: build it first (`make wasm`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY=${ENVOY:-.venv/bin/envoy}
WASM=target/wasm32-wasip1/release/okta_dcr_auth.wasm
[[ -x $ENVOY ]] || { echo "validate: $ENVOY is missing: run \`make setup\`" >&2; exit 1; }
[[ -f $WASM ]] || { echo "validate: $WASM is missing: run \`make wasm\`" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/okta-dcr-auth-validate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

failed=0
validate() { # CONFIG [LABEL]
  local out
  if out=$("$ENVOY" --mode validate --log-level warn --disable-hot-restart -c "$1" 2>&1); then
    printf '  ok    %s\n' "${2:-$1}"
  else
    printf '  FAIL  %s\n' "${2:-$1}"
    printf '%s\n' "$out" | sed 's/^/        /'
    failed=1
  fi
}

shopt -s nullglob
configs=(envoy/*.yaml)
((${#configs[@]})) || { echo "validate: no envoy/*.yaml" >&2; exit 1; }
echo "envoy --mode validate ($("$ENVOY" --version | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p')):"
for f in "${configs[@]}"; do
  validate "$f"
done

# The renderer's output, with values that exercise its escaping.
render() { # LABEL FILE ENV... -- MODE
  local label=$1 file=$2
  shift 2
  if env "$@" > "$file" 2> "$file.err"; then
    validate "$file" "$label"
  else
    printf '  FAIL  %s (render)\n' "$label"
    sed 's/^/        /' "$file.err"
    failed=1
  fi
}
render "render-config dev PORT=18080 ADMIN_PORT=19901" "$tmp/dev.yaml" \
  PORT=18080 ADMIN_PORT=19901 scripts/render-config.sh dev
# shellcheck disable=SC2016 # a literal '$' in the secret, on purpose
render "render-config okta (introspection client, scopes, custom port)" "$tmp/okta.yaml" \
  OKTA_ISSUER=https://login.example.com:8443/oauth2/aus1example OKTA_SCOPES="api:read api:write" \
  OKTA_INTROSPECTION_CLIENT_ID=0oaValidateIntrospect 'OKTA_INTROSPECTION_CLIENT_SECRET=se"cr\et&$x' \
  PORT=18081 scripts/render-config.sh okta
render "render-config okta (no introspection client: jwt mode)" "$tmp/okta-basic.yaml" \
  OKTA_ISSUER=https://example.okta.com/oauth2/default OKTA_INTROSPECTION_CLIENT_ID= \
  OKTA_INTROSPECTION_CLIENT_SECRET= OKTA_SCOPES= scripts/render-config.sh okta

exit "$failed"
