// keys.cpp: a key's scopes in storage.
#include "store/keys.h"

#include "base/json.h"

namespace tdapi {

std::string scopes_json(const std::vector<std::string>& scopes) {
  std::string out;
  JsonWriter w(out);
  w.begin_array();
  for (const std::string& scope : scopes) w.string(scope);
  w.end_array();
  return out;
}

std::vector<std::string> scopes_from_json(std::string_view text) {
  std::vector<std::string> out;
  JsonTree tree = parse_json_document(text);
  if (!tree || !cJSON_IsArray(tree.get())) return out;
  for (const cJSON* item = tree->child; item != nullptr; item = item->next) {
    if (cJSON_IsString(item)) out.emplace_back(item->valuestring);
  }
  return out;
}

}  // namespace tdapi
