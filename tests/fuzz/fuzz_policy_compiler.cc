// Policy sources given to `outpost bundle build`. Properties: no crash or escaping exception;
// every error names the source and a line; a compiled payload passes the FlatBuffers verifier
// a node runs before reading a bundle.
#include <flatbuffers/flatbuffers.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "outpost/fb/bundle_generated.h"
#include "policy/compiler.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view yaml(reinterpret_cast<const char*>(data), size);
  outpost::policy::CompileOptions options;
  options.now = 1795860000;
  auto r = outpost::policy::compile_policy(yaml, "fuzz.yaml", options);
  if (!r.has_value()) {
    if (r.error().message().rfind("fuzz.yaml:", 0) != 0) {
      std::fprintf(stderr, "error without a source line: %s\n", r.error().message().c_str());
      std::abort();
    }
    return 0;
  }
  flatbuffers::Verifier verifier(r->payload.data(), r->payload.size());
  if (!verifier.VerifyBuffer<outpost::fb::Bundle>(nullptr)) {
    std::fprintf(stderr, "compiled payload fails the FlatBuffers verifier\n");
    std::abort();
  }
  if (flatbuffers::GetRoot<outpost::fb::Bundle>(r->payload.data())->version() != r->version) std::abort();
  return 0;
}
