#!/usr/bin/env bash
# Smoke test with curl against a running server: BASE_URL (default http://127.0.0.1:5000). With
# AUTH=on, TOKEN is a key with scopes write:* and read:* (testdata-api keys create), sent on
# every request, and a request without it must get 401. Exits non-zero if any answer is wrong.
set -euo pipefail
BASE_URL=${BASE_URL:-http://127.0.0.1:5000}
id="smoke-$(date +%s%N)-$$"
clinic="smoke-clinic-$$"
fails=0

# check NAME EXPECTED_STATUS BODY_SUBSTRING curl-args...
check() {
  local name=$1 want=$2 needle=$3; shift 3
  local out status body
  out=$(curl -sS -w '\n%{http_code}' ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "$@") ||
    { echo "FAIL $name: curl failed"; fails=$((fails+1)); return; }
  status=${out##*$'\n'}
  body=${out%$'\n'*}
  if [ "$status" = "$want" ] && [[ "$body" == *"$needle"* ]]; then
    echo "ok   $name ($status)"
  else
    echo "FAIL $name: got $status $body (want $want containing $needle)"
    fails=$((fails+1))
  fi
}

record="{\"test_id\":\"$id\",\"patient_id\":\"p1\",\"clinic_id\":\"$clinic\",\"test_type\":\"blood\",\"result\":\"ok\"}"
check create    201 "\"test_id\":\"$id\"" -X POST "$BASE_URL/tests" -H 'Content-Type: application/json' -d "$record"
check duplicate 409 'test_id already exists' -X POST "$BASE_URL/tests" -H 'Content-Type: application/json' -d "$record"
check list      200 "\"count\":1" "$BASE_URL/tests?clinic_id=$clinic"
check invalid   400 '"field":"patient_id"' -X POST "$BASE_URL/tests" -H 'Content-Type: application/json' -d '{"test_id":"x"}'
check media     415 'application/json' -X POST "$BASE_URL/tests" -H 'Content-Type: text/plain' -d "$record"
check no_clinic 400 'clinic_id is required' "$BASE_URL/tests"
check not_found 404 'no such endpoint' "$BASE_URL/nope"
check method    405 'method not allowed' -X DELETE "$BASE_URL/tests"
check search    200 "\"count\":1" -X POST "$BASE_URL/tests/search" -H 'Content-Type: application/json' \
  -d "{\"clinic_id\":\"$clinic\"}"
# a correction of version 1, then its history and the clinic's change feed
correction="{\"test_id\":\"$id\",\"patient_id\":\"p1\",\"clinic_id\":\"$clinic\",\"test_type\":\"blood\",\"result\":\"ok, re-run\",\"status\":\"corrected\",\"reason\":\"smoke\"}"
check no_match  428 'If-Match is required' -X PUT "$BASE_URL/tests/$id" -H 'Content-Type: application/json' -d "$correction"
check correct   200 '"version":2' -X PUT "$BASE_URL/tests/$id" -H 'Content-Type: application/json' \
  -H 'If-Match: W/"1"' -d "$correction"
check stale     412 '"current_version":2' -X PUT "$BASE_URL/tests/$id" -H 'Content-Type: application/json' \
  -H 'If-Match: W/"1"' -d "$correction"
check history   200 '"versions":[{"version":2,' "$BASE_URL/tests/$id/history"
check changes   200 '"change":"correction"' "$BASE_URL/changes?clinic_id=$clinic&wait=0"
if [ -n "${TOKEN:-}" ]; then
  # without the key: 401 (TOKEN= empties it for this one request)
  TOKEN='' check no_token 401 'authentication required' "$BASE_URL/tests?clinic_id=$clinic"
fi

[ "$fails" = 0 ] && echo "smoke: all passed" || { echo "smoke: $fails failed"; exit 1; }
