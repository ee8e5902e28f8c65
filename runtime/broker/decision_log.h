// The broker's DecisionSink on the node's audit log (offline-cache/audit_log.h): every decision
// and every lifecycle event becomes a chained, group-committed record. By default a decision is
// recorded durably (fdatasync'ed) before record() returns, so the call it allows goes out only
// once its record would survive power loss; lifecycle events are queued and ride the next commit.
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>

#include <boost/json/object.hpp>

#include "broker/mcp_session.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::broker {

class AuditDecisionLog : public DecisionSink {
 public:
  // durable_decisions: record() returns once the decision is fdatasync'ed (else once queued).
  static Result<std::unique_ptr<AuditDecisionLog>> open(const std::filesystem::path& dir,
                                                        offline_cache::AuditLogOptions options,
                                                        bool durable_decisions = true);
  Result<void> record(const DecisionRecord& r) override;
  // Events other than decisions: agent lifecycle, refused deployments, bundle installs.
  Result<void> record_event(std::string_view kind, const boost::json::object& fields);
  // Waits until everything queued so far is durable.
  Result<void> sync();
  uint64_t records() const { return log_->last_seq(); }
  offline_cache::AuditLog& log() { return *log_; }
  // Decisions that were denies since the last call (the daemon checkpoints on a deny).
  uint64_t take_denies() { return denies_.exchange(0); }
  void add_denies(uint64_t n) { denies_.fetch_add(n); }

 private:
  AuditDecisionLog(std::unique_ptr<offline_cache::AuditLog> log, bool durable)
      : log_(std::move(log)), durable_(durable) {}
  std::unique_ptr<offline_cache::AuditLog> log_;
  bool durable_;
  std::atomic<uint64_t> denies_{0};
};

// The decision as the JSON object a record's detail holds.
std::string decision_json(const DecisionRecord& r);

}  // namespace outpost::broker
