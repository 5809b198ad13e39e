#!/usr/bin/env python3
"""test_smoke.py: runs scripts/smoke.sh (curl) against a freshly started service, in the local
mode and with AUTH=on and a key."""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, database_target  # noqa: E402


class Smoke(unittest.TestCase):
    def test_smoke_script_passes(self):
        with Server() as s:
            env = dict(os.environ, BASE_URL=f"http://127.0.0.1:{s.port}")
            p = subprocess.run([os.path.join(ROOT, "scripts", "smoke.sh")], env=env,
                               capture_output=True, text=True, timeout=60)
            print(p.stdout)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("smoke: all passed", p.stdout)

    def test_smoke_script_passes_with_auth_on(self):
        with Server(AUTH="on") as s:
            out = subprocess.run([APP_BIN, "keys", "create", "--db", database_target(s),
                                  "--name", "smoke", "--scope", "read:*", "--scope", "write:*"],
                                 capture_output=True, text=True, check=True, timeout=60).stdout
            env = dict(os.environ, BASE_URL=f"http://127.0.0.1:{s.port}", TOKEN=json.loads(out)["token"])
            p = subprocess.run([os.path.join(ROOT, "scripts", "smoke.sh")], env=env,
                               capture_output=True, text=True, timeout=60)
            print(p.stdout)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("ok   no_token (401)", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
