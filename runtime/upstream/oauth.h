// The credential outpostd presents to a remote MCP server on an agent's behalf; the agent never
// holds it (docs/daemon.md, "Credentials outpostd holds").
//
// Two kinds, from the agent's manifest (`auth:` of a `url:` server):
//   * bearer: a static token sealed by the node's TPM (`outpost secret seal`), unsealed by
//     outpostd when a connection first needs it;
//   * oauth: an OAuth 2.1 client of the server's authorization server, with the client
//     credentials grant (RFC 6749 §4.4). outpostd reads the authorization server's metadata
//     (RFC 8414) and refuses it unless its `issuer` is exactly the configured one (§3.3), asks
//     for tokens with the server's URL as RFC 8707 resource indicator, authenticates with the
//     client secret sealed by the TPM (client_secret_basic, or client_secret_post when that is
//     all the server supports), and keeps each token until shortly before it expires (the
//     smaller of a minute and a tenth of its life), then fetches the next one before use.
//     A server's 401 makes it fetch a new token and retry once.
//   * oauth with `grant: authorization_code`: an operator logs in once on the node
//     (`outpost mcp login AGENT SERVER`): outpostd makes the authorization URL with PKCE (S256,
//     RFC 7636; refused unless the server's metadata offers S256), a fresh state and the resource
//     indicator; the operator's browser comes back to the CLI's loopback redirect (RFC 8252); the
//     code is exchanged with the verifier, and the refresh token sealed by the TPM. Access tokens
//     are then fetched with the refresh grant; a rotated refresh token is sealed again. The
//     client secret is optional (a public client sends its client_id).
//
// TokenSource does no I/O of its own: the caller gives it the HTTP exchange (egress-decided,
// TLS-checked: http_upstream.h) and the unsealing. Thread-safe: one source serves every
// connection of one agent to one server.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "outpost/base/result.h"

namespace outpost::upstream {

struct AuthSpec {
  enum class Kind { none, bearer, oauth } kind = Kind::none;
  std::string secret;     // the sealed secret's name: the token (bearer), the client secret (oauth;
                          // may be empty for authorization_code: a public client)

  std::string issuer;     // oauth: the authorization server's issuer identifier (https URL)
  std::string client_id;  // oauth
  std::string scope;      // oauth, optional
  enum class Grant { client_credentials, authorization_code } grant = Grant::client_credentials;
  std::string refresh_secret;  // authorization_code: the sealed refresh token's name (outpostd's)
};

// RFC 8414 §3.1: the metadata of "https://as/tenant" is at
// "https://as/.well-known/oauth-authorization-server/tenant".
std::string metadata_url(std::string_view issuer);

struct AsMetadata {
  std::string issuer, token_endpoint;
  std::string authorization_endpoint;  // empty when the server offers none
  bool basic = true;  // client_secret_basic (else client_secret_post)
  bool secret_auth = true;  // either of them: a confidential client can authenticate
  bool s256 = false;  // code_challenge_methods_supported names S256 (PKCE)
  bool iss_response = false;  // authorization_response_iss_parameter_supported (RFC 9207)
};
// The metadata document; an error unless its issuer is `expected_issuer` exactly and its token
// endpoint is an https URL (or http to loopback, as for an MCP server).
Result<AsMetadata> parse_as_metadata(std::string_view body, std::string_view expected_issuer);

struct AccessToken {
  std::string value;
  std::string refresh;  // a refresh token, when the server issued one
  int64_t expires_at = 0;  // Unix seconds
  int64_t fetched_at = 0;
};
// A token endpoint's answer (RFC 6749 §5.1, §5.2): the token, or an error that carries the
// server's `error` and `error_description`.
Result<AccessToken> parse_token_response(unsigned status, std::string_view body, int64_t now);

// application/x-www-form-urlencoded of one value.
std::string form_encode(std::string_view value);

struct HttpExchange {
  std::string method = "GET";
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string content_type, body;
};
struct HttpAnswer {
  unsigned status = 0;
  std::string content_type, body;
};
using HttpFn = std::function<Result<HttpAnswer>(const HttpExchange&)>;
using SecretFn = std::function<Result<std::string>(std::string_view name)>;
// Seals `value` under `name` (outpostd: the TPM's SecretStore).
using SealFn = std::function<Result<void>(std::string_view name, std::string_view value)>;

class TokenSource {
 public:
  // `resource`: the MCP server's URL (the RFC 8707 resource indicator). `clock`: Unix seconds.
  TokenSource(AuthSpec spec, std::string resource, SecretFn secret, HttpFn http, std::function<int64_t()> clock,
              SealFn seal = {});
  ~TokenSource();

  // The operator's login (grant authorization_code): the URL to open, for a browser that comes
  // back to `redirect_uri` (a loopback address of the CLI's). Valid for ten minutes.
  Result<std::string> begin_login(const std::string& redirect_uri);
  // What came back to the redirect: the code is exchanged (with the PKCE verifier) and the
  // refresh token sealed. An error for a state that is not the login's, or a late one, and for
  // an `iss` (RFC 9207) that is not the authorization server's, or none when its metadata says
  // it sends one (the mix-up defence MCP 2026-07-28 requires of clients).
  Result<void> finish_login(std::string_view code, std::string_view state, std::string_view iss = {});

  // The Authorization header's value, empty for kind none. `refresh`: the server refused the
  // last one, so a cached value is not used again.
  Result<std::string> authorization(bool refresh);

  struct Stats {
    uint64_t fetched = 0;  // tokens obtained (bearer: unsealed)
    uint64_t failed = 0;   // fetches that failed (refused, unreachable, bad answers)
  };
  Stats stats() const;

 private:
  Result<AccessToken> fetch();
  Result<void> ensure_metadata();
  // One token request: `grant` (form-encoded) plus the client's authentication.
  Result<AccessToken> token_request(std::string grant);
  Result<void> keep_refresh(const AccessToken& t, std::string_view previous);
  struct PendingLogin {
    std::string verifier, state, redirect_uri;
    std::string issuer;         // whose response it must be (RFC 9207)
    bool iss_required = false;  // its metadata says its responses carry iss
    int64_t expires_at = 0;
  };
  AuthSpec spec_;
  std::string resource_;
  SecretFn secret_;
  HttpFn http_;
  std::function<int64_t()> clock_;
  SealFn seal_;
  std::optional<PendingLogin> login_;
  mutable std::mutex mu_;
  std::optional<AccessToken> token_;
  std::optional<AsMetadata> metadata_;
  Stats stats_;
};

}  // namespace outpost::upstream
