#!/usr/bin/env bash
# Tests of the Debian package (CTest's package_* tests; README "Install").
#
# DEB is the package file, or a directory holding exactly one testdata-api_*.deb.
#   scripts/test-package.sh lint DEB      lintian: no errors (warnings are printed)
#   scripts/test-package.sh units DEB     systemd-analyze verify on every unit the package
#                                         installs (silent = pass); prints the security score
#   scripts/test-package.sh install DEB   in a clean Debian 12 root (debootstrap minbase, cached
#                                         in PACKAGE_TEST_BASE, default /var/tmp/tdapi-package-base;
#                                         each run on an overlay): apt-get install the package,
#                                         start the app as its unit would (user, flags, environment
#                                         file, limits), start the installed nginx with the
#                                         installed site, run scripts/smoke.sh through it, upgrade
#                                         to a newer version, check the data survived and it
#                                         serves again, purge, check what is left.
# Exit 77 (CTest SKIP_RETURN_CODE): install needs root and a reachable Debian mirror.
# PACKAGE_TEST_PORT: the port nginx listens on in the install test (default: a free one).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
what=${1:?usage: test-package.sh lint|units|install DEB|DIR}
deb=${2:?usage: test-package.sh lint|units|install DEB|DIR}
# A directory: the one testdata-api_*.deb in it.
if [ -d "$deb" ]; then
  debs=("$deb"/testdata-api_*.deb)
  [ "${#debs[@]}" = 1 ] || { echo "test-package: want one testdata-api_*.deb in $deb, found ${#debs[@]}" >&2; exit 1; }
  deb=${debs[0]}
fi
[ -f "$deb" ] || { echo "test-package: no package at $deb (package_build failed?)" >&2; exit 1; }
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")

say() { printf 'test-package: %s\n' "$*"; }
die() { printf 'test-package: FAIL: %s\n' "$*" >&2; exit 1; }

case $what in
lint)
  # Errors fail; warnings and info are shown (README lists the expected ones: none).
  rc=0
  out=$(lintian --fail-on error --display-info "$deb" 2>&1) || rc=$?
  out=$(printf '%s\n' "$out" | grep -v '^running with root privileges' || true)
  [ -z "$out" ] || printf '%s\n' "$out"
  [ "$rc" = 0 ] || die "lintian reports errors (exit $rc)"
  say "lintian: no errors"
  exit 0 ;;
units)
  root=$(mktemp -d /tmp/tdapi-pkgunits.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  dpkg-deb -x "$deb" "$root/pkg"
  mkdir "$root/units"
  units=("$root"/pkg/lib/systemd/system/*)
  [ -e "${units[0]}" ] || die "the package installs no systemd unit"
  # The package's own paths point into the unpacked package, so verify finds its executables
  # without the package being installed; everything else (/bin/sh, ...) is the host's.
  for u in "${units[@]}"; do
    sed -e "s#/usr/bin/testdata-api#$root/pkg/usr/bin/testdata-api#g" \
        -e "s#/usr/share/testdata-api/#$root/pkg/usr/share/testdata-api/#g" \
        -e "s#/usr/lib/testdata-api/#$root/pkg/usr/lib/testdata-api/#g" "$u" >"$root/units/$(basename "$u")"
  done
  fails=0
  for u in "$root"/units/*; do
    # verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
    # Documentation=man:… pages are looked up in the package's own man directory.
    out=$(cd "$root/units" && MANPATH="$root/pkg/usr/share/man" systemd-analyze verify "$u" 2>&1) && [ -z "$out" ] ||
      { printf '%s\n' "$out"; echo "FAIL systemd-analyze verify $(basename "$u")"; fails=$((fails + 1)); continue; }
    echo "ok   systemd-analyze verify $(basename "$u")"
  done
  # Two nodes from the template (APP_NODES=2): each instance verifies, on its own socket.
  [ -e "$root/units/testdata-api@.service" ] || die "the package installs no node template testdata-api@.service"
  grep -qx 'Environment=.* SOCKET=/run/testdata-api/app-%i.sock TDAPI_NODE=%i' "$root/units/testdata-api@.service" ||
    die "testdata-api@.service does not put node N on /run/testdata-api/app-N.sock"
  for k in 1 2; do
    cp "$root/units/testdata-api@.service" "$root/units/testdata-api@$k.service"
    out=$(cd "$root/units" && MANPATH="$root/pkg/usr/share/man" systemd-analyze verify "$root/units/testdata-api@$k.service" 2>&1) && [ -z "$out" ] ||
      { printf '%s\n' "$out"; echo "FAIL systemd-analyze verify testdata-api@$k.service"; fails=$((fails + 1)); continue; }
    echo "ok   systemd-analyze verify testdata-api@$k.service (node $k from the template)"
  done
  score=$(systemd-analyze security --offline=true "$root/units/testdata-api.service" 2>&1 | grep 'Overall exposure' || true)
  say "${score:-systemd-analyze security gave no score}"
  [ "$fails" = 0 ] || die "$fails unit(s) do not verify"
  exit 0 ;;
install) ;;
*) die "unknown test $what" ;;
esac

# --- install, upgrade, purge in a clean Debian 12 root ---------------------------------------------
if [ "$(id -u)" != 0 ]; then
  echo "test-package: SKIP: the install test needs root (chroot, mounts)"; exit 77
fi
command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/install-deps.sh installs it)"
base=${PACKAGE_TEST_BASE:-/var/tmp/tdapi-package-base}
t0=$EPOCHSECONDS
set +e
"$here/scripts/package-test-base.sh" "$base"
rc=$?
set -e
if [ "$rc" = 77 ]; then echo "test-package: SKIP: no Debian mirror reachable for debootstrap"; exit 77; fi
[ "$rc" = 0 ] || die "could not build the clean Debian 12 root in $base"
say "clean root ready in $((EPOCHSECONDS - t0)) s ($base)"

work=$(mktemp -d /var/tmp/tdapi-pkgtest.XXXXXX)
R=$work/root
app_pid=""
cleanup() {
  set +e
  # Whatever runs inside this root was started here: stop it by pid.
  for sig in TERM KILL; do
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && kill -"$sig" "${p#/proc/}" 2>/dev/null
    done
    [ "$sig" = KILL ] || sleep 1
  done
  for m in dev/pts dev proc; do umount -l "$R/$m" 2>/dev/null; done
  umount -l "$R" 2>/dev/null
  umount -l "$work/rw" 2>/dev/null
  # Never remove through a mount that is still there (a bound /dev).
  if grep -qF " $work/" /proc/mounts; then
    echo "test-package: $work still has mounts; left in place" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
# The overlay's writable half on a tmpfs: an upper directory may not be on overlayfs itself
# (as /var/tmp is when this runs inside a container or chroot with an overlay root). Where no
# overlay can be mounted, a copy of the base serves.
mkdir -p "$work/rw" "$R"
mount -t tmpfs -o size=4g,mode=0755 tmpfs "$work/rw" || die "tmpfs mount failed"
mkdir "$work/rw/upper" "$work/rw/wd"
if ! mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/rw/upper,workdir=$work/rw/wd" "$R" 2>/dev/null; then
  say "no overlay mount here: copying the clean root instead"
  cp -a "$base/." "$R/" || die "could not copy the clean root"
fi
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
mount -t devpts devpts "$R/dev/pts" 2>/dev/null || true
cp /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
# No service may start inside (nginx's own postinst would start it on port 80): Debian's switch.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 0755 "$R/usr/sbin/policy-rc.d"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
apt_in_root() {
  in_root DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Options::=--force-confold \
    -o APT::Install-Recommends=false -y -q "$@" >>"$work/apt.log" 2>&1 ||
    { tail -30 "$work/apt.log" >&2; die "apt-get $* failed in the clean root"; }
}

# The newer version: the same package with its version raised (dpkg-deb: unpack, edit, repack).
version=$(dpkg-deb -f "$deb" Version)
next=$version+pkgtest1
mkdir "$work/v2"
dpkg-deb -R "$deb" "$work/v2/pkg"
sed -i "s/^Version: .*/Version: $next/" "$work/v2/pkg/DEBIAN/control"
dpkg-deb -b --root-owner-group "$work/v2/pkg" "$R/tmp/testdata-api_${next}.deb" >/dev/null
cp "$deb" "$R/tmp/testdata-api_${version}.deb"

app_log() { tail -n 20 "$work/app.stderr" 2>/dev/null || true; }  # the journal's part
show_logs() {
  echo "--- app log" >&2; app_log >&2
  echo "--- nginx error logs" >&2
  tail -n 10 "$R/var/log/nginx/error.log" "$R/var/log/nginx/testdata-api.error.log" >&2 2>/dev/null || true
}
fail() { show_logs; die "$*"; }

# The unit's settings, as systemd reads them: ExecStart (its $$ is a $), user, group, limits,
# directories; the environment file's NAME=value lines.
unit=$R/lib/systemd/system/testdata-api.service
unit_get() {  # unit_get KEY: the last value of KEY (continuation lines joined)
  python3 - "$unit" "$1" <<'EOF'
import sys
lines, cur = [], ""
for raw in open(sys.argv[1], encoding="utf-8"):
    line = raw.rstrip("\n")
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    lines.append(cur + line)
    cur = ""
value = None
for line in lines:
    if line.startswith(sys.argv[2] + "="):
        value = line.split("=", 1)[1]
if value is None:
    sys.exit(1)
print(value)
EOF
}
start_app_as_unit() {
  local user group nofile umask_ env_file rtdir rtmode cmd
  user=$(unit_get User) group=$(unit_get Group) nofile=$(unit_get LimitNOFILE)
  umask_=$(unit_get UMask) env_file=$(unit_get EnvironmentFile)
  # Without CAP_SYS_RESOURCE (a container) the hard limit cannot rise: as far as it goes.
  hard=$(ulimit -Hn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ] && ! capsh --has-p=cap_sys_resource 2>/dev/null; then
    say "LimitNOFILE=$nofile is over this host's hard limit $hard (no CAP_SYS_RESOURCE): using $hard"
    nofile=$hard
  fi
  rtdir=$(unit_get RuntimeDirectory) rtmode=$(unit_get RuntimeDirectoryMode)
  # systemd creates RuntimeDirectory= (and StateDirectory=, which postinst made already).
  install -d -m "$rtmode" "$R/run/$rtdir"
  in_root chown "$user:$group" "/run/$rtdir"
  for d in $(unit_get StateDirectory); do
    [ -d "$R/var/lib/$d" ] || fail "StateDirectory /var/lib/$d is missing"
  done
  # ExecStart as systemd splits it (shell-like quoting), with $$ turned into $.
  mapfile -d '' -t cmd < <(python3 - "$(unit_get ExecStart)" <<'EOF'
import shlex, sys
for arg in shlex.split(sys.argv[1].replace("$$", "$")):
    sys.stdout.write(arg + "\0")
EOF
  )
  # The environment as systemd builds it: RUNTIME_DIRECTORY, the unit's Environment= (one line of
  # NAME=value words), then the environment file's lines on top.
  read -r -a envs <<<"RUNTIME_DIRECTORY=/run/$rtdir $(unit_get Environment)"
  mapfile -t -O "${#envs[@]}" envs < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$R$env_file" | sed -E "s/^([^=]*)=[\"']?(.*[^\"'])?[\"']?$/\1=\2/")
  (
    umask "$umask_"
    exec chroot "$R" prlimit --nofile="$nofile:$nofile" \
      setpriv --reuid="$user" --regid="$group" --init-groups --inh-caps=-all \
      /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${envs[@]}" "${cmd[@]}"
  ) >>"$work/app.stderr" 2>&1 &
  app_pid=$!
  for _ in $(seq 1 600); do
    [ -S "$R/run/testdata-api/app.sock" ] && break
    kill -0 "$app_pid" 2>/dev/null || { cat "$work/app.stderr" >&2; fail "the app exited at start"; }
    sleep 0.1
  done
  [ -S "$R/run/testdata-api/app.sock" ] || fail "the app's socket did not appear within 60 s"
  [ "$(in_root stat -c %a:%U:%G /run/testdata-api/app.sock)" = "660:testdata-api:testdata-api" ] ||
    fail "socket mode/owner: $(in_root stat -c %a:%U:%G /run/testdata-api/app.sock) (want 660:testdata-api:testdata-api)"
  say "app started as the unit would (pid $app_pid, user $user, LimitNOFILE=$nofile)"
}
stop_app() {  # as systemctl stop: SIGTERM, the exit status must be 0
  local rc=0
  kill -TERM "$app_pid"
  wait "$app_pid" || rc=$?
  [ "$rc" = 0 ] || fail "the app exited $rc on SIGTERM (want 0)"
  app_pid=""
  say "app stopped cleanly (exit 0)"
}
port=${PACKAGE_TEST_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
wait_http() {
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return 0
    sleep 0.1
  done
  fail "nginx did not answer on 127.0.0.1:$port within 30 s"
}
api() {  # api EXPECTED_STATUS curl-args...: prints the body
  local want=$1 out; shift
  out=$(curl -sS -w '\n%{http_code}' -H "Authorization: Bearer $token" "$@") || fail "curl $*"
  [ "${out##*$'\n'}" = "$want" ] || fail "curl $*: got ${out##*$'\n'} ${out%$'\n'*} (want $want)"
  printf '%s\n' "${out%$'\n'*}"
}

# 1. Install from the package file: apt pulls its dependencies from the mirror (lists fresh:
# the cached root may be old).
t1=$EPOCHSECONDS
apt_in_root update
apt_in_root install "/tmp/testdata-api_${version}.deb"
say "installed $version with its dependencies in $((EPOCHSECONDS - t1)) s"
[ "$(in_root dpkg-query -W -f='${Status}' testdata-api)" = "install ok installed" ] || fail "not installed"
in_root id testdata-api >/dev/null || fail "no user testdata-api"
[ "$(in_root testdata-api --version)" = "testdata-api $version" ] || fail "--version: $(in_root testdata-api --version) (want $version)"
in_root id -nG www-data | tr ' ' '\n' | grep -qx testdata-api || fail "www-data is not in group testdata-api"
[ "$(in_root stat -c %a:%U /var/lib/testdata-api)" = "700:testdata-api" ] || fail "/var/lib/testdata-api: $(in_root stat -c %a:%U /var/lib/testdata-api)"
[ "$(in_root stat -c %a:%U /etc/testdata-api/testdata-api.env)" = "600:root" ] || fail "env file: $(in_root stat -c %a:%U /etc/testdata-api/testdata-api.env)"
for f in /var/log/nginx/testdata-api.access.log /var/log/nginx/testdata-api.error.log; do
  [ "$(in_root stat -c %a:%U:%G "$f")" = "640:www-data:adm" ] || fail "$f: $(in_root stat -c %a:%U:%G "$f") (want 640:www-data:adm, as nginx's own logs)"
done
[ "$(readlink "$R/etc/nginx/sites-enabled/testdata-api")" = ../sites-available/testdata-api ] || fail "the nginx site is not enabled"
in_root dpkg-query -W -f='${Conffiles}\n' testdata-api | grep -q /etc/testdata-api/testdata-api.env || fail "env file is not a conffile"
# The operator's part: Debian's default site (port 80) off, our site on the test's port. A
# change to a conffile that the upgrade below must keep.
rm -f "$R/etc/nginx/sites-enabled/default"
sed -i "s/listen 127.0.0.1:5000;/listen 127.0.0.1:$port;/" "$R/etc/nginx/sites-available/testdata-api"
grep -q "listen 127.0.0.1:$port;" "$R/etc/nginx/sites-available/testdata-api" || fail "no listen line to change in the site"
in_root nginx -t -q || fail "nginx -t fails with the installed site"

# 2. Start the app as its unit would, nginx as installed; a key; the smoke test through nginx.
start_app_as_unit
in_root nginx || fail "nginx did not start"
wait_http
token=$(in_root runuser -u testdata-api -- testdata-api keys create --db /var/lib/testdata-api/testdata.db \
  --name package-test --scope 'read:*' --scope 'write:*' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') ||
  fail "keys create failed"
# Administration as root, as README shows it: the package's settings, the service user's rights.
in_root testdata-api config check >/dev/null || fail "config check fails on the installed env file"
in_root testdata-api keys list | grep -q '"name":"package-test"' || fail "keys list as root (no --db) does not list the key"
in_root testdata-api backup >/dev/null || fail "backup as root failed"
owners=$(in_root find /var/lib/testdata-api -user root)
[ -z "$owners" ] || fail "root-owned files after root's backup: $owners"
in_root runuser -u testdata-api -- env BACKUP_DIR=/var/lib/testdata-api/backups testdata-api backup \
  --db /var/lib/testdata-api/testdata.db >/dev/null || fail "the service user's backup (the timer's) fails after root's"
say "as root: config check, keys list and backup use the package's settings; no root-owned file"
BASE_URL=http://127.0.0.1:$port TOKEN=$token "$here/scripts/smoke.sh" || fail "smoke test failed on $version"
record='{"test_id":"pkg-upgrade-1","patient_id":"p-pkg","clinic_id":"c-pkg","test_type":"blood","result":"ok"}'
api 201 -X POST "http://127.0.0.1:$port/tests" -H 'Content-Type: application/json' -d "$record" >/dev/null
api 200 "http://127.0.0.1:$port/openapi.yaml" >/dev/null
# nginx's access log of the site: JSON lines, no query strings (they can carry patient ids).
grep -q '"path":"/tests"' "$R/var/log/nginx/testdata-api.access.log" || fail "no JSON access log line"
! grep -q 'clinic_id=\|p-pkg' "$R/var/log/nginx/testdata-api.access.log" || fail "the access log carries a query string or patient id"
grep -q '"event":"store_opened"' "$work/app.stderr" || fail "no app log line on stderr (the journal)"
! grep -q 'p-pkg' "$work/app.stderr" || fail "the app log carries a patient id"

# Log forwarding: LOG_FORWARD in the env file, then dpkg-reconfigure makes the rsyslog drop-in
# (rsyslogd accepts it); without LOG_FORWARD it is removed again.
apt_in_root install rsyslog rsyslog-relp
sed -i 's|^LOG_FORWARD=.*|LOG_FORWARD=relp://collector.invalid:2514|' "$R/etc/testdata-api/testdata-api.env"
in_root testdata-api config check >/dev/null || fail "config check refuses LOG_FORWARD in the env file"
in_root dpkg-reconfigure testdata-api || fail "dpkg-reconfigure with LOG_FORWARD failed"
grep -q 'module(load="imjournal"' "$R/etc/rsyslog.d/testdata-api.conf" 2>/dev/null ||
  fail "no rsyslog drop-in reading the journal after dpkg-reconfigure with LOG_FORWARD"
grep -q 'target="collector.invalid" port="2514"' "$R/etc/rsyslog.d/testdata-api.conf" ||
  fail "the drop-in does not forward to LOG_FORWARD"
in_root rsyslogd -N1 >/dev/null 2>&1 || fail "rsyslogd refuses the drop-in: $(in_root rsyslogd -N1 2>&1 | tail -n 3)"
sed -i 's|^LOG_FORWARD=.*|LOG_FORWARD=|' "$R/etc/testdata-api/testdata-api.env"
in_root dpkg-reconfigure testdata-api || fail "dpkg-reconfigure without LOG_FORWARD failed"
[ ! -e "$R/etc/rsyslog.d/testdata-api.conf" ] || fail "the drop-in is left without LOG_FORWARD"
sed -i 's|^LOG_FORWARD=.*|LOG_FORWARD=tcp://127.0.0.1:6514|' "$R/etc/testdata-api/testdata-api.env"
in_root dpkg-reconfigure testdata-api || fail "dpkg-reconfigure with LOG_FORWARD failed"
[ -e "$R/etc/rsyslog.d/testdata-api.conf" ] || fail "no drop-in with LOG_FORWARD=tcp://"
say "LOG_FORWARD: dpkg-reconfigure renders the rsyslog drop-in (rsyslogd -N1 accepts it) and removes it"

# Nodes: APP_NODES=2 (with DATABASE_URL, which config check demands for it), then
# dpkg-reconfigure: nginx's upstream lists both nodes' sockets (nginx -t accepts the site),
# testdata-api@1 and @2 are enabled in place of testdata-api.service; back to one node after.
wants=$R/etc/systemd/system/multi-user.target.wants
apt_in_root install systemd  # systemctl enables units offline, in the root
sed -i 's|^APP_NODES=.*|APP_NODES=2|; s|^DATABASE_URL=.*|DATABASE_URL=postgresql://tdapi@db.invalid/tdapi|' \
  "$R/etc/testdata-api/testdata-api.env"
in_root testdata-api config check >/dev/null || fail "config check refuses APP_NODES=2 with DATABASE_URL"
in_root dpkg-reconfigure testdata-api || fail "dpkg-reconfigure with APP_NODES=2 failed"
[ "$(grep -c '^server unix:/run/testdata-api/app-[12].sock ' "$R/etc/testdata-api/nginx-upstream.conf")" = 2 ] ||
  fail "nginx's upstream does not list two nodes: $(cat "$R/etc/testdata-api/nginx-upstream.conf")"
in_root nginx -t -q || fail "nginx -t fails with two nodes"
in_root sh -c 'command -v systemctl' >/dev/null || fail "systemd did not install in the root"
if true; then
  [ -L "$wants/testdata-api@1.service" ] && [ -L "$wants/testdata-api@2.service" ] ||
    fail "testdata-api@1 and @2 are not enabled: $(ls "$wants")"
  [ ! -e "$wants/testdata-api.service" ] || fail "testdata-api.service is still enabled beside the nodes"
fi
sed -i 's|^APP_NODES=.*|APP_NODES=|; s|^DATABASE_URL=.*|DATABASE_URL=|' "$R/etc/testdata-api/testdata-api.env"
in_root dpkg-reconfigure testdata-api || fail "dpkg-reconfigure back to one node failed"
grep -q '^server unix:/run/testdata-api/app.sock ' "$R/etc/testdata-api/nginx-upstream.conf" ||
  fail "one node: the upstream is $(cat "$R/etc/testdata-api/nginx-upstream.conf")"
if true; then
  [ ! -e "$wants/testdata-api@1.service" ] && [ -L "$wants/testdata-api.service" ] ||
    fail "back to one node: $(ls "$wants")"
fi
say "APP_NODES: dpkg-reconfigure renders the upstream and enables the node units, and back"

# 3. Upgrade: as systemd would (stop, new files, start again); data, key and conffile kept.
stop_app
t2=$EPOCHSECONDS
apt_in_root install "/tmp/testdata-api_${next}.deb"
[ "$(in_root dpkg-query -W -f='${Version}' testdata-api)" = "$next" ] || fail "upgrade to $next did not happen"
say "upgraded to $next in $((EPOCHSECONDS - t2)) s"
grep -q "listen 127.0.0.1:$port;" "$R/etc/nginx/sites-available/testdata-api" || fail "the upgrade replaced the changed site (a conffile)"
[ -L "$R/etc/nginx/sites-enabled/testdata-api" ] || fail "the upgrade disabled the site"
start_app_as_unit
in_root nginx -s reload || fail "nginx reload failed"
body=$(api 200 "http://127.0.0.1:$port/tests/pkg-upgrade-1")
[[ $body == *'"test_id":"pkg-upgrade-1"'* ]] || fail "after the upgrade: $body"
BASE_URL=http://127.0.0.1:$port TOKEN=$token "$here/scripts/smoke.sh" || fail "smoke test failed on $next"
say "after the upgrade: the record and the key are there, the smoke test passes"
stop_app
in_root nginx -s quit || true
for _ in $(seq 1 100); do [ -e "$R/run/nginx.pid" ] || break; sleep 0.1; done

# 4. Remove (not purge): service files go, the site is disabled, data and settings stay; a
# reinstall enables the site again.
apt_in_root remove testdata-api
[ ! -e "$R/usr/bin/testdata-api" ] || fail "remove left the binary"
[ ! -L "$R/etc/nginx/sites-enabled/testdata-api" ] || fail "remove left the site enabled"
[ -e "$R/var/lib/testdata-api/testdata.db" ] || fail "remove deleted the database"
[ -e "$R/etc/testdata-api/testdata-api.env" ] || fail "remove deleted the settings"
in_root nginx -t -q || fail "nginx -t fails after remove"
apt_in_root install "/tmp/testdata-api_${next}.deb"
[ -L "$R/etc/nginx/sites-enabled/testdata-api" ] || fail "a reinstall did not enable the site again"
say "remove kept data and settings and disabled the site; a reinstall enabled it again"

# 5. Purge: the package's files, configuration and data go; the system user stays (README).
apt_in_root purge testdata-api
in_root dpkg-query -W -f='${Status}' testdata-api 2>/dev/null | grep -q installed && fail "still installed after purge"
for p in /usr/bin/testdata-api /lib/systemd/system/testdata-api.service /etc/testdata-api \
    /var/lib/testdata-api /etc/nginx/sites-available/testdata-api /etc/nginx/sites-enabled/testdata-api \
    /usr/share/testdata-api /var/log/nginx/testdata-api.access.log /etc/rsyslog.d/testdata-api.conf; do
  [ ! -e "$R$p" ] && [ ! -L "$R$p" ] || fail "$p is left after purge"
done
in_root id testdata-api >/dev/null || fail "the system user was removed (it is kept, README)"
! in_root id -nG www-data | tr ' ' '\n' | grep -qx testdata-api || fail "www-data is still in group testdata-api"
in_root nginx -t -q || fail "nginx -t fails after the purge"
say "purged: files, configuration and data gone; user kept; nginx still valid"
say "passed in $((EPOCHSECONDS - t0)) s"
