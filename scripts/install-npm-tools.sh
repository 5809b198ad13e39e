#!/usr/bin/env bash
# Installs the npm tools the tests use (tests/api-tools: @redocly/cli, newman) from the pinned
# package-lock.json; skips the install when node_modules already matches the lock.
set -euo pipefail
cd "$(dirname "$0")/../tests/api-tools"
if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ] \
   && [ -x node_modules/.bin/redocly ] && [ -x node_modules/.bin/newman ]; then
  exit 0
fi
echo "install-npm-tools: npm ci in tests/api-tools" >&2
npm ci --no-audit --no-fund --loglevel=error >/tmp/install-npm-tools.log 2>&1 || {
  tail -20 /tmp/install-npm-tools.log >&2
  echo "install-npm-tools: npm ci failed (full log: /tmp/install-npm-tools.log)" >&2
  if grep -q 'CERT' /tmp/install-npm-tools.log; then
    echo "install-npm-tools: a TLS certificate was refused: if this network inspects TLS with its" >&2
    echo "  own CA, give it to Node.js: NODE_EXTRA_CA_CERTS=/path/to/that-ca.crt make test" >&2
  fi
  exit 1
}
