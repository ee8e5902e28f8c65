// outpost-hub: the central reference service. Serves bundles (ETag / If-None-Match, long-poll),
// enrols nodes (their AK pinned at enrolment), receives and verifies audit records and evidence
// state, and answers responders with verifiable evidence packages. HTTPS only: TLS 1.2 by
// mbedTLS (base/tls.h), HTTP by Boost.Beast, one io_context on one thread (docs/hub.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "outpost/base/result.h"
#include "outpost/hub/store.h"

namespace outpost::hub {

// Who may use the hub's read and write routes beyond what nodes send (docs/hub.md "Roles").
// Nodes need no credential: what they send is signed by their TPM.
enum class Role : uint8_t {
  operator_ = 1,   // reads the fleet (nodes, bundles, metrics, the console) and moves nodes between fleets
  responder = 2,   // reads the fleet and pulls evidence packages
  iam = 4,         // publishes bundles and reads what is served
};
const char* role_name(Role role);
struct Credential {
  std::string name;  // who holds it, for the log
  Role role;
};
// A bearer token: 32 random bytes, hex (what `outpost-hub token` and `init` write).
std::string make_token();
// What hub.yaml keeps of a token: the SHA-256 of its text, hex.
std::string token_sha256(std::string_view token);
// Fleet names: 1 to 64 of [A-Za-z0-9._-].
bool valid_fleet_name(std::string_view fleet);

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
  // A node's bundle poll must carry its node token (docs/hub.md "Roles"); false
  // (`node_tokens: optional`) also lets in polls with none, from nodes older than tokens,
  // while a fleet is upgraded.
  bool node_tokens_required = true;
  std::set<std::string> allow_nodes;
  // Fleets at enrolment: a node named in `fleets.assign` joins that fleet, any other one
  // `fleets.default` ("" for none). Operators move nodes later (PUT /v1/nodes/N/fleet).
  std::string default_fleet;
  std::map<std::string, std::string> assigned_fleets;  // node id -> fleet
  std::map<std::string, Credential> credentials;       // by token_sha256
  uint32_t long_poll_max_s = 55;
  uint64_t max_upload_bytes = 64ull << 20;    // a records upload or an evidence state
  uint64_t max_pull_bytes = 512ull << 20;     // a responder's package; a larger range is refused (413)
  uint32_t max_connections = 4096;            // more wait in the listen backlog
  // Threads that verify record uploads off the event loop, and with PostgreSQL store them
  // (each with a store connection of its own); default: the machine's cores, at most 4.
  uint32_t ingest_threads = 0;
  // Uploads verified or stored at once; more wait their turn (up to 20 s, then 503).
  uint32_t ingest_queue = 256;
  std::filesystem::path source_file;
};

// hub.yaml; paths in it are relative to the file's folder. Unknown fields are errors.
Result<HubConfig> load_hub_config(const std::filesystem::path& file);

// `outpost-hub init DIR`: a development CA, the hub's certificate for `names` (default
// localhost and 127.0.0.1), a token per role (operator.token, responder.token, iam.token, mode
// 0600), hub.yaml with open enrolment and those tokens' hashes; writes nothing over existing
// files.
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
