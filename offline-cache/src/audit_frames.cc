#include "outpost/offline_cache/audit_frames.h"

#include <algorithm>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "segment_files.h"

namespace outpost::offline_cache {

namespace fs = std::filesystem;

Result<void> read_audit_frames(const fs::path& dir, uint64_t from_seq, uint64_t to_seq,
                               const std::function<bool(const AuditFrame&)>& each, FrameReaderCache* cache) {
  FrameReaderCache local;
  FrameReaderCache& held = cache ? *cache : local;
  if (from_seq > to_seq) return ok();
  OUTPOST_TRY(auto segments, detail::list_segments(dir));
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].first > to_seq) break;
    if (i + 1 < segments.size() && segments[i + 1].first <= from_seq) continue;
    std::error_code size_ec;
    const uint64_t size = fs::file_size(segments[i].second, size_ec);
    if (size_ec || held.path != segments[i].second || held.size != size) {
      OUTPOST_TRY(held.bytes, read_file(segments[i].second, size_t{1} << 30));
      held.path = segments[i].second;
      held.size = held.bytes.size();
      held.parse = parse_segment(held.bytes, segments[i].second.filename().string());
    }
    const Bytes& bytes = held.bytes;
    const SegmentParse& p = held.parse;
    for (size_t k = 0; k < p.records.size(); ++k) {
      const AuditRecord& r = p.records[k];
      if (r.seq < from_seq) continue;
      if (r.seq > to_seq) return ok();
      const uint64_t end = k + 1 < p.records.size() ? p.records[k + 1].offset : p.good_bytes;
      AuditFrame f{r.seq, r.kind, r.time_ms, ByteView(bytes.data() + r.offset, end - r.offset)};
      if (!each(f)) return ok();
    }
    if (p.end == SegmentParse::End::corrupt || (p.end == SegmentParse::End::torn && i + 1 < segments.size())) {
      return fail(errc::corrupt, "audit log " + dir.string() + ": " + p.error);
    }
  }
  return ok();
}

}  // namespace outpost::offline_cache
