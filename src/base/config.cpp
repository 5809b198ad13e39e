// config.cpp: the settings table, environment files, validation and rendering.
#include "base/config.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/url.h"

namespace tdapi {

namespace {

using K = SettingKind;
using P = SettingPlace;

// clang-format off
const std::vector<Setting> kSettings = {
  // --- Storage ---
  {"DB_PATH", K::kPath, 0, 0, "", "`$DATA_DIR/testdata.db`", P::kEnvFile,
   "/var/lib/testdata-api/testdata.db", "", "Storage",
   "The SQLite database file (used when DATABASE_URL is empty). In the package it must be "
   "inside /var/lib/testdata-api: the service may write nowhere else."},
  {"DATABASE_URL", K::kText, 0, 0, "", "none: SQLite", P::kEnvFile, "", "", "Storage",
   "A libpq connection string (postgresql://user@host/db, or host=... dbname=... words): store "
   "in PostgreSQL instead of SQLite. Shown in logs with any password as ***. Keep a password "
   "out of it: libpq reads PGPASSFILE (unset: ~/.pgpass of the service user, mode 0600) or "
   "PGPASSWORD from the environment, which may be set in this file too."},
  {"DATABASE_READ_URL", K::kText, 0, 0, "", "none: every read from DATABASE_URL", P::kEnvFile,
   "", "", "Storage",
   "A libpq connection string naming PostgreSQL read replicas (standbys of DATABASE_URL's "
   "server; several hosts in one string, e.g. postgresql://user@replica1,replica2/db): single "
   "reads and listings go there, writes, the audit trail, history and the change feed stay on "
   "DATABASE_URL. A write's answer carries X-Commit-Position; a read that sends it back sees "
   "that write (it waits up to 1 s for a replica to replay it, else reads from DATABASE_URL). "
   "Needs DATABASE_URL."},
  {"DATABASE_POOLER", K::kChoice, 0, 0, "none|transaction", "`none`", P::kEnvFile, "none", "",
   "Storage",
   "What is between the app and PostgreSQL: none, or transaction, a pooler in transaction mode "
   "(PgBouncer's pool_mode = transaction), which hands each transaction to any server "
   "connection: the app then keeps nothing on a server connection past a transaction "
   "(statements are sent unnamed, timeouts set in each transaction)."},
  {"DATABASE_ROUND_TRIP_TIMEOUT_MS", K::kInteger, 100, 600000, "", "`10000`", P::kEnvFile,
   "10000", "", "Storage",
   "PostgreSQL: the deadline, in ms, of every round trip to the server (past it the statement "
   "is cancelled) and of every write from its arrival: a write whose COMMIT the server has not "
   "confirmed by then (a synchronous standby gone, the server stuck) is answered 503 "
   "\"outcome unknown\" (look it up with GET /tests/{id}), never 201, and /healthz answers "
   "503 while a write waits longer. Keep it well below FASTCGI_READ_TIMEOUT."},
  {"DATABASE_SYNCHRONOUS_COMMIT", K::kChoice, 0, 0, "on|remote_write|remote_apply", "`on`",
   P::kEnvFile, "on", "", "Storage",
   "PostgreSQL: what a write's COMMIT waits for before its 201: on, the WAL flushed on the "
   "primary and, when the server names synchronous standbys (synchronous_standby_names), on "
   "them too; remote_write, on the primary's disk and in the standbys' memory (their operating "
   "system); remote_apply, on the primary's disk and applied on the standbys, so a read there "
   "sees it."},
  {"MAX_DB_PAGES", K::kInteger, 1, 4294967294LL, "", "none", P::kEnvFile, "", "", "Storage",
   "Cap on the SQLite database size, in 4 KiB pages; beyond it writes answer 507. Empty: no "
   "cap. Not with DATABASE_URL."},
  {"BUSY_TIMEOUT_MS", K::kInteger, 0, 3600000, "", "`5000`", P::kEnvFile, "5000", "",
   "Storage",
   "How long a write waits for a database lock held by another process, in ms, before a 503."},
  // --- The app ---
  {"THREADS", K::kInteger, 1, kMaxThreads, "", "32 per core, at most 256", P::kEnvFile, "", "",
   "The app",
   "App worker threads (they mostly wait; more threads make bigger group commits). The app "
   "raises its soft open-files limit to what they need, or refuses to start naming "
   "RLIMIT_NOFILE. Below 4 per core, lower `keepalive` in the nginx site (8 per nginx worker) "
   "to at most THREADS / (4 x cores)."},
  {"STOP_TIMEOUT_MS", K::kInteger, 0, 3600000, "", "`10000`", P::kEnvFile, "10000", "",
   "The app",
   "How long the app lets in-flight requests finish on a stop, in ms, before exiting 1 (and "
   "being restarted). Keep it well below the unit's TimeoutStopSec (60 s)."},
  {"FEED_MAX_WAITING", K::kInteger, 0, 100000, "", "`1000`", P::kEnvFile, "1000", "", "The app",
   "Change feed long polls (GET /changes?wait=) held open at once per app process; they hold "
   "no worker thread but one connection each. Past it, a long poll is answered at once with what "
   "there is."},
  {"WRITE_COMMIT", K::kChoice, 0, 0, "thread|leader", "`thread`", P::kEnvFile, "thread", "",
   "The app",
   "Who commits a group of writes: thread, the app's writer thread, to which each request hands "
   "its write; or leader, the first waiting request's own thread, which commits the group and "
   "hands the lead on."},
  // --- Security ---
  {"AUTH", K::kChoice, 0, 0, "on|off",
   "`off` on a loopback `LISTEN`, `on` otherwise (`serve`: `on`)", P::kEnvFile, "on", "",
   "Security",
   "on: every request but /healthz needs a bearer key (testdata-api keys create). off is safe "
   "only while nginx listens on loopback alone and every local user may read every clinic."},
  {"AUDIT", K::kChoice, 0, 0, "on|off", "`on`", P::kEnvFile, "on", "", "Security",
   "The audit trail of every access to patient data: on, or off (only with AUTH=off)."},
  {"AUDIT_READS", K::kChoice, 0, 0, "crash-safe|durable", "`crash-safe`", P::kEnvFile,
   "crash-safe", "", "Security",
   "A read's audit entry: crash-safe (committed before the answer, so it survives a crash of "
   "the app; on disk within 100 ms) or durable (on disk before the answer: a disk sync per "
   "read)."},
  {"ANON_RATE", K::kRate, 0, 0, "", "`100r/s` with `AUTH=on`, else `50000r/s`", P::kEnvFile, "",
   "", "Security",
   "Per-address rate of requests without a valid key. The app limits failed authentications "
   "per address at this rate (429 beyond it); the nginx site's zone tdapi_req_anon has its own "
   "copy (rate=100r/s)."},
  {"ANON_BURST", K::kInteger, 0, 1000000, "", "`200` with `AUTH=on`, else `50000`", P::kEnvFile,
   "", "", "Security", "The burst allowed above ANON_RATE (the app's and nginx's, as ANON_RATE)."},
  // --- Backups ---
  {"BACKUP_DIR", K::kPath, 0, 0, "", "`$DATA_DIR/backups`", P::kEnvFile,
   "/var/lib/testdata-api/backups", "", "Backups",
   "Where `testdata-api backup` (and the nightly testdata-api-backup.timer) writes dated "
   "copies. Outside /var/lib/testdata-api it must be made writable for the backup unit: "
   "systemctl edit testdata-api-backup.service, [Service] ReadWritePaths=DIR."},
  {"BACKUP_KEEP", K::kInteger, 1, 100000, "", "`7`", P::kEnvFile, "7", "", "Backups",
   "How many of the newest backups in BACKUP_DIR to keep."},
  // --- nginx ---
  {"PORT", K::kInteger, 1, 65535, "", "`5000`", P::kNginxSite, "", "listen 127.0.0.1:5000;",
   "nginx", "nginx listens on 127.0.0.1:PORT."},
  {"LISTEN", K::kListen, 0, 0, "", "`127.0.0.1:$PORT`", P::kNginxSite, "",
   "listen 127.0.0.1:5000; (a non-loopback address needs TLS)", "nginx",
   "The one ADDR:PORT nginx listens on: an IPv4 address, an [IPv6] address or a host name, "
   "port 1-65535."},
  {"TLS_CERT", K::kPath, 0, 0, "", "none", P::kNginxSite, "",
   "ssl_certificate, with `listen ... ssl`", "nginx",
   "PEM certificate (chain): nginx serves HTTPS only (with TLS_KEY)."},
  {"TLS_KEY", K::kPath, 0, 0, "", "none", P::kNginxSite, "", "ssl_certificate_key", "nginx",
   "The PEM key of TLS_CERT."},
  {"ALLOW_PLAINTEXT", K::kChoice, 0, 0, "1", "unset", P::kNginxSite, "",
   "a non-loopback listen without ssl: only behind a TLS-terminating proxy", "nginx",
   "1: allow a non-loopback LISTEN without TLS_CERT, because a load balancer in front "
   "terminates TLS."},
  {"KEY_RATE", K::kRate, 0, 0, "", "`50000r/s`", P::kNginxSite, "",
   "zone=tdapi_req_per_key rate=50000r/s", "nginx", "Per-key request rate in nginx (429 beyond)."},
  {"KEY_BURST", K::kInteger, 0, 1000000000, "", "`50000`", P::kNginxSite, "",
   "burst=50000 of tdapi_req_per_key", "nginx", "The burst allowed above KEY_RATE."},
  {"FASTCGI_READ_TIMEOUT", K::kTime, 0, 0, "", "`30s`", P::kNginxSite, "",
   "fastcgi_read_timeout 30s;", "nginx", "How long nginx waits for the app before a 504."},
  {"CONN_LIMIT_PER_ADDR", K::kInteger, 1, 999999999, "", "`256`", P::kNginxSite, "",
   "limit_conn tdapi_conn_per_addr 256;", "nginx",
   "Concurrent requests per client address in nginx; more: 429."},
  {"RATE_LIMIT_PER_ADDR", K::kInteger, 1, 999999999, "", "`50000`", P::kNginxSite, "",
   "zone=tdapi_req_per_addr rate=50000r/s (+ burst)", "nginx",
   "Requests per second per client address (burst: one second's worth); more: 429."},
  {"TCP_CONN_LIMIT_PER_ADDR", K::kInteger, 1, 999999999, "", "`512`", P::kNginxSite, "",
   "not in the package: the stream proxy lives in nginx's main context, Debian's", "nginx",
   "Open connections per client address, counted by a stream proxy in front of nginx's HTTP "
   "server."},
  {"LISTING_SPOOL_MAX", K::kSize, 0, 0, "", "`1024m`", P::kNginxSite, "",
   "fastcgi_max_temp_file_size 1024m; (spooled in /var/lib/nginx/fastcgi)", "nginx",
   "Largest temp file nginx spools one response into."},
  {"NGINX_TEMP_DIR", K::kPath, 0, 0, "", "`$DATA_DIR/nginx`", P::kNginxSite, "",
   "nginx's own /var/lib/nginx", "nginx",
   "nginx's temp files: request bodies beyond their buffer, spooled listings."},
  // --- make run, fixed by the package ---
  {"DATA_DIR", K::kPath, 0, 0, "", "`./var`", P::kFixed, "",
   "/var/lib/testdata-api (database, backups); socket in /run/testdata-api; logs in the journal "
   "and /var/log/nginx/testdata-api.*", "make run",
   "The database, socket and pid files (run/), logs (logs/), the rendered nginx.conf, nginx's "
   "temp dirs; with PostgreSQL, the failover fence (postgresql-timeline)."},
  {"SOCKET", K::kPath, 0, 0, "",
   "`$RUNTIME_DIRECTORY/app.sock` under systemd, else `$DATA_DIR/run/app.sock`", P::kFixed, "",
   "/run/testdata-api/app.sock (the unit's RuntimeDirectory); node N: app-N.sock", "make run",
   "The FastCGI socket `testdata-api serve` listens on."},
  {"SOCKET_MODE", K::kChoice, 0, 0, "0600|0660", "`0600`", P::kFixed, "",
   "0660: nginx's workers (www-data, in the group testdata-api) connect", "make run",
   "The socket's mode: 0600, or 0660 for a web server in the app's group."},
  {"SERVICE_USER", K::kUser, 0, 0, "", "`testdata-api`", P::kFixed, "",
   "testdata-api (created on install; the unit's User=)", "make run",
   "Started as root: the system user the app and nginx run as; root opts out."},
  {"START_TIMEOUT", K::kInteger, 0, 999999999, "", "`600`", P::kFixed, "",
   "none: systemd waits for the app's readiness (TimeoutStartSec)", "make run",
   "Seconds `make run` waits for the app to be ready; 0 waits as long as it is alive."},
  // --- Nodes ---
  {"APP_NODES", K::kInteger, 1, 16, "", "`1`", P::kEnvFile, "", "", "Nodes",
   "App processes (1-16), each with its own socket, behind one nginx upstream. More than 1 "
   "needs DATABASE_URL. In the package `dpkg-reconfigure testdata-api` applies it: "
   "testdata-api@1..N.service in place of testdata-api.service, and the upstream's node list "
   "/etc/testdata-api/nginx-upstream.conf."},
  // --- Logs: make run's forwarder, the system's rsyslog in the package ---
  {"LOG_FORWARD", K::kLogForward, 0, 0, "", "none", P::kEnvFile, "", "", "Logs",
   "relp://HOST:PORT or tcp://HOST:PORT: ship the app's log and nginx's access log to a syslog "
   "collector. In the package the system's rsyslog forwards the journal through a drop-in, "
   "/etc/rsyslog.d/testdata-api.conf, made or removed by `dpkg-reconfigure testdata-api`."},
  {"LOG_FORWARD_QUEUE_MAX", K::kSize, 0, 0, "", "`1g`", P::kEnvFile, "", "", "Logs",
   "Disk the forwarding queue may fill while the collector is unreachable."},
};
// clang-format on

bool has_control(const std::string& v) {
  for (unsigned char c : v) {
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

bool all_digits(const std::string& s, size_t min_len, size_t max_len) {
  if (s.size() < min_len || s.size() > max_len) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool is_host(const std::string& h) {
  if (h.empty() || h.size() > 253) return false;
  if (h.front() == '[') {
    if (h.back() != ']' || h.size() > 47 || h.find(':') == std::string::npos) return false;
    for (size_t i = 1; i + 1 < h.size(); ++i) {
      char c = h[i];
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.') return false;
    }
    return true;
  }
  bool digits_and_dots = true;
  size_t label = 0;
  for (size_t i = 0; i <= h.size(); ++i) {
    if (i == h.size() || h[i] == '.') {
      if (label == 0 || label > 63 || h[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    char c = h[i];
    if (!std::isalnum(static_cast<unsigned char>(c)) && (c != '-' || label == 0)) return false;
    if (!std::isdigit(static_cast<unsigned char>(c))) digits_and_dots = false;
    ++label;
  }
  if (!digits_and_dots) return true;
  // An IPv4 address: four octets 0-255.
  std::stringstream ss(h);
  std::string part;
  int parts = 0;
  while (std::getline(ss, part, '.')) {
    long long n = 0;
    if (!all_digits(part, 1, 3) || (part.size() > 1 && part[0] == '0') ||
        !parse_integer(part.c_str(), 0, 255, n)) {
      return false;
    }
    ++parts;
  }
  return parts == 4;
}

bool is_host_port(const std::string& v) {
  size_t colon = v.rfind(':');
  if (colon == std::string::npos) return false;
  std::string port = v.substr(colon + 1);
  long long n = 0;
  return all_digits(port, 1, 5) && parse_integer(port.c_str(), 1, 65535, n) &&
         is_host(v.substr(0, colon));
}

bool is_user_name(const std::string& v) {
  if (v.empty() || v.size() > 32 || v[0] == '-') return false;
  for (char c : v) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') {
      return false;
    }
  }
  return true;
}

// The problem with `value` for `s`, or "" when it is fine.
std::string check_value(const Setting& s, const std::string& value) {
  const std::string name = s.name;
  const std::string shown = "'" + value + "'";
  if (has_control(value)) return name + " must not contain control characters";
  long long n = 0;
  switch (s.kind) {
    case K::kText:
      return "";
    case K::kPath:
      return "";
    case K::kInteger:
      if (parse_integer(value.c_str(), s.min, s.max, n) && value[0] != '-' &&
          (value.size() == 1 || value[0] != '0')) {
        return "";
      }
      return name + " must be a whole number from " + std::to_string(s.min) + " to " +
             std::to_string(s.max) + ", not " + shown;
    case K::kChoice: {
      std::string choices = std::string("|") + s.choices + "|";
      if (value.find('|') == std::string::npos &&
          choices.find("|" + value + "|") != std::string::npos) {
        return "";
      }
      std::string list = s.choices;
      for (size_t i = list.find('|'); i != std::string::npos; i = list.find('|', i)) {
        list.replace(i, 1, " or ");
      }
      return name + " must be " + list + ", not " + shown;
    }
    case K::kRate:
      if (parse_rate_per_minute(value, n)) return "";
      return name + " must look like 100r/s or 600r/m (1 to 1000000), not " + shown;
    case K::kSize: {
      std::string digits = value;
      if (!digits.empty() && std::strchr("kmgKMG", digits.back()) != nullptr) digits.pop_back();
      if (all_digits(digits, 1, 12) && digits != std::string(digits.size(), '0')) return "";
      return name + " must be a size such as 512m or 2g, not " + shown;
    }
    case K::kTime: {
      std::string digits = value;
      for (const char* unit : {"ms", "s", "m", "h"}) {
        size_t len = std::strlen(unit);
        if (digits.size() > len && digits.compare(digits.size() - len, len, unit) == 0) {
          digits.resize(digits.size() - len);
          break;
        }
      }
      if (all_digits(digits, 1, 9)) return "";
      return name + " must be a time such as 30s or 2m, not " + shown;
    }
    case K::kListen:
      if (is_host_port(value)) return "";
      return name +
             " must be ADDR:PORT (ADDR an IPv4 address, an [IPv6] address or a host name; PORT "
             "1-65535), not " +
             shown;
    case K::kLogForward: {
      for (const char* scheme : {"relp://", "tcp://"}) {
        size_t len = std::strlen(scheme);
        if (value.compare(0, len, scheme) == 0 && is_host_port(value.substr(len))) return "";
      }
      return name + " must be relp://HOST:PORT or tcp://HOST:PORT, not " + shown;
    }
    case K::kUser:
      if (is_user_name(value)) return "";
      return name + " must be a user name, not " + shown;
  }
  return "";
}

std::string value_of(const Environment& env, const char* name) {
  auto it = env.find(name);
  return it == env.end() ? std::string() : it->second;
}

bool is_setting_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// `text` in lines of at most 95 columns: the first starts with `first`, the others with `next`.
std::string wrap(const std::string& text, const std::string& first, const std::string& next) {
  std::string out, line = first;
  bool empty = true;
  std::istringstream words(text);
  std::string w;
  while (words >> w) {
    if (!empty && line.size() + 1 + w.size() > 95) {
      out += line + "\n";
      line = next;
      empty = true;
    }
    line += (empty ? "" : " ") + w;
    empty = false;
  }
  return out + line + "\n";
}

std::string wrap_comment(const std::string& text) { return wrap(text, "# ", "# "); }

std::string listen_of(const Environment& env) {
  std::string listen = value_of(env, "LISTEN");
  if (!listen.empty()) return listen;
  std::string port = value_of(env, "PORT");
  return "127.0.0.1:" + (port.empty() ? std::string("5000") : port);
}

}  // namespace

bool is_loopback_listen(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  return host == "localhost" || host == "[::1]" ||
         (host.compare(0, 4, "127.") == 0 &&
          host.find_first_not_of("0123456789.") == std::string::npos);
}

bool resolve_dev_environment(const Environment& env, unsigned cores, Environment& out,
                             std::vector<std::string>& problems) {
  if (!validate_environment(env, problems)) return false;
  out = env;
  auto fill = [&out](const char* name, const std::string& value) {
    if (value_of(out, name).empty()) out[name] = value;
  };
  fill("PORT", "5000");
  fill("LISTEN", listen_of(out));
  const bool loopback = is_loopback_listen(out["LISTEN"]);
  fill("AUTH", loopback ? "off" : "on");
  const bool auth = out["AUTH"] == "on";
  fill("ANON_RATE", auth ? "100r/s" : "50000r/s");
  fill("ANON_BURST", auth ? "200" : "50000");
  fill("KEY_RATE", "50000r/s");
  fill("KEY_BURST", "50000");
  fill("FASTCGI_READ_TIMEOUT", "30s");
  fill("CONN_LIMIT_PER_ADDR", "256");
  fill("RATE_LIMIT_PER_ADDR", "50000");
  fill("TCP_CONN_LIMIT_PER_ADDR", "512");
  fill("LISTING_SPOOL_MAX", "1024m");
  fill("THREADS", std::to_string(default_thread_count(cores)));
  fill("STOP_TIMEOUT_MS", "10000");
  fill("START_TIMEOUT", "600");
  fill("APP_NODES", "1");
  fill("LOG_FORWARD_QUEUE_MAX", "1g");
  // What the defaults imply (AUDIT=off with AUTH on off loopback): checked on the result too.
  std::vector<std::string> more;
  if (!validate_environment(out, more)) {
    problems.insert(problems.end(), more.begin(), more.end());
    return false;
  }
  out["LOOPBACK"] = loopback ? "1" : "0";
  out["DATABASE_URL_SHOWN"] = redact_url_text(value_of(out, "DATABASE_URL"));
  return true;
}

const std::vector<Setting>& settings_table() { return kSettings; }

const Setting* find_setting(const std::string& name) {
  for (const Setting& s : kSettings) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

Environment environment_from(char** envp) {
  Environment env;
  for (char** p = envp; p != nullptr && *p != nullptr; ++p) {
    const char* eq = std::strchr(*p, '=');
    if (eq == nullptr) continue;
    std::string name(*p, static_cast<size_t>(eq - *p));
    if (find_setting(name) != nullptr || name == "RUNTIME_DIRECTORY") env[name] = eq + 1;
  }
  return env;
}

void parse_environment_text(const std::string& text, const std::string& origin, Environment& out,
                            std::vector<std::string>& problems) {
  std::istringstream in(text);
  std::string raw;
  int number = 0;
  while (std::getline(in, raw)) {
    int first = ++number;
    // A trailing backslash joins the next line (systemd's continuation).
    while (!raw.empty() && raw.back() == '\\') {
      std::string next;
      if (!std::getline(in, next)) break;
      ++number;
      raw.pop_back();
      raw += next;
    }
    std::string line = trim(raw);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    const std::string where = origin + ":" + std::to_string(first) + ": ";
    size_t eq = line.find('=');
    std::string name = eq == std::string::npos ? "" : trim(line.substr(0, eq));
    if (!is_setting_name(name)) {
      problems.push_back(where + "not a NAME=value line");
      continue;
    }
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value[0] == '"' || value[0] == '\'') && value.back() == value[0]) {
      char quote = value[0];
      value = value.substr(1, value.size() - 2);
      if (quote == '"') {
        std::string unescaped;
        for (size_t i = 0; i < value.size(); ++i) {
          if (value[i] == '\\' && i + 1 < value.size()) ++i;
          unescaped += value[i];
        }
        value = unescaped;
      }
    }
    if (find_setting(name) == nullptr && name.compare(0, 2, "PG") != 0 &&
        name.compare(0, 6, "TDAPI_") != 0) {
      problems.push_back(where + name + " is not a setting of testdata-api (misspelt?)");
      continue;
    }
    out[name] = value;
  }
}

bool read_environment_file(const std::string& path, Environment& out,
                           std::vector<std::string>& problems) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    problems.push_back(path + ": cannot read it: " + std::strerror(errno));
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  size_t before = problems.size();
  parse_environment_text(text.str(), path, out, problems);
  return problems.size() == before;
}

bool load_configuration(const std::string& env_file, char** envp, Environment& env,
                        std::string& source, std::vector<std::string>& problems) {
  env = environment_from(envp);
  std::string file = env_file;
  if (file.empty() && geteuid() == 0 && access(kPackageEnvFile, F_OK) == 0) file = kPackageEnvFile;
  source = file.empty() ? "the environment" : file;
  if (file.empty()) return true;
  // The file's settings, with any set (non-empty) in the environment on top: what an operator
  // types before the command wins.
  Environment from_file;
  bool ok = read_environment_file(file, from_file, problems);
  for (const auto& kv : from_file) {
    auto it = env.find(kv.first);
    if (it == env.end() || it->second.empty()) env[kv.first] = kv.second;
  }
  return ok;
}

bool validate_environment(const Environment& env, std::vector<std::string>& problems) {
  size_t before = problems.size();
  for (const Setting& s : kSettings) {
    std::string v = value_of(env, s.name);
    if (v.empty()) continue;
    std::string why = check_value(s, v);
    if (!why.empty()) problems.push_back(why);
  }
  // The combinations the app or make run refuses.
  const std::string url = value_of(env, "DATABASE_URL");
  if (url.empty() && !value_of(env, "DATABASE_READ_URL").empty()) {
    problems.push_back(
        "DATABASE_READ_URL names read replicas of DATABASE_URL's server: set "
        "DATABASE_URL too");
  }
  if (!url.empty() && !value_of(env, "MAX_DB_PAGES").empty()) {
    problems.push_back("MAX_DB_PAGES caps an SQLite file; with DATABASE_URL leave it empty");
  }
  if (value_of(env, "AUTH") == "on" && value_of(env, "AUDIT") == "off") {
    problems.push_back("AUDIT=off is allowed only with AUTH=off");
  }
  long long nodes = 1;
  std::string nodes_text = value_of(env, "APP_NODES");
  if (!nodes_text.empty() && parse_integer(nodes_text.c_str(), 1, 16, nodes) && nodes > 1 &&
      url.empty()) {
    problems.push_back("APP_NODES=" + nodes_text +
                       " needs DATABASE_URL (PostgreSQL): SQLite serves from one app process");
  }
  const bool tls = !value_of(env, "TLS_CERT").empty();
  if (tls != !value_of(env, "TLS_KEY").empty()) {
    problems.push_back("TLS_CERT and TLS_KEY go together: set both or neither");
  }
  // Paths nginx.conf takes as they are: no room for a second directive.
  for (const char* name : {"TLS_CERT", "TLS_KEY", "NGINX_TEMP_DIR"}) {
    std::string v = value_of(env, name);
    if (v.find_first_not_of(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./@+,=-") !=
        std::string::npos) {
      problems.push_back(std::string(name) +
                         " must be a path of letters, digits and _ . / @ + , = - only, not '" + v +
                         "'");
    } else if (!v.empty() && v[0] != '/' && std::strcmp(name, "NGINX_TEMP_DIR") == 0) {
      problems.push_back("NGINX_TEMP_DIR must be an absolute path, not '" + v + "'");
    }
  }
  // Off loopback: keys and TLS (or a TLS-terminating proxy in front, ALLOW_PLAINTEXT=1).
  std::string listen = listen_of(env);
  if (is_host_port(listen) && !is_loopback_listen(listen)) {
    if (value_of(env, "AUTH") == "off") {
      problems.push_back(
          "AUTH=off is allowed only while nginx listens on loopback, and LISTEN=" + listen +
          " is not: every client could read every clinic. Use AUTH=on and give "
          "clients keys (make key)");
    }
    if (!tls && value_of(env, "ALLOW_PLAINTEXT") != "1") {
      problems.push_back("LISTEN=" + listen +
                         " is not loopback: set TLS_CERT and TLS_KEY for HTTPS, or "
                         "ALLOW_PLAINTEXT=1 if a load balancer in front terminates TLS");
    }
  }
  return problems.size() == before;
}

bool options_from_environment(const Environment& env, unsigned cores, bool as_root, AppOptions& out,
                              std::vector<std::string>& problems) {
  if (!validate_environment(env, problems)) return false;
  out = AppOptions{};
  out.threads = default_thread_count(cores);
  std::string data_dir = value_of(env, "DATA_DIR");
  if (data_dir.empty()) data_dir = "./var";
  out.data_dir = data_dir;
  out.socket_path = value_of(env, "SOCKET");
  if (out.socket_path.empty()) {
    std::string runtime = value_of(env, "RUNTIME_DIRECTORY");
    runtime = runtime.substr(0, runtime.find(':'));  // several: the first
    out.socket_path = runtime.empty() ? data_dir + "/run/app.sock" : runtime + "/app.sock";
  }
  out.socket_mode = value_of(env, "SOCKET_MODE") == "0660" ? 0660 : 0600;
  out.database_url = value_of(env, "DATABASE_URL");
  out.database_read_url = value_of(env, "DATABASE_READ_URL");
  out.transaction_pooler = value_of(env, "DATABASE_POOLER") == "transaction";
  const std::string sync = value_of(env, "DATABASE_SYNCHRONOUS_COMMIT");
  if (!sync.empty()) out.synchronous_commit = sync;
  if (out.database_url.empty()) {
    out.db_path = value_of(env, "DB_PATH");
    if (out.db_path.empty()) out.db_path = data_dir + "/testdata.db";
  }
  long long n = 0;
  auto number = [&](const char* name, long long& into) {
    std::string v = value_of(env, name);
    if (!v.empty() && parse_integer(v.c_str(), 0, 4294967294LL, n)) into = n;
  };
  long long threads = out.threads, busy = out.busy_timeout_ms, stop = out.stop_timeout_ms;
  number("THREADS", threads);
  number("BUSY_TIMEOUT_MS", busy);
  number("STOP_TIMEOUT_MS", stop);
  number("MAX_DB_PAGES", out.max_db_pages);
  long long round_trip = out.round_trip_timeout_ms;
  number("DATABASE_ROUND_TRIP_TIMEOUT_MS", round_trip);
  out.round_trip_timeout_ms = static_cast<int>(round_trip);
  long long feed = out.feed_max_waiting;
  number("FEED_MAX_WAITING", feed);
  out.feed_max_waiting = static_cast<int>(feed);
  number("ANON_BURST", out.auth_failure_burst);
  out.threads = static_cast<int>(threads);
  out.busy_timeout_ms = static_cast<int>(busy);
  out.stop_timeout_ms = static_cast<int>(stop);
  std::string rate = value_of(env, "ANON_RATE");
  if (!rate.empty()) parse_rate_per_minute(rate, out.auth_failure_rate_per_minute);
  out.auth = value_of(env, "AUTH") != "off";
  out.audit = value_of(env, "AUDIT") != "off";
  out.audit_reads_durable = value_of(env, "AUDIT_READS") == "durable";
  if (as_root) {
    out.user = value_of(env, "SERVICE_USER");
    if (out.user.empty()) out.user = "testdata-api";
    if (out.user == "root") out.user.clear();
  }
  return true;
}

std::string render_environment_file() {
  std::string out =
      "# /etc/testdata-api/testdata-api.env: settings of testdata-api.service, its backup unit\n"
      "# and of the administration commands run as root (systemd's EnvironmentFile: one "
      "NAME=value a\n"
      "# line, no shell expansion, no `export`). Check a change, then apply it:\n"
      "#   testdata-api config check && systemctl restart testdata-api\n"
      "# An unset or empty value means the default given. The file is mode 0600 (it may hold a\n"
      "# database password); the package keeps your changes on upgrades. Generated from the\n"
      "# table in the binary (testdata-api config env-file); every setting is listed below.\n";
  std::string section;
  for (const Setting& s : kSettings) {
    if (s.place != P::kEnvFile) continue;
    if (section != s.section) {
      section = s.section;
      out += "\n# --- " + section + " " + std::string(88 - section.size(), '-') + "\n";
    }
    std::string doc = s.doc + std::string(" Default: ") + s.default_doc + ".";
    doc.erase(std::remove(doc.begin(), doc.end(), '`'), doc.end());  // Markdown's
    out += wrap_comment(doc);
    out += std::string(s.name) + "=" + s.package_value + "\n";
  }
  out +=
      "\n# --- Set elsewhere in the package "
      "---------------------------------------------------------\n"
      "# In /etc/nginx/sites-available/testdata-api (then: nginx -t && systemctl reload nginx):\n";
  auto listed = [&](P place) {
    for (const Setting& s : kSettings) {
      if (s.place != place) continue;
      std::string name = s.name;
      out += wrap(s.package_note,
                  "#   " + name + std::string(name.size() < 24 ? 24 - name.size() : 1, ' '),
                  "#" + std::string(27, ' '));
    }
  };
  listed(P::kNginxSite);
  out += "# Fixed by the package:\n";
  listed(P::kFixed);
  return out;
}

std::string render_settings_table() {
  std::string out = "| Variable | Default | Meaning | In the package |\n|---|---|---|---|\n";
  for (const Setting& s : kSettings) {
    std::string where = s.place == P::kEnvFile     ? "`/etc/testdata-api/testdata-api.env`"
                        : s.place == P::kNginxSite ? std::string("nginx site: ") + s.package_note
                                                   : std::string("fixed: ") + s.package_note;
    out += std::string("| `") + s.name + "` | " + s.default_doc + " | " + s.doc + " | " + where +
           " |\n";
  }
  return out;
}

}  // namespace tdapi
