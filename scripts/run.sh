#!/usr/bin/env bash
# make run: prepares DATA_DIR and the configs (ops/render-config.py), then execs the supervisor
# (scripts/dev_supervisor.py: nginx, the app node(s), rsyslogd with LOG_FORWARD; Ctrl-C or
# SIGTERM stops them). Settings: the environment, checked and defaulted by `testdata-api config
# resolve`. What it does and why: docs/development.md, "make run".
set -euo pipefail
umask 077

here=$(cd "$(dirname "$0")/.." && pwd)
sup=$here/scripts/dev_supervisor.py
py=$(PATH=/usr/bin:/bin:$PATH command -v python3)  # the system's first: the service user runs it too
DATA_DIR=${DATA_DIR:-./var}
export APP_BIN=${APP_BIN:-$here/build/testdata-api}
export NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$APP_BIN" ] || { echo "run.sh: $APP_BIN is missing; run 'make build' first" >&2; exit 1; }
[ -x "$NGINX_BIN" ] || { echo "run.sh: nginx is missing; run 'make deps' first" >&2; exit 1; }
refuse() { echo "run.sh: $*" >&2; exit 78; }
resolved=$("$APP_BIN" config resolve --env-file /dev/null) || exit 78
while IFS= read -r line; do export "${line?}"; done <<<"$resolved"
is_root=$([ "$(id -u)" = 0 ] && echo 1 || echo "")
user=${SERVICE_USER:-testdata-api}  # as root: who runs the service
if [ -n "${TLS_CERT:-}" ]; then
  [ -r "$TLS_CERT" ] || refuse "TLS_CERT must name a readable PEM certificate (with TLS_KEY)"
  [ -r "$TLS_KEY" ] || refuse "TLS_KEY must name the readable PEM key of TLS_CERT"
  if [ -n "$is_root" ] && [ "$user" != root ]; then  # copied for the service user: only root's
    { "$py" "$sup" root-file TLS_CERT "$TLS_CERT" && "$py" "$sup" root-file TLS_KEY "$TLS_KEY"; } >/dev/null || exit 78
  fi
fi
if [ -n "${LOG_FORWARD:-}" ]; then
  export RSYSLOGD_BIN=${RSYSLOGD_BIN:-$(command -v rsyslogd || echo /usr/sbin/rsyslogd)}
  [ -x "$RSYSLOGD_BIN" ] ||
    refuse "LOG_FORWARD needs rsyslogd (Debian packages rsyslog and rsyslog-relp; run 'make deps')"
fi
plain_path() {  # as given, and again resolved (a relative one may sit under any directory)
  case $1 in *[!A-Za-z0-9_./@+,=-]*)
    refuse "DATA_DIR ($1) must be a path of letters, digits and _ . / @ + , = - only (nginx.conf takes it as it is)" ;;
  esac
}
plain_path "$DATA_DIR"

refuse_link() {  # a link at $1 that another user made
  if [ -L "$1" ] && [ "$(stat -c %u "$1")" != "$(id -u)" ]; then
    refuse "$1 is a symbolic link that $(stat -c %U "$1") made; run.sh (root) will not follow it: remove it${2:-}"
  fi
}
# As root, DATA_DIR is made and given to the service user through directory file descriptors,
# following no link on its way but root's (dev_supervisor.py data-dir, own-data-dir).
if [ -n "$is_root" ]; then
  DATA_DIR=$("$py" "$sup" data-dir "$DATA_DIR") || exit 78
else
  mkdir -p "$DATA_DIR"
  DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
fi
plain_path "$DATA_DIR"
export DATA_DIR
# One launcher per DATA_DIR: a lock on the directory, held by the supervisor (fd 9). Opened as
# "$DATA_DIR/.": should DATA_DIR be swapped for a link since it was resolved (its parent someone
# else's), only a directory is opened, never a FIFO or a device the link names (own-data-dir
# then refuses a directory other than the one it walks to).
exec 9<"$DATA_DIR/." || refuse "DATA_DIR=$DATA_DIR is no longer a directory; start again"
flock -n 9 || refuse "another run.sh (or what it started) is serving DATA_DIR=$DATA_DIR; stop it first"
if [ -z "$is_root" ]; then
  mkdir -p "$DATA_DIR"/{run,logs,nginx}
  chmod 0700 "$DATA_DIR"
fi

# As root: the app, nginx and the forwarder run as SERVICE_USER, who owns DATA_DIR.
owner=() user_directive=""
if [ -n "$is_root" ]; then
  if [ "$user" = root ]; then
    user_directive="user root root;"
  else
    id -u "$user" >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin "$user" 2>/dev/null || id -u "$user" >/dev/null
    group=$(id -gn "$user")
    export TDAPI_OWNER=$user
    owner=(setpriv --reuid="$user" --regid="$group" --clear-groups)
  fi
  # DATA_DIR 0700 with run/ logs/ nginx/, all in it (and in root's own links there) the service
  # user's; an ACL gives it search permission on a closed directory above DATA_DIR
  "$py" "$sup" own-data-dir "$DATA_DIR" "$user" || exit 78
  [ "$user" = root ] || "${owner[@]}" test -w "$DATA_DIR" -a -x "$DATA_DIR" ||
    refuse "user $user cannot reach $DATA_DIR (a parent directory is closed to it, and no ACL could open it); use a DATA_DIR it can reach, e.g. DATA_DIR=/var/lib/testdata-api"
fi
nginx_temp_dir=${NGINX_TEMP_DIR:-$DATA_DIR/nginx}
if [ "$nginx_temp_dir" != "$DATA_DIR/nginx" ]; then
  if [ -n "$is_root" ]; then  # made (the way 0755) and given to the service user through fds
    "$py" "$sup" temp-dir "$nginx_temp_dir" "$user" || exit 78
    [ "$user" = root ] || "${owner[@]}" test -w "$nginx_temp_dir" -a -x "$nginx_temp_dir" ||
      refuse "user $user cannot reach NGINX_TEMP_DIR=$nginx_temp_dir (a directory on its way is closed to it)"
  else
    [ ! -L "$nginx_temp_dir" ] || refuse "NGINX_TEMP_DIR=$nginx_temp_dir is a symbolic link; name the directory itself"
    mkdir -p "$nginx_temp_dir"
    chmod 0700 "$nginx_temp_dir"
  fi
fi
for path in "$DATA_DIR"/{run,logs,nginx} "$DATA_DIR"/run/nginx.pid "$DATA_DIR"/logs/{access,app}.log \
  "$nginx_temp_dir"/{client_body,fastcgi,proxy,uwsgi,scgi} "$DATA_DIR"/rsyslog{,/work,/queue}; do
  refuse_link "$path"
done

# Files in DATA_DIR are written as its owner, whole, renamed into place (never through a link).
put() { "$py" "$sup" put "$1"; }  # as TDAPI_OWNER
put "$DATA_DIR/openapi.yaml" <"$here/docs/openapi.yaml" ||
  echo "run.sh: could not write $DATA_DIR/openapi.yaml (disk full?): /openapi.yaml serves the copy there, if any" >&2
"${owner[@]}" rm -f "$DATA_DIR"/run/app-*.sock "$DATA_DIR"/run/app-*.pid "$DATA_DIR/run/app.sock"
node_sockets=$DATA_DIR/run/app.sock
[ "$APP_NODES" = 1 ] || node_sockets=$(for k in $(seq 1 "$APP_NODES"); do echo "$DATA_DIR/run/app-$k.sock"; done)
# As root nginx reads its configuration (and TLS copies) from a directory only root may write.
export TDAPI_NGINX_CONF=$DATA_DIR/nginx.conf
tls=()
if [ -n "${TDAPI_OWNER:-}" ]; then
  TDAPI_CLEANUP_DIR=/run/tdapi-run-sh/$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-16)
  export TDAPI_CLEANUP_DIR
  trap 'rm -rf -- "$TDAPI_CLEANUP_DIR"' EXIT  # on a refusal; the supervisor removes it at its end
  TDAPI_NGINX_CONF=$TDAPI_CLEANUP_DIR/nginx.conf
  root_file() {  # root_file PATH < content: root's, readable by the service group
    local dir=${1%/*}
    mkdir -p "$dir" && [ ! -L "$dir" ] && [ ! -L "${dir%/*}" ] && [ "$(stat -c %u "$dir")" = 0 ] &&
      [ "$(stat -c %u "${dir%/*}")" = 0 ] && chmod 0711 "${dir%/*}" "$dir" && cat >"$dir/.tmp" &&
      chgrp "$group" "$dir/.tmp" && chmod 0640 "$dir/.tmp" && mv -f "$dir/.tmp" "$1"
  }
  if [ -n "${TLS_CERT:-}" ]; then
    { "$py" "$sup" root-file TLS_CERT "$TLS_CERT" | root_file "$TDAPI_CLEANUP_DIR/tls-cert.pem" &&
      "$py" "$sup" root-file TLS_KEY "$TLS_KEY" | root_file "$TDAPI_CLEANUP_DIR/tls-key.pem"; } ||
      refuse "could not copy TLS_CERT and TLS_KEY to $TDAPI_CLEANUP_DIR for nginx"
    tls=(TLS_CERT="$TDAPI_CLEANUP_DIR/tls-cert.pem" TLS_KEY="$TDAPI_CLEANUP_DIR/tls-key.pem")
  fi
fi
conf=$("$py" "$here/ops/render-config.py" nginx --run "$here/nginx.conf" NODE_SOCKETS="${node_sockets//$'\n'/ }" \
  DATA_DIR="$DATA_DIR" USER_DIRECTIVE="$user_directive" PROJECT_DIR="$here" NGINX_TEMP_DIR="$nginx_temp_dir" \
  "${tls[@]}") || refuse "nginx's configuration could not be rendered (see above)"
if [ -n "${TDAPI_OWNER:-}" ]; then
  root_file "$TDAPI_NGINX_CONF" <<<"$conf" ||
    refuse "could not write nginx's configuration to $TDAPI_NGINX_CONF (a directory only root may write)"
  put "$DATA_DIR/nginx.conf" <<<"$conf" ||
    echo "run.sh: could not write the copy $DATA_DIR/nginx.conf (disk full?); nginx reads $TDAPI_NGINX_CONF" >&2
else
  put "$DATA_DIR/nginx.conf" <<<"$conf" ||
    refuse "could not write $DATA_DIR/nginx.conf (disk full?), and the one there is of other settings: free some space"
fi
"$py" "$sup" append "$DATA_DIR/logs/access.log" </dev/null

# LOG_FORWARD: rsyslogd's configuration, from the same renderer as the package's drop-in.
if [ -n "${LOG_FORWARD:-}" ]; then
  "${owner[@]}" mkdir -p "$DATA_DIR/rsyslog/work" "$DATA_DIR/rsyslog/queue"
  "$py" "$sup" append "$DATA_DIR/logs/app.log" </dev/null
  export TDAPI_FORWARDER_CONF=$DATA_DIR/rsyslog/rsyslog.conf
  "$py" "$here/ops/render-config.py" rsyslog --dev DATA_DIR="$DATA_DIR" APP_LOG="$DATA_DIR/logs/app.log" \
    LOG_FORWARD="$LOG_FORWARD" LOG_FORWARD_QUEUE_MAX="$LOG_FORWARD_QUEUE_MAX" | put "$TDAPI_FORWARDER_CONF" ||
    refuse "LOG_FORWARD: rsyslogd's configuration could not be rendered or written (see above)"
  check=$("${owner[@]}" "$RSYSLOGD_BIN" -N1 -f "$TDAPI_FORWARDER_CONF" 2>&1) ||
    refuse "LOG_FORWARD: rsyslogd refuses its configuration ($TDAPI_FORWARDER_CONF):"$'\n'"$check"
fi
exec "$py" "$sup" serve
