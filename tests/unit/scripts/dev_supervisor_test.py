#!/usr/bin/env python3
"""dev_supervisor_test.py: the pieces of make run's supervisor (scripts/dev_supervisor.py) that
decide without processes: exit statuses, restart back-off, nginx's quick failures, the
redactor, files written as the owner; and that run.sh stays a launcher (under 300 lines). The
supervisor running real nginx and app nodes is tested by the integration tests (test_signals,
test_supervisor, test_process, test_nodes, test_logs)."""
import errno
import json
import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
spec = importlib.util.spec_from_file_location(
    "dev_supervisor", os.path.join(ROOT, "scripts", "dev_supervisor.py"))
sup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sup)


class Pure(unittest.TestCase):
    def test_a_death_by_signal_is_reported_as_a_shell_would(self):
        self.assertEqual([sup.status_of(rc) for rc in (0, 1, 78, -9, -15)], [0, 1, 78, 137, 143])

    def test_restarts_back_off_from_the_second_quick_one_up_to_5_s(self):
        self.assertEqual([sup.restart_delay(q) for q in range(9)], [0, 0, 1, 2, 3, 4, 5, 5, 5])

    def test_nginx_error_lines_lose_query_strings_referer_and_unprintable_bytes(self):
        line = (b'2026/01/01 [error] 7#7: *1 connect() failed, client: 127.0.0.1, request: '
                b'"GET /tests?clinic_id=c1&patient_id=P-SECRET HTTP/1.1", referrer: '
                b'"http://x/?patient_id=P-SECRET"\n')
        out = sup.redact(line)
        self.assertNotIn(b"P-SECRET", out)
        self.assertNotIn(b"referrer", out)
        self.assertIn(b'"GET /tests?[redacted] HTTP/1.1"', out)
        self.assertEqual(sup.redact(b"a\x1b[31mb\xc3\xa9\tc\n"), b"a?[31mb??\tc")

    def test_the_supervisors_lines_are_json_like_the_apps(self):
        line = sup.json_line("warn", "app_restarted", 'node 2: "quoted"\n')
        self.assertTrue(line.endswith("\n"))
        import json
        parsed = json.loads(line)
        self.assertEqual((parsed["level"], parsed["event"], parsed["detail"]),
                         ("warn", "app_restarted", 'node 2: "quoted"\n'))
        self.assertRegex(parsed["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Files(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-sup-unit-")
        self.addCleanup(lambda: os.system("rm -rf -- '%s'" % self.dir))
        self.victim = os.path.join(self.dir, "victim")
        with open(self.victim, "w") as f:
            f.write("untouched\n")

    def test_put_file_replaces_a_link_and_never_writes_through_it(self):
        path = os.path.join(self.dir, "nginx.conf")
        os.symlink(self.victim, path)
        sup.put_file(path, b"new\n")
        self.assertFalse(os.path.islink(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read(), "new\n")
        with open(self.victim) as f:
            self.assertEqual(f.read(), "untouched\n")
        self.assertEqual(sorted(os.listdir(self.dir)), ["nginx.conf", "victim"])  # no temp left

    def test_a_file_cut_short_by_a_full_disk_is_never_put_in_place(self):
        # A full disk: the first write is short, the next one fails.
        path = os.path.join(self.dir, "openapi.yaml")
        with open(path, "wb") as f:
            f.write(b"old whole file\n")
        real_write, calls = os.write, []

        def full_disk_write(fd, data):
            calls.append(len(data))
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, bytes(data[:4]))

        with mock.patch.object(sup.os, "write", full_disk_write):
            with self.assertRaises(OSError):
                sup.put_file(path, b"new whole file\n")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old whole file\n")
        self.assertEqual(sorted(os.listdir(self.dir)), ["openapi.yaml", "victim"])  # no temp left
        calls.clear()
        with mock.patch.object(sup.os, "write", lambda fd, data: real_write(fd, bytes(data[:3]))):
            sup.put_file(path, b"short writes\n")  # continued until whole
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"short writes\n")

    def test_append_refuses_a_link_and_appends_to_a_file(self):
        path = os.path.join(self.dir, "app.log")
        os.symlink(self.victim, path)
        with self.assertRaises(OSError):
            sup.append(path, b"line\n")
        os.unlink(path)
        sup.append(path, b"one\n")
        sup.append(path, b"two\n")
        with open(path) as f:
            self.assertEqual(f.read(), "one\ntwo\n")
        self.assertEqual(sup.tail(path, 1), b"two\n")

    def test_the_redact_helper_keeps_one_error_line_a_line(self):
        path = os.path.join(self.dir, "nginx-error.log")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dev_supervisor.py"), "redact",
                        path], input=b"one?patient_id=P1 x\ntwo\n", check=True, timeout=30)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"one?[redacted] x\ntwo\n")

    def test_as_the_owner_files_are_the_owners(self):
        # Started as root, what the supervisor writes in DATA_DIR is the service user's (here
        # nobody's); as anyone else, its own.
        user = "nobody" if os.geteuid() == 0 else None
        expected = pwd.getpwnam("nobody").pw_uid if user else os.geteuid()
        if user:
            os.chown(self.dir, expected, -1)
        owner = sup.Owner(user)
        path = os.path.join(self.dir, "run.pid")
        self.assertEqual(owner.call(sup.put_file, path, b"1\n"), b"")
        self.assertEqual(os.stat(path).st_uid, expected)
        self.assertEqual(owner.call(sup.tail, path, 1), b"1\n")
        self.assertIsNone(owner.try_call(sup.append, os.path.join(self.dir, "no", "such"), b"x"))
        if user:  # nobody cannot read root's 0600 file
            os.chmod(self.victim, 0o600)
            self.assertIsNone(owner.try_call(sup.tail, self.victim, 1))


class Policy(unittest.TestCase):
    """What the supervisor does when a child exits, on a Supervisor of a temp DATA_DIR."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-sup-unit-")
        self.addCleanup(lambda: os.system("rm -rf -- '%s'" % self.dir))
        os.makedirs(os.path.join(self.dir, "logs"))
        saved = {s: signal.getsignal(s) for s in sup.OWN_SIGNALS + (signal.SIGCHLD,)}
        self.addCleanup(lambda: [signal.signal(s, h) for s, h in saved.items()])
        self.addCleanup(signal.set_wakeup_fd, -1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved_err = os.dup(2)
        os.dup2(devnull, 2)  # its messages
        self.addCleanup(lambda: (os.dup2(saved_err, 2), os.close(saved_err), os.close(devnull)))
        self.s = sup.Supervisor({"DATA_DIR": self.dir, "APP_NODES": "2"})

    def events(self):
        with open(os.path.join(self.dir, "logs", "app.log")) as f:
            import json
            return [json.loads(line) for line in f]

    def test_nodes_have_their_own_sockets_and_labels(self):
        self.assertEqual([os.path.basename(n.sock) for n in self.s.nodes], ["app-1.sock", "app-2.sock"])
        self.assertEqual([n.label for n in self.s.nodes], ["node 1: ", "node 2: "])
        one = sup.Supervisor({"DATA_DIR": self.dir})
        self.assertEqual([(os.path.basename(n.sock), n.label) for n in one.nodes], [("app.sock", "")])

    def test_start_up_failure_and_bad_usage_stop_everything_other_statuses_restart(self):
        node = self.s.nodes[1]
        node.started = time.monotonic() - 60
        self.assertIsNone(self.s.node_exited(node, 1))
        self.assertEqual(node.state, "backoff")
        self.assertEqual(self.s.node_exited(node, 78), 78)
        self.assertEqual(self.s.node_exited(node, 2), 2)
        got = [(e["event"], e["detail"]) for e in self.events()]
        self.assertEqual(got[0], ("app_restarted", "node 2: the app exited with status 1; restarting it"))
        self.assertEqual(got[1][0], "app_exited")
        self.assertIn("node 2: the app exited with status 78 and is not restarted", got[1][1])

    def test_a_node_that_keeps_dying_at_once_backs_off(self):
        node = self.s.nodes[0]
        delays = []
        for _ in range(4):
            node.started = time.monotonic()
            self.s.node_exited(node, 137)
            delays.append(round(node.due - time.monotonic()))
        self.assertEqual(delays, [0, 1, 2, 3])
        node.started = time.monotonic() - 60  # a long run resets it
        self.s.node_exited(node, 137)
        self.assertEqual(node.quick, 0)

    def test_nginx_stopped_by_signals_restarts_failing_on_its_own_5_times_stops(self):
        ng = self.s.nginx
        for rc in (0, 137, 0, 137, 0, 137, 0):  # QUIT/TERM (status 0) and KILL, again and again
            ng.started = time.monotonic()
            self.assertIsNone(self.s.nginx_exited(0x7FFFFFF0, rc))
        self.assertEqual(ng.quick, 0)
        ng.started = time.monotonic() - 60
        self.s.nginx_exited(0x7FFFFFF0, 1)
        results = []
        for _ in range(5):  # a port taken: status 1 each time, at once
            ng.started = time.monotonic()
            results.append(self.s.nginx_exited(0x7FFFFFF0, 1))
        self.assertEqual(results, [None, None, None, None, 1])
        self.assertEqual([e["event"] for e in self.events()][-5:], ["nginx_restarted"] * 4 + ["nginx_exited"])

    def test_a_node_started_as_a_stop_comes_is_sent_sigterm_too(self):
        # A SIGTERM to the supervisor arriving while it restarts a node: the new node is told
        # to stop too, not left to the SIGKILL after the stop timeout.
        app = os.path.join(self.dir, "app")
        with open(app, "w") as f:
            f.write(FAKE_APP)
        os.chmod(app, 0o755)
        os.makedirs(os.path.join(self.dir, "run"))
        s = sup.Supervisor({"DATA_DIR": self.dir, "APP_BIN": app, "STOP_TIMEOUT_MS": "100"})
        node = s.nodes[0]
        node.state, node.due = "backoff", 0
        real_helper = s.helper

        def helper(*args):  # the stop comes as the restart begins
            s.stop()
            return real_helper(*args)
        s.helper = helper
        status = s.supervise()
        self.assertTrue(s.stopping)
        self.assertIn(status, (0, 143), "the restarted node was not sent SIGTERM (137: SIGKILL)")


FAKE_APP = """#!/usr/bin/python3
# The app's part: exits FAKE_EXIT at once if set, else listens on SOCKET until SIGTERM.
import os, signal, socket, sys, time
if os.environ.get("FAKE_EXIT"):
    print("fake app: failing", file=sys.stderr)
    sys.exit(int(os.environ["FAKE_EXIT"]))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
s = socket.socket(socket.AF_UNIX)
s.bind(os.environ["SOCKET"])
while True:
    time.sleep(1)
"""
FAKE_NGINX = """#!/usr/bin/python3
# nginx's part: writes run/nginx.pid, exits 0 on SIGQUIT.
import os, signal, sys, time
signal.signal(signal.SIGQUIT, lambda *_: sys.exit(0))
with open(os.path.join(sys.argv[sys.argv.index("-p") + 1], "run", "nginx.pid"), "w") as f:
    f.write("%d\\n" % os.getpid())
while True:
    time.sleep(1)
"""


class Processes(unittest.TestCase):
    """The supervisor (`dev_supervisor.py serve`) over stand-ins for the app and nginx."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-sup-unit-")
        self.addCleanup(lambda: os.system("rm -rf -- '%s'" % self.dir))
        self.data = os.path.join(self.dir, "data")
        for d in ("run", "logs"):
            os.makedirs(os.path.join(self.data, d))
        self.env = dict(os.environ, DATA_DIR=self.data, START_TIMEOUT="20", STOP_TIMEOUT_MS="2000",
                        LISTEN="127.0.0.1:1", AUTH="off", TDAPI_NGINX_CONF="/dev/null")
        for name, text in (("APP_BIN", FAKE_APP), ("NGINX_BIN", FAKE_NGINX)):
            path = os.path.join(self.dir, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
            self.env[name] = path
        for name in ("TDAPI_OWNER", "LOG_FORWARD", "DATABASE_URL", "TDAPI_CLEANUP_DIR"):
            self.env.pop(name, None)

    def start(self, **env):
        self.out = os.path.join(self.dir, "output")
        with open(self.out, "wb") as out:
            p = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "dev_supervisor.py"),
                                  "serve"], env=dict(self.env, **env), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.addCleanup(lambda: p.poll() is not None or os.killpg(p.pid, signal.SIGKILL))
        return p

    def output(self):
        with open(self.out) as f:
            return f.read()

    def pid(self, name):
        try:
            with open(os.path.join(self.data, "run", name)) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def wait_for(self, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def test_a_killed_app_and_nginx_are_restarted_and_a_stop_ends_everything(self):
        p = self.start()
        self.assertTrue(self.wait_for(lambda: self.pid("app.pid") and self.pid("nginx.pid")))
        self.assertEqual(self.pid("supervisor.pid"), p.pid)
        app, nginx = self.pid("app.pid"), self.pid("nginx.pid")
        os.kill(app, signal.SIGKILL)
        self.assertTrue(self.wait_for(lambda: self.pid("app.pid") not in (None, app)))
        os.kill(nginx, signal.SIGKILL)
        self.assertTrue(self.wait_for(lambda: self.pid("nginx.pid") not in (None, nginx)))
        with open(os.path.join(self.data, "logs", "app.log")) as f:
            events = [json.loads(line) for line in f]
        self.assertEqual([(e["event"], e["detail"]) for e in events],
                         [("app_restarted", "the app exited with status 137; restarting it"),
                          ("nginx_restarted", "nginx exited with status 137; restarting it")])
        now = [self.pid("app.pid"), self.pid("nginx.pid")]
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(30), 0, self.output())
        for pid in now:
            self.assertTrue(self.wait_for(lambda: not os.path.exists("/proc/%d" % pid), 10), pid)

    def test_an_app_that_cannot_be_started_again_is_retried_and_the_supervisor_stays(self):
        p = self.start()
        self.assertTrue(self.wait_for(lambda: self.pid("app.pid") and self.pid("nginx.pid")))
        app, binary = self.pid("app.pid"), self.env["APP_BIN"]
        os.rename(binary, binary + ".moved")  # the binary moved away (an upgrade), then a crash
        os.kill(app, signal.SIGKILL)

        def events():
            try:
                with open(os.path.join(self.data, "logs", "app.log")) as f:
                    return [json.loads(line) for line in f if line.startswith("{")]
            except FileNotFoundError:  # (its writer not yet started)
                return []
        self.assertTrue(self.wait_for(lambda: [e for e in events()
                                               if e["event"] == "app_start_failed"]), self.output())
        failed = [e for e in events() if e["event"] == "app_start_failed"][0]
        self.assertEqual(failed["level"], "error")
        self.assertIn("the app could not be started (%s: " % binary, failed["detail"])
        self.assertIsNone(p.poll(), self.output())  # the supervisor (and nginx) still there
        os.rename(binary + ".moved", binary)  # back: the next try starts it
        self.assertTrue(self.wait_for(lambda: self.pid("app.pid") not in (None, app), 30))
        self.assertTrue(self.wait_for(lambda: os.path.exists(os.path.join(self.data, "run",
                                                                          "app.sock"))))
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(30), 0, self.output())

    def test_a_start_up_failure_is_not_restarted_and_says_why(self):
        p = self.start(FAKE_EXIT="78")
        self.assertEqual(p.wait(30), 78)
        out = self.output()
        self.assertIn("the app did not start", out)
        with open(os.path.join(self.data, "logs", "app.log")) as f:
            self.assertIn("fake app: failing", f.read())  # its stderr, before its log is open
        self.assertIsNone(self.pid("nginx.pid"))  # nginx never started


class Launcher(unittest.TestCase):
    def test_run_sh_stays_a_launcher_under_300_lines(self):
        with open(os.path.join(ROOT, "scripts", "run.sh")) as f:
            lines = f.read().count("\n")
        self.assertLess(lines, 300, "scripts/run.sh: supervision belongs in scripts/dev_supervisor.py")


if __name__ == "__main__":
    unittest.main(verbosity=2)
