// fuzz_auth.cpp: libFuzzer target over the Authorization header parser and scope syntax.
// Invariants: never crash; an accepted header yields a 16-hex key id and a 64-hex secret that
// re-parse to the same values; scope checks never grant a clinic the scope does not name.
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <string>

#include "security/auth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view raw(reinterpret_cast<const char*>(data), size);
  std::string id, secret;
  if (tdapi::parse_authorization(raw, id, secret) == tdapi::TokenParse::kOk) {
    assert(tdapi::is_key_id(id));
    assert(secret.size() == 64);
    std::string id2, secret2;
    assert(tdapi::parse_authorization("Bearer tdk_" + id + "_" + secret, id2, secret2) ==
           tdapi::TokenParse::kOk);
    assert(id2 == id && secret2 == secret);
  }
  if (tdapi::is_valid_scope(raw)) {
    tdapi::Principal p;
    p.scopes.emplace_back(raw);
    bool wildcard = raw == "read:*" || raw == "write:*";
    if (!wildcard) assert(!p.may(tdapi::Access::kRead, "clinic-the-scope-does-not-name\x01"));
  }
  return 0;
}
