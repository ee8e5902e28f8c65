// Call-scoped credentials: a compact JWS (RFC 7515), ES256 (RFC 7518 section 3.4), that an
// allowed tool call carries to the tool. The agent's TPM key signs it; the tool (or
// `outpost token verify`) checks it offline against the agent's public key.
//
//   header   {"alg":"ES256","typ":"outpost-call+jwt","kid":<RFC 7638 thumbprint of the key>}
//   claims   iss          the node's SPIFFE ID
//            sub          the agent's SPIFFE ID
//            aud          the tool, "server/tool"
//            agent, task  the agent's name and the task label of the call
//            args_sha256  base64url SHA-256 of canonical_json(the call's arguments)
//            bundle_version  the policy bundle that allowed the call
//            iat, nbf, exp   Unix seconds
//            jti          128 random bits, base64url
//   signature  raw r||s (64 bytes), base64url, over SHA-256 of "<header>.<claims>" (plain
//              JWS signing input: no outpost domain separation, so any JOSE library verifies it)
//
// Everything here is a pure function of its arguments; safe to call from any thread.
#pragma once

#include <boost/json/value.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::credentials {

inline constexpr std::string_view kTokenType = "outpost-call+jwt";
inline constexpr size_t kMaxTokenBytes = 16 << 10;
// The longest exp - iat a token may claim, minted or verified.
inline constexpr int64_t kMaxLifetimeSeconds = 24 * 3600;

struct CallClaims {
  std::string iss;
  std::string sub;
  std::string aud;
  std::string agent;
  std::string task;
  std::string args_sha256;
  uint64_t bundle_version = 0;
  int64_t iat = 0;
  int64_t nbf = 0;
  int64_t exp = 0;
  std::string jti;

  // The claims as a JSON object, members in the order listed above.
  boost::json::object to_json() const;
  bool operator==(const CallClaims&) const = default;
};

// The canonical form the argument hash is taken over: RFC 8785 (JCS) for every value
// boost::json can hold, except that integers are written exactly. JCS treats every number as
// an IEEE double, so an integer of magnitude above 2^53 (which boost::json keeps as int64 or
// uint64) would be rounded there and is not here; within ±2^53 the two agree. Doubles follow
// ECMAScript Number.prototype.toString (shortest round trip: 1.5, 1e+21, 1e-7, -0 as 0), object
// members are sorted by their UTF-16 code units, strings escape only '"', '\', and U+0000..U+001F
// (\b \t \n \f \r short, the rest \u00xx), and there is no white space.
// Fails on a string that is not UTF-8, on a non-finite double and on nesting deeper than 64.
Result<std::string> canonical_json(const boost::json::value& v);

// base64url(SHA-256(canonical_json(args))): the args_sha256 claim. Two JSON texts that differ
// only in member order or white space hash alike.
Result<std::string> args_sha256(const boost::json::value& args);

// 128 bits from the kernel's CSPRNG, base64url: a fresh jti.
std::string new_jti();

// Parses JSON text like boost::json::parse, with two differences that matter for hashing
// what a tool will see: an object with the same member twice is refused (boost::json keeps
// the last silently, other parsers the first), and every number with a fraction or exponent
// is read correctly rounded (boost::json 1.81 can be one ulp off for long literals such as
// 333333333.33333329, so its double would not be the one a JCS implementation hashes).
// A double out of range (1e400, 1e-400) is refused. Parse a call's arguments with this
// before args_sha256().
Result<boost::json::value> parse_json_strict(std::string_view text);

// Signs a SHA-256 digest with the agent's key: Tpm::sign over the loaded agent key in
// production, EcPrivateKey::sign in tests.
using Signer = std::function<Result<RawSignature>(const Digest&)>;

// Builds and signs a token. Every string claim must be non-empty (the jti too: take one from
// new_jti()), nbf and exp must satisfy iat <= nbf < exp and exp - iat <= kMaxLifetimeSeconds.
// The signature is checked against `agent_key` before the token is returned, so a signer
// that does not hold that key cannot produce a token that will not verify.
Result<std::string> mint(const CallClaims& claims, const EcPublicKey& agent_key, const Signer& sign);

// Checks a token against `key` at time `now` (Unix seconds), allowing `leeway` seconds of
// clock skew both ways, and for `audience` when one is given. Refuses: a token over
// kMaxTokenBytes, anything but three base64url parts (no padding, no stray bits), a header
// that is not exactly {alg: ES256, typ, kid} (alg "none" and every other algorithm included),
// a kid other than the key's thumbprint, a signature that does not verify, a claim missing or
// of the wrong type, exp <= now - leeway, nbf or iat > now + leeway, exp <= iat, a lifetime
// over kMaxLifetimeSeconds, and another audience. Claims it does not know are ignored (RFC 7519
// section 4). Every error names what is wrong, e.g. "token expired at 2026-11-28T10:05:00Z".
Result<CallClaims> verify(std::string_view token, const EcPublicKey& key, int64_t now,
                          std::string_view audience = {}, int64_t leeway = 30);

// The header and claims of a token without any signature or time check: for diagnostics and
// the fuzzer, never for a decision. Parsing is as strict as verify()'s.
struct DecodedToken {
  std::string kid;
  CallClaims claims;
};
Result<DecodedToken> decode_unverified(std::string_view token);

// How long a credential for a call allowed now may live, in seconds: min(rule_ttl,
// bundle_not_after - now, kMaxLifetimeSeconds), and 0 when no credential can be minted (the
// rule gives none, or the bundle has expired or expires this second).
int64_t credential_ttl(uint32_t rule_ttl, int64_t now, int64_t bundle_not_after);

}  // namespace outpost::credentials
