#include "sandbox/network.h"

#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <thread>

#include "outpost/base/errors.h"

namespace outpost::sandbox {

namespace {

Result<void> loopback_up() {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return fail(errno_error("socket for loopback", errno));
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, "lo", 3);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return fail(errno_error("ioctl SIOCGIFFLAGS lo", errno));
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return fail(errno_error("ioctl SIOCSIFFLAGS lo", errno));
  return {};
}

// A TCP listener at 127.0.0.1:port in the calling thread's namespace.
Result<UniqueFd> listen_on_loopback(uint16_t port, const char* what) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fail(errno_error(std::string("socket for the ") + what, errno));
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    return fail(errno_error("bind 127.0.0.1:" + std::to_string(port) + " in the agent's namespace (" + what + ")", errno));
  }
  if (::listen(fd.get(), 128) != 0) return fail(errno_error("listen", errno));
  return fd;
}

// The DNS stub's socket: every loopback address's port 53 (the namespace has no other).
Result<UniqueFd> dns_socket() {
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fail(errno_error("socket for the DNS stub", errno));
  const int one = 1;
  if (::setsockopt(fd.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof one) != 0) {
    return fail(errno_error("setsockopt IP_PKTINFO for the DNS stub", errno));
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(53);
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    return fail(errno_error("bind 0.0.0.0:53 in the agent's namespace (the DNS stub; needs CAP_NET_BIND_SERVICE)", errno));
  }
  return fd;
}

Result<AgentNetwork> make_here(uint16_t port, uint16_t mcp_port) {
  if (::unshare(CLONE_NEWNET) != 0) return fail(errno_error("unshare CLONE_NEWNET", errno));
  OUTPOST_TRY_VOID(loopback_up());
  AgentNetwork net;
  net.port = port;
  net.mcp_port = mcp_port;
  net.ns.reset(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!net.ns) return fail(errno_error("open /proc/thread-self/ns/net", errno));
  OUTPOST_TRY(net.listener, listen_on_loopback(port, "egress proxy"));
  if (mcp_port != 0) { OUTPOST_TRY(net.mcp_listener, listen_on_loopback(mcp_port, "MCP endpoint")); }
  if (auto dns = dns_socket()) {
    net.dns = std::move(*dns);
  } else {
    net.dns_error = dns.error().message();
  }
  return net;
}

}  // namespace

Result<AgentNetwork> make_agent_network(uint16_t port, uint16_t mcp_port) {
  std::optional<Result<AgentNetwork>> out;
  // The thread ends in the new namespace; the namespace lives on through the fds.
  std::thread([&] { out.emplace(make_here(port, mcp_port)); }).join();
  return std::move(*out);
}

}  // namespace outpost::sandbox
