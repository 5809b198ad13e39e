#!/usr/bin/env python3
"""test_backup.py: `testdata-api backup` and `restore` against the real service (scripts/run.sh:
nginx + the app, SQLite): a backup taken during a POST load holds every test acknowledged before
it started and passes integrity_check; a service started on the restored copy serves them with
working cursors; restore refuses while the service runs and refuses damaged backups, changing
nothing; --to-dir/--keep rotation; PostgreSQL is refused with advice."""

import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, Server, record  # noqa: E402

IS_ROOT = os.geteuid() == 0
SERVICE_USER = "testdata-api"  # the user run.sh (as root) runs the service as and gives DATA_DIR


def cli(*args, env=None):
    return subprocess.run([APP_BIN, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def ids_in(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT test_id FROM tests")}
    finally:
        db.close()


def sql_one(path, sql):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def snapshot_dir(path):
    """Every file in a directory with a hash of its bytes: what 'nothing changed' means."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def walk_clinic(server, clinic, limit=7):
    """Every test_id of a clinic, page by page through next_cursor."""
    ids, cursor, pages = [], None, 0
    while True:
        path = f"/tests?clinic_id={clinic}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = server.request("GET", path)
        assert r.status == 200, r
        body = r.json()
        ids += [t["test_id"] for t in body["tests"]]
        cursor = body["next_cursor"]
        pages += 1
        assert pages < 10000
        if cursor is None:
            return ids


class Writers:
    """Writer threads POSTing single tests through nginx until stopped (bounded in count and
    time); every 201 is kept with the monotonic time its answer arrived."""

    def __init__(self, server, threads=6, per_thread=3000, seconds=90):
        self.server, self.acks, self.errors = server, [], []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + seconds
        self.threads = [threading.Thread(target=self.run, args=(k, per_thread)) for k in range(threads)]

    def run(self, k, count):
        for i in range(count):
            if self.stop_event.is_set() or time.monotonic() > self.deadline:
                return
            test_id = f"load-{k}-{i}"
            try:
                r = self.server.request("POST", "/tests", record(test_id, clinic=f"c{i % 3}"))
            except OSError as e:
                with self.lock:
                    self.errors.append(repr(e))
                continue
            now = time.monotonic()
            with self.lock:
                if r.status == 201:
                    self.acks.append((test_id, now))
                else:
                    self.errors.append(f"{test_id}: {r.status}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(120)

    def acked(self):
        with self.lock:
            return list(self.acks)


class BackupRestore(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tdapi-it-backup-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_backup_under_load_then_restore_and_serve(self):
        backup = os.path.join(self.tmp, "under-load.db")
        with Server() as s:
            db = os.path.join(s.data_dir, "testdata.db")
            # Some 20 MB, so the copy takes many steps while commits go on.
            preloaded = set()
            for b in range(20):
                batch = [record(f"pre-{b}-{i}", clinic=f"c{i % 3}", result="r" * 400)
                         for i in range(1000)]
                self.assertEqual(s.request("POST", "/tests/batch", batch).status, 201)
                preloaded |= {t["test_id"] for t in batch}
            with Writers(s) as w:
                self.assertTrue(wait_for_count(w, 300, 60), "the writers got too few 201s")
                started = time.monotonic()
                p = cli("backup", "--db", db, "--to", backup)
                finished = time.monotonic()
                # Writers keep going while and after the copy is made.
                wait_for_count(w, len(w.acked()) + 50, 30)
            acks = w.acked()
            self.assertEqual(w.errors, [])
            self.assertEqual(p.returncode, 0, p.stderr)
            summary = json.loads(p.stdout)
            before = {i for i, t in acks if t < started}
            during = {i for i, t in acks if started <= t <= finished}
            after = {i for i, t in acks if t > finished}
            self.assertGreater(len(after), 0, "no write was acknowledged after the backup")
            print(f"backup under load: {summary}; {len(before)} acknowledged before it, "
                  f"{len(during)} while it ran, {len(after)} after", flush=True)
            self.assertEqual(summary["restarts"], 0)
            self.assertEqual(summary["file"], backup)
            self.assertEqual(sql_one(backup, "PRAGMA integrity_check"), "ok")
            self.assertEqual(sql_one(backup, "PRAGMA journal_mode"), "delete")
            self.assertFalse(os.path.exists(backup + "-wal"))
            in_backup = ids_in(backup)
            self.assertEqual(summary["tests"], len(in_backup))
            expected = before | preloaded
            self.assertEqual(expected - in_backup, set(), "acknowledged before the backup, missing")
            self.assertEqual(in_backup & after, set(), "acknowledged after the backup, yet in it")

            # While the service runs, restore refuses and changes nothing.
            r = cli("restore", "--from", backup, "--db", db)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("the service is running", r.stderr)
            self.assertIn("Nothing was changed", r.stderr)
            leftovers = [n for n in os.listdir(s.data_dir) if "replaced" in n or "restore" in n]
            self.assertEqual(leftovers, [])
            self.assertEqual(s.request("GET", "/healthz").status, 200)

        # A new service (fresh DATA_DIR) on the restored copy serves exactly the backup.
        data_dir = os.path.join(self.tmp, "restored")
        os.mkdir(data_dir, 0o700)
        r = cli("restore", "--from", backup, "--db", os.path.join(data_dir, "testdata.db"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNone(json.loads(r.stdout)["replaced"])
        with Server(data_dir=data_dir) as s2:
            served = []
            for clinic in ("c0", "c1", "c2"):
                ids = walk_clinic(s2, clinic)
                self.assertEqual(len(ids), len(set(ids)), f"{clinic}: a test came twice")
                served += ids
            self.assertEqual(set(served), in_backup)
            one = sorted(before)[0]
            self.assertEqual(s2.request("GET", f"/tests/{one}").status, 200)
            self.assertEqual(s2.request("POST", "/tests", record("after-restore")).status, 201)
            checked = [e for e in s2.json_lines("app.log") if e.get("event") == "integrity_check"]
            self.assertEqual(checked[0]["reason"], "quick_check")
            v = cli("audit", "verify", "--db", os.path.join(data_dir, "testdata.db"))
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_cursors_and_feed_tokens_from_before_a_restore_are_refused(self):
        # A restore goes back in time: the change numbers and seqs handed out after the backup
        # are handed out again. A feed token or cursor from before the restore would name a
        # position past the changes written after it, and skip them without a word.
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        backup = os.path.join(self.tmp, "tokens.db")
        with Server(data_dir=data_dir) as s:
            self.assertEqual(s.request("POST", "/tests", record("kept")).status, 201)
            p = cli("backup", "--db", db, "--to", backup)
            self.assertEqual(p.returncode, 0, p.stderr)
            for tid in ("lost-1", "lost-2"):
                self.assertEqual(s.request("POST", "/tests", record(tid)).status, 201)
            token = s.request("GET", "/changes?clinic_id=c1").json()["next"]
            cursor = s.request("GET", "/tests?clinic_id=c1&limit=1").json()["next_cursor"]
        r = cli("restore", "--from", backup, "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        with Server(data_dir=data_dir) as s:
            for tid in ("new-1", "new-2"):
                self.assertEqual(s.request("POST", "/tests", record(tid)).status, 201)
            r = s.request("GET", "/changes?clinic_id=c1&since=" + token)
            self.assertEqual(r.status, 400, r)
            self.assertIn("since", r.json()["message"])
            r = s.request("GET", "/tests?clinic_id=c1&limit=1&cursor=" + cursor)
            self.assertEqual(r.status, 400, r)
            # The feed from its beginning has every change of the restored database.
            changes = s.request("GET", "/changes?clinic_id=c1").json()["changes"]
            self.assertEqual([c["test"]["test_id"] for c in changes], ["kept", "new-1", "new-2"])

    def test_restore_over_a_stopped_service_keeps_the_replaced_database(self):
        backup = os.path.join(self.tmp, "b.db")
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        with Server(data_dir=data_dir) as s:
            for i in range(5):
                self.assertEqual(s.request("POST", "/tests", record(f"old-{i}")).status, 201)
            self.assertEqual(cli("backup", "--db", db, "--to", backup).returncode, 0)
            for i in range(3):
                self.assertEqual(s.request("POST", "/tests", record(f"late-{i}")).status, 201)
        owner = os.stat(db).st_uid
        r = cli("restore", "--from", backup, "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        replaced = out["replaced"]
        self.assertTrue(replaced.startswith(db + ".replaced-"), replaced)
        # Kept aside whole: the tests written after the backup are in it, without a -wal.
        self.assertEqual(len(ids_in(replaced)), 8)
        self.assertFalse(os.path.exists(replaced + "-wal"))
        self.assertEqual(os.stat(db).st_uid, owner, "the restored file changed owner")
        self.assertFalse(os.path.exists(db + "-clean"), "the old clean-stop marker was kept")
        with Server(data_dir=data_dir) as s:
            self.assertEqual(sorted(walk_clinic(s, "c1", limit=2)), [f"old-{i}" for i in range(5)])
            self.assertEqual(s.request("GET", "/tests/late-0").status, 404)
            checked = [e for e in s.json_lines("app.log") if e.get("event") == "integrity_check"]
            self.assertEqual(checked[-1]["reason"], "quick_check")

    def test_restore_refuses_while_the_app_has_the_database_open(self):
        """DB_PATH in a directory of its own: no run.sh lock on that directory, so SQLite's own
        lock held by the app is what restore finds (as with the app under systemd)."""
        data_dir = os.path.join(self.tmp, "data")
        db_dir = os.path.join(data_dir, "db")
        os.makedirs(db_dir, 0o700)
        db = os.path.join(db_dir, "testdata.db")
        backup = os.path.join(self.tmp, "b.db")
        with Server(data_dir=data_dir, DB_PATH=db) as s:
            self.assertEqual(s.request("POST", "/tests", record("t1")).status, 201)
            self.assertEqual(cli("backup", "--db", db, "--to", backup).returncode, 0)
            before = sorted(os.listdir(db_dir))
            r = cli("restore", "--from", backup, "--db", db)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn(f"is open in process {s.pid_of('app')}", r.stderr)
            self.assertIn("the service is running", r.stderr)
            self.assertEqual(sorted(os.listdir(db_dir)), before)
            self.assertEqual(s.request("POST", "/tests", record("t2")).status, 201)

    def test_damaged_backups_are_refused_and_nothing_changes(self):
        backup = os.path.join(self.tmp, "good.db")
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        with Server(data_dir=data_dir) as s:
            batch = [record(f"t{i}", result="r" * 200) for i in range(400)]
            self.assertEqual(s.request("POST", "/tests/batch", batch).status, 201)
            self.assertEqual(cli("backup", "--db", db, "--to", backup).returncode, 0)
        with open(backup, "rb") as f:
            good = f.read()
        mid = len(good) // 2
        damaged = {
            "flipped.db": good[:mid - 4096] + bytes(b ^ 0xA5 for b in good[mid - 4096:mid + 4096])
            + good[mid + 4096:],
            "truncated.db": good[:mid],
            "empty.db": b"",
            "text.db": b"not a database\n" * 1000,
        }
        before = snapshot_dir(data_dir)
        for name, content in damaged.items():
            path = os.path.join(self.tmp, name)
            with open(path, "wb") as f:
                f.write(content)
            r = cli("restore", "--from", path, "--db", db)
            self.assertEqual(r.returncode, 1, f"{name}: {r.stdout} {r.stderr}")
            self.assertIn("refused", r.stderr, name)
            self.assertIn(path, r.stderr, name)
            self.assertIn("Nothing was changed", r.stderr, name)
            self.assertEqual(snapshot_dir(data_dir), before, f"{name} changed the data dir")
        with Server(data_dir=data_dir) as s:
            self.assertEqual(len(walk_clinic(s, "c1", limit=100)), 400)

    def test_to_dir_keeps_the_newest(self):
        backups = os.path.join(self.tmp, "backups")
        os.mkdir(backups, 0o700)
        with open(os.path.join(backups, "notes.txt"), "w") as f:
            f.write("not a backup")
        with Server() as s:
            db = os.path.join(s.data_dir, "testdata.db")
            made = []
            for i in range(5):
                self.assertEqual(s.request("POST", "/tests", record(f"t{i}")).status, 201)
                if i < 4:
                    p = cli("backup", "--db", db, "--to-dir", backups, "--keep", "3")
                else:  # the timer's way: everything from the environment
                    p = cli("backup", env={"DB_PATH": db, "BACKUP_DIR": backups, "BACKUP_KEEP": "3"})
                self.assertEqual(p.returncode, 0, p.stderr)
                out = json.loads(p.stdout)
                made.append(os.path.basename(out["file"]))
                self.assertEqual(out["tests"], i + 1)
                self.assertEqual(out["keep"], 3)
                time.sleep(0.01)  # names carry milliseconds
            self.assertEqual(out["removed"], [made[1]])
        self.assertEqual(sorted(os.listdir(backups)), sorted(made[2:] + ["notes.txt"]))

    @unittest.skipUnless(IS_ROOT, "root-specific (CI runs as root): root acting on the service user's files")
    def test_as_root_backup_and_restore_work_as_the_owner_of_the_data_dir(self):
        """`make backup` / `make restore` as root into DATA_DIR, which the service user owns (and
        can change under root's feet: a link swapped in for a temp name made root create any path
        holding the database, or chown a root file). The commands now work there as that user:
        what they write is the service user's, and a link it planted leads nowhere it could not
        go itself."""
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        with Server(data_dir=data_dir) as s:
            self.assertEqual(s.request("POST", "/tests", record("t1")).status, 201)
            svc = pwd.getpwnam(SERVICE_USER).pw_uid
            self.assertEqual(os.stat(data_dir).st_uid, svc)
            p = cli("backup", "--db", db, "--to-dir", os.path.join(data_dir, "backups"))
            self.assertEqual(p.returncode, 0, p.stderr)
            made = json.loads(p.stdout)["file"]
            self.assertEqual(os.stat(made).st_uid, svc, "root wrote the backup in the service user's directory")
            self.assertEqual(os.stat(os.path.dirname(made)).st_uid, svc)
        # A root-only backup (root's 0700 directory, 0600 file) restored into the service user's
        # DATA_DIR: read as root, written as the service user.
        backup = os.path.join(self.tmp, "root-only.db")
        self.assertEqual(cli("backup", "--db", db, "--to", backup).returncode, 0)
        self.assertEqual(os.stat(backup).st_uid, 0)
        # The service user plants testdata.db as a link to a root-owned database in WAL mode:
        # restore settles "the database being replaced" by name, and root used to convert
        # root's file (its header rewritten, its WAL checkpointed).
        victim_dir = os.path.join(self.tmp, "root-only")
        os.mkdir(victim_dir, 0o700)
        victim = os.path.join(victim_dir, "root.db")
        v = sqlite3.connect(victim)
        v.execute("PRAGMA journal_mode=WAL")
        v.execute("CREATE TABLE secrets (x)")
        v.commit()
        v.close()
        with open(victim, "rb") as f:
            victim_bytes = f.read()
        self.assertEqual(victim_bytes[18:20], b"\x02\x02")  # WAL mode in its header
        os.rename(db, db + ".moved")
        os.symlink(victim, db)
        os.lchown(db, svc, svc)
        r = cli("restore", "--from", backup, "--db", db)
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), victim_bytes, "root's database was changed through the link")
        self.assertEqual(os.stat(victim).st_uid, 0)
        self.assertEqual(sorted(os.listdir(victim_dir)), ["root.db"])
        self.assertEqual(r.returncode, 0, r.stderr)  # the link itself is what was replaced
        self.assertFalse(os.path.islink(db))
        self.assertEqual(os.stat(db).st_uid, svc)
        self.assertEqual(ids_in(db), {"t1"})

    @unittest.skipUnless(IS_ROOT, "root-specific (CI runs as root): root reading a --from the service user can change")
    def test_as_root_restore_never_copies_a_root_only_file_where_the_service_user_can_read_it(self):
        """Root opened --from following the service user's links and copied whatever it read into
        a temp file the service user owns in DATA_DIR before checking it was a database: a link
        planted in DATA_DIR/backups, or a hard link taken of that temp file, kept root's secret."""
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        with Server(data_dir=data_dir) as s:
            self.assertEqual(s.request("POST", "/tests", record("mine")).status, 201)
        svc = pwd.getpwnam(SERVICE_USER).pw_uid
        self.assertEqual(os.stat(data_dir).st_uid, svc)
        backups = os.path.join(data_dir, "backups")
        os.mkdir(backups, 0o700)
        os.chown(backups, svc, svc)
        root_only = os.path.join(self.tmp, "root-only")
        os.mkdir(root_only, 0o700)
        # Root's own testdata-api database (another site's, say): never the service user's.
        other = os.path.join(root_only, "other.db")
        with Server() as o:
            self.assertEqual(o.request("POST", "/tests", record("roots")).status, 201)
            self.assertEqual(cli("backup", "--db", os.path.join(o.data_dir, "testdata.db"),
                                 "--to", other).returncode, 0)
        before = snapshot_dir(data_dir)
        # 1. Through a link the service user planted: at the file, or at a directory on the way.
        at_file = os.path.join(backups, "testdata-20261201T000000.000Z.db")
        os.symlink(other, at_file)
        os.lchown(at_file, svc, svc)
        at_dir = os.path.join(backups, "site")
        os.symlink(root_only, at_dir)
        os.lchown(at_dir, svc, svc)
        for path in (at_file, os.path.join(at_dir, "other.db")):
            r = cli("restore", "--from", path, "--db", db)
            self.assertEqual(r.returncode, 1, f"{path}: {r.stdout} {r.stderr}")
            self.assertIn("symbolic link", r.stderr, path)
            self.assertIn("Nothing was changed", r.stderr, path)
            self.assertEqual(snapshot_dir(data_dir), before,
                             f"{path}: root's file was restored through a link")
        os.unlink(at_file)
        os.unlink(at_dir)
        # 2. Root-only files that are not backups, named directly: nothing of them ever lands in
        # DATA_DIR, not even while the service user hard-links every temp file it sees there.
        marker = b"ROOT-SECRET-" * 16
        text = os.path.join(root_only, "secret.txt")
        with open(text, "wb") as f:
            for _ in range(2048):
                f.write(marker * 16)
        foreign = os.path.join(root_only, "secret.db")
        f_db = sqlite3.connect(foreign)
        f_db.execute("CREATE TABLE secrets (x)")
        f_db.executemany("INSERT INTO secrets VALUES (?)", [(marker * 64,) for _ in range(2048)])
        f_db.commit()
        f_db.close()
        for path in (text, foreign):
            os.chmod(path, 0o600)
            stop = threading.Event()
            stolen = []

            def steal():
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    for name in os.listdir(data_dir):
                        if name.startswith(".testdata.db.restore-") and "stolen" not in name:
                            try:
                                os.link(os.path.join(data_dir, name),
                                        os.path.join(data_dir, f"stolen-{len(stolen)}"))
                                stolen.append(name)
                            except OSError:
                                pass
                    time.sleep(0.0002)

            thief = threading.Thread(target=steal)
            thief.start()
            try:
                r = cli("restore", "--from", path, "--db", db)
            finally:
                stop.set()
                thief.join(130)
            self.assertEqual(r.returncode, 1, f"{path}: {r.stdout} {r.stderr}")
            self.assertIn("Nothing was changed", r.stderr, path)
            for name in os.listdir(data_dir):
                full = os.path.join(data_dir, name)
                if os.path.isfile(full):
                    with open(full, "rb") as f:
                        leaked = marker in f.read()
                    self.assertFalse(leaked, f"{path}: the secret is in {name}")
            self.assertEqual(stolen, [], f"{path}: a copy was made in DATA_DIR")
        self.assertEqual(snapshot_dir(data_dir), before)
        self.assertEqual(ids_in(db), {"mine"})
        # 3. A directory on the way swapped for the service user's link while root restores: the
        # path was checked for links, then opened by name, so a swap in between led root to its
        # own database (about 1 restore in 6). It is opened one component at a time now.
        site_dir, site_lnk, site = (os.path.join(backups, n) for n in ("site-dir", "site-lnk", "site"))
        os.mkdir(site_dir, 0o700)
        os.chown(site_dir, svc, svc)
        self.assertEqual(cli("backup", "--db", db, "--to", os.path.join(site_dir, "x.db")).returncode, 0)
        shutil.copy(other, os.path.join(root_only, "x.db"))
        os.symlink(root_only, site_lnk)
        os.lchown(site_lnk, svc, svc)
        stop = threading.Event()

        def flip():
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                for name in (site_dir, site_lnk):
                    try:
                        os.rename(name, site)
                        time.sleep(0.0005)
                        os.rename(site, name)
                    except OSError:
                        pass

        flipper = threading.Thread(target=flip)
        flipper.start()
        outcomes = []
        try:
            for _ in range(40):
                r = cli("restore", "--from", os.path.join(site, "x.db"), "--db", db)
                outcomes.append(r.returncode)
                self.assertNotIn("roots", ids_in(db), f"root's own database was restored: {r.stdout}")
        finally:
            stop.set()
            flipper.join(70)
        self.assertEqual(ids_in(db), {"mine"})

    def test_keep_ranks_backups_by_what_they_hold_not_by_their_dates(self):
        """Two older backups dated a year ahead (a fast clock, or touched) outranked the genuine
        newer ones: --keep 3 removed all three of those."""
        backups = os.path.join(self.tmp, "backups")
        os.mkdir(backups, 0o700)
        with open(os.path.join(backups, "testdata-20261101T000000.000Z.db"), "w") as f:
            f.write("not a backup: never counted nor removed")
        with Server() as s:
            db = os.path.join(s.data_dir, "testdata.db")
            early = []
            for i, name in enumerate(["testdata-20270101T000000.000Z.db",
                                      "testdata-20270102T000000.000Z.db"]):
                self.assertEqual(s.request("POST", "/tests", record(f"early-{i}")).status, 201)
                self.assertEqual(cli("backup", "--db", db, "--to",
                                     os.path.join(backups, name)).returncode, 0)
                ahead = time.time() + 365 * 86400
                os.utime(os.path.join(backups, name), (ahead, ahead))
                early.append(name)
            genuine = []
            for i in range(4):
                self.assertEqual(s.request("POST", "/tests", record(f"t{i}")).status, 201)
                p = cli("backup", "--db", db, "--to-dir", backups,
                        "--keep", "3" if i == 3 else "100")
                self.assertEqual(p.returncode, 0, p.stderr)
                out = json.loads(p.stdout)
                genuine.append(os.path.basename(out["file"]))
                time.sleep(0.01)  # names carry milliseconds
        self.assertEqual(sorted(out["removed"]), sorted(early + [genuine[0]]))
        self.assertEqual(sorted(os.listdir(backups)),
                         sorted(genuine[1:] + ["testdata-20261101T000000.000Z.db"]))

    def test_an_sqlite_file_that_cannot_be_opened_is_named(self):
        """The admin commands said "cannot open (a DATABASE_URL that libpq cannot parse)" for an
        SQLite path."""
        path = os.path.join(self.tmp, "missing-dir", "testdata.db")
        for args in (["audit", "verify"], ["keys", "list"]):
            r = cli(*args, "--db", path)
            self.assertEqual(r.returncode, 1, f"{args}: {r.stdout} {r.stderr}")
            self.assertIn(f"cannot open {path}", r.stderr)
            self.assertNotIn("libpq", r.stderr)
            self.assertNotIn("DATABASE_URL", r.stderr)

    def test_keep_never_removes_the_backup_just_taken(self):
        """Files named in the future (a clock that went back, or planted) used to outrank the
        backup just taken: --keep 1 removed it, exit 0. A file that is no database is no backup:
        neither counted nor removed."""
        backups = os.path.join(self.tmp, "backups")
        os.mkdir(backups, 0o700)
        planted = "testdata-20991231T235959.000Z.db"
        with open(os.path.join(backups, planted), "w") as f:
            f.write("planted")
        older = "testdata-20990101T000000.000Z.db"
        with Server() as s:
            db = os.path.join(s.data_dir, "testdata.db")
            self.assertEqual(cli("backup", "--db", db, "--to",
                                 os.path.join(backups, older)).returncode, 0)
            self.assertEqual(s.request("POST", "/tests", record("t1")).status, 201)
            p = cli("backup", "--db", db, "--to-dir", backups, "--keep", "1")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertTrue(os.path.exists(out["file"]), "the backup just taken was removed")
        self.assertEqual(ids_in(out["file"]), {"t1"})
        self.assertEqual(out["removed"], [older])
        self.assertEqual(sorted(os.listdir(backups)), sorted([os.path.basename(out["file"]), planted]))

    def test_a_database_edited_in_place_is_refused_at_start(self):
        """A trigger named like SQLite's own (sqlite_x, written with writable_schema) drops every
        insert while the API answers 201: the service refuses to start on such a file."""
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        with Server(data_dir=data_dir) as s:
            self.assertEqual(s.request("POST", "/tests", record("t1")).status, 201)
        edit = sqlite3.connect(db)
        edit.execute("PRAGMA writable_schema=ON")
        edit.execute("INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql) VALUES "
                     "('trigger', 'sqlite_x', 'tests', 0, 'CREATE TRIGGER sqlite_x BEFORE INSERT "
                     "ON tests BEGIN SELECT RAISE(IGNORE); END')")
        edit.commit()
        edit.close()
        s = Server(data_dir=data_dir)
        try:
            s.start(wait=False)
            self.assertEqual(s.proc.wait(60), 78, s.run_output())
        finally:
            s.__exit__(None, None, None)
        failed = [e for e in s.json_lines("app.log") if e.get("event") == "startup_failed"]
        self.assertEqual(len(failed), 1, s.read_log("app.log"))
        self.assertIn("unexpected trigger sqlite_x", failed[0]["detail"])
        # The same file is refused by restore.
        r = cli("restore", "--from", db, "--db", os.path.join(self.tmp, "restored.db"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("unexpected trigger sqlite_x", r.stderr)

    def test_audit_verify_covers_every_row(self):
        """An entry with seq 0 (or below) was outside `audit verify`'s listing, which said ok,
        while backup and restore refused the same file: one verifier, every row, counts
        compared."""
        data_dir = os.path.join(self.tmp, "data")
        os.mkdir(data_dir, 0o700)
        db = os.path.join(data_dir, "testdata.db")
        with Server(data_dir=data_dir) as s:
            for i in range(3):
                self.assertEqual(s.request("POST", "/tests", record(f"t{i}")).status, 201)
        ok = cli("audit", "verify", "--db", db)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        self.assertEqual(json.loads(ok.stdout)["verified_entries"], 3)
        for seq in (0, -5):
            edit = sqlite3.connect(db)
            edit.execute("INSERT INTO audit SELECT ?, ts, request_id, key_id, action, clinic_id, "
                         "detail, outcome, prev_hash, hash FROM audit WHERE seq = 1", (seq,))
            edit.commit()
            edit.close()
            v = cli("audit", "verify", "--db", db)
            self.assertEqual(v.returncode, 1, f"seq {seq}: {v.stdout} {v.stderr}")
            self.assertEqual(json.loads(v.stdout)["status"], "broken")
            self.assertIn(f"entry {seq}", json.loads(v.stdout)["problem"])
            b = cli("backup", "--db", db, "--to", os.path.join(self.tmp, f"b{seq}.db"))
            self.assertEqual(b.returncode, 1, b.stdout + b.stderr)
            edit = sqlite3.connect(db)
            edit.execute("DELETE FROM audit WHERE seq = ?", (seq,))
            edit.commit()
            edit.close()
        self.assertEqual(cli("audit", "verify", "--db", db).returncode, 0)

    def test_postgresql_is_refused_with_advice(self):
        url = "postgresql://tdapi:secret@127.0.0.1:1/none"
        for args, env in [(["backup", "--db", url, "--to", os.path.join(self.tmp, "x.db")], None),
                          (["backup", "--to-dir", self.tmp], {"DATABASE_URL": url}),
                          (["restore", "--from", os.path.join(self.tmp, "x.db"), "--db", url], None),
                          (["restore", "--from", os.path.join(self.tmp, "x.db")], {"DATABASE_URL": url})]:
            p = cli(*args, env=env)
            self.assertEqual(p.returncode, 2, f"{args}: {p.stderr}")
            self.assertIn("pg_dump", p.stderr)
            self.assertIn("pg_basebackup", p.stderr)
            self.assertNotIn("secret", p.stderr)
        self.assertEqual(os.listdir(self.tmp), [])


def wait_for_count(writers, n, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(writers.acked()) >= n:
            return True
        time.sleep(0.02)
    return False


if __name__ == "__main__":
    unittest.main(verbosity=2)
