#include "outpost/hub/ingest.h"

#include <boost/json/parse.hpp>

#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/chain_verifier.h"

namespace outpost::hub {
namespace {

// Whether the records from parsed.records[first] on, which differ from what the hub holds,
// branch off the held chain right before `first` and run on to a checkpoint whose quote the
// node's AK signed: only then did the node's TPM vouch for a second history (a fork worth an
// alert). Anything else is bytes anyone could have made up.
bool backed_by_quote(const offline_cache::SegmentParse& parsed, size_t first, const EcPublicKey& ak,
                     const std::function<std::optional<Digest>(uint64_t)>& stored_hash) {
  const uint64_t seq = parsed.records[first].seq;
  offline_cache::ChainState branch;
  branch.last_seq = seq - 1;
  branch.anchored = true;
  if (seq > 1) {
    const std::optional<Digest> before = stored_hash(seq - 1);
    if (!before) return false;
    branch.last_hash = *before;
  }
  offline_cache::ChainVerifier verifier(ak, branch, stored_hash);
  for (size_t i = first; i < parsed.records.size(); ++i) {
    if (!verifier.feed(parsed.records[i])) break;
    if (verifier.checkpoints_verified() > 0) return true;
  }
  return false;
}

}  // namespace

std::string search_text(std::string_view in, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(in.size(), max_bytes));
  size_t i = 0;
  while (i < in.size()) {
    const auto c = static_cast<unsigned char>(in[i]);
    // The length of the sequence starting here, if it is a well-formed one (RFC 3629: no
    // overlongs, no surrogates, nothing above U+10FFFF); 0 if not.
    size_t n = 0;
    if (c >= 0x01 && c < 0x80) {
      n = 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
    }
    bool good = n > 0 && i + n <= in.size();
    for (size_t k = 1; good && k < n; ++k) good = (static_cast<unsigned char>(in[i + k]) & 0xc0) == 0x80;
    if (good && n >= 3) {
      const auto c1 = static_cast<unsigned char>(in[i + 1]);
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) || (c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 > 0x8f)) good = false;
    }
    const std::string_view piece = good ? in.substr(i, n) : std::string_view("\xef\xbf\xbd");  // U+FFFD
    if (out.size() + piece.size() > max_bytes) break;  // cut on a character's boundary
    out.append(piece);
    i += good ? n : 1;
  }
  return out;
}

void fill_search_columns(const offline_cache::AuditRecord& r, RecordRow& row) {
  row.agent = search_text(r.agent, 256);
  row.event = search_text(r.event, 64);
  if (r.kind != offline_cache::RecordKind::decision) return;
  boost::system::error_code ec;
  const boost::json::value v = boost::json::parse(r.detail, ec);
  if (ec || !v.is_object()) return;
  const auto& o = v.as_object();
  const auto text = [&](const char* k) {
    const auto* f = o.if_contains(k);
    return f && f->is_string() ? std::string(f->as_string()) : std::string();
  };
  // An egress decision's subject is its host (a coalesced one's tool is "egress").
  const std::string tool = text("tool"), host = text("host");
  if (!host.empty()) {
    row.subject = search_text(host, 256);
  } else if (!tool.empty()) {
    row.subject = search_text(text("server").empty() ? tool : text("server") + "/" + tool, 256);
  }
  if (const auto* allow = o.if_contains("allow"); allow && allow->is_bool()) row.verdict = allow->as_bool() ? "allow" : "deny";
  row.reason = search_text(text("reason"), 200);
}

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
  uint64_t version_seen = 0;
  plan.clock = node.last_clock;
  for (size_t i = 0; i < parsed.records.size(); ++i) {
    const auto& r = parsed.records[i];
    const uint64_t end = i + 1 < parsed.records.size() ? parsed.records[i + 1].offset : parsed.good_bytes;
    if (r.seq <= node.acked_seq) {
      const std::optional<Digest> held = stored_hash(r.seq);
      if (!held || *held != r.hash) {
        if (backed_by_quote(parsed, i, ak, stored_hash)) {
          return refuse(UploadPlan::Verdict::fork, "fork at seq " + std::to_string(r.seq) +
                                                       ": a history signed by the node's AK differs from the one the hub holds");
        }
        return refuse(UploadPlan::Verdict::refused, "record " + std::to_string(r.seq) +
                                                        " differs from the one the hub holds, and no checkpoint quote by "
                                                        "the node's AK in the upload backs it");
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
    fill_search_columns(r, row);
    plan.rows.push_back(std::move(row));
    // The bundle in force as the node's own signed records say: an install's version, or the
    // version a decision was made under.
    if (r.event == "bundle_install") {
      boost::system::error_code ec;
      const boost::json::value d = boost::json::parse(r.detail, ec);
      const auto* v = !ec && d.is_object() ? d.as_object().if_contains("version") : nullptr;
      // Installs only move forward (the TPM's rollback counter): the highest seen is in force,
      // whatever a decision made under the old one, or a late flush, says after it.
      if (v && v->is_uint64()) version_seen = std::max(version_seen, v->as_uint64());
      if (v && v->is_int64() && v->as_int64() > 0) version_seen = std::max(version_seen, static_cast<uint64_t>(v->as_int64()));
    } else if (r.bundle_version > 0) {
      version_seen = std::max(version_seen, r.bundle_version);
    }
    if (r.kind == offline_cache::RecordKind::checkpoint) {
      anchored = plan.rows.size();
      plan.clock = verifier.state().last_clock;
      plan.bundle_version = version_seen;
    }
  }
  plan.pending = plan.rows.size() - anchored;
  plan.rows.resize(anchored);
  return plan;
}

}  // namespace outpost::hub
