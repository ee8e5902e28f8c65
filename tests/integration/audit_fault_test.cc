// The audit log under faults and with TPM checkpoints.
//   [audit-fault]  SIGKILL of a writer during heavy appends, 50 cycles; a full disk (a 256 KiB
//                  tmpfs): fail closed, nothing acknowledged lost, appends resume once space is
//                  freed. Bounded in count and time.
//   [fixture][audit]  checkpoints: a TPM2_Quote by the AK over (chain head, sequence) from the
//                  fixture's swtpm, checked by verify_audit_log; a wrong key or head is caught.
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/base/files.h"
#include "outpost/boards/board.h"
#include "outpost/offline_cache/audit_log.h"
#include "test_support.h"

namespace outpost::offline_cache {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// The highest sequence number the writer printed (acknowledged), from its output.
uint64_t max_acked(const fs::path& out, std::string* errors = nullptr) {
  std::ifstream f(out);
  std::string line;
  uint64_t best = 0;
  while (std::getline(f, line)) {
    if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) {
      best = std::max<uint64_t>(best, std::stoull(line));
    } else if (errors) {
      *errors += line + "\n";
    }
  }
  return best;
}

uint64_t count_contiguous(const fs::path& dir) {
  uint64_t expect = 1;
  auto r = read_audit_log(dir, 0, [&](const AuditRecord& rec) {
    REQUIRE(rec.seq == expect);
    ++expect;
    return true;
  });
  INFO((r ? "" : r.error().message()));
  REQUIRE(r);
  return expect - 1;
}

// A tmpfs of `kib` KiB mounted for the test's life (root only).
class SmallDisk {
 public:
  SmallDisk(const fs::path& at, int kib) : at_(at) {
    fs::create_directories(at);
    const std::string opts = "size=" + std::to_string(kib) + "k,mode=0700";
    mounted_ = ::mount("tmpfs", at.c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~SmallDisk() {
    if (mounted_) ::umount2(at_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }

 private:
  fs::path at_;
  bool mounted_ = false;
};

AuditEntry event(int i) {
  AuditEntry e;
  e.kind = RecordKind::decision;
  e.event = "decision";
  e.agent = "agent";
  e.detail = R"({"n":)" + std::to_string(i) + R"(,"pad":")" + std::string(200, 'x') + "\"}";
  return e;
}

}  // namespace

TEST_CASE("SIGKILL during heavy appends loses no acknowledged record, 50 times", "[audit-fault]") {
  TempDir dir;
  const fs::path log = dir / "log";
  std::mt19937 rng(20261128);
  std::uniform_int_distribution<int> wait_ms(5, 60);
  uint64_t acked_total = 0;
  int cuts = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(150);
  int cycle = 0;
  for (; cycle < 50 && std::chrono::steady_clock::now() < deadline; ++cycle) {
    const fs::path out = dir / ("writer-" + std::to_string(cycle) + ".out");
    {
      testing::Background writer({OUTPOST_AUDIT_WRITER, log.string(), "4"}, out);
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms(rng)));
      writer.stop(SIGKILL, 5000);
    }
    std::string errors;
    const uint64_t acked = max_acked(out, &errors);
    INFO("cycle " << cycle << ", writer said: " << errors);
    auto reopened = AuditLog::open(log, AuditLogOptions{64 << 10, 256 << 20, {}});
    REQUIRE(reopened);
    cuts += (*reopened)->recovery().cut_torn_tail;
    const uint64_t present = (*reopened)->last_seq();
    reopened->reset();
    CHECK(present >= acked);  // every acknowledged record survived
    acked_total = std::max(acked_total, acked);
  }
  CHECK(cycle == 50);
  const uint64_t records = count_contiguous(log);  // 1..N, no gap, every link checks
  auto v = verify_audit_log(log, std::nullopt);
  INFO(v.problems.size() << " problems");
  CHECK(v.ok());
  CHECK(records >= acked_total);
  WARN("50 SIGKILL cycles: " << records << " records, " << cuts << " torn tails cut on recovery");
}

TEST_CASE("a full disk fails closed, keeps every acknowledged record, and recovers when space returns",
          "[audit-fault]") {
  if (::geteuid() != 0) {
    WARN("skipped: mounting a small tmpfs needs root");
    return;
  }
  TempDir dir;
  SmallDisk disk(dir / "disk", 256);
  REQUIRE(disk.mounted());
  const fs::path log = dir / "disk" / "log";
  // Something else on the same filesystem, removed later to free space.
  {
    std::ofstream filler(dir / "disk" / "filler", std::ios::binary);
    filler << std::string(64 << 10, 'f');
  }

  {
    // A separate process first: killed by the full disk's error, not by us.
    testing::Background writer({OUTPOST_AUDIT_WRITER, log.string(), "2"}, dir / "writer.out");
    bool done = false;
    for (int i = 0; i < 200 && !done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      done = !writer.running();
    }
    REQUIRE(done);
  }
  std::string errors;
  const uint64_t acked = max_acked(dir / "writer.out", &errors);
  CHECK_THAT(errors, Catch::Contains("No space left on device"));
  CHECK(acked > 100);

  // No corruption: the log opens (cutting at most an unfinished frame), verifies, and holds
  // every record the writer was told was durable.
  auto reopened = AuditLog::open(log, AuditLogOptions{64 << 10, 256 << 20, {}});
  REQUIRE(reopened);
  AuditLog& l = **reopened;
  CHECK(l.last_seq() >= acked);
  CHECK(verify_audit_log(log, std::nullopt).ok());

  // In process: appends are refused with a clear reason while the disk is full...
  Result<uint64_t> r = l.append_durable(event(0));
  for (int i = 1; r && i < 2000; ++i) r = l.append_durable(event(i));
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message(), Catch::Contains("No space left on device"));
  CHECK_THAT(l.refusing(), Catch::Contains("the last write failed"));
  auto refused = l.append(event(-1));
  CHECK_FALSE(refused);
  const uint64_t durable = l.durable_seq();

  // ...and resume once space is freed: the pending batch is written on the next retry.
  fs::remove(dir / "disk" / "filler");
  bool resumed = false;
  for (int i = 0; i < 50 && !resumed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    resumed = l.refusing().empty();
  }
  REQUIRE(resumed);
  auto after = l.append_durable(event(9999));
  REQUIRE(after);
  CHECK(*after > durable);
  reopened->reset();
  CHECK(count_contiguous(log) == *after);
  CHECK(verify_audit_log(log, std::nullopt).ok());
}

TEST_CASE("checkpoints: a TPM quote over the chain head verifies; another key or head does not",
          "[fixture][audit]") {
  TempDir dir;
  auto board = boards::load_board("sim");
  REQUIRE(board);
  auto tpm = attestation::Tpm::connect(testing::fixture_tcti());
  REQUIRE(tpm);
  attestation::ProvisionOptions opts{board->name, board->trust_domain,
                                     {board->srk_handle, board->ek_handle, board->ak_handle}};
  auto node = attestation::provision_node(**tpm, dir / "state", opts);
  REQUIRE(node);
  auto sel = attestation::parse_pcr_selection(board->quote_selection());
  REQUIRE(sel);

  const fs::path log_dir = dir / "log";
  auto log = AuditLog::open(log_dir, AuditLogOptions{});
  REQUIRE(log);
  auto checkpoint = [&](int appended_meanwhile) {
    auto [seq, head] = (*log)->head();
    auto q = (*tpm)->quote(board->ak_handle, *sel, checkpoint_qualifying_data(seq, head));
    REQUIRE(q);
    // Records keep arriving while the TPM quotes.
    for (int i = 0; i < appended_meanwhile; ++i) REQUIRE((*log)->append(event(100 + i)));
    auto c = (*log)->append_checkpoint(seq, head, q->signed_attest, attestation::encode_pcrs_tpm2tools(q->pcrs));
    REQUIRE(c);
    return *c;
  };
  for (int i = 0; i < 10; ++i) REQUIRE((*log)->append(event(i)));
  checkpoint(0);
  for (int i = 0; i < 9; ++i) REQUIRE((*log)->append(event(i)));
  const uint64_t last = checkpoint(1);
  REQUIRE((*log)->wait_durable(last));
  log->reset();

  auto v = verify_audit_log(log_dir, node->identity.ak_public);
  INFO((v.problems.empty() ? "" : v.problems[0]));
  CHECK(v.ok());
  CHECK(v.checkpoints == 2);
  CHECK(v.checkpoints_verified == 2);
  CHECK(v.last_seq == 22);

  // `outpost audit verify` says the same, with the AK from the node's state.
  auto cli = testing::run_outpost({"audit", "verify", "--state", (dir / "state").string(), "--dir", log_dir.string()});
  INFO(cli.out << cli.err);
  CHECK(cli.exit_code == 0);
  CHECK_THAT(cli.out, Catch::Contains("22 records (1..22) in 1 segments, chain unbroken; 2 checkpoints, 2 quotes verified"));
  auto tail = testing::run_outpost({"audit", "tail", "-n", "1", "--json", "--state", (dir / "state").string(), "--dir",
                                    log_dir.string()});
  CHECK(tail.exit_code == 0);
  CHECK_THAT(tail.out, Catch::Contains("\"kind\":\"checkpoint\"") && Catch::Contains("\"head_seq\":20"));

  // Another key: every checkpoint is refused, by record.
  auto other = EcPrivateKey::generate();
  REQUIRE(other);
  auto wrong = verify_audit_log(log_dir, other->public_key());
  CHECK(wrong.problems.size() == 2);
  CHECK_THAT(wrong.problems[0], Catch::Contains("checkpoint 11: quote rejected"));

  // A checkpoint appended for a head that is not the record before it.
  {
    auto again = AuditLog::open(log_dir, AuditLogOptions{});
    REQUIRE(again);
    auto [seq, head] = (*again)->head();
    Digest wrong_head = head;
    wrong_head[0] ^= 1;
    auto q = (*tpm)->quote(board->ak_handle, *sel, checkpoint_qualifying_data(seq, wrong_head));
    REQUIRE(q);
    REQUIRE((*again)->append_checkpoint(seq, wrong_head, q->signed_attest, attestation::encode_pcrs_tpm2tools(q->pcrs)));
    CHECK_FALSE((*again)->append_checkpoint(seq + 5, head, q->signed_attest, {}));  // a head from the future
  }
  auto bad = verify_audit_log(log_dir, node->identity.ak_public);
  REQUIRE(bad.problems.size() == 1);
  CHECK_THAT(bad.problems[0], Catch::Contains("checkpoint 23 names head 22 with a hash that is not that record's"));
}

}  // namespace outpost::offline_cache
