#include "hub_client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "outpost/base/errors.h"

namespace outpost::sync {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

}  // namespace

Result<HubEndpoint> parse_hub_url(std::string_view url) {
  constexpr std::string_view scheme = "https://";
  if (url.substr(0, scheme.size()) != scheme) {
    return fail(errc::invalid_argument, "hub URL \"" + std::string(url) + "\": only https:// is supported");
  }
  std::string_view rest = url.substr(scheme.size());
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) {
    return fail(errc::invalid_argument, "hub URL \"" + std::string(url) + "\": give only https://host:port");
  }
  HubEndpoint e;
  auto colon = rest.rfind(':');
  if (colon == std::string_view::npos) {
    e.host = std::string(rest);
  } else {
    e.host = std::string(rest.substr(0, colon));
    std::string port(rest.substr(colon + 1));
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p < 1 || p > 65535) {
      return fail(errc::invalid_argument, "hub URL \"" + std::string(url) + "\": bad port");
    }
    e.port = static_cast<uint16_t>(p);
  }
  if (e.host.empty()) return fail(errc::invalid_argument, "hub URL \"" + std::string(url) + "\": no host");
  return e;
}

Result<std::shared_ptr<tls::Context>> HubConnection::make_tls(const HubEndpoint& endpoint) {
  tls::ClientConfig c;
  c.ca_pem = endpoint.ca_pem;
  c.pin_sha256 = endpoint.pin_sha256;
  c.server_name = endpoint.host;
  auto r = tls::Context::client(c);
  if (!r) return fail(r.error().wrap("hub " + endpoint.url()));
  return r;
}

void HubConnection::close() {
  read_buffer_.clear();
  if (!stream_) return;
  boost::system::error_code ignored;
  stream_->socket().close(ignored);
  stream_.reset();
}

asio::awaitable<Result<void>> HubConnection::connect(std::chrono::steady_clock::time_point deadline) {
  asio::ip::tcp::resolver resolver(ex_);
  auto [rec, endpoints] = co_await resolver.async_resolve(endpoint_.host, std::to_string(endpoint_.port), kNoThrow);
  if (rec) co_return fail(errc::io, "hub " + endpoint_.url() + ": resolve: " + rec.message());
  asio::ip::tcp::socket socket(ex_);
  {
    tls::SocketDeadline dog(socket, deadline);
    auto [cec, ep] = co_await asio::async_connect(socket, endpoints, kNoThrow);
    if (cec) co_return fail(errc::io, "hub " + endpoint_.url() + ": connect: " + (dog.fired() ? "timed out" : cec.message()));
  }
  socket.set_option(asio::ip::tcp::no_delay(true));
  auto stream = std::make_unique<tls::Stream>(std::move(socket), tls_);
  tls::SocketDeadline dog(stream->socket(), deadline);
  auto hs = co_await stream->handshake();
  if (!hs) co_return fail(hs.error().wrap("hub " + endpoint_.url() + (dog.fired() ? " (timed out)" : "")));
  stream_ = std::move(stream);
  co_return ok();
}

asio::awaitable<Result<void>> HubConnection::send(const HubRequest& req) {
  const auto deadline = std::chrono::steady_clock::now() + req.timeout;
  if (!stream_) {
    auto c = co_await connect(deadline);
    if (!c) co_return fail(c.error());
  }
  http::request<http::string_body> msg{req.method == "POST"  ? http::verb::post
                                       : req.method == "PUT" ? http::verb::put
                                                             : http::verb::get,
                                       req.target, 11};
  msg.set(http::field::host, endpoint_.host);
  msg.set(http::field::user_agent, "outpost");
  if (!endpoint_.bearer_token.empty()) msg.set(http::field::authorization, "Bearer " + endpoint_.bearer_token);
  for (const auto& [k, v] : req.headers) msg.set(k, v);
  if (!req.body.empty() || req.method != "GET") {
    msg.set(http::field::content_type, req.content_type);
    msg.body() = req.body;
    msg.prepare_payload();
  }
  msg.keep_alive(true);
  tls::SocketDeadline dog(stream_->socket(), deadline);
  auto [ec, n] = co_await http::async_write(*stream_, msg, kNoThrow);
  if (ec) {
    close();
    co_return fail(errc::io, "hub " + endpoint_.url() + req.target + ": send: " + (dog.fired() ? "timed out" : ec.message()));
  }
  co_return ok();
}

asio::awaitable<Result<HubResponse>> HubConnection::receive(std::chrono::milliseconds timeout) {
  if (!stream_) co_return fail(errc::io, "hub " + endpoint_.url() + ": not connected");
  tls::SocketDeadline dog(stream_->socket(), std::chrono::steady_clock::now() + timeout);
  http::response_parser<http::string_body> parser;
  parser.body_limit(256u << 20);
  auto [ec, n] = co_await http::async_read(*stream_, read_buffer_, parser, kNoThrow);
  if (ec) {
    close();
    co_return fail(errc::io, "hub " + endpoint_.url() + ": " + (dog.fired() ? "timed out" : ec.message()));
  }
  auto res = parser.release();
  HubResponse out;
  out.status = res.result_int();
  out.body = std::move(res.body());
  for (const auto& f : res) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.headers[name] = std::string(f.value());
  }
  if (!res.keep_alive()) close();
  co_return out;
}

asio::awaitable<Result<HubResponse>> HubConnection::request(HubRequest req) {
  // A kept-alive connection the hub has closed fails on first use; one fresh retry then.
  for (int attempt = 0;; ++attempt) {
    const bool reused = stream_ != nullptr;
    const auto started = std::chrono::steady_clock::now();
    // (No co_await inside a conditional expression or a call's argument list: GCC 12 destroys
    // their temporaries twice.)
    auto sent = co_await send(req);
    std::optional<Result<HubResponse>> r;
    if (sent) {
      auto received = co_await receive(req.timeout);  // not an argument: see above
      r.emplace(std::move(received));
    } else {
      r.emplace(fail(sent.error()));
    }
    const bool quick = std::chrono::steady_clock::now() - started < req.timeout / 2;
    if (*r || !reused || attempt > 0 || !quick) co_return std::move(*r);
  }
}

Result<HubResponse> hub_request_blocking(const HubEndpoint& endpoint, HubRequest req) {
  OUTPOST_TRY(auto tls, HubConnection::make_tls(endpoint));
  asio::io_context io;
  std::optional<Result<HubResponse>> out;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        HubConnection c(io.get_executor(), endpoint, tls);
        auto r = co_await c.request(std::move(req));
        out.emplace(std::move(r));
        c.close();
      },
      asio::detached);
  io.run();
  if (!out) return fail(errc::io, "hub " + endpoint.url() + ": request did not complete");
  return std::move(*out);
}

Error hub_error(const HubResponse& r, std::string_view what) {
  std::string text = r.body;
  if (text.size() > 300) text = text.substr(0, 300) + "…";
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return Error(make_error_code(r.status == 404 ? errc::not_found
                               : r.status == 409 || r.status == 422 ? errc::verification_failed
                                                                    : errc::io),
               std::string(what) + ": hub answered HTTP " + std::to_string(r.status) + (text.empty() ? "" : ": " + text));
}

}  // namespace outpost::sync
