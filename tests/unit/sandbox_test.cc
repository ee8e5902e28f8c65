// runtime/sandbox: Landlock-confined spawn, scrubbed environments and process identity, against
// the real kernel (no mocks). Needs Landlock ABI 6+ for the scoping test, 4+ for TCP.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <set>
#include <tuple>

#include "outpost/base/files.h"
#include "sandbox/network.h"
#include "sandbox/sandbox.h"
#include "test_support.h"

using namespace outpost;
using namespace outpost::sandbox;
namespace fs = std::filesystem;
using outpost::testing::TempDir;

namespace {

// Enough of the system for bash, cat and env to start.
const std::vector<fs::path> kSystem = {"/usr", "/bin", "/lib", "/lib64", "/etc"};
const std::vector<std::string> kEnv = {"PATH=/usr/bin:/bin", "LC_ALL=C"};

struct Run {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Spawns `spec` with stdout and stderr captured, and waits for it.
Run run(SpawnSpec spec) {
  int out[2], err[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  spec.stdout_fd = out[1];
  spec.stderr_fd = err[1];
  auto child = spawn(spec);
  ::close(out[1]);
  ::close(err[1]);
  if (!child) {
    ::close(out[0]);
    ::close(err[0]);
    FAIL("spawn: " << child.error().message());
  }
  Run r;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  for (int open_fds = 2; open_fds > 0;) {
    REQUIRE(::poll(fds, 2, 10000) > 0);
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  int status = 0;
  REQUIRE(::waitpid(child->pid, &status, 0) == child->pid);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

SpawnSpec sandboxed(const Ruleset& rs, std::vector<std::string> argv) {
  SpawnSpec spec;
  spec.argv = std::move(argv);
  spec.env = kEnv;
  spec.sandbox = &rs;
  return spec;
}

Ruleset prepare(const SandboxPolicy& policy) {
  auto rs = Ruleset::prepare(policy);
  if (!rs) FAIL(rs.error().message());
  return std::move(*rs);
}

SandboxPolicy system_policy() {
  SandboxPolicy p;
  p.read_only = kSystem;
  return p;
}

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

// Runs `probe` in a forked child confined as spawn() confines (no_new_privs, then the Landlock
// ruleset and the seccomp filter, each when given), and returns what it returned: 0 for
// success, else the errno of the operation under test.
template <class Probe>
int errno_confined(const Ruleset* rs, const SyscallFilter* filter, Probe probe) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || (rs && ::syscall(SYS_landlock_restrict_self, rs->fd(), 0) != 0) ||
        (filter && ::prctl(PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, filter->program()) != 0)) {
      ::_exit(200);
    }
    ::_exit(probe());
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) != 200);
  return WEXITSTATUS(status);
}

template <class Probe>
int errno_under(const Ruleset* rs, Probe probe) {
  return errno_confined(rs, nullptr, probe);
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A loopback TCP listener on a port the kernel picked.
struct Listener {
  int fd = -1;
  uint16_t port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd); }
};

int connect_unix(const sockaddr_un& addr, socklen_t len) {
  int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (s < 0) return errno;
  return ::connect(s, reinterpret_cast<const sockaddr*>(&addr), len) == 0 ? 0 : errno;
}

// Waits until the process behind `pidfd` has exited (its pidfd turns readable).
bool wait_exited(int pidfd, int ms) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

void kill_group_and_reap(const Child& c) {
  ::kill(-c.pid, SIGKILL);
  int status;
  ::waitpid(c.pid, &status, 0);
}

}  // namespace

TEST_CASE("the kernel offers Landlock with TCP rules and scoping", "[sandbox]") {
  INFO("Landlock ABI " << landlock_abi());
  REQUIRE(landlock_abi() >= 6);
}

TEST_CASE("a sandboxed process reads and writes its work directory and nothing else", "[sandbox]") {
  TempDir work, other, ro;
  write_text(work / "in.txt", "hello");
  write_text(other / "secret.txt", "secret");
  write_text(other / "granted.txt", "granted");
  write_text(ro / "ro.txt", "readable");
  SandboxPolicy policy = system_policy();
  policy.read_write = {work.path(), "/dev/null"};  // a file: only file rights apply
  policy.read_only.push_back(ro.path());
  policy.read_only.push_back(other / "granted.txt");  // a single file, not a directory
  policy.read_only.push_back("/nonexistent-outpost-path");
  Ruleset rs = prepare(policy);
  CHECK(std::find(rs.skipped().begin(), rs.skipped().end(), "/nonexistent-outpost-path") != rs.skipped().end());

  Run in = run(sandboxed(rs, {"/bin/cat", (work / "in.txt").string()}));
  CHECK(in.exit_code == 0);
  CHECK(in.out == "hello");

  Run outside = run(sandboxed(rs, {"/bin/cat", (other / "secret.txt").string()}));
  CHECK(outside.exit_code != 0);
  CHECK(outside.out.empty());
  CHECK_THAT(outside.err, Catch::Contains("Permission denied"));

  Run file_rule = run(sandboxed(rs, {"/bin/cat", (other / "granted.txt").string()}));
  CHECK(file_rule.exit_code == 0);
  CHECK(file_rule.out == "granted");

  Run read_ro = run(sandboxed(rs, {"/bin/cat", (ro / "ro.txt").string()}));
  CHECK(read_ro.exit_code == 0);
  CHECK(read_ro.out == "readable");

  Run write_ro = run(sandboxed(rs, {"/bin/bash", "-c", "echo x > " + (ro / "new.txt").string()}));
  CHECK(write_ro.exit_code != 0);
  CHECK_THAT(write_ro.err, Catch::Contains("Permission denied"));
  CHECK_FALSE(fs::exists(ro / "new.txt"));

  Run write_rw = run(sandboxed(rs, {"/bin/bash", "-c", "echo x > " + (work / "new.txt").string()}));
  CHECK(write_rw.exit_code == 0);
  CHECK(fs::exists(work / "new.txt"));

  Run devnull = run(sandboxed(rs, {"/bin/bash", "-c", "echo x > /dev/null"}));
  CHECK(devnull.exit_code == 0);
  CHECK(devnull.err.empty());
}

TEST_CASE("a sandboxed process connects only to listed TCP ports and binds only when allowed", "[sandbox]") {
  REQUIRE(landlock_abi() >= 4);
  REQUIRE(fs::exists("/bin/bash"));
  Listener listener;
  const std::string script = "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(listener.port);

  Ruleset none = prepare(system_policy());
  Run denied = run(sandboxed(none, {"/bin/bash", "-c", script}));
  CHECK(denied.exit_code != 0);
  CHECK_THAT(denied.err, Catch::Contains("Permission denied"));

  SandboxPolicy listed = system_policy();
  listed.connect_tcp_ports = {listener.port};
  Ruleset allowed = prepare(listed);
  Run connected = run(sandboxed(allowed, {"/bin/bash", "-c", script}));
  CHECK(connected.exit_code == 0);
  CHECK(connected.err.empty());

  auto bind_any = [] {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    return ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 ? 0 : errno;
  };
  CHECK(errno_under(&none, bind_any) == EACCES);
  SandboxPolicy binder = system_policy();
  binder.allow_bind_tcp = true;
  Ruleset may_bind = prepare(binder);
  CHECK(errno_under(&may_bind, bind_any) == 0);
}

TEST_CASE("scoping blocks signals and abstract sockets but not outpostd's pathname socket", "[sandbox]") {
  REQUIRE(landlock_abi() >= 6);
  TempDir run_dir;  // stands in for /run/outpost: not in the policy at all
  Ruleset rs = prepare(system_policy());

  sockaddr_un path_addr{};
  path_addr.sun_family = AF_UNIX;
  const std::string sock_path = (run_dir / "outpostd.sock").string();
  REQUIRE(sock_path.size() < sizeof path_addr.sun_path);
  std::copy(sock_path.begin(), sock_path.end(), path_addr.sun_path);
  int path_listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::bind(path_listener, reinterpret_cast<sockaddr*>(&path_addr), sizeof path_addr) == 0);
  REQUIRE(::listen(path_listener, 16) == 0);

  sockaddr_un abstract_addr{};
  abstract_addr.sun_family = AF_UNIX;
  const std::string name = "outpost-sandbox-test-" + std::to_string(::getpid());
  std::copy(name.begin(), name.end(), abstract_addr.sun_path + 1);  // sun_path[0] == 0: abstract
  const auto abstract_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  int abstract_listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::bind(abstract_listener, reinterpret_cast<sockaddr*>(&abstract_addr), abstract_len) == 0);
  REQUIRE(::listen(abstract_listener, 16) == 0);

  CHECK(errno_under(&rs, [&] { return connect_unix(path_addr, sizeof path_addr); }) == 0);
  CHECK(errno_under(nullptr, [&] { return connect_unix(abstract_addr, abstract_len); }) == 0);
  CHECK(errno_under(&rs, [&] { return connect_unix(abstract_addr, abstract_len); }) == EPERM);
  const pid_t parent = ::getpid();
  CHECK(errno_under(&rs, [&] { return ::kill(parent, 0) == 0 ? 0 : errno; }) == EPERM);
  ::close(path_listener);
  ::close(abstract_listener);
}

TEST_CASE("a scrubbed environment carries only allowed and set variables", "[sandbox]") {
  std::vector<std::string> source = {"PATH=/usr/bin:/bin", "OUTPOST_TEST_KEEP=yes", "OUTPOST_TEST_DROP=no",
                                     "HOME=/root", "SSH_AUTH_SOCK=/tmp/agent.sock", "GITHUB_TOKEN=ghp_x"};
  std::vector<char*> from;
  for (auto& s : source) from.push_back(s.data());
  from.push_back(nullptr);

  auto env = scrub_environment({"PATH", "OUTPOST_TEST_KEEP", "HOME", "NOT_SET_ANYWHERE"},
                               {{"HOME", "/work"}, {"LC_ALL", "C"}}, from.data());
  REQUIRE(env.has_value());
  CHECK(*env == std::vector<std::string>{"PATH=/usr/bin:/bin", "OUTPOST_TEST_KEEP=yes", "HOME=/work", "LC_ALL=C"});

  TempDir work;
  SandboxPolicy policy = system_policy();
  policy.read_write = {work.path()};
  Ruleset rs = prepare(policy);
  SpawnSpec spec = sandboxed(rs, {"/usr/bin/env"});
  spec.env = *env;
  Run r = run(spec);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("OUTPOST_TEST_KEEP=yes") && Catch::Contains("HOME=/work"));
  CHECK_THAT(r.out, !Catch::Contains("OUTPOST_TEST_DROP") && !Catch::Contains("SSH_AUTH_SOCK") &&
                        !Catch::Contains("GITHUB_TOKEN"));

  ::setenv("OUTPOST_SANDBOX_TEST_VAR", "from-environ", 1);
  auto from_environ = scrub_environment({"OUTPOST_SANDBOX_TEST_VAR"}, {});
  ::unsetenv("OUTPOST_SANDBOX_TEST_VAR");
  REQUIRE(from_environ.has_value());
  CHECK(*from_environ == std::vector<std::string>{"OUTPOST_SANDBOX_TEST_VAR=from-environ"});
}

TEST_CASE("credential variables are refused even when a manifest allows them", "[sandbox]") {
  for (const char* name : {"SSH_AUTH_SOCK", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS",
                           "AZURE_CLIENT_ID", "GITHUB_TOKEN", "github_token", "OPENAI_API_KEY", "DB_PASSWORD",
                           "DB_PASSWORD_FILE", "CLIENT_SECRET", "SECRET_KEY_BASE", "TOKEN"}) {
    INFO(name);
    CHECK(is_refused_variable(name));
    auto env = scrub_environment({"PATH", name}, {});
    REQUIRE_FALSE(env.has_value());
    CHECK_THAT(env.error().message(), Catch::Contains(name));
  }
  for (const char* name : {"PATH", "LANG", "TERM", "HOME", "KEYBOARD_LAYOUT", "MONKEY", "TOKENIZERS_PARALLELISM"}) {
    INFO(name);
    CHECK_FALSE(is_refused_variable(name));
  }
  CHECK_FALSE(scrub_environment({"A=B"}, {}).has_value());
}

TEST_CASE("spawn failures before execve come back as errors naming what failed", "[sandbox]") {
  SpawnSpec missing;
  missing.argv = {"/nonexistent/outpost-nope"};
  auto r = spawn(missing);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message() == "execve /nonexistent/outpost-nope: No such file or directory");

  SpawnSpec relative;
  relative.argv = {"cat"};
  REQUIRE_FALSE(spawn(relative).has_value());

  SpawnSpec bad_cwd;
  bad_cwd.argv = {"/bin/true"};
  bad_cwd.cwd = "/nonexistent/outpost-cwd";
  auto c = spawn(bad_cwd);
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().message() == "chdir /nonexistent/outpost-cwd: No such file or directory");

  // Landlock denies executing a binary outside the policy: the error says so, no silent 127.
  TempDir work;
  SandboxPolicy only_work;
  only_work.read_write = {work.path()};
  Ruleset rs = prepare(only_work);
  auto denied = spawn(sandboxed(rs, {"/usr/bin/true"}));
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().message() == "execve /usr/bin/true: Permission denied");
}

TEST_CASE("kept fds survive at their number and all others are closed", "[sandbox]") {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  const int kept = ::fcntl(p[1], F_DUPFD_CLOEXEC, 40);
  const int leaked = ::fcntl(p[1], F_DUPFD, 50);  // not CLOEXEC: only close_range stops it
  REQUIRE(kept >= 40);
  REQUIRE(leaked >= 50);
  ::close(p[1]);
  SpawnSpec spec;
  spec.argv = {"/bin/bash", "-c",
               "echo kept >&" + std::to_string(kept) + "; echo leaked >&" + std::to_string(leaked) + " || echo closed"};
  spec.env = kEnv;
  spec.keep_fds = {kept};
  Run r = run(spec);
  ::close(kept);
  ::close(leaked);
  CHECK(r.out == "closed\n");
  CHECK_THAT(r.err, Catch::Contains("Bad file descriptor"));
  char buf[64] = {};
  CHECK(::read(p[0], buf, sizeof buf) == 5);
  CHECK(std::string(buf) == "kept\n");
  ::close(p[0]);
}

TEST_CASE("process_info reads this process and a child whose name holds parentheses", "[sandbox]") {
  auto self = process_info(::getpid());
  REQUIRE(self.has_value());
  CHECK(self->pid == ::getpid());
  CHECK(self->ppid == ::getppid());
  CHECK(self->uid == ::geteuid());
  CHECK(self->gid == ::getegid());
  CHECK(self->state == 'R');
  CHECK(self->start_time > 0);

  // comm is the executable's base name, so a symlink gives the child a hostile one.
  TempDir dir;
  const fs::path odd = dir / "x) S 1 2 (y";
  fs::create_symlink("/usr/bin/sleep", odd);
  SpawnSpec spec;
  spec.argv = {odd.string(), "30"};
  spec.env = kEnv;
  auto child = spawn(spec);
  REQUIRE(child.has_value());
  std::string comm;
  std::getline(std::ifstream(fs::path("/proc") / std::to_string(child->pid) / "comm"), comm);
  CHECK(comm == "x) S 1 2 (y");
  auto info = process_info(child->pid);
  REQUIRE(info.has_value());
  CHECK(info->pid == child->pid);
  CHECK(info->ppid == ::getpid());
  CHECK(info->start_time == child->start_time);
  CHECK(info->start_time >= self->start_time);
  kill_group_and_reap(*child);
  CHECK_FALSE(process_info(child->pid).has_value());
}

TEST_CASE("is_same_or_descendant follows parents and insists on the start time", "[sandbox]") {
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  SpawnSpec spec;
  spec.argv = {"/bin/bash", "-c", "/usr/bin/sleep 30 & echo $!; wait"};
  spec.env = kEnv;
  spec.stdout_fd = out[1];
  auto child = spawn(spec);
  ::close(out[1]);
  REQUIRE(child.has_value());
  char buf[32] = {};
  REQUIRE(::read(out[0], buf, sizeof buf - 1) > 0);
  ::close(out[0]);
  const pid_t grandchild = std::atoi(buf);
  REQUIRE(grandchild > 0);
  auto self = process_info(::getpid());
  REQUIRE(self.has_value());

  CHECK(is_same_or_descendant(child->pid, child->pid, child->start_time));
  CHECK(is_same_or_descendant(grandchild, child->pid, child->start_time));
  CHECK(is_same_or_descendant(grandchild, ::getpid(), self->start_time));
  // A recorded start time that does not match: the pid now belongs to another process.
  CHECK_FALSE(is_same_or_descendant(child->pid, child->pid, child->start_time + 1));
  CHECK_FALSE(is_same_or_descendant(grandchild, child->pid, child->start_time + 1));
  CHECK_FALSE(is_same_or_descendant(::getpid(), child->pid, child->start_time));

  kill_group_and_reap(*child);
  CHECK_FALSE(is_same_or_descendant(child->pid, child->pid, child->start_time));
}

TEST_CASE("a pidfd stays alive until its process is reaped", "[sandbox]") {
  SpawnSpec spec;
  spec.argv = {"/usr/bin/sleep", "30"};
  auto child = spawn(spec);
  REQUIRE(child.has_value());
  CHECK(pidfd_alive(child->pidfd.get()));
  auto again = pidfd_open(child->pid);
  REQUIRE(again.has_value());
  CHECK(pidfd_alive(again->get()));

  REQUIRE(::syscall(SYS_pidfd_send_signal, child->pidfd.get(), SIGKILL, nullptr, 0) == 0);
  REQUIRE(wait_exited(child->pidfd.get(), 5000));
  CHECK(pidfd_alive(child->pidfd.get()));  // a zombie: the pid is still taken
  int status = 0;
  REQUIRE(::waitpid(child->pid, &status, 0) == child->pid);
  CHECK(WIFSIGNALED(status));
  CHECK_FALSE(pidfd_alive(child->pidfd.get()));
  CHECK_FALSE(pidfd_alive(again->get()));
  auto gone = pidfd_open(child->pid);
  REQUIRE_FALSE(gone.has_value());
  CHECK_THAT(gone.error().message(), Catch::Contains("No such process"));
}

TEST_CASE("die_with_parent kills the child when the process that spawned it exits", "[sandbox]") {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  pid_t middle = ::fork();
  REQUIRE(middle >= 0);
  if (middle == 0) {
    SpawnSpec spec;
    spec.argv = {"/usr/bin/sleep", "30"};
    auto c = spawn(spec);
    pid_t pid = c ? c->pid : -1;
    [[maybe_unused]] ssize_t n = ::write(p[1], &pid, sizeof pid);
    ::_exit(0);
  }
  ::close(p[1]);
  pid_t orphan = -1;
  REQUIRE(::read(p[0], &orphan, sizeof orphan) == static_cast<ssize_t>(sizeof orphan));
  ::close(p[0]);
  int status;
  REQUIRE(::waitpid(middle, &status, 0) == middle);
  REQUIRE(orphan > 0);
  auto fd = pidfd_open(orphan);
  if (fd) CHECK(wait_exited(fd->get(), 5000));  // else already dead and reaped by init
}

TEST_CASE("a child starts with no blocked or ignored signals whatever its parent thread had", "[sandbox]") {
  // outpostd ignores SIGPIPE and may block SIGTERM for its signal loop; an agent inheriting
  // either could not be stopped gracefully.
  sigset_t term, old_mask;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, &term, &old_mask) == 0);
  struct sigaction ignore {}, old_pipe {};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(::sigaction(SIGPIPE, &ignore, &old_pipe) == 0);
  SpawnSpec spec;
  spec.argv = {"/usr/bin/sleep", "30"};
  auto child = spawn(spec);
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  REQUIRE(child.has_value());

  std::ifstream status(fs::path("/proc") / std::to_string(child->pid) / "status");
  std::string line, blocked, ignored;
  while (std::getline(status, line)) {
    if (line.rfind("SigBlk:", 0) == 0) blocked = line.substr(line.find_first_not_of(" \t", 7));
    if (line.rfind("SigIgn:", 0) == 0) ignored = line.substr(line.find_first_not_of(" \t", 7));
  }
  CHECK(blocked == "0000000000000000");
  CHECK(ignored == "0000000000000000");
  kill_group_and_reap(*child);
}

// ---- isolation: namespaces, the allowlisted view, ids and the seccomp filter (as root) ----

namespace {

template <class Probe>
int errno_filtered(const SyscallFilter& filter, Probe probe) {
  return errno_confined(nullptr, &filter, probe);
}

int socket_errno(int domain, int type, int protocol) {
  int s = ::socket(domain, type, protocol);
  if (s < 0) return errno;
  ::close(s);
  return 0;
}

SyscallFilter filter_of(bool allow_inet) {
  auto f = SyscallFilter::build(SyscallFilterPolicy{allow_inet});
  if (!f) FAIL(f.error().message());
  return std::move(*f);
}

}  // namespace

TEST_CASE("the syscall filter leaves AF_UNIX and, when asked, plain TCP and UDP", "[sandbox]") {
  const SyscallFilter closed = filter_of(false), tcp = filter_of(true);
  CHECK(errno_filtered(closed, [] { return socket_errno(AF_UNIX, SOCK_STREAM, 0); }) == 0);
  CHECK(errno_filtered(closed, [] { return socket_errno(AF_UNIX, SOCK_DGRAM, 0); }) == 0);
  CHECK(errno_filtered(closed, [] { return socket_errno(AF_INET, SOCK_STREAM, 0); }) == EPERM);
  CHECK(errno_filtered(closed, [] { return socket_errno(AF_INET6, SOCK_STREAM, 0); }) == EPERM);
  CHECK(errno_filtered(tcp, [] { return socket_errno(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); }) == 0);
  CHECK(errno_filtered(tcp, [] { return socket_errno(AF_INET6, SOCK_STREAM, IPPROTO_TCP); }) == 0);
  CHECK(errno_filtered(tcp, [] { return socket_errno(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0); }) == 0);
  CHECK(errno_filtered(tcp, [] { return socket_errno(AF_INET6, SOCK_DGRAM, IPPROTO_UDP); }) == 0);
  CHECK(errno_filtered(closed, [] { return socket_errno(AF_INET, SOCK_DGRAM, 0); }) == EPERM);
  // UDP's own socket options are not for agents (ESP-in-UDP, segmentation offload); the
  // socket's general ones still are.
  CHECK(errno_filtered(tcp, [] {
          int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
          const int v = 1;
          const int rc = ::setsockopt(fd, IPPROTO_UDP, 100 /* UDP_ENCAP */, &v, sizeof v);
          const int err = rc < 0 ? errno : 0;
          ::close(fd);
          return err;
        }) == EPERM);
  CHECK(errno_filtered(tcp, [] {
          int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
          const int v = 1;
          const int rc = ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v);
          const int err = rc < 0 ? errno : 0;
          ::close(fd);
          return err;
        }) == 0);
  // Everything else, even with TCP and UDP allowed: each type only with its own protocol.
  const int refused[][3] = {{AF_INET, SOCK_STREAM, 262 /* IPPROTO_MPTCP */}, {AF_INET6, SOCK_STREAM, 262},
                             {AF_INET, SOCK_STREAM, IPPROTO_UDP}, {AF_INET, SOCK_DGRAM, IPPROTO_TCP},
                             {AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE}, {AF_INET6, SOCK_DGRAM, IPPROTO_SCTP},
                             {AF_INET, SOCK_RAW, IPPROTO_ICMP},
                             {AF_INET, SOCK_DGRAM, IPPROTO_ICMP}, {AF_INET, SOCK_RAW, IPPROTO_RAW},
                             {AF_INET, SOCK_SEQPACKET, 0}, {AF_PACKET, SOCK_RAW, 0}, {AF_NETLINK, SOCK_RAW, 0},
                             {AF_UNSPEC, SOCK_STREAM, 0}};
  for (const auto& s : refused) {
    INFO("socket(" << s[0] << ", " << s[1] << ", " << s[2] << ")");
    CHECK(errno_filtered(tcp, [&] { return socket_errno(s[0], s[1], s[2]); }) == EPERM);
  }
  // A domain hidden in the upper half of the register is refused, not truncated to AF_UNIX.
  CHECK(errno_filtered(closed, [] {
          long s = ::syscall(SYS_socket, 0x100000001L, SOCK_STREAM, 0);
          return s < 0 ? errno : 0;
        }) == EPERM);
}

TEST_CASE("the syscall filter refuses namespaces, mounts, tracing and kernel interfaces with EPERM", "[sandbox]") {
  const SyscallFilter f = filter_of(false);
  auto rc = [](long r) { return r < 0 ? errno : 0; };
  CHECK(errno_filtered(f, [&] { return rc(::unshare(CLONE_NEWUSER)); }) == EPERM);
  CHECK(errno_filtered(f, [&] { return rc(::unshare(CLONE_NEWNET)); }) == EPERM);
  CHECK(errno_filtered(f, [&] {
          long pid = ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, nullptr);
          if (pid == 0) ::_exit(0);
          return rc(pid);
        }) == EPERM);
  CHECK(errno_filtered(f, [&] { return rc(::syscall(SYS_clone3, nullptr, 0)); }) == ENOSYS);  // libc falls back to clone
  CHECK(errno_filtered(f, [&] { return rc(::chroot("/")); }) == EPERM);
  CHECK(errno_filtered(f, [&] { return rc(::syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0)); }) == EPERM);
  CHECK(errno_filtered(f, [&] { return rc(::syscall(SYS_bpf, 0, nullptr, 0)); }) == EPERM);
  CHECK(errno_filtered(f, [&] { return rc(::syscall(SYS_io_uring_setup, 1, nullptr)); }) == EPERM);
  CHECK(errno_filtered(f, [&] { return rc(::syscall(SYS_name_to_handle_at, AT_FDCWD, "/", nullptr, nullptr, 0)); }) == EPERM);
  // Ordinary work goes on: threads (clone without namespace flags), files, pipes.
  CHECK(errno_filtered(f, [] {
          pid_t pid = ::fork();
          if (pid == 0) ::_exit(0);
          int st = 0;
          return pid > 0 && ::waitpid(pid, &st, 0) == pid ? 0 : errno;
        }) == 0);
  CHECK(errno_filtered(f, [] {
          int p[2];
          return ::pipe(p) == 0 ? 0 : errno;
        }) == 0);
}

TEST_CASE("an isolated child has its own uid, no capabilities and sees only its allowlist", "[sandbox]") {
  REQUIRE(::geteuid() == 0);  // isolation needs root's capabilities (the suite runs as root)
  TempDir dir;
  fs::create_directories(dir / "root");
  fs::create_directories(dir / "work");
  ::chown((dir / "work").c_str(), 1900000123, 1900000123);
  write_text(dir / "secret.txt", "not for the child\n");
  IsolationPolicy ip;
  ip.uid = ip.gid = 1900000123;
  ip.root = dir / "root";
  ip.read_only = kSystem;
  ip.read_write = {dir / "work"};
  ip.devices = {"/dev/null"};
  ip.max_processes = 77;
  auto iso = Isolation::prepare(ip);
  REQUIRE(iso.has_value());
  SpawnSpec spec;
  spec.argv = {"/bin/sh", "-c",
               "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); ls -a /; echo devs: $(ls /dev); "
               "cat /proc/self/status; cat " + (dir / "secret.txt").string() + "; cat /etc/shadow; "
               "echo hi > " + (dir / "work" / "out.txt").string() + " && echo wrote; touch /usr/x || echo ro; "
               "grep -c . /etc/hostname >/dev/null && echo etc-readable; echo nproc=$(/bin/bash -c 'ulimit -u')"};
  spec.env = kEnv;
  spec.isolation = &*iso;
  spec.cwd = dir / "work";
  Run r = run(spec);
  INFO(r.out << r.err);
  CHECK(r.out.find("uid=1900000123 gid=1900000123 groups=1900000123\n") == 0);
  // The root holds the allowlist and nothing else.
  std::set<std::string> top = {".", "..", "bin", "dev", "etc", "lib", "lib64", "usr", (*dir.path().relative_path().begin()).string()};
  std::string listing = r.out.substr(r.out.find('\n') + 1);
  listing = listing.substr(0, listing.find("devs:"));
  std::set<std::string> seen;
  for (size_t start = 0, nl; (nl = listing.find('\n', start)) != std::string::npos; start = nl + 1) {
    seen.insert(listing.substr(start, nl - start));
  }
  CHECK(seen == top);
  CHECK_THAT(r.out, Catch::Contains("devs: null\n"));
  CHECK_THAT(r.err, Catch::Contains("/proc/self/status: No such file or directory"));
  CHECK_THAT(r.err, Catch::Contains("secret.txt: No such file or directory"));
  CHECK_THAT(r.err, Catch::Contains("/etc/shadow: Permission denied"));
  CHECK_THAT(r.out, Catch::Contains("wrote"));
  CHECK_THAT(r.out, Catch::Contains("ro"));
  CHECK_THAT(r.out, Catch::Contains("etc-readable"));
  CHECK_THAT(r.out, Catch::Contains("nproc=77"));
  CHECK(*outpost::read_text_file(dir / "work" / "out.txt") == "hi\n");
  CHECK(fs::is_empty(dir / "root"));  // the mounts were the child's alone
}

TEST_CASE("isolation refuses uid 0 and a device named as a path", "[sandbox]") {
  IsolationPolicy ip;
  ip.root = "/tmp";
  auto r = Isolation::prepare(ip);
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message(), Catch::Contains("uid or gid 0"));
  ip.uid = ip.gid = 1900000123;
  ip.read_only = {"/dev/null"};
  auto device = Isolation::prepare(ip);
  REQUIRE_FALSE(device.has_value());
  CHECK_THAT(device.error().message(), Catch::Contains("is a device"));
}

TEST_CASE("the host's IPv4 nameservers are read as glibc reads them", "[sandbox]") {
  CHECK(ipv4_nameservers("nameserver 10.255.255.53\n") == std::vector<std::string>{"10.255.255.53"});
  // Loopback (already the namespace's) and IPv6 left out, comments and options skipped, a
  // trailing comment cut, the fourth nameserver line not read (MAXNS is 3).
  CHECK(ipv4_nameservers("# nameserver 1.1.1.1\nsearch example.org\nnameserver 127.0.0.53\nnameserver ::1\n"
                         "nameserver\t192.168.1.1 # the router\nnameserver 9.9.9.9\n") ==
        std::vector<std::string>{"192.168.1.1"});
  CHECK(ipv4_nameservers("nameservers 8.8.8.8\nnameserver\nnameserver 0.0.0.0\nnameserver 8.8.4.4\r\n") ==
        std::vector<std::string>{"8.8.4.4"});
  // A line that is no address is skipped and does not count (glibc reads three addresses).
  CHECK(ipv4_nameservers("nameserver foo\nnameserver 10.0.0.1\nnameserver ::1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n") ==
        std::vector<std::string>{"10.0.0.1", "10.0.0.2"});
  CHECK(ipv4_nameservers("").empty());
}

TEST_CASE("an agent's network namespace holds its listeners, the DNS stub and the host's nameservers", "[sandbox]") {
  REQUIRE(::geteuid() == 0);  // a network namespace and port 53 (the suite runs as root)
  const TempDir dir;
  const auto conf = dir.path() / "resolv.conf";
  // A comment, an unparsable line (glibc skips it, it does not count to three), loopback.
  write_text(conf, "# nameserver 8.8.8.8\nnameserver 10.255.255.53\nnameserver dns.example\nnameserver 127.0.0.53\n"
                   "nameserver 192.0.2.53\nnameserver 198.51.100.53\n");
  auto net = make_agent_network(3128, 3129, conf);
  REQUIRE(net);
  REQUIRE(net->dns);
  CHECK(net->resolver_error.empty());
  const std::vector<std::string> expected = {"10.255.255.53", "192.0.2.53"};
  CHECK(net->resolver_addresses == expected);
  // From inside: a query to 127.0.0.1:53, 127.0.0.53:53 and each host nameserver reaches the
  // stub's socket (and nothing reaches the host: the namespace has no route).
  std::vector<std::string> targets = {"127.0.0.1", "127.0.0.53"};
  targets.insert(targets.end(), expected.begin(), expected.end());
  targets.push_back("192.0.2.1");  // TEST-NET-1: no route
  std::vector<int> sent;
  std::thread([&] {
    if (::setns(net->ns.get(), CLONE_NEWNET) != 0) return;
    for (const auto& t : targets) {
      int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(53);
      ::inet_pton(AF_INET, t.c_str(), &a.sin_addr);
      sent.push_back(::sendto(fd, t.data(), t.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) >= 0 ? 0 : errno);
      ::close(fd);
    }
  }).join();
  REQUIRE(sent.size() == targets.size());
  std::set<std::string> arrived;
  char buf[64];
  pollfd p{net->dns.get(), POLLIN, 0};
  while (::poll(&p, 1, 1000) > 0) {
    const ssize_t n = ::recv(net->dns.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    arrived.emplace(buf, static_cast<size_t>(n));
  }
  for (size_t i = 0; i + 1 < targets.size(); ++i) {
    INFO(targets[i]);
    CHECK(sent[i] == 0);
    CHECK(arrived.count(targets[i]) == 1);
  }
  CHECK(sent.back() == ENETUNREACH);
  CHECK(arrived.count("192.0.2.1") == 0);
}
