// Launching agent processes under Landlock, and telling processes apart robustly.
//
// outpostd runs each agent (and the MCP servers it brokers) as a child process with a scrubbed
// environment and explicitly arranged fds, optionally confined by a Landlock ruleset that limits
// which files it may read, write and execute, which TCP ports it may connect to, and (Landlock
// ABI 6+) keeps it from signalling or reaching abstract Unix sockets outside its sandbox.
//
// Everything that allocates or opens paths happens in the parent (Ruleset::prepare, and spawn()
// before it forks): the child of a multi-threaded daemon may only make async-signal-safe calls.
//
// A process is identified by (pid, start time) or by a pidfd, never by its pid alone: a pid is
// reused as soon as its process has been reaped.
//
// Thread contract: every free function may be called from several threads at once. A Ruleset is
// immutable once prepared; concurrent spawn() calls may share one.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "outpost/base/result.h"
#include "sandbox/isolation.h"

namespace outpost::sandbox {

// An owned file descriptor, closed when this goes away.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// The Landlock ABI version the running kernel offers; 0 when Landlock is missing or disabled.
// 1: files, 2: +refer, 3: +truncate, 4: +TCP bind/connect, 5: +device ioctl,
// 6: +scoping (abstract Unix sockets, signals), 7: audit-log flags (no new rights).
int landlock_abi();

struct SandboxPolicy {
  std::vector<std::filesystem::path> read_write;  // e.g. the agent's work directory: every right
  std::vector<std::filesystem::path> read_only;   // read and execute; a file may be named too
  std::vector<uint16_t> connect_tcp_ports;        // TCP ports connect() may reach; empty = none
  bool allow_bind_tcp = false;
};

// A Landlock ruleset prepared in the parent. It handles every access right the kernel's ABI
// knows, so whatever the policy does not grant is denied:
//   - files: beneath read_write everything, beneath read_only read + execute; all else denied;
//   - TCP (ABI 4+): connect only to connect_tcp_ports, bind only with allow_bind_tcp. Below
//     ABI 4 the kernel cannot restrict TCP at all; UDP is never restricted by Landlock;
//   - scoping (ABI 6+): no signals to, and no abstract Unix sockets of, processes outside the
//     sandbox. Connecting to a *pathname* Unix socket (outpostd's) stays allowed.
class Ruleset {
 public:
  // Paths that do not exist are skipped and listed in skipped(). Fails, naming the syscall and
  // errno, when Landlock is unavailable or a path cannot be added.
  static Result<Ruleset> prepare(const SandboxPolicy& policy);

  Ruleset(Ruleset&&) = default;
  Ruleset& operator=(Ruleset&&) = default;
  Ruleset(const Ruleset&) = delete;
  Ruleset& operator=(const Ruleset&) = delete;

  int fd() const { return fd_.get(); }
  int abi() const { return abi_; }
  const std::vector<std::filesystem::path>& skipped() const { return skipped_; }

 private:
  Ruleset(UniqueFd fd, int abi) : fd_(std::move(fd)), abi_(abi) {}

  UniqueFd fd_;
  int abi_;
  std::vector<std::filesystem::path> skipped_;
};

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0]: an absolute path, run with execve (no PATH search)
  std::vector<std::string> env;   // the complete environment, "K=V"
  std::filesystem::path cwd;      // empty: the parent's
  int stdin_fd = -1;              // -1: /dev/null. Borrowed; the caller still closes its own.
  int stdout_fd = -1;
  int stderr_fd = -1;
  std::vector<int> keep_fds;      // (>= 3) survive at the same number; every other fd is closed
  const Ruleset* sandbox = nullptr;  // null: no Landlock. Must stay live during spawn() only.
  // null: the parent's ids, namespaces and system calls. Else the child gets new namespaces,
  // the Isolation's filesystem view, ids with no capabilities and its seccomp filter
  // (isolation.h). Must stay live during spawn() only.
  const Isolation* isolation = nullptr;
  bool new_session = true;        // setsid(): own session and process group
  // setgroups(0): no supplementary groups (outpostd's `tss` opens /dev/tpmrm0). Refused only
  // when the parent has groups to drop and may not (no CAP_SETGID).
  bool clear_groups = false;
  // PR_SET_PDEATHSIG SIGKILL. Note the kernel's semantics: the signal fires when the *thread*
  // that called spawn() exits, not only the process. Spawn from a thread that lives as long as
  // the child should (e.g. the daemon's main loop), or leave this off.
  bool die_with_parent = true;
};

struct Child {
  pid_t pid = -1;
  UniqueFd pidfd;           // taken atomically with the fork (CLONE_PIDFD)
  uint64_t start_time = 0;  // field 22 of /proc/PID/stat, in clock ticks since boot
};

// fork+exec. In the child: default signal dispositions, setsid, the isolation (namespaces,
// mounts, ids, capabilities), parent-death signal, cwd, PR_SET_NO_NEW_PRIVS +
// landlock_restrict_self, the seccomp filter, fds, an empty signal mask, execve. A failure
// before execve comes back as this function's error ("execve /bin/nope: No such file or
// directory"); the failed child has then been reaped. On success the caller reaps the child.
Result<Child> spawn(const SpawnSpec& spec);

// True for names an agent must never inherit from the daemon: SSH_AUTH_SOCK, AWS_*, GOOGLE_*,
// AZURE_*, and *_TOKEN, *SECRET*, *PASSWORD*, *_KEY at a word boundary (GITHUB_TOKEN,
// SECRET_KEY_BASE, DB_PASSWORD_FILE, OPENAI_API_KEY), case-insensitively.
bool is_refused_variable(std::string_view name);

// A complete environment: the variables named in `allow` copied from `from` (default: environ),
// then `set` applied on top (replacing copied ones). A refused name in `allow` is an error naming
// it: a manifest must not be able to leak the daemon's credentials. `set` is the caller's own
// values and is not filtered.
Result<std::vector<std::string>> scrub_environment(
    const std::vector<std::string>& allow, const std::vector<std::pair<std::string, std::string>>& set,
    char** from = nullptr);

struct ProcessInfo {
  pid_t pid = -1;
  pid_t ppid = -1;
  char state = '?';         // R, S, D, Z (zombie), ...
  uid_t uid = 0;            // effective, as SO_PEERCRED reports it
  gid_t gid = 0;
  uint64_t start_time = 0;  // field 22 of /proc/PID/stat
};

// From /proc/PID/stat and /proc/PID/status, both read through one /proc/PID handle, so they
// describe the same process even if the pid is reused meanwhile.
Result<ProcessInfo> process_info(pid_t pid);

// True when `pid` is `ancestor` (same pid and start time) or a descendant of it, following
// parent pids at most 64 levels. Each parent must have started no later than its child, so a
// parent pid reused along the way breaks the chain instead of extending it.
bool is_same_or_descendant(pid_t pid, pid_t ancestor, uint64_t ancestor_start_time);

// SIGKILL to every process running as `uid` (never 0), from a short-lived child that takes
// that uid with no capabilities and signals all it may (kill(-1)). An agent's uid is its own:
// this ends whatever it left behind (double-forked or setsid'ed descendants) before it is
// launched again, stopped or revoked.
Result<void> kill_all_of_uid(uid_t uid);

Result<UniqueFd> pidfd_open(pid_t pid);
// True until the process behind `pidfd` has been reaped (a zombie still counts: its pid cannot
// be reused yet).
bool pidfd_alive(int pidfd);
// Sends `sig` to the process behind `pidfd` (pidfd_send_signal); false with errno set when it
// could not, e.g. ESRCH once the process has been reaped.
bool pidfd_signal(int pidfd, int sig);

}  // namespace outpost::sandbox
