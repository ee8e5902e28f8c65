// TPM_RC_NV_RATE: the TPM refuses NV writes for a while to protect its flash. The answer is
// to wait and try again, not to fail; this loop does that with a bounded, growing delay.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <chrono>

#include "esys.h"

namespace outpost::attestation::detail {

// Calls `op` until it returns anything but TPM_RC_NV_RATE, sleeping 50 ms, 100 ms, ... up to
// 1.6 s between tries, for at most about 30 s in all.
template <class Op, class Sleep>
Result<void> retry_on_nv_rate(Op op, Sleep sleep) {
  std::chrono::milliseconds delay(50);
  std::chrono::milliseconds waited(0);
  for (;;) {
    Result<void> r = op();
    if (r || base_rc(rc_of(r.error())) != TPM2_RC_NV_RATE || waited >= std::chrono::seconds(30)) return r;
    sleep(delay);
    waited += delay;
    delay = std::min(delay * 2, std::chrono::milliseconds(1600));
  }
}

}  // namespace outpost::attestation::detail
