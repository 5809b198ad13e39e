#!/usr/bin/env bash
# Builds the Debian package with dpkg-buildpackage + debhelper from a copy of the sources (the
# checkout stays clean) and puts testdata-api_<version>_<arch>.deb into OUTDIR (default dist/).
# The version is debian/changelog's. JOBS (default 2) parallel compile jobs.
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
if ! DEB_BUILD_OPTIONS="parallel=${JOBS:-2} ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  cp "$work/build.log" "$out/build.log"
  echo "build-deb: dpkg-buildpackage failed (log: $out/build.log)" >&2
  exit 1
fi
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
cp "$work/testdata-api_${version}_${arch}.deb" "$out/"
echo "$out/testdata-api_${version}_${arch}.deb"
