// An agent's network namespace, made by outpostd before the agent starts (docs/daemon.md,
// "Egress"). It holds loopback alone, up, and the egress proxy's listening socket bound at
// 127.0.0.1:port inside it, with the MCP endpoint's beside it at 127.0.0.1:mcp_port (HTTP
// agents, broker/http_endpoint.h): the only addresses the agent can reach. The agent joins it
// (IsolationPolicy::network_namespace) instead of an empty namespace of its own; outpostd keeps
// the listener, so its accepted connections come from the agent and nowhere else, and the
// agent's identity is the namespace its connection arrived in.
//
// Needs CAP_SYS_ADMIN (a network namespace) and CAP_NET_ADMIN (loopback up), as Isolation does.
#pragma once

#include <cstdint>

#include "outpost/base/result.h"
#include "sandbox/sandbox.h"

namespace outpost::sandbox {

struct AgentNetwork {
  UniqueFd ns;        // the namespace (setns(2) target), O_CLOEXEC
  UniqueFd listener;  // TCP, listening on 127.0.0.1:port inside it, non-blocking, O_CLOEXEC
  uint16_t port = 0;
  UniqueFd mcp_listener;  // likewise at 127.0.0.1:mcp_port; none when mcp_port is 0
  uint16_t mcp_port = 0;
};

// A fresh namespace with its listener. Made on a short-lived thread of its own: unshare(2)
// moves only the calling thread, and no other thread of the caller changes namespace.
Result<AgentNetwork> make_agent_network(uint16_t port, uint16_t mcp_port = 0);

}  // namespace outpost::sandbox
