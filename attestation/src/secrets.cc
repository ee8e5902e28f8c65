#include "outpost/attestation/secrets.h"

#include "outpost/attestation/agent_keys.h"

#include <algorithm>
#include <system_error>

#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"

namespace outpost::attestation {
namespace {

constexpr size_t kMaxBlobBytes = 4 << 10;  // a sealed blob is a few hundred bytes
constexpr std::string_view kSuffix = ".sealed";
constexpr uint8_t kEnvelope[5] = {'O', 'P', 'S', 'E', 1};
constexpr size_t kNonce = 12;

bool is_envelope(ByteView file) {
  return file.size() >= sizeof kEnvelope && std::equal(std::begin(kEnvelope), std::end(kEnvelope), file.begin());
}

}  // namespace

Result<void> SecretStore::validate_name(std::string_view name) { return validate_component_name("secret name", name); }

Result<void> SecretStore::seal(Tpm& tpm, std::string_view name, ByteView secret, bool* replaced) {
  OUTPOST_TRY_VOID(validate_name(name));
  const std::string what = "seal secret \"" + std::string(name) + "\"";
  if (secret.size() > kMaxSecretBytes) {
    return fail(errc::invalid_argument, what + ": " + std::to_string(secret.size()) + " bytes is over the limit of " +
                                            std::to_string(kMaxSecretBytes) + " bytes for a secret");
  }
  Bytes file;
  if (secret.size() <= Tpm::kMaxSealedBytes) {
    Result<KeyBlob> blob = tpm.seal(parent_, secret);
    if (!blob) return fail(blob.error().wrap(what));
    file = blob->serialize();
  } else {
    // The envelope: the TPM seals a fresh data key; the secret is encrypted under it.
    Bytes key(32), nonce(kNonce);
    random_bytes(key);
    random_bytes(nonce);
    Result<KeyBlob> blob = tpm.seal(parent_, key);
    Result<Bytes> sealed = blob ? aes_gcm_seal(key, nonce, as_bytes(name), secret) : Result<Bytes>(fail(blob.error()));
    std::fill(key.begin(), key.end(), 0);
    if (!sealed) return fail(sealed.error().wrap(what));
    const Bytes key_blob = blob->serialize();
    file.assign(std::begin(kEnvelope), std::end(kEnvelope));
    file.push_back(static_cast<uint8_t>(key_blob.size() >> 8));
    file.push_back(static_cast<uint8_t>(key_blob.size()));
    file.insert(file.end(), key_blob.begin(), key_blob.end());
    file.insert(file.end(), nonce.begin(), nonce.end());
    file.insert(file.end(), sealed->begin(), sealed->end());
  }
  const auto path = path_of(name);
  const bool existed = file_exists(path);
  if (auto d = ensure_directory(dir_, 0700); !d) return fail(d.error().wrap(what));
  if (auto w = write_file_atomic(path, file, 0600); !w) return fail(w.error().wrap(what));
  if (replaced != nullptr) *replaced = existed;
  log::info("secret.sealed", {{"name", std::string(name)}, {"replaced", existed ? "true" : "false"}});
  return ok();
}

Result<Bytes> SecretStore::unseal(Tpm& tpm, std::string_view name) const {
  OUTPOST_TRY_VOID(validate_name(name));
  const std::string what = "unseal secret \"" + std::string(name) + "\"";
  const auto path = path_of(name);
  if (!file_exists(path)) return fail(errc::not_found, what + ": no " + path.string());
  Result<Bytes> bytes = read_file(path, kMaxBlobBytes + kMaxSecretBytes);
  if (!bytes) return fail(bytes.error().wrap(what));
  if (!is_envelope(*bytes)) {
    if (bytes->size() > kMaxBlobBytes) return fail(errc::corrupt, what + ": " + path.string() + " is not a sealed blob");
    Result<KeyBlob> blob = KeyBlob::parse(*bytes);
    if (!blob) return fail(blob.error().wrap(what + ": " + path.string() + " is not a sealed blob"));
    Result<Bytes> plain = tpm.unseal(parent_, *blob);
    if (!plain) return fail(plain.error().wrap(what));
    return plain;
  }
  // The envelope: its key from the TPM, then the secret, checked against its tag and name.
  const ByteView file(*bytes);
  const size_t head = sizeof kEnvelope + 2;
  const size_t blob_size = file.size() >= head ? (size_t{file[sizeof kEnvelope]} << 8 | file[sizeof kEnvelope + 1]) : 0;
  if (file.size() < head + blob_size + kNonce + 16 || blob_size == 0) {
    return fail(errc::corrupt, what + ": " + path.string() + " is a truncated envelope");
  }
  Result<KeyBlob> blob = KeyBlob::parse(file.subspan(head, blob_size));
  if (!blob) return fail(blob.error().wrap(what + ": " + path.string() + " holds no sealed key"));
  Result<Bytes> key = tpm.unseal(parent_, *blob);
  if (!key) return fail(key.error().wrap(what));
  Result<Bytes> plain = aes_gcm_open(*key, file.subspan(head + blob_size, kNonce), as_bytes(name), file.subspan(head + blob_size + kNonce));
  std::fill(key->begin(), key->end(), 0);
  if (!plain) return fail(plain.error().wrap(what + ": " + path.string()));
  return plain;
}

Result<std::vector<std::string>> SecretStore::list() const {
  std::vector<std::string> names;
  std::error_code ec;
  if (!std::filesystem::exists(dir_, ec)) return names;
  // The error_code forms throughout: no filesystem_error escapes.
  for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    if (file.size() <= kSuffix.size() || !file.ends_with(kSuffix)) continue;  // temp files, strays
    std::string name = file.substr(0, file.size() - kSuffix.size());
    std::error_code type_ec;
    if (validate_name(name) && it->is_regular_file(type_ec)) names.push_back(std::move(name));
  }
  if (ec) return errno_error("list " + dir_.string(), ec.value());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace outpost::attestation
