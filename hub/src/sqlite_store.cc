// The SQLite backend of hub/store.h. Every sqlite3_* return code is checked by check() below,
// the one place they become Errors (naming the function and sqlite3_errmsg).
#include <sqlite3.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "outpost/base/errors.h"
#include "outpost/hub/store.h"

namespace outpost::hub {
namespace {

// Schema v1, as hubs before versioning made it (IF NOT EXISTS: on their databases, which say
// user_version 0, it changes nothing).
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS nodes (
  node_id TEXT PRIMARY KEY,
  identity_json TEXT NOT NULL,
  ak_pem TEXT NOT NULL,
  enrolled_at TEXT NOT NULL,
  acked_seq INTEGER NOT NULL DEFAULT 0,
  acked_hash BLOB NOT NULL,
  clock INTEGER, reset_count INTEGER, restart_count INTEGER, safe INTEGER,
  last_contact_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
  node_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  hash BLOB NOT NULL,
  frame BLOB NOT NULL,
  PRIMARY KEY (node_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_time ON records (node_id, time_ms);
CREATE TABLE IF NOT EXISTS evidence_state (
  node_id TEXT PRIMARY KEY,
  package BLOB NOT NULL,
  received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
  version INTEGER PRIMARY KEY,
  sha256 TEXT NOT NULL,
  bytes BLOB NOT NULL,
  published_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  node_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  detail TEXT NOT NULL,
  at TEXT NOT NULL
);
)sql";

struct Migration {
  int version;
  const char* what;
  const char* sql;
};
// In order; the last is kSqliteSchemaVersion (store.h). PRAGMA user_version records where a database
// is: it lives in the file's header and is written in the migration's transaction.
constexpr Migration kMigrations[] = {
    {1, "the tables", kSchemaV1},
    {2, "nodes.fleet", "ALTER TABLE nodes ADD COLUMN fleet TEXT NOT NULL DEFAULT ''"},
    {3, "search columns",
     "ALTER TABLE records ADD COLUMN agent TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE records ADD COLUMN event TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE records ADD COLUMN subject TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE records ADD COLUMN verdict TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE records ADD COLUMN reason TEXT NOT NULL DEFAULT '';"
     "CREATE INDEX records_at ON records (time_ms, seq);"
     "CREATE INDEX records_agent ON records (agent, time_ms, seq);"
     "CREATE INDEX records_denies ON records (time_ms, seq) WHERE verdict = 'deny';"
     "ALTER TABLE nodes ADD COLUMN last_attested_ms INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE nodes ADD COLUMN bundle_version INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE nodes ADD COLUMN durable_seq INTEGER NOT NULL DEFAULT 0;"},
    // A rowid table, rows in the order stored, with (node_id, seq) a unique index beside it:
    // the search indexes ordered by time end in an 8-byte rowid instead of the node id and seq,
    // so they hold three times as many entries a page, and an upload's inserts into them,
    // scattered in time across a fleet, dirty a third as many pages (docs/benchmarks.md).
    {4, "records in a rowid table",
     "CREATE TABLE records_v4 ("
     "  node_id TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, kind INTEGER NOT NULL,"
     "  hash BLOB NOT NULL, frame BLOB NOT NULL, agent TEXT NOT NULL DEFAULT '', event TEXT NOT NULL DEFAULT '',"
     "  subject TEXT NOT NULL DEFAULT '', verdict TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',"
     "  UNIQUE (node_id, seq));"
     "INSERT INTO records_v4 (node_id, seq, time_ms, kind, hash, frame, agent, event, subject, verdict, reason)"
     "  SELECT node_id, seq, time_ms, kind, hash, frame, agent, event, subject, verdict, reason FROM records ORDER BY node_id, seq;"
     "DROP TABLE records;"
     "ALTER TABLE records_v4 RENAME TO records;"
     // seq in it, as the key put it there before: first_seq_at and a node's search read the
     // index alone.
     "CREATE INDEX records_time ON records (node_id, time_ms, seq);"
     "CREATE INDEX records_at ON records (time_ms, seq);"
     "CREATE INDEX records_agent ON records (agent, time_ms, seq);"
     "CREATE INDEX records_denies ON records (time_ms, seq) WHERE verdict = 'deny';"},
};
static_assert(std::size(kMigrations) == static_cast<size_t>(kSqliteSchemaVersion));

class SqliteStore;

Result<void> check(sqlite3* db, int rc, const char* function) {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return ok();
  std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return fail(rc == SQLITE_FULL ? std::error_code(ENOSPC, std::generic_category()) : make_error_code(errc::io),
              std::string(function) + ": " + msg);
}

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    int rc = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr);
    OUTPOST_CHECK(rc == SQLITE_OK, "a constant SQL statement must prepare");
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); return *this; }
  Stmt& bind(int i, const std::string& v) { sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); return *this; }
  Stmt& bind(int i, ByteView v) { sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); return *this; }
  Stmt& bind_null(int i) { sqlite3_bind_null(s_, i); return *this; }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  // SQLITE_ROW -> true, SQLITE_DONE -> false.
  Result<bool> step() {
    int rc = sqlite3_step(s_);
    OUTPOST_TRY_VOID(check(db_, rc, "sqlite3_step"));
    return rc == SQLITE_ROW;
  }
  Result<void> run() {
    OUTPOST_TRY(bool row, step());
    (void)row;
    return ok();
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  bool null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  std::string text(int c) const {
    auto* p = sqlite3_column_text(s_, c);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(s_, c))) : std::string();
  }
  Bytes blob(int c) const {
    auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(s_, c));
    return p ? Bytes(p, p + sqlite3_column_bytes(s_, c)) : Bytes();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

Digest to_digest(const Bytes& b) {
  Digest d{};
  if (b.size() == d.size()) std::memcpy(d.data(), b.data(), d.size());
  return d;
}

NodeRow node_of(const Stmt& s) {
  NodeRow n;
  n.node_id = s.text(0);
  n.identity_json = s.text(1);
  n.ak_pem = s.text(2);
  n.enrolled_at = s.text(3);
  n.acked_seq = static_cast<uint64_t>(s.i64(4));
  n.acked_hash = to_digest(s.blob(5));
  if (!s.null(6)) {
    attestation::ClockInfo c;
    c.clock = static_cast<uint64_t>(s.i64(6));
    c.reset_count = static_cast<uint32_t>(s.i64(7));
    c.restart_count = static_cast<uint32_t>(s.i64(8));
    c.safe = s.i64(9) != 0;
    n.last_clock = c;
  }
  n.last_contact_ms = s.i64(10);
  n.fleet = s.text(11);
  n.last_attested_ms = s.i64(12);
  n.bundle_version = static_cast<uint64_t>(s.i64(13));
  n.durable_seq = static_cast<uint64_t>(s.i64(14));
  return n;
}

constexpr const char* kNodeColumns =
    "SELECT node_id, identity_json, ak_pem, enrolled_at, acked_seq, acked_hash, clock, reset_count, restart_count, safe, "
    "last_contact_ms, fleet, last_attested_ms, bundle_version, durable_seq FROM nodes";

// A record's search columns from `first` on: agent, event, subject, verdict, reason.
void search_columns_of(const Stmt& s, int first, RecordRow& r) {
  r.agent = s.text(first);
  r.event = s.text(first + 1);
  r.subject = s.text(first + 2);
  r.verdict = s.text(first + 3);
  r.reason = s.text(first + 4);
}

// SQLite has one writer at a time per file. Stores of one process on one file (the hub's event
// loop and its ingest threads) take turns on this lock instead of meeting SQLITE_BUSY and
// sleeping in SQLite's busy handler, which would stall the loop and, under steady ingest, fail
// its writes after the busy timeout. (Other processes on the file still meet the busy timeout.)
std::mutex& writer_lock(const std::string& file) {
  static std::mutex registry_mu;
  static std::map<std::string, std::unique_ptr<std::mutex>> registry;
  std::lock_guard lock(registry_mu);
  auto& m = registry[file];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

class SqliteStore final : public Store {
 public:
  SqliteStore(sqlite3* db, std::mutex& writer) : db_(db), writer_(writer) {}
  ~SqliteStore() override { sqlite3_close(db_); }

  Result<void> exec(const char* sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
    if (err) sqlite3_free(err);
    return check(db_, rc, "sqlite3_exec");
  }

  Result<std::optional<NodeRow>> node(const std::string& id) override {
    Stmt s(db_, (std::string(kNodeColumns) + " WHERE node_id = ?").c_str());
    s.bind(1, id);
    OUTPOST_TRY(bool row, s.step());
    if (!row) return std::optional<NodeRow>();
    return std::optional<NodeRow>(node_of(s));
  }

  Result<std::vector<NodeRow>> nodes() override {
    Stmt s(db_, (std::string(kNodeColumns) + " ORDER BY node_id").c_str());
    std::vector<NodeRow> out;
    for (;;) {
      OUTPOST_TRY(bool row, s.step());
      if (!row) break;
      out.push_back(node_of(s));
    }
    return out;
  }

  Result<void> enroll(const NodeRow& n) override {
    std::lock_guard one_writer(writer_);
    return insert_node(n);
  }
  Result<void> insert_node(const NodeRow& n) {
    Stmt s(db_, "INSERT INTO nodes (node_id, identity_json, ak_pem, enrolled_at, acked_seq, acked_hash, fleet) VALUES (?,?,?,?,0,?,?)");
    s.bind(1, n.node_id).bind(2, n.identity_json).bind(3, n.ak_pem).bind(4, n.enrolled_at).bind(5, ByteView(n.acked_hash));
    s.bind(6, n.fleet);
    auto r = s.run();
    if (!r && sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_PRIMARYKEY) {
      return fail(errc::already_exists, "node " + n.node_id + " is already enrolled");
    }
    return r;
  }

  using Store::commit_records;
  Result<void> commit_records(const std::string& node_id, uint64_t expect_acked, const std::vector<RecordRow>& rows,
                              const std::optional<attestation::ClockInfo>& last_clock, const CommitAlso& also) override {
    if (rows.empty()) return ok();
    OUTPOST_TRY_VOID(check_rows_follow(expect_acked, rows));
    std::lock_guard one_writer(writer_);
    OUTPOST_TRY_VOID(exec("BEGIN IMMEDIATE"));
    auto r = commit_locked(node_id, expect_acked, rows, last_clock, also);
    if (r) r = exec("COMMIT");
    // A failed COMMIT (SQLITE_FULL, SQLITE_IOERR) can leave the transaction open: it must not
    // linger, or the next upload would find these rows and take them for duplicates of records
    // that were never stored.
    if (!r && !sqlite3_get_autocommit(db_)) (void)exec("ROLLBACK");
    return r;
  }

  // One transaction; each item in a savepoint of its own, so one refused (its node's acked
  // sequence moved) is undone alone. An error that ends the transaction itself (SQLite rolls
  // back on SQLITE_FULL or an I/O error) fails the whole group, as does a failed COMMIT.
  std::vector<Result<void>> commit_group(const std::vector<const CommitItem*>& items) override {
    std::vector<Result<void>> out;
    out.reserve(items.size());
    auto fail_all = [&](const Result<void>& why) {
      out.assign(items.size(), why);
      return out;
    };
    std::lock_guard one_writer(writer_);
    if (auto b = exec("BEGIN IMMEDIATE"); !b) return fail_all(b);
    for (const CommitItem* c : items) {
      Result<void> r = c->enrol ? Result<void>(ok()) : check_rows_follow(c->expect_acked, c->rows);
      if (r && (c->enrol || !c->rows.empty())) {
        if (auto sp = exec("SAVEPOINT upload"); !sp) {
          if (!sqlite3_get_autocommit(db_)) (void)exec("ROLLBACK");
          return fail_all(sp);
        }
        r = c->enrol ? insert_node(*c->enrol) : commit_locked(c->node_id, c->expect_acked, c->rows, c->last_clock, c->also);
        if (!r && sqlite3_get_autocommit(db_)) return fail_all(r);  // the transaction is gone
        auto end = r ? exec("RELEASE upload") : exec("ROLLBACK TO upload; RELEASE upload");
        if (!end) {
          (void)exec("ROLLBACK");
          return fail_all(end);
        }
      }
      out.push_back(std::move(r));
    }
    if (auto c = exec("COMMIT"); !c) {
      if (!sqlite3_get_autocommit(db_)) (void)exec("ROLLBACK");  // as in commit_records
      return fail_all(c);
    }
    return out;
  }

  Result<std::optional<Digest>> record_hash(const std::string& node_id, uint64_t seq) override {
    Stmt s(db_, "SELECT hash FROM records WHERE node_id = ? AND seq = ?");
    s.bind(1, node_id).bind(2, static_cast<int64_t>(seq));
    OUTPOST_TRY(bool row, s.step());
    if (!row) return std::optional<Digest>();
    return std::optional<Digest>(to_digest(s.blob(0)));
  }

  Result<void> scan_records(const std::string& node_id, uint64_t from_seq,
                            const std::function<bool(const RecordRow&)>& each) override {
    Stmt s(db_, "SELECT seq, time_ms, kind, hash, frame, agent, event, subject, verdict, reason FROM records "
                "WHERE node_id = ? AND seq >= ? ORDER BY seq");
    s.bind(1, node_id).bind(2, static_cast<int64_t>(from_seq));
    for (;;) {
      OUTPOST_TRY(bool row, s.step());
      if (!row) return ok();
      RecordRow r;
      r.seq = static_cast<uint64_t>(s.i64(0));
      r.time_ms = s.i64(1);
      r.kind = static_cast<uint8_t>(s.i64(2));
      r.hash = to_digest(s.blob(3));
      r.frame = s.blob(4);
      search_columns_of(s, 5, r);
      if (!each(r)) return ok();
    }
  }

  Result<uint64_t> first_seq_at(const std::string& node_id, int64_t time_ms) override {
    Stmt s(db_, "SELECT MIN(seq) FROM records WHERE node_id = ? AND time_ms >= ?");
    s.bind(1, node_id).bind(2, time_ms);
    OUTPOST_TRY(bool row, s.step());
    if (!row || s.null(0)) return uint64_t{0};
    return static_cast<uint64_t>(s.i64(0));
  }

  Result<void> touch(const std::string& node_id, int64_t now_ms) override {
    std::lock_guard one_writer(writer_);
    Stmt s(db_, "UPDATE nodes SET last_contact_ms = ? WHERE node_id = ?");
    s.bind(1, now_ms).bind(2, node_id);
    return s.run();
  }

  Result<void> set_fleet(const std::string& node_id, const std::string& fleet) override {
    std::lock_guard one_writer(writer_);
    Stmt s(db_, "UPDATE nodes SET fleet = ? WHERE node_id = ?");
    s.bind(1, fleet).bind(2, node_id);
    OUTPOST_TRY_VOID(s.run());
    if (sqlite3_changes(db_) == 0) return fail(errc::not_found, "node " + node_id + " is not enrolled");
    return ok();
  }

  Result<void> touch_attested(const std::string& node_id, int64_t now_ms) override {
    std::lock_guard one_writer(writer_);
    Stmt s(db_, "UPDATE nodes SET last_contact_ms = ?, last_attested_ms = ? WHERE node_id = ?");
    s.bind(1, now_ms).bind(2, now_ms).bind(3, node_id);
    return s.run();
  }

  Result<std::map<std::string, uint64_t>> alert_counts() override {
    Stmt s(db_, "SELECT node_id, count(*) FROM alerts GROUP BY node_id");
    std::map<std::string, uint64_t> out;
    for (;;) {
      OUTPOST_TRY(bool row, s.step());
      if (!row) return out;
      out[s.text(0)] = static_cast<uint64_t>(s.i64(1));
    }
  }

  Result<std::vector<FoundRecord>> search_records(const RecordQuery& q) override {
    // Only the filters given, so that an index can serve them (denies: a partial index; an
    // agent: (agent, time); a node: (node, time); else the time index from the newest).
    std::string sql = "SELECT node_id, seq, time_ms, kind, hash, agent, event, subject, verdict, reason FROM records WHERE 1 = 1";
    std::vector<std::string> texts;
    if (!q.node_id.empty()) {
      sql += " AND node_id = ?";
      texts.push_back(q.node_id);
    }
    if (!q.agent.empty()) {
      sql += " AND agent = ?";
      texts.push_back(q.agent);
    }
    if (!q.subject.empty()) {  // server/tool, or the tool alone: compared, never a pattern
      sql += " AND (subject = ? OR substr(subject, -(length(?) + 1)) = '/' || ?)";
      texts.insert(texts.end(), {q.subject, q.subject, q.subject});
    }
    if (q.verdict == "deny" || q.verdict == "allow") sql += " AND verdict = '" + q.verdict + "'";  // one of two constants
    if (q.decisions_only) sql += " AND kind = 0";
    if (q.since_ms) sql += " AND time_ms >= " + std::to_string(q.since_ms);
    if (q.until_ms) sql += " AND time_ms <= " + std::to_string(q.until_ms);
    sql += " ORDER BY time_ms DESC, seq DESC LIMIT " + std::to_string(q.limit);
    Stmt s(db_, sql.c_str());
    for (size_t i = 0; i < texts.size(); ++i) s.bind(static_cast<int>(i + 1), texts[i]);
    std::vector<FoundRecord> out;
    for (;;) {
      OUTPOST_TRY(bool row, s.step());
      if (!row) return out;
      FoundRecord f;
      f.node_id = s.text(0);
      f.row.seq = static_cast<uint64_t>(s.i64(1));
      f.row.time_ms = s.i64(2);
      f.row.kind = static_cast<uint8_t>(s.i64(3));
      f.row.hash = to_digest(s.blob(4));
      search_columns_of(s, 5, f.row);
      out.push_back(std::move(f));
    }
  }

  Result<int> schema_version() override {
    Stmt s(db_, "PRAGMA user_version");
    OUTPOST_TRY(bool row, s.step());
    return row ? static_cast<int>(s.i64(0)) : 0;
  }

  // Brings the database to kSqliteSchemaVersion in one IMMEDIATE transaction (the write lock is held
  // from its start, so two processes opening one file cannot both migrate).
  Result<void> migrate() {
    std::lock_guard one_writer(writer_);
    OUTPOST_TRY_VOID(exec("BEGIN IMMEDIATE"));
    int from = 0;
    auto r = [&]() -> Result<void> {
      OUTPOST_TRY(int at, schema_version());
      from = at;
      if (at > kSqliteSchemaVersion) {
        return fail(errc::unsupported, "the database is at schema v" + std::to_string(at) + ", newer than this hub's v" +
                                           std::to_string(kSqliteSchemaVersion) + ": run a hub at least as new as the one that wrote it");
      }
      for (const auto& m : kMigrations) {
        if (m.version <= at) continue;
        auto applied = exec(m.sql);
        if (!applied) return fail(applied.error().wrap("schema migration to v" + std::to_string(m.version) + " (" + m.what + ")"));
      }
      if (at < kSqliteSchemaVersion) OUTPOST_TRY_VOID(exec(("PRAGMA user_version = " + std::to_string(kSqliteSchemaVersion)).c_str()));
      return exec("COMMIT");
    }();
    if (!r && !sqlite3_get_autocommit(db_)) (void)exec("ROLLBACK");
    // A migration (v4: the records table written again) went through the WAL: copy it into
    // the file now and give the WAL's space back, rather than leave a log the size of the table (the old table's
    // pages stay in the file as free pages, for new records; VACUUM would return them).
    if (r && from < kSqliteSchemaVersion) (void)exec("PRAGMA wal_checkpoint(TRUNCATE)");
    return r;
  }

  Result<void> put_evidence_state(const std::string& node_id, const Bytes& package, const std::string& at) override {
    std::lock_guard one_writer(writer_);
    Stmt s(db_, "INSERT OR REPLACE INTO evidence_state (node_id, package, received_at) VALUES (?,?,?)");
    s.bind(1, node_id).bind(2, ByteView(package)).bind(3, at);
    return s.run();
  }

  Result<std::optional<Bytes>> evidence_state(const std::string& node_id) override {
    Stmt s(db_, "SELECT package FROM evidence_state WHERE node_id = ?");
    s.bind(1, node_id);
    OUTPOST_TRY(bool row, s.step());
    if (!row) return std::optional<Bytes>();
    return std::optional<Bytes>(s.blob(0));
  }

  Result<void> put_bundle(const BundleRow& b) override {
    std::lock_guard one_writer(writer_);
    Stmt s(db_, "INSERT INTO bundles (version, sha256, bytes, published_at) VALUES (?,?,?,?)");
    s.bind(1, static_cast<int64_t>(b.version)).bind(2, b.sha256).bind(3, ByteView(b.bytes)).bind(4, b.published_at);
    auto r = s.run();
    if (!r && sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_PRIMARYKEY) {
      return fail(errc::already_exists, "bundle v" + std::to_string(b.version) + " is already published");
    }
    return r;
  }

  Result<std::optional<BundleRow>> latest_bundle() override {
    Stmt s(db_, "SELECT version, sha256, bytes, published_at FROM bundles ORDER BY version DESC LIMIT 1");
    OUTPOST_TRY(bool row, s.step());
    if (!row) return std::optional<BundleRow>();
    BundleRow b;
    b.version = static_cast<uint64_t>(s.i64(0));
    b.sha256 = s.text(1);
    b.bytes = s.blob(2);
    b.published_at = s.text(3);
    return std::optional<BundleRow>(std::move(b));
  }

  Result<std::vector<BundleRow>> recent_bundles(size_t limit) override {
    Stmt s(db_, "SELECT version, sha256, bytes, published_at FROM bundles ORDER BY version DESC LIMIT ?");
    s.bind(1, static_cast<int64_t>(limit));
    std::vector<BundleRow> out;
    for (;;) {
      OUTPOST_TRY(bool row, s.step());
      if (!row) return out;
      BundleRow b;
      b.version = static_cast<uint64_t>(s.i64(0));
      b.sha256 = s.text(1);
      b.bytes = s.blob(2);
      b.published_at = s.text(3);
      out.push_back(std::move(b));
    }
  }

  Result<void> add_alert(const AlertRow& a) override {
    std::lock_guard one_writer(writer_);
    Stmt s(db_, "INSERT INTO alerts (node_id, kind, detail, at) VALUES (?,?,?,?)");
    s.bind(1, a.node_id).bind(2, a.kind).bind(3, a.detail).bind(4, a.at);
    return s.run();
  }

  Result<std::vector<AlertRow>> alerts(const std::string& node_id) override {
    Stmt s(db_, "SELECT node_id, kind, detail, at FROM alerts WHERE node_id = ? ORDER BY id");
    s.bind(1, node_id);
    std::vector<AlertRow> out;
    for (;;) {
      OUTPOST_TRY(bool row, s.step());
      if (!row) return out;
      out.push_back({s.text(0), s.text(1), s.text(2), s.text(3)});
    }
  }

 private:
  Result<void> commit_locked(const std::string& node_id, uint64_t expect_acked, const std::vector<RecordRow>& rows,
                             const std::optional<attestation::ClockInfo>& clock, const CommitAlso& also) {
    Stmt cur(db_, "SELECT acked_seq FROM nodes WHERE node_id = ?");
    cur.bind(1, node_id);
    OUTPOST_TRY(bool found, cur.step());
    if (!found) return fail(errc::not_found, "node " + node_id + " is not enrolled");
    if (static_cast<uint64_t>(cur.i64(0)) != expect_acked) {
      return fail(errc::already_exists, "node " + node_id + ": records after seq " + std::to_string(expect_acked) +
                                            " were stored meanwhile");
    }
    Stmt ins(db_, "INSERT INTO records (node_id, seq, time_ms, kind, hash, frame, agent, event, subject, verdict, reason) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?)");
    for (const auto& r : rows) {
      ins.reset();
      ins.bind(1, node_id).bind(2, static_cast<int64_t>(r.seq)).bind(3, r.time_ms).bind(4, int64_t{r.kind});
      ins.bind(5, ByteView(r.hash)).bind(6, ByteView(r.frame));
      ins.bind(7, r.agent).bind(8, r.event).bind(9, r.subject).bind(10, r.verdict).bind(11, r.reason);
      OUTPOST_TRY_VOID(ins.run());
    }
    Stmt up(db_,
            "UPDATE nodes SET acked_seq = ?, acked_hash = ?, clock = ?, reset_count = ?, restart_count = ?, safe = ?, "
            "durable_seq = coalesce(?, durable_seq), last_contact_ms = max(last_contact_ms, ?), "
            "bundle_version = max(bundle_version, coalesce(?, 0)) WHERE node_id = ?");
    up.bind(1, static_cast<int64_t>(rows.back().seq)).bind(2, ByteView(rows.back().hash));
    if (clock) {
      up.bind(3, static_cast<int64_t>(clock->clock)).bind(4, int64_t{clock->reset_count});
      up.bind(5, int64_t{clock->restart_count}).bind(6, int64_t{clock->safe ? 1 : 0});
    } else {
      up.bind_null(3).bind_null(4).bind_null(5).bind_null(6);
    }
    if (also.durable_seq) {
      up.bind(7, static_cast<int64_t>(*also.durable_seq));
    } else {
      up.bind_null(7);
    }
    up.bind(8, also.contact_ms);
    if (also.bundle_version) {
      up.bind(9, static_cast<int64_t>(*also.bundle_version));
    } else {
      up.bind_null(9);
    }
    up.bind(10, node_id);
    return up.run();
  }

  sqlite3* db_;
  std::mutex& writer_;
};

}  // namespace

Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& file, int64_t cache_kib) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    auto err = check(db, rc, "sqlite3_open_v2");
    sqlite3_close(db);
    return fail(err.error().wrap(file.string()));
  }
  auto store = std::make_unique<SqliteStore>(db, writer_lock(std::filesystem::absolute(file).lexically_normal().string()));
  sqlite3_busy_timeout(db, 5000);
  for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    auto r = store->exec(sql);
    if (!r) return fail(r.error().wrap(file.string()));
  }
  if (cache_kib > 0) {
    // Negative: in KiB rather than pages. The committer's savepoints keep their journal in
    // memory too, not in a temporary file.
    for (const std::string& sql : {"PRAGMA cache_size=-" + std::to_string(cache_kib), std::string("PRAGMA temp_store=MEMORY")}) {
      if (auto r = store->exec(sql.c_str()); !r) return fail(r.error().wrap(file.string()));
    }
  }
  if (auto r = store->migrate(); !r) return fail(r.error().wrap(file.string()));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace outpost::hub
