#!/usr/bin/env python3
"""test_nginx_errors.py: nginx's own errors (502 app down, 504 app stuck, 413) in the API's JSON
shape with X-Request-Id, the supervisor bringing a killed app back, and nginx's error log
recording the failed connects without the query strings that quote patient ids."""

import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, record, stopped, wait_for  # noqa: E402


class NginxErrors(unittest.TestCase):
    def assert_json_error(self, r, status):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.headers.get("content-type"), "application/json")
        self.assertRegex(r.headers.get("x-request-id", ""), r"^[0-9a-f]{32}$")
        body = r.json()
        self.assertEqual(body["status"], "error")
        self.assertTrue(body["message"])

    def test_502_while_app_is_down_then_supervisor_restarts_it(self):
        with Server() as s:
            supervisor = s.pid_of("supervisor")
            app = s.pid_of("app")
            os.kill(supervisor, signal.SIGSTOP)  # hold the supervisor so the app stays down
            try:
                self.assertTrue(wait_for(lambda: stopped(supervisor)))
                os.kill(app, signal.SIGKILL)
                self.assertTrue(wait_for(lambda: s.request("GET", "/tests?clinic_id=c").status == 502))
                self.assert_json_error(s.request("POST", "/tests", record("down-1")), 502)
                # nginx's error log quotes the request line, query string included: it must not
                # carry a patient id from a filter.
                secret = "PATIENT-" + str(os.getpid()) + "-secret"
                # ...yet the operator sees the failed connect to the app (logged at level error).
                # (A request that found a kept-alive connection of the dead app logs a read error
                # instead, so ask until a connect has failed.)
                def refused_and_logged():
                    self.assert_json_error(s.request("GET", "/tests?clinic_id=c&patient_id=" + secret,
                                                     headers={"Referer": f"http://x/y?patient_id={secret} {secret}"}), 502)
                    return b"while connecting to upstream" in s.read_log("nginx-error.log")
                self.assertTrue(wait_for(refused_and_logged), s.read_log("nginx-error.log"))
                log = s.read_log("nginx-error.log").decode(errors="replace")
                self.assertIn("[error]", log)
                self.assertIn("connect() to unix:", log)
                self.assertIn('request: "GET /tests?[redacted] HTTP/1.1"', log)
                self.assertNotIn(secret, log)
            finally:
                os.kill(supervisor, signal.SIGCONT)
            self.assertTrue(wait_for(lambda: s.request("GET", "/tests?clinic_id=c").status == 200, timeout=20))
            self.assertNotEqual(s.pid_of("app"), app)
            self.assertEqual(s.request("POST", "/tests", record("after-restart")).status, 201)
            events = [l["event"] for l in s.json_lines("app.log")]
            self.assertIn("app_restarted", events)
            for name in ("nginx-error.log", "access.log", "app.log"):
                self.assertNotIn(secret, s.read_log(name).decode(errors="replace"), name)

    def test_504_when_app_does_not_answer(self):
        with Server(FASTCGI_READ_TIMEOUT="1s") as s:
            app = s.pid_of("app")
            os.kill(app, signal.SIGSTOP)
            try:
                self.assertTrue(wait_for(lambda: stopped(app)))
                self.assert_json_error(s.request("GET", "/tests?clinic_id=c"), 504)
            finally:
                os.kill(app, signal.SIGCONT)
            self.assertTrue(wait_for(lambda: s.request("GET", "/tests?clinic_id=c").status == 200))

    def test_413_from_nginx_before_the_app_reads_anything(self):
        with Server() as s:
            r = s.request("POST", "/tests", "x" * (64 * 1024 + 1))
            self.assert_json_error(r, 413)
            self.assertEqual(r.json()["message"], "request body is larger than 65536 bytes")
            self.assertEqual(s.request("POST", "/tests", "{" + " " * (64 * 1024 - 2) + "}").status, 400)


if __name__ == "__main__":
    unittest.main(verbosity=2)
