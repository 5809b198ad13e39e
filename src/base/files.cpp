// files.cpp: paths, temp files and fsyncs of the commands that work on whole files.
#include "base/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace tdapi {

std::string dir_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string errno_text() { return std::strerror(errno); }

bool fsync_fd_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = fsync(fd) == 0;
  ::close(fd);
  return ok;
}

bool fsync_dir(const std::string& dir) { return fsync_fd_path(dir, O_RDONLY | O_DIRECTORY); }

// Creates an empty 0600 file "DIR/.NAME.TAG-XXXXXX" beside path (O_CREAT|O_EXCL: never through
// a link) and returns its open descriptor, or -1 with errno. The descriptor is what the temp file
// is: the name may be changed by whoever can write DIR, the descriptor not.
int make_temp_beside(const std::string& path, const char* tag, std::string& out) {
  std::string tmpl = dir_of(path) + "/." + base_of(path) + "." + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = mkostemp(buf.data(), O_CLOEXEC);
  if (fd < 0) return -1;
  out.assign(buf.data());
  return fd;
}

// True when path (not followed if a link) is the file open as fd.
bool still_names(const std::string& path, int fd) {
  struct stat named {
  }, opened{};
  return ::lstat(path.c_str(), &named) == 0 && fstat(fd, &opened) == 0 && S_ISREG(named.st_mode) &&
         named.st_dev == opened.st_dev && named.st_ino == opened.st_ino;
}

long long file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<long long>(st.st_size) : -1;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace tdapi
