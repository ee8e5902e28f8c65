// What the hub does with an uploaded run of audit frames, apart from storing it: parse every
// frame, compare records the hub already holds (equal: duplicates; different: a fork), check
// that new records continue the node's chain with no gap and that each checkpoint's quote is
// the node's AK's, and keep the records through the last verified checkpoint (the anchored
// ones). Pure: the caller supplies the node's chain state and a lookup of stored hashes, which
// is also what the fuzz target drives.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "outpost/base/crypto.h"
#include "outpost/hub/store.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::hub {

struct UploadPlan {
  enum class Verdict { store, fork, refused };
  Verdict verdict = Verdict::store;
  std::string reason;                 // for fork and refused: what, at which seq
  std::vector<RecordRow> rows;        // new anchored records, in order, to store
  std::optional<attestation::ClockInfo> clock;  // the chain's clock after them
  uint64_t duplicates = 0;            // records the hub held already, byte for byte
  size_t pending = 0;                 // new records after the last checkpoint: not stored
  // The bundle in force as the stored records show it (the last install or decision's
  // version; 0: they say nothing): signed by the node's AK, unlike its evidence state.
  uint64_t bundle_version = 0;
};

// `in` as UTF-8 PostgreSQL's text takes: each ill-formed sequence and NUL becomes U+FFFD, and
// it is cut, on a character's boundary, to at most max_bytes.
std::string search_text(std::string_view in, size_t max_bytes);

// A record's search columns (agent, event; for decisions the subject, verdict and reason from
// its detail): what the console searches by.
void fill_search_columns(const offline_cache::AuditRecord& record, RecordRow& row);

// `stored_hash(seq)`: the hash of a record the hub holds for this node (nullopt: none, or the
// lookup failed).
UploadPlan plan_upload(ByteView body, const NodeRow& node, const EcPublicKey& ak,
                       const std::function<std::optional<Digest>(uint64_t)>& stored_hash);

}  // namespace outpost::hub
