#include "marshal.h"

#include <cstring>

namespace outpost::attestation::detail {

Result<Bytes> object_name(const TPMT_PUBLIC& pub) {
  if (pub.nameAlg != TPM2_ALG_SHA256) {
    return fail(errc::unsupported, "object name algorithm is not SHA-256");
  }
  Bytes area = marshal(pub, Tss2_MU_TPMT_PUBLIC_Marshal);
  Digest d = sha256(area);
  Bytes name = {static_cast<uint8_t>(pub.nameAlg >> 8), static_cast<uint8_t>(pub.nameAlg & 0xff)};
  name.insert(name.end(), d.begin(), d.end());
  return name;
}

Result<EcPublicKey> ec_public_key(const TPMT_PUBLIC& pub) {
  if (pub.type != TPM2_ALG_ECC) return fail(errc::unsupported, "TPM key is not an ECC key");
  if (pub.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    return fail(errc::unsupported, "TPM key is not on curve NIST P-256");
  }
  const auto& p = pub.unique.ecc;
  return EcPublicKey::from_point(ByteView(p.x.buffer, p.x.size), ByteView(p.y.buffer, p.y.size));
}

Result<KeyPublic> key_public(const TPM2B_PUBLIC& pub, uint32_t handle) {
  KeyPublic out;
  out.handle = handle;
  out.public_area = marshal_public(pub);
  OUTPOST_TRY(out.name, object_name(pub.publicArea));
  OUTPOST_TRY(out.key, ec_public_key(pub.publicArea));
  return out;
}

Result<TPML_PCR_SELECTION> to_tpml(const PcrSelections& sel) {
  TPML_PCR_SELECTION out{};
  if (sel.size() > TPM2_NUM_PCR_BANKS) return fail(errc::invalid_argument, "too many PCR banks selected");
  out.count = static_cast<UINT32>(sel.size());
  for (size_t i = 0; i < sel.size(); ++i) {
    auto& s = out.pcrSelections[i];
    s.hash = sel[i].hash_alg;
    s.sizeofSelect = 3;  // 24 PCRs, as every PC Client TPM has
    for (uint32_t pcr : sel[i].pcrs) {
      if (pcr >= 24) return fail(errc::invalid_argument, "PCR index " + std::to_string(pcr) + " is above 23");
      s.pcrSelect[pcr / 8] |= static_cast<uint8_t>(1u << (pcr % 8));
    }
  }
  return out;
}

PcrSelections from_tpml(const TPML_PCR_SELECTION& sel) {
  PcrSelections out;
  for (UINT32 i = 0; i < sel.count && i < TPM2_NUM_PCR_BANKS; ++i) {
    const auto& s = sel.pcrSelections[i];
    PcrSelection p;
    p.hash_alg = s.hash;
    for (uint32_t byte = 0; byte < s.sizeofSelect && byte < sizeof(s.pcrSelect); ++byte) {
      for (uint32_t bit = 0; bit < 8; ++bit) {
        if (s.pcrSelect[byte] & (1u << bit)) p.pcrs.push_back(byte * 8 + bit);
      }
    }
    out.push_back(std::move(p));
  }
  return out;
}

Result<Digest> pcr_composite_digest(const TPML_PCR_SELECTION& sel, const PcrValues& values) {
  Sha256 h;
  for (const PcrSelection& s : from_tpml(sel)) {
    const PcrBank* bank = nullptr;
    for (const auto& b : values) {
      if (b.hash_alg == s.hash_alg) bank = &b;
    }
    if (bank == nullptr) {
      return fail(errc::verification_failed,
                  "no PCR values for bank " + std::string(hash_alg_name(s.hash_alg)));
    }
    for (uint32_t pcr : s.pcrs) {
      auto it = bank->values.find(pcr);
      if (it == bank->values.end()) {
        return fail(errc::verification_failed, "no value for PCR " + std::to_string(pcr) + " of bank " +
                                                   std::string(hash_alg_name(s.hash_alg)));
      }
      if (it->second.size() != hash_alg_digest_size(s.hash_alg)) {
        return fail(errc::verification_failed, "PCR " + std::to_string(pcr) + " value has the wrong size");
      }
      h.update(it->second);
    }
  }
  return h.finish();
}

TPM2B_DATA to_tpm2b_data(ByteView bytes) {
  TPM2B_DATA d{};
  OUTPOST_CHECK(bytes.size() <= sizeof(d.buffer), "qualifying data size checked by the caller");
  d.size = static_cast<UINT16>(bytes.size());
  if (!bytes.empty()) std::memcpy(d.buffer, bytes.data(), bytes.size());
  return d;
}

ClockInfo clock_info(const TPMS_CLOCK_INFO& c) {
  return ClockInfo{c.clock, c.resetCount, c.restartCount, c.safe == TPM2_YES};
}

}  // namespace outpost::attestation::detail
