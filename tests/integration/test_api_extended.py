#!/usr/bin/env python3
"""test_api_extended.py: single reads, filters, cursor paging, atomic batches, health, metrics
and the OpenAPI document, through nginx in front of the real binary."""

import re
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import ROOT, Server, record  # noqa: E402


class ApiExtended(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def req(self, *a, **kw):
        return self.server.request(*a, **kw)

    def test_get_one_test_by_percent_encoded_id(self):
        rec = record("x/1 é", clinic="one")
        self.assertEqual(self.req("POST", "/tests", rec).status, 201)
        r = self.req("GET", "/tests/x%2F1%20%C3%A9")
        self.assertEqual(r.status, 200, r)
        test = r.json()["test"]
        created_at = test.pop("created_at")
        self.assertEqual(created_at[-1], "Z")
        self.assertEqual((test.pop("status"), test.pop("version"), test.pop("updated_at")),
                         ("final", 1, created_at))
        self.assertEqual(test, rec)
        r = self.req("GET", "/tests/unknown-id")
        self.assertEqual((r.status, r.json()), (404, {"status": "error", "message": "test not found"}))

    def test_filters_are_exact_and_combinable(self):
        rows = [("f1", "pa", "blood"), ("f2", "pb", "blood"), ("f3", "pa", "urine"), ("f4", "pa ", "blood")]
        for tid, patient, ttype in rows:
            self.assertEqual(self.req("POST", "/tests", record(tid, clinic="filt", patient=patient, test_type=ttype)).status, 201)

        def ids(q):
            r = self.req("GET", "/tests?clinic_id=filt" + q)
            self.assertEqual(r.status, 200, r)
            return [t["test_id"] for t in r.json()["tests"]]
        self.assertEqual(ids("&patient_id=pa"), ["f1", "f3"])
        self.assertEqual(ids("&test_type=blood"), ["f1", "f2", "f4"])
        self.assertEqual(ids("&patient_id=pa&test_type=blood"), ["f1"])
        self.assertEqual(ids("&patient_id=pa+"), ["f4"])
        self.assertEqual(ids("&patient_id=nobody"), [])

    def test_batch_all_or_nothing(self):
        good = [record(f"bt-{i}", clinic="batch") for i in range(1000)]
        r = self.req("POST", "/tests/batch", good)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["count"], 1000)
        listed = self.req("GET", "/tests?clinic_id=batch").json()
        self.assertEqual([t["test_id"] for t in listed["tests"]], [g["test_id"] for g in good])

        # one existing id and one repeated id: 409 naming both, nothing of the batch written
        bad = [record("bt-new-1", clinic="batch2"), record("bt-5", clinic="batch2"),
               record("bt-new-2", clinic="batch2"), record("bt-new-2", clinic="batch2")]
        r = self.req("POST", "/tests/batch", bad)
        self.assertEqual(r.status, 409, r)
        self.assertEqual(sorted(r.json()["test_ids"]), ["bt-5", "bt-new-2"])
        self.assertEqual(self.req("GET", "/tests?clinic_id=batch2").json()["count"], 0)
        self.assertEqual(self.req("GET", "/tests/bt-new-1").status, 404)

        # invalid items: 400 with every item's index and field errors, nothing written
        bad = [record("bt-v1", clinic="batch3"), {"test_id": "bt-v2"}, "nope", dict(record("bt-v3"), extra=1)]
        r = self.req("POST", "/tests/batch", bad)
        self.assertEqual(r.status, 400, r)
        errs = r.json()["errors"]
        self.assertEqual(sorted({e["index"] for e in errs}), [1, 2, 3])
        self.assertIn({"index": 3, "field": "extra", "message": "unknown field"}, errs)
        self.assertEqual(self.req("GET", "/tests?clinic_id=batch3").json()["count"], 0)

        for body, message in (([], "a batch holds 1 to 1000 records, not 0"),
                              ([record(f"o{i}") for i in range(1001)], "a batch holds 1 to 1000 records, not 1001"),
                              (record("single"), "request body must be a JSON array of test records")):
            r = self.req("POST", "/tests/batch", body)
            self.assertEqual((r.status, r.json()["message"]), (400, message))

    def test_large_listing_arrives_whole_and_in_order(self):
        # ~330 KB: the app sends it in chunks of 32 KB and more, each as several FastCGI records
        # of up to 64 KB, and it crosses the stream front in many buffers. Row sizes vary so
        # that record and chunk boundaries fall inside documents and inside multi-byte UTF-8.
        recs = [record(f"big-{i:04d}", clinic="large", patient=f"p{i}",
                       result=("é" * (i % 97)) + "r" * (1 + i * 37 % 400)) for i in range(1000)]
        r = self.req("POST", "/tests/batch", recs)
        self.assertEqual(r.status, 201, r)
        for _ in range(3):
            r = self.req("GET", "/tests?clinic_id=large")
            self.assertEqual(r.status, 200)
            self.assertGreater(len(r.body), 256 * 1024)
            body = r.json()
            self.assertEqual(body["count"], 1000)
            got = [(t["test_id"], t["patient_id"], t["result"]) for t in body["tests"]]
            self.assertEqual(got, [(x["test_id"], x["patient_id"], x["result"]) for x in recs])

    def test_batch_body_limit_is_nginx_json_413(self):
        r = self.req("POST", "/tests/batch", "[" + " " * (4 * 1024 * 1024) + "]")
        self.assertEqual(r.status, 413, r)
        self.assertEqual(r.json(), {"status": "error", "message": "request body is larger than 4194304 bytes"})
        self.assertRegex(r.headers["x-request-id"], r"^[0-9a-f]{32}$")

    def test_cursor_walk_visits_every_test_once_while_writers_add(self):
        for i in range(50):
            self.assertEqual(self.req("POST", "/tests", record(f"pg-{i}", clinic="paging")).status, 201)
        stop = threading.Event()
        added = []

        def writer():
            n = 0
            while not stop.is_set() and n < 500:
                tid = f"pg-late-{n}"
                if self.req("POST", "/tests", record(tid, clinic="paging")).status == 201:
                    added.append(tid)
                n += 1

        t = threading.Thread(target=writer)
        t.start()
        seen, pages, url, first_cursor = [], 0, "/tests?clinic_id=paging&limit=7", None
        try:
            while pages < 500:
                r = self.req("GET", url)
                self.assertEqual(r.status, 200, r)
                body = r.json()
                seen += [x["test_id"] for x in body["tests"]]
                self.assertLessEqual(body["count"], 7)
                pages += 1
                if body["next_cursor"] is None:
                    break
                first_cursor = first_cursor or body["next_cursor"]
                url = "/tests?clinic_id=paging&limit=7&cursor=" + body["next_cursor"]
        finally:
            stop.set()
            t.join()
        self.assertGreater(pages, 7)
        self.assertEqual(len(seen), len(set(seen)), "a test was visited twice")
        self.assertEqual(seen[:50], [f"pg-{i}" for i in range(50)])
        everything = [x["test_id"] for x in self.req("GET", "/tests?clinic_id=paging").json()["tests"]]
        self.assertEqual(seen, everything[:len(seen)])  # in order, nothing skipped
        tampered = first_cursor[:-1] + ("A" if first_cursor[-1] != "A" else "B")
        for bad in ("/tests?clinic_id=paging&limit=7&cursor=" + tampered,
                    "/tests?clinic_id=other&limit=7&cursor=" + first_cursor,
                    "/tests?clinic_id=paging&patient_id=p1&limit=7&cursor=" + first_cursor):
            r = self.req("GET", bad)
            self.assertEqual(r.status, 400, bad)
            self.assertEqual(r.json()["message"], "cursor is malformed, altered, or for another query")

    def test_health_metrics_and_openapi(self):
        r = self.req("GET", "/healthz")
        self.assertEqual((r.status, r.json()), (200, {"status": "ok"}))
        self.req("GET", "/tests/none")
        r = self.req("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/plain"))
        text = r.body.decode()
        self.assertIn('tdapi_requests_total{route="GET /tests/{test_id}",status="404"}', text)
        self.assertIn('tdapi_request_duration_seconds_bucket{route="GET /healthz",le="+Inf"}', text)
        for name in ("tdapi_commits_total", "tdapi_rollbacks_total", "tdapi_database_size_bytes"):
            self.assertRegex(text, name + r" \d+\n")
        size = int(re.search(r"^tdapi_database_size_bytes (\d+)$", text, re.M).group(1))
        self.assertGreater(size, 0)
        r = self.req("GET", "/openapi.yaml")
        self.assertEqual(r.status, 200)
        with open(os.path.join(ROOT, "docs", "openapi.yaml"), "rb") as f:
            self.assertEqual(r.body, f.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
