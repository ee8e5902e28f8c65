// The broker's DecisionSink on the node's audit log (offline-cache/audit_log.h): every decision
// and every lifecycle event becomes a chained, group-committed record. By default a decision is
// recorded durably (fdatasync'ed) before record() returns, or, staged, before commit() returns,
// so the call it allows goes out only once its record would survive power loss; lifecycle
// events are queued and ride the next commit. With durable_decisions off, decisions are staged
// without waking the committer (no thread hop on a call's path) and reach the disk within
// kStagedInterval (50 ms) or with the next commit, whichever comes first.
// Denials over an agent's deny budget arrive coalesced (SessionState::take_coalesced) and are
// queued the same way: their calls were answered already, nothing waits on them.
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
  // With durable decisions: queued, ticket = its sequence number, durable after commit().
  // Without: queued for the committer, which writes it within kStagedInterval; ticket 0.
  Result<uint64_t> stage(const DecisionRecord& r) override;
  Result<void> commit(uint64_t ticket) override;
  // Denials coalesced over the deny budget: one decision record of event "denials_coalesced"
  // (fields agent, task, server, tool, verdict, rules, reason, bundle_version, count, first,
  // last, first_args_sha256, last_args_sha256; times in RFC 3339 as a decision's). Its count
  // goes into the denies take_denies() reports.
  Result<void> record_coalesced(std::string_view agent, std::string_view task, const CoalescedDenials& c);
  // An egress decision (egress/proxy.h, egress_json): a decision record of event "egress",
  // durable before it returns as a tool call's decision is, so a connection goes out only once
  // its record would survive power loss.
  Result<void> record_egress(std::string_view agent, uint64_t bundle_version, int64_t time, std::string detail, bool allow);
  // An allowed egress connection's end (egress_close_json): a lifecycle record, queued.
  Result<void> record_egress_close(std::string_view agent, std::string detail);
  // Events other than decisions: agent lifecycle, refused deployments, bundle installs.
  Result<void> record_event(std::string_view kind, const boost::json::object& fields);
  // Waits until everything queued so far is durable.
  Result<void> sync();
  uint64_t records() const { return log_->last_seq(); }
  offline_cache::AuditLog& log() { return *log_; }
  // Decisions that were denies since the last call, coalesced ones included (the daemon
  // checkpoints on a deny).
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
// The coalesced denials as the JSON object their record's detail holds.
std::string coalesced_json(std::string_view agent, std::string_view task, const CoalescedDenials& c);

}  // namespace outpost::broker
