// The policy compiler: walks the YAML (through compiler_input.h, which reads every value
// strictly), builds the Bundle in FlatBuffers' object API and packs it. Cross-references are
// resolved against the declared agents and tools as they are read; the overlap warnings come
// last. Reading order (and so which error is reported first): top-level fields, tools, agents,
// rules, flow rules, safe_set, revoked_agents.
#include "compiler.h"

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

#include <yaml-cpp/depthguard.h>

#include "compiler_input.h"
#include "match.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/fb/bundle_generated.h"

namespace outpost::policy {
namespace {

using input::Field;
using input::Map;
using input::in_quotes;
using input::Reader;

// The agent × tool reachability matrix is dense; these bound it (12.5 MB at most).
inline constexpr size_t kMaxAgents = 10'000;
inline constexpr size_t kMaxTools = 10'000;
inline constexpr uint64_t kMaxU32 = UINT32_MAX;

// Declared agent names or tool references ("server/name"), in source order.
class NameIndex {
 public:
  bool add(const std::string& name, int line) {
    if (!index_.emplace(name, static_cast<uint32_t>(names_.size())).second) return false;
    names_.push_back(name);
    lines_.push_back(line);
    return true;
  }
  size_t size() const { return names_.size(); }
  const std::string& name(uint32_t i) const { return names_[i]; }
  int line_of(const std::string& name) const { return lines_[index_.at(name)]; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Indices the glob matches, ascending. An exact name is a lookup, a pattern a scan (once:
  // policies repeat their patterns). Call only after every name was added.
  const std::vector<uint32_t>& match(const std::string& glob) {
    auto [it, fresh] = matches_.try_emplace(glob);
    if (!fresh) return it->second;
    if (glob_is_literal(glob)) {
      auto found = index_.find(glob);
      if (found != index_.end()) it->second.push_back(found->second);
      return it->second;
    }
    for (uint32_t i = 0; i < names_.size(); ++i) {
      if (glob_match(glob, names_[i])) it->second.push_back(i);
    }
    return it->second;
  }

 private:
  std::vector<std::string> names_;
  std::vector<int> lines_;
  std::unordered_map<std::string, uint32_t> index_;
  std::unordered_map<std::string, std::vector<uint32_t>> matches_;
};

// The declared agents (or tools) a rule's globs select.
struct Selection {
  bool all = false;             // every declared one (no globs given, or globs covering all)
  std::vector<uint32_t> items;  // ascending, when !all
  bool contains(uint32_t i) const { return all || std::binary_search(items.begin(), items.end(), i); }
};

// What the overlap and reachability checks need to know of a rule.
struct RuleFacts {
  std::string id;
  int line = 0;
  bool allow = false;
  bool shadow = false;
  Selection agents;
  Selection tools;
};

using Destinations = std::vector<std::unique_ptr<fb::DestinationT>>;

class Compiler {
 public:
  Compiler(std::string source, const CompileOptions& options) : in_(std::move(source)), options_(options) {}

  Result<CompiledPolicy> run(std::string_view yaml);

 private:
  Result<void> top_level(const Field& root);
  Result<void> validity(const Map& top);
  Result<std::unique_ptr<fb::ScopeT>> scope(const Field& f);
  Result<std::vector<std::string>> strings(const Field& f);
  Result<std::unique_ptr<fb::DestinationT>> destination(const Field& f);
  // `empty_means` set: an empty list is refused (it would read as that).
  Result<Destinations> destinations(const Field& f, std::string_view empty_means = {});

  Result<std::unique_ptr<fb::ToolT>> tool(const Field& f);
  Result<std::unique_ptr<fb::AgentT>> agent(const Field& f);

  Result<std::unique_ptr<fb::RuleT>> rule(const Field& f, std::vector<RuleFacts>& facts);
  Result<std::unique_ptr<fb::ArgConstraintT>> arg_constraint(const Field& f);
  Result<std::unique_ptr<fb::TimeWindowT>> time_window(const Field& f);
  Result<std::unique_ptr<fb::RateLimitT>> rate(const Field& f);
  Result<std::unique_ptr<fb::FlowRuleT>> flow_rule(const Field& f);
  Result<std::unique_ptr<fb::EgressRuleT>> egress_rule(const Field& f);
  // The conditions tool rules and egress rules share: within_clearance, max_sensitivity,
  // time_windows and rate.
  template <class RuleT>
  Result<void> conditions(const Map& m, RuleT& r, bool allow, std::string_view what);
  Result<std::unique_ptr<fb::HeaderInjectionT>> injection(const Field& f);

  // Reads an optional list of agent (or tool) globs into `globs`; each must match a declared
  // one. A missing field selects all.
  Result<Selection> select(const Map& m, std::string_view key, NameIndex& names, std::string_view kind,
                           std::vector<std::string>& globs);
  Result<void> claim_id(const Field& f, const std::string& id);
  Result<void> check_reachable(const Field& f, std::string_view what, const std::string& id, const Selection& agents,
                               const Selection& tools) const;

  bool reaches(uint32_t agent, uint32_t tool) const {
    return (reach_[agent * reach_words_ + tool / 64] >> (tool % 64)) & 1;
  }
  // The first tool `agent` reaches that is in `a` and in `b`.
  std::optional<uint32_t> first_common_tool(uint32_t agent, const Selection& a, const Selection& b) const;
  void warn_overlaps(const std::vector<RuleFacts>& rules);
  void warn(int line, const std::string& text) { warnings_.emplace_back(line, in_.where(line) + ": " + text); }

  Reader in_;
  const CompileOptions& options_;
  fb::BundleT bundle_;
  std::vector<std::pair<int, std::string>> warnings_;  // (line, text)
  NameIndex agents_;
  NameIndex tools_;
  std::vector<uint64_t> reach_;  // agents_.size() rows of reach_words_ words, bit per tool
  size_t reach_words_ = 0;
  std::unordered_map<std::string, int> id_lines_;  // rule and flow rule ids → line
};

// ---- Packing ---------------------------------------------------------------------------------

// Packs a BundleT as fb::Bundle::Pack would, except that every string and every list of strings
// is written once and referred to wherever it recurs. A 10,000-rule bundle names the same
// agents, tools and argument pointers over and over; the object API's Pack writes each anew,
// which was a third of the buffer that outpostd holds in memory for as long as the bundle is in
// force (docs/benchmarks.md, "outpostd's memory"). Readers see the same bundle: FlatBuffers
// offsets may point at any object already written. Absent vs empty follows the generated code
// (an optional string or a list that is empty is left out). A field added to the schema must
// be added here too: the signature checks above stop the build until it is, and
// [policy-compiler] packs a bundle with every field set both ways and compares the two.
// The field lists PooledPacker writes: the generated CreateX takes one parameter per field, so
// a field added to the schema changes its signature and stops the build here, on any ABI,
// until PooledPacker packs it too.
namespace packed_fields {
using Str = flatbuffers::Offset<flatbuffers::String>;
using Strs = flatbuffers::Offset<flatbuffers::Vector<Str>>;
template <typename T>
using Table = flatbuffers::Offset<T>;
template <typename T>
using Tables = flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<T>>>;
template <typename T>
using Scalars = flatbuffers::Offset<flatbuffers::Vector<T>>;
#define OUTPOST_PACKS(X, ...)                                                                          \
  using X##Fields = flatbuffers::Offset<fb::X> (*)(flatbuffers::FlatBufferBuilder&, __VA_ARGS__);      \
  static_assert(std::is_same_v<decltype(static_cast<X##Fields>(&fb::Create##X)), X##Fields>,           \
                "fb::" #X " gained a field: pack it in PooledPacker")
OUTPOST_PACKS(Destination, Str, Str, Scalars<uint16_t>);
OUTPOST_PACKS(Tool, Str, Str, fb::ToolKind, uint8_t, Tables<fb::Destination>, Str);
OUTPOST_PACKS(Agent, Str, Scalars<uint8_t>, Strs, uint8_t, uint32_t, Strs);
OUTPOST_PACKS(ArgConstraint, Str, fb::ArgOp, Strs, double, double, uint32_t, bool);
OUTPOST_PACKS(TimeWindow, uint8_t, uint16_t, uint16_t);
OUTPOST_PACKS(RateLimit, fb::RateScope, uint32_t, uint32_t);
OUTPOST_PACKS(Rule, Str, fb::Effect, bool, Strs, Strs, Strs, Tables<fb::ArgConstraint>, Tables<fb::Destination>, bool, uint8_t, Tables<fb::TimeWindow>, Table<fb::RateLimit>, uint32_t, Str);
OUTPOST_PACKS(FlowRule, Str, fb::FlowKind, Strs, Strs, uint8_t, Tables<fb::Destination>, Str, uint32_t, uint32_t, double, Str, Str);
OUTPOST_PACKS(ByteBudget, uint64_t, uint32_t);
OUTPOST_PACKS(HeaderInjection, Str, Str, Str);
OUTPOST_PACKS(EgressRule, Str, fb::Effect, bool, Strs, Strs, fb::EgressKind, Tables<fb::Destination>, bool, uint8_t, Tables<fb::TimeWindow>, Table<fb::RateLimit>, Table<fb::ByteBudget>, Table<fb::HeaderInjection>, Str);
OUTPOST_PACKS(Scope, Strs, Strs, Strs);
OUTPOST_PACKS(Bundle, uint64_t, int64_t, int64_t, int64_t, uint64_t, Table<fb::Scope>, Tables<fb::Agent>, Tables<fb::Tool>, Tables<fb::Rule>, Tables<fb::FlowRule>, Strs, fb::OnExpiry, Tables<fb::Rule>, Scalars<uint8_t>, Str, uint32_t, Tables<fb::EgressRule>);
#undef OUTPOST_PACKS
}  // namespace packed_fields

class PooledPacker {
 public:
  using Str = flatbuffers::Offset<flatbuffers::String>;
  using StrVec = flatbuffers::Offset<flatbuffers::Vector<Str>>;

  Bytes pack(const fb::BundleT& b) {
    fbb_.Finish(table(b));
    return Bytes(fbb_.GetBufferPointer(), fbb_.GetBufferPointer() + fbb_.GetSize());
  }

 private:
  Str str(const std::string& s) { return fbb_.CreateSharedString(s); }
  Str opt_str(const std::string& s) { return s.empty() ? Str() : str(s); }
  StrVec strs(const std::vector<std::string>& v) {
    if (v.empty()) return StrVec();
    auto [it, fresh] = lists_.try_emplace(v);
    if (fresh) {
      std::vector<Str> items;
      items.reserve(v.size());
      for (const auto& s : v) items.push_back(str(s));
      it->second = fbb_.CreateVector(items);
    }
    return it->second;
  }
  flatbuffers::Offset<fb::Destination> table(const fb::DestinationT& d) {
    auto host = opt_str(d.host);
    auto cidr = opt_str(d.cidr);
    auto ports = scalars(d.ports);
    return fb::CreateDestination(fbb_, host, cidr, ports);
  }
  flatbuffers::Offset<fb::Tool> table(const fb::ToolT& t) {
    auto server = str(t.server);
    auto name = str(t.name);
    auto dests = tables(t.destinations);
    auto command = opt_str(t.command);
    return fb::CreateTool(fbb_, server, name, t.kind, t.output_sensitivity, dests, command);
  }
  flatbuffers::Offset<fb::Agent> table(const fb::AgentT& a) {
    auto name = str(a.name);
    auto measurement = scalars(a.measurement);
    auto tools = strs(a.tools);
    auto tasks = strs(a.tasks);
    return fb::CreateAgent(fbb_, name, measurement, tools, a.clearance, a.credential_ttl, tasks);
  }
  flatbuffers::Offset<fb::ArgConstraint> table(const fb::ArgConstraintT& c) {
    auto pointer = str(c.pointer);
    auto values = strs(c.values);
    return fb::CreateArgConstraint(fbb_, pointer, c.op, values, c.min, c.max, c.max_length, c.optional);
  }
  flatbuffers::Offset<fb::TimeWindow> table(const fb::TimeWindowT& w) {
    return fb::CreateTimeWindow(fbb_, w.days, w.start_minute, w.end_minute);
  }
  flatbuffers::Offset<fb::RateLimit> table(const fb::RateLimitT& r) {
    return fb::CreateRateLimit(fbb_, r.scope, r.count, r.window);
  }
  flatbuffers::Offset<fb::ByteBudget> table(const fb::ByteBudgetT& b) {
    return fb::CreateByteBudget(fbb_, b.bytes, b.window);
  }
  flatbuffers::Offset<fb::HeaderInjection> table(const fb::HeaderInjectionT& h) {
    auto header = opt_str(h.header);
    auto secret = opt_str(h.secret);
    auto prefix = opt_str(h.prefix);
    return fb::CreateHeaderInjection(fbb_, header, secret, prefix);
  }
  flatbuffers::Offset<fb::Scope> table(const fb::ScopeT& sc) {
    auto fleets = strs(sc.fleets);
    auto boards = strs(sc.boards);
    auto nodes = strs(sc.nodes);
    return fb::CreateScope(fbb_, fleets, boards, nodes);
  }
  flatbuffers::Offset<fb::Rule> table(const fb::RuleT& r) {
    auto id = str(r.id);
    auto agents = strs(r.agents);
    auto tools = strs(r.tools);
    auto tasks = strs(r.tasks);
    auto args = tables(r.args);
    auto dests = tables(r.destinations);
    auto windows = tables(r.time_windows);
    auto rl = optional(r.rate);
    auto reason = opt_str(r.reason);
    return fb::CreateRule(fbb_, id, r.effect, r.shadow, agents, tools, tasks, args, dests, r.within_clearance,
                          r.max_sensitivity, windows, rl, r.credential_ttl, reason);
  }
  flatbuffers::Offset<fb::FlowRule> table(const fb::FlowRuleT& f) {
    auto id = str(f.id);
    auto agents = strs(f.agents);
    auto tools = strs(f.tools);
    auto trusted = tables(f.trusted);
    auto approval = opt_str(f.approval_tool);
    auto pointer = opt_str(f.total_pointer);
    auto reason = opt_str(f.reason);
    return fb::CreateFlowRule(fbb_, id, f.kind, agents, tools, f.min_sensitivity, trusted, approval, f.window,
                              f.max_count, f.max_total, pointer, reason);
  }
  flatbuffers::Offset<fb::EgressRule> table(const fb::EgressRuleT& e) {
    auto id = str(e.id);
    auto agents = strs(e.agents);
    auto tasks = strs(e.tasks);
    auto dests = tables(e.destinations);
    auto windows = tables(e.time_windows);
    auto rl = optional(e.rate);
    auto budget = optional(e.budget);
    auto inject = optional(e.inject);
    auto reason = opt_str(e.reason);
    return fb::CreateEgressRule(fbb_, id, e.effect, e.shadow, agents, tasks, e.kind, dests, e.within_clearance,
                                e.max_sensitivity, windows, rl, budget, inject, reason);
  }
  flatbuffers::Offset<fb::Bundle> table(const fb::BundleT& b) {
    auto scope = optional(b.scope);
    auto agents = tables(b.agents);
    auto tools = tables(b.tools);
    auto rules = tables(b.rules);
    auto flows = tables(b.flow_rules);
    auto revoked = strs(b.revoked_agents);
    auto safe_set = tables(b.safe_set);
    auto source = scalars(b.source_sha256);
    auto issuer = opt_str(b.issuer);
    auto egress = tables(b.egress);
    return fb::CreateBundle(fbb_, b.version, b.issued_at, b.not_before, b.not_after, b.max_offline, scope, agents, tools,
                            rules, flows, revoked, b.on_expiry, safe_set, source, issuer, b.min_reader, egress);
  }

  // Lists of tables, and optional ones, each packed by table() for its object type (declared
  // above: a trailing return type sees only what precedes it).
  template <typename T>
  auto tables(const std::vector<std::unique_ptr<T>>& v) -> flatbuffers::Offset<flatbuffers::Vector<decltype(table(*v[0]))>> {
    if (v.empty()) return {};
    std::vector<decltype(table(*v[0]))> items;
    items.reserve(v.size());
    for (const auto& t : v) items.push_back(table(*t));
    return fbb_.CreateVector(items);
  }
  template <typename T>
  auto optional(const std::unique_ptr<T>& t) -> decltype(table(*t)) {
    return t ? table(*t) : decltype(table(*t))();
  }
  template <typename T>
  flatbuffers::Offset<flatbuffers::Vector<T>> scalars(const std::vector<T>& v) {
    return v.empty() ? flatbuffers::Offset<flatbuffers::Vector<T>>() : fbb_.CreateVector(v);
  }

  flatbuffers::FlatBufferBuilder fbb_{1u << 16};
  std::map<std::vector<std::string>, StrVec> lists_;
};

}  // namespace

Bytes pack_bundle(const fb::BundleT& bundle) { return PooledPacker().pack(bundle); }

namespace {

// ---- Top level ------------------------------------------------------------------------------

Result<CompiledPolicy> Compiler::run(std::string_view yaml) {
  YAML::Node doc = YAML::Load(std::string(yaml));
  OUTPOST_TRY_VOID(top_level(Reader::root(doc)));
  const Digest digest = sha256(yaml);
  bundle_.source_sha256.assign(digest.begin(), digest.end());

  CompiledPolicy out;
  out.payload = pack_bundle(bundle_);
  // In source order: the overlap checks run after the rules they compare.
  std::stable_sort(warnings_.begin(), warnings_.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [line, text] : warnings_) out.warnings.push_back(std::move(text));
  out.version = bundle_.version;
  return out;
}

Result<void> Compiler::top_level(const Field& root) {
  OUTPOST_TRY(Map top, in_.map(root, {"version", "issuer", "valid", "issued_at", "scope", "on_expiry", "safe_set",
                                      "tools", "agents", "rules", "flow_rules", "egress", "revoked_agents"}));
  if (auto f = top.get("version")) {
    OUTPOST_TRY(bundle_.version, in_.unsigned_int(*f, UINT64_MAX));
    if (bundle_.version == 0 && !options_.version_override) return in_.fail(*f, "must be at least 1");
  }
  if (options_.version_override) {
    if (*options_.version_override == 0) return fail(errc::invalid_argument, in_.source() + ": --version must be at least 1");
    bundle_.version = *options_.version_override;
  } else if (!top.has("version")) {
    return fail(top.require("version").error());
  }
  if (auto f = top.get("issuer")) { OUTPOST_TRY(bundle_.issuer, in_.string(*f, 256)); }
  OUTPOST_TRY_VOID(validity(top));
  bundle_.issued_at = options_.now;
  if (auto f = top.get("issued_at")) { OUTPOST_TRY(bundle_.issued_at, in_.time(*f)); }
  if (auto f = top.get("scope")) { OUTPOST_TRY(bundle_.scope, scope(*f)); }

  bool safe_set_mode = false;
  if (auto f = top.get("on_expiry")) {
    OUTPOST_TRY(std::string s, in_.string(*f));
    if (s == "safe_set") {
      safe_set_mode = true;
    } else if (s != "deny_all") {
      return in_.fail(*f, "must be deny_all or safe_set, not " + in_quotes(s));
    }
  }
  bundle_.on_expiry = safe_set_mode ? fb::OnExpiry::SafeSet : fb::OnExpiry::DenyAll;

  if (auto f = top.get("tools")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*f));
    if (items.size() > kMaxTools) return in_.fail(*f, "more than " + std::to_string(kMaxTools) + " tools");
    for (const Field& item : items) {
      OUTPOST_TRY(auto t, tool(item));
      bundle_.tools.push_back(std::move(t));
    }
  }
  reach_words_ = (tools_.size() + 63) / 64;
  if (auto f = top.get("agents")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*f));
    if (items.size() > kMaxAgents) return in_.fail(*f, "more than " + std::to_string(kMaxAgents) + " agents");
    reach_.assign(items.size() * reach_words_, 0);
    for (const Field& item : items) {
      OUTPOST_TRY(auto a, agent(item));
      bundle_.agents.push_back(std::move(a));
    }
  }
  if (auto f = top.get("rules")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*f));
    std::vector<RuleFacts> facts;
    for (const Field& item : items) {
      OUTPOST_TRY(auto r, rule(item, facts));
      bundle_.rules.push_back(std::move(r));
    }
    warn_overlaps(facts);
  }
  if (auto f = top.get("flow_rules")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*f));
    for (const Field& item : items) {
      OUTPOST_TRY(auto r, flow_rule(item));
      bundle_.flow_rules.push_back(std::move(r));
    }
  }
  if (auto f = top.get("egress")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*f));
    for (const Field& item : items) {
      OUTPOST_TRY(auto r, egress_rule(item));
      bundle_.egress.push_back(std::move(r));
    }
  }
  auto safe_set = top.get("safe_set");
  if (safe_set) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*safe_set));
    std::vector<RuleFacts> facts;
    for (const Field& item : items) {
      OUTPOST_TRY(auto r, rule(item, facts));
      bundle_.safe_set.push_back(std::move(r));
    }
    warn_overlaps(facts);
    if (!safe_set_mode && !items.empty()) {
      warn(safe_set->line, "safe_set is ignored: on_expiry is deny_all");
    }
  }
  if (safe_set_mode && !safe_set) return in_.fail(*top.get("on_expiry"), "safe_set needs a safe_set with rules");
  if (safe_set_mode && bundle_.safe_set.empty()) return in_.fail(*safe_set, "empty, but on_expiry is safe_set");
  if (auto f = top.get("revoked_agents")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*f));
    std::unordered_set<std::string> seen;
    for (const Field& item : items) {
      OUTPOST_TRY(std::string name, in_.agent_name(item));
      if (!seen.insert(name).second) return in_.fail(item, "agent " + in_quotes(name) + " is listed twice");
      if (agents_.contains(name)) {
        warn(item.line, "agent " + in_quotes(name) + " is declared and revoked: it is stopped on install");
      }
      bundle_.revoked_agents.push_back(std::move(name));
    }
  }
  return ok();
}

Result<void> Compiler::validity(const Map& top) {
  OUTPOST_TRY(Field f, top.require("valid"));
  OUTPOST_TRY(Map valid, in_.map(f, {"not_before", "not_after", "max_offline"}));
  OUTPOST_TRY(Field nb, valid.require("not_before"));
  OUTPOST_TRY(Field na, valid.require("not_after"));
  OUTPOST_TRY(Field mo, valid.require("max_offline"));
  OUTPOST_TRY(bundle_.not_before, in_.time(nb));
  OUTPOST_TRY(bundle_.not_after, in_.time(na));
  if (bundle_.not_before >= bundle_.not_after) return in_.fail(na, "must be later than valid.not_before");
  OUTPOST_TRY(bundle_.max_offline, in_.duration(mo, UINT64_MAX));
  return ok();
}

Result<std::unique_ptr<fb::ScopeT>> Compiler::scope(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"fleets", "boards", "nodes"}));
  auto s = std::make_unique<fb::ScopeT>();
  if (auto l = m.get("fleets")) { OUTPOST_TRY(s->fleets, strings(*l)); }
  if (auto l = m.get("boards")) { OUTPOST_TRY(s->boards, strings(*l)); }
  if (auto l = m.get("nodes")) { OUTPOST_TRY(s->nodes, strings(*l)); }
  return s;
}

// A list of non-empty names without control characters (scope entries, task labels).
Result<std::vector<std::string>> Compiler::strings(const Field& f) {
  OUTPOST_TRY(std::vector<Field> items, in_.list(f));
  std::vector<std::string> out;
  for (const Field& item : items) {
    OUTPOST_TRY(std::string s, in_.glob(item));
    if (!glob_is_literal(s)) return in_.fail(item, "a name, not a pattern: " + in_quotes(s));
    out.push_back(std::move(s));
  }
  return out;
}

Result<std::unique_ptr<fb::DestinationT>> Compiler::destination(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"host", "cidr", "ports"}));
  auto d = std::make_unique<fb::DestinationT>();
  auto host = m.get("host");
  auto cidr = m.get("cidr");
  if (host.has_value() == cidr.has_value()) return in_.fail(f, "needs exactly one of host and cidr");
  if (host) {
    OUTPOST_TRY(std::string pattern, in_.glob(*host));
    for (char c : pattern) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      const bool name_char = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' ||
                             c == '*' || c == '?';
      if (!name_char) {
        return in_.fail(*host, "not a host name pattern: " + in_quotes(pattern) +
                                   " (letters, digits, . - _ * ?; use cidr for addresses)");
      }
      d->host += c;  // stored lowercased
    }
  } else {
    OUTPOST_TRY(d->cidr, in_.string(*cidr, 64));
    if (!parse_cidr(d->cidr)) return in_.fail(*cidr, "not an IPv4 or IPv6 network: " + in_quotes(d->cidr));
  }
  if (auto p = m.get("ports")) {
    OUTPOST_TRY(std::vector<Field> items, in_.nonempty_list(*p, "any port"));
    std::vector<bool> seen(65536);
    for (const Field& item : items) {
      OUTPOST_TRY(uint64_t port, in_.unsigned_int(item, 65535));
      if (port == 0) return in_.fail(item, "port must be 1-65535");
      if (seen[port]) return in_.fail(item, "port " + std::to_string(port) + " listed twice");
      seen[port] = true;
      d->ports.push_back(static_cast<uint16_t>(port));
    }
  }
  return d;
}

Result<Destinations> Compiler::destinations(const Field& f, std::string_view empty_means) {
  OUTPOST_TRY(std::vector<Field> items, empty_means.empty() ? in_.list(f) : in_.nonempty_list(f, empty_means));
  Destinations out;
  for (const Field& item : items) {
    OUTPOST_TRY(auto d, destination(item));
    out.push_back(std::move(d));
  }
  return out;
}

// ---- Tools and agents ------------------------------------------------------------------------

Result<std::unique_ptr<fb::ToolT>> Compiler::tool(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"server", "name", "kind", "command", "output_sensitivity", "destinations"}));
  auto t = std::make_unique<fb::ToolT>();
  OUTPOST_TRY(Field server, m.require("server"));
  OUTPOST_TRY(Field name, m.require("name"));
  OUTPOST_TRY(t->server, in_.identifier(server, "server name"));
  OUTPOST_TRY(t->name, in_.identifier(name, "tool name"));
  const std::string ref = t->server + "/" + t->name;
  if (!tools_.add(ref, f.line)) {
    return in_.fail(f, "tool " + in_quotes(ref) + " declared twice (first at line " + std::to_string(tools_.line_of(ref)) + ")");
  }
  if (auto k = m.get("kind")) {
    OUTPOST_TRY(std::string kind, in_.string(*k));
    if (kind == "local_command") {
      t->kind = fb::ToolKind::LocalCommand;
    } else if (kind != "mcp") {
      return in_.fail(*k, "must be mcp or local_command, not " + in_quotes(kind));
    }
  }
  auto command = m.get("command");
  if (t->kind == fb::ToolKind::LocalCommand) {
    if (!command) return fail(m.require("command").error());
    OUTPOST_TRY(t->command, in_.absolute_path(*command));
  } else if (command) {
    return in_.fail(*command, "only a local_command tool has a command");
  }
  if (auto s = m.get("output_sensitivity")) { OUTPOST_TRY(t->output_sensitivity, in_.sensitivity(*s)); }
  if (auto d = m.get("destinations")) { OUTPOST_TRY(t->destinations, destinations(*d)); }
  return t;
}

Result<std::unique_ptr<fb::AgentT>> Compiler::agent(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"name", "measurement", "tools", "clearance", "credential_ttl", "tasks"}));
  auto a = std::make_unique<fb::AgentT>();
  OUTPOST_TRY(Field name, m.require("name"));
  OUTPOST_TRY(a->name, in_.agent_name(name));
  const auto row = static_cast<uint32_t>(agents_.size());
  if (!agents_.add(a->name, name.line)) {
    return in_.fail(name, "agent " + in_quotes(a->name) + " declared twice (first at line " +
                              std::to_string(agents_.line_of(a->name)) + ")");
  }
  if (auto d = m.get("measurement")) { OUTPOST_TRY(a->measurement, in_.digest(*d)); }
  OUTPOST_TRY(Field tools, m.require("tools"));
  OUTPOST_TRY(std::vector<Field> globs, in_.list(tools));
  if (globs.empty()) return in_.fail(tools, "empty list: the agent could reach no tool");
  for (const Field& g : globs) {
    OUTPOST_TRY(std::string glob, in_.glob(g));
    const std::vector<uint32_t>& matched = tools_.match(glob);
    if (matched.empty()) return in_.fail(g, "unknown tool " + in_quotes(glob) + ": no declared tool matches it");
    for (uint32_t t : matched) reach_[row * reach_words_ + t / 64] |= uint64_t{1} << (t % 64);
    a->tools.push_back(std::move(glob));
  }
  if (auto c = m.get("clearance")) { OUTPOST_TRY(a->clearance, in_.sensitivity(*c)); }
  if (auto t = m.get("credential_ttl")) {
    OUTPOST_TRY(uint64_t ttl, in_.duration(*t, kMaxU32));
    a->credential_ttl = static_cast<uint32_t>(ttl);
  }
  if (auto t = m.get("tasks")) { OUTPOST_TRY(a->tasks, strings(*t)); }
  return a;
}

// ---- Cross-references ------------------------------------------------------------------------

Result<Selection> Compiler::select(const Map& m, std::string_view key, NameIndex& names, std::string_view kind,
                                   std::vector<std::string>& globs) {
  Selection sel;
  auto f = m.get(key);
  if (!f) {
    sel.all = true;
    return sel;
  }
  OUTPOST_TRY(std::vector<Field> items, in_.nonempty_list(*f, "every " + std::string(kind)));
  for (const Field& item : items) {
    OUTPOST_TRY(std::string glob, in_.glob(item));
    const std::vector<uint32_t>& matched = names.match(glob);
    if (matched.empty()) {
      return in_.fail(item, "unknown " + std::string(kind) + " " + in_quotes(glob) + ": no declared " + std::string(kind) +
                                " matches it");
    }
    sel.items.insert(sel.items.end(), matched.begin(), matched.end());
    globs.push_back(std::move(glob));
  }
  std::sort(sel.items.begin(), sel.items.end());
  sel.items.erase(std::unique(sel.items.begin(), sel.items.end()), sel.items.end());
  if (sel.items.size() == names.size()) {
    sel.all = true;
    sel.items.clear();
  }
  return sel;
}

Result<void> Compiler::claim_id(const Field& f, const std::string& id) {
  auto [it, fresh] = id_lines_.emplace(id, f.line);
  if (!fresh) return in_.fail(f, "id " + in_quotes(id) + " used twice (first at line " + std::to_string(it->second) + ")");
  return ok();
}

std::optional<uint32_t> Compiler::first_common_tool(uint32_t agent, const Selection& a, const Selection& b) const {
  if (a.all && b.all) {
    for (size_t w = 0; w < reach_words_; ++w) {
      const uint64_t bits = reach_[agent * reach_words_ + w];
      if (bits != 0) return static_cast<uint32_t>(w * 64 + static_cast<size_t>(__builtin_ctzll(bits)));
    }
    return std::nullopt;
  }
  const Selection& listed = a.all ? b : a;
  const Selection& other = a.all ? a : b;
  for (uint32_t t : listed.items) {
    if (other.contains(t) && reaches(agent, t)) return t;
  }
  return std::nullopt;
}

// A rule none of whose agents may reach any of its tools would never decide anything.
Result<void> Compiler::check_reachable(const Field& f, std::string_view what, const std::string& id,
                                       const Selection& agents, const Selection& tools) const {
  const auto count = static_cast<uint32_t>(agents_.size());
  if (agents.all) {
    for (uint32_t a = 0; a < count; ++a) {
      if (first_common_tool(a, tools, tools)) return ok();
    }
  } else {
    for (uint32_t a : agents.items) {
      if (first_common_tool(a, tools, tools)) return ok();
    }
  }
  return in_.fail(f, std::string(what) + " " + in_quotes(id) +
                         " can never match: none of its agents may reach any of its tools (see agents[].tools)");
}

// An allow and a deny rule over a common (agent, tool): worth a look, once per pair of rules.
void Compiler::warn_overlaps(const std::vector<RuleFacts>& rules) {
  const size_t agent_count = agents_.size();
  std::vector<uint32_t> allow_any, deny_any;
  std::vector<std::vector<uint32_t>> allow_of(agent_count), deny_of(agent_count);
  for (uint32_t r = 0; r < rules.size(); ++r) {
    if (rules[r].shadow) continue;
    if (rules[r].agents.all) {
      (rules[r].allow ? allow_any : deny_any).push_back(r);
    } else {
      for (uint32_t a : rules[r].agents.items) (rules[r].allow ? allow_of : deny_of)[a].push_back(r);
    }
  }
  struct Overlap {
    uint32_t allow, deny, agent, tool;
  };
  std::vector<Overlap> found;
  std::unordered_set<uint64_t> reported;  // allow << 32 | deny
  for (uint32_t a = 0; a < agent_count; ++a) {
    for (const auto* allows : {&allow_any, &allow_of[a]}) {
      for (uint32_t x : *allows) {
        for (const auto* denies : {&deny_any, &deny_of[a]}) {
          for (uint32_t y : *denies) {
            const uint64_t key = uint64_t{x} << 32 | y;
            if (reported.count(key) != 0) continue;
            if (auto t = first_common_tool(a, rules[x].tools, rules[y].tools)) {
              reported.insert(key);
              found.push_back({x, y, a, *t});
            }
          }
        }
      }
    }
  }
  std::sort(found.begin(), found.end(),
            [](const Overlap& l, const Overlap& r) { return std::tie(l.allow, l.deny) < std::tie(r.allow, r.deny); });
  for (const Overlap& o : found) {
    const RuleFacts& allow = rules[o.allow];
    const RuleFacts& deny = rules[o.deny];
    warn(deny.line, "rule " + in_quotes(allow.id) + " (allow) and rule " + in_quotes(deny.id) + " (deny) both match " +
                        agents_.name(o.agent) + " \u2192 " + tools_.name(o.tool) + "; deny wins");
  }
}

// ---- Rules -------------------------------------------------------------------------------------

Result<std::unique_ptr<fb::RuleT>> Compiler::rule(const Field& f, std::vector<RuleFacts>& facts) {
  OUTPOST_TRY(Map m, in_.map(f, {"id", "effect", "shadow", "agents", "tools", "tasks", "args", "destinations",
                                 "within_clearance", "max_sensitivity", "time_windows", "rate", "credential_ttl",
                                 "reason"}));
  auto r = std::make_unique<fb::RuleT>();
  RuleFacts fact;
  OUTPOST_TRY(Field id, m.require("id"));
  OUTPOST_TRY(r->id, in_.identifier(id, "rule id"));
  OUTPOST_TRY_VOID(claim_id(id, r->id));
  fact.id = r->id;
  fact.line = f.line;
  if (auto e = m.get("effect")) {
    OUTPOST_TRY(std::string effect, in_.string(*e));
    if (effect == "allow") {
      r->effect = fb::Effect::Allow;
    } else if (effect != "deny") {
      return in_.fail(*e, "must be allow or deny, not " + in_quotes(effect));
    }
  }
  fact.allow = r->effect == fb::Effect::Allow;
  if (auto s = m.get("shadow")) { OUTPOST_TRY(r->shadow, in_.boolean(*s)); }
  fact.shadow = r->shadow;
  OUTPOST_TRY(fact.agents, select(m, "agents", agents_, "agent", r->agents));
  OUTPOST_TRY(fact.tools, select(m, "tools", tools_, "tool", r->tools));
  if (auto t = m.get("tasks")) {
    OUTPOST_TRY(std::vector<Field> items, in_.nonempty_list(*t, "any task"));
    for (const Field& item : items) {
      OUTPOST_TRY(std::string glob, in_.glob(item));
      r->tasks.push_back(std::move(glob));
    }
  }
  if (auto a = m.get("args")) {
    OUTPOST_TRY(std::vector<Field> items, in_.list(*a));
    for (const Field& item : items) {
      OUTPOST_TRY(auto c, arg_constraint(item));
      r->args.push_back(std::move(c));
    }
  }
  if (auto d = m.get("destinations")) { OUTPOST_TRY(r->destinations, destinations(*d, "any destination")); }
  OUTPOST_TRY_VOID(conditions(m, *r, fact.allow, "rule"));
  if (auto t = m.get("credential_ttl")) {
    OUTPOST_TRY(uint64_t ttl, in_.duration(*t, kMaxU32));
    r->credential_ttl = static_cast<uint32_t>(ttl);
    if (!fact.allow) warn(t->line, "rule " + in_quotes(r->id) + ": credential_ttl has no effect on a deny rule");
  }
  if (auto s = m.get("reason")) { OUTPOST_TRY(r->reason, in_.string(*s)); }

  OUTPOST_TRY_VOID(check_reachable(f, "rule", r->id, fact.agents, fact.tools));
  if (r->shadow) warn(f.line, "rule " + in_quotes(r->id) + " is in shadow mode: decided and logged, not enforced");
  facts.push_back(std::move(fact));
  return r;
}

Result<std::unique_ptr<fb::ArgConstraintT>> Compiler::arg_constraint(const Field& f) {
  static constexpr std::string_view kOperators[] = {"prefix", "glob",  "regex",      "one_of",
                                                    "range",  "max_length", "path_prefix"};
  OUTPOST_TRY(Map m, in_.map(f, {"pointer", "optional", "prefix", "glob", "regex", "one_of", "range", "max_length",
                                 "path_prefix"}));
  auto c = std::make_unique<fb::ArgConstraintT>();
  OUTPOST_TRY(Field pointer, m.require("pointer"));
  OUTPOST_TRY(c->pointer, in_.json_pointer(pointer));
  if (auto o = m.get("optional")) { OUTPOST_TRY(c->optional, in_.boolean(*o)); }

  std::optional<Field> op;
  std::string op_name;
  for (std::string_view name : kOperators) {
    auto found = m.get(name);
    if (!found) continue;
    if (op) return in_.fail(*found, "a constraint has one operator; this one also has " + op_name);
    op = std::move(found);
    op_name = name;
  }
  if (!op) return in_.fail(f, "needs one operator: prefix, glob, regex, one_of, range, max_length or path_prefix");

  if (op_name == "regex") {
    c->op = fb::ArgOp::Regex;
    OUTPOST_TRY(std::string pattern, in_.regex(*op));
    c->values.push_back(std::move(pattern));
  } else if (op_name == "range") {
    c->op = fb::ArgOp::Range;
    OUTPOST_TRY(Map range, in_.map(*op, {"min", "max"}));
    OUTPOST_TRY(Field min, range.require("min"));
    OUTPOST_TRY(Field max, range.require("max"));
    OUTPOST_TRY(c->min, in_.number(min));
    OUTPOST_TRY(c->max, in_.number(max));
    if (c->min > c->max) return in_.fail(*op, "empty range: min is above max");
  } else if (op_name == "max_length") {
    c->op = fb::ArgOp::MaxLength;
    OUTPOST_TRY(uint64_t n, in_.unsigned_int(*op, kMaxU32));
    c->max_length = static_cast<uint32_t>(n);
  } else {
    OUTPOST_TRY(std::vector<Field> items, in_.nonempty_list(*op, "no constraint"));
    for (const Field& item : items) {
      std::string value;
      if (op_name == "prefix") {
        c->op = fb::ArgOp::Prefix;
        OUTPOST_TRY(value, in_.string(item));
        if (value.empty()) return in_.fail(item, "an empty prefix matches everything");
      } else if (op_name == "glob") {
        c->op = fb::ArgOp::Glob;
        OUTPOST_TRY(value, in_.glob(item));
      } else if (op_name == "one_of") {
        c->op = fb::ArgOp::OneOf;
        OUTPOST_TRY(value, in_.string(item));
      } else {
        c->op = fb::ArgOp::PathPrefix;
        OUTPOST_TRY(value, in_.absolute_path(item));
      }
      c->values.push_back(std::move(value));
    }
  }
  return c;
}

Result<std::unique_ptr<fb::TimeWindowT>> Compiler::time_window(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"days", "from", "to"}));
  auto w = std::make_unique<fb::TimeWindowT>();
  if (auto d = m.get("days")) {
    OUTPOST_TRY(std::vector<Field> days, in_.nonempty_list(*d, "every day"));
    for (const Field& day : days) {
      OUTPOST_TRY(uint8_t bit, in_.day_bit(day));
      w->days = static_cast<uint8_t>(w->days | bit);
    }
  }
  OUTPOST_TRY(Field from, m.require("from"));
  OUTPOST_TRY(Field to, m.require("to"));
  OUTPOST_TRY(w->start_minute, in_.minute_of_day(from));
  OUTPOST_TRY(w->end_minute, in_.minute_of_day(to));
  if (w->start_minute == w->end_minute) return in_.fail(to, "the window is empty: from and to are the same time");
  return w;
}

Result<std::unique_ptr<fb::RateLimitT>> Compiler::rate(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"per", "count", "window"}));
  auto r = std::make_unique<fb::RateLimitT>();
  OUTPOST_TRY(Field per, m.require("per"));
  OUTPOST_TRY(Field count, m.require("count"));
  OUTPOST_TRY(Field window, m.require("window"));
  OUTPOST_TRY(std::string scope, in_.string(per));
  if (scope == "tool") {
    r->scope = fb::RateScope::Tool;
  } else if (scope == "task") {
    r->scope = fb::RateScope::Task;
  } else if (scope != "agent") {
    return in_.fail(per, "must be agent, tool or task, not " + in_quotes(scope));
  }
  OUTPOST_TRY(uint64_t n, in_.unsigned_int(count, kMaxU32));
  if (n == 0) return in_.fail(count, "must be at least 1 (a rule that never allows is a deny rule)");
  r->count = static_cast<uint32_t>(n);
  OUTPOST_TRY(uint64_t seconds, in_.duration(window, kMaxU32));
  r->window = static_cast<uint32_t>(seconds);
  return r;
}

// ---- Flow rules --------------------------------------------------------------------------------

Result<std::unique_ptr<fb::FlowRuleT>> Compiler::flow_rule(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"id", "kind", "agents", "tools", "reason", "min_sensitivity", "trusted",
                                 "approval_tool", "window", "max_count", "max_total", "total_pointer"}));
  auto r = std::make_unique<fb::FlowRuleT>();
  OUTPOST_TRY(Field id, m.require("id"));
  OUTPOST_TRY(r->id, in_.identifier(id, "flow rule id"));
  OUTPOST_TRY_VOID(claim_id(id, r->id));
  OUTPOST_TRY(Field kind_field, m.require("kind"));
  OUTPOST_TRY(std::string kind, in_.string(kind_field));
  struct KindFields {
    std::string_view kind;
    fb::FlowKind value;
    std::array<std::string_view, 4> own;  // the fields only this kind has
  };
  static const KindFields kKinds[] = {
      {"taint", fb::FlowKind::Taint, {"min_sensitivity", "trusted"}},
      {"require_approval", fb::FlowKind::RequireApproval, {"approval_tool"}},
      {"window_limit", fb::FlowKind::WindowLimit, {"window", "max_count", "max_total", "total_pointer"}},
  };
  const KindFields* chosen = nullptr;
  for (const auto& k : kKinds) {
    if (k.kind == kind) chosen = &k;
  }
  if (chosen == nullptr) return in_.fail(kind_field, "must be taint, require_approval or window_limit, not " + in_quotes(kind));
  r->kind = chosen->value;
  for (const auto& k : kKinds) {
    if (&k == chosen) continue;
    for (std::string_view field : k.own) {
      if (field.empty()) continue;
      if (auto stray = m.get(field)) return in_.fail(*stray, "applies only to flow rules of kind " + std::string(k.kind));
    }
  }
  Selection agents, tools;
  OUTPOST_TRY(agents, select(m, "agents", agents_, "agent", r->agents));
  OUTPOST_TRY(tools, select(m, "tools", tools_, "tool", r->tools));
  if (auto s = m.get("reason")) { OUTPOST_TRY(r->reason, in_.string(*s)); }

  switch (r->kind) {
    case fb::FlowKind::Taint: {
      OUTPOST_TRY(Field min, m.require("min_sensitivity"));
      OUTPOST_TRY(r->min_sensitivity, in_.sensitivity(min));
      if (auto t = m.get("trusted")) { OUTPOST_TRY(r->trusted, destinations(*t)); }
      break;
    }
    case fb::FlowKind::RequireApproval: {
      if (!m.has("tools")) return fail(m.require("tools").error());
      OUTPOST_TRY(Field approval, m.require("approval_tool"));
      OUTPOST_TRY(r->approval_tool, in_.glob(approval));
      const std::vector<uint32_t>& approvers = tools_.match(r->approval_tool);
      if (approvers.empty()) {
        return in_.fail(approval, "unknown tool " + in_quotes(r->approval_tool) + ": no declared tool matches it");
      }
      for (uint32_t t : approvers) {
        if (tools.contains(t)) {
          return in_.fail(approval, std::string("the approval tool ") + in_quotes(tools_.name(t)) + " is itself one of the tools needing approval");
        }
      }
      break;
    }
    case fb::FlowKind::WindowLimit: {
      OUTPOST_TRY(Field window, m.require("window"));
      OUTPOST_TRY(uint64_t seconds, in_.duration(window, kMaxU32));
      r->window = static_cast<uint32_t>(seconds);
      if (auto c = m.get("max_count")) {
        OUTPOST_TRY(uint64_t n, in_.unsigned_int(*c, kMaxU32));
        if (n == 0) return in_.fail(*c, "must be at least 1 (omit it for no count limit)");
        r->max_count = static_cast<uint32_t>(n);
      }
      auto total = m.get("max_total");
      auto pointer = m.get("total_pointer");
      if (total) {
        OUTPOST_TRY(r->max_total, in_.number(*total));
        if (r->max_total <= 0) return in_.fail(*total, "must be above 0 (omit it for no total limit)");
        if (!pointer) return fail(m.require("total_pointer").error());
        OUTPOST_TRY(r->total_pointer, in_.json_pointer(*pointer));
      } else if (pointer) {
        return in_.fail(*pointer, "total_pointer needs max_total");
      }
      if (!total && !m.has("max_count")) return in_.fail(f, "a window_limit needs max_count, max_total or both");
      break;
    }
  }
  OUTPOST_TRY_VOID(check_reachable(f, "flow rule", r->id, agents, tools));
  return r;
}

// ---- Egress -------------------------------------------------------------------------------------

template <class RuleT>
Result<void> Compiler::conditions(const Map& m, RuleT& r, bool allow, std::string_view what) {
  if (auto w = m.get("within_clearance")) { OUTPOST_TRY(r.within_clearance, in_.boolean(*w)); }
  if (auto s = m.get("max_sensitivity")) { OUTPOST_TRY(r.max_sensitivity, in_.sensitivity(*s)); }
  if (auto t = m.get("time_windows")) {
    OUTPOST_TRY(std::vector<Field> items, in_.nonempty_list(*t, "any time"));
    for (const Field& item : items) {
      OUTPOST_TRY(auto w, time_window(item));
      r.time_windows.push_back(std::move(w));
    }
  }
  if (auto rt = m.get("rate")) {
    OUTPOST_TRY(r.rate, rate(*rt));
    if (!allow) warn(rt->line, std::string(what) + " " + in_quotes(r.id) + ": rate has no effect on a deny rule");
  }
  return ok();
}

Result<std::unique_ptr<fb::EgressRuleT>> Compiler::egress_rule(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"id", "effect", "shadow", "agents", "tasks", "kind", "destinations", "within_clearance",
                                 "max_sensitivity", "time_windows", "rate", "budget", "inject", "reason"}));
  auto r = std::make_unique<fb::EgressRuleT>();
  OUTPOST_TRY(Field id, m.require("id"));
  OUTPOST_TRY(r->id, in_.identifier(id, "egress rule id"));
  OUTPOST_TRY_VOID(claim_id(id, r->id));
  // Required here, unlike a tool rule's: an entry that reads like an allowlist line must not
  // quietly be a deny.
  OUTPOST_TRY(Field e, m.require("effect"));
  OUTPOST_TRY(std::string effect, in_.string(e));
  if (effect == "allow") {
    r->effect = fb::Effect::Allow;
  } else if (effect != "deny") {
    return in_.fail(e, "must be allow or deny, not " + in_quotes(effect));
  }
  const bool allow = r->effect == fb::Effect::Allow;
  if (auto s = m.get("shadow")) { OUTPOST_TRY(r->shadow, in_.boolean(*s)); }
  Selection agents;
  OUTPOST_TRY(agents, select(m, "agents", agents_, "agent", r->agents));
  if (auto t = m.get("tasks")) {
    OUTPOST_TRY(std::vector<Field> items, in_.nonempty_list(*t, "any task"));
    for (const Field& item : items) {
      OUTPOST_TRY(std::string glob, in_.glob(item));
      r->tasks.push_back(std::move(glob));
    }
  }
  if (auto k = m.get("kind")) {
    OUTPOST_TRY(std::string kind, in_.string(*k));
    if (kind == "model") {
      r->kind = fb::EgressKind::Model;
    } else if (kind != "api") {
      return in_.fail(*k, "must be model or api, not " + in_quotes(kind));
    }
  }
  if (auto d = m.get("destinations")) {
    OUTPOST_TRY(r->destinations, destinations(*d, "any destination"));
  } else if (allow) {
    return in_.fail(f, "an allow egress rule needs destinations (hosts or CIDRs, with ports)");
  }
  OUTPOST_TRY_VOID(conditions(m, *r, allow, "egress rule"));
  if (auto b = m.get("budget")) {
    OUTPOST_TRY(Map bm, in_.map(*b, {"bytes", "window"}));
    OUTPOST_TRY(Field bytes, bm.require("bytes"));
    r->budget = std::make_unique<fb::ByteBudgetT>();
    OUTPOST_TRY(r->budget->bytes, in_.byte_size(bytes));
    if (auto w = bm.get("window")) {
      OUTPOST_TRY(uint64_t seconds, in_.duration(*w, kMaxU32));
      r->budget->window = static_cast<uint32_t>(seconds);
    }
    if (!allow) warn(b->line, "egress rule " + in_quotes(r->id) + ": budget has no effect on a deny rule");
  }
  if (auto i = m.get("inject")) {
    if (!allow) return in_.fail(*i, "inject applies only to allow rules");
    OUTPOST_TRY(r->inject, injection(*i));
    for (const auto& d : r->destinations) {
      if (!d->host.empty() && !glob_is_literal(d->host)) {
        warn(i->line, "egress rule " + in_quotes(r->id) + " injects secret " + in_quotes(r->inject->secret) +
                          " into requests to every host " + in_quotes(d->host) + " matches; name the model server's host");
      }
    }
  }
  if (auto s = m.get("reason")) { OUTPOST_TRY(r->reason, in_.string(*s)); }
  if (r->shadow) warn(f.line, "egress rule " + in_quotes(r->id) + " is in shadow mode: decided and logged, not enforced");
  return r;
}

Result<std::unique_ptr<fb::HeaderInjectionT>> Compiler::injection(const Field& f) {
  OUTPOST_TRY(Map m, in_.map(f, {"header", "secret", "prefix"}));
  auto h = std::make_unique<fb::HeaderInjectionT>();
  h->header = "Authorization";
  if (auto hf = m.get("header")) {
    OUTPOST_TRY(h->header, in_.string(*hf, 64));
    const bool token = !h->header.empty() && std::all_of(h->header.begin(), h->header.end(), [](char c) {
      return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    });
    if (!token) return in_.fail(*hf, "not a header name: " + in_quotes(h->header) + " (letters, digits and -)");
    std::string lower = h->header;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    // Headers that frame or route the request are the proxy's, never a secret's.
    if (lower == "host" || lower == "content-length" || lower == "transfer-encoding" || lower == "connection" ||
        lower == "upgrade" || lower == "te" || lower == "trailer" || lower.starts_with("proxy-")) {
      return in_.fail(*hf, "header " + in_quotes(h->header) + " frames or routes the request; it cannot carry a secret");
    }
  }
  OUTPOST_TRY(Field secret, m.require("secret"));
  OUTPOST_TRY(h->secret, in_.identifier(secret, "secret name"));
  if (auto p = m.get("prefix")) {
    OUTPOST_TRY(h->prefix, in_.string(*p, 64));
    for (char c : h->prefix) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return in_.fail(*p, "control characters are not allowed");
    }
  }
  return h;
}

}  // namespace

Result<CompiledPolicy> compile_policy(std::string_view yaml, std::string_view source_name,
                                      const CompileOptions& options) {
  Compiler compiler{std::string(source_name), options};
  // yaml-cpp reports by exception; none may leave the compiler.
  try {
    return compiler.run(yaml);
  } catch (const YAML::DeepRecursion& e) {
    return fail(errc::invalid_argument, std::string(source_name) + ":" + std::to_string(std::max(e.mark.line, 0) + 1) +
                                            ": the YAML nests too deeply");
  } catch (const YAML::Exception& e) {
    return fail(errc::invalid_argument,
                std::string(source_name) + ":" + std::to_string(std::max(e.mark.line, 0) + 1) + ": " + e.msg);
  } catch (const std::bad_alloc&) {
    return fail(errc::invalid_argument, std::string(source_name) + ": out of memory while compiling");
  }
}

Result<CompiledPolicy> compile_policy_file(const std::filesystem::path& path, const CompileOptions& options) {
  OUTPOST_TRY(std::string text, read_text_file(path, kMaxPolicySourceBytes));
  return compile_policy(text, path.string(), options);
}

}  // namespace outpost::policy
