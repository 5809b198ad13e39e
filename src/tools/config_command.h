// config_command.h: `testdata-api config …`: the settings table as a command, and what the
// administration commands do as root on a packaged server.
#pragma once

#include <string>

namespace tdapi {

// testdata-api config check [--env-file PATH]
//     validates a configuration (see load_configuration: as root on a packaged server the
//     package's environment file, else the environment, or PATH) and names every bad value on
//     stderr. Exit 0: fine; 1: problems; 2: bad usage.
// testdata-api config env-file     prints the package's environment file (comments included)
// testdata-api config table        prints the documentation's table of settings (Markdown)
int run_config_command(int argc, char** argv, char** envp);

// For the administration commands (keys, audit, backup, restore, migrate) run as root on a
// packaged server (the package's environment file exists): puts that file's settings into the
// environment (DB_PATH, DATABASE_URL, BACKUP_DIR, BACKUP_KEEP, PG*), then switches to the
// service user (SERVICE_USER, else testdata-api), so that nothing they create is root's.
// Anywhere else, changes nothing. False with `error` set when the file is unreadable or
// malformed, or the switch fails (the command must not run).
bool become_service_user_if_packaged(char** envp, std::string& error);

}  // namespace tdapi
