// files.h: paths, temp files and fsyncs of the commands that work on whole files (backup,
// restore, the copy before a schema migration).
#pragma once

#include <string>

namespace tdapi {

// The directory part of `path` ("." when it has none, "/" for a file in /).
std::string dir_of(const std::string& path);
// The last component of `path`.
std::string base_of(const std::string& path);
// strerror(errno).
std::string errno_text();

// Opens `path` with `flags` and fsyncs it; false when either fails.
bool fsync_fd_path(const std::string& path, int flags);
// fsync of a directory: makes a rename or link in it durable.
bool fsync_dir(const std::string& dir);

// Creates an empty 0600 file "DIR/.NAME.TAG-XXXXXX" beside path (O_CREAT|O_EXCL: never through
// a link) and returns its open descriptor, or -1 with errno. The descriptor is what the temp file
// is: the name may be changed by whoever can write DIR, the descriptor not.
int make_temp_beside(const std::string& path, const char* tag, std::string& out);

// True when path (not followed if a link) is the file open as fd.
bool still_names(const std::string& path, int fd);

// The size of the file at path (followed), -1 when it cannot be stat-ed.
long long file_size(const std::string& path);
// True when something (also a dangling link) is at path.
bool path_exists(const std::string& path);

}  // namespace tdapi
