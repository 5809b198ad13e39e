#!/usr/bin/env python3
"""The one renderer (ops/render-config.py): `make run`'s nginx.conf and the package's nginx site,
rendered for the same settings, hold the same directives (the site's http-level ones moved into
its server block, its own log paths, no main context and no temp paths); `make run`'s rsyslogd
configuration and the package's rsyslog drop-in forward through the same ruleset, and rsyslogd
accepts both."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
        site_values = dict(SHARED)
        del site_values["NODE_SOCKETS"]
        site = render("--site", site_values)
        # The site's upstream includes the packaged server's node list, rendered there for
        # APP_NODES; /metrics/node/K is make run's alone.
        upstream = subprocess.run([sys.executable, RENDER, "nginx-upstream", "APP_NODES=2"],
                                  check=True, capture_output=True, text=True).stdout
        include = "include /etc/testdata-api/nginx-upstream.conf"
        self.assertIn(include, directives(code(site)))
        site_all = comparable(directives(code(site).replace(include + ";", code(upstream))))
        dev_http = comparable(directives(http_block(code(dev))))
        self.assertIn("location = /metrics/node/2", dev_http)
        dev_http = [d for d in dev_http if not d.startswith("location = /metrics/node/")
                    and not re.match(r"fastcgi_pass unix:/run/testdata-api/app-\d\.sock$", d)]
        self.assertEqual(dev_http, site_all)
        # The settings reached both.
        for needle in ("server unix:/run/testdata-api/app-2.sock max_fails=2 fail_timeout=2s",
                       "keepalive 3", "fastcgi_read_timeout 17s",
                       "limit_conn tdapi_conn_per_addr 99", "listen 127.0.0.1:5443 ssl"):
            self.assertIn(needle, dev_http)
        self.assertIn(f"access_log {DATA_DIR}/logs/access.log json", directives(code(dev)))
        self.assertIn("access_log /var/log/nginx/testdata-api.access.log tdapi_json",
                      directives(code(site)))

    def test_the_package_upstream_follows_app_nodes(self):
        def upstream(*args):
            return subprocess.run([sys.executable, RENDER, "nginx-upstream", *args],
                                  capture_output=True, text=True)
        one = upstream().stdout
        self.assertEqual([l for l in one.splitlines() if not l.startswith("#")],
                         ["server unix:/run/testdata-api/app.sock max_fails=2 fail_timeout=2s;"])
        env = os.path.join(ROOT, "ops", "testdata-api.env")
        self.assertEqual(upstream("--env-file", env).stdout, one)
        three = [l for l in upstream("APP_NODES=3").stdout.splitlines() if not l.startswith("#")]
        self.assertEqual(three, [f"server unix:/run/testdata-api/app-{k}.sock max_fails=2 fail_timeout=2s;"
                                 for k in (1, 2, 3)])
        for bad in ("0", "17", "two", "2;"):
            r = upstream(f"APP_NODES={bad}")
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertEqual(r.stdout, "")
        self.assertNotIn("location = /metrics/node/", code(render("--site", {})))

    def test_the_node_template_is_the_unit_on_the_node_socket(self):
        unit_path = os.path.join(ROOT, "ops", "systemd", "testdata-api.service")
        r = subprocess.run([sys.executable, RENDER, "node-unit", unit_path],
                           check=True, capture_output=True, text=True).stdout
        with open(unit_path) as f:
            unit = f.read()
        keys = lambda text: [l for l in text.splitlines() if l and not l.startswith("#")]
        added = [l for l in keys(r) if l not in keys(unit)]
        self.assertEqual(sorted(added), sorted([
            "Description=testdata-api medical test-record API (FastCGI app), node %i",
            "Environment=DATA_DIR=/var/lib/testdata-api SOCKET_MODE=0660 "
            "SOCKET=/run/testdata-api/app-%i.sock TDAPI_NODE=%i",
            "RuntimeDirectoryPreserve=yes"]))
        self.assertEqual(len(keys(r)), len(keys(unit)) + 1)

    def test_dev_refuses_a_missing_value(self):
        values = {**SHARED, **DEV_ONLY}
        del values["KEEPALIVE"]
        args = [sys.executable, RENDER, "nginx", "--dev", TEMPLATE]
        r = subprocess.run(args + [f"{k}={v}" for k, v in values.items()],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("KEEPALIVE", r.stderr)
        self.assertEqual(r.stdout, "")


RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def render_rsyslog(mode, *args):
    return subprocess.run([sys.executable, RENDER, "rsyslog", mode, *args],
                          capture_output=True, text=True)


def forwarding(conf):
    """From the RFC 5424 template to the end of the access ruleset: the forwarding itself."""
    start = conf.index('template(name="tdapi_rfc5424"')
    end = conf.index("\n}\n", conf.index('ruleset(name="tdapi_access")')) + 3
    return conf[start:end]


class RenderRsyslog(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-render-")
        self.addCleanup(shutil.rmtree, self.dir)

    def check_with_rsyslogd(self, main_conf):
        path = os.path.join(self.dir, "main.conf")
        with open(path, "w") as f:
            f.write(main_conf)
        r = subprocess.run([RSYSLOGD, "-N1", "-f", path], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)

    def test_dev_and_journal_forward_the_same_way_and_rsyslogd_accepts_both(self):
        for url, action in (("relp://collector.example:2514", 'type="omrelp" target="collector.example" port="2514"'),
                            ("tcp://[::1]:6514", 'type="omfwd" target="::1" port="6514" protocol="tcp" tcp_framing="octet-counted"')):
            with self.subTest(url=url):
                env = os.path.join(self.dir, "testdata-api.env")
                with open(env, "w") as f:
                    f.write(f'# settings\nLOG_FORWARD="{url}"\nLOG_FORWARD_QUEUE_MAX=3g\n')
                os.makedirs(os.path.join(self.dir, "rsyslog", "work"), exist_ok=True)
                os.makedirs(os.path.join(self.dir, "rsyslog", "queue"), exist_ok=True)
                dev = render_rsyslog("--dev", f"DATA_DIR={self.dir}", f"APP_LOG={self.dir}/app.log",
                                     f"LOG_FORWARD={url}", "LOG_FORWARD_QUEUE_MAX=3g")
                self.assertEqual(dev.returncode, 0, dev.stderr)
                journal = render_rsyslog("--journal", "--env-file", env, f"SPOOL_DIR={self.dir}")
                self.assertEqual(journal.returncode, 0, journal.stderr)
                self.assertIn(action, dev.stdout)
                self.assertIn('queue.maxDiskSpace="3g"', dev.stdout)
                self.assertEqual(
                    forwarding(dev.stdout).replace(f'"{self.dir}/rsyslog/queue"', "SPOOL")
                    .replace('queue.filename="forward"', "QUEUE"),
                    forwarding(journal.stdout).replace(f'"{self.dir}"', "SPOOL")
                    .replace('queue.filename="testdata-api-forward"', "QUEUE"))
                # The drop-in reads the journal, the testdata-api units only, and saves its
                # cursor every few entries; its entries stop there (no second copy in syslog).
                self.assertRegex(journal.stdout, r'module\(load="imjournal" StateFile="[^"]+" PersistStateInterval="\d+"')
                self.assertIn('if $!_SYSTEMD_UNIT startswith "testdata-api" then', journal.stdout)
                self.check_with_rsyslogd(dev.stdout)
                drop_in = os.path.join(self.dir, "testdata-api.conf")
                with open(drop_in, "w") as f:
                    f.write(journal.stdout)
                # As Debian's rsyslog.conf includes it: a work directory, imuxsock, then the
                # drop-ins, then the rules.
                self.check_with_rsyslogd(
                    f'global(workDirectory="{self.dir}")\nmodule(load="imuxsock")\n'
                    f'include(file="{drop_in}")\n*.* {self.dir}/syslog\n')

    def test_both_refuse_a_bad_log_forward(self):
        for mode, extra in (("--dev", [f"DATA_DIR={self.dir}", f"APP_LOG={self.dir}/app.log"]),
                            ("--journal", [])):
            for url in ("http://x:1", "tcp://x:0", 'tcp://a"b:1', "relp://x"):
                r = render_rsyslog(mode, *extra, f"LOG_FORWARD={url}")
                self.assertNotEqual(r.returncode, 0, (mode, url))
                self.assertIn("LOG_FORWARD must be", r.stderr)
                self.assertEqual(r.stdout, "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
