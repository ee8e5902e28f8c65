// outpostd: the node daemon. It owns the TPM (swtpm and many real TPMs serve one client at a
// time, so CLI commands reach the TPM through it while it runs), launches agents in their
// sandboxes, brokers their MCP connections through policy, installs bundles from the CLI and
// the inbox, and records every decision.
//
// Threads:
//   * the Asio thread: signals (SIGTERM/SIGINT shut down, SIGCHLD reaps agents), timers (the
//     inbox, the bundle's life, restart back-off, flushing the decision log) and accepting on
//     the Unix socket;
//   * one thread per API connection: a short request (deploy, list, stop, logs, install,
//     status) or, for `outpost mcp connect`, the whole life of one MCP connection (the relay);
//   * the TPM's own serial queue (attestation::Tpm), which every TPM command goes through.
// Shared state (agents, connections) sits behind one mutex; the policy in force is an atomic
// pointer swap, so the decision path takes no lock.
#pragma once

#include <memory>

#include "daemon/config.h"
#include "outpost/base/result.h"

namespace outpost::daemon {

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> create(DaemonConfig config);
  ~Daemon();
  // Serves until SIGTERM or SIGINT; then stops agents in order and returns.
  Result<void> run();

  struct Impl;

 private:
  explicit Daemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::daemon
