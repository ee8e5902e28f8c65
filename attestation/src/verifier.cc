#include "outpost/attestation/verifier.h"

#include "marshal.h"

namespace outpost::attestation {
namespace {

Bytes bytes_of(const TPM2B_NAME& n) { return Bytes(n.name, n.name + n.size); }

std::string describe_selection(const PcrSelections& s) {
  return s.empty() ? std::string("none") : format_pcr_selection(s);
}

Result<ParsedAttest> verify_signed(const SignedAttestation& sa, const EcPublicKey& ak) {
  OUTPOST_TRY(ParsedAttest parsed, parse_attest(sa.attest));
  OUTPOST_TRY(RawSignature sig, parse_ecdsa_signature(sa.signature));
  Result<void> v = ak.verify(sha256(sa.attest), sig);
  if (!v) return fail(v.error().wrap("signature does not verify with the AK"));
  return parsed;
}

}  // namespace

Result<ParsedAttest> parse_attest(ByteView attest) {
  OUTPOST_TRY(TPMS_ATTEST a, detail::unmarshal_attest(attest));
  if (a.magic != TPM2_GENERATED_VALUE) {
    return fail(errc::verification_failed, "attestation magic is not TPM_GENERATED_VALUE: not made by a TPM");
  }
  ParsedAttest out;
  out.type = a.type;
  out.qualified_signer = bytes_of(a.qualifiedSigner);
  out.extra_data = Bytes(a.extraData.buffer, a.extraData.buffer + a.extraData.size);
  out.clock = detail::clock_info(a.clockInfo);
  out.firmware_version = a.firmwareVersion;
  if (a.type == TPM2_ST_ATTEST_QUOTE) {
    out.pcr_select = detail::from_tpml(a.attested.quote.pcrSelect);
    const auto& d = a.attested.quote.pcrDigest;
    out.pcr_digest = Bytes(d.buffer, d.buffer + d.size);
  } else if (a.type == TPM2_ST_ATTEST_CERTIFY) {
    out.certified_name = bytes_of(a.attested.certify.name);
    out.certified_qualified_name = bytes_of(a.attested.certify.qualifiedName);
  }
  return out;
}

Result<RawSignature> parse_ecdsa_signature(ByteView signature) {
  OUTPOST_TRY(TPMT_SIGNATURE s, detail::unmarshal_signature(signature));
  if (s.sigAlg != TPM2_ALG_ECDSA) return fail(errc::unsupported, "signature is not ECDSA");
  const auto& e = s.signature.ecdsa;
  if (e.hash != TPM2_ALG_SHA256) return fail(errc::unsupported, "ECDSA signature does not use SHA-256");
  OUTPOST_TRY(Bytes der, ecdsa_der_from_raw(ByteView(e.signatureR.buffer, e.signatureR.size),
                                            ByteView(e.signatureS.buffer, e.signatureS.size)));
  Result<RawSignature> raw = ecdsa_raw_from_der(der);
  if (!raw) return fail(errc::corrupt, "ECDSA signature components are longer than 32 bytes");
  return raw;
}

Result<ParsedAttest> verify_quote(const SignedAttestation& quote, const EcPublicKey& ak, ByteView nonce,
                                  const PcrValues& pcrs) {
  OUTPOST_TRY(ParsedAttest a, verify_signed(quote, ak));
  if (a.type != kAttestQuote) {
    return fail(errc::verification_failed, "attestation is not a quote (type " + std::to_string(a.type) + ")");
  }
  if (!equal_constant_time(a.extra_data, nonce)) {
    return fail(errc::verification_failed,
                "nonce mismatch: the quote carries " + hex_encode(a.extra_data) + ", expected " + hex_encode(nonce));
  }
  PcrSelections given = selection_of(pcrs);
  if (given != a.pcr_select) {
    return fail(errc::verification_failed, "PCR selection mismatch: the quote covers " +
                                               describe_selection(a.pcr_select) + ", the values given are " +
                                               describe_selection(given));
  }
  OUTPOST_TRY(TPML_PCR_SELECTION tpml, detail::to_tpml(a.pcr_select));
  OUTPOST_TRY(Digest composite, detail::pcr_composite_digest(tpml, pcrs));
  if (!equal_constant_time(composite, a.pcr_digest)) {
    return fail(errc::verification_failed, "PCR digest mismatch: the PCR values do not hash to the quoted digest");
  }
  return a;
}

Result<ParsedAttest> verify_certification(const SignedAttestation& cert, const EcPublicKey& ak,
                                          ByteView certified_public, ByteView expected_qualifying_data) {
  OUTPOST_TRY(ParsedAttest a, verify_signed(cert, ak));
  if (a.type != kAttestCertify) {
    return fail(errc::verification_failed,
                "attestation is not a certification (type " + std::to_string(a.type) + ")");
  }
  OUTPOST_TRY(Bytes name, name_of_public(certified_public));
  if (!equal_constant_time(name, a.certified_name)) {
    return fail(errc::verification_failed, "certified name mismatch: the certification is for " +
                                               hex_encode(a.certified_name) + ", the key's name is " +
                                               hex_encode(name));
  }
  if (!equal_constant_time(a.extra_data, expected_qualifying_data)) {
    return fail(errc::verification_failed,
                "qualifying data mismatch: the certification does not bind this agent name and measurement");
  }
  return a;
}

Result<Bytes> name_of_public(ByteView tpm2b_public) {
  OUTPOST_TRY(TPM2B_PUBLIC pub, detail::unmarshal_public(tpm2b_public));
  return detail::object_name(pub.publicArea);
}

Result<EcPublicKey> key_of_public(ByteView tpm2b_public) {
  OUTPOST_TRY(TPM2B_PUBLIC pub, detail::unmarshal_public(tpm2b_public));
  return detail::ec_public_key(pub.publicArea);
}

Digest agent_qualifying_data(std::string_view agent_name, ByteView measurement) {
  Sha256 h;
  h.update(std::string_view("outpost/agent-key/v1"));
  const uint8_t zero = 0;
  h.update(ByteView(&zero, 1));
  const uint32_t n = static_cast<uint32_t>(agent_name.size());
  const uint8_t len[4] = {static_cast<uint8_t>(n >> 24), static_cast<uint8_t>(n >> 16), static_cast<uint8_t>(n >> 8),
                          static_cast<uint8_t>(n)};
  h.update(ByteView(len, 4));
  h.update(agent_name);
  h.update(measurement);
  return h.finish();
}

Result<void> check_clock_forward(const ClockInfo& earlier, const ClockInfo& later) {
  auto describe = [](const ClockInfo& c) {
    return "reset " + std::to_string(c.reset_count) + ", restart " + std::to_string(c.restart_count) + ", clock " +
           std::to_string(c.clock) + " ms";
  };
  const std::string both = " (" + describe(earlier) + " then " + describe(later) + ")";
  if (later.reset_count < earlier.reset_count) {
    return fail(errc::clock_regressed, "TPM resetCount went backwards" + both);
  }
  if (later.reset_count == earlier.reset_count && later.restart_count < earlier.restart_count) {
    return fail(errc::clock_regressed, "TPM restartCount went backwards" + both);
  }
  if (later.clock < earlier.clock) {
    const bool same_boot = later.reset_count == earlier.reset_count && later.restart_count == earlier.restart_count;
    if (same_boot || later.safe) return fail(errc::clock_regressed, "TPM clock went backwards" + both);
  }
  return ok();
}

}  // namespace outpost::attestation
