// What an HTTP agent POSTs to outpostd's MCP endpoint (runtime/broker/http_endpoint.h), as
// check_post judges it before anything reaches the relay. The first two bytes give the lengths
// of the Mcp-Method and Mcp-Name header values that follow; the rest is the body.
// Properties: an accepted message is one line of JSON that parses to an object; a routing
// header that is given names exactly what the body names.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <boost/json.hpp>

#include "broker/http_endpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t method_len = static_cast<uint8_t>(in[0]) % 32, name_len = static_cast<uint8_t>(in[1]) % 32;
  in.remove_prefix(2);
  const std::string_view method = in.substr(0, method_len);
  in.remove_prefix(method.size());
  const std::string_view name = in.substr(0, name_len);
  in.remove_prefix(name.size());
  const outpost::broker::PostCheck c = outpost::broker::check_post(in, method, name);
  if (!c.ok) {
    if (c.why.empty() || c.status != 400) std::abort();
    return 0;
  }
  if (c.line.find('\n') != std::string::npos) std::abort();
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(c.line, ec);
  if (ec || !v.is_object()) std::abort();
  if (!method.empty() && method != c.method) std::abort();
  if (c.initialize && (!c.request || c.method != "initialize")) std::abort();
  return 0;
}
