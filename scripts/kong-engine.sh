#!/usr/bin/env bash
# Builds Kong's wasm engine: nginx 1.22.1 + ngx_wasm_module 9136e463 (Kong 3.9's pin) + the
# wasmtime C API 26.0.1 (crates.io `wasmtime-c-api-impl`), a release nginx and a `--with-debug`
# nginx (whose assertions catch host bugs), both linked to one static libwasmtime.
#
# Everything goes to a cache directory outside the clone, so another clone on this machine reuses
# it:  ${XDG_CACHE_HOME:-$HOME/.cache}/okta-dcr-auth/<NAME>/
#        sbin/nginx         release build
#        sbin/nginx-debug   --with-debug build
#        wasmtime/          libwasmtime.a and its headers
#        stamp              the versions and checksums it was built from
# The directory is built under another name and renamed into place at the end: a directory
# without its stamp is never taken as built. wasmtime's cargo target directory stays in
# <NAME>.work/ next to it, so a re-run after an interruption is incremental.
#
# Sources: ../shared/vendor/*.tar.gz (relative to the project root; OKTA_VENDOR_DIR overrides)
# when present, else the upstream URLs at the same versions. Either way they are checked against
# the checksums below before use.
#
# Usage: scripts/kong-engine.sh            build unless built; prints the directory at the end
#        scripts/kong-engine.sh --dir      print the directory (built or not)
#        scripts/kong-engine.sh --check    exit 0 if built, 1 if not
set -euo pipefail

NGINX_VERSION=1.22.1
NWM_COMMIT=9136e463a6f1d80755ce66c88c3ddecd0eb5e25d
NWM_SHORT=${NWM_COMMIT:0:8}
WASMTIME_VERSION=26.0.1

NGINX_TGZ=nginx-$NGINX_VERSION.tar.gz
NWM_TGZ=ngx_wasm_module-$NWM_SHORT.tar.gz
# sha256 of the archives (as in ../shared/vendor/SHA256SUMS)
NGINX_SHA256=9ebb333a9e82b952acd3e2b4aeb1d4ff6406f72491bab6cd9fe69f0dea737f31
NWM_SHA256=938aa24040ff75956cfad9b48975a9f0424bde6eb890af3d809f2ade64889a3f
# sha256 over "sha256sum of every file, sorted by path" inside the archive's top directory:
# GitHub's archive of the same commit has another top directory name and other gzip bytes, so a
# download is checked by its content.
NGINX_TREE_SHA256=4cf7915a8ec66a8f9a689919697cf7c2cf93d49e08eed35e39b6a61c8b76e6a0
NWM_TREE_SHA256=bd7e98d31fd76386563904d25ebc92ad0bfd29b7fde9df06a0085e7d34d441c6
NGINX_URL=https://nginx.org/download/$NGINX_TGZ
NWM_URL=https://github.com/Kong/ngx_wasm_module/archive/$NWM_COMMIT.tar.gz

# wasmtime-c-api-impl features: what ngx_wasm_module's wasmtime backend calls (wat, wasi, cache,
# profiling, parallel compilation, the threads proposal flag) on cranelift.
WASMTIME_FEATURES='"cranelift", "wat", "wasi", "cache", "parallel-compilation", "profiling", "threads", "gc", "async", "demangle", "addr2line"'

APT_PACKAGES="cmake libpcre2-dev zlib1g-dev libssl-dev"

PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENDOR=${OKTA_VENDOR_DIR:-$PROJECT/../shared/vendor}
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/okta-dcr-auth
NAME=ngx_wasm-nginx-$NGINX_VERSION-nwm-$NWM_SHORT-wasmtime-$WASMTIME_VERSION
DEST=$CACHE_ROOT/$NAME
WORK=$DEST.work
STAMP_TEXT="nginx $NGINX_VERSION sha256:$NGINX_SHA256
ngx_wasm_module $NWM_COMMIT sha256:$NWM_SHA256
wasmtime-c-api-impl $WASMTIME_VERSION features: $WASMTIME_FEATURES
binaries: sbin/nginx (release), sbin/nginx-debug (--with-debug)"

START=$(date +%s)
say() { printf 'kong-engine [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { printf 'kong-engine: error: %s\n' "$*" >&2; exit 1; }

built() {
    [[ -f $DEST/stamp && -x $DEST/sbin/nginx && -x $DEST/sbin/nginx-debug ]] &&
        [[ "$(sed -n '1,4p' "$DEST/stamp")" == "$STAMP_TEXT" ]]
}

case "${1:-}" in
    --dir) echo "$DEST"; exit 0 ;;
    --check) built; exit ;;
    "") ;;
    *) die "unknown argument $1 (usage: $0 [--dir|--check])" ;;
esac

if built; then
    say "already built: $DEST"
    echo "$DEST"
    exit 0
fi

# ---- system packages ----

missing_packages() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    [[ -f /usr/include/pcre2.h ]] || missing+=(libpcre2-dev)
    [[ -f /usr/include/zlib.h ]] || missing+=(zlib1g-dev)
    [[ -f /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
    echo "${missing[*]:-}"
}

for tool in cc make tar sha256sum cargo; do
    command -v $tool >/dev/null 2>&1 || die "$tool is required (cargo: https://rustup.rs; cc, make: apt-get install build-essential)"
done
missing=$(missing_packages)
if [[ -n $missing ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing $missing (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing ||
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; }
        missing=$(missing_packages)
        [[ -z $missing ]] || die "still missing after apt-get: $missing"
    else
        die "missing system packages: $missing (needed: $APT_PACKAGES); install them, e.g. sudo apt-get install -y $missing"
    fi
fi

# ---- sources ----

tree_sha256() { # $1: a directory
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

# $1 archive name, $2 sha256, $3 tree sha256, $4 url, $5 destination directory (created).
# Unpacks the archive's single top directory as $5.
fetch_source() {
    local tgz=$1 sha=$2 tree=$3 url=$4 out=$5 file got unpack
    if [[ -f $VENDOR/$tgz ]]; then
        file=$VENDOR/$tgz
        if [[ -f $VENDOR/SHA256SUMS ]]; then
            (cd "$VENDOR" && grep " $tgz\$" SHA256SUMS | sha256sum -c --quiet -) ||
                die "$file does not match $VENDOR/SHA256SUMS"
        fi
        got=$(sha256sum "$file" | cut -d' ' -f1)
        [[ $got == "$sha" ]] || die "$file: sha256 $got, expected $sha"
        say "source $tgz from $VENDOR (sha256 ok)"
    else
        file=$CACHE_ROOT/downloads/$tgz
        if [[ ! -f $file ]]; then
            mkdir -p "$CACHE_ROOT/downloads"
            say "downloading $url ($tgz is not in $VENDOR)"
            curl -fsSL --retry 3 -o "$file.part" "$url" ||
                die "download of $url failed; put $tgz into $VENDOR"
            mv "$file.part" "$file"
        fi
    fi
    unpack=$(mktemp -d "$TMP/unpack.XXXXXX")
    tar -xzf "$file" -C "$unpack"
    [[ $(ls "$unpack" | wc -l) == 1 ]] || die "$file: expected one top directory"
    mv "$unpack"/* "$out"
    rmdir "$unpack"
    got=$(tree_sha256 "$out")
    if [[ $got != "$tree" ]]; then
        [[ $file == "$CACHE_ROOT/downloads/"* ]] && rm -f "$file"
        die "$tgz: content does not match the pinned version (tree sha256 $got, expected $tree)"
    fi
}

mkdir -p "$CACHE_ROOT"
TMP=$(mktemp -d "$CACHE_ROOT/.$NAME.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
say "building into $TMP (moved to $DEST when done)"

mkdir -p "$TMP/src"
fetch_source "$NGINX_TGZ" $NGINX_SHA256 $NGINX_TREE_SHA256 "$NGINX_URL" "$TMP/src/nginx"
fetch_source "$NWM_TGZ" $NWM_SHA256 $NWM_TREE_SHA256 "$NWM_URL" "$TMP/src/ngx_wasm_module"

# ---- wasmtime C API ----

CRATE=$WORK/wasmtime-c-api
mkdir -p "$CRATE/src"
cat >"$CRATE/Cargo.toml.new" <<EOF
# Written by okta-dcr-auth scripts/kong-engine.sh: the wasmtime C API as libwasmtime.a
# (wasmtime's own crates/c-api/artifact does the same in its repository).
[package]
name = "wasmtime-c-api-artifact"
version = "$WASMTIME_VERSION"
edition = "2021"
publish = false

[lib]
name = "wasmtime"
crate-type = ["staticlib", "cdylib"]
path = "src/lib.rs"

[dependencies]
wasmtime-c-api = { package = "wasmtime-c-api-impl", version = "=$WASMTIME_VERSION", default-features = false, features = [$WASMTIME_FEATURES] }

[profile.release]
panic = "abort"

[workspace]
EOF
# Only rewrite when it changed, so cargo's fingerprints hold.
if ! cmp -s "$CRATE/Cargo.toml.new" "$CRATE/Cargo.toml"; then
    mv "$CRATE/Cargo.toml.new" "$CRATE/Cargo.toml"
else
    rm "$CRATE/Cargo.toml.new"
fi
echo 'pub use wasmtime_c_api::*;' >"$CRATE/src/lib.rs.new"
cmp -s "$CRATE/src/lib.rs.new" "$CRATE/src/lib.rs" && rm "$CRATE/src/lib.rs.new" || mv "$CRATE/src/lib.rs.new" "$CRATE/src/lib.rs"
# The lock file the project was tested with, so every machine builds the same dependencies.
if [[ -f $PROJECT/kong/engine/wasmtime-c-api.Cargo.lock ]]; then
    cp "$PROJECT/kong/engine/wasmtime-c-api.Cargo.lock" "$CRATE/Cargo.lock"
fi

say "wasmtime C API $WASMTIME_VERSION: cargo build --release (the long part: ~12 min on 2 cores the first time; target dir $WORK/cargo-target)"
export CARGO_TARGET_DIR=$WORK/cargo-target
cargo build --release --manifest-path "$CRATE/Cargo.toml" --message-format=json-render-diagnostics \
    >"$WORK/cargo-messages.json" 2> >(grep --line-buffered -E '^\s*(Compiling|Finished|error|warning: unused)' | sed -u 's/^ */kong-engine   cargo: /' >&2) ||
    die "cargo build of wasmtime-c-api-impl failed (output: $WORK/cargo-messages.json)"
OUT_DIR=$(grep '"reason":"build-script-executed"' "$WORK/cargo-messages.json" |
    grep '"package_id":"[^"]*wasmtime-c-api-impl[@#]' | sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -1)
[[ -n $OUT_DIR && -f $OUT_DIR/include/wasmtime.h ]] || die "wasmtime headers not found in cargo's output"
mkdir -p "$TMP/wasmtime/lib"
cp "$CARGO_TARGET_DIR/release/libwasmtime.a" "$TMP/wasmtime/lib/"
cp -R "$OUT_DIR/include" "$TMP/wasmtime/include"
# wasmtime-c-api-impl's build script does not know the `wat` feature, so its conf.h never says
# so; ngx_wasm_module needs wasmtime_wat2wasm declared.
CONF_H=$TMP/wasmtime/include/wasmtime/conf.h
if ! grep -q 'define WASMTIME_FEATURE_WAT' "$CONF_H"; then
    sed -i 's/\r$//' "$CONF_H"
    printf '\n/* added by okta-dcr-auth scripts/kong-engine.sh: built with the wat feature */\n#ifndef WASMTIME_FEATURE_WAT\n#define WASMTIME_FEATURE_WAT\n#endif\n' >>"$CONF_H"
fi
say "wasmtime C API ready ($(du -h "$TMP/wasmtime/lib/libwasmtime.a" | cut -f1) static library)"

# ---- nginx ----

build_nginx() { # $1: release|debug
    local kind=$1 opts=() bin=nginx
    if [[ $kind == debug ]]; then
        opts=(--with-debug --with-cc-opt="-O0 -g -Wno-error")
        bin=nginx-debug
    else
        opts=(--with-cc-opt="-O2 -g -Wno-error")
    fi
    say "nginx $NGINX_VERSION ($kind): configure"
    (
        cd "$TMP/src/nginx"
        export NGX_WASM_RUNTIME=wasmtime
        export NGX_WASM_RUNTIME_INC=$TMP/wasmtime/include
        export NGX_WASM_RUNTIME_LIB=$TMP/wasmtime/lib
        export NGX_WASM_RUNTIME_LD_OPT="$TMP/wasmtime/lib/libwasmtime.a -ldl -lm -lpthread"
        ./configure \
            --build="okta-dcr-auth kong-engine ngx_wasm_module $NWM_SHORT wasmtime $WASMTIME_VERSION" \
            --builddir="$TMP/build-$kind" \
            --prefix=. \
            --with-threads \
            --with-http_ssl_module \
            --with-http_v2_module \
            --with-http_realip_module \
            --with-http_stub_status_module \
            --without-http_fastcgi_module --without-http_uwsgi_module --without-http_scgi_module \
            --add-module="$TMP/src/ngx_wasm_module" \
            "${opts[@]}" >"$TMP/configure-$kind.log" 2>&1
    ) || { tail -30 "$TMP/configure-$kind.log" >&2; die "nginx configure ($kind) failed"; }
    say "nginx $NGINX_VERSION ($kind): make"
    (cd "$TMP/src/nginx" && make -f "$TMP/build-$kind/Makefile" -j"$(nproc)" >"$TMP/make-$kind.log" 2>&1) ||
        { tail -30 "$TMP/make-$kind.log" >&2; die "nginx make ($kind) failed"; }
    mkdir -p "$TMP/sbin"
    cp "$TMP/build-$kind/nginx" "$TMP/sbin/$bin"
    local version
    version=$("$TMP/sbin/$bin" -V 2>&1) || die "$bin -V failed: $version"
    [[ $version == *ngx_wasm_module* ]] || die "$bin -V does not show ngx_wasm_module: $version"
}

build_nginx release
build_nginx debug

# Only the binaries and wasmtime stay; sources and objects go.
rm -rf "$TMP/src" "$TMP"/build-* "$TMP"/unpack.*
mkdir -p "$TMP/logs"
{ echo "$STAMP_TEXT"; echo "built $(date -u +%FT%TZ) in $(($(date +%s) - START)) s on $(uname -m)"; } >"$TMP/stamp"
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
say "done: $DEST/sbin/nginx and $DEST/sbin/nginx-debug"
echo "$DEST"
