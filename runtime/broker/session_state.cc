#include "broker/session_state.h"

#include <algorithm>

#include "broker/mcp_session.h"

namespace outpost::broker {

namespace {

// A denial whose key (tool name, reason, rule ids) is longer than this is counted in the
// overflow entry: the table must stay small whatever the agent names its tools.
constexpr size_t kMaxCoalescedKeyBytes = 4096;

void append_field(std::string& key, std::string_view field) {
  // Length-prefixed, so no choice of tool name can make two different keys equal.
  key += std::to_string(field.size());
  key.push_back(':');
  key.append(field);
}

}  // namespace

SessionState::SessionState() : SessionState(Limits{}) {}

SessionState::SessionState(Limits limits, Clock clock)
    : limits_(limits),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::steady_clock::now(); })),
      tokens_(static_cast<double>(limits.deny_burst)),
      refilled_(clock_()) {}

// ---- history ----

std::span<const policy::SessionEvent> SessionState::Locked::history() const {
  return std::span<const policy::SessionEvent>(state_->history_view_).subspan(state_->view_start_);
}

uint8_t SessionState::Locked::max_sensitivity() const { return state_->max_sensitivity_; }

void SessionState::Locked::remember(std::string_view server, std::string_view tool, int64_t time,
                                    uint8_t sensitivity, const boost::json::value* args) {
  state_->remember_locked(server, tool, time, sensitivity, args);
}

size_t SessionState::history_size() const {
  std::lock_guard lock(history_mu_);
  return history_.size();
}

uint8_t SessionState::max_sensitivity() const {
  std::lock_guard lock(history_mu_);
  return max_sensitivity_;
}

std::string_view SessionState::intern_locked(std::string_view name) {
  auto it = names_.find(name);
  if (it == names_.end()) it = names_.emplace(std::string(name), 0).first;
  ++it->second;
  return it->first;  // a node's key: stays where it is while the entry lives
}

void SessionState::release_locked(std::string_view name) {
  auto it = names_.find(name);
  if (it != names_.end() && --it->second == 0) names_.erase(it);
}

void SessionState::forget_locked(const Event& e) {
  release_locked(e.server);
  release_locked(e.tool);
}

policy::SessionEvent SessionState::view_of(const Event& e) {
  return policy::SessionEvent{e.server, e.tool, e.time, e.sensitivity, e.args.is_null() ? nullptr : &e.args,
                              e.args_incomplete};
}

void SessionState::rebuild_view_locked() {
  view_start_ = 0;
  history_view_.clear();
  for (const auto& h : history_) history_view_.push_back(view_of(h));
}

void SessionState::remember_locked(std::string_view server, std::string_view tool, int64_t time,
                                   uint8_t sensitivity, const boost::json::value* args) {
  // Of the arguments only their numbers, where they were: all a window total can read. Keeping
  // the strings would cost a session of writes its payloads; keeping nothing of large calls
  // (as before 2026-12-08) let padding hide an amount from a spending cap.
  Event e;
  e.time = time;
  e.sensitivity = sensitivity;
  if (args != nullptr) e.args = policy::history_numbers(*args, e.args_incomplete);
  e.server = intern_locked(server);
  try {
    e.tool = intern_locked(tool);
  } catch (...) {
    release_locked(e.server);
    throw;
  }
  try {
    history_.push_back(std::move(e));  // on failure the deque and `e` are as they were
  } catch (...) {
    forget_locked(e);
    throw;
  }
  try {
    // deque::push_back keeps references to the other elements valid: append the one new view.
    history_view_.push_back(view_of(history_.back()));
  } catch (...) {
    forget_locked(history_.back());
    history_.pop_back();
    throw;
  }
  max_sensitivity_ = std::max(max_sensitivity_, sensitivity);
  if (history_.size() > limits_.max_history) {
    // Drop the oldest call, unless it is the most sensitive one: then the next oldest, so a
    // long session cannot wash out its taint.
    if (history_.front().sensitivity == max_sensitivity_ && max_sensitivity_ > 0) {
      forget_locked(history_[1]);
      history_.erase(history_.begin() + 1);
      rebuild_view_locked();
    } else {
      forget_locked(history_.front());
      history_.pop_front();  // references to the rest stay valid
      ++view_start_;         // the view's dead prefix is cut in bulk below, O(1) amortised
    }
  }
  if (view_start_ > limits_.max_history) {
    history_view_.erase(history_view_.begin(), history_view_.begin() + static_cast<ptrdiff_t>(view_start_));
    view_start_ = 0;
  }
}

// ---- deny budget ----

bool SessionState::admit_deny_record() {
  const auto now = clock_();
  std::lock_guard lock(deny_mu_);
  if (now > refilled_) {
    const double elapsed = std::chrono::duration<double>(now - refilled_).count();
    tokens_ = std::min(static_cast<double>(limits_.deny_burst), tokens_ + elapsed * limits_.deny_rate_per_s);
    refilled_ = now;
  }
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  denies_recorded_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void SessionState::coalesce(const DecisionRecord& r) {
  std::string key;
  size_t bytes = r.server.size() + r.tool.size() + r.verdict.size() + r.reason.size();
  for (const auto& id : r.rules) bytes += id.size();
  bool overflow = bytes > kMaxCoalescedKeyBytes;
  if (!overflow) {
    key.reserve(bytes + 16 * (5 + r.rules.size()));
    append_field(key, r.server);
    append_field(key, r.tool);
    append_field(key, r.verdict);
    key += std::to_string(r.rules.size());
    for (const auto& id : r.rules) append_field(key, id);
    append_field(key, r.reason);
    key += std::to_string(r.bundle_version);
  }

  std::lock_guard lock(deny_mu_);
  denies_coalesced_.fetch_add(1, std::memory_order_relaxed);
  auto it = overflow ? coalesced_index_.end() : coalesced_index_.find(key);
  if (!overflow && it == coalesced_index_.end() && coalesced_index_.size() >= limits_.max_coalesced_kinds) {
    overflow = true;
  }
  if (overflow) key = "overflow";  // cannot collide: every real key starts with a digit
  if (overflow) it = coalesced_index_.find(key);
  if (it == coalesced_index_.end()) {
    CoalescedDenials c;
    if (overflow) {
      c.server = c.tool = c.verdict = "*";
      c.reason = "more distinct kinds of denial than the coalescing table holds";
      c.overflow = true;
    } else {
      c.server = r.server;
      c.tool = r.tool;
      c.verdict = r.verdict;
      c.rules = r.rules;
      c.reason = r.reason;
      c.bundle_version = r.bundle_version;
    }
    c.first_time = r.time;
    c.first_args_sha256 = r.args_sha256;
    it = coalesced_index_.emplace(std::move(key), coalesced_.size()).first;
    coalesced_.push_back(std::move(c));
  }
  CoalescedDenials& c = coalesced_[it->second];
  ++c.count;
  c.last_time = r.time;
  c.last_args_sha256 = r.args_sha256;
}

std::vector<CoalescedDenials> SessionState::take_coalesced() {
  std::vector<CoalescedDenials> out;
  std::lock_guard lock(deny_mu_);
  out.swap(coalesced_);
  coalesced_index_.clear();
  return out;
}

}  // namespace outpost::broker
