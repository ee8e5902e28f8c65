#include "outpost/attestation/agent_keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>

#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"

namespace outpost::attestation {
namespace {

namespace json = boost::json;
constexpr size_t kMaxSmallFile = 64 << 10;

}  // namespace

std::string AgentKey::to_json() const {
  json::object o;
  o["name"] = name;
  o["spiffe_id"] = spiffe_id;
  o["measurement"] = hex_encode(measurement);
  o["key_name"] = hex_encode(key_name);
  o["public_key_pem"] = public_key.to_pem();
  o["public_key_jwk"] = json::parse(public_key.to_jwk(public_key.thumbprint()));
  o["certify_attest"] = hex_encode(certification.attest);
  o["certify_signature"] = hex_encode(certification.signature);
  return json::serialize(o) + "\n";
}

Result<Digest> measure_file(const std::filesystem::path& path, uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error("open " + path.string(), errno);
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(errc::invalid_argument, path.string() + " is not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return fail(errc::invalid_argument, path.string() + " is larger than the measurement cap of " +
                                            std::to_string(max_bytes) + " bytes");
  }
  Sha256 h;
  uint8_t buf[1 << 16];
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return errno_error("read " + path.string(), err);
    }
    if (n == 0) break;
    total += static_cast<uint64_t>(n);
    if (total > max_bytes) {
      ::close(fd);
      return fail(errc::invalid_argument, path.string() + " grew past the measurement cap");
    }
    h.update(ByteView(buf, static_cast<size_t>(n)));
  }
  ::close(fd);
  return h.finish();
}

Result<void> validate_component_name(std::string_view what, std::string_view name) {
  auto ok_char = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  };
  bool good = !name.empty() && name.size() <= 63 && ok_char(name[0]) && name[0] != '.' && name[0] != '_' &&
              name[0] != '-';
  for (char c : name) good = good && ok_char(c);
  if (!good) {
    return fail(errc::invalid_argument, std::string(what) + " \"" + std::string(name) +
                                            "\" must be 1-63 characters of a-z 0-9 . _ -, starting with a letter or digit");
  }
  return ok();
}

Result<void> AgentKeyStore::validate_name(std::string_view name) { return validate_component_name("agent name", name); }

Result<AgentKey> AgentKeyStore::read(std::string_view name) const {
  OUTPOST_TRY_VOID(validate_name(name));
  const auto dir = dir_ / std::string(name);
  OUTPOST_TRY(std::string text, read_text_file(dir / "agent.json", kMaxSmallFile));
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return fail(errc::corrupt, (dir / "agent.json").string() + " is not a JSON object");
  const auto& o = v.as_object();
  AgentKey key;
  key.name = std::string(name);
  key.spiffe_id = node_.agent_spiffe_id(name);
  auto m = o.find("measurement");
  if (m == o.end() || !m->value().is_string()) return fail(errc::corrupt, "agent.json lacks a measurement");
  OUTPOST_TRY(Bytes measurement, hex_decode(m->value().as_string()));
  if (measurement.size() != key.measurement.size()) return fail(errc::corrupt, "agent.json measurement is not SHA-256");
  std::copy(measurement.begin(), measurement.end(), key.measurement.begin());
  OUTPOST_TRY(Bytes blob, read_file(dir / "key.blob", kMaxSmallFile));
  OUTPOST_TRY(key.blob, KeyBlob::parse(blob));
  OUTPOST_TRY(key.public_key, key_of_public(key.blob.public_area));
  OUTPOST_TRY(key.key_name, name_of_public(key.blob.public_area));
  OUTPOST_TRY(key.certification.attest, read_file(dir / "certify.attest", kMaxSmallFile));
  OUTPOST_TRY(key.certification.signature, read_file(dir / "certify.sig", kMaxSmallFile));
  return key;
}

Result<Tpm::LoadedKey> AgentKeyStore::load(Tpm& tpm, const AgentKey& key) const {
  Result<Tpm::LoadedKey> loaded = tpm.load(node_.handles.srk, key.blob);
  if (!loaded) {
    return fail(loaded.error().wrap("cannot load the key of agent \"" + key.name +
                                    "\" (a blob made under another SRK does not load)"));
  }
  return loaded;
}

Result<AgentKey> AgentKeyStore::ensure(Tpm& tpm, std::string_view name, const Digest& measurement, bool* created) {
  OUTPOST_TRY_VOID(validate_name(name));
  if (created != nullptr) *created = false;
  const auto dir = dir_ / std::string(name);
  Result<AgentKey> existing = read(name);
  if (existing && existing->measurement == measurement) return existing;

  AgentKey key;
  key.name = std::string(name);
  key.spiffe_id = node_.agent_spiffe_id(name);
  key.measurement = measurement;
  if (file_exists(dir / "key.blob")) {
    // The key outlives measurement changes (an agent upgrade): only its certification changes.
    OUTPOST_TRY(Bytes blob, read_file(dir / "key.blob", kMaxSmallFile));
    OUTPOST_TRY(key.blob, KeyBlob::parse(blob));
  } else {
    OUTPOST_TRY(key.blob, tpm.create_signing_key(node_.handles.srk));
    OUTPOST_TRY_VOID(ensure_directory(dir, 0700));
    OUTPOST_TRY_VOID(write_file_atomic(dir / "key.blob", key.blob.serialize(), 0600));
    if (created != nullptr) *created = true;
    log::info("agent.key_created", {{"agent", key.name}});
  }
  OUTPOST_TRY(key.public_key, key_of_public(key.blob.public_area));
  OUTPOST_TRY(key.key_name, name_of_public(key.blob.public_area));
  {
    OUTPOST_TRY(Tpm::LoadedKey loaded, load(tpm, key));
    Digest qualifying = agent_qualifying_data(name, measurement);
    OUTPOST_TRY(key.certification, tpm.certify(loaded, node_.handles.ak, qualifying));
  }  // the loaded key is flushed here
  OUTPOST_TRY_VOID(write_file_atomic(dir / "key.pem", key.public_key.to_pem()));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "certify.attest", key.certification.attest));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "certify.sig", key.certification.signature));
  json::object rec;
  rec["name"] = key.name;
  rec["spiffe_id"] = key.spiffe_id;
  rec["measurement"] = hex_encode(measurement);
  rec["key_name"] = hex_encode(key.key_name);
  rec["public_key_jwk"] = json::parse(key.public_key.to_jwk(key.public_key.thumbprint()));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "agent.json", json::serialize(rec) + "\n", 0600));
  log::info("agent.key_certified", {{"agent", key.name}, {"measurement", hex_encode(measurement)}});
  return key;
}

Result<void> verify_agent_key(const AgentKey& key, const EcPublicKey& ak) {
  Digest qualifying = agent_qualifying_data(key.name, key.measurement);
  OUTPOST_TRY_VOID(verify_certification(key.certification, ak, key.blob.public_area, qualifying));
  return ok();
}

}  // namespace outpost::attestation
