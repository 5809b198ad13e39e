#!/usr/bin/env bash
# make run: nginx (+ rsyslogd with LOG_FORWARD) and the app node(s) for development, in the
# foreground; Ctrl-C or SIGTERM stops them. Settings: the environment, checked and defaulted by
# `testdata-api config resolve`. What it does and why: docs/development.md, "make run".
set -euo pipefail
set -m
umask 077

here=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-5000}
DATA_DIR=${DATA_DIR:-./var}
APP_BIN=${APP_BIN:-$here/build/testdata-api}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$APP_BIN" ] || { echo "run.sh: $APP_BIN is missing; run 'make build' first" >&2; exit 1; }
[ -x "$NGINX_BIN" ] || { echo "run.sh: nginx is missing; run 'make deps' first" >&2; exit 1; }
# Settings: checked, with their defaults, by the binary (exit 78 naming every bad value).
refuse() { echo "run.sh: $*" >&2; exit 78; }
resolved=$("$APP_BIN" config resolve --env-file /dev/null) || exit 78
while IFS= read -r line; do export "${line?}"; done <<<"$resolved"
if [ -n "${TLS_CERT:-}" ]; then
  [ -r "$TLS_CERT" ] || refuse "TLS_CERT must name a readable PEM certificate (with TLS_KEY)"
  [ -r "$TLS_KEY" ] || refuse "TLS_KEY must name the readable PEM key of TLS_CERT"
fi
scheme=$([ -n "${TLS_CERT:-}" ] && echo https || echo http)
LOG_FORWARD=${LOG_FORWARD:-} DATABASE_URL=${DATABASE_URL:-}
if [ -n "$LOG_FORWARD" ]; then
  RSYSLOGD_BIN=${RSYSLOGD_BIN:-$(command -v rsyslogd || echo /usr/sbin/rsyslogd)}
  [ -x "$RSYSLOGD_BIN" ] ||
    refuse "LOG_FORWARD needs rsyslogd (Debian packages rsyslog and rsyslog-relp; run 'make deps')"
fi

# As root, no link on DATA_DIR's way that root did not make (docs/development.md, "As root").
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
# One launcher per DATA_DIR: a lock on the directory that no child inherits (9<&-).
exec 9<"$DATA_DIR"
flock -n 9 || refuse "another run.sh (or what it started) is serving DATA_DIR=$DATA_DIR; stop it first"
mkdir -p "$DATA_DIR"/{run,logs,nginx}
chmod 0700 "$DATA_DIR"
# Node k listens on sock[k]: run/app.sock alone, run/app-K.sock with several.
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

# As root: the app, nginx and the forwarder run as SERVICE_USER, who owns DATA_DIR.
service_user=""
user_directive=""
if [ "$(id -u)" = 0 ]; then
  service_user=${SERVICE_USER:-testdata-api}
  if [ "$service_user" != root ] && ! id -u "$service_user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$service_user" 2>/dev/null || id -u "$service_user" >/dev/null
  fi
  service_group=$(id -gn "$service_user")
  [ "$service_user" != root ] || user_directive="user root root;"
  if [ "$service_user" != root ]; then
    PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      find "$DATA_DIR" ! -type l -execdir chown -h "$service_user:$service_group" {} +
    for d in run logs nginx; do
      if [ -L "$DATA_DIR/$d" ] && [ "$(stat -c %u "$DATA_DIR/$d")" = 0 ]; then
        chown -R -P "$service_user:$service_group" "$(readlink -f "$DATA_DIR/$d")"
      fi
    done
    as_service() { setpriv --reuid="$service_user" --regid="$service_group" --clear-groups "$@"; }
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

# Writes into DATA_DIR run as its owner, whole files renamed into place (never through a link).
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
  printf '%s' "$content" | as_owner sh -c 'test -f "$1" && ! test -L "$1" && cmp -s - "$1"' sh "$1"
}
put_pid_file() {  # put_pid_file PATH < content
  put_file "$1" && return 0
  as_owner rm -f "$1" 2>/dev/null || true
  echo "run.sh: could not write $1 (disk full?); it is removed until it can be written" >&2
}
# As root nginx reads its configuration (and TLS copies) from a directory only root may write.
nginx_conf=$DATA_DIR/nginx.conf
if [ -n "$service_user" ]; then
  nginx_conf=/run/tdapi-run-sh/$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-16)/nginx.conf
fi
remove_nginx_conf() { [ -z "$service_user" ] || rm -rf -- "${nginx_conf%/*}"; }
trap remove_nginx_conf EXIT
root_file() {  # root_file PATH < content
  local dir=${1%/*}
  mkdir -p "$dir" && [ ! -L "$dir" ] && [ ! -L "${dir%/*}" ] && [ "$(stat -c %u "$dir")" = 0 ] &&
    [ "$(stat -c %u "${dir%/*}")" = 0 ] && chmod 0711 "${dir%/*}" "$dir" &&
    cat >"$dir/.tmp" && chgrp "$service_group" "$dir/.tmp" && chmod 0640 "$dir/.tmp" &&
    mv -f "$dir/.tmp" "$1"
}
tls_paths=()
if [ -n "$service_user" ] && [ -n "${TLS_CERT:-}" ]; then
  root_file "${nginx_conf%/*}/tls-cert.pem" <"$TLS_CERT" &&
    root_file "${nginx_conf%/*}/tls-key.pem" <"$TLS_KEY" ||
    refuse "could not copy TLS_CERT and TLS_KEY to ${nginx_conf%/*} for nginx"
  tls_paths=(TLS_CERT="${nginx_conf%/*}/tls-cert.pem" TLS_KEY="${nginx_conf%/*}/tls-key.pem")
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

# The supervisor's own lines: JSON like the app's, into app.log (and stderr until the tail runs).
ensure_app_log() {
  [ -e "$APP_LOG" ] && return 0
  as_owner sh -c ': >>"$1"' sh "$APP_LOG" 2>/dev/null || true
}

log_json() {  # level event detail
  local line detail=${3//\\/\\\\}
  detail=${detail//\"/\\\"}
  detail=${detail//[[:cntrl:]]/?}
  line=$(printf '{"ts":"%s","level":"%s","event":"%s","detail":"%s"}' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" "$2" "$detail")
  ensure_app_log
  if ! printf '%s\n' "$line" | as_owner sh -c 'cat >>"$1"' sh "$APP_LOG" 2>/dev/null ||
      [ -z "${tail_pid:-}" ]; then
    printf '%s\n' "$line" >&2
  fi
}

# nginx.conf, from the one renderer (ops/render-config.py nginx --run).
put_file "$DATA_DIR/openapi.yaml" <"$here/docs/openapi.yaml" ||
  echo "run.sh: could not write $DATA_DIR/openapi.yaml (disk full?): /openapi.yaml serves the copy there, if any" >&2
nginx_temp_dir=${NGINX_TEMP_DIR:-$DATA_DIR/nginx}
case $nginx_temp_dir in *[!A-Za-z0-9_./@+,=-]*) refuse "DATA_DIR must be a path of letters, digits and _ . / @ + , = - only (nginx.conf takes it as it is)" ;; esac
if [ "$nginx_temp_dir" != "$DATA_DIR/nginx" ]; then
  [ ! -L "$nginx_temp_dir" ] || refuse "NGINX_TEMP_DIR=$nginx_temp_dir is a symbolic link; name the directory itself"
  mkdir -p "$nginx_temp_dir"
  chmod 0700 "$nginx_temp_dir"
  [ -z "$service_user" ] || chown -h "$service_user:$service_group" "$nginx_temp_dir"
fi
as_owner rm -f "$DATA_DIR/run/nginx-http.sock" || true
node_sockets=""
for k in "${nodes[@]}"; do node_sockets+="${node_sockets:+ }${sock[k]}"; done
nginx_conf_text=$(NGINX_BIN=$NGINX_BIN python3 "$here/ops/render-config.py" nginx --run "$here/nginx.conf" \
  NODE_SOCKETS="$node_sockets" DATA_DIR="$DATA_DIR" USER_DIRECTIVE="$user_directive" \
  PROJECT_DIR="$here" NGINX_TEMP_DIR="$nginx_temp_dir" "${tls_paths[@]}") ||
  refuse "nginx's configuration could not be rendered (see above)"
printf '%s\n' "$nginx_conf_text" | write_nginx_conf ||
  refuse "nginx's configuration could not be written (see above)"

nginx_pid=""
stopping=0
now_ms=0
declare -a exit_rc
tick() { now_ms=$((${EPOCHREALTIME//[!0-9]/} / 1000)); }

# Nodes: started without waiting; stderr reaches app.log through a pipe as the service user.
launch_node() {
  local k=$1 j pids="" err
  as_owner rm -f "${sock[k]}" || true
  ensure_app_log
  starts[k]=$((starts[k] + 1))
  exec {err}> >(exec 9<&-
    trap '' INT TERM QUIT
    as_owner sh -c 'exec cat >>"$1"' sh "$APP_LOG")
  err_pid[k]=$!
  TDAPI_NODE=$k TDAPI_STARTS=${starts[k]} TDAPI_SUPERVISOR_PID=$$ \
  SOCKET=${sock[k]} DATA_DIR=$DATA_DIR "$APP_BIN" serve --env-file /dev/null --log-file "$APP_LOG" \
    9<&- 2>&"$err" {err}>&- &
  pid[k]=$!
  exec {err}>&-
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

app_err_written() {
  local p=${err_pid[$1]:-} _
  [ -n "$p" ] || return 0
  for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done
}

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

# Signals: INT/TERM stop everything, HUP reopens the logs, USR1/USR2 are ignored.
stop_all() {
  local k
  stopping=1
  for k in "${nodes[@]}"; do
    if [ -n "${pid[k]}" ]; then kill -TERM "${pid[k]}" 2>/dev/null || true; fi
  done
  if [ -n "$nginx_pid" ]; then kill -QUIT "$nginx_pid" 2>/dev/null || true; fi
}
trap stop_all INT TERM
forward_reopen() {
  local k
  for k in "${nodes[@]}"; do
    if [ -n "${pid[k]}" ]; then kill -HUP "${pid[k]}" 2>/dev/null || true; fi
  done
  if [ -n "$nginx_pid" ]; then kill -HUP "$nginx_pid" 2>/dev/null || true; fi  # USR1 to nginx
  if [ -n "${fwd_pid:-}" ]; then kill -HUP "$fwd_pid" 2>/dev/null || true; fi
}
trap forward_reopen HUP
trap '' USR1 USR2

# A node that exits is restarted (backing off in a crash loop); 78 and 2 stop everything.
not_restarted() { [ "$1" = 78 ] || [ "$1" = 2 ]; }

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
forwarder_exited() {
  local rc=$1 delay=0
  fwd_pid="" fwd_state=backoff
  [ $((EPOCHSECONDS - fwd_started)) -ge 2 ] || delay=5
  log_json warn log_forwarder_restarted "rsyslogd (LOG_FORWARD) exited with status $rc; restarting it$([ "$delay" = 0 ] || echo " in $delay s")"
  tick
  fwd_due_ms=$((now_ms + delay * 1000))
}
[ -e "$DATA_DIR/logs/access.log" ] || as_owner sh -c ': >>"$1"' sh "$DATA_DIR/logs/access.log"
for path in "$DATA_DIR"/{run,logs,nginx} "$DATA_DIR/run/nginx.pid" "$DATA_DIR/logs/access.log" "$APP_LOG" \
    "$nginx_temp_dir"/{client_body,fastcgi,proxy,uwsgi,scgi} "$DATA_DIR"/rsyslog{,/work,/queue}; do
  if [ -L "$path" ] && [ "$(stat -c %u "$path")" != "$(id -u)" ]; then
    refuse "$path is a symbolic link that $(stat -c %U "$path") made; nginx and run.sh (root) will not follow it: remove it"
  fi
done
# LOG_FORWARD: rsyslogd, run as the service user and supervised like a node.
fwd_pid="" fwd_state=down fwd_started=0 fwd_due_ms=0
fwd_conf=$DATA_DIR/rsyslog/rsyslog.conf
render_forwarder_conf() {  # the configuration, from the one renderer (the package's drop-in's too)
  python3 "$here/ops/render-config.py" rsyslog --dev DATA_DIR="$DATA_DIR" APP_LOG="$APP_LOG" \
    LOG_FORWARD="$LOG_FORWARD" LOG_FORWARD_QUEUE_MAX="$LOG_FORWARD_QUEUE_MAX"
}
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
  for _ in $(seq 1 400); do kill -0 "$fwd_pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$fwd_pid" 2>/dev/null || true
  wait "$fwd_pid" 2>/dev/null || true
  fwd_pid="" fwd_state=down
}
if [ -n "$LOG_FORWARD" ]; then
  case $DATA_DIR in *[\"\\]*) refuse "LOG_FORWARD: DATA_DIR must not contain '\"' or '\\' (it goes into rsyslog's config)" ;; esac
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

as_owner rm -f "$DATA_DIR"/run/app-*.sock "$DATA_DIR"/run/app-*.pid || true
[ "$APP_NODES" = 1 ] || as_owner rm -f "$DATA_DIR/run/app.sock" || true
storage_note=""
if [ -n "$DATABASE_URL" ]; then
  storage_note=", PostgreSQL $DATABASE_URL_SHOWN with $APP_NODES app node$([ "$APP_NODES" = 1 ] || echo s)"
  log_json info storage "PostgreSQL at $DATABASE_URL_SHOWN, $APP_NODES app node(s)"
fi

# Every node ready (its socket exists) within START_TIMEOUT before nginx starts.
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
# nginx under a keeper in its own process group: restarted when its master exits; 5 quick
# failures in a row stop everything.
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
as_nginx=()
if [ -n "$service_user" ]; then
  as_nginx=(setpriv --reuid="$service_user" --regid="$service_group" --clear-groups
    --inh-caps=+net_bind_service --ambient-caps=+net_bind_service)
fi
launch_nginx() {
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
end_nginx_group() {
  [ -z "$nginx_pid" ] || kill -KILL -- "-$nginx_pid" 2>/dev/null || true
  nginx_pid="" nginx_state=down
}
nginx_exited() {
  local rc=$1 delay=0
  end_nginx_group
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
if [ -z "${TLS_CERT:-}" ] && [ "$LOOPBACK" = 0 ]; then
  log_json warn plaintext "LISTEN=$LISTEN without TLS (ALLOW_PLAINTEXT=1): a TLS-terminating proxy in front must carry every request"
fi
echo "testdata-api: serving on $scheme://$LISTEN, authorization $AUTH$storage_note (data in $DATA_DIR; Ctrl-C stops)" >&2
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

# Supervision: wait for a child to exit (or a signal, or a 1 s tick), then act on it.
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
if [ -n "$fwd_pid" ]; then sleep 1.5; stop_forwarder; fi
exit "$status"
