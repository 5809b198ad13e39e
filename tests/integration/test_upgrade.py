#!/usr/bin/env python3
"""test_upgrade.py: databases of other releases under the service built now (scripts/run.sh,
SQLite). tests/fixtures/schema-v<N>.db were written by the release that made schema N
(tests/fixtures/make_schema_fixture.py): every one must open, be migrated if older (a verified
copy taken first, the migration in one transaction), and serve its tests with working cursors,
its keys and a verifying audit chain. A database of a newer schema is refused (exit 78)."""

import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, record  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CURRENT_SCHEMA = 7  # the schema this build creates (SqliteStore::kSchemaVersion)


def fixtures():
    """(database, manifest) of every schema fixture, oldest first."""
    found = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "schema-v*.db"))):
        with open(path[:-3] + ".json") as f:
            found.append((path, json.load(f)))
    return sorted(found, key=lambda pm: pm[1]["schema_version"])


def sql(path, statement):
    db = sqlite3.connect(path)
    try:
        with db:
            rows = db.execute(statement).fetchall()
        return rows[0][0] if rows else None
    finally:
        db.close()


def walk(server, clinic, headers=None, limit=2):
    ids, cursor = [], None
    for _ in range(1000):
        path = f"/tests?clinic_id={clinic}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = server.request("GET", path, headers=headers)
        assert r.status == 200, r
        ids += [t["test_id"] for t in r.json()["tests"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("the cursor never ended")


class Upgrade(unittest.TestCase):
    def setUp(self):
        self.found = fixtures()
        self.assertTrue(self.found, f"no schema fixture in {FIXTURES}")
        self.tmp = tempfile.mkdtemp(prefix="tdapi-it-upgrade-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def data_dir_with(self, fixture, name):
        data_dir = os.path.join(self.tmp, name)
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        shutil.copyfile(fixture, db)
        return data_dir, db

    def check_date_ranges(self, server, clinic, headers):
        """created_* and updated_* on the migrated rows (created ranges as ranges of seq between
        the marks the migration wrote, with the tests out of order; updated ones also from the
        index of corrected tests) list what a filter of the whole listing finds, at every bound
        the clinic's own created_at and updated_at values give."""
        r = server.request("GET", f"/tests?clinic_id={clinic}&limit=1000", headers=headers)
        self.assertEqual(r.status, 200, r)
        tests = r.json()["tests"]
        for field in ("created_at", "updated_at"):
            prefix = field.split("_")[0]
            for bound in sorted({t[field] for t in tests}):
                for name, keep in ((prefix + "_from", lambda t: t[field] >= bound),
                                   (prefix + "_to", lambda t: t[field] < bound)):
                    got = server.request("GET", f"/tests?clinic_id={clinic}&{name}={bound}&limit=1000",
                                         headers=headers)
                    self.assertEqual(got.status, 200, got)
                    self.assertEqual([t["test_id"] for t in got.json()["tests"]],
                                     [t["test_id"] for t in tests if keep(t)], (clinic, name, bound))

    def test_every_fixture_opens_and_serves_with_its_keys_and_audit_trail(self):
        for fixture, manifest in self.found:
            with self.subTest(fixture=os.path.basename(fixture)):
                data_dir, db = self.data_dir_with(fixture, "v%d" % manifest["schema_version"])
                tokens = manifest["tokens"]
                with Server(data_dir=data_dir, AUTH="on") as s:
                    reader = {"Authorization": "Bearer " + tokens["reader"]}
                    for clinic, ids in manifest["clinics"].items():
                        self.assertEqual(walk(s, clinic, reader), ids, clinic)
                        self.check_date_ranges(s, clinic, reader)
                    r = s.request("GET", "/tests/" + manifest["clinics"]["c1"][0], headers=reader)
                    self.assertEqual(r.status, 200)
                    self.assertIn("\n", r.json()["test"]["result"])
                    revoked = {"Authorization": "Bearer " + tokens["revoked"]}
                    self.assertEqual(s.request("GET", "/tests?clinic_id=c1", headers=revoked).status, 401)
                    writer = {"Authorization": "Bearer " + tokens["writer"]}
                    self.assertEqual(s.request("POST", "/tests", record("new-1"), writer).status, 201)
                    self.assertEqual(s.request("POST", "/tests", record(manifest["clinics"]["c1"][0]),
                                               writer).status, 409)
                    self.assertEqual(walk(s, "c1", reader)[-1], "new-1")
                    auditor = {"Authorization": "Bearer " + tokens["auditor"]}
                    self.assertEqual(s.request("GET", "/audit?limit=3", headers=auditor).status, 200)
                v = subprocess.run([APP_BIN, "audit", "verify", "--db", db], capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
                self.assertGreater(json.loads(v.stdout)["verified_entries"], manifest["audit_entries"])
                current = sql(db, "PRAGMA user_version")
                self.assertGreaterEqual(current, manifest["schema_version"])
                copies = glob.glob(db + ".pre-migration-v*")
                self.assertEqual(len(copies), 0 if current == manifest["schema_version"] else 1)

    def test_a_database_of_a_newer_schema_is_refused(self):
        fixture, manifest = self.found[-1]
        data_dir, db = self.data_dir_with(fixture, "newer")
        newer = max(manifest["schema_version"], CURRENT_SCHEMA) + 1  # newer than this build knows
        sql(db, f"PRAGMA user_version = {newer}")
        with open(db, "rb") as f:
            before = f.read()
        s = Server(data_dir=data_dir)
        try:
            s.start(wait=False)
            self.assertEqual(s.proc.wait(60), 78, s.run_output())
        finally:
            s.__exit__(None, None, None)
        failed = [e for e in s.json_lines("app.log") if e.get("event") == "startup_failed"]
        self.assertEqual(len(failed), 1, s.read_log("app.log"))
        self.assertIn(f"schema version {newer}", failed[0]["detail"])
        self.assertIn("newer release", failed[0]["detail"])
        with open(db, "rb") as f:
            self.assertEqual(f.read(), before, "the newer database was changed")
        self.assertEqual(glob.glob(db + ".pre-migration-*"), [])

    def test_an_older_database_is_copied_first_then_migrated(self):
        # Schema 2 as the release before the keys and the audit trail had it: today's fixture
        # without what migration 2 -> 3 adds.
        fixture, manifest = next((f, m) for f, m in self.found if m["schema_version"] == 3)
        data_dir, db = self.data_dir_with(fixture, "v2")
        sql(db, "DROP TABLE audit")
        sql(db, "DROP TABLE api_keys")
        sql(db, "PRAGMA user_version = 2")
        with Server(data_dir=data_dir) as s:
            for clinic, ids in manifest["clinics"].items():
                self.assertEqual(walk(s, clinic), ids, clinic)
            self.assertEqual(s.request("POST", "/tests", record("after-upgrade")).status, 201)
            events = {e.get("event"): e for e in s.json_lines("app.log")}
        self.assertIn("schema_backup", events, s.read_log("app.log"))
        self.assertIn("schema_migrated", events)
        copies = glob.glob(db + ".pre-migration-v2-*")
        self.assertEqual(len(copies), 1)
        self.assertIn(copies[0], events["schema_backup"]["detail"])
        self.assertEqual(events["schema_backup"]["count"], manifest["tests"])
        self.assertEqual(sql(copies[0], "PRAGMA user_version"), 2)
        self.assertEqual(sql(copies[0], "SELECT count(*) FROM tests"), manifest["tests"])
        self.assertEqual(sql(copies[0], "PRAGMA integrity_check"), "ok")
        self.assertEqual(sql(db, "PRAGMA user_version"), CURRENT_SCHEMA)
        # Every test that was there is its version 1 (and the one created since, its own).
        self.assertEqual(sql(db, "SELECT count(*) FROM test_versions WHERE version = 1"
                                 " AND changed_by = 'unknown'"), manifest["tests"])
        # The migrated database takes keys and audits again.
        key = subprocess.run([APP_BIN, "keys", "create", "--db", db, "--name", "after", "--scope",
                              "read:*"], capture_output=True, text=True, timeout=60)
        self.assertEqual(key.returncode, 0, key.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
