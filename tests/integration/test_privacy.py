#!/usr/bin/env python3
"""test_privacy.py: what one clinic's key can learn of another clinic through real nginx and the
real binary with AUTH=on: paging cursors show nothing of the position (the global seq, which
would count every clinic's writes) and work only for their own listing; cursors of the earlier
format are refused with a clear message; GET /audit's cursors are opaque and bound to their
filters too; a 409 is the same, byte for byte, whether the id is held by the caller's clinic or
another, and its audit entry records nothing of the other clinic."""

import base64
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, Server, database_target, record  # noqa: E402

INVALID = "cursor is malformed, altered, or for another query"
OUTDATED = "cursor is from an earlier version of the service; start the listing again without a cursor"


def admin(*args):
    p = subprocess.run([APP_BIN, *args], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def cursor_bytes(cursor):
    """The bytes a cursor carries (base64url without padding)."""
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


class Privacy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(AUTH="on").start()
        try:
            db = database_target(cls.server)
            cls.keys = {}
            for name, scopes in {"r1": ["read:c1"], "r2": ["read:c2"], "rall": ["read:*"],
                                 "w1": ["write:c1"], "w2": ["write:c2"], "wall": ["write:*"],
                                 "aud": ["audit"]}.items():
                args = ["keys", "create", "--db", db, "--name", name]
                for s in scopes:
                    args += ["--scope", s]
                cls.keys[name] = admin(*args)[0]
        except BaseException:
            cls.server.__exit__(None, None, None)  # tearDownClass does not run after a failure
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def req(self, key, method, path, body=None):
        return self.server.request(method, path, body,
                                   headers={"Authorization": "Bearer " + self.keys[key]["token"]})

    def post(self, key, rec):
        r = self.req(key, "POST", "/tests", rec)
        self.assertEqual(r.status, 201, r)

    def audit_entries(self):
        entries, cursor = [], None
        for _ in range(200):
            r = self.req("aud", "GET", "/audit?limit=1000" + ("&cursor=" + cursor if cursor else ""))
            self.assertEqual(r.status, 200, r)
            page = r.json()
            entries += page["entries"]
            cursor = page["next_cursor"]
            if cursor is None:
                return entries
        raise AssertionError("the audit trail never ended")

    def page(self, key, path):
        r = self.req(key, "GET", path)
        self.assertEqual(r.status, 200, r)
        return r

    def test_a_cursor_shows_nothing_of_the_position_or_of_other_clinics_writes(self):
        # c1 writes, c2 writes 37 tests, c1 writes again: with the seq in clear, the two cursors
        # of c1's listing differ by 38, and c1's key counts c2's writes.
        self.post("wall", record("pos-a", clinic="c1-pos"))
        for i in range(37):
            self.post("wall", record(f"pos-other-{i}", clinic="c2-pos"))
        self.post("wall", record("pos-b", clinic="c1-pos"))
        self.post("wall", record("pos-c", clinic="c1-pos"))
        r1 = self.page("rall", "/tests?clinic_id=c1-pos&limit=1")
        first = r1.json()["next_cursor"]
        r2 = self.page("rall", "/tests?clinic_id=c1-pos&limit=1&cursor=" + first)
        self.assertEqual([t["test_id"] for t in r2.json()["tests"]], ["pos-b"])
        second = r2.json()["next_cursor"]
        r3 = self.page("rall", "/tests?clinic_id=c1-pos&limit=1&cursor=" + second)
        self.assertEqual([t["test_id"] for t in r3.json()["tests"]], ["pos-c"])
        # The auditor may know the positions: the trail records each listing's after_seq.
        by_rid = {e["request_id"]: e for e in self.audit_entries()}
        seq_a = by_rid[r2.headers["x-request-id"]]["detail"]["after_seq"]
        seq_b = by_rid[r3.headers["x-request-id"]]["detail"]["after_seq"]
        self.assertGreaterEqual(seq_b - seq_a, 38)
        for cursor, seq in ((first, seq_a), (second, seq_b)):
            raw = cursor_bytes(cursor)
            for n in (8, 4):
                for order in ("big", "little"):
                    self.assertNotIn(seq.to_bytes(n, order), raw, (cursor, seq, n, order))
            self.assertNotIn(format(seq, "016x"), raw.hex())
        # No window of the two cursors, read as a number in either byte order, differs by the
        # count of writes between them.
        a, b = cursor_bytes(first), cursor_bytes(second)
        for width in (8, 4):
            for i in range(len(a) - width + 1):
                for order in ("big", "little"):
                    d = int.from_bytes(b[i:i + width], order) - int.from_bytes(a[i:i + width], order)
                    self.assertNotEqual(d, seq_b - seq_a, (i, width, order))

    def test_a_cursor_works_only_for_its_clinic_and_filters(self):
        for i in range(3):
            self.post("w1", record(f"own-{i}", clinic="c1", patient="p1"))
            self.post("w2", record(f"foreign-{i}", clinic="c2", patient="p1"))
        c1 = self.page("r1", "/tests?clinic_id=c1&limit=1").json()["next_cursor"]
        self.assertIsNotNone(c1)
        for key, method, path, body in (
                ("r2", "GET", "/tests?clinic_id=c2&limit=1&cursor=" + c1, None),
                ("r2", "POST", "/tests/search", {"clinic_id": "c2", "limit": 1, "cursor": c1}),
                ("rall", "GET", "/tests?clinic_id=c2&limit=1&cursor=" + c1, None),
                ("r1", "GET", "/tests?clinic_id=c1&patient_id=p1&limit=1&cursor=" + c1, None)):
            r = self.req(key, method, path, body)
            self.assertEqual((r.status, r.json()), (400, {"status": "error", "message": INVALID}),
                             (key, path, body))
        # ... and for its own listing, by either method
        r = self.req("r1", "POST", "/tests/search", {"clinic_id": "c1", "limit": 1, "cursor": c1})
        self.assertEqual(r.status, 200, r)
        via_get = self.page("r1", "/tests?clinic_id=c1&limit=1&cursor=" + c1)
        self.assertEqual(r.json(), via_get.json())
        self.assertEqual(len(r.json()["tests"]), 1)

    def test_cursors_of_the_earlier_format_are_refused_with_a_clear_message(self):
        # The earlier format: base64url of the seq and a SipHash tag, 22 characters; GET /audit's
        # cursor was the seq in decimal.
        old = base64.urlsafe_b64encode((5).to_bytes(8, "big") + bytes(range(8))).decode().rstrip("=")
        self.assertEqual(len(old), 22)
        for method, path, body in (("GET", "/tests?clinic_id=c1&limit=1&cursor=" + old, None),
                                   ("POST", "/tests/search", {"clinic_id": "c1", "cursor": old})):
            r = self.req("r1", method, path, body)
            self.assertEqual((r.status, r.json()), (400, {"status": "error", "message": OUTDATED}))
        r = self.req("aud", "GET", "/audit?limit=1&cursor=5")
        self.assertEqual((r.status, r.json()), (400, {"status": "error", "message": OUTDATED}))

    def test_audit_cursors_are_opaque_and_bound_to_their_filters(self):
        for i in range(3):
            self.post("w1", record(f"aud-{i}", clinic="c1"))
        r = self.page("aud", "/audit?limit=1&clinic_id=c1")
        cursor = r.json()["next_cursor"]
        first_seq = r.json()["entries"][0]["seq"]
        self.assertIsNotNone(cursor)
        self.assertFalse(cursor.isdigit(), cursor)
        self.assertNotIn(first_seq.to_bytes(8, "big"), cursor_bytes(cursor))
        nxt = self.page("aud", "/audit?limit=1&clinic_id=c1&cursor=" + cursor).json()
        self.assertGreater(nxt["entries"][0]["seq"], first_seq)
        self.assertEqual(nxt["entries"][0]["clinic_id"], "c1")
        for path in ("/audit?limit=1&clinic_id=c2&cursor=" + cursor,
                     "/audit?limit=1&cursor=" + cursor,
                     "/audit?limit=1&clinic_id=c1&since=2000-01-01&cursor=" + cursor,
                     "/audit?limit=1&clinic_id=c1&cursor=" + cursor[:-1] + ("A" if cursor[-1] != "A" else "B")):
            r = self.req("aud", "GET", path)
            self.assertEqual((r.status, r.json()), (400, {"status": "error", "message": INVALID}), path)
        # A listing's cursor is not an audit cursor, nor the other way round.
        self.post("wall", record("aud-list-0", clinic="c1-kind"))
        self.post("wall", record("aud-list-1", clinic="c1-kind"))
        listing = self.page("rall", "/tests?clinic_id=c1-kind&limit=1").json()["next_cursor"]
        r = self.req("aud", "GET", "/audit?limit=1&clinic_id=c1-kind&cursor=" + listing)
        self.assertEqual(r.status, 400, r)


    def test_a_409_is_the_same_whether_the_id_is_held_by_the_own_clinic_or_another(self):
        # Same-length ids, so the batch bodies (which name the caller's own ids) can be compared.
        self.post("w1", record("dup-own-1", clinic="c1"))
        self.post("w2", record("dup-frn-1", clinic="c2", patient="P-secret"))
        replies = {}
        for tid in ("dup-own-1", "dup-frn-1"):
            one = self.req("w1", "POST", "/tests", record(tid, clinic="c1"))
            batch = self.req("w1", "POST", "/tests/batch", [record(tid, clinic="c1")])
            replies[tid] = (one, batch)
        own, foreign = replies["dup-own-1"], replies["dup-frn-1"]
        varying = {"x-request-id", "date"}  # per request, whatever the answer
        for o, f in zip(own, foreign):
            self.assertEqual(o.status, 409, o)
            self.assertEqual(f.status, 409, f)
            self.assertEqual(o.body.replace(b"dup-own-1", b"dup-XXX-1"),
                             f.body.replace(b"dup-frn-1", b"dup-XXX-1"))
            self.assertEqual({k: v for k, v in o.headers.items() if k not in varying},
                             {k: v for k, v in f.headers.items() if k not in varying})
            self.assertNotIn(b"c2", f.body)
        self.assertEqual(own[0].json(), {"status": "error", "message": "test_id already exists"})
        # The 409s' audit entries: the caller's key, clinic and ids; nothing of c2 or its key.
        by_rid = {e["request_id"]: e for e in self.audit_entries()}
        shapes = []
        for tid, (one, batch) in replies.items():
            for reply, action in ((one, "create"), (batch, "batch")):
                e = by_rid[reply.headers["x-request-id"]]
                self.assertEqual((e["key_id"], e["action"], e["clinic_id"], e["outcome"], e["detail"]),
                                 (self.keys["w1"]["key_id"], action, "c1", 409, {"test_ids": [tid]}))
                # Hashes, request id, time and the key id (compared exactly above) are hex and
                # digits of their own: a random key id may well hold "c2".
                text = json.dumps({k: v for k, v in e.items()
                                   if k not in ("hash", "prev_hash", "request_id", "ts", "seq",
                                                "key_id")})
                for other in ("c2", "P-secret", self.keys["w2"]["key_id"]):
                    self.assertNotIn(other, text)
                shapes.append(sorted(e))
        self.assertEqual(len({tuple(s) for s in shapes}), 1)

if __name__ == "__main__":
    unittest.main(verbosity=2)
