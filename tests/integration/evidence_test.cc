// Evidence packages against a TPM of the test's own (swtpm) and through the real CLI: a node
// provisioned and given a bundle by `outpost`, an agent key certified by the AK, runtime
// measurements extended into PCR 23, and an audit log whose checkpoints the AK quoted; then
// `outpost evidence export`, `evidence verify --trust ak.pem` and `evidence show`. A record
// edited on the node's disk (its frame hash fixed, so only the chain can tell) is named by
// both `outpost audit verify` and `evidence verify` of a fresh export.
#include <algorithm>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <fstream>

#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "outpost/firmware_hooks/runtime_log.h"
#include "outpost/offline_cache/audit_log.h"
#include "test_support.h"

namespace outpost {
namespace {

using testing::write_text;

namespace fs = std::filesystem;
namespace json = boost::json;
namespace oc = offline_cache;

testing::CommandResult ok(const std::vector<std::string>& args) {
  auto r = testing::run_outpost(args);
  INFO("outpost " << args[0] << " " << (args.size() > 1 ? args[1] : "") << "\n" << r.out << r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

constexpr const char* kPolicy = R"(version: 1
issuer: evidence.outpost.test
valid:
  not_before: 2026-01-01T00:00:00Z
  not_after: 2099-01-01T00:00:00Z
  max_offline: 72h
on_expiry: deny_all
tools:
  - {server: fs, name: read_file}
agents:
  - name: writer
    tools: ["fs/*"]
rules:
  - id: read
    effect: allow
    agents: [writer]
    tools: [fs/read_file]
    reason: "reads"
)";

oc::AuditEntry decision(int i) {
  oc::AuditEntry e;
  e.kind = oc::RecordKind::decision;
  e.event = "decision";
  e.agent = "writer";
  e.detail = R"({"tool":"fs/read_file","allow":true,"n":)" + std::to_string(i) + "}";
  return e;
}

// Changes `from` to `to` (same length) inside record `seq` of a segment file and writes the
// frame's SHA-256 anew, as an attacker with the disk would: the frame checks, the chain not.
void edit_record_on_disk(const fs::path& segment, uint64_t seq, const std::string& from, const std::string& to) {
  Bytes bytes = *read_file(segment);
  oc::SegmentParse p = oc::parse_segment(bytes, "seg");
  auto rec = std::find_if(p.records.begin(), p.records.end(), [&](const oc::AuditRecord& r) { return r.seq == seq; });
  REQUIRE(rec != p.records.end());
  const size_t off = rec->offset;
  const size_t len = bytes[off + 4] | bytes[off + 5] << 8 | bytes[off + 6] << 16;
  auto payload = bytes.begin() + static_cast<ptrdiff_t>(off + 8);
  auto it = std::search(payload, payload + static_cast<ptrdiff_t>(len), from.begin(), from.end());
  REQUIRE(it != payload + static_cast<ptrdiff_t>(len));
  std::copy(to.begin(), to.end(), it);
  const Digest h = sha256(ByteView(bytes.data() + off + 8, len));
  std::copy(h.begin(), h.end(), payload + static_cast<ptrdiff_t>(len));
  REQUIRE(write_file_atomic(segment, bytes, 0600));
}

}  // namespace

TEST_CASE("evidence export and verify through the CLI; an edited record is named by audit and evidence verify",
          "[evidence-cli]") {
  testing::TempDir dir;
  testing::Swtpm swtpm{dir / "swtpm"};
  const fs::path state = dir / "state";
  const auto p = [&](const char* n) { return (dir / n).string(); };
  const std::vector<std::string> node = {"--state", state.string(), "--tcti", swtpm.tcti()};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), node.begin(), node.end());
    return a;
  };

  // A node with a bundle installed (state.json and the NV rollback counter).
  write_text(dir / "policy.yaml", kPolicy);
  ok({"keygen", "--out", p("k.pem")});
  ok({"trust", "init", "--key", p("k.pem.pub"), "--threshold", "1", "-o", p("root.json")});
  ok({"bundle", "build", p("policy.yaml"), "-o", p("b.opb")});
  ok({"bundle", "sign", p("b.opb"), "--key", p("k.pem")});
  ok(with({"node", "init", "--board", "sim"}));
  ok(with({"trust", "pin", p("root.json")}));
  ok(with({"bundle", "install", p("b.opb")}));

  // What outpostd would do, in process: an agent key certified by the AK, runtime
  // measurements in PCR 23, and audit records with checkpoints quoted by the AK.
  auto board = boards::load_board("sim");
  REQUIRE(board);
  auto id = attestation::load_identity(state);
  REQUIRE(id);
  auto sel = attestation::parse_pcr_selection(board->quote_selection());
  REQUIRE(sel);
  {
    auto tpm = attestation::Tpm::connect(swtpm.tcti());
    REQUIRE(tpm);
    attestation::AgentKeyStore keys(state, *id);
    REQUIRE(keys.ensure(**tpm, "writer", sha256(std::string_view("writer v1"))));
    auto runtime = firmware_hooks::RuntimeLogWriter::open(state / "measurements" / "runtime.log", **tpm, 23);
    REQUIRE(runtime);
    REQUIRE((*runtime)->measure(firmware_hooks::runtime_kind::outpostd, "/usr/bin/outpostd", sha256(std::string_view("d"))));
    REQUIRE((*runtime)->measure(firmware_hooks::runtime_kind::agent, "writer", sha256(std::string_view("writer v1"))));

    auto log = oc::AuditLog::open(state / "audit" / "log", oc::AuditLogOptions{});
    REQUIRE(log);
    auto checkpoint = [&](int meanwhile) {
      auto [seq, head] = (*log)->head();
      auto q = (*tpm)->quote(id->handles.ak, *sel, oc::checkpoint_qualifying_data(seq, head));
      REQUIRE(q);
      for (int i = 0; i < meanwhile; ++i) REQUIRE((*log)->append(decision(1000 + i)));  // arriving while the TPM quotes
      auto c = (*log)->append_checkpoint(seq, head, q->signed_attest, attestation::encode_pcrs_tpm2tools(q->pcrs));
      REQUIRE(c);
      REQUIRE((*log)->wait_durable(*c));
    };
    for (int i = 0; i < 10; ++i) REQUIRE((*log)->append(decision(i)));
    checkpoint(1);  // 12, head 10
    for (int i = 0; i < 10; ++i) REQUIRE((*log)->append(decision(i)));
    checkpoint(0);  // 23, head 22
  }
  const fs::path ak = state / "ak.pem";
  const fs::path pkg = dir / "evidence.opev";

  auto exported = ok({"evidence", "export", "--out", pkg.string(), "--state", state.string()});
  CHECK_THAT(exported.out, Catch::Contains("records       1..23 (23)"));
  CHECK_THAT(exported.out, Catch::Contains("1 key certifications"));

  auto verified = ok({"evidence", "verify", pkg.string(), "--trust", ak.string()});
  CHECK_THAT(verified.out, Catch::Contains("evidence package verified: node " + id->node_id));
  CHECK_THAT(verified.out, Catch::Contains("23 records (1..23), 2 checkpoints, 2 quotes verified with the trusted AK, "
                                           "anchored through 22"));
  CHECK_THAT(verified.out, Catch::Contains("1 of 1 agent certifications verified; runtime log 2 entries"));
  auto as_json = ok({"evidence", "verify", pkg.string(), "--trust", ak.string(), "--json"});
  const json::object report = json::parse(as_json.out).as_object();
  CHECK(report.at("ok").as_bool());
  CHECK(report.at("checkpoints_verified").as_int64() == 2);
  CHECK(report.at("certifications_verified").as_int64() == 1);
  CHECK(report.at("runtime_entries").as_int64() == 2);
  CHECK(report.at("warnings").as_array().empty());

  auto shown = ok({"evidence", "show", pkg.string(), "--json"});
  const json::object summary = json::parse(shown.out).as_object();
  CHECK(summary.at("node_id").as_string() == id->node_id);
  REQUIRE(summary.at("bundles").as_array().size() == 1);
  CHECK(summary.at("bundles").as_array()[0].at("version").as_int64() == 1);  // the policy's version
  REQUIRE(summary.at("nv_counters").as_array().size() == 1);
  CHECK(summary.at("nv_counters").as_array()[0].at("index").as_string() == "0x01800100");
  CHECK(summary.at("nv_counters").as_array()[0].at("value").as_int64() >= 1);

  // outpostd's configuration says where the state is, as well as --state does.
  write_text(dir / "outpostd.yaml", "board: sim\nstate_dir: " + state.string() + "\n");
  auto by_config = ok({"evidence", "export", "--out", p("by-config.opev"), "--config", p("outpostd.yaml"), "--json"});
  CHECK(json::parse(by_config.out).at("last_seq").as_int64() == 23);

  // A time range after every record selects none; a time that does not parse is a usage error.
  auto future = testing::run_outpost({"evidence", "export", "--out", p("none.opev"), "--state", state.string(), "--since",
                                      "2999-01-01T00:00:00Z", "--json"});
  REQUIRE(future.exit_code == 0);
  CHECK(json::parse(future.out).at("records").as_int64() == 0);
  auto bad_time = testing::run_outpost({"evidence", "export", "--out", p("x.opev"), "--state", state.string(), "--since", "yesterday"});
  CHECK(bad_time.exit_code == 2);
  CHECK_THAT(bad_time.err, Catch::Contains("--since yesterday: want RFC 3339 UTC"));

  // Another AK: every signature is refused.
  auto other = EcPrivateKey::generate();
  REQUIRE(other);
  write_text(dir / "other.pem", other->public_key().to_pem());
  auto wrong = testing::run_outpost({"evidence", "verify", pkg.string(), "--trust", p("other.pem")});
  CHECK(wrong.exit_code == 1);
  CHECK_THAT(wrong.out, Catch::Contains("evidence package FAILED") && Catch::Contains("checkpoint 12: quote rejected") &&
                            Catch::Contains("agent \"writer\": certification rejected"));

  // A package cut short is refused with a clear error.
  Bytes cut = *read_file(pkg);
  cut.resize(cut.size() / 2);
  REQUIRE(write_file_atomic(dir / "cut.opev", cut));
  auto refused = testing::run_outpost({"evidence", "verify", p("cut.opev"), "--trust", ak.string()});
  CHECK(refused.exit_code == 1);
  CHECK_THAT(refused.err, Catch::Contains("FlatBuffers verifier"));

  // Record 7 edited on the node's disk, its frame hash fixed.
  edit_record_on_disk(state / "audit" / "log" / "seg-00000000000000000001.oal", 7, "\"allow\":true", "\"allow\":fals");
  auto audit = testing::run_outpost({"audit", "verify", "--state", state.string()});
  CHECK(audit.exit_code == 1);
  CHECK_THAT(audit.out, Catch::Contains("record 8 does not link to record 7"));
  const fs::path fresh = dir / "fresh.opev";
  ok({"evidence", "export", "--out", fresh.string(), "--state", state.string()});
  auto caught = testing::run_outpost({"evidence", "verify", fresh.string(), "--trust", ak.string()});
  CHECK(caught.exit_code == 1);
  CHECK_THAT(caught.out, Catch::Contains("evidence package FAILED") && Catch::Contains("record 8 does not link to record 7"));
  // The package exported before the edit still verifies: it holds the records as they were.
  ok({"evidence", "verify", pkg.string(), "--trust", ak.string()});

  // An edited runtime measurement is caught too.
  std::string runtime_text = *read_text_file(state / "measurements" / "runtime.log");
  const size_t at = runtime_text.find("\"writer\"");
  REQUIRE(at != std::string::npos);
  runtime_text.replace(at, 8, "\"Writer\"");
  write_text(state / "measurements" / "runtime.log", runtime_text);
  ok({"evidence", "export", "--out", p("runtime.opev"), "--state", state.string()});
  auto runtime_caught = testing::run_outpost({"evidence", "verify", p("runtime.opev"), "--trust", ak.string()});
  CHECK(runtime_caught.exit_code == 1);
  CHECK_THAT(runtime_caught.out, Catch::Contains("runtime log line 3: template hash does not match"));
}

}  // namespace outpost
