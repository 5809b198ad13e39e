#!/usr/bin/env python3
"""test_signals.py: every process of an instance killed or stopped from outside (an operator's
signal, the OOM killer), one at a time: nginx's master (SIGKILL, SIGQUIT, SIGTERM), the
supervisor run.sh (SIGKILL), the app (SIGKILL). After each, either the service serves again
under the same supervisor, or nothing of the instance is left (no worker holding the port, no
process holding DATA_DIR's lock) and a new run.sh starts on the same DATA_DIR. Then a full disk
under the supervisor: the app killed while nothing can be written, and a start on a full disk."""

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import PG_HOST, ROOT, SQLITE_ONLY, Server, free_port, record, wait_for  # noqa: E402

IS_ROOT = os.geteuid() == 0


def stat_fields(pid):
    """(state, ppid, pgid) of a process, or None once it is gone (or a zombie: it holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid):
    return stat_fields(pid) is not None


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def workers_of(master):
    """nginx's worker processes of a master: its children, or (once it is gone) the orphans
    left in its process group."""
    out = []
    for pid in all_pids():
        f = stat_fields(pid)
        if f and (f[1] == master or f[2] == master) and "nginx: worker process" in cmdline(pid):
            out.append(pid)
    return out


def holds_dir(pid, path):
    """True if the process has a descriptor open on the directory `path` (run.sh's lock)."""
    real = os.path.realpath(path)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == real:
                return True
        except OSError:
            continue
    return False


def port_refuses(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


class Instance:
    """The processes of a running Server: supervisor, app, nginx's master and workers."""

    def __init__(self, s):
        self.supervisor = s.proc.pid
        self.app = s.pid_of("app")
        self.master = s.pid_of("nginx")
        self.workers = workers_of(self.master)

    def everything(self):
        return [self.supervisor, self.app, self.master] + self.workers


def nginx_pid(s):
    """nginx's master pid from run/nginx.pid; None while there is none (a restart)."""
    try:
        return s.pid_of("nginx")
    except (OSError, ValueError, IndexError):
        return None


def process_table(s):
    """The instance's processes (for a failure message): run.sh's descendants."""
    rows, parents = [], {s.proc.pid}
    for _ in range(4):
        for pid in all_pids():
            f = stat_fields(pid)
            if f and f[1] in parents and pid not in parents:
                parents.add(pid)
                rows.append(f"{pid} ppid={f[1]} pgid={f[2]} {f[0]} {cmdline(pid)[:100]}")
    return "\n".join(rows)


def serving(s):
    try:
        return s.request("GET", "/healthz", timeout=5).status == 200
    except OSError:
        return False


class NginxSignals(unittest.TestCase):
    def check_nginx_comes_back(self, sig):
        with Server(AUTH="on") as s:
            before = Instance(s)
            self.assertGreater(len(before.workers), 0)
            os.kill(before.master, sig)
            # a new master, serving, under the same supervisor; the app untouched
            self.assertTrue(wait_for(lambda: nginx_pid(s) not in (None, before.master) and serving(s), 30),
                            s.run_output()[-3000:] + process_table(s) + s.read_log("nginx-error.log").decode()[-2000:])
            self.assertIsNone(s.proc.poll(), s.run_output()[-3000:])
            # no worker of the old master is left holding the port
            self.assertTrue(wait_for(lambda: not any(alive(w) for w in before.workers), 10),
                            [(w, cmdline(w)) for w in before.workers if alive(w)])
            self.assertEqual(s.pid_of("app"), before.app)
            self.assertTrue(alive(before.app))
            # keyless requests reach the app (401 under AUTH=on), not a 502 from nginx
            self.assertEqual(s.request("GET", "/tests?clinic_id=c1").status, 401)
            self.assertIn("nginx_restarted", s.read_log("app.log").decode())
            # and what runs nginx now is supervised again: the same signal once more
            again = Instance(s)
            os.kill(again.master, sig)
            self.assertTrue(wait_for(lambda: nginx_pid(s) not in (None, again.master) and serving(s), 30),
                            s.run_output()[-3000:] + process_table(s) + s.read_log("nginx-error.log").decode()[-2000:])
            self.assertEqual(s.stop(), 0)
            for pid in Instance.everything(again):
                self.assertTrue(wait_for(lambda: not alive(pid), 10), (pid, cmdline(pid)))

    def test_sigkill_to_nginx_master_restarts_nginx_and_ends_its_orphaned_workers(self):
        self.check_nginx_comes_back(signal.SIGKILL)

    def test_sigquit_to_nginx_master_restarts_nginx(self):
        self.check_nginx_comes_back(signal.SIGQUIT)

    def test_sigterm_to_nginx_master_restarts_nginx(self):
        self.check_nginx_comes_back(signal.SIGTERM)

    def test_nginx_stopped_again_and_again_by_signals_is_always_started_again(self):
        # Six stops within seconds of each start (more than the 5 quick failures that end the
        # instance when nginx cannot start): a signal is not a failure to start.
        with Server(AUTH="on") as s:
            for i, sig in enumerate([signal.SIGQUIT, signal.SIGKILL, signal.SIGTERM] * 2):
                master = nginx_pid(s)
                self.assertIsNotNone(master, process_table(s))
                os.kill(master, sig)
                self.assertTrue(wait_for(lambda: nginx_pid(s) not in (None, master) and serving(s), 30),
                                f"stop {i + 1} ({sig!r}): " + s.run_output()[-3000:] + process_table(s))
            self.assertIsNone(s.proc.poll(), s.run_output()[-3000:])
            self.assertNotIn("nginx_exited", s.read_log("app.log").decode())
            self.assertEqual(s.request("GET", "/tests?clinic_id=c1").status, 401)

    def test_nginx_that_cannot_start_stops_everything_instead_of_retrying_forever(self):
        # The port is taken by another program: nginx exits (after its own retries) each time.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            s = Server(LISTEN=f"127.0.0.1:{port}")
            s.start(wait=False)
            try:
                self.assertTrue(wait_for(lambda: os.path.exists(os.path.join(s.data_dir, "run", "app.pid")), 60))
                app = s.pid_of("app")
                rc = s.proc.wait(180)
                out = s.run_output()
            finally:
                s.__exit__(None, None, None)
            self.assertEqual(rc, 1, out[-3000:])
            self.assertIn("nginx_exited", out)
            self.assertEqual(out.count("nginx_restarted"), 4, out[-3000:])
            self.assertFalse(alive(app))  # the app it started is stopped too

    @unittest.skipUnless(IS_ROOT, "the boundary is root (nginx's master) vs the service user")
    def test_a_restarted_nginx_never_reads_a_configuration_the_service_user_wrote(self):
        with Server() as s:
            # DATA_DIR/nginx.conf belongs to the service user: it writes one of its own (here a
            # second listener; it could as well load a module into root's nginx)
            conf = os.path.join(s.data_dir, "nginx.conf")
            planted = free_port()
            with open(conf) as f:
                text = f.read()
            self.assertIn("\nhttp {\n", text)
            text = text.replace("\nhttp {\n", "\nhttp {\n    server { listen 127.0.0.1:%d; "
                                "location / { return 200 \"planted\\n\"; } }\n" % planted, 1)
            with open(conf, "w") as f:
                f.write(text)
            before = Instance(s)
            os.kill(before.master, signal.SIGKILL)  # the next start of nginx (here a restart)
            self.assertTrue(wait_for(lambda: nginx_pid(s) not in (None, before.master) and serving(s), 30),
                            s.run_output()[-3000:])
            self.assertTrue(port_refuses(planted))

    def test_nginx_master_is_the_supervisors_own_child(self):
        # Nothing stands between the supervisor and nginx's master that a signal could take
        # away unsupervised: the test above (SIGKILL to the master) covers the whole chain.
        with Server(AUTH="on") as s:
            inst = Instance(s)
            self.assertEqual(stat_fields(inst.master)[1], inst.supervisor, cmdline(inst.master))


class SupervisorSignals(unittest.TestCase):
    def test_no_child_holds_the_lock_on_data_dir(self):
        with Server(AUTH="on") as s:
            inst = Instance(s)
            self.assertTrue(holds_dir(inst.supervisor, s.data_dir))
            for pid in [inst.app, inst.master] + inst.workers:
                self.assertFalse(holds_dir(pid, s.data_dir), (pid, cmdline(pid)))

    def test_sigkill_to_run_sh_leaves_nothing_serving_and_a_new_run_sh_starts(self):
        d = tempfile.mkdtemp(prefix="tdapi-sig-")
        self.addCleanup(subprocess.run, ["rm", "-rf", d])
        s = Server(data_dir=d, AUTH="off").start()
        try:
            self.assertEqual(s.request("POST", "/tests", record("sig-1", clinic="sig")).status, 201)
            inst = Instance(s)
            os.kill(inst.supervisor, signal.SIGKILL)
            s.proc.wait(10)
            left = lambda: [(p, cmdline(p)) for p in inst.everything() if alive(p)]  # noqa: E731
            self.assertTrue(wait_for(lambda: not left(), 10), left())
            self.assertTrue(port_refuses(s.port))
        finally:
            s.output.close()
            for pid in inst.everything():  # the test's own cleanup, should the fix fail
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        with Server(data_dir=d) as s2:
            self.assertEqual(s2.request("GET", "/tests/sig-1").status, 200)

    def test_a_stop_ends_nginx_also_when_run_sh_was_started_ignoring_signals(self):
        # A background job of a script starts with SIGINT and SIGQUIT ignored; run.sh itself
        # ignores SIGUSR1. The stop (QUIT) and the reopen (SIGHUP: USR1 to nginx) must still
        # reach nginx's master through whatever runs it.
        fd, script = tempfile.mkstemp(prefix="tdapi-run-", suffix=".sh")
        with os.fdopen(fd, "w") as f:
            f.write(f"#!/bin/sh\ntrap '' INT QUIT USR1\nexec {os.path.join(ROOT, 'scripts', 'run.sh')}\n")
        os.chmod(script, 0o755)
        self.addCleanup(os.remove, script)
        with Server(RUN_SCRIPT=script) as s:
            inst = Instance(s)
            os.rename(s.log_path("access.log"), s.log_path("access.log.1"))
            os.kill(inst.supervisor, signal.SIGHUP)
            self.assertTrue(wait_for(lambda: os.path.exists(s.log_path("access.log")), 10))
            self.assertEqual(s.stop(), 0)
            for pid in inst.everything():
                self.assertTrue(wait_for(lambda: not alive(pid), 10), (pid, cmdline(pid)))

    def test_sigkill_to_the_app_restarts_it(self):
        with Server(AUTH="on") as s:
            before = Instance(s)
            os.kill(before.app, signal.SIGKILL)
            self.assertTrue(wait_for(lambda: s.pid_of("app") != before.app and serving(s), 30))
            self.assertEqual(s.pid_of("nginx"), before.master)
            self.assertIsNone(s.proc.poll())


def app_pids(s):
    """The app processes run.sh started (its children running the app binary)."""
    out = []
    for pid in all_pids():
        f = stat_fields(pid)
        if f and f[1] == s.proc.pid and " serve " in cmdline(pid):
            out.append(pid)
    return out


@unittest.skipIf(PG_HOST, SQLITE_ONLY + "the SQLite file on a full tmpfs")
@unittest.skipUnless(IS_ROOT, "needs root to mount a small tmpfs")
class FullDisk(unittest.TestCase):
    """DATA_DIR on a 4 MiB tmpfs filled to the last byte: database, logs, pid files, nginx.conf."""

    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="tdapi-fulldisk-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", self.mnt], check=True)
        self.addCleanup(subprocess.run, ["rm", "-rf", self.mnt])
        self.addCleanup(subprocess.run, ["umount", "-l", self.mnt])
        # The same settings at every start. AUDIT=off: with the audit trail on, a read is a write
        # too (its audit entry), and 507 on a full disk.
        self.settings = {"LISTEN": f"127.0.0.1:{free_port()}", "AUDIT": "off"}

    def fill(self):
        with open(os.path.join(self.mnt, "filler"), "ab", buffering=0) as f:
            for _ in range(100000):
                try:
                    f.write(b"\0" * 4096)
                except OSError as e:
                    self.assertEqual(e.errno, errno.ENOSPC)
                    break
            for _ in range(4096):  # the last bytes of a partly used page
                try:
                    f.write(b"\0")
                except OSError:
                    break
        self.assertEqual(os.statvfs(self.mnt).f_bavail, 0)

    def test_an_app_crash_on_a_full_disk_is_restarted_and_supervision_goes_on(self):
        with Server(data_dir=self.mnt, **self.settings) as s:
            self.assertEqual(s.request("POST", "/tests", record("fd-1", clinic="fd")).status, 201)
            self.fill()
            for _ in range(2):
                before = app_pids(s)
                self.assertEqual(len(before), 1, before)
                os.kill(before[0], signal.SIGKILL)
                self.assertTrue(wait_for(lambda: app_pids(s) not in ([], before) and serving(s), 30),
                                s.run_output()[-3000:])
                self.assertIsNone(s.proc.poll(), s.run_output()[-3000:])
                self.assertEqual(s.request("GET", "/tests/fd-1").status, 200)
            # writes: 507 while full, not a dead service
            self.assertEqual(s.request("POST", "/tests", record("fd-2", clinic="fd")).status, 507)
            os.remove(os.path.join(self.mnt, "filler"))
            self.assertEqual(s.request("POST", "/tests", record("fd-3", clinic="fd")).status, 201)
            self.assertEqual(s.stop(), 0, s.run_output()[-3000:])

    def test_a_start_on_a_full_disk_serves_reads(self):
        s = Server(data_dir=self.mnt, **self.settings).start()
        self.assertEqual(s.request("POST", "/tests", record("fs-1", clinic="fs")).status, 201)
        self.fill()
        s.kill_all()  # as a crash or a power cut would leave it, on a full disk
        with Server(data_dir=self.mnt, **self.settings) as s2:
            self.assertEqual(s2.request("GET", "/tests/fs-1").status, 200)
            self.assertEqual(s2.request("POST", "/tests", record("fs-2", clinic="fs")).status, 507)
            os.remove(os.path.join(self.mnt, "filler"))
            self.assertEqual(s2.request("POST", "/tests", record("fs-3", clinic="fs")).status, 201)


if __name__ == "__main__":
    unittest.main(verbosity=2)
