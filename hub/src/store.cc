// Which backend hub.yaml's `database:` names (store.h).
#include "outpost/hub/store.h"

#include "outpost/base/errors.h"

namespace outpost::hub {

bool is_postgres_uri(std::string_view database) {
  return database.starts_with("postgresql://") || database.starts_with("postgres://");
}

Result<void> check_rows_follow(uint64_t expect_acked, const std::vector<RecordRow>& rows) {
  if (!rows.empty() && rows.front().seq != expect_acked + 1) {
    return fail(errc::invalid_argument, "commit_records: rows start at seq " + std::to_string(rows.front().seq) +
                                            ", not after the acknowledged " + std::to_string(expect_acked));
  }
  return ok();
}

std::vector<Result<void>> Store::commit_group(const std::vector<const CommitItem*>& items) {
  std::vector<Result<void>> out;
  out.reserve(items.size());
  for (const CommitItem* c : items) {
    out.push_back(c->enrol ? enroll(*c->enrol) : commit_records(c->node_id, c->expect_acked, c->rows, c->last_clock, c->also));
  }
  return out;
}

Result<std::unique_ptr<Store>> open_store(const std::string& database) {
  if (is_postgres_uri(database)) return open_postgres_store(database);
  return open_sqlite_store(database);
}

}  // namespace outpost::hub
