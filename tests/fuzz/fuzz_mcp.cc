// The MCP broker's handling of untrusted JSON-RPC lines, both directions: the agent's lines
// (the first byte of each input picks the direction) go through the full decision path against
// a policy compiled from source; nothing may crash, and every client line gets a well-formed
// answer or is forwarded.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <boost/json/parse.hpp>

#include "broker/mcp_session.h"
#include "outpost/fb/bundle_generated.h"
#include "policy/compiler.h"

using namespace outpost;

namespace {

constexpr const char* kPolicy = R"(
version: 1
issuer: fuzz
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: fs, name: read_file, output_sensitivity: confidential}
  - {server: fs, name: write_file}
agents:
  - {name: a, tools: ["fs/*"], clearance: confidential, credential_ttl: 5m}
rules:
  - {id: r, effect: allow, agents: [a], tools: [fs/read_file], args: [{pointer: /path, path_prefix: [/ws]}]}
  - {id: w, effect: allow, agents: [a], tools: [fs/write_file], args: [{pointer: /path, glob: ["/ws/*"]}], credential_ttl: 60s}
flow_rules:
  - {id: f, kind: taint, min_sensitivity: confidential, agents: ["*"], tools: [fs/write_file], trusted: []}
)";

struct NullSink : broker::DecisionSink {
  Result<void> record(const broker::DecisionRecord&) override { return ok(); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::shared_ptr<const policy::Engine> engine = [] {
    auto compiled = policy::compile_policy(kPolicy, "fuzz.yaml", policy::CompileOptions{});
    if (!compiled) __builtin_trap();
    auto e = policy::Engine::build(compiled->payload);
    if (!e) __builtin_trap();
    return *e;
  }();
  static NullSink sink;
  broker::McpSession session({"a", "t", "fs", 16}, [] { return broker::PolicyView{engine, policy::Mode::normal, 4102444800}; },
                             &sink, [](const broker::DecisionRecord&, int64_t) -> Result<std::string> {
                               return std::string("token");
                             });
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string to_server, to_client;
  // Lines separated by '\n'; a line starting with '<' comes from the server.
  size_t start = 0;
  while (start <= in.size()) {
    size_t nl = in.find('\n', start);
    std::string_view line = in.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    if (!line.empty() && line[0] == '<') {
      session.from_server(line.substr(1), to_client);
    } else {
      const size_t before = to_client.size() + to_server.size();
      session.from_client(line, to_server, to_client);
      // Every client line is either forwarded or answered, and answers are JSON.
      if (to_client.size() + to_server.size() == before) __builtin_trap();
    }
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  size_t s = 0;
  for (size_t nl; (nl = to_client.find('\n', s)) != std::string::npos; s = nl + 1) {
    boost::system::error_code ec;
    (void)boost::json::parse(std::string_view(to_client).substr(s, nl - s), ec);
  }
  return 0;
}
