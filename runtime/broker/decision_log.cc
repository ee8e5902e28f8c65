#include "broker/decision_log.h"

#include <boost/json/serialize.hpp>

#include "outpost/base/errors.h"
#include "outpost/base/time.h"

namespace outpost::broker {

namespace json = boost::json;

std::string decision_json(const DecisionRecord& r) {
  json::object o;
  o["kind"] = "decision";
  o["time"] = format_rfc3339_utc(r.time);
  o["agent"] = r.agent;
  o["task"] = r.task;
  o["server"] = r.server;
  o["tool"] = r.tool;
  o["allow"] = r.allow;
  o["verdict"] = r.verdict;
  json::array rules(r.rules.begin(), r.rules.end());
  o["rules"] = std::move(rules);
  if (!r.shadow.empty()) o["shadow"] = json::array(r.shadow.begin(), r.shadow.end());
  o["bundle_version"] = r.bundle_version;
  o["args_sha256"] = r.args_sha256;
  o["reason"] = r.reason;
  if (r.credential) o["credential"] = true;
  return json::serialize(o);
}

std::string coalesced_json(std::string_view agent, std::string_view task, const CoalescedDenials& c) {
  json::object o;
  o["kind"] = "denials_coalesced";
  o["time"] = format_rfc3339_utc(c.last_time);
  o["agent"] = agent;
  o["task"] = task;
  o["server"] = c.server;
  o["tool"] = c.tool;
  o["allow"] = false;
  o["verdict"] = c.verdict;
  o["rules"] = json::array(c.rules.begin(), c.rules.end());
  o["bundle_version"] = c.bundle_version;
  o["reason"] = c.reason;
  o["count"] = c.count;
  o["first"] = format_rfc3339_utc(c.first_time);
  o["last"] = format_rfc3339_utc(c.last_time);
  o["first_args_sha256"] = c.first_args_sha256;
  o["last_args_sha256"] = c.last_args_sha256;
  if (c.overflow) o["overflow"] = true;
  return json::serialize(o);
}

Result<std::unique_ptr<AuditDecisionLog>> AuditDecisionLog::open(const std::filesystem::path& dir,
                                                                offline_cache::AuditLogOptions options,
                                                                bool durable_decisions) {
  OUTPOST_TRY(auto log, offline_cache::AuditLog::open(dir, options));
  return std::unique_ptr<AuditDecisionLog>(new AuditDecisionLog(std::move(log), durable_decisions));
}

namespace {
offline_cache::AuditEntry decision_entry(const DecisionRecord& r) {
  offline_cache::AuditEntry e;
  e.kind = offline_cache::RecordKind::decision;
  e.event = "decision";
  e.agent = r.agent;
  e.bundle_version = r.bundle_version;
  e.detail = decision_json(r);
  e.time_ms = r.time * 1000;
  return e;
}
}  // namespace

Result<uint64_t> AuditDecisionLog::stage(const DecisionRecord& r) {
  OUTPOST_TRY(uint64_t seq, log_->stage(decision_entry(r)));
  if (!r.allow) denies_.fetch_add(1);
  // Queued decisions: nothing waits, the committer writes them within kStagedInterval.
  return durable_ ? seq : uint64_t{0};
}

Result<void> AuditDecisionLog::commit(uint64_t ticket) {
  if (ticket == 0) return {};
  return log_->wait_durable(ticket);
}

Result<void> AuditDecisionLog::record(const DecisionRecord& r) {
  offline_cache::AuditEntry e = decision_entry(r);
  if (durable_) {
    OUTPOST_TRY_VOID(log_->append_durable(std::move(e)));
  } else {
    // Staged, not appended: waking the committer for each decision would put a thread hop on
    // the call's path; it writes what is staged within kStagedInterval.
    OUTPOST_TRY_VOID(log_->stage(std::move(e)));
  }
  if (!r.allow) denies_.fetch_add(1);
  return {};
}

Result<void> AuditDecisionLog::record_coalesced(std::string_view agent, std::string_view task,
                                                const CoalescedDenials& c) {
  offline_cache::AuditEntry e;
  e.kind = offline_cache::RecordKind::decision;
  e.event = "denials_coalesced";
  e.agent = std::string(agent);
  e.bundle_version = c.bundle_version;
  e.detail = coalesced_json(agent, task, c);
  e.time_ms = c.last_time * 1000;
  OUTPOST_TRY_VOID(log_->append(std::move(e)));
  denies_.fetch_add(c.count);
  return {};
}

Result<void> AuditDecisionLog::record_egress(std::string_view agent, uint64_t bundle_version, int64_t time,
                                             std::string detail, bool allow) {
  offline_cache::AuditEntry e;
  e.kind = offline_cache::RecordKind::decision;
  e.event = "egress";
  e.agent = std::string(agent);
  e.bundle_version = bundle_version;
  e.detail = std::move(detail);
  e.time_ms = time * 1000;
  if (durable_) {
    OUTPOST_TRY_VOID(log_->append_durable(std::move(e)));
  } else {
    OUTPOST_TRY_VOID(log_->append(std::move(e)));
  }
  if (!allow) denies_.fetch_add(1);
  return {};
}

Result<void> AuditDecisionLog::record_egress_close(std::string_view agent, std::string detail) {
  offline_cache::AuditEntry e;
  e.kind = offline_cache::RecordKind::lifecycle;
  e.event = "egress_close";
  e.agent = std::string(agent);
  e.detail = std::move(detail);
  OUTPOST_TRY_VOID(log_->append(std::move(e)));
  return {};
}

Result<void> AuditDecisionLog::record_event(std::string_view kind, const json::object& fields) {
  offline_cache::AuditEntry e;
  e.kind = kind.starts_with("bundle") ? offline_cache::RecordKind::bundle_install
           : kind == "measured" || kind.starts_with("measurement") ? offline_cache::RecordKind::attestation
                                                                   : offline_cache::RecordKind::lifecycle;
  e.event = std::string(kind);
  if (const auto* a = fields.if_contains("agent"); a != nullptr && a->is_string()) e.agent = std::string(a->get_string());
  json::object o = fields;
  o["kind"] = kind;
  if (!o.contains("time")) o["time"] = format_rfc3339_utc(unix_now());
  e.detail = json::serialize(o);
  OUTPOST_TRY_VOID(log_->append(std::move(e)));
  return {};
}

Result<void> AuditDecisionLog::sync() { return log_->wait_durable(log_->last_seq()); }

}  // namespace outpost::broker
