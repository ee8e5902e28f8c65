// The one wrapper through which every TSS2_RC (ESAPI, MU, TCTI loader) becomes an Error.
#pragma once

#include <tss2/tss2_common.h>

#include <cstdlib>
#include <mutex>

#include "outpost/base/errors.h"
#include "outpost/base/result.h"

namespace outpost::attestation::detail {

// tpm2-tss logs every failure to stderr, expected ones included (no object at a handle,
// malformed evidence being refused). outpost reports errors itself, so the library is made
// quiet once per process unless the user set TSS2_LOG.
inline void quiet_tss_logging() {
  static std::once_flag once;
  std::call_once(once, [] { ::setenv("TSS2_LOG", "all+NONE", 0); });
}

inline Result<void> check_tss2(TSS2_RC rc, const char* function) {
  if (rc == TSS2_RC_SUCCESS) return ok();
  return fail(tss2_error(rc), function);
}

}  // namespace outpost::attestation::detail
