// outpost: the one CLI for operators, the central IAM and incident responders.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli.h"
#include "outpost/base/log.h"

namespace {

constexpr const char* kUsage = R"(usage: outpost <command> [args] [--help]

operator:
  node init --board B --state DIR [--tcti T]   provision SRK, EK, AK and the node identity
  node info [--state DIR] [--json]             print the node identity
  node check --board B [--tcti T] [--json]     validate this device against its board profile
  node measure --config FILE                   the pre-start hook: outpostd and config into PCR 23
  agent key NAME (--binary P | --measurement H) create or reuse an agent's TPM key, certified
  trust pin ROOT.json | trust update ROOT…     the node's bundle trust anchors
  bundle install B                             verify and install a signed bundle (TPM-bound)
  status [--json]                              bundle in force, life and offline budget left
  metrics                                      outpostd's Prometheus metrics (text exposition)
  secret seal NAME [--in FILE] | secret list   tool secrets sealed by the TPM (outpostd stopped)
  agent deploy MANIFEST | list | stop N | logs N   agents under outpostd
agent (its MCP configuration runs this):
  mcp connect SERVER                           the road to an MCP server, through policy
tool authors:
  token verify TOKEN (--key PEM | --agent N)   check a call-scoped credential offline
central IAM:
  keygen --out key.pem                         a bundle-signing key (ECDSA P-256)
  trust init --key PUB… --threshold K -o T     a root of trust; trust rotate/sign for rotations
  bundle build POLICY.yaml -o B [--version N]  compile policy source into a bundle
  bundle sign B --key K | inspect B | verify B --trust T
  bundle publish B --hub URL (--ca CA | --pin H)  push a signed bundle to outpost-hub for its nodes
  decide --bundle B --request R.json           one decision, as a dry run
  policy test CASES.yaml --bundle B            expected decisions
responder:
  attest quote --nonce HEX --out DIR           quote the board's PCRs with the AK
  attest verify DIR --ak ak.pem --nonce HEX    check a quote offline
  eventlog show|replay [FILE] [--json]         a boot or runtime measurement log, listed or replayed
  eventlog verify --quote Q --ak A --nonce N --runtime LOG [--boot LOG] [--expect agent/N=H]
                                               both logs against one quote, offline
  audit tail [-n N] [--json] | audit verify [--ak ak.pem]   the node's audit log
  evidence export --out PKG [--since T] [--until T] | verify PKG --trust AK.pem   evidence packages
  evidence pull --hub URL --node N --out PKG [--since T] [--until T] (--ca CA | --pin H)   from outpost-hub
  fleet list | fleet move N --to FLEET   --hub URL (--ca CA | --pin H)   the hub's nodes by fleet; move one
                                               (hub commands take --token-file T or $OUTPOST_HUB_TOKEN: your role's credential)

Every command that touches the node takes --board, --state and --tcti; OUTPOST_BOARD,
OUTPOST_STATE and OUTPOST_TCTI give defaults. Logs: OUTPOST_LOG=debug|info|warn|error,
OUTPOST_LOG_FORMAT=json.
)";

}  // namespace

int main(int argc, char** argv) {
  outpost::log::configure(outpost::log::Level::warn, outpost::log::Format::human);
  outpost::log::configure_from_env();
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? outpost::cli::kExitUsage : outpost::cli::kExitOk;
  }
  const std::string group = argv[1];
  outpost::cli::Args rest(argv + 2, argv + argc);
  try {
    if (group == "node") return outpost::cli::node_command(rest);
    if (group == "agent") return outpost::cli::agent_command(rest);
    if (group == "attest") return outpost::cli::attest_command(rest);
    if (group == "keygen") return outpost::cli::keygen_command(rest);
    if (group == "trust") return outpost::cli::trust_command(rest);
    if (group == "bundle") return outpost::cli::bundle_command(rest);
    if (group == "decide") return outpost::cli::decide_command(rest);
    if (group == "policy") return outpost::cli::policy_command(rest);
    if (group == "status") return outpost::cli::status_command(rest);
    if (group == "metrics") return outpost::cli::metrics_command(rest);
    if (group == "token") return outpost::cli::token_command(rest);
    if (group == "secret") return outpost::cli::secret_command(rest);
    if (group == "mcp") return outpost::cli::mcp_command(rest);
    if (group == "eventlog") return outpost::cli::eventlog_command(rest);
    if (group == "audit") return outpost::cli::audit_command(rest);
    if (group == "evidence" && !rest.empty() && rest[0] == "pull") {
      return outpost::cli::evidence_pull_command(outpost::cli::Args(rest.begin() + 1, rest.end()));
    }
    if (group == "evidence") return outpost::cli::evidence_command(rest);
    if (group == "fleet" && !rest.empty() && rest[0] == "list") {
      return outpost::cli::fleet_list_command(outpost::cli::Args(rest.begin() + 1, rest.end()));
    }
    if (group == "fleet" && !rest.empty() && rest[0] == "move") {
      return outpost::cli::fleet_move_command(outpost::cli::Args(rest.begin() + 1, rest.end()));
    }
    throw outpost::cli::UsageError("unknown command \"" + group + "\" (see outpost --help)");
  } catch (const outpost::cli::UsageError& e) {
    std::fprintf(stderr, "outpost: %s\n", e.what());
    return outpost::cli::kExitUsage;
  } catch (const std::exception& e) {
    // Only reached by a bug: the commands return errors as values.
    std::fprintf(stderr, "outpost: internal error: %s\n", e.what());
    return outpost::cli::kExitFailure;
  }
}
