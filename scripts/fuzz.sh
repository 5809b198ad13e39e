#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS (default 600).
# Inputs up to 4 KiB, batch bodies up to 64 KiB (room for several records, long strings, deep
# nesting and the value budget).
# Usage: scripts/fuzz.sh [SECONDS]. New inputs go to $FUZZ_BUILD_DIR/corpus-*; the seeds in
# tests/fuzz/corpus/ are read, never written. A crash leaves its input in $FUZZ_BUILD_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
out=${FUZZ_BUILD_DIR:-build-fuzz}
mkdir -p "$out"
srcs=(src/api/validate.cpp src/store/test_record.cpp src/base/json.cpp src/base/utf8.cpp
  src/http/http.cpp src/http/storage_status.cpp src/store/status.cpp src/base/log.cpp
  src/base/clock.cpp src/security/auth.cpp src/base/crypto.cpp)
targets=(validate correction query batch auth)
for target in "${targets[@]}"; do
  clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Isrc "tests/fuzz/fuzz_$target.cpp" "${srcs[@]}" -lcjson -lcrypto -o "$out/fuzz_$target"
done
status=0
for target in "${targets[@]}"; do
  mkdir -p "$out/corpus-$target"
  dict=()
  case $target in validate | correction | batch) dict=(-dict=tests/fuzz/json.dict) ;; esac
  max_len=4096
  [ "$target" = batch ] && max_len=65536
  echo "fuzz_$target: ${seconds}s"
  if ! "$out/fuzz_$target" -max_total_time="$seconds" -print_final_stats=1 -max_len="$max_len" \
      -artifact_prefix="$out/crash-$target-" "${dict[@]}" \
      "$out/corpus-$target" "tests/fuzz/corpus/$target" >"$out/fuzz_$target.log" 2>&1; then
    status=1
    tail -40 "$out/fuzz_$target.log"
  fi
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$out/fuzz_$target.log" | sed "s/^/fuzz_$target /"
done
exit $status
