#!/usr/bin/env python3
"""test_readme.py: README's API tour works as written. The ```sh block under "A tour of the API"
runs in bash (set -euo pipefail) against a freshly started service (real nginx, real binary),
with one change only: the port, 127.0.0.1:5000 -> the harness's free port. Every command of the
tour is one curl call after a comment that names the status it gets ("→ 201"); curl is wrapped
to record each call's status, and the statuses must be the ones the comments name, in order."""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import ROOT, Server  # noqa: E402

TOUR_HEADING = "## A tour of the API"


def tour_block(readme_text):
    """The first ```sh block after the tour's heading, and the statuses its comments name."""
    section = readme_text.split(TOUR_HEADING, 1)
    if len(section) != 2:
        raise AssertionError("README has no %r section" % TOUR_HEADING)
    m = re.search(r"^```sh\n(.*?)^```", section[1], re.S | re.M)
    if not m:
        raise AssertionError("README's tour has no ```sh block")
    block = m.group(1)
    expected = []
    for line in block.splitlines():
        if line.startswith("#"):
            expected += [int(s) for s in re.findall(r"→ (\d{3})\b", line)]
    return block, expected


# Records each curl call's status (curl's -w to stderr) in $TOUR_STATUSES; the output is the
# command's own, so `$(curl … | jq …)` in the tour works as it does for a reader.
PRELUDE = """set -euo pipefail
curl() { command curl -w '%{stderr}%{http_code}\\n' "$@" 2>>"$TOUR_STATUSES"; }
"""


class ReadmeTour(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            self.block, self.expected = tour_block(f.read())

    def test_the_tour_runs_as_written(self):
        self.assertIn("http://127.0.0.1:5000/", self.block)
        # one status named per curl call: a command added without its status fails here
        self.assertEqual(len(re.findall(r"\bcurl\b", self.block)), len(self.expected),
                         "every curl of the tour needs a comment naming its status (→ NNN)")
        with Server() as s, tempfile.TemporaryDirectory(prefix="tdapi-readme-") as tmp:
            statuses = os.path.join(tmp, "statuses")
            script = PRELUDE + self.block.replace("127.0.0.1:5000", f"127.0.0.1:{s.port}")
            p = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                               timeout=120, env=dict(os.environ, TOUR_STATUSES=statuses))
            with open(statuses) as f:
                got = [int(line) for line in f.read().split()]
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(got, self.expected, p.stdout)
            # what the tour says it did, on the service
            history = s.request("GET", "/tests/t1/history").json()
            self.assertEqual([v["version"] for v in history["versions"]], [2, 1], history)
            self.assertEqual(s.request("GET", "/tests?clinic_id=c1").json()["count"], 3)
            # the output a reader sees holds the answers the comments quote
            self.assertIn('"test_id already exists"', p.stdout)
            self.assertIn('"current_version":2', p.stdout)
            self.assertIn('{"status":"ok"}', p.stdout)
            self.assertIn('ETag: W/"1"', p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
