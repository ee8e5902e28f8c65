#include "credentials/jws.h"

#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>
#include <algorithm>
#include <cstring>
#include <array>
#include <charconv>
#include <cmath>
#include <optional>
#include <set>
#include <vector>

#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/time.h"

namespace outpost::credentials {
namespace {

namespace json = boost::json;

// ---- JSON: strict parsing ----

// A basic_parser handler that finds duplicate member names (one set per open object) and
// reads every double's text again with std::from_chars, which rounds correctly where
// boost::json 1.81 may be one ulp off ("333333333.33333329").
class StrictScan {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  std::string problem;          // why the scan stopped, when it was this handler's doing
  std::vector<double> doubles;  // in document order

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code&) {
    open_.emplace_back(std::nullopt);
    return true;
  }
  bool on_array_end(std::size_t, json::error_code&) {
    open_.pop_back();
    return true;
  }
  bool on_object_begin(json::error_code&) {
    open_.emplace_back(std::set<std::string>());
    return true;
  }
  bool on_object_end(std::size_t, json::error_code&) {
    open_.pop_back();
    return true;
  }
  bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_string(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    text_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    text_.append(s.data(), s.size());
    auto& names = open_.back();
    if (names && !names->insert(text_).second) return stop("member \"" + text_ + "\" appears twice", ec);
    text_.clear();
    return true;
  }
  bool on_number_part(json::string_view s, json::error_code&) {
    text_.append(s.data(), s.size());
    return true;
  }
  bool on_int64(int64_t, json::string_view, json::error_code&) { return number_done(); }
  bool on_uint64(uint64_t, json::string_view, json::error_code&) { return number_done(); }
  bool on_double(double, json::string_view s, json::error_code& ec) {
    text_.append(s.data(), s.size());
    double d = 0;
    auto [end, err] = std::from_chars(text_.data(), text_.data() + text_.size(), d);
    if (err != std::errc() || end != text_.data() + text_.size()) {
      return stop("number " + text_ + " is out of range for a double", ec);
    }
    doubles.push_back(d);
    return number_done();
  }
  bool on_bool(bool, json::error_code&) { return true; }
  bool on_null(json::error_code&) { return true; }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  bool number_done() {
    text_.clear();
    return true;
  }
  bool stop(std::string why, json::error_code& ec) {
    problem = std::move(why);
    ec = json::error::syntax;  // any error stops the parser; `problem` says why
    return false;
  }
  std::vector<std::optional<std::set<std::string>>> open_;  // nullopt for an array
  std::string text_;  // the member name or number being read
};

// Puts the correctly rounded doubles back, walking `v` in document order (boost::json keeps
// object members in the order parsed, and there are no duplicates to collapse). False when
// the two parses disagree on how many doubles there are, which they should never do.
bool replace_doubles(json::value& v, const std::vector<double>& doubles, size_t& next) {
  switch (v.kind()) {
    case json::kind::double_:
      if (next >= doubles.size()) return false;
      v = doubles[next++];
      return true;
    case json::kind::array:
      for (auto& e : v.get_array()) {
        if (!replace_doubles(e, doubles, next)) return false;
      }
      return true;
    case json::kind::object:
      for (auto& m : v.get_object()) {
        if (!replace_doubles(m.value(), doubles, next)) return false;
      }
      return true;
    default: return true;
  }
}

// ---- canonical JSON ----

// Decodes UTF-8 strictly (no overlong forms, no surrogates, nothing above U+10FFFF) into
// UTF-16 code units, the order JCS sorts member names by.
std::optional<std::u16string> utf16_of(std::string_view s) {
  std::u16string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (b0 < 0x80) {
      cp = b0;
      len = 1;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      cp = b0 & 0x1F;
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      cp = b0 & 0x0F;
      len = 3;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      cp = b0 & 0x07;
      len = 4;
    } else {
      return std::nullopt;
    }
    if (i + len > s.size()) return std::nullopt;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return std::nullopt;
      cp = cp << 6 | (b & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return std::nullopt;
    }
    if (cp >= 0x10000) {
      cp -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (cp >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (cp & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(cp));
    }
    i += len;
  }
  return out;
}

// Strict UTF-8 check without building anything; runs of ASCII are skipped eight bytes at a time
// (arguments are mostly ASCII, and this runs over every byte of every call's arguments).
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    while (i + 8 <= s.size()) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if ((w & 0x8080808080808080ull) != 0) break;
      i += 8;
    }
    if (i >= s.size()) break;
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    // A multi-byte sequence: the strict decoder decides.
    size_t len = 0;
    const auto b0 = static_cast<unsigned char>(s[i]);
    len = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
    if (!utf16_of(s.substr(i, std::min(len, s.size() - i)))) return false;
    i += len;
  }
  return true;
}

Result<void> append_string(std::string& out, std::string_view s) {
  if (!valid_utf8(s)) return fail(errc::invalid_argument, "a JSON string is not valid UTF-8");
  static constexpr char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out.push_back('"');
  size_t run = 0;  // start of the pending run of characters that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (u >= 0x20 && u != '"' && u != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (u) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        out += "\\u00";
        out.push_back(kHex[u >> 4]);
        out.push_back(kHex[u & 0xF]);
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
  return ok();
}

// ECMAScript Number::toString(x) for a finite double (ECMA-262 section 6.1.6.1.20), from the
// shortest round-trip digits std::to_chars gives.
Result<void> append_double(std::string& out, double d) {
  if (!std::isfinite(d)) return fail(errc::invalid_argument, "a JSON number is not finite");
  if (d == 0) {  // +0 and -0 alike
    out.push_back('0');
    return ok();
  }
  if (d < 0) {
    out.push_back('-');
    d = -d;
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  OUTPOST_CHECK(ec == std::errc(), "to_chars of a finite double");
  std::string_view sci(buf, static_cast<size_t>(end - buf));  // "d.ddde+XX"
  const size_t e_at = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e_at)) {
    if (c != '.') digits.push_back(c);
  }
  int exp10 = 0;
  std::from_chars(sci.data() + e_at + (sci[e_at + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exp10);
  const int k = static_cast<int>(digits.size());
  const int n = exp10 + 1;  // the value is 0.digits × 10^n
  if (k <= n && n <= 21) {
    out += digits;
    out.append(static_cast<size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out += digits.substr(0, static_cast<size_t>(n));
    out.push_back('.');
    out += digits.substr(static_cast<size_t>(n));
  } else if (-6 < n && n <= 0) {
    out += "0.";
    out.append(static_cast<size_t>(-n), '0');
    out += digits;
  } else {
    out.push_back(digits[0]);
    if (k > 1) {
      out.push_back('.');
      out += digits.substr(1);
    }
    out.push_back('e');
    out.push_back(n - 1 < 0 ? '-' : '+');
    out += std::to_string(std::abs(n - 1));
  }
  return ok();
}

constexpr int kMaxDepth = 64;

Result<void> append_canonical(std::string& out, const json::value& v, int depth) {
  if (depth > kMaxDepth) return fail(errc::invalid_argument, "JSON nests deeper than " + std::to_string(kMaxDepth));
  switch (v.kind()) {
    case json::kind::null: out += "null"; return ok();
    case json::kind::bool_: out += v.get_bool() ? "true" : "false"; return ok();
    case json::kind::int64: out += std::to_string(v.get_int64()); return ok();
    case json::kind::uint64: out += std::to_string(v.get_uint64()); return ok();
    case json::kind::double_: return append_double(out, v.get_double());
    case json::kind::string: return append_string(out, v.get_string());
    case json::kind::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v.get_array()) {
        if (!first) out.push_back(',');
        first = false;
        OUTPOST_TRY_VOID(append_canonical(out, e, depth + 1));
      }
      out.push_back(']');
      return ok();
    }
    case json::kind::object: {
      std::vector<std::pair<std::u16string, const json::key_value_pair*>> members;
      members.reserve(v.get_object().size());
      for (const auto& m : v.get_object()) {
        auto key = utf16_of(m.key());
        if (!key) return fail(errc::invalid_argument, "a JSON member name is not valid UTF-8");
        members.emplace_back(std::move(*key), &m);
      }
      std::sort(members.begin(), members.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out.push_back('{');
      bool first = true;
      for (const auto& [key, m] : members) {
        if (!first) out.push_back(',');
        first = false;
        OUTPOST_TRY_VOID(append_string(out, m->key()));
        out.push_back(':');
        OUTPOST_TRY_VOID(append_canonical(out, m->value(), depth + 1));
      }
      out.push_back('}');
      return ok();
    }
  }
  return fail(errc::invalid_argument, "unknown JSON value kind");
}

// ---- token parts ----

Failure malformed(std::string what) { return fail(errc::corrupt, "malformed token: " + std::move(what)); }
Failure refused(std::string what) { return fail(errc::verification_failed, std::move(what)); }

// "2026-11-28T10:05:00Z", or the raw number when it is outside what RFC 3339 can say.
std::string when(int64_t t) {
  if (t < 0 || t > 253402300799) return "Unix time " + std::to_string(t);
  return format_rfc3339_utc(t);
}

// base64url without padding, and canonical: decoding and encoding again gives the same text,
// so no stray low bits and no second spelling of the same bytes.
Result<Bytes> decode_part(std::string_view text, std::string_view part) {
  if (text.empty()) return malformed("the " + std::string(part) + " is empty");
  for (char c : text) {
    bool good = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!good) return malformed("the " + std::string(part) + " is not base64url without padding");
  }
  Result<Bytes> bytes = base64url_decode(text);
  if (!bytes || base64url_encode(*bytes) != text) {
    return malformed("the " + std::string(part) + " is not canonical base64url");
  }
  return bytes;
}

Result<json::object> decode_object(std::string_view text, std::string_view part) {
  OUTPOST_TRY(Bytes bytes, decode_part(text, part));
  Result<json::value> v = parse_json_strict(as_chars(bytes));
  if (!v) return malformed("the " + std::string(part) + " is not JSON (" + v.error().context() + ")");
  if (!v->is_object()) return malformed("the " + std::string(part) + " is not a JSON object");
  return std::move(v->as_object());
}

struct Parts {
  std::string_view header;
  std::string_view payload;
  std::string_view signature;
  std::string_view signing_input;  // header "." payload
};

Result<Parts> split(std::string_view token) {
  if (token.size() > kMaxTokenBytes) {
    return malformed("it is " + std::to_string(token.size()) + " bytes, over the limit of " +
                     std::to_string(kMaxTokenBytes));
  }
  if (token.empty()) return malformed("it is empty");
  const size_t a = token.find('.');
  const size_t b = a == std::string_view::npos ? a : token.find('.', a + 1);
  if (b == std::string_view::npos || token.find('.', b + 1) != std::string_view::npos) {
    return malformed("a compact JWS has exactly three parts separated by '.'");
  }
  Parts parts{token.substr(0, a), token.substr(a + 1, b - a - 1), token.substr(b + 1), token.substr(0, b)};
  // An empty signature is left to decode_part, after the header has said which algorithm.
  if (parts.header.empty()) return malformed("the header is empty");
  if (parts.payload.empty()) return malformed("the payload is empty");
  return parts;
}

Result<std::string> header_kid(const json::object& h) {
  for (const auto& m : h) {
    if (m.key() != "alg" && m.key() != "typ" && m.key() != "kid") {
      return refused("token header member \"" + std::string(m.key()) + "\" is not allowed (only alg, typ, kid)");
    }
  }
  const json::value* alg = h.if_contains("alg");
  if (alg == nullptr || !alg->is_string()) return refused("token header has no alg");
  if (alg->get_string() != "ES256") {
    return refused("token algorithm \"" + std::string(alg->get_string()) + "\" is not allowed (only ES256)");
  }
  const json::value* typ = h.if_contains("typ");
  if (typ == nullptr || !typ->is_string() || typ->get_string() != kTokenType) {
    return refused("token typ is not \"" + std::string(kTokenType) + "\"");
  }
  const json::value* kid = h.if_contains("kid");
  if (kid == nullptr || !kid->is_string() || kid->get_string().empty()) return refused("token header has no kid");
  return std::string(kid->get_string());
}

Result<std::string> string_claim(const json::object& c, std::string_view name) {
  const json::value* v = c.if_contains(name);
  if (v == nullptr) return malformed("claim " + std::string(name) + " is missing");
  if (!v->is_string()) return malformed("claim " + std::string(name) + " is not a string");
  if (v->get_string().empty()) return malformed("claim " + std::string(name) + " is empty");
  return std::string(v->get_string());
}

Result<uint64_t> unsigned_claim(const json::object& c, std::string_view name) {
  const json::value* v = c.if_contains(name);
  if (v == nullptr) return malformed("claim " + std::string(name) + " is missing");
  if (v->is_uint64()) return v->get_uint64();
  if (v->is_int64() && v->get_int64() >= 0) return static_cast<uint64_t>(v->get_int64());
  return malformed("claim " + std::string(name) + " is not a non-negative integer");
}

Result<int64_t> time_claim(const json::object& c, std::string_view name) {
  OUTPOST_TRY(uint64_t v, unsigned_claim(c, name));
  if (v > static_cast<uint64_t>(INT64_MAX)) return malformed("claim " + std::string(name) + " is out of range");
  return static_cast<int64_t>(v);
}

Result<CallClaims> parse_claims(const json::object& c) {
  CallClaims out;
  OUTPOST_TRY(out.iss, string_claim(c, "iss"));
  OUTPOST_TRY(out.sub, string_claim(c, "sub"));
  OUTPOST_TRY(out.aud, string_claim(c, "aud"));
  OUTPOST_TRY(out.agent, string_claim(c, "agent"));
  OUTPOST_TRY(out.task, string_claim(c, "task"));
  OUTPOST_TRY(out.args_sha256, string_claim(c, "args_sha256"));
  OUTPOST_TRY(out.bundle_version, unsigned_claim(c, "bundle_version"));
  OUTPOST_TRY(out.iat, time_claim(c, "iat"));
  OUTPOST_TRY(out.nbf, time_claim(c, "nbf"));
  OUTPOST_TRY(out.exp, time_claim(c, "exp"));
  OUTPOST_TRY(out.jti, string_claim(c, "jti"));
  return out;
}

// What mint() and verify() both require of the claims' times, whoever made them.
Result<void> check_lifetime(const CallClaims& c) {
  if (c.exp <= c.iat) return refused("token expires (" + when(c.exp) + ") before it is issued (" + when(c.iat) + ")");
  if (c.exp - c.iat > kMaxLifetimeSeconds) {
    return refused("token lifetime of " + std::to_string(c.exp - c.iat) + " s is over the limit of " +
                   std::to_string(kMaxLifetimeSeconds) + " s");
  }
  return ok();
}

}  // namespace

boost::json::object CallClaims::to_json() const {
  json::object o;
  o["iss"] = iss;
  o["sub"] = sub;
  o["aud"] = aud;
  o["agent"] = agent;
  o["task"] = task;
  o["args_sha256"] = args_sha256;
  o["bundle_version"] = bundle_version;
  o["iat"] = iat;
  o["nbf"] = nbf;
  o["exp"] = exp;
  o["jti"] = jti;
  return o;
}

Result<std::string> canonical_json(const boost::json::value& v) {
  std::string out;
  OUTPOST_TRY_VOID(append_canonical(out, v, 0));
  return out;
}

Result<std::string> args_sha256(const boost::json::value& args) {
  OUTPOST_TRY(std::string canonical, canonical_json(args));
  return base64url_encode(sha256(canonical));
}

std::string new_jti() {
  std::array<uint8_t, 16> id{};
  random_bytes(id);
  return base64url_encode(id);
}

Result<boost::json::value> parse_json_strict(std::string_view text) {
  json::basic_parser<StrictScan> scan(json::parse_options{});
  json::error_code ec;
  scan.write_some(false, text.data(), text.size(), ec);
  if (!scan.handler().problem.empty()) return fail(errc::corrupt, scan.handler().problem);
  if (ec) return fail(errc::corrupt, ec.message());
  json::value v = json::parse(text, ec);
  if (ec) return fail(errc::corrupt, ec.message());
  size_t next = 0;
  if (!replace_doubles(v, scan.handler().doubles, next) || next != scan.handler().doubles.size()) {
    return fail(errc::corrupt, "the two JSON parses disagree on the numbers");
  }
  return v;
}

Result<std::string> mint(const CallClaims& claims, const EcPublicKey& agent_key, const Signer& sign) {
  for (const auto& [name, value] : {std::pair<const char*, const std::string*>{"iss", &claims.iss},
                                    {"sub", &claims.sub},
                                    {"aud", &claims.aud},
                                    {"agent", &claims.agent},
                                    {"task", &claims.task},
                                    {"args_sha256", &claims.args_sha256},
                                    {"jti", &claims.jti}}) {
    if (value->empty()) return fail(errc::invalid_argument, std::string("mint: claim ") + name + " is empty");
  }
  if (claims.iat < 0 || claims.nbf < claims.iat) {
    return fail(errc::invalid_argument, "mint: need 0 <= iat <= nbf");
  }
  if (auto life = check_lifetime(claims); !life) return fail(life.error().wrap("mint"));

  json::object header;
  header["alg"] = "ES256";
  header["typ"] = kTokenType;
  header["kid"] = agent_key.thumbprint();
  std::string input = base64url_encode(as_bytes(json::serialize(header))) + "." +
                      base64url_encode(as_bytes(json::serialize(claims.to_json())));
  if (input.size() + 1 + 86 > kMaxTokenBytes) {
    return fail(errc::invalid_argument, "mint: the token would be over " + std::to_string(kMaxTokenBytes) + " bytes");
  }
  const Digest digest = sha256(input);
  Result<RawSignature> sig = sign(digest);
  if (!sig) return fail(sig.error().wrap("mint: sign"));
  if (auto v = agent_key.verify(digest, *sig); !v) {
    return fail(errc::verification_failed, "mint: the signer's signature does not verify with the agent key");
  }
  return input + "." + base64url_encode(sig->concat());
}

Result<DecodedToken> decode_unverified(std::string_view token) {
  OUTPOST_TRY(Parts parts, split(token));
  OUTPOST_TRY(json::object header, decode_object(parts.header, "header"));
  DecodedToken out;
  OUTPOST_TRY(out.kid, header_kid(header));
  OUTPOST_TRY(Bytes sig, decode_part(parts.signature, "signature"));
  if (sig.size() != 64) return malformed("an ES256 signature is 64 bytes, this one " + std::to_string(sig.size()));
  OUTPOST_TRY(json::object claims, decode_object(parts.payload, "payload"));
  OUTPOST_TRY(out.claims, parse_claims(claims));
  return out;
}

Result<CallClaims> verify(std::string_view token, const EcPublicKey& key, int64_t now, std::string_view audience,
                          int64_t leeway) {
  leeway = std::max<int64_t>(leeway, 0);
  // The header and signature are checked before the claims are even parsed.
  OUTPOST_TRY(Parts parts, split(token));
  OUTPOST_TRY(json::object header, decode_object(parts.header, "header"));
  OUTPOST_TRY(std::string kid, header_kid(header));
  const std::string thumbprint = key.thumbprint();
  if (kid != thumbprint) {
    return refused("token kid " + kid + " is not the key's thumbprint " + thumbprint + " (signed by another key)");
  }
  OUTPOST_TRY(Bytes sig_bytes, decode_part(parts.signature, "signature"));
  Result<RawSignature> sig = RawSignature::from_concat(sig_bytes);
  if (!sig) return malformed("an ES256 signature is 64 bytes, this one " + std::to_string(sig_bytes.size()));
  if (!key.verify(sha256(parts.signing_input), *sig)) return refused("token signature does not verify");

  OUTPOST_TRY(json::object claims_json, decode_object(parts.payload, "payload"));
  OUTPOST_TRY(CallClaims claims, parse_claims(claims_json));
  OUTPOST_TRY_VOID(check_lifetime(claims));
  if (claims.exp <= now - leeway) return refused("token expired at " + when(claims.exp));
  if (claims.nbf - leeway > now) return refused("token is not valid before " + when(claims.nbf));
  if (claims.iat - leeway > now) return refused("token is issued in the future, at " + when(claims.iat));
  if (!audience.empty() && claims.aud != audience) {
    return refused("token audience \"" + claims.aud + "\" is not \"" + std::string(audience) + "\"");
  }
  return claims;
}

int64_t credential_ttl(uint32_t rule_ttl, int64_t now, int64_t bundle_not_after) {
  if (rule_ttl == 0 || bundle_not_after <= now) return 0;
  int64_t ttl = std::min<int64_t>(rule_ttl, kMaxLifetimeSeconds);
  return std::min(ttl, bundle_not_after - now);
}

}  // namespace outpost::credentials
