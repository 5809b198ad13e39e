// audit.cpp: canonical form, chain hash and verification of audit entries.
#include "store/audit.h"

#include "base/crypto.h"
#include "base/json.h"

namespace tdapi {

const char kAuditGenesis[65] = "0000000000000000000000000000000000000000000000000000000000000000";
const char kAuditFailoverAction[] = "failover";
const char kAuditFailoverKey[] = "testdata-api";

namespace {

void write_fields(JsonWriter& w, const AuditEntry& e) {
  w.field("seq", e.seq);
  w.field("ts", e.ts);
  w.field("request_id", e.request_id);
  w.field("key_id", e.key_id);
  w.field("action", e.action);
  w.field("clinic_id", e.clinic_id);
  w.key("detail");
  w.raw(e.detail.empty() ? std::string_view("{}") : std::string_view(e.detail));
  w.field("outcome", e.outcome);
  w.field("prev_hash", e.prev_hash);
}

// The seq a failover boundary says it continues from (its detail's previous_seq), or -1.
long long failover_previous_seq(const AuditEntry& e) {
  if (e.action != kAuditFailoverAction) return -1;
  JsonTree detail = parse_json_document(e.detail);
  const cJSON* previous =
      detail ? cJSON_GetObjectItemCaseSensitive(detail.get(), "previous_seq") : nullptr;
  // Whole, and small enough to be exact (and converted without overflow).
  if (!cJSON_IsNumber(previous) || previous->valuedouble < 0 ||
      previous->valuedouble > 9007199254740992.0 ||
      previous->valuedouble != static_cast<double>(static_cast<long long>(previous->valuedouble))) {
    return -1;
  }
  return static_cast<long long>(previous->valuedouble);
}

}  // namespace

std::string audit_canonical(const AuditEntry& e) {
  std::string out;
  // The form hashes were always computed over (C1 controls, U+2028 and U+2029 as they are):
  // entries written before exports escaped them still verify.
  JsonWriter w(out, JsonForm::kAuditHash);
  w.begin_object();
  write_fields(w, e);
  w.end_object();
  return out;
}

std::string audit_hash(const AuditEntry& e) {
  return sha256_hex(e.prev_hash + "\n" + audit_canonical(e));
}

std::string audit_entry_json(const AuditEntry& e) {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  write_fields(w, e);
  w.field("hash", e.hash);
  w.end_object();
  return out;
}

bool AuditChainVerifier::feed(const AuditEntry& e, std::string& problem) {
  const bool failover = e.action == kAuditFailoverAction;
  if (e.seq != last_seq_ + 1) {
    // A failover boundary past the last entry, naming it: the entries between were the lost
    // primary's.
    // Exactly the documented gap, written by the service itself.
    if (!(failover && e.key_id == kAuditFailoverKey && failover_previous_seq(e) == last_seq_ &&
          e.seq == last_seq_ + kAuditFailoverGap)) {
      problem =
          "entry " + std::to_string(e.seq) + ": expected seq " + std::to_string(last_seq_ + 1) +
          (failover ? " (a failover entry whose previous_seq does not name the entry before it)"
                    : " (an entry is missing or out of place)");
      return false;
    }
  }
  if (e.prev_hash != last_hash_) {
    problem = "entry " + std::to_string(e.seq) + ": prev_hash does not match the hash of entry " +
              std::to_string(last_seq_) +
              " (one of the two was changed, or an entry was removed or inserted)";
    return false;
  }
  if (audit_hash(e) != e.hash) {
    problem = "entry " + std::to_string(e.seq) +
              ": hash does not match its content (the entry "
              "was changed)";
    return false;
  }
  last_hash_ = e.hash;
  last_seq_ = e.seq;
  ++checked_;
  if (failover) ++failovers_;
  return true;
}

Status verify_audit_trail(const AuditTrail& trail, AuditChainVerifier& verifier,
                          std::string& problem,
                          const std::function<bool(const AuditEntry&, std::string&)>& on_verified) {
  problem.clear();
  Status s = trail.list_all([&](const AuditEntry& e) {
    if (!verifier.feed(e, problem)) return false;
    return !on_verified || on_verified(e, problem);
  });
  if (!s.ok() || !problem.empty()) return s;
  long long rows = 0;
  s = trail.count_up_to(verifier.last_seq(), rows);
  if (!s.ok()) return s;
  if (rows != verifier.checked()) {
    problem = "the audit table holds " + std::to_string(rows) + " entries up to seq " +
              std::to_string(verifier.last_seq()) + ", the chain " +
              std::to_string(verifier.checked()) + " (an entry outside the chain, e.g. seq 0 or " +
              "below, was not listed)";
  }
  return Status::Ok();
}

}  // namespace tdapi
