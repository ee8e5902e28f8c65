// The request-time decision engine.
//
// An Engine is built once from a verified bundle and is immutable: any number of
// threads decide against it at once, and a new bundle is swapped in atomically (PolicySlot)
// while readers finish with the old one. decide() performs no heap allocation for requests
// whose regexes have warmed RE2's cache; its cost depends on the rules that can apply to the
// request's (agent, tool) pair, not on the size of the bundle: rules are indexed by pair at
// compile time.
//
// Semantics (docs/policy.md): an unknown or revoked agent, an unknown tool, or a tool outside
// the agent's grant is denied; otherwise any matching deny rule denies; otherwise the first
// matching allow rule (in bundle order) allows, unless a flow rule over the session denies;
// otherwise the default is deny. Shadow rules are evaluated and reported, never enforced.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/value.hpp>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"
#include "outpost/fb/bundle_generated.h"

namespace re2 {
class RE2;
}

namespace outpost::policy {

// One earlier call of this session, as the broker recorded it.
struct SessionEvent {
  std::string_view server;
  std::string_view tool;
  int64_t time = 0;
  uint8_t sensitivity = 0;                   // label of the data the call returned
  const boost::json::value* args = nullptr;  // its arguments (for window totals); may hold only their numbers
  // Some numbers of its arguments were not kept (history_numbers): a window total whose
  // pointer finds no number in `args` cannot be known, and the window rule denies.
  bool args_incomplete = false;
};

// What the broker keeps of a call's arguments in the session history: their numbers, where
// they were (objects keep the members that hold numbers, arrays their indices, with null where
// no number was), since a window total reads nothing else. At most kHistoryNumbers numbers,
// kHistoryDepth levels deep; null when there is no number. `incomplete` is set when a number
// was left out.
inline constexpr size_t kHistoryNumbers = 64;
inline constexpr size_t kHistoryDepth = 16;
boost::json::value history_numbers(const boost::json::value& args, bool& incomplete);

struct Request {
  std::string_view agent;
  std::string_view task;                     // session/task id
  std::string_view server;
  std::string_view tool;
  const boost::json::value* args = nullptr;  // the call's arguments (an object), or none
  uint8_t sensitivity = 0;                   // sensitivity of the data the call carries
  std::string_view host;                     // destination; empty when the call has none
  uint16_t port = 0;
  std::string_view path;
  int64_t time = 0;                          // Unix seconds
  std::span<const SessionEvent> history;
};

enum class Verdict : uint8_t {
  allowed_by_rule,
  denied_by_rule,
  no_rule_allows,      // default deny
  unknown_agent,
  agent_revoked,
  unknown_tool,
  tool_not_granted,
  flow_denied,
  bundle_not_in_force, // on-expiry deny-all
  address_refused,     // egress: the name resolved to an address no matching rule names by CIDR
};

// Which rules the engine applies: the bundle's rules, or after expiry its signed safe set, or
// nothing at all (deny all).
enum class Mode : uint8_t { normal, safe_set, deny_all };

struct Decision {
  static constexpr size_t kMaxIds = 8;
  bool allow = false;
  Verdict verdict = Verdict::no_rule_allows;
  uint64_t bundle_version = 0;
  uint32_t credential_ttl = 0;               // seconds; 0 when denied
  // Deciding rules (indices into the policy's rule table; flow rules are offset by
  // kFlowBase), and shadow rules that matched.
  std::array<uint32_t, kMaxIds> rules{};
  uint8_t rule_count = 0;
  std::array<uint32_t, kMaxIds> shadow{};
  uint8_t shadow_count = 0;
  bool rate_limited = false;                 // an allow rule matched but was over its rate
  Mode mode = Mode::normal;                  // which rule set `rules` indexes
};
inline constexpr uint32_t kFlowBase = 1u << 31;

// ---- Egress (docs/policy.md, "Egress") ----

// One TCP connection an agent asks the egress proxy for. Decided twice for a name: first on
// the name alone (address empty) so that nothing the bundle does not allow is even resolved
// (no DNS exfiltration), then on each address outpostd resolved it to.
struct EgressRequest {
  std::string_view agent;
  std::string_view task;
  std::string_view host;       // as the agent asked: a name, or an IP literal (no brackets)
  uint16_t port = 0;
  std::string_view address;    // the resolved address (IPv4-mapped IPv6 given as IPv4); empty: not yet
  bool own_address = false;    // `address` is one of this host's own
  uint8_t sensitivity = 0;     // the most sensitive data the session has received
  int64_t time = 0;
  std::span<const SessionEvent> history;
};

struct EgressDecision {
  bool allow = false;
  Verdict verdict = Verdict::no_rule_allows;
  uint64_t bundle_version = 0;
  Mode mode = Mode::normal;
  int32_t rule = -1;                   // the deciding egress rule, or -1
  int32_t flow = -1;                   // the deciding flow rule (flow_denied), or -1
  std::array<uint32_t, Decision::kMaxIds> shadow{};
  uint8_t shadow_count = 0;
  bool rate_limited = false;
  // address_refused (and for people on a deny): what the address is ("loopback",
  // "cloud metadata", "private", "this host"...); empty for a public address.
  std::string_view address_class;
  // Of the deciding allow rule: its kind, byte budget (0: none; window 0: per connection),
  // and the header to inject on plain HTTP (views into the engine, valid while it lives).
  fb::EgressKind kind = fb::EgressKind::Api;
  uint64_t budget_bytes = 0;
  uint32_t budget_window = 0;
  std::string_view inject_header, inject_secret, inject_prefix;
};

class RateLimiter;

class Engine {
 public:
  // Compiles a bundle payload (the Bundle FlatBuffer) that has passed the FlatBuffers
  // verifier (SignedBundle::parse runs it). Names, globs and reasons are read in place from
  // the buffer, never copied: the engine keeps `owner` alive, which must own `payload`'s bytes.
  static Result<std::shared_ptr<const Engine>> build(std::shared_ptr<const void> owner, ByteView payload);
  // The same over a copy of `payload` the engine owns.
  static Result<std::shared_ptr<const Engine>> build(ByteView payload);
  ~Engine();

  // The decision for `req`. `rates` keeps rate-limit counts between calls (may be null: rate
  // limits then never trip). Thread-safe for concurrent callers.
  Decision decide(const Request& req, Mode mode = Mode::normal, RateLimiter* rates = nullptr) const;
  // The same semantics without the index: every rule in bundle order. For tests and
  // debugging; allocates nothing either, but scans the whole bundle.
  Decision decide_unindexed(const Request& req, Mode mode = Mode::normal, RateLimiter* rates = nullptr) const;

  // A sentence for people: "allowed by rule coder-read (coders read their workspace)".
  std::string explain(const Decision& d, const Request& req) const;
  // The id of a deciding or shadow rule of `d` (flow rules too: kFlowBase + i).
  std::string rule_id(const Decision& d, uint32_t index) const;

  // Whether some call of `agent` to server/tool could be allowed in `mode`: the agent is known
  // and not revoked, the tool is declared and granted to it, and at least one enforced allow
  // rule covers the pair. What the broker shows in tools/list; decide() still rules each call.
  bool could_allow(std::string_view agent, std::string_view server, std::string_view tool, Mode mode) const;
  // The decision for one egress connection. `rates` as for decide(); pass null for the first,
  // name-only decision so that only the final one counts.
  EgressDecision decide_egress(const EgressRequest& req, Mode mode = Mode::normal, RateLimiter* rates = nullptr) const;
  std::string explain_egress(const EgressDecision& d, const EgressRequest& req) const;
  // The id of an egress rule (EgressDecision::rule, shadow) or of a flow rule (EgressDecision::flow).
  std::string egress_rule_id(int32_t index) const;
  std::string flow_rule_id(int32_t index) const;
  // Whether the bundle has an enforced allow egress rule for `agent` at all.
  bool has_egress(std::string_view agent) const;

  // The label a call's result carries (the tool's output_sensitivity); 0 for unknown tools.
  uint8_t output_sensitivity(std::string_view server, std::string_view tool) const;

  uint64_t version() const;
  size_t rule_count() const;

  struct Impl;

 private:
  Engine();
  std::unique_ptr<Impl> impl_;
};

// Rate-limit counters: fixed windows per (rule, key), in a fixed-size table allocated at the
// first event (an agent whose rules set no rate never pays for one: 24 bytes a slot).
// Thread-safe (one mutex; the table is small and the critical section a few loads).
class RateLimiter {
 public:
  explicit RateLimiter(size_t slots = 1 << 14);
  ~RateLimiter();
  // Counts one event for (rule, key) at `now` if fewer than `limit` happened in the current
  // window of `window` seconds; false when over.
  bool try_acquire(uint32_t rule, std::string_view key, int64_t now, uint32_t limit, uint32_t window);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The policy in force, swapped atomically when a new bundle is installed.
class PolicySlot {
 public:
  std::shared_ptr<const Engine> get() const { return current_.load(std::memory_order_acquire); }
  void set(std::shared_ptr<const Engine> p) { current_.store(std::move(p), std::memory_order_release); }

 private:
  std::atomic<std::shared_ptr<const Engine>> current_;
};

std::string_view verdict_name(Verdict v);

}  // namespace outpost::policy
