"""harness.py: starts the real service (scripts/run.sh: nginx + the app) on a free port and a
temp data dir, and talks HTTP to it. Used by every integration test.

Storage: SQLite (DATA_DIR/testdata.db) by default. With TEST_PG_HOST set (the socket directory
of scripts/pg-test-server.sh; CTest sets it for the `postgresql` label), every Server without an
explicit DATABASE_URL gets a PostgreSQL database of its own, one per data dir (a Server stopped
and started again on the same data dir finds its data), passed to run.sh as DATABASE_URL
(through the test PgBouncer when TEST_PGB_HOST is set).
database_target(server) is what the admin CLI takes as --db on either backend."""

import atexit
import glob
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import tempfile
import time

ROOT = os.environ.get("PROJECT_ROOT", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
APP_BIN = os.environ.get("APP_BIN", os.path.join(ROOT, "build", "testdata-api"))


PG_HOST = os.environ.get("TEST_PG_HOST") or None
PG_USER = "tdapi"
# With TEST_PGB_HOST also set (the socket directory of the fixture's PgBouncer, port 6432, in
# transaction mode: scripts/pg-test-server.sh pooler-start), the app's DATABASE_URL goes through
# the pooler; the tests' own SQL (psql) still goes straight to the server.
PGB_HOST = os.environ.get("TEST_PGB_HOST") or None
PGB_PORT = 6432
SQLITE_ONLY = "SQLite-specific: "  # unittest.skipIf(PG_HOST, SQLITE_ONLY + "why")


def _pg_tool(name):
    """The newest installed PostgreSQL client binary (no need for Debian's pg_wrapper)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else name


def pg_url(name):
    return f"postgresql://{PG_USER}@/{name}?host={PG_HOST}"


def app_pg_url(name):
    """The URL the app gets for database `name`: through the pooler when there is one."""
    if PGB_HOST:
        return f"postgresql://{PG_USER}@/{name}?host={PGB_HOST}&port={PGB_PORT}"
    return pg_url(name)


def psql(sql, database="postgres", host=None):
    """Runs SQL on the test PostgreSQL server (or the one at socket directory `host`) in a
    database (a name or URL); returns its output."""
    host = host or PG_HOST
    p = subprocess.run([_pg_tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-h", host, "-U", PG_USER, "-d", database, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"psql on {host} ({database}): {sql}: {p.stderr.strip()}")
    return p.stdout


# Databases this process created (dropped at exit unless KEEP_DATA is set). A data dir's first
# start in this process always gets a fresh one, whatever a crashed earlier run left behind.
_pg_databases = set()


def _pg_drop(name):
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_fresh_database(name):
    """Creates database `name` on the test server, empty (dropping a leftover of that name)."""
    _pg_drop(name)
    psql(f'CREATE DATABASE "{name}"')
    _pg_databases.add(name)


def _pg_drop_all():
    if os.environ.get("KEEP_DATA"):
        return
    for name in sorted(_pg_databases):
        try:
            _pg_drop(name)
        except (OSError, RuntimeError, subprocess.SubprocessError):
            pass  # the server and its directory go at the end of the run anyway


atexit.register(_pg_drop_all)


def pg_database_for(data_dir):
    """The database name of a data dir: derived from its real path, so the same on a restart."""
    digest = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()
    return "tdapi_it_" + digest[:20]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_signals():
    # As on a terminal: SIGINT/SIGQUIT at their defaults even if this runner ignores them
    # (a shell's background jobs do), so run.sh's Ctrl-C handling is what gets tested.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body  # bytes

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Reply({self.status}, {self.body[:300]!r})"


class Server:
    """One running instance: `with Server() as s: s.request(...)`."""

    def __init__(self, data_dir=None, **env):
        # TLS_CA (not passed on): the CA file that makes requests go over HTTPS.
        self.tls_ca = env.pop("TLS_CA", None)
        listen = env.get("LISTEN")
        self.port = int(listen.rsplit(":", 1)[1]) if listen else free_port()
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="tdapi-it-")
        self.env = dict(os.environ, PORT=str(self.port), DATA_DIR=self.data_dir, APP_BIN=APP_BIN)
        self.env.update({k: str(v) for k, v in env.items()})
        # On PostgreSQL: this data dir's own database (created on the first start).
        self.pg_database = None
        if PG_HOST and "DATABASE_URL" not in env:
            self.pg_database = pg_database_for(self.data_dir)
            self.env["DATABASE_URL"] = app_pg_url(self.pg_database)
        self.proc = None
        self.output = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait=True):
        if self.pg_database and self.pg_database not in _pg_databases:
            pg_fresh_database(self.pg_database)
        self.output = open(os.path.join(self.data_dir, "run-output.log"), "ab")
        script = self.env.get("RUN_SCRIPT", os.path.join(ROOT, "scripts", "run.sh"))
        self.proc = subprocess.Popen([script], env=self.env,
                                     stdout=self.output, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_default_signals)
        if wait:
            try:
                self.wait_ready()
                self.check_backend()
            except BaseException:
                self.__exit__(None, None, None)  # not left running for want of a `with`
                raise
        return self

    def check_backend(self):
        """On PostgreSQL, a SQLite file in the data dir means DATABASE_URL was not used: the
        test would pass on the wrong backend."""
        if self.pg_database and os.path.exists(os.path.join(self.data_dir, "testdata.db")):
            raise RuntimeError(f"DATABASE_URL={self.env['DATABASE_URL']} was given, yet the app "
                               f"made a SQLite file in {self.data_dir}: run.sh did not pass it on")

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"run.sh exited with {self.proc.returncode}: {self.run_output()[-2000:]}")
            try:
                if self.request("GET", "/healthz").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("service did not become ready: " + self.run_output()[-2000:])

    def stop(self, timeout=20.0):
        """SIGTERM to run.sh (as Ctrl-C would); returns its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise

    def kill_all(self):
        """SIGKILL to run.sh, the app and nginx (master and workers) at once."""
        # run/app.pid: the app's pid; with APP_NODES > 1 every node's, one a line
        with open(os.path.join(self.data_dir, "run", "app.pid")) as f:
            groups = [self.proc.pid] + [int(p) for p in f.read().split()]
        with open(os.path.join(self.data_dir, "run", "nginx.pid")) as f:
            try:  # nginx's process group (its master's, with the workers)
                groups.append(os.getpgid(int(f.read().strip())))
            except ProcessLookupError:
                pass
        for pgid in groups:  # the supervisor runs the app and nginx in a process group each
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.output.close()
        # nginx workers are in the group too; give the kernel a moment to release the port.
        time.sleep(0.2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            if self.output:
                self.output.close()
            if self.own_dir and not os.environ.get("KEEP_DATA"):
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def pid_of(self, name):
        """The pid in run/NAME.pid; for the app with APP_NODES > 1, node 1's (the file lists
        every node's, one per line)."""
        with open(os.path.join(self.data_dir, "run", name + ".pid")) as f:
            return int(f.read().split()[0])

    # -- HTTP ------------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=30):
        if self.tls_ca:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            hdrs = dict(headers or {})
            if body is not None and "Content-Type" not in hdrs:
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def raw(self, data, timeout=15):
        """Sends raw bytes on one connection, returns everything read until close/timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            chunks = []
            try:
                while True:
                    c = s.recv(65536)
                    if not c:
                        break
                    chunks.append(c)
            except socket.timeout:
                pass
            return b"".join(chunks)

    # -- logs ------------------------------------------------------------------------------
    def log_path(self, name):
        return os.path.join(self.data_dir, "logs", name)

    def read_log(self, name):
        try:
            with open(self.log_path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def json_lines(self, name):
        """Every line of a log, each parsed as JSON (a line that is not JSON raises)."""
        out = []
        for line in self.read_log(name).decode().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def run_output(self):
        try:
            with open(os.path.join(self.data_dir, "run-output.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


def database_target(server):
    """What the admin CLI takes as --db for this server's data: its PostgreSQL URL, or the
    SQLite file (DB_PATH, else DATA_DIR/testdata.db)."""
    return (server.env.get("DATABASE_URL") or server.env.get("DB_PATH")
            or os.path.join(server.data_dir, "testdata.db"))


def run_sql(target, sql):
    """Runs SQL behind the service's back on a database_target() (a test's tampering)."""
    if target.startswith("postgresql://"):
        psql(sql, database=target)
    else:
        with sqlite3.connect(target) as db:
            db.execute(sql)
        db.close()


def copy_database(target, name):
    """A private copy of a database_target(): database `name` on PostgreSQL (pg_dump into it),
    else the SQLite file `name` next to the original (online backup). Returns the copy's target."""
    if target.startswith("postgresql://"):
        pg_fresh_database(name)
        dump = subprocess.run([_pg_tool("pg_dump"), "--no-owner", "-d", target],
                              capture_output=True, text=True, timeout=120, check=True).stdout
        p = subprocess.run([_pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_url(name)],
                           input=dump, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"restoring a copy of {target} into {name}: {p.stderr.strip()}")
        return pg_url(name)
    copy = os.path.join(os.path.dirname(target), name)
    with sqlite3.connect(target) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return copy


def terminate(proc, timeout=30):
    """SIGTERM to a child process (a Popen), SIGKILL if it has not ended within timeout."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def stopped(pid):
    """True once every thread of pid is in the stopped state (SIGSTOP takes effect
    asynchronously: until then a thread woken by a request can still answer it)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        states = []
        for t in tasks:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
    except OSError:
        return False
    return all(st in ("T", "t") for st in states)


def wait_for(predicate, timeout=10.0):
    """Polls predicate until it is true (returns True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def record(test_id, clinic="c1", patient="p1", test_type="blood", result="ok"):
    return {"test_id": test_id, "patient_id": patient, "clinic_id": clinic,
            "test_type": test_type, "result": result}
