// An agent's network namespace, made by outpostd before the agent starts (docs/daemon.md,
// "Egress"). It holds loopback alone, up, and the egress proxy's listening socket bound at
// 127.0.0.1:port inside it, with the MCP endpoint's beside it at 127.0.0.1:mcp_port (HTTP
// agents, broker/http_endpoint.h): the only addresses the agent can reach. The agent joins it
// (IsolationPolicy::network_namespace) instead of an empty namespace of its own; outpostd keeps
// the listener, so its accepted connections come from the agent and nowhere else, and the
// agent's identity is the namespace its connection arrived in.
//
// Beside them, a UDP socket at 0.0.0.0:53 for the DNS stub (egress/dns_stub.h). The IPv4
// nameservers of the host's /etc/resolv.conf (which the agent reads) are added to the
// namespace's loopback as /32 addresses, so a resolver inside asks the stub whatever it is
// configured with: at a loopback address (127.0.0.1, systemd-resolved's 127.0.0.53, or none,
// which glibc and c-ares take as loopback) or at the host's. An IPv6 nameserver has no route
// in the namespace and fails at once (ENETUNREACH). Port 53 takes
// CAP_NET_BIND_SERVICE; without it the namespace has no stub (dns_error says why) and
// resolvers at loopback addresses fail on the ICMP port-unreachable instead: still at once,
// still in the namespace, only unrecorded.
//
// Needs CAP_SYS_ADMIN (a network namespace) and CAP_NET_ADMIN (loopback up), as Isolation does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/base/result.h"
#include "sandbox/sandbox.h"

namespace outpost::sandbox {

struct AgentNetwork {
  UniqueFd ns;        // the namespace (setns(2) target), O_CLOEXEC
  UniqueFd listener;  // TCP, listening on 127.0.0.1:port inside it, non-blocking, O_CLOEXEC
  uint16_t port = 0;
  UniqueFd mcp_listener;  // likewise at 127.0.0.1:mcp_port; none when mcp_port is 0
  uint16_t mcp_port = 0;
  UniqueFd dns;           // UDP at 0.0.0.0:53 inside it, IP_PKTINFO on, non-blocking; or none
  std::string dns_error;  // why there is none
  std::vector<std::string> resolver_addresses;  // the host's nameservers added to its loopback
  std::string resolver_error;                   // one that could not be (it stays unreachable)
};

// The IPv4 nameservers of a resolv.conf's text, in order, loopback ones left out (the namespace
// has all of 127/8 already); among the first three nameserver lines that are addresses, as
// glibc reads them (MAXNS).
std::vector<std::string> ipv4_nameservers(std::string_view resolv_conf);

// A fresh namespace with its listener. Made on a short-lived thread of its own: unshare(2)
// moves only the calling thread, and no other thread of the caller changes namespace.
// resolv_conf: the file whose nameservers are added (the agent reads /etc/resolv.conf).
Result<AgentNetwork> make_agent_network(uint16_t port, uint16_t mcp_port = 0,
                                        const std::filesystem::path& resolv_conf = "/etc/resolv.conf");

}  // namespace outpost::sandbox
