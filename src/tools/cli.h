// cli.h: the administration commands of the testdata-api binary: access keys and the audit
// trail, run against the database directly (also while the service runs).
#pragma once

namespace tdapi {

// The usage lines of the administration commands (for --help).
const char* admin_usage();

// True when argv[1] names an administration command (`keys`, `audit`, `migrate`, `backup`,
// `restore`, `config`).
bool is_admin_command(int argc, char** argv);

// Runs it:
//   keys create --db PATH --name NAME --scope SCOPE [--scope SCOPE…]
//       prints {"key_id":…,"token":…,"scopes":[…]}: the only time the token is shown
//   keys list --db PATH        prints one JSON object per key (never a secret or its hash)
//   keys revoke --db PATH KEY_ID
//   audit verify --db PATH [--expect-head SEQ:HASH]
//       checks the whole hash chain and names the first broken entry; prints the head
//       (SEQ:HASH) to keep elsewhere, and with --expect-head checks an earlier head is intact
//   audit export --db PATH     prints every audit entry as one JSON line, oldest first
//   migrate, backup, restore   see migrate.h and backup.h
// Returns the exit status: 0 done, 1 failed (named on stderr: unknown key, broken chain,
// storage error), 2 bad usage.
int run_admin_command(int argc, char** argv);

}  // namespace tdapi
