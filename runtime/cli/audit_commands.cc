// outpost audit tail | verify: the node's audit log (offline-cache/audit_log.h), read from its
// segment files. Reading needs no TPM and works while outpostd writes: a frame being written
// at the end is not an error.
#include <boost/json.hpp>
#include <deque>
#include <iostream>

#include "cli.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;
namespace oc = offline_cache;
namespace fs = std::filesystem;

fs::path audit_dir(const po::variables_map& vm, const NodeContext& ctx) {
  if (vm.count("dir")) return vm["dir"].as<std::string>();
  return ctx.state_dir / "audit" / "log";
}

json::object record_json(const oc::AuditRecord& r) {
  json::object o{{"seq", r.seq},
                 {"time", format_rfc3339_utc(r.time_ms / 1000)},
                 {"time_ms", r.time_ms},
                 {"kind", oc::record_kind_name(r.kind)},
                 {"event", r.event},
                 {"hash", hex_encode(r.hash)}};
  if (!r.agent.empty()) o["agent"] = r.agent;
  if (r.bundle_version) o["bundle_version"] = r.bundle_version;
  boost::system::error_code ec;
  json::value detail = json::parse(r.detail, ec);
  o["detail"] = ec ? json::value(r.detail) : detail;
  if (r.kind == oc::RecordKind::checkpoint) {
    o["head_seq"] = r.head_seq;
    o["head_hash"] = hex_encode(r.head_hash);
  }
  return o;
}

int tail(const Args& args) {
  po::options_description d("audit tail");
  add_node_options(d);
  d.add_options()("lines,n", po::value<size_t>()->default_value(20), "how many records (0: all)")(
      "since", po::value<uint64_t>(), "every record from this sequence number on")(
      "dir", po::value<std::string>(), "the log directory (default <state>/audit/log)")("json", "one JSON object per line");
  auto vm = parse(args, "outpost audit tail [-n N | --since SEQ] [--json]", d);
  if (!vm) return kExitOk;
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  const size_t n = (*vm)["lines"].as<size_t>();
  const uint64_t since = vm->count("since") ? (*vm)["since"].as<uint64_t>() : 0;
  std::deque<json::object> last;
  auto r = oc::read_audit_log(audit_dir(*vm, *ctx), since, [&](const oc::AuditRecord& rec) {
    last.push_back(record_json(rec));
    if (!since && n && last.size() > n) last.pop_front();
    return true;
  });
  const bool as_json = vm->count("json") > 0;
  for (const auto& o : last) {
    if (as_json) {
      std::cout << json::serialize(o) << "\n";
      continue;
    }
    std::cout << o.at("seq").as_uint64() << "  " << o.at("time").as_string().c_str() << "  "
              << o.at("kind").as_string().c_str() << "  " << o.at("event").as_string().c_str();
    if (o.contains("agent")) std::cout << "  agent=" << o.at("agent").as_string().c_str();
    std::cout << "  " << json::serialize(o.at("detail")) << "\n";
  }
  if (!r) return report(r.error());
  return kExitOk;
}

int verify(const Args& args) {
  po::options_description d("audit verify");
  add_node_options(d);
  d.add_options()("ak", po::value<std::string>(), "the AK public key (PEM) to check checkpoints (default <state>/ak.pem)")(
      "dir", po::value<std::string>(), "the log directory (default <state>/audit/log)")("json", "print the report as JSON");
  auto vm = parse(args, "outpost audit verify [--ak ak.pem] [--json]", d);
  if (!vm) return kExitOk;
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  std::optional<EcPublicKey> ak;
  const fs::path ak_path = vm->count("ak") ? fs::path((*vm)["ak"].as<std::string>()) : ctx->state_dir / "ak.pem";
  if (vm->count("ak") || fs::exists(ak_path)) {
    auto pem = read_text_file(ak_path, 64 << 10);
    if (!pem) return report(pem.error());
    auto key = EcPublicKey::from_pem(*pem);
    if (!key) return report(key.error().wrap(ak_path.string()));
    ak = *key;
  }
  oc::AuditVerifyReport rep = oc::verify_audit_log(audit_dir(*vm, *ctx), ak);
  if (vm->count("json")) {
    json::array problems;
    for (const auto& p : rep.problems) problems.emplace_back(p);
    json::object o{{"ok", rep.ok()},           {"records", rep.records},
                   {"first_seq", rep.first_seq}, {"last_seq", rep.last_seq},
                   {"segments", rep.segments},   {"checkpoints", rep.checkpoints},
                   {"checkpoints_verified", rep.checkpoints_verified}, {"torn_tail", rep.torn_tail},
                   {"problems", std::move(problems)}};
    std::cout << json::serialize(o) << "\n";
  } else {
    std::cout << (rep.ok() ? "audit log verified: " : "audit log FAILED: ") << rep.records << " records (" << rep.first_seq
              << ".." << rep.last_seq << ") in " << rep.segments << " segments, chain unbroken"
              << (rep.ok() ? "" : " up to the problems below") << "; " << rep.checkpoints << " checkpoints";
    if (ak) std::cout << ", " << rep.checkpoints_verified << " quotes verified with the AK";
    std::cout << "\n";
    if (rep.torn_tail) std::cout << "  note: the last segment ends in an unfinished frame (a write in progress, or a crash)\n";
    for (const auto& p : rep.problems) std::cout << "  - " << p << "\n";
  }
  return rep.ok() ? kExitOk : kExitFailure;
}

}  // namespace

int audit_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost audit tail|verify [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "tail") return tail(rest);
  if (args[0] == "verify") return verify(rest);
  throw UsageError("unknown audit command \"" + args[0] + "\" (tail, verify)");
}

}  // namespace outpost::cli
