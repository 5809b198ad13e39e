#!/usr/bin/env python3
"""test_openapi.py: docs/openapi.yaml says what the service answers. A scenario of requests
(every documented operation, its answers and its error cases: creates, reads with ETag and 304,
corrections with 200/400/404/412/428, history, filtered listings, the change feed) runs against
the real service; each answer's status must be one the description lists for that operation, its
JSON body must match the schema documented for that status, and the headers documented for it
(ETag, Location, X-Request-Id) must be there. Every operation in the description is exercised.
The description is read as redocly resolves it (`redocly bundle --dereferenced`: the tool
`make test` already lints it with)."""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from harness import ROOT, Server  # noqa: E402

REDOCLY = os.path.join(ROOT, "tests", "api-tools", "node_modules", ".bin", "redocly")


def load_description():
    with tempfile.TemporaryDirectory(prefix="tdapi-openapi-") as d:
        out = os.path.join(d, "openapi.json")
        subprocess.run([REDOCLY, "bundle", os.path.join(ROOT, "docs", "openapi.yaml"), "--dereferenced",
                        "--ext", "json", "--output", out], check=True, capture_output=True, timeout=120)
        with open(out) as f:
            return json.load(f)


def schema_problems(value, schema, where="$", strict=False):
    """The ways VALUE breaks SCHEMA (the JSON Schema keywords docs/openapi.yaml uses). STRICT: an
    object's member the schema does not name is a problem too (every field an answer carries is
    documented)."""
    problems = []
    for sub in schema.get("allOf", []):
        problems += schema_problems(value, sub, where)  # strictness: below, over all of them
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        kinds = {"string": str, "object": dict, "array": list, "boolean": bool, "null": type(None)}
        ok = any((t == "integer" and isinstance(value, int) and not isinstance(value, bool)) or
                 (t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool)) or
                 (t in kinds and isinstance(value, kinds[t])) for t in types)
        if not ok:
            return problems + [f"{where}: {value!r} is not of type {types}"]
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not re.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
            problems.append(f"{where}: {value!r} is not a date-time")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        props = {}
        for sub in [schema] + schema.get("allOf", []):
            props.update(sub.get("properties", {}))
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{where}: {name} is missing")
        for name, v in value.items():
            if name in props:
                problems += schema_problems(v, props[name], f"{where}.{name}", strict)
            elif schema.get("additionalProperties") is False or (strict and props):
                problems.append(f"{where}: {name} is not in the description")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            problems += schema_problems(v, schema["items"], f"{where}[{i}]", strict)
    return problems


def operation_of(spec, method, path):
    """(template, operation) of the description for METHOD and the path part of PATH."""
    path = urllib.parse.urlsplit(path).path
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None, None


class OpenApiDescribesTheService(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.spec = load_description()

    def check(self, server, method, path, body=None, headers=None, want=None):
        """Sends one request; asserts its answer is as the description says. Returns it."""
        raw = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        r = server.request(method, path, raw, headers=headers)
        where = f"{method} {path} -> {r.status}"
        if want is not None:
            self.assertEqual(r.status, want, f"{where}: {r.body[:300]!r}")
        template, op = operation_of(self.spec, "GET" if method == "HEAD" else method, path)
        self.assertIsNotNone(op, f"{where}: no such operation in docs/openapi.yaml")
        self.exercised.add((method, template))
        answer = op["responses"].get(str(r.status))
        self.assertIsNotNone(answer, f"{where}: status not listed for the operation ({sorted(op['responses'])})")
        got = {k.lower(): v for k, v in r.headers.items()}
        for name, h in answer.get("headers", {}).items():
            if h.get("required") is False and name.lower() not in got:
                continue  # documented as sent only in some set-ups (X-Commit-Position)
            self.assertIn(name.lower(), got, f"{where}: header {name} documented, not sent")
            self.assertEqual(schema_problems(got[name.lower()], h.get("schema", {}), name), [], where)
        content = answer.get("content", {})
        if method == "HEAD":  # GET's answer without its body
            self.assertEqual(r.body, b"", where)
        elif r.status == 304:
            self.assertEqual(r.body, b"", where)
            self.assertEqual(content, {}, f"{where}: a body documented for an answer without one")
        elif "application/json" in content:
            self.assertTrue(got.get("content-type", "").startswith("application/json"), where)
            doc = json.loads(r.body)
            problems = schema_problems(doc, content["application/json"].get("schema", {}), strict=True)
            self.assertEqual(problems, [], f"{where}: {r.body[:500]!r}")
        else:
            mime = next(iter(content), None)
            self.assertIsNotNone(mime, f"{where}: answer has a body, the description none")
            self.assertTrue(got.get("content-type", "").startswith(mime.split(";")[0]), where)
        return r

    def test_every_operation_answers_as_described(self):
        self.exercised = set()
        with Server() as s:
            c = "oa-clinic"
            rec = {"test_id": "oa-1", "patient_id": "p1", "clinic_id": c, "test_type": "blood",
                   "result": "negative"}
            json_ct = {"Content-Type": "application/json"}
            self.check(s, "POST", "/tests", rec, json_ct, 201)
            self.check(s, "POST", "/tests", rec, json_ct, 409)
            self.check(s, "POST", "/tests", {"test_id": "oa-x"}, json_ct, 400)
            self.check(s, "POST", "/tests", dict(rec, test_id="oa-2", status="amended"), json_ct, 400)
            self.check(s, "POST", "/tests", rec, {"Content-Type": "text/plain"}, 415)
            self.check(s, "POST", "/tests", dict(rec, test_id="oa-p", status="preliminary"), json_ct, 201)
            self.check(s, "POST", "/tests/batch", [dict(rec, test_id="oa-b1"), dict(rec, test_id="oa-b2")],
                       json_ct, 201)
            self.check(s, "POST", "/tests/batch", [dict(rec, test_id="oa-b1")], json_ct, 409)
            self.check(s, "POST", "/tests/batch", [{"test_id": 1}], json_ct, 400)

            r = self.check(s, "GET", "/tests/oa-1", want=200)
            self.assertEqual(r.headers["etag"], 'W/"1"')
            self.check(s, "GET", "/tests/oa-1", headers={"If-None-Match": 'W/"1"'}, want=304)
            self.check(s, "GET", "/tests/oa-1", headers={"If-None-Match": 'W/"7"'}, want=200)
            self.check(s, "GET", "/tests/oa-missing", want=404)

            fix = dict(rec, result="positive", status="corrected", reason="re-run")
            put = "/tests/oa-1"
            self.check(s, "PUT", put, fix, json_ct, 428)
            self.check(s, "PUT", put, fix, dict(json_ct, **{"If-Match": "W/1"}), 400)
            self.check(s, "PUT", put, fix, {"Content-Type": "text/plain", "If-Match": 'W/"1"'}, 415)
            r = self.check(s, "PUT", put, fix, dict(json_ct, **{"If-Match": 'W/"1"'}), 200)
            self.assertEqual((r.json()["test"]["version"], r.headers["etag"]), (2, 'W/"2"'))
            r = self.check(s, "PUT", put, fix, dict(json_ct, **{"If-Match": 'W/"1"'}), 412)
            self.assertEqual(r.json()["current_version"], 2)
            self.check(s, "PUT", put, dict(fix, patient_id="p2"), dict(json_ct, **{"If-Match": 'W/"2"'}), 400)
            self.check(s, "PUT", put, dict(fix, status="preliminary"), dict(json_ct, **{"If-Match": 'W/"2"'}), 400)
            self.check(s, "PUT", put, dict(fix, extra="x"), dict(json_ct, **{"If-Match": 'W/"2"'}), 400)
            self.check(s, "PUT", "/tests/oa-missing", dict(fix, test_id="oa-missing"),
                       dict(json_ct, **{"If-Match": 'W/"1"'}), 404)
            self.check(s, "PUT", put, dict(fix, status="entered-in-error"), dict(json_ct, **{"If-Match": 'W/"2"'}), 200)
            self.check(s, "PUT", put, fix, dict(json_ct, **{"If-Match": 'W/"3"'}), 400)
            self.check(s, "PUT", put, "x" * 70000, dict(json_ct, **{"If-Match": 'W/"3"'}), 413)

            r = self.check(s, "GET", "/tests/oa-1/history", want=200)
            self.assertEqual([v["version"] for v in r.json()["versions"]], [3, 2, 1])
            r = self.check(s, "GET", "/tests/oa-1/history?limit=2", want=200)
            cursor = urllib.parse.quote(r.json()["next_cursor"])
            r = self.check(s, "GET", f"/tests/oa-1/history?limit=2&cursor={cursor}", want=200)
            self.assertEqual([v["version"] for v in r.json()["versions"]], [1])
            self.check(s, "GET", "/tests/oa-1/history?limit=0", want=400)
            self.check(s, "GET", "/tests/oa-missing/history", want=404)

            self.check(s, "GET", f"/tests?clinic_id={c}", want=200)
            r = self.check(s, "GET", f"/tests?clinic_id={c}&status=entered-in-error", want=200)
            self.assertEqual([t["test_id"] for t in r.json()["tests"]], ["oa-1"])
            self.check(s, "GET", f"/tests?clinic_id={c}&created_from=2000-01-01T00:00:00%2B02:00"
                                 f"&updated_to=2999-01-01T00:00:00.5Z&limit=2", want=200)
            self.check(s, "GET", f"/tests?clinic_id={c}&created_from=2026-12-07", want=400)
            self.check(s, "GET", f"/tests?clinic_id={c}&status=gone", want=400)
            self.check(s, "POST", "/tests/search", {"clinic_id": c, "status": "final",
                                                     "updated_from": "2000-01-01T00:00:00Z", "limit": 5},
                       json_ct, 200)
            self.check(s, "POST", "/tests/search", {"clinic_id": c, "created_to": 5}, json_ct, 400)
            self.check(s, "HEAD", f"/tests?clinic_id={c}", want=200)

            r = self.check(s, "GET", f"/changes?clinic_id={c}&limit=2", want=200)
            since = urllib.parse.quote(r.json()["next"])
            r = self.check(s, "GET", f"/changes?clinic_id={c}&since={since}&limit=1000&wait=0", want=200)
            self.assertEqual([x["change"] for x in r.json()["changes"]][-2:], ["correction", "retraction"])
            since = urllib.parse.quote(r.json()["next"])
            r = self.check(s, "GET", f"/changes?clinic_id={c}&since={since}&wait=1", want=200)
            self.assertEqual(r.json()["changes"], [])
            self.check(s, "GET", f"/changes?clinic_id={c}&wait=31", want=400)
            self.check(s, "GET", f"/changes?clinic_id={c}&since=AAAA", want=400)
            self.check(s, "GET", "/changes", want=400)
            self.check(s, "POST", "/changes/search", {"clinic_id": c, "limit": 3, "wait": 0}, json_ct, 200)
            self.check(s, "POST", "/changes/search", {"clinic_id": c, "wait": "1"}, json_ct, 400)
            self.check(s, "POST", "/changes/search", {"clinic_id": c}, {"Content-Type": "text/plain"}, 415)

            self.check(s, "GET", "/audit?limit=5", want=200)
            self.check(s, "GET", "/audit?since=yesterday", want=400)
            self.check(s, "GET", "/healthz", want=200)
            self.check(s, "GET", "/metrics", want=200)
            self.check(s, "GET", "/metrics/node/1", want=200)
            self.check(s, "GET", "/openapi.yaml", want=200)

        documented = {(m.upper(), t) for t, item in self.spec["paths"].items() for m in item
                      if m in ("get", "put", "post", "delete", "patch")}
        self.assertEqual(documented - {(m, t) for m, t in self.exercised if m != "HEAD"}, set(),
                         "operations of docs/openapi.yaml this test does not exercise")


if __name__ == "__main__":
    unittest.main(verbosity=2)
