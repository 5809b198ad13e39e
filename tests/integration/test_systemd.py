#!/usr/bin/env python3
"""test_systemd.py: what systemd sees of `testdata-api serve`, with this test in systemd's
place: the notify socket (NOTIFY_SOCKET: STATUS= while opening the database, READY=1 once the
socket answers, WATCHDOG=1 while serving is healthy and not while every worker is stuck,
STOPPING=1 on SIGTERM), and stderr as the journal (JOURNAL_STREAM: every line carries its
syslog priority prefix)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import fcgi_client  # noqa: E402

APP = os.environ.get("APP_BIN", "build/testdata-api")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "LANG", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}
    env.update(extra)
    return env


HEALTHZ = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/healthz", "QUERY_STRING": "",
           "CONTENT_LENGTH": "0"}


class Notify(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-systemd-")
        self.runtime = os.path.join(self.dir, "run")
        os.mkdir(self.runtime, 0o700)
        self.sock = os.path.join(self.runtime, "app.sock")
        self.notify_path = os.path.join(self.dir, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.proc = None

    def tearDown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, **extra):
        env = clean_env(NOTIFY_SOCKET=self.notify_path, RUNTIME_DIRECTORY=self.runtime,
                        DB_PATH=os.path.join(self.dir, "t.db"), AUTH="off", AUDIT="off",
                        SERVICE_USER="root", **extra)
        self.err = open(os.path.join(self.dir, "stderr"), "w+")
        self.addCleanup(self.err.close)
        self.proc = subprocess.Popen([APP, "serve"], env=env, stderr=self.err)

    def messages(self, until, timeout):
        """Datagrams received until one satisfies `until` (returned last), at most timeout s."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.notify.recv(4096).decode()
            except socket.timeout:
                break
            got.append(msg)
            if until(msg):
                return got
        self.fail("not received within %ss; got %r" % (timeout, got))

    def test_status_ready_watchdog_stopping(self):
        self.start(WATCHDOG_USEC="2000000", THREADS="1")
        got = self.messages(lambda m: "READY=1" in m, 60)
        self.assertTrue(got[0].startswith("STATUS=Opening the database"), got)
        # Ready means serving: the socket answers at once.
        status, _, body = fcgi_client.request(self.sock, HEALTHZ)
        self.assertEqual(status, 200, body)
        self.messages(lambda m: m == "WATCHDOG=1", 30)

        # The one worker stuck in a request (a body that never comes): the watchdog starves.
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.connect(self.sock)
        params = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/tests", "QUERY_STRING": "",
                  "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "100"}
        stuck.sendall(fcgi_client._record(fcgi_client.FCGI_BEGIN_REQUEST,
                                          bytes([0, 1, 0, 0, 0, 0, 0, 0]))
                      + fcgi_client._record(fcgi_client.FCGI_PARAMS, fcgi_client._params(params))
                      + fcgi_client._record(fcgi_client.FCGI_PARAMS, b""))
        # A quiet stretch of twice the interval, within 60 s: no WATCHDOG=1 while stuck.
        quiet_since = time.monotonic()
        deadline = quiet_since + 60
        while time.monotonic() - quiet_since < 4.0:
            self.assertLess(time.monotonic(), deadline, "WATCHDOG=1 kept coming while hung")
            self.notify.settimeout(0.5)
            try:
                if self.notify.recv(4096).decode() == "WATCHDOG=1":
                    quiet_since = time.monotonic()
            except socket.timeout:
                pass
        self.assertIsNone(self.proc.poll())
        # Unstuck (the connection ends): fed again.
        stuck.close()
        self.messages(lambda m: m == "WATCHDOG=1", 30)

        self.proc.send_signal(signal.SIGTERM)
        self.messages(lambda m: m.startswith("STOPPING=1"), 30)
        self.assertEqual(self.proc.wait(timeout=30), 0)

    def test_start_failure_in_status_and_journal_priority(self):
        # stderr is "the journal": JOURNAL_STREAM names its device and inode.
        err_path = os.path.join(self.dir, "journal")
        with open(err_path, "w") as err:
            st = os.fstat(err.fileno())
            env = clean_env(NOTIFY_SOCKET=self.notify_path, RUNTIME_DIRECTORY=self.runtime,
                            JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino), THREADS="lots")
            rc = subprocess.run([APP, "serve"], env=env, stderr=err, timeout=30).returncode
        self.assertEqual(rc, 78)
        got = self.messages(lambda m: m.startswith("STATUS=Start-up failed"), 10)
        self.assertIn("THREADS must be a whole number", got[-1])
        with open(err_path) as f:
            lines = f.read().splitlines()
        self.assertTrue(lines and all(line.startswith("<") for line in lines), lines)
        self.assertTrue(lines[-1].startswith('<3>{"ts":'), lines[-1])
        self.assertIn('"event":"startup_failed"', lines[-1])

    def test_config_check_problems_at_error_priority_in_the_journal(self):
        err_path = os.path.join(self.dir, "journal")
        with open(err_path, "w") as err:
            st = os.fstat(err.fileno())
            env = clean_env(JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino), THREADS="lots")
            rc = subprocess.run([APP, "config", "check"], env=env, stderr=err,
                                timeout=30).returncode
        self.assertEqual(rc, 1)
        with open(err_path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, ["<3>testdata-api: config: THREADS must be a whole number from 1 "
                                 "to 1024, not 'lots'",
                                 "<3>testdata-api: 1 problem in the environment"])

    def test_no_prefix_when_stderr_is_not_the_journal(self):
        self.start(JOURNAL_STREAM="1:1")
        self.messages(lambda m: "READY=1" in m, 60)
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=30), 0)
        self.err.seek(0)
        lines = self.err.read().splitlines()
        self.assertTrue(lines and all(line.startswith('{"ts":') for line in lines), lines)


if __name__ == "__main__":
    unittest.main()
