// Plain data exchanged with the TPM seam and the verifier. TPM structures travel in their
// marshalled (TPM wire, big-endian) form, the form tpm2-tools and verifiers exchange, so that
// nothing outside attestation/ needs the TSS headers.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"

namespace outpost::attestation {

// TPM_ALG_ID values of the hash algorithms a PCR bank can use.
namespace hash_alg {
inline constexpr uint16_t sha1 = 0x0004;
inline constexpr uint16_t sha256 = 0x000B;
inline constexpr uint16_t sha384 = 0x000C;
inline constexpr uint16_t sha512 = 0x000D;
}  // namespace hash_alg

std::string_view hash_alg_name(uint16_t alg);          // "sha256"; "alg-0x0012" when unknown
Result<uint16_t> hash_alg_from_name(std::string_view name);
size_t hash_alg_digest_size(uint16_t alg);             // 0 when unknown

// One bank's PCR indices (0..23), kept sorted and unique.
struct PcrSelection {
  uint16_t hash_alg = hash_alg::sha256;
  std::vector<uint32_t> pcrs;
  bool operator==(const PcrSelection&) const = default;
};
using PcrSelections = std::vector<PcrSelection>;

// Parses "sha256:0,1,2,23+sha1:0" (the tpm2-tools syntax) and prints it back.
Result<PcrSelections> parse_pcr_selection(std::string_view text);
std::string format_pcr_selection(const PcrSelections& sel);

struct PcrBank {
  uint16_t hash_alg = hash_alg::sha256;
  std::map<uint32_t, Bytes> values;  // PCR index -> digest
  bool operator==(const PcrBank&) const = default;
};
using PcrValues = std::vector<PcrBank>;  // in selection order

PcrSelections selection_of(const PcrValues& values);

// TPMS_CLOCK_INFO: Clock (ms the TPM has been powered, persisted), reset and restart counts.
struct ClockInfo {
  uint64_t clock = 0;
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  bool safe = false;
  bool operator==(const ClockInfo&) const = default;
};
struct TimeInfo {
  uint64_t time = 0;  // ms since the last TPM Reset or Restart
  ClockInfo clock;
};

// A TPM-signed attestation: marshalled TPMS_ATTEST and the marshalled TPMT_SIGNATURE over it.
struct SignedAttestation {
  Bytes attest;
  Bytes signature;
};

struct Quote {
  SignedAttestation signed_attest;
  PcrValues pcrs;  // the values the quote's PCR digest covers, read right after it
};

// A credential made for one EK and one key name (credential.h: make_credential), in the two
// forms TPM2_ActivateCredential takes: marshalled TPM2B_ID_OBJECT (credentialBlob) and
// marshalled TPM2B_ENCRYPTED_SECRET (secret), size prefixes included.
struct CredentialChallenge {
  Bytes credential_blob;
  Bytes encrypted_secret;
};

}  // namespace outpost::attestation
