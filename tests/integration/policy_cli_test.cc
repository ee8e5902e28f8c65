// The IAM-to-node path through the `outpost` CLI against a swtpm of the test's own: keys,
// trust root, build, sign (2 of 2), verify, pin, install, status, decide, policy test, and
// the refusals an operator sees.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <thread>

#include "outpost/base/files.h"
#include "test_support.h"

using namespace outpost;
using outpost::testing::TempDir;

namespace {

std::string example(const char* name) { return std::string(OUTPOST_SOURCE_DIR) + "/examples/policy/" + name; }

testing::CommandResult ok(const std::vector<std::string>& args) {
  auto r = testing::run_outpost(args);
  INFO("outpost " << args[0] << " " << (args.size() > 1 ? args[1] : "") << "\n" << r.out << r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

}  // namespace

TEST_CASE("from YAML to a signed bundle installed on a sim node", "[policy-cli]") {
  TempDir dir;
  testing::Swtpm swtpm(dir / "swtpm");
  auto p = [&](const char* name) { return (dir / name).string(); };
  const std::string state = p("state");
  const std::vector<std::string> node = {"--state", state, "--tcti", swtpm.tcti()};
  auto with_node = [&](std::vector<std::string> args) {
    args.insert(args.end(), node.begin(), node.end());
    return args;
  };

  ok({"keygen", "--out", p("k1.pem")});
  ok({"keygen", "--out", p("k2.pem")});
  CHECK(testing::run_outpost({"keygen", "--out", p("k1.pem")}).exit_code == 1);  // never overwrites a key
  ok({"trust", "init", "--key", p("k1.pem.pub"), p("k2.pem.pub"), "--threshold", "2", "-o", p("root.json")});
  auto built = ok({"bundle", "build", example("edge-agents.yaml"), "-o", p("b.opb"), "--version", "7"});
  CHECK_THAT(built.out, Catch::Contains("bundle v7"));
  CHECK_THAT(built.err, Catch::Contains("warning: "));
  ok({"bundle", "sign", p("b.opb"), "--key", p("k1.pem")});
  auto half = testing::run_outpost({"bundle", "verify", p("b.opb"), "--trust", p("root.json")});
  CHECK(half.exit_code == 1);
  CHECK_THAT(half.err, Catch::Contains("1 valid signature(s) of the 2 required"));
  ok({"bundle", "sign", p("b.opb"), "--key", p("k2.pem")});
  ok({"bundle", "verify", p("b.opb"), "--trust", p("root.json")});
  auto inspect = ok({"bundle", "inspect", p("b.opb"), "--json"});
  auto info = boost::json::parse(inspect.out).as_object();
  CHECK(info["version"].as_int64() == 7);
  CHECK(info["signatures"].as_array().size() == 2);

  auto tests = ok({"policy", "test", example("cases.yaml"), "--bundle", p("b.opb"), "--trust", p("root.json")});
  CHECK_THAT(tests.out, Catch::Contains(" passed, 0 failed"));
  REQUIRE(write_file_atomic(dir / "req.json", std::string_view(
      R"({"agent":"coder","server":"fs","tool":"read_file","arguments":{"path":"/srv/workspace/../../etc/passwd"}})")));
  auto decided = ok({"decide", "--bundle", p("b.opb"), "--request", p("req.json"), "--json"});
  auto d = boost::json::parse(decided.out).as_object();
  CHECK(d["decision"] == "deny");
  CHECK(d["rules"].as_array().at(0) == "protect-hooks-and-etc");

  ok(with_node({"node", "init", "--board", "sim"}));
  auto no_trust = testing::run_outpost(with_node({"bundle", "install", p("b.opb")}));
  CHECK(no_trust.exit_code == 1);
  CHECK_THAT(no_trust.err, Catch::Contains("no trust root pinned"));
  ok(with_node({"trust", "pin", p("root.json")}));
  auto installed = ok(with_node({"bundle", "install", p("b.opb")}));
  CHECK_THAT(installed.out, Catch::Contains("installed bundle v7"));
  auto status = ok(with_node({"status", "--json"}));
  auto s = boost::json::parse(status.out).as_object();
  CHECK(s["bundle"].as_object()["version"].as_int64() == 7);
  CHECK(s["bundle"].as_object()["in_force"].as_bool());
  CHECK(s["bundle"].as_object()["offline_left_seconds"].as_int64() > 259000);

  SECTION("the same version again is refused and the installed one stays") {
    auto again = testing::run_outpost(with_node({"bundle", "install", p("b.opb")}));
    CHECK(again.exit_code == 1);
    CHECK_THAT(again.err, Catch::Contains("not newer than the installed v7"));
    CHECK(std::count(again.err.begin(), again.err.end(), '\n') == 1);
  }
  SECTION("a tampered bundle file is refused") {
    Bytes b = *read_file(dir / "b.opb");
    b[b.size() / 2] ^= 0x10;
    REQUIRE(write_file_atomic(dir / "bad.opb", b).has_value());
    auto bad = testing::run_outpost(with_node({"bundle", "install", p("bad.opb")}));
    CHECK(bad.exit_code == 1);
    CHECK_THAT(bad.err, Catch::StartsWith("outpost: error: "));
  }
  SECTION("a restored older state directory is refused by status and install") {
    std::filesystem::copy(state, p("saved"), std::filesystem::copy_options::recursive);
    ok({"bundle", "build", example("edge-agents.yaml"), "-o", p("b8.opb"), "--version", "8"});
    ok({"bundle", "sign", p("b8.opb"), "--key", p("k1.pem")});
    ok({"bundle", "sign", p("b8.opb"), "--key", p("k2.pem")});
    ok(with_node({"bundle", "install", p("b8.opb")}));
    std::filesystem::remove_all(state);
    std::filesystem::copy(p("saved"), state, std::filesystem::copy_options::recursive);
    auto restored = testing::run_outpost(with_node({"status"}));
    CHECK(restored.exit_code == 1);
    CHECK_THAT(restored.out, Catch::Contains("restored from an older copy"));
  }
  SECTION("a trust root cannot be replaced by pinning") {
    ok({"trust", "init", "--key", p("k1.pem.pub"), "--threshold", "1", "-o", p("weak.json")});
    auto r = testing::run_outpost(with_node({"trust", "pin", p("weak.json")}));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("signed rotation"));
  }
  SECTION("a rotation signed by both thresholds is walked") {
    ok({"keygen", "--out", p("k3.pem")});
    ok({"trust", "rotate", "--from", p("root.json"), "--key", p("k3.pem.pub"), "--threshold", "1", "-o", p("root2.json")});
    ok({"trust", "sign", p("root2.json"), "--key", p("k1.pem")});
    auto short_of_old = testing::run_outpost(with_node({"trust", "update", p("root2.json")}));
    CHECK(short_of_old.exit_code == 1);
    ok({"trust", "sign", p("root2.json"), "--key", p("k2.pem")});
    ok({"trust", "sign", p("root2.json"), "--key", p("k3.pem")});
    auto updated = ok(with_node({"trust", "update", p("root2.json")}));
    CHECK_THAT(updated.out, Catch::Contains("trust root v2"));
  }
}

TEST_CASE("bundle build names file line and field", "[policy-cli]") {
  TempDir dir;
  REQUIRE(write_file_atomic(dir / "p.yaml", std::string_view("version: 1\nvalid:\n  not_before: 2026-11-01T00:00:00Z\n"
                                                              "  not_after: 2027-11-01T00:00:00Z\n  max_offline: 1h\n"
                                                              "colour: blue\n")).has_value());
  auto r = testing::run_outpost({"bundle", "build", (dir / "p.yaml").string(), "-o", (dir / "b.opb").string()});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("p.yaml:6") && Catch::Contains("colour"));
  CHECK_FALSE(std::filesystem::exists(dir / "b.opb"));
}

TEST_CASE("once the offline budget is spent the node decides from the signed safe set", "[policy-cli]") {
  TempDir dir;
  testing::Swtpm swtpm(dir / "swtpm");
  auto p = [&](const char* name) { return (dir / name).string(); };
  const std::vector<std::string> node = {"--state", p("state"), "--tcti", swtpm.tcti()};
  auto with_node = [&](std::vector<std::string> args) {
    args.insert(args.end(), node.begin(), node.end());
    return args;
  };
  // The example policy with a two-second offline budget.
  std::string policy = *read_text_file(example("edge-agents.yaml"));
  policy.replace(policy.find("max_offline: 72h"), 16, "max_offline: 2s ");
  REQUIRE(write_file_atomic(dir / "short.yaml", policy).has_value());
  ok({"keygen", "--out", p("k.pem")});
  ok({"trust", "init", "--key", p("k.pem.pub"), "--threshold", "1", "-o", p("root.json")});
  ok({"bundle", "build", p("short.yaml"), "-o", p("b.opb")});
  ok({"bundle", "sign", p("b.opb"), "--key", p("k.pem")});
  ok(with_node({"node", "init", "--board", "sim"}));
  ok(with_node({"trust", "pin", p("root.json")}));
  ok(with_node({"bundle", "install", p("b.opb")}));
  REQUIRE(write_file_atomic(dir / "logs.json", std::string_view(
      R"({"agent":"maint","server":"fs","tool":"read_file","arguments":{"path":"/var/log/syslog"}})")));
  REQUIRE(write_file_atomic(dir / "ws.json", std::string_view(
      R"({"agent":"coder","server":"fs","tool":"read_file","arguments":{"path":"/srv/workspace/a"}})")));
  auto before = boost::json::parse(ok(with_node({"decide", "--request", p("ws.json"), "--json"})).out).as_object();
  CHECK(before["decision"] == "allow");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  auto status = boost::json::parse(ok(with_node({"status", "--json"})).out).as_object();
  CHECK_FALSE(status["bundle"].as_object()["in_force"].as_bool());
  CHECK(status["bundle"].as_object()["behaviour"] == "safe_set");
  auto ws = boost::json::parse(ok(with_node({"decide", "--request", p("ws.json"), "--json"})).out).as_object();
  CHECK(ws["decision"] == "deny");
  auto logs = boost::json::parse(ok(with_node({"decide", "--request", p("logs.json"), "--json"})).out).as_object();
  CHECK(logs["decision"] == "allow");
  CHECK(logs["rules"].as_array().at(0) == "expired-maint-read-logs");
}
