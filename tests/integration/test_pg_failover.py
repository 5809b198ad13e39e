#!/usr/bin/env python3
"""test_pg_failover.py (PostgreSQL: its own primary and synchronous standby, made by
scripts/pg-test-server.sh sync-start in a directory of its own). The service (two app nodes)
writes through a libpq two-host URL (target_session_attrs=read-write). Under load, the primary
stalls and is killed, and the standby is promoted: no acknowledged write may be missing, a cursor
taken before the failover must see every row once, and the audit chain must continue through a
documented failover boundary (`audit verify` passes). Then the old primary is started again at
its old address, where new connections find it first: no write may land on it (fencing), and
/healthz must say why."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import APP_BIN, ROOT, Server, record, wait_for  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "pg-test-server.sh")
DEADLINE_MS = 2000
CLINIC = "fo"
# The primary stalls this long before it is killed: longer than any write may wait.
STALL_S = 14
# A write's answer: its deadline and the cancel's grace (1 s), then a new connection's
# connect_timeout (5 s), and room for a loaded machine; well below the stall. A stalled server
# never answers the cancel request itself; waiting for it held writes until the server died.
ANSWER_BOUND_S = 1 + 5 + 4 + DEADLINE_MS / 1000


def pg(command, directory):
    subprocess.run([SCRIPT, command, directory], check=True, capture_output=True, timeout=120)


def psql(host, sql, database=CLINIC):
    return harness.psql(sql, database, host=host).strip()


def cluster_pids(data_dir):
    """The postmaster of the cluster in data_dir and its children."""
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == postmaster:
            pids.append(int(entry))
    return pids


def signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Posters:
    """Clients posting unique records, bounded in count and time; every answer kept."""

    def __init__(self, server, prefix, threads=4, max_each=400, max_seconds=25):
        self.server, self.prefix = server, prefix
        self.lock = threading.Lock()
        self.answers = []  # (test_id, status, message)
        self.slowest = 0.0
        self.until = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(n, max_each))
                        for n in range(threads)]

    def _run(self, n, max_each):
        for i in range(max_each):
            if time.monotonic() > self.until:
                return
            tid = f"{self.prefix}-{n}-{i}"
            start = time.monotonic()
            try:
                r = self.server.request("POST", "/tests", record(tid, clinic=CLINIC), timeout=60)
                status, message = r.status, (r.json().get("message", "") if r.body else "")
            except OSError as e:
                status, message = "conn_error", str(e)
            with self.lock:
                self.answers.append((tid, status, message))
                self.slowest = max(self.slowest, time.monotonic() - start)
            if status != 201:
                time.sleep(0.05)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        for t in self.threads:  # each ends by its count or time bound
            t.join()

    def acked(self):
        return [tid for tid, status, _ in self.answers if status == 201]

    def statuses(self):
        out = {}
        for _, status, _ in self.answers:
            out[status] = out.get(status, 0) + 1
        return out


class Failover(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tdapi-pgfo-", dir="/tmp")
        pg("sync-start", cls.dir)
        cls.primary, cls.standby = cls.dir, os.path.join(cls.dir, "standby")
        psql(cls.primary, f"CREATE DATABASE {CLINIC}", database="postgres")

    @classmethod
    def tearDownClass(cls):
        subprocess.run([SCRIPT, "stop", cls.dir], capture_output=True, timeout=120)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def walk(self, s, cursor=None, limit=50):
        """Every id of the clinic from cursor on, in listing order, and the pages' count."""
        ids = []
        for _ in range(10000):  # bounded: far more pages than the test writes
            path = f"/tests?clinic_id={CLINIC}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            r = s.request("GET", path)
            self.assertEqual(r.status, 200, r.body)
            page = r.json()
            ids += [t["test_id"] for t in page["tests"]]
            cursor = page.get("next_cursor")
            if not cursor:
                return ids
        self.fail("the walk did not end")

    def test_failover_loses_nothing_acknowledged_and_the_old_primary_gets_no_write(self):
        url = (f"postgresql://tdapi@/{CLINIC}?host={self.primary},{self.standby}"
               "&target_session_attrs=read-write")
        # The data dir outlives the first service: the fence file in it is the point.
        data_dir = tempfile.mkdtemp(prefix="tdapi-it-fo-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        with Server(data_dir=data_dir, DATABASE_URL=url, APP_NODES="2",
                    DATABASE_ROUND_TRIP_TIMEOUT_MS=str(DEADLINE_MS)) as s:
            warm = [f"warm-{i}" for i in range(30)]
            for tid in warm:
                self.assertEqual(s.request("POST", "/tests", record(tid, clinic=CLINIC)).status, 201)
            # A reader part way through the clinic when the primary fails.
            r = s.request("GET", f"/tests?clinic_id={CLINIC}&limit=10")
            first_page = [t["test_id"] for t in r.json()["tests"]]
            cursor = r.json()["next_cursor"]
            system = psql(self.primary, "SELECT system_identifier FROM pg_control_system()")
            fence = os.path.join(s.data_dir, "postgresql-timeline")
            self.assertTrue(wait_for(lambda: os.path.exists(fence), timeout=10))
            with open(fence) as f:
                self.assertEqual(f.read().strip(), f"{system}:1")

            # Under load: the primary stalls (every process stopped), then dies; the standby is
            # promoted.
            data = os.path.join(self.primary, "data")
            with Posters(s, "load") as load:
                time.sleep(1.5)
                pids = cluster_pids(data)
                signal_all(pids, signal.SIGSTOP)
                time.sleep(STALL_S)
                signal_all(pids, signal.SIGKILL)
                stalled_at = time.monotonic()
                pg("standby-promote", self.dir)
                promoted_at = time.monotonic()
            statuses = load.statuses()
            # Writes resume on the promoted standby.
            self.assertTrue(wait_for(lambda: s.request(
                "POST", "/tests", record(f"resume-{time.monotonic_ns()}", clinic=CLINIC)).status == 201,
                timeout=60))
            after = [f"after-{i}" for i in range(20)]
            for tid in after:
                self.assertEqual(s.request("POST", "/tests", record(tid, clinic=CLINIC)).status, 201)
            acked = warm + load.acked() + after
            print(f"\n  failover under load: {statuses}; slowest answer {load.slowest:.2f} s; "
                  f"promoted {promoted_at - stalled_at:.2f} s after the kill", file=sys.stderr)
            # Every write answered within its bound while the server stalled: no hang.
            self.assertLess(load.slowest, ANSWER_BOUND_S)
            # 201 or 503, never a 500 or a gateway error.
            self.assertEqual(set(statuses) - {201, 503}, set(), statuses)
            self.assertGreater(len(load.acked()), 0, statuses)

            # Every acknowledged write is there, and the cursor taken before sees every row once.
            rest = self.walk(s, cursor)
            seen = first_page + rest
            self.assertEqual(len(seen), len(set(seen)), "a row was listed twice")
            missing = set(acked) - set(seen)
            self.assertEqual(missing, set(), f"{len(missing)} acknowledged writes missing")
            for tid in load.acked()[:20]:
                self.assertEqual(s.request("GET", f"/tests/{tid}").status, 200, tid)

            # The failover is marked: the fence moved, seq moved past the old numbers, and the
            # audit chain continues through one documented boundary.
            with open(fence) as f:
                self.assertEqual(f.read().strip(), f"{system}:2")
            boundary = json.loads(psql(self.standby, "SELECT detail FROM audit WHERE action = 'failover'"))
            self.assertEqual(boundary["from"], {"system_identifier": system, "timeline": 1})
            self.assertEqual(boundary["to"], {"system_identifier": system, "timeline": 2})
            self.assertGreater(int(psql(self.standby, f"SELECT seq FROM tests WHERE test_id = '{after[0]}'")),
                               1 << 40)
            verify = subprocess.run([APP_BIN, "audit", "verify", "--db",
                                     f"postgresql://tdapi@/{CLINIC}?host={self.standby}"],
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
            self.assertEqual(json.loads(verify.stdout)["failover_boundaries"], 1, verify.stdout)

            # Split brain: the old primary starts again at its old address (timeline 1, read-write,
            # first in the URL). Node 1, killed and started again, reaches it first with every
            # new connection: the fence refuses it for reads and writes alike, and the node goes
            # to the promoted server instead.
            pg("primary-start", self.dir)
            before = psql(self.primary, "SELECT count(*) FROM tests")
            node = s.pid_of("app")
            os.kill(node, signal.SIGKILL)
            self.assertTrue(wait_for(lambda: s.pid_of("app") != node, timeout=30))
            # Node 1 serves again (nginx routes /metrics/node/1 to it alone).
            self.assertTrue(wait_for(lambda: s.request("GET", "/metrics/node/1").status == 200,
                                     timeout=30))
            # Reads see the writes made since the failover, whichever node answers.
            for tid in after:
                self.assertEqual(s.request("GET", f"/tests/{tid}").status, 200, tid)
            health = [s.request("GET", "/healthz") for _ in range(10)]
            split = Posters(s, "split", threads=2, max_each=30, max_seconds=10)
            with split:
                pass
            print(f"  old primary back: {split.statuses()}; healthz "
                  f"{sorted(set(r.status for r in health))}", file=sys.stderr)
            self.assertEqual(psql(self.primary, "SELECT count(*) FROM tests"), before,
                             "a write landed on the old primary")
            # Node 1 went on to the promoted server: nothing refused (a 503 of a loaded machine,
            # busy or past its deadline, is not what this is about).
            self.assertEqual(set(split.statuses()) - {201, 503}, set(), split.statuses())
            self.assertGreater(split.statuses().get(201, 0), 0)
            self.assertEqual([m for _, _, m in split.answers if "fencing" in m], [])
            self.assertEqual([r.body for r in health if b"fencing" in r.body], [])
            for tid in split.acked():  # on the promoted server
                self.assertEqual(psql(self.standby, f"SELECT count(*) FROM tests WHERE test_id = '{tid}'"),
                                 "1", tid)
            refused = [e for e in s.json_lines("app.log") if e.get("event") == "fenced_host"]
            self.assertTrue(refused)
            self.assertIn(self.primary, refused[0]["detail"])

        # With the old primary as the only server named, a node cannot start: it waits, saying
        # why, and nothing is written there.
        alone = Server(data_dir=data_dir, DATABASE_URL=f"postgresql://tdapi@/{CLINIC}?host={self.primary}",
                       DATABASE_ROUND_TRIP_TIMEOUT_MS=str(DEADLINE_MS))
        alone.start(wait=False)
        try:  # __exit__: stopped, and its output closed
            def says_fenced():
                return any(e.get("event") == "database_unavailable" and "fencing" in e.get("detail", "")
                           for e in alone.json_lines("app.log"))
            self.assertTrue(wait_for(says_fenced, timeout=30))
            try:  # nginx answers for the node that is not there, or is not up yet itself
                status = alone.request("POST", "/tests", record("alone-1", clinic=CLINIC)).status
            except OSError:
                status = "conn_error"
            self.assertNotEqual(status, 201)
        finally:
            alone.__exit__(None, None, None)
        self.assertEqual(psql(self.primary, "SELECT count(*) FROM tests"), before)

if __name__ == "__main__":
    unittest.main(verbosity=2)
