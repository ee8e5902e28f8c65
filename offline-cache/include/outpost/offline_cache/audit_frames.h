// The audit log's frames as bytes, for the sync client: the hub receives each record exactly
// as the node wrote it (magic | length | payload | SHA-256), so what it stores hashes and
// chains the same.
#pragma once

#include <filesystem>
#include <functional>

#include "outpost/offline_cache/audit_log.h"

namespace outpost::offline_cache {

struct AuditFrame {
  uint64_t seq = 0;
  RecordKind kind = RecordKind::lifecycle;
  int64_t time_ms = 0;
  ByteView frame;  // valid during the callback only
};

// The last segment read, parsed: a reader that takes a segment in several batches (the sync
// client) reads and hashes it once. A segment whose size changed (the one being written) is
// read again.
struct FrameReaderCache {
  std::filesystem::path path;
  uint64_t size = 0;
  Bytes bytes;
  SegmentParse parse;
};

// Frames of records from_seq..to_seq in order to `each` (false stops). Segments before
// from_seq are not read. A corrupt frame in range is an error naming file and offset; a torn
// tail past to_seq is not (a writer may be mid-frame).
Result<void> read_audit_frames(const std::filesystem::path& dir, uint64_t from_seq, uint64_t to_seq,
                               const std::function<bool(const AuditFrame&)>& each, FrameReaderCache* cache = nullptr);

}  // namespace outpost::offline_cache
