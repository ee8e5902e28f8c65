// Helpers shared by the tests: temporary directories, a swtpm of a test's own (for tests
// that restart, clear or swap the TPM), and running the outpost CLI.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "outpost/base/result.h"
#include "processes.h"  // eventually(), and what Background and unused_port() are made of

namespace outpost::testing {

// The value of a Result the test needs, or the test stops there with the error's message.
template <class T>
T value_of(Result<T> r) {
  INFO((r ? std::string() : r.error().message()));
  REQUIRE(r.has_value());
  return std::move(r).value();
}

// A fresh directory under $TMPDIR, removed with everything in it when this goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& p) const { return path_ / p; }

 private:
  std::filesystem::path path_;
};

// A swtpm started through scripts/swtpm.sh on a free loopback port, stopped by its pid.
class Swtpm {
 public:
  explicit Swtpm(std::filesystem::path dir, bool manufacture = false);
  ~Swtpm();
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  const std::string& tcti() const { return tcti_; }
  void stop();
  void start();  // with the same state: a power cycle of the same TPM

 private:
  std::filesystem::path dir_;
  bool manufacture_;
  bool running_ = false;
  std::string tcti_;
};

// The TCTI of the swtpm the CTest fixture started (OUTPOST_TCTI); fails the test if unset.
std::string fixture_tcti();

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs the outpost CLI built alongside the tests with `args`, `env` added to the environment.
CommandResult run_outpost(const std::vector<std::string>& args, const std::vector<std::string>& env = {});
// run_outpost that REQUIREs exit 0, showing the command's output when it fails.
CommandResult expect_ok(const std::vector<std::string>& args, const std::vector<std::string>& env = {});
// Writes `text` to `p` (atomically, parents created), REQUIRing success.
void write_text(const std::filesystem::path& p, const std::string& text);
// The tpm_cycle helper program (one cycle of the handle-leak test).
std::string tpm_cycle_path();
// Runs any program, capturing its output.
CommandResult run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});

// A program started in the background (a daemon under test), its output to `log`, `env`
// added to the environment. Stopped by its pid: SIGTERM, then SIGKILL after a grace period,
// when this goes away.
class Background {
 public:
  Background(const std::vector<std::string>& argv, const std::filesystem::path& log,
             const std::vector<std::string>& env = {});
  ~Background();
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  int pid() const { return pid_; }
  bool running();
  // Sends `sig` and waits up to `timeout_ms` for the exit; the exit code (128+signal), or -1.
  int stop(int sig = 15, int timeout_ms = 15000);

 private:
  int pid_ = -1;
  int status_ = -1;
};

// The outpostd daemon and the outpost CLI built alongside the tests.
std::string outpostd_path();
std::string outpost_cli_path();

// A loopback TCP port with nothing listening on it right now.
int unused_port();

// A TCP socket listening on 127.0.0.1 at a port the kernel picks (written to `port`); the
// caller owns the fd.
int listen_on_loopback(uint16_t& port);

// A TCP connection to 127.0.0.1:port (REQUIREd), reads timing out after timeout_s; the caller
// owns the fd.
int connect_loopback(uint16_t port, int timeout_s = 5);

// Sends `request` on a new connection to 127.0.0.1:port and reads until the peer closes (or a
// read times out after 10 s): the whole answer, "" when nothing came.
std::string loopback_exchange(uint16_t port, const std::string& request);

// outpostd configuration lines giving this test process's daemons agent uids of their own
// (64 from a base derived from the pid): tests run in parallel, each with an outpostd, and one
// daemon's cleanup of an agent uid (kill_all_of_uid) must never reach another test's agent.
std::string agent_uid_config();

// name -> SHA-256 of content for every file under `dir` (for "nothing changed" checks).
std::vector<std::pair<std::string, std::string>> snapshot_tree(const std::filesystem::path& dir);

}  // namespace outpost::testing
