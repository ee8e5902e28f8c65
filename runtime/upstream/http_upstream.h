// A remote MCP server as the broker's relay sees a local one: lines in, lines out.
//
// The relay (broker/relay.h) decides each client line and writes what it passes to the
// server's stdin; for a `url:` server that "stdin" is a pipe read by HttpUpstream, which
// carries each line to the server over Streamable HTTP (streamable_http.h) and writes every
// message the server sends back, one line each, to the pipe the relay reads as the server's
// stdout. The relay's decisions, filtering and records are thus the same for both transports.
//
// Each request is its own POST, in flight at once with the others (a long tool call does not
// hold up the next), over a small pool of keep-alive connections. Every new connection is an
// egress decision of the bundle for the agent (Hooks::connect: decided on the name and again on
// the resolved address, recorded), then TCP, then TLS (mbedTLS, the system CA store or the
// manifest's pinned CA, host name checked). Plain HTTP is allowed only when the address
// decided on is loopback. The Authorization header comes from Hooks::authorization (oauth.h);
// a 401 fetches a fresh one and retries once.
//
// One thread: run() drives a private io_context until the relay closes the input and every
// request has its answer, or stop() is called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/ip/tcp.hpp>

#include "outpost/base/result.h"
#include "outpost/base/tls.h"
#include "upstream/oauth.h"
#include "upstream/streamable_http.h"

namespace outpost::upstream {

struct UpstreamHooks {
  // The address to connect to for host:port, once the bundle allows it (and the decision is
  // recorded); an error refuses. `path` is for the record. May block (resolution, fdatasync).
  std::function<Result<boost::asio::ip::tcp::endpoint>(const std::string& host, uint16_t port, const std::string& path)> connect;
  // The Authorization header's value ("" for none); `refresh` after a 401. May block.
  std::function<Result<std::string>(bool refresh)> authorization;
};

struct UpstreamOptions {
  // For an https:// server: its TLS context (tls_context() below), handed to run()'s thread.
  std::shared_ptr<tls::Context> tls;
  size_t max_message = 4 << 20;    // a message (one line) from the server
  size_t max_in_flight = 64;       // requests at once; the relay's lines wait beyond that
  size_t max_idle = 8;             // keep-alive connections kept
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds request_timeout{600'000};  // a request until its answer ends (long tools)
  // A call that carries a call-scoped credential (the policy asked for one: credential_ttl)
  // also sends it as this header (a manifest's `credential_header`); "Authorization" sends it
  // as a bearer token (only for a server with no `auth`). Empty: only in params._meta.
  std::string credential_header;
};

// The TLS client context for `url` (null for http://): the CAs of `ca_pem` (a bundle, such as
// the system's, or one pinned CA), the URL's host checked against the certificate.
Result<std::shared_ptr<tls::Context>> tls_context(const UpstreamUrl& url, const std::string& ca_pem);

// One exchange, synchronous, with its own io_context: for the authorization server (oauth.h).
// The destination goes through `connect` like the MCP server's.
Result<HttpAnswer> http_exchange(const HttpExchange& request, const UpstreamHooks& hooks, const std::string& ca_pem,
                                 std::chrono::milliseconds timeout, size_t max_body = 1 << 20);

class HttpUpstream {
 public:
  HttpUpstream(UpstreamUrl url, UpstreamOptions options, UpstreamHooks hooks);
  ~HttpUpstream();
  HttpUpstream(const HttpUpstream&) = delete;
  HttpUpstream& operator=(const HttpUpstream&) = delete;

  // Takes ownership of both fds: reads lines from `in_fd` (the relay's server_in pipe), writes
  // lines to `out_fd` (the relay's server_out), and closes out_fd when done.
  Result<void> run(int in_fd, int out_fd);
  // Ends run() soon: every connection is closed, unanswered requests are dropped.
  void stop();

  struct Stats {
    uint64_t posts = 0, connections = 0, retried_401 = 0, failed = 0, sse_streams = 0;
    uint64_t modern = 0;  // 1 when the server speaks MCP 2026-07-28 (stateless) to outpostd
  };
  Stats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::upstream
