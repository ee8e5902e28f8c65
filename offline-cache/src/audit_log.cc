// The audit log: framing, recovery, group commit, reading and verification. See audit_log.h.
#include "outpost/offline_cache/audit_log.h"

#include "segment_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/fb/audit_generated.h"
#include "outpost/offline_cache/chain_verifier.h"

namespace outpost::offline_cache {
namespace {

namespace fs = std::filesystem;
namespace fba = outpost::fb::audit;

constexpr size_t kFrameHeader = 8;
constexpr size_t kFrameTrailer = 32;
constexpr std::string_view kCheckpointDomain = "outpost/audit-checkpoint/v1";

uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
void put_u32(Bytes& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Digest to_digest(const flatbuffers::Vector<uint8_t>* v) {
  Digest d{};
  if (v != nullptr && v->size() == d.size()) std::copy(v->begin(), v->end(), d.begin());
  return d;
}
Bytes to_bytes(const flatbuffers::Vector<uint8_t>* v) { return v ? Bytes(v->begin(), v->end()) : Bytes{}; }
std::string to_string(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

std::string segment_name(uint64_t first_seq) {
  char name[48];
  std::snprintf(name, sizeof name, "seg-%020" PRIu64 ".oal", first_seq);
  return name;
}

// Whether a whole, valid frame starts anywhere after `from`: tells a torn tail (nothing valid
// follows) from damage in the middle (something does).
// Hashing is bounded (64 MiB over all candidates): crafted input full of magics must not cost
// quadratic time; past the bound the answer is "yes", the cautious one (report, never cut).
bool valid_frame_after(ByteView b, size_t from) {
  uint64_t budget = 64ull << 20;
  for (size_t p = from + 1; p + kFrameHeader + kFrameTrailer <= b.size(); ++p) {
    if (get_u32(b.data() + p) != kAuditFrameMagic) continue;
    uint32_t len = get_u32(b.data() + p + 4);
    if (len == 0 || len > kMaxAuditRecordBytes || p + kFrameHeader + len + kFrameTrailer > b.size()) continue;
    if (len > budget) return true;
    budget -= len;
    Digest h = sha256(b.subspan(p + kFrameHeader, len));
    if (std::equal(h.begin(), h.end(), b.data() + p + kFrameHeader + len)) return true;
  }
  return false;
}

Bytes build_payload(uint64_t seq, const Digest& prev, const AuditEntry& e) {
  flatbuffers::FlatBufferBuilder fbb(256 + e.detail.size() + e.quote.attest.size() + e.quote.signature.size() +
                                     e.quote_pcrs.size());
  auto prev_v = fbb.CreateVector(prev.data(), prev.size());
  auto event = fbb.CreateString(e.event);
  auto agent = fbb.CreateString(e.agent);
  auto detail = fbb.CreateString(e.detail);
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> head_v, attest_v, sig_v, pcrs_v;
  if (e.kind == RecordKind::checkpoint) {
    head_v = fbb.CreateVector(e.head_hash.data(), e.head_hash.size());
    attest_v = fbb.CreateVector(e.quote.attest);
    sig_v = fbb.CreateVector(e.quote.signature);
    pcrs_v = fbb.CreateVector(e.quote_pcrs);
  }
  fba::RecordBuilder r(fbb);
  r.add_seq(seq);
  r.add_time_ms(e.time_ms);
  r.add_prev_hash(prev_v);
  r.add_kind(static_cast<fba::RecordKind>(e.kind));
  r.add_event(event);
  r.add_agent(agent);
  r.add_bundle_version(e.bundle_version);
  r.add_detail(detail);
  if (e.kind == RecordKind::checkpoint) {
    r.add_head_seq(e.head_seq);
    r.add_head_hash(head_v);
    r.add_quote_attest(attest_v);
    r.add_quote_signature(sig_v);
    r.add_quote_pcrs(pcrs_v);
  }
  fbb.Finish(r.Finish());
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

Error corrupt(const std::string& what) { return Error(make_error_code(errc::corrupt), what); }

}  // namespace

std::string_view record_kind_name(RecordKind k) {
  switch (k) {
    case RecordKind::decision: return "decision";
    case RecordKind::lifecycle: return "lifecycle";
    case RecordKind::bundle_install: return "bundle_install";
    case RecordKind::attestation: return "attestation";
    case RecordKind::sync: return "sync";
    case RecordKind::checkpoint: return "checkpoint";
  }
  return "unknown";
}

Digest checkpoint_qualifying_data(uint64_t head_seq, const Digest& head_hash) {
  Bytes data(head_hash.begin(), head_hash.end());
  for (int i = 7; i >= 0; --i) data.push_back(static_cast<uint8_t>(head_seq >> (8 * i)));
  return domain_hash(kCheckpointDomain, data);
}

SegmentParse parse_segment(ByteView b, std::string_view name) {
  SegmentParse out;
  size_t pos = 0;
  auto stop = [&](const std::string& what, bool incomplete) {
    // Even a frame that runs past the end may be a damaged length in the middle: only when no
    // valid frame follows is it a write that never finished.
    (void)incomplete;
    const bool torn = !valid_frame_after(b, pos);
    out.end = torn ? SegmentParse::End::torn : SegmentParse::End::corrupt;
    out.error = std::string(name) + " at offset " + std::to_string(pos) + ": " + what +
                (torn ? " (an unfinished write: nothing valid follows)" : " (valid frames follow: the segment is damaged)");
  };
  const AuditRecord* last = nullptr;
  while (pos < b.size()) {
    if (b.size() - pos < kFrameHeader) return stop("incomplete frame header", true), out;
    if (get_u32(b.data() + pos) != kAuditFrameMagic) return stop("no frame magic", false), out;
    const uint32_t len = get_u32(b.data() + pos + 4);
    if (len == 0 || len > kMaxAuditRecordBytes) return stop("frame length " + std::to_string(len) + " out of range", false), out;
    if (b.size() - pos < kFrameHeader + len + kFrameTrailer) return stop("frame runs past the end of the file", true), out;
    ByteView payload = b.subspan(pos + kFrameHeader, len);
    Digest hash = sha256(payload);
    if (!std::equal(hash.begin(), hash.end(), b.data() + pos + kFrameHeader + len)) {
      return stop("frame hash does not match its record (the record was altered or the write was torn)", false), out;
    }
    // FlatBuffers reads scalars in place. The writer keeps frames 8-byte aligned; a payload at
    // an odd address (crafted bytes, a frame cut out of a package) is read from an aligned copy.
    Bytes aligned;
    if (reinterpret_cast<uintptr_t>(payload.data()) % alignof(uint64_t) != 0) {
      aligned.assign(payload.begin(), payload.end());
      payload = aligned;
    }
    flatbuffers::Verifier verifier(payload.data(), payload.size());
    if (!fba::VerifyRecordBuffer(verifier)) return stop("record is not a valid FlatBuffer", false), out;
    const fba::Record* r = fba::GetRecord(payload.data());
    AuditRecord rec;
    rec.seq = r->seq();
    rec.time_ms = r->time_ms();
    rec.prev_hash = to_digest(r->prev_hash());
    rec.kind = static_cast<RecordKind>(r->kind());
    rec.event = to_string(r->event());
    rec.agent = to_string(r->agent());
    rec.bundle_version = r->bundle_version();
    rec.detail = to_string(r->detail());
    rec.head_seq = r->head_seq();
    rec.head_hash = to_digest(r->head_hash());
    rec.quote.attest = to_bytes(r->quote_attest());
    rec.quote.signature = to_bytes(r->quote_signature());
    rec.quote_pcrs = to_bytes(r->quote_pcrs());
    rec.hash = hash;
    rec.segment = std::string(name);
    rec.offset = pos;
    if (r->prev_hash() == nullptr || r->prev_hash()->size() != 32 || rec.kind > RecordKind::checkpoint) {
      out.end = SegmentParse::End::corrupt;
      out.error = std::string(name) + " at offset " + std::to_string(pos) + ": record " + std::to_string(rec.seq) +
                  " lacks a 32-byte prev_hash or has an unknown kind";
      return out;
    }
    if (last != nullptr && (rec.seq != last->seq + 1 || rec.prev_hash != last->hash)) {
      // A whole, self-consistent frame that does not link: an edit, a splice or a gap.
      out.end = SegmentParse::End::corrupt;
      out.error = std::string(name) + " at offset " + std::to_string(pos) + ": record " + std::to_string(rec.seq) +
                  (rec.seq != last->seq + 1 ? " follows record " + std::to_string(last->seq) + " (a gap or a repeat)"
                                            : " does not link to record " + std::to_string(last->seq) +
                                                  " (its prev_hash is not that record's hash: the chain was altered)");
      return out;
    }
    out.records.push_back(std::move(rec));
    last = &out.records.back();
    pos += kFrameHeader + len + kFrameTrailer;
    out.good_bytes = pos;
  }
  return out;
}

// ---- the writer ----

Result<std::unique_ptr<AuditLog>> AuditLog::open(const fs::path& dir, AuditLogOptions options) {
  if (options.segment_bytes < 4096 || options.max_bytes < options.segment_bytes) {
    return fail(errc::invalid_argument, "audit log: segment_bytes must be >= 4096 and max_bytes >= segment_bytes");
  }
  OUTPOST_TRY_VOID(ensure_directory(dir, 0700));
  std::unique_ptr<AuditLog> log(new AuditLog(dir, options));
  OUTPOST_TRY_VOID(log->recover());
  log->committer_ = std::thread([p = log.get()] { p->commit_loop(); });
  return log;
}

Result<void> AuditLog::recover() {
  OUTPOST_TRY(auto segments, detail::list_segments(dir_));
  std::optional<Digest> head;
  uint64_t last_seq = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto& [first, path] = segments[i];
    const bool is_last = i + 1 == segments.size();
    OUTPOST_TRY(Bytes bytes, read_file(path, 2 * options_.segment_bytes + 2 * kMaxAuditRecordBytes));
    SegmentParse p = parse_segment(bytes, path.filename().string());
    if (p.end == SegmentParse::End::corrupt || (p.end == SegmentParse::End::torn && !is_last)) {
      return fail(corrupt("audit log: " + (dir_ / p.error).string() + "; nothing was changed: move the segment aside "
                                                                          "(keep it as evidence) to go on"));
    }
    if (!p.records.empty()) {
      const AuditRecord& r0 = p.records.front();
      if (r0.seq != first) {
        return fail(corrupt("audit log: " + path.string() + " at offset 0: record " + std::to_string(r0.seq) +
                            " in a segment named for " + std::to_string(first)));
      }
      if (head && (r0.seq != last_seq + 1 || r0.prev_hash != *head)) {
        return fail(corrupt("audit log: " + path.string() + " at offset 0: record " + std::to_string(r0.seq) +
                            " does not continue record " + std::to_string(last_seq) + " of the previous segment"));
      }
      head = p.records.back().hash;
      last_seq = p.records.back().seq;
      recovery_.records += p.records.size();
    } else if (!is_last) {
      return fail(corrupt("audit log: " + path.string() + " is empty but is not the last segment"));
    } else if (head && first != last_seq + 1) {
      return fail(corrupt("audit log: " + path.string() + " is empty and named for record " + std::to_string(first) +
                          " but the log ends at record " + std::to_string(last_seq)));
    }
    if (p.end == SegmentParse::End::torn) {
      const uint64_t cut = bytes.size() - p.good_bytes;
      int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return fail(errno_error("open " + path.string(), errno));
      int rc = ::ftruncate(fd, static_cast<off_t>(p.good_bytes));
      int err = errno;
      if (rc == 0) rc = ::fdatasync(fd);
      ::close(fd);
      if (rc != 0) return fail(errno_error("cut the torn tail of " + path.string(), err));
      recovery_.cut_torn_tail = true;
      recovery_.cut_detail = p.error + "; " + std::to_string(cut) + " bytes cut";
    }
    disk_bytes_ += p.good_bytes;
  }
  recovery_.segments = segments.size();
  recovery_.last_seq = last_seq;
  if (head) head_ = *head;
  next_seq_ = segments.empty() ? 1 : (last_seq ? last_seq + 1 : segments.back().first);
  durable_seq_ = next_seq_ - 1;
  if (!segments.empty()) {
    segment_path_ = segments.back().second;
    fd_ = ::open(segment_path_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) return fail(errno_error("open " + segment_path_.string(), errno));
    struct stat st{};
    if (::fstat(fd_, &st) != 0) return fail(errno_error("stat " + segment_path_.string(), errno));
    segment_size_ = static_cast<uint64_t>(st.st_size);
  }
  return ok();
}

Result<void> AuditLog::open_segment(uint64_t first_seq) {
  const fs::path path = dir_ / segment_name(first_seq);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno_error("create " + path.string(), errno));
  (void)fsync_directory(dir_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  segment_size_ = 0;
  std::lock_guard lock(mu_);
  segment_path_ = path;
  return ok();
}

AuditLog::~AuditLog() {
  {
    std::unique_lock lock(mu_);
    stop_ = true;
    durable_cv_.notify_all();
  }
  work_cv_.notify_all();
  if (committer_.joinable()) committer_.join();
  if (fd_ >= 0) ::close(fd_);
}

Result<uint64_t> AuditLog::append_locked(AuditEntry& e) {
  if (!write_error_.empty()) return fail(errc::io, "audit log refuses appends: the last write failed: " + write_error_);
  if (stop_) return fail(errc::unsupported, "audit log is closing");
  if (e.time_ms == 0) {
    e.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  Bytes payload = build_payload(next_seq_, head_, e);
  if (payload.size() > kMaxAuditRecordBytes) return fail(errc::invalid_argument, "audit record larger than 1 MiB");
  const uint64_t frame_bytes = kFrameHeader + payload.size() + kFrameTrailer;
  if (disk_bytes_ + queued_bytes_ + frame_bytes > options_.max_bytes) {
    return fail(errc::io, "audit log full: " + std::to_string(disk_bytes_ + queued_bytes_) + " of " +
                              std::to_string(options_.max_bytes) +
                              " bytes used; only records the hub has acknowledged may be released");
  }
  Digest hash = sha256(payload);
  Bytes frame;
  frame.reserve(frame_bytes);
  put_u32(frame, kAuditFrameMagic);
  put_u32(frame, static_cast<uint32_t>(payload.size()));
  frame.insert(frame.end(), payload.begin(), payload.end());
  frame.insert(frame.end(), hash.begin(), hash.end());
  const uint64_t seq = next_seq_++;
  head_ = hash;
  queue_.emplace_back(seq, std::move(frame));
  queued_bytes_ += frame_bytes;
  return seq;
}

Result<uint64_t> AuditLog::append(AuditEntry e) {
  std::unique_lock lock(mu_);
  OUTPOST_TRY(uint64_t seq, append_locked(e));
  wake_ = true;
  lock.unlock();
  work_cv_.notify_one();
  return seq;
}

Result<uint64_t> AuditLog::stage(AuditEntry e) {
  std::lock_guard lock(mu_);
  return append_locked(e);
}

std::pair<uint64_t, Digest> AuditLog::head() const {
  std::lock_guard lock(mu_);
  return {next_seq_ - 1, head_};
}

Result<uint64_t> AuditLog::append_checkpoint(uint64_t head_seq, const Digest& head_hash,
                                             const attestation::SignedAttestation& quote, Bytes pcrs) {
  AuditEntry e;
  e.kind = RecordKind::checkpoint;
  e.event = "checkpoint";
  e.head_seq = head_seq;
  e.head_hash = head_hash;
  e.quote = quote;
  e.quote_pcrs = std::move(pcrs);
  e.detail = R"({"kind":"checkpoint","head_seq":)" + std::to_string(head_seq) + "}";
  std::unique_lock lock(mu_);
  if (head_seq >= next_seq_ || head_seq + kCheckpointWindow < next_seq_) {
    return fail(errc::invalid_argument, "checkpoint head " + std::to_string(head_seq) + " is not among the last " +
                                            std::to_string(kCheckpointWindow) + " records");
  }
  OUTPOST_TRY(uint64_t seq, append_locked(e));
  wake_ = true;
  lock.unlock();
  work_cv_.notify_one();
  return seq;
}

Result<void> AuditLog::wait_durable(uint64_t seq) {
  std::unique_lock lock(mu_);
  // While a failed write is being retried (a full disk that may free up), wait a while: a
  // record reported as not durable may still land later, so give the retry its chance first.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    if (durable_seq_ >= seq) return ok();
    if (broken_ || stop_) break;
    // No write in flight and no failure being retried: this thread writes the batch itself
    // (no hand-off to the committer thread and back on the path of a call).
    if (!committing_ && write_error_.empty() && !queue_.empty()) {
      commit_locked(lock);
      continue;
    }
    if (durable_cv_.wait_until(lock, deadline) == std::cv_status::timeout && durable_seq_ < seq) break;
  }
  if (durable_seq_ >= seq) return ok();
  if (!write_error_.empty()) return fail(errc::io, "audit record " + std::to_string(seq) + " not durable: " + write_error_);
  return fail(errc::unsupported, "audit log closed before record " + std::to_string(seq) + " was durable");
}

Result<uint64_t> AuditLog::append_durable(AuditEntry e) {
  OUTPOST_TRY(uint64_t seq, stage(std::move(e)));
  OUTPOST_TRY_VOID(wait_durable(seq));
  return seq;
}

uint64_t AuditLog::durable_seq() const {
  std::lock_guard lock(mu_);
  return durable_seq_;
}
uint64_t AuditLog::commits() const {
  std::lock_guard lock(mu_);
  return commits_;
}
uint64_t AuditLog::last_seq() const {
  std::lock_guard lock(mu_);
  return next_seq_ - 1;
}
uint64_t AuditLog::disk_bytes() const {
  std::lock_guard lock(mu_);
  return disk_bytes_;
}
std::string AuditLog::refusing() const {
  std::lock_guard lock(mu_);
  if (!write_error_.empty()) return "the last write failed: " + write_error_;
  // Room for at least a small record.
  if (disk_bytes_ + queued_bytes_ + 512 > options_.max_bytes) {
    return "disk budget reached (" + std::to_string(disk_bytes_ + queued_bytes_) + " of " +
           std::to_string(options_.max_bytes) + " bytes)";
  }
  return {};
}

// Writes `frames` at the end of the segment (pwrite at segment_size_, so a retry never appends
// after leftovers), rotating as needed. *durable counts the frames that are written and synced:
// on an error they stay written and the caller queues only the rest. A failed ftruncate or
// fdatasync leaves the file in a state a retry must not build on: *fatal is set.
Result<void> AuditLog::write_batch(const std::vector<std::pair<uint64_t, Bytes>>& frames, size_t* durable, bool* fatal) {
  *durable = 0;
  *fatal = false;
  size_t i = 0;
  while (i < frames.size()) {
    if (fd_ < 0 || (segment_size_ > 0 && segment_size_ + frames[i].second.size() > options_.segment_bytes)) {
      if (fd_ >= 0) {
        if (::fdatasync(fd_) != 0) {
          *fatal = true;
          return fail(errno_error("fdatasync " + segment_path_.string(), errno));
        }
        *durable = i;  // everything before the rotation is on disk
      }
      OUTPOST_TRY_VOID(open_segment(frames[i].first));
    }
    // As many frames as fit this segment, in one write.
    Bytes chunk;
    uint64_t size = segment_size_;
    size_t j = i;
    while (j < frames.size() && (j == i || size + frames[j].second.size() <= options_.segment_bytes)) {
      chunk.insert(chunk.end(), frames[j].second.begin(), frames[j].second.end());
      size += frames[j].second.size();
      ++j;
    }
    size_t done = 0;
    while (done < chunk.size()) {
      ssize_t n = ::pwrite(fd_, chunk.data() + done, chunk.size() - done, static_cast<off_t>(segment_size_ + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int err = errno;
        // No partial frame stays behind: the segment goes back to its last whole frame.
        if (::ftruncate(fd_, static_cast<off_t>(segment_size_)) != 0) *fatal = true;
        return fail(errno_error("write " + segment_path_.string(), err));
      }
      done += static_cast<size_t>(n);
    }
    segment_size_ = size;
    i = j;
  }
  if (::fdatasync(fd_) != 0) {
    // Linux may have dropped the dirty pages it could not write: what is on disk is unknown.
    *fatal = true;
    return fail(errno_error("fdatasync " + segment_path_.string(), errno));
  }
  *durable = frames.size();
  return ok();
}

// Writes what is queued in one batch. Called with `lock` held, nothing committing and the queue
// not empty, by the committer thread or by a writer waiting for its own record (the leader of
// a group commit: the records queued while the last sync ran share this one). Returns false
// when the write failed (the rest stays queued; appends are refused until a retry succeeds).
bool AuditLog::commit_locked(std::unique_lock<std::mutex>& lock) {
  committing_ = true;
  std::vector<std::pair<uint64_t, Bytes>> batch;
  batch.swap(queue_);
  lock.unlock();
  size_t written = 0;
  bool fatal = false;
  Result<void> r = write_batch(batch, &written, &fatal);
  lock.lock();
  committing_ = false;
  uint64_t written_bytes = 0;
  for (size_t k = 0; k < written; ++k) written_bytes += batch[k].second.size();
  if (written > 0) {
    durable_seq_ = batch[written - 1].first;
    disk_bytes_ += written_bytes;
    queued_bytes_ -= written_bytes;
  }
  ++commits_;
  // Records appended for the committer while this batch was written are its to write now.
  if (wake_ || stop_) work_cv_.notify_one();
  if (r) {
    write_error_.clear();
    durable_cv_.notify_all();
    return true;
  }
  // Keep what was not written (ahead of anything queued since) and retry from the committer;
  // appends are refused meanwhile. After a failed fdatasync or ftruncate the file cannot be
  // trusted: no retry, until the log is reopened and recovered.
  write_error_ = r.error().message() + (fatal ? " (the log must be reopened to recover)" : "");
  queue_.insert(queue_.begin(), std::make_move_iterator(batch.begin() + static_cast<std::ptrdiff_t>(written)),
                std::make_move_iterator(batch.end()));
  if (fatal) broken_ = true;
  durable_cv_.notify_all();
  work_cv_.notify_all();
  return false;
}

void AuditLog::commit_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    // Records staged by a writer that will lead their commit are picked up here only if it
    // has not done so within the interval: nothing queued waits longer than that.
    work_cv_.wait_for(lock, kStagedInterval, [&] { return (stop_ || wake_) && !committing_; });
    if (committing_) continue;
    wake_ = false;
    if (queue_.empty()) {
      if (stop_) break;
      continue;
    }
    if (broken_) break;
    if (options_.linger.count() > 0 && !stop_) {
      lock.unlock();
      std::this_thread::sleep_for(options_.linger);
      lock.lock();
      if (committing_ || queue_.empty()) continue;
    }
    if (commit_locked(lock)) continue;
    if (broken_ || stop_) break;
    work_cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return stop_; });
    if (stop_) break;
    wake_ = true;  // retry the failed write
  }
}

Result<size_t> AuditLog::release_acknowledged(uint64_t acked_seq) {
  OUTPOST_TRY(auto segments, detail::list_segments(dir_));
  fs::path current;
  {
    std::lock_guard lock(mu_);
    current = segment_path_;
  }
  // The newest segment that holds records is kept whatever the hub acknowledged: recovery
  // takes the chain head from it (a later, empty segment carries no hash).
  size_t keep_from = segments.size();
  for (size_t k = segments.size(); k-- > 0;) {
    std::error_code ec;
    if (fs::file_size(segments[k].second, ec) > 0 && !ec) {
      keep_from = k;
      break;
    }
  }
  size_t removed = 0;
  for (size_t i = 0; i + 1 < segments.size() && i < keep_from; ++i) {
    const uint64_t last_in_segment = segments[i + 1].first - 1;
    if (last_in_segment > acked_seq || segments[i].second == current) break;
    std::error_code ec;
    const uint64_t size = fs::file_size(segments[i].second, ec);
    if (ec || !fs::remove(segments[i].second, ec) || ec) {
      return fail(errno_error("remove " + segments[i].second.string(), ec.value()));
    }
    std::lock_guard lock(mu_);
    disk_bytes_ -= std::min(disk_bytes_, size);
    ++removed;
  }
  return removed;
}

// ---- reading ----

namespace {

// Walks every segment in order, checking links across segments; `each` sees every record.
// Problems go to `problem`; returns false if the walk had to stop early.
void walk(const fs::path& dir, const std::function<bool(const AuditRecord&)>& each,
          const std::function<void(const std::string&)>& problem, bool* torn_tail, size_t* segment_count) {
  auto segments = detail::list_segments(dir);
  if (!segments) {
    problem(segments.error().message());
    return;
  }
  *segment_count = segments->size();
  std::optional<std::pair<uint64_t, Digest>> prev;
  for (size_t i = 0; i < segments->size(); ++i) {
    const auto& [first, path] = (*segments)[i];
    auto bytes = read_file(path, 1ull << 32);
    if (!bytes) {
      problem(bytes.error().message());
      prev.reset();
      continue;
    }
    SegmentParse p = parse_segment(*bytes, path.filename().string());
    if (!p.records.empty()) {
      const AuditRecord& r0 = p.records.front();
      if (r0.seq != first) {
        problem(path.filename().string() + " at offset 0: record " + std::to_string(r0.seq) + " in a segment named for " +
                std::to_string(first));
      }
      if (prev && (r0.seq != prev->first + 1 || r0.prev_hash != prev->second)) {
        problem(path.filename().string() + " at offset 0: record " + std::to_string(r0.seq) +
                (r0.seq != prev->first + 1 ? " where " + std::to_string(prev->first + 1) + " belongs (records are missing)"
                                           : " does not link to record " + std::to_string(prev->first)));
      }
    }
    for (const auto& r : p.records) {
      if (!each(r)) return;
    }
    if (!p.records.empty()) prev = std::make_pair(p.records.back().seq, p.records.back().hash);
    if (p.end == SegmentParse::End::torn && i + 1 == segments->size()) {
      *torn_tail = true;
    } else if (p.end != SegmentParse::End::clean) {
      problem(p.error);
      prev.reset();  // the chain cannot be followed across the damage
    }
  }
}

}  // namespace

Result<void> read_audit_log(const fs::path& dir, uint64_t from_seq, const std::function<bool(const AuditRecord&)>& each) {
  std::optional<std::string> first_problem;
  bool torn = false;
  size_t segments = 0;
  walk(
      dir,
      [&](const AuditRecord& r) {
        if (first_problem) return false;
        return r.seq < from_seq || each(r);
      },
      [&](const std::string& p) {
        if (!first_problem) first_problem = p;
      },
      &torn, &segments);
  if (first_problem) return fail(corrupt("audit log " + dir.string() + ": " + *first_problem));
  return ok();
}

AuditVerifyReport verify_audit_log(const fs::path& dir, const std::optional<EcPublicKey>& ak) {
  AuditVerifyReport rep;
  // The hashes of the last kCheckpointWindow records, by seq. After a problem the chain is
  // picked up again at the next record, by a new ChainVerifier; a checkpoint after the damage
  // may still name a head before it.
  std::vector<std::pair<uint64_t, Digest>> recent(kCheckpointWindow);
  auto older = [&recent](uint64_t seq) -> std::optional<Digest> {
    const auto& known = recent[seq % kCheckpointWindow];
    if (known.first != seq) return std::nullopt;
    return known.second;
  };
  std::optional<ChainVerifier> chain;
  size_t verified_before = 0;  // by the verifiers replaced after a problem
  bool walk_problem = false;   // the walk reported damage or a broken link since the last record
  auto restart = [&](ChainState from) {
    if (chain) verified_before += chain->checkpoints_verified();
    chain.emplace(ak, std::move(from), older);
  };
  walk(
      dir,
      [&](const AuditRecord& r) {
        if (rep.records == 0) rep.first_seq = r.seq;
        ++rep.records;
        rep.last_seq = r.seq;
        if (r.kind == RecordKind::checkpoint) ++rep.checkpoints;
        // The walk reports broken links itself (with file and offset): start over from here.
        if (!chain || walk_problem) {
          const bool first = !chain;
          restart(ChainState{0, {}, first && r.seq == 1, chain ? chain->state().last_clock : std::nullopt});
          walk_problem = false;
        }
        if (Result<void> fed = chain->feed(r); !fed) {
          rep.problems.push_back(r.segment + " at offset " + std::to_string(r.offset) + ": " + fed.error().message());
          restart(ChainState{r.seq, r.hash, true, chain->state().last_clock});
        }
        recent[r.seq % kCheckpointWindow] = {r.seq, r.hash};
        return true;
      },
      [&](const std::string& p) {
        rep.problems.push_back(p);
        walk_problem = true;
      },
      &rep.torn_tail, &rep.segments);
  rep.checkpoints_verified = verified_before + (chain ? chain->checkpoints_verified() : 0);
  return rep;
}

Result<std::vector<std::pair<uint64_t, fs::path>>> detail::list_segments(const fs::path& dir) {
  std::vector<std::pair<uint64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() != 28 || !n.starts_with("seg-") || !n.ends_with(".oal")) continue;
    uint64_t first = 0;
    bool digits = true;
    for (char c : n.substr(4, 20)) {
      if (c < '0' || c > '9') digits = false;
      first = first * 10 + static_cast<uint64_t>(c - '0');
    }
    if (digits) out.emplace_back(first, e.path());
  }
  if (ec) return fail(errno_error("list " + dir.string(), ec.value()));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace outpost::offline_cache
