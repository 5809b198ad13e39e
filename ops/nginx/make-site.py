#!/usr/bin/env python3
"""Renders the repository's nginx.conf template into a site for Debian's nginx (the package's
/etc/nginx/sites-available/testdata-api).

Debian's /etc/nginx/nginx.conf owns the main context (user www-data, worker processes, pid,
events) and includes sites inside its http block, where it already sets a few directives of its
own (default_type, access_log, ...). So from the template's http block this keeps at http level
only what must be there and is named for this service alone (map, log_format, limit_*_zone,
upstream), and moves every other http-level directive into the server block, where it means the
same for this one server and cannot clash with Debian's. Dropped: the main context, events, and
the *_temp_path directives (nginx's own directories under /var/lib/nginx serve). The values are
the package's defaults (README "Configure"); an @PLACEHOLDER@ left over fails the build, so a
new one in the template is noticed.

Usage: make-site.py TEMPLATE > SITE
"""
import re
import sys

SOCKET = "/run/testdata-api/app.sock"
VALUES = {
    "LISTEN": "127.0.0.1:5000",
    # No stream proxy in front (it is in the main context, which Debian's nginx.conf owns): the
    # server listens on LISTEN itself and the client's address is the connection's.
    "HTTP_LISTEN": "127.0.0.1:5000",
    "REAL_IP": "",
    "LISTEN_SSL": "",
    "TLS": "",
    "HSTS": "",
    "UPSTREAM_SERVERS": f"server unix:{SOCKET} max_fails=2 fail_timeout=2s;",
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
    # One app process in the package: /metrics needs no per-node paths.
    "NODE_METRICS_LOCATIONS": "",
}
# Only in the main context, which is dropped.
MAIN_ONLY = {"USER_DIRECTIVE", "NOFILE", "WORKER_CONNECTIONS", "PORT", "PROJECT_DIR"}
# Only in the *_temp_path directives, which are dropped.
MAIN_ONLY |= {"NGINX_TEMP_DIR"}
# The stream proxy (main context, dropped).
MAIN_ONLY |= {"LOAD_STREAM_MODULE", "TCP_CONN_LIMIT_PER_ADDR"}
HTTP_LEVEL = {"map", "log_format", "limit_conn_zone", "limit_req_zone", "upstream", "geo",
              "split_clients"}
ACCESS_LOG = "/var/log/nginx/testdata-api.access.log"
ERROR_LOG = "/var/log/nginx/testdata-api.error.log"
OPENAPI = "/usr/share/testdata-api/openapi.yaml"


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
        sys.exit("make-site: unbalanced braces in the template's http block")
    return result, pending


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if re.match(r"^http\s*\{", code_of(l))), None)
    if start is None:
        sys.exit("make-site: no http block in the template")
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
        sys.exit("make-site: no server block in the template's http block")

    out = [
        "# testdata-api: nginx site for Debian's nginx, rendered at build time from the",
        "# repository's nginx.conf template (ops/nginx/make-site.py). A conffile: your changes",
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
    for key, value in VALUES.items():
        site = site.replace(f"@{key}@", value)
    left = set(re.findall(r"@([A-Z_]+)@", site))
    if left:
        sys.exit("make-site: placeholders without a package value: " + ", ".join(sorted(left)))
    unknown = set(re.findall(r"@([A-Z_]+)@", text)) - set(VALUES) - MAIN_ONLY - {"DATA_DIR"}
    if unknown:
        sys.exit("make-site: placeholders without a package value: " + ", ".join(sorted(unknown)))
    if "@DATA_DIR@" in site or "access_log" not in site:
        sys.exit("make-site: a DATA_DIR path is left in the site")
    sys.stdout.write(re.sub(r"\n{3,}", "\n\n", site))


main()
