// Signed bundles built in code for tests: a small policy, versions, lifetimes and scope set
// by the test, signed by software keys.
#pragma once

#include <string>
#include <vector>

#include "outpost/base/crypto.h"
#include "outpost/fb/bundle_generated.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/trust.h"

namespace outpost::testing {

struct BundleSpec {
  uint64_t version = 1;
  int64_t not_before = 0;
  int64_t not_after = 4102444800;  // 2100-01-01
  uint64_t max_offline = 86400;
  std::vector<std::string> nodes = {};
  std::vector<std::string> boards = {};
  std::vector<std::string> fleets = {};
  bool safe_set = false;
  uint32_t min_reader = 1;
};

// The unsigned SignedBundle bytes of a one-agent, one-rule bundle.
Bytes make_bundle(const BundleSpec& spec);
// Signed by each of `keys`.
Bytes sign_bundle(Bytes bundle, const std::vector<const EcPrivateKey*>& keys);

}  // namespace outpost::testing
