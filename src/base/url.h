// url.h: database targets as users write them: an SQLite file path or a PostgreSQL URL.
#pragma once

#include <string>

namespace tdapi {

// True when `target` names a PostgreSQL database (postgresql:// or postgres:// URI, or a
// libpq keyword/value string with dbname= or host=) rather than an SQLite file.
bool is_postgres_url(const std::string& target);

// `url` (a URI or a keyword/value string) with any password replaced by "***", for logs: the
// URI's user:password@ part, a password= query parameter (also a percent-encoded key that may
// decode to it), a keyword/value password, bare or single-quoted. Text only: the PostgreSQL
// backend's redact_url also hides what libpq cannot parse.
std::string redact_url_text(const std::string& url);

}  // namespace tdapi
