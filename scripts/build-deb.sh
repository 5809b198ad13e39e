#!/usr/bin/env bash
# Builds the Debian package with dpkg-buildpackage + debhelper from a copy of the sources (the
# checkout stays clean) and puts testdata-api_<version>_<arch>.deb, and its debug symbols
# testdata-api-dbgsym_<version>_<arch>.deb, into OUTDIR (default dist/). The version is
# debian/changelog's. JOBS (default 2) parallel compile jobs. What the build needs is
# debian/control's Build-Depends alone: missing ones are installed (apt-get build-dep, as root)
# or named with the command to run.
# Usage: scripts/build-deb.sh [OUTDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tdapi-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
# What the package is built from; nothing else of the checkout (build trees, var/, .git).
mkdir "$work/src"
(cd "$here" && tar -cf - CMakeLists.txt src debian ops nginx.conf docs README.md) | tar -xf - -C "$work/src"
cd "$work/src"
# Build-Depends (and build-essential), nothing else: not the test and benchmark toolchain.
if ! command -v dpkg-checkbuilddeps >/dev/null 2>&1 || ! dpkg-checkbuilddeps >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "build-deb: the package's Build-Depends are missing; install them with:" >&2
    echo "  sudo apt-get install --no-install-recommends dpkg-dev && sudo apt-get build-dep ./" >&2
    exit 1
  fi
  command -v dpkg-checkbuilddeps >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dpkg-dev >&2
  DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q --no-install-recommends ./ >&2
fi
if ! DEB_BUILD_OPTIONS="parallel=${JOBS:-2} ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  cp "$work/build.log" "$out/build.log"
  echo "build-deb: dpkg-buildpackage failed (log: $out/build.log)" >&2
  exit 1
fi
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
# The debug symbols too (debhelper's automatic -dbgsym package): what a core dump of the
# installed binary needs.
for f in "$work/testdata-api-dbgsym_${version}_${arch}".*deb; do
  [ ! -e "$f" ] || cp "$f" "$out/"
done
cp "$work/testdata-api_${version}_${arch}.deb" "$out/"
echo "$out/testdata-api_${version}_${arch}.deb"
