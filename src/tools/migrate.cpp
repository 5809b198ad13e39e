// migrate.cpp: copies an SQLite database into PostgreSQL, resumably, and verifies the copy.
#include "tools/migrate.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <vector>

#include "base/crypto.h"
#include "base/json.h"
#include "base/options.h"
#include "base/url.h"
#include "store/open_store.h"

namespace tdapi {

namespace {

const char kMigrateUsage[] =
    "usage: testdata-api migrate --from PATH.db --to postgresql://... [--batch N]\n"
    "Copies tests and their versions, access keys, the audit trail and the cursor key; run it\n"
    "while no service writes to the target. Interrupted, run it again: it continues where it\n"
    "stopped.\n";

int usage(const std::string& why) {
  std::cerr << "testdata-api: " << why << "\n" << kMigrateUsage;
  return 2;
}

int fail(const std::string& why) {
  std::cerr << "testdata-api migrate: " << why << "\n";
  return 1;
}

void progress(const char* what, long long n) {
  std::cerr << "testdata-api migrate: " << what << " " << n << "\n";
}

std::string digest_json(const StoreDigest& d) {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.key("tests");
  w.number(d.tests);
  w.key("checksum");
  w.string(d.checksum);
  w.key("versions");
  w.number(d.versions);
  w.key("versions_checksum");
  w.string(d.versions_checksum);
  w.key("audit_entries");
  w.number(d.audit_entries);
  w.key("audit_head");
  w.string(d.audit_head);
  w.key("keys");
  w.number(d.keys);
  w.end_object();
  return out;
}

}  // namespace

std::string digest_store(Store& store, StoreDigest& out) {
  out = StoreDigest();
  std::string chain(64, '0');
  long long after = 0;
  for (;;) {
    long long got = 0;
    Status s = store.list_all_tests(after, 1000, [&](const StoredTest& t) {
      chain = sha256_hex(chain + "\n" + std::to_string(t.seq) + "\t" + t.test_id + "\t" + t.doc +
                         "\t" + t.status + "\t" + std::to_string(t.version) + "\t" + t.updated_at);
      after = t.seq;
      ++got;
      return true;
    });
    if (!s.ok()) return "cannot read the tests: " + s.message();
    out.tests += got;
    if (got < 1000) break;
  }
  out.checksum = chain;
  chain.assign(64, '0');
  long long after_change = 0;
  for (;;) {
    long long got = 0;
    Status s = store.list_all_versions(after_change, 1000, [&](const TestVersion& v) {
      chain = sha256_hex(chain + "\n" + std::to_string(v.change_seq) + "\t" + v.record.test_id +
                         "\t" + std::to_string(v.version) + "\t" + v.record.clinic_id + "\t" +
                         test_status_name(v.record.status) + "\t" + v.changed_at + "\t" +
                         v.changed_by + "\t" + (v.reason ? "r" + *v.reason : "-") + "\t" + v.doc);
      after_change = v.change_seq;
      ++got;
      return true;
    });
    if (!s.ok()) return "cannot read the versions: " + s.message();
    out.versions += got;
    if (got < 1000) break;
  }
  out.versions_checksum = chain;
  out.audit_head = "";
  Status s = store.list_audit(AuditQuery(), [&](const AuditEntry& e) {
    ++out.audit_entries;
    out.audit_head = e.hash;
    return true;
  });
  if (!s.ok()) return "cannot read the audit trail: " + s.message();
  std::vector<ApiKey> keys;
  s = store.list_keys(keys);
  if (!s.ok()) return "cannot read the keys: " + s.message();
  out.keys = static_cast<long long>(keys.size());
  return "";
}

int run_migrate_command(int argc, char** argv) {
  std::string from, to;
  long long batch = 1000;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "--from" || arg == "--to" || arg == "--batch") && i + 1 < argc) {
      const char* value = argv[++i];
      if (arg == "--from") from = value;
      if (arg == "--to") to = value;
      if (arg == "--batch" && !parse_integer(value, 1, 100000, batch)) {
        return usage("--batch must be a whole number from 1 to 100000");
      }
    } else {
      return usage("unexpected " + arg);
    }
  }
  if (from.empty() || to.empty()) return usage("--from and --to are required");
  if (is_postgres_url(from)) return usage("--from must be an SQLite database file");
  if (!is_postgres_url(to)) return usage("--to must be a PostgreSQL URL (postgresql://...)");

  // The target reached as the service reaches it (DATABASE_POOLER).
  const StoreSettings settings = tool_store_settings(environment_from(environ));
  std::unique_ptr<Store> source;
  Status s = open_store(from, StoreRole::kMigrationSource, settings, source);
  if (!s.ok()) return fail("cannot open " + from + ": " + s.message());
  std::unique_ptr<Store> target_store;
  s = open_store(to, StoreRole::kMigrationTarget, settings, target_store);  // creates or migrates
  if (!s.ok()) return fail("cannot open " + describe_target(to) + ": " + s.message());
  ImportTarget* target = target_store->import_target();
  if (target == nullptr) return fail(describe_target(to) + " takes no imports");

  // A service on the target would hand out seqs and cursors (under the key replaced below)
  // while the copy writes its own: copy first, then start the service.
  long long sessions = 0;
  s = target->count_service_sessions(sessions);
  if (!s.ok()) return fail(s.message());
  if (sessions > 0) {
    return fail(std::to_string(sessions) +
                " connections of a running testdata-api service are on the target: stop it "
                "(every node) before migrating into that database");
  }
  long long tests_done = 0, audit_done = 0;
  s = target->max_seqs(tests_done, audit_done);
  if (!s.ok()) return fail(s.message());
  // The target is empty (take the source's cursor key, so its cursors stay valid), or a copy
  // of this source begun earlier (same cursor key): anything else is not ours to add to.
  if (tests_done == 0 && audit_done == 0) {
    s = target->set_instance_secret(source->instance_secret());
    if (!s.ok()) return fail(s.message());
  } else if (target_store->instance_secret() != source->instance_secret()) {
    return fail("the target already holds data that is not from " + from +
                " (another cursor key); migrate into an empty database");
  }
  if (tests_done > 0 || audit_done > 0) {
    std::cerr << "testdata-api migrate: resuming after test seq " << tests_done << " and audit seq "
              << audit_done << "\n";
  }

  std::vector<ApiKey> keys;
  s = source->list_keys(keys);
  if (s.ok()) s = target->import_keys(keys);
  if (!s.ok()) return fail("keys: " + s.message());

  std::vector<StoredTest> rows;
  long long copied = 0;
  for (;;) {
    rows.clear();
    s = source->list_all_tests(tests_done, batch, [&](const StoredTest& t) {
      rows.push_back(t);
      return true;
    });
    if (!s.ok()) return fail("reading tests: " + s.message());
    if (rows.empty()) break;
    s = target->import_tests(rows);
    if (!s.ok()) return fail("writing tests: " + s.message());
    tests_done = rows.back().seq;
    copied += static_cast<long long>(rows.size());
    if (copied % 100000 < batch) progress("tests copied:", copied);
  }
  // The versions after the highest change_seq copied (the tests they belong to are copied).
  long long versions_done = 0;
  s = target_store->latest_change(versions_done);
  if (!s.ok()) return fail(s.message());
  std::vector<TestVersion> versions;
  for (;;) {
    versions.clear();
    s = source->list_all_versions(versions_done, batch, [&](const TestVersion& v) {
      versions.push_back(v);
      return true;
    });
    if (!s.ok()) return fail("reading versions: " + s.message());
    if (versions.empty()) break;
    s = target->import_versions(versions);
    if (!s.ok()) return fail("writing versions: " + s.message());
    versions_done = versions.back().change_seq;
  }
  std::vector<AuditEntry> entries;
  for (;;) {
    entries.clear();
    AuditQuery q;
    q.after_seq = audit_done;
    q.limit = batch;
    s = source->list_audit(q, [&](const AuditEntry& e) {
      entries.push_back(e);
      return true;
    });
    if (!s.ok()) return fail("reading the audit trail: " + s.message());
    if (entries.empty()) break;
    s = target->import_audit(entries);
    if (!s.ok()) return fail("writing the audit trail: " + s.message());
    audit_done = entries.back().seq;
  }

  // The source is read again through a new store: what the copy relied on (list_all_tests
  // checks once per store that it may page by rowid) is checked again for the verification.
  source.reset();
  s = open_store(from, StoreRole::kMigrationSource, settings, source);
  if (!s.ok()) return fail("cannot open " + from + " again to verify the copy: " + s.message());
  StoreDigest a, b;
  std::string problem = digest_store(*source, a);
  if (problem.empty()) problem = digest_store(*target_store, b);
  if (!problem.empty()) return fail(problem);
  const bool same = a.tests == b.tests && a.checksum == b.checksum && a.versions == b.versions &&
                    a.versions_checksum == b.versions_checksum &&
                    a.audit_entries == b.audit_entries && a.audit_head == b.audit_head &&
                    a.keys == b.keys;
  std::string out = "{\"status\":\"" + std::string(same ? "verified" : "mismatch") +
                    "\",\"copied_tests\":" + std::to_string(copied) +
                    ",\"source\":" + digest_json(a) + ",\"target\":" + digest_json(b) + "}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  if (!same) return fail("the copy does not match the source (see the digests above)");
  return 0;
}

}  // namespace tdapi
