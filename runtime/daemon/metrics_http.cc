#include "daemon/metrics_http.h"

#include <algorithm>
#include <atomic>
#include <chrono>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "outpost/base/errors.h"
#include "outpost/base/metrics.h"

namespace outpost::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using asio::ip::tcp;

namespace {
constexpr size_t kMaxConnections = 8;
constexpr auto kDeadline = std::chrono::seconds(5);
}  // namespace

struct MetricsListener::Impl : std::enable_shared_from_this<MetricsListener::Impl> {
  Impl(asio::io_context& io, std::function<std::string()> r) : acceptor(io), retry(io), render(std::move(r)) {}
  tcp::acceptor acceptor;
  asio::steady_timer retry;  // after a failed accept (EMFILE): the backlog would fail again at once
  int backoff_ms = 0;
  std::function<std::string()> render;
  std::atomic<size_t> open{0};
  bool stopped = false;

  struct Exchange {
    explicit Exchange(tcp::socket s) : stream(std::move(s)) {}
    beast::tcp_stream stream;
    beast::flat_buffer buf;
    http::request_parser<http::empty_body> parser;
    http::response<http::string_body> res;
  };

  void accept() {
    acceptor.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket s) {
      if (self->stopped || ec == asio::error::operation_aborted) return;
      if (ec) {
        // Out of descriptors: the connection stays in the backlog and would fail the next
        // accept too; wait (50 ms, doubling to 2 s) instead of spinning the daemon's loop.
        self->backoff_ms = std::clamp(self->backoff_ms * 2, 50, 2000);
        self->retry.expires_after(std::chrono::milliseconds(self->backoff_ms));
        self->retry.async_wait([self](const boost::system::error_code& wec) {
          if (!wec && !self->stopped) self->accept();
        });
        return;
      }
      self->backoff_ms = 0;
      if (self->open.load() >= kMaxConnections) {
        boost::system::error_code ignored;
        s.close(ignored);
      } else {
        self->serve(std::make_shared<Exchange>(std::move(s)));
      }
      self->accept();
    });
  }

  void serve(std::shared_ptr<Exchange> x) {
    open.fetch_add(1);
    x->parser.header_limit(8 * 1024);
    x->stream.expires_after(kDeadline);
    http::async_read(x->stream, x->buf, x->parser, [self = shared_from_this(), x](const boost::system::error_code& ec, size_t) {
      if (ec) {
        self->done(*x);
        return;
      }
      const auto& req = x->parser.get();
      x->res.version(11);
      x->res.set(http::field::connection, "close");
      if (req.target() != "/metrics") {
        x->res.result(http::status::not_found);
        x->res.body() = "outpostd serves /metrics only\n";
      } else if (req.method() != http::verb::get && req.method() != http::verb::head) {
        x->res.result(http::status::method_not_allowed);
        x->res.set(http::field::allow, "GET, HEAD");
      } else {
        x->res.result(http::status::ok);
        x->res.set(http::field::content_type, metrics::kContentType);
        x->res.body() = self->render();
      }
      x->res.prepare_payload();
      if (req.method() == http::verb::head) x->res.body().clear();
      http::async_write(x->stream, x->res, [self, x](const boost::system::error_code&, size_t) { self->done(*x); });
    });
  }

  void done(Exchange& x) {
    boost::system::error_code ignored;
    x.stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    x.stream.close();
    open.fetch_sub(1);
  }
};

Result<tcp::endpoint> loopback_endpoint(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return fail(errc::invalid_argument, "metrics.listen: no port in \"" + listen + "\"");
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec || !address.is_loopback()) return fail(errc::invalid_argument, "metrics.listen: not a loopback address: " + listen);
  const std::string port = listen.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) > 65535) {
    return fail(errc::invalid_argument, "metrics.listen: bad port in " + listen);
  }
  return tcp::endpoint(address, static_cast<uint16_t>(std::stoul(port)));
}

Result<std::unique_ptr<MetricsListener>> MetricsListener::start(asio::io_context& io, const std::string& listen,
                                                                std::function<std::string()> render) {
  OUTPOST_TRY(tcp::endpoint ep, loopback_endpoint(listen));
  auto impl = std::make_shared<Impl>(io, std::move(render));
  boost::system::error_code ec;
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(16, ec);
  if (ec) return fail(errc::io, "metrics: listen on " + listen + ": " + ec.message());
  impl->accept();
  return std::unique_ptr<MetricsListener>(new MetricsListener(std::move(impl)));
}

MetricsListener::~MetricsListener() {
  // On the io thread's terms: the acceptor is closed there, so no handler races the close.
  asio::post(impl_->acceptor.get_executor(), [impl = impl_] {
    impl->stopped = true;
    boost::system::error_code ignored;
    impl->acceptor.close(ignored);
    impl->retry.cancel();
  });
}

uint16_t MetricsListener::port() const {
  boost::system::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

}  // namespace outpost::daemon
