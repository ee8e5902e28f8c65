// The MCP broker's session logic and relay loop, against a real engine compiled from policy
// source. (The end-to-end tests drive it with the official SDK and servers.)
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
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
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
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

std::shared_ptr<const policy::Engine> engine() {
  static auto compiled = policy::compile_policy(kPolicy, "test.yaml", policy::CompileOptions{});
  REQUIRE(compiled);
  static auto e = policy::Engine::build(*flatbuffers::GetRoot<fb::Bundle>(compiled->payload.data()));
  REQUIRE(e);
  return *e;
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
