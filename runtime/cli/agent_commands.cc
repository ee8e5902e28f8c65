// outpost agent key
#include <iostream>

#include "cli.h"
#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"

namespace outpost::cli {
namespace {

int key(const Args& args) {
  po::options_description d("agent key");
  add_node_options(d);
  d.add_options()("name", po::value<std::string>()->required(), "agent name")(
      "binary", po::value<std::string>(), "agent binary to measure (SHA-256)")(
      "measurement", po::value<std::string>(), "the binary's SHA-256, hex, instead of --binary")(
      "json", "print the key and its certification as JSON");
  auto vm = parse(args, "outpost agent key NAME (--binary PATH | --measurement HEX) [--json]", d, {"name"});
  if (!vm) return kExitOk;
  if (vm->count("binary") == vm->count("measurement")) throw UsageError("give exactly one of --binary and --measurement");
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  const std::string name = (*vm)["name"].as<std::string>();
  if (auto v = attestation::AgentKeyStore::validate_name(name); !v) return report(v.error());

  Digest measurement{};
  if (vm->count("binary")) {
    auto m = attestation::measure_file((*vm)["binary"].as<std::string>());
    if (!m) return report(m.error());
    measurement = *m;
  } else {
    auto m = hex_decode((*vm)["measurement"].as<std::string>());
    if (!m || m->size() != measurement.size()) {
      return report(Error(make_error_code(errc::invalid_argument), "--measurement must be 64 hex digits (SHA-256)"));
    }
    std::copy(m->begin(), m->end(), measurement.begin());
  }
  auto id = attestation::load_identity(ctx->state_dir);
  if (!id) return report(id.error());
  auto tpm = connect_tpm(*ctx);
  if (!tpm) return report(tpm.error());
  if (auto match = attestation::check_tpm_matches(**tpm, *id); !match) return report(match.error());

  attestation::AgentKeyStore store(ctx->state_dir, *id);
  bool created = false;
  auto agent = store.ensure(**tpm, name, measurement, &created);
  if (!agent) return report(agent.error().wrap("agent key " + name));
  // Check what the TPM produced exactly as a responder would, before anyone relies on it.
  if (auto v = attestation::verify_agent_key(*agent, id->ak_public); !v) {
    return report(v.error().wrap("agent key " + name + ": certification does not verify"));
  }
  if (vm->count("json")) {
    std::cout << agent->to_json();
    return kExitOk;
  }
  std::cout << "agent         " << agent->name << (created ? " (new TPM key)" : " (existing TPM key)") << "\n"
            << "spiffe id     " << agent->spiffe_id << "\n"
            << "measurement   " << hex_encode(agent->measurement) << "\n"
            << "key name      " << hex_encode(agent->key_name) << "\n"
            << "certified by  AK " << hex_encode(id->ak_name) << " (verified)\n"
            << "public key (JWK) " << agent->public_key.to_jwk(agent->public_key.thumbprint()) << "\n"
            << agent->public_key.to_pem();
  return kExitOk;
}

}  // namespace

int agent_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost agent key|deploy|list|stop|logs [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "key") return key(rest);
  if (int r = agent_daemon_command(args[0], rest); r >= 0) return r;
  throw UsageError("unknown agent command \"" + args[0] + "\" (key, deploy, list, stop, logs)");
}

}  // namespace outpost::cli
