#!/usr/bin/env python3
"""test_pgbouncer.py (PostgreSQL behind PgBouncer in transaction mode; CTest starts the pooler:
scripts/pg-test-server.sh pooler-start, TEST_PGB_HOST, DATABASE_POOLER=transaction). A pooler in
transaction mode hands each transaction to any of its server connections (a pool of 5 here),
and keeps them when a client goes: the service must keep nothing on a server connection past a
transaction. Tested: starts against server connections an earlier run of the service used (two
restarts), two nodes starting together on a fresh database, a held write lock answered 503 by
the lock timeout each transaction sets itself, and the pooler dropping every connection."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (APP_BIN, PG_HOST, PG_USER, PGB_HOST, PGB_PORT, Server, _pg_tool, psql,  # noqa: E402
                     wait_for)
from test_failures import Writers, assert_all_acknowledged_intact  # noqa: E402
from test_pg_outage import Readers  # noqa: E402

REASON = "PostgreSQL behind PgBouncer only (TEST_PG_HOST and TEST_PGB_HOST)"

# The app's failures that mean it kept something on a server connection past a transaction.
SESSION_STATE_ERRORS = ("already exists", "does not exist", "26000", "42P05")


def pooler_admin(command):
    """A command on PgBouncer's admin console (database pgbouncer)."""
    subprocess.run([_pg_tool("psql"), "-X", "-q", "-h", PGB_HOST, "-p", str(PGB_PORT), "-U", PG_USER,
                    "-d", "pgbouncer", "-c", command], check=True, capture_output=True, timeout=30)


def server_connections(database):
    """Server connections open on `database` (the pooler's: the app has no other way in)."""
    return int(psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"))


def storage_errors(server):
    return [e for e in server.json_lines("app.log") if e.get("event") == "storage_error"]


@unittest.skipUnless(PG_HOST and PGB_HOST, REASON)
class Pooler(unittest.TestCase):
    def assert_no_session_state_errors(self, server):
        bad = [e.get("detail", "") for e in storage_errors(server)
               if any(m in e.get("detail", "") for m in SESSION_STATE_ERRORS)]
        self.assertEqual(bad, [], "statements or settings left on a server connection")

    def load(self, server, clinic):
        """Writes and listings through the pooler; every write acknowledged, every read 200."""
        with Readers(server, clinic, threads=2) as r, \
                Writers(server, clinic, threads=8, max_each=60, max_seconds=40) as w:
            self.assertTrue(wait_for(lambda: w.count() >= 200, timeout=40), w.statuses)
        self.assertEqual(set(w.statuses), {201}, w.statuses)
        self.assertEqual(set(r.statuses), {200}, r.statuses)
        assert_all_acknowledged_intact(self, server, clinic, w.acked)
        return w.acked

    def test_two_restarts_against_the_server_connections_of_the_last_run(self):
        data_dir = tempfile.mkdtemp(prefix="tdapi-pgb-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        server = Server(data_dir)
        acked = {}
        for run in range(3):
            if run > 0:
                # The pooler kept the server connections the last run used (and whatever that
                # run left on them): this start runs its migrations and reads on them.
                self.assertGreater(server_connections(server.pg_database), 0)
            with server:
                acked[run] = self.load(server, f"pgb{run}")
                for earlier in range(run):
                    assert_all_acknowledged_intact(self, server, f"pgb{earlier}", acked[earlier])
                self.assert_no_session_state_errors(server)
            # The admin commands go through the pooler too (DATABASE_POOLER from the
            # environment), on the same server connections.
            p = subprocess.run([APP_BIN, "keys", "create", "--db", server.env["DATABASE_URL"],
                                "--name", f"lab{run}", "--scope", "read:pgb0"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)

    def test_two_nodes_start_together_on_a_fresh_database(self):
        # Both run their migrations and cursor key set-up at once, on the pool's connections;
        # then both again, on the connections they left.
        data_dir = tempfile.mkdtemp(prefix="tdapi-pgb-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        server = Server(data_dir, APP_NODES="2")
        for run in range(2):
            with server:
                self.load(server, f"pgbnodes{run}")
                self.assert_no_session_state_errors(server)

    def test_a_held_write_lock_is_answered_503_by_the_lock_timeout(self):
        with Server(BUSY_TIMEOUT_MS="1000") as s:
            self.assertEqual(s.request("POST", "/tests", {
                "test_id": "before", "patient_id": "p1", "clinic_id": "c1", "test_type": "blood",
                "result": "ok"}).status, 201)
            # A neighbour on the pooler leaves session settings on every server connection of
            # the pool (5 at once, each holding one for 1 s): no lock timeout, no statement
            # timeout. Whatever a client SETs at connect, its transactions may run on these.
            neighbours = [threading.Thread(target=subprocess.run, args=(
                [_pg_tool("psql"), "-X", "-q", "-h", PGB_HOST, "-p", str(PGB_PORT), "-U", PG_USER,
                 "-d", s.pg_database, "-c",
                 "SET lock_timeout = 0; SET statement_timeout = 0; SELECT pg_sleep(1)"],),
                kwargs={"capture_output": True, "timeout": 30}) for _ in range(5)]
            for t in neighbours:
                t.start()
            for t in neighbours:
                t.join()
            # Another session holds the write lock (straight to the server; bounded: 60 s).
            holder = subprocess.Popen(
                [_pg_tool("psql"), "-X", "-q", "-h", PG_HOST, "-U", PG_USER, "-d", s.pg_database,
                 "-c", "SELECT pg_advisory_lock(7416100), pg_sleep(60)"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.assertTrue(wait_for(lambda: int(psql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND objid = 7416100")) == 1, timeout=15))
                # The transaction's own SET LOCAL lock_timeout (BUSY_TIMEOUT_MS) ends the wait:
                # nothing set at connect reaches it through the pooler.
                r = s.request("POST", "/tests", {
                    "test_id": "held", "patient_id": "p1", "clinic_id": "c1",
                    "test_type": "blood", "result": "ok"}, timeout=60)
                self.assertEqual(r.status, 503, r.body)
                self.assertEqual(r.json()["message"], "storage is busy, retry later")
                details = [e.get("detail", "") for e in storage_errors(s)]
                self.assertTrue(any("55P03" in d for d in details), details)
            finally:
                # The holder's server process (it would sleep on without its client), then our
                # own psql, by its Popen handle.
                psql("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                     " AND granted AND objid = 7416100")
                holder.kill()
                holder.wait()
            self.assertTrue(wait_for(lambda: s.request("POST", "/tests", {
                "test_id": "after", "patient_id": "p1", "clinic_id": "c1", "test_type": "blood",
                "result": "ok"}).status in (201, 409), timeout=30))
            self.assert_no_session_state_errors(s)

    def test_the_pooler_dropping_every_connection_is_503_then_service_resumes(self):
        with Server() as s:
            app = s.pid_of("app")
            with Readers(s, "pgbkill") as r, Writers(s, "pgbkill", max_seconds=60) as w:
                self.assertTrue(wait_for(lambda: w.count() >= 200, timeout=30), w.statuses)
                # KILL: every client and server connection of the database dropped at once
                # (new ones wait until RESUME).
                pooler_admin(f"KILL {s.pg_database}")
                time.sleep(0.5)
                pooler_admin(f"RESUME {s.pg_database}")
                before = w.count()
                self.assertTrue(wait_for(lambda: w.count() >= before + 200, timeout=45),
                                f"writes did not resume: {w.statuses}")
            print(f"\n  writes {w.statuses}, reads {r.statuses}", file=sys.stderr)
            self.assertEqual(set(w.statuses) - {201, 503}, set(), w.statuses)
            self.assertEqual(set(r.statuses) - {200, 503}, set(), r.statuses)
            self.assertEqual(s.pid_of("app"), app, "the app was restarted")
            self.assertTrue(wait_for(lambda: all(
                s.request("GET", p).status == 200
                for p in ["/healthz", "/tests?clinic_id=pgbkill&limit=5"] * 20), timeout=30))
            assert_all_acknowledged_intact(self, s, "pgbkill", w.acked)


if __name__ == "__main__":
    unittest.main(verbosity=2)
