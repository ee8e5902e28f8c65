// Untrusted TPM evidence: TPMS_ATTEST and TPMT_SIGNATURE as a responder receives them.
// The first byte chooses how the rest is split between attestation and signature.
#include <cstddef>
#include <cstdint>

#include "outpost/attestation/verifier.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteView in(data, size);
  (void)attestation::parse_attest(in);
  (void)attestation::parse_ecdsa_signature(in);
  if (size < 2) return 0;
  size_t split = 1 + (static_cast<size_t>(data[0]) * (size - 1)) / 256;
  attestation::SignedAttestation sa{Bytes(data + 1, data + split), Bytes(data + split, data + size)};
  static const EcPublicKey ak = [] {
    auto k = EcPrivateKey::generate();
    return k->public_key();
  }();
  attestation::PcrValues pcrs;
  (void)attestation::verify_quote(sa, ak, Bytes{1, 2, 3}, pcrs);
  (void)attestation::verify_certification(sa, ak, sa.signature, Bytes{});
  return 0;
}
