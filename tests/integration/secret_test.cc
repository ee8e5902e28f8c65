// TPM-sealed tool secrets (Tpm::seal/unseal, SecretStore, `outpost secret`) against swtpm.
// [fixture] tests use the CTest fixture's swtpm; the cross-TPM case starts a second one.
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/secrets.h"
#include "outpost/attestation/tpm.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "test_support.h"
#include "tpm_node.h"

using namespace outpost;
using namespace outpost::attestation;
using outpost::testing::connect_to;
using outpost::testing::provision_on;
using outpost::testing::TempDir;

namespace {

size_t transient_count(Tpm& tpm) {
  auto t = tpm.handles(HandleType::transient);
  REQUIRE(t.has_value());
  return t->size();
}

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }

std::string unseal_error(const Result<Bytes>& r) {
  REQUIRE_FALSE(r.has_value());
  return r.error().message();
}

}  // namespace

TEST_CASE("a sealed secret unseals to the same bytes on the same TPM", "[fixture][seal]") {
  TempDir dir;
  auto tpm = connect_to(testing::fixture_tcti());
  NodeIdentity id = provision_on(*tpm, dir / "state");
  SecretStore store(dir / "state", id);

  const Bytes token = bytes_of("ghp_0123456789abcdefghijklmnopqrstuvwxyz");
  bool replaced = true;
  REQUIRE(store.seal(*tpm, "github-token", token, &replaced).has_value());
  CHECK_FALSE(replaced);
  auto back = store.unseal(*tpm, "github-token");
  INFO((back ? std::string() : back.error().message()));
  REQUIRE(back.has_value());
  CHECK(*back == token);

  SECTION("the blob is private and holds no plaintext") {
    struct stat st{};
    REQUIRE(::stat(store.path_of("github-token").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(::stat((dir / "state/secrets").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    auto raw = read_file(store.path_of("github-token"));
    REQUIRE(raw.has_value());
    CHECK(std::search(raw->begin(), raw->end(), token.begin(), token.end()) == raw->end());
  }
  SECTION("sealing again replaces the secret; list shows names only") {
    REQUIRE(store.seal(*tpm, "github-token", bytes_of("v2"), &replaced).has_value());
    CHECK(replaced);
    CHECK(*store.unseal(*tpm, "github-token") == bytes_of("v2"));
    REQUIRE(store.seal(*tpm, "db.password", Bytes(Tpm::kMaxSealedBytes, 0xA5)).has_value());
    CHECK(*store.unseal(*tpm, "db.password") == Bytes(Tpm::kMaxSealedBytes, 0xA5));
    REQUIRE(write_file_atomic(dir / "state/secrets/stray.txt", std::string_view("x")).has_value());
    auto names = store.list();
    REQUIRE(names.has_value());
    CHECK(*names == std::vector<std::string>{"db.password", "github-token"});
  }
  SECTION("unknown names and bad names are refused") {
    CHECK(store.unseal(*tpm, "missing").error().is(errc::not_found));
    CHECK_FALSE(store.seal(*tpm, "../escape", token).has_value());
    CHECK_FALSE(store.seal(*tpm, "Upper", token).has_value());
    CHECK_FALSE(store.unseal(*tpm, "").has_value());
  }
  SECTION("an agent key blob is not a sealed secret") {
    AgentKeyStore agents(dir / "state", id);
    auto key = agents.ensure(*tpm, "coder", sha256(std::string_view("coder v1")));
    REQUIRE(key.has_value());
    CHECK_THAT(unseal_error(tpm->unseal(id.handles.srk, key->blob)), Catch::Contains("not a sealed data object"));
  }
}

TEST_CASE("a secret sealed on one TPM does not unseal on another", "[fixture][seal]") {
  TempDir dir;
  {
    auto tpm = connect_to(testing::fixture_tcti());
    NodeIdentity id = provision_on(*tpm, dir / "state");
    REQUIRE(SecretStore(dir / "state", id).seal(*tpm, "api-key", bytes_of("s3cr3t")).has_value());
  }
  testing::Swtpm other(dir / "other-swtpm");
  auto tpm = connect_to(other.tcti());
  NodeIdentity other_id = provision_on(*tpm, dir / "other-state");
  // Same SRK handle and template, different TPM: the copied blob must not load.
  std::filesystem::create_directories(dir / "other-state/secrets");
  std::filesystem::copy_file(dir / "state/secrets/api-key.sealed", dir / "other-state/secrets/api-key.sealed");
  const size_t before = transient_count(*tpm);
  auto r = SecretStore(dir / "other-state", other_id).unseal(*tpm, "api-key");
  CHECK_THAT(unseal_error(r), Catch::Contains("unseal secret \"api-key\"") && Catch::Contains("does not load under") &&
                                  Catch::Contains("Esys_Load"));
  CHECK(transient_count(*tpm) == before);
}

TEST_CASE("an altered sealed blob is refused with a clear error", "[fixture][seal]") {
  TempDir dir;
  auto tpm = connect_to(testing::fixture_tcti());
  NodeIdentity id = provision_on(*tpm, dir / "state");
  SecretStore store(dir / "state", id);
  REQUIRE(store.seal(*tpm, "api-key", bytes_of("s3cr3t")).has_value());
  auto original = read_file(store.path_of("api-key"));
  REQUIRE(original.has_value());
  auto blob = KeyBlob::parse(*original);
  REQUIRE(blob.has_value());
  const size_t pub_len = blob->public_area.size();

  auto write_variant = [&](Bytes b) { REQUIRE(write_file_atomic(store.path_of("api-key"), b, 0600).has_value()); };
  SECTION("a bit of the encrypted private part") {
    Bytes b = *original;
    b[b.size() - 5] ^= 0x01;
    write_variant(b);
    CHECK_THAT(unseal_error(store.unseal(*tpm, "api-key")),
               Catch::Contains("does not load under") && Catch::Contains("altered"));
  }
  SECTION("the integrity HMAC") {
    Bytes b = *original;
    b[pub_len + 2 + 2 + 3] ^= 0x80;  // inside the outer HMAC that follows the private size
    write_variant(b);
    CHECK_THAT(unseal_error(store.unseal(*tpm, "api-key")), Catch::Contains("does not load under"));
  }
  SECTION("the public part (its name no longer matches the private part)") {
    Bytes b = *original;
    b[pub_len - 1] ^= 0x01;  // last byte of the public area: the unique field
    write_variant(b);
    CHECK_THAT(unseal_error(store.unseal(*tpm, "api-key")), Catch::Contains("does not load under"));
  }
  SECTION("a truncated file") {
    write_variant(Bytes(original->begin(), original->begin() + 10));
    CHECK_THAT(unseal_error(store.unseal(*tpm, "api-key")), Catch::Contains("is not a sealed blob"));
  }
  CHECK(transient_count(*tpm) == 0);
}

TEST_CASE("secrets over 128 bytes go in an envelope the TPM's key opens; empty or too long are refused", "[fixture][seal]") {
  TempDir dir;
  auto tpm = connect_to(testing::fixture_tcti());
  NodeIdentity id = provision_on(*tpm, dir / "state");
  SecretStore store(dir / "state", id);
  // A JWT refresh token is often 600-1,500 bytes: longer than the TPM seals itself.
  std::string token(1500, 'r');
  for (size_t i = 0; i < token.size(); i += 7) token[i] = static_cast<char>('a' + i % 26);
  REQUIRE(store.seal(*tpm, "oauth-refresh-x", bytes_of(token)).has_value());
  CHECK(*store.unseal(*tpm, "oauth-refresh-x") == bytes_of(token));
  auto file = read_file(store.path_of("oauth-refresh-x"));
  REQUIRE(file.has_value());
  CHECK(std::string(file->begin(), file->begin() + 4) == "OPSE");
  CHECK(std::search(file->begin(), file->end(), token.begin(), token.begin() + 40) == file->end());  // no plaintext
  CHECK(*store.unseal(*tpm, "oauth-refresh-x") == bytes_of(token));  // again: the key is unsealed each time
  REQUIRE(store.seal(*tpm, "just-over", Bytes(Tpm::kMaxSealedBytes + 1, 'x')).has_value());
  CHECK(*store.unseal(*tpm, "just-over") == Bytes(Tpm::kMaxSealedBytes + 1, 'x'));

  // The name is bound in: the same file under another name does not open.
  REQUIRE(write_file_atomic(store.path_of("other"), *file, 0600).has_value());
  auto moved = store.unseal(*tpm, "other");
  REQUIRE_FALSE(moved.has_value());
  CHECK_THAT(moved.error().message(), Catch::Contains("tag does not match"));
  // An altered ciphertext, and a truncated envelope, are refused with what they are.
  Bytes altered = *file;
  altered[altered.size() - 20] ^= 0x01;
  REQUIRE(write_file_atomic(store.path_of("oauth-refresh-x"), altered, 0600).has_value());
  CHECK_THAT(store.unseal(*tpm, "oauth-refresh-x").error().message(), Catch::Contains("tag does not match"));
  REQUIRE(write_file_atomic(store.path_of("oauth-refresh-x"), Bytes(file->begin(), file->begin() + 40), 0600).has_value());
  CHECK_THAT(store.unseal(*tpm, "oauth-refresh-x").error().message(), Catch::Contains("truncated envelope"));

  auto big = store.seal(*tpm, "big", Bytes(SecretStore::kMaxSecretBytes + 1, 'x'));
  REQUIRE_FALSE(big.has_value());
  CHECK_THAT(big.error().message(), Catch::Contains("65537 bytes is over the limit of 65536 bytes"));
  CHECK_FALSE(store.seal(*tpm, "empty", Bytes{}).has_value());
  CHECK_FALSE(file_exists(store.path_of("big")));
  CHECK(transient_count(*tpm) == 0);
}

TEST_CASE("sealing and unsealing leave no transient handles behind", "[fixture][seal]") {
  TempDir dir;
  auto tpm = connect_to(testing::fixture_tcti());
  NodeIdentity id = provision_on(*tpm, dir / "state");
  SecretStore store(dir / "state", id);
  const size_t before = transient_count(*tpm);
  CHECK(before == 0);
  for (int i = 0; i < 20; ++i) {
    const std::string name = "s" + std::to_string(i % 4);
    REQUIRE(store.seal(*tpm, name, bytes_of("value " + std::to_string(i))).has_value());
    REQUIRE(*store.unseal(*tpm, name) == bytes_of("value " + std::to_string(i)));
  }
  // Failing paths flush too: a load refused by the TPM, an oversize secret.
  auto blob = read_file(store.path_of("s0"));
  REQUIRE(blob.has_value());
  (*blob)[blob->size() - 3] ^= 0x10;
  REQUIRE(write_file_atomic(store.path_of("s0"), *blob, 0600).has_value());
  CHECK_FALSE(store.unseal(*tpm, "s0").has_value());
  CHECK_FALSE(store.seal(*tpm, "s1", Bytes(SecretStore::kMaxSecretBytes + 1, 1)).has_value());
  REQUIRE(store.seal(*tpm, "s2", Bytes(200, 1)).has_value());  // an envelope: its key's handle flushed too
  REQUIRE(*store.unseal(*tpm, "s2") == Bytes(200, 1));
  CHECK(transient_count(*tpm) == before);
  auto sessions = tpm->handles(HandleType::session);
  REQUIRE(sessions.has_value());
  CHECK(sessions->empty());
}

TEST_CASE("outpost secret seal and list from the command line", "[fixture][seal]") {
  TempDir dir;
  const std::string tcti = testing::fixture_tcti();
  const std::string state = (dir / "state").string();
  {
    auto tpm = connect_to(tcti);
    provision_on(*tpm, dir / "state");
  }  // the CLI needs the TPM to itself
  REQUIRE(write_file_atomic(dir / "token.txt", std::string_view("tok-123")).has_value());
  auto sealed = testing::run_outpost({"secret", "seal", "gh", "--in", (dir / "token.txt").string(), "--state", state,
                                      "--tcti", tcti});
  INFO(sealed.out << sealed.err);
  REQUIRE(sealed.exit_code == 0);
  CHECK_THAT(sealed.out, Catch::Contains("sealed 7 bytes as \"gh\""));
  auto again = testing::run_outpost({"secret", "seal", "gh", "--in", (dir / "token.txt").string(), "--state", state,
                                     "--tcti", tcti});
  CHECK_THAT(again.out, Catch::Contains("replaced"));

  auto listed = testing::run_outpost({"secret", "list", "--state", state, "--json"});
  REQUIRE(listed.exit_code == 0);
  CHECK(listed.out == "[\"gh\"]\n");

  REQUIRE(write_file_atomic(dir / "long.txt", std::string(900, 'x')).has_value());
  auto longer = testing::run_outpost({"secret", "seal", "long", "--in", (dir / "long.txt").string(), "--state", state,
                                      "--tcti", tcti});
  CHECK(longer.exit_code == 0);
  CHECK_THAT(longer.out, Catch::Contains("sealed 900 bytes as \"long\""));
  REQUIRE(write_file_atomic(dir / "big.txt", std::string(SecretStore::kMaxSecretBytes + 1, 'x')).has_value());
  auto big = testing::run_outpost({"secret", "seal", "big", "--in", (dir / "big.txt").string(), "--state", state,
                                   "--tcti", tcti});
  CHECK(big.exit_code == 1);
  CHECK_THAT(big.err, Catch::Contains("over the limit of 65536 bytes"));
  CHECK(std::count(big.err.begin(), big.err.end(), '\n') == 1);

  auto tpm = connect_to(tcti);
  auto id = load_identity(dir / "state");
  REQUIRE(id.has_value());
  CHECK(*SecretStore(dir / "state", *id).unseal(*tpm, "gh") == bytes_of("tok-123"));
}
