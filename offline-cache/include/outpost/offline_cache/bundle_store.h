// The node's bundle store: the installed signed bundle, bound to the TPM so that it cannot be
// rolled back and its offline life cannot be stretched.
//
// Layout under <state>/bundles/:
//   <sha256>.opb        the installed bundle and the one before it (for diagnosis)
//   state.json          the commit point: version, bundle hash, NV counter value, TPM clock at
//                       the last hub contact (or install), wall-clock high-water mark, signed
//                       by a TPM-resident state key
//   state-key.blob      that key (ECC P-256 under the SRK; only this TPM can use it)
//
// Anti-rollback: every install increments the TPM NV counter and records the new value in
// state.json. At every start the record must be signed by the state key and its counter must
// equal the TPM's: a restored older state directory carries an older counter and is refused,
// and an older bundle never passes the version check. (A record one ahead of the TPM is an
// install that lost power between writing the record and incrementing; it is rolled forward.)
// The threat is disk access (copying, restoring, editing files); a root user who can drive the
// TPM on the live node could sign a record too, which measured boot and the hub's view of the
// counter (issue 5) are there to expose.
//
// Offline life: a bundle is in force only while the wall clock is within not_before..not_after
// and not behind the high-water mark (5 minutes of slack), and the TPM Clock — powered-on
// time, which neither `date` nor a restored disk can wind back — has advanced less than
// max_offline since the last contact. A TPM clock behind the recorded contact (a cleared TPM
// or lost time) fails closed until the hub is reached again.
//
// Not thread-safe; the daemon owns one store.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"
#include "outpost/base/result.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/trust.h"

namespace outpost::offline_cache {

inline constexpr int64_t kWallClockSlack = 300;  // seconds the wall clock may step back

struct NodeScope {
  std::string node_id;
  std::string board;
  std::string fleet;  // empty: the node belongs to no fleet
};
// Whether the bundle's scope admits this node (an empty list admits any). Without
// `with_fleet` the fleet is not looked at (a bundle in force stays so when the node is moved).
Result<void> check_scope(const fb::Bundle& bundle, const NodeScope& node, bool with_fleet = true);

// The fleet the hub put this node in, as the sync client last heard it (<state>/fleet; "" when
// there is no such file: never heard). Written atomically when it changes; bundles installed
// after that are checked against it. A file that cannot be read is an error, not "no fleet".
// Not signed: the fleet is as strong as the hub's word and the state directory's permissions
// (docs/hub.md, Fleets).
Result<std::string> read_node_fleet(const std::filesystem::path& state_dir);
Result<void> write_node_fleet(const std::filesystem::path& state_dir, const std::string& fleet);

struct BundleState {
  uint64_t version = 0;
  std::string bundle_sha256;
  std::string previous_sha256;
  uint64_t counter = 0;
  int64_t installed_at = 0;
  int64_t wall_high_water = 0;
  attestation::ClockInfo contact_clock;  // TPM clock at the last hub contact or install
  int64_t contact_wall = 0;
  uint64_t root_version = 0;

  std::string canonical() const;  // what the state key signs
};

struct BundleStatus {
  uint64_t version = 0;
  bool in_force = false;
  std::string reason;          // why not in force; empty when it is
  bool safe_set = false;       // on expiry the signed safe set applies (else deny all)
  int64_t not_before = 0;
  int64_t not_after = 0;
  int64_t installed_at = 0;
  int64_t life_left = 0;       // seconds of wall-clock life left (<= 0: expired)
  int64_t offline_left = 0;    // seconds of TPM-clock offline budget left
  uint64_t max_offline = 0;
  int64_t last_contact = 0;    // wall time of the last hub contact or install
};

// Pure: the status of `bundle` given `state`, the wall clock and the TPM clock now.
BundleStatus evaluate_life(const fb::Bundle& bundle, const BundleState& state, int64_t wall_now,
                           const attestation::ClockInfo& tpm_now);

class BundleStore {
 public:
  BundleStore(std::filesystem::path state_dir, const attestation::NodeIdentity& node, uint32_t counter_index,
              NodeScope scope);

  struct Installed {
    SignedBundle bundle;
    BundleState state;
    BundleStatus status;
  };

  // Verifies (signatures against `root`, scope, version above the installed one, lifetime)
  // and installs atomically. Refusals leave the installed bundle untouched.
  //
  // A state directory with no record on a TPM whose rollback counter exists means the record
  // was deleted or the directory restored from before the first install: refused, since any
  // old bundle would then pass the version check. An operator who rebuilt the node's disk on
  // purpose says so with `accept_missing_state` (`bundle install --accept-missing-state`).
  struct InstallOptions {
    bool accept_missing_state = false;
  };
  Result<Installed> install(attestation::Tpm& tpm, Bytes bundle_bytes, const TrustRoot& root, int64_t wall_now,
                            InstallOptions options);
  Result<Installed> install(attestation::Tpm& tpm, Bytes bundle_bytes, const TrustRoot& root, int64_t wall_now) {
    return install(tpm, std::move(bundle_bytes), root, wall_now, InstallOptions{});
  }

  // The installed bundle, re-verified (state signature, TPM counter, bundle hash, signatures,
  // scope but the fleet: a move leaves the bundle in force) with its status now; raises the wall-clock high-water mark. errc::not_found when
  // nothing is installed.
  Result<Installed> load(attestation::Tpm& tpm, const TrustRoot& root, int64_t wall_now);

  // The node was moved to another fleet: installs from now on are checked against it. The
  // bundle in force stays in force (load() does not look at the fleet) until a newer one of
  // the new fleet is installed.
  void set_fleet(std::string fleet) { scope_.fleet = std::move(fleet); }
  const std::string& fleet() const { return scope_.fleet; }

  // A successful hub contact: the offline budget starts again from the TPM clock now.
  Result<void> record_contact(attestation::Tpm& tpm, int64_t wall_now);

  std::filesystem::path dir() const { return dir_; }

 private:
  Result<std::optional<BundleState>> read_state(attestation::Tpm& tpm);
  Result<void> write_state(attestation::Tpm& tpm, const BundleState& state);
  Result<attestation::KeyBlob> state_key(attestation::Tpm& tpm, bool create);

  std::filesystem::path dir_;
  const attestation::NodeIdentity& node_;
  uint32_t counter_index_;
  NodeScope scope_;
};

}  // namespace outpost::offline_cache
