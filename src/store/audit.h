// audit.h: audit trail entries and their hash chain. Pure: no storage here (the stores write
// and read entries; this file says what an entry is and how the chain is computed and checked).
//
// Chain: hash(n) = SHA-256(hash(n-1) + "\n" + canonical(n)), hash(0) = 64 zeros. canonical(n)
// is a fixed-order JSON rendering of every field but the hash. Changing, removing or inserting
// any entry breaks every later hash link, and verify names the first entry that does not match.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "store/status.h"

namespace tdapi {

struct AuditEntry {
  long long seq = 0;       // position in the chain, from 1, no gaps but at a failover entry
  std::string ts;          // UTC, ms
  std::string request_id;  // nginx's $request_id ("" for command-line access)
  std::string key_id;      // the key that made the request, or "anonymous" (auth off)
  std::string action;      // create, batch, list, search, get, audit_read
  std::string clinic_id;   // the clinic touched ("" when not known, e.g. an unknown test id)
  std::string detail;      // a JSON object: test ids written or read, filters, page, count
  int outcome = 0;         // the HTTP status answered (201, 200, 401, 403, 404, 409, …)
  std::string prev_hash;   // the previous entry's hash (kAuditGenesis for seq 1)
  std::string hash;        // audit_hash(prev_hash, *this)
};

// The prev_hash of the first entry.
extern const char kAuditGenesis[65];

// A failover boundary (PostgreSQL): the entry the first write on a new server timeline (a
// promoted standby) adds before anything else. Entries the lost primary wrote after its last
// replicated one are gone, and their seq numbers may be held by copies of the old chain: the
// boundary's seq is kAuditFailoverGap past the last surviving entry, so that no number names two
// entries, and its detail says where it continues from: "previous_seq", with "from" and "to"
// (system_identifier and timeline of the old and the new server) and where the tests' seq and
// the feed's change_seq continue ("tests_seq_from", "change_seq_from"). It chains on the last
// surviving entry like any other.
extern const char kAuditFailoverAction[];
extern const char kAuditFailoverKey[];  // its key_id: the service itself
constexpr long long kAuditFailoverGap = 1LL << 40;

// Fixed-order JSON of every field but hash (detail is embedded as the JSON it holds), in
// JsonForm::kAuditHash: C1 controls, U+2028 and U+2029 are not escaped here, as they never were.
std::string audit_canonical(const AuditEntry& entry);

// The entry's hash, chained on entry.prev_hash. This function can't fail.
std::string audit_hash(const AuditEntry& entry);

// Checks entries one at a time, in seq order. feed() returns false at the first entry that
// breaks the chain (wrong seq, prev_hash not the previous hash, or hash not matching its
// content), with problem saying which and how. The one gap accepted in seq is a failover
// boundary's (kAuditFailoverAction) whose detail names the entry before it as previous_seq.
class AuditChainVerifier {
 public:
  bool feed(const AuditEntry& entry, std::string& problem);
  long long checked() const { return checked_; }    // entries verified
  long long last_seq() const { return last_seq_; }  // the seq of the last one (0: none)
  long long failovers() const { return failovers_; }
  const std::string& last_hash() const { return last_hash_; }

 private:
  long long checked_ = 0;
  long long last_seq_ = 0;
  long long failovers_ = 0;
  std::string last_hash_ = kAuditGenesis;
};

// A whole trail to verify, as `audit verify`, backup and restore reach it.
struct AuditTrail {
  // Calls on_entry for every row of the audit table, lowest seq first, with no lower bound (a
  // listing that starts after seq 0 leaves out an entry numbered 0 or below), until it returns
  // false.
  std::function<Status(const std::function<bool(const AuditEntry&)>& on_entry)> list_all;
  // The number of rows with seq <= up_to.
  std::function<Status(long long up_to, long long& rows)> count_up_to;
};

// The one verifier of a whole trail (`audit verify`, backup, restore): feeds every row to
// `verifier`, then compares the table's count of rows up to the last verified seq with the
// number verified (a row the listing did not show is a problem too). Returns the error that kept
// it from reading, else Ok with `problem` "" (intact) or the first problem. on_verified
// (optional) sees each verified entry; returning false stops, with the problem it set.
Status verify_audit_trail(
    const AuditTrail& trail, AuditChainVerifier& verifier, std::string& problem,
    const std::function<bool(const AuditEntry&, std::string&)>& on_verified = nullptr);

// The whole entry as one JSON object (for GET /audit and `audit export`), escaped for output
// (JsonForm::kOutput): one line for any line reader.
std::string audit_entry_json(const AuditEntry& entry);

}  // namespace tdapi
