#!/usr/bin/env python3
"""test_observe.py: the metrics as an operator sees them. The real service (scripts/run.sh, AUTH=on)
on a free port, a real Prometheus (Debian's binary) started by scripts/observe.sh (what
`make observe` runs) on a free port with the shipped ops/prometheus files, some traffic; then:
the new metrics appear with sane values, the target is up, the recording rules have values,
every alert rule is loaded, the console page renders with numbers in it, and every expression
of the Grafana dashboard is valid PromQL that this Prometheus answers. Waits are bounded polls."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, PG_HOST, ROOT, Server, database_target, free_port, record  # noqa: E402

DASHBOARD = os.path.join(ROOT, "ops", "grafana", "testdata-api.json")


def wait_for(predicate, timeout, interval=0.2):
    """Polls predicate (queries to Prometheus: not too often) until true or timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def admin(*args):
    p = subprocess.run([APP_BIN, *args], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return json.loads(p.stdout)


def metric(text, series):
    """The value of the sample line `series` (name and labels exactly) of a /metrics text."""
    m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


class Observe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        env = {"AUTH": "on", "THREADS": "8"}
        if PG_HOST:
            env["APP_NODES"] = "2"  # one Prometheus target per node: /metrics/node/K
        cls.nodes = int(env.get("APP_NODES", "1"))
        cls.server = Server(**env).start()
        cls.observe = None
        try:
            cls.start_prometheus()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start_prometheus(cls):
        cls.db = database_target(cls.server)
        cls.prom_port = free_port()
        cls.observe_dir = os.path.join(cls.server.data_dir, "observe")
        env = dict(os.environ, PORT=str(cls.server.port), DATA_DIR=cls.server.data_dir,
                   OBSERVE_PORT=str(cls.prom_port), SCRAPE_INTERVAL="1s", DB=cls.db,
                   APP_BIN=APP_BIN, APP_NODES=str(cls.nodes))
        cls.observe_out = open(os.path.join(cls.server.data_dir, "observe-output.log"), "w+b")  # noqa: SIM115
        cls.observe = subprocess.Popen([os.path.join(ROOT, "scripts", "observe.sh")], env=env,
                                       stdout=cls.observe_out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        if not wait_for(lambda: b"console: http" in cls.output() or cls.observe.poll() is not None,
                        timeout=60):
            raise AssertionError("observe.sh did not print the console URL: " + cls.output().decode())
        if cls.observe.poll() is not None:
            raise AssertionError(f"observe.sh exited {cls.observe.returncode}: " + cls.output().decode())

    @classmethod
    def output(cls):
        cls.observe_out.seek(0)
        return cls.observe_out.read()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.observe is not None and cls.observe.poll() is None:
                cls.observe.send_signal(signal.SIGTERM)
                try:
                    cls.observe.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(cls.observe.pid, signal.SIGKILL)
                    cls.observe.wait()
        finally:
            if getattr(cls, "observe_out", None):
                cls.observe_out.close()
            cls.server.__exit__(None, None, None)

    # -- helpers ---------------------------------------------------------------------------
    def prom(self, path, **params):
        url = f"http://127.0.0.1:{self.prom_port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()

    def query(self, expr):
        """The result vector of an instant query (a list of {metric, value})."""
        try:
            body = json.loads(self.prom("/api/v1/query", query=expr))
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr}: {e.code} {e.read().decode()}")
        self.assertEqual(body["status"], "success", expr)
        return body["data"]["result"]

    def value(self, expr):
        r = self.query(expr)
        return float(r[0]["value"][1]) if r else None

    def send_traffic(self):
        """Writes, duplicates, reads, bad bodies, unauthenticated and forbidden requests."""
        writer = admin("keys", "create", "--db", self.db, "--name", "obs-writer",
                       "--scope", "write:*", "--scope", "read:*")["token"]
        reader = admin("keys", "create", "--db", self.db, "--name", "obs-reader",
                       "--scope", "read:c1")["token"]
        auth = {"Authorization": "Bearer " + writer}
        statuses = {}
        for i in range(40):
            if i == 10:
                # A series is born at its first value: let Prometheus see each before the rest,
                # so that rate() has a rise to show.
                self.assertTrue(wait_for(lambda: self.query(
                    'tdapi_requests_total{route="POST /tests",status="201"}'), timeout=30))
            for status, args in (
                (201, ("POST", "/tests", record(f"obs-{i}"), auth)),
                (200, ("GET", "/tests?clinic_id=c1&limit=5", None, auth)),
                (400, ("POST", "/tests", {"test_id": f"bad-{i}"}, auth)),
                (401, ("GET", "/tests?clinic_id=c1", None, None)),
            ):
                r = self.server.request(*args[:3], headers=args[3])
                self.assertEqual(r.status, status, (args, r))
                statuses[status] = statuses.get(status, 0) + 1
        self.assertEqual(self.server.request("POST", "/tests", record("obs-0"), headers=auth).status, 409)
        self.assertEqual(self.server.request("POST", "/tests/batch", [record(f"obs-b{i}") for i in range(20)],
                                             headers=auth).status, 201)
        forbidden = self.server.request("POST", "/tests", record("obs-x"),
                                        headers={"Authorization": "Bearer " + reader})
        self.assertEqual(forbidden.status, 403)
        return statuses

    # -- the test ---------------------------------------------------------------------------
    def test_metrics_prometheus_rules_console_and_dashboard(self):
        with open(os.path.join(self.observe_dir, "testdata-api.key")) as f:
            metrics_auth = {"Authorization": "Bearer " + f.read().strip()}
        # observe.sh made a key of scope metrics; /metrics still refuses anyone else.
        self.assertEqual(self.server.request("GET", "/metrics").status, 401)
        # Traffic only once every node has been scraped: rate() sees counters rise between
        # two scrapes, not traffic that all came before the first one.
        self.assertTrue(wait_for(lambda: len(self.query('up{job="testdata-api"} == 1')) == self.nodes,
                                 timeout=60), self.prom("/api/v1/targets").decode()[:2000])
        self.send_traffic()

        # /metrics of every node (nginx spreads requests over them), sane values after the traffic.
        texts = []
        for k in range(1, self.nodes + 1):
            r = self.server.request("GET", f"/metrics/node/{k}", headers=metrics_auth)
            self.assertEqual(r.status, 200, r)
            texts.append(r.body.decode())

        def total(series):
            return sum(metric(t, series) or 0 for t in texts)
        self.assertEqual(total('tdapi_requests_total{route="POST /tests",status="201"}'), 40)
        self.assertEqual(total('tdapi_requests_total{route="POST /tests/batch",status="201"}'), 1)
        self.assertEqual(total('tdapi_requests_total{route="POST /tests",status="400"}'), 40)
        self.assertEqual(total('tdapi_auth_denials_total{status="401",reason="no_token"}'), 41)
        self.assertEqual(total('tdapi_auth_denials_total{status="403",reason="forbidden"}'), 1)
        self.assertGreater(total("tdapi_audit_writes_total"), 40)
        self.assertGreater(total("tdapi_commit_batch_size_count"), 0)
        self.assertGreaterEqual(total("tdapi_commit_batch_size_sum"), total("tdapi_commit_batch_size_count"))
        self.assertGreater(total("tdapi_commit_duration_seconds_count"), 0)
        backend = "postgresql" if PG_HOST else "sqlite"
        now = time.time()
        for k, text in enumerate(texts, start=1):
            self.assertEqual(metric(text, 'tdapi_commit_batch_size_bucket{le="+Inf"}'),
                             metric(text, "tdapi_commit_batch_size_count"))
            self.assertLess(abs(metric(text, "tdapi_last_commit_timestamp_seconds") - now), 120)
            started = metric(text, "process_start_time_seconds")
            self.assertTrue(now - 600 < started <= now + 1, started)
            self.assertEqual(metric(text, "tdapi_writes_pending"), 0)
            self.assertEqual(metric(text, 'tdapi_worker_threads{state="busy"}')
                             + metric(text, 'tdapi_worker_threads{state="idle"}'), 8)
            self.assertEqual(metric(text, "tdapi_node_starts"), 1)
            self.assertGreater(metric(text, "tdapi_database_size_bytes"), 0)
            self.assertRegex(text, r'testdata_api_build_info\{version="[^"]+",backend="%s",node="%d"\} 1'
                             % (backend, k))
            self.assertRegex(text, r'tdapi_healthy\{reason="ok"\} 1')
        self.assertGreaterEqual(metric(texts[0], "tdapi_requests_in_flight"), 0)
        if not PG_HOST:
            text = texts[0]
            self.assertEqual(metric(text, "tdapi_requests_in_flight"), 1)  # this request
            self.assertGreater(metric(text, "tdapi_database_pages"), 1)
            self.assertGreater(metric(text, "tdapi_database_max_pages"), metric(text, "tdapi_database_pages"))
            self.assertGreaterEqual(metric(text, "tdapi_wal_size_bytes"), 0)
            self.assertGreater(metric(text, "tdapi_filesystem_size_bytes"), metric(text, "tdapi_filesystem_avail_bytes"))
            # One node: /metrics/node/2 reaches node 1 (nginx has no such location), which
            # refuses to answer for another node.
            self.assertEqual(self.server.request("GET", "/metrics/node/2", headers=metrics_auth).status, 404)
        else:
            self.assertNotIn("tdapi_wal_size_bytes", texts[0])

        # Prometheus: every node up, the recording rules fed (rate() needs two scrapes after
        # the traffic; scrapes and evaluations run every second).
        wanted = ("job:tdapi_commits:rate5m",
                  'sum(job_route_status:tdapi_requests:rate5m{route="POST /tests",status="201"})',
                  "sum(job_status_reason:tdapi_auth_denials:rate5m)",
                  "job:tdapi_commit_batch_size:mean5m")
        seen = {}

        def ready():
            seen.update({e: self.value(e) for e in wanted})
            seen["up"] = len(self.query('up{job="testdata-api"} == 1'))
            return seen["up"] == self.nodes and all((seen[e] or 0) > 0 for e in wanted)
        self.assertTrue(wait_for(ready, timeout=60), seen)
        self.assertEqual(self.value("job:tdapi_requests_5xx:ratio_rate5m"), 0)
        self.assertGreaterEqual(self.value("job:tdapi_commit_batch_size:mean5m"), 1)
        p99 = self.value("job:tdapi_request_duration_seconds:p99_5m")
        self.assertTrue(0 < p99 <= 2.5, p99)
        since = self.query("instance:tdapi_seconds_since_last_commit")
        self.assertTrue(since and 0 <= min(float(s["value"][1]) for s in since) < 120, since)
        targets = [t["labels"]["instance"] for t in json.loads(self.prom("/api/v1/targets"))["data"]["activeTargets"]]
        self.assertEqual(sorted(targets), [f"127.0.0.1:{self.server.port}/node/{k}" for k in range(1, self.nodes + 1)])

        # Every alert of rules.yml is loaded; none of the service's is firing.
        groups = json.loads(self.prom("/api/v1/rules"))["data"]["groups"]
        alerts = {r["name"]: r["state"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        with open(os.path.join(ROOT, "ops", "prometheus", "rules.yml")) as f:
            shipped = set(re.findall(r"^\s+- alert: (\S+)$", f.read(), re.M))
        self.assertEqual(set(alerts), shipped)
        self.assertFalse([a for a, s in alerts.items() if s == "firing"], alerts)

        # The console page, rendered by this Prometheus: numbers in the cells that have them now.
        page = self.prom("/consoles/testdata-api.html").decode()
        cells = {}
        for cell_id in ("tdapi_up", "tdapi_rate", "tdapi_errors", "tdapi_p99", "tdapi_commits",
                        "tdapi_batch", "tdapi_dbsize", "tdapi_denials"):
            m = re.search(r'id="%s">(.*?)</td>' % cell_id, page, re.S)
            self.assertIsNotNone(m, cell_id)
            cells[cell_id] = re.sub(r"<[^>]+>", "", m.group(1)).strip()
        for cell_id, shown in cells.items():
            self.assertRegex(shown, r"^[0-9]", (cell_id, cells))
            self.assertNotIn("NaN", shown, (cell_id, cells))
        self.assertEqual(cells["tdapi_up"], f"{self.nodes} / {self.nodes}")
        self.assertRegex(cells["tdapi_dbsize"], r"B$")
        self.assertRegex(page, r"<td>POST /tests</td><td>201</td><td[^>]*>[0-9.e+-]+ /s</td>")
        self.assertNotIn("error executing template", page)
        self.assertIn("PromConsole.Graph", page)

        # The Grafana dashboard: every expression valid here, and most with data already.
        with_data = 0
        exprs = dashboard_exprs()
        for title, expr in exprs:
            with_data += bool(self.query(expr))
        self.assertGreaterEqual(with_data, len(exprs) - 3, "dashboard expressions without data")


class Dashboard(unittest.TestCase):
    """ops/grafana/testdata-api.json as Grafana imports it, checked without a server."""

    def test_dashboard_is_importable_and_its_promql_parses(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        self.assertEqual([i["name"] for i in dash["__inputs"]], ["DS_PROMETHEUS"])
        self.assertEqual(dash["__inputs"][0]["pluginId"], "prometheus")
        self.assertTrue(dash["uid"] and dash["title"])
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for p in dash["panels"]:
            self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"])
            self.assertTrue(p["targets"], p["title"])
            for t in p["targets"]:
                self.assertEqual(t["datasource"]["uid"], "${DS_PROMETHEUS}")
        # promtool parses every expression (as a recording rule of a scratch rules file).
        exprs = dashboard_exprs()
        with tempfile.TemporaryDirectory(prefix="tdapi-dash-") as d:
            path = os.path.join(d, "dashboard-exprs.yml")
            with open(path, "w") as f:
                f.write("groups:\n  - name: dashboard\n    rules:\n")
                for i, (_, expr) in enumerate(exprs):
                    f.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(expr)}\n")
            p = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn(f"SUCCESS: {len(exprs)} rules found", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
