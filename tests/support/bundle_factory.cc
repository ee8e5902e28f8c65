#include "bundle_factory.h"

#include "outpost/base/check.h"

namespace outpost::testing {

Bytes make_bundle(const BundleSpec& spec) {
  fb::BundleT b;
  b.version = spec.version;
  b.issued_at = spec.not_before;
  b.not_before = spec.not_before;
  b.not_after = spec.not_after;
  b.max_offline = spec.max_offline;
  b.min_reader = spec.min_reader;
  b.scope = std::make_unique<fb::ScopeT>();
  b.scope->nodes = spec.nodes;
  b.scope->boards = spec.boards;
  b.scope->fleets = spec.fleets;
  auto tool = std::make_unique<fb::ToolT>();
  tool->server = "fs";
  tool->name = "read_file";
  b.tools.push_back(std::move(tool));
  auto agent = std::make_unique<fb::AgentT>();
  agent->name = "coder";
  agent->tools = {"fs/*"};
  b.agents.push_back(std::move(agent));
  auto rule = std::make_unique<fb::RuleT>();
  rule->id = "read";
  rule->effect = fb::Effect::Allow;
  b.rules.push_back(std::move(rule));
  if (spec.safe_set) {
    b.on_expiry = fb::OnExpiry::SafeSet;
    auto safe = std::make_unique<fb::RuleT>();
    safe->id = "safe-read";
    safe->effect = fb::Effect::Allow;
    b.safe_set.push_back(std::move(safe));
  }
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fb::Bundle::Pack(fbb, &b));
  return offline_cache::SignedBundle::assemble(ByteView(fbb.GetBufferPointer(), fbb.GetSize()), {});
}

Bytes sign_bundle(Bytes bundle, const std::vector<const EcPrivateKey*>& keys) {
  for (const EcPrivateKey* k : keys) {
    auto parsed = offline_cache::SignedBundle::parse(bundle);
    OUTPOST_CHECK(parsed.has_value(), "a bundle made in code parses");
    auto next = parsed->add_signature(*k);
    OUTPOST_CHECK(next.has_value(), "signing a bundle made in code");
    bundle = std::move(*next);
  }
  return bundle;
}

}  // namespace outpost::testing
