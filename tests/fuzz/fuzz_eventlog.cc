// Boot event logs (binary_bios_measurements, or a log a node sends with its evidence). Whatever
// parses must replay, describe and compare without crashing; a parse is deterministic.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "outpost/firmware_hooks/eventlog.h"

using namespace outpost;
using namespace outpost::firmware_hooks;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteView input(data, size);
  auto log = parse_event_log(input);
  if (!log) {
    if (log.error().message().empty()) std::abort();
    return 0;
  }
  for (const Event& e : log->events) {
    if (e.pcr >= kPcrCount || e.offset >= size) std::abort();
    (void)describe_event(e);
    (void)decode_efi_variable(e.data);
  }
  auto replayed = replay(*log);
  if (!replayed) return 0;
  attestation::PcrValues quoted;
  for (const auto& bank : *replayed) {
    attestation::PcrBank q;
    q.hash_alg = bank.first;
    for (uint32_t i = 0; i < kPcrCount; ++i) {
      if (bank.second.pcrs[i].touched()) q.values[i] = bank.second.pcrs[i].initial;
    }
    quoted.push_back(std::move(q));
  }
  auto compared = compare_with_quote(*log, *replayed, quoted);
  if (!compared) std::abort();
  return 0;
}
