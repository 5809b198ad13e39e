// audit_test.cpp: the audit trail's hash chain: built, verified, and broken by any edit.
#include "store/audit.h"

#include <gtest/gtest.h>

#include <vector>

namespace tdapi {
namespace {

std::vector<AuditEntry> chain(int n) {
  std::vector<AuditEntry> out;
  std::string prev = kAuditGenesis;
  for (int i = 1; i <= n; ++i) {
    AuditEntry e;
    e.seq = i;
    e.ts = "2026-11-28T10:00:00.00" + std::to_string(i % 10) + "Z";
    e.request_id = "req" + std::to_string(i);
    e.key_id = "0123456789abcdef";
    e.action = i % 2 ? "create" : "list";
    e.clinic_id = "c1";
    e.detail = R"({"test_ids":["t)" + std::to_string(i) + R"("]})";
    e.outcome = i % 2 ? 201 : 200;
    e.prev_hash = prev;
    e.hash = audit_hash(e);
    prev = e.hash;
    out.push_back(e);
  }
  return out;
}

// Feeds entries to a verifier; returns "" when the chain holds, else the first problem.
std::string verify(const std::vector<AuditEntry>& entries) {
  AuditChainVerifier v;
  std::string problem;
  for (const AuditEntry& e : entries) {
    if (!v.feed(e, problem)) return problem;
  }
  return "";
}

TEST(Audit, AnIntactChainVerifies) {
  auto entries = chain(5);
  EXPECT_EQ(verify(entries), "");
  EXPECT_EQ(entries[0].prev_hash, std::string(64, '0'));
  EXPECT_NE(entries[0].hash, entries[1].hash);
}

TEST(Audit, CanonicalFormIsFixedOrderJson) {
  auto e = chain(1)[0];
  EXPECT_EQ(audit_canonical(e), R"({"seq":1,"ts":"2026-11-28T10:00:00.001Z","request_id":"req1",)"
                                R"("key_id":"0123456789abcdef","action":"create","clinic_id":"c1",)"
                                R"("detail":{"test_ids":["t1"]},"outcome":201,"prev_hash":")" +
                                    std::string(64, '0') + "\"}");
}

TEST(Audit, ExportsEscapeLineBreakersWhileTheHashedFormKeepsItsBytes) {
  // An entry written before ids were checked may hold a raw U+2028 or NEL: its export must stay
  // one line, and its hash (computed over the canonical form as it was) must still verify.
  auto entries = chain(2);
  AuditEntry& e = entries[1];
  e.clinic_id = "c\xe2\x80\xa8x";
  e.detail = "{\"test_id\":\"t\xc2\x85\xe2\x80\xa9\"}";
  e.hash = audit_hash(e);
  const std::string canonical = audit_canonical(e);
  EXPECT_NE(canonical.find("\"clinic_id\":\"c\xe2\x80\xa8x\""), std::string::npos) << canonical;
  EXPECT_NE(canonical.find("\"detail\":{\"test_id\":\"t\xc2\x85\xe2\x80\xa9\"}"), std::string::npos)
      << canonical;
  const std::string json = audit_entry_json(e);
  for (const char* raw : {"\xe2\x80\xa8", "\xe2\x80\xa9", "\xc2\x85"}) {
    EXPECT_EQ(json.find(raw), std::string::npos) << json;
  }
  EXPECT_NE(json.find(R"("clinic_id":"c\u2028x")"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("detail":{"test_id":"t\u0085\u2029"})"), std::string::npos) << json;
  EXPECT_EQ(verify(entries), "");
}

TEST(Audit, EditingAnyFieldIsNamedAtThatEntry) {
  for (int field = 0; field < 7; ++field) {
    auto entries = chain(5);
    AuditEntry& e = entries[2];
    switch (field) {
      case 0:
        e.ts = "2026-01-01T00:00:00.000Z";
        break;
      case 1:
        e.request_id = "forged";
        break;
      case 2:
        e.key_id = "ffffffffffffffff";
        break;
      case 3:
        e.action = "get";
        break;
      case 4:
        e.clinic_id = "c2";
        break;
      case 5:
        e.detail = "{}";
        break;
      case 6:
        e.outcome = 403;
        break;
    }
    std::string problem = verify(entries);
    EXPECT_EQ(problem.rfind("entry 3:", 0), 0u) << field << ": " << problem;
  }
}

TEST(Audit, RehashingAnEditedEntryIsCaughtByTheNextLink) {
  auto entries = chain(5);
  entries[2].clinic_id = "c2";
  entries[2].hash = audit_hash(entries[2]);
  EXPECT_EQ(verify(entries).rfind("entry 4:", 0), 0u);
}

TEST(Audit, RemovedOrReorderedEntriesAreCaught) {
  auto removed = chain(5);
  removed.erase(removed.begin() + 1);
  EXPECT_EQ(verify(removed).rfind("entry 3:", 0), 0u);
  auto swapped = chain(5);
  std::swap(swapped[1], swapped[2]);
  EXPECT_EQ(verify(swapped).rfind("entry 3:", 0), 0u);
}

// entries[0..n) then a failover boundary after entry `after` (1-based) and more entries after it,
// rehashed so that only the seq numbers tell the story.
std::vector<AuditEntry> chain_with_failover(int n, long long gap, const std::string& action,
                                            long long previous_seq) {
  auto entries = chain(n);
  AuditEntry f;
  f.seq = entries.back().seq + gap;
  f.ts = "2026-11-28T10:01:00.000Z";
  f.key_id = "testdata-api";
  f.action = action;
  f.detail =
      R"({"previous_seq":)" + std::to_string(previous_seq) +
      R"(,"from":{"system_identifier":"1","timeline":1},)"
      R"("to":{"system_identifier":"1","timeline":2},"tests_seq_from":9,"change_seq_from":9})";
  f.prev_hash = entries.back().hash;
  f.hash = audit_hash(f);
  entries.push_back(f);
  AuditEntry next = chain(1)[0];
  next.seq = f.seq + 1;
  next.prev_hash = f.hash;
  next.hash = audit_hash(next);
  entries.push_back(next);
  return entries;
}

TEST(Audit, AFailoverBoundaryMayJumpPastTheLostPrimarysNumbers) {
  auto entries = chain_with_failover(3, kAuditFailoverGap, kAuditFailoverAction, 3);
  AuditChainVerifier v;
  std::string problem;
  for (const AuditEntry& e : entries) ASSERT_TRUE(v.feed(e, problem)) << problem;
  EXPECT_EQ(v.checked(), 5);
  EXPECT_EQ(v.last_seq(), 3 + kAuditFailoverGap + 1);
  EXPECT_EQ(v.failovers(), 1);
}

TEST(Audit, OnlyADocumentedFailoverBoundaryMayJump) {
  const long long gap = kAuditFailoverGap;
  const std::string at = "entry " + std::to_string(3 + gap) + ": expected seq 4";
  // Any other action: a gap is entries missing.
  EXPECT_EQ(verify(chain_with_failover(3, gap, "create", 3)).rfind(at + " (an entry", 0), 0u);
  // A failover entry naming another entry than the one before it.
  const std::string wrong = verify(chain_with_failover(3, gap, kAuditFailoverAction, 2));
  EXPECT_EQ(wrong.rfind(at + " (a failover entry", 0), 0u) << wrong;
  // Another gap than the documented one.
  EXPECT_EQ(verify(chain_with_failover(3, 5, kAuditFailoverAction, 3)).rfind("entry 8:", 0), 0u);
  // Written by anyone but the service.
  auto forged = chain_with_failover(3, gap, kAuditFailoverAction, 3);
  forged[3].key_id = "0123456789abcdef";
  forged[3].hash = audit_hash(forged[3]);
  forged[4].prev_hash = forged[3].hash;
  forged[4].hash = audit_hash(forged[4]);
  EXPECT_EQ(verify(forged).rfind(at, 0), 0u);
  // One whose detail does not say where it continues from, or says it with a number no entry
  // can have.
  for (const char* detail :
       {"{}", R"({"previous_seq":3.5})", R"({"previous_seq":1e300})", R"({"previous_seq":"3"})"}) {
    auto bare = chain_with_failover(3, gap, kAuditFailoverAction, 3);
    bare[3].detail = detail;
    bare[3].hash = audit_hash(bare[3]);
    bare[4].prev_hash = bare[3].hash;
    bare[4].hash = audit_hash(bare[4]);
    EXPECT_EQ(verify(bare).rfind(at, 0), 0u) << detail;
  }
  // Entries removed before a genuine boundary: its previous_seq no longer names the last one.
  auto cut = chain_with_failover(3, gap, kAuditFailoverAction, 3);
  cut.erase(cut.begin() + 2);
  cut[2].prev_hash = cut[1].hash;
  cut[2].hash = audit_hash(cut[2]);
  EXPECT_NE(verify(cut), "");
  // A boundary backwards.
  EXPECT_NE(verify(chain_with_failover(3, -1, kAuditFailoverAction, 3)), "");
}

}  // namespace
}  // namespace tdapi
