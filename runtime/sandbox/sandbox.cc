#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/sched.h>  // struct clone_args, CLONE_PIDFD
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>

#include "outpost/base/errors.h"

extern char** environ;

// The build headers are Linux 6.1 (Landlock ABI 2); the rights added since are fixed kernel ABI.
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif
#ifndef LANDLOCK_ACCESS_NET_BIND_TCP
#define LANDLOCK_ACCESS_NET_BIND_TCP (1ULL << 0)
#endif
#ifndef LANDLOCK_ACCESS_NET_CONNECT_TCP
#define LANDLOCK_ACCESS_NET_CONNECT_TCP (1ULL << 1)
#endif
#ifndef LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
#define LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#endif
#ifndef LANDLOCK_SCOPE_SIGNAL
#define LANDLOCK_SCOPE_SIGNAL (1ULL << 1)
#endif

namespace outpost::sandbox {
namespace {

namespace fs = std::filesystem;

// The kernel's struct landlock_ruleset_attr and landlock_net_port_attr as of ABI 6, and
// LANDLOCK_RULE_NET_PORT (an enum member, so #ifndef cannot guard it). Own names, so newer
// headers do not clash. A kernel older than a field accepts it while it is zero.
struct RulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};
struct NetPortAttr {
  uint64_t allowed_access;
  uint64_t port;
};
constexpr int kRuleNetPort = 2;

// The only rights a rule on a non-directory may carry (the kernel refuses others with EINVAL).
constexpr uint64_t kFileRights = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |
                                 LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_TRUNCATE |
                                 LANDLOCK_ACCESS_FS_IOCTL_DEV;
constexpr uint64_t kReadOnlyRights =
    LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;

// Every filesystem right `abi` knows: handling them all makes everything not granted denied.
uint64_t fs_rights(int abi) {
  uint64_t rights = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1;  // ABI 1: bits 0..12
  if (abi >= 2) rights |= LANDLOCK_ACCESS_FS_REFER;
  if (abi >= 3) rights |= LANDLOCK_ACCESS_FS_TRUNCATE;
  if (abi >= 5) rights |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
  return rights;
}

long landlock_version() {
  return ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
}

// Moves `fd` to 3 or above (closing the original), so the child's dup2 onto 0..2 cannot
// clobber it. Only a daemon that closed its own stdio ever gets a low fd here.
Result<UniqueFd> above_stdio(UniqueFd fd) {
  if (fd.get() >= 3) return fd;
  int moved = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (moved < 0) return fail(errno_error("fcntl F_DUPFD_CLOEXEC", errno));
  return UniqueFd(moved);
}

Result<void> add_path_rule(int ruleset, const fs::path& path, uint64_t rights,
                           std::vector<fs::path>& skipped) {
  UniqueFd fd(::open(path.c_str(), O_PATH | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) {
      skipped.push_back(path);
      return ok();
    }
    return fail(errno_error("open " + path.string(), errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail(errno_error("fstat " + path.string(), errno));
  if (!S_ISDIR(st.st_mode)) rights &= kFileRights;
  landlock_path_beneath_attr attr{};
  attr.allowed_access = rights;
  attr.parent_fd = fd.get();
  if (::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &attr, 0) != 0) {
    return fail(errno_error("landlock_add_rule " + path.string(), errno));
  }
  return ok();
}

// ---- spawn ----

// What the child was doing when it failed; sent to the parent with errno before it exits.
enum class Step : int { setsid, ambient, groups, isolate, pdeathsig, chdir, no_new_privs, restrict_self, dup_stdio, close_fds, keep_fds, execve };
struct ChildReport {
  Step step;
  int err;
  int detail;  // Step::isolate: which of its sub-steps
};

std::string describe(const ChildReport& report, const SpawnSpec& spec) {
  switch (report.step) {
    case Step::setsid: return "setsid";
    case Step::ambient: return "prctl PR_CAP_AMBIENT_CLEAR_ALL";
    case Step::groups: return "setgroups";
    case Step::isolate: return detail::describe_isolation_step(report.detail);
    case Step::pdeathsig: return "prctl PR_SET_PDEATHSIG";
    case Step::chdir: return "chdir " + spec.cwd.string();
    case Step::no_new_privs: return "prctl PR_SET_NO_NEW_PRIVS";
    case Step::restrict_self: return "landlock_restrict_self";
    case Step::dup_stdio: return "dup2 stdio";
    case Step::close_fds: return "close_range";
    case Step::keep_fds: return "fcntl keep_fds";
    case Step::execve: return "execve " + spec.argv[0];
  }
  return "spawn";
}

// Everything the child needs, resolved in the parent so the child only reads memory.
struct ChildPlan {
  char* const* argv;
  char* const* envp;
  const char* cwd;  // null: stay
  int stdio[3];
  const std::vector<int>* survivors;  // sorted: keep_fds and the report pipe
  const std::vector<int>* keep_fds;
  int report_fd;
  int ruleset_fd;  // -1: no Landlock
  const Isolation* isolation;
  bool new_session;
  bool clear_groups;
  bool die_with_parent;
  pid_t parent;
};

[[noreturn]] void child_fail(int report_fd, Step step, int detail = 0) {
  ChildReport report{step, errno, detail};
  // A 12-byte write to an empty pipe is atomic; if it fails the parent sees EOF and a child
  // that exits 127, the best that is left.
  [[maybe_unused]] ssize_t n = ::write(report_fd, &report, sizeof report);
  ::_exit(127);
}

// The child between clone and execve: async-signal-safe calls only, no allocation.
[[noreturn]] void run_child(const ChildPlan& p) {
  // The daemon's handlers must not run here, and an ignored signal (SIGPIPE) would survive
  // execve. All signals are still blocked from before the clone.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);  // KILL/STOP: EINVAL, fine

  if (p.new_session && ::setsid() < 0) child_fail(p.report_fd, Step::setsid);
  // The capabilities outpostd's unit grants it as ambient ones (to build sandboxes) never pass
  // on through execve to anything it launches. EINVAL: a kernel without ambient capabilities.
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) child_fail(p.report_fd, Step::ambient);
  if (p.clear_groups && ::syscall(SYS_setgroups, 0, nullptr) != 0 &&
      (errno != EPERM || ::syscall(SYS_getgroups, 0, nullptr) != 0)) {
    child_fail(p.report_fd, Step::groups);
  }
  if (p.isolation) {
    if (int sub = detail::enter_isolation(*p.isolation); sub != 0) child_fail(p.report_fd, Step::isolate, sub);
  }
  // After the id change, which clears it.
  if (p.die_with_parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(p.report_fd, Step::pdeathsig);
    if (::getppid() != p.parent) ::_exit(127);  // the parent died before the signal was armed
  }
  if (p.cwd && ::chdir(p.cwd) != 0) child_fail(p.report_fd, Step::chdir);
  if (p.ruleset_fd >= 0 || p.isolation) {
    // Required for an unprivileged landlock_restrict_self and for seccomp, and keeps setuid
    // binaries from regaining what the sandbox takes away.
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(p.report_fd, Step::no_new_privs);
  }
  if (p.ruleset_fd >= 0 && ::syscall(SYS_landlock_restrict_self, p.ruleset_fd, 0) != 0) {
    child_fail(p.report_fd, Step::restrict_self);
  }
  // Last: from here on only what the filter allows (dup2, fcntl, close_range, execve) runs.
  if (p.isolation) {
    if (int sub = detail::install_syscall_filter(*p.isolation); sub != 0) child_fail(p.report_fd, Step::isolate, sub);
  }

  // Sources may themselves be 0..2 (even crosswise), so copy all three out of the way first.
  int high[3];
  for (int i = 0; i < 3; ++i) {
    high[i] = ::fcntl(p.stdio[i], F_DUPFD_CLOEXEC, 3);
    if (high[i] < 0) child_fail(p.report_fd, Step::dup_stdio);
  }
  for (int i = 0; i < 3; ++i) {
    if (::dup2(high[i], i) < 0) child_fail(p.report_fd, Step::dup_stdio);  // clears CLOEXEC
  }
  // Close every fd from 3 up except the survivors: the gaps between them, then the rest.
  unsigned next = 3;
  for (int fd : *p.survivors) {
    const auto keep = static_cast<unsigned>(fd);
    if (keep > next && ::close_range(next, keep - 1, 0) != 0) child_fail(p.report_fd, Step::close_fds);
    next = keep + 1;
  }
  if (::close_range(next, ~0U, 0) != 0) child_fail(p.report_fd, Step::close_fds);
  for (int fd : *p.keep_fds) {
    if (::fcntl(fd, F_SETFD, 0) != 0) child_fail(p.report_fd, Step::keep_fds);
  }

  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);  // a mask the daemon's thread had is not the agent's
  ::execve(p.argv[0], p.argv, p.envp);
  child_fail(p.report_fd, Step::execve);
}

bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

void kill_and_reap(const Child& child) {
  ::syscall(SYS_pidfd_send_signal, child.pidfd.get(), SIGKILL, nullptr, 0);
  int status;
  while (::waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
}

Result<std::string> read_proc_file(int dirfd, const char* name) {
  UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  if (!fd) return fail(errno_error(std::string("open ") + name, errno));
  std::string text;
  char buf[4096];
  while (text.size() < (64u << 10)) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(errno_error(std::string("read ") + name, errno));
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

// The `index`th whitespace-separated number after `key` ("Uid:\t0\t1000\t...").
template <class T>
bool status_field(std::string_view status, std::string_view key, int index, T& out) {
  size_t pos = status.find(key);
  if (pos == std::string_view::npos) return false;
  std::string_view line = status.substr(pos + key.size());
  line = line.substr(0, line.find('\n'));
  for (int i = 0;; ++i) {
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string_view::npos) return false;
    line.remove_prefix(start);
    size_t end = std::min(line.find_first_of(" \t"), line.size());
    if (i == index) return parse_number(line.substr(0, end), out);
    line.remove_prefix(end);
  }
}

}  // namespace

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int landlock_abi() {
  long v = landlock_version();
  return v < 0 ? 0 : static_cast<int>(v);
}

Result<Ruleset> Ruleset::prepare(const SandboxPolicy& policy) {
  long version = landlock_version();
  if (version < 0) {
    return fail(errno_error("landlock_create_ruleset (Landlock is not available in this kernel)", errno));
  }
  const int abi = static_cast<int>(version);
  const uint64_t all_fs = fs_rights(abi);

  RulesetAttr attr{};
  attr.handled_access_fs = all_fs;
  if (abi >= 4) {
    attr.handled_access_net = LANDLOCK_ACCESS_NET_CONNECT_TCP;
    if (!policy.allow_bind_tcp) attr.handled_access_net |= LANDLOCK_ACCESS_NET_BIND_TCP;
  }
  // Pathname Unix sockets are not affected by either scope: the agent still reaches outpostd.
  if (abi >= 6) attr.scoped = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL;
  UniqueFd fd(static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0)));
  if (!fd) return fail(errno_error("landlock_create_ruleset", errno));
  OUTPOST_TRY(fd, above_stdio(std::move(fd)));

  Ruleset rs(std::move(fd), abi);
  for (const auto& p : policy.read_write) OUTPOST_TRY_VOID(add_path_rule(rs.fd(), p, all_fs, rs.skipped_));
  for (const auto& p : policy.read_only) {
    OUTPOST_TRY_VOID(add_path_rule(rs.fd(), p, kReadOnlyRights, rs.skipped_));
  }
  if (abi >= 4) {
    for (uint16_t port : policy.connect_tcp_ports) {
      NetPortAttr net{LANDLOCK_ACCESS_NET_CONNECT_TCP, port};
      if (::syscall(SYS_landlock_add_rule, rs.fd(), kRuleNetPort, &net, 0) != 0) {
        return fail(errno_error("landlock_add_rule tcp port " + std::to_string(port), errno));
      }
    }
  }
  return rs;
}

Result<Child> spawn(const SpawnSpec& spec) {
  if (spec.argv.empty() || !fs::path(spec.argv[0]).is_absolute()) {
    return fail(errc::invalid_argument, "spawn: argv[0] must be an absolute path");
  }
  for (const auto& e : spec.env) {
    if (e.find('=') == std::string::npos) return fail(errc::invalid_argument, "spawn: env entry without '='");
  }
  for (int fd : spec.keep_fds) {
    if (fd < 3 || !fd_is_open(fd)) {
      return fail(errc::invalid_argument, "spawn: keep_fds " + std::to_string(fd) + " is not an open fd >= 3");
    }
  }
  for (int fd : {spec.stdin_fd, spec.stdout_fd, spec.stderr_fd}) {
    if (fd >= 0 && !fd_is_open(fd)) return fail(errc::invalid_argument, "spawn: stdio fd " + std::to_string(fd) + " is not open");
  }

  // execve takes char* const[]; it does not write through them.
  std::vector<char*> argv, envp;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  argv.push_back(nullptr);
  envp.push_back(nullptr);

  UniqueFd devnull;
  if (spec.stdin_fd < 0 || spec.stdout_fd < 0 || spec.stderr_fd < 0) {
    devnull.reset(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!devnull) return fail(errno_error("open /dev/null", errno));
  }
  // CLOEXEC: a successful execve closes the write end, which is how the parent learns of it.
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return fail(errno_error("pipe2", errno));
  UniqueFd report_read(pipefd[0]);
  OUTPOST_TRY(UniqueFd report_write, above_stdio(UniqueFd(pipefd[1])));

  std::vector<int> survivors = spec.keep_fds;
  survivors.push_back(report_write.get());
  std::sort(survivors.begin(), survivors.end());
  survivors.erase(std::unique(survivors.begin(), survivors.end()), survivors.end());

  const ChildPlan plan{
      argv.data(),
      envp.data(),
      spec.cwd.empty() ? nullptr : spec.cwd.c_str(),
      {spec.stdin_fd >= 0 ? spec.stdin_fd : devnull.get(), spec.stdout_fd >= 0 ? spec.stdout_fd : devnull.get(),
       spec.stderr_fd >= 0 ? spec.stderr_fd : devnull.get()},
      &survivors,
      &spec.keep_fds,
      report_write.get(),
      spec.sandbox ? spec.sandbox->fd() : -1,
      spec.isolation,
      spec.new_session,
      spec.clear_groups,
      spec.die_with_parent,
      ::getpid(),
  };
  if (spec.sandbox && plan.ruleset_fd < 0) return fail(errc::invalid_argument, "spawn: empty Ruleset");

  // clone3 rather than fork: CLONE_PIDFD hands us the pidfd atomically, before anyone could
  // reap the child and free its pid. Without CLONE_VM the child has its own copy of memory,
  // exactly as after fork (whose atfork handlers we neither need nor want). Signals stay blocked
  // until the child has reset their handlers.
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_PIDFD | (spec.isolation ? spec.isolation->clone_flags() : 0);
  args.pidfd = reinterpret_cast<uintptr_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  long pid = ::syscall(SYS_clone3, &args, sizeof args);
  if (pid == 0) run_child(plan);
  if (pid < 0 && errno == ENOSYS) {
    // systemd's RestrictNamespaces= answers clone3 with ENOSYS (its flags are out of a
    // filter's reach); clone takes the same flags in a register, CLONE_PIDFD's fd through the
    // parent-tid pointer. No new stack: the child runs on its copy of ours, as after fork.
    pid = ::syscall(SYS_clone, static_cast<unsigned long>(args.flags) | SIGCHLD, nullptr, &pidfd, nullptr, nullptr);
    if (pid == 0) run_child(plan);
  }
  const int clone_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return fail(errno_error("clone3", clone_errno));

  Child child;
  child.pid = static_cast<pid_t>(pid);
  child.pidfd.reset(pidfd);
  report_write.reset();

  ChildReport report{};
  ssize_t n;
  do {
    n = ::read(report_read.get(), &report, sizeof report);
  } while (n < 0 && errno == EINTR);
  if (n != 0) {
    const int read_errno = errno;
    kill_and_reap(child);
    if (n == static_cast<ssize_t>(sizeof report)) return fail(errno_error(describe(report, spec), report.err));
    return fail(errno_error("spawn: read the child's report", n < 0 ? read_errno : EPROTO));
  }

  // The child is ours and unreaped (a zombie at worst), so its /proc entry is this process;
  // the pidfd check afterwards proves nobody reaped it while we read.
  auto info = process_info(child.pid);
  if (!info || !pidfd_alive(child.pidfd.get())) {
    kill_and_reap(child);
    return fail(info ? Error(make_error_code(errc::not_found), "spawn: child reaped early") : info.error().wrap("spawn"));
  }
  child.start_time = info->start_time;
  return child;
}

bool is_refused_variable(std::string_view name) {
  std::string up(name);
  for (char& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (up == "SSH_AUTH_SOCK" || up.starts_with("AWS_") || up.starts_with("GOOGLE_") || up.starts_with("AZURE_")) {
    return true;
  }
  // A leading '_' makes the word-boundary patterns match at the start of the name too.
  const std::string word = "_" + up;
  return word.ends_with("_TOKEN") || word.ends_with("_KEY") || word.find("_SECRET") != std::string::npos ||
         word.find("_PASSWORD") != std::string::npos;
}

Result<std::vector<std::string>> scrub_environment(const std::vector<std::string>& allow,
                                                   const std::vector<std::pair<std::string, std::string>>& set,
                                                   char** from) {
  auto valid_name = [](std::string_view n) {
    return !n.empty() && n.find('=') == std::string_view::npos && n.find('\0') == std::string_view::npos;
  };
  for (const auto& name : allow) {
    if (!valid_name(name)) return fail(errc::invalid_argument, "environment: invalid variable name '" + name + "'");
    if (is_refused_variable(name)) {
      return fail(errc::invalid_argument, "environment: " + name + " may not be passed to an agent");
    }
  }
  std::vector<std::pair<std::string, std::string>> vars;
  for (char** e = from ? from : environ; e && *e; ++e) {
    std::string_view entry(*e);
    size_t eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = entry.substr(0, eq);
    if (std::find(allow.begin(), allow.end(), name) == allow.end()) continue;
    if (std::any_of(vars.begin(), vars.end(), [&](const auto& v) { return v.first == name; })) continue;
    vars.emplace_back(std::string(name), std::string(entry.substr(eq + 1)));
  }
  for (const auto& kv : set) {  // not a structured binding: clang 14 cannot capture one
    const std::string& name = kv.first;
    const std::string& value = kv.second;
    if (!valid_name(name) || value.find('\0') != std::string::npos) {
      return fail(errc::invalid_argument, "environment: invalid variable '" + name + "'");
    }
    auto it = std::find_if(vars.begin(), vars.end(), [&](const auto& v) { return v.first == name; });
    if (it != vars.end()) {
      it->second = value;
    } else {
      vars.emplace_back(name, value);
    }
  }
  std::vector<std::string> env;
  env.reserve(vars.size());
  for (const auto& [name, value] : vars) env.push_back(name + "=" + value);
  return env;
}

Result<ProcessInfo> process_info(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid);
  if (pid <= 0) return fail(errc::invalid_argument, dir + ": not a process id");
  // Files opened through this handle belong to the process it was opened for, or fail once
  // that process is gone, even if the pid has been reused by then.
  UniqueFd dirfd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) return fail(errno_error("open " + dir, errno));
  OUTPOST_TRY(std::string stat, read_proc_file(dirfd.get(), "stat"));
  OUTPOST_TRY(std::string status, read_proc_file(dirfd.get(), "status"));
  auto corrupt = [&](const char* what) { return fail(errc::corrupt, dir + ": cannot parse " + what); };

  // "pid (comm) state ppid ...": comm may hold spaces and ')', so the fields start after the
  // last ')'. There, index 0 is field 3 (state) and index 19 field 22 (starttime).
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 > stat.size()) return corrupt("stat");
  std::vector<std::string_view> fields;
  std::string_view rest = std::string_view(stat).substr(paren + 2);
  while (!rest.empty() && fields.size() < 20) {
    size_t end = std::min(rest.find(' '), rest.size());
    fields.push_back(rest.substr(0, end));
    rest.remove_prefix(std::min(end + 1, rest.size()));
  }
  ProcessInfo info;
  if (fields.size() < 20 || fields[0].size() != 1 || !parse_number(fields[1], info.ppid) ||
      !parse_number(fields[19], info.start_time) ||
      !parse_number(std::string_view(stat).substr(0, stat.find(' ')), info.pid) || info.pid != pid) {
    return corrupt("stat");
  }
  info.state = fields[0][0];
  // The kernel escapes newlines in the Name: line, so "\nUid:" cannot be forged by a comm.
  if (!status_field(status, "\nUid:", 1, info.uid) || !status_field(status, "\nGid:", 1, info.gid)) {
    return corrupt("status");
  }
  return info;
}

bool is_same_or_descendant(pid_t pid, pid_t ancestor, uint64_t ancestor_start_time) {
  uint64_t child_start = UINT64_MAX;
  for (int depth = 0; depth < 64 && pid > 0; ++depth) {
    auto info = process_info(pid);
    if (!info || info->start_time > child_start) return false;
    if (pid == ancestor) return info->start_time == ancestor_start_time;
    child_start = info->start_time;
    pid = info->ppid;
  }
  return false;
}

Result<void> kill_all_of_uid(uid_t uid) {
  if (uid == 0) return fail(errc::invalid_argument, "kill_all_of_uid: never uid 0");
  const pid_t pid = ::fork();
  if (pid < 0) return fail(errno_error("fork", errno));
  if (pid == 0) {
    // System calls only (the parent has other threads). The capabilities go before the
    // signal: with CAP_KILL kept, kill(-1) would reach every process on the node.
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct none[2] = {};
    if (::syscall(SYS_setgroups, 0, nullptr) != 0 && ::syscall(SYS_getgroups, 0, nullptr) != 0) ::_exit(2);
    if (::syscall(SYS_setresgid, uid, uid, uid) != 0 || ::syscall(SYS_setresuid, uid, uid, uid) != 0) ::_exit(2);
    if (::syscall(SYS_capset, &header, none) != 0) ::_exit(3);
    __user_cap_data_struct held[2] = {};
    if (::syscall(SYS_capget, &header, held) != 0 || held[0].effective || held[1].effective) ::_exit(3);
    // ESRCH: nothing of this uid was left.
    ::_exit(::kill(-1, SIGKILL) == 0 || errno == ESRCH ? 0 : 4);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return fail(errc::io, "kill_all_of_uid " + std::to_string(uid) + ": the helper exited with status " + std::to_string(status));
  }
  return ok();
}

Result<UniqueFd> pidfd_open(pid_t pid) {
  long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return fail(errno_error("pidfd_open " + std::to_string(pid), errno));
  return UniqueFd(static_cast<int>(fd));
}

bool pidfd_signal(int pidfd, int sig) { return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0; }

bool pidfd_alive(int pidfd) {
  // Signal 0 checks without sending; EPERM still means there is a process to refuse us.
  return pidfd_signal(pidfd, 0) || errno == EPERM;
}

}  // namespace outpost::sandbox
