#include "soft_tpm.h"

#include <tss2/tss2_mu.h>

#include <boost/json.hpp>
#include <cstring>

#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/check.h"
#include "outpost/offline_cache/audit_frames.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::testing {
namespace {

EcPrivateKey new_key() {
  auto k = EcPrivateKey::generate();
  OUTPOST_CHECK(k.has_value(), "software key generation");
  return std::move(*k);
}

Bytes marshal_sig(const RawSignature& raw) {
  TPMT_SIGNATURE s{};
  s.sigAlg = TPM2_ALG_ECDSA;
  s.signature.ecdsa.hash = TPM2_ALG_SHA256;
  s.signature.ecdsa.signatureR.size = 32;
  std::memcpy(s.signature.ecdsa.signatureR.buffer, raw.r.data(), 32);
  s.signature.ecdsa.signatureS.size = 32;
  std::memcpy(s.signature.ecdsa.signatureS.buffer, raw.s.data(), 32);
  Bytes out(sizeof s);
  size_t off = 0;
  OUTPOST_CHECK(Tss2_MU_TPMT_SIGNATURE_Marshal(&s, out.data(), out.size(), &off) == TSS2_RC_SUCCESS, "marshal TPMT_SIGNATURE");
  out.resize(off);
  return out;
}

TPMS_ATTEST header(TPM2_ST type, ByteView qualifying, const attestation::ClockInfo& clock) {
  TPMS_ATTEST a{};
  a.magic = TPM2_GENERATED_VALUE;
  a.type = type;
  a.qualifiedSigner.size = 34;
  a.extraData.size = static_cast<UINT16>(qualifying.size());
  std::memcpy(a.extraData.buffer, qualifying.data(), qualifying.size());
  a.clockInfo = {clock.clock, clock.reset_count, clock.restart_count, static_cast<TPMI_YES_NO>(clock.safe ? TPM2_YES : TPM2_NO)};
  return a;
}

Bytes marshal_attest(const TPMS_ATTEST& a) {
  Bytes out(sizeof(TPMS_ATTEST));
  size_t off = 0;
  OUTPOST_CHECK(Tss2_MU_TPMS_ATTEST_Marshal(&a, out.data(), out.size(), &off) == TSS2_RC_SUCCESS, "marshal TPMS_ATTEST");
  out.resize(off);
  return out;
}

}  // namespace

Bytes ecc_public_area(const EcPublicKey& key) {
  TPM2B_PUBLIC pub{};
  TPMT_PUBLIC& a = pub.publicArea;
  a.type = TPM2_ALG_ECC;
  a.nameAlg = TPM2_ALG_SHA256;
  a.objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
  a.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  a.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  a.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  a.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  a.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  a.unique.ecc.x.size = 32;
  std::memcpy(a.unique.ecc.x.buffer, key.x().data(), 32);
  a.unique.ecc.y.size = 32;
  std::memcpy(a.unique.ecc.y.buffer, key.y().data(), 32);
  Bytes out(sizeof pub);
  size_t off = 0;
  OUTPOST_CHECK(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out.data(), out.size(), &off) == TSS2_RC_SUCCESS, "marshal TPM2B_PUBLIC");
  out.resize(off);
  return out;
}

SoftAk::SoftAk() : key_(new_key()) {}

attestation::SignedAttestation SoftAk::sign(Bytes attest) const {
  auto sig = key_.sign(sha256(attest));
  OUTPOST_CHECK(sig.has_value(), "software signature");
  return {std::move(attest), marshal_sig(*sig)};
}

attestation::SignedAttestation SoftAk::quote(ByteView qualifying, const attestation::PcrValues& pcrs,
                                             const attestation::ClockInfo& clock) const {
  TPMS_ATTEST a = header(TPM2_ST_ATTEST_QUOTE, qualifying, clock);
  auto& q = a.attested.quote;
  q.pcrSelect.count = 1;
  q.pcrSelect.pcrSelections[0].hash = TPM2_ALG_SHA256;
  q.pcrSelect.pcrSelections[0].sizeofSelect = 3;
  Sha256 h;
  for (const auto& [pcr, v] : pcrs.at(0).values) {
    q.pcrSelect.pcrSelections[0].pcrSelect[pcr / 8] |= static_cast<uint8_t>(1u << (pcr % 8));
    h.update(v);
  }
  const Digest d = h.finish();
  q.pcrDigest.size = 32;
  std::memcpy(q.pcrDigest.buffer, d.data(), 32);
  return sign(marshal_attest(a));
}

attestation::SignedAttestation SoftAk::certify(ByteView public_area, ByteView qualifying) const {
  TPMS_ATTEST a = header(TPM2_ST_ATTEST_CERTIFY, qualifying, {500, 1, 0, true});
  auto name = attestation::name_of_public(public_area);
  OUTPOST_CHECK(name.has_value(), "name of a public area");
  a.attested.certify.name.size = static_cast<UINT16>(name->size());
  std::memcpy(a.attested.certify.name.name, name->data(), name->size());
  return sign(marshal_attest(a));
}

attestation::NodeIdentity soft_identity(const EcPublicKey& ak, const std::string& board) {
  EcPrivateKey ek = new_key();
  attestation::NodeIdentity id;
  Digest h = sha256(ek.public_key().to_der());
  id.node_id = hex_encode(ByteView(h.data(), 16));
  id.trust_domain = "outpost.local";
  id.spiffe_id = "spiffe://outpost.local/node/" + id.node_id;
  id.board = board;
  id.handles = {0x81000001, 0x81010002, 0x81018000};
  id.ek_public = ek.public_key();
  id.ak_public = ak;
  id.ak_public_area = ecc_public_area(ak);
  auto name = attestation::name_of_public(id.ak_public_area);
  if (name) id.ak_name = *name;
  id.provisioned_at = "2026-01-01T00:00:00Z";
  return id;
}

Result<std::string> signed_decisions(const std::filesystem::path& dir, const SoftAk& ak, const std::string& agent, int n,
                                     const std::string& markup) {
  namespace json = boost::json;
  OUTPOST_TRY(auto log, offline_cache::AuditLog::open(dir, offline_cache::AuditLogOptions{}));
  for (int i = 1; i <= n; ++i) {
    offline_cache::AuditEntry e;
    e.kind = offline_cache::RecordKind::decision;
    e.event = "decision";
    e.agent = agent;
    e.bundle_version = 1;
    const bool allow = i % 3 != 0;
    e.detail = json::serialize(json::object{{"kind", "decision"}, {"agent", agent}, {"server", "fs"},
                                            {"tool", (allow ? "read_file" : "write_file") + markup}, {"allow", allow},
                                            {"verdict", allow ? "allow" : "deny"},
                                            {"reason", (allow ? "reads are allowed" : "writes outside /srv/out are denied") + markup}});
    OUTPOST_TRY_VOID(log->append(e));
  }
  attestation::PcrBank bank;
  bank.values[23] = Bytes(32, 0);
  const attestation::PcrValues pcrs{bank};
  auto [seq, head] = log->head();
  auto q = ak.quote(offline_cache::checkpoint_qualifying_data(seq, head), pcrs, {5000, 1, 0, true});
  OUTPOST_TRY_VOID(log->append_checkpoint(seq, head, q, attestation::encode_pcrs_tpm2tools(pcrs)));
  OUTPOST_TRY_VOID(log->wait_durable(log->last_seq()));
  std::string frames;
  OUTPOST_TRY_VOID(offline_cache::read_audit_frames(dir, 1, log->last_seq(), [&](const offline_cache::AuditFrame& f) {
    frames.append(as_chars(f.frame));
    return true;
  }));
  return frames;
}

}  // namespace outpost::testing
