#include "outpost/offline_cache/trust.h"

#include <boost/json.hpp>
#include <set>

#include "outpost/base/errors.h"

namespace outpost::offline_cache {
namespace {

namespace json = boost::json;

Result<const json::value*> member(const json::object& o, const char* key, json::kind kind, const char* where) {
  auto it = o.find(key);
  if (it == o.end() || it->value().kind() != kind) {
    return fail(errc::corrupt, std::string("trust file: ") + where + " lacks a valid \"" + key + "\"");
  }
  return &it->value();
}

}  // namespace

Result<TrustRoot> TrustRoot::create(std::vector<EcPublicKey> keys, uint32_t threshold, uint64_t version) {
  TrustRoot r;
  r.version = version;
  r.threshold = threshold;
  std::set<std::string> seen;
  for (auto& k : keys) {
    std::string kid = k.thumbprint();
    if (!seen.insert(kid).second) return fail(errc::invalid_argument, "key " + kid + " is listed twice");
    r.keys.push_back(RootKey{kid, std::move(k)});
  }
  if (r.keys.empty()) return fail(errc::invalid_argument, "a root needs at least one key");
  if (threshold < 1 || threshold > r.keys.size()) {
    return fail(errc::invalid_argument, "threshold " + std::to_string(threshold) + " is not between 1 and " +
                                            std::to_string(r.keys.size()) + " (the number of keys)");
  }
  if (version < 1) return fail(errc::invalid_argument, "root versions start at 1");
  return r;
}

std::string TrustRoot::canonical() const {
  json::object s;
  s["type"] = "outpost-root";
  s["version"] = version;
  s["threshold"] = threshold;
  json::array ks;
  for (const auto& k : keys) {
    json::object o;
    o["kid"] = k.kid;
    o["pem"] = k.key.to_pem();
    ks.push_back(std::move(o));
  }
  s["keys"] = std::move(ks);
  return json::serialize(s);
}

Digest TrustRoot::signing_digest() const { return domain_hash("outpost/root/v1", as_bytes(canonical())); }

std::string TrustRoot::to_json() const {
  json::object doc;
  doc["signed"] = json::parse(canonical());
  json::array sigs;
  for (const auto& s : signatures) {
    json::object o;
    o["kid"] = s.key_id;
    o["sig"] = base64url_encode(s.signature);
    sigs.push_back(std::move(o));
  }
  doc["signatures"] = std::move(sigs);
  return json::serialize(doc) + "\n";
}

Result<TrustRoot> TrustRoot::parse(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return fail(errc::corrupt, "trust file is not a JSON object");
  const json::object& doc = v.as_object();
  OUTPOST_TRY(const json::value* signed_part, member(doc, "signed", json::kind::object, "the document"));
  const json::object& s = signed_part->as_object();
  OUTPOST_TRY(const json::value* type, member(s, "type", json::kind::string, "\"signed\""));
  if (type->as_string() != "outpost-root") return fail(errc::corrupt, "trust file: type is not \"outpost-root\"");
  auto number = [&](const char* key) -> Result<uint64_t> {
    auto it = s.find(key);
    if (it == s.end()) return fail(errc::corrupt, std::string("trust file: missing \"") + key + "\"");
    if (it->value().is_uint64()) return it->value().as_uint64();
    if (it->value().is_int64() && it->value().as_int64() >= 0) return static_cast<uint64_t>(it->value().as_int64());
    return fail(errc::corrupt, std::string("trust file: \"") + key + "\" is not a non-negative integer");
  };
  OUTPOST_TRY(uint64_t version, number("version"));
  OUTPOST_TRY(uint64_t threshold, number("threshold"));
  if (threshold > 1000) return fail(errc::corrupt, "trust file: absurd threshold");
  OUTPOST_TRY(const json::value* keys, member(s, "keys", json::kind::array, "\"signed\""));
  std::vector<EcPublicKey> pubs;
  for (const auto& k : keys->as_array()) {
    if (!k.is_object()) return fail(errc::corrupt, "trust file: a key is not an object");
    OUTPOST_TRY(const json::value* pem, member(k.as_object(), "pem", json::kind::string, "a key"));
    Result<EcPublicKey> pub = EcPublicKey::from_pem(pem->as_string());
    if (!pub) return fail(pub.error().wrap("trust file: key"));
    OUTPOST_TRY(const json::value* kid, member(k.as_object(), "kid", json::kind::string, "a key"));
    if (kid->as_string() != pub->thumbprint()) {
      return fail(errc::corrupt, "trust file: key id " + std::string(kid->as_string()) + " does not match its key");
    }
    pubs.push_back(*pub);
  }
  Result<TrustRoot> root = create(std::move(pubs), static_cast<uint32_t>(threshold), version);
  if (!root) return fail(root.error().wrap("trust file"));
  if (auto it = doc.find("signatures"); it != doc.end()) {
    if (!it->value().is_array()) return fail(errc::corrupt, "trust file: \"signatures\" is not an array");
    for (const auto& sig : it->value().as_array()) {
      if (!sig.is_object()) return fail(errc::corrupt, "trust file: a signature is not an object");
      OUTPOST_TRY(const json::value* kid, member(sig.as_object(), "kid", json::kind::string, "a signature"));
      OUTPOST_TRY(const json::value* b64, member(sig.as_object(), "sig", json::kind::string, "a signature"));
      Result<Bytes> raw = base64url_decode(b64->as_string());
      if (!raw || raw->size() != 64) return fail(errc::corrupt, "trust file: a signature is not 64 bytes of base64url");
      root->signatures.push_back(BundleSignature{std::string(kid->as_string()), std::move(*raw)});
    }
  }
  return root;
}

const RootKey* TrustRoot::find(std::string_view kid) const {
  for (const auto& k : keys) {
    if (k.kid == kid) return &k;
  }
  return nullptr;
}

Result<void> TrustRoot::sign(const EcPrivateKey& key) {
  std::string kid = key.public_key().thumbprint();
  for (const auto& s : signatures) {
    if (s.key_id == kid) return fail(errc::already_exists, "the root already carries a signature by key " + kid);
  }
  OUTPOST_TRY(RawSignature sig, key.sign(signing_digest()));
  signatures.push_back(BundleSignature{kid, sig.concat()});
  return ok();
}

SignatureCount count_signatures(const TrustRoot& root, const Digest& digest,
                                const std::vector<BundleSignature>& signatures) {
  SignatureCount out;
  std::set<std::string> counted;
  for (const auto& s : signatures) {
    const RootKey* k = root.find(s.key_id);
    if (k == nullptr) {
      out.problems.push_back("signature by key " + s.key_id + ", which is not a root key");
      continue;
    }
    if (counted.count(s.key_id)) {
      out.problems.push_back("second signature by key " + s.key_id + " (counted once)");
      continue;
    }
    Result<RawSignature> raw = RawSignature::from_concat(s.signature);
    if (!raw) {
      out.problems.push_back("signature by key " + s.key_id + " is not 64 bytes");
      continue;
    }
    if (!k->key.verify(digest, *raw)) {
      out.problems.push_back("signature by key " + s.key_id + " does not verify");
      continue;
    }
    counted.insert(s.key_id);
    ++out.valid;
  }
  return out;
}

namespace {
Result<void> require_threshold(const TrustRoot& root, const Digest& digest, const std::vector<BundleSignature>& sigs,
                               const std::string& what) {
  SignatureCount c = count_signatures(root, digest, sigs);
  if (c.valid >= root.threshold) return ok();
  std::string detail;
  for (const auto& p : c.problems) detail += "; " + p;
  return fail(errc::verification_failed, what + ": " + std::to_string(c.valid) + " valid signature(s) of the " +
                                             std::to_string(root.threshold) + " required by root v" +
                                             std::to_string(root.version) + detail);
}
}  // namespace

Result<void> verify_bundle_signatures(const SignedBundle& bundle, const TrustRoot& root) {
  return require_threshold(root, bundle_signing_digest(bundle.payload()), bundle.signatures(), "bundle");
}

Result<void> verify_rotation(const TrustRoot& current, const TrustRoot& next) {
  if (next.version != current.version + 1) {
    return fail(errc::verification_failed, "root v" + std::to_string(next.version) + " does not follow root v" +
                                               std::to_string(current.version));
  }
  Digest d = next.signing_digest();
  OUTPOST_TRY_VOID(require_threshold(current, d, next.signatures,
                                     "root v" + std::to_string(next.version) + " by the keys of the old root"));
  return require_threshold(next, d, next.signatures, "root v" + std::to_string(next.version) + " by its own keys");
}

Result<TrustRoot> walk_rotations(const TrustRoot& current, const std::vector<TrustRoot>& chain) {
  TrustRoot at = current;
  for (const auto& next : chain) {
    OUTPOST_TRY_VOID(verify_rotation(at, next));
    at = next;
  }
  return at;
}

}  // namespace outpost::offline_cache
