#!/usr/bin/env bash
# thread_safety.sh CLANGXX: compiles every file of src/ with clang's -Wthread-safety -Werror
# (syntax only): the GUARDED_BY / REQUIRES / EXCLUDES annotations (base/thread_annotations.h)
# say which mutex guards what, and the compiler checks every access. GCC ignores them.
set -euo pipefail
clangxx=${1:?usage: thread_safety.sh CLANGXX}
cd "$(dirname "$0")/../.."
flags=(-std=c++17 -fsyntax-only -Wthread-safety -Wthread-safety-beta -Werror -Isrc
       $(pkg-config --cflags libcjson libpq sqlite3) -DTDAPI_VERSION='"check"')
status=0
count=0
while IFS= read -r file; do
  count=$((count + 1))
  "$clangxx" "${flags[@]}" "$file" || { echo "thread safety: $file" >&2; status=1; }
done < <(find src -name '*.cpp' | sort)
echo "$count files checked with -Wthread-safety"
exit $status
