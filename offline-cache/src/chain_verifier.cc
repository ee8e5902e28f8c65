// Record-by-record checking of the audit chain. See chain_verifier.h.
#include "outpost/offline_cache/chain_verifier.h"

#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"

namespace outpost::offline_cache {
namespace {

// The chain's errors are errc::corrupt (bytes that do not parse) or errc::verification_failed
// (everything else: a bad signature, an unsupported algorithm, a clock gone back), with what
// the verifier below said as context (and, for a library's code, that code's own text).
Error chain_error(const Error& e, const std::string& what) {
  const bool corrupt = e.is(make_error_code(errc::corrupt));
  const bool ours = e.code().category() == outpost_category();
  const std::string detail = ours && !e.context().empty() ? e.context() : e.message();
  return Error(make_error_code(corrupt ? errc::corrupt : errc::verification_failed), what + ": " + detail);
}

}  // namespace

ChainVerifier::ChainVerifier(std::optional<EcPublicKey> ak, ChainState start,
                             std::function<std::optional<Digest>(uint64_t)> older_hash)
    : ak_(std::move(ak)), state_(std::move(start)), older_hash_(std::move(older_hash)) {
  if (state_.last_seq != 0) {
    recent_.push_back(state_.last_hash);
    recent_first_ = state_.last_seq;
  }
}

std::optional<Digest> ChainVerifier::hash_of(uint64_t seq) const {
  if (!recent_.empty() && seq >= recent_first_ && seq <= state_.last_seq) return recent_[seq - recent_first_];
  if (older_hash_) return older_hash_(seq);
  return std::nullopt;
}

Result<void> ChainVerifier::check_link(const AuditRecord& r) const {
  const std::string rec = "record " + std::to_string(r.seq);
  if (r.seq == 0) return fail(errc::verification_failed, "record 0: sequence numbers start at 1");
  if (state_.last_seq == 0) {
    if (!state_.anchored) return ok();  // a chain picked up mid-log: the first record is taken as given
    if (r.seq != 1) {
      return fail(errc::verification_failed, rec + " where record 1 belongs (the chain must start at record 1)");
    }
    if (r.prev_hash != Digest{}) {
      return fail(errc::verification_failed, rec + " is the first record but its prev_hash is not zero");
    }
    return ok();
  }
  const uint64_t last = state_.last_seq;
  if (r.seq > last + 1) {
    return fail(errc::verification_failed,
                rec + " follows record " + std::to_string(last) + ": " +
                    (r.seq == last + 2 ? "record " + std::to_string(last + 1) + " is"
                                       : "records " + std::to_string(last + 1) + ".." + std::to_string(r.seq - 1) + " are") +
                    " missing");
  }
  if (r.seq <= last) {
    return fail(errc::verification_failed,
                rec + " follows record " + std::to_string(last) + " (a repeat, or records out of order)");
  }
  if (r.prev_hash != state_.last_hash) {
    return fail(errc::verification_failed, rec + " does not link to record " + std::to_string(last) +
                                               " (its prev_hash is not that record's hash: the chain was altered)");
  }
  return ok();
}

Result<std::optional<attestation::ClockInfo>> ChainVerifier::check_checkpoint(const AuditRecord& r) const {
  const std::string cp = "checkpoint " + std::to_string(r.seq);
  if (r.head_seq >= r.seq || r.seq - r.head_seq > kCheckpointWindow) {
    return fail(errc::verification_failed, cp + " names head " + std::to_string(r.head_seq) +
                                               ", which is not one of the " + std::to_string(kCheckpointWindow) +
                                               " records before it");
  }
  const std::optional<Digest> head = hash_of(r.head_seq);
  if (!head) {
    return fail(errc::verification_failed, cp + " names head " + std::to_string(r.head_seq) +
                                               ", which is not one of the records before it in this log");
  }
  if (*head != r.head_hash) {
    return fail(errc::verification_failed,
                cp + " names head " + std::to_string(r.head_seq) +
                    " with a hash that is not that record's (the record or the checkpoint was altered)");
  }
  if (!ak_) return std::optional<attestation::ClockInfo>();
  Result<attestation::PcrValues> pcrs = attestation::decode_pcrs_tpm2tools(r.quote_pcrs);
  if (!pcrs) return fail(chain_error(pcrs.error(), cp + ": its PCR values do not parse"));
  const Digest qualifying = checkpoint_qualifying_data(r.head_seq, r.head_hash);
  Result<attestation::ParsedAttest> quote = attestation::verify_quote(r.quote, *ak_, qualifying, *pcrs);
  if (!quote) return fail(chain_error(quote.error(), cp + ": quote rejected"));
  if (state_.last_clock) {
    if (Result<void> forward = attestation::check_clock_forward(*state_.last_clock, quote->clock); !forward) {
      return fail(chain_error(forward.error(), cp));
    }
  }
  return std::optional<attestation::ClockInfo>(quote->clock);
}

Result<void> ChainVerifier::feed(const AuditRecord& r) {
  OUTPOST_TRY_VOID(check_link(r));
  std::optional<attestation::ClockInfo> clock;
  const bool checkpoint = r.kind == RecordKind::checkpoint;
  if (checkpoint) {
    OUTPOST_TRY(clock, check_checkpoint(r));
  }
  // Accepted: only now does anything change.
  if (recent_.empty()) recent_first_ = r.seq;
  recent_.push_back(r.hash);
  if (recent_.size() > kCheckpointWindow) {
    recent_.pop_front();
    ++recent_first_;
  }
  state_.last_seq = r.seq;
  state_.last_hash = r.hash;
  ++records_;
  if (checkpoint) {
    ++checkpoints_;
    if (clock) {
      ++checkpoints_verified_;
      state_.last_clock = clock;
    }
    last_anchored_seq_ = std::max(last_anchored_seq_, r.head_seq);
  }
  return ok();
}

}  // namespace outpost::offline_cache
