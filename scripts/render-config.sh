#!/usr/bin/env bash
# Renders an Envoy configuration for `make run` to stdout.
#
#   scripts/render-config.sh dev    envoy/dev.yaml with the listener/admin ports of PORT / ADMIN_PORT
#   scripts/render-config.sh okta   envoy/okta.yaml for the org of OKTA_ISSUER:
#       OKTA_ISSUER                        https://ORG.okta.com/oauth2/default (required, https)
#       OKTA_INTROSPECTION_CLIENT_ID       the gateway's own Okta client, for Bearer introspection
#       OKTA_INTROSPECTION_CLIENT_SECRET   (both or neither; with both, Bearer tokens are
#                                          checked locally, then introspected; with neither,
#                                          only locally: "jwt" mode)
#       OKTA_AUDIENCE                      the tokens' aud to require (default: api://default)
#       OKTA_SCOPES                        space-separated scopes to require (default: none)
#
# Pure bash (no envsubst, no sed): values are JSON-escaped where they land in the filter's
# JSON configuration, and every token of the sample is checked to have been replaced.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # bash 5.2: keep '&' literal in replacements

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9901}

die() { printf 'render-config: %s\n' "$*" >&2; exit 1; }

# The sample's tokens (see the header of envoy/okta.yaml).
SAMPLE_HOST=dev-12345678.okta.com
SAMPLE_ISSUER="https://$SAMPLE_HOST/oauth2/default"
SAMPLE_CLIENT_ID=0oaEXAMPLEintrospectionClient
SAMPLE_CLIENT_SECRET=EXAMPLE-introspection-client-secret

text=
replace() { # TOKEN VALUE: replace every occurrence, which must exist
  [[ $text == *"$1"* ]] || die "the template no longer contains '$1'"
  text=${text//"$1"/"$2"}
}

json_string() { # VALUE -> "VALUE" as a JSON string; refuses control characters
  local s=$1
  [[ $s != *[[:cntrl:]]* ]] || die "a value contains a control character"
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

check_port() { # NAME VALUE
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
    die "$1 must be a TCP port, not '$2'"
  fi
}

render_ports() {
  check_port PORT "$PORT"
  check_port ADMIN_PORT "$ADMIN_PORT"
  [[ $PORT != "$ADMIN_PORT" ]] || die "PORT and ADMIN_PORT must differ"
  # Through sentinels, so that PORT=9901 cannot be rewritten twice.
  replace "port_value: 9901 }" "port_value: @ADMIN_PORT@ }"
  replace "port_value: 8080 }" "port_value: @PORT@ }"
  replace "@ADMIN_PORT@" "$((10#$ADMIN_PORT))"
  replace "@PORT@" "$((10#$PORT))"
}

render_okta() {
  local issuer=${OKTA_ISSUER:-} host port scopes_json scope
  [[ -n $issuer ]] || die "OKTA_ISSUER is not set (e.g. https://dev-123456.okta.com/oauth2/default)"
  issuer=${issuer%/}
  [[ $issuer =~ ^https://([A-Za-z0-9.-]+)(:([0-9]+))?(/[^[:space:][:cntrl:]\"\\]*)?$ ]] ||
    die "OKTA_ISSUER must look like https://ORG.okta.com/oauth2/default, not '$issuer'"
  host=${BASH_REMATCH[1]}
  port=${BASH_REMATCH[3]:-443}
  check_port "the port of OKTA_ISSUER" "$port"

  local id=${OKTA_INTROSPECTION_CLIENT_ID:-} secret=${OKTA_INTROSPECTION_CLIENT_SECRET:-}
  if [[ -n $id && -z $secret ]] || [[ -z $id && -n $secret ]]; then
    die "set both OKTA_INTROSPECTION_CLIENT_ID and OKTA_INTROSPECTION_CLIENT_SECRET, or neither"
  fi

  scopes_json=
  for scope in ${OKTA_SCOPES:-}; do
    scopes_json+="${scopes_json:+, }$(json_string "$scope")"
  done

  replace "\"issuer\": \"$SAMPLE_ISSUER\"" "\"issuer\": $(json_string "$issuer")"
  replace "port_value: 443 }" "port_value: $((10#$port)) }"
  if ((10#$port == 443)); then
    replace "\"idp_authority\": \"$SAMPLE_HOST\"" "\"idp_authority\": $(json_string "$host")"
  else
    replace "\"idp_authority\": \"$SAMPLE_HOST\"" "\"idp_authority\": $(json_string "$host:$((10#$port))")"
  fi
  replace '"scopes": []' "\"scopes\": [$scopes_json]"
  replace '"audience": "api://default"' "\"audience\": $(json_string "${OKTA_AUDIENCE:-api://default}")"
  replace "$SAMPLE_HOST" "$host"
  if [[ -n $id ]]; then
    replace "\"$SAMPLE_CLIENT_ID\"" "$(json_string "$id")"
    replace "\"$SAMPLE_CLIENT_SECRET\"" "$(json_string "$secret")"
    # With the gateway's own client, revocation is seen within cache_ttl_s.
    replace '"audience":' '"bearer_validation": "jwt+introspection",
                      "audience":'
  else
    # No introspection client: Bearer tokens are checked locally only (the default "jwt").
    local out='' line
    while IFS= read -r line || [[ -n $line ]]; do
      [[ $line == *"\"introspection_client_id\": \"$SAMPLE_CLIENT_ID\","* ||
        $line == *"\"introspection_client_secret\": \"$SAMPLE_CLIENT_SECRET\","* ]] ||
        out+="$line"$'\n'
    done <<<"$text"
    text=${out%$'\n'}
  fi
}

load() { # FILE: the template without its leading comment block, which describes the sample
  local line body='' header=1
  while IFS= read -r line || [[ -n $line ]]; do
    if ((header)) && [[ $line == "#"* ]]; then continue; fi
    header=0
    body+="$line"$'\n'
  done <"$ROOT/$1"
  text="# Generated by scripts/render-config.sh from $1 (PORT=$PORT ADMIN_PORT=$ADMIN_PORT); do not edit."$'\n'"${body%$'\n'}"
}

case ${1:-} in
dev)
  load envoy/dev.yaml
  render_ports
  ;;
okta)
  load envoy/okta.yaml
  render_okta
  render_ports
  ;;
*)
  die "usage: $0 dev|okta"
  ;;
esac
printf '%s\n' "$text"
