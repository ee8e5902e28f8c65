#include "daemon/daemon.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <set>
#include <mutex>
#include <optional>
#include <algorithm>
#include <future>
#include <thread>
#include <tuple>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "broker/decision_log.h"
#include "broker/mcp_session.h"
#include "broker/relay.h"
#include "broker/session_state.h"
#include "credentials/jws.h"
#include "daemon/api.h"
#include "daemon/metrics_http.h"
#include "daemon/service_notify.h"
#include "broker/http_endpoint.h"
#include "egress/proxy.h"
#include "upstream/http_upstream.h"
#include "upstream/oauth.h"
#include "sync/sync_client.h"
#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/secrets.h"
#include "outpost/attestation/tpm.h"
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/metrics.h"
#include "outpost/offline_cache/evidence.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/base/time.h"
#include "outpost/boards/board.h"
#include "outpost/firmware_hooks/runtime_log.h"
#include "outpost/offline_cache/bundle_store.h"
#include "outpost/offline_cache/trust.h"
#include "policy/engine.h"
#include "sandbox/network.h"
#include "sandbox/sandbox.h"

#define OUTPOST_NOTE(level, msg) ::outpost::log::level("outpostd", {{"msg", (msg)}})

namespace outpost::daemon {

namespace fs = std::filesystem;
namespace json = boost::json;
namespace asio = boost::asio;
using attestation::Tpm;

namespace {

// Debian's ca-certificates bundle: the CAs a remote MCP server's certificate is checked against
// when its manifest pins none.
constexpr const char* kSystemCaBundle = "/etc/ssl/certs/ca-certificates.crt";

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

// Waits up to `ms` for the process behind `pidfd` to exit.
bool wait_exit(int pidfd, int ms) {
  pollfd p{pidfd, POLLIN, 0};
  for (;;) {
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}

// Ends a child we launched: TERM, then KILL after `grace_ms`; reaps it. Its exit code, or
// 128+signal.
int terminate_and_reap(pid_t pid, int pidfd, int grace_ms) {
  if (!wait_exit(pidfd, 0)) {
    sandbox::pidfd_signal(pidfd, SIGTERM);
    if (!wait_exit(pidfd, grace_ms)) {
      sandbox::pidfd_signal(pidfd, SIGKILL);
      wait_exit(pidfd, 5000);
    }
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

json::object error_reply(const std::string& text) { return json::object{{"ok", false}, {"error", text}}; }

// A relay's time per stage, in microseconds summed over the connection (mcp_disconnect).
json::object egress_json(const egress::Proxy::Counters& e) {
  return json::object{{"allowed", e.allowed},   {"refused", e.refused},       {"open", e.open},
                      {"bytes_up", e.bytes_up}, {"bytes_down", e.bytes_down}, {"dns_refused", e.dns_refused}};
}

json::object timing_json(const broker::RelayTiming& t) {
  auto us = [](uint64_t ns) { return ns / 1000; };
  return json::object{{"client_batches", t.client_batches}, {"server_batches", t.server_batches},
                      {"read_us", us(t.read_ns)},           {"decide_us", us(t.decide_ns)},
                      {"commit_us", us(t.commit_ns)},       {"forward_us", us(t.forward_ns)},
                      {"response_us", us(t.response_ns)},   {"return_us", us(t.return_ns)}};
}

std::string str(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it != o.end() && it->value().is_string() ? std::string(it->value().get_string()) : std::string();
}

fs::path self_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path("/usr/bin") : exe.parent_path();
}

// The audit log, counting what each agent's calls write there (the fair budget's measure).
// While the agent is paused for its share, nothing is recorded, so every call is refused (the
// broker denies what it cannot record).
class CountingSink : public broker::DecisionSink {
 public:
  CountingSink(broker::DecisionSink* log, std::shared_ptr<std::atomic<uint64_t>> count, std::shared_ptr<std::atomic<bool>> blocked,
               metrics::CounterFamily* decisions)
      : log_(log), count_(std::move(count)), blocked_(std::move(blocked)), decisions_(decisions) {}
  Result<void> record(const broker::DecisionRecord& r) override {
    OUTPOST_TRY_VOID(admit());
    OUTPOST_TRY_VOID(log_->record(r));
    counted(r);
    return {};
  }
  Result<uint64_t> stage(const broker::DecisionRecord& r) override {
    OUTPOST_TRY_VOID(admit());
    OUTPOST_TRY(uint64_t ticket, log_->stage(r));
    if (ticket == 0) {
      counted(r);  // recorded already
    } else {
      staged_.push_back(Staged{ticket, r.agent, r.verdict, r.rules.empty() ? std::string() : r.rules.front()});
    }
    return ticket;
  }
  // Staged decisions count once durable; those of a failed commit never were recorded.
  Result<void> commit(uint64_t ticket) override {
    Result<void> done = log_->commit(ticket);
    auto end = std::partition(staged_.begin(), staged_.end(), [&](const Staged& s) { return s.ticket > ticket; });
    if (done) {
      for (auto it = end; it != staged_.end(); ++it) decisions_->add({it->agent, "tool", it->verdict, it->rule});
    }
    staged_.erase(end, staged_.end());
    return done;
  }

 private:
  // Refused while the agent is paused; else counted against its share.
  Result<void> admit() {
    if (blocked_->load()) return fail(errc::unsupported, "the agent is paused: it wrote most of the audit log's budget");
    count_->fetch_add(1, std::memory_order_relaxed);
    return {};
  }

  void counted(const broker::DecisionRecord& r) {
    decisions_->add({r.agent, "tool", r.verdict, r.rules.empty() ? std::string_view() : std::string_view(r.rules.front())});
  }

  struct Staged {
    uint64_t ticket;
    std::string agent, verdict, rule;
  };

  broker::DecisionSink* log_;
  std::shared_ptr<std::atomic<uint64_t>> count_;
  std::shared_ptr<std::atomic<bool>> blocked_;
  metrics::CounterFamily* decisions_;
  std::vector<Staged> staged_;  // the relay's thread only, as the sink is
};

}  // namespace

// ---- agents ----

enum class AgentState { running, backoff, stopped, refused, revoked };

std::string_view state_name(AgentState s) {
  switch (s) {
    case AgentState::running: return "running";
    case AgentState::backoff: return "restarting";
    case AgentState::stopped: return "stopped";
    case AgentState::refused: return "refused";
    case AgentState::revoked: return "revoked";
  }
  return "?";
}

struct Agent {
  AgentManifest manifest;
  fs::path dir;        // <state>/agents/<name>
  fs::path workdir;
  std::string spiffe_id;
  std::string measurement;
  AgentState state = AgentState::stopped;
  pid_t pid = -1;
  int pidfd = -1;
  uint64_t start_time = 0;
  int64_t started_at = 0;
  std::string session;
  uint32_t restarts = 0;
  int last_exit = 0;
  bool stop_requested = false;
  std::unique_ptr<asio::steady_timer> timer;
  uid_t uid = 0;  // the agent's own uid and gid (config.agent_uid_base + slot), never 0
  // Records its calls wrote since the audit log last had room (fair budget), and whether it is
  // paused for having written most of them.
  std::shared_ptr<std::atomic<uint64_t>> audit_records = std::make_shared<std::atomic<uint64_t>>(0);
  bool paused_for_budget = false;
  // Mirrors paused_for_budget for its connections' threads: while set, its calls are refused
  // and nothing of them is recorded (a process that escaped the SIGSTOP gains nothing).
  std::shared_ptr<std::atomic<bool>> records_blocked = std::make_shared<std::atomic<bool>>(false);
  // MCP connections it may open: a token bucket (each costs a server launch and two records).
  double connect_tokens = 32;
  std::chrono::steady_clock::time_point connect_refilled = std::chrono::steady_clock::now();
  void set_paused(bool paused) {
    paused_for_budget = paused;
    records_blocked->store(paused);
  }
  // Its flow history and deny budget, shared by all its MCP connections and kept across its
  // restarts (an agent must not shed a taint by reconnecting or crashing); a deploy starts afresh.
  std::shared_ptr<broker::SessionState> flow;
  // The credentials outpostd holds for its remote MCP servers, by server name.
  std::map<std::string, std::shared_ptr<upstream::TokenSource>> tokens;
};

struct Connection {
  std::string agent;
  std::string server;
  int wake = -1;  // eventfd
};

// Who is at the other end of an API connection, decided from SO_PEERCRED before a byte of the
// request is read.
struct Peer {
  ucred cred{};
  std::string agent;  // the launched agent it is a process of, or ""
  bool operator_uid = false;
};

struct Daemon::Impl {
  DaemonConfig config;
  boards::BoardProfile board;
  attestation::NodeIdentity node;
  std::unique_ptr<Tpm> tpm;
  std::unique_ptr<offline_cache::BundleStore> store;
  std::optional<offline_cache::TrustRoot> trust;
  std::unique_ptr<broker::AuditDecisionLog> log;
  std::unique_ptr<sync::SyncClient> sync;  // when a hub is configured
  // Checkpoints and the disk budget (worker thread): the last checkpoint's head and time, and
  // whether agents are paused because the audit log refuses records.
  std::atomic<uint64_t> checkpoint_seq{0};
  std::chrono::steady_clock::time_point checkpoint_at = std::chrono::steady_clock::now();
  std::atomic<bool> agents_paused{false};
  std::string last_checkpoint_error;
  std::mutex checkpoint_mu;
  fs::path cli_path;
  // The runtime measurement log (firmware-hooks): outpostd, its config, each bundle in force
  // and each agent binary go into the board's runtime PCR before they act or run.
  std::unique_ptr<firmware_hooks::RuntimeLogWriter> measurements;
  std::mutex measure_mu;

  // The policy in force, swapped whole.
  struct Policy {
    std::shared_ptr<const policy::Engine> engine;
    // Shared, never copied: the engine reads its strings from this bundle's buffer, and a
    // Policy copied for a new mode keeps pointing at the same one.
    std::shared_ptr<const offline_cache::BundleStore::Installed> installed;
    offline_cache::BundleStatus status;  // the bundle's life as last evaluated
    policy::Mode mode = policy::Mode::deny_all;
    std::string reason;
  };
  std::atomic<std::shared_ptr<const Policy>> policy{std::make_shared<const Policy>()};
  std::mutex install_mu;  // one install at a time

  asio::io_context io;
  std::optional<asio::local::stream_protocol::acceptor> acceptor;
  asio::signal_set signals{io};
  asio::steady_timer inbox_timer{io}, life_timer{io}, audit_timer{io};
  // TPM and disk work the timers start (inbox installs, the bundle's life, fdatasync) runs here,
  // never on the event loop's thread.
  asio::thread_pool worker{1};

  std::mutex mu;  // agents, connections, threads
  std::map<std::string, std::unique_ptr<Agent>> agents;
  std::vector<std::string> launch_order;
  std::map<uint64_t, Connection> connections;
  uint64_t next_connection = 1;
  size_t api_threads = 0;
  std::map<uid_t, uint32_t> api_by_uid;      // open API connections per peer uid (not agents)
  std::map<std::string, uint32_t> api_by_agent;
  uint32_t agent_connections = 0;            // all agents' together
  asio::steady_timer accept_timer{io};
  // Heap pages freed by ended MCP connections, given back a second after the last one ends
  // (trim_heap). Asio thread only.
  asio::steady_timer trim_timer{io};
  int accept_backoff_ms = 0;
  std::string isolation_missing;             // privileges the sandbox lacks; "" when it has all
  std::atomic<uint64_t> refused_logged{0};   // refusals of API peers, audited one in a thousand
  // Prometheus metrics (docs/daemon.md, "Metrics"): decisions recorded, by agent, kind (tool,
  // egress), verdict and deciding rule; the broker's time per batch of an agent's calls.
  metrics::CounterFamily decision_counts{{"agent", "kind", "verdict", "rule"}};
  metrics::Histogram decide_histogram, hold_histogram;
  std::unique_ptr<MetricsListener> metrics_listener;
  std::string metrics_text();
  uint64_t audit_ticks = 0;                  // the worker's 200 ms ticks
  std::condition_variable threads_done;
  std::atomic<bool> stopping{false};
  std::thread::id io_thread = std::this_thread::get_id();
  // Last member: it goes first, while everything its hooks use is still there.
  std::unique_ptr<egress::Proxy> proxy;
  std::unique_ptr<broker::HttpEndpoint> endpoint;  // HTTP agents' MCP endpoint

  // ---- policy ----
  broker::PolicyView view() const {
    auto p = policy.load();
    broker::PolicyView v;
    v.engine = p->engine;
    v.mode = p->engine ? p->mode : policy::Mode::deny_all;
    v.not_after = p->installed ? p->installed->bundle.bundle().not_after() : 0;
    return v;
  }

  void set_policy(offline_cache::BundleStore::Installed bundle) {
    auto p = std::make_shared<Policy>();
    auto installed = std::make_shared<const offline_cache::BundleStore::Installed>(std::move(bundle));
    auto engine = policy::Engine::build(installed, installed->bundle.payload());
    if (!engine) {
      OUTPOST_NOTE(error, "bundle v" + std::to_string(installed->state.version) + " does not load: " +
                             engine.error().message() + "; denying every call");
      policy.store(p);
      return;
    }
    p->engine = std::move(*engine);
    p->status = installed->status;
    p->mode = p->status.in_force ? policy::Mode::normal : p->status.safe_set ? policy::Mode::safe_set : policy::Mode::deny_all;
    p->reason = p->status.reason;
    p->installed = std::move(installed);
    policy.store(p);
    // Compiling a large bundle leaves freed heap behind; give it back to the system so the
    // daemon's resident size reflects what it keeps (docs/benchmarks.md: RSS budget).
    malloc_trim(0);
  }

  // An MCP connection's buffers, parser and server state are freed when it ends, but glibc
  // returns only free memory at the top of its heap to the system: pages freed in the middle
  // stay resident. A second after the last connection of a burst ends (each end pushes the
  // timer back), malloc_trim gives them back (docs/benchmarks.md: outpostd's memory). It walks
  // the heap's free chunks once (tens of microseconds for a few megabytes) on the Asio thread,
  // never on a call's path.
  void trim_heap() {
    if (stopping) return;
    asio::post(io, [this] {
      trim_timer.expires_after(std::chrono::seconds(1));  // cancels the wait armed before
      trim_timer.async_wait([](const boost::system::error_code& e) {
        if (!e) malloc_trim(0);
      });
    });
  }

  // ---- audit checkpoints and the disk budget (worker thread) ----
  // A TPM2_Quote over the chain head every N records, every T seconds with new records, and
  // after a deny (the board's cadence). Records keep flowing while the TPM quotes.
  void maybe_checkpoint(bool force = false) {
    std::lock_guard checkpoint_lock(checkpoint_mu);
    auto& l = log->log();
    const uint64_t denies = log->take_denies();
    const auto [seq, head] = l.head();
    if (seq == 0 || seq == checkpoint_seq) return;
    const auto& cadence = board.checkpoint;
    const bool due = force || seq - checkpoint_seq.load() >= cadence.every_records ||
                     std::chrono::steady_clock::now() - checkpoint_at >= std::chrono::seconds(cadence.every_seconds) ||
                     (cadence.on_deny && denies > 0);
    if (!due) return;
    auto sel = attestation::parse_pcr_selection(board.quote_selection());
    Result<attestation::Quote> q = sel ? tpm->quote(node.handles.ak, *sel, offline_cache::checkpoint_qualifying_data(seq, head))
                                       : Result<attestation::Quote>(fail(sel.error()));
    Result<uint64_t> c = q ? l.append_checkpoint(seq, head, q->signed_attest, attestation::encode_pcrs_tpm2tools(q->pcrs))
                           : Result<uint64_t>(fail(q.error()));
    if (!c) {
      log->add_denies(denies);  // the deny still wants its checkpoint: the next tick retries
      if (c.error().message() != last_checkpoint_error) OUTPOST_NOTE(error, "audit checkpoint: " + c.error().message());
      last_checkpoint_error = c.error().message();
      return;
    }
    last_checkpoint_error.clear();
    // The checkpoint record itself is the next head; it needs no checkpoint of its own.
    checkpoint_seq = *c;
    checkpoint_at = std::chrono::steady_clock::now();
  }

  // Fail closed at the disk budget (or a failing disk): agents are paused (SIGSTOP to their
  // process groups) until the log accepts records again; status says why. Below it, the budget
  // is shared: see share_audit_budget.
  void enforce_audit_budget() {
    if (stopping) return;
    const std::string why = log->log().refusing();
    const bool pause = !why.empty();
    if (!pause) share_audit_budget();
    if (pause == agents_paused.load()) return;
    std::lock_guard lock(mu);
    for (auto& [name, a] : agents) {
      // One paused for its share stays paused until the log has room again.
      if (a->pid > 0 && !a->paused_for_budget) ::kill(-a->pid, pause ? SIGSTOP : SIGCONT);
    }
    agents_paused = pause;
    if (pause) {
      OUTPOST_NOTE(error, "audit log refuses records (" + why + "): agents paused");
    } else {
      OUTPOST_NOTE(info, "audit log accepts records again: agents resumed");
    }
    (void)log->record_event(pause ? "agents_paused" : "agents_resumed", {{"reason", why}});
  }

  // ---- egress ----
  Result<void> start_proxy();
  Result<void> start_endpoint();
  // A relay connection for the HTTP endpoint, as `outpost mcp connect` makes one: serve_mcp on
  // a thread of its own (counted as one of the agent's API connections), the channel's fds in
  // place of the client's stdio and API socket.
  Result<broker::HttpChannel> open_http_mcp(const std::string& agent, const std::string& server);
  // A sealed secret's value, unsealed by the TPM (egress header injection, remote servers' credentials).
  Result<std::string> unseal_secret(std::string_view name) {
    attestation::SecretStore secrets(config.state_dir, node);
    OUTPOST_TRY(Bytes value, secrets.unseal(*tpm, std::string(name)));
    std::string out(as_chars(value));
    std::fill(value.begin(), value.end(), 0);
    return out;
  }
  // outpostd's own connections for an agent (a remote MCP server, its authorization server):
  // decided by the bundle's egress rules and recorded as the agent's egress.
  std::function<Result<asio::ip::tcp::endpoint>(const std::string&, uint16_t, const std::string&)> outbound(
      const std::string& agent, const std::string& task, const char* method, std::shared_ptr<broker::SessionState> flow) {
    return [this, agent, task, method, flow](const std::string& host, uint16_t port, const std::string& path) {
      return egress::decide_outbound([this] { return view(); }, egress::Outbound{agent, task, method, path, flow}, host, port,
                                     [this](const egress::EgressRecord& r) { return record_egress(r); });
    };
  }
  // The sealed refresh token of an operator's login for (agent, server): a name of the secret
  // store's form whatever the two names are.
  static std::string refresh_secret_name(const std::string& agent, const std::string& server) {
    const Digest d = sha256(agent + "/" + server);
    return "oauth-refresh-" + hex_encode(ByteView(d.data(), 12));
  }
  // The CAs a remote server (and its authorization server) is checked against: the manifest's,
  // or the system's store.
  Result<std::string> ca_pem_for(const McpServerSpec& spec, const upstream::UpstreamUrl& url) {
    if (!url.tls && spec.auth.kind != upstream::AuthSpec::Kind::oauth) return std::string();
    const fs::path ca = spec.ca.empty() ? fs::path(kSystemCaBundle) : spec.ca;
    auto text = read_text_file(ca, 4 << 20);
    if (!text) return fail(text.error().wrap("CA certificates " + ca.string()));
    return std::move(*text);
  }
  // The operator's one-time login for an authorization-code server (`outpost mcp login`).
  json::object oauth_login(const json::object& req, bool finish);
  // The credential source of one (agent, server), shared by its connections and kept while the
  // agent is deployed (tokens are fetched once for all of them, not per connection).
  std::shared_ptr<upstream::TokenSource> token_source(const std::string& agent, const std::string& task,
                                                      const McpServerSpec& spec, const upstream::UpstreamUrl& url,
                                                      const std::string& ca_pem, std::shared_ptr<broker::SessionState> flow) {
    std::lock_guard lock(mu);
    auto it = agents.find(agent);
    if (it != agents.end()) {
      if (auto found = it->second->tokens.find(spec.name); found != it->second->tokens.end()) return found->second;
    }
    upstream::UpstreamHooks as_hooks;
    as_hooks.connect = outbound(agent, task, "OAUTH", flow);
    upstream::AuthSpec auth = spec.auth;
    auth.refresh_secret = refresh_secret_name(agent, spec.name);
    auto source = std::make_shared<upstream::TokenSource>(
        auth, url.text, [this](std::string_view name) { return unseal_secret(name); },
        [as_hooks, ca_pem](const upstream::HttpExchange& x) {
          return upstream::http_exchange(x, as_hooks, ca_pem, std::chrono::seconds(10));
        },
        [] { return unix_now(); },
        [this](std::string_view name, std::string_view value) {
          attestation::SecretStore secrets(config.state_dir, node);
          return secrets.seal(*tpm, name, as_bytes(value));
        });
    if (it != agents.end()) it->second->tokens[spec.name] = source;
    return source;
  }
  // The proxy's record hook: an egress decision of `r.agent`, under the same budget rules as
  // its tool calls (paused: refused; a denial over the deny budget: coalesced).
  Result<void> record_egress(const egress::EgressRecord& r) {
    std::shared_ptr<std::atomic<uint64_t>> records;
    std::shared_ptr<std::atomic<bool>> blocked;
    std::shared_ptr<broker::SessionState> flow;
    {
      std::lock_guard lock(mu);
      auto it = agents.find(r.agent);
      if (it == agents.end()) return fail(make_error_code(errc::not_found), "agent " + r.agent + " is gone");
      records = it->second->audit_records;
      blocked = it->second->records_blocked;
      flow = it->second->flow;
    }
    if (blocked->load()) return fail(make_error_code(errc::unsupported), "the agent is paused: it wrote most of the audit log's budget");
    // DNS stub records have a rate of their own (egress::kDnsRecordsPerSecond): a resolver's
    // retries must not use up the deny budget real refusals are recorded under.
    if (!r.allow && r.method != "DNS" && flow && !flow->admit_deny_record()) {
      broker::DecisionRecord d;
      d.time = r.time;
      d.agent = r.agent;
      d.task = r.task;
      d.server = "egress";
      d.tool = r.host + ":" + std::to_string(r.port);
      d.verdict = r.verdict;
      if (!r.rule.empty()) d.rules.push_back(r.rule);
      d.reason = r.reason;
      d.bundle_version = r.bundle_version;
      flow->coalesce(d);
      return ok();
    }
    records->fetch_add(1, std::memory_order_relaxed);
    OUTPOST_TRY_VOID(log->record_egress(r.agent, r.bundle_version, r.time, egress::egress_json(r), r.allow));
    decision_counts.add({r.agent, "egress", r.verdict, r.rule});
    return ok();
  }

  // Denials over an agent's deny budget, each kind as one record with its count.
  void write_coalesced(const std::string& agent, const std::string& task, broker::SessionState& flow,
                       std::atomic<uint64_t>& records) {
    for (const auto& c : flow.take_coalesced()) {
      records.fetch_add(1, std::memory_order_relaxed);
      if (auto r = log->record_coalesced(agent, task, c); !r) {
        OUTPOST_NOTE(error, "coalesced denials of " + agent + " (" + std::to_string(c.count) + ") not recorded: " + r.error().message());
        continue;
      }
      decision_counts.add({agent, c.server == "egress" ? "egress" : "tool", c.verdict,
                           c.rules.empty() ? std::string_view() : std::string_view(c.rules.front())},
                          c.count);
    }
  }
  void write_all_coalesced() {
    std::vector<std::tuple<std::string, std::string, std::shared_ptr<broker::SessionState>, std::shared_ptr<std::atomic<uint64_t>>>> all;
    {
      std::lock_guard lock(mu);
      for (const auto& [name, a] : agents) all.emplace_back(name, a->manifest.task, a->flow, a->audit_records);
    }
    for (auto& [name, task, flow, records] : all) write_coalesced(name, task, *flow, *records);
  }

  // One agent's flood must not freeze its neighbours. Once the log holds
  // audit_agent_pause_percent of its budget, an agent that wrote more than half of the records
  // since the log last had room is paused alone, before the hard limit would pause them all;
  // once the log is back under half that share (the hub acknowledged and released segments),
  // it runs again and the counts start afresh. Records already written are never dropped.
  void share_audit_budget() {
    const uint64_t budget = board.audit_log_bytes;
    if (budget == 0) return;
    const uint64_t used = log->log().disk_bytes();
    std::lock_guard lock(mu);
    if (used * 100 >= budget * config.audit_agent_pause_percent) {
      uint64_t total = 0, most = 0;
      Agent* top = nullptr;
      for (auto& [name, a] : agents) {
        const uint64_t n = a->audit_records->load();
        total += n;
        if (n > most && a->pid > 0 && !a->paused_for_budget) {
          most = n;
          top = a.get();
        }
      }
      if (top == nullptr || most * 2 <= total) return;
      ::kill(-top->pid, SIGSTOP);
      top->set_paused(true);
      const std::string why = "wrote " + std::to_string(most) + " of the " + std::to_string(total) +
                              " records since the audit log last had room; the log holds " + std::to_string(used) + " of " +
                              std::to_string(budget) + " bytes";
      OUTPOST_NOTE(warn, "agent " + top->manifest.name + " paused: " + why);
      (void)log->record_event("agent_paused", {{"agent", top->manifest.name}, {"reason", why}});
    } else if (used * 200 < budget * config.audit_agent_pause_percent) {
      for (auto& [name, a] : agents) {
        a->audit_records->store(0);
        if (!a->paused_for_budget) continue;
        a->set_paused(false);
        if (a->pid > 0 && !agents_paused) ::kill(-a->pid, SIGCONT);
        OUTPOST_NOTE(info, "agent " + name + " resumed: the audit log has room again");
        (void)log->record_event("agent_resumed", {{"agent", name}});
      }
    }
  }

  // ---- runtime measurements ----
  Result<void> measure(std::string_view kind, std::string_view name, const Digest& digest) {
    std::lock_guard lock(measure_mu);
    OUTPOST_TRY(bool extended, measurements->measure(kind, name, digest));
    if (extended) {
      (void)log->record_event("measured", {{"kind", kind}, {"name", name}, {"sha256", hex_encode(digest)},
                                           {"pcr", board.runtime_pcr}});
    }
    return ok();
  }

  // Opens the log and measures outpostd and its configuration, before anything else acts.
  Result<void> open_measurements() {
    const fs::path path = config.state_dir / "measurements" / "runtime.log";
    auto w = firmware_hooks::RuntimeLogWriter::open(path, *tpm, board.runtime_pcr);
    if (!w) return fail(w.error().wrap("runtime measurement log"));
    measurements = std::move(*w);
    const auto& r = measurements->open_report();
    if (r.cut_torn_tail) (void)log->record_event("measurement_log_repaired", {{"detail", "a torn last line was cut"}});
    if (r.completed_last) {
      (void)log->record_event("measurement_log_repaired", {{"detail", "the last entry had not been extended; it is now"}});
    }
    if (!r.replays) {
      // outpostd still starts (status and the audit log stay reachable), but nothing more is
      // measured, so no agent is launched, until the TPM restarts and the PCR starts afresh.
      (void)log->record_event("measurement_log_diverges", {{"detail", r.detail}});
      OUTPOST_NOTE(error, "runtime measurement log: " + r.detail + "; agents will not be launched");
      return ok();
    }
    std::error_code ec;
    fs::path self = fs::canonical("/proc/self/exe", ec);
    if (ec) return fail(errno_error("resolve /proc/self/exe", ec.value()));
    OUTPOST_TRY(Digest self_digest, attestation::measure_file(self, config.max_binary_bytes));
    OUTPOST_TRY_VOID(measure(firmware_hooks::runtime_kind::outpostd, self.string(), self_digest));
    if (!config.source_file.empty()) {
      OUTPOST_TRY_VOID(measure(firmware_hooks::runtime_kind::config, config.source_file.string(), sha256(config.source_text)));
    }
    return ok();
  }

  // A bundle about to be put in force. A failure is audited, not fatal: the bundle is data
  // the TPM already anchors (its counter and the signed state), unlike code about to run.
  void measure_bundle(const offline_cache::BundleStore::Installed& installed) {
    auto digest = hex_decode(installed.state.bundle_sha256);
    Digest d{};
    if (digest && digest->size() == d.size()) std::copy(digest->begin(), digest->end(), d.begin());
    auto r = measure(firmware_hooks::runtime_kind::bundle, "v" + std::to_string(installed.state.version), d);
    if (!r) {
      (void)log->record_event("measurement_failed", {{"kind", "bundle"}, {"error", r.error().message()}});
      OUTPOST_NOTE(error, "bundle measurement failed: " + r.error().message());
    }
  }

  Result<void> load_policy() {
    if (!trust) return ok();
    auto installed = store->load(*tpm, *trust, unix_now());
    if (!installed) {
      if (installed.error().code() == make_error_code(errc::not_found)) return ok();
      return fail(installed.error().wrap("the installed bundle does not verify"));
    }
    measure_bundle(*installed);
    set_policy(std::move(*installed));
    return ok();
  }

  // Re-evaluates the bundle's life (expiry, offline budget) from the TPM clock.
  void check_life() {
    auto p = policy.load();
    if (!p->installed) return;
    auto clock = tpm->read_clock();
    if (!clock) {
      OUTPOST_NOTE(error, "TPM clock unreadable: " + clock.error().message() + "; denying every call");
      auto q = std::make_shared<Policy>(*p);
      q->mode = policy::Mode::deny_all;
      policy.store(q);
      return;
    }
    auto status = offline_cache::evaluate_life(p->installed->bundle.bundle(), p->installed->state, unix_now(), clock->clock);
    policy::Mode mode = status.in_force ? policy::Mode::normal
                        : status.safe_set ? policy::Mode::safe_set
                                          : policy::Mode::deny_all;
    if (mode != p->mode) {
      OUTPOST_NOTE(warn, "bundle v" + std::to_string(status.version) + ": " +
                               (status.in_force ? "in force" : status.reason) + "; mode now " +
                               (mode == policy::Mode::normal ? "normal" : mode == policy::Mode::safe_set ? "safe set" : "deny all"));
      auto q = std::make_shared<Policy>(*p);
      q->mode = mode;
      q->reason = status.reason;
      q->status = status;
      policy.store(q);
    }
  }

  Result<uint64_t> install_bundle(Bytes bytes, const std::string& origin) {
    std::lock_guard lock(install_mu);
    if (!trust) return fail(make_error_code(errc::not_found), "no trust root pinned (outpost trust pin ROOT.json)");
    auto installed = store->install(*tpm, std::move(bytes), *trust, unix_now());
    if (!installed) {
      (void)log->record_event("bundle_refused", {{"origin", origin}, {"error", installed.error().message()}});
      return fail(installed.error().wrap("bundle install refused"));
    }
    uint64_t version = installed->state.version;
    std::vector<std::string> revoked;
    if (const auto* r = installed->bundle.bundle().revoked_agents()) {
      for (const auto* s : *r) revoked.push_back(s->str());
    }
    measure_bundle(*installed);
    set_policy(std::move(*installed));
    (void)log->record_event("bundle_install", {{"origin", origin}, {"version", version}});
    OUTPOST_NOTE(info, "installed bundle v" + std::to_string(version) + " from " + origin);
    for (const auto& name : revoked) revoke(name);
    return version;
  }

  // ---- agents ----
  Result<std::string> deploy(const std::string& manifest_text, const fs::path& base_dir);
  Result<uid_t> allocate_uid(const std::string& name);  // with mu held
  Result<void> check_manifest_paths(const AgentManifest& m) const;
  Result<void> prepare_workdir(const Agent& a) const;
  Result<void> launch(Agent& a);  // with mu held
  void on_exit(Agent& a, int status);
  void schedule_restart(Agent& a);
  void stop_agent(Agent& a, bool kill_now);
  void revoke(const std::string& name);
  void wake_connections(const std::string& agent);
  void reap();
  json::object agent_json(const Agent& a) const;

  // ---- API ----
  void accept();
  void serve(int fd, Peer peer);
  // With mu held: one API connection of `peer` more (+1) or less (-1).
  void count_connection(const Peer& peer, int delta) {
    api_threads += delta;
    if (!peer.agent.empty()) {
      agent_connections += delta;
      if ((api_by_agent[peer.agent] += delta) == 0) api_by_agent.erase(peer.agent);
    } else if ((api_by_uid[peer.cred.uid] += delta) == 0) {
      api_by_uid.erase(peer.cred.uid);
    }
  }
  json::object handle(const json::object& req, const ucred& peer, bool is_agent, const std::string& agent_name);
  void serve_mcp(int fd, const json::object& req, const std::string& agent_name, std::vector<int> fds);

  void poll_inbox();
  void shutdown();
  Result<void> start_sync();
};

// ---- sync with the hub ----

Result<void> Daemon::Impl::start_sync() {
  const auto& h = config.hub;
  if (h.url.empty()) return ok();
  OUTPOST_TRY(sync::HubEndpoint ep, sync::parse_hub_url(h.url));
  ep.pin_sha256 = h.pin_sha256;
  if (!h.ca.empty()) { OUTPOST_TRY(ep.ca_pem, read_text_file(h.ca, 1 << 20)); }
  sync::SyncSettings s;
  s.hub = std::move(ep);
  s.batch_records = h.batch_records;
  s.batch_bytes = h.batch_bytes;
  s.bandwidth_bytes_per_s = h.bandwidth_bytes_per_s;
  s.backoff_initial = std::chrono::milliseconds(h.backoff_initial_ms);
  s.backoff_max = std::chrono::milliseconds(h.backoff_max_ms);
  s.idle_poll = std::chrono::milliseconds(h.idle_poll_ms);
  s.bundle_wait = std::chrono::seconds(h.bundle_wait_s);
  s.attest_interval = std::chrono::seconds(h.attest_interval_s);
  s.token_file = config.state_dir / "hub-token";
  if (board.checkpoint.every_records >= s.batch_records) {
    OUTPOST_NOTE(warn, "hub.batch_records (" + std::to_string(s.batch_records) + ") is not above the board's checkpoint cadence (" +
                           std::to_string(board.checkpoint.every_records) + " records): uploads may find no checkpoint");
  }
  sync::SyncHooks hooks;
  hooks.install_bundle = [this](Bytes b) { return install_bundle(std::move(b), "hub"); };
  hooks.fleet = [this] {
    std::lock_guard lock(install_mu);
    return store->fleet();
  };
  hooks.set_fleet = [this](const std::string& fleet) -> Result<void> {
    std::lock_guard lock(install_mu);
    const std::string from = store->fleet();
    OUTPOST_TRY_VOID(offline_cache::write_node_fleet(config.state_dir, fleet));
    store->set_fleet(fleet);
    (void)log->record_event("fleet_assigned", {{"origin", "hub"}, {"fleet", fleet}, {"previous", from}});
    OUTPOST_NOTE(info, "the hub put this node in fleet \"" + fleet + "\" (was \"" + from + "\")");
    return ok();
  };
  hooks.bundle_version = [this]() -> uint64_t {
    auto p = policy.load();
    return p->installed ? p->installed->state.version : 0;
  };
  hooks.request_checkpoint = [this] {
    if (!stopping) asio::post(worker, [this] { maybe_checkpoint(true); });
  };
  hooks.activate_credential = [this](const attestation::CredentialChallenge& c) -> Result<Bytes> {
    return tpm->activate_credential(node.handles.ak, node.handles.ek, c);  // Tpm is thread-safe
  };
  hooks.quote = [this](ByteView nonce) -> Result<attestation::Quote> {
    OUTPOST_TRY(auto selection, attestation::parse_pcr_selection(board.quote_selection()));
    std::lock_guard lock(measure_mu);  // a quote between a log append and its extend would look torn
    return tpm->quote(node.handles.ak, selection, nonce);
  };
  hooks.evidence_state = [this]() -> Result<Bytes> {
    OUTPOST_TRY(auto pkg, offline_cache::collect_node_evidence(config.state_dir, board.event_log));
    // The hub keeps when it received the state; without the export time an unchanged state
    // encodes to the same bytes and is not sent again.
    pkg.exported_at.clear();
    return offline_cache::encode_evidence_package(pkg);
  };
  auto node_json = read_text_file(config.state_dir / "node.json", 1 << 20);
  if (!node_json) return fail(node_json.error());
  OUTPOST_TRY(sync, sync::SyncClient::start(std::move(s), std::move(*node_json), node.node_id, log->log(), std::move(hooks)));
  OUTPOST_NOTE(info, "syncing with " + h.url);
  return ok();
}

// ---- agent ids, paths and work directories ----

// A uid of the configured range no other agent holds and the user database does not name,
// kept in <agent dir>/uid so the agent keeps it (and owns its files) across restarts.
Result<void> Daemon::Impl::start_endpoint() {
  broker::HttpEndpointOptions o;
  o.port = config.mcp_port;
  o.max_body = config.max_line_bytes;
  o.max_line = config.max_line_bytes;
  broker::HttpEndpointHooks h;
  h.open = [this](const std::string& agent, const std::string& server) { return open_http_mcp(agent, server); };
  OUTPOST_TRY(endpoint, broker::HttpEndpoint::start(o, std::move(h)));
  return ok();
}

Result<broker::HttpChannel> Daemon::Impl::open_http_mcp(const std::string& agent, const std::string& server) {
  Peer peer;
  peer.agent = agent;
  {
    std::lock_guard lock(mu);
    if (stopping) return fail(errc::io, "outpostd is stopping");
    auto it = api_by_agent.find(agent);
    if ((it != api_by_agent.end() && it->second >= config.api_max_connections_per_agent) ||
        agent_connections >= config.api_max_connections) {
      return fail(errc::io, "agent " + agent + " has too many MCP connections open");
    }
    count_connection(peer, +1);
  }
  auto uncount = [&] {
    std::lock_guard lock(mu);
    count_connection(peer, -1);
    threads_done.notify_all();
  };
  int ctl[2] = {-1, -1}, in[2] = {-1, -1}, out[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0 || ::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
    const int e = errno;
    for (int f : {ctl[0], ctl[1], in[0], in[1], out[0], out[1]}) {
      if (f >= 0) ::close(f);
    }
    uncount();
    return fail(errno_error("MCP connection for " + agent, e));
  }
  sandbox::UniqueFd control(ctl[1]), to_relay(in[1]), from_relay(out[0]);
  try {
    std::thread([this, d = ctl[0], r = in[0], w = out[1], agent, server, peer] {
      serve_mcp(d, json::object{{"op", "mcp"}, {"server", server}}, agent, {r, w});
      ::close(d);
      trim_heap();
      std::lock_guard lock(mu);
      count_connection(peer, -1);
      threads_done.notify_all();
    }).detach();
  } catch (const std::system_error& e) {
    for (int f : {ctl[0], in[0], out[1]}) ::close(f);
    uncount();
    return fail(errc::io, std::string("no thread for an MCP connection: ") + e.what());
  }
  // The relay's first word: ok, or why not (no such server, paused, too fast).
  OUTPOST_TRY(json::value first, recv_message(control.get(), nullptr, 64 << 10, 0, 30'000));
  if (!first.is_object() || !first.as_object().contains("ok")) return fail(errc::io, "MCP connection: no answer from the relay");
  if (first.as_object().at("ok") != true) {
    const json::value* e = first.as_object().if_contains("error");
    return fail(errc::io, e != nullptr && e->is_string() ? std::string(e->as_string()) : "MCP connection refused");
  }
  return broker::HttpChannel{std::move(control), std::move(to_relay), std::move(from_relay)};
}

Result<void> Daemon::Impl::start_proxy() {
  egress::ProxyOptions o;
  o.idle_timeout = std::chrono::seconds(config.egress_idle_timeout_s);
  o.max_connections_per_agent = config.egress_max_connections;
  egress::ProxyHooks h;
  h.policy = [this] { return view(); };
  h.record = [this](const egress::EgressRecord& r) { return record_egress(r); };
  h.closed = [this](const egress::EgressClose& c) {
    if (auto r = log->record_egress_close(c.agent, egress::egress_close_json(c)); !r) {
      OUTPOST_NOTE(error, "egress close of " + c.agent + " not recorded: " + r.error().message());
    }
  };
  h.secret = [this](std::string_view name) { return unseal_secret(name); };
  OUTPOST_TRY(proxy, egress::Proxy::start(o, std::move(h)));
  return ok();
}

Result<uid_t> Daemon::Impl::allocate_uid(const std::string& name) {
  const fs::path agents_dir = config.state_dir / "agents";
  auto read_uid = [&](const fs::path& dir) -> uid_t {
    auto text = read_text_file(dir / "uid", 32);
    if (!text) return 0;
    uint64_t v = std::strtoull(text->c_str(), nullptr, 10);
    return v >= config.agent_uid_base && v < uint64_t{config.agent_uid_base} + config.agent_uid_count ? static_cast<uid_t>(v) : 0;
  };
  std::set<uid_t> taken;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(agents_dir, ec)) {
    if (e.path().filename() != name) {
      if (uid_t u = read_uid(e.path())) taken.insert(u);
    }
  }
  for (const auto& [other, a] : agents) {
    if (other != name && a->uid != 0) taken.insert(a->uid);
  }
  if (uid_t kept = read_uid(agents_dir / name); kept != 0 && !taken.count(kept)) return kept;
  auto named = [](uid_t id) {
    passwd pw;
    group gr;
    passwd* pwp = nullptr;
    group* grp = nullptr;
    char buf[4096];
    return (::getpwuid_r(id, &pw, buf, sizeof buf, &pwp) == 0 && pwp != nullptr) ||
           (::getgrgid_r(id, &gr, buf, sizeof buf, &grp) == 0 && grp != nullptr);
  };
  for (uint32_t i = 0; i < config.agent_uid_count; ++i) {
    const uid_t id = config.agent_uid_base + i;
    if (taken.count(id) || named(id)) continue;
    OUTPOST_TRY_VOID(ensure_directory(agents_dir / name, 0700));
    OUTPOST_TRY_VOID(write_file_atomic(agents_dir / name / "uid", std::to_string(id) + "\n", 0600));
    return id;
  }
  return fail(make_error_code(errc::not_found), "no free agent uid in " + std::to_string(config.agent_uid_base) + ".." +
                                                    std::to_string(config.agent_uid_base + config.agent_uid_count - 1));
}

// An agent must never be handed the node's secrets or devices, whatever its manifest says:
// the state directory (keys, sealed secrets, the audit log), /proc, /sys, /run and /dev (TPM
// nodes), nor a folder holding one of them, nor a path the agent itself can change (beneath its
// work directory: a symlink planted there would redirect the next launch's mounts). Checked at
// deploy and again at every launch, on the paths as they resolve then.
Result<void> Daemon::Impl::check_manifest_paths(const AgentManifest& m) const {
  std::error_code ec;
  auto resolved = [&](const fs::path& p) {
    fs::path c = fs::canonical(p, ec);
    return ec ? fs::weakly_canonical(p, ec) : c;
  };
  auto inside = [](const fs::path& p, const fs::path& base) {
    auto [b, pi] = std::mismatch(base.begin(), base.end(), p.begin(), p.end());
    return b == base.end();
  };
  const fs::path state = resolved(config.state_dir);
  const fs::path workdir = resolved(m.workdir.empty() ? config.state_dir / "agents" / m.name / "work" : m.workdir);
  const std::vector<fs::path> forbidden = {"/dev", "/proc", "/sys", "/run", state};
  auto check = [&](const fs::path& raw, const char* field, bool may_be_workdir) -> Result<void> {
    const fs::path p = resolved(raw);
    const std::string what = std::string(field) + ": " + raw.string() + (p != raw ? " (" + p.string() + ")" : "");
    for (const auto& f : forbidden) {
      const bool own_workdir = may_be_workdir && p == workdir && inside(p, state);
      if (own_workdir) continue;  // <state>/agents/<name>/work, the default
      if (inside(p, f)) {
        return fail(errc::invalid_argument, what + " is under " + f.string() + ", which agents never see (docs/daemon.md, \"The sandbox\")");
      }
      if (inside(f, p)) {
        return fail(errc::invalid_argument, what + " holds " + f.string() + ", which agents never see (docs/daemon.md, \"The sandbox\")");
      }
    }
    if (!may_be_workdir && inside(p, workdir)) {
      return fail(errc::invalid_argument, what + " is inside the agent's work directory, which the agent can change");
    }
    return ok();
  };
  for (const auto& p : m.read_only) OUTPOST_TRY_VOID(check(p, "read_only", false));
  OUTPOST_TRY_VOID(check(workdir, "workdir", true));
  OUTPOST_TRY_VOID(check(m.command, "command", false));
  return check(m.binary, "binary", false);
}

// The work directory belongs to the agent's uid (mode 0700), with its TMPDIR in it. A folder
// still owned by outpostd (new, or from before agents had uids of their own) is handed over
// whole, without following links; one of another owner is refused. No process of the agent's
// uid runs meanwhile (launch kills leftovers first), so nothing races the walk.
Result<void> Daemon::Impl::prepare_workdir(const Agent& a) const {
  std::error_code ec;
  fs::create_directories(a.workdir, ec);
  if (ec) return fail(errno_error("create " + a.workdir.string(), ec.value()));
  struct stat st {};
  if (::lstat(a.workdir.c_str(), &st) != 0) return fail(errno_error("lstat " + a.workdir.string(), errno));
  if (!S_ISDIR(st.st_mode)) return fail(errc::invalid_argument, a.workdir.string() + " is not a directory");
  if (st.st_uid == a.uid) return ok();
  if (st.st_uid != ::geteuid()) {
    return fail(errc::invalid_argument, "work directory " + a.workdir.string() + " belongs to uid " + std::to_string(st.st_uid) +
                                            ", neither outpostd nor agent " + a.manifest.name);
  }
  const fs::path tmp = a.workdir / ".tmp";
  if (::mkdir(tmp.c_str(), 0700) != 0 && errno != EEXIST) return fail(errno_error("mkdir " + tmp.string(), errno));
  for (auto it = fs::recursive_directory_iterator(a.workdir, ec); it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (::lchown(it->path().c_str(), a.uid, a.uid) != 0 && errno != ENOENT) {
      return fail(errno_error("chown " + it->path().string(), errno));
    }
  }
  if (ec) return fail(errno_error("walk " + a.workdir.string(), ec.value()));
  if (::lchown(a.workdir.c_str(), a.uid, a.uid) != 0) return fail(errno_error("chown " + a.workdir.string(), errno));
  if (::chmod(a.workdir.c_str(), 0700) != 0) return fail(errno_error("chmod " + a.workdir.string(), errno));
  return ok();
}

// ---- deploy and launch ----

Result<std::string> Daemon::Impl::deploy(const std::string& manifest_text, const fs::path& base_dir) {
  if (stopping) return fail(make_error_code(errc::unsupported), "outpostd is shutting down");
  OUTPOST_TRY(AgentManifest m, parse_manifest(manifest_text, "manifest", base_dir));
  OUTPOST_TRY_VOID(attestation::AgentKeyStore::validate_name(m.name));
  if (m.task.empty()) m.task = "default";
  OUTPOST_TRY_VOID(check_manifest_paths(m));
  auto refuse = [&](const std::string& why) -> Failure {
    (void)log->record_event("agent_refused", {{"agent", m.name}, {"error", why}});
    OUTPOST_NOTE(warn, "deploy of " + m.name + " refused: " + why);
    return fail(make_error_code(errc::verification_failed), why);
  };

  // What the bundle says of this agent: revoked, and the binary it expects.
  auto p = policy.load();
  std::optional<Digest> expected;
  if (p->installed) {
    const fb::Bundle& b = p->installed->bundle.bundle();
    if (b.revoked_agents() != nullptr) {
      for (const auto* s : *b.revoked_agents()) {
        if (s->string_view() == m.name) return refuse("agent " + m.name + " is revoked by bundle v" + std::to_string(b.version()));
      }
    }
    if (b.agents() != nullptr) {
      for (const auto* a : *b.agents()) {
        if (a->name()->string_view() != m.name || a->measurement() == nullptr || a->measurement()->size() != 32) continue;
        Digest d;
        std::copy(a->measurement()->begin(), a->measurement()->end(), d.begin());
        expected = d;
      }
    }
  }
  auto measured = attestation::measure_file(m.binary, config.max_binary_bytes);
  if (!measured) return refuse("cannot measure " + m.binary.string() + ": " + measured.error().message());
  if (expected && *expected != *measured) {
    return refuse("measurement of " + m.binary.string() + " is " + hex_encode(*measured) + ", bundle expects " +
                  hex_encode(*expected));
  }
  // Into the runtime PCR before it ever runs; an agent that cannot be measured does not run.
  if (auto r = measure(firmware_hooks::runtime_kind::agent, m.name, *measured); !r) {
    return refuse("cannot record the measurement of " + m.name + ": " + r.error().message());
  }
  attestation::AgentKeyStore keys(config.state_dir, node);
  OUTPOST_TRY(attestation::AgentKey key, keys.ensure(*tpm, m.name, *measured));

  std::unique_lock lock(mu);
  auto it = agents.find(m.name);
  if (it != agents.end() && (it->second->state == AgentState::running || it->second->pid > 0)) {
    return fail(make_error_code(errc::already_exists), "agent " + m.name + " is running; stop it first");
  }
  if (it == agents.end() && agents.size() >= config.max_agents) {
    return fail(make_error_code(errc::invalid_argument), "limit of " + std::to_string(config.max_agents) + " agents reached");
  }
  auto a = std::make_unique<Agent>();
  OUTPOST_TRY(a->uid, allocate_uid(m.name));
  broker::SessionState::Limits limits;
  limits.deny_rate_per_s = config.deny_records_per_s;
  limits.deny_burst = config.deny_records_burst;
  limits.max_coalesced_kinds = 16;  // kinds an agent can vary (tool names) get one overflow entry
  a->flow = std::make_shared<broker::SessionState>(limits);
  a->dir = config.state_dir / "agents" / m.name;
  a->workdir = m.workdir.empty() ? a->dir / "work" : m.workdir;
  a->spiffe_id = key.spiffe_id;
  a->measurement = hex_encode(*measured);
  a->manifest = std::move(m);
  // Kept for a restart of outpostd: the manifest and where its relative paths point.
  json::object deployed{{"base_dir", base_dir.string()}, {"manifest", manifest_text}};
  OUTPOST_TRY_VOID(write_file_atomic(a->dir / "deployed.json", as_bytes(json::serialize(deployed))));
  const std::string name = a->manifest.name;
  agents[name] = std::move(a);
  std::erase(launch_order, name);
  launch_order.push_back(name);
  lock.unlock();
  // Launched from the Asio thread: the agent's parent-death signal is tied to the thread that
  // forked it, and that thread lives as long as outpostd.
  auto do_launch = [this, name]() -> Result<std::string> {
    std::lock_guard l(mu);
    auto found = agents.find(name);
    if (found == agents.end()) return fail(make_error_code(errc::not_found), "agent " + name + " went away");
    OUTPOST_TRY_VOID(launch(*found->second));
    return found->second->session;
  };
  if (std::this_thread::get_id() == io_thread) return do_launch();
  std::promise<Result<std::string>> done;
  auto result = done.get_future();
  asio::post(io, [&] { done.set_value(do_launch()); });
  return result.get();
}

Result<void> Daemon::Impl::launch(Agent& a) {
  const AgentManifest& m = a.manifest;
  if (agents_paused) {
    // Fail closed: nothing starts while its decisions could not be recorded.
    a.state = AgentState::refused;
    return fail(make_error_code(errc::io), "not launching " + m.name + ": the audit log refuses records (" +
                                               log->log().refusing() + ")");
  }
  if (!isolation_missing.empty()) {
    // Fail closed: an agent runs isolated or not at all.
    a.state = AgentState::refused;
    return fail(make_error_code(errc::unsupported), "not launching " + m.name + ": the agent sandbox needs " + isolation_missing +
                                                        " (docs/daemon.md, \"The sandbox\")");
  }
  // Whatever a previous run left behind under the agent's uid goes first: nothing of it may
  // race the checks and the mounts below, or outlive the agent it belonged to.
  OUTPOST_TRY_VOID(sandbox::kill_all_of_uid(a.uid));
  OUTPOST_TRY_VOID(check_manifest_paths(m));
  OUTPOST_TRY_VOID(prepare_workdir(a));
  // outpostd's own files for the agent, read-only inside: its MCP configuration, and the empty
  // folder its sandbox's root is mounted on. Modes set explicitly: the unit's umask is 0077.
  const fs::path run_dir = a.dir / "run";
  const fs::path root_dir = a.dir / "root";
  OUTPOST_TRY_VOID(ensure_directory(run_dir, 0755));
  OUTPOST_TRY_VOID(ensure_directory(root_dir, 0755));
  for (const fs::path& d : {a.dir, run_dir, root_dir}) {
    if (::chmod(d.c_str(), 0755) != 0) return fail(errno_error("chmod " + d.string(), errno));  // traversal; secrets in it are 0600
  }

  // The agent's MCP configuration: every server it may reach is `outpost mcp connect NAME`.
  json::object servers;
  for (const auto& s : m.mcp_servers) {
    servers[s.name] = json::object{{"command", cli_path.string()}, {"args", json::array{"mcp", "connect", s.name}}};
  }
  const fs::path mcp_config = run_dir / "mcp.json";
  OUTPOST_TRY_VOID(write_file_atomic(mcp_config, as_bytes(json::serialize(json::object{{"mcpServers", servers}})), 0644));
  if (::chmod(mcp_config.c_str(), 0644) != 0) return fail(errno_error("chmod " + mcp_config.string(), errno));

  Bytes sid(12);
  random_bytes(sid);
  a.session = base64url_encode(sid);
  std::vector<std::pair<std::string, std::string>> set = m.env;
  set.emplace_back("OUTPOST_SOCKET", config.socket.string());
  set.emplace_back("OUTPOST_AGENT", m.name);
  set.emplace_back("OUTPOST_SESSION", a.session);
  set.emplace_back("OUTPOST_MCP_CONFIG", mcp_config.string());
  set.emplace_back("HOME", a.workdir.string());
  if (std::find(m.env_allow.begin(), m.env_allow.end(), "PATH") == m.env_allow.end()) {
    set.emplace_back("PATH", "/usr/local/bin:/usr/bin:/bin");
  }
  // Its one road out: the egress proxy in its namespace. Every HTTP client library reads one of
  // these; nothing bypasses it (the host's loopback is reached through it too, when a rule says).
  const std::string proxy_url = "http://127.0.0.1:" + std::to_string(config.egress_port);
  for (const char* name : {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}) {
    set.emplace_back(name, proxy_url);
  }
  // The MCP endpoint beside the proxy is reached directly (clients that honour a port in
  // NO_PROXY; for the others it is the one loopback port that answers in the namespace).
  const std::string mcp_authority = "127.0.0.1:" + std::to_string(config.mcp_port);
  set.emplace_back("NO_PROXY", mcp_authority);
  set.emplace_back("no_proxy", mcp_authority);
  set.emplace_back("OUTPOST_MCP_URL", "http://" + mcp_authority + "/mcp/");
  set.emplace_back("NODE_USE_ENV_PROXY", "1");  // Node's own fetch honours the variables from 24.5
  set.emplace_back("OUTPOST_EGRESS_PROXY", proxy_url);
  // The sandbox has no /tmp: temporary files go to the work directory, unless the manifest says.
  if (std::none_of(m.env.begin(), m.env.end(), [](const auto& kv) { return kv.first == "TMPDIR"; })) {
    set.emplace_back("TMPDIR", (a.workdir / ".tmp").string());  // made by prepare_workdir
  }
  OUTPOST_TRY(auto env, sandbox::scrub_environment(m.env_allow, set));

  // Two layers over the same allowlist: the mount namespace shows only these paths, Landlock
  // limits what may be done to them (docs/daemon.md, "The sandbox").
  sandbox::SandboxPolicy sp;
  sp.read_write.push_back(a.workdir);
  sp.read_write.push_back("/dev/null");  // shells and runtimes redirect there
  sp.read_only.push_back("/dev/urandom");
  for (const auto& p : config.system_read_only) sp.read_only.push_back(p);
  for (const auto& p : m.read_only) sp.read_only.push_back(p);
  sp.read_only.push_back(cli_path.parent_path());  // `outpost mcp connect`
  sp.read_only.push_back(m.command);
  sp.read_only.push_back(m.binary);
  sp.read_only.push_back(run_dir);
  sp.connect_tcp_ports = {config.egress_port, config.mcp_port};  // the proxy and the MCP endpoint, its namespace's listeners
  OUTPOST_TRY(auto ruleset, sandbox::Ruleset::prepare(sp));

  // Its network namespace, made here with the proxy's listener in it: loopback alone.
  auto network = sandbox::make_agent_network(config.egress_port, config.mcp_port);
  if (!network) {
    a.state = AgentState::refused;
    return fail(network.error().wrap("not launching " + m.name + ": its network namespace"));
  }
  if (!network->dns) OUTPOST_NOTE(warn, "agent " + m.name + " has no DNS stub: " + network->dns_error);
  if (!network->resolver_error.empty()) OUTPOST_NOTE(warn, "agent " + m.name + "'s DNS stub: " + network->resolver_error);

  sandbox::IsolationPolicy ip;
  ip.uid = a.uid;
  ip.gid = a.uid;
  ip.root = root_dir;
  ip.max_processes = config.agent_max_processes;
  ip.read_write = {a.workdir};
  ip.devices = {"/dev/null", "/dev/urandom"};
  for (const auto& p : sp.read_only) {
    if (p != "/dev/urandom") ip.read_only.push_back(p);
  }
  ip.read_only.push_back(config.socket);  // outpostd's socket alone, not the folder it is in
  ip.network_namespace = network->ns.get();
  ip.syscalls.allow_inet = true;  // TCP and UDP, which in its namespace reach outpostd's listeners alone
  OUTPOST_TRY(auto isolation, sandbox::Isolation::prepare(ip));

  // Logs: rotated at the configured size, one generation kept.
  std::error_code ec;
  const fs::path logfile = a.dir / "agent.log";
  if (fs::file_size(logfile, ec) > config.max_log_bytes) fs::rename(logfile, a.dir / "agent.log.1", ec);
  int logfd = ::open(logfile.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (logfd < 0) return fail(errno_error("open " + logfile.string(), errno));

  sandbox::SpawnSpec spec;
  spec.argv.push_back(m.command.string());
  for (const auto& arg : m.args) spec.argv.push_back(arg == "$OUTPOST_MCP_CONFIG" ? mcp_config.string() : arg);
  spec.env = std::move(env);
  spec.cwd = a.workdir;
  spec.stdout_fd = logfd;
  spec.stderr_fd = logfd;
  spec.sandbox = &ruleset;
  spec.isolation = &isolation;
  auto child = sandbox::spawn(spec);
  ::close(logfd);
  if (!child) {
    a.state = AgentState::refused;
    (void)log->record_event("agent_failed", {{"agent", m.name}, {"error", child.error().message()}});
    return fail(child.error().wrap("launch " + m.name));
  }
  a.pid = child->pid;
  a.pidfd = child->pidfd.release();
  a.start_time = child->start_time;
  if (proxy) proxy->serve(egress::Proxy::Binding{m.name, m.task, a.flow, std::move(network->listener), std::move(network->dns)});
  if (endpoint) endpoint->serve(m.name, std::move(network->mcp_listener));
  a.started_at = unix_now();
  a.state = AgentState::running;
  a.stop_requested = false;
  (void)log->record_event("agent_start", {{"agent", m.name}, {"pid", a.pid}, {"uid", a.uid}, {"session", a.session},
                                          {"measurement", a.measurement}, {"spiffe_id", a.spiffe_id}});
  OUTPOST_NOTE(info, "agent " + m.name + " started, pid " + std::to_string(a.pid));
  return ok();
}

void Daemon::Impl::reap() {
  std::lock_guard lock(mu);
  for (auto& [name, a] : agents) {
    if (a->pid <= 0) continue;
    int status = 0;
    if (::waitpid(a->pid, &status, WNOHANG) == a->pid) on_exit(*a, status);
  }
}

void Daemon::Impl::on_exit(Agent& a, int status) {
  a.last_exit = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  ::close(a.pidfd);
  a.pidfd = -1;
  a.pid = -1;
  a.set_paused(false);
  // What it left behind (a double-forked or setsid'ed descendant) ends with it.
  if (auto k = sandbox::kill_all_of_uid(a.uid); !k) OUTPOST_NOTE(error, "agent " + a.manifest.name + ": " + k.error().message());
  if (proxy) proxy->stop_agent(a.manifest.name);
  if (endpoint) endpoint->stop_agent(a.manifest.name);
  (void)log->record_event("agent_exit", {{"agent", a.manifest.name}, {"status", a.last_exit}});
  OUTPOST_NOTE(info, "agent " + a.manifest.name + " exited with " + std::to_string(a.last_exit));
  wake_connections(a.manifest.name);
  if (a.state == AgentState::revoked || a.stop_requested || stopping) {
    if (a.state == AgentState::running) a.state = AgentState::stopped;
    return;
  }
  const bool failed = a.last_exit != 0;
  if (a.manifest.restart == RestartPolicy::always || (a.manifest.restart == RestartPolicy::on_failure && failed)) {
    schedule_restart(a);
  } else {
    a.state = AgentState::stopped;
  }
}

void Daemon::Impl::schedule_restart(Agent& a) {
  if (unix_now() - a.started_at > 60) a.restarts = 0;  // it ran a while: start the back-off again
  const uint32_t delay = std::min<uint32_t>(60, 1u << std::min<uint32_t>(a.restarts, 6));
  ++a.restarts;
  a.state = AgentState::backoff;
  a.timer = std::make_unique<asio::steady_timer>(io, std::chrono::seconds(delay));
  const std::string name = a.manifest.name;
  const fs::path binary = a.manifest.binary;
  const std::string expected = a.measurement;
  a.timer->async_wait([this, name, binary, expected](const boost::system::error_code& ec) {
    if (ec || stopping) return;
    // The binary is measured again before it runs again (off the event loop: it may be large).
    // One that changed since deploy is not restarted: only a deploy measures new code in.
    asio::post(worker, [this, name, binary, expected] {
      auto now = attestation::measure_file(binary, config.max_binary_bytes);
      std::string error;
      if (!now) error = "cannot measure " + binary.string() + ": " + now.error().message();
      else if (hex_encode(*now) != expected) error = binary.string() + " changed since deploy (now " + hex_encode(*now) + "); deploy it again";
      asio::post(io, [this, name, error] {
        if (stopping) return;
        std::lock_guard lock(mu);
        auto it = agents.find(name);
        if (it == agents.end() || it->second->state != AgentState::backoff) return;
        if (!error.empty()) {
          it->second->state = AgentState::refused;
          (void)log->record_event("agent_refused", {{"agent", name}, {"error", error}});
          OUTPOST_NOTE(error, "agent " + name + " not restarted: " + error);
          return;
        }
        if (auto r = launch(*it->second); !r) OUTPOST_NOTE(error, r.error().message());
      });
    });
  });
}

void Daemon::Impl::stop_agent(Agent& a, bool kill_now) {
  a.stop_requested = true;
  if (a.timer) a.timer->cancel();
  if (a.state == AgentState::backoff) a.state = AgentState::stopped;
  if (a.pidfd < 0) return;
  sandbox::pidfd_signal(a.pidfd, kill_now ? SIGKILL : SIGTERM);
  if (a.paused_for_budget) {
    a.set_paused(false);
    ::kill(-a.pid, SIGCONT);  // a stopped process takes its SIGTERM only once it runs
  }
  if (!kill_now) {
    // KILL after a grace period if it is still there.
    auto t = std::make_shared<asio::steady_timer>(io, std::chrono::seconds(5));
    const pid_t pid = a.pid;
    const std::string name = a.manifest.name;
    t->async_wait([this, t, pid, name](const boost::system::error_code&) {
      std::lock_guard lock(mu);
      auto it = agents.find(name);
      if (it != agents.end() && it->second->pid == pid && it->second->pidfd >= 0) sandbox::pidfd_signal(it->second->pidfd, SIGKILL);
    });
  }
}

void Daemon::Impl::revoke(const std::string& name) {
  std::lock_guard lock(mu);
  auto it = agents.find(name);
  if (it == agents.end()) return;
  it->second->state = AgentState::revoked;
  stop_agent(*it->second, true);
  wake_connections(name);
  (void)log->record_event("agent_revoked", {{"agent", name}});
  OUTPOST_NOTE(warn, "agent " + name + " revoked by the bundle: stopped");
}

void Daemon::Impl::wake_connections(const std::string& agent) {
  for (auto& [id, c] : connections) {
    if (agent.empty() || c.agent == agent) {
      uint64_t one = 1;
      (void)!::write(c.wake, &one, sizeof one);
    }
  }
}

// The Prometheus exposition (docs/daemon.md, "Metrics"): the decision counters and broker
// histograms kept as calls happen, the rest read now from what `status` reports.
std::string Daemon::Impl::metrics_text() {
  metrics::Writer w;
  w.family("outpost_decisions_total", "counter",
           "Decisions recorded in the audit log, by agent, kind (tool call or egress), verdict and deciding rule; "
           "denials over the deny budget are counted when their coalesced record is written");
  w.counters("outpost_decisions_total", decision_counts);
  w.family("outpost_broker_decide_seconds", "histogram",
           "Per batch of an agent's MCP messages (one read): cutting, parsing, deciding and staging the records");
  w.histogram("outpost_broker_decide_seconds", {}, decide_histogram.snapshot());
  w.family("outpost_broker_hold_seconds", "histogram",
           "Per batch: how long its calls waited in outpostd before going to the server (decide and the records' commit)");
  w.histogram("outpost_broker_hold_seconds", {}, hold_histogram.snapshot());

  {
    std::lock_guard lock(mu);
    std::map<std::string, uint64_t> by_state;
    for (const auto& [name, a] : agents) ++by_state[std::string(state_name(a->state))];
    w.family("outpost_agents", "gauge", "Deployed agents by state");
    for (const char* st : {"running", "restarting", "stopped", "refused", "revoked"}) {
      w.sample("outpost_agents", {{"state", st}}, static_cast<double>(by_state[st]));
    }
    w.family("outpost_mcp_connections", "gauge", "Open MCP connections of agents");
    w.sample("outpost_mcp_connections", {}, static_cast<double>(connections.size()));
    if (proxy) {
      std::vector<std::pair<std::string, egress::Proxy::Counters>> egress;
      for (const auto& name : launch_order) egress.emplace_back(name, proxy->counters(name));
      w.family("outpost_egress_connections_total", "counter", "Egress proxy connections by agent and result, since the agent's launch");
      for (const auto& [name, e] : egress) {
        w.sample("outpost_egress_connections_total", {{"agent", name}, {"result", "allowed"}}, static_cast<double>(e.allowed));
        w.sample("outpost_egress_connections_total", {{"agent", name}, {"result", "refused"}}, static_cast<double>(e.refused));
      }
      w.family("outpost_egress_open_connections", "gauge", "Egress connections open now, by agent");
      for (const auto& [name, e] : egress) w.sample("outpost_egress_open_connections", {{"agent", name}}, static_cast<double>(e.open));
      w.family("outpost_egress_bytes_total", "counter", "Bytes through the egress proxy by agent and direction, since the agent's launch");
      for (const auto& [name, e] : egress) {
        w.sample("outpost_egress_bytes_total", {{"agent", name}, {"direction", "up"}}, static_cast<double>(e.bytes_up));
        w.sample("outpost_egress_bytes_total", {{"agent", name}, {"direction", "down"}}, static_cast<double>(e.bytes_down));
      }
      w.family("outpost_dns_refused_total", "counter", "Queries the DNS stub in the agent's namespace answered (REFUSED, or FORMERR/NOTIMP for a malformed one)");
      for (const auto& [name, e] : egress) w.sample("outpost_dns_refused_total", {{"agent", name}}, static_cast<double>(e.dns_refused));
    }
  }

  auto& l = log->log();
  w.family("outpost_audit_last_seq", "gauge", "Sequence number of the newest audit record");
  w.sample("outpost_audit_last_seq", {}, static_cast<double>(l.last_seq()));
  w.family("outpost_audit_disk_bytes", "gauge", "Bytes the audit log holds on disk");
  w.sample("outpost_audit_disk_bytes", {}, static_cast<double>(l.disk_bytes()));
  w.family("outpost_audit_budget_bytes", "gauge", "The board's audit log budget");
  w.sample("outpost_audit_budget_bytes", {}, static_cast<double>(board.audit_log_bytes));
  w.family("outpost_audit_refusing", "gauge", "1 while the audit log refuses records (full, or a write failed)");
  w.sample("outpost_audit_refusing", {}, l.refusing().empty() ? 0 : 1);

  const attestation::TpmHealth th = tpm->health();
  w.family("outpost_tpm_connected", "gauge", "1 while the TPM answers, 0 from a transport failure until a reconnect succeeds");
  w.sample("outpost_tpm_connected", {}, th.connected ? 1 : 0);
  w.family("outpost_tpm_errors_total", "counter", "TPM connections lost, plus reconnect attempts that failed");
  w.sample("outpost_tpm_errors_total", {}, static_cast<double>(th.failures));
  w.family("outpost_tpm_reconnects_total", "counter", "TPM connections re-established after a failure");
  w.sample("outpost_tpm_reconnects_total", {}, static_cast<double>(th.reconnects));

  if (sync) {
    const auto st = sync->status();
    w.family("outpost_sync_backlog_records", "gauge", "Durable audit records the hub has not acknowledged yet");
    w.sample("outpost_sync_backlog_records", {}, static_cast<double>(st.backlog()));
    w.family("outpost_sync_uploaded_records_total", "counter", "Audit records the hub acknowledged since outpostd started");
    w.sample("outpost_sync_uploaded_records_total", {}, static_cast<double>(st.uploaded_records));
    w.family("outpost_sync_failures_total", "counter", "Failed rounds with the hub since outpostd started");
    w.sample("outpost_sync_failures_total", {}, static_cast<double>(st.failures));
    w.family("outpost_sync_last_contact_timestamp_seconds", "gauge", "Unix time of the last successful exchange with the hub (0: none)");
    w.sample("outpost_sync_last_contact_timestamp_seconds", {}, static_cast<double>(st.last_contact_ms / 1000));
  }

  const auto p = policy.load();
  w.family("outpost_bundle_version", "gauge", "Version of the policy bundle in force (0: none installed)");
  w.sample("outpost_bundle_version", {}, p->installed ? static_cast<double>(p->installed->state.version) : 0);
  if (p->installed) {
    w.family("outpost_bundle_offline_seconds_left", "gauge", "Seconds of the bundle's offline budget left (it turns safe-set or deny-all at 0)");
    w.sample("outpost_bundle_offline_seconds_left", {}, static_cast<double>(p->status.offline_left));
    w.family("outpost_bundle_not_after_timestamp_seconds", "gauge", "Unix time the bundle expires");
    w.sample("outpost_bundle_not_after_timestamp_seconds", {}, static_cast<double>(p->status.not_after));
  }
  w.family("outpost_policy_mode", "gauge", "1 for the mode decisions are made in: normal, safe_set or deny_all");
  for (const auto& [mode, name] : {std::pair{policy::Mode::normal, "normal"}, std::pair{policy::Mode::safe_set, "safe_set"},
                                   std::pair{policy::Mode::deny_all, "deny_all"}}) {
    w.sample("outpost_policy_mode", {{"mode", name}}, p->mode == mode ? 1 : 0);
  }
  return w.take();
}

json::object Daemon::Impl::agent_json(const Agent& a) const {
  json::object o{{"name", a.manifest.name},
                 {"state", a.paused_for_budget ? "paused" : state_name(a.state)},
                 {"pid", a.pid},
                 {"uid", a.uid},
                 {"audit_records", a.audit_records->load()},
                 {"denials_recorded", a.flow ? a.flow->denies_recorded() : 0},
                 {"denials_coalesced", a.flow ? a.flow->denies_coalesced() : 0},
                 {"session", a.session},
                 {"task", a.manifest.task},
                 {"spiffe_id", a.spiffe_id},
                 {"measurement", a.measurement},
                 {"restarts", a.restarts},
                 {"last_exit", a.last_exit},
                 {"started_at", a.started_at ? format_rfc3339_utc(a.started_at) : ""}};
  json::array servers;
  for (const auto& s : a.manifest.mcp_servers) servers.push_back(json::value(s.name));
  o["mcp_servers"] = std::move(servers);
  if (proxy) {
    o["egress"] = egress_json(proxy->counters(a.manifest.name));
  }
  return o;
}

// ---- the API ----

void Daemon::Impl::accept() {
  acceptor->async_accept([this](const boost::system::error_code& ec, asio::local::stream_protocol::socket s) {
    if (stopping || ec == asio::error::operation_aborted) return;
    if (ec) {
      // EMFILE, ENFILE, ENOBUFS: keep serving once descriptors are free again, without spinning.
      accept_backoff_ms = std::clamp(accept_backoff_ms * 2, 50, 2000);
      OUTPOST_NOTE(warn, "accept on the API socket: " + ec.message() + "; retrying in " + std::to_string(accept_backoff_ms) + " ms");
      accept_timer.expires_after(std::chrono::milliseconds(accept_backoff_ms));
      accept_timer.async_wait([this](const boost::system::error_code& e) {
        if (!e && !stopping) accept();
      });
      return;
    }
    accept_backoff_ms = 0;
    int fd = s.release();
    Peer peer;
    socklen_t len = sizeof peer.cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer.cred, &len) != 0) {
      ::close(fd);
      accept();
      return;
    }
    peer.operator_uid = std::find(config.allow_uids.begin(), config.allow_uids.end(), peer.cred.uid) != config.allow_uids.end() ||
                        std::find(config.allow_gids.begin(), config.allow_gids.end(), peer.cred.gid) != config.allow_gids.end();
    std::string refused;
    {
      std::lock_guard lock(mu);
      // An agent is known by its own uid (and, in serve, by being a process it started).
      std::string agent_uid_of;
      for (const auto& [name, a] : agents) {
        if (a->uid == peer.cred.uid && a->pid > 0) agent_uid_of = name;
      }
      // Agents' connections share max_connections; operators are capped per uid only, so no
      // number of agents can lock the operator out.
      if (agent_uid_of.empty() && !peer.operator_uid) {
        refused = "refused: uid " + std::to_string(peer.cred.uid) + " may not use the outpostd API";
      } else if (!agent_uid_of.empty() && agent_connections >= config.api_max_connections) {
        refused = "refused: outpostd serves " + std::to_string(agent_connections) + " agent connections already";
      } else if (!agent_uid_of.empty() && api_by_agent[agent_uid_of] >= config.api_max_connections_per_agent) {
        refused = "refused: agent " + agent_uid_of + " holds " + std::to_string(config.api_max_connections_per_agent) + " connections already";
      } else if (agent_uid_of.empty() && api_by_uid[peer.cred.uid] >= config.api_max_connections_per_uid) {
        refused = "refused: uid " + std::to_string(peer.cred.uid) + " holds " + std::to_string(config.api_max_connections_per_uid) +
                  " connections already";
      } else {
        peer.agent = agent_uid_of;
        count_connection(peer, +1);
      }
    }
    if (!refused.empty()) {
      // Nothing of the request is read, so nothing it carries (descriptors, bytes) is taken in.
      // The reply goes out without blocking; a peer that does not read it loses it.
      std::string line = json::serialize(error_reply(refused)) + "\n";
      (void)!::send(fd, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      ::close(fd);
      if (refused_logged.fetch_add(1) % 1000 == 0) {
        (void)log->record_event("api_refused", {{"pid", peer.cred.pid}, {"uid", peer.cred.uid}, {"error", refused}});
      }
      accept();
      return;
    }
    try {
      std::thread([this, fd, peer] {
        serve(fd, peer);
        std::lock_guard lock(mu);
        count_connection(peer, -1);
        threads_done.notify_all();
      }).detach();
    } catch (const std::system_error& e) {  // EAGAIN: out of threads (a fork bomb in the unit's cgroup)
      OUTPOST_NOTE(error, std::string("API connection refused: no thread for it: ") + e.what());
      ::close(fd);
      std::lock_guard lock(mu);
      count_connection(peer, -1);
    }
    accept();
  });
}

void Daemon::Impl::serve(int fd, Peer peer) {
  // The peer as a pidfd, taken when it connected (SO_PEERPIDFD, Linux 6.5+) or now: while it
  // is alive its pid cannot be reused, so the ancestry check below is about this process.
  std::string agent_name;
  if (!peer.agent.empty()) {
    sandbox::UniqueFd peer_pidfd;
    int raw_pidfd = -1;
    socklen_t len = sizeof raw_pidfd;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &raw_pidfd, &len) == 0) {
      peer_pidfd = sandbox::UniqueFd(raw_pidfd);
    } else if (auto opened = sandbox::pidfd_open(peer.cred.pid)) {
      peer_pidfd = std::move(*opened);
    }
    // Only the agent its uid names is checked, from a snapshot: the /proc walk runs unlocked.
    pid_t agent_pid = -1;
    uint64_t agent_start = 0;
    {
      std::lock_guard lock(mu);
      if (auto it = agents.find(peer.agent); it != agents.end() && it->second->state == AgentState::running) {
        agent_pid = it->second->pid;
        agent_start = it->second->start_time;
      }
    }
    if (agent_pid > 0 && peer_pidfd && sandbox::pidfd_alive(peer_pidfd.get()) &&
        sandbox::is_same_or_descendant(peer.cred.pid, agent_pid, agent_start)) {
      agent_name = peer.agent;
    }
  }
  auto refuse = [&](const std::string& op, const std::string& why) {
    // Sampled like the refusals at accept: a peer cannot fill the log by being refused.
    if (refused_logged.fetch_add(1) % 1000 == 0) {
      (void)log->record_event("api_refused", {{"op", op}, {"pid", peer.cred.pid}, {"uid", peer.cred.uid}, {"agent", peer.agent},
                                              {"error", why}});
    }
    (void)send_message(fd, error_reply(why));
    ::close(fd);
  };
  if (!peer.agent.empty() && agent_name.empty()) {
    refuse("", "refused: pid " + std::to_string(peer.cred.pid) + " is not a process of an agent outpostd launched");
    return;
  }
  // Agents send one short request with their two pipes; operators a request with no
  // descriptors, a bundle at most. Either must arrive whole within the request timeout.
  const bool is_agent = !agent_name.empty();
  std::vector<int> fds;
  auto msg = recv_message(fd, &fds, is_agent ? 64 << 10 : kMaxApiLine, is_agent ? 2 : 0,
                          static_cast<int>(config.api_request_timeout_ms));
  auto close_fds = [&] {
    for (int f : fds) ::close(f);
    fds.clear();
  };
  if (!msg || !msg->is_object()) {
    (void)send_message(fd, error_reply(msg ? "a request is a JSON object" : msg.error().message()));
    close_fds();
    ::close(fd);
    return;
  }
  const json::object& req = msg->as_object();
  const std::string op = str(req, "op");
  if (is_agent) {
    if (op != "mcp") {
      close_fds();
      refuse(op, "refused: agents may only use mcp connect");
      return;
    }
    serve_mcp(fd, req, agent_name, std::move(fds));
    ::close(fd);
    trim_heap();
    return;
  }
  if (op == "mcp") {
    refuse(op, "refused: pid " + std::to_string(peer.cred.pid) + " is not a process of an agent outpostd launched");
    return;
  }
  (void)send_message(fd, handle(req, peer.cred, false, ""));
  ::close(fd);
}

json::object Daemon::Impl::oauth_login(const json::object& req, bool finish) {
  const std::string agent = str(req, "agent"), server = str(req, "server");
  McpServerSpec spec;
  std::string task;
  std::shared_ptr<broker::SessionState> flow;
  {
    std::lock_guard lock(mu);
    auto it = agents.find(agent);
    if (it == agents.end()) return error_reply("no agent named " + agent + " is deployed");
    const auto& servers = it->second->manifest.mcp_servers;
    auto s = std::find_if(servers.begin(), servers.end(), [&](const McpServerSpec& m) { return m.name == server; });
    if (s == servers.end()) return error_reply("agent " + agent + " has no MCP server \"" + server + "\"");
    spec = *s;
    task = it->second->manifest.task;
    flow = it->second->flow;
  }
  if (spec.url.empty() || spec.auth.kind != upstream::AuthSpec::Kind::oauth ||
      spec.auth.grant != upstream::AuthSpec::Grant::authorization_code) {
    return error_reply("MCP server " + server + " of " + agent + " is not a url: server with auth grant authorization_code");
  }
  auto url = upstream::parse_upstream_url(spec.url);
  if (!url) return error_reply(url.error().message());
  auto ca = ca_pem_for(spec, *url);
  if (!ca) return error_reply(ca.error().message());
  auto tokens = token_source(agent, task, spec, *url, *ca, flow);
  if (!finish) {
    auto login = tokens->begin_login(str(req, "redirect_uri"));
    if (!login) return error_reply(login.error().message());
    return json::object{{"ok", true}, {"url", *login}};
  }
  auto done = tokens->finish_login(str(req, "code"), str(req, "state"), str(req, "iss"));
  (void)log->record_event("oauth_login", {{"agent", agent}, {"server", server}, {"ok", static_cast<bool>(done)},
                                          {"error", done ? std::string() : done.error().message()}});
  if (!done) return error_reply(done.error().message());
  return json::object{{"ok", true}};
}

json::object Daemon::Impl::handle(const json::object& req, const ucred& peer, bool, const std::string&) {
  const std::string op = str(req, "op");
  if (op == "oauth_begin" || op == "oauth_finish") return oauth_login(req, op == "oauth_finish");
  if (op == "deploy") {
    auto session = deploy(str(req, "manifest"), str(req, "base_dir"));
    if (!session) return error_reply(session.error().message());
    (void)peer;
    return json::object{{"ok", true}, {"session", *session}};
  }
  if (op == "list") {
    std::lock_guard lock(mu);
    json::array list;
    for (const auto& name : launch_order) list.push_back(agent_json(*agents.at(name)));
    return json::object{{"ok", true}, {"agents", std::move(list)}};
  }
  if (op == "stop") {
    std::lock_guard lock(mu);
    auto it = agents.find(str(req, "name"));
    if (it == agents.end()) return error_reply("no agent named " + str(req, "name"));
    stop_agent(*it->second, false);
    std::error_code ec;
    fs::remove(it->second->dir / "deployed.json", ec);  // stays stopped across a restart
    (void)log->record_event("agent_stop", {{"agent", it->first}, {"uid", peer.uid}});
    return json::object{{"ok", true}};
  }
  if (op == "logs") {
    std::string name = str(req, "name");
    if (!attestation::AgentKeyStore::validate_name(name)) return error_reply("bad agent name");
    auto text = read_text_file(config.state_dir / "agents" / name / "agent.log", config.max_log_bytes + 1);
    if (!text) return error_reply(text.error().message());
    size_t max = 64 << 10;
    if (auto it = req.find("bytes"); it != req.end() && it->value().is_int64()) max = static_cast<size_t>(it->value().get_int64());
    std::string tail = text->size() > max ? text->substr(text->size() - max) : *text;
    return json::object{{"ok", true}, {"log", tail}};
  }
  if (op == "install") {
    auto bytes = base64_decode(str(req, "bundle"));
    if (!bytes) return error_reply("bundle: " + bytes.error().message());
    auto v = install_bundle(std::move(*bytes), "api uid " + std::to_string(peer.uid));
    if (!v) return error_reply(v.error().message());
    return json::object{{"ok", true}, {"version", *v}};
  }
  if (op == "quote") {
    // `outpost attest quote` while outpostd owns the TPM: the AK quotes the selection asked for.
    auto nonce = hex_decode(str(req, "nonce"));
    if (!nonce || nonce->empty() || nonce->size() > 64) return error_reply("nonce must be 1 to 64 bytes of hex");
    auto selection = attestation::parse_pcr_selection(str(req, "pcrs").empty() ? board.quote_selection() : str(req, "pcrs"));
    if (!selection) return error_reply("pcrs: " + selection.error().message());
    std::lock_guard lock(measure_mu);  // a quote between a log append and its extend would look torn
    auto q = tpm->quote(node.handles.ak, *selection, *nonce);
    if (!q) return error_reply(q.error().message());
    return json::object{{"ok", true},
                        {"attest", base64_encode(q->signed_attest.attest)},
                        {"signature", base64_encode(q->signed_attest.signature)},
                        {"pcrs", base64_encode(attestation::encode_pcrs_tpm2tools(q->pcrs))},
                        {"ak", node.ak_public.to_pem()}};
  }
  if (op == "metrics") return json::object{{"ok", true}, {"text", metrics_text()}};
  if (op == "status") {
    auto p = policy.load();
    json::object o{{"ok", true}, {"node_id", node.node_id}, {"board", board.name}};
    const attestation::TpmHealth th = tpm->health();
    o["tpm"] = json::object{{"connected", th.connected},
                            {"reconnects", th.reconnects},
                            {"failures", th.failures},
                            {"last_error", th.last_error},
                            {"last_failure", th.last_failure_unix ? format_rfc3339_utc(th.last_failure_unix) : ""}};
    o["sandbox"] = json::object{{"isolation", isolation_missing.empty()},
                                {"missing", isolation_missing}};
    if (proxy) {
      // Per agent: connections allowed and refused through its egress proxy, open now, and the
      // queries its namespace's DNS stub refused.
      json::object egress;
      std::lock_guard lock(mu);
      for (const auto& name : launch_order) {
        egress[name] = egress_json(proxy->counters(name));
      }
      o["egress"] = std::move(egress);
    }
    auto& l = log->log();
    o["audit"] = json::object{{"last_seq", l.last_seq()},         {"durable_seq", l.durable_seq()},
                              {"checkpoint_seq", checkpoint_seq.load()}, {"disk_bytes", l.disk_bytes()},
                              {"budget_bytes", board.audit_log_bytes}, {"refusing", l.refusing()},
                              {"agents_paused", agents_paused.load()}};
    if (sync) {
      auto st = sync->status();
      o["sync"] = json::object{{"hub", st.hub},
                               {"enrolled", st.enrolled},
                               {"acked_seq", st.acked_seq},
                               {"backlog", st.backlog()},
                               {"uploaded_records", st.uploaded_records},
                               {"last_contact", st.last_contact_ms ? format_rfc3339_utc(st.last_contact_ms / 1000) : ""},
                               {"last_attested", st.last_attested_ms ? format_rfc3339_utc(st.last_attested_ms / 1000) : ""},
                               {"last_error", st.last_error},
                               {"next_attempt", st.next_attempt_ms ? format_rfc3339_utc(st.next_attempt_ms / 1000) : ""},
                               {"bundles_installed", st.bundles_installed},
                               {"fleet", st.fleet}};
    } else {
      o["sync"] = nullptr;
    }
    if (p->installed) {
      const auto& s = p->status;
      o["bundle"] = json::object{{"version", p->installed->state.version},
                                 {"mode", p->mode == policy::Mode::normal ? "normal"
                                          : p->mode == policy::Mode::safe_set ? "safe_set" : "deny_all"},
                                 {"reason", p->reason},
                                 {"not_after", format_rfc3339_utc(s.not_after)},
                                 {"offline_left_s", s.offline_left}};
    } else {
      o["bundle"] = nullptr;
    }
    std::lock_guard lock(mu);
    o["agents"] = agents.size();
    o["connections"] = connections.size();
    o["decisions"] = log->records();
    return o;
  }
  return error_reply("unknown op \"" + op + "\"");
}

void Daemon::Impl::serve_mcp(int fd, const json::object& req, const std::string& agent_name, std::vector<int> fds) {
  auto close_fds = [&] {
    for (int f : fds) ::close(f);
  };
  const std::string server_name = str(req, "server");
  McpServerSpec spec;
  std::string task;
  fs::path logdir;
  std::shared_ptr<std::atomic<uint64_t>> audit_records;
  std::shared_ptr<std::atomic<bool>> records_blocked;
  std::shared_ptr<broker::SessionState> flow;
  {
    std::lock_guard lock(mu);
    Agent& a = *agents.at(agent_name);
    audit_records = a.audit_records;
    records_blocked = a.records_blocked;
    flow = a.flow;
    // Paused, or reconnecting faster than the bucket refills: refused, and not recorded (each
    // record is what such an agent is after).
    const auto now = std::chrono::steady_clock::now();
    a.connect_tokens = std::min(32.0, a.connect_tokens + 10.0 * std::chrono::duration<double>(now - a.connect_refilled).count());
    a.connect_refilled = now;
    std::string why;
    if (a.paused_for_budget) why = "agent " + agent_name + " is paused: it wrote most of the audit log's budget";
    else if (a.connect_tokens < 1) why = "agent " + agent_name + " opens MCP connections too fast (at most 10 a second)";
    if (!why.empty()) {
      (void)send_message(fd, error_reply(why));
      close_fds();
      return;
    }
    a.connect_tokens -= 1;
    auto it = std::find_if(a.manifest.mcp_servers.begin(), a.manifest.mcp_servers.end(),
                           [&](const McpServerSpec& s) { return s.name == server_name; });
    if (it == a.manifest.mcp_servers.end()) {
      (void)send_message(fd, error_reply("agent " + agent_name + " has no MCP server \"" + server_name + "\""));
      close_fds();
      return;
    }
    spec = *it;
    task = a.manifest.task;
    logdir = a.dir / "servers";
  }
  if (fds.size() != 2) {
    (void)send_message(fd, error_reply("mcp needs the client's stdin and stdout"));
    close_fds();
    return;
  }

  // From the server's start on: the relay between the agent and the server, and its records.
  // `server_in` and `server_out` are the relay's ends; `end_server` stops the server (once the
  // relay has closed server_in) and gives its exit status.
  auto relay = [&](int server_in, int server_out, json::object connected, const std::function<int()>& end_server) {
    (void)send_message(fd, json::object{{"ok", true}});

    uint64_t id;
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    {
      std::lock_guard lock(mu);
      id = next_connection++;
      connections[id] = Connection{agent_name, server_name, wake};
    }
    audit_records->fetch_add(2, std::memory_order_relaxed);  // this record and mcp_disconnect's
    connected["agent"] = agent_name;
    connected["server"] = server_name;
    (void)log->record_event("mcp_connect", connected);

    // Credentials: signed by the agent's TPM key, loaded for the signature and flushed.
    // The agent's key material is read from disk once per connection, not per credential.
    std::optional<attestation::AgentKey> agent_key;
    broker::CredentialMinter minter = [this, agent_name, &agent_key](const broker::DecisionRecord& rec,
                                                                     int64_t ttl) -> Result<std::string> {
      attestation::AgentKeyStore keys(config.state_dir, node);
      if (!agent_key) {
        OUTPOST_TRY(attestation::AgentKey read, keys.read(agent_name));
        agent_key = std::move(read);
      }
      const attestation::AgentKey& key = *agent_key;
      credentials::CallClaims c;
      c.iss = node.spiffe_id;
      c.sub = key.spiffe_id;
      c.aud = rec.server + "/" + rec.tool;
      c.agent = rec.agent;
      c.task = rec.task;
      c.args_sha256 = rec.args_sha256;  // the broker hashed the arguments for the record already
      c.bundle_version = rec.bundle_version;
      c.iat = c.nbf = rec.time;
      c.exp = rec.time + ttl;
      c.jti = credentials::new_jti();
      OUTPOST_TRY(Tpm::LoadedKey loaded, keys.load(*tpm, key));
      return credentials::mint(c, key.public_key, [&](const Digest& d) { return tpm->sign(loaded, d); });
    };
    CountingSink sink(log.get(), audit_records, records_blocked, &decision_counts);
    broker::McpSession session(broker::McpSession::Options{agent_name, task, server_name, 4096, flow},
                               [this] { return view(); }, &sink, minter);
    broker::RelayFds rf{fds[0], fds[1], server_in, server_out, fd, wake};
    broker::RelayTiming timing;
    timing.decide_histogram = &decide_histogram;
    timing.hold_histogram = &hold_histogram;
    broker::RelayEnd end = broker::run_relay(rf, session, config.max_line_bytes, &timing);
    if (rf.server_in >= 0) ::close(rf.server_in);  // EOF to the server: the MCP stdio shutdown
    int status = end_server();
    ::close(server_out);
    close_fds();
    {
      std::lock_guard lock(mu);
      ::close(connections[id].wake);
      connections.erase(id);
    }
    write_coalesced(agent_name, task, *flow, *audit_records);
    const auto& st = session.stats();
    (void)log->record_event("mcp_disconnect", {{"agent", agent_name}, {"server", server_name}, {"status", status},
                                               {"allowed", st.calls_allowed}, {"denied", st.calls_denied},
                                               {"parse_errors", st.parse_errors},
                                               {"timing", timing_json(timing)},
                                               {"end", end == broker::RelayEnd::finished ? "finished"
                                                       : end == broker::RelayEnd::woken ? "stopped by outpostd"
                                                       : end == broker::RelayEnd::control_closed ? "client gone" : "io error"}});
    (void)send_message(fd, json::object{{"done", true}, {"status", status}});
  };

  // A remote server: outpostd's own connection to it (upstream/http_upstream.h), on a thread of
  // this connection's, behind the same relay.
  if (!spec.url.empty()) {
    auto refuse = [&](const std::string& why) {
      (void)send_message(fd, error_reply("MCP server " + server_name + ": " + why));
      close_fds();
    };
    auto url = upstream::parse_upstream_url(spec.url);
    if (!url) return refuse(url.error().message());
    auto ca = ca_pem_for(spec, *url);
    if (!ca) return refuse(ca.error().message());
    const std::string ca_pem = std::move(*ca);
    auto ctx = upstream::tls_context(*url, ca_pem);
    if (!ctx) return refuse(ctx.error().message());
    std::shared_ptr<upstream::TokenSource> tokens = token_source(agent_name, task, spec, *url, ca_pem, flow);
    upstream::UpstreamOptions uo;
    uo.tls = std::move(*ctx);
    uo.max_message = config.max_line_bytes;
    uo.credential_header = spec.credential_header;
    upstream::UpstreamHooks hooks;
    hooks.connect = outbound(agent_name, task, "MCP", flow);
    hooks.authorization = [tokens](bool refresh) { return tokens->authorization(refresh); };
    int in_pipe[2], out_pipe[2];
    if (::pipe2(in_pipe, O_CLOEXEC) != 0) return refuse("pipe: " + std::string(std::strerror(errno)));
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
      ::close(in_pipe[0]);
      ::close(in_pipe[1]);
      return refuse("pipe: " + std::string(std::strerror(errno)));
    }
    auto remote = std::make_shared<upstream::HttpUpstream>(*url, std::move(uo), std::move(hooks));
    std::promise<void> finished;
    std::future<void> carried = finished.get_future();
    std::thread carrier([remote, in = in_pipe[0], out = out_pipe[1], server_name, done = std::move(finished)]() mutable {
      if (auto r = remote->run(in, out); !r) OUTPOST_NOTE(warn, "MCP server " + server_name + ": " + r.error().message());
      done.set_value();
    });
    relay(in_pipe[1], out_pipe[0], json::object{{"url", url->text}}, [&] {
      // The relay closed the carrier's input: it ends the server's session (DELETE) and stops
      // by itself; a server that does not answer is cut off after two seconds.
      if (carried.wait_for(std::chrono::seconds(2)) != std::future_status::ready) remote->stop();
      carrier.join();
      const auto st = remote->stats();
      return st.failed == 0 ? 0 : 1;
    });
    return;
  }

  // The server: a scrubbed environment plus its sealed secrets, which only it receives.
  std::vector<std::pair<std::string, std::string>> set = spec.env;
  if (std::find(spec.env_allow.begin(), spec.env_allow.end(), "PATH") == spec.env_allow.end()) {
    set.emplace_back("PATH", "/usr/local/bin:/usr/bin:/bin");
  }
  attestation::SecretStore secrets(config.state_dir, node);
  for (const auto& ref : spec.secrets) {
    auto value = secrets.unseal(*tpm, ref.name);
    if (!value) {
      (void)send_message(fd, error_reply("secret " + ref.name + ": " + value.error().message()));
      close_fds();
      return;
    }
    set.emplace_back(ref.env, std::string(as_chars(*value)));
    std::fill(value->begin(), value->end(), 0);
  }
  auto env = sandbox::scrub_environment(spec.env_allow, set);
  for (auto& [k, v] : set) std::fill(v.begin(), v.end(), '\0');
  if (!env) {
    (void)send_message(fd, error_reply(env.error().message()));
    close_fds();
    return;
  }
  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) {
    (void)send_message(fd, error_reply("pipe: " + std::string(std::strerror(errno))));
    close_fds();
    return;
  }
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    (void)send_message(fd, error_reply("pipe: " + std::string(std::strerror(errno))));
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    close_fds();
    return;
  }
  std::error_code ec;
  fs::create_directories(logdir, ec);
  int logfd = ::open((logdir / (server_name + ".log")).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  sandbox::SpawnSpec ss;
  if (spec.local) {
    // The bundle names the executables of local command tools; the agent's manifest cannot.
    ss.argv = {cli_path.string(), "mcp", "serve-local"};
    auto p = policy.load();
    if (p->installed && p->installed->bundle.bundle().tools() != nullptr) {
      for (const auto* t : *p->installed->bundle.bundle().tools()) {
        if (t->kind() != fb::ToolKind::LocalCommand || t->server()->string_view() != server_name || t->command() == nullptr) continue;
        ss.argv.push_back("--tool");
        ss.argv.push_back(t->name()->str() + "=" + t->command()->str());
      }
    }
  } else {
    ss.argv.push_back(spec.command.string());
    ss.argv.insert(ss.argv.end(), spec.args.begin(), spec.args.end());
  }
  ss.env = std::move(*env);
  // Never the agent's work directory: a server (outside the sandbox) must not start where the
  // agent can plant configuration for it (.npmrc, node_modules, sitecustomize.py).
  const fs::path server_dir = logdir / server_name;
  fs::create_directories(server_dir, ec);
  ss.cwd = spec.cwd.empty() ? server_dir : spec.cwd;
  ss.clear_groups = true;  // not outpostd's `tss`: the TPM is outpostd's alone
  ss.stdin_fd = in_pipe[0];
  ss.stdout_fd = out_pipe[1];
  ss.stderr_fd = logfd;
  ss.die_with_parent = true;  // this thread lives until the server is reaped
  auto child = sandbox::spawn(ss);
  for (auto& e : ss.env) std::fill(e.begin(), e.end(), '\0');
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (logfd >= 0) ::close(logfd);
  if (!child) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    (void)send_message(fd, error_reply(child.error().message()));
    close_fds();
    return;
  }
  relay(in_pipe[1], out_pipe[0], json::object{{"pid", child->pid}},
        [&] { return terminate_and_reap(child->pid, child->pidfd.get(), 2000); });
}

// ---- inbox, shutdown ----

void Daemon::Impl::poll_inbox() {
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(config.inbox, ec)) {
    if (e.is_regular_file() && e.path().extension() == ".opb") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    auto bytes = read_file(f, offline_cache::kMaxBundleBytes);
    Result<uint64_t> v = bytes ? install_bundle(std::move(*bytes), "inbox " + f.filename().string())
                               : Result<uint64_t>(fail(bytes.error()));
    if (v) {
      fs::remove(f, ec);
      continue;
    }
    fs::create_directories(config.inbox / "rejected", ec);
    fs::rename(f, config.inbox / "rejected" / f.filename(), ec);
    (void)write_file_atomic(config.inbox / "rejected" / (f.filename().string() + ".error"),
                            as_bytes(v.error().message() + "\n"));
    OUTPOST_NOTE(warn, "inbox: " + f.filename().string() + " rejected: " + v.error().message());
  }
}

void Daemon::Impl::shutdown() {
  if (stopping.exchange(true)) return;
  if (auto n = notify_service_manager("STOPPING=1"); !n) OUTPOST_NOTE(warn, "telling systemd: " + n.error().message());
  OUTPOST_NOTE(info, "shutting down");
  boost::system::error_code ec;
  acceptor->close(ec);
  accept_timer.cancel();
  trim_timer.cancel();
  inbox_timer.cancel();
  life_timer.cancel();
  audit_timer.cancel();
  if (sync) sync->stop();  // an install it started finishes first
  worker.join();  // an install in progress finishes (it is atomic either way)
  {
    // Paused agents (all, or one for its share) must run to receive their SIGTERM; the worker,
    // which pauses, has stopped.
    std::lock_guard lock(mu);
    for (auto& [name, a] : agents) {
      if (a->pid > 0 && (agents_paused || a->paused_for_budget)) ::kill(-a->pid, SIGCONT);
    }
  }
  signals.cancel();
  std::vector<std::pair<pid_t, int>> order;
  {
    std::lock_guard lock(mu);
    wake_connections("");
    // Agents in reverse launch order, each given its grace period.
    for (auto it = launch_order.rbegin(); it != launch_order.rend(); ++it) {
      Agent& a = *agents.at(*it);
      if (a.timer) a.timer->cancel();
      a.stop_requested = true;
      if (a.pidfd >= 0) order.emplace_back(a.pid, a.pidfd);
    }
  }
  for (auto [pid, pidfd] : order) {
    int status = terminate_and_reap(pid, pidfd, 5000);
    std::lock_guard lock(mu);
    for (auto& [name, a] : agents) {
      if (a->pid != pid) continue;
      (void)log->record_event("agent_exit", {{"agent", name}, {"status", status}});
      ::close(a->pidfd);
      a->pidfd = -1;
      a->pid = -1;
      a->state = AgentState::stopped;
    }
  }
  // The HTTP endpoint's sessions end first: their relays (API threads) end when the endpoint
  // closes their control sockets, including one opened after the wake-up above.
  endpoint.reset();
  {
    std::unique_lock lock(mu);
    threads_done.wait_for(lock, std::chrono::seconds(5), [&] { return api_threads == 0; });
  }
  proxy.reset();  // open tunnels end, their close records written
  write_all_coalesced();
  (void)log->record_event("daemon_stop", {});
  maybe_checkpoint(true);  // the last records are anchored before outpostd goes
  (void)log->sync();
  std::error_code fec;
  fs::remove(config.socket, fec);
  io.stop();
}

// ---- start ----

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Daemon::~Daemon() {
  // Asio hands a signal back to its default action when the last signal_set holding it goes. A
  // SIGTERM arriving during the teardown after a clean stop (systemd's second one, an
  // operator's) would then kill the process and turn exit status 0 into 143: ignored instead,
  // from the moment Asio lets go of it.
  if (!impl_) return;
  boost::system::error_code ec;
  impl_->signals.clear(ec);
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);
}

Result<std::unique_ptr<Daemon>> Daemon::create(DaemonConfig config) {
  auto m = std::make_unique<Impl>();
  OUTPOST_TRY(m->board, boards::load_board(config.board));
  if (config.state_dir.empty()) config.state_dir = m->board.state_dir;
  if (config.tcti.empty()) config.tcti = m->board.tcti;
  if (config.socket.empty()) config.socket = config.state_dir / "outpostd.sock";
  if (config.inbox.empty()) config.inbox = config.state_dir / "inbox";
  m->config = std::move(config);
  const DaemonConfig& c = m->config;
  m->cli_path = self_dir() / "outpost";

  OUTPOST_TRY(m->node, attestation::load_identity(c.state_dir));
  OUTPOST_TRY(m->tpm, Tpm::connect(c.tcti));
  OUTPOST_TRY_VOID(attestation::check_tpm_matches(*m->tpm, m->node));
  OUTPOST_TRY(std::string fleet, offline_cache::read_node_fleet(c.state_dir));
  m->store = std::make_unique<offline_cache::BundleStore>(c.state_dir, m->node, m->board.rollback_counter_index,
                                                          offline_cache::NodeScope{m->node.node_id, m->node.board, fleet});
  if (auto text = read_text_file(c.state_dir / "trust" / "root.json", 1 << 20)) {
    auto root = offline_cache::TrustRoot::parse(*text);
    if (!root) return fail(root.error().wrap("trust/root.json"));
    m->trust = std::move(*root);
  }
  offline_cache::AuditLogOptions audit_options;
  audit_options.max_bytes = m->board.audit_log_bytes;
  audit_options.segment_bytes = std::min<uint64_t>(8ull << 20, std::max<uint64_t>(4096, audit_options.max_bytes / 8));
  OUTPOST_TRY(m->log, broker::AuditDecisionLog::open(c.state_dir / "audit" / "log", audit_options, c.durable_decisions));
  if (const auto& rec = m->log->log().recovery(); rec.cut_torn_tail) {
    OUTPOST_NOTE(warn, "audit log: " + rec.cut_detail);
    (void)m->log->record_event("audit_log_repaired", {{"detail", rec.cut_detail}});
  }
  OUTPOST_TRY_VOID(m->open_measurements());
  OUTPOST_TRY_VOID(m->load_policy());
  std::error_code ec;
  fs::create_directories(c.inbox, ec);
  return std::unique_ptr<Daemon>(new Daemon(std::move(m)));
}

Result<void> Daemon::run() {
  Impl& m = *impl_;
  m.io_thread = std::this_thread::get_id();
  const DaemonConfig& c = m.config;
  ::signal(SIGPIPE, SIG_IGN);
  // Descriptors are what a flood of connections exhausts first: take the hard limit (the
  // soft default of 1024 is a select(2)-era leftover; nothing here uses select).
  if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  m.isolation_missing = sandbox::missing_privileges();
  if (!m.isolation_missing.empty()) {
    OUTPOST_NOTE(error, "the agent sandbox needs " + m.isolation_missing + ": agents will not be launched");
  } else {
    OUTPOST_TRY_VOID(m.start_proxy());
    OUTPOST_TRY_VOID(m.start_endpoint());
  }

  // The socket: a stale file from a dead daemon is replaced; a live daemon is not.
  if (fs::exists(c.socket)) {
    if (auto probe = connect_api(c.socket)) {
      ::close(*probe);
      return fail(make_error_code(errc::already_exists), "another outpostd serves " + c.socket.string());
    }
    std::error_code ec;
    fs::remove(c.socket, ec);
  }
  std::error_code ec;
  fs::create_directories(c.socket.parent_path(), ec);
  boost::system::error_code bec;
  m.acceptor.emplace(m.io);
  m.acceptor->open(asio::local::stream_protocol(), bec);
  if (!bec) m.acceptor->bind(asio::local::stream_protocol::endpoint(c.socket.string()), bec);
  if (!bec) m.acceptor->listen(64, bec);
  if (bec) return fail(bec, "listen on " + c.socket.string());
  // Anyone may connect; SO_PEERCRED and the ancestry check decide what they may do.
  ::chmod(c.socket.c_str(), 0666);
  if (!c.metrics_listen.empty()) {
    auto listener = MetricsListener::start(m.io, c.metrics_listen, [&m] { return m.metrics_text(); });
    if (!listener) return fail(listener.error());
    m.metrics_listener = std::move(*listener);
    OUTPOST_NOTE(info, "metrics at http://" + c.metrics_listen + "/metrics");
  }

  // Agents that were deployed when outpostd last stopped come back, measured and checked again.
  for (const auto& e : fs::directory_iterator(c.state_dir / "agents", ec)) {
    auto text = read_text_file(e.path() / "deployed.json", 4 << 20);
    if (!text) continue;
    boost::system::error_code jec;
    json::value v = json::parse(*text, jec);
    if (jec || !v.is_object()) continue;
    if (auto r = m.deploy(str(v.as_object(), "manifest"), str(v.as_object(), "base_dir")); !r) {
      OUTPOST_NOTE(error, "redeploy of " + e.path().filename().string() + " failed: " + r.error().message());
    }
  }

  m.signals.add(SIGTERM);
  m.signals.add(SIGINT);
  m.signals.add(SIGCHLD);
  std::function<void()> wait_signal = [&] {
    m.signals.async_wait([&](const boost::system::error_code& e, int sig) {
      if (e) return;
      if (sig == SIGCHLD) {
        m.reap();
        wait_signal();
        return;
      }
      m.shutdown();
    });
  };
  wait_signal();

  std::function<void()> inbox = [&] {
    m.inbox_timer.expires_after(std::chrono::milliseconds(c.inbox_poll_ms));
    m.inbox_timer.async_wait([&](const boost::system::error_code& e) {
      if (e || m.stopping) return;
      // Installing talks to the TPM: off the event loop, then the next poll is scheduled.
      asio::post(m.worker, [&] {
        m.poll_inbox();
        asio::post(m.io, inbox);
      });
    });
  };
  std::function<void()> life = [&] {
    m.life_timer.expires_after(std::chrono::seconds(c.life_check_s));
    m.life_timer.async_wait([&](const boost::system::error_code& e) {
      if (e || m.stopping) return;
      asio::post(m.worker, [&] {
        m.check_life();  // reads the TPM clock
        asio::post(m.io, life);
      });
    });
  };
  // Group commit makes records durable on its own; this tick takes checkpoints (a TPM quote)
  // and enforces the audit log's disk budget, on the worker.
  std::function<void()> audit = [&] {
    m.audit_timer.expires_after(std::chrono::milliseconds(200));
    m.audit_timer.async_wait([&](const boost::system::error_code& e) {
      if (e || m.stopping) return;
      asio::post(m.worker, [&] {
        if (++m.audit_ticks % 5 == 0) m.write_all_coalesced();  // once a second
        m.enforce_audit_budget();
        m.maybe_checkpoint();
        asio::post(m.io, audit);
      });
    });
  };
  m.poll_inbox();
  inbox();
  life();
  audit();
  m.accept();
  (void)m.log->record_event("daemon_start", {{"node_id", m.node.node_id}, {"socket", c.socket.string()}});
  if (auto s = m.start_sync(); !s) OUTPOST_NOTE(error, "sync with the hub not started: " + s.error().message());
  OUTPOST_NOTE(info, "outpostd ready on " + c.socket.string() + " (node " + m.node.node_id + ")");
  if (auto n = notify_service_manager("READY=1"); !n) OUTPOST_NOTE(warn, "telling systemd: " + n.error().message());
  m.io.run();
  return ok();
}

}  // namespace outpost::daemon
