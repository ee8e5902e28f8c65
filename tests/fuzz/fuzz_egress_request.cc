// The egress proxy's reading of an agent's request (runtime/egress/proxy.h): Beast's parser
// over the request head and body, with the proxy's limits, then the proxy's own parse of the
// target. Whatever an agent sends, a parsed target is a clean host (lower case, no trailing
// dot, name characters or an address) and a port in 1..65535, or nothing; nothing crashes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "egress/proxy.h"

namespace http = boost::beast::http;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  http::request_parser<http::string_body> parser;
  parser.header_limit(64 << 10);
  parser.body_limit(1 << 20);
  parser.eager(true);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(data, size), ec);
  if (!parser.is_header_done()) return 0;
  const auto& req = parser.get();
  const std::string_view target(req.target().data(), req.target().size());
  auto t = outpost::egress::parse_proxy_target(target, req.method() == http::verb::connect);
  if (!t) return 0;
  if (t->port == 0 || t->host.empty() || t->host.back() == '.') std::abort();
  for (char c : t->host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
                    (t->is_ip && (c == ':' || (c >= 'A' && c <= 'F')));
    if (!ok) std::abort();
  }
  return 0;
}
