// The service manager's readiness protocol (sd_notify(3)): outpostd tells systemd it is ready
// (Type=notify) and that it is stopping, with one datagram to $NOTIFY_SOCKET.
//
// Written here rather than linked from libsystemd: the protocol is one datagram, documented as
// stable for exactly this use, and libsystemd would load seven libraries into outpostd
// (libgcrypt, liblzma, libzstd, liblz4, libgpg-error, libcap and itself) for two calls. The
// xz backdoor (CVE-2024-3094) reached sshd by this road; OpenSSH 9.8 dropped the library for
// the same dozen lines. docs/dependencies.md.
#pragma once

#include <string_view>

#include "outpost/base/result.h"

namespace outpost::daemon {

// Sends `state` ("READY=1", "STOPPING=1", ...) to the socket $NOTIFY_SOCKET names: a path, or
// '@' for Linux's abstract namespace. Without $NOTIFY_SOCKET (not started by systemd) it does
// nothing and succeeds; a malformed or unreachable socket is an error, and so is systemd 254's
// "vsock:CID:PORT" form (a service manager outside a VM), which outpostd does not speak.
Result<void> notify_service_manager(std::string_view state);

}  // namespace outpost::daemon
