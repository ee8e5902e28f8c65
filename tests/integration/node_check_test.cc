// `outpost node check` against a swtpm of the test's own (it provisions the TPM, or puts a
// foreign key on it): the real CLI, run as an operator would.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "outpost/attestation/tpm.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "test_support.h"

using outpost::testing::TempDir;

namespace {

namespace json = boost::json;

// check name -> {verdict, detail, remedy} from `node check --json`.
struct Verdicts {
  std::map<std::string, json::object> by_name;
  std::vector<std::string> order;
  const json::object& at(const std::string& name) const {
    auto it = by_name.find(name);
    INFO("no check named " << name);
    REQUIRE(it != by_name.end());
    return it->second;
  }
  std::string verdict(const std::string& name) const { return std::string(at(name).at("verdict").as_string()); }
  std::string detail(const std::string& name) const { return std::string(at(name).at("detail").as_string()); }
  std::string remedy(const std::string& name) const {
    const json::value& v = at(name).at("remedy");
    return v.is_null() ? std::string() : std::string(v.as_string());
  }
};

Verdicts parse_checks(const std::string& out) {
  INFO(out);
  json::value v = json::parse(out);
  REQUIRE(v.is_array());
  Verdicts r;
  for (const auto& item : v.as_array()) {
    const json::object& o = item.as_object();
    REQUIRE(o.contains("check"));
    REQUIRE(o.contains("verdict"));
    REQUIRE(o.contains("detail"));
    REQUIRE(o.contains("remedy"));
    const std::string name(o.at("check").as_string());
    r.order.push_back(name);
    r.by_name[name] = o;
  }
  return r;
}

std::vector<std::string> check_args(const std::string& board, const std::string& tcti, const std::string& state) {
  return {"node", "check", "--board", board, "--tcti", tcti, "--state", state};
}

}  // namespace

TEST_CASE("node check passes on a provisioned sim node", "[node-check]") {
  TempDir dir;
  outpost::testing::Swtpm swtpm(dir / "swtpm");
  const std::string state = (dir / "state").string();

  SECTION("before node init every handle is free") {
    auto r = outpost::testing::run_outpost(check_args("sim", swtpm.tcti(), state));
    INFO(r.out << r.err);
    CHECK(r.exit_code == 0);
    auto j = outpost::testing::run_outpost([&] {
      auto a = check_args("sim", swtpm.tcti(), state);
      a.push_back("--json");
      return a;
    }());
    REQUIRE(j.exit_code == 0);
    Verdicts v = parse_checks(j.out);
    CHECK(v.verdict("node.identity") == "skipped");
    CHECK_THAT(v.detail("tpm.handle.srk"), Catch::Contains("is free"));
    CHECK_THAT(v.detail("tpm.nv.rollback_counter"), Catch::Contains("is free"));
    CHECK_THAT(v.detail("paths.state_dir"), Catch::Contains("node init creates it"));
    CHECK_FALSE(std::filesystem::exists(state));  // a check writes nothing
  }

  SECTION("after node init every verdict is ok or skipped") {
    auto init = outpost::testing::run_outpost({"node", "init", "--board", "sim", "--state", state, "--tcti", swtpm.tcti()});
    INFO(init.err);
    REQUIRE(init.exit_code == 0);
    auto tree = outpost::testing::snapshot_tree(state);

    auto human = outpost::testing::run_outpost(check_args("sim", swtpm.tcti(), state));
    INFO(human.out << human.err);
    CHECK(human.exit_code == 0);
    CHECK_THAT(human.out, Catch::Contains("ok       tpm "));
    CHECK_THAT(human.out, Catch::Contains("0 FAIL"));
    CHECK_THAT(human.out, !Catch::Contains("FAIL "));

    auto args = check_args("sim", swtpm.tcti(), state);
    args.push_back("--json");
    auto j = outpost::testing::run_outpost(args);
    INFO(j.out << j.err);
    REQUIRE(j.exit_code == 0);
    Verdicts v = parse_checks(j.out);
    for (const auto& name : v.order) {
      INFO(name << ": " << v.detail(name));
      const std::string verdict = v.verdict(name);
      CHECK((verdict == "ok" || verdict == "skipped"));
    }
    for (const char* name : {"profile", "node.identity", "tpm.device", "tpm", "tpm.info", "tpm.pcr_bank", "tpm.algorithms",
                             "tpm.handle.srk", "tpm.handle.ek", "tpm.handle.ak", "tpm.nv.rollback_counter",
                             "boot.event_log", "boot.replay", "sandbox.landlock", "sandbox.egress", "sandbox.isolation", "paths.state_dir",
                             "budget.disk", "budget.memory"}) {
      INFO(name);
      CHECK(v.by_name.count(name) == 1);
    }
    CHECK(v.verdict("tpm") == "ok");
    CHECK_THAT(v.detail("tpm.info"), Catch::Contains("TPM 2.0 specification revision"));
    CHECK_THAT(v.detail("tpm.handle.srk"), Catch::Contains("holds this node's SRK"));
    CHECK_THAT(v.detail("tpm.handle.ak"), Catch::Contains("holds this node's AK"));
    CHECK(v.verdict("boot.event_log") == "skipped");  // sim: event_log none
    CHECK(v.verdict("tpm.device") == "skipped");      // not a device TCTI
    CHECK(outpost::testing::snapshot_tree(state) == tree);

    // What a first bundle install leaves behind: outpost's counter at the profile's index.
    {
      auto tpm = outpost::attestation::Tpm::connect(swtpm.tcti());
      REQUIRE(tpm.has_value());
      auto counter = (*tpm)->ensure_counter(outpost::boards::load_board("sim")->rollback_counter_index);
      REQUIRE(counter.has_value());
    }  // swtpm serves one client at a time
    auto with_counter = outpost::testing::run_outpost(args);
    REQUIRE(with_counter.exit_code == 0);
    CHECK_THAT(parse_checks(with_counter.out).detail("tpm.nv.rollback_counter"),
               Catch::Contains("0x01800100 holds outpost's rollback counter (value"));

    // The same TPM, cleared: the keys node.json records are gone.
    auto clear = outpost::testing::run_program({"tpm2_clear", "-T", swtpm.tcti()});
    INFO(clear.err);
    REQUIRE(clear.exit_code == 0);
    auto after = outpost::testing::run_outpost(args);
    INFO(after.out);
    CHECK(after.exit_code == 1);
    Verdicts cleared = parse_checks(after.out);
    for (const char* name : {"tpm.handle.srk", "tpm.handle.ek", "tpm.handle.ak"}) {
      INFO(name);
      CHECK(cleared.verdict(name) == "fail");
      CHECK_THAT(cleared.detail(name), Catch::Contains("cleared or replaced since node init"));
      CHECK_THAT(cleared.remedy(name), Catch::Contains("run node init again"));
    }
  }
}

TEST_CASE("node check against an unreachable TPM fails the TPM check with a remedy", "[node-check]") {
  TempDir dir;
  const std::string tcti = "swtpm:host=127.0.0.1,port=" + std::to_string(outpost::testing::unused_port());
  auto args = check_args("sim", tcti, (dir / "state").string());
  auto human = outpost::testing::run_outpost(args);
  INFO(human.out << human.err);
  CHECK(human.exit_code == 1);
  CHECK_THAT(human.out, Catch::Contains("FAIL     tpm "));
  CHECK_THAT(human.out, Catch::Contains("cannot use the TPM at \"" + tcti + "\""));
  CHECK_THAT(human.out, Catch::Contains("-> nothing answers there: start the simulator"));

  args.push_back("--json");
  auto j = outpost::testing::run_outpost(args);
  CHECK(j.exit_code == 1);
  Verdicts v = parse_checks(j.out);
  CHECK(v.verdict("tpm") == "fail");
  CHECK_FALSE(v.remedy("tpm").empty());
  for (const char* name : {"tpm.info", "tpm.pcr_bank", "tpm.algorithms", "tpm.handle.srk", "tpm.handle.ek", "tpm.handle.ak",
                           "tpm.nv.rollback_counter"}) {
    INFO(name);
    CHECK(v.verdict(name) == "skipped");
    CHECK(v.detail(name) == "no TPM");
  }
  // The checks that need no TPM still run.
  CHECK(v.verdict("sandbox.landlock") == "ok");
  CHECK(v.verdict("sandbox.isolation") == "ok");  // a real isolated launch, as root here
  CHECK(v.verdict("sandbox.egress") == "ok");   // and the agents' network namespace with its egress listener
  CHECK(v.verdict("profile") == "ok");
}

TEST_CASE("node check reports a handle occupied by a foreign key", "[node-check]") {
  TempDir dir;
  outpost::testing::Swtpm swtpm(dir / "swtpm");
  // Another program's RSA primary, persisted at the handle the sim profile wants for the SRK.
  const std::string ctx = (dir / "foreign.ctx").string();
  auto create = outpost::testing::run_program({"tpm2_createprimary", "-Q", "-T", swtpm.tcti(), "-C", "o", "-c", ctx});
  INFO(create.err);
  REQUIRE(create.exit_code == 0);
  auto persist = outpost::testing::run_program({"tpm2_evictcontrol", "-Q", "-T", swtpm.tcti(), "-C", "o", "-c", ctx, "0x81000001"});
  INFO(persist.err);
  REQUIRE(persist.exit_code == 0);

  auto args = check_args("sim", swtpm.tcti(), (dir / "state").string());
  args.push_back("--json");
  auto j = outpost::testing::run_outpost(args);
  INFO(j.out << j.err);
  CHECK(j.exit_code == 1);
  Verdicts v = parse_checks(j.out);
  CHECK(v.verdict("tpm.handle.srk") == "fail");
  CHECK_THAT(v.detail("tpm.handle.srk"), Catch::Contains("0x81000001 is occupied by something else"));
  CHECK_THAT(v.remedy("tpm.handle.srk"), Catch::Contains("tpm2_evictcontrol -C o -c 0x81000001"));
  CHECK(v.verdict("tpm.handle.ek") == "ok");
  CHECK(v.verdict("tpm") == "ok");

  // node init says the same, not a bare "not an ECC key".
  auto init = outpost::testing::run_outpost({"node", "init", "--board", "sim", "--state", (dir / "state").string(), "--tcti",
                                             swtpm.tcti()});
  CHECK(init.exit_code == 1);
  CHECK_THAT(init.err, Catch::Contains("handle 0x81000001 holds a key that is not outpost's SRK; evict it"));

  // Another program's NV index where the profile wants the rollback counter: reported from its
  // public area alone, never read.
  auto nv = outpost::testing::run_program({"tpm2_nvdefine", "-Q", "-T", swtpm.tcti(), "-C", "o", "-s", "32", "-a",
                                           "ownerread|ownerwrite|authread|authwrite", "0x01800100"});
  INFO(nv.err);
  REQUIRE(nv.exit_code == 0);
  auto again = outpost::testing::run_outpost(args);
  Verdicts after = parse_checks(again.out);
  CHECK(after.verdict("tpm.nv.rollback_counter") == "fail");
  CHECK_THAT(after.detail("tpm.nv.rollback_counter"), Catch::Contains("occupied by an NV index of another kind"));
  CHECK_THAT(after.remedy("tpm.nv.rollback_counter"), Catch::Contains("tpm2_nvundefine -C o 0x01800100"));
}

TEST_CASE("node check with a profile file: a missing event log and a bad profile", "[node-check]") {
  TempDir dir;
  outpost::testing::Swtpm swtpm(dir / "swtpm");
  const std::string state = (dir / "state").string();

  SECTION("a measured-boot board whose event log is missing fails that check") {
    auto sim = outpost::read_text_file(std::string(OUTPOST_SOURCE_DIR) + "/boards/profiles/sim.yaml");
    REQUIRE(sim.has_value());
    std::string text = *sim;
    const std::string from = "event_log: none";
    REQUIRE(text.find(from) != std::string::npos);
    text.replace(text.find(from), from.size(), "event_log: " + (dir / "no-such-log").string());
    const auto profile = dir / "board.yaml";
    REQUIRE(outpost::write_file_atomic(profile, text).has_value());

    auto args = check_args(profile.string(), swtpm.tcti(), state);
    args.push_back("--json");
    auto j = outpost::testing::run_outpost(args);
    INFO(j.out << j.err);
    CHECK(j.exit_code == 1);
    Verdicts v = parse_checks(j.out);
    CHECK(v.verdict("boot.event_log") == "fail");
    CHECK_THAT(v.remedy("boot.event_log"), Catch::Contains("securityfs"));
    CHECK(v.verdict("boot.replay") == "skipped");
    CHECK(v.verdict("tpm") == "ok");
  }

  SECTION("an invalid profile is the one failing check") {
    const auto profile = dir / "bad.yaml";
    REQUIRE(outpost::write_file_atomic(profile, std::string("name: bad\ndescripton: typo\n")).has_value());
    auto args = check_args(profile.string(), swtpm.tcti(), state);
    args.push_back("--json");
    auto j = outpost::testing::run_outpost(args);
    INFO(j.out << j.err);
    CHECK(j.exit_code == 1);
    Verdicts v = parse_checks(j.out);
    CHECK(v.order == std::vector<std::string>{"profile"});
    CHECK(v.verdict("profile") == "fail");
    CHECK_THAT(v.detail("profile"), Catch::Contains("bad.yaml:2: unknown field \"board.descripton\""));
  }
}
