#include "templates.h"

#include <tss2/tss2_esys.h>

#include <cstring>

#include "marshal.h"
#include "outpost/base/crypto.h"

namespace outpost::attestation::detail {
namespace {

TPM2B_PUBLIC ecc_p256_base(TPMA_OBJECT attributes) {
  TPM2B_PUBLIC t{};
  t.publicArea.type = TPM2_ALG_ECC;
  t.publicArea.nameAlg = TPM2_ALG_SHA256;
  t.publicArea.objectAttributes = attributes;
  auto& ecc = t.publicArea.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_NULL;
  ecc.scheme.scheme = TPM2_ALG_NULL;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

void use_aes128_cfb(TPM2B_PUBLIC& t) {
  auto& sym = t.publicArea.parameters.eccDetail.symmetric;
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
}

void use_ecdsa_sha256(TPM2B_PUBLIC& t) {
  auto& scheme = t.publicArea.parameters.eccDetail.scheme;
  scheme.scheme = TPM2_ALG_ECDSA;
  scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
}

// TCG EK Credential Profile 2.0, template L-2 (ECC NIST P-256): its authPolicy is
// PolicySecret(TPM_RH_ENDORSEMENT).
constexpr uint8_t kEkPolicy[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC,
                                   0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52,
                                   0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};

}  // namespace

TPM2B_PUBLIC primary_template(PrimaryKey kind) {
  constexpr TPMA_OBJECT kBase = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;
  switch (kind) {
    case PrimaryKey::srk: {
      TPM2B_PUBLIC t = ecc_p256_base(kBase | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
                                     TPMA_OBJECT_DECRYPT | TPMA_OBJECT_NODA);
      use_aes128_cfb(t);
      return t;
    }
    case PrimaryKey::ek: {
      TPM2B_PUBLIC t = ecc_p256_base(kBase | TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED |
                                     TPMA_OBJECT_DECRYPT);
      std::memcpy(t.publicArea.authPolicy.buffer, kEkPolicy, sizeof kEkPolicy);
      t.publicArea.authPolicy.size = sizeof kEkPolicy;
      use_aes128_cfb(t);
      // The profile fills unique with zeros of the coordinate size.
      t.publicArea.unique.ecc.x.size = 32;
      t.publicArea.unique.ecc.y.size = 32;
      return t;
    }
    case PrimaryKey::ak: {
      TPM2B_PUBLIC t = ecc_p256_base(kBase | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
                                     TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_NODA);
      use_ecdsa_sha256(t);
      // A distinct unique value keeps outpost's AK apart from any other primary created with
      // the same attributes in the endorsement hierarchy.
      Digest label = sha256(std::string_view("outpost attestation key v1"));
      std::memcpy(t.publicArea.unique.ecc.x.buffer, label.data(), label.size());
      t.publicArea.unique.ecc.x.size = static_cast<UINT16>(label.size());
      return t;
    }
  }
  OUTPOST_CHECK(false, "unknown primary key kind");
  return {};
}

TPM2B_PUBLIC signing_key_template() {
  TPM2B_PUBLIC t = ecc_p256_base(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                 TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT);
  use_ecdsa_sha256(t);
  return t;
}

TPM2B_PUBLIC sealed_data_template() {
  TPM2B_PUBLIC t{};
  t.publicArea.type = TPM2_ALG_KEYEDHASH;
  t.publicArea.nameAlg = TPM2_ALG_SHA256;
  // No sensitiveDataOrigin (the caller supplies the data), no sign or decrypt (TPM2_Unseal
  // requires both clear), no authPolicy: userWithAuth with the empty password.
  t.publicArea.objectAttributes =
      TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
  t.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  return t;
}

ESYS_TR primary_hierarchy(PrimaryKey kind) {
  return kind == PrimaryKey::srk ? ESYS_TR_RH_OWNER : ESYS_TR_RH_ENDORSEMENT;
}

}  // namespace outpost::attestation::detail
