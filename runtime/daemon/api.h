// The outpostd API on its Unix socket: one JSON object per line each way. A request may carry
// file descriptors (SCM_RIGHTS) with its line: `outpost mcp connect` hands over its stdin and
// stdout so the daemon reads and writes the agent's pipes directly, with no relay process in
// between.
//
// Requests: {"op": "deploy"|"list"|"stop"|"logs"|"install"|"status"|"mcp", ...}.
// Replies:  {"ok": true, ...} or {"ok": false, "error": "one line"}; for "mcp", after the ok,
//           {"done": true, "status": N} when the server's side has ended.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <boost/json/value.hpp>

#include "outpost/base/result.h"

namespace outpost::daemon {

inline constexpr size_t kMaxApiLine = 64 << 20;  // a bundle travels base64 in one line

// Sends one line (`msg` serialized plus '\n') with `fds` attached to its first byte.
Result<void> send_message(int sock, const boost::json::value& msg, const std::vector<int>& fds = {});
// Reads one line; descriptors that came with it are appended to `fds` (owned by the caller).
// At most `max_fds` descriptors are taken (the kernel discards the rest: they are never
// installed here). With timeout_ms >= 0 the whole line must arrive within that time, however
// it is split (errc::timeout otherwise); a peer trickling bytes cannot hold a reader longer.
Result<boost::json::value> recv_message(int sock, std::vector<int>* fds = nullptr, size_t max = kMaxApiLine,
                                        size_t max_fds = 8, int timeout_ms = -1);

// Connects to the daemon's socket.
Result<int> connect_api(const std::filesystem::path& socket);
// One request, one reply. A reply with ok=false becomes an error with its text.
Result<boost::json::object> call_api(const std::filesystem::path& socket, const boost::json::object& request);

// The socket path: $OUTPOST_SOCKET, else <state>/outpostd.sock.
std::filesystem::path default_socket(const std::filesystem::path& state_dir);

}  // namespace outpost::daemon
