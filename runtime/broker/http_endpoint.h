// The agent-facing end of MCP's Streamable HTTP transport: what an agent whose MCP client speaks
// HTTP reaches at http://127.0.0.1:PORT/mcp/SERVER inside its own network namespace
// (docs/daemon.md, "HTTP agents"). Every message goes through the same broker relay as
// `outpost mcp connect` (the stdio road): HttpEndpointHooks::open gives one relay connection per
// MCP session, and the endpoint turns HTTP requests into its lines and its lines back into
// HTTP answers. Decisions, list filtering, credentials and records are thus the same for both.
//
// The agent is the listener its connection arrived on (a listener lives in one agent's
// namespace), as the stdio road identifies it by pid.
//
// Protocol, two eras on the same path:
// MCP 2025-03-26 … 2025-11-25 (sessions):
//   POST   one JSON-RPC message (no batches). `initialize` opens a session and its answer
//          carries Mcp-Session-Id; every later message must carry that id (400 without, 404
//          for one the endpoint does not know or has ended). A request is answered as a
//          text/event-stream that carries the server's messages for it (its progress, and
//          whatever else is unclaimed when no GET stream is open) and ends with its response
//          (one sized body when the response is all there is);
//          a notification or response is taken with 202.
//   GET    the session's standalone event stream: the server's requests and notifications
//          that belong to no open request (one at a time: 409 for a second).
//   DELETE ends the session: the relay and the server behind it.
// MCP 2026-07-28 (stateless): a request carries its version and capabilities in
//   params._meta and MCP-Protocol-Version, Mcp-Method and Mcp-Name in its headers; there is no
//   handshake and no session id. The endpoint serves it on a relay connection of its own for
//   the agent and server (HttpEndpoint keeps a few: a request goes to one where its id and
//   progress token are not in flight), which it initialized with 2025-11-25 and no client
//   capabilities, so the same relay decides and filters exactly as for a session.
//   `server/discover` is answered from that handshake, its capabilities cut to what the
//   endpoint carries; results are marked `"resultType":"complete"` (lists also
//   `ttlMs`/`cacheScope: private`, as they are filtered per agent); closing a request's stream
//   cancels it upstream. Methods 2026-07-28 removed or this endpoint does not carry
//   (ping, logging/setLevel, subscriptions/listen, resources/subscribe, tasks) get 404 with
//   -32601; the server's own requests on these connections (it was told the client has no
//   capabilities) are answered with -32601 too, and its unrelated notifications dropped.
// Checked on every request: Host and Origin name this loopback endpoint (DNS rebinding);
// Accept and Content-Type; MCP-Protocol-Version is one this endpoint speaks (else 2026-07-28's
// unsupported-version error, -32022 with the versions served); Mcp-Method and Mcp-Name
// (required on 2026-07-28 requests, base64 sentinel decoded) agree with the body (else -32020,
// HeaderMismatch), all before anything is decided.
//
// Threads: one event loop of its own runs every connection and session; `open` (which blocks:
// a server may be started) runs on a small pool beside it. Public methods are thread-safe and
// never wait for the loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "outpost/base/result.h"
#include "sandbox/sandbox.h"

namespace outpost::broker {

// One MCP connection through the broker, as `outpost mcp connect` hands the daemon: lines the
// agent sends go into `to_relay`, lines for the agent come out of `from_relay`. Closing
// `control` (and to_relay) ends it: the relay stops and the server behind it with it.
struct HttpChannel {
  sandbox::UniqueFd control;
  sandbox::UniqueFd to_relay;
  sandbox::UniqueFd from_relay;
};

struct HttpEndpointHooks {
  // Opens a relay connection of `agent` to its MCP server `server`. An error refuses the
  // session with its text (no such server, the agent is paused, too many connections). May
  // block; never called on the loop.
  std::function<Result<HttpChannel>(const std::string& agent, const std::string& server)> open;
};

struct HttpEndpointOptions {
  uint16_t port = 0;                     // the endpoint's port (Host and Origin must name it)
  size_t max_body = 4 << 20;             // one message from the agent
  size_t max_line = 4 << 20;             // one message from the relay
  size_t max_sessions_per_agent = 16;   // beyond: the least recently used idle one ends
  // Room for a client's keep-alive pool: undici, with 32 calls in flight, briefly holds up to
  // twice that (a socket is freed a tick after its response) plus a session's GET stream.
  size_t max_connections_per_agent = 128;
  size_t max_unclaimed = 256;            // server messages held for a GET stream not yet open
  std::chrono::milliseconds head_timeout{10'000};
  std::chrono::seconds idle_session{600};  // no request and no open stream: the session ends
};

class HttpEndpoint {
 public:
  static Result<std::unique_ptr<HttpEndpoint>> start(HttpEndpointOptions options, HttpEndpointHooks hooks);
  ~HttpEndpoint();  // ends every session and connection, then joins its threads
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Starts accepting on `listener` (listening, in the agent's namespace) for `agent`; replaces
  // an earlier listener of the agent.
  void serve(const std::string& agent, sandbox::UniqueFd listener);
  // Closes the agent's listener, its connections and its sessions.
  void stop_agent(const std::string& agent);

  struct Counters {
    uint64_t sessions = 0;   // opened
    uint64_t requests = 0;   // HTTP requests answered
    uint64_t refused = 0;    // of which refused (4xx)
    uint64_t open_sessions = 0;
  };
  Counters counters(const std::string& agent) const;

  struct Impl;

 private:
  explicit HttpEndpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What a POST's headers and body must agree on, checked before the message goes anywhere:
// the body is one JSON-RPC 2.0 message; Mcp-Method (when sent) is its method and Mcp-Name
// (when sent; `=?base64?…?=` decoded) its params.name (tools/call, prompts/get) or params.uri
// (resources/read). A 2026-07-28 request (its body's _meta names a protocol version, or
// `protocol_version` is 2026-07-28 or later) must also carry both headers and the version in
// both places, alike, and its client capabilities. Exposed for tests and the fuzz target.
struct PostCheck {
  bool ok = false;
  unsigned status = 400;
  int rpc_code = -32600;
  std::string why;
  // When ok:
  bool request = false;      // a method and an id
  bool initialize = false;
  bool modern = false;       // MCP 2026-07-28 or later: stateless
  bool unsupported = false;  // modern, of a revision this endpoint does not speak (-32022)
  std::string version;       // modern: the revision asked for
  std::string method;        // empty for a response
  std::string id_key;        // the id, serialised (requests and responses)
  std::string progress_key;  // params._meta.progressToken, serialised, when given
  std::string line;          // the message written compactly: one line for the relay
};
PostCheck check_post(std::string_view body, std::string_view mcp_method, std::string_view mcp_name,
                     std::string_view protocol_version = {});

// The MCP revisions this endpoint speaks (MCP-Protocol-Version): 2026-07-28 and the four
// before it.
bool supported_protocol_version(std::string_view version);

// A 2025-era server's response as a 2026-07-28 client must see it: its result marked
// "resultType":"complete" and, when `cacheable` (a list), "ttlMs":0 and "cacheScope":"private"
// (outpost filters lists per agent), fields the result already has left alone; every other
// byte as the server wrote it. Anything but a JSON-RPC result comes back unchanged.
std::string complete_result(std::string_view line, bool cacheable);

}  // namespace outpost::broker
