// The TPM seam against a real swtpm. Tests tagged [fixture] use the swtpm the CTest fixture
// started (OUTPOST_TCTI); the others start a swtpm of their own because they restart, clear
// or swap it.
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "test_support.h"

using namespace outpost;
using namespace outpost::attestation;
using outpost::testing::TempDir;

namespace {

ProvisionOptions sim_options() {
  auto board = boards::load_board("sim");
  REQUIRE(board.has_value());
  return ProvisionOptions{board->name, board->trust_domain, {board->srk_handle, board->ek_handle, board->ak_handle}};
}

std::unique_ptr<Tpm> connect(const std::string& tcti) {
  auto tpm = Tpm::connect(tcti);
  INFO((tpm ? std::string() : tpm.error().message()));
  REQUIRE(tpm.has_value());
  return std::move(*tpm);
}

NodeIdentity provision(Tpm& tpm, const std::filesystem::path& state) {
  auto r = provision_node(tpm, state, sim_options());
  INFO((r ? std::string() : r.error().message()));
  REQUIRE(r.has_value());
  return r->identity;
}

PcrSelections board_selection() {
  auto s = parse_pcr_selection(boards::load_board("sim")->quote_selection());
  REQUIRE(s.has_value());
  return *s;
}

std::string refusal(const Result<ParsedAttest>& r) {
  REQUIRE_FALSE(r.has_value());
  return r.error().message();
}

}  // namespace

TEST_CASE("quote and verify round trip; every alteration is refused", "[fixture][quote]") {
  TempDir dir;
  auto tpm = connect(testing::fixture_tcti());
  NodeIdentity id = provision(*tpm, dir / "state");
  const Bytes nonce = {0xde, 0xad, 0xbe, 0xef, 0x01};
  auto q = tpm->quote(id.handles.ak, board_selection(), nonce);
  REQUIRE(q.has_value());
  REQUIRE(verify_quote(q->signed_attest, id.ak_public, nonce, q->pcrs).has_value());

  SECTION("flipped byte in the attestation body") {
    SignedAttestation bad = q->signed_attest;
    bad.attest[bad.attest.size() / 2] ^= 0x04;
    CHECK_THAT(refusal(verify_quote(bad, id.ak_public, nonce, q->pcrs)),
               Catch::Contains("signature does not verify") || Catch::Contains("nonce") ||
                   Catch::Contains("Unmarshal"));
  }
  SECTION("flipped byte in the signature") {
    SignedAttestation bad = q->signed_attest;
    bad.signature[bad.signature.size() - 3] ^= 0x10;
    CHECK_THAT(refusal(verify_quote(bad, id.ak_public, nonce, q->pcrs)), Catch::Contains("signature does not verify"));
  }
  SECTION("flipped byte in a PCR value") {
    PcrValues bad = q->pcrs;
    bad[0].values.begin()->second[0] ^= 0x01;
    CHECK_THAT(refusal(verify_quote(q->signed_attest, id.ak_public, nonce, bad)),
               Catch::Contains("PCR digest mismatch"));
  }
  SECTION("wrong nonce") {
    CHECK_THAT(refusal(verify_quote(q->signed_attest, id.ak_public, Bytes{1}, q->pcrs)),
               Catch::Contains("nonce mismatch"));
  }
  SECTION("wrong AK") {
    auto other = EcPrivateKey::generate();
    CHECK_THAT(refusal(verify_quote(q->signed_attest, other->public_key(), nonce, q->pcrs)),
               Catch::Contains("signature does not verify"));
  }
  SECTION("tpm2_checkquote accepts the files outpost writes") {
    auto out = dir / "quote";
    REQUIRE(write_quote_dir(out, {q->signed_attest, q->pcrs}, id.ak_public).has_value());
    auto r = testing::run_program({"tpm2_checkquote", "-u", (out / "ak.pem").string(), "-m",
                                   (out / "attest.bin").string(), "-s", (out / "signature.bin").string(), "-f",
                                   (out / "pcrs.bin").string(), "-q", hex_encode(nonce)});
    INFO(r.err);
    CHECK(r.exit_code == 0);
    auto wrong = testing::run_program({"tpm2_checkquote", "-u", (out / "ak.pem").string(), "-m",
                                       (out / "attest.bin").string(), "-s", (out / "signature.bin").string(), "-f",
                                       (out / "pcrs.bin").string(), "-q", "00"});
    CHECK(wrong.exit_code != 0);
    auto files = read_quote_dir(out);
    REQUIRE(files.has_value());
    CHECK(verify_quote(files->quote, id.ak_public, nonce, files->pcrs).has_value());
  }
}

TEST_CASE("PCR extend follows new = SHA-256(old || measurement)", "[fixture][quote]") {
  auto tpm = connect(testing::fixture_tcti());
  PcrSelections sel = *parse_pcr_selection("sha256:23");
  auto before = tpm->pcr_read(sel);
  REQUIRE(before.has_value());
  Digest m = sha256(std::string_view("outpost measurement"));
  REQUIRE(tpm->pcr_extend(23, m).has_value());
  auto after = tpm->pcr_read(sel);
  REQUIRE(after.has_value());
  Sha256 h;
  h.update((*before)[0].values[23]).update(m);
  Digest expect = h.finish();
  CHECK((*after)[0].values[23] == Bytes(expect.begin(), expect.end()));
  CHECK_FALSE(tpm->pcr_extend(24, m).has_value());
}

TEST_CASE("agent keys sign and export and are certified by the AK", "[fixture][agent]") {
  TempDir dir;
  auto tpm = connect(testing::fixture_tcti());
  NodeIdentity id = provision(*tpm, dir / "state");
  AgentKeyStore store(dir / "state", id);
  Digest measurement = sha256(std::string_view("coder v1"));
  bool created = false;
  auto key = store.ensure(*tpm, "coder", measurement, &created);
  REQUIRE(key.has_value());
  CHECK(created);
  CHECK(key->spiffe_id == id.spiffe_id + "/agent/coder");

  SECTION("a TPM signature verifies with mbedTLS from the exported PEM and JWK") {
    auto loaded = store.load(*tpm, *key);
    REQUIRE(loaded.has_value());
    Digest d = sha256(std::string_view("call-scoped credential"));
    auto sig = tpm->sign(*loaded, d);
    REQUIRE(sig.has_value());
    auto pem = read_text_file(dir / "state/agents/coder/key.pem");
    REQUIRE(pem.has_value());
    auto from_pem = EcPublicKey::from_pem(*pem);
    REQUIRE(from_pem.has_value());
    CHECK(from_pem->verify(d, *sig).has_value());
    auto from_jwk = EcPublicKey::from_jwk(key->public_key.to_jwk());
    CHECK(from_jwk->verify(d, *sig).has_value());
    CHECK_FALSE(from_pem->verify(sha256(std::string_view("other")), *sig).has_value());
  }
  SECTION("the certification verifies and binds name and measurement") {
    CHECK(verify_agent_key(*key, id.ak_public).has_value());
    AgentKey renamed = *key;
    renamed.name = "maint";
    CHECK_THAT(verify_agent_key(renamed, id.ak_public).error().message(), Catch::Contains("qualifying data mismatch"));
    AgentKey remeasured = *key;
    remeasured.measurement = sha256(std::string_view("coder v2"));
    CHECK_FALSE(verify_agent_key(remeasured, id.ak_public).has_value());
    auto other_key = store.ensure(*tpm, "other", measurement);
    REQUIRE(other_key.has_value());
    AgentKey swapped = *key;
    swapped.blob = other_key->blob;
    CHECK_THAT(verify_agent_key(swapped, id.ak_public).error().message(), Catch::Contains("certified name mismatch"));
  }
  SECTION("the key is reused across restarts and recertified for a new measurement") {
    auto again = store.ensure(*tpm, "coder", measurement, &created);
    REQUIRE(again.has_value());
    CHECK_FALSE(created);
    CHECK(again->key_name == key->key_name);
    Digest v2 = sha256(std::string_view("coder v2"));
    auto upgraded = store.ensure(*tpm, "coder", v2, &created);
    REQUIRE(upgraded.has_value());
    CHECK_FALSE(created);
    CHECK(upgraded->key_name == key->key_name);
    CHECK(verify_agent_key(*upgraded, id.ak_public).has_value());
    auto reread = store.read("coder");
    REQUIRE(reread.has_value());
    CHECK(reread->measurement == v2);
  }
  SECTION("names that could escape the state directory are refused") {
    CHECK_FALSE(store.ensure(*tpm, "../etc", measurement).has_value());
    CHECK_FALSE(store.ensure(*tpm, "A", measurement).has_value());
    CHECK_FALSE(store.ensure(*tpm, "", measurement).has_value());
  }
}

TEST_CASE("NV counter increments survive a TPM restart; counters only go up", "[counter]") {
  TempDir dir;
  testing::Swtpm swtpm(dir / "swtpm");
  constexpr uint32_t kIndex = 0x01000100;
  uint64_t last = 0;
  {
    auto tpm = connect(swtpm.tcti());
    auto first = tpm->ensure_counter(kIndex);
    REQUIRE(first.has_value());
    CHECK(*tpm->ensure_counter(kIndex) == *first);  // defining twice changes nothing
    auto next = tpm->increment_counter(kIndex);
    REQUIRE(next.has_value());
    CHECK(*next == *first + 1);
    last = *tpm->increment_counter(kIndex);
    CHECK(last == *first + 2);
  }
  swtpm.stop();
  swtpm.start();
  auto tpm = connect(swtpm.tcti());
  CHECK(*tpm->read_counter(kIndex) == last);
  CHECK(*tpm->increment_counter(kIndex) == last + 1);
  auto missing = tpm->read_counter(0x01000200);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().is(errc::not_found));
}

TEST_CASE("TPM clock info moves forward across a restart and going back is flagged", "[clock]") {
  TempDir dir;
  testing::Swtpm swtpm(dir / "swtpm");
  ClockInfo before;
  {
    auto tpm = connect(swtpm.tcti());
    auto t1 = tpm->read_clock();
    REQUIRE(t1.has_value());
    auto t2 = tpm->read_clock();
    REQUIRE(t2.has_value());
    CHECK(check_clock_forward(t1->clock, t2->clock).has_value());
    before = t2->clock;
  }
  swtpm.stop();
  swtpm.start();
  auto tpm = connect(swtpm.tcti());
  auto after = tpm->read_clock();
  REQUIRE(after.has_value());
  INFO("before reset " << before.reset_count << " restart " << before.restart_count << " clock " << before.clock
                       << "; after reset " << after->clock.reset_count << " restart " << after->clock.restart_count
                       << " clock " << after->clock.clock);
  CHECK((after->clock.reset_count > before.reset_count ||
         (after->clock.reset_count == before.reset_count && after->clock.restart_count > before.restart_count)));
  CHECK(check_clock_forward(before, after->clock).has_value());
  auto backwards = check_clock_forward(after->clock, before);
  REQUIRE_FALSE(backwards.has_value());
  CHECK(backwards.error().is(errc::clock_regressed));
}

TEST_CASE("node init is idempotent and detects a cleared or swapped TPM", "[node]") {
  TempDir dir;
  testing::Swtpm swtpm(dir / "swtpm", /*manufacture=*/true);
  const std::string state = (dir / "state").string();
  auto init = [&](const std::string& tcti) {
    return testing::run_outpost({"node", "init", "--board", "sim", "--state", state, "--tcti", tcti, "--json"});
  };
  auto first = init(swtpm.tcti());
  INFO(first.err);
  REQUIRE(first.exit_code == 0);
  auto first_json = boost::json::parse(first.out).as_object();
  CHECK(first_json["changed"].as_bool());
  CHECK(first_json["ek_certificates"].as_array().size() >= 1);  // swtpm_setup put EK certificates in NV
  auto tree = testing::snapshot_tree(state);

  auto second = init(swtpm.tcti());
  REQUIRE(second.exit_code == 0);
  CHECK_FALSE(boost::json::parse(second.out).as_object()["changed"].as_bool());
  CHECK(testing::snapshot_tree(state) == tree);
  auto info = testing::run_outpost({"node", "info", "--state", state, "--json"});
  REQUIRE(info.exit_code == 0);
  CHECK(boost::json::parse(info.out).as_object()["node_id"] == first_json["node_id"]);

  SECTION("a cleared TPM is reported and nothing is written") {
    auto clear = testing::run_program({"tpm2_clear", "-T", swtpm.tcti()});
    INFO(clear.err);
    REQUIRE(clear.exit_code == 0);
    auto after = init(swtpm.tcti());
    CHECK(after.exit_code == 1);
    CHECK_THAT(after.err, Catch::Contains("cleared or replaced"));
    CHECK(std::count(after.err.begin(), after.err.end(), '\n') == 1);
    CHECK(testing::snapshot_tree(state) == tree);
  }
  SECTION("a swapped TPM whose SRK handle holds another key is reported") {
    TempDir other_dir;
    testing::Swtpm other(other_dir / "swtpm");
    {
      auto tpm = connect(other.tcti());
      provision(*tpm, other_dir / "state");  // a different TPM: its SRK has another name
    }
    auto after = init(other.tcti());
    CHECK(after.exit_code == 1);
    CHECK_THAT(after.err, Catch::Contains("cleared or swapped"));
    CHECK(testing::snapshot_tree(state) == tree);
  }
}

TEST_CASE("an unreachable TPM gives a one-line error and writes nothing", "[unreachable]") {
  TempDir dir;
  const std::string tcti = "swtpm:host=127.0.0.1,port=" + std::to_string(testing::unused_port());
  SECTION("node init into a new state directory") {
    auto r = testing::run_outpost({"node", "init", "--board", "sim", "--state", (dir / "state").string(), "--tcti", tcti});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::StartsWith("outpost: error: cannot use the TPM at \"" + tcti + "\""));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_FALSE(std::filesystem::exists(dir / "state"));
  }
  SECTION("a TPM device that does not exist") {
    auto r = testing::run_outpost({"node", "init", "--board", "x86-64", "--state", (dir / "state").string(), "--tcti",
                                   "device:" + (dir / "no-tpm").string()});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::StartsWith("outpost: error: cannot use the TPM at \"device:"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_FALSE(std::filesystem::exists(dir / "state"));
  }
  SECTION("commands on a provisioned node") {
    TempDir tpm_dir;
    std::string state = (dir / "state").string();
    {
      testing::Swtpm swtpm(tpm_dir / "swtpm");
      auto r = testing::run_outpost({"node", "init", "--board", "sim", "--state", state, "--tcti", swtpm.tcti()});
      REQUIRE(r.exit_code == 0);
    }
    auto tree = testing::snapshot_tree(state);
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"node", "init", "--board", "sim", "--state", state, "--tcti", tcti},
             {"agent", "key", "coder", "--measurement", std::string(64, 'a'), "--state", state, "--tcti", tcti},
             {"attest", "quote", "--nonce", "01", "--out", (dir / "q").string(), "--state", state, "--tcti", tcti}}) {
      auto r = testing::run_outpost(args);
      INFO(args[0] << " " << args[1]);
      CHECK(r.exit_code == 1);
      CHECK_THAT(r.err, Catch::Contains("cannot use the TPM at"));
      CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    }
    CHECK(testing::snapshot_tree(state) == tree);
    CHECK_FALSE(std::filesystem::exists(dir / "q"));
  }
}

TEST_CASE("200 processes that load or create a key then sign and quote leave no handles behind", "[fixture][leak]") {
  TempDir dir;
  const std::string tcti = testing::fixture_tcti();
  {
    auto tpm = connect(tcti);
    provision(*tpm, dir / "state");
  }
  auto leftovers = [&] {
    Tpm::Options opts;
    opts.flush_leftovers = false;  // look, do not clean
    auto tpm = Tpm::connect(tcti, opts);
    REQUIRE(tpm.has_value());
    auto transient = (*tpm)->handles(HandleType::transient);
    auto sessions = (*tpm)->handles(HandleType::session);
    REQUIRE(transient.has_value());
    REQUIRE(sessions.has_value());
    return transient->size() + sessions->size();
  };
  REQUIRE(leftovers() == 0);
  for (int i = 0; i < 200; ++i) {
    // A new agent every tenth cycle exercises key creation; the rest load an existing key.
    std::string agent = "agent-" + std::to_string(i / 10);
    auto r = testing::run_program({testing::tpm_cycle_path(), tcti, (dir / "state").string(), agent});
    INFO("cycle " << i << ": " << r.err);
    REQUIRE(r.exit_code == 0);
    if (i % 50 == 49) REQUIRE(leftovers() == 0);
  }
}

TEST_CASE("the TPM connection is re-established after the TPM goes away and comes back",
          "[reconnect][tpm-reconnect]") {
  TempDir dir;
  testing::Swtpm swtpm(dir / "swtpm");
  const std::string tcti = swtpm.tcti();
  const std::string port = tcti.substr(tcti.rfind("port=") + 5);
  std::unique_ptr<testing::Background> restarted;  // outlives `tpm`: its destructor may talk to it
  auto tpm = connect(tcti);
  NodeIdentity id = provision(*tpm, dir / "state");
  constexpr uint32_t kIndex = 0x01000100;
  auto counter = tpm->ensure_counter(kIndex);
  REQUIRE(counter.has_value());
  auto blob = tpm->create_signing_key(id.handles.srk);
  REQUIRE(blob.has_value());
  auto old_key = tpm->load(id.handles.srk, *blob);
  REQUIRE(old_key.has_value());
  REQUIRE(tpm->read_clock().has_value());
  TpmHealth healthy = tpm->health();
  CHECK(healthy.connected);
  CHECK(healthy.reconnects == 0);
  CHECK(healthy.failures == 0);
  CHECK(healthy.last_error.empty());

  swtpm.stop();  // waits for the pid; the state directory stays
  auto lost = tpm->increment_counter(kIndex);
  REQUIRE_FALSE(lost.has_value());
  INFO(lost.error().message());
  CHECK_THAT(lost.error().message(), Catch::Contains("connection to the TPM at \"" + tcti + "\" failed") &&
                                         Catch::Contains("IO failure"));
  TpmHealth down = tpm->health();
  CHECK_FALSE(down.connected);
  CHECK(down.failures == 1);
  CHECK_THAT(down.last_error, Catch::Contains("IO failure"));
  CHECK(down.last_failure_unix > 0);
  // The next command tries to reconnect and fails on its own terms, not "called in the wrong
  // order" as a stale ESYS context would.
  auto still_down = tpm->read_clock();
  REQUIRE_FALSE(still_down.has_value());
  CHECK_THAT(still_down.error().message(), Catch::Contains(tcti) && !Catch::Contains("wrong order"));
  CHECK(tpm->health().failures == 2);
  CHECK_FALSE(tpm->health().connected);

  // The same TPM (same state) back on the same port: swtpm.sh picks a new port, so start it here.
  restarted = std::make_unique<testing::Background>(
      std::vector<std::string>{"/usr/bin/env", "swtpm", "socket", "--tpm2",
                               "--server", "type=tcp,port=" + port + ",bindaddr=127.0.0.1",
                               "--ctrl", "type=tcp,port=" + std::to_string(std::stoi(port) + 1) + ",bindaddr=127.0.0.1",
                               "--tpmstate", "dir=" + (dir / "swtpm" / "state").string(),
                               "--flags", "not-need-init,startup-clear"},
      dir / "swtpm-restarted.log");
  std::string last;
  bool back = testing::eventually(
      [&] {
        auto t = tpm->read_clock();
        if (!t) last = t.error().message();
        return t.has_value();
      },
      30, 50);
  INFO("last error: " << last);
  REQUIRE(back);
  TpmHealth again = tpm->health();
  CHECK(again.connected);
  CHECK(again.reconnects >= 1);
  CHECK(again.failures >= 2);
  CHECK_FALSE(again.last_error.empty());

  // Persistent keys are resolved again on the new connection.
  auto ak = tpm->read_persistent(id.handles.ak);
  REQUIRE(ak.has_value());
  CHECK(ak->key == id.ak_public);
  const Bytes nonce = {0x0c, 0x0a, 0xfe};
  auto q = tpm->quote(id.handles.ak, board_selection(), nonce);
  INFO((q ? std::string() : q.error().message()));
  REQUIRE(q.has_value());
  CHECK(verify_quote(q->signed_attest, id.ak_public, nonce, q->pcrs).has_value());
  // The failed increment was not replayed.
  CHECK(*tpm->read_counter(kIndex) == *counter);

  // A key loaded on the lost connection is refused (its ESYS_TR could name another object now);
  // loaded again under the SRK it signs.
  const Digest d = sha256(std::string_view("after the reconnect"));
  auto stale = tpm->sign(*old_key, d);
  REQUIRE_FALSE(stale.has_value());
  CHECK(stale.error().is(errc::not_found));
  CHECK_THAT(stale.error().message(), Catch::Contains("load it again"));
  auto new_key = tpm->load(id.handles.srk, *blob);
  REQUIRE(new_key.has_value());
  auto sig = tpm->sign(*new_key, d);
  REQUIRE(sig.has_value());
  CHECK(new_key->public_key().key.verify(d, *sig).has_value());
}
