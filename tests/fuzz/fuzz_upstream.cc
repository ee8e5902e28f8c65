// What a remote MCP server (and its authorization server) sends outpostd, as the upstream
// client parses it (runtime/upstream/). The first byte picks the parser:
//   0: text/event-stream, fed whole and again split at a point the input chooses: the same
//      events either way, none longer than the limit;
//   1: an application/json body: every message comes out as one line of JSON, parseable again;
//   2: an MCP server URL: the normalised text parses to itself, the Host header has no CR/LF;
//   3: authorization server metadata: accepted only with the expected issuer;
//   4: a token endpoint's answer: an accepted token is a header-safe value with a future expiry.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json.hpp>

#include "upstream/oauth.h"
#include "upstream/streamable_http.h"

using namespace outpost::upstream;

namespace {

constexpr size_t kMaxEvent = 4096;

bool same(const std::vector<SseParser::Event>& a, const std::vector<SseParser::Event>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].type != b[i].type || a[i].data != b[i].data || a[i].id != b[i].id) return false;
  }
  return true;
}

void sse(std::string_view in) {
  if (in.empty()) return;
  const size_t cut = static_cast<unsigned char>(in.front()) % in.size();
  in.remove_prefix(1);
  SseParser whole(kMaxEvent), split(kMaxEvent);
  std::vector<SseParser::Event> a, b;
  const bool ok_whole = static_cast<bool>(whole.feed(in, a));
  bool ok_split = static_cast<bool>(split.feed(in.substr(0, std::min(cut, in.size())), b));
  if (ok_split) ok_split = static_cast<bool>(split.feed(in.substr(std::min(cut, in.size())), b));
  for (const auto& e : a) {
    if (e.data.size() > kMaxEvent) __builtin_trap();
  }
  // A refusal may come at a different point in the split feed only when the limit is near.
  if (ok_whole && ok_split && !same(a, b)) __builtin_trap();
}

void body(std::string_view in) {
  std::string out;
  bool answered = false;
  std::string version;
  if (!append_messages(in, boost::json::value(1), out, answered, &version)) return;
  size_t start = 0;
  for (size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) {
    boost::system::error_code ec;
    const boost::json::value v = boost::json::parse(std::string_view(out).substr(start, nl - start), ec);
    if (ec || !v.is_object()) __builtin_trap();
  }
  if (start != out.size()) __builtin_trap();
  if (!answered && !version.empty()) __builtin_trap();
}

void url(std::string_view in) {
  auto u = parse_upstream_url(in);
  if (!u) return;
  if (!header_safe(u->authority) || u->host.empty() || u->port == 0 || u->target.empty() || u->target.front() != '/') {
    __builtin_trap();
  }
  auto again = parse_upstream_url(u->text);
  if (!again || again->text != u->text || again->host != u->host || again->port != u->port || again->tls != u->tls) {
    __builtin_trap();
  }
}

void metadata(std::string_view in) {
  static const std::string kIssuer = "https://as.example.com";
  auto m = parse_as_metadata(in, kIssuer);
  if (!m) return;
  if (m->issuer != kIssuer || !parse_upstream_url(m->token_endpoint)) __builtin_trap();
}

void token(std::string_view in) {
  if (in.empty()) return;
  const unsigned status = static_cast<unsigned char>(in.front()) % 2 == 0 ? 200 : 400;
  auto t = parse_token_response(status, in.substr(1), 1000);
  if (!t) return;
  if (status != 200 || t->value.empty() || !header_safe(t->value) || t->expires_at <= 1000) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: sse(in); break;
    case 1: body(in); break;
    case 2: url(in); break;
    case 3: metadata(in); break;
    case 4: token(in); break;
  }
  return 0;
}
