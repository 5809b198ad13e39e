#!/usr/bin/env python3
"""test_config.py: the configuration as an operator meets it, through the real binary:
`testdata-api --help`, `config check` (exit 0, or 1 naming every bad value; a file with
--env-file), `config env-file`, and `serve` configured by the environment alone: it serves
FastCGI on $RUNTIME_DIRECTORY/app.sock (as under systemd), and a bad value is a start-up failure
(78) whose reason is on stderr."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import fcgi_client  # noqa: E402
from harness import Server  # noqa: E402

APP = os.environ.get("APP_BIN", "build/testdata-api")
ROOT = os.environ.get("PROJECT_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "LANG", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}
    env.update(extra)
    return env


def run(args, timeout=30, **extra):
    return subprocess.run([APP] + args, env=clean_env(**extra), capture_output=True, text=True,
                          timeout=timeout)


class Help(unittest.TestCase):
    def test_help_prints_usage_and_exits_0(self):
        for flag in ("--help", "-h", "help"):
            r = run([flag])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, "")
            for command in ("serve", "keys create", "audit verify", "migrate", "backup",
                            "restore", "config check"):
                self.assertIn("testdata-api " + command, r.stdout)

    def test_bad_usage_still_exits_2(self):
        r = run(["--no-such-option", "x"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown option --no-such-option", r.stderr)


class ConfigCheck(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-config-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_good_environment_exits_0(self):
        r = run(["config", "check"], THREADS="8", AUTH="on", DB_PATH="/srv/t.db")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK (the environment)", r.stdout)

    def test_every_bad_value_is_named_and_exits_1(self):
        r = run(["config", "check"], THREADS="lots", AUTH="maybe", LISTEN="0.0.0.0",
                BACKUP_KEEP="-1")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertIn("THREADS must be a whole number from 1 to 1024, not 'lots'", r.stderr)
        self.assertIn("AUTH must be on or off, not 'maybe'", r.stderr)
        self.assertIn("LISTEN must be ADDR:PORT", r.stderr)
        self.assertIn("BACKUP_KEEP must be a whole number from 1 to 100000, not '-1'", r.stderr)
        self.assertIn("4 problems in the environment", r.stderr)

    def test_env_file_named_with_its_line_problems(self):
        path = os.path.join(self.dir, "t.env")
        with open(path, "w") as f:
            f.write("# settings\nTHREADS=8\nTHRAEDS=9\nAUDIT_READS=sometimes\nnonsense\n")
        r = run(["config", "check", "--env-file", path])
        self.assertEqual(r.returncode, 1)
        self.assertIn(path + ":3: THRAEDS is not a setting of testdata-api", r.stderr)
        self.assertIn(path + ":5: not a NAME=value line", r.stderr)
        self.assertIn("AUDIT_READS must be crash-safe or durable, not 'sometimes'", r.stderr)
        self.assertIn("3 problems in " + path, r.stderr)
        r = run(["config", "check", "--env-file", os.path.join(self.dir, "missing.env")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read it", r.stderr)

    def test_the_environment_wins_over_the_file(self):
        path = os.path.join(self.dir, "t.env")
        with open(path, "w") as f:
            f.write("THREADS=lots\nAUTH=maybe\n")
        r = run(["config", "check", "--env-file", path], THREADS="8", AUTH="")
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("THREADS", r.stderr)
        self.assertIn("AUTH must be on or off, not 'maybe'", r.stderr)

    def test_the_package_env_file_is_generated_and_valid(self):
        r = run(["config", "env-file"])
        self.assertEqual(r.returncode, 0, r.stderr)
        path = os.path.join(self.dir, "package.env")
        with open(path, "w") as f:
            f.write(r.stdout)
        for name in ("BACKUP_DIR=/var/lib/testdata-api/backups", "BACKUP_KEEP=7", "THREADS=",
                     "DB_PATH=", "WRITE_COMMIT="):
            self.assertIn("\n" + name, r.stdout)
        r = run(["config", "check", "--env-file", path])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(ROOT, "ops", "testdata-api.env")) as f:
            self.assertEqual(f.read(), run(["config", "env-file"]).stdout,
                             "ops/testdata-api.env is not what `config env-file` prints: "
                             "regenerate it")

    def test_man_page_covers_every_command_and_setting(self):
        with open(os.path.join(ROOT, "debian", "testdata-api.8")) as f:
            page = f.read().replace("\\-", "-")
        for command in ("serve", "config check", "config resolve", "config env-file", "config table",
                        "keys create", "keys list", "keys revoke", "audit verify",
                        "audit export", "backup", "restore", "migrate", "--help", "--version"):
            self.assertRegex(page, r"(?<![\w-])%s(?![\w-])"
                             % r"\W{1,20}".join(map(re.escape, command.split())), command)
        table = run(["config", "table"]).stdout
        names = [line.split("`")[1] for line in table.splitlines()[2:]]
        self.assertIn("BACKUP_KEEP", names)
        for name in names:
            self.assertIn(name, page, "the man page does not name " + name)

    def test_docs_document_exactly_the_settings_of_the_table(self):
        table = run(["config", "table"]).stdout
        names = {line.split("`")[1] for line in table.splitlines()[2:]}
        # the settings' tables: docs/configuration.md's, and those of security.md, operations.md
        rows = []
        docs = [os.path.join(ROOT, "README.md")] + sorted(
            glob.glob(os.path.join(ROOT, "docs", "*.md")))
        for path in docs:
            with open(path) as f:
                rows += [line for line in f if line.startswith("| `")]
        documented = set()
        for row in rows:
            documented.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0]))
        self.assertEqual(sorted(documented - names), [], "in the docs, not in the table")
        self.assertEqual(sorted(names - documented), [], "in the table, not in the docs")

    def test_usage_errors_exit_2(self):
        self.assertEqual(run(["config"]).returncode, 2)
        self.assertEqual(run(["config", "check", "--env-file"]).returncode, 2)
        self.assertEqual(run(["config", "frobnicate"]).returncode, 2)


class Serve(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tdapi-serve-")
        self.runtime = os.path.join(self.dir, "run")
        os.mkdir(self.runtime, 0o700)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_serve_from_the_environment(self):
        sock = os.path.join(self.runtime, "app.sock")
        env = clean_env(RUNTIME_DIRECTORY=self.runtime, DB_PATH=os.path.join(self.dir, "t.db"),
                        THREADS="2", AUTH="off", AUDIT="off", SERVICE_USER="root")
        proc = subprocess.Popen([APP, "serve"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                self.assertIsNone(proc.poll(), "serve exited early")
                self.assertLess(time.monotonic(), deadline, "no socket")
                time.sleep(0.05)
            status, _, body = fcgi_client.request(sock, {
                "REQUEST_METHOD": "GET", "REQUEST_URI": "/healthz", "DOCUMENT_URI": "/healthz",
                "QUERY_STRING": "", "CONTENT_LENGTH": "0"})
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body), {"status": "ok"})
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn('"event":"store_opened"', err)

    def test_bad_setting_is_a_startup_failure_naming_it(self):
        r = run(["serve"], RUNTIME_DIRECTORY=self.runtime, DB_PATH=os.path.join(self.dir, "t.db"),
                THREADS="lots", AUDIT_READS="never")
        self.assertEqual(r.returncode, 78, r.stderr)
        line = json.loads(r.stderr.strip().splitlines()[-1])
        self.assertEqual(line["event"], "startup_failed")
        self.assertEqual(line["reason"], "config")
        self.assertIn("THREADS must be a whole number from 1 to 1024, not 'lots'", line["detail"])
        self.assertIn("AUDIT_READS must be crash-safe or durable, not 'never'", line["detail"])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "t.db")))


class ReasonPhrases(unittest.TestCase):
    """Through nginx, the status line carries the app's reason phrase: never `Unknown`."""

    def test_401_and_403_with_their_phrases(self):
        with Server(AUTH="on") as s:
            key = run(["keys", "create", "--db", os.path.join(s.data_dir, "testdata.db"),
                       "--name", "reader", "--scope", "read:c1"])
            self.assertEqual(key.returncode, 0, key.stderr)
            token = json.loads(key.stdout)["token"]

            def status_line(path, headers=""):
                reply = s.raw(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n"
                               % (path, headers)).encode())
                return reply.split(b"\r\n", 1)[0].decode()
            self.assertEqual(status_line("/tests?clinic_id=c1"), "HTTP/1.1 401 Unauthorized")
            self.assertEqual(status_line("/tests?clinic_id=c2",
                                         "Authorization: Bearer %s\r\n" % token),
                             "HTTP/1.1 403 Forbidden")
            self.assertEqual(status_line("/tests?clinic_id=c1",
                                         "Authorization: Bearer %s\r\n" % token),
                             "HTTP/1.1 200 OK")


if __name__ == "__main__":
    unittest.main()
