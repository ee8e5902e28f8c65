// outpostd's configuration and agent manifests (YAML an operator or a deploy pipeline writes),
// and the daemon API's JSON lines: parse, never crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/config.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)daemon::parse_manifest(text, "fuzz", "/base");
  (void)daemon::parse_daemon_config(text, "fuzz");
  return 0;
}
