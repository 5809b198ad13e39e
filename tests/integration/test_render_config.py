#!/usr/bin/env python3
"""The one renderer (ops/render-config.py): `make run`'s nginx.conf and the package's nginx site,
rendered for the same settings, hold the same directives (the site's http-level ones moved into
its server block, its own log paths, no main context and no temp paths)."""
import os
import re
import subprocess
import sys
import unittest

ROOT = os.environ.get("PROJECT_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RENDER = os.path.join(ROOT, "ops", "render-config.py")
TEMPLATE = os.path.join(ROOT, "nginx.conf")
DATA_DIR = "/var/lib/testdata-api"
OPENAPI = "/usr/share/testdata-api/openapi.yaml"

# The settings both renders share: the package's, with two nodes and TLS.
SHARED = {
    "NODE_SOCKETS": "/run/testdata-api/app-1.sock /run/testdata-api/app-2.sock",
    "LISTEN": "127.0.0.1:5443",
    "HTTP_LISTEN": "127.0.0.1:5443",
    "REAL_IP": "",
    "LISTEN_SSL": " ssl",
    "TLS": "ssl_certificate /etc/ssl/c.pem; ssl_certificate_key /etc/ssl/k.pem;",
    "HSTS": 'add_header Strict-Transport-Security "max-age=63072000" always;',
    "FASTCGI_READ_TIMEOUT": "17s",
    "KEEPALIVE": "3",
    "KEEP_CONN": "on",
    "CONN_LIMIT_PER_ADDR": "99",
    "RATE_LIMIT_PER_ADDR": "777",
    "LISTING_SPOOL_MAX": "5m",
    "KEY_RATE": "40r/s",
    "KEY_BURST": "41",
    "ANON_RATE": "3r/s",
    "ANON_BURST": "4",
    "AUTH_REQUEST": "auth_request /_auth;",
}
# Only `make run`'s: the main context, the stream proxy, the temp paths.
DEV_ONLY = {
    "PORT": "5443", "DATA_DIR": DATA_DIR, "USER_DIRECTIVE": "", "PROJECT_DIR": "/src",
    "NOFILE": "1024", "WORKER_CONNECTIONS": "512", "NGINX_TEMP_DIR": "/tmp/nginx",
    "LOAD_STREAM_MODULE": "", "TCP_CONN_LIMIT_PER_ADDR": "512",
}


def render(mode, values):
    args = [sys.executable, RENDER, "nginx", mode, TEMPLATE]
    args += [f"{k}={v}" for k, v in values.items()]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def code(text):
    """The text without comments (outside quotes)."""
    out = []
    for line in text.split("\n"):
        quote, kept = None, []
        for i, c in enumerate(line):
            if quote:
                if c == quote and line[i - 1] != "\\":
                    quote = None
            elif c in "'\"":
                quote = c
            elif c == "#":
                break
            kept.append(c)
        out.append("".join(kept))
    return "\n".join(out)


def http_block(text):
    m = re.search(r"^http\s*\{", text, flags=re.M)
    depth = 0
    for i in range(m.end() - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[m.end():i]
    raise AssertionError("unbalanced http block")


def directives(text):
    """Every directive and block opener, whitespace-normalized, as a sorted list."""
    parts = [" ".join(p.split()) for p in re.split(r"[;{}]", text)]
    return sorted(p for p in parts if p)


def comparable(items):
    out = []
    for d in items:
        word = d.split()[0]
        if word.endswith("_temp_path") or word in ("access_log", "error_log"):
            continue
        d = d.replace(f"{DATA_DIR}/openapi.yaml", OPENAPI)
        d = re.sub(r"^log_format json\b", "log_format tdapi_json", d)
        out.append(d)
    return out


class RenderConfig(unittest.TestCase):
    def test_dev_and_site_hold_the_same_directives(self):
        dev = render("--dev", {**SHARED, **DEV_ONLY})
        site = render("--site", SHARED)
        dev_http = comparable(directives(http_block(code(dev))))
        site_all = comparable(directives(code(site)))
        self.assertEqual(dev_http, site_all)
        # The settings reached both.
        for needle in ("server unix:/run/testdata-api/app-2.sock max_fails=2 fail_timeout=2s",
                       "location = /metrics/node/2", "keepalive 3", "fastcgi_read_timeout 17s",
                       "limit_conn tdapi_conn_per_addr 99", "listen 127.0.0.1:5443 ssl"):
            self.assertIn(needle, dev_http)
        self.assertIn(f"access_log {DATA_DIR}/logs/access.log json", directives(code(dev)))
        self.assertIn("access_log /var/log/nginx/testdata-api.access.log tdapi_json",
                      directives(code(site)))

    def test_one_node_site_has_no_node_metrics(self):
        site = render("--site", {})
        self.assertIn("server unix:/run/testdata-api/app.sock max_fails=2 fail_timeout=2s;", site)
        self.assertNotIn("location = /metrics/node/", site)

    def test_dev_refuses_a_missing_value(self):
        values = {**SHARED, **DEV_ONLY}
        del values["KEEPALIVE"]
        args = [sys.executable, RENDER, "nginx", "--dev", TEMPLATE]
        r = subprocess.run(args + [f"{k}={v}" for k, v in values.items()],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("KEEPALIVE", r.stderr)
        self.assertEqual(r.stdout, "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
