#include "upstream/oauth.h"

#include <algorithm>
#include <cmath>

#include <boost/json.hpp>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "upstream/streamable_http.h"

namespace outpost::upstream {

namespace json = boost::json;

namespace {

std::string text_of(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr && v->is_string() ? std::string(v->as_string()) : std::string();
}

bool loopback_host(const UpstreamUrl& u) {
  return u.host == "localhost" || u.host == "::1" || u.host.rfind("127.", 0) == 0;
}

// An endpoint the metadata names: https, or plain HTTP to loopback only.
Result<void> check_endpoint(const std::string& text, const char* field) {
  auto url = parse_upstream_url(text);
  if (!url) return fail(url.error().wrap(std::string("authorization server metadata: ") + field));
  if (!url->tls && !loopback_host(*url)) {
    return fail(errc::verification_failed, std::string("authorization server metadata: the ") + field + " " + url->text +
                                             " is plain HTTP to a host that is not loopback");
  }
  return ok();
}

void wipe(std::string& s) {
  std::fill(s.begin(), s.end(), '\0');
  s.clear();
}

}  // namespace

std::string metadata_url(std::string_view issuer) {
  std::string_view i = issuer;
  while (!i.empty() && i.back() == '/') i.remove_suffix(1);
  const size_t scheme = i.find("://");
  const size_t path = scheme == std::string_view::npos ? std::string_view::npos : i.find('/', scheme + 3);
  const std::string_view origin = i.substr(0, path);
  const std::string_view rest = path == std::string_view::npos ? std::string_view() : i.substr(path);
  return std::string(origin) + "/.well-known/oauth-authorization-server" + std::string(rest);
}

Result<AsMetadata> parse_as_metadata(std::string_view body, std::string_view expected_issuer) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) return fail(errc::invalid_argument, "authorization server metadata is not a JSON object");
  const json::object& o = v.as_object();
  AsMetadata m;
  m.issuer = text_of(o, "issuer");
  if (m.issuer != expected_issuer) {
    return fail(errc::verification_failed, "authorization server metadata names issuer \"" + m.issuer.substr(0, 200) +
                                             "\", not the configured \"" + std::string(expected_issuer) + "\" (RFC 8414 §3.3)");
  }
  m.token_endpoint = text_of(o, "token_endpoint");
  OUTPOST_TRY_VOID(check_endpoint(m.token_endpoint, "token_endpoint"));
  if (const json::value* methods = o.if_contains("token_endpoint_auth_methods_supported"); methods != nullptr && methods->is_array()) {
    bool basic = false, post = false;
    for (const auto& e : methods->as_array()) {
      if (e == "client_secret_basic") basic = true;
      if (e == "client_secret_post") post = true;
    }
    m.basic = basic;
    m.secret_auth = basic || post;  // a server for public clients alone may name only "none"
  }
  m.authorization_endpoint = text_of(o, "authorization_endpoint");
  if (!m.authorization_endpoint.empty()) OUTPOST_TRY_VOID(check_endpoint(m.authorization_endpoint, "authorization_endpoint"));
  if (const json::value* methods = o.if_contains("code_challenge_methods_supported"); methods != nullptr && methods->is_array()) {
    for (const auto& e : methods->as_array()) m.s256 = m.s256 || e == "S256";
  }
  if (const json::value* iss = o.if_contains("authorization_response_iss_parameter_supported"); iss != nullptr && iss->is_bool()) {
    m.iss_response = iss->as_bool();
  }
  return m;
}

Result<AccessToken> parse_token_response(unsigned status, std::string_view body, int64_t now) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  const json::object* o = !ec && v.is_object() ? &v.as_object() : nullptr;
  if (status != 200) {
    std::string why = "the token endpoint answered HTTP " + std::to_string(status);
    if (o != nullptr && !text_of(*o, "error").empty()) {
      why += ": " + text_of(*o, "error").substr(0, 100);
      if (const std::string d = text_of(*o, "error_description"); !d.empty()) why += " (" + d.substr(0, 300) + ")";
    }
    return fail(errc::verification_failed, why);
  }
  if (o == nullptr) return fail(errc::invalid_argument, "the token endpoint's answer is not a JSON object");
  AccessToken t;
  t.value = text_of(*o, "access_token");
  if (t.value.empty() || !header_safe(t.value)) return fail(errc::invalid_argument, "the token endpoint's answer has no usable access_token");
  std::string type = text_of(*o, "token_type");
  std::transform(type.begin(), type.end(), type.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (type != "bearer") return fail(errc::unsupported, "the token endpoint issued a \"" + type.substr(0, 50) + "\" token, not a Bearer token");
  int64_t life = 300;  // RFC 6749 makes expires_in optional; five minutes, then ask again
  if (const json::value* e = o->if_contains("expires_in"); e != nullptr) {
    if (e->is_int64()) life = e->as_int64();
    else if (e->is_uint64()) life = static_cast<int64_t>(std::min<uint64_t>(e->as_uint64(), 1u << 30));
    else if (e->is_double() && std::isfinite(e->as_double())) life = static_cast<int64_t>(std::clamp(e->as_double(), -1.0, 1e9));
    else return fail(errc::invalid_argument, "the token endpoint's expires_in is not a number");
  }
  if (life <= 0) return fail(errc::invalid_argument, "the token endpoint issued a token that has expired already");
  t.fetched_at = now;
  t.expires_at = now + std::min<int64_t>(life, 1 << 30);
  t.refresh = text_of(*o, "refresh_token");
  if (!t.refresh.empty() && !header_safe(t.refresh)) return fail(errc::invalid_argument, "the token endpoint's refresh_token is not printable ASCII");
  return t;
}

std::string form_encode(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '*') {
      out.push_back(static_cast<char>(c));
    } else if (c == ' ') {
      out.push_back('+');
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

TokenSource::TokenSource(AuthSpec spec, std::string resource, SecretFn secret, HttpFn http, std::function<int64_t()> clock,
                         SealFn seal)
    : spec_(std::move(spec)), resource_(std::move(resource)), secret_(std::move(secret)), http_(std::move(http)),
      clock_(std::move(clock)), seal_(std::move(seal)) {}

TokenSource::~TokenSource() {
  if (token_) wipe(token_->value);
}

TokenSource::Stats TokenSource::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

Result<std::string> TokenSource::authorization(bool refresh) {
  if (spec_.kind == AuthSpec::Kind::none) return std::string();
  std::lock_guard lock(mu_);  // one fetch at a time; the others then use its token
  const int64_t now = clock_();
  if (token_ && !refresh) {
    const int64_t margin = std::min<int64_t>(60, (token_->expires_at - token_->fetched_at) / 10);
    if (spec_.kind == AuthSpec::Kind::bearer || now < token_->expires_at - margin) return "Bearer " + token_->value;
  }
  if (token_) wipe(token_->value);
  token_.reset();
  auto t = fetch();
  if (!t) {
    ++stats_.failed;
    return fail(t.error());
  }
  ++stats_.fetched;
  token_ = std::move(*t);
  return "Bearer " + token_->value;
}

Result<AccessToken> TokenSource::fetch() {
  const int64_t now = clock_();
  if (spec_.kind == AuthSpec::Kind::bearer) {
    auto value = secret_(spec_.secret);
    if (!value) return fail(value.error().wrap("bearer token " + spec_.secret));
    if (value->empty() || !header_safe(*value)) {
      wipe(*value);
      return fail(errc::invalid_argument, "bearer token " + spec_.secret + " is empty or not printable ASCII");
    }
    AccessToken t;
    t.value = std::move(*value);
    t.expires_at = INT64_MAX;
    t.fetched_at = now;
    return t;
  }
  OUTPOST_TRY_VOID(ensure_metadata());
  if (spec_.grant == AuthSpec::Grant::client_credentials) {
    std::string grant = "grant_type=client_credentials&resource=" + form_encode(resource_);
    if (!spec_.scope.empty()) grant += "&scope=" + form_encode(spec_.scope);
    return token_request(std::move(grant));
  }
  // Authorization code: the operator's login left a refresh token, sealed.
  auto refresh = secret_(spec_.refresh_secret);
  if (!refresh) {
    if (refresh.error().code() == make_error_code(errc::not_found)) {
      return fail(errc::not_found, "no operator login for this server yet: run `outpost mcp login AGENT SERVER` on the node");
    }
    return fail(refresh.error().wrap("refresh token"));
  }
  std::string grant = "grant_type=refresh_token&refresh_token=" + form_encode(*refresh) + "&resource=" + form_encode(resource_);
  auto t = token_request(std::move(grant));
  if (t) {
    auto kept = keep_refresh(*t, *refresh);
    wipe(t->refresh);
    if (!kept) {
      wipe(*refresh);
      return fail(kept.error());
    }
  }
  wipe(*refresh);
  return t;
}

Result<void> TokenSource::ensure_metadata() {
  if (metadata_) return ok();
  HttpExchange get;
  get.url = metadata_url(spec_.issuer);
  get.headers.emplace_back("Accept", "application/json");
  OUTPOST_TRY(HttpAnswer a, http_(get));
  if (a.status != 200) return fail(errc::io, "authorization server metadata " + get.url + ": HTTP " + std::to_string(a.status));
  auto m = parse_as_metadata(a.body, spec_.issuer);
  if (!m) return fail(m.error().wrap(get.url));
  metadata_ = std::move(*m);
  return ok();
}

Result<AccessToken> TokenSource::token_request(std::string grant) {
  const int64_t now = clock_();
  HttpExchange post;
  post.method = "POST";
  post.url = metadata_->token_endpoint;
  post.content_type = "application/x-www-form-urlencoded";
  post.headers.emplace_back("Accept", "application/json");
  post.body = std::move(grant);
  std::string basic;
  if (spec_.secret.empty()) {
    post.body += "&client_id=" + form_encode(spec_.client_id);  // a public client (RFC 6749 §3.2.1)
  } else {
    if (!metadata_->secret_auth) {
      wipe(post.body);
      return fail(errc::unsupported, "the authorization server takes neither client_secret_basic nor client_secret_post");
    }
    auto client_secret = secret_(spec_.secret);
    if (!client_secret) {
      wipe(post.body);
      return fail(client_secret.error().wrap("client secret " + spec_.secret));
    }
    if (metadata_->basic) {
      // RFC 6749 §2.3.1: each part form-encoded, then base64 of "id:secret".
      std::string pair = form_encode(spec_.client_id) + ":" + form_encode(*client_secret);
      basic = "Basic " + base64_encode(as_bytes(pair));
      post.headers.emplace_back("Authorization", basic);
      wipe(pair);
    } else {
      post.body += "&client_id=" + form_encode(spec_.client_id) + "&client_secret=" + form_encode(*client_secret);
    }
    wipe(*client_secret);
  }
  auto a = http_(post);
  wipe(basic);
  for (auto& [k, v] : post.headers) wipe(v);
  wipe(post.body);
  if (!a) return fail(a.error().wrap("token endpoint " + metadata_->token_endpoint));
  auto t = parse_token_response(a->status, a->body, now);
  wipe(a->body);
  if (!t) return fail(t.error().wrap("token endpoint " + metadata_->token_endpoint));
  return t;
}

// A refresh token the server issued (first, or rotated: RFC 6749 §6, OAuth 2.1 §4.3.1) is sealed
// before it is relied on; the old one is then spent.
Result<void> TokenSource::keep_refresh(const AccessToken& t, std::string_view previous) {
  if (t.refresh.empty() || t.refresh == previous) return ok();
  if (!seal_) return fail(errc::unsupported, "no way to seal the refresh token");
  if (auto r = seal_(spec_.refresh_secret, t.refresh); !r) return fail(r.error().wrap("sealing the refresh token"));
  return ok();
}

Result<std::string> TokenSource::begin_login(const std::string& redirect_uri) {
  if (spec_.kind != AuthSpec::Kind::oauth || spec_.grant != AuthSpec::Grant::authorization_code) {
    return fail(errc::invalid_argument, "this server's credential is not an OAuth authorization-code login");
  }
  auto r = parse_upstream_url(redirect_uri);
  if (!r || r->tls || !loopback_host(*r)) {
    return fail(errc::invalid_argument, "the redirect URI must be http:// to a loopback address (RFC 8252 §7.3)");
  }
  std::lock_guard lock(mu_);
  OUTPOST_TRY_VOID(ensure_metadata());
  if (metadata_->authorization_endpoint.empty()) return fail(errc::unsupported, "the authorization server has no authorization_endpoint");
  if (!metadata_->s256) {
    return fail(errc::unsupported, "the authorization server does not offer PKCE with S256 (code_challenge_methods_supported)");
  }
  uint8_t raw[32];
  random_bytes(std::span<uint8_t>(raw, sizeof raw));
  PendingLogin p;
  p.verifier = base64url_encode(ByteView(raw, sizeof raw));  // 43 characters of [A-Za-z0-9_-]
  random_bytes(std::span<uint8_t>(raw, 16));
  p.state = base64url_encode(ByteView(raw, 16));
  std::fill(std::begin(raw), std::end(raw), 0);
  p.redirect_uri = redirect_uri;
  p.issuer = metadata_->issuer;
  p.iss_required = metadata_->iss_response;
  p.expires_at = clock_() + 600;
  const Digest challenge = sha256(p.verifier);
  std::string url = metadata_->authorization_endpoint;
  url += url.find('?') == std::string::npos ? '?' : '&';
  url += "response_type=code&client_id=" + form_encode(spec_.client_id) + "&redirect_uri=" + form_encode(redirect_uri) +
         "&code_challenge=" + base64url_encode(ByteView(challenge.data(), challenge.size())) +
         "&code_challenge_method=S256&state=" + p.state + "&resource=" + form_encode(resource_);
  if (!spec_.scope.empty()) url += "&scope=" + form_encode(spec_.scope);
  if (login_) wipe(login_->verifier);
  login_ = std::move(p);
  return url;
}

Result<void> TokenSource::finish_login(std::string_view code, std::string_view state, std::string_view iss) {
  std::lock_guard lock(mu_);
  if (!login_) return fail(errc::invalid_argument, "no login is under way for this server (begin one first)");
  PendingLogin p = std::move(*login_);
  login_.reset();  // one try: a wrong state or a late answer ends the login
  auto clear = [&] { wipe(p.verifier); };
  if (state != p.state) {
    clear();
    return fail(errc::verification_failed, "the redirect's state is not the login's (RFC 6749 §10.12): refused");
  }
  if (clock_() > p.expires_at) {
    clear();
    return fail(errc::timeout, "the login took longer than ten minutes: begin again");
  }
  // RFC 9207: a response that names its issuer must name the one this login went to.
  if (!iss.empty() && iss != p.issuer) {
    clear();
    return fail(errc::verification_failed, "the redirect's iss is \"" + std::string(iss.substr(0, 200)) + "\", not the authorization server " +
                                               p.issuer + " (a mix-up, RFC 9207): refused");
  }
  if (iss.empty() && p.iss_required) {
    clear();
    return fail(errc::verification_failed, "the authorization server sends iss with its responses (RFC 9207) and this one has none: refused");
  }
  if (code.empty()) {
    clear();
    return fail(errc::invalid_argument, "the redirect carries no code");
  }
  std::string grant = "grant_type=authorization_code&code=" + form_encode(code) + "&redirect_uri=" + form_encode(p.redirect_uri) +
                      "&code_verifier=" + p.verifier + "&resource=" + form_encode(resource_);
  clear();
  auto t = token_request(std::move(grant));
  if (!t) {
    ++stats_.failed;
    return fail(t.error());
  }
  if (t->refresh.empty()) return fail(errc::unsupported, "the token endpoint issued no refresh token: outpostd could not renew access");
  OUTPOST_TRY_VOID(keep_refresh(*t, ""));
  ++stats_.fetched;
  if (token_) wipe(token_->value);
  wipe(t->refresh);
  token_ = std::move(*t);
  return ok();
}

}  // namespace outpost::upstream
