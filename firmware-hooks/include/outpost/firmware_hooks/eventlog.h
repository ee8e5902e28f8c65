// The TCG PC Client boot event log: what the firmware measured into the PCRs before the OS ran
// (Linux: /sys/kernel/security/tpm0/binary_bios_measurements).
//
// Two formats are read, both little-endian (TCG PC Client Platform Firmware Profile, PFP):
//   crypto-agile  a TCG_PCR_EVENT (SHA-1 header format) carrying the "Spec ID Event03", which
//                 declares the digest algorithms and their sizes, then TCG_PCR_EVENT2 records
//                 with one digest per bank;
//   SHA-1         TCG_PCR_EVENT records only (TPM 1.2 era firmware).
// parse_event_log() checks every length against what is left before reading it and returns
// an Error naming the event and its offset; it never reads past the input. replay()
// recomputes every PCR of every known bank; compare_with_quote() says which PCRs a quote
// disagrees with and which event is the first that cannot be vouched for. See
// docs/eventlog.md for the exact rules.
//
// Everything here is a pure function of its input: safe to call from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "outpost/attestation/types.h"
#include "outpost/base/bytes.h"
#include "outpost/base/result.h"

namespace outpost::firmware_hooks {

// PCRs of a PC Client TPM: 0..23.
inline constexpr uint32_t kPcrCount = 24;
// Refused above this size: real logs are tens of KiB.
inline constexpr size_t kMaxLogSize = 64u << 20;
// At most this many algorithms in a Spec ID event, digests of at most this size, and at most
// this many events (a real log has hundreds).
inline constexpr uint32_t kMaxAlgorithms = 16;
inline constexpr uint16_t kMaxDigestSize = 64;
inline constexpr size_t kMaxEvents = 100000;

// Event types (PFP section 10.4.1, "Event Types").
namespace event_type {
inline constexpr uint32_t preboot_cert = 0x00000000;
inline constexpr uint32_t post_code = 0x00000001;
inline constexpr uint32_t unused = 0x00000002;
inline constexpr uint32_t no_action = 0x00000003;
inline constexpr uint32_t separator = 0x00000004;
inline constexpr uint32_t action = 0x00000005;
inline constexpr uint32_t event_tag = 0x00000006;
inline constexpr uint32_t s_crtm_contents = 0x00000007;
inline constexpr uint32_t s_crtm_version = 0x00000008;
inline constexpr uint32_t cpu_microcode = 0x00000009;
inline constexpr uint32_t platform_config_flags = 0x0000000A;
inline constexpr uint32_t table_of_devices = 0x0000000B;
inline constexpr uint32_t compact_hash = 0x0000000C;
inline constexpr uint32_t ipl = 0x0000000D;
inline constexpr uint32_t ipl_partition_data = 0x0000000E;
inline constexpr uint32_t nonhost_code = 0x0000000F;
inline constexpr uint32_t nonhost_config = 0x00000010;
inline constexpr uint32_t nonhost_info = 0x00000011;
inline constexpr uint32_t omit_boot_device_events = 0x00000012;
inline constexpr uint32_t efi_variable_driver_config = 0x80000001;
inline constexpr uint32_t efi_variable_boot = 0x80000002;
inline constexpr uint32_t efi_boot_services_application = 0x80000003;
inline constexpr uint32_t efi_boot_services_driver = 0x80000004;
inline constexpr uint32_t efi_runtime_services_driver = 0x80000005;
inline constexpr uint32_t efi_gpt_event = 0x80000006;
inline constexpr uint32_t efi_action = 0x80000007;
inline constexpr uint32_t efi_platform_firmware_blob = 0x80000008;
inline constexpr uint32_t efi_handoff_tables = 0x80000009;
inline constexpr uint32_t efi_platform_firmware_blob2 = 0x8000000A;
inline constexpr uint32_t efi_handoff_tables2 = 0x8000000B;
inline constexpr uint32_t efi_variable_boot2 = 0x8000000C;
inline constexpr uint32_t efi_hcrtm_event = 0x80000010;
inline constexpr uint32_t efi_variable_authority = 0x800000E0;
inline constexpr uint32_t efi_spdm_firmware_blob = 0x800000E1;
inline constexpr uint32_t efi_spdm_firmware_config = 0x800000E2;
}  // namespace event_type

// "EV_SEPARATOR"; "EV_UNKNOWN_0x12345678" for a type the PFP does not define.
std::string event_type_name(uint32_t type);
// "sha256"; "alg-0x0012" for an algorithm outpost does not know.
std::string alg_name(uint16_t alg);

struct AlgorithmSize {
  uint16_t alg = 0;
  uint16_t digest_size = 0;
  bool operator==(const AlgorithmSize&) const = default;
};

// TCG_EfiSpecIdEvent (PFP section 10.4.5.1).
struct SpecIdEvent {
  uint32_t platform_class = 0;
  uint8_t spec_version_minor = 0;
  uint8_t spec_version_major = 0;
  uint8_t spec_errata = 0;
  uint8_t uintn_size = 0;
  std::vector<AlgorithmSize> algorithms;  // in the order declared
  Bytes vendor_info;
};

struct EventDigest {
  uint16_t alg = 0;
  Bytes digest;
};

// One record of the log. Numbering follows tpm2_eventlog: the first record (the Spec ID
// header of a crypto-agile log) is event 0.
struct Event {
  size_t index = 0;
  size_t offset = 0;  // of the record's first byte in the log
  uint32_t pcr = 0;
  uint32_t type = 0;
  std::vector<EventDigest> digests;  // one per bank in the record's order; SHA-1 only in a SHA-1 log
  Bytes data;

  // The digest for `alg`, or nullptr.
  const Bytes* digest(uint16_t alg) const;
};

enum class LogFormat { crypto_agile, sha1 };

struct EventLog {
  LogFormat format = LogFormat::crypto_agile;
  std::optional<SpecIdEvent> spec_id;  // set for crypto-agile logs (it is also events[0])
  std::vector<Event> events;

  // The banks this log can replay: the known algorithms its Spec ID event declares (SHA-1
  // alone for a SHA-1 log), ascending by algorithm id.
  std::vector<uint16_t> banks() const;
};

Result<EventLog> parse_event_log(ByteView bytes);

// UEFI_VARIABLE_DATA (PFP section 10.2.6), the payload of EV_EFI_VARIABLE_* events.
struct EfiVariable {
  std::array<uint8_t, 16> guid{};
  std::string name;  // UnicodeName as UTF-8
  Bytes data;        // VariableData
};
Result<EfiVariable> decode_efi_variable(ByteView data);
// An EFI GUID in its registry form, "8be4df61-93ca-11d2-aa0d-00e098032b8c" (the first three
// fields are little-endian in memory).
std::string format_guid(const std::array<uint8_t, 16>& guid);

// A one-line readable rendering of the event's payload: "SecureBoot (8be4df61-…) 1 byte",
// "\EFI\BOOT\BOOTX64.EFI", "separator 00000000", the EV_EFI_ACTION string, … Never fails: a
// payload that does not decode says so ("malformed UEFI_VARIABLE_DATA: …").
std::string describe_event(const Event& event);

// The replayed value of one PCR in one bank.
struct PcrReplay {
  Bytes initial;                  // all zero, or 00..0L for PCR 0 after StartupLocality L
  std::optional<uint8_t> locality;  // set by a StartupLocality or H-CRTM event
  std::vector<size_t> events;     // indices of the events extended into it, in order
  Bytes value;                    // initial extended by each event's digest in turn

  // Whether the log says anything about this PCR: an extend or a locality.
  bool touched() const { return !events.empty() || locality.has_value(); }
};

struct BankReplay {
  uint16_t alg = 0;
  std::array<PcrReplay, kPcrCount> pcrs;
};

// Keyed by algorithm id.
using Replay = std::map<uint16_t, BankReplay>;

// Recomputes every PCR of every bank of log.banks(): new = H(old || digest) for each event
// that is not EV_NO_ACTION. A StartupLocality EV_NO_ACTION event (or an EV_EFI_HCRTM_EVENT,
// locality 4) seen before PCR 0's first extend sets PCR 0's initial value in every bank.
Result<Replay> replay(const EventLog& log);

// The outcome for one quoted PCR.
struct PcrComparison {
  enum class Verdict {
    match,             // the replayed value is the quoted value
    log_has_extra,     // the quoted value is the replay of a strict prefix of the log's events
    no_prefix_matches, // no prefix of the log's events (not even none) gives the quoted value
    bank_not_in_log,   // the log has no digests for this bank
  };
  uint16_t alg = 0;
  uint32_t pcr = 0;
  Verdict verdict = Verdict::match;
  Bytes quoted;
  Bytes replayed;
  // log_has_extra: the first event the TPM did not see (the event right after the matching
  // prefix). no_prefix_matches: the first event extended into this PCR — nothing from there
  // on can be vouched for (a changed event anywhere in the chain, or extends the log does not
  // record, look the same when only the final value is known). Empty when the PCR has no
  // events in the log or the bank is missing.
  std::optional<size_t> first_divergent_event;
};

struct QuoteComparison {
  std::vector<PcrComparison> pcrs;  // one per quoted (bank, PCR), in the quote's order
  bool all_match() const;
  // The lowest first_divergent_event over every PCR that does not match.
  std::optional<size_t> first_divergent_event() const;
};

Result<QuoteComparison> compare_with_quote(const EventLog& log, const Replay& replayed, const attestation::PcrValues& quoted);

// Hashes `data` with the bank's algorithm (SHA-1, SHA-256, SHA-384, SHA-512); an unknown
// algorithm is errc::unsupported.
Result<Bytes> bank_hash(uint16_t alg, ByteView data);

}  // namespace outpost::firmware_hooks
