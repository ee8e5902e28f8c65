// The one place an mbedTLS return code becomes an Error (crypto.cc and tls.cc include it; no
// other file calls mbedTLS). The error names the mbedTLS function; mbedtls_category() decodes
// the code with mbedtls_strerror.
#pragma once

#include "outpost/base/errors.h"
#include "outpost/base/result.h"

namespace outpost::detail {

inline Result<void> mbedtls_check(int rc, const char* function) {
  if (rc == 0) return ok();
  return fail(mbedtls_error(rc), function);
}

}  // namespace outpost::detail
