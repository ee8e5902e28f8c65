#include "outpost/attestation/tpm.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "esys.h"
#include "marshal.h"
#include "nv_rate.h"
#include "outpost/base/errors.h"
#include "outpost/base/log.h"
#include "outpost/base/serial_executor.h"
#include "outpost/base/time.h"
#include "templates.h"

namespace outpost::attestation {

using detail::Esys;
using detail::Handle;

struct Tpm::Queue {
  // Only touched on the executor's thread:
  // Persistent objects and NV indices resolved once per connection: TR_FromTPMPublic costs a
  // TPM command each time.
  std::map<uint32_t, Handle> refs;
  uint64_t connection = 0;  // counts connections opened; a LoadedKey remembers its own
  bool in_command = false;
  // After a lost connection: when the next reconnect may be tried, and the wait after that.
  std::chrono::steady_clock::time_point next_attempt;
  std::chrono::milliseconds backoff{0};

  mutable std::mutex health_mu;
  TpmHealth health;  // guarded by health_mu; written on the executor's thread

  SerialExecutor executor;  // last member: its thread stops before the rest goes away
};

namespace {

constexpr std::chrono::milliseconds kFirstBackoff(100);
constexpr std::chrono::milliseconds kMaxBackoff(5000);

// The ESYS_TR for a persistent object or NV index, from the per-connection cache.
Result<ESYS_TR> ref(Esys& esys, std::map<uint32_t, Handle>& refs, uint32_t handle) {
  auto it = refs.find(handle);
  if (it != refs.end()) return it->second.get();
  OUTPOST_TRY(Handle h, esys.tr_from_tpm_public(handle));
  ESYS_TR tr = h.get();
  refs.emplace(handle, std::move(h));
  return tr;
}

Result<PcrValues> read_pcrs(Esys& esys, const PcrSelections& selection) {
  // PCR_Read answers at most eight digests per call; ask again for what is still missing.
  // If the PCR update counter moves between calls, start over so the set is consistent.
  for (int attempt = 0; attempt < 5; ++attempt) {
    PcrValues out;
    for (const auto& s : selection) out.push_back(PcrBank{s.hash_alg, {}});
    PcrSelections pending = selection;
    std::optional<UINT32> counter;
    bool restarted = false;
    while (!pending.empty()) {
      OUTPOST_TRY(TPML_PCR_SELECTION want, detail::to_tpml(pending));
      OUTPOST_TRY(Esys::PcrReadOut got, esys.pcr_read(want));
      if (counter && *counter != got.update_counter) {
        restarted = true;
        break;
      }
      counter = got.update_counter;
      size_t next = 0;
      size_t delivered = 0;
      for (const PcrSelection& s : detail::from_tpml(*got.selection)) {
        PcrBank* bank = nullptr;
        for (auto& b : out) {
          if (b.hash_alg == s.hash_alg) bank = &b;
        }
        for (uint32_t pcr : s.pcrs) {
          if (next >= got.values->count || bank == nullptr) {
            return fail(errc::corrupt, "TPM2_PCR_Read returned fewer digests than its selection");
          }
          const TPM2B_DIGEST& d = got.values->digests[next++];
          bank->values[pcr] = Bytes(d.buffer, d.buffer + d.size);
          ++delivered;
        }
      }
      if (delivered == 0) {
        return fail(errc::unsupported, "the TPM has no PCRs allocated for " + format_pcr_selection(pending));
      }
      PcrSelections still;
      for (const auto& s : pending) {
        PcrSelection rest{s.hash_alg, {}};
        const PcrBank* bank = nullptr;
        for (const auto& b : out) {
          if (b.hash_alg == s.hash_alg) bank = &b;
        }
        for (uint32_t pcr : s.pcrs) {
          if (!bank->values.count(pcr)) rest.pcrs.push_back(pcr);
        }
        if (!rest.pcrs.empty()) still.push_back(std::move(rest));
      }
      pending = std::move(still);
    }
    if (!restarted) return out;
  }
  return fail(errc::timeout, "PCRs kept changing while being read");
}

uint32_t first_handle(HandleType type) {
  switch (type) {
    case HandleType::transient: return TPM2_TRANSIENT_FIRST;
    case HandleType::session: return TPM2_LOADED_SESSION_FIRST;
    case HandleType::persistent: return TPM2_PERSISTENT_FIRST;
    case HandleType::nv_index: return TPM2_NV_INDEX_FIRST;
  }
  return 0;
}

Result<std::vector<uint32_t>> list_handles(Esys& esys, HandleType type) {
  std::vector<uint32_t> out;
  const uint32_t first = first_handle(type);
  uint32_t next = first;
  for (;;) {
    bool more = false;
    OUTPOST_TRY(auto cap, esys.get_capability(TPM2_CAP_HANDLES, next, TPM2_MAX_CAP_HANDLES, &more));
    const TPML_HANDLE& h = cap->data.handles;
    for (UINT32 i = 0; i < h.count; ++i) {
      if ((h.handle[i] >> 24) != (first >> 24)) {
        more = false;
        break;
      }
      out.push_back(h.handle[i]);
    }
    if (!more || h.count == 0) break;
    next = h.handle[h.count - 1] + 1;
  }
  return out;
}

// TCG EK Credential Profile NV indices for EK certificates (low and high range).
constexpr uint32_t kEkCertIndices[] = {0x01c00002, 0x01c0000a, 0x01c00012, 0x01c00014,
                                       0x01c00016, 0x01c00018, 0x01c0001c, 0x01c0001e};

Result<Bytes> read_nv_all(Esys& esys, uint32_t index, ESYS_TR tr) {
  OUTPOST_TRY(auto pub, esys.nv_read_public(tr));
  const TPMA_NV attrs = pub->nvPublic.attributes;
  ESYS_TR auth = tr;
  if (!(attrs & TPMA_NV_AUTHREAD)) {
    if (!(attrs & TPMA_NV_OWNERREAD)) {
      return fail(errc::unsupported, "NV index " + hex32(index) + " is readable by neither its own nor owner auth");
    }
    auth = ESYS_TR_RH_OWNER;
  }
  const uint16_t size = pub->nvPublic.dataSize;
  Bytes out;
  out.reserve(size);
  constexpr uint16_t kChunk = 768;  // below every TPM's TPM2_PT_NV_BUFFER_MAX
  while (out.size() < size) {
    uint16_t n = static_cast<uint16_t>(std::min<size_t>(kChunk, size - out.size()));
    OUTPOST_TRY(auto data, esys.nv_read(auth, tr, n, static_cast<uint16_t>(out.size())));
    out.insert(out.end(), data->buffer, data->buffer + data->size);
    if (data->size == 0) break;
  }
  return out;
}

}  // namespace

std::string_view primary_key_name(PrimaryKey k) {
  switch (k) {
    case PrimaryKey::srk: return "SRK";
    case PrimaryKey::ek: return "EK";
    case PrimaryKey::ak: return "AK";
  }
  return "?";
}

Bytes KeyBlob::serialize() const {
  Bytes out = public_area;
  out.insert(out.end(), private_area.begin(), private_area.end());
  return out;
}

Result<KeyBlob> KeyBlob::parse(ByteView bytes) {
  // Two TPM2Bs back to back; each starts with its big-endian size.
  if (bytes.size() < 2) return fail(errc::corrupt, "key blob is too short");
  size_t pub_len = 2 + (static_cast<size_t>(bytes[0]) << 8 | bytes[1]);
  if (pub_len > bytes.size()) return fail(errc::corrupt, "key blob is truncated (public part)");
  KeyBlob blob{Bytes(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(pub_len)),
               Bytes(bytes.begin() + static_cast<ptrdiff_t>(pub_len), bytes.end())};
  OUTPOST_TRY_VOID(detail::unmarshal_public(blob.public_area));
  OUTPOST_TRY_VOID(detail::unmarshal_private(blob.private_area));
  return blob;
}

template <class Job>
auto Tpm::command(Job&& job) {
  using R = std::invoke_result_t<Job&>;
  return queue_->executor.run([&]() -> R {
    Queue& q = *queue_;
    // A command made of other commands: the outermost one looks after the connection.
    if (q.in_command) return job();
    q.in_command = true;
    struct Leave {
      bool& flag;
      ~Leave() { flag = false; }
    } leave{q.in_command};
    if (Result<void> up = ensure_connected(); !up) return R(fail(up.error()));
    R r = job();
    // The job's locals, Handles into this connection among them, are gone by now.
    if (drop_if_broken() && !r) {
      return R(fail(r.error().wrap("the connection to the TPM at \"" + tcti_ +
                                   "\" failed (the next command reconnects)")));
    }
    return r;
  });
}

Result<void> Tpm::open_connection() {
  Result<void> r = [&]() -> Result<void> {
    OUTPOST_TRY(esys_, Esys::open(tcti_));
    OUTPOST_TRY_VOID(esys_->startup());
    if (!options_.flush_leftovers) return ok();
    for (HandleType type : {HandleType::transient, HandleType::session}) {
      OUTPOST_TRY(auto leftovers, list_handles(*esys_, type));
      for (uint32_t h : leftovers) {
        Result<void> f = esys_->flush_tpm_handle(h);
        log::info("tpm.flush_leftover", {{"handle", hex32(h)}, {"ok", f ? "true" : f.error().message()}});
      }
    }
    return ok();
  }();
  if (r && esys_->broken()) r = fail(*esys_->broken());  // a flush failed in the transport
  if (!r) {
    esys_.reset();
    return r;
  }
  ++queue_->connection;
  return ok();
}

Result<void> Tpm::ensure_connected() {
  if (esys_) return ok();
  Queue& q = *queue_;
  const auto now = std::chrono::steady_clock::now();
  if (now < q.next_attempt) {
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(q.next_attempt - now);
    std::string last;
    {
      std::lock_guard lock(q.health_mu);
      last = q.health.last_error;
    }
    return fail(errc::tpm_unavailable, "the TPM at \"" + tcti_ + "\" is unreachable, next reconnect attempt in " +
                                           std::to_string(wait.count()) + " ms (last error: " + last + ")");
  }
  Result<void> r = open_connection();
  if (!r) {
    q.next_attempt = std::chrono::steady_clock::now() + q.backoff;  // an attempt may itself take long
    log::warn("tpm.reconnect_failed", {{"tcti", tcti_}, {"error", r.error().message()},
                                       {"retry_ms", std::to_string(q.backoff.count())}});
    q.backoff = std::min(q.backoff * 2, kMaxBackoff);
    {
      std::lock_guard lock(q.health_mu);
      ++q.health.failures;
      q.health.last_error = r.error().message();
      q.health.last_failure_unix = unix_now();
    }
    return fail(r.error().wrap("reconnect to the TPM at \"" + tcti_ + "\""));
  }
  uint64_t reconnects = 0;
  {
    std::lock_guard lock(q.health_mu);
    q.health.connected = true;
    reconnects = ++q.health.reconnects;
  }
  log::info("tpm.reconnected", {{"tcti", tcti_}, {"reconnects", std::to_string(reconnects)}});
  return ok();
}

std::optional<Error> Tpm::drop_if_broken() {
  if (!esys_ || !esys_->broken()) return std::nullopt;
  Error cause = *esys_->broken();
  Queue& q = *queue_;
  // Esys_Finalize frees ESAPI's records of these; closing them one by one on a context in its
  // error state would only log failures.
  for (auto& entry : q.refs) (void)entry.second.release();
  q.refs.clear();
  esys_.reset();  // Esys_Finalize, Tss2_TctiLdr_Finalize
  // The first reconnect is tried by the next command; back-off starts if that one fails.
  q.next_attempt = {};
  q.backoff = kFirstBackoff;
  {
    std::lock_guard lock(q.health_mu);
    q.health.connected = false;
    ++q.health.failures;
    q.health.last_error = cause.message();
    q.health.last_failure_unix = unix_now();
  }
  log::warn("tpm.connection_lost", {{"tcti", tcti_}, {"error", cause.message()}});
  return cause;
}

TpmHealth Tpm::health() const {
  std::lock_guard lock(queue_->health_mu);
  return queue_->health;
}

Result<std::unique_ptr<Tpm>> Tpm::connect(const std::string& tcti, Options options) {
  detail::quiet_tss_logging();
  std::unique_ptr<Tpm> tpm(new Tpm());
  tpm->tcti_ = tcti;
  tpm->options_ = options;
  tpm->queue_ = std::make_unique<Queue>();
  Result<void> r = tpm->queue_->executor.run([&] { return tpm->open_connection(); });
  if (!r) return fail(r.error().wrap("cannot use the TPM at \"" + tcti + "\""));
  tpm->queue_->health.connected = true;  // nobody else can see this Tpm yet
  return tpm;
}

Tpm::~Tpm() {
  if (queue_) {
    // Release cached references on the executor's thread, then stop it; the Esys goes last.
    queue_->executor.run([this] { queue_->refs.clear(); });
    queue_.reset();
  }
}

Result<TpmInfo> Tpm::info() {
  return command([&]() -> Result<TpmInfo> {
    TpmInfo info;
    OUTPOST_TRY(auto props, esys_->get_capability(TPM2_CAP_TPM_PROPERTIES, TPM2_PT_FIXED,
                                                  TPM2_MAX_TPM_PROPERTIES, nullptr));
    auto ascii = [](uint32_t v) {
      std::string s;
      for (int shift = 24; shift >= 0; shift -= 8) {
        char c = static_cast<char>((v >> shift) & 0xff);
        if (c != '\0') s.push_back(c >= 0x20 && c < 0x7f ? c : '?');
      }
      return s;
    };
    uint32_t fw1 = 0, fw2 = 0;
    const auto& list = props->data.tpmProperties;
    for (UINT32 i = 0; i < list.count; ++i) {
      const auto& p = list.tpmProperty[i];
      switch (p.property) {
        case TPM2_PT_MANUFACTURER: info.manufacturer = ascii(p.value); break;
        case TPM2_PT_VENDOR_STRING_1:
        case TPM2_PT_VENDOR_STRING_2:
        case TPM2_PT_VENDOR_STRING_3:
        case TPM2_PT_VENDOR_STRING_4: info.vendor += ascii(p.value); break;
        case TPM2_PT_FIRMWARE_VERSION_1: fw1 = p.value; break;
        case TPM2_PT_FIRMWARE_VERSION_2: fw2 = p.value; break;
        case TPM2_PT_REVISION: info.spec_revision = p.value; break;
        default: break;
      }
    }
    info.firmware = std::to_string(fw1 >> 16) + "." + std::to_string(fw1 & 0xffff) + "." +
                    std::to_string(fw2 >> 16) + "." + std::to_string(fw2 & 0xffff);
    OUTPOST_TRY(auto pcrs, esys_->get_capability(TPM2_CAP_PCRS, 0, TPM2_NUM_PCR_BANKS, nullptr));
    const auto& assigned = pcrs->data.assignedPCR;
    for (UINT32 i = 0; i < assigned.count; ++i) {
      const auto& s = assigned.pcrSelections[i];
      bool any = false;
      for (int b = 0; b < s.sizeofSelect; ++b) any = any || s.pcrSelect[b] != 0;
      if (any) info.pcr_banks.push_back(s.hash);
    }
    return info;
  });
}

Result<TpmAlgorithms> Tpm::algorithms() {
  return command([&]() -> Result<TpmAlgorithms> {
    TpmAlgorithms out;
    for (uint32_t next = TPM2_ALG_FIRST;;) {
      bool more = false;
      OUTPOST_TRY(auto cap, esys_->get_capability(TPM2_CAP_ALGS, next, TPM2_MAX_CAP_ALGS, &more));
      const TPML_ALG_PROPERTY& a = cap->data.algorithms;
      for (UINT32 i = 0; i < a.count; ++i) out.algorithms.push_back(a.algProperties[i].alg);
      if (!more || a.count == 0) break;
      next = a.algProperties[a.count - 1].alg + 1u;
    }
    for (uint32_t next = 0;;) {
      bool more = false;
      OUTPOST_TRY(auto cap, esys_->get_capability(TPM2_CAP_ECC_CURVES, next, TPM2_MAX_ECC_CURVES, &more));
      const TPML_ECC_CURVE& c = cap->data.eccCurves;
      for (UINT32 i = 0; i < c.count; ++i) out.ecc_curves.push_back(c.eccCurves[i]);
      if (!more || c.count == 0) break;
      next = c.eccCurves[c.count - 1] + 1u;
    }
    return out;
  });
}

std::vector<std::string> TpmAlgorithms::missing_for_outpost() const {
  auto has = [](const std::vector<uint16_t>& v, uint16_t x) { return std::find(v.begin(), v.end(), x) != v.end(); };
  std::vector<std::string> missing;
  if (!has(algorithms, TPM2_ALG_ECC)) missing.emplace_back("ECC");
  if (!has(algorithms, TPM2_ALG_ECDSA)) missing.emplace_back("ECDSA");
  if (!has(algorithms, TPM2_ALG_SHA256)) missing.emplace_back("SHA-256");
  if (!has(ecc_curves, TPM2_ECC_NIST_P256)) missing.emplace_back("ECC NIST P-256");
  return missing;
}

Result<std::vector<uint32_t>> Tpm::handles(HandleType type) {
  return command([&] { return list_handles(*esys_, type); });
}

Result<KeyPublic> Tpm::read_persistent(uint32_t handle) {
  return command([&]() -> Result<KeyPublic> {
    OUTPOST_TRY(ESYS_TR tr, ref(*esys_, queue_->refs, handle));
    OUTPOST_TRY(auto pub, esys_->read_public(tr, nullptr));
    return detail::key_public(*pub, handle);
  });
}

Result<KeyPublic> Tpm::create_persistent(PrimaryKey kind, uint32_t handle) {
  return command([&]() -> Result<KeyPublic> {
    OUTPOST_TRY(detail::CreatedPrimary created,
                esys_->create_primary(detail::primary_hierarchy(kind), detail::primary_template(kind)));
    OUTPOST_TRY(KeyPublic key, detail::key_public(*created.out_public, handle));
    OUTPOST_TRY_VOID(esys_->evict_control(ESYS_TR_RH_OWNER, created.handle, handle));
    // `created.handle` (the transient copy) is flushed as it goes out of scope.
    log::info("tpm.persisted", {{"key", std::string(primary_key_name(kind))}, {"handle", hex32(handle)}});
    return key;
  });
}

Result<void> Tpm::check_shape(PrimaryKey kind, const KeyPublic& key) {
  OUTPOST_TRY(TPM2B_PUBLIC have, detail::unmarshal_public(key.public_area));
  TPM2B_PUBLIC want = detail::primary_template(kind);
  const auto& h = have.publicArea;
  const auto& w = want.publicArea;
  std::string what = std::string(primary_key_name(kind)) + " at " + hex32(key.handle);
  if (h.type != w.type || h.nameAlg != w.nameAlg || h.parameters.eccDetail.curveID != w.parameters.eccDetail.curveID) {
    return fail(errc::tpm_mismatch, what + " is not an ECC P-256 key with a SHA-256 name");
  }
  if (h.objectAttributes != w.objectAttributes) {
    return fail(errc::tpm_mismatch, what + " has attributes " + hex32(h.objectAttributes) + ", expected " +
                                        hex32(w.objectAttributes));
  }
  if (h.parameters.eccDetail.scheme.scheme != w.parameters.eccDetail.scheme.scheme) {
    return fail(errc::tpm_mismatch, what + " has another signing scheme");
  }
  return ok();
}

Result<void> Tpm::evict(uint32_t handle) {
  return command([&]() -> Result<void> {
    OUTPOST_TRY_VOID(ref(*esys_, queue_->refs, handle));
    auto it = queue_->refs.find(handle);
    Result<void> r = esys_->evict_persistent(ESYS_TR_RH_OWNER, it->second);
    queue_->refs.erase(it);
    return r;
  });
}

Result<std::vector<EkCertificate>> Tpm::read_ek_certificates() {
  return command([&]() -> Result<std::vector<EkCertificate>> {
    std::vector<EkCertificate> out;
    OUTPOST_TRY(auto defined, list_handles(*esys_, HandleType::nv_index));
    for (uint32_t index : kEkCertIndices) {
      if (std::find(defined.begin(), defined.end(), index) == defined.end()) continue;
      OUTPOST_TRY(ESYS_TR tr, ref(*esys_, queue_->refs, index));
      OUTPOST_TRY(Bytes der, read_nv_all(*esys_, index, tr));
      out.push_back(EkCertificate{index, std::move(der)});
    }
    return out;
  });
}

Result<KeyBlob> Tpm::create_signing_key(uint32_t parent_handle) {
  return command([&]() -> Result<KeyBlob> {
    OUTPOST_TRY(ESYS_TR parent, ref(*esys_, queue_->refs, parent_handle));
    OUTPOST_TRY(detail::CreatedKey key, esys_->create(parent, detail::signing_key_template()));
    return KeyBlob{detail::marshal_public(*key.out_public), detail::marshal_private(*key.out_private)};
  });
}

Result<KeyBlob> Tpm::seal(uint32_t parent_handle, ByteView secret) {
  if (secret.empty()) return fail(errc::invalid_argument, "cannot seal an empty secret");
  if (secret.size() > kMaxSealedBytes) {
    return fail(errc::invalid_argument, "a secret of " + std::to_string(secret.size()) +
                                            " bytes is over the TPM's limit of " + std::to_string(kMaxSealedBytes) +
                                            " bytes for sealed data");
  }
  static_assert(kMaxSealedBytes <= sizeof(TPM2B_SENSITIVE_DATA::buffer));
  return command([&]() -> Result<KeyBlob> {
    OUTPOST_TRY(ESYS_TR parent, ref(*esys_, queue_->refs, parent_handle));
    TPM2B_SENSITIVE_CREATE sensitive{};
    sensitive.sensitive.data.size = static_cast<UINT16>(secret.size());
    std::memcpy(sensitive.sensitive.data.buffer, secret.data(), secret.size());
    Result<detail::CreatedKey> created = esys_->create(parent, detail::sealed_data_template(), &sensitive);
    explicit_bzero(&sensitive, sizeof sensitive);
    if (!created) return fail(created.error().wrap("seal under " + hex32(parent_handle)));
    return KeyBlob{detail::marshal_public(*created->out_public), detail::marshal_private(*created->out_private)};
  });
}

Result<Bytes> Tpm::unseal(uint32_t parent_handle, const KeyBlob& blob) {
  OUTPOST_TRY(TPM2B_PUBLIC pub, detail::unmarshal_public(blob.public_area));
  OUTPOST_TRY(TPM2B_PRIVATE priv, detail::unmarshal_private(blob.private_area));
  const TPMA_OBJECT attrs = pub.publicArea.objectAttributes;
  if (pub.publicArea.type != TPM2_ALG_KEYEDHASH || (attrs & (TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_DECRYPT)) != 0) {
    return fail(errc::invalid_argument, "the blob is not a sealed data object");
  }
  return command([&]() -> Result<Bytes> {
    OUTPOST_TRY(ESYS_TR parent, ref(*esys_, queue_->refs, parent_handle));
    Result<Handle> item = esys_->load(parent, priv, pub);
    if (!item) {
      return fail(item.error().wrap("the sealed blob does not load under " + hex32(parent_handle) +
                                    " (sealed by another TPM or parent, or altered)"));
    }
    // `data` is wiped and `item` flushed on the way out, errors included.
    OUTPOST_TRY(detail::SensitiveDataPtr data, esys_->unseal(item->get()));
    return Bytes(data->buffer, data->buffer + data->size);
  });
}

Result<Bytes> Tpm::activate_credential(uint32_t ak_handle, uint32_t ek_handle, const CredentialChallenge& challenge) {
  Result<TPM2B_ID_OBJECT> blob = detail::unmarshal<TPM2B_ID_OBJECT>(
      challenge.credential_blob, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal, "Tss2_MU_TPM2B_ID_OBJECT_Unmarshal");
  if (!blob) return fail(blob.error().wrap("the credential blob is not a TPM2B_ID_OBJECT"));
  Result<TPM2B_ENCRYPTED_SECRET> secret = detail::unmarshal<TPM2B_ENCRYPTED_SECRET>(
      challenge.encrypted_secret, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal, "Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal");
  if (!secret) return fail(secret.error().wrap("the credential's secret is not a TPM2B_ENCRYPTED_SECRET"));
  return command([&]() -> Result<Bytes> {
    OUTPOST_TRY(ESYS_TR ak, ref(*esys_, queue_->refs, ak_handle));
    OUTPOST_TRY(ESYS_TR ek, ref(*esys_, queue_->refs, ek_handle));
    // Flushed as `session` goes out of scope, errors included.
    OUTPOST_TRY(Handle session, esys_->start_policy_session());
    OUTPOST_TRY_VOID(esys_->policy_secret(ESYS_TR_RH_ENDORSEMENT, session.get()));
    Result<detail::SecretDigestPtr> info = esys_->activate_credential(ak, ek, session.get(), *blob, *secret);
    if (!info && detail::base_rc(detail::rc_of(info.error())) == TPM2_RC_INTEGRITY) {
      return fail(info.error().wrap("the credential does not open with the EK at " + hex32(ek_handle) +
                                    " for the key at " + hex32(ak_handle) +
                                    " (made for another key name or another EK, or altered)"));
    }
    if (!info) return fail(info.error().wrap("activate a credential with the EK at " + hex32(ek_handle)));
    const TPM2B_DIGEST& d = **info;
    return Bytes(d.buffer, d.buffer + d.size);
  });
}

Tpm::LoadedKey::~LoadedKey() {
  if (tpm_ != nullptr) tpm_->flush_loaded(tr_, connection_);
}

void Tpm::flush_loaded(uint32_t tr, uint64_t connection) {
  // Never reconnects: a key of an earlier connection has no ESYS_TR on this one (its object,
  // if the TPM kept it, went with the leftovers flushed at the reconnect).
  queue_->executor.run([&] {
    if (!esys_ || connection != queue_->connection) return;
    Handle(esys_.get(), tr, Handle::Kind::transient).reset();
    (void)drop_if_broken();
  });
}

Result<void> Tpm::check_current(const LoadedKey& key) const {
  if (key.connection_ == queue_->connection) return ok();
  return fail(errc::not_found, "the key was loaded before the connection to the TPM was re-established; load it again");
}

Result<Tpm::LoadedKey> Tpm::load(uint32_t parent_handle, const KeyBlob& blob) {
  OUTPOST_TRY(TPM2B_PUBLIC pub, detail::unmarshal_public(blob.public_area));
  OUTPOST_TRY(TPM2B_PRIVATE priv, detail::unmarshal_private(blob.private_area));
  OUTPOST_TRY(KeyPublic key, detail::key_public(pub, 0));
  struct Loaded {
    ESYS_TR tr;
    uint64_t connection;
  };
  OUTPOST_TRY(Loaded loaded, command([&]() -> Result<Loaded> {
    OUTPOST_TRY(ESYS_TR parent, ref(*esys_, queue_->refs, parent_handle));
    OUTPOST_TRY(Handle h, esys_->load(parent, priv, pub));
    return Loaded{h.release(), queue_->connection};
  }));
  return LoadedKey(this, loaded.tr, loaded.connection, std::move(key));
}

Result<RawSignature> Tpm::sign(const LoadedKey& key, const Digest& digest) {
  return command([&]() -> Result<RawSignature> {
    OUTPOST_TRY_VOID(check_current(key));
    TPM2B_DIGEST d{};
    d.size = static_cast<UINT16>(digest.size());
    std::memcpy(d.buffer, digest.data(), digest.size());
    OUTPOST_TRY(auto sig, esys_->sign(key.tr_, d));
    if (sig->sigAlg != TPM2_ALG_ECDSA) return fail(errc::unsupported, "TPM returned a non-ECDSA signature");
    const auto& e = sig->signature.ecdsa;
    // Through DER: the TPM may drop leading zero bytes of r or s; this normalises to 32.
    OUTPOST_TRY(Bytes der, ecdsa_der_from_raw(ByteView(e.signatureR.buffer, e.signatureR.size),
                                              ByteView(e.signatureS.buffer, e.signatureS.size)));
    return ecdsa_raw_from_der(der);
  });
}

Result<SignedAttestation> Tpm::certify(const LoadedKey& key, uint32_t ak_handle, ByteView qualifying_data) {
  if (qualifying_data.size() > 64) return fail(errc::invalid_argument, "qualifying data is longer than 64 bytes");
  return command([&]() -> Result<SignedAttestation> {
    OUTPOST_TRY_VOID(check_current(key));
    OUTPOST_TRY(ESYS_TR ak, ref(*esys_, queue_->refs, ak_handle));
    OUTPOST_TRY(detail::SignedAttest sa, esys_->certify(key.tr_, ak, detail::to_tpm2b_data(qualifying_data)));
    const TPM2B_ATTEST& a = *sa.attest;
    return SignedAttestation{Bytes(a.attestationData, a.attestationData + a.size),
                             detail::marshal_signature(*sa.signature)};
  });
}

Result<Quote> Tpm::quote(uint32_t ak_handle, const PcrSelections& selection, ByteView qualifying_data) {
  if (qualifying_data.size() > 64) return fail(errc::invalid_argument, "qualifying data is longer than 64 bytes");
  OUTPOST_TRY(TPML_PCR_SELECTION tpml, detail::to_tpml(selection));
  return command([&]() -> Result<Quote> {
    OUTPOST_TRY(ESYS_TR ak, ref(*esys_, queue_->refs, ak_handle));
    for (int attempt = 0; attempt < 3; ++attempt) {
      OUTPOST_TRY(detail::SignedAttest sa, esys_->quote(ak, detail::to_tpm2b_data(qualifying_data), tpml));
      Bytes attest(sa.attest->attestationData, sa.attest->attestationData + sa.attest->size);
      OUTPOST_TRY(TPMS_ATTEST parsed, detail::unmarshal_attest(attest));
      OUTPOST_TRY(PcrValues values, read_pcrs(*esys_, selection));
      OUTPOST_TRY(Digest composite, detail::pcr_composite_digest(tpml, values));
      const TPM2B_DIGEST& quoted = parsed.attested.quote.pcrDigest;
      if (equal_constant_time(ByteView(quoted.buffer, quoted.size), composite)) {
        return Quote{SignedAttestation{std::move(attest), detail::marshal_signature(*sa.signature)},
                     std::move(values)};
      }
      log::info("tpm.quote_retake", {{"reason", "a PCR changed between quote and read"}});
    }
    return fail(errc::timeout, "PCRs kept changing between TPM2_Quote and TPM2_PCR_Read");
  });
}

Result<PcrValues> Tpm::pcr_read(const PcrSelections& selection) {
  return command([&] { return read_pcrs(*esys_, selection); });
}

Result<void> Tpm::pcr_extend(uint32_t pcr, const Digest& measurement) {
  if (pcr > 23) return fail(errc::invalid_argument, "PCR index " + std::to_string(pcr) + " is above 23");
  return command([&]() -> Result<void> {
    TPML_DIGEST_VALUES digests{};
    digests.count = 1;
    digests.digests[0].hashAlg = TPM2_ALG_SHA256;
    std::memcpy(digests.digests[0].digest.sha256, measurement.data(), measurement.size());
    return esys_->pcr_extend(ESYS_TR_PCR0 + pcr, digests);
  });
}

Result<TimeInfo> Tpm::read_clock() {
  return command([&]() -> Result<TimeInfo> {
    OUTPOST_TRY(auto t, esys_->read_clock());
    return TimeInfo{t->time, detail::clock_info(t->clockInfo)};
  });
}

namespace {

// outpost's NV counters: anyone may read and increment them, nobody can lower them, and a
// wrong guess at their (empty) password never counts towards dictionary-attack lockout.
constexpr TPMA_NV kCounterAttributes = (TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT) | TPMA_NV_AUTHWRITE |
                                       TPMA_NV_AUTHREAD | TPMA_NV_OWNERREAD | TPMA_NV_NO_DA;

Result<uint64_t> read_counter_value(Esys& esys, ESYS_TR tr) {
  OUTPOST_TRY(auto data, esys.nv_read(tr, tr, 8, 0));
  if (data->size != 8) return fail(errc::corrupt, "NV counter returned " + std::to_string(data->size) + " bytes");
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | data->buffer[i];
  return v;
}

Result<void> increment_waiting(Esys& esys, ESYS_TR tr) {
  return detail::retry_on_nv_rate([&] { return esys.nv_increment(tr, tr); },
                                  [](std::chrono::milliseconds d) { std::this_thread::sleep_for(d); });
}

}  // namespace

Result<uint64_t> Tpm::ensure_counter(uint32_t nv_index) {
  return command([&]() -> Result<uint64_t> {
    Result<ESYS_TR> existing = ref(*esys_, queue_->refs, nv_index);
    if (!existing && existing.error().is(errc::not_found)) {
      TPM2B_NV_PUBLIC pub{};
      pub.nvPublic.nvIndex = nv_index;
      pub.nvPublic.nameAlg = TPM2_ALG_SHA256;
      pub.nvPublic.attributes = kCounterAttributes;
      pub.nvPublic.dataSize = 8;
      OUTPOST_TRY(Handle h, esys_->nv_define_space(ESYS_TR_RH_OWNER, pub));
      ESYS_TR tr = h.get();
      queue_->refs.emplace(nv_index, std::move(h));
      log::info("tpm.counter_defined", {{"index", hex32(nv_index)}});
      // A counter reads only once incremented; it starts at the highest count the TPM has seen.
      OUTPOST_TRY_VOID(increment_waiting(*esys_, tr));
      return read_counter_value(*esys_, tr);
    }
    if (!existing) return fail(existing.error());
    OUTPOST_TRY(auto pub, esys_->nv_read_public(*existing));
    const TPMA_NV attrs = pub->nvPublic.attributes;
    if (((attrs & TPMA_NV_TPM2_NT_MASK) >> TPMA_NV_TPM2_NT_SHIFT) != TPM2_NT_COUNTER) {
      return fail(errc::tpm_mismatch, "NV index " + hex32(nv_index) + " exists and is not a counter");
    }
    if (!(attrs & TPMA_NV_WRITTEN)) OUTPOST_TRY_VOID(increment_waiting(*esys_, *existing));
    return read_counter_value(*esys_, *existing);
  });
}

Result<uint64_t> Tpm::read_counter(uint32_t nv_index) {
  return command([&]() -> Result<uint64_t> {
    OUTPOST_TRY(ESYS_TR tr, ref(*esys_, queue_->refs, nv_index));
    return read_counter_value(*esys_, tr);
  });
}

Result<NvIndexPublic> Tpm::nv_public(uint32_t nv_index) {
  return command([&]() -> Result<NvIndexPublic> {
    OUTPOST_TRY(ESYS_TR tr, ref(*esys_, queue_->refs, nv_index));
    OUTPOST_TRY(auto pub, esys_->nv_read_public(tr));
    return NvIndexPublic{nv_index, pub->nvPublic.attributes, pub->nvPublic.dataSize};
  });
}

bool NvIndexPublic::is_outpost_counter() const {
  // The state bits the TPM sets as the index is used are not part of its shape.
  constexpr uint32_t kState = TPMA_NV_WRITTEN | TPMA_NV_READLOCKED | TPMA_NV_WRITELOCKED;
  return (attributes & ~kState) == kCounterAttributes && data_size == 8;
}

Result<uint64_t> Tpm::increment_counter(uint32_t nv_index) {
  return command([&]() -> Result<uint64_t> {
    OUTPOST_TRY(ESYS_TR tr, ref(*esys_, queue_->refs, nv_index));
    OUTPOST_TRY_VOID(increment_waiting(*esys_, tr));
    return read_counter_value(*esys_, tr);
  });
}

}  // namespace outpost::attestation
