#include "outpost/base/bytes.h"

#include <mbedtls/base64.h>

#include <cstdio>

#include "outpost/base/errors.h"

namespace outpost {

std::string hex_encode(ByteView bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string hex32(uint32_t value) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", value);
  return buf;
}

int hex_digit_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<Bytes> hex_decode(std::string_view hex) {
  if (hex.size() >= 2 && hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) hex.remove_prefix(2);
  if (hex.size() % 2 != 0) {
    return fail(errc::invalid_argument, "hex string has an odd number of digits");
  }
  Bytes out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = hex_digit_value(hex[2 * i]);
    int lo = hex_digit_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return fail(errc::invalid_argument,
                  "not a hex digit at position " + std::to_string(hi < 0 ? 2 * i : 2 * i + 1));
    }
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

std::string base64_encode(ByteView bytes) {
  size_t needed = 0;
  mbedtls_base64_encode(nullptr, 0, &needed, bytes.data(), bytes.size());
  std::string out(needed, '\0');
  size_t written = 0;
  int rc = mbedtls_base64_encode(reinterpret_cast<unsigned char*>(out.data()), out.size(), &written,
                                 bytes.data(), bytes.size());
  OUTPOST_CHECK(rc == 0, "base64 buffer sized by mbedtls itself");
  out.resize(written);
  return out;
}

Result<Bytes> base64_decode(std::string_view text) {
  size_t needed = 0;
  auto* src = reinterpret_cast<const unsigned char*>(text.data());
  int rc = mbedtls_base64_decode(nullptr, 0, &needed, src, text.size());
  if (rc == MBEDTLS_ERR_BASE64_INVALID_CHARACTER) {
    return fail(mbedtls_error(rc), "mbedtls_base64_decode");
  }
  Bytes out(needed);
  size_t written = 0;
  rc = mbedtls_base64_decode(out.data(), out.size(), &written, src, text.size());
  if (rc != 0) return fail(mbedtls_error(rc), "mbedtls_base64_decode");
  out.resize(written);
  return out;
}

std::string base64url_encode(ByteView bytes) {
  std::string s = base64_encode(bytes);
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (char& c : s) {
    if (c == '+') c = '-';
    else if (c == '/') c = '_';
  }
  return s;
}

Result<Bytes> base64url_decode(std::string_view text) {
  std::string s;
  s.reserve(text.size() + 3);
  for (char c : text) {
    if (c == '+' || c == '/' || c == '=') {
      return fail(errc::invalid_argument, "base64url text contains '+', '/' or '='");
    }
    s.push_back(c == '-' ? '+' : c == '_' ? '/' : c);
  }
  if (s.size() % 4 == 1) return fail(errc::invalid_argument, "base64url text has a bad length");
  while (s.size() % 4 != 0) s.push_back('=');
  return base64_decode(s);
}

bool equal_constant_time(ByteView a, ByteView b) {
  if (a.size() != b.size()) return false;
  uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

}  // namespace outpost
