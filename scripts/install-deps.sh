#!/usr/bin/env bash
# Installs the Debian packages testdata-api needs to build, run, test and benchmark; skips what
# is installed already. Needs root (or prints the sudo command to run instead).
set -euo pipefail

# A package, or package:command when any install providing that command will do (Node.js and
# npm may come from elsewhere than Debian).
packages=(
  g++ make cmake pkg-config           # build
  libfcgi-dev libcjson-dev libsqlite3-dev libgtest-dev
  libssl-dev                          # libcrypto: SHA-256 and CSPRNG for access keys
  libpq-dev                           # the PostgreSQL backend (--database-url)
  libsystemd-dev                      # sd_notify: readiness, status, watchdog under systemd
  nginx-light                         # the web server in front
  libnginx-mod-stream                 # its stream module: the per-address TCP cap (nginx.conf)
  sqlite3 curl jq python3             # tests, smoke test, debugging
  postgresql                          # tests: a private server per build (scripts/pg-test-server.sh)
  pgbouncer                           # tests: the pooler in front of it (pg-test-server.sh pooler-start)
  patroni etcd-server python3-etcd   # tests: the failover drill (Patroni 3 + etcd managing two servers)
  acl                                 # setfacl: as root, lets the service user reach DATA_DIR
  clang libclang-rt-14-dev            # libFuzzer + sanitizers for the fuzz targets
  nodejs:node npm:npm                 # the OpenAPI linter and newman (npm packages)
  wrk                                 # make bench
  util-linux-extra:fincore            # make bench: the scale case's share of the file in the OS cache
  linux-perf:perf                     # make bench BENCH_PROFILE=1 (perf record on the app)
  build-essential debhelper dpkg-dev  # make deb (dpkg-buildpackage checks build-essential)
  lintian                             # the package's lintian check
  debootstrap                         # the package's install test: a clean Debian 12 root
  systemd-container                   # systemd-nspawn: the package test under a real systemd
  systemd                             # systemd-analyze verify/security on the units
  rsyslog rsyslog-relp logrotate      # LOG_FORWARD and the log collector (ops/rsyslog), rotation
  prometheus                          # make observe; promtool: rule and config tests
  ${EXTRA_PACKAGES:-}
)

missing=()
for entry in "${packages[@]}"; do
  p=${entry%%:*}
  if [ "$entry" != "$p" ] && command -v "${entry#*:}" >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing Debian packages: ${missing[*]}" >&2
  echo "install-deps: run this once, then try again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages such as nginx, postgresql, etcd-server and patroni start a system service on install;
# this project runs its own nginx, and the tests their own PostgreSQL servers, etcd and Patroni
# (as an unprivileged user, in /tmp, on loopback). policy-rc.d is Debian's switch for "do not
# start services now" (only added if absent).
added_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
# PostgreSQL clusters already running (the system's own, say): left alone. Any other that is
# running after the install (a policy-rc.d that allows starts) is stopped again below.
online_clusters() { command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1, $2}' || true; }
clusters_before=$(online_clusters)

if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then apt-get update -qq; fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/install-deps.log 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/install-deps.log 2>&1 || {
    tail -20 /tmp/install-deps.log >&2
    echo "install-deps: apt-get install failed (full log: /tmp/install-deps.log)" >&2
    exit 1
  }
fi
# Installing postgresql creates the system cluster (when Debian's createcluster.conf says so) and
# may have started it: stop what this install started. Nothing here needs that cluster, or any.
online_clusters | while read -r version cluster; do
  if ! grep -qxF "$version $cluster" <<<"$clusters_before"; then
    echo "install-deps: stopping PostgreSQL cluster $version/$cluster (started by its install)" >&2
    pg_ctlcluster "$version" "$cluster" stop || true
  fi
done
