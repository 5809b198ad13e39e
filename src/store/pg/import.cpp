// import.cpp: what migrate writes into PostgreSQL (ImportTarget): rows, audit entries and keys
// as they are, the cursor key, and what it checks first.
#include <string>
#include <vector>

#include "base/crypto.h"
#include "store/pg/internal.h"

namespace tdapi {

// Runs fn inside BEGIN … COMMIT under the write lock on a pooled connection.
Status in_write_transaction(PgStore::Connection& c, const char* what,
                            const std::function<Status()>& fn) {
  PgResult r = c.exec("BEGIN");
  if (!result_ok(r)) return c.error(r.get(), what);
  r = c.run("write_lock", "SELECT pg_advisory_xact_lock($1)", {kWriteLockKey});
  Status s = result_ok(r) ? fn() : c.error(r.get(), what);
  if (s.ok()) {
    r = c.exec("COMMIT");
    if (!result_ok(r)) s = c.error(r.get(), what);
  }
  if (!s.ok() && c.healthy()) c.exec("ROLLBACK");
  return s;
}

Status PgStore::import_tests(const std::vector<StoredTest>& rows) {
  return with_reader(
      "import tests",
      [&](Connection& c) {
        return in_write_transaction(c, "import tests", [&] {
          for (const StoredTest& t : rows) {
            const std::string seq = std::to_string(t.seq);
            const std::string version = std::to_string(t.version);
            PgResult r = c.run(
                "import_test",
                "INSERT INTO tests (seq, test_id, patient_id, clinic_id, test_type, result,"
                " created_at, doc, status, version, updated_at) VALUES"
                " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (test_id) DO NOTHING",
                {seq.c_str(), t.test_id.c_str(), t.patient_id.c_str(), t.clinic_id.c_str(),
                 t.test_type.c_str(), t.result.c_str(), t.created_at.c_str(), t.doc.c_str(),
                 t.status.c_str(), version.c_str(), t.updated_at.c_str()});
            if (!result_ok(r)) return c.error(r.get(), "import a test");
          }
          PgResult r = c.exec(
              "SELECT setval(pg_get_serial_sequence('tests', 'seq'),"
              " greatest((SELECT max(seq + 0) FROM tests), 1))");
          return result_ok(r) ? Status::Ok() : c.error(r.get(), "move the seq identity");
        });
      },
      /*retry_when_lost=*/false);
}

Status PgStore::import_versions(const std::vector<TestVersion>& versions) {
  return with_reader(
      "import versions",
      [&](Connection& c) {
        return in_write_transaction(c, "import versions", [&] {
          for (const TestVersion& v : versions) {
            const std::string change_seq = std::to_string(v.change_seq);
            const std::string version = std::to_string(v.version);
            PgResult r = c.run(
                "import_version",
                "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status,"
                " changed_at, changed_by, reason, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (change_seq) DO NOTHING",
                {change_seq.c_str(), v.record.test_id.c_str(), version.c_str(),
                 v.record.clinic_id.c_str(), test_status_name(v.record.status),
                 v.changed_at.c_str(), v.changed_by.c_str(), v.reason ? v.reason->c_str() : nullptr,
                 v.doc.c_str()});
            if (!result_ok(r)) return c.error(r.get(), "import a version");
          }
          // The next change numbered after the highest one (is_called false: 1 when empty).
          PgResult r = c.exec(
              "SELECT setval(pg_get_serial_sequence('test_versions', 'change_seq'),"
              " coalesce(max(change_seq), 1), max(change_seq) IS NOT NULL) FROM test_versions");
          return result_ok(r) ? Status::Ok() : c.error(r.get(), "move the change_seq identity");
        });
      },
      /*retry_when_lost=*/false);
}

Status PgStore::import_audit(const std::vector<AuditEntry>& entries) {
  return with_reader(
      "import audit",
      [&](Connection& c) {
        return in_write_transaction(c, "import audit", [&] {
          for (const AuditEntry& e : entries) {
            const std::string seq = std::to_string(e.seq);
            const std::string outcome = std::to_string(e.outcome);
            PgResult r =
                c.run("import_audit",
                      "INSERT INTO audit (seq, ts, request_id, key_id, action, clinic_id,"
                      " detail, outcome, prev_hash, hash) VALUES"
                      " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (seq) DO NOTHING",
                      {seq.c_str(), e.ts.c_str(), e.request_id.c_str(), e.key_id.c_str(),
                       e.action.c_str(), e.clinic_id.c_str(), e.detail.c_str(), outcome.c_str(),
                       e.prev_hash.c_str(), e.hash.c_str()});
            if (!result_ok(r)) return c.error(r.get(), "import an audit entry");
          }
          return Status::Ok();
        });
      },
      /*retry_when_lost=*/false);
}

Status PgStore::import_keys(const std::vector<ApiKey>& keys) {
  return with_reader(
      "import keys",
      [&](Connection& c) {
        return in_write_transaction(c, "import keys", [&] {
          for (const ApiKey& k : keys) {
            const std::string scopes = scopes_json(k.scopes);
            const char* revoked = k.revoked_at.empty() ? nullptr : k.revoked_at.c_str();
            PgResult r =
                c.run("import_key",
                      "INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_at,"
                      " revoked_at) VALUES ($1, $2, $3, $4, $5, $6)"
                      " ON CONFLICT (key_id) DO UPDATE SET revoked_at ="
                      " coalesce(api_keys.revoked_at, EXCLUDED.revoked_at)",
                      {k.key_id.c_str(), k.name.c_str(), scopes.c_str(), k.secret_hash.c_str(),
                       k.created_at.c_str(), revoked});
            if (!result_ok(r)) return c.error(r.get(), "import a key");
          }
          return Status::Ok();
        });
      },
      /*retry_when_lost=*/false);
}

Status PgStore::set_instance_secret(const std::string& secret) {
  const std::string hex = "\\x" + to_hex(secret);
  Status s = with_reader(
      "set the cursor key",
      [&](Connection& c) {
        PgResult r =
            c.run("secret_set", "UPDATE meta SET value = $1::bytea WHERE name = 'cursor_key'",
                  {hex.c_str()});
        return result_ok(r) ? Status::Ok() : c.error(r.get(), "set the cursor key");
      },
      /*retry_when_lost=*/false);
  if (s.ok()) secret_ = secret;
  return s;
}

Status PgStore::max_seqs(long long& tests_seq, long long& audit_seq) {
  return with_reader("max seq", [&](Connection& c) {
    PgResult r = c.exec(
        "SELECT coalesce((SELECT max(seq + 0) FROM tests), 0), coalesce((SELECT max(seq) FROM "
        "audit), "
        "0)");
    if (!result_ok(r)) return c.error(r.get(), "max seq");
    tests_seq = value_int(r.get(), 0, 0);
    audit_seq = value_int(r.get(), 0, 1);
    return Status::Ok();
  });
}

Status PgStore::count_service_sessions(long long& n) {
  return with_reader("count service sessions", [&](Connection& c) {
    PgResult r = c.exec(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'testdata-api'");
    if (!result_ok(r)) return c.error(r.get(), "count service sessions");
    n = value_int(r.get(), 0, 0);
    return Status::Ok();
  });
}

}  // namespace tdapi
