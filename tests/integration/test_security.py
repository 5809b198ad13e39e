#!/usr/bin/env python3
"""test_security.py: access keys, scopes and the audit trail through real nginx and the real
binary with AUTH=on: a matrix of key scope x endpoint x clinic, 401/403/404 answers, revocation
without a restart, the audit trail's content and its tamper evidence, and no token in any log."""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import fcgi_client  # noqa: E402
from harness import (APP_BIN, PG_HOST, Server, copy_database, database_target, pg_url,  # noqa: E402
                     psql, record, run_sql, wait_for)


def admin(*args, check=True):
    """Runs `testdata-api keys|audit ...`; returns (exit status, stdout lines parsed as JSON)."""
    p = subprocess.run([APP_BIN, *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return p.returncode, lines


class Security(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(AUTH="on").start()
        try:
            cls.set_up_keys_and_tests()
        except BaseException:
            cls.server.__exit__(None, None, None)  # tearDownClass does not run after a failure
            raise

    @classmethod
    def set_up_keys_and_tests(cls):
        cls.db = database_target(cls.server)  # the SQLite file or the PostgreSQL URL
        cls.keys = {}
        for name, scopes in {
            "w1": ["write:c1"], "r1": ["read:c1"], "rw1": ["read:c1", "write:c1"],
            "rall": ["read:*"], "wall": ["write:*"], "aud": ["audit"], "met": ["metrics"],
        }.items():
            args = ["keys", "create", "--db", cls.db, "--name", name]
            for s in scopes:
                args += ["--scope", s]
            _, out = admin(*args)
            cls.keys[name] = out[0]
        # one test per clinic, written by the write-everything key
        for tid, clinic in (("sec-c1", "c1"), ("sec-c2", "c2")):
            r = cls.req("wall", "POST", "/tests", record(tid, clinic=clinic, patient="P-" + tid))
            assert r.status == 201, r

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    @classmethod
    def req(cls, key, method, path, body=None, headers=None):
        h = dict(headers or {})
        if key:
            h["Authorization"] = "Bearer " + cls.keys[key]["token"]
        return cls.server.request(method, path, body, headers=h)

    def assert_error(self, r, status):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.headers.get("content-type"), "application/json")
        self.assertEqual(r.json()["status"], "error")

    # -- the matrix ---------------------------------------------------------------------------
    def test_scope_matrix(self):
        n = [0]

        def fresh(clinic):
            n[0] += 1
            return record(f"m{n[0]}-{os.getpid()}", clinic=clinic)

        def may(key, action, clinic):
            scopes = {"w1": ["write:c1"], "r1": ["read:c1"], "rw1": ["read:c1", "write:c1"],
                      "rall": ["read:*"], "wall": ["write:*"], "aud": ["audit"],
                      "met": ["metrics"]}[key]
            return f"{action}:{clinic}" in scopes or f"{action}:*" in scopes

        for key in self.keys:
            for clinic in ("c1", "c2"):
                with self.subTest(key=key, clinic=clinic):
                    # POST /tests
                    body = fresh(clinic)
                    r = self.req(key, "POST", "/tests", body)
                    self.assertEqual(r.status, 201 if may(key, "write", clinic) else 403, r)
                    stored = self.req("rall", "GET", "/tests/" + body["test_id"]).status
                    self.assertEqual(stored, 200 if may(key, "write", clinic) else 404)
                    # POST /tests/batch, one clinic
                    batch = [fresh(clinic), fresh(clinic)]
                    r = self.req(key, "POST", "/tests/batch", batch)
                    self.assertEqual(r.status, 201 if may(key, "write", clinic) else 403, r)
                    # GET /tests?clinic_id=
                    r = self.req(key, "GET", "/tests?clinic_id=" + clinic)
                    self.assertEqual(r.status, 200 if may(key, "read", clinic) else 403, r)
                    if r.status == 200:
                        self.assertTrue(all(t["clinic_id"] == clinic for t in r.json()["tests"]))
                    # POST /tests/search
                    r = self.req(key, "POST", "/tests/search", {"clinic_id": clinic})
                    self.assertEqual(r.status, 200 if may(key, "read", clinic) else 403, r)
                    # GET /tests/{id}: a foreign clinic's test is a 404, exactly like no test
                    r = self.req(key, "GET", "/tests/sec-" + clinic)
                    self.assertEqual(r.status, 200 if may(key, "read", clinic) else 404, r)
                    if r.status == 404:
                        self.assertEqual(r.body, self.req(key, "GET", "/tests/no-such-id").body)
            with self.subTest(key=key, endpoint="metrics/audit"):
                self.assertEqual(self.req(key, "GET", "/metrics").status, 200 if key == "met" else 403)
                self.assertEqual(self.req(key, "GET", "/audit").status, 200 if key == "aud" else 403)

    def test_a_batch_with_one_foreign_clinic_writes_nothing(self):
        batch = [record("fb-1", clinic="c1"), record("fb-2", clinic="c2")]
        r = self.req("w1", "POST", "/tests/batch", batch)
        self.assert_error(r, 403)
        self.assertIn("c2", r.json()["message"])
        for tid in ("fb-1", "fb-2"):
            self.assertEqual(self.req("rall", "GET", "/tests/" + tid).status, 404)

    def test_no_malformed_or_unknown_token_is_401_with_www_authenticate(self):
        bad = {
            None: None,
            "malformed": "Bearer nonsense",
            "basic": "Basic dXNlcjpwYXNz",
            "unknown": "Bearer tdk_" + "0" * 16 + "_" + "1" * 64,
            "wrong secret": "Bearer " + self.keys["rall"]["token"][:-1]
                            + ("0" if self.keys["rall"]["token"][-1] != "0" else "1"),
        }
        for name, header in bad.items():
            for method, path, body in (("GET", "/tests?clinic_id=c1", None),
                                       ("POST", "/tests", record("x-" + str(name))),
                                       ("POST", "/tests/search", {"clinic_id": "c1"}),
                                       ("GET", "/tests/sec-c1", None), ("GET", "/metrics", None),
                                       ("GET", "/audit", None)):
                with self.subTest(token=name, path=path):
                    h = {"Authorization": header} if header else {}
                    r = self.server.request(method, path, body, headers=h)
                    self.assert_error(r, 401)
                    self.assertTrue(r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers)
        # /healthz stays open
        self.assertEqual(self.server.request("GET", "/healthz").status, 200)

    def test_a_new_key_works_and_a_revoked_key_stops_within_a_second_without_restart(self):
        _, out = admin("keys", "create", "--db", self.db, "--name", "temp", "--scope", "read:c1")
        token = out[0]["token"]
        h = {"Authorization": "Bearer " + token}
        created = time.monotonic()
        self.assertTrue(wait_for(lambda: self.server.request("GET", "/tests?clinic_id=c1", headers=h).status == 200, 10))
        admin("keys", "revoke", "--db", self.db, out[0]["key_id"])
        revoked = time.monotonic()
        self.assertTrue(wait_for(lambda: self.server.request("GET", "/tests?clinic_id=c1", headers=h).status == 401, 10))
        took = time.monotonic() - revoked
        print(f"\nkey usable {0:.0f} s after create; revocation felt after {took:.3f} s", file=sys.stderr)
        del created
        _, listed = admin("keys", "list", "--db", self.db)
        mine = [k for k in listed if k["key_id"] == out[0]["key_id"]][0]
        self.assertIsNotNone(mine["revoked_at"])
        for k in listed:
            self.assertEqual(set(k), {"key_id", "name", "scopes", "created_at", "revoked_at"})

    def test_the_audit_trail_records_who_what_and_outcome_and_detects_tampering(self):
        rid_ok = self.req("r1", "GET", "/tests?clinic_id=c1&patient_id=P-sec-c1").headers["x-request-id"]
        rid_search = self.req("r1", "POST", "/tests/search", {"clinic_id": "c1"}).headers["x-request-id"]
        rid_denied = self.req("r1", "GET", "/tests?clinic_id=c2").headers["x-request-id"]
        rid_get = self.req("r1", "GET", "/tests/sec-c2").headers["x-request-id"]
        rid_anon = self.server.request("GET", "/tests?clinic_id=c1").headers["x-request-id"]
        forged = "tdk_" + "e" * 16 + "_" + "1" * 64
        rid_401 = self.server.request("GET", "/tests?clinic_id=c1",
                                      headers={"Authorization": "Bearer " + forged}).headers["x-request-id"]
        entries, cursor = [], None
        for _ in range(1000):
            path = "/audit?limit=500" + ("&cursor=" + cursor if cursor else "")
            r = self.req("aud", "GET", path)
            self.assertEqual(r.status, 200, r)
            page = r.json()
            entries += page["entries"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        by_rid = {e["request_id"]: e for e in entries}
        ok = by_rid[rid_ok]
        self.assertEqual((ok["key_id"], ok["action"], ok["clinic_id"], ok["outcome"]),
                         (self.keys["r1"]["key_id"], "list", "c1", 200))
        self.assertEqual(ok["detail"]["patient_id"], "P-sec-c1")  # the audit trail may hold filters
        self.assertEqual((by_rid[rid_search]["action"], by_rid[rid_search]["outcome"]), ("search", 200))
        self.assertEqual(by_rid[rid_denied]["outcome"], 403)
        self.assertEqual(by_rid[rid_get]["outcome"], 404)
        self.assertEqual(by_rid[rid_get]["detail"]["test_id"], "sec-c2")
        # a made-up token is not appended under the key id it names (FailedAuthentication)
        self.assertFalse([e for e in entries if e["key_id"] == "e" * 16], rid_401)
        # no token names nobody: logged and counted, not written to the trail
        self.assertNotIn(rid_anon, by_rid)
        seqs = [e["seq"] for e in entries]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        # audit entries of writes commit with the data
        created = [e for e in entries if e["action"] == "create" and e["outcome"] == 201]
        self.assertTrue(any(e["detail"]["test_ids"] == ["sec-c1"] for e in created))

        rc, out = admin("audit", "verify", "--db", self.db)
        self.assertEqual((rc, out[0]["status"]), (0, "ok"))
        head = out[0]["head"]
        self.assertEqual(admin("audit", "verify", "--db", self.db, "--expect-head", head)[0], 0)
        rc, exported = admin("audit", "export", "--db", self.db)
        self.assertGreaterEqual(len(exported), len(entries))
        # tamper with one row behind the service's back: verify names it
        victim = by_rid[rid_denied]["seq"]
        run_sql(self.db, f"UPDATE audit SET outcome = 200 WHERE seq = {int(victim)}")
        try:
            rc, out = admin("audit", "verify", "--db", self.db, check=False)
            self.assertEqual(rc, 1)
            self.assertEqual(out[0]["status"], "broken")
            self.assertTrue(out[0]["problem"].startswith(f"entry {victim}:"), out[0])
        finally:
            run_sql(self.db, f"UPDATE audit SET outcome = 403 WHERE seq = {int(victim)}")
        self.assertEqual(admin("audit", "verify", "--db", self.db)[0], 0)

    def test_a_cut_off_chain_is_found_with_a_kept_head(self):
        # A private copy: entries are removed from its end, which the chain alone cannot see.
        copy = copy_database(self.db, f"audit_copy_{os.getpid()}" if PG_HOST else "audit-copy.db")
        rc, out = admin("audit", "verify", "--db", copy)
        head = out[0]["head"]
        seq = int(head.split(":")[0])
        run_sql(copy, f"DELETE FROM audit WHERE seq > {seq - 2}")
        self.assertEqual(admin("audit", "verify", "--db", copy)[0], 0)  # still a valid chain
        rc, out = admin("audit", "verify", "--db", copy, "--expect-head", head, check=False)
        self.assertEqual(rc, 1)
        self.assertIn(f"entry {seq}: missing", out[0]["problem"])

    def test_an_entry_outside_the_chain_is_found(self):
        # An entry numbered 0 or below was outside audit verify's listing (it started after seq
        # 0), which said ok: every row is read now, and the table's count is compared.
        copy = copy_database(self.db, f"audit_outside_{os.getpid()}" if PG_HOST else "audit-outside.db")
        self.assertEqual(admin("audit", "verify", "--db", copy)[0], 0)
        for seq in (0, -7):
            run_sql(copy, f"INSERT INTO audit SELECT {seq}, ts, request_id, key_id, action, clinic_id,"
                          f" detail, outcome, prev_hash, hash FROM audit WHERE seq = 1")
            rc, out = admin("audit", "verify", "--db", copy, check=False)
            self.assertEqual((rc, out[0]["status"]), (1, "broken"), f"seq {seq}: {out}")
            self.assertTrue(out[0]["problem"].startswith(f"entry {seq}:"), out[0])
            run_sql(copy, f"DELETE FROM audit WHERE seq = {seq}")
        self.assertEqual(admin("audit", "verify", "--db", copy)[0], 0)

    # -- what hostile ids and denied requests cost the trail ----------------------------------
    def trail(self):
        """Every audit entry of a request, from `audit export` (each line parsed: one entry per
        line). Left out: the per-address tallies of failed authentications (`auth_failed`),
        which the service writes when their minute is over, so one of an earlier test lands
        whenever a minute ends during a later one."""
        return [e for e in admin("audit", "export", "--db", self.db)[1] if e["action"] != "auth_failed"]

    def test_a_denied_request_costs_one_bounded_audit_entry(self):
        before = len(self.trail())
        # one forbidden batch over 1,000 clinics: one entry, not 1,000
        batch = [record(f"deny-{i}-" + "t" * 100, clinic=f"{i}-" + "c" * 120) for i in range(1000)]
        r = self.req("w1", "POST", "/tests/batch", batch)
        self.assert_error(r, 403)
        self.assertLess(len(r.body), 4096)
        # a key that may write no clinic: refused before nginx reads the body, one entry too
        r = self.req("met", "POST", "/tests/batch", batch)
        self.assert_error(r, 403)
        # a 7 KB id or filter can never be stored: refused before it is recorded
        r = self.req("met", "GET", "/tests/" + "x" * 7000)
        self.assert_error(r, 404)
        self.assertEqual(r.body, self.req("met", "GET", "/tests/no-such-id").body)
        r = self.req("met", "GET", "/audit?clinic_id=" + "c" * 7000)
        self.assert_error(r, 400)
        after = self.trail()
        self.assertEqual(len(after), before + 3)  # the batches, and the 404 of no-such-id
        e, m = [x for x in after[before:] if x["action"] == "batch"]
        self.assertEqual((e["outcome"], e["key_id"]), (403, self.keys["w1"]["key_id"]))
        self.assertLess(len(json.dumps(e)), 4096)
        self.assertEqual((e["detail"]["clinic_count"], e["detail"]["test_count"]), (1000, 1000))
        self.assertEqual((m["outcome"], m["key_id"], m["clinic_id"]), (403, self.keys["met"]["key_id"], ""))
        self.assertEqual(m["detail"], {"reason": "no_write_scope", "body_read": False})

    def test_ids_that_cannot_be_stored_are_refused_and_never_recorded(self):
        unknown = self.req("r1", "GET", "/tests/no-such-id").body
        before = len(self.trail())
        bad = ["a%E2%80%A8b", "a%E2%80%A9b", "a%E2%80%AEb", "a%E2%81%A6b", "a%C2%85b", "a%C2%9Bb",
               "a%0Db", "x" * 7000]
        for tid in bad:
            with self.subTest(id=tid[:20]):
                r = self.req("r1", "GET", "/tests/" + tid)
                self.assertEqual((r.status, r.body), (404, unknown))
                for key in ("aud", "met"):
                    self.assert_error(self.req(key, "GET", "/audit?clinic_id=" + tid), 400)
                self.assert_error(self.req("r1", "GET", "/tests?clinic_id=" + tid), 400)
        self.assertEqual(len(self.trail()), before)
        self.assertEqual(self.req("aud", "GET", "/audit?clinic_id=a%E2%80%AEb").json()["message"],
                         "clinic_id must not contain line separators or bidirectional controls")

    def test_a_nul_in_a_path_segment_is_refused_on_the_fastcgi_socket(self):
        # nginx refuses %00 itself; the app's own socket must too (PostgreSQL reads C strings:
        # /tests/sec-c1%00x was served as sec-c1 and recorded as another id).
        sock = os.path.join(self.server.data_dir, "run", "app.sock")
        before = len(self.trail())
        for n, (key, uri) in enumerate((("rall", "/tests/sec-c1%00x"), ("rall", "/tests/sec-c1%00"),
                                        ("rall", "/tests%00/sec-c1"), ("rall", "/tests?clinic_id=c1%00x"),
                                        ("aud", "/audit?clinic_id=c1%00"), ("met", "/metrics%00"))):
            with self.subTest(uri=uri):
                status, _, body = fcgi_client.request(sock, {
                    "REQUEST_METHOD": "GET", "REQUEST_URI": uri, "REQUEST_ID": f"nul-{n}",
                    "HTTP_AUTHORIZATION": "Bearer " + self.keys[key]["token"]})
                self.assertEqual(status, 400, body)
                self.assertNotIn(b"P-sec-c1", body)
        self.assertEqual(len(self.trail()), before)

    def test_get_authorizes_by_the_rows_clinic_column_not_its_document(self):
        _, out = admin("keys", "create", "--db", self.db, "--name", "rdc1", "--scope", "read:dc1")
        h = {"Authorization": "Bearer " + out[0]["token"]}
        self.assertEqual(self.req("wall", "POST", "/tests", record("doctored", clinic="dc1")).status, 201)
        self.assertEqual(self.server.request("GET", "/tests/doctored", headers=h).status, 200)
        # the row moves to clinic dc2 behind the service's back; its document still says dc1
        run_sql(self.db, "UPDATE tests SET clinic_id = 'dc2' WHERE test_id = 'doctored'")
        r = self.server.request("GET", "/tests/doctored", headers=h)
        self.assertEqual((r.status, r.body),
                         (404, self.server.request("GET", "/tests/no-such-id", headers=h).body))
        self.assertEqual(self.req("rall", "GET", "/tests/doctored").status, 200)
        entry = [e for e in self.trail() if e["request_id"] == r.headers["x-request-id"]][0]
        self.assertEqual((entry["clinic_id"], entry["outcome"]), ("dc2", 404))

    def test_output_escapes_what_unicode_line_readers_take_for_line_breaks(self):
        # U+2028, U+2029 and NEL are text in a result, but raw in JSON they split a line for
        # Python's splitlines or a JavaScript reader: every output writes them as \\uXXXX.
        result = "one\u2028two\u2029three\x85four"
        r = self.req("wall", "POST", "/tests", record("sep-1", clinic="c1", result=result))
        self.assertEqual(r.status, 201, r)
        for path in ("/tests/sep-1", "/tests?clinic_id=c1"):
            body = self.req("r1", "GET", path).body
            for raw in ("\u2028", "\u2029", "\x85"):
                self.assertNotIn(raw.encode(), body, path)
        self.assertEqual(self.req("r1", "GET", "/tests/sep-1").json()["test"]["result"], result)
        # a raw U+2028 in a request's path reaches the app's log line as an escape
        reply = self.server.raw(b"GET /nope/a\xe2\x80\xa8b\xc2\x85 HTTP/1.1\r\nHost: localhost\r\n"
                                b"Connection: close\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 40"), reply[:100])
        self.assertTrue(wait_for(lambda: any(l.get("path") == "/nope/a\u2028b\x85"
                                             for l in self.server.json_lines("app.log"))))
        # a key name may hold one (names are free text): `keys list` still prints a line per key
        admin("keys", "create", "--db", self.db, "--name", "two\u2028lines", "--scope", "read:c9")
        _, listed = admin("keys", "list", "--db", self.db)
        self.assertIn("two\u2028lines", [k["name"] for k in listed])

    def test_admin_commands_never_create_a_database(self):
        typo = os.path.join(self.server.data_dir, "typo.db")
        for args in (("keys", "list"), ("audit", "verify"),
                     ("keys", "create", "--name", "x", "--scope", "read:c1")):
            p = subprocess.run([APP_BIN, *args[:2], "--db", typo, *args[2:]],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 1, args)
            self.assertIn("no database", p.stderr)
            self.assertFalse(os.path.exists(typo))
        if PG_HOST:  # the same for a URL naming a database that does not exist
            name = f"tdapi_typo_{os.getpid()}"
            for args in (("keys", "list"), ("audit", "verify"),
                         ("keys", "create", "--name", "x", "--scope", "read:c1")):
                p = subprocess.run([APP_BIN, *args[:2], "--db", pg_url(name), *args[2:]],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 1, (args, p.stderr))
                self.assertEqual(psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'").strip(), "0")

    def test_denials_are_logged_with_the_key_id_and_counted_and_no_token_is_logged(self):
        r = self.req("r1", "POST", "/tests", record("denied-write", clinic="c1"))
        self.assert_error(r, 403)
        rid = r.headers["x-request-id"]
        self.assertTrue(wait_for(lambda: any(l.get("request_id") == rid for l in self.server.json_lines("app.log"))))
        line = [l for l in self.server.json_lines("app.log") if l.get("request_id") == rid][0]
        self.assertEqual((line["status"], line["key_id"]), (403, self.keys["r1"]["key_id"]))
        metrics = self.req("met", "GET", "/metrics").body.decode()
        self.assertRegex(metrics, r'tdapi_auth_denials_total\{status="403",reason="forbidden"\} [1-9]')
        self.assertRegex(metrics, r'tdapi_auth_denials_total\{status="401",reason="[a-z_]+"\} [0-9]')
        for name in ("app.log", "access.log", "nginx-error.log"):
            text = self.server.read_log(name).decode(errors="replace")
            for k in self.keys.values():
                secret = k["token"].split("_")[2]
                self.assertNotIn(secret, text, name)
            self.assertNotIn("P-sec-c1", text, name)


class FailedAuthentication(unittest.TestCase):
    """Made-up tokens and wrong secrets: as anonymous as no token (the per-address limit of
    ANON_RATE/ANON_BURST, then 429), counted in metrics, and in the audit trail as one tally per
    address and minute instead of an entry per request."""

    def test_made_up_tokens_and_wrong_secrets_are_limited_and_tallied_not_appended(self):
        # 1 request a minute after a burst of 5: the 60 failures below take well under a minute.
        server = Server(AUTH="on", ANON_RATE="1r/m", ANON_BURST="5")
        with server:
            db = database_target(server)
            keys = {}
            for name, scope in (("real", "read:c1"), ("met", "metrics")):
                keys[name] = admin("keys", "create", "--db", db, "--name", name, "--scope", scope)[1][0]
            real = keys["real"]
            wrong = "Bearer tdk_" + real["key_id"] + "_" + "0" * 64
            statuses = []
            for i in range(60):
                made_up = "Bearer tdk_" + os.urandom(8).hex() + "_" + os.urandom(32).hex()
                r = server.request("GET", "/tests?clinic_id=c1",
                                   headers={"Authorization": wrong if i % 3 == 0 else made_up})
                statuses.append(r.status)
                if r.status == 429:
                    self.assertEqual(r.json()["status"], "error")
                    self.assertTrue(r.headers.get("retry-after", "").isdigit(), r.headers)
            print(f"\n60 failed authentications from one address: {statuses.count(401)} x 401, "
                  f"{statuses.count(429)} x 429", file=sys.stderr)
            self.assertEqual(statuses[:5], [401] * 5)
            self.assertEqual(set(statuses[5:]), {429}, statuses)
            # A real key from the same address is still served: only failures are limited.
            ok = server.request("GET", "/tests?clinic_id=c1",
                                headers={"Authorization": "Bearer " + real["token"]})
            self.assertEqual(ok.status, 200, ok)
            metrics = server.request("GET", "/metrics",
                                     headers={"Authorization": "Bearer " + keys["met"]["token"]}).body.decode()
            self.assertRegex(metrics, r'tdapi_auth_denials_total\{status="429",reason="auth_rate_limited"\} 55\b')
            self.assertRegex(metrics, r'tdapi_auth_denials_total\{status="401",reason="unknown_key"\} 5\b')
            # The tallies are written when their minute is over, or at the latest on a stop.
            self.assertEqual(server.stop(), 0)
            _, entries = admin("audit", "export", "--db", db)
            self.assertFalse([e for e in entries if e["outcome"] in (401, 429) and e["action"] != "auth_failed"])
            # A wrong secret is never recorded under the real key.
            self.assertFalse([e for e in entries if e["key_id"] == real["key_id"] and e["outcome"] != 200])
            tallies = [e for e in entries if e["action"] == "auth_failed"]
            self.assertTrue(1 <= len(tallies) <= 2, tallies)  # one per address and minute
            self.assertEqual(sum(e["detail"]["failures"] for e in tallies), 60)
            self.assertEqual(sum(e["detail"]["limited"] for e in tallies), 55)
            self.assertEqual(sum(e["detail"]["reasons"].get("wrong_secret", 0) for e in tallies), 20)
            for e in tallies:
                self.assertEqual((e["key_id"], e["outcome"], e["detail"]["remote_addr"]),
                                 ("unauthenticated", 401, "127.0.0.1"))
                self.assertLessEqual(len(e["detail"]["key_ids"]), 4)
            self.assertEqual(admin("audit", "verify", "--db", db)[0], 0)


    def test_wrong_secrets_for_a_real_key_id_do_not_use_up_that_keys_rate(self):
        # Key ids are public (logs, the audit trail): guessing at a key's secret must not
        # exhaust the key's own allowance (KEY_RATE/KEY_BURST) for its holder.
        with Server(AUTH="on", KEY_RATE="1r/m", KEY_BURST="3") as server:
            key = admin("keys", "create", "--db", database_target(server), "--name", "k",
                        "--scope", "read:c1")[1][0]
            wrong = "Bearer tdk_" + key["key_id"] + "_" + "0" * 64
            for _ in range(6):
                self.assertIn(server.request("GET", "/tests?clinic_id=c1", headers={"Authorization": wrong}).status,
                              (401, 429))
            r = server.request("GET", "/tests?clinic_id=c1", headers={"Authorization": "Bearer " + key["token"]})
            self.assertEqual(r.status, 200, r)

if __name__ == "__main__":
    unittest.main(verbosity=2)
