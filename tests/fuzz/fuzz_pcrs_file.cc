// tpm2-tools PCR files (pcrs.bin) handed to `outpost attest verify`. Whatever decodes must
// encode back to bytes that decode to the same values.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "outpost/attestation/quote_files.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto values = attestation::decode_pcrs_tpm2tools(ByteView(data, size));
  if (!values) return 0;
  auto again = attestation::decode_pcrs_tpm2tools(attestation::encode_pcrs_tpm2tools(*values));
  if (!again || !(*again == *values)) std::abort();
  (void)attestation::pcrs_yaml(*values);
  return 0;
}
