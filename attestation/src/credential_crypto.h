// The pieces of make_credential (credential.h), with the ephemeral key passed in, so that tests
// can check them against published vectors. TPM 2.0 Library Part 1: KDFa and KDFe in the
// "Key Derivation Function" clause (§11.4.10), ECC secret sharing in Annex C.6, the credential
// structure in §24.
#pragma once

#include <string_view>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation::detail {

// Bytes whose contents are wiped when they go away (seeds, derived keys, plaintext).
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(Bytes b) : bytes_(std::move(b)) {}
  ~SecretBytes();
  SecretBytes(SecretBytes&& o) noexcept : bytes_(std::move(o.bytes_)) {}
  SecretBytes& operator=(SecretBytes&&) = delete;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  const Bytes& get() const { return bytes_; }

 private:
  Bytes bytes_;
};

// KDFa with HMAC-SHA-256 (NIST SP 800-108 counter mode): HMAC(key, i || label || 0x00 ||
// context_u || context_v || bits) for i = 1, 2, ..., as 32-bit big-endian counter and bit
// count. `label` is given without its terminating zero, which is added. The result is
// ceil(bits / 8) bytes; when bits is not a multiple of 8 the surplus high bits of the first
// byte are cleared.
Result<SecretBytes> kdfa_sha256(ByteView key, std::string_view label, ByteView context_u, ByteView context_v,
                                uint32_t bits);

// KDFe with SHA-256 (NIST SP 800-56A concatenation KDF): SHA-256(i || z || label || 0x00 ||
// party_u || party_v) for i = 1, 2, ...; output sized as for kdfa_sha256.
Result<SecretBytes> kdfe_sha256(ByteView z, std::string_view label, ByteView party_u, ByteView party_v,
                                uint32_t bits);

// One-pass ECDH secret sharing with a P-256 key whose name algorithm is SHA-256 (Annex C.6):
// Z = x([ephemeral]·target), seed = KDFe(Z, label, x(ephemeral public), x(target), 256),
// and the marshalled TPM2B_ENCRYPTED_SECRET holding the ephemeral public point
// (TPMS_ECC_POINT) from which the target's TPM recomputes the seed.
struct SharedSeed {
  SecretBytes seed;
  Bytes encrypted_secret;
};
Result<SharedSeed> ecc_share_seed(const EcPrivateKey& ephemeral, const EcPublicKey& target, std::string_view label);

// make_credential with a given ephemeral key.
Result<CredentialChallenge> make_credential_with(const EcPrivateKey& ephemeral, const EcPublicKey& ek_public,
                                                 ByteView ak_name, ByteView secret);

}  // namespace outpost::attestation::detail
