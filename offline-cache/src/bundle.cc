#include "outpost/offline_cache/bundle.h"

#include "outpost/base/errors.h"

namespace outpost::offline_cache {

Digest bundle_signing_digest(ByteView payload) { return domain_hash("outpost/bundle/v1", payload); }

Result<SignedBundle> SignedBundle::parse(Bytes bytes) {
  if (bytes.size() > kMaxBundleBytes) {
    return fail(errc::invalid_argument, "bundle is larger than " + std::to_string(kMaxBundleBytes) + " bytes");
  }
  if (bytes.size() < 8) return fail(errc::corrupt, "bundle is truncated (" + std::to_string(bytes.size()) + " bytes)");
  flatbuffers::Verifier outer(bytes.data(), bytes.size(), 64, 10'000'000);
  if (!fb::VerifySignedBundleBuffer(outer)) {
    return fail(errc::corrupt, "not a signed outpost bundle (FlatBuffers verification failed)");
  }
  SignedBundle b;
  b.bytes_ = std::move(bytes);
  const fb::SignedBundle* sb = flatbuffers::GetRoot<fb::SignedBundle>(b.bytes_.data());
  const auto* payload = sb->payload();
  b.payload_ = ByteView(payload->data(), payload->size());
  flatbuffers::Verifier inner(payload->data(), payload->size(), 64, 10'000'000);
  if (!inner.VerifyBuffer<fb::Bundle>(nullptr)) {
    return fail(errc::corrupt, "bundle payload is malformed (FlatBuffers verification failed)");
  }
  b.bundle_ = flatbuffers::GetRoot<fb::Bundle>(payload->data());
  if (b.bundle_->min_reader() > kBundleReaderVersion) {
    return fail(errc::unsupported, "bundle v" + std::to_string(b.bundle_->version()) + " needs bundle reader " +
                                       std::to_string(b.bundle_->min_reader()) + "; this outpost reads up to " +
                                       std::to_string(kBundleReaderVersion) + ": upgrade outpost");
  }
  if (sb->signatures() != nullptr) {
    for (const fb::Signature* s : *sb->signatures()) {
      if (s->signature()->size() != 64) {
        return fail(errc::corrupt, "signature by key " + s->key_id()->str() + " is not 64 bytes (r || s)");
      }
      b.signatures_.push_back(BundleSignature{s->key_id()->str(), Bytes(s->signature()->begin(), s->signature()->end())});
    }
  }
  return b;
}

Bytes SignedBundle::assemble(ByteView payload, const std::vector<BundleSignature>& signatures) {
  flatbuffers::FlatBufferBuilder fbb(payload.size() + 256 * (signatures.size() + 1));
  // Align the nested payload as a FlatBuffer of its own (the verifier checks alignment).
  fbb.ForceVectorAlignment(payload.size(), sizeof(uint8_t), 16);
  auto p = fbb.CreateVector(payload.data(), payload.size());
  std::vector<flatbuffers::Offset<fb::Signature>> sigs;
  for (const auto& s : signatures) {
    sigs.push_back(fb::CreateSignature(fbb, fbb.CreateString(s.key_id), fbb.CreateVector(s.signature)));
  }
  auto root = fb::CreateSignedBundle(fbb, p, fbb.CreateVector(sigs));
  fbb.Finish(root, fb::SignedBundleIdentifier());
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

Result<Bytes> SignedBundle::add_signature(const EcPrivateKey& key) const {
  std::string kid = key.public_key().thumbprint();
  for (const auto& s : signatures_) {
    if (s.key_id == kid) return fail(errc::already_exists, "the bundle already carries a signature by key " + kid);
  }
  OUTPOST_TRY(RawSignature sig, key.sign(bundle_signing_digest(payload_)));
  std::vector<BundleSignature> all = signatures_;
  all.push_back(BundleSignature{kid, sig.concat()});
  return assemble(payload_, all);
}

}  // namespace outpost::offline_cache
