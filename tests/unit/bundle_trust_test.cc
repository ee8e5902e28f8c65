// Bundle parsing and signatures, trust roots and their rotation: no TPM involved.
#include <catch2/catch.hpp>

#include "bundle_factory.h"
#include "outpost/base/errors.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/bundle_store.h"
#include "outpost/offline_cache/trust.h"

using namespace outpost;
using namespace outpost::offline_cache;

namespace {
struct Keys {
  EcPrivateKey a = *EcPrivateKey::generate();
  EcPrivateKey b = *EcPrivateKey::generate();
  EcPrivateKey c = *EcPrivateKey::generate();
  EcPrivateKey d = *EcPrivateKey::generate();
};
}  // namespace

TEST_CASE("a bundle signed by k of n root keys verifies and each shortfall is named", "[bundle]") {
  Keys k;
  auto root = TrustRoot::create({k.a.public_key(), k.b.public_key(), k.c.public_key()}, 2);
  REQUIRE(root.has_value());
  Bytes unsigned_bundle = testing::make_bundle({});
  auto check = [&](const Bytes& bytes) {
    auto b = SignedBundle::parse(bytes);
    REQUIRE(b.has_value());
    return verify_bundle_signatures(*b, *root);
  };
  CHECK(check(testing::sign_bundle(unsigned_bundle, {&k.a, &k.b})).has_value());
  CHECK(check(testing::sign_bundle(unsigned_bundle, {&k.a, &k.b, &k.c})).has_value());

  auto one = check(testing::sign_bundle(unsigned_bundle, {&k.a}));
  REQUIRE_FALSE(one.has_value());
  CHECK_THAT(one.error().message(), Catch::Contains("1 valid signature(s) of the 2 required"));
  auto stranger = check(testing::sign_bundle(unsigned_bundle, {&k.a, &k.d}));
  REQUIRE_FALSE(stranger.has_value());
  CHECK_THAT(stranger.error().message(), Catch::Contains("not a root key"));
  auto again = SignedBundle::parse(testing::sign_bundle(unsigned_bundle, {&k.a}));
  CHECK_FALSE(again->add_signature(k.a).has_value());  // one signature per key
}

TEST_CASE("a byte flipped anywhere in a signed bundle is refused", "[bundle]") {
  Keys k;
  auto root = TrustRoot::create({k.a.public_key()}, 1);
  Bytes good = testing::sign_bundle(testing::make_bundle({}), {&k.a});
  auto good_bundle = SignedBundle::parse(good);
  REQUIRE(good_bundle.has_value());
  REQUIRE(verify_bundle_signatures(*good_bundle, *root).has_value());
  const Bytes good_payload(good_bundle->payload().begin(), good_bundle->payload().end());
  size_t refused = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    Bytes bad = good;
    bad[i] ^= 0x20;
    auto b = SignedBundle::parse(bad);
    if (!b || !verify_bundle_signatures(*b, *root)) {
      ++refused;
      continue;
    }
    // What still verifies carries the very payload that was signed (the flip hit padding or
    // the outer table's layout, which signatures do not cover and nothing reads).
    INFO("byte " << i);
    CHECK(Bytes(b->payload().begin(), b->payload().end()) == good_payload);
  }
  CHECK(refused > good.size() / 2);
}

TEST_CASE("truncated and foreign bytes are not bundles", "[bundle]") {
  Bytes good = testing::make_bundle({});
  CHECK_FALSE(SignedBundle::parse(Bytes(good.begin(), good.begin() + 10)).has_value());
  CHECK_FALSE(SignedBundle::parse(Bytes{}).has_value());
  CHECK_FALSE(SignedBundle::parse(Bytes(100, 0xff)).has_value());
  auto r = SignedBundle::parse(Bytes(good.begin(), good.end() - 8));
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().is(errc::corrupt));
}

TEST_CASE("a bundle for a newer reader is refused rather than enforced in part", "[bundle]") {
  auto r = SignedBundle::parse(testing::make_bundle({.min_reader = kBundleReaderVersion + 1}));
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().is(errc::unsupported));
  CHECK_THAT(r.error().message(), Catch::Contains("upgrade outpost"));
}

TEST_CASE("trust files round trip and refuse tampering", "[bundle][trust]") {
  Keys k;
  auto root = TrustRoot::create({k.a.public_key(), k.b.public_key()}, 2);
  REQUIRE(root->sign(k.a).has_value());
  auto back = TrustRoot::parse(root->to_json());
  REQUIRE(back.has_value());
  CHECK(back->canonical() == root->canonical());
  CHECK(back->signatures.size() == 1);
  CHECK_FALSE(TrustRoot::create({k.a.public_key()}, 2).has_value());
  CHECK_FALSE(TrustRoot::create({k.a.public_key(), k.a.public_key()}, 1).has_value());
  std::string text = root->to_json();
  std::string wrong_kid = text;
  wrong_kid.replace(wrong_kid.find(root->keys[0].kid), 4, "AAAA");
  CHECK_FALSE(TrustRoot::parse(wrong_kid).has_value());
  CHECK_FALSE(TrustRoot::parse("{}").has_value());
  CHECK_FALSE(TrustRoot::parse("not json").has_value());
}

TEST_CASE("root rotation needs a threshold of the old keys and of the new", "[bundle][trust]") {
  Keys k;
  auto v1 = *TrustRoot::create({k.a.public_key(), k.b.public_key()}, 2);
  auto v2 = *TrustRoot::create({k.c.public_key(), k.d.public_key()}, 1, 2);
  SECTION("signed by both thresholds") {
    REQUIRE(v2.sign(k.a).has_value());
    REQUIRE(v2.sign(k.b).has_value());
    REQUIRE(v2.sign(k.c).has_value());
    auto walked = walk_rotations(v1, {v2});
    REQUIRE(walked.has_value());
    CHECK(walked->version == 2);
    // A bundle signed by the new key verifies against the walked root, not the old one.
    Bytes bundle = testing::sign_bundle(testing::make_bundle({}), {&k.c});
    CHECK(verify_bundle_signatures(*SignedBundle::parse(bundle), *walked).has_value());
    CHECK_FALSE(verify_bundle_signatures(*SignedBundle::parse(bundle), v1).has_value());
  }
  SECTION("not signed by the old threshold") {
    REQUIRE(v2.sign(k.a).has_value());
    REQUIRE(v2.sign(k.c).has_value());
    auto r = verify_rotation(v1, v2);
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains("by the keys of the old root"));
  }
  SECTION("not signed by the new keys") {
    REQUIRE(v2.sign(k.a).has_value());
    REQUIRE(v2.sign(k.b).has_value());
    auto r = verify_rotation(v1, v2);
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains("by its own keys"));
  }
  SECTION("skipping a version") {
    auto v3 = *TrustRoot::create({k.c.public_key()}, 1, 3);
    REQUIRE(v3.sign(k.a).has_value());
    REQUIRE(v3.sign(k.b).has_value());
    REQUIRE(v3.sign(k.c).has_value());
    CHECK_THAT(verify_rotation(v1, v3).error().message(), Catch::Contains("does not follow"));
  }
  SECTION("a signature altered in the file") {
    REQUIRE(v2.sign(k.a).has_value());
    REQUIRE(v2.sign(k.b).has_value());
    REQUIRE(v2.sign(k.c).has_value());
    v2.signatures[0].signature[3] ^= 1;
    CHECK_FALSE(verify_rotation(v1, v2).has_value());
  }
}

TEST_CASE("bundle life rules without a TPM", "[bundle]") {
  fb::BundleT b;
  b.version = 1;
  b.not_before = 1000;
  b.not_after = 2000;
  b.max_offline = 60;
  b.on_expiry = fb::OnExpiry::SafeSet;
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fb::Bundle::Pack(fbb, &b));
  const fb::Bundle& bundle = *flatbuffers::GetRoot<fb::Bundle>(fbb.GetBufferPointer());
  BundleState s;
  s.installed_at = 1000;
  s.wall_high_water = 1500;
  s.contact_clock = {100000, 3, 0, true};
  auto at = [&](int64_t wall, attestation::ClockInfo clock) { return evaluate_life(bundle, s, wall, clock); };
  CHECK(at(1500, {110000, 3, 0, true}).in_force);
  CHECK(at(1500, {110000, 3, 0, true}).offline_left == 50);
  CHECK(at(1500, {110000, 3, 0, true}).safe_set);
  CHECK_THAT(at(999, {110000, 3, 0, true}).reason, Catch::Contains("not valid before"));
  CHECK_THAT(at(2001, {110000, 3, 0, true}).reason, Catch::Contains("expired"));
  CHECK_THAT(at(1100, {110000, 3, 0, true}).reason, Catch::Contains("wound back"));
  CHECK(at(1300, {110000, 3, 0, true}).in_force);  // within the 5-minute slack
  CHECK_THAT(at(1500, {160001, 3, 0, true}).reason, Catch::Contains("beyond max_offline"));
  CHECK(at(1500, {165000, 4, 0, true}).reason.find("beyond") != std::string::npos);  // resets do not refill it
  CHECK_THAT(at(1500, {90000, 4, 0, false}).reason, Catch::Contains("TPM clock is behind"));
  CHECK_THAT(at(1500, {110000, 2, 0, true}).reason, Catch::Contains("TPM clock is behind"));
}
