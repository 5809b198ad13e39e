#!/usr/bin/env bash
# The package under a real systemd (CTest package_nspawn; docs/operations.md): boots a clean
# Debian 12 root (scripts/nspawn-test-base.sh, cached under /var/tmp; each run on an overlay on a
# tmpfs) with `systemd-nspawn --keep-unit --register=no --private-network -b`, installs the
# package in it with `apt-get install ./….deb` as an operator would, and checks, each on its own:
#   port_taken      port 5000 held by another program during the install: the install says so
#   journal         the app's JSON lines in `journalctl -u testdata-api`
#   readme_install  README's "Install the package" block as written: the file `make deb` makes is
#                   the one its apt-get line installs; that line, `keys create`, `systemctl
#                   status` and the curl with the key run in the container and do what it says
#   bad_setting     THREADS=lots in the env file: `systemctl restart` fails, the reason (THREADS)
#                   is in `systemctl status`, no restart loop; fixed, it starts again
#   readiness       right after `systemctl restart` returns, nginx answers 200, never 502
#   watchdog        the app stopped with SIGSTOP (hung) is killed and restarted by the watchdog
#   backup          `testdata-api backup` as root leaves no root-owned file, then the timer's
#                   unit (testdata-api-backup.service) succeeds
#   forwarding      LOG_FORWARD to ops/rsyslog's collector (in the container): the system's
#                   rsyslog forwards app and access lines; killed (SIGKILL) and restarted by
#                   systemd, it resends at most 60 lines of each
#   nodes           APP_NODES=2 on PostgreSQL: testdata-api@1 and @2 serve; with either stopped,
#                   every GET through nginx is still 200
# Every command runs inside the container (which has no network) or on the host's loopback
# against files; the container is stopped and the mounts removed on every exit path.
# Usage: scripts/test-package-nspawn.sh DEB|DIR
# Exit: 0 all checks passed, 1 a check failed, 77 (CTest SKIP_RETURN_CODE) cannot run here:
# not root, no Debian mirror for the clean root, or systemd-nspawn cannot boot on this machine.
# NSPAWN_TEST_BASE: the cached root (default /var/tmp/tdapi-nspawn-base).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
deb=${1:?usage: test-package-nspawn.sh DEB|DIR}
if [ -d "$deb" ]; then
  debs=("$deb"/testdata-api_*.deb)
  [ "${#debs[@]}" = 1 ] || { echo "test-package-nspawn: want one testdata-api_*.deb in $deb, found ${#debs[@]}" >&2; exit 1; }
  deb=${debs[0]}
fi
[ -f "$deb" ] || { echo "test-package-nspawn: no package at $deb (package_build failed?)" >&2; exit 1; }

say() { printf 'test-package-nspawn: %s\n' "$*"; }
skip() { printf 'test-package-nspawn: SKIP: %s\n' "$*"; exit 77; }
die() { printf 'test-package-nspawn: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root (overlay mount, systemd-nspawn)"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn is missing (scripts/install-deps.sh installs systemd-container)"
command -v nsenter >/dev/null || die "nsenter is missing (util-linux)"
t0=$EPOCHSECONDS
base=${NSPAWN_TEST_BASE:-/var/tmp/tdapi-nspawn-base}
# The package's dependencies must be in the cached root: the container has no network.
read -r -a depends < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/[[:space:]]//g' | grep . | tr '\n' ' ')
"$here/scripts/nspawn-test-base.sh" "$base" "${PACKAGE_TEST_BASE:-/var/tmp/tdapi-package-base}" "${depends[@]}"
rc=$?
[ "$rc" = 77 ] && skip "no Debian mirror reachable to build the clean root"
[ "$rc" = 0 ] || die "could not build the root to boot in $base"
say "root to boot ready in $((EPOCHSECONDS - t0)) s ($base)"

work=$(mktemp -d /var/tmp/tdapi-nspawn.XXXXXX)
R=$work/root
machine=tdapi-test-$$
nspawn_pid=""
leader=""
cleanup() {
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    # SIGTERM: nspawn asks the container's systemd to power off; then by force.
    kill -TERM "$nspawn_pid"
    for _ in $(seq 1 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      [ -n "$leader" ] && kill -KILL "$leader"
      kill -KILL "$nspawn_pid"
      sleep 1
    fi
  fi
  umount "$R" 2>/dev/null || umount -l "$R" 2>/dev/null
  umount "$work/rw" 2>/dev/null || umount -l "$work/rw" 2>/dev/null
  if grep -qF " $work/" /proc/mounts; then
    echo "test-package-nspawn: $work still has mounts; left in place" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
# The overlay's writable half on a tmpfs (an upper directory may not itself be on overlayfs).
mkdir -p "$work/rw" "$R"
mount -t tmpfs -o size=2g,mode=0755 tmpfs "$work/rw" || die "tmpfs mount failed"
mkdir "$work/rw/upper" "$work/rw/wd"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/rw/upper,workdir=$work/rw/wd" "$R" ||
  die "overlay mount on $base failed"
# No network in the container: nothing waits for one to come online (nginx.service wants
# network-online.target).
ln -sf /dev/null "$R/etc/systemd/system/systemd-networkd-wait-online.service"
cp "$deb" "$R/root/"
debname=$(basename "$deb")

# Boot. nspawn's console (the boot messages) goes to a file; the container gets no network.
systemd-nspawn --keep-unit --register=no --private-network -b -D "$R" --machine="$machine" \
  --console=read-only >"$work/boot.log" 2>&1 &
nspawn_pid=$!
# The container's init: nspawn's child, pid 1 in its own namespace.
for _ in $(seq 1 100); do
  for c in $(pgrep -P "$nspawn_pid" 2>/dev/null); do
    [ "$(awk '/^NSpid:/{print $NF}' "/proc/$c/status" 2>/dev/null)" = 1 ] && leader=$c
  done
  [ -n "$leader" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$leader" ]; then
  tail -n 15 "$work/boot.log"
  skip "systemd-nspawn cannot boot a container on this machine (its output is above)"
fi
# ct [timeout] CMD...: runs CMD inside the container (all its namespaces), clean environment.
ct() {
  local limit=120
  case $1 in [0-9]*) limit=$1; shift ;; esac
  timeout -k 5 "$limit" nsenter -t "$leader" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
# Until systemd's own bus is up, systemctl cannot connect at all ("offline", or the error): ask
# again.
state=""
for _ in $(seq 1 180); do
  state=$(ct 180 systemctl is-system-running --wait 2>&1) && break
  case $state in offline | *"connect to bus"*) sleep 1 ;; *) break ;; esac
  kill -0 "$nspawn_pid" 2>/dev/null || break
done
if ! kill -0 "$nspawn_pid" 2>/dev/null; then
  tail -n 15 "$work/boot.log"
  skip "the container stopped while booting: systemd-nspawn -b does not work on this machine (its output is above)"
fi
case $state in
running) ;;
degraded) say "booted degraded: $(ct systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
*)
  tail -n 15 "$work/boot.log"
  ct systemctl list-jobs --no-pager 2>&1 | head -n 20
  die "the container's systemd did not finish booting within 180 s: '$state'" ;;
esac
say "booted under systemd $(ct systemctl --version | awk 'NR==1{print $2}') in $((EPOCHSECONDS - t0)) s"

failed=()
check() {  # check NAME: runs check_NAME, records the result; a failed check does not stop the rest
  local name=$1 t=$EPOCHSECONDS
  if "check_$name"; then
    say "ok   $name ($((EPOCHSECONDS - t)) s)"
  else
    say "FAIL $name ($((EPOCHSECONDS - t)) s)"
    failed+=("$name")
  fi
}
bad() { printf 'test-package-nspawn:   %s\n' "$*" >&2; return 1; }
code() { ct 30 curl -s -o /dev/null -w '%{http_code}' "$@"; }  # HTTP status through nginx
wait_code() {  # wait_code WANT URL: up to 20 s
  local got=""
  for _ in $(seq 1 100); do
    got=$(code "$2") && [ "$got" = "$1" ] && return 0
    sleep 0.2
  done
  bad "GET $2: $got (want $1)"
}
env_file=/etc/testdata-api/testdata-api.env
url=http://127.0.0.1:5000

# --- the install, with the site's port 5000 taken by another program --------------------------------
check_port_taken() {
  ct systemd-run --quiet --unit=port-holder python3 -m http.server --bind 127.0.0.1 5000 ||
    { bad "could not start the program that holds port 5000"; return 1; }
  for _ in $(seq 1 50); do [ "$(code "$url/")" = 200 ] && break; sleep 0.2; done
  ct 300 sh -c "cd /root && apt-get install -y -q -o APT::Install-Recommends=false ./$debname" >"$work/install.log" 2>&1
  local rc=$?
  ct systemctl stop port-holder
  [ "$rc" = 0 ] || { tail -n 20 "$work/install.log" >&2; bad "apt-get install ./$debname exited $rc"; return 1; }
  grep -q 'testdata-api: port 5000 .* is taken by another program: .*python3' "$work/install.log" ||
    { tail -n 20 "$work/install.log" >&2; bad "the install does not say that port 5000 is taken (by python3)"; return 1; }
  grep -q 'testdata-api: fix: ' "$work/install.log" || bad "the install does not say how to fix it" || return 1
  # Freed, then the fix the install names: nginx serves the API.
  ct sh -c 'nginx -t -q && systemctl reload nginx' || bad "nginx -t && systemctl reload nginx failed" || return 1
  wait_code 200 "$url/healthz"
}
installed() { [ "$(ct dpkg-query -W -f='${Status}' testdata-api 2>/dev/null)" = "install ok installed" ]; }

check_journal() {
  ct systemctl is-active --quiet testdata-api || bad "testdata-api.service is not active after the install" || return 1
  local lines
  lines=$(ct journalctl -u testdata-api -o cat --no-pager)
  printf '%s\n' "$lines" | grep -q '^{.*"event":"store_opened"' ||
    { printf '%s\n' "$lines" | tail -n 5 >&2; bad "no app line (event store_opened) in journalctl -u testdata-api"; return 1; }
  printf '%s\n' "$lines" | grep -q '^{.*"event":"listening"' || bad "no app line (event listening) in the journal" || return 1
  # The level is the journal's priority: info lines are priority 6.
  ct journalctl -u testdata-api -p info..info -o cat --no-pager | grep -q '"level":"info"' ||
    bad "the app's info lines are not at journal priority info"
}

# README's "Install the package" block, run as written (comments stripped) in /root, where the
# package sits at ./dist/ as `make deb` leaves it.
check_readme_install() {
  local block out token
  local -a lines
  block=$(awk '/^## Install the package/{f=1} f&&/^```sh/{b=1;next} b&&/^```/{exit} b' "$here/README.md")
  mapfile -t lines < <(printf '%s\n' "$block" | sed -E 's/[[:space:]]+#.*$//')
  [ "${#lines[@]}" = 5 ] || bad "README's install block has ${#lines[@]} commands (this check knows 5)" || return 1
  [ "${lines[0]}" = "make deb" ] || bad "README's install block does not start with make deb: ${lines[0]}" || return 1
  printf '%s\n' "$block" | head -n 1 | grep -qF "dist/$debname" ||
    bad "README says make deb makes another file than dist/$debname" || return 1
  [ "${lines[1]}" = "apt-get install ./dist/$debname" ] ||
    bad "README's install line is not apt-get install ./dist/$debname: ${lines[1]}" || return 1
  ct sh -c "mkdir -p /root/dist && cp /root/$debname /root/dist/"
  ct 300 sh -c "cd /root && ${lines[1]}" >"$work/readme-install.log" 2>&1 ||
    { tail -n 20 "$work/readme-install.log" >&2; bad "README's '${lines[1]}' failed"; return 1; }
  out=$(ct sh -c "cd /root && ${lines[2]}" 2>&1) || { bad "README's '${lines[2]}' failed: $out"; return 1; }
  token=$(printf '%s' "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])') ||
    { bad "README's keys create printed no token: $out"; return 1; }
  out=$(ct sh -c "${lines[3]} --no-pager" 2>&1)
  printf '%s\n' "$out" | grep -q 'Active: active (running)' ||
    { printf '%s\n' "$out" | head -n 5 >&2; bad "README's '${lines[3]}' does not say active (running)"; return 1; }
  case ${lines[4]} in *'$TOKEN'*) ;; *) bad "README's curl line does not use \$TOKEN: ${lines[4]}"; return 1 ;; esac
  out=$(ct 30 sh -c "TOKEN=$token; ${lines[4]}") || { bad "README's curl failed: $out"; return 1; }
  printf '%s' "$out" | python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d.get("status") != "success" or not isinstance(d.get("tests"), list))' ||
    bad "README's curl with the new key did not answer a listing: $out"
}

check_bad_setting() {
  local rc
  ct cp "$env_file" /root/env.good
  ct sh -c "echo THREADS=lots >>$env_file"
  ct 120 systemctl restart testdata-api >"$work/restart.out" 2>&1
  rc=$?
  local status
  status=$(ct systemctl status testdata-api --no-pager -l -n 20 2>&1)
  local restarts
  restarts=$(ct systemctl show -P NRestarts testdata-api)
  ct cp /root/env.good "$env_file"
  [ "$rc" != 0 ] || { bad "systemctl restart with THREADS=lots exited 0"; return 1; }
  printf '%s\n' "$status" | grep -q 'THREADS' ||
    { printf '%s\n' "$status" >&2; bad "systemctl status does not name THREADS"; return 1; }
  [ "$restarts" = 0 ] || bad "systemd restarted the app $restarts times with a bad setting (want 0)" || return 1
  ct 120 systemctl restart testdata-api || bad "systemctl restart with the setting fixed failed" || return 1
  wait_code 200 "$url/healthz"
}

check_readiness() {
  # No waiting in between: the request follows the moment restart returns. The unit allows 10
  # starts a minute (StartLimitBurst): the counter starts afresh, 8 restarts stay under it.
  local i got
  ct systemctl reset-failed testdata-api
  for i in $(seq 1 8); do
    got=$(ct 120 sh -c "systemctl restart testdata-api 2>&1 && curl -s -o /dev/null -w '%{http_code}' $url/healthz") ||
      { bad "restart $i failed ($got)"; return 1; }
    [ "$got" = 200 ] || { bad "restart $i: GET /healthz right after systemctl restart returned: $got (want 200)"; return 1; }
  done
}

check_watchdog() {
  local old new since
  ct systemctl reset-failed testdata-api
  since=$(ct date '+%Y-%m-%d %H:%M:%S')
  old=$(ct systemctl show -P MainPID testdata-api)
  [ -n "$old" ] && [ "$old" != 0 ] || bad "no main pid" || return 1
  ct kill -STOP "$old" || bad "kill -STOP $old failed" || return 1
  # WatchdogSec=30s in the unit: killed and restarted within about 30 s (RestartSec=1s).
  new=$old
  for _ in $(seq 1 90); do
    sleep 1
    new=$(ct systemctl show -P MainPID testdata-api)
    [ "$new" != "$old" ] && [ "$new" != 0 ] && ct systemctl is-active --quiet testdata-api && break
  done
  if [ "$new" = "$old" ] || [ "$new" = 0 ]; then
    ct kill -CONT "$old" 2>/dev/null
    bad "the app hung (SIGSTOP) for 90 s and systemd did not restart it (main pid $new)"
    return 1
  fi
  ct journalctl -u testdata-api --since "$since" --no-pager -o cat | grep -qi 'watchdog timeout' ||
    bad "restarted, but the journal does not say the watchdog did it" || return 1
  wait_code 200 "$url/healthz"
}

check_backup() {
  local owners n
  ct testdata-api backup >"$work/backup.out" 2>&1 || { cat "$work/backup.out" >&2; bad "testdata-api backup as root failed"; return 1; }
  owners=$(ct find /var/lib/testdata-api -user root)
  [ -z "$owners" ] || bad "root-owned files after root's backup: $owners" || return 1
  n=$(ct sh -c 'ls /var/lib/testdata-api/backups | wc -l')
  ct 120 systemctl start testdata-api-backup.service ||
    { ct journalctl -u testdata-api-backup -n 10 --no-pager >&2; bad "the timer's unit testdata-api-backup.service failed"; return 1; }
  [ "$(ct systemctl show -P Result testdata-api-backup.service)" = success ] || bad "backup unit result is not success" || return 1
  [ "$(ct sh -c 'ls /var/lib/testdata-api/backups | wc -l')" -gt "$n" ] ||
    bad "the timer's backup made no new backup in /var/lib/testdata-api/backups"
}

check_forwarding() {
  # The collector of ops/rsyslog (a second rsyslogd, TCP on 6514) in the container; the
  # system's rsyslog forwards to it once LOG_FORWARD is set and dpkg-reconfigure ran.
  ct mkdir -p /var/tmp/collector
  ct systemd-run --quiet --unit=collector -E COLLECTOR_DIR=/var/tmp/collector -E COLLECTOR_ADDRESS=127.0.0.1 \
    -E COLLECTOR_RELP_PORT=2514 -E COLLECTOR_TCP_PORT=6514 \
    rsyslogd -n -f /usr/share/testdata-api/ops/rsyslog/collector.conf -i /run/collector.pid ||
    bad "could not start the collector" || return 1
  ct sed -i 's|^LOG_FORWARD=.*|LOG_FORWARD=tcp://127.0.0.1:6514|' "$env_file"
  ct 300 dpkg-reconfigure testdata-api >"$work/reconfigure.log" 2>&1 ||
    { cat "$work/reconfigure.log" >&2; bad "dpkg-reconfigure testdata-api with LOG_FORWARD failed"; return 1; }
  ct test -e /etc/rsyslog.d/testdata-api.conf || bad "no rsyslog drop-in after dpkg-reconfigure with LOG_FORWARD" || return 1
  # lines STREAM: the collector's /healthz lines of the stream (app or access), all and distinct.
  lines() { ct sh -c "cat /var/tmp/collector/*/$1.log 2>/dev/null | grep -F /healthz | wc -l; cat /var/tmp/collector/*/$1.log 2>/dev/null | grep -F /healthz | sort -u | wc -l" | tr '\n' ' '; }
  wait_lines() {  # wait_lines N: up to 60 s until both streams hold N distinct /healthz lines
    local a c
    for _ in $(seq 1 120); do
      read -r _ a <<<"$(lines app)"
      read -r _ c <<<"$(lines access)"
      [ "$a" -ge "$1" ] && [ "$c" -ge "$1" ] && return 0
      sleep 0.5
    done
    bad "the collector has $a app and $c access /healthz lines (want $1 each)"
  }
  ct sh -c "for i in \$(seq 1 100); do curl -s -o /dev/null $url/healthz; done"
  wait_lines 100 || return 1
  local old new
  old=$(ct systemctl show -P MainPID rsyslog)
  ct kill -KILL "$old" || bad "could not kill rsyslogd (pid $old)" || return 1
  new=$old
  for _ in $(seq 1 50); do
    sleep 0.2
    new=$(ct systemctl show -P MainPID rsyslog)
    [ "$new" != "$old" ] && [ "$new" != 0 ] && break
  done
  [ "$new" != "$old" ] && [ "$new" != 0 ] || bad "systemd did not restart the killed rsyslogd" || return 1
  ct sh -c "for i in \$(seq 1 100); do curl -s -o /dev/null $url/healthz; done"
  wait_lines 200 || return 1
  sleep 2  # what the restarted forwarder resends arrives with the new lines, or just after
  local all uniq stream
  for stream in app access; do
    read -r all uniq <<<"$(lines "$stream")"
    say "     forwarder killed: $((all - uniq)) $stream lines resent ($all received, $uniq distinct)"
    # Its read positions are saved every 50 entries: a restart resends at most about that many.
    [ $((all - uniq)) -le 60 ] || bad "$((all - uniq)) $stream lines resent after the crash (want at most 60)" || return 1
  done
}

check_nodes() {
  local token k i got
  ct sh -c 'runuser -u postgres -- createuser testdata-api && runuser -u postgres -- createdb -O testdata-api tdapi' ||
    bad "could not create the PostgreSQL role and database" || return 1
  ct sed -i 's|^APP_NODES=.*|APP_NODES=2|; s|^DATABASE_URL=.*|DATABASE_URL=postgresql:///tdapi?host=/run/postgresql|' "$env_file"
  ct testdata-api config check >&2 || bad "config check refuses APP_NODES=2 on PostgreSQL" || return 1
  ct 300 dpkg-reconfigure testdata-api >"$work/reconfigure.log" 2>&1 ||
    { cat "$work/reconfigure.log" >&2; bad "dpkg-reconfigure testdata-api failed"; return 1; }
  for k in 1 2; do
    ct systemctl is-active --quiet "testdata-api@$k" || bad "testdata-api@$k is not active after dpkg-reconfigure" || return 1
  done
  ! ct systemctl is-active --quiet testdata-api || bad "testdata-api.service still runs beside the nodes" || return 1
  wait_code 200 "$url/healthz" || return 1
  token=$(ct testdata-api keys create --name nspawn --scope 'read:*' --scope 'write:*' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') || bad "keys create as root failed" || return 1
  got=$(ct curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' "$url/tests" \
    -d '{"test_id":"nspawn-1","patient_id":"p-ns","clinic_id":"c-ns","test_type":"blood","result":"ok"}')
  [ "$got" = 201 ] || bad "POST /tests on two nodes: $got (want 201)" || return 1
  for k in 1 2; do
    ct 120 systemctl stop "testdata-api@$k" || bad "systemctl stop testdata-api@$k failed" || return 1
    for i in $(seq 1 20); do
      got=$(ct curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url/tests/nspawn-1")
      [ "$got" = 200 ] || { bad "node $k stopped: GET $i of 20 answered $got (want 200)"; ct systemctl start "testdata-api@$k"; return 1; }
    done
    ct 120 systemctl start "testdata-api@$k" || bad "systemctl start testdata-api@$k failed" || return 1
    # nginx counts the stopped node out for fail_timeout (2 s, the upstream's setting) after
    # max_fails: the other node is stopped only once it counts again.
    sleep 3
  done
}

check port_taken
if installed; then
  check journal
  check readme_install
  check bad_setting
  check readiness
  check backup
  check watchdog
  check forwarding
  check nodes
else
  failed+=("(not installed: the other checks did not run)")
fi
say "ran in $((EPOCHSECONDS - t0)) s"
[ ${#failed[@]} = 0 ] || die "failed: ${failed[*]}"
say "all checks passed"
