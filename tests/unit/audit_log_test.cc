// The audit log without a TPM: framing, chaining, recovery of a torn tail, corruption reported
// with file and offset, the disk budget, releasing acknowledged segments. Crashes, a full disk
// and TPM checkpoints are in tests/integration/audit_fault_test.cc.
#include <catch2/catch.hpp>
#include <atomic>
#include <fstream>
#include <thread>

#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/offline_cache/audit_log.h"
#include "test_support.h"

namespace outpost::offline_cache {
namespace {

namespace fs = std::filesystem;

AuditEntry decision(int i) {
  AuditEntry e;
  e.kind = RecordKind::decision;
  e.event = "decision";
  e.agent = "writer";
  e.bundle_version = 3;
  e.detail = R"({"tool":"fs/read_file","allow":true,"n":)" + std::to_string(i) + "}";
  return e;
}

AuditLogOptions small() {
  AuditLogOptions o;
  o.segment_bytes = 4096;
  o.max_bytes = 1 << 20;
  return o;
}

std::vector<AuditRecord> all(const fs::path& dir) {
  std::vector<AuditRecord> out;
  auto r = read_audit_log(dir, 0, [&](const AuditRecord& rec) {
    out.push_back(rec);
    return true;
  });
  INFO((r ? "" : r.error().message()));
  REQUIRE(r);
  return out;
}

std::vector<fs::path> segments(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

void append_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::app);
  f << bytes;
}

}  // namespace

TEST_CASE("records are chained, durable, and survive a reopen across segments", "[audit]") {
  testing::TempDir dir;
  {
    auto log = AuditLog::open(dir.path(), small());
    REQUIRE(log);
    // Several writers at once: the chain is still one line.
    std::vector<std::thread> writers;
    for (int t = 0; t < 4; ++t) {
      writers.emplace_back([&, t] {
        for (int i = 0; i < 50; ++i) REQUIRE((*log)->append_durable(decision(t * 100 + i)));
      });
    }
    for (auto& w : writers) w.join();
    CHECK((*log)->durable_seq() == 200);
  }
  CHECK(segments(dir.path()).size() > 3);  // 4 KiB segments
  auto records = all(dir.path());
  REQUIRE(records.size() == 200);
  for (size_t i = 0; i < records.size(); ++i) {
    CHECK(records[i].seq == i + 1);
    if (i) CHECK(records[i].prev_hash == records[i - 1].hash);
  }
  CHECK(records[0].prev_hash == Digest{});
  CHECK(records[0].agent == "writer");
  CHECK(records[0].kind == RecordKind::decision);

  auto log = AuditLog::open(dir.path(), small());
  REQUIRE(log);
  CHECK((*log)->recovery().records == 200);
  CHECK_FALSE((*log)->recovery().cut_torn_tail);
  auto seq = (*log)->append_durable(decision(999));
  REQUIRE(seq);
  CHECK(*seq == 201);
  log->reset();
  auto again = all(dir.path());
  REQUIRE(again.size() == 201);
  CHECK(again[200].prev_hash == again[199].hash);
  CHECK(verify_audit_log(dir.path(), std::nullopt).ok());
}

TEST_CASE("a torn tail is cut on open; damage in the middle is reported with file and offset", "[audit]") {
  testing::TempDir dir;
  {
    auto log = AuditLog::open(dir.path(), small());
    REQUIRE(log);
    for (int i = 0; i < 10; ++i) REQUIRE((*log)->append_durable(decision(i)));
  }
  const fs::path seg = segments(dir.path()).back();
  const auto size = fs::file_size(seg);

  SECTION("half a frame at the end: cut, and the log goes on") {
    append_bytes(seg, std::string("OPAR\x40\x00\x00\x00partial", 15));
    auto v = verify_audit_log(dir.path(), std::nullopt);
    CHECK(v.ok());
    CHECK(v.torn_tail);
    auto log = AuditLog::open(dir.path(), small());
    REQUIRE(log);
    CHECK((*log)->recovery().cut_torn_tail);
    CHECK_THAT((*log)->recovery().cut_detail, Catch::Contains("15 bytes cut"));
    CHECK(fs::file_size(seg) == size);
    REQUIRE((*log)->append_durable(decision(10)));
  }
  SECTION("zeros after a crash (the filesystem extended the file): cut") {
    append_bytes(seg, std::string(300, '\0'));
    auto log = AuditLog::open(dir.path(), small());
    REQUIRE(log);
    CHECK((*log)->recovery().cut_torn_tail);
  }
  SECTION("a byte changed inside a record: refused, nothing changed") {
    auto bytes = *read_file(seg);
    const auto parsed = parse_segment(bytes, "seg");
    REQUIRE(parsed.records.size() == 10);
    bytes[parsed.records[4].offset + 40] ^= 0x20;  // inside record 5's payload
    REQUIRE(write_file_atomic(seg, bytes, 0600));
    auto log = AuditLog::open(dir.path(), small());
    REQUIRE_FALSE(log);
    CHECK_THAT(log.error().message(), Catch::Contains(seg.filename().string() + " at offset "));
    CHECK_THAT(log.error().message(), Catch::Contains("valid frames follow"));
    CHECK(*read_file(seg) == bytes);
    auto v = verify_audit_log(dir.path(), std::nullopt);
    CHECK_FALSE(v.ok());
    REQUIRE_FALSE(v.problems.empty());
    CHECK_THAT(v.problems[0], Catch::Contains("frame hash does not match"));
  }
}

TEST_CASE("a record rewritten with a fresh frame hash breaks the chain at the next record", "[audit]") {
  testing::TempDir dir;
  {
    auto log = AuditLog::open(dir.path(), small());
    REQUIRE(log);
    for (int i = 0; i < 5; ++i) REQUIRE((*log)->append_durable(decision(i)));
  }
  // Rebuild the segment with record 3's detail changed and its frame made whole again.
  const fs::path seg = segments(dir.path()).back();
  auto parsed = parse_segment(*read_file(seg), "seg");
  REQUIRE(parsed.records.size() == 5);
  testing::TempDir other;
  {
    auto forged = AuditLog::open(other.path(), small());
    REQUIRE(forged);
    for (int i = 0; i < 5; ++i) {
      AuditEntry e = decision(i == 2 ? 42 : i);
      e.time_ms = parsed.records[static_cast<size_t>(i)].time_ms;
      REQUIRE((*forged)->append_durable(e));
    }
  }
  // Splice: records 1-2 and 4-5 from the original, 3 from the forgery.
  auto forged_parse = parse_segment(*read_file(segments(other.path()).back()), "forged");
  auto original = *read_file(seg);
  auto forged_bytes = *read_file(segments(other.path()).back());
  Bytes spliced(original.begin(), original.begin() + static_cast<std::ptrdiff_t>(parsed.records[2].offset));
  spliced.insert(spliced.end(), forged_bytes.begin() + static_cast<std::ptrdiff_t>(forged_parse.records[2].offset),
                 forged_bytes.begin() + static_cast<std::ptrdiff_t>(forged_parse.records[3].offset));
  spliced.insert(spliced.end(), original.begin() + static_cast<std::ptrdiff_t>(parsed.records[3].offset), original.end());
  REQUIRE(write_file_atomic(seg, spliced, 0600));
  auto v = verify_audit_log(dir.path(), std::nullopt);
  CHECK_FALSE(v.ok());
  REQUIRE_FALSE(v.problems.empty());
  CHECK_THAT(v.problems[0], Catch::Contains("record 4 does not link to record 3"));
}

TEST_CASE("the disk budget fails closed; only acknowledged segments are released", "[audit]") {
  testing::TempDir dir;
  AuditLogOptions o;
  o.segment_bytes = 4096;
  o.max_bytes = 16384;
  auto log = AuditLog::open(dir.path(), o);
  REQUIRE(log);
  uint64_t last = 0;
  Result<uint64_t> r = fail(errc::io, "");
  for (int i = 0; i < 1000; ++i) {
    r = (*log)->append_durable(decision(i));
    if (!r) break;
    last = *r;
  }
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message(), Catch::Contains("audit log full"));
  CHECK_THAT((*log)->refusing(), Catch::Contains("disk budget reached"));
  CHECK((*log)->durable_seq() == last);
  CHECK(all(dir.path()).size() == last);

  // The hub acknowledged nothing: nothing goes. Then half: whole segments up to it go.
  auto none = (*log)->release_acknowledged(0);
  REQUIRE(none);
  CHECK(*none == 0);
  auto some = (*log)->release_acknowledged(last / 2);
  REQUIRE(some);
  CHECK(*some >= 1);
  auto left = all(dir.path());
  REQUIRE_FALSE(left.empty());
  CHECK(left.front().seq <= last / 2 + 1);
  CHECK(left.back().seq == last);
  CHECK((*log)->refusing().empty());
  auto more = (*log)->append_durable(decision(5000));
  REQUIRE(more);
  CHECK(*more == last + 1);
  log->reset();
  // A log whose first segments were released still opens and verifies.
  auto reopened = AuditLog::open(dir.path(), o);
  REQUIRE(reopened);
  CHECK(verify_audit_log(dir.path(), std::nullopt).ok());
}

TEST_CASE("segment parsing refuses absurd frames without reading past the end", "[audit]") {
  CHECK(parse_segment({}, "empty").end == SegmentParse::End::clean);
  const std::string huge("OPAR\xff\xff\xff\x7f", 8);
  auto p = parse_segment(as_bytes(huge), "huge");
  CHECK(p.end == SegmentParse::End::torn);
  CHECK_THAT(p.error, Catch::Contains("out of range"));
  auto q = parse_segment(as_bytes(std::string("XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")), "junk");
  CHECK(q.end == SegmentParse::End::torn);
  CHECK(q.records.empty());
}

TEST_CASE("writers waiting at once share fdatasyncs, and each record is durable when its wait returns", "[audit]") {
  outpost::testing::TempDir dir;
  AuditLogOptions o;  // large segments: no rotation in the way
  auto log = AuditLog::open(dir / "log", o);
  REQUIRE(log);
  constexpr int kThreads = 8, kEach = 50;
  std::atomic<int> not_durable{0}, failed{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto seq = (*log)->append_durable(decision(t * kEach + i));
        if (!seq) {
          failed.fetch_add(1);
          continue;
        }
        if ((*log)->durable_seq() < *seq) not_durable.fetch_add(1);
      }
    });
  }
  for (auto& w : writers) w.join();
  CHECK(failed.load() == 0);
  CHECK(not_durable.load() == 0);
  CHECK((*log)->durable_seq() == kThreads * kEach);
  // Records staged before one wait share its write and fdatasync (two at most: the committer's
  // safety-net pass may take the first few while the rest are being staged).
  const uint64_t before = (*log)->commits();
  uint64_t last = 0;
  for (int i = 0; i < 10; ++i) {
    auto seq = (*log)->stage(decision(1000 + i));
    REQUIRE(seq);
    last = *seq;
  }
  REQUIRE((*log)->wait_durable(last));
  CHECK((*log)->durable_seq() == last);
  CHECK((*log)->commits() <= before + 2);
  log->reset();
  auto records = all(dir / "log");
  REQUIRE(records.size() == kThreads * kEach + 10);
  for (size_t i = 0; i < records.size(); ++i) CHECK(records[i].seq == i + 1);
}

TEST_CASE("a record staged for a wait that never comes is still written by the committer", "[audit]") {
  outpost::testing::TempDir dir;
  auto log = AuditLog::open(dir / "log", small());
  REQUIRE(log);
  auto seq = (*log)->stage(decision(1));
  REQUIRE(seq);
  // Within kStagedInterval (50 ms); the bound here is only so that a broken committer fails the
  // test instead of hanging it.
  for (int i = 0; i < 500 && (*log)->durable_seq() < *seq; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK((*log)->durable_seq() == *seq);
  // A record waited for after the committer wrote it returns at once.
  CHECK((*log)->wait_durable(*seq));
}

}  // namespace outpost::offline_cache
