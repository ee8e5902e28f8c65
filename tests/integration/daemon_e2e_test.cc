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
#include <thread>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/files.h"
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
  }

  void start_daemon() {
    write_text(dir / "outpostd.yaml", "board: sim\nstate_dir: " + state.string() + "\ntcti: \"" + swtpm.tcti() +
                                          "\"\nsocket: " + socket.string() + "\ninbox_poll_ms: 200\n");
    // Secrets in outpostd's own environment must reach neither agents nor tools.
    daemon = std::make_unique<testing::Background>(
        std::vector<std::string>{testing::outpostd_path(), "--config", (dir / "outpostd.yaml").string()},
        dir / "outpostd.log",
        std::vector<std::string>{"SSH_AUTH_SOCK=/tmp/operator-agent.sock", "AWS_SECRET_ACCESS_KEY=operator-secret"});
    bool up = eventually([&] { return testing::run_outpost({"agent", "list", "--socket", socket.string()}).exit_code == 0; }, 30);
    INFO(*read_text_file(dir / "outpostd.log"));
    REQUIRE(up);
  }

  // Writes the SDK agent's config and steps, and its manifest; returns the manifest path.
  fs::path agent(const std::string& name, const json::array& steps, const std::string& restart = "never") {
    const fs::path adir = dir / ("agent-" + name);
    const fs::path nm = kE2e / "node_modules" / "@modelcontextprotocol";
    json::object config{
        {"mcpServers",
         {{"fs", {{"command", testing::outpost_cli_path()},
                  {"args", {"mcp", "connect", "fs"}}}},
          {"everything", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "everything"}}}},
          {"ops", {{"command", testing::outpost_cli_path()}, {"args", {"mcp", "connect", "ops"}}}}}},
        {"roots", {"file://" + allowed.string()}}};
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
        "restart: " + restart + "\n"
        "mcp_servers:\n"
        "  fs:\n"
        "    command: " + node + "\n"
        "    args: [\"" + (nm / "server-filesystem" / "dist" / "index.js").string() + "\", \"" + allowed.string() + "\"]\n"
        "  everything:\n"
        "    command: " + node + "\n"
        "    args: [\"" + (nm / "server-everything" / "dist" / "index.js").string() + "\", stdio]\n"
        "    secrets: [{name: demo-token, env: DEMO_TOKEN}]\n"
        "  ops: {local: true}\n";
    write_text(adir / "manifest.yaml", manifest);
    return adir / "manifest.yaml";
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
    auto r = testing::run_outpost({"agent", "logs", name}, env());
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
  CHECK_THAT(log.out, Catch::Contains("Permission denied"));
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
