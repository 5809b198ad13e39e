// config.h: the one table of the service's settings (environment variables): name, type,
// default, where the package keeps it, and what it means. From it come the validation of a
// configuration (`testdata-api config check`, and `serve` before it starts), the options of
// `testdata-api serve`, the package's environment file and the documentation's table. Pure:
// unit-tested.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "base/options.h"

namespace tdapi {

// What a setting's value must look like.
enum class SettingKind {
  kText,        // any text without control characters
  kPath,        // a file or directory path: no control characters
  kInteger,     // a whole decimal number in [min, max]
  kChoice,      // one of `choices` ("on|off")
  kRate,        // nginx's rate: 100r/s or 600r/m
  kSize,        // nginx's size: 1024, 512k, 1024m, 2g
  kTime,        // nginx's time: 30s, 500ms, 2m, 1h
  kListen,      // ADDR:PORT
  kLogForward,  // relp://HOST:PORT or tcp://HOST:PORT
  kUser,        // a user name
};

// Where the Debian package keeps a setting.
enum class SettingPlace {
  kEnvFile,    // /etc/testdata-api/testdata-api.env (the app reads it)
  kNginxSite,  // /etc/nginx/sites-available/testdata-api (nginx's part)
  kFixed,      // fixed by the package (`package_note` says how)
};

struct Setting {
  const char* name;
  SettingKind kind;
  long long min;        // kInteger
  long long max;        // kInteger
  const char* choices;  // kChoice: "a|b|c"
  const char* default_doc;
  SettingPlace place;
  const char* package_value;  // kEnvFile: the value the package's file sets ("" = the default)
  const char* package_note;   // kNginxSite/kFixed: where or what, in the package
  const char* section;        // the env file's section ("Storage", "The app", …)
  const char* doc;            // what it does (one paragraph, plain text)
};

// Every setting, in the env file's order.
const std::vector<Setting>& settings_table();
const Setting* find_setting(const std::string& name);

// name -> value. An empty value means the default, as if unset.
using Environment = std::map<std::string, std::string>;

// The settings of the table found in envp (NAME=value strings), others ignored.
Environment environment_from(char** envp);

// Parses an EnvironmentFile as systemd does: NAME=value lines, # and ; comments, blank lines,
// values optionally in single or double quotes, a trailing backslash continuing a line. Lines
// that are not of that form are named in `problems` ("PATH:LINE: …"). Names not in the table
// (other than libpq's PG* and TDAPI_*) are named too: a misspelt setting would be ignored.
bool read_environment_file(const std::string& path, Environment& out,
                           std::vector<std::string>& problems);
void parse_environment_text(const std::string& text, const std::string& origin, Environment& out,
                            std::vector<std::string>& problems);

// The package's environment file.
constexpr const char* kPackageEnvFile = "/etc/testdata-api/testdata-api.env";

// The configuration a command runs with: the settings of `env_file` when one is named, else of
// the package's file when run as root and it exists (root on a packaged server), with those set
// (non-empty) in envp on top. `source` says which ("the environment" or the file). False when the
// file cannot be read or has malformed lines (named in problems).
bool load_configuration(const std::string& env_file, char** envp, Environment& env,
                        std::string& source, std::vector<std::string>& problems);

// Checks every value of `env` against its setting, and the combinations the app refuses.
// Appends one line per problem, naming the setting and its value. True when there is none.
bool validate_environment(const Environment& env, std::vector<std::string>& problems);

// The options `testdata-api serve` runs with: from env (validated first; false with problems).
// The socket: SOCKET, else $RUNTIME_DIRECTORY/app.sock (under systemd), else
// $DATA_DIR/run/app.sock. The database: DATABASE_URL, else DB_PATH, else
// $DATA_DIR/testdata.db. Started as root (`as_root`), the app switches to SERVICE_USER.
bool options_from_environment(const Environment& env, unsigned cores, bool as_root, AppOptions& out,
                              std::vector<std::string>& problems);

// True when LISTEN (ADDR:PORT, valid) is loopback: 127.0.0.0/8, [::1] or the name localhost
// (no other name, whatever it resolves to). Off loopback AUTH=off is refused, and plaintext
// unless ALLOW_PLAINTEXT=1.
bool is_loopback_listen(const std::string& listen);

// The settings `make run` (scripts/run.sh) starts nginx and the app with: `env` validated, with
// the development defaults filled in (LISTEN 127.0.0.1:PORT, AUTH off on loopback and on
// elsewhere, the rate limits by AUTH, nginx's limits, THREADS, APP_NODES, ...), plus LOOPBACK
// (1 or 0) and DATABASE_URL_SHOWN (DATABASE_URL with its password hidden). False with problems.
bool resolve_dev_environment(const Environment& env, unsigned cores, Environment& out,
                             std::vector<std::string>& problems);

// The package's /etc/testdata-api/testdata-api.env, comments included.
std::string render_environment_file();
// The documentation's table (Markdown): variable, default, meaning.
std::string render_settings_table();

}  // namespace tdapi
