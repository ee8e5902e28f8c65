// What an HTTP agent POSTs to outpostd's MCP endpoint (runtime/broker/http_endpoint.h), as
// check_post judges it before anything reaches the relay, and the same bytes as a server's line
// that complete_result marks for a 2026-07-28 client. The first two bytes give the lengths
// (mod 32) of the Mcp-Method and Mcp-Name header values that follow, and the first byte's top
// bits which MCP-Protocol-Version is sent (none, 2025-11-25, 2026-07-28, 2027-01-01); the rest
// is the body.
// Properties: an accepted message is one line of JSON that parses to an object; a routing
// header that is given names exactly what the body names (unless the request is of a revision
// answered as unsupported); an accepted 2026-07-28 request carries Mcp-Method. A marked line is still JSON, only longer.
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
  constexpr const char* kVersions[] = {"", "2025-11-25", "2026-07-28", "2027-01-01"};
  const size_t method_len = static_cast<uint8_t>(in[0]) % 32, name_len = static_cast<uint8_t>(in[1]) % 32;
  const std::string_view version = kVersions[(static_cast<uint8_t>(in[0]) / 32) % 4];
  in.remove_prefix(2);
  const std::string_view method = in.substr(0, method_len);
  in.remove_prefix(method.size());
  const std::string_view name = in.substr(0, name_len);
  in.remove_prefix(name.size());
  boost::system::error_code ec;
  const std::string marked = outpost::broker::complete_result(in, name_len % 2 == 1);
  if (marked != in) {
    if (marked.size() <= in.size()) std::abort();
    boost::json::value m = boost::json::parse(marked, ec);
    if (ec || !m.is_object()) std::abort();
  }
  const outpost::broker::PostCheck c = outpost::broker::check_post(in, method, name, version);
  if (!c.ok) {
    if (c.why.empty() || c.status != 400) std::abort();
    return 0;
  }
  // A revision it does not speak is answered with the versions served before anything else
  // is judged (its headers are that revision's business), and nothing of it is forwarded.
  if (c.unsupported) {
    if (!c.modern || !c.line.empty()) std::abort();
    return 0;
  }
  if (c.line.find('\n') != std::string::npos) std::abort();
  if (c.modern && c.request && (method.empty() || c.version != "2026-07-28")) std::abort();
  boost::json::value v = boost::json::parse(c.line, ec);
  if (ec || !v.is_object()) std::abort();
  if (!method.empty() && method != c.method) std::abort();
  if (c.initialize && (!c.request || c.method != "initialize")) std::abort();
  return 0;
}
