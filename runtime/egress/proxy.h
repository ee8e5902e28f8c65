// The egress proxy: the only road from an agent to the network (docs/daemon.md, "Egress").
//
// outpostd serves one listener per agent, bound at 127.0.0.1:PORT inside the agent's own
// network namespace (sandbox/network.h), so a connection's agent is the listener it arrived
// on. The agent speaks plain HTTP proxy protocol to it: CONNECT host:port for TLS (the proxy
// reads the ClientHello and requires its SNI to be the CONNECT host; it never terminates TLS)
// and absolute-form requests (GET http://host:port/path) for plain HTTP, one request per
// connection. Every connection is decided by the policy engine (Engine::decide_egress), first
// on the name alone, so that nothing the bundle does not allow is resolved (DNS carries data
// too), then on each address outpostd resolved it to, so a name that resolves to loopback, a
// private range, cloud metadata or this host is refused unless a rule names that address by
// CIDR (no DNS rebinding). Each decision is recorded (ProxyHooks::record) before anything goes
// out, and each allowed connection's close with its bytes and duration.
//
// An open connection lives under the policy of the moment: re-decided at most every 250 ms
// while bytes flow, it is cut when a taint picked up since, a new bundle or the old one's
// expiry no longer allows it.
//
// Threads: one event-loop thread of its own runs every connection; the hooks that may block
// (record, secret, closed) run on a pool of two beside it, never on the loop. The public
// methods are thread-safe and never wait for the loop (callers may hold locks its hooks take).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/ip/tcp.hpp>

#include "broker/mcp_session.h"
#include "broker/session_state.h"
#include "outpost/base/result.h"
#include "outpost/base/time.h"
#include "sandbox/sandbox.h"

namespace outpost::egress {

// One decision on one connection, as the audit log records it (event "egress"). A query to
// the namespace's DNS stub is recorded this way too: method "DNS", host the question's name,
// port 53, verdict "dns_refused" (at most kDnsRecordsPerSecond a second per agent; the rest
// are counted, and the next record, or one written when the agent stops, says how many).
struct EgressRecord {
  std::string id;                // the connection; its close record carries the same
  int64_t time = 0;              // Unix seconds
  std::string agent, task;
  std::string method;            // "CONNECT", or the plain HTTP request's method
  std::string host;              // as the agent asked (lower case)
  uint16_t port = 0;
  std::string address;           // the address decided on; empty when refused on the name
  std::string sni;               // CONNECT: the ClientHello's server name
  std::string path;              // plain HTTP: the request's path, without its query
  bool allow = false;
  // policy::verdict_name, or the proxy's own refusals: bad_request, host_mismatch,
  // sni_mismatch, not_tls, resolve_failed, budget_exhausted, secret_unavailable.
  std::string verdict;
  std::string rule;              // the deciding egress or flow rule, if any
  std::string reason;            // for people
  std::string kind;              // "model" or "api": the deciding allow rule's
  std::string address_class;     // "loopback", "private", "cloud metadata", ... when special
  uint64_t bundle_version = 0;
  std::string injected_header;   // a header outpostd added from a sealed secret (its name only)
};

// The end of an allowed connection (event "egress_close").
struct EgressClose {
  std::string id;
  int64_t time = 0;
  std::string agent, host, rule;
  uint16_t port = 0;
  uint64_t bytes_up = 0, bytes_down = 0;  // agent -> destination, destination -> agent
  int64_t duration_ms = 0;
  std::string end;  // "closed", "idle", "byte budget exhausted", "connect failed: ...", "agent stopped"
};

inline constexpr uint32_t kDnsRecordsPerSecond = 10;

struct ProxyOptions {
  size_t max_head_bytes = 64 << 10;        // request line and headers
  size_t max_body_bytes = 16 << 20;        // a plain HTTP request's body (read whole, then sent)
  size_t max_bodies_in_flight = 64 << 20;  // request bodies held at once, all agents together
  std::chrono::milliseconds head_timeout{10'000};     // until the request head (and a CONNECT's ClientHello)
  std::chrono::milliseconds connect_timeout{10'000};  // resolution and TCP connect
  std::chrono::milliseconds idle_timeout{600'000};    // no byte either way
  size_t max_connections_per_agent = 64;
  size_t max_connections = 1024;           // all agents together
  size_t buffer_bytes = 256 << 10;         // the pipe each direction splices through
  std::function<int64_t()> clock = [] { return unix_now(); };  // Unix seconds of DNS records and their rate (tests set it)
};

struct ProxyHooks {
  // The policy in force, read at each decision.
  std::function<broker::PolicyView()> policy;
  // Records a decision before the connection goes anywhere; an error refuses the connection
  // (nothing goes out unrecorded). Called off the event loop; may block (fdatasync).
  std::function<Result<void>(const EgressRecord&)> record;
  // Records an allowed connection's end. Off the loop.
  std::function<void(const EgressClose&)> closed;
  // The value of a sealed secret, for header injection. Off the loop.
  std::function<Result<std::string>(std::string_view name)> secret;
};

class Proxy {
 public:
  static Result<std::unique_ptr<Proxy>> start(ProxyOptions options, ProxyHooks hooks);
  ~Proxy();  // closes every listener and connection, then joins its threads
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  struct Binding {
    std::string agent, task;
    std::shared_ptr<broker::SessionState> flow;  // the agent's session: taint, sensitivity
    sandbox::UniqueFd listener;                  // a listening TCP socket (its namespace's)
    // Its namespace's DNS stub (dns_stub.h): a UDP socket bound at 0.0.0.0:53 there with
    // IP_PKTINFO on, so each answer leaves from the address its query was sent to (127.0.0.1,
    // systemd-resolved's 127.0.0.53, ...). None: the namespace has no stub.
    sandbox::UniqueFd dns;
  };
  // Starts accepting on the binding's listener; replaces an earlier binding of the agent. Rate
  // counts and byte budgets carry over from earlier bindings of the same agent.
  void serve(Binding binding);
  // Closes the agent's listener and every connection it has open.
  void stop_agent(const std::string& agent);

  struct Counters {
    uint64_t allowed = 0, refused = 0, open = 0, bytes_up = 0, bytes_down = 0;
    uint64_t dns_refused = 0;  // queries the namespace's DNS stub answered (REFUSED, or FORMERR/NOTIMP)
  };
  // Since the agent's binding was made; zeros for an agent the proxy does not serve.
  Counters counters(const std::string& agent) const;

  struct Impl;

 private:
  explicit Proxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Where a proxy request goes: CONNECT's authority form ("host:port", "[v6]:port") or a plain
// request's absolute form ("http://host[:port]/path"). Host names come back lower case without
// a trailing dot; nullopt for anything else (userinfo, https:// URLs, bad names or ports).
struct ProxyTarget {
  std::string host;
  uint16_t port = 0;
  bool is_ip = false;
  std::string path;  // absolute form: the origin-form target ("/v1/chat?x=1")
};
std::optional<ProxyTarget> parse_proxy_target(std::string_view target, bool connect);

// One egress decision for host:port on an agent's behalf, on the name alone (address empty) or
// on one resolved address, filled into `out` (verdict, rule, reason, kind, address class): the
// proxy's step, and that of outpostd's own connections for an agent (decide_outbound).
policy::EgressDecision decide_destination(const broker::PolicyView& view, std::string_view agent, std::string_view task,
                                          broker::SessionState& flow, std::string_view host, uint16_t port,
                                          std::string_view address, bool own_address, policy::RateLimiter* limiter,
                                          EgressRecord& out);

// Whether `address` is one of this host's own (the interface list, re-read at most every 10 s).
bool is_own_address(const boost::asio::ip::address& address);

// A connection outpostd makes itself on an agent's behalf: to a remote MCP server of the
// agent's manifest, or to its authorization server. Decided as the proxy decides the agent's
// own (on the name, then on each address it resolves to, blocking), each decision recorded by
// `record` (an allowed one must be, or the connection is refused). The first allowed address.
// Not rate-limited or byte-budgeted: those count the agent's own traffic.
struct Outbound {
  std::string agent, task;
  std::string method;  // for the record: "MCP", "OAUTH"
  std::string path;    // for the record (its query is dropped)
  std::shared_ptr<broker::SessionState> flow;
};
Result<boost::asio::ip::tcp::endpoint> decide_outbound(const std::function<broker::PolicyView()>& policy,
                                                      const Outbound& who, const std::string& host, uint16_t port,
                                                      const std::function<Result<void>(const EgressRecord&)>& record);

// The JSON detail of an egress record and of a close (what the audit log stores).
std::string egress_json(const EgressRecord& r);
std::string egress_close_json(const EgressClose& c);

}  // namespace outpost::egress
