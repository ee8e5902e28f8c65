// The software half of credential activation (credential.h and its pieces in
// attestation/src/credential_crypto.h) against published vectors, no TPM. The end-to-end check
// against a TPM's TPM2_ActivateCredential is tests/integration/credential_test.cc.
//
// Vectors: github.com/chrisfenner/tpm-test-vectors (Apache-2.0), vectors/kdfa.json,
// vectors/kdfe.json and vectors/ecc_labeled_encaps.json at commit e7db4de. The KDF vectors come
// from go-tpm's KDFa/KDFe; the ECC one ("05_R_P256_SHA256_128", label IDENTITY, a restricted
// P-256 decryption key with SHA-256 name and AES-128-CFB, like outpost's EK) was validated by
// the vectors' author with TPM2_ActivateCredential on a TPM simulator.
#include <catch2/catch.hpp>

#include "credential_crypto.h"
#include "marshal.h"
#include "outpost/attestation/credential.h"
#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"

using namespace outpost;
using namespace outpost::attestation;

namespace {

Bytes hex(std::string_view s) {
  auto b = hex_decode(s);
  REQUIRE(b.has_value());
  return *b;
}

std::string hex_of(const Result<detail::SecretBytes>& r) {
  INFO((r ? std::string() : r.error().message()));
  REQUIRE(r.has_value());
  return hex_encode(r->get());
}

// A software P-256 key from its private scalar: SEC1 ECPrivateKey without the optional public
// key (mbedTLS computes it), as PEM.
EcPrivateKey key_from_scalar(std::string_view d_hex) {
  Bytes der = hex("30310201010420");
  Bytes d = hex(d_hex);
  der.insert(der.end(), d.begin(), d.end());
  Bytes oid = hex("a00a06082a8648ce3d030107");  // [0] namedCurve prime256v1
  der.insert(der.end(), oid.begin(), oid.end());
  auto key = EcPrivateKey::from_pem("-----BEGIN EC PRIVATE KEY-----\n" + base64_encode(der) +
                                    "\n-----END EC PRIVATE KEY-----\n");
  INFO((key ? std::string() : key.error().message()));
  REQUIRE(key.has_value());
  return std::move(*key);
}

// The vector's target key: a marshalled TPMT_PUBLIC and the private scalar from its
// TPMT_SENSITIVE.
constexpr std::string_view kEkPublic =
    "0023000b000304600020bef56b8c1cc84e11edd717528d2cd99356bd2bbf8f015209c3f84aeeaba8e8a2000600800043001000030010"
    "0020f126562cedff2fa344c6234085de4250112ecf72d0714336970de012ba977da9002017436ee1160921fdd2ed033e11ba04ed0c"
    "edf2ca462246118a359f8eb469b531";
constexpr std::string_view kEkPrivate = "b93b64cb3b88ab2992073cda3590095d4351d3c7e8c940dbbe83ba71f47e3749";
constexpr std::string_view kEphemeralPrivate = "85e55f8e90f1ca33eb4fc4b2e347e6062127d4975bc48c520afdbcdd49b1c6d7";
constexpr std::string_view kSeed = "88d8f97b4b8fd8bd1751ca32b5a3aa14c91163ad984b5c732e400572a8525edc";
constexpr std::string_view kEphemeralPoint =
    "00200173de00ffb1981886c1fd3039b2de4e6dd1eb34634be4d9ce27a46455633606002083ba87eb7c9a032cc36ab674fc48266c42"
    "55aeb312d069893b6ea74fbcb21c3f";

EcPublicKey vector_ek() {
  auto pub = detail::unmarshal<TPMT_PUBLIC>(hex(kEkPublic), Tss2_MU_TPMT_PUBLIC_Unmarshal, "TPMT_PUBLIC");
  REQUIRE(pub.has_value());
  CHECK(pub->nameAlg == TPM2_ALG_SHA256);
  CHECK(pub->parameters.eccDetail.symmetric.keyBits.aes == 128);
  CHECK(pub->parameters.eccDetail.symmetric.mode.aes == TPM2_ALG_CFB);
  auto key = detail::ec_public_key(*pub);
  REQUIRE(key.has_value());
  return *key;
}

}  // namespace

TEST_CASE("KDFa with SHA-256 matches the published vectors", "[credential]") {
  // 27_SHA256_116: a bit count that is not a multiple of 8.
  CHECK(hex_of(detail::kdfa_sha256(hex("aff14e568afc0ea51eea748c8915df067c7700"), "IDENTITY",
                                   hex("ce4edfb881540700e300"),
                                   hex("68ddb4a0e59d74cd34dfe631d91e1ea3fbc95865440adedff7e9d011890fba"), 116)) ==
        "019ed5e0956338ddda4413ecee5cf2");
  // 38_SHA256_552: several HMAC blocks, an empty contextV.
  CHECK(hex_of(detail::kdfa_sha256(hex("e38573d849a5cfc9973f58b4535e42b7c08ef28b1b3e775375b5c66b9644be"), "STORAGE",
                                   hex("00586dccbebc998087e4"), {}, 552)) ==
        "968f349b066ed26be3bd4e78333eb5c5b51c26ea376efe5dfaf061a2cf7f5eb82e4fcc2a30736e30f12b48ab17efd10576a4cf334503"
        "24b3f20011628df7a07c411f8c0f6c");
  // 51_SHA256_90: an empty key.
  CHECK(hex_of(detail::kdfa_sha256({}, "INTEGRITY", hex("ff84394f0c76ba386d4239"),
                                   hex("a8ea61c975214cc4afafc557464d56db34fa00"), 90)) ==
        "01375165ff1f4e7ab263071f");
  CHECK_FALSE(detail::kdfa_sha256(hex("00"), "STORAGE", {}, {}, 0).has_value());
}

TEST_CASE("KDFe with SHA-256 matches the published vectors", "[credential]") {
  // 25_SHA256_241
  CHECK(hex_of(detail::kdfe_sha256(hex("abfeed98891b58d2f881537fba2c215653f8b91b8a131b61f0b72de7ccd07a"), "IDENTITY",
                                   hex("71a10284e793bd38f61e6aef1cbfa131c3ad546e72421fe4a3ff"),
                                   hex("64cc0fac59f45b9b2ace75856f409ac830ccc64f2fff"), 241)) ==
        "00f17279fc5b8f842d30fbe5a7afc109468671e6da33fec996d6a7c170e37f");
  // 37_SHA256_728: several hash blocks.
  CHECK(hex_of(detail::kdfe_sha256(hex("6cbfdee9e66367b676"), "STORAGE", hex("c303fe79ff"),
                                   hex("79e34519a8a32f13d400"), 728)) ==
        "e59560660988b3d66e3a76bcc96110cc199bfa0418dca315f7070619e04fa0b6cdb2912db3786aaa34f2cad7dcee560eed2b4c3f7566"
        "e533e4a3bba9c9364397dd2ce45a0b85dde5c83fea27b4fb20bb0125346d24e5d9321f81b2");
}

TEST_CASE("ECC secret sharing for IDENTITY matches a vector validated by TPM2_ActivateCredential", "[credential]") {
  const EcPublicKey ek = vector_ek();
  const EcPrivateKey ephemeral = key_from_scalar(kEphemeralPrivate);
  auto shared = detail::ecc_share_seed(ephemeral, ek, "IDENTITY");
  REQUIRE(shared.has_value());
  CHECK(hex_encode(shared->seed.get()) == kSeed);
  // TPM2B_ENCRYPTED_SECRET: its size, then the TPMS_ECC_POINT the vector lists.
  CHECK(hex_encode(shared->encrypted_secret) == "0044" + std::string(kEphemeralPoint));

  SECTION("the EK's side derives the same seed from the ephemeral point") {
    const EcPrivateKey ek_private = key_from_scalar(kEkPrivate);
    REQUIRE(ek_private.public_key() == ek);
    auto z = ek_private.ecdh_shared_x(ephemeral.public_key());
    REQUIRE(z.has_value());
    CHECK(hex_of(detail::kdfe_sha256(*z, "IDENTITY", ephemeral.public_key().x(), ek.x(), 256)) == kSeed);
  }
  SECTION("a credential built on that seed has the TPM's layout and depends on the name") {
    const Bytes name = hex("000b" + std::string(64, 'a'));
    const Bytes secret = hex("00112233445566778899aabbccddeeff");
    auto c = detail::make_credential_with(ephemeral, ek, name, secret);
    REQUIRE(c.has_value());
    CHECK(c->encrypted_secret == shared->encrypted_secret);
    // size || TPM2B_DIGEST(outerHMAC) || encrypted (size || secret)
    REQUIRE(c->credential_blob.size() == 2 + 2 + 32 + 2 + secret.size());
    CHECK(hex_encode(ByteView(c->credential_blob).first(4)) == "00340020");
    // encIdentity is AES-128-CFB(KDFa(seed, "STORAGE", name, "", 128), IV 0, size || secret).
    auto sym = detail::kdfa_sha256(hex(kSeed), "STORAGE", name, {}, 128);
    REQUIRE(sym.has_value());
    Bytes plain = hex("0010");
    plain.insert(plain.end(), secret.begin(), secret.end());
    auto enc = aes_cfb_encrypt(sym->get(), Bytes(16, 0), plain);
    REQUIRE(enc.has_value());
    const Bytes enc_identity(c->credential_blob.begin() + 36, c->credential_blob.end());
    CHECK(enc_identity == *enc);
    // outerHMAC is HMAC-SHA-256(KDFa(seed, "INTEGRITY", "", "", 256), encIdentity || name).
    auto hmac_key = detail::kdfa_sha256(hex(kSeed), "INTEGRITY", {}, {}, 256);
    REQUIRE(hmac_key.has_value());
    Bytes authenticated = enc_identity;
    authenticated.insert(authenticated.end(), name.begin(), name.end());
    auto mac = hmac_sha256(hmac_key->get(), authenticated);
    REQUIRE(mac.has_value());
    CHECK(Bytes(c->credential_blob.begin() + 4, c->credential_blob.begin() + 36) == Bytes(mac->begin(), mac->end()));

    Bytes other_name = name;
    other_name.back() ^= 0x01;
    auto other = detail::make_credential_with(ephemeral, ek, other_name, secret);
    REQUIRE(other.has_value());
    CHECK(other->credential_blob != c->credential_blob);
  }
}

TEST_CASE("make_credential refuses secrets and names no TPM would take", "[credential]") {
  const EcPublicKey ek = vector_ek();
  const Bytes name = hex("000b" + std::string(64, '1'));
  CHECK(make_credential(ek, name, Bytes(kMaxCredentialBytes, 7)).has_value());
  auto empty = make_credential(ek, name, Bytes{});
  REQUIRE_FALSE(empty.has_value());
  CHECK(empty.error().is(errc::invalid_argument));
  auto big = make_credential(ek, name, Bytes(kMaxCredentialBytes + 1, 7));
  REQUIRE_FALSE(big.has_value());
  CHECK_THAT(big.error().message(), Catch::Contains("1 to 32 bytes, not 33"));
  auto truncated = make_credential(ek, ByteView(name).first(33), Bytes(16, 7));
  REQUIRE_FALSE(truncated.has_value());
  CHECK_THAT(truncated.error().message(), Catch::Contains("is not a TPM object name"));
  CHECK_FALSE(make_credential(ek, hex("0099" + std::string(64, '1')), Bytes(16, 7)).has_value());  // no such hash
  CHECK_FALSE(make_credential(EcPublicKey(), name, Bytes(16, 7)).has_value());
}
