#!/usr/bin/env bash
# `make validate`: the OCI image layouts of `make oci` (target/oci/compat, target/oci/artifact),
# checked with a real OCI tool, Debian's skopeo:
# - reproducible: a second build from the same .wasm gives byte-identical layouts (same digests);
# - each layout has what Istio's and Envoy Gateway's image fetchers require (scripts/oci.py check:
#   compat = one tar+gzip layer holding plugin.wasm; oci variant = exactly two layers, one of type
#   application/vnd.module.wasm.content.layer.v1+wasm), and that check refuses broken layouts;
# - `skopeo inspect` reads each (the image config of compat; the raw manifest and config of the
#   artifact, which skopeo does not inspect as an image), with the expected digest and version;
# - `skopeo copy oci:DIR:VERSION dir:OUT` copies each, keeping the manifest digest, and the
#   plugin.wasm taken out of the copy is byte-identical to the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WASM=target/wasm32-wasip1/release/okta_dcr_auth.wasm
OUT=target/oci
PYTHON=${PYTHON:-python3}
[[ -f $WASM ]] || { echo "check-oci: $WASM is missing: run \`make wasm\`" >&2; exit 1; }
[[ -d $OUT/compat && -d $OUT/artifact ]] || { echo "check-oci: $OUT is missing: run \`make oci\`" >&2; exit 1; }
command -v skopeo >/dev/null || { echo "check-oci: skopeo is missing (apt-get install skopeo)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/okta-dcr-auth-oci.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Copies between local directories: no signature to require, whatever /etc/containers says.
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' > "$tmp/policy.json"
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)

failed=0
ok() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$1"; [[ -z ${2:-} ]] || printf '%s\n' "$2" | sed 's/^/        /'; failed=1; }
json() { "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }

echo "OCI image layouts ($(skopeo --version)):"
if out=$("$PYTHON" scripts/oci.py build --out "$tmp/again" 2>&1) && diff -r "$OUT" "$tmp/again" >/dev/null 2>&1; then
  ok "reproducible: a second build from the same .wasm is byte-identical"
else
  fail "reproducible: a second build differs from $OUT (or failed)" "$out"
fi
if out=$("$PYTHON" scripts/oci.py selftest "$tmp/selftest" 2>&1); then
  ok "the layout check refuses broken layouts (one-layer artifact, no plugin.wasm, another module, no variant annotation)"
else
  fail "the layout check accepts a broken layout" "$out"
fi

for v in compat artifact; do
  dir=$OUT/$v
  if ! line=$("$PYTHON" scripts/oci.py check "$dir" 2>&1); then fail "$dir: layout" "$line"; continue; fi
  digest=${line#* }
  ok "$dir: $line (module identical to the build)"

  if raw=$(skopeo inspect --raw "oci:$dir:$version" 2>&1) \
     && [[ "sha256:$(printf '%s' "$raw" | sha256sum | cut -d' ' -f1)" == "$digest" ]]; then
    ok "$dir: skopeo inspect --raw: the manifest, digest $digest"
  else
    fail "$dir: skopeo inspect --raw oci:$dir:$version" "$raw"
  fi
  if [[ $v == compat ]]; then
    if info=$(skopeo inspect "oci:$dir:$version" 2>&1) \
       && [[ $(json 'd["Digest"]' <<<"$info") == "$digest" ]] \
       && [[ $(json 'len(d["Layers"])' <<<"$info") == 1 ]] \
       && [[ $(json 'd["Labels"]["org.opencontainers.image.version"]' <<<"$info") == "$version" ]] \
       && [[ $(json 'd["Os"] + "/" + d["Architecture"]' <<<"$info") == wasip1/wasm ]]; then
      ok "$dir: skopeo inspect: one layer, wasip1/wasm, version $version"
    else
      fail "$dir: skopeo inspect oci:$dir:$version" "$info"
    fi
  else
    if info=$(skopeo inspect --config --raw "oci:$dir:$version" 2>&1) \
       && [[ $(json 'd["type"]' <<<"$info") == envoy_proxy ]]; then
      ok "$dir: skopeo inspect --config --raw: runtime config for envoy_proxy"
    else
      fail "$dir: skopeo inspect --config --raw oci:$dir:$version" "$info"
    fi
  fi

  if out=$(skopeo --policy "$tmp/policy.json" copy --quiet "oci:$dir:$version" "dir:$tmp/copy-$v" 2>&1) \
     && got=$("$PYTHON" scripts/oci.py extract "$tmp/copy-$v" "$tmp/$v.wasm" 2>&1) \
     && [[ $got == "$v $digest" ]] && cmp -s "$tmp/$v.wasm" "$WASM"; then
    ok "$dir: skopeo copy to dir: keeps the digest; its plugin.wasm is byte-identical to $WASM"
  else
    fail "$dir: skopeo copy oci:$dir:$version dir:" "$out${got:+
$got}"
  fi
done
exit "$failed"
