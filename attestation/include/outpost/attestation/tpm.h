// Tpm: outpost's one way to talk to a TPM 2.0, through ESAPI over a TCTI string
// ("swtpm:host=127.0.0.1,port=2321", "device:/dev/tpmrm0").
//
// Thread-safe. Every command runs on one serial executor owned by the Tpm, so commands from
// several threads never interleave and never run on a caller's event loop. Every transient
// object is flushed on every path: a TPM without a resource manager (swtpm through its TCTI,
// a board without tpm2-abrmd or /dev/tpmrm0) has only a few object slots.
//
// The connection heals itself. A command that fails in the transport (swtpm restarted, a
// socket error, fd exhaustion) returns that error, never retried, since it may not be
// idempotent (NV_Increment, Quote), and the TCTI and ESYS contexts are torn down. The next
// command reconnects first, as connect() does (Startup, leftovers flushed when Options ask);
// after a failed attempt, commands fail at once with errc::tpm_unavailable until a back-off
// of 100 ms, doubling to 5 s, has passed, so a dead TPM is not hammered. Persistent objects
// and NV indices are resolved again on the new connection; a LoadedKey from before it is
// gone and must be loaded again. health() tells how it goes.
//
// The key hierarchy (DESIGN.md "Trust and keys"):
//   SRK  ECC P-256 storage primary, owner hierarchy, persistent
//   EK   ECC P-256 from the TCG EK Credential Profile template L-2, endorsement, persistent
//   AK   restricted ECC P-256 signing primary, endorsement hierarchy, persistent
//   agent keys: ECC P-256 signing children of the SRK, blobs kept on disk
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outpost/attestation/types.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::attestation {

namespace detail {
class Esys;
}

enum class PrimaryKey { srk, ek, ak };
std::string_view primary_key_name(PrimaryKey k);

struct KeyPublic {
  uint32_t handle = 0;  // persistent handle, 0 for a loaded or unloaded child key
  Bytes public_area;    // marshalled TPM2B_PUBLIC
  Bytes name;           // TPM name: nameAlg || H(TPMT_PUBLIC)
  EcPublicKey key;
};

// An agent key as it lives on disk: marshalled TPM2B_PUBLIC and TPM2B_PRIVATE. The private
// part is encrypted and integrity-protected by the SRK; only this TPM can load it.
struct KeyBlob {
  Bytes public_area;
  Bytes private_area;
  Bytes serialize() const;  // both, back to back
  static Result<KeyBlob> parse(ByteView bytes);
};

struct EkCertificate {
  uint32_t nv_index = 0;
  Bytes der;
};

struct TpmInfo {
  std::string manufacturer;  // four ASCII characters, e.g. "IBM "
  std::string vendor;        // TPM2_PT_VENDOR_STRING_1..4
  std::string firmware;      // "major.minor.x.y" from TPM2_PT_FIRMWARE_VERSION_1/2
  uint32_t spec_revision = 0;
  std::vector<uint16_t> pcr_banks;  // hash algorithms with at least one PCR allocated
};

// What a TPM implements (TPM2_CAP_ALGS, TPM2_CAP_ECC_CURVES), so that a device can be
// checked before provisioning fails halfway (`outpost node check`).
struct TpmAlgorithms {
  std::vector<uint16_t> algorithms;  // TPM_ALG_ID
  std::vector<uint16_t> ecc_curves;  // TPM_ECC_CURVE
  // What outpost's keys need and this TPM lacks, by name ("ECC NIST P-256"); empty when
  // nothing is missing (DESIGN.md "Trust and keys": ECC P-256, ECDSA, SHA-256).
  std::vector<std::string> missing_for_outpost() const;
};

enum class HandleType { transient, session, persistent, nv_index };

// The state of a Tpm's connection, for `outpost status`.
struct TpmHealth {
  bool connected = false;         // false from a transport failure until a reconnect succeeds
  uint64_t reconnects = 0;        // connections re-established after a failure
  uint64_t failures = 0;          // connections lost, plus reconnect attempts that failed
  std::string last_error;         // the latest of those failures; empty when there was none
  int64_t last_failure_unix = 0;  // when it happened, Unix seconds; 0 when there was none
};

// The public area of an NV index (TPM2_NV_ReadPublic).
struct NvIndexPublic {
  uint32_t index = 0;
  uint32_t attributes = 0;  // TPMA_NV
  uint16_t data_size = 0;
  // Whether it has the shape ensure_counter gives outpost's counters. Reading an index of any
  // other shape with an empty password could count against the TPM's dictionary-attack lockout.
  bool is_outpost_counter() const;
};

class Tpm {
 public:
  struct Options {
    // Flush transient objects and sessions left by a process that died while holding them
    // (no resource manager cleans up after it). Right for the TPM's one owner: outpostd or a
    // CLI command while outpostd is not running.
    bool flush_leftovers = true;
  };

  // Connects; a TPM that is absent or unreachable gives an error naming the TCTI.
  static Result<std::unique_ptr<Tpm>> connect(const std::string& tcti, Options options);
  static Result<std::unique_ptr<Tpm>> connect(const std::string& tcti) { return connect(tcti, Options{}); }
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  const std::string& tcti() const { return tcti_; }
  // A snapshot taken under a small lock of its own: never waits for a TPM command.
  TpmHealth health() const;

  Result<TpmInfo> info();
  Result<TpmAlgorithms> algorithms();
  Result<std::vector<uint32_t>> handles(HandleType type);

  // ---- persistent primaries ----
  // The key at `handle`; errc::not_found when the handle is empty.
  Result<KeyPublic> read_persistent(uint32_t handle);
  // Creates the primary from outpost's template for `kind` and persists it at `handle`.
  Result<KeyPublic> create_persistent(PrimaryKey kind, uint32_t handle);
  // Whether a key's public area has the shape outpost's template for `kind` gives it.
  static Result<void> check_shape(PrimaryKey kind, const KeyPublic& key);
  // Removes a persistent object (owner or endorsement hierarchy as its handle implies).
  Result<void> evict(uint32_t handle);
  // EK certificates in the TCG-reserved NV indices, where the manufacturer put any.
  Result<std::vector<EkCertificate>> read_ek_certificates();

  // ---- child signing keys ----
  Result<KeyBlob> create_signing_key(uint32_t parent_handle);

  // A key loaded into the TPM; flushed when this object goes away. Holds a slot, so keep
  // few alive at once. Must not outlive its Tpm. Lives as long as the connection it was
  // loaded on: after a reconnect, sign and certify refuse it (errc::not_found).
  class LoadedKey {
   public:
    LoadedKey(LoadedKey&& o) noexcept
        : tpm_(o.tpm_), tr_(o.tr_), connection_(o.connection_), public_(std::move(o.public_)) {
      o.tpm_ = nullptr;
    }
    LoadedKey& operator=(LoadedKey&&) = delete;
    LoadedKey(const LoadedKey&) = delete;
    ~LoadedKey();
    const KeyPublic& public_key() const { return public_; }

   private:
    friend class Tpm;
    LoadedKey(Tpm* tpm, uint32_t tr, uint64_t connection, KeyPublic pub)
        : tpm_(tpm), tr_(tr), connection_(connection), public_(std::move(pub)) {}
    Tpm* tpm_;
    uint32_t tr_;          // ESYS_TR, meaningful only on connection_ (ESAPI reuses the numbers)
    uint64_t connection_;  // which connection of the Tpm's loaded it
    KeyPublic public_;
  };
  Result<LoadedKey> load(uint32_t parent_handle, const KeyBlob& blob);
  Result<RawSignature> sign(const LoadedKey& key, const Digest& digest);
  // TPM2_Certify of `key` by the AK at `ak_handle`.
  Result<SignedAttestation> certify(const LoadedKey& key, uint32_t ak_handle, ByteView qualifying_data);

  // ---- sealed data ----
  // The most one sealed object holds: MAX_SYM_DATA of the TPM 2.0 specification (tss2's
  // TPM2B_SENSITIVE_DATA has room for more than a TPM accepts).
  static constexpr size_t kMaxSealedBytes = 128;
  // TPM2_Create of a KEYEDHASH data object under `parent_handle` holding `secret` (1 to
  // kMaxSealedBytes bytes). The blob is encrypted and integrity-protected by the parent: only
  // this TPM, under this parent, can unseal it. The object's auth is the empty password, so
  // whoever can both talk to this TPM and read the blob can unseal it.
  Result<KeyBlob> seal(uint32_t parent_handle, ByteView secret);
  // Load, TPM2_Unseal, flush. A blob of another TPM or parent, or an altered one, fails at Load
  // (TPM_RC_INTEGRITY); a blob that is not a sealed data object is refused before the TPM sees
  // it. The copies this function makes are wiped; the caller owns (and should wipe) the result.
  Result<Bytes> unseal(uint32_t parent_handle, const KeyBlob& blob);

  // ---- credential activation ----
  // TPM2_ActivateCredential: opens a credential made (credential.h: make_credential) for the EK
  // at `ek_handle` and the name of the key at `ak_handle`, and returns its secret. The EK is
  // authorised by a policy session satisfied by PolicySecret(TPM_RH_ENDORSEMENT), its
  // template's policy, flushed on every path; the AK by its empty password. A credential made
  // for another name or another EK, or altered, fails with TPM_RC_INTEGRITY; bytes that do not
  // parse are refused before the TPM sees them. The caller owns (and should wipe) the result.
  Result<Bytes> activate_credential(uint32_t ak_handle, uint32_t ek_handle, const CredentialChallenge& challenge);

  // ---- PCRs, quotes, clock, counters ----
  // TPM2_Quote by the AK; the PCR values are read right after, and the quote is retaken if a
  // PCR changed in between, so the values returned are the ones the quote signs.
  Result<Quote> quote(uint32_t ak_handle, const PcrSelections& selection, ByteView qualifying_data);
  Result<PcrValues> pcr_read(const PcrSelections& selection);
  // Extends a SHA-256 measurement into the sha256 bank of `pcr`.
  Result<void> pcr_extend(uint32_t pcr, const Digest& measurement);
  Result<TimeInfo> read_clock();

  // NV monotonic counter (TPM_NT_COUNTER). ensure_counter defines it when missing and gives
  // it its first value; increment waits out TPM_RC_NV_RATE instead of failing.
  Result<uint64_t> ensure_counter(uint32_t nv_index);
  Result<uint64_t> read_counter(uint32_t nv_index);
  // errc::not_found when the index is not defined.
  Result<NvIndexPublic> nv_public(uint32_t nv_index);
  Result<uint64_t> increment_counter(uint32_t nv_index);

 private:
  Tpm() = default;
  void flush_loaded(uint32_t tr, uint64_t connection);
  // Runs `job` on the executor as one command: connects first if a failure dropped the
  // connection, and drops it when `job` broke it. Defined in tpm.cc, its only user.
  template <class Job>
  auto command(Job&& job);
  // On the executor's thread: open (or reopen) the connection; reconnect when back-off
  // allows; tear down a broken connection, giving its cause.
  Result<void> open_connection();
  Result<void> ensure_connected();
  std::optional<Error> drop_if_broken();
  Result<void> check_current(const LoadedKey& key) const;

  std::string tcti_;
  Options options_;
  std::unique_ptr<detail::Esys> esys_;
  struct Queue;
  std::unique_ptr<Queue> queue_;
};

}  // namespace outpost::attestation
