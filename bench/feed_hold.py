#!/usr/bin/env python3
"""feed_hold.py: does a held long poll pin an app thread that a write needs? Starts the service
(scripts/run.sh, THREADS worker threads, default 4) on a temp data dir and a free port, then
measures POST /tests latency over one kept-alive connection, in interleaved rounds: with no long
poll held, and with HELD (default 200) GET /changes?wait=30 requests held open on a clinic that
never changes. Prints p50 and p99 per phase (medians over the rounds). Bounded: POSTS per round,
ROUNDS rounds, every request with a timeout. Reports only: nothing here asserts a timing.

    BUILD_DIR=build-rel python3 bench/feed_hold.py [THREADS=4 HELD=200 POSTS=400 ROUNDS=3]
"""

import http.client
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
os.environ.setdefault("APP_BIN", os.path.join(BUILD, "testdata-api"))
import harness  # noqa: E402
from harness import Server  # noqa: E402

THREADS = int(os.environ.get("THREADS", "4"))
HELD = int(os.environ.get("HELD", "200"))
POSTS = int(os.environ.get("POSTS", "400"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))


class Holders:
    """HELD threads, each keeping one long poll open (asking again when one ends) until stopped."""

    def __init__(self, server, n, since):
        self.server, self.since = server, since
        self.stop = threading.Event()
        self.answers = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self.server.request("GET", f"/changes?clinic_id=quiet&since={self.since}&wait=30",
                                    timeout=60)
                self.answers += 1
            except OSError:
                time.sleep(0.1)

    def close(self):
        self.stop.set()


def waiting(server):
    for line in server.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith("tdapi_feed_waiting "):
            return float(line.split()[1])
    return -1


def post_latencies(server, tag, n):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    out = []
    try:
        for i in range(n):
            body = json.dumps({"test_id": f"{tag}-{i}", "patient_id": "p1", "clinic_id": "busy",
                               "test_type": "blood", "result": "ok"})
            t0 = time.perf_counter()
            conn.request("POST", "/tests", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            out.append((time.perf_counter() - t0) * 1000)
            if r.status != 201:
                raise RuntimeError(f"POST answered {r.status}")
    finally:
        conn.close()
    return out


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    results = {"none held": [], f"{HELD} held": []}
    with Server(THREADS=THREADS) as s:
        since = json.loads(s.request("GET", "/changes?clinic_id=quiet").body)["next"]
        post_latencies(s, "warm", 100)
        for rnd in range(ROUNDS):
            for phase in results:
                holders = None
                if phase != "none held":
                    holders = Holders(s, HELD, since)
                    deadline = time.monotonic() + 30
                    while waiting(s) < HELD and time.monotonic() < deadline:
                        time.sleep(0.1)
                    held = waiting(s)
                try:
                    lat = post_latencies(s, f"r{rnd}-{phase[:4]}", POSTS)
                finally:
                    if holders:
                        if waiting(s) < HELD:
                            print(f"warning: only {waiting(s)} polls held at the end", file=sys.stderr)
                        holders.close()
                        # One change of the quiet clinic answers every held poll; the next
                        # phase starts from after it.
                        s.request("POST", "/tests", {"test_id": f"quiet-{rnd}", "patient_id": "p",
                                                     "clinic_id": "quiet", "test_type": "t",
                                                     "result": "r"})
                        deadline = time.monotonic() + 30
                        while waiting(s) > 0 and time.monotonic() < deadline:
                            time.sleep(0.1)
                        for t in holders.threads:
                            t.join(30)
                        since = json.loads(s.request("GET", f"/changes?clinic_id=quiet&since={since}")
                                           .body)["next"]
                results[phase].append((pct(lat, 0.5), pct(lat, 0.99)))
                print(f"round {rnd + 1} {phase:>10}: p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms"
                      + (f" ({held:.0f} polls held)" if holders else ""), flush=True)
    print(f"\nPOST /tests, 1 connection, THREADS={THREADS}, {POSTS} POSTs x {ROUNDS} rounds (medians):")
    for phase, rows in results.items():
        print(f"  {phase:>10}: p50 {statistics.median(r[0] for r in rows):.2f} ms, "
              f"p99 {statistics.median(r[1] for r in rows):.2f} ms")


if __name__ == "__main__":
    main()
