// Signed policy bundles: the FlatBuffers SignedBundle (offline-cache/schema/bundle.fbs) that
// carries a Bundle payload and k-of-n ECDSA P-256 signatures over its exact bytes.
//
// parse() runs the FlatBuffers verifier over the outer buffer and over the nested payload
// before anything reads them: bundles arrive over any channel (hub, file copy, USB) and are
// untrusted until verify_signatures() (trust.h) has counted enough valid signatures.
#pragma once

#include <string>
#include <vector>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"
#include "outpost/fb/bundle_generated.h"

namespace outpost::offline_cache {

// What a bundle signature signs: SHA-256("outpost/bundle/v1" || 0x00 || payload).
Digest bundle_signing_digest(ByteView payload);

struct BundleSignature {
  std::string key_id;  // RFC 7638 thumbprint of the signer's public key
  Bytes signature;     // r || s, 64 bytes
};

// The bundle semantics this build implements; bundles whose min_reader is higher are refused
// (docs/bundle-format.md, evolution rule 3).
inline constexpr uint32_t kBundleReaderVersion = 1;

// Largest bundle accepted (a 100,000-rule bundle is ~20 MiB).
inline constexpr size_t kMaxBundleBytes = 64u << 20;

class SignedBundle {
 public:
  // Structural checks only (FlatBuffers verifier, sizes, required fields); no signatures.
  static Result<SignedBundle> parse(Bytes bytes);
  // A SignedBundle buffer from a payload and signatures.
  static Bytes assemble(ByteView payload, const std::vector<BundleSignature>& signatures);

  const Bytes& bytes() const { return bytes_; }
  ByteView payload() const { return payload_; }
  const fb::Bundle& bundle() const { return *bundle_; }
  uint64_t version() const { return bundle_->version(); }
  const std::vector<BundleSignature>& signatures() const { return signatures_; }

  // The same bundle with one more signature, by `key`; refuses a second signature by a key.
  Result<Bytes> add_signature(const EcPrivateKey& key) const;

 private:
  SignedBundle() = default;
  Bytes bytes_;
  ByteView payload_;
  const fb::Bundle* bundle_ = nullptr;
  std::vector<BundleSignature> signatures_;
};

}  // namespace outpost::offline_cache
