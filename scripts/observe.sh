#!/usr/bin/env bash
# Runs Prometheus (Debian's binary) against the running service with the project's scrape
# config, rules and console (ops/prometheus), on its own port and data dir, loopback only; prints
# the console's URL. Ctrl-C or SIGTERM stops it. `make observe` runs this; start the service
# first (`make run` in another terminal).
#
# Environment: PORT (the service's, default 5000), DATA_DIR (the service's, default ./var),
# OBSERVE_PORT (Prometheus's, default 9090), OBSERVE_DIR (its config, key and data, default
# $DATA_DIR/observe), SCRAPE_INTERVAL (default 5s, also the rules' evaluation interval),
# APP_NODES (nodes to scrape, default: as many as DATA_DIR/run has sockets), DB (the database
# for the key, as `make key` takes it: default DATABASE_URL, else DB_PATH, else
# $DATA_DIR/testdata.db), APP_BIN (default build/testdata-api), PROMETHEUS_BIN.
#
# The key: /metrics needs scope `metrics` once AUTH=on. The first run creates one
# ("observe-prometheus", `make keys` lists it) and keeps its token in
# $OBSERVE_DIR/testdata-api.key (mode 0600), which Prometheus reads (credentials_file); a key
# that stopped working (revoked, or a new database) is replaced.
set -euo pipefail
umask 077

here=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-5000}
DATA_DIR=${DATA_DIR:-./var}
OBSERVE_PORT=${OBSERVE_PORT:-9090}
OBSERVE_DIR=${OBSERVE_DIR:-$DATA_DIR/observe}
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-5s}
APP_BIN=${APP_BIN:-$here/build/testdata-api}
PROMETHEUS_BIN=${PROMETHEUS_BIN:-$(command -v prometheus || echo /usr/bin/prometheus)}
DB=${DB:-${DATABASE_URL:-${DB_PATH:-$DATA_DIR/testdata.db}}}
for v in PORT OBSERVE_PORT; do
  case ${!v} in ''|*[!0-9]*) echo "observe: $v must be a port number, not '${!v}'" >&2; exit 2 ;; esac
done
case $SCRAPE_INTERVAL in *[0-9]s|*[0-9]m) ;; *) echo "observe: SCRAPE_INTERVAL must look like 5s or 1m" >&2; exit 2 ;; esac
[ -x "$PROMETHEUS_BIN" ] || { echo "observe: prometheus is missing; run 'make deps' first" >&2; exit 1; }

service=http://127.0.0.1:$PORT
if ! curl -s -o /dev/null --max-time 5 "$service/healthz"; then
  echo "observe: nothing answers on $service; start the service first (make run, PORT=$PORT)" >&2
  exit 1
fi
if [ -z "${APP_NODES:-}" ]; then
  APP_NODES=$(find "$DATA_DIR/run" -maxdepth 1 -name 'app-*.sock' 2>/dev/null | wc -l)
  [ "$APP_NODES" -ge 1 ] || APP_NODES=1
fi
case $APP_NODES in [1-9]|1[0-6]) ;; *) echo "observe: APP_NODES must be 1 to 16" >&2; exit 2 ;; esac

mkdir -p "$OBSERVE_DIR/data"
key_file=$OBSERVE_DIR/testdata-api.key
key_works() {
  [ -s "$key_file" ] || return 1
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    -H "Authorization: Bearer $(cat "$key_file")" "$service/metrics/node/1")
  [ "$code" = 200 ]
}
if ! key_works; then
  token=$("$APP_BIN" keys create --db "$DB" --name observe-prometheus --scope metrics |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
  printf '%s\n' "$token" >"$key_file.new"
  mv -f "$key_file.new" "$key_file"
  key_works || { echo "observe: the new metrics key does not work on $service/metrics/node/1 (is DB=$DB the service's database?)" >&2; exit 1; }
  echo "observe: created access key observe-prometheus (scope metrics), token in $key_file" >&2
fi

# The shipped config with this service's port, one target per node, and the interval.
python3 - "$here/ops/prometheus/prometheus.yml" "$OBSERVE_DIR/prometheus.yml" "$PORT" \
  "$APP_NODES" "$SCRAPE_INTERVAL" <<'EOF'
import sys
src, dst, port, nodes, interval = sys.argv[1:]
text = open(src).read()
for old in ("scrape_interval: 15s", "evaluation_interval: 15s"):
    assert old in text, old
    text = text.replace(old, old.replace("15s", interval))
target = '      - targets: ["127.0.0.1:5000"]\n        labels:\n          node: "1"\n'
assert target in text
text = text.replace(target, "".join(
    f'      - targets: ["127.0.0.1:{port}"]\n        labels:\n          node: "{k}"\n'
    for k in range(1, int(nodes) + 1)))
open(dst, "w").write(text)
EOF
cp "$here/ops/prometheus/rules.yml" "$OBSERVE_DIR/rules.yml"

"$PROMETHEUS_BIN" --config.file="$OBSERVE_DIR/prometheus.yml" \
  --storage.tsdb.path="$OBSERVE_DIR/data" --storage.tsdb.retention.time=7d \
  --web.listen-address="127.0.0.1:$OBSERVE_PORT" \
  --web.console.templates="$here/ops/prometheus/consoles" \
  --web.console.libraries="$here/ops/prometheus/console_libraries" \
  >>"$OBSERVE_DIR/prometheus.log" 2>&1 &
prom_pid=$!
trap 'kill -TERM "$prom_pid" 2>/dev/null || true' INT TERM
for _ in $(seq 1 300); do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$OBSERVE_PORT/-/ready"; then break; fi
  kill -0 "$prom_pid" 2>/dev/null || break
  sleep 0.1
done
if ! kill -0 "$prom_pid" 2>/dev/null; then
  echo "observe: Prometheus did not start; the end of $OBSERVE_DIR/prometheus.log:" >&2
  tail -n 5 "$OBSERVE_DIR/prometheus.log" >&2
  exit 1
fi
echo "observe: Prometheus on http://127.0.0.1:$OBSERVE_PORT scraping $service ($APP_NODES node(s), every $SCRAPE_INTERVAL); log $OBSERVE_DIR/prometheus.log; Ctrl-C stops it" >&2
echo "console: http://127.0.0.1:$OBSERVE_PORT/consoles/testdata-api.html"
status=0
wait "$prom_pid" || status=$?
# Stopped by a signal to this script: Prometheus exits after its SIGTERM; wait for it.
if kill -0 "$prom_pid" 2>/dev/null; then wait "$prom_pid" || true; fi
[ "$status" -lt 128 ] || status=0
exit "$status"
