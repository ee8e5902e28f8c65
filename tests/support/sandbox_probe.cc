// An attacker inside the agent sandbox: tries every road out that issue 16 found open, and
// prints one JSON line per attempt, {"probe": NAME, "ok": SUCCEEDED, "errno": E, "error": TEXT}.
// "ok": true means the attack worked. Deployed as an agent by the e2e test, which runs the
// listeners named on the command line and checks that none of them ever hears from it.
//   sandbox_probe --tcp PORT --udp PORT --unix PATH --unix-dgram PATH --abstract NAME
//                 --outside FILE --daemon-pid PID --tpm-port PORT
// It is also the local attacker of outpostd's API socket (run as some uid by the test):
//   sandbox_probe --attack fds --socket PATH --count N
//       N connections, each sending a line with 8 descriptors attached: {"sent":N,"failed":F}
//   sandbox_probe --attack slow --socket PATH --count N --seconds S
//       N connections trickling one byte of a request every 250 ms for S seconds:
//       {"connections":N,"refused":R,"closed":C,"open":O}: refused at once (an error line
//       before anything was sent), closed by outpostd later, still open at the end
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

namespace {

std::map<std::string, std::string> g_args;

int arg_int(const char* name) { return std::atoi(g_args[name].c_str()); }

// rc >= 0: the attempt succeeded; else `err` says why not.
void report_as(const char* probe, long rc, int err, const std::string& extra = "") {
  std::printf("{\"probe\":\"%s\",\"ok\":%s,\"errno\":%d,\"error\":\"%s\"%s}\n", probe, rc >= 0 ? "true" : "false",
              rc >= 0 ? 0 : err, rc >= 0 ? "" : std::strerror(err), extra.c_str());
  std::fflush(stdout);
}

// The errno of the attempt just made (read before anything else can change it).
void report(const char* probe, long rc) {
  const int err = errno;
  report_as(probe, rc, err);
}

sockaddr_in v4(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}
sockaddr_in6 v6(int port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(static_cast<uint16_t>(port));
  a.sin6_addr = in6addr_loopback;
  return a;
}

// socket() and then connect() or sendto(): fails at whichever step refuses.
template <class Addr>
long net_attempt(int domain, int type, int protocol, const Addr& addr, bool datagram) {
  int s = ::socket(domain, type | SOCK_CLOEXEC, protocol);
  if (s < 0) return -1;
  long rc = datagram ? ::sendto(s, "x", 1, 0, reinterpret_cast<const sockaddr*>(&addr), sizeof addr)
                     : ::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::close(s);
  errno = err;
  return rc;
}

// UDP as a resolver sends it: connect(), send(), then the answer or the error the ICMP
// port-unreachable brings back (ECONNREFUSED). In the agent's namespace the send succeeds
// (UDP sockets exist there, for its DNS stub) but reaches that namespace's loopback only.
template <class Addr>
long udp_attempt(int domain, const Addr& addr) {
  int s = ::socket(domain, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  timeval tv{1, 0};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  long rc = ::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  if (rc == 0) rc = ::send(s, "x", 1, 0);
  char buf[16];
  if (rc >= 0) rc = ::recv(s, buf, sizeof buf, 0);
  const int err = errno;
  ::close(s);
  errno = err;
  return rc;
}

long unix_attempt(int type, const std::string& path, bool abstract) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  socklen_t len = sizeof a;
  if (abstract) {
    std::memcpy(a.sun_path + 1, path.data(), std::min(path.size(), sizeof a.sun_path - 2));
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
  } else {
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  }
  int s = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  long rc = type == SOCK_DGRAM ? ::sendto(s, "x", 1, 0, reinterpret_cast<sockaddr*>(&a), len)
                               : ::connect(s, reinterpret_cast<sockaddr*>(&a), len);
  const int err = errno;
  ::close(s);
  errno = err;
  return rc;
}

long open_attempt(const char* path, int flags) {
  int fd = ::open(path, flags | O_CLOEXEC, 0600);
  if (fd >= 0) ::close(fd);
  return fd;
}

int connect_path(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s >= 0 && ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(s);
    return -1;
  }
  return s;
}

int attack_fds(const std::string& path, int count) {
  int pipes[8];
  for (int i = 0; i < 8; i += 2) {
    if (::pipe(pipes + i) != 0) return 1;
  }
  int sent = 0, failed = 0;
  for (int i = 0; i < count; ++i) {
    int s = connect_path(path);
    if (s < 0) {
      ++failed;
      continue;
    }
    const char line[] = "{\"op\":\"mcp\",\"server\":\"fs\"}\n";
    iovec iov{const_cast<char*>(line), sizeof line - 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof pipes)];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof pipes);
    std::memcpy(CMSG_DATA(c), pipes, sizeof pipes);
    if (::sendmsg(s, &mh, MSG_NOSIGNAL) > 0) ++sent;
    else ++failed;
    ::close(s);
  }
  std::printf("{\"sent\":%d,\"failed\":%d}\n", sent, failed);
  return 0;
}

int attack_slow(const std::string& path, int count, int seconds) {
  std::vector<int> socks;
  int refused = 0, closed = 0;
  for (int i = 0; i < count; ++i) {
    int s = connect_path(path);
    if (s < 0) {
      ++refused;
      continue;
    }
    ::usleep(2000);
    char b;
    if (::recv(s, &b, 1, MSG_DONTWAIT | MSG_PEEK) >= 0) {  // an error line came back at once
      ++refused;
      ::close(s);
      continue;
    }
    socks.push_back(s);
  }
  for (int tick = 0; tick < seconds * 4 && !socks.empty(); ++tick) {
    ::usleep(250000);
    for (auto it = socks.begin(); it != socks.end();) {
      char b;
      if (::send(*it, "{", 1, MSG_NOSIGNAL) != 1 || ::recv(*it, &b, 1, MSG_DONTWAIT | MSG_PEEK) >= 0) {
        ++closed;
        ::close(*it);
        it = socks.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::printf("{\"connections\":%d,\"refused\":%d,\"closed\":%d,\"open\":%zu}\n", count, refused, closed, socks.size());
  for (int s : socks) ::close(s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) g_args[argv[i] + 2] = argv[i + 1];
  if (g_args["attack"] == "fds") return attack_fds(g_args["socket"], arg_int("count"));
  if (g_args["attack"] == "slow") return attack_slow(g_args["socket"], arg_int("count"), arg_int("seconds"));
  const int tcp = arg_int("tcp"), udp = arg_int("udp"), tpm = arg_int("tpm-port");

  report("tcp", net_attempt(AF_INET, SOCK_STREAM, 0, v4(tcp), false));
  report("tcp6", net_attempt(AF_INET6, SOCK_STREAM, 0, v6(tcp), false));
  report("mptcp", net_attempt(AF_INET, SOCK_STREAM, IPPROTO_MPTCP, v4(tcp), false));
  report("mptcp6", net_attempt(AF_INET6, SOCK_STREAM, IPPROTO_MPTCP, v6(tcp), false));
  report("swtpm", net_attempt(AF_INET, SOCK_STREAM, 0, v4(tpm), false));
  report("swtpm-mptcp", net_attempt(AF_INET, SOCK_STREAM, IPPROTO_MPTCP, v4(tpm), false));
  report("udp", udp_attempt(AF_INET, v4(udp)));
  report("udp6", udp_attempt(AF_INET6, v6(udp)));
  report("ping", ::socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP));
  report("raw-icmp", ::socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
  report("ipproto-raw", ::socket(AF_INET, SOCK_RAW, IPPROTO_RAW));
  report("packet", ::socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)));
  report("netlink", ::socket(AF_NETLINK, SOCK_RAW, 0 /* NETLINK_ROUTE */));
  report("unix-stream-outside", unix_attempt(SOCK_STREAM, g_args["unix"], false));
  report("unix-dgram-outside", unix_attempt(SOCK_DGRAM, g_args["unix-dgram"], false));
  report("abstract-outside", unix_attempt(SOCK_STREAM, g_args["abstract"], true));
  report("read-shadow", open_attempt("/etc/shadow", O_RDONLY));
  report("read-outside", open_attempt(g_args["outside"].c_str(), O_RDONLY));
  struct stat st;
  report("stat-outside", ::stat(g_args["outside"].c_str(), &st));
  report("write-etc", open_attempt("/etc/outpost-probe", O_WRONLY | O_CREAT));
  report("tpm-device", open_attempt("/dev/tpm0", O_RDWR));
  report("tpmrm-device", open_attempt("/dev/tpmrm0", O_RDWR));
  report("unshare-user", ::unshare(CLONE_NEWUSER));
  report("unshare-net", ::unshare(CLONE_NEWNET));
  report("unshare-mount", ::unshare(CLONE_NEWNS));
  {
    long pid = ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, nullptr);
    if (pid == 0) ::_exit(0);
    report("clone-newuser", pid);
  }
  report("chroot", ::chroot("/"));
  report("mount", ::mount("none", "/", "tmpfs", 0, nullptr));
  report("setuid-root", ::setuid(0));
  report("ptrace-attach", ::ptrace(PTRACE_ATTACH, ::getppid(), nullptr, nullptr));
  report("bpf", ::syscall(SYS_bpf, 0, nullptr, 0));
  report("perf-event-open", ::syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0));
  report("keyctl", ::syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
  report("io-uring-setup", ::syscall(SYS_io_uring_setup, 1, nullptr));
  {
    char buf[sizeof(unsigned) * 2 + 128] = {};
    unsigned* handle_bytes = reinterpret_cast<unsigned*>(buf);
    *handle_bytes = 128;
    int mount_id = 0;
    report("name-to-handle-at", ::syscall(SYS_name_to_handle_at, AT_FDCWD, "/etc/passwd", buf, &mount_id, 0));
  }
  if (int pid = arg_int("daemon-pid"); pid > 0) report("signal-daemon", ::kill(pid, 0));

  // What the process holds: every set empty, no_new_privs on, not root.
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  ::syscall(SYS_capget, &header, data);
  const bool any_cap = data[0].effective || data[1].effective || data[0].permitted || data[1].permitted ||
                       data[0].inheritable || data[1].inheritable;
  int bounding = 0;
  for (int cap = 0; cap < 64; ++cap) bounding += ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1;
  const int ambient = ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_SYS_ADMIN, 0, 0);
  std::string caps = ",\"bounding\":" + std::to_string(bounding) + ",\"ambient_sys_admin\":" + std::to_string(ambient);
  report_as("capabilities", any_cap || bounding > 0 || ambient == 1 ? 0 : -1, EPERM, caps);
  report_as("root", ::getuid() == 0 || ::geteuid() == 0 ? 0 : -1, EPERM, ",\"uid\":" + std::to_string(::getuid()));
  report_as("new-privileges", ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 ? -1 : 0, EPERM);
  std::printf("{\"probe\":\"done\"}\n");
  return 0;
}
