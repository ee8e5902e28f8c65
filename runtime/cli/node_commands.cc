// outpost node init | info
#include <boost/json.hpp>
#include <iostream>

#include "cli.h"
#include "outpost/attestation/node.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;
using attestation::NodeIdentity;

void print_identity(const NodeIdentity& id) {
  std::cout << "node id       " << id.node_id << "\n"
            << "spiffe id     " << id.spiffe_id << "\n"
            << "board         " << id.board << "\n"
            << "tpm           " << id.tpm_manufacturer << " " << id.tpm_vendor << " firmware " << id.tpm_firmware
            << "\n"
            << "srk           " << hex32(id.handles.srk) << " name " << hex_encode(id.srk_name) << "\n"
            << "ek            " << hex32(id.handles.ek) << " name " << hex_encode(id.ek_name) << "\n"
            << "ak            " << hex32(id.handles.ak) << " name " << hex_encode(id.ak_name) << "\n"
            << "ek certs      ";
  if (id.ek_certificate_indices.empty()) std::cout << "none in NV";
  for (size_t i = 0; i < id.ek_certificate_indices.size(); ++i) {
    std::cout << (i ? ", " : "") << hex32(id.ek_certificate_indices[i]);
  }
  std::cout << "\nprovisioned   " << id.provisioned_at << "\nAK public key:\n" << id.ak_public.to_pem();
}

int init(const Args& args) {
  po::options_description d("node init");
  add_node_options(d);
  d.add_options()("trust-domain", po::value<std::string>(), "SPIFFE trust domain (default: the board's)")(
      "json", "print the result as JSON");
  auto vm = parse(args, "outpost node init --board B --state DIR [--tcti T] [--trust-domain D] [--json]", d);
  if (!vm) return kExitOk;
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  attestation::ProvisionOptions opts;
  opts.board = ctx->board.name;
  opts.trust_domain = vm->count("trust-domain") ? (*vm)["trust-domain"].as<std::string>() : ctx->board.trust_domain;
  opts.handles = {ctx->board.srk_handle, ctx->board.ek_handle, ctx->board.ak_handle};
  auto tpm = connect_tpm(*ctx);
  if (!tpm) return report(tpm.error());
  auto result = attestation::provision_node(**tpm, ctx->state_dir, opts);
  if (!result) return report(result.error().wrap("node init"));
  if (vm->count("json")) {
    json::object o = json::parse(result->identity.to_json()).as_object();
    o["changed"] = result->changed;
    json::array actions;
    for (const auto& a : result->actions) actions.emplace_back(a);
    o["actions"] = std::move(actions);
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  std::cout << (result->changed ? "node provisioned" : "node already provisioned; nothing changed") << " in "
            << ctx->state_dir.string() << "\n";
  for (const auto& a : result->actions) std::cout << "  - " << a << "\n";
  print_identity(result->identity);
  return kExitOk;
}

int info(const Args& args) {
  po::options_description d("node info");
  add_node_options(d);
  d.add_options()("json", "print the identity as JSON");
  auto vm = parse(args, "outpost node info [--state DIR] [--json]", d);
  if (!vm) return kExitOk;
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  auto id = attestation::load_identity(ctx->state_dir);
  if (!id) return report(id.error());
  if (vm->count("json")) {
    std::cout << id->to_json();
  } else {
    print_identity(*id);
  }
  return kExitOk;
}

}  // namespace

int node_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost node init|info|check [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "init") return init(rest);
  if (args[0] == "info") return info(rest);
  if (args[0] == "check") return node_check_command(rest);
  if (args[0] == "measure") return node_measure_command(rest);
  throw UsageError("unknown node command \"" + args[0] + "\" (init, info, check)");
}

}  // namespace outpost::cli
