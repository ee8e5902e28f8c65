// The verifier against attestations built in software (tests/support/soft_tpm.h: TPMS_ATTEST
// marshalled with tss2-mu, signed with a software P-256 key): every refusal path, no TPM.
#include <catch2/catch.hpp>
#include <cstring>

#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "soft_tpm.h"

using namespace outpost;
using namespace outpost::attestation;

namespace {

PcrValues sample_pcrs() {
  PcrBank bank;
  bank.hash_alg = hash_alg::sha256;
  for (uint32_t pcr : {0u, 1u, 7u, 23u}) bank.values[pcr] = Bytes(32, static_cast<uint8_t>(pcr + 1));
  return {bank};
}

}  // namespace

TEST_CASE("a software-made quote verifies and each alteration is refused with its reason", "[verifier]") {
  const Bytes nonce = {1, 2, 3, 4};
  PcrValues pcrs = sample_pcrs();
  const testing::SoftAk soft;
  const SignedAttestation quote = soft.quote(nonce, pcrs, {1000, 2, 0, true});
  const EcPublicKey& ak = soft.pub();

  auto good = verify_quote(quote, ak, nonce, pcrs);
  REQUIRE(good.has_value());
  CHECK(good->clock.reset_count == 2);
  CHECK(format_pcr_selection(good->pcr_select) == "sha256:0,1,7,23");

  auto reason = [&](const SignedAttestation& sa, ByteView n, const PcrValues& p, const EcPublicKey& k) {
    auto r = verify_quote(sa, k, n, p);
    REQUIRE_FALSE(r.has_value());
    return r.error().message();
  };
  SECTION("altered attestation body") {
    SignedAttestation bad = quote;
    bad.attest[bad.attest.size() - 40] ^= 0x01;
    CHECK_THAT(reason(bad, nonce, pcrs, ak), Catch::Contains("signature does not verify"));
  }
  SECTION("altered magic") {
    SignedAttestation bad = quote;
    bad.attest[0] ^= 0x01;
    CHECK_THAT(reason(bad, nonce, pcrs, ak), Catch::Contains("TPM_GENERATED_VALUE"));
  }
  SECTION("truncated attestation") {
    SignedAttestation bad = quote;
    bad.attest.resize(bad.attest.size() - 1);
    CHECK_THAT(reason(bad, nonce, pcrs, ak), Catch::Contains("Tss2_MU_TPMS_ATTEST_Unmarshal"));
  }
  SECTION("altered signature") {
    SignedAttestation bad = quote;
    bad.signature[10] ^= 0x01;
    CHECK_THAT(reason(bad, nonce, pcrs, ak), Catch::Contains("signature does not verify"));
  }
  SECTION("signature of another algorithm") {
    SignedAttestation bad = quote;
    bad.signature[1] = 0x1c;  // TPM_ALG_ECSCHNORR: same layout, another scheme
    CHECK_THAT(reason(bad, nonce, pcrs, ak), Catch::Contains("not ECDSA"));
  }
  SECTION("wrong nonce") {
    CHECK_THAT(reason(quote, Bytes{9, 9}, pcrs, ak), Catch::Contains("nonce mismatch"));
  }
  SECTION("altered PCR value") {
    PcrValues bad = pcrs;
    bad[0].values[7][5] ^= 0x80;
    CHECK_THAT(reason(quote, nonce, bad, ak), Catch::Contains("PCR digest mismatch"));
  }
  SECTION("PCR values for another selection") {
    PcrValues bad = pcrs;
    bad[0].values.erase(23);
    CHECK_THAT(reason(quote, nonce, bad, ak), Catch::Contains("PCR selection mismatch"));
  }
  SECTION("another AK") {
    auto other = EcPrivateKey::generate();
    CHECK_THAT(reason(quote, nonce, pcrs, other->public_key()), Catch::Contains("signature does not verify"));
  }
  SECTION("a certification is not a quote") {
    SignedAttestation c = soft.certify(testing::ecc_public_area(ak), nonce);
    CHECK_THAT(reason(c, nonce, pcrs, ak), Catch::Contains("not a quote"));
  }
}

TEST_CASE("clock infos only go forward", "[verifier]") {
  ClockInfo base{5000, 3, 1, true};
  CHECK(check_clock_forward(base, base).has_value());
  CHECK(check_clock_forward(base, {6000, 3, 1, true}).has_value());
  CHECK(check_clock_forward(base, {6000, 3, 2, true}).has_value());
  CHECK(check_clock_forward(base, {100, 4, 0, false}).has_value());  // reset, time lost, flagged unsafe

  auto refused = [&](ClockInfo later, const char* what) {
    auto r = check_clock_forward(base, later);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().is(errc::clock_regressed));
    CHECK_THAT(r.error().message(), Catch::Contains(what));
  };
  refused({4000, 3, 1, true}, "clock went backwards");
  refused({9000, 2, 9, true}, "resetCount went backwards");
  refused({9000, 3, 0, true}, "restartCount went backwards");
  refused({100, 4, 0, true}, "clock went backwards");  // reset claims safe yet lost time
}

TEST_CASE("agent qualifying data binds name and measurement", "[verifier]") {
  Digest m1 = sha256(std::string_view("binary v1"));
  Digest m2 = sha256(std::string_view("binary v2"));
  CHECK(agent_qualifying_data("coder", m1) == agent_qualifying_data("coder", m1));
  CHECK(agent_qualifying_data("coder", m1) != agent_qualifying_data("coder", m2));
  CHECK(agent_qualifying_data("coder", m1) != agent_qualifying_data("coder2", m1));
  // Length-prefixed: moving bytes between name and measurement changes the result.
  Bytes shifted(m1.begin(), m1.end());
  shifted.insert(shifted.begin(), 'x');
  CHECK(agent_qualifying_data("coder", shifted) != agent_qualifying_data("coderx", m1));
}

TEST_CASE("PCR selections parse in tpm2-tools syntax", "[verifier]") {
  auto s = parse_pcr_selection("sha256:23,0,1,1+sha1:7");
  REQUIRE(s.has_value());
  CHECK(format_pcr_selection(*s) == "sha256:0,1,23+sha1:7");
  CHECK_FALSE(parse_pcr_selection("sha256:24").has_value());
  CHECK_FALSE(parse_pcr_selection("md5:1").has_value());
  CHECK_FALSE(parse_pcr_selection("sha256:").has_value());
  CHECK_FALSE(parse_pcr_selection("sha256:1+sha256:2").has_value());
  CHECK_FALSE(parse_pcr_selection("").has_value());
}

TEST_CASE("tpm2-tools PCR files round trip and malformed ones are refused", "[verifier][files]") {
  PcrValues values = sample_pcrs();
  Bytes file = encode_pcrs_tpm2tools(values);
  CHECK(file.size() == 132 + 4 + 532);  // the size tpm2_quote writes for up to 8 digests
  CHECK(file[4] == 0x0b);               // little-endian TPM_ALG_SHA256
  auto back = decode_pcrs_tpm2tools(file);
  REQUIRE(back.has_value());
  CHECK(*back == values);

  PcrValues many;
  many.push_back(PcrBank{hash_alg::sha1, {}});
  many.push_back(PcrBank{hash_alg::sha256, {}});
  for (uint32_t i = 0; i < 10; ++i) many[1].values[i] = Bytes(32, static_cast<uint8_t>(i));
  many[0].values[3] = Bytes(20, 0xaa);
  Bytes two_lists = encode_pcrs_tpm2tools(many);
  CHECK(two_lists.size() == 132 + 4 + 2 * 532);
  CHECK(*decode_pcrs_tpm2tools(two_lists) == many);

  CHECK_FALSE(decode_pcrs_tpm2tools(Bytes(file.begin(), file.end() - 1)).has_value());
  Bytes wrong_size = file;
  wrong_size[136 + 4] = 0x10;  // first digest claims 16 bytes
  CHECK_FALSE(decode_pcrs_tpm2tools(wrong_size).has_value());
  Bytes absurd = file;
  absurd[0] = 0xff;  // 255 banks
  CHECK_FALSE(decode_pcrs_tpm2tools(absurd).has_value());

  std::string yaml = pcrs_yaml(values);
  CHECK_THAT(yaml, Catch::StartsWith("pcrs:\n  sha256:\n    0 : 0x0101"));
  CHECK_THAT(yaml, Catch::Contains("    23: 0x1818"));
}

TEST_CASE("key blobs refuse truncation", "[verifier]") {
  CHECK_FALSE(KeyBlob::parse(Bytes{}).has_value());
  CHECK_FALSE(KeyBlob::parse(Bytes{0x00, 0x40, 0x01}).has_value());
}

TEST_CASE("a node.json with a malformed handle is corrupt, not a crash", "[verifier]") {
  auto key = EcPrivateKey::generate();
  std::string pem = key->public_key().to_pem();
  std::string escaped;
  for (char c : pem) escaped += c == '\n' ? std::string("\\n") : std::string(1, c);
  std::string doc = R"({"node_id":"n","trust_domain":"t","spiffe_id":"s","board":"sim","srk_handle":"0x81000001",
    "ek_handle":"0x81010002","ak_handle":"0x81018000","srk_name":"00","ek_name":"00","ak_name":"00",
    "ek_public_pem":")" + escaped + R"(","ak_public_pem":")" + escaped + R"(","ak_public_area":"00",
    "ek_certificates":["EK"],"tpm_manufacturer":"","tpm_vendor":"","tpm_firmware":"","provisioned_at":""})";
  auto r = NodeIdentity::from_json(doc);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().is(errc::corrupt));
  std::string good = doc;
  good.replace(good.find("\"EK\""), 4, "\"0x01c00002\"");
  auto ok = NodeIdentity::from_json(good);
  REQUIRE(ok.has_value());
  CHECK(ok->ek_certificate_indices == std::vector<uint32_t>{0x01c00002});
}
