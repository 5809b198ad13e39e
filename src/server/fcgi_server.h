// fcgi_server.h: the FastCGI responder: listening socket, worker threads, signals, graceful stop.
#pragma once

#include <functional>
#include <string>

#include "security/access_control.h"
#include "store/store.h"

namespace tdapi {

struct ServerOptions {
  std::string socket_path;      // unix socket nginx connects to; created with socket_mode
  int socket_mode = 0600;       // 0600, or 0660: nginx's workers reach it through the group
  int threads = 16;             // worker threads, each accepting and answering requests
  int stop_timeout_ms = 10000;  // bound on finishing in-flight requests after SIGTERM
  // Long polls (GET /changes with wait) held at once, without a worker thread each; past it, a
  // long poll is answered at once with what there is (FEED_MAX_WAITING).
  int feed_max_waiting = 1000;
  AccessOptions access;  // authentication and the audit trail
  // New connections failing to be accepted for this long, with none accepted in between: the
  // server gives up (logs accept_broken, stops as on SIGTERM, returns kServeAcceptBroken) so that
  // its supervisor restarts it rather than leaving a live process that answers nobody.
  int accept_give_up_ms = 10000;
  // Called on the signal thread on SIGHUP (e.g. to reopen the log file). May be empty.
  std::function<void()> on_hangup;
  // Called on the signal thread once the socket listens and every worker runs (readiness), and
  // when a stop begins. May be empty.
  std::function<void()> on_listening;
  std::function<void()> on_stopping;
  // Called on the signal thread about once a second while serving is healthy: accepting works,
  // and a worker is free or one finished a request within stall_ms (all workers stuck in
  // requests for longer: hung). For a watchdog. May be empty.
  std::function<void()> on_healthy;
  int stall_ms = 30000;
};

// What run_fcgi_server returns. A stop that times out does not return: it _exits with
// kServeStopTimeoutExit (committed data is durable already; threads may be stuck in writes).
enum ServeResult {
  kServeStopped = 0,       // SIGTERM/SIGINT, every in-flight request finished
  kServeSocketFailed = 1,  // the listening socket could not be created (logged): start-up
  kServeAcceptBroken = 2,  // accepting kept failing for accept_give_up_ms (logged)
};
constexpr int kServeStopTimeoutExit = 1;

// Blocks SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 and SIGPIPE for the calling thread and every
// thread it starts later (they are taken by run_fcgi_server's sigwait), and ignores SIGPIPE.
// Call first thing in main, before any thread exists.
void block_stop_signals();

// Waits up to timeout_ms for SIGTERM or SIGINT (blocked by block_stop_signals) and takes it.
// True when one came: the caller should stop. For waits before the server runs.
bool wait_for_stop_signal(int timeout_ms);

// Serves requests until SIGTERM or SIGINT: then stops accepting, lets in-flight requests
// finish (at most stop_timeout_ms) and returns kServeStopped. SIGHUP calls on_hangup; SIGUSR1,
// SIGUSR2 are logged and change nothing (libfcgi's own handlers, which would stop every later
// accept, are replaced). Requires block_stop_signals() first.
ServeResult run_fcgi_server(const ServerOptions& options, Store& store);

}  // namespace tdapi
