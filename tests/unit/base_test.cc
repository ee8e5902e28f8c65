#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <thread>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/base/result.h"
#include "outpost/base/serial_executor.h"
#include "test_support.h"

using namespace outpost;

namespace {
Result<int> parse_positive(int v) {
  if (v <= 0) return fail(errc::invalid_argument, "not positive");
  return v;
}
Result<int> doubled(int v) {
  OUTPOST_TRY(int x, parse_positive(v));
  return 2 * x;
}
}  // namespace

TEST_CASE("Result carries a value or an error with context", "[base]") {
  Result<int> good = doubled(21);
  REQUIRE(good.has_value());
  CHECK(*good == 42);
  Result<int> bad = doubled(-1);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().is(errc::invalid_argument));
  CHECK(bad.error().wrap("loading").message() == "loading: not positive: invalid argument");
}

TEST_CASE("TSS2 and mbedTLS codes decode through their own libraries", "[base]") {
  std::error_code tss = tss2_error(0x0000018b);  // TPM_RC_HANDLE, parameter 1
  CHECK(tss.category().name() == std::string("tss2"));
  CHECK_THAT(tss.message(), Catch::Contains("handle") && Catch::Contains("0x0000018b"));
  std::error_code mbed = mbedtls_error(-0x4E80);  // MBEDTLS_ERR_ECP_VERIFY_FAILED
  CHECK(mbed.category().name() == std::string("mbedtls"));
  CHECK_THAT(mbed.message(), Catch::Contains("ECP") && Catch::Contains("-0x4e80"));
}

TEST_CASE("hex and base64url round trip and reject bad input", "[base]") {
  Bytes data = {0x00, 0x01, 0xfe, 0xff, 0x7f};
  CHECK(hex_encode(data) == "0001feff7f");
  CHECK(*hex_decode("0x0001FEFF7f") == data);
  CHECK_FALSE(hex_decode("abc").has_value());
  CHECK_FALSE(hex_decode("zz").has_value());
  CHECK(base64url_encode(data) == "AAH-_38");
  CHECK(*base64url_decode("AAH-_38") == data);
  CHECK_FALSE(base64url_decode("AAH+/38=").has_value());
  CHECK(equal_constant_time(data, data));
  CHECK_FALSE(equal_constant_time(data, Bytes{0x00}));
}

TEST_CASE("SHA-256 matches the FIPS 180-2 vector", "[base][crypto]") {
  CHECK(hex_encode(sha256(std::string_view("abc"))) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 h;
  h.update(std::string_view("a")).update(std::string_view("bc"));
  CHECK(h.finish() == sha256(std::string_view("abc")));
}

TEST_CASE("HMAC-SHA-256 matches RFC 4231 and AES-128-CFB matches SP 800-38A", "[base][crypto]") {
  // RFC 4231 test case 2.
  auto mac = hmac_sha256(as_bytes("Jefe"), as_bytes("what do ya want for nothing?"));
  REQUIRE(mac.has_value());
  CHECK(hex_encode(*mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // NIST SP 800-38A F.3.13, CFB128-AES128.Encrypt; and a length that is not a whole block.
  const Bytes key = *hex_decode("2b7e151628aed2a6abf7158809cf4f3c");
  const Bytes iv = *hex_decode("000102030405060708090a0b0c0d0e0f");
  const Bytes plain = *hex_decode(
      "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
      "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710");
  auto cipher = aes_cfb_encrypt(key, iv, plain);
  REQUIRE(cipher.has_value());
  CHECK(hex_encode(*cipher) ==
        "3b3fd92eb72dad20333449f8e83cfb4ac8a64537a0b3a93fcde3cdad9f1ce58b"
        "26751f67a3cbb140b1808cf187a4f4dfc04b05357c5d1c0eeac4c66f9ff7f2e6");
  auto partial = aes_cfb_encrypt(key, iv, ByteView(plain).first(20));
  REQUIRE(partial.has_value());
  CHECK(*partial == Bytes(cipher->begin(), cipher->begin() + 20));
  CHECK_FALSE(aes_cfb_encrypt(ByteView(key).first(15), iv, plain).has_value());
  CHECK_FALSE(aes_cfb_encrypt(key, ByteView(iv).first(8), plain).has_value());
}

TEST_CASE("AES-256-GCM seals and opens, and refuses anything altered", "[base][crypto]") {
  // The GCM specification's test cases 13 and 14 (McGrew and Viega): a zero key and nonce.
  const Bytes zero_key(32, 0), zero_nonce(12, 0);
  auto empty = aes_gcm_seal(zero_key, zero_nonce, {}, {});
  REQUIRE(empty.has_value());
  CHECK(hex_encode(*empty) == "530f8afbc74536b9a963b4f1c4cb738b");
  auto block = aes_gcm_seal(zero_key, zero_nonce, {}, Bytes(16, 0));
  REQUIRE(block.has_value());
  CHECK(hex_encode(*block) == "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919");
  CHECK(*aes_gcm_open(zero_key, zero_nonce, {}, *block) == Bytes(16, 0));

  Bytes key(32), nonce(12);
  random_bytes(key);
  random_bytes(nonce);
  auto sealed = aes_gcm_seal(key, nonce, as_bytes("name"), as_bytes("a refresh token"));
  REQUIRE(sealed.has_value());
  CHECK(as_chars(*aes_gcm_open(key, nonce, as_bytes("name"), *sealed)) == "a refresh token");
  auto other_aad = aes_gcm_open(key, nonce, as_bytes("other"), *sealed);
  REQUIRE_FALSE(other_aad.has_value());
  CHECK(other_aad.error().code() == make_error_code(errc::verification_failed));
  Bytes altered = *sealed;
  altered[0] ^= 1;
  CHECK_FALSE(aes_gcm_open(key, nonce, as_bytes("name"), altered).has_value());
  CHECK_FALSE(aes_gcm_open(key, nonce, as_bytes("name"), ByteView(*sealed).first(10)).has_value());
  CHECK_FALSE(aes_gcm_seal(ByteView(key).first(16), nonce, {}, {}).has_value());
  CHECK_FALSE(aes_gcm_seal(key, ByteView(nonce).first(8), {}, {}).has_value());
}

TEST_CASE("P-256 ECDH gives both sides the same x coordinate", "[base][crypto]") {
  auto a = EcPrivateKey::generate();
  auto b = EcPrivateKey::generate();
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  auto ab = a->ecdh_shared_x(b->public_key());
  auto ba = b->ecdh_shared_x(a->public_key());
  REQUIRE(ab.has_value());
  REQUIRE(ba.has_value());
  CHECK(*ab == *ba);
  CHECK_FALSE(a->ecdh_shared_x(EcPublicKey()).has_value());  // not a point on the curve
}

TEST_CASE("ECDSA P-256 sign and verify and key formats", "[base][crypto]") {
  auto key = EcPrivateKey::generate();
  REQUIRE(key.has_value());
  Digest d = sha256(std::string_view("message"));
  auto sig = key->sign(d);
  REQUIRE(sig.has_value());
  CHECK(key->public_key().verify(d, *sig).has_value());

  SECTION("RFC 6979 signatures are deterministic") { CHECK(key->sign(d)->concat() == sig->concat()); }
  SECTION("a different digest fails") {
    auto r = key->public_key().verify(sha256(std::string_view("other")), *sig);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().is(errc::verification_failed));
  }
  SECTION("DER and raw encodings convert both ways") {
    auto der = ecdsa_der_from_raw(sig->r, sig->s);
    REQUIRE(der.has_value());
    CHECK(key->public_key().verify(d, ByteView(*der)).has_value());
    auto back = ecdsa_raw_from_der(*der);
    REQUIRE(back.has_value());
    CHECK(back->concat() == sig->concat());
    Bytes trailing = *der;
    trailing.push_back(0);
    CHECK_FALSE(ecdsa_raw_from_der(trailing).has_value());
  }
  SECTION("PEM, DER and JWK round trip") {
    const EcPublicKey& pub = key->public_key();
    CHECK(*EcPublicKey::from_pem(pub.to_pem()) == pub);
    CHECK(*EcPublicKey::from_der(pub.to_der()) == pub);
    CHECK(*EcPublicKey::from_jwk(pub.to_jwk("kid-1")) == pub);
    auto pem = key->to_pem();
    REQUIRE(pem.has_value());
    auto again = EcPrivateKey::from_pem(*pem);
    REQUIRE(again.has_value());
    CHECK(again->public_key() == pub);
    CHECK(pub.thumbprint().size() == 43);
  }
  SECTION("bad keys are refused") {
    Bytes zero(32, 0);
    CHECK_FALSE(EcPublicKey::from_point(zero, zero).has_value());
    CHECK_FALSE(EcPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").has_value());
    CHECK_FALSE(EcPublicKey::from_jwk(R"({"kty":"RSA","n":"AQAB","e":"AQAB"})").has_value());
    CHECK_FALSE(EcPublicKey::from_jwk("not json").has_value());
  }
}

TEST_CASE("write_file_atomic replaces whole files and read_file bounds size", "[base][files]") {
  testing::TempDir dir;
  auto path = dir / "a.txt";
  REQUIRE(write_file_atomic(path, std::string_view("first")).has_value());
  REQUIRE(write_file_atomic(path, std::string_view("second")).has_value());
  CHECK(*read_text_file(path) == "second");
  auto too_big = read_file(path, 3);
  REQUIRE_FALSE(too_big.has_value());
  CHECK(too_big.error().is(errc::invalid_argument));
  // No temporary files are left behind.
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()), {}) == 1);
  auto missing = write_file_atomic(dir / "no/such/dir/file", std::string_view("x"));
  REQUIRE_FALSE(missing.has_value());
  CHECK_THAT(missing.error().message(), Catch::Contains("No such file"));
}

TEST_CASE("log records render as human text and as JSON", "[base][log]") {
  std::string human = log::render(log::Level::warn, "tpm.retry", {{"handle", "0x81000001"}, {"why", "a b"}},
                                  log::Format::human);
  CHECK_THAT(human, Catch::Contains("warn  tpm.retry handle=0x81000001 why=\"a b\""));
  std::string json = log::render(log::Level::info, "node.init", {{"node_id", "abc"}}, log::Format::json);
  auto v = boost::json::parse(json).as_object();
  CHECK(v["event"].as_string() == "node.init");
  CHECK(v["level"].as_string() == "info");
  CHECK(v["node_id"].as_string() == "abc");
}

TEST_CASE("SerialExecutor runs jobs in order on one thread", "[base]") {
  SerialExecutor ex;
  std::vector<int> order;
  std::thread::id worker;
  std::vector<std::future<void>> done;
  for (int i = 0; i < 100; ++i) {
    done.push_back(ex.submit([&, i] {
      if (i == 0) worker = std::this_thread::get_id();
      CHECK(std::this_thread::get_id() == worker);
      order.push_back(i);
    }));
  }
  for (auto& f : done) f.get();
  REQUIRE(order.size() == 100);
  CHECK(std::is_sorted(order.begin(), order.end()));
  CHECK(worker != std::this_thread::get_id());
  // A job may run a nested job without deadlocking.
  CHECK(ex.run([&] { return ex.run([] { return 7; }); }) == 7);
}
