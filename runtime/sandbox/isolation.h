// Isolation of an agent beyond Landlock: its own uid and gid with no capabilities, its own
// mount, network, IPC, UTS and cgroup namespaces, and a seccomp filter (syscall_filter.h).
//
// What the agent sees of the filesystem is an allowlist: a read-only tmpfs root holding bind
// mounts of exactly the paths it may use (at their own paths), so nothing else exists for it,
// neither files (ENOENT, not EACCES: no probing for what is there) nor pathname sockets, nor
// devices such as /dev/tpm*. Its network namespace holds loopback alone: no road to the host's
// ports (swtpm, the hub, anything listening on 127.0.0.1 outside).
//
// Everything that allocates or resolves paths happens in prepare(), in the parent; the child
// only walks the prepared plan with async-signal-safe calls (enter_isolation).
//
// Needs, in the parent: CAP_SYS_ADMIN (namespaces, mounts), CAP_SETUID and CAP_SETGID (the
// agent's ids), CAP_SETPCAP (clearing the bounding set), CAP_NET_ADMIN (loopback up);
// missing_privileges() names what is lacking so callers can fail closed with a reason.
//
// Thread contract: immutable once prepared; concurrent spawns may share one.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "outpost/base/result.h"
#include "sandbox/syscall_filter.h"

namespace outpost::sandbox {

struct IsolationPolicy {
  uid_t uid = 0;  // the agent's own ids; 0 is refused
  gid_t gid = 0;
  // An empty directory of the parent's where the sandbox's root tmpfs is mounted (inside the
  // child's mount namespace only; on the host it stays empty).
  std::filesystem::path root;
  std::vector<std::filesystem::path> read_only;   // bind-mounted read-only, nosuid, nodev
  std::vector<std::filesystem::path> read_write;  // bind-mounted read-write, nosuid, nodev
  std::vector<std::filesystem::path> devices;     // character devices bound as they are (/dev/null)
  bool loopback = true;                           // bring up lo in the new network namespace
  // >= 0: join this network namespace (sandbox/network.h: the agent's, with the egress
  // proxy's listener in it) instead of a new, empty one. Borrowed; open until spawn() returns.
  int network_namespace = -1;
  // RLIMIT_NPROC for the agent's uid: its processes and threads together, so a fork bomb stops
  // there instead of at the unit's task limit, which outpostd shares. 0: no limit set.
  uint64_t max_processes = 1024;
  SyscallFilterPolicy syscalls;
};

class Isolation {
 public:
  // Paths that do not exist are skipped (listed in skipped()), as Ruleset::prepare does.
  static Result<Isolation> prepare(const IsolationPolicy& policy);

  Isolation(Isolation&&) = default;
  Isolation& operator=(Isolation&&) = delete;
  Isolation(const Isolation&) = delete;
  Isolation& operator=(const Isolation&) = delete;

  const std::vector<std::filesystem::path>& skipped() const { return skipped_; }

  // One step of the child's plan: `a` and `b` point into strings_.
  enum class Op : int { mkdir, mkfile, symlink, bind, bind_device, read_only };
  struct Step {
    Op op;
    const char* a;  // the path inside the new root (prefixed with the root), or a symlink's target
    const char* b;  // the source path on the host, or the symlink's path
    bool recursive_read_only;
    // bind: the source's device and inode as prepare() found them (reached with no symlink on
    // the way). The child checks the mount against them: a path swapped since cannot
    // redirect a bind to something else.
    dev_t dev;
    ino_t ino;
  };

  // What the child needs; read by enter_isolation only.
  uid_t uid() const { return uid_; }
  gid_t gid() const { return gid_; }
  const char* root() const { return root_.c_str(); }
  const std::vector<Step>& steps() const { return steps_; }
  const SyscallFilter& filter() const { return filter_; }
  bool loopback() const { return loopback_; }
  int network_namespace() const { return network_namespace_; }
  // The flags the child is cloned with: isolation_clone_flags(), without CLONE_NEWNET when it
  // joins a namespace made for it.
  uint64_t clone_flags() const;
  uint64_t max_processes() const { return max_processes_; }
  int last_cap() const { return last_cap_; }

 private:
  explicit Isolation(SyscallFilter filter) : filter_(std::move(filter)) {}

  uid_t uid_ = 0;
  gid_t gid_ = 0;
  std::string root_;
  struct PlannedStep {
    Op op;
    std::string a, b;
    bool recursive = false;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  std::vector<PlannedStep> planned_;
  std::vector<Step> steps_;  // points into planned_

  SyscallFilter filter_;
  bool loopback_ = true;
  int network_namespace_ = -1;
  uint64_t max_processes_ = 1024;
  int last_cap_ = 40;
  std::vector<std::filesystem::path> skipped_;
};

// The clone flags an isolated child is created with.
uint64_t isolation_clone_flags();

// The privileges this process lacks for Isolation ("CAP_SYS_ADMIN, CAP_SETUID"), or "" when it
// has them all. Also reports a kernel without seccomp filters or namespaces.
std::string missing_privileges();

namespace detail {
// In the child, after clone with isolation_clone_flags(): mounts and pivots into the new root,
// brings up loopback, drops to the agent's ids with no capabilities and sets no_new_privs. The
// seccomp filter is installed separately (install_syscall_filter), last before execve. Returns
// 0, or the number of the failing sub-step (describe_isolation_step) with errno set.
int enter_isolation(const Isolation& iso) noexcept;
int install_syscall_filter(const Isolation& iso) noexcept;
const char* describe_isolation_step(int step);
}  // namespace detail

}  // namespace outpost::sandbox
