#include "engine.h"

#include <re2/re2.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory_resource>
#include <new>
#include <mutex>
#include <span>
#include <type_traits>
#include <unordered_map>

#include "match.h"
#include "outpost/base/errors.h"

namespace outpost::policy {
namespace {

// ---- compiled forms ----
//
// Strings are read in place from the bundle buffer, which the engine keeps (Impl::owner):
// a 10,000-rule bundle then costs its buffer plus the index, not a second copy of every name
// and glob on the heap. Only strings the engine must change (a host to lower-case, a path
// prefix to normalize, an escaped JSON pointer token) are copied, into Impl::arena.
//
// The compiled forms are flat: what a rule holds a list of (arguments, destinations, windows,
// pointer tokens, ports) lives in the arena's pool, packed end to end, and the rule holds a
// span. Nothing in them has a destructor, so the pool is released whole with the engine. A
// rule and an argument keep a pointer to their table in the bundle and read from it what
// needs no compiling (id, reason, globs, bounds, rate, credential life), and rules that
// test the same JSON pointer share its parsed form, so a 10,000-rule bundle of one argument
// constraint each costs about 80 bytes a rule beside its buffer (docs/benchmarks.md:
// outpostd's memory).

std::string_view str(const flatbuffers::String* s) { return s ? std::string_view(s->data(), s->size()) : std::string_view(); }

using FbStrings = flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>;

// A list of strings in the bundle buffer; empty when the field is absent.
class StrList {
 public:
  StrList() = default;
  explicit StrList(const FbStrings* v) : v_(v != nullptr && v->size() > 0 ? v : nullptr) {}
  bool empty() const { return v_ == nullptr; }
  size_t size() const { return v_ == nullptr ? 0 : v_->size(); }
  std::string_view operator[](size_t i) const { return str(v_->Get(static_cast<flatbuffers::uoffset_t>(i))); }
  struct iterator {
    const StrList* list;
    size_t i;
    std::string_view operator*() const { return (*list)[i]; }
    iterator& operator++() {
      ++i;
      return *this;
    }
    bool operator!=(const iterator& o) const { return i != o.i; }
  };
  iterator begin() const { return {this, 0}; }
  iterator end() const { return {this, size()}; }

 private:
  const FbStrings* v_ = nullptr;
};

// Where the few strings that cannot be read in place live (stable addresses), and the pool
// the compiled lists are packed into.
struct Arena {
  std::deque<std::string> strings;
  std::pmr::monotonic_buffer_resource pool{64 << 10};
};
std::string_view keep(Arena& arena, std::string s) { return arena.strings.emplace_back(std::move(s)); }

// Copies `v` into the pool: the pointer stays valid for the engine's life.
template <class T>
const T* place(Arena& arena, const T& v) {
  static_assert(std::is_trivially_destructible_v<T>, "packed forms are released without destructors");
  return new (arena.pool.allocate(sizeof(T), alignof(T))) T(v);
}

// Moves `v` into the pool: the span stays valid for the engine's life.
template <class T>
std::span<const T> pack(Arena& arena, std::vector<T>& v) {
  static_assert(std::is_trivially_destructible_v<T>, "packed forms are released without destructors");
  if (v.empty()) return {};
  T* out = static_cast<T*>(arena.pool.allocate(v.size() * sizeof(T), alignof(T)));
  std::uninitialized_move(v.begin(), v.end(), out);
  return {out, v.size()};
}

struct PointerToken {
  std::string_view key;  // in the bundle, or in the arena when it had escapes
  int64_t index = -1;  // the token read as an array index, or -1
};
using Pointer = std::span<const PointerToken>;

struct Dest {
  std::string_view host;  // lower-case glob; empty when the destination is a CIDR
  bool has_cidr = false;
  Cidr cidr;
  std::span<const uint16_t> ports;
};

// An argument constraint: its values, bounds and limits are read from the bundle (`src`);
// only what must be computed once is held here. 32 bytes.
struct Arg {
  const fb::ArgConstraint* src = nullptr;
  const Pointer* pointer = nullptr;  // in the arena, one per distinct pointer text in the bundle
  // What the operator compiled, in the arena, or null: OneOf, `values` read as numbers (NaN
  // when not one); PathPrefix, `values` normalized (as many as `values`); Regex, the pattern
  // (in Impl::regexes, shared by every rule with the same one).
  const void* compiled = nullptr;
  fb::ArgOp op = fb::ArgOp::Prefix;
  bool optional = false;

  StrList values() const { return StrList(src->values()); }
  std::span<const double> numbers() const {
    if (op != fb::ArgOp::OneOf || compiled == nullptr) return {};
    return std::span(static_cast<const double*>(compiled), values().size());
  }
  std::span<const std::string_view> paths() const {
    if (op != fb::ArgOp::PathPrefix || compiled == nullptr) return {};
    return std::span(static_cast<const std::string_view*>(compiled), values().size());
  }
  const re2::RE2* regex() const { return op == fb::ArgOp::Regex ? static_cast<const re2::RE2*>(compiled) : nullptr; }
};

struct Window {
  uint8_t days = 0;
  uint16_t start = 0, end = 0;
};

// What a rule needs besides arguments, which most rules have neither of.
struct RuleExtra {
  std::span<const Dest> dests;
  std::span<const Window> windows;
};

// A tool-call rule: 40 bytes. Its id, reason, globs, rate and credential life are read from the
// bundle (`src`) when needed; the flags every candidate is checked against are held here.
struct Rule {
  const fb::Rule* src = nullptr;
  std::span<const Arg> args;
  const RuleExtra* extra = nullptr;  // in the arena; null when the rule has no destinations or windows
  bool allow = false, shadow = false, within_clearance = false, has_rate = false;
  uint8_t max_sensitivity = 255;

  std::string_view id() const { return str(src->id()); }
  std::string_view reason() const { return str(src->reason()); }
  StrList agents() const { return StrList(src->agents()); }
  StrList tools() const { return StrList(src->tools()); }
  StrList tasks() const { return StrList(src->tasks()); }
};
static_assert(sizeof(Rule) <= 40 && sizeof(Arg) <= 32, "the per-rule cost docs/benchmarks.md counts");

struct Flow {
  std::string_view id, reason;
  fb::FlowKind kind = fb::FlowKind::Taint;
  StrList agents, tools;
  uint8_t min_sensitivity = 0;
  std::span<const Dest> trusted;
  std::string_view approval_tool;
  uint32_t window = 0, max_count = 0;
  double max_total = 0;
  Pointer total_pointer;
};

struct EgressRule {
  std::string_view id, reason;
  bool allow = false, shadow = false;
  StrList agents, tasks;
  fb::EgressKind kind = fb::EgressKind::Api;
  std::span<const Dest> dests;
  bool within_clearance = false;
  uint8_t max_sensitivity = 255;
  std::span<const Window> windows;
  bool has_rate = false;
  fb::RateScope rate_scope = fb::RateScope::Agent;
  uint32_t rate_count = 0, rate_window = 0;
  uint64_t budget_bytes = 0;
  uint32_t budget_window = 0;
  std::string_view inject_header, inject_secret, inject_prefix;
};

struct Tool {
  std::string_view server, name;
  std::string full;  // "server/name"
  uint8_t output_sensitivity = 0;
  std::span<const Dest> dests;
};

struct Agent {
  std::string_view name;
  uint8_t clearance = 0;
  uint32_t ttl = 0;
  StrList tool_globs;
  bool revoked = false;
};

// Rules grouped per (agent, tool) pair: [deny..., allow..., shadow...] in bundle order.
struct RuleSet {
  std::vector<Rule> rules;
  std::vector<uint32_t> entries;
  std::vector<std::array<uint32_t, 4>> pairs;  // start, end of denies, end of allows, end of shadows
};

// ---- small helpers, none allocating ----

bool any_glob(const StrList& globs, std::string_view text) {
  for (std::string_view g : globs) {
    if (glob_match(g, text)) return true;
  }
  return false;
}
// An empty list means "any".
bool any_glob_or_empty(const StrList& globs, std::string_view text) {
  return globs.empty() || any_glob(globs, text);
}

// "server/name" in a caller's buffer.
struct ToolName {
  char buf[512];
  std::string_view view;
  ToolName(std::string_view server, std::string_view name) {
    if (server.size() + name.size() + 1 > sizeof buf) {
      view = {};
      return;
    }
    std::memcpy(buf, server.data(), server.size());
    buf[server.size()] = '/';
    std::memcpy(buf + server.size() + 1, name.data(), name.size());
    view = std::string_view(buf, server.size() + 1 + name.size());
  }
};

struct LowerHost {
  char buf[256];
  std::string_view view;
  bool ok = true;
  explicit LowerHost(std::string_view host) {
    if (host.size() >= sizeof buf) {
      ok = false;
      return;
    }
    for (size_t i = 0; i < host.size(); ++i) {
      char c = host[i];
      buf[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
    view = std::string_view(buf, host.size());
  }
};

// `p` lies in the bundle buffer; tokens are views into it unless they had escapes.
Result<Pointer> parse_pointer(std::string_view p, Arena& arena) {
  std::vector<PointerToken> out;
  if (p.empty()) return Pointer();
  if (p[0] != '/') return fail(errc::invalid_argument, "JSON pointer \"" + std::string(p) + "\" does not start with '/'");
  size_t i = 1;
  for (;;) {
    size_t next = p.find('/', i);
    std::string_view raw = p.substr(i, next == std::string_view::npos ? std::string_view::npos : next - i);
    PointerToken t;
    if (raw.find('~') == std::string_view::npos) {
      t.key = raw;
    } else {
      std::string key;
      for (size_t k = 0; k < raw.size(); ++k) {
        if (raw[k] == '~') {
          if (k + 1 >= raw.size() || (raw[k + 1] != '0' && raw[k + 1] != '1')) {
            return fail(errc::invalid_argument, "JSON pointer \"" + std::string(p) + "\" has a bad '~' escape");
          }
          key.push_back(raw[k + 1] == '0' ? '~' : '/');
          ++k;
        } else {
          key.push_back(raw[k]);
        }
      }
      t.key = keep(arena, std::move(key));
    }
    if (!t.key.empty() && t.key.size() < 10 && std::all_of(t.key.begin(), t.key.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
        (t.key.size() == 1 || t.key[0] != '0')) {
      int64_t index = 0;
      std::from_chars(t.key.data(), t.key.data() + t.key.size(), index);
      t.index = index;
    }
    out.push_back(std::move(t));
    if (next == std::string_view::npos) break;
    i = next + 1;
  }
  return pack(arena, out);
}

const boost::json::value* resolve(const boost::json::value* v, const Pointer& p) {
  for (const auto& t : p) {
    if (v == nullptr) return nullptr;
    if (v->is_object()) {
      v = v->as_object().if_contains(t.key);
    } else if (v->is_array()) {
      const auto& a = v->as_array();
      if (t.index < 0 || static_cast<size_t>(t.index) >= a.size()) return nullptr;
      v = &a[static_cast<size_t>(t.index)];
    } else {
      return nullptr;
    }
  }
  return v;
}

bool as_number(const boost::json::value& v, double& out) {
  switch (v.kind()) {
    case boost::json::kind::int64: out = static_cast<double>(v.get_int64()); return true;
    case boost::json::kind::uint64: out = static_cast<double>(v.get_uint64()); return true;
    case boost::json::kind::double_: out = v.get_double(); return true;
    default: return false;
  }
}

bool arg_holds(const Arg& a, const boost::json::value* args) {
  const boost::json::value* v = resolve(args, *a.pointer);
  if (v == nullptr) return a.optional;
  if (a.op == fb::ArgOp::Range) {
    double d;
    return as_number(*v, d) && d >= a.src->min() && d <= a.src->max();
  }
  if (a.op == fb::ArgOp::OneOf) {
    double d;
    if (as_number(*v, d)) {
      for (double n : a.numbers()) {
        if (n == d) return true;
      }
      return false;
    }
  }
  if (!v->is_string()) return false;
  std::string_view s(v->get_string().data(), v->get_string().size());
  switch (a.op) {
    case fb::ArgOp::Prefix:
      for (std::string_view p : a.values()) {
        if (s.substr(0, p.size()) == p) return true;
      }
      return false;
    case fb::ArgOp::Glob: return any_glob(a.values(), s);
    case fb::ArgOp::Regex: return a.regex() != nullptr && re2::RE2::FullMatch(s, *a.regex());
    case fb::ArgOp::OneOf:
      for (std::string_view p : a.values()) {
        if (s == p) return true;
      }
      return false;
    case fb::ArgOp::MaxLength: return s.size() <= a.src->max_length();
    case fb::ArgOp::PathPrefix: {
      PathBuffer buf;
      auto norm = normalize_path(s, buf);
      if (!norm) return false;
      for (std::string_view p : a.paths()) {
        if (path_under(*norm, p)) return true;
      }
      return false;
    }
    case fb::ArgOp::Range: return false;
  }
  return false;
}

bool dest_matches(const Dest& d, std::string_view lower_host, uint16_t port) {
  if (!d.ports.empty() && std::find(d.ports.begin(), d.ports.end(), port) == d.ports.end()) return false;
  if (d.has_cidr) return cidr_contains(d.cidr, lower_host);
  return glob_match(d.host, lower_host);
}

bool any_dest(std::span<const Dest> ds, std::string_view host, uint16_t port) {
  LowerHost h(host);
  if (!h.ok) return false;
  for (const auto& d : ds) {
    if (dest_matches(d, h.view, port)) return true;
  }
  return false;
}

bool in_window(const Window& w, int64_t t) {
  int64_t days = t >= 0 ? t / 86400 : (t - 86399) / 86400;
  int64_t minute = (t - days * 86400) / 60;
  int weekday = static_cast<int>(((days % 7) + 7 + 3) % 7);  // 1970-01-01 was a Thursday; 0 = Monday
  if (w.days != 0 && !(w.days & (1u << weekday))) return false;
  if (w.start <= w.end) return minute >= w.start && minute < w.end;
  return minute >= w.start || minute < w.end;  // wraps past midnight
}

// Conditions other than the agent and tool globs (the index has checked those).
bool conditions_hold(const Rule& r, const Request& req, const Agent& agent) {
  if (r.within_clearance && req.sensitivity > agent.clearance) return false;
  if (req.sensitivity > r.max_sensitivity) return false;
  if (const StrList tasks = r.tasks(); !tasks.empty() && !any_glob(tasks, req.task)) return false;
  if (r.extra != nullptr) {
    if (!r.extra->windows.empty()) {
      bool any = false;
      for (const auto& w : r.extra->windows) any = any || in_window(w, req.time);
      if (!any) return false;
    }
    if (!r.extra->dests.empty() && (req.host.empty() || !any_dest(r.extra->dests, req.host, req.port))) return false;
  }
  for (const auto& a : r.args) {
    if (!arg_holds(a, req.args)) return false;
  }
  return true;
}

std::span<const Window> compile_windows(const flatbuffers::Vector<flatbuffers::Offset<fb::TimeWindow>>& v, Arena& arena) {
  std::vector<Window> out;
  for (const fb::TimeWindow* w : v) out.push_back(Window{w->days(), w->start_minute(), w->end_minute()});
  return pack(arena, out);
}

Result<std::span<const Dest>> compile_dests(const flatbuffers::Vector<flatbuffers::Offset<fb::Destination>>* v, Arena& arena) {
  std::vector<Dest> out;
  if (v == nullptr) return std::span<const Dest>();
  for (const fb::Destination* d : *v) {
    Dest c;
    if (d->cidr() != nullptr && d->cidr()->size() > 0) {
      auto cidr = parse_cidr(str(d->cidr()));
      if (!cidr) return fail(errc::corrupt, "bad CIDR \"" + d->cidr()->str() + "\"");
      c.has_cidr = true;
      c.cidr = *cidr;
    } else {
      c.host = d->host() != nullptr ? str(d->host()) : std::string_view("*");
      // The compiler stores hosts lower-cased; a bundle from elsewhere may not.
      if (std::any_of(c.host.begin(), c.host.end(), [](char ch) { return ch >= 'A' && ch <= 'Z'; })) {
        std::string lower(c.host);
        for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        c.host = keep(arena, std::move(lower));
      }
    }
    if (d->ports() != nullptr) {
      std::vector<uint16_t> ports(d->ports()->begin(), d->ports()->end());
      c.ports = pack(arena, ports);
    }
    out.push_back(std::move(c));
  }
  return pack(arena, out);
}

// Compiled RE2 patterns by source text: bundles repeat a few patterns over many rules.
using RegexCache = std::map<std::string, std::unique_ptr<const re2::RE2>, std::less<>>;
// Parsed JSON pointers by their text in the bundle, while it compiles: rules repeat a few.
using PointerCache = std::unordered_map<std::string_view, const Pointer*>;

Result<Rule> compile_rule(const fb::Rule& r, RegexCache& regexes, PointerCache& pointers, Arena& arena) {
  Rule c;
  c.src = &r;
  const std::string_view id = str(r.id());
  c.allow = r.effect() == fb::Effect::Allow;
  c.shadow = r.shadow();
  c.within_clearance = r.within_clearance();
  c.max_sensitivity = r.max_sensitivity();
  RuleExtra extra;
  OUTPOST_TRY(extra.dests, compile_dests(r.destinations(), arena));
  if (r.time_windows() != nullptr) {
    extra.windows = compile_windows(*r.time_windows(), arena);
  }
  if (!extra.dests.empty() || !extra.windows.empty()) {
    c.extra = place(arena, extra);
  }
  c.has_rate = r.rate() != nullptr && r.rate()->count() > 0 && r.rate()->window() > 0;
  if (r.args() != nullptr) {
    std::vector<Arg> args;
    for (const fb::ArgConstraint* a : *r.args()) {
      Arg arg;
      arg.src = a;
      auto [known, fresh] = pointers.try_emplace(str(a->pointer()), nullptr);
      if (fresh) {
        Result<Pointer> p = parse_pointer(known->first, arena);
        if (!p) {
          pointers.erase(known);
          return fail(p.error().wrap("rule " + std::string(id)));
        }
        known->second = place(arena, *p);
      }
      arg.pointer = known->second;
      arg.op = a->op();
      arg.optional = a->optional();
      const StrList values = arg.values();
      if (arg.op == fb::ArgOp::OneOf) {
        std::vector<double> numbers;
        for (std::string_view v : values) {
          std::string text(v);
          char* end = nullptr;
          double d = std::strtod(text.c_str(), &end);
          numbers.push_back(end != text.c_str() && *end == '\0' ? d : std::nan(""));
        }
        arg.compiled = pack(arena, numbers).data();
      }
      if (arg.op == fb::ArgOp::Regex) {
        if (values.empty()) return fail(errc::corrupt, "rule " + std::string(id) + ": regex constraint without a pattern");
        auto cached = regexes.find(values[0]);
        if (cached == regexes.end()) {
          re2::RE2::Options opts;
          opts.set_log_errors(false);
          std::string pattern(values[0]);
          auto re = std::make_unique<const re2::RE2>(pattern, opts);
          if (!re->ok()) return fail(errc::corrupt, "rule " + std::string(id) + ": bad RE2 pattern: " + re->error());
          cached = regexes.emplace(std::move(pattern), std::move(re)).first;
        }
        arg.compiled = cached->second.get();
      }
      if (arg.op == fb::ArgOp::PathPrefix) {
        std::vector<std::string_view> paths;
        for (std::string_view v : values) {
          PathBuffer buf;
          auto norm = normalize_path(v, buf);
          if (!norm) {
            return fail(errc::corrupt, "rule " + std::string(id) + ": path prefix \"" + std::string(v) + "\" is not an absolute path");
          }
          paths.push_back(*norm == v ? v : keep(arena, std::string(*norm)));
        }
        arg.compiled = pack(arena, paths).data();
      }
      args.push_back(arg);
    }
    c.args = pack(arena, args);
  }
  return c;
}

}  // namespace

// ---- the compiled policy ----

struct Engine::Impl {
  // The bundle buffer every string_view and StrList below points into, kept alive here.
  std::shared_ptr<const void> owner;
  Arena arena;   // strings the engine had to change, and the packed lists
  RegexCache regexes;  // every rule's compiled patterns, by source text
  uint64_t version = 0;
  std::vector<Agent> agents;
  std::vector<Tool> tools;
  std::vector<uint32_t> agents_by_name;  // indices sorted by name
  std::vector<uint32_t> tools_by_name;   // indices sorted by (server, name)
  std::vector<uint8_t> granted;          // agents x tools
  RuleSet normal, safe;
  std::vector<Flow> flows;
  std::vector<EgressRule> egress;
  std::vector<uint32_t> flow_entries;
  std::vector<std::array<uint32_t, 2>> flow_pairs;

  size_t pair(uint32_t a, uint32_t t) const { return static_cast<size_t>(a) * tools.size() + t; }

  int64_t find_agent(std::string_view name) const {
    auto it = std::lower_bound(agents_by_name.begin(), agents_by_name.end(), name,
                               [&](uint32_t i, std::string_view n) { return agents[i].name < n; });
    if (it == agents_by_name.end() || agents[*it].name != name) return -1;
    return *it;
  }
  int64_t find_tool(std::string_view server, std::string_view name) const {
    auto key = std::make_pair(server, name);
    auto it = std::lower_bound(tools_by_name.begin(), tools_by_name.end(), key,
                               [&](uint32_t i, const std::pair<std::string_view, std::string_view>& k) {
                                 return std::make_pair(std::string_view(tools[i].server), std::string_view(tools[i].name)) < k;
                               });
    if (it == tools_by_name.end() || tools[*it].server != server || tools[*it].name != name) return -1;
    return *it;
  }

  // Agents (or tools) a glob list selects; literal names are looked up, not scanned, so
  // building the index costs O(rules) for bundles of exact names.
  void select_agents(const StrList& globs, std::vector<uint32_t>& out) const {
    out.clear();
    if (globs.empty()) {
      for (uint32_t a = 0; a < agents.size(); ++a) out.push_back(a);
      return;
    }
    for (std::string_view g : globs) {
      if (glob_is_literal(g)) {
        if (int64_t a = find_agent(g); a >= 0) out.push_back(static_cast<uint32_t>(a));
      } else {
        for (uint32_t a = 0; a < agents.size(); ++a) {
          if (glob_match(g, agents[a].name)) out.push_back(a);
        }
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
  void select_tools(const StrList& globs, std::vector<uint32_t>& out) const {
    out.clear();
    if (globs.empty()) {
      for (uint32_t t = 0; t < tools.size(); ++t) out.push_back(t);
      return;
    }
    for (std::string_view g : globs) {
      size_t slash = g.find('/');
      if (glob_is_literal(g) && slash != std::string_view::npos) {
        if (int64_t t = find_tool(g.substr(0, slash), g.substr(slash + 1)); t >= 0) {
          out.push_back(static_cast<uint32_t>(t));
        }
      } else {
        for (uint32_t t = 0; t < tools.size(); ++t) {
          if (glob_match(g, tools[t].full)) out.push_back(t);
        }
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }

  // Per pair: the denies, then the allows, then the shadows, each in bundle order.
  void index(RuleSet& set) const {
    const size_t npairs = agents.size() * tools.size();
    std::vector<std::array<std::vector<uint32_t>, 3>> buckets(npairs);
    std::vector<uint32_t> as, ts;
    for (uint32_t r = 0; r < set.rules.size(); ++r) {
      const Rule& rule = set.rules[r];
      const int kind = rule.shadow ? 2 : rule.allow ? 1 : 0;
      select_agents(rule.agents(), as);
      select_tools(rule.tools(), ts);
      for (uint32_t a : as) {
        for (uint32_t t : ts) buckets[pair(a, t)][static_cast<size_t>(kind)].push_back(r);
      }
    }
    set.pairs.assign(npairs, {0, 0, 0, 0});
    for (size_t pi = 0; pi < npairs; ++pi) {
      auto& p = set.pairs[pi];
      p[0] = static_cast<uint32_t>(set.entries.size());
      for (size_t kind = 0; kind < 3; ++kind) {
        set.entries.insert(set.entries.end(), buckets[pi][kind].begin(), buckets[pi][kind].end());
        p[kind + 1] = static_cast<uint32_t>(set.entries.size());
      }
    }
  }

  bool flow_denies(const Flow& f, const Request& req, const Tool& tool) const;
  EgressDecision decide_egress(const EgressRequest& req, Mode mode, RateLimiter* rates) const;
  // What every decision checks first: the bundle in force, the agent known and not revoked.
  // The agent (its index in `index`), or null with `verdict` saying why not.
  const Agent* admit(std::string_view name, Mode mode, Verdict& verdict, int64_t& index) const;
  Decision decide(const Request& req, Mode mode, RateLimiter* rates, bool indexed) const;
};

bool Engine::Impl::flow_denies(const Flow& f, const Request& req, const Tool& tool) const {
  switch (f.kind) {
    case fb::FlowKind::Taint: {
      bool tainted = false;
      for (const auto& e : req.history) {
        uint8_t label = e.sensitivity;
        int64_t t = find_tool(e.server, e.tool);
        if (t >= 0) label = std::max(label, tools[static_cast<size_t>(t)].output_sensitivity);
        if (label >= f.min_sensitivity) {
          tainted = true;
          break;
        }
      }
      if (!tainted) return false;
      if (!req.host.empty()) return !any_dest(f.trusted, req.host, req.port);
      // No destination on the request: every place the tool reaches must be trusted.
      for (const auto& d : tool.dests) {
        bool trusted = false;
        for (const auto& tr : f.trusted) {
          if (d.has_cidr ? (tr.has_cidr && cidr_covers(tr.cidr, d.cidr)) : (!tr.has_cidr && glob_match(tr.host, d.host))) {
            trusted = true;
          }
        }
        if (!trusted) return true;
      }
      return false;
    }
    case fb::FlowKind::RequireApproval: {
      for (const auto& e : req.history) {
        ToolName n(e.server, e.tool);
        if (e.time <= req.time && glob_match(f.approval_tool, n.view)) return false;
      }
      return true;
    }
    case fb::FlowKind::WindowLimit: {
      uint64_t count = 1;
      double total = 0;
      double d;
      if (const auto* v = resolve(req.args, f.total_pointer); v && as_number(*v, d)) total += d;
      for (const auto& e : req.history) {
        if (e.time <= req.time - static_cast<int64_t>(f.window) || e.time > req.time) continue;
        ToolName n(e.server, e.tool);
        if (!any_glob_or_empty(f.tools, n.view)) continue;
        ++count;
        if (const auto* v = resolve(e.args, f.total_pointer); v && as_number(*v, d)) {
          total += d;  // a kept number is where it was: exact
        } else if (f.max_total > 0 && e.args_incomplete) {
          return true;  // the amount may be among the numbers not kept: the total cannot be known
        }
      }
      if (f.max_count > 0 && count > f.max_count) return true;
      if (f.max_total > 0 && total > f.max_total) return true;
      return false;
    }
  }
  return true;  // a flow kind this build does not know: fail closed
}

namespace {
void push_id(std::array<uint32_t, Decision::kMaxIds>& ids, uint8_t& n, uint32_t id) {
  if (n < ids.size()) ids[n++] = id;
}
}  // namespace

const Agent* Engine::Impl::admit(std::string_view name, Mode mode, Verdict& verdict, int64_t& index) const {
  if (mode == Mode::deny_all) {
    verdict = Verdict::bundle_not_in_force;
    return nullptr;
  }
  index = find_agent(name);
  if (index < 0) {
    verdict = Verdict::unknown_agent;
    return nullptr;
  }
  const Agent& agent = agents[static_cast<size_t>(index)];
  if (agent.revoked) {
    verdict = Verdict::agent_revoked;
    return nullptr;
  }
  return &agent;
}

Decision Engine::Impl::decide(const Request& req, Mode mode, RateLimiter* rates, bool indexed) const {
  Decision d;
  d.bundle_version = version;
  d.mode = mode;
  int64_t ai = -1;
  const Agent* admitted = admit(req.agent, mode, d.verdict, ai);
  if (admitted == nullptr) return d;
  const Agent& agent = *admitted;
  int64_t ti = find_tool(req.server, req.tool);
  if (ti < 0) {
    d.verdict = Verdict::unknown_tool;
    return d;
  }
  const Tool& tool = tools[static_cast<size_t>(ti)];
  const size_t pi = pair(static_cast<uint32_t>(ai), static_cast<uint32_t>(ti));
  if (!granted[pi]) {
    d.verdict = Verdict::tool_not_granted;
    return d;
  }
  const RuleSet& set = mode == Mode::safe_set ? safe : normal;

  // Candidate rules in the same order either way: denies, allows, shadows, each in bundle order.
  auto for_each = [&](int kind, auto&& fn) {
    if (indexed) {
      const auto& p = set.pairs[pi];
      for (uint32_t k = p[static_cast<size_t>(kind)]; k < p[static_cast<size_t>(kind) + 1]; ++k) {
        if (!fn(set.entries[k])) return;
      }
      return;
    }
    for (uint32_t r = 0; r < set.rules.size(); ++r) {
      const Rule& rule = set.rules[r];
      if ((rule.shadow ? 2 : rule.allow ? 1 : 0) != kind) continue;
      if (!any_glob_or_empty(rule.agents(), agent.name) || !any_glob_or_empty(rule.tools(), tool.full)) continue;
      if (!fn(r)) return;
    }
  };

  for_each(2, [&](uint32_t r) {
    if (conditions_hold(set.rules[r], req, agent)) push_id(d.shadow, d.shadow_count, r);
    return true;
  });
  for_each(0, [&](uint32_t r) {
    if (conditions_hold(set.rules[r], req, agent)) push_id(d.rules, d.rule_count, r);
    return true;
  });
  if (d.rule_count > 0) {
    d.verdict = Verdict::denied_by_rule;
    return d;
  }
  // One pass over the allow rules. The first whose conditions hold brings in the flow rules
  // (they see the whole session and apply in either mode); if none denies, the first matching
  // allow rule with room in its rate decides.
  bool flows_checked = false;
  auto flows_deny = [&]() {
    auto check = [&](uint32_t f) {
      if (!flow_denies(flows[f], req, tool)) return false;
      d.verdict = Verdict::flow_denied;
      push_id(d.rules, d.rule_count, kFlowBase + f);
      return true;
    };
    if (indexed) {
      const auto& p = flow_pairs[pi];
      for (uint32_t k = p[0]; k < p[1]; ++k) {
        if (check(flow_entries[k])) return true;
      }
      return false;
    }
    for (uint32_t f = 0; f < flows.size(); ++f) {
      if (any_glob_or_empty(flows[f].agents, agent.name) && any_glob_or_empty(flows[f].tools, tool.full) && check(f)) {
        return true;
      }
    }
    return false;
  };
  for_each(1, [&](uint32_t r) {
    const Rule& rule = set.rules[r];
    if (!conditions_hold(rule, req, agent)) return true;
    if (!flows_checked) {
      flows_checked = true;
      if (flows_deny()) return false;
    }
    if (rule.has_rate && rates != nullptr) {
      const fb::RateLimit& rate = *rule.src->rate();
      std::string_view key = rate.scope() == fb::RateScope::Agent ? req.agent
                             : rate.scope() == fb::RateScope::Tool ? std::string_view(tool.full)
                                                                   : req.task;
      if (!rates->try_acquire(r | (mode == Mode::safe_set ? 0x40000000u : 0u), key, req.time, rate.count(), rate.window())) {
        d.rate_limited = true;
        return true;
      }
    }
    d.allow = true;
    d.verdict = Verdict::allowed_by_rule;
    push_id(d.rules, d.rule_count, r);
    uint32_t ttl = agent.ttl;
    const uint32_t rule_ttl = rule.src->credential_ttl();
    if (rule_ttl > 0 && (ttl == 0 || rule_ttl < ttl)) ttl = rule_ttl;
    d.credential_ttl = ttl;
    return false;
  });
  if (d.verdict == Verdict::flow_denied) return d;
  if (!d.allow) d.verdict = Verdict::no_rule_allows;
  return d;
}

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

bool Engine::could_allow(std::string_view agent, std::string_view server, std::string_view tool, Mode mode) const {
  if (mode == Mode::deny_all) return false;
  const Impl& m = *impl_;
  int64_t ai = m.find_agent(agent);
  int64_t ti = m.find_tool(server, tool);
  if (ai < 0 || ti < 0 || m.agents[static_cast<size_t>(ai)].revoked) return false;
  const size_t pi = m.pair(static_cast<uint32_t>(ai), static_cast<uint32_t>(ti));
  if (!m.granted[pi]) return false;
  const auto& p = (mode == Mode::safe_set ? m.safe : m.normal).pairs[pi];
  return p[2] > p[1];  // the pair has at least one allow rule
}

uint8_t Engine::output_sensitivity(std::string_view server, std::string_view tool) const {
  int64_t ti = impl_->find_tool(server, tool);
  return ti < 0 ? 0 : impl_->tools[static_cast<size_t>(ti)].output_sensitivity;
}

uint64_t Engine::version() const { return impl_->version; }
size_t Engine::rule_count() const { return impl_->normal.rules.size(); }

Result<std::shared_ptr<const Engine>> Engine::build(ByteView payload) {
  auto copy = std::make_shared<Bytes>(payload.begin(), payload.end());
  ByteView view(*copy);
  return build(std::move(copy), view);
}

Result<std::shared_ptr<const Engine>> Engine::build(std::shared_ptr<const void> owner, ByteView payload) {
  if (payload.size() < sizeof(flatbuffers::uoffset_t)) return fail(errc::corrupt, "bundle payload is empty");
  std::shared_ptr<Engine> p(new Engine());
  Impl& m = *p->impl_;
  m.owner = std::move(owner);
  const fb::Bundle& b = *flatbuffers::GetRoot<fb::Bundle>(payload.data());
  m.version = b.version();
  std::vector<std::string_view> revoked;
  if (b.revoked_agents() != nullptr) {
    for (const auto* r : *b.revoked_agents()) revoked.push_back(str(r));
  }
  if (b.agents() != nullptr) {
    for (const fb::Agent* a : *b.agents()) {
      Agent c;
      c.name = str(a->name());
      c.clearance = a->clearance();
      c.ttl = a->credential_ttl();
      c.tool_globs = StrList(a->tools());
      c.revoked = std::find(revoked.begin(), revoked.end(), c.name) != revoked.end();
      m.agents.push_back(std::move(c));
    }
  }
  if (b.tools() != nullptr) {
    for (const fb::Tool* t : *b.tools()) {
      Tool c;
      c.server = str(t->server());
      c.name = str(t->name());
      c.full = std::string(c.server) + "/" + std::string(c.name);
      c.output_sensitivity = t->output_sensitivity();
      OUTPOST_TRY(c.dests, compile_dests(t->destinations(), m.arena));
      m.tools.push_back(std::move(c));
    }
  }
  for (uint32_t i = 0; i < m.agents.size(); ++i) m.agents_by_name.push_back(i);
  std::sort(m.agents_by_name.begin(), m.agents_by_name.end(),
            [&](uint32_t x, uint32_t y) { return m.agents[x].name < m.agents[y].name; });
  for (size_t i = 1; i < m.agents_by_name.size(); ++i) {
    if (m.agents[m.agents_by_name[i]].name == m.agents[m.agents_by_name[i - 1]].name) {
      return fail(errc::corrupt, "bundle declares agent \"" + std::string(m.agents[m.agents_by_name[i]].name) + "\" twice");
    }
  }
  for (uint32_t i = 0; i < m.tools.size(); ++i) m.tools_by_name.push_back(i);
  std::sort(m.tools_by_name.begin(), m.tools_by_name.end(), [&](uint32_t x, uint32_t y) {
    return std::tie(m.tools[x].server, m.tools[x].name) < std::tie(m.tools[y].server, m.tools[y].name);
  });
  for (size_t i = 1; i < m.tools_by_name.size(); ++i) {
    if (m.tools[m.tools_by_name[i]].full == m.tools[m.tools_by_name[i - 1]].full) {
      return fail(errc::corrupt, "bundle declares tool \"" + m.tools[m.tools_by_name[i]].full + "\" twice");
    }
  }
  m.granted.assign(m.agents.size() * m.tools.size(), 0);
  for (uint32_t a = 0; a < m.agents.size(); ++a) {
    for (uint32_t t = 0; t < m.tools.size(); ++t) m.granted[m.pair(a, t)] = any_glob(m.agents[a].tool_globs, m.tools[t].full);
  }
  RegexCache& regexes = m.regexes;
  PointerCache pointers;
  if (b.rules() != nullptr) {
    m.normal.rules.reserve(b.rules()->size());
    for (const fb::Rule* r : *b.rules()) {
      OUTPOST_TRY(Rule c, compile_rule(*r, regexes, pointers, m.arena));
      m.normal.rules.push_back(std::move(c));
    }
  }
  if (b.safe_set() != nullptr) {
    for (const fb::Rule* r : *b.safe_set()) {
      OUTPOST_TRY(Rule c, compile_rule(*r, regexes, pointers, m.arena));
      m.safe.rules.push_back(std::move(c));
    }
  }
  if (b.flow_rules() != nullptr) {
    for (const fb::FlowRule* f : *b.flow_rules()) {
      Flow c;
      c.id = str(f->id());
      c.reason = str(f->reason());
      c.kind = f->kind();
      c.agents = StrList(f->agents());
      c.tools = StrList(f->tools());
      c.min_sensitivity = f->min_sensitivity();
      OUTPOST_TRY(c.trusted, compile_dests(f->trusted(), m.arena));
      c.approval_tool = str(f->approval_tool());
      c.window = f->window();
      c.max_count = f->max_count();
      c.max_total = f->max_total();
      Result<Pointer> ptr = parse_pointer(str(f->total_pointer()), m.arena);
      if (!ptr) return fail(ptr.error().wrap("flow rule " + std::string(c.id)));
      c.total_pointer = std::move(*ptr);
      m.flows.push_back(std::move(c));
    }
  }
  if (b.egress() != nullptr) {
    for (const fb::EgressRule* r : *b.egress()) {
      EgressRule c;
      c.id = str(r->id());
      c.reason = str(r->reason());
      c.allow = r->effect() == fb::Effect::Allow;
      c.shadow = r->shadow();
      c.agents = StrList(r->agents());
      c.tasks = StrList(r->tasks());
      c.kind = r->kind();
      OUTPOST_TRY(c.dests, compile_dests(r->destinations(), m.arena));
      c.within_clearance = r->within_clearance();
      c.max_sensitivity = r->max_sensitivity();
      if (r->time_windows() != nullptr) {
        c.windows = compile_windows(*r->time_windows(), m.arena);
      }
      if (r->rate() != nullptr && r->rate()->count() > 0 && r->rate()->window() > 0) {
        c.has_rate = true;
        c.rate_scope = r->rate()->scope();
        c.rate_count = r->rate()->count();
        c.rate_window = r->rate()->window();
      }
      if (r->budget() != nullptr) {
        c.budget_bytes = r->budget()->bytes();
        c.budget_window = r->budget()->window();
      }
      if (r->inject() != nullptr && r->inject()->secret() != nullptr) {
        c.inject_header = r->inject()->header() != nullptr ? str(r->inject()->header()) : std::string_view("Authorization");
        c.inject_secret = str(r->inject()->secret());
        c.inject_prefix = str(r->inject()->prefix());
      }
      m.egress.push_back(std::move(c));
    }
  }
  m.index(m.normal);
  m.index(m.safe);
  {
    std::vector<std::vector<uint32_t>> buckets(m.agents.size() * m.tools.size());
    std::vector<uint32_t> as, ts;
    for (uint32_t f = 0; f < m.flows.size(); ++f) {
      m.select_agents(m.flows[f].agents, as);
      m.select_tools(m.flows[f].tools, ts);
      for (uint32_t a : as) {
        for (uint32_t t : ts) buckets[m.pair(a, t)].push_back(f);
      }
    }
    m.flow_pairs.assign(buckets.size(), {0, 0});
    for (size_t pi = 0; pi < buckets.size(); ++pi) {
      m.flow_pairs[pi][0] = static_cast<uint32_t>(m.flow_entries.size());
      m.flow_entries.insert(m.flow_entries.end(), buckets[pi].begin(), buckets[pi].end());
      m.flow_pairs[pi][1] = static_cast<uint32_t>(m.flow_entries.size());
    }
  }
  return std::shared_ptr<const Engine>(std::move(p));
}

// ---- egress ----

namespace {

// A destination of an egress rule against a connection: a host glob against the name asked
// for (never an IP literal: a raw address needs a CIDR), a CIDR against the address.
bool egress_dest_matches(const Dest& d, std::string_view host, bool host_is_ip, const Cidr* address, uint16_t port) {
  if (!d.ports.empty() && std::find(d.ports.begin(), d.ports.end(), port) == d.ports.end()) return false;
  if (d.has_cidr) return address != nullptr && cidr_covers(d.cidr, *address);
  return !host_is_ip && glob_match(d.host, host);
}

// Whether the rule names a special address explicitly: one of its CIDRs (for the port)
// contains it and is at least as long as the special range it falls in.
bool names_address(const EgressRule& r, const Cidr& address, uint8_t min_prefix, uint16_t port) {
  for (const Dest& d : r.dests) {
    if (!d.has_cidr || d.cidr.prefix < min_prefix) continue;
    if (!d.ports.empty() && std::find(d.ports.begin(), d.ports.end(), port) == d.ports.end()) continue;
    if (cidr_covers(d.cidr, address)) return true;
  }
  return false;
}

}  // namespace

EgressDecision Engine::Impl::decide_egress(const EgressRequest& req, Mode mode, RateLimiter* rates) const {
  EgressDecision d;
  d.bundle_version = version;
  d.mode = mode;
  int64_t ai = -1;
  const Agent* admitted = admit(req.agent, mode, d.verdict, ai);
  if (admitted == nullptr) return d;
  const Agent& agent = *admitted;
  // The safe set holds tool rules only: after expiry an agent has no network.
  if (mode == Mode::safe_set) return d;
  std::string_view name = req.host;
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  LowerHost host(name);
  if (!host.ok || host.view.empty()) return d;
  const bool host_is_ip = parse_cidr(host.view).has_value() && host.view.find('/') == std::string_view::npos;
  std::optional<Cidr> address;
  if (!req.address.empty()) {
    address = parse_cidr(req.address);
    if (!address || req.address.find('/') != std::string_view::npos) return d;  // not an address: nothing matches
  } else if (host_is_ip) {
    address = parse_cidr(host.view);
  }
  AddressRange special;
  if (address) {
    // IPv4-mapped IPv6 is the IPv4 address it carries, for every rule below (a deny on an IPv4
    // range must not be side-stepped by writing it as ::ffff:a.b.c.d).
    address = unmapped_v4(*address);
    special = special_range(*address);
    // This host's own addresses need a rule naming the very address, even where the range
    // they are in (a private one, usually) is named. Loopback stays loopback: naming it is
    // naming this host already.
    if (req.own_address && special.name != "loopback") {
      special = AddressRange{"this host's own", static_cast<uint8_t>(address->family == AF_INET ? 32 : 128)};
    }
    d.address_class = special.name;
  }

  auto holds = [&](const EgressRule& r) {
    if (!any_glob_or_empty(r.agents, agent.name)) return false;
    if (!r.tasks.empty() && !any_glob(r.tasks, req.task)) return false;
    if (r.within_clearance && req.sensitivity > agent.clearance) return false;
    if (req.sensitivity > r.max_sensitivity) return false;
    if (!r.windows.empty()) {
      bool any = false;
      for (const auto& w : r.windows) any = any || in_window(w, req.time);
      if (!any) return false;
    }
    if (r.dests.empty()) return !r.allow;  // a deny rule without destinations covers every one
    for (const Dest& dest : r.dests) {
      if (egress_dest_matches(dest, host.view, host_is_ip, address ? &*address : nullptr, req.port)) return true;
    }
    return false;
  };
  for (uint32_t i = 0; i < egress.size(); ++i) {
    const EgressRule& r = egress[i];
    if (r.shadow && holds(r)) push_id(d.shadow, d.shadow_count, i);
  }
  for (uint32_t i = 0; i < egress.size(); ++i) {
    const EgressRule& r = egress[i];
    if (r.shadow || r.allow || !holds(r)) continue;
    d.verdict = Verdict::denied_by_rule;
    d.rule = static_cast<int32_t>(i);
    return d;
  }
  // Taint: flow rules over every action (no `tools`) apply to egress as to a tool's destination.
  auto taint_denies = [&]() -> int32_t {
    for (uint32_t f = 0; f < flows.size(); ++f) {
      const Flow& flow = flows[f];
      if (flow.kind != fb::FlowKind::Taint || !flow.tools.empty() || !any_glob_or_empty(flow.agents, agent.name)) continue;
      bool tainted = req.sensitivity >= flow.min_sensitivity;
      for (const auto& e : req.history) {
        if (tainted) break;
        uint8_t label = e.sensitivity;
        if (int64_t t = find_tool(e.server, e.tool); t >= 0) label = std::max(label, tools[static_cast<size_t>(t)].output_sensitivity);
        tainted = label >= flow.min_sensitivity;
      }
      if (!tainted) continue;
      bool trusted = false;
      for (const Dest& t : flow.trusted) {
        trusted = trusted || egress_dest_matches(t, host.view, host_is_ip, address ? &*address : nullptr, req.port);
      }
      if (!trusted) return static_cast<int32_t>(f);
    }
    return -1;
  };
  bool refused_address = false;
  bool flows_checked = false;
  for (uint32_t i = 0; i < egress.size(); ++i) {
    const EgressRule& r = egress[i];
    if (r.shadow || !r.allow || !holds(r)) continue;
    if (address && !special.name.empty() && !names_address(r, *address, special.prefix, req.port)) {
      refused_address = true;
      continue;
    }
    if (!flows_checked) {
      flows_checked = true;
      if (int32_t f = taint_denies(); f >= 0) {
        d.verdict = Verdict::flow_denied;
        d.flow = f;
        return d;
      }
    }
    if (r.has_rate && rates != nullptr) {
      std::string_view key = r.rate_scope == fb::RateScope::Agent ? req.agent
                             : r.rate_scope == fb::RateScope::Tool ? host.view
                                                                    : req.task;
      if (!rates->try_acquire(i | 0x20000000u, key, req.time, r.rate_count, r.rate_window)) {
        d.rate_limited = true;
        continue;
      }
    }
    d.allow = true;
    d.verdict = Verdict::allowed_by_rule;
    d.rule = static_cast<int32_t>(i);
    d.kind = r.kind;
    d.budget_bytes = r.budget_bytes;
    d.budget_window = r.budget_window;
    d.inject_header = r.inject_header;
    d.inject_secret = r.inject_secret;
    d.inject_prefix = r.inject_prefix;
    return d;
  }
  d.verdict = refused_address ? Verdict::address_refused : Verdict::no_rule_allows;
  return d;
}

EgressDecision Engine::decide_egress(const EgressRequest& req, Mode mode, RateLimiter* rates) const {
  return impl_->decide_egress(req, mode, rates);
}

bool Engine::has_egress(std::string_view agent) const {
  for (const auto& r : impl_->egress) {
    if (r.allow && !r.shadow && any_glob_or_empty(r.agents, agent)) return true;
  }
  return false;
}

std::string Engine::egress_rule_id(int32_t index) const {
  return index >= 0 && static_cast<size_t>(index) < impl_->egress.size() ? std::string(impl_->egress[static_cast<size_t>(index)].id) : "?";
}
std::string Engine::flow_rule_id(int32_t index) const {
  return index >= 0 && static_cast<size_t>(index) < impl_->flows.size() ? std::string(impl_->flows[static_cast<size_t>(index)].id) : "?";
}

std::string Engine::explain_egress(const EgressDecision& d, const EgressRequest& req) const {
  auto with_reason = [](std::string_view id, std::string_view reason) {
    return reason.empty() ? std::string(id) : std::string(id) + " (" + std::string(reason) + ")";
  };
  std::string dest = std::string(req.host) + ":" + std::to_string(req.port);
  if (!req.address.empty() && req.address != req.host) dest += " (" + std::string(req.address) + ")";
  std::string out;
  switch (d.verdict) {
    case Verdict::allowed_by_rule: {
      const auto& r = impl_->egress[static_cast<size_t>(d.rule)];
      out = "allowed by egress rule " + with_reason(r.id, r.reason);
      break;
    }
    case Verdict::denied_by_rule: {
      const auto& r = impl_->egress[static_cast<size_t>(d.rule)];
      out = "denied by egress rule " + with_reason(r.id, r.reason);
      break;
    }
    case Verdict::flow_denied: {
      const auto& f = impl_->flows[static_cast<size_t>(d.flow)];
      out = "denied by flow rule " + with_reason(f.id, f.reason) + ": the session has read data that may not go to " + dest;
      break;
    }
    case Verdict::address_refused:
      out = dest + (d.address_class == "this host's own" ? " is one of this host's own addresses"
                                                          : " is a " + std::string(d.address_class) + " address") +
            ", which egress reaches only when the rule names it by CIDR (no DNS rebinding, no metadata)";
      break;
    case Verdict::no_rule_allows:
      out = "no egress rule allows " + std::string(req.agent) + " -> " + dest + " (default deny)";
      if (d.mode == Mode::safe_set) out += "; after expiry the safe set allows no egress";
      if (d.rate_limited) out += "; a matching rule is over its rate limit";
      break;
    case Verdict::unknown_agent: out = "agent \"" + std::string(req.agent) + "\" is not in the bundle"; break;
    case Verdict::agent_revoked: out = "agent \"" + std::string(req.agent) + "\" is revoked"; break;
    case Verdict::bundle_not_in_force: out = "the policy bundle is not in force: deny all"; break;
    default: out = std::string(verdict_name(d.verdict)); break;
  }
  for (uint8_t i = 0; i < d.shadow_count; ++i) out += "; shadow egress rule " + std::string(impl_->egress[d.shadow[i]].id) + " matched";
  return out;
}

Decision Engine::decide(const Request& req, Mode mode, RateLimiter* rates) const {
  return impl_->decide(req, mode, rates, true);
}
Decision Engine::decide_unindexed(const Request& req, Mode mode, RateLimiter* rates) const {
  return impl_->decide(req, mode, rates, false);
}

std::string Engine::rule_id(const Decision& d, uint32_t index) const {
  if (index >= kFlowBase) {
    uint32_t f = index - kFlowBase;
    return f < impl_->flows.size() ? std::string(impl_->flows[f].id) : "?";
  }
  const RuleSet& set = d.mode == Mode::safe_set ? impl_->safe : impl_->normal;
  return index < set.rules.size() ? std::string(set.rules[index].id()) : "?";
}

std::string_view verdict_name(Verdict v) {
  switch (v) {
    case Verdict::allowed_by_rule: return "allowed_by_rule";
    case Verdict::denied_by_rule: return "denied_by_rule";
    case Verdict::no_rule_allows: return "no_rule_allows";
    case Verdict::unknown_agent: return "unknown_agent";
    case Verdict::agent_revoked: return "agent_revoked";
    case Verdict::unknown_tool: return "unknown_tool";
    case Verdict::tool_not_granted: return "tool_not_granted";
    case Verdict::flow_denied: return "flow_denied";
    case Verdict::bundle_not_in_force: return "bundle_not_in_force";
    case Verdict::address_refused: return "address_refused";
  }
  return "?";
}

std::string Engine::explain(const Decision& d, const Request& req) const {
  const RuleSet& set = d.mode == Mode::safe_set ? impl_->safe : impl_->normal;
  auto id_of = [&](uint32_t i) -> std::string {
    return std::string(i >= kFlowBase ? impl_->flows[i - kFlowBase].id : set.rules[i].id());
  };
  auto reason_of = [&](uint32_t i) -> std::string {
    std::string_view r = i >= kFlowBase ? impl_->flows[i - kFlowBase].reason : set.rules[i].reason();
    return r.empty() ? std::string() : " (" + std::string(r) + ")";
  };
  std::string call = std::string(req.agent) + " -> " + std::string(req.server) + "/" + std::string(req.tool);
  std::string out;
  switch (d.verdict) {
    case Verdict::allowed_by_rule: out = "allowed by rule " + id_of(d.rules[0]) + reason_of(d.rules[0]); break;
    case Verdict::denied_by_rule: out = "denied by rule " + id_of(d.rules[0]) + reason_of(d.rules[0]); break;
    case Verdict::no_rule_allows:
      out = "no rule allows " + call + " (default deny)";
      if (d.rate_limited) out += "; a matching allow rule is over its rate limit";
      break;
    case Verdict::unknown_agent: out = "agent \"" + std::string(req.agent) + "\" is not in the bundle"; break;
    case Verdict::agent_revoked: out = "agent \"" + std::string(req.agent) + "\" is revoked"; break;
    case Verdict::unknown_tool:
      out = "tool \"" + std::string(req.server) + "/" + std::string(req.tool) + "\" is not in the bundle";
      break;
    case Verdict::tool_not_granted: out = "agent \"" + std::string(req.agent) + "\" is not granted " + call; break;
    case Verdict::flow_denied: out = "denied by flow rule " + id_of(d.rules[0]) + reason_of(d.rules[0]); break;
    case Verdict::bundle_not_in_force: out = "the policy bundle is not in force: deny all"; break;
    case Verdict::address_refused: out = "refused: the destination's address is not named by a rule"; break;
  }
  if (d.mode == Mode::safe_set) out += " [safe set: the bundle is not in force]";
  for (uint8_t i = 0; i < d.shadow_count; ++i) out += "; shadow rule " + id_of(d.shadow[i]) + " matched";
  return out;
}

// ---- rate limiter ----

struct RateLimiter::Impl {
  struct Slot {
    uint64_t key = 0;  // 0 = empty
    int64_t window_start = 0;
    uint32_t count = 0;
  };
  std::mutex mu;
  size_t size = 1;                 // a power of two
  std::unique_ptr<Slot[]> slots;   // null until the first event: most limiters never see one
};

RateLimiter::RateLimiter(size_t slots) : impl_(std::make_unique<Impl>()) {
  while (impl_->size < slots) impl_->size <<= 1;
}
RateLimiter::~RateLimiter() = default;

bool RateLimiter::try_acquire(uint32_t rule, std::string_view key, int64_t now, uint32_t limit, uint32_t window) {
  // FNV-1a over rule and key; 0 is reserved for empty slots.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint8_t b) { h = (h ^ b) * 1099511628211ull; };
  for (int i = 0; i < 4; ++i) mix(static_cast<uint8_t>(rule >> (8 * i)));
  for (char c : key) mix(static_cast<uint8_t>(c));
  if (h == 0) h = 1;
  const int64_t start = now - (now % static_cast<int64_t>(window));
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->slots == nullptr) {
    impl_->slots.reset(new (std::nothrow) Impl::Slot[impl_->size]());
    if (impl_->slots == nullptr) return false;  // no memory for the table: over the limit (fail closed)
  }
  Impl::Slot* slots = impl_->slots.get();
  const size_t mask = impl_->size - 1;
  // Linear probing over eight slots. A slot is reused only once its window has passed, so a
  // crowded table makes limits stricter (the call is refused), never looser.
  Impl::Slot* victim = nullptr;
  for (size_t i = 0; i < 8; ++i) {
    Impl::Slot& s = slots[(h + i) & mask];
    if (s.key == h) {
      if (s.window_start != start) {
        s.window_start = start;
        s.count = 0;
      }
      if (s.count >= limit) return false;
      ++s.count;
      return true;
    }
    if (s.key == 0) {
      victim = &s;
      break;
    }
    if (s.window_start < start && (victim == nullptr || s.window_start < victim->window_start)) victim = &s;
  }
  if (limit == 0 || victim == nullptr) return false;
  *victim = Impl::Slot{h, start, 1};
  return true;
}

// ---- What the session history keeps of a call's arguments ----

namespace {

bool holds_number(const boost::json::value& v, size_t depth) {
  if (depth == 0 && v.is_structured()) return true;  // too deep to look further: assume it does
  switch (v.kind()) {
    case boost::json::kind::int64:
    case boost::json::kind::uint64:
    case boost::json::kind::double_:
      return true;
    case boost::json::kind::object:
      for (const auto& kv : v.get_object()) {
        if (holds_number(kv.value(), depth - 1)) return true;
      }
      return false;
    case boost::json::kind::array:
      for (const auto& x : v.get_array()) {
        if (holds_number(x, depth - 1)) return true;
      }
      return false;
    default:
      return false;
  }
}

boost::json::value numbers_of(const boost::json::value& v, size_t depth, size_t& budget, bool& incomplete) {
  if (depth == 0 && v.is_structured()) {
    // Past kHistoryDepth: a document nested deeper than rules read loses nothing unless it
    // holds numbers there (looked for a further 64 levels, past which it is assumed).
    if (holds_number(v, 64)) incomplete = true;
    return nullptr;
  }
  switch (v.kind()) {
    case boost::json::kind::int64:
    case boost::json::kind::uint64:
    case boost::json::kind::double_:
      if (budget == 0) {
        incomplete = true;
        return nullptr;
      }
      --budget;
      return v;
    case boost::json::kind::object: {
      boost::json::object out;
      for (const auto& kv : v.get_object()) {
        boost::json::value n = numbers_of(kv.value(), depth - 1, budget, incomplete);
        if (!n.is_null()) out.emplace(kv.key(), std::move(n));
      }
      if (out.empty()) return nullptr;
      return out;
    }
    case boost::json::kind::array: {
      boost::json::array out;
      const auto& in = v.get_array();
      for (size_t i = 0; i < in.size(); ++i) {
        boost::json::value n = numbers_of(in[i], depth - 1, budget, incomplete);
        if (n.is_null()) continue;
        out.resize(i);  // nulls hold the places of what had no number
        out.push_back(std::move(n));
      }
      if (out.empty()) return nullptr;
      return out;
    }
    default:
      return nullptr;
  }
}

}  // namespace

boost::json::value history_numbers(const boost::json::value& args, bool& incomplete) {
  size_t budget = kHistoryNumbers;
  return numbers_of(args, kHistoryDepth, budget, incomplete);
}

}  // namespace outpost::policy
