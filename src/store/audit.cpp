// audit.cpp: canonical form, chain hash and verification of audit entries.
#include "store/audit.h"

#include "base/crypto.h"
#include "base/json.h"

namespace tdapi {

const char kAuditGenesis[65] = "0000000000000000000000000000000000000000000000000000000000000000";

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
  if (e.seq != checked_ + 1) {
    problem = "entry " + std::to_string(e.seq) + ": expected seq " + std::to_string(checked_ + 1) +
              " (an entry is missing or out of place)";
    return false;
  }
  if (e.prev_hash != last_hash_) {
    problem = "entry " + std::to_string(e.seq) + ": prev_hash does not match the hash of entry " +
              std::to_string(e.seq - 1) +
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
  ++checked_;
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
  s = trail.count_up_to(verifier.checked(), rows);
  if (!s.ok()) return s;
  if (rows != verifier.checked()) {
    problem = "the audit table holds " + std::to_string(rows) + " entries up to seq " +
              std::to_string(verifier.checked()) + ", the chain " +
              std::to_string(verifier.checked()) + " (an entry outside the chain, e.g. seq 0 or " +
              "below, was not listed)";
  }
  return Status::Ok();
}

}  // namespace tdapi
