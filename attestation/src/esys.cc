#include "esys.h"

#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <cstring>

#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "tss2_check.h"
#include "outpost/base/log.h"

namespace outpost::attestation::detail {

TSS2_RC base_rc(TSS2_RC rc) {
  TSS2_RC tpm = rc & 0xFFFF;
  if (tpm & TPM2_RC_FMT1) return tpm & (TPM2_RC_FMT1 | 0x3F);
  return tpm & 0xFFF;
}

TSS2_RC rc_of(const Error& e) {
  if (e.code().category() != tss2_category()) return 0;
  return static_cast<TSS2_RC>(e.code().value());
}

bool is_transport_failure(TSS2_RC rc) {
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  // TPM response codes, also as a resource manager relays them, are the TPM's answer.
  if (layer == TSS2_TPM_RC_LAYER || layer == TSS2_RESMGR_TPM_RC_LAYER) return false;
  switch (rc & ~TSS2_RC_LAYER_MASK) {
    case TSS2_BASE_RC_IO_ERROR:
    case TSS2_BASE_RC_NO_CONNECTION: return true;
    // TRY_AGAIN never reaches outpost: the synchronous ESAPI calls loop on it themselves.
    case TSS2_BASE_RC_BAD_SEQUENCE:
    case TSS2_BASE_RC_MALFORMED_RESPONSE:
    case TSS2_BASE_RC_INSUFFICIENT_RESPONSE:
      return layer == TSS2_TCTI_RC_LAYER || layer == TSS2_SYS_RC_LAYER || layer == TSS2_ESAPI_RC_LAYER;
    default: return false;
  }
}

Result<void> Esys::check(TSS2_RC rc, const char* function) {
  Result<void> r = check_tss2(rc, function);
  if (!r && !broken_ && is_transport_failure(rc)) broken_ = r.error();
  return r;
}

void EsysFreeWiped::operator()(TPM2B_SENSITIVE_DATA* p) const {
  if (p == nullptr) return;
  explicit_bzero(p, sizeof *p);
  Esys_Free(p);
}

void EsysFreeWiped::operator()(TPM2B_DIGEST* p) const {
  if (p == nullptr) return;
  explicit_bzero(p, sizeof *p);
  Esys_Free(p);
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    esys_ = o.esys_;
    tr_ = o.tr_;
    kind_ = o.kind_;
    o.tr_ = ESYS_TR_NONE;
  }
  return *this;
}

void Handle::reset() {
  if (tr_ == ESYS_TR_NONE || esys_ == nullptr) return;
  Result<void> r = kind_ == Kind::transient ? esys_->flush_context(tr_) : esys_->tr_close(&tr_);
  if (!r) log::warn("tpm.handle_release_failed", {{"error", r.error().message()}});
  tr_ = ESYS_TR_NONE;
}

Result<std::unique_ptr<Esys>> Esys::open(const std::string& tcti) {
  std::unique_ptr<Esys> e(new Esys());
  e->tcti_ = tcti;
  OUTPOST_TRY_VOID(check_tss2(Tss2_TctiLdr_Initialize(tcti.c_str(), &e->tcti_ctx_), "Tss2_TctiLdr_Initialize"));
  OUTPOST_TRY_VOID(check_tss2(Esys_Initialize(&e->ctx_, e->tcti_ctx_, nullptr), "Esys_Initialize"));
  return e;
}

Esys::~Esys() {
  if (ctx_ != nullptr) Esys_Finalize(&ctx_);
  if (tcti_ctx_ != nullptr) Tss2_TctiLdr_Finalize(&tcti_ctx_);
}

Result<void> Esys::startup() {
  TSS2_RC rc = Esys_Startup(ctx_, TPM2_SU_CLEAR);
  if (base_rc(rc) == TPM2_RC_INITIALIZE) return ok();
  return check(rc, "Esys_Startup");
}

Result<EsysPtr<TPMS_CAPABILITY_DATA>> Esys::get_capability(TPM2_CAP cap, UINT32 property, UINT32 count,
                                                           bool* more_data) {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* data = nullptr;
  OUTPOST_TRY_VOID(check(Esys_GetCapability(ctx_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, cap, property,
                                            count, &more, &data),
                         "Esys_GetCapability"));
  if (more_data != nullptr) *more_data = more == TPM2_YES;
  return EsysPtr<TPMS_CAPABILITY_DATA>(data);
}

Result<Handle> Esys::tr_from_tpm_public(TPM2_HANDLE handle) {
  ESYS_TR tr = ESYS_TR_NONE;
  TSS2_RC rc = Esys_TR_FromTPMPublic(ctx_, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr);
  if (base_rc(rc) == TPM2_RC_HANDLE) {
    return fail(errc::not_found, "TPM handle " + hex32(handle) + " is not defined");
  }
  OUTPOST_TRY_VOID(check(rc, "Esys_TR_FromTPMPublic"));
  return Handle(this, tr, Handle::Kind::reference);
}

Result<void> Esys::flush_tpm_handle(TPM2_HANDLE handle) {
  // ESAPI flushes by ESYS_TR only; a transient handle of another process becomes one through
  // TR_FromTPMPublic, which ReadPublic's it first.
  OUTPOST_TRY(Handle h, tr_from_tpm_public(handle));
  ESYS_TR tr = h.release();
  return flush_context(tr);
}

Result<EsysPtr<TPM2B_NAME>> Esys::tr_get_name(ESYS_TR tr) {
  TPM2B_NAME* name = nullptr;
  OUTPOST_TRY_VOID(check(Esys_TR_GetName(ctx_, tr, &name), "Esys_TR_GetName"));
  return EsysPtr<TPM2B_NAME>(name);
}

Result<CreatedPrimary> Esys::create_primary(ESYS_TR hierarchy, const TPM2B_PUBLIC& in_public) {
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creation_pcr{};
  ESYS_TR tr = ESYS_TR_NONE;
  TPM2B_PUBLIC* out_public = nullptr;
  TPM2B_CREATION_DATA* creation_data = nullptr;
  TPM2B_DIGEST* creation_hash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Esys_CreatePrimary(ctx_, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                                  &in_public, &outside, &creation_pcr, &tr, &out_public, &creation_data,
                                  &creation_hash, &ticket);
  Esys_Free(creation_data);
  Esys_Free(creation_hash);
  Esys_Free(ticket);
  OUTPOST_TRY_VOID(check(rc, "Esys_CreatePrimary"));
  return CreatedPrimary{Handle(this, tr, Handle::Kind::transient), EsysPtr<TPM2B_PUBLIC>(out_public)};
}

Result<void> Esys::evict_control(ESYS_TR auth, const Handle& object, TPM2_HANDLE persistent) {
  ESYS_TR persistent_tr = ESYS_TR_NONE;
  OUTPOST_TRY_VOID(check(Esys_EvictControl(ctx_, auth, object.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                           ESYS_TR_NONE, persistent, &persistent_tr),
                         "Esys_EvictControl"));
  // Only ESAPI's record of the new persistent object is released; the object stays.
  return tr_close(&persistent_tr);
}

Result<void> Esys::evict_persistent(ESYS_TR auth, Handle& persistent) {
  ESYS_TR out = ESYS_TR_NONE;
  TPM2_HANDLE tpm_handle = 0;
  OUTPOST_TRY_VOID(check(Esys_TR_GetTpmHandle(ctx_, persistent.get(), &tpm_handle), "Esys_TR_GetTpmHandle"));
  OUTPOST_TRY_VOID(check(Esys_EvictControl(ctx_, auth, persistent.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                           ESYS_TR_NONE, tpm_handle, &out),
                         "Esys_EvictControl"));
  // ESAPI invalidates the ESYS_TR of an evicted persistent object itself.
  persistent.release();
  return ok();
}

Result<EsysPtr<TPM2B_PUBLIC>> Esys::read_public(ESYS_TR object, EsysPtr<TPM2B_NAME>* name) {
  TPM2B_PUBLIC* pub = nullptr;
  TPM2B_NAME* n = nullptr;
  TPM2B_NAME* qualified = nullptr;
  TSS2_RC rc = Esys_ReadPublic(ctx_, object, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &n, &qualified);
  Esys_Free(qualified);
  if (rc != TSS2_RC_SUCCESS) {
    Esys_Free(n);
    return fail(check(rc, "Esys_ReadPublic").error());
  }
  if (name != nullptr) {
    name->reset(n);
  } else {
    Esys_Free(n);
  }
  return EsysPtr<TPM2B_PUBLIC>(pub);
}

Result<CreatedKey> Esys::create(ESYS_TR parent, const TPM2B_PUBLIC& in_public,
                                const TPM2B_SENSITIVE_CREATE* in_sensitive) {
  const TPM2B_SENSITIVE_CREATE empty{};
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creation_pcr{};
  TPM2B_PRIVATE* out_private = nullptr;
  TPM2B_PUBLIC* out_public = nullptr;
  TPM2B_CREATION_DATA* creation_data = nullptr;
  TPM2B_DIGEST* creation_hash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Esys_Create(ctx_, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                           in_sensitive != nullptr ? in_sensitive : &empty, &in_public,
                           &outside, &creation_pcr, &out_private, &out_public, &creation_data, &creation_hash,
                           &ticket);
  Esys_Free(creation_data);
  Esys_Free(creation_hash);
  Esys_Free(ticket);
  CreatedKey key{EsysPtr<TPM2B_PRIVATE>(out_private), EsysPtr<TPM2B_PUBLIC>(out_public)};
  OUTPOST_TRY_VOID(check(rc, "Esys_Create"));
  return key;
}

Result<Handle> Esys::load(ESYS_TR parent, const TPM2B_PRIVATE& priv, const TPM2B_PUBLIC& pub) {
  ESYS_TR tr = ESYS_TR_NONE;
  OUTPOST_TRY_VOID(check(Esys_Load(ctx_, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &pub, &tr),
                         "Esys_Load"));
  return Handle(this, tr, Handle::Kind::transient);
}

Result<SensitiveDataPtr> Esys::unseal(ESYS_TR item) {
  TPM2B_SENSITIVE_DATA* data = nullptr;
  TSS2_RC rc = Esys_Unseal(ctx_, item, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &data);
  SensitiveDataPtr out(data);
  OUTPOST_TRY_VOID(check(rc, "Esys_Unseal"));
  return out;
}

Result<Handle> Esys::start_policy_session() {
  TPMT_SYM_DEF symmetric{};
  symmetric.algorithm = TPM2_ALG_NULL;
  ESYS_TR session = ESYS_TR_NONE;
  OUTPOST_TRY_VOID(check(Esys_StartAuthSession(ctx_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                               ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &symmetric, TPM2_ALG_SHA256,
                                               &session),
                         "Esys_StartAuthSession"));
  return Handle(this, session, Handle::Kind::transient);
}

Result<void> Esys::policy_secret(ESYS_TR auth, ESYS_TR session) {
  const TPM2B_NONCE nonce_tpm{};
  const TPM2B_DIGEST cp_hash{};
  const TPM2B_NONCE policy_ref{};
  TPM2B_TIMEOUT* timeout = nullptr;
  TPMT_TK_AUTH* ticket = nullptr;
  TSS2_RC rc = Esys_PolicySecret(ctx_, auth, session, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &nonce_tpm,
                                 &cp_hash, &policy_ref, 0, &timeout, &ticket);
  Esys_Free(timeout);
  Esys_Free(ticket);
  return check(rc, "Esys_PolicySecret");
}

Result<SecretDigestPtr> Esys::activate_credential(ESYS_TR object, ESYS_TR key, ESYS_TR key_session,
                                                  const TPM2B_ID_OBJECT& blob, const TPM2B_ENCRYPTED_SECRET& secret) {
  TPM2B_DIGEST* cert_info = nullptr;
  TSS2_RC rc = Esys_ActivateCredential(ctx_, object, key, ESYS_TR_PASSWORD, key_session, ESYS_TR_NONE, &blob,
                                       &secret, &cert_info);
  SecretDigestPtr out(cert_info);
  OUTPOST_TRY_VOID(check(rc, "Esys_ActivateCredential"));
  return out;
}

Result<EsysPtr<TPMT_SIGNATURE>> Esys::sign(ESYS_TR key, const TPM2B_DIGEST& digest) {
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the key's own scheme (ECDSA-SHA256)
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;  // a NULL ticket: fine for an unrestricted key
  TPMT_SIGNATURE* sig = nullptr;
  OUTPOST_TRY_VOID(check(Esys_Sign(ctx_, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &digest, &scheme,
                                   &validation, &sig),
                         "Esys_Sign"));
  return EsysPtr<TPMT_SIGNATURE>(sig);
}

Result<SignedAttest> Esys::certify(ESYS_TR object, ESYS_TR sign_key, const TPM2B_DATA& qualifying) {
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;
  TPM2B_ATTEST* attest = nullptr;
  TPMT_SIGNATURE* sig = nullptr;
  OUTPOST_TRY_VOID(check(Esys_Certify(ctx_, object, sign_key, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                      &qualifying, &scheme, &attest, &sig),
                         "Esys_Certify"));
  return SignedAttest{EsysPtr<TPM2B_ATTEST>(attest), EsysPtr<TPMT_SIGNATURE>(sig)};
}

Result<SignedAttest> Esys::quote(ESYS_TR sign_key, const TPM2B_DATA& qualifying,
                                 const TPML_PCR_SELECTION& selection) {
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;
  TPM2B_ATTEST* attest = nullptr;
  TPMT_SIGNATURE* sig = nullptr;
  OUTPOST_TRY_VOID(check(Esys_Quote(ctx_, sign_key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qualifying,
                                    &scheme, &selection, &attest, &sig),
                         "Esys_Quote"));
  return SignedAttest{EsysPtr<TPM2B_ATTEST>(attest), EsysPtr<TPMT_SIGNATURE>(sig)};
}

Result<Esys::PcrReadOut> Esys::pcr_read(const TPML_PCR_SELECTION& selection) {
  UINT32 counter = 0;
  TPML_PCR_SELECTION* out_sel = nullptr;
  TPML_DIGEST* values = nullptr;
  OUTPOST_TRY_VOID(check(Esys_PCR_Read(ctx_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &selection, &counter,
                                       &out_sel, &values),
                         "Esys_PCR_Read"));
  return PcrReadOut{counter, EsysPtr<TPML_PCR_SELECTION>(out_sel), EsysPtr<TPML_DIGEST>(values)};
}

Result<void> Esys::pcr_extend(ESYS_TR pcr, const TPML_DIGEST_VALUES& digests) {
  return check(Esys_PCR_Extend(ctx_, pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &digests),
               "Esys_PCR_Extend");
}

Result<EsysPtr<TPMS_TIME_INFO>> Esys::read_clock() {
  TPMS_TIME_INFO* info = nullptr;
  OUTPOST_TRY_VOID(check(Esys_ReadClock(ctx_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &info), "Esys_ReadClock"));
  return EsysPtr<TPMS_TIME_INFO>(info);
}

Result<Handle> Esys::nv_define_space(ESYS_TR auth, const TPM2B_NV_PUBLIC& pub) {
  TPM2B_AUTH empty{};
  ESYS_TR tr = ESYS_TR_NONE;
  OUTPOST_TRY_VOID(check(Esys_NV_DefineSpace(ctx_, auth, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &empty,
                                             &pub, &tr),
                         "Esys_NV_DefineSpace"));
  return Handle(this, tr, Handle::Kind::reference);
}

Result<void> Esys::nv_increment(ESYS_TR auth, ESYS_TR index) {
  return check(Esys_NV_Increment(ctx_, auth, index, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE),
               "Esys_NV_Increment");
}

Result<EsysPtr<TPM2B_MAX_NV_BUFFER>> Esys::nv_read(ESYS_TR auth, ESYS_TR index, UINT16 size, UINT16 offset) {
  TPM2B_MAX_NV_BUFFER* data = nullptr;
  OUTPOST_TRY_VOID(check(Esys_NV_Read(ctx_, auth, index, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, size,
                                      offset, &data),
                         "Esys_NV_Read"));
  return EsysPtr<TPM2B_MAX_NV_BUFFER>(data);
}

Result<EsysPtr<TPM2B_NV_PUBLIC>> Esys::nv_read_public(ESYS_TR index) {
  TPM2B_NV_PUBLIC* pub = nullptr;
  TPM2B_NAME* name = nullptr;
  TSS2_RC rc = Esys_NV_ReadPublic(ctx_, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &name);
  Esys_Free(name);
  OUTPOST_TRY_VOID(check(rc, "Esys_NV_ReadPublic"));
  return EsysPtr<TPM2B_NV_PUBLIC>(pub);
}

Result<void> Esys::flush_context(ESYS_TR tr) {
  return check(Esys_FlushContext(ctx_, tr), "Esys_FlushContext");
}

Result<void> Esys::tr_close(ESYS_TR* tr) { return check(Esys_TR_Close(ctx_, tr), "Esys_TR_Close"); }

}  // namespace outpost::attestation::detail
