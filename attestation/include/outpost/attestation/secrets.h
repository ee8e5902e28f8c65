// Tool secrets sealed by the TPM: API tokens and passwords an MCP server or local tool needs,
// kept on disk only as TPM-sealed blobs under the SRK, so a copied disk reveals nothing and
// only this node's TPM gives them back. outpostd unseals a tool's secrets when it starts that
// tool and hands them to the tool's process alone, never to an agent.
//
// On disk: <state>/secrets/<name>.sealed, written atomically with mode 0600 in a 0700
// directory. A secret of up to Tpm::kMaxSealedBytes (128) bytes is sealed itself: the file is
// the marshalled TPM2B_PUBLIC || TPM2B_PRIVATE of a KEYEDHASH data object (Tpm::seal). A longer
// one (up to kMaxSecretBytes: a JWT refresh token, a certificate's key) is an envelope: a fresh
// AES-256 key sealed that way, and the secret encrypted under it with AES-256-GCM, its name as
// associated data (a file copied to another name does not open):
//   "OPSE" 0x01 || u16 blob length (big-endian) || sealed key blob || 12-byte nonce ||
//   ciphertext || 16-byte tag
// ("OP" as a TPM2B_PUBLIC size would be 20,304 bytes, which no public area is: the two forms
// cannot be mistaken for each other). Either way only this node's TPM opens it.
//
// Not thread-safe: one SecretStore per state directory and thread (the daemon serialises).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"

namespace outpost::attestation {

class SecretStore {
 public:
  SecretStore(const std::filesystem::path& state_dir, const NodeIdentity& node)
      : dir_(state_dir / "secrets"), parent_(node.handles.srk) {}

  // Names are 1..63 of [a-z0-9._-], starting with a letter or digit (they become a file
  // name), as agent names are.
  static Result<void> validate_name(std::string_view name);

  static constexpr size_t kMaxSecretBytes = 64 << 10;

  // Seals `secret` (1..kMaxSecretBytes bytes) under the SRK and stores it, replacing a secret
  // of the same name; `*replaced` says whether there was one.
  Result<void> seal(Tpm& tpm, std::string_view name, ByteView secret, bool* replaced = nullptr);

  // The plaintext; the caller should wipe it when done. errc::not_found when there is no
  // secret of that name.
  Result<Bytes> unseal(Tpm& tpm, std::string_view name) const;

  // Names of the stored secrets, sorted; empty when there are none. Reads the directory only.
  Result<std::vector<std::string>> list() const;

  std::filesystem::path path_of(std::string_view name) const { return dir_ / (std::string(name) + ".sealed"); }

 private:
  std::filesystem::path dir_;
  uint32_t parent_;
};

}  // namespace outpost::attestation
