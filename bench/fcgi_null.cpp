// fcgi_null.cpp: the FastCGI ceiling for `make bench`: a libfcgi responder that does no work.
// Same accept loop shape as the app (N threads on one unix socket, FCGX_Accept_r, one request
// per connection); answers /large with a body of --large-bytes bytes, /large-before with one of
// --before-bytes (the listing of another build, to compare each with the ceiling of its own
// size), anything else with a small JSON body. Reads and discards any request body.
//
// Usage: fcgi_null --socket PATH [--threads N] [--large-bytes N] [--before-bytes N]
#include <fcgiapp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  std::string socket_path;
  int threads = 16;
  size_t large_bytes = 100000;
  size_t before_bytes = 100000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--socket") socket_path = argv[i + 1];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    if (a == "--large-bytes") large_bytes = std::strtoul(argv[i + 1], nullptr, 10);
    if (a == "--before-bytes") before_bytes = std::strtoul(argv[i + 1], nullptr, 10);
  }
  if (socket_path.empty()) return 2;
  signal(SIGPIPE, SIG_IGN);
  FCGX_Init();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  unlink(socket_path.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  umask(0077);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 1024) != 0) {
    return 1;
  }
  const std::string head = "Status: 200 OK\r\nContent-Type: application/json\r\n\r\n";
  const std::string small = R"({"status":"success","test_id":"t1"})";
  auto padded = [](size_t bytes) {
    std::string body = R"({"status":"success","pad":")";
    body.append(bytes > body.size() + 2 ? bytes - body.size() - 2 : 0, 'x');
    return body + "\"}";
  };
  const std::string large = padded(large_bytes);
  const std::string large_before = padded(before_bytes);

  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      FCGX_Request req;
      FCGX_InitRequest(&req, fd, 0);
      char sink[8192];
      while (FCGX_Accept_r(&req) >= 0) {
        while (FCGX_GetStr(sink, sizeof sink, req.in) > 0) {
        }
        const char* uri = FCGX_GetParam("REQUEST_URI", req.envp);
        const std::string& body = !uri                                          ? small
                                  : std::strncmp(uri, "/large-before", 13) == 0 ? large_before
                                  : std::strncmp(uri, "/large", 6) == 0         ? large
                                                                                : small;
        FCGX_PutStr(head.data(), static_cast<int>(head.size()), req.out);
        FCGX_PutStr(body.data(), static_cast<int>(body.size()), req.out);
        FCGX_Finish_r(&req);
      }
    });
  }
  for (auto& t : pool) t.join();
  return 0;
}
