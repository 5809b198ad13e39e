// audit.cpp: reading the audit trail from PostgreSQL (the writer appends it: store_pg.cpp).
#include "store/pg/internal.h"

namespace tdapi {

namespace {

const char kAuditListSql[] =
    "SELECT seq, ts, request_id, key_id, action, clinic_id, detail, outcome, prev_hash, hash"
    " FROM audit WHERE seq > $1 AND ($2::text IS NULL OR ts >= $2)"
    " AND ($3::text IS NULL OR ts < $3) AND ($4::text IS NULL OR clinic_id = $4)"
    " ORDER BY seq LIMIT $5";

void read_audit(const PGresult* r, int row, AuditEntry& e) {
  e.seq = value_int(r, row, 0);
  e.ts.assign(value_view(r, row, 1));
  e.request_id.assign(value_view(r, row, 2));
  e.key_id.assign(value_view(r, row, 3));
  e.action.assign(value_view(r, row, 4));
  e.clinic_id.assign(value_view(r, row, 5));
  e.detail.assign(value_view(r, row, 6));
  e.outcome = static_cast<int>(value_int(r, row, 7));
  e.prev_hash.assign(value_view(r, row, 8));
  e.hash.assign(value_view(r, row, 9));
}

}  // namespace

Status PgStore::list_audit(const AuditQuery& q,
                           const std::function<bool(const AuditEntry&)>& on_entry) {
  long long after = q.after_seq;
  long long remaining = q.limit;
  bool more = remaining != 0;
  Status status;
  AuditEntry e;
  while (more) {
    const long long want = remaining < 0 ? kListPageRows : std::min(remaining, kListPageRows);
    const std::string after_text = std::to_string(after);
    const std::string want_text = std::to_string(want);
    const char* params[] = {after_text.c_str(), q.since ? q.since->c_str() : nullptr,
                            q.until ? q.until->c_str() : nullptr,
                            q.clinic_id ? q.clinic_id->c_str() : nullptr, want_text.c_str()};
    PgResult page = wrap(nullptr);
    status = with_reader("list audit", [&](Connection& c) {
      page = c.run("audit_list", kAuditListSql, params, 5);
      return result_ok(page) ? Status::Ok() : c.error(page.get(), "list audit");
    });
    if (!status.ok()) break;
    const int got = PQntuples(page.get());
    more = got == want;
    for (int i = 0; i < got; ++i) {
      read_audit(page.get(), i, e);
      if (!on_entry(e)) {
        more = false;
        break;
      }
    }
    if (got == 0) break;
    after = value_int(page.get(), got - 1, 0);
    if (remaining > 0) {
      remaining -= got;
      if (remaining <= 0) more = false;
    }
  }
  return status;
}

Status PgStore::count_audit(long long up_to, long long& rows) {
  const std::string up_to_text = std::to_string(up_to);
  return with_reader("count audit", [&](Connection& c) {
    PgResult r =
        c.run("audit_count", "SELECT count(*) FROM audit WHERE seq <= $1", {up_to_text.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "count audit");
    rows = value_int(r.get(), 0, 0);
    return Status::Ok();
  });
}

}  // namespace tdapi
