#!/usr/bin/env python3
"""The change feed through real nginx and the real binary: GET /changes and POST /changes/search
(order across creates, corrections and retractions; next tokens; paging; every 400), long polls
(answered on a commit and on timeout, held without a worker thread: POSTs go on while polls are
held; FEED_MAX_WAITING), tokens of another clinic refused, scopes and the audit trail. On SQLite
and on PostgreSQL."""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, database_target, record, wait_for  # noqa: E402
from test_corrections import KeyedServer, admin, correction, put  # noqa: E402


def feed(server, clinic, since=None, limit=None, wait=None, timeout=60, headers=None):
    q = f"/changes?clinic_id={clinic}"
    if since is not None:
        q += f"&since={since}"
    if limit is not None:
        q += f"&limit={limit}"
    if wait is not None:
        q += f"&wait={wait}"
    return server.request("GET", q, timeout=timeout, headers=headers)


def metric(server, name):
    for line in server.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


class Poll(threading.Thread):
    """One long poll in the background: its reply and when it came (bounded by its timeout)."""

    def __init__(self, server, clinic, since, wait, path=None):
        super().__init__()
        self.args = (server, clinic, since, wait)
        self.reply = None
        self.seconds = None
        self.start()

    def run(self):
        server, clinic, since, wait = self.args
        t0 = time.monotonic()
        self.reply = feed(server, clinic, since=since, wait=wait, timeout=wait + 30)
        self.seconds = time.monotonic() - t0


class Feed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.s.__exit__(None, None, None)

    def test_changes_in_commit_order_across_corrections_and_retractions(self):
        s = self.s
        start = feed(s, "f1").json()
        self.assertEqual((start["status"], start["changes"]), ("success", []))
        for tid in ("f1-a", "f1-b"):
            self.assertEqual(s.request("POST", "/tests", record(tid, clinic="f1")).status, 201)
        self.assertEqual(s.request("POST", "/tests", record("f2-x", clinic="f2")).status, 201)
        self.assertEqual(put(s, "f1-a", correction("f1-a", clinic="f1", result="fixed"), 1).status, 200)
        self.assertEqual(put(s, "f1-b", correction("f1-b", clinic="f1", status="entered-in-error",
                                                   reason="wrong patient"), 1).status, 200)
        r = feed(s, "f1")
        self.assertEqual(r.status, 200, r)
        page = r.json()
        self.assertEqual(list(page), ["status", "changes", "next"])
        got = [(c["change"], c["test"]["test_id"], c["test"]["version"], c["test"]["status"])
               for c in page["changes"]]
        self.assertEqual(got, [("create", "f1-a", 1, "final"), ("create", "f1-b", 1, "final"),
                               ("correction", "f1-a", 2, "amended"),
                               ("retraction", "f1-b", 2, "entered-in-error")])
        first = page["changes"][0]
        self.assertEqual(list(first), ["change", "changed_at", "changed_by", "reason", "test"])
        self.assertEqual((first["reason"], first["changed_by"]), (None, "anonymous"))
        self.assertEqual(first["test"]["result"], "ok")
        self.assertEqual(page["changes"][2]["test"]["result"], "fixed")
        self.assertEqual(page["changes"][3]["reason"], "wrong patient")
        self.assertEqual(page["changes"][2]["changed_at"], page["changes"][2]["test"]["updated_at"])
        # Nothing new: the same position comes back, as the same token.
        again = feed(s, "f1", since=page["next"]).json()
        self.assertEqual((again["changes"], again["next"]), ([], page["next"]))
        # The start's token was the beginning: the whole feed again.
        self.assertEqual(len(feed(s, "f1", since=start["next"]).json()["changes"]), 4)
        # POST /changes/search answers the same.
        post = s.request("POST", "/changes/search", {"clinic_id": "f1", "since": start["next"], "limit": 3})
        self.assertEqual(post.status, 200, post)
        self.assertEqual([c["test"]["version"] for c in post.json()["changes"]], [1, 1, 2])
        self.assertEqual(feed(s, "f1", since=post.json()["next"]).json()["changes"][0]["change"], "retraction")

    def test_paging_walks_every_change_once(self):
        s = self.s
        batch = [record(f"pg-{i}", clinic="pg") for i in range(25)]
        self.assertEqual(s.request("POST", "/tests/batch", batch).status, 201)
        seen, since = [], None
        for _ in range(20):
            page = feed(s, "pg", since=since, limit=7).json()
            if not page["changes"]:
                break
            self.assertLessEqual(len(page["changes"]), 7)
            seen += [c["test"]["test_id"] for c in page["changes"]]
            since = page["next"]
        self.assertEqual(seen, [f"pg-{i}" for i in range(25)])

    def test_every_bad_request(self):
        s = self.s
        token = feed(s, "bad1").json()["next"]
        other = feed(s, "bad2").json()["next"]
        for query in ("", "clinic_id=", "clinic_id=bad1&limit=0", "clinic_id=bad1&limit=1001",
                      "clinic_id=bad1&limit=x", "clinic_id=bad1&wait=31", "clinic_id=bad1&wait=1.5",
                      "clinic_id=bad1&wait=-1", "clinic_id=bad1&since=abc",
                      f"clinic_id=bad1&since={token[:-1]}A" if token[-1] != "A" else f"clinic_id=bad1&since={token[:-1]}B",
                      f"clinic_id=bad1&since={other}", "clinic_id=bad1&foo=1",
                      "clinic_id=bad1&clinic_id=bad1"):
            r = s.request("GET", "/changes?" + query)
            self.assertEqual(r.status, 400, (query, r))
            self.assertEqual(r.json()["status"], "error")
        for body in ({}, {"clinic_id": "bad1", "wait": "1"}, {"clinic_id": "bad1", "wait": 31},
                     {"clinic_id": "bad1", "wait": 0.5}, {"clinic_id": "bad1", "limit": "5"},
                     {"clinic_id": "bad1", "since": other}, {"clinic_id": "bad1", "extra": 1},
                     {"clinic_id": 5}, [1]):
            r = s.request("POST", "/changes/search", body)
            self.assertEqual(r.status, 400, (body, r))
        self.assertEqual(s.request("POST", "/changes/search", {"clinic_id": "bad1", "since": token}).status, 200)
        self.assertEqual(s.request("POST", "/changes/search", "x", headers={"Content-Type": "text/plain"}).status, 415)

    def test_a_long_poll_returns_on_a_commit(self):
        s = self.s
        since = feed(s, "lp1").json()["next"]
        poll = Poll(s, "lp1", since, 20)
        # Held by now (with APP_NODES, maybe on another node than the one the POST reaches; the
        # answer is the same if it was not held yet).
        time.sleep(1)
        self.assertTrue(poll.is_alive())
        self.assertEqual(s.request("POST", "/tests", record("lp1-a", clinic="lp1")).status, 201)
        poll.join(30)
        self.assertFalse(poll.is_alive())
        self.assertEqual(poll.reply.status, 200, poll.reply)
        self.assertEqual([c["test"]["test_id"] for c in poll.reply.json()["changes"]], ["lp1-a"])
        self.assertLess(poll.seconds, 15)  # far below its 20 s wait: the commit answered it
        # A change of another clinic does not answer a held request: it waits on.
        since = poll.reply.json()["next"]
        poll = Poll(s, "lp1", since, 20)
        time.sleep(1)
        self.assertEqual(s.request("POST", "/tests", record("lp2-a", clinic="lp2")).status, 201)
        time.sleep(0.6)
        self.assertTrue(poll.is_alive())
        self.assertEqual(put(s, "lp1-a", correction("lp1-a", clinic="lp1"), 1).status, 200)
        poll.join(30)
        self.assertEqual([c["change"] for c in poll.reply.json()["changes"]], ["correction"])

    def test_a_long_poll_ends_when_its_wait_is_over(self):
        s = self.s
        since = feed(s, "lp3").json()["next"]
        t0 = time.monotonic()
        r = feed(s, "lp3", since=since, wait=1)
        took = time.monotonic() - t0
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["changes"], r.json()["next"]), ([], since))
        self.assertGreaterEqual(took, 1.0)
        self.assertLess(took, 5.0)
        # wait=0 (and none) answers at once, also when empty.
        self.assertEqual(feed(s, "lp3", since=since, wait=0).json()["changes"], [])

    def test_audit_entries_for_feed_reads(self):
        s = self.s
        self.assertEqual(s.request("POST", "/tests", record("au-1", clinic="fa")).status, 201)
        self.assertEqual(len(feed(s, "fa").json()["changes"]), 1)
        entries = s.request("GET", "/audit?clinic_id=fa").json()["entries"]
        reads = [e for e in entries if e["action"] == "changes"]
        self.assertEqual(len(reads), 1, entries)
        self.assertEqual((reads[0]["outcome"], reads[0]["detail"]), (200, {"clinic_id": "fa", "count": 1}))


class HeldPolls(unittest.TestCase):
    def test_held_polls_do_not_take_the_threads_writes_need(self):
        with Server(THREADS=2) as s:
            since = feed(s, "idle").json()["next"]
            polls = [Poll(s, "idle", since, 25) for _ in range(10)]
            self.assertTrue(wait_for(lambda: metric(s, "tdapi_feed_waiting") == 10, 15))
            statuses = [s.request("POST", "/tests", record(f"busy-{i}", clinic="busy"), timeout=20).status
                        for i in range(20)]
            self.assertEqual(statuses, [201] * 20)
            # Every poll is still held: the POSTs were answered while ten polls waited on two threads.
            self.assertTrue(all(p.is_alive() for p in polls))
            self.assertEqual(metric(s, "tdapi_feed_waiting"), 10)
            self.assertEqual(s.request("POST", "/tests", record("idle-1", clinic="idle")).status, 201)
            for p in polls:
                p.join(30)
            self.assertEqual([[c["test"]["test_id"] for c in p.reply.json()["changes"]] for p in polls],
                             [["idle-1"]] * 10)
            self.assertTrue(wait_for(lambda: metric(s, "tdapi_feed_waiting") == 0, 10))

    def test_past_feed_max_waiting_a_poll_is_answered_at_once(self):
        with Server(FEED_MAX_WAITING=2) as s:
            since = feed(s, "mx").json()["next"]
            held = [Poll(s, "mx", since, 25) for _ in range(2)]
            self.assertTrue(wait_for(lambda: metric(s, "tdapi_feed_waiting") == 2, 15))
            r = feed(s, "mx", since=since, wait=25, timeout=20)
            self.assertEqual((r.status, r.json()["changes"], r.json()["next"]), (200, [], since))
            self.assertTrue(all(p.is_alive() for p in held))
            self.assertEqual(s.request("POST", "/tests", record("mx-1", clinic="mx")).status, 201)
            for p in held:
                p.join(30)
                self.assertEqual(len(p.reply.json()["changes"]), 1)

    def test_a_poll_whose_client_went_away_is_let_go(self):
        with Server() as s:
            since = feed(s, "gone").json()["next"]
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            try:
                sock.sendall(f"GET /changes?clinic_id=gone&since={since}&wait=25 HTTP/1.1\r\n"
                             "Host: localhost\r\n\r\n".encode())
                self.assertTrue(wait_for(lambda: metric(s, "tdapi_feed_waiting") == 1, 15))
            finally:
                sock.close()
            # Let go well before its 25 s wait is over: nginx closed the app's connection.
            self.assertTrue(wait_for(lambda: metric(s, "tdapi_feed_waiting") == 0, 10))
            self.assertTrue(wait_for(lambda: any(
                l.get("event") == "request" and l.get("path") == "/changes" and l.get("status") == 499
                for l in s.json_lines("app.log")), 5))

    def test_a_stop_answers_held_polls(self):
        s = Server().start()
        try:
            since = feed(s, "st").json()["next"]
            poll = Poll(s, "st", since, 25)
            self.assertTrue(wait_for(lambda: metric(s, "tdapi_feed_waiting") == 1, 15))
        finally:
            rc = s.stop()
            s.__exit__(None, None, None)
        poll.join(30)
        self.assertEqual(rc, 0)
        self.assertEqual((poll.reply.status, poll.reply.json()["changes"]), (200, []))
        self.assertLess(poll.seconds, 20)


class FeedScopes(KeyedServer, unittest.TestCase):
    def test_the_feed_needs_read_and_its_tokens_are_bound_to_the_clinic(self):
        r = self.req("r1", "GET", "/changes?clinic_id=c1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([c["test"]["test_id"] for c in r.json()["changes"]], ["sc-1"])
        self.assertEqual(self.req("w1", "GET", "/changes?clinic_id=c1").status, 403)
        self.assertEqual(self.req("r1", "GET", "/changes?clinic_id=c2").status, 403)
        self.assertEqual(self.req("r1", "POST", "/changes/search", {"clinic_id": "c2"}).status, 403)
        self.assertEqual(self.s.request("GET", "/changes?clinic_id=c1").status, 401)
        token = r.json()["next"]
        self.assertEqual(self.req("rall", "GET", "/changes?clinic_id=c1&since=" + token).status, 200)
        r = self.req("rall", "GET", "/changes?clinic_id=c2&since=" + token)
        self.assertEqual(r.status, 400, r)  # c1's token is no token of c2's feed
        entries = self.req("aud", "GET", "/audit?clinic_id=c2").json()["entries"]
        self.assertIn(403, [e["outcome"] for e in entries if e["action"] == "changes"])

    def test_a_key_revoked_while_its_poll_is_held_gets_no_changes(self):
        key = admin("keys", "create", "--db", database_target(self.s), "--name", "soon-gone",
                    "--scope", "read:c3")[0]
        token = self.req("rall", "GET", "/changes?clinic_id=c3").json()["next"]
        reply = {}

        def poll():
            reply["r"] = self.s.request(
                "GET", f"/changes?clinic_id=c3&since={token}&wait=20", timeout=60,
                headers={"Authorization": "Bearer " + key["token"]})

        t = threading.Thread(target=poll)
        t.start()
        m = admin("keys", "create", "--db", database_target(self.s), "--name", "m",
                  "--scope", "metrics")[0]

        def held():
            body = self.s.request("GET", "/metrics",
                                  headers={"Authorization": "Bearer " + m["token"]}).body
            return b"\ntdapi_feed_waiting 1\n" in body

        self.assertTrue(wait_for(held))
        admin("keys", "revoke", "--db", database_target(self.s), key["key_id"])
        time.sleep(0.7)  # past the app's key cache (kKeyCacheTtl, 500 ms): a new request sees it
        r = self.s.request("GET", "/changes?clinic_id=c3",
                           headers={"Authorization": "Bearer " + key["token"]})
        self.assertEqual(r.status, 401, r)
        r = self.req("wall", "POST", "/tests", record("after-revoke", clinic="c3"))
        self.assertEqual(r.status, 201, r)
        t.join(60)
        self.assertEqual(reply["r"].status, 401, reply["r"])
        self.assertNotIn(b"after-revoke", reply["r"].body)


if __name__ == "__main__":
    unittest.main()
