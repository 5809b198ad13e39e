#!/usr/bin/env python3
"""test_storage_errors.py: a storage error in the middle of a streamed listing, produced for real
(pages of a big clinic's index damaged while the service runs), must reach the client through
nginx as a broken response, never as a clean 200 with truncated JSON."""

import http.client
import os
import sqlite3
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, record, wait_for  # noqa: E402

ROWS = 4000


class MidStreamFailure(unittest.TestCase):
    def test_a_listing_that_fails_mid_stream_is_a_broken_response(self):
        with Server() as s:
            for start in range(0, ROWS, 1000):
                batch = [record(f"big-{i}", clinic="big", result="r" * 600 + str(i))
                         for i in range(start, start + 1000)]
                r = s.request("POST", "/tests/batch", batch)
                self.assertEqual(r.status, 201, r)
            whole = s.request("GET", "/tests?clinic_id=big")
            self.assertEqual(whole.status, 200)
            self.assertEqual(whole.json()["count"], ROWS)

            # Damage the second half of the leaf pages of the listing's index, on disk.
            db = os.path.join(s.data_dir, "testdata.db")
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            leaves = [row[0] for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'tests_by_clinic' AND pagetype = 'leaf'"
                " ORDER BY path")]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.close()
            self.assertGreater(len(leaves), 100)
            with open(db, "r+b") as f:
                for pageno in leaves[len(leaves) // 2:]:
                    f.seek((pageno - 1) * page_size)
                    f.write(b"\xab" * page_size)

            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            try:
                conn.request("GET", "/tests?clinic_id=big")
                resp = conn.getresponse()
                self.assertEqual(resp.status, 200)  # the head went out before the damage was met
                self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
                with self.assertRaises(http.client.IncompleteRead) as broken:
                    resp.read()
                partial = broken.exception.partial
                self.assertTrue(partial.startswith(b'{"status":"success","clinic_id":"big","tests":['))
                self.assertGreater(len(partial), 32 * 1024)
            finally:
                conn.close()

            def aborted_lines():
                return [l for l in s.json_lines("app.log")
                        if l.get("event") == "request" and l.get("reason") == "response_aborted"]
            self.assertTrue(wait_for(lambda: aborted_lines(), 10), "no response_aborted log line")
            line = aborted_lines()[0]
            self.assertEqual(line["level"], "error")
            self.assertEqual(line["status"], 200)
            self.assertIn("corrupt", line["detail"])
            # The connection was dropped, not the service: a request that needs no damaged page
            # is answered.
            self.assertEqual(s.request("GET", "/tests/big-0").status, 200)


if __name__ == "__main__":
    unittest.main()
