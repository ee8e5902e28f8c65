// The broker's own cost per message, without processes or pipes: what outpost adds on top of a
// byte pump for each line (scripts/bench-mcp.sh measures the whole path with the SDK client).
#include <benchmark/benchmark.h>

#include "broker/mcp_session.h"
#include "outpost/base/metrics.h"
#include "outpost/fb/bundle_generated.h"
#include "policy/compiler.h"

using namespace outpost;

namespace {

constexpr const char* kPolicy = R"(
version: 1
issuer: bench
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: everything, name: echo}
  - {server: fs, name: read_text_file}
agents:
  - {name: bench, tools: ["everything/*", "fs/*"]}
rules:
  - {id: echo, effect: allow, agents: [bench], tools: [everything/echo], args: [{pointer: /message, max_length: 4096}]}
  - {id: read, effect: allow, agents: [bench], tools: [fs/read_text_file], args: [{pointer: /path, path_prefix: [/srv/ws]}]}
)";

std::shared_ptr<const policy::Engine> engine() {
  static auto e = [] {
    auto compiled = policy::compile_policy(kPolicy, "bench.yaml", policy::CompileOptions{});
    return *policy::Engine::build(compiled->payload);
  }();
  return e;
}

struct NullSink : broker::DecisionSink {
  Result<void> record(const broker::DecisionRecord&) override { return ok(); }
};

broker::McpSession make(NullSink& sink, const char* server) {
  return broker::McpSession({"bench", "t", server, 4096},
                            [] { return broker::PolicyView{engine(), policy::Mode::normal, 4102444800}; }, &sink);
}

void BM_call_allowed(benchmark::State& state) {
  NullSink sink;
  auto s = make(sink, "everything");
  const std::string line =
      R"({"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"},"_meta":{"progressToken":1}},"jsonrpc":"2.0","id":1})";
  std::string to_server, to_client;
  for (auto _ : state) {
    to_server.clear();
    s.from_client(line, to_server, to_client);
    benchmark::DoNotOptimize(to_server.data());
  }
}
BENCHMARK(BM_call_allowed);

void BM_call_denied(benchmark::State& state) {
  NullSink sink;
  auto s = make(sink, "fs");
  const std::string line =
      R"({"method":"tools/call","params":{"name":"read_text_file","arguments":{"path":"/srv/ws/../../etc/shadow"}},"jsonrpc":"2.0","id":2})";
  std::string to_server, to_client;
  for (auto _ : state) {
    to_client.clear();
    s.from_client(line, to_server, to_client);
    benchmark::DoNotOptimize(to_client.data());
  }
}
BENCHMARK(BM_call_denied);

void BM_result_passthrough(benchmark::State& state) {
  NullSink sink;
  auto s = make(sink, "everything");
  const std::string line = R"({"result":{"content":[{"type":"text","text":"Echo: hello"}]},"jsonrpc":"2.0","id":1})";
  std::string to_client;
  for (auto _ : state) {
    to_client.clear();
    s.from_server(line, to_client);
    benchmark::DoNotOptimize(to_client.data());
  }
}
BENCHMARK(BM_result_passthrough);

void BM_large_write_call(benchmark::State& state) {
  NullSink sink;
  auto s = make(sink, "everything");
  const std::string line = R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":")" +
                           std::string(static_cast<size_t>(state.range(0)), 'x') + "\"}}}";
  std::string to_server, to_client;
  for (auto _ : state) {
    to_server.clear();
    to_client.clear();
    s.from_client(line, to_server, to_client);
    benchmark::DoNotOptimize(to_server.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(line.size()));
}
BENCHMARK(BM_large_write_call)->Arg(4 << 10)->Arg(1 << 20);

// What outpostd's metrics cost on the call path (docs/daemon.md, "Metrics"): a histogram
// observation per batch, a counter increment per decision recorded; and a scrape's rendering.
void BM_histogram_observe(benchmark::State& state) {
  metrics::Histogram h;
  uint64_t ns = 1000;
  for (auto _ : state) {
    h.observe_ns(ns);
    ns = ns * 7 % 50'000'000 + 1000;
  }
  benchmark::DoNotOptimize(h.snapshot().count);
}
BENCHMARK(BM_histogram_observe);

void BM_decision_counter_add(benchmark::State& state) {
  metrics::CounterFamily f({"agent", "kind", "verdict", "rule"});
  const std::string rules[] = {"notes-read", "notes-write", "fs-read", "web-fetch"};
  size_t i = 0;
  for (auto _ : state) f.add({"coder", "tool", "allowed_by_rule", rules[i++ & 3]});
  benchmark::DoNotOptimize(f.snapshot().size());
}
BENCHMARK(BM_decision_counter_add);

// A scrape of `series` decision counters and two histograms.
void BM_render_exposition(benchmark::State& state) {
  metrics::CounterFamily f({"agent", "kind", "verdict", "rule"});
  for (int64_t i = 0; i < state.range(0); ++i) f.add({"agent-" + std::to_string(i % 32), "tool", "allowed_by_rule", "rule-" + std::to_string(i)});
  metrics::Histogram h;
  for (int i = 0; i < 1000; ++i) h.observe_ns(static_cast<uint64_t>(i) * 1000);
  size_t bytes = 0;
  for (auto _ : state) {
    metrics::Writer w;
    w.family("outpost_decisions_total", "counter", "Decisions");
    w.counters("outpost_decisions_total", f);
    w.family("outpost_broker_hold_seconds", "histogram", "Hold");
    w.histogram("outpost_broker_hold_seconds", {}, h.snapshot());
    w.histogram("outpost_broker_decide_seconds", {}, h.snapshot());
    bytes = w.take().size();
  }
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_render_exposition)->Arg(100)->Arg(4096)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
