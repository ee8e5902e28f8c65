// Egress rules: the compiler's `egress:` section and Engine::decide_egress (docs/policy.md,
// "Egress"), from policy source through the compiled bundle.
#include <catch2/catch.hpp>

#include "policy/compiler.h"
#include "policy/engine.h"
#include "policy/match.h"

using namespace outpost;
using namespace outpost::policy;

namespace {

const char* kHead = R"(version: 3
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: vault, name: read, output_sensitivity: confidential}
  - {server: notes, name: add}
agents:
  - {name: coder, tools: ["vault/*", "notes/*"], clearance: confidential, tasks: [build]}
  - {name: other, tools: ["notes/*"]}
)";

const char* kEgress = R"(
egress:
  - id: openai
    effect: allow
    agents: [coder]
    kind: model
    destinations: [{host: "api.openai.com", ports: [443]}]
    budget: {bytes: 10MiB, window: 1h}
  - id: node-model
    effect: allow
    agents: [coder]
    kind: model
    destinations:
      - {host: localhost, ports: [8080]}
      - {cidr: 127.0.0.1/32, ports: [8080]}
    inject: {secret: model-key, prefix: "Bearer "}
  - id: docs
    effect: allow
    destinations: [{host: "*.example.com", ports: [443]}]
  - id: web-by-address
    effect: allow
    agents: [coder]
    destinations: [{cidr: 0.0.0.0/0, ports: [80]}, {cidr: "::/0", ports: [80]}]
  - id: metadata-named
    effect: allow
    agents: [other]
    destinations: [{cidr: 169.254.169.254/32, ports: [80]}]
  - id: no-pastebin
    effect: deny
    destinations: [{host: "*.pastebin.example.com"}]
flow_rules:
  - id: no-exfiltration
    kind: taint
    min_sensitivity: confidential
    agents: [coder]
    trusted: [{host: "api.openai.com"}, {cidr: 127.0.0.1/32}]
)";

struct Compiled {
  CompiledPolicy policy;
  std::shared_ptr<const Engine> engine;
};

Compiled build(const std::string& yaml) {
  auto r = compile_policy(yaml, "p.yaml", {});
  INFO((r ? "" : r.error().message()));
  REQUIRE(r);
  Compiled c{std::move(*r), nullptr};
  auto e = Engine::build(c.policy.payload);
  REQUIRE(e);
  c.engine = *e;
  return c;
}

std::string compile_error(const std::string& egress) {
  auto r = compile_policy(std::string(kHead) + egress, "p.yaml", {});
  REQUIRE_FALSE(r);
  return r.error().message();
}

EgressRequest request(std::string_view agent, std::string_view host, uint16_t port, std::string_view address = {}) {
  EgressRequest q;
  q.agent = agent;
  q.task = "build";
  q.host = host;
  q.port = port;
  q.address = address;
  q.time = 1'800'000'000;
  return q;
}

}  // namespace

TEST_CASE("egress rules compile with their budgets, injections and kinds", "[egress]") {
  Compiled c = build(std::string(kHead) + kEgress);
  const fb::Bundle& b = *flatbuffers::GetRoot<fb::Bundle>(c.policy.payload.data());
  REQUIRE(b.egress() != nullptr);
  REQUIRE(b.egress()->size() == 6);
  const fb::EgressRule& openai = *b.egress()->Get(0);
  CHECK(openai.kind() == fb::EgressKind::Model);
  CHECK(openai.budget()->bytes() == 10ull << 20);
  CHECK(openai.budget()->window() == 3600);
  const fb::EgressRule& local = *b.egress()->Get(1);
  CHECK(local.inject()->header()->str() == "Authorization");
  CHECK(local.inject()->secret()->str() == "model-key");
  CHECK(local.inject()->prefix()->str() == "Bearer ");
  CHECK(b.egress()->Get(5)->effect() == fb::Effect::Deny);
  CHECK(c.engine->has_egress("coder"));
  CHECK(c.engine->has_egress("other"));
}

TEST_CASE("the compiler refuses egress entries that would not mean what they say", "[egress]") {
  CHECK_THAT(compile_error("egress:\n  - {id: a, destinations: [{host: x.example}]}\n"), Catch::Contains("effect"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow}\n"), Catch::Contains("needs destinations"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow, destinations: []}\n"), Catch::Contains("any destination"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: deny, inject: {secret: k}}\n"), Catch::Contains("only to allow"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow, destinations: [{host: x.example}], inject: {secret: k, header: Host}}\n"),
             Catch::Contains("frames or routes"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow, destinations: [{host: x.example}], kind: llm}\n"),
             Catch::Contains("model or api"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow, destinations: [{host: x.example}], budget: {bytes: 10MB}}\n"),
             Catch::Contains("512KiB"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow, agents: [nobody], destinations: [{host: x.example}]}\n"),
             Catch::Contains("unknown agent"));
  CHECK_THAT(compile_error("egress:\n  - {id: a, effect: allow, destinations: [{host: x.example}], ports: [1]}\n"),
             Catch::Contains("ports"));
}

TEST_CASE("egress is decided on the name first, then on the address it resolved to", "[egress]") {
  Compiled c = build(std::string(kHead) + kEgress);
  const Engine& e = *c.engine;
  SECTION("a host rule allows the name, and a public address of it") {
    auto d = e.decide_egress(request("coder", "API.OpenAI.com.", 443));
    CHECK(d.allow);
    CHECK(e.egress_rule_id(d.rule) == "openai");
    CHECK(d.kind == fb::EgressKind::Model);
    CHECK(d.budget_bytes == 10ull << 20);
    d = e.decide_egress(request("coder", "api.openai.com", 443, "162.159.140.245"));
    CHECK(d.allow);
    CHECK(e.decide_egress(request("coder", "api.openai.com", 80)).allow == false);
  }
  SECTION("no rule for the name: refused before anything is resolved") {
    auto d = e.decide_egress(request("coder", "exfil.attacker.example", 443));
    CHECK_FALSE(d.allow);
    CHECK(d.verdict == Verdict::no_rule_allows);
    CHECK_THAT(e.explain_egress(d, request("coder", "exfil.attacker.example", 443)), Catch::Contains("default deny"));
  }
  SECTION("a name that resolves to a special address needs a rule naming that address") {
    // DNS rebinding: an allowed name pointing at loopback, metadata or a private range.
    for (const char* addr : {"127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00:ec2::254", "192.168.1.1"}) {
      auto d = e.decide_egress(request("coder", "docs.example.com", 443, addr));
      INFO(addr);
      CHECK_FALSE(d.allow);
      CHECK(d.verdict == Verdict::address_refused);
    }
    auto d = e.decide_egress(request("coder", "docs.example.com", 443, "169.254.169.254"));
    CHECK(d.address_class == "cloud metadata");
    // This host's own public address is refused the same way.
    d = e.decide_egress(request("coder", "docs.example.com", 443, "203.0.113.7"));
    CHECK(d.allow);
    auto own = request("coder", "docs.example.com", 443, "203.0.113.7");
    own.own_address = true;
    d = e.decide_egress(own);
    CHECK(d.verdict == Verdict::address_refused);
    CHECK(d.address_class == "this host's own");
    // The node's model server: the rule names 127.0.0.1/32 for its port.
    d = e.decide_egress(request("coder", "localhost", 8080, "127.0.0.1"));
    CHECK(d.allow);
    CHECK(e.egress_rule_id(d.rule) == "node-model");
    CHECK(d.inject_secret == "model-key");
    CHECK(d.inject_prefix == "Bearer ");
  }
  SECTION("raw addresses match CIDRs only, and a /0 names no special range") {
    CHECK(e.decide_egress(request("coder", "93.184.215.14", 80)).allow);
    CHECK(e.decide_egress(request("coder", "2606:2800:21f:cb07::1", 80)).allow);
    auto d = e.decide_egress(request("coder", "127.0.0.1", 80));
    CHECK(d.verdict == Verdict::address_refused);
    CHECK(d.address_class == "loopback");
    d = e.decide_egress(request("coder", "169.254.169.254", 80));
    CHECK(d.verdict == Verdict::address_refused);
    // A host glob never matches an IP literal: *.example.com does not cover 93.184.215.14:443.
    CHECK(e.decide_egress(request("coder", "93.184.215.14", 443)).verdict == Verdict::no_rule_allows);
    // Named by its own /32, metadata is reachable (for the agent that rule is for).
    CHECK(e.decide_egress(request("other", "169.254.169.254", 80)).allow);
    // IPv4-mapped IPv6 is the IPv4 address it carries, for deny rules and special ranges.
    CHECK(special_range(*parse_cidr("::ffff:127.0.0.1")).name == "loopback");
    CHECK(e.decide_egress(request("coder", "::ffff:127.0.0.1", 80)).verdict == Verdict::address_refused);
    CHECK(e.decide_egress(request("coder", "docs.example.com", 443, "::ffff:10.0.0.1")).verdict == Verdict::address_refused);
    // NAT64: what DNS64 made of a metadata or private answer is judged as that answer.
    CHECK(special_range(*parse_cidr("64:ff9b::a9fe:a9fe")).name == "cloud metadata");
    CHECK(special_range(*parse_cidr("64:ff9b::a9fe:a9fe")).prefix == 128);
    CHECK(special_range(*parse_cidr("64:ff9b::5db8:d70e")).name == "NAT64");
    CHECK(special_range(*parse_cidr("168.63.129.16")).name == "cloud metadata");
  }
  SECTION("deny rules win, for every agent") {
    auto d = e.decide_egress(request("other", "x.pastebin.example.com", 443));
    CHECK(d.verdict == Verdict::denied_by_rule);
    CHECK(e.egress_rule_id(d.rule) == "no-pastebin");
    CHECK(e.decide_egress(request("other", "docs.example.com", 443)).allow);
  }
  SECTION("a tainted session reaches trusted destinations only") {
    SessionEvent read{"vault", "read", 1'800'000'000 - 10, 0, nullptr};
    auto q = request("coder", "docs.example.com", 443, "93.184.215.14");
    q.history = std::span(&read, 1);
    auto d = e.decide_egress(q);
    CHECK(d.verdict == Verdict::flow_denied);
    CHECK(e.flow_rule_id(d.flow) == "no-exfiltration");
    auto model = request("coder", "api.openai.com", 443, "162.159.140.245");
    model.history = std::span(&read, 1);
    CHECK(e.decide_egress(model).allow);
    auto local = request("coder", "localhost", 8080, "127.0.0.1");
    local.sensitivity = 2;  // the session's own sensitivity taints as well
    CHECK(e.decide_egress(local).allow);
  }
  SECTION("unknown agents, expired bundles and the safe set get no network") {
    CHECK(e.decide_egress(request("ghost", "api.openai.com", 443)).verdict == Verdict::unknown_agent);
    CHECK(e.decide_egress(request("coder", "api.openai.com", 443), Mode::deny_all).verdict == Verdict::bundle_not_in_force);
    auto d = e.decide_egress(request("coder", "api.openai.com", 443), Mode::safe_set);
    CHECK_FALSE(d.allow);
    CHECK_THAT(e.explain_egress(d, request("coder", "api.openai.com", 443)), Catch::Contains("safe set"));
  }
}

TEST_CASE("a deny rule on an IPv4 range holds for the range written as IPv4-mapped IPv6", "[egress]") {
  Compiled c = build(std::string(kHead) + R"(
egress:
  - {id: no-range, effect: deny, destinations: [{cidr: 203.0.113.0/24}]}
  - {id: internet, effect: allow, destinations: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
  - {id: corp, effect: allow, destinations: [{cidr: 10.0.0.0/8, ports: [22]}]}
)");
  // This host's own private address is refused even where its range is named.
  CHECK(c.engine->decide_egress(request("coder", "10.0.0.5", 22)).allow);
  auto own = request("coder", "10.0.0.5", 22);
  own.own_address = true;
  CHECK(c.engine->decide_egress(own).verdict == Verdict::address_refused);
  CHECK(c.engine->decide_egress(request("coder", "203.0.113.7", 443)).verdict == Verdict::denied_by_rule);
  CHECK(c.engine->decide_egress(request("coder", "::ffff:203.0.113.7", 443)).verdict == Verdict::denied_by_rule);
  CHECK(c.engine->decide_egress(request("coder", "2001:db8::7", 443)).allow);
}

TEST_CASE("egress rates count connections per agent", "[egress]") {
  Compiled c = build(std::string(kHead) + R"(
egress:
  - id: slow
    effect: allow
    destinations: [{host: "api.example.com"}]
    rate: {per: agent, count: 2, window: 1m}
)");
  RateLimiter rates;
  auto q = request("coder", "api.example.com", 443, "93.184.215.14");
  CHECK(c.engine->decide_egress(q, Mode::normal, &rates).allow);
  CHECK(c.engine->decide_egress(q, Mode::normal, &rates).allow);
  auto d = c.engine->decide_egress(q, Mode::normal, &rates);
  CHECK_FALSE(d.allow);
  CHECK(d.rate_limited);
  CHECK(c.engine->decide_egress(request("other", "api.example.com", 443, "93.184.215.14"), Mode::normal, &rates).allow);
}
