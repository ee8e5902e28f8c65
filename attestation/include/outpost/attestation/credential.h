// TPM 2.0 credential activation, the software half: the hub makes a credential that only the
// TPM holding a given EK can open, and only for a key of a given name loaded in that same TPM
// (TPM 2.0 Library Part 1 §24 "Credential Protection"; ECC secret sharing in Annex C.6).
// The node opens it with Tpm::activate_credential. A node that returns the secret has shown
// that its AK (the name) lives in the TPM of that EK.
//
// What is proven rests on two things the caller checks itself: that `ek_public` belongs to a
// genuine TPM (an EK certificate, or the key pinned at provisioning), and that the name was
// computed by the caller from the AK public area it will trust (name_of_public in verifier.h),
// whose attributes (fixedTPM, restricted, sign) the caller has checked.
//
// No TPM is needed; stateless and thread-safe.
#pragma once

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation {

// The most a credential holds: the digest size of the EK's name algorithm (SHA-256).
inline constexpr size_t kMaxCredentialBytes = 32;

// TPM2_MakeCredential in software for an ECC P-256 EK with SHA-256 name algorithm and
// AES-128-CFB symmetric parameters (TCG EK Credential Profile templates L-2 and H-2; outpost's
// EK). `ak_name` is the TPM name of the key to activate (nameAlg || digest, e.g. 34 bytes for
// SHA-256); `secret` is 1 to kMaxCredentialBytes bytes, random and fresh per challenge.
// A fresh ephemeral ECDH key is drawn for every call.
Result<CredentialChallenge> make_credential(const EcPublicKey& ek_public, ByteView ak_name, ByteView secret);

}  // namespace outpost::attestation
