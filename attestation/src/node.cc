#include "outpost/attestation/node.h"

#include <boost/json.hpp>
#include <charconv>
#include <chrono>
#include <ctime>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/base/time.h"

namespace outpost::attestation {
namespace {

namespace json = boost::json;

Result<std::string> get_string(const json::object& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->value().is_string()) {
    return fail(errc::corrupt, std::string("node.json: missing string \"") + key + "\"");
  }
  return std::string(it->value().as_string());
}

Result<Bytes> get_hex(const json::object& o, const char* key) {
  OUTPOST_TRY(std::string s, get_string(o, key));
  Result<Bytes> b = hex_decode(s);
  if (!b) return fail(errc::corrupt, std::string("node.json: \"") + key + "\" is not hex");
  return b;
}

// "0x81000001" (or decimal) -> handle; anything else is corrupt.
Result<uint32_t> parse_handle(std::string_view s, const char* key) {
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    s.remove_prefix(2);
    base = 16;
  }
  uint32_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) {
    return fail(errc::corrupt, std::string("node.json: \"") + key + "\" holds a bad handle");
  }
  return v;
}

Result<uint32_t> get_handle(const json::object& o, const char* key) {
  OUTPOST_TRY(std::string s, get_string(o, key));
  return parse_handle(s, key);
}

// Finds or creates one persistent primary, refusing a foreign key at the handle.
Result<KeyPublic> ensure_primary(Tpm& tpm, PrimaryKey kind, uint32_t handle, std::vector<std::string>& actions) {
  Result<KeyPublic> existing = tpm.read_persistent(handle);
  if (existing) {
    Result<void> shape = Tpm::check_shape(kind, *existing);
    if (!shape) {
      return fail(shape.error().wrap("handle " + hex32(handle) + " holds a key that is not outpost's " +
                                     std::string(primary_key_name(kind)) +
                                     "; evict it or choose another handle in the board profile"));
    }
    actions.push_back("reused " + std::string(primary_key_name(kind)) + " at " + hex32(handle));
    return existing;
  }
  if (existing.error().is(errc::unsupported)) {
    // read_persistent refuses what it cannot read as an ECC key (an RSA key, a storage key of
    // another scheme): the handle is taken by something that is not outpost's.
    return fail(existing.error().wrap("handle " + hex32(handle) + " holds a key that is not outpost's " +
                                      std::string(primary_key_name(kind)) +
                                      "; evict it or choose another handle in the board profile"));
  }
  if (!existing.error().is(errc::not_found)) return fail(existing.error());
  OUTPOST_TRY(KeyPublic created, tpm.create_persistent(kind, handle));
  actions.push_back("created " + std::string(primary_key_name(kind)) + " at " + hex32(handle));
  return created;
}

Result<void> check_one(Tpm& tpm, PrimaryKey kind, uint32_t handle, const Bytes& recorded) {
  const std::string what = std::string(primary_key_name(kind)) + " at " + hex32(handle);
  Result<KeyPublic> now = tpm.read_persistent(handle);
  if (!now && now.error().is(errc::not_found)) {
    return fail(errc::tpm_mismatch, "the " + what +
                                        " is gone: this TPM was cleared or replaced since the node was provisioned");
  }
  if (!now) return fail(now.error());
  if (now->name != recorded) {
    return fail(errc::tpm_mismatch, "the " + what + " has name " + hex_encode(now->name) +
                                        " but the state recorded " + hex_encode(recorded) +
                                        ": this TPM was cleared or swapped since the node was provisioned");
  }
  return ok();
}

}  // namespace

std::string NodeIdentity::to_json() const {
  json::object o;
  o["version"] = 1;
  o["node_id"] = node_id;
  o["trust_domain"] = trust_domain;
  o["spiffe_id"] = spiffe_id;
  o["board"] = board;
  o["srk_handle"] = hex32(handles.srk);
  o["ek_handle"] = hex32(handles.ek);
  o["ak_handle"] = hex32(handles.ak);
  o["srk_name"] = hex_encode(srk_name);
  o["ek_name"] = hex_encode(ek_name);
  o["ak_name"] = hex_encode(ak_name);
  o["ek_public_pem"] = ek_public.to_pem();
  o["ak_public_pem"] = ak_public.to_pem();
  o["ak_public_area"] = hex_encode(ak_public_area);
  json::array certs;
  for (uint32_t i : ek_certificate_indices) certs.emplace_back(hex32(i));
  o["ek_certificates"] = std::move(certs);
  o["tpm_manufacturer"] = tpm_manufacturer;
  o["tpm_vendor"] = tpm_vendor;
  o["tpm_firmware"] = tpm_firmware;
  o["provisioned_at"] = provisioned_at;
  return json::serialize(o) + "\n";
}

Result<NodeIdentity> NodeIdentity::from_json(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return fail(errc::corrupt, "node.json is not a JSON object");
  const json::object& o = v.as_object();
  NodeIdentity id;
  OUTPOST_TRY(id.node_id, get_string(o, "node_id"));
  OUTPOST_TRY(id.trust_domain, get_string(o, "trust_domain"));
  OUTPOST_TRY(id.spiffe_id, get_string(o, "spiffe_id"));
  OUTPOST_TRY(id.board, get_string(o, "board"));
  OUTPOST_TRY(id.handles.srk, get_handle(o, "srk_handle"));
  OUTPOST_TRY(id.handles.ek, get_handle(o, "ek_handle"));
  OUTPOST_TRY(id.handles.ak, get_handle(o, "ak_handle"));
  OUTPOST_TRY(id.srk_name, get_hex(o, "srk_name"));
  OUTPOST_TRY(id.ek_name, get_hex(o, "ek_name"));
  OUTPOST_TRY(id.ak_name, get_hex(o, "ak_name"));
  OUTPOST_TRY(std::string ek_pem, get_string(o, "ek_public_pem"));
  OUTPOST_TRY(std::string ak_pem, get_string(o, "ak_public_pem"));
  OUTPOST_TRY(id.ek_public, EcPublicKey::from_pem(ek_pem));
  OUTPOST_TRY(id.ak_public, EcPublicKey::from_pem(ak_pem));
  OUTPOST_TRY(id.ak_public_area, get_hex(o, "ak_public_area"));
  if (auto it = o.find("ek_certificates"); it != o.end() && it->value().is_array()) {
    for (const auto& c : it->value().as_array()) {
      if (!c.is_string()) return fail(errc::corrupt, "node.json: ek_certificates holds a non-string");
      OUTPOST_TRY(uint32_t index, parse_handle(c.as_string(), "ek_certificates"));
      id.ek_certificate_indices.push_back(index);
    }
  }
  OUTPOST_TRY(id.tpm_manufacturer, get_string(o, "tpm_manufacturer"));
  OUTPOST_TRY(id.tpm_vendor, get_string(o, "tpm_vendor"));
  OUTPOST_TRY(id.tpm_firmware, get_string(o, "tpm_firmware"));
  OUTPOST_TRY(id.provisioned_at, get_string(o, "provisioned_at"));
  return id;
}

Result<NodeIdentity> load_identity(const std::filesystem::path& state_dir) {
  const auto path = state_dir / "node.json";
  if (!file_exists(path)) {
    return fail(errc::not_found, "no node identity in " + state_dir.string() + " (run `outpost node init` first)");
  }
  OUTPOST_TRY(std::string text, read_text_file(path, 1 << 20));
  Result<NodeIdentity> id = NodeIdentity::from_json(text);
  if (!id) return fail(id.error().wrap(path.string()));
  return id;
}

Result<void> check_tpm_matches(Tpm& tpm, const NodeIdentity& id) {
  OUTPOST_TRY_VOID(check_one(tpm, PrimaryKey::srk, id.handles.srk, id.srk_name));
  OUTPOST_TRY_VOID(check_one(tpm, PrimaryKey::ek, id.handles.ek, id.ek_name));
  return check_one(tpm, PrimaryKey::ak, id.handles.ak, id.ak_name);
}

Result<ProvisionResult> provision_node(Tpm& tpm, const std::filesystem::path& state_dir, const ProvisionOptions& opts) {
  ProvisionResult result;
  if (file_exists(state_dir / "node.json")) {
    OUTPOST_TRY(NodeIdentity id, load_identity(state_dir));
    if (id.board != opts.board) {
      return fail(errc::invalid_argument, "the state in " + state_dir.string() + " was provisioned for board \"" +
                                              id.board + "\", not \"" + opts.board + "\"");
    }
    if (id.trust_domain != opts.trust_domain) {
      return fail(errc::invalid_argument, "the state in " + state_dir.string() + " belongs to trust domain \"" +
                                              id.trust_domain + "\", not \"" + opts.trust_domain + "\"");
    }
    OUTPOST_TRY_VOID(check_tpm_matches(tpm, id));
    result.identity = std::move(id);
    result.actions.push_back("already provisioned; TPM matches the recorded SRK, EK and AK");
    return result;
  }

  NodeIdentity id;
  id.board = opts.board;
  id.trust_domain = opts.trust_domain;
  id.handles = opts.handles;
  OUTPOST_TRY(KeyPublic srk, ensure_primary(tpm, PrimaryKey::srk, opts.handles.srk, result.actions));
  OUTPOST_TRY(KeyPublic ek, ensure_primary(tpm, PrimaryKey::ek, opts.handles.ek, result.actions));
  OUTPOST_TRY(KeyPublic ak, ensure_primary(tpm, PrimaryKey::ak, opts.handles.ak, result.actions));
  OUTPOST_TRY(std::vector<EkCertificate> certs, tpm.read_ek_certificates());
  OUTPOST_TRY(TpmInfo info, tpm.info());

  id.srk_name = srk.name;
  id.ek_name = ek.name;
  id.ak_name = ak.name;
  id.ek_public = ek.key;
  id.ak_public = ak.key;
  id.ak_public_area = ak.public_area;
  Digest ek_hash = sha256(ek.key.to_der());
  id.node_id = hex_encode(ByteView(ek_hash.data(), 16));
  id.spiffe_id = "spiffe://" + id.trust_domain + "/node/" + id.node_id;
  id.tpm_manufacturer = info.manufacturer;
  id.tpm_vendor = info.vendor;
  id.tpm_firmware = info.firmware;
  id.provisioned_at = format_rfc3339_utc(unix_now());

  OUTPOST_TRY_VOID(ensure_directory(state_dir, 0700));
  for (const auto& c : certs) {
    OUTPOST_TRY_VOID(write_file_atomic(state_dir / ("ek-cert-" + hex32(c.nv_index) + ".der"), c.der));
    id.ek_certificate_indices.push_back(c.nv_index);
    result.actions.push_back("read EK certificate from NV " + hex32(c.nv_index));
  }
  OUTPOST_TRY_VOID(write_file_atomic(state_dir / "ek.pem", id.ek_public.to_pem()));
  OUTPOST_TRY_VOID(write_file_atomic(state_dir / "ak.pem", id.ak_public.to_pem()));
  OUTPOST_TRY_VOID(write_file_atomic(state_dir / "ak.pub", id.ak_public_area));
  OUTPOST_TRY_VOID(write_file_atomic(state_dir / "node.json", id.to_json(), 0600));
  log::info("node.provisioned", {{"node_id", id.node_id}, {"spiffe_id", id.spiffe_id}});
  result.identity = std::move(id);
  result.changed = true;
  return result;
}

}  // namespace outpost::attestation
