// Checks an audit chain one record at a time: `audit verify` on the node's segments, evidence
// packages offline, and the hub on every upload all feed records through a ChainVerifier.
//
// A record continues the chain when its seq is the next one and its prev_hash is the hash of
// the record before it. A checkpoint must also name a head (seq, hash) that is one of the
// kCheckpointWindow records before it, and, when the AK is known, carry a quote by the AK
// whose qualifying data is checkpoint_qualifying_data(head) and whose TPM clock and reset
// counters are not behind the previous verified checkpoint's.
//
// Not thread-safe; a plain value that owns what it keeps (the hashes of the last
// kCheckpointWindow records, about 2 MiB at most).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::offline_cache {

struct ChainState {
  uint64_t last_seq = 0;  // 0: nothing seen yet
  Digest last_hash{};     // hash of record last_seq
  // false: the first record fed may start mid-log (its prev_hash is taken as given).
  bool anchored = true;
  std::optional<attestation::ClockInfo> last_clock;  // of the last verified checkpoint quote
};

class ChainVerifier {
 public:
  // ak: with it, each checkpoint's quote is verified (signature, qualifying data =
  // checkpoint_qualifying_data(head), clock forward). older_hash(seq): the hash of an earlier
  // record, for a checkpoint whose head is before the records this verifier kept (may be empty).
  ChainVerifier(std::optional<EcPublicKey> ak, ChainState start,
                std::function<std::optional<Digest>(uint64_t)> older_hash = {});

  // Checks that r continues the chain and, for a checkpoint, its head and (with an AK) its
  // quote. The error (errc::verification_failed, or errc::corrupt for PCR values that do not
  // parse) starts with "record N" or "checkpoint N" and says what failed. On error nothing
  // changes: the verifier still expects the record after state().last_seq.
  Result<void> feed(const AuditRecord& r);

  const ChainState& state() const { return state_; }
  uint64_t records() const { return records_; }  // records accepted
  size_t checkpoints() const { return checkpoints_; }
  size_t checkpoints_verified() const { return checkpoints_verified_; }  // quotes checked with the AK
  // The highest head_seq a verified (or, without an AK, a matching) checkpoint covers; 0 if none.
  uint64_t last_anchored_seq() const { return last_anchored_seq_; }

 private:
  std::optional<Digest> hash_of(uint64_t seq) const;
  Result<void> check_link(const AuditRecord& r) const;
  // The clock of the checkpoint's verified quote (nullopt without an AK).
  Result<std::optional<attestation::ClockInfo>> check_checkpoint(const AuditRecord& r) const;

  std::optional<EcPublicKey> ak_;
  ChainState state_;
  std::function<std::optional<Digest>(uint64_t)> older_hash_;
  std::deque<Digest> recent_;  // hashes of records recent_first_ .. state_.last_seq
  uint64_t recent_first_ = 0;
  uint64_t records_ = 0;
  size_t checkpoints_ = 0;
  size_t checkpoints_verified_ = 0;
  uint64_t last_anchored_seq_ = 0;
};

}  // namespace outpost::offline_cache
