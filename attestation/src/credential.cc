#include "outpost/attestation/credential.h"

#include <cstring>

#include "credential_crypto.h"
#include "marshal.h"
#include "outpost/base/errors.h"

namespace outpost::attestation {
namespace detail {
namespace {

constexpr uint32_t kSeedBits = 256;        // the digest size of the EK's name algorithm
constexpr uint32_t kSymmetricBits = 128;   // the EK's symmetric algorithm: AES-128 in CFB mode

void put_u32(Bytes& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

void append(Bytes& out, ByteView b) { out.insert(out.end(), b.begin(), b.end()); }

void append_label(Bytes& out, std::string_view label) {
  append(out, as_bytes(label));
  out.push_back(0);  // labels are hashed with their terminating zero
}

// Concatenates the outputs of `block(counter)` for counter = 1, 2, ... into ceil(bits / 8)
// bytes, clearing the surplus high bits of the first byte.
template <class Block>
Result<SecretBytes> counter_mode(uint32_t bits, Block block) {
  if (bits == 0) return fail(errc::invalid_argument, "a key derivation of 0 bits");
  const size_t bytes = (static_cast<size_t>(bits) + 7) / 8;
  Bytes out;
  out.reserve(bytes + sizeof(Digest));
  for (uint32_t counter = 1; out.size() < bytes; ++counter) {
    OUTPOST_TRY(Digest d, block(counter));
    append(out, d);
    explicit_bzero(d.data(), d.size());
  }
  // Bytes past the requested length are wiped before the vector forgets them.
  explicit_bzero(out.data() + bytes, out.size() - bytes);
  out.resize(bytes);
  if (bits % 8 != 0) out[0] &= static_cast<uint8_t>((1u << (bits % 8)) - 1);
  return SecretBytes(std::move(out));
}

Bytes tpm2b(ByteView contents) {
  Bytes out = {static_cast<uint8_t>(contents.size() >> 8), static_cast<uint8_t>(contents.size() & 0xff)};
  append(out, contents);
  return out;
}

}  // namespace

SecretBytes::~SecretBytes() {
  if (!bytes_.empty()) explicit_bzero(bytes_.data(), bytes_.size());  // a moved-from vector has no buffer
}

Result<SecretBytes> kdfa_sha256(ByteView key, std::string_view label, ByteView context_u, ByteView context_v,
                                uint32_t bits) {
  return counter_mode(bits, [&](uint32_t counter) {
    Bytes message;
    put_u32(message, counter);
    append_label(message, label);
    append(message, context_u);
    append(message, context_v);
    put_u32(message, bits);
    return hmac_sha256(key, message);
  });
}

Result<SecretBytes> kdfe_sha256(ByteView z, std::string_view label, ByteView party_u, ByteView party_v,
                                uint32_t bits) {
  return counter_mode(bits, [&](uint32_t counter) -> Result<Digest> {
    Bytes prefix;
    put_u32(prefix, counter);
    Bytes other_info;
    append_label(other_info, label);
    append(other_info, party_u);
    append(other_info, party_v);
    Sha256 h;
    h.update(prefix).update(z).update(other_info);
    return h.finish();
  });
}

Result<SharedSeed> ecc_share_seed(const EcPrivateKey& ephemeral, const EcPublicKey& target, std::string_view label) {
  OUTPOST_TRY(auto z, ephemeral.ecdh_shared_x(target));
  const EcPublicKey& q = ephemeral.public_key();
  Result<SecretBytes> seed = kdfe_sha256(z, label, q.x(), target.x(), kSeedBits);
  explicit_bzero(z.data(), z.size());
  if (!seed) return fail(seed.error());

  TPMS_ECC_POINT point{};
  point.x.size = static_cast<UINT16>(q.x().size());
  std::memcpy(point.x.buffer, q.x().data(), q.x().size());
  point.y.size = static_cast<UINT16>(q.y().size());
  std::memcpy(point.y.buffer, q.y().data(), q.y().size());
  Bytes point_bytes = marshal(point, Tss2_MU_TPMS_ECC_POINT_Marshal);
  TPM2B_ENCRYPTED_SECRET secret{};
  secret.size = static_cast<UINT16>(point_bytes.size());
  std::memcpy(secret.secret, point_bytes.data(), point_bytes.size());
  return SharedSeed{std::move(*seed), marshal(secret, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal)};
}

Result<CredentialChallenge> make_credential_with(const EcPrivateKey& ephemeral, const EcPublicKey& ek_public,
                                                 ByteView ak_name, ByteView secret) {
  if (secret.empty() || secret.size() > kMaxCredentialBytes) {
    return fail(errc::invalid_argument, "a credential holds 1 to " + std::to_string(kMaxCredentialBytes) +
                                            " bytes, not " + std::to_string(secret.size()));
  }
  const uint16_t name_alg = ak_name.size() >= 2 ? static_cast<uint16_t>(ak_name[0] << 8 | ak_name[1]) : 0;
  const size_t digest_size = hash_alg_digest_size(name_alg);
  if (digest_size == 0 || ak_name.size() != 2 + digest_size) {
    return fail(errc::invalid_argument, "\"" + hex_encode(ak_name) + "\" is not a TPM object name (nameAlg || digest)");
  }

  // The seed, shared with the EK's TPM through the ephemeral point (the encrypted secret).
  OUTPOST_TRY(SharedSeed shared, ecc_share_seed(ephemeral, ek_public, "IDENTITY"));
  const Bytes& seed = shared.seed.get();

  // encIdentity: the size-prefixed secret (TPM2B_DIGEST), AES-128-CFB with a zero IV under a
  // key bound to the AK's name.
  OUTPOST_TRY(SecretBytes sym_key, kdfa_sha256(seed, "STORAGE", ak_name, {}, kSymmetricBits));
  SecretBytes plaintext(tpm2b(secret));
  const uint8_t zero_iv[16] = {};
  OUTPOST_TRY(Bytes enc_identity, aes_cfb_encrypt(sym_key.get(), zero_iv, plaintext.get()));

  // outerHMAC over encIdentity || name: a credential made for another name, or opened with
  // another EK (another seed), fails this check in the TPM (TPM_RC_INTEGRITY).
  OUTPOST_TRY(SecretBytes hmac_key, kdfa_sha256(seed, "INTEGRITY", {}, {}, kSeedBits));
  Bytes authenticated = enc_identity;
  append(authenticated, ak_name);
  OUTPOST_TRY(Digest outer_hmac, hmac_sha256(hmac_key.get(), authenticated));

  // TPMS_ID_OBJECT: TPM2B_DIGEST(outerHMAC) || encIdentity (whose size is inside the
  // encryption), carried in a TPM2B_ID_OBJECT.
  Bytes id_object = tpm2b(outer_hmac);
  append(id_object, enc_identity);
  TPM2B_ID_OBJECT blob{};
  static_assert(2 + sizeof(Digest) + 2 + kMaxCredentialBytes <= sizeof(blob.credential));
  blob.size = static_cast<UINT16>(id_object.size());
  std::memcpy(blob.credential, id_object.data(), id_object.size());
  return CredentialChallenge{marshal(blob, Tss2_MU_TPM2B_ID_OBJECT_Marshal), std::move(shared.encrypted_secret)};
}

}  // namespace detail

Result<CredentialChallenge> make_credential(const EcPublicKey& ek_public, ByteView ak_name, ByteView secret) {
  OUTPOST_TRY(EcPrivateKey ephemeral, EcPrivateKey::generate());
  Result<CredentialChallenge> c = detail::make_credential_with(ephemeral, ek_public, ak_name, secret);
  if (!c) return fail(c.error().wrap("make a credential for EK " + ek_public.thumbprint()));
  return c;
}

}  // namespace outpost::attestation
