// outpost-hub and the node's sync, end to end with real parts: a swtpm per case, outpost node
// init, outpostd syncing its audit log to an outpost-hub over loopback TLS, the CLI publishing
// bundles and pulling evidence. Faults: the hub down for the whole run, a proxy that cuts
// connections mid-upload, the hub restarted mid-sync, replayed and forked uploads.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <thread>

#include "outpost/base/files.h"
#include "outpost/offline_cache/audit_frames.h"
#include "outpost/attestation/node.h"
#include "soft_tpm.h"
#include "sync/hub_client.h"
#include "test_support.h"

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace outpost;
using outpost::testing::TempDir;

namespace {

testing::CommandResult ok(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  return testing::expect_ok(args, env);
}
using testing::eventually;
using testing::write_text;

// A loopback TCP proxy that cuts each of its first `max_cuts` connections once `cut_after`
// bytes went towards the server: an upload broken off in the middle.
class CuttingProxy {
 public:
  CuttingProxy(int target_port, size_t cut_after, int max_cuts)
      : target_(target_port), cut_after_(cut_after), max_cuts_(max_cuts) {
    listen_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listen_, 64) == 0);
    socklen_t len = sizeof a;
    ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~CuttingProxy() {
    stop_ = true;
    ::shutdown(listen_, SHUT_RDWR);
    ::close(listen_);
    acceptor_.join();
    for (auto& t : pumps_) t.join();
  }
  int port() const { return port_; }
  int cuts() const { return cuts_; }

 private:
  void accept_loop() {
    while (!stop_) {
      int c = ::accept(listen_, nullptr, nullptr);
      if (c < 0) return;
      int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(target_));
      if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(s);
        ::close(c);
        continue;
      }
      pumps_.emplace_back([this, c, s] { pump(c, s); });
    }
  }
  void pump(int c, int s) {
    size_t up = 0;
    const bool cut = cuts_started_++ < max_cuts_;
    char buf[16384];
    while (!stop_) {
      pollfd p[2] = {{c, POLLIN, 0}, {s, POLLIN, 0}};
      if (::poll(p, 2, 200) <= 0) continue;
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n <= 0 || ::write(p[1 - i].fd, buf, static_cast<size_t>(n)) != n) {
          done = true;
          break;
        }
        if (i == 0) up += static_cast<size_t>(n);
        if (cut && up > cut_after_) {
          ++cuts_;
          done = true;
        }
      }
      if (done) break;
    }
    ::close(c);
    ::close(s);
  }

  int target_;
  size_t cut_after_;
  int max_cuts_;
  int listen_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> cuts_{0}, cuts_started_{0};
  std::thread acceptor_;
  std::vector<std::thread> pumps_;
};

struct HubNode {
  TempDir dir;
  testing::Swtpm swtpm{dir / "swtpm"};
  fs::path state = dir / "state";
  fs::path socket = dir / "run" / "outpostd.sock";
  fs::path hubdir = dir / "hub";
  int hub_port = testing::unused_port();
  std::string pin;
  std::string node_id;
  std::unique_ptr<testing::Background> daemon, hub;

  std::string p(const char* n) const { return (dir / n).string(); }
  std::vector<std::string> env() const { return {"OUTPOST_SOCKET=" + socket.string()}; }
  std::vector<std::string> with_node(std::vector<std::string> a) const {
    a.insert(a.end(), {"--state", state.string(), "--tcti", swtpm.tcti()});
    return a;
  }

  void provision() {
    ok({"keygen", "--out", p("k.pem")});
    ok({"trust", "init", "--key", p("k.pem.pub"), "--threshold", "1", "-o", p("root.json")});
    const std::string policy = std::string(OUTPOST_SOURCE_DIR) + "/examples/policy/edge-agents.yaml";
    for (int v : {1, 2}) {
      const std::string b = p(("b" + std::to_string(v) + ".opb").c_str());
      ok({"bundle", "build", policy, "-o", b, "--version", std::to_string(v)});
      ok({"bundle", "sign", b, "--key", p("k.pem")});
    }
    ok(with_node({"node", "init", "--board", "sim"}));
    ok(with_node({"trust", "pin", p("root.json")}));
    ok(with_node({"bundle", "install", p("b1.opb")}));
    auto info = ok(with_node({"node", "info", "--json"}));
    json::value v = json::parse(info.out);
    node_id = std::string(v.at("node_id").as_string());
    write_text(dir / "ak.pem", std::string(v.at("ak_public_pem").as_string()));
    // The hub: its development PKI, the bundle trust, a fixed port the node is told about.
    auto init = testing::run_program({OUTPOST_HUB_BIN, "init", hubdir.string(), "--bundle-trust", p("root.json")});
    INFO(init.out << init.err);
    REQUIRE(init.exit_code == 0);
    auto yaml = read_text_file(hubdir / "hub.yaml");
    REQUIRE(yaml);
    std::string y = *yaml;
    y.replace(y.find("127.0.0.1:8443"), 14, "127.0.0.1:" + std::to_string(hub_port));
    write_text(hubdir / "hub.yaml", y);
    auto pinfile = read_text_file(hubdir / "server.pin");
    REQUIRE(pinfile);
    pin = pinfile->substr(0, 64);
  }

  void start_hub() {
    hub = std::make_unique<testing::Background>(
        std::vector<std::string>{OUTPOST_HUB_BIN, "--config", (hubdir / "hub.yaml").string()}, dir / "hub.log");
    REQUIRE(eventually([&] { return hub_get("/v1/nodes").status == 200; }, 20));
  }
  void stop_hub() {
    REQUIRE(hub->stop() == 0);
    hub.reset();
  }

  void start_daemon(int port, const std::string& extra = "", int bundle_wait_s = 5) {
    write_text(dir / "outpostd.yaml",
               "board: sim\nstate_dir: " + state.string() + "\ntcti: \"" + swtpm.tcti() + "\"\nsocket: " + socket.string() +
                   "\ninbox_poll_ms: 100\n" + testing::agent_uid_config() + "hub:\n  url: https://127.0.0.1:" + std::to_string(port) + "\n  pin_sha256: " + pin +
                   "\n  idle_poll_ms: 100\n  backoff_initial_ms: 100\n  backoff_max_ms: 800\n  bundle_wait_s: " +
                   std::to_string(bundle_wait_s) + "\n" + extra);
    daemon = std::make_unique<testing::Background>(
        std::vector<std::string>{testing::outpostd_path(), "--config", (dir / "outpostd.yaml").string()}, dir / "outpostd.log");
    bool up = eventually([&] { return testing::run_outpost({"status", "--json"}, env()).exit_code == 0; }, 30);
    INFO(*read_text_file(dir / "outpostd.log"));
    REQUIRE(up);
  }

  json::object status() {
    auto r = testing::run_outpost({"status", "--json"}, env());
    REQUIRE(r.exit_code == 0);
    return json::parse(r.out).as_object();
  }
  json::object sync_status() { return status().at("sync").as_object(); }

  // `n` records: each a refused "bundle" dropped in outpostd's inbox.
  void make_records(int n) {
    fs::create_directories(state / "inbox");
    for (int i = 0; i < n; ++i) write_text(state / "inbox" / ("junk-" + std::to_string(10000 + i) + ".opb"), "not a bundle");
    REQUIRE(eventually([&] {
      for (const auto& e : fs::directory_iterator(state / "inbox")) {
        if (e.path().extension() == ".opb") return false;
      }
      return true;
    }, 60));
  }

  // A role's token, as `outpost-hub init` wrote it (hub/<role>.token).
  std::string token(const std::string& role) const {
    auto t = read_text_file(hubdir / (role + ".token"));
    REQUIRE(t);
    return t->substr(0, 64);
  }
  std::string token_file(const std::string& role) const { return (hubdir / (role + ".token")).string(); }
  // As `role` ("" sends no credential); the responder reads everything a test looks at.
  sync::HubResponse hub_request(sync::HubRequest req, const std::string& role = "responder") {
    sync::HubEndpoint ep;
    ep.host = "127.0.0.1";
    ep.port = static_cast<uint16_t>(hub_port);
    ep.pin_sha256 = pin;
    if (!role.empty()) ep.bearer_token = token(role);
    auto r = sync::hub_request_blocking(ep, std::move(req));
    if (!r) return {};
    return *r;
  }
  sync::HubResponse hub_get(const std::string& target, const std::string& role = "responder") { return hub_request({"GET", target}, role); }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(hub_port); }

  // Waits until the hub acknowledged everything durable; returns that sequence number.
  uint64_t wait_caught_up(int seconds) {
    uint64_t acked = 0;
    bool done = eventually([&] {
      auto s = status();
      const auto& y = s.at("sync").as_object();
      acked = y.at("acked_seq").to_number<uint64_t>();
      return y.at("backlog").to_number<uint64_t>() == 0 && acked > 0 &&
             acked == s.at("audit").as_object().at("durable_seq").to_number<uint64_t>();
    }, seconds);
    INFO(json::serialize(status()));
    INFO(*read_text_file(dir / "outpostd.log"));
    REQUIRE(done);
    return acked;
  }

  // Pulls the node's evidence from the hub and verifies it offline; returns the report.
  json::object pull_and_verify(const std::string& name) {
    ok({"evidence", "pull", "--hub", url(), "--pin", pin, "--node", node_id, "--out", p(name.c_str()), "--token-file",
        token_file("responder")});
    auto v = testing::run_outpost({"evidence", "verify", p(name.c_str()), "--trust", p("ak.pem"), "--json"});
    INFO(v.out << v.err);
    REQUIRE(v.exit_code == 0);
    return json::parse(v.out).as_object();
  }
};

}  // namespace

TEST_CASE("the hub down for the whole run, then up: every record arrives exactly once, in order", "[hub]") {
  HubNode n;
  n.provision();
  n.start_daemon(n.hub_port);  // nothing listens there yet
  n.make_records(250);
  REQUIRE(eventually([&] { return !n.sync_status().at("last_error").as_string().empty(); }, 20));
  auto s = n.status();
  CHECK(s.at("sync").as_object().at("backlog").to_number<uint64_t>() > 250);
  CHECK(s.at("sync").as_object().at("last_contact").as_string() == "");

  n.start_hub();
  const uint64_t acked = n.wait_caught_up(60);
  CHECK(n.sync_status().at("last_error").as_string() == "");
  auto report = n.pull_and_verify("pulled.pkg");
  CHECK(report.at("first_seq").to_number<uint64_t>() == 1);
  CHECK(report.at("last_seq").to_number<uint64_t>() >= acked);
  CHECK(report.at("records").to_number<uint64_t>() == report.at("last_seq").to_number<uint64_t>());
  CHECK(report.at("checkpoints_verified").to_number<uint64_t>() >= 1);
  CHECK(report.at("checkpoints_verified") == report.at("checkpoints"));
  // The hub holds each record once: its records equal the node's, byte for byte.
  Bytes local;
  REQUIRE(offline_cache::read_audit_frames(n.state / "audit" / "log", 1, acked, [&](const offline_cache::AuditFrame& f) {
    local.insert(local.end(), f.frame.begin(), f.frame.end());
    return true;
  }));
  auto info = n.hub_get("/v1/nodes/" + n.node_id);
  REQUIRE(info.status == 200);
  CHECK(json::parse(info.body).at("acked_seq").to_number<uint64_t>() == acked);
  {  // its metrics count what it stored (issue 15): every record once, uploads by route and code
    auto m = n.hub_get("/metrics");
    REQUIRE(m.status == 200);
    INFO(m.body);
    CHECK(m.header("content-type") == "text/plain; version=0.0.4; charset=utf-8");
    CHECK_THAT(m.body, Catch::Contains("\noutpost_hub_records_stored_total " + std::to_string(acked) + "\n"));
    CHECK_THAT(m.body, Catch::Contains("\noutpost_hub_nodes 1\n"));
    CHECK_THAT(m.body, Catch::Contains("outpost_hub_requests_total{route=\"records\",code=\"200\"}"));
    CHECK_THAT(m.body, Catch::Contains("outpost_hub_request_seconds_count{route=\"records\"}"));
  }

  SECTION("a replayed upload is deduplicated, a forked one and a gap refused, an unknown node refused") {
    auto replay = n.hub_request({"POST", "/v1/nodes/" + n.node_id + "/records", std::string(as_chars(local)), "application/octet-stream"});
    INFO(replay.body);
    REQUIRE(replay.status == 200);
    CHECK(json::parse(replay.body).at("stored").to_number<uint64_t>() == 0);
    CHECK(json::parse(replay.body).at("duplicates").to_number<uint64_t>() == acked);

    // Seq 2 rewritten (a valid frame, another payload) with no checkpoint quote behind it:
    // refused, and kept as an alert, but not a fork (anyone can make such bytes; a fork the
    // node's AK signed is in tests/unit/hub_ingest_test.cc).
    offline_cache::SegmentParse parsed = offline_cache::parse_segment(local, "local");
    REQUIRE(parsed.records.size() >= 3);
    Bytes forked(local.begin(), local.begin() + static_cast<ptrdiff_t>(parsed.records[2].offset));
    const size_t start = parsed.records[1].offset + 8;
    const uint32_t len = forked[start - 4] | forked[start - 3] << 8 | forked[start - 2] << 16 | uint32_t(forked[start - 1]) << 24;
    // Flip the case of a letter in the record's text (a valid record, another hash).
    size_t at = start;
    while (at < start + len && !(forked[at] >= 'a' && forked[at] <= 'z' && forked[at + 1] >= 'a' && forked[at + 1] <= 'z')) ++at;
    REQUIRE(at < start + len);
    forked[at] ^= 0x20;
    Digest h = sha256(ByteView(forked.data() + start, len));
    std::copy(h.begin(), h.end(), forked.begin() + static_cast<ptrdiff_t>(start + len));
    auto fork = n.hub_request({"POST", "/v1/nodes/" + n.node_id + "/records", std::string(as_chars(forked)), "application/octet-stream"});
    CHECK(fork.status == 422);
    CHECK(fork.body.find("record 2 differs from the one the hub holds") != std::string::npos);
    auto after = n.hub_get("/v1/nodes/" + n.node_id);
    CHECK(after.body.find("\"kind\":\"refused_upload\"") != std::string::npos);
    CHECK(after.body.find("\"kind\":\"fork\"") == std::string::npos);

    // Records from acked+2 on (one missing): a gap.
    Bytes more;
    REQUIRE(offline_cache::read_audit_frames(n.state / "audit" / "log", acked + 2, acked + 5, [&](const offline_cache::AuditFrame& f) {
      more.insert(more.end(), f.frame.begin(), f.frame.end());
      return true;
    }));
    if (!more.empty()) {
      auto gap = n.hub_request({"POST", "/v1/nodes/" + n.node_id + "/records", std::string(as_chars(more)), "application/octet-stream"});
      CHECK(gap.status == 422);
    }
    auto unknown = n.hub_request({"POST", "/v1/nodes/00112233445566778899aabbccddeeff/records", std::string(as_chars(local)),
                                  "application/octet-stream"});
    CHECK(unknown.status == 404);
  }

  SECTION("enrolment needs credential activation: the real node passed it; a wrong or late answer is refused") {
    // The node above enrolled through the hub's challenge (activation is required by default,
    // and hub.log says so).
    auto hub_log = read_text_file(n.dir / "hub.log");
    REQUIRE(hub_log);
    CHECK(hub_log->find("hub.enrolled node=" + n.node_id + " board=sim activated=yes") != std::string::npos);
    // This TPM's AK under a software EK: a new node id, whose challenge only that EK opens.
    auto real = attestation::NodeIdentity::from_json(*read_text_file(n.state / "node.json"));
    REQUIRE(real);
    attestation::NodeIdentity other = testing::soft_identity(real->ak_public);
    other.ak_public_area = real->ak_public_area;
    const std::string body = other.to_json();
    auto challenge = n.hub_request({"POST", "/v1/enroll", body});
    INFO(challenge.body);
    REQUIRE(challenge.status == 202);
    auto act = json::parse(challenge.body).at("activation").as_object();
    CHECK(act.at("credential_blob").as_string().size() > 100);
    CHECK(act.at("encrypted_secret").as_string().size() > 100);
    const std::string expires = std::to_string(act.at("expires_ms").as_int64());

    sync::HubRequest guess{"POST", "/v1/enroll", body};
    guess.headers["X-Outpost-Activation"] = expires + ":" + std::string(64, '0');
    auto wrong = n.hub_request(guess);
    CHECK(wrong.status == 403);
    CHECK(wrong.body.find("credential activation failed") != std::string::npos);
    sync::HubRequest late{"POST", "/v1/enroll", body};
    late.headers["X-Outpost-Activation"] = "1000:" + std::string(64, '0');
    CHECK(n.hub_request(late).status == 403);
    CHECK(n.hub_get("/v1/nodes/" + other.node_id).status == 404);  // not enrolled
  }

  SECTION("fresh attestation: the node quotes over a hub nonce; a made-up, another node's or reused nonce is refused") {
    REQUIRE(eventually([&] { return !n.sync_status().at("last_attested").as_string().empty(); }, 20));
    auto hub_log = read_text_file(n.dir / "hub.log");
    CHECK(hub_log->find("hub.attested node=" + n.node_id) != std::string::npos);

    auto quote_over = [&](const std::string& nonce_hex, const char* out) {
      ok({"attest", "quote", "--nonce", nonce_hex, "--out", n.p(out)}, n.env());  // through outpostd, which owns the TPM
      auto file = [&](const char* f) { return hex_encode(*read_file(n.dir / out / f)); };
      return json::serialize(json::object{{"nonce", nonce_hex}, {"attest", file("attest.bin")},
                                          {"signature", file("signature.bin")}, {"pcrs", file("pcrs.bin")}});
    };
    auto nonce_of = [&](const std::string& node) {
      auto r = n.hub_get("/v1/nodes/" + node + "/nonce");
      REQUIRE(r.status == 200);
      return std::string(json::parse(r.body).at("nonce").as_string());
    };
    const std::string fresh = nonce_of(n.node_id);
    const std::string body = quote_over(fresh, "q1");
    auto good = n.hub_request({"POST", "/v1/nodes/" + n.node_id + "/attestation", body});
    INFO(good.body);
    CHECK(good.status == 200);
    CHECK(json::parse(good.body).at("verified").as_bool());

    // The same quote sent with another valid nonce: the quote does not carry it.
    std::string swapped = body;
    const std::string other = nonce_of(n.node_id);
    swapped.replace(swapped.find(fresh), fresh.size(), other);
    CHECK(n.hub_request({"POST", "/v1/nodes/" + n.node_id + "/attestation", swapped}).status == 422);
    // A nonce the hub never handed out, quoted for real: refused before the quote is looked at.
    const std::string made_up = "00000000ffffffff" + std::string(48, 'a');
    auto forged = n.hub_request({"POST", "/v1/nodes/" + n.node_id + "/attestation", quote_over(made_up, "q2")});
    CHECK(forged.status == 403);
    CHECK(forged.body.find("not handed out") != std::string::npos);
    CHECK(n.hub_get("/v1/nodes/00112233445566778899aabbccddeeff/nonce").status == 404);
  }

  SECTION("a published bundle reaches the node by its long poll; a rollback and a foreign signature are refused") {
    ok({"bundle", "publish", n.p("b2.opb"), "--hub", n.url(), "--ca", (n.hubdir / "ca.pem").string()},
       {"OUTPOST_HUB_TOKEN=" + n.token("iam")});
    REQUIRE(eventually([&] {
      auto b = n.status().at("bundle");
      return b.is_object() && b.as_object().at("version").to_number<uint64_t>() == 2;
    }, 20));
    auto rollback = testing::run_outpost({"bundle", "publish", n.p("b1.opb"), "--hub", n.url(), "--pin", n.pin, "--token-file",
                                          n.token_file("iam")});
    CHECK(rollback.exit_code != 0);
    CHECK(rollback.err.find("rollback refused") != std::string::npos);
    ok({"keygen", "--out", n.p("other.pem")});
    ok({"bundle", "build", std::string(OUTPOST_SOURCE_DIR) + "/examples/policy/edge-agents.yaml", "-o", n.p("b3.opb"), "--version", "3"});
    ok({"bundle", "sign", n.p("b3.opb"), "--key", n.p("other.pem")});
    auto foreign = testing::run_outpost({"bundle", "publish", n.p("b3.opb"), "--hub", n.url(), "--pin", n.pin, "--token-file",
                                         n.token_file("iam")});
    CHECK(foreign.exit_code != 0);
    CHECK(foreign.err.find("HTTP 422") != std::string::npos);
    // v3 for another board: the hub serves it to no node here. The node keeps polling and is
    // offered v2 still; a client that names no node sees the newest, v3.
    {
      std::string policy = *read_text_file(std::string(OUTPOST_SOURCE_DIR) + "/examples/policy/edge-agents.yaml");
      const std::string from = "boards: [sim, x86-64]";
      REQUIRE(policy.find(from) != std::string::npos);
      policy.replace(policy.find(from), from.size(), "boards: [x86-64]");
      testing::write_text(n.dir / "x86.yaml", policy);
      ok({"bundle", "build", n.p("x86.yaml"), "-o", n.p("x86.opb"), "--version", "3"});
      ok({"bundle", "sign", n.p("x86.opb"), "--key", n.p("k.pem")});
      ok({"bundle", "publish", n.p("x86.opb"), "--hub", n.url(), "--pin", n.pin, "--token-file", n.token_file("iam")});
      auto mine = n.hub_get("/v1/bundle?node=" + n.node_id);
      CHECK(mine.status == 200);
      CHECK(mine.header("x-outpost-bundle-version") == "2");
      auto newest = n.hub_get("/v1/bundle");
      CHECK(newest.header("x-outpost-bundle-version") == "3");
      std::this_thread::sleep_for(std::chrono::seconds(2));  // the node's poll was woken by the publish
      CHECK(n.status().at("bundle").as_object().at("version").to_number<uint64_t>() == 2);
    }
    // A client pinning another key does not talk to this hub.
    auto wrong_pin = testing::run_outpost({"evidence", "pull", "--hub", n.url(), "--pin", std::string(64, 'a'), "--node", n.node_id,
                                           "--out", n.p("x.pkg"), "--token-file", n.token_file("responder")});
    CHECK(wrong_pin.exit_code != 0);
    CHECK(wrong_pin.err.find("not the pinned one") != std::string::npos);
  }
}

TEST_CASE("uploads cut mid-way and a hub restarted mid-sync lose and duplicate nothing", "[hub]") {
  HubNode n;
  n.provision();
  n.start_hub();
  // Small batches through a proxy that cuts the first 6 connections after 24 KiB upstream.
  CuttingProxy proxy(n.hub_port, 24 << 10, 6);
  n.start_daemon(proxy.port(), "  batch_bytes: 32768\n  batch_records: 400\n");
  n.make_records(1200);
  // The hub goes away and comes back while the node is still uploading.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  n.stop_hub();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  n.start_hub();
  const uint64_t acked = n.wait_caught_up(120);
  CHECK(proxy.cuts() >= 1);
  auto report = n.pull_and_verify("pulled.pkg");
  CHECK(report.at("first_seq").to_number<uint64_t>() == 1);
  CHECK(report.at("records").to_number<uint64_t>() == report.at("last_seq").to_number<uint64_t>());
  CHECK(report.at("last_seq").to_number<uint64_t>() >= acked);
  // The node released what the hub holds (whole segments only) and still verifies.
  auto v = testing::run_outpost({"audit", "verify", "--state", n.state.string()});
  INFO(v.out << v.err);
  CHECK(v.exit_code == 0);
}

TEST_CASE("roles: each route takes only its roles' credentials, refusals are logged and counted; fleets reach the node", "[hub-fleet]") {
  HubNode n;
  n.provision();
  {  // Nodes enrolling join fleet "lab"; the credentials are the three `outpost-hub init` wrote.
    std::string y = *read_text_file(n.hubdir / "hub.yaml");
    write_text(n.hubdir / "hub.yaml", y + "fleets:\n  default: lab\nlong_poll_max_seconds: 60\n");
  }
  n.start_hub();
  // Polls held 60 s: what the node learns sooner, it learned by being woken.
  n.start_daemon(n.hub_port, "", 60);
  REQUIRE(eventually([&] { return n.sync_status().at("fleet") == "lab"; }, 30));
  CHECK(*read_text_file(n.state / "fleet") == "lab\n");
  // The node token the hub handed out once the TPM showed itself: kept for the node only.
  REQUIRE(fs::exists(n.state / "hub-token"));
  CHECK((fs::status(n.state / "hub-token").permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
  const std::string node_token = read_text_file(n.state / "hub-token")->substr(0, 64);

  SECTION("roles") {
    // No credential, a made-up one, another role's: 401, 401, 403, with what the route takes.
    auto none = n.hub_get("/v1/nodes", "");
    CHECK(none.status == 401);
    CHECK(none.header("www-authenticate") == "Bearer realm=\"outpost-hub\"");
    CHECK_THAT(none.body, Catch::Contains("needs a credential of role operator, responder"));
    sync::HubEndpoint made_up;
    made_up.host = "127.0.0.1";
    made_up.port = static_cast<uint16_t>(n.hub_port);
    made_up.pin_sha256 = n.pin;
    made_up.bearer_token = std::string(64, 'f');
    auto unknown = sync::hub_request_blocking(made_up, {"GET", "/v1/nodes"});
    REQUIRE(unknown);
    CHECK(unknown->status == 401);
    CHECK_THAT(unknown->body, Catch::Contains("not one of this hub's credentials"));

    struct Case {
      const char* method;
      std::string target;
      const char* role;
      unsigned status;
    };
    const std::string node = "/v1/nodes/" + n.node_id;
    const std::vector<Case> cases = {
        {"GET", "/v1/nodes", "operator", 200},          {"GET", "/v1/nodes", "responder", 200},
        {"GET", "/v1/nodes", "iam", 403},               {"GET", node, "operator", 200},
        {"GET", node, "iam", 403},                      {"GET", node + "/evidence", "responder", 200},
        {"GET", node + "/evidence", "operator", 403},   {"GET", node + "/evidence", "iam", 403},
        {"GET", node + "/evidence", "", 401},           {"PUT", node + "/fleet", "responder", 403},
        {"PUT", node + "/fleet", "iam", 403},           {"PUT", node + "/fleet", "", 401},
        {"POST", "/v1/bundles", "operator", 403},       {"POST", "/v1/bundles", "responder", 403},
        {"POST", "/v1/bundles", "", 401},               {"GET", "/metrics", "operator", 200},
        {"GET", "/metrics", "iam", 403},                {"GET", "/metrics", "", 401},
        // (404: let in, and nothing is published yet.)
        {"GET", "/v1/bundle", "iam", 404},              {"GET", "/v1/bundle", "", 401},
        // What is served to a node: to the roles, or to that node with its node token.
        {"GET", "/v1/bundle?node=" + n.node_id, "operator", 404}, {"GET", "/v1/bundle?node=" + n.node_id, "", 401},
        {"GET", "/v1/bundle?node=" + n.node_id, "node", 404},     {"GET", "/v1/bundle?node=" + n.node_id, "other-node", 401},
        // What a node sends needs no credential: its TPM signed it (a nonce alone is worth nothing).
        {"GET", node + "/nonce", "", 200},
    };
    for (const auto& c : cases) {
      sync::HubRequest req(c.method, c.target, c.method == std::string("PUT") ? "{\"fleet\":\"x\"}" : "");
      const std::string role = c.role;
      if (role == "node") req.headers["X-Outpost-Node-Token"] = node_token;
      if (role == "other-node") req.headers["X-Outpost-Node-Token"] = std::string(64, '0');
      auto r = n.hub_request(req, role == "node" || role == "other-node" ? "" : role);
      INFO(c.method << " " << c.target << " as " << (*c.role ? c.role : "nobody") << ": " << r.body);
      CHECK(r.status == c.status);
    }
    auto publish = testing::run_outpost({"bundle", "publish", n.p("b2.opb"), "--hub", n.url(), "--pin", n.pin});
    CHECK(publish.exit_code != 0);
    CHECK_THAT(publish.err, Catch::Contains("HTTP 401"));
    CHECK(n.hub_get("/v1/nodes/" + n.node_id).body.find("\"fleet\":\"lab\"") != std::string::npos);  // nothing moved it
    // node.json is public: sent again, it gets neither the fleet nor a token; asking for a
    // token brings the TPM challenge.
    const std::string node_json = *read_text_file(n.state / "node.json");
    auto again = n.hub_request({"POST", "/v1/enroll", node_json}, "");
    CHECK(again.status == 200);
    CHECK(again.body.find("node_token") == std::string::npos);
    CHECK(again.body.find("fleet") == std::string::npos);
    sync::HubRequest want{"POST", "/v1/enroll", node_json};
    want.headers["X-Outpost-Want-Token"] = "1";
    CHECK(n.hub_request(want, "").status == 202);

    // Every refusal is in the hub's log (who, from where, why) and in its metrics.
    auto log = *read_text_file(n.dir / "hub.log");
    CHECK(log.find("hub.refused request=\"GET /v1/nodes\"") != std::string::npos);
    CHECK(log.find("reason=role credential=\"iam (development)\" role=iam") != std::string::npos);
    CHECK(log.find("reason=unknown_credential") != std::string::npos);
    auto m = n.hub_get("/metrics", "operator");
    INFO(m.body);
    CHECK_THAT(m.body, Catch::Contains("outpost_hub_refusals_total{route=\"nodes\",reason=\"no_credential\"} 1\n"));
    CHECK_THAT(m.body, Catch::Contains("outpost_hub_refusals_total{route=\"evidence_get\",reason=\"role\"} 2\n"));
    CHECK_THAT(m.body, Catch::Contains("outpost_hub_refusals_total{route=\"bundles\",reason=\"no_credential\"} 2\n"));
  }

  SECTION("fleets: the node gets its fleet's bundle; moved, it learns the new fleet and installs that one") {
    // v2 for fleet lab, v3 for fleet retail: the node (lab) is served and installs v2 only.
    const std::string policy = *read_text_file(std::string(OUTPOST_SOURCE_DIR) + "/examples/policy/edge-agents.yaml");
    const std::string from = "boards: [sim, x86-64]";
    REQUIRE(policy.find(from) != std::string::npos);
    for (auto [version, fleet] : {std::pair{2, "lab"}, std::pair{3, "retail"}}) {
      std::string scoped = policy;
      scoped.replace(scoped.find(from), from.size(), from + "\n  fleets: [" + fleet + "]");
      const std::string name = std::string(fleet) + ".opb";
      write_text(n.dir / (std::string(fleet) + ".yaml"), scoped);
      ok({"bundle", "build", n.p((std::string(fleet) + ".yaml").c_str()), "-o", n.p(name.c_str()), "--version", std::to_string(version)});
      ok({"bundle", "sign", n.p(name.c_str()), "--key", n.p("k.pem")});
      ok({"bundle", "publish", n.p(name.c_str()), "--hub", n.url(), "--pin", n.pin, "--token-file", n.token_file("iam")});
    }
    auto bundle_version = [&] {
      auto b = n.status().at("bundle");
      return b.is_object() ? b.as_object().at("version").to_number<uint64_t>() : 0;
    };
    REQUIRE(eventually([&] { return bundle_version() == 2; }, 20));
    auto served = n.hub_get("/v1/bundle?node=" + n.node_id, "operator");
    CHECK(served.header("x-outpost-bundle-version") == "2");
    CHECK(served.header("x-outpost-fleet") == "lab");
    std::this_thread::sleep_for(std::chrono::seconds(1));
    CHECK(bundle_version() == 2);  // v3 is newer but not for its fleet

    // The operator moves it: the node hears it at once (its poll is woken) and installs v3.
    auto move = testing::run_outpost({"fleet", "move", n.node_id, "--to", "retail", "--hub", n.url(), "--pin", n.pin},
                                     {"OUTPOST_HUB_TOKEN=" + n.token("operator")});
    INFO(move.out << move.err);
    CHECK(move.exit_code == 0);
    CHECK_THAT(move.out, Catch::Contains("fleet lab -> retail"));
    CHECK(move.err.find("warning") == std::string::npos);  // retail has v3, newer than v2 in force
    REQUIRE(eventually([&] { return n.sync_status().at("fleet") == "retail" && bundle_version() == 3; }, 20));
    CHECK(*read_text_file(n.state / "fleet") == "retail\n");
    auto list = ok({"fleet", "list", "--hub", n.url(), "--pin", n.pin, "--token-file", n.token_file("operator")});
    CHECK_THAT(list.out, Catch::Contains(n.node_id));
    CHECK_THAT(list.out, Catch::Contains("retail"));
    auto audit = ok(n.with_node({"audit", "tail", "-n", "200", "--json"}));
    CHECK_THAT(audit.out, Catch::Contains("fleet_assigned"));

    // Moved back to lab, whose newest (v2) is older than v3: v3 stays in force, across a
    // restart too (a move never leaves the node without its policy).
    REQUIRE(eventually([&] { return n.hub_get("/v1/nodes/" + n.node_id).body.find("\"bundle_version\":3") != std::string::npos; }, 20));
    auto back = ok({"fleet", "move", n.node_id, "--to", "lab", "--hub", n.url(), "--pin", n.pin, "--token-file", n.token_file("operator")});
    CHECK_THAT(back.err, Catch::Contains("runs bundle v3 and fleet \"lab\" has only v2"));
    REQUIRE(eventually([&] { return n.sync_status().at("fleet") == "lab"; }, 20));
    REQUIRE(n.daemon->stop() == 0);
    n.start_daemon(n.hub_port, "", 60);
    auto b = n.status().at("bundle").as_object();
    CHECK(b.at("version").to_number<uint64_t>() == 3);
    CHECK(b.at("mode") == "normal");
    // A fleet name the hub would not keep is refused; so is a move for a node it does not know.
    CHECK(n.hub_request({"PUT", "/v1/nodes/" + n.node_id + "/fleet", "{\"fleet\":\"no spaces\"}"}, "operator").status == 400);
    CHECK(n.hub_request({"PUT", "/v1/nodes/00112233445566778899aabbccddeeff/fleet", "{\"fleet\":\"lab\"}"}, "operator").status == 404);
  }
}
