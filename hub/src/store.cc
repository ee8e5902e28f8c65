// Which backend hub.yaml's `database:` names (store.h).
#include "outpost/hub/store.h"

namespace outpost::hub {

bool is_postgres_uri(std::string_view database) {
  return database.starts_with("postgresql://") || database.starts_with("postgres://");
}

Result<std::unique_ptr<Store>> open_store(const std::string& database) {
  if (is_postgres_uri(database)) return open_postgres_store(database);
  return open_sqlite_store(database);
}

}  // namespace outpost::hub
