#!/usr/bin/env python3
"""test_newman.py: runs the Postman collection with newman against a freshly started service, in
the local mode and with AUTH=on (a key made with `testdata-api keys create`)."""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, database_target  # noqa: E402

NEWMAN = os.path.join(ROOT, "tests", "api-tools", "node_modules", ".bin", "newman")


def run_collection(port, *env_vars):
    args = [NEWMAN, "run", os.path.join(ROOT, "postman", "testdata-api.postman_collection.json"),
            "--env-var", f"baseUrl=http://127.0.0.1:{port}", "--color", "off", "--disable-unicode"]
    for v in env_vars:
        args += ["--env-var", v]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


class Newman(unittest.TestCase):
    def test_postman_collection_passes(self):
        with Server() as s:
            p = run_collection(s.port)
            print(p.stdout[-3000:])
            self.assertEqual(p.returncode, 0, p.stdout[-6000:] + p.stderr[-2000:])

    def test_postman_collection_passes_with_auth_on(self):
        with Server(AUTH="on") as s:
            out = subprocess.run([APP_BIN, "keys", "create", "--db", database_target(s),
                                  "--name", "newman", "--scope", "read:*", "--scope", "write:*",
                                  "--scope", "audit", "--scope", "metrics"],
                                 capture_output=True, text=True, check=True, timeout=60).stdout
            p = run_collection(s.port, "token=" + json.loads(out)["token"], "authOn=true")
            print(p.stdout[-3000:])
            self.assertEqual(p.returncode, 0, p.stdout[-6000:] + p.stderr[-2000:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
