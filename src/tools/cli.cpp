// cli.cpp: `testdata-api keys …` and `testdata-api audit …`.
#include "tools/cli.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/json.h"
#include "base/utf8.h"
#include "security/auth.h"
#include "store/audit.h"
#include "store/open_store.h"
#include "tools/backup.h"
#include "tools/config_command.h"
#include "tools/migrate.h"

namespace tdapi {

namespace {

const char kUsage[] =
    "usage: testdata-api keys create --db DB --name NAME --scope SCOPE [--scope SCOPE...]\n"
    "       testdata-api keys list --db DB\n"
    "       testdata-api keys revoke --db DB KEY_ID\n"
    "       testdata-api audit verify --db DB [--expect-head SEQ:HASH]\n"
    "       testdata-api audit export --db DB\n"
    "       testdata-api migrate --from PATH.db --to postgresql://...\n"
    "       testdata-api backup [--db PATH] (--to FILE | --to-dir DIR [--keep N])\n"
    "       testdata-api restore --from FILE [--db PATH]\n"
    "       testdata-api config check [--env-file PATH] | config env-file | config table\n"
    "DB: an SQLite file, or a PostgreSQL URL (postgresql://...; also --database-url URL);\n"
    "default: DATABASE_URL, else DB_PATH. As root on a packaged server, every command reads\n"
    "/etc/testdata-api/testdata-api.env and runs as the service user.\n"
    "scopes: read:<clinic_id> write:<clinic_id> read:* write:* audit metrics\n";

int usage(const std::string& why) {
  std::cerr << "testdata-api: " << why << "\n" << kUsage;
  return 2;
}

int fail(const std::string& why) {
  std::cerr << "testdata-api: " << why << "\n";
  return 1;
}

// Parsed arguments after the two command words.
struct Args {
  std::string db;
  std::string name;
  std::vector<std::string> scopes;
  std::string expect_head;  // audit verify: SEQ:HASH an earlier verify printed
  std::vector<std::string> positional;
};

bool parse_args(int argc, char** argv, Args& a, std::string& error) {
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--db" || arg == "--database-url" || arg == "--name" || arg == "--scope" ||
        arg == "--expect-head") {
      if (i + 1 >= argc) {
        error = "missing value for " + arg;
        return false;
      }
      std::string value = argv[++i];
      if (arg == "--db" || arg == "--database-url") a.db = value;
      if (arg == "--name") a.name = value;
      if (arg == "--scope") a.scopes.push_back(value);
      if (arg == "--expect-head") a.expect_head = value;
    } else if (arg.rfind("--", 0) == 0) {
      error = "unknown option " + arg;
      return false;
    } else {
      a.positional.push_back(arg);
    }
  }
  // Unnamed: the configured database (DATABASE_URL, else DB_PATH: on a packaged server run
  // as root, the package's environment file's).
  for (const char* name : {"DATABASE_URL", "DB_PATH"}) {
    const char* v = std::getenv(name);
    if (a.db.empty() && v != nullptr) a.db = v;
  }
  if (a.db.empty()) {
    error = "--db PATH (or a PostgreSQL URL) is required (default: DATABASE_URL, else DB_PATH)";
    return false;
  }
  return true;
}

void print_line(const std::string& json) {
  std::fwrite((json + "\n").data(), 1, json.size() + 1, stdout);
}

std::string key_json(const ApiKey& k) {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.field("key_id", k.key_id);
  w.field("name", k.name);
  w.key("scopes");
  w.begin_array();
  for (const std::string& s : k.scopes) w.string(s);
  w.end_array();
  w.field("created_at", k.created_at);
  w.key("revoked_at");
  if (k.revoked_at.empty()) {
    w.null();
  } else {
    w.string(k.revoked_at);
  }
  w.end_object();
  return out;
}

bool is_key_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || !is_valid_utf8(name)) return false;
  for (char ch : name) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) return false;
  }
  return true;
}

int keys_create(Store& store, const Args& a) {
  if (!is_key_name(a.name)) return usage("--name must be 1..128 printable characters");
  if (a.scopes.empty()) return usage("at least one --scope is required");
  for (const std::string& s : a.scopes) {
    if (!is_valid_scope(s)) return usage("invalid scope: " + s);
  }
  NewKey nk;
  if (!generate_key(nk)) return fail("the random number generator failed; no key was created");
  ApiKey key{nk.key_id, a.name, a.scopes, nk.secret_hash, utc_timestamp_ms(), ""};
  Status s = store.create_key(key);
  if (!s.ok()) return fail("cannot store the key: " + s.message());
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.field("key_id", nk.key_id);
  w.field("token", nk.token);
  w.key("scopes");
  w.begin_array();
  for (const std::string& scope : a.scopes) w.string(scope);
  w.end_array();
  w.end_object();
  print_line(out);
  return 0;
}

int keys_list(Store& store) {
  std::vector<ApiKey> keys;
  Status s = store.list_keys(keys);
  if (!s.ok()) return fail("cannot list keys: " + s.message());
  for (const ApiKey& k : keys) print_line(key_json(k));
  return 0;
}

int keys_revoke(Store& store, const Args& a) {
  if (a.positional.size() != 1) return usage("keys revoke takes one KEY_ID");
  const std::string& id = a.positional[0];
  if (!is_key_id(id)) return usage("a key id is 16 hex digits: " + id);
  Status s = store.revoke_key(id, utc_timestamp_ms());
  if (s.code() == StatusCode::kNotFound) return fail("no such key: " + id);
  if (!s.ok()) return fail("cannot revoke the key: " + s.message());
  ApiKey k;
  s = store.find_key(id, k);
  if (!s.ok()) return fail("revoked, but cannot read the key back: " + s.message());
  print_line(key_json(k));
  return 0;
}

// Checks the whole chain. With expect_head (SEQ:HASH, printed as "head" by an earlier verify
// and kept elsewhere), also checks that entry SEQ still has HASH: the chain alone cannot tell
// that its end was cut off, or that it was rewritten from some entry on.
int audit_verify(Store& store, const std::string& expect_head) {
  long long expect_seq = 0;
  std::string expect_hash;
  if (!expect_head.empty()) {
    size_t colon = expect_head.find(':');
    char* end = nullptr;
    expect_seq = colon == std::string::npos ? 0 : std::strtoll(expect_head.c_str(), &end, 10);
    if (expect_seq < 1 || end != expect_head.c_str() + colon) {
      return usage("--expect-head takes SEQ:HASH as printed by audit verify");
    }
    expect_hash = expect_head.substr(colon + 1);
  }
  // Every row (the listing starts below any seq there is), then the table's count compared:
  // the same verifier as backup and restore (verify_audit_trail).
  AuditChainVerifier v;
  std::string problem;
  bool head_seen = expect_seq == 0;
  AuditTrail trail;
  trail.list_all = [&](const std::function<bool(const AuditEntry&)>& on_entry) {
    AuditQuery everything;
    everything.after_seq = std::numeric_limits<long long>::min();
    return store.list_audit(everything, on_entry);
  };
  trail.count_up_to = [&](long long up_to, long long& rows) {
    return store.count_audit(up_to, rows);
  };
  Status s = verify_audit_trail(trail, v, problem, [&](const AuditEntry& e, std::string& why) {
    if (e.seq == expect_seq) {
      head_seen = true;
      if (e.hash != expect_hash) {
        why = "entry " + std::to_string(e.seq) +
              ": hash differs from the expected head (the chain was rewritten)";
        return false;
      }
    }
    return true;
  });
  if (!s.ok()) return fail("cannot read the audit trail: " + s.message());
  if (problem.empty() && !head_seen) {
    problem = "entry " + std::to_string(expect_seq) + ": missing (the chain ends at entry " +
              std::to_string(v.last_seq()) + "; entries were removed from its end)";
  }
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.field("status", problem.empty() ? "ok" : "broken");
  w.field("verified_entries", v.checked());
  if (v.failovers() > 0) w.field("failover_boundaries", v.failovers());
  if (problem.empty()) {
    w.field("head", std::to_string(v.last_seq()) + ":" + v.last_hash());
  } else {
    w.field("problem", problem);
  }
  w.end_object();
  print_line(out);
  return problem.empty() ? 0 : 1;
}

int audit_export(Store& store) {
  Status s = store.list_audit({}, [&](const AuditEntry& e) {
    print_line(audit_entry_json(e));
    return true;
  });
  if (!s.ok()) return fail("cannot read the audit trail: " + s.message());
  return std::fflush(stdout) == 0 ? 0 : fail("cannot write the export");
}

}  // namespace

const char* admin_usage() { return kUsage; }

bool is_admin_command(int argc, char** argv) {
  if (argc < 2) return false;
  std::string cmd = argv[1];
  return cmd == "keys" || cmd == "audit" || cmd == "migrate" || cmd == "backup" ||
         cmd == "restore" || cmd == "config";
}

int run_admin_command(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "config") return run_config_command(argc, argv, environ);
  // Root on a packaged server: the package's settings, and the service user's rights, so that
  // no file this creates (a backup, a restored database, a WAL) is root's.
  std::string become_error;
  if (!become_service_user_if_packaged(environ, become_error)) return fail(become_error);
  if (argc >= 2 && std::string(argv[1]) == "migrate") return run_migrate_command(argc, argv);
  if (argc >= 2 && std::string(argv[1]) == "backup") return run_backup_command(argc, argv);
  if (argc >= 2 && std::string(argv[1]) == "restore") return run_restore_command(argc, argv);
  if (argc < 3) return usage("missing subcommand");
  const std::string group = argv[1], verb = argv[2];
  const bool known =
      (group == "keys" && (verb == "create" || verb == "list" || verb == "revoke")) ||
      (group == "audit" && (verb == "verify" || verb == "export"));
  if (!known) return usage("unknown command: " + group + " " + verb);
  Args a;
  std::string error;
  if (!parse_args(argc, argv, a, error)) return usage(error);
  if (verb != "revoke" && !a.positional.empty()) return usage("unexpected " + a.positional[0]);
  std::unique_ptr<Store> store;
  Status s =
      open_store(a.db, StoreRole::kAdmin, tool_store_settings(environment_from(environ)), store);
  if (!s.ok()) return fail("cannot open " + describe_target(a.db) + ": " + s.message());
  if (verb == "create") return keys_create(*store, a);
  if (verb == "list") return keys_list(*store);
  if (verb == "revoke") return keys_revoke(*store, a);
  if (verb == "verify") return audit_verify(*store, a.expect_head);
  return audit_export(*store);
}

}  // namespace tdapi
