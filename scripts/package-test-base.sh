#!/usr/bin/env bash
# Builds (once) the clean Debian 12 root that scripts/test-package.sh installs the package into:
# debootstrap --variant=minbase bookworm from the mirror this host's apt uses, with the host's apt
# sources (so security and point-release updates are seen as on a real machine), apt lists
# fetched. Cached at $1 (default /var/tmp/tdapi-package-base); each test run puts an overlay on
# top, so the cache stays clean. Needs root and debootstrap.
# Exit: 0 ready, 77 no mirror reachable (the test skips), 1 anything else.
set -uo pipefail
base=${1:-/var/tmp/tdapi-package-base}
[ -f "$base/.tdapi-base-ready" ] && exit 0
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { echo "package-test-base: no Debian mirror in this host's apt sources" >&2; exit 77; }
tmp=$base.new.$$
rm -rf "$tmp"
mkdir -p "$tmp"
log=$tmp.log
if ! debootstrap --variant=minbase bookworm "$tmp" "$mirror" >"$log" 2>&1; then
  tail -5 "$log" >&2
  rm -rf "$tmp"
  if grep -qiE 'Failed getting release file|Couldn.t download|Temporary failure|Could not resolve|unable to (fetch|connect)' "$log"; then
    echo "package-test-base: debootstrap cannot reach the mirror $mirror (log: $log)" >&2
    exit 77
  fi
  echo "package-test-base: debootstrap failed (log: $log)" >&2
  exit 1
fi
# The host's apt sources and trusted CAs (a TLS-inspecting proxy's CA, say), as a machine
# provisioned on this network would have them.
rm -f "$tmp/etc/apt/sources.list"
cp -a /etc/apt/sources.list "$tmp/etc/apt/" 2>/dev/null || true
cp -a /etc/apt/sources.list.d/. "$tmp/etc/apt/sources.list.d/" 2>/dev/null || true
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$tmp/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$tmp/usr/local/share/ca-certificates/"
fi
cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
if ! chroot "$tmp" apt-get update -qq >>"$log" 2>&1; then
  tail -5 "$log" >&2
  rm -rf "$tmp"
  echo "package-test-base: apt-get update in the new root failed (log: $log)" >&2
  exit 77
fi
touch "$tmp/.tdapi-base-ready"
rm -rf "$base"
mv "$tmp" "$base"
rm -f "$log"
