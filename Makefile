# testdata-api: `make run` serves on http://127.0.0.1:$(PORT); `make test` runs every test.
# Both install missing Debian packages first (scripts/install-deps.sh) and build with CMake.

PORT ?= 5000
DATA_DIR ?= ./var
export PORT DATA_DIR THREADS

JOBS ?= 2
BUILD_DIR := build
TEST_BUILD_DIR := build-test
SANITIZE ?= address,undefined

.PHONY: all deps build run test test-tsan fuzz bench clean format tidy key keys revoke-key \
        audit-verify backup restore deb observe

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD_DIR) -j $(JOBS)

run: build
	@exec scripts/run.sh

# Access keys and the audit trail on the default database (DATABASE_URL, else DB_PATH, else
# DATA_DIR/testdata.db;
# the service creates it on its first start). Also while the service runs. The build's output
# goes to stderr, so stdout is only the command's JSON.
#   make key SCOPE=write:c1 NAME=lab        (SCOPES="read:c1 read:c2" for several scopes)
#   make keys                               (list: ids, names, scopes, created, revoked)
#   make revoke-key KEY_ID=3f2a9c0d41b7e865
#   make audit-verify                       (checks the audit trail's hash chain)
DB_FILE = $(or $(DATABASE_URL),$(DB_PATH),$(DATA_DIR)/testdata.db)
key:
	@$(MAKE) --no-print-directory build >&2
	@test -n "$(NAME)" || { echo "make key: NAME=... is required (who the key is for)" >&2; exit 2; }
	@test -n "$(SCOPE)$(SCOPES)" || { echo "make key: SCOPE=... (or SCOPES=\"... ...\") is required" >&2; exit 2; }
	@$(BUILD_DIR)/testdata-api keys create --db "$(DB_FILE)" --name "$(NAME)" \
	  $(foreach s,$(SCOPE) $(SCOPES),--scope "$(s)")
keys:
	@$(MAKE) --no-print-directory build >&2
	@$(BUILD_DIR)/testdata-api keys list --db "$(DB_FILE)"
revoke-key:
	@$(MAKE) --no-print-directory build >&2
	@test -n "$(KEY_ID)" || { echo "make revoke-key: KEY_ID=... is required" >&2; exit 2; }
	@$(BUILD_DIR)/testdata-api keys revoke --db "$(DB_FILE)" "$(KEY_ID)"
audit-verify:
	@$(MAKE) --no-print-directory build >&2
	@$(BUILD_DIR)/testdata-api audit verify --db "$(DB_FILE)"

# Backup and restore of the SQLite database (README "Backup and restore"); PostgreSQL
# (DATABASE_URL) is refused with what to use instead (pg_dump, pg_basebackup).
#   make backup TO=/srv/backups/today.db    a verified copy, taken while the service runs
#   make backup                             into BACKUP_DIR (default DATA_DIR/backups) as
#                                           testdata-<time>.db, keeping the BACKUP_KEEP (7) newest
#   make restore FROM=/srv/backups/today.db refused while the service runs and for a damaged
#                                           file; the replaced database is kept beside it
backup:
	@$(MAKE) --no-print-directory build >&2
	@$(BUILD_DIR)/testdata-api backup --db "$(DB_FILE)" $(if $(TO),--to "$(TO)",\
	  --to-dir "$(or $(BACKUP_DIR),$(DATA_DIR)/backups)" --keep "$(or $(BACKUP_KEEP),7)")
restore:
	@$(MAKE) --no-print-directory build >&2
	@test -n "$(FROM)" || { echo "make restore: FROM=... is required (a backup file)" >&2; exit 2; }
	@$(BUILD_DIR)/testdata-api restore --from "$(FROM)" --db "$(DB_FILE)"

# Prometheus on OBSERVE_PORT (default 9090, loopback) scraping the service that `make run` runs
# (same PORT and DATA_DIR), with ops/prometheus's config, rules and console; creates a key of
# scope metrics on first use. Prints the console's URL; Ctrl-C stops it. Data in DATA_DIR/observe.
observe: build
	@DB="$(DB_FILE)" APP_BIN="$(BUILD_DIR)/testdata-api" exec scripts/observe.sh

# Unit and integration tests run against a build instrumented with ASan + UBSan.
test: deps
	@scripts/install-npm-tools.sh
	@cmake -S . -B $(TEST_BUILD_DIR) -DCMAKE_BUILD_TYPE=Debug -DSANITIZE=$(SANITIZE) >/dev/null
	@cmake --build $(TEST_BUILD_DIR) -j $(JOBS)
	@cd $(TEST_BUILD_DIR) && ctest --output-on-failure --timeout 600
	@$(MAKE) --no-print-directory test-tsan

# The threaded parts (group-commit writers, reader pools, handlers) under ThreadSanitizer; the
# PostgreSQL store's against a private server of its own (scripts/pg-test-server.sh).
test-tsan: deps
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DSANITIZE=thread >/dev/null
	@cmake --build build-tsan -j $(JOBS) --target unit_tests
	@pg=/tmp/tdapi-pg-tsan-$$$$; scripts/pg-test-server.sh start $$pg >/dev/null || exit 1; \
	  TEST_PG_HOST=$$pg build-tsan/tests/unit_tests --gtest_brief=1 \
	    --gtest_filter='SqliteStore.*:StoreContract/*:Api.*:PgStore*:FifoPool.*:WriteEngine/*:Metrics*:StoreAudit*:StoreKeys*' 2>build-tsan/unit_tests.stderr; rc=$$?; \
	  scripts/pg-test-server.sh stop $$pg; \
	  [ $$rc = 0 ] || { cat build-tsan/unit_tests.stderr; exit 1; }

# The Debian package (README "Install"): dist/testdata-api_<version>_<arch>.deb, built by
# dpkg-buildpackage from a copy of the sources; its tests (lintian, systemd-analyze verify, an
# install, upgrade and purge in a clean Debian 12 root) are CTest's package_* tests.
# Installs the package's Build-Depends only (scripts/build-deb.sh), not the whole toolchain.
deb:
	@JOBS=$(JOBS) scripts/build-deb.sh dist

# Throughput and latency against the FastCGI ceiling, measured with wrk; prints a table and
# writes bench/results/latest.md. BENCH_SECONDS per run (4), BENCH_ROUNDS (3), BENCH_BIG_ROWS,
# BENCH_IDLE_CONNS (1000); BENCH_PROFILE=1 also writes perf profiles (bench/results/perf-*.txt).
# With it: the durable-append probe (4 KB append + fdatasync in the data dir, BENCH_PROBE_SECONDS
# 2 or BENCH_PROBE_APPENDS 5000 per round), the goal lines, and every SQLite case run against
# BENCH_BEFORE (a git revision, default c241b27; none leaves it out) too, built once into
# BENCH_BEFORE_CACHE (BUILD_DIR/bench-before; ~4 minutes on 2 cores). About 13 minutes with
# the defaults (BENCH_PG=0: about 9).
# Then the scale case (bench/scale.py, bench/results/scale.md): POST, GET and start-up on an
# empty database and grown by SQL to BENCH_SCALE_SIZES (1000000,10000000: ~6 GB in the temp
# dir, ~8 minutes; 0 skips it).
bench: build
	@python3 bench/bench.py
	@python3 bench/scale.py

# libFuzzer targets over body validation and query decoding, FUZZ_SECONDS each (default 600).
FUZZ_SECONDS ?= 600
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

format:
	@find src tests/unit tests/fuzz \( -name '*.cpp' -o -name '*.h' \) -exec clang-format -i {} +

tidy: build
	@clang-tidy -p $(BUILD_DIR) --quiet $$(find src -name '*.cpp')

clean:
	rm -rf $(BUILD_DIR) $(TEST_BUILD_DIR) build-tsan build-fuzz dist
