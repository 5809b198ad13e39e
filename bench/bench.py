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
import urllib.request

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
# The PostgreSQL rows with a synchronous standby (pg-test-server.sh sync-start: a primary of its
# own and a standby by pg_basebackup -R) and through PgBouncer (pooler-start, transaction mode);
# BENCH_PG_REPLICATION=0 leaves both out.
PG_SYNC_DIR = f"/tmp/tdapi-bench-pgsync-{os.getpid()}"
PG_REPLICATION = os.environ.get("BENCH_PG_REPLICATION", "1") != "0"
# BENCH_ONLY: a regular expression; only the cases whose name it matches run (and the ceilings
# they are set against), e.g. BENCH_ONLY='PostgreSQL, 1 node: POST|sync standby|PgBouncer'.
ONLY = re.compile(os.environ["BENCH_ONLY"]) if os.environ.get("BENCH_ONLY") else None
# The revision measured beside this one ("before" columns): built once (RelWithDebInfo, no
# tests) into BENCH_BEFORE_CACHE/<commit>, started with its own scripts/run.sh and nginx.conf;
# every SQLite case runs against both in each round. BENCH_BEFORE=none leaves it out.
BEFORE = os.environ.get("BENCH_BEFORE", "c241b27")
BEFORE_CACHE = os.environ.get("BENCH_BEFORE_CACHE", os.path.join(BUILD, "bench-before"))
# The durable-append probe, per round: 4 KB appends + fdatasync for this long or this many.
PROBE_SECONDS = float(os.environ.get("BENCH_PROBE_SECONDS", "2"))
PROBE_APPENDS = int(os.environ.get("BENCH_PROBE_APPENDS", "5000"))
PROBE = "Durable-append probe: 4 KB append + fdatasync in DATA_DIR"
# The rows of corrections and of the change feed (routes the before build does not have).
PUT_32 = "PUT /tests/{id} (durable correction), 32 conns"
PUT_1 = "PUT /tests/{id} (durable correction), 1 conn"
PUT_DEF_32 = "PUT /tests/{id} (durable correction), defaults, 32 conns"
PUT_DEF_1 = "PUT /tests/{id} (durable correction), defaults, 1 conn"
FEED_100_32 = "GET /changes, 100 a page, defaults, 32 conns"
FEED_100_1 = "GET /changes, 100 a page, defaults, 1 conn"
FEED_1000_32 = "GET /changes, 1,000 a page, defaults, 32 conns"
CEILING_BEFORE_32 = "FastCGI ceiling, the before build's 1,000-test-size body"
CEILING_BEFORE_1 = "FastCGI ceiling, the before build's 1,000-test-size body, 1 conn"
# The PostgreSQL rows beside the plain server's: a synchronous standby, the pooler.
PG_SYNC_ON = "PostgreSQL + sync standby, synchronous_commit on, 1 node"
PG_SYNC_APPLY = "PostgreSQL + sync standby, synchronous_commit remote_apply, 1 node"
PGB = "PostgreSQL via PgBouncer (transaction, pool 5), 1 node"
NEW_ROUTES = {PUT_32, PUT_1, PUT_DEF_32, PUT_DEF_1, FEED_100_32, FEED_100_1, FEED_1000_32}


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


def fsync_probe(directory):
    """The machine's own durable-append rate: a loop of 4 KB appends to a new file in DIRECTORY
    (the filesystem the service's database is on), each followed by fdatasync, for PROBE_SECONDS
    or PROBE_APPENDS appends, whichever comes first. The file is removed afterwards. Returns the
    wrk-like record: appends/s, median and p99 of the per-append time (write + fdatasync), ms."""
    path = os.path.join(directory, f"bench-fsync-probe-{os.getpid()}")
    block = b"\xa5" * 4096
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        deadline = start + PROBE_SECONDS
        while len(times) < PROBE_APPENDS:
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            if t1 >= deadline:
                break
        total = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"rps": len(times) / total, "p50": times[len(times) // 2] * 1000,
            "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
            "non2xx": 0, "total": len(times)}


def build_before(rev):
    """Builds testdata-api at REV once into BEFORE_CACHE/<commit> (git archive of that commit,
    RelWithDebInfo, TDAPI_TESTS=OFF, ccache when there is one). Returns (commit, its run.sh,
    its binary); raises RuntimeError saying why it cannot."""
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", rev + "^{commit}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"'{rev}' is not a commit in {ROOT} (no git history here?)")
    commit = r.stdout.strip()
    base = os.path.join(BEFORE_CACHE, commit)
    src, build = os.path.join(base, "src"), os.path.join(base, "build")
    app_bin, done = os.path.join(build, "testdata-api"), os.path.join(base, "built")
    run_sh = os.path.join(src, "scripts", "run.sh")
    if os.path.exists(done) and os.access(app_bin, os.X_OK) and os.path.exists(run_sh):
        return commit, run_sh, app_bin
    log(f"building {rev} ({commit[:12]}) into {base} (once; later runs reuse it)...")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(src)
    archive = subprocess.Popen(["git", "-C", ROOT, "archive", commit], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", src], stdin=archive.stdout, capture_output=True, text=True)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise RuntimeError(f"git archive {commit[:12]} | tar failed: {untar.stderr.strip()[-300:]}")
    if not all(os.path.exists(os.path.join(src, f)) for f in ("scripts/run.sh", "nginx.conf")):
        raise RuntimeError(f"{commit[:12]} has no scripts/run.sh and nginx.conf to start it with")
    launcher = ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"] if shutil.which("ccache") else []
    for cmd in (["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                 "-DTDAPI_TESTS=OFF"] + launcher,
                ["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target", "testdata-api"]):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {(p.stdout + p.stderr).strip()[-500:]}")
    open(done, "w").close()
    return commit, run_sh, app_bin


def goals(m):
    """The goal lines of the storage engine's work, from the medians M (case name -> rps, p50,
    p99): (goal, measured value, its bound, "≤" or "≥", how it was computed). Each value is a
    ratio; None where a case is missing or measured nothing."""
    def t(name):  # mean time per request, ms
        return 1000 / m[name]["rps"] if m.get(name) and m[name]["rps"] else None

    def ratio(name, to):
        return (m[name]["rps"] / m[to]["rps"], f"{m[name]['rps']:,.0f} / {m[to]['rps']:,.0f} req/s"
                ) if m.get(name) and m.get(to) and m[to]["rps"] else (None, "—")

    rows = []
    post, get_off, probe = "POST /tests (durable), defaults, 1 conn", "GET clinic of 10, 1 conn", PROBE
    if None not in (t(post), t(get_off), t(probe)):
        base = t(probe) + t(get_off)
        rows.append(("POST c1 (defaults): time per request ≤ 1.25 × (probe's time per fsync + GET "
                     "clinic of 10 c1 AUDIT=off)", t(post) / base, 1.25, "≤",
                     f"{t(post):.3f} ms / ({t(probe):.3f} + {t(get_off):.3f} ms)"))
        base99 = m[probe]["p99"] + m[get_off]["p99"]
        rows.append(("POST c1 (defaults): p99 ≤ 2 × (probe's p99 + that GET's p99)",
                     m[post]["p99"] / base99 if base99 else None, 2.0, "≤",
                     f"{m[post]['p99']:.2f} ms / ({m[probe]['p99']:.2f} + {m[get_off]['p99']:.2f} ms)"))
    if None not in (t(PUT_DEF_1), t(get_off), t(probe)):
        rows.append(("PUT c1 (defaults): time per request ≤ 1.25 × (probe's time per fsync + GET "
                     "clinic of 10 c1 AUDIT=off)", t(PUT_DEF_1) / (t(probe) + t(get_off)), 1.25, "≤",
                     f"{t(PUT_DEF_1):.3f} ms / ({t(probe):.3f} + {t(get_off):.3f} ms)"))
    for goal, name, to, bound in (
            ("POST c32 (defaults: auth off) ≥ 0.6 × FastCGI ceiling", "POST /tests (durable), defaults, 32 conns",
             "FastCGI ceiling, small body", 0.6),
            ("POST c32, auth + audit on ≥ 0.5 × FastCGI ceiling", "POST /tests (durable), auth + audit on, 32 conns",
             "FastCGI ceiling, small body", 0.5),
            ("GET clinic of 10 c32 (defaults: auth off) ≥ 0.8 × FastCGI ceiling", "GET clinic of 10, defaults, 32 conns",
             "FastCGI ceiling, small body", 0.8),
            ("GET clinic of 1,000 c32 (defaults) ≥ 0.7 × a ceiling answering the same bytes",
             "GET clinic of 1,000, defaults, 32 conns", "FastCGI ceiling, 1,000-test-size body", 0.7),
            ("Audited GET clinic of 10 c1 (defaults: AUTH off, AUDIT on) ≥ 0.7 × the same GET with AUDIT=off",
             "GET clinic of 10, defaults, 1 conn", "GET clinic of 10, 1 conn", 0.7),
            ("PUT c32 (defaults) ≥ 0.8 × POST c32 (defaults): a correction costs about a create",
             PUT_DEF_32, "POST /tests (durable), defaults, 32 conns", 0.8),
            ("GET /changes, 1,000 a page, c32 (defaults) ≥ 0.7 × GET clinic of 1,000 c32 (defaults)",
             FEED_1000_32, "GET clinic of 1,000, defaults, 32 conns", 0.7)):
        value, how = ratio(name, to)
        rows.append((goal, value, bound, "≥", how))
    return rows


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
    lets both work): each test as created, version 1 (final) held in its `tests` row (test_id,
    seq, five fields, created_at, doc, status, version, updated_at, created_by "bench"), its seq
    taken from the numbering that seq and change_seq share. A database of a build before
    versions (no created_by column: BENCH_BEFORE) gets the same tests in its own row format (the
    five fields and created_at, no version fields)."""
    conn = sqlite3.connect(db, timeout=30)
    stamp = datetime.datetime.utcnow()
    now = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    columns_now = {r[1] for r in conn.execute("PRAGMA table_info(tests)")}
    versions = "created_by" in columns_now
    # From schema 7 a created range is a range of seq: the first seq of each created_at is in
    # created_marks, and a test older than the newest mark is created_late.
    marked = "created_late" in columns_now
    late = None
    if marked:
        newest = conn.execute("SELECT max(created_at) FROM created_marks").fetchone()[0]
        late = 1 if newest is not None and now < newest else None
    base = conn.execute("SELECT max(coalesce((SELECT max(rowid) FROM tests), 0),"
                        " coalesce((SELECT max(seq) FROM tests), 0),"
                        + (" coalesce((SELECT max(change_seq) FROM test_versions), 0)," if versions else "") +
                        " (SELECT coalesce(max(value), 0) FROM counters))").fetchone()[0]

    def row(i):
        rec = {"test_id": f"{clinic}-{i}", "patient_id": f"patient-{i}", "clinic_id": clinic,
               "test_type": "blood", "result": f"result value {i}", "created_at": now}
        if versions:
            rec.update({"status": "final", "version": 1, "updated_at": now})
        text = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
        seq = base + 1 + i
        out = (seq, seq, rec["test_id"], rec["patient_id"], clinic, "blood", rec["result"], now, text)
        if marked:
            return out + ("final", 1, now, "bench", late)
        return out + ("final", 1, now, "bench") if versions else out

    columns = ("rowid, seq, test_id, patient_id, clinic_id, test_type, result, created_at, doc" +
               (", status, version, updated_at, created_by" if versions else "") +
               (", created_late" if marked else ""))
    marks = ",".join("?" * (14 if marked else 13 if versions else 9))
    if marked and late is None and n > 0:
        with conn:
            conn.execute("INSERT OR IGNORE INTO created_marks (created_at, seq) VALUES (?, ?)",
                         (now, base + 1))
    for start in range(0, n, batch):
        with conn:
            conn.executemany(f"INSERT INTO tests ({columns}) VALUES ({marks})",
                             (row(i) for i in range(start, min(n, start + batch))))
    if not versions:  # that build numbers its creates from counters.last_seq (where it has one)
        with conn:
            conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'last_seq'", (base + n,))
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


def answer_bytes(url):
    """(body bytes, header bytes, body bytes on the wire: with the chunked framing) of one GET."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{size_header}", url],
                         capture_output=True, text=True, timeout=60).stdout.split()
    raw = subprocess.run(["curl", "-s", "--raw", "-o", "-", url], capture_output=True, timeout=60).stdout
    return int(out[0]), int(out[1]), len(raw)


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


# Tests each wrk thread corrects in turn in a PUT run (bench/put.lua): far more than a thread's
# connections, so a test comes round again only after its previous correction was answered.
PUT_PER_THREAD = int(os.environ.get("BENCH_PUT_PER_THREAD", "500"))


def seed_put(base_url, prefix, threads, token=None):
    """Before one PUT run: stores the tests bench/put.lua corrects (<prefix>-<thread>-<n>, clinic
    bench-put, patient p-<n>) in batches of 1,000."""
    records = [{"test_id": f"{prefix}-{t}-{n}", "patient_id": f"p-{n}", "clinic_id": "bench-put",
                "test_type": "blood", "result": "negative"}
               for t in range(1, threads + 1) for n in range(1, PUT_PER_THREAD + 1)]
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    for i in range(0, len(records), 1000):
        req = urllib.request.Request(base_url + "/tests/batch", method="POST", headers=headers,
                                     data=json.dumps(records[i:i + 1000]).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 201, r.status


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


def start_sqlite(sqlite_servers, app_bin, data_dir=None, run_sh=None, **env):
    """One SQLite instance through run.sh (RUN_SCRIPT: another revision's), started and listed in
    SQLITE_SERVERS for the cleanup. AUTH, AUDIT and AUDIT_READS not given are unset (run.sh's
    defaults, what `make run` gives), whatever the bench's own environment says."""
    s = Server(data_dir=data_dir or tempfile.mkdtemp(prefix="tdapi-bench-"), APP_BIN=app_bin,
               THREADS=THREADS, TCP_CONN_LIMIT_PER_ADDR=IDLE + 64, **env)  # idle conns from one address
    for k in ("AUTH", "AUDIT", "AUDIT_READS"):
        if k not in env:
            s.env.pop(k, None)
    if run_sh:
        s.env["RUN_SCRIPT"] = run_sh
    sqlite_servers.append(s)
    return s.start()


def main():
    data_dir = tempfile.mkdtemp(prefix="tdapi-bench-")
    procs = []
    server = None
    sqlite_servers = []  # every SQLite instance, this build's and the before build's
    pg_servers = []
    pg_started = False
    pg_sync_started = False
    before = None  # (rev, commit, {"off"|"default"|"auth": base URL}, token), when measured
    before_why = "BENCH_BEFORE=none" if BEFORE in ("", "none") else None
    try:
        if before_why is None:
            try:
                before_commit, before_run_sh, before_bin = build_before(BEFORE)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                before_why = f"{BEFORE} could not be built: {e}"
                log(f"before columns left out: {before_why}")
        app_bin = os.path.join(BUILD, "testdata-api")
        # The seed's local mode without the audit trail (as earlier tables); beside it `make
        # run`'s defaults (AUTH off on loopback, every access audited), and the service as
        # deployed: keys checked on every request, every access audited.
        server = start_sqlite(sqlite_servers, app_bin, data_dir, AUTH="off", AUDIT="off")
        default = start_sqlite(sqlite_servers, app_bin)
        secure = start_sqlite(sqlite_servers, app_bin, AUTH="on")
        token = create_key(app_bin, os.path.join(secure.data_dir, "testdata.db"))
        seed_over_http(secure, (("bench-10", 10),), token)
        db = os.path.join(data_dir, "testdata.db")
        log(f"service on :{server.port}, {THREADS} threads, data in {data_dir}")
        seed_over_http(server)
        seed_over_http(default)
        if before_why is None:
            try:
                b_off = start_sqlite(sqlite_servers, before_bin, run_sh=before_run_sh, AUTH="off", AUDIT="off")
                b_def = start_sqlite(sqlite_servers, before_bin, run_sh=before_run_sh)
                b_sec = start_sqlite(sqlite_servers, before_bin, run_sh=before_run_sh, AUTH="on")
                b_token = create_key(before_bin, os.path.join(b_sec.data_dir, "testdata.db"))
                seed_over_http(b_sec, (("bench-10", 10),), b_token)
                seed_over_http(b_off)
                seed_over_http(b_def)
                before = (BEFORE, before_commit, {k: f"http://127.0.0.1:{s.port}" for k, s in
                                                  (("off", b_off), ("default", b_def), ("auth", b_sec))}, b_token)
                before_db = os.path.join(b_off.data_dir, "testdata.db")
                before_pids = {f"http://127.0.0.1:{s.port}": s.pid_of("app") for s in (b_off, b_def, b_sec)}
                log(f"before ({BEFORE}, {before_commit[:12]}) on :{b_off.port}, :{b_def.port}, :{b_sec.port}")
            except (RuntimeError, OSError, AssertionError, subprocess.SubprocessError) as e:
                before_why = f"{BEFORE}'s build did not start or seed: {str(e)[-500:]}"
                log(f"before columns left out: {before_why}")
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
        # The same single-node service through PgBouncer in front of the same server, and on a
        # primary with a synchronous standby (DATABASE_SYNCHRONOUS_COMMIT on and remote_apply).
        pg_more = {}  # row prefix -> base URL
        if PG and PG_REPLICATION:
            script = os.path.join(ROOT, "scripts", "pg-test-server.sh")
            subprocess.run([script, "pooler-start", PG_DIR], check=True)
            harness.pg_fresh_database("bench_pgb")
            pg = Server(data_dir=tempfile.mkdtemp(prefix="tdapi-bench-pgb-"),
                        APP_BIN=os.path.join(BUILD, "testdata-api"), THREADS=THREADS,
                        AUTH="off", AUDIT="off", DATABASE_POOLER="transaction",
                        DATABASE_URL=f"postgresql://{harness.PG_USER}@/bench_pgb?host={PG_DIR}/pgbouncer&port=6432").start()
            pg_servers.append(pg)
            seed_over_http(pg, (("bench-10", 10),))
            pg_more[PGB] = f"http://127.0.0.1:{pg.port}"
            log(f"{PGB} on :{pg.port}")
            subprocess.run([script, "sync-start", PG_SYNC_DIR], check=True)
            pg_sync_started = True
            for commit, label in (("on", PG_SYNC_ON), ("remote_apply", PG_SYNC_APPLY)):
                name = f"bench_sync_{commit}"
                subprocess.run([harness._pg_tool("psql"), "-XqAt", "-v", "ON_ERROR_STOP=1", "-h", PG_SYNC_DIR,
                                "-U", harness.PG_USER, "-d", "postgres", "-c", f'CREATE DATABASE "{name}"'],
                               check=True, capture_output=True, timeout=60)
                pg = Server(data_dir=tempfile.mkdtemp(prefix="tdapi-bench-pgsync-"),
                            APP_BIN=os.path.join(BUILD, "testdata-api"), THREADS=THREADS,
                            AUTH="off", AUDIT="off", DATABASE_SYNCHRONOUS_COMMIT=commit,
                            DATABASE_URL=f"postgresql://{harness.PG_USER}@/{name}?host={PG_SYNC_DIR}").start()
                pg_servers.append(pg)
                pg_more[label] = f"http://127.0.0.1:{pg.port}"
                log(f"{label} on :{pg.port}")
        listing_1000 = len(server.request("GET", "/tests?clinic_id=bench-1000").body)
        log(f"seeding {BIG} rows for the big clinic...")
        seed_direct(db, "bench-1m", BIG)
        if before:  # the same clinic in the before build's database: both run on one size
            seed_direct(before_db, "bench-1m", BIG)

        null_sock = os.path.join(data_dir, "run", "null.sock")
        # The before build's 1,000-test listing has other bytes (no status, version, updated_at):
        # its GET rows are also set against a ceiling of its own size.
        listing_1000_before = (len(urllib.request.urlopen(before[2]["off"] + "/tests?clinic_id=bench-1000",
                                                          timeout=30).read()) if before else listing_1000)
        procs.append(subprocess.Popen([os.path.join(BUILD, "bench", "fcgi_null"), "--socket", null_sock,
                                       "--threads", str(THREADS), "--large-bytes", str(listing_1000),
                                       "--before-bytes", str(listing_1000_before)]))
        # A second responder, reached with a new connection per request, for reference.
        plain_sock = os.path.join(data_dir, "run", "null-plain.sock")
        procs.append(subprocess.Popen([os.path.join(BUILD, "bench", "fcgi_null"), "--socket", plain_sock,
                                       "--threads", str(THREADS)]))
        ceiling_port, plain_port = free_port(), free_port()
        cores = os.cpu_count() or 2
        keepalive = max(1, min(8, THREADS // (4 * cores)))  # as render-config.py does for make run
        conf = render(os.path.join(ROOT, "bench", "nginx-ceiling.conf"), data_dir, ceiling_port,
                      plain_port, null_sock, plain_sock, keepalive)
        time.sleep(0.3)
        procs.append(subprocess.Popen(["nginx", "-p", data_dir, "-c", conf, "-e",
                                       os.path.join(data_dir, "logs", "nginx-ceiling-error.log")]))
        time.sleep(0.5)

        app = f"http://127.0.0.1:{server.port}"
        # The 1,000-test-size ceiling answers as many bytes as the app's 1,000-test listing.
        large_bytes = {"app": answer_bytes(app + "/tests?clinic_id=bench-1000"),
                       "ceiling": answer_bytes(f"http://127.0.0.1:{ceiling_port}/large")}
        if large_bytes["app"][:2] != large_bytes["ceiling"][:2]:
            log(f"the 1,000-test-size ceiling answers other bytes than the app (body, headers, "
                f"on the wire): {large_bytes}")
        sec = f"http://127.0.0.1:{secure.port}"
        dflt = f"http://127.0.0.1:{default.port}"
        ceil = f"http://127.0.0.1:{ceiling_port}"
        plain = f"http://127.0.0.1:{plain_port}"
        post = os.path.join(ROOT, "bench", "post.lua")
        put = os.path.join(ROOT, "bench", "put.lua")
        cases = [
            # name, url, conns, script, ceiling name[, token]
            ("nginx return 200", ceil + "/return200", 32, None, None),
            ("FastCGI ceiling, small body", ceil + "/small", 32, None, None),
            ("FastCGI ceiling, small body, 1 conn", ceil + "/small", 1, None, None),
            ("FastCGI ceiling without keep-alive, small body", plain + "/small", 32, None, "FastCGI ceiling, small body"),
            ("FastCGI ceiling, 1,000-test-size body", ceil + "/large", 32, None, None),
            ("FastCGI ceiling, 1,000-test-size body, 1 conn", ceil + "/large", 1, None, None),
        ]
        if before:
            cases += [
                (CEILING_BEFORE_32, ceil + "/large-before", 32, None, None),
                (CEILING_BEFORE_1, ceil + "/large-before", 1, None, None),
            ]
        cases += [
            # The machine's own durable-append rate, on the filesystem the databases are on.
            (PROBE, "probe:" + default.data_dir, 1, None, None),
            ("POST /tests (durable), 32 conns", app + "/tests", 32, post, "FastCGI ceiling, small body"),
            ("POST /tests (durable), 1 conn", app + "/tests", 1, post, "FastCGI ceiling, small body, 1 conn"),
            ("GET clinic of 10, 32 conns", app + "/tests?clinic_id=bench-10", 32, None, "FastCGI ceiling, small body"),
            ("GET clinic of 10, 1 conn", app + "/tests?clinic_id=bench-10", 1, None, "FastCGI ceiling, small body, 1 conn"),
            ("GET clinic of 1,000, 32 conns", app + "/tests?clinic_id=bench-1000", 32, None, "FastCGI ceiling, 1,000-test-size body"),
            ("GET clinic of 1,000, 1 conn", app + "/tests?clinic_id=bench-1000", 1, None, "FastCGI ceiling, 1,000-test-size body, 1 conn"),
            ("POST /tests (durable), defaults, 32 conns", dflt + "/tests", 32, post, "FastCGI ceiling, small body"),
            ("POST /tests (durable), defaults, 1 conn", dflt + "/tests", 1, post, "FastCGI ceiling, small body, 1 conn"),
            ("GET clinic of 10, defaults, 32 conns", dflt + "/tests?clinic_id=bench-10", 32, None, "FastCGI ceiling, small body"),
            ("GET clinic of 10, defaults, 1 conn", dflt + "/tests?clinic_id=bench-10", 1, None, "FastCGI ceiling, small body, 1 conn"),
            ("GET clinic of 1,000, defaults, 32 conns", dflt + "/tests?clinic_id=bench-1000", 32, None, "FastCGI ceiling, 1,000-test-size body"),
            ("GET clinic of 1,000, defaults, 1 conn", dflt + "/tests?clinic_id=bench-1000", 1, None, "FastCGI ceiling, 1,000-test-size body, 1 conn"),
            ("POST /tests (durable), auth + audit on, 32 conns", sec + "/tests", 32, post, "FastCGI ceiling, small body", token),
            ("POST /tests (durable), auth + audit on, 1 conn", sec + "/tests", 1, post, "FastCGI ceiling, small body, 1 conn", token),
            ("GET clinic of 10, auth + audit on, 32 conns", sec + "/tests?clinic_id=bench-10", 32, None, "FastCGI ceiling, small body", token),
            ("GET clinic of 10, auth + audit on, 1 conn", sec + "/tests?clinic_id=bench-10", 1, None, "FastCGI ceiling, small body, 1 conn", token),
            # Corrections of existing tests (bench/put.lua; stored before each run by seed_put),
            # each with its own If-Match: every answer a 200.
            (PUT_32, app + "/tests", 32, put, "FastCGI ceiling, small body"),
            (PUT_1, app + "/tests", 1, put, "FastCGI ceiling, small body, 1 conn"),
            (PUT_DEF_32, dflt + "/tests", 32, put, "FastCGI ceiling, small body"),
            (PUT_DEF_1, dflt + "/tests", 1, put, "FastCGI ceiling, small body, 1 conn"),
            # The change feed: the first page of a clinic of 1,000 creates (no since: from the
            # beginning), as a consumer's first sync reads it; wait=0.
            (FEED_100_32, dflt + "/changes?clinic_id=bench-1000&limit=100", 32, None, "FastCGI ceiling, small body"),
            (FEED_100_1, dflt + "/changes?clinic_id=bench-1000&limit=100", 1, None, "FastCGI ceiling, small body, 1 conn"),
            (FEED_1000_32, dflt + "/changes?clinic_id=bench-1000&limit=1000", 32, None, "FastCGI ceiling, 1,000-test-size body"),
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
                (f"{pgn}: {PUT_32}", url + "/tests", 32, put, "PostgreSQL ceiling: the POST's INSERT, 32 clients"),
                (f"{pgn}: {PUT_1}", url + "/tests", 1, put, "PostgreSQL ceiling: the POST's INSERT, 1 client"),
                (f"{pgn}: GET /changes, 100 a page, 32 conns", url + "/changes?clinic_id=bench-1000&limit=100", 32, None, None),
            ]
            if nodes == 1 and pg_more:
                # Beside the plain server's rows, each set against them (the ratio column).
                plain = f"{pgn}: POST /tests (durable)"
                for label in (PG_SYNC_ON, PG_SYNC_APPLY, PGB):
                    more = pg_more[label]
                    cases += [
                        (f"{label}: POST /tests (durable), 32 conns", more + "/tests", 32, post, f"{plain}, 32 conns"),
                        (f"{label}: POST /tests (durable), 1 conn", more + "/tests", 1, post, f"{plain}, 1 conn"),
                    ]
                cases.append((f"{PGB}: GET clinic of 10, 32 conns", pg_more[PGB] + "/tests?clinic_id=bench-10", 32,
                              None, f"{pgn}: GET clinic of 10, 32 conns"))
        if ONLY:
            # The selected cases and every case they are set against, and so on (a row set
            # against another row keeps that row's own ceiling too).
            keep = {c[0] for c in cases if ONLY.search(c[0])}
            while True:
                more = {c[4] for c in cases if c[0] in keep and c[4]} - keep
                if not more:
                    break
                keep |= more
            cases = [c for c in cases if c[0] in keep]
        results = {c[0]: [] for c in cases}
        # The before build's twin of each SQLite case: the same path on its instance of the
        # same mode, with its own key.
        twins = {}
        if before:
            for name, url, *_ in cases:
                if name in NEW_ROUTES:  # the before build has no PUT and no change feed
                    continue
                for base, mode in ((app, "off"), (dflt, "default"), (sec, "auth")):
                    if url.startswith(base + "/"):
                        twins[name] = (before[2][mode] + url[len(base):], before[3] if mode == "auth" else None)
        results_b = {name: [] for name in twins}
        cpu_b = {name: [] for name in twins}  # the before build's app CPU µs per request
        app_pids = {app: server.pid_of("app"), sec: secure.pid_of("app"), dflt: default.pid_of("app")}
        cpu = {c[0]: [] for c in cases}  # app CPU µs per request (user, sys), per round
        rss = {c[0]: 0 for c in cases}  # app VmRSS after the case, kB (largest of the rounds)
        batches = []
        app_log = os.path.join(data_dir, "logs", "app.log")
        for rnd in range(ROUNDS):
            for name, url, conns, script, _, *more in cases:
                token_arg = more[0] if more else None
                if url.startswith("probe:"):
                    r = fsync_probe(url.split(":", 1)[1])
                    results[name].append(r)
                    log(f"round {rnd + 1}/{ROUNDS} {name}: {r['rps']:.0f} appends/s p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms")
                    continue
                if url.startswith("pgbench:"):
                    r = pgbench(url.split(":", 1)[1], script, conns, more[1] if len(more) > 1 else ())
                    results[name].append(r)
                    log(f"round {rnd + 1}/{ROUNDS} {name}: {r['rps']:.0f} tx/s p99 {r['p99']:.2f} ms failed {r['non2xx']}")
                    continue
                # With a twin, the two runs back to back, the order alternating by round.
                for which in ((("after", "before") if rnd % 2 == 0 else ("before", "after"))
                              if name in twins else ("after",)):
                    if which == "before":
                        b_url, b_token = twins[name]
                        args = ((f"r{rnd}c{conns}",) + ((b_token,) if b_token else ())) if script else ()
                        b_pid = next((p for u, p in before_pids.items() if b_url.startswith(u + "/")), None)
                        b_ticks = cpu_ticks(b_pid) if b_pid else None
                        r = wrk(b_url, conns, script, args=args, token=b_token)
                        if b_pid:
                            cpu_b[name].append(cpu_us_per_request(b_ticks, cpu_ticks(b_pid), r["total"]))
                        results_b[name].append(r)
                        log(f"round {rnd + 1}/{ROUNDS} before: {name}: {r['rps']:.0f} req/s p99 {r['p99']:.2f} ms non-2xx {r['non2xx']}")
                        continue
                    offset = os.path.getsize(app_log)
                    args = ((f"r{rnd}c{conns}",) + ((token_arg,) if token_arg else ())) if script else ()
                    if script == put:  # its tests, fresh for this run (ids apart from post.lua's)
                        prefix = "put-" + args[0]
                        seed_put(url.rsplit("/tests", 1)[0], prefix, min(2, conns), token_arg)
                        args = (prefix, str(PUT_PER_THREAD)) + args[1:]
                    base = next((b for b in app_pids if url.startswith(b + "/")), None)
                    pid = app_pids.get(base)
                    before_ticks = cpu_ticks(pid) if pid else None
                    prof = (profile_start(pid, name) if pid and rnd == 0 and conns == 32 and
                            ("POST" in name or "clinic of 10," in name) else None)
                    r = wrk(url, conns, script, args=args, token=token_arg)
                    profile_finish(prof)
                    if pid:
                        cpu[name].append(cpu_us_per_request(before_ticks, cpu_ticks(pid), r["total"]))
                        rss[name] = max(rss[name], rss_kb(pid, "VmRSS"))
                    results[name].append(r)
                    if script == post and conns == 32 and not token_arg and base == app:
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
        med_b = {}
        for name, rs in results_b.items():
            med_b[name] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
            med_b[name]["non2xx"] = sum(r["non2xx"] for r in rs)
        lines = []
        lines.append(f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                     f"Linux {platform.release()}; {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC")
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        lines.append(f"CPU: {model}. wrk on the same box; {SECONDS} s per run, median of {ROUNDS} "
                     f"interleaved rounds; app and ceiling threads {THREADS}; nginx keeps {keepalive} "
                     f"idle FastCGI connections per worker for both. Cases without a note: AUTH=off "
                     f"AUDIT=off (the seed's local mode); 'auth + audit on': AUTH=on with a bearer key "
                     f"on every request, every access audited durably; 'defaults': `make run`'s defaults "
                     f"(AUTH, AUDIT and AUDIT_READS unset: AUTH off on loopback, every access "
                     f"audited as that build does by default). Command: `make bench`.")
        lines.append("")
        lines.append(f"Probe: {PROBE} (the filesystem of the databases), {PROBE_SECONDS:g} s or "
                     f"{PROBE_APPENDS:,} appends per round, whichever first, interleaved with the other "
                     f"cases' rounds; its req/s is appends/s, p50 and p99 the time of one append + "
                     f"fdatasync. A durable POST on one connection should cost one fsync plus one "
                     f"small request.")
        lines.append(f"PUT rows: corrections of existing tests (bench/put.lua), each request with its "
                     f"own If-Match; before each run {PUT_PER_THREAD} tests per wrk thread are stored "
                     f"(not timed) and each thread corrects them in turn, so every answer should be a "
                     f"200 (a 412 counts as non-2xx). Change-feed rows: GET /changes of the 1,000-test "
                     f"clinic without since (its first page, as a consumer's first sync reads it), "
                     f"wait=0.")
        (a_body, a_head, a_wire), (c_body, c_head, c_wire) = large_bytes["app"], large_bytes["ceiling"]
        lines.append(f"The 1,000-test listing (curl): {a_body:,} body bytes and {a_head} of headers from "
                     f"the app, {c_body:,} and {c_head} from the 1,000-test-size ceiling; with the chunked "
                     f"framing {a_wire:,} and {c_wire:,} (nginx forwards the app's stream in several "
                     f"chunks, the responder's single write in one).")
        if before:
            lines.append(f"Before: {before[0]} ({before[1][:12]}) built RelWithDebInfo, run with its own "
                         f"scripts/run.sh and nginx.conf on the same settings; each SQLite case runs "
                         f"against both builds back to back in every round (the order alternating), so "
                         f"'before' and req/s are medians of the same rounds; after/before is of req/s.")
        else:
            lines.append(f"Before: not measured ({before_why}).")
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
        if pg_more:
            lines.append(f"'sync standby' rows: one app process on another private primary of the same "
                         f"settings with a synchronous standby on the same machine (scripts/pg-test-server.sh "
                         f"sync-start: pg_basebackup -R, unix sockets, synchronous_standby_names naming it), "
                         f"DATABASE_SYNCHRONOUS_COMMIT on (a 201 waits for the standby's flush) or "
                         f"remote_apply (for its replay). 'PgBouncer' rows: one app process through "
                         f"PgBouncer (pooler-start: transaction mode, 5 server connections) to the plain "
                         f"server, DATABASE_POOLER=transaction. Their ratio column is to the plain server's "
                         f"1-node row.")
        lines.append("")
        b_head = ((" before req/s | before p50 ms | before p99 ms | before app CPU µs/req | after/before |",
                   "---:|---:|---:|---:|---:|") if before else ("", ""))
        lines.append("| case | req/s | p50 ms | p99 ms | non-2xx | ratio to ceiling | app CPU µs/req user+sys | app RSS MB |" + b_head[0])
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|" + b_head[1])
        for name, _, _, _, ceiling, *_ in cases:
            m = med[name]
            digits = 3 if name == PROBE else 2
            ratio = (f"{m['rps'] / med[ceiling]['rps']:.2f} × {ceiling}" if ceiling and med[ceiling]['rps'] else "—")
            if cpu[name]:
                u = statistics.median(x[0] for x in cpu[name])
                k = statistics.median(x[1] for x in cpu[name])
                cpu_text, rss_text = f"{u:.0f} + {k:.0f}", f"{rss[name] / 1024:.1f}"
            else:
                cpu_text = rss_text = "—"
            b_text = ""
            if before and name in med_b:
                b = med_b[name]
                errs = f" ({b['non2xx']} non-2xx)" if b["non2xx"] else ""
                b_cpu = (f"{statistics.median(x[0] for x in cpu_b[name]):.0f} + "
                         f"{statistics.median(x[1] for x in cpu_b[name]):.0f}" if cpu_b.get(name) else "—")
                b_text = (f" {b['rps']:,.0f}{errs} | "
                          f"{b['p50']:.2f} | {b['p99']:.2f} | {b_cpu} | "
                          f"{m['rps'] / b['rps'] if b['rps'] else float('nan'):.2f} |")
            elif before:
                b_text = " — | — | — | — | — |"
            lines.append(f"| {name} | {m['rps']:,.0f} | {m['p50']:.{digits}f} | {m['p99']:.{digits}f} | "
                         f"{m['non2xx']} of {m['total']:,} | {ratio} | {cpu_text} | {rss_text} |{b_text}")
        if before:
            # A listing's cost follows its bytes: each build's 1,000-test listing set against
            # the FastCGI ceiling of its own size.
            lines.append("")
            lines.append(f"The 1,000-test listings against the FastCGI ceiling of their own size ("
                         f"this build {listing_1000:,} body bytes, the before build "
                         f"{listing_1000_before:,}):")
            lines.append("")
            lines.append("| case | req/s ÷ its ceiling | before req/s ÷ its ceiling | after/before of those |")
            lines.append("|---|---:|---:|---:|")
            for name, _, conns, _, ceiling, *_ in cases:
                if "clinic of 1,000" not in name or name not in med_b or not ceiling:
                    continue
                own = med[name]["rps"] / med[ceiling]["rps"]
                b_ceiling = CEILING_BEFORE_32 if conns > 1 else CEILING_BEFORE_1
                b_own = med_b[name]["rps"] / med[b_ceiling]["rps"]
                lines.append(f"| {name} | {own:.2f} | {b_own:.2f} | {own / b_own:.2f} |")
        # The goals, from the medians of this run (before: the before build's rows of the same
        # rounds beside the same probe and ceilings).
        lines.append("")
        lines.append("| goal | measured | bound | met | how | before |" if before else "| goal | measured | bound | met | how |")
        lines.append("|---|---:|---:|---|---|---:|" if before else "|---|---:|---:|---|---|")
        # (The before build has no PUT and no change feed: those goals have no before value.)
        before_goals = goals({**{k: v for k, v in med.items() if k not in NEW_ROUTES}, **med_b}) if before else []
        for i, (goal, value, bound, sense, how) in enumerate(goals(med)):
            met = "—" if value is None else ("met" if (value <= bound if sense == "≤" else value >= bound) else "not met")
            row = (f"| {goal} | {'—' if value is None else f'{value:.2f} ×'} | {sense} {bound:g} × | {met} | {how} |")
            if before:
                bv = before_goals[i][1] if i < len(before_goals) else None
                row += f" {'—' if bv is None else f'{bv:.2f} ×'} |"
            lines.append(row)
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
        # A run of some cases (BENCH_ONLY) keeps the last full run's file.
        write_results("latest-only.md" if ONLY else "latest.md",
                      "make bench: latest results" + (" (BENCH_ONLY)" if ONLY else ""),
                      "\n".join(lines))
    finally:
        for pg in pg_servers:
            pg.stop()
            shutil.rmtree(pg.data_dir, ignore_errors=True)
        if pg_started:  # the server and its pooler
            subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "stop", PG_DIR])
        if pg_sync_started:  # the primary and its standby
            subprocess.run([os.path.join(ROOT, "scripts", "pg-test-server.sh"), "stop", PG_SYNC_DIR])
        for s in sqlite_servers:
            s.stop()
            if s.data_dir != data_dir and not os.environ.get("KEEP_DATA"):
                shutil.rmtree(s.data_dir, ignore_errors=True)
        for p in procs:  # fcgi_null: libfcgi's SIGTERM handler only stops new accepts
            p.send_signal(signal.SIGQUIT if "nginx" in str(p.args[0]) else signal.SIGKILL)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not os.environ.get("KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
