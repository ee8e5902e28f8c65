// The node's sync with outpost-hub (DESIGN.md "Sync"): enrols the node, uploads the audit log
// in order from the sequence the hub acknowledged, releases what the hub has, keeps the hub's
// copy of the node's evidence state current, and long-polls for new bundles. Runs on a thread
// of its own with its own io_context; survives hub restarts and cut connections by backing
// off exponentially with jitter and resuming from the hub's acknowledgement.
//
// The hub stores records through the last checkpoint in an upload (a TPM quote by the node's
// AK anchors them), so the client uploads through its newest checkpoint, and asks outpostd
// for a checkpoint when durable records wait with none after them.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "outpost/attestation/types.h"
#include "outpost/base/result.h"
#include "outpost/offline_cache/audit_log.h"
#include "sync/hub_client.h"

namespace outpost::sync {

struct SyncSettings {
  HubEndpoint hub;
  uint32_t batch_records = 10000;          // at most this many records per upload
  uint64_t batch_bytes = 4ull << 20;       // and about this many bytes
  uint64_t bandwidth_bytes_per_s = 0;      // upload pacing; 0 = as fast as the link goes
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{60000};
  std::chrono::milliseconds idle_poll{1000};     // how often to look for new records when caught up
  std::chrono::seconds bundle_wait{25};          // the long-poll's hold at the hub
  std::chrono::seconds checkpoint_min_interval{5};  // between checkpoints the sync asks for
  std::chrono::seconds attest_interval{600};     // a quote over a hub nonce at least this often
  // Where the node token the hub hands out once the TPM showed itself is kept (it authenticates
  // the bundle poll); empty: kept in memory only, asked for again at each start.
  std::filesystem::path token_file;
};

struct SyncHooks {
  // Installs a bundle the hub serves (outpostd's install path; blocking). Returns its version.
  std::function<Result<uint64_t>(Bytes)> install_bundle;
  // The fleet the node is in as it knows it, and the hub's word that it is in another one now
  // (from the enrolment answer or a bundle poll's X-Outpost-Fleet; persisted by outpostd).
  std::function<std::string()> fleet;
  std::function<Result<void>(const std::string&)> set_fleet;
  // The version of the bundle in force (0: none), so an older one served is not offered again.
  std::function<uint64_t()> bundle_version;
  // Asks outpostd for a checkpoint now (returns at once).
  std::function<void()> request_checkpoint;
  // The node's evidence state (no records) as an encoded package, for the hub.
  std::function<Result<Bytes>()> evidence_state;
  // Opens the credential the hub made for this node's EK and AK at enrolment (TPM2
  // credential activation) and returns the secret it held. Blocking.
  std::function<Result<Bytes>(const attestation::CredentialChallenge&)> activate_credential;
  // A quote by the AK over `nonce` (the board's PCR selection), for the hub's fresh attestation.
  std::function<Result<attestation::Quote>(ByteView nonce)> quote;
};

struct SyncStatus {
  std::string hub;
  bool enrolled = false;
  uint64_t acked_seq = 0;        // the hub has every record up to here
  uint64_t durable_seq = 0;
  uint64_t uploaded_records = 0;
  uint64_t uploaded_bytes = 0;
  int64_t last_contact_ms = 0;   // Unix ms of the last successful exchange
  int64_t last_attested_ms = 0;  // Unix ms of the last quote over a hub nonce the hub verified
  std::string last_error;        // of the last failed attempt, until one succeeds
  uint64_t failures = 0;         // failed attempts since start (metrics: outpost_sync_failures_total)
  int64_t next_attempt_ms = 0;   // after a failure: when the next attempt is due
  uint64_t bundles_installed = 0;
  std::string fleet;             // as the hub last named it ("" none)
  uint64_t backlog() const { return durable_seq > acked_seq ? durable_seq - acked_seq : 0; }
};

class SyncClient {
 public:
  // `log` and the hooks must outlive the client. node_json is the node's identity (node.json).
  static Result<std::unique_ptr<SyncClient>> start(SyncSettings settings, std::string node_json, std::string node_id,
                                                   offline_cache::AuditLog& log, SyncHooks hooks);
  ~SyncClient();  // stop()
  void stop();
  SyncStatus status() const;
  // Wakes the uploader (new records are durable).
  void notify();

  struct Impl;

 private:
  explicit SyncClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::sync
