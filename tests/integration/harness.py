"""harness.py: starts the real service (scripts/run.sh: nginx + the app) on a free port and a
temp data dir, and talks HTTP to it. Used by every integration test."""

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

ROOT = os.environ.get("PROJECT_ROOT", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
APP_BIN = os.environ.get("APP_BIN", os.path.join(ROOT, "build", "testdata-api"))


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
        self.proc = None
        self.output = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait=True):
        self.output = open(os.path.join(self.data_dir, "run-output.log"), "ab")
        script = self.env.get("RUN_SCRIPT", os.path.join(ROOT, "scripts", "run.sh"))
        self.proc = subprocess.Popen([script], env=self.env,
                                     stdout=self.output, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_default_signals)
        if wait:
            self.wait_ready()
        return self

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
            groups.append(int(f.read().strip()))
        for pgid in groups:  # run.sh runs the app and nginx as jobs: a process group each
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
        with open(os.path.join(self.data_dir, "run", name + ".pid")) as f:
            return int(f.read().strip())

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
