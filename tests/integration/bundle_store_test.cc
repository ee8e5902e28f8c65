// The node's bundle store against a real swtpm: installation, every refusal, anti-rollback
// through the NV counter, and the offline life measured by the TPM clock.
#include <catch2/catch.hpp>
#include <thread>

#include "bundle_factory.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "outpost/offline_cache/bundle_store.h"
#include "test_support.h"

using namespace outpost;
using namespace outpost::offline_cache;
using outpost::testing::BundleSpec;
using outpost::testing::TempDir;

namespace {

constexpr int64_t kNow = 1795000000;  // 2026-11-18

// Tests share the fixture's TPM; each node gets a rollback counter of its own.
uint32_t next_counter_index() {
  static uint32_t next = 0x01000200;
  return next++;
}

struct Node {
  TempDir dir;
  uint32_t counter_index = next_counter_index();
  std::unique_ptr<attestation::Tpm> tpm;
  attestation::NodeIdentity id;
  boards::BoardProfile board = *boards::load_board("sim");
  EcPrivateKey k1 = *EcPrivateKey::generate();
  EcPrivateKey k2 = *EcPrivateKey::generate();
  TrustRoot root = *TrustRoot::create({k1.public_key(), k2.public_key()}, 2);

  Node() {
    auto t = attestation::Tpm::connect(testing::fixture_tcti());
    REQUIRE(t.has_value());
    tpm = std::move(*t);
    attestation::ProvisionOptions opts{board.name, board.trust_domain,
                                       {board.srk_handle, board.ek_handle, board.ak_handle}};
    auto p = attestation::provision_node(*tpm, dir / "state", opts);
    REQUIRE(p.has_value());
    id = p->identity;
  }
  BundleStore store() {
    return BundleStore(dir / "state", id, counter_index, NodeScope{id.node_id, "sim", ""});
  }
  Bytes bundle(BundleSpec spec) { return testing::sign_bundle(testing::make_bundle(spec), {&k1, &k2}); }
  Result<BundleStore::Installed> install(BundleSpec spec, int64_t now = kNow) {
    return store().install(*tpm, bundle(spec), root, now);
  }
  std::string refusal(BundleSpec spec, int64_t now = kNow) {
    auto r = install(spec, now);
    REQUIRE_FALSE(r.has_value());
    return r.error().message();
  }
  uint64_t installed_version() {
    auto l = store().load(*tpm, root, kNow + 10);
    REQUIRE(l.has_value());
    return l->state.version;
  }
};

}  // namespace

TEST_CASE("a signed bundle installs and every refusal leaves it untouched", "[fixture][bundle]") {
  Node n;
  auto first = n.install({.version = 5});
  REQUIRE(first.has_value());
  CHECK(first->status.in_force);
  CHECK(first->status.version == 5);
  CHECK(n.installed_version() == 5);

  SECTION("below the threshold") {
    auto r = n.store().install(*n.tpm, testing::sign_bundle(testing::make_bundle({.version = 6}), {&n.k1}), n.root, kNow);
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains("1 valid signature(s) of the 2 required"));
  }
  SECTION("an unknown signer") {
    EcPrivateKey stranger = *EcPrivateKey::generate();
    auto r = n.store().install(*n.tpm, testing::sign_bundle(testing::make_bundle({.version = 6}), {&n.k1, &stranger}),
                               n.root, kNow);
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains("not a root key"));
  }
  SECTION("a flipped byte") {
    Bytes b = n.bundle({.version = 6});
    b[b.size() / 3] ^= 0x01;
    CHECK_FALSE(n.store().install(*n.tpm, b, n.root, kNow).has_value());
  }
  SECTION("expired") { CHECK_THAT(n.refusal({.version = 6, .not_after = kNow - 1}), Catch::Contains("expired at")); }
  SECTION("not yet valid") {
    CHECK_THAT(n.refusal({.version = 6, .not_before = kNow + 3600}), Catch::Contains("not valid before"));
  }
  SECTION("another node's scope") {
    CHECK_THAT(n.refusal({.version = 6, .nodes = {"0123456789abcdef"}}), Catch::Contains("does not include node"));
    CHECK_THAT(n.refusal({.version = 6, .boards = {"x86-64"}}), Catch::Contains("does not include board"));
  }
  SECTION("an older or equal version") {
    CHECK_THAT(n.refusal({.version = 4}), Catch::Contains("not newer than the installed v5"));
    CHECK_THAT(n.refusal({.version = 5}), Catch::Contains("not newer than the installed v5"));
  }
  SECTION("the wall clock wound back") {
    auto later = n.install({.version = 6}, kNow + 86400);
    REQUIRE(later.has_value());
    CHECK_THAT(n.refusal({.version = 7}, kNow), Catch::Contains("wall clock is behind"));
    auto status = n.store().load(*n.tpm, n.root, kNow);
    REQUIRE(status.has_value());
    CHECK_FALSE(status->status.in_force);
    CHECK_THAT(status->status.reason, Catch::Contains("wound back"));
    return;
  }
  CHECK(n.installed_version() == 5);
  // A proper newer bundle still installs afterwards, and the previous one is kept.
  auto next = n.install({.version = 6});
  REQUIRE(next.has_value());
  CHECK(next->state.previous_sha256 == first->state.bundle_sha256);
  CHECK(file_exists(n.dir / ("state/bundles/" + first->state.bundle_sha256 + ".opb")));
}

TEST_CASE("a restored older state directory is detected through the TPM counter", "[fixture][bundle]") {
  Node n;
  REQUIRE(n.install({.version = 1}).has_value());
  const auto saved = n.dir / "saved";
  std::filesystem::copy(n.dir / "state", saved, std::filesystem::copy_options::recursive);
  REQUIRE(n.install({.version = 2}).has_value());
  std::filesystem::remove_all(n.dir / "state");
  std::filesystem::copy(saved, n.dir / "state", std::filesystem::copy_options::recursive);
  auto loaded = n.store().load(*n.tpm, n.root, kNow);
  REQUIRE_FALSE(loaded.has_value());
  CHECK(loaded.error().is(errc::tpm_mismatch));
  CHECK_THAT(loaded.error().message(), Catch::Contains("restored from an older copy"));
  // Nor can the old state be used to install anything.
  CHECK_THAT(n.refusal({.version = 3}), Catch::Contains("restored from an older copy"));
}

TEST_CASE("an edited state record or a corrupt bundle file is refused at start", "[fixture][bundle]") {
  Node n;
  auto installed = n.install({.version = 3});
  REQUIRE(installed.has_value());
  SECTION("the state record edited to claim another version") {
    auto path = n.dir / "state/bundles/state.json";
    std::string text = *read_text_file(path);
    text.replace(text.find("\"version\":3"), 11, "\"version\":9");
    REQUIRE(write_file_atomic(path, text).has_value());
    auto r = n.store().load(*n.tpm, n.root, kNow);
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains("not signed by this node's state key"));
  }
  SECTION("the installed bundle file corrupted") {
    auto path = n.dir / ("state/bundles/" + installed->state.bundle_sha256 + ".opb");
    Bytes b = *read_file(path);
    b[b.size() / 2] ^= 0x40;
    REQUIRE(write_file_atomic(path, b).has_value());
    auto r = n.store().load(*n.tpm, n.root, kNow);
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message(), Catch::Contains("does not match the hash"));
  }
  SECTION("the state record deleted: nothing is in force, and the counter blocks a downgrade") {
    std::filesystem::remove(n.dir / "state/bundles/state.json");
    CHECK(n.store().load(*n.tpm, n.root, kNow).error().is(errc::not_found));
    CHECK_THAT(n.refusal({.version = 1}), Catch::Contains("holds no record"));
    // An operator who rebuilt the disk on purpose can accept it.
    BundleStore::InstallOptions accept;
    accept.accept_missing_state = true;
    CHECK(n.store().install(*n.tpm, n.bundle({.version = 1}), n.root, kNow, accept).has_value());
  }
}

TEST_CASE("the offline budget runs on the TPM clock and a hub contact renews it", "[fixture][bundle]") {
  Node n;
  auto installed = n.install({.version = 1, .max_offline = 2});
  REQUIRE(installed.has_value());
  CHECK(installed->status.in_force);
  std::this_thread::sleep_for(std::chrono::milliseconds(2300));
  // The wall clock given is unchanged (as if wound back to the install time): the TPM clock
  // still counts the time.
  auto later = n.store().load(*n.tpm, n.root, kNow);
  REQUIRE(later.has_value());
  CHECK_FALSE(later->status.in_force);
  CHECK_THAT(later->status.reason, Catch::Contains("beyond max_offline 2 s"));
  CHECK(later->status.offline_left == 0);
  REQUIRE(n.store().record_contact(*n.tpm, kNow + 3).has_value());
  auto renewed = n.store().load(*n.tpm, n.root, kNow + 3);
  REQUIRE(renewed.has_value());
  CHECK(renewed->status.in_force);
}

