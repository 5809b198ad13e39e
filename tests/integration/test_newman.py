#!/usr/bin/env python3
"""test_newman.py: runs the Postman collection with newman against a freshly started service."""

import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import ROOT, Server  # noqa: E402

NEWMAN = os.path.join(ROOT, "tests", "api-tools", "node_modules", ".bin", "newman")


class Newman(unittest.TestCase):
    def test_postman_collection_passes(self):
        with Server() as s:
            p = subprocess.run([NEWMAN, "run", os.path.join(ROOT, "postman", "testdata-api.postman_collection.json"),
                                "--env-var", f"baseUrl=http://127.0.0.1:{s.port}", "--color", "off",
                                "--disable-unicode"], capture_output=True, text=True, timeout=300)
            print(p.stdout[-3000:])
            self.assertEqual(p.returncode, 0, p.stdout[-6000:] + p.stderr[-2000:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
