// outpostd's Prometheus endpoint: `GET /metrics` over plain HTTP on a loopback address
// (config `metrics.listen`; docs/daemon.md, "Metrics"). One request per connection, 8 KiB of
// head at most, 5 s for the whole exchange, 8 connections at once (more are closed unread):
// a scraper every few seconds, not a web server. The exposition is rendered per request on
// the caller's io_context thread by `render`.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "outpost/base/result.h"

namespace outpost::daemon {

// "127.0.0.1:9464", "[::1]:9464": the endpoint, or why it is not a loopback address with a
// port (0 allowed: any free one). What `metrics.listen` is checked with, and what start() binds.
Result<boost::asio::ip::tcp::endpoint> loopback_endpoint(const std::string& listen);

class MetricsListener {
 public:
  // listen: "127.0.0.1:9464", "[::1]:9464" (port 0: any free one, for tests).
  static Result<std::unique_ptr<MetricsListener>> start(boost::asio::io_context& io, const std::string& listen,
                                                        std::function<std::string()> render);
  ~MetricsListener();  // stops accepting; open exchanges end with their deadline
  MetricsListener(const MetricsListener&) = delete;
  MetricsListener& operator=(const MetricsListener&) = delete;
  uint16_t port() const;

  struct Impl;

 private:
  explicit MetricsListener(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace outpost::daemon
