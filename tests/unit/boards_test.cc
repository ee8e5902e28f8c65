#include <catch2/catch.hpp>

#include "outpost/boards/board.h"
#include "outpost/base/errors.h"

using namespace outpost;
using namespace outpost::boards;

TEST_CASE("every built-in board profile parses", "[boards]") {
  auto names = builtin_board_names();
  REQUIRE_FALSE(names.empty());
  for (const auto& name : names) {
    INFO(name);
    auto b = load_board(name);
    REQUIRE(b.has_value());
    CHECK(b->name == name);
    CHECK_FALSE(b->tcti.empty());
  }
  auto sim = load_board("sim");
  REQUIRE(sim.has_value());
  CHECK(sim->srk_handle == 0x81000001);
  CHECK(sim->ak_handle == 0x81018000);
  CHECK(sim->runtime_pcr == 23);
  CHECK(sim->quote_selection() == "sha256:0,1,2,3,4,5,6,7,23");
}

TEST_CASE("board profile errors name the place and the field", "[boards]") {
  const std::string good = R"(name: t
description: test
tpm:
  tcti: "device:/dev/tpmrm0"
  pcr_bank: sha256
  quote_pcrs: [0, 7]
  runtime_pcr: 23
  handles: {srk: 0x81000001, ek: 0x81010002, ak: 0x81018000}
  nv: {rollback_counter: 0x01000100}
paths: {state_dir: /var/lib/outpost}
identity: {trust_domain: example.org}
)";
  REQUIRE(parse_board(good, "t.yaml").has_value());

  auto refused = [](const std::string& yaml, const char* what) {
    auto r = parse_board(yaml, "t.yaml");
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains(what));
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  refused(replace("description: test", "descripton: test"), "t.yaml:2: unknown field \"board.descripton\"");
  refused(replace("[0, 7]", "[0, 24]"), "out of range");
  refused(replace("srk: 0x81000001", "srk: 0x01000001"), "tpm.handles.srk");
  refused(replace("ak: 0x81018000", "ak: 0x81000001"), "three different handles");
  refused(replace("pcr_bank: sha256", "pcr_bank: md5"), "tpm.pcr_bank");
  refused(replace("  runtime_pcr: 23\n", ""), "missing field \"tpm.runtime_pcr\"");
  refused("name: [unclosed", "t.yaml:1");
  auto unknown = load_board("no-such-board");
  REQUIRE_FALSE(unknown.has_value());
  CHECK_THAT(unknown.error().message(), Catch::Contains("built in: "));
}

TEST_CASE("malformed profiles found by fuzzing give errors, not exceptions", "[boards]") {
  for (const char* yaml : {"{[a]: 1}", "name: t\ndescription: d\ntpm: {? [x] : 1}", "tpm: !!binary AAAA", "- 1\n- 2",
                           "name: {a: b}"}) {
    INFO(yaml);
    auto r = parse_board(yaml, "f.yaml");
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::StartsWith("f.yaml:"));
  }
}
