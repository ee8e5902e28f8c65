// The interim audit sink: decisions appended to a file, one JSON object per line. The
// tamper-evident, TPM-anchored audit log (issue 5) replaces it behind DecisionSink.
//
// Each record is one write(2) to an O_APPEND descriptor, so concurrent sessions never
// interleave within a line and a crash of outpostd loses nothing the kernel accepted; sync()
// (called by the daemon on a timer and at shutdown) makes it durable across power loss.
#pragma once

#include <filesystem>
#include <mutex>

#include "broker/mcp_session.h"

namespace outpost::broker {

class JsonlDecisionLog : public DecisionSink {
 public:
  static Result<std::unique_ptr<JsonlDecisionLog>> open(const std::filesystem::path& file);
  ~JsonlDecisionLog() override;
  Result<void> record(const DecisionRecord& r) override;
  // Also records events other than decisions (agent lifecycle, refused deployments).
  Result<void> record_event(std::string_view kind, const boost::json::object& fields);
  Result<void> sync();
  uint64_t records() const { return records_; }

 private:
  JsonlDecisionLog(int fd, std::filesystem::path file) : fd_(fd), file_(std::move(file)) {}
  Result<void> append(std::string line);
  int fd_;
  std::filesystem::path file_;
  std::mutex mu_;
  uint64_t records_ = 0;
};

std::string to_json_line(const DecisionRecord& r);

}  // namespace outpost::broker
