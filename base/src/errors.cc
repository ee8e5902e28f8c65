#include "outpost/base/errors.h"

#include <mbedtls/error.h>
#include <tss2/tss2_rc.h>

#include <cstdio>

namespace outpost {
namespace {

class OutpostCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "outpost"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::ok: return "success";
      case errc::invalid_argument: return "invalid argument";
      case errc::not_found: return "not found";
      case errc::already_exists: return "already exists";
      case errc::corrupt: return "corrupt or malformed data";
      case errc::io: return "input/output error";
      case errc::tpm_unavailable: return "TPM unavailable";
      case errc::tpm_mismatch: return "TPM does not match the provisioned state";
      case errc::verification_failed: return "verification failed";
      case errc::clock_regressed: return "TPM clock or counter went backwards";
      case errc::unsupported: return "unsupported";
      case errc::timeout: return "timed out";
    }
    return "unknown outpost error " + std::to_string(ev);
  }
};

class Tss2Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "tss2"; }
  std::string message(int ev) const override {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", static_cast<unsigned>(ev));
    // Tss2_RC_Decode returns a pointer into a thread-local buffer; copy it at once.
    return std::string(Tss2_RC_Decode(static_cast<TSS2_RC>(ev))) + " (" + hex + ")";
  }
};

class MbedtlsCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "mbedtls"; }
  std::string message(int ev) const override {
    char buf[160];
    mbedtls_strerror(ev, buf, sizeof buf);
    char hex[16];
    std::snprintf(hex, sizeof hex, "-0x%04x", static_cast<unsigned>(-ev));
    return std::string(buf) + " (" + hex + ")";
  }
};

}  // namespace

const std::error_category& outpost_category() {
  static const OutpostCategory c;
  return c;
}
const std::error_category& tss2_category() {
  static const Tss2Category c;
  return c;
}
const std::error_category& mbedtls_category() {
  static const MbedtlsCategory c;
  return c;
}

Error errno_error(std::string context, int err) {
  return Error(std::error_code(err, std::generic_category()), std::move(context));
}

}  // namespace outpost
