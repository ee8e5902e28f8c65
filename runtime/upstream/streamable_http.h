// MCP's Streamable HTTP transport, the client's side, without I/O: what outpostd needs to carry
// one agent's stdio MCP connection to a remote server (docs/daemon.md, "Remote MCP servers").
//
// The transport (MCP 2025-03-26 and later): every JSON-RPC message the client sends is one HTTP
// POST to the server's one endpoint, with `Accept: application/json, text/event-stream`. A
// request is answered on its own POST, either as an application/json body (the response) or as
// a text/event-stream whose events carry JSON-RPC messages (progress, logging, requests of the
// server) and end with the response. A notification or a response is accepted with 202.
// Headers: Mcp-Session-Id, when the server gave one with its answer to `initialize`
// (2025-03-26 … 2025-11-25); MCP-Protocol-Version, the version negotiated (2025-06-18 and
// later); Mcp-Method and Mcp-Name, the request's method and the tool, prompt or resource it
// names (2026-07-28, which servers of earlier revisions ignore).
//
// Everything the server sends back is untrusted: the SSE parser and the body splitter bound what
// they hold, and every message is parsed and written out again as one line (a pretty-printed
// body must not become several stdio lines). tests/fuzz/fuzz_upstream.cc drives them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "outpost/base/result.h"

namespace outpost::upstream {

// A remote server's URL: https://host[:port]/path[?query], or http:// (outpostd allows plain
// HTTP only to a loopback address: docs/daemon.md).
struct UpstreamUrl {
  bool tls = false;
  std::string host;       // lower case; an IPv6 literal without brackets
  uint16_t port = 0;
  std::string target;     // origin form: "/mcp", "/mcp?x=1"
  std::string authority;  // the Host header: "host", "host:8443", "[::1]:8080"
  std::string text;       // the URL as normalised: the RFC 8707 resource indicator
  bool is_ip = false;
};
Result<UpstreamUrl> parse_upstream_url(std::string_view url);

// text/event-stream (WHATWG HTML, "Server-sent events", interpreting an event stream),
// incrementally: bytes in any split, lines ended by CRLF, LF or CR.
class SseParser {
 public:
  struct Event {
    std::string type;  // "message" when the event names none
    std::string data;  // the data lines joined by '\n'
    std::string id;
  };
  explicit SseParser(size_t max_event_bytes) : max_(max_event_bytes) {}
  // Appends the events completed by `bytes`; an error when one grows past the limit (the
  // stream cannot be resynchronised after that: drop the connection).
  Result<void> feed(std::string_view bytes, std::vector<Event>& out);
  const std::string& last_event_id() const { return last_id_; }

 private:
  Result<void> scan(std::string_view bytes, std::vector<Event>& out);
  Result<void> line(std::string_view l, std::vector<Event>& out);
  size_t max_;
  std::string partial_;        // a line not yet ended
  bool after_cr_ = false;      // the last byte was CR: a following LF ends nothing
  bool started_ = false;       // a leading BOM has been looked for
  size_t bom_matched_ = 0;
  std::string type_, data_, id_, last_id_;
  bool has_data_ = false;
};

// What a line the agent sent is, for the POST that carries it.
struct Outgoing {
  bool request = false;     // a method and an id: its answer comes back on this POST
  bool initialize = false;  // the `initialize` request (its answer brings the session)
  boost::json::value id;    // of a request
  std::string method;       // empty for a response
  std::string name;         // Mcp-Name: params.name (tools/call, prompts/get), params.uri (resources/read)
  std::string credential;   // the call's credential, when the broker put one in params._meta
};
// The relay passes on only lines the broker parsed, so an error here is a broker bug or a batch.
Result<Outgoing> classify_outgoing(std::string_view line);

// A header value outpostd may send as it is: printable ASCII, no CR or LF, at most 1 KiB.
bool header_safe(std::string_view value);
// Mcp-Name's value (MCP 2026-07-28): the name as it is when header_safe, without leading or
// trailing space and not itself of the form "=?base64?…?="; otherwise that form, base64 of its
// UTF-8 bytes.
std::string mcp_name_header(std::string_view name);

// The name of the header an HTTP server reads the call-scoped credential from (a manifest's
// `credential_header`), checked: an RFC 9110 token, not one the transport itself sets;
// "Authorization" in any case comes back spelled so.
Result<std::string> credential_header_name(std::string_view name);

// The messages of an application/json body (one message, or an array of them) or of one SSE
// event's data, each appended to `out` as one line ending in '\n'. An event with no data is
// nothing. `answered` is set when one of them is the response to `id` (null id: never).
Result<void> append_messages(std::string_view json_text, const boost::json::value& id, std::string& out,
                             bool& answered, std::string* protocol_version = nullptr);

// What outpostd carries of a server's capabilities (an InitializeResult's or a server/discover
// result's `capabilities`) across a bridge between MCP's session era and 2026-07-28: tools,
// prompts, resources and completions as the server states them, without `listChanged` and
// `subscribe` (neither the bridge's notifications nor subscriptions/listen are carried), and
// nothing else (no logging, tasks or experimental). A missing or malformed value gives {}.
boost::json::object carried_capabilities(const boost::json::value* capabilities);

// Answers to a request the server did not answer: a JSON-RPC error, or for `tools/call` a
// CallToolResult marked isError (what the broker's own denials look like to the agent).
std::string failure_line(const Outgoing& request, std::string_view why);

}  // namespace outpost::upstream
