// The MCP broker's session logic and relay loop, against a real engine compiled from policy
// source. (The end-to-end tests drive it with the official SDK and servers.)
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <sstream>
#include <chrono>
#include <thread>


#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "broker/decision_log.h"
#include "broker/mcp_session.h"
#include "broker/relay.h"
#include "broker/session_state.h"
#include "credentials/jws.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"
#include "daemon/config.h"
#include "policy/compiler.h"
#include "test_support.h"

namespace json = boost::json;
using namespace outpost;

namespace {

constexpr const char* kPolicy = R"(
version: 3
issuer: test
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: fs, name: read_file, output_sensitivity: confidential}
  - {server: fs, name: write_file}
  - {server: fs, name: list_directory}
  - {server: web, name: fetch}
agents:
  - {name: coder, tools: ["fs/*", "web/*"], clearance: confidential, credential_ttl: 5m}
rules:
  - id: read-ws
    effect: allow
    agents: [coder]
    tools: [fs/read_file]
    args: [{pointer: /path, path_prefix: [/ws]}]
    reason: "reads the workspace"
  - id: write-ws
    effect: allow
    agents: [coder]
    tools: [fs/write_file]
    args: [{pointer: /path, path_prefix: [/ws]}]
    credential_ttl: 60s
    reason: "writes the workspace"
  - id: fetch-docs
    effect: allow
    agents: [coder]
    tools: [web/fetch]
    destinations: [{host: "docs.example.org", ports: [443]}]
    reason: "documentation"
flow_rules:
  - id: no-exfil
    kind: taint
    min_sensitivity: confidential
    agents: ["*"]
    tools: ["web/*"]
    trusted: []
    reason: "no fetches after reading confidential data"
)";

// Flow rules that outlive a connection: an approval before restarts, a window limit on payments.
constexpr const char* kFlowPolicy = R"(
version: 4
issuer: test
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: approvals, name: grant}
  - {server: ops, name: restart}
  - {server: pay, name: send}
  - {server: pay, name: bulk}
agents:
  - {name: coder, tools: ["approvals/*", "ops/*", "pay/*"]}
rules:
  - {id: ask, effect: allow, agents: [coder], tools: [approvals/grant]}
  - {id: restart, effect: allow, agents: [coder], tools: [ops/restart]}
  - {id: pay, effect: allow, agents: [coder], tools: ["pay/*"]}
flow_rules:
  - {id: approved-restarts, kind: require_approval, tools: [ops/restart], approval_tool: approvals/grant}
  - {id: spend-limit, kind: window_limit, tools: [pay/send], window: 1h, max_count: 3}
  - {id: bulk-limit, kind: window_limit, tools: [pay/bulk], window: 1h, max_count: 200}
)";

std::shared_ptr<const policy::Engine> compile_engine(const char* source) {
  auto compiled = policy::compile_policy(source, "test.yaml", policy::CompileOptions{});
  REQUIRE(compiled);
  auto e = policy::Engine::build(compiled->payload);
  REQUIRE(e);
  return *e;
}

std::shared_ptr<const policy::Engine> engine() {
  static auto e = compile_engine(kPolicy);
  return e;
}

std::shared_ptr<const policy::Engine> flow_engine() {
  static auto e = compile_engine(kFlowPolicy);
  return e;
}

struct Sink : broker::DecisionSink {
  std::vector<broker::DecisionRecord> records;
  bool fail_next = false;
  Result<void> record(const broker::DecisionRecord& r) override {
    if (fail_next) return fail(make_error_code(errc::io), "disk full");
    records.push_back(r);
    return ok();
  }
};

broker::McpSession session(Sink& sink, const std::string& server = "fs", broker::CredentialMinter minter = nullptr,
                           policy::Mode mode = policy::Mode::normal) {
  return broker::McpSession({"coder", "build", server, 4096},
                            [mode] { return broker::PolicyView{engine(), mode, 4102444800}; }, &sink, std::move(minter),
                            [] { return int64_t{1800000000}; });
}

// One connection of `coder` to `server`, deciding with the agent's `state`. No test macros in
// here or in goes_out(): the concurrency test drives sessions from threads of its own.
broker::McpSession connection(broker::DecisionSink& sink, std::shared_ptr<broker::SessionState> state,
                              const std::string& server, std::shared_ptr<const policy::Engine> e) {
  return broker::McpSession({"coder", "build", server, 4096, std::move(state)},
                            [e] { return broker::PolicyView{e, policy::Mode::normal, 4102444800}; }, &sink, nullptr,
                            [] { return int64_t{1800000000}; });
}

std::string call_line(std::string_view tool, std::string_view args) {
  return R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":")" + std::string(tool) +
         R"(","arguments":)" + std::string(args) + "}}";
}

// Sends one tools/call; true when it went on to the server.
bool goes_out(broker::McpSession& s, std::string_view tool, std::string_view args = "{}") {
  std::string to_server, to_client;
  s.from_client(call_line(tool, args), to_server, to_client);
  return !to_server.empty();
}

std::string text_of(const json::value& v) { return v.is_string() ? std::string(v.get_string()) : std::string(); }

std::string args_hash(std::string_view args) {
  auto h = credentials::args_sha256(json::parse(args));
  REQUIRE(h);
  return *h;
}

json::value only_line(const std::string& out) {
  REQUIRE(!out.empty());
  REQUIRE(out.back() == '\n');
  REQUIRE(out.find('\n') == out.size() - 1);
  return json::parse(out);
}

}  // namespace

TEST_CASE("broker forwards an allowed call byte for byte and records it", "[broker]") {
  Sink sink;
  auto s = session(sink);
  // Odd field order and spacing: the server must get exactly these bytes.
  const std::string line =
      R"({"params": {"arguments": {"path": "/ws/a.txt"}, "name": "read_file"}, "id": 7, "method": "tools/call", "jsonrpc": "2.0"})";
  std::string to_server, to_client;
  s.from_client(line, to_server, to_client);
  CHECK(to_server == line + "\n");
  CHECK(to_client.empty());
  REQUIRE(sink.records.size() == 1);
  CHECK(sink.records[0].allow);
  CHECK(sink.records[0].rules == std::vector<std::string>{"read-ws"});
  CHECK(sink.records[0].tool == "read_file");
  CHECK(!sink.records[0].args_sha256.empty());
}

TEST_CASE("broker answers a denied call itself with the reason", "[broker]") {
  Sink sink;
  auto s = session(sink);
  std::string to_server, to_client;
  s.from_client(R"({"jsonrpc":"2.0","id":"x1","method":"tools/call","params":{"name":"write_file","arguments":{"path":"/etc/passwd","content":"x"}}})",
                to_server, to_client);
  CHECK(to_server.empty());
  json::value v = only_line(to_client);
  CHECK(v.at("id") == "x1");
  CHECK(v.at("result").at("isError") == true);
  std::string text(v.at("result").at("content").at(0).at("text").as_string());
  CHECK(text.find("outpost denied this call") != std::string::npos);
  CHECK((text.find("no_rule") != std::string::npos || text.find("no rule") != std::string::npos));
  REQUIRE(sink.records.size() == 1);
  CHECK_FALSE(sink.records[0].allow);
}

TEST_CASE("broker path checks resist traversal", "[broker]") {
  Sink sink;
  auto s = session(sink);
  std::string to_server, to_client;
  s.from_client(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/ws/../etc/shadow"}}})",
                to_server, to_client);
  CHECK(to_server.empty());
  CHECK(only_line(to_client).at("result").at("isError") == true);
}

TEST_CASE("broker filters tools/list to what policy could allow", "[broker]") {
  Sink sink;
  auto s = session(sink);
  std::string to_server, to_client;
  s.from_client(R"({"jsonrpc":"2.0","id":2,"method":"tools/list"})", to_server, to_client);
  CHECK(to_server == "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n");
  // list_directory is declared and granted but no rule allows it; delete_file is unknown.
  s.from_server(R"({"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"read_file","inputSchema":{}},{"name":"list_directory"},{"name":"write_file"},{"name":"delete_file"}]}})",
                to_client);
  json::value v = only_line(to_client);
  std::vector<std::string> names;
  for (const auto& t : v.at("result").at("tools").as_array()) names.emplace_back(t.at("name").as_string());
  CHECK(names == std::vector<std::string>{"read_file", "write_file"});
  CHECK(v.at("result").at("tools").at(0).as_object().contains("inputSchema"));

  // A server->client request with the same id is not mistaken for the list's response.
  to_client.clear();
  s.from_client(R"({"jsonrpc":"2.0","id":3,"method":"tools/list"})", to_server, to_client);
  const std::string roots = R"({"jsonrpc":"2.0","id":3,"method":"roots/list"})";
  s.from_server(roots, to_client);
  CHECK(to_client == roots + "\n");
}

TEST_CASE("broker passes notifications server requests and responses through unchanged", "[broker]") {
  Sink sink;
  auto s = session(sink);
  std::string to_server, to_client;
  const std::string progress = R"({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":3,"total":10}})";
  s.from_server(progress, to_client);
  CHECK(to_client == progress + "\n");
  const std::string reply = R"({"jsonrpc":"2.0","id":0,"result":{"roots":[{"uri":"file:///ws"}]}})";
  s.from_client(reply, to_server, to_client);
  const std::string cancel = R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4}})";
  s.from_client(cancel, to_server, to_client);
  CHECK(to_server == reply + "\n" + cancel + "\n");
}

TEST_CASE("broker answers malformed lines with JSON-RPC errors", "[broker]") {
  Sink sink;
  auto s = session(sink);
  std::string to_server, to_client;
  s.from_client("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":", to_server, to_client);
  CHECK(only_line(to_client).at("error").at("code") == -32700);
  to_client.clear();
  s.from_client("42", to_server, to_client);
  CHECK(only_line(to_client).at("error").at("code") == -32600);
  to_client.clear();
  s.from_client(R"([{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"read_file"}}])", to_server, to_client);
  CHECK(only_line(to_client).at(0).at("id") == 5);
  to_client.clear();
  s.from_client(R"({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"arguments":[]}})", to_server, to_client);
  CHECK(only_line(to_client).at("error").at("code") == -32602);
  CHECK(to_server.empty());
  CHECK(s.stats().parse_errors == 1);
}

TEST_CASE("broker taint flow denies a fetch after confidential data", "[broker]") {
  Sink sink;
  auto s = session(sink, "web");
  std::string to_server, to_client;
  const std::string fetch = R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fetch","arguments":{"url":"https://docs.example.org/x"}}})";
  s.from_client(fetch, to_server, to_client);
  CHECK(to_server == fetch + "\n");
  // Same agent, a session that has read confidential data (the label rides in _meta).
  to_server.clear();
  s.from_client(R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fetch","arguments":{"url":"https://evil.example.com/"},"_meta":{"outpost/sensitivity":"confidential"}}})",
                to_server, to_client);
  CHECK(to_server.empty());
  CHECK(only_line(to_client).at("result").at("isError") == true);
}

TEST_CASE("broker attaches a minted credential and fails closed without one", "[broker]") {
  Sink sink;
  int64_t seen_ttl = 0;
  auto s = session(sink, "fs", [&](const broker::DecisionRecord& r, int64_t ttl) -> Result<std::string> {
    seen_ttl = ttl;
    return "token-for-" + r.tool;
  });
  std::string to_server, to_client;
  s.from_client(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/ws/x","content":"hi"}}})",
                to_server, to_client);
  json::value v = only_line(to_server);
  CHECK(v.at("params").at("_meta").at("outpost/credential") == "token-for-write_file");
  CHECK(seen_ttl == 60);  // the rule's TTL, under the agent's and the bundle's
  CHECK(sink.records.back().credential);

  Sink sink2;
  auto s2 = session(sink2, "fs", [](const broker::DecisionRecord&, int64_t) -> Result<std::string> {
    return fail(make_error_code(errc::tpm_unavailable), "TPM gone");
  });
  to_server.clear();
  to_client.clear();
  s2.from_client(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/ws/x","content":"hi"}}})",
                 to_server, to_client);
  CHECK(to_server.empty());
  CHECK(only_line(to_client).at("result").at("isError") == true);
}

TEST_CASE("broker denies an allowed call it cannot record", "[broker]") {
  Sink sink;
  sink.fail_next = true;
  auto s = session(sink);
  std::string to_server, to_client;
  s.from_client(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/ws/a"}}})",
                to_server, to_client);
  CHECK(to_server.empty());
  std::string text(only_line(to_client).at("result").at("content").at(0).at("text").as_string());
  CHECK(text.find("could not be recorded") != std::string::npos);
}

TEST_CASE("broker in deny-all mode denies and lists nothing", "[broker]") {
  Sink sink;
  auto s = session(sink, "fs", nullptr, policy::Mode::deny_all);
  std::string to_server, to_client;
  s.from_client(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/ws/a"}}})",
                to_server, to_client);
  CHECK(to_server.empty());
  to_client.clear();
  s.from_client(R"({"jsonrpc":"2.0","id":2,"method":"tools/list"})", to_server, to_client);
  s.from_server(R"({"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"read_file"}]}})", to_client);
  CHECK(only_line(to_client).at("result").at("tools").as_array().empty());
}

TEST_CASE("broker url destinations", "[broker]") {
  std::string host;
  uint16_t port = 0;
  CHECK(broker::parse_url_destination("https://Docs.Example.org/a?b", host, port));
  CHECK(host == "docs.example.org");
  CHECK(port == 443);
  CHECK(broker::parse_url_destination("http://user:pw@[::1]:8080/", host, port));
  CHECK(host == "::1");
  CHECK(port == 8080);
  CHECK_FALSE(broker::parse_url_destination("no-scheme", host, port));
  CHECK_FALSE(broker::parse_url_destination("https://h:99999/", host, port));
}

// The relay over real pipes: a `cat` server echoes what it is sent, so an allowed call comes
// back as itself; a denied one is answered by the broker; a 10 MiB line passes whole; EOF from
// the client reaches the server, which exits, which ends the relay.
TEST_CASE("broker relay over pipes with a real child process", "[broker]") {
  int c2b[2], b2c[2], b2s[2], s2b[2];
  REQUIRE(::pipe2(c2b, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(b2c, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(b2s, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(s2b, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(b2s[0], 0);
    ::dup2(s2b[1], 1);
    ::execl("/bin/cat", "cat", nullptr);
    ::_exit(127);
  }
  ::close(b2s[0]);
  ::close(s2b[1]);
  Sink sink;
  auto s = session(sink);
  broker::RelayFds fds{c2b[0], b2c[1], b2s[1], s2b[0], -1, -1};
  broker::RelayEnd end{};
  std::thread relay([&] { end = broker::run_relay(fds, s, 16u << 20); });

  const std::string allowed = R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/ws/a"}}})";
  const std::string denied = R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/etc"}}})";
  std::string big = R"({"jsonrpc":"2.0","method":"notifications/message","params":{"data":")" + std::string(10u << 20, 'x') + "\"}}";
  std::string input = allowed + "\n" + denied + "\n" + big + "\n" + "not json\n";
  std::thread writer([&] {
    size_t off = 0;
    while (off < input.size()) {
      ssize_t n = ::write(c2b[1], input.data() + off, input.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::close(c2b[1]);
  });
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(b2c[0], buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (std::count(out.begin(), out.end(), '\n') == 4) break;
  }
  writer.join();
  relay.join();
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(end == broker::RelayEnd::finished);
  // Order: the denial and the parse error come straight back; the echoes come through cat.
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) lines.push_back(out.substr(start, nl - start));
  REQUIRE(lines.size() == 4);
  CHECK(std::count(lines.begin(), lines.end(), allowed) == 1);
  CHECK(std::count(lines.begin(), lines.end(), big) == 1);
  int denials = 0, parse_errors = 0;
  for (const auto& l : lines) {
    if (l == allowed || l == big) continue;
    json::value v = json::parse(l);
    if (v.as_object().contains("result")) ++denials;
    if (v.as_object().contains("error") && v.at("error").at("code") == -32700) ++parse_errors;
  }
  CHECK(denials == 1);
  CHECK(parse_errors == 1);
  ::close(c2b[0]);
  ::close(b2c[0]);
  ::close(b2c[1]);
  ::close(s2b[0]);
}

TEST_CASE("the broker's decision sink writes chained audit records", "[broker]") {
  outpost::testing::TempDir dir;
  auto log = broker::AuditDecisionLog::open(dir / "audit" / "log", offline_cache::AuditLogOptions{});
  REQUIRE(log);
  broker::DecisionRecord r;
  r.time = 1800000000;
  r.agent = "coder";
  r.tool = "read_file";
  r.allow = true;
  r.rules = {"read-ws"};
  REQUIRE((*log)->record(r));
  CHECK((*log)->log().durable_seq() == 1);  // a decision is durable before record() returns
  r.allow = false;
  REQUIRE((*log)->record(r));
  CHECK((*log)->take_denies() == 1);
  CHECK((*log)->take_denies() == 0);
  REQUIRE((*log)->record_event("agent_start", {{"agent", "coder"}}));
  REQUIRE((*log)->sync());
  std::vector<offline_cache::AuditRecord> records;
  REQUIRE(offline_cache::read_audit_log(dir / "audit" / "log", 0, [&](const offline_cache::AuditRecord& rec) {
    records.push_back(rec);
    return true;
  }));
  REQUIRE(records.size() == 3);
  CHECK(records[0].kind == offline_cache::RecordKind::decision);
  CHECK(records[0].agent == "coder");
  CHECK(records[0].time_ms == 1800000000000);
  auto first = json::parse(records[0].detail);
  CHECK(first.at("kind") == "decision");
  CHECK(first.at("rules").at(0) == "read-ws");
  CHECK(records[2].kind == offline_cache::RecordKind::lifecycle);
  CHECK(records[2].event == "agent_start");
  CHECK(records[2].agent == "coder");
}

TEST_CASE("outpostd's config: audit.durable_decisions, strictly", "[broker]") {
  auto d = daemon::parse_daemon_config("board: sim\n", "t.yaml");
  REQUIRE(d);
  CHECK(d->durable_decisions);  // the default: fdatasync'ed before the call goes on
  auto q = daemon::parse_daemon_config("board: sim\naudit: {durable_decisions: false}\n", "t.yaml");
  REQUIRE(q);
  CHECK_FALSE(q->durable_decisions);
  auto bad = daemon::parse_daemon_config("audit: {durable_decisions: maybe}\n", "t.yaml");
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message(), Catch::Contains("t.yaml:1") && Catch::Contains("true or false"));
  auto typo = daemon::parse_daemon_config("audit: {durable: false}\n", "t.yaml");
  REQUIRE_FALSE(typo);
  CHECK_THAT(typo.error().message(), Catch::Contains("durable"));
}

// ---- the agent's state across connections (SessionState) ----

TEST_CASE("broker taint follows the agent to a new connection and to another server", "[broker]") {
  auto state = std::make_shared<broker::SessionState>();
  Sink sink;
  {
    auto fs = connection(sink, state, "fs", engine());
    CHECK(goes_out(fs, "read_file", R"({"path":"/ws/secret.txt"})"));
  }  // that connection is gone; what it read is not forgotten
  CHECK(state->history_size() == 1);
  auto web = connection(sink, state, "web", engine());
  CHECK_FALSE(goes_out(web, "fetch", R"({"url":"https://docs.example.org/x"})"));
  CHECK(sink.records.back().verdict == "flow_denied");
  CHECK(sink.records.back().rules == std::vector<std::string>{"no-exfil"});

  // Another launch of the agent has a state of its own and starts clean.
  auto other = connection(sink, std::make_shared<broker::SessionState>(), "web", engine());
  CHECK(goes_out(other, "fetch", R"({"url":"https://docs.example.org/x"})"));
  // So does a session given no state at all (one connection, as before).
  auto alone = session(sink, "web");
  CHECK(goes_out(alone, "fetch", R"({"url":"https://docs.example.org/x"})"));
}

namespace {

// A payment tool the agent may call; `capped` adds a cap of 100 on /amount an hour.
std::shared_ptr<const policy::Engine> pay_engine(int version, bool capped) {
  std::string source = "version: " + std::to_string(version) + R"(
issuer: test
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: pay, name: send}
agents:
  - {name: coder, tools: ["pay/*"]}
rules:
  - {id: pay, effect: allow, agents: [coder], tools: ["pay/*"]}
)";
  if (capped) {
    source += "flow_rules:\n  - {id: spend, kind: window_limit, tools: [pay/send], window: 1h, max_total: 100, "
              "total_pointer: /amount}\n";
  }
  return compile_engine(source.c_str());
}

}  // namespace

TEST_CASE("broker counts calls made under an earlier bundle in a new spending limit", "[broker]") {
  // The same tool under two bundles: the first sets no total, the second caps /amount at 100
  // an hour. A cap pushed mid-session must count what the agent spent just before it arrived,
  // so the history keeps calls' numbers whatever the bundle in force.
  auto before = pay_engine(5, false);
  auto capped = pay_engine(6, true);
  auto state = std::make_shared<broker::SessionState>();
  Sink sink;
  {
    auto pay = connection(sink, state, "pay", before);
    CHECK(goes_out(pay, "send", R"({"amount":60})"));
  }
  auto pay = connection(sink, state, "pay", capped);
  CHECK(goes_out(pay, "send", R"({"amount":40})"));
  CHECK_FALSE(goes_out(pay, "send", R"({"amount":1})"));
  CHECK(sink.records.back().rules == std::vector<std::string>{"spend"});
}

TEST_CASE("broker history keeps the numbers of a call's arguments, and padding hides none", "[broker]") {
  auto state = std::make_shared<broker::SessionState>();
  {
    auto locked = state->lock();
    const json::value args = json::parse(
        R"({"amount":40,"memo":")" + std::string(4096, 'x') +
        R"(","lines":[{"n":1},"skip",{"n":2,"sku":"a"}],"flag":true,"deep":{"a":{"b":7}},"none":{"s":"t"}})");
    locked.remember("pay", "send", 100, 0, &args);
    const json::value words = json::parse(R"({"message":"hello"})");
    locked.remember("pay", "send", 101, 0, &words);
    locked.remember("pay", "send", 102, 0, nullptr);
    json::object many;
    for (int i = 0; i < 65; ++i) many["k" + std::to_string(i)] = i;
    const json::value crowded = many;
    locked.remember("pay", "send", 103, 0, &crowded);
    auto h = locked.history();
    REQUIRE(h.size() == 4);
    REQUIRE(h[0].args != nullptr);
    CHECK(*h[0].args == json::parse(R"({"amount":40,"lines":[{"n":1},null,{"n":2}],"deep":{"a":{"b":7}}})"));
    CHECK_FALSE(h[0].args_incomplete);
    CHECK(h[1].args == nullptr);  // no numbers: nothing kept
    CHECK_FALSE(h[1].args_incomplete);
    CHECK(h[2].args == nullptr);
    CHECK(h[3].args_incomplete);  // 65 numbers: 64 kept, and the call marked
    CHECK(h[3].args->as_object().size() == 64);
    CHECK(h[0].server == "pay");
    CHECK(h[3].tool == "send");
  }

  // Through the broker: a 2 KiB memo beside the amount once made the call's arguments too large
  // to keep, and the amount escaped the cap. Now it counts.
  auto capped = pay_engine(6, true);
  Sink sink;
  auto fresh = std::make_shared<broker::SessionState>();
  auto pay = connection(sink, fresh, "pay", capped);
  CHECK(goes_out(pay, "send", R"({"amount":90,"memo":")" + std::string(2048, 'm') + R"("})"));
  CHECK_FALSE(goes_out(pay, "send", R"({"amount":20})"));
  CHECK(sink.records.back().rules == std::vector<std::string>{"spend"});
  // A call whose amount came after 64 other numbers was not fully kept: the window's total is
  // unknown, and the next call is denied.
  std::string big = "{";
  for (int i = 0; i < 70; ++i) big += "\"n" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  big += R"("amount":1})";
  auto other = std::make_shared<broker::SessionState>();
  auto pay2 = connection(sink, other, "pay", capped);
  CHECK(goes_out(pay2, "send", big));
  CHECK_FALSE(goes_out(pay2, "send", R"({"amount":1})"));
  CHECK(sink.records.back().verdict == "flow_denied");
  // When its amount was among the numbers kept, the total is exact and the call goes on.
  std::string early = R"({"amount":1)";
  for (int i = 0; i < 70; ++i) early += ",\"n" + std::to_string(i) + "\":" + std::to_string(i);
  early += "}";
  auto third = std::make_shared<broker::SessionState>();
  auto pay3 = connection(sink, third, "pay", capped);
  CHECK(goes_out(pay3, "send", early));
  CHECK(goes_out(pay3, "send", R"({"amount":1})"));
  // A document nested past 16 levels with no number down there loses nothing.
  std::string deep = R"({"amount":1,"doc":)";
  for (int i = 0; i < 20; ++i) deep += R"({"a":)";
  deep += R"("leaf")";
  for (int i = 0; i < 20; ++i) deep += "}";
  deep += "}";
  auto fourth = std::make_shared<broker::SessionState>();
  {
    auto locked = fourth->lock();
    const json::value v = json::parse(deep);
    locked.remember("pay", "send", 1, 0, &v);
    CHECK_FALSE(locked.history()[0].args_incomplete);
    CHECK(*locked.history()[0].args == json::parse(R"({"amount":1})"));
  }
}

TEST_CASE("broker history names stay valid as old calls are dropped", "[broker]") {
  // Names are held once per state, counted by the events naming them: dropping the last call
  // of a tool frees its name, never one a kept call still reads (AddressSanitizer checks).
  auto state = std::make_shared<broker::SessionState>(broker::SessionState::Limits{.max_history = 3});
  auto locked = state->lock();
  locked.remember("vault", "read", 1, 2, nullptr);  // the most sensitive: kept
  for (int i = 0; i < 20; ++i) locked.remember("srv" + std::to_string(i % 4), "tool" + std::to_string(i), 10 + i, 0, nullptr);
  auto h = locked.history();
  REQUIRE(h.size() == 3);
  CHECK(h[0].server == "vault");
  CHECK(h[0].tool == "read");
  CHECK(h[1].server == "srv2");
  CHECK(h[1].tool == "tool18");
  CHECK(h[2].server == "srv3");
  CHECK(h[2].tool == "tool19");
  locked.unlock();

  // With no sensitive call, the oldest goes first: names shared with kept calls stay.
  auto plain = std::make_shared<broker::SessionState>(broker::SessionState::Limits{.max_history = 3});
  auto l2 = plain->lock();
  for (int i = 0; i < 10; ++i) l2.remember("srv", "tool" + std::to_string(i % 2), i, 0, nullptr);
  l2.remember("other", "tool0", 10, 0, nullptr);
  auto h2 = l2.history();
  REQUIRE(h2.size() == 3);
  CHECK(h2[0].server == "srv");
  CHECK(h2[0].tool == "tool0");
  CHECK(h2[1].tool == "tool1");
  CHECK(h2[2].server == "other");
  CHECK(h2[2].tool == "tool0");
}

TEST_CASE("broker keeps the most sensitive call when the shared history is full", "[broker]") {
  auto state = std::make_shared<broker::SessionState>(broker::SessionState::Limits{.max_history = 4});
  Sink sink;
  auto fs = connection(sink, state, "fs", engine());
  REQUIRE(goes_out(fs, "read_file", R"({"path":"/ws/secret.txt"})"));
  auto fs2 = connection(sink, state, "fs", engine());
  for (int i = 0; i < 10; ++i) REQUIRE(goes_out(fs2, "write_file", R"({"path":"/ws/out","content":"x"})"));
  CHECK(state->history_size() == 4);
  auto web = connection(sink, state, "web", engine());
  CHECK_FALSE(goes_out(web, "fetch", R"({"url":"https://docs.example.org/x"})"));
}

TEST_CASE("broker approvals and window limits survive a reconnect", "[broker]") {
  auto state = std::make_shared<broker::SessionState>();
  Sink sink;
  {
    auto ops = connection(sink, state, "ops", flow_engine());
    CHECK_FALSE(goes_out(ops, "restart"));  // nothing approved it yet
    CHECK(sink.records.back().rules == std::vector<std::string>{"approved-restarts"});
    auto approvals = connection(sink, state, "approvals", flow_engine());
    CHECK(goes_out(approvals, "grant"));
  }
  auto ops = connection(sink, state, "ops", flow_engine());  // the agent reconnects
  CHECK(goes_out(ops, "restart"));

  {
    auto pay = connection(sink, state, "pay", flow_engine());
    CHECK(goes_out(pay, "send", R"({"amount":5})"));
    CHECK(goes_out(pay, "send", R"({"amount":5})"));
  }
  auto pay = connection(sink, state, "pay", flow_engine());
  CHECK(goes_out(pay, "send", R"({"amount":5})"));        // the third payment of the hour
  CHECK_FALSE(goes_out(pay, "send", R"({"amount":5})"));  // a new connection does not reset the count
  CHECK(sink.records.back().verdict == "flow_denied");
  CHECK(sink.records.back().rules == std::vector<std::string>{"spend-limit"});
}

// ---- the deny budget ----

TEST_CASE("broker records a deny flood up to its burst and coalesces the rest", "[broker]") {
  const auto t0 = std::chrono::steady_clock::time_point{};
  auto state = std::make_shared<broker::SessionState>(broker::SessionState::Limits{}, [t0] { return t0; });
  REQUIRE(state->limits().deny_burst == 100);
  Sink sink;
  auto s = connection(sink, state, "fs", engine());
  const std::string args = R"({"path":"/etc/passwd","content":"x"})";
  std::string to_server, to_client;
  for (int i = 0; i < 1000; ++i) s.from_client(call_line("write_file", args), to_server, to_client);

  CHECK(to_server.empty());
  // The client got every answer, the same whether its record was written or coalesced.
  size_t answers = 0, with_reason = 0;
  for (size_t start = 0, nl; (nl = to_client.find('\n', start)) != std::string::npos; start = nl + 1) {
    json::value v = json::parse(to_client.substr(start, nl - start));
    ++answers;
    if (v.at("result").at("isError") == true &&
        text_of(v.at("result").at("content").at(0).at("text")) == "outpost denied this call: " + sink.records[0].reason) {
      ++with_reason;
    }
  }
  CHECK(answers == 1000);
  CHECK(with_reason == 1000);
  CHECK(s.stats().calls_denied == 1000);

  REQUIRE(sink.records.size() == 100);  // the burst, one record each
  CHECK(state->denies_recorded() == 100);
  CHECK(state->denies_coalesced() == 900);
  auto coalesced = state->take_coalesced();
  REQUIRE(coalesced.size() == 1);  // identical denials: one entry
  const broker::CoalescedDenials& c = coalesced[0];
  CHECK(c.count == 900);
  CHECK(c.server == "fs");
  CHECK(c.tool == "write_file");
  CHECK(c.verdict == "no_rule_allows");
  CHECK(c.rules == sink.records[0].rules);
  CHECK(c.reason == sink.records[0].reason);
  CHECK(c.first_time == 1800000000);
  CHECK(c.last_time == 1800000000);
  CHECK(c.first_args_sha256 == args_hash(args));
  CHECK(c.last_args_sha256 == args_hash(args));
  CHECK_FALSE(c.overflow);
  CHECK(state->take_coalesced().empty());  // taken means gone
}

TEST_CASE("broker coalesces different denials apart and refills its deny budget with time", "[broker]") {
  auto now = std::chrono::steady_clock::time_point{};
  auto state = std::make_shared<broker::SessionState>(
      broker::SessionState::Limits{.deny_rate_per_s = 20, .deny_burst = 10}, [&now] { return now; });
  Sink sink;
  auto s = connection(sink, state, "fs", engine());
  for (int i = 0; i < 10; ++i) CHECK_FALSE(goes_out(s, "write_file", R"({"path":"/etc/passwd"})"));
  CHECK(sink.records.size() == 10);

  // Over the budget: two kinds of denial, one of them with different arguments.
  for (int i = 0; i < 5; ++i) CHECK_FALSE(goes_out(s, "write_file", R"({"path":"/etc/shadow"})"));
  for (int i = 0; i < 7; ++i) CHECK_FALSE(goes_out(s, "read_file", R"({"path":"/etc/hosts"})"));
  CHECK_FALSE(goes_out(s, "write_file", R"({"path":"/etc/hosts"})"));
  CHECK(sink.records.size() == 10);

  // Allowed calls neither spend nor wait for the deny budget.
  CHECK(goes_out(s, "read_file", R"({"path":"/ws/a"})"));
  CHECK(sink.records.size() == 11);
  CHECK(sink.records.back().allow);

  auto coalesced = state->take_coalesced();
  REQUIRE(coalesced.size() == 2);
  CHECK(coalesced[0].tool == "write_file");
  CHECK(coalesced[0].count == 6);
  CHECK(coalesced[0].first_args_sha256 == args_hash(R"({"path":"/etc/shadow"})"));
  CHECK(coalesced[0].last_args_sha256 == args_hash(R"({"path":"/etc/hosts"})"));
  CHECK(coalesced[1].tool == "read_file");
  CHECK(coalesced[1].count == 7);
  CHECK(coalesced[0].count + coalesced[1].count == state->denies_coalesced());

  // Half a second at 20 per second: ten more records of their own, then coalescing again.
  now += std::chrono::milliseconds(500);
  for (int i = 0; i < 11; ++i) CHECK_FALSE(goes_out(s, "write_file", R"({"path":"/etc/passwd"})"));
  CHECK(sink.records.size() == 21);
  CHECK(state->denies_recorded() == 20);
  auto later = state->take_coalesced();
  REQUIRE(later.size() == 1);
  CHECK(later[0].count == 1);
}

TEST_CASE("broker counts denials past its coalescing table in one overflow entry", "[broker]") {
  const auto t0 = std::chrono::steady_clock::time_point{};
  auto state = std::make_shared<broker::SessionState>(
      broker::SessionState::Limits{.deny_burst = 0, .max_coalesced_kinds = 3}, [t0] { return t0; });
  Sink sink;
  auto s = connection(sink, state, "fs", engine());
  // Unknown tools named by the agent: every one a kind of its own.
  for (int i = 0; i < 10; ++i) CHECK_FALSE(goes_out(s, "made_up_" + std::to_string(i)));
  CHECK(sink.records.empty());
  auto coalesced = state->take_coalesced();
  REQUIRE(coalesced.size() == 4);
  CHECK(coalesced[0].tool == "made_up_0");
  CHECK(coalesced[3].overflow);
  CHECK(coalesced[3].tool == "*");
  CHECK(coalesced[3].count == 7);
}

TEST_CASE("coalesced denials become one audit record that counts as denies", "[broker]") {
  outpost::testing::TempDir dir;
  auto log = broker::AuditDecisionLog::open(dir / "audit" / "log", offline_cache::AuditLogOptions{});
  REQUIRE(log);
  const auto t0 = std::chrono::steady_clock::time_point{};
  auto state = std::make_shared<broker::SessionState>(broker::SessionState::Limits{.deny_burst = 5}, [t0] { return t0; });
  auto s = connection(**log, state, "fs", engine());
  for (int i = 0; i < 50; ++i) CHECK_FALSE(goes_out(s, "write_file", R"({"path":"/etc/passwd"})"));
  CHECK((*log)->records() == 5);
  for (const auto& c : state->take_coalesced()) REQUIRE((*log)->record_coalesced("coder", "build", c));
  CHECK((*log)->take_denies() == 50);  // the checkpoint-on-deny still sees every one
  REQUIRE((*log)->sync());

  std::vector<offline_cache::AuditRecord> records;
  REQUIRE(offline_cache::read_audit_log(dir / "audit" / "log", 0, [&](const offline_cache::AuditRecord& rec) {
    records.push_back(rec);
    return true;
  }));
  REQUIRE(records.size() == 6);
  const auto& r = records[5];
  CHECK(r.kind == offline_cache::RecordKind::decision);
  CHECK(r.event == "denials_coalesced");
  CHECK(r.agent == "coder");
  CHECK(r.time_ms == 1800000000000);
  auto d = json::parse(r.detail);
  CHECK(d.at("kind") == "denials_coalesced");
  CHECK(d.at("agent") == "coder");
  CHECK(d.at("task") == "build");
  CHECK(d.at("server") == "fs");
  CHECK(d.at("tool") == "write_file");
  CHECK(d.at("verdict") == "no_rule_allows");
  CHECK(d.at("rules").as_array().empty());
  CHECK(d.at("count") == 45);
  CHECK(text_of(d.at("first")) == format_rfc3339_utc(1800000000));
  CHECK(text_of(d.at("last")) == format_rfc3339_utc(1800000000));
  CHECK(text_of(d.at("first_args_sha256")) == args_hash(R"({"path":"/etc/passwd"})"));
  CHECK(text_of(d.at("last_args_sha256")) == args_hash(R"({"path":"/etc/passwd"})"));
  CHECK(text_of(d.at("reason")).find("no rule allows") != std::string::npos);
  // Same time format as the decision records beside it.
  CHECK(json::parse(records[0].detail).at("time") == d.at("time"));
}

TEST_CASE("queued decisions let a call go out at once and still reach the disk unasked", "[broker]") {
  outpost::testing::TempDir dir;
  auto log = broker::AuditDecisionLog::open(dir / "audit" / "log", offline_cache::AuditLogOptions{}, false);
  REQUIRE(log);
  auto s = connection(**log, std::make_shared<broker::SessionState>(), "fs", engine());
  CHECK(goes_out(s, "read_file", R"({"path":"/ws/a.txt"})"));  // no release() needed: nothing held
  CHECK_FALSE(s.holding());
  CHECK((*log)->records() == 1);
  // Nobody waits and nobody woke the committer: its interval writes the record. The bound is
  // only so that a committer that never writes fails the test instead of hanging it.
  size_t seen = 0;
  for (int i = 0; i < 500 && seen == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = 0;
    REQUIRE(offline_cache::read_audit_log(dir / "audit" / "log", 0, [&](const offline_cache::AuditRecord&) {
      ++seen;
      return true;
    }));
  }
  CHECK(seen == 1);
}

TEST_CASE("broker connections of one agent on two threads share its state without a race", "[broker]") {
  auto e = flow_engine();
  const auto t0 = std::chrono::steady_clock::time_point{};
  auto state = std::make_shared<broker::SessionState>(broker::SessionState::Limits{.deny_burst = 10}, [t0] { return t0; });
  constexpr int kCalls = 300;
  constexpr int kLimit = 200;  // bulk-limit: both connections together get this many
  Sink sinks[2];
  int allowed[2] = {0, 0};
  std::atomic<int> ready{0};
  std::atomic<bool> done{false};
  uint64_t drained = 0;
  // The daemon's periodic drain, meanwhile.
  std::thread drainer([&] {
    while (!done.load()) {
      for (const auto& c : state->take_coalesced()) drained += c.count;
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> connections;
  for (int t = 0; t < 2; ++t) {
    connections.emplace_back([&, t] {
      auto pay = connection(sinks[t], state, "pay", e);
      auto approvals = connection(sinks[t], state, "approvals", e);
      ready.fetch_add(1);
      while (ready.load() < 2) std::this_thread::yield();  // start together, to overlap
      for (int i = 0; i < kCalls; ++i) {
        if (goes_out(pay, "bulk", R"({"amount":1})")) ++allowed[t];
        if (i % 10 == 0) (void)goes_out(approvals, "grant");
      }
    });
  }
  for (auto& c : connections) c.join();
  done = true;
  drainer.join();
  for (const auto& c : state->take_coalesced()) drained += c.count;

  INFO("allowed per connection: " << allowed[0] << " and " << allowed[1]);
  CHECK(allowed[0] + allowed[1] == kLimit);  // the window limit held across both connections
  CHECK(state->history_size() == kLimit + 2 * (kCalls / 10));
  CHECK(state->denies_recorded() == 10);
  CHECK(state->denies_coalesced() == 2 * kCalls - kLimit - 10);
  CHECK(drained == state->denies_coalesced());
  CHECK(sinks[0].records.size() + sinks[1].records.size() == kLimit + 2 * (kCalls / 10) + 10);
}

TEST_CASE("pipelined allowed calls wait for one commit of their records before they go out", "[broker]") {
  outpost::testing::TempDir dir;
  auto log = broker::AuditDecisionLog::open(dir / "audit" / "log", offline_cache::AuditLogOptions{});
  REQUIRE(log);
  broker::McpSession s({"coder", "build", "fs", 4096}, [] { return broker::PolicyView{engine(), policy::Mode::normal, 4102444800}; },
                       log->get(), nullptr, [] { return int64_t{1800000000}; });
  std::string to_server, to_client, expected;
  const uint64_t commits_before = (*log)->log().commits();
  for (int i = 0; i < 16; ++i) {
    std::string line = R"({"jsonrpc":"2.0","id":)" + std::to_string(i) +
                       R"(,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/ws/a"}}})";
    s.from_client(line, to_server, to_client);
    expected += line + "\n";
    if (i == 7) {  // a notification between calls keeps its place
      std::string note = R"({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}})";
      s.from_client(note, to_server, to_client);
      expected += note + "\n";
    }
  }
  CHECK(to_server.empty());  // nothing reaches the server before the commit
  CHECK(s.holding());
  s.release(to_server, to_client);
  CHECK_FALSE(s.holding());
  CHECK(to_server == expected);
  CHECK(to_client.empty());
  CHECK((*log)->log().durable_seq() == (*log)->log().last_seq());
  // One commit for the batch; the committer may have written part of it on its own first.
  CHECK((*log)->log().commits() - commits_before <= 2);
  CHECK(s.stats().calls_allowed == 16);
}

TEST_CASE("held calls whose commit fails are answered as denied; the other held lines still go", "[broker]") {
  struct StagingSink : Sink {
    uint64_t next = 0;
    bool commit_fails = true;
    Result<uint64_t> stage(const broker::DecisionRecord& r) override {
      records.push_back(r);
      return ++next;
    }
    Result<void> commit(uint64_t) override {
      if (commit_fails) return fail(make_error_code(errc::io), "write audit: No space left on device");
      return ok();
    }
  } sink;
  auto s = session(sink);
  std::string to_server, to_client;
  s.from_client(call_line("read_file", R"({"path":"/ws/a"})"), to_server, to_client);
  std::string note = R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9}})";
  s.from_client(note, to_server, to_client);
  s.from_client(R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/ws/b"}}})",
                to_server, to_client);
  CHECK(to_server.empty());
  s.release(to_server, to_client);
  CHECK(to_server == note + "\n");
  std::istringstream answers(to_client);
  std::string line;
  std::vector<json::value> replies;
  while (std::getline(answers, line)) replies.push_back(json::parse(line));
  REQUIRE(replies.size() == 2);
  CHECK(replies[0].at("id") == 1);
  CHECK(replies[1].at("id") == 2);
  for (const auto& r : replies) {
    CHECK(r.at("result").at("isError") == true);
    CHECK(text_of(r.at("result").at("content").at(0).at("text")).find("could not be recorded: write audit: No space left") !=
          std::string::npos);
  }
  CHECK(s.stats().calls_allowed == 0);
  CHECK(s.stats().calls_denied == 2);
  // With the commit working again the next call goes out after its release.
  sink.commit_fails = false;
  to_server.clear();
  s.from_client(call_line("read_file", R"({"path":"/ws/c"})"), to_server, to_client);
  s.release(to_server, to_client);
  CHECK(to_server == call_line("read_file", R"({"path":"/ws/c"})") + "\n");
}
