#include "sandbox/network.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"

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

// `address`/32 on loopback as the alias lo:index, so that packets to it stay in the namespace.
Result<void> add_loopback_address(const std::string& address, int index) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return fail(errno_error("socket for a loopback address", errno));
  ifreq ifr{};
  std::snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo:%d", index);
  auto* sin = reinterpret_cast<sockaddr_in*>(&ifr.ifr_addr);
  sin->sin_family = AF_INET;
  if (::inet_pton(AF_INET, address.c_str(), &sin->sin_addr) != 1) return fail(errc::invalid_argument, "not an IPv4 address: " + address);
  if (::ioctl(s.get(), SIOCSIFADDR, &ifr) != 0) return fail(errno_error("ioctl SIOCSIFADDR " + address + " on lo", errno));
  sin->sin_addr.s_addr = htonl(0xffffffffu);
  if (::ioctl(s.get(), SIOCSIFNETMASK, &ifr) != 0) return fail(errno_error("ioctl SIOCSIFNETMASK " + address + "/32", errno));
  return {};
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

Result<AgentNetwork> make_here(uint16_t port, uint16_t mcp_port, const std::filesystem::path& resolv_conf) {
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
    return net;
  }
  // The host's nameservers, where the agent's resolver will ask (it reads the same file).
  if (auto conf = read_text_file(resolv_conf, 1 << 16)) {
    int index = 1;
    for (const std::string& a : ipv4_nameservers(*conf)) {
      if (auto added = add_loopback_address(a, index++); !added) {
        net.resolver_error = added.error().message();  // this nameserver stays unreachable: fails at once
        continue;
      }
      net.resolver_addresses.push_back(a);
    }
  }
  return net;
}

}  // namespace

std::vector<std::string> ipv4_nameservers(std::string_view conf) {
  std::vector<std::string> out;
  size_t count = 0;  // nameserver lines glibc would read (MAXNS), of either family
  while (!conf.empty() && count < 3) {
    const size_t eol = conf.find('\n');
    std::string_view line = conf.substr(0, eol);
    conf = eol == std::string_view::npos ? std::string_view() : conf.substr(eol + 1);
    constexpr std::string_view kKey = "nameserver";
    if (!line.starts_with(kKey) || line.size() == kKey.size() || (line[kKey.size()] != ' ' && line[kKey.size()] != '\t')) continue;
    line.remove_prefix(kKey.size());
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string_view::npos) continue;
    line.remove_prefix(start);
    line = line.substr(0, line.find_first_of(" \t\r#;"));
    in_addr a{};
    in6_addr a6{};
    const std::string text(line);
    if (::inet_pton(AF_INET, text.c_str(), &a) != 1) {
      if (::inet_pton(AF_INET6, text.c_str(), &a6) == 1) ++count;  // counts, has no route in the namespace
      continue;                                                     // not an address: glibc skips it
    }
    ++count;
    if ((ntohl(a.s_addr) >> 24) == 127 || a.s_addr == 0) continue;  // loopback is there already
    out.push_back(text);
  }
  return out;
}

Result<AgentNetwork> make_agent_network(uint16_t port, uint16_t mcp_port, const std::filesystem::path& resolv_conf) {
  std::optional<Result<AgentNetwork>> out;
  // The thread ends in the new namespace; the namespace lives on through the fds.
  std::thread([&] { out.emplace(make_here(port, mcp_port, resolv_conf)); }).join();
  return std::move(*out);
}

}  // namespace outpost::sandbox
