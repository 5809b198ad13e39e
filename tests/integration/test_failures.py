#!/usr/bin/env python3
"""test_failures.py: each fault produced for real (no mocks): crashes under load, a damaged
database, a full disk, a locked or read-only database, hostile clients, graceful stop."""

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import fcgi_client  # noqa: E402
from harness import PG_HOST, SQLITE_ONLY, Server, record, wait_for  # noqa: E402

IS_ROOT = os.geteuid() == 0


def expected(test_id, clinic):
    return record(test_id, clinic=clinic, patient="pt-" + test_id, test_type="panel",
                  result=("R:" + test_id + ";") * 20)


class Writers:
    """Concurrent clients posting unique records until stopped (bounded in count and time)."""

    def __init__(self, server, clinic, threads=16, max_each=3000, max_seconds=20):
        self.server, self.clinic = server, clinic
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.acked, self.statuses, self.errors = [], {}, 0
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(n, max_each)) for n in range(threads)]

    def _run(self, n, max_each):
        for i in range(max_each):
            if self.stop_flag.is_set() or time.monotonic() > self.deadline:
                return
            tid = f"{self.clinic}-{n}-{i}"
            try:
                r = self.server.request("POST", "/tests", expected(tid, self.clinic), timeout=15)
                status = r.status
            except OSError:
                status = "conn_error"
                time.sleep(0.01)
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 201:
                    self.acked.append(tid)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join()

    def count(self):
        with self.lock:
            return len(self.acked)


def assert_all_acknowledged_intact(tc, server, clinic, acked):
    r = server.request("GET", "/tests?clinic_id=" + clinic)
    tc.assertEqual(r.status, 200, r)
    rows = {}
    for t in r.json()["tests"]:
        for added in ("created_at", "status", "version", "updated_at"):
            t.pop(added)
        rows[t["test_id"]] = t
    missing = [a for a in acked if a not in rows]
    tc.assertEqual(missing, [], f"{len(missing)} acknowledged records lost")
    torn = [i for i, t in rows.items() if t != expected(i, clinic)]
    tc.assertEqual(torn, [], "rows not whole")
    for tid in acked[:50] + acked[-50:]:
        tc.assertEqual(server.request("POST", "/tests", expected(tid, clinic)).status, 409, tid)
    return len(rows)


class Crash(unittest.TestCase):
    def test_sigkill_of_the_app_mid_writes_loses_no_acknowledged_record(self):
        with Server() as s:
            with Writers(s, "crash1") as w:
                self.assertTrue(wait_for(lambda: w.count() >= 300))
                os.kill(s.pid_of("app"), signal.SIGKILL)  # the supervisor restarts it
                before = w.count()
                self.assertTrue(wait_for(lambda: w.count() >= before + 300))
            print("statuses", w.statuses, file=sys.stderr)
            self.assertEqual(set(w.statuses) - {201, 502, "conn_error"}, set())
            n = assert_all_acknowledged_intact(self, s, "crash1", w.acked)
            self.assertGreaterEqual(n, len(w.acked))

    def test_sigkill_of_app_and_nginx_together_then_restart(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-crash-") as data_dir:
            s = Server(data_dir=data_dir).start()
            with Writers(s, "crash2") as w:
                self.assertTrue(wait_for(lambda: w.count() >= 500))
                s.kill_all()  # run.sh, app and nginx at once
            self.assertGreater(len(w.acked), 0)
            with Server(data_dir=data_dir) as s2:
                assert_all_acknowledged_intact(self, s2, "crash2", w.acked)


class Corruption(unittest.TestCase):
    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "a damaged SQLite file at start")
    def test_refuses_to_start_on_a_damaged_file(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-corrupt-") as d:
            db = os.path.join(d, "testdata.db")
            with open(db, "wb") as f:
                f.write(b"this is not a database" * 500)
            s = Server(data_dir=d)
            s.start(wait=False)
            rc = s.proc.wait(30)
            s.output.close()
            self.assertEqual(rc, 78)  # start-up failure: not restarted
            failed = [l for l in s.json_lines("app.log") if l["event"] == "startup_failed"]
            self.assertEqual(len(failed), 1)
            self.assertEqual(failed[0]["level"], "error")
            self.assertIn(db, failed[0]["detail"])
            self.assertIn("What to do", failed[0]["detail"])

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "the SQLite file's pages overwritten while it serves")
    def test_corruption_at_run_time_is_a_503_a_loud_log_and_unhealthy(self):
        with Server() as s:
            for i in range(200):
                self.assertEqual(s.request("POST", "/tests", expected(f"cor-{i}", "cor")).status, 201)
            self.assertEqual(s.request("GET", "/healthz").json(), {"status": "ok"})
            db = os.path.join(s.data_dir, "testdata.db")
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            size = os.path.getsize(db)
            self.assertGreater(size, 10 * 4096)
            with open(db, "r+b") as f:  # keep page 1 (the schema), overwrite every other page
                f.seek(4096)
                f.write(b"\xab" * (size - 4096))
            post = s.request("POST", "/tests", expected("cor-new", "cor"))
            self.assertIn(post.status, (201, 503), post)
            r = s.request("GET", "/tests?clinic_id=cor")
            self.assertEqual(r.status, 503, r)
            self.assertEqual(r.json()["status"], "error")
            health = s.request("GET", "/healthz")
            self.assertEqual(health.status, 503, health)
            loud = [l for l in s.json_lines("app.log") if l["event"] == "database_corrupt"]
            self.assertGreater(len(loud), 0)
            self.assertEqual(loud[0]["level"], "error")
            self.assertIn(db, loud[0]["detail"])


class DamageWhileStopped(unittest.TestCase):
    """The file damaged while the service was cleanly stopped: the start skips quick_check (the
    clean-stop marker), and the integrity check in the background finds the damage."""

    def start_stop_with_data(self, d):
        with Server(data_dir=d) as s:
            batch = [record(f"ds-{i}", clinic="ds", patient=f"patient-secret-{i}", result="r" * 2000)
                     for i in range(400)]
            self.assertEqual(s.request("POST", "/tests/batch", batch).status, 201)
        self.assertTrue(os.path.exists(os.path.join(d, "testdata.db-clean")))

    def metric(self, s, series):
        text = s.request("GET", "/metrics").body.decode()
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
        return None

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "a page of the SQLite file overwritten while it is stopped")
    def test_a_page_garbled_while_stopped_is_found_after_the_start(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-stopdmg-") as d:
            self.start_stop_with_data(d)
            db = os.path.join(d, "testdata.db")
            conn = sqlite3.connect(db)
            leaves = [row[0] for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'tests' AND pagetype = 'leaf' ORDER BY path")]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.close()
            self.assertGreater(len(leaves), 10)
            with open(db, "r+b") as f:  # one leaf of the tests table, in the middle
                f.seek((leaves[len(leaves) // 2] - 1) * page_size)
                f.write(b"\xab" * page_size)
            s = Server(data_dir=d)
            s.start(wait=False)  # not "ready": /healthz may turn 503 before it is first asked
            try:
                def health():
                    try:
                        return s.request("GET", "/healthz").status
                    except OSError:
                        return None  # not serving yet
                self.assertTrue(wait_for(lambda: health() == 503, 60), "the damage was not reported")
                checks = [l for l in s.json_lines("app.log") if l["event"] == "integrity_check"]
                self.assertEqual(checks[-1]["reason"], "skipped_after_clean_stop")
                self.assertEqual(s.request("GET", "/healthz").json()["status"], "error")
                post = s.request("POST", "/tests", record("ds-new", clinic="ds"))
                self.assertEqual(post.status, 503, post)
                batch = s.request("POST", "/tests/batch", [record("ds-new2", clinic="ds")])
                self.assertEqual(batch.status, 503, batch)
                self.assertEqual(self.metric(s, 'tdapi_integrity_check{state="damaged"}'), 1)
                self.assertEqual(self.metric(s, 'tdapi_integrity_check{state="running"}'), 0)
                loud = [l for l in s.json_lines("app.log") if l["event"] == "database_corrupt"]
                self.assertEqual(len(loud), 1, loud)
                self.assertEqual(loud[0]["level"], "error")
                self.assertIn(db, loud[0]["detail"])
                self.assertIn("integrity check", loud[0]["detail"])
                log = s.read_log("app.log").decode()
                self.assertNotIn("patient-secret", log)  # no patient id from the damaged rows
            finally:
                s.stop()
            # Damaged: no clean-stop marker, so the next start runs quick_check (and refuses it).
            self.assertFalse(os.path.exists(db + "-clean"))

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "the check in the background of an SQLite file")
    def test_a_clean_file_passes_the_check_and_stays_healthy(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-stopok-") as d:
            self.start_stop_with_data(d)
            with Server(data_dir=d) as s:
                def done():
                    return [l for l in s.json_lines("app.log") if l["event"] == "background_integrity_check"]
                self.assertTrue(wait_for(done, 60), "the check did not finish")
                line = done()[0]
                self.assertEqual((line["level"], line["reason"]), ("info", "ok"))
                self.assertGreaterEqual(line["count"], 400 * 5)  # the table and its four indexes
                self.assertIn("duration_ms", line)
                self.assertEqual(s.request("GET", "/healthz").status, 200)
                self.assertEqual(self.metric(s, 'tdapi_integrity_check{state="ok"}'), 1)
                self.assertGreaterEqual(self.metric(s, "tdapi_integrity_check_seconds"), 0)
                self.assertEqual(s.request("POST", "/tests", record("ds-after", clinic="ds")).status, 201)
                self.assertFalse([l for l in s.json_lines("app.log") if l["level"] == "error"])
            self.assertTrue(os.path.exists(os.path.join(d, "testdata.db-clean")))


class DiskFull(unittest.TestCase):
    def fill_until_507(self, s, clinic):
        acked, full = [], None
        for i in range(2000):
            rec = expected(f"{clinic}-{i}", clinic)
            rec["result"] = ("x" * 1000 + str(i)) * 15
            r = s.request("POST", "/tests", rec)
            if r.status == 201:
                acked.append(rec)
                continue
            full = r
            break
        self.assertIsNotNone(full, "never filled up")
        self.assertEqual(full.status, 507, full)
        self.assertEqual(full.json(), {"status": "error", "message": "storage is full"})
        return acked

    def check_still_serving(self, s, clinic, acked):
        r = s.request("GET", "/tests?clinic_id=" + clinic)
        self.assertEqual(r.status, 200, r)
        self.assertEqual([t["test_id"] for t in r.json()["tests"]], [a["test_id"] for a in acked])
        self.assertEqual(s.request("GET", "/healthz").status, 200)

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "a full tmpfs under the SQLite file (DATA_DIR)")
    @unittest.skipUnless(IS_ROOT, "needs root to mount a small tmpfs; the max_page_count variant runs instead")
    def test_full_tmpfs_then_space_freed(self):
        mnt = tempfile.mkdtemp(prefix="tdapi-full-")
        logs = tempfile.mkdtemp(prefix="tdapi-full-logs-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
        try:
            os.symlink(logs, os.path.join(mnt, "logs"))  # logs stay writable while the disk is full
            filler = os.path.join(mnt, "filler")
            with open(filler, "wb") as f:
                f.write(b"\0" * (2 * 1024 * 1024))
            with Server(data_dir=mnt) as s:
                acked = self.fill_until_507(s, "full")
                self.check_still_serving(s, "full", acked)
                os.remove(filler)
                after = expected("full-after", "full")
                self.assertEqual(s.request("POST", "/tests", after).status, 201)
                self.check_still_serving(s, "full", acked + [after])
                lines = s.json_lines("app.log")
                self.assertTrue(any(l.get("event") == "txn" and l.get("reason") == "full" for l in lines))
        finally:
            subprocess.run(["umount", "-l", mnt])
            subprocess.run(["rm", "-rf", mnt, logs])

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "MAX_DB_PAGES caps the SQLite file's page count")
    def test_database_size_cap_then_raised(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-cap-") as d:
            with Server(data_dir=d, MAX_DB_PAGES=60) as s:
                acked = self.fill_until_507(s, "cap")
                self.check_still_serving(s, "cap", acked)
            with Server(data_dir=d, MAX_DB_PAGES=100000) as s:
                self.check_still_serving(s, "cap", acked)
                self.assertEqual(s.request("POST", "/tests", expected("cap-after", "cap")).status, 201)


class LockedAndReadOnly(unittest.TestCase):
    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "another process holds the SQLite file's write lock")
    def test_locked_database_is_a_bounded_503_and_reads_keep_working(self):
        # With the audit trail on (the default), a read's audit entry is a write: under another
        # process's lock reads get the same bounded 503 (nothing is served unrecorded). Without
        # it (AUDIT=off, local mode only), reads keep working under the lock (WAL).
        for audit in ("on", "off"):
            with self.subTest(audit=audit), Server(BUSY_TIMEOUT_MS=300, AUDIT=audit) as s:
                self.assertEqual(s.request("POST", "/tests", expected("lk-0", "lk")).status, 201)
                holder = sqlite3.connect(os.path.join(s.data_dir, "testdata.db"), isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                try:
                    r = s.request("POST", "/tests", expected("lk-1", "lk"), timeout=10)
                    self.assertEqual(r.status, 503, r)
                    self.assertEqual(r.json()["message"], "storage is busy, retry later")
                    r = s.request("GET", "/tests?clinic_id=lk", timeout=10)
                    if audit == "on":
                        self.assertEqual((r.status, r.json()["message"]), (503, "storage is busy, retry later"))
                    else:
                        self.assertEqual(r.json()["count"], 1)
                finally:
                    holder.execute("ROLLBACK")
                    holder.close()
                self.assertEqual(s.request("POST", "/tests", expected("lk-1", "lk")).status, 201)
                self.assertEqual(s.request("GET", "/tests?clinic_id=lk").json()["count"], 2)

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "a SQLite file on a read-only mount as DB_PATH")
    def test_read_only_database_is_a_clear_startup_error(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-ro-") as d:
            with Server(data_dir=d) as s:
                self.assertEqual(s.request("POST", "/tests", expected("ro-0", "ro")).status, 201)
            ro = tempfile.mkdtemp(prefix="tdapi-ro-db-")
            os.rmdir(ro)
            os.mkdir(ro)
            for name in os.listdir(d):
                if name.startswith("testdata.db"):
                    subprocess.run(["cp", os.path.join(d, name), ro], check=True)
            mounted = False
            try:
                if IS_ROOT:  # root ignores file modes: make the filesystem itself read-only
                    subprocess.run(["mount", "--bind", ro, ro], check=True)
                    subprocess.run(["mount", "-o", "remount,ro,bind", ro], check=True)
                    mounted = True
                else:
                    for name in os.listdir(ro):
                        os.chmod(os.path.join(ro, name), 0o400)
                    os.chmod(ro, 0o500)
                with tempfile.TemporaryDirectory(prefix="tdapi-ro-run-") as run_dir:
                    s = Server(data_dir=run_dir, DB_PATH=os.path.join(ro, "testdata.db"))
                    s.start(wait=False)
                    rc = s.proc.wait(30)
                    s.output.close()
                    self.assertEqual(rc, 78)  # start-up failure: not restarted
                    failed = [l for l in s.json_lines("app.log") if l["event"] == "startup_failed"]
                    self.assertEqual(len(failed), 1, s.run_output())
                    self.assertIn(os.path.join(ro, "testdata.db"), failed[0]["detail"])
                    self.assertIn("can write", failed[0]["detail"])
            finally:
                if mounted:
                    subprocess.run(["umount", ro])
                os.chmod(ro, 0o700)
                subprocess.run(["rm", "-rf", ro])


class HostileClients(unittest.TestCase):
    def test_stalled_bodies_never_reach_the_app(self):
        with Server(THREADS=4) as s:
            import socket
            stalled = []
            for i in range(20):  # more stalled clients than the app has threads
                c = socket.create_connection(("127.0.0.1", s.port))
                c.sendall(b"POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"test_id\":")
                stalled.append(c)
            try:
                for i in range(20):
                    r = s.request("POST", "/tests", expected(f"hc-{i}", "hc"), timeout=5)
                    self.assertEqual(r.status, 201, r)
            finally:
                for c in stalled:
                    c.close()
            # a body cut short by the client: nginx drops it (400 in its log); the app never sees it
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(b"POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"a\":1")
            c.shutdown(socket.SHUT_WR)
            c.recv(100)
            c.close()
            self.assertTrue(wait_for(lambda: 400 in [l["status"] for l in s.json_lines("access.log")]))

            def app_posts():
                return [l for l in s.json_lines("app.log") if l.get("event") == "request" and l.get("method") == "POST"]
            self.assertTrue(wait_for(lambda: len(app_posts()) >= 20))
            self.assertEqual(len(app_posts()), 20)

    def test_app_answers_400_and_413_itself_when_the_body_does_not_match(self):
        with Server() as s:
            sock = os.path.join(s.data_dir, "run", "app.sock")
            base = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/tests", "CONTENT_TYPE": "application/json",
                    "REQUEST_ID": "direct-1"}
            status, _, body = fcgi_client.request(sock, dict(base, CONTENT_LENGTH="100"), b'{"a":1')
            self.assertEqual((status, body), (400, b'{"status":"error","message":"request body is shorter than its Content-Length"}'))
            status, _, body = fcgi_client.request(sock, dict(base, CONTENT_LENGTH="70000"), b"x" * 1000)
            self.assertEqual(status, 413)
            # On a kept-alive connection, a body left unread must close the connection (its
            # leftover records would otherwise be read as the next request); a whole one not.
            closed = []
            status, _, _ = fcgi_client.request(sock, dict(base, CONTENT_LENGTH=str(5 * 1024 * 1024)),
                                               b"x" * 1000, keep_conn=True, closed_after=closed)
            self.assertEqual((status, closed), (413, [True]))
            closed = []
            status, _, _ = fcgi_client.request(sock, dict(base, REQUEST_METHOD="GET", REQUEST_URI="/healthz"),
                                               keep_conn=True, closed_after=closed)
            self.assertEqual((status, closed), (200, [False]))
            self.assertEqual(s.request("GET", "/healthz").status, 200)


class GracefulStop(unittest.TestCase):
    def test_sigterm_finishes_in_flight_checkpoints_and_exits_0(self):
        with tempfile.TemporaryDirectory(prefix="tdapi-stop-") as data_dir:
            s = Server(data_dir=data_dir).start()
            with Writers(s, "stop") as w:
                self.assertTrue(wait_for(lambda: w.count() >= 300))
                started = time.monotonic()
                rc = s.stop(timeout=20)
                took = time.monotonic() - started
            s.output.close()
            print(f"stop took {took:.3f}s; statuses {w.statuses}", file=sys.stderr)
            self.assertEqual(rc, 0, s.run_output()[-2000:])
            self.assertEqual(set(w.statuses) - {201, 502, "conn_error"}, set())
            events = [l["event"] for l in s.json_lines("app.log")]
            for e in ("stopping", "store_closed", "stopped"):
                self.assertIn(e, events)
            closed = [l for l in s.json_lines("app.log") if l["event"] == "store_closed"][-1]
            self.assertEqual(closed["level"], "info")  # the final checkpoint succeeded
            if not PG_HOST:  # SQLite: the final checkpoint emptied the WAL
                wal = os.path.join(data_dir, "testdata.db-wal")
                self.assertTrue(not os.path.exists(wal) or os.path.getsize(wal) == 0)
            with Server(data_dir=data_dir) as s2:
                assert_all_acknowledged_intact(self, s2, "stop", w.acked)


class CtrlC(unittest.TestCase):
    def test_ctrl_c_stops_the_app_and_nginx_and_exits_0(self):
        s = Server().start()
        try:
            self.assertEqual(s.request("POST", "/tests", record("cc-1")).status, 201)
            app, nginx = s.pid_of("app"), s.pid_of("nginx")
            os.killpg(s.proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
            self.assertEqual(s.proc.wait(20), 0, s.run_output()[-2000:])
            for pid in (app, nginx):
                self.assertFalse(os.path.exists(f"/proc/{pid}"), f"process {pid} still running")
            events = [l["event"] for l in s.json_lines("app.log")]
            self.assertEqual(events[-3:], ["stopping", "store_closed", "stopped"])
        finally:
            s.__exit__(None, None, None)


class GracefulStopWithKeptAliveConnections(unittest.TestCase):
    def test_sigterm_to_the_app_alone_wakes_threads_parked_on_idle_connections(self):
        with Server() as s:
            # Leave nginx with idle kept-alive connections to the app (each parks an app thread).
            with Writers(s, "ka", threads=8) as w:
                self.assertTrue(wait_for(lambda: w.count() >= 200))
            app = s.pid_of("app")
            os.kill(app, signal.SIGTERM)
            self.assertTrue(wait_for(lambda: s.pid_of("app") != app, timeout=8),
                            "the app did not stop (threads parked on idle connections?)")
            self.assertTrue(wait_for(lambda: s.request("GET", "/healthz").status == 200))
            lines = s.json_lines("app.log")
            self.assertNotIn("stop_timeout", [l["event"] for l in lines])
            restarted = [l for l in lines if l["event"] == "app_restarted"]
            self.assertEqual(len(restarted), 1)
            self.assertIn("status 0", restarted[0]["detail"])
            assert_all_acknowledged_intact(self, s, "ka", w.acked)


if __name__ == "__main__":
    unittest.main(verbosity=2)
