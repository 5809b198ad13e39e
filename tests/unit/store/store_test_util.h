// store_test_util.h: what the tests of both stores (SQLite, PostgreSQL) use to write and list.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "store/store.h"
#include "store/test_record.h"

namespace tdapi {

inline TestRecord make_record(const std::string& id, const std::string& clinic = "c1",
                              const std::string& type = "blood") {
  return TestRecord{id, "patient-" + id, clinic, type, "result of " + id};
}

// A string field of a stored document, or "<missing>".
inline std::string field_of(std::string_view json, const char* name) {
  JsonTree tree = parse_json_document(json);
  const cJSON* v = tree ? cJSON_GetObjectItemCaseSensitive(tree.get(), name) : nullptr;
  return v && cJSON_IsString(v) ? v->valuestring : "<missing>";
}

// The test_ids a listing delivers, checking that seq only grows and that it ends Ok.
inline std::vector<std::string> list_ids(Store& store, ListQuery q) {
  std::vector<std::string> ids;
  long long last = q.after_seq;
  Status s = store.list_tests(q, [&](std::string_view json, long long seq) {
    EXPECT_GT(seq, last);
    last = seq;
    ids.push_back(field_of(json, "test_id"));
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return ids;
}

inline std::vector<std::string> list_ids(Store& store, const std::string& clinic) {
  ListQuery q;
  q.clinic_id = clinic;
  return list_ids(store, q);
}

}  // namespace tdapi
