#include "outpost/hub/ingest.h"

#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/chain_verifier.h"

namespace outpost::hub {

UploadPlan plan_upload(ByteView body, const NodeRow& node, const EcPublicKey& ak,
                       const std::function<std::optional<Digest>(uint64_t)>& stored_hash) {
  UploadPlan plan;
  auto refuse = [&](UploadPlan::Verdict v, std::string why) {
    plan.verdict = v;
    plan.reason = std::move(why);
    plan.rows.clear();
    return plan;
  };
  const offline_cache::SegmentParse parsed = offline_cache::parse_segment(body, "upload");
  if (parsed.end != offline_cache::SegmentParse::End::clean) return refuse(UploadPlan::Verdict::refused, parsed.error);
  offline_cache::ChainState start;
  start.last_seq = node.acked_seq;
  start.last_hash = node.acked_hash;
  start.anchored = true;
  start.last_clock = node.last_clock;
  offline_cache::ChainVerifier verifier(ak, start, stored_hash);
  size_t anchored = 0;
  plan.clock = node.last_clock;
  for (size_t i = 0; i < parsed.records.size(); ++i) {
    const auto& r = parsed.records[i];
    const uint64_t end = i + 1 < parsed.records.size() ? parsed.records[i + 1].offset : parsed.good_bytes;
    if (r.seq <= node.acked_seq) {
      const std::optional<Digest> held = stored_hash(r.seq);
      if (!held || *held != r.hash) {
        return refuse(UploadPlan::Verdict::fork,
                      "fork at seq " + std::to_string(r.seq) + ": the upload differs from the record the hub holds");
      }
      ++plan.duplicates;
      continue;
    }
    auto fed = verifier.feed(r);
    if (!fed) return refuse(UploadPlan::Verdict::refused, fed.error().message());
    RecordRow row;
    row.seq = r.seq;
    row.time_ms = r.time_ms;
    row.kind = static_cast<uint8_t>(r.kind);
    row.hash = r.hash;
    row.frame.assign(body.begin() + static_cast<ptrdiff_t>(r.offset), body.begin() + static_cast<ptrdiff_t>(end));
    plan.rows.push_back(std::move(row));
    if (r.kind == offline_cache::RecordKind::checkpoint) {
      anchored = plan.rows.size();
      plan.clock = verifier.state().last_clock;
    }
  }
  plan.pending = plan.rows.size() - anchored;
  plan.rows.resize(anchored);
  return plan;
}

}  // namespace outpost::hub
