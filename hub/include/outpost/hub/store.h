// outpost-hub's storage: enrolled nodes with the chain state the hub has verified up to,
// their audit records (the exact frames the node wrote), the latest evidence state each node
// sent, published bundles and alerts (refused forks and rollbacks).
//
// The interface is narrow so that two backends implement the same contract: SQLite (embedded,
// the default) and PostgreSQL (for hub instances that scale out on one database).
// commit_records is the one write that must be atomic and conditional: it succeeds only if the
// node's acknowledged sequence is still the one the caller verified against, so two hub
// instances can never both append after the same record.
//
// A Store is not thread-safe: the hub calls it from its one thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/attestation/types.h"
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::hub {

struct NodeRow {
  std::string node_id;
  std::string identity_json;  // node.json as enrolled
  std::string ak_pem;
  std::string enrolled_at;    // RFC 3339
  uint64_t acked_seq = 0;     // the last record stored (all before it are, with no gap)
  Digest acked_hash{};
  std::optional<attestation::ClockInfo> last_clock;  // of the last verified checkpoint
  int64_t last_contact_ms = 0;
  std::string fleet;          // "" when the node is in no fleet
  int64_t last_attested_ms = 0;  // of the last fresh quote the hub verified (0: none)
  // The bundle in force as the node's stored (AK-signed) records last showed it, and how far
  // its log was durable at its last upload (its word, not signed: for the console only).
  uint64_t bundle_version = 0;
  uint64_t durable_seq = 0;
};

struct RecordRow {
  uint64_t seq = 0;
  int64_t time_ms = 0;
  uint8_t kind = 0;
  Digest hash{};
  Bytes frame;  // magic | length | payload | SHA-256, as in the node's segment
  // Indexed for search (the console), read from the record at ingest; "" when it has none.
  std::string agent;
  std::string event;    // "decision", "egress", "denials_coalesced", a lifecycle event, ...
  std::string subject;  // a decision's server/tool, an egress' host
  std::string verdict;  // "allow" or "deny" for decisions, else ""
  std::string reason;   // a decision's reason (at most 200 bytes)
};

// A search over every node's records (newest first).
struct RecordQuery {
  std::string node_id, agent, subject, verdict;  // "" matches any
  bool decisions_only = true;                    // kind decision
  int64_t since_ms = 0, until_ms = 0;            // 0: open
  size_t limit = 200;
};
struct FoundRecord {
  std::string node_id;
  RecordRow row;  // without its frame
};

struct BundleRow {
  uint64_t version = 0;
  std::string sha256;  // hex, also the ETag
  Bytes bytes;
  std::string published_at;
};

struct AlertRow {
  std::string node_id;
  std::string kind;  // "fork", "rollback", ...
  std::string detail;
  std::string at;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual Result<std::optional<NodeRow>> node(const std::string& node_id) = 0;
  virtual Result<std::vector<NodeRow>> nodes() = 0;
  // Inserts a node; errc::already_exists if it is there.
  virtual Result<void> enroll(const NodeRow& node) = 0;
  // Appends `rows` (consecutive, starting at expect_acked + 1) and moves the node's chain state
  // to the last of them, in one transaction; errc::already_exists (nothing written) when the
  // stored acked_seq is no longer expect_acked. `also` is what changes with them in the same
  // transaction (one commit, one flush).
  struct CommitAlso {
    std::optional<uint64_t> durable_seq;  // what the node reported with the upload (NodeRow::durable_seq)
    int64_t contact_ms = 0;               // the node's last contact, when not 0
    std::optional<uint64_t> bundle_version;  // the bundle in force its records show (NodeRow::bundle_version)
  };
  virtual Result<void> commit_records(const std::string& node_id, uint64_t expect_acked, const std::vector<RecordRow>& rows,
                                      const std::optional<attestation::ClockInfo>& last_clock, const CommitAlso& also) = 0;
  Result<void> commit_records(const std::string& node_id, uint64_t expect_acked, const std::vector<RecordRow>& rows,
                              const std::optional<attestation::ClockInfo>& last_clock) {
    return commit_records(node_id, expect_acked, rows, last_clock, CommitAlso{});
  }
  // One upload's commit_records, or one enrol, for commit_group.
  struct CommitItem {
    std::optional<NodeRow> enrol;  // when set, the item is enroll(*enrol) and the rest unused
    std::string node_id;
    uint64_t expect_acked = 0;
    std::vector<RecordRow> rows;
    std::optional<attestation::ClockInfo> last_clock;
    CommitAlso also;
  };
  // Commits several uploads, each with commit_records' contract (or enroll's, for an
  // enrolment), and returns one result per item, in order. An item refused (errc::already_exists, errc::not_found) leaves the others
  // to commit; a failed transaction fails them all. SQLite does them in one transaction, a
  // savepoint each: one write of the pages they share and one flush for all (group commit).
  // Other backends commit them one by one.
  virtual std::vector<Result<void>> commit_group(const std::vector<const CommitItem*>& items);
  virtual Result<std::optional<Digest>> record_hash(const std::string& node_id, uint64_t seq) = 0;
  // Records with seq >= from_seq in order, to `each` (false stops).
  virtual Result<void> scan_records(const std::string& node_id, uint64_t from_seq,
                                    const std::function<bool(const RecordRow&)>& each) = 0;
  // The first seq whose time is at least `time_ms` (0 when none).
  virtual Result<uint64_t> first_seq_at(const std::string& node_id, int64_t time_ms) = 0;
  virtual Result<void> touch(const std::string& node_id, int64_t now_ms) = 0;
  // Moves an enrolled node to `fleet` ("" for none); errc::not_found for an unknown node.
  virtual Result<void> set_fleet(const std::string& node_id, const std::string& fleet) = 0;
  // A fresh quote verified now: last contact and last attestation.
  virtual Result<void> touch_attested(const std::string& node_id, int64_t now_ms) = 0;
  // Open alerts per node (nodes with none are absent).
  virtual Result<std::map<std::string, uint64_t>> alert_counts() = 0;
  virtual Result<std::vector<FoundRecord>> search_records(const RecordQuery& query) = 0;

  virtual Result<void> put_evidence_state(const std::string& node_id, const Bytes& package, const std::string& at) = 0;
  virtual Result<std::optional<Bytes>> evidence_state(const std::string& node_id) = 0;

  virtual Result<void> put_bundle(const BundleRow& bundle) = 0;
  virtual Result<std::optional<BundleRow>> latest_bundle() = 0;
  // The `limit` newest bundles, newest first (the hub serves each node the newest in its scope).
  virtual Result<std::vector<BundleRow>> recent_bundles(size_t limit) = 0;

  virtual Result<void> add_alert(const AlertRow& alert) = 0;
  virtual Result<std::vector<AlertRow>> alerts(const std::string& node_id) = 0;

  // The schema version the database is at (k*SchemaVersion, its backend's, once opened).
  virtual Result<int> schema_version() = 0;

  // Wake-ups across hub instances on one database (PostgreSQL LISTEN/NOTIFY): notify(node)
  // tells every instance, this one included, that what is served to `node` changed ("": to
  // every node: a bundle was published); wake_fd() turns readable when such a word may have
  // come, and drain_wakes() reads what came: the nodes named ("" for all; a lost and
  // re-established listening connection gives "", since words may have been missed; the
  // first call starts listening). SQLite has one instance: can_wake() is false.
  virtual Result<void> notify(const std::string& node) {
    (void)node;
    return ok();
  }
  virtual bool can_wake() const { return false; }
  virtual int wake_fd() { return -1; }
  virtual Result<std::vector<std::string>> drain_wakes() { return std::vector<std::string>{}; }
};

// The schema this hub writes. Opening a store applies the migrations from the database's
// version up to this one, in order, each in the transaction that records it; a database at a
// newer version (written by a newer hub) is refused, never altered. docs/hub.md "Schema".
//   1  nodes, records, evidence_state, bundles, alerts (what hubs before versioning made)
//   2  nodes.fleet
//   3  records' search columns (agent, event, subject, verdict, reason) and an index on time;
//      nodes' last_attested_ms, bundle_version, durable_seq (records stored before v3 keep ""
//      in the search columns: a node's page still reads them from their frames)
//   4  SQLite only: records in a rowid table, UNIQUE (node_id, seq) beside it
// Each backend counts its own, so a change to one does not make the other's database look
// newer to instances not yet upgraded.
inline constexpr int kSqliteSchemaVersion = 4;
inline constexpr int kPostgresSchemaVersion = 3;

// SQLite in WAL mode with synchronous=FULL: a commit the hub acknowledged survives power loss
// (the node deletes what the hub acknowledged).
// For backends' commit_records: the rows must start right after expect_acked.
Result<void> check_rows_follow(uint64_t expect_acked, const std::vector<RecordRow>& rows);

// `cache_kib`: the connection's page cache (0: SQLite's default, 2 MiB), and when set, temp
// storage in memory. The hub's committer takes a larger one: a group's dirty pages must fit,
// or SQLite spills them mid-transaction.
Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& file, int64_t cache_kib = 0);

// PostgreSQL through libpq; `conninfo` is a libpq connection string or a postgresql:// URI. One
// connection per Store (the hub is single-threaded); a lost connection is re-established on the
// next call, and a read that met the loss is retried once. Tables are created if missing, under
// an advisory lock, so several hub instances may start at once on one database.
Result<std::unique_ptr<Store>> open_postgres_store(const std::string& conninfo);

// True when hub.yaml's `database:` names PostgreSQL: a postgresql:// or postgres:// URI.
bool is_postgres_uri(std::string_view database);
// The store hub.yaml's `database:` names: PostgreSQL for a URI (is_postgres_uri), otherwise a
// SQLite file (already resolved against the config's folder).
Result<std::unique_ptr<Store>> open_store(const std::string& database);

}  // namespace outpost::hub
