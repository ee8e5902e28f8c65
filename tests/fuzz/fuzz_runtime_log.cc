// Runtime measurement logs (a node's <state>/measurements/runtime.log, or one inside evidence a
// responder receives). Whatever parses must format back to the same bytes, replay, and verify
// against any quoted value without crashing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "outpost/firmware_hooks/runtime_log.h"

using namespace outpost;
using namespace outpost::firmware_hooks;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto log = parse_runtime_log(text);
  if (!log) {
    if (log.error().message().empty()) std::abort();
    return 0;
  }
  for (size_t i = 0; i < log->entries.size(); ++i) {
    const auto& e = log->entries[i];
    if (e.seq != i + 1) std::abort();
    if (e.template_hash != runtime_template_hash(e.kind, e.name, e.digest)) std::abort();
    // What the writer would write for this entry parses back to the same fields.
    auto again = parse_runtime_log(format_runtime_header(log->header) + "\n" + format_runtime_entry(e) + "\n");
    if (e.seq == 1 && (!again || again->entries.size() != 1 || again->entries[0].name != e.name)) std::abort();
  }
  Digest replayed = replay_runtime_log(*log);
  attestation::PcrValues quoted{{attestation::hash_alg::sha256, {{log->header.pcr, Bytes(replayed.begin(), replayed.end())}}}};
  RuntimeExpectations expected;
  for (const auto& e : log->entries) {
    if (e.kind == runtime_kind::agent) expected.agents[e.name].push_back(e.digest);
  }
  auto v = verify_runtime_log(*log, quoted, attestation::ClockInfo{0, log->header.reset_count, log->header.restart_count, true}, expected);
  if (!v.ok()) std::abort();
  return 0;
}
