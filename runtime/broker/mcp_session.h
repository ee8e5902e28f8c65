// The MCP broker's logic for one agent <-> server connection, without I/O.
//
// MCP is JSON-RPC 2.0 with one JSON object per line (stdio transport). The broker sits between
// the agent (the MCP client) and one MCP server and:
//   * forwards every line unchanged (requests, responses, notifications, progress, server-to-
//     client requests such as roots/list and sampling) — the bytes the peer sees are the bytes
//     that were sent, except for the two rewrites below;
//   * decides every `tools/call` from the client before the server sees it: a denied call is
//     answered by the broker with a CallToolResult marked isError and the reason, and is never
//     forwarded; an allowed call whose rule sets a credential TTL carries a call-scoped
//     credential in params._meta["outpost/credential"] (the one rewrite of a client line);
//   * filters the result of `tools/list` to tools the policy could allow (the one rewrite of a
//     server line);
//   * answers a line that is not JSON with a JSON-RPC parse error (-32700), and a JSON value that
//     is not a JSON-RPC message with -32600, never forwarding either.
//
// Ids are never rewritten: the broker adds no requests of its own, so the client's id space
// (client -> server requests) and the server's (server -> client requests) stay separate as
// they are. The broker remembers only the ids of pending tools/list requests, to find their
// responses; a response is told from a request by having no "method".
//
// JSON-RPC batches (arrays; in MCP 2025-03-26 only) are refused with -32600 per element: the
// SDKs of the versions we support do not send them, and splitting one would reorder responses.
//
// Flow state (the calls made so far, for flow rules) and the deny-record budget belong to the
// agent, not to the connection: they live in a SessionState that every session of one agent
// launch shares (broker/session_state.h).
//
// Not thread-safe: one session per connection, driven by one thread. Sessions sharing a
// SessionState may run on different threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/value.hpp>

#include "broker/session_state.h"
#include "outpost/base/result.h"
#include "policy/engine.h"

namespace outpost::broker {

// What was decided, for the audit log.
struct DecisionRecord {
  int64_t time = 0;
  std::string agent, task, server, tool;
  bool allow = false;
  std::string verdict;             // policy::verdict_name
  std::vector<std::string> rules;  // deciding rule ids
  std::vector<std::string> shadow; // shadow rules that matched
  uint64_t bundle_version = 0;
  std::string args_sha256;         // base64url SHA-256 of the canonical arguments (credentials::args_sha256)
  std::string reason;              // the engine's explanation
  bool credential = false;         // a credential was minted for the call
};

// Where decisions go. The audit log (issue 5) implements it; until then an append-only file.
// An allowed call whose record cannot be written is denied instead: nothing goes out unrecorded.
// A denial over the agent's deny budget is not recorded one by one: it is coalesced in the
// session's SessionState, and the daemon writes the coalesced entries.
//
// An allowed call goes out only once its record is durable. A sink that commits in groups
// says so by staging: stage() queues the record and returns a ticket, and commit(ticket)
// returns once every record up to it is durable. The session holds the call (and whatever
// the client sends after it) until then, so that the calls of one read share one commit and
// the agent's flow lock is never held across an fdatasync.
class DecisionSink {
 public:
  virtual ~DecisionSink() = default;
  virtual Result<void> record(const DecisionRecord& r) = 0;
  // Queues an allowed call's record; 0 means it is recorded already (nothing to commit).
  virtual Result<uint64_t> stage(const DecisionRecord& r) {
    if (auto rec = record(r); !rec) return fail(rec.error());
    return uint64_t{0};
  }
  // Returns once every record staged up to `ticket` is durable.
  virtual Result<void> commit(uint64_t ticket) {
    (void)ticket;
    return {};
  }
};

// The policy the session decides against, read at each call (a new bundle applies at once).
struct PolicyView {
  std::shared_ptr<const policy::Engine> engine;  // null: no bundle in force -> deny all
  policy::Mode mode = policy::Mode::deny_all;
  int64_t not_after = 0;                          // the bundle's end of life (credential TTL cap)
};

// Mints a call-scoped credential: (decision record, ttl seconds) -> compact JWS. The record
// carries everything the claims need, the arguments' hash included.
using CredentialMinter = std::function<Result<std::string>(const DecisionRecord&, int64_t ttl)>;

class McpSession {
 public:
  struct Options {
    std::string agent;
    std::string task;
    std::string server;
    // Calls remembered for flow rules, when the session makes its own state (below).
    size_t max_history = 4096;
    // The agent's flow state and deny budget, shared by all of its sessions. Null: the session
    // makes a private one (with max_history and the default deny budget), as for one connection.
    std::shared_ptr<SessionState> state = nullptr;
  };
  // `sink` must outlive the session. `clock` gives Unix seconds (null: the wall clock).
  McpSession(Options options, std::function<PolicyView()> policy, DecisionSink* sink,
             CredentialMinter minter = nullptr, std::function<int64_t()> clock = nullptr);

  // One line from the client (without its newline). Appends what goes to the server and what
  // goes back to the client, each line ending in '\n'.
  void from_client(std::string_view line, std::string& to_server, std::string& to_client);
  // One line from the server. Appends what goes to the client.
  void from_server(std::string_view line, std::string& to_client);
  // A line longer than the transport's limit, cut off: answered as a parse error.
  void oversized_from_client(std::string& to_client);
  // Whether allowed calls wait for their records' commit (then call release()).
  bool holding() const { return held_ticket_ != 0; }
  // Commits the records of the calls held since the last release (one commit for all of
  // them) and appends the held lines to `to_server`; if the commit fails, each held call is
  // answered as denied instead and only the other held lines go on. The relay calls it once
  // per batch of client lines, before writing to the server.
  void release(std::string& to_server, std::string& to_client);

  struct Stats {
    uint64_t calls_allowed = 0, calls_denied = 0, parse_errors = 0, server_parse_errors = 0, lists_filtered = 0;
  };
  const Stats& stats() const { return stats_; }
  // The state this session decides with (the shared one, or its own).
  const std::shared_ptr<SessionState>& state() const { return state_; }

 private:
  void handle_call(const boost::json::object& msg, std::string_view line, std::string& to_server,
                   std::string& to_client);
  void deny(const boost::json::value& id, DecisionRecord& rec, std::string& to_client);

  Options options_;
  std::function<PolicyView()> policy_;
  DecisionSink* sink_;
  CredentialMinter minter_;
  std::function<int64_t()> clock_;
  std::shared_ptr<SessionState> state_;  // never null
  std::set<std::string> pending_lists_;  // serialized ids of tools/list requests in flight
  Stats stats_;
  // Client lines held until held_ticket_ is durable, in order; each held call's place in them.
  struct HeldCall {
    size_t begin = 0, end = 0;
    boost::json::value id;
    DecisionRecord rec;
  };
  std::string held_;
  std::vector<HeldCall> held_calls_;
  uint64_t held_ticket_ = 0;
};

// Host and port of a URL ("https://h:8443/x" -> h, 8443; default ports by scheme); false when
// `url` is not one.
bool parse_url_destination(std::string_view url, std::string& host, uint16_t& port);

}  // namespace outpost::broker
