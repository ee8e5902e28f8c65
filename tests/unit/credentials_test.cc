// Call-scoped credentials (runtime/credentials/jws.h) with software keys.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <cstring>

#include "credentials/jws.h"
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"

using namespace outpost;
using namespace outpost::credentials;
namespace json = boost::json;

namespace {

constexpr int64_t kNow = 1795860000;  // 2026-11-28T10:00:00Z

EcPrivateKey new_key() {
  auto k = EcPrivateKey::generate();
  REQUIRE(k.has_value());
  return std::move(*k);
}

Signer signer_of(const EcPrivateKey& key) {
  return [&key](const Digest& d) { return key.sign(d); };
}

CallClaims sample_claims() {
  CallClaims c;
  c.iss = "spiffe://edge.example/node/0123456789abcdef0123456789abcdef";
  c.sub = c.iss + "/agent/coder";
  c.aud = "files/read";
  c.agent = "coder";
  c.task = "fix-build";
  c.args_sha256 = *args_sha256(json::parse(R"({"path":"/work/a.txt"})"));
  c.bundle_version = 7;
  c.iat = kNow;
  c.nbf = kNow;
  c.exp = kNow + 300;
  c.jti = new_jti();
  return c;
}

std::string mint_ok(const CallClaims& c, const EcPrivateKey& key) {
  auto t = mint(c, key.public_key(), signer_of(key));
  INFO((t ? std::string() : t.error().message()));
  REQUIRE(t.has_value());
  return *t;
}

// A token over arbitrary header and payload text, properly signed: for inputs mint() refuses.
std::string sign_raw(std::string_view header, std::string_view payload, const EcPrivateKey& key) {
  std::string input = base64url_encode(as_bytes(header)) + "." + base64url_encode(as_bytes(payload));
  auto sig = key.sign(sha256(input));
  REQUIRE(sig.has_value());
  return input + "." + base64url_encode(sig->concat());
}

std::string header_for(const EcPrivateKey& key, std::string_view alg = "ES256") {
  return R"({"alg":")" + std::string(alg) + R"(","typ":"outpost-call+jwt","kid":")" +
         key.public_key().thumbprint() + R"("})";
}

std::vector<std::string> parts_of(const std::string& token) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t dot = token.find('.', start);
    out.push_back(token.substr(start, dot - start));
    if (dot == std::string::npos) return out;
    start = dot + 1;
  }
}

std::string refusal(const Result<CallClaims>& r) {
  REQUIRE_FALSE(r.has_value());
  return r.error().message();
}

std::string canonical(std::string_view text) {
  auto v = parse_json_strict(text);
  INFO((v ? std::string() : v.error().message()));
  REQUIRE(v.has_value());
  auto c = canonical_json(*v);
  REQUIRE(c.has_value());
  return *c;
}

std::string canonical_double(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  auto c = canonical_json(json::value(d));
  REQUIRE(c.has_value());
  return *c;
}

}  // namespace

TEST_CASE("a minted token verifies and gives back its claims", "[credentials]") {
  EcPrivateKey key = new_key();
  CallClaims c = sample_claims();
  std::string token = mint_ok(c, key);
  auto parts = parts_of(token);
  REQUIRE(parts.size() == 3);
  auto header = json::parse(as_chars(*base64url_decode(parts[0])));
  CHECK(header.at("alg") == "ES256");
  CHECK(header.at("typ") == "outpost-call+jwt");
  CHECK(header.at("kid") == key.public_key().thumbprint().c_str());
  CHECK(base64url_decode(parts[2])->size() == 64);

  auto v = verify(token, key.public_key(), kNow + 10, "files/read");
  INFO((v ? std::string() : v.error().message()));
  REQUIRE(v.has_value());
  CHECK(*v == c);
  CHECK(verify(token, key.public_key(), kNow + 10).has_value());  // no audience asked for

  auto decoded = decode_unverified(token);
  REQUIRE(decoded.has_value());
  CHECK(decoded->claims == c);
  CHECK(decoded->kid == key.public_key().thumbprint());
}

TEST_CASE("the signature is plain JWS ES256 over the ASCII signing input", "[credentials]") {
  EcPrivateKey key = new_key();
  std::string token = mint_ok(sample_claims(), key);
  auto parts = parts_of(token);
  auto sig = RawSignature::from_concat(*base64url_decode(parts[2]));
  REQUIRE(sig.has_value());
  CHECK(key.public_key().verify(sha256(parts[0] + "." + parts[1]), *sig).has_value());
}

TEST_CASE("a tampered payload signature or header is refused", "[credentials]") {
  EcPrivateKey key = new_key();
  CallClaims c = sample_claims();
  std::string token = mint_ok(c, key);
  auto parts = parts_of(token);

  SECTION("payload with another audience") {
    CallClaims other = c;
    other.aud = "shell/exec";
    std::string payload = base64url_encode(as_bytes(json::serialize(other.to_json())));
    CHECK_THAT(refusal(verify(parts[0] + "." + payload + "." + parts[2], key.public_key(), kNow)),
               Catch::Contains("signature does not verify"));
  }
  SECTION("one bit of the signature") {
    Bytes sig = *base64url_decode(parts[2]);
    sig[10] ^= 0x01;
    CHECK_THAT(refusal(verify(parts[0] + "." + parts[1] + "." + base64url_encode(sig), key.public_key(), kNow)),
               Catch::Contains("signature does not verify"));
  }
  SECTION("a signature of the wrong length") {
    Bytes sig = *base64url_decode(parts[2]);
    sig.push_back(0);
    CHECK_THAT(refusal(verify(parts[0] + "." + parts[1] + "." + base64url_encode(sig), key.public_key(), kNow)),
               Catch::Contains("64 bytes"));
  }
  SECTION("header re-encoded with white space") {
    std::string header = base64url_encode(as_bytes(R"({"alg": "ES256", "typ":"outpost-call+jwt","kid":")" +
                                                   key.public_key().thumbprint() + R"("})"));
    CHECK_THAT(refusal(verify(header + "." + parts[1] + "." + parts[2], key.public_key(), kNow)),
               Catch::Contains("signature does not verify"));
  }
  SECTION("header with an extra member, even when signed") {
    std::string t = sign_raw(R"({"alg":"ES256","typ":"outpost-call+jwt","kid":")" + key.public_key().thumbprint() +
                                 R"(","jku":"https://evil.example/keys"})",
                             as_chars(*base64url_decode(parts[1])), key);
    CHECK_THAT(refusal(verify(t, key.public_key(), kNow)), Catch::Contains("\"jku\" is not allowed"));
  }
  SECTION("another typ") {
    std::string t = sign_raw(R"({"alg":"ES256","typ":"JWT","kid":")" + key.public_key().thumbprint() + R"("})",
                             as_chars(*base64url_decode(parts[1])), key);
    CHECK_THAT(refusal(verify(t, key.public_key(), kNow)), Catch::Contains("typ"));
  }
}

TEST_CASE("alg none and every other algorithm are refused", "[credentials]") {
  EcPrivateKey key = new_key();
  std::string payload = base64url_encode(as_bytes(json::serialize(sample_claims().to_json())));
  for (std::string alg : {"none", "None", "HS256", "ES384", "RS256", "es256"}) {
    std::string header = base64url_encode(as_bytes(header_for(key, alg)));
    CAPTURE(alg);
    CHECK_THAT(refusal(verify(header + "." + payload + ".", key.public_key(), kNow)),
               Catch::Contains("algorithm \"" + alg + "\" is not allowed"));
    // Even with a signature that would verify.
    std::string t = sign_raw(header_for(key, alg), json::serialize(sample_claims().to_json()), key);
    CHECK_THAT(refusal(verify(t, key.public_key(), kNow)), Catch::Contains("is not allowed"));
  }
  std::string no_alg = base64url_encode(as_bytes(R"({"typ":"outpost-call+jwt"})"));
  CHECK_THAT(refusal(verify(no_alg + "." + payload + ".", key.public_key(), kNow)), Catch::Contains("no alg"));
}

TEST_CASE("a token signed by another key is refused by its kid", "[credentials]") {
  EcPrivateKey key = new_key();
  EcPrivateKey other = new_key();
  std::string token = mint_ok(sample_claims(), key);
  CHECK_THAT(refusal(verify(token, other.public_key(), kNow)),
             Catch::Contains("kid " + key.public_key().thumbprint()) &&
                 Catch::Contains("not the key's thumbprint " + other.public_key().thumbprint()));
  // The other key's kid on a signature by the first key.
  std::string forged = sign_raw(header_for(other), json::serialize(sample_claims().to_json()), key);
  CHECK_THAT(refusal(verify(forged, other.public_key(), kNow)), Catch::Contains("signature does not verify"));
}

TEST_CASE("time claims are checked with leeway", "[credentials]") {
  EcPrivateKey key = new_key();
  CallClaims c = sample_claims();  // valid kNow .. kNow+300
  std::string token = mint_ok(c, key);
  CHECK(verify(token, key.public_key(), kNow + 300 + 29).has_value());
  CHECK_THAT(refusal(verify(token, key.public_key(), kNow + 300 + 30)),
             Catch::Contains("token expired at 2026-11-28T10:05:00Z"));
  CHECK_THAT(refusal(verify(token, key.public_key(), kNow + 400, {}, 0)), Catch::Contains("expired"));
  CHECK(verify(token, key.public_key(), kNow - 30).has_value());
  CHECK_THAT(refusal(verify(token, key.public_key(), kNow - 31)),
             Catch::Contains("not valid before 2026-11-28T10:00:00Z"));

  CallClaims later = c;
  later.nbf = kNow + 100;
  std::string t2 = mint_ok(later, key);
  CHECK_THAT(refusal(verify(t2, key.public_key(), kNow + 50)), Catch::Contains("not valid before 2026-11-28T10:01:40Z"));
  CHECK(verify(t2, key.public_key(), kNow + 100).has_value());

  SECTION("a lifetime over 24 hours is refused by mint and by verify") {
    CallClaims long_lived = c;
    long_lived.exp = c.iat + kMaxLifetimeSeconds + 1;
    auto m = mint(long_lived, key.public_key(), signer_of(key));
    REQUIRE_FALSE(m.has_value());
    CHECK_THAT(m.error().message(), Catch::Contains("over the limit"));
    std::string t = sign_raw(header_for(key), json::serialize(long_lived.to_json()), key);
    CHECK_THAT(refusal(verify(t, key.public_key(), kNow)), Catch::Contains("lifetime of 86401 s"));
  }
  SECTION("exp before iat is refused") {
    CallClaims backwards = c;
    backwards.exp = c.iat;
    CHECK_FALSE(mint(backwards, key.public_key(), signer_of(key)).has_value());
    std::string t = sign_raw(header_for(key), json::serialize(backwards.to_json()), key);
    CHECK_THAT(refusal(verify(t, key.public_key(), kNow)), Catch::Contains("before it is issued"));
  }
}

TEST_CASE("the audience must match when one is asked for", "[credentials]") {
  EcPrivateKey key = new_key();
  std::string token = mint_ok(sample_claims(), key);
  CHECK(verify(token, key.public_key(), kNow, "files/read").has_value());
  CHECK_THAT(refusal(verify(token, key.public_key(), kNow, "files/write")),
             Catch::Contains("audience \"files/read\" is not \"files/write\""));
}

TEST_CASE("claims must all be present and typed", "[credentials]") {
  EcPrivateKey key = new_key();
  json::object base = sample_claims().to_json();
  for (const char* name : {"iss", "sub", "aud", "agent", "task", "args_sha256", "bundle_version", "iat", "nbf",
                           "exp", "jti"}) {
    CAPTURE(name);
    json::object missing = base;
    missing.erase(name);
    CHECK_THAT(refusal(verify(sign_raw(header_for(key), json::serialize(missing), key), key.public_key(), kNow)),
               Catch::Contains(std::string("claim ") + name + " is missing"));
    json::object wrong = base;
    wrong[name] = wrong[name].is_string() ? json::value(1) : json::value("1795860000");
    CHECK_THAT(refusal(verify(sign_raw(header_for(key), json::serialize(wrong), key), key.public_key(), kNow)),
               Catch::Contains(std::string("claim ") + name + " is not"));
  }
  json::object fractional = base;
  fractional["exp"] = static_cast<double>(kNow + 300);
  CHECK_THAT(refusal(verify(sign_raw(header_for(key), json::serialize(fractional), key), key.public_key(), kNow)),
             Catch::Contains("claim exp is not a non-negative integer"));
  json::object extra = base;
  extra["scope"] = "ignored";
  CHECK(verify(sign_raw(header_for(key), json::serialize(extra), key), key.public_key(), kNow).has_value());

  std::string text = json::serialize(base);
  text.insert(1, R"("aud":"shell/exec",)");  // the same claim twice
  CHECK_THAT(refusal(verify(sign_raw(header_for(key), text, key), key.public_key(), kNow)),
             Catch::Contains("member \"aud\" appears twice"));
}

TEST_CASE("malformed compact serialisations are refused", "[credentials]") {
  EcPrivateKey key = new_key();
  std::string token = mint_ok(sample_claims(), key);
  auto parts = parts_of(token);
  CHECK_THAT(refusal(verify("", key.public_key(), kNow)), Catch::Contains("empty"));
  CHECK_THAT(refusal(verify(parts[0] + "." + parts[1], key.public_key(), kNow)), Catch::Contains("three parts"));
  CHECK_THAT(refusal(verify(token + ".", key.public_key(), kNow)), Catch::Contains("three parts"));
  CHECK_THAT(refusal(verify(token + "=", key.public_key(), kNow)), Catch::Contains("base64url without padding"));
  CHECK_THAT(refusal(verify(" " + token, key.public_key(), kNow)), Catch::Contains("base64url without padding"));
  CHECK_THAT(refusal(verify(parts[0] + ".." + parts[2], key.public_key(), kNow)), Catch::Contains("payload is empty"));
  CHECK_THAT(refusal(verify(std::string(kMaxTokenBytes + 1, 'a'), key.public_key(), kNow)),
             Catch::Contains("over the limit of 16384"));
  // A second spelling of the same signature bytes (stray low bits in the last character).
  std::string sig = parts[2];
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t at = alphabet.find(sig.back());
  sig.back() = alphabet[at ^ 1];
  CHECK_THAT(refusal(verify(parts[0] + "." + parts[1] + "." + sig, key.public_key(), kNow)),
             Catch::Contains("canonical base64url"));
  std::string not_json = base64url_encode(as_bytes(std::string_view("{\"alg\":")));
  CHECK_THAT(refusal(verify(not_json + "." + parts[1] + "." + parts[2], key.public_key(), kNow)),
             Catch::Contains("header is not JSON"));
  std::string array = base64url_encode(as_bytes(std::string_view("[]")));
  CHECK_THAT(refusal(verify(array + "." + parts[1] + "." + parts[2], key.public_key(), kNow)),
             Catch::Contains("header is not a JSON object"));
}

TEST_CASE("mint refuses incomplete claims and a signer holding another key", "[credentials]") {
  EcPrivateKey key = new_key();
  EcPrivateKey other = new_key();
  CallClaims c = sample_claims();
  c.jti.clear();
  auto r = mint(c, key.public_key(), signer_of(key));
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message(), Catch::Contains("claim jti is empty"));
  auto wrong = mint(sample_claims(), key.public_key(), signer_of(other));
  REQUIRE_FALSE(wrong.has_value());
  CHECK_THAT(wrong.error().message(), Catch::Contains("does not verify with the agent key"));
  auto failing = mint(sample_claims(), key.public_key(),
                      [](const Digest&) -> Result<RawSignature> { return fail(errc::tpm_unavailable, "no TPM"); });
  REQUIRE_FALSE(failing.has_value());
  CHECK_THAT(failing.error().message(), Catch::Contains("mint: sign: no TPM"));
}

TEST_CASE("canonical JSON sorts members by UTF-16 code units", "[credentials]") {
  // RFC 8785 section 3.2.3.
  std::string in = R"({"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",)"
                   R"("1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control",)"
                   R"("\u00f6":"Latin Small Letter O With Diaeresis"})";
  std::string out = canonical(in);
  std::vector<std::string> order = {"\\r", "1", "\xc2\x80", "\xc3\xb6", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                    "\xef\xac\xb3"};
  size_t last = 0;
  for (const auto& k : order) {
    size_t at = out.find("\"" + k + "\":");
    CAPTURE(k);
    REQUIRE(at != std::string::npos);
    CHECK(at >= last);
    last = at;
  }
  CHECK(canonical(R"({ "b" : 1, "a" : { "d" : [ 3 , {"z":1,"y":2} ], "c" : null } })") ==
        R"({"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":1})");
}

TEST_CASE("canonical JSON escapes only what JSON requires", "[credentials]") {
  // RFC 8785 section 3.2.2.2 example string.
  CHECK(canonical(R"("\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/")") ==
        "\"\xe2\x82\xac$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"");
  CHECK(canonical(R"("\b\t\n\f\r\u0000\u001f\u007f\u2028")") ==
        "\"\\b\\t\\n\\f\\r\\u0000\\u001f\x7f\xe2\x80\xa8\"");
  CHECK(canonical(R"([null,true,false,"",[],{}])") == R"([null,true,false,"",[],{}])");
  CHECK_FALSE(canonical_json(json::value(json::string("\xff"))).has_value());
  CHECK_FALSE(canonical_json(json::value(json::string("\xed\xa0\x80"))).has_value());  // a surrogate
  CHECK_FALSE(canonical_json(json::value(json::string("\xc0\xaf"))).has_value());      // overlong '/'
}

TEST_CASE("canonical JSON writes numbers as ECMAScript does", "[credentials]") {
  // RFC 8785 section 3.2.2.3 and appendix B.
  CHECK(canonical("[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]") ==
        "[333333333.3333333,1e+30,4.5,0.002,1e-27]");
  CHECK(canonical_double(0x0000000000000000) == "0");
  CHECK(canonical_double(0x8000000000000000) == "0");
  CHECK(canonical_double(0x0000000000000001) == "5e-324");
  CHECK(canonical_double(0x8000000000000001) == "-5e-324");
  CHECK(canonical_double(0x7fefffffffffffff) == "1.7976931348623157e+308");
  CHECK(canonical_double(0x4340000000000000) == "9007199254740992");
  CHECK(canonical_double(0x444b1ae4d6e2ef50) == "1e+21");
  CHECK(canonical_double(0x3eb0c6f7a0b5ed8d) == "0.000001");
  CHECK(canonical_double(0x3eb0c6f7a0b5ed8c) == "9.999999999999997e-7");
  CHECK(canonical_double(0x44b52d02c7e14af6) == "1e+23");
  CHECK(canonical("[1e-7,123456789012345680000,1.5,-0.25,100]") == "[1e-7,123456789012345680000,1.5,-0.25,100]");
  // Integers are written exactly, even where JCS (doubles only) would round.
  CHECK(canonical("[-0,0,-1,9007199254740993,18446744073709551615]") == "[0,0,-1,9007199254740993,18446744073709551615]");
  // Why parse_json_strict re-reads doubles: boost::json 1.81 alone is one ulp off here.
  CHECK_NOFAIL(*canonical_json(json::parse("333333333.33333329")) == "333333333.33333325");
  CHECK_FALSE(parse_json_strict("[1e400]").has_value());
  CHECK_FALSE(parse_json_strict("[-1e-400]").has_value());
  CHECK_FALSE(canonical_json(json::value(std::numeric_limits<double>::infinity())).has_value());
  CHECK_FALSE(canonical_json(json::value(std::numeric_limits<double>::quiet_NaN())).has_value());
}

TEST_CASE("the argument hash does not depend on member order or white space", "[credentials]") {
  auto a = args_sha256(*parse_json_strict(R"({"path":"/work/a.txt","opts":{"mode":"r","limit":10},"tags":["x","y"]})"));
  auto b = args_sha256(*parse_json_strict(R"({ "tags" : ["x","y"], "opts" : {"limit":10.0, "mode":"r"}, "path":"/work/a.txt" })"));
  auto c = args_sha256(*parse_json_strict(R"({"path":"/work/a.txt","opts":{"mode":"r","limit":10},"tags":["y","x"]})"));
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  REQUIRE(c.has_value());
  CHECK(*a == *b);
  CHECK(*a != *c);  // array order matters
  CHECK(a->size() == 43);
  // A known value: SHA-256 of {"path":"/work/a.txt"}.
  CHECK(*args_sha256(json::parse(R"({"path":"/work/a.txt"})")) ==
        base64url_encode(sha256(std::string_view(R"({"path":"/work/a.txt"})"))));
}

TEST_CASE("strict JSON parsing refuses duplicate members at any depth", "[credentials]") {
  CHECK(parse_json_strict(R"({"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]})").has_value());
  auto top = parse_json_strict(R"({"a":1,"a":2})");
  REQUIRE_FALSE(top.has_value());
  CHECK_THAT(top.error().message(), Catch::Contains("member \"a\" appears twice"));
  CHECK_FALSE(parse_json_strict(R"({"x":[{"k":1,"k":1}]})").has_value());
  CHECK_FALSE(parse_json_strict(R"({"\u0061":1,"a":2})").has_value());  // the same name spelled twice
  CHECK_FALSE(parse_json_strict("{\"a\":").has_value());
  CHECK_FALSE(parse_json_strict("{} x").has_value());
}

TEST_CASE("credential TTL is the rule's capped by the bundle life left", "[credentials]") {
  CHECK(credential_ttl(300, kNow, kNow + 3600) == 300);
  CHECK(credential_ttl(300, kNow, kNow + 120) == 120);
  CHECK(credential_ttl(300, kNow, kNow + 1) == 1);
  CHECK(credential_ttl(300, kNow, kNow) == 0);
  CHECK(credential_ttl(300, kNow, kNow - 5) == 0);
  CHECK(credential_ttl(0, kNow, kNow + 3600) == 0);
  CHECK(credential_ttl(UINT32_MAX, kNow, kNow + 10 * kMaxLifetimeSeconds) == kMaxLifetimeSeconds);
}

TEST_CASE("jti values are 128 random bits", "[credentials]") {
  std::string a = new_jti();
  CHECK(a.size() == 22);
  CHECK(base64url_decode(a)->size() == 16);
  CHECK(a != new_jti());
}
