#!/usr/bin/env python3
"""test_pg_outage.py (PostgreSQL only): the database server restarted under load, as a failover
or an operator's restart would do it (a fast shutdown cuts every session off): meanwhile the
service answers 503 (never a crash, a 500 or a lost acknowledged record), and it serves again by
itself. It restarts the shared test server (scripts/pg-test-server.sh restart): CTest runs it
alone (RUN_SERIAL). Also: slow reads holding every reader connection do not fail /healthz."""

import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import PG_HOST, ROOT, Server, psql, wait_for  # noqa: E402
from test_failures import Writers, assert_all_acknowledged_intact  # noqa: E402


def restart_database_server():
    subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "restart", PG_HOST],
                   check=True, timeout=60)


class Readers:
    """Concurrent listings of a clinic until stopped; counts the statuses."""

    def __init__(self, server, clinic, threads=4):
        self.server, self.clinic = server, clinic
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.statuses = {}
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                status = self.server.request("GET", f"/tests?clinic_id={self.clinic}&limit=20",
                                             timeout=15).status
            except OSError:
                status = "conn_error"
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join()


@unittest.skipUnless(PG_HOST, "PostgreSQL only (TEST_PG_HOST): restarts the database server")
class DatabaseRestart(unittest.TestCase):
    def test_a_database_restart_under_load_is_503_then_service_resumes(self):
        with Server() as s:
            app = s.pid_of("app")
            with Readers(s, "pgout") as r, Writers(s, "pgout", max_seconds=60) as w:
                self.assertTrue(wait_for(lambda: w.count() >= 300, timeout=30))
                started = time.monotonic()
                restart_database_server()
                print(f"\n  database server restarted in {time.monotonic() - started:.2f} s",
                      file=sys.stderr)
                before = w.count()
                self.assertTrue(wait_for(lambda: w.count() >= before + 300, timeout=45),
                                f"writes did not resume: {w.statuses}")
            print(f"  writes {w.statuses}, reads {r.statuses}", file=sys.stderr)
            self.assertEqual(set(w.statuses) - {201, 503}, set(), w.statuses)
            self.assertEqual(set(r.statuses) - {200, 503}, set(), r.statuses)
            self.assertEqual(s.pid_of("app"), app, "the app was restarted")

            # Every pooled connection the restart cut off is replaced: a run of answers all 200.
            def all_ok():
                return all(s.request("GET", path).status == 200 for path in
                           ["/healthz", "/tests?clinic_id=pgout&limit=5"] * 50)
            self.assertTrue(wait_for(all_ok, timeout=30))
            assert_all_acknowledged_intact(self, s, "pgout", w.acked)



@unittest.skipUnless(PG_HOST, "PostgreSQL only (TEST_PG_HOST): the reader pool of the PostgreSQL store")
class ReadersAllBusy(unittest.TestCase):
    def test_healthz_answers_while_slow_reads_hold_every_reader(self):
        # THREADS=8: 4 reader connections (max(4, THREADS/4)); a read waits 1 s for a free one.
        with Server(THREADS="8", BUSY_TIMEOUT_MS="1000") as s:
            url = s.env["DATABASE_URL"]
            self.assertEqual(s.request("POST", "/tests", {
                "test_id": "held", "patient_id": "p1", "clinic_id": "c1", "test_type": "blood",
                "result": "ok"}).status, 201)
            # Reads of `tests` now go through a view that waits until the test lets them go
            # (at most 20 s; each statement of a volatile function sees the latest commit).
            psql("CREATE TABLE hold_release (go boolean);"
                 "CREATE FUNCTION hold_reads() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$"
                 " BEGIN FOR i IN 1..2000 LOOP"
                 "   IF EXISTS (SELECT 1 FROM hold_release) THEN RETURN true; END IF;"
                 "   PERFORM pg_sleep(0.01);"
                 " END LOOP; RETURN true; END $$;"
                 "ALTER TABLE tests RENAME TO tests_stored;"
                 "CREATE VIEW tests AS SELECT * FROM tests_stored WHERE hold_reads();", database=url)
            statuses = []
            readers = [threading.Thread(target=lambda: statuses.append(
                s.request("GET", "/tests/held", timeout=60).status)) for _ in range(4)]
            for t in readers:
                t.start()
            try:
                def held():
                    return int(psql("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                                     " current_database() AND state = 'active'"
                                     " AND query LIKE 'SELECT doc, clinic_id, version FROM tests%'", database=url))
                self.assertTrue(wait_for(lambda: held() == 4, timeout=15), "the reads never held every reader")
                r = s.request("GET", "/healthz", timeout=30)
                self.assertEqual((r.status, r.json()), (200, {"status": "ok"}))
            finally:
                psql("INSERT INTO hold_release VALUES (true)", database=url)
                for t in readers:
                    t.join()
            self.assertEqual(statuses, [200] * 4)


if __name__ == "__main__":
    unittest.main(verbosity=2)
