// The PostgreSQL backend of hub/store.h, through libpq. Every libpq status is checked by check()
// below, the one place they become Errors (naming the libpq function, with the server's message
// and SQLSTATE). Values only ever travel as query parameters (text for numbers and strings,
// binary for bytea) and results come back in binary; no SQL is built from values.
//
// One connection per Store, used in blocking mode: the hub runs one io_context on one thread
// (docs/hub.md "Threading"), so calls never overlap, exactly as with SQLite. Hub instances
// scale out by each holding its own connection to one database; commit_records' conditional
// UPDATE is what keeps them from both appending after the same record.
#include <libpq-fe.h>

#include <cstring>
#include <memory>
#include <string_view>

#include "outpost/base/errors.h"
#include "outpost/base/log.h"
#include "outpost/hub/store.h"

namespace outpost::hub {
namespace {

// Schema v1, as hubs before versioning made it (IF NOT EXISTS: on their databases, which have
// no schema_migrations table, it changes nothing).
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS nodes (
  node_id text PRIMARY KEY,
  identity_json text NOT NULL,
  ak_pem text NOT NULL,
  enrolled_at text NOT NULL,
  acked_seq bigint NOT NULL DEFAULT 0,
  acked_hash bytea NOT NULL,
  clock bigint, reset_count bigint, restart_count bigint, safe boolean,
  last_contact_ms bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
  node_id text NOT NULL,
  seq bigint NOT NULL,
  time_ms bigint NOT NULL,
  kind smallint NOT NULL,
  hash bytea NOT NULL,
  frame bytea NOT NULL,
  PRIMARY KEY (node_id, seq)
);
CREATE INDEX IF NOT EXISTS records_time ON records (node_id, time_ms);
CREATE TABLE IF NOT EXISTS evidence_state (
  node_id text PRIMARY KEY,
  package bytea NOT NULL,
  received_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
  version bigint PRIMARY KEY,
  sha256 text NOT NULL,
  bytes bytea NOT NULL,
  published_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
  id bigserial PRIMARY KEY,
  node_id text NOT NULL,
  kind text NOT NULL,
  detail text NOT NULL,
  at text NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_node ON alerts (node_id, id);
)sql";

struct Migration {
  int version;
  const char* what;
  const char* sql;
};
// In order; the last is kPostgresSchemaVersion (store.h). schema_migrations holds a row per version
// applied, inserted in the migration's transaction (PostgreSQL's DDL is transactional).
constexpr Migration kMigrations[] = {
    {1, "the tables", kSchemaV1},
    {2, "nodes.fleet", "ALTER TABLE nodes ADD COLUMN fleet text NOT NULL DEFAULT ''"},
    {3, "search columns",
     "ALTER TABLE records ADD COLUMN agent text NOT NULL DEFAULT '', ADD COLUMN event text NOT NULL DEFAULT '', "
     "ADD COLUMN subject text NOT NULL DEFAULT '', ADD COLUMN verdict text NOT NULL DEFAULT '', "
     "ADD COLUMN reason text NOT NULL DEFAULT '';"
     "CREATE INDEX records_at ON records (time_ms, seq);"
     "CREATE INDEX records_agent ON records (agent, time_ms, seq);"
     "CREATE INDEX records_denies ON records (time_ms, seq) WHERE verdict = 'deny';"
     "ALTER TABLE nodes ADD COLUMN last_attested_ms bigint NOT NULL DEFAULT 0, ADD COLUMN bundle_version bigint NOT NULL DEFAULT 0, "
     "ADD COLUMN durable_seq bigint NOT NULL DEFAULT 0;"},
};
static_assert(std::size(kMigrations) == static_cast<size_t>(kPostgresSchemaVersion));

constexpr const char* kMigrationsTable =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, what text NOT NULL, "
    "applied_at timestamptz NOT NULL DEFAULT now())";

// The key of the transaction-scoped advisory lock that serialises schema creation
// (0x6f7574706f7374, "outpost" in ASCII): instances starting together migrate one after the
// other (concurrent CREATE ... IF NOT EXISTS can otherwise collide in the catalog).
constexpr const char* kSchemaLock = "SELECT pg_advisory_xact_lock(31372865377891188)";

// Rows per page of scan_records: a node's history is streamed, never loaded whole.
constexpr int kScanPage = 1000;

// Type OIDs of the parameters sent (fixed in PostgreSQL's catalog; the constants live in the
// server headers, which libpq-dev does not ship).
constexpr Oid kBoolOid = 16, kByteaOid = 17, kInt8Oid = 20, kTextOid = 25;

struct ResultClear {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultClear>;
struct ConnFinish {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConn = std::unique_ptr<PGconn, ConnFinish>;

// libpq's messages end in a newline and may span lines, indented by tabs; an Error's context
// is one line.
std::string one_line(const char* msg) {
  std::string s;
  for (const char* p = msg ? msg : ""; *p; ++p) {
    const bool space = *p == '\n' || *p == '\t' || *p == ' ';
    if (!space) {
      s.push_back(*p);
    } else if (!s.empty() && s.back() != ' ') {
      s.push_back(' ');
    }
  }
  if (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::error_code code_of_sqlstate(std::string_view state) {
  if (state == "23505") return make_error_code(errc::already_exists);  // unique_violation
  // serialization_failure, deadlock_detected: the transaction lost to a concurrent one and
  // wrote nothing; to the caller that is the other writer having got there first.
  if (state == "40001" || state == "40P01") return make_error_code(errc::already_exists);
  if (state == "53100") return {ENOSPC, std::generic_category()};  // disk_full
  return make_error_code(errc::io);
}

// Takes ownership of `raw` (which may be null: libpq could not even build a result) and passes
// it on when its status is a success; otherwise an Error naming `function`.
Result<PgResult> check(PGconn* conn, PGresult* raw, const char* function) {
  PgResult r(raw);
  const ExecStatusType status = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_COPY_IN) return r;
  std::string msg = one_line(r ? PQresultErrorMessage(r.get()) : PQerrorMessage(conn));
  if (msg.empty()) msg = one_line(PQerrorMessage(conn));
  if (msg.empty()) msg = std::string("unexpected status ") + PQresStatus(status);
  const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
  if (state) msg += std::string(" (SQLSTATE ") + state + ")";
  return fail(state ? code_of_sqlstate(state) : make_error_code(errc::io), std::string(function) + ": " + msg);
}

// Query parameters: numbers and strings in text form, bytes in binary (no escaping anywhere).
// Owns copies of the text values; bytes() keeps a view, which must outlive the query.
class Params {
 public:
  Params& text(std::string v) { return add_owned(std::move(v), kTextOid); }
  Params& i64(int64_t v) { return add_owned(std::to_string(v), kInt8Oid); }
  Params& boolean(bool v) { return add_owned(v ? "t" : "f", kBoolOid); }
  Params& bytes(ByteView v) {
    types_.push_back(kByteaOid);
    // libpq wants a pointer even for an empty value.
    values_.push_back(v.empty() ? "" : reinterpret_cast<const char*>(v.data()));
    lengths_.push_back(static_cast<int>(v.size()));
    formats_.push_back(1);
    return *this;
  }
  Params& null(Oid type) {
    types_.push_back(type);
    values_.push_back(nullptr);
    lengths_.push_back(0);
    formats_.push_back(0);
    return *this;
  }

  int size() const { return static_cast<int>(values_.size()); }
  const Oid* types() const { return types_.data(); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  Params& add_owned(std::string v, Oid type) {
    owned_.push_back(std::make_unique<std::string>(std::move(v)));
    types_.push_back(type);
    values_.push_back(owned_.back()->c_str());
    lengths_.push_back(0);
    formats_.push_back(0);
    return *this;
  }
  std::vector<std::unique_ptr<std::string>> owned_;  // stable addresses as the vector grows
  std::vector<Oid> types_;
  std::vector<const char*> values_;
  std::vector<int> lengths_, formats_;
};

// Fields of a result fetched in binary form: integers big-endian, text and bytea as they are.
int64_t int_at(const PGresult* r, int row, int col) {
  const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(r, row, col));
  const int len = PQgetlength(r, row, col);
  OUTPOST_CHECK(len == 2 || len == 4 || len == 8, "the schema's integer columns are smallint, int or bigint");
  uint64_t v = 0;
  for (int i = 0; i < len; ++i) v = (v << 8) | p[i];
  if (len == 2) return static_cast<int16_t>(v);
  if (len == 4) return static_cast<int32_t>(v);
  return static_cast<int64_t>(v);
}
bool bool_at(const PGresult* r, int row, int col) { return PQgetlength(r, row, col) == 1 && PQgetvalue(r, row, col)[0] != 0; }
std::string text_at(const PGresult* r, int row, int col) {
  return std::string(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
}
Bytes bytes_at(const PGresult* r, int row, int col) {
  const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(r, row, col));
  return Bytes(p, p + PQgetlength(r, row, col));
}
Digest digest_at(const PGresult* r, int row, int col) {
  Digest d{};
  if (PQgetlength(r, row, col) == static_cast<int>(d.size())) std::memcpy(d.data(), PQgetvalue(r, row, col), d.size());
  return d;
}

constexpr const char* kNodeColumns =
    "SELECT node_id, identity_json, ak_pem, enrolled_at, acked_seq, acked_hash, clock, reset_count, restart_count, safe, "
    "last_contact_ms, fleet, last_attested_ms, bundle_version, durable_seq FROM nodes";

// A record's search columns from `first` on: agent, event, subject, verdict, reason.
void search_columns_at(const PGresult* r, int row, int first, RecordRow& out) {
  out.agent = text_at(r, row, first);
  out.event = text_at(r, row, first + 1);
  out.subject = text_at(r, row, first + 2);
  out.verdict = text_at(r, row, first + 3);
  out.reason = text_at(r, row, first + 4);
}

NodeRow node_at(const PGresult* r, int row) {
  NodeRow n;
  n.node_id = text_at(r, row, 0);
  n.identity_json = text_at(r, row, 1);
  n.ak_pem = text_at(r, row, 2);
  n.enrolled_at = text_at(r, row, 3);
  n.acked_seq = static_cast<uint64_t>(int_at(r, row, 4));
  n.acked_hash = digest_at(r, row, 5);
  if (!PQgetisnull(r, row, 6)) {
    attestation::ClockInfo c;
    c.clock = static_cast<uint64_t>(int_at(r, row, 6));
    c.reset_count = static_cast<uint32_t>(int_at(r, row, 7));
    c.restart_count = static_cast<uint32_t>(int_at(r, row, 8));
    c.safe = bool_at(r, row, 9);
    n.last_clock = c;
  }
  n.last_contact_ms = int_at(r, row, 10);
  n.fleet = text_at(r, row, 11);
  n.last_attested_ms = int_at(r, row, 12);
  n.bundle_version = static_cast<uint64_t>(int_at(r, row, 13));
  n.durable_seq = static_cast<uint64_t>(int_at(r, row, 14));
  return n;
}

// `rows` of one node in PostgreSQL's binary COPY format: a signature and two 32-bit words, per
// row a 16-bit field count and each field as a 32-bit length and its bytes, a -1 trailer.
// (COPY is the fastest of the ways measured to insert a batch: docs/benchmarks.md.)
std::string copy_data(const std::string& node_id, const std::vector<RecordRow>& rows) {
  std::string out;
  size_t size = 19 + 2;
  for (const auto& r : rows) {
    size += 2 + 11 * 4 + node_id.size() + 8 + 8 + 2 + r.hash.size() + r.frame.size() + r.agent.size() + r.event.size() +
            r.subject.size() + r.verdict.size() + r.reason.size();
  }
  out.reserve(size);
  auto be = [&](uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto field = [&](std::string_view v) {
    be(v.size(), 4);
    out.append(v);
  };
  auto integer = [&](uint64_t v, int bytes) {
    be(static_cast<uint64_t>(bytes), 4);
    be(v, bytes);
  };
  out.append("PGCOPY\n\xff\r\n\0", 11);
  be(0, 4);  // flags
  be(0, 4);  // header extension length
  for (const auto& r : rows) {
    be(11, 2);
    field(node_id);
    integer(r.seq, 8);
    integer(static_cast<uint64_t>(r.time_ms), 8);
    integer(r.kind, 2);
    field(as_chars(r.hash));
    field(as_chars(r.frame));
    for (const std::string* v : {&r.agent, &r.event, &r.subject, &r.verdict, &r.reason}) field(*v);
  }
  be(0xffff, 2);
  return out;
}

// The channel hub instances tell each other on that what is served changed.
constexpr const char* kWakeChannel = "outpost_hub";

// A connection with the hub's defaults, which the connection string may override (it is
// expanded in place of dbname, after them): a bounded connect, and keepalives so that a
// vanished server is noticed in about a minute rather than hours while the hub waits on it.
Result<PgConn> connect_pg(const std::string& conninfo) {
  const char* keywords[] = {"connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count",
                            "application_name", "client_encoding", "dbname", nullptr};
  const char* values[] = {"10", "30", "10", "3", "outpost-hub", "UTF8", conninfo.c_str(), nullptr};
  PgConn c(PQconnectdbParams(keywords, values, /*expand_dbname=*/1));
  if (!c) return fail(errc::io, "PQconnectdbParams: out of memory");
  // Errors name the server and database, never the connection string (it may hold a password).
  if (PQstatus(c.get()) != CONNECTION_OK) return fail(errc::io, "PostgreSQL: PQconnectdbParams: " + one_line(PQerrorMessage(c.get())));
  return c;
}

class PostgresStore final : public Store {
 public:
  PostgresStore(PgConn conn, std::string conninfo) : conn_(std::move(conn)), conninfo_(std::move(conninfo)) { quiet_notices(); }

  // LISTEN on a second connection, made on first use (only the store the event loop watches
  // listens; the ingest threads' stores never do). It only ever listens: a blocking query on
  // the first one must not hold notifications back, nor they it.
  Result<void> listen() {
    if (!listen_) { OUTPOST_TRY(listen_, connect_pg(conninfo_)); }
    OUTPOST_TRY(auto r, check(listen_.get(), PQexec(listen_.get(), (std::string("LISTEN ") + kWakeChannel).c_str()), "PQexec"));
    (void)r;
    return ok();
  }

  bool can_wake() const override { return true; }

  Result<void> notify(const std::string& node) override {
    OUTPOST_TRY_VOID(write("SELECT pg_notify($1, $2)", Params().text(kWakeChannel).text(node)));
    return ok();
  }

  int wake_fd() override { return listen_ ? PQsocket(listen_.get()) : -1; }

  Result<std::vector<std::string>> drain_wakes() override {
    if (!listen_) {  // the first call: from now on this store hears every instance
      OUTPOST_TRY_VOID(listen());
      return std::vector<std::string>{""};
    }
    std::vector<std::string> woken;
    if (PQstatus(listen_.get()) == CONNECTION_OK && PQconsumeInput(listen_.get()) == 1) {
      while (PGnotify* n = PQnotifies(listen_.get())) {
        woken.emplace_back(n->extra ? n->extra : "");
        PQfreemem(n);
      }
      if (PQstatus(listen_.get()) == CONNECTION_OK) return woken;
    }
    // Lost: whatever was notified meanwhile is lost with it, so the pollers look again once
    // the connection listens anew.
    log::warn("hub.store.listen_lost", {{"error", one_line(PQerrorMessage(listen_.get()))}});
    PQreset(listen_.get());
    if (PQstatus(listen_.get()) != CONNECTION_OK) return fail(errc::io, "PQreset (listening): " + one_line(PQerrorMessage(listen_.get())));
    OUTPOST_TRY_VOID(listen());
    log::info("hub.store.listening_again", {{"host", PQhost(listen_.get())}});
    return std::vector<std::string>{""};
  }

  // Brings the database to kPostgresSchemaVersion. When it is there already (every start but the first
  // after an upgrade) no DDL runs and no lock is taken, so a role that may only read and write
  // the tables a DBA made opens the store too.
  Result<void> migrate() {
    OUTPOST_TRY(int at, schema_version());
    if (at == kPostgresSchemaVersion) return ok();
    if (at > kPostgresSchemaVersion) return newer_than_this_hub(at);
    auto r = [&]() -> Result<void> {
      OUTPOST_TRY_VOID(exec("BEGIN"));
      OUTPOST_TRY_VOID(exec(kSchemaLock));
      OUTPOST_TRY_VOID(exec(kMigrationsTable));
      // Another instance may have migrated meanwhile. Read with run(), never read(): a read
      // that met a lost connection would go on in a new session, outside this transaction.
      OUTPOST_TRY(auto v, run("SELECT coalesce(max(version), 0)::bigint FROM schema_migrations", Params()));
      const int locked_at = static_cast<int>(int_at(v.get(), 0, 0));
      if (locked_at > kPostgresSchemaVersion) return newer_than_this_hub(locked_at);
      for (const auto& m : kMigrations) {
        if (m.version <= locked_at) continue;
        auto applied = exec(m.sql);
        if (!applied) return fail(applied.error().wrap("schema migration to v" + std::to_string(m.version) + " (" + m.what + ")"));
        OUTPOST_TRY_VOID(run("INSERT INTO schema_migrations (version, what) VALUES ($1, $2)",
                             Params().i64(m.version).text(m.what)));
      }
      return exec("COMMIT");
    }();
    if (!r) rollback_if_open();
    return r;
  }

  Result<int> schema_version() override {
    OUTPOST_TRY(auto t, read("SELECT to_regclass('schema_migrations') IS NOT NULL", Params()));
    if (!bool_at(t.get(), 0, 0)) return 0;
    OUTPOST_TRY(auto v, read("SELECT coalesce(max(version), 0)::bigint FROM schema_migrations", Params()));
    return static_cast<int>(int_at(v.get(), 0, 0));
  }

  Result<void> touch_attested(const std::string& node_id, int64_t now_ms) override {
    OUTPOST_TRY_VOID(write("UPDATE nodes SET last_contact_ms = $2, last_attested_ms = $2 WHERE node_id = $1", Params().text(node_id).i64(now_ms)));
    return ok();
  }

  Result<std::map<std::string, uint64_t>> alert_counts() override {
    OUTPOST_TRY(auto r, read("SELECT node_id, count(*) FROM alerts GROUP BY node_id", Params()));
    std::map<std::string, uint64_t> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) out[text_at(r.get(), i, 0)] = static_cast<uint64_t>(int_at(r.get(), i, 1));
    return out;
  }

  Result<std::vector<FoundRecord>> search_records(const RecordQuery& q) override {
    // Only the filters given, so that an index can serve them (see the SQLite store).
    std::string sql = "SELECT node_id, seq, time_ms, kind, hash, agent, event, subject, verdict, reason FROM records WHERE true";
    Params p;
    int n = 0;
    auto param = [&](const std::string& v) {
      p.text(v);
      return "$" + std::to_string(++n);
    };
    if (!q.node_id.empty()) sql += " AND node_id = " + param(q.node_id);
    if (!q.agent.empty()) sql += " AND agent = " + param(q.agent);
    if (!q.subject.empty()) {  // server/tool, or the tool alone: compared, never a pattern
      const std::string at = param(q.subject);
      sql += " AND (subject = " + at + " OR right(subject, length(" + at + ") + 1) = '/' || " + at + ")";
    }
    if (q.verdict == "deny" || q.verdict == "allow") sql += " AND verdict = '" + q.verdict + "'";  // one of two constants
    if (q.decisions_only) sql += " AND kind = 0";
    if (q.since_ms) sql += " AND time_ms >= " + std::to_string(q.since_ms);
    if (q.until_ms) sql += " AND time_ms <= " + std::to_string(q.until_ms);
    sql += " ORDER BY time_ms DESC, seq DESC LIMIT " + std::to_string(q.limit);
    OUTPOST_TRY(auto r, read(sql.c_str(), p));
    std::vector<FoundRecord> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      FoundRecord f;
      f.node_id = text_at(r.get(), i, 0);
      f.row.seq = static_cast<uint64_t>(int_at(r.get(), i, 1));
      f.row.time_ms = int_at(r.get(), i, 2);
      f.row.kind = static_cast<uint8_t>(int_at(r.get(), i, 3));
      f.row.hash = digest_at(r.get(), i, 4);
      search_columns_at(r.get(), i, 5, f.row);
      out.push_back(std::move(f));
    }
    return out;
  }

  Result<void> set_fleet(const std::string& node_id, const std::string& fleet) override {
    OUTPOST_TRY(auto r, write("UPDATE nodes SET fleet = $2 WHERE node_id = $1", Params().text(node_id).text(fleet)));
    if (std::string_view(PQcmdTuples(r.get())) == "0") return fail(errc::not_found, "node " + node_id + " is not enrolled");
    return ok();
  }

  Result<std::optional<NodeRow>> node(const std::string& id) override {
    OUTPOST_TRY(auto r, read((std::string(kNodeColumns) + " WHERE node_id = $1").c_str(), Params().text(id)));
    if (PQntuples(r.get()) == 0) return std::optional<NodeRow>();
    return std::optional<NodeRow>(node_at(r.get(), 0));
  }

  Result<std::vector<NodeRow>> nodes() override {
    // Byte order, as SQLite sorts, whatever the database's collation.
    OUTPOST_TRY(auto r, read((std::string(kNodeColumns) + " ORDER BY node_id COLLATE \"C\"").c_str(), Params()));
    std::vector<NodeRow> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) out.push_back(node_at(r.get(), i));
    return out;
  }

  Result<void> enroll(const NodeRow& n) override {
    auto r = write("INSERT INTO nodes (node_id, identity_json, ak_pem, enrolled_at, acked_seq, acked_hash, fleet) "
                   "VALUES ($1, $2, $3, $4, 0, $5, $6)",
                   Params().text(n.node_id).text(n.identity_json).text(n.ak_pem).text(n.enrolled_at).bytes(n.acked_hash).text(n.fleet));
    if (!r && r.error().is(errc::already_exists)) return fail(errc::already_exists, "node " + n.node_id + " is already enrolled");
    if (!r) return fail(r.error());
    return ok();
  }

  using Store::commit_records;
  Result<void> commit_records(const std::string& node_id, uint64_t expect_acked, const std::vector<RecordRow>& rows,
                              const std::optional<attestation::ClockInfo>& last_clock, const CommitAlso& also) override {
    if (rows.empty()) return ok();
    OUTPOST_TRY_VOID(check_rows_follow(expect_acked, rows));
    // Never retried here: if the connection drops around COMMIT the outcome is unknown, and
    // the node's next upload (conditional on what the hub then holds) settles it.
    OUTPOST_TRY_VOID(reconnect_if_lost());
    auto r = commit_in_transaction(node_id, expect_acked, rows, last_clock, also);
    if (!r) rollback_if_open();
    return r;
  }

  Result<std::optional<Digest>> record_hash(const std::string& node_id, uint64_t seq) override {
    OUTPOST_TRY(auto r, read("SELECT hash FROM records WHERE node_id = $1 AND seq = $2",
                             Params().text(node_id).i64(static_cast<int64_t>(seq))));
    if (PQntuples(r.get()) == 0) return std::optional<Digest>();
    return std::optional<Digest>(digest_at(r.get(), 0, 0));
  }

  Result<void> scan_records(const std::string& node_id, uint64_t from_seq,
                            const std::function<bool(const RecordRow&)>& each) override {
    static const std::string sql = "SELECT seq, time_ms, kind, hash, frame, agent, event, subject, verdict, reason FROM records "
                                   "WHERE node_id = $1 AND seq >= $2 "
                                   "ORDER BY seq LIMIT " + std::to_string(kScanPage);
    uint64_t next = from_seq;
    for (;;) {
      OUTPOST_TRY(auto page, read(sql.c_str(), Params().text(node_id).i64(static_cast<int64_t>(next))));
      const PGresult* p = page.get();
      const int n = PQntuples(p);
      for (int i = 0; i < n; ++i) {
        RecordRow r;
        r.seq = static_cast<uint64_t>(int_at(p, i, 0));
        r.time_ms = int_at(p, i, 1);
        r.kind = static_cast<uint8_t>(int_at(p, i, 2));
        r.hash = digest_at(p, i, 3);
        r.frame = bytes_at(p, i, 4);
        search_columns_at(p, i, 5, r);
        if (!each(r)) return ok();
        next = r.seq + 1;
      }
      if (n < kScanPage) return ok();
    }
  }

  Result<uint64_t> first_seq_at(const std::string& node_id, int64_t time_ms) override {
    OUTPOST_TRY(auto r, read("SELECT MIN(seq) FROM records WHERE node_id = $1 AND time_ms >= $2", Params().text(node_id).i64(time_ms)));
    if (PQntuples(r.get()) == 0 || PQgetisnull(r.get(), 0, 0)) return uint64_t{0};
    return static_cast<uint64_t>(int_at(r.get(), 0, 0));
  }

  Result<void> touch(const std::string& node_id, int64_t now_ms) override {
    OUTPOST_TRY_VOID(write("UPDATE nodes SET last_contact_ms = $2 WHERE node_id = $1", Params().text(node_id).i64(now_ms)));
    return ok();
  }

  Result<void> put_evidence_state(const std::string& node_id, const Bytes& package, const std::string& at) override {
    OUTPOST_TRY_VOID(write("INSERT INTO evidence_state (node_id, package, received_at) VALUES ($1, $2, $3) "
                           "ON CONFLICT (node_id) DO UPDATE SET package = EXCLUDED.package, received_at = EXCLUDED.received_at",
                           Params().text(node_id).bytes(package).text(at)));
    return ok();
  }

  Result<std::optional<Bytes>> evidence_state(const std::string& node_id) override {
    OUTPOST_TRY(auto r, read("SELECT package FROM evidence_state WHERE node_id = $1", Params().text(node_id)));
    if (PQntuples(r.get()) == 0) return std::optional<Bytes>();
    return std::optional<Bytes>(bytes_at(r.get(), 0, 0));
  }

  Result<void> put_bundle(const BundleRow& b) override {
    auto r = write("INSERT INTO bundles (version, sha256, bytes, published_at) VALUES ($1, $2, $3, $4)",
                   Params().i64(static_cast<int64_t>(b.version)).text(b.sha256).bytes(b.bytes).text(b.published_at));
    if (!r && r.error().is(errc::already_exists)) {
      return fail(errc::already_exists, "bundle v" + std::to_string(b.version) + " is already published");
    }
    if (!r) return fail(r.error());
    return ok();
  }

  Result<std::optional<BundleRow>> latest_bundle() override {
    OUTPOST_TRY(auto r, read("SELECT version, sha256, bytes, published_at FROM bundles ORDER BY version DESC LIMIT 1", Params()));
    if (PQntuples(r.get()) == 0) return std::optional<BundleRow>();
    BundleRow b;
    b.version = static_cast<uint64_t>(int_at(r.get(), 0, 0));
    b.sha256 = text_at(r.get(), 0, 1);
    b.bytes = bytes_at(r.get(), 0, 2);
    b.published_at = text_at(r.get(), 0, 3);
    return std::optional<BundleRow>(std::move(b));
  }

  Result<std::vector<BundleRow>> recent_bundles(size_t limit) override {
    OUTPOST_TRY(auto r, read("SELECT version, sha256, bytes, published_at FROM bundles ORDER BY version DESC LIMIT $1",
                             Params().i64(static_cast<int64_t>(limit))));
    std::vector<BundleRow> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      BundleRow b;
      b.version = static_cast<uint64_t>(int_at(r.get(), i, 0));
      b.sha256 = text_at(r.get(), i, 1);
      b.bytes = bytes_at(r.get(), i, 2);
      b.published_at = text_at(r.get(), i, 3);
      out.push_back(std::move(b));
    }
    return out;
  }

  Result<void> add_alert(const AlertRow& a) override {
    OUTPOST_TRY_VOID(write("INSERT INTO alerts (node_id, kind, detail, at) VALUES ($1, $2, $3, $4)",
                           Params().text(a.node_id).text(a.kind).text(a.detail).text(a.at)));
    return ok();
  }

  Result<std::vector<AlertRow>> alerts(const std::string& node_id) override {
    OUTPOST_TRY(auto r, read("SELECT node_id, kind, detail, at FROM alerts WHERE node_id = $1 ORDER BY id", Params().text(node_id)));
    std::vector<AlertRow> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      out.push_back({text_at(r.get(), i, 0), text_at(r.get(), i, 1), text_at(r.get(), i, 2), text_at(r.get(), i, 3)});
    }
    return out;
  }

 private:
  PGconn* conn() const { return conn_.get(); }

  static Result<void> newer_than_this_hub(int at) {
    return fail(errc::unsupported, "the database is at schema v" + std::to_string(at) + ", newer than this hub's v" +
                                       std::to_string(kPostgresSchemaVersion) + ": run a hub at least as new as the one that wrote it");
  }

  // One statement with parameters, results in binary.
  Result<PgResult> run(const char* sql, const Params& p) {
    return check(conn(), PQexecParams(conn(), sql, p.size(), p.types(), p.values(), p.lengths(), p.formats(), 1),
                 "PQexecParams");
  }

  // A read: on a connection lost before or during it, reconnects and asks once more.
  Result<PgResult> read(const char* sql, const Params& p) {
    OUTPOST_TRY_VOID(reconnect_if_lost());
    auto r = run(sql, p);
    if (r || PQstatus(conn()) != CONNECTION_BAD) return r;
    log::warn("hub.store.connection_lost", {{"error", r.error().message()}});
    OUTPOST_TRY_VOID(reconnect_if_lost());
    return run(sql, p);
  }

  // A write in a statement of its own: reconnects first if the connection was found lost
  // earlier, but a write that meets the loss is reported, not repeated (it may have happened).
  Result<PgResult> write(const char* sql, const Params& p) {
    OUTPOST_TRY_VOID(reconnect_if_lost());
    return run(sql, p);
  }

  // A constant statement (or several) with no parameters.
  Result<void> exec(const char* sql) {
    OUTPOST_TRY(auto r, check(conn(), PQexec(conn(), sql), "PQexec"));
    (void)r;
    return ok();
  }

  Result<void> reconnect_if_lost() {
    if (PQstatus(conn()) != CONNECTION_BAD) return ok();
    PQreset(conn());
    if (PQstatus(conn()) != CONNECTION_OK) return fail(errc::io, "PQreset: " + one_line(PQerrorMessage(conn())));
    log::info("hub.store.reconnected", {{"host", PQhost(conn())}, {"database", PQdb(conn())}});
    return ok();
  }

  // After a failure inside a transaction: ROLLBACK, so the connection is usable for the next
  // call. (A connection that is gone has no transaction left: the server rolled it back.)
  void rollback_if_open() {
    if (PQstatus(conn()) != CONNECTION_OK) return;
    const PGTransactionStatusType t = PQtransactionStatus(conn());
    if (t == PQTRANS_INTRANS || t == PQTRANS_INERROR) {
      auto r = exec("ROLLBACK");
      if (!r) log::error("hub.store.rollback", {{"error", r.error().message()}});
    }
  }

  Result<void> commit_in_transaction(const std::string& node_id, uint64_t expect_acked, const std::vector<RecordRow>& rows,
                                     const std::optional<attestation::ClockInfo>& clock, const CommitAlso& also) {
    OUTPOST_TRY_VOID(exec("BEGIN ISOLATION LEVEL READ COMMITTED"));
    // The row lock this UPDATE takes serialises hub instances appending for one node: a second
    // one waits here, then re-reads the committed row, finds acked_seq moved and matches nothing.
    Params p;
    p.text(node_id).i64(static_cast<int64_t>(expect_acked)).i64(static_cast<int64_t>(rows.back().seq)).bytes(rows.back().hash);
    if (clock) {
      p.i64(static_cast<int64_t>(clock->clock)).i64(clock->reset_count).i64(clock->restart_count).boolean(clock->safe);
    } else {
      p.null(kInt8Oid).null(kInt8Oid).null(kInt8Oid).null(kBoolOid);
    }
    if (also.durable_seq) {
      p.i64(static_cast<int64_t>(*also.durable_seq));
    } else {
      p.null(kInt8Oid);
    }
    p.i64(also.contact_ms);
    if (also.bundle_version) {
      p.i64(static_cast<int64_t>(*also.bundle_version));
    } else {
      p.null(kInt8Oid);
    }
    OUTPOST_TRY(auto up, run("UPDATE nodes SET acked_seq = $3, acked_hash = $4, clock = $5, reset_count = $6, restart_count = $7, "
                             "safe = $8, durable_seq = coalesce($9, durable_seq), last_contact_ms = greatest(last_contact_ms, $10), "
                             "bundle_version = greatest(bundle_version, coalesce($11, 0)) WHERE node_id = $1 AND acked_seq = $2",
                             p));
    if (std::string_view(PQcmdTuples(up.get())) != "1") {
      OUTPOST_TRY(auto cur, run("SELECT acked_seq FROM nodes WHERE node_id = $1", Params().text(node_id)));
      if (PQntuples(cur.get()) == 0) return fail(errc::not_found, "node " + node_id + " is not enrolled");
      return fail(errc::already_exists, "node " + node_id + ": records after seq " + std::to_string(expect_acked) +
                                            " were stored meanwhile");
    }
    OUTPOST_TRY_VOID(copy_records(node_id, rows));
    OUTPOST_TRY(auto done, check(conn(), PQexec(conn(), "COMMIT"), "PQexec"));
    // COMMIT of a transaction that had failed answers ROLLBACK, not an error.
    if (std::string_view(PQcmdStatus(done.get())) != "COMMIT") {
      return fail(errc::io, std::string("COMMIT: the server answered ") + PQcmdStatus(done.get()));
    }
    return ok();
  }

  Result<void> copy_records(const std::string& node_id, const std::vector<RecordRow>& rows) {
    OUTPOST_TRY(auto start, check(conn(), PQexec(conn(), "COPY records (node_id, seq, time_ms, kind, hash, frame, agent, event, subject, verdict, reason) FROM STDIN (FORMAT binary)"),
                                  "PQexec"));
    if (PQresultStatus(start.get()) != PGRES_COPY_IN) return fail(errc::io, "COPY records: the server did not start the copy");
    const std::string data = copy_data(node_id, rows);
    const bool sent = PQputCopyData(conn(), data.data(), static_cast<int>(data.size())) == 1 &&
                      PQputCopyEnd(conn(), nullptr) == 1;
    const std::string send_error = sent ? "" : one_line(PQerrorMessage(conn()));
    // The copy's outcome, then nothing (libpq's protocol: read results until null).
    auto end = check(conn(), PQgetResult(conn()), "COPY records");
    while (PGresult* extra = PQgetResult(conn())) PQclear(extra);
    if (!sent) return fail(errc::io, "PQputCopyData: " + send_error);
    if (!end) return fail(end.error());
    return ok();
  }

  // Server notices ("relation ... already exists, skipping") go to the debug log, not stderr.
  void quiet_notices() {
    PQsetNoticeProcessor(
        conn(), [](void*, const char* message) { log::debug("hub.store.notice", {{"message", one_line(message)}}); }, nullptr);
  }

  PgConn conn_;
  std::string conninfo_;
  PgConn listen_;  // null until listen()
};

}  // namespace

Result<std::unique_ptr<Store>> open_postgres_store(const std::string& conninfo) {
  OUTPOST_TRY(PgConn conn, connect_pg(conninfo));
  const std::string where = std::string("PostgreSQL database ") + PQdb(conn.get()) + " on " + PQhost(conn.get()) + ":" + PQport(conn.get());
  // 11: ADD COLUMN with a default (schema v3) changes the catalog only; before it, the whole
  // records table was rewritten under an exclusive lock.
  if (PQserverVersion(conn.get()) < 110000) {
    return fail(errc::unsupported, where + ": server version " + std::to_string(PQserverVersion(conn.get())) +
                                       " is older than 11 (ADD COLUMN ... DEFAULT without rewriting the table)");
  }
  auto store = std::make_unique<PostgresStore>(std::move(conn), conninfo);
  auto r = store->migrate();
  if (!r) return fail(r.error().wrap(where + ": schema migration"));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace outpost::hub
