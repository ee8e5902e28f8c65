// outpost evidence export | verify | show: evidence packages (offline-cache/evidence.h). Export
// reads the state directory and the audit log's segments directly, like `audit tail`: it needs
// no TPM and works while outpostd writes. Verify and show need nothing from the node.
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <functional>
#include <iostream>

#include "cli.h"
#include "daemon/config.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"
#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/evidence.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;
namespace oc = offline_cache;
namespace fs = std::filesystem;

// --since / --until: RFC 3339 UTC, or Unix time in ms.
int64_t parse_time_ms(const po::variables_map& vm, const char* name) {
  if (!vm.count(name)) return 0;
  const std::string text = vm[name].as<std::string>();
  if (!text.empty() && text.size() <= 15 && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::stoll(text);
  }
  if (std::optional<int64_t> t = parse_rfc3339_utc(text); t && *t > 0) return *t * 1000;
  throw UsageError(std::string("--") + name + " " + text + ": want RFC 3339 UTC (2026-01-31T12:00:00Z) or Unix time in ms");
}

// Where the node is: --config (outpostd's configuration) or the usual --board/--state.
Result<NodeContext> node_for_export(const po::variables_map& vm) {
  if (!vm.count("config")) return resolve_node(vm);
  if (vm.count("state") || vm.count("board")) throw UsageError("give --config or --state/--board, not both");
  OUTPOST_TRY(daemon::DaemonConfig config, daemon::load_daemon_config(vm["config"].as<std::string>()));
  NodeContext ctx;
  OUTPOST_TRY(ctx.board, boards::load_board(config.board));
  ctx.state_dir = config.state_dir.empty() ? fs::path(ctx.board.state_dir) : config.state_dir;
  return ctx;
}

// "\rexporting audit records: 42% (10.0 of 24.0 MiB)" on a terminal, when the percentage moves.
std::function<void(uint64_t, uint64_t)> terminal_progress() {
  if (!::isatty(STDERR_FILENO)) return {};
  return [last = -1](uint64_t done, uint64_t total) mutable {
    const int pct = total ? static_cast<int>(done * 100 / total) : 100;
    if (pct == last) return;
    last = pct;
    std::fprintf(stderr, "\rexporting audit records: %3d%% (%.1f of %.1f MiB)", pct, static_cast<double>(done) / (1 << 20),
                 static_cast<double>(total) / (1 << 20));
    if (done >= total) std::fputs("\n", stderr);
  };
}

std::string node_id_of(const oc::EvidencePackage& p) {
  auto id = attestation::NodeIdentity::from_json(p.node_identity_json);
  return id ? id->node_id : "(node.json does not parse)";
}

int export_package(const Args& args) {
  po::options_description d("evidence export");
  add_node_options(d);
  d.add_options()("out", po::value<std::string>()->required(), "the package file to write")(
      "since", po::value<std::string>(), "records from this time on: RFC 3339 UTC or Unix ms (default: the first)")(
      "until", po::value<std::string>(), "records up to this time (default: the last)")(
      "config", po::value<std::string>(), "outpostd's configuration file (instead of --state/--board)")(
      "dir", po::value<std::string>(), "the audit log directory (default <state>/audit/log)")(
      "boot-log", po::value<std::string>(), "the TCG boot event log, or none (default: the board's)")(
      "json", "print the summary as JSON");
  auto vm = parse(args, "outpost evidence export --out PKG [--since T] [--until T] [--state DIR | --config FILE] [--json]", d);
  if (!vm) return kExitOk;
  const int64_t since = parse_time_ms(*vm, "since"), until = parse_time_ms(*vm, "until");
  if (since && until && since > until) throw UsageError("--since is after --until");
  Result<NodeContext> ctx = node_for_export(*vm);
  if (!ctx) return report(ctx.error());
  fs::path boot_log = ctx->board.event_log;
  if (vm->count("boot-log")) boot_log = (*vm)["boot-log"].as<std::string>() == "none" ? "" : (*vm)["boot-log"].as<std::string>();
  const fs::path log_dir = vm->count("dir") ? fs::path((*vm)["dir"].as<std::string>()) : ctx->state_dir / "audit" / "log";

  auto pkg = oc::collect_node_evidence(ctx->state_dir, boot_log);
  if (!pkg) return report(pkg.error().wrap("evidence export"));
  for (auto& n : pkg->nv_counters) {
    if (n.purpose == "bundle-rollback") n.index = ctx->board.rollback_counter_index;
  }
  pkg->since_ms = since;
  pkg->until_ms = until;
  auto sel = oc::select_audit_records(log_dir, since, until, terminal_progress());
  if (!sel) return report(sel.error().wrap("evidence export"));
  pkg->records = std::move(sel->frames);
  const Bytes bytes = oc::encode_evidence_package(*pkg);
  const fs::path out = (*vm)["out"].as<std::string>();
  if (auto w = write_file_atomic(out, bytes, 0600); !w) return report(w.error());

  if (vm->count("json")) {
    json::array notes;
    for (const auto& n : sel->notes) notes.emplace_back(n);
    json::object o{{"out", out.string()},
                   {"bytes", bytes.size()},
                   {"node_id", node_id_of(*pkg)},
                   {"records", sel->records},
                   {"first_seq", sel->first_seq},
                   {"last_seq", sel->last_seq},
                   {"selected_first_seq", sel->selected_first_seq},
                   {"selected_last_seq", sel->selected_last_seq},
                   {"agent_certifications", pkg->agent_certifications.size()},
                   {"runtime_log_bytes", pkg->runtime_log.size()},
                   {"boot_event_log_bytes", pkg->boot_event_log.size()},
                   {"notes", std::move(notes)}};
    o["anchor_checkpoint"] = sel->anchor_checkpoint ? json::value(*sel->anchor_checkpoint) : json::value(nullptr);
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  std::cout << "evidence package written to " << out.string() << " (" << bytes.size() << " bytes)\n"
            << "node          " << node_id_of(*pkg) << " (board " << pkg->board << ")\n"
            << "records       ";
  if (sel->records == 0) {
    std::cout << "none\n";
  } else {
    std::cout << sel->first_seq << ".." << sel->last_seq << " (" << sel->records << ")";
    if (sel->first_seq != sel->selected_first_seq || sel->last_seq != sel->selected_last_seq) {
      std::cout << "; the time range selected " << sel->selected_first_seq << ".." << sel->selected_last_seq;
      if (sel->anchor_checkpoint) std::cout << ", extended through checkpoint " << *sel->anchor_checkpoint << " to anchor it";
      if (sel->first_seq < sel->selected_first_seq) std::cout << " and back to the heads its checkpoints name";
    }
    std::cout << "\n";
  }
  std::cout << "agents        " << pkg->agent_certifications.size() << " key certifications\n"
            << "runtime log   " << pkg->runtime_log.size() << " bytes\n"
            << "boot log      " << (pkg->boot_event_log.empty() ? std::string("none") : std::to_string(pkg->boot_event_log.size()) + " bytes")
            << "\n";
  for (const auto& n : sel->notes) std::cout << "  note: " << n << "\n";
  return kExitOk;
}

Result<oc::EvidencePackage> load_package(const std::string& path) {
  OUTPOST_TRY(Bytes bytes, read_file(path, oc::kMaxEvidencePackageBytes));
  Result<oc::EvidencePackage> p = oc::parse_evidence_package(bytes);
  if (!p) return fail(p.error().wrap(path));
  return p;
}

int verify(const Args& args) {
  po::options_description d("evidence verify");
  d.add_options()("package", po::value<std::string>()->required(), "the evidence package")(
      "trust", po::value<std::string>()->required(), "the node's AK public key (PEM), as pinned at enrolment")(
      "json", "print the report as JSON");
  auto vm = parse(args, "outpost evidence verify PKG --trust AK.pem [--json]", d, {"package"});
  if (!vm) return kExitOk;
  const std::string trust_path = (*vm)["trust"].as<std::string>();
  auto pem = read_text_file(trust_path, 64 << 10);
  if (!pem) return report(pem.error().wrap("--trust"));
  auto ak = EcPublicKey::from_pem(*pem);
  if (!ak) return report(ak.error().wrap(trust_path));
  auto pkg = load_package((*vm)["package"].as<std::string>());
  if (!pkg) return report(pkg.error());
  const oc::EvidenceReport rep = oc::verify_evidence_package(*pkg, oc::EvidenceTrust{*ak});
  if (vm->count("json")) {
    std::cout << rep.to_json() << "\n";
    return rep.ok() ? kExitOk : kExitFailure;
  }
  std::cout << (rep.ok() ? "evidence package verified: " : "evidence package FAILED: ") << "node " << rep.node_id << ", ";
  if (rep.records == 0) {
    std::cout << "no records";
  } else {
    std::cout << rep.records << " records (" << rep.first_seq << ".." << rep.last_seq << "), " << rep.checkpoints
              << " checkpoints, " << rep.checkpoints_verified << " quotes verified with the trusted AK, anchored through "
              << rep.anchored_through;
  }
  std::cout << "; " << rep.certifications_verified << " of " << pkg->agent_certifications.size()
            << " agent certifications verified; runtime log " << rep.runtime_entries << " entries\n";
  for (const auto& w : rep.warnings) std::cout << "  warning: " << w << "\n";
  for (const auto& p : rep.problems) std::cout << "  - " << p << "\n";
  return rep.ok() ? kExitOk : kExitFailure;
}

int show(const Args& args) {
  po::options_description d("evidence show");
  d.add_options()("package", po::value<std::string>()->required(), "the evidence package")("json", "print JSON");
  auto vm = parse(args, "outpost evidence show PKG [--json]", d, {"package"});
  if (!vm) return kExitOk;
  auto pkg = load_package((*vm)["package"].as<std::string>());
  if (!pkg) return report(pkg.error());
  // Informative only (nothing is verified here): the frames up to the first damage.
  const oc::SegmentParse frames = oc::parse_segment(pkg->records, "records");
  json::array agents, counters, bundles;
  for (const auto& c : pkg->agent_certifications) {
    agents.push_back(json::object{{"name", c.name}, {"measurement", hex_encode(c.measurement)}});
  }
  for (const auto& n : pkg->nv_counters) {
    counters.push_back(json::object{{"index", hex32(n.index)}, {"purpose", n.purpose}, {"value", n.value}, {"source", n.source}});
  }
  for (const auto& b : pkg->bundles) {
    bundles.push_back(json::object{{"version", b.version}, {"sha256", b.digest_hex}, {"installed_at", b.installed_at}});
  }
  json::object o{{"format", pkg->format},
                 {"node_id", node_id_of(*pkg)},
                 {"board", pkg->board},
                 {"exported_at", pkg->exported_at},
                 {"since_ms", pkg->since_ms},
                 {"until_ms", pkg->until_ms},
                 {"records", frames.records.size()},
                 {"first_seq", frames.records.empty() ? 0 : frames.records.front().seq},
                 {"last_seq", frames.records.empty() ? 0 : frames.records.back().seq},
                 {"records_bytes", pkg->records.size()},
                 {"agents", agents},
                 {"runtime_log_bytes", pkg->runtime_log.size()},
                 {"boot_event_log_bytes", pkg->boot_event_log.size()},
                 {"nv_counters", counters},
                 {"bundles", bundles}};
  if (vm->count("json")) {
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  auto when = [](int64_t ms) { return ms ? format_rfc3339_utc(ms / 1000) : std::string("open"); };
  std::cout << "evidence package, format " << pkg->format << ", exported " << pkg->exported_at << " (not verified: use "
            << "outpost evidence verify)\n"
            << "node          " << node_id_of(*pkg) << " (board " << pkg->board << ")\n"
            << "time range    " << when(pkg->since_ms) << " .. " << when(pkg->until_ms) << "\n"
            << "records       " << frames.records.size();
  if (!frames.records.empty()) std::cout << " (" << frames.records.front().seq << ".." << frames.records.back().seq << ")";
  if (frames.end != oc::SegmentParse::End::clean) std::cout << "; then: " << frames.error;
  std::cout << "\n";
  for (const auto& c : pkg->agent_certifications) std::cout << "agent         " << c.name << "  sha256:" << hex_encode(c.measurement) << "\n";
  std::cout << "runtime log   " << pkg->runtime_log.size() << " bytes\n"
            << "boot log      " << pkg->boot_event_log.size() << " bytes\n";
  for (const auto& n : pkg->nv_counters) {
    std::cout << "NV counter    " << hex32(n.index) << " (" << n.purpose << ") = " << n.value << ", from " << n.source << "\n";
  }
  for (const auto& b : pkg->bundles) {
    std::cout << "bundle        v" << b.version << "  sha256:" << b.digest_hex << (b.installed_at.empty() ? "" : "  installed ")
              << b.installed_at << "\n";
  }
  return kExitOk;
}

}  // namespace

int evidence_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost evidence export|verify|show [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "export") return export_package(rest);
  if (args[0] == "verify") return verify(rest);
  if (args[0] == "show") return show(rest);
  throw UsageError("unknown evidence command \"" + args[0] + "\" (export, verify, show)");
}

}  // namespace outpost::cli
