#include "outpost/base/crypto.h"

#include <mbedtls/aes.h>
#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <sys/random.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>

#include "outpost/base/errors.h"
#include "mbedtls_check.h"

namespace outpost {
namespace {

using check_fn = Result<void> (*)(int, const char*);
constexpr check_fn check = detail::mbedtls_check;
using detail::Mpi;
using detail::Pk;

int rng_callback(void*, unsigned char* out, size_t len) {
  random_bytes({out, len});
  return 0;
}

// RAII holders for the mbedTLS structures used here.
struct Group {
  Group() {
    mbedtls_ecp_group_init(&g);
    int rc = mbedtls_ecp_group_load(&g, MBEDTLS_ECP_DP_SECP256R1);
    OUTPOST_CHECK(rc == 0, "loading the built-in P-256 group cannot fail");
  }
  ~Group() { mbedtls_ecp_group_free(&g); }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  mbedtls_ecp_group g;
};

struct Point {
  Point() { mbedtls_ecp_point_init(&p); }
  ~Point() { mbedtls_ecp_point_free(&p); }
  Point(const Point&) = delete;
  Point& operator=(const Point&) = delete;
  mbedtls_ecp_point p;
};

struct Aes {
  Aes() { mbedtls_aes_init(&ctx); }
  ~Aes() { mbedtls_aes_free(&ctx); }  // wipes the key schedule
  Aes(const Aes&) = delete;
  Aes& operator=(const Aes&) = delete;
  mbedtls_aes_context ctx;
};

// Writes `in` (big-endian, up to 32 bytes, leading zeros allowed beyond) into a 32-byte field.
Result<std::array<uint8_t, 32>> left_pad32(ByteView in) {
  while (in.size() > 32 && in.front() == 0) in = in.subspan(1);
  if (in.size() > 32) return fail(errc::invalid_argument, "P-256 coordinate longer than 32 bytes");
  std::array<uint8_t, 32> out{};
  std::memcpy(out.data() + (32 - in.size()), in.data(), in.size());
  return out;
}

Result<EcPublicKey> from_pk(const mbedtls_pk_context& pk) {
  if (mbedtls_pk_get_type(&pk) != MBEDTLS_PK_ECKEY) {
    return fail(errc::unsupported, "key is not an elliptic-curve key");
  }
  const mbedtls_ecp_keypair* ec = mbedtls_pk_ec(pk);
  if (ec->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
    return fail(errc::unsupported, "key is not on curve P-256");
  }
  uint8_t buf[65];
  size_t len = 0;
  OUTPOST_TRY_VOID(check(mbedtls_ecp_point_write_binary(&ec->grp, &ec->Q, MBEDTLS_ECP_PF_UNCOMPRESSED,
                                                        &len, buf, sizeof buf),
                         "mbedtls_ecp_point_write_binary"));
  if (len != 65) return fail(errc::corrupt, "unexpected EC point encoding");
  return EcPublicKey::from_point(ByteView(buf + 1, 32), ByteView(buf + 33, 32));
}

// Puts our point into a fresh pk context (for the writers).
Result<void> to_pk(const EcPublicKey& key, Pk& pk) {
  OUTPOST_TRY_VOID(check(mbedtls_pk_setup(&pk.ctx, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)),
                         "mbedtls_pk_setup"));
  mbedtls_ecp_keypair* ec = mbedtls_pk_ec(pk.ctx);
  OUTPOST_TRY_VOID(check(mbedtls_ecp_group_load(&ec->grp, MBEDTLS_ECP_DP_SECP256R1),
                         "mbedtls_ecp_group_load"));
  uint8_t buf[65];
  buf[0] = 0x04;
  std::memcpy(buf + 1, key.x().data(), 32);
  std::memcpy(buf + 33, key.y().data(), 32);
  return check(mbedtls_ecp_point_read_binary(&ec->grp, &ec->Q, buf, sizeof buf),
               "mbedtls_ecp_point_read_binary");
}

Result<std::string> json_string(const boost::json::object& o, const char* field) {
  auto it = o.find(field);
  if (it == o.end() || !it->value().is_string()) {
    return fail(errc::invalid_argument, std::string("JWK lacks string member \"") + field + "\"");
  }
  return std::string(it->value().as_string());
}

}  // namespace

// ---- hashing and randomness ----

struct Sha256::Impl {
  mbedtls_sha256_context ctx;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  mbedtls_sha256_init(&impl_->ctx);
  // SHA-256 over memory has no failure mode in mbedTLS 2.28 short of a hardware accelerator.
  OUTPOST_CHECK(mbedtls_sha256_starts_ret(&impl_->ctx, 0) == 0, "sha256 start");
}
Sha256::~Sha256() { mbedtls_sha256_free(&impl_->ctx); }

Sha256& Sha256::update(ByteView data) {
  OUTPOST_CHECK(mbedtls_sha256_update_ret(&impl_->ctx, data.data(), data.size()) == 0,
                "sha256 update");
  return *this;
}

Digest Sha256::finish() {
  Digest d;
  OUTPOST_CHECK(mbedtls_sha256_finish_ret(&impl_->ctx, d.data()) == 0, "sha256 finish");
  return d;
}

Digest sha256(ByteView data) {
  Digest d;
  OUTPOST_CHECK(mbedtls_sha256_ret(data.data(), data.size(), d.data(), 0) == 0, "sha256");
  return d;
}

Digest domain_hash(std::string_view domain, ByteView data) {
  Sha256 h;
  h.update(domain);
  const uint8_t zero = 0;
  h.update(ByteView(&zero, 1));
  h.update(data);
  return h.finish();
}

Result<Digest> hmac_sha256(ByteView key, ByteView data) {
  Digest d;
  OUTPOST_TRY_VOID(check(mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key.data(), key.size(),
                                         data.data(), data.size(), d.data()),
                         "mbedtls_md_hmac"));
  return d;
}

Result<Bytes> aes_cfb_encrypt(ByteView key, ByteView iv, ByteView plaintext) {
  if (key.size() != 16 && key.size() != 24 && key.size() != 32) {
    return fail(errc::invalid_argument, "an AES key is 16, 24 or 32 bytes, not " + std::to_string(key.size()));
  }
  if (iv.size() != 16) {
    return fail(errc::invalid_argument, "an AES-CFB IV is 16 bytes, not " + std::to_string(iv.size()));
  }
  Aes aes;
  OUTPOST_TRY_VOID(check(mbedtls_aes_setkey_enc(&aes.ctx, key.data(), static_cast<unsigned>(key.size() * 8)),
                         "mbedtls_aes_setkey_enc"));
  unsigned char feedback[16];
  std::memcpy(feedback, iv.data(), sizeof feedback);
  size_t offset = 0;
  Bytes out(plaintext.size());
  OUTPOST_TRY_VOID(check(mbedtls_aes_crypt_cfb128(&aes.ctx, MBEDTLS_AES_ENCRYPT, plaintext.size(), &offset, feedback,
                                                  plaintext.data(), out.data()),
                         "mbedtls_aes_crypt_cfb128"));
  mbedtls_platform_zeroize(feedback, sizeof feedback);
  return out;
}

namespace {

struct Gcm {
  Gcm() { mbedtls_gcm_init(&ctx); }
  ~Gcm() { mbedtls_gcm_free(&ctx); }  // wipes the key schedule
  Gcm(const Gcm&) = delete;
  Gcm& operator=(const Gcm&) = delete;
  mbedtls_gcm_context ctx;
};

constexpr size_t kGcmTag = 16;

Result<void> gcm_key(Gcm& gcm, ByteView key, ByteView nonce) {
  if (key.size() != 32) return fail(errc::invalid_argument, "an AES-256-GCM key is 32 bytes, not " + std::to_string(key.size()));
  if (nonce.size() != 12) return fail(errc::invalid_argument, "an AES-GCM nonce is 12 bytes, not " + std::to_string(nonce.size()));
  return check(mbedtls_gcm_setkey(&gcm.ctx, MBEDTLS_CIPHER_ID_AES, key.data(), 256), "mbedtls_gcm_setkey");
}

}  // namespace

Result<Bytes> aes_gcm_seal(ByteView key, ByteView nonce, ByteView aad, ByteView plaintext) {
  Gcm gcm;
  OUTPOST_TRY_VOID(gcm_key(gcm, key, nonce));
  Bytes out(plaintext.size() + kGcmTag);
  OUTPOST_TRY_VOID(check(mbedtls_gcm_crypt_and_tag(&gcm.ctx, MBEDTLS_GCM_ENCRYPT, plaintext.size(), nonce.data(), nonce.size(),
                                                   aad.data(), aad.size(), plaintext.data(), out.data(), kGcmTag,
                                                   out.data() + plaintext.size()),
                         "mbedtls_gcm_crypt_and_tag"));
  return out;
}

Result<Bytes> aes_gcm_open(ByteView key, ByteView nonce, ByteView aad, ByteView sealed) {
  if (sealed.size() < kGcmTag) return fail(errc::verification_failed, "AES-GCM: shorter than its tag");
  Gcm gcm;
  OUTPOST_TRY_VOID(gcm_key(gcm, key, nonce));
  const size_t n = sealed.size() - kGcmTag;
  Bytes out(n);
  const int rc = mbedtls_gcm_auth_decrypt(&gcm.ctx, n, nonce.data(), nonce.size(), aad.data(), aad.size(), sealed.data() + n, kGcmTag,
                                          sealed.data(), out.data());
  if (rc == MBEDTLS_ERR_GCM_AUTH_FAILED) {
    mbedtls_platform_zeroize(out.data(), out.size());
    return fail(errc::verification_failed, "AES-GCM: the tag does not match (altered, or another key)");
  }
  OUTPOST_TRY_VOID(check(rc, "mbedtls_gcm_auth_decrypt"));
  return out;
}

void random_bytes(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = getrandom(out.data() + done, out.size() - done, 0);
    if (n < 0 && errno == EINTR) continue;
    OUTPOST_CHECK(n > 0, "getrandom(2) failed: no kernel randomness");
    done += static_cast<size_t>(n);
  }
}

// ---- signature encodings ----

Bytes RawSignature::concat() const {
  Bytes out(r.begin(), r.end());
  out.insert(out.end(), s.begin(), s.end());
  return out;
}

Result<RawSignature> RawSignature::from_concat(ByteView rs) {
  if (rs.size() != 64) return fail(errc::corrupt, "an r||s signature is 64 bytes, not " + std::to_string(rs.size()));
  RawSignature out;
  std::copy(rs.begin(), rs.begin() + 32, out.r.begin());
  std::copy(rs.begin() + 32, rs.end(), out.s.begin());
  return out;
}

Result<Bytes> ecdsa_der_from_raw(ByteView r, ByteView s) {
  Mpi mr, ms;
  OUTPOST_TRY_VOID(check(mbedtls_mpi_read_binary(&mr.v, r.data(), r.size()), "mbedtls_mpi_read_binary"));
  OUTPOST_TRY_VOID(check(mbedtls_mpi_read_binary(&ms.v, s.data(), s.size()), "mbedtls_mpi_read_binary"));
  // mbedTLS's ASN.1 writers fill the buffer backwards from its end.
  unsigned char buf[MBEDTLS_ECDSA_MAX_SIG_LEN(521)];
  unsigned char* p = buf + sizeof buf;
  size_t len = 0;
  int rc;
  if ((rc = mbedtls_asn1_write_mpi(&p, buf, &ms.v)) < 0) return fail(mbedtls_error(rc), "mbedtls_asn1_write_mpi");
  len += static_cast<size_t>(rc);
  if ((rc = mbedtls_asn1_write_mpi(&p, buf, &mr.v)) < 0) return fail(mbedtls_error(rc), "mbedtls_asn1_write_mpi");
  len += static_cast<size_t>(rc);
  if ((rc = mbedtls_asn1_write_len(&p, buf, len)) < 0) return fail(mbedtls_error(rc), "mbedtls_asn1_write_len");
  len += static_cast<size_t>(rc);
  if ((rc = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0) {
    return fail(mbedtls_error(rc), "mbedtls_asn1_write_tag");
  }
  len += static_cast<size_t>(rc);
  return Bytes(p, p + len);
}

Result<RawSignature> ecdsa_raw_from_der(ByteView der) {
  unsigned char* p = const_cast<unsigned char*>(der.data());
  const unsigned char* end = der.data() + der.size();
  size_t len = 0;
  OUTPOST_TRY_VOID(check(mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE),
                         "mbedtls_asn1_get_tag"));
  if (p + len != end) return fail(errc::corrupt, "trailing bytes after DER ECDSA signature");
  Mpi r, s;
  OUTPOST_TRY_VOID(check(mbedtls_asn1_get_mpi(&p, end, &r.v), "mbedtls_asn1_get_mpi"));
  OUTPOST_TRY_VOID(check(mbedtls_asn1_get_mpi(&p, end, &s.v), "mbedtls_asn1_get_mpi"));
  if (p != end) return fail(errc::corrupt, "trailing bytes inside DER ECDSA signature");
  RawSignature out;
  OUTPOST_TRY_VOID(check(mbedtls_mpi_write_binary(&r.v, out.r.data(), 32), "mbedtls_mpi_write_binary"));
  OUTPOST_TRY_VOID(check(mbedtls_mpi_write_binary(&s.v, out.s.data(), 32), "mbedtls_mpi_write_binary"));
  return out;
}

// ---- public keys ----

Result<EcPublicKey> EcPublicKey::from_point(ByteView x, ByteView y) {
  EcPublicKey key;
  OUTPOST_TRY(key.x_, left_pad32(x));
  OUTPOST_TRY(key.y_, left_pad32(y));
  Group grp;
  Point q;
  uint8_t buf[65];
  buf[0] = 0x04;
  std::memcpy(buf + 1, key.x_.data(), 32);
  std::memcpy(buf + 33, key.y_.data(), 32);
  OUTPOST_TRY_VOID(check(mbedtls_ecp_point_read_binary(&grp.g, &q.p, buf, sizeof buf),
                         "mbedtls_ecp_point_read_binary"));
  OUTPOST_TRY_VOID(check(mbedtls_ecp_check_pubkey(&grp.g, &q.p), "mbedtls_ecp_check_pubkey"));
  return key;
}

Result<EcPublicKey> EcPublicKey::from_pem(std::string_view pem) {
  // mbedTLS wants PEM input NUL-terminated with the NUL counted in the length.
  std::string buf(pem);
  Pk pk;
  OUTPOST_TRY_VOID(check(mbedtls_pk_parse_public_key(&pk.ctx, reinterpret_cast<const unsigned char*>(buf.c_str()),
                                                     buf.size() + 1),
                         "mbedtls_pk_parse_public_key"));
  return from_pk(pk.ctx);
}

Result<EcPublicKey> EcPublicKey::from_der(ByteView der) {
  Pk pk;
  OUTPOST_TRY_VOID(check(mbedtls_pk_parse_public_key(&pk.ctx, der.data(), der.size()),
                         "mbedtls_pk_parse_public_key"));
  return from_pk(pk.ctx);
}

Result<EcPublicKey> EcPublicKey::from_jwk(std::string_view json) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(json, ec);
  if (ec || !v.is_object()) return fail(errc::invalid_argument, "JWK is not a JSON object");
  const auto& o = v.as_object();
  OUTPOST_TRY(std::string kty, json_string(o, "kty"));
  OUTPOST_TRY(std::string crv, json_string(o, "crv"));
  if (kty != "EC" || crv != "P-256") {
    return fail(errc::unsupported, "JWK is not an EC P-256 key (kty " + kty + ", crv " + crv + ")");
  }
  OUTPOST_TRY(std::string xs, json_string(o, "x"));
  OUTPOST_TRY(std::string ys, json_string(o, "y"));
  OUTPOST_TRY(Bytes x, base64url_decode(xs));
  OUTPOST_TRY(Bytes y, base64url_decode(ys));
  if (x.size() != 32 || y.size() != 32) {
    return fail(errc::invalid_argument, "JWK coordinates must be 32 bytes each");
  }
  return from_point(x, y);
}

Bytes EcPublicKey::to_der() const {
  Pk pk;
  OUTPOST_CHECK(to_pk(*this, pk).has_value(), "a validated point loads");
  unsigned char buf[256];
  int len = mbedtls_pk_write_pubkey_der(&pk.ctx, buf, sizeof buf);
  OUTPOST_CHECK(len > 0, "P-256 SubjectPublicKeyInfo fits 256 bytes");
  return Bytes(buf + sizeof buf - len, buf + sizeof buf);
}

std::string EcPublicKey::to_pem() const {
  Pk pk;
  OUTPOST_CHECK(to_pk(*this, pk).has_value(), "a validated point loads");
  unsigned char buf[512];
  int rc = mbedtls_pk_write_pubkey_pem(&pk.ctx, buf, sizeof buf);
  OUTPOST_CHECK(rc == 0, "P-256 public PEM fits 512 bytes");
  return std::string(reinterpret_cast<char*>(buf));
}

std::string EcPublicKey::to_jwk(std::string_view kid) const {
  boost::json::object o;
  o["kty"] = "EC";
  o["crv"] = "P-256";
  o["x"] = base64url_encode(x_);
  o["y"] = base64url_encode(y_);
  if (!kid.empty()) o["kid"] = kid;
  return boost::json::serialize(o);
}

std::string EcPublicKey::thumbprint() const {
  // RFC 7638: required members only, lexicographic order, no white space.
  std::string canonical = R"({"crv":"P-256","kty":"EC","x":")" + base64url_encode(x_) +
                          R"(","y":")" + base64url_encode(y_) + R"("})";
  return base64url_encode(sha256(canonical));
}

// P-256, one per thread and kept: mbedTLS computes the generator's comb table in the group
// at its first multiplication and reuses it after (MBEDTLS_ECP_FIXED_POINT_OPTIM), which a
// fresh group per verify paid every time (1.4 ms a verify instead of 1.0 here,
// docs/benchmarks.md). Per thread because that first use writes the table without a lock.
static Group& thread_p256() {
  thread_local Group grp;
  return grp;
}

Result<void> EcPublicKey::verify(const Digest& digest, const RawSignature& sig) const {
  Group& grp = thread_p256();
  Point q;
  Mpi r, s;
  uint8_t buf[65];
  buf[0] = 0x04;
  std::memcpy(buf + 1, x_.data(), 32);
  std::memcpy(buf + 33, y_.data(), 32);
  OUTPOST_TRY_VOID(check(mbedtls_ecp_point_read_binary(&grp.g, &q.p, buf, sizeof buf),
                         "mbedtls_ecp_point_read_binary"));
  OUTPOST_TRY_VOID(check(mbedtls_mpi_read_binary(&r.v, sig.r.data(), sig.r.size()), "mbedtls_mpi_read_binary"));
  OUTPOST_TRY_VOID(check(mbedtls_mpi_read_binary(&s.v, sig.s.data(), sig.s.size()), "mbedtls_mpi_read_binary"));
  int rc = mbedtls_ecdsa_verify(&grp.g, digest.data(), digest.size(), &q.p, &r.v, &s.v);
  if (rc == MBEDTLS_ERR_ECP_VERIFY_FAILED) {
    return fail(errc::verification_failed, "ECDSA signature does not match the key");
  }
  return check(rc, "mbedtls_ecdsa_verify");
}

Result<void> EcPublicKey::verify(const Digest& digest, ByteView der_signature) const {
  OUTPOST_TRY(RawSignature sig, ecdsa_raw_from_der(der_signature));
  return verify(digest, sig);
}

// ---- private keys ----

struct EcPrivateKey::Impl {
  Pk pk;
};

EcPrivateKey::EcPrivateKey(std::unique_ptr<Impl> impl, EcPublicKey pub)
    : impl_(std::move(impl)), public_(std::move(pub)) {}
EcPrivateKey::EcPrivateKey(EcPrivateKey&&) noexcept = default;
EcPrivateKey& EcPrivateKey::operator=(EcPrivateKey&&) noexcept = default;
EcPrivateKey::~EcPrivateKey() = default;

Result<EcPrivateKey> EcPrivateKey::generate() {
  auto impl = std::make_unique<Impl>();
  OUTPOST_TRY_VOID(check(mbedtls_pk_setup(&impl->pk.ctx, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)),
                         "mbedtls_pk_setup"));
  OUTPOST_TRY_VOID(check(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(impl->pk.ctx),
                                             rng_callback, nullptr),
                         "mbedtls_ecp_gen_key"));
  OUTPOST_TRY(EcPublicKey pub, from_pk(impl->pk.ctx));
  return EcPrivateKey(std::move(impl), std::move(pub));
}

Result<EcPrivateKey> EcPrivateKey::from_pem(std::string_view pem) {
  auto impl = std::make_unique<Impl>();
  std::string buf(pem);
  OUTPOST_TRY_VOID(check(mbedtls_pk_parse_key(&impl->pk.ctx, reinterpret_cast<const unsigned char*>(buf.c_str()),
                                              buf.size() + 1, nullptr, 0),
                         "mbedtls_pk_parse_key"));
  OUTPOST_TRY(EcPublicKey pub, from_pk(impl->pk.ctx));
  return EcPrivateKey(std::move(impl), std::move(pub));
}

Result<std::string> EcPrivateKey::to_pem() const {
  unsigned char buf[1024];
  OUTPOST_TRY_VOID(check(mbedtls_pk_write_key_pem(&impl_->pk.ctx, buf, sizeof buf), "mbedtls_pk_write_key_pem"));
  std::string out(reinterpret_cast<char*>(buf));
  mbedtls_platform_zeroize(buf, sizeof buf);
  return out;
}

Result<RawSignature> EcPrivateKey::sign(const Digest& digest) const {
  mbedtls_ecp_keypair* ec = mbedtls_pk_ec(impl_->pk.ctx);
  Mpi r, s;
  OUTPOST_TRY_VOID(check(mbedtls_ecdsa_sign_det_ext(&ec->grp, &r.v, &s.v, &ec->d, digest.data(), digest.size(),
                                                    MBEDTLS_MD_SHA256, rng_callback, nullptr),
                         "mbedtls_ecdsa_sign_det_ext"));
  RawSignature out;
  OUTPOST_TRY_VOID(check(mbedtls_mpi_write_binary(&r.v, out.r.data(), 32), "mbedtls_mpi_write_binary"));
  OUTPOST_TRY_VOID(check(mbedtls_mpi_write_binary(&s.v, out.s.data(), 32), "mbedtls_mpi_write_binary"));
  return out;
}

Result<std::array<uint8_t, 32>> EcPrivateKey::ecdh_shared_x(const EcPublicKey& peer) const {
  mbedtls_ecp_keypair* ec = mbedtls_pk_ec(impl_->pk.ctx);
  Point q;
  uint8_t buf[65];
  buf[0] = 0x04;
  std::memcpy(buf + 1, peer.x().data(), 32);
  std::memcpy(buf + 33, peer.y().data(), 32);
  OUTPOST_TRY_VOID(check(mbedtls_ecp_point_read_binary(&ec->grp, &q.p, buf, sizeof buf),
                         "mbedtls_ecp_point_read_binary"));
  // Checks that Q is on the curve before multiplying; the RNG blinds the computation.
  Mpi z;
  OUTPOST_TRY_VOID(check(mbedtls_ecdh_compute_shared(&ec->grp, &z.v, &q.p, &ec->d, rng_callback, nullptr),
                         "mbedtls_ecdh_compute_shared"));
  std::array<uint8_t, 32> out{};
  OUTPOST_TRY_VOID(check(mbedtls_mpi_write_binary(&z.v, out.data(), out.size()), "mbedtls_mpi_write_binary"));
  return out;
}

}  // namespace outpost
