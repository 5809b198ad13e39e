#!/usr/bin/env bash
# A private, throwaway PostgreSQL server for the tests: unix socket only, in DIR.
#
#   scripts/pg-test-server.sh start DIR     a fresh cluster in DIR/data, serving on DIR/.s.PGSQL.5432
#   scripts/pg-test-server.sh restart DIR   a fast restart (in-flight sessions are cut off)
#   scripts/pg-test-server.sh status DIR    exit 0 while it runs, non-zero otherwise
#   scripts/pg-test-server.sh stop DIR      stops it (and its pooler) and removes DIR
#   scripts/pg-test-server.sh pooler-start DIR   PgBouncer in front of it: transaction mode, 5
#       server connections per database, on DIR/pgbouncer port 6432
#       (postgresql://tdapi@/NAME?host=DIR/pgbouncer&port=6432)
#   scripts/pg-test-server.sh pooler-stop DIR    stops the pooler
#   scripts/pg-test-server.sh sync-start DIR     a fresh primary in DIR as start makes, and a
#       synchronous standby of it (pg_basebackup -R) in DIR/standby, serving on
#       DIR/standby/.s.PGSQL.5432: the primary's synchronous_standby_names names it, so every
#       COMMIT with synchronous_commit on waits for it
#   scripts/pg-test-server.sh standby-stop DIR   stops the standby (immediate: as if it crashed)
#   scripts/pg-test-server.sh standby-start DIR  starts it again; it catches up with the primary
#   scripts/pg-test-server.sh standby-promote DIR  promotes it (pg_ctl promote): it becomes a
#       primary on a new timeline
#   scripts/pg-test-server.sh primary-start DIR  starts DIR's own cluster again as it is (after it
#       crashed or was killed; a promoted standby does not stop it: split brain)
#
# Clients connect as the superuser role tdapi, without a password (local trust), e.g.
#   psql -h DIR -U tdapi -d postgres     or     postgresql://tdapi@/NAME?host=DIR
# Any local user may connect: the app may run as the service user while the tests run as root.
# PostgreSQL refuses to run as root: started as root, the server runs as the `postgres` system
# user (created by Debian's postgresql package), which must be able to reach DIR (use /tmp).
# Binaries: PG_BIN, else the newest /usr/lib/postgresql/*/bin. Connection slots:
# PG_MAX_CONNECTIONS (default: room for four apps at the default THREADS, at least 300).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|restart|status|pooler-start|pooler-stop|sync-start|standby-stop|standby-start|standby-promote|primary-start DIR" >&2
  exit 2
}
[ $# = 2 ] || usage
cmd=$1
case $2 in /*) dir=$2 ;; *) dir=$PWD/$2 ;; esac
dir=${dir%/}
data=$dir/data
log=$dir/postgres.log
marker=$dir/.tdapi-pg-test-server  # DIR is ours to remove only if it holds this

fail() {
  echo "pg-test-server: $*" >&2
  if [ -s "$log" ]; then
    echo "pg-test-server: last lines of $log:" >&2
    tail -n 30 "$log" >&2
  fi
  exit 1
}

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
need_binaries() {
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/postgres" ]; then
    fail "no PostgreSQL server binaries in ${PG_BIN:-/usr/lib/postgresql/*/bin}; run 'make deps' (Debian package postgresql)"
  fi
}

# As root, the server's own commands (initdb, pg_ctl) run as the postgres system user.
run_as_owner=()
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || fail "started as root, but there is no 'postgres' user to run the server as"
  run_as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
# cd: the server's tools complain about a working directory they cannot read (e.g. /root).
as_owner() { (cd / && "${run_as_owner[@]}" "$@"); }
pg_ctl() { as_owner "$PG_BIN/pg_ctl" -D "$data" "$@"; }

# Answers a real query as tdapi, waiting up to 30 s for the server to accept connections.
wait_ready() {
  local _
  for _ in $(seq 1 300); do
    if "$PG_BIN/psql" -h "$dir" -U tdapi -d postgres -XqAt -c 'select 1' >/dev/null 2>&1; then
      return 0
    fi
    pg_ctl status >/dev/null 2>&1 || fail "the server in $dir is not running"
    sleep 0.1
  done
  fail "the server in $dir did not accept connections within 30 s"
}

# The pooler: PgBouncer (Debian package pgbouncer), its files in DIR/pgbouncer.
pooler_dir=$dir/pgbouncer
pooler_stop() {
  local pid _
  pid=$(cat "$pooler_dir/pgbouncer.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  # Only the pooler this script started: its pid file, and a process running on our config.
  if kill -0 "$pid" 2>/dev/null && grep -qF "$pooler_dir/pgbouncer.ini" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pooler_dir/pgbouncer.pid"
}
pooler_start() {
  local bin=${PGBOUNCER_BIN:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
  [ -x "$bin" ] || fail "no pgbouncer; run 'make deps' (Debian package pgbouncer)"
  [ -f "$data/PG_VERSION" ] || fail "no server in $dir; use start first"
  pooler_stop
  as_owner mkdir -p "$pooler_dir"
  as_owner sh -c 'printf "\"tdapi\" \"\"\n" >"$1"' sh "$pooler_dir/userlist.txt"
  # Transaction mode, 5 server connections per database and user: every transaction of every
  # client may run on any of them, and they outlive the clients (and the app's restarts).
  as_owner sh -c 'cat >"$1"' sh "$pooler_dir/pgbouncer.ini" <<EOF
[databases]
* = host=$dir port=5432
[pgbouncer]
listen_addr =
listen_port = 6432
unix_socket_dir = $pooler_dir
unix_socket_mode = 0777
auth_type = trust
auth_file = $pooler_dir/userlist.txt
pool_mode = transaction
default_pool_size = 5
max_client_conn = 2000
; a client waits at most 5 s for a server connection (then an error, and the app answers 503),
; and a server that refused a login (restarting) is tried again after 1 s, not 15
query_wait_timeout = 5
server_login_retry = 1
logfile = $pooler_dir/pgbouncer.log
pidfile = $pooler_dir/pgbouncer.pid
admin_users = tdapi
EOF
  as_owner "$bin" -d -q "$pooler_dir/pgbouncer.ini" >>"$log" 2>&1 || {
    tail -n 20 "$pooler_dir/pgbouncer.log" >&2 2>/dev/null || true
    fail "pgbouncer did not start"
  }
  local _
  for _ in $(seq 1 100); do
    if "$PG_BIN/psql" -h "$pooler_dir" -p 6432 -U tdapi -d postgres -XqAt -c 'select 1' >/dev/null 2>&1; then
      echo "pg-test-server: PgBouncer (transaction mode, pool 5) on $pooler_dir port 6432"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$pooler_dir/pgbouncer.log" >&2 2>/dev/null || true
  fail "pgbouncer in $pooler_dir did not accept connections within 10 s"
}

# The synchronous standby (sync-start): its files in DIR/standby.
standby_dir=$dir/standby
standby_ctl() { as_owner "$PG_BIN/pg_ctl" -D "$standby_dir/data" "$@"; }
standby_stop() {
  [ -f "$standby_dir/data/postmaster.pid" ] || return 0
  standby_ctl stop -m immediate -w -t 30 >/dev/null 2>&1 || true
}
standby_start() {
  [ -f "$standby_dir/data/PG_VERSION" ] || fail "no standby in $standby_dir; use sync-start"
  standby_ctl start -w -t 30 -l "$standby_dir/postgres.log" >/dev/null 2>&1 ||
    fail "the standby in $standby_dir did not start"
  # Streaming again and in sync: the primary's COMMITs are acknowledged again.
  local _
  for _ in $(seq 1 300); do
    if [ "$("$PG_BIN/psql" -h "$dir" -U tdapi -d postgres -XqAt -c \
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'tdapi_standby' AND sync_state = 'sync'" 2>/dev/null)" = 1 ]; then
      return 0
    fi
    sleep 0.1
  done
  fail "the standby in $standby_dir did not become the synchronous standby within 30 s"
}
sync_start() {
  start
  # Replication connections over the unix socket, trusted like the rest.
  printf 'local all all trust\nlocal replication all trust\n' | as_owner sh -c 'cat >"$1"' sh "$data/pg_hba.conf"
  "$PG_BIN/psql" -h "$dir" -U tdapi -d postgres -XqAt -c 'SELECT pg_reload_conf()' >/dev/null ||
    fail "could not reload the primary"
  as_owner mkdir -p "$standby_dir"
  as_owner "$PG_BIN/pg_basebackup" -h "$dir" -U tdapi -D "$standby_dir/data" -R -X stream \
    --no-sync >>"$log" 2>&1 || fail "pg_basebackup failed"
  # After pg_basebackup's own lines (postgresql.auto.conf is read last; the last value wins):
  # the name the primary's synchronous_standby_names gives.
  as_owner sh -c 'cat >>"$1"' sh "$standby_dir/data/postgresql.auto.conf" <<EOF
# pg-test-server.sh: the synchronous standby of the server in $dir
unix_socket_directories = '$standby_dir'
primary_conninfo = 'host=$dir port=5432 user=tdapi application_name=tdapi_standby'
hot_standby = on
EOF
  "$PG_BIN/psql" -h "$dir" -U tdapi -d postgres -XqAt \
    -c "ALTER SYSTEM SET synchronous_standby_names = 'tdapi_standby'" \
    -c 'SELECT pg_reload_conf()' >/dev/null || fail "could not name the synchronous standby"
  standby_start
  echo "pg-test-server: synchronous standby of $dir serving in $standby_dir"
}

# Stops a server left in DIR (a test run that was killed) and removes DIR, if DIR is ours.
remove_dir() {
  [ -e "$dir" ] || return 0
  [ -e "$marker" ] || [ -z "$(ls -A "$dir")" ] ||
    fail "$dir exists and was not made by this script; not touching it"
  pooler_stop
  if [ -f "$standby_dir/data/postmaster.pid" ]; then
    need_binaries
    standby_stop
  fi
  if [ -f "$data/postmaster.pid" ]; then
    need_binaries
    pg_ctl stop -m fast -w -t 30 >/dev/null 2>&1 || pg_ctl stop -m immediate -w -t 30 >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

start() {
  need_binaries
  remove_dir  # always a fresh cluster
  mkdir -p "$dir"
  : >"$marker"
  # The socket directory: searchable by every local user (the socket itself is 0777).
  chmod 0755 "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir" "$marker"
    as_owner test -w "$dir" -a -x "$dir" ||
      fail "user postgres cannot reach $dir (a parent directory is closed to it); use a directory under /tmp"
  fi
  as_owner sh -c ': >"$1"' sh "$log"  # the server appends to it as its owner
  # tdapi is the bootstrap superuser; local (unix socket) connections are trusted, nothing else.
  # --no-sync: only initdb's own final flush is skipped; the server itself runs with fsync on.
  as_owner "$PG_BIN/initdb" -D "$data" -U tdapi --auth-local=trust --auth-host=reject \
    --encoding=UTF8 --locale=C --no-sync >>"$log" 2>&1 || fail "initdb failed"
  printf 'local all all trust\n' | as_owner sh -c 'cat >"$1"' sh "$data/pg_hba.conf"
  # Default THREADS is 32 per core (at most 256); an app holds about one connection per thread
  # plus its writer's, and a test may run two apps at once (CTest may run suites in parallel).
  local cores threads conns
  cores=$(nproc 2>/dev/null || echo 2)
  threads=$((32 * cores > 256 ? 256 : 32 * cores))
  conns=$((4 * (threads + 8)))
  [ "$conns" -ge 300 ] || conns=300
  as_owner sh -c 'cat >>"$1"' sh "$data/postgresql.conf" <<EOF

# pg-test-server.sh: a private test server, unix socket only
listen_addresses = ''
unix_socket_directories = '$dir'
unix_socket_permissions = 0777
max_connections = ${PG_MAX_CONNECTIONS:-$conns}
shared_buffers = 128MB
# durability as in production (these are the defaults; tests check that nothing acknowledged is lost)
fsync = on
synchronous_commit = on
full_page_writes = on
huge_pages = off
lc_messages = 'C'
timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  pg_ctl start -w -t 30 -l "$log" >/dev/null 2>&1 || fail "the server in $dir did not start"
  wait_ready
  echo "pg-test-server: PostgreSQL $("$PG_BIN/postgres" -V | awk '{print $3}') serving in $dir (psql -h $dir -U tdapi)"
}

case $cmd in
  start) start ;;
  restart)
    need_binaries
    [ -f "$data/PG_VERSION" ] || fail "no server in $dir; use start"
    pg_ctl restart -m fast -w -t 30 -l "$log" >/dev/null 2>&1 || fail "the server in $dir did not restart"
    wait_ready ;;
  status)
    need_binaries
    if pg_ctl status >/dev/null 2>&1; then echo "pg-test-server: running in $dir"
    else echo "pg-test-server: not running in $dir"; exit 3; fi ;;
  primary-start)  # the cluster in DIR started again as it is (after a crash or a kill)
    need_binaries
    [ -f "$data/PG_VERSION" ] || fail "no server in $dir; use start"
    pg_ctl start -w -t 30 -l "$log" >/dev/null 2>&1 || fail "the server in $dir did not start"
    wait_ready ;;
  standby-promote)
    need_binaries
    standby_ctl promote -w -t 60 >/dev/null 2>&1 || fail "the standby in $standby_dir was not promoted" ;;
  stop) remove_dir ;;
  pooler-start) need_binaries; pooler_start ;;
  pooler-stop) pooler_stop ;;
  sync-start) sync_start ;;
  standby-stop) need_binaries; standby_stop ;;
  standby-start) need_binaries; standby_start ;;
  *) usage ;;
esac
