// Decision latency and bundle load time (DESIGN.md's budget: p50 <= 1 us, p99 <= 5 us, no heap
// allocation per decision, flat in the number of unrelated rules; verify + load of a
// 10,000-rule bundle <= 50 ms).
//
// The bundle: 20 agents x 50 tools and 1,000 rules spread over those (agent, tool) pairs by
// exact name, with path-prefix, regex and clearance conditions, plus glob rules and a taint
// flow rule that apply everywhere. BM_decide/N adds N *unrelated* rules: rules for further
// tools that no request names (the index must make them free). Requests cycle through the
// 1,000 pairs and four argument sets, with a session history; each decision is timed alone.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <random>

#include <boost/json.hpp>

#include "outpost/base/crypto.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/trust.h"
#include "policy/engine.h"

// Counts heap allocations so that the benchmark can report allocations per decision. The
// replacements pair malloc with free; g++ cannot see that through inlining and warns.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<uint64_t> g_allocations{0};
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

using namespace outpost;
using namespace outpost::policy;
namespace fbt = outpost::fb;

constexpr int kAgents = 20;
constexpr int kTools = 50;

std::string agent_name(int a) { return "agent-" + std::to_string(a); }
std::string server_name(int t) { return "srv" + std::to_string(t / 5); }
std::string tool_name(int t) { return "tool" + std::to_string(t % 5); }

constexpr int kRelatedRules = 1000;

Bytes make_bundle(int rules, int unrelated = 0) {
  fbt::BundleT b;
  b.version = 1;
  b.not_before = 0;
  b.not_after = 4102444800;
  b.max_offline = 86400;
  for (int t = 0; t < kTools; ++t) {
    auto tool = std::make_unique<fbt::ToolT>();
    tool->server = server_name(t);
    tool->name = tool_name(t);
    tool->output_sensitivity = static_cast<uint8_t>(t % 4);
    b.tools.push_back(std::move(tool));
  }
  const int extra_tools = unrelated > 0 ? std::max(1, unrelated / 100) : 0;
  for (int t = 0; t < extra_tools; ++t) {
    auto tool = std::make_unique<fbt::ToolT>();
    tool->server = "other" + std::to_string(t);
    tool->name = "op";
    b.tools.push_back(std::move(tool));
  }
  for (int a = 0; a < kAgents; ++a) {
    auto agent = std::make_unique<fbt::AgentT>();
    agent->name = agent_name(a);
    agent->tools = {"*"};
    agent->clearance = 2;
    agent->credential_ttl = 300;
    b.agents.push_back(std::move(agent));
  }
  std::mt19937 rng(7);
  for (int i = 0; i < rules; ++i) {
    auto r = std::make_unique<fbt::RuleT>();
    r->id = "r" + std::to_string(i);
    int a = static_cast<int>(rng() % kAgents), t = static_cast<int>(rng() % kTools);
    r->agents = {agent_name(a)};
    r->tools = {server_name(t) + "/" + tool_name(t)};
    r->effect = i % 7 == 0 ? fbt::Effect::Deny : fbt::Effect::Allow;
    auto arg = std::make_unique<fbt::ArgConstraintT>();
    arg->pointer = "/path";
    arg->op = fbt::ArgOp::PathPrefix;
    arg->values = {i % 7 == 0 ? "/srv/data/private" : "/srv/data"};
    r->args.push_back(std::move(arg));
    if (i % 3 == 0) {
      auto re = std::make_unique<fbt::ArgConstraintT>();
      re->pointer = "/ref";
      re->op = fbt::ArgOp::Regex;
      re->values = {"[0-9a-f]{7,40}"};
      re->optional = true;
      r->args.push_back(std::move(re));
    }
    r->within_clearance = true;
    b.rules.push_back(std::move(r));
  }
  for (int i = 0; i < unrelated; ++i) {
    auto r = std::make_unique<fbt::RuleT>();
    r->id = "u" + std::to_string(i);
    r->agents = {agent_name(static_cast<int>(rng() % kAgents))};
    r->tools = {"other" + std::to_string(rng() % static_cast<unsigned>(extra_tools)) + "/op"};
    r->effect = fbt::Effect::Allow;
    auto arg = std::make_unique<fbt::ArgConstraintT>();
    arg->pointer = "/path";
    arg->op = fbt::ArgOp::PathPrefix;
    arg->values = {"/srv/other"};
    r->args.push_back(std::move(arg));
    b.rules.push_back(std::move(r));
  }
  for (const char* g : {"srv1/*", "*/tool3"}) {
    auto r = std::make_unique<fbt::RuleT>();
    r->id = std::string("glob-") + g;
    r->effect = fbt::Effect::Deny;
    r->tools = {g};
    auto arg = std::make_unique<fbt::ArgConstraintT>();
    arg->pointer = "/path";
    arg->op = fbt::ArgOp::PathPrefix;
    arg->values = {"/etc"};
    r->args.push_back(std::move(arg));
    b.rules.push_back(std::move(r));
  }
  auto taint = std::make_unique<fbt::FlowRuleT>();
  taint->id = "taint";
  taint->kind = fbt::FlowKind::Taint;
  taint->min_sensitivity = 3;
  auto trusted = std::make_unique<fbt::DestinationT>();
  trusted->host = "*.corp.example";
  taint->trusted.push_back(std::move(trusted));
  b.flow_rules.push_back(std::move(taint));
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fbt::Bundle::Pack(fbb, &b));
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

struct Fixture {
  Bytes payload;
  std::shared_ptr<const Engine> policy;
  std::vector<boost::json::value> args;
  std::vector<SessionEvent> history;
};

Fixture& fixture(int unrelated) {
  static std::map<int, Fixture> cache;
  auto it = cache.find(unrelated);
  if (it != cache.end()) return it->second;
  Fixture f;
  f.payload = make_bundle(kRelatedRules, unrelated);
  f.policy = *Engine::build(f.payload);
  for (const char* a : {R"({"path":"/srv/data/x/report.csv"})", R"({"path":"/srv/data/private/../y","ref":"abc1234"})",
                        R"({"path":"/etc/passwd"})", R"({"path":"/srv/data/a/b/c/d","ref":"deadbeef"})"}) {
    f.args.push_back(boost::json::parse(a));
  }
  f.history = {{"srv0", "tool1", 0, 0, nullptr}, {"srv2", "tool0", 0, 1, nullptr}};
  return cache.emplace(unrelated, std::move(f)).first->second;
}

void BM_decide(benchmark::State& state) {
  Fixture& f = fixture(static_cast<int>(state.range(0)));
  std::vector<std::string> agents, servers, tools;
  for (int a = 0; a < kAgents; ++a) agents.push_back(agent_name(a));
  for (int t = 0; t < kTools; ++t) {
    servers.push_back(server_name(t));
    tools.push_back(tool_name(t));
  }
  // Warm RE2's lazily built automata before counting allocations.
  for (int i = 0; i < 20000; ++i) {
    Request q;
    q.agent = agents[static_cast<size_t>(i % kAgents)];
    q.server = servers[static_cast<size_t>(i % kTools)];
    q.tool = tools[static_cast<size_t>(i % kTools)];
    q.args = &f.args[static_cast<size_t>(i % f.args.size())];
    benchmark::DoNotOptimize(f.policy->decide(q));
  }
  std::vector<double> ns;
  ns.reserve(1 << 20);
  uint64_t allocs_before = g_allocations.load();
  uint64_t i = 0, allowed = 0;
  for (auto _ : state) {
    Request q;
    q.agent = agents[i % kAgents];
    q.server = servers[(i * 7) % kTools];
    q.tool = tools[(i * 7) % kTools];
    q.args = &f.args[i % f.args.size()];
    q.sensitivity = static_cast<uint8_t>(i % 3);
    q.time = 1795000000;
    q.history = f.history;
    auto t0 = std::chrono::steady_clock::now();
    Decision d = f.policy->decide(q);
    auto t1 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(d);
    allowed += d.allow;
    if (ns.size() < ns.capacity()) ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    ++i;
  }
  uint64_t allocs = g_allocations.load() - allocs_before;
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = ns[ns.size() / 2];
  state.counters["p99_ns"] = ns[ns.size() * 99 / 100];
  // ns.push_back never reallocates (reserved), so every allocation counted is the engine's.
  state.counters["allocs_per_decision"] = static_cast<double>(allocs) / static_cast<double>(i);
  state.counters["allow_ratio"] = static_cast<double>(allowed) / static_cast<double>(i);
  state.counters["rules"] = static_cast<double>(f.policy->rule_count());
}
// 1,000 related rules plus 0, 100, 1,000, 10,000 and 100,000 unrelated ones.
BENCHMARK(BM_decide)->Arg(0)->Arg(100)->Arg(1000)->Arg(10000)->Arg(100000)->Unit(benchmark::kNanosecond);

void BM_verify_and_load(benchmark::State& state) {
  const int rules = static_cast<int>(state.range(0));
  Bytes payload = make_bundle(rules);  // all related: the heaviest to index
  auto key = EcPrivateKey::generate();
  auto root = offline_cache::TrustRoot::create({key->public_key()}, 1);
  auto unsigned_bundle = offline_cache::SignedBundle::parse(offline_cache::SignedBundle::assemble(payload, {}));
  Bytes signed_bytes = *unsigned_bundle->add_signature(*key);
  for (auto _ : state) {
    auto b = offline_cache::SignedBundle::parse(signed_bytes);
    if (!b || !offline_cache::verify_bundle_signatures(*b, *root)) state.SkipWithError("verify failed");
    auto p = Engine::build(b->payload());
    if (!p) state.SkipWithError("build failed");
    benchmark::DoNotOptimize(p);
  }
  state.counters["bundle_bytes"] = static_cast<double>(signed_bytes.size());
  // What the engine keeps on the heap beside the bundle it reads its strings from (as outpostd
  // holds it: the installed bundle owns the buffer).
  auto kept = std::make_shared<const offline_cache::SignedBundle>(*offline_cache::SignedBundle::parse(signed_bytes));
  const size_t before = mallinfo2().uordblks;
  auto engine = Engine::build(kept, kept->payload());
  const size_t after = mallinfo2().uordblks;
  if (!engine) state.SkipWithError("build failed");
  state.counters["engine_heap_bytes"] = static_cast<double>(after - before);
  state.counters["engine_heap_bytes_per_rule"] = static_cast<double>(after - before) / rules;
}
BENCHMARK(BM_verify_and_load)->Arg(1000)->Arg(10000)->Arg(100000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
