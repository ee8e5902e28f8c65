// The one wrapper through which every TSS2_RC (ESAPI, MU, TCTI loader) becomes an Error.
#pragma once

#include <tss2/tss2_common.h>

#include "outpost/base/errors.h"
#include "outpost/base/result.h"

namespace outpost::attestation::detail {

inline Result<void> check_tss2(TSS2_RC rc, const char* function) {
  if (rc == TSS2_RC_SUCCESS) return ok();
  return fail(tss2_error(rc), function);
}

}  // namespace outpost::attestation::detail
