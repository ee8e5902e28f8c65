// outpostd's configuration file and the agent manifest, both YAML. Unknown fields are errors
// (a typo must not silently weaken a sandbox); errors name the file, line and field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "upstream/oauth.h"

#include "outpost/base/result.h"

namespace outpost::daemon {

struct DaemonConfig {
  std::string board = "sim";              // a built-in board name or a profile file
  std::filesystem::path state_dir;        // default: the board's
  std::string tcti;                       // default: the board's
  std::filesystem::path socket;           // the CLI and agent API (default <state>/outpostd.sock)
  std::filesystem::path inbox;            // bundles dropped here are installed (default <state>/inbox)
  std::vector<uint32_t> allow_uids{0};    // who may use the operator API (SO_PEERCRED)
  std::vector<uint32_t> allow_gids;
  uint32_t max_agents = 32;
  uint64_t max_binary_bytes = 512ull << 20;  // measuring an agent binary reads at most this
  uint64_t max_line_bytes = 16ull << 20;     // one MCP message
  uint64_t max_log_bytes = 8ull << 20;       // an agent's log is rotated at this size
  std::vector<std::filesystem::path> system_read_only{"/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"};
  // Each agent runs as its own uid (= gid) from [agent_uid_base, agent_uid_base + agent_uid_count),
  // allocated at deploy and kept across restarts; ids the system's user database names are
  // skipped. The default range is past systemd's dynamic (61184-65519) and container (524288-1879048191)
  // ranges and below 2^31, where signed conversions would bite.
  uint32_t agent_uid_base = 1'900'000'000u;
  uint32_t agent_uid_count = 4096;
  uint32_t agent_max_processes = 1024;  // RLIMIT_NPROC of each agent's uid (processes and threads)

  // The egress proxy each agent reaches at 127.0.0.1:egress_port inside its own network
  // namespace, its only road out (docs/daemon.md, "Egress").
  uint16_t egress_port = 3128;
  uint32_t egress_idle_timeout_s = 600;       // a connection with no byte either way is closed
  uint32_t egress_max_connections = 64;       // open at once, per agent
  // The MCP endpoint for agents whose MCP client speaks Streamable HTTP, at
  // http://127.0.0.1:mcp_port/mcp/SERVER in the same namespace (docs/daemon.md, "HTTP agents").
  uint16_t mcp_port = 3129;

  // Prometheus metrics over HTTP at http://metrics_listen/metrics (docs/daemon.md, "Metrics"):
  // a loopback address and port; empty, the default: none (`outpost metrics` still prints them).
  std::string metrics_listen;

  // The API socket under abuse (docs/daemon.md, "The API socket").
  uint32_t api_max_connections = 256;          // all peers together
  uint32_t api_max_connections_per_uid = 16;   // one operator or local user
  uint32_t api_max_connections_per_agent = 32; // one agent (each MCP connection holds one)
  uint32_t api_request_timeout_ms = 10000;     // the whole request line, not each read
  // Denied calls an agent may have recorded one by one, per second and in a burst; beyond them
  // identical denials are coalesced into one record with a count (docs/audit.md).
  uint32_t deny_records_per_s = 20;
  uint32_t deny_records_burst = 100;
  // When the audit log holds this share of its budget (percent), the agent that wrote most of
  // the records since the log last had room is paused, alone (docs/audit.md, "Fairness").
  uint32_t audit_agent_pause_percent = 75;
  uint32_t inbox_poll_ms = 1000;
  uint32_t life_check_s = 10;             // how often the bundle's life is re-evaluated
  // A decision's audit record is fdatasync'ed before the call goes on (true), or queued and
  // made durable by the next group commit (false: less latency, a crash can lose the records
  // of the last commit interval). docs/audit.md.
  bool durable_decisions = true;

  // Sync with outpost-hub (runtime/sync/sync_client.h); no sync when url is empty.
  struct Hub {
    std::string url;                  // https://host:port
    std::string pin_sha256;           // SHA-256 of the hub certificate's public key (hex)
    std::filesystem::path ca;         // a CA that issued the hub's certificate (the host is checked)
    uint32_t batch_records = 10000;
    uint64_t batch_bytes = 4ull << 20;
    uint64_t bandwidth_bytes_per_s = 0;  // 0: unlimited
    uint32_t backoff_initial_ms = 500;
    uint32_t backoff_max_ms = 60000;
    uint32_t idle_poll_ms = 1000;
    uint32_t bundle_wait_s = 25;
    uint32_t attest_interval_s = 600;  // a quote over a hub nonce at least this often
  } hub;

  // Set by load_daemon_config: the file and the exact bytes read, which outpostd measures
  // into the runtime PCR before it acts on them.
  std::filesystem::path source_file;
  std::string source_text;
};

Result<DaemonConfig> parse_daemon_config(std::string_view yaml, std::string_view source);
Result<DaemonConfig> load_daemon_config(const std::filesystem::path& file);

struct SecretRef {
  std::string name;  // a sealed secret in <state>/secrets/
  std::string env;   // the variable the tool's process receives it in
};

struct McpServerSpec {
  std::string name;
  // A remote server (Streamable HTTP): outpostd connects to it itself, as an egress destination
  // of the agent's that the bundle must allow, and presents `auth`'s credential; the agent
  // never holds it. Excludes command and local.
  std::string url;
  std::filesystem::path ca;        // a pinned CA (PEM); empty: the system's CA store
  upstream::AuthSpec auth;
  std::string credential_header;   // the call-scoped credential also as this HTTP header
  // Local command tools: outpostd serves the bundle's `local_command` tools of this server
  // itself (`outpost mcp serve-local`); the executables come from the signed bundle.
  bool local = false;
  std::filesystem::path command;  // absolute after resolution; empty when local
  std::vector<std::string> args;
  std::vector<std::string> env_allow;                     // from outpostd's own environment
  std::vector<std::pair<std::string, std::string>> env;   // set explicitly
  std::vector<SecretRef> secrets;                         // unsealed into the tool, never the agent
  std::filesystem::path cwd;
};

enum class RestartPolicy { never, on_failure, always };

struct AgentManifest {
  std::string name;
  std::filesystem::path command;           // absolute after resolution
  std::vector<std::string> args;           // "$OUTPOST_MCP_CONFIG" is replaced by the generated config's path
  std::filesystem::path binary;            // what is measured (default: command)
  std::filesystem::path workdir;           // read-write; default <state>/agents/<name>/work
  std::vector<std::filesystem::path> read_only;  // extra read-only paths (the agent's code)
  std::vector<std::string> env_allow;
  std::vector<std::pair<std::string, std::string>> env;
  std::string task;                        // the task its calls are decided under
  RestartPolicy restart = RestartPolicy::on_failure;
  std::vector<McpServerSpec> mcp_servers;
  std::string source;                      // the manifest text, kept for redeploy at restart
  std::filesystem::path base_dir;          // relative paths resolve against this
};

// Relative paths resolve against `base_dir` (the manifest's folder).
Result<AgentManifest> parse_manifest(std::string_view yaml, std::string_view source,
                                     const std::filesystem::path& base_dir);

}  // namespace outpost::daemon
