#!/usr/bin/env python3
"""test_pg_replica.py (PostgreSQL): reads from a streaming replica (DATABASE_READ_URL) with
read-your-writes by the commit position a write's answer carries (X-Commit-Position).

It runs its own primary (scripts/pg-test-server.sh) and a hot standby of it
(scripts/pg-test-replica.sh, pg_basebackup -R) on unix sockets, and the service (nginx + the
app, AUDIT on: every read's audit entry is a write on the primary) with DATABASE_URL on the
primary and DATABASE_READ_URL on the replica."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import harness  # noqa: E402
from harness import ROOT, Server, _pg_tool  # noqa: E402

DATABASE = "replica_test"


def psql(host, sql, database=DATABASE):
    return harness.psql(sql, database, host=host).strip()


def record(test_id):
    return {"test_id": test_id, "patient_id": "p-" + test_id, "clinic_id": "c1",
            "test_type": "blood", "result": "negative"}


class ReadReplica(unittest.TestCase):
    """The service with DATABASE_URL on the primary and DATABASE_READ_URL on the replica (set up
    once for the module: setUpModule)."""

    @classmethod
    def start_servers(cls):
        base = tempfile.mkdtemp(prefix="tdapi-replica-", dir="/tmp")
        os.chmod(base, 0o755)
        cls.primary = os.path.join(base, "primary")
        cls.replica = os.path.join(base, "replica")
        cls.base = base
        subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "start", cls.primary],
                       check=True, timeout=120)
        psql(cls.primary, f'CREATE DATABASE "{DATABASE}"', database="postgres")
        subprocess.run([os.path.join(ROOT, "scripts", "pg-test-replica.sh"), "start", cls.primary,
                        cls.replica], check=True, timeout=120)
        url = "postgresql://tdapi@/" + DATABASE + "?host="
        cls.server = Server(DATABASE_URL=url + cls.primary, DATABASE_READ_URL=url + cls.replica,
                            AUTH="off", AUDIT="on").start()
        # The schema reaches the replica by replication before the first read there.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if psql(cls.replica, "SELECT to_regclass('tests') IS NOT NULL") == "t":
                    break
            except RuntimeError:
                pass
            time.sleep(0.1)

    @classmethod
    def stop_servers(cls):
        cls.server.stop()
        subprocess.run([os.path.join(ROOT, "scripts", "pg-test-replica.sh"), "stop", cls.replica],
                       timeout=120)
        subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "stop", cls.primary],
                       timeout=120)
        os.rmdir(cls.base)

    def post(self, test_id):
        r = self.server.request("POST", "/tests", record(test_id))
        self.assertEqual(r.status, 201, r.body)
        position = r.headers.get("x-commit-position")
        self.assertRegex(position or "", r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
        return position

    def test_reads_with_the_position_see_every_write(self):
        # POST then GET at once, through the replica: a read that sends the position back never
        # misses the record it follows (it waits for the replica, or goes to the primary).
        stale = []
        for i in range(300):
            test_id = f"ryw-{i}"
            position = self.post(test_id)
            r = self.server.request("GET", "/tests/" + test_id, headers={"X-Commit-Position": position})
            if r.status != 200:
                stale.append((test_id, r.status))
        self.assertEqual(stale, [])
        # The replica served reads: its sessions of the app (application_name testdata-api).
        self.assertGreater(int(psql(self.replica, "SELECT count(*) FROM pg_stat_activity"
                                                  " WHERE application_name = 'testdata-api'")), 0)

    def test_a_paused_replica_serves_reads_without_the_position_and_the_primary_with_it(self):
        psql(self.replica, "SELECT pg_wal_replay_pause()")
        try:
            position = self.post("paused-1")
            # Without the position: the replica's state, which has not the record (so the reads
            # really come from the replica).
            r = self.server.request("GET", "/tests/paused-1")
            self.assertEqual(r.status, 404, r.body)
            r = self.server.request("GET", "/tests?clinic_id=c1")
            self.assertEqual(r.status, 200, r.body)
            self.assertNotIn("paused-1", [t["test_id"] for t in json.loads(r.body)["tests"]])
            # With it: the replica does not catch up within its wait, the primary answers.
            t0 = time.monotonic()
            r = self.server.request("GET", "/tests/paused-1", headers={"X-Commit-Position": position})
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body)["test"]["test_id"], "paused-1")
            self.assertGreaterEqual(time.monotonic() - t0, 0.5)  # it waited for the replica first
            r = self.server.request("POST", "/tests/search", {"clinic_id": "c1"},
                                    headers={"X-Commit-Position": position})
            self.assertEqual(r.status, 200, r.body)
            self.assertIn("paused-1", [t["test_id"] for t in json.loads(r.body)["tests"]])
        finally:
            psql(self.replica, "SELECT pg_wal_replay_resume()")
        # Replaying again, the replica serves the position without going to the primary.
        r = self.server.request("GET", "/tests/paused-1", headers={"X-Commit-Position": position})
        self.assertEqual(r.status, 200, r.body)

    def test_a_position_the_primary_has_not_reached_is_read_from_the_primary_without_waiting(self):
        # A forged position (or one from a server no longer written to): no replica will reach
        # it, so waiting for one only holds a worker and a replica connection for 1 s.
        self.post("forged-1")
        for forged in ("FFFFFFF0/0", "7FFFFFFF/FFFFFFFF"):
            t0 = time.monotonic()
            r = self.server.request("GET", "/tests/forged-1", headers={"X-Commit-Position": forged})
            self.assertEqual(r.status, 200, r.body)
            self.assertLess(time.monotonic() - t0, 0.5, forged)

    def test_a_lagging_replica_costs_one_wait_not_one_per_read_or_per_page(self):
        # A listing of several pages (16, then up to 1,000 rows a page).
        for b in range(3):
            tests = [dict(record(f"lag-{b}-{i}"), clinic_id="c-lag") for i in range(500)]
            r = self.server.request("POST", "/tests/batch", tests)
            self.assertEqual(r.status, 201, r.body)
        psql(self.replica, "SELECT pg_wal_replay_pause()")
        try:
            position = self.post("lag-last")
            t0 = time.monotonic()
            r = self.server.request("GET", "/tests?clinic_id=c-lag",
                                    headers={"X-Commit-Position": position})
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(len(json.loads(r.body)["tests"]), 1500)
            self.assertLess(time.monotonic() - t0, 1.8)  # one wait, not one per page
            t0 = time.monotonic()
            for _ in range(5):
                r = self.server.request("GET", "/tests/lag-last",
                                        headers={"X-Commit-Position": position})
                self.assertEqual(r.status, 200, r.body)
            self.assertLess(time.monotonic() - t0, 2.5)  # not 1 s each
        finally:
            psql(self.replica, "SELECT pg_wal_replay_resume()")
            time.sleep(1.1)  # the service waits for the replica again (the other tests)

    def test_a_read_the_replica_fails_is_answered_by_the_primary(self):
        # The replica gives up on the read (here its lock_timeout, 5 s, while the replayed lock
        # of a primary's transaction holds the table; a query cancelled for a conflict with
        # recovery, 40001, is answered the same): the primary answers it once the lock is gone
        # there, rather than a 503.
        self.post("failing-1")
        locker = subprocess.Popen(
            [_pg_tool("psql"), "-X", "-q", "-h", self.primary, "-U", "tdapi", "-d", DATABASE,
             "-c", "BEGIN; LOCK TABLE tests IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5.8);"
                   " COMMIT"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 5
            # (a commit flushes the log, with the lock's record, for the replica to receive)
            while time.time() < deadline and psql(self.primary, "SELECT txid_current()") and psql(
                    self.replica, "SELECT count(*) FROM pg_locks WHERE mode ="
                                  " 'AccessExclusiveLock' AND relation = 'tests'::regclass") == "0":
                time.sleep(0.02)
            self.assertLess(time.time(), deadline, "the replica did not replay the lock")
            r = self.server.request("GET", "/tests/failing-1")
            self.assertEqual(r.status, 200, r.body)
        finally:
            locker.wait(30)

    def test_corrections_carry_a_position_and_a_bad_one_is_refused(self):
        self.post("corr-1")
        r = self.server.request("PUT", "/tests/corr-1",
                                dict(record("corr-1"), result="positive", status="corrected",
                                     reason="re-read"),
                                headers={"If-Match": 'W/"1"'})
        self.assertEqual(r.status, 200, r.body)
        position = r.headers.get("x-commit-position")
        r = self.server.request("GET", "/tests/corr-1", headers={"X-Commit-Position": position})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.body)["test"]["version"], 2)
        for bad in ("x", "1/", "/1", "123456789/1", "1/2/3", "-1/2"):
            r = self.server.request("GET", "/tests/corr-1", headers={"X-Commit-Position": bad})
            self.assertEqual(r.status, 400, bad)
            self.assertIn("X-Commit-Position", json.loads(r.body)["message"])


class PromotedReplica(unittest.TestCase):
    """A replica promoted while the primary goes on writing (a mistaken or partial failover)
    has its own history from then on: it is not "caught up" with any position of the primary."""

    def test_a_promoted_replica_does_not_answer_reads_with_a_position(self):
        replica = os.path.join(ReadReplica.base, "promoted")
        subprocess.run([os.path.join(ROOT, "scripts", "pg-test-replica.sh"), "start",
                        ReadReplica.primary, replica], check=True, timeout=120)
        url = "postgresql://tdapi@/" + DATABASE + "?host="
        s = Server(DATABASE_URL=url + ReadReplica.primary, DATABASE_READ_URL=url + replica,
                   AUTH="off", AUDIT="on").start()
        try:
            self.assertEqual(psql(replica, "SELECT pg_promote()"), "t")
            deadline = time.time() + 30
            while psql(replica, "SELECT pg_is_in_recovery()") != "f" and time.time() < deadline:
                time.sleep(0.05)
            stale = []
            for i in range(5):
                r = s.request("POST", "/tests", record(f"promoted-{i}"))
                self.assertEqual(r.status, 201, r.body)
                position = r.headers.get("x-commit-position")
                r = s.request("GET", f"/tests/promoted-{i}",
                              headers={"X-Commit-Position": position})
                if r.status != 200:
                    stale.append((i, r.status))
                r = s.request("GET", "/tests?clinic_id=c1", headers={"X-Commit-Position": position})
                self.assertEqual(r.status, 200, r.body)
                if f"promoted-{i}" not in [t["test_id"] for t in json.loads(r.body)["tests"]]:
                    stale.append((i, "listing"))
            self.assertEqual(stale, [])
        finally:
            s.stop()
            subprocess.run([os.path.join(ROOT, "scripts", "pg-test-replica.sh"), "stop", replica],
                           timeout=120)


class PositionNotRead(unittest.TestCase):
    """The primary's position after a COMMIT cannot be read (here: the app's role may not call
    pg_current_wal_lsn()): the answer must still send the read that follows it to a server
    that has the write, not carry an older position or none."""

    def test_a_write_whose_position_is_unknown_sends_its_reads_to_the_primary(self):
        primary, replica = ReadReplica.primary, ReadReplica.replica
        psql(primary, "CREATE ROLE nolsn LOGIN", database="postgres")
        psql(primary, "CREATE DATABASE nolsn OWNER nolsn", database="postgres")
        psql(primary, "REVOKE EXECUTE ON FUNCTION pg_current_wal_lsn() FROM PUBLIC",
             database="nolsn")
        url = "postgresql://nolsn@/nolsn?host="
        s = Server(DATABASE_URL=url + primary, DATABASE_READ_URL=url + replica, AUTH="off",
                   AUDIT="on").start()
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    if psql(replica, "SELECT to_regclass('tests') IS NOT NULL",
                            database="nolsn") == "t":
                        break
                except RuntimeError:
                    pass
                time.sleep(0.1)
            psql(replica, "SELECT pg_wal_replay_pause()")
            try:
                for i in range(3):
                    r = s.request("POST", "/tests", record(f"nolsn-{i}"))
                    self.assertEqual(r.status, 201, r.body)
                    position = r.headers.get("x-commit-position")
                    self.assertIsNotNone(position)
                    r = s.request("GET", f"/tests/nolsn-{i}",
                                  headers={"X-Commit-Position": position})
                    self.assertEqual(r.status, 200, r.body)
            finally:
                psql(replica, "SELECT pg_wal_replay_resume()")
        finally:
            s.stop()


class UnreachableReplica(unittest.TestCase):
    """A replica whose host stopped answering (a listener that never answers: connecting takes
    the whole connect_timeout) is skipped for a while after a failed connection, not tried
    again by every read."""

    def test_reads_do_not_each_wait_for_a_replica_that_does_not_answer(self):
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            port = silent.getsockname()[1]
            url = "postgresql://tdapi@/" + DATABASE + "?host=" + ReadReplica.primary
            s = Server(DATABASE_URL=url, AUTH="off", AUDIT="on",
                       DATABASE_READ_URL=f"postgresql://tdapi@127.0.0.1:{port}/{DATABASE}"
                                         "?connect_timeout=1").start()
            try:
                r = s.request("POST", "/tests", record("silent-1"))
                self.assertEqual(r.status, 201, r.body)
                t0 = time.monotonic()
                for _ in range(5):
                    r = s.request("GET", "/tests/silent-1")
                    self.assertEqual(r.status, 200, r.body)
                self.assertLess(time.monotonic() - t0, 3.5)  # one connect_timeout (2 s at least), not five
                warned = [line for line in s.json_lines("app.log")
                          if line["event"] == "replica_unreachable"]
                self.assertEqual(len(warned), 1)
            finally:
                s.stop()


class ServiceOnAStandby(unittest.TestCase):
    """DATABASE_URL naming a standby: reads served, writes 503, /healthz green; a standby
    without the schema is named as one at start-up."""

    def test_reads_are_served_writes_refused_and_healthz_stays_green(self):
        r = ReadReplica.server.request("POST", "/tests", record("standby-1"))
        self.assertEqual(r.status, 201, r.body)
        url = "postgresql://tdapi@/" + DATABASE + "?host=" + ReadReplica.replica
        s = Server(DATABASE_URL=url, AUTH="off", AUDIT="off").start()
        try:
            self.assertEqual(s.request("GET", "/healthz").status, 200)
            deadline = time.time() + 30
            while s.request("GET", "/tests/standby-1").status != 200 and time.time() < deadline:
                time.sleep(0.05)  # replication
            self.assertEqual(s.request("GET", "/tests/standby-1").status, 200)
            for i in range(3):
                r = s.request("POST", "/tests", record(f"on-standby-{i}"))
                self.assertEqual(r.status, 503, r.body)
            self.assertEqual(s.request("GET", "/healthz").status, 200)
            self.assertEqual(s.request("GET", "/tests?clinic_id=c1").status, 200)
        finally:
            s.stop()

    def test_a_standby_without_the_schema_says_so(self):
        psql(ReadReplica.primary, 'CREATE DATABASE "no_schema"', database="postgres")
        deadline = time.time() + 30
        while time.time() < deadline:
            if psql(ReadReplica.replica, "SELECT count(*) FROM pg_database WHERE datname = 'no_schema'",
                    database="postgres") == "1":
                break
            time.sleep(0.05)
        s = Server(DATABASE_URL="postgresql://tdapi@/no_schema?host=" + ReadReplica.replica,
                   AUTH="off", AUDIT="off")
        s.start(wait=False)
        rc = s.proc.wait(60)
        s.output.close()
        self.assertEqual(rc, 78)  # a start-up failure, not restarted
        failed = [line for line in s.json_lines("app.log") if line["event"] == "startup_failed"]
        self.assertEqual(len(failed), 1)
        self.assertIn("standby", failed[0]["detail"])
        self.assertIn("DATABASE_READ_URL", failed[0]["detail"])
        self.assertNotIn("DATA_DIR", failed[0]["detail"])


def setUpModule():
    ReadReplica.start_servers()


def tearDownModule():
    ReadReplica.stop_servers()


if __name__ == "__main__":
    unittest.main()
