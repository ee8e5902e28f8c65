// The seccomp filter every agent runs under, built with libseccomp in the parent and installed
// by the child just before execve (sandbox.h: SpawnSpec::isolation).
//
// Default allow, with a deny list that answers EPERM (never kills: an agent sees a clear error
// and can carry on):
//   * socket()/socketpair(): AF_UNIX only; with allow_inet also AF_INET/AF_INET6 TCP (type
//     SOCK_STREAM, protocol 0 or IPPROTO_TCP) and UDP (SOCK_DGRAM, 0 or IPPROTO_UDP). MPTCP,
//     ping sockets, UDP-Lite, SCTP, raw, packet and netlink are refused, and so are UDP's own
//     socket options (setsockopt at level SOL_UDP).
//   * no namespaces (unshare, setns, clone with any CLONE_NEW* flag; clone3 answers ENOSYS so
//     libc falls back to clone, whose flags a filter can read), no mounts or chroot, no ptrace
//     or process_vm_*, no bpf, perf_event_open, keyctl/add_key/request_key, no file handles
//     (name_to_handle_at, open_by_handle_at), no io_uring, no userfaultfd, no kernel modules,
//     kexec, reboot, swap, clock setting or accounting.
// System calls of another architecture (i386 on x86-64) kill the process: libseccomp's default
// for a foreign ABI, which no legitimate agent uses.
//
// Thread contract: immutable once built; many spawns may share one.
#pragma once

#include <linux/filter.h>

#include <vector>

#include "outpost/base/result.h"

namespace outpost::sandbox {

struct SyscallFilterPolicy {
  // TCP and UDP sockets. Only for an agent in its own loopback-only namespace
  // (sandbox/network.h), where they reach outpostd's listeners there (the egress proxy, the
  // MCP endpoint, the DNS stub) and the agent's own sockets, nothing else: a filter cannot read
  // the address a connect() or sendto() names, the namespace is what bounds it.
  bool allow_inet = false;
};

class SyscallFilter {
 public:
  static Result<SyscallFilter> build(const SyscallFilterPolicy& policy);

  SyscallFilter(SyscallFilter&& other) noexcept : insns_(std::move(other.insns_)) { prog_ = {static_cast<unsigned short>(insns_.size()), insns_.data()}; }
  SyscallFilter& operator=(SyscallFilter&&) = delete;
  SyscallFilter(const SyscallFilter&) = delete;
  SyscallFilter& operator=(const SyscallFilter&) = delete;

  // The BPF program for prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, program()).
  const sock_fprog* program() const { return &prog_; }

 private:
  explicit SyscallFilter(std::vector<sock_filter> insns) : insns_(std::move(insns)) {
    prog_ = {static_cast<unsigned short>(insns_.size()), insns_.data()};
  }
  std::vector<sock_filter> insns_;
  sock_fprog prog_{};
};

// The names refused with EPERM (those that exist on this architecture), for docs and tests.
const std::vector<const char*>& refused_syscalls();

}  // namespace outpost::sandbox
