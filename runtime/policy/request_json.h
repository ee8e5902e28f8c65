// Decision requests as JSON, for `outpost decide --request R.json` and `outpost policy test`
// (and, later, the broker's logs). The format:
//   {"agent": "coder", "task": "t-1", "server": "fs", "tool": "read_file",
//    "arguments": {...}, "sensitivity": "internal" | 1,
//    "destination": {"host": "api.github.com", "port": 443, "path": "/"},
//    "time": "2026-11-28T10:00:00Z" | 1795000000,
//    "history": [{"server": "vault", "tool": "read", "time": ..., "sensitivity": ..., "arguments": {...}}]}
// Only agent, server and tool are required; time defaults to the caller's "now".
// Egress requests (OwnedEgressRequest), one connection through the egress proxy:
//   {"agent": "coder", "task": "t-1", "host": "api.openai.com", "port": 443,
//    "address": "162.159.140.245", "own_address": false, "sensitivity": ..., "time": ..., "history": [...]}
// agent, host and port are required; without "address" the request is the name-only decision.
#pragma once

#include <boost/json/value.hpp>
#include <deque>
#include <string>
#include <vector>

#include "outpost/base/result.h"
#include "policy/engine.h"

namespace outpost::policy {

// A Request with the storage it points into. Not copyable (the views would dangle).
class OwnedRequest {
 public:
  OwnedRequest() = default;
  OwnedRequest(const OwnedRequest&) = delete;
  OwnedRequest& operator=(const OwnedRequest&) = delete;

  const Request& get() const { return request_; }

  static Result<std::unique_ptr<OwnedRequest>> parse(const boost::json::value& v, int64_t now);

 private:
  std::deque<std::string> strings_;
  std::deque<boost::json::value> values_;
  std::vector<SessionEvent> history_;
  Request request_;
};

class OwnedEgressRequest {
 public:
  OwnedEgressRequest() = default;
  OwnedEgressRequest(const OwnedEgressRequest&) = delete;
  OwnedEgressRequest& operator=(const OwnedEgressRequest&) = delete;

  const EgressRequest& get() const { return request_; }

  static Result<std::unique_ptr<OwnedEgressRequest>> parse(const boost::json::value& v, int64_t now);

 private:
  std::deque<std::string> strings_;
  std::deque<boost::json::value> values_;
  std::vector<SessionEvent> history_;
  EgressRequest request_;
};

// A sensitivity given as a name or a number 0..255.
Result<uint8_t> parse_sensitivity(const boost::json::value& v);

}  // namespace outpost::policy
