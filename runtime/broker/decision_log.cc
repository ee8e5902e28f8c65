#include "broker/decision_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <boost/json/serialize.hpp>

#include "outpost/base/errors.h"
#include "outpost/base/time.h"

namespace outpost::broker {

namespace json = boost::json;

std::string to_json_line(const DecisionRecord& r) {
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
  return json::serialize(o) + "\n";
}

Result<std::unique_ptr<JsonlDecisionLog>> JsonlDecisionLog::open(const std::filesystem::path& file) {
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno_error("open " + file.string(), errno));
  return std::unique_ptr<JsonlDecisionLog>(new JsonlDecisionLog(fd, file));
}

JsonlDecisionLog::~JsonlDecisionLog() {
  (void)sync();
  ::close(fd_);
}

Result<void> JsonlDecisionLog::append(std::string line) {
  std::lock_guard lock(mu_);
  ssize_t n = ::write(fd_, line.data(), line.size());
  if (n < 0) return fail(errno_error("write " + file_.string(), errno));
  if (static_cast<size_t>(n) != line.size()) {
    // A short write (full disk): the torn line is cut at the next open by readers; report it.
    return fail(make_error_code(errc::io), "short write to " + file_.string() + " (disk full?)");
  }
  ++records_;
  return {};
}

Result<void> JsonlDecisionLog::record(const DecisionRecord& r) { return append(to_json_line(r)); }

Result<void> JsonlDecisionLog::record_event(std::string_view kind, const json::object& fields) {
  json::object o = fields;
  o["kind"] = kind;
  if (!o.contains("time")) o["time"] = format_rfc3339_utc(unix_now());
  return append(json::serialize(o) + "\n");
}

Result<void> JsonlDecisionLog::sync() {
  if (::fdatasync(fd_) != 0) return fail(errno_error("fdatasync " + file_.string(), errno));
  return {};
}

}  // namespace outpost::broker
