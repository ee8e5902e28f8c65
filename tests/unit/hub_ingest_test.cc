// The hub's judgement of an upload (hub/ingest.h) on real audit logs whose checkpoints a
// software AK quotes (soft_tpm.h): what is stored, what is a duplicate, and the difference
// between a fork the node's TPM vouched for and bytes anyone could have made up. The same
// paths against the real outpost-hub and swtpm are in tests/integration/hub_test.cc.
#include <catch2/catch.hpp>
#include <map>

#include "outpost/attestation/quote_files.h"

#include "outpost/base/errors.h"
#include "outpost/hub/ingest.h"
#include "outpost/offline_cache/audit_frames.h"
#include "outpost/offline_cache/audit_log.h"
#include "soft_tpm.h"
#include "test_support.h"

namespace outpost::hub {
namespace {

using offline_cache::AuditEntry;
using offline_cache::AuditLog;
using offline_cache::RecordKind;

// An audit log in a temporary directory whose checkpoints `ak` quotes.
struct SoftLog {
  testing::TempDir dir;
  std::unique_ptr<AuditLog> log;
  uint64_t clock = 5000;

  SoftLog() {
    offline_cache::AuditLogOptions o;
    o.segment_bytes = 1 << 16;
    o.max_bytes = 1 << 22;
    auto l = AuditLog::open(dir / "log", o);
    REQUIRE(l);
    log = std::move(*l);
  }
  // Decisions with fixed times, so two logs given the same ones hold the same records.
  void decisions(int from, int n) {
    for (int i = from; i < from + n; ++i) {
      AuditEntry e;
      e.kind = RecordKind::decision;
      e.event = "decision";
      e.agent = "writer";
      e.detail = R"({"tool":"fs/read_file","allow":true,"n":)" + std::to_string(i) + "}";
      e.time_ms = 1'700'000'000'000 + i;
      REQUIRE(log->append_durable(std::move(e)));
    }
  }
  void checkpoint(const testing::SoftAk& ak) {
    auto [seq, head] = log->head();
    clock += 1000;
    attestation::PcrBank bank;
    bank.values[23] = Bytes(32, 0);
    const attestation::PcrValues pcrs{bank};
    auto q = ak.quote(offline_cache::checkpoint_qualifying_data(seq, head), pcrs, {clock, 1, 0, true});
    auto cp = log->append_checkpoint(seq, head, q, attestation::encode_pcrs_tpm2tools(pcrs));
    REQUIRE(cp);
    REQUIRE(log->wait_durable(*cp));
  }
  Bytes frames(uint64_t from = 1) const {
    Bytes out;
    REQUIRE(offline_cache::read_audit_frames(dir / "log", from, log->durable_seq(), [&](const offline_cache::AuditFrame& f) {
      out.insert(out.end(), f.frame.begin(), f.frame.end());
      return true;
    }));
    return out;
  }
};

// A hub's view of one node: the rows it stored, in memory.
struct HeldNode {
  NodeRow row;
  std::map<uint64_t, Digest> hashes;

  UploadPlan upload(const Bytes& body, const EcPublicKey& ak) {
    UploadPlan p = plan_upload(body, row, ak, [&](uint64_t seq) -> std::optional<Digest> {
      auto it = hashes.find(seq);
      return it == hashes.end() ? std::nullopt : std::optional<Digest>(it->second);
    });
    if (p.verdict == UploadPlan::Verdict::store && !p.rows.empty()) {
      for (const auto& r : p.rows) hashes[r.seq] = r.hash;
      row.acked_seq = p.rows.back().seq;
      row.acked_hash = p.rows.back().hash;
      row.last_clock = p.clock;
    }
    return p;
  }
};

TEST_CASE("records are stored through the last checkpoint; a replay is all duplicates", "[hub-ingest]") {
  testing::SoftAk ak;
  SoftLog node;
  node.decisions(0, 5);
  node.checkpoint(ak);  // seq 6
  node.decisions(5, 3); // 7..9, not anchored yet
  HeldNode hub;
  UploadPlan first = hub.upload(node.frames(), ak.pub());
  REQUIRE(first.verdict == UploadPlan::Verdict::store);
  CHECK(first.rows.size() == 6);
  CHECK(first.pending == 3);
  CHECK(hub.row.acked_seq == 6);

  UploadPlan replay = hub.upload(node.frames(), ak.pub());
  REQUIRE(replay.verdict == UploadPlan::Verdict::store);
  CHECK(replay.rows.empty());
  CHECK(replay.duplicates == 6);
  CHECK(replay.pending == 3);

  testing::SoftAk other;
  HeldNode foreign;
  UploadPlan refused = foreign.upload(node.frames(), other.pub());
  CHECK(refused.verdict == UploadPlan::Verdict::refused);
  CHECK(refused.rows.empty());
}

TEST_CASE("a second history quoted by the node's AK is a fork; a rewritten record without a quote is refused",
          "[hub-ingest]") {
  testing::SoftAk ak;
  SoftLog a, b;  // the same first three records, then each its own checkpoint at seq 4
  a.decisions(0, 3);
  b.decisions(0, 3);
  a.checkpoint(ak);
  b.checkpoint(ak);
  HeldNode hub;
  UploadPlan held = hub.upload(a.frames(), ak.pub());
  INFO(held.reason);
  REQUIRE(held.rows.size() == 4);

  SECTION("the node's TPM signed both: a fork") {
    UploadPlan p = hub.upload(b.frames(), ak.pub());
    CHECK(p.verdict == UploadPlan::Verdict::fork);
    CHECK_THAT(p.reason, Catch::Contains("fork at seq 4"));
    CHECK(p.rows.empty());
  }
  SECTION("the same second history quoted by another key: not the node's fork") {
    testing::SoftAk other;
    SoftLog c;
    c.decisions(0, 3);
    c.checkpoint(other);
    UploadPlan p = hub.upload(c.frames(), ak.pub());
    CHECK(p.verdict == UploadPlan::Verdict::refused);
    CHECK_THAT(p.reason, Catch::Contains("record 4 differs"));
  }
  SECTION("a record rewritten with its frame hash fixed, no quote behind it: refused, not a fork") {
    SoftLog d;
    d.decisions(0, 1);
    d.decisions(7, 1);  // seq 2 differs from a's
    UploadPlan p = hub.upload(d.frames(), ak.pub());
    CHECK(p.verdict == UploadPlan::Verdict::refused);
    CHECK_THAT(p.reason, Catch::Contains("record 2 differs"));
    CHECK(hub.row.acked_seq == 4);
  }
}

TEST_CASE("an upload that skips records or is cut mid-frame is refused and stores nothing", "[hub-ingest]") {
  testing::SoftAk ak;
  SoftLog node;
  node.decisions(0, 4);
  node.checkpoint(ak);
  HeldNode hub;
  UploadPlan gap = hub.upload(node.frames(3), ak.pub());
  CHECK(gap.verdict == UploadPlan::Verdict::refused);
  CHECK(hub.row.acked_seq == 0);

  Bytes cut = node.frames();
  cut.resize(cut.size() - 10);
  UploadPlan torn = hub.upload(cut, ak.pub());
  CHECK(torn.verdict == UploadPlan::Verdict::refused);
  CHECK(hub.row.acked_seq == 0);
}

}  // namespace
}  // namespace outpost::hub

TEST_CASE("search columns are UTF-8 PostgreSQL takes: ill-formed bytes and NUL replaced, cut on a character", "[hub-ingest]") {
  const std::string fffd = "\xef\xbf\xbd";
  CHECK(outpost::hub::search_text("read_file", 64) == "read_file");
  CHECK(outpost::hub::search_text(std::string("a\0b", 3), 64) == "a" + fffd + "b");
  CHECK(outpost::hub::search_text("\xff\xfe", 64) == fffd + fffd);
  CHECK(outpost::hub::search_text("\xc0\xaf", 64) == fffd + fffd);              // an overlong '/'
  CHECK(outpost::hub::search_text("\xed\xa0\x80", 64) == fffd + fffd + fffd);  // a surrogate
  CHECK(outpost::hub::search_text("\xe2\x82", 64) == fffd + fffd);             // cut short
  // 100 "é" (2 bytes each) cut to 199 bytes: 99 whole characters, never half of one.
  std::string e;
  for (int i = 0; i < 100; ++i) e += "\xc3\xa9";
  const std::string cut = outpost::hub::search_text(e, 199);
  CHECK(cut.size() == 198);
  CHECK(cut == e.substr(0, 198));

  // From a decision's detail: the subject, verdict and reason; an egress decision's host.
  outpost::offline_cache::AuditRecord r;
  r.kind = outpost::offline_cache::RecordKind::decision;
  r.event = "decision";
  r.agent = "reporter";
  r.detail = R"({"server":"fs","tool":"write\u0000file","allow":false,"reason":"no"})";
  outpost::hub::RecordRow row;
  outpost::hub::fill_search_columns(r, row);
  CHECK(row.subject == "fs/write" + fffd + "file");
  CHECK(row.verdict == "deny");
  CHECK(row.reason == "no");
  r.event = "egress";
  r.detail = R"({"host":"api.example.org","allow":true})";
  outpost::hub::RecordRow egress;
  outpost::hub::fill_search_columns(r, egress);
  CHECK(egress.subject == "api.example.org");
  CHECK(egress.verdict == "allow");
  r.detail = "not json";
  outpost::hub::RecordRow unreadable;
  outpost::hub::fill_search_columns(r, unreadable);
  CHECK(unreadable.verdict.empty());  // the console shows it apart, never as allowed
}
