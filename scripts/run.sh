#!/usr/bin/env bash
# Runs testdata-api and nginx in the foreground; Ctrl-C or SIGTERM stops both cleanly.
#
# Environment: PORT (default 5000), DATA_DIR (default ./var: database, socket, pid files, logs,
# nginx temp dirs), THREADS (app worker threads, default 32 per core, at most 256), APP_BIN
# (default build/testdata-api), FASTCGI_READ_TIMEOUT (how long nginx waits for the app, default
# 30s), BUSY_TIMEOUT_MS (how long a write waits for a database lock, default 5000), WRITE_COMMIT
# (thread|leader, who commits a group of writes; the app reads it from its environment), MAX_DB_PAGES
# (cap on the database size in 4 KiB pages, default none), DB_PATH (default
# $DATA_DIR/testdata.db), START_TIMEOUT (seconds to wait for the app to be ready, default 600;
# 0 waits as long as the app is alive), STOP_TIMEOUT_MS (how long the app lets in-flight
# requests finish on a stop, default 10000), FEED_MAX_WAITING (change feed long polls held at
# once, without a thread each, default 1000; past it one is answered at once), SERVICE_USER (as root: the user the app and nginx's
# workers run as, default testdata-api, created as a system user if missing).
# Storage: DATABASE_URL (a libpq connection string, postgresql://... or key=value words: the app
# uses PostgreSQL; unset, SQLite at DB_PATH), APP_NODES (app processes behind nginx, default 1,
# at most 16; more than 1 only with DATABASE_URL: SQLite is served by one process). Each node has
# its own socket (one node: run/app.sock; several: run/app-K.sock) and THREADS threads.
# Security (README "Security"): LISTEN (address:port nginx listens on, default 127.0.0.1:PORT),
# AUTH (on|off; default off on a loopback LISTEN, on otherwise, where off is refused), AUDIT
# (on|off, default on; off only with AUTH=off), AUDIT_READS (crash-safe|durable, default
# crash-safe: a read's audit entry is committed before the answer, on disk within 100 ms; durable:
# on disk before the answer), TLS_CERT and TLS_KEY (PEM files: HTTPS only),
# ALLOW_PLAINTEXT (1: a non-loopback LISTEN without TLS, behind a TLS-terminating proxy),
# KEY_RATE/KEY_BURST (per access key) and ANON_RATE/ANON_BURST (per address, requests without a
# key) for nginx's rate limits (ANON_RATE/ANON_BURST also bound failed authentications per address,
# in the app), TCP_CONN_LIMIT_PER_ADDR (open connections per client address, default 512),
# NGINX_TEMP_DIR (nginx's temp files: request bodies, spooled listings; default DATA_DIR/nginx).
# Centralized logs (README "Operations"): LOG_FORWARD (relp://HOST:PORT or tcp://HOST:PORT: a
# local rsyslogd, supervised here, ships logs/app.log and nginx's access log to that syslog
# collector; unset: nothing is forwarded), LOG_FORWARD_QUEUE_MAX (disk the forwarding queue may
# fill while the collector is unreachable, default 1g).
#
# This script is the app's supervisor: if the app dies (crash, SIGKILL, stop timeout) it is
# restarted at once. Not restarted: exit status 78 (start-up failure, e.g. a damaged database)
# and 2 (bad usage); see src/server/main.cpp. With several nodes each is supervised on its own: one that
# dies is restarted while nginx serves from the others; a 78 or 2 from any of them stops all.
# nginx is supervised too (restarted when its master exits: see launch_nginx below), and nothing
# this script starts outlives it: killed (SIGKILL), it takes the app, nginx (master and workers)
# and the log forwarder with it, and its lock on DATA_DIR is free only then.
set -euo pipefail
# Job control: the app and nginx each run in their own process group, so a Ctrl-C on the terminal
# reaches this script (which stops them in order) rather than racing it to them.
set -m
# Every file and directory this script, the app and nginx create: 0600 / 0700.
umask 077

here=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-5000}
DATA_DIR=${DATA_DIR:-./var}
APP_BIN=${APP_BIN:-$here/build/testdata-api}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$APP_BIN" ] || { echo "run.sh: $APP_BIN is missing; run 'make build' first" >&2; exit 1; }
[ -x "$NGINX_BIN" ] || { echo "run.sh: nginx is missing; run 'make deps' first" >&2; exit 1; }
refuse() { echo "run.sh: $*" >&2; exit 78; }
# The settings, checked and with their defaults, from the binary's one table (src/base/config.*):
# NAME=value lines, exported for nginx.conf's render and for `testdata-api serve`. Never the
# package's env file (--env-file /dev/null): make run is configured by its environment alone.
resolved=$("$APP_BIN" config resolve --env-file /dev/null) || exit 78
while IFS= read -r line; do export "${line?}"; done <<<"$resolved"
listen_ssl="" tls="" hsts=""
if [ -n "${TLS_CERT:-}" ]; then
  [ -r "$TLS_CERT" ] || refuse "TLS_CERT must name a readable PEM certificate (with TLS_KEY)"
  [ -r "$TLS_KEY" ] || refuse "TLS_KEY must name the readable PEM key of TLS_CERT"
  listen_ssl=" ssl"
  hsts='add_header Strict-Transport-Security "max-age=63072000" always;'
  tls="ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY; ssl_protocols TLSv1.2 TLSv1.3;"
  tls+=" ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;"
  tls+=" ssl_prefer_server_ciphers off; ssl_session_cache shared:tdapi_tls:10m; ssl_session_timeout 1d;"
  tls+=" ssl_session_tickets off; $hsts"
fi
scheme=$([ -n "$listen_ssl" ] && echo https || echo http)
LOG_FORWARD=${LOG_FORWARD:-} DATABASE_URL=${DATABASE_URL:-}
if [ -n "$LOG_FORWARD" ]; then
  RSYSLOGD_BIN=${RSYSLOGD_BIN:-$(command -v rsyslogd || echo /usr/sbin/rsyslogd)}
  [ -x "$RSYSLOGD_BIN" ] ||
    refuse "LOG_FORWARD needs rsyslogd (Debian packages rsyslog and rsyslog-relp; run 'make deps')"
fi

# As root: a symbolic link on DATA_DIR's way (DATA_DIR itself included) must be root's. The
# service user owns DATA_DIR; in a directory it may write (a sticky /tmp too) it can move
# DATA_DIR away and leave a link in its place, and root would then hand it the link's target
# (chmod, chown -R). Keep DATA_DIR in a directory only root may write (e.g. /var/lib).
if [ "$(id -u)" = 0 ]; then
  case $DATA_DIR in /*) walk=$DATA_DIR ;; *) walk=$PWD/$DATA_DIR ;; esac
  prefix=""
  IFS=/ read -ra parts <<<"$walk"
  for part in "${parts[@]}"; do
    [ -n "$part" ] || continue
    prefix=$prefix/$part
    if [ -L "$prefix" ] && [ "$(stat -c %u "$prefix")" != 0 ]; then
      refuse "$prefix (on DATA_DIR's way) is a symbolic link that $(stat -c %U "$prefix") made; run.sh (root) will not follow it: remove it, and keep DATA_DIR in a directory only root may write"
    fi
  done
fi
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
# One supervisor per DATA_DIR: a second one would take the first one's socket away. The lock is
# on the directory itself (nothing to create or follow), held by this script alone: every process
# it starts gets fd 9 closed (9<&-), so none of them keeps it after the supervisor has gone. They
# go with it: the app and nginx are killed when this script dies (a parent-death signal), so a
# lock that is free means nothing of the previous instance serves.
exec 9<"$DATA_DIR"
flock -n 9 || refuse "another run.sh (or what it started) is serving DATA_DIR=$DATA_DIR; stop it first"
mkdir -p "$DATA_DIR"/{run,logs,nginx}
chmod 0700 "$DATA_DIR"
# The app's nodes, 1..APP_NODES: node k listens on sock[k]. One node keeps the names it always
# had (run/app.sock, and run/app.pid for its pid); several have run/app-K.sock and run/app-K.pid,
# and run/app.pid lists every node's pid, one a line (kill -HUP $(cat run/app.pid) reaches all).
mapfile -t nodes < <(seq 1 "$APP_NODES")
declare -a sock pid last_pid started start_ms quick state due_ms label starts err_pid
for k in "${nodes[@]}"; do
  if [ "$APP_NODES" = 1 ]; then
    sock[k]=$DATA_DIR/run/app.sock label[k]=""
  else
    sock[k]=$DATA_DIR/run/app-$k.sock label[k]="node $k: "
  fi
  pid[k]="" last_pid[k]="" quick[k]=0 state[k]=down starts[k]=0
done
APP_LOG=$DATA_DIR/logs/app.log

# Started as root, the app and nginx (master and workers) run as an unprivileged system user
# that owns DATA_DIR (the app drops to it itself with --user, so its binary may stay in a
# root-only checkout). Otherwise everything runs as the invoking user. SERVICE_USER=root opts out.
service_user=""
user_directive=""
if [ "$(id -u)" = 0 ]; then
  service_user=${SERVICE_USER:-testdata-api}
  if [ "$service_user" != root ] && ! id -u "$service_user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$service_user" 2>/dev/null || id -u "$service_user" >/dev/null
  fi
  service_group=$(id -gn "$service_user")
  # SERVICE_USER=root: nginx's workers run as root too (nginx's default would be nobody, who
  # cannot reach the app's socket). Otherwise nginx runs as the service user from its start.
  [ "$service_user" != root ] || user_directive="user root root;"
  if [ "$service_user" != root ]; then
    # Never through, nor of, a symbolic link: one planted by the service user must not make
    # root hand it a file elsewhere. A link of root's own for run/, logs/ or nginx/ (e.g. logs on
    # another disk) is the operator's: its target is given to the service user too.
    # -execdir: chown runs in the directory find holds (entered without following links), on
    # ./name, and -h changes a link itself: a file or a directory on the way swapped for a link
    # meanwhile leads it nowhere. (Links are left as they are: root's, below, are the operator's.)
    PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      find "$DATA_DIR" ! -type l -execdir chown -h "$service_user:$service_group" {} +
    for d in run logs nginx; do
      if [ -L "$DATA_DIR/$d" ] && [ "$(stat -c %u "$DATA_DIR/$d")" = 0 ]; then
        chown -R -P "$service_user:$service_group" "$(readlink -f "$DATA_DIR/$d")"
      fi
    done
    as_service() { setpriv --reuid="$service_user" --regid="$service_group" --clear-groups "$@"; }
    # A DATA_DIR under a closed directory (a checkout in /root, mode 0700): give the service user
    # search permission (x, no listing) on exactly the directories in the way, with a POSIX ACL,
    # and say so. Nothing else of those directories becomes readable to it.
    if ! as_service test -w "$DATA_DIR" -a -x "$DATA_DIR"; then
      dir=$DATA_DIR
      while [ "$dir" != / ]; do
        dir=$(dirname "$dir")
        if ! as_service test -x "$dir"; then
          setfacl -m "u:$service_user:--x" "$dir" 2>/dev/null &&
            echo "run.sh: granted $service_user search permission (ACL u:$service_user:--x) on $dir" \
              "so it can reach DATA_DIR" >&2
        fi
      done
    fi
    if ! as_service test -w "$DATA_DIR" -a -x "$DATA_DIR"; then
      echo "run.sh: user $service_user cannot reach $DATA_DIR (a parent directory is closed to" \
        "it, and no ACL could open it); use a DATA_DIR it can reach, e.g." \
        "DATA_DIR=/var/lib/testdata-api" >&2
      exit 78
    fi
  else
    service_user=""
  fi
fi

# Writes into DATA_DIR (owned by the service user when started as root) never follow a link
# the service user could have planted: root opens nothing there for writing. Appends run as that
# user (as_owner); whole files are written as that user too, to a fresh temp file renamed into
# place (put_file), which replaces a link rather than writing through it.
# Every write after the checks is best-effort (a full disk must not stop the supervisor):
# put_file returns 1 if the file could not be written and does not already hold that content.
# Reads of its files too (a log's last lines shown on a failure): root would show what a link
# there leads to. as_service_cmd: the same, as setpriv options, for a setpriv of its own.
as_service_cmd=()
[ -z "$service_user" ] ||
  as_service_cmd=(--reuid="$service_user" --regid="$service_group" --clear-groups)
as_owner() {
  if [ -n "$service_user" ]; then
    setpriv --reuid="$service_user" --regid="$service_group" --clear-groups "$@"
  else
    "$@"
  fi
}
put_file() {  # put_file PATH < content
  local content
  content=$(cat; echo .) || return 1
  content=${content%.}
  printf '%s' "$content" | as_owner sh -c 'umask 077; t=$(mktemp "${1%/*}/.put.XXXXXX") || exit 1
    cat >"$t" && mv -fT "$t" "$1" && exit 0; rm -f "$t"; exit 1' sh "$1" 2>/dev/null && return 0
  # Not written (a full disk): fine if it already says the same (a restart with the same settings).
  printf '%s' "$content" | as_owner sh -c 'test -f "$1" && ! test -L "$1" && cmp -s - "$1"' sh "$1"
}
# A pid file, best-effort: one that cannot be written is removed rather than left naming a
# process that is gone (e.g. for a kill -HUP $(cat run/app.pid)).
put_pid_file() {  # put_pid_file PATH < content
  put_file "$1" && return 0
  as_owner rm -f "$1" 2>/dev/null || true
  echo "run.sh: could not write $1 (disk full?); it is removed until it can be written" >&2
}
# nginx's configuration. Started as root, nginx (master and workers) runs as the service user,
# with only CAP_NET_BIND_SERVICE for a LISTEN port below 1024: no root process ever opens a file
# in DATA_DIR by name (the access log at each reopen, the pid file, the temp directories), so a
# link the service user plants there leads nowhere it could not reach itself. Its configuration
# comes from a directory only root can write, /run/tdapi-run-sh/<hash of DATA_DIR>/nginx.conf
# (root:service group, 0640), so the service user cannot give it another one (a listener LISTEN
# does not name) for its next start; DATA_DIR/nginx.conf is then a copy, for reading
# (best-effort). TLS_CERT and TLS_KEY are copied beside it the same way (0640, removed at exit),
# as nginx reads them as the service user.
nginx_conf=$DATA_DIR/nginx.conf
if [ -n "$service_user" ]; then
  nginx_conf=/run/tdapi-run-sh/$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-16)/nginx.conf
fi
# Removed at exit (what a kill -9 leaves is replaced at the next start on this DATA_DIR).
remove_nginx_conf() { [ -z "$service_user" ] || rm -rf -- "${nginx_conf%/*}"; }
trap remove_nginx_conf EXIT
# Writes stdin to DIR/NAME in the root-only directory of nginx's configuration: root's, readable
# by the service group (0640); DIR and its parent 0711 (passable, not listable).
root_file() {  # root_file PATH < content
  local dir=${1%/*}
  mkdir -p "$dir" && [ ! -L "$dir" ] && [ ! -L "${dir%/*}" ] && [ "$(stat -c %u "$dir")" = 0 ] &&
    [ "$(stat -c %u "${dir%/*}")" = 0 ] && chmod 0711 "${dir%/*}" "$dir" &&
    cat >"$dir/.tmp" && chgrp "$service_group" "$dir/.tmp" && chmod 0640 "$dir/.tmp" &&
    mv -f "$dir/.tmp" "$1"
}
# TLS_CERT and TLS_KEY as nginx (the service user) reads them: copies beside its configuration.
if [ -n "$service_user" ] && [ -n "$listen_ssl" ]; then
  root_file "${nginx_conf%/*}/tls-cert.pem" <"$TLS_CERT" &&
    root_file "${nginx_conf%/*}/tls-key.pem" <"$TLS_KEY" ||
    refuse "could not copy TLS_CERT and TLS_KEY to ${nginx_conf%/*} for nginx"
  tls=${tls/"ssl_certificate $TLS_CERT;"/"ssl_certificate ${nginx_conf%/*}/tls-cert.pem;"}
  tls=${tls/"ssl_certificate_key $TLS_KEY;"/"ssl_certificate_key ${nginx_conf%/*}/tls-key.pem;"}
fi
write_nginx_conf() {  # < the rendered configuration
  local content dir=${nginx_conf%/*}
  content=$(cat; echo .) || return 1
  content=${content%.}
  if [ -z "$service_user" ]; then
    printf '%s' "$content" | put_file "$nginx_conf" && return 0
    echo "run.sh: could not write $nginx_conf (disk full?), and the one there is of other settings: free some space" >&2
    return 1
  fi
  if ! root_file "$dir/nginx.conf" < <(printf '%s' "$content"); then
    echo "run.sh: could not write nginx's configuration to $nginx_conf (a directory only root may write)" >&2
    return 1
  fi
  printf '%s' "$content" | put_file "$DATA_DIR/nginx.conf" ||
    echo "run.sh: could not write the copy $DATA_DIR/nginx.conf (disk full?); nginx reads $nginx_conf" >&2
}

# The app's log file exists, owned by the user the app runs as, before anything writes to it
# (the app reopens it by name on SIGHUP, after a rotation renamed it).
ensure_app_log() {
  [ -e "$APP_LOG" ] && return 0
  as_owner sh -c ': >>"$1"' sh "$APP_LOG" 2>/dev/null || true
}

# One JSON line, like the app's, to stderr and the app log.
log_json() {  # level event detail
  local line detail=${3//\\/\\\\}
  detail=${detail//\"/\\\"}
  detail=${detail//[[:cntrl:]]/?}
  line=$(printf '{"ts":"%s","level":"%s","event":"%s","detail":"%s"}' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" "$2" "$detail")
  ensure_app_log
  # Not in the app log (a full disk): on stderr in any case.
  if ! printf '%s\n' "$line" | as_owner sh -c 'cat >>"$1"' sh "$APP_LOG" 2>/dev/null ||
      [ -z "${tail_pid:-}" ]; then
    printf '%s\n' "$line" >&2
  fi
}

# nginx's workers must reach the app's socket (mode 0600, owned by the app's user): they run as
# that same user. The API description is served from DATA_DIR, which they can read.
put_file "$DATA_DIR/openapi.yaml" <"$here/docs/openapi.yaml" ||
  echo "run.sh: could not write $DATA_DIR/openapi.yaml (disk full?): /openapi.yaml serves the copy there, if any" >&2
# Idle kept-alive connections per nginx worker (one per core): each parks an app thread, so at
# most a quarter of the app's threads (default 32 per core, at most 256) may be parked.
cores=$(nproc 2>/dev/null || echo 2)
keepalive=$((THREADS / (4 * cores)))
[ "$keepalive" -le 8 ] || keepalive=8
# Fewer threads than 4 per core: parked connections (at least one per nginx worker) could hold
# every thread, and a new request would wait for FASTCGI_READ_TIMEOUT. No keep-alive then.
keep_conn=on
if [ "$keepalive" -lt 1 ]; then keepalive=1; keep_conn=off; fi
# Open files per nginx worker (half of them connections): 16384, or the hard limit if lower.
nofile=16384; [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$nofile" ] || nofile=$(ulimit -Hn)
# nginx's temp files (request bodies, spooled listings): NGINX_TEMP_DIR, default DATA_DIR/nginx.
# Put it on a filesystem of its own (README "Security"): then clients' uploads and listings can
# never take the database's space.
nginx_temp_dir=${NGINX_TEMP_DIR:-$DATA_DIR/nginx}
case $nginx_temp_dir in *[!A-Za-z0-9_./@+,=-]*) refuse "DATA_DIR must be a path of letters, digits and _ . / @ + , = - only (nginx.conf takes it as it is)" ;; esac
if [ "$nginx_temp_dir" != "$DATA_DIR/nginx" ]; then
  [ ! -L "$nginx_temp_dir" ] || refuse "NGINX_TEMP_DIR=$nginx_temp_dir is a symbolic link; name the directory itself"
  mkdir -p "$nginx_temp_dir"
  chmod 0700 "$nginx_temp_dir"
  [ -z "$service_user" ] || chown -h "$service_user:$service_group" "$nginx_temp_dir"
fi
# The stream proxy in front of the HTTP server (nginx.conf): nginx's stream module, built in or
# a dynamic module (Debian: libnginx-mod-stream, installed by 'make deps').
load_stream_module=""
if "$NGINX_BIN" -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
  stream_so=""
  for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
    [ -r "$f" ] && { stream_so=$f; break; }
  done
  [ -n "$stream_so" ] || refuse "nginx's stream module is missing (Debian package libnginx-mod-stream; run 'make deps')"
  load_stream_module="load_module $stream_so;"
elif ! "$NGINX_BIN" -V 2>&1 | grep -q -- '--with-stream\( \|$\)'; then
  refuse "$NGINX_BIN is built without the stream module, which the front door needs"
fi
# The HTTP server's socket, behind the stream proxy; a stale one (nginx killed) would stop it.
as_owner rm -f "$DATA_DIR/run/nginx-http.sock" || true
# With AUTH=on nginx checks the key before it reads a request body (nginx.conf, /_auth).
auth_request="auth_request off;"
[ "$AUTH" = off ] || auth_request="auth_request /_auth;"
# nginx.conf from its template, through the one renderer the package's site comes from too.
# A full disk or a renderer's refusal leaves no configuration: nothing is written then.
node_sockets=""
for k in "${nodes[@]}"; do node_sockets+="${node_sockets:+ }${sock[k]}"; done
nginx_conf_text=$(python3 "$here/ops/render-config.py" nginx --dev "$here/nginx.conf" \
  NODE_SOCKETS="$node_sockets" PORT="$PORT" DATA_DIR="$DATA_DIR" \
  USER_DIRECTIVE="$user_directive" FASTCGI_READ_TIMEOUT="$FASTCGI_READ_TIMEOUT" \
  PROJECT_DIR="$here" KEEPALIVE="$keepalive" KEEP_CONN="$keep_conn" NOFILE="$nofile" \
  WORKER_CONNECTIONS="$((nofile / 2))" CONN_LIMIT_PER_ADDR="$CONN_LIMIT_PER_ADDR" \
  RATE_LIMIT_PER_ADDR="$RATE_LIMIT_PER_ADDR" LISTING_SPOOL_MAX="$LISTING_SPOOL_MAX" \
  LISTEN="$LISTEN" LISTEN_SSL="$listen_ssl" TLS="$tls" HSTS="$hsts" \
  KEY_RATE="$KEY_RATE" KEY_BURST="$KEY_BURST" ANON_RATE="$ANON_RATE" ANON_BURST="$ANON_BURST" \
  NGINX_TEMP_DIR="$nginx_temp_dir" AUTH_REQUEST="$auth_request" \
  LOAD_STREAM_MODULE="$load_stream_module" TCP_CONN_LIMIT_PER_ADDR="$TCP_CONN_LIMIT_PER_ADDR" \
  HTTP_LISTEN="unix:$DATA_DIR/run/nginx-http.sock proxy_protocol" \
  REAL_IP="set_real_ip_from unix:; real_ip_header proxy_protocol;") ||
  refuse "nginx's configuration could not be rendered (see above)"
printf '%s\n' "$nginx_conf_text" | write_nginx_conf ||
  refuse "nginx's configuration could not be written (see above)"

nginx_pid=""
stopping=0
now_ms=0
declare -a exit_rc
# now_ms: milliseconds since the epoch (EPOCHREALTIME without its separator, in any locale).
tick() { now_ms=$((${EPOCHREALTIME//[!0-9]/} / 1000)); }

# Starts node k without waiting for it: state[k] is starting until its socket appears (the app
# creates it only once the database is open, which for SQLite after an unclean stop includes the
# integrity check, O(database size)), then ready.
launch_node() {
  local k=$1 j pids="" err
  as_owner rm -f "${sock[k]}" || true
  ensure_app_log
  starts[k]=$((starts[k] + 1))
  # The app writes its log to --log-file (reopened on SIGHUP); stderr is appended to the same
  # file for what it says before that (bad usage), through a pipe to a cat run as the service
  # user: root never opens the log by name (a link planted there is followed only with that
  # user's rights). One write per line keeps lines whole, also with several nodes appending to
  # the one file (a pipe passes each write of up to 4 KiB whole). err_pid[k]: that writer, which
  # ends once the app has its log open (or has exited).
  exec {err}> >(exec 9<&-
    trap '' INT TERM QUIT
    as_owner sh -c 'exec cat >>"$1"' sh "$APP_LOG")
  err_pid[k]=$!
  # TDAPI_NODE and TDAPI_STARTS: which node this is and how often it was started, for /metrics.
  # TDAPI_SUPERVISOR_PID: the app dies (SIGKILL) with this script.
  TDAPI_NODE=$k TDAPI_STARTS=${starts[k]} TDAPI_SUPERVISOR_PID=$$ \
  SOCKET=${sock[k]} DATA_DIR=$DATA_DIR "$APP_BIN" serve --env-file /dev/null --log-file "$APP_LOG" \
    9<&- 2>&"$err" {err}>&- &
  pid[k]=$!
  exec {err}>&-
  # A stop that came before pid[k] was set has not reached this node.
  [ "$stopping" = 0 ] || kill -TERM "${pid[k]}" 2>/dev/null || true
  last_pid[k]=${pid[k]}
  started[k]=$EPOCHSECONDS
  tick
  start_ms[k]=$now_ms state[k]=starting
  if [ "$APP_NODES" = 1 ]; then
    echo "${pid[k]}" | put_pid_file "$DATA_DIR/run/app.pid"
  else
    echo "${pid[k]}" | put_pid_file "$DATA_DIR/run/app-$k.pid"
    for j in "${nodes[@]}"; do [ -z "${last_pid[j]}" ] || pids+="${last_pid[j]}"$'\n'; done
    printf '%s' "$pids" | put_pid_file "$DATA_DIR/run/app.pid"
  fi
}

# Waits (up to 2 s) until what node k said on stderr is in the app log: before its last lines
# are read or followed by the supervisor's own.
app_err_written() {
  local p=${err_pid[$1]:-} _
  [ -n "$p" ] || return 0
  for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done
}

# Stops the nodes given (default: every node): SIGTERM, then SIGKILL to those still there after
# their stop timeout and a margin.
kill_nodes() {
  local k _ left
  [ $# -gt 0 ] || set -- "${nodes[@]}"
  for k in "$@"; do
    if [ -n "${pid[k]}" ]; then kill -TERM "${pid[k]}" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 $((STOP_TIMEOUT_MS / 50 + 100))); do
    left=0
    for k in "$@"; do
      if [ -n "${pid[k]}" ] && kill -0 "${pid[k]}" 2>/dev/null; then left=1; fi
    done
    [ "$left" = 1 ] || break
    sleep 0.05
  done
  for k in "$@"; do
    if [ -n "${pid[k]}" ]; then
      kill -KILL "${pid[k]}" 2>/dev/null || true
      wait "${pid[k]}" 2>/dev/null || true
    fi
    pid[k]="" state[k]=down
  done
}

stop_all() {
  local k
  stopping=1
  for k in "${nodes[@]}"; do
    if [ -n "${pid[k]}" ]; then kill -TERM "${pid[k]}" 2>/dev/null || true; fi
  done
  if [ -n "$nginx_pid" ]; then kill -QUIT "$nginx_pid" 2>/dev/null || true; fi
}
trap stop_all INT TERM
# SIGHUP to the supervisor (a log rotation aimed at the wrong pid) is passed on as the reopen
# signals: HUP to every node, USR1 to nginx. USR1/USR2 are ignored: the supervisor must not die
# and leave its children unsupervised.
forward_reopen() {
  local k
  for k in "${nodes[@]}"; do
    if [ -n "${pid[k]}" ]; then kill -HUP "${pid[k]}" 2>/dev/null || true; fi
  done
  if [ -n "$nginx_pid" ]; then kill -HUP "$nginx_pid" 2>/dev/null || true; fi  # USR1 to nginx
  # The log forwarder reopens logs/forwarder.log (imfile follows app.log's rename by itself).
  if [ -n "${fwd_pid:-}" ]; then kill -HUP "$fwd_pid" 2>/dev/null || true; fi
}
trap forward_reopen HUP
trap '' USR1 USR2

# Exit statuses of the app that are not worth a restart: it would fail the same way.
not_restarted() { [ "$1" = 78 ] || [ "$1" = 2 ]; }

# Node k exited with status rc, not on a stop: returns 1 if the status is not worth a restart;
# else schedules the restart, at once or, in a crash loop (each run shorter than 2 s), after a
# pause growing to 5 s. The other nodes serve meanwhile.
node_exited() {
  local k=$1 rc=$2 delay=0
  pid[k]="" state[k]=down
  if not_restarted "$rc"; then
    app_err_written "$k"
    log_json error app_exited "${label[k]}the app exited with status $rc and is not restarted; see the line above"
    return 1
  fi
  if [ $((EPOCHSECONDS - started[k])) -lt 2 ]; then quick[k]=$((quick[k] + 1)); else quick[k]=0; fi
  log_json warn app_restarted "${label[k]}the app exited with status $rc; restarting it"
  if [ "${quick[k]}" -gt 1 ]; then delay=$((quick[k] > 6 ? 5 : quick[k] - 1)); fi
  tick
  due_ms[k]=$((now_ms + delay * 1000)) state[k]=backoff
}

echo "$$" | put_pid_file "$DATA_DIR/run/supervisor.pid"
# The log forwarder exited while serving: restarted at once, or after 5 s if it ran less than
# 2 s (a crash loop). imfile goes on in both files from where it stopped.
forwarder_exited() {
  local rc=$1 delay=0
  fwd_pid="" fwd_state=backoff
  [ $((EPOCHSECONDS - fwd_started)) -ge 2 ] || delay=5
  log_json warn log_forwarder_restarted "rsyslogd (LOG_FORWARD) exited with status $rc; restarting it$([ "$delay" = 0 ] || echo " in $delay s")"
  tick
  fwd_due_ms=$((now_ms + delay * 1000))
}
# nginx's access log is the service user's like every other log (nginx runs as that user), so
# logrotate can rotate it as that user.
[ -e "$DATA_DIR/logs/access.log" ] || as_owner sh -c ': >>"$1"' sh "$DATA_DIR/logs/access.log"
# Where nginx opens its pid file, access log and temp directories, and where the app's log is:
# none of them may be a link the service user planted (nginx runs as that user, so such a link
# could not reach further than the user can; refused all the same, to say so at once).
# (A link this script's own user made, e.g. logs/ on another disk, is the operator's choice.)
# The same for the log forwarder's directories (LOG_FORWARD), which this script makes and
# writes into: through a planted rsyslog -> /etc/logrotate.d, root would put a file there that
# the service user owns, and so root's next logrotate would run the service user's commands.
for path in "$DATA_DIR"/{run,logs,nginx} "$DATA_DIR/run/nginx.pid" "$DATA_DIR/logs/access.log" "$APP_LOG" \
    "$nginx_temp_dir"/{client_body,fastcgi,proxy,uwsgi,scgi} "$DATA_DIR"/rsyslog{,/work,/queue}; do
  if [ -L "$path" ] && [ "$(stat -c %u "$path")" != "$(id -u)" ]; then
    refuse "$path is a symbolic link that $(stat -c %U "$path") made; nginx and run.sh (root) will not follow it: remove it"
  fi
done
# Centralized logs (LOG_FORWARD): a local rsyslogd of this instance, run as the service user
# and supervised like the app, reads logs/app.log and logs/access.log (imfile: it follows a
# rename and carries on from where it stopped after a restart; state in rsyslog/), and forwards
# both in RFC 5424 to the collector (omrelp or omfwd)
# through a disk-assisted queue: while the collector is unreachable, lines wait in memory and
# beyond 12,000 of them on disk (rsyslog/queue, at most LOG_FORWARD_QUEUE_MAX; a stop saves the
# queue there). Its own messages (collector unreachable, resumed) go to logs/forwarder.log.
# The local files stay as they are: forwarding only adds a copy.
fwd_pid="" fwd_state=down fwd_started=0 fwd_due_ms=0
fwd_conf=$DATA_DIR/rsyslog/rsyslog.conf
render_forwarder_conf() {  # the configuration, from the one renderer (the package's drop-in's too)
  python3 "$here/ops/render-config.py" rsyslog --dev DATA_DIR="$DATA_DIR" APP_LOG="$APP_LOG" \
    LOG_FORWARD="$LOG_FORWARD" LOG_FORWARD_QUEUE_MAX="$LOG_FORWARD_QUEUE_MAX"
}
# Starts rsyslogd without waiting for it.
launch_forwarder() {
  local cmd=("$RSYSLOGD_BIN" -n -f "$fwd_conf" -i "$DATA_DIR/run/rsyslogd.pid")
  as_owner rm -f "$DATA_DIR/run/rsyslogd.pid" || true
  if [ -n "$service_user" ]; then
    cmd=(setpriv --reuid="$service_user" --regid="$service_group" --clear-groups --pdeathsig TERM "${cmd[@]}")
  else
    cmd=(setpriv --pdeathsig TERM "${cmd[@]}")
  fi
  "${cmd[@]}" 9<&- &
  fwd_pid=$! fwd_started=$EPOCHSECONDS fwd_state=starting
}
stop_forwarder() {
  [ -n "$fwd_pid" ] || return 0
  kill -TERM "$fwd_pid" 2>/dev/null || true
  # It saves what it could not send yet (queue.saveOnShutdown); a stuck one is killed after 20 s.
  for _ in $(seq 1 400); do kill -0 "$fwd_pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$fwd_pid" 2>/dev/null || true
  wait "$fwd_pid" 2>/dev/null || true
  fwd_pid="" fwd_state=down
}
if [ -n "$LOG_FORWARD" ]; then
  case $DATA_DIR in *[\"\\]*) refuse "LOG_FORWARD: DATA_DIR must not contain '\"' or '\\' (it goes into rsyslog's config)" ;; esac
  # Made and written as the service user (its files, in its directory): nothing here can be
  # led elsewhere by a link it planted meanwhile. chown -P (of a previous run's root-owned
  # directories) changes a link itself, never its target.
  if [ -n "$service_user" ] && { [ -e "$DATA_DIR/rsyslog" ] || [ -L "$DATA_DIR/rsyslog" ]; }; then
    chown -R -P "$service_user:$service_group" "$DATA_DIR/rsyslog"
  fi
  as_owner mkdir -p "$DATA_DIR/rsyslog/work" "$DATA_DIR/rsyslog/queue"
  ensure_app_log
  fwd_conf_text=$(render_forwarder_conf) ||
    refuse "LOG_FORWARD: rsyslogd's configuration could not be rendered (see above)"
  printf '%s\n' "$fwd_conf_text" |
    as_owner sh -c 'umask 077; t=$(mktemp "$1.XXXXXX") && cat >"$t" && mv -fT "$t" "$1"' sh "$fwd_conf"
  if ! check=$(as_owner "$RSYSLOGD_BIN" -N1 -f "$fwd_conf" 2>&1); then
    refuse "LOG_FORWARD: rsyslogd refuses its configuration ($fwd_conf):"$'\n'"$check"
  fi
  trap 'stop_forwarder; remove_nginx_conf' EXIT
  launch_forwarder
  # Started once it has written its pid file (after reading its configuration). Lines written
  # before it reads the files are not missed: imfile starts a file it has no state for at its
  # beginning, and one it has state for where it stopped.
  for _ in $(seq 1 400); do
    [ "$(as_owner cat "$DATA_DIR/run/rsyslogd.pid" 2>/dev/null)" != "$fwd_pid" ] || break
    kill -0 "$fwd_pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ "$(as_owner cat "$DATA_DIR/run/rsyslogd.pid" 2>/dev/null)" != "$fwd_pid" ]; then
    stop_forwarder
    refuse "LOG_FORWARD: the log forwarder (rsyslogd) did not start; its messages are above"
  fi
  fwd_state=ready
  log_json info log_forwarding "app and access logs forwarded to $LOG_FORWARD (${LOG_FORWARD%%:*}, RFC 5424) by rsyslogd (queue in $DATA_DIR/rsyslog/queue, at most $LOG_FORWARD_QUEUE_MAX)"
fi

# Sockets and pid files of the nodes of a previous run with another APP_NODES.
as_owner rm -f "$DATA_DIR"/run/app-*.sock "$DATA_DIR"/run/app-*.pid || true
[ "$APP_NODES" = 1 ] || as_owner rm -f "$DATA_DIR/run/app.sock" || true
storage_note=""
if [ -n "$DATABASE_URL" ]; then
  storage_note=", PostgreSQL $DATABASE_URL_SHOWN with $APP_NODES app node$([ "$APP_NODES" = 1 ] || echo s)"
  log_json info storage "PostgreSQL at $DATABASE_URL_SHOWN, $APP_NODES app node(s)"
fi

# Every node ready before nginx starts; no fixed cap: as long as they are alive, up to
# START_TIMEOUT. A node that does not start stops them all.
for k in "${nodes[@]}"; do launch_node "$k"; done
start_result="" start_status=0 failed=""
while [ -z "$start_result" ]; do
  if [ "$stopping" = 1 ]; then start_result=stopping; break; fi
  tick
  ready=0
  for k in "${nodes[@]}"; do
    if [ -S "${sock[k]}" ]; then state[k]=ready ready=$((ready + 1)); continue; fi
    if ! kill -0 "${pid[k]}" 2>/dev/null; then
      wait "${pid[k]}" || start_status=$?
      pid[k]="" failed=$k start_result=died
      break
    fi
    if [ "$START_TIMEOUT" != 0 ] && [ $((now_ms - start_ms[k])) -ge $((START_TIMEOUT * 1000)) ]; then
      failed=$k start_result=timeout
      break
    fi
  done
  if [ -z "$start_result" ] && [ "$ready" = "$APP_NODES" ]; then start_result=ready; fi
  [ -n "$start_result" ] || sleep 0.05
done
case $start_result in
  ready) ;;
  stopping)
    for k in "${nodes[@]}"; do
      if [ -n "${pid[k]}" ]; then wait "${pid[k]}" 2>/dev/null || true; fi
    done
    exit 0 ;;
  *)
    if [ "$start_result" = timeout ]; then
      log_json error start_timeout "${label[failed]}the app was not ready within START_TIMEOUT=${START_TIMEOUT}s; stopping it"
      kill_nodes "$failed"
    fi
    app_err_written "$failed"
    last_line=$(as_owner tail -n 1 "$APP_LOG" || true)  # before the other nodes' stop lines
    kill_nodes
    echo "run.sh: ${label[failed]}the app did not start; its last log line says why ($APP_LOG):" >&2
    printf '%s\n' "$last_line" >&2
    if [ "$start_result" = died ] && [ "$start_status" != 0 ]; then exit "$start_status"; fi
    exit 1 ;;
esac
# nginx is supervised like the app: restarted when its master exits (SIGKILL, the OOM killer,
# SIGQUIT, SIGTERM), or everything stops if it keeps exiting soon (NGINX_QUICK_MAX times in a
# row, each run shorter than 10 s: a bad configuration, a port taken by another program, for
# which nginx itself retries for 2.5 s).
# It runs under a keeper, a small sh that is this script's child and nginx's master's parent,
# alone with them in a process group of its own (set -m) and nothing else:
# - this script dies (kill -9): the keeper gets SIGTERM (parent-death signal) and kills its whole
#   group, master and workers, at once. (nginx's workers outlive a killed master: nothing else
#   ends them.)
# - nginx's master exits: the keeper exits with its status, and this script kills what is left
#   of the group (the workers of a killed master, still holding the port) before a new nginx.
# - QUIT to the keeper (stop) is passed on to the master, HUP as USR1 (reopen the logs). The
#   keeper starts with every signal at its default (env --default-signal): one ignored here
#   (USR1), or by whatever started this script (QUIT for a background job), could not be
#   trapped by sh.
# nginx's error log goes to stderr, through a redactor (query strings and the Referer out: they
# can carry patient ids) into logs/nginx-error.log; the redactor ignores Ctrl-C and ends when
# nginx does.
NGINX_QUICK_MAX=5
nginx_keeper='sup=$1; shift
trap "kill -KILL 0" TERM
[ "$PPID" = "$sup" ] || kill -KILL 0
"$@" &
m=$!
trap "got=1; kill -QUIT $m 2>/dev/null" QUIT
trap "got=1; kill -USR1 $m 2>/dev/null" HUP
while :; do got=0; wait "$m"; rc=$?; [ "$got" = 1 ] || exit "$rc"; done'
nginx_pid="" nginx_state=down nginx_started=0 nginx_due_ms=0 nginx_quick=0 nginx_restarts=0
# Started as root: nginx runs as the service user, with CAP_NET_BIND_SERVICE only (see nginx_conf).
as_nginx=()
if [ -n "$service_user" ]; then
  as_nginx=(setpriv --reuid="$service_user" --regid="$service_group" --clear-groups
    --inh-caps=+net_bind_service --ambient-caps=+net_bind_service)
fi
launch_nginx() {
  # The HTTP server's socket behind the stream proxy: one left by a killed nginx would stop it.
  as_owner rm -f "$DATA_DIR/run/nginx-http.sock" || true
  setpriv --pdeathsig TERM env --default-signal sh -c "$nginx_keeper" sh "$$" \
    "${as_nginx[@]}" "$NGINX_BIN" -p "$DATA_DIR" -c "$nginx_conf" -e stderr 9<&- 2> >(exec 9<&-
    trap '' INT TERM QUIT
    LC_ALL=C as_owner sh -c 'f=$1; shift
      until sed -u -E "$@" >>"$f" 2>/dev/null; do IFS= read -r _ || break; done' sh \
      "$DATA_DIR/logs/nginx-error.log" -e 's/, referrer: .*$//' -e 's/[?][^ ]*/?[redacted]/g' \
      -e 's/[^[:print:]\t]/?/g') &
  nginx_pid=$! nginx_started=$EPOCHSECONDS nginx_state=up
}
# Ends whatever is left of nginx's process group (after its keeper exited).
end_nginx_group() {
  [ -z "$nginx_pid" ] || kill -KILL -- "-$nginx_pid" 2>/dev/null || true
  nginx_pid="" nginx_state=down
}
# nginx (its keeper) exited with status rc while serving: schedules a new one, or returns 1 if
# it keeps exiting at once.
nginx_exited() {
  local rc=$1 delay=0
  end_nginx_group
  # Only an nginx that fails on its own (status 1: a bad configuration, a port taken) counts
  # towards giving up; one stopped (0) or killed (128+N) by a signal is always started again
  # (at most 5 s later), however often that happens.
  if [ $((EPOCHSECONDS - nginx_started)) -ge 10 ]; then
    nginx_quick=0 nginx_restarts=0
  elif [ "$rc" != 0 ] && [ "$rc" -lt 128 ]; then
    nginx_quick=$((nginx_quick + 1))
  fi
  nginx_restarts=$((nginx_restarts + 1))
  echo "run.sh: nginx exited (status $rc); see $DATA_DIR/logs/nginx-error.log:" >&2
  as_owner tail -n 5 "$DATA_DIR/logs/nginx-error.log" >&2 || true
  if [ "$nginx_quick" -ge "$NGINX_QUICK_MAX" ]; then
    log_json error nginx_exited "nginx exited with status $rc, $nginx_quick times in a row within 10 s of its start; stopping (see logs/nginx-error.log)"
    return 1
  fi
  log_json warn nginx_restarted "nginx exited with status $rc; restarting it"
  [ "$nginx_restarts" -lt 2 ] || delay=$((nginx_restarts > 6 ? 5 : nginx_restarts - 1))
  tick
  nginx_due_ms=$((now_ms + delay * 1000)) nginx_state=backoff
}
launch_nginx
if [ -z "$listen_ssl" ] && [ "$LOOPBACK" = 0 ]; then
  log_json warn plaintext "LISTEN=$LISTEN without TLS (ALLOW_PLAINTEXT=1): a TLS-terminating proxy in front must carry every request"
fi
echo "testdata-api: serving on $scheme://$LISTEN, authorization $AUTH$storage_note (data in $DATA_DIR; Ctrl-C stops)" >&2
# On a terminal, show the app's log lines as they come (tail, not a pipe in the app's path).
tail_pid=""
if [ -t 2 ]; then
  setpriv --pdeathsig KILL "${as_service_cmd[@]}" tail -n 0 -F "$APP_LOG" 9<&- >&2 2>/dev/null &
  tail_pid=$!
fi

stop_nginx() {
  [ -n "$nginx_pid" ] || return 0
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  end_nginx_group
}

# Supervision. exit_rc[k]: node k's exit status, reaped but not yet acted on; nginx_rc: nginx's.
status=0
nginx_rc=""
while :; do
  if [ "$stopping" = 1 ]; then
    for k in "${nodes[@]}"; do
      rc=${exit_rc[k]:-0}
      if [ -n "${pid[k]}" ]; then rc=0; wait "${pid[k]}" 2>/dev/null || rc=$?; pid[k]=""; fi
      if [ "$rc" != 0 ] && [ "$status" = 0 ]; then status=$rc; fi
    done
    if [ -n "$nginx_pid" ]; then
      [ -n "$nginx_rc" ] || wait "$nginx_pid" 2>/dev/null || true
      end_nginx_group
    fi
    break
  fi
  if [ -n "$nginx_rc" ] || { [ -n "$nginx_pid" ] && ! kill -0 "$nginx_pid" 2>/dev/null; }; then
    if [ -z "$nginx_rc" ]; then nginx_rc=0; wait "$nginx_pid" 2>/dev/null || nginx_rc=$?; fi
    rc=$nginx_rc nginx_rc=""
    if ! nginx_exited "$rc"; then
      kill_nodes
      status=1
      break
    fi
  fi
  # Nodes that exited: each restarted on its own, or (78, 2) everything stops.
  fatal=""
  for k in "${nodes[@]}"; do
    if [ -n "${pid[k]}" ] && ! kill -0 "${pid[k]}" 2>/dev/null; then
      exit_rc[k]=0
      wait "${pid[k]}" 2>/dev/null || exit_rc[k]=$?
    fi
    if [ -n "${exit_rc[k]:-}" ]; then
      rc=${exit_rc[k]}
      unset 'exit_rc[k]'
      if ! node_exited "$k" "$rc"; then fatal=$rc; break; fi
    fi
  done
  if [ -n "$fatal" ]; then
    kill_nodes
    stop_nginx
    status=$fatal
    break
  fi
  if [ -n "$fwd_pid" ] && ! kill -0 "$fwd_pid" 2>/dev/null; then
    rc=0
    wait "$fwd_pid" 2>/dev/null || rc=$?
    forwarder_exited "$rc"
  fi
  # Restarts that are due; restarted nodes becoming ready (or not within START_TIMEOUT: then
  # everything stops, exit 1).
  tick
  busy=0 timed_out=""
  if [ "$nginx_state" = backoff ]; then
    busy=1
    if [ "$now_ms" -ge "$nginx_due_ms" ] && [ "$stopping" = 0 ]; then launch_nginx; fi
  fi
  if [ "$fwd_state" = backoff ]; then
    busy=1
    if [ "$now_ms" -ge "$fwd_due_ms" ] && [ "$stopping" = 0 ]; then launch_forwarder; fwd_state=ready; fi
  fi
  for k in "${nodes[@]}"; do
    case ${state[k]} in
      backoff)
        busy=1
        if [ "$now_ms" -ge "${due_ms[k]}" ] && [ "$stopping" = 0 ]; then launch_node "$k"; fi ;;
      starting)
        if [ -S "${sock[k]}" ]; then
          state[k]=ready
        elif [ "$START_TIMEOUT" != 0 ] && [ $((now_ms - start_ms[k])) -ge $((START_TIMEOUT * 1000)) ]; then
          timed_out=$k
          break
        else
          busy=1
        fi ;;
    esac
  done
  if [ -n "$timed_out" ]; then
    log_json error start_timeout "${label[timed_out]}the app was not ready within START_TIMEOUT=${START_TIMEOUT}s; stopping it"
    kill_nodes
    stop_nginx
    status=1
    break
  fi
  if [ "$busy" = 1 ]; then sleep 0.05; continue; fi
  # Every node is up: wait for one of them or nginx to exit, or for a signal; at most a second
  # (ticker): a child that exited just before the wait, and that bash had already reported as
  # done, would not end it, and the checks above find it at the next round.
  live=()
  for k in "${nodes[@]}"; do [ -z "${pid[k]}" ] || live+=("${pid[k]}"); done
  if [ -z "${ticker:-}" ] || ! kill -0 "$ticker" 2>/dev/null; then sleep 1 9<&- & ticker=$!; fi
  done_pid=""
  set +e
  wait -n -p done_pid "${live[@]}" ${nginx_pid:+"$nginx_pid"} ${fwd_pid:+"$fwd_pid"} "$ticker"
  rc=$?
  set -e
  if [ -n "${done_pid:-}" ] && [ "$done_pid" = "$nginx_pid" ]; then
    nginx_rc=$rc
  elif [ -n "${done_pid:-}" ] && [ "$done_pid" = "$fwd_pid" ]; then
    forwarder_exited "$rc"
  elif [ -n "${done_pid:-}" ]; then
    for k in "${nodes[@]}"; do
      if [ "${pid[k]}" = "$done_pid" ]; then exit_rc[k]=$rc pid[k]=""; fi
    done
  fi
done
if [ -n "$tail_pid" ]; then kill "$tail_pid" 2>/dev/null || true; fi
# The app's and the supervisor's last lines are read (imfile polls every second) before the
# forwarder stops; what it has not read yet, it reads at its next start.
if [ -n "$fwd_pid" ]; then sleep 1.5; stop_forwarder; fi
exit "$status"
