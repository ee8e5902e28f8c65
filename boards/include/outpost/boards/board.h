// Board profiles: what differs between the devices outpost runs on (TPM access, PCR bank
// and selection, persistent handles and NV indices, the boot event log, paths, budgets,
// checkpoint cadence, the Landlock ABI the sandbox needs). Profiles are YAML; the ones in
// boards/profiles/ are compiled into the binaries, so `--board sim` needs no file.
// docs/boards.md describes every field, the ranges it must fall in and why.
//
// A BoardProfile is a plain value: parse_board() only ever returns one that passed every
// check, so its users need not validate it again.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/base/result.h"

namespace outpost::boards {

// TCG "Registry of Reserved TPM 2.0 Handles and Localities": the ranges a profile's handles
// must fall in (docs/boards.md cites the sources).
namespace handle_range {
inline constexpr uint32_t srk_first = 0x81000000, srk_last = 0x8100FFFF;  // owner: storage primary keys
inline constexpr uint32_t endorsement_first = 0x81010000, endorsement_last = 0x8101FFFF;  // EK, AK
inline constexpr uint32_t nv_owner_first = 0x01800000, nv_owner_last = 0x01BFFFFF;  // owner NV indices
}  // namespace handle_range

// How often the audit log is anchored by a TPM quote (DESIGN.md "Audit log, evidence and sync").
struct CheckpointCadence {
  uint32_t every_records = 1000;
  uint32_t every_seconds = 300;
  bool on_deny = true;
};

struct BoardProfile {
  std::string name;
  std::string description;

  // ---- tpm ----
  std::string tcti;
  std::string setup_hint;  // what an operator does when the TPM is missing; may be empty
  std::string pcr_bank = "sha256";
  std::vector<uint32_t> quote_pcrs;  // ascending
  uint32_t runtime_pcr = 23;         // where outpost extends its own measurements
  uint32_t srk_handle = 0;
  uint32_t ek_handle = 0;
  uint32_t ak_handle = 0;
  uint32_t rollback_counter_index = 0;

  // ---- boot ----
  // The TCG boot event log the kernel exposes; empty when the board's firmware does not
  // measure boot (`event_log: none` in the profile).
  std::string event_log;

  // ---- paths ----
  std::string state_dir;
  std::string config_dir = "/etc/outpost";

  // ---- budgets ----
  uint64_t audit_log_bytes = 256ull << 20;  // disk bound of the audit log and outbox
  uint64_t memory_bytes = 64ull << 20;      // outpostd's memory budget (its unit's MemoryMax)

  CheckpointCadence checkpoint;

  // The least Landlock ABI the sandbox may run on: 4 is the first that restricts TCP.
  uint32_t landlock_min_abi = 4;

  std::string trust_domain;

  bool measured_boot() const { return !event_log.empty(); }
  // "sha256:0,1,...,23", the selection quotes use.
  std::string quote_selection() const;
};

// Parses and validates a profile; errors name the source, line and field ("t.yaml:7:
// tpm.runtime_pcr ..."). Unknown and repeated fields are errors.
Result<BoardProfile> parse_board(std::string_view yaml, std::string_view source);

// A built-in profile by name, or a profile file when `name_or_path` contains a '/' or ends
// in ".yaml".
Result<BoardProfile> load_board(std::string_view name_or_path);

std::vector<std::string> builtin_board_names();

}  // namespace outpost::boards
