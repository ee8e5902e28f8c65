// Evidence packages, the node side: what the state directory holds, and the audit records an
// export selects. See evidence.h.
#include <algorithm>
#include <boost/json.hpp>

#include "frame_scan.h"
#include "segment_files.h"
#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "outpost/firmware_hooks/runtime_log.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/evidence.h"

namespace outpost::offline_cache {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

std::vector<AgentCertification> collect_certifications(const fs::path& state_dir, const attestation::NodeIdentity& id) {
  std::vector<AgentCertification> out;
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(state_dir / "agents", ec)) {
    // agent.json is written last: a directory without it holds no committed key.
    if (e.is_directory(ec) && file_exists(e.path() / "agent.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  attestation::AgentKeyStore store(state_dir, id);
  for (const auto& name : names) {
    AgentCertification c;
    c.name = name;
    // Files that do not read are listed with no certification: the verifier reports them.
    if (Result<attestation::AgentKey> key = store.read(name)) {
      c.measurement = key->measurement;
      c.key_public_area = key->blob.public_area;
      c.certification = key->certification;
    }
    out.push_back(std::move(c));
  }
  return out;
}

// bundles/state.json: the bundle in force and the NV counter value it records.
Result<void> collect_bundle_state(const fs::path& state_dir, EvidencePackage& p) {
  const fs::path path = state_dir / "bundles" / "state.json";
  if (!file_exists(path)) return ok();
  OUTPOST_TRY(std::string text, read_text_file(path, 1 << 20));
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  const json::object* state = nullptr;
  if (!ec && v.is_object() && v.as_object().contains("state") && v.as_object().at("state").is_object()) {
    state = &v.as_object().at("state").as_object();
  }
  auto number = [&](const char* key) -> std::optional<uint64_t> {
    auto it = state->find(key);
    if (it == state->end()) return std::nullopt;
    if (it->value().is_uint64()) return it->value().as_uint64();
    if (it->value().is_int64() && it->value().as_int64() >= 0) return static_cast<uint64_t>(it->value().as_int64());
    return std::nullopt;
  };
  auto text_of = [&](const char* key) -> std::string {
    auto it = state->find(key);
    return it != state->end() && it->value().is_string() ? std::string(it->value().as_string()) : std::string();
  };
  if (state == nullptr || !number("version") || !number("counter") || !number("installed_at")) {
    return fail(errc::corrupt, path.string() + " is not a bundle state record");
  }
  p.nv_counters.push_back({0, "bundle-rollback", *number("counter"), "state-dir"});
  p.bundles.push_back({*number("version"), text_of("bundle_sha256"),
                       format_rfc3339_utc(static_cast<int64_t>(*number("installed_at")))});
  // The bundle before it is kept beside it (for diagnosis); its version is in the file.
  const std::string previous = text_of("previous_sha256");
  if (!previous.empty() && previous.find('/') == std::string::npos) {
    const fs::path file = state_dir / "bundles" / (previous + ".opb");
    if (Result<Bytes> bytes = read_file(file, kMaxBundleBytes)) {
      if (Result<SignedBundle> b = SignedBundle::parse(std::move(*bytes))) p.bundles.push_back({b->version(), previous, ""});
    }
  }
  return ok();
}

}  // namespace

Result<EvidencePackage> collect_node_evidence(const fs::path& state_dir, const fs::path& boot_event_log) {
  EvidencePackage p;
  Result<std::string> identity = read_text_file(state_dir / "node.json", 1 << 20);
  if (!identity) return fail(identity.error().wrap("the node identity (is " + state_dir.string() + " the state directory?)"));
  p.node_identity_json = std::move(*identity);
  // A node.json that does not parse is exported as it is: the verifier reports it.
  Result<attestation::NodeIdentity> id = attestation::NodeIdentity::from_json(p.node_identity_json);
  const attestation::NodeIdentity node = id ? *id : attestation::NodeIdentity{};
  p.board = node.board;
  p.exported_at = format_rfc3339_utc(unix_now());
  p.agent_certifications = collect_certifications(state_dir, node);

  const fs::path runtime = state_dir / "measurements" / "runtime.log";
  if (file_exists(runtime)) {
    OUTPOST_TRY(p.runtime_log, read_file(runtime, firmware_hooks::kMaxRuntimeLogBytes));
  }
  if (!boot_event_log.empty()) {
    // securityfs reports size 0 for the log; read_file reads to the end regardless.
    Result<Bytes> boot = read_file(boot_event_log, firmware_hooks::kMaxLogSize);
    if (!boot) return fail(boot.error().wrap("the boot event log"));
    p.boot_event_log = std::move(*boot);
  }
  OUTPOST_TRY_VOID(collect_bundle_state(state_dir, p));
  return p;
}

Result<RecordSelection> select_audit_records(const fs::path& log_dir, int64_t since_ms, int64_t until_ms,
                                             const std::function<void(uint64_t, uint64_t)>& progress) {
  OUTPOST_TRY(auto segments, detail::list_segments(log_dir));
  uint64_t total = 0, done = 0;
  for (const auto& s : segments) {
    std::error_code ec;
    total += fs::file_size(s.second, ec);
  }
  total *= 2;  // read twice: to select, then to copy
  RecordSelection sel;
  // Reads the segments from `from` on and hands every whole frame to `each`; with `note`,
  // damage is noted.
  auto read_segments = [&](size_t from, const std::function<void(const AuditRecord&, ByteView)>& each,
                           bool note) -> Result<void> {
    for (size_t i = from; i < segments.size(); ++i) {
      const fs::path& path = segments[i].second;
      OUTPOST_TRY(Bytes bytes, read_file(path, size_t{1} << 32));
      detail::scan_frames(
          bytes, path.filename().string(), each,
          [&](uint64_t offset, uint64_t length, bool torn, const std::string& what) {
            if (!note || (torn && i + 1 == segments.size())) return;  // a write in progress at the end
            sel.notes.push_back(path.filename().string() + " at offset " + std::to_string(offset) + ": " +
                                std::to_string(length) + " bytes that are not a valid frame were left out: " + what);
          });
      done += bytes.size();
      if (progress) progress(done, total);
    }
    return ok();
  };

  // Pass 1: what the time range selects, and where the checkpoints point.
  auto in_range = [&](int64_t t) { return (since_ms == 0 || t >= since_ms) && (until_ms == 0 || t <= until_ms); };
  std::vector<std::pair<uint64_t, uint64_t>> checkpoints;  // (seq, head_seq)
  uint64_t last_plain = 0;  // the last selected record that is not a checkpoint (whose quote speaks for it)
  OUTPOST_TRY_VOID(read_segments(0, [&](const AuditRecord& r, ByteView) {
    if (in_range(r.time_ms)) {
      if (sel.selected_first_seq == 0) sel.selected_first_seq = r.seq;
      sel.selected_last_seq = r.seq;
      if (r.kind != RecordKind::checkpoint) last_plain = r.seq;
    }
    if (r.kind == RecordKind::checkpoint) checkpoints.emplace_back(r.seq, r.head_seq);
  }, false));
  if (sel.selected_first_seq == 0) {
    sel.notes.push_back("no audit record falls in the time range");
    if (progress) progress(total, total);
    return sel;
  }
  uint64_t start = sel.selected_first_seq, end = sel.selected_last_seq;
  for (const auto& [seq, head] : checkpoints) {
    if (last_plain != 0 && head >= last_plain) {
      sel.anchor_checkpoint = seq;
      end = std::max(end, seq);
      break;
    }
  }
  if (last_plain != 0 && !sel.anchor_checkpoint) {
    sel.notes.push_back("no checkpoint covers record " + std::to_string(last_plain) +
                        " yet: the last records are not anchored (outpostd takes one by the board's cadence; export again later)");
  }
  // Every checkpoint in the package must find its head in it: from the last one down, each
  // whose head is before the start moves the start back (and brings earlier checkpoints in).
  std::sort(checkpoints.begin(), checkpoints.end());
  for (auto it = checkpoints.rbegin(); it != checkpoints.rend() && it->first >= start; ++it) {
    if (it->first <= end && it->second > 0 && it->second < start) start = it->second;
  }

  // Pass 2: the frames, byte for byte. Segments wholly before `start` are skipped; a record
  // out of place (a damaged log) is not a reason to stop early.
  size_t from = 0;
  while (from + 1 < segments.size() && segments[from + 1].first <= start) {
    std::error_code ec;
    done += fs::file_size(segments[from].second, ec);
    ++from;
  }
  bool too_large = false;
  OUTPOST_TRY_VOID(read_segments(from, [&](const AuditRecord& r, ByteView frame) {
    if (r.seq < start || r.seq > end || too_large) return;
    if (sel.frames.size() + frame.size() > kMaxEvidenceRecordsBytes) {
      too_large = true;
      return;
    }
    if (sel.records == 0) sel.first_seq = r.seq;
    sel.last_seq = r.seq;
    ++sel.records;
    sel.frames.insert(sel.frames.end(), frame.begin(), frame.end());
  }, true));
  if (too_large) {
    return fail(errc::invalid_argument, "records " + std::to_string(start) + ".." + std::to_string(end) + " are over the " +
                                            std::to_string(kMaxEvidenceRecordsBytes >> 20) +
                                            " MiB a package holds: narrow the time range (--since, --until)");
  }
  if (progress) progress(total, total);
  return sel;
}

}  // namespace outpost::offline_cache
