#!/usr/bin/env python3
"""scale.py: the scale case of `make bench`. Does the cost of a request grow with the data?

One service as deployed (AUTH=on, every access audited), on SQLite, measured on an empty
database and again after it is grown to each size of BENCH_SCALE_SIZES (default 1,000,000 and
10,000,000 tests in 5,000 clinics; BENCH_SCALE_SIZES=0 skips the case). The rows are generated
by SQL inside SQLite with the service stopped (as the app writes them: same row format, seq in
insertion order, clinics interleaved, test_ids in random order), then the service is started
again and its start-up timed. At each size: durable POSTs spread over the 5,000 clinics with
random test_ids (bench/post-spread.lua), the 10-test clinic's listing and one test by id, 32
connections, median of BENCH_ROUNDS interleaved rounds; the commits' mean duration and batch
from the app's txn log lines; the app's read system calls per POST (pages SQLite had to read
back: the page cache's misses) and RSS. Writes bench/results/scale.md. Reports only.

The OS page cache decides much of a POST's cost at 10M tests: each POST lands on a random leaf
of the test_id and patient indexes, and a leaf the kernel has dropped is a disk read inside
the writer's transaction. So at each size the database file is first dropped from the OS
cache (posix_fadvise DONTNEED) for one POST run ("cold"), then read through once ("warm")
before the rounds, and the share of the file still cached after them is reported, with the
kernel's own reclaim policy (DAMON) when it has one."""

import datetime
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (wrk, cpu_ticks, rss_kb, ...)
from bench import ROOT, BUILD, THREADS, ROUNDS, log  # noqa: E402
from harness import Server  # noqa: E402

SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "1000000,10000000").split(",") if s.strip()]
# BENCH_SCALE_BUILDS=dirA,dirB: several builds of the app measured side by side on the same data
# (each started in turn on it at each size); default the one build of `make bench`.
BUILDS = [b for b in os.environ.get("BENCH_SCALE_BUILDS", BUILD).split(",") if b.strip()]
CLINICS = 5000
CHUNK = 1_000_000  # rows per generating transaction


def app_io(pid):
    """(read system calls, write system calls, bytes written) of a process, from /proc/PID/io."""
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["syscr"]), int(fields["syscw"]), int(fields["wchar"])


def resident_share(path):
    """The share of path's pages in the OS page cache (fincore, Debian's util-linux-extra), or
    None."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                             capture_output=True, text=True, timeout=60).stdout.split()
        return int(out[0]) / max(1, os.path.getsize(path))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def drop_from_cache(path):
    """Drops path's pages from the OS page cache: written back first (fsync), since the kernel
    drops only clean pages, and grow() writes with synchronous=OFF."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_through(path):
    """Reads path once (into the OS page cache); seconds taken."""
    t = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.monotonic() - t


def mem_total_gb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def kernel_reclaim():
    """The kernel's proactive reclaim of idle pages (DAMON schemes), as a phrase, or ''."""
    root = "/sys/kernel/mm/damon/admin/kdamonds"
    found = []
    try:
        with open("/sys/module/damon_reclaim/parameters/enabled") as f:
            if f.read().strip() in ("Y", "1"):
                found.append("DAMON_RECLAIM module enabled")
    except OSError:
        pass
    try:
        for k in sorted(os.listdir(root)):
            if not k.isdigit() or open(f"{root}/{k}/state").read().strip() != "on":
                continue
            ctxs = f"{root}/{k}/contexts"
            for c in sorted(x for x in os.listdir(ctxs) if x.isdigit()):
                aggr_us = int(open(f"{ctxs}/{c}/monitoring_attrs/intervals/aggr_us").read())
                schemes = f"{ctxs}/{c}/schemes"
                for sc in sorted(x for x in os.listdir(schemes) if x.isdigit()):
                    action = open(f"{schemes}/{sc}/action").read().strip()
                    age = int(open(f"{schemes}/{sc}/access_pattern/age/min").read())
                    found.append(f"DAMON {action} of pages idle for {age * aggr_us / 1e6:.0f} s")
    except PermissionError:
        found.append("DAMON settings not readable (run as root to see them)")
    except (OSError, ValueError):
        pass
    return "; ".join(found)


def grow(db, lo, hi):
    """Appends tests number lo..hi-1 (the service is stopped). Each is a row as the app writes
    it: seq = rowid = the next number, `doc` the record's JSON in the API's key order. Clinics
    interleave (clinic i % 5,000); test_ids are a bijective scramble of i in front of i, so they
    are unique and land all over the test_id index; patients scatter within a clinic."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    # One writer, no readers: no WAL while generating (the service sets WAL again on start).
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-2000000")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    base = conn.execute("SELECT max(coalesce((SELECT max(rowid) FROM tests), 0),"
                        " coalesce((SELECT value FROM counters WHERE name = 'last_seq'), 0))").fetchone()[0]
    for start in range(lo, hi, CHUNK):
        end = min(hi, start + CHUNK)
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE g(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?2),"
            " r AS (SELECT i, printf('%08x-%d', (i * 2654435761) % 4294967296, i) AS tid,"
            "        'patient-' || ((i * 40503) % 100003) AS pid, 'scale-' || (i % ?4) AS cid,"
            "        CASE i % 3 WHEN 0 THEN 'blood' WHEN 1 THEN 'urine' ELSE 'xray' END AS tt,"
            "        'result value ' || i AS res FROM g)"
            " INSERT INTO tests (rowid, seq, test_id, patient_id, clinic_id, test_type, result,"
            "                    created_at, doc)"
            " SELECT ?3 + 1 + i - ?1, ?3 + 1 + i - ?1, tid, pid, cid, tt, res, ?5,"
            "        json_object('test_id', tid, 'patient_id', pid, 'clinic_id', cid,"
            "                    'test_type', tt, 'result', res, 'created_at', ?5) FROM r",
            (start, end, base + start - lo, CLINICS, now))
        conn.execute("COMMIT")
        log(f"  {end:,} of {hi:,} tests")
    conn.execute("UPDATE counters SET value = (SELECT max(rowid) FROM tests) WHERE name = 'last_seq'")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def commits(app_log, offset):
    """Mean duration (ms) and mean size of the write transactions logged since offset."""
    with open(app_log, "rb") as f:
        f.seek(offset)
        txns = [json.loads(l) for l in f.read().decode().splitlines()
                if l.startswith("{") and '"event":"txn"' in l]
    if not txns:
        return 0.0, 0.0
    return (statistics.mean(t.get("duration_ms", 0) for t in txns),
            statistics.mean(t.get("count", 0) for t in txns))


def start_timed(server):
    """Starts the service; seconds from run.sh's launch to the first 200 from /healthz."""
    t = time.monotonic()
    server.start(wait=False)
    server.wait_ready(timeout=900)
    return time.monotonic() - t


def measure(server, token, target, label):
    """The three cases at one size, ROUNDS interleaved rounds; medians and the POSTs' extras."""
    base = f"http://127.0.0.1:{server.port}"
    post = os.path.join(ROOT, "bench", "post-spread.lua")
    pid = server.pid_of("app")
    app_log = server.log_path("app.log")
    cases = [("POST", base + "/tests", post), ("GET10", base + "/tests?clinic_id=bench-10", None),
             ("GET1", base + "/tests/bench-10-3", None)]
    db = os.path.join(server.data_dir, "testdata.db")
    # Cold: one POST run after the database file was dropped from the OS cache; a POST run
    # first, so that the cold one is not also the first after the start.
    pre = bench.wrk(base + "/tests", 32, post, args=(f"s{target}{label}pre", token), token=token)
    drop_from_cache(db)
    dropped_to = resident_share(db)
    cold = bench.wrk(base + "/tests", 32, post, args=(f"s{target}{label}cold", token), token=token)
    log(f"{target:,} generated, {label}, file out of the OS cache "
        f"({'?' if dropped_to is None else f'{dropped_to * 100:.0f}%'} of it left), POST: "
        f"{cold['rps']:.0f} req/s p99 {cold['p99']:.2f} ms non-2xx {cold['non2xx']}")
    # Warm: the whole file read once, then the rounds.
    log(f"{target:,} generated, {label}, file read through in {read_through(db):.1f} s")
    res = {c[0]: [] for c in cases}
    extra = {"commit_ms": [], "batch": [], "reads_per_post": [], "writes_per_post": [], "kb_per_post": [],
             "cpu": []}
    for rnd in range(ROUNDS):
        for name, url, script in cases:
            offset = os.path.getsize(app_log)
            io0, cpu0 = app_io(pid), bench.cpu_ticks(pid)
            r = bench.wrk(url, 32, script, args=(f"s{target}{label}r{rnd}", token) if script else (),
                          token=token)
            io1, cpu1 = app_io(pid), bench.cpu_ticks(pid)
            res[name].append(r)
            if name == "POST":
                ms, batch = commits(app_log, offset)
                extra["commit_ms"].append(ms)
                extra["batch"].append(batch)
                # less the one read of each request's FastCGI records
                n = max(1, r["total"])
                extra["reads_per_post"].append((io1[0] - io0[0]) / n - 1)
                # less the answer's write and the request's log line
                extra["writes_per_post"].append((io1[1] - io0[1]) / n - 2)
                extra["kb_per_post"].append((io1[2] - io0[2]) / n / 1024)
                extra["cpu"].append(sum(bench.cpu_us_per_request(cpu0, cpu1, r["total"])))
            log(f"{target:,} generated, {label}, round {rnd + 1}/{ROUNDS} {name}: {r['rps']:.0f} req/s "
                f"p99 {r['p99']:.2f} ms non-2xx {r['non2xx']}")
    med = {n: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p99")} for n, rs in res.items()}
    return {"med": med, "rss_mb": bench.rss_kb(pid, "VmRSS") / 1024, "cold": cold,
            "resident_after": resident_share(db),
            "non2xx": pre["non2xx"] + cold["non2xx"] + sum(x["non2xx"] for rs in res.values() for x in rs),
            "total": pre["total"] + cold["total"] + sum(x["total"] for rs in res.values() for x in rs),
            **{k: statistics.median(v) for k, v in extra.items()}}


def main():
    if not SIZES or SIZES == [0]:
        log("scale case skipped (BENCH_SCALE_SIZES=0)")
        return
    data_dir = tempfile.mkdtemp(prefix="tdapi-bench-scale-")
    db = os.path.join(data_dir, "testdata.db")
    labels = [os.path.basename(os.path.normpath(b)) for b in BUILDS]
    servers = [Server(data_dir=data_dir, APP_BIN=os.path.join(b, "testdata-api"), THREADS=THREADS,
                      AUTH="on") for b in BUILDS]
    rows = []
    try:
        start_timed(servers[0])
        token = bench.create_key(os.path.join(BUILDS[0], "testdata-api"), db)
        bench.seed_over_http(servers[0], (("bench-10", 10),), token)
        servers[0].stop()
        generated = 0
        for target in [0] + SIZES:
            gen_secs = 0.0
            if target > generated:
                log(f"growing the database to {target:,} generated tests...")
                t = time.monotonic()
                grow(db, generated, target)
                gen_secs = time.monotonic() - t
                generated = target
            for server, label in zip(servers, labels):
                startup = start_timed(server)
                row = measure(server, token, target, label)
                # A start after a crash (everything SIGKILLed): no clean-stop marker, so the app
                # runs PRAGMA quick_check over the whole file first.
                server.kill_all()
                row["startup_crash"] = start_timed(server)
                server.stop()
                ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                tests = ro.execute("SELECT count(*) FROM tests").fetchone()[0]
                ro.close()
                row.update(target=target, label=label, tests=tests, gen_secs=gen_secs,
                           startup=startup, db_gb=os.path.getsize(db) / 1e9)
                rows.append(row)

        empty = {r["label"]: r["med"] for r in rows if r["target"] == 0}
        lines = [f"Machine: {os.cpu_count()} cores, Linux {platform.release()}; "
                 f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. SQLite, AUTH=on (a bearer key on every "
                 f"request, every access audited), {THREADS} threads, wrk 32 connections, {bench.SECONDS} s "
                 f"per run, median of {ROUNDS} interleaved rounds. Tests generated by SQL in {CLINICS:,} "
                 f"clinics; POSTs spread over those clinics with random test_ids (bench/post-spread.lua). "
                 f"Memory {mem_total_gb():.0f} GB; the kernel's "
                 f"reclaim of idle pages: {kernel_reclaim() or 'none found'}. "
                 f"Command: `make bench` (bench/scale.py).", "",
                 "| tests | build | generated in s | start-up s, after a crash | DB GB | POST/s (× empty) "
                 "| POST p99 ms | commit ms, mean batch | app reads, writes, KB written per POST "
                 "| app CPU µs per POST | GET10/s (× empty) | GET1/s (× empty) | app RSS MB "
                 "| POST/s cold (× warm) | file in OS cache after | non-2xx |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            m, e = r["med"], empty[r["label"]]
            cached = "n/a" if r["resident_after"] is None else f"{r['resident_after'] * 100:.0f}%"
            lines.append(
                f"| {r['tests']:,} | {r['label']} | {r['gen_secs']:.0f} | {r['startup']:.2f}, {r['startup_crash']:.2f} | "
                f"{r['db_gb']:.2f} | {m['POST']['rps']:,.0f} ({m['POST']['rps'] / e['POST']['rps']:.2f}) | "
                f"{m['POST']['p99']:.2f} | {r['commit_ms']:.2f}, {r['batch']:.1f} | "
                f"{r['reads_per_post']:.1f}, {r['writes_per_post']:.1f}, {r['kb_per_post']:.0f} | {r['cpu']:.0f} | "
                f"{m['GET10']['rps']:,.0f} ({m['GET10']['rps'] / e['GET10']['rps']:.2f}) | "
                f"{m['GET1']['rps']:,.0f} ({m['GET1']['rps'] / e['GET1']['rps']:.2f}) | {r['rss_mb']:.1f} | "
                f"{r['cold']['rps']:,.0f} ({r['cold']['rps'] / m['POST']['rps']:.2f}) | {cached} | "
                f"{r['non2xx']} of {r['total']:,} |")
        lines += ["", "tests: rows after that size's runs (the generated ones, the 10-test clinic, and "
                  "every POST so far). app reads, writes, KB written per POST: the app's read and "
                  "write system calls and bytes written (/proc/PID/io syscr, syscw, wchar; all its "
                  "threads, the checkpoint thread's too) over the POST runs per request; the read "
                  "and write counts less one read for the request and two writes for its answer and "
                  "log line (assumed, not measured), the KB all bytes written: what is left is pages "
                  "of the database and the WAL read back, and WAL frames, checkpoint pages and txn "
                  "log lines written. The rates, latencies and per-POST columns are measured after "
                  "the database file was read through once (warm: in the OS cache, unless the kernel "
                  "reclaimed it since; 'file in OS cache after' is the share still cached after the "
                  "rounds, fincore). POST/s cold: one POST run right after the file was written back "
                  "and dropped from the OS cache (fsync, posix_fadvise DONTNEED; a POST run before "
                  "it, so that it is not the first after the start), × the warm median at that "
                  "size: the random index leaves each POST lands on are disk reads until they are "
                  "cached again. It is a short run while the cache refills, not a steady state. "
                  "non-2xx counts every run, the cold one and the one before it too. start-up: run.sh's launch to the "
                  "first 200 from /healthz, with as much of the file in the OS cache as generating "
                  "it left there; after a crash (everything SIGKILLed), the app checks "
                  "the whole file first (PRAGMA quick_check). With several builds, each later one "
                  "also has the POSTs of those before it. "
                  "GET10: the listing of a 10-test clinic; GET1: one test by id."]
        bench.write_results("scale.md", "make bench: scale (bench/scale.py)", "\n".join(lines))
    finally:
        for server in servers:
            server.stop()
        if not os.environ.get("KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
