// The verifier side: checks TPM evidence in software, with no TPM. The responder CLI, the
// hub and the node's own self-checks all use these functions.
//
// Every input here is untrusted bytes. Parsers check sizes and consume their input exactly;
// each refusal names what failed ("nonce mismatch", "PCR digest mismatch", ...) with an
// errc (corrupt for unparsable input, verification_failed for a failed check).
#pragma once

#include <string_view>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation {

// TPM_ST values of the attestation structures outpost uses.
inline constexpr uint16_t kAttestCertify = 0x8017;
inline constexpr uint16_t kAttestQuote = 0x8018;

struct ParsedAttest {
  uint16_t type = 0;             // kAttestQuote, kAttestCertify, ...
  Bytes qualified_signer;        // the signing key's qualified name
  Bytes extra_data;              // the caller's qualifying data (nonce)
  ClockInfo clock;
  uint64_t firmware_version = 0;
  // for a quote
  PcrSelections pcr_select;
  Bytes pcr_digest;
  // for a certification
  Bytes certified_name;
  Bytes certified_qualified_name;
};

// Parses a marshalled TPMS_ATTEST; checks magic (TPM_GENERATED_VALUE) and that it is whole.
Result<ParsedAttest> parse_attest(ByteView attest);
// Parses a marshalled TPMT_SIGNATURE; only ECDSA with SHA-256 is accepted.
Result<RawSignature> parse_ecdsa_signature(ByteView signature);

// A quote by `ak`: signature, type, nonce, PCR selection and PCR digest against `pcrs`.
Result<ParsedAttest> verify_quote(const SignedAttestation& quote, const EcPublicKey& ak, ByteView nonce,
                                  const PcrValues& pcrs);

// A TPM2_Certify by `ak` of the key whose marshalled TPM2B_PUBLIC is `certified_public`,
// with `expected_qualifying_data`.
Result<ParsedAttest> verify_certification(const SignedAttestation& cert, const EcPublicKey& ak,
                                          ByteView certified_public, ByteView expected_qualifying_data);

// The TPM name (0x000b || SHA-256 of TPMT_PUBLIC) of a marshalled TPM2B_PUBLIC.
Result<Bytes> name_of_public(ByteView tpm2b_public);
// The P-256 key of a marshalled TPM2B_PUBLIC.
Result<EcPublicKey> key_of_public(ByteView tpm2b_public);

// The qualifying data that binds an agent key's certification to the agent:
// SHA-256("outpost/agent-key/v1" || 0x00 || u32be(len(name)) || name || measurement).
Digest agent_qualifying_data(std::string_view agent_name, ByteView measurement);

// TPM time only goes forward: (resetCount, restartCount) never decreases; within the same
// reset and restart, clock never decreases; across a reset a lower clock is accepted only
// when the later reading says safe = NO (the TPM lost time in a disorderly shutdown).
Result<void> check_clock_forward(const ClockInfo& earlier, const ClockInfo& later);

}  // namespace outpost::attestation
