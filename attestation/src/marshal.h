// Conversions between TSS structures, their marshalled bytes (tss2-mu) and outpost's plain
// types. Every unmarshal checks that the input is consumed exactly: trailing bytes are an
// error, so a parser never silently ignores part of what it was given.
#pragma once

#include <tss2/tss2_mu.h>
#include <tss2/tss2_tpm2_types.h>

#include "outpost/attestation/tpm.h"
#include "outpost/attestation/types.h"
#include "outpost/base/errors.h"
#include "tss2_check.h"

namespace outpost::attestation::detail {

// Marshal a TSS structure with its tss2-mu function, e.g. marshal(pub, Tss2_MU_TPM2B_PUBLIC_Marshal).
template <class T, class F>
Bytes marshal(const T& value, F fn) {
  Bytes out(sizeof(T) + 64);
  size_t offset = 0;
  TSS2_RC rc = fn(&value, out.data(), out.size(), &offset);
  // The marshalled form is never longer than the C structure plus a few size fields.
  OUTPOST_CHECK(rc == TSS2_RC_SUCCESS, "marshalling a well-formed TSS structure");
  out.resize(offset);
  return out;
}

template <class T, class F>
Result<T> unmarshal(ByteView bytes, F fn, const char* what) {
  quiet_tss_logging();
  T value{};
  size_t offset = 0;
  OUTPOST_TRY_VOID(check_tss2(fn(bytes.data(), bytes.size(), &offset, &value), what));
  if (offset != bytes.size()) {
    return fail(errc::corrupt, std::string(what) + ": " + std::to_string(bytes.size() - offset) +
                                   " trailing bytes");
  }
  return value;
}

inline Result<TPM2B_PUBLIC> unmarshal_public(ByteView b) {
  return unmarshal<TPM2B_PUBLIC>(b, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "Tss2_MU_TPM2B_PUBLIC_Unmarshal");
}
inline Result<TPM2B_PRIVATE> unmarshal_private(ByteView b) {
  return unmarshal<TPM2B_PRIVATE>(b, Tss2_MU_TPM2B_PRIVATE_Unmarshal, "Tss2_MU_TPM2B_PRIVATE_Unmarshal");
}
inline Result<TPMS_ATTEST> unmarshal_attest(ByteView b) {
  return unmarshal<TPMS_ATTEST>(b, Tss2_MU_TPMS_ATTEST_Unmarshal, "Tss2_MU_TPMS_ATTEST_Unmarshal");
}
inline Result<TPMT_SIGNATURE> unmarshal_signature(ByteView b) {
  return unmarshal<TPMT_SIGNATURE>(b, Tss2_MU_TPMT_SIGNATURE_Unmarshal, "Tss2_MU_TPMT_SIGNATURE_Unmarshal");
}

inline Bytes marshal_public(const TPM2B_PUBLIC& p) { return marshal(p, Tss2_MU_TPM2B_PUBLIC_Marshal); }
inline Bytes marshal_private(const TPM2B_PRIVATE& p) { return marshal(p, Tss2_MU_TPM2B_PRIVATE_Marshal); }
inline Bytes marshal_attest(const TPMS_ATTEST& a) { return marshal(a, Tss2_MU_TPMS_ATTEST_Marshal); }
inline Bytes marshal_signature(const TPMT_SIGNATURE& s) { return marshal(s, Tss2_MU_TPMT_SIGNATURE_Marshal); }

// The TPM name of a public area: nameAlg (big-endian) || H_nameAlg(marshalled TPMT_PUBLIC).
// Only SHA-256 name algorithms are accepted.
Result<Bytes> object_name(const TPMT_PUBLIC& pub);

// The P-256 point of an ECC public area.
Result<EcPublicKey> ec_public_key(const TPMT_PUBLIC& pub);

// KeyPublic from a TPM2B_PUBLIC as the TPM returned it.
Result<KeyPublic> key_public(const TPM2B_PUBLIC& pub, uint32_t handle);

Result<TPML_PCR_SELECTION> to_tpml(const PcrSelections& sel);
PcrSelections from_tpml(const TPML_PCR_SELECTION& sel);

// H(concatenation of the PCR values in selection order), as TPMS_QUOTE_INFO.pcrDigest has it;
// the hash is the signing scheme's (SHA-256 here).
Result<Digest> pcr_composite_digest(const TPML_PCR_SELECTION& sel, const PcrValues& values);

TPM2B_DATA to_tpm2b_data(ByteView bytes);  // caller has checked the size

ClockInfo clock_info(const TPMS_CLOCK_INFO& c);

}  // namespace outpost::attestation::detail
