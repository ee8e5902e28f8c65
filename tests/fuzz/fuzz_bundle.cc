// Bundles as a node receives them (hub, file copy, USB): parse, verify against a root,
// compile into the engine and decide one request. Nothing may crash, over-read or leak.
#include <cstddef>
#include <cstdint>

#include <boost/json.hpp>

#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/trust.h"
#include "policy/engine.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const offline_cache::TrustRoot root = [] {
    auto k = EcPrivateKey::generate();
    return *offline_cache::TrustRoot::create({k->public_key()}, 1);
  }();
  auto b = offline_cache::SignedBundle::parse(Bytes(data, data + size));
  if (!b) return 0;
  (void)offline_cache::verify_bundle_signatures(*b, root);
  auto engine = policy::Engine::build(b->payload());
  if (!engine) return 0;
  static const boost::json::value args = boost::json::parse(R"({"path":"/srv/workspace/a","n":3})");
  policy::SessionEvent history[] = {{"secrets", "read_secret", 0, 2, &args}};
  for (const char* agent : {"coder", "maint"}) {
    policy::Request q;
    q.agent = agent;
    q.server = "fs";
    q.tool = "read_file";
    q.args = &args;
    q.host = "github.com";
    q.port = 443;
    q.history = history;
    policy::Decision d = (*engine)->decide(q);
    (void)(*engine)->explain(d, q);
    (void)(*engine)->decide_unindexed(q, policy::Mode::safe_set);
  }
  return 0;
}
