#!/usr/bin/env python3
"""The one renderer of the configuration files around testdata-api: nginx's, for `make run`
(scripts/run.sh) and for the Debian package. Both come from the repository's nginx.conf
template through the same substitution (render below); a value is the same text in both.

  render-config.py nginx --dev TEMPLATE NAME=VALUE...   > nginx.conf
  render-config.py nginx --run TEMPLATE [NAME=VALUE...]  > nginx.conf   (scripts/run.sh)
  render-config.py nginx --site TEMPLATE [NAME=VALUE...] > site        (debian/rules)

--run is --dev with the values make run derives from its settings (TLS, keep-alive, open files, the
stream module, the key check) are computed here (dev_values) from the environment, which
scripts/run.sh fills with `testdata-api config resolve`'s settings; NAME=VALUE arguments win.

NAME is a placeholder of the template (@NAME@), or NODE_SOCKETS: the app nodes' sockets,
space-separated, which become the upstream's server lines (and, with --dev or more than one
node, the /metrics/node/K locations). --dev needs a value for every placeholder; a placeholder
left over fails.

--site renders a site for Debian's nginx (/etc/nginx/sites-available/testdata-api), with the
package's values (README "Configure") unless given. Debian's /etc/nginx/nginx.conf owns the
main context (user www-data, worker processes, pid, events) and includes sites inside its http
block, where it already sets a few directives of its own (default_type, access_log, ...). So
from the template's http block this keeps at http level only what must be there and is named for
this service alone (map, log_format, limit_*_zone, upstream), and moves every other http-level
directive into the server block, where it means the same for this one server and cannot clash
with Debian's. Dropped: the main context, events, and the *_temp_path directives (nginx's own
directories under /var/lib/nginx serve).
"""
import os
import re
import resource
import shutil
import subprocess
import sys

SOCKET = "/run/testdata-api/app.sock"
# The site's upstream reads its server lines from here (render_upstream: APP_NODES).
UPSTREAM_FILE = "/etc/testdata-api/nginx-upstream.conf"
SITE_VALUES = {
    "LISTEN": "127.0.0.1:5000",
    # No stream proxy in front (it is in the main context, which Debian's nginx.conf owns): the
    # server listens on LISTEN itself and the client's address is the connection's.
    "HTTP_LISTEN": "127.0.0.1:5000",
    "REAL_IP": "",
    "LISTEN_SSL": "",
    "TLS": "",
    "HSTS": "",
    "FASTCGI_READ_TIMEOUT": "30s",
    # The app's default is 32 threads per core; nginx runs a worker per core: 8 idle kept-alive
    # connections per worker park at most a quarter of them (as scripts/run.sh computes).
    "KEEPALIVE": "8",
    "KEEP_CONN": "on",
    "CONN_LIMIT_PER_ADDR": "256",
    "RATE_LIMIT_PER_ADDR": "50000",
    "LISTING_SPOOL_MAX": "1024m",
    # The package runs with AUTH=on: run.sh's defaults for that mode.
    "KEY_RATE": "50000r/s",
    "KEY_BURST": "50000",
    "ANON_RATE": "100r/s",
    "ANON_BURST": "200",
    # The key check before a request body is read (AUTH=on).
    "AUTH_REQUEST": "auth_request /_auth;",
}
# Only in the main context, which --site drops.
MAIN_ONLY = {"USER_DIRECTIVE", "NOFILE", "WORKER_CONNECTIONS", "PORT", "PROJECT_DIR"}
# Only in the *_temp_path directives, which --site drops.
MAIN_ONLY |= {"NGINX_TEMP_DIR"}
# The stream proxy (main context, dropped).
MAIN_ONLY |= {"LOAD_STREAM_MODULE", "TCP_CONN_LIMIT_PER_ADDR"}
HTTP_LEVEL = {"map", "log_format", "limit_conn_zone", "limit_req_zone", "upstream", "geo",
              "split_clients"}
ACCESS_LOG = "/var/log/nginx/testdata-api.access.log"
ERROR_LOG = "/var/log/nginx/testdata-api.error.log"
OPENAPI = "/usr/share/testdata-api/openapi.yaml"


def fail(message):
    sys.exit("render-config: " + message)


def code_of(line):
    """The line without quoted strings and comments: what braces and semicolons count in."""
    out, quote, i = [], None, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            break
        else:
            out.append(c)
        i += 1
    return "".join(out)


def statements(lines):
    """Splits lines at one nesting level into statements: (leading comment lines, lines)."""
    result, pending, current, depth = [], [], [], 0
    for line in lines:
        code = code_of(line).strip()
        if not current and (not code):
            pending.append(line)
            continue
        current.append(line)
        depth += code.count("{") - code.count("}")
        if depth == 0 and (code.endswith(";") or code.endswith("}")):
            result.append((pending, current))
            pending, current = [], []
    if current or depth:
        sys.exit("render-config: unbalanced braces in the template's http block")
    return result, pending


def node_lines(values, per_node_metrics):
    """The upstream's server lines and the per-node /metrics locations, from NODE_SOCKETS. Two
    failed tries within 2 s (connection refused, error, timeout, invalid header) take a node out
    for 2 s; then one request tries it again (with one node nginx ignores both: it never takes
    its only server out)."""
    sockets = values.pop("NODE_SOCKETS", "").split()
    if not sockets:
        fail("NODE_SOCKETS names no socket")
    for s in sockets:
        if not s.startswith("/") or re.search(r"[;{}#'\"\\\s]", s):
            fail(f"a node socket must be an absolute path without spaces, ; {{ }} # or quotes: {s!r}")
    servers = [f"server unix:{s} max_fails=2 fail_timeout=2s;" for s in sockets]
    metrics = []
    if per_node_metrics or len(sockets) > 1:
        metrics = [f"location = /metrics/node/{k} {{ fastcgi_pass unix:{s}; }}"
                   for k, s in enumerate(sockets, 1)]
    return {"UPSTREAM_SERVERS": servers, "NODE_METRICS_LOCATIONS": metrics}


def substitute(text, values, lists):
    """The template with every placeholder replaced: a list value on the line that is only its
    placeholder, a line per item at that line's indentation; every other value as it is."""
    for key, items in lists.items():
        def lines(m, items=items):
            return "\n".join(m.group(1) + item for item in items)
        text = re.sub(r"^([ \t]*)@" + key + r"@[ \t]*$", lines, text, flags=re.M)
    for key, value in values.items():
        if "\n" in value:
            fail(f"{key} must be one line")
        text = text.replace(f"@{key}@", value)
    return text


TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
               "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so",
                  "/usr/share/nginx/modules/ngx_stream_module.so")


def dev_values(env):
    """make run's values for the template: its settings (env, resolved by the binary) and what
    follows from them."""
    v = {k: env[k] for k in ("PORT", "LISTEN", "FASTCGI_READ_TIMEOUT", "CONN_LIMIT_PER_ADDR",
                             "RATE_LIMIT_PER_ADDR", "LISTING_SPOOL_MAX", "KEY_RATE", "KEY_BURST",
                             "ANON_RATE", "ANON_BURST", "TCP_CONN_LIMIT_PER_ADDR", "DATA_DIR",
                             "PROJECT_DIR", "USER_DIRECTIVE", "NODE_SOCKETS", "NGINX_TEMP_DIR")
         if k in env}
    v["LISTEN_SSL"] = v["TLS"] = v["HSTS"] = ""
    if env.get("TLS_CERT"):
        v["LISTEN_SSL"] = " ssl"
        v["HSTS"] = 'add_header Strict-Transport-Security "max-age=63072000" always;'
        v["TLS"] = (f"ssl_certificate {env['TLS_CERT']}; ssl_certificate_key {env['TLS_KEY']}; "
                    f"ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers {TLS_CIPHERS}; "
                    "ssl_prefer_server_ciphers off; ssl_session_cache shared:tdapi_tls:10m; "
                    f"ssl_session_timeout 1d; ssl_session_tickets off; {v['HSTS']}")
    # Idle kept-alive connections per nginx worker (one per core) park an app thread each: at
    # most a quarter of the threads, at most 8; below 4 threads per core, no keep-alive at all
    # (parked connections could hold every thread).
    cores = os.cpu_count() or 2
    keepalive = min(int(env.get("THREADS", "1")) // (4 * cores), 8)
    v["KEEPALIVE"], v["KEEP_CONN"] = (str(keepalive), "on") if keepalive >= 1 else ("1", "off")
    # Open files per nginx worker (half of them connections): 16384, or the hard limit if lower.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 16384 if hard == resource.RLIM_INFINITY else min(16384, hard)
    v["NOFILE"], v["WORKER_CONNECTIONS"] = str(nofile), str(nofile // 2)
    v["AUTH_REQUEST"] = "auth_request /_auth;" if env.get("AUTH") == "on" else "auth_request off;"
    v["HTTP_LISTEN"] = f"unix:{env.get('DATA_DIR')}/run/nginx-http.sock proxy_protocol"
    v["REAL_IP"] = "set_real_ip_from unix:; real_ip_header proxy_protocol;"
    # The stream proxy in front of the HTTP server: nginx's stream module, built in or dynamic
    # (Debian: libnginx-mod-stream).
    nginx = env.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    v["LOAD_STREAM_MODULE"] = ""
    if "--with-stream=dynamic" in build:
        found = [f for f in STREAM_MODULES if os.access(f, os.R_OK)]
        if not found:
            fail("nginx's stream module is missing (Debian package libnginx-mod-stream; run "
                 "'make deps')")
        v["LOAD_STREAM_MODULE"] = f"load_module {found[0]};"
    elif not re.search(r"--with-stream( |$)", build, re.M):
        fail(f"{nginx} is built without the stream module, which the front door needs")
    return v


def render_dev(text, values):
    conf = substitute(text, values, node_lines(values, True))
    code = "\n".join(code_of(line) for line in conf.split("\n"))
    left = sorted(set(re.findall(r"@([A-Z_]+)@", code)))
    if left:
        fail("placeholders without a value: " + ", ".join(left))
    return conf


def site_of(text):
    """The template rearranged into a Debian site (placeholders still in it)."""
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if re.match(r"^http\s*\{", code_of(l))), None)
    if start is None:
        fail("no http block in the template")
    depth, end = 0, None
    for i in range(start, len(lines)):
        code = code_of(lines[i])
        depth += code.count("{") - code.count("}")
        if depth == 0:
            end = i
            break
    body = [re.sub(r"^    ", "", l) for l in lines[start + 1:end]]
    stmts, trailing = statements(body)

    keep, move, server = [], [], None
    for comments, stmt in stmts:
        word = code_of(stmt[0]).split()[0]
        if word.endswith("_temp_path"):
            continue
        if word == "server":
            server = (comments, stmt)
        elif word in HTTP_LEVEL:
            keep.append((comments, stmt))
        else:
            move.append((comments, stmt))
    if server is None:
        fail("no server block in the template's http block")

    out = [
        "# testdata-api: nginx site for Debian's nginx, rendered from the repository's nginx.conf",
        "# template (render-config.py, the renderer `make run` uses too). A conffile: your changes",
        "# are kept on upgrades. Enabled through /etc/nginx/sites-enabled/testdata-api.",
        "# After a change: nginx -t && systemctl reload nginx.",
        "#",
        f"# The app listens on {SOCKET} (mode 0660, group testdata-api; www-data is a member).",
        "# Listen address, TLS and limits: README \"Configure\". Query strings can carry patient",
        "# ids and nginx's error lines quote the request line: this server's error log is at",
        "# level alert (upstream failures show in the access log's status and upstream_status).",
        "",
    ]
    for comments, stmt in keep:
        out += comments + stmt
    out += trailing
    s_comments, s_lines = server
    out += s_comments + [s_lines[0]]
    out.append(f"    access_log {ACCESS_LOG} tdapi_json;")
    out.append(f"    error_log {ERROR_LOG} alert;")
    for comments, stmt in move:
        for l in comments + stmt:
            out.append(("    " + l) if l.strip() else l)
    out += s_lines[1:]
    site = "\n".join(out) + "\n"

    # Paths and names of the packaged service.
    site = re.sub(r"^(\s*)access_log\s+@DATA_DIR@\S*\s+json;\n", "", site, flags=re.M)
    site = site.replace("@DATA_DIR@/openapi.yaml", OPENAPI)
    site = re.sub(r"\blog_format json\b", "log_format tdapi_json", site)
    if "@DATA_DIR@" in site or "access_log" not in site:
        fail("a DATA_DIR path is left in the site")
    return site


def render_site(text, overrides):
    values = dict(SITE_VALUES)
    values.update(overrides)
    # The nodes are the packaged server's (APP_NODES): its upstream's server lines are in a file
    # of their own, rendered on the server; /metrics is whichever node nginx picks.
    lists = {"UPSTREAM_SERVERS": [f"include {UPSTREAM_FILE};"], "NODE_METRICS_LOCATIONS": []}
    site = substitute(site_of(text), values, lists)
    left = set(re.findall(r"@([A-Z_]+)@", site))
    left |= set(re.findall(r"@([A-Z_]+)@", text)) - set(values) - MAIN_ONLY - {
        "DATA_DIR", "UPSTREAM_SERVERS", "NODE_METRICS_LOCATIONS"}
    if left:
        fail("placeholders without a package value: " + ", ".join(sorted(left)))
    return re.sub(r"\n{3,}", "\n\n", site)



# --- rsyslog: forwarding to a collector (LOG_FORWARD) ---------------------------------------

FORWARD_RE = re.compile(
    r"^(relp|tcp)://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$")
QUEUE_MAX_RE = re.compile(r"^[1-9][0-9]*[kmgKMG]?$")
# Lines read from a file or the journal between two saves of the reading position: what a
# forwarder killed outright (no stop to save it) sends again after its restart.
PERSIST_EVERY = 50


def forward_target(values):
    """(scheme, host, port) of LOG_FORWARD, which must be relp://HOST:PORT or tcp://HOST:PORT."""
    url = values.get("LOG_FORWARD", "")
    m = FORWARD_RE.match(url)
    if not m or not 1 <= int(m.group(4)) <= 65535:
        fail("LOG_FORWARD must be relp://HOST:PORT or tcp://HOST:PORT (HOST a name, an IPv4 "
             f"address or an [IPv6] address; PORT 1-65535), not {url!r}")
    queue_max = values.get("LOG_FORWARD_QUEUE_MAX") or "1g"
    if not QUEUE_MAX_RE.match(queue_max):
        fail(f"LOG_FORWARD_QUEUE_MAX must be a size such as 512m or 2g, not {queue_max!r}")
    return m.group(1), m.group(2).strip("[]"), int(m.group(4)), queue_max


def forward_ruleset(values, spool_dir, queue_name):
    """The RFC 5424 template and the ruleset `forward` (omrelp or omfwd, octet-counted) behind a
    disk-assisted queue: while the collector is unreachable, lines wait in memory and beyond
    12,000 of them on disk (spool_dir, at most LOG_FORWARD_QUEUE_MAX; a stop saves the queue
    there). A message to forward sets $.stream (the APP-NAME) and $.line (MSG)."""
    scheme, host, port, queue_max = forward_target(values)
    if scheme == "relp":
        action = f'type="omrelp" target="{host}" port="{port}"'
    else:
        action = (f'type="omfwd" target="{host}" port="{port}" protocol="tcp" '
                  'tcp_framing="octet-counted"')
    return f"""{'module(load="omrelp")' if scheme == "relp" else ""}

# RFC 5424: <PRI>1 TIMESTAMP HOST APP-NAME - - - MSG, where APP-NAME names the stream
# (testdata-api: the app's log; testdata-api-access: nginx's) and MSG is the JSON line itself.
template(name="tdapi_rfc5424" type="list") {{
  constant(value="<") property(name="pri") constant(value=">1 ")
  property(name="timereported" dateFormat="rfc3339") constant(value=" ")
  property(name="hostname") constant(value=" ")
  property(name="$.stream") constant(value=" - - - ")
  property(name="$.line")
}}
ruleset(name="tdapi_forward") {{
  action({action} template="tdapi_rfc5424"
         queue.type="LinkedList" queue.size="20000"
         queue.highWatermark="12000" queue.lowWatermark="4000"
         queue.filename="{queue_name}" queue.spoolDirectory="{spool_dir}"
         queue.maxFileSize="16m" queue.maxDiskSpace="{queue_max}"
         queue.saveOnShutdown="on" queue.timeoutEnqueue="60000"
         action.resumeRetryCount="-1" action.resumeInterval="1" action.resumeIntervalMax="30"
         action.reportSuspension="on")
}}
ruleset(name="tdapi_access") {{
  set $.stream = "testdata-api-access"; set $.line = ltrim($msg); call tdapi_forward
}}
"""


def access_input(path):
    # A line is sent as it was written (imfile drops only the newline). nginx's access lines are
    # read from its file, not sent by nginx's own syslog client: that one sends datagrams
    # without waiting, and under load the socket's short queue was full and lines were dropped;
    # the file has every line. The position is saved every PERSIST_EVERY lines.
    return (f'input(type="imfile" file="{path}" tag="testdata-api-access" facility="local7"\n'
            f'      severity="info" reopenOnTruncate="on" persistStateInterval="{PERSIST_EVERY}"\n'
            '      ruleset="tdapi_access")\n')


# Polling once a second, not inotify: at a rotation imfile reads the renamed file to its end and
# then moves to the new one; with inotify that happened as soon as nginx's master had created
# the new access.log, while a worker could still append a line to the old one (lost for the
# collector). Polled, the old file is finished a moment later, after the workers reopened.
IMFILE = 'module(load="imfile" mode="polling" pollingInterval="1")\n'


def render_rsyslog_dev(values):
    """rsyslogd's whole configuration for `make run` (scripts/run.sh runs it as the service
    user): imfile reads the app's log and nginx's access log in DATA_DIR; rsyslog's own messages
    go to logs/forwarder.log as JSON lines."""
    data_dir = values.get("DATA_DIR", "")
    app_log = values.get("APP_LOG", "")
    for name, path in (("DATA_DIR", data_dir), ("APP_LOG", app_log)):
        if not path.startswith("/") or re.search(r'["\\\n]', path):
            fail(f"{name} must be an absolute path without '\"' or '\\\\', not {path!r}")
    return f"""# Written by scripts/run.sh at every start with LOG_FORWARD={values["LOG_FORWARD"]}; edits
# are lost. processInternalMessages: rsyslog's own messages go to logs/forwarder.log (below),
# not to the system log.
global(workDirectory="{data_dir}/rsyslog/work" maxMessageSize="64k" processInternalMessages="on")
# What the inputs took in but the forwarding queue has not yet: saved too on a stop.
main_queue(queue.type="LinkedList" queue.filename="main" queue.saveOnShutdown="on")
{IMFILE}{forward_ruleset(values, data_dir + "/rsyslog/queue", "forward")}
ruleset(name="tdapi_app") {{
  set $.stream = "testdata-api"; set $.line = ltrim($msg); call tdapi_forward
}}
input(type="imfile" file="{app_log}" tag="testdata-api" facility="local0" severity="info"
      reopenOnTruncate="on" persistStateInterval="{PERSIST_EVERY}" ruleset="tdapi_app")
{access_input(data_dir + "/logs/access.log")}
# rsyslog's own messages, as JSON lines.
template(name="tdapi_internal" type="list") {{
  constant(value="{{\\"ts\\":\\"") property(name="timegenerated" dateFormat="rfc3339" date.inUTC="on")
  constant(value="\\",\\"level\\":\\"") property(name="$.level")
  constant(value="\\",\\"event\\":\\"log_forwarder\\",") property(name="msg" format="jsonf" outname="detail")
  constant(value="}}\\n")
}}
if $syslogseverity <= 3 then set $.level = "error";
else if $syslogseverity == 4 then set $.level = "warn";
else set $.level = "info";
action(type="omfile" file="{data_dir}/logs/forwarder.log" template="tdapi_internal" fileCreateMode="0600")
"""


JOURNAL_STATE = "testdata-api-journal.state"


def render_rsyslog_journal(values):
    """A drop-in for the system's rsyslog (/etc/rsyslog.d/testdata-api.conf on the packaged
    server): the app's lines from the journal (imjournal, the units testdata-api*.service only),
    nginx's access lines from its file, forwarded through the same ruleset as `make run`'s.
    imjournal saves its cursor in rsyslog's work directory every PERSIST_EVERY entries, so a
    killed rsyslogd sends at most that many lines again. rsyslog 8.2302's imjournal binds to no
    ruleset of its own: its entries reach the default ruleset, where this file (included before
    Debian's rules) takes them and stops them, so the journal is not copied to /var/log/syslog
    a second time (journald already passes syslog its lines)."""
    spool = values.get("SPOOL_DIR") or "/var/spool/rsyslog"
    access = values.get("ACCESS_LOG") or "/var/log/nginx/testdata-api.access.log"
    for name, path in (("SPOOL_DIR", spool), ("ACCESS_LOG", access)):
        if not path.startswith("/") or re.search(r'["\\\n]', path):
            fail(f"{name} must be an absolute path without '\"' or '\\\\', not {path!r}")
    return f"""# testdata-api: forwards the service's logs to LOG_FORWARD={values["LOG_FORWARD"]}.
# Rendered by /usr/share/testdata-api/ops/render-config.py rsyslog --journal from
# /etc/testdata-api/testdata-api.env (docs/operations.md "Forwarding logs"); render it again
# after changing LOG_FORWARD, then: rsyslogd -N1 && systemctl restart rsyslog.
module(load="imjournal" StateFile="{JOURNAL_STATE}" PersistStateInterval="{PERSIST_EVERY}"
       IgnorePreviousMessages="on" Ratelimit.Interval="0")
{IMFILE}{forward_ruleset(values, spool, "testdata-api-forward")}
{access_input(access)}
if $inputname == "imjournal" then {{
  if $!_SYSTEMD_UNIT startswith "testdata-api" then {{
    set $.stream = "testdata-api"; set $.line = ltrim($msg); call tdapi_forward
  }}
  stop
}}
"""


# --- systemd: the node template unit (APP_NODES in the package) ------------------------------

def render_node_unit(unit):
    """testdata-api@.service from testdata-api.service: the same unit, for node N (1-16) of
    APP_NODES, on its own socket /run/testdata-api/app-N.sock. The nodes share the runtime
    directory, which therefore outlives each of them (RuntimeDirectoryPreserve=yes)."""
    def once(old, new, text):
        if text.count(old) != 1:
            fail(f"node-unit: expected one {old!r} in the unit")
        return text.replace(old, new)
    out = unit
    out = once("\nDescription=testdata-api medical test-record API (FastCGI app)\n",
               "\nDescription=testdata-api medical test-record API (FastCGI app), node %i\n", out)
    out = once("# Fixed by the package; the socket is $RUNTIME_DIRECTORY/app.sock.",
               "# Fixed by the package; node N's socket is /run/testdata-api/app-N.sock.", out)
    out = once("\nEnvironment=DATA_DIR=/var/lib/testdata-api SOCKET_MODE=0660\n",
               "\nEnvironment=DATA_DIR=/var/lib/testdata-api SOCKET_MODE=0660"
               " SOCKET=/run/testdata-api/app-%i.sock TDAPI_NODE=%i\n", out)
    out = once("\nRuntimeDirectoryMode=0750\n",
               "\nRuntimeDirectoryMode=0750\n"
               "# Shared by the nodes: kept when one of them stops (the others' sockets are in it).\n"
               "RuntimeDirectoryPreserve=yes\n", out)
    return ("# testdata-api@N: node N (1-16) of APP_NODES, behind the nginx upstream in\n"
            "# /etc/testdata-api/nginx-upstream.conf. Rendered from testdata-api.service by\n"
            "# render-config.py node-unit: everything below is that unit's, but for the node's\n"
            "# socket and name. docs/operations.md \"Several app nodes\".\n#\n" + out)


def render_upstream(values):
    """The server lines of nginx's upstream for APP_NODES nodes of the package (the include
    file the site's upstream block reads): one node on app.sock, N nodes on app-1..N.sock."""
    text = values.get("APP_NODES") or "1"
    if not re.fullmatch(r"[0-9]{1,2}", text) or not 1 <= int(text) <= 16:
        fail(f"APP_NODES must be a whole number from 1 to 16, not {text!r}")
    n = int(text)
    sockets = [SOCKET] if n == 1 else [f"/run/testdata-api/app-{k}.sock" for k in range(1, n + 1)]
    lines = node_lines({"NODE_SOCKETS": " ".join(sockets)}, False)["UPSTREAM_SERVERS"]
    return ("# testdata-api: the app's nodes in nginx's upstream (APP_NODES=%d in\n"
            "# /etc/testdata-api/testdata-api.env). Written by the package (dpkg-reconfigure\n"
            "# testdata-api): edits are lost.\n" % n) + "\n".join(lines) + "\n"

def read_env_file(path):
    """NAME=VALUE lines of an environment file (systemd's EnvironmentFile= syntax, unquoted or
    in double quotes); comments and blank lines skipped."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            name, eq, value = line.partition("=")
            if eq:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                values[name.strip()] = value
    return values


USAGE = ("usage: render-config.py nginx --dev|--run|--site TEMPLATE [NAME=VALUE...]\n"
         "       render-config.py nginx-upstream [--env-file FILE] [APP_NODES=N]\n"
         "       render-config.py rsyslog --dev|--journal [--env-file FILE] [NAME=VALUE...]\n"
         "       render-config.py node-unit testdata-api.service")


def main(argv):
    if argv[:1] == ["node-unit"] and len(argv) == 2:
        with open(argv[1], encoding="utf-8") as f:
            sys.stdout.write(render_node_unit(f.read()))
        return
    if argv[:1] == ["nginx-upstream"]:
        rest, values = argv[1:], {}
        if rest[:1] == ["--env-file"] and len(rest) >= 2:
            values.update(read_env_file(rest[1]))
            rest = rest[2:]
        values.update(name_values(rest))
        sys.stdout.write(render_upstream(values))
        return
    if argv[:1] == ["rsyslog"] and argv[1:2] in (["--dev"], ["--journal"]):
        rest, values = argv[2:], {}
        if rest[:1] == ["--env-file"] and len(rest) >= 2:
            values.update(read_env_file(rest[1]))
            rest = rest[2:]
        values.update(name_values(rest))
        if not values.get("LOG_FORWARD"):
            fail("LOG_FORWARD is not set: nothing to forward")
        render = render_rsyslog_dev if argv[1] == "--dev" else render_rsyslog_journal
        sys.stdout.write(render(values))
        return
    if len(argv) < 3 or argv[0] != "nginx" or argv[1] not in ("--dev", "--run", "--site"):
        fail(USAGE)
    values = name_values(argv[3:])
    if argv[1] == "--run":  # make run's: --dev, the values from its environment
        values = dict(dev_values(dict(os.environ, **values)), **values)
    with open(argv[2], encoding="utf-8") as f:
        text = f.read()
    out = render_site(text, values) if argv[1] == "--site" else render_dev(text, values)
    sys.stdout.write(out)


def name_values(args):
    values = {}
    for arg in args:
        name, eq, value = arg.partition("=")
        if not eq or not re.fullmatch(r"[A-Z_]+", name):
            fail(f"not NAME=VALUE: {arg!r}")
        values[name] = value
    return values


if __name__ == "__main__":
    main(sys.argv[1:])
