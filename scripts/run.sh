#!/usr/bin/env bash
# Runs testdata-api and nginx in the foreground; Ctrl-C or SIGTERM stops both cleanly.
#
# Environment: PORT (default 5000), DATA_DIR (default ./var: database, socket, pid files, logs,
# nginx temp dirs), THREADS (app worker threads, default 32 per core), APP_BIN (default
# build/testdata-api), FASTCGI_READ_TIMEOUT (how long nginx waits for the app, default 30s),
# BUSY_TIMEOUT_MS (how long a write waits for a database lock, default 5000), MAX_DB_PAGES
# (cap on the database size in 4 KiB pages, default none), DB_PATH (default
# $DATA_DIR/testdata.db).
#
# This script is the app's supervisor: if the app dies (crash, SIGKILL) it is restarted at once;
# a start-up failure (exit 1, e.g. a damaged database) is not retried.
set -euo pipefail
# Job control: the app and nginx each run in their own process group, so a Ctrl-C on the terminal
# reaches this script (which stops them in order) rather than racing it to them.
set -m

here=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-5000}
DATA_DIR=${DATA_DIR:-./var}
APP_BIN=${APP_BIN:-$here/build/testdata-api}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

AUTH=${AUTH:-off}
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
mkdir -p "$DATA_DIR"/{run,logs,nginx}
chmod 0700 "$DATA_DIR"
SOCKET=$DATA_DIR/run/app.sock
DB_PATH=${DB_PATH:-$DATA_DIR/testdata.db}
APP_LOG=$DATA_DIR/logs/app.log

# One JSON line, like the app's, to stderr and the app log.
log_json() {  # level event detail
  local line
  line=$(printf '{"ts":"%s","level":"%s","event":"%s","detail":"%s"}' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" "$2" "$3")
  printf '%s\n' "$line" >>"$APP_LOG"
  [ -n "${tail_pid:-}" ] || printf '%s\n' "$line" >&2
}

[ -x "$APP_BIN" ] || { echo "run.sh: $APP_BIN is missing; run 'make build' first" >&2; exit 1; }
[ -x "$NGINX_BIN" ] || { echo "run.sh: nginx is missing; run 'make deps' first" >&2; exit 1; }

# nginx workers must reach the app's socket (mode 0600, owned by this user): they run as this
# same user. As root that means 'user root', which grants them nothing the app lacks.
user_directive=""
if [ "$(id -u)" = 0 ]; then user_directive="user root root;"; fi
# Idle kept-alive connections per nginx worker (one per core): each parks an app thread, so at
# most a quarter of the app's threads (default 32 per core) may be parked.
cores=$(nproc 2>/dev/null || echo 2)
threads=${THREADS:-$((32 * cores))}
keepalive=$((threads / (4 * cores)))
[ "$keepalive" -ge 1 ] || keepalive=1
[ "$keepalive" -le 8 ] || keepalive=8
# Open files per nginx worker (half of them connections): 16384, or the hard limit if lower.
nofile=16384; [ "$(id -u)" = 0 ] || [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$nofile" ] || nofile=$(ulimit -Hn)
sed -e "s|@PORT@|$PORT|g" -e "s|@DATA_DIR@|$DATA_DIR|g" -e "s|@SOCKET@|$SOCKET|g" \
    -e "s|@USER_DIRECTIVE@|$user_directive|g" \
    -e "s|@FASTCGI_READ_TIMEOUT@|${FASTCGI_READ_TIMEOUT:-30s}|g" -e "s|@PROJECT_DIR@|$here|g" \
    -e "s|@KEEPALIVE@|$keepalive|g" \
    -e "s|@NOFILE@|$nofile|g" -e "s|@WORKER_CONNECTIONS@|$((nofile / 2))|g" \
    -e "s|@CONN_LIMIT_PER_ADDR@|${CONN_LIMIT_PER_ADDR:-256}|g" \
    -e "s|@RATE_LIMIT_PER_ADDR@|${RATE_LIMIT_PER_ADDR:-50000}|g" \
    -e "s|@LISTING_SPOOL_MAX@|${LISTING_SPOOL_MAX:-1024m}|g" \
    "$here/nginx.conf" >"$DATA_DIR/nginx.conf"

app_pid=""
nginx_pid=""
stopping=0

start_app() {
  # stderr goes straight to logs/app.log (appended; one write per line keeps lines whole).
  "$APP_BIN" --socket "$SOCKET" --db "$DB_PATH" ${THREADS:+--threads "$THREADS"} \
    ${BUSY_TIMEOUT_MS:+--busy-timeout-ms "$BUSY_TIMEOUT_MS"} --auth "$AUTH" ${AUDIT:+--audit "$AUDIT"} ${MAX_DB_PAGES:+--max-db-pages "$MAX_DB_PAGES"} \
    2>>"$APP_LOG" &
  app_pid=$!
  echo "$app_pid" >"$DATA_DIR/run/app.pid.tmp" && mv -f "$DATA_DIR/run/app.pid.tmp" "$DATA_DIR/run/app.pid"
  for _ in $(seq 1 200); do
    [ -S "$SOCKET" ] && return 0
    kill -0 "$app_pid" 2>/dev/null || { wait "$app_pid" || return $?; return 1; }
    sleep 0.05
  done
  echo "run.sh: the app did not create $SOCKET within 10 s" >&2
  return 1
}

stop_all() {
  stopping=1
  [ -n "$app_pid" ] && kill -TERM "$app_pid" 2>/dev/null || true
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
}
trap stop_all INT TERM

rm -f "$SOCKET"
if ! start_app; then
  echo "run.sh: the app did not start; its last log line says why ($APP_LOG):" >&2
  tail -n 1 "$APP_LOG" >&2
  exit 1
fi
# nginx's error log goes to stderr, through a redactor (query strings and the Referer out: they
# can carry patient ids) into logs/nginx-error.log; the redactor ignores Ctrl-C and ends when
# nginx does.
"$NGINX_BIN" -p "$DATA_DIR" -c "$DATA_DIR/nginx.conf" -e stderr 2> >(trap '' INT TERM QUIT
  exec sed -u -E -e 's/, referrer: .*$//' -e 's/[?][^ ]*/?[redacted]/g' >>"$DATA_DIR/logs/nginx-error.log") &
nginx_pid=$!
echo "$$" >"$DATA_DIR/run/supervisor.pid"
echo "testdata-api: serving on http://127.0.0.1:$PORT (data in $DATA_DIR; Ctrl-C stops)" >&2
# On a terminal, show the app's log lines as they come (tail, not a pipe in the app's path).
tail_pid=""
if [ -t 2 ]; then
  tail -n 0 -F "$APP_LOG" >&2 2>/dev/null &
  tail_pid=$!
fi

status=0
while :; do
  set +e
  wait -n "$app_pid" "$nginx_pid"
  rc=$?
  set -e
  if [ "$stopping" = 1 ]; then
    app_rc=0
    wait "$app_pid" 2>/dev/null || app_rc=$?
    wait "$nginx_pid" 2>/dev/null || true
    [ "$app_rc" = 0 ] || status=$app_rc
    break
  fi
  if ! kill -0 "$nginx_pid" 2>/dev/null; then
    echo "run.sh: nginx exited (status $rc); see $DATA_DIR/logs/nginx-error.log:" >&2
    tail -n 5 "$DATA_DIR/logs/nginx-error.log" >&2 || true
    kill -TERM "$app_pid" 2>/dev/null || true
    wait "$app_pid" 2>/dev/null || true
    status=1
    break
  fi
  if ! kill -0 "$app_pid" 2>/dev/null; then
    if [ "$rc" = 1 ] || [ "$rc" = 2 ]; then
      log_json error app_exited "the app exited with status $rc and is not restarted; see the line above"
      kill -QUIT "$nginx_pid" 2>/dev/null || true
      wait "$nginx_pid" 2>/dev/null || true
      status=$rc
      break
    fi
    log_json warn app_restarted "the app exited with status $rc; restarting it"
    rm -f "$SOCKET"
    start_app || { status=1; stop_all; }
  fi
done
if [ -n "$tail_pid" ]; then kill "$tail_pid" 2>/dev/null || true; fi
exit "$status"
