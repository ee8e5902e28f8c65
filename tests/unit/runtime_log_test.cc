// The runtime measurement log's format, parser, replay and verifier, without a TPM (the writer
// and outpostd are tested against swtpm in tests/integration/runtime_log_test.cc).
#include <catch2/catch.hpp>
#include <string>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/firmware_hooks/runtime_log.h"

namespace outpost::firmware_hooks {
namespace {

RuntimeMeasurement entry(uint64_t seq, std::string_view kind, std::string name, const std::string& content) {
  RuntimeMeasurement m;
  m.seq = seq;
  m.kind = std::string(kind);
  m.name = std::move(name);
  m.digest = sha256(content);
  m.template_hash = runtime_template_hash(m.kind, m.name, m.digest);
  m.time = "2026-11-28T15:00:00Z";
  return m;
}

RuntimeLog sample() {
  RuntimeLog log;
  log.header.pcr = 23;
  log.header.reset_count = 2;
  log.header.restart_count = 1;
  log.header.started = "2026-11-28T15:00:00Z";
  log.entries.push_back(entry(1, runtime_kind::outpostd, "/usr/bin/outpostd", "outpostd"));
  log.entries.push_back(entry(2, runtime_kind::config, "/etc/outpost/outpostd.yaml", "board: sim\n"));
  log.entries.push_back(entry(3, runtime_kind::bundle, "v7", "bundle bytes"));
  log.entries.push_back(entry(4, runtime_kind::agent, "writer", "#!/bin/sh\n"));
  return log;
}

std::string text_of(const RuntimeLog& log) {
  std::string t = format_runtime_header(log.header) + "\n";
  for (const auto& e : log.entries) t += format_runtime_entry(e) + "\n";
  return t;
}

attestation::PcrValues quote_of(const Digest& value, uint32_t pcr = 23) {
  return {{attestation::hash_alg::sha256, {{pcr, Bytes(value.begin(), value.end())}}}};
}

std::string error_of(std::string_view text) {
  auto r = parse_runtime_log(text);
  REQUIRE_FALSE(r);
  return r.error().message();
}

}  // namespace

TEST_CASE("a runtime log round-trips and replays as the TPM extends", "[runtime-log]") {
  const RuntimeLog log = sample();
  auto parsed = parse_runtime_log(text_of(log));
  REQUIRE(parsed);
  CHECK(parsed->header.reset_count == 2);
  CHECK(parsed->header.restart_count == 1);
  REQUIRE(parsed->entries.size() == 4);
  CHECK(parsed->entries[3].name == "writer");
  CHECK(parsed->entries[3].line == 5);
  CHECK(text_of(*parsed) == text_of(log));

  // new = SHA-256(old || template), from a zero PCR, the TPM's PCR_Extend rule.
  Digest pcr{};
  for (const auto& e : log.entries) {
    Bytes both(pcr.begin(), pcr.end());
    both.insert(both.end(), e.template_hash.begin(), e.template_hash.end());
    pcr = sha256(both);
  }
  CHECK(replay_runtime_log(log) == pcr);
  CHECK(replay_runtime_log(log, 0) == Digest{});

  // The template binds kind, name and digest, and no (kind, name) split collides.
  CHECK(runtime_template_hash("agent", "ab", sha256(std::string("x"))) !=
        runtime_template_hash("agent", "ab", sha256(std::string("y"))));
  CHECK(runtime_template_hash("agent", "config", sha256(std::string("x"))) !=
        runtime_template_hash("config", "agent", sha256(std::string("x"))));
}

TEST_CASE("malformed runtime logs are refused naming the line", "[runtime-log]") {
  const RuntimeLog log = sample();
  const std::string good = text_of(log);

  CHECK(error_of("").find("empty") != std::string::npos);
  CHECK(error_of(good.substr(0, good.size() - 1)).find("line 5: torn") != std::string::npos);
  CHECK(error_of("not json\n").find("line 1: not JSON") != std::string::npos);
  CHECK(error_of("[1]\n").find("line 1: not a JSON object") != std::string::npos);

  RuntimeLog gap = log;
  gap.entries.erase(gap.entries.begin() + 1);
  CHECK(error_of(text_of(gap)).find("line 3: sequence 3 where 2 belongs") != std::string::npos);

  RuntimeLog edited = log;
  edited.entries[3].digest = sha256(std::string("something else"));
  CHECK(error_of(text_of(edited)).find("line 5: template hash does not match") != std::string::npos);

  RuntimeLog kind = log;
  kind.entries[0].kind = "kernel";
  CHECK(error_of(text_of(kind)).find("line 2: unknown kind \"kernel\"") != std::string::npos);

  RuntimeLog control = log;
  control.entries[3].name = std::string("wri\0ter", 7);
  control.entries[3].template_hash = runtime_template_hash("agent", control.entries[3].name, control.entries[3].digest);
  CHECK(error_of(text_of(control)).find("line 5: name") != std::string::npos);

  RuntimeLog bank = log;
  std::string header = format_runtime_header(bank.header);
  header.replace(header.find("sha256"), 6, "sha1");
  CHECK(error_of(header + "\n").find("bank \"sha1\" is not supported") != std::string::npos);

  std::string extra = good;
  extra.insert(extra.find("\"seq\":1"), "\"x\":1,");
  CHECK(error_of(extra).find("line 2: expected exactly 6 fields") != std::string::npos);

  CHECK(error_of(std::string(5000, ' ') + "\n").find("longer than") != std::string::npos);
  CHECK_FALSE(validate_runtime_entry("agent", ""));
  CHECK_FALSE(validate_runtime_entry("agent", std::string(1025, 'a')));
  CHECK(validate_runtime_entry("agent", "writer"));
  CHECK(validate_runtime_entry("config", "/etc/outpost/ägent-配置.yaml"));
  CHECK_FALSE(validate_runtime_entry("config", "/etc/\xff\xfe.yaml"));   // not UTF-8
  CHECK_FALSE(validate_runtime_entry("config", "/etc/\xc0\xaf.yaml"));   // overlong "/"
  CHECK_FALSE(validate_runtime_entry("config", "/etc/\xed\xa0\x80"));   // a surrogate
}

TEST_CASE("the verifier names what does not match the quote or the reference", "[runtime-log]") {
  auto parsed = parse_runtime_log(text_of(sample()));  // with line numbers
  REQUIRE(parsed);
  const RuntimeLog log = *parsed;
  const Digest whole = replay_runtime_log(log);
  const attestation::ClockInfo same_boot{1000, 2, 1, true};
  RuntimeExpectations none;

  auto v = verify_runtime_log(log, quote_of(whole), same_boot, none);
  CHECK(v.ok());
  CHECK(v.unreferenced == std::vector<std::string>{"writer"});

  // The quote saw the first three entries only.
  v = verify_runtime_log(log, quote_of(replay_runtime_log(log, 3)), same_boot, none);
  CHECK_FALSE(v.ok());
  REQUIRE(v.quoted_prefix);
  CHECK(*v.quoted_prefix == 3);
  REQUIRE(v.problems.size() == 1);
  CHECK(v.problems[0].find("entry 4 (agent \"writer\")") != std::string::npos);

  // A value no prefix gives: nothing is vouched for.
  v = verify_runtime_log(log, quote_of(sha256(std::string("other"))), same_boot, none);
  CHECK_FALSE(v.ok());
  CHECK_FALSE(v.quoted_prefix);
  CHECK(v.problems[0].find("no entry is vouched for") != std::string::npos);

  // The quote leaves out the log's PCR, or comes from another TPM boot.
  v = verify_runtime_log(log, quote_of(whole, 16), same_boot, none);
  CHECK_FALSE(v.pcr_quoted);
  CHECK_FALSE(v.ok());
  v = verify_runtime_log(log, quote_of(whole), attestation::ClockInfo{1000, 3, 0, true}, none);
  CHECK_FALSE(v.boot_matches);
  CHECK_FALSE(v.ok());

  // References: the agent's measurement differs, outpostd's does too.
  RuntimeExpectations want;
  want.agents["writer"] = {sha256(std::string("#!/bin/sh\n# v2\n"))};
  want.outpostd = sha256(std::string("outpostd"));
  v = verify_runtime_log(log, quote_of(whole), same_boot, want);
  CHECK(v.replay_matches);
  CHECK_FALSE(v.ok());
  REQUIRE(v.problems.size() == 1);
  CHECK(v.problems[0].find("entry 4 (line 5): agent \"writer\" measured sha256:" +
                           hex_encode(sha256(std::string("#!/bin/sh\n")))) != std::string::npos);
  want.agents["writer"].push_back(sha256(std::string("#!/bin/sh\n")));
  want.config = sha256(std::string("board: x86-64\n"));
  v = verify_runtime_log(log, quote_of(whole), same_boot, want);
  REQUIRE(v.problems.size() == 1);
  CHECK(v.problems[0].find("config \"/etc/outpost/outpostd.yaml\"") != std::string::npos);
}

}  // namespace outpost::firmware_hooks
