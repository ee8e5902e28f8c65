// HTTPS to outpost-hub: one keep-alive connection (TLS 1.2 by mbedTLS, base/tls.h) that sends
// Beast HTTP/1.1 requests, as coroutines, with a deadline on each exchange. Used by the node's
// sync client (sync_client.h) and by the CLI's hub verbs (bundle publish, evidence pull).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"
#include "outpost/base/tls.h"

namespace outpost::sync {

// Where the hub is and how it is authenticated: a CA (and the URL's host checked against the
// certificate) and/or a pin of the hub's key.
struct HubEndpoint {
  std::string host;
  uint16_t port = 443;
  std::string ca_pem;
  std::string pin_sha256;
  // A role's credential (operator, responder, IAM: docs/hub.md "Roles"), sent as
  // `Authorization: Bearer` on every request; nodes send none.
  std::string bearer_token;
  std::string url() const { return "https://" + host + ":" + std::to_string(port); }
};

// "https://host:port" (a path is refused; only https).
Result<HubEndpoint> parse_hub_url(std::string_view url);

struct HubResponse {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct HubRequest {
  HubRequest() = default;
  HubRequest(std::string m, std::string t, std::string b = {}, std::string type = "application/json")
      : method(std::move(m)), target(std::move(t)), body(std::move(b)), content_type(std::move(type)) {}
  std::string method = "GET";
  std::string target;              // "/v1/..."
  std::string body;
  std::string content_type = "application/json";
  std::map<std::string, std::string> headers;
  std::chrono::milliseconds timeout{30000};
};

class HubConnection {
 public:
  HubConnection(boost::asio::any_io_executor ex, HubEndpoint endpoint, std::shared_ptr<tls::Context> tls)
      : ex_(std::move(ex)), endpoint_(std::move(endpoint)), tls_(std::move(tls)) {}
  static Result<std::shared_ptr<tls::Context>> make_tls(const HubEndpoint& endpoint);

  // Connects (and handshakes) when not connected, sends, reads the response. A transport
  // failure closes the connection (the next request reconnects); HTTP statuses are not errors.
  boost::asio::awaitable<Result<HubResponse>> request(HubRequest req);
  // The two halves of request(), for pipelining: responses come back in the order sent. A
  // failure of either closes the connection.
  boost::asio::awaitable<Result<void>> send(const HubRequest& req);
  boost::asio::awaitable<Result<HubResponse>> receive(std::chrono::milliseconds timeout);
  void close();
  const HubEndpoint& endpoint() const { return endpoint_; }

 private:
  boost::asio::awaitable<Result<void>> connect(std::chrono::steady_clock::time_point deadline);
  boost::asio::any_io_executor ex_;
  HubEndpoint endpoint_;
  std::shared_ptr<tls::Context> tls_;
  std::unique_ptr<tls::Stream> stream_;
  boost::beast::flat_buffer read_buffer_;  // bytes read past one response belong to the next
};

// One request on a fresh io_context, for the CLI.
Result<HubResponse> hub_request_blocking(const HubEndpoint& endpoint, HubRequest req);

// "HTTP 409: fork at seq 12 ..." from a response the caller did not expect.
Error hub_error(const HubResponse& r, std::string_view what);

}  // namespace outpost::sync
