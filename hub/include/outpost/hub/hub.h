// outpost-hub: the central reference service. Serves bundles (ETag / If-None-Match, long-poll),
// enrols nodes (their AK pinned at enrolment), receives and verifies audit records and evidence
// state, and answers responders with verifiable evidence packages. HTTPS only: TLS 1.2 by
// mbedTLS (base/tls.h), HTTP by Boost.Beast, one io_context on one thread (docs/hub.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "outpost/base/result.h"
#include "outpost/hub/store.h"

namespace outpost::hub {

struct HubConfig {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 8443;                 // 0: any free port (tests)
  std::filesystem::path database;              // SQLite file, or a postgresql:// URI (open_store)
  std::string cert_chain_pem, key_pem;         // the hub's TLS certificate and key
  std::string bundle_trust_json;               // trust anchors for publish; empty: publishing refused
  bool enrol_open = false;                     // any node may enrol (development); else allow_nodes
  // A node enrols only once its TPM has opened a credential made for its EK and AK (TPM2
  // credential activation); off: the AK is trusted on first use.
  bool activation_required = true;
  std::set<std::string> allow_nodes;
  uint32_t long_poll_max_s = 55;
  uint64_t max_upload_bytes = 64ull << 20;    // a records upload or an evidence state
  uint64_t max_pull_bytes = 512ull << 20;     // a responder's package; a larger range is refused (413)
  uint32_t max_connections = 4096;            // more wait in the listen backlog
  std::filesystem::path source_file;
};

// hub.yaml; paths in it are relative to the file's folder. Unknown fields are errors.
Result<HubConfig> load_hub_config(const std::filesystem::path& file);

// `outpost-hub init DIR`: a development CA, the hub's certificate for `names` (default
// localhost and 127.0.0.1), hub.yaml with open enrolment; writes nothing over existing files.
struct InitResult {
  std::filesystem::path config;
  std::string pin_sha256;  // what nodes pin (hub.pin_sha256 in outpostd.yaml)
};
Result<InitResult> init_hub_dir(const std::filesystem::path& dir, const std::vector<std::string>& names,
                                const std::filesystem::path& bundle_trust);

class Hub {
 public:
  static Result<std::unique_ptr<Hub>> create(HubConfig config);
  ~Hub();
  uint16_t port() const;
  // Serves until stop() (or SIGINT/SIGTERM when handle_signals).
  Result<void> run(bool handle_signals);
  void stop();

  struct Impl;

 private:
  explicit Hub(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::hub
