// RuntimeLogWriter: append, fdatasync, then extend; recovery on open. See runtime_log.h.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include "outpost/attestation/tpm.h"
#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"
#include "outpost/firmware_hooks/runtime_log.h"

namespace outpost::firmware_hooks {
namespace {

namespace fs = std::filesystem;

// The log file, open and exclusively locked (flock) for as long as this lives: the pre-start
// hook and outpostd never interleave their appends.
class LockedLog {
 public:
  static Result<LockedLog> open(const fs::path& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return fail(errno_error("open " + path.string(), errno));
    if (::flock(fd, LOCK_EX) != 0) {
      int err = errno;
      ::close(fd);
      return fail(errno_error("flock " + path.string(), err));
    }
    return LockedLog(fd, path);
  }
  LockedLog(LockedLog&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  LockedLog& operator=(LockedLog&&) = delete;
  ~LockedLog() {
    if (fd_ >= 0) ::close(fd_);  // drops the lock
  }

  Result<std::string> read_all() {
    std::string text;
    char buf[16384];
    if (::lseek(fd_, 0, SEEK_SET) < 0) return fail(errno_error("lseek " + path_.string(), errno));
    for (;;) {
      ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(errno_error("read " + path_.string(), errno));
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
      if (text.size() > kMaxRuntimeLogBytes) {
        return fail(make_error_code(errc::corrupt), path_.string() + " is larger than " +
                                                        std::to_string(kMaxRuntimeLogBytes) + " bytes");
      }
    }
    return text;
  }

  Result<void> truncate(size_t size) {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return fail(errno_error("ftruncate " + path_.string(), errno));
    return sync();
  }

  // Appends `line` and a newline at the end of the file and makes it durable.
  Result<void> append(std::string line) {
    line.push_back('\n');
    off_t end = ::lseek(fd_, 0, SEEK_END);
    if (end < 0) return fail(errno_error("lseek " + path_.string(), errno));
    size_t done = 0;
    while (done < line.size()) {
      ssize_t n = ::pwrite(fd_, line.data() + done, line.size() - done, end + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int err = errno;
        // Leave no partial line behind (ENOSPC): what was written is cut again.
        (void)::ftruncate(fd_, end);
        return fail(errno_error("append to " + path_.string(), err));
      }
      done += static_cast<size_t>(n);
    }
    return sync();
  }

  Result<void> sync() {
    if (::fdatasync(fd_) != 0) return fail(errno_error("fdatasync " + path_.string(), errno));
    return ok();
  }

 private:
  LockedLog(int fd, fs::path path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  fs::path path_;
};

Result<Digest> read_pcr(attestation::Tpm& tpm, uint32_t pcr) {
  attestation::PcrSelections sel{{attestation::hash_alg::sha256, {pcr}}};
  OUTPOST_TRY(attestation::PcrValues values, tpm.pcr_read(sel));
  for (const auto& bank : values) {
    auto it = bank.values.find(pcr);
    if (bank.hash_alg == attestation::hash_alg::sha256 && it != bank.values.end() && it->second.size() == 32) {
      Digest d;
      std::copy(it->second.begin(), it->second.end(), d.begin());
      return d;
    }
  }
  return fail(make_error_code(errc::unsupported), "the TPM has no sha256 PCR " + std::to_string(pcr));
}

enum class PcrState { matches, completed_last, diverges };

// Whether `pcr` holds what `log` replays to. A PCR equal to the replay of all lines but the
// last is a line logged whose extend never happened (a crash, a failed extend): it is
// extended now. Anything else is a PCR the log does not explain.
Result<PcrState> reconcile(attestation::Tpm& tpm, uint32_t pcr, const RuntimeLog& log, Digest* current) {
  OUTPOST_TRY(*current, read_pcr(tpm, pcr));
  if (replay_runtime_log(log) == *current) return PcrState::matches;
  if (!log.entries.empty() && replay_runtime_log(log, log.entries.size() - 1) == *current) {
    OUTPOST_TRY_VOID(tpm.pcr_extend(pcr, log.entries.back().template_hash));
    return PcrState::completed_last;
  }
  return PcrState::diverges;
}

}  // namespace

Result<std::unique_ptr<RuntimeLogWriter>> RuntimeLogWriter::open(const fs::path& path, attestation::Tpm& tpm,
                                                                 uint32_t pcr) {
  if (pcr > 23) return fail(make_error_code(errc::invalid_argument), "runtime PCR " + std::to_string(pcr) + " is not 0..23");
  OUTPOST_TRY_VOID(ensure_directory(path.parent_path(), 0700));
  std::unique_ptr<RuntimeLogWriter> w(new RuntimeLogWriter(path, tpm, pcr));
  OUTPOST_TRY(attestation::TimeInfo now, tpm.read_clock());
  OUTPOST_TRY(LockedLog file, LockedLog::open(path));
  OUTPOST_TRY(std::string text, file.read_all());

  if (!text.empty() && text.back() != '\n') {
    size_t keep = text.rfind('\n');
    keep = keep == std::string::npos ? 0 : keep + 1;
    OUTPOST_TRY_VOID(file.truncate(keep));
    text.resize(keep);
    w->report_.cut_torn_tail = true;
  }
  std::optional<RuntimeLog> log;
  if (!text.empty()) {
    auto parsed = parse_runtime_log(text);
    if (!parsed) {
      return fail(parsed.error().wrap(path.string() + " (evidence: not overwritten; move it aside to start a new log)"));
    }
    log = std::move(*parsed);
    if (log->header.pcr != pcr || log->header.reset_count != now.clock.reset_count ||
        log->header.restart_count != now.clock.restart_count) {
      // A new TPM boot zeroed the PCR (or the board moved to another PCR): the old log is
      // kept for the responder, the new boot gets a new one.
      fs::path prev = path;
      prev += ".prev";
      std::error_code ec;
      fs::rename(path, prev, ec);
      if (ec) return fail(errno_error("rename " + path.string(), ec.value()));
      log.reset();
    }
  }
  if (!log) {
    // After a rename `file` holds the old inode; the new log is a new file (and a new lock).
    std::optional<LockedLog> renamed;
    if (!text.empty()) {
      OUTPOST_TRY(LockedLog fresh, LockedLog::open(path));
      renamed.emplace(std::move(fresh));
    }
    LockedLog& target = renamed ? *renamed : file;
    RuntimeLogHeader h;
    h.pcr = pcr;
    h.reset_count = now.clock.reset_count;
    h.restart_count = now.clock.restart_count;
    h.started = format_rfc3339_utc(unix_now());
    OUTPOST_TRY_VOID(target.append(format_runtime_header(h)));
    OUTPOST_TRY_VOID(fsync_directory(path.parent_path()));
    w->report_.new_log = true;
    log = RuntimeLog{h, {}};
  }

  Digest current{};
  OUTPOST_TRY(PcrState state, reconcile(tpm, pcr, *log, &current));
  if (state == PcrState::completed_last) w->report_.completed_last = true;
  if (state != PcrState::diverges) return w;
  w->report_.replays = false;
  w->report_.detail = "the log replays sha256 PCR " + std::to_string(pcr) + " to " + hex_encode(replay_runtime_log(*log)) +
                      " but the TPM holds " + hex_encode(current) +
                      " (something else extended or reset the PCR, or the log was altered)";
  return w;
}

Result<bool> RuntimeLogWriter::measure(std::string_view kind, std::string_view name, const Digest& digest) {
  // Checked before anything is written: a name the parser would refuse must not poison the log.
  if (auto v = validate_runtime_entry(kind, name); !v) return fail(v.error().wrap("measurement refused"));
  OUTPOST_TRY(LockedLog file, LockedLog::open(path_));
  OUTPOST_TRY(std::string text, file.read_all());
  // Another writer (the pre-start hook) may have appended since open: this is the log as it is.
  Result<RuntimeLog> log = parse_runtime_log(text);
  if (!log) return fail(log.error().wrap(path_.string()));
  // The PCR must hold what the log says before anything is added or skipped as a duplicate: a
  // line whose extend failed earlier is extended now, and a PCR the log does not explain
  // fails closed (a duplicate found in such a log would let code run unmeasured).
  Digest current{};
  OUTPOST_TRY(PcrState state, reconcile(tpm_, pcr_, *log, &current));
  if (state == PcrState::diverges) {
    return fail(make_error_code(errc::verification_failed),
                path_.string() + " does not replay to sha256 PCR " + std::to_string(pcr_) + " (" +
                    hex_encode(replay_runtime_log(*log)) + " vs " + hex_encode(current) +
                    "): something else extended or reset the PCR; nothing more is measured until the TPM restarts");
  }
  for (const auto& e : log->entries) {
    if (e.kind == kind && e.name == name && e.digest == digest) return false;
  }
  RuntimeMeasurement m;
  m.seq = log->entries.size() + 1;
  m.kind = std::string(kind);
  m.name = std::string(name);
  m.digest = digest;
  m.template_hash = runtime_template_hash(kind, name, digest);
  m.time = format_rfc3339_utc(unix_now());
  OUTPOST_TRY_VOID(file.append(format_runtime_entry(m)));
  if (auto r = tpm_.pcr_extend(pcr_, m.template_hash); !r) {
    // Logged but not extended: the next open completes it (the PCR is unchanged, so the log
    // minus this line still replays).
    return fail(r.error().wrap("extend PCR " + std::to_string(pcr_) + " with " + std::string(kind) + " \"" +
                               std::string(name) + "\""));
  }
  return true;
}

}  // namespace outpost::firmware_hooks
