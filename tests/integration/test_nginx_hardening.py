#!/usr/bin/env python3
"""test_nginx_hardening.py: nginx in front of the app under misbehaving clients, produced for real:
clients that never read a big listing, one address trickling uploads or flooding requests, big
uploads held open, exhausted connections; nginx's own errors in the JSON shape; logs that stay
valid UTF-8 and free of patient ids.

Attacks come from 127.0.0.2 and probes from 127.0.0.1 (all of 127.0.0.0/8 is loopback). Every
loop is bounded in count and time. Latencies are measured and printed, never asserted beyond a
generous bound."""

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, database_target, record, stopped, wait_for  # noqa: E402

ATTACKER = "127.0.0.2"


def connect_from(port, source="127.0.0.1", rcvbuf=None, timeout=20):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(timeout)
    c.bind((source, 0))
    c.connect(("127.0.0.1", port))
    return c


def request_from(port, source, method, path, body=None, headers=None, timeout=15):
    """One HTTP request from a given local address; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def parse_response(data):
    """(status, headers, body) of the first HTTP response in data, or None if there is none."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    length = int(headers.get("content-length", len(rest)))
    return status, headers, rest[:length]


def read_available(sock, timeout):
    """Everything that arrives on sock within timeout seconds or until it closes."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            c = sock.recv(65536)
        except OSError:
            break
        if not c:
            break
        chunks.append(c)
        if parse_response(b"".join(chunks)) is not None:
            status, headers, body = parse_response(b"".join(chunks))
            if len(body) >= int(headers.get("content-length", 0)):
                break
    return b"".join(chunks)


def nginx_worker_rss_kb(server):
    """Sum of VmRSS of nginx's worker processes (children of its master)."""
    master = server.pid_of("nginx")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(l.split(":", 1) for l in f if ":" in l)
        except OSError:
            continue
        if int(fields["PPid"].strip()) == master and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total


def tcp_queues(port, client_ip):
    """(bytes nginx has not read yet, bytes the clients have not had acknowledged) over the
    established connections between client_ip and 127.0.0.1:port (from /proc/net/tcp)."""
    def hex_addr(ip):
        return "".join(f"{int(b):02X}" for b in reversed(ip.split(".")))
    server = f"{hex_addr('127.0.0.1')}:{port:04X}"
    unread = unacked = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, remote, state, queues = parts[1], parts[2], parts[3], parts[4]
            if state != "01":
                continue
            tx, rx = (int(x, 16) for x in queues.split(":"))
            if local == server and remote.startswith(hex_addr(client_ip) + ":"):
                unread += rx
            elif remote == server and local.startswith(hex_addr(client_ip) + ":"):
                unacked += tx
    return unread, unacked


def tcp_connections(port, client_ip):
    """Established connections from client_ip to 127.0.0.1:port, as nginx sees them."""
    server = "0100007F:%04X" % port
    client = "".join(f"{int(b):02X}" for b in reversed(client_ip.split("."))) + ":"
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f.readlines()[1:]
                   if line.split()[1] == server and line.split()[2].startswith(client) and line.split()[3] == "01")


def assert_json_error(test, status, headers, body, expected_status):
    test.assertEqual(status, expected_status, body[:300])
    test.assertEqual(headers.get("content-type"), "application/json", headers)
    test.assertRegex(headers.get("x-request-id", ""), r"^[0-9a-f]{32}$")
    doc = json.loads(body)
    test.assertEqual(doc["status"], "error")
    test.assertTrue(doc["message"])
    return doc


class SlowReaders(unittest.TestCase):
    """Item: clients that never read a big listing must not pin the app's threads."""

    def test_clients_that_do_not_read_hold_no_app_thread(self):
        with Server() as s:
            # A clinic whose listing is about 6 MB: far more than socket buffers and nginx's
            # in-memory buffers hold, so the rest has to go somewhere while nobody reads.
            big = "r" * 3000
            for b in range(2):
                batch = [record(f"big-{b}-{i}", clinic="big", result=big) for i in range(1000)]
                self.assertEqual(s.request("POST", "/tests/batch", batch).status, 201)
            full = s.request("GET", "/tests?clinic_id=big")
            self.assertEqual((full.status, full.json()["count"]), (200, 2000))
            listing_bytes = len(full.body)
            self.assertGreater(listing_bytes, 6_000_000)

            clients = []
            try:
                for _ in range(80):  # more clients than the app has threads (64 on 2 cores)
                    c = connect_from(s.port, rcvbuf=4096)
                    c.sendall(b"GET /tests?clinic_id=big HTTP/1.1\r\nHost: x\r\n\r\n")
                    clients.append(c)
                # While the app produces the 80 listings (about 500 MB, the same work as for 80
                # clients that read), a probe waits for a free thread: bounded generously.
                t = time.monotonic()
                self.assertEqual(s.request("GET", "/healthz", timeout=15).status, 200)
                during = time.monotonic() - t

                # The app finishes all 80 listings although no client has read them: nginx has
                # spooled them (send_timeout, 30 s, has not cut any client off yet).
                def app_listings_done():
                    return sum(1 for l in s.json_lines("app.log")
                               if l.get("event") == "request" and l.get("method") == "GET"
                               and l.get("path") == "/tests" and l.get("status") == 200) >= 81
                self.assertTrue(wait_for(app_listings_done, timeout=25))

                # The 80 clients still hold their unread listings: the app answers as usual.
                latencies = {"healthz": [], "post": []}
                for i in range(10):
                    t = time.monotonic()
                    r = s.request("GET", "/healthz", timeout=15)
                    latencies["healthz"].append(time.monotonic() - t)
                    self.assertEqual(r.status, 200, r)
                    t = time.monotonic()
                    r = s.request("POST", "/tests", record(f"during-{i}", clinic="small"), timeout=15)
                    latencies["post"].append(time.monotonic() - t)
                    self.assertEqual(r.status, 201, r)
                print(f"\n  80 non-reading clients of a {listing_bytes:,}-byte listing: GET /healthz "
                      f"{during * 1000:.0f} ms while the app produced them; then, while the clients "
                      f"held them unread, GET /healthz max {max(latencies['healthz']) * 1000:.0f} ms, "
                      f"POST /tests max {max(latencies['post']) * 1000:.0f} ms (10 each)", file=sys.stderr)
                spool = os.path.join(s.data_dir, "nginx", "fastcgi")
                self.assertEqual(stat.S_IMODE(os.stat(spool).st_mode), 0o700)
            finally:
                for c in clients:
                    c.close()

            # The listings cut short by their clients are failures in the access log; the one
            # read to its end is not.
            def cut_short():
                lines = [l for l in s.json_lines("access.log") if l["path"] == "/tests" and l["method"] == "GET"]
                return [l for l in lines if l["completed"] is False]
            self.assertTrue(wait_for(lambda: len(cut_short()) == 80, timeout=20))
            for line in cut_short():
                self.assertLess(line["bytes_sent"], listing_bytes)
            whole = [l for l in s.json_lines("access.log") if l["request_id"] == full.headers["x-request-id"]]
            self.assertEqual(len(whole), 1)
            self.assertIs(whole[0]["completed"], True)
            self.assertEqual(s.request("GET", "/healthz", timeout=15).status, 200)


class OneAddressMisbehaves(unittest.TestCase):
    """Item: per-address connection and rate limits; bounded body buffering."""

    def test_trickled_uploads_from_one_address_get_429_and_others_are_served(self):
        with Server(CONN_LIMIT_PER_ADDR=20) as s:
            attackers, probes = [], {"ok": 0, "failed": 0}
            stop = threading.Event()

            def probe():
                for i in range(200):
                    if stop.is_set():
                        return
                    try:
                        if i % 2:
                            status, _, _ = request_from(s.port, "127.0.0.1", "GET", "/healthz", timeout=10)
                            ok = status == 200
                        else:
                            status, _, _ = request_from(s.port, "127.0.0.1", "POST", "/tests",
                                                        record(f"probe-{i}", clinic="pr"), timeout=10)
                            ok = status == 201
                    except OSError:
                        ok = False
                    probes["ok" if ok else "failed"] += 1
                    time.sleep(0.02)

            prober = threading.Thread(target=probe)
            try:
                for _ in range(300):
                    c = connect_from(s.port, ATTACKER)
                    c.sendall(b"POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 1000\r\n\r\n{")
                    attackers.append(c)
                prober.start()
                for _ in range(3):  # one byte per connection per second, for a few seconds
                    time.sleep(1)
                    for c in attackers:
                        try:
                            c.send(b" ")
                        except OSError:
                            pass
                replies = [parse_response(read_available(c, 0.05)) for c in attackers]
            finally:
                stop.set()
                if prober.ident:
                    prober.join(30)
                for c in attackers:
                    c.close()
            limited = [r for r in replies if r and r[0] == 429]
            print(f"\n  300 trickled uploads from {ATTACKER} (limit 20): {len(limited)} answered 429; "
                  f"probes from 127.0.0.1: {probes['ok']} of {probes['ok'] + probes['failed']} served",
                  file=sys.stderr)
            self.assertGreaterEqual(len(limited), 250)
            for status, headers, body in limited:
                assert_json_error(self, status, headers, body, 429)
                self.assertEqual(headers.get("retry-after"), "1")
            total = probes["ok"] + probes["failed"]
            self.assertGreaterEqual(total, 20)
            self.assertGreaterEqual(probes["ok"] / total, 0.95)
            self.assertIn(429, [l["status"] for l in s.json_lines("access.log") if l["remote_addr"] == ATTACKER])

    def test_batch_location_answers_nginx_errors_as_json_too(self):
        # /tests/batch has its own error_page (413): the rest of the list must be there as well.
        with Server(RATE_LIMIT_PER_ADDR=1) as s:
            limited = None
            for i in range(12):
                status, headers, body = request_from(s.port, ATTACKER, "POST", "/tests/batch",
                                                     [record(f"rl-{i}")])
                if status == 429:
                    limited = (status, headers, body)
                    break
            self.assertIsNotNone(limited)
            assert_json_error(self, *limited, 429)
            self.assertEqual(limited[1].get("retry-after"), "1")

    def test_request_rate_per_address_is_limited(self):
        with Server(RATE_LIMIT_PER_ADDR=5) as s:
            statuses, limited = [], None
            for _ in range(30):
                status, headers, body = request_from(s.port, ATTACKER, "GET", "/healthz")
                statuses.append(status)
                if status == 429:
                    limited = (status, headers, body)
            self.assertIn(200, statuses)
            self.assertGreaterEqual(statuses.count(429), 15, statuses)
            assert_json_error(self, *limited, 429)
            self.assertEqual(limited[1].get("retry-after"), "1")
            # another address has its own allowance
            for i in range(3):
                self.assertEqual(request_from(s.port, "127.0.0.1", "POST", "/tests",
                                              record(f"other-{i}"))[0], 201)

    def test_big_uploads_held_open_do_not_grow_nginx_memory(self):
        with Server() as s:
            for i in range(5):  # warm the workers up
                s.request("POST", "/tests/batch", [record(f"warm-{i}")])
            before = nginx_worker_rss_kb(s)
            held = []
            try:
                for _ in range(40):  # 40 batch uploads of 4,000,000 bytes, all but 100 KB sent
                    c = connect_from(s.port, ATTACKER)
                    c.sendall(b"POST /tests/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 4000000\r\n\r\n[" + b" " * 3_899_999)
                    held.append(c)
                # nginx has read every byte sent (nothing waits in its sockets)
                self.assertTrue(wait_for(lambda: tcp_queues(s.port, ATTACKER) == (0, 0), timeout=30))
                after = nginx_worker_rss_kb(s)
            finally:
                for c in held:
                    c.close()
            grown_mb = (after - before) / 1024
            print(f"\n  nginx workers' RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB with 40 uploads of "
                  f"3.9 MB held open", file=sys.stderr)
            self.assertLess(grown_mb, 40)  # 156 MB if nginx held the bodies in memory


def files_under(server, path):
    """Files below path that nginx's workers hold open: nginx unlinks a temp file as soon as it
    has opened it, so these are what takes space there (listed with their links' "(deleted)")."""
    master, found = server.pid_of("nginx"), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                ppid = int([l for l in f if l.startswith("PPid:")][0].split()[1])
            if ppid != master:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(path.rstrip("/") + "/"):
                    found.append(target)
        except (OSError, IndexError, ValueError):
            continue
    return found


class KeylessBodies(unittest.TestCase):
    """With AUTH=on nginx checks the key before it reads a body: a client without a valid key
    gets its 401 at once and nothing of its body is buffered; nginx's temp files go to
    NGINX_TEMP_DIR (a filesystem of their own), not next to the database."""

    def test_no_or_bad_token_gets_401_before_the_body_and_nothing_is_buffered(self):
        temp = tempfile.mkdtemp(prefix="tdapi-it-nginx-temp-")
        try:
            with Server(AUTH="on", NGINX_TEMP_DIR=temp) as s:
                p = subprocess.run([APP_BIN, "keys", "create", "--db", database_target(s), "--name", "w",
                                    "--scope", "write:c1"], capture_output=True, text=True, timeout=60)
                token = json.loads(p.stdout)["token"]
                own_dir = os.path.join(s.data_dir, "nginx")
                head = (b"POST /tests/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 4000000\r\n")
                for name, auth in (("no token", b""), ("malformed", b"Authorization: Bearer nonsense\r\n"),
                                   ("made up", b"Authorization: Bearer tdk_" + os.urandom(8).hex().encode()
                                    + b"_" + os.urandom(32).hex().encode() + b"\r\n")):
                    with self.subTest(token=name):
                        c = connect_from(s.port, ATTACKER)
                        try:
                            # The headers and a few bytes of a 4 MB body: the 401 comes without
                            # waiting for the rest (client_body_timeout is 10 s).
                            c.sendall(head + auth + b"\r\n[")
                            reply = parse_response(read_available(c, 5))
                            self.assertIsNotNone(reply, "no answer before the body was complete")
                            assert_json_error(self, *reply, 401)
                            self.assertTrue(reply[1].get("www-authenticate", "").startswith("Bearer"), reply[1])
                            # More of the body: read and dropped, never stored.
                            try:
                                c.sendall(b" " * 300_000)
                            except OSError:
                                pass
                            time.sleep(0.5)
                            self.assertEqual(files_under(s, temp) + files_under(s, own_dir), [])
                        finally:
                            c.close()
                # A valid key's big batch is buffered, in NGINX_TEMP_DIR only, and accepted.
                c = connect_from(s.port, ATTACKER)
                try:
                    # Past what nginx keeps in memory (256k, and a quarter more for a body that
                    # fits then): whitespace is valid JSON.
                    body = b"[" + b" " * 400_000 + json.dumps(record("kb-1"))[:].encode() + b"]"
                    c.sendall(head.replace(b"4000000", str(len(body)).encode())
                              + b"Authorization: Bearer " + token.encode() + b"\r\n\r\n" + body[:-1])
                    self.assertTrue(wait_for(lambda: files_under(s, os.path.join(temp, "client_body")), 10))
                    self.assertEqual(files_under(s, own_dir), [])
                    c.sendall(body[-1:])
                    reply = parse_response(read_available(c, 30))
                    self.assertEqual(reply[0] if reply else None, 201, reply)
                finally:
                    c.close()
        finally:
            shutil.rmtree(temp, ignore_errors=True)


    def test_a_key_that_may_not_write_gets_403_before_the_body_and_nothing_is_buffered(self):
        temp = tempfile.mkdtemp(prefix="tdapi-it-nginx-temp-")
        try:
            with Server(AUTH="on", NGINX_TEMP_DIR=temp) as s:
                def key(*scopes):
                    args = [APP_BIN, "keys", "create", "--db", database_target(s), "--name", "k"]
                    for scope in scopes:
                        args += ["--scope", scope]
                    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
                    self.assertEqual(p.returncode, 0, p.stderr)
                    return json.loads(p.stdout)["token"]
                head = (b"POST /tests/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 4000000\r\n")
                for scopes in (("metrics",), ("read:c1", "read:*", "audit")):
                    with self.subTest(scopes=scopes):
                        c = connect_from(s.port, ATTACKER)
                        try:
                            # A few bytes of a 4 MB body: the 403 comes without waiting for the
                            # rest, and nothing of it is stored.
                            c.sendall(head + b"Authorization: Bearer " + key(*scopes).encode() + b"\r\n\r\n[")
                            reply = parse_response(read_available(c, 5))
                            self.assertIsNotNone(reply, "no answer before the body was complete")
                            doc = assert_json_error(self, *reply, 403)
                            self.assertIn("write", doc["message"])
                            try:
                                c.sendall(b" " * 300_000)
                            except OSError:
                                pass
                            time.sleep(0.5)
                            self.assertEqual(files_under(s, temp), [])
                        finally:
                            c.close()
                # A key that may write some clinic passes the check; the app's own per-clinic
                # check after the body still answers 403 naming the clinic it may not write.
                status, headers, body = request_from(s.port, "127.0.0.1", "POST", "/tests/batch",
                                                     [record("kw-1", clinic="c1")],
                                                     headers={"Authorization": "Bearer " + key("write:c2")})
                doc = assert_json_error(self, status, headers, body, 403)
                self.assertIn("c1", doc["message"])
                status, _, body = request_from(s.port, "127.0.0.1", "POST", "/tests/batch",
                                               [record("kw-2", clinic="c2")],
                                               headers={"Authorization": "Bearer " + key("write:c2")})
                self.assertEqual(status, 201, body)
                status, _, body = request_from(s.port, "127.0.0.1", "POST", "/tests/batch",
                                               [record("kw-3", clinic="c3")],
                                               headers={"Authorization": "Bearer " + key("write:*")})
                self.assertEqual(status, 201, body)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def test_the_batch_key_check_answers_429_past_the_limit_and_the_apps_own_timeout(self):
        with Server(AUTH="on", ANON_RATE="1r/m", ANON_BURST="2", FASTCGI_READ_TIMEOUT="2s") as s:
            statuses = []
            for _ in range(4):
                made_up = "Bearer tdk_" + os.urandom(8).hex() + "_" + os.urandom(32).hex()
                status, headers, body = request_from(s.port, ATTACKER, "POST", "/tests/batch", [record("kc")],
                                                     headers={"Authorization": made_up})
                statuses.append(status)
                assert_json_error(self, status, headers, body, status)
                if status == 429:
                    self.assertEqual(headers.get("retry-after"), "1")
                    self.assertIn("failed authentications", json.loads(body)["message"])
            self.assertEqual(statuses, [401, 401, 429, 429])
            # The app not answering the key check: its 504, not auth_request's 500.
            app = s.pid_of("app")
            os.kill(app, signal.SIGSTOP)
            try:
                # (SIGSTOP takes effect asynchronously: a thread still running answered 401 once)
                self.assertTrue(wait_for(lambda: stopped(app)))
                status, headers, body = request_from(s.port, "127.0.0.1", "POST", "/tests/batch", [record("kc")],
                                                     headers={"Authorization": "Bearer tdk_" + "1" * 16 + "_" + "2" * 64})
            finally:
                os.kill(app, signal.SIGCONT)
            assert_json_error(self, status, headers, body, 504)


class HalfSentHeaders(unittest.TestCase):
    """Connections that never finish their request headers are bounded per address before the
    HTTP server (nginx's stream limit_conn, TCP_CONN_LIMIT_PER_ADDR): one address cannot take
    nginx's connections, and a client on another address is served meanwhile."""

    def test_half_sent_headers_from_one_address_are_capped_and_others_are_served(self):
        with Server(TCP_CONN_LIMIT_PER_ADDR=50) as s:
            held = []
            try:
                for _ in range(300):
                    c = connect_from(s.port, ATTACKER, timeout=5)
                    try:
                        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
                    except OSError:
                        pass  # closed already: over the cap
                    held.append(c)
                # A client on another address is served while they are held.
                status, _, _ = request_from(s.port, "127.0.0.1", "GET", "/healthz", timeout=5)
                self.assertEqual(status, 200)

                def closed(c):
                    try:
                        ready, _, _ = select.select([c], [], [], 0)
                        return bool(ready) and c.recv(1) == b""
                    except OSError:
                        return True
                # nginx closes those over the cap at once (client_header_timeout is 10 s).
                wait_for(lambda: sum(map(closed, held)) >= 250, timeout=5)
                open_ = sum(1 for c in held if not closed(c))
            finally:
                for c in held:
                    c.close()
            print(f"\n  300 half-sent request headers from {ATTACKER} (cap 50): {open_} held by nginx, "
                  f"{300 - open_} closed at once; 127.0.0.1 served", file=sys.stderr)
            self.assertLessEqual(open_, 50)
            # Behind the cap, nginx still sees (and logs, and limits) the client's own address.
            self.assertTrue(wait_for(lambda: any(l["remote_addr"] == "127.0.0.1" and l["path"] == "/healthz"
                                                 for l in s.json_lines("access.log"))))
            self.assertFalse([l for l in s.json_lines("access.log") if not l["remote_addr"].startswith("127.")])


class NginxErrorLog(unittest.TestCase):
    """Item: nginx's operational errors are recorded; patient ids never are."""

    def test_connection_exhaustion_is_logged_without_query_strings(self):
        # A copy of the project whose nginx has one worker and a tiny connection pool (no
        # kept-alive app connections, so each proxied request needs a second connection). Each
        # client connection takes 3 (the stream proxy's two, the HTTP server's one) and the
        # listeners 2: with 18, the fifth held connection leaves a probe everything but its app
        # connection, so the HTTP server (which quotes the request line) is the one that runs out.
        top = tempfile.mkdtemp(prefix="tdapi-exhaust-")
        try:
            os.makedirs(os.path.join(top, "scripts"))
            os.makedirs(os.path.join(top, "docs"))
            with open(os.path.join(ROOT, "nginx.conf")) as f:
                conf = f.read()
            for old, new in ((r"worker_processes \S+;", "worker_processes 1;"),
                             (r"worker_connections \S+;", "worker_connections 18;"),
                             (r"keepalive @KEEPALIVE@;", ""), (r"fastcgi_keep_conn @KEEP_CONN@;", "")):
                conf, n = re.subn(old, new, conf)
                self.assertEqual(n, 1, old)
            with open(os.path.join(top, "nginx.conf"), "w") as f:
                f.write(conf)
            for name in ("run.sh", "dev_supervisor.py"):  # the launcher and its supervisor
                shutil.copy(os.path.join(ROOT, "scripts", name), os.path.join(top, "scripts"))
            os.makedirs(os.path.join(top, "ops"))  # run.sh renders its configs with it
            shutil.copy(os.path.join(ROOT, "ops", "render-config.py"), os.path.join(top, "ops"))
            shutil.copy(os.path.join(ROOT, "docs", "openapi.yaml"), os.path.join(top, "docs"))
            secret = "PATIENT-" + uuid.uuid4().hex
            with Server(RUN_SCRIPT=os.path.join(top, "scripts", "run.sh"), APP_BIN=APP_BIN) as s:
                held = []
                try:
                    # Hold connections (bodies never finished) one by one until a probe's request
                    # is accepted but finds no connection left for the app: nginx's alert quotes
                    # its request line.
                    for _ in range(24):
                        try:
                            request_from(s.port, "127.0.0.1", "GET", f"/tests?clinic_id=c&patient_id={secret}",
                                         timeout=2, headers={"Referer": f"http://x/?patient_id={secret} {secret}"})
                        except OSError:
                            pass
                        if b"while connecting to upstream" in s.read_log("nginx-error.log"):
                            break
                        # the probe's connection is gone on nginx's side too before the next step
                        wait_for(lambda: tcp_connections(s.port, "127.0.0.1") == 0, timeout=5)
                        c = connect_from(s.port, ATTACKER)
                        c.sendall(b"POST /tests HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                        held.append(c)
                finally:
                    for c in held:
                        c.close()
                self.assertTrue(wait_for(lambda: b"worker_connections are not enough while connecting to upstream"
                                         in s.read_log("nginx-error.log")), s.read_log("nginx-error.log"))
                self.assertEqual(s.request("GET", "/healthz").status, 200)
                log = s.read_log("nginx-error.log").decode(errors="replace")
                self.assertIn("request: \"GET /tests?[redacted] HTTP/1.1\"", log)
                for name in ("nginx-error.log", "access.log", "app.log"):
                    self.assertNotIn(secret, s.read_log(name).decode(errors="replace"), name)
                self.assertNotIn(secret, s.run_output())
        finally:
            shutil.rmtree(top, ignore_errors=True)


class AccessLogUtf8(unittest.TestCase):
    """Item: every access-log line is valid UTF-8 JSON, whatever bytes the path holds."""

    def test_paths_that_are_not_utf8_are_logged_as_valid_json(self):
        with Server() as s:
            sent = {}
            for name, line in (("encoded", b"GET /tests/%ff%fe HTTP/1.1"),
                               ("raw", b"GET /tests/\xff\xfe?clinic_id=\xff HTTP/1.1"),
                               ("utf8", b"GET /tests/%C3%BC-%E2%82%AC HTTP/1.1"),
                               ("overlong", b"GET /tests/%C0%AF HTTP/1.1"),
                               ("surrogate", b"GET /tests/%ED%A0%80 HTTP/1.1"),
                               ("quote", b"GET /tests/a%22b%5C HTTP/1.1")):
                reply = s.raw(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
                parsed = parse_response(reply)
                self.assertIsNotNone(parsed, reply)
                sent[name] = parsed[1]["x-request-id"]

            def lines():
                raw = s.read_log("access.log")
                raw.decode("utf-8")  # strict: raises on invalid UTF-8
                return {l["request_id"]: l for l in s.json_lines("access.log")}
            self.assertTrue(wait_for(lambda: all(i in lines() for i in sent.values())))
            by_id = lines()
            self.assertEqual(by_id[sent["encoded"]]["path"], "/tests/%ff%fe")
            self.assertEqual(by_id[sent["raw"]]["path"], "(path not valid UTF-8)")
            self.assertEqual(by_id[sent["utf8"]]["path"], "/tests/\u00fc-\u20ac")
            self.assertEqual(by_id[sent["overlong"]]["path"], "/tests/%C0%AF")
            self.assertEqual(by_id[sent["surrogate"]]["path"], "/tests/%ED%A0%80")
            self.assertEqual(by_id[sent["quote"]]["path"], "/tests/a\"b\\")


    def test_line_breaking_invisible_and_bidi_code_points_never_reach_the_log_raw(self):
        # Valid UTF-8, but Unicode line readers break lines at U+0085, U+2028 and U+2029, and
        # bidi controls reorder what a reader sees: logged as sent (percent-encoded) instead.
        encoded = {"u+2028": "%E2%80%A8", "u+2029": "%E2%80%A9", "u+0085": "%C2%85", "u+009b": "%C2%9B",
                   "u+200e": "%E2%80%8E", "u+200f": "%E2%80%8F", "u+202a": "%E2%80%AA", "u+202e": "%E2%80%AE",
                   "u+2066": "%E2%81%A6", "u+2069": "%E2%81%A9", "u+061c": "%D8%9C", "u+feff": "%EF%BB%BF"}
        with Server() as s:
            sent = {}
            for name, enc in encoded.items():
                reply = s.raw(b"GET /tests/t" + enc.encode() + b"x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                sent[name] = parse_response(reply)[1]["x-request-id"]
            # The same code point sent raw (not percent-encoded) in the request line.
            reply = s.raw(b"GET /tests/t\xe2\x80\xa8x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sent["raw u+2028"] = parse_response(reply)[1]["x-request-id"]
            # Neighbours that are fine stay decoded.
            reply = s.raw(b"GET /tests/t%C2%A0%E2%80%A7%E2%80%B0%D8%9Bx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sent["neighbours"] = parse_response(reply)[1]["x-request-id"]

            def lines():
                return {l["request_id"]: l for l in s.json_lines("access.log")}
            self.assertTrue(wait_for(lambda: all(i in lines() for i in sent.values())))
            by_id = lines()
            for name, enc in encoded.items():
                self.assertEqual(by_id[sent[name]]["path"], "/tests/t" + enc + "x", name)
            self.assertEqual(by_id[sent["raw u+2028"]]["path"], "(path not valid UTF-8)")
            self.assertEqual(by_id[sent["neighbours"]]["path"], "/tests/t\u00a0\u2027\u2030\u061bx")
            text = s.read_log("access.log").decode("utf-8")
            for ch in "\u0085\u009b\u2028\u2029\u200e\u200f\u202a\u202e\u2066\u2069\u061c\ufeff":
                self.assertNotIn(ch, text)

    def test_a_very_long_path_is_logged_as_a_placeholder_without_regex_errors(self):
        with Server(AUTH="on") as s:
            sent = []
            for path in ("/tests/" + "a" * 7900, "/tests/" + "%C3%BC" * 1300, "/tests/" + "b" * 1100):
                r = s.request("GET", path)
                self.assertEqual(r.status, 401)
                sent.append(r.headers["x-request-id"])
            # Just at the bound: still logged as it is.
            ok = "/tests/" + "c" * (1024 - len("/tests/"))
            r = s.request("GET", ok)
            sent.append(r.headers["x-request-id"])

            def lines():
                return {l["request_id"]: l for l in s.json_lines("access.log")}
            self.assertTrue(wait_for(lambda: all(i in lines() for i in sent)))
            by_id = lines()
            for i in sent[:3]:
                self.assertEqual(by_id[i]["path"], "(path too long)")
            self.assertEqual(by_id[sent[3]]["path"], ok)
            log = s.read_log("nginx-error.log").decode(errors="replace")
            self.assertNotIn("pcre", log.lower())
            self.assertNotIn("aaaaaaaa", log)


class NginxOwnErrorsAreJson(unittest.TestCase):
    """Item: every status nginx produces itself comes back as the contract's JSON error."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def raw(self, data, expected_status, message=None):
        reply = self.server.raw(data)
        parsed = parse_response(reply)
        self.assertIsNotNone(parsed, reply)
        doc = assert_json_error(self, *parsed, expected_status)
        if message:
            self.assertEqual(doc["message"], message)
        return parsed

    def test_400_malformed_request(self):
        self.raw(b"GARBAGE\r\n\r\n", 400, "bad request")
        self.raw(b"GET /tests HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400)
        self.raw(b"POST /tests HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400)

    def test_400_request_header_too_large(self):  # nginx's 494
        self.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 400,
                 "request header or cookie too large")

    def test_404_for_nginx_internal_locations(self):
        self.raw(b"GET /_errors/400.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404)

    def test_405_with_allow(self):
        _, headers, _ = self.raw(b"TRACE /tests HTTP/1.1\r\nHost: x\r\n\r\n", 405)
        self.assertEqual(headers.get("allow"), "GET, HEAD, POST")
        _, headers, _ = self.raw(b"POST /openapi.yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n", 405)
        self.assertEqual(headers.get("allow"), "GET, HEAD")

    def test_412_and_416_on_the_static_file(self):
        self.raw(b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\nIf-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
                 b"Connection: close\r\n\r\n", 412)
        self.raw(b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\nRange: bytes=999999999-\r\nConnection: close\r\n\r\n", 416)

    def test_414_uri_too_long(self):
        self.raw(b"GET /tests?clinic_id=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)

    def test_501_unknown_transfer_encoding(self):
        self.raw(b"POST /tests HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501)

    def test_505_http_version(self):
        self.raw(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505)

    def test_every_error_page_nginx_can_produce_is_configured(self):
        # Statuses nginx can answer itself (ngx_http_special_response.c, limit_conn/limit_req):
        # each must have an error_page, so none can come back as nginx's HTML.
        with open(os.path.join(ROOT, "nginx.conf")) as f:
            conf = f.read()
        for code in (400, 401, 402, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416,
                     421, 429, 494, 495, 496, 497, 500, 501, 502, 503, 504, 505, 507):
            self.assertIn(f"error_page {code} /_errors/{code}.json;", conf)
            self.assertIn(f"location = /_errors/{code}.json {{", conf)


if __name__ == "__main__":
    unittest.main(verbosity=2)
