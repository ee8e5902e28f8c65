// Evidence packages without a TPM: a software AK (soft_tpm.h: TPMS_ATTEST and TPMT_SIGNATURE
// in the TPM's formats) quotes the checkpoints of a real AuditLog in a temporary directory.
// The same checks against swtpm and the real CLI are in tests/integration/evidence_test.cc.
#include <catch2/catch.hpp>
#include <map>

#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/fb/evidence_generated.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "outpost/firmware_hooks/runtime_log.h"
#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/chain_verifier.h"
#include "outpost/offline_cache/evidence.h"
#include "soft_tpm.h"
#include "test_support.h"

namespace outpost::offline_cache {
namespace {

namespace fs = std::filesystem;
namespace fh = firmware_hooks;
using attestation::ClockInfo;
using attestation::PcrValues;
using attestation::SignedAttestation;

using testing::ecc_public_area;
using testing::SoftAk;

EcPrivateKey new_key() {
  auto k = EcPrivateKey::generate();
  REQUIRE(k);
  return std::move(*k);
}

std::string identity_json(const EcPublicKey& ak) { return testing::soft_identity(ak).to_json(); }

// A runtime log of `n` agent measurements in TPM boot (reset 1, restart 0), and its text.
fh::RuntimeLog runtime_log(size_t n, const std::string& tweak = "") {
  fh::RuntimeLog log;
  log.header = {23, 1, 0, "2026-01-01T00:00:00Z"};
  for (size_t i = 0; i < n; ++i) {
    fh::RuntimeMeasurement m;
    m.seq = i + 1;
    m.kind = std::string(fh::runtime_kind::agent);
    m.name = "agent-" + std::to_string(i) + (i == 1 ? tweak : "");
    m.digest = sha256(m.name);
    m.template_hash = fh::runtime_template_hash(m.kind, m.name, m.digest);
    m.time = "2026-01-01T00:00:01Z";
    log.entries.push_back(m);
  }
  return log;
}
Bytes runtime_text(const fh::RuntimeLog& log) {
  std::string text = fh::format_runtime_header(log.header) + "\n";
  for (const auto& e : log.entries) text += fh::format_runtime_entry(e) + "\n";
  return Bytes(text.begin(), text.end());
}

AuditEntry decision(int i, int64_t time_ms = 0) {
  AuditEntry e;
  e.kind = RecordKind::decision;
  e.event = "decision";
  e.agent = "writer";
  e.detail = R"({"tool":"fs/read_file","allow":true,"n":)" + std::to_string(i) + "}";
  e.time_ms = time_ms;
  return e;
}

// A node without a TPM: an audit log with checkpoints quoted by the software AK, whose PCR 23
// is the replay of the first `runtime_seen` entries of its runtime log.
struct SoftNode {
  testing::TempDir dir;
  SoftAk ak;
  std::string identity = identity_json(ak.pub());  // node.json
  fh::RuntimeLog runtime = runtime_log(4);
  size_t runtime_seen = 4;
  uint64_t clock = 10000;
  std::unique_ptr<AuditLog> log;
  std::map<uint32_t, Bytes> boot_pcrs;  // extra PCRs the quotes carry (0..7)

  SoftNode() {
    AuditLogOptions o;
    o.segment_bytes = 4096;
    o.max_bytes = 1 << 20;
    auto l = AuditLog::open(dir / "log", o);
    REQUIRE(l);
    log = std::move(*l);
  }
  fs::path log_dir() const { return dir / "log"; }

  PcrValues pcrs() const {
    attestation::PcrBank bank;
    bank.values = boot_pcrs;
    const Digest v = fh::replay_runtime_log(runtime, runtime_seen);
    bank.values[23] = Bytes(v.begin(), v.end());
    return {bank};
  }
  // A checkpoint of (head_seq, head), quoted with the TPM clock at `at_clock`.
  uint64_t checkpoint_of(uint64_t head_seq, const Digest& head, uint64_t at_clock) {
    const ClockInfo c{at_clock, 1, 0, true};
    const Digest q = checkpoint_qualifying_data(head_seq, head);
    auto cp = log->append_checkpoint(head_seq, head, ak.quote(q, pcrs(), c), attestation::encode_pcrs_tpm2tools(pcrs()));
    REQUIRE(cp);
    return *cp;
  }
  // A checkpoint of the current head (or of an altered hash), quoted now.
  uint64_t checkpoint(std::optional<Digest> head_override = std::nullopt, std::optional<uint64_t> at_clock = {}) {
    auto [seq, head] = log->head();
    clock += 1000;
    return checkpoint_of(seq, head_override.value_or(head), at_clock.value_or(clock));
  }
  void decisions(int n, int64_t time_ms = 0) {
    for (int i = 0; i < n; ++i) REQUIRE(log->append(decision(i, time_ms ? time_ms + i : 0)));
  }
  void close() {
    REQUIRE(log->wait_durable(log->last_seq()));
    log.reset();
  }

  AgentCertification certification(const std::string& name) const {
    AgentCertification c;
    c.name = name;
    c.measurement = sha256(name);
    c.key_public_area = ecc_public_area(new_key().public_key());
    c.certification = ak.certify(c.key_public_area, attestation::agent_qualifying_data(name, c.measurement));
    return c;
  }

  EvidencePackage package() {
    if (log) close();
    EvidencePackage p;
    p.node_identity_json = identity;
    p.board = "sim";
    p.exported_at = "2026-01-02T00:00:00Z";
    p.agent_certifications.push_back(certification("writer"));
    p.runtime_log = runtime_text(runtime);
    auto sel = select_audit_records(log_dir(), 0, 0);
    REQUIRE(sel);
    p.records = std::move(sel->frames);
    return p;
  }
};

// 10 decisions, a checkpoint, 10 more, another: records 1..22, anchored through 21.
EvidencePackage anchored_package(SoftNode& n) {
  n.decisions(10);
  n.checkpoint();
  n.decisions(10);
  n.checkpoint();
  return n.package();
}

std::string all_of(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// The frame of record `seq` in a run of whole frames (links need not hold): (offset, payload length).
std::pair<size_t, size_t> frame_of(const Bytes& frames, uint64_t seq) {
  for (size_t pos = 0; pos + 8 <= frames.size();) {
    const size_t len = frames[pos + 4] | frames[pos + 5] << 8 | frames[pos + 6] << 16;
    SegmentParse one = parse_segment(ByteView(frames.data() + pos, 8 + len + 32), "test");
    REQUIRE(one.records.size() == 1);
    if (one.records[0].seq == seq) return {pos, len};
    pos += 8 + len + 32;
  }
  FAIL("no record " << seq);
  return {};
}

// Changes `from` to `to` (same length) in record seq's payload and fixes the frame's hash:
// only the chain link to the next record can tell.
void edit_record(Bytes& frames, uint64_t seq, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  auto [off, len] = frame_of(frames, seq);
  auto begin = frames.begin() + static_cast<ptrdiff_t>(off + 8);
  auto it = std::search(begin, begin + static_cast<ptrdiff_t>(len), from.begin(), from.end());
  REQUIRE(it != begin + static_cast<ptrdiff_t>(len));
  std::copy(to.begin(), to.end(), it);
  const Digest h = sha256(ByteView(frames.data() + off + 8, len));
  std::copy(h.begin(), h.end(), frames.begin() + static_cast<ptrdiff_t>(off + 8 + len));
}

void drop_record(Bytes& frames, uint64_t seq) {
  auto [off, len] = frame_of(frames, seq);
  frames.erase(frames.begin() + static_cast<ptrdiff_t>(off), frames.begin() + static_cast<ptrdiff_t>(off + 8 + len + 32));
}

}  // namespace

TEST_CASE("an evidence package round-trips through encode and parse", "[evidence]") {
  EvidencePackage p;
  p.node_identity_json = "{\"node_id\":\"n\"}";
  p.board = "raspberrypi";
  p.exported_at = "2026-01-02T03:04:05Z";
  p.since_ms = 1000;
  p.until_ms = 2000;
  AgentCertification c;
  c.name = "writer";
  c.measurement = sha256(std::string_view("writer"));
  c.key_public_area = {1, 2, 3};
  c.certification = {{4, 5}, {6}};
  p.agent_certifications = {c, c};
  p.agent_certifications[1].name = "reader";
  p.runtime_log = {'{', '}', '\n'};
  p.boot_event_log = Bytes(100, 7);
  p.nv_counters = {{0x01800100, "bundle-rollback", 42, "state-dir"}};
  p.bundles = {{7, std::string(64, 'a'), "2026-01-01T00:00:00Z"}, {6, std::string(64, 'b'), ""}};
  p.records = Bytes(1000, 9);

  const Bytes bytes = encode_evidence_package(p);
  REQUIRE(std::string(bytes.begin() + 4, bytes.begin() + 8) == "OPEV");
  auto back = parse_evidence_package(bytes);
  REQUIRE(back);
  CHECK(back->format == 1);
  CHECK(back->node_identity_json == p.node_identity_json);
  CHECK(back->board == p.board);
  CHECK(back->exported_at == p.exported_at);
  CHECK(back->since_ms == 1000);
  CHECK(back->until_ms == 2000);
  REQUIRE(back->agent_certifications.size() == 2);
  CHECK(back->agent_certifications[1].name == "reader");
  CHECK(back->agent_certifications[0].measurement == c.measurement);
  CHECK(back->agent_certifications[0].key_public_area == c.key_public_area);
  CHECK(back->agent_certifications[0].certification.attest == c.certification.attest);
  CHECK(back->agent_certifications[0].certification.signature == c.certification.signature);
  CHECK(back->runtime_log == p.runtime_log);
  CHECK(back->boot_event_log == p.boot_event_log);
  REQUIRE(back->nv_counters.size() == 1);
  CHECK(back->nv_counters[0].index == 0x01800100);
  CHECK(back->nv_counters[0].purpose == "bundle-rollback");
  CHECK(back->nv_counters[0].value == 42);
  CHECK(back->nv_counters[0].source == "state-dir");
  REQUIRE(back->bundles.size() == 2);
  CHECK(back->bundles[0].version == 7);
  CHECK(back->bundles[1].installed_at.empty());
  CHECK(back->records == p.records);
  CHECK(encode_evidence_package(*back) == bytes);
}

TEST_CASE("truncated, damaged or foreign bytes are refused with a clear error", "[evidence]") {
  EvidencePackage p;
  p.node_identity_json = "{}";
  p.agent_certifications.push_back(AgentCertification{"a", {}, {1}, {{2}, {3}}});
  p.records = Bytes(300, 1);
  const Bytes good = encode_evidence_package(p);

  auto error_of = [](ByteView b) {
    auto r = parse_evidence_package(b);
    REQUIRE_FALSE(r);
    return r.error();
  };
  // Cut anywhere: refused, or (when only trailing alignment padding went) nothing lost.
  for (size_t n = 0; n < good.size(); ++n) {
    auto r = parse_evidence_package(ByteView(good.data(), n));
    INFO("truncated to " << n << " of " << good.size() << " bytes");
    if (r) {
      CHECK(encode_evidence_package(*r) == good);
    } else {
      CHECK(r.error().is(make_error_code(errc::corrupt)));
    }
  }
  CHECK_THAT(error_of(ByteView(good.data(), 100)).message(), Catch::Contains("FlatBuffers verifier"));
  CHECK_THAT(error_of(as_bytes(std::string_view("not a package at all"))).message(),
             Catch::Contains("no \"OPEV\" file identifier"));
  CHECK_THAT(error_of({}).message(), Catch::Contains("not an evidence package"));

  // An offset pointing outside the buffer.
  Bytes bad = good;
  bad[0] = 0xff;
  bad[1] = 0xff;
  CHECK(error_of(bad).is(make_error_code(errc::corrupt)));

  // A newer format is not guessed at.
  p.format = 2;
  const Error newer = error_of(encode_evidence_package(p));
  CHECK(newer.is(make_error_code(errc::unsupported)));
  CHECK_THAT(newer.message(), Catch::Contains("format 2"));

  // A measurement that is not a SHA-256.
  flatbuffers::FlatBufferBuilder fbb;
  const uint8_t three[3] = {1, 2, 3};
  auto cert = fb::evidence::CreateAgentCertification(fbb, fbb.CreateString("a"), fbb.CreateVector(three, 3));
  auto certs = fbb.CreateVector(&cert, 1);
  fb::evidence::PackageBuilder pb(fbb);
  pb.add_format(1);
  pb.add_agent_certifications(certs);
  fb::evidence::FinishPackageBuffer(fbb, pb.Finish());
  const Error short_measurement = error_of(ByteView(fbb.GetBufferPointer(), fbb.GetSize()));
  CHECK(short_measurement.is(make_error_code(errc::corrupt)));
  CHECK_THAT(short_measurement.message(), Catch::Contains("agent \"a\" lacks a 32-byte measurement"));
}

TEST_CASE("a package of a real audit log verifies with the AK that quoted its checkpoints", "[evidence]") {
  SoftNode n;
  const EvidencePackage p = anchored_package(n);
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  INFO(all_of(rep.problems) << all_of(rep.warnings));
  CHECK(rep.ok());
  CHECK(rep.warnings.empty());
  CHECK(rep.node_id == attestation::NodeIdentity::from_json(n.identity)->node_id);
  CHECK(rep.records == 22);
  CHECK(rep.first_seq == 1);
  CHECK(rep.last_seq == 22);
  CHECK(rep.checkpoints == 2);
  CHECK(rep.checkpoints_verified == 2);
  CHECK(rep.anchored_through == 21);
  CHECK(rep.certifications_verified == 1);
  CHECK(rep.runtime_entries == 4);
  const std::string json = rep.to_json();
  CHECK_THAT(json, Catch::Contains("\"ok\":true") && Catch::Contains("\"anchored_through\":21"));

  // Through the file format too.
  auto parsed = parse_evidence_package(encode_evidence_package(p));
  REQUIRE(parsed);
  CHECK(verify_evidence_package(*parsed, {n.ak.pub()}).ok());
}

TEST_CASE("an edited record is named, though its frame hash was fixed", "[evidence]") {
  SoftNode n;
  EvidencePackage p = anchored_package(n);
  edit_record(p.records, 5, "\"allow\":true", "\"allow\":fals");
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  REQUIRE_FALSE(rep.ok());
  CHECK_THAT(rep.problems[0], Catch::Contains("record 6 does not link to record 5"));
  CHECK(rep.records == 22);  // the rest is still checked
  CHECK(rep.checkpoints_verified == 2);
}

TEST_CASE("a record dropped from the middle is a gap", "[evidence]") {
  SoftNode n;
  EvidencePackage p = anchored_package(n);
  drop_record(p.records, 7);
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  REQUIRE_FALSE(rep.ok());
  CHECK_THAT(all_of(rep.problems), Catch::Contains("record 8 follows record 6: record 7 is missing"));

  drop_record(p.records, 9);
  drop_record(p.records, 10);
  const EvidenceReport two = verify_evidence_package(p, {n.ak.pub()});
  CHECK_THAT(all_of(two.problems), Catch::Contains("record 11 follows record 8: records 9..10 are missing"));
}

TEST_CASE("another AK, in the trust or in node.json, is refused everywhere it signs", "[evidence]") {
  SoftNode n;
  EvidencePackage p = anchored_package(n);
  SoftAk other;

  SECTION("the responder trusts another key") {
    const EvidenceReport rep = verify_evidence_package(p, {other.pub()});
    const std::string problems = all_of(rep.problems);
    CHECK_THAT(problems, Catch::Contains("the node identity names AK " + n.ak.pub().thumbprint()));
    CHECK_THAT(problems, Catch::Contains("checkpoint 11: quote rejected"));
    CHECK_THAT(problems, Catch::Contains("checkpoint 22: quote rejected"));
    CHECK_THAT(problems, Catch::Contains("agent \"writer\": certification rejected"));
    CHECK(rep.checkpoints_verified == 0);
    CHECK(rep.anchored_through == 0);
    CHECK_THAT(all_of(rep.warnings), Catch::Contains("records 1..22 are not anchored by a checkpoint"));
  }
  SECTION("node.json swapped for one naming the attacker's key") {
    p.node_identity_json = identity_json(other.pub());
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    REQUIRE(rep.problems.size() == 1);
    CHECK_THAT(rep.problems[0], Catch::Contains("but the trusted AK is " + n.ak.pub().thumbprint()));
  }
}

TEST_CASE("records after the last checkpoint are reported as not anchored", "[evidence]") {
  SoftNode n;
  n.decisions(5);
  n.checkpoint();
  n.decisions(3);
  const EvidenceReport rep = verify_evidence_package(n.package(), {n.ak.pub()});
  INFO(all_of(rep.problems));
  CHECK(rep.ok());
  CHECK(rep.anchored_through == 5);
  REQUIRE(rep.warnings.size() == 1);
  CHECK(rep.warnings[0] == "records 6..9 are not anchored by a checkpoint");
}

TEST_CASE("a checkpoint whose head does not match, a replayed quote, a clock gone back", "[evidence]") {
  SoftNode n;
  n.decisions(5);
  n.checkpoint();
  n.decisions(5);
  SECTION("a head with another hash") {
    Digest wrong{};
    wrong[0] = 1;
    n.checkpoint(wrong);
    const EvidenceReport rep = verify_evidence_package(n.package(), {n.ak.pub()});
    REQUIRE(rep.problems.size() == 1);
    CHECK_THAT(rep.problems[0], Catch::Contains("checkpoint 12 names head 11 with a hash that is not that record's"));
    CHECK(rep.anchored_through == 5);
  }
  SECTION("an older checkpoint's quote carried by a new checkpoint") {
    n.close();
    SegmentParse segs = parse_segment(*read_file(n.log_dir() / "seg-00000000000000000001.oal"), "s");
    REQUIRE(segs.records.size() >= 6);
    const AuditRecord old = segs.records[5];
    REQUIRE(old.kind == RecordKind::checkpoint);
    auto l = AuditLog::open(n.log_dir(), AuditLogOptions{});
    REQUIRE(l);
    auto [seq, head] = (*l)->head();
    REQUIRE((*l)->append_checkpoint(seq, head, old.quote, old.quote_pcrs));
    n.log = std::move(*l);
    const EvidenceReport rep = verify_evidence_package(n.package(), {n.ak.pub()});
    REQUIRE(rep.problems.size() == 1);
    CHECK_THAT(rep.problems[0], Catch::Contains("checkpoint 12: quote rejected: nonce mismatch"));
  }
  SECTION("a quote whose TPM clock is behind the previous one") {
    n.checkpoint(std::nullopt, 50);
    const EvidenceReport rep = verify_evidence_package(n.package(), {n.ak.pub()});
    REQUIRE(rep.problems.size() == 1);
    CHECK_THAT(rep.problems[0], Catch::Contains("checkpoint 12: TPM clock went backwards"));
  }
}

TEST_CASE("the runtime log is checked against the quoted PCR of its TPM boot", "[evidence]") {
  SoftNode n;
  n.runtime_seen = 2;
  n.decisions(3);
  n.checkpoint();  // quotes the first 2 entries
  n.runtime_seen = 3;
  n.decisions(3);
  n.checkpoint();  // quotes the first 3
  EvidencePackage p = n.package();

  SECTION("entries measured after the last checkpoint are not vouched for yet") {
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    INFO(all_of(rep.problems));
    CHECK(rep.ok());
    CHECK(rep.runtime_entries == 4);
    CHECK_THAT(all_of(rep.warnings), Catch::Contains("runtime log entries 4..4 were measured after checkpoint 8"));
  }
  SECTION("an entry changed on disk") {
    p.runtime_log = runtime_text(runtime_log(4, "-evil"));
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    CHECK_THAT(all_of(rep.problems), Catch::Contains("runtime log: checkpoint 4 quotes sha256 PCR 23 as") &&
                                         Catch::Contains("which no prefix of the log replays to"));
  }
  SECTION("a log that does not parse") {
    p.runtime_log = {'{', '\n'};
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    CHECK_THAT(all_of(rep.problems), Catch::StartsWith("runtime log line 1: not JSON"));
  }
  SECTION("a log of another TPM boot is listed, not checked") {
    fh::RuntimeLog other = runtime_log(4);
    other.header.reset_count = 2;
    p.runtime_log = runtime_text(other);
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    CHECK(rep.ok());
    CHECK_THAT(all_of(rep.warnings), Catch::Contains("no verified checkpoint was quoted in the runtime log's TPM boot"));
  }
}

TEST_CASE("the boot event log replays to the PCRs the last checkpoint quoted", "[evidence]") {
  const Bytes boot = *read_file(fs::path(OUTPOST_EVENTLOG_SAMPLES) / "event-arch-linux.bin");
  auto log = fh::parse_event_log(boot);
  REQUIRE(log);
  auto replayed = fh::replay(*log);
  REQUIRE(replayed);
  SoftNode n;
  for (uint32_t pcr = 0; pcr < 8; ++pcr) n.boot_pcrs[pcr] = replayed->at(attestation::hash_alg::sha256).pcrs[pcr].value;
  n.decisions(2);
  n.checkpoint();
  EvidencePackage p = n.package();
  p.boot_event_log = boot;
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  INFO(all_of(rep.problems));
  CHECK(rep.ok());

  // An event changed: its digest no longer replays to the quoted PCR.
  const fh::Event* last = nullptr;
  for (const auto& ev : log->events) {
    if (ev.pcr < 8 && ev.type != fh::event_type::no_action && ev.digest(attestation::hash_alg::sha256)) last = &ev;
  }
  REQUIRE(last != nullptr);
  const fh::Event& e = *last;
  const Bytes* d = e.digest(attestation::hash_alg::sha256);
  REQUIRE(d);
  auto at = std::search(p.boot_event_log.begin() + static_cast<ptrdiff_t>(e.offset), p.boot_event_log.end(), d->begin(), d->end());
  REQUIRE(at != p.boot_event_log.end());
  *at ^= 1;
  const EvidenceReport bad = verify_evidence_package(p, {n.ak.pub()});
  CHECK_THAT(all_of(bad.problems), Catch::Contains("boot event log: sha256 PCR " + std::to_string(e.pcr)) &&
                                       Catch::Contains("first divergent event"));
}

TEST_CASE("agent certifications bind name and measurement to a key the AK certified", "[evidence]") {
  SoftNode n;
  EvidencePackage p = anchored_package(n);
  SECTION("another measurement") {
    p.agent_certifications[0].measurement[0] ^= 1;
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    CHECK_THAT(all_of(rep.problems), Catch::Contains("agent \"writer\": certification rejected") &&
                                         Catch::Contains("qualifying data mismatch"));
  }
  SECTION("another key") {
    p.agent_certifications[0].key_public_area = ecc_public_area(new_key().public_key());
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    CHECK_THAT(all_of(rep.problems), Catch::Contains("certified name mismatch"));
  }
  SECTION("an agent whose files did not read") {
    p.agent_certifications.push_back(AgentCertification{"broken", {}, {}, {}});
    const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
    CHECK_THAT(all_of(rep.problems), Catch::Contains("agent \"broken\": no certification"));
    CHECK(rep.certifications_verified == 1);
  }
}

TEST_CASE("export selects by time and extends the selection to its anchoring checkpoints", "[evidence]") {
  SoftNode n;
  n.decisions(10, 1000);  // records 1..10 at 1000..1009
  auto [head_seq, head] = n.log->head();
  n.decisions(2, 2000);   // 11, 12 appended while the TPM quotes head 10
  const Digest q = checkpoint_qualifying_data(head_seq, head);
  REQUIRE(n.log->append_checkpoint(head_seq, head, n.ak.quote(q, n.pcrs(), {20000, 1, 0, true}),
                                   attestation::encode_pcrs_tpm2tools(n.pcrs())));  // 13, head 10
  n.decisions(2, 3000);   // 14, 15
  n.clock = 30000;
  n.checkpoint();         // 16, head 15
  n.decisions(2, 4000);   // 17, 18
  n.close();

  auto sel = select_audit_records(n.log_dir(), 2000, 2001);
  REQUIRE(sel);
  CHECK(sel->selected_first_seq == 11);
  CHECK(sel->selected_last_seq == 12);
  REQUIRE(sel->anchor_checkpoint);
  CHECK(*sel->anchor_checkpoint == 16);  // 13's head (10) is before 12
  CHECK(sel->first_seq == 10);           // back to the head checkpoint 13 names
  CHECK(sel->last_seq == 16);
  CHECK(sel->records == 7);
  CHECK(sel->notes.empty());

  EvidencePackage p = n.package();
  p.records = sel->frames;
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  INFO(all_of(rep.problems) << all_of(rep.warnings));
  CHECK(rep.ok());
  CHECK(rep.warnings.empty());
  CHECK(rep.anchored_through == 15);

  // Without the records back to its head, checkpoint 13 cannot be checked: said, not failed.
  drop_record(p.records, 10);
  const EvidenceReport cut = verify_evidence_package(p, {n.ak.pub()});
  CHECK(cut.ok());
  CHECK_THAT(all_of(cut.warnings), Catch::Contains("checkpoint 13 names head 10, before the first record in the package"));

  // After the last checkpoint there is nothing to extend through.
  auto tail = select_audit_records(n.log_dir(), 4000, 4001);
  REQUIRE(tail);
  CHECK(tail->first_seq == 17);
  CHECK(tail->last_seq == 18);
  CHECK_FALSE(tail->anchor_checkpoint);
  CHECK_THAT(all_of(tail->notes), Catch::Contains("no checkpoint covers record 18 yet"));

  auto none = select_audit_records(n.log_dir(), 1, 500);
  REQUIRE(none);
  CHECK(none->records == 0);
  CHECK(none->frames.empty());
}

TEST_CASE("export leaves damaged frames out and verify names the records they held", "[evidence]") {
  SoftNode n;
  n.decisions(40);
  n.checkpoint();
  n.close();
  // A changed byte in record 3's frame (its hash no longer matches).
  const fs::path seg = n.log_dir() / "seg-00000000000000000001.oal";
  Bytes bytes = *read_file(seg);
  auto [off, len] = frame_of(bytes, 3);
  bytes[off + 8 + len / 2] ^= 0x20;
  REQUIRE(write_file_atomic(seg, bytes));
  CHECK_FALSE(verify_audit_log(n.log_dir(), n.ak.pub()).ok());

  auto sel = select_audit_records(n.log_dir(), 0, 0);
  REQUIRE(sel);
  INFO(all_of(sel->notes));
  REQUIRE(sel->notes.size() == 1);
  CHECK_THAT(sel->notes[0], Catch::Contains("seg-00000000000000000001.oal at offset " + std::to_string(off)) &&
                                Catch::Contains("left out"));
  CHECK(sel->last_seq == 41);  // everything after the damage is still exported
  EvidencePackage p = n.package();
  p.records = sel->frames;
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  CHECK_THAT(all_of(rep.problems), Catch::Contains("record 4 follows record 2: record 3 is missing"));
}

TEST_CASE("a stray byte is named and the frames after it, now at odd addresses, still check", "[evidence]") {
  SoftNode n;
  EvidencePackage p = anchored_package(n);
  p.records.insert(p.records.begin(), 0x5a);
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  REQUIRE(rep.problems.size() == 1);
  CHECK_THAT(rep.problems[0], Catch::Contains("records: bytes 0..1 of the package are not a whole audit frame (no frame magic)"));
  CHECK(rep.records == 22);
  CHECK(rep.checkpoints_verified == 2);
}

TEST_CASE("fake frame headers cannot make the scan quadratic: past a bound the rest is not examined", "[evidence]") {
  SoftNode n;
  n.decisions(1);
  EvidencePackage p = n.package();
  const Bytes frame = p.records;
  // Each whole frame is followed by a header that claims 1 MiB: hashing every claim would cost
  // thousands of MiB.
  const Bytes fake = {'O', 'P', 'A', 'R', 0x00, 0x00, 0x10, 0x00};
  p.records.clear();
  while (p.records.size() < (3u << 20)) {
    p.records.insert(p.records.end(), frame.begin(), frame.end());
    p.records.insert(p.records.end(), fake.begin(), fake.end());
  }
  const EvidenceReport rep = verify_evidence_package(p, {n.ak.pub()});
  REQUIRE_FALSE(rep.ok());
  CHECK_THAT(all_of(rep.problems), Catch::Contains("the rest was not examined"));
  CHECK(rep.problems.size() < 100);
}

TEST_CASE("the chain verifier goes on from a saved state, and an error changes nothing", "[evidence][audit]") {
  SoftNode n;
  n.decisions(6);
  auto [six, six_hash] = n.log->head();
  n.decisions(2);                           // 7, 8 arrive while the TPM quotes head 6
  n.checkpoint_of(six, six_hash, 5000);     // 9
  n.decisions(1);                           // 10
  n.checkpoint();                           // 11, head 10
  n.close();
  std::vector<AuditRecord> recs;
  REQUIRE(read_audit_log(n.log_dir(), 0, [&](const AuditRecord& r) {
    recs.push_back(r);
    return true;
  }));
  REQUIRE(recs.size() == 11);

  // Like the hub: records 1..7 in one upload, 8..11 in the next, with the earlier hashes from
  // its store.
  ChainVerifier first(n.ak.pub(), ChainState{});
  for (size_t i = 0; i < 7; ++i) REQUIRE(first.feed(recs[i]));
  CHECK(first.last_anchored_seq() == 0);
  const ChainState saved = first.state();
  CHECK(saved.last_seq == 7);
  CHECK(saved.last_hash == recs[6].hash);

  // Nothing changes on an error: a repeat, a gap.
  auto repeat = first.feed(recs[6]);
  REQUIRE_FALSE(repeat);
  CHECK(repeat.error().is(make_error_code(errc::verification_failed)));
  CHECK_THAT(repeat.error().message(), Catch::Contains("record 7 follows record 7"));
  CHECK_FALSE(first.feed(recs[9]));
  CHECK(first.state().last_seq == 7);
  CHECK(first.records() == 7);

  std::vector<uint64_t> asked;
  ChainVerifier second(n.ak.pub(), saved, [&](uint64_t seq) -> std::optional<Digest> {
    asked.push_back(seq);
    return recs[seq - 1].hash;
  });
  for (size_t i = 7; i < 11; ++i) REQUIRE(second.feed(recs[i]));
  CHECK(second.last_anchored_seq() == 10);
  CHECK(second.checkpoints_verified() == 2);
  CHECK(second.state().last_clock->clock == n.clock);
  CHECK(asked == std::vector<uint64_t>{6});  // checkpoint 9's head was in the first upload

  // A checkpoint's head with another hash in the store: refused, state unchanged.
  ChainVerifier lying(n.ak.pub(), saved, [&](uint64_t) -> std::optional<Digest> { return Digest{}; });
  REQUIRE(lying.feed(recs[7]));
  auto refused = lying.feed(recs[8]);
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error().message(), Catch::Contains("checkpoint 9 names head 6 with a hash that is not that record's"));
  CHECK(lying.state().last_seq == 8);
  CHECK(lying.checkpoints() == 0);

  // A quote by another key, or with a clock gone back: verification_failed, whatever the
  // verifier underneath called it.
  SoftAk other;
  ChainVerifier stranger(other.pub(), saved, [&](uint64_t seq) -> std::optional<Digest> { return recs[seq - 1].hash; });
  REQUIRE(stranger.feed(recs[7]));
  auto foreign = stranger.feed(recs[8]);
  REQUIRE_FALSE(foreign);
  CHECK(foreign.error().is(make_error_code(errc::verification_failed)));
  CHECK_THAT(foreign.error().message(), Catch::Contains("checkpoint 9: quote rejected: signature does not verify"));
  ChainState later = saved;
  later.last_clock = ClockInfo{n.clock + 1, 1, 0, true};
  ChainVerifier behind(n.ak.pub(), later, [&](uint64_t seq) -> std::optional<Digest> { return recs[seq - 1].hash; });
  REQUIRE(behind.feed(recs[7]));
  auto regressed = behind.feed(recs[8]);
  REQUIRE_FALSE(regressed);
  CHECK(regressed.error().is(make_error_code(errc::verification_failed)));
  CHECK_THAT(regressed.error().message(), Catch::Contains("checkpoint 9: TPM clock went backwards"));

  // An anchored chain starts at record 1 with a zero prev_hash.
  ChainVerifier fresh(std::nullopt, ChainState{});
  auto mid = fresh.feed(recs[4]);
  REQUIRE_FALSE(mid);
  CHECK_THAT(mid.error().message(), Catch::Contains("record 5 where record 1 belongs"));
  ChainVerifier picked_up(std::nullopt, ChainState{0, {}, false, std::nullopt});
  CHECK(picked_up.feed(recs[4]));
  // Without an AK a checkpoint whose head matches still anchors.
  ChainVerifier no_ak(std::nullopt, ChainState{});
  for (const auto& r : recs) REQUIRE(no_ak.feed(r));
  CHECK(no_ak.checkpoints() == 2);
  CHECK(no_ak.checkpoints_verified() == 0);
  CHECK(no_ak.last_anchored_seq() == 10);
  CHECK_FALSE(no_ak.state().last_clock);
}

TEST_CASE("collect_node_evidence reads what the state directory holds", "[evidence]") {
  SoftNode n;
  const fs::path state = n.dir / "state";
  REQUIRE(ensure_directory(state / "agents" / "writer"));
  REQUIRE(ensure_directory(state / "agents" / "broken"));
  REQUIRE(ensure_directory(state / "agents" / "not-committed"));
  REQUIRE(ensure_directory(state / "measurements"));
  REQUIRE(ensure_directory(state / "bundles"));
  REQUIRE(write_file_atomic(state / "node.json", n.identity));
  const AgentCertification c = n.certification("writer");
  const Bytes private_area = {0x00, 0x03, 1, 2, 3};
  Bytes blob = c.key_public_area;
  blob.insert(blob.end(), private_area.begin(), private_area.end());
  REQUIRE(write_file_atomic(state / "agents" / "writer" / "key.blob", blob));
  REQUIRE(write_file_atomic(state / "agents" / "writer" / "certify.attest", c.certification.attest));
  REQUIRE(write_file_atomic(state / "agents" / "writer" / "certify.sig", c.certification.signature));
  REQUIRE(write_file_atomic(state / "agents" / "writer" / "agent.json",
                            "{\"name\":\"writer\",\"measurement\":\"" + hex_encode(c.measurement) + "\"}"));
  REQUIRE(write_file_atomic(state / "agents" / "broken" / "agent.json", "{}"));
  REQUIRE(write_file_atomic(state / "measurements" / "runtime.log", runtime_text(n.runtime)));
  REQUIRE(write_file_atomic(state / "bundles" / "state.json",
                            R"({"state":{"version":7,"bundle_sha256":")" + std::string(64, 'a') +
                                R"(","previous_sha256":"","counter":9,"installed_at":1767225600}})"));

  auto p = collect_node_evidence(state, {});
  REQUIRE(p);
  CHECK(p->board == "sim");
  CHECK(p->node_identity_json == n.identity);
  REQUIRE(p->agent_certifications.size() == 2);
  CHECK(p->agent_certifications[0].name == "broken");
  CHECK(p->agent_certifications[0].certification.attest.empty());
  CHECK(p->agent_certifications[1].name == "writer");
  CHECK(p->agent_certifications[1].key_public_area == c.key_public_area);
  CHECK(p->runtime_log == runtime_text(n.runtime));
  CHECK(p->boot_event_log.empty());
  REQUIRE(p->nv_counters.size() == 1);
  CHECK(p->nv_counters[0].value == 9);
  CHECK(p->nv_counters[0].source == "state-dir");
  REQUIRE(p->bundles.size() == 1);
  CHECK(p->bundles[0].version == 7);
  CHECK(p->bundles[0].installed_at == "2026-01-01T00:00:00Z");

  n.decisions(3);
  n.checkpoint();
  n.close();
  auto sel = select_audit_records(n.log_dir(), 0, 0);
  REQUIRE(sel);
  p->records = sel->frames;
  const EvidenceReport rep = verify_evidence_package(*p, {n.ak.pub()});
  REQUIRE(rep.problems.size() == 1);
  CHECK_THAT(rep.problems[0], Catch::Contains("agent \"broken\": no certification"));
  CHECK(rep.certifications_verified == 1);

  auto missing = collect_node_evidence(n.dir / "nowhere", {});
  REQUIRE_FALSE(missing);
  CHECK_THAT(missing.error().message(), Catch::Contains("is " + (n.dir / "nowhere").string() + " the state directory?"));
  auto no_boot_log = collect_node_evidence(state, n.dir / "no-such-event-log");
  REQUIRE_FALSE(no_boot_log);
  CHECK_THAT(no_boot_log.error().message(), Catch::Contains("the boot event log"));
}

}  // namespace outpost::offline_cache
