#include "outpost/offline_cache/bundle_store.h"

#include <boost/json.hpp>
#include <ctime>

#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/base/time.h"

namespace outpost::offline_cache {
namespace {

namespace json = boost::json;
using attestation::ClockInfo;
using attestation::KeyBlob;
using attestation::Tpm;

template <class Vec>
bool admits(const Vec* list, const std::string& value) {
  if (list == nullptr || list->size() == 0) return true;
  for (const auto* s : *list) {
    if (s->str() == value) return true;
  }
  return false;
}

Digest state_digest(const std::string& canonical) {
  return domain_hash("outpost/bundle-state/v1", as_bytes(canonical));
}

Result<int64_t> get_int(const json::object& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end()) return fail(errc::corrupt, std::string("bundle state lacks \"") + key + "\"");
  if (it->value().is_int64()) return it->value().as_int64();
  if (it->value().is_uint64() && it->value().as_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(it->value().as_uint64());
  }
  return fail(errc::corrupt, std::string("bundle state: \"") + key + "\" is not an integer");
}

Result<std::string> get_str(const json::object& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->value().is_string()) {
    return fail(errc::corrupt, std::string("bundle state lacks string \"") + key + "\"");
  }
  return std::string(it->value().as_string());
}

Result<BundleState> parse_state(const json::object& o) {
  BundleState s;
  OUTPOST_TRY(int64_t version, get_int(o, "version"));
  OUTPOST_TRY(s.bundle_sha256, get_str(o, "bundle_sha256"));
  OUTPOST_TRY(s.previous_sha256, get_str(o, "previous_sha256"));
  OUTPOST_TRY(int64_t counter, get_int(o, "counter"));
  OUTPOST_TRY(s.installed_at, get_int(o, "installed_at"));
  OUTPOST_TRY(s.wall_high_water, get_int(o, "wall_high_water"));
  OUTPOST_TRY(int64_t clock, get_int(o, "contact_clock"));
  OUTPOST_TRY(int64_t reset, get_int(o, "contact_reset_count"));
  OUTPOST_TRY(int64_t restart, get_int(o, "contact_restart_count"));
  OUTPOST_TRY(s.contact_wall, get_int(o, "contact_wall"));
  OUTPOST_TRY(int64_t root_version, get_int(o, "root_version"));
  if (version < 0 || counter < 0 || clock < 0 || reset < 0 || restart < 0 || root_version < 0 ||
      reset > UINT32_MAX || restart > UINT32_MAX) {
    return fail(errc::corrupt, "bundle state holds a negative or oversized number");
  }
  s.version = static_cast<uint64_t>(version);
  s.counter = static_cast<uint64_t>(counter);
  s.contact_clock = ClockInfo{static_cast<uint64_t>(clock), static_cast<uint32_t>(reset),
                              static_cast<uint32_t>(restart), true};
  s.root_version = static_cast<uint64_t>(root_version);
  return s;
}

bool is_hex_digest(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

Result<std::string> read_node_fleet(const std::filesystem::path& state_dir) {
  const auto path = state_dir / "fleet";
  if (!file_exists(path)) return std::string();
  OUTPOST_TRY(std::string f, read_text_file(path, 256));
  while (!f.empty() && (f.back() == '\n' || f.back() == ' ')) f.pop_back();
  return f;
}

Result<void> write_node_fleet(const std::filesystem::path& state_dir, const std::string& fleet) {
  return write_file_atomic(state_dir / "fleet", fleet + "\n", 0644);
}

Result<void> check_scope(const fb::Bundle& b, const NodeScope& node, bool with_fleet) {
  const fb::Scope* scope = b.scope();
  if (scope == nullptr) return ok();
  if (!admits(scope->nodes(), node.node_id)) {
    return fail(errc::verification_failed, "the bundle's scope does not include node " + node.node_id);
  }
  if (!admits(scope->boards(), node.board)) {
    return fail(errc::verification_failed, "the bundle's scope does not include board " + node.board);
  }
  if (with_fleet && !admits(scope->fleets(), node.fleet)) {
    return fail(errc::verification_failed, "the bundle's scope does not include fleet \"" + node.fleet + "\"");
  }
  return ok();
}

std::string BundleState::canonical() const {
  json::object o;
  o["version"] = version;
  o["bundle_sha256"] = bundle_sha256;
  o["previous_sha256"] = previous_sha256;
  o["counter"] = counter;
  o["installed_at"] = installed_at;
  o["wall_high_water"] = wall_high_water;
  o["contact_clock"] = contact_clock.clock;
  o["contact_reset_count"] = contact_clock.reset_count;
  o["contact_restart_count"] = contact_clock.restart_count;
  o["contact_wall"] = contact_wall;
  o["root_version"] = root_version;
  return json::serialize(o);
}

BundleStatus evaluate_life(const fb::Bundle& b, const BundleState& state, int64_t wall_now, const ClockInfo& tpm_now) {
  BundleStatus st;
  st.version = b.version();
  st.safe_set = b.on_expiry() == fb::OnExpiry::SafeSet;
  st.not_before = b.not_before();
  st.not_after = b.not_after();
  st.installed_at = state.installed_at;
  st.max_offline = b.max_offline();
  st.last_contact = state.contact_wall;
  st.life_left = b.not_after() - wall_now;
  const bool clock_ok = attestation::check_clock_forward(state.contact_clock, tpm_now).has_value() &&
                        tpm_now.clock >= state.contact_clock.clock;
  const uint64_t offline_ms = clock_ok ? tpm_now.clock - state.contact_clock.clock : UINT64_MAX;
  const uint64_t budget_ms = b.max_offline() > UINT64_MAX / 1000 ? UINT64_MAX : b.max_offline() * 1000;
  st.offline_left = !clock_ok || offline_ms >= budget_ms ? 0 : static_cast<int64_t>((budget_ms - offline_ms) / 1000);

  if (wall_now < b.not_before()) {
    st.reason = "not valid before " + format_rfc3339_utc(b.not_before());
  } else if (wall_now > b.not_after()) {
    st.reason = "expired at " + format_rfc3339_utc(b.not_after());
  } else if (wall_now + kWallClockSlack < state.wall_high_water) {
    st.reason = "the wall clock (" + format_rfc3339_utc(wall_now) + ") is behind the latest time this node has seen (" +
                format_rfc3339_utc(state.wall_high_water) + "): wound back?";
  } else if (!clock_ok) {
    st.reason = "the TPM clock is behind the last hub contact (a cleared TPM or lost time): the offline budget "
                "cannot be measured until the hub is reached";
  } else if (offline_ms >= budget_ms) {
    st.reason = "offline for " + std::to_string(offline_ms / 1000) + " s of TPM clock, beyond max_offline " +
                std::to_string(b.max_offline()) + " s";
  }
  st.in_force = st.reason.empty();
  return st;
}

BundleStore::BundleStore(std::filesystem::path state_dir, const attestation::NodeIdentity& node,
                         uint32_t counter_index, NodeScope scope)
    : dir_(std::move(state_dir) / "bundles"), node_(node), counter_index_(counter_index), scope_(std::move(scope)) {}

Result<KeyBlob> BundleStore::state_key(Tpm& tpm, bool create) {
  const auto path = dir_ / "state-key.blob";
  if (file_exists(path)) {
    OUTPOST_TRY(Bytes b, read_file(path, 64 << 10));
    return KeyBlob::parse(b);
  }
  if (!create) return fail(errc::corrupt, path.string() + " is missing: the bundle state cannot be checked");
  OUTPOST_TRY(KeyBlob blob, tpm.create_signing_key(node_.handles.srk));
  OUTPOST_TRY_VOID(ensure_directory(dir_, 0700));
  OUTPOST_TRY_VOID(write_file_atomic(path, blob.serialize(), 0600));
  return blob;
}

Result<void> BundleStore::write_state(Tpm& tpm, const BundleState& state) {
  OUTPOST_TRY(KeyBlob blob, state_key(tpm, true));
  std::string canonical = state.canonical();
  RawSignature sig;
  {
    OUTPOST_TRY(Tpm::LoadedKey key, tpm.load(node_.handles.srk, blob));
    OUTPOST_TRY(sig, tpm.sign(key, state_digest(canonical)));
  }
  json::object doc;
  doc["state"] = json::parse(canonical);
  doc["signature"] = base64url_encode(sig.concat());
  return write_file_atomic(dir_ / "state.json", json::serialize(doc) + "\n", 0600);
}

Result<std::optional<BundleState>> BundleStore::read_state(Tpm& tpm) {
  const auto path = dir_ / "state.json";
  if (!file_exists(path)) return std::optional<BundleState>();
  OUTPOST_TRY(std::string text, read_text_file(path, 1 << 20));
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object() || !v.as_object().contains("state") || !v.as_object().at("state").is_object()) {
    return fail(errc::corrupt, path.string() + " is not a bundle state record");
  }
  OUTPOST_TRY(BundleState state, parse_state(v.as_object().at("state").as_object()));
  if (!is_hex_digest(state.bundle_sha256)) return fail(errc::corrupt, path.string() + ": bad bundle hash");
  OUTPOST_TRY(std::string sig_b64, get_str(v.as_object(), "signature"));
  Result<Bytes> sig = base64url_decode(sig_b64);
  Result<RawSignature> raw = sig ? RawSignature::from_concat(*sig) : fail(sig.error());
  if (!raw) return fail(errc::corrupt, path.string() + ": bad signature encoding");
  OUTPOST_TRY(KeyBlob blob, state_key(tpm, false));
  OUTPOST_TRY(EcPublicKey key, attestation::key_of_public(blob.public_area));
  if (!key.verify(state_digest(state.canonical()), *raw)) {
    return fail(errc::verification_failed, path.string() + " is not signed by this node's state key: it was edited");
  }
  Result<uint64_t> tpm_counter = tpm.read_counter(counter_index_);
  if (!tpm_counter) return fail(tpm_counter.error().wrap("the TPM rollback counter"));
  if (state.counter == *tpm_counter + 1) {
    // An install lost power between committing the record and incrementing: finish it.
    OUTPOST_TRY(uint64_t now, tpm.increment_counter(counter_index_));
    if (now != state.counter) return fail(errc::tpm_mismatch, "the TPM rollback counter moved underneath the store");
    log::warn("bundle.counter_rolled_forward", {{"counter", std::to_string(now)}});
  } else if (state.counter != *tpm_counter) {
    return fail(errc::tpm_mismatch,
                "the bundle state records rollback counter " + std::to_string(state.counter) + " but the TPM's is " +
                    std::to_string(*tpm_counter) + ": the state directory was restored from an older copy or belongs "
                    "to another TPM");
  }
  return std::optional<BundleState>(std::move(state));
}

Result<BundleStore::Installed> BundleStore::install(Tpm& tpm, Bytes bytes, const TrustRoot& root, int64_t wall_now,
                                                   InstallOptions options) {
  OUTPOST_TRY(SignedBundle bundle, SignedBundle::parse(std::move(bytes)));
  OUTPOST_TRY_VOID(verify_bundle_signatures(bundle, root));
  OUTPOST_TRY_VOID(check_scope(bundle.bundle(), scope_));
  const fb::Bundle& b = bundle.bundle();
  if (wall_now < b.not_before()) {
    return fail(errc::verification_failed, "bundle v" + std::to_string(b.version()) + " is not valid before " +
                                               format_rfc3339_utc(b.not_before()));
  }
  if (wall_now > b.not_after()) {
    return fail(errc::verification_failed, "bundle v" + std::to_string(b.version()) + " expired at " + format_rfc3339_utc(b.not_after()));
  }
  const bool counter_existed = tpm.read_counter(counter_index_).has_value();
  OUTPOST_TRY(uint64_t counter, tpm.ensure_counter(counter_index_));
  OUTPOST_TRY(std::optional<BundleState> current, read_state(tpm));
  if (!current && counter_existed && !options.accept_missing_state) {
    return fail(errc::tpm_mismatch,
                "the TPM's rollback counter shows bundles were installed on this node before, but " + dir_.string() +
                    " holds no record: the state was deleted or restored from before the first install (if the "
                    "node's disk was rebuilt on purpose: bundle install --accept-missing-state)");
  }
  if (current) {
    counter = current->counter;
    if (b.version() <= current->version) {
      return fail(errc::verification_failed, "bundle v" + std::to_string(b.version()) +
                                                 " is not newer than the installed v" + std::to_string(current->version));
    }
    if (wall_now + kWallClockSlack < current->wall_high_water) {
      return fail(errc::verification_failed, "the wall clock is behind the latest time this node has seen (" +
                                                 format_rfc3339_utc(current->wall_high_water) + "): refusing to install");
    }
  }
  const std::string sha = hex_encode(sha256(bundle.bytes()));
  OUTPOST_TRY_VOID(ensure_directory(dir_, 0700));
  OUTPOST_TRY_VOID(write_file_atomic(dir_ / (sha + ".opb"), bundle.bytes(), 0644));
  OUTPOST_TRY(attestation::TimeInfo t, tpm.read_clock());

  BundleState next;
  next.version = b.version();
  next.bundle_sha256 = sha;
  next.previous_sha256 = current ? current->bundle_sha256 : std::string();
  next.counter = counter + 1;
  next.installed_at = wall_now;
  next.wall_high_water = std::max(wall_now, current ? current->wall_high_water : wall_now);
  next.contact_clock = t.clock;
  next.contact_wall = wall_now;
  next.root_version = root.version;
  // Commit the record first, then move the counter to it (read_state rolls forward a lost step).
  OUTPOST_TRY_VOID(write_state(tpm, next));
  OUTPOST_TRY(uint64_t moved, tpm.increment_counter(counter_index_));
  if (moved != next.counter) {
    return fail(errc::tpm_mismatch, "the TPM rollback counter is " + std::to_string(moved) + ", expected " +
                                        std::to_string(next.counter));
  }
  // Keep the installed bundle and the one before it; drop older ones.
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".opb" && name != sha + ".opb" && name != next.previous_sha256 + ".opb") {
      std::error_code ec;
      std::filesystem::remove(e.path(), ec);
    }
  }
  log::info("bundle.installed", {{"version", std::to_string(next.version)}, {"sha256", sha}});
  BundleStatus status = evaluate_life(b, next, wall_now, t.clock);
  return Installed{std::move(bundle), std::move(next), status};
}

Result<BundleStore::Installed> BundleStore::load(Tpm& tpm, const TrustRoot& root, int64_t wall_now) {
  OUTPOST_TRY(std::optional<BundleState> state, read_state(tpm));
  if (!state) return fail(errc::not_found, "no bundle is installed (outpost bundle install)");
  const auto path = dir_ / (state->bundle_sha256 + ".opb");
  OUTPOST_TRY(Bytes bytes, read_file(path, kMaxBundleBytes));
  if (hex_encode(sha256(bytes)) != state->bundle_sha256) {
    return fail(errc::corrupt, path.string() + " does not match the hash its state records: corrupt or replaced");
  }
  OUTPOST_TRY(SignedBundle bundle, SignedBundle::parse(std::move(bytes)));
  if (bundle.version() != state->version) return fail(errc::corrupt, "installed bundle version differs from its state");
  OUTPOST_TRY_VOID(verify_bundle_signatures(bundle, root));
  OUTPOST_TRY_VOID(check_scope(bundle.bundle(), scope_, /*with_fleet=*/false));
  OUTPOST_TRY(attestation::TimeInfo t, tpm.read_clock());
  BundleStatus status = evaluate_life(bundle.bundle(), *state, wall_now, t.clock);
  if (wall_now > state->wall_high_water + 60) {
    state->wall_high_water = wall_now;
    OUTPOST_TRY_VOID(write_state(tpm, *state));
  }
  return Installed{std::move(bundle), std::move(*state), status};
}

Result<void> BundleStore::record_contact(Tpm& tpm, int64_t wall_now) {
  OUTPOST_TRY(std::optional<BundleState> state, read_state(tpm));
  if (!state) return fail(errc::not_found, "no bundle is installed");
  OUTPOST_TRY(attestation::TimeInfo t, tpm.read_clock());
  state->contact_clock = t.clock;
  state->contact_wall = wall_now;
  state->wall_high_water = std::max(state->wall_high_water, wall_now);
  return write_state(tpm, *state);
}

}  // namespace outpost::offline_cache
