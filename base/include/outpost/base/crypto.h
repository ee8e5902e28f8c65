// SHA-256 and ECDSA P-256 over mbedTLS 2.28: the only curve and hash outpost signs with
// (TPM keys, bundle signatures, call-scoped credentials). Also the few primitives TPM 2.0's
// credential protection needs in software: HMAC-SHA-256, AES in CFB mode and P-256 ECDH.
//
// Every mbedTLS return code is checked in crypto.cc by one wrapper and becomes an Error in
// mbedtls_category() naming the mbedTLS function. Key objects are immutable after
// construction and safe to share between threads for verify/sign.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"

namespace outpost {

using Digest = std::array<uint8_t, 32>;

Digest sha256(ByteView data);
inline Digest sha256(std::string_view s) { return sha256(as_bytes(s)); }

// SHA-256(domain || 0x00 || data): what outpost signs, so that a signature made for one
// purpose ("outpost/bundle/v1") can never pass for another ("outpost/root/v1").
Digest domain_hash(std::string_view domain, ByteView data);

// Incremental SHA-256 for data that arrives in pieces (files, framed fields).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  Sha256& update(ByteView data);
  Sha256& update(std::string_view s) { return update(as_bytes(s)); }
  Digest finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// HMAC-SHA-256 (RFC 2104) of `data` under `key` (any length).
Result<Digest> hmac_sha256(ByteView key, ByteView data);

// AES in CFB mode with a 128-bit feedback (NIST SP 800-38A), the TPM's symmetric mode for
// credential blobs: no padding, the output is as long as the input. `key` is 16, 24 or 32
// bytes, `iv` 16 bytes.
Result<Bytes> aes_cfb_encrypt(ByteView key, ByteView iv, ByteView plaintext);

// AES-256-GCM (NIST SP 800-38D) with a 96-bit nonce and a 128-bit tag: `key` 32 bytes,
// `nonce` 12 (never reused with a key), `aad` authenticated but not encrypted. gcm_seal gives
// ciphertext || tag; gcm_open checks the tag first and gives errc::verification_failed, and no
// plaintext, when anything was altered.
Result<Bytes> aes_gcm_seal(ByteView key, ByteView nonce, ByteView aad, ByteView plaintext);
Result<Bytes> aes_gcm_open(ByteView key, ByteView nonce, ByteView aad, ByteView sealed);

// Fills `out` from the kernel's CSPRNG (getrandom(2)).
void random_bytes(std::span<uint8_t> out);

// ECDSA signatures travel as DER (X.509/mbedTLS style) or as raw r||s (TPM, JWS ES256).
Result<Bytes> ecdsa_der_from_raw(ByteView r, ByteView s);
struct RawSignature {
  std::array<uint8_t, 32> r{};
  std::array<uint8_t, 32> s{};
  Bytes concat() const;  // r||s, 64 bytes, as JWS ES256 wants
  static Result<RawSignature> from_concat(ByteView rs);  // the reverse; exactly 64 bytes
};
Result<RawSignature> ecdsa_raw_from_der(ByteView der);

// A P-256 public key, held as its affine point.
class EcPublicKey {
 public:
  // An empty placeholder (not a point on the curve); every verify() against it fails.
  EcPublicKey() = default;

  // Coordinates as big-endian integers of at most 32 bytes (left-padded when shorter, as a
  // TPM may return them). The point must lie on the curve.
  static Result<EcPublicKey> from_point(ByteView x, ByteView y);
  static Result<EcPublicKey> from_pem(std::string_view pem);  // SubjectPublicKeyInfo
  static Result<EcPublicKey> from_der(ByteView der);
  static Result<EcPublicKey> from_jwk(std::string_view json);  // RFC 7517 EC key

  const std::array<uint8_t, 32>& x() const { return x_; }
  const std::array<uint8_t, 32>& y() const { return y_; }

  Bytes to_der() const;
  std::string to_pem() const;
  // {"kty":"EC","crv":"P-256","x":"…","y":"…"} plus "kid" when given.
  std::string to_jwk(std::string_view kid = {}) const;
  // RFC 7638 JWK thumbprint (base64url of SHA-256 over the canonical JWK members).
  std::string thumbprint() const;

  Result<void> verify(const Digest& digest, ByteView der_signature) const;
  Result<void> verify(const Digest& digest, const RawSignature& sig) const;

  bool operator==(const EcPublicKey& o) const { return x_ == o.x_ && y_ == o.y_; }

 private:
  std::array<uint8_t, 32> x_{};
  std::array<uint8_t, 32> y_{};
};

// A software P-256 private key (bundle signing keys of the IAM, tests). TPM-resident keys
// never take this form.
class EcPrivateKey {
 public:
  static Result<EcPrivateKey> generate();
  static Result<EcPrivateKey> from_pem(std::string_view pem);  // SEC1 or PKCS#8

  EcPrivateKey(EcPrivateKey&&) noexcept;
  EcPrivateKey& operator=(EcPrivateKey&&) noexcept;
  ~EcPrivateKey();

  Result<std::string> to_pem() const;  // SEC1 "EC PRIVATE KEY"
  const EcPublicKey& public_key() const { return public_; }

  // Deterministic ECDSA (RFC 6979) over a SHA-256 digest.
  Result<RawSignature> sign(const Digest& digest) const;

  // ECDH: the x coordinate of d·Q, where d is this key and Q the peer's point (the shared
  // secret Z of NIST SP 800-56A and TPM 2.0 Part 1 C.6.1), 32 bytes big-endian.
  Result<std::array<uint8_t, 32>> ecdh_shared_x(const EcPublicKey& peer) const;

 private:
  struct Impl;
  EcPrivateKey(std::unique_ptr<Impl> impl, EcPublicKey pub);
  std::unique_ptr<Impl> impl_;
  EcPublicKey public_;
};

}  // namespace outpost
