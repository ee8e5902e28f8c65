// Error categories. outpost's own conditions live in `errc`; the two C libraries keep their
// codes in categories of their own, decoded by the library's own decoder:
//   tss2_category()    TSS2_RC values, message from Tss2_RC_Decode
//   mbedtls_category() mbedTLS (negative) codes, message from mbedtls_strerror
// Third-party codes are turned into Errors at exactly one wrapper per library
// (attestation/src/esys.cc for ESAPI, base/src/crypto.cc for mbedTLS).
#pragma once

#include <cstdint>
#include <string>
#include <system_error>

#include "outpost/base/result.h"

namespace outpost {

enum class errc {
  ok = 0,
  invalid_argument = 1,  // the caller's input is malformed
  not_found,             // a file, key, handle or index that should exist does not
  already_exists,
  corrupt,               // stored or received bytes fail to parse
  io,                    // a system call on a file or socket failed
  tpm_unavailable,       // the TPM cannot be reached through its TCTI
  tpm_mismatch,          // the TPM is not the one this state was provisioned on
  verification_failed,   // a signature, digest or binding does not check out
  clock_regressed,       // a TPM clock or counter went backwards
  unsupported,
  timeout,
};

const std::error_category& outpost_category();
const std::error_category& tss2_category();
const std::error_category& mbedtls_category();

inline std::error_code make_error_code(errc e) {
  return {static_cast<int>(e), outpost_category()};
}
inline std::error_code tss2_error(uint32_t rc) {
  return {static_cast<int>(rc), tss2_category()};
}
inline std::error_code mbedtls_error(int rc) { return {rc, mbedtls_category()}; }

// An Error from errno, e.g. after open(2): "context: No such file or directory".
Error errno_error(std::string context, int err);

}  // namespace outpost

template <>
struct std::is_error_code_enum<outpost::errc> : std::true_type {};
