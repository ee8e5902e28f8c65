#include "outpost/attestation/secrets.h"

#include "outpost/attestation/agent_keys.h"

#include <algorithm>
#include <system_error>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"

namespace outpost::attestation {
namespace {

constexpr size_t kMaxBlobBytes = 4 << 10;  // a sealed blob is a few hundred bytes
constexpr std::string_view kSuffix = ".sealed";

}  // namespace

Result<void> SecretStore::validate_name(std::string_view name) { return validate_component_name("secret name", name); }

Result<void> SecretStore::seal(Tpm& tpm, std::string_view name, ByteView secret, bool* replaced) {
  OUTPOST_TRY_VOID(validate_name(name));
  const std::string what = "seal secret \"" + std::string(name) + "\"";
  Result<KeyBlob> blob = tpm.seal(parent_, secret);
  if (!blob) return fail(blob.error().wrap(what));
  const auto path = path_of(name);
  const bool existed = file_exists(path);
  if (auto d = ensure_directory(dir_, 0700); !d) return fail(d.error().wrap(what));
  if (auto w = write_file_atomic(path, blob->serialize(), 0600); !w) return fail(w.error().wrap(what));
  if (replaced != nullptr) *replaced = existed;
  log::info("secret.sealed", {{"name", std::string(name)}, {"replaced", existed ? "true" : "false"}});
  return ok();
}

Result<Bytes> SecretStore::unseal(Tpm& tpm, std::string_view name) const {
  OUTPOST_TRY_VOID(validate_name(name));
  const std::string what = "unseal secret \"" + std::string(name) + "\"";
  const auto path = path_of(name);
  if (!file_exists(path)) return fail(errc::not_found, what + ": no " + path.string());
  Result<Bytes> bytes = read_file(path, kMaxBlobBytes);
  if (!bytes) return fail(bytes.error().wrap(what));
  Result<KeyBlob> blob = KeyBlob::parse(*bytes);
  if (!blob) return fail(blob.error().wrap(what + ": " + path.string() + " is not a sealed blob"));
  Result<Bytes> plain = tpm.unseal(parent_, *blob);
  if (!plain) return fail(plain.error().wrap(what));
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
