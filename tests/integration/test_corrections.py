#!/usr/bin/env python3
"""Corrections with full history, through real nginx and the real binary: PUT /tests/{id} with
If-Match (every status code it answers), ETag and If-None-Match on GET, GET /tests/{id}/history,
the status and date-range filters of the listings, scopes, the audit trail, racing corrections,
a crash after a PUT's 200, and a full disk under a PUT. On SQLite and on PostgreSQL."""

import os
import signal
import sys
import threading
import time
import unittest
from datetime import datetime, timedelta

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, PG_HOST, SQLITE_ONLY, Server, database_target, record, wait_for  # noqa: E402

import subprocess  # noqa: E402
import json  # noqa: E402


def correction(test_id, clinic="c1", patient="p1", result="fixed", status="amended",
               reason="transcription error", test_type="blood"):
    body = record(test_id, clinic=clinic, patient=patient, test_type=test_type, result=result)
    body["status"] = status
    body["reason"] = reason
    return body


def put(server, test_id, body, version=None, headers=None, **kw):
    h = dict(headers or {})
    if version is not None:
        h["If-Match"] = f'W/"{version}"'
    return server.request("PUT", "/tests/" + test_id, body, headers=h, **kw)


def with_offset(utc_ms):
    """The same instant written at +02:00 (percent-encoded for a query)."""
    d = datetime.strptime(utc_ms, "%Y-%m-%dT%H:%M:%S.%fZ") + timedelta(hours=2)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}%2B02:00"


def field_errors(reply):
    return {e["field"] for e in reply.json().get("errors", [])}


class Corrections(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.s.__exit__(None, None, None)

    def create(self, test_id, clinic="c1", **extra):
        body = record(test_id, clinic=clinic)
        body.update(extra)
        r = self.s.request("POST", "/tests", body)
        self.assertEqual(r.status, 201, r)
        return self.s.request("GET", "/tests/" + test_id).json()["test"]

    def test_a_created_record_carries_status_version_and_an_etag(self):
        t = self.create("et-1")
        self.assertEqual(list(t), ["test_id", "patient_id", "clinic_id", "test_type", "result",
                                   "created_at", "status", "version", "updated_at"])
        self.assertEqual((t["status"], t["version"], t["updated_at"]), ("final", 1, t["created_at"]))
        r = self.s.request("GET", "/tests/et-1")
        self.assertEqual(r.headers.get("etag"), 'W/"1"')
        for inm in ('W/"1"', '"1"', "*", 'W/"7", W/"1"'):
            r = self.s.request("GET", "/tests/et-1", headers={"If-None-Match": inm})
            self.assertEqual((r.status, r.body, r.headers.get("etag")), (304, b"", 'W/"1"'), inm)
        for inm in ('W/"2"', 'W/"x"'):
            r = self.s.request("GET", "/tests/et-1", headers={"If-None-Match": inm})
            self.assertEqual(r.status, 200, inm)
            self.assertEqual(r.json()["test"], t)
        # An unknown id stays a 404, whatever If-None-Match says.
        self.assertEqual(self.s.request("GET", "/tests/et-none", headers={"If-None-Match": "*"}).status, 404)

    def test_a_create_may_be_preliminary_and_nothing_else(self):
        self.assertEqual(self.create("pre-1", status="preliminary")["status"], "preliminary")
        self.assertEqual(self.create("pre-2", status="final")["status"], "final")
        for bad in ("amended", "entered-in-error", "FINAL", 1):
            body = record("pre-bad")
            body["status"] = bad
            r = self.s.request("POST", "/tests", body)
            self.assertEqual(r.status, 400, r)
            self.assertEqual(field_errors(r), {"status"})
        self.assertEqual(self.s.request("GET", "/tests/pre-bad").status, 404)

    def test_a_correction_makes_the_next_version_and_keeps_the_first(self):
        v1 = self.create("fix-1")
        r = put(self.s, "fix-1", correction("fix-1", result="7.2 mmol/L"), 1)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("etag"), 'W/"2"')
        v2 = r.json()["test"]
        self.assertEqual(r.json()["status"], "success")
        self.assertEqual((v2["version"], v2["status"], v2["result"]), (2, "amended", "7.2 mmol/L"))
        self.assertEqual(v2["created_at"], v1["created_at"])
        self.assertGreaterEqual(v2["updated_at"], v1["created_at"])
        self.assertEqual(self.s.request("GET", "/tests/fix-1").json()["test"], v2)
        self.assertEqual(self.s.request("GET", "/tests/fix-1").headers.get("etag"), 'W/"2"')
        h = self.s.request("GET", "/tests/fix-1/history")
        self.assertEqual(h.status, 200, h)
        h = h.json()
        self.assertEqual((h["status"], h["test_id"]), ("success", "fix-1"))
        self.assertNotIn("next_cursor", h)
        self.assertEqual([v["version"] for v in h["versions"]], [2, 1])
        newest, first = h["versions"]
        self.assertEqual(list(newest), ["version", "status", "test_id", "patient_id", "clinic_id",
                                        "test_type", "result", "changed_at", "changed_by", "reason"])
        self.assertEqual((newest["status"], newest["result"], newest["reason"], newest["changed_by"]),
                         ("amended", "7.2 mmol/L", "transcription error", "anonymous"))
        self.assertEqual(newest["changed_at"], v2["updated_at"])
        self.assertEqual((first["status"], first["result"], first["reason"], first["changed_at"]),
                         ("final", "ok", None, v1["created_at"]))
        # Every correction status, then a retraction, which is final.
        for version, status in ((2, "corrected"), (3, "final"), (4, "entered-in-error")):
            r = put(self.s, "fix-1", correction("fix-1", status=status, result=f"r{version}"), version)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["test"]["status"], status)
        r = put(self.s, "fix-1", correction("fix-1"), 5)
        self.assertEqual(r.status, 400, r)
        self.assertEqual(field_errors(r), {"status"})
        self.assertIn("entered-in-error", r.json()["errors"][0]["message"])
        self.assertEqual(self.s.request("GET", "/tests/fix-1").json()["test"]["version"], 5)
        # A retracted record stays in the listing, with its status.
        listed = self.s.request("GET", "/tests?clinic_id=c1").json()["tests"]
        self.assertEqual([t["status"] for t in listed if t["test_id"] == "fix-1"], ["entered-in-error"])

    def test_every_refusal_of_a_put(self):
        self.create("ref-1")
        self.create("ref-other", clinic="c2")
        body = correction("ref-1")
        r = put(self.s, "ref-1", body)
        self.assertEqual(r.status, 428, r)
        self.assertEqual(r.json(), {"status": "error", "message": 'If-Match is required: send the '
                                    'version you are correcting, as W/"<version>" from GET /tests/{id}'})
        for bad in ("1", "W/1", 'W/"abc"', 'W/"0"', 'W/"1", W/"2"', "*"):
            r = put(self.s, "ref-1", body, headers={"If-Match": bad})
            self.assertEqual(r.status, 400, (bad, r))
        self.assertEqual(put(self.s, "ref-1", body, headers={"If-Match": '"1"'}).status, 200)
        r = put(self.s, "ref-1", body, 1)
        self.assertEqual(r.status, 412, r)
        self.assertEqual(r.json()["current_version"], 2)
        self.assertEqual(r.json()["status"], "error")
        self.assertEqual(r.headers.get("etag"), 'W/"2"')
        r = put(self.s, "ref-none", correction("ref-none"), 1)
        self.assertEqual((r.status, r.json()["message"]), (404, "test not found"))
        r = put(self.s, "ref-1", correction("ref-2"), 2)
        self.assertEqual((r.status, field_errors(r)), (400, {"test_id"}))
        r = put(self.s, "ref-1", correction("ref-1", patient="p9"), 2)
        self.assertEqual((r.status, field_errors(r)), (400, {"patient_id"}))
        self.assertIn("entered-in-error", r.json()["errors"][0]["message"])
        # Another clinic's test: the clinic cannot change (this key may read every clinic).
        r = put(self.s, "ref-other", correction("ref-other", clinic="c1"), 1)
        self.assertEqual((r.status, field_errors(r)), (400, {"clinic_id"}))
        r = put(self.s, "ref-1", correction("ref-1", status="preliminary"), 2)
        self.assertEqual((r.status, field_errors(r)), (400, {"status"}))
        no_reason = correction("ref-1")
        del no_reason["reason"]
        self.assertEqual(field_errors(put(self.s, "ref-1", no_reason, 2)), {"reason"})
        self.assertEqual(field_errors(put(self.s, "ref-1", correction("ref-1", reason="x" * 501), 2)),
                         {"reason"})
        extra = dict(correction("ref-1"), version=3)
        self.assertEqual(field_errors(put(self.s, "ref-1", extra, 2)), {"version"})
        self.assertEqual(put(self.s, "ref-1", "x", 2, headers={"Content-Type": "text/plain"}).status, 415)
        self.assertEqual(put(self.s, "ref-1", correction("ref-1", result="x" * 70000), 2).status, 413)
        # Nothing of those was written.
        t = self.s.request("GET", "/tests/ref-1").json()["test"]
        self.assertEqual((t["version"], t["patient_id"]), (2, "p1"))
        self.assertEqual([v["version"] for v in self.s.request("GET", "/tests/ref-1/history").json()["versions"]], [2, 1])

    def test_history_pages_with_cursors_bound_to_the_test(self):
        self.create("hist-1")
        self.create("hist-2")
        for v in range(1, 5):
            self.assertEqual(put(self.s, "hist-1", correction("hist-1", result=f"v{v + 1}"), v).status, 200)
        seen, cursor, pages = [], None, 0
        while True:
            path = "/tests/hist-1/history?limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = self.s.request("GET", path).json()
            seen += [v["version"] for v in page["versions"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            self.assertLess(pages, 10)
        self.assertEqual(seen, [5, 4, 3, 2, 1])
        first = self.s.request("GET", "/tests/hist-1/history?limit=2").json()["next_cursor"]
        self.assertEqual(self.s.request("GET", "/tests/hist-2/history?cursor=" + first).status, 400)
        self.assertEqual(self.s.request("GET", "/tests/hist-1/history?cursor=abc").status, 400)
        self.assertEqual(self.s.request("GET", "/tests/hist-1/history?limit=0").status, 400)
        self.assertEqual(self.s.request("GET", "/tests/hist-1/history?page=1").status, 400)
        self.assertEqual(self.s.request("GET", "/tests/hist-none/history").status, 404)

    def test_status_and_date_range_filters(self):
        clinic = "rng"
        for i in range(4):
            self.create(f"rng-{i}", clinic=clinic, **({"status": "preliminary"} if i == 3 else {}))
            time.sleep(0.01)  # distinct created_at milliseconds
        tests = self.s.request("GET", f"/tests?clinic_id={clinic}").json()["tests"]
        created = [t["created_at"] for t in tests]
        self.assertEqual(len(set(created)), 4)
        self.assertEqual(put(self.s, "rng-1", correction("rng-1", clinic=clinic), 1).status, 200)

        def ids(query, method="GET"):
            if method == "GET":
                r = self.s.request("GET", f"/tests?clinic_id={clinic}&" + query)
            else:
                r = self.s.request("POST", "/tests/search", dict(query, clinic_id=clinic))
            self.assertEqual(r.status, 200, (query, r))
            return [t["test_id"] for t in r.json()["tests"]]

        self.assertEqual(ids("status=amended"), ["rng-1"])
        self.assertEqual(ids("status=preliminary"), ["rng-3"])
        self.assertEqual(ids("status=final"), ["rng-0", "rng-2"])
        self.assertEqual(ids({"status": "final"}, "POST"), ["rng-0", "rng-2"])
        # from inclusive, to exclusive; an offset and a lower-case form mean the same instant.
        self.assertEqual(ids(f"created_from={created[1]}&created_to={created[3]}"), ["rng-1", "rng-2"])
        self.assertEqual(ids({"created_from": created[1], "created_to": created[3]}, "POST"), ["rng-1", "rng-2"])
        self.assertEqual(ids(f"created_from={with_offset(created[1])}&created_to={created[3].lower()}"),
                         ["rng-1", "rng-2"])
        # A fraction finer than a millisecond rounds up: from stays inclusive of what it says.
        self.assertEqual(ids(f"created_from={created[1][:-1]}0001Z"), ["rng-2", "rng-3"])
        self.assertEqual(ids(f"created_from={created[3]}&created_to={created[0]}"), [])
        updated = self.s.request("GET", "/tests/rng-1").json()["test"]["updated_at"]
        self.assertEqual(ids(f"updated_from={updated}"), ["rng-1"])
        self.assertEqual(ids(f"updated_to={updated}&status=final"), ["rng-0", "rng-2"])
        # Paging with filters: the cursor is bound to them.
        page = self.s.request("GET", f"/tests?clinic_id={clinic}&created_from={created[0]}&limit=1").json()
        self.assertEqual([t["test_id"] for t in page["tests"]], ["rng-0"])
        nxt = page["next_cursor"]
        r = self.s.request("GET", f"/tests?clinic_id={clinic}&created_from={created[0]}&limit=1&cursor={nxt}")
        self.assertEqual([t["test_id"] for t in r.json()["tests"]], ["rng-1"])
        r = self.s.request("GET", f"/tests?clinic_id={clinic}&created_from={created[1]}&limit=1&cursor={nxt}")
        self.assertEqual(r.status, 400, r)
        r = self.s.request("GET", f"/tests?clinic_id={clinic}&limit=1&cursor={nxt}")
        self.assertEqual(r.status, 400, r)
        for param, value in (("status", "deleted"), ("created_from", "2026-12-07"),
                             ("created_to", "yesterday"), ("updated_from", "2026-12-07T10:00:00"),
                             ("updated_to", "2026-02-30T10:00:00Z")):
            r = self.s.request("GET", f"/tests?clinic_id={clinic}&{param}={value}")
            self.assertEqual(r.status, 400, (param, r))
            self.assertIn(param, r.json()["message"])
            r = self.s.request("POST", "/tests/search", {"clinic_id": clinic, param: value})
            self.assertEqual(r.status, 400, (param, r))
        r = self.s.request("GET", f"/tests?clinic_id={clinic}&status=final&status=final")
        self.assertEqual(r.status, 400, r)

    def test_fifty_racing_puts_with_one_if_match_one_wins(self):
        self.create("race-1")
        statuses, lock = [], threading.Lock()
        barrier = threading.Barrier(50)

        def one(n):
            barrier.wait(timeout=30)
            r = put(self.s, "race-1", correction("race-1", result=f"racer {n}"), 1)
            with lock:
                statuses.append(r.status)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(sorted(statuses), [200] + [412] * 49)
        h = self.s.request("GET", "/tests/race-1/history").json()["versions"]
        self.assertEqual([v["version"] for v in h], [2, 1])

    def test_corrections_racing_a_batch_and_a_cursor_walk(self):
        clinic = "walk"
        batch = [record(f"walk-{i}", clinic=clinic, result="v1") for i in range(300)]
        self.assertEqual(self.s.request("POST", "/tests/batch", batch).status, 201)
        stop = threading.Event()
        fixed = {}

        def corrector():
            version = {}
            for n in range(2000):
                if stop.is_set():
                    return
                tid = f"walk-{(n * 37) % 300}"
                v = version.get(tid, 1)
                r = put(self.s, tid, correction(tid, clinic=clinic, result=f"v{v + 1}"), v)
                if r.status == 200:
                    version[tid] = v + 1
                    fixed[tid] = v + 1

        def batcher():
            for b in range(20):
                if stop.is_set():
                    return
                more = [record(f"walk-b{b}-{i}", clinic=clinic, result="v1") for i in range(50)]
                self.s.request("POST", "/tests/batch", more)

        workers = [threading.Thread(target=corrector), threading.Thread(target=batcher)]
        for w in workers:
            w.start()
        try:
            seen, cursor = [], None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                path = f"/tests?clinic_id={clinic}&limit=37" + (f"&cursor={cursor}" if cursor else "")
                page = self.s.request("GET", path).json()
                for t in page["tests"]:
                    # Whole: the document's version and result belong together.
                    self.assertEqual(t["result"], f"v{t['version']}", t)
                    seen.append(t["test_id"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        finally:
            stop.set()
            for w in workers:
                w.join(60)
        self.assertEqual(len(seen), len(set(seen)), "a row came twice")
        self.assertTrue(set(f"walk-{i}" for i in range(300)) <= set(seen), "a row was skipped")
        self.assertGreater(len(fixed), 0)

    def test_audit_entries_for_correct_and_history(self):
        self.create("aud-1", clinic="aud")
        self.assertEqual(put(self.s, "aud-1", correction("aud-1", clinic="aud", reason="wrong unit"), 1).status, 200)
        self.assertEqual(put(self.s, "aud-1", correction("aud-1", clinic="aud"), 1).status, 412)
        self.assertEqual(self.s.request("GET", "/tests/aud-1/history").status, 200)
        entries = self.s.request("GET", "/audit?clinic_id=aud").json()["entries"]
        corrects = [e for e in entries if e["action"] == "correct"]
        self.assertEqual([e["outcome"] for e in corrects], [200, 412], corrects)
        detail = corrects[0]["detail"]
        detail = json.loads(detail) if isinstance(detail, str) else detail
        self.assertEqual(detail, {"test_id": "aud-1", "from_version": 1, "to_version": 2,
                                  "status": "amended", "reason": "wrong unit"})
        hist = [e for e in entries if e["action"] == "history"]
        self.assertEqual(len(hist), 1, entries)
        detail = hist[0]["detail"]
        detail = json.loads(detail) if isinstance(detail, str) else detail
        self.assertEqual(detail, {"test_id": "aud-1", "count": 2})

    def test_metrics_count_corrections_by_status_and_refusals_by_reason(self):
        self.create("met-1")
        before = self.s.request("GET", "/metrics").body.decode()
        self.assertEqual(put(self.s, "met-1", correction("met-1", status="corrected"), 1).status, 200)
        self.assertEqual(put(self.s, "met-1", correction("met-1"), 1).status, 412)
        after = self.s.request("GET", "/metrics").body.decode()

        def value(text, line):
            for l in text.splitlines():
                if l.startswith(line + " "):
                    return float(l.split()[-1])
            return None

        for line in ('tdapi_corrections_total{status="corrected"}',
                     'tdapi_correction_refusals_total{reason="version_mismatch"}'):
            self.assertEqual(value(after, line) - value(before, line), 1, line)
        self.assertIn('route="PUT /tests/{test_id}"', after)


def admin(*args):
    p = subprocess.run([APP_BIN, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (args, p.stderr)
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


class KeyedServer:
    """A server with AUTH=on, keys of several scopes, and one test in each of c1 and c2."""

    @classmethod
    def setUpClass(cls):
        cls.s = Server(AUTH="on").start()
        try:
            db = database_target(cls.s)
            cls.keys = {}
            for name, scopes in {"w1": ["write:c1"], "r1": ["read:c1"], "rw1": ["read:c1", "write:c1"],
                                 "wall": ["write:*"], "rall": ["read:*"], "aud": ["audit"]}.items():
                args = ["keys", "create", "--db", db, "--name", name]
                for sc in scopes:
                    args += ["--scope", sc]
                cls.keys[name] = admin(*args)[0]
            for tid, clinic in (("sc-1", "c1"), ("sc-2", "c2")):
                assert cls.req("wall", "POST", "/tests", record(tid, clinic=clinic)).status == 201
        except BaseException:
            cls.s.__exit__(None, None, None)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.s.__exit__(None, None, None)

    @classmethod
    def req(cls, key, method, path, body=None, headers=None):
        h = dict(headers or {})
        h["Authorization"] = "Bearer " + cls.keys[key]["token"]
        return cls.s.request(method, path, body, headers=h)


class Scopes(KeyedServer, unittest.TestCase):
    def test_a_correction_needs_write_and_history_needs_read(self):
        fix = correction("sc-1")
        self.assertEqual(self.req("r1", "PUT", "/tests/sc-1", fix, {"If-Match": 'W/"1"'}).status, 403)
        self.assertEqual(self.s.request("PUT", "/tests/sc-1", fix, headers={"If-Match": 'W/"1"'}).status, 401)
        r = self.req("w1", "PUT", "/tests/sc-1", fix, {"If-Match": 'W/"1"'})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["test"]["version"], 2)
        h = self.req("r1", "GET", "/tests/sc-1/history")
        self.assertEqual(h.status, 200, h)
        self.assertEqual(h.json()["versions"][0]["changed_by"], self.keys["w1"]["key_id"])
        self.assertEqual(h.json()["versions"][1]["changed_by"], self.keys["wall"]["key_id"])
        self.assertEqual(self.req("w1", "GET", "/tests/sc-1/history").status, 404)  # no read scope
        self.assertEqual(self.req("r1", "GET", "/tests/sc-2/history").status, 404)  # another clinic
        # Another clinic's test: 404 for a key that may not see that clinic, 400 for one that may.
        other = correction("sc-2", clinic="c1")
        self.assertEqual(self.req("w1", "PUT", "/tests/sc-2", other, {"If-Match": 'W/"1"'}).status, 404)
        r = self.req("wall", "PUT", "/tests/sc-2", other, {"If-Match": 'W/"1"'})
        self.assertEqual((r.status, field_errors(r)), (400, {"clinic_id"}))
        self.assertEqual(self.req("w1", "PUT", "/tests/sc-2", correction("sc-2", clinic="c2"),
                                  {"If-Match": 'W/"1"'}).status, 403)
        entries = self.req("aud", "GET", "/audit?clinic_id=c1").json()["entries"]
        self.assertIn((self.keys["r1"]["key_id"], 403), [(e["key_id"], e["outcome"]) for e in entries
                                                         if e["action"] == "correct"])


class Durability(unittest.TestCase):
    def test_a_crash_after_a_puts_200_keeps_the_version(self):
        with Server() as s:
            self.assertEqual(s.request("POST", "/tests", record("dur-1")).status, 201)
            r = put(s, "dur-1", correction("dur-1", result="after the crash"), 1)
            self.assertEqual(r.status, 200, r)
            os.kill(s.pid_of("app"), signal.SIGKILL)  # the supervisor starts it again
            self.assertTrue(wait_for(lambda: s.request("GET", "/healthz").status == 200, 30))
            t = s.request("GET", "/tests/dur-1").json()["test"]
            self.assertEqual((t["version"], t["result"], t["status"]), (2, "after the crash", "amended"))
            self.assertEqual([v["version"] for v in s.request("GET", "/tests/dur-1/history").json()["versions"]],
                             [2, 1])

    @unittest.skipIf(PG_HOST, SQLITE_ONLY + "MAX_DB_PAGES caps the SQLite file's page count")
    def test_a_full_database_refuses_a_put_with_507_and_keeps_the_old_version(self):
        with Server(MAX_DB_PAGES=60) as s:
            self.assertEqual(s.request("POST", "/tests", record("full-1", clinic="full")).status, 201)
            for i in range(2000):
                r = s.request("POST", "/tests", record(f"full-f{i}", clinic="full", result="x" * 15000))
                if r.status != 201:
                    break
            self.assertEqual(r.status, 507, r)
            r = put(s, "full-1", correction("full-1", clinic="full", result="y" * 15000), 1)
            self.assertEqual(r.status, 507, r)
            t = s.request("GET", "/tests/full-1").json()["test"]
            self.assertEqual((t["version"], t["result"]), (1, "ok"))
            self.assertEqual(len(s.request("GET", "/tests/full-1/history").json()["versions"]), 1)


if __name__ == "__main__":
    unittest.main()
