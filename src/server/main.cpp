// main.cpp: testdata-api entry point: options, privileges, limits, store, FastCGI server.
//
// Usage: testdata-api serve [--env-file PATH] [--log-file PATH]   (settings from the environment:
// base/config.h)
//        testdata-api --socket PATH (--db PATH | --database-url URL) [--socket-mode 0600|0660]
//                     [--threads N] [--busy-timeout-ms N]
//                     [--max-db-pages N] [--stop-timeout-ms N] [--feed-max-waiting N]
//                     [--user NAME] [--log-file PATH]
//                     [--auth on|off] [--audit on|off] [--audit-reads durable|crash-safe]
//                     [--auth-failure-rate NNNr/s|NNNr/m] [--auth-failure-burst N]
//        testdata-api keys|audit|migrate|backup|restore ...   (administration: cli.h, backup.h)
//        testdata-api config check|env-file|table   (tools/config_command.h)
//        testdata-api --version        (the build's version: the Debian package's)
//        testdata-api --help           (usage on stdout, exit 0)
//
// Exit statuses (scripts/run.sh, the supervisor, acts on them):
//   0   clean stop (SIGTERM/SIGINT; in-flight requests finished). Restarted unless the
//       supervisor itself is stopping.
//   1   failed while serving: in-flight work did not finish within --stop-timeout-ms
//       (stop_timeout), or no connection could be accepted for a long time (accept_broken).
//       Restarted.
//   2   bad usage (unknown option, malformed number). Not restarted.
//   78  start-up failure (sysexits' EX_CONFIG), logged as startup_failed with what to do:
//       damaged or unwritable database, socket, unknown user, too few descriptors, log file.
//       Not restarted: it would fail the same way.
//   anything else (a signal, a sanitizer report): restarted.
//
// Files are created 0600 and directories 0700 (umask 077). Run as root with --user NAME, the
// app drops to that user (groups, gid, uid) before it opens the log file or the database.
//
// Environment: TDAPI_SUPERVISOR_PID (set by scripts/run.sh to its own pid): the app dies
// (SIGKILL) when that process, its parent, does, so a killed supervisor leaves no app behind.
#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/config.h"
#include "base/log.h"
#include "base/options.h"
#include "base/systemd.h"
#include "metrics/metrics.h"
#include "server/fcgi_server.h"
#include "store/open_store.h"
#include "tools/cli.h"

namespace {

const char kServeUsage[] =
    "usage: testdata-api serve [--env-file PATH] [--log-file PATH]\n"
    "           the service, configured by the environment (testdata-api config table lists\n"
    "           every setting; under systemd, the unit's EnvironmentFile)\n"
    "       testdata-api --socket PATH (--db PATH | --database-url URL)"
    " [--socket-mode 0600|0660]\n"
    "           [--threads N] [--busy-timeout-ms N] [--max-db-pages N] [--stop-timeout-ms N]\n"
    "           [--feed-max-waiting N] [--user NAME] [--log-file PATH] [--auth on|off]\n"
    "           [--audit on|off] [--audit-reads durable|crash-safe]\n"
    "           [--auth-failure-rate NNNr/s|NNNr/m] [--auth-failure-burst N]\n"
    "           the service, configured by options\n"
    "       testdata-api --help | --version\n";

int usage(const std::string& why) {
  std::cerr << "testdata-api: " << why << "\n" << kServeUsage << tdapi::admin_usage();
  return tdapi::kExitUsage;
}

int help() {
  std::cout << kServeUsage << tdapi::admin_usage() << "See testdata-api(8).\n";
  return tdapi::kExitOk;
}

int startup_failed(const std::string& reason, const std::string& detail) {
  // Under systemd, also the unit's status line (systemctl status), where an operator looks.
  tdapi::systemd_notify("STATUS=Start-up failed (" + reason + "): " + detail.substr(0, 900));
  tdapi::LogFields f;
  f.reason = reason;
  f.detail = detail;
  tdapi::log_event(tdapi::LogLevel::kError, "startup_failed", f);
  return tdapi::kExitStartupFailure;
}

const char* hint_for(tdapi::StatusCode code, bool postgres) {
  switch (code) {
    case tdapi::StatusCode::kCorrupt:
      return "the database file is damaged: stop here, keep a copy of it, and restore it from a "
             "backup (or move it aside to start empty); see docs/operations.md 'Failure handling'";
    case tdapi::StatusCode::kReadOnly:
      if (postgres) {
        return "DATABASE_URL must name the primary PostgreSQL server (it takes the writes); "
               "standbys go in DATABASE_READ_URL";
      }
      return "check that DATA_DIR exists and that this user can write the directory and the "
             "database file";
    case tdapi::StatusCode::kBusy:
      return "another process holds a lock on the database; stop it or wait";
    case tdapi::StatusCode::kUnavailable:
      return "check that the PostgreSQL server named by DATABASE_URL runs and accepts this "
             "user (and the password, if any), and that the database exists";
    default:
      return "see the detail above";
  }
}

// The environment variable `name` when it is 1 to 6 decimal digits, else `fallback`.
std::string digits_from_env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0' || std::strlen(v) > 6) return fallback;
  for (const char* p = v; *p; ++p) {
    if (*p < '0' || *p > '9') return fallback;
  }
  return v;
}

// Makes sure `threads` workers cannot run out of descriptors (which shows as storage errors):
// raises the soft RLIMIT_NOFILE up to the hard one as needed, refuses when the hard is too low.
bool ensure_open_files(int threads, int feed_max_waiting, std::string& error) {
  long long need = tdapi::required_open_files(threads, feed_max_waiting);
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return true;
  if (lim.rlim_cur != RLIM_INFINITY && static_cast<long long>(lim.rlim_cur) >= need) return true;
  if (lim.rlim_cur == RLIM_INFINITY) return true;
  if (lim.rlim_max != RLIM_INFINITY && static_cast<long long>(lim.rlim_max) < need) {
    error = "the open files limit (RLIMIT_NOFILE, hard) is " + std::to_string(lim.rlim_max) +
            ", but " + std::to_string(threads) + " threads and " +
            std::to_string(feed_max_waiting) + " held long polls (FEED_MAX_WAITING) need " +
            std::to_string(need) + ". What to do: raise it (ulimit -n " + std::to_string(need) +
            " as root, or LimitNOFILE) or lower THREADS or FEED_MAX_WAITING";
    return false;
  }
  lim.rlim_cur = static_cast<rlim_t>(need);
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
    error =
        std::string("cannot raise the open files limit (RLIMIT_NOFILE): ") + std::strerror(errno);
    return false;
  }
  return true;
}

// Switches to `name` (supplementary groups, gid, uid), irrevocably. Not root: allowed only
// when `name` is the current user.
bool drop_privileges(const std::string& name, std::string& error) {
  errno = 0;
  passwd* pw = getpwnam(name.c_str());
  if (pw == nullptr) {
    error = "no such user: " + name + ". What to do: create it (scripts/run.sh does, as root)";
    return false;
  }
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  if (geteuid() != 0) {
    if (uid == geteuid()) return true;
    error = "cannot switch to user " + name + ": not running as root";
    return false;
  }
  if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    error = "cannot switch to user " + name + ": " + std::strerror(errno);
    return false;
  }
  if (uid != 0 && setuid(0) == 0) {
    error = "switched to user " + name + " but could regain root";
    return false;
  }
  return true;
}

// Under scripts/run.sh (TDAPI_SUPERVISOR_PID names it): SIGKILL when the supervisor dies, never
// an app serving on unsupervised. Set after the switch of user, which clears it; a supervisor
// already gone by then (no longer the parent) ends the app at once.
void die_with_supervisor() {
  const char* supervisor = std::getenv("TDAPI_SUPERVISOR_PID");
  if (supervisor == nullptr || *supervisor == '\0') return;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (std::to_string(getppid()) != supervisor) raise(SIGKILL);
}

}  // namespace

int main(int argc, char** argv) {
  umask(077);
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::cout << "testdata-api " << TDAPI_VERSION << "\n";
    return tdapi::kExitOk;
  }
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
                    std::strcmp(argv[1], "help") == 0)) {
    return help();
  }
  if (tdapi::is_admin_command(argc, argv)) return tdapi::run_admin_command(argc, argv);
  // Under systemd, stderr is the journal: each line carries its priority.
  tdapi::set_log_priority_prefix(tdapi::stderr_is_journal());
  tdapi::block_stop_signals();  // before any thread starts
  tdapi::global_metrics();      // process_start_time_seconds: now
  // Bodies of up to 4 MiB: a fixed mmap threshold keeps every allocation over 256 KiB in its own
  // mapping, returned to the OS on free. glibc's default raises the threshold after the first
  // such free, and then 20 concurrent 4 MiB bodies stayed in per-thread arenas (RSS held).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  // An arena gives memory above its top back to the OS past this much free (glibc: 128 KiB).
  // Under a stream of creates the arenas crossed 128 KiB and back about every other request:
  // each time an madvise (a TLB shootdown on every core) and page faults to take the pages
  // again, about 30 µs of CPU per create at 32 connections (perf). 1 MiB ends that; it holds at
  // most 1 MiB more per arena (glibc makes up to 8 arenas per core).
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);

  tdapi::AppOptions opt;
  std::string error;
  if (argc >= 2 && std::strcmp(argv[1], "serve") == 0) {
    // Configured by the environment (the settings table), checked as `config check` does: a bad
    // value is a start-up failure (78, not restarted), every problem named.
    // --log-file: make run's app.log (reopened on SIGHUP); without it, stderr (the journal).
    std::string env_file, log_file;
    for (int i = 2; i < argc; i += 2) {
      std::string arg = argv[i];
      if (i + 1 >= argc || argv[i + 1][0] == '\0' || (arg != "--env-file" && arg != "--log-file")) {
        return usage(
            "serve takes only --env-file PATH and --log-file PATH; settings come from the "
            "environment");
      }
      (arg == "--env-file" ? env_file : log_file) = argv[i + 1];
    }
    tdapi::Environment env;
    std::string source;
    std::vector<std::string> problems;
    tdapi::load_configuration(env_file, environ, env, source, problems);
    if (!problems.empty() ||
        !tdapi::options_from_environment(env, std::thread::hardware_concurrency(), geteuid() == 0,
                                         opt, problems)) {
      std::string all;
      for (const std::string& p : problems) all += (all.empty() ? "" : "; ") + p;
      return startup_failed("config", all + " (in " + source +
                                          "). What to do: correct them; testdata-api config "
                                          "check lists every problem");
    }
    opt.log_file = log_file;
  } else if (!tdapi::parse_options(argc, argv, std::thread::hardware_concurrency(), opt, error)) {
    return usage(error);
  }
  if (!ensure_open_files(opt.threads, opt.feed_max_waiting, error))
    return startup_failed("open_files", error);
  if (!opt.user.empty() && !drop_privileges(opt.user, error)) {
    return startup_failed("user", error);
  }
  die_with_supervisor();
  if (!opt.log_file.empty()) {
    if (!tdapi::open_log_file(opt.log_file, error)) return startup_failed("log_file", error);
    tdapi::set_log_priority_prefix(false);
  }

  const std::string target = opt.database_url.empty() ? opt.db_path : opt.database_url;
  tdapi::StoreSettings settings;
  settings.threads = opt.threads;
  settings.busy_timeout_ms = opt.busy_timeout_ms;
  settings.transaction_pooler = opt.transaction_pooler;
  settings.round_trip_timeout_ms = opt.round_trip_timeout_ms;
  settings.synchronous_commit = opt.synchronous_commit;
  settings.max_db_pages = opt.max_db_pages;
  settings.read_url = opt.database_read_url;
  // Beside the data: the nodes of one DATA_DIR share their fence.
  if (!opt.database_url.empty() && !opt.data_dir.empty()) {
    settings.timeline_file = opt.data_dir + "/postgresql-timeline";
  }
  settings.observer = &tdapi::global_metrics();
  std::unique_ptr<tdapi::Store> store;
  const long long watchdog_ms = tdapi::systemd_watchdog_ms();
  tdapi::systemd_notify(
      opt.database_url.empty()
          ? "STATUS=Opening the database (checking the file after an unclean stop may take a while)"
          : "STATUS=Connecting to PostgreSQL");
  tdapi::Status s = tdapi::open_store(target, tdapi::StoreRole::kService, settings, store);
  // A database server that is starting, restarting or failing over is waited for (a minute, a
  // stop signal ends the wait), then the app exits 1: the supervisor starts it again, so the
  // service comes back with the database; so is a server the failover fence refuses (a former
  // primary: the cluster's primary may come back at its address). Anything else is a start-up
  // failure (78).
  for (int waited = 0;
       s.code() == tdapi::StatusCode::kUnavailable || s.code() == tdapi::StatusCode::kFenced;
       ++waited) {
    if (waited == 60) {
      tdapi::LogFields f;
      f.reason = s.name();
      f.detail = s.message() + ". Exiting to be restarted";
      tdapi::log_event(tdapi::LogLevel::kError, "database_unavailable", f);
      return tdapi::kExitFailure;
    }
    tdapi::systemd_notify(std::string("STATUS=Waiting for PostgreSQL (") + s.name() + "), " +
                          std::to_string(60 - waited) + " s before exiting to be restarted");
    if (watchdog_ms > 0) tdapi::systemd_notify("WATCHDOG=1");  // waiting is what it should do
    if (waited % 5 == 0) {
      tdapi::LogFields f;
      f.reason = s.name();
      f.detail = s.message() + "; retrying";
      tdapi::log_event(tdapi::LogLevel::kWarn, "database_unavailable", f);
    }
    if (tdapi::wait_for_stop_signal(1000)) return tdapi::kExitOk;
    s = tdapi::open_store(target, tdapi::StoreRole::kService, settings, store);
  }
  if (!s.ok()) {
    return startup_failed(
        s.name(), s.message() + ". What to do: " + hint_for(s.code(), !opt.database_url.empty()));
  }
  tdapi::LogFields started;
  started.count = opt.threads;
  started.detail = tdapi::describe_store(target, tdapi::StoreRole::kService, settings) +
                   " uid=" + std::to_string(geteuid());
  tdapi::log_event(tdapi::LogLevel::kInfo, "store_opened", started);

  // What /metrics tells about this process. TDAPI_NODE and TDAPI_STARTS come from the
  // supervisor (scripts/run.sh): which of APP_NODES this is, and how often it was started.
  tdapi::ProcessInfo info;
#ifdef TDAPI_VERSION
  info.version = TDAPI_VERSION;
#endif
  info.backend = opt.database_url.empty() ? "sqlite" : "postgresql";
  info.node = digits_from_env("TDAPI_NODE", "1");
  info.starts = std::stoll(digits_from_env("TDAPI_STARTS", "1"));
  info.worker_threads = opt.threads;
  tdapi::global_metrics().set_process_info(info);

  tdapi::ServerOptions server;
  server.socket_path = opt.socket_path;
  server.socket_mode = opt.socket_mode;
  server.threads = opt.threads;
  server.stop_timeout_ms = opt.stop_timeout_ms;
  server.feed_max_waiting = opt.feed_max_waiting;
  server.access.auth = opt.auth;
  server.access.audit = opt.audit;
  server.access.audit_reads_durable = opt.audit_reads_durable;
  server.access.failure_rate_per_minute = opt.auth_failure_rate_per_minute;
  server.access.failure_burst = opt.auth_failure_burst;
  if (!opt.auth) {
    tdapi::LogFields off;
    off.detail =
        "authorization is off: every client may read and write every clinic. Allowed only "
        "while nginx listens on loopback; set AUTH=on for anything else";
    tdapi::log_event(tdapi::LogLevel::kWarn, "auth_off", off);
  }
  if (!opt.log_file.empty()) {
    server.on_hangup = [path = opt.log_file] {
      std::string why;
      tdapi::LogFields f;
      f.detail = path;
      if (tdapi::open_log_file(path, why)) {
        tdapi::log_event(tdapi::LogLevel::kInfo, "log_reopened", f);
      } else {
        f.detail = why + "; still writing to the previous file";
        tdapi::log_event(tdapi::LogLevel::kError, "log_reopen_failed", f);
      }
    };
  }
  // systemd: ready once the store is open and the socket listens; the watchdog is fed while
  // serving is healthy (a hung app stops feeding it and is restarted).
  server.on_listening = [path = opt.socket_path] {
    tdapi::systemd_notify("READY=1\nSTATUS=Serving on " + path);
  };
  server.on_stopping = [] {
    tdapi::systemd_notify("STOPPING=1\nSTATUS=Stopping: finishing in-flight requests");
  };
  if (watchdog_ms > 0) {
    server.stall_ms = static_cast<int>(std::min<long long>(watchdog_ms, 3600000));
    server.on_healthy = [] { tdapi::systemd_notify("WATCHDOG=1"); };
  }
  tdapi::ServeResult result = tdapi::run_fcgi_server(server, *store);
  if (result == tdapi::kServeSocketFailed) return tdapi::kExitStartupFailure;  // logged
  store.reset();  // drains the writer, checkpoints and closes the database
  int rc = result == tdapi::kServeStopped ? tdapi::kExitOk : tdapi::kExitFailure;
  tdapi::LogFields stopped;
  stopped.status = rc;
  tdapi::log_event(tdapi::LogLevel::kInfo, "stopped", stopped);
  return rc;
}
