// The ESAPI seam: the only header that includes <tss2/tss2_esys.h>.
//
// Esys owns one TCTI context and one ESYS context. It has exactly one method per ESAPI call
// outpost makes; each calls the function once, checks its TSS2_RC and turns a failure into an
// Error in tss2_category() whose context names the ESAPI function (Tss2_RC_Decode supplies
// the text). Nothing else in outpost sees a raw TSS2_RC.
//
// Handles are RAII: a Handle either flushes its object from the TPM (transient objects and
// sessions) or only releases ESAPI's bookkeeping (persistent objects, NV indices) when it
// goes away, on every path, errors included.
//
// Once a call fails in the transport (is_transport_failure), the Esys is broken() for good:
// ESAPI leaves its context in an error state that fails every later call with "called in the
// wrong order", and a device TCTI may have lost its place in the byte stream. Only a new Esys
// recovers; Tpm makes one.
//
// Not thread-safe: Tpm drives it from its single serial executor.
#pragma once

#include <tss2/tss2_esys.h>

#include <memory>
#include <optional>
#include <string>

#include "outpost/base/result.h"

namespace outpost::attestation::detail {

// Frees memory ESAPI allocated for an output parameter.
struct EsysFree {
  void operator()(void* p) const { Esys_Free(p); }
};
template <class T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

// For unsealed plaintext and activated credentials: wiped before ESAPI's memory is freed.
struct EsysFreeWiped {
  void operator()(TPM2B_SENSITIVE_DATA* p) const;
  void operator()(TPM2B_DIGEST* p) const;
};
using SensitiveDataPtr = std::unique_ptr<TPM2B_SENSITIVE_DATA, EsysFreeWiped>;
using SecretDigestPtr = std::unique_ptr<TPM2B_DIGEST, EsysFreeWiped>;

class Esys;

class Handle {
 public:
  enum class Kind { transient, reference };
  Handle() = default;
  Handle(Esys* esys, ESYS_TR tr, Kind kind) : esys_(esys), tr_(tr), kind_(kind) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept { *this = std::move(o); }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  ESYS_TR get() const { return tr_; }
  explicit operator bool() const { return tr_ != ESYS_TR_NONE; }
  // Flushes (transient) or closes (reference) now; errors are logged, not returned, since
  // this also runs from destructors.
  void reset();
  // Gives up ownership without flushing (after EvictControl made the object persistent).
  ESYS_TR release() {
    ESYS_TR t = tr_;
    tr_ = ESYS_TR_NONE;
    return t;
  }

 private:
  Esys* esys_ = nullptr;
  ESYS_TR tr_ = ESYS_TR_NONE;
  Kind kind_ = Kind::reference;
};

struct CreatedPrimary {
  Handle handle;
  EsysPtr<TPM2B_PUBLIC> out_public;
};

struct CreatedKey {
  EsysPtr<TPM2B_PRIVATE> out_private;
  EsysPtr<TPM2B_PUBLIC> out_public;
};

struct SignedAttest {
  EsysPtr<TPM2B_ATTEST> attest;
  EsysPtr<TPMT_SIGNATURE> signature;
};

class Esys {
 public:
  // Connects through the TCTI loader; "swtpm:host=127.0.0.1,port=2321", "device:/dev/tpmrm0".
  static Result<std::unique_ptr<Esys>> open(const std::string& tcti);
  ~Esys();
  Esys(const Esys&) = delete;
  Esys& operator=(const Esys&) = delete;

  const std::string& tcti() const { return tcti_; }
  // The first error that left this context unusable (is_transport_failure); nullopt while it
  // works. Set by any call, a flush from a Handle's destructor included.
  const std::optional<Error>& broken() const { return broken_; }

  // TPM2_Startup(CLEAR); TPM_RC_INITIALIZE (already started) counts as success.
  Result<void> startup();
  Result<EsysPtr<TPMS_CAPABILITY_DATA>> get_capability(TPM2_CAP cap, UINT32 property, UINT32 count,
                                                       bool* more_data);
  // ESYS_TR for an existing persistent object or NV index; not_found when the TPM has none.
  Result<Handle> tr_from_tpm_public(TPM2_HANDLE handle);
  // For a handle seen through GetCapability that we then flush (leftovers of a dead process).
  Result<void> flush_tpm_handle(TPM2_HANDLE handle);
  Result<EsysPtr<TPM2B_NAME>> tr_get_name(ESYS_TR tr);

  Result<CreatedPrimary> create_primary(ESYS_TR hierarchy, const TPM2B_PUBLIC& in_public);
  Result<void> evict_control(ESYS_TR auth, const Handle& object, TPM2_HANDLE persistent);
  Result<void> evict_persistent(ESYS_TR auth, Handle& persistent);
  Result<EsysPtr<TPM2B_PUBLIC>> read_public(ESYS_TR object, EsysPtr<TPM2B_NAME>* name);
  // `sensitive` carries data to seal (a KEYEDHASH object); null for a key the TPM generates.
  Result<CreatedKey> create(ESYS_TR parent, const TPM2B_PUBLIC& in_public,
                            const TPM2B_SENSITIVE_CREATE* sensitive = nullptr);
  Result<Handle> load(ESYS_TR parent, const TPM2B_PRIVATE& priv, const TPM2B_PUBLIC& pub);

  Result<SensitiveDataPtr> unseal(ESYS_TR item);

  // A policy session (SHA-256; unbound, unsalted, no parameter encryption). The Handle
  // flushes it; ESAPI keeps continueSession set, so a command using it never flushes it.
  Result<Handle> start_policy_session();
  // TPM2_PolicySecret: `auth` (a hierarchy, by its password) satisfies `session`'s policy.
  Result<void> policy_secret(ESYS_TR auth, ESYS_TR session);
  // TPM2_ActivateCredential: `object` (ADMIN role) by password, `key` by `key_session`.
  Result<SecretDigestPtr> activate_credential(ESYS_TR object, ESYS_TR key, ESYS_TR key_session,
                                              const TPM2B_ID_OBJECT& blob, const TPM2B_ENCRYPTED_SECRET& secret);

  Result<EsysPtr<TPMT_SIGNATURE>> sign(ESYS_TR key, const TPM2B_DIGEST& digest);
  Result<SignedAttest> certify(ESYS_TR object, ESYS_TR sign_key, const TPM2B_DATA& qualifying);
  Result<SignedAttest> quote(ESYS_TR sign_key, const TPM2B_DATA& qualifying,
                             const TPML_PCR_SELECTION& selection);
  struct PcrReadOut {
    UINT32 update_counter;
    EsysPtr<TPML_PCR_SELECTION> selection;
    EsysPtr<TPML_DIGEST> values;
  };
  Result<PcrReadOut> pcr_read(const TPML_PCR_SELECTION& selection);
  Result<void> pcr_extend(ESYS_TR pcr, const TPML_DIGEST_VALUES& digests);
  Result<EsysPtr<TPMS_TIME_INFO>> read_clock();

  Result<Handle> nv_define_space(ESYS_TR auth, const TPM2B_NV_PUBLIC& pub);
  Result<void> nv_increment(ESYS_TR auth, ESYS_TR index);
  Result<EsysPtr<TPM2B_MAX_NV_BUFFER>> nv_read(ESYS_TR auth, ESYS_TR index, UINT16 size, UINT16 offset);
  Result<EsysPtr<TPM2B_NV_PUBLIC>> nv_read_public(ESYS_TR index);

 private:
  friend class Handle;
  Esys() = default;
  // Called by Handle::reset().
  Result<void> flush_context(ESYS_TR tr);
  Result<void> tr_close(ESYS_TR* tr);
  // check_tss2, remembering a transport failure in broken_.
  Result<void> check(TSS2_RC rc, const char* function);

  std::string tcti_;
  TSS2_TCTI_CONTEXT* tcti_ctx_ = nullptr;
  ESYS_CONTEXT* ctx_ = nullptr;
  std::optional<Error> broken_;
};

// The response code without its layer bits, for comparing with TPM2_RC_* constants.
TSS2_RC base_rc(TSS2_RC rc);
// The TSS2_RC carried by an Error from this layer, or 0 when it came from elsewhere.
TSS2_RC rc_of(const Error& e);
// Whether `rc` says the way to the TPM failed (rather than the TPM refusing a command), so
// that the TCTI and ESYS contexts must be rebuilt: an I/O error or a lost connection in any
// TSS layer, a state machine left mid-command (BAD_SEQUENCE: ESAPI after any such failure), or
// a response cut short or garbled on the way. Codes from the TPM itself never are.
bool is_transport_failure(TSS2_RC rc);

}  // namespace outpost::attestation::detail
