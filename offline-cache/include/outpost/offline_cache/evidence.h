// Evidence packages: one file that lets a responder check a node's audit records offline,
// with nothing but the node's AK as pinned at enrolment (docs/evidence.md).
//
// A package (schema/evidence.fbs, file identifier "OPEV") holds the node's identity, its agent
// key certifications, the runtime measurement log, the boot event log where the board has
// one, the NV counter state and bundle versions from the state directory, and a run of audit
// records as whole frames, byte for byte as in the segments. The exporter on the node is
// not trusted: verify_evidence_package() checks every signature against the trusted AK, never
// against the one the package names.
//
// Everything here is a plain function of its inputs (the collectors read files); safe to call
// from any thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::offline_cache {

inline constexpr uint32_t kEvidenceFormat = 1;
// Larger packages are refused by the parser (FlatBuffers itself stops at 2 GiB). An export
// holds at most kMaxEvidenceRecordsBytes of records, leaving room for the logs.
inline constexpr size_t kMaxEvidencePackageBytes = 1ull << 30;
inline constexpr size_t kMaxEvidenceRecordsBytes = kMaxEvidencePackageBytes - (128ull << 20);

struct AgentCertification {
  std::string name;
  Digest measurement{};
  Bytes key_public_area;  // marshalled TPM2B_PUBLIC of the agent key
  attestation::SignedAttestation certification;
};

struct NvCounterState {
  uint32_t index = 0;  // 0: the exporter did not know the index
  std::string purpose;
  uint64_t value = 0;
  std::string source;  // e.g. "state-dir"
};

struct BundleVersion {
  uint64_t version = 0;
  std::string digest_hex;
  std::string installed_at;  // RFC 3339 UTC; empty when not known
};

struct EvidencePackage {
  uint32_t format = kEvidenceFormat;
  std::string node_identity_json;  // node.json as is
  std::string board;
  std::string exported_at;         // RFC 3339 UTC
  int64_t since_ms = 0, until_ms = 0;  // 0: open
  std::vector<AgentCertification> agent_certifications;
  Bytes runtime_log;     // <state>/measurements/runtime.log as is (may be empty)
  Bytes boot_event_log;  // empty when the board has none
  std::vector<NvCounterState> nv_counters;
  std::vector<BundleVersion> bundles;
  Bytes records;  // whole audit frames, concatenated in sequence order, byte-for-byte as in the segments
};

Bytes encode_evidence_package(const EvidencePackage& p);
// Untrusted input: size-bounded, checked by the FlatBuffers verifier; errc::corrupt names what
// is wrong, errc::unsupported a newer format.
Result<EvidencePackage> parse_evidence_package(ByteView bytes);

// What the node knows apart from records: identity, certifications, logs, counters, bundles.
// state_dir is outpostd's state directory; boot_event_log empty path = none. The NV counter's
// index is left 0 (the board profile knows it; the caller fills it in). An agent whose key
// files do not read is still listed, with no certification, so that verify reports it.
Result<EvidencePackage> collect_node_evidence(const std::filesystem::path& state_dir,
                                              const std::filesystem::path& boot_event_log);

// The audit records an export takes from a log directory (<state>/audit/log).
struct RecordSelection {
  Bytes frames;  // for EvidencePackage::records
  uint64_t records = 0, first_seq = 0, last_seq = 0;
  uint64_t selected_first_seq = 0, selected_last_seq = 0;  // what the time range alone selected
  std::optional<uint64_t> anchor_checkpoint;  // the checkpoint the selection was extended through
  std::vector<std::string> notes;             // damage left out, no anchoring checkpoint yet, ...
};
// Every record with since_ms <= time_ms <= until_ms (0: open), as one contiguous run of
// sequence numbers, extended forward through the first checkpoint whose head is at or after
// the last record selected that is not itself a checkpoint (so that the selection is
// anchored), and back to the head of every checkpoint it holds. A stretch of a segment that is not a valid frame is left out and named
// in notes: the package's verifier then reports the records it lacks. progress(done, total)
// counts bytes read. A selection over kMaxEvidenceRecordsBytes is refused (errc::invalid_argument).
Result<RecordSelection> select_audit_records(const std::filesystem::path& log_dir, int64_t since_ms, int64_t until_ms,
                                             const std::function<void(uint64_t, uint64_t)>& progress = {});

struct EvidenceTrust {
  EcPublicKey ak;  // the node's AK as pinned at enrolment (outpost node info / the hub)
};

struct EvidenceReport {
  std::string node_id;
  uint64_t records = 0, first_seq = 0, last_seq = 0, anchored_through = 0;
  size_t checkpoints = 0, checkpoints_verified = 0, certifications_verified = 0, runtime_entries = 0;
  std::vector<std::string> problems;  // each names what and where (seq, agent, line)
  std::vector<std::string> warnings;  // e.g. records after the last checkpoint are not anchored
  bool ok() const { return problems.empty(); }
  std::string to_json() const;
};

// Offline: the identity's AK is the trusted one; every agent certification; the records'
// frames, chain, sequence with no gap, each checkpoint's head and quote with the TPM clock
// only going forward; the runtime log parses and each checkpoint of its TPM boot quotes a
// replay of a prefix of it; the boot event log parses and replays to the last such quote.
EvidenceReport verify_evidence_package(const EvidencePackage& p, const EvidenceTrust& trust);

}  // namespace outpost::offline_cache
