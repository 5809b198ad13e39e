// systemd.h: the service manager's side channels, through libsystemd: readiness and status
// (sd_notify), the watchdog, and whether stderr is the journal. Every call is a no-op outside
// systemd (no NOTIFY_SOCKET, no WATCHDOG_USEC, no JOURNAL_STREAM).
#pragma once

#include <string>

namespace tdapi {

// Sends `state` ("READY=1", "STATUS=…", "STOPPING=1", "WATCHDOG=1"; several separated by
// newlines) to the service manager, when there is one.
void systemd_notify(const std::string& state);

// The watchdog interval systemd expects WATCHDOG=1 within, in ms; 0 when there is none.
long long systemd_watchdog_ms();

// True when stderr is connected to the journal (systemd's JOURNAL_STREAM names its device and
// inode): log lines then carry a syslog priority prefix ("<3>", "<4>", "<6>").
bool stderr_is_journal();

}  // namespace tdapi
