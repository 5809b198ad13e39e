#!/usr/bin/env python3
"""test_contract.py: the API contract of docs/design.md through real nginx in front of the real
binary, as a table of (request, expected status, expected body); plus concurrency and logs."""

import json
import os
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, record  # noqa: E402

JSON = {"Content-Type": "application/json"}
GOOD = record("seed-1")


def err(message, errors=None):
    body = {"status": "error", "message": message}
    if errors is not None:
        body["errors"] = [{"field": f, "message": m} for f, m in errors]
    return body


def with_field(field, value):
    r = dict(GOOD, test_id="tv-" + uuid.uuid4().hex[:8])
    r[field] = value
    return json.dumps(r)


# (name, method, path, headers, body, expected status, expected body or None to skip)
CASES = [
    ("create", "POST", "/tests", JSON, json.dumps(record("k-1")), 201,
     {"status": "success", "test_id": "k-1"}),
    ("duplicate", "POST", "/tests", JSON, json.dumps(record("k-1", result="other")), 409,
     err("test_id already exists")),
    ("charset_param_ok", "POST", "/tests", {"Content-Type": "application/json; charset=utf-8"},
     json.dumps(record("k-2")), 201, {"status": "success", "test_id": "k-2"}),
    ("no_body", "POST", "/tests", JSON, None, 400, err("request body is empty")),
    ("invalid_json", "POST", "/tests", JSON, '{"test_id":', 400, err("request body is not valid JSON")),
    ("trailing_bytes", "POST", "/tests", JSON, json.dumps(record("k-3")) + "]", 400,
     err("request body is not valid JSON")),
    ("not_object", "POST", "/tests", JSON, "[]", 400, err("request body must be a JSON object")),
    ("missing_fields", "POST", "/tests", JSON, '{"test_id":"k-4"}', 400,
     err("invalid test record", [("patient_id", "is required"), ("clinic_id", "is required"),
                                 ("test_type", "is required"), ("result", "is required")])),
    ("wrong_type", "POST", "/tests", JSON, with_field("result", 42), 400,
     err("invalid test record", [("result", "must be a string")])),
    ("empty_string", "POST", "/tests", JSON, with_field("test_type", ""), 400,
     err("invalid test record", [("test_type", "must not be empty")])),
    ("whitespace_only", "POST", "/tests", JSON, with_field("patient_id", "   "), 400,
     err("invalid test record", [("patient_id", "must not be only whitespace")])),
    ("unknown_field", "POST", "/tests", JSON,
     json.dumps(dict(record("k-5"), extra="x")), 400,
     err("invalid test record", [("extra", "unknown field")])),
    ("duplicate_key", "POST", "/tests", JSON,
     '{"test_id":"k-6","test_id":"k-7","patient_id":"p","clinic_id":"c","test_type":"t","result":"r"}',
     400, err("invalid test record", [("test_id", "duplicate key")])),
    ("invalid_utf8", "POST", "/tests", JSON, with_field("result", "X").replace('"X"', '"\udcff"').encode("utf-8", "surrogateescape"),
     400, err("request body is not valid UTF-8")),
    ("escaped_nul", "POST", "/tests", JSON, with_field("result", "a\u0000b"), 400,
     err("request body contains a NUL character")),
    ("control_in_id", "POST", "/tests", JSON, with_field("clinic_id", "c\u0001"), 400,
     err("invalid test record", [("clinic_id", "must not contain control characters")])),
    ("id_too_long", "POST", "/tests", JSON, with_field("test_id", "x" * 129), 400,
     err("invalid test record", [("test_id", "must be at most 128 characters")])),
    ("wrong_content_type", "POST", "/tests", {"Content-Type": "text/plain"}, json.dumps(record("k-8")),
     415, err("Content-Type must be application/json")),
    ("no_content_type", "POST", "/tests", {"Content-Type": ""}, json.dumps(record("k-9")),
     415, err("Content-Type must be application/json")),
    ("body_too_large", "POST", "/tests", JSON, "x" * 70000, 413,
     err("request body is larger than 65536 bytes")),
    ("list_missing_clinic", "GET", "/tests", {}, None, 400, err("clinic_id is required")),
    ("list_empty_clinic", "GET", "/tests?clinic_id=", {}, None, 400, err("clinic_id must not be empty")),
    ("list_unknown_param", "GET", "/tests?clinicid=c1", {}, None, 400,
     err("unknown query parameter: clinicid")),
    ("list_unknown_clinic", "GET", "/tests?clinic_id=nobody-here", {}, None, 200,
     {"status": "success", "clinic_id": "nobody-here", "count": 0, "tests": []}),
    ("unknown_path", "GET", "/nope", {}, None, 404, err("no such endpoint")),
    ("wrong_method", "DELETE", "/tests", {}, None, 405, err("method not allowed; allowed: GET, HEAD, POST")),
]


class Contract(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server().start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.server.stop()
        try:
            assert rc == 0, f"run.sh exited {rc}: {cls.server.run_output()[-3000:]}"
        finally:
            cls.server.__exit__(None, None, None)

    def test_01_contract_table(self):
        for name, method, path, headers, body, status, expected in CASES:
            with self.subTest(name):
                hdrs = {k: v for k, v in headers.items() if v != ""}
                if headers.get("Content-Type") == "":
                    hdrs["Content-Type"] = ""
                r = self.server.request(method, path, body=body, headers=hdrs)
                self.assertEqual(r.status, status, r)
                self.assertEqual(r.headers.get("content-type", "").split(";")[0], "application/json", r)
                self.assertRegex(r.headers.get("x-request-id", ""), r"^[0-9a-f]{32}$")
                if expected is not None:
                    self.assertEqual(r.json(), expected)
                if status == 405:
                    self.assertEqual(r.headers.get("allow"), "GET, HEAD, POST")

    def test_02_created_record_reads_back_whole(self):
        rec = record("rb-1", clinic="clinic a/b", patient="P\u00e9", result="line1\nline2 \u20ac")
        r = self.server.request("POST", "/tests", rec)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.headers["location"], "/tests/rb-1")
        r = self.server.request("GET", "/tests?clinic_id=clinic+a%2Fb")
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertEqual(body["count"], 1)
        got = body["tests"][0]
        created_at = got.pop("created_at")
        # Beside the five fields and created_at: the version's status, number and time.
        self.assertEqual((got.pop("status"), got.pop("version"), got.pop("updated_at")),
                         ("final", 1, created_at))
        self.assertEqual(got, rec)
        self.assertRegex(created_at, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_03_duplicate_leaves_stored_record_untouched(self):
        self.assertEqual(self.server.request("POST", "/tests", record("dup-1", result="first")).status, 201)
        self.assertEqual(self.server.request("POST", "/tests", record("dup-1", result="second")).status, 409)
        tests = self.server.request("GET", "/tests?clinic_id=c1").json()["tests"]
        self.assertEqual([t["result"] for t in tests if t["test_id"] == "dup-1"], ["first"])

    def test_04_listing_is_oldest_first(self):
        ids = [f"ord-{i}-{uuid.uuid4().hex[:4]}" for i in (3, 1, 2)]
        for i in ids:
            self.assertEqual(self.server.request("POST", "/tests", record(i, clinic="order")).status, 201)
        tests = self.server.request("GET", "/tests?clinic_id=order").json()["tests"]
        self.assertEqual([t["test_id"] for t in tests], ids)

    def test_05_forty_clients_one_id_exactly_one_wins(self):
        barrier = threading.Barrier(40)
        statuses = []
        lock = threading.Lock()

        def client(n):
            barrier.wait()
            r = self.server.request("POST", "/tests", record("race-1", result=f"from {n}"))
            with lock:
                statuses.append(r.status)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(statuses), [201] + [409] * 39)
        tests = self.server.request("GET", "/tests?clinic_id=c1").json()["tests"]
        self.assertEqual(len([t for t in tests if t["test_id"] == "race-1"]), 1)

    def test_06_sixteen_writers_hundred_each_all_visible(self):
        failures = []

        def writer(w):
            for i in range(100):
                r = self.server.request("POST", "/tests", record(f"w{w}-{i}", clinic="bulk"))
                if r.status != 201:
                    failures.append(r)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        body = self.server.request("GET", "/tests?clinic_id=bulk").json()
        self.assertEqual(body["count"], 1600)
        self.assertEqual({t["test_id"] for t in body["tests"]},
                         {f"w{w}-{i}" for w in range(16) for i in range(100)})

    def test_07_logs_are_json_with_request_ids_txn_outcomes_and_no_patient_data(self):
        secret_patient = "PATIENT-" + uuid.uuid4().hex
        secret_result = "RESULT-" + uuid.uuid4().hex
        rec = record("log-1", clinic="logc", patient=secret_patient, result=secret_result)
        ok = self.server.request("POST", "/tests", rec)
        dup = self.server.request("POST", "/tests", rec)
        listed = self.server.request("GET", "/tests?clinic_id=logc&x=" + secret_patient)
        self.assertEqual((ok.status, dup.status, listed.status), (201, 409, 400))
        filtered = self.server.request("GET", "/tests?clinic_id=logc")
        self.assertIn(secret_patient, filtered.body.decode())
        time.sleep(0.3)  # nginx writes its access log line after the response

        app = self.server.json_lines("app.log")  # raises if any line is not JSON
        by_id = {l.get("request_id"): l for l in app if l.get("event") == "request"}
        for reply, status in ((ok, 201), (dup, 409), (listed, 400), (filtered, 200)):
            line = by_id[reply.headers["x-request-id"]]
            self.assertEqual(line["status"], status)
            for key in ("ts", "level", "event", "method", "path", "duration_ms"):
                self.assertIn(key, line)
        self.assertEqual(by_id[ok.headers["x-request-id"]]["txn"], "commit")
        self.assertEqual(by_id[dup.headers["x-request-id"]]["txn"], "rollback")
        self.assertEqual(by_id[dup.headers["x-request-id"]]["reason"], "duplicate")
        txn_id = by_id[ok.headers["x-request-id"]]["txn_id"]
        txns = [l for l in app if l.get("event") == "txn" and l.get("txn_id") == txn_id]
        self.assertEqual(len(txns), 1)
        self.assertEqual(txns[0]["txn"], "commit")

        access = self.server.json_lines("access.log")
        access_ids = {l["request_id"] for l in access}
        for reply in (ok, dup, listed, filtered):
            self.assertIn(reply.headers["x-request-id"], access_ids)

        for name in ("app.log", "access.log", "nginx-error.log"):
            text = self.server.read_log(name).decode(errors="replace")
            self.assertNotIn(secret_patient, text, name)
            self.assertNotIn(secret_result, text, name)
        self.assertNotIn(secret_patient, self.server.run_output())

    def test_08_head_is_get_without_a_body(self):
        for path in ("/healthz", "/tests?clinic_id=c1", "/tests/k-1"):
            r = self.server.request("HEAD", path)
            self.assertEqual((r.status, r.body), (200, b""), path)
            self.assertRegex(r.headers.get("x-request-id", ""), r"^[0-9a-f]{32}$")

    def test_09_nginx_errors_are_json(self):
        r = self.server.raw(b"GARBAGE\r\n\r\n")
        self.assertIn(b" 400 ", r.split(b"\r\n")[0])
        self.assertIn(b'{"status":"error","message":"bad request"}', r)
        r = self.server.request("GET", "/tests?clinic_id=" + "a" * 9000)
        self.assertIn(r.status, (400, 414))
        self.assertEqual(r.json()["status"], "error")


if __name__ == "__main__":
    unittest.main(verbosity=2)
