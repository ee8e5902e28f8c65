// The policy source compiler: YAML policy text (docs/policy.md) → a FlatBuffers Bundle
// (offline-cache/schema/bundle.fbs), the payload `outpost bundle build` writes and the IAM signs.
//
// Strict: an unknown field, a wrong type, an undeclared agent or tool, a rule that can never
// match is an error naming "FILE:LINE: field.path: what is wrong" (errc::invalid_argument);
// the first error found is returned. Suspicious but valid policy (an allow and a deny rule
// over the same agent and tool, shadow rules) compiles with warnings. No exception leaves
// these functions. Stateless and thread-safe: calls share nothing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"

namespace outpost::fb {
struct BundleT;
}

namespace outpost::policy {

struct CompileOptions {
  std::optional<uint64_t> version_override;  // `bundle build --version N`
  int64_t now = 0;                           // Unix seconds; default issued_at when the source has none
};

struct CompiledPolicy {
  Bytes payload;                      // a finished FlatBuffers buffer, root outpost::fb::Bundle
  std::vector<std::string> warnings;  // "policy.yaml:12: rule \"x\": ...", one line each
  uint64_t version = 0;
};

// Largest source compile_policy_file() reads.
inline constexpr size_t kMaxPolicySourceBytes = 16u << 20;

Result<CompiledPolicy> compile_policy(std::string_view yaml, std::string_view source_name,
                                      const CompileOptions& options);
Result<CompiledPolicy> compile_policy_file(const std::filesystem::path& path, const CompileOptions& options);

// The compiler's packing: a finished Bundle buffer with every string and list of strings
// written once, however often the bundle repeats it (an agent's name in 10,000 rules). The
// same bundle to every reader as fb::Bundle::Pack's, and about a third smaller for a large one.
Bytes pack_bundle(const fb::BundleT& bundle);

}  // namespace outpost::policy
