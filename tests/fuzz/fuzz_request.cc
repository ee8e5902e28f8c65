// Decision requests as JSON (`outpost decide`, policy test cases, later the broker): parse
// and decide against a fixed small policy.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <boost/json.hpp>

#include "outpost/fb/bundle_generated.h"
#include "policy/engine.h"
#include "policy/request_json.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::shared_ptr<const policy::Engine> engine = [] {
    fb::BundleT b;
    b.version = 1;
    auto tool = std::make_unique<fb::ToolT>();
    tool->server = "fs";
    tool->name = "read_file";
    tool->output_sensitivity = 2;
    b.tools.push_back(std::move(tool));
    auto agent = std::make_unique<fb::AgentT>();
    agent->name = "coder";
    agent->tools = {"*"};
    b.agents.push_back(std::move(agent));
    auto rule = std::make_unique<fb::RuleT>();
    rule->id = "r";
    rule->effect = fb::Effect::Allow;
    auto arg = std::make_unique<fb::ArgConstraintT>();
    arg->pointer = "/path";
    arg->op = fb::ArgOp::PathPrefix;
    arg->values = {"/srv"};
    rule->args.push_back(std::move(arg));
    b.rules.push_back(std::move(rule));
    auto flow = std::make_unique<fb::FlowRuleT>();
    flow->id = "w";
    flow->kind = fb::FlowKind::WindowLimit;
    flow->window = 60;
    flow->max_total = 10;
    flow->total_pointer = "/n";
    b.flow_rules.push_back(std::move(flow));
    flatbuffers::FlatBufferBuilder fbb;
    fbb.Finish(fb::Bundle::Pack(fbb, &b));
    return *policy::Engine::build(ByteView(fbb.GetBufferPointer(), fbb.GetSize()));
  }();
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(std::string_view(reinterpret_cast<const char*>(data), size), ec);
  if (ec) return 0;
  auto req = policy::OwnedRequest::parse(v, 1795000000);
  if (!req) return 0;
  policy::Decision d = engine->decide((*req)->get());
  (void)engine->explain(d, (*req)->get());
  return 0;
}
