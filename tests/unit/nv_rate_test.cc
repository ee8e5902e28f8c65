// The NV_RATE wait loop, with a fake operation above the TPM seam.
#include <catch2/catch.hpp>

#include "nv_rate.h"
#include "outpost/base/errors.h"

using namespace outpost;
using namespace std::chrono_literals;

TEST_CASE("TPM_RC_NV_RATE is waited out and other errors are not", "[tpm-logic]") {
  int calls = 0;
  std::vector<std::chrono::milliseconds> sleeps;
  auto sleeper = [&](std::chrono::milliseconds d) { sleeps.push_back(d); };

  SECTION("rate-limited twice, then succeeds") {
    auto r = attestation::detail::retry_on_nv_rate(
        [&]() -> Result<void> {
          if (++calls <= 2) return fail(tss2_error(TPM2_RC_NV_RATE), "Esys_NV_Increment");
          return ok();
        },
        sleeper);
    CHECK(r.has_value());
    CHECK(calls == 3);
    CHECK(sleeps == std::vector<std::chrono::milliseconds>{50ms, 100ms});
  }
  SECTION("another TPM error returns at once") {
    auto r = attestation::detail::retry_on_nv_rate(
        [&]() -> Result<void> {
          ++calls;
          return fail(tss2_error(TPM2_RC_NV_LOCKED), "Esys_NV_Increment");
        },
        sleeper);
    CHECK_FALSE(r.has_value());
    CHECK(calls == 1);
    CHECK(sleeps.empty());
  }
  SECTION("a TPM that never stops rate-limiting gives up after about 30 s of waiting") {
    auto r = attestation::detail::retry_on_nv_rate(
        [&]() -> Result<void> {
          ++calls;
          return fail(tss2_error(TPM2_RC_NV_RATE), "Esys_NV_Increment");
        },
        sleeper);
    CHECK_FALSE(r.has_value());
    std::chrono::milliseconds total(0);
    for (auto s : sleeps) total += s;
    CHECK(total >= 30s);
    CHECK(total < 32s);
  }
}
