// outpost node measure: the pre-start hook. Before systemd starts outpostd it measures the
// outpostd binary and the configuration into the board's runtime PCR and the runtime
// measurement log (firmware-hooks/runtime_log.h). outpostd measures the same two things when
// it starts; the log keeps one entry per (kind, name, digest) per TPM boot, so with the hook
// the measurement is simply taken earlier, by a process outpostd's config cannot influence.
#include <iostream>

#include "cli.h"
#include "daemon/api.h"
#include "daemon/config.h"
#include "outpost/attestation/agent_keys.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/firmware_hooks/runtime_log.h"

namespace outpost::cli {

namespace fs = std::filesystem;
namespace fh = firmware_hooks;

int node_measure_command(const Args& args) {
  po::options_description d("node measure");
  d.add_options()("config", po::value<std::string>()->required(), "outpostd's configuration file")(
      "outpostd", po::value<std::string>(), "the outpostd binary (default: beside this outpost)")(
      "tcti", po::value<std::string>(), "TCTI (default: the config's, else the board's)");
  auto vm = parse(args, "outpost node measure --config FILE [--outpostd PATH] [--tcti T]", d);
  if (!vm) return kExitOk;
  const fs::path config_path = (*vm)["config"].as<std::string>();
  auto config = daemon::load_daemon_config(config_path);
  if (!config) return report(config.error());
  auto board = boards::load_board(config->board);
  if (!board) return report(board.error());
  NodeContext ctx;
  ctx.board = *board;
  ctx.state_dir = config->state_dir.empty() ? fs::path(board->state_dir) : config->state_dir;
  ctx.tcti = vm->count("tcti") ? (*vm)["tcti"].as<std::string>() : config->tcti.empty() ? board->tcti : config->tcti;
  const fs::path socket = config->socket.empty() ? daemon::default_socket(ctx.state_dir) : config->socket;
  if (daemon_running(socket)) {
    return report(Error(make_error_code(errc::already_exists),
                        "outpostd is running on " + socket.string() + " and owns the TPM; it measured itself at start"));
  }

  std::error_code ec;
  fs::path outpostd;
  if (vm->count("outpostd")) {
    outpostd = (*vm)["outpostd"].as<std::string>();
  } else {
    outpostd = fs::read_symlink("/proc/self/exe", ec).parent_path() / "outpostd";
  }
  fs::path canonical = fs::canonical(outpostd, ec);
  if (ec) return report(errno_error("resolve " + outpostd.string(), ec.value()));
  auto self_digest = attestation::measure_file(canonical, config->max_binary_bytes);
  if (!self_digest) return report(self_digest.error());

  auto tpm = connect_tpm(ctx);
  if (!tpm) return report(tpm.error());
  const fs::path log_path = ctx.state_dir / "measurements" / "runtime.log";
  auto writer = fh::RuntimeLogWriter::open(log_path, **tpm, board->runtime_pcr);
  if (!writer) return report(writer.error().wrap("runtime measurement log"));
  const auto& r = (*writer)->open_report();
  if (r.new_log) std::cout << "new runtime measurement log for this TPM boot: " << log_path.string() << "\n";
  if (r.cut_torn_tail) std::cout << "cut a torn last line (a write that never finished)\n";
  if (r.completed_last) std::cout << "extended the last entry, which had been logged but not extended\n";
  if (!r.replays) std::cerr << "outpost: warning: " << r.detail << "\n";

  struct Item {
    std::string_view kind;
    std::string name;
    Digest digest;
  };
  const Item items[] = {{fh::runtime_kind::outpostd, canonical.string(), *self_digest},
                        {fh::runtime_kind::config, config->source_file.string(), sha256(config->source_text)}};
  for (const auto& item : items) {
    auto extended = (*writer)->measure(item.kind, item.name, item.digest);
    if (!extended) return report(extended.error());
    std::cout << (*extended ? "measured  " : "unchanged ") << item.kind << " " << item.name << " sha256:"
              << hex_encode(item.digest) << " into PCR " << board->runtime_pcr << "\n";
  }
  return kExitOk;
}

}  // namespace outpost::cli
