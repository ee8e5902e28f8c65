#include <algorithm>
#include <catch2/catch.hpp>

#include "outpost/boards/board.h"
#include "outpost/base/errors.h"

using namespace outpost;
using namespace outpost::boards;

namespace {

// A profile with every field; the rejection cases below each change one thing.
const std::string kGood = R"(name: t
description: test
tpm:
  tcti: "device:/dev/tpmrm0"
  setup_hint: "plug it in"
  pcr_bank: sha256
  quote_pcrs: [0, 7, 23]
  runtime_pcr: 23
  handles: {srk: 0x81000001, ek: 0x81010002, ak: 0x81018000}
  nv: {rollback_counter: 0x01800100}
boot:
  event_log: /sys/kernel/security/tpm0/binary_bios_measurements
paths: {state_dir: /var/lib/outpost, config_dir: /etc/outpost}
budgets: {audit_log: 256MiB, memory: 64MiB}
checkpoint: {every_records: 1000, every_seconds: 300, on_deny: true}
sandbox: {landlock_min_abi: 4}
identity: {trust_domain: example.org}
)";

std::string with(const std::string& from, const std::string& to) {
  std::string s = kGood;
  const size_t at = s.find(from);
  REQUIRE(at != std::string::npos);
  s.replace(at, from.size(), to);
  return s;
}

void refused(const std::string& yaml, const std::string& what) {
  auto r = parse_board(yaml, "t.yaml");
  INFO(yaml);
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message(), Catch::Contains(what));
  CHECK_THAT(r.error().message(), Catch::StartsWith("t.yaml:"));
}

}  // namespace

TEST_CASE("every built-in board profile parses and validates", "[boards]") {
  auto names = builtin_board_names();
  for (const char* expected : {"sim", "x86-64", "raspberrypi", "jetson-orin"}) {
    CHECK(std::find(names.begin(), names.end(), expected) != names.end());
  }
  for (const auto& name : names) {
    INFO(name);
    auto b = load_board(name);
    INFO((b ? std::string() : b.error().message()));
    REQUIRE(b.has_value());
    CHECK(b->name == name);
    CHECK_FALSE(b->tcti.empty());
    CHECK_FALSE(b->setup_hint.empty());
    CHECK(b->pcr_bank == "sha256");
    CHECK(std::find(b->quote_pcrs.begin(), b->quote_pcrs.end(), b->runtime_pcr) != b->quote_pcrs.end());
    CHECK(b->srk_handle >= handle_range::srk_first);
    CHECK(b->srk_handle <= handle_range::srk_last);
    CHECK(b->rollback_counter_index >= handle_range::nv_owner_first);
    CHECK(b->rollback_counter_index <= handle_range::nv_owner_last);
    CHECK(b->state_dir == "/var/lib/outpost");
    CHECK(b->config_dir == "/etc/outpost");
    CHECK(b->landlock_min_abi == 4);  // the sandbox's TCP rules
  }

  auto sim = load_board("sim");
  REQUIRE(sim.has_value());
  CHECK(sim->srk_handle == 0x81000001);
  CHECK(sim->ak_handle == 0x81018000);
  CHECK(sim->runtime_pcr == 23);
  CHECK(sim->quote_selection() == "sha256:0,1,2,3,4,5,6,7,23");
  CHECK_FALSE(sim->measured_boot());

  auto pi = load_board("raspberrypi");
  REQUIRE(pi.has_value());
  CHECK(pi->tcti == "device:/dev/tpmrm0");
  CHECK_FALSE(pi->measured_boot());  // the Pi's firmware does not measure boot
  CHECK_THAT(pi->setup_hint, Catch::Contains("dtoverlay=tpm-slb9670"));

  auto jetson = load_board("jetson-orin");
  auto x86 = load_board("x86-64");
  REQUIRE(jetson.has_value());
  REQUIRE(x86.has_value());
  for (const BoardProfile* b : {&*jetson, &*x86}) {
    CHECK(b->measured_boot());
    CHECK(b->event_log == "/sys/kernel/security/tpm0/binary_bios_measurements");
  }
  // A Pi has less disk and RAM than a Jetson.
  CHECK(pi->audit_log_bytes < jetson->audit_log_bytes);
  CHECK(pi->memory_bytes < jetson->memory_bytes);
}

TEST_CASE("a profile with every field parses to what it says", "[boards]") {
  auto b = parse_board(kGood, "t.yaml");
  INFO((b ? std::string() : b.error().message()));
  REQUIRE(b.has_value());
  CHECK(b->setup_hint == "plug it in");
  CHECK(b->quote_pcrs == std::vector<uint32_t>{0, 7, 23});
  CHECK(b->rollback_counter_index == 0x01800100);
  CHECK(b->audit_log_bytes == 256ull << 20);
  CHECK(b->memory_bytes == 64ull << 20);
  CHECK(b->checkpoint.every_records == 1000);
  CHECK(b->checkpoint.every_seconds == 300);
  CHECK(b->checkpoint.on_deny);
  CHECK(b->measured_boot());
}

TEST_CASE("optional profile fields take their documented defaults", "[boards]") {
  const std::string minimal = R"(name: m
description: minimal
tpm:
  tcti: "device:/dev/tpmrm0"
  pcr_bank: sha256
  quote_pcrs: [23]
  handles: {srk: 0x81000001, ek: 0x81010002, ak: 0x81018000}
  nv: {rollback_counter: 0x01800100}
boot: {event_log: none}
paths: {state_dir: /var/lib/outpost}
identity: {trust_domain: example.org}
)";
  auto b = parse_board(minimal, "m.yaml");
  INFO((b ? std::string() : b.error().message()));
  REQUIRE(b.has_value());
  CHECK(b->runtime_pcr == 23);
  CHECK(b->setup_hint.empty());
  CHECK(b->config_dir == "/etc/outpost");
  CHECK(b->audit_log_bytes == 256ull << 20);
  CHECK(b->memory_bytes == 64ull << 20);
  CHECK(b->checkpoint.every_records == 1000);
  CHECK(b->checkpoint.every_seconds == 300);
  CHECK(b->checkpoint.on_deny);
  CHECK(b->landlock_min_abi == 4);
  CHECK_FALSE(b->measured_boot());

  auto sizes = parse_board(with("{audit_log: 256MiB, memory: 64MiB}", "{audit_log: 1073741824, memory: \"1 GiB\"}"), "t.yaml");
  REQUIRE(sizes.has_value());
  CHECK(sizes->audit_log_bytes == 1ull << 30);
  CHECK(sizes->memory_bytes == 1ull << 30);
}

TEST_CASE("board profile errors name the place and the field", "[boards]") {
  REQUIRE(parse_board(kGood, "t.yaml").has_value());
  // Strict schema: unknown, repeated and missing fields.
  refused(with("description: test", "descripton: test"), "t.yaml:2: unknown field \"board.descripton\"");
  refused(with("  runtime_pcr: 23\n", "  runtime_pcr: 23\n  runtime_pcr: 23\n"), "field \"tpm.runtime_pcr\" given twice");
  refused(with("  pcr_bank: sha256\n", ""), "missing field \"tpm.pcr_bank\"");
  refused(with("boot:\n  event_log: /sys/kernel/security/tpm0/binary_bios_measurements\n", ""), "missing field \"board.boot\"");
  refused(with("sandbox: {landlock_min_abi: 4}", "sandbox: {landlock_abi: 4}"), "unknown field \"sandbox.landlock_abi\"");
  refused("name: [unclosed", "t.yaml:1");

  // PCRs.
  refused(with("[0, 7, 23]", "[0, 24]"), "PCR 24 is out of range (0..23)");
  refused(with("[0, 7, 23]", "[0, 7, 7, 23]"), "PCR 7 is repeated");
  refused(with("[0, 7, 23]", "[]"), "tpm.quote_pcrs must be a non-empty list");
  refused(with("[0, 7, 23]", "[0, 7]"), "tpm.quote_pcrs must include the runtime PCR 23");
  refused(with("runtime_pcr: 23", "runtime_pcr: 24"), "tpm.runtime_pcr must be 0..23");
  refused(with("runtime_pcr: 23", "runtime_pcr: 7"), "must not be a firmware PCR (0..7)");
  refused(with("runtime_pcr: 23", "runtime_pcr: 17"), "must not be a DRTM PCR (17..22)");
  refused(with("pcr_bank: sha256", "pcr_bank: md5"), "tpm.pcr_bank must be sha1, sha256 or sha384");

  // Handles and NV indices, by the TCG handle registry.
  refused(with("srk: 0x81000001", "srk: 0x81010001"), "tpm.handles.srk 0x81010001 must be in the owner's storage-key range 0x81000000..0x8100ffff");
  refused(with("srk: 0x81000001", "srk: 0x01000001"), "tpm.handles.srk");
  refused(with("ek: 0x81010002", "ek: 0x81000002"), "tpm.handles.ek 0x81000002 must be in the endorsement range 0x81010000..0x8101ffff");
  refused(with("ak: 0x81018000", "ak: 0x81800000"), "tpm.handles.ak 0x81800000 must be in the endorsement range");
  refused(with("ak: 0x81018000", "ak: 0x81010002"), "tpm.handles.ek and tpm.handles.ak must differ");
  refused(with("ak: 0x81018000", "ak: -1"), "tpm.handles.ak must be an unsigned 32-bit number");
  refused(with("rollback_counter: 0x01800100", "rollback_counter: 0x01000100"),
          "0x01000100 is in the TPM manufacturer's range 0x01000000..0x013fffff; use the owner range 0x01800000..0x01bfffff");
  refused(with("rollback_counter: 0x01800100", "rollback_counter: 0x01c0000a"), "the TCG-reserved range");
  refused(with("rollback_counter: 0x01800100", "rollback_counter: 0x81000001"), "no NV index range at all");

  // Boot, paths, budgets, cadence, sandbox, identity.
  refused(with("event_log: /sys/kernel/security/tpm0/binary_bios_measurements", "event_log: binary_bios_measurements"),
          "boot.event_log must be an absolute path, or none");
  refused(with("state_dir: /var/lib/outpost", "state_dir: var/lib/outpost"), "paths.state_dir must be an absolute path");
  refused(with("config_dir: /etc/outpost", "config_dir: /var/lib/outpost"), "paths.state_dir and paths.config_dir must differ");
  refused(with("audit_log: 256MiB", "audit_log: 0"), "budgets.audit_log must be at least 1MiB");
  refused(with("audit_log: 256MiB", "audit_log: 256MB"), "budgets.audit_log must be a size in bytes");
  refused(with("audit_log: 256MiB", "audit_log: 99999999999999999999"), "budgets.audit_log must be a size in bytes");
  refused(with("memory: 64MiB", "memory: 1MiB"), "budgets.memory must be at least 16MiB");
  refused(with("every_records: 1000", "every_records: 0"), "checkpoint.every_records must be at least 1");
  refused(with("every_seconds: 300", "every_seconds: 0"), "checkpoint.every_seconds must be 1..86400");
  refused(with("on_deny: true", "on_deny: sometimes"), "checkpoint.on_deny must be true or false");
  refused(with("landlock_min_abi: 4", "landlock_min_abi: 0"), "sandbox.landlock_min_abi must be 1..7");
  refused(with("landlock_min_abi: 4", "landlock_min_abi: 9"), "sandbox.landlock_min_abi must be 1..7");
  refused(with("trust_domain: example.org", "trust_domain: Example.org"), "identity.trust_domain may hold only");
  refused(with("name: t", "name: T/../x"), "board.name may hold only");
  refused(with("tcti: \"device:/dev/tpmrm0\"", "tcti: \"device:/dev/tpm rm0\""), "tpm.tcti must not contain white space");
  refused(with("tcti: \"device:/dev/tpmrm0\"", "tcti: \"\""), "tpm.tcti must be a non-empty string");

  auto unknown = load_board("no-such-board");
  REQUIRE_FALSE(unknown.has_value());
  CHECK_THAT(unknown.error().message(), Catch::Contains("built in: "));
  CHECK_THAT(unknown.error().message(), Catch::Contains("raspberrypi"));
}

TEST_CASE("malformed profiles found by fuzzing give errors, not exceptions", "[boards]") {
  for (const char* yaml : {"{[a]: 1}", "name: t\ndescription: d\ntpm: {? [x] : 1}", "tpm: !!binary AAAA", "- 1\n- 2",
                           "name: {a: b}", "", "~", "name: t\ndescription: d\ntpm: {tcti: x, quote_pcrs: [[1]]}"}) {
    INFO(yaml);
    auto r = parse_board(yaml, "f.yaml");
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::StartsWith("f.yaml:"));
  }
}
