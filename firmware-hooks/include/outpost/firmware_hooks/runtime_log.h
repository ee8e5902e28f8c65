// The runtime measurement log: what outpost measured into the board's runtime PCR (default
// 23) before it ran it — outpostd itself, its configuration, each bundle put in force and each
// agent binary — in the manner of Linux IMA's measurement list.
//
// The log is JSON lines. The first line is the header, naming the PCR and the TPM boot the log
// belongs to (resetCount, restartCount: a TPM Reset or Restart zeroes the PCR, so a new boot
// starts a new log). Every other line is one measurement:
//
//   {"outpost_runtime_log":1,"pcr":23,"bank":"sha256","reset_count":3,"restart_count":0,"started":"…Z"}
//   {"seq":1,"kind":"outpostd","name":"/usr/bin/outpostd","digest":"<sha256 hex>","template":"<hex>","time":"…Z"}
//
// The PCR is extended with `template` = SHA-256 over ("outpost/runtime-measurement/v1" 0x00
// kind 0x00 name 0x00 digest), so kind, name and digest are all bound; `time` is informative
// and not bound. A verifier recomputes every template from its fields, replays them from a
// zero PCR and compares with the quoted value (verify_runtime_log).
//
// Write order (RuntimeLogWriter): the line is appended and fdatasync'ed, then the PCR is
// extended. A crash in between leaves one line the TPM never saw; the next open finds that the
// log without its last line replays to the PCR and extends it then. A crash in the middle of
// the append leaves a line without its newline, which was never extended: it is cut.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation {
class Tpm;
}

namespace outpost::firmware_hooks {

// What outpost measures. The name is the canonical path for outpostd and config, "v<N>" for
// a bundle, the agent's name for an agent.
namespace runtime_kind {
inline constexpr std::string_view outpostd = "outpostd";
inline constexpr std::string_view config = "config";
inline constexpr std::string_view bundle = "bundle";
inline constexpr std::string_view agent = "agent";
}  // namespace runtime_kind

inline constexpr size_t kMaxRuntimeLogBytes = 16u << 20;
inline constexpr size_t kMaxRuntimeLogLine = 4096;

struct RuntimeLogHeader {
  uint32_t pcr = 23;
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  std::string started;  // RFC 3339, informative
};

struct RuntimeMeasurement {
  uint64_t seq = 0;   // 1, 2, … in log order
  size_t line = 0;    // 1-based line in the file
  std::string kind;
  std::string name;
  Digest digest{};    // SHA-256 of what was measured
  Digest template_hash{};  // what the PCR was extended with
  std::string time;   // RFC 3339, informative
};

struct RuntimeLog {
  RuntimeLogHeader header;
  std::vector<RuntimeMeasurement> entries;
};

// A known kind and a name of 1..1024 bytes without control characters (so no name can carry
// the 0x00 that separates the template's fields).
Result<void> validate_runtime_entry(std::string_view kind, std::string_view name);

// SHA-256 over the entry's bound fields (see the file comment).
Digest runtime_template_hash(std::string_view kind, std::string_view name, const Digest& digest);

// Parses a log. Every line is checked: the fields and their types, a known kind, a name of
// printable characters, sequence numbers 1, 2, … with no gap, and a template that is the hash
// of the line's own fields. Errors name the line. A last line without its newline is an error
// here (errc::corrupt, "torn"): the writer cuts it on open, a verifier must not guess.
Result<RuntimeLog> parse_runtime_log(std::string_view text);

std::string format_runtime_header(const RuntimeLogHeader& header);
std::string format_runtime_entry(const RuntimeMeasurement& entry);  // without the newline

// The PCR value the first `count` entries extend a zero PCR to (all of them by default).
Digest replay_runtime_log(const RuntimeLog& log, size_t count = SIZE_MAX);

// What a responder concludes from a runtime log, a verified quote's PCR values and clock, and
// the measurements it expects.
struct RuntimeVerdict {
  bool pcr_quoted = false;       // the quote covers the log's PCR in the sha256 bank
  bool replay_matches = false;   // the whole log replays to the quoted value
  bool boot_matches = true;      // the quote was taken in the TPM boot the log names
  Digest replayed{};
  Bytes quoted;
  // When the quoted value is the replay of a strict prefix: how many entries the TPM saw (the
  // rest were logged after the quote, or never extended).
  std::optional<size_t> quoted_prefix;
  // One line per problem, naming the entry: replay mismatch, a measurement that differs from
  // the expected one ("entry 4 (line 5): agent \"writer\" measured …, expected …").
  std::vector<std::string> problems;
  // Agents measured that the expectations do not mention (not a failure).
  std::vector<std::string> unreferenced;

  bool ok() const { return pcr_quoted && replay_matches && boot_matches && problems.empty(); }
};

struct RuntimeExpectations {
  // The SHA-256 values accepted per agent name (e.g. the measurements a bundle pins). Every
  // entry of that agent in the log must be one of them: the log holds every binary that ran
  // under the name since the TPM booted, an update included.
  std::map<std::string, std::vector<Digest>, std::less<>> agents;
  // Expected SHA-256 of outpostd and of its configuration, when the responder has them.
  std::optional<Digest> outpostd;
  std::optional<Digest> config;
};

RuntimeVerdict verify_runtime_log(const RuntimeLog& log, const attestation::PcrValues& quoted,
                                  std::optional<attestation::ClockInfo> quote_clock,
                                  const RuntimeExpectations& expected);

// The node side: appends measurements and extends the PCR, in that order, one process at a
// time (flock on the log). Not thread-safe: one owner (outpostd's worker, or the pre-start
// hook while outpostd is stopped).
class RuntimeLogWriter {
 public:
  struct OpenReport {
    bool new_log = false;           // no log, or a new TPM boot (the old one kept as .prev)
    bool completed_last = false;    // the last entry had not been extended; it is now
    bool cut_torn_tail = false;     // a partial last line was removed
    bool replays = true;            // the log replays to the PCR's current value
    std::string detail;             // when !replays: both values
  };

  // Opens or creates the log at `path` for `pcr` (sha256 bank) of `tpm`.
  static Result<std::unique_ptr<RuntimeLogWriter>> open(const std::filesystem::path& path, attestation::Tpm& tpm,
                                                        uint32_t pcr);

  const OpenReport& open_report() const { return report_; }

  // Measures unless this TPM boot's log already holds the same (kind, name, digest): IMA's
  // rule, so a restart of the same binary adds nothing. Returns whether it extended.
  Result<bool> measure(std::string_view kind, std::string_view name, const Digest& digest);

  const std::filesystem::path& path() const { return path_; }

 private:
  RuntimeLogWriter(std::filesystem::path path, attestation::Tpm& tpm, uint32_t pcr)
      : path_(std::move(path)), tpm_(tpm), pcr_(pcr) {}

  std::filesystem::path path_;
  attestation::Tpm& tpm_;
  uint32_t pcr_;
  OpenReport report_;
};

}  // namespace outpost::firmware_hooks
