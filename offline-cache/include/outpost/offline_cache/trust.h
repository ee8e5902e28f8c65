// Trust anchors for bundles: a root — a set of ECDSA P-256 keys and a threshold k — held by
// the node from provisioning. A bundle is trusted when k distinct root keys signed it.
//
// Roots rotate TUF-style: root N+1 is accepted only when signed by a threshold of root N's
// keys *and* by a threshold of its own keys; a node walks the chain one version at a time.
//
// The trust file (JSON):
//   {"signed": {"type": "outpost-root", "version": 1, "threshold": 2,
//               "keys": [{"kid": "<RFC 7638 thumbprint>", "pem": "-----BEGIN PUBLIC KEY-----…"}]},
//    "signatures": [{"kid": "…", "sig": "<base64url r||s>"}]}
// Signatures cover SHA-256("outpost/root/v1" || 0x00 || canonical JSON of "signed"), where the
// canonical JSON is re-serialised from the parsed fields in the order above.
#pragma once

#include <string>
#include <vector>

#include "outpost/base/crypto.h"
#include "outpost/base/result.h"
#include "outpost/offline_cache/bundle.h"

namespace outpost::offline_cache {

struct RootKey {
  std::string kid;
  EcPublicKey key;
};

struct TrustRoot {
  uint64_t version = 1;
  uint32_t threshold = 1;
  std::vector<RootKey> keys;
  std::vector<BundleSignature> signatures;  // over the canonical form, by root keys

  static Result<TrustRoot> create(std::vector<EcPublicKey> keys, uint32_t threshold, uint64_t version = 1);
  static Result<TrustRoot> parse(std::string_view json);
  std::string to_json() const;
  std::string canonical() const;  // what signatures cover (without the domain prefix)
  Digest signing_digest() const;

  const RootKey* find(std::string_view kid) const;
  // Adds a signature by `key` (which need not be one of this root's keys: a rotation is
  // signed by the old root's keys too).
  Result<void> sign(const EcPrivateKey& key);
};

// How many distinct keys of `root` produced a valid signature over `digest`.
struct SignatureCount {
  uint32_t valid = 0;
  std::vector<std::string> problems;  // unknown signers, bad signatures, duplicates
};
SignatureCount count_signatures(const TrustRoot& root, const Digest& digest,
                                const std::vector<BundleSignature>& signatures);

// Signatures of a bundle against a root: at least `threshold` distinct root keys, each valid.
Result<void> verify_bundle_signatures(const SignedBundle& bundle, const TrustRoot& root);

// One TUF step: `next` must be version current+1 and signed by a threshold of `current`'s
// keys and by a threshold of its own.
Result<void> verify_rotation(const TrustRoot& current, const TrustRoot& next);

// Walks `chain` (consecutive versions after `current`) and returns the newest root reached.
Result<TrustRoot> walk_rotations(const TrustRoot& current, const std::vector<TrustRoot>& chain);

}  // namespace outpost::offline_cache
