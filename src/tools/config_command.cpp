// config_command.cpp: `testdata-api config check|resolve|env-file|table`, and administration as
// root on a packaged server.
#include "tools/config_command.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>
#include <vector>

#include "base/config.h"
#include "base/systemd.h"

namespace tdapi {

namespace {

const char kUsage[] =
    "usage: testdata-api config check [--env-file PATH]\n"
    "       testdata-api config resolve [--env-file PATH]\n"
    "       testdata-api config env-file\n"
    "       testdata-api config table\n";

int usage(const std::string& why) {
  std::cerr << "testdata-api: " << why << "\n" << kUsage;
  return 2;
}

}  // namespace

int run_config_command(int argc, char** argv, char** envp) {
  if (argc < 3) return usage("missing subcommand");
  const std::string verb = argv[2];
  if (verb == "env-file" && argc == 3) {
    std::cout << render_environment_file();
    return 0;
  }
  if (verb == "table" && argc == 3) {
    std::cout << render_settings_table();
    return 0;
  }
  if (verb != "check" && verb != "resolve") return usage("unknown command: config " + verb);
  std::string env_file;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--env-file" && i + 1 < argc && argv[i + 1][0] != '\0') {
      env_file = argv[++i];
    } else {
      return usage(arg == "--env-file" ? "missing value for --env-file" : "unexpected " + arg);
    }
  }
  Environment env;
  std::string source;
  std::vector<std::string> problems;
  load_configuration(env_file, envp, env, source, problems);
  Environment resolved;
  if (verb == "resolve") {
    // make run's settings, defaults filled in: NAME=value lines (no value holds a line break).
    if (problems.empty() &&
        resolve_dev_environment(env, std::thread::hardware_concurrency(), resolved, problems)) {
      for (const auto& kv : resolved) std::cout << kv.first << "=" << kv.second << "\n";
      return 0;
    }
  } else {
    validate_environment(env, problems);
  }
  if (problems.empty()) {
    std::cout << "testdata-api: configuration OK (" << source << ")\n";
    return 0;
  }
  // Under systemd (ExecReload=), each line at error priority in the journal.
  const char* prio = stderr_is_journal() ? "<3>" : "";
  for (const std::string& p : problems) {
    std::cerr << prio << "testdata-api: config: " << p << "\n";
  }
  std::cerr << prio << "testdata-api: " << problems.size()
            << (problems.size() == 1 ? " problem" : " problems") << " in " << source << "\n";
  return 1;
}

bool become_service_user_if_packaged(char** envp, std::string& error) {
  if (geteuid() != 0 || access(kPackageEnvFile, F_OK) != 0) return true;
  Environment env;
  std::string source;
  std::vector<std::string> problems;
  if (!load_configuration("", envp, env, source, problems)) {
    if (access(kPackageEnvFile, R_OK) != 0) {
      error = problems.empty() ? "cannot read " + source : problems.front();
      return false;
    }
    // Malformed lines are skipped (as systemd does): said, not fatal.
    for (const std::string& p : problems) std::cerr << "testdata-api: warning: " << p << "\n";
  }
  for (const auto& kv : env) {
    if (!kv.second.empty()) setenv(kv.first.c_str(), kv.second.c_str(), 1);
  }
  std::string user = env.count("SERVICE_USER") ? env["SERVICE_USER"] : "";
  if (user.empty()) user = "testdata-api";
  if (user == "root") return true;
  passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr) {
    error = "no such user: " + user + " (the service user of the package's " +
            std::string(kPackageEnvFile) + "); reinstall the package, or run the command as " +
            "that user: runuser -u testdata-api -- testdata-api ...";
    return false;
  }
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    error = "cannot switch to the service user " + user + ": " + std::strerror(errno);
    return false;
  }
  if (setuid(0) == 0) {
    error = "switched to the service user " + user + " but could regain root";
    return false;
  }
  // HOME for libpq's ~/.pgpass: the service user's.
  setenv("HOME", pw->pw_dir, 1);
  return true;
}

}  // namespace tdapi
