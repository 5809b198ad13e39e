#!/usr/bin/env python3
"""The one renderer of the configuration files around testdata-api: nginx's, for `make run`
(scripts/run.sh) and for the Debian package. Both come from the repository's nginx.conf
template through the same substitution (render below); a value is the same text in both.

  render-config.py nginx --dev TEMPLATE NAME=VALUE...   > nginx.conf   (scripts/run.sh)
  render-config.py nginx --site TEMPLATE [NAME=VALUE...] > site        (debian/rules)

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
import re
import sys

SOCKET = "/run/testdata-api/app.sock"
SITE_VALUES = {
    "NODE_SOCKETS": SOCKET,
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
    site = substitute(site_of(text), values, node_lines(values, False))
    left = set(re.findall(r"@([A-Z_]+)@", site))
    left |= set(re.findall(r"@([A-Z_]+)@", text)) - set(values) - MAIN_ONLY - {
        "DATA_DIR", "UPSTREAM_SERVERS", "NODE_METRICS_LOCATIONS"}
    if left:
        fail("placeholders without a package value: " + ", ".join(sorted(left)))
    return re.sub(r"\n{3,}", "\n\n", site)


def main(argv):
    if len(argv) < 3 or argv[0] != "nginx" or argv[1] not in ("--dev", "--site"):
        fail("usage: render-config.py nginx --dev|--site TEMPLATE [NAME=VALUE...]")
    values = {}
    for arg in argv[3:]:
        name, eq, value = arg.partition("=")
        if not eq or not re.fullmatch(r"[A-Z_]+", name):
            fail(f"not NAME=VALUE: {arg!r}")
        values[name] = value
    with open(argv[2], encoding="utf-8") as f:
        text = f.read()
    out = render_dev(text, values) if argv[1] == "--dev" else render_site(text, values)
    sys.stdout.write(out)


if __name__ == "__main__":
    main(sys.argv[1:])
