// Software stand-ins for a node's TPM, for tests and benchmarks above the TPM seam: P-256 keys
// in software that produce attestations in the TPM's exact formats (TPMS_ATTEST and
// TPMT_SIGNATURE marshalled with tss2-mu), so the real verifier checks them. Where TPM
// behaviour matters the tests use swtpm instead.
#pragma once

#include <filesystem>
#include <string>

#include "outpost/attestation/node.h"
#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"

namespace outpost::testing {

// The marshalled TPM2B_PUBLIC of a P-256 ECDSA signing key, as a TPM reports it.
Bytes ecc_public_area(const EcPublicKey& key);

// A software AK: TPM2_Quote- and TPM2_Certify-shaped attestations signed by a P-256 key.
class SoftAk {
 public:
  SoftAk();
  const EcPublicKey& pub() const { return key_.public_key(); }
  // A quote over `pcrs` (one sha256 bank) with `qualifying` as its extra data.
  attestation::SignedAttestation quote(ByteView qualifying, const attestation::PcrValues& pcrs,
                                       const attestation::ClockInfo& clock) const;
  // A certification of the key whose TPM2B_PUBLIC is `public_area`.
  attestation::SignedAttestation certify(ByteView public_area, ByteView qualifying) const;
  // Signs a marshalled TPMS_ATTEST as the TPM would.
  attestation::SignedAttestation sign(Bytes attest) const;

 private:
  EcPrivateKey key_;
};

// A node identity (node.json) whose node id derives from a fresh software EK, with `ak` as AK.
attestation::NodeIdentity soft_identity(const EcPublicKey& ak, const std::string& board = "sim");

// `n` decisions by `agent` (every third denied; `markup` appended to their tools and reasons)
// in a node log made in `dir`, then a checkpoint quoted by `ak`: the frames as the log holds
// them, the body of a records upload.
Result<std::string> signed_decisions(const std::filesystem::path& dir, const SoftAk& ak, const std::string& agent, int n,
                                     const std::string& markup = "");

}  // namespace outpost::testing
