#!/usr/bin/env python3
"""test_tls.py: transport security and the listener rules: HTTPS only with TLS_CERT/TLS_KEY
(TLS 1.2 and 1.3, HSTS; TLS 1.0 and 1.1 refused), a throwaway CA made with openssl; AUTH=off
and plaintext refused on a non-loopback LISTEN; rate limits per key answered 429 with
Retry-After; security headers on every answer."""

import http.client
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, database_target, free_port, record, wait_for  # noqa: E402


def make_ca_and_cert(d):
    """A throwaway CA and a certificate for 127.0.0.1/localhost signed by it."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    key, csr, crt = os.path.join(d, "srv.key"), os.path.join(d, "srv.csr"), os.path.join(d, "srv.crt")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
        "-days", "2", "-subj", "/CN=testdata-api test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    return ca_crt, crt, key


def run_sh(env, timeout=30):
    """Runs scripts/run.sh expecting it to refuse; returns (exit status, output). Should it serve
    instead, it is stopped with SIGTERM (which stops the app and nginx it started) and the test
    fails on its exit status."""
    p = subprocess.Popen([os.path.join(ROOT, "scripts", "run.sh")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()
        out, _ = p.communicate(timeout=30)
        return "served instead of refusing", out
    return p.returncode, out


def service_user():
    """The user run.sh (as root) runs the service as, made as run.sh makes it if missing."""
    try:
        return pwd.getpwnam("testdata-api")
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", "testdata-api"], check=True)
        return pwd.getpwnam("testdata-api")


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="tdapi-tls-")
        cls.ca, cls.crt, cls.key = make_ca_and_cert(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def https(self, port, method, path, body=None, headers=None, ctx=None):
        ctx = ctx or ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=15)
        try:
            hdrs = dict(headers or {})
            if body is not None:
                body = json.dumps(body)
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def test_https_only_modern_protocols_and_hsts(self):
        port = free_port()
        with Server(LISTEN=f"127.0.0.1:{port}", TLS_CERT=self.crt, TLS_KEY=self.key,
                    TLS_CA=self.ca) as s:
            status, headers, _ = self.https(port, "POST", "/tests", record("tls-1"))
            self.assertEqual(status, 201)
            self.assertIn("max-age=", headers.get("strict-transport-security", ""))
            self.assertEqual(headers.get("x-content-type-options"), "nosniff")
            status, headers, body = self.https(port, "GET", "/tests?clinic_id=c1")
            self.assertEqual(status, 200)
            self.assertEqual(headers.get("cache-control"), "no-store")
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = ssl.create_default_context(cafile=self.ca)
                ctx.minimum_version = ctx.maximum_version = version
                self.assertEqual(self.https(port, "GET", "/healthz", ctx=ctx)[0], 200, version)
            # TLS 1.0 and 1.1: the client is allowed them (security level 0), the server refuses
            for flag in ("-tls1", "-tls1_1"):
                p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag,
                                    "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", self.ca],
                                   input="", capture_output=True, text=True, timeout=30)
                self.assertNotEqual(p.returncode, 0, flag)
                self.assertNotIn("BEGIN CERTIFICATE", p.stdout, flag)
            # plain HTTP to the TLS port: a JSON error, never data
            raw = s.raw(b"GET /tests?clinic_id=c1 HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertIn(b"application/json", raw)
            self.assertNotIn(b"tls-1", raw)

    def test_non_loopback_listener_rules(self):
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=tempfile.mkdtemp(dir=self.tmp.name),
                   LISTEN=f"0.0.0.0:{free_port()}")
        rc, out = run_sh(dict(env, AUTH="off", ALLOW_PLAINTEXT="1"))
        self.assertNotEqual(rc, 0)
        self.assertIn("AUTH=off", out)
        rc, out = run_sh(env)  # AUTH defaults to on; no certificate and no ALLOW_PLAINTEXT
        self.assertNotEqual(rc, 0)
        self.assertIn("TLS_CERT", out)
        rc, out = run_sh(dict(env, LISTEN="127.0.0.1:" + str(free_port()), TLS_CERT=self.crt))
        self.assertNotEqual(rc, 0)  # a certificate without its key
        self.assertIn("TLS_KEY", out)

    @unittest.skipUnless(os.geteuid() == 0, "the boundary is root vs the service user")
    def test_as_root_tls_files_are_copied_only_from_where_only_root_can_change_them(self):
        # As root run.sh copies TLS_CERT and TLS_KEY where nginx's workers (the service user)
        # read them: a path the service user can change would have it given any root file.
        svc = service_user()
        top = tempfile.mkdtemp(dir=self.tmp.name)
        os.chmod(top, 0o755)
        secret = os.path.join(top, "secret")
        with open(secret, "w") as f:
            f.write("ROOT-ONLY-SECRET\n")
        os.chmod(secret, 0o600)
        theirs = os.path.join(top, "svc-tls")  # a directory of the service user's own
        os.mkdir(theirs)
        os.chown(theirs, svc.pw_uid, svc.pw_gid)
        planted = os.path.join(theirs, "key.pem")  # its link to a root file
        os.symlink(secret, planted)
        os.lchown(planted, svc.pw_uid, svc.pw_gid)
        sticky = os.path.join(top, "sticky")  # like /tmp: its link there, to a root file
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)
        planted_in_sticky = os.path.join(sticky, "key.pem")
        os.symlink(secret, planted_in_sticky)
        os.lchown(planted_in_sticky, svc.pw_uid, svc.pw_gid)
        open_dir = os.path.join(top, "open")  # writable by anyone, not sticky
        os.mkdir(open_dir)
        os.chmod(open_dir, 0o777)
        in_open = os.path.join(open_dir, "key.pem")
        shutil.copy(self.key, in_open)
        writable = os.path.join(top, "writable.pem")  # the key itself writable by others
        shutil.copy(self.key, writable)
        os.chmod(writable, 0o666)
        linked = os.path.join(top, "linked.pem")  # a second name of a root file (a hard link)
        os.link(secret, linked)
        env = dict(os.environ, APP_BIN=APP_BIN, DATA_DIR=tempfile.mkdtemp(dir=self.tmp.name),
                   LISTEN=f"127.0.0.1:{free_port()}", TLS_CERT=self.crt)
        for key, why in ((planted, f"{theirs} is testdata-api's, not root's"),
                         (planted_in_sticky, f"{planted_in_sticky} is testdata-api's, in {sticky}"),
                         (in_open, f"{open_dir} is writable by others than root"),
                         (writable, "must be root's and not writable by group or others"),
                         (linked, "has 2 names (hard links)")):
            rc, out = run_sh(dict(env, TLS_KEY=key))
            self.assertEqual(rc, 78, (key, out))
            self.assertIn(f"TLS_KEY={key}: ", out)
            self.assertIn(why, out)
            self.assertNotIn("ROOT-ONLY-SECRET", out)
        # certbot's layout: live/NAME/*.pem are links into ../../archive/NAME/, all root's
        le = os.path.join(top, "letsencrypt")
        for d in ("archive/x", "live/x"):
            os.makedirs(os.path.join(le, d), mode=0o755)
        for d in (le, le + "/archive", le + "/archive/x", le + "/live", le + "/live/x"):
            os.chmod(d, 0o755)
        shutil.copy(self.crt, os.path.join(le, "archive/x/fullchain1.pem"))
        shutil.copy(self.key, os.path.join(le, "archive/x/privkey1.pem"))
        os.chmod(os.path.join(le, "archive/x/privkey1.pem"), 0o600)
        os.symlink("../../archive/x/fullchain1.pem", os.path.join(le, "live/x/fullchain.pem"))
        os.symlink("../../archive/x/privkey1.pem", os.path.join(le, "live/x/privkey.pem"))
        port = free_port()
        with Server(LISTEN=f"127.0.0.1:{port}", TLS_CERT=os.path.join(le, "live/x/fullchain.pem"),
                    TLS_KEY=os.path.join(le, "live/x/privkey.pem"), TLS_CA=self.ca):
            self.assertEqual(self.https(port, "GET", "/healthz")[0], 200)

    def test_plaintext_behind_a_proxy_with_auth_on_by_default(self):
        port = free_port()
        # listens on every address; traffic goes to the loopback address only
        with Server(LISTEN=f"0.0.0.0:{port}", ALLOW_PLAINTEXT="1") as s:
            r = s.request("GET", "/tests?clinic_id=c1")
            self.assertEqual(r.status, 401)  # AUTH is on by default off loopback
            self.assertTrue(wait_for(lambda: "plaintext" in s.read_log("app.log").decode() + s.run_output(), 10))

    def test_rate_limit_per_key_is_429_json_with_retry_after(self):
        with Server(AUTH="on", KEY_RATE="2r/s", KEY_BURST="3") as s:
            db = database_target(s)
            out = subprocess.run([APP_BIN, "keys", "create", "--db", db, "--name", "t", "--scope",
                                  "read:*"], capture_output=True, text=True, check=True).stdout
            h = {"Authorization": "Bearer " + json.loads(out)["token"]}
            replies = [s.request("GET", "/tests?clinic_id=c1", headers=h) for _ in range(12)]
            limited = [r for r in replies if r.status == 429]
            self.assertTrue(limited, [r.status for r in replies])
            self.assertTrue(any(r.status == 200 for r in replies))
            self.assertEqual(limited[0].json()["status"], "error")
            self.assertTrue(limited[0].headers.get("retry-after", "").isdigit(), limited[0].headers)
            # another key is not limited by the first one's traffic
            out = subprocess.run([APP_BIN, "keys", "create", "--db", db, "--name", "u", "--scope",
                                  "read:*"], capture_output=True, text=True, check=True).stdout
            h2 = {"Authorization": "Bearer " + json.loads(out)["token"]}
            self.assertEqual(s.request("GET", "/tests?clinic_id=c1", headers=h2).status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
