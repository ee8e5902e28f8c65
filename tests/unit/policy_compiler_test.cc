#include <flatbuffers/flatbuffers.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <memory>
#include <string>

#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/fb/bundle_generated.h"
#include "policy/compiler.h"

using namespace outpost;
using namespace outpost::policy;

namespace {

const std::filesystem::path kExample =
    std::filesystem::path(__FILE__).parent_path() / "../../examples/policy/edge-agents.yaml";

// Verifies the payload as a node would before reading it.
const fb::Bundle* decode(const Bytes& payload) {
  flatbuffers::Verifier verifier(payload.data(), payload.size());
  REQUIRE(verifier.VerifyBuffer<fb::Bundle>(nullptr));
  return flatbuffers::GetRoot<fb::Bundle>(payload.data());
}

const fb::Rule* rule_by_id(const fb::Bundle& b, const std::string& id) {
  for (const fb::Rule* r : *b.rules()) {
    if (r->id()->str() == id) return r;
  }
  FAIL("no rule " << id);
  return nullptr;
}

// A small valid policy the error tests alter; the line numbers matter.
const std::string kBase = R"(version: 3
valid: {not_before: 2026-11-01T00:00:00Z, not_after: 2027-02-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: fs, name: read_file}
  - {server: fs, name: write_file}
agents:
  - {name: coder, tools: ["fs/*"]}
  - {name: viewer, tools: [fs/read_file]}
rules:
  - id: read
    effect: allow
    agents: [coder]
    tools: [fs/read_file]
    args:
      - {pointer: /path, path_prefix: [/srv/workspace]}
)";

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  REQUIRE(at != std::string::npos);
  s.replace(at, from.size(), to);
  return s;
}

Result<CompiledPolicy> compile(const std::string& yaml, CompileOptions options = {}) {
  return compile_policy(yaml, "p.yaml", options);
}

// The policy must be refused with a message containing `what`.
void refused(const std::string& yaml, const std::string& what, CompileOptions options = {}) {
  INFO(yaml);
  auto r = compile(yaml, options);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().is(errc::invalid_argument));
  CHECK_THAT(r.error().message(), Catch::Contains(what));
}

}  // namespace

TEST_CASE("the example policy compiles to the bundle it describes", "[policy-compiler]") {
  CompileOptions options;
  options.now = 1795860000;
  auto r = compile_policy_file(kExample, options);
  REQUIRE(r.has_value());
  CHECK(r->version == 1);
  const fb::Bundle& b = *decode(r->payload);

  CHECK(b.version() == 1);
  CHECK(b.issued_at() == 1795860000);
  CHECK(b.not_before() == 1793491200);
  CHECK(b.not_after() == 1825027200);
  CHECK(b.max_offline() == 72 * 3600);
  CHECK(b.issuer()->str() == "iam.example.org");
  REQUIRE(b.scope() != nullptr);
  REQUIRE(b.scope()->boards()->size() == 2);
  CHECK(b.scope()->boards()->Get(1)->str() == "x86-64");
  CHECK(b.scope()->fleets() == nullptr);

  REQUIRE(b.agents()->size() == 2);
  const fb::Agent* coder = b.agents()->Get(0);
  CHECK(coder->name()->str() == "coder");
  CHECK(coder->clearance() == 2);
  CHECK(coder->credential_ttl() == 300);
  CHECK(coder->tools()->size() == 5);
  CHECK(coder->tools()->Get(0)->str() == "fs/*");
  CHECK(b.agents()->Get(1)->name()->str() == "maint");
  CHECK(b.agents()->Get(1)->credential_ttl() == 120);

  REQUIRE(b.tools()->size() == 10);
  CHECK(b.tools()->Get(0)->server()->str() == "fs");
  CHECK(b.tools()->Get(0)->name()->str() == "read_file");
  CHECK(b.tools()->Get(0)->output_sensitivity() == 1);
  CHECK(b.tools()->Get(3)->destinations()->Get(0)->host()->str() == "github.com");
  CHECK(b.tools()->Get(3)->destinations()->Get(0)->ports()->Get(0) == 443);
  const fb::Tool* restart = b.tools()->Get(9);
  CHECK(restart->kind() == fb::ToolKind::LocalCommand);
  CHECK(restart->command()->str() == "/usr/bin/systemctl");

  REQUIRE(b.rules()->size() == 11);
  CHECK(b.rules()->Get(0)->id()->str() == "coder-workspace-read");
  const fb::Rule* write = rule_by_id(b, "coder-workspace-write");
  CHECK(write->effect() == fb::Effect::Allow);
  CHECK(write->agents()->Get(0)->str() == "coder");
  REQUIRE(write->args()->size() == 2);
  CHECK(write->args()->Get(0)->pointer()->str() == "/path");
  CHECK(write->args()->Get(0)->op() == fb::ArgOp::PathPrefix);
  CHECK(write->args()->Get(0)->values()->Get(0)->str() == "/srv/workspace");  // written "/srv/workspace/"
  CHECK(write->args()->Get(1)->op() == fb::ArgOp::MaxLength);
  CHECK(write->args()->Get(1)->max_length() == 1048576);
  CHECK(write->max_sensitivity() == 255);
  CHECK(rule_by_id(b, "coder-fetch-docs")->max_sensitivity() == 1);
  const fb::Rule* shell = rule_by_id(b, "coder-shell");
  CHECK(shell->args()->Get(0)->op() == fb::ArgOp::Regex);
  CHECK(shell->tasks()->Get(0)->str() == "build*");
  const fb::Rule* deny = rule_by_id(b, "protect-hooks-and-etc");
  CHECK(deny->effect() == fb::Effect::Deny);
  CHECK(deny->agents() == nullptr);  // every agent
  CHECK(deny->args()->Get(0)->values()->size() == 2);
  const fb::Rule* maint = rule_by_id(b, "maint-restart");
  REQUIRE(maint->time_windows()->size() == 1);
  CHECK(maint->time_windows()->Get(0)->days() == 0x1f);
  CHECK(maint->time_windows()->Get(0)->start_minute() == 6 * 60);
  CHECK(maint->time_windows()->Get(0)->end_minute() == 22 * 60);
  REQUIRE(maint->rate() != nullptr);
  CHECK(maint->rate()->scope() == fb::RateScope::Agent);
  CHECK(maint->rate()->count() == 6);
  CHECK(maint->rate()->window() == 3600);
  CHECK(rule_by_id(b, "coder-git")->credential_ttl() == 120);
  CHECK(rule_by_id(b, "coder-shell-night")->shadow());

  REQUIRE(b.flow_rules()->size() == 3);
  const fb::FlowRule* taint = b.flow_rules()->Get(0);
  CHECK(taint->kind() == fb::FlowKind::Taint);
  CHECK(taint->min_sensitivity() == 2);
  REQUIRE(taint->trusted()->size() == 2);
  CHECK(taint->trusted()->Get(0)->host()->str() == "*.corp.example");
  const fb::FlowRule* approval = b.flow_rules()->Get(1);
  CHECK(approval->kind() == fb::FlowKind::RequireApproval);
  CHECK(approval->approval_tool()->str() == "approvals/grant");
  const fb::FlowRule* budget = b.flow_rules()->Get(2);
  CHECK(budget->kind() == fb::FlowKind::WindowLimit);
  CHECK(budget->window() == 3600);
  CHECK(budget->max_count() == 20);

  CHECK(b.on_expiry() == fb::OnExpiry::SafeSet);
  REQUIRE(b.safe_set()->size() == 1);
  CHECK(b.safe_set()->Get(0)->id()->str() == "expired-maint-read-logs");
  CHECK(b.revoked_agents()->Get(0)->str() == "legacy-coder");

  auto text = read_text_file(kExample);
  REQUIRE(text.has_value());
  const Digest digest = sha256(*text);
  REQUIRE(b.source_sha256()->size() == 32);
  CHECK(std::equal(digest.begin(), digest.end(), b.source_sha256()->begin()));

  // The intended warnings: three overlaps with the deny rule, one shadow rule.
  REQUIRE(r->warnings.size() == 4);
  CHECK_THAT(r->warnings[0], Catch::Contains("rule \"coder-workspace-read\" (allow) and rule \"protect-hooks-and-etc\" "
                                             "(deny) both match coder \u2192 fs/read_file; deny wins"));
  CHECK_THAT(r->warnings[3], Catch::Contains("rule \"coder-shell-night\" is in shadow mode"));
}

TEST_CASE("the version can be overridden and issued_at defaults to the build time", "[policy-compiler]") {
  CompileOptions options;
  options.now = 1795860000;
  options.version_override = 42;
  auto r = compile(kBase, options);
  REQUIRE(r.has_value());
  CHECK(r->version == 42);
  CHECK(decode(r->payload)->version() == 42);
  CHECK(decode(r->payload)->issued_at() == 1795860000);
  CHECK(r->warnings.empty());

  auto stated = compile(kBase + "issued_at: 1795000000\n", options);
  REQUIRE(stated.has_value());
  CHECK(decode(stated->payload)->issued_at() == 1795000000);

  // The override stands in for a missing or zero version; it cannot be zero itself.
  auto without = compile(replace(kBase, "version: 3\n", ""), options);
  REQUIRE(without.has_value());
  CHECK(without->version == 42);
  CHECK(compile(replace(kBase, "version: 3", "version: 0"), options).has_value());
  options.version_override = 0;
  refused(kBase, "p.yaml: --version must be at least 1", options);
  refused(replace(kBase, "version: 3\n", ""), "p.yaml:1: version: missing required field");
  refused(replace(kBase, "version: 3", "version: 0"), "p.yaml:1: version: must be at least 1");
}

TEST_CASE("unknown and missing fields are refused", "[policy-compiler]") {
  refused(replace(kBase, "version: 3", "versoin: 3"), "p.yaml:1: versoin: unknown field");
  refused(replace(kBase, "{pointer: /path,", "{pointer: /path, prefx: [a],"), "p.yaml:15: rules[0].args[0].prefx: unknown field");
  refused(replace(kBase, "{name: coder, tools", "{nmae: coder, tools"), "p.yaml:7: agents[0].nmae: unknown field");
  refused(replace(kBase, "{name: viewer, tools: [fs/read_file]}", "{tools: [fs/read_file]}"),
          "p.yaml:8: agents[1].name: missing required field");
  refused(replace(kBase, "{server: fs, name: write_file}", "{server: fs}"), "p.yaml:5: tools[1].name: missing required field");
  refused(replace(kBase, "valid:", "validity:"), "p.yaml:2: validity: unknown field");
  refused(replace(kBase, ", max_offline: 72h", ""), "p.yaml:2: valid.max_offline: missing required field");
  refused(replace(kBase, "  - id: read\n", "  - effect: deny\n"), "rules[0].effect: field given twice (first at line 10)");
}

TEST_CASE("values of the wrong type are refused", "[policy-compiler]") {
  refused(replace(kBase, "version: 3", "version: \"3\""), "p.yaml:1: version: must be a whole number");
  refused(replace(kBase, "version: 3", "version: three"), "p.yaml:1: version: must be a whole number");
  refused(replace(kBase, "version: 3", "version: [3]"), "p.yaml:1: version: must be a whole number, not a list");
  refused(replace(kBase, "version: 3", "version: -3"), "p.yaml:1: version: must be a whole number");
  refused(replace(kBase, "tools:\n  - {server: fs, name: read_file}\n  - {server: fs, name: write_file}\n", "tools: {a: b}\n"),
          "p.yaml:3: tools: must be a list");
  refused(replace(kBase, "effect: allow", "effect: {a: b}"), "p.yaml:11: rules[0].effect: must be a string, not a mapping");
  refused(replace(kBase, "effect: allow", "effect: permit"), "p.yaml:11: rules[0].effect: must be allow or deny");
  refused(replace(kBase, "effect: allow", "effect: allow\n    shadow: yes"), "p.yaml:12: rules[0].shadow: must be true or false");
  refused(replace(kBase, "{name: coder,", "{name: [coder],"), "p.yaml:7: agents[0].name: must be a string, not a list");
  refused(replace(kBase, "{name: coder,", "{name: ,"), "p.yaml:7: agents[0].name: must be a string, not nothing");
  refused(replace(kBase, "agents:\n  - {name: coder", "agents:\n  - 5\n  - {name: coder"),
          "p.yaml:7: agents[0]: must be a mapping of fields");
}

TEST_CASE("huge and negative numbers are refused", "[policy-compiler]") {
  refused(replace(kBase, "version: 3", "version: 99999999999999999999999"), "p.yaml:1: version: must be a whole number from 0 to");
  refused(replace(kBase, "max_offline: 72h", "max_offline: 99999999999999999999d"), "p.yaml:2: valid.max_offline: must be a duration");
  refused(replace(kBase, "max_offline: 72h", "max_offline: 999999999999999999d"), "p.yaml:2: valid.max_offline: must be a duration");
  refused(replace(kBase, "{name: coder,", "{name: coder, credential_ttl: 100000000000s,"),
          "p.yaml:7: agents[0].credential_ttl: duration \"100000000000s\" is longer than 4294967295 seconds");
  refused(replace(kBase, "not_before: 2026-11-01T00:00:00Z", "not_before: 99999999999999999999"),
          "p.yaml:2: valid.not_before: must be an RFC 3339 UTC time");
  refused(replace(kBase, "{pointer: /path, path_prefix: [/srv/workspace]}", "{pointer: /n, max_length: -1}"),
          "p.yaml:15: rules[0].args[0].max_length: must be a whole number");
  refused(replace(kBase, "{pointer: /path, path_prefix: [/srv/workspace]}", "{pointer: /n, max_length: 1e3}"),
          "p.yaml:15: rules[0].args[0].max_length: must be a whole number");
  refused(replace(kBase, "{pointer: /path, path_prefix: [/srv/workspace]}", "{pointer: /n, range: {min: 1e999, max: 2}}"),
          "p.yaml:15: rules[0].args[0].range.min: must be a finite number");
  refused(replace(kBase, "{pointer: /path, path_prefix: [/srv/workspace]}", "{pointer: /n, range: {min: .nan, max: 2}}"),
          "rules[0].args[0].range.min: must be a finite number");
  refused(kBase + "    rate: {per: agent, count: 4294967296, window: 1m}\n", "p.yaml:16: rules[0].rate.count: must be a whole number");
}

TEST_CASE("bad durations times sensitivities and digests are refused", "[policy-compiler]") {
  refused(replace(kBase, "max_offline: 72h", "max_offline: 72x"), "p.yaml:2: valid.max_offline: must be a duration such as");
  refused(replace(kBase, "max_offline: 72h", "max_offline: 1.5h"), "valid.max_offline: must be a duration");
  refused(replace(kBase, "max_offline: 72h", "max_offline: 0s"), "p.yaml:2: valid.max_offline: must be a positive duration");
  refused(replace(kBase, "max_offline: 72h", "max_offline: 0"), "valid.max_offline: must be a positive duration");
  refused(replace(kBase, "2026-11-01T00:00:00Z", "2026-13-01T00:00:00Z"), "p.yaml:2: valid.not_before: must be an RFC 3339");
  refused(replace(kBase, "2026-11-01T00:00:00Z", "2026-02-29T00:00:00Z"), "valid.not_before: must be an RFC 3339");
  refused(replace(kBase, "2026-11-01T00:00:00Z", "2026-11-01T00:00:00+01:00"), "valid.not_before: must be an RFC 3339");
  refused(replace(kBase, "2026-11-01T00:00:00Z", "2027-02-01T00:00:00Z"), "p.yaml:2: valid.not_after: must be later than valid.not_before");
  CHECK(compile(replace(kBase, "2026-11-01T00:00:00Z", "2028-02-29T23:59:59Z")).has_value() == false);  // after not_after
  CHECK(compile(replace(kBase, "2026-11-01T00:00:00Z", "1793491200")).has_value());
  refused(replace(kBase, "{name: coder,", "{name: coder, clearance: top-secret,"),
          "p.yaml:7: agents[0].clearance: must be public, internal, confidential or secret, not \"top-secret\"");
  refused(replace(kBase, "{name: coder,", "{name: coder, measurement: abcd,"),
          "p.yaml:7: agents[0].measurement: must be a SHA-256 digest in 64 hex digits");
  refused(replace(kBase, "{name: coder,", "{name: coder, measurement: " + std::string(63, 'a') + "g,"),
          "agents[0].measurement: must be a SHA-256 digest");
  auto good = compile(replace(kBase, "{name: coder,", "{name: coder, measurement: " + std::string(64, 'A') + ","));
  REQUIRE(good.has_value());
  const fb::Agent* coder = decode(good->payload)->agents()->Get(0);
  REQUIRE(coder->measurement()->size() == 32);
  CHECK(coder->measurement()->Get(31) == 0xaa);
}

TEST_CASE("time windows days and ports are checked", "[policy-compiler]") {
  refused(kBase + "    time_windows: [{days: [mon, fun], from: \"07:00\", to: \"19:00\"}]\n",
          "p.yaml:16: rules[0].time_windows[0].days[1]: must be one of mon");
  refused(kBase + "    time_windows: [{from: \"7:00\", to: \"19:00\"}]\n", "rules[0].time_windows[0].from: must be a time of day");
  refused(kBase + "    time_windows: [{from: \"07:00\", to: \"24:00\"}]\n", "rules[0].time_windows[0].to: must be a time of day");
  refused(kBase + "    time_windows: [{from: \"07:00\", to: \"07:00\"}]\n",
          "p.yaml:16: rules[0].time_windows[0].to: the window is empty");
  refused(kBase + "    time_windows: []\n", "p.yaml:16: rules[0].time_windows: empty list (omit the field for any time)");
  auto wrap = compile(kBase + "    time_windows: [{days: [sun, sat], from: \"22:00\", to: \"06:30\"}]\n");
  REQUIRE(wrap.has_value());
  const fb::TimeWindow* w = decode(wrap->payload)->rules()->Get(0)->time_windows()->Get(0);
  CHECK(w->days() == 0x60);
  CHECK(w->start_minute() == 1320);
  CHECK(w->end_minute() == 390);

  refused(kBase + "    destinations: [{host: api.example.com, ports: [0]}]\n",
          "p.yaml:16: rules[0].destinations[0].ports[0]: port must be 1-65535");
  refused(kBase + "    destinations: [{host: api.example.com, ports: [65536]}]\n",
          "rules[0].destinations[0].ports[0]: must be a whole number from 0 to 65535");
  refused(kBase + "    destinations: [{host: api.example.com, cidr: 10.0.0.0/8}]\n",
          "rules[0].destinations[0]: needs exactly one of host and cidr");
  refused(kBase + "    destinations: [{cidr: 10.0.0.0/33}]\n", "rules[0].destinations[0].cidr: not an IPv4 or IPv6 network");
  refused(kBase + "    destinations: [{host: \"api.example.com:443\"}]\n", "rules[0].destinations[0].host: not a host name pattern");
  auto dest = compile(kBase + "    destinations: [{host: API.Example.com}, {cidr: \"2001:db8::/32\", ports: [443, 8443]}]\n");
  REQUIRE(dest.has_value());
  const fb::Rule* r = decode(dest->payload)->rules()->Get(0);
  CHECK(r->destinations()->Get(0)->host()->str() == "api.example.com");
  CHECK(r->destinations()->Get(1)->cidr()->str() == "2001:db8::/32");
  CHECK(r->destinations()->Get(1)->ports()->size() == 2);
}

TEST_CASE("argument constraints need one valid operator", "[policy-compiler]") {
  const std::string arg = "{pointer: /path, path_prefix: [/srv/workspace]}";
  refused(replace(kBase, arg, "{pointer: /ref, regex: \"(ab\"}"),
          "p.yaml:15: rules[0].args[0].regex: invalid RE2 pattern \"(ab\": missing ): (ab");
  refused(replace(kBase, arg, "{pointer: /ref, regex: \"([a-\"}"),
          "p.yaml:15: rules[0].args[0].regex: invalid RE2 pattern \"([a-\": missing ]: [a-");
  refused(replace(kBase, arg, "{pointer: /ref, prefix: [a], regex: b}"),
          "p.yaml:15: rules[0].args[0].regex: a constraint has one operator; this one also has prefix");
  refused(replace(kBase, arg, "{pointer: /ref, optional: true}"), "p.yaml:15: rules[0].args[0]: needs one operator");
  refused(replace(kBase, arg, "{pointer: ref, prefix: [a]}"), "p.yaml:15: rules[0].args[0].pointer: not an RFC 6901 JSON pointer");
  refused(replace(kBase, arg, "{pointer: /a~2b, prefix: [a]}"), "rules[0].args[0].pointer: not an RFC 6901 JSON pointer");
  refused(replace(kBase, arg, "{pointer: /a~, prefix: [a]}"), "rules[0].args[0].pointer: not an RFC 6901 JSON pointer");
  refused(replace(kBase, arg, "{pointer: /n, range: {min: 10, max: 1}}"), "p.yaml:15: rules[0].args[0].range: empty range");
  refused(replace(kBase, arg, "{pointer: /n, range: {min: 1}}"), "rules[0].args[0].range.max: missing required field");
  refused(replace(kBase, arg, "{pointer: /path, path_prefix: [srv/workspace]}"),
          "p.yaml:15: rules[0].args[0].path_prefix[0]: not a usable absolute path");
  refused(replace(kBase, arg, "{pointer: /path, path_prefix: [\"/srv/%252e%252e\"]}"),
          "rules[0].args[0].path_prefix[0]: not a usable absolute path");
  refused(replace(kBase, arg, "{pointer: /path, path_prefix: []}"), "rules[0].args[0].path_prefix: empty list");
  refused(replace(kBase, arg, "{pointer: /path, glob: [\"\"]}"), "p.yaml:15: rules[0].args[0].glob[0]: not a usable glob");
  refused(replace(kBase, arg, "{pointer: /path, prefix: /srv}"), "rules[0].args[0].prefix: must be a list");
  refused(replace(kBase, arg, "{pointer: /path, prefix: [\"\"]}"), "rules[0].args[0].prefix[0]: an empty prefix");

  auto norm = compile(replace(kBase, arg, "{pointer: \"\", path_prefix: [\"/srv//work/./x/../space/\", \"/a%2Fb\"]}"));
  REQUIRE(norm.has_value());
  const fb::ArgConstraint* c = decode(norm->payload)->rules()->Get(0)->args()->Get(0);
  CHECK(c->pointer()->str().empty());
  CHECK(c->values()->Get(0)->str() == "/srv/work/space");
  CHECK(c->values()->Get(1)->str() == "/a/b");

  auto ops = compile(replace(kBase, arg,
                             "{pointer: /n, range: {min: -1.5, max: 100}}\n"
                             "      - {pointer: /e, one_of: [utf-8, 7, true], optional: true}\n"
                             "      - {pointer: /r, regex: \"^[0-9a-f]{7,40}$\"}"));
  REQUIRE(ops.has_value());
  const auto* args = decode(ops->payload)->rules()->Get(0)->args();
  CHECK(args->Get(0)->op() == fb::ArgOp::Range);
  CHECK(args->Get(0)->min() == -1.5);
  CHECK(args->Get(0)->max() == 100);
  CHECK(args->Get(1)->op() == fb::ArgOp::OneOf);
  CHECK(args->Get(1)->optional());
  CHECK(args->Get(1)->values()->Get(1)->str() == "7");
  CHECK(args->Get(2)->values()->Get(0)->str() == "^[0-9a-f]{7,40}$");
}

TEST_CASE("names and ids must be valid and unique", "[policy-compiler]") {
  refused(replace(kBase, "{name: coder,", "{name: Coder,"), "p.yaml:7: agents[0].name: agent name \"Coder\" must be");
  refused(replace(kBase, "{name: coder,", "{name: -coder,"), "agents[0].name: agent name");
  refused(replace(kBase, "{name: coder,", "{name: " + std::string(64, 'a') + ","), "agents[0].name: agent name");
  CHECK(compile(replace(replace(kBase, "{name: coder,", "{name: " + std::string(63, 'a') + ","), "agents: [coder]",
                        "agents: [\"a*\"]"))
            .has_value());
  refused(replace(kBase, "{name: viewer,", "{name: coder,"), "p.yaml:8: agents[1].name: agent \"coder\" declared twice (first at line 7)");
  refused(replace(kBase, "{server: fs, name: write_file}", "{server: fs, name: read_file}"),
          "p.yaml:5: tools[1]: tool \"fs/read_file\" declared twice (first at line 4)");
  refused(replace(kBase, "{server: fs, name: write_file}", "{server: \"f/s\", name: write_file}"),
          "p.yaml:5: tools[1].server: server name \"f/s\" must be");
  refused(kBase + "  - {id: read, effect: deny, agents: [coder]}\n", "p.yaml:16: rules[1].id: id \"read\" used twice (first at line 10)");
  refused(kBase + "flow_rules:\n  - {id: read, kind: taint, min_sensitivity: internal}\n",
          "p.yaml:17: flow_rules[0].id: id \"read\" used twice (first at line 10)");
  refused(kBase + "on_expiry: safe_set\nsafe_set:\n  - {id: read, effect: allow, agents: [viewer]}\n",
          "p.yaml:18: safe_set[0].id: id \"read\" used twice (first at line 10)");
  refused(kBase + "revoked_agents: [old, old]\n", "p.yaml:16: revoked_agents[1]: agent \"old\" is listed twice");
}

TEST_CASE("references to undeclared agents and tools are refused", "[policy-compiler]") {
  refused(replace(kBase, "tools: [fs/read_file]}", "tools: [fs/read_file, \"git/*\"]}"),
          "p.yaml:8: agents[1].tools[1]: unknown tool \"git/*\": no declared tool matches it");
  refused(replace(kBase, "tools: [\"fs/*\"]}", "tools: []}"), "p.yaml:7: agents[0].tools: empty list");
  refused(replace(kBase, "agents: [coder]", "agents: [coder, ops]"),
          "p.yaml:12: rules[0].agents[1]: unknown agent \"ops\": no declared agent matches it");
  refused(replace(kBase, "agents: [coder]", "agents: [\"x-*\"]"), "rules[0].agents[0]: unknown agent \"x-*\"");
  refused(replace(kBase, "agents: [coder]", "agents: []"), "p.yaml:12: rules[0].agents: empty list (omit the field for every agent)");
  refused(replace(kBase, "tools: [fs/read_file]\n", "tools: [fs/read]\n"),
          "p.yaml:13: rules[0].tools[0]: unknown tool \"fs/read\": no declared tool matches it");
  refused(kBase + "flow_rules:\n  - {id: f, kind: taint, min_sensitivity: internal, agents: [nobody]}\n",
          "p.yaml:17: flow_rules[0].agents[0]: unknown agent \"nobody\"");
  refused(kBase + "flow_rules:\n  - {id: f, kind: require_approval, tools: [fs/write_file], approval_tool: \"ok/*\"}\n",
          "p.yaml:17: flow_rules[0].approval_tool: unknown tool \"ok/*\"");
}

TEST_CASE("rules that can never match are refused", "[policy-compiler]") {
  // viewer may reach fs/read_file only.
  refused(replace(replace(kBase, "agents: [coder]", "agents: [viewer]"), "tools: [fs/read_file]\n", "tools: [fs/write_file]\n"),
          "p.yaml:10: rules[0]: rule \"read\" can never match: none of its agents may reach any of its tools");
  refused(kBase + "flow_rules:\n  - {id: f, kind: window_limit, agents: [viewer], tools: [fs/write_file], window: 1h, max_count: 5}\n",
          "p.yaml:17: flow_rules[0]: flow rule \"f\" can never match");
  refused(kBase + "on_expiry: safe_set\nsafe_set:\n  - {id: s, effect: allow, agents: [viewer], tools: [fs/write_file]}\n",
          "p.yaml:18: safe_set[0]: rule \"s\" can never match");
  // No agents at all: nothing can match.
  refused("version: 1\nvalid: {not_before: 0, not_after: 10, max_offline: 1}\ntools: [{server: a, name: b}]\n"
          "rules: [{id: r, effect: allow}]\n",
          "p.yaml:4: rules[0]: rule \"r\" can never match");
}

TEST_CASE("on_expiry and flow rule kinds are checked", "[policy-compiler]") {
  refused(kBase + "on_expiry: allow_all\n", "p.yaml:16: on_expiry: must be deny_all or safe_set");
  refused(kBase + "on_expiry: safe_set\n", "p.yaml:16: on_expiry: safe_set needs a safe_set with rules");
  refused(kBase + "on_expiry: safe_set\nsafe_set: []\n", "p.yaml:17: safe_set: empty, but on_expiry is safe_set");
  auto ignored = compile(kBase + "safe_set:\n  - {id: s, effect: allow, agents: [viewer]}\n");
  REQUIRE(ignored.has_value());
  REQUIRE(ignored->warnings.size() == 1);
  CHECK(ignored->warnings[0] == "p.yaml:16: safe_set is ignored: on_expiry is deny_all");
  CHECK(decode(ignored->payload)->on_expiry() == fb::OnExpiry::DenyAll);

  refused(kBase + "flow_rules:\n  - {id: f, kind: leak}\n", "p.yaml:17: flow_rules[0].kind: must be taint, require_approval or window_limit");
  refused(kBase + "flow_rules:\n  - {id: f, kind: taint, min_sensitivity: internal, window: 1h}\n",
          "p.yaml:17: flow_rules[0].window: applies only to flow rules of kind window_limit");
  refused(kBase + "flow_rules:\n  - {id: f, kind: taint}\n", "p.yaml:17: flow_rules[0].min_sensitivity: missing required field");
  refused(kBase + "flow_rules:\n  - {id: f, kind: require_approval, approval_tool: fs/read_file}\n",
          "flow_rules[0].tools: missing required field");
  refused(kBase + "flow_rules:\n  - {id: f, kind: require_approval, tools: [\"fs/*\"], approval_tool: fs/read_file}\n",
          "flow_rules[0].approval_tool: the approval tool \"fs/read_file\" is itself one of the tools needing approval");
  refused(kBase + "flow_rules:\n  - {id: f, kind: window_limit, window: 1h}\n", "flow_rules[0]: a window_limit needs max_count, max_total or both");
  refused(kBase + "flow_rules:\n  - {id: f, kind: window_limit, window: 1h, max_total: 50}\n",
          "flow_rules[0].total_pointer: missing required field");
  auto limit = compile(kBase + "flow_rules:\n  - {id: f, kind: window_limit, window: 1h, max_total: 500.5, total_pointer: /amount}\n");
  REQUIRE(limit.has_value());
  const fb::FlowRule* f = decode(limit->payload)->flow_rules()->Get(0);
  CHECK(f->max_total() == 500.5);
  CHECK(f->total_pointer()->str() == "/amount");
  CHECK(f->agents() == nullptr);
}

TEST_CASE("overlapping allow and deny rules warn once per pair", "[policy-compiler]") {
  auto r = compile(kBase + "  - {id: no-fs, effect: deny, tools: [\"fs/*\"]}\n");
  REQUIRE(r.has_value());
  REQUIRE(r->warnings.size() == 1);
  CHECK(r->warnings[0] == "p.yaml:16: rule \"read\" (allow) and rule \"no-fs\" (deny) both match coder \u2192 fs/read_file; deny wins");

  // Two agents and two tools in common: still one warning for the pair.
  auto wide = compile(replace(kBase, "    agents: [coder]\n    tools: [fs/read_file]\n", "") +
                      "  - {id: no-read, effect: deny, tools: [fs/read_file]}\n");
  REQUIRE(wide.has_value());
  REQUIRE(wide->warnings.size() == 1);
  CHECK_THAT(wide->warnings[0], Catch::EndsWith("both match coder \u2192 fs/read_file; deny wins"));

  // No common reachable pair: viewer cannot reach fs/write_file.
  auto apart = compile(kBase + "  - {id: no-write, effect: deny, tools: [fs/write_file]}\n");
  REQUIRE(apart.has_value());
  CHECK(apart->warnings.empty());
}

TEST_CASE("shadow rules warn and do not count as overlaps", "[policy-compiler]") {
  auto r = compile(kBase + "  - {id: trial, effect: deny, shadow: true, agents: [coder]}\n");
  REQUIRE(r.has_value());
  REQUIRE(r->warnings.size() == 1);
  CHECK(r->warnings[0] == "p.yaml:16: rule \"trial\" is in shadow mode: decided and logged, not enforced");
  CHECK(decode(r->payload)->rules()->Get(1)->shadow());
}

TEST_CASE("malformed YAML gives errors not exceptions", "[policy-compiler]") {
  const std::string head = "version: 1\nvalid: {not_before: 0, not_after: 10, max_offline: 1}\n";
  const std::string cases[] = {
      "version: [1",
      "- 1\n- 2",
      "",
      "just text",
      "{[a]: 1}",
      "? [x]\n: 1",
      "version: 1\n\tvalid: x",
      "valid: {not_before: *x}",
      std::string(3000, '[') + std::string(3000, ']'),
      std::string(3000, '{') + std::string(3000, '}'),
      "version: 1\nversion: 2\n",
      std::string("version: \xff\xfe\n", 13),
      std::string("version: 1\0x", 12),
      head + "tools: &a [*a]\n",
      head + "tools: [{server: a, name: b}]\nagents: &a [{name: a, tools: *a}]\n",
      head + "tools: !!binary AAAA",
      head + "? [x]\n: 1",
      head + "tools: [{server: a, name: b, kind: *k}]",
      head + "tools: [{server: a, name: b, destinations: [{host: ~}]}]",
      head + "tools: [{server: a, name: b, destinations: [{host: [a]}]}]",
  };
  for (const std::string& yaml : cases) {
    INFO(yaml.substr(0, 80));
    Result<CompiledPolicy> r = CompiledPolicy{};
    REQUIRE_NOTHROW(r = compile_policy(yaml, "f.yaml", {}));
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::StartsWith("f.yaml:"));
  }
}

TEST_CASE("a policy file that cannot be read is an error", "[policy-compiler]") {
  auto r = compile_policy_file("/nonexistent/policy.yaml", {});
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message(), Catch::Contains("/nonexistent/policy.yaml"));
}

TEST_CASE("aliases cannot multiply a small source into a huge bundle", "[policy-compiler]") {
  std::string yaml = "version: 1\nvalid: {not_before: 0, not_after: 10, max_offline: 1}\n"
                     "tools: [{server: s, name: t}]\nagents:\n  - {name: a0, tools: &g [";
  for (int i = 0; i < 5000; ++i) yaml += i ? ", \"s/*\"" : "\"s/*\"";
  yaml += "]}\n";
  for (int i = 1; i < 1000; ++i) yaml += "  - {name: a" + std::to_string(i) + ", tools: *g}\n";
  refused(yaml, "the policy is too large: its bundle would exceed 64 MiB");
}

TEST_CASE("rules with no effect on deny and revoked agents still declared warn", "[policy-compiler]") {
  auto r = compile(kBase + "  - {id: slow, effect: deny, agents: [viewer], rate: {per: tool, count: 1, window: 1s}}\n"
                           "revoked_agents: [viewer, gone]\n");
  REQUIRE(r.has_value());
  REQUIRE(r->warnings.size() == 2);  // "read" is coder's, "slow" viewer's: no overlap
  CHECK(r->warnings[0] == "p.yaml:16: rule \"slow\": rate has no effect on a deny rule");
  CHECK(r->warnings[1] == "p.yaml:17: agent \"viewer\" is declared and revoked: it is stopped on install");
  const fb::Bundle& b = *decode(r->payload);
  CHECK(b.revoked_agents()->size() == 2);
  CHECK(b.rules()->Get(1)->rate()->scope() == fb::RateScope::Tool);
}

namespace {

// fb::Bundle::Pack of a bundle: the object API's own packing, every string written anew.
Bytes pack_plainly(const fb::BundleT& b) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fb::Bundle::Pack(fbb, &b));
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

std::unique_ptr<fb::DestinationT> destination(const std::string& host, const std::string& cidr, uint16_t port) {
  auto d = std::make_unique<fb::DestinationT>();
  d->host = host;
  d->cidr = cidr;
  d->ports = {port, 443};
  return d;
}

std::unique_ptr<fb::TimeWindowT> window() {
  auto w = std::make_unique<fb::TimeWindowT>();
  w->days = 0x1f;
  w->start_minute = 480;
  w->end_minute = 1080;
  return w;
}

std::unique_ptr<fb::RateLimitT> rate() {
  auto r = std::make_unique<fb::RateLimitT>();
  r->scope = fb::RateScope::Task;
  r->count = 7;
  r->window = 60;
  return r;
}

// A rule with every field set, naming the same agents, tools and pointer as its siblings.
std::unique_ptr<fb::RuleT> full_rule(int i) {
  auto r = std::make_unique<fb::RuleT>();
  r->id = "rule-" + std::to_string(i);
  r->effect = fb::Effect::Allow;
  r->shadow = i % 2 == 1;
  r->agents = {"coder", "viewer"};
  r->tools = {"fs/read_file"};
  r->tasks = {"build-*"};
  auto a = std::make_unique<fb::ArgConstraintT>();
  a->pointer = "/path";
  a->op = fb::ArgOp::Range;
  a->values = {"/srv/" + std::to_string(i % 3), "/tmp"};
  a->min = -1.5;
  a->max = 99;
  a->max_length = 4096;
  a->optional = true;
  r->args.push_back(std::move(a));
  r->destinations.push_back(destination("api.example.com", "", 8443));
  r->destinations.push_back(destination("", "10.0.0.0/8", 22));
  r->within_clearance = true;
  r->max_sensitivity = 3;
  r->time_windows.push_back(window());
  r->rate = rate();
  r->credential_ttl = 120;
  r->reason = "workspace reads";
  return r;
}

fb::BundleT full_bundle() {
  fb::BundleT b;
  b.version = 42;
  b.issued_at = 1'789'000'000;
  b.not_before = 1'790'000'000;
  b.not_after = 1'800'000'000;
  b.max_offline = 72 * 3600;
  b.scope = std::make_unique<fb::ScopeT>();
  b.scope->fleets = {"east"};
  b.scope->boards = {"sim", "rpi4"};
  b.scope->nodes = {"east"};  // the same list as fleets: written once
  for (const char* name : {"coder", "viewer"}) {
    auto a = std::make_unique<fb::AgentT>();
    a->name = name;
    a->measurement.assign(32, 0xab);
    a->tools = {"fs/*"};
    a->clearance = 2;
    a->credential_ttl = 300;
    a->tasks = {"build-*", "review"};
    b.agents.push_back(std::move(a));
  }
  auto t = std::make_unique<fb::ToolT>();
  t->server = "fs";
  t->name = "read_file";
  t->kind = fb::ToolKind::LocalCommand;
  t->output_sensitivity = 2;
  t->destinations.push_back(destination("api.example.com", "", 8443));
  t->command = "/usr/bin/cat";
  b.tools.push_back(std::move(t));
  for (int i = 0; i < 3; ++i) b.rules.push_back(full_rule(i));
  auto f = std::make_unique<fb::FlowRuleT>();
  f->id = "spend";
  f->kind = fb::FlowKind::WindowLimit;
  f->agents = {"coder", "viewer"};
  f->tools = {"fs/read_file"};
  f->min_sensitivity = 2;
  f->trusted.push_back(destination("api.example.com", "", 8443));
  f->approval_tool = "fs/approve";
  f->window = 3600;
  f->max_count = 10;
  f->max_total = 500;
  f->total_pointer = "/amount";
  f->reason = "workspace reads";
  b.flow_rules.push_back(std::move(f));
  b.revoked_agents = {"old"};
  b.on_expiry = fb::OnExpiry::SafeSet;
  b.safe_set.push_back(full_rule(9));
  b.source_sha256.assign(32, 0x5a);
  b.issuer = "iam";
  b.min_reader = 2;
  auto e = std::make_unique<fb::EgressRuleT>();
  e->id = "model";
  e->effect = fb::Effect::Allow;
  e->shadow = true;
  e->agents = {"coder", "viewer"};
  e->tasks = {"review"};
  e->kind = fb::EgressKind::Model;
  e->destinations.push_back(destination("api.example.com", "", 8443));
  e->within_clearance = true;
  e->max_sensitivity = 1;
  e->time_windows.push_back(window());
  e->rate = rate();
  e->budget = std::make_unique<fb::ByteBudgetT>();
  e->budget->bytes = 1 << 20;
  e->budget->window = 60;
  e->inject = std::make_unique<fb::HeaderInjectionT>();
  e->inject->header = "Authorization";
  e->inject->secret = "model-key";
  e->inject->prefix = "Bearer ";
  e->reason = "the model";
  // A second egress rule whose shadow and within_clearance differ: a swap of the two would show.
  auto e2 = std::make_unique<fb::EgressRuleT>(*e);
  e2->id = "model-2";
  e2->shadow = false;
  e2->within_clearance = true;
  e2->effect = fb::Effect::Deny;
  b.egress.push_back(std::move(e));
  b.egress.push_back(std::move(e2));
  return b;
}

}  // namespace

TEST_CASE("the compiler's packing writes each string once and loses no field", "[policy-compiler]") {
  const fb::BundleT original = full_bundle();
  const Bytes plain = pack_plainly(original);
  const Bytes pooled = pack_bundle(original);
  // Every field comes back: unpacked and packed again the object API's way, the pooled buffer
  // gives the same bytes as the original object does.
  const fb::Bundle* read = decode(pooled);
  fb::BundleT back;
  read->UnPackTo(&back);
  CHECK(pack_plainly(back) == plain);
  CHECK(pooled.size() < plain.size());
  // Repeated strings are one object: the three rules' agent lists are the same vector.
  REQUIRE(read->rules()->size() == 3);
  CHECK(read->rules()->Get(0)->agents() == read->rules()->Get(2)->agents());
  CHECK(read->rules()->Get(0)->id() != read->rules()->Get(1)->id());
  CHECK(read->rules()->Get(0)->args()->Get(0)->pointer() == read->rules()->Get(1)->args()->Get(0)->pointer());
  CHECK(read->scope()->fleets() == read->scope()->nodes());
  // Empty optional strings and lists stay absent, as the object API leaves them.
  fb::BundleT sparse;
  sparse.version = 1;
  auto r = std::make_unique<fb::RuleT>();
  r->id = "only";
  sparse.rules.push_back(std::move(r));
  const Bytes sparse_pooled = pack_bundle(sparse);
  const fb::Bundle* s = decode(sparse_pooled);
  CHECK(s->rules()->Get(0)->reason() == nullptr);
  CHECK(s->rules()->Get(0)->agents() == nullptr);
  CHECK(s->issuer() == nullptr);
  CHECK(s->scope() == nullptr);
  CHECK(sparse_pooled == pack_plainly(sparse));
}

TEST_CASE("a large bundle's repeated names cost nothing after the first", "[policy-compiler]") {
  std::string yaml = R"(version: 1
valid: {not_before: 2026-11-01T00:00:00Z, not_after: 2027-02-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: fs, name: read_file}
agents:
  - {name: coder, tools: ["fs/*"]}
rules:
)";
  for (int i = 0; i < 500; ++i) {
    yaml += "  - {id: r" + std::to_string(i) +
            ", effect: allow, agents: [coder], tools: [fs/read_file], args: [{pointer: /path, prefix: [/data/" +
            std::to_string(i) + "/]}]}\n";
  }
  auto c = compile(yaml);
  REQUIRE(c.has_value());
  const fb::Bundle* b = decode(c->payload);
  fb::BundleT object;
  b->UnPackTo(&object);
  const Bytes plain = pack_plainly(object);
  INFO("pooled " << c->payload.size() << " bytes, plain " << plain.size());
  CHECK(c->payload.size() * 10 < plain.size() * 7);  // the names and pointer were about a third
  REQUIRE(b->rules()->size() == 500);
  CHECK(b->rules()->Get(0)->agents() == b->rules()->Get(499)->agents());
  CHECK(rule_by_id(*b, "r499")->args()->Get(0)->values()->Get(0)->str() == "/data/499/");
}
