// fcgi_server.h: the FastCGI responder: listening socket, worker threads, graceful stop.
#pragma once

#include <string>

#include "access_control.h"
#include "store.h"

namespace tdapi {

struct ServerOptions {
  std::string socket_path;      // unix socket nginx connects to; created with mode 0600
  int threads = 16;             // worker threads, each accepting and answering requests
  int stop_timeout_ms = 10000;  // bound on finishing in-flight requests after SIGTERM
  AccessOptions access;         // authentication and the audit trail
};

// Blocks SIGTERM, SIGINT, SIGHUP and ignores SIGPIPE for the calling thread and every thread it
// starts later. Call first thing in main, before any thread exists.
void block_stop_signals();

// Serves requests until SIGTERM or SIGINT: then stops accepting, lets in-flight requests
// finish (at most stop_timeout_ms) and returns 0. Returns 1 when the socket cannot be
// created (logged with the path and the reason). Requires block_stop_signals() first.
int run_fcgi_server(const ServerOptions& options, Store& store);

}  // namespace tdapi
