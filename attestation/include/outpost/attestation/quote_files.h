// A quote on disk in the interchange form tpm2-tools uses, so that standard tools
// (tpm2_checkquote) can check what outpost produced and outpost can check theirs:
//   attest.bin     marshalled TPMS_ATTEST
//   signature.bin  marshalled TPMT_SIGNATURE
//   pcrs.bin       tpm2-tools "serialized" PCR file (see encode_pcrs_tpm2tools)
//   pcrs.yaml      the same values, readable
//   ak.pem         the AK public key (SubjectPublicKeyInfo PEM)
#pragma once

#include <filesystem>
#include <string>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation {

// tpm2-tools' serialized PCR file: host C structures in little-endian byte order.
//   TPML_PCR_SELECTION (132 bytes: u32 count, 16 x {u16 hash, u8 sizeofSelect, u8 select[4], pad})
//   u32 n, then n x TPML_DIGEST (532 bytes: u32 count, 8 x {u16 size, u8 buffer[64]})
// The digests run in selection order across banks, at most eight per TPML_DIGEST.
Bytes encode_pcrs_tpm2tools(const PcrValues& values);
Result<PcrValues> decode_pcrs_tpm2tools(ByteView bytes);

// The "pcrs:" block as tpm2_quote prints it.
std::string pcrs_yaml(const PcrValues& values);

struct QuoteFiles {
  SignedAttestation quote;
  PcrValues pcrs;
};

// Writes the five files into `dir` (created if missing), each atomically.
Result<void> write_quote_dir(const std::filesystem::path& dir, const QuoteFiles& files, const EcPublicKey& ak);
Result<QuoteFiles> read_quote_dir(const std::filesystem::path& dir);

}  // namespace outpost::attestation
