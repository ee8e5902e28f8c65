#include "cli.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::cli {

int report(const Error& e) {
  std::fprintf(stderr, "outpost: error: %s\n", e.message().c_str());
  return kExitFailure;
}

std::optional<po::variables_map> parse(const Args& args, const std::string& usage, po::options_description options,
                                       const std::vector<std::string>& positional) {
  options.add_options()("help,h", "show this help");
  po::positional_options_description pos;
  for (const auto& p : positional) pos.add(p.c_str(), 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(options).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: " << usage << "\n\n" << options << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string(e.what()) + "\nusage: " + usage);
  }
  return vm;
}

void add_node_options(po::options_description& d) {
  d.add_options()("board", po::value<std::string>(), "board profile name or file (default: sim)")(
      "state", po::value<std::string>(), "state directory (default: OUTPOST_STATE, then the board's)")(
      "tcti", po::value<std::string>(), "TPM TCTI string (default: OUTPOST_TCTI, then the board's)");
}

Result<NodeContext> resolve_node(const po::variables_map& vm) {
  NodeContext ctx;
  std::optional<std::string> state;
  if (vm.count("state")) {
    state = vm["state"].as<std::string>();
  } else if (const char* s = std::getenv("OUTPOST_STATE"); s && *s) {
    state = s;
  }
  std::string board = "sim";
  if (vm.count("board")) {
    board = vm["board"].as<std::string>();
  } else if (state && file_exists(std::filesystem::path(*state) / "node.json")) {
    OUTPOST_TRY(attestation::NodeIdentity id, attestation::load_identity(*state));
    board = id.board;
  } else if (const char* b = std::getenv("OUTPOST_BOARD"); b && *b) {
    board = b;
  }
  OUTPOST_TRY(ctx.board, boards::load_board(board));
  ctx.state_dir = state ? std::filesystem::path(*state) : std::filesystem::path(ctx.board.state_dir);
  if (vm.count("tcti")) {
    ctx.tcti = vm["tcti"].as<std::string>();
  } else if (const char* t = std::getenv("OUTPOST_TCTI"); t && *t) {
    ctx.tcti = t;
  } else {
    ctx.tcti = ctx.board.tcti;
  }
  return ctx;
}

Result<std::unique_ptr<attestation::Tpm>> connect_tpm(const NodeContext& ctx) {
  return attestation::Tpm::connect(ctx.tcti);
}

Result<Bytes> parse_nonce(const std::string& hex) {
  Result<Bytes> nonce = hex_decode(hex);
  if (!nonce) return fail(nonce.error().wrap("--nonce"));
  if (nonce->empty() || nonce->size() > 64) {
    return fail(errc::invalid_argument, "--nonce must be 1 to 64 bytes of hex");
  }
  return nonce;
}

}  // namespace outpost::cli
