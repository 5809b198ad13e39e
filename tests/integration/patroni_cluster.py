"""patroni_cluster.py: a throwaway Patroni cluster for the failover drill (test_pg_patroni.py).

One etcd (Debian etcd-server, v3 API) and N PostgreSQL servers managed by Patroni (Debian
patroni), everything on loopback ports from free_port() and under one temp dir in /tmp:

    with PatroniCluster(nodes=2, synchronous_mode=True) as c:
        c.url("drill")            # a libpq multi-host URL naming every node, read-write only
        c.leader()                # the node holding the leader key (Patroni's REST API)
        c.kill_node(c.leader())   # the node dies: Patroni SIGKILLed, postgres stalled then killed

Node i's PostgreSQL listens on 127.0.0.1:pg_port, its Patroni REST API on 127.0.0.1:api_port.
Clients connect as the superuser tdapi without a password (trust on loopback, as the other
test servers); replication as `replicator`. PostgreSQL refuses to run as root: as root, etcd
and Patroni (and so PostgreSQL) run as the `postgres` system user, as pg-test-server.sh does.
Every process is started here and stopped by its PID (never by name); the temp dir is removed.
Every wait is bounded: a cluster that does not come up raises, with the ends of the logs."""

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from harness import free_port, terminate

PG_USER = "tdapi"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PATRONI = shutil.which("patroni") or "/usr/bin/patroni"


def _pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (make deps)")
    return os.path.dirname(found[-1])


def _as_owner():
    """The prefix that runs a command as the servers' owner: postgres when we are root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def _tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _children(pid):
    """The PIDs whose parent is PID (from /proc)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


class Node:
    def __init__(self, cluster, name):
        self.cluster, self.name = cluster, name
        self.pg_port, self.api_port = free_port(), free_port()
        self.dir = os.path.join(cluster.dir, name)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "patroni.log")
        self.proc = None
        self.dead = False

    def config(self):
        c = self.cluster
        dcs = {
            "ttl": c.ttl, "loop_wait": c.loop_wait, "retry_timeout": c.retry_timeout,
            # A replica further behind than this (bytes of WAL) may not be promoted.
            "maximum_lag_on_failover": c.maximum_lag_on_failover,
            "synchronous_mode": c.synchronous_mode,
            "postgresql": {
                "use_pg_rewind": True,
                "parameters": {
                    "max_connections": 300, "max_wal_senders": 10, "max_replication_slots": 10,
                    "wal_level": "replica", "hot_standby": "on", "wal_keep_size": "256MB",
                    "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
                    "shared_buffers": "64MB", "lc_messages": "C", "timezone": "UTC",
                    "wal_log_hints": "on",
                },
            },
        }
        return {
            "scope": "tdapi-drill", "namespace": c.namespace, "name": self.name,
            "log": {"level": "INFO", "dir": self.dir, "file_num": 1, "file_size": 50_000_000},
            "restapi": {"listen": f"127.0.0.1:{self.api_port}",
                        "connect_address": f"127.0.0.1:{self.api_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{c.etcd_port}"]},
            "bootstrap": {
                "dcs": dcs,
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"username": PG_USER}],
                "pg_hba": ["local all all trust", "local replication all trust",
                           "host all all 127.0.0.1/32 trust",
                           "host replication all 127.0.0.1/32 trust"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": self.data, "bin_dir": c.pg_bin,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {
                    "superuser": {"username": PG_USER, "password": "unused"},
                    "replication": {"username": "replicator", "password": "unused"},
                    "rewind": {"username": PG_USER, "password": "unused"},
                },
                "parameters": {"unix_socket_directories": self.dir},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False,
                     "nosync": False},
        }

    def start(self):
        os.makedirs(self.dir, mode=0o700)
        self.cluster.own(self.dir)
        path = os.path.join(self.dir, "patroni.yml")
        with open(path, "w") as f:  # JSON is YAML
            json.dump(self.config(), f, indent=1)
        self.cluster.own(path)
        out = open(os.path.join(self.dir, "patroni.out"), "ab")
        self.proc = subprocess.Popen(_as_owner() + [PATRONI, path], cwd="/", stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def api(self, path, timeout=2):
        """(status, parsed JSON or None) of GET path on this node's REST API; (None, None) when
        it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}", timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body or b"null")
            except ValueError:
                return e.code, None
        except (OSError, ValueError):
            return None, None

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def postgres_pids(self):
        """The postmaster and its children (backends, walsenders, the walreceiver...)."""
        pm = self.postmaster_pid()
        if pm is None or not os.path.exists(f"/proc/{pm}"):
            return []
        return [pm] + _children(pm)

    def stop(self):
        """A clean stop: SIGTERM to Patroni (it stops PostgreSQL), then whatever is left."""
        terminate(self.proc)
        for pid in self.postgres_pids():  # Patroni killed before it stopped its server
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class PatroniCluster:
    def __init__(self, nodes=2, synchronous_mode=False, ttl=10, loop_wait=1, retry_timeout=4,
                 maximum_lag_on_failover=1048576):
        # Patroni's rule: loop_wait + 2 * retry_timeout <= ttl.
        assert loop_wait + 2 * retry_timeout <= ttl
        for tool, package in ((PATRONI, "patroni"), (ETCD, "etcd-server")):
            if not os.access(tool, os.X_OK):
                raise RuntimeError(f"no {tool}: run 'make deps' (Debian package {package})")
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        self.synchronous_mode = synchronous_mode
        self.maximum_lag_on_failover = maximum_lag_on_failover
        self.pg_bin = _pg_bin()
        self.dir = tempfile.mkdtemp(prefix="tdapi-patroni-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.namespace = "/" + os.path.basename(self.dir) + "/"
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.etcd = None
        self.nodes = [Node(self, f"node{i + 1}") for i in range(nodes)]

    def own(self, path):
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout=120):
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout):
        deadline = time.monotonic() + timeout
        etcd_dir = os.path.join(self.dir, "etcd")
        os.makedirs(etcd_dir, mode=0o700)
        self.own(etcd_dir)
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        out = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.etcd = subprocess.Popen(
            _as_owner() + [ETCD, "--name", "drill", "--data-dir", os.path.join(etcd_dir, "data"),
                           "--listen-client-urls", client, "--advertise-client-urls", client,
                           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                           "--initial-cluster", f"drill={peer}", "--initial-cluster-state", "new",
                           "--initial-cluster-token", os.path.basename(self.dir)],
            cwd="/", stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self._wait(lambda: self._etcd_healthy(client), deadline, "etcd did not answer /health")
        # The first node bootstraps (initdb) and takes the leader key; the others clone it.
        first = self.nodes[0]
        first.start()
        self._wait(lambda: first.api("/primary")[0] == 200, deadline,
                   f"{first.name} did not become the primary")
        for n in self.nodes[1:]:
            n.start()
        for n in self.nodes[1:]:
            self._wait(lambda: n.api("/replica")[0] == 200, deadline,
                       f"{n.name} did not become a running replica")
            if self.synchronous_mode and len(self.nodes) == 2:
                self._wait(lambda: n.api("/sync")[0] == 200, deadline,
                           f"{n.name} did not become the synchronous standby")

    def _etcd_healthy(self, client):
        try:
            with urllib.request.urlopen(client + "/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def _wait(self, predicate, deadline, what):
        while time.monotonic() < deadline:
            for p in [self.etcd] + [n.proc for n in self.nodes if n.proc]:
                if p.poll() is not None and not any(p is n.proc and n.dead for n in self.nodes):
                    raise RuntimeError(f"{what}: {p.args[-1]} exited with {p.returncode}\n" + self.logs())
            if predicate():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} in time\n" + self.logs())

    def logs(self):
        parts = [f"--- etcd.log\n{_tail(os.path.join(self.dir, 'etcd.log'), 10)}"]
        for n in self.nodes:
            parts.append(f"--- {n.name} patroni\n{_tail(os.path.join(n.dir, 'patroni.out'), 10)}"
                         f"{_tail(n.log, 20)}")
            for pglog in sorted(glob.glob(os.path.join(n.data, "log", "*")))[-1:]:
                parts.append(f"--- {n.name} {pglog}\n{_tail(pglog, 15)}")
        return "\n".join(parts)

    def stop(self):
        """Stops every node, then etcd, each whatever the others did; removes the temp dir."""
        errors = []
        for n in self.nodes:
            try:
                n.stop()
            except Exception as e:  # noqa: BLE001 -- the rest must still stop
                errors.append(f"{n.name}: {e!r}")
        terminate(self.etcd, 20)
        if not os.environ.get("KEEP_DATA"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise RuntimeError("stopping the Patroni cluster: " + "; ".join(errors))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what the tests use ------------------------------------------------------------------
    def url(self, database):
        """A libpq multi-host URL naming every node, connecting only to the one that takes
        writes (target_session_attrs=read-write)."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return (f"postgresql://{PG_USER}@{hosts}/{database}"
                f"?target_session_attrs=read-write&connect_timeout=2")

    def node_url(self, node, database):
        """A libpq URL of NODE alone."""
        return f"postgresql://{PG_USER}@127.0.0.1:{node.pg_port}/{database}"

    def leader(self):
        """The node whose REST API says it is the primary, or None."""
        for n in self.nodes:
            if not n.dead and n.api("/primary")[0] == 200:
                return n
        return None

    def wait_leader(self, timeout, other_than=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.leader()
            if n is not None and n is not other_than:
                return n
            time.sleep(0.1)
        raise RuntimeError(f"no new leader within {timeout} s\n" + self.logs())

    def psql(self, node, sql, database="postgres"):
        p = subprocess.run([os.path.join(self.pg_bin, "psql"), "-X", "-q", "-A", "-t",
                            "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(node.pg_port),
                            "-U", PG_USER, "-d", database, "-c", sql],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"psql on {node.name}: {sql}: {p.stderr.strip()}")
        return p.stdout.strip()

    def walsender_pid(self, node):
        """The PID of NODE's walsender streaming to a replica (the first), or None."""
        pid = self.psql(node, "SELECT pid FROM pg_stat_replication ORDER BY pid LIMIT 1")
        return int(pid) if pid else None

    def timeline(self, node):
        """NODE's timeline, as its Patroni reports it."""
        return node.api("/patroni")[1].get("timeline")

    def kill_node(self, node):
        """The node dies: its PostgreSQL stalls (SIGSTOP, so nothing more leaves it), its Patroni
        is SIGKILLed (the leader key is not released: it expires after ttl), then its PostgreSQL
        processes are SIGKILLed. Nothing restarts it. Returns when it stalled (time.monotonic())."""
        node.dead = True
        pids = node.postgres_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stalled = time.monotonic()
        node.proc.kill()
        node.proc.wait(10)
        for pid in pids + node.postgres_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return stalled
