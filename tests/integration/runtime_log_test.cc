// The runtime measurement log against swtpm, through the real binaries: the pre-start hook
// (`outpost node measure`), outpostd measuring itself, its config, the bundle and each agent
// into PCR 23, a quote taken through outpostd, and the responder's `outpost eventlog verify`.
// Each case runs a swtpm of its own.
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <thread>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "outpost/firmware_hooks/runtime_log.h"
#include "test_support.h"

namespace outpost {
namespace {

using testing::eventually;

namespace fs = std::filesystem;
namespace json = boost::json;
namespace fh = firmware_hooks;
using testing::TempDir;

testing::CommandResult ok(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  auto r = testing::run_outpost(args, env);
  INFO("outpost " << (args.empty() ? "" : args[0]) << " " << (args.size() > 1 ? args[1] : "") << "\n" << r.out << r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

// An agent's program: the agent runs under a uid of its own, so it must be readable and
// executable by others (as anything installed under /usr is).
constexpr fs::perms kProgram = fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec;

void write_text(const fs::path& p, const std::string& text, fs::perms perms = fs::perms::owner_read | fs::perms::owner_write) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
  fs::permissions(p, perms);
}

constexpr const char* kPolicy = R"(version: 1
issuer: runtime-log.outpost.test
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

const std::string kAgentV1 = "#!/bin/sh\n# writer v1\nexec sleep 300\n";
const std::string kAgentV2 = "#!/bin/sh\n# writer v2: changed on disk\nexec sleep 300\n";

struct Node {
  TempDir dir;
  testing::Swtpm swtpm{dir / "swtpm"};
  fs::path state = dir / "state";
  fs::path socket = dir / "run" / "outpostd.sock";
  fs::path config = dir / "outpostd.yaml";
  fs::path log = state / "measurements" / "runtime.log";
  fs::path agent = dir / "agent" / "writer.sh";
  std::unique_ptr<testing::Background> daemon;

  std::vector<std::string> node_opts() const { return {"--state", state.string(), "--tcti", swtpm.tcti()}; }
  std::vector<std::string> env() const { return {"OUTPOST_SOCKET=" + socket.string()}; }
  std::vector<std::string> with(std::vector<std::string> a) const {
    for (const auto& o : node_opts()) a.push_back(o);
    return a;
  }

  void provision() {
    const auto p = [&](const char* n) { return (dir / n).string(); };
    write_text(dir / "policy.yaml", kPolicy);
    ok({"keygen", "--out", p("k.pem")});
    ok({"trust", "init", "--key", p("k.pem.pub"), "--threshold", "1", "-o", p("root.json")});
    ok({"bundle", "build", p("policy.yaml"), "-o", p("b.opb")});
    ok({"bundle", "sign", p("b.opb"), "--key", p("k.pem")});
    ok(with({"node", "init", "--board", "sim"}));
    ok(with({"trust", "pin", p("root.json")}));
    ok(with({"bundle", "install", p("b.opb")}));
    write_text(config, "board: sim\nstate_dir: " + state.string() + "\ntcti: \"" + swtpm.tcti() + "\"\nsocket: " +
                           socket.string() + "\n" + testing::agent_uid_config());
    write_text(agent, kAgentV1, kProgram);
    write_text(dir / "agent" / "manifest.yaml", "name: writer\ncommand: " + agent.string() + "\nrestart: never\n");
  }

  void start_daemon() {
    daemon = std::make_unique<testing::Background>(
        std::vector<std::string>{testing::outpostd_path(), "--config", config.string()}, dir / "outpostd.log");
    bool up = eventually([&] { return testing::run_outpost({"agent", "list", "--socket", socket.string()}).exit_code == 0; }, 30);
    INFO(*read_text_file(dir / "outpostd.log"));
    REQUIRE(up);
  }

  void stop_daemon() {
    REQUIRE(daemon->stop() == 0);
    daemon.reset();
  }

  void deploy() { ok({"agent", "deploy", (dir / "agent" / "manifest.yaml").string()}, env()); }

  // A quote of the board's PCRs (0-7 and 23) taken by outpostd; returns its directory.
  fs::path quote(const std::string& name, const std::string& nonce) {
    const fs::path out = dir / name;
    auto args = with({"attest", "quote", "--nonce", nonce, "--out", out.string()});
    ok(args, env());
    return out;
  }

  testing::CommandResult verify(const fs::path& q, const std::string& nonce, const fs::path& runtime_log,
                                std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"eventlog", "verify", "--quote", q.string(), "--ak", (q / "ak.pem").string(),
                                     "--nonce", nonce, "--runtime", runtime_log.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return testing::run_outpost(args);
  }

  fh::RuntimeLog read_log() const {
    auto text = read_text_file(log);
    REQUIRE(text);
    auto parsed = fh::parse_runtime_log(*text);
    INFO(*text);
    REQUIRE(parsed);
    return *parsed;
  }
};

size_t count_kind(const fh::RuntimeLog& log, std::string_view kind) {
  size_t n = 0;
  for (const auto& e : log.entries) n += e.kind == kind;
  return n;
}

std::string hex_sha256(const std::string& s) { return hex_encode(sha256(s)); }

}  // namespace

TEST_CASE("outpost's launches replay to the quoted PCR 23; a changed agent binary is named", "[runtime-log]") {
  Node n;
  n.provision();

  // The pre-start hook measures outpostd and the config before outpostd runs.
  auto hook = ok({"node", "measure", "--config", n.config.string()});
  CHECK(hook.out.find("measured  outpostd") != std::string::npos);
  CHECK(hook.out.find("measured  config") != std::string::npos);
  {
    auto log = n.read_log();
    REQUIRE(log.entries.size() == 2);
    CHECK(log.header.pcr == 23);
    CHECK(log.entries[1].digest == sha256(*read_text_file(n.config)));
  }

  n.start_daemon();
  n.deploy();
  {
    // outpostd found its own and its config's measurements already in this boot's log (one
    // entry each), then measured the bundle in force and the agent before it ran.
    auto log = n.read_log();
    CHECK(count_kind(log, fh::runtime_kind::outpostd) == 1);
    CHECK(count_kind(log, fh::runtime_kind::config) == 1);
    REQUIRE(count_kind(log, fh::runtime_kind::bundle) == 1);
    REQUIRE(count_kind(log, fh::runtime_kind::agent) == 1);
    CHECK(log.entries.back().name == "writer");
    CHECK(hex_encode(log.entries.back().digest) == hex_sha256(kAgentV1));
  }

  {
    // The CLI lists and replays a runtime log like a boot log.
    auto show = ok({"eventlog", "show", n.log.string(), "--json"});
    json::value v = json::parse(show.out);
    CHECK(v.at("format") == "outpost-runtime");
    CHECK(v.at("entries").as_array().size() == 4);
    auto replay = ok({"eventlog", "replay", n.log.string(), "--json"});
    CHECK(json::parse(replay.out).at("sha256").at("23") == hex_encode(fh::replay_runtime_log(n.read_log())).c_str());
  }

  const std::string nonce1 = "0a0b0c0d";
  fs::path q1 = n.quote("q1", nonce1);
  {
    auto r = n.verify(q1, nonce1, n.log, {"--expect", "agent/writer=" + hex_sha256(kAgentV1)});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("runtime log   ok: 4 entries replay sha256 PCR 23 to the quoted value") != std::string::npos);
  }

  // The binary changes on disk and is deployed again: outpostd measures the new one in, and
  // a responder holding the old reference sees which agent changed.
  ok({"agent", "stop", "writer"}, n.env());
  write_text(n.agent, kAgentV2, kProgram);
  REQUIRE(eventually([&] { return testing::run_outpost({"agent", "deploy", (n.dir / "agent" / "manifest.yaml").string()},
                                                       n.env()).exit_code == 0; }, 10));
  const std::string nonce2 = "1122334455";
  fs::path q2 = n.quote("q2", nonce2);
  {
    auto r = n.verify(q2, nonce2, n.log, {"--expect", "agent/writer=" + hex_sha256(kAgentV1), "--json"});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    json::value v = json::parse(r.out);
    const auto& rt = v.at("runtime").as_object();
    CHECK(rt.at("replay_matches").as_bool());  // the log is truthful...
    REQUIRE(rt.at("problems").as_array().size() == 1);
    const std::string problem(rt.at("problems").as_array()[0].as_string());
    CHECK(problem.find("agent \"writer\" measured sha256:" + hex_sha256(kAgentV2)) != std::string::npos);  // ...and names it
    CHECK(problem.find("expected sha256:" + hex_sha256(kAgentV1)) != std::string::npos);
  }
  // The old quote covers only the entries logged before it.
  {
    auto r = n.verify(q1, nonce1, n.log);
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("covers only the first 4 of 5 entries; entry 5 (agent \"writer\")") != std::string::npos);
  }

  // A log rewritten to hide the change (the v2 entry re-made for v1, template and all) no
  // longer replays to the quoted PCR.
  {
    auto log = n.read_log();
    fh::RuntimeMeasurement forged = log.entries.back();
    forged.digest = sha256(kAgentV1);
    forged.template_hash = fh::runtime_template_hash(forged.kind, forged.name, forged.digest);
    std::string text = fh::format_runtime_header(log.header) + "\n";
    for (size_t i = 0; i + 1 < log.entries.size(); ++i) text += fh::format_runtime_entry(log.entries[i]) + "\n";
    text += fh::format_runtime_entry(forged) + "\n";
    write_text(n.dir / "forged.log", text);
    auto r = n.verify(q2, nonce2, n.dir / "forged.log", {"--expect", "agent/writer=" + hex_sha256(kAgentV1)});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("but the quote says") != std::string::npos);

    // Only the digest edited: the entry's own template gives it away, by line.
    std::string edited = *read_text_file(n.log);
    const std::string v2 = hex_sha256(kAgentV2);
    edited.replace(edited.find(v2), v2.size(), hex_sha256(kAgentV1));
    write_text(n.dir / "edited.log", edited);
    auto e = n.verify(q2, nonce2, n.dir / "edited.log");
    CHECK(e.exit_code == 1);
    CHECK(e.err.find("runtime log line 6: template hash does not match") != std::string::npos);
  }

  // A restart of outpostd adds nothing: the same binary, config, bundle and agent are in the log.
  n.stop_daemon();
  const size_t before = n.read_log().entries.size();
  n.start_daemon();
  REQUIRE(eventually([&] { return testing::run_outpost({"agent", "list", "--json"}, n.env()).out.find("running") !=
                                  std::string::npos; }, 15));
  CHECK(n.read_log().entries.size() == before);
  const std::string nonce3 = "77";
  fs::path q3 = n.quote("q3", nonce3);
  // The log keeps every binary that ran under the name since the TPM booted: v2 alone as the
  // reference still names the v1 run; accepting both passes.
  auto only_v2 = n.verify(q3, nonce3, n.log, {"--expect", "agent/writer=" + hex_sha256(kAgentV2)});
  CHECK(only_v2.exit_code == 1);
  CHECK(only_v2.out.find("entry 4 (line 5): agent \"writer\" measured sha256:" + hex_sha256(kAgentV1)) != std::string::npos);
  auto r3 = n.verify(q3, nonce3, n.log,
                     {"--expect", "agent/writer=" + hex_sha256(kAgentV1), "--expect", "agent/writer=" + hex_sha256(kAgentV2)});
  INFO(r3.out << r3.err);
  CHECK(r3.exit_code == 0);
  n.stop_daemon();
}

TEST_CASE("a crash between the log append and the PCR extend is completed; a torn line is cut", "[runtime-log]") {
  Node n;
  n.provision();
  ok({"node", "measure", "--config", n.config.string()});
  auto log = n.read_log();

  // As if the hook died after its fdatasync and before its extend: a whole line the TPM never saw.
  fh::RuntimeMeasurement pending;
  pending.seq = log.entries.size() + 1;
  pending.kind = std::string(fh::runtime_kind::agent);
  pending.name = "pending";
  pending.digest = sha256(std::string("pending agent"));
  pending.template_hash = fh::runtime_template_hash(pending.kind, pending.name, pending.digest);
  pending.time = "2026-11-28T00:00:00Z";
  {
    std::ofstream f(n.log, std::ios::app | std::ios::binary);
    f << fh::format_runtime_entry(pending) << "\n" << R"({"seq":)";  // and a torn line after it
  }
  auto again = ok({"node", "measure", "--config", n.config.string()});
  CHECK(again.out.find("cut a torn last line") != std::string::npos);
  CHECK(again.out.find("extended the last entry") != std::string::npos);
  CHECK(again.out.find("unchanged outpostd") != std::string::npos);
  CHECK(n.read_log().entries.size() == 3);

  // The PCR now agrees with the whole log.
  const std::string nonce = "abcdef";
  const fs::path q = n.dir / "q";
  ok(n.with({"attest", "quote", "--nonce", nonce, "--out", q.string()}));
  auto r = n.verify(q, nonce, n.log);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);

  // Something outside outpost extends PCR 23: the log no longer explains it, and nothing more
  // is measured (so nothing more launched) on this TPM boot, not even what is already logged.
  auto foreign = testing::run_program({"tpm2_pcrextend", "-T", n.swtpm.tcti(),
                                       "23:sha256=00000000000000000000000000000000000000000000000000000000000000aa"});
  REQUIRE(foreign.exit_code == 0);
  auto refused = testing::run_outpost({"node", "measure", "--config", n.config.string()});
  CHECK(refused.exit_code == 1);
  CHECK(refused.err.find("something else extended or reset the PCR") != std::string::npos);

  // A log outpost did not write (altered in place) is refused at open and left as it is.
  std::string text = *read_text_file(n.log);
  text.replace(text.find("pending"), 7, "PENDING");
  write_text(n.log, text);
  auto bad = testing::run_outpost({"node", "measure", "--config", n.config.string()});
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("template hash does not match") != std::string::npos);
  CHECK(bad.err.find("not overwritten") != std::string::npos);
  CHECK(*read_text_file(n.log) == text);
}

TEST_CASE("a responder replays the boot chain and outpost's launches against one quote", "[runtime-log]") {
  // swtpm has no firmware: a real UEFI log (Arch Linux, from ../shared/eventlogs) is played into
  // its PCRs as the firmware would have, event by event, before outpost measures anything.
  const fs::path sample = fs::path(OUTPOST_EVENTLOG_SAMPLES) / "event-arch-linux.bin";
  auto boot_bytes = read_file(sample);
  INFO("needs the sample logs in " << OUTPOST_EVENTLOG_SAMPLES);
  REQUIRE(boot_bytes);
  auto boot = fh::parse_event_log(*boot_bytes);
  REQUIRE(boot);

  Node n;
  n.provision();
  {
    auto tpm = attestation::Tpm::connect(n.swtpm.tcti());
    REQUIRE(tpm);
    for (const auto& e : boot->events) {
      if (e.type == fh::event_type::no_action) continue;
      const Bytes* d = e.digest(attestation::hash_alg::sha256);
      REQUIRE(d != nullptr);
      Digest digest;
      std::copy(d->begin(), d->end(), digest.begin());
      REQUIRE((*tpm)->pcr_extend(e.pcr, digest));
    }
  }
  ok({"node", "measure", "--config", n.config.string()});
  n.start_daemon();
  n.deploy();
  const std::string nonce = "b007";
  const fs::path q = n.quote("q-boot", nonce);
  n.stop_daemon();

  auto both = n.verify(q, nonce, n.log, {"--boot", sample.string(), "--expect", "agent/writer=" + hex_sha256(kAgentV1)});
  INFO(both.out << both.err);
  CHECK(both.exit_code == 0);
  CHECK(both.out.find("runtime log   ok: 4 entries") != std::string::npos);
  CHECK(both.out.find("boot log      ok: 25 events") != std::string::npos);

  // One event's sha256 digest altered in the boot log: the PCR it went into no longer
  // matches, and the event is named.
  size_t victim = 0;
  for (const auto& e : boot->events) {
    if (e.type != fh::event_type::no_action && e.pcr == 4) {
      victim = e.index;
      break;
    }
  }
  REQUIRE(victim != 0);
  const Bytes& d = *boot->events[victim].digest(attestation::hash_alg::sha256);
  Bytes altered = *boot_bytes;
  auto at = std::search(altered.begin() + static_cast<std::ptrdiff_t>(boot->events[victim].offset), altered.end(),
                        d.begin(), d.end());
  REQUIRE(at != altered.end());
  *at ^= 0x01;
  {
    std::ofstream f(n.dir / "altered-boot.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(altered.data()), static_cast<std::streamsize>(altered.size()));
  }
  auto bad = n.verify(q, nonce, n.log, {"--boot", (n.dir / "altered-boot.bin").string()});
  INFO(bad.out << bad.err);
  CHECK(bad.exit_code == 1);
  CHECK(bad.out.find("runtime log   ok") != std::string::npos);
  CHECK(bad.out.find("sha256 PCR 4: no_prefix_matches, first divergent event " + std::to_string(victim)) !=
        std::string::npos);
}

}  // namespace outpost
