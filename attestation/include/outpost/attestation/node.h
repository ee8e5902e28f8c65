// Node provisioning and identity: the SRK, EK and AK this node's attestation stands on, and
// the identity record kept in the state directory.
//
// State directory layout (each file written atomically; node.json last, as the commit):
//   node.json              the identity (NodeIdentity::to_json)
//   ak.pem, ak.pub         AK public key (PEM) and its marshalled TPM2B_PUBLIC
//   ek.pem                 EK public key (PEM)
//   ek-cert-0x01c0000a.der EK certificates found in the TPM's NV, if any
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "outpost/attestation/tpm.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation {

struct NodeHandles {
  uint32_t srk = 0;
  uint32_t ek = 0;
  uint32_t ak = 0;
};

struct NodeIdentity {
  std::string node_id;       // hex of the first 16 bytes of SHA-256(EK public key DER)
  std::string trust_domain;
  std::string spiffe_id;     // spiffe://<trust_domain>/node/<node_id>
  std::string board;
  NodeHandles handles;
  Bytes srk_name;
  Bytes ek_name;
  Bytes ak_name;
  EcPublicKey ek_public;
  EcPublicKey ak_public;
  Bytes ak_public_area;      // marshalled TPM2B_PUBLIC, what verifiers hash into the AK's name
  std::vector<uint32_t> ek_certificate_indices;
  std::string tpm_manufacturer;
  std::string tpm_vendor;
  std::string tpm_firmware;
  std::string provisioned_at;  // RFC 3339 UTC

  std::string agent_spiffe_id(std::string_view agent) const { return spiffe_id + "/agent/" + std::string(agent); }
  std::string to_json() const;
  static Result<NodeIdentity> from_json(std::string_view json);
};

struct ProvisionOptions {
  std::string board;
  std::string trust_domain;
  NodeHandles handles;
};

struct ProvisionResult {
  NodeIdentity identity;
  bool changed = false;              // false when the node was already provisioned
  std::vector<std::string> actions;  // what was done, for the operator
};

// `outpost node init`: creates or reuses SRK, EK and AK at the handles given, reads EK
// certificates, and writes the identity. Idempotent: on a provisioned state directory it
// only checks that the TPM is the one the state was made with (errc::tpm_mismatch if it was
// cleared or swapped) and writes nothing.
Result<ProvisionResult> provision_node(Tpm& tpm, const std::filesystem::path& state_dir, const ProvisionOptions& opts);

// Reads node.json; errc::not_found with a hint to run `node init` when there is none.
Result<NodeIdentity> load_identity(const std::filesystem::path& state_dir);

// Checks that the SRK, EK and AK in the TPM are the ones recorded in `id`.
Result<void> check_tpm_matches(Tpm& tpm, const NodeIdentity& id);

}  // namespace outpost::attestation
