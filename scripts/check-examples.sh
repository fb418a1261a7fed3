#!/usr/bin/env bash
# Checks of the shipped deployment examples that need no build:
# - docker-compose.yml: `docker-compose config -q` (Debian's docker-compose package), which
#   validates the file against the Compose schema, with every profile's services. Skipped, with a
#   message, when docker-compose is not installed.
# The filter configurations inside envoy/, kong/, the compose setup, the README and docs/ are parsed by
# the filter's own code in `cargo test --test examples`; Envoy's files pass `envoy --mode validate`
# in scripts/validate.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0

if command -v docker-compose >/dev/null 2>&1; then
  version=$(docker-compose version --short 2>/dev/null || echo "?")
  if out=$(docker-compose -f docker-compose.yml config -q 2>&1); then
    printf '  ok    docker-compose.yml (docker-compose %s config -q)\n' "$version"
  else
    printf '  FAIL  docker-compose.yml (docker-compose %s config -q)\n' "$version"
    printf '%s\n' "$out" | sed 's/^/        /'
    failed=1
  fi
else
  echo "  skip  docker-compose.yml: docker-compose is not installed (apt-get install docker-compose)"
fi

exit "$failed"
