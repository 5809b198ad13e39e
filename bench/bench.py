#!/usr/bin/env python3
"""bench.py: `make bench`. Starts the service (scripts/run.sh) and the ceilings (nginx `return
200`, nginx + bench/fcgi_null) on a temp data dir and free ports, measures each case with wrk,
interleaved over several rounds, and prints medians and ratios to the matching ceiling.
Writes the table to bench/results/latest.md. Reports only: nothing here asserts a timing."""

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402
from harness import Server, free_port  # noqa: E402

BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("THREADS") or 32 * (os.cpu_count() or 2))
BIG = int(os.environ.get("BENCH_BIG_ROWS", "1000000"))
# BENCH_PG=0 leaves PostgreSQL out (it needs the postgresql package: make deps installs it).
PG = os.environ.get("BENCH_PG", "1") != "0"
# BENCH_PROFILE=1: `perf record -g` on the app during the first round of the 32-connection POST
# and 10-test GET cases (AUTH=off and on); top symbols to bench/results/perf-*.txt.
PROFILE = os.environ.get("BENCH_PROFILE", "0") != "0"
IDLE = int(os.environ.get("BENCH_IDLE_CONNS", "1000"))
PG_DIR = f"/tmp/tdapi-bench-pg-{os.getpid()}"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_wrk(out):
    def dur(s):
        m = re.match(r"([\d.]+)(us|ms|s|m)", s)
        v, u = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = dur(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = dur(re.search(r"\s99%\s+(\S+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in m.groups()) if m else 0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": non2xx + errors, "total": total}


def wrk(url, conns, script=None, args=(), token=None):
    cmd = ["wrk", "-t", str(min(2, conns)), "-c", str(conns), "-d", f"{SECONDS}s", "--latency"]
    if token and not script:
        cmd += ["-H", "Authorization: Bearer " + token]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if args:
        cmd += ["--"] + list(args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 60).stdout
    return parse_wrk(out)


def pgbench(database, script, conns, variables=()):
    """A do-nothing libpq client (pgbench, prepared statements) running SCRIPT on the bench's
    PostgreSQL server for SECONDS; per-transaction latencies from its log (-l)."""
    logdir = tempfile.mkdtemp(prefix="tdapi-bench-pgbench-")
    try:
        cmd = [harness._pg_tool("pgbench"), "-n", "-M", "prepared", "-c", str(conns),
               "-j", str(min(2, conns)), "-T", str(SECONDS), "-f", script, "-l",
               "--log-prefix", os.path.join(logdir, "tx"), "-h", harness.PG_HOST, "-U", harness.PG_USER]
        for v in variables:
            cmd += ["-D", v]
        p = subprocess.run(cmd + [database], capture_output=True, text=True, timeout=SECONDS + 60)
        if p.returncode != 0:
            raise RuntimeError(f"pgbench {script}: {p.stderr.strip()[-500:]}")
        lat = []
        for name in os.listdir(logdir):
            with open(os.path.join(logdir, name)) as f:
                # client, transaction, latency µs (or "failed"/"skipped"), script, epoch s, µs
                lat += [int(w[2]) / 1000 for w in map(str.split, f) if len(w) > 2 and w[2].isdigit()]
        lat.sort()
        m = re.search(r"number of failed transactions: (\d+)", p.stdout)
        return {"rps": float(re.search(r"tps = ([\d.]+)", p.stdout).group(1)),
                "p50": lat[len(lat) // 2] if lat else 0.0,
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
                "non2xx": int(m.group(1)) if m else 0, "total": len(lat)}
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def render(template, data_dir, port, port_plain, socket, socket_plain, keepalive):
    user = "user root root;" if os.geteuid() == 0 else ""
    with open(template) as f:
        text = f.read()
    text = (text.replace("@PORT@", str(port)).replace("@PORT_PLAIN@", str(port_plain))
            .replace("@DATA_DIR@", data_dir).replace("@SOCKET_PLAIN@", socket_plain)
            .replace("@KEEPALIVE@", str(keepalive))
            .replace("@SOCKET@", socket).replace("@USER_DIRECTIVE@", user))
    path = os.path.join(data_dir, "nginx-ceiling.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def seed_direct(db, clinic, n, batch=50000):
    """Bulk rows written straight into SQLite, in the app's row format (the app is running; WAL
    lets both work). Rows are (test_id, seq, five fields, created_at, doc)."""
    conn = sqlite3.connect(db, timeout=30)
    now = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    base = conn.execute("SELECT coalesce(max(rowid), 0) FROM tests").fetchone()[0]

    def row(i):
        rec = {"test_id": f"{clinic}-{i}", "patient_id": f"patient-{i}", "clinic_id": clinic,
               "test_type": "blood", "result": f"result value {i}", "created_at": now}
        doc = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
        seq = base + 1 + i
        return (seq, seq, rec["test_id"], rec["patient_id"], clinic, "blood", rec["result"], now, doc)

    for start in range(0, n, batch):
        with conn:
            conn.executemany("INSERT INTO tests (rowid, seq, test_id, patient_id, clinic_id, test_type,"
                             " result, created_at, doc) VALUES (?,?,?,?,?,?,?,?,?)",
                             (row(i) for i in range(start, min(n, start + batch))))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # start the runs from a database at rest
    conn.close()


def rss_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def profile_start(pid, name):
    if not PROFILE or not shutil.which("perf"):
        return None
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", "perf-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    p = subprocess.Popen(["perf", "record", "-F", "997", "-g", "-p", str(pid), "-o", out + ".data",
                          "--", "sleep", str(SECONDS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, out


def profile_finish(prof):
    """Writes the profile's shares by library and its top symbols next to the table."""
    if prof is None:
        return
    p, out = prof
    p.wait(SECONDS + 60)
    parts = []
    for title, sort in (("by library (dso)", "dso"), ("top symbols (self)", "dso,sym")):
        r = subprocess.run(["perf", "report", "-i", out + ".data", "--no-children", "--stdio",
                            "--sort", sort, "-g", "none"], capture_output=True, text=True)
        rows = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")][:45]
        parts.append(f"## {title}\n" + "\n".join(rows))
    with open(out + ".txt", "w") as f:
        f.write(f"# perf record -F 997 -g -p <app> for {SECONDS} s under the bench load\n\n" +
                "\n\n".join(parts) + "\n")
    os.unlink(out + ".data")


def idle_connections(port, n, path, token=None):
    """Opens n kept-alive client connections, each after one GET (with the bearer token, if
    given: keyless requests are rate-limited per address with AUTH=on), and leaves them idle."""
    socks, ok = [], 0
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    for _ in range(n):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode())
            if c.recv(65536).startswith(b"HTTP/1.1 200"):
                ok += 1
            socks.append(c)
        except OSError:
            break
    return socks, ok


def timed(cmd):
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return time.monotonic() - t, r.stdout


def big_listing(server, db, clinic):
    app = server.pid_of("app")
    url = f"http://127.0.0.1:{server.port}/tests?clinic_id={clinic}"
    peak = [rss_kb(app, "VmRSS")]
    before = peak[0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb(app, "VmRSS"))
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    secs, out = timed(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{http_code}", url])
    done.set()
    t.join()
    size, code = out.split()
    sql = ("SELECT test_id, patient_id, clinic_id, test_type, result, created_at FROM tests "
           f"WHERE clinic_id='{clinic}' ORDER BY seq")
    sqlite_secs, _ = timed(["sh", "-c", f"sqlite3 -json {db} \"{sql}\" > /dev/null"])
    return {"secs": secs, "bytes": int(size), "code": code, "rss_before_kb": before,
            "rss_peak_kb": peak[0], "sqlite_secs": sqlite_secs}


def nginx_workers(port):
    """PIDs of the nginx workers serving 127.0.0.1:port: the listeners whose parent listens too."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    listeners = {int(p) for p in re.findall(r"pid=(\d+)", out)}

    def ppid(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("PPid:"))
        except OSError:
            return -1
    return {p for p in listeners if ppid(p) in listeners}


def batch_stats(app_log, offset):
    with open(app_log, "rb") as f:
        f.seek(offset)
        lines = [json.loads(l) for l in f.read().decode().splitlines() if l.startswith("{")]
    txns = [l for l in lines if l.get("event") == "txn"]
    jobs = sum(l.get("count", 0) for l in txns)
    return {"transactions": len(txns), "jobs": jobs, "mean": jobs / len(txns) if txns else 0,
            "max": max((l.get("count", 0) for l in txns), default=0),
            "rollbacks": sum(1 for l in txns if l.get("txn") != "commit")}


def seed_over_http(server, clinics=(("bench-10", 10), ("bench-1000", 1000)), token=None):
    headers = {"Authorization": "Bearer " + token} if token else None
    for clinic, n in clinics:
        for i in range(n):
            r = server.request("POST", "/tests", {"test_id": f"{clinic}-{i}", "patient_id": f"p{i}",
                                                  "clinic_id": clinic, "test_type": "blood",
                                                  "result": f"result value {i}"}, headers=headers)
            assert r.status == 201, r


def create_key(app_bin, db):
    """The token of a new key that may read and write every clinic (the AUTH=on cases)."""
    out = subprocess.run([app_bin, "keys", "create", "--db", db, "--name", "bench", "--scope", "read:*",
                          "--scope", "write:*"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["token"]


def cpu_us_per_request(before, after, requests):
    """(user, system) µs per request of a process between two cpu_ticks() readings."""
    tck = os.sysconf("SC_CLK_TCK")
    return tuple((a - b) * 1e6 / tck / max(1, requests) for a, b in zip(after, before))


def write_results(name, title, table):
    """Prints a results table and writes it to bench/results/NAME under a title."""
    print(table)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
        f.write(f"# {title}\n\n{table}\n")


def pg_settings():
    """The server settings that matter for the numbers, as the bench's server has them."""
    names = ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers", "max_connections",
             "commit_delay", "server_version")
    rows = harness.psql("SELECT name || '=' || setting || coalesce(unit, '') FROM pg_settings "
                        f"WHERE name IN ({', '.join(repr(n) for n in names)}) ORDER BY name")
    return ", ".join(rows.split())


def main():
    data_dir = tempfile.mkdtemp(prefix="tdapi-bench-")
    procs = []
    server = secure = None
    pg_servers = []
    pg_started = False
    secure_dir = tempfile.mkdtemp(prefix="tdapi-bench-auth-")
    try:
        # The seed's local mode without the audit trail (as earlier tables), and beside it the
        # service as deployed: keys checked on every request, every access audited.
        server = Server(data_dir=data_dir, APP_BIN=os.path.join(BUILD, "testdata-api"),
                        THREADS=THREADS, AUTH="off", AUDIT="off",
                        TCP_CONN_LIMIT_PER_ADDR=IDLE + 64).start()  # idle conns from one address
        secure = Server(data_dir=secure_dir, APP_BIN=os.path.join(BUILD, "testdata-api"),
                        THREADS=THREADS, AUTH="on", TCP_CONN_LIMIT_PER_ADDR=IDLE + 64).start()
        token = create_key(os.path.join(BUILD, "testdata-api"), os.path.join(secure_dir, "testdata.db"))
        seed_over_http(secure, (("bench-10", 10),), token)
        db = os.path.join(data_dir, "testdata.db")
        log(f"service on :{server.port}, {THREADS} threads, data in {data_dir}")
        seed_over_http(server)
        # PostgreSQL on the same machine (a private server on a unix socket, fsync and
        # synchronous_commit on), behind one app process and behind three.
        pg_urls = {}
        if PG:
            subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "start", PG_DIR], check=True)
            pg_started = True
            harness.PG_HOST = PG_DIR
            for nodes in (1, 3):
                name = f"bench_{nodes}"
                harness.pg_fresh_database(name)
                pg = Server(data_dir=tempfile.mkdtemp(prefix=f"tdapi-bench-pg{nodes}-"),
                            APP_BIN=os.path.join(BUILD, "testdata-api"), THREADS=THREADS,
                            AUTH="off", AUDIT="off", DATABASE_URL=harness.pg_url(name),
                            APP_NODES=nodes).start()
                pg_servers.append(pg)
                seed_over_http(pg)
                pg_urls[nodes] = f"http://127.0.0.1:{pg.port}"
                log(f"PostgreSQL, {nodes} app node(s) on :{pg.port}")
        listing_1000 = len(server.request("GET", "/tests?clinic_id=bench-1000").body)
        log(f"seeding {BIG} rows for the big clinic...")
        seed_direct(db, "bench-1m", BIG)

        null_sock = os.path.join(data_dir, "run", "null.sock")
        procs.append(subprocess.Popen([os.path.join(BUILD, "bench", "fcgi_null"), "--socket", null_sock,
                                       "--threads", str(THREADS), "--large-bytes", str(listing_1000)]))
        # A second responder, reached with a new connection per request, for reference.
        plain_sock = os.path.join(data_dir, "run", "null-plain.sock")
        procs.append(subprocess.Popen([os.path.join(BUILD, "bench", "fcgi_null"), "--socket", plain_sock,
                                       "--threads", str(THREADS)]))
        ceiling_port, plain_port = free_port(), free_port()
        cores = os.cpu_count() or 2
        keepalive = max(1, min(8, THREADS // (4 * cores)))  # as scripts/run.sh computes it
        conf = render(os.path.join(ROOT, "bench", "nginx-ceiling.conf"), data_dir, ceiling_port,
                      plain_port, null_sock, plain_sock, keepalive)
        time.sleep(0.3)
        procs.append(subprocess.Popen(["nginx", "-p", data_dir, "-c", conf, "-e",
                                       os.path.join(data_dir, "logs", "nginx-ceiling-error.log")]))
        time.sleep(0.5)

        app = f"http://127.0.0.1:{server.port}"
        sec = f"http://127.0.0.1:{secure.port}"
        ceil = f"http://127.0.0.1:{ceiling_port}"
        plain = f"http://127.0.0.1:{plain_port}"
        post = os.path.join(ROOT, "bench", "post.lua")
        cases = [
            # name, url, conns, script, ceiling name[, token]
            ("nginx return 200", ceil + "/return200", 32, None, None),
            ("FastCGI ceiling, small body", ceil + "/small", 32, None, None),
            ("FastCGI ceiling, small body, 1 conn", ceil + "/small", 1, None, None),
            ("FastCGI ceiling without keep-alive, small body", plain + "/small", 32, None, "FastCGI ceiling, small body"),
            ("FastCGI ceiling, 1,000-test-size body", ceil + "/large", 32, None, None),
            ("FastCGI ceiling, 1,000-test-size body, 1 conn", ceil + "/large", 1, None, None),
            ("POST /tests (durable), 32 conns", app + "/tests", 32, post, "FastCGI ceiling, small body"),
            ("POST /tests (durable), 1 conn", app + "/tests", 1, post, "FastCGI ceiling, small body, 1 conn"),
            ("GET clinic of 10, 32 conns", app + "/tests?clinic_id=bench-10", 32, None, "FastCGI ceiling, small body"),
            ("GET clinic of 10, 1 conn", app + "/tests?clinic_id=bench-10", 1, None, "FastCGI ceiling, small body, 1 conn"),
            ("GET clinic of 1,000, 32 conns", app + "/tests?clinic_id=bench-1000", 32, None, "FastCGI ceiling, 1,000-test-size body"),
            ("GET clinic of 1,000, 1 conn", app + "/tests?clinic_id=bench-1000", 1, None, "FastCGI ceiling, 1,000-test-size body, 1 conn"),
            ("POST /tests (durable), auth + audit on, 32 conns", sec + "/tests", 32, post, "FastCGI ceiling, small body", token),
            ("POST /tests (durable), auth + audit on, 1 conn", sec + "/tests", 1, post, "FastCGI ceiling, small body, 1 conn", token),
            ("GET clinic of 10, auth + audit on, 32 conns", sec + "/tests?clinic_id=bench-10", 32, None, "FastCGI ceiling, small body", token),
            ("GET clinic of 10, auth + audit on, 1 conn", sec + "/tests?clinic_id=bench-10", 1, None, "FastCGI ceiling, small body, 1 conn", token),
        ]
        if pg_urls:
            # PostgreSQL's own ceiling: the app's statements from a do-nothing libpq client
            # (pgbench), on the 1-node service's database, with as many connections as wrk.
            after = harness.psql("SELECT seq FROM tests WHERE clinic_id = 'bench-1000' ORDER BY seq "
                                 "LIMIT 1 OFFSET 15", database="bench_1").strip()
            pgb = os.path.join(ROOT, "bench", "pgbench")
            for conns, suffix in ((32, "32 clients"), (1, "1 client")):
                cases += [
                    (f"PostgreSQL ceiling: the POST's INSERT, {suffix}", "pgbench:bench_1", conns,
                     os.path.join(pgb, "post.sql"), None),
                    (f"PostgreSQL ceiling: the GET of 10's SELECT, {suffix}", "pgbench:bench_1", conns,
                     os.path.join(pgb, "get10.sql"), None, None, ("clinic=bench-10",)),
                    (f"PostgreSQL ceiling: the GET of 1,000's SELECTs, {suffix}", "pgbench:bench_1", conns,
                     os.path.join(pgb, "get1000.sql"), None, None, ("clinic=bench-1000", f"after={after}")),
                ]
        for nodes, url in pg_urls.items():
            pgn = f"PostgreSQL, {nodes} node{'s' if nodes > 1 else ''}"
            cases += [
                (f"{pgn}: POST /tests (durable), 32 conns", url + "/tests", 32, post, "PostgreSQL ceiling: the POST's INSERT, 32 clients"),
                (f"{pgn}: POST /tests (durable), 1 conn", url + "/tests", 1, post, "PostgreSQL ceiling: the POST's INSERT, 1 client"),
                (f"{pgn}: GET clinic of 10, 32 conns", url + "/tests?clinic_id=bench-10", 32, None, "PostgreSQL ceiling: the GET of 10's SELECT, 32 clients"),
                (f"{pgn}: GET clinic of 10, 1 conn", url + "/tests?clinic_id=bench-10", 1, None, "PostgreSQL ceiling: the GET of 10's SELECT, 1 client"),
                (f"{pgn}: GET clinic of 1,000, 32 conns", url + "/tests?clinic_id=bench-1000", 32, None, "PostgreSQL ceiling: the GET of 1,000's SELECTs, 32 clients"),
                (f"{pgn}: GET clinic of 1,000, 1 conn", url + "/tests?clinic_id=bench-1000", 1, None, "PostgreSQL ceiling: the GET of 1,000's SELECTs, 1 client"),
            ]
        results = {c[0]: [] for c in cases}
        app_pids = {app: server.pid_of("app"), sec: secure.pid_of("app")}
        cpu = {c[0]: [] for c in cases}  # app CPU µs per request (user, sys), per round
        rss = {c[0]: 0 for c in cases}  # app VmRSS after the case, kB (largest of the rounds)
        batches = []
        app_log = os.path.join(data_dir, "logs", "app.log")
        for rnd in range(ROUNDS):
            for name, url, conns, script, _, *more in cases:
                token_arg = more[0] if more else None
                if url.startswith("pgbench:"):
                    r = pgbench(url.split(":", 1)[1], script, conns, more[1] if len(more) > 1 else ())
                    results[name].append(r)
                    log(f"round {rnd + 1}/{ROUNDS} {name}: {r['rps']:.0f} tx/s p99 {r['p99']:.2f} ms failed {r['non2xx']}")
                    continue
                offset = os.path.getsize(app_log)
                args = ((f"r{rnd}c{conns}",) + ((token_arg,) if token_arg else ())) if script else ()
                base = next((b for b in app_pids if url.startswith(b + "/")), None)
                pid = app_pids.get(base)
                before = cpu_ticks(pid) if pid else None
                prof = (profile_start(pid, name) if pid and rnd == 0 and conns == 32 and
                        ("POST" in name or "clinic of 10," in name) else None)
                r = wrk(url, conns, script, args=args, token=token_arg)
                profile_finish(prof)
                if pid:
                    cpu[name].append(cpu_us_per_request(before, cpu_ticks(pid), r["total"]))
                    rss[name] = max(rss[name], rss_kb(pid, "VmRSS"))
                results[name].append(r)
                if script and conns == 32 and not token_arg and url.startswith(app):
                    batches.append(batch_stats(app_log, offset))
                log(f"round {rnd + 1}/{ROUNDS} {name}: {r['rps']:.0f} req/s p99 {r['p99']:.2f} ms non-2xx {r['non2xx']}")

        idle = {}
        for base, label, tok in ((app, "AUTH=off", None), (sec, "AUTH=on", token)):
            pid = app_pids[base]
            port = int(base.rsplit(":", 1)[1])
            socks, ok = idle_connections(port, IDLE, "/tests?clinic_id=bench-10", tok)
            time.sleep(1)
            idle[label] = (len(socks), ok, rss_kb(pid, "VmRSS"),
                           sum(rss_kb(p, "VmRSS") for p in nginx_workers(port)))
            for c in socks:
                c.close()
        big = [big_listing(server, db, "bench-1m") for _ in range(3)]
        # The app's restart-free peak over its whole life, for the record.
        hwm = rss_kb(server.pid_of("app"), "VmHWM")

        med = {}
        for name, rs in results.items():
            med[name] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
            med[name]["non2xx"] = sum(r["non2xx"] for r in rs)
            med[name]["total"] = sum(r["total"] for r in rs)
        lines = []
        lines.append(f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                     f"Linux {platform.release()}; {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC")
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        lines.append(f"CPU: {model}. wrk on the same box; {SECONDS} s per run, median of {ROUNDS} "
                     f"interleaved rounds; app and ceiling threads {THREADS}; nginx keeps {keepalive} "
                     f"idle FastCGI connections per worker for both. Cases without a note: AUTH=off "
                     f"AUDIT=off (the seed's local mode); 'auth + audit on': AUTH=on with a bearer key "
                     f"on every request, every access audited durably. Command: `make bench`.")
        if pg_urls:
            lines.append("")
            lines.append(f"PostgreSQL rows: the same service with DATABASE_URL (libpq, unix socket) to a "
                         f"private server on the same 2 cores ({pg_settings()}); APP_NODES app "
                         f"processes of {THREADS} threads each behind one nginx upstream; AUTH=off AUDIT=off. "
                         f"'PostgreSQL ceiling' rows: the app's own statements (bench/pgbench/*.sql) from a "
                         f"do-nothing libpq client, pgbench -M prepared, with as many connections as wrk has "
                         f"in the rows compared to them (req/s there is transactions/s; non-2xx, failed "
                         f"transactions). The POST's is an autocommitted INSERT per client connection, "
                         f"where the app sends its batches through one writer connection under an "
                         f"advisory lock (the lock that lets several app nodes write).")
        lines.append("")
        lines.append("| case | req/s | p50 ms | p99 ms | non-2xx | ratio to ceiling | app CPU µs/req user+sys | app RSS MB |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, _, _, _, ceiling, *_ in cases:
            m = med[name]
            ratio = (f"{m['rps'] / med[ceiling]['rps']:.2f} × {ceiling}" if ceiling and med[ceiling]['rps'] else "—")
            if cpu[name]:
                u = statistics.median(x[0] for x in cpu[name])
                k = statistics.median(x[1] for x in cpu[name])
                cpu_text, rss_text = f"{u:.0f} + {k:.0f}", f"{rss[name] / 1024:.1f}"
            else:
                cpu_text = rss_text = "—"
            lines.append(f"| {name} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
                         f"{m['non2xx']} of {m['total']:,} | {ratio} | {cpu_text} | {rss_text} |")
        lines.append("")
        lines.append("App CPU per request: the app process's utime + stime over the run (all its threads: "
                     "workers, the writer, the checkpointer) divided by the requests wrk counted; "
                     "SQLite rows only (PostgreSQL's server is another process).")
        for label, (opened, ok, app_rss, nginx_rss) in idle.items():
            lines.append(f"Idle connections, {label}: {opened} kept-alive client connections opened "
                         f"({ok} answered 200, then left idle): app RSS {app_rss / 1024:.1f} MB, "
                         f"nginx workers' RSS {nginx_rss / 1024:.1f} MB in all.")
        b = sorted(big, key=lambda x: x["secs"])[1]
        lines.append("")
        lines.append(f"One GET of a {BIG:,}-test clinic (median of 3): {b['secs']:.2f} s, "
                     f"{b['bytes'] / 1e6:.0f} MB, {b['bytes'] / 1e6 / b['secs']:.0f} MB/s, HTTP {b['code']}; "
                     f"app RSS {b['rss_before_kb'] / 1024:.1f} MB before, peak {max(x['rss_peak_kb'] for x in big) / 1024:.1f} MB "
                     f"during (VmHWM over the app's life {hwm / 1024:.1f} MB). "
                     f"`sqlite3 -json` on the same rows: {sorted(x['sqlite_secs'] for x in big)[1]:.2f} s "
                     f"(ratio {b['secs'] / sorted(x['sqlite_secs'] for x in big)[1]:.2f}).")
        mean = statistics.mean(x["mean"] for x in batches) if batches else 0
        lines.append("")
        lines.append(f"Durability: WAL, synchronous=FULL (fsync per COMMIT), group commit. Under the "
                     f"32-connection POST load: {sum(x['transactions'] for x in batches):,} transactions for "
                     f"{sum(x['jobs'] for x in batches):,} writes, mean batch {mean:.1f}, largest "
                     f"{max((x['max'] for x in batches), default=0)}, rollbacks "
                     f"{sum(x['rollbacks'] for x in batches)}.")
        write_results("latest.md", "make bench: latest results", "\n".join(lines))
    finally:
        for pg in pg_servers:
            pg.stop()
            shutil.rmtree(pg.data_dir, ignore_errors=True)
        if pg_started:
            subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "stop", PG_DIR])
        if secure is not None:
            secure.stop()
            shutil.rmtree(secure_dir, ignore_errors=True)
        if server is not None:
            server.stop()
        for p in procs:
            p.send_signal(signal.SIGQUIT if "nginx" in str(p.args[0]) else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not os.environ.get("KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
