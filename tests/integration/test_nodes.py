#!/usr/bin/env python3
"""test_nodes.py: APP_NODES app processes behind one nginx upstream.

Always (the integration label): more than one node without DATABASE_URL is refused (exit 78:
SQLite is served by one process), a malformed APP_NODES is bad usage (exit 2), one node keeps its
run/app.sock and run/app.pid, and DATABASE_URL is shown only with its password hidden.

With PostgreSQL (TEST_PG_HOST set, the postgresql label; the harness gives the Server a database
in DATABASE_URL): three nodes on three sockets serve one database; 50 concurrent POSTs of one
test_id make one 201 and 49 409; a node SIGKILLed under load is restarted on its own, every GET
meanwhile is answered 200 and every acknowledged (201) record is there afterwards (a POST that was
in flight on the killed node may fail with 502/503: recorded, never a lost 201); a hung node's
GETs go to the other nodes while a POST sent to it is not passed on; a start-up failure (78) of
one node stops them all."""

import collections
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import fcgi_client  # noqa: E402
from harness import APP_BIN, ROOT, Server, free_port, record, stopped, wait_for  # noqa: E402

NODES = 3
PG_REASON = ("TEST_PG_HOST is not set: the PostgreSQL part of this suite runs under the "
             "postgresql label (ctest -L postgresql), against a database server")


def run_sh(env, timeout=60):
    """Runs scripts/run.sh expecting it to end by itself; returns (exit status, output). Should it
    still run after `timeout` seconds, it is stopped with SIGTERM (which stops what it started)
    and the status says so."""
    p = subprocess.Popen([os.path.join(ROOT, "scripts", "run.sh")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()
        out, _ = p.communicate(timeout=60)
        return "still running after %ss" % timeout, out
    return p.returncode, out


def sqlite_env(data_dir, **extra):
    env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=data_dir, PORT=str(free_port()))
    env.pop("DATABASE_URL", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(v.partition("=")[::2] for v in f.read().decode(errors="replace").split("\0") if v)


class NodesWithoutPostgres(unittest.TestCase):
    def test_more_than_one_node_without_database_url_is_refused_before_anything_starts(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-nodes-") as d:
            for n in (2, 3, 16):
                data = os.path.join(d, f"data-{n}")
                rc, out = run_sh(sqlite_env(data, APP_NODES=n))
                self.assertEqual(rc, 78, out)
                self.assertIn(f"APP_NODES={n} needs DATABASE_URL", out)
                self.assertIn("SQLite serves from one app process", out)
                self.assertFalse(os.path.exists(data), "refused, yet DATA_DIR was created")

    def test_app_nodes_must_be_a_whole_number_from_1_to_16(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-nodes-") as d:
            for value in ("0", "17", "3x", "-1", " 2", "01", "1.5"):
                rc, out = run_sh(sqlite_env(os.path.join(d, "data"), APP_NODES=value,
                                            DATABASE_URL="postgresql://127.0.0.1:1/x"))
                self.assertEqual(rc, 78, (value, out))
                self.assertIn("APP_NODES must be a whole number from 1 to 16", out, value)

    def test_one_node_keeps_app_sock_and_app_pid_and_drops_a_previous_runs_nodes(self):
        d = tempfile.mkdtemp(prefix="tdapi-nodes-")
        os.makedirs(os.path.join(d, "run"))
        for stale in ("app-2.pid", "app-2.sock"):  # left by a run with more nodes
            with open(os.path.join(d, "run", stale), "w") as f:
                f.write("1\n")
        try:
            with Server(data_dir=d, APP_NODES=1) as s:
                run = os.path.join(d, "run")
                self.assertTrue(stat.S_ISSOCK(os.stat(os.path.join(run, "app.sock")).st_mode))
                self.assertEqual(sorted(n for n in os.listdir(run) if n.startswith("app")),
                                 ["app.pid", "app.sock"])
                with open(os.path.join(run, "app.pid")) as f:
                    self.assertRegex(f.read(), r"^[0-9]+\n$")
                self.assertTrue(alive(s.pid_of("app")))
                with open(os.path.join(d, "nginx.conf")) as f:
                    servers = re.findall(r"^\s*server unix:(\S+) ", f.read(), re.M)
                self.assertEqual(servers, [os.path.join(os.path.realpath(d), "run", "app.sock")])
                self.assertEqual(s.request("POST", "/tests", record("one-node")).status, 201)
                self.assertEqual(s.request("GET", "/tests/one-node").status, 200)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_database_url_is_shown_only_with_its_password_hidden(self):
        # Nothing listens on the port: the app cannot start (it may not know PostgreSQL at all),
        # so run.sh ends; what it said and logged on the way must not hold the password.
        port = free_port()
        secret = "Tk7sq" + uuid.uuid4().hex[:8]
        cases = [
            (f"postgresql://lab:{secret}@127.0.0.1:{port}/tdapi", f"postgresql://lab:***@127.0.0.1:{port}/tdapi"),
            (f"postgres://127.0.0.1:{port}/tdapi?user=lab&password={secret}&connect_timeout=2",
             f"postgres://127.0.0.1:{port}/tdapi?user=lab&password=***&connect_timeout=2"),
            (f"host=127.0.0.1 port={port} dbname=tdapi user=lab password='{secret} Wp9x\\' q'",
             f"host=127.0.0.1 port={port} dbname=tdapi user=lab password=***"),
            (f"host=127.0.0.1 port={port} password={secret} dbname=tdapi",
             f"host=127.0.0.1 port={port} password=*** dbname=tdapi"),
        ]
        with tempfile.TemporaryDirectory(prefix="tdapi-nodes-") as d:
            for i, (url, shown) in enumerate(cases):
                data = os.path.join(d, f"data-{i}")
                rc, out = run_sh(sqlite_env(data, DATABASE_URL=url, START_TIMEOUT=10,
                                            APP_NODES=2), timeout=90)
                with open(os.path.join(data, "logs", "app.log"), errors="replace") as f:
                    log = f.read()
                for where, text in (("output", out), ("app.log", log)):
                    self.assertNotIn(secret, text, (where, url))
                    self.assertNotIn("Wp9x", text, (where, url))
                    self.assertIn(shown, text, (where, url))


@unittest.skipUnless(os.environ.get("TEST_PG_HOST"), PG_REASON)
class NodesOnPostgres(unittest.TestCase):
    def server(self, **env):
        s = Server(APP_NODES=NODES, **env)
        self.assertTrue(s.env.get("DATABASE_URL"),
                        "TEST_PG_HOST is set but the Server has no DATABASE_URL (harness)")
        self.prefix = "n" + uuid.uuid4().hex[:10]
        return s

    def node_pids(self, s):
        return [s.pid_of(f"app-{k}") for k in range(1, NODES + 1)]

    def sock(self, s, k):
        return os.path.join(s.data_dir, "run", f"app-{k}.sock")

    def direct(self, s, k, method, path, body=None):
        params = {"REQUEST_METHOD": method, "REQUEST_URI": path, "REQUEST_ID": f"direct-{k}"}
        stdin = b""
        if body is not None:
            stdin = body.encode()
            params.update({"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(stdin))})
        return fcgi_client.request(self.sock(s, k), params, stdin=stdin)

    def node_ready(self, s, k, old_pid):
        try:
            return s.pid_of(f"app-{k}") != old_pid and self.direct(s, k, "GET", "/healthz")[0] == 200
        except (OSError, RuntimeError, ValueError):
            return False

    def test_three_nodes_on_three_sockets_serve_one_database(self):
        s = self.server()
        with s:
            pids = self.node_pids(s)
            self.assertEqual(len(set(pids)), NODES)
            with open(os.path.join(s.data_dir, "run", "app.pid")) as f:
                self.assertEqual([int(p) for p in f.read().split()], pids)
            for k, pid in enumerate(pids, 1):
                self.assertTrue(alive(pid))
                self.assertTrue(stat.S_ISSOCK(os.stat(self.sock(s, k)).st_mode))
                self.assertEqual(environ(pid).get("SOCKET"),
                                 os.path.join(os.path.realpath(s.data_dir), "run", f"app-{k}.sock"))
            self.assertFalse(os.path.exists(os.path.join(s.data_dir, "run", "app.sock")))
            with open(os.path.join(s.data_dir, "nginx.conf")) as f:
                conf = f.read()
            servers = re.findall(r"^\s*server unix:(\S+) max_fails=\d+ fail_timeout=\w+;$", conf, re.M)
            self.assertEqual([os.path.basename(p) for p in servers],
                             [f"app-{k}.sock" for k in range(1, NODES + 1)])
            # One database: written through node 1's socket, read through each node's.
            tid = self.prefix + "-one-db"
            body = '{"test_id":"%s","patient_id":"p1","clinic_id":"%s","test_type":"blood","result":"ok"}' % (
                tid, self.prefix)
            self.assertEqual(self.direct(s, 1, "POST", "/tests", body)[0], 201)
            for k in range(1, NODES + 1):
                self.assertEqual(self.direct(s, k, "GET", "/tests/" + tid)[0], 200, k)
            self.assertEqual(self.direct(s, 3, "POST", "/tests", body)[0], 409)
            statuses = collections.Counter(s.request("GET", "/tests/" + tid).status for _ in range(30))
            self.assertEqual(statuses, {200: 30})
            # SIGHUP to the supervisor (log rotation) reaches every node.
            os.kill(s.pid_of("supervisor"), signal.SIGHUP)
            self.assertTrue(wait_for(lambda: sum(l.get("event") == "log_reopened"
                                                 for l in s.json_lines("app.log")) == NODES, 10))
            self.assertEqual(self.node_pids(s), pids)
            self.assertEqual(s.stop(), 0, s.run_output()[-2000:])
            for pid in pids:
                self.assertTrue(wait_for(lambda: not alive(pid), 10), f"node {pid} left running")

    def test_each_node_is_given_the_database_url(self):
        with self.server() as s:
            for pid in self.node_pids(s):
                env = environ(pid)
                self.assertEqual(env.get("DATABASE_URL"), s.env["DATABASE_URL"])
                self.assertNotIn("DB_PATH", env)

    def test_fifty_concurrent_posts_of_one_test_id_make_one_201_and_49_409(self):
        with self.server() as s:
            tid, n = self.prefix + "-race", 50
            barrier = threading.Barrier(n, timeout=30)
            results = [None] * n

            def post(i):
                barrier.wait()
                try:
                    results[i] = s.request("POST", "/tests", record(tid, clinic=self.prefix,
                                                                    result=f"r{i}"), timeout=30).status
                except OSError as e:
                    results[i] = repr(e)

            threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(collections.Counter(results), {201: 1, 409: n - 1}, results)
            winner = results.index(201)
            r = s.request("GET", "/tests/" + tid)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["test"]["result"], f"r{winner}")  # the 201's record, whole

    def test_a_node_killed_under_load_loses_no_acknowledged_record_and_no_get(self):
        with self.server() as s:
            seeds = [f"{self.prefix}-seed-{i}" for i in range(5)]
            for tid in seeds:
                self.assertEqual(s.request("POST", "/tests", record(tid, clinic=self.prefix + "-seed")).status, 201)
            lock, stop = threading.Lock(), threading.Event()
            acked, failed, reads, bad_reads = [], [], collections.Counter(), []
            deadline = time.monotonic() + 90

            def write(n):
                for i in range(5000):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    tid = f"{self.prefix}-w{n}-{i}"
                    try:
                        status = s.request("POST", "/tests", record(tid, clinic=self.prefix), timeout=30).status
                    except OSError as e:
                        status = repr(e)
                    with lock:
                        (acked.append(tid) if status == 201 else failed.append((tid, status, time.monotonic())))

            def read(n):
                for i in range(20000):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    path = ("/tests/" + seeds[i % len(seeds)] if i % 4
                            else f"/tests?clinic_id={self.prefix}-seed")
                    try:
                        r = s.request("GET", path, timeout=30)
                        status = r.status
                        if status == 200 and i % 4 == 0 and r.json()["count"] != len(seeds):
                            status = "short listing"
                    except (OSError, ValueError) as e:
                        status = repr(e)
                    with lock:
                        reads[status] += 1
                        if status != 200:
                            bad_reads.append((path, status, time.monotonic()))

            threads = ([threading.Thread(target=write, args=(n,)) for n in range(6)]
                       + [threading.Thread(target=read, args=(n,)) for n in range(3)])
            others = {k: s.pid_of(f"app-{k}") for k in (1, 3)}
            victim = s.pid_of("app-2")
            for t in threads:
                t.start()
            try:
                self.assertTrue(wait_for(lambda: len(acked) >= 200, 30), "no load")
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                self.assertTrue(wait_for(lambda: self.node_ready(s, 2, victim), 30), "node 2 not restarted")
                ready_at = time.monotonic()
                at_restart = len(acked)
                # Load goes on through the restart and until nginx tries node 2 again.
                self.assertTrue(wait_for(lambda: len(acked) >= at_restart + 300
                                         and time.monotonic() > ready_at + 3, 40))
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            sys.stderr.write(f"\n  node 2 killed: {len(acked)} POSTs acknowledged, {len(failed)} failed "
                             f"{[(t, st, round(at - killed_at, 2)) for t, st, at in failed]}; "
                             f"GETs {dict(reads)}; node 2 back after {ready_at - killed_at:.2f} s\n")
            self.assertEqual(bad_reads, [], "a GET failed while a node was down")
            self.assertGreater(reads[200], 100)
            self.assertEqual([f for f in failed if f[1] not in (502, 503)], [], "POSTs failed otherwise")
            self.assertLessEqual(len(failed), 6 * 2, "more failed POSTs than were in flight on node 2")
            # Every acknowledged record is there, whole (and any failed one is whole or absent).
            lost = []
            for tid in acked:
                r = s.request("GET", "/tests/" + tid)
                if r.status != 200 or r.json()["test"]["patient_id"] != "p1":
                    lost.append((tid, r.status))
            self.assertEqual(lost, [], f"{len(lost)} acknowledged records lost")
            for tid, _, _ in failed:
                self.assertIn(s.request("GET", "/tests/" + tid).status, (200, 404), tid)
            # Restarted on its own; the other nodes untouched, the supervisor still serving.
            restarted = [l for l in s.json_lines("app.log") if l["event"] == "app_restarted"]
            self.assertEqual([l["detail"] for l in restarted],
                             ["node 2: the app exited with status 137; restarting it"])
            self.assertEqual({k: s.pid_of(f"app-{k}") for k in (1, 3)}, others)
            self.assertTrue(all(alive(p) for p in others.values()))
            self.assertIsNone(s.proc.poll())
            self.assertEqual(s.request("POST", "/tests", record(self.prefix + "-after")).status, 201)

    def test_a_hung_node_gets_no_get_and_a_post_sent_to_it_is_not_passed_on(self):
        with self.server(FASTCGI_READ_TIMEOUT="1s") as s:
            hung = s.pid_of("app-3")
            # A node's first write opens its database connection, which on a loaded machine can
            # take longer than the 1 s timeout (a 504 once): warm every node up first, then take
            # a test that is surely there.
            for i in range(6):
                s.request("POST", "/tests", record(f"{self.prefix}-warm-{i}", clinic=self.prefix),
                          timeout=30)
            tid = None
            for attempt in range(10):
                candidate = f"{self.prefix}-h{attempt}"
                if s.request("POST", "/tests", record(candidate, clinic=self.prefix),
                             timeout=30).status == 201:
                    tid = candidate
                    break
            self.assertIsNotNone(tid, "no POST answered 201 within the 1 s timeout")
            os.kill(hung, signal.SIGSTOP)
            posts = []
            try:
                self.assertTrue(wait_for(lambda: stopped(hung)))
                # In turn, one of three POSTs goes to node 3: it times out there (504), and is
                # not passed on to another node (which would answer 201).
                for i in range(6):
                    r = s.request("POST", "/tests", record(f"{tid}-{i}", clinic=self.prefix), timeout=30)
                    posts.append((f"{tid}-{i}", r.status))
                    if r.status == 504:
                        break
                gets = collections.Counter(s.request("GET", "/tests/" + tid, timeout=30).status
                                           for _ in range(12))
            finally:
                os.kill(hung, signal.SIGCONT)
            self.assertEqual(posts[-1][1], 504, posts)
            self.assertEqual({st for _, st in posts[:-1]}, {201} if len(posts) > 1 else set(), posts)
            self.assertEqual(gets, {200: 12})
            # The 504'd POST may still have been committed by node 3 once it went on: 200 or 404.
            self.assertTrue(wait_for(lambda: s.request("GET", "/tests/" + posts[-1][0]).status in (200, 404)))
            for t, st in posts[:-1]:
                self.assertEqual(s.request("GET", "/tests/" + t).status, 200)
            self.assertEqual(s.pid_of("app-3"), hung)  # a hung node is nginx's matter, not a restart

    def test_a_start_up_failure_of_one_node_stops_every_node(self):
        s = self.server(THREADS=64)
        s.start()
        try:
            pids = self.node_pids(s)
            nginx = s.pid_of("nginx")
            # Node 2's restart inherits a descriptor limit too low for 64 threads: exit 78.
            subprocess.run(["prlimit", f"--pid={s.proc.pid}", "--nofile=64:64"], check=True)
            os.kill(pids[1], signal.SIGKILL)
            rc = s.proc.wait(60)
        finally:
            if s.proc.poll() is None:
                s.kill_all()
            s.output.close()
        self.assertEqual(rc, 78, s.run_output()[-2000:])
        for pid in pids + [nginx]:
            self.assertTrue(wait_for(lambda: not alive(pid), 10), f"{pid} left running")
        log = s.read_log("app.log").decode(errors="replace")
        shutil.rmtree(s.data_dir, ignore_errors=True)
        self.assertIn("RLIMIT_NOFILE", log)
        self.assertIn('"event":"app_exited","detail":"node 2: the app exited with status 78', log)


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    if result.testsRun and len(result.skipped) == result.testsRun:
        sys.exit(77)  # every test skipped (no TEST_PG_HOST): CTest's SKIP_RETURN_CODE
    sys.exit(0 if result.wasSuccessful() else 1)
