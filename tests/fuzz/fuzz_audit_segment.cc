// Audit log segments (a node's <state>/audit/log/seg-*.oal, or one a hub receives). Whatever the
// bytes, the parser stops at the first frame that does not check, never reads past the end, and
// what it accepted is a valid prefix: re-parsing exactly that prefix gives the same records.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "outpost/offline_cache/audit_log.h"

using namespace outpost;
using namespace outpost::offline_cache;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteView input(data, size);
  SegmentParse p = parse_segment(input, "fuzz");
  if (p.good_bytes > size) std::abort();
  if (p.end != SegmentParse::End::clean && p.error.empty()) std::abort();
  if (p.end == SegmentParse::End::clean && p.good_bytes != size) std::abort();
  for (size_t i = 1; i < p.records.size(); ++i) {
    if (p.records[i].seq != p.records[i - 1].seq + 1 || p.records[i].prev_hash != p.records[i - 1].hash) std::abort();
  }
  SegmentParse again = parse_segment(input.first(p.good_bytes), "fuzz");
  if (again.end != SegmentParse::End::clean || again.records.size() != p.records.size()) std::abort();
  (void)checkpoint_qualifying_data(p.records.empty() ? 0 : p.records.back().seq, p.records.empty() ? Digest{} : p.records.back().hash);
  return 0;
}
