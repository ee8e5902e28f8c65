// outpostd --config FILE: the node daemon (see daemon.h).
#include <malloc.h>

#include <cstring>
#include <iostream>

#include "daemon/daemon.h"
#include "outpost/base/log.h"

int main(int argc, char** argv) {
  // One malloc arena: the daemon's threads are few and mostly waiting, and per-thread arenas
  // would each keep their own free memory resident (docs/benchmarks.md: the RSS budget).
  mallopt(M_ARENA_MAX, 1);
  outpost::log::configure_from_env();
  std::string config_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (a == "--help" || a == "-h") {
      std::cout << "usage: outpostd --config FILE\n"
                   "The node daemon: hosts agents, brokers their MCP tool calls through the installed\n"
                   "bundle, and serves the outpost CLI on its Unix socket. See docs/daemon.md.\n";
      return 0;
    } else {
      std::cerr << "outpostd: error: unknown argument \"" << a << "\" (usage: outpostd --config FILE)\n";
      return 2;
    }
  }
  if (config_path.empty()) {
    std::cerr << "outpostd: error: --config FILE is required\n";
    return 2;
  }
  auto config = outpost::daemon::load_daemon_config(config_path);
  if (!config) {
    std::cerr << "outpostd: error: " << config.error().message() << "\n";
    return 2;
  }
  auto d = outpost::daemon::Daemon::create(std::move(*config));
  if (!d) {
    std::cerr << "outpostd: error: " << d.error().message() << "\n";
    return 1;
  }
  auto r = (*d)->run();
  if (!r) {
    std::cerr << "outpostd: error: " << r.error().message() << "\n";
    return 1;
  }
  return 0;
}
