#include "upstream/streamable_http.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include <boost/asio/ip/address.hpp>
#include <boost/json.hpp>

#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"

namespace outpost::upstream {

namespace json = boost::json;

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Failure bad_url(std::string_view url, std::string_view why) {
  return fail(errc::invalid_argument, "MCP server URL \"" + std::string(url.substr(0, 200)) + "\": " + std::string(why));
}

}  // namespace

Result<UpstreamUrl> parse_upstream_url(std::string_view url) {
  UpstreamUrl u;
  std::string_view rest;
  if (url.substr(0, 8) == "https://") {
    u.tls = true;
    rest = url.substr(8);
  } else if (url.substr(0, 7) == "http://") {
    rest = url.substr(7);
  } else {
    return bad_url(url, "not an https:// or http:// URL");
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return bad_url(url, "has spaces or characters outside printable ASCII");
    }
  }
  if (url.find('#') != std::string_view::npos) return bad_url(url, "has a fragment");
  const size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  std::string_view target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) return bad_url(url, "carries user information (put credentials in auth:)");
  std::string_view host = authority, port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad_url(url, "an IPv6 address without its ']'");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad_url(url, "junk after the IPv6 address");
      port = after.substr(1);
    }
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address_v6(std::string(host), ec);
    if (ec) return bad_url(url, "not an IPv6 address in brackets");
    u.is_ip = true;
  } else {
    const size_t colon = authority.rfind(':');
    if (colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
    }
    for (char c : host) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) {
        return bad_url(url, "the host is not a DNS name or an address");
      }
    }
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address_v4(std::string(host), ec);
    u.is_ip = !ec;
  }
  if (host.empty() || host.size() > 253) return bad_url(url, "has no host");
  u.host = lower(host);
  // A name of labels, none empty ("." alone, "..", a leading dot; found by fuzz_upstream); one
  // trailing dot (the root) is dropped.
  if (!u.is_ip && (u.host.front() == '.' || u.host.find("..") != std::string::npos)) {
    return bad_url(url, "the host is not a DNS name or an address");
  }
  if (!u.is_ip && u.host.back() == '.') u.host.pop_back();
  u.port = u.tls ? 443 : 80;
  if (!port.empty()) {
    unsigned v = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535) return bad_url(url, "bad port");
    u.port = static_cast<uint16_t>(v);
  }
  u.target = target.front() == '?' ? "/" + std::string(target) : std::string(target);
  const bool default_port = u.port == (u.tls ? 443 : 80);
  const std::string h = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
  u.authority = default_port ? h : h + ":" + std::to_string(u.port);
  u.text = std::string(u.tls ? "https://" : "http://") + u.authority + u.target;
  return u;
}

// ---- text/event-stream ----

Result<void> SseParser::feed(std::string_view bytes, std::vector<Event>& out) {
  if (!started_) {
    // One UTF-8 BOM may begin the stream, itself split across reads.
    static constexpr std::string_view kBom = "\xEF\xBB\xBF";
    while (!bytes.empty() && bom_matched_ < 3 && bytes.front() == kBom[bom_matched_]) {
      ++bom_matched_;
      bytes.remove_prefix(1);
    }
    if (bom_matched_ == 3) {
      started_ = true;
    } else if (!bytes.empty()) {
      started_ = true;  // not a BOM after all: what matched is text
      if (bom_matched_ > 0) OUTPOST_TRY_VOID(scan(kBom.substr(0, bom_matched_), out));
    } else {
      return ok();
    }
  }
  return scan(bytes, out);
}

Result<void> SseParser::scan(std::string_view bytes, std::vector<Event>& out) {
  size_t start = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (c != '\r' && c != '\n') continue;
    if (c == '\n' && after_cr_ && i == start && partial_.empty()) {
      after_cr_ = false;  // the LF of a CRLF
      start = i + 1;
      continue;
    }
    after_cr_ = c == '\r';
    std::string_view piece = bytes.substr(start, i - start);
    if (partial_.empty()) {
      OUTPOST_TRY_VOID(line(piece, out));
    } else {
      partial_.append(piece);
      std::string l = std::move(partial_);
      partial_.clear();
      OUTPOST_TRY_VOID(line(l, out));
    }
    start = i + 1;
  }
  if (start < bytes.size()) {
    after_cr_ = false;
    partial_.append(bytes.substr(start));
    if (partial_.size() + data_.size() > max_) {
      return fail(errc::corrupt, "an SSE event of the MCP server is longer than " + std::to_string(max_) + " bytes");
    }
  }
  return ok();
}

Result<void> SseParser::line(std::string_view l, std::vector<Event>& out) {
  if (l.empty()) {  // dispatch
    if (has_data_) {
      if (!data_.empty() && data_.back() == '\n') data_.pop_back();
      out.push_back(Event{type_.empty() ? "message" : type_, std::move(data_), last_id_});
    }
    data_.clear();
    type_.clear();
    has_data_ = false;
    return ok();
  }
  if (l.front() == ':') return ok();  // a comment (keep-alive)
  std::string_view field = l, value;
  if (const size_t colon = l.find(':'); colon != std::string_view::npos) {
    field = l.substr(0, colon);
    value = l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (data_.size() + value.size() + 1 > max_) {
      return fail(errc::corrupt, "an SSE event of the MCP server is longer than " + std::to_string(max_) + " bytes");
    }
    data_.append(value);
    data_.push_back('\n');
    has_data_ = true;
  } else if (field == "event") {
    type_ = std::string(value.substr(0, 256));
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_id_ = std::string(value.substr(0, 1024));
  }
  // "retry" and unknown fields: ignored, as the standard says.
  return ok();
}

// ---- messages ----

Result<Outgoing> classify_outgoing(std::string_view line) {
  boost::system::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec || !v.is_object()) return fail(errc::invalid_argument, "not a JSON-RPC message object");
  const json::object& o = v.as_object();
  Outgoing m;
  const json::value* method = o.if_contains("method");
  const json::value* id = o.if_contains("id");
  if (method != nullptr && method->is_string()) {
    m.method = std::string(method->as_string());
    if (id != nullptr && !id->is_null()) {
      m.request = true;
      m.id = *id;
    }
    m.initialize = m.request && m.method == "initialize";
    if (const json::value* params = o.if_contains("params"); params != nullptr && params->is_object()) {
      const char* key = m.method == "resources/read" ? "uri" : "name";
      if (m.method == "tools/call" || m.method == "prompts/get" || m.method == "resources/read") {
        if (const json::value* n = params->as_object().if_contains(key); n != nullptr && n->is_string()) {
          m.name = std::string(n->as_string());
        }
      }
      if (m.method == "tools/call") {
        const json::value* meta = params->as_object().if_contains("_meta");
        const json::value* cred = meta != nullptr && meta->is_object() ? meta->as_object().if_contains("outpost/credential") : nullptr;
        if (cred != nullptr && cred->is_string()) m.credential = std::string(cred->as_string());
      }
    }
  }
  return m;
}

bool header_safe(std::string_view value) {
  if (value.size() > 1024) return false;
  return std::all_of(value.begin(), value.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

std::string mcp_name_header(std::string_view name) {
  const bool sentinel = name.size() >= 11 && name.substr(0, 9) == "=?base64?" && name.substr(name.size() - 2) == "?=";
  const bool padded = !name.empty() && (name.front() == ' ' || name.back() == ' ');
  if (header_safe(name) && !sentinel && !padded) return std::string(name);
  return "=?base64?" + base64_encode(as_bytes(name)) + "?=";
}

Result<std::string> credential_header_name(std::string_view name) {
  static constexpr std::string_view kTokenChars = "!#$%&'*+-.^_`|~";
  const bool token = !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || kTokenChars.find(c) != std::string_view::npos;
  });
  if (!token) return fail(errc::invalid_argument, "credential_header must be a header name (letters, digits, '-')");
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* taken : {"host", "content-length", "content-type", "transfer-encoding", "connection", "accept", "te", "upgrade",
                            "user-agent", "cookie", "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name"}) {
    if (lower == taken) return fail(errc::invalid_argument, "credential_header cannot be " + std::string(name) + ": the transport sets it");
  }
  return lower == "authorization" ? std::string("Authorization") : std::string(name);
}

namespace {

void append_one(const json::value& v, const json::value& id, std::string& out, bool& answered,
                std::string* protocol_version) {
  if (v.is_object()) {
    const json::object& o = v.as_object();
    if (!id.is_null() && !o.contains("method")) {
      if (const json::value* rid = o.if_contains("id"); rid != nullptr && *rid == id) {
        answered = true;
        if (protocol_version != nullptr) {
          if (const json::value* r = o.if_contains("result"); r != nullptr && r->is_object()) {
            // It becomes a header of every later request: only a value safe as one.
            if (const json::value* pv = r->as_object().if_contains("protocolVersion");
                pv != nullptr && pv->is_string() && header_safe(pv->as_string())) {
              *protocol_version = std::string(pv->as_string());
            }
          }
        }
      }
    }
  }
  out += json::serialize(v);
  out.push_back('\n');
}

}  // namespace

Result<void> append_messages(std::string_view json_text, const json::value& id, std::string& out, bool& answered,
                             std::string* protocol_version) {
  if (json_text.find_first_not_of(" \t\r\n") == std::string_view::npos) return ok();
  boost::system::error_code ec;
  json::value v = json::parse(json_text, ec);
  if (ec) return fail(errc::invalid_argument, "the MCP server sent a message that is not JSON: " + ec.message());
  if (v.is_array()) {
    for (const auto& e : v.as_array()) {
      if (!e.is_object()) return fail(errc::invalid_argument, "the MCP server sent a batch element that is not an object");
      append_one(e, id, out, answered, protocol_version);
    }
    return ok();
  }
  if (!v.is_object()) return fail(errc::invalid_argument, "the MCP server sent a JSON value that is not a message");
  append_one(v, id, out, answered, protocol_version);
  return ok();
}

boost::json::object carried_capabilities(const boost::json::value* capabilities) {
  boost::json::object caps;
  if (capabilities == nullptr || !capabilities->is_object()) return caps;
  for (const char* k : {"tools", "prompts", "resources", "completions"}) {
    const boost::json::value* v = capabilities->as_object().if_contains(k);
    if (v == nullptr || !v->is_object()) continue;
    boost::json::object kept = v->as_object();
    kept.erase("listChanged");
    kept.erase("subscribe");
    caps[k] = std::move(kept);
  }
  return caps;
}

std::string failure_line(const Outgoing& request, std::string_view why) {
  const std::string text = "outpost: " + std::string(why);
  json::object o{{"jsonrpc", "2.0"}, {"id", request.id}};
  if (request.method == "tools/call") {
    json::object t{{"type", "text"}, {"text", text}};
    o["result"] = json::object{{"content", json::array{t}}, {"isError", true}};
  } else {
    o["error"] = json::object{{"code", -32603}, {"message", text}};
  }
  return json::serialize(o) + "\n";
}

}  // namespace outpost::upstream
