// Byte buffers and their text encodings (hex, base64, base64url without padding).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/base/result.h"

namespace outpost {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

inline ByteView as_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
inline std::string_view as_chars(ByteView b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

std::string hex_encode(ByteView bytes);
// "0x81000001": how TPM handles and NV indices are written everywhere.
std::string hex32(uint32_t value);
// 0..15 for a hex digit (either case), -1 for anything else.
int hex_digit_value(char c);
// Accepts upper or lower case and an optional "0x" prefix; an odd length or a non-hex
// character is an error naming the offending position.
Result<Bytes> hex_decode(std::string_view hex);

std::string base64_encode(ByteView bytes);
Result<Bytes> base64_decode(std::string_view text);
// RFC 4648 section 5, no padding (as JWK and JWS use it).
std::string base64url_encode(ByteView bytes);
Result<Bytes> base64url_decode(std::string_view text);

// Constant-time comparison for digests and MACs.
bool equal_constant_time(ByteView a, ByteView b);

}  // namespace outpost
