#!/usr/bin/env bash
# Builds (once) the root that scripts/test-package-nspawn.sh boots with systemd-nspawn -b: the
# clean Debian 12 root of scripts/package-test-base.sh plus systemd as init, nginx, rsyslog,
# PostgreSQL (the two-node check) and the libraries the package links to, so that the booted
# container, which has no network, can `apt-get install ./testdata-api_….deb` offline. Cached at
# $1 (default /var/tmp/tdapi-nspawn-base); each test run puts an overlay on top. Needs root.
# Extra packages the package's Depends name later are added to the cache on the next run.
# Usage: scripts/nspawn-test-base.sh BASE PACKAGE_BASE [PACKAGE...]
# Exit: 0 ready, 77 no mirror reachable (the test skips), 1 anything else.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
base=${1:-/var/tmp/tdapi-nspawn-base}
pkgbase=${2:-/var/tmp/tdapi-package-base}
shift 2 2>/dev/null || shift $#
want=(systemd systemd-sysv dbus nginx-light curl python3 adduser procps rsyslog rsyslog-relp
  postgresql libfcgi0ldbl libcjson1 libsqlite3-0 libpq5 libssl3 libsystemd0 "$@")
ready=$base/.tdapi-nspawn-ready
missing=()
if [ -f "$ready" ]; then
  for p in "${want[@]}"; do grep -qx "$p" "$ready" || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && exit 0
fi
"$here/scripts/package-test-base.sh" "$pkgbase" || exit $?
proc_mounted=""
trap '[ -z "$proc_mounted" ] || umount -l "$proc_mounted" 2>/dev/null' EXIT
in_root() {  # in_root ROOT CMD...: with proc mounted, services kept from starting (policy-rc.d)
  local r=$1 rc=0; shift
  mount -t proc proc "$r/proc" || return 1
  proc_mounted=$r/proc
  chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
  umount "$r/proc" && proc_mounted=""
  return $rc
}
if [ -f "$ready" ]; then
  tmp=$base  # a few more packages into the cache in place
else
  tmp=$base.new.$$
  rm -rf "$tmp"
  cp -a "$pkgbase" "$tmp" || { rm -rf "$tmp"; echo "nspawn-test-base: copy of $pkgbase failed" >&2; exit 1; }
  rm -f "$tmp/.tdapi-base-ready"
  missing=("${want[@]}")
fi
log=$base.log
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 0755 "$tmp/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
if ! { in_root "$tmp" apt-get update -qq &&
  in_root "$tmp" apt-get install -y -q -o APT::Install-Recommends=false "${missing[@]}"; } >"$log" 2>&1; then
  tail -5 "$log" >&2
  [ "$tmp" = "$base" ] || rm -rf "$tmp"
  if grep -qiE 'Temporary failure|Could not resolve|unable to (fetch|connect)|Failed to fetch' "$log"; then
    echo "nspawn-test-base: cannot reach the mirror (log: $log)" >&2
    exit 77
  fi
  echo "nspawn-test-base: apt-get install ${missing[*]} failed (log: $log)" >&2
  exit 1
fi
rm -f "$tmp/usr/sbin/policy-rc.d"
# A machine of its own: systemd makes the machine id at the first boot of each overlay.
rm -f "$tmp/etc/machine-id" "$tmp/var/lib/dbus/machine-id"
{ cat "$ready" 2>/dev/null; printf '%s\n' "${missing[@]}"; } | sort -u >"$tmp/.tdapi-nspawn-ready.new"
mv "$tmp/.tdapi-nspawn-ready.new" "$tmp/.tdapi-nspawn-ready"
if [ "$tmp" != "$base" ]; then
  rm -rf "$base"
  mv "$tmp" "$base"
fi
rm -f "$log"
