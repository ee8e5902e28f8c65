// Credential activation against swtpm: make_credential in software (the hub's half) and
// Tpm::activate_credential on the TPM (the node's half), and tpm2-tools' MakeCredential as a
// second, independent maker. [fixture] tests use the CTest fixture's swtpm.
#include <catch2/catch.hpp>

#include "outpost/attestation/credential.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "test_support.h"
#include "tpm_node.h"

using namespace outpost;
using namespace outpost::attestation;
using outpost::testing::connect_to;
using outpost::testing::provision_on;
using outpost::testing::TempDir;

namespace {

size_t handle_count(Tpm& tpm, HandleType type) {
  auto h = tpm.handles(type);
  REQUIRE(h.has_value());
  return h->size();
}

Bytes random_secret(size_t n) {
  Bytes b(n);
  random_bytes(b);
  return b;
}

CredentialChallenge challenge_for(const EcPublicKey& ek, ByteView name, ByteView secret) {
  auto c = make_credential(ek, name, secret);
  INFO((c ? std::string() : c.error().message()));
  REQUIRE(c.has_value());
  return *c;
}

std::string activation_error(const Result<Bytes>& r) {
  REQUIRE_FALSE(r.has_value());
  return r.error().message();
}

}  // namespace

TEST_CASE("a credential made in software for the AK opens on the TPM that holds the EK", "[fixture][activation]") {
  TempDir dir;
  auto tpm = connect_to(testing::fixture_tcti());
  NodeIdentity id = provision_on(*tpm, dir / "state");
  // The hub computes the name from the AK public area it pins, not from what it is told.
  auto ak_name = name_of_public(id.ak_public_area);
  REQUIRE(ak_name.has_value());
  REQUIRE(*ak_name == id.ak_name);

  const Bytes secret = random_secret(kMaxCredentialBytes);
  CredentialChallenge challenge = challenge_for(id.ek_public, *ak_name, secret);
  // TPM2B_ID_OBJECT: size, TPM2B_DIGEST(HMAC-SHA-256), encrypted TPM2B_DIGEST(secret);
  // TPM2B_ENCRYPTED_SECRET: size, TPMS_ECC_POINT of two 32-byte coordinates.
  CHECK(challenge.credential_blob.size() == 2 + (2 + 32) + (2 + secret.size()));
  CHECK(challenge.encrypted_secret.size() == 2 + (2 + 32) + (2 + 32));

  auto opened = tpm->activate_credential(id.handles.ak, id.handles.ek, challenge);
  INFO((opened ? std::string() : opened.error().message()));
  REQUIRE(opened.has_value());
  CHECK(*opened == secret);

  SECTION("shorter secrets open too, and each challenge is new") {
    const Bytes short_secret = random_secret(16);
    CredentialChallenge a = challenge_for(id.ek_public, *ak_name, short_secret);
    CredentialChallenge b = challenge_for(id.ek_public, *ak_name, short_secret);
    CHECK(a.encrypted_secret != b.encrypted_secret);  // a fresh ephemeral key each time
    CHECK(tpm->activate_credential(id.handles.ak, id.handles.ek, a).value() == short_secret);
    CHECK(tpm->activate_credential(id.handles.ak, id.handles.ek, b).value() == short_secret);
  }
  SECTION("a challenge made for a name with one byte flipped does not open") {
    Bytes name = *ak_name;
    name[10] ^= 0x01;
    auto r = tpm->activate_credential(id.handles.ak, id.handles.ek, challenge_for(id.ek_public, name, secret));
    CHECK_THAT(activation_error(r), Catch::Contains("Esys_ActivateCredential") &&
                                        Catch::Contains("made for another key name or another EK") &&
                                        Catch::Contains("integrity check failed"));
  }
  SECTION("a challenge made for another key of the same TPM (the SRK) does not open for the AK") {
    auto r = tpm->activate_credential(id.handles.ak, id.handles.ek, challenge_for(id.ek_public, id.srk_name, secret));
    CHECK_THAT(activation_error(r), Catch::Contains("integrity check failed"));
  }
  SECTION("a challenge made for another EK does not open") {
    auto other_ek = EcPrivateKey::generate();
    REQUIRE(other_ek.has_value());
    auto r = tpm->activate_credential(id.handles.ak, id.handles.ek,
                                      challenge_for(other_ek->public_key(), *ak_name, secret));
    CHECK_THAT(activation_error(r), Catch::Contains("made for another key name or another EK") &&
                                        Catch::Contains("integrity check failed"));
  }
  SECTION("an altered credential blob does not open") {
    CredentialChallenge bad = challenge;
    bad.credential_blob.back() ^= 0x80;  // inside encIdentity
    CHECK_THAT(activation_error(tpm->activate_credential(id.handles.ak, id.handles.ek, bad)),
               Catch::Contains("integrity check failed"));
    bad = challenge;
    bad.credential_blob[6] ^= 0x01;  // inside the outer HMAC
    CHECK_THAT(activation_error(tpm->activate_credential(id.handles.ak, id.handles.ek, bad)),
               Catch::Contains("integrity check failed"));
  }
  SECTION("an ephemeral point moved off the curve is refused by the TPM") {
    CredentialChallenge bad = challenge;
    bad.encrypted_secret.back() ^= 0x01;  // last byte of y
    CHECK_THAT(activation_error(tpm->activate_credential(id.handles.ak, id.handles.ek, bad)),
               Catch::Contains("Esys_ActivateCredential"));
  }
  SECTION("bytes that do not parse are refused before the TPM") {
    CredentialChallenge bad = challenge;
    bad.credential_blob.pop_back();
    CHECK_THAT(activation_error(tpm->activate_credential(id.handles.ak, id.handles.ek, bad)),
               Catch::Contains("is not a TPM2B_ID_OBJECT"));
    bad = challenge;
    bad.encrypted_secret.push_back(0);
    CHECK_THAT(activation_error(tpm->activate_credential(id.handles.ak, id.handles.ek, bad)),
               Catch::Contains("is not a TPM2B_ENCRYPTED_SECRET") && Catch::Contains("trailing"));
  }
  SECTION("make_credential refuses what no TPM would accept") {
    CHECK_FALSE(make_credential(id.ek_public, *ak_name, Bytes{}).has_value());
    CHECK_FALSE(make_credential(id.ek_public, *ak_name, Bytes(kMaxCredentialBytes + 1, 1)).has_value());
    CHECK_FALSE(make_credential(id.ek_public, Bytes(ak_name->begin() + 2, ak_name->end()), secret).has_value());
    CHECK_FALSE(make_credential(EcPublicKey(), *ak_name, secret).has_value());
  }
  // Every path, failures included, flushed its policy session.
  CHECK(handle_count(*tpm, HandleType::session) == 0);
  CHECK(handle_count(*tpm, HandleType::transient) == 0);
}

TEST_CASE("a credential made by tpm2-tools opens through Tpm::activate_credential", "[fixture][activation]") {
  TempDir dir;
  const Bytes secret = random_secret(32);
  NodeIdentity id;
  Bytes ek_public_area;
  {
    auto tpm = connect_to(testing::fixture_tcti());
    id = provision_on(*tpm, dir / "state");
    auto ek = tpm->read_persistent(id.handles.ek);
    REQUIRE(ek.has_value());
    ek_public_area = ek->public_area;
  }
  // tpm2-tools makes it offline (no TPM: -T none) from the EK's TPM2B_PUBLIC, with OpenSSL.
  REQUIRE(write_file_atomic(dir / "ek.pub", ek_public_area, 0600).has_value());
  REQUIRE(write_file_atomic(dir / "secret.bin", secret, 0600).has_value());
  auto made = testing::run_program({"tpm2_makecredential", "-T", "none", "-u", (dir / "ek.pub").string(), "-s",
                                    (dir / "secret.bin").string(), "-n", hex_encode(id.ak_name), "-o",
                                    (dir / "cred.out").string()});
  INFO(made.err);
  REQUIRE(made.exit_code == 0);
  // The tools' file: magic 0xBADCC0DE and version 1 (big-endian), then TPM2B_ID_OBJECT and
  // TPM2B_ENCRYPTED_SECRET back to back.
  auto file = read_file(dir / "cred.out");
  REQUIRE(file.has_value());
  REQUIRE(file->size() > 10);
  CHECK(Bytes(file->begin(), file->begin() + 8) == Bytes{0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1});
  const size_t blob_len = 2 + (static_cast<size_t>((*file)[8]) << 8 | (*file)[9]);
  REQUIRE(8 + blob_len < file->size());
  CredentialChallenge challenge{Bytes(file->begin() + 8, file->begin() + 8 + static_cast<ptrdiff_t>(blob_len)),
                                Bytes(file->begin() + 8 + static_cast<ptrdiff_t>(blob_len), file->end())};

  auto tpm = connect_to(testing::fixture_tcti());
  auto opened = tpm->activate_credential(id.handles.ak, id.handles.ek, challenge);
  INFO((opened ? std::string() : opened.error().message()));
  REQUIRE(opened.has_value());
  CHECK(*opened == secret);
  CHECK(handle_count(*tpm, HandleType::session) == 0);
}
