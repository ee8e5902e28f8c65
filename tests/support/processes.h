// Process and port helpers with no test framework in them, so that the benchmarks link them
// as well as the tests (test_support.h wraps them in REQUIREs for the tests).
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "outpost/base/result.h"

namespace outpost::testing {

// A loopback TCP port with nothing listening on it right now (bound to port 0, then closed:
// another process may still take it, so whoever listens on it must be ready to try again).
Result<int> free_loopback_port();

// Polls `pred` every `poll_ms` for at most `seconds`; the last answer.
bool eventually(const std::function<bool()>& pred, int seconds, int poll_ms = 50);

// Starts `argv` (argv[0] a path) with stdin from /dev/null and stdout and stderr appended to
// `log`; `env` entries ("NAME=value") replace or add to this process's environment.
// This process's environment with `env` ("KEY=value") set, replacing entries of the same key.
std::vector<std::string> environment_with(const std::vector<std::string>& env);

Result<int> spawn_logged(const std::vector<std::string>& argv, const std::filesystem::path& log,
                         const std::vector<std::string>& env = {});

// The exit status of the child `pid` if it has ended (reaping it): its exit code, or 128 plus
// the signal that ended it. nullopt while it runs.
std::optional<int> exit_status(int pid);

// Sends `sig` to the child `pid` and waits up to `timeout_ms` for it to end, then SIGKILLs it;
// its exit status, or -1 when it had to be killed.
int stop_child(int pid, int sig, int timeout_ms);

}  // namespace outpost::testing
