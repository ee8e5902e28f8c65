// The one place an mbedTLS return code becomes an Error (crypto.cc and tls.cc include it; no
// other file calls mbedTLS), and the RAII holders both use. The error names the mbedTLS function; mbedtls_category() decodes
// the code with mbedtls_strerror.
#pragma once

#include <mbedtls/bignum.h>
#include <mbedtls/pk.h>

#include "outpost/base/errors.h"
#include "outpost/base/result.h"

namespace outpost::detail {

inline Result<void> mbedtls_check(int rc, const char* function) {
  if (rc == 0) return ok();
  return fail(mbedtls_error(rc), function);
}

// RAII holders for the mbedTLS structures crypto.cc and tls.cc both use.
struct Mpi {
  Mpi() { mbedtls_mpi_init(&v); }
  ~Mpi() { mbedtls_mpi_free(&v); }
  Mpi(const Mpi&) = delete;
  Mpi& operator=(const Mpi&) = delete;
  mbedtls_mpi v;
};

struct Pk {
  Pk() { mbedtls_pk_init(&ctx); }
  ~Pk() { mbedtls_pk_free(&ctx); }
  Pk(const Pk&) = delete;
  Pk& operator=(const Pk&) = delete;
  mbedtls_pk_context ctx;
};

}  // namespace outpost::detail
