// The node's tamper-evident audit log: append-only segment files of FlatBuffers records
// (schema/audit.fbs), each carrying its sequence number and the SHA-256 of the record before
// it, group-committed with fdatasync.
//
// On disk, <dir>/seg-<first seq, 20 digits>.oal, each a run of frames:
//   u32 magic "OPAR" | u32 payload length | payload (a Record) | SHA-256(payload)
// all little-endian. The hash of a record is the SHA-256 of its payload, which is also the
// next record's prev_hash.
//
// Durability: append() queues a record and gives it its sequence number at once (the chain is
// built in memory, in order) and wakes a committer thread, which writes whatever is queued in
// one write and one fdatasync. wait_durable(seq) returns once seq is on disk: only then is a
// record acknowledged. A writer that waits does not hand its record to the committer and wait
// to be woken: if no write is in flight it writes the queue itself, and if one is, it waits
// for it and the first waiter left writes everything queued meanwhile in the next one (group
// commit as in LevelDB's write path: concurrent writers share one fdatasync, and the thread
// that needs the record pays no thread hop). stage() queues without waking the committer, for
// a writer about to wait; the committer still writes what is staged after kStagedInterval.
//
// Recovery (open): every segment is read and checked frame by frame and link by link. In the
// last segment a tail that is not a whole, valid frame and is followed by no valid frame is a
// write that never finished: it is cut (and reported). Anything else that does not check
// (a bad frame with valid frames after it, a broken link, a gap) is corruption: open fails
// with the file and offset, and nothing is skipped.
//
// Bounded disk: appends are refused once the segments and the queue reach max_bytes (fail
// closed; the caller pauses what produces records). Only segments whose every record the hub
// acknowledged are ever removed (release_acknowledged). A write that fails (ENOSPC, EIO) is
// cut back to the last whole frame and retried; until it succeeds, appends are refused with
// that error, and nothing acknowledged is lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::offline_cache {

enum class RecordKind : uint8_t { decision = 0, lifecycle, bundle_install, attestation, sync, checkpoint };
std::string_view record_kind_name(RecordKind k);

// What a writer appends.
struct AuditEntry {
  RecordKind kind = RecordKind::lifecycle;
  std::string event;
  std::string agent;
  uint64_t bundle_version = 0;
  std::string detail = "{}";  // a JSON object
  int64_t time_ms = 0;        // 0: now
  // checkpoint only (set by append_checkpoint)
  uint64_t head_seq = 0;
  Digest head_hash{};
  attestation::SignedAttestation quote;
  Bytes quote_pcrs;
};

// A record as read back.
struct AuditRecord : AuditEntry {
  uint64_t seq = 0;
  Digest prev_hash{};
  Digest hash{};        // SHA-256 of the payload
  std::string segment;  // file name
  uint64_t offset = 0;  // of the frame in its segment
};

inline constexpr uint32_t kAuditFrameMagic = 0x5241504f;  // "OPAR"
inline constexpr uint32_t kMaxAuditRecordBytes = 1u << 20;
// A checkpoint's head is at most this many records before it (the verifier keeps that many hashes).
inline constexpr uint64_t kCheckpointWindow = 65536;
// Staged records nobody waits for are written by the committer after at most this long.
inline constexpr std::chrono::milliseconds kStagedInterval{50};

// One segment's bytes, frame by frame. Stops at the first frame that does not check.
struct SegmentParse {
  std::vector<AuditRecord> records;
  uint64_t good_bytes = 0;  // the valid prefix
  enum class End { clean, torn, corrupt } end = End::clean;
  std::string error;        // for torn and corrupt: what, at which offset
};
SegmentParse parse_segment(ByteView bytes, std::string_view name);

// The qualifying data of a checkpoint quote: SHA-256("outpost/audit-checkpoint/v1" 0x00
// head_hash || head_seq as 8 bytes big-endian).
Digest checkpoint_qualifying_data(uint64_t head_seq, const Digest& head_hash);

struct AuditLogOptions {
  uint64_t segment_bytes = 8ull << 20;
  uint64_t max_bytes = 256ull << 20;
  // How long the committer waits for more records before a sync when it is idle; 0 syncs as
  // soon as anything is queued (records still batch while a sync is running).
  std::chrono::microseconds linger{0};
};

class AuditLog {
 public:
  struct Recovery {
    uint64_t records = 0;     // whole records found
    uint64_t last_seq = 0;
    size_t segments = 0;
    bool cut_torn_tail = false;
    std::string cut_detail;   // file, offset and bytes cut
  };

  static Result<std::unique_ptr<AuditLog>> open(const std::filesystem::path& dir, AuditLogOptions options);
  ~AuditLog();  // commits what is queued, then stops the committer
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  const Recovery& recovery() const { return recovery_; }

  // Queues `e` and returns its sequence number. Refused (nothing queued) when the disk budget
  // is reached or the last write failed; the error says which.
  Result<uint64_t> append(AuditEntry e);
  // As append(), for a caller that calls wait_durable() next: the committer is not woken.
  Result<uint64_t> stage(AuditEntry e);
  // Blocks until every record up to `seq` is durable, or returns the write error. Writes the
  // queue on this thread when no other write is in flight.
  Result<void> wait_durable(uint64_t seq);
  Result<uint64_t> append_durable(AuditEntry e);

  // The chain head a checkpoint quotes: (last seq appended, its hash).
  std::pair<uint64_t, Digest> head() const;
  // Appends a checkpoint record: the quote whose qualifying data is
  // checkpoint_qualifying_data(head_seq, head_hash) for a head read with head(). Records may
  // be appended between the two (the TPM is slow), so the head need not be the record right
  // before the checkpoint; it must be one of the kCheckpointWindow records before it.
  Result<uint64_t> append_checkpoint(uint64_t head_seq, const Digest& head_hash,
                                     const attestation::SignedAttestation& quote, Bytes pcrs);

  uint64_t durable_seq() const;
  // Batches written (one write and one fdatasync each) since open.
  uint64_t commits() const;
  uint64_t last_seq() const;
  uint64_t disk_bytes() const;
  // Empty when appends are accepted; else why not (budget reached, write failing).
  std::string refusing() const;

  // Removes whole segments whose last record is at most `acked_seq` (the hub has them).
  // Returns how many segments were removed. The segment being written is never removed.
  Result<size_t> release_acknowledged(uint64_t acked_seq);

  const std::filesystem::path& dir() const { return dir_; }

 private:
  AuditLog(std::filesystem::path dir, AuditLogOptions options) : dir_(std::move(dir)), options_(options) {}
  Result<void> recover();
  Result<void> open_segment(uint64_t first_seq);
  void commit_loop();
  bool commit_locked(std::unique_lock<std::mutex>& lock);
  Result<void> write_batch(const std::vector<std::pair<uint64_t, Bytes>>& frames, size_t* durable, bool* fatal);
  Result<uint64_t> append_locked(AuditEntry& e);

  std::filesystem::path dir_;
  AuditLogOptions options_;
  Recovery recovery_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_, durable_cv_;
  uint64_t next_seq_ = 1;
  Digest head_{};
  std::vector<std::pair<uint64_t, Bytes>> queue_;  // (seq, frame)
  uint64_t queued_bytes_ = 0;
  uint64_t durable_seq_ = 0;
  uint64_t disk_bytes_ = 0;  // whole frames in the segments
  std::string write_error_;
  bool broken_ = false;  // a failed fdatasync/ftruncate: refuse until reopened
  bool stop_ = false;
  bool committing_ = false;  // a batch is being written (by the committer or a waiting writer)
  bool wake_ = false;        // append() queued records for the committer
  uint64_t commits_ = 0;

  // Segment state: only the committer touches these after open.
  int fd_ = -1;
  std::filesystem::path segment_path_;
  uint64_t segment_size_ = 0;
  std::thread committer_;
};

// Reading a log directory without opening it for writing (audit tail / verify, evidence).
struct AuditVerifyReport {
  uint64_t records = 0;
  uint64_t first_seq = 0;
  uint64_t last_seq = 0;
  size_t segments = 0;
  size_t checkpoints = 0;
  size_t checkpoints_verified = 0;      // with an AK given
  bool torn_tail = false;               // the last segment ends in an unfinished frame
  std::vector<std::string> problems;    // each names file and offset
  bool ok() const { return problems.empty(); }
};

// Every record from `from_seq` on, in order, to `each` (return false to stop). A problem
// (corruption, a broken link) ends the walk with an error naming file and offset; a torn tail
// of the last segment is not an error (a writer may be mid-frame).
Result<void> read_audit_log(const std::filesystem::path& dir, uint64_t from_seq,
                            const std::function<bool(const AuditRecord&)>& each);

// Checks the whole chain: frames, links, no gaps, and with `ak` every checkpoint's quote
// (signature, qualifying data = the chain head it names, TPM clock and reset counters only
// going forward).
AuditVerifyReport verify_audit_log(const std::filesystem::path& dir, const std::optional<EcPublicKey>& ak);

}  // namespace outpost::offline_cache
