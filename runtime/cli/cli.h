// Shared plumbing of the `outpost` CLI: option parsing, resolving the board, state directory
// and TCTI, and the one-line error convention.
//
// Exit codes: 0 success, 1 the operation failed (TPM, verification, I/O), 2 bad usage.
#pragma once

#include <boost/program_options.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/bytes.h"
#include "outpost/base/result.h"
#include "outpost/boards/board.h"

namespace outpost::cli {

namespace po = boost::program_options;

// Thrown for bad command lines (before any work starts); main() prints it and exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// Prints "outpost: error: <message>" and returns kExitFailure.
int report(const Error& e);

using Args = std::vector<std::string>;

// Parses `args` against `options` (plus positional names in order); --help prints usage.
// Returns nullopt when help was printed.
std::optional<po::variables_map> parse(const Args& args, const std::string& usage, po::options_description options,
                                       const std::vector<std::string>& positional = {});

// --board, --state and --tcti, which every command that touches the node takes.
void add_node_options(po::options_description& d);

struct NodeContext {
  boards::BoardProfile board;
  std::filesystem::path state_dir;
  std::string tcti;
};
// Board: --board, else the board recorded in the state, else OUTPOST_BOARD, else "sim".
// State: --state, else OUTPOST_STATE, else the board's state_dir.
// TCTI: --tcti, else OUTPOST_TCTI, else the board's.
Result<NodeContext> resolve_node(const po::variables_map& vm);

Result<std::unique_ptr<attestation::Tpm>> connect_tpm(const NodeContext& ctx);

// A quote's nonce (qualifying data): 1 to 64 bytes of hex.
Result<Bytes> parse_nonce(const std::string& hex);

// A quote directory (outpost attest quote --out) checked offline against the AK in `ak_pem`
// and `nonce`: the files, and what the verified TPMS_ATTEST says.
struct CheckedQuote {
  attestation::QuoteFiles files;
  attestation::ParsedAttest attest;
};
Result<CheckedQuote> read_and_verify_quote(const std::string& dir, const std::string& ak_pem, ByteView nonce);

// Command groups.
int node_command(const Args& args);
int node_check_command(const Args& args);  // node_check.cc
int agent_command(const Args& args);
int attest_command(const Args& args);
int keygen_command(const Args& args);
int trust_command(const Args& args);
int bundle_command(const Args& args);
int decide_command(const Args& args);
int policy_command(const Args& args);
int status_command(const Args& args);
int metrics_command(const Args& args);
int token_command(const Args& args);   // token_commands.cc
int secret_command(const Args& args);  // secret_commands.cc
int mcp_command(const Args& args);
int eventlog_command(const Args& args);  // eventlog_commands.cc
int node_measure_command(const Args& args);  // measure_commands.cc: the pre-start hook
int audit_command(const Args& args);         // audit_commands.cc
int evidence_command(const Args& args);        // evidence_commands.cc
int bundle_publish_command(const Args& args);  // hub_commands.cc
int evidence_pull_command(const Args& args);   // hub_commands.cc
int fleet_list_command(const Args& args);      // hub_commands.cc
int fleet_move_command(const Args& args);      // hub_commands.cc
int mcp_serve_local(const Args& args);  // the MCP server of local command tools (mcp_local.cc)
// agent deploy/list/stop/logs through outpostd; -1 when `sub` is none of them.
int agent_daemon_command(const std::string& sub, const Args& rest);
// Whether outpostd answers on `socket`; installing through it while it owns the TPM.
bool daemon_running(const std::filesystem::path& socket);
Result<uint64_t> install_through_daemon(const std::filesystem::path& socket, ByteView bundle);
// `attest quote` while outpostd owns the TPM: outpostd quotes, the files are written here.
Result<void> quote_through_daemon(const std::filesystem::path& socket, ByteView nonce, const std::string& pcrs,
                                  const std::filesystem::path& out);

}  // namespace outpost::cli
