// Agent keys: one TPM-resident ECC P-256 signing key per agent, a child of the SRK, certified
// by the AK with qualifying data that binds the agent's name and binary measurement
// (agent_qualifying_data in verifier.h).
//
// On disk, under <state>/agents/<name>/ (each written atomically; agent.json last):
//   key.blob         marshalled TPM2B_PUBLIC || TPM2B_PRIVATE (only this TPM can load it)
//   key.pem          the public key
//   certify.attest   marshalled TPMS_ATTEST of TPM2_Certify
//   certify.sig      marshalled TPMT_SIGNATURE by the AK
//   agent.json       name, SPIFFE ID, measurement, key name, JWK
//
// Not thread-safe: one AgentKeyStore per state directory and thread (the daemon serialises).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"
#include "outpost/base/crypto.h"

namespace outpost::attestation {

struct AgentKey {
  std::string name;
  std::string spiffe_id;
  Digest measurement{};
  KeyBlob blob;
  EcPublicKey public_key;
  Bytes key_name;                  // TPM name of the key
  SignedAttestation certification;  // TPM2_Certify by the AK
  std::string to_json() const;     // what `outpost agent key --json` prints
};

// Names of agents, secrets and the like: 1..63 of [a-z0-9._-], starting with a letter or
// digit, since they become a path component (and part of a SPIFFE ID). `what` names the kind
// in the error ("agent name", "secret name").
Result<void> validate_component_name(std::string_view what, std::string_view name);

// SHA-256 of a file, refusing files over `max_bytes` (an agent binary must not be able to
// make outpost read forever).
Result<Digest> measure_file(const std::filesystem::path& path, uint64_t max_bytes = 512ull << 20);

class AgentKeyStore {
 public:
  // `node` must outlive the store.
  AgentKeyStore(std::filesystem::path state_dir, const NodeIdentity& node)
      : dir_(std::move(state_dir) / "agents"), node_(node) {}

  // Names are 1..63 of [a-z0-9._-], starting with a letter or digit: they become a path
  // component and part of a SPIFFE ID.
  static Result<void> validate_name(std::string_view name);

  // The agent's key, created on first use and (re)certified when there is no certification
  // for this measurement yet. `*created` says whether a new TPM key was made.
  Result<AgentKey> ensure(Tpm& tpm, std::string_view name, const Digest& measurement, bool* created = nullptr);

  // Reads an agent's key material from disk alone.
  Result<AgentKey> read(std::string_view name) const;

  // Loads the key into the TPM for signing.
  Result<Tpm::LoadedKey> load(Tpm& tpm, const AgentKey& key) const;

 private:
  std::filesystem::path dir_;
  const NodeIdentity& node_;
};

// Checks an agent key's certification against the node's AK, name and measurement.
Result<void> verify_agent_key(const AgentKey& key, const EcPublicKey& ak);

}  // namespace outpost::attestation
