#!/usr/bin/env python3
"""test_supervisor.py: run.sh against the ways an operator (or a compromised service account)
can trip it: a second run.sh on the same DATA_DIR, SIGHUP to the supervisor, very few threads,
a symbolic link planted where nginx (root) writes, a planted link where run.sh writes, a
directory on the way to DATA_DIR or NGINX_TEMP_DIR swapped for a link."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, free_port, record, wait_for  # noqa: E402


def run_sh(env, timeout=30, cwd=None):
    """Runs scripts/run.sh expecting it to refuse; returns (exit status, output). Should it serve
    instead, it is stopped with SIGTERM (which stops the app and nginx it started) and the test
    fails on its exit status."""
    p = subprocess.Popen([os.path.join(ROOT, "scripts", "run.sh")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=cwd)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()
        out, _ = p.communicate(timeout=30)
        return "served instead of refusing", out
    return p.returncode, out


def root_only_file(test, content):
    """A root-owned 0600 file in a directory of its own (removed after the test): what a link
    the service user plants would lead root to."""
    d = tempfile.mkdtemp(prefix="tdapi-victim-")
    test.addCleanup(shutil.rmtree, d, True)
    path = os.path.join(d, "victim")
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, 0o600)
    return path


def plant_link(path, target):
    """What the service user can do in its own directory: move path aside and leave, in its
    place, a link of its own to target."""
    service = pwd.getpwnam("testdata-api")
    os.replace(path, path + ".old")
    os.symlink(target, path)
    os.lchown(path, service.pw_uid, service.pw_gid)


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("PPid:"))
    except (OSError, StopIteration):
        return None


def searchable_temp_dir(test, prefix):
    """A temp dir of root's, 0755 (the service user may pass), removed after the test."""
    top = tempfile.mkdtemp(prefix=prefix)
    test.addCleanup(shutil.rmtree, top, True)
    os.chmod(top, 0o755)
    return top


class Supervisor(unittest.TestCase):
    def test_a_second_run_sh_on_the_same_data_dir_is_refused_and_the_first_keeps_serving(self):
        with Server() as s:
            env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=s.data_dir, PORT=str(free_port()))
            rc, out = run_sh(env)
            self.assertEqual(rc, 78, out)
            self.assertIn("another run.sh", out)
            self.assertEqual(s.request("POST", "/tests", record("second-run")).status, 201)
            self.assertEqual(s.request("GET", "/tests/second-run").status, 200)

    def test_write_commit_other_than_thread_or_leader_is_refused_before_anything_starts(self):
        # The app reads WRITE_COMMIT from its environment and takes anything but "leader" for
        # "thread": a misspelt value must not silently run the other mode.
        with tempfile.TemporaryDirectory(prefix="tdapi-sup-") as d:
            for value in ("leadr", "Leader", "threads", " leader"):
                data = os.path.join(d, "data")
                env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=data, PORT=str(free_port()),
                           WRITE_COMMIT=value)
                rc, out = run_sh(env)
                self.assertEqual(rc, 78, (value, out))
                self.assertIn("WRITE_COMMIT must be thread or leader", out, value)
                self.assertFalse(os.path.exists(data), "refused, yet DATA_DIR was created")

    def test_sighup_to_the_supervisor_reopens_logs_and_supervision_goes_on(self):
        with Server() as s:
            os.kill(s.pid_of("supervisor"), signal.SIGHUP)
            self.assertTrue(wait_for(lambda: any(l.get("event") == "log_reopened"
                                                 for l in s.json_lines("app.log")), 10))
            self.assertIsNone(s.proc.poll())
            app = s.pid_of("app")
            os.kill(app, signal.SIGKILL)  # still supervised: restarted
            self.assertTrue(wait_for(lambda: s.pid_of("app") != app, 20))
            self.assertTrue(wait_for(lambda: s.request("GET", "/healthz").status == 200, 20))

    def test_one_thread_never_leaves_requests_waiting_for_a_parked_connection(self):
        with Server(THREADS=1, FASTCGI_READ_TIMEOUT="4s") as s:
            statuses = [s.request("GET", "/healthz", timeout=20).status for _ in range(10)]
            self.assertEqual(statuses, [200] * 10)  # a parked connection would give a 504

    def test_links_planted_where_root_writes_are_refused_or_replaced(self):
        d = tempfile.mkdtemp(prefix="tdapi-links-")
        victim_dir = tempfile.mkdtemp(prefix="tdapi-victim-")
        self.addCleanup(shutil.rmtree, d, True)
        self.addCleanup(shutil.rmtree, victim_dir, True)
        victim = os.path.join(victim_dir, "victim")
        with open(victim, "w") as f:
            f.write("untouched\n")
        with Server(data_dir=d):
            pass
        # nginx's master opens access.log: a link there that the service user made (started as
        # root) is refused before anything starts. (As a normal user there is no boundary: the
        # service runs as the invoking user, whose links are its own.)
        if os.geteuid() == 0:
            access = os.path.join(d, "logs", "access.log")
            os.replace(access, access + ".old")
            os.symlink(victim, access)
            service = pwd.getpwnam("testdata-api")
            os.lchown(access, service.pw_uid, service.pw_gid)
            env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=d, PORT=str(free_port()))
            rc, out = run_sh(env)
            self.assertEqual(rc, 78, out)
            self.assertIn("symbolic link", out)
            os.unlink(access)
        # run.sh's own files (nginx.conf, openapi.yaml, pid files) replace a link, never write
        # through it
        os.unlink(os.path.join(d, "openapi.yaml"))
        os.symlink(victim, os.path.join(d, "openapi.yaml"))
        with Server(data_dir=d) as s:
            self.assertEqual(s.request("GET", "/healthz").status, 200)
            self.assertFalse(os.path.islink(os.path.join(d, "openapi.yaml")))
        with open(victim) as f:
            self.assertEqual(f.read(), "untouched\n")

    def test_a_relative_data_dir_under_a_path_nginx_cannot_take_is_refused(self):
        # DATA_DIR=var is plain; the directory it resolves to, under a working directory with a
        # space, is not: nginx.conf takes the resolved path as it is.
        top = tempfile.mkdtemp(prefix="tdapi-cwd-")
        self.addCleanup(shutil.rmtree, top, True)
        cwd = os.path.join(top, "with space")
        os.mkdir(cwd)
        rc, out = run_sh(dict(os.environ, APP_BIN=APP_BIN, DATA_DIR="var", PORT=str(free_port())),
                         cwd=cwd)
        self.assertEqual(rc, 78, out)
        self.assertIn(f"DATA_DIR ({cwd}/var) must be a path of letters", out)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_nginx_runs_as_the_service_user_so_a_link_at_its_access_log_leads_nowhere(self):
        # nginx's master reopens logs/access.log by name at every reopen (SIGHUP to run.sh, as
        # logrotate sends): were it root, a link the service user swapped in there would make
        # root append to (and hand over) any file. It runs as the service user instead.
        victim = root_only_file(self, "untouched\n")
        service = pwd.getpwnam("testdata-api")
        with Server() as s:
            master = s.pid_of("nginx")
            nginx = [master] + [int(p) for p in os.listdir("/proc") if p.isdigit()
                                and _ppid(int(p)) == master]
            self.assertGreater(len(nginx), 1)
            for pid in nginx:
                self.assertEqual(os.stat(f"/proc/{pid}").st_uid, service.pw_uid, pid)
            access = s.log_path("access.log")
            plant_link(access, victim)
            os.kill(s.pid_of("supervisor"), signal.SIGHUP)  # reopen: USR1 to nginx
            self.assertTrue(wait_for(lambda: any(l.get("event") == "log_reopened"
                                                 for l in s.json_lines("app.log")), 10))
            for _ in range(5):
                s.request("GET", "/healthz")
            # nginx (the service user) cannot open the link's target: it says so in its log
            changed = lambda: os.stat(victim).st_uid != 0 or os.path.getsize(victim) != 10
            wait_for(lambda: b"access.log" in s.read_log("nginx-error.log") or changed(), 10)
            st = os.stat(victim)
            self.assertEqual((st.st_uid, st.st_mode & 0o777), (0, 0o600))
            with open(victim) as f:
                self.assertEqual(f.read(), "untouched\n")
            os.unlink(access)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_data_dir_swapped_for_the_service_users_link_is_refused(self):
        # The service user owns DATA_DIR: in a directory it may write (here /tmp, sticky) it can
        # move DATA_DIR away and leave a link to a root directory; the next start as root gave
        # that directory (chmod, chown -R) to the service user.
        victim = tempfile.mkdtemp(prefix="tdapi-victim-")
        self.addCleanup(shutil.rmtree, victim, True)
        with open(os.path.join(victim, "secret"), "w") as f:
            f.write("root only\n")
        os.chmod(os.path.join(victim, "secret"), 0o600)
        d = tempfile.mkdtemp(prefix="tdapi-swapped-")
        self.addCleanup(shutil.rmtree, d + ".moved", True)
        self.addCleanup(lambda: os.path.islink(d) and os.unlink(d))
        with Server(data_dir=d):
            pass
        service = pwd.getpwnam("testdata-api")
        os.rename(d, d + ".moved")
        os.symlink(victim, d)
        os.lchown(d, service.pw_uid, service.pw_gid)
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=d, PORT=str(free_port()))
        rc, out = run_sh(env)
        self.assertEqual(rc, 78, out)
        self.assertIn("symbolic link", out)
        for path in (victim, os.path.join(victim, "secret")):
            st = os.stat(path)
            self.assertEqual(st.st_uid, 0, path)
        self.assertEqual(os.stat(victim).st_mode & 0o777, 0o700)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_what_run_sh_shows_of_a_log_on_a_failure_is_read_as_the_service_user(self):
        # nginx exits: run.sh shows the last lines of logs/nginx-error.log. Read as root, a link
        # the service user put there showed any root file's last lines on run.sh's stderr.
        victim = root_only_file(self, "ROOT-ONLY-LINE\n")
        with Server() as s:
            err = s.log_path("nginx-error.log")
            plant_link(err, victim)
            master = s.pid_of("nginx")
            os.kill(master, signal.SIGKILL)
            self.assertTrue(wait_for(lambda: "nginx exited" in s.run_output(), 20), s.run_output()[-2000:])
            time.sleep(0.5)
            self.assertNotIn("ROOT-ONLY-LINE", s.run_output())
            os.unlink(err)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_a_link_planted_at_the_app_log_is_never_written_through_by_root(self):
        victim = root_only_file(self, "untouched\n")
        with Server() as s:
            app_log = s.log_path("app.log")
            # the service user swaps its log for a link to a root file, then the app restarts
            plant_link(app_log, victim)
            os.kill(s.pid_of("app"), signal.SIGKILL)
            # the app cannot open its log (78, not restarted): the service stops
            self.assertEqual(s.proc.wait(60), 78, s.run_output()[-2000:])
        with open(victim) as f:
            self.assertEqual(f.read(), "untouched\n")
        # and a start with the link still there is refused, naming it
        os.unlink(victim)  # (not even created through it)
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=s.data_dir, PORT=str(free_port()))
        d = tempfile.mkdtemp(prefix="tdapi-applog-")
        self.addCleanup(shutil.rmtree, d, True)
        with Server(data_dir=d):
            pass
        plant_link(os.path.join(d, "logs", "app.log"), victim)
        rc, out = run_sh(dict(env, DATA_DIR=d))
        self.assertEqual(rc, 78, out)
        self.assertIn("symbolic link", out)
        self.assertFalse(os.path.exists(victim))

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_a_parent_of_data_dir_swapped_for_a_link_while_run_sh_starts_redirects_nothing(self):
        # The service user owns a directory on DATA_DIR's way. After run.sh (root) has checked
        # the way and locked DATA_DIR it swaps that directory for a link of its own to a root
        # directory: root gave the tree there (chmod, chown) to the service user.
        service = pwd.getpwnam("testdata-api")
        top = searchable_temp_dir(self, "tdapi-swap-")
        theirs = os.path.join(top, "theirs")
        q = os.path.join(theirs, "q")
        os.makedirs(q)
        for path in (theirs, q):
            os.chown(path, service.pw_uid, service.pw_gid)
        victim = os.path.join(top, "victim", "data")
        os.makedirs(victim)
        os.chmod(victim, 0o755)
        with open(os.path.join(victim, "secret"), "w") as f:
            f.write("root only\n")
        os.chmod(os.path.join(victim, "secret"), 0o600)
        # the swap, at the moment run.sh takes its lock (after checking the way)
        bin_dir = os.path.join(top, "bin")
        os.mkdir(bin_dir)
        with open(os.path.join(bin_dir, "flock"), "w") as f:
            f.write('#!/bin/sh\nmv "$SWAP" "$SWAP.moved" && ln -s "$SWAP_TO" "$SWAP" && '
                    'chown -h testdata-api "$SWAP" && touch "$SWAP.done"\n'
                    f'exec {shutil.which("flock")} "$@"\n')
        os.chmod(os.path.join(bin_dir, "flock"), 0o755)
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=os.path.join(q, "data"),
                   PORT=str(free_port()), PATH=bin_dir + ":" + os.environ["PATH"], SWAP=q,
                   SWAP_TO=os.path.dirname(victim))
        rc, out = run_sh(env)
        self.assertTrue(os.path.exists(q + ".done"), out)  # swapped while run.sh started
        self.assertEqual(rc, 78, out)
        self.assertIn("symbolic link that testdata-api made", out)
        self.assertEqual(os.listdir(victim), ["secret"])
        for path in (victim, os.path.join(victim, "secret")):
            self.assertEqual(os.stat(path).st_uid, 0, path)
        self.assertEqual(os.stat(victim).st_mode & 0o777, 0o755)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_data_dir_swapped_for_a_link_to_a_fifo_as_run_sh_locks_it_is_never_opened(self):
        # The service user owns DATA_DIR's parent and keeps exchanging DATA_DIR with its link to
        # a root FIFO only root may open (a device would do: opening some has effects). run.sh
        # (root) opened the lock (fd 9) by path after resolving DATA_DIR: it opened whatever the
        # link named. A writer opening the FIFO without blocking succeeds only while someone (who
        # can only be root) has it open to read.
        import threading
        service = pwd.getpwnam("testdata-api")
        top = searchable_temp_dir(self, "tdapi-fifo-")
        fifo = os.path.join(top, "fifo")
        os.mkfifo(fifo, 0o600)
        theirs = os.path.join(top, "theirs")
        os.mkdir(theirs)
        os.chown(theirs, service.pw_uid, service.pw_gid)
        racer = (
            "import ctypes, os, sys, time\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "os.chdir(sys.argv[1])\n"
            "os.mkdir('data'); os.symlink(sys.argv[2], 'link')\n"
            "open('ready', 'w').close()\n"
            "end = time.monotonic() + 60\n"
            "while time.monotonic() < end and not os.path.exists(sys.argv[3]):\n"
            "    libc.renameat2(-100, b'data', -100, b'link', 2)  # RENAME_EXCHANGE\n"
            "if os.path.islink('data'): libc.renameat2(-100, b'data', -100, b'link', 2)\n")
        stop = os.path.join(top, "stop")
        swapper = subprocess.Popen(["setpriv", "--reuid=testdata-api", "--regid=testdata-api",
                                    "--clear-groups", sys.executable, "-c", racer, theirs, fifo,
                                    stop])
        self.addCleanup(swapper.wait)
        self.addCleanup(lambda: open(stop, "w").close())
        opened = []

        def watch():
            while not os.path.exists(stop) and not opened:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    opened.append(True)
                except OSError:
                    time.sleep(0.001)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        self.addCleanup(watcher.join)
        self.assertTrue(wait_for(lambda: os.path.exists(os.path.join(theirs, "ready")), 10))
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=os.path.join(theirs, "data"),
                   PORT=str(free_port()))
        end, tries = time.monotonic() + 40, 0
        while time.monotonic() < end and tries < 60 and not opened:
            tries += 1
            p = subprocess.Popen([os.path.join(ROOT, "scripts", "run.sh")], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:  # it serves (the swap missed): stopped
                p.terminate()
                p.wait(30)
        open(stop, "w").close()
        self.assertFalse(opened, "run.sh (root) opened the root FIFO a link of the service user "
                                 "names (try %d)" % tries)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_a_data_dir_under_a_closed_directory_gets_an_acl_there_and_only_there(self):
        top = searchable_temp_dir(self, "tdapi-closed-")
        closed = os.path.join(top, "closed")  # like /root
        os.makedirs(os.path.join(closed, "open"))
        os.chmod(closed, 0o700)
        os.chmod(os.path.join(closed, "open"), 0o755)
        d = os.path.join(closed, "open", "data")
        os.mkdir(d)
        with Server(data_dir=d) as s:
            self.assertEqual(s.request("GET", "/healthz").status, 200)
            self.assertIn(f"ACL u:testdata-api:--x) on {closed} so", s.run_output())
        acl = lambda path: subprocess.run(["getfacl", "-cp", path], capture_output=True, text=True,
                                          check=True).stdout
        self.assertIn("user:testdata-api:--x", acl(closed))
        for path in (top, os.path.join(closed, "open")):
            self.assertNotIn("testdata-api", acl(path), path)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_the_acl_on_a_closed_parent_widens_no_other_entry(self):
        # A closed parent whose ACL mask narrows a group entry (g:adm:rwx, mask r-x: adm may
        # not write there). setfacl -m recalculated the mask to rwx: adm could write.
        top = searchable_temp_dir(self, "tdapi-mask-")
        closed = os.path.join(top, "closed")
        os.mkdir(closed)
        os.chmod(closed, 0o750)
        subprocess.run(["setfacl", "-m", "g:adm:rwx,m::r-x", closed], check=True)
        d = os.path.join(closed, "data")
        os.mkdir(d)
        with Server(data_dir=d) as s:
            self.assertEqual(s.request("GET", "/healthz").status, 200)
        acl = subprocess.run(["getfacl", "-cpE", closed], capture_output=True, text=True,
                             check=True).stdout.split()
        self.assertIn("user:testdata-api:--x", acl)
        self.assertIn("mask::r-x", acl)
        self.assertEqual(os.stat(closed).st_mode & 0o777, 0o750)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_a_file_in_data_dir_with_other_hard_links_is_not_given_to_the_service_user(self):
        victim = root_only_file(self, "untouched\n")
        d = tempfile.mkdtemp(prefix="tdapi-hardlink-")
        self.addCleanup(shutil.rmtree, d, True)
        os.link(victim, os.path.join(d, "testdata.db"))  # the same file as a root file elsewhere
        rc, out = run_sh(dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=d, PORT=str(free_port())))
        st = os.stat(victim)
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (0, 0o600))
        self.assertEqual(rc, 78, out)
        self.assertIn("testdata.db has 2 hard links", out)
        # The refusal came before anything was given away (the tree is checked first).
        self.assertEqual(os.stat(d).st_uid, 0)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_a_data_dir_file_of_another_user_is_not_given_to_the_service_user(self):
        # The owner of a directory above DATA_DIR (a checkout in a developer's home) makes
        # DATA_DIR with a testdata.db of its own, 0666, and holds it open: given to the service
        # user, the service's records were readable through that descriptor (chown and chmod
        # revoke no open file).
        nobody = pwd.getpwnam("nobody")
        top = searchable_temp_dir(self, "tdapi-adopt-")
        os.chown(top, nobody.pw_uid, nobody.pw_gid)
        d = os.path.join(top, "data")
        os.mkdir(d)
        db = os.path.join(d, "testdata.db")
        open(db, "w").close()
        os.chmod(db, 0o666)
        for path in (d, db):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        rc, out = run_sh(dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=d, PORT=str(free_port())), 15)
        self.assertEqual(rc, 78, out)
        self.assertIn("is nobody's", out)
        self.assertEqual(os.stat(db).st_uid, nobody.pw_uid)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_nginx_temp_dir_is_made_only_where_it_is_named_and_nginx_can_reach_it(self):
        service = pwd.getpwnam("testdata-api")
        top = searchable_temp_dir(self, "tdapi-ntemp-")
        victim = os.path.join(top, "victim")
        os.mkdir(victim)
        theirs = os.path.join(top, "theirs")  # the service user's directory, its link in it
        os.mkdir(theirs)
        os.chown(theirs, service.pw_uid, service.pw_gid)
        os.symlink(victim, os.path.join(theirs, "x"))
        os.lchown(os.path.join(theirs, "x"), service.pw_uid, service.pw_gid)
        d = tempfile.mkdtemp(prefix="tdapi-ntemp-data-")
        self.addCleanup(shutil.rmtree, d, True)
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=d, PORT=str(free_port()),
                   NGINX_TEMP_DIR=os.path.join(theirs, "x", "tmp"))
        rc, out = run_sh(env)
        self.assertEqual(rc, 78, out)
        self.assertIn("NGINX_TEMP_DIR=", out)
        self.assertIn("symbolic link that testdata-api made", out)
        self.assertEqual(os.listdir(victim), [])
        # directories missing on its way: made root's and 0755, so that nginx's workers (the
        # service user) pass; the temp dir itself the service user's, 0700
        temp = os.path.join(top, "made", "a", "tmp")
        with Server(NGINX_TEMP_DIR=temp) as s:
            self.assertEqual(s.request("GET", "/healthz").status, 200)
        for path in (os.path.join(top, "made"), os.path.join(top, "made", "a")):
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_mode & 0o7777), (0, 0o755), path)
        st = os.stat(temp)
        self.assertEqual((st.st_uid, st.st_mode & 0o7777), (service.pw_uid, 0o700))
        # An existing one holding another user's directory (who may keep it open) is refused.
        nobody = pwd.getpwnam("nobody")
        held = os.path.join(temp, "client_body")
        os.makedirs(held, exist_ok=True)
        os.chown(held, nobody.pw_uid, nobody.pw_gid)
        rc, out = run_sh(dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=tempfile.mkdtemp(dir=top),
                              NGINX_TEMP_DIR=temp, PORT=str(free_port())))
        self.assertEqual(rc, 78, out)
        self.assertIn(f"NGINX_TEMP_DIR={temp}/client_body is nobody's", out)

    def test_listen_is_one_address_and_port_and_only_loopback_counts_as_loopback(self):
        d = tempfile.mkdtemp(prefix="tdapi-listen-")
        self.addCleanup(shutil.rmtree, d, True)
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=d, PORT=str(free_port()))
        p1, p2 = free_port(), free_port()
        # a second listener (or anything else) smuggled into nginx's listen line, bad ports and
        # addresses: refused before anything starts
        for listen in (f"127.0.0.1:{p1}; listen 127.0.0.2:{p2}", f"127.0.0.1:{p1} ssl",
                       f"127.0.0.1:{p1}\nlisten 0.0.0.0:{p2}", f"127.0.0.1:{p1};",
                       "256.0.0.1:8080", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:",
                       f":{p1}", f"[::1]{p1}", f"[::1;]:{p1}", f"127.0.0.1:{p1}x", "127.1:8080",
                       f"-h.example.com:{p1}", f"[::1]:{p1}:{p2}", f"127.0.0.01:{p1}"):
            rc, out = run_sh(dict(env, LISTEN=listen), timeout=15)
            self.assertEqual(rc, 78, (listen, out))
            self.assertIn("LISTEN", out, listen)
        # a name is never loopback (except localhost), whatever it starts with: AUTH=off and
        # plaintext are refused for it
        for listen in (f"127.0.0.1.example.com:{p1}", f"localhost.example.com:{p1}"):
            rc, out = run_sh(dict(env, LISTEN=listen, AUTH="off"), timeout=15)
            self.assertEqual(rc, 78, (listen, out))
            self.assertIn("AUTH=off", out, listen)
            rc, out = run_sh(dict(env, LISTEN=listen), timeout=15)
            self.assertEqual(rc, 78, (listen, out))
            self.assertIn("TLS_CERT", out, listen)
        # values that go into nginx.conf as they are: only their own syntax
        for name, value in (("FASTCGI_READ_TIMEOUT", f"30s; listen 0.0.0.0:{p2}"),
                            ("CONN_LIMIT_PER_ADDR", "256; listen 0.0.0.0:1"),
                            ("RATE_LIMIT_PER_ADDR", "5r/s"), ("LISTING_SPOOL_MAX", "1g;"),
                            ("TLS_CERT", os.path.join(d, "c.pem; listen 0.0.0.0:1"))):
            extra = {}
            if name == "TLS_CERT":  # a readable file, named to smuggle a directive
                with open(value, "w") as f:
                    f.write("not a certificate\n")
                extra = {"TLS_KEY": value}
            rc, out = run_sh(dict(env, **extra, **{name: value}), timeout=15)
            self.assertEqual(rc, 78, (name, out))
            self.assertIn(name, out)
        # the loopback forms serve without keys or TLS
        with Server(LISTEN=f"localhost:{p1}") as s:
            self.assertEqual(s.request("GET", "/tests?clinic_id=c1").status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
