#include "outpost/hub/hub.h"

#include "outpost/hub/ingest.h"

#include "console.h"

#include <yaml-cpp/yaml.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <variant>

#include <unistd.h>

#include "outpost/attestation/credential.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/base/metrics.h"
#include "outpost/base/time.h"
#include "outpost/base/tls.h"
#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/bundle_store.h"
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

// "a=1&b=2" -> value of `key` (nothing when absent; "" when given empty).
std::optional<std::string> query_param_given(std::string_view target, std::string_view key) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view kv = rest.substr(0, amp);
    auto eq = kv.find('=');
    if (kv.substr(0, eq) == key) return eq == std::string_view::npos ? std::string() : std::string(kv.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest = rest.substr(amp + 1);
  }
  return std::nullopt;
}
std::string query_param(std::string_view target, std::string_view key) {
  return query_param_given(target, key).value_or(std::string());
}

// The console's sign-in cookie (a session: Hub::Impl::console_session), HttpOnly and Secure,
// for /console only.
constexpr std::string_view kConsoleCookie = "outpost_console";
std::string console_cookie(std::string_view header) {
  while (!header.empty()) {
    auto semi = header.find(';');
    std::string_view kv = header.substr(0, semi);
    while (!kv.empty() && kv.front() == ' ') kv.remove_prefix(1);
    if (kv.size() > kConsoleCookie.size() && kv.substr(0, kConsoleCookie.size()) == kConsoleCookie && kv[kConsoleCookie.size()] == '=') {
      return std::string(kv.substr(kConsoleCookie.size() + 1));
    }
    if (semi == std::string_view::npos) break;
    header.remove_prefix(semi + 1);
  }
  return {};
}

// A console page: no script may run and nothing may load from elsewhere (CSP), not framed.
Response reply_html(unsigned status, std::string html) {
  Response r = reply(status, std::move(html), "text/html; charset=utf-8");
  r.set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'");
  r.set("X-Content-Type-Options", "nosniff");
  r.set("Referrer-Policy", "no-referrer");
  r.set(http::field::cache_control, "no-store");
  return r;
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

// Why `next` is an older evidence state than `held` (a counter or the newest bundle behind),
// or nothing.
std::optional<std::string> older_state(const offline_cache::EvidencePackage& next, const offline_cache::EvidencePackage& held) {
  for (const auto& h : held.nv_counters) {
    for (const auto& n : next.nv_counters) {
      if (n.purpose == h.purpose && n.value < h.value) {
        return "counter " + n.purpose + " is " + std::to_string(n.value) + ", behind " + std::to_string(h.value) +
               " in the state held (a replayed state?)";
      }
    }
  }
  auto newest = [](const offline_cache::EvidencePackage& p) {
    uint64_t v = 0;
    for (const auto& b : p.bundles) v = std::max(v, b.version);
    return v;
  };
  if (newest(next) < newest(held)) {
    return "newest bundle v" + std::to_string(newest(next)) + " is behind v" + std::to_string(newest(held)) + " in the state held";
  }
  return std::nullopt;
}

}  // namespace

const char* role_name(Role role) {
  switch (role) {
    case Role::operator_: return "operator";
    case Role::responder: return "responder";
    case Role::iam: return "iam";
  }
  return "?";
}

std::string make_token() {
  std::array<uint8_t, 32> b{};
  random_bytes(b);
  return hex_encode(b);
}

std::string token_sha256(std::string_view token) { return hex_encode(sha256(as_bytes(token))); }

bool valid_fleet_name(std::string_view fleet) {
  if (fleet.empty() || fleet.size() > 64) return false;
  for (char c : fleet) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

// ---- configuration --------------------------------------------------------------------------

Result<HubConfig> load_hub_config(const fs::path& file) {
  OUTPOST_TRY(std::string text, read_text_file(file, 1 << 20));
  HubConfig c;
  c.source_file = file;
  const fs::path base = file.parent_path();
  auto rel = [&](const std::string& p) { return fs::path(p).is_absolute() ? fs::path(p) : base / p; };
  // A field that takes one of two words: true for `yes`.
  auto either = [&](const std::string& key, const YAML::Node& v, const char* yes, const char* no) -> Result<bool> {
    const std::string word = v.as<std::string>();
    if (word != yes && word != no) {
      return fail(errc::invalid_argument, file.string() + ": " + key + ": \"" + yes + "\" or \"" + no + "\", not \"" + word + "\"");
    }
    return word == yes;
  };
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
        const std::string db = v.as<std::string>();  // a PostgreSQL URI, or a SQLite file
        c.database = is_postgres_uri(db) ? fs::path(db) : rel(db);
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
        OUTPOST_TRY(c.enrol_open, either(key, v, "open", "allow_list"));
      } else if (key == "activation") {
        OUTPOST_TRY(c.activation_required, either(key, v, "required", "off"));
      } else if (key == "allow_nodes") {
        for (const auto& n : v) c.allow_nodes.insert(n.as<std::string>());
      } else if (key == "fleets") {
        auto fleet = [&](const YAML::Node& f, const std::string& where) -> Result<std::string> {
          std::string name = f.as<std::string>();
          if (!valid_fleet_name(name)) {
            return fail(errc::invalid_argument, file.string() + ": " + where + ": \"" + name + "\" is not a fleet name (1 to 64 of A-Z a-z 0-9 . _ -)");
          }
          return name;
        };
        for (const auto& f : v) {
          const std::string fk = f.first.as<std::string>();
          if (fk == "default") {
            OUTPOST_TRY(c.default_fleet, fleet(f.second, "fleets.default"));
          } else if (fk == "assign") {
            for (const auto& a : f.second) {
              OUTPOST_TRY(c.assigned_fleets[a.first.as<std::string>()], fleet(a.second, "fleets.assign"));
            }
          } else {
            return fail(errc::invalid_argument, file.string() + ": fleets: unknown field \"" + fk + "\" (default, assign)");
          }
        }
      } else if (key == "credentials") {
        for (const auto& cr : v) {
          Credential cred;
          std::string hash;
          bool has_role = false;
          for (const auto& f : cr) {
            const std::string fk = f.first.as<std::string>();
            if (fk == "name") {
              cred.name = f.second.as<std::string>();
            } else if (fk == "token_sha256") {
              hash = f.second.as<std::string>();
            } else if (fk == "role") {
              const std::string r = f.second.as<std::string>();
              has_role = true;
              if (r == "operator") {
                cred.role = Role::operator_;
              } else if (r == "responder") {
                cred.role = Role::responder;
              } else if (r == "iam") {
                cred.role = Role::iam;
              } else {
                return fail(errc::invalid_argument, file.string() + ": credentials: role \"" + r + "\": operator, responder or iam");
              }
            } else {
              return fail(errc::invalid_argument, file.string() + ": credentials: unknown field \"" + fk + "\" (name, role, token_sha256)");
            }
          }
          auto raw = hex_decode(hash);
          if (cred.name.empty() || !has_role || !raw || raw->size() != 32) {
            return fail(errc::invalid_argument, file.string() + ": credentials: each needs a name, a role and token_sha256 (64 hex digits; `outpost-hub token` prints it)");
          }
          if (!c.credentials.emplace(hex_encode(*raw), cred).second) {
            return fail(errc::invalid_argument, file.string() + ": credentials: " + cred.name + " has the token of another credential");
          }
        }
      } else if (key == "long_poll_max_seconds") {
        c.long_poll_max_s = v.as<uint32_t>();
      } else if (key == "max_upload_bytes") {
        c.max_upload_bytes = v.as<uint64_t>();
      } else if (key == "max_pull_bytes") {
        c.max_pull_bytes = v.as<uint64_t>();
      } else if (key == "node_tokens") {
        OUTPOST_TRY(c.node_tokens_required, either(key, v, "required", "optional"));
      } else if (key == "ingest_threads") {
        c.ingest_threads = v.as<uint32_t>();
      } else if (key == "ingest_queue") {
        c.ingest_queue = v.as<uint32_t>();
        if (c.ingest_queue == 0) return fail(errc::invalid_argument, file.string() + ": ingest_queue must be positive");
      } else if (key == "max_connections") {
        c.max_connections = v.as<uint32_t>();
        if (c.max_connections == 0) return fail(errc::invalid_argument, file.string() + ": max_connections must be positive");
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
  std::string credentials = "# Who may read the fleet, pull evidence, publish (docs/hub.md, Roles). Only the tokens'\n"
                            "# hashes are here; the tokens are in *.token beside this file, for development.\n"
                            "credentials:\n";
  for (const char* role : {"operator", "responder", "iam"}) {
    const std::string token = make_token();
    OUTPOST_TRY_VOID(write_file_atomic(dir / (std::string(role) + ".token"), token + "\n", 0600));
    credentials += "  - name: " + std::string(role) + " (development)\n    role: " + role + "\n    token_sha256: " + token_sha256(token) + "\n";
  }
  std::string yaml =
      "# outpost-hub configuration (docs/hub.md). Made by `outpost-hub init` for development: the\n"
      "# CA in ca.pem is a development CA; enrolment is open to any node.\n"
      "listen: 127.0.0.1:8443\n"
      "database: hub.db\n"
      "tls:\n"
      "  certificate: server.pem\n"
      "  key: server.key\n"
      "enrolment: open\n" + credentials;
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
  // Long-pollers of /v1/bundle wait on these timers, by the node they poll for ("" for a
  // role's poll); a publish cancels them all, a fleet move the node's.
  std::multimap<std::string, asio::steady_timer*> bundle_waiters;
  void wake(const std::string& node) {
    if (node.empty()) {
      for (auto& [n, t] : bundle_waiters) t->cancel();
      return;
    }
    auto [from, to] = bundle_waiters.equal_range(node);
    for (auto it = from; it != to; ++it) it->second->cancel();
  }
  // hub.refused lines: at most kRefusalLines a second, the rest counted into the next one
  // (a scanner must not flood the log; the metric counts every refusal).
  static constexpr int kRefusalLines = 10;
  int64_t refusal_second = 0;
  int refusal_lines = 0;
  uint64_t refusals_unlogged = 0;
  void log_refusal(std::initializer_list<log::Field> fields);
  size_t connections = 0;
  // Alerts from uploads nobody has authenticated yet are kept at most once a minute per node
  // and kind, so a stream of garbage cannot flood the table; the rest are counted in the log.
  std::map<std::pair<std::string, std::string>, std::chrono::steady_clock::time_point> last_alert;
  // Keys the hub's stateless challenges (credential activation): derived from its TLS key, so
  // hub instances on one database that share a certificate answer each other's challenges.
  Digest challenge_key{};
  // Prometheus metrics (GET /metrics; docs/hub.md, "Metrics").
  static constexpr std::array<const char*, 14> kRoutes = {"enroll", "nodes", "node", "records", "nonce", "attestation",
                                                          "evidence_put", "evidence_get", "bundle", "bundles", "fleet",
                                                          "console", "metrics", "other"};
  std::array<metrics::Histogram, kRoutes.size()> request_seconds;
  metrics::CounterFamily requests{{"route", "code"}, 1024};
  metrics::CounterFamily alert_counts{{"kind"}, 64};
  metrics::CounterFamily refusals{{"route", "reason"}, 256};
  uint64_t records_stored = 0, record_duplicates = 0, upload_bytes = 0;
  uint64_t group_commits = 0, group_commit_items = 0;  // group commit (SQLite)

  static size_t route_index(const std::vector<std::string>& parts, http::verb method);
  Response metrics_page();
  // Uploads handed to the pool and not answered yet (the loop's alone). Past the cap
  // (hub.yaml's ingest_queue) an upload waits its turn, first come first served, for
  // kIngestSlotWait at most and is then answered 503, so the pool's queue stays bounded and a
  // fleet reconnecting at once is not sent away.
  size_t ingest_in_flight = 0;
  uint64_t ingest_waits = 0;  // uploads that waited for a slot
  static constexpr std::chrono::seconds kIngestSlotWait{20};
  // Waiting uploads hold their bodies: past this many bytes waiting, another is answered 503
  // at once instead of joining them.
  static constexpr uint64_t kIngestWaitBytes = 256ull << 20;
  uint64_t ingest_waiting_bytes = 0;
  struct SlotWaiter {
    asio::steady_timer timer;
    bool granted = false;
  };
  std::deque<SlotWaiter*> ingest_waiters;
  // A finished upload hands its slot to the longest waiter, if any, rather than freeing it:
  // a newcomer cannot take it between the wake and the waiter's resumption. Declared before
  // `io`: the frames io destroys at the end release their slots here.
  void release_ingest_slot() {
    if (ingest_waiters.empty()) {
      --ingest_in_flight;
      return;
    }
    SlotWaiter* next = ingest_waiters.front();
    ingest_waiters.pop_front();
    next->granted = true;
    next->timer.cancel();
  }
  asio::awaitable<bool> take_ingest_slot(uint64_t body_bytes);
  // Destroyed after the ingest pool below and before everything above: the coroutine frames it
  // still holds (connections, pollers) are destroyed while the members they refer to are alive.
  asio::io_context io{1};
  tcp::acceptor acceptor{io};

  // Record uploads are verified off the event loop (docs/hub.md "Threading") on these threads,
  // each job with a store connection of its own from `idle_stores` (opened at start, one per
  // thread); with PostgreSQL each thread commits its upload too (the server's row locks order
  // them), with SQLite the commit thread below does.
  std::mutex stores_mu;
  std::vector<std::unique_ptr<Store>> idle_stores;
  Result<std::unique_ptr<Store>> take_store() {
    {
      std::lock_guard lock(stores_mu);
      if (!idle_stores.empty()) {
        auto st = std::move(idle_stores.back());
        idle_stores.pop_back();
        return st;
      }
    }
    return open_store(config.database.string());
  }
  void give_store(std::unique_ptr<Store> st) {
    std::lock_guard lock(stores_mu);
    idle_stores.push_back(std::move(st));
  }
  // What an upload did, for the event loop to count and alert on (Impl's other state is the
  // loop's alone).
  struct Ingested {
    Response response;
    std::optional<std::pair<std::string, std::string>> alert;  // kind, detail
    uint64_t stored = 0, duplicates = 0;
    size_t led_groups = 0, led_items = 0;  // the group commits this one's job ran, and their writes
    Result<void> commit = ok();  // the store's answer (for an enrolment, all there is)
  };
  void count_group(const Ingested& done) {
    group_commits += done.led_groups;
    group_commit_items += done.led_items;
  }
  // An upload verified, with rows to commit.
  struct Verified {
    Store::CommitItem item;
    uint64_t duplicates = 0, pending = 0;
  };
  // On an ingest thread: the answer when nothing is to be stored, else what to commit.
  std::variant<Ingested, Verified> verify_upload(Store& st, const std::string& node_id, const std::string& body,
                                                 const std::string& durable_header);
  static Ingested committed(const Verified& v, const Result<void>& commit);
  static asio::awaitable<Ingested> run_on_pool(std::function<Ingested()> job);
  // SQLite has one writer: verified uploads queue here and the commit thread stores all that
  // queued while it was busy in one transaction (one flush; Store::commit_group), on a
  // connection of its own whose page cache no other writer invalidates. PostgreSQL takes
  // concurrent writers: each ingest thread commits its own upload.
  struct QueuedCommit {
    Verified verified;
    // The commit thread's alone: the result, and the groups this upload's job committed (it
    // leads when an earlier job has not taken it) with the writes they held.
    std::optional<Result<void>> result;
    size_t led_groups = 0, led_items = 0;
  };
  bool group_commit = false;
  // The commit connection's page cache: a group of uploads' dirty pages (up to a few MB of
  // index leaves for 256 uploads scattered in time) stay in it until the commit.
  static constexpr int64_t kCommitCacheKib = 64 * 1024;
  static constexpr size_t kGroupItems = 256;
  static constexpr size_t kGroupBytes = 32ull << 20;
  std::mutex commit_mu;
  std::vector<std::shared_ptr<QueuedCommit>> commit_queue;
  std::unique_ptr<Store> commit_store;
  Result<void> commit_queued(const std::shared_ptr<QueuedCommit>& mine);
  // Declared after everything their jobs use, so destroyed (stopped and joined) before them.
  std::unique_ptr<asio::thread_pool> ingest_pool;
  std::unique_ptr<asio::thread_pool> commit_thread;

  asio::awaitable<void> accept_loop();
  // Wakes this instance's long polls when any instance on the database says what is served
  // changed (Store::wake_fd; PostgreSQL LISTEN/NOTIFY).
  asio::awaitable<void> wake_loop();
  // What is served changed here: this instance's pollers look again now, the other
  // instances' once the store's word reaches them.
  // `node` ("": every node).
  void served_changed(const std::string& node) {
    wake(node);
    if (auto r = store->notify(node); !r) log::warn("hub.notify", {{"error", r.error().message()}});
  }
  asio::awaitable<void> serve(tcp::socket socket);
  asio::awaitable<Response> route(Request& req, const Credential* who);
  // Who may use a route: the roles in `roles` (a mask of Role) and, when `node` is set, that
  // node itself with its node token. Nothing at all: a node's route, whose body carries what
  // its TPM signed (records, quotes, evidence) or proves it (enrolment).
  struct Access {
    unsigned roles = 0;
    std::string node;
    bool cookie = false;  // the console: a browser's sign-in cookie stands for the bearer token
  };
  static Access access_for(const http::request_header<>& h);
  // The credential a request's bearer token names (nullptr: the node itself, by its node
  // token), or the refusal of one whose token is missing, unknown or of another role (logged
  // and counted). Decided on the header, before any body is read.
  std::variant<const Credential*, Response> authorize(const http::request_header<>& h, const Access& access, size_t route_at,
                                                      const std::string& peer);
  // A node's bearer of identity for its bundle poll, handed out once it has shown its TPM
  // (credential activation): an HMAC of its id under the challenge key, so every instance
  // that shares the certificate checks it and nothing is stored.
  std::string node_token(const std::string& node_id, const std::string& ak_pem) const;
  // The console's sign-in cookie: "<expires_ms>.<token sha256>.<MAC>", not the token itself (it
  // is useless as a bearer token, and expires on the server's clock); the credential is
  // looked up by the hash, so removing it from hub.yaml ends its sessions too.
  std::string console_session_cookie(const std::string& token_hash, int64_t expires_ms) const;
  const Credential* console_session(std::string_view cookie) const;
  // The largest body the request whose header is `h` may carry, or an error reply.
  std::variant<uint64_t, Response> body_limit(const http::request_header<>& h);

  // A node enrolling for the first time, once its checks passed.
  struct NewNode {
    NodeRow row;
    bool activated = false;
    std::string board;
  };
  asio::awaitable<Response> enroll(const Request& req);
  // The answer, or nullopt with `fresh` filled: a node to insert.
  std::optional<Response> check_enrolment(const Request& req, NewNode& fresh);
  Response enrolled(const NewNode& fresh, const Result<void>& inserted);
  // Runs `item` through the commit thread's group (group_commit only).
  asio::awaitable<Ingested> commit_in_group(Verified item);
  // The secret a credential activation challenge for (node, AK name) carries, valid until
  // expires_ms: recomputed on the answer, so nothing is stored between the two requests.
  Digest activation_secret(const std::string& node_id, ByteView ak_name, int64_t expires_ms) const;
  asio::awaitable<Response> upload_records(const std::string& node_id, Request& req);
  Response nonce(const std::string& node_id);
  Response attestation(const std::string& node_id, const Request& req);
  // The MAC part of a nonce for `node_id` valid until expires_ms (kNonceMacBytes bytes).
  Bytes nonce_mac(const std::string& node_id, int64_t expires_ms) const;
  Response put_evidence(const std::string& node_id, const Request& req);
  Response pull_evidence(const std::string& node_id, const Request& req);
  Response node_info(const std::string& node_id);
  Response list_nodes();
  Response publish(const Request& req);
  Response move_fleet(const std::string& node_id, const Request& req, const Credential* by);
  // GET /console...: the pages (docs/hub.md "Console"); /console/login and /console/logout.
  Response console(const Request& req, const std::vector<std::string>& parts, const Credential* who);
  using RecentBundles = std::vector<std::pair<BundleRow, std::shared_ptr<offline_cache::SignedBundle>>>;
  Result<console::FleetView> fleet_view(const std::string& fleet, const RecentBundles& recent);
  // The newest published bundles, parsed once each (bundle_admits).
  Result<std::vector<std::pair<BundleRow, std::shared_ptr<offline_cache::SignedBundle>>>> recent_parsed();
  // Fills in a node's board, the newest bundle served to it and its offline budget left.
  console::FleetNode fleet_node(NodeRow node, const std::vector<std::pair<BundleRow, std::shared_ptr<offline_cache::SignedBundle>>>& recent,
                                int64_t now);
  // The fleet a node enrolling now joins (hub.yaml's fleets).
  std::string fleet_at_enrolment(const std::string& node_id) const {
    auto it = config.assigned_fleets.find(node_id);
    return it == config.assigned_fleets.end() ? config.default_fleet : it->second;
  }
  asio::awaitable<Response> get_bundle(const Request& req);
  // The newest bundle whose scope admits `scope` (any bundle when none), among the
  // kScopeSearch newest published.
  static constexpr size_t kScopeSearch = 32;
  Result<std::optional<BundleRow>> newest_bundle_for(const std::optional<offline_cache::NodeScope>& scope);
  std::map<std::string, std::shared_ptr<offline_cache::SignedBundle>> bundle_admits;  // by sha256
  // A published bundle, parsed (once: bundle_admits keeps it).
  Result<std::shared_ptr<offline_cache::SignedBundle>> parsed_bundle(const BundleRow& b);

  Result<NodeRow> known_node(const std::string& node_id) {
    OUTPOST_TRY(auto n, store->node(node_id));
    if (!n) return fail(errc::not_found, "node " + node_id + " is not enrolled");
    return std::move(*n);
  }
  void alert(const std::string& node_id, const std::string& kind, const std::string& detail) {
    const auto now = std::chrono::steady_clock::now();
    auto& last = last_alert[{node_id, kind}];
    if (last != std::chrono::steady_clock::time_point{} && now - last < std::chrono::minutes(1)) {
      log::warn("hub.alert_suppressed", {{"node", node_id}, {"kind", kind}, {"detail", detail}});
      return;
    }
    last = now;
    alert_counts.add({kind});
    log::warn("hub.alert", {{"node", node_id}, {"kind", kind}, {"detail", detail}});
    auto r = store->add_alert({node_id, kind, detail, format_rfc3339_utc(unix_now())});
    if (!r) log::error("hub.store", {{"error", r.error().message()}});
  }
};

asio::awaitable<void> Hub::Impl::accept_loop() {
  for (;;) {
    // At the cap, new connections wait in the kernel's listen backlog until one closes.
    while (connections >= config.max_connections && acceptor.is_open()) {
      asio::steady_timer pause(io, std::chrono::milliseconds(50));
      co_await pause.async_wait(kNoThrow);
    }
    auto [ec, socket] = co_await acceptor.async_accept(kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      // Out of descriptors or memory: retrying at once would spin.
      log::warn("hub.accept", {{"error", ec.message()}});
      asio::steady_timer pause(io, std::chrono::milliseconds(100));
      co_await pause.async_wait(kNoThrow);
      continue;
    }
    asio::co_spawn(io, serve(std::move(socket)), asio::detached);
  }
}

asio::awaitable<void> Hub::Impl::wake_loop() {
  if (!store->can_wake()) co_return;  // one instance (SQLite): nobody else to hear from
  auto backoff = std::chrono::seconds(1);
  for (;;) {
    // Asio owns (and closes) a descriptor of its own, made anew after each drain: the store may
    // have re-established its connection on another socket (maybe under the same number).
    if (const int fd = store->wake_fd(); fd >= 0) {
      const int own = ::dup(fd);
      if (own < 0) {  // out of descriptors: try again later rather than end the loop
        log::warn("hub.wake", {{"error", std::string("dup: ") + std::strerror(errno)}});
        asio::steady_timer pause(io, backoff);
        co_await pause.async_wait(kNoThrow);
        backoff = std::min(backoff * 2, std::chrono::seconds(30));
        continue;
      }
      asio::posix::stream_descriptor readable(io, own);
      auto [ec] = co_await readable.async_wait(asio::posix::stream_descriptor::wait_read, kNoThrow);
      if (ec == asio::error::operation_aborted) co_return;
    }
    auto woken = store->drain_wakes();
    if (!woken) {
      // Meanwhile pollers here still see a publish elsewhere when their hold ends.
      log::warn("hub.wake", {{"error", woken.error().message()}, {"retry_s", std::to_string(backoff.count())}});
      asio::steady_timer pause(io, backoff);
      co_await pause.async_wait(kNoThrow);
      backoff = std::min(backoff * 2, std::chrono::seconds(30));
      continue;
    }
    backoff = std::chrono::seconds(1);
    for (const auto& node : *woken) wake(node);
  }
}

std::variant<uint64_t, Response> Hub::Impl::body_limit(const http::request_header<>& h) {
  constexpr uint64_t kSmall = 1 << 20;  // enrolment, queries
  const auto parts = path_parts(h.target());
  const bool large_route = (h.method() == http::verb::post && parts.size() == 4 && parts[1] == "nodes" && parts[3] == "records") ||
                           (h.method() == http::verb::put && parts.size() == 4 && parts[1] == "nodes" && parts[3] == "evidence");
  if (h.method() == http::verb::post && parts.size() == 2 && parts[0] == "v1" && parts[1] == "bundles") {
    return std::max<uint64_t>(kSmall, std::min<uint64_t>(config.max_upload_bytes, 16ull << 20));
  }
  if (!large_route || parts[0] != "v1") return kSmall;
  // Large bodies only for nodes the hub knows; the node is looked up again after the read.
  auto node = store->node(parts[2]);
  if (!node) return reply_error(500, node.error().message());
  // An unknown node's body is still read (to the small limit) so that the 404 reaches a client
  // that is still sending it.
  return *node ? config.max_upload_bytes : kSmall;
}

asio::awaitable<void> Hub::Impl::serve(tcp::socket socket) {
  ++connections;
  struct Count {
    size_t& n;
    ~Count() { --n; }
  } count{connections};
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  std::string peer;
  if (auto ep = socket.remote_endpoint(ignored); !ignored) peer = ep.address().to_string() + ":" + std::to_string(ep.port());
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
    // Beast checks Content-Length against the body limit as the header ends: the largest any
    // route takes; the route's own limit is applied once the header says which route it is.
    parser.body_limit(std::max<uint64_t>(config.max_upload_bytes, 1 << 20));
    std::optional<Response> early;  // an answer given before the body is read
    const Credential* who = nullptr;
    {
      tls::SocketDeadline deadline(stream.socket(), std::chrono::seconds(120));  // idle keep-alive
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, kNoThrow);
      if (ec == http::error::body_limit) {
        early = reply_error(413, "request body larger than " + std::to_string(config.max_upload_bytes) + " bytes");
      } else if (ec) {
        if (ec != http::error::end_of_stream) log::debug("hub.read", {{"error", ec.message()}});
        break;
      }
      if (!early) {
        const auto& h = parser.get();
        if (const Access access = access_for(h); access.roles != 0 || !access.node.empty()) {
          auto a = authorize(h, access, route_index(path_parts(h.target()), h.method()), peer);
          if (auto* refused = std::get_if<Response>(&a)) {
            early = std::move(*refused);
          } else {
            who = std::get<const Credential*>(a);
          }
        }
      }
      auto limit = early ? std::variant<uint64_t, Response>(uint64_t{0}) : body_limit(parser.get());
      if (early) {
        // answered above
      } else if (auto* r = std::get_if<Response>(&limit)) {
        early = std::move(*r);
      } else if (const auto cl = parser.content_length(); cl && *cl > std::get<uint64_t>(limit)) {
        early = reply_error(413, "request body larger than " + std::to_string(std::get<uint64_t>(limit)) + " bytes");
      } else {
        parser.body_limit(std::get<uint64_t>(limit));
        auto [bec, bn] = co_await http::async_read(stream, buffer, parser, kNoThrow);
        if (bec == http::error::body_limit) {
          early = reply_error(413, "request body larger than " + std::to_string(std::get<uint64_t>(limit)) + " bytes");
        } else if (bec) {
          log::debug("hub.read", {{"error", bec.message()}});
          break;
        }
      }
    }
    const std::string method(parser.get().method_string()), target(parser.get().target());
    Response res;
    bool keep_alive = false;
    if (early) {
      res = std::move(*early);  // the body was not read: the connection cannot go on
      requests.add({kRoutes[route_index(path_parts(parser.get().target()), parser.get().method())],
                    std::to_string(res.result_int())});
    } else {
      Request req = parser.release();
      const size_t route_at = route_index(path_parts(req.target()), req.method());
      const auto started = std::chrono::steady_clock::now();
      res = co_await route(req, who);
      request_seconds[route_at].observe_ns(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - started).count()));
      requests.add({kRoutes[route_at], std::to_string(res.result_int())});
      // After a refused upload or state, a request pipelined behind it was built on it (the
      // next batch of the same run): the connection ends so that it is not judged too.
      keep_alive = req.keep_alive() && !(res.result_int() >= 400 && req.method() != http::verb::get);
    }
    res.keep_alive(keep_alive);
    res.prepare_payload();
    log::debug("hub.request", {{"method", method}, {"target", target}, {"status", std::to_string(res.result_int())}});
    tls::SocketDeadline deadline(stream.socket(), std::chrono::seconds(60));
    auto [wec, wn] = co_await http::async_write(stream, res, kNoThrow);
    if (wec || !res.keep_alive()) break;
  }
  tls::SocketDeadline deadline(stream.socket(), std::chrono::seconds(5));
  co_await stream.shutdown();
}

size_t Hub::Impl::route_index(const std::vector<std::string>& parts, http::verb method) {
  const auto at = [](std::string_view name) {
    for (size_t i = 0; i < kRoutes.size(); ++i) {
      if (name == kRoutes[i]) return i;
    }
    return kRoutes.size() - 1;
  };
  if (parts.size() == 1 && parts[0] == "metrics") return at("metrics");
  if (!parts.empty() && parts[0] == "console") return at("console");
  if (parts.size() < 2 || parts[0] != "v1") return at("other");
  if (parts.size() == 2) {
    if (parts[1] == "nodes") return at("nodes");
    return at(parts[1]);  // enroll, bundle, bundles, or other
  }
  if (parts[1] != "nodes") return at("other");
  if (parts.size() == 3) return at("node");
  if (parts.size() == 4 && parts[3] == "evidence") return at(method == http::verb::put ? "evidence_put" : "evidence_get");
  return parts.size() == 4 ? at(parts[3]) : at("other");
}

// GET /metrics: the Prometheus exposition. Open, as the responder routes are (docs/hub.md,
// "Not yet": roles); it names nodes only by count.
Response Hub::Impl::metrics_page() {
  metrics::Writer w;
  w.family("outpost_hub_requests_total", "counter", "Requests answered, by route and HTTP status");
  w.counters("outpost_hub_requests_total", requests);
  w.family("outpost_hub_request_seconds", "histogram", "Time from a request's body read to its answer, by route (the store's commit included)");
  for (size_t i = 0; i < kRoutes.size(); ++i) {
    const auto snap = request_seconds[i].snapshot();
    if (snap.count > 0) w.histogram("outpost_hub_request_seconds", {{"route", kRoutes[i]}}, snap);
  }
  w.family("outpost_hub_records_stored_total", "counter", "Audit records verified and stored since the hub started (rate() of it is the ingest rate)");
  w.sample("outpost_hub_records_stored_total", {}, static_cast<double>(records_stored));
  w.family("outpost_hub_ingest_waits_total", "counter", "Record uploads that waited for a place in the ingest queue (hub.yaml ingest_queue)");
  w.sample("outpost_hub_ingest_waits_total", {}, static_cast<double>(ingest_waits));
  if (group_commit) {
    w.family("outpost_hub_group_commits_total", "counter", "SQLite group commits of record uploads and enrolments (one transaction and one flush each)");
    w.sample("outpost_hub_group_commits_total", {}, static_cast<double>(group_commits));
    w.family("outpost_hub_group_commit_items_total", "counter", "Record uploads and enrolments in those groups, stored or refused (over the commits: writes per flush)");
    w.sample("outpost_hub_group_commit_items_total", {}, static_cast<double>(group_commit_items));
  }
  w.family("outpost_hub_record_duplicates_total", "counter", "Uploaded records the hub already held (resent after a lost acknowledgement)");
  w.sample("outpost_hub_record_duplicates_total", {}, static_cast<double>(record_duplicates));
  w.family("outpost_hub_upload_bytes_total", "counter", "Bytes of record uploads accepted");
  w.sample("outpost_hub_upload_bytes_total", {}, static_cast<double>(upload_bytes));
  w.family("outpost_hub_alerts_total", "counter", "Alerts raised since the hub started (forks, refused uploads, AK changes, ...), by kind");
  w.counters("outpost_hub_alerts_total", alert_counts);
  w.family("outpost_hub_refusals_total", "counter", "Requests refused for their credential: none, unknown, or of another role (reason), by route");
  w.counters("outpost_hub_refusals_total", refusals);
  w.family("outpost_hub_open_connections", "gauge", "Open client connections");
  w.sample("outpost_hub_open_connections", {}, static_cast<double>(connections));
  w.family("outpost_hub_bundle_waiters", "gauge", "Nodes long-polling for a new bundle on this instance");
  w.sample("outpost_hub_bundle_waiters", {}, static_cast<double>(bundle_waiters.size()));
  if (auto nodes = store->nodes()) {
    w.family("outpost_hub_nodes", "gauge", "Enrolled nodes");
    w.sample("outpost_hub_nodes", {}, static_cast<double>(nodes->size()));
  }
  Response res{http::status::ok, 11};
  res.set(http::field::content_type, metrics::kContentType);
  res.body() = w.take();
  return res;
}

Hub::Impl::Access Hub::Impl::access_for(const http::request_header<>& h) {
  constexpr unsigned kOperator = static_cast<unsigned>(Role::operator_), kResponder = static_cast<unsigned>(Role::responder),
                     kIam = static_cast<unsigned>(Role::iam);
  const auto parts = path_parts(h.target());
  const http::verb m = h.method();
  if (parts.size() == 1 && parts[0] == "metrics") return {kOperator | kResponder, ""};
  if (!parts.empty() && parts[0] == "console") {
    if (parts.size() == 2 && (parts[1] == "login" || parts[1] == "logout")) return {};  // the sign-in checks the token itself
    return {kOperator | kResponder, "", true};
  }
  if (parts.size() < 2 || parts[0] != "v1") return {};  // a 404 for anyone
  if (parts.size() == 2 && parts[1] == "nodes") return {kOperator | kResponder, ""};
  if (parts.size() == 2 && parts[1] == "bundles") return {kIam, ""};
  // What is served to node N: that node (its node token) or a role; the newest bundle: a role.
  if (parts.size() == 2 && parts[1] == "bundle") return {kOperator | kResponder | kIam, query_param(h.target(), "node")};
  if (parts.size() == 3 && parts[1] == "nodes") return {kOperator | kResponder, ""};
  if (parts.size() == 4 && parts[1] == "nodes" && parts[3] == "evidence" && m == http::verb::get) return {kResponder, ""};
  if (parts.size() == 4 && parts[1] == "nodes" && parts[3] == "fleet") return {kOperator, ""};
  // Enrolment (proved by credential activation), records and evidence state (signed by the
  // node's AK, checked link by link), nonces (worth nothing alone), attestation (a quote).
  return {};
}

std::string Hub::Impl::node_token(const std::string& node_id, const std::string& ak_pem) const {
  // Bound to the AK as well: a node re-enrolled with another TPM does not keep the old token.
  auto mac = hmac_sha256(challenge_key, as_bytes("outpost-hub/node-token/v2\n" + node_id + "\n" + hex_encode(sha256(as_bytes(ak_pem)))));
  return mac ? hex_encode(*mac) : std::string();  // hmac_sha256 fails only on a broken mbedTLS
}

std::string Hub::Impl::console_session_cookie(const std::string& token_hash, int64_t expires_ms) const {
  const std::string body = std::to_string(expires_ms) + "." + token_hash;
  auto mac = hmac_sha256(challenge_key, as_bytes("outpost-hub/console/v1\n" + body));
  return mac ? body + "." + hex_encode(*mac) : std::string();
}

const Credential* Hub::Impl::console_session(std::string_view cookie) const {
  const auto last = cookie.rfind('.');
  if (last == std::string_view::npos) return nullptr;
  const std::string body(cookie.substr(0, last));
  auto mac = hmac_sha256(challenge_key, as_bytes("outpost-hub/console/v1\n" + body));
  if (!mac || !equal_constant_time(as_bytes(cookie.substr(last + 1)), as_bytes(hex_encode(*mac)))) return nullptr;
  const auto dot = body.find('.');
  const auto expires = parse_i64(body.substr(0, dot));
  if (dot == std::string::npos || !expires || *expires < now_ms()) return nullptr;
  auto it = config.credentials.find(body.substr(dot + 1));
  if (it == config.credentials.end()) return nullptr;
  return (it->second.role == Role::operator_ || it->second.role == Role::responder) ? &it->second : nullptr;
}

void Hub::Impl::log_refusal(std::initializer_list<log::Field> fields) {
  const int64_t second = now_ms() / 1000;
  if (second != refusal_second) {
    refusal_second = second;
    refusal_lines = 0;
  }
  if (++refusal_lines > kRefusalLines) {
    ++refusals_unlogged;
    return;
  }
  if (refusals_unlogged > 0) {
    log::warn("hub.refused_unlogged", {{"count", std::to_string(refusals_unlogged)}});
    refusals_unlogged = 0;
  }
  log::warn("hub.refused", fields);
}

std::variant<const Credential*, Response> Hub::Impl::authorize(const http::request_header<>& h, const Access& access,
                                                                size_t route_at, const std::string& peer) {
  const std::string what = std::string(h.method_string()) + " " + std::string(h.target().substr(0, h.target().find('?')));
  if (!access.node.empty()) {
    const std::string presented(h["X-Outpost-Node-Token"]);
    if (presented.empty() && !config.node_tokens_required && std::string_view(h[http::field::authorization]).empty()) {
      return static_cast<const Credential*>(nullptr);  // node_tokens: optional (nodes from before tokens)
    }
    if (!presented.empty()) {
      auto node = store->node(access.node);
      if (node && *node && equal_constant_time(as_bytes(presented), as_bytes(node_token(access.node, (**node).ak_pem)))) {
        return static_cast<const Credential*>(nullptr);
      }
      refusals.add({kRoutes[route_at], "node_token"});
      log_refusal({{"request", what}, {"peer", peer}, {"reason", "node_token"}, {"node", access.node}});
      Response r = reply_error(401, what + ": not node " + access.node + "'s node token (enrol again for it)");
      r.set(http::field::www_authenticate, "Bearer realm=\"outpost-hub\"");
      return r;
    }
  }
  // RFC 7235: the scheme is case-insensitive.
  std::string_view header = h[http::field::authorization];
  std::string_view token;
  if (header.size() > 7 && boost::beast::iequals(header.substr(0, 7), "bearer ")) {
    token = header.substr(7);
    while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
    while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  }
  const Credential* who = nullptr;
  if (token.empty() && access.cookie) {
    const std::string cookie = console_cookie(h[http::field::cookie]);
    who = cookie.empty() ? nullptr : console_session(cookie);
    if (!who && h.method() == http::verb::get) {
      // A browser with no session, or an expired or revoked one: to the sign-in page.
      Response r = reply_html(303, "");
      r.set(http::field::location, "/console/login");
      if (!cookie.empty()) {
        r.set(http::field::set_cookie, std::string(kConsoleCookie) + "=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
      }
      return r;
    }
  }
  if (!token.empty()) {
    auto it = config.credentials.find(token_sha256(token));
    if (it != config.credentials.end()) who = &it->second;
  }
  std::string roles;
  for (Role r : {Role::operator_, Role::responder, Role::iam}) {
    if (access.roles & static_cast<unsigned>(r)) roles += (roles.empty() ? "" : ", ") + std::string(role_name(r));
  }
  if (!access.node.empty()) roles += ", or node " + access.node + " (X-Outpost-Node-Token)";
  if (!who) {
    const char* reason = token.empty() ? "no_credential" : "unknown_credential";
    refusals.add({kRoutes[route_at], reason});
    log_refusal({{"request", what}, {"peer", peer}, {"reason", reason}, {"roles", roles}});
    Response r = reply_error(401, token.empty() ? what + " needs a credential of role " + roles + " (Authorization: Bearer <token>)"
                                                : what + ": the token is not one of this hub's credentials");
    r.set(http::field::www_authenticate, "Bearer realm=\"outpost-hub\"");
    return r;
  }
  if (!(access.roles & static_cast<unsigned>(who->role))) {
    refusals.add({kRoutes[route_at], "role"});
    log_refusal({{"request", what}, {"peer", peer}, {"reason", "role"}, {"credential", who->name}, {"role", role_name(who->role)},
                 {"roles", roles}});
    return reply_error(403, what + " is for role " + roles + "; credential \"" + who->name + "\" is " + role_name(who->role));
  }
  return who;
}

// `who`: the credential serve() found for the route (nullptr: none needed, or the node's own).
asio::awaitable<Response> Hub::Impl::route(Request& req, const Credential* who) {
  const auto parts = path_parts(req.target());
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;
  const bool put = req.method() == http::verb::put;
  if (parts.size() == 1 && parts[0] == "metrics" && get) co_return metrics_page();
  if (!parts.empty() && parts[0] == "console") co_return console(req, parts, who);
  if (parts.size() < 2 || parts[0] != "v1") co_return reply_error(404, "no such resource: " + std::string(req.target()));
  if (parts.size() == 2 && parts[1] == "enroll" && post) co_return co_await enroll(req);
  if (parts.size() == 2 && parts[1] == "nodes" && get) co_return list_nodes();
  if (parts.size() == 2 && parts[1] == "bundle" && get) co_return co_await get_bundle(req);
  if (parts.size() == 2 && parts[1] == "bundles" && post) co_return publish(req);
  if (parts.size() >= 3 && parts[1] == "nodes") {
    const std::string& id = parts[2];
    if (parts.size() == 3 && get) co_return node_info(id);
    if (parts.size() == 4 && parts[3] == "records" && post) co_return co_await upload_records(id, req);
    if (parts.size() == 4 && parts[3] == "nonce" && get) co_return nonce(id);
    if (parts.size() == 4 && parts[3] == "attestation" && post) co_return attestation(id, req);
    if (parts.size() == 4 && parts[3] == "evidence" && put) co_return put_evidence(id, req);
    if (parts.size() == 4 && parts[3] == "evidence" && get) co_return pull_evidence(id, req);
    if (parts.size() == 4 && parts[3] == "fleet" && put) co_return move_fleet(id, req, who);
  }
  co_return reply_error(404, "no such resource: " + std::string(req.method_string()) + " " + std::string(req.target()));
}

Digest Hub::Impl::activation_secret(const std::string& node_id, ByteView ak_name, int64_t expires_ms) const {
  std::string msg = "outpost-hub/activation/v1\n" + node_id + "\n" + hex_encode(ak_name) + "\n" + std::to_string(expires_ms);
  auto mac = hmac_sha256(challenge_key, as_bytes(msg));
  return mac ? *mac : Digest{};  // hmac_sha256 fails only on a broken mbedTLS; an all-zero secret opens nothing
}

// POST /v1/enroll, body: the node's node.json. The node id must be the one its EK gives and
// the AK must be an AK (restricted, fixedTPM, signing). A new node first receives a credential
// made for its EK and AK (202); it enrols by sending the same body again with the opened
// secret in X-Outpost-Activation ("<expires_ms>:<hex>"), which only the TPM holding both keys
// can produce. The AK is pinned at enrolment: a different AK later is refused (a swapped TPM
// or a forged identity needs the operator). The answer to a node that proved its TPM carries
// its node token and fleet; a known node asks for them again (X-Outpost-Want-Token) through
// the same challenge, since node.json alone is public.
asio::awaitable<Response> Hub::Impl::enroll(const Request& req) {
  NewNode fresh;
  if (auto answer = check_enrolment(req, fresh)) co_return std::move(*answer);
  if (!group_commit) co_return enrolled(fresh, store->enroll(fresh.row));
  // SQLite: in the commit thread's next group, so a fleet enrolling at once shares flushes
  // and the loop does not wait for any.
  Verified v;
  v.item.enrol = fresh.row;
  Ingested done = co_await commit_in_group(std::move(v));
  count_group(done);
  co_return enrolled(fresh, done.commit);
}

Response Hub::Impl::enrolled(const NewNode& fresh, const Result<void>& inserted) {
  if (!inserted && inserted.error().is(errc::already_exists)) {
    // Another enrolment of this node was stored between the check and this insert (a retry,
    // another instance, the node's twin): answered as one found enrolled at the check would be.
    auto existing = store->node(fresh.row.node_id);
    if (!existing || !*existing) return reply_error(500, existing ? "enrol: the node vanished" : existing.error().message());
    if ((*existing)->ak_pem != fresh.row.ak_pem) {
      alert(fresh.row.node_id, "ak_changed", "enrolment with a different AK refused");
      return reply_error(409, "enrol: node " + fresh.row.node_id + " is enrolled with another AK; a swapped or cleared TPM needs the operator");
    }
    json::object answer{{"node_id", fresh.row.node_id}, {"acked_seq", (*existing)->acked_seq}, {"enrolled", false}};
    if (fresh.activated) {  // it showed its TPM: its token, as a known node that asked gets
      answer["fleet"] = (*existing)->fleet;
      answer["node_token"] = node_token(fresh.row.node_id, (*existing)->ak_pem);
    }
    return reply_json(200, answer);
  }
  if (!inserted) return reply_error(500, inserted.error().message());
  const NodeRow& n = fresh.row;
  log::info("hub.enrolled", {{"node", n.node_id}, {"board", fresh.board}, {"activated", fresh.activated ? "yes" : "no"}, {"fleet", n.fleet}});
  return reply_json(200, json::object{{"node_id", n.node_id}, {"acked_seq", 0}, {"enrolled", true}, {"activated", fresh.activated},
                                      {"fleet", n.fleet}, {"node_token", node_token(n.node_id, n.ak_pem)}});
}

std::optional<Response> Hub::Impl::check_enrolment(const Request& req, NewNode& fresh) {
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
  auto ak_name = attestation::name_of_public(id->ak_public_area);
  if (!ak_name) return reply_error(422, "enrol: AK public area: " + ak_name.error().message());
  // With activation the AK's attributes are what the proof rests on (fixedTPM, restricted,
  // sign); without it the AK is trusted on first use, whatever it is.
  if (auto shape = config.activation_required
                       ? attestation::Tpm::check_shape(attestation::PrimaryKey::ak, {0, id->ak_public_area, *ak_name, id->ak_public})
                       : Result<void>(ok());
      !shape) {
    return reply_error(422, "enrol: the AK is not an attestation key: " + shape.error().message());
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
    // No touch(): node.json is public, so this request proves nothing about the node being alive.
    if (std::string_view(req["X-Outpost-Want-Token"]).empty()) {
      return reply_json(200, json::object{{"node_id", id->node_id}, {"acked_seq", (*existing)->acked_seq}, {"enrolled", false}});
    }
    if (!config.activation_required) {
      // Nothing but node.json, which is public, would stand behind the token: none is handed
      // out again (the node goes on uploading; its polls need node_tokens: optional).
      return reply_json(200, json::object{{"node_id", id->node_id}, {"acked_seq", (*existing)->acked_seq}, {"enrolled", false}});
    }
  }
  bool activated = false;
  if (config.activation_required) {
    const std::string answer(req["X-Outpost-Activation"]);
    if (answer.empty()) {
      const int64_t expires = now_ms() + 5 * 60 * 1000;
      const Digest secret = activation_secret(id->node_id, *ak_name, expires);
      auto challenge = attestation::make_credential(id->ek_public, *ak_name, secret);
      if (!challenge) return reply_error(500, "enrol: make the credential: " + challenge.error().message());
      return reply_json(202, json::object{{"node_id", id->node_id},
                                          {"activation", json::object{{"credential_blob", hex_encode(challenge->credential_blob)},
                                                                      {"encrypted_secret", hex_encode(challenge->encrypted_secret)},
                                                                      {"expires_ms", expires}}}});
    }
    const auto colon = answer.find(':');
    const auto expires = parse_i64(answer.substr(0, colon));
    auto secret = colon == std::string::npos ? Result<Bytes>(fail(errc::invalid_argument, "no ':'")) : hex_decode(answer.substr(colon + 1));
    if (!expires || !secret) return reply_error(400, "enrol: X-Outpost-Activation: \"<expires_ms>:<hex>\" expected");
    if (*expires < now_ms()) return reply_error(403, "enrol: the activation challenge expired; enrol again for a new one");
    const Digest want = activation_secret(id->node_id, *ak_name, *expires);
    if (!equal_constant_time(*secret, want)) {
      alert(id->node_id, "activation_failed", "the secret returned is not the one the credential held");
      return reply_error(403, "enrol: credential activation failed: the AK is not shown to be in the TPM of this EK");
    }
    activated = true;
  }
  if (*existing) {  // a known node that showed its TPM (or any, with activation off: trust on first use)
    return reply_json(200, json::object{{"node_id", id->node_id}, {"acked_seq", (*existing)->acked_seq}, {"enrolled", false},
                                        {"fleet", (*existing)->fleet}, {"node_token", node_token(id->node_id, (*existing)->ak_pem)}});
  }
  NodeRow& n = fresh.row;
  n.node_id = id->node_id;
  n.identity_json = std::string(req.body());
  n.ak_pem = id->ak_public.to_pem();
  n.enrolled_at = format_rfc3339_utc(unix_now());
  n.last_contact_ms = now_ms();
  n.fleet = fleet_at_enrolment(n.node_id);
  fresh.activated = activated;
  fresh.board = id->board;
  return std::nullopt;
}

// Nonces for fresh attestation are stateless, so any hub instance on the database checks any
// other's: 8 bytes of expiry (Unix ms, big-endian) and a MAC over the node and the expiry.
constexpr size_t kNonceMacBytes = 24;
constexpr int64_t kNonceLifetimeMs = 5 * 60 * 1000;

Bytes Hub::Impl::nonce_mac(const std::string& node_id, int64_t expires_ms) const {
  const std::string msg = "outpost-hub/nonce/v1\n" + node_id + "\n" + std::to_string(expires_ms);
  auto mac = hmac_sha256(challenge_key, as_bytes(msg));
  return mac ? Bytes(mac->begin(), mac->begin() + kNonceMacBytes) : Bytes(kNonceMacBytes, 0);
}

// GET /v1/nodes/<id>/nonce: a nonce the node's next quote for the hub must carry.
Response Hub::Impl::nonce(const std::string& node_id) {
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  const int64_t expires = now_ms() + kNonceLifetimeMs;
  Bytes n(8);
  for (int i = 0; i < 8; ++i) n[static_cast<size_t>(i)] = static_cast<uint8_t>(static_cast<uint64_t>(expires) >> (56 - 8 * i));
  const Bytes mac = nonce_mac(node_id, expires);
  n.insert(n.end(), mac.begin(), mac.end());
  return reply_json(200, json::object{{"nonce", hex_encode(n)}, {"expires_ms", expires}});
}

// POST /v1/nodes/<id>/attestation, body {"nonce","attest","signature","pcrs"} (hex; pcrs in
// the tpm2-tools serialized form): a quote by the node's AK over a nonce this hub handed out
// and not yet expired. It shows the node alive now, with these PCRs, and moves its last contact.
Response Hub::Impl::attestation(const std::string& node_id, const Request& req) {
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  boost::system::error_code ec;
  json::value v = json::parse(req.body(), ec);
  auto field = [&](const char* k) -> Result<Bytes> {
    if (ec || !v.is_object() || !v.as_object().contains(k) || !v.as_object().at(k).is_string()) {
      return fail(errc::invalid_argument, std::string(k) + " (hex) missing");
    }
    return hex_decode(v.as_object().at(k).as_string());
  };
  auto nonce = field("nonce");
  auto attest = field("attest");
  auto signature = field("signature");
  auto pcrs_bytes = field("pcrs");
  for (const auto* f : {&nonce, &attest, &signature, &pcrs_bytes}) {
    if (!*f) return reply_error(400, "attestation: " + f->error().message());
  }
  if (nonce->size() != 8 + kNonceMacBytes) return reply_error(400, "attestation: not a nonce of this hub");
  int64_t expires = 0;
  for (size_t i = 0; i < 8; ++i) expires = static_cast<int64_t>(static_cast<uint64_t>(expires) << 8 | (*nonce)[i]);
  if (!equal_constant_time(ByteView(nonce->data() + 8, kNonceMacBytes), nonce_mac(node_id, expires))) {
    return reply_error(403, "attestation: the nonce was not handed out to node " + node_id + " by this hub");
  }
  if (expires < now_ms()) return reply_error(403, "attestation: the nonce expired; ask for a new one");
  auto pcrs = attestation::decode_pcrs_tpm2tools(*pcrs_bytes);
  if (!pcrs) return reply_error(422, "attestation: pcrs: " + pcrs.error().message());
  auto ak = EcPublicKey::from_pem(node->ak_pem);
  if (!ak) return reply_error(500, "stored AK: " + ak.error().message());
  auto parsed = attestation::verify_quote({std::move(*attest), std::move(*signature)}, *ak, *nonce, *pcrs);
  if (!parsed) return reply_error(422, "attestation: " + parsed.error().message());
  if (node->last_clock && parsed->clock.reset_count < node->last_clock->reset_count) {
    alert(node_id, "clock_rollback", "a fresh quote's reset count is behind the last checkpoint's");
    return reply_error(409, "attestation: the TPM reset count went back (" + std::to_string(parsed->clock.reset_count) + " < " +
                                std::to_string(node->last_clock->reset_count) + ")");
  }
  (void)store->touch_attested(node_id, now_ms());
  log::info("hub.attested", {{"node", node_id}, {"reset_count", std::to_string(parsed->clock.reset_count)}});
  return reply_json(200, json::object{{"verified", true},
                                      {"clock", parsed->clock.clock},
                                      {"reset_count", parsed->clock.reset_count},
                                      {"restart_count", parsed->clock.restart_count},
                                      {"pcr_digest", hex_encode(parsed->pcr_digest)}});
}

// POST /v1/nodes/<id>/records, body: audit frames from the hub's acknowledged sequence on (or
// earlier: records the hub has are compared and skipped). Stored through the last checkpoint
// whose quote the node's AK signed; the rest waits for the next checkpoint.
asio::awaitable<Response> Hub::Impl::upload_records(const std::string& node_id, Request& req) {
  const bool placed = co_await take_ingest_slot(req.body().size());  // not in the condition: GCC 12
  if (!placed) {
    Response busy = reply_error(503, "records: the hub is busy storing other uploads; send it again shortly");
    busy.set(http::field::retry_after, "1");
    co_return busy;
  }
  struct InFlight {
    Impl& hub;
    ~InFlight() { hub.release_ingest_slot(); }
  } in_flight{*this};
  const size_t body_bytes = req.body().size();
  // The job owns what it reads (the body moved in, a few KB to max_upload_bytes), so a hub
  // stopping while it runs leaves it nothing dangling; `this` outlives it (the pool is
  // stopped and joined when the hub stops).
  // Verified on an ingest thread; with group commit, handed back with its rows to queue for
  // the commit thread, else committed there too.
  auto verified = std::make_shared<std::optional<Verified>>();
  auto job = [this, verified, node_id, body = std::move(req.body()), durable = std::string(req["X-Outpost-Durable-Seq"])]() -> Ingested {
    auto st = take_store();
    if (!st) return Ingested{reply_error(500, st.error().message()), std::nullopt, 0, 0};
    auto v = verify_upload(**st, node_id, body, durable);
    Ingested out;
    if (auto* answer = std::get_if<Ingested>(&v)) {
      out = std::move(*answer);
    } else if (group_commit) {
      *verified = std::move(std::get<Verified>(v));
    } else {
      const auto& item = std::get<Verified>(v).item;
      out = committed(std::get<Verified>(v), (*st)->commit_records(item.node_id, item.expect_acked, item.rows, item.last_clock, item.also));
    }
    give_store(std::move(*st));
    return out;
  };
  Ingested out = co_await asio::co_spawn(*ingest_pool, run_on_pool(std::move(job)), asio::use_awaitable);
  if (verified->has_value()) out = co_await commit_in_group(std::move(**verified));
  // Back on the event loop.
  if (out.alert) alert(node_id, out.alert->first, out.alert->second);
  records_stored += out.stored;
  count_group(out);
  record_duplicates += out.duplicates;
  if (out.response.result_int() == 200) upload_bytes += body_bytes;
  co_return std::move(out.response);
}

// A slot in the ingest pool's queue: at once below the cap, else after the uploads ahead of
// this one; false past kIngestSlotWait, or at once when the waiting bodies would pass
// kIngestWaitBytes. (When the hub stops, a waiting frame is destroyed, not resumed.)
asio::awaitable<bool> Hub::Impl::take_ingest_slot(uint64_t body_bytes) {
  if (ingest_in_flight < config.ingest_queue && ingest_waiters.empty()) {
    ++ingest_in_flight;
    co_return true;
  }
  if (ingest_waiting_bytes + body_bytes > kIngestWaitBytes) co_return false;
  ++ingest_waits;
  SlotWaiter w{asio::steady_timer(io, kIngestSlotWait)};
  ingest_waiters.push_back(&w);
  // Leaves the queue however this frame ends: timed out, or destroyed with the hub's loop.
  struct Queued {
    Impl& hub;
    SlotWaiter* waiter;
    uint64_t bytes;
    ~Queued() {
      if (auto it = std::find(hub.ingest_waiters.begin(), hub.ingest_waiters.end(), waiter); it != hub.ingest_waiters.end()) {
        hub.ingest_waiters.erase(it);
      }
      hub.ingest_waiting_bytes -= bytes;
    }
  } queued{*this, &w, body_bytes};
  ingest_waiting_bytes += body_bytes;
  co_await w.timer.async_wait(kNoThrow);
  co_return w.granted;
}

// The job, in a coroutine frame of its own that owns it (a capturing lambda coroutine would
// keep only a reference to a lambda gone by the time it runs).
asio::awaitable<Hub::Impl::Ingested> Hub::Impl::run_on_pool(std::function<Ingested()> job) { co_return job(); }

asio::awaitable<Hub::Impl::Ingested> Hub::Impl::commit_in_group(Verified item) {
  auto queued = std::make_shared<QueuedCommit>(QueuedCommit{std::move(item), std::nullopt});
  {
    std::lock_guard lock(commit_mu);
    commit_queue.push_back(queued);
  }
  auto commit = [this, queued]() -> Ingested {
    Result<void> r = commit_queued(queued);
    Ingested answer = queued->verified.item.enrol ? Ingested{} : committed(queued->verified, r);
    answer.commit = std::move(r);
    answer.led_groups = queued->led_groups;
    answer.led_items = queued->led_items;
    return answer;
  };
  co_return co_await asio::co_spawn(*commit_thread, run_on_pool(std::move(commit)), asio::use_awaitable);
}

// On the commit thread, one job per queued upload, in the order queued: the first job finds
// its upload and every one queued after it, and commits them together; the jobs after it find
// their result there.
Result<void> Hub::Impl::commit_queued(const std::shared_ptr<QueuedCommit>& mine) {
  // Not answered by an earlier job: still queued. The groups are taken from the front, each
  // up to kGroupItems writes and kGroupBytes of rows (so one transaction stays within the
  // connection's cache and no upload waits on an unbounded group), until this one's is done.
  while (!mine->result) {
    std::vector<std::shared_ptr<QueuedCommit>> group;
    {
      std::lock_guard lock(commit_mu);
      size_t bytes = 0, n = 0;
      while (n < commit_queue.size() && n < kGroupItems) {
        size_t item_bytes = 0;
        for (const auto& r : commit_queue[n]->verified.item.rows) item_bytes += r.frame.size();
        if (n > 0 && bytes + item_bytes > kGroupBytes) break;
        bytes += item_bytes;
        ++n;
      }
      group.assign(commit_queue.begin(), commit_queue.begin() + static_cast<std::ptrdiff_t>(n));
      commit_queue.erase(commit_queue.begin(), commit_queue.begin() + static_cast<std::ptrdiff_t>(n));
    }
    if (group.empty()) return fail(errc::io, "commit_queued: the upload is neither queued nor answered");
    std::vector<const Store::CommitItem*> items;
    items.reserve(group.size());
    for (const auto& q : group) items.push_back(&q->verified.item);
    auto results = commit_store->commit_group(items);
    for (size_t i = 0; i < group.size(); ++i) group[i]->result = std::move(results[i]);
    ++mine->led_groups;
    mine->led_items += group.size();
  }
  return *mine->result;
}

// The answer to an upload from its commit's result.
Hub::Impl::Ingested Hub::Impl::committed(const Verified& v, const Result<void>& commit) {
  auto refuse = [](unsigned status, const std::string& message) { return Ingested{reply_error(status, message), std::nullopt, 0, 0}; };
  if (!commit) {
    if (commit.error().is(errc::already_exists)) return refuse(409, commit.error().message());
    return refuse(commit.error().code().value() == ENOSPC ? 507 : 500, commit.error().message());
  }
  const auto& rows = v.item.rows;
  return Ingested{reply_json(200, json::object{{"acked_seq", rows.back().seq}, {"stored", rows.size()}, {"duplicates", v.duplicates},
                                               {"pending", v.pending}}),
                  std::nullopt, rows.size(), v.duplicates};
}

// On an ingest thread. Stored through the last checkpoint whose quote the node's AK signed.
std::variant<Hub::Impl::Ingested, Hub::Impl::Verified> Hub::Impl::verify_upload(Store& st, const std::string& node_id,
                                                                                const std::string& body,
                                                                                const std::string& durable_header) {
  auto refuse = [](unsigned status, const std::string& message) { return Ingested{reply_error(status, message), std::nullopt, 0, 0}; };
  auto node = st.node(node_id);
  if (!node) return refuse(500, node.error().message());
  if (!*node) return refuse(404, "node " + node_id + " is not enrolled");
  auto ak = EcPublicKey::from_pem((*node)->ak_pem);
  if (!ak) return refuse(500, "stored AK: " + ak.error().message());
  std::optional<Error> lookup_error;
  UploadPlan plan = plan_upload(as_bytes(body), **node, *ak, [&](uint64_t seq) -> std::optional<Digest> {
    auto h = st.record_hash(node_id, seq);
    if (!h && !lookup_error) lookup_error = h.error();
    return h ? *h : std::nullopt;
  });
  // A failed lookup is the hub's trouble, not evidence of a fork.
  if (lookup_error) return refuse(500, lookup_error->message());
  if (plan.verdict == UploadPlan::Verdict::fork) {
    return Ingested{reply_error(409, plan.reason), std::pair<std::string, std::string>{"fork", plan.reason}, 0, 0};
  }
  if (plan.verdict == UploadPlan::Verdict::refused) {
    return Ingested{reply_error(422, "records: " + plan.reason), std::pair<std::string, std::string>{"refused_upload", plan.reason}, 0, 0};
  }
  if (plan.rows.empty()) {
    return Ingested{reply_json(200, json::object{{"acked_seq", (*node)->acked_seq}, {"stored", 0}, {"duplicates", plan.duplicates},
                                                 {"pending", plan.pending}}),
                    std::nullopt, 0, plan.duplicates};
  }
  Verified v;
  v.item.node_id = node_id;
  v.item.expect_acked = (*node)->acked_seq;
  v.item.rows = std::move(plan.rows);
  v.item.last_clock = plan.clock;
  // The node's word on how far its log is durable (the console's backlog; not signed).
  if (auto d = parse_i64(durable_header); d && *d >= 0) v.item.also.durable_seq = static_cast<uint64_t>(*d);
  // Last contact moves only for records whose checkpoint quote the node's AK signed: anyone
  // can replay records the hub already holds.
  v.item.also.contact_ms = now_ms();
  if (plan.bundle_version > 0) v.item.also.bundle_version = plan.bundle_version;
  v.duplicates = plan.duplicates;
  v.pending = plan.pending;
  return v;
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
  // The state package is not signed as a whole (its parts are: certifications by the AK, the
  // runtime log against quoted PCRs), so a replay of an older one is refused by what only
  // moves forward on the node: its counters and the newest bundle it installed.
  auto held = store->evidence_state(node_id);
  if (!held) return reply_error(500, held.error().message());
  if (*held) {
    if (auto old = offline_cache::parse_evidence_package(**held)) {
      if (auto why = older_state(*pkg, *old)) return reply_error(409, "evidence: " + *why);
    }
  }
  auto r = store->put_evidence_state(node_id, Bytes(req.body().begin(), req.body().end()), format_rfc3339_utc(unix_now()));
  if (!r) return reply_error(500, r.error().message());
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
  bool past_until = false, too_large = false;
  auto scan = store->scan_records(node_id, from, [&](const RecordRow& r) {
    if (pkg.records.size() + r.frame.size() > config.max_pull_bytes) {
      too_large = true;
      return false;
    }
    if (until > 0 && r.time_ms > until) past_until = true;
    pkg.records.insert(pkg.records.end(), r.frame.begin(), r.frame.end());
    // Past the range, go on only to the checkpoint that anchors it.
    return !(past_until && r.kind == static_cast<uint8_t>(offline_cache::RecordKind::checkpoint));
  });
  if (!scan) return reply_error(500, scan.error().message());
  if (too_large) {
    return reply_error(413, "the records from seq " + std::to_string(from) + " exceed max_pull_bytes (" +
                                std::to_string(config.max_pull_bytes) + "); ask for a shorter range with since and until");
  }
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
                                      {"last_attested_ms", node->last_attested_ms},
                                      {"fleet", node->fleet},
                                      {"bundle_version", node->bundle_version},
                                      {"durable_seq", node->durable_seq},
                                      {"alerts", std::move(alerts)}});
}

Response Hub::Impl::list_nodes() {
  auto nodes = store->nodes();
  if (!nodes) return reply_error(500, nodes.error().message());
  json::array out;
  for (const auto& n : *nodes) {
    out.push_back(json::object{{"node_id", n.node_id},
                               {"fleet", n.fleet},
                               {"acked_seq", n.acked_seq},
                               {"durable_seq", n.durable_seq},
                               {"last_contact_ms", n.last_contact_ms},
                               {"last_attested_ms", n.last_attested_ms},
                               {"bundle_version", n.bundle_version}});
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
  served_changed("");
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
  // ?node=N: the newest bundle whose scope admits that node (its enrolled id and board, and the
  // fleet it is in now, which every answer names in X-Outpost-Fleet: the node learns a move
  // from it). Without it, the newest bundle (publishers, responders).
  const std::string node_id = query_param(req.target(), "node");
  std::optional<offline_cache::NodeScope> scope;
  auto read_scope = [&]() -> std::optional<Response> {
    if (node_id.empty()) return std::nullopt;
    auto node = known_node(node_id);
    if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
    auto identity = attestation::NodeIdentity::from_json(node->identity_json);
    if (!identity) return reply_error(500, "stored identity: " + identity.error().message());
    scope = offline_cache::NodeScope{identity->node_id, identity->board, node->fleet};
    return std::nullopt;
  };
  if (auto refused = read_scope()) co_return std::move(*refused);
  // The node says which fleet it believes it is in (&fleet=): if that is not the hub's word, it
  // is answered at once (a move it missed, or a state directory that lost it).
  const std::string fleet_asked = query_param_given(req.target(), "fleet").value_or(scope ? scope->fleet : std::string());
  const std::string inm(req[http::field::if_none_match]);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(wait);
  for (;;) {
    auto current = newest_bundle_for(scope);
    if (!current) co_return reply_error(500, current.error().message());
    const std::string etag = *current ? "\"" + (*current)->sha256 + "\"" : std::string();
    std::optional<Response> r;
    if (*current && inm != etag) {
      r = reply(200, std::string(as_chars((*current)->bytes)), "application/vnd.outpost.bundle");
      r->set(http::field::etag, etag);
      r->set("X-Outpost-Bundle-Version", std::to_string((*current)->version));
    } else if (std::chrono::steady_clock::now() >= until || (scope && scope->fleet != fleet_asked)) {
      // Held to the end, or the node was moved while it waited: it hears of its fleet now.
      if (*current) {
        r = reply(304, "");
        r->set(http::field::etag, etag);
      } else {
        r = reply_error(404, scope ? "no bundle published for this node" : "no bundle published");
      }
    }
    if (r) {
      if (scope) r->set("X-Outpost-Fleet", scope->fleet);
      co_return std::move(*r);
    }
    asio::steady_timer timer(io);
    timer.expires_at(until);
    const auto waiting = bundle_waiters.emplace(node_id, &timer);
    co_await timer.async_wait(kNoThrow);
    bundle_waiters.erase(waiting);
    if (auto refused = read_scope()) co_return std::move(*refused);
  }
}

// PUT /v1/nodes/<id>/fleet, body {"fleet": "name"} ("" or null: no fleet). The hub serves the
// node the newest bundle of its new fleet; the node learns the move from its next bundle poll
// (woken now) and installs that bundle when it is newer than the one in force.
Response Hub::Impl::move_fleet(const std::string& node_id, const Request& req, const Credential* by) {
  boost::system::error_code ec;
  json::value v = json::parse(req.body(), ec);
  const json::value* f = !ec && v.is_object() ? v.as_object().if_contains("fleet") : nullptr;
  if (!f || !(f->is_string() || f->is_null())) return reply_error(400, "fleet: a body {\"fleet\": \"name\"} expected");
  const std::string fleet = f->is_string() ? std::string(f->as_string()) : std::string();
  if (!fleet.empty() && !valid_fleet_name(fleet)) {
    return reply_error(400, "fleet: \"" + fleet + "\" is not a fleet name (1 to 64 of A-Z a-z 0-9 . _ -)");
  }
  auto node = known_node(node_id);
  if (!node) return reply_error(node.error().is(errc::not_found) ? 404 : 500, node.error().message());
  auto r = store->set_fleet(node_id, fleet);
  if (!r) return reply_error(r.error().is(errc::not_found) ? 404 : 500, r.error().message());
  log::info("hub.fleet_moved", {{"node", node_id}, {"from", node->fleet}, {"to", fleet}, {"by", by ? by->name : "?"}});
  served_changed(node_id);
  json::object out{{"node_id", node_id}, {"fleet", fleet}, {"previous", node->fleet}};
  // The node installs only a bundle newer than the one in force: if its new fleet has none, the
  // old fleet's policy stays in force there until one is published.
  if (auto identity = attestation::NodeIdentity::from_json(node->identity_json)) {
    auto served = newest_bundle_for(offline_cache::NodeScope{identity->node_id, identity->board, fleet});
    const uint64_t newest = served && *served ? (**served).version : 0;
    out["newest_for_fleet"] = newest;
    if (node->bundle_version > 0 && newest <= node->bundle_version) {
      out["warning"] = "node " + node_id + " runs bundle v" + std::to_string(node->bundle_version) + " and fleet \"" + fleet +
                       "\" has " + (newest ? "only v" + std::to_string(newest) : std::string("no bundle")) +
                       ": the policy in force there stays until a newer bundle for the fleet is published";
    }
  }
  return reply_json(200, out);
}

Result<std::optional<BundleRow>> Hub::Impl::newest_bundle_for(const std::optional<offline_cache::NodeScope>& scope) {
  if (!scope) return store->latest_bundle();
  OUTPOST_TRY(auto recent, store->recent_bundles(kScopeSearch));
  for (auto& b : recent) {
    OUTPOST_TRY(auto parsed, parsed_bundle(b));
    if (offline_cache::check_scope(parsed->bundle(), *scope)) return std::optional<BundleRow>(std::move(b));
  }
  return std::optional<BundleRow>();
}

Result<std::shared_ptr<offline_cache::SignedBundle>> Hub::Impl::parsed_bundle(const BundleRow& b) {
  auto it = bundle_admits.find(b.sha256);
  if (it == bundle_admits.end()) {
    // Bundles never change once published: each is parsed once (they passed publish's checks).
    auto parsed = offline_cache::SignedBundle::parse(b.bytes);
    if (!parsed) return fail(parsed.error().wrap("stored bundle v" + std::to_string(b.version)));
    if (bundle_admits.size() >= 4 * kScopeSearch) bundle_admits.clear();
    it = bundle_admits.emplace(b.sha256, std::make_shared<offline_cache::SignedBundle>(std::move(*parsed))).first;
  }
  return it->second;
}

// ---- the console ---------------------------------------------------------------------------

Result<std::vector<std::pair<BundleRow, std::shared_ptr<offline_cache::SignedBundle>>>> Hub::Impl::recent_parsed() {
  OUTPOST_TRY(auto recent, store->recent_bundles(kScopeSearch));
  std::vector<std::pair<BundleRow, std::shared_ptr<offline_cache::SignedBundle>>> out;
  for (auto& b : recent) {
    OUTPOST_TRY(auto parsed, parsed_bundle(b));
    b.bytes.clear();
    out.emplace_back(std::move(b), std::move(parsed));
  }
  return out;
}

console::FleetNode Hub::Impl::fleet_node(NodeRow node,
                                         const std::vector<std::pair<BundleRow, std::shared_ptr<offline_cache::SignedBundle>>>& recent,
                                         int64_t now) {
  console::FleetNode f;
  boost::system::error_code ec;
  json::value id = json::parse(node.identity_json, ec);
  if (!ec && id.is_object()) {
    if (const auto* b = id.as_object().if_contains("board"); b && b->is_string()) f.board = std::string(b->as_string());
  }
  const offline_cache::NodeScope scope{node.node_id, f.board, node.fleet};
  for (const auto& [row, bundle] : recent) {
    if (f.newest_for_node == 0 && offline_cache::check_scope(bundle->bundle(), scope)) f.newest_for_node = row.version;
    // The offline budget restarts at each hub contact: what is left is the bundle's budget less
    // the time since the hub last heard from the node (an estimate; the node keeps the truth).
    if (row.version == node.bundle_version && node.last_contact_ms > 0) {
      const int64_t budget = static_cast<int64_t>(bundle->bundle().max_offline());
      if (budget > 0) f.offline_left_s = budget - (now - node.last_contact_ms) / 1000;
    }
  }
  f.node = std::move(node);
  return f;
}

Result<console::FleetView> Hub::Impl::fleet_view(const std::string& fleet, const RecentBundles& recent) {
  console::FleetView v;
  v.now_ms = now_ms();
  v.fleet = fleet;
  OUTPOST_TRY(auto nodes, store->nodes());
  OUTPOST_TRY(auto alerts, store->alert_counts());
  if (!recent.empty()) v.newest_version = recent.front().first.version;
  std::set<std::string> fleets;
  for (auto& n : nodes) {
    fleets.insert(n.fleet);
    if (!fleet.empty() && n.fleet != fleet) continue;
    const auto a = alerts.find(n.node_id);
    const uint64_t open_alerts = a == alerts.end() ? 0 : a->second;
    v.nodes.push_back(fleet_node(std::move(n), recent, v.now_ms));
    v.nodes.back().alerts = open_alerts;
  }
  v.fleets.assign(fleets.begin(), fleets.end());
  return v;
}

Response Hub::Impl::console(const Request& req, const std::vector<std::string>& parts, const Credential* who) {
  const std::string name = who ? who->name + " · " + role_name(who->role) : std::string();
  auto page = [&](unsigned status, std::string_view title, const std::string& body) {
    return reply_html(status, console::document(title, body, name));
  };
  auto failed = [&](const Error& e) { return page(500, "Error", "<h1>Error</h1><p class=\"bad\">" + console::escape(e.message()) + "</p>"); };
  const bool get = req.method() == http::verb::get;
  if (parts.size() == 2 && parts[1] == "login") {
    if (get) return reply_html(200, console::document("Sign in", console::login_page(""), ""));
    if (req.method() != http::verb::post) return page(405, "Sign in", "<p>GET or POST</p>");
    // application/x-www-form-urlencoded: token=...
    std::string token;
    std::string_view body = req.body();
    while (!body.empty()) {
      auto amp = body.find('&');
      std::string_view kv = body.substr(0, amp);
      if (kv.substr(0, 6) == "token=") token = console::url_decode(kv.substr(6));
      if (amp == std::string_view::npos) break;
      body.remove_prefix(amp + 1);
    }
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    auto it = config.credentials.find(token_sha256(token));
    if (token.empty() || it == config.credentials.end() ||
        !(it->second.role == Role::operator_ || it->second.role == Role::responder)) {
      refusals.add({"console", token.empty() ? "no_credential" : it == config.credentials.end() ? "unknown_credential" : "role"});
      log_refusal({{"request", "POST /console/login"}, {"reason", "console sign-in"}});
      return reply_html(401, console::document("Sign in", console::login_page("Not an operator's or a responder's token."), ""));
    }
    log::info("hub.console_sign_in", {{"credential", it->second.name}});
    Response r = reply_html(303, "");
    r.set(http::field::location, "/console");
    constexpr int64_t kSessionSeconds = 12 * 3600;
    r.set(http::field::set_cookie, std::string(kConsoleCookie) + "=" + console_session_cookie(it->first, now_ms() + kSessionSeconds * 1000) +
                                       "; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=" + std::to_string(kSessionSeconds));
    return r;
  }
  if (parts.size() == 2 && parts[1] == "logout") {
    Response r = reply_html(303, "");
    r.set(http::field::location, "/console/login");
    r.set(http::field::set_cookie, std::string(kConsoleCookie) + "=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    return r;
  }
  if (!get) return page(405, "Console", "<p>The console only reads: GET.</p>");
  if (parts.size() == 1) {
    auto recent = recent_parsed();
    if (!recent) return failed(recent.error());
    auto v = fleet_view(console::url_decode(query_param(req.target(), "fleet")), *recent);
    if (!v) return failed(v.error());
    return page(200, "Fleet", console::fleet_page(*v));
  }
  if (parts.size() == 3 && parts[1] == "nodes") {
    const std::string node_id = console::url_decode(parts[2]);
    auto node = store->node(node_id);
    if (!node) return failed(node.error());
    if (!*node) return page(404, "Node", "<p>No node " + console::escape(node_id) + " is enrolled.</p>");
    auto recent = recent_parsed();
    if (!recent) return failed(recent.error());
    console::NodeView v;
    v.now_ms = now_ms();
    v.records_held = (*node)->acked_seq;
    v.node = fleet_node(std::move(**node), *recent, v.now_ms);
    v.may_download = who && who->role == Role::responder;
    if (auto a = store->alerts(node_id)) {
      v.node.alerts = a->size();
      constexpr size_t kAlertsShown = 50;  // the newest
      if (a->size() > kAlertsShown) a->erase(a->begin(), a->end() - kAlertsShown);
      v.alerts = std::move(*a);
    }
    // The newest 200 records, but no more than 4 MiB of them (a record may be up to 1 MiB).
    constexpr uint64_t kTimeline = 200;
    constexpr size_t kTimelineBytes = 4u << 20;
    const uint64_t from = v.records_held > kTimeline ? v.records_held - kTimeline + 1 : 1;
    size_t bytes = 0;
    auto scan = store->scan_records(node_id, from, [&](const RecordRow& r) {
      bytes += r.frame.size();
      if (bytes > kTimelineBytes) v.records.clear();  // keep the newest: start again from here
      if (bytes > kTimelineBytes) bytes = r.frame.size();
      auto parsed = offline_cache::parse_segment(r.frame, "stored");
      if (!parsed.records.empty()) v.records.push_back(std::move(parsed.records.front()));
      return true;
    });
    if (!scan) return failed(scan.error());
    auto state = store->evidence_state(node_id);
    if (!state) return failed(state.error());
    if (!*state) {
      v.evidence = "none received yet";
    } else if (auto pkg = offline_cache::parse_evidence_package(**state); !pkg) {
      v.evidence = "held, but does not parse: " + pkg.error().message();
    } else {
      auto id = attestation::NodeIdentity::from_json(pkg->node_identity_json);
      const bool same = id && id->ak_public.to_pem() == v.node.node.ak_pem;
      uint64_t newest = 0;
      for (const auto& b : pkg->bundles) newest = std::max(newest, b.version);
      v.evidence = std::string(same ? "held; its identity is the enrolled node's (same AK)" : "held, but its identity is NOT the enrolled node's") +
                   "; " + std::to_string(pkg->agent_certifications.size()) + " agent key certifications, runtime log " +
                   std::to_string(pkg->runtime_log.size()) + " bytes, " + std::to_string(pkg->nv_counters.size()) +
                   " counters, newest bundle v" + std::to_string(newest) + " (its quotes and logs verify offline: outpost evidence verify)";
    }
    return page(200, "Node " + node_id, console::node_page(v));
  }
  if (parts.size() == 4 && parts[1] == "nodes" && parts[3] == "evidence") {
    // The evidence package, as GET /v1/nodes/N/evidence gives it, for a signed-in responder.
    if (!who || who->role != Role::responder) return page(403, "Evidence", "<p class=\"bad\">A responder's credential downloads evidence.</p>");
    const std::string node_id = console::url_decode(parts[2]);
    Response r = pull_evidence(node_id, req);
    if (r.result_int() == 200) {
      r.set(http::field::content_disposition, "attachment; filename=\"" + console::url_encode(node_id) + ".evidence\"");
    }
    return r;
  }
  if (parts.size() == 2 && parts[1] == "bundles") {
    auto recent = recent_parsed();
    if (!recent) return failed(recent.error());
    auto v = fleet_view("", *recent);
    if (!v) return failed(v.error());
    std::vector<console::BundleRollout> out;
    for (const auto& [row, bundle] : *recent) {
      console::BundleRollout x;
      x.version = row.version;
      x.sha256 = row.sha256;
      x.published_at = row.published_at;
      if (const auto* sc = bundle->bundle().scope()) {
        auto list = [&](const char* what, const auto* names) {
          if (!names || names->size() == 0) return;
          x.scope += (x.scope.empty() ? "" : "; ") + std::string(what) + ": ";
          for (flatbuffers::uoffset_t i = 0; i < names->size(); ++i) x.scope += (i ? ", " : "") + names->Get(i)->str();
        };
        list("fleets", sc->fleets());
        list("boards", sc->boards());
        list("nodes", sc->nodes());
      }
      for (const auto& n : v->nodes) {
        if (n.newest_for_node == row.version) ++x.admitted;
        if (n.node.bundle_version == row.version) ++x.running;
      }
      out.push_back(std::move(x));
    }
    return page(200, "Bundles", console::bundles_page(out, v->nodes.size()));
  }
  if (parts.size() == 2 && parts[1] == "decisions") {
    RecordQuery q;
    auto param = [&](const char* k) { return console::url_decode(query_param(req.target(), k)); };
    q.agent = param("agent");
    q.subject = param("tool");
    q.verdict = param("verdict");
    q.node_id = param("node");
    const std::string since = param("since"), until = param("until");
    std::string error;
    for (auto [text, out] : {std::pair{&since, &q.since_ms}, std::pair{&until, &q.until_ms}}) {
      if (text->empty()) continue;
      if (auto t = parse_rfc3339_utc(*text)) {
        *out = *t * 1000;
      } else {
        error = "\"" + *text + "\" is not an RFC 3339 UTC time (2026-12-01T10:00:00Z)";
      }
    }
    if (q.verdict != "" && q.verdict != "allow" && q.verdict != "deny") error = "verdict: allow or deny";
    std::vector<FoundRecord> found;
    if (error.empty()) {
      auto r = store->search_records(q);
      if (!r) return failed(r.error());
      found = std::move(*r);
    }
    std::string body = console::decisions_page(q, since, until, found);
    if (!error.empty()) body = "<p class=\"bad\">" + console::escape(error) + "</p>" + body;
    return page(error.empty() ? 200 : 400, "Decisions", body);
  }
  return page(404, "Console", "<p>No such page.</p>");
}

Hub::Hub(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Hub::~Hub() = default;

Result<std::unique_ptr<Hub>> Hub::create(HubConfig config) {
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  OUTPOST_TRY(impl->store, open_store(impl->config.database.string()));
  // Each ingest thread holds a database connection (PostgreSQL: threads + 2 per instance, with
  // the loop's and the listening one), so the default stays modest on large machines.
  if (impl->config.ingest_threads == 0) impl->config.ingest_threads = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  for (uint32_t i = 0; i < impl->config.ingest_threads; ++i) {  // at start: a shortage fails now, not at an upload
    OUTPOST_TRY(auto st, open_store(impl->config.database.string()));
    impl->idle_stores.push_back(std::move(st));
  }
  impl->ingest_pool = std::make_unique<asio::thread_pool>(impl->config.ingest_threads);
  impl->group_commit = !is_postgres_uri(impl->config.database.string());
  if (impl->group_commit) {
    OUTPOST_TRY(impl->commit_store, open_sqlite_store(impl->config.database, Impl::kCommitCacheKib));
    impl->commit_thread = std::make_unique<asio::thread_pool>(1);
  }
  if (!impl->config.bundle_trust_json.empty()) {
    OUTPOST_TRY(auto t, offline_cache::TrustRoot::parse(impl->config.bundle_trust_json));
    impl->trust = std::move(t);
  }
  OUTPOST_TRY(impl->tls, tls::Context::server({impl->config.cert_chain_pem, impl->config.key_pem}));
  OUTPOST_TRY(impl->challenge_key, hmac_sha256(as_bytes(impl->config.key_pem), as_bytes(std::string_view("outpost-hub challenge key v1"))));
  if (impl->config.credentials.empty()) {
    log::warn("hub.no_credentials", {{"config", impl->config.source_file.string()},
                                     {"detail", "no credentials: operators, responders and the IAM are refused (401) on every route of "
                                                "theirs; add some with outpost-hub token (docs/hub.md, Roles)"}});
  }
  // fleets.assign names fleets for enrolment; a node enrolled before keeps what the hub holds.
  for (const auto& [node_id, fleet] : impl->config.assigned_fleets) {
    auto held = impl->store->node(node_id);
    if (held && *held && (**held).fleet != fleet) {
      log::warn("hub.fleet_assign_ignored", {{"node", node_id}, {"assigned", fleet}, {"held", (**held).fleet},
                                             {"detail", "enrolled already: move it with outpost fleet move"}});
    }
  }
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
  asio::co_spawn(m.io, m.wake_loop(), asio::detached);
  log::info("hub.listening", {{"address", m.config.listen_host + ":" + std::to_string(port())}});
  m.io.run();
  // Stopped: queued uploads are dropped (their nodes send them again), running ones finish
  // before run() returns, so nothing commits after the hub said it stopped.
  m.ingest_pool->stop();
  if (m.commit_thread) m.commit_thread->stop();
  m.ingest_pool->join();
  if (m.commit_thread) m.commit_thread->join();
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
