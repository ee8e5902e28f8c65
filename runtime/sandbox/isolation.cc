#include "sandbox/isolation.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::sandbox {
namespace {

namespace fs = std::filesystem;

// The kernel's struct mount_attr (Linux 5.12); own name so <linux/mount.h>, which clashes with
// glibc's <sys/mount.h>, is not needed.
struct MountAttr {
  uint64_t attr_set;
  uint64_t attr_clr;
  uint64_t propagation;
  uint64_t userns_fd;
};
constexpr uint64_t kAttrRdonly = 0x1, kAttrNosuid = 0x2, kAttrNodev = 0x4, kAttrNoexec = 0x8;
constexpr unsigned kAtRecursive = 0x8000;

int set_mount_attr(const char* path, uint64_t set, bool recursive) {
  MountAttr attr{set, 0, 0, 0};
  return static_cast<int>(::syscall(SYS_mount_setattr, AT_FDCWD, path, recursive ? kAtRecursive : 0u, &attr, sizeof attr));
}

enum class Kind { read_only, read_write, device };

struct Bind {
  fs::path target;  // canonical: no symlink in it
  Kind kind;
  bool is_dir;
};

// True when `p` is `base` or lies beneath it.
bool beneath(const fs::path& p, const fs::path& base) {
  auto [b, pi] = std::mismatch(base.begin(), base.end(), p.begin(), p.end());
  return b == base.end();
}

// Sub-steps of enter_isolation, for the child's failure report.
enum SubStep : int {
  kPrivate = 1, kRootTmpfs, kMkdir, kMkfile, kSymlink, kBind, kBindChanged, kMountAttr, kRootReadOnly, kPivot, kLoopback,
  kSecurebits, kAmbient, kBounding, kNproc, kSetgroups, kSetgid, kSetuid, kCapset, kSeccomp, kNetns,
};

}  // namespace

uint64_t isolation_clone_flags() {
  return CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
}

uint64_t Isolation::clone_flags() const {
  return network_namespace_ >= 0 ? isolation_clone_flags() & ~static_cast<uint64_t>(CLONE_NEWNET) : isolation_clone_flags();
}

Result<Isolation> Isolation::prepare(const IsolationPolicy& policy) {
  if (policy.uid == 0 || policy.gid == 0) return fail(errc::invalid_argument, "isolation: an agent never runs as uid or gid 0");
  if (policy.root.empty() || !policy.root.is_absolute()) return fail(errc::invalid_argument, "isolation: the root must be an absolute path");
  OUTPOST_TRY(SyscallFilter filter, SyscallFilter::build(policy.syscalls));
  Isolation iso(std::move(filter));
  iso.uid_ = policy.uid;
  iso.gid_ = policy.gid;
  iso.loopback_ = policy.loopback;
  iso.network_namespace_ = policy.network_namespace;
  iso.max_processes_ = policy.max_processes;
  iso.root_ = policy.root.string();
  {
    auto text = read_text_file("/proc/sys/kernel/cap_last_cap", 64);
    if (text) iso.last_cap_ = std::max(iso.last_cap_, std::atoi(text->c_str()));
  }

  std::vector<Bind> binds;
  std::vector<std::pair<fs::path, fs::path>> links;  // (path, target as readlink gives it)
  auto add = [&](const fs::path& p, Kind kind) -> Result<void> {
    if (!p.is_absolute()) return fail(errc::invalid_argument, "isolation: " + p.string() + " is not an absolute path");
    std::error_code ec;
    // Every symlink on the way (the path itself or a folder above it) is made again inside, so
    // the path resolves there as it does on the host; the bind goes to where it leads.
    fs::path prefix = "/";
    for (const auto& part : p.relative_path()) {
      prefix /= part;
      if (fs::is_symlink(fs::symlink_status(prefix, ec))) {
        fs::path target = fs::read_symlink(prefix, ec);
        if (!ec) links.emplace_back(fs::canonical(prefix.parent_path(), ec) / prefix.filename(), target);
      }
    }
    fs::path canonical = fs::canonical(p, ec);
    if (ec) {
      iso.skipped_.push_back(p);
      return ok();
    }
    fs::file_status st = fs::status(canonical, ec);
    if (ec) return fail(errno_error("stat " + canonical.string(), ec.value()));
    if (kind == Kind::device && !fs::is_character_file(st)) {
      return fail(errc::invalid_argument, "isolation: " + p.string() + " is not a character device");
    }
    if (kind != Kind::device && (fs::is_character_file(st) || fs::is_block_file(st))) {
      return fail(errc::invalid_argument, "isolation: " + p.string() + " is a device; devices are named as devices");
    }
    binds.push_back(Bind{canonical, kind, fs::is_directory(st)});
    return ok();
  };
  for (const auto& p : policy.read_only) OUTPOST_TRY_VOID(add(p, Kind::read_only));
  for (const auto& p : policy.read_write) OUTPOST_TRY_VOID(add(p, Kind::read_write));
  for (const auto& p : policy.devices) OUTPOST_TRY_VOID(add(p, Kind::device));

  // Parents before children (fs::path compares by component), each once; a read-only path
  // beneath another read-only one is already there.
  std::stable_sort(binds.begin(), binds.end(), [](const Bind& x, const Bind& y) { return x.target < y.target; });
  std::vector<Bind> kept;
  for (const auto& b : binds) {
    // The innermost path already kept at or above b decides: the same path named twice keeps
    // the weaker right (read-only); beneath a path of the same kind, b is there already.
    auto above = std::find_if(kept.rbegin(), kept.rend(), [&](const Bind& k) { return beneath(b.target, k.target); });
    if (above != kept.rend() && above->target == b.target) {
      if (b.kind == Kind::read_only) above->kind = Kind::read_only;
      continue;
    }
    if (above != kept.rend() && above->kind == b.kind) continue;
    kept.push_back(b);
  }

  std::set<fs::path> made;  // folders made in the new root
  auto inside = [&](const fs::path& p) { return iso.root_ + p.string(); };
  auto make_parents = [&](const fs::path& p) {
    std::vector<fs::path> chain;
    for (fs::path d = p.parent_path(); d != d.root_path() && !d.empty(); d = d.parent_path()) chain.push_back(d);
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      if (made.insert(*it).second) iso.planned_.push_back({Op::mkdir, inside(*it), "", false});
    }
  };
  auto within_bind = [&](const fs::path& p) {
    return std::any_of(kept.begin(), kept.end(), [&](const Bind& b) { return beneath(p, b.target); });
  };
  std::sort(links.begin(), links.end());
  links.erase(std::unique(links.begin(), links.end()), links.end());
  for (const auto& [path, target] : links) {
    if (within_bind(path)) continue;  // the bound folder holds the link already
    make_parents(path);
    iso.planned_.push_back({Op::symlink, target.string(), inside(path), false});
  }
  for (const auto& b : kept) {
    make_parents(b.target);
    if (b.is_dir) {
      if (made.insert(b.target).second) iso.planned_.push_back({Op::mkdir, inside(b.target), "", false});
    } else {
      iso.planned_.push_back({Op::mkfile, inside(b.target), "", false});
    }
    // The source as it is now, reached without a symlink anywhere on its path (ELOOP if one
    // appeared since canonical() resolved it): the identity the child's mount must have.
    open_how how{};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS;
    const int fd = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, b.target.c_str(), &how, sizeof how));
    if (fd < 0) return fail(errno_error("openat2 " + b.target.string(), errno));
    struct stat source {};
    const int stat_rc = ::fstat(fd, &source);
    ::close(fd);
    if (stat_rc != 0) return fail(errno_error("fstat " + b.target.string(), errno));
    PlannedStep bind{b.kind == Kind::device ? Op::bind_device : Op::bind, inside(b.target), b.target.string(), false};
    bind.dev = source.st_dev;
    bind.ino = source.st_ino;
    iso.planned_.push_back(std::move(bind));
    iso.planned_.push_back({Op::read_only, inside(b.target), b.kind == Kind::read_only ? "ro" : b.kind == Kind::device ? "dev" : "rw",
                            b.is_dir});
  }
  for (const auto& p : iso.planned_) iso.steps_.push_back(Step{p.op, p.a.c_str(), p.b.c_str(), p.recursive, p.dev, p.ino});
  return iso;
}

std::string missing_privileges() {
  std::string missing;
  auto add = [&](std::string_view what) {
    if (!missing.empty()) missing += ", ";
    missing += what;
  };
  uint64_t eff = 0;
  if (auto status = read_text_file("/proc/self/status", 1 << 16)) {
    size_t pos = status->find("\nCapEff:");
    if (pos != std::string::npos) eff = std::strtoull(status->c_str() + pos + 8, nullptr, 16);
  }
  const std::pair<int, const char*> needed[] = {{CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, {CAP_SETUID, "CAP_SETUID"},
                                                {CAP_SETGID, "CAP_SETGID"},       {CAP_SETPCAP, "CAP_SETPCAP"},
                                                {CAP_NET_ADMIN, "CAP_NET_ADMIN"}, {CAP_KILL, "CAP_KILL"},
                                                {CAP_CHOWN, "CAP_CHOWN"}};
  for (const auto& [cap, name] : needed) {
    if ((eff & (1ull << cap)) == 0) add(name);
  }
  if (::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0 && errno == EINVAL) add("seccomp filters (kernel)");
  std::error_code ec;
  if (!fs::exists("/proc/self/ns/net", ec) || !fs::exists("/proc/self/ns/mnt", ec)) add("network and mount namespaces (kernel)");
  return missing;
}

namespace detail {

const char* describe_isolation_step(int step) {
  switch (step) {
    case kPrivate: return "mount --make-rprivate /";
    case kRootTmpfs: return "mount the sandbox's root tmpfs";
    case kMkdir: return "mkdir in the sandbox's root";
    case kMkfile: return "mknod a mount point in the sandbox's root";
    case kSymlink: return "symlink in the sandbox's root";
    case kBind: return "bind mount into the sandbox";
    case kBindChanged: return "bind mount into the sandbox: the source changed since it was checked";
    case kMountAttr: return "mount_setattr in the sandbox";
    case kRootReadOnly: return "make the sandbox's root read-only";
    case kPivot: return "pivot_root into the sandbox";
    case kLoopback: return "bring up loopback in the agent's network namespace";
    case kNetns: return "setns into the agent's network namespace";
    case kSecurebits: return "prctl PR_SET_SECUREBITS";
    case kAmbient: return "prctl PR_CAP_AMBIENT_CLEAR_ALL";
    case kBounding: return "prctl PR_CAPBSET_DROP";
    case kNproc: return "setrlimit RLIMIT_NPROC";
    case kSetgroups: return "setgroups";
    case kSetgid: return "setresgid";
    case kSetuid: return "setresuid";
    case kCapset: return "capset";
    case kSeccomp: return "prctl PR_SET_SECCOMP";
  }
  return "isolation";
}

// Async-signal-safe only: system calls on prepared strings. Raw syscalls for the id changes:
// glibc's wrappers would try to reach the parent's other threads, which this child lacks.
int enter_isolation(const Isolation& iso) noexcept {
  if (iso.network_namespace() >= 0 && ::setns(iso.network_namespace(), CLONE_NEWNET) != 0) return kNetns;
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return kPrivate;
  if (::mount("tmpfs", iso.root(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=256k,nr_inodes=4096") != 0) {
    return kRootTmpfs;
  }
  for (const auto& s : iso.steps()) {
    switch (s.op) {
      case Isolation::Op::mkdir:
        if (::mkdir(s.a, 0755) != 0 && errno != EEXIST) return kMkdir;
        break;
      case Isolation::Op::mkfile:
        if (::mknod(s.a, S_IFREG | 0644, 0) != 0 && errno != EEXIST) return kMkfile;
        break;
      case Isolation::Op::symlink:
        if (::symlink(s.a, s.b) != 0 && errno != EEXIST) return kSymlink;
        break;
      case Isolation::Op::bind:
      case Isolation::Op::bind_device: {
        if (::mount(s.b, s.a, nullptr, MS_BIND | MS_REC, nullptr) != 0) return kBind;
        struct stat st {};
        if (::stat(s.a, &st) != 0) return kBind;
        if (st.st_dev != s.dev || st.st_ino != s.ino) {
          errno = ESTALE;  // the path was swapped after it was checked
          return kBindChanged;
        }
        break;
      }
      case Isolation::Op::read_only: {
        // b says which: "ro" read-only, "rw" writable, "dev" a device (no nodev for it).
        const bool ro = s.b[0] == 'r' && s.b[1] == 'o';
        const bool dev = s.b[0] == 'd';
        uint64_t set = kAttrNosuid | (dev ? kAttrNoexec : kAttrNodev) | (ro ? kAttrRdonly : 0);
        if (set_mount_attr(s.a, set, true) != 0) return kMountAttr;
        break;
      }
    }
  }
  if (set_mount_attr(iso.root(), kAttrRdonly | kAttrNosuid | kAttrNodev | kAttrNoexec, false) != 0) return kRootReadOnly;
  if (::chdir(iso.root()) != 0) return kPivot;
  if (::syscall(SYS_pivot_root, ".", ".") != 0) return kPivot;
  if (::umount2(".", MNT_DETACH) != 0) return kPivot;
  if (::chdir("/") != 0) return kPivot;

  if (iso.loopback()) {
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return kLoopback;
    ifreq ifr{};
    std::memcpy(ifr.ifr_name, "lo", 3);
    bool up = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    up = up && ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
    const int err = errno;
    ::close(s);
    if (!up) {
      errno = err;
      return kLoopback;
    }
  }

  // Root's privileges cannot come back: no capability fix-ups for uid 0, none kept across the
  // id change, no ambient raise; all locked.
  const unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                             SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
  if (::prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) return kSecurebits;
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return kAmbient;
  for (int cap = 0; cap <= iso.last_cap(); ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return kBounding;
  }
  if (iso.max_processes() > 0) {
    const rlimit nproc{iso.max_processes(), iso.max_processes()};
    if (::syscall(SYS_prlimit64, 0, RLIMIT_NPROC, &nproc, nullptr) != 0) return kNproc;
  }
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) return kSetgroups;
  if (::syscall(SYS_setresgid, iso.gid(), iso.gid(), iso.gid()) != 0) return kSetgid;
  if (::syscall(SYS_setresuid, iso.uid(), iso.uid(), iso.uid()) != 0) return kSetuid;
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (::syscall(SYS_capset, &header, data) != 0) return kCapset;
  return 0;
}

int install_syscall_filter(const Isolation& iso) noexcept {
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, iso.filter().program(), 0, 0) != 0) return kSeccomp;
  return 0;
}

}  // namespace detail
}  // namespace outpost::sandbox
