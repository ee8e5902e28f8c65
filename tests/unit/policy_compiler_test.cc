#include <flatbuffers/flatbuffers.h>

#include <catch2/catch.hpp>
#include <filesystem>
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
