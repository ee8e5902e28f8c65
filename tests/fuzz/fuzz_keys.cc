// Key material read from files and the network: PEM, DER, JWK public keys, TPM key blobs,
// node.json.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/crypto.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteView in(data, size);
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)EcPublicKey::from_pem(text);
  (void)EcPublicKey::from_der(in);
  (void)EcPublicKey::from_jwk(text);
  (void)ecdsa_raw_from_der(in);
  (void)attestation::KeyBlob::parse(in);
  (void)attestation::name_of_public(in);
  (void)attestation::key_of_public(in);
  (void)attestation::NodeIdentity::from_json(text);
  return 0;
}
