#!/usr/bin/env bash
# `make run`: the filter in Envoy in front of an echo API, against the dev IdP or a real Okta org.
# Run it through `make run`, which builds the filter and the dev IdP first.
#
#   dev IdP (default)   okta-dev-idp idp --demo on 127.0.0.1:9001, config envoy/dev.yaml
#   real Okta org       OKTA_ISSUER=https://ORG.okta.com/oauth2/default (and optionally
#                       OKTA_INTROSPECTION_CLIENT_ID/_SECRET, OKTA_SCOPES): config rendered from
#                       envoy/okta.yaml into .run/envoy-okta.yaml, no dev IdP
#   always              okta-dev-idp echo on 127.0.0.1:9002 (the API; it answers with the
#                       headers it received), Envoy on 127.0.0.1:PORT (8080), admin on ADMIN_PORT (9901)
#
# Logs go to .run/*.log. Ctrl-C (or SIGTERM) stops all three; nothing is left running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PORT=${PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9901}
WASM_LOG_LEVEL=${WASM_LOG_LEVEL:-info}
ENVOY=${ENVOY:-.venv/bin/envoy}
DEVIDP=${DEVIDP:-target/release/okta-dev-idp}
WASM=target/wasm32-wasip1/release/okta_dcr_auth.wasm
RUN_DIR=.run
IDP_ADDR=127.0.0.1:9001
ECHO_ADDR=127.0.0.1:9002
ISSUER=http://$IDP_ADDR/oauth2/default
DEMO_ID=0oa6demoDcrClient4kong
DEMO_SECRET=demo-Secret_4kong-DCR
DEMO_SCOPE=api:read

if [[ -t 1 ]]; then bold=$'\e[1m' dim=$'\e[2m' red=$'\e[31m' off=$'\e[0m'; else bold='' dim='' red='' off=''; fi
say() { printf '%s\n' "$*"; }
die() { printf '%srun: %s%s\n' "$red" "$*" "$off" >&2; exit 1; }

# --- checks before starting anything ---------------------------------------------------

for f in "$ENVOY" "$DEVIDP"; do
  [[ -x $f ]] || die "$f is missing: use \`make run\`, which builds it"
done
[[ -f $WASM ]] || die "$WASM is missing: use \`make run\`, which builds it"
command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
command -v setsid >/dev/null || die "setsid is needed (apt-get install util-linux)"

mode=dev
if [[ -n ${OKTA_ISSUER:-} ]]; then mode=okta; fi

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
check_free() { # NAME HOST PORT
  if listening "$2" "$3"; then
    die "$2:$3 ($1) is already in use: stop what listens there$4"
  fi
}
check_free "gateway listener" 127.0.0.1 "$PORT" ", or use another port: make run PORT=8081"
check_free "Envoy admin" 127.0.0.1 "$ADMIN_PORT" ", or make run ADMIN_PORT=9911"
check_free "echo API" "${ECHO_ADDR%:*}" "${ECHO_ADDR#*:}" ""
if [[ $mode == dev ]]; then check_free "dev IdP" "${IDP_ADDR%:*}" "${IDP_ADDR#*:}" ""; fi

mkdir -p "$RUN_DIR"
rm -f "$RUN_DIR"/*.log "$RUN_DIR"/envoy-*.yaml # what is there is this run's
umask 077 # the rendered configuration may hold the introspection client's secret

if [[ $mode == okta ]]; then
  config=$RUN_DIR/envoy-okta.yaml
  scripts/render-config.sh okta >"$config"
  ISSUER=${OKTA_ISSUER%/}
elif [[ $PORT == 8080 && $ADMIN_PORT == 9901 ]]; then
  config=envoy/dev.yaml
else
  config=$RUN_DIR/envoy-dev.yaml
  scripts/render-config.sh dev >"$config"
fi

# --- process management ------------------------------------------------------------------

# Each child runs in its own session (setsid execs in place, so $! is the program itself):
# Ctrl-C reaches only this script, whose trap stops every child's process group, waits for
# it, and kills what is still there after a few seconds.
pids=() names=() logs=()
start() { # NAME LOG COMMAND...
  local name=$1 log=$2
  shift 2
  setsid "$@" </dev/null >"$log" 2>&1 &
  pids+=("$!")
  names+=("$name")
  logs+=("$log")
}

stopping=0
stop_all() {
  ((stopping)) && return
  stopping=1
  local pid i alive
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
on_signal() { # SIGNAL
  trap '' INT TERM HUP
  printf '\n%sstopping...%s\n' "$dim" "$off"
  stop_all
  say "stopped: ${names[*]}"
  # Die of the same signal, so that make (or a calling shell) knows it was stopped that way.
  trap - "$1" EXIT
  kill -s "$1" "$$"
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP
trap stop_all EXIT

# Fails (after showing the log) when NAME died or did not get ready within SECONDS.
wait_ready() { # NAME PID LOG SECONDS PROBE...
  local name=$1 pid=$2 log=$3 secs=$4 deadline=$((SECONDS + $4))
  shift 4
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      printf '%srun: %s exited while starting; the end of %s:%s\n' "$red" "$name" "$log" "$off" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      printf '%srun: %s is not ready after %ss; the end of %s:%s\n' "$red" "$name" "$secs" "$log" "$off" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
}
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" 2>/dev/null || true; }
answers_200() { [[ $(status_of "$1") == 200 ]]; }

# --- start ---------------------------------------------------------------------------------

if [[ $mode == dev ]]; then
  start "dev IdP" "$RUN_DIR/idp.log" "$DEVIDP" idp --listen "$IDP_ADDR" --demo
  wait_ready "the dev IdP" "${pids[-1]}" "$RUN_DIR/idp.log" 20 \
    answers_200 "$ISSUER/.well-known/oauth-authorization-server"
fi

start "echo" "$RUN_DIR/echo.log" "$DEVIDP" echo --listen "$ECHO_ADDR"
wait_ready "the echo API" "${pids[-1]}" "$RUN_DIR/echo.log" 20 answers_200 "http://$ECHO_ADDR/"

start "envoy" "$RUN_DIR/envoy.log" "$ENVOY" -c "$config" --concurrency 2 --disable-hot-restart \
  --log-level info --component-log-level "wasm:$WASM_LOG_LEVEL"
envoy_pid=${pids[-1]}
wait_ready "Envoy" "$envoy_pid" "$RUN_DIR/envoy.log" 30 answers_200 "http://127.0.0.1:$ADMIN_PORT/ready"

# The filter is loaded and configured when a request without credentials gets its 401.
gateway="localhost:$PORT"
probe=000
for ((i = 0; i < 50; i++)); do
  probe=$(status_of "http://127.0.0.1:$PORT/")
  [[ $probe == 000 ]] || break
  sleep 0.1
done
if [[ $mode == dev ]]; then
  # The registrations document is fetched at the filter's first tick: until then, 503.
  for ((i = 0; i < 50; i++)); do
    [[ $(status_of -H "Authorization: Basic $DEMO_ID:$DEMO_SECRET" "http://127.0.0.1:$PORT/") == 503 ]] || break
    sleep 0.1
  done
fi
if [[ $probe != 401 ]]; then
  printf '%srun: a request without credentials got %s instead of 401: is the filter running? The end of %s:%s\n' \
    "$red" "$probe" "$RUN_DIR/envoy.log" "$off" >&2
  grep -E '\[(wasm|critical|error)\]' "$RUN_DIR/envoy.log" | tail -n 20 >&2 || tail -n 20 "$RUN_DIR/envoy.log" >&2
fi

# --- what to try ---------------------------------------------------------------------------

say
if [[ $mode == dev ]]; then
  say "${bold}okta-dcr-auth is running${off}: Envoy on $gateway -> echo API on $ECHO_ADDR,"
  say "credentials checked at the dev IdP, issuer $ISSUER (config: $config)."
  id=$DEMO_ID secret=$DEMO_SECRET
  b64=$(printf '%s' "$id:$secret" | base64 | tr -d '\n')
  say
  say "${bold}Try${off} (the demo DCR app's Client ID and Client Secret):"
  say
  say "${dim}# 200: Basic, exactly as the Konnect Dev Portal prints it${off}"
  say "curl -i $gateway/ -H \"Authorization: Basic $id:$secret\""
  say "${dim}# 200: the same in base64 (RFC 7617)${off}"
  say "curl -i $gateway/ -H \"Authorization: Basic $b64\""
  say "${dim}# 401: a wrong secret${off}"
  say "curl -i $gateway/ -H \"Authorization: Basic $id:wrong-secret\""
  say "${dim}# 200: a token from the IdP (client credentials), then Bearer${off}"
  say "TOKEN=\$(curl -s -u $id:$secret -d grant_type=client_credentials -d scope=$DEMO_SCOPE $ISSUER/v1/token | sed -n 's/.*\"access_token\" *: *\"\\([^\"]*\\)\".*/\\1/p')"
  say "curl -i $gateway/ -H \"Authorization: Bearer \$TOKEN\""
  say
  say "${bold}Two APIs${off} (docs/registrations.md): / is product payments-v1, /orders is orders-v2;"
  say "the demo app is approved for payments-v1 and its orders-v2 registration is pending."
  say "${dim}# 200 on payments-v1, with x-application-id${off}"
  say "curl -i $gateway/payments -H \"Authorization: Basic $id:$secret\""
  say "${dim}# 403: not approved for orders-v2${off}"
  say "curl -i $gateway/orders -H \"Authorization: Basic $id:$secret\""
  say "${dim}# approve it, as a portal admin would; within 5 s (registrations_refresh_s) the 403 above is a 200${off}"
  say "curl -X POST $IDP_ADDR/_dev/registrations/approve -d '{\"client_id\":\"$id\",\"product\":\"orders-v2\"}'"
  say "${dim}# and revoke it again${off}"
  say "curl -X POST $IDP_ADDR/_dev/registrations/revoke -d '{\"client_id\":\"$id\",\"product\":\"orders-v2\"}'"
else
  say "${bold}okta-dcr-auth is running${off}: Envoy on $gateway -> echo API on $ECHO_ADDR,"
  say "credentials checked at $ISSUER (config: $config)."
  if [[ -z ${OKTA_INTROSPECTION_CLIENT_ID:-} ]]; then
    say "No OKTA_INTROSPECTION_CLIENT_ID/_SECRET: Bearer tokens are checked locally only (a revoked token passes until its exp)."
  else
    say "Bearer tokens are checked locally, then introspected with the gateway's client (jwt+introspection)."
  fi
  scope_arg=
  for s in ${OKTA_SCOPES:-}; do scope_arg+="${scope_arg:+ }$s"; done
  say
  say "${bold}Try${off}, with CLIENT_ID and CLIENT_SECRET of an app registered in your Dev Portal:"
  say
  say "${dim}# 200: Basic, exactly as the Konnect Dev Portal prints it${off}"
  say "curl -i $gateway/ -H \"Authorization: Basic CLIENT_ID:CLIENT_SECRET\""
  say "${dim}# 200: the same in base64 (RFC 7617)${off}"
  say "curl -i $gateway/ -H \"Authorization: Basic \$(printf %s 'CLIENT_ID:CLIENT_SECRET' | base64 -w0)\""
  say "${dim}# 401: a wrong secret${off}"
  say "curl -i $gateway/ -H \"Authorization: Basic CLIENT_ID:wrong-secret\""
  say "${dim}# 200: a token from Okta (client credentials), then Bearer${off}"
  say "TOKEN=\$(curl -s -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials${scope_arg:+ --data-urlencode \"scope=$scope_arg\"} $ISSUER/v1/token | sed -n 's/.*\"access_token\" *: *\"\\([^\"]*\\)\".*/\\1/p')"
  say "curl -i $gateway/ -H \"Authorization: Bearer \$TOKEN\""
fi
say
say "The echo API answers with the headers it received: see x-credential-identifier and x-authenticated-scope."
if [[ $mode == dev ]]; then
  say "Logs: $RUN_DIR/envoy.log (the filter's lines are Envoy's [wasm] component), $RUN_DIR/idp.log, $RUN_DIR/echo.log"
else
  say "Logs: $RUN_DIR/envoy.log (the filter's lines are Envoy's [wasm] component), $RUN_DIR/echo.log"
fi
say "Envoy admin: http://127.0.0.1:$ADMIN_PORT/   More filter detail: make run WASM_LOG_LEVEL=debug"
say "${bold}Ctrl-C stops everything.${off}"

# --- until Ctrl-C, or until one of them dies -------------------------------------------------

while :; do
  rc=0
  wait -n "${pids[@]}" || rc=$?
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      printf '%srun: %s exited (status %s); the end of %s:%s\n' "$red" "${names[$i]}" "$rc" "${logs[$i]}" "$off" >&2
      tail -n 20 "${logs[$i]}" >&2
      exit 1
    fi
  done
done
