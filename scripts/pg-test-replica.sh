#!/usr/bin/env bash
# A streaming replica (hot standby) of a test server made by pg-test-server.sh, for the tests
# of read replicas: unix socket only, in DIR.
#
#   scripts/pg-test-replica.sh start PRIMARY_DIR DIR   a base backup of PRIMARY_DIR's server
#                                                      (pg_basebackup -R), serving on DIR
#   scripts/pg-test-replica.sh stop DIR                stops it and removes DIR
#
# start lets the primary's local connections replicate (a line in its pg_hba.conf, then a
# reload). Clients connect as tdapi, as to the primary: psql -h DIR -U tdapi -d NAME. As root,
# the server runs as the `postgres` system user, as pg-test-server.sh's does.
set -euo pipefail

usage() { echo "usage: $0 start PRIMARY_DIR DIR | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
abs() { case $1 in /*) printf '%s' "${1%/}" ;; *) printf '%s' "$PWD/${1%/}" ;; esac; }
fail() { echo "pg-test-replica: $*" >&2; [ -s "${log:-}" ] && tail -n 30 "$log" >&2; exit 1; }

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] || fail "no PostgreSQL server binaries (make deps)"
run_as_owner=()
[ "$(id -u)" = 0 ] && run_as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups)
as_owner() { (cd / && "${run_as_owner[@]}" "$@"); }

case $cmd in
start)
  [ $# = 3 ] || usage
  primary=$(abs "$2")
  dir=$(abs "$3")
  log=$dir/postgres.log
  [ -f "$primary/data/postgresql.conf" ] || fail "no server of pg-test-server.sh in $primary"
  [ ! -e "$dir" ] || fail "$dir exists: stop the replica there first"
  if ! grep -q '^local replication all trust' "$primary/data/pg_hba.conf"; then
    printf 'local replication all trust\n' | as_owner sh -c 'cat >>"$1"' sh "$primary/data/pg_hba.conf"
    as_owner "$PG_BIN/pg_ctl" -D "$primary/data" reload >/dev/null
    sleep 0.5  # the postmaster rereads pg_hba.conf on SIGHUP
  fi
  mkdir -p "$dir"
  chmod 0755 "$dir"
  : >"$dir/.tdapi-pg-test-replica"  # stop removes only a directory holding this
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  as_owner sh -c ': >"$1"' sh "$log"
  as_owner "$PG_BIN/pg_basebackup" -h "$primary" -U tdapi -D "$dir/data" -R -X stream -c fast \
    >>"$log" 2>&1 || fail "pg_basebackup from $primary failed"
  # The copied configuration names the primary's socket directory: this one serves on its own.
  printf "\n# pg-test-replica.sh\nunix_socket_directories = '%s'\nhot_standby = on\n" "$dir" |
    as_owner sh -c 'cat >>"$1"' sh "$dir/data/postgresql.conf"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$log" -w -t 30 start >/dev/null 2>&1 ||
    fail "the replica in $dir did not start"
  for _ in $(seq 1 300); do
    if [ "$("$PG_BIN/psql" -h "$dir" -U tdapi -d postgres -XqAt -c 'select pg_is_in_recovery()' 2>/dev/null)" = t ]; then
      exit 0
    fi
    sleep 0.1
  done
  fail "the replica in $dir did not accept connections as a standby within 30 s" ;;
stop)
  [ $# = 2 ] || usage
  dir=$(abs "$2")
  [ -e "$dir" ] || exit 0
  # The marker, not standby.signal: a replica promoted by a test is stopped here too.
  [ -f "$dir/.tdapi-pg-test-replica" ] || fail "$dir does not hold a replica made here"
  [ -f "$dir/data/postmaster.pid" ] &&
    { as_owner "$PG_BIN/pg_ctl" -D "$dir/data" stop -m fast -w -t 30 >/dev/null 2>&1 ||
      as_owner "$PG_BIN/pg_ctl" -D "$dir/data" stop -m immediate -w -t 30 >/dev/null 2>&1 || true; }
  rm -rf "$dir" ;;
*) usage ;;
esac
