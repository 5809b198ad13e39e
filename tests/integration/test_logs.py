#!/usr/bin/env python3
"""test_logs.py: centralized logs and log rotation, with the real programs. A real rsyslog
collector (ops/rsyslog/collector.conf) on free loopback ports receives both streams of a
service started with LOG_FORWARD (scripts/run.sh starts its own rsyslogd); the collector is
stopped under load and every line arrives after it is back; logrotate with a copy of
ops/logrotate/testdata-api rotates the logs under load, losing and splitting no line."""

import collections
import gzip
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from harness import ROOT, Server, free_port, record, terminate, wait_for  # noqa: E402

IS_ROOT = os.geteuid() == 0
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


class Collector:
    """rsyslogd -n -f ops/rsyslog/collector.conf, unprivileged (as nobody when the tests run as
    root), on free loopback ports, writing into its own temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-it-collector-")
        self.relp_port = free_port()
        self.tcp_port = free_port()
        self.proc = None
        # The configuration is read from a copy: as nobody, rsyslogd cannot read the checkout
        # when it lies under a closed directory (/root on a fresh machine).
        self.conf_dir = tempfile.mkdtemp(prefix="tdapi-it-collector-conf-")
        self.conf = os.path.join(self.conf_dir, "collector.conf")
        shutil.copyfile(os.path.join(ROOT, "ops", "rsyslog", "collector.conf"), self.conf)
        if IS_ROOT:
            nobody = pwd.getpwnam("nobody")
            for path in (self.dir, self.conf_dir, self.conf):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def start(self):
        env = dict(os.environ, COLLECTOR_DIR=self.dir, COLLECTOR_ADDRESS="127.0.0.1",
                   COLLECTOR_RELP_PORT=str(self.relp_port), COLLECTOR_TCP_PORT=str(self.tcp_port))
        cmd = [RSYSLOGD, "-n", "-f", self.conf, "-i", os.path.join(self.dir, "collector.pid")]
        if IS_ROOT:
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + cmd
        self.out = open(os.path.join(tempfile.gettempdir(), os.path.basename(self.dir) + ".out"), "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        ok = wait_for(lambda: self._listening(self.relp_port) and self._listening(self.tcp_port)
                      or self.proc.poll() is not None, timeout=30)
        if not ok or self.proc.poll() is not None:
            raise RuntimeError(f"collector did not start: {self.output()}")
        return self

    @staticmethod
    def _listening(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self):
        terminate(self.proc)
        if self.proc:
            self.out.close()
        self.proc = None

    def output(self):
        try:
            with open(self.out.name, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, AttributeError):
            return ""

    def cleanup(self):
        self.stop()
        if not os.environ.get("KEEP_DATA"):
            shutil.rmtree(self.dir, ignore_errors=True)
            shutil.rmtree(self.conf_dir, ignore_errors=True)
            try:
                os.unlink(self.out.name)
            except (OSError, AttributeError):
                pass

    def hosts(self):
        return [h for h in os.listdir(self.dir) if os.path.isdir(os.path.join(self.dir, h))]

    def lines(self, stream):
        """Every line of <dir>/<host>/<stream>.log of every host, as raw strings."""
        out = []
        for h in self.hosts():
            try:
                with open(os.path.join(self.dir, h, stream + ".log"), "rb") as f:
                    out += f.read().decode().splitlines()
            except FileNotFoundError:
                pass
        return out

    def all_bytes(self):
        data = b""
        for base, _, files in os.walk(self.dir):
            for name in files:
                with open(os.path.join(base, name), "rb") as f:
                    data += f.read()
        return data


def local_lines(server, name):
    """Lines of logs/NAME and of its rotated copies (NAME.1, NAME.2.gz ...), raw."""
    out = []
    logs = os.path.join(server.data_dir, "logs")
    for f in sorted(os.listdir(logs)):
        if f == name or re.fullmatch(re.escape(name) + r"\.\d+(\.gz)?", f):
            with (gzip.open if f.endswith(".gz") else open)(os.path.join(logs, f), "rb") as fh:
                out += fh.read().decode().splitlines()
    return out


class Load:
    """POSTs from a few threads, bounded in count and time; acked holds every 201's test_id.
    pause()/resume() hold the threads between requests."""

    # Long enough for every phase of a test on a loaded CI machine (phases wait for counts, not
    # times); the pause between requests keeps a fast machine from using the count up early.
    def __init__(self, server, prefix, threads=4, max_requests=20000, seconds=240):
        self.server, self.prefix = server, prefix
        self.acked, self.failed = [], []
        self.lock = threading.Lock()
        self.stop_event, self.go = threading.Event(), threading.Event()
        self.go.set()
        self.deadline = time.monotonic() + seconds
        self.per_thread = max_requests // threads
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]
        self.busy = 0

    def _run(self, n):
        for i in range(self.per_thread):
            self.go.wait()
            if self.stop_event.is_set() or time.monotonic() > self.deadline:
                return
            tid = f"{self.prefix}-{n}-{i}"
            with self.lock:
                self.busy += 1
            try:
                r = self.server.request("POST", "/tests", record(tid, clinic=self.prefix), timeout=30)
            except OSError as e:
                r = e
            with self.lock:
                self.busy -= 1
                (self.acked if getattr(r, "status", None) == 201 else self.failed).append((tid, r))
            time.sleep(0.01)  # bounded rate: 400 requests a second at most

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def pause(self):
        """Holds the threads; whether every request in flight has ended."""
        self.go.clear()
        return wait_for(lambda: self.busy == 0, timeout=60)

    def resume(self):
        self.go.set()

    def count(self):
        with self.lock:
            return len(self.acked)

    def finish(self):
        self.stop_event.set()
        self.go.set()
        for t in self.threads:
            t.join()


def missing_lines(collector, server, since=None):
    """{stream: local lines not at the collector (a multiset difference)}, of every line or only
    of those from line since[stream] of the current local file on."""
    out = {}
    for stream in ("app", "access"):
        local = local_lines(server, stream + ".log")
        if since is not None:
            local = local[since[stream]:]
        out[stream] = list((collections.Counter(local) - collections.Counter(collector.lines(stream))).elements())
    return out


def wait_until_arrived(test, collector, server, timeout=90, since=None):
    """Polls until the collector holds every local line of both streams (from since on, see
    missing_lines); fails the test with what is missing otherwise."""
    arrived = wait_for(lambda: not any(missing_lines(collector, server, since).values()), timeout=timeout)
    test.assertTrue(arrived, f"lines missing at the collector: {missing_lines(collector, server, since)}; "
                             f"forwarder log: {server.read_log('forwarder.log')[-1500:]!r}")


def line_counts(server):
    return {stream: len(local_lines(server, stream + ".log")) for stream in ("app", "access")}


class Forwarding(unittest.TestCase):
    def setUp(self):
        self.collector = Collector().start()

    def tearDown(self):
        self.collector.cleanup()

    def test_both_streams_arrive_joinable_by_request_id_without_patient_data(self):
        c = self.collector
        secret = uuid.uuid4().hex[:12]
        with Server(LOG_FORWARD=f"tcp://127.0.0.1:{c.tcp_port}") as s:
            ids = {}
            for i in range(20):
                rec = record(f"fwd-{i}", clinic="fwd", patient=f"PATIENT{secret}{i}",
                             result=f"RESULT{secret}{i} line\nwith a newline")
                r = s.request("POST", "/tests", rec)
                self.assertEqual(r.status, 201, r)
                ids[r.headers["x-request-id"]] = f"fwd-{i}"
            # Patient ids in a body and in a query string, and a 400 that names fields.
            self.assertEqual(s.request("POST", "/tests/search",
                                       {"clinic_id": "fwd", "patient_id": f"PATIENT{secret}3"}).status, 200)
            self.assertEqual(s.request("GET", f"/tests?clinic_id=fwd&patient_id=PATIENT{secret}4").status, 200)
            self.assertEqual(s.request("POST", "/tests", {"test_id": "bad", "patient_id": f"PATIENT{secret}x",
                                                          "result": f"RESULT{secret}x"}).status, 400)

            def joined():
                access = {l.get("request_id"): l for l in map(json.loads, c.lines("access"))}
                app = {l.get("request_id"): l for l in map(json.loads, c.lines("app"))
                       if l.get("event") == "request"}
                return all(rid in access and rid in app for rid in ids), access, app
            self.assertTrue(wait_for(lambda: joined()[0], timeout=60),
                            f"collector: {c.hosts()} {c.output()[-800:]}")
            _, access, app = joined()
            for rid, tid in ids.items():
                self.assertEqual((access[rid]["method"], access[rid]["path"], access[rid]["status"]),
                                 ("POST", "/tests", 201))
                self.assertEqual((app[rid]["test_id"], app[rid]["status"], app[rid]["txn"]), (tid, 201, "commit"))
            wait_until_arrived(self, c, s)
            # One directory per sending host, the lines as written locally, byte for byte.
            self.assertEqual(len(c.hosts()), 1, c.hosts())
            host = c.hosts()[0]
            self.assertEqual(sorted(os.listdir(os.path.join(c.dir, host))), ["access.log", "app.log"])
            for stream in ("app", "access"):
                self.assertEqual(sorted(c.lines(stream)), sorted(local_lines(s, stream + ".log")))
            # The README's recipe, on the collector's files.
            rid = next(iter(ids))
            p = subprocess.run(["jq", "-c", "--arg", "id", rid, "select(.request_id==$id)",
                                os.path.join(c.dir, host, "access.log"), os.path.join(c.dir, host, "app.log")],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(len(p.stdout.splitlines()), 2, p.stdout)
        data = c.all_bytes()
        self.assertNotIn(secret.encode(), data)
        self.assertNotIn(b"PATIENT", data)
        self.assertNotIn(b"RESULT", data)

    def test_a_collector_outage_under_load_loses_no_line(self):
        c = self.collector
        with Server(LOG_FORWARD=f"relp://127.0.0.1:{c.relp_port}") as s:
            load = Load(s, "outage").start()
            try:
                self.assertTrue(wait_for(lambda: load.count() >= 100, timeout=60))
                c.stop()  # the collector is down from here on
                down_from = line_counts(s)
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 300, timeout=60))
                time.sleep(5)  # and stays down a while longer under load
                down_until = line_counts(s)
                c.start()
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 100, timeout=60))
            finally:
                load.finish()
            self.assertEqual(load.failed, [])
            wait_until_arrived(self, c, s)
            posts = [l for l in map(json.loads, c.lines("app"))
                     if l.get("event") == "request" and l.get("method") == "POST"]
            self.assertEqual(sorted(set(l["test_id"] for l in posts)), sorted(t for t, _ in load.acked))
            print(f"\noutage: {len(load.acked)} POSTs; lines written while the collector was down: "
                  f"{ {k: down_until[k] - down_from[k] for k in down_from} }; at the collector: "
                  f"app {len(c.lines('app'))} (local {len(local_lines(s, 'app.log'))}), "
                  f"access {len(c.lines('access'))} (local {len(local_lines(s, 'access.log'))})",
                  file=sys.stderr)

    def test_a_forwarder_restart_while_the_collector_is_down_keeps_the_queue(self):
        c = self.collector
        with Server(LOG_FORWARD=f"relp://127.0.0.1:{c.relp_port}") as s:
            load = Load(s, "fwdrestart").start()
            try:
                self.assertTrue(wait_for(lambda: load.count() >= 100, timeout=60))
                c.stop()
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 300, timeout=60))
                # The local rsyslogd stopped while lines wait: it saves its queue to disk, and
                # run.sh starts it again.
                load.pause()
                self.assertTrue(wait_for(lambda: self._posts_logged(s) == load.count() + len(load.failed),
                                         timeout=30))
                restart_from = line_counts(s)
                fwd = s.pid_of("rsyslogd")
                os.kill(fwd, signal.SIGTERM)
                self.assertTrue(wait_for(lambda: self._pid(s) not in (None, fwd), timeout=30),
                                s.read_log("app.log")[-1000:])
                queue = os.listdir(os.path.join(s.data_dir, "rsyslog", "queue"))
                self.assertTrue(any(f.startswith("forward") for f in queue), queue)
                load.resume()
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 100, timeout=60))
                c.start()
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 100, timeout=60))
            finally:
                load.finish()
            self.assertEqual(load.failed, [])
            # Every line from the restart on arrives, and every line the queue held; but nginx
            # finds its socket gone at its first access line after the restart: it drops that
            # line (saying so in its error log) and reconnects, so each nginx worker loses one
            # line of the forwarded copy (the local access.log has it).
            nginx_drops = s.read_log("nginx-error.log").count(b"send() failed")
            self.assertLessEqual(nginx_drops, os.cpu_count())
            self.assertTrue(wait_for(lambda: not missing_lines(c, s, restart_from)["app"] and
                                     len(missing_lines(c, s, restart_from)["access"]) <= nginx_drops,
                                     timeout=90), missing_lines(c, s, restart_from))
            # What the forwarder held when it was stopped is mostly in its saved queue, but not
            # all: lines omrelp had already handed to librelp (RELP's window), and lines of the
            # batch it was retrying, are lost when rsyslogd stops before the collector is back
            # (measured: from a few to a few hundred lines; rsyslog issue 2610). README
            # "Operations" says so. Counted here, not asserted.
            lost = missing_lines(c, s)
            print(f"\nforwarder restart: {len(load.acked)} POSTs; queue files at the restart: {queue}; "
                  f"lines lost by the forwarder's stop during the outage: "
                  f"{ {k: len(v) for k, v in lost.items()} }", file=sys.stderr)

    def test_a_killed_forwarder_resends_only_the_lines_since_its_last_saved_position(self):
        c = self.collector
        with Server(LOG_FORWARD=f"tcp://127.0.0.1:{c.tcp_port}") as s:
            load = Load(s, "fwdkill").start()
            try:
                # More lines than a saved position leaves unsaved, all forwarded.
                self.assertTrue(wait_for(lambda: load.count() >= 400, timeout=60))
                load.pause()
                wait_until_arrived(self, c, s)
                load.resume()
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 50, timeout=60))
                # Killed outright: no stop that saves where it was; run.sh starts it again.
                fwd = s.pid_of("rsyslogd")
                os.kill(fwd, signal.SIGKILL)
                self.assertTrue(wait_for(lambda: self._pid(s) not in (None, fwd), timeout=30),
                                s.read_log("app.log")[-1000:])
                before = load.count()
                self.assertTrue(wait_for(lambda: load.count() >= before + 100, timeout=60))
                load.pause()
                self.assertTrue(wait_for(lambda: self._posts_logged(s) == load.count() + len(load.failed),
                                         timeout=30))
            finally:
                load.finish()
            self.assertEqual(load.failed, [])
            local = {stream: local_lines(s, stream + ".log") for stream in ("app", "access")}

            def again():
                return {stream: sum((collections.Counter(c.lines(stream)) -
                                     collections.Counter(local[stream])).values())
                        for stream in local}
            # What arrives twice is what was read after the last saved position (at most 50
            # lines a file, and what was in flight), not the files from their start.
            time.sleep(3)
            wait_for(lambda: not any(missing_lines(c, s).values()), timeout=30)
            twice = again()
            lost = {k: len(v) for k, v in missing_lines(c, s).items()}
            print(f"\nforwarder killed: {len(load.acked)} POSTs, local lines "
                  f"{ {k: len(v) for k, v in local.items()} }; sent twice {twice}; lost (in the "
                  f"killed forwarder's memory) {lost}", file=sys.stderr)
            for stream in local:
                self.assertLessEqual(twice[stream], 150, (stream, twice, len(local[stream])))

    @staticmethod
    def _posts_logged(s):
        return sum(1 for l in local_lines(s, "access.log") if '"method":"POST"' in l)

    @staticmethod
    def _pid(s):
        try:
            return s.pid_of("rsyslogd")
        except (OSError, ValueError, IndexError):
            return None


class Rotation(unittest.TestCase):
    def test_logrotate_under_load_loses_and_splits_no_line_locally_or_at_the_collector(self):
        c = Collector().start()
        try:
            with Server(LOG_FORWARD=f"relp://127.0.0.1:{c.relp_port}") as s:
                conf = self._logrotate_conf(s.data_dir)
                state = os.path.join(s.data_dir, "logrotate.state")
                load = Load(s, "rot").start()
                try:
                    for n in range(2):  # two rotations: app.log.1 becomes app.log.2
                        # The forwarder is on the file the last rotation made before the next
                        # one renames it: imfile polls once a second, so a file that lived
                        # less than a poll between two rotations is never seen (seen in CI,
                        # rotations 0.8 s apart; a real rotation is daily or at 100 MB). The
                        # load pauses meanwhile (the newest lines are always a poll behind).
                        self.assertTrue(load.pause(), "the load did not pause")
                        wait_until_arrived(self, c, s)
                        load.resume()
                        # Then the rotation runs under load, with the forwarder up to a poll
                        # behind: it has the renamed file's last lines still to read.
                        before = load.count()
                        self.assertTrue(wait_for(lambda: load.count() >= before + 200, timeout=60))
                        p = subprocess.run([LOGROTATE, "-f", "-s", state, conf],
                                           capture_output=True, text=True, timeout=60)
                        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                        self.assertTrue(wait_for(lambda: os.path.exists(s.log_path("app.log")), timeout=30))
                    before = load.count()
                    self.assertTrue(wait_for(lambda: load.count() >= before + 200, timeout=60))
                finally:
                    load.finish()
                self.assertEqual(load.failed, [])
                acked = sorted(t for t, _ in load.acked)
                logs = sorted(os.listdir(os.path.join(s.data_dir, "logs")))
                # delaycompress: the newest rotated file stays as it is, older ones are gzipped
                for name in ("app.log.1", "app.log.2.gz", "access.log.1", "access.log.2.gz"):
                    self.assertIn(name, logs)

                def posts(lines):  # every line must parse: a split line would not
                    return sorted(l["test_id"] for l in map(json.loads, lines)
                                  if l.get("event") == "request" and l.get("method") == "POST")

                self.assertTrue(wait_for(lambda: posts(local_lines(s, "app.log")) == acked, timeout=30))
                access = [json.loads(l) for l in local_lines(s, "access.log")]
                self.assertEqual(sum(1 for l in access if l["method"] == "POST" and l["path"] == "/tests"),
                                 len(acked))
                self.assertTrue(any(json.loads(l).get("event") == "log_reopened"
                                    for l in local_lines(s, "app.log")))
                # The forwarder followed the renames: the collector has every line too.
                wait_until_arrived(self, c, s)
                self.assertEqual(posts(c.lines("app")), acked)
        finally:
            c.cleanup()

    @staticmethod
    def _logrotate_conf(data_dir):
        """ops/logrotate/testdata-api with the packaged paths replaced by this data dir (and,
        when not root, without `su`: the logs are the invoking user's)."""
        with open(os.path.join(ROOT, "ops", "logrotate", "testdata-api")) as f:
            text = f.read().replace("/var/lib/testdata-api", data_dir)
        if not IS_ROOT:
            text = re.sub(r"^\s*su .*$", "", text, flags=re.M)
        path = os.path.join(data_dir, "logrotate.conf")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path


class Refusals(unittest.TestCase):
    def test_a_bad_log_forward_is_a_start_up_failure(self):
        for value in ("udp://127.0.0.1:514", "tcp://127.0.0.1", "relp://host:0", "tcp://:514",
                      "tcp://a b:1", "relp://127.0.0.1:65536", 'tcp://x":1'):
            with tempfile.TemporaryDirectory(prefix="tdapi-it-fwdbad-") as d:
                s = Server(data_dir=d, LOG_FORWARD=value)
                s.start(wait=False)
                try:
                    rc = s.proc.wait(60)
                finally:
                    s.stop()
                    s.output.close()
                self.assertEqual(rc, 78, (value, s.run_output()))
                self.assertIn("LOG_FORWARD must be", s.run_output())
                self.assertFalse(os.path.exists(os.path.join(d, "run", "app.pid")), value)

    def test_without_log_forward_no_rsyslogd_is_started(self):
        with Server() as s:
            self.assertEqual(s.request("GET", "/healthz").status, 200)
            for name in ("rsyslogd.pid", "syslog.sock"):
                self.assertFalse(os.path.exists(os.path.join(s.data_dir, "run", name)))
            self.assertFalse(os.path.exists(os.path.join(s.data_dir, "rsyslog")))
            with open(os.path.join(s.data_dir, "nginx.conf")) as f:
                self.assertNotIn("syslog:", f.read())


if __name__ == "__main__":
    unittest.main()
