// outpost-hub's Store contract (hub/include/outpost/hub/store.h), the same cases on both
// backends: SQLite in a temporary directory (`store.sqlite`) and PostgreSQL on a server of the
// test's own, started by tests/support/postgres_server.h (`store.postgres`). Each case gets a
// fresh database; Backend::open() gives a further Store on it (a second hub instance, or the
// hub after a restart). Then what only PostgreSQL has: a commit waiting on another instance's
// row lock, schema creation by instances starting together, a lost connection.
#include <libpq-fe.h>
#include <sqlite3.h>

#include <atomic>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <latch>
#include <thread>

#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/hub/hub.h"
#include "outpost/hub/store.h"
#include "outpost/offline_cache/trust.h"
#include "bundle_factory.h"
#include "hub_under_test.h"
#include "soft_tpm.h"
#include "sync/hub_client.h"
#include "metrics_text.h"
#include "postgres_server.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace outpost;
using hub::AlertRow;
using hub::BundleRow;
using hub::NodeRow;
using hub::RecordRow;
using hub::RecordQuery;
using hub::Store;

namespace {

using testing::value_of;
void require_ok(const Result<void>& r) {
  INFO((r ? std::string() : r.error().message()));
  REQUIRE(r.has_value());
}
void require_error(const Result<void>& r, errc code) {
  REQUIRE_FALSE(r.has_value());
  INFO(r.error().message());
  REQUIRE(r.error().is(code));
}

// Where a case's stores live.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string database() const = 0;  // what hub.yaml's `database:` would say
  virtual int schema_version() const = 0;     // the one a store opened here is brought to
  std::unique_ptr<Store> open() const { return value_of(hub::open_store(database())); }
};

class SqliteBackend final : public Backend {
 public:
  std::string database() const override { return (dir_ / "hub.db").string(); }
  int schema_version() const override { return hub::kSqliteSchemaVersion; }

 private:
  testing::TempDir dir_;
};

// One server for the whole test run, started on first use (from the main thread: see
// postgres_server.h), stopped when the process ends.
testing::PostgresServer& postgres() {
  static std::unique_ptr<testing::PostgresServer> server = value_of(testing::PostgresServer::start({}));
  return *server;
}

class PostgresBackend final : public Backend {
 public:
  PostgresBackend() : name_("store_case_" + std::to_string(++count_)) { require_ok(postgres().create_database(name_)); }
  std::string database() const override { return postgres().uri(name_); }
  int schema_version() const override { return hub::kPostgresSchemaVersion; }
  const std::string& name() const { return name_; }

 private:
  static inline int count_ = 0;
  std::string name_;
};

NodeRow node_row(const std::string& id) {
  NodeRow n;
  n.node_id = id;
  n.identity_json = R"({"node_id":")" + id + R"(","board":"sim"})";
  n.ak_pem = "-----BEGIN PUBLIC KEY-----\n" + id + "\n-----END PUBLIC KEY-----\n";
  n.enrolled_at = "2026-11-28T10:00:00Z";
  return n;
}

// `n` records from `first` on; `variant` makes another writer's different records for the
// same sequence numbers. Times are 1000 + 10 * seq; every 50th is a checkpoint.
std::vector<RecordRow> records(uint64_t first, int n, uint8_t variant = 0) {
  std::vector<RecordRow> out;
  for (uint64_t seq = first; seq < first + static_cast<uint64_t>(n); ++seq) {
    RecordRow r;
    r.seq = seq;
    r.time_ms = 1000 + 10 * static_cast<int64_t>(seq);
    r.kind = seq % 50 == 0 ? static_cast<uint8_t>(5) : static_cast<uint8_t>(0);
    r.frame.resize(64 + seq % 300);
    for (size_t i = 0; i < r.frame.size(); ++i) r.frame[i] = static_cast<uint8_t>(seq * 31 + i * 7 + variant);
    r.hash = sha256(r.frame);
    out.push_back(std::move(r));
  }
  return out;
}

attestation::ClockInfo clock_at(uint64_t ms) { return {ms, 3, 1, true}; }

std::vector<RecordRow> scan(Store& s, const std::string& id, uint64_t from, size_t stop_after = SIZE_MAX) {
  std::vector<RecordRow> out;
  require_ok(s.scan_records(id, from, [&](const RecordRow& r) {
    out.push_back(r);
    return out.size() < stop_after;
  }));
  return out;
}

bool same_record(const RecordRow& a, const RecordRow& b) {
  return a.seq == b.seq && a.time_ms == b.time_ms && a.kind == b.kind && a.hash == b.hash && a.frame == b.frame;
}

}  // namespace

// Each contract case runs on both backends, as a test case of its own tagged [sqlite] or
// [postgres] (ctest's store.sqlite and store.postgres).
#define STORE_CASE(name, function)                                                        \
  static void function(const Backend& backend);                                           \
  TEST_CASE("sqlite: " name, "[store][sqlite]") {                                         \
    SqliteBackend b;                                                                      \
    function(b);                                                                          \
  }                                                                                       \
  TEST_CASE("postgres: " name, "[store][postgres]") {                                     \
    PostgresBackend b;                                                                    \
    function(b);                                                                          \
  }                                                                                       \
  static void function(const Backend& backend)

STORE_CASE("enroll, node and nodes; enrolling twice is already_exists", enroll_case) {
  auto store = backend.open();
  REQUIRE_FALSE(value_of(store->node("n-b")).has_value());
  for (const char* id : {"n-b", "n-c", "n-a"}) require_ok(store->enroll(node_row(id)));

  auto b = value_of(store->node("n-b"));
  REQUIRE(b.has_value());
  CHECK(b->node_id == "n-b");
  CHECK(b->identity_json == node_row("n-b").identity_json);
  CHECK(b->ak_pem == node_row("n-b").ak_pem);
  CHECK(b->enrolled_at == "2026-11-28T10:00:00Z");
  CHECK(b->acked_seq == 0);
  CHECK(b->acked_hash == Digest{});
  CHECK_FALSE(b->last_clock.has_value());
  CHECK(b->last_contact_ms == 0);

  NodeRow again = node_row("n-b");
  again.ak_pem = "another key";
  require_error(store->enroll(again), errc::already_exists);
  CHECK(value_of(store->node("n-b"))->ak_pem == node_row("n-b").ak_pem);

  auto all = value_of(store->nodes());
  REQUIRE(all.size() == 3);
  CHECK(all[0].node_id == "n-a");
  CHECK(all[1].node_id == "n-b");
  CHECK(all[2].node_id == "n-c");
}

STORE_CASE("commit_records stores the rows and moves the chain state", commit_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  const auto first = records(1, 100);
  require_ok(store->commit_records("n", 0, first, clock_at(5000)));
  auto n = value_of(store->node("n"));
  CHECK(n->acked_seq == 100);
  CHECK(n->acked_hash == first.back().hash);
  REQUIRE(n->last_clock.has_value());
  CHECK(*n->last_clock == clock_at(5000));

  const auto second = records(101, 7);
  const attestation::ClockInfo later{7000, 4, 0, false};
  require_ok(store->commit_records("n", 100, second, later));
  n = value_of(store->node("n"));
  CHECK(n->acked_seq == 107);
  CHECK(n->acked_hash == second.back().hash);
  CHECK(*n->last_clock == later);

  CHECK(value_of(store->record_hash("n", 1)) == first.front().hash);
  CHECK(value_of(store->record_hash("n", 42)) == first[41].hash);
  CHECK(value_of(store->record_hash("n", 107)) == second.back().hash);
  CHECK_FALSE(value_of(store->record_hash("n", 108)).has_value());
  CHECK_FALSE(value_of(store->record_hash("other", 1)).has_value());

  auto stored = scan(*store, "n", 1);
  REQUIRE(stored.size() == 107);
  for (size_t i = 0; i < stored.size(); ++i) {
    const RecordRow& want = i < 100 ? first[i] : second[i - 100];
    INFO("seq " << want.seq);
    CHECK(same_record(stored[i], want));
  }

  // No rows: nothing to do, nothing changed.
  require_ok(store->commit_records("n", 107, {}, clock_at(9000)));
  CHECK(value_of(store->node("n"))->acked_seq == 107);
  CHECK(*value_of(store->node("n"))->last_clock == later);
}

STORE_CASE("a commit after a stale acknowledged sequence is refused with nothing written", stale_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  const auto mine = records(1, 10);
  require_ok(store->commit_records("n", 0, mine, clock_at(100)));

  // Another writer verified against acked 0 too.
  require_error(store->commit_records("n", 0, records(1, 10, 9), clock_at(200)), errc::already_exists);
  // One that believes the hub holds more than it does.
  require_error(store->commit_records("n", 20, records(21, 5), clock_at(300)), errc::already_exists);

  auto n = value_of(store->node("n"));
  CHECK(n->acked_seq == 10);
  CHECK(n->acked_hash == mine.back().hash);
  CHECK(*n->last_clock == clock_at(100));
  CHECK_FALSE(value_of(store->record_hash("n", 21)).has_value());
  auto stored = scan(*store, "n", 1);
  REQUIRE(stored.size() == 10);
  for (size_t i = 0; i < stored.size(); ++i) CHECK(same_record(stored[i], mine[i]));

  require_error(store->commit_records("unknown", 0, records(1, 3), clock_at(1)), errc::not_found);
  CHECK(scan(*store, "unknown", 1).empty());
}

STORE_CASE("a commit that fails part way writes nothing and the store goes on working", rollback_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  require_ok(store->commit_records("n", 0, records(1, 10), clock_at(100)));

  // Rows that do not start right after the acknowledged sequence.
  REQUIRE_FALSE(store->commit_records("n", 10, records(12, 5), clock_at(200)).has_value());
  // A sequence number twice: the insert fails after the chain state was updated.
  auto twice = records(11, 10);
  twice[5].seq = twice[4].seq;
  REQUIRE_FALSE(store->commit_records("n", 10, twice, clock_at(200)).has_value());

  auto n = value_of(store->node("n"));
  CHECK(n->acked_seq == 10);
  CHECK(*n->last_clock == clock_at(100));
  CHECK_FALSE(value_of(store->record_hash("n", 11)).has_value());
  CHECK(scan(*store, "n", 1).size() == 10);

  require_ok(store->commit_records("n", 10, records(11, 10), clock_at(300)));
  CHECK(value_of(store->node("n"))->acked_seq == 20);
  CHECK(scan(*store, "n", 1).size() == 20);
}

STORE_CASE("commit_group: each upload and enrolment committed or refused on its own, one result each, in order", group_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("a")));
  require_ok(store->enroll(node_row("b")));
  auto upload = [](const std::string& id, uint64_t expect, std::vector<RecordRow> rows, uint64_t clock_ms) {
    Store::CommitItem c;
    c.node_id = id;
    c.expect_acked = expect;
    c.rows = std::move(rows);
    c.last_clock = clock_at(clock_ms);
    c.also.contact_ms = static_cast<int64_t>(clock_ms);
    return c;
  };
  auto enrol = [](const std::string& id) {
    Store::CommitItem c;
    c.enrol = node_row(id);
    return c;
  };
  auto twice = records(1, 10);
  twice[5].seq = twice[4].seq;  // fails at its insert, after the rows before it went in
  const std::vector<Store::CommitItem> items = {
      upload("a", 0, records(1, 10), 100),
      upload("a", 0, records(1, 5, 9), 200),  // verified against acked 0 too: the one before moved it
      enrol("c"),
      upload("c", 0, records(1, 3), 300),  // enrolled earlier in the same group
      enrol("a"),                          // enrolled already
      upload("b", 0, twice, 400),
      upload("b", 0, records(5, 3), 500),  // rows that do not follow acked 0
      upload("nobody", 0, records(1, 2), 600),
      upload("b", 0, records(1, 4), 700),
  };
  std::vector<const Store::CommitItem*> group;
  for (const auto& i : items) group.push_back(&i);
  const auto results = store->commit_group(group);
  REQUIRE(results.size() == items.size());
  require_ok(results[0]);
  require_error(results[1], errc::already_exists);
  require_ok(results[2]);
  require_ok(results[3]);
  require_error(results[4], errc::already_exists);
  REQUIRE_FALSE(results[5].has_value());
  require_error(results[6], errc::invalid_argument);
  require_error(results[7], errc::not_found);
  require_ok(results[8]);

  auto reopened = backend.open();  // what was committed, as another connection sees it
  auto a = value_of(reopened->node("a"));
  CHECK(a->acked_seq == 10);
  CHECK(*a->last_clock == clock_at(100));
  CHECK(a->last_contact_ms == 100);
  CHECK(value_of(reopened->node("a"))->ak_pem == node_row("a").ak_pem);
  auto stored = scan(*reopened, "a", 1);
  REQUIRE(stored.size() == 10);
  for (size_t i = 0; i < stored.size(); ++i) CHECK(same_record(stored[i], records(1, 10)[i]));
  CHECK(value_of(reopened->node("c"))->acked_seq == 3);
  CHECK(scan(*reopened, "c", 1).size() == 3);
  auto b = value_of(reopened->node("b"));
  CHECK(b->acked_seq == 4);  // only the last upload: the failed ones left nothing
  CHECK(*b->last_clock == clock_at(700));
  stored = scan(*reopened, "b", 1);
  REQUIRE(stored.size() == 4);
  for (size_t i = 0; i < stored.size(); ++i) CHECK(same_record(stored[i], records(1, 4)[i]));
  CHECK_FALSE(value_of(reopened->node("nobody")).has_value());
  CHECK(store->commit_group({}).empty());
}

STORE_CASE("scan_records goes in order from from_seq, across pages, and stops when told", scan_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  require_ok(store->enroll(node_row("m")));
  std::vector<RecordRow> all;
  for (uint64_t first = 1; first <= 2500; first += 500) {
    auto batch = records(first, 500);
    require_ok(store->commit_records("n", first - 1, batch, clock_at(first)));
    all.insert(all.end(), batch.begin(), batch.end());
  }
  require_ok(store->commit_records("m", 0, records(1, 5, 1), clock_at(1)));

  auto got = scan(*store, "n", 1);
  REQUIRE(got.size() == 2500);
  for (size_t i = 0; i < got.size(); ++i) {
    if (!same_record(got[i], all[i])) FAIL("record " << i + 1 << " differs");
  }
  auto tail = scan(*store, "n", 1200);
  REQUIRE(tail.size() == 1301);
  CHECK(tail.front().seq == 1200);
  CHECK(tail.back().seq == 2500);

  CHECK(scan(*store, "n", 1, 3).size() == 3);
  auto past_page = scan(*store, "n", 990, 20);  // stops in the second page of a paged backend
  REQUIRE(past_page.size() == 20);
  CHECK(past_page.back().seq == 1009);
  CHECK(scan(*store, "n", 2501).empty());
  CHECK(scan(*store, "n", 0).size() == 2500);
  CHECK(scan(*store, "m", 1).size() == 5);
  CHECK(scan(*store, "nobody", 1).empty());
}

STORE_CASE("first_seq_at finds the first record at or after a time", first_seq_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  require_ok(store->commit_records("n", 0, records(1, 100), clock_at(1)));
  CHECK(value_of(store->first_seq_at("n", 1000 + 10 * 55)) == 55);
  CHECK(value_of(store->first_seq_at("n", 1000 + 10 * 55 - 5)) == 55);
  CHECK(value_of(store->first_seq_at("n", 0)) == 1);
  CHECK(value_of(store->first_seq_at("n", 1000 + 10 * 100)) == 100);
  CHECK(value_of(store->first_seq_at("n", 1000 + 10 * 100 + 1)) == 0);
  CHECK(value_of(store->first_seq_at("nobody", 0)) == 0);
}

STORE_CASE("touch records the last contact", touch_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  require_ok(store->touch("n", 1'700'000'000'123));
  CHECK(value_of(store->node("n"))->last_contact_ms == 1'700'000'000'123);
  require_ok(store->touch("n", 5));
  CHECK(value_of(store->node("n"))->last_contact_ms == 5);
  require_ok(store->touch("nobody", 1));  // nothing to touch is not an error
  CHECK_FALSE(value_of(store->node("nobody")).has_value());
}

STORE_CASE("evidence state is put, replaced and read back byte for byte", evidence_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  require_ok(store->enroll(node_row("m")));
  CHECK_FALSE(value_of(store->evidence_state("n")).has_value());

  Bytes big(1 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 131 + (i >> 8));
  require_ok(store->put_evidence_state("n", big, "2026-11-28T10:00:00Z"));
  CHECK(value_of(store->evidence_state("n")) == big);

  const Bytes small = {0, 1, 2, 0xff, 0, 0x5c, 0x27};  // NUL, backslash, quote
  require_ok(store->put_evidence_state("n", small, "2026-11-28T11:00:00Z"));
  CHECK(value_of(store->evidence_state("n")) == small);
  CHECK_FALSE(value_of(store->evidence_state("m")).has_value());
}

STORE_CASE("bundles: the latest version is served, a version is published once", bundle_case) {
  auto store = backend.open();
  CHECK_FALSE(value_of(store->latest_bundle()).has_value());
  auto bundle = [](uint64_t v) {
    BundleRow b;
    b.version = v;
    b.bytes = Bytes(1000 + v, static_cast<uint8_t>(v));
    b.sha256 = hex_encode(sha256(b.bytes));
    b.published_at = "2026-11-28T10:00:0" + std::to_string(v) + "Z";
    return b;
  };
  for (uint64_t v : {1, 3, 2}) require_ok(store->put_bundle(bundle(v)));
  auto latest = value_of(store->latest_bundle());
  REQUIRE(latest.has_value());
  CHECK(latest->version == 3);
  CHECK(latest->sha256 == bundle(3).sha256);
  CHECK(latest->bytes == bundle(3).bytes);
  CHECK(latest->published_at == bundle(3).published_at);
  auto recent = value_of(store->recent_bundles(2));
  REQUIRE(recent.size() == 2);
  CHECK(recent[0].version == 3);
  CHECK(recent[1].version == 2);
  CHECK(recent[1].bytes == bundle(2).bytes);
  CHECK(value_of(store->recent_bundles(10)).size() == 3);

  BundleRow other = bundle(3);
  other.bytes = Bytes(10, 0xaa);
  require_error(store->put_bundle(other), errc::already_exists);
  CHECK(value_of(store->latest_bundle())->bytes == bundle(3).bytes);
}

STORE_CASE("alerts are kept per node in the order they came", alerts_case) {
  auto store = backend.open();
  require_ok(store->add_alert({"n", "fork", "seq 2 differs", "2026-11-28T10:00:00Z"}));
  require_ok(store->add_alert({"m", "rollback", "bundle v1", "2026-11-28T10:00:01Z"}));
  require_ok(store->add_alert({"n", "refused_upload", "gap after 7", "2026-11-28T10:00:02Z"}));
  require_ok(store->add_alert({"n", "ak_changed", "it's \"quoted\"; DROP TABLE alerts", "2026-11-28T10:00:03Z"}));
  auto n = value_of(store->alerts("n"));
  REQUIRE(n.size() == 3);
  CHECK(n[0].kind == "fork");
  CHECK(n[0].detail == "seq 2 differs");
  CHECK(n[0].at == "2026-11-28T10:00:00Z");
  CHECK(n[1].kind == "refused_upload");
  CHECK(n[2].detail == "it's \"quoted\"; DROP TABLE alerts");
  auto m = value_of(store->alerts("m"));
  REQUIRE(m.size() == 1);
  CHECK(m[0].node_id == "m");
  CHECK(value_of(store->alerts("nobody")).empty());
}

STORE_CASE("a store opened again sees everything", reopen_case) {
  const auto rows = records(1, 30);
  {
    auto store = backend.open();
    require_ok(store->enroll(node_row("n")));
    require_ok(store->commit_records("n", 0, rows, clock_at(77)));
    require_ok(store->touch("n", 1234));
    require_ok(store->put_evidence_state("n", Bytes{1, 2, 3}, "2026-11-28T10:00:00Z"));
    require_ok(store->put_bundle({4, "abcd", Bytes{9, 9}, "2026-11-28T10:00:00Z"}));
    require_ok(store->add_alert({"n", "fork", "x", "2026-11-28T10:00:00Z"}));
  }
  auto store = backend.open();  // tables exist: created if missing, never replaced
  auto n = value_of(store->node("n"));
  REQUIRE(n.has_value());
  CHECK(n->acked_seq == 30);
  CHECK(n->acked_hash == rows.back().hash);
  CHECK(*n->last_clock == clock_at(77));
  CHECK(n->last_contact_ms == 1234);
  CHECK(scan(*store, "n", 1).size() == 30);
  CHECK(value_of(store->evidence_state("n")) == Bytes{1, 2, 3});
  CHECK(value_of(store->latest_bundle())->version == 4);
  CHECK(value_of(store->alerts("n")).size() == 1);
}

// Stateless hub instances on one database: each has a Store of its own, and two that verified
// an upload against the same acknowledged record race to commit it.
STORE_CASE("two stores racing to commit after the same record: exactly one wins", race_case) {
  auto a = backend.open();
  auto b = backend.open();
  require_ok(a->enroll(node_row("n")));
  uint64_t acked = 0;
  for (int round = 0; round < 25; ++round) {
    const auto from_a = records(acked + 1, 20, 1), from_b = records(acked + 1, 20, 2);
    Result<void> ra = ok(), rb = ok();
    std::latch go(2);
    std::thread ta([&] {
      go.arrive_and_wait();
      ra = a->commit_records("n", acked, from_a, clock_at(acked + 1));
    });
    std::thread tb([&] {
      go.arrive_and_wait();
      rb = b->commit_records("n", acked, from_b, clock_at(acked + 2));
    });
    ta.join();
    tb.join();
    INFO("round " << round << ": " << (ra ? "ok" : ra.error().message()) << " / " << (rb ? "ok" : rb.error().message()));
    REQUIRE(ra.has_value() != rb.has_value());
    const Result<void>& loser = ra ? rb : ra;
    REQUIRE(loser.error().is(errc::already_exists));
    const auto& winner = ra ? from_a : from_b;

    auto n = value_of(a->node("n"));
    REQUIRE(n->acked_seq == acked + 20);
    REQUIRE(n->acked_hash == winner.back().hash);
    auto stored = scan(*b, "n", acked + 1);
    REQUIRE(stored.size() == 20);
    for (size_t i = 0; i < stored.size(); ++i) REQUIRE(same_record(stored[i], winner[i]));
    acked += 20;
  }
}

STORE_CASE("search: decisions by node, agent, tool, verdict and time, newest first; attestation and alert counts", search_case) {
  auto store = backend.open();
  require_ok(store->enroll(node_row("n1")));
  require_ok(store->enroll(node_row("n2")));
  // Non-ASCII text, as ingest leaves it (hub::search_text): PostgreSQL's text takes it.
  const std::string reason = "écrire hors de /srv/out est refusé — 書き込み拒否";
  auto decided = [&](uint64_t first, const std::string& agent) {
    auto rows = records(first, 20);
    for (auto& r : rows) {
      r.agent = agent;
      r.event = r.kind == 0 ? "decision" : "checkpoint";
      if (r.kind != 0) continue;
      const bool deny = r.seq % 4 == 0;
      r.subject = deny ? "fs/write_file" : "fs/read_file";
      r.verdict = deny ? "deny" : "allow";
      r.reason = deny ? reason : "reads are allowed";
    }
    return rows;
  };
  require_ok(store->commit_records("n1", 0, decided(1, "reporter"), clock_at(1)));
  require_ok(store->commit_records("n2", 0, decided(1, "inventory"), clock_at(1)));
  auto search = [&](RecordQuery q) { return value_of(store->search_records(q)); };
  RecordQuery denies;
  denies.verdict = "deny";
  auto found = search(denies);
  REQUIRE(found.size() == 10);  // seq 4, 8, 12, 16, 20 on each node
  CHECK(found.front().row.time_ms >= found.back().row.time_ms);
  CHECK(found.front().row.reason == reason);
  RecordQuery by_agent;
  by_agent.agent = "inventory";
  by_agent.verdict = "deny";
  for (const auto& f : search(by_agent)) CHECK(f.node_id == "n2");
  RecordQuery tool;
  tool.subject = "write_file";  // the tool alone matches server/tool
  CHECK(search(tool).size() == 10);
  tool.subject = "fs/write_file";
  CHECK(search(tool).size() == 10);
  tool.subject = "write_fil_";  // compared, never a pattern
  CHECK(search(tool).empty());
  tool.subject = "%";
  CHECK(search(tool).empty());
  RecordQuery window;
  window.node_id = "n1";
  window.since_ms = 1000 + 10 * 5;
  window.until_ms = 1000 + 10 * 9;
  CHECK(search(window).size() == 5);
  RecordQuery few;
  few.limit = 3;
  CHECK(search(few).size() == 3);

  require_ok(store->touch_attested("n1", 123456));
  CHECK(value_of(store->node("n1"))->last_attested_ms == 123456);
  CHECK(value_of(store->node("n1"))->last_contact_ms == 123456);
  require_ok(store->add_alert({"n2", "fork", "x", "2026-11-28T10:00:00Z"}));
  require_ok(store->add_alert({"n2", "refused_upload", "y", "2026-11-28T10:00:01Z"}));
  auto counts = value_of(store->alert_counts());
  CHECK(counts.size() == 1);
  CHECK(counts["n2"] == 2);
  // What an upload's commit carries besides the rows.
  Store::CommitAlso also;
  also.durable_seq = 90;
  also.contact_ms = 5000;
  also.bundle_version = 7;
  require_ok(store->commit_records("n1", 20, records(21, 5), clock_at(2), also));
  auto n1 = value_of(store->node("n1"));
  CHECK(n1->durable_seq == 90);
  CHECK(n1->bundle_version == 7);
  CHECK(n1->last_contact_ms == 123456);  // only ever forward
}

STORE_CASE("fleets: a node enrols into one and is moved to another; an unknown node is not_found", fleets_case) {
  auto store = backend.open();
  CHECK(value_of(store->schema_version()) == backend.schema_version());
  NodeRow lab = node_row("n-lab");
  lab.fleet = "lab";
  require_ok(store->enroll(lab));
  require_ok(store->enroll(node_row("n-none")));
  CHECK(value_of(store->node("n-lab"))->fleet == "lab");
  CHECK(value_of(store->node("n-none"))->fleet == "");
  require_ok(store->set_fleet("n-none", "retail-eu"));
  require_ok(store->set_fleet("n-lab", ""));
  auto again = backend.open();  // another instance, or the hub restarted
  auto all = value_of(again->nodes());
  REQUIRE(all.size() == 2);
  CHECK(all[0].fleet == "");
  CHECK(all[1].fleet == "retail-eu");
  require_error(store->set_fleet("n-other", "lab"), errc::not_found);
}

TEST_CASE("hub.yaml's credentials and fleets: what init writes loads; malformed entries are refused, saying why", "[store][config]") {
  testing::TempDir dir;
  auto init = value_of(hub::init_hub_dir(dir / "hub", {}, {}));
  const std::string yaml = value_of(read_text_file(init.config));
  auto config = value_of(hub::load_hub_config(init.config));
  REQUIRE(config.credentials.size() == 3);
  for (const char* role : {"operator", "responder", "iam"}) {
    const std::string token = value_of(read_text_file(dir / "hub" / (std::string(role) + ".token"))).substr(0, 64);
    auto it = config.credentials.find(hub::token_sha256(token));
    REQUIRE(it != config.credentials.end());
    CHECK(std::string(hub::role_name(it->second.role)) == role);
    CHECK(yaml.find(token) == std::string::npos);  // only its hash is in hub.yaml
  }
  auto with = [&](const std::string& extra) {
    testing::write_text(init.config, yaml + extra);
    return hub::load_hub_config(init.config);
  };
  auto fleets = value_of(with("fleets:\n  default: lab\n  assign:\n    n1: retail-eu\n"));
  CHECK(fleets.default_fleet == "lab");
  CHECK(fleets.assigned_fleets.at("n1") == "retail-eu");
  const std::string hash(64, 'a');
  for (const auto& [extra, says] : std::vector<std::pair<std::string, std::string>>{
           {"fleets:\n  default: \"no spaces\"\n", "is not a fleet name"},
           {"fleets:\n  other: x\n", "unknown field \"other\""},
           {"credentials:\n  - {name: x, role: admin, token_sha256: " + hash + "}\n", "operator, responder or iam"},
           {"credentials:\n  - {name: x, role: iam, token_sha256: abc}\n", "64 hex digits"},
           {"credentials:\n  - {role: iam, token_sha256: " + hash + "}\n", "needs a name"},
           {"credentials:\n  - {name: x, role: iam, token: " + hash + "}\n", "unknown field \"token\""},
           {"credentials:\n  - {name: x, role: iam, token_sha256: " + hash + "}\n  - {name: y, role: operator, token_sha256: " + hash + "}\n",
            "has the token of another credential"}}) {
    std::string y = yaml;
    if (extra.rfind("credentials:", 0) == 0) y = y.substr(0, y.find("# Who may read"));  // replaces init's own
    testing::write_text(init.config, y + extra);
    auto r = hub::load_hub_config(init.config);
    REQUIRE_FALSE(r.has_value());
    INFO(r.error().message());
    CHECK(r.error().message().find(says) != std::string::npos);
  }
  CHECK_FALSE(value_of(with("node_tokens: optional\n")).node_tokens_required);
  CHECK(value_of(with("ingest_threads: 3\n")).ingest_threads == 3);
  CHECK(value_of(with("")).ingest_queue == 256);
  CHECK(value_of(with("ingest_queue: 8\n")).ingest_queue == 8);
  CHECK_FALSE(with("ingest_queue: 0\n").has_value());
  CHECK_FALSE(with("node_tokens: sometimes\n").has_value());
  CHECK(hub::valid_fleet_name("retail-eu.1_b"));
  CHECK_FALSE(hub::valid_fleet_name(""));
  CHECK_FALSE(hub::valid_fleet_name(std::string(65, 'a')));
  CHECK_FALSE(hub::valid_fleet_name("a/b"));
}

TEST_CASE("hub.yaml's database: a PostgreSQL URI is kept as given, a file is under the config's folder", "[store][config]") {
  testing::TempDir dir;
  auto init = value_of(hub::init_hub_dir(dir / "hub", {}, {}));
  const std::string yaml = value_of(read_text_file(init.config));
  auto with_database = [&](const std::string& line) {
    std::string y = yaml;
    const size_t at = y.find("database: hub.db");
    REQUIRE(at != std::string::npos);
    y.replace(at, std::string("database: hub.db").size(), line);
    testing::write_text(init.config, y);
    return value_of(hub::load_hub_config(init.config));
  };
  CHECK(with_database("database: postgresql://hub@db.example.org:5432/outpost?sslmode=verify-full").database.string() ==
        "postgresql://hub@db.example.org:5432/outpost?sslmode=verify-full");
  CHECK(with_database("database: postgres://db/outpost").database.string() == "postgres://db/outpost");
  CHECK(with_database("database: data/hub.db").database == dir / "hub" / "data" / "hub.db");
  CHECK(with_database("database: /var/lib/outpost-hub/hub.db").database == "/var/lib/outpost-hub/hub.db");
  CHECK(hub::is_postgres_uri("postgresql://x"));
  CHECK(hub::is_postgres_uri("postgres://x"));
  CHECK_FALSE(hub::is_postgres_uri("postgresql.db"));
  CHECK_FALSE(hub::is_postgres_uri("host=db dbname=outpost"));  // a file name, as far as hub.yaml goes
}

// ---- PostgreSQL only ------------------------------------------------------------------------

namespace {

struct PgFinish {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConn = std::unique_ptr<PGconn, PgFinish>;

PgConn pg_connect(const std::string& uri) {
  PgConn c(PQconnectdb(uri.c_str()));
  INFO(PQerrorMessage(c.get()));
  REQUIRE(PQstatus(c.get()) == CONNECTION_OK);
  return c;
}

void pg_exec(PGconn* c, const std::string& sql, const std::vector<std::string>& params = {}) {
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.c_str());
  PGresult* r = PQexecParams(c, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0);
  const auto status = PQresultStatus(r);
  const std::string msg = PQresultErrorMessage(r);
  PQclear(r);
  INFO(sql << ": " << msg);
  REQUIRE((status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK));
}

// Ends the server processes serving `database` (but not the asker's), waiting until they are gone.
void terminate_connections(const std::string& database) {
  value_of(postgres().query(database,
                            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"));
}

}  // namespace

TEST_CASE("postgres: a commit waiting on another instance's row lock finds the sequence moved", "[store][postgres]") {
  PostgresBackend backend;
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));
  require_ok(store->commit_records("n", 0, records(1, 10), clock_at(1)));

  // Another instance, mid-commit: it holds the node's row.
  PgConn other = pg_connect(backend.database());
  pg_exec(other.get(), "BEGIN");
  pg_exec(other.get(), "SELECT acked_seq FROM nodes WHERE node_id = $1 FOR UPDATE", {"n"});

  Result<void> result = ok();
  std::atomic<bool> done = false;
  std::thread waiter([&] {
    result = store->commit_records("n", 10, records(11, 10), clock_at(2));
    done = true;
  });
  const bool waiting = testing::eventually(
      [&] {
        return value_of(postgres().query(backend.name(),
                                         "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND wait_event_type = 'Lock'")) == "1";
      },
      60);
  CHECK(waiting);
  CHECK_FALSE(done);
  // The other instance stores its records first.
  pg_exec(other.get(), "UPDATE nodes SET acked_seq = 20 WHERE node_id = $1", {"n"});
  pg_exec(other.get(), "COMMIT");
  waiter.join();

  require_error(result, errc::already_exists);
  CHECK_FALSE(value_of(store->record_hash("n", 11)).has_value());
  CHECK(value_of(store->node("n"))->acked_seq == 20);
}

TEST_CASE("postgres: hub instances starting at once on an empty database all create the tables", "[store][postgres]") {
  for (int round = 0; round < 3; ++round) {
    PostgresBackend backend;
    constexpr int kInstances = 4;
    std::vector<std::optional<Result<std::unique_ptr<Store>>>> opened(kInstances);
    std::latch go(kInstances);
    std::vector<std::thread> threads;
    for (int i = 0; i < kInstances; ++i) {
      threads.emplace_back([&, i] {
        go.arrive_and_wait();
        opened[static_cast<size_t>(i)].emplace(hub::open_store(backend.database()));
      });
    }
    for (auto& t : threads) t.join();
    for (auto& o : opened) {
      REQUIRE(o.has_value());
      INFO((*o ? std::string() : o->error().message()));
      REQUIRE(o->has_value());
    }
    require_ok((**opened[0])->enroll(node_row("n")));
    CHECK(value_of((**opened[3])->node("n")).has_value());
  }
}

TEST_CASE("postgres: a lost connection is re-established; reads are retried, a commit is not", "[store][postgres]") {
  PostgresBackend backend;
  auto store = backend.open();
  require_ok(store->enroll(node_row("n")));

  terminate_connections(backend.name());
  CHECK(value_of(store->node("n")).has_value());  // met the loss, reconnected, asked again

  terminate_connections(backend.name());
  auto lost = store->commit_records("n", 0, records(1, 10), clock_at(1));
  REQUIRE_FALSE(lost.has_value());  // reported: whether a commit that met the loss happened is the server's to say
  CHECK(lost.error().is(errc::io));
  CHECK(value_of(store->node("n"))->acked_seq == 0);  // it did not: the server rolled it back
  require_ok(store->commit_records("n", 0, records(1, 10), clock_at(1)));
  CHECK(scan(*store, "n", 1).size() == 10);

  terminate_connections(backend.name());
  CHECK(scan(*store, "n", 5).size() == 6);
}

TEST_CASE("postgres: a role that may only read and write opens a store on tables a DBA made", "[store][postgres]") {
  PostgresBackend backend;
  const std::string role = "dml_" + backend.name();
  const std::string role_uri = "postgresql://" + role + "@127.0.0.1:" + std::to_string(postgres().port()) + "/" + backend.name();
  value_of(postgres().query(backend.name(), "CREATE ROLE " + role + " LOGIN"));

  // Nothing there yet, and no right to create: refused, saying why.
  auto refused = hub::open_store(role_uri);
  REQUIRE_FALSE(refused.has_value());
  INFO(refused.error().message());
  CHECK(refused.error().message().find("schema migration") != std::string::npos);
  CHECK(refused.error().message().find("permission denied") != std::string::npos);

  auto owner = backend.open();  // makes the tables
  value_of(postgres().query(backend.name(), "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO " + role));
  value_of(postgres().query(backend.name(), "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO " + role));
  auto store = value_of(hub::open_store(role_uri));
  require_ok(store->enroll(node_row("n")));
  require_ok(store->commit_records("n", 0, records(1, 10), clock_at(1)));
  require_ok(store->put_evidence_state("n", Bytes{1}, "2026-11-28T10:00:00Z"));
  require_ok(store->put_evidence_state("n", Bytes{2}, "2026-11-28T10:00:01Z"));
  require_ok(store->add_alert({"n", "fork", "x", "2026-11-28T10:00:00Z"}));
  CHECK(scan(*store, "n", 1).size() == 10);
}

TEST_CASE("postgres: connection strings, and errors that name the server but not the password", "[store][postgres]") {
  PostgresBackend backend;
  const std::string conninfo = "host=127.0.0.1 port=" + std::to_string(postgres().port()) + " user=outpost dbname=" + backend.name();
  auto by_conninfo = value_of(hub::open_postgres_store(conninfo));
  require_ok(by_conninfo->enroll(node_row("n")));
  auto by_short_uri = value_of(hub::open_store("postgres://outpost@127.0.0.1:" + std::to_string(postgres().port()) + "/" + backend.name()));
  CHECK(value_of(by_short_uri->node("n")).has_value());

  const int closed_port = testing::unused_port();
  auto refused = hub::open_store("postgresql://outpost:s3cret-pw@127.0.0.1:" + std::to_string(closed_port) + "/x");
  REQUIRE_FALSE(refused.has_value());
  INFO(refused.error().message());
  CHECK(refused.error().is(errc::io));
  CHECK(refused.error().message().find("PQconnectdbParams") != std::string::npos);
  CHECK(refused.error().message().find("s3cret-pw") == std::string::npos);

  auto no_database = hub::open_store(postgres().uri("no_such_database"));
  REQUIRE_FALSE(no_database.has_value());
  CHECK(no_database.error().message().find("no_such_database") != std::string::npos);
}

// ---- schema migrations ---------------------------------------------------------------------

namespace {

// The nodes table as hubs before schema versioning made it, with a node in it.
constexpr const char* kNodesV1 =
    "CREATE TABLE nodes (node_id text PRIMARY KEY, identity_json text NOT NULL, ak_pem text NOT NULL, "
    "enrolled_at text NOT NULL, acked_seq bigint NOT NULL DEFAULT 0, acked_hash bytea NOT NULL, clock bigint, "
    "reset_count bigint, restart_count bigint, safe boolean, last_contact_ms bigint NOT NULL DEFAULT 0)";
constexpr const char* kNodeV1Row =
    "INSERT INTO nodes (node_id, identity_json, ak_pem, enrolled_at, acked_seq, acked_hash) "
    "VALUES ('old', '{}', 'pem', '2026-01-01T00:00:00Z', 7, X'00')";

// The database is at a version above the hub's: opening it is refused, and says why.
void refused_as_newer(const Backend& backend) {
  auto newer = hub::open_store(backend.database());
  REQUIRE_FALSE(newer.has_value());
  INFO(newer.error().message());
  CHECK(newer.error().is(errc::unsupported));
  CHECK(newer.error().message().find("newer than this hub's") != std::string::npos);
}

void sqlite_exec(const fs::path& file, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  INFO(sql << ": " << (err ? err : ""));
  sqlite3_free(err);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}

}  // namespace

TEST_CASE("sqlite: a database from before schema versions is migrated keeping its rows; a newer one is refused", "[store][sqlite]") {
  SqliteBackend backend;
  std::string v1 = kNodesV1;
  v1.replace(v1.find("bytea"), 5, "BLOB");  // SQLite's spelling; the rest SQLite takes as it is
  // Its records, in the table as v1 made it (keyed by node and sequence, WITHOUT ROWID): v4
  // moves them into a rowid table.
  std::string rows =
      "CREATE TABLE records (node_id TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, kind INTEGER NOT NULL, "
      "hash BLOB NOT NULL, frame BLOB NOT NULL, PRIMARY KEY (node_id, seq)) WITHOUT ROWID; "
      "CREATE INDEX records_time ON records (node_id, time_ms)";
  const auto held = records(1, 7);
  for (const auto& r : held) {
    rows += "; INSERT INTO records VALUES ('old', " + std::to_string(r.seq) + ", " + std::to_string(r.time_ms) + ", " +
            std::to_string(r.kind) + ", X'" + hex_encode(r.hash) + "', X'" + hex_encode(r.frame) + "')";
  }
  sqlite_exec(backend.database(), v1 + "; " + kNodeV1Row + "; " + rows);
  {
    auto store = backend.open();
    CHECK(value_of(store->schema_version()) == backend.schema_version());
    auto old = value_of(store->node("old"));
    REQUIRE(old.has_value());
    CHECK(old->acked_seq == 7);
    CHECK(old->fleet == "");
    auto kept = scan(*store, "old", 1);
    REQUIRE(kept.size() == held.size());
    for (size_t i = 0; i < kept.size(); ++i) CHECK(same_record(kept[i], held[i]));
    CHECK(value_of(store->first_seq_at("old", held[3].time_ms)) == held[3].seq);  // the time index made again
    require_ok(store->set_fleet("old", "lab"));
    require_ok(store->commit_records("old", 7, records(8, 3), clock_at(1)));  // the other tables were made
    require_error(store->commit_records("old", 7, records(8, 3), clock_at(1)), errc::already_exists);
    CHECK(scan(*store, "old", 1).size() == 10);
  }
  CHECK(value_of(backend.open()->node("old"))->fleet == "lab");  // opened again: nothing to do
  sqlite_exec(backend.database(), "PRAGMA user_version = " + std::to_string(backend.schema_version() + 1));
  refused_as_newer(backend);
}

TEST_CASE("postgres: a database from before schema versions is migrated keeping its rows; a newer one is refused", "[store][postgres]") {
  PostgresBackend backend;
  {
    PgConn c = pg_connect(backend.database());
    pg_exec(c.get(), kNodesV1);
    std::string row = kNodeV1Row;
    row.replace(row.find("X'00'"), 5, "'\\x00'::bytea");  // PostgreSQL's bytea literal
    pg_exec(c.get(), row);
  }
  {
    auto store = backend.open();
    CHECK(value_of(store->schema_version()) == backend.schema_version());
    auto old = value_of(store->node("old"));
    REQUIRE(old.has_value());
    CHECK(old->acked_seq == 7);
    CHECK(old->fleet == "");
    require_ok(store->commit_records("old", 7, records(8, 3), clock_at(1)));
  }
  CHECK(value_of(postgres().query(backend.name(), "SELECT string_agg(version::text || ' ' || what, ', ' ORDER BY version) FROM schema_migrations")) ==
        "1 the tables, 2 nodes.fleet, 3 search columns");
  value_of(postgres().query(backend.name(), "INSERT INTO schema_migrations (version, what) VALUES (" +
                                                std::to_string(backend.schema_version() + 1) + ", 'from a newer hub')"));
  refused_as_newer(backend);
}

// ---- two hub instances on one database -----------------------------------------------------

TEST_CASE("postgres: two hub instances on one database: a publish on one wakes a node's long poll on the other", "[store][postgres]") {
  PostgresBackend backend;
  testing::TempDir dir;
  EcPrivateKey iam = value_of(EcPrivateKey::generate());
  auto root = value_of(offline_cache::TrustRoot::create({iam.public_key()}, 1));
  testing::write_text(dir / "trust.json", root.to_json());
  auto init = value_of(hub::init_hub_dir(dir / "hub", {}, dir / "trust.json"));
  std::string yaml = value_of(read_text_file(init.config));
  yaml.replace(yaml.find("127.0.0.1:8443"), 14, "127.0.0.1:0");
  yaml.replace(yaml.find("database: hub.db"), 16, "database: " + backend.database());
  testing::write_text(init.config, yaml + "activation: off\n");  // a software node below: no TPM to open a credential

  // Two instances of one configuration (one certificate, one database), as behind a balancer.
  std::vector<std::unique_ptr<testing::Background>> hubs;
  std::vector<sync::HubEndpoint> at;
  for (const char* name : {"a", "b"}) {
    const fs::path port_file = dir / (std::string(name) + ".port");
    hubs.push_back(std::make_unique<testing::Background>(
        std::vector<std::string>{OUTPOST_HUB_BIN, "--config", init.config.string(), "--port-file", port_file.string()},
        dir / (std::string(name) + ".log")));
    REQUIRE(testing::eventually([&] { return file_exists(port_file); }, 20));
    sync::HubEndpoint e;
    e.host = "127.0.0.1";
    e.port = static_cast<uint16_t>(std::stoi(value_of(read_text_file(port_file))));
    e.pin_sha256 = init.pin_sha256;
    at.push_back(e);
  }
  auto as = [&](sync::HubEndpoint e, const char* role) {
    e.bearer_token = value_of(read_text_file(dir / "hub" / (std::string(role) + ".token"))).substr(0, 64);
    return e;
  };
  auto request = [](const sync::HubEndpoint& e, sync::HubRequest req) {
    auto r = sync::hub_request_blocking(e, std::move(req));
    INFO((r ? r->body : r.error().message()));
    REQUIRE(r.has_value());
    return *r;
  };

  // A node enrols on a; v1 is published on a; the node polls b and is served v1.
  EcPrivateKey ak = value_of(EcPrivateKey::generate());
  const auto node = testing::soft_identity(ak.public_key());
  sync::HubRequest enrol{"POST", "/v1/enroll", node.to_json()};
  enrol.headers["X-Outpost-Want-Token"] = "1";  // activation is off: trusted on first use
  auto enrolled = request(at[0], enrol);
  REQUIRE(enrolled.status == 200);
  const std::string node_token(boost::json::parse(enrolled.body).at("node_token").as_string());
  auto publish = [&](uint64_t version) {
    const Bytes b = testing::sign_bundle(testing::make_bundle({.version = version}), {&iam});
    return request(as(at[0], "iam"), {"POST", "/v1/bundles", std::string(as_chars(b)), "application/vnd.outpost.bundle"}).status;
  };
  REQUIRE(publish(1) == 200);
  sync::HubRequest poll_now{"GET", "/v1/bundle?node=" + node.node_id};
  poll_now.headers["X-Outpost-Node-Token"] = node_token;  // a's token is b's: one certificate
  auto first = request(at[1], poll_now);
  REQUIRE(first.status == 200);
  REQUIRE(first.header("x-outpost-bundle-version") == "1");

  // It long-polls b for something newer (held up to 30 s); v2 is published on a.
  std::optional<sync::HubResponse> answer;
  std::chrono::steady_clock::time_point published, answered;
  std::thread poller([&] {
    sync::HubRequest poll("GET", "/v1/bundle?wait=30&node=" + node.node_id);
    poll.headers["If-None-Match"] = first.header("etag");
    poll.headers["X-Outpost-Node-Token"] = node_token;
    poll.timeout = std::chrono::seconds(45);
    auto r = sync::hub_request_blocking(at[1], std::move(poll));
    answered = std::chrono::steady_clock::now();
    if (r) answer = *r;
  });
  const bool waiting = testing::eventually([&] {
    auto m = sync::hub_request_blocking(as(at[1], "operator"), {"GET", "/metrics"});
    return m && m->body.find("\noutpost_hub_bundle_waiters 1\n") != std::string::npos;
  }, 20);
  published = std::chrono::steady_clock::now();
  const unsigned published_status = publish(2);
  poller.join();
  REQUIRE(waiting);
  REQUIRE(published_status == 200);
  REQUIRE(answer.has_value());
  CHECK(answer->status == 200);
  CHECK(answer->header("x-outpost-bundle-version") == "2");
  // Woken by a's NOTIFY, not by the end of the hold (30 s). How soon is a benchmark's to say
  // (docs/benchmarks.md); here only that it was not the hold's end.
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(answered - published);
  INFO("publish on a to the answer on b: " << took.count() << " ms");
  CHECK(took < std::chrono::seconds(15));
  for (auto& h : hubs) CHECK(h->stop() == 0);
}

// ---- one SQLite hub under concurrent uploads ------------------------------------------------

// With one place in the queue, six uploads sent at once: each past the first waits (at least
// one does, as each takes milliseconds to verify), none is refused, and the enrolments and
// uploads all go through the commit thread.
TEST_CASE("sqlite: uploads past the ingest queue wait their turn rather than being refused, and are stored through the commit thread", "[store][sqlite]") {
  testing::TempDir dir;
  EcPrivateKey iam = value_of(EcPrivateKey::generate());
  testing::write_text(dir / "trust.json", value_of(offline_cache::TrustRoot::create({iam.public_key()}, 1)).to_json());
  auto init = value_of(hub::init_hub_dir(dir / "hub", {}, dir / "trust.json"));
  // One upload at a time in the queue: every other one must wait for its place.
  testing::HubUnderTest hub(init, dir.path(), "activation: off\ningest_queue: 1\n");
  const sync::HubEndpoint& at = hub.at();

  constexpr int kNodes = 6, kRecords = 3000;  // large enough that each is still being verified when the next arrives
  std::vector<testing::SoftAk> aks(kNodes);
  std::vector<attestation::NodeIdentity> nodes;
  std::vector<std::string> bodies;
  for (int i = 0; i < kNodes; ++i) {
    nodes.push_back(testing::soft_identity(aks[i].pub()));
    auto enrolled = sync::hub_request_blocking(at, {"POST", "/v1/enroll", nodes.back().to_json()});
    REQUIRE(enrolled.has_value());
    REQUIRE(enrolled->status == 200);
    bodies.push_back(value_of(testing::signed_decisions(dir / ("log-" + std::to_string(i)), aks[i], "agent", kRecords)));
  }
  std::latch go(kNodes);
  std::vector<Result<sync::HubResponse>> answers(kNodes, fail(errc::io, "not sent"));
  std::vector<std::thread> senders;
  for (int i = 0; i < kNodes; ++i) {
    senders.emplace_back([&, i] {
      go.arrive_and_wait();
      sync::HubRequest up("POST", "/v1/nodes/" + nodes[i].node_id + "/records", bodies[i], "application/vnd.outpost.audit-frames");
      up.timeout = std::chrono::seconds(60);
      answers[i] = sync::hub_request_blocking(at, std::move(up));
    });
  }
  for (auto& t : senders) t.join();
  for (int i = 0; i < kNodes; ++i) {
    INFO("node " << i << ": " << (answers[i] ? answers[i]->body : answers[i].error().message()));
    REQUIRE(answers[i].has_value());
    CHECK(answers[i]->status == 200);
    if (answers[i]->status == 200) CHECK(boost::json::parse(answers[i]->body).at("stored").to_number<int>() == kRecords + 1);
  }
  auto m = sync::hub_request_blocking(hub.as("operator"), {"GET", "/metrics"});
  REQUIRE(m.has_value());
  auto metric = [&](const std::string& name) { return testing::metric_value(m->body, name, -1); };
  INFO(m->body);
  CHECK(metric("outpost_hub_ingest_waits_total") >= 1);
  // The six enrolments and six uploads went through the commit thread's groups.
  CHECK(metric("outpost_hub_group_commit_items_total") == 2 * kNodes);
  CHECK(metric("outpost_hub_group_commits_total") >= 1);
  CHECK(metric("outpost_hub_group_commits_total") <= 2 * kNodes);
  auto store = value_of(hub::open_store((dir / "hub" / "hub.db").string()));
  for (const auto& n : nodes) CHECK(value_of(store->node(n.node_id))->acked_seq == kRecords + 1);
  CHECK(hub.stop() == 0);
}
