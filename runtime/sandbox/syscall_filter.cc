#include "sandbox/syscall_filter.h"

#include <linux/sched.h>
#include <netinet/in.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "outpost/base/errors.h"

namespace outpost::sandbox {
namespace {

// libseccomp's one wrapper: its calls return 0 or a negative errno.
Result<void> check(int rc, const std::string& what) {
  if (rc < 0) return fail(errno_error(what, -rc));
  return ok();
}

struct CtxDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using Ctx = std::unique_ptr<void, CtxDeleter>;

constexpr uint32_t kRefuse = SCMP_ACT_ERRNO(EPERM);

// One argument comparison (libseccomp's SCMP_A* macros are C compound literals).
scmp_arg_cmp arg(unsigned index, scmp_compare op, scmp_datum_t a, scmp_datum_t b = 0) { return scmp_arg_cmp{index, op, a, b}; }

constexpr uint64_t kNamespaceFlags[] = {CLONE_NEWNS,  CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                                        CLONE_NEWUSER, CLONE_NEWPID,   CLONE_NEWNET, 0x00000080 /* CLONE_NEWTIME */};

// socket(domain, type, protocol) and socketpair(domain, type, protocol, sv): refuse every
// domain but the allowed ones, and within AF_INET/AF_INET6 every type but SOCK_STREAM (protocol
// 0 or IPPROTO_TCP) and SOCK_DGRAM (protocol 0 or IPPROTO_UDP). Rules only ever refuse, and the
// allowed values are exact small numbers, so upper register bits a caller sets cannot sneak a
// value past them.
Result<void> refuse_sockets(scmp_filter_ctx ctx, int nr, bool allow_inet) {
  const std::string what = "seccomp_rule_add socket rules";
  // AF_UNSPEC (0) and everything from AF_INET (2) up, except what is allowed.
  OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx, kRefuse, nr, 1, arg(0, SCMP_CMP_EQ, AF_UNSPEC)), what));
  if (!allow_inet) {
    return check(seccomp_rule_add(ctx, kRefuse, nr, 1, arg(0, SCMP_CMP_GE, AF_INET)), what);
  }
  for (scmp_datum_t d = AF_INET + 1; d < AF_INET6; ++d) {
    OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx, kRefuse, nr, 1, arg(0, SCMP_CMP_EQ, d)), what));
  }
  OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx, kRefuse, nr, 1, arg(0, SCMP_CMP_GT, AF_INET6)), what));
  // The type's low four bits are the socket type; SOCK_NONBLOCK and SOCK_CLOEXEC sit above.
  struct Allowed {
    scmp_datum_t type, protocol;
  };
  constexpr Allowed kAllowed[] = {{SOCK_STREAM, IPPROTO_TCP}, {SOCK_DGRAM, IPPROTO_UDP}};
  for (scmp_datum_t d : {scmp_datum_t{AF_INET}, scmp_datum_t{AF_INET6}}) {
    for (scmp_datum_t t = 0; t < 16; ++t) {
      if (t == SOCK_STREAM || t == SOCK_DGRAM) continue;
      OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx, kRefuse, nr, 2, arg(0, SCMP_CMP_EQ, d),
                                              arg(1, SCMP_CMP_MASKED_EQ, 0xf, t)), what));
    }
    // Each allowed type with any protocol but 0 and its own: ICMP datagrams (ping sockets),
    // UDP-Lite, SCTP, IPPROTO_MPTCP (262), anything negative.
    for (const Allowed& a : kAllowed) {
      const scmp_arg_cmp is_type = arg(1, SCMP_CMP_MASKED_EQ, 0xf, a.type);
      for (scmp_datum_t p = 1; p < a.protocol; ++p) {
        OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx, kRefuse, nr, 3, arg(0, SCMP_CMP_EQ, d), is_type, arg(2, SCMP_CMP_EQ, p)),
                               what));
      }
      OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx, kRefuse, nr, 3, arg(0, SCMP_CMP_EQ, d), is_type,
                                              arg(2, SCMP_CMP_GT, a.protocol)), what));
    }
  }
  return ok();
}

}  // namespace

const std::vector<const char*>& refused_syscalls() {
  static const std::vector<const char*> names = {
      "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
      "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv",
      "process_vm_writev", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
      "name_to_handle_at", "open_by_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
      "userfaultfd", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
      "reboot", "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime", "clock_adjtime",
      "adjtimex", "sethostname", "setdomainname", "syslog", "iopl", "ioperm", "lookup_dcookie",
      "vhangup", "fanotify_init", "kcmp", "pidfd_getfd",
  };
  return names;
}

Result<SyscallFilter> SyscallFilter::build(const SyscallFilterPolicy& policy) {
  Ctx ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (!ctx) return fail(make_error_code(errc::io), "seccomp_init failed (is seccomp enabled in this kernel?)");
  // A system call of a foreign ABI ends the whole process, not just the thread that made it.
  OUTPOST_TRY_VOID(check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "seccomp_attr_set BADARCH"));
  for (const char* name : refused_syscalls()) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not a system call on this architecture
    OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx.get(), kRefuse, nr, 0), std::string("seccomp_rule_add ") + name));
  }
  // clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone.
  OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "seccomp_rule_add clone3"));
  for (uint64_t flag : kNamespaceFlags) {
    OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx.get(), kRefuse, SCMP_SYS(clone), 1, arg(0, SCMP_CMP_MASKED_EQ, flag, flag)),
                           "seccomp_rule_add clone"));
  }
  OUTPOST_TRY_VOID(refuse_sockets(ctx.get(), SCMP_SYS(socket), policy.allow_inet));
  OUTPOST_TRY_VOID(refuse_sockets(ctx.get(), SCMP_SYS(socketpair), policy.allow_inet));
  // UDP socket options (UDP_ENCAP for ESP-in-UDP, UDP_SEGMENT, UDP_GRO): kernel code no agent
  // needs to reach, for the resolver-only UDP it has.
  OUTPOST_TRY_VOID(check(seccomp_rule_add(ctx.get(), kRefuse, SCMP_SYS(setsockopt), 1, arg(1, SCMP_CMP_EQ, IPPROTO_UDP)),
                         "seccomp_rule_add setsockopt"));

  // libseccomp 2.5 exports only to a file descriptor: a memfd, read back whole.
  const int fd = ::memfd_create("outpost-seccomp", MFD_CLOEXEC);
  if (fd < 0) return fail(errno_error("memfd_create", errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  OUTPOST_TRY_VOID(check(seccomp_export_bpf(ctx.get(), fd), "seccomp_export_bpf"));
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size <= 0 || size % static_cast<off_t>(sizeof(sock_filter)) != 0 || size > 4096 * static_cast<off_t>(sizeof(sock_filter))) {
    return fail(make_error_code(errc::corrupt), "seccomp_export_bpf wrote " + std::to_string(size) + " bytes");
  }
  std::vector<sock_filter> insns(static_cast<size_t>(size) / sizeof(sock_filter));
  if (::pread(fd, insns.data(), static_cast<size_t>(size), 0) != size) return fail(errno_error("read the seccomp program", errno));
  return SyscallFilter(std::move(insns));
}

}  // namespace outpost::sandbox
