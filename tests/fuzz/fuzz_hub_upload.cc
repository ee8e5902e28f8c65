// What outpost-hub does with an uploaded body (hub/ingest.h): the first input byte picks how many
// records the hub already holds for the node (their hashes a fixed function of seq), the rest is
// the body. Whatever the bytes: no crash, and what the plan stores continues the chain right
// after the hub's state, in order, with no gap, ending at a checkpoint.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "outpost/hub/ingest.h"
#include "outpost/offline_cache/audit_log.h"

using namespace outpost;

namespace {

const EcPublicKey& fuzz_ak() {
  static const EcPrivateKey key = std::move(*EcPrivateKey::generate());
  return key.public_key();
}

Digest held(uint64_t seq) {
  Digest d{};
  for (size_t i = 0; i < 8; ++i) d[i] = static_cast<uint8_t>(seq >> (8 * i));
  return d;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  hub::NodeRow node;
  node.node_id = "00112233445566778899aabbccddeeff";
  node.acked_seq = data[0] % 4;
  node.acked_hash = node.acked_seq ? held(node.acked_seq) : Digest{};
  const ByteView body(data + 1, size - 1);
  hub::UploadPlan plan = hub::plan_upload(body, node, fuzz_ak(), [&](uint64_t seq) -> std::optional<Digest> {
    if (seq == 0 || seq > node.acked_seq) return std::nullopt;
    return held(seq);
  });
  if (plan.verdict != hub::UploadPlan::Verdict::store) {
    if (plan.reason.empty() || !plan.rows.empty()) std::abort();
    return 0;
  }
  uint64_t expect = node.acked_seq + 1;
  for (const auto& r : plan.rows) {
    if (r.seq != expect++ || r.frame.empty()) std::abort();
  }
  if (!plan.rows.empty() && plan.rows.back().kind != static_cast<uint8_t>(offline_cache::RecordKind::checkpoint)) std::abort();
  return 0;
}
