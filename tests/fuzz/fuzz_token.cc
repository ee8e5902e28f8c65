// Call-scoped credentials as a tool receives them: verify() on arbitrary bytes, the same bytes
// decoded without a signature check (so mutated claims are reached), and as JSON through the
// strict parser and canonical_json (the argument hash).
//
// The seeds in corpus/fuzz_token/*.jws are signed by the key below, at kNow inside their
// validity, so the fuzzer starts from tokens that pass every check.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "credentials/jws.h"
#include "outpost/base/crypto.h"

using namespace outpost;

namespace {

constexpr int64_t kNow = 1795860100;  // 2026-11-28T10:01:40Z

const EcPublicKey& seed_key() {
  static const EcPublicKey key = *EcPublicKey::from_pem(
      "-----BEGIN PUBLIC KEY-----\n"
      "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEphqBAPOeW52RxkS5DWB+5pTqNyao\n"
      "mzouNrUgAxt5Y3EwkSRAHlMkZbdxahWGD7PGblCAMdr7Gm6eYfpLaw0HpQ==\n"
      "-----END PUBLIC KEY-----\n");
  return key;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto claims = credentials::verify(text, seed_key(), kNow, "files/read");
  auto decoded = credentials::decode_unverified(text);
  if (claims) {
    // A token that verifies decodes to the same claims.
    if (!decoded || !(decoded->claims == *claims)) __builtin_trap();
  }
  if (auto json = credentials::parse_json_strict(text)) {
    auto canonical = credentials::canonical_json(*json);
    // The canonical form is a fixed point: parsing and canonicalising it again changes nothing.
    if (canonical) {
      auto again = credentials::parse_json_strict(*canonical);
      if (!again) __builtin_trap();
      auto twice = credentials::canonical_json(*again);
      if (!twice || *twice != *canonical) __builtin_trap();
    }
  }
  return 0;
}
