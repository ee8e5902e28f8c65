#include "outpost/hub/hub.h"

#include "outpost/hub/ingest.h"

#include <yaml-cpp/yaml.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <charconv>
#include <chrono>

#include "outpost/attestation/node.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/base/time.h"
#include "outpost/base/tls.h"
#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/evidence.h"
#include "outpost/offline_cache/trust.h"

namespace outpost::hub {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Response reply(unsigned status, std::string body, std::string content_type = "application/json") {
  Response r{static_cast<http::status>(status), 11};
  r.set(http::field::server, "outpost-hub");
  r.set(http::field::content_type, content_type);
  r.body() = std::move(body);
  return r;
}
Response reply_json(unsigned status, const json::value& v) { return reply(status, json::serialize(v) + "\n"); }
Response reply_error(unsigned status, const std::string& message) {
  return reply_json(status, json::object{{"error", message}});
}

// "a=1&b=2" -> value of `key`, or empty.
std::string query_param(std::string_view target, std::string_view key) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view kv = rest.substr(0, amp);
    auto eq = kv.find('=');
    if (kv.substr(0, eq) == key) return eq == std::string_view::npos ? std::string() : std::string(kv.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest = rest.substr(amp + 1);
  }
  return {};
}

std::optional<int64_t> parse_i64(const std::string& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// "/v1/nodes/<id>/records" -> {"v1","nodes","<id>","records"}
std::vector<std::string> path_parts(std::string_view target) {
  target = target.substr(0, target.find('?'));
  std::vector<std::string> out;
  size_t i = 0;
  while (i < target.size()) {
    while (i < target.size() && target[i] == '/') ++i;
    size_t j = target.find('/', i);
    if (j == std::string_view::npos) j = target.size();
    if (j > i) out.emplace_back(target.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

// ---- configuration --------------------------------------------------------------------------

Result<HubConfig> load_hub_config(const fs::path& file) {
  OUTPOST_TRY(std::string text, read_text_file(file, 1 << 20));
  HubConfig c;
  c.source_file = file;
  const fs::path base = file.parent_path();
  auto rel = [&](const std::string& p) { return fs::path(p).is_absolute() ? fs::path(p) : base / p; };
  try {
    YAML::Node root = YAML::Load(text);
    if (!root.IsMap()) return fail(errc::invalid_argument, file.string() + ": not a YAML mapping");
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      if (key == "listen") {
        std::string l = v.as<std::string>();
        auto colon = l.rfind(':');
        auto port = colon == std::string::npos ? std::nullopt : parse_i64(l.substr(colon + 1));
        if (!port || *port < 0 || *port > 65535) {
          return fail(errc::invalid_argument, file.string() + ": listen: give host:port, not \"" + l + "\"");
        }
        c.listen_host = l.substr(0, colon);
        c.listen_port = static_cast<uint16_t>(*port);
      } else if (key == "database") {
        c.database = rel(v.as<std::string>());
      } else if (key == "tls") {
        for (const auto& t : v) {
          const std::string tk = t.first.as<std::string>();
          if (tk == "certificate") {
            OUTPOST_TRY(c.cert_chain_pem, read_text_file(rel(t.second.as<std::string>()), 1 << 20));
          } else if (tk == "key") {
            OUTPOST_TRY(c.key_pem, read_text_file(rel(t.second.as<std::string>()), 1 << 20));
          } else {
            return fail(errc::invalid_argument, file.string() + ": tls: unknown field \"" + tk + "\"");
          }
        }
      } else if (key == "bundle_trust") {
        OUTPOST_TRY(c.bundle_trust_json, read_text_file(rel(v.as<std::string>()), 1 << 20));
      } else if (key == "enrolment") {
        std::string mode = v.as<std::string>();
        if (mode != "open" && mode != "allow_list") {
          return fail(errc::invalid_argument, file.string() + ": enrolment: \"open\" or \"allow_list\", not \"" + mode + "\"");
        }
        c.enrol_open = mode == "open";
      } else if (key == "allow_nodes") {
        for (const auto& n : v) c.allow_nodes.insert(n.as<std::string>());
      } else if (key == "long_poll_max_seconds") {
        c.long_poll_max_s = v.as<uint32_t>();
      } else if (key == "max_upload_bytes") {
        c.max_upload_bytes = v.as<uint64_t>();
      } else {
        return fail(errc::invalid_argument, file.string() + ": unknown field \"" + key + "\"");
      }
    }
  } catch (const YAML::Exception& e) {
    return fail(errc::invalid_argument, file.string() + ": " + e.what());
  }
  if (c.database.empty()) c.database = base / "hub.db";
  if (c.cert_chain_pem.empty() || c.key_pem.empty()) {
    return fail(errc::invalid_argument, file.string() + ": tls.certificate and tls.key are required");
  }
  return c;
}

Result<InitResult> init_hub_dir(const fs::path& dir, const std::vector<std::string>& names, const fs::path& bundle_trust) {
  OUTPOST_TRY_VOID(ensure_directory(dir, 0700));
  const fs::path config = dir / "hub.yaml";
  if (file_exists(config)) return fail(errc::already_exists, config.string() + " exists; outpost-hub init writes nothing over it");
  std::vector<std::string> n = names.empty() ? std::vector<std::string>{"localhost", "127.0.0.1"} : names;
  OUTPOST_TRY(tls::DevPki pki, tls::make_dev_pki("outpost-hub", n, 825));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "ca.pem", pki.ca_cert_pem, 0644));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "ca.key", pki.ca_key_pem, 0600));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "server.pem", pki.server_cert_pem + pki.ca_cert_pem, 0644));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "server.key", pki.server_key_pem, 0600));
  OUTPOST_TRY(std::string pin, tls::spki_pin_of_certificate(pki.server_cert_pem));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "server.pin", pin + "\n", 0644));
  std::string yaml =
      "# outpost-hub configuration (docs/hub.md). Made by `outpost-hub init` for development: the\n"
      "# CA in ca.pem is a development CA; enrolment is open to any node.\n"
      "listen: 127.0.0.1:8443\n"
      "database: hub.db\n"
      "tls:\n"
      "  certificate: server.pem\n"
      "  key: server.key\n"
      "enrolment: open\n";
  if (!bundle_trust.empty()) {
    OUTPOST_TRY(std::string trust, read_text_file(bundle_trust, 1 << 20));
    OUTPOST_TRY_VOID(offline_cache::TrustRoot::parse(trust));
    OUTPOST_TRY_VOID(write_file_atomic(dir / "bundle-trust.json", trust, 0644));
    yaml += "bundle_trust: bundle-trust.json\n";
  }
  OUTPOST_TRY_VOID(write_file_atomic(config, yaml, 0644));
  return InitResult{config, pin};
}

// ---- the server -----------------------------------------------------------------------------

struct Hub::Impl {
  HubConfig config;
  std::unique_ptr<Store> store;
  std::optional<offline_cache::TrustRoot> trust;
  std::shared_ptr<tls::Context> tls;
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  // Long-pollers of /v1/bundle wait on these timers; a publish cancels them all.
  std::set<asio::steady_timer*> bundle_waiters;
  size_t connections = 0;

  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(tcp::socket socket);
  asio::awaitable<Response> route(const Request& req);

  Response enroll(const Request& req);
  Response upload_records(const std::string& node_id, const Request& req);
  Response put_evidence(const std::string& node_id, const Request& req);
  Response pull_evidence(const std::string& node_id, const Request& req);
  Response node_info(const std::string& node_id);
  Response list_nodes();
  Response publish(const Request& req);
  asio::awaitable<Response> get_bundle(const Request& req);

  Result<NodeRow> known_node(const std::string& node_id) {
    OUTPOST_TRY(auto n, store->node(node_id));
    if (!n) return fail(errc::not_found, "node " + node_id + " is not enrolled");
    return std::move(*n);
  }
  void alert(const std::string& node_id, const std::string& kind, const std::string& detail) {
    log::warn("hub.alert", {{"node", node_id}, {"kind", kind}, {"detail", detail}});
    auto r = store->add_alert({node_id, kind, detail, format_rfc3339_utc(unix_now())});
    if (!r) log::error("hub.store", {{"error", r.error().message()}});
  }
};

asio::awaitable<void> Hub::Impl::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      log::warn("hub.accept", {{"error", ec.message()}});
      continue;
    }
    asio::co_spawn(io, serve(std::move(socket)), asio::detached);
  }
}

asio::awaitable<void> Hub::Impl::serve(tcp::socket socket) {
  ++connections;
  struct Count {
    size_t& n;
    ~Count() { --n; }
  } count{connections};
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  tls::Stream stream(std::move(socket), tls);
  {
    tls::SocketDeadline deadline(stream.socket(), std::chrono::seconds(10));
    auto hs = co_await stream.handshake();
    if (!hs) {
      log::debug("hub.tls", {{"error", hs.error().message()}});
      co_return;
    }
  }
  boost::beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(config.max_upload_bytes);
    {
      tls::SocketDeadline deadline(stream.socket(), std::chrono::seconds(120));  // idle keep-alive
      auto [ec, n] = co_await http::async_read(stream, buffer, parser, kNoThrow);
      if (ec) {
        if (ec == http::error::body_limit) {
          auto r = reply_error(413, "upload larger than max_upload_bytes (" + std::to_string(config.max_upload_bytes) + ")");
          r.keep_alive(false);
          r.prepare_payload();
          co_await http::async_write(stream, r, kNoThrow);
        }
        break;
      }
    }
    Request req = parser.release();
    Response res = co_await route(req);
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    tls::SocketDeadline deadline(stream.socket(), std::chrono::seconds(60));
    auto [wec, wn] = co_await http::async_write(stream, res, kNoThrow);
    if (wec || !res.keep_alive()) break;
  }
  co_await stream.shutdown();
}

asio::awaitable<Response> Hub::Impl::route(const Request& req) {
  const auto parts = path_parts(req.target());
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;
  const bool put = req.method() == http::verb::put;
  if (parts.size() < 2 || parts[0] != "v1") co_return reply_error(404, "no such resource: " + std::string(req.target()));
  if (parts.size() == 2 && parts[1] == "enroll" && post) co_return enroll(req);
  if (parts.size() == 2 && parts[1] == "nodes" && get) co_return list_nodes();
  if (parts.size() == 2 && parts[1] == "bundle" && get) co_return co_await get_bundle(req);
  if (parts.size() == 2 && parts[1] == "bundles" && post) co_return publish(req);
  if (parts.size() >= 3 && parts[1] == "nodes") {
    const std::string& id = parts[2];
    if (parts.size() == 3 && get) co_return node_info(id);
    if (parts.size() == 4 && parts[3] == "records" && post) co_return upload_records(id, req);
    if (parts.size() == 4 && parts[3] == "evidence" && put) co_return put_evidence(id, req);
    if (parts.size() == 4 && parts[3] == "evidence" && get) co_return pull_evidence(id, req);
  }
  co_return reply_error(404, "no such resource: " + std::string(req.method_string()) + " " + std::string(req.target()));
}

// POST /v1/enroll, body: the node's node.json. The node id must be the one its EK gives; the
// AK is pinned at first enrolment (a different AK later is refused: a swapped TPM or a forged
// identity needs the operator).
Response Hub::Impl::enroll(const Request& req) {
  auto id = attestation::NodeIdentity::from_json(req.body());
  if (!id) return reply_error(400, "enrol: " + id.error().message());
  Digest ek_hash = sha256(id->ek_public.to_der());
  if (id->node_id != hex_encode(ByteView(ek_hash.data(), 16))) {
    return reply_error(422, "enrol: node_id " + id->node_id + " is not the one its EK gives");
  }
  auto ak_of_area = attestation::key_of_public(id->ak_public_area);
  if (!ak_of_area || !(*ak_of_area == id->ak_public)) {
    return reply_error(422, "enrol: the AK public key does not match its TPM public area");
  }
  if (!config.enrol_open && !config.allow_nodes.contains(id->node_id)) {
    return reply_error(403, "enrol: node " + id->node_id + " is not in allow_nodes");
  }
  auto existing = store->node(id->node_id);
  if (!existing) return reply_error(500, existing.error().message());
  if (*existing) {
    if ((*existing)->ak_pem != id->ak_public.to_pem()) {
      alert(id->node_id, "ak_changed", "enrolment with a different AK refused");
      return reply_error(409, "enrol: node " + id->node_id + " is enrolled with another AK; a swapped or cleared TPM needs the operator");
    }
    (void)store->touch(id->node_id, now_ms());
    return reply_json(200, json::object{{"node_id", id->node_id}, {"acked_seq", (*existing)->acked_seq}, {"enrolled", false}});
  }
  NodeRow n;
  n.node_id = id->node_id;
  n.identity_json = std::string(req.body());
  n.ak_pem = id->ak_public.to_pem();
  n.enrolled_at = format_rfc3339_utc(unix_now());
  n.last_contact_ms = now_ms();
  auto r = store->enroll(n);
  if (!r) return reply_error(500, r.error().message());
  log::info("hub.enrolled", {{"node", n.node_id}, {"board", id->board}});
  return reply_json(200, json::object{{"node_id", n.node_id}, {"acked_seq", 0}, {"enrolled", true}});
}

// POST /v1/nodes/<id>/records, body: audit frames from the hub's acknowledged sequence on (or
// earlier: records the hub has are compared and skipped). Stored through the last checkpoint
// whose quote the node's AK signed; the rest waits for the next checkpoint.
Response Hub::Impl::upload_records(const std::string& node_id, const Request& req) {
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  (void)store->touch(node_id, now_ms());
  auto ak = EcPublicKey::from_pem(node->ak_pem);
  if (!ak) return reply_error(500, "stored AK: " + ak.error().message());
  UploadPlan plan = plan_upload(as_bytes(req.body()), *node, *ak, [&](uint64_t seq) -> std::optional<Digest> {
    auto h = store->record_hash(node_id, seq);
    return h ? *h : std::nullopt;
  });
  if (plan.verdict == UploadPlan::Verdict::fork) {
    alert(node_id, "fork", plan.reason);
    return reply_error(409, plan.reason);
  }
  if (plan.verdict == UploadPlan::Verdict::refused) {
    alert(node_id, "refused_upload", plan.reason);
    return reply_error(422, "records: " + plan.reason);
  }
  const auto& rows = plan.rows;
  if (!rows.empty()) {
    auto c = store->commit_records(node_id, node->acked_seq, rows, plan.clock);
    if (!c) {
      if (c.error().is(errc::already_exists)) return reply_error(409, c.error().message());
      return reply_error(c.error().code().value() == ENOSPC ? 507 : 500, c.error().message());
    }
  }
  const uint64_t acked = rows.empty() ? node->acked_seq : rows.back().seq;
  return reply_json(200, json::object{{"acked_seq", acked}, {"stored", rows.size()}, {"duplicates", plan.duplicates},
                                      {"pending", plan.pending}});
}

// PUT /v1/nodes/<id>/evidence: the node's evidence state (identity, certifications, runtime
// and boot logs, counters, bundles; no records). Kept as the latest; checked on pull.
Response Hub::Impl::put_evidence(const std::string& node_id, const Request& req) {
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  auto pkg = offline_cache::parse_evidence_package(as_bytes(req.body()));
  if (!pkg) return reply_error(422, "evidence: " + pkg.error().message());
  auto id = attestation::NodeIdentity::from_json(pkg->node_identity_json);
  if (!id || id->node_id != node_id || id->ak_public.to_pem() != node->ak_pem) {
    return reply_error(422, "evidence: the package's identity is not node " + node_id + " as enrolled");
  }
  if (!pkg->records.empty()) return reply_error(422, "evidence: records go to /records, not in the state package");
  auto r = store->put_evidence_state(node_id, Bytes(req.body().begin(), req.body().end()), format_rfc3339_utc(unix_now()));
  if (!r) return reply_error(500, r.error().message());
  (void)store->touch(node_id, now_ms());
  return reply_json(200, json::object{{"ok", true}});
}

// GET /v1/nodes/<id>/evidence[?since=ms&until=ms]: a package of the node's latest evidence
// state and its records in the range, extended forward through the next checkpoint so the
// last ones are anchored.
Response Hub::Impl::pull_evidence(const std::string& node_id, const Request& req) {
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  int64_t since = 0, until = 0;
  for (auto [name, out] : {std::pair{"since", &since}, std::pair{"until", &until}}) {
    std::string v = query_param(req.target(), name);
    if (v.empty()) continue;
    auto n = parse_i64(v);
    if (!n || *n < 0) return reply_error(400, std::string(name) + ": Unix milliseconds expected, got \"" + v + "\"");
    *out = *n;
  }
  offline_cache::EvidencePackage pkg;
  auto state = store->evidence_state(node_id);
  if (!state) return reply_error(500, state.error().message());
  if (*state) {
    auto parsed = offline_cache::parse_evidence_package(**state);
    if (!parsed) return reply_error(500, "stored evidence state: " + parsed.error().message());
    pkg = std::move(*parsed);
  } else {
    pkg.node_identity_json = node->identity_json;
  }
  pkg.exported_at = format_rfc3339_utc(unix_now());
  pkg.since_ms = since;
  pkg.until_ms = until;
  uint64_t from = 1;
  if (since > 0) {
    auto f = store->first_seq_at(node_id, since);
    if (!f) return reply_error(500, f.error().message());
    from = *f == 0 ? node->acked_seq + 1 : *f;
  }
  bool past_until = false;
  auto scan = store->scan_records(node_id, from, [&](const RecordRow& r) {
    if (until > 0 && r.time_ms > until) past_until = true;
    pkg.records.insert(pkg.records.end(), r.frame.begin(), r.frame.end());
    // Past the range, go on only to the checkpoint that anchors it.
    return !(past_until && r.kind == static_cast<uint8_t>(offline_cache::RecordKind::checkpoint));
  });
  if (!scan) return reply_error(500, scan.error().message());
  Bytes out = offline_cache::encode_evidence_package(pkg);
  return reply(200, std::string(as_chars(out)), "application/vnd.outpost.evidence");
}

Response Hub::Impl::node_info(const std::string& node_id) {
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  json::array alerts;
  if (auto a = store->alerts(node_id)) {
    for (const auto& x : *a) alerts.push_back(json::object{{"kind", x.kind}, {"detail", x.detail}, {"at", x.at}});
  }
  return reply_json(200, json::object{{"node_id", node->node_id},
                                      {"identity", json::parse(node->identity_json)},
                                      {"ak_pem", node->ak_pem},
                                      {"enrolled_at", node->enrolled_at},
                                      {"acked_seq", node->acked_seq},
                                      {"acked_hash", hex_encode(node->acked_hash)},
                                      {"last_contact_ms", node->last_contact_ms},
                                      {"alerts", std::move(alerts)}});
}

Response Hub::Impl::list_nodes() {
  auto nodes = store->nodes();
  if (!nodes) return reply_error(500, nodes.error().message());
  json::array out;
  for (const auto& n : *nodes) {
    out.push_back(json::object{{"node_id", n.node_id}, {"acked_seq", n.acked_seq}, {"last_contact_ms", n.last_contact_ms}});
  }
  return reply_json(200, out);
}

// POST /v1/bundles: a signed bundle from the central IAM. Its signatures must meet the hub's
// trust anchors and its version must be above the one served (no rollback).
Response Hub::Impl::publish(const Request& req) {
  if (!trust) return reply_error(503, "publish: this hub has no bundle_trust configured");
  const std::string& body = req.body();
  auto bundle = offline_cache::SignedBundle::parse(Bytes(body.begin(), body.end()));
  if (!bundle) return reply_error(422, "publish: " + bundle.error().message());
  auto sig = offline_cache::verify_bundle_signatures(*bundle, *trust);
  if (!sig) return reply_error(422, "publish: " + sig.error().message());
  auto current = store->latest_bundle();
  if (!current) return reply_error(500, current.error().message());
  if (*current && bundle->version() <= (*current)->version) {
    return reply_error(409, "publish: bundle v" + std::to_string(bundle->version()) + " is not newer than v" +
                                std::to_string((*current)->version) + " already served (rollback refused)");
  }
  BundleRow row;
  row.version = bundle->version();
  row.sha256 = hex_encode(sha256(as_bytes(body)));
  row.bytes = bundle->bytes();
  row.published_at = format_rfc3339_utc(unix_now());
  auto r = store->put_bundle(row);
  if (!r) return reply_error(r.error().is(errc::already_exists) ? 409 : 500, r.error().message());
  log::info("hub.published", {{"version", std::to_string(row.version)}, {"waiters", std::to_string(bundle_waiters.size())}});
  for (auto* t : bundle_waiters) t->cancel();
  return reply_json(200, json::object{{"version", row.version}, {"sha256", row.sha256}});
}

// GET /v1/bundle[?wait=S]: the newest bundle. With If-None-Match equal to its ETag, 304, or
// with wait, held until a newer one is published or S seconds pass.
asio::awaitable<Response> Hub::Impl::get_bundle(const Request& req) {
  int64_t wait = 0;
  if (auto w = query_param(req.target(), "wait"); !w.empty()) {
    auto n = parse_i64(w);
    if (!n || *n < 0) co_return reply_error(400, "wait: seconds expected");
    wait = std::min<int64_t>(*n, config.long_poll_max_s);
  }
  const std::string inm(req[http::field::if_none_match]);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(wait);
  for (;;) {
    auto current = store->latest_bundle();
    if (!current) co_return reply_error(500, current.error().message());
    const std::string etag = *current ? "\"" + (*current)->sha256 + "\"" : std::string();
    if (*current && inm != etag) {
      auto r = reply(200, std::string(as_chars((*current)->bytes)), "application/vnd.outpost.bundle");
      r.set(http::field::etag, etag);
      r.set("X-Outpost-Bundle-Version", std::to_string((*current)->version));
      co_return r;
    }
    if (std::chrono::steady_clock::now() >= until) {
      if (!*current) co_return reply_error(404, "no bundle published");
      auto r = reply(304, "");
      r.set(http::field::etag, etag);
      co_return r;
    }
    asio::steady_timer timer(io);
    timer.expires_at(until);
    bundle_waiters.insert(&timer);
    co_await timer.async_wait(kNoThrow);
    bundle_waiters.erase(&timer);
  }
}

Hub::Hub(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Hub::~Hub() = default;

Result<std::unique_ptr<Hub>> Hub::create(HubConfig config) {
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  OUTPOST_TRY(impl->store, open_sqlite_store(impl->config.database));
  if (!impl->config.bundle_trust_json.empty()) {
    OUTPOST_TRY(auto t, offline_cache::TrustRoot::parse(impl->config.bundle_trust_json));
    impl->trust = std::move(t);
  }
  OUTPOST_TRY(impl->tls, tls::Context::server({impl->config.cert_chain_pem, impl->config.key_pem}));
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(impl->config.listen_host, ec);
  if (ec) return fail(errc::invalid_argument, "listen address \"" + impl->config.listen_host + "\": " + ec.message());
  tcp::endpoint ep(addr, impl->config.listen_port);
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail(errc::io, "listen on " + impl->config.listen_host + ":" + std::to_string(impl->config.listen_port) + ": " + ec.message());
  return std::unique_ptr<Hub>(new Hub(std::move(impl)));
}

uint16_t Hub::port() const { return impl_->acceptor.local_endpoint().port(); }

Result<void> Hub::run(bool handle_signals) {
  Impl& m = *impl_;
  std::optional<asio::signal_set> signals;
  if (handle_signals) {
    signals.emplace(m.io, SIGINT, SIGTERM);
    signals->async_wait([&](const boost::system::error_code& ec, int) {
      if (!ec) stop();
    });
  }
  asio::co_spawn(m.io, m.accept_loop(), asio::detached);
  log::info("hub.listening", {{"address", m.config.listen_host + ":" + std::to_string(port())}});
  m.io.run();
  return ok();
}

void Hub::stop() {
  asio::post(impl_->io, [this] {
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->io.stop();
  });
}

}  // namespace outpost::hub
