#include <atomic>
#include "test_support.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "outpost/base/crypto.h"
#include "outpost/base/files.h"

extern char** environ;

namespace outpost::testing {
namespace {

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/outpost-test-XXXXXX";
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Swtpm::Swtpm(std::filesystem::path dir, bool manufacture) : dir_(std::move(dir)), manufacture_(manufacture) {
  start();
}

Swtpm::~Swtpm() { stop(); }

void Swtpm::start() {
  std::vector<std::string> argv = {OUTPOST_SWTPM_SCRIPT, "start", dir_.string()};
  if (manufacture_) argv.push_back("--manufacture");
  CommandResult r = run_program(argv);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto env = read_text_file(dir_ / "swtpm.env");
  REQUIRE(env.has_value());
  std::string line = *env;
  line.erase(std::remove(line.begin(), line.end(), '\n'), line.end());
  REQUIRE(line.rfind("OUTPOST_TCTI=", 0) == 0);
  tcti_ = line.substr(13);
  running_ = true;
}

void Swtpm::stop() {
  if (!running_) return;
  run_program({OUTPOST_SWTPM_SCRIPT, "stop", dir_.string()});
  running_ = false;
}

std::string fixture_tcti() {
  const char* t = std::getenv("OUTPOST_TCTI");
  if (t == nullptr || *t == '\0') FAIL("OUTPOST_TCTI is not set: run this test through ctest (the swtpm fixture)");
  return t;
}

CommandResult run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  int out_pipe[2], err_pipe[2];
  REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err_pipe, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  const std::vector<std::string> envs = environment_with(env);
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : envs) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, cargv[0], &actions, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  REQUIRE(rc == 0);
  CommandResult result;
  // Outputs here are small; read stderr after stdout (each under the pipe buffer in practice).
  result.out = read_all(out_pipe[0]);
  result.err = read_all(err_pipe[0]);
  ::close(out_pipe[0]);
  ::close(err_pipe[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

CommandResult run_outpost(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  std::vector<std::string> argv = {OUTPOST_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv, env);
}

std::string tpm_cycle_path() { return OUTPOST_TPM_CYCLE_PATH; }
std::string outpostd_path() { return OUTPOST_DAEMON_PATH; }
std::string outpost_cli_path() { return OUTPOST_CLI_PATH; }

Background::Background(const std::vector<std::string>& argv, const std::filesystem::path& log,
                       const std::vector<std::string>& env) {
  auto pid = spawn_logged(argv, log, env);
  INFO((pid ? std::string() : pid.error().message()));
  REQUIRE(pid.has_value());
  pid_ = *pid;
}

Background::~Background() {
  if (pid_ > 0 && status_ < 0) stop(SIGTERM, 10000);
}

bool Background::running() {
  if (status_ >= 0) return false;
  if (auto st = exit_status(pid_)) {
    status_ = *st;
    return false;
  }
  return true;
}

int Background::stop(int sig, int timeout_ms) {
  if (!running()) return status_;
  const int st = stop_child(pid_, sig, timeout_ms);
  status_ = st >= 0 ? st : 128 + SIGKILL;
  return st;
}

CommandResult expect_ok(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  auto r = run_outpost(args, env);
  INFO("outpost " << (args.empty() ? "" : args[0]) << " " << (args.size() > 1 ? args[1] : "") << "\n" << r.out << r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  REQUIRE(write_file_atomic(p, std::string_view(text)));
}

std::string agent_uid_config() {
  static std::atomic<unsigned> next{0};
  // 2^31 - 1,900,000,000 leaves room for 3,800,000 ranges of 64; pids stay below 4,194,304.
  const uint64_t slot = (static_cast<uint64_t>(::getpid()) * 4 + next++ % 4) % 3'800'000;
  return "sandbox:\n  agent_uid_base: " + std::to_string(1'900'000'000ull + slot * 64) + "\n  agent_uid_count: 64\n";
}

int unused_port() {
  auto port = free_loopback_port();
  INFO((port ? std::string() : port.error().message()));
  REQUIRE(port.has_value());
  return *port;
}

int listen_on_loopback(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, 16) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int connect_loopback(uint16_t port, int timeout_s) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

std::string loopback_exchange(uint16_t port, const std::string& request) {
  const int fd = connect_loopback(port, 10);
  std::string out;
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[8192];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::vector<std::pair<std::string, std::string>> snapshot_tree(const std::filesystem::path& dir) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!std::filesystem::exists(dir)) return out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    std::string rel = std::filesystem::relative(e.path(), dir).string();
    if (e.is_regular_file()) {
      auto bytes = read_file(e.path());
      REQUIRE(bytes.has_value());
      out.emplace_back(rel, hex_encode(sha256(*bytes)));
    } else {
      out.emplace_back(rel, "dir");
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace outpost::testing
