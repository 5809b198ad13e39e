// main.cpp: testdata-api entry point: options, store, FastCGI server, exit status.
//
// Usage: testdata-api --socket PATH --db PATH [--threads N] [--busy-timeout-ms N]
//                     [--max-db-pages N] [--auth on|off] [--audit on|off]
//        testdata-api keys|audit …   (administration: see cli.h)
// Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when start-up fails (logged), 2 on
// bad usage.
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "cli.h"
#include "fcgi_server.h"
#include "log.h"
#include "store_sqlite.h"

namespace {

int usage(const char* why) {
  std::cerr << "testdata-api: " << why
            << "\nusage: testdata-api --socket PATH --db PATH [--threads N] [--busy-timeout-ms N]"
               " [--max-db-pages N] [--auth on|off] [--audit on|off]\n"
               "       testdata-api keys|audit ... (run 'testdata-api keys' for details)\n";
  return 2;
}

const char* hint_for(tdapi::StatusCode code) {
  switch (code) {
    case tdapi::StatusCode::kCorrupt:
      return "the database file is damaged: stop here, keep a copy of it, and restore it from a "
             "backup (or move it aside to start empty); see README 'Failure handling'";
    case tdapi::StatusCode::kReadOnly:
      return "check that DATA_DIR exists and that this user can write the directory and the "
             "database file";
    case tdapi::StatusCode::kBusy:
      return "another process holds a lock on the database; stop it or wait";
    default:
      return "see the detail above";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (tdapi::is_admin_command(argc, argv)) return tdapi::run_admin_command(argc, argv);
  tdapi::block_stop_signals();  // before any thread starts
  // Bodies of up to 4 MiB: a fixed mmap threshold keeps every allocation over 256 KiB in its own
  // mapping, returned to the OS on free. glibc's default raises the threshold after the first
  // such free, and then 20 concurrent 4 MiB bodies stayed in per-thread arenas (RSS held).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);

  tdapi::ServerOptions server;
  tdapi::SqliteOptions storage;
  unsigned cores = std::thread::hardware_concurrency();
  // Threads mostly wait: on nginx, or on the group commit. More of them make bigger batches
  // (measured: 16 -> 96 threads on 2 cores, mean batch 5 -> 10, POST/s +8%).
  server.threads = static_cast<int>(cores ? 32 * cores : 64);
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (i + 1 >= argc) return usage(("missing value for " + arg).c_str());
    const char* value = argv[++i];
    if (arg == "--socket") {
      server.socket_path = value;
    } else if (arg == "--db") {
      storage.path = value;
    } else if (arg == "--threads") {
      server.threads = std::atoi(value);
      if (server.threads < 1 || server.threads > 1024) return usage("--threads must be 1..1024");
    } else if (arg == "--busy-timeout-ms") {
      storage.busy_timeout_ms = std::atoi(value);
      if (storage.busy_timeout_ms < 0) return usage("--busy-timeout-ms must be >= 0");
    } else if (arg == "--auth" || arg == "--audit") {
      std::string v = value;
      if (v != "on" && v != "off") return usage((arg + " must be on or off").c_str());
      (arg == "--auth" ? server.access.auth : server.access.audit) = v == "on";
    } else if (arg == "--max-db-pages") {
      storage.max_page_count = std::atoll(value);
    } else {
      return usage(("unknown option " + arg).c_str());
    }
  }
  if (server.socket_path.empty() || storage.path.empty()) {
    return usage("--socket and --db are required");
  }

  if (server.access.auth && !server.access.audit) {
    return usage("--audit off is only allowed with --auth off (the local mode)");
  }
  std::unique_ptr<tdapi::SqliteStore> store;
  tdapi::Status s = tdapi::SqliteStore::open(storage, store);
  if (!s.ok()) {
    tdapi::LogFields f;
    f.reason = s.name();
    f.detail = s.message() + ". What to do: " + hint_for(s.code());
    tdapi::log_event(tdapi::LogLevel::kError, "startup_failed", f);
    return 1;
  }
  tdapi::LogFields started;
  started.detail = "db=" + storage.path + " synchronous=" + storage.synchronous +
                   " journal_mode=WAL busy_timeout_ms=" + std::to_string(storage.busy_timeout_ms);
  tdapi::log_event(tdapi::LogLevel::kInfo, "store_opened", started);

  if (!server.access.auth) {
    tdapi::LogFields off;
    off.detail =
        "authorization is off: every client may read and write every clinic. Allowed "
        "only while nginx listens on loopback; set AUTH=on for anything else";
    tdapi::log_event(tdapi::LogLevel::kWarn, "auth_off", off);
  }
  int rc = tdapi::run_fcgi_server(server, *store);
  store.reset();  // drains the writer, checkpoints and closes the database
  tdapi::LogFields stopped;
  stopped.status = rc;
  tdapi::log_event(tdapi::LogLevel::kInfo, "stopped", stopped);
  return rc;
}
