// Evidence packages: the format and the offline verifier. See evidence.h; the node side
// (collecting and selecting records) is in evidence_collect.cc.
#include "outpost/offline_cache/evidence.h"

#include <algorithm>
#include <boost/json.hpp>
#include <map>
#include <set>

#include "frame_scan.h"
#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/fb/evidence_generated.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "outpost/firmware_hooks/runtime_log.h"
#include "outpost/offline_cache/chain_verifier.h"

namespace outpost::offline_cache {
namespace {

namespace fbe = outpost::fb::evidence;
namespace fh = outpost::firmware_hooks;
namespace json = boost::json;

constexpr size_t kFrameOverhead = 8 + 32;  // magic and length, then SHA-256

uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

Bytes to_bytes(const flatbuffers::Vector<uint8_t>* v) { return v ? Bytes(v->begin(), v->end()) : Bytes{}; }
std::string to_string(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

// How much hashing one scan may spend on bytes that turn out not to be frames: crafted input
// (fake frame headers with large lengths) must not cost more than linear time.
constexpr uint64_t kDamageScanBudget = 64ull << 20;

// The next offset after `from` where a whole frame with a matching hash starts; bytes.size()
// when there is none, or when *budget runs out (then *budget is 0).
size_t next_valid_frame(ByteView b, size_t from, uint64_t* budget) {
  for (size_t p = from + 1; p + kFrameOverhead <= b.size(); ++p) {
    if (get_u32(b.data() + p) != kAuditFrameMagic) continue;
    const uint32_t len = get_u32(b.data() + p + 4);
    if (len == 0 || len > kMaxAuditRecordBytes || len > b.size() - p - kFrameOverhead) continue;
    if (len > *budget) {
      *budget = 0;
      return b.size();
    }
    const Digest h = sha256(b.subspan(p + 8, len));
    if (std::equal(h.begin(), h.end(), b.data() + p + 8 + len)) return p;
    *budget -= len;
  }
  return b.size();
}

// parse_segment's error for a single frame, without its place and its guess about what follows.
std::string frame_error(const std::string& error, std::string_view name) {
  std::string what = error;
  const std::string prefix = std::string(name) + " at offset 0: ";
  if (what.starts_with(prefix)) what = what.substr(prefix.size());
  for (const char* guess : {" (an unfinished write", " (valid frames follow"}) {
    if (const size_t at = what.rfind(guess); at != std::string::npos) what.resize(at);
  }
  return what;
}

// A checkpoint quote the chain verifier accepted, for the logs to be checked against.
struct VerifiedQuote {
  uint64_t seq = 0;
  attestation::ClockInfo clock;
  attestation::PcrValues pcrs;
};

bool same_boot(const attestation::ClockInfo& c, const fh::RuntimeLogHeader& h) {
  return c.reset_count == h.reset_count && c.restart_count == h.restart_count;
}

std::string range(uint64_t first, uint64_t last) {
  return first == last ? "record " + std::to_string(first) + " is"
                       : "records " + std::to_string(first) + ".." + std::to_string(last) + " are";
}

void check_identity(const EvidencePackage& p, const EvidenceTrust& trust, EvidenceReport& rep) {
  Result<attestation::NodeIdentity> id = attestation::NodeIdentity::from_json(p.node_identity_json);
  if (!id) {
    rep.problems.push_back("the node identity (node.json) does not parse: " + id.error().message());
    return;
  }
  rep.node_id = id->node_id;
  // Every signature below is checked with the trusted AK; this only says whether the node's
  // own record agrees with it.
  if (!(id->ak_public == trust.ak)) {
    rep.problems.push_back("the node identity names AK " + id->ak_public.thumbprint() + " but the trusted AK is " +
                           trust.ak.thumbprint() + " (node.json was replaced, or the package is from another node)");
  }
}

void check_certifications(const EvidencePackage& p, const EvidenceTrust& trust, EvidenceReport& rep) {
  std::set<std::string> seen;
  for (const AgentCertification& c : p.agent_certifications) {
    // JSON-quoted: a name from the package must not put control characters on a terminal.
    const std::string who = "agent " + json::serialize(json::string(c.name));
    if (auto valid = attestation::validate_component_name("agent name", c.name); !valid) {
      rep.problems.push_back(who + ": " + valid.error().message());
      continue;
    }
    if (!seen.insert(c.name).second) {
      rep.problems.push_back(who + " is listed twice");
      continue;
    }
    if (c.certification.attest.empty()) {
      rep.problems.push_back(who + ": no certification (its key files on the node did not read)");
      continue;
    }
    const Digest qualifying = attestation::agent_qualifying_data(c.name, c.measurement);
    auto v = attestation::verify_certification(c.certification, trust.ak, c.key_public_area, qualifying);
    if (!v) {
      rep.problems.push_back(who + ": certification rejected: " + v.error().message());
      continue;
    }
    ++rep.certifications_verified;
  }
}

// Frames, chain, gaps, checkpoints; returns the checkpoint quotes that verified.
std::vector<VerifiedQuote> check_records(const EvidencePackage& p, const EvidenceTrust& trust, EvidenceReport& rep) {
  std::vector<AuditRecord> recs;
  detail::scan_frames(
      p.records, "records", [&](const AuditRecord& r, ByteView) { recs.push_back(r); },
      [&](uint64_t offset, uint64_t length, bool, const std::string& what) {
        rep.problems.push_back("records: bytes " + std::to_string(offset) + ".." + std::to_string(offset + length) +
                               " of the package are not a whole audit frame (" + what + ")");
      });
  if (recs.empty()) {
    rep.warnings.push_back("the package holds no audit records");
    return {};
  }
  rep.first_seq = recs.front().seq;
  rep.last_seq = recs.back().seq;

  // After a problem, checking starts again at the next record with a new verifier; a later
  // checkpoint may still name a head before that point: the hashes of the records before, by
  // seq (a package's records are contiguous, so they do not collide).
  std::vector<std::pair<uint64_t, Digest>> earlier(std::min<size_t>(recs.size(), kCheckpointWindow));
  auto older = [&earlier](uint64_t seq) -> std::optional<Digest> {
    const auto& known = earlier[seq % earlier.size()];
    if (known.first != seq || seq == 0) return std::nullopt;
    return known.second;
  };
  std::optional<ChainVerifier> chain;
  size_t verified_before = 0;
  uint64_t anchored = 0;
  std::vector<VerifiedQuote> quotes;
  uint64_t last_plain = 0;  // the last record that is not a verified checkpoint (whose quote speaks for it)
  for (const AuditRecord& r : recs) {
    if (!chain) chain.emplace(trust.ak, ChainState{0, {}, r.seq == 1, std::nullopt}, older);
    ++rep.records;
    if (r.kind == RecordKind::checkpoint) ++rep.checkpoints;
    const size_t verified = chain->checkpoints_verified();
    if (Result<void> fed = chain->feed(r); !fed) {
      // A checkpoint that links but names a head before the package's first record (a package
      // cut at a record between the two) cannot be checked; it anchors nothing. Not an attack:
      // what it would vouch for is simply not vouched for.
      const ChainState& s = chain->state();
      const bool links = s.last_seq == 0 ? !s.anchored : r.seq == s.last_seq + 1 && r.prev_hash == s.last_hash;
      if (links && r.kind == RecordKind::checkpoint && r.head_seq >= 1 && r.head_seq < rep.first_seq) {
        rep.warnings.push_back("checkpoint " + std::to_string(r.seq) + " names head " + std::to_string(r.head_seq) +
                               ", before the first record in the package: its quote is not checked");
      } else {
        rep.problems.push_back(fed.error().message());
      }
      anchored = std::max(anchored, chain->last_anchored_seq());
      verified_before += chain->checkpoints_verified();
      const auto clock = chain->state().last_clock;
      chain.emplace(trust.ak, ChainState{r.seq, r.hash, true, clock}, older);
      last_plain = r.seq;
      earlier[r.seq % earlier.size()] = {r.seq, r.hash};
      continue;
    }
    if (chain->checkpoints_verified() > verified) {
      // Verified by the chain: the attestation parses and the PCR values are the quoted ones.
      auto attest = attestation::parse_attest(r.quote.attest);
      auto pcrs = attestation::decode_pcrs_tpm2tools(r.quote_pcrs);
      if (attest && pcrs) quotes.push_back({r.seq, attest->clock, std::move(*pcrs)});
    } else {
      last_plain = r.seq;
    }
    earlier[r.seq % earlier.size()] = {r.seq, r.hash};
  }
  rep.checkpoints_verified = verified_before + chain->checkpoints_verified();
  rep.anchored_through = std::max(anchored, chain->last_anchored_seq());
  const uint64_t unanchored_from = std::max(rep.anchored_through + 1, rep.first_seq);
  if (last_plain >= unanchored_from && rep.last_seq >= unanchored_from) {
    rep.warnings.push_back(range(unanchored_from, rep.last_seq) + " not anchored by a checkpoint");
  }
  return quotes;
}

const Bytes* quoted_value(const attestation::PcrValues& pcrs, uint32_t pcr) {
  for (const auto& bank : pcrs) {
    if (bank.hash_alg != attestation::hash_alg::sha256) continue;
    auto it = bank.values.find(pcr);
    if (it != bank.values.end()) return &it->second;
  }
  return nullptr;
}

// The runtime log parses, and every checkpoint of its TPM boot quotes its PCR as the replay
// of a prefix of it, a prefix that never shrinks. Returns the log when it parsed.
std::optional<fh::RuntimeLog> check_runtime_log(const EvidencePackage& p, const std::vector<VerifiedQuote>& quotes,
                                                EvidenceReport& rep) {
  if (p.runtime_log.empty()) {
    rep.warnings.push_back("the package holds no runtime measurement log");
    return std::nullopt;
  }
  Result<fh::RuntimeLog> log = fh::parse_runtime_log(as_chars(p.runtime_log));
  if (!log) {
    const std::string what = log.error().message();
    rep.problems.push_back(what.starts_with("runtime log") ? what : "runtime log: " + what);
    return std::nullopt;
  }
  rep.runtime_entries = log->entries.size();
  const uint32_t pcr = log->header.pcr;
  const std::string pcr_name = "sha256 PCR " + std::to_string(pcr);
  // The PCR value after each prefix of the log.
  std::map<Digest, size_t> prefix_of;
  Digest value{};
  prefix_of.emplace(value, 0);
  for (size_t k = 0; k < log->entries.size(); ++k) {
    Sha256 h;
    h.update(ByteView(value.data(), value.size()));
    h.update(ByteView(log->entries[k].template_hash.data(), log->entries[k].template_hash.size()));
    value = h.finish();
    prefix_of.emplace(value, k + 1);
  }
  std::optional<size_t> seen;  // entries the last checkpoint of this boot vouched for
  uint64_t seen_by = 0;
  for (const VerifiedQuote& q : quotes) {
    if (!same_boot(q.clock, log->header)) continue;
    const Bytes* quoted = quoted_value(q.pcrs, pcr);
    if (quoted == nullptr) {
      rep.warnings.push_back("the checkpoint quotes do not cover " + pcr_name +
                             ", the runtime log's PCR: its entries are listed, not checked against the TPM");
      return std::move(*log);
    }
    Digest d{};
    if (quoted->size() == d.size()) std::copy(quoted->begin(), quoted->end(), d.begin());
    auto it = quoted->size() == d.size() ? prefix_of.find(d) : prefix_of.end();
    if (it == prefix_of.end()) {
      rep.problems.push_back("runtime log: checkpoint " + std::to_string(q.seq) + " quotes " + pcr_name + " as " +
                             hex_encode(*quoted) +
                             ", which no prefix of the log replays to (an entry was changed, removed or added, or "
                             "something else extended the PCR)");
      continue;
    }
    if (seen && it->second < *seen) {
      rep.problems.push_back("runtime log: checkpoint " + std::to_string(q.seq) + " quotes the first " +
                             std::to_string(it->second) + " entries, fewer than checkpoint " +
                             std::to_string(seen_by) + " before it (the PCR cannot go back within a TPM boot)");
    }
    seen = it->second;
    seen_by = q.seq;
  }
  const std::string boot = "(resetCount " + std::to_string(log->header.reset_count) + ", restartCount " +
                           std::to_string(log->header.restart_count) + ")";
  if (!seen) {
    rep.warnings.push_back("no verified checkpoint was quoted in the runtime log's TPM boot " + boot + ": its " +
                           std::to_string(log->entries.size()) + " entries are listed, not checked against the TPM");
  } else if (*seen < log->entries.size()) {
    rep.warnings.push_back("runtime log entries " + std::to_string(*seen + 1) + ".." +
                           std::to_string(log->entries.size()) + " were measured after checkpoint " +
                           std::to_string(seen_by) + ", the last quote of their TPM boot: no quote vouches for them yet");
  }
  return std::move(*log);
}

std::string_view verdict_text(fh::PcrComparison::Verdict v) {
  switch (v) {
    case fh::PcrComparison::Verdict::match: return "matches";
    case fh::PcrComparison::Verdict::log_has_extra: return "is quoted as the replay of only a prefix of the log";
    case fh::PcrComparison::Verdict::no_prefix_matches: return "is quoted as a value no prefix of the log replays to";
    case fh::PcrComparison::Verdict::bank_not_in_log: return "is quoted in a bank the log has no digests for";
  }
  return "?";
}

// The boot event log parses and replays to the PCRs of the last checkpoint quote of the TPM
// boot the runtime log names (the last one at all when there is no runtime log).
void check_boot_log(const EvidencePackage& p, const std::vector<VerifiedQuote>& quotes,
                    const std::optional<fh::RuntimeLog>& runtime, EvidenceReport& rep) {
  if (p.boot_event_log.empty()) return;
  Result<fh::EventLog> log = fh::parse_event_log(p.boot_event_log);
  if (!log) {
    rep.problems.push_back("boot event log: " + log.error().message());
    return;
  }
  Result<fh::Replay> replayed = fh::replay(*log);
  if (!replayed) {
    rep.problems.push_back("boot event log: replay: " + replayed.error().message());
    return;
  }
  const VerifiedQuote* quote = nullptr;
  for (const VerifiedQuote& q : quotes) {
    if (!runtime || same_boot(q.clock, runtime->header)) quote = &q;
  }
  if (quote == nullptr) {
    rep.warnings.push_back("the boot event log (" + std::to_string(log->events.size()) +
                           " events) is not checked against the TPM: no verified checkpoint of the current boot");
    return;
  }
  // The boot log vouches for the firmware's PCRs, not for the one outpost extends.
  attestation::PcrValues boot_pcrs = quote->pcrs;
  const uint32_t runtime_pcr = runtime ? runtime->header.pcr : 23;
  for (auto& bank : boot_pcrs) bank.values.erase(runtime_pcr);
  Result<fh::QuoteComparison> cmp = fh::compare_with_quote(*log, *replayed, boot_pcrs);
  if (!cmp) {
    rep.problems.push_back("boot event log: " + cmp.error().message());
    return;
  }
  for (const fh::PcrComparison& c : cmp->pcrs) {
    if (c.verdict == fh::PcrComparison::Verdict::match) continue;
    std::string line = "boot event log: " + fh::alg_name(c.alg) + " PCR " + std::to_string(c.pcr) + " " +
                       std::string(verdict_text(c.verdict)) + " by checkpoint " + std::to_string(quote->seq);
    if (c.first_divergent_event) {
      const fh::Event& e = log->events[*c.first_divergent_event];
      line += "; first divergent event " + std::to_string(e.index) + " (" + fh::event_type_name(e.type) + ": " +
              fh::describe_event(e) + ")";
    }
    rep.problems.push_back(std::move(line));
  }
}

}  // namespace

namespace detail {

void scan_frames(ByteView b, std::string_view name, const std::function<void(const AuditRecord&, ByteView)>& each,
                 const std::function<void(uint64_t, uint64_t, bool, const std::string&)>& damaged) {
  // Frame by frame, each parsed alone: links are the caller's to check, and parse_segment's own
  // look for valid frames after damage stays within one frame.
  uint64_t budget = kDamageScanBudget;
  size_t pos = 0;
  while (pos < b.size()) {
    const size_t rest = b.size() - pos;
    std::string what;
    if (rest < 8) {
      what = "incomplete frame header";
    } else if (get_u32(b.data() + pos) != kAuditFrameMagic) {
      what = "no frame magic";
    } else if (const uint32_t len = get_u32(b.data() + pos + 4); len == 0 || len > kMaxAuditRecordBytes) {
      what = "frame length " + std::to_string(len) + " out of range";
    } else if (rest < kFrameOverhead + len) {
      what = "frame runs past the end";
    } else {
      const ByteView frame = b.subspan(pos, kFrameOverhead + len);
      SegmentParse one = parse_segment(frame, name);
      if (one.records.size() == 1) {
        one.records[0].offset = pos;
        each(one.records[0], frame);
        pos += frame.size();
        continue;
      }
      what = frame_error(one.error, name);
      budget -= std::min<uint64_t>(budget, 2ull * len);  // its hash, and parse_segment's look inside it
    }
    const size_t next = next_valid_frame(b, pos, &budget);
    if (budget == 0 && next == b.size()) {
      damaged(pos, next - pos, false, what + "; the rest was not examined (more damage than a scan looks through)");
      return;
    }
    damaged(pos, next - pos, next == b.size(), what);
    pos = next;
  }
}

}  // namespace detail

Bytes encode_evidence_package(const EvidencePackage& p) {
  flatbuffers::FlatBufferBuilder fbb(1024 + p.records.size() + p.runtime_log.size() + p.boot_event_log.size());
  std::vector<flatbuffers::Offset<fbe::AgentCertification>> certs;
  for (const auto& c : p.agent_certifications) {
    certs.push_back(fbe::CreateAgentCertification(
        fbb, fbb.CreateString(c.name), fbb.CreateVector(c.measurement.data(), c.measurement.size()),
        fbb.CreateVector(c.key_public_area), fbb.CreateVector(c.certification.attest),
        fbb.CreateVector(c.certification.signature)));
  }
  std::vector<flatbuffers::Offset<fbe::NvCounter>> counters;
  for (const auto& n : p.nv_counters) {
    counters.push_back(fbe::CreateNvCounter(fbb, n.index, fbb.CreateString(n.purpose), n.value, fbb.CreateString(n.source)));
  }
  std::vector<flatbuffers::Offset<fbe::BundleVersion>> bundles;
  for (const auto& b : p.bundles) {
    bundles.push_back(
        fbe::CreateBundleVersion(fbb, b.version, fbb.CreateString(b.digest_hex), fbb.CreateString(b.installed_at)));
  }
  auto root = fbe::CreatePackage(fbb, p.format, fbb.CreateString(p.node_identity_json), fbb.CreateString(p.board),
                                 fbb.CreateString(p.exported_at), p.since_ms, p.until_ms, fbb.CreateVector(certs),
                                 fbb.CreateVector(p.runtime_log), fbb.CreateVector(p.boot_event_log),
                                 fbb.CreateVector(counters), fbb.CreateVector(bundles), fbb.CreateVector(p.records));
  fbe::FinishPackageBuffer(fbb, root);
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

Result<EvidencePackage> parse_evidence_package(ByteView b) {
  if (b.size() > kMaxEvidencePackageBytes) {
    return fail(errc::corrupt, "evidence package of " + std::to_string(b.size()) + " bytes is over the " +
                                   std::to_string(kMaxEvidencePackageBytes >> 20) + " MiB limit");
  }
  if (b.size() < 8 || !flatbuffers::BufferHasIdentifier(b.data(), fbe::PackageIdentifier())) {
    return fail(errc::corrupt, "not an evidence package (no \"OPEV\" file identifier)");
  }
  flatbuffers::Verifier verifier(b.data(), b.size());
  if (!fbe::VerifyPackageBuffer(verifier)) {
    return fail(errc::corrupt, "evidence package does not pass the FlatBuffers verifier (truncated or damaged)");
  }
  const fbe::Package* pk = fbe::GetPackage(b.data());
  if (pk->format() != kEvidenceFormat) {
    return fail(errc::unsupported, "evidence package format " + std::to_string(pk->format()) +
                                       "; this outpost reads format " + std::to_string(kEvidenceFormat));
  }
  EvidencePackage p;
  p.format = pk->format();
  p.node_identity_json = to_string(pk->node_identity_json());
  p.board = to_string(pk->board());
  p.exported_at = to_string(pk->exported_at());
  p.since_ms = pk->since_ms();
  p.until_ms = pk->until_ms();
  if (pk->agent_certifications() != nullptr) {
    for (const fbe::AgentCertification* c : *pk->agent_certifications()) {
      AgentCertification out;
      out.name = to_string(c->name());
      const auto* m = c->measurement();
      if (m == nullptr || m->size() != out.measurement.size()) {
        return fail(errc::corrupt, "evidence package: the certification of agent \"" + out.name +
                                       "\" lacks a 32-byte measurement");
      }
      std::copy(m->begin(), m->end(), out.measurement.begin());
      out.key_public_area = to_bytes(c->key_public_area());
      out.certification.attest = to_bytes(c->certify_attest());
      out.certification.signature = to_bytes(c->certify_signature());
      p.agent_certifications.push_back(std::move(out));
    }
  }
  p.runtime_log = to_bytes(pk->runtime_log());
  p.boot_event_log = to_bytes(pk->boot_event_log());
  if (pk->nv_counters() != nullptr) {
    for (const fbe::NvCounter* n : *pk->nv_counters()) {
      p.nv_counters.push_back({n->index(), to_string(n->purpose()), n->value(), to_string(n->source())});
    }
  }
  if (pk->bundles() != nullptr) {
    for (const fbe::BundleVersion* v : *pk->bundles()) {
      p.bundles.push_back({v->version(), to_string(v->digest_hex()), to_string(v->installed_at())});
    }
  }
  p.records = to_bytes(pk->records());
  return p;
}

std::string EvidenceReport::to_json() const {
  json::array problem_list, warning_list;
  for (const auto& s : problems) problem_list.emplace_back(s);
  for (const auto& s : warnings) warning_list.emplace_back(s);
  json::object o{{"ok", ok()},
                 {"node_id", node_id},
                 {"records", records},
                 {"first_seq", first_seq},
                 {"last_seq", last_seq},
                 {"anchored_through", anchored_through},
                 {"checkpoints", checkpoints},
                 {"checkpoints_verified", checkpoints_verified},
                 {"certifications_verified", certifications_verified},
                 {"runtime_entries", runtime_entries},
                 {"problems", std::move(problem_list)},
                 {"warnings", std::move(warning_list)}};
  return json::serialize(o);
}

EvidenceReport verify_evidence_package(const EvidencePackage& p, const EvidenceTrust& trust) {
  EvidenceReport rep;
  if (p.format != kEvidenceFormat) {
    rep.problems.push_back("evidence package format " + std::to_string(p.format) + " is not " +
                           std::to_string(kEvidenceFormat));
    return rep;
  }
  check_identity(p, trust, rep);
  check_certifications(p, trust, rep);
  const std::vector<VerifiedQuote> quotes = check_records(p, trust, rep);
  const std::optional<fh::RuntimeLog> runtime = check_runtime_log(p, quotes, rep);
  check_boot_log(p, quotes, runtime, rep);
  return rep;
}

}  // namespace outpost::offline_cache
