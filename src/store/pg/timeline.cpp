// timeline.cpp: server histories, the fence rule and the fence file (see timeline.h).
#include "store/pg/timeline.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "base/files.h"

namespace tdapi {

namespace {

bool all_digits(std::string_view s) {
  if (s.empty() || s.size() > 20) return false;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
  }
  return true;
}

std::vector<std::string> split_list(const char* value) {
  std::vector<std::string> out;
  if (value == nullptr) return out;
  std::string_view rest(value);
  for (;;) {
    const size_t comma = rest.find(',');
    out.emplace_back(rest.substr(0, comma));
    if (comma == std::string_view::npos) return out;
    rest.remove_prefix(comma + 1);
  }
}

void append_value(std::string& out, std::string_view keyword, std::string_view value) {
  if (!out.empty()) out += ' ';
  out.append(keyword);
  out += "='";
  for (char ch : value) {
    if (ch == '\\' || ch == '\'') out += '\\';
    out += ch;
  }
  out += '\'';
}

}  // namespace

std::string without_hosts(const std::string& conninfo, const std::vector<std::string>& skip) {
  if (skip.empty()) return conninfo;
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options == nullptr) {
    PQfreemem(error);
    return conninfo;
  }
  const char* host = nullptr;
  const char* port = nullptr;
  const char* hostaddr = nullptr;
  for (const PQconninfoOption* o = options; o->keyword; ++o) {
    if (o->val == nullptr) continue;
    if (std::strcmp(o->keyword, "host") == 0) host = o->val;
    if (std::strcmp(o->keyword, "port") == 0) port = o->val;
    if (std::strcmp(o->keyword, "hostaddr") == 0) hostaddr = o->val;
  }
  const std::vector<std::string> hosts = split_list(host);
  const std::vector<std::string> ports = split_list(port);
  const std::vector<std::string> addrs = split_list(hostaddr);
  const size_t n = std::max(hosts.size(), addrs.size());
  // A port the string leaves out is libpq's default, as PQport names it: PGPORT, else 5432.
  const char* env_port = std::getenv("PGPORT");
  const std::string default_port = env_port && *env_port ? env_port : "5432";
  std::vector<size_t> kept;
  for (size_t i = 0; i < n; ++i) {
    const std::string name = i < hosts.size() && !hosts[i].empty() ? hosts[i]
                             : i < addrs.size()                    ? addrs[i]
                                                                   : "";
    const std::string p = ports.size() == 1 ? ports[0] : i < ports.size() ? ports[i] : "";
    const std::string key = name + ":" + (p.empty() ? default_port : p);
    if (std::find(skip.begin(), skip.end(), key) == skip.end()) kept.push_back(i);
  }
  if (n < 2 || kept.empty() || kept.size() == n) {
    PQconninfoFree(options);
    return conninfo;
  }
  auto join_kept = [&](const std::vector<std::string>& list) {
    std::string out;
    for (size_t i : kept) out += (out.empty() ? "" : ",") + (i < list.size() ? list[i] : "");
    return out;
  };
  std::string out;
  for (const PQconninfoOption* o = options; o->keyword; ++o) {
    if (o->val == nullptr) continue;
    const std::string_view keyword = o->keyword;
    if (keyword == "host") {
      append_value(out, keyword, join_kept(hosts));
    } else if (keyword == "hostaddr") {
      append_value(out, keyword, join_kept(addrs));
    } else if (keyword == "port" && ports.size() > 1) {
      append_value(out, keyword, join_kept(ports));
    } else {
      append_value(out, keyword, o->val);
    }
  }
  PQconninfoFree(options);
  return out;
}

std::string ServerTimeline::text() const {
  return "system " + system_identifier + ", timeline " + std::to_string(timeline);
}

std::string ServerTimeline::key() const {
  return system_identifier + ":" + std::to_string(timeline);
}

bool parse_timeline_key(std::string_view key, ServerTimeline& out) {
  const size_t colon = key.find(':');
  if (colon == std::string_view::npos) return false;
  const std::string_view system = key.substr(0, colon);
  const std::string_view timeline = key.substr(colon + 1);
  if (!all_digits(system) || !all_digits(timeline) || timeline.size() > 10) return false;
  out.system_identifier.assign(system);
  out.timeline = std::stoll(std::string(timeline));
  return out.timeline > 0;
}

bool timeline_of_walfile(std::string_view name, long long& timeline) {
  if (name.size() != 24) return false;
  long long value = 0;
  for (size_t i = 0; i < 24; ++i) {
    const char ch = name[i];
    int digit = -1;
    if (ch >= '0' && ch <= '9') digit = ch - '0';
    if (ch >= 'A' && ch <= 'F') digit = ch - 'A' + 10;
    if (digit < 0) return false;
    if (i < 8) value = value * 16 + digit;
  }
  timeline = value;
  return value > 0;
}

std::string fence_refusal(const ServerTimeline& fence, const ServerTimeline& server) {
  if (!fence.known()) return "";
  if (server.system_identifier != fence.system_identifier) {
    return "the read-write server is PostgreSQL " + server.text() +
           ", another cluster than the one this service last wrote to (" + fence.text() +
           "): writes are refused (failover fencing)";
  }
  if (server.timeline < fence.timeline) {
    return "the read-write server is on timeline " + std::to_string(server.timeline) +
           " of system " + server.system_identifier + ", older than timeline " +
           std::to_string(fence.timeline) +
           " this service last wrote to: a former primary, left behind by a failover; writes "
           "are refused (failover fencing)";
  }
  return "";
}

Status load_fence(const std::string& path, ServerTimeline& out) {
  out = ServerTimeline{};
  // O_NONBLOCK: a FIFO (or a device) put there must not hold the writer; only a regular file is
  // a fence.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::IoError("cannot read the PostgreSQL timeline file " + path + ": " +
                           errno_text());
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::IoError("cannot read the PostgreSQL timeline file " + path +
                           ": not a regular file");
  }
  char buf[128];
  ssize_t n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  if (n < 0) {
    return Status::IoError("cannot read the PostgreSQL timeline file " + path + ": " +
                           errno_text());
  }
  std::string_view text(buf, static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (!parse_timeline_key(text, out)) {
    out = ServerTimeline{};
    return Status::Corrupt("the PostgreSQL timeline file " + path +
                           " does not hold SYSTEM:TIMELINE; remove it to start a new fence");
  }
  return Status::Ok();
}

Status save_fence(const std::string& path, const ServerTimeline& fence) {
  std::string tmp;
  const int fd = make_temp_beside(path, "new", tmp);
  auto fail = [&](const std::string& what) {
    const std::string why = errno_text();
    if (fd >= 0) ::close(fd);
    if (!tmp.empty()) ::unlink(tmp.c_str());
    return Status::IoError("cannot " + what + " the PostgreSQL timeline file " + path + ": " + why);
  };
  if (fd < 0) return fail("create");
  const std::string line = fence.key() + "\n";
  if (::fchmod(fd, 0600) != 0) return fail("write");
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    if (errno == 0) errno = ENOSPC;
    return fail("write");
  }
  if (::fsync(fd) != 0) return fail("fsync");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename");
  tmp.clear();
  ::close(fd);
  if (!fsync_dir(dir_of(path))) {
    return Status::IoError("cannot fsync the directory of " + path + ": " + errno_text());
  }
  return Status::Ok();
}

std::string fence_file_stamp(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return "";
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
         std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec) + ":" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
         std::to_string(st.st_size);
}

Status advance_fence(const std::string& path, const ServerTimeline& server, ServerTimeline& now) {
  const std::string lock_path = path + ".lock";
  const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock < 0) {
    return Status::IoError("cannot open the lock " + lock_path + ": " + errno_text());
  }
  struct LockHolder {
    int fd;
    ~LockHolder() { ::close(fd); }  // closing releases the lock
  } holder{lock};
  while (::flock(lock, LOCK_EX) != 0) {
    if (errno != EINTR) return Status::IoError("cannot lock " + lock_path + ": " + errno_text());
  }
  Status s = load_fence(path, now);
  if (!s.ok()) return s;
  if (now == server || !fence_refusal(now, server).empty()) return Status::Ok();
  s = save_fence(path, server);
  if (s.ok()) now = server;
  return s;
}

}  // namespace tdapi
