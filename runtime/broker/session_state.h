// What the broker knows about one launched agent across all of its MCP connections: the calls
// it made (for flow rules) and its budget of individual deny records.
//
// One SessionState per agent launch, shared (std::shared_ptr) by every McpSession of that
// agent, whatever server each talks to and however often the agent reconnects: a taint picked
// up from server A still applies to a call on server B, and a window limit or an approval
// survives a new connection.
//
// Deny budget: an agent that sends denied calls at full speed must not fill the audit log. A
// token bucket (deny_rate_per_s, deny_burst) admits deny records; a denial over the budget is
// still denied and answered as usual, but counted into a coalesced entry instead of a record of
// its own. The daemon drains those with take_coalesced() and writes each as one audit record
// (AuditDecisionLog::record_coalesced). Allowed calls never touch the budget.
//
// Thread-safe: connections of one agent run on threads of their own. The history has one mutex
// (held by a Locked guard for a whole decide-and-remember), the deny budget another, so that
// draining coalesced denials never waits behind a decision's audit write.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/json/value.hpp>

#include "policy/engine.h"

namespace outpost::broker {

struct DecisionRecord;

// Denied calls over the deny budget that share (server, tool, verdict, deciding rules, reason,
// bundle version): written as one audit record.
struct CoalescedDenials {
  std::string server, tool, verdict;
  std::vector<std::string> rules;  // deciding rule ids
  std::string reason;
  uint64_t bundle_version = 0;
  uint64_t count = 0;
  int64_t first_time = 0, last_time = 0;  // Unix seconds, as DecisionRecord::time
  std::string first_args_sha256, last_args_sha256;
  // More distinct kinds of denial arrived than the table holds (Limits::max_coalesced_kinds),
  // or one too large to key on: these are counted here, with server, tool and verdict "*".
  bool overflow = false;
};

class SessionState {
 public:
  struct Limits {
    size_t max_history = 4096;         // calls remembered for flow rules (the most sensitive one is kept)
    double deny_rate_per_s = 20;       // individual deny records per second, sustained
    uint32_t deny_burst = 100;         // ... and at once
    size_t max_coalesced_kinds = 256;  // distinct coalesced entries held between two take_coalesced()
  };
  // Monotonic time for the deny budget (tests step it by hand); null: steady_clock::now.
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  SessionState();
  explicit SessionState(Limits limits, Clock clock = nullptr);
  SessionState(const SessionState&) = delete;
  SessionState& operator=(const SessionState&) = delete;

  // The history under the state's lock, for one call: build the request's history from it,
  // decide, and remember the call if it goes out, all without another connection of the agent
  // getting in between. The spans and views it hands out are valid until unlock() or the end
  // of the guard. Not to be held across anything but the call's own decision and recording.
  class Locked {
   public:
    Locked(Locked&&) = default;
    // The agent's earlier calls, oldest first.
    std::span<const policy::SessionEvent> history() const;
    // The most sensitive data the agent has received so far.
    uint8_t max_sensitivity() const;
    // Remembers a call that went out, with the numbers of its arguments (for window totals).
    void remember(std::string_view server, std::string_view tool, int64_t time, uint8_t sensitivity,
                  const boost::json::value* args);
    // Releases the lock early; nothing else may be called afterwards.
    void unlock() { lock_.unlock(); }

   private:
    friend class SessionState;
    explicit Locked(SessionState& s) : state_(&s), lock_(s.history_mu_) {}
    SessionState* state_;
    std::unique_lock<std::mutex> lock_;
  };
  [[nodiscard]] Locked lock() { return Locked(*this); }

  // The deny budget. True: the denial gets a record of its own (a token was taken). False: the
  // caller passes it to coalesce() instead.
  [[nodiscard]] bool admit_deny_record();
  // Counts a denial over the budget into its coalesced entry.
  void coalesce(const DecisionRecord& r);
  // The coalesced entries since the last call, in order of first appearance; the table is empty
  // afterwards. The daemon calls this every 200 ms and when a connection or the agent ends.
  std::vector<CoalescedDenials> take_coalesced();

  // For `outpost status`: denials that got a record of their own, and denials coalesced (both
  // since the state was made).
  uint64_t denies_recorded() const { return denies_recorded_.load(std::memory_order_relaxed); }
  uint64_t denies_coalesced() const { return denies_coalesced_.load(std::memory_order_relaxed); }
  // Calls remembered, and the most sensitive data received (each takes the lock).
  size_t history_size() const;
  uint8_t max_sensitivity() const;

  const Limits& limits() const { return limits_; }

 private:
  // One remembered call: 64 bytes, and its arguments' numbers when it had any.
  struct Event {
    std::string_view server, tool;  // keys of names_
    int64_t time = 0;
    uint8_t sensitivity = 0;
    bool args_incomplete = false;
    boost::json::value args;  // only the numbers (policy::history_numbers), or null
  };
  // A hash that finds a std::string key by a string_view, without making a string.
  struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  void remember_locked(std::string_view server, std::string_view tool, int64_t time, uint8_t sensitivity,
                       const boost::json::value* args);
  std::string_view intern_locked(std::string_view name);
  void release_locked(std::string_view name);
  void forget_locked(const Event& e);
  static policy::SessionEvent view_of(const Event& e);
  void rebuild_view_locked();

  const Limits limits_;
  const Clock clock_;

  mutable std::mutex history_mu_;
  std::deque<Event> history_;                       // deque: appends keep the others' addresses
  // The server and tool names the history holds, each once, with how many events name it. A
  // session's calls name a handful of tools thousands of times.
  std::unordered_map<std::string, size_t, NameHash, std::equal_to<>> names_;
  std::vector<policy::SessionEvent> history_view_;  // [view_start_, end) mirrors history_
  size_t view_start_ = 0;
  uint8_t max_sensitivity_ = 0;

  std::mutex deny_mu_;
  double tokens_;
  std::chrono::steady_clock::time_point refilled_;
  std::vector<CoalescedDenials> coalesced_;
  std::unordered_map<std::string, size_t> coalesced_index_;  // key -> index in coalesced_
  std::atomic<uint64_t> denies_recorded_{0}, denies_coalesced_{0};
};

}  // namespace outpost::broker
