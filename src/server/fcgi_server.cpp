// fcgi_server.cpp: the only file that includes fcgiapp.h. Accept loop and request adapter.
#include "server/fcgi_server.h"

#include <fastcgi.h>
#include <fcgiapp.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/log.h"
#include "base/thread_annotations.h"
#include "metrics/metrics.h"
#include "server/http_router.h"
#include "store/test_record.h"

namespace tdapi {

namespace {

std::atomic<bool> g_stopping{false};
constexpr size_t kTrimAfterBodyBytes = 256 * 1024;

// The request's FastCGI parameters the service reads, in one pass over the environment
// (FCGX_GetParam scans all of it per name). The first of a repeated name counts, as with
// FCGX_GetParam.
struct RequestParams {
  const char* method = "";
  const char* uri = "";
  const char* content_type = "";
  const char* content_encoding = "";
  const char* content_length = "";
  const char* request_id = "";
  const char* authorization = "";
  const char* remote_addr = "";
  const char* if_match = "";
  const char* if_none_match = "";
  const char* commit_position = "";
};

RequestParams read_params(char** envp) {
  RequestParams p;
  struct Slot {
    std::string_view name;
    const char* RequestParams::*field;
  };
  static constexpr Slot kSlots[] = {
      {"REQUEST_METHOD", &RequestParams::method},
      {"REQUEST_URI", &RequestParams::uri},
      {"CONTENT_TYPE", &RequestParams::content_type},
      {"CONTENT_ENCODING", &RequestParams::content_encoding},
      {"CONTENT_LENGTH", &RequestParams::content_length},
      {"REQUEST_ID", &RequestParams::request_id},
      {"HTTP_AUTHORIZATION", &RequestParams::authorization},
      {"REMOTE_ADDR", &RequestParams::remote_addr},
      {"HTTP_IF_MATCH", &RequestParams::if_match},
      {"HTTP_IF_NONE_MATCH", &RequestParams::if_none_match},
      {"HTTP_X_COMMIT_POSITION", &RequestParams::commit_position},
  };
  unsigned found = 0;
  for (char** e = envp; e != nullptr && *e != nullptr; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq == nullptr) continue;
    std::string_view name(*e, static_cast<size_t>(eq - *e));
    for (unsigned k = 0; k < std::size(kSlots); ++k) {
      if ((found & (1u << k)) == 0 && name == kSlots[k].name) {
        p.*kSlots[k].field = eq + 1;
        found |= 1u << k;
        break;
      }
    }
  }
  return p;
}

// Turns the FastCGI environment and stdin into a Request. Reads at most kMaxRequestBodyBytes.
// A request whose stdin is not read to its end must not leave its kept-alive connection open
// (its leftover records would be read as the next request), so it closes the connection.
Request read_request(FCGX_Request& fcgi) {
  Request req;
  const RequestParams params = read_params(fcgi.envp);
  req.method = params.method;
  std::string_view uri = params.uri;
  size_t q = uri.find('?');
  req.path = std::string(uri.substr(0, q));
  if (q != std::string_view::npos) req.query = std::string(uri.substr(q + 1));
  req.content_type = params.content_type;
  req.content_encoding = params.content_encoding;
  req.request_id = params.request_id;
  req.authorization = params.authorization;
  req.remote_addr = params.remote_addr;
  req.if_match = params.if_match;
  req.if_none_match = params.if_none_match;
  req.commit_position = params.commit_position;

  const char* length_text = params.content_length;
  char* end = nullptr;
  errno = 0;
  unsigned long long length = std::strtoull(length_text, &end, 10);
  if (errno != 0 || end == length_text) length = 0;
  req.content_length = static_cast<size_t>(length);
  if (length > kMaxRequestBodyBytes) {
    req.body_state = BodyState::kTooLarge;
    fcgi.keepConnection = 0;
    return req;
  }
  req.body.resize(length);
  size_t got = 0;
  while (got < length) {
    int n = FCGX_GetStr(&req.body[got], static_cast<int>(length - got), fcgi.in);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got < length) {
    req.body.resize(got);
    req.body_state = BodyState::kTruncated;
    fcgi.keepConnection = 0;
    return req;
  }
  // Read stdin to its end, the empty FCGI_STDIN record, which may come in a later read than
  // the body: left unread on a kept-alive connection, it would be taken for the start of the
  // next request, and that request would be lost. Bytes beyond CONTENT_LENGTH are dropped; past
  // a bound, or on a read error, the connection is closed instead.
  char sink[4096];
  size_t extra = 0;
  for (;;) {
    int n = FCGX_GetStr(sink, sizeof sink, fcgi.in);
    if (n <= 0) break;
    extra += static_cast<size_t>(n);
    if (extra > kMaxRequestBodyBytes) {
      fcgi.keepConnection = 0;
      break;
    }
  }
  if (FCGX_GetError(fcgi.in) != 0) fcgi.keepConnection = 0;
  return req;
}

class FcgiOutput : public ResponseOutput {
 public:
  explicit FcgiOutput(FCGX_Request& fcgi) : fcgi_(fcgi) {}
  bool write_head(const Response& r) override {
    std::string head = "Status: ";
    head.reserve(128);
    head += std::to_string(r.status);
    head += ' ';
    head += reason_phrase(r.status);
    head += "\r\nContent-Type: ";
    head += r.content_type;
    head += "\r\n";
    for (const auto& [name, value] : r.headers) {
      head += name;
      head += ": ";
      head += value;
      head += "\r\n";
    }
    head += "\r\n";
    return write_body(head);
  }
  bool write_body(std::string_view chunk) override {
    if (chunk.empty()) return true;
    if (chunk.size() < kDirectWriteBytes) {
      return FCGX_PutStr(chunk.data(), static_cast<int>(chunk.size()), fcgi_.out) ==
             static_cast<int>(chunk.size());
    }
    return write_records(chunk);
  }
  // Closes the connection without FastCGI's end-of-request: nginx sees the upstream close
  // early and breaks the client's response (no final chunk) instead of completing it. What
  // FCGX_Finish_r then writes fails harmlessly (SIGPIPE is ignored), and it closes the fd.
  void abort() override {
    if (fcgi_.ipcFd >= 0) shutdown(fcgi_.ipcFd, SHUT_RDWR);
    fcgi_.keepConnection = 0;
  }

  // A chunk at least this large (a listing's, kStreamChunkBytes and up) goes out in FastCGI
  // records of up to 64 KB, all in one writev, instead of through libfcgi's 8 KB buffer (one
  // write system call per 8 KB, and as many wake-ups of nginx): a 1,000-test listing took 21
  // writes, now 3 (the head, the rows, the tail with the end-of-request records).
  static constexpr size_t kDirectWriteBytes = 16 * 1024;

 private:
  // What libfcgi holds (the head) goes first, then the chunk as FCGI_STDOUT records. Any error
  // ends the connection as abort() does: a record cut short must never be followed by another.
  bool write_records(std::string_view chunk) {
    if (FCGX_FFlush(fcgi_.out) != 0 || fcgi_.ipcFd < 0) return false;
    constexpr size_t kRecordBytes = 0xfff8;  // FCGI_MAX_LENGTH rounded down to a multiple of 8
    constexpr size_t kRecordsPerCall = 16;
    FCGI_Header headers[kRecordsPerCall];
    iovec iov[2 * kRecordsPerCall];
    size_t at = 0;
    while (at < chunk.size()) {
      int n = 0;
      for (size_t r = 0; r < kRecordsPerCall && at < chunk.size(); ++r) {
        const size_t len = std::min(kRecordBytes, chunk.size() - at);
        headers[r] = FCGI_Header{FCGI_VERSION_1,
                                 FCGI_STDOUT,
                                 static_cast<unsigned char>((fcgi_.requestId >> 8) & 0xff),
                                 static_cast<unsigned char>(fcgi_.requestId & 0xff),
                                 static_cast<unsigned char>((len >> 8) & 0xff),
                                 static_cast<unsigned char>(len & 0xff),
                                 0,
                                 0};
        iov[n++] = iovec{&headers[r], sizeof(FCGI_Header)};
        iov[n++] = iovec{const_cast<char*>(chunk.data() + at), len};
        at += len;
      }
      if (!write_all(iov, n)) {
        abort();
        return false;
      }
    }
    return true;
  }

  // writev until every byte of iov is out (the socket is blocking; a call may still write part).
  bool write_all(iovec* iov, int n) {
    while (n > 0) {
      ssize_t w = writev(fcgi_.ipcFd, iov, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      auto left = static_cast<size_t>(w);
      while (n > 0 && left >= iov->iov_len) {
        left -= iov->iov_len;
        ++iov;
        --n;
      }
      if (n > 0) {
        iov->iov_base = static_cast<char*>(iov->iov_base) + left;
        iov->iov_len -= left;
      }
    }
    return true;
  }

  FCGX_Request& fcgi_;
};

// Writes the request's log line and counts it (metrics), once its answer went out.
void log_answered(const Response& resp, LogFields& f, const std::string& request_id,
                  const std::string& method, const std::string& path,
                  std::chrono::steady_clock::time_point start) {
  f.request_id = request_id;
  f.method = method;
  f.path = path;
  f.status = resp.status;
  f.duration_ms = elapsed_ms(start);
  LogLevel level = resp.status >= 500 || resp.aborted ? LogLevel::kError
                   : resp.status >= 400               ? LogLevel::kWarn
                                                      : LogLevel::kInfo;
  // A passed key check (nginx's auth_request before a body) is not a line of its own: the
  // request it let through logs one with the same request id right after.
  if (!(resp.status == 204 && resp.route == "GET /_auth")) log_event(level, "request", f);
  global_metrics().record(resp.route, resp.status, f.duration_ms);
  global_metrics().request_finished();
}

// A long poll held without a worker thread: its FastCGI request (the connection) and what its
// answer needs.
struct ParkedRequest {
  // Not a copy: libfcgi's streams point back at the request they were made for.
  std::unique_ptr<FCGX_Request> fcgi;
  std::shared_ptr<DeferredResponse> wait;
  std::string route, request_id, method, path;
  std::string authorization;  // its Authorization header: the key is checked again on answering
  LogFields log;
  std::chrono::steady_clock::time_point start;
};

// Answers a held request and ends it (its connection is closed: keepConnection was cleared when
// it was parked, as no worker reads from it again).
void answer_parked(ParkedRequest& p, Response resp) {
  resp.route = p.route;
  if (resp.log.clinic_id.empty()) resp.log.clinic_id = p.log.clinic_id;
  if (resp.log.key_id.empty()) resp.log.key_id = p.log.key_id;
  FcgiOutput out(*p.fcgi);
  send_response(resp, out);
  log_answered(resp, resp.log, p.request_id, p.method, p.path, p.start);
  FCGX_Finish_r(p.fcgi.get());  // keepConnection is 0: closes the connection
}

// Which held requests' connections nginx closed (their clients went away): one poll(2) for all.
std::vector<bool> connections_closed(const std::vector<std::unique_ptr<ParkedRequest>>& held) {
  std::vector<pollfd> fds(held.size());
  for (size_t i = 0; i < held.size(); ++i) {
    fds[i] = pollfd{held[i]->fcgi->ipcFd, static_cast<short>(POLLIN | POLLRDHUP), 0};
  }
  std::vector<bool> closed(held.size(), false);
  if (::poll(fds.data(), fds.size(), 0) <= 0) return closed;
  for (size_t i = 0; i < held.size(); ++i) {
    closed[i] = (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
  }
  return closed;
}

// The held long polls (GET /changes with wait) and the one thread that answers them: it sleeps
// in Store::wait_for_commit (at most kFeedPollMs, so changes committed by other app nodes and
// deadlines are seen that often), then runs the poll of each request whose clinic may have a
// change (the store's latest change moved past what it saw), whose deadline passed, or whose
// connection nginx closed. A worker thread that parks a request goes back to accepting at once:
// held requests never take a worker that a write needs.
class FeedWaiter {
 public:
  static constexpr int kFeedPollMs = 250;
  static constexpr int kMinRoundMs = 10;

  FeedWaiter(Store& store, Authenticator& auth, int max_waiting)
      : store_(store), auth_(auth), max_waiting_(max_waiting) {
    thread_ = std::thread([this] { run(); });
  }
  ~FeedWaiter() {
    stop();
    if (thread_.joinable()) thread_.join();
  }

  // Takes `p` over (true), or leaves it to the caller when FEED_MAX_WAITING requests are held
  // already or the server is stopping (false: answer it now).
  bool park(std::unique_ptr<ParkedRequest>& p) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (stopping_ || held_ >= max_waiting_) return false;
    ++held_;
    global_metrics().add_feed_waiting(1);
    incoming_.push_back(std::move(p));
    cv_.notify_one();
    return true;
  }

  // Answers every held request with what there is, refuses new ones; the thread then ends.
  void stop() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    stopping_ = true;
    cv_.notify_one();
  }

  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  // A held request's key, looked up again before changes go to it, as a new request's would be:
  // revoked, or without the clinic's read scope now, while the poll was held (up to 30 s, where
  // a revocation is otherwise felt within kKeyCacheTtl), it gets the 401 or 403 a new request
  // would, not the changes.
  std::optional<Response> key_refusal(const ParkedRequest& p) {
    Principal principal;
    Status storage_error;
    const AuthOutcome outcome =
        auth_.authenticate(p.authorization, store_, principal, storage_error);
    if (outcome == AuthOutcome::kStorageError) return storage_error_response(storage_error);
    if (outcome != AuthOutcome::kOk) {
      Response r = error_response(401, "invalid access token");
      r.headers.emplace_back("WWW-Authenticate",
                             "Bearer realm=\"testdata-api\", error=\"invalid_token\"");
      r.log.reason = "key_changed_while_waiting";
      return r;
    }
    if (!principal.may(Access::kRead, p.log.clinic_id)) {
      Response r =
          error_response(403, "this access key may not read tests of clinic " + p.log.clinic_id);
      r.log.reason = "key_changed_while_waiting";
      return r;
    }
    return std::nullopt;
  }

  void run() EXCLUDES(mu_) {
    std::vector<std::unique_ptr<ParkedRequest>> held;
    auto last_round = std::chrono::steady_clock::time_point();
    for (;;) {
      bool stopping;
      {
        MutexLock lock(mu_);
        if (held.empty() && incoming_.empty() && !stopping_) mu_.wait(cv_);
        for (auto& p : incoming_) held.push_back(std::move(p));
        incoming_.clear();
        stopping = stopping_;
      }
      if (held.empty()) {
        if (stopping) return;
        continue;
      }
      if (!stopping) {
        // At most one round per kMinRoundMs: under a stream of commits, one round looks at all
        // of them (a held request's answer waits at most that much longer), instead of every
        // commit waking every held request's read.
        const auto since_last = std::chrono::steady_clock::now() - last_round;
        if (since_last < std::chrono::milliseconds(kMinRoundMs)) {
          std::this_thread::sleep_for(std::chrono::milliseconds(kMinRoundMs) - since_last);
        } else {
          store_.wait_for_commit(std::chrono::milliseconds(kFeedPollMs));
        }
      }
      last_round = std::chrono::steady_clock::now();
      long long latest = -1;  // unknown: every request looks itself
      if (!store_.latest_change(latest).ok()) latest = -1;
      const auto now = std::chrono::steady_clock::now();
      std::set<std::string> nothing_new;  // keys whose page was empty at `latest`
      const std::vector<bool> closed = connections_closed(held);
      size_t kept = 0;
      for (size_t i = 0; i < held.size(); ++i) {
        ParkedRequest& p = *held[i];
        bool done = false;
        if (closed[i]) {
          Response gone;
          gone.status = 499;
          gone.route = p.route;
          gone.log = p.log;
          gone.log.detail = "client went away during the long poll";
          log_answered(gone, gone.log, p.request_id, p.method, p.path, p.start);
          FCGX_Finish_r(p.fcgi.get());
          done = true;
        } else {
          const bool final = stopping || now >= p.wait->deadline;
          const bool moved = latest < 0 || latest > p.wait->seen;
          if (!final && moved && latest >= 0 && nothing_new.count(p.wait->key) != 0) {
            p.wait->seen = latest;  // the same question found nothing at this change
          } else if (final || moved) {
            std::optional<Response> answer = key_refusal(p);
            if (!answer) answer = p.wait->poll(final);
            if (answer) {
              answer_parked(p, std::move(*answer));
              done = true;
            } else if (latest >= 0) {
              p.wait->seen = latest;
              nothing_new.insert(p.wait->key);
            }
          }
        }
        if (done) {
          held[i].reset();
          global_metrics().add_feed_waiting(-1);
          MutexLock lock(mu_);
          --held_;
        } else {
          held[kept++] = std::move(held[i]);
        }
      }
      held.resize(kept);
    }
  }

  Store& store_;
  Authenticator& auth_;
  const int max_waiting_;
  Mutex mu_;
  std::condition_variable cv_;  // waited on with mu_ held: a request parked, or stopping
  std::vector<std::unique_ptr<ParkedRequest>> incoming_ GUARDED_BY(mu_);
  int held_ GUARDED_BY(mu_) = 0;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Serves one request; returns whether its body was large (see worker_loop). A long poll with
// nothing to answer yet is handed to `waiter` (parked: true), with fcgi set up afresh for the
// next accept; else it is answered here.
bool serve_one(std::unique_ptr<FCGX_Request>& fcgi, int listen_fd, Store& store,
               Authenticator& auth, FeedWaiter& waiter, bool& parked) {
  auto start = std::chrono::steady_clock::now();
  parked = false;
  global_metrics().request_started();
  Request req = read_request(*fcgi);
  Response resp = route_request(req, store, auth);
  if (resp.wait) {
    auto p = std::make_unique<ParkedRequest>();
    // No worker reads a held request's connection again: it closes after the answer.
    const int keep = fcgi->keepConnection;
    fcgi->keepConnection = 0;
    p->fcgi = std::move(fcgi);
    p->wait = resp.wait;
    p->route = resp.route;
    p->request_id = req.request_id;
    p->authorization = req.authorization;
    p->method = req.method;
    p->path = req.path;
    p->log = resp.log;
    p->start = start;
    if (waiter.park(p)) {
      // The held request owns the connection now; the worker accepts with a fresh request.
      fcgi = std::make_unique<FCGX_Request>();
      FCGX_InitRequest(fcgi.get(), listen_fd, 0);
      parked = true;
      return false;
    }
    fcgi = std::move(p->fcgi);
    fcgi->keepConnection = keep;
    // Nothing more may wait: the answer now (an empty page and its next token).
    std::optional<Response> now = resp.wait->poll(true);
    std::string route = resp.route;
    resp = now ? std::move(*now) : error_response(500, "the long poll gave no answer");
    resp.route = std::move(route);
  }
  FcgiOutput out(*fcgi);
  send_response(resp, out);
  log_answered(resp, resp.log, req.request_id, req.method, req.path, start);
  return req.body.size() >= kTrimAfterBodyBytes;
}

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Health of accepting new connections, shared by the workers. A failing accept (descriptors
// exhausted, or libfcgi's shutdownPending set by a stray signal before its handlers were
// replaced) must neither spin nor flood the log nor leave a live process that answers nobody:
// each worker backs off, failures are logged at most once a second (with how many there were),
// and when no new connection has been accepted for accept_give_up_ms while accepts kept
// failing, the server gives up (the supervisor restarts it).
struct AcceptHealth {
  int give_up_ms = 10000;
  std::atomic<long long> failing_since_ms{-1};  // -1: the last fresh accept succeeded
  std::atomic<bool> broken{false};
  // Progress of the workers, for the watchdog: how many are inside a request, and when one
  // last finished one.
  std::atomic<int> in_request{0};
  std::atomic<long long> last_done_ms{0};
  Mutex log_mu;
  long long last_log_ms GUARDED_BY(log_mu) = -1;
  long long unlogged GUARDED_BY(log_mu) = 0;

  // Healthy: accepting works, and a worker is free or one finished a request lately.
  bool healthy(int threads, int stall_ms) const {
    if (broken.load() || failing_since_ms.load() != -1) return false;
    return in_request.load() < threads || now_ms() - last_done_ms.load() < stall_ms;
  }

  void succeeded() {
    if (failing_since_ms.load(std::memory_order_relaxed) != -1) failing_since_ms.store(-1);
  }
  // Returns how long the calling worker should wait before its next accept.
  int failed(int code, int previous_backoff_ms) EXCLUDES(log_mu) {
    long long now = now_ms();
    long long expected = -1;
    failing_since_ms.compare_exchange_strong(expected, now);
    long long since = failing_since_ms.load();
    {
      MutexLock lock(log_mu);
      ++unlogged;
      if (last_log_ms < 0 || now - last_log_ms >= 1000) {
        LogFields f;
        f.count = unlogged;
        f.reason =
            code == -9999 ? std::string("FCGX_Accept_r failed") : std::string(std::strerror(-code));
        f.detail =
            "accepting a connection failed (count: failures since the last such line); "
            "retrying with back-off";
        log_event(LogLevel::kWarn, "accept_failed", f);
        last_log_ms = now;
        unlogged = 0;
      }
    }
    if (since >= 0 && now - since >= give_up_ms && !broken.exchange(true)) {
      LogFields f;
      f.duration_ms = static_cast<double>(now - since);
      f.detail = "no new connection could be accepted for " + std::to_string(now - since) +
                 " ms; stopping so that the supervisor restarts the app";
      log_event(LogLevel::kError, "accept_broken", f);
      kill(getpid(), SIGTERM);  // the signal thread runs the graceful stop
    }
    return previous_backoff_ms <= 0 ? 10 : std::min(previous_backoff_ms * 2, 1000);
  }
};

// How many workers are still running; at a stop the signal thread waits for none.
struct RunningWorkers {
  explicit RunningWorkers(int n) : count(n) {}
  Mutex mu;
  std::condition_variable cv;  // waited on with mu held; notified when count reaches 0
  int count GUARDED_BY(mu);
};

// One worker thread: accepts, answers, repeats until the server stops. With nginx's
// fastcgi_keep_conn the connection stays open after a request and FCGX_Accept_r blocks reading
// the next one from it, where a shut-down listening socket cannot wake it: the worker publishes
// that connection in idle_fd while it waits, so that a stop can shut it down (see
// wake_idle_workers). Publish-then-check of g_stopping pairs with the stopper's
// set-then-scan (both sequentially consistent): either this thread sees the stop or the stopper
// sees the connection.
void worker_loop(int listen_fd, Store& store, Authenticator& auth, std::atomic<int>& idle_fd,
                 AcceptHealth& health, FeedWaiter& waiter) {
  // On the heap: a long poll's request moves to the waiter whole (see serve_one).
  auto fcgi = std::make_unique<FCGX_Request>();
  FCGX_InitRequest(fcgi.get(), listen_fd, 0);
  int backoff_ms = 0;
  for (;;) {
    const int kept = fcgi->ipcFd;  // >= 0: a kept-alive connection from the last request
    idle_fd.store(kept);
    if (g_stopping.load()) break;
    int accepted = FCGX_Accept_r(fcgi.get());
    int expected = kept;
    idle_fd.compare_exchange_strong(expected, -1);  // -1 already if a stop took it
    if (accepted < 0) {
      if (g_stopping.load()) break;
      if (kept >= 0) continue;  // the kept-alive connection ended; accept a new one
      backoff_ms = health.failed(accepted, backoff_ms);
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
      continue;
    }
    if (kept < 0) {
      health.succeeded();
      backoff_ms = 0;
    }
    global_metrics().worker_busy();
    health.in_request.fetch_add(1);
    // After a large body (a batch: its tree and answer were many small allocations in this
    // thread's arena), hand free memory back to the OS, so hostile batches leave none behind.
    bool parked = false;
    if (serve_one(fcgi, listen_fd, store, auth, waiter, parked)) malloc_trim(0);
    if (!parked) FCGX_Finish_r(fcgi.get());
    // A parked long poll is answered by the waiter thread: this worker is free again.
    health.last_done_ms.store(now_ms());
    health.in_request.fetch_sub(1);
    global_metrics().worker_done();
  }
  idle_fd.store(-1);
  FCGX_Free(fcgi.get(), 1);
}

// Wakes workers waiting on kept-alive connections by shutting those connections down. Call after
// g_stopping is set and the listening socket is shut down (so no fd number is reused meanwhile).
void wake_idle_workers(std::vector<std::atomic<int>>& idle_fds) {
  for (std::atomic<int>& slot : idle_fds) {
    int fd = slot.exchange(-1);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  }
}

// Creates the listening unix socket with `mode` (0600 or 0660). Returns -1 (logged) on
// failure; refuses a path where another server is still listening.
int listen_unix(const std::string& path, int mode) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  LogFields f;
  f.detail = path;
  if (path.size() >= sizeof addr.sun_path) {
    f.reason = "socket path too long";
    log_event(LogLevel::kError, "startup_failed", f);
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(probe);
    if (live) {
      f.reason = "another server is listening on this socket";
      log_event(LogLevel::kError, "startup_failed", f);
      close(fd);
      return -1;
    }
    unlink(path.c_str());  // stale socket of a previous run
  }
  mode_t old_mask = umask(0077);  // never reachable by others, not even for a moment
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old_mask);
  if (rc == 0) rc = chmod(path.c_str(), static_cast<mode_t>(mode));
  if (rc != 0 || listen(fd, 1024) != 0) {
    f.reason = std::string("cannot listen on socket: ") + std::strerror(errno);
    log_event(LogLevel::kError, "startup_failed", f);
    close(fd);
    return -1;
  }
  return fd;
}

// Writes the audit entries of failed authentications whose minute is over (every one with all).
void write_failure_tallies(Authenticator& auth, Store& store, bool all) {
  const auto wall = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  for (AuditEntry& a : auth.failures().take_due(wall, all)) {
    if (!auth.options().audit) continue;
    Status s = store.append_audit(a);
    if (s.ok()) {
      global_metrics().record_audit_write();
    } else {
      LogFields f;
      f.reason = s.name();
      f.detail = "the tally of failed authentications of one address and minute was not recorded";
      log_event(LogLevel::kError, "audit_failed", f);
    }
  }
}

const int kHandledSignals[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE};

void ignore_signal(int) {}

// FCGX_Init installs libfcgi's own handlers for SIGTERM, SIGUSR1 (even over SIG_IGN) and
// SIGPIPE; its SIGUSR1/SIGTERM handler sets a flag that makes every later accept fail. Every
// such signal is blocked in all threads and taken by sigwait, so no handler should ever run;
// these dispositions make sure none of libfcgi's can, and that a stray SIGUSR1/SIGUSR2 can
// neither kill the process nor deafen it.
void replace_libfcgi_signal_handlers() {
  struct sigaction sa {};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_DFL;
  sigaction(SIGTERM, &sa, nullptr);
  sa.sa_handler = ignore_signal;
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGUSR2, &sa, nullptr);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, nullptr);
}

}  // namespace

void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : kHandledSignals) sigaddset(&set, sig);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool wait_for_stop_signal(int timeout_ms) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  timespec timeout{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  return sigtimedwait(&set, nullptr, &timeout) > 0;
}

ServeResult run_fcgi_server(const ServerOptions& options, Store& store) {
  Authenticator auth(options.access);
  int sig = 0;
  if (FCGX_Init() != 0) return kServeSocketFailed;
  replace_libfcgi_signal_handlers();
  int fd = listen_unix(options.socket_path, options.socket_mode);
  if (fd < 0) return kServeSocketFailed;

  AcceptHealth health;
  health.give_up_ms = options.accept_give_up_ms;
  RunningWorkers running(options.threads);
  FeedWaiter waiter(store, auth, options.feed_max_waiting);
  std::vector<std::atomic<int>> idle_fds(static_cast<size_t>(options.threads));
  std::vector<std::thread> workers;
  for (int i = 0; i < options.threads; ++i) {
    workers.emplace_back([&, i] {
      worker_loop(fd, store, auth, idle_fds[static_cast<size_t>(i)], health, waiter);
      MutexLock lock(running.mu);
      if (--running.count == 0) running.cv.notify_all();
    });
  }
  LogFields ready;
  ready.detail = options.socket_path;
  ready.count = options.threads;
  log_event(LogLevel::kInfo, "listening", ready);
  health.last_done_ms.store(now_ms());
  if (options.on_listening) options.on_listening();

  sigset_t set;
  sigemptyset(&set);
  for (int s : kHandledSignals) sigaddset(&set, s);
  for (;;) {
    // Once a second, the tallies of failed authentications of minutes that are over.
    timespec second{1, 0};
    sig = sigtimedwait(&set, nullptr, &second);
    if (sig < 0) {
      write_failure_tallies(auth, store, false);
      if (options.on_healthy && health.healthy(options.threads, options.stall_ms)) {
        options.on_healthy();
      }
      continue;
    }
    if (sig == SIGTERM || sig == SIGINT) break;
    if (sig == SIGHUP) {
      if (options.on_hangup) options.on_hangup();
      continue;
    }
    if (sig == SIGPIPE) continue;  // a write to a closed connection: its EPIPE is handled there
    LogFields f;
    f.reason = sig == SIGUSR1 ? "SIGUSR1" : "SIGUSR2";
    f.detail = "signal ignored: it changes nothing about serving";
    log_event(LogLevel::kWarn, "signal_ignored", f);
  }
  bool broken = health.broken.load();
  LogFields stopping;
  stopping.reason = broken ? "accept_broken" : sig == SIGINT ? "SIGINT" : "SIGTERM";
  log_event(LogLevel::kInfo, "stopping", stopping);
  if (options.on_stopping) options.on_stopping();

  // Stop accepting: shutting the listening socket down wakes every thread blocked in accept.
  g_stopping.store(true);
  shutdown(fd, SHUT_RDWR);
  wake_idle_workers(idle_fds);
  waiter.stop();  // held long polls are answered with what there is
  unlink(options.socket_path.c_str());
  bool finished;
  {
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(options.stop_timeout_ms);
    MutexLock lock(running.mu);
    while (running.count != 0) {
      if (running.mu.wait_until(running.cv, until) == std::cv_status::timeout) break;
    }
    finished = running.count == 0;
  }
  if (!finished) {
    LogFields f;
    f.reason = "in-flight requests did not finish in time";
    f.status = kServeStopTimeoutExit;
    f.detail = "exiting with status 1; the supervisor restarts the app";
    log_event(LogLevel::kError, "stop_timeout", f);
    // Every acknowledged write is durable already; committed crash-safe read entries survive
    // the exit too (they are in the WAL file; the disk sync is what a power cut would need).
    _exit(kServeStopTimeoutExit);
  }
  for (std::thread& t : workers) t.join();
  waiter.join();
  close(fd);
  write_failure_tallies(auth, store, true);
  return broken ? kServeAcceptBroken : kServeStopped;
}

}  // namespace tdapi
