// keys.cpp: access keys in PostgreSQL (hashes of their secrets only).
#include "store/keys.h"

#include "base/utf8.h"
#include "store/pg/internal.h"

namespace tdapi {

namespace {

const char kKeyColumns[] =
    "SELECT key_id, name, scopes, secret_hash, created_at, coalesce(revoked_at, '')"
    " FROM api_keys";

void read_key(const PGresult* r, int row, ApiKey& out) {
  out.key_id.assign(value_view(r, row, 0));
  out.name.assign(value_view(r, row, 1));
  out.scopes = scopes_from_json(value_view(r, row, 2));
  out.secret_hash.assign(value_view(r, row, 3));
  out.created_at.assign(value_view(r, row, 4));
  out.revoked_at.assign(value_view(r, row, 5));
}

}  // namespace

Status PgStore::find_key(std::string_view key_id, ApiKey& out) {
  if (!is_valid_utf8(key_id)) return Status::NotFound("no such key");
  const std::string id(key_id);
  const std::string sql = std::string(kKeyColumns) + " WHERE key_id = $1";
  return with_reader("find key", [&](Connection& c) {
    PgResult r = c.run("key_get", sql.c_str(), {id.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "find key");
    if (PQntuples(r.get()) == 0) return Status::NotFound("no such key");
    read_key(r.get(), 0, out);
    return Status::Ok();
  });
}

Status PgStore::list_keys(std::vector<ApiKey>& out) {
  out.clear();
  const std::string sql = std::string(kKeyColumns) + " ORDER BY created_at, key_id";
  return with_reader("list keys", [&](Connection& c) {
    out.clear();
    PgResult r = c.exec(sql.c_str());
    if (!result_ok(r)) return c.error(r.get(), "list keys");
    out.resize(static_cast<size_t>(PQntuples(r.get())));
    for (int i = 0; i < PQntuples(r.get()); ++i) read_key(r.get(), i, out[static_cast<size_t>(i)]);
    return Status::Ok();
  });
}

Status PgStore::create_key(const ApiKey& key) {
  const std::string scopes = scopes_json(key.scopes);
  return with_reader(
      "create key",
      [&](Connection& c) {
        PgResult r = c.run("key_create",
                           "INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_at)"
                           " VALUES ($1, $2, $3, $4, $5)",
                           {key.key_id.c_str(), key.name.c_str(), scopes.c_str(),
                            key.secret_hash.c_str(), key.created_at.c_str()});
        return result_ok(r) ? Status::Ok() : c.error(r.get(), "create key");
      },
      /*retry_when_lost=*/false);
}

Status PgStore::revoke_key(std::string_view key_id, const std::string& when) {
  if (!is_valid_utf8(key_id)) return Status::NotFound("no such key");
  const std::string id(key_id);
  return with_reader(
      "revoke key",
      [&](Connection& c) {
        PgResult r = c.run("key_revoke",
                           "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2)"
                           " WHERE key_id = $1",
                           {id.c_str(), when.c_str()});
        if (!result_ok(r)) return c.error(r.get(), "revoke key");
        if (std::strcmp(PQcmdTuples(r.get()), "0") == 0) return Status::NotFound("no such key");
        return Status::Ok();
      },
      /*retry_when_lost=*/false);
}

}  // namespace tdapi
