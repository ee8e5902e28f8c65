// outpost-hub and the node's sync over loopback TLS (docs/benchmarks.md "Hub and sync"). The hub
// is the real outpost-hub process (SQLite store, or PostgreSQL where the name says so) in a
// fresh directory per benchmark; nodes are
// simulated above the TPM seam (tests/support/soft_tpm.h: a software AK signs the checkpoint
// quotes in the TPM's formats, so the hub verifies them as it would a TPM's).
//
//   BM_backlog_sync/N          a node's backlog of N records (checkpoint every 100) synced by the
//                              real SyncClient: wall time, records/s, the node process's RSS growth
//                              while syncing, the hub's peak RSS
//   BM_hub_ingest/S/K/R        K nodes enrol and upload R records each at once (batches of 100
//                              ending in a checkpoint), one TLS connection each: records/s, upload
//                              latency p50/p99, hub peak RSS; S is the hub's store: sqlite, or
//                              postgres (a server of the benchmark's own, tests/support/
//                              postgres_server.h, fsync on as in production: its CPU and memory too)
//   BM_hub_ingest_steady/S/K/R K nodes, enrolled and connected first, each send a batch of 100
//                              records every K*100/R s at a phase of their own (the fleet offers R
//                              records/s): upload latency p50/p99 from when each batch was due,
//                              the rate achieved, the hub's CPU
//                              (Every simulated node sends the same records, times included: the
//                              hub's time indexes get each time a thousand times, a harder insert
//                              pattern than a fleet's.)
//   BM_publish_latency/P       P nodes long-poll GET /v1/bundle; a bundle is published: time from
//                              the publish request until each poller has the new bundle (p50, p99, max)
//
// OUTPOST_BENCH_SCALE=small shrinks every size (the CTest smoke run); figures are printed, never judged.
#include <benchmark/benchmark.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bundle_factory.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/base/files.h"
#include "outpost/hub/hub.h"
#include "outpost/offline_cache/audit_frames.h"
#include "outpost/offline_cache/audit_log.h"
#include "outpost/offline_cache/trust.h"
#include "metrics_text.h"
#include "postgres_server.h"
#include "soft_tpm.h"
#include "sync/hub_client.h"
#include "sync/sync_client.h"

extern char** environ;

namespace {

using namespace outpost;
namespace asio = boost::asio;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

bool small() {
  const char* s = std::getenv("OUTPOST_BENCH_SCALE");
  return s && std::string(s) == "small";
}
int64_t scaled(int64_t n, int64_t small_n) { return small() ? small_n : n; }

fs::path bench_base() {
  const char* d = std::getenv("OUTPOST_BENCH_DIR");
  return d ? d : "/var/tmp";
}

fs::path bench_dir(const std::string& what) {
  fs::path dir = bench_base() / ("outpost-bench-" + what + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// kB from /proc/<pid>/status.
int64_t proc_status_kb(pid_t pid, const char* field) {
  std::ifstream f("/proc/" + (pid ? std::to_string(pid) : std::string("self")) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) return std::atoll(line.c_str() + std::strlen(field) + 1);
  }
  return 0;
}

void percentiles(benchmark::State& state, std::vector<double> ms, const std::string& prefix) {
  if (ms.empty()) return;
  std::sort(ms.begin(), ms.end());
  state.counters[prefix + "p50_ms"] = ms[ms.size() / 2];
  state.counters[prefix + "p99_ms"] = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  state.counters[prefix + "max_ms"] = ms.back();
}

// The real outpost-hub in a fresh directory; the IAM key its bundle trust holds.
struct HubProcess {
  fs::path dir;
  EcPrivateKey iam = std::move(*EcPrivateKey::generate());
  sync::HubEndpoint endpoint;
  pid_t pid = -1;

  // `database`: hub.yaml's `database:`, when not the SQLite file init writes.
  explicit HubProcess(const std::string& what, const std::string& database = "") : dir(bench_dir(what)) {
    auto root = offline_cache::TrustRoot::create({iam.public_key()}, 1);
    OUTPOST_CHECK(root.has_value(), "trust root");
    OUTPOST_CHECK(write_file_atomic(dir / "trust.json", root->to_json()).has_value(), "write trust");
    auto init = hub::init_hub_dir(dir / "hub", {}, dir / "trust.json");
    OUTPOST_CHECK(init.has_value(), "outpost-hub init");
    auto yaml = read_text_file(init->config);
    std::string y = *yaml;
    y.replace(y.find("127.0.0.1:8443"), 14, "127.0.0.1:0");
    if (!database.empty()) y.replace(y.find("database: hub.db"), 16, "database: " + database);
    // The simulated nodes' keys are software keys: no TPM to open an activation credential.
    y += "activation: off\n";
    OUTPOST_CHECK(write_file_atomic(init->config, y).has_value(), "hub.yaml");
    const std::string port_file = (dir / "port").string(), config = init->config.string();
    const char* argv[] = {OUTPOST_HUB_BIN, "--config", config.c_str(), "--port-file", port_file.c_str(), nullptr};
    setenv("OUTPOST_LOG", "error", 1);
    OUTPOST_CHECK(posix_spawn(&pid, OUTPOST_HUB_BIN, nullptr, nullptr, const_cast<char**>(argv), environ) == 0, "spawn outpost-hub");
    for (int i = 0; i < 200 && !file_exists(port_file); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    auto port = read_text_file(port_file);
    OUTPOST_CHECK(port.has_value(), "outpost-hub did not start");
    endpoint.host = "127.0.0.1";
    endpoint.port = static_cast<uint16_t>(std::stoi(*port));
    endpoint.pin_sha256 = init->pin_sha256;
  }
  // The endpoint with a role's credential (the token `outpost-hub init` wrote).
  sync::HubEndpoint as(const std::string& role) const {
    sync::HubEndpoint e = endpoint;
    auto token = read_text_file(dir / "hub" / (role + ".token"));
    OUTPOST_CHECK(token.has_value(), "the role's token");
    e.bearer_token = token->substr(0, 64);
    return e;
  }
  ~HubProcess() {
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    fs::remove_all(dir);
  }
  int64_t peak_rss_kb() const { return proc_status_kb(pid, "VmHWM:"); }
  // User + system CPU seconds the hub has used.
  double cpu_seconds() const {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14 || i == 15) ticks += std::stod(field);
    }
    return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
};

offline_cache::AuditEntry decision(uint64_t i) {
  offline_cache::AuditEntry e;
  e.kind = offline_cache::RecordKind::decision;
  e.event = "decision";
  e.agent = "agent-07";
  e.bundle_version = 12;
  // Every tenth is a deny (the console's searches find some).
  const bool allow = i % 10 != 0;
  e.detail = std::string(R"({"task":"report","server":"fs","tool":"write_file","allow":)") + (allow ? "true" : "false") +
             R"(,"verdict":")" + (allow ? "allow" : "deny") +
             R"(","rules":["write-allowed"],"args_sha256":"mQ2rYl0cJmGk3m9mE5oXk1bq2q3XzF2oN0ZbV6Jt8yQ","i":)" + std::to_string(i) + "}";
  return e;
}

// A node's log: n records with a checkpoint quoted by `ak` after every `every` (and at the end).
std::unique_ptr<offline_cache::AuditLog> make_log(const fs::path& dir, const testing::SoftAk& ak, uint64_t n, uint64_t every) {
  offline_cache::AuditLogOptions o;
  o.max_bytes = 1ull << 40;
  o.linger = std::chrono::microseconds(2000);
  auto log = offline_cache::AuditLog::open(dir, o);
  OUTPOST_CHECK(log.has_value(), "open the node's log");
  attestation::PcrBank bank;
  bank.values[23] = Bytes(32, 0);
  const attestation::PcrValues pcrs{bank};
  const Bytes pcr_file = attestation::encode_pcrs_tpm2tools(pcrs);
  uint64_t clock = 1000;
  auto checkpoint = [&] {
    auto [seq, head] = (*log)->head();
    auto q = ak.quote(offline_cache::checkpoint_qualifying_data(seq, head), pcrs, {clock += 10, 1, 0, true});
    OUTPOST_CHECK((*log)->append_checkpoint(seq, head, q, pcr_file).has_value(), "checkpoint");
  };
  for (uint64_t i = 1; i <= n; ++i) {
    OUTPOST_CHECK((*log)->append(decision(i)).has_value(), "append");
    if (i % every == 0) checkpoint();
  }
  if (n % every != 0) checkpoint();
  OUTPOST_CHECK((*log)->wait_durable((*log)->last_seq()).has_value(), "durable");
  return std::move(*log);
}

// A node log's frames cut into uploads, each ending in a checkpoint.
std::vector<std::string> upload_batches(const offline_cache::AuditLog& log) {
  std::vector<std::string> batches(1);
  OUTPOST_CHECK(offline_cache::read_audit_frames(log.dir(), 1, log.last_seq(), [&](const offline_cache::AuditFrame& f) {
    batches.back().append(as_chars(f.frame));
    if (f.kind == offline_cache::RecordKind::checkpoint) batches.emplace_back();
    return true;
  }).has_value(), "read frames");
  if (batches.back().empty()) batches.pop_back();
  return batches;
}

void BM_backlog_sync(benchmark::State& state) {
  const uint64_t n = static_cast<uint64_t>(scaled(state.range(0), 20000));
  for (auto _ : state) {
    HubProcess hub("sync");
    testing::SoftAk ak;
    const auto node = testing::soft_identity(ak.pub());
    auto log = make_log(hub.dir / "node-log", ak, n, static_cast<uint64_t>(state.range(1)));
    const uint64_t last = log->last_seq();
    const int64_t rss_before = proc_status_kb(0, "VmRSS:");
    int64_t rss_peak = rss_before;
    sync::SyncSettings s;
    s.hub = hub.endpoint;
    s.idle_poll = std::chrono::milliseconds(20);
    const auto t0 = Clock::now();
    auto client = sync::SyncClient::start(s, node.to_json(), node.node_id, *log, {});
    OUTPOST_CHECK(client.has_value(), "sync start");
    while ((*client)->status().acked_seq < last) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      rss_peak = std::max(rss_peak, proc_status_kb(0, "VmRSS:"));
      if (!(*client)->status().last_error.empty() && Clock::now() - t0 > std::chrono::minutes(5)) {
        state.SkipWithError((*client)->status().last_error.c_str());
        break;
      }
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(secs);
    (*client)->stop();
    state.counters["records"] = static_cast<double>(last);
    state.counters["records_per_s"] = static_cast<double>(last) / secs;
    state.counters["MB_per_s"] = static_cast<double>((*client)->status().uploaded_bytes) / secs / 1e6;
    state.counters["node_rss_growth_MB"] = static_cast<double>(rss_peak - rss_before) / 1024.0;
    state.counters["hub_peak_rss_MB"] = static_cast<double>(hub.peak_rss_kb()) / 1024.0;
    state.counters["hub_cpu_s"] = hub.cpu_seconds();
  }
}

asio::awaitable<void> upload_node(asio::io_context& io, const sync::HubEndpoint& ep, std::shared_ptr<tls::Context> tls,
                                  std::string identity, std::string node_id, const std::vector<std::string>& batches,
                                  std::vector<double>& latencies_ms, int& failures, std::vector<double>* enrol_ms = nullptr) {
  sync::HubConnection c(io.get_executor(), ep, tls);
  sync::HubRequest enrol("POST", "/v1/enroll", std::move(identity));  // named: it lives across the suspension
  const auto connecting = Clock::now();
  auto e = co_await c.request(std::move(enrol));
  if (!e || e->status != 200) {
    ++failures;
    co_return;
  }
  // The TLS handshake and the enrolment.
  if (enrol_ms) enrol_ms->push_back(std::chrono::duration<double, std::milli>(Clock::now() - connecting).count());
  for (const auto& b : batches) {
    const auto t0 = Clock::now();
    sync::HubRequest req("POST", "/v1/nodes/" + node_id + "/records", b, "application/octet-stream");
    req.timeout = std::chrono::minutes(5);
    auto r = co_await c.request(std::move(req));
    if (!r || r->status != 200) {
      ++failures;
      co_return;
    }
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
}

// CPU seconds (user + system) of `pid` and, when `children`, of its children it has waited for.
double cpu_seconds_of(pid_t pid, bool children) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (stat.rfind(')') == std::string::npos) return 0;
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 17 && rest >> field; ++i) {
    if (i == 14 || i == 15 || (children && (i == 16 || i == 17))) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  for (pid_t c; f >> c;) out.push_back(c);
  return out;
}

// A PostgreSQL server: CPU of the postmaster and its processes (live and ended), and their
// memory as proportional set size (shared buffers counted once, not once per process).
double server_cpu_seconds(pid_t postmaster) {
  double s = cpu_seconds_of(postmaster, true);
  for (pid_t c : children_of(postmaster)) s += cpu_seconds_of(c, false);
  return s;
}
int64_t server_pss_kb(pid_t postmaster) {
  auto pss = [](pid_t p) {
    std::ifstream f("/proc/" + std::to_string(p) + "/smaps_rollup");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("Pss:", 0) == 0) return std::atoll(line.c_str() + 4);
    }
    return 0ll;
  };
  int64_t kb = pss(postmaster);
  for (pid_t c : children_of(postmaster)) kb += pss(c);
  return kb;
}

// postgres_two: two hub instances on one database, the nodes split between them.
enum class HubStore { sqlite, postgres, postgres_two };

// The PostgreSQL server a benchmark's hub stores in (fsync on, as in production); false (the
// benchmark skipped) when it cannot start.
bool start_postgres(benchmark::State& state, std::unique_ptr<testing::PostgresServer>& postgres, std::string& database) {
  auto started = testing::PostgresServer::start({.fsync = true, .parent = bench_base()});
  if (!started) {
    state.SkipWithError(("PostgreSQL: " + started.error().message()).c_str());
    return false;
  }
  postgres = std::move(*started);
  OUTPOST_CHECK(postgres->create_database("outpost").has_value(), "create the hub's database");
  database = postgres->uri("outpost");
  return true;
}

void BM_hub_ingest(benchmark::State& state, HubStore store) {
  const int64_t nodes = scaled(state.range(0), 20);
  const uint64_t per_node = static_cast<uint64_t>(scaled(state.range(1), 200));
  for (auto _ : state) {
    // Declared before the hub, so that it stops after it.
    std::unique_ptr<testing::PostgresServer> postgres;
    std::string database;
    if (store != HubStore::sqlite && !start_postgres(state, postgres, database)) break;
    std::vector<std::unique_ptr<HubProcess>> hubs;
    hubs.push_back(std::make_unique<HubProcess>("ingest-a", database));
    if (store == HubStore::postgres_two) hubs.push_back(std::make_unique<HubProcess>("ingest-b", database));
    HubProcess& hub = *hubs.front();
    testing::SoftAk ak;  // one software AK for every simulated node: the hub's work per node is the same
    auto log = make_log(hub.dir / "node-log", ak, per_node - per_node / 100, 99);
    const std::vector<std::string> batches = upload_batches(*log);
    std::vector<attestation::NodeIdentity> ids;
    for (int64_t i = 0; i < nodes; ++i) ids.push_back(testing::soft_identity(ak.pub()));
    std::vector<std::shared_ptr<tls::Context>> tls;  // one per instance: each has a key of its own here
    for (const auto& h : hubs) {
      auto t = sync::HubConnection::make_tls(h->endpoint);
      OUTPOST_CHECK(t.has_value(), "tls");
      tls.push_back(*t);
    }
    asio::io_context io;
    std::vector<double> latencies, enrolments;
    int failures = 0;
    const auto t0 = Clock::now();
    for (size_t i = 0; i < ids.size(); ++i) {
      const size_t at = i % hubs.size();
      asio::co_spawn(io, upload_node(io, hubs[at]->endpoint, tls[at], ids[i].to_json(), ids[i].node_id, batches, latencies, failures,
                                      &enrolments),
                     asio::detached);
    }
    io.run();
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(secs);
    if (failures) state.SkipWithError((std::to_string(failures) + " nodes failed").c_str());
    const double records = static_cast<double>(log->last_seq()) * static_cast<double>(nodes);
    state.counters["records"] = records;
    state.counters["records_per_s"] = records / secs;
    percentiles(state, latencies, "upload_");
    percentiles(state, enrolments, "connect_enrol_");
    double cpu = 0, rss = 0;
    for (const auto& h : hubs) {
      cpu += h->cpu_seconds();
      rss = std::max(rss, static_cast<double>(h->peak_rss_kb()) / 1024.0);
    }
    // SQLite's group commit: uploads and enrolments stored per transaction (one flush each).
    if (store == HubStore::sqlite) {
      auto m = sync::hub_request_blocking(hub.as("operator"), {"GET", "/metrics"});
      if (m && m->status == 200) {
        const double commits = testing::metric_value(m->body, "outpost_hub_group_commits_total");
        if (commits > 0) state.counters["writes_per_commit"] = testing::metric_value(m->body, "outpost_hub_group_commit_items_total") / commits;
      }
    }
    state.counters["hub_peak_rss_MB"] = rss;  // of the largest instance
    state.counters["hub_cpu_s"] = cpu;        // of all instances
    state.counters["instances"] = static_cast<double>(hubs.size());
    if (postgres) {
      state.counters["postgres_cpu_s"] = server_cpu_seconds(postgres->pid());
      state.counters["postgres_pss_MB"] = static_cast<double>(server_pss_kb(postgres->pid())) / 1024.0;
    }
  }
}

// A fleet in steady state: each node already enrolled and connected sends a batch every
// `period`, at a phase of its own, at the times it is due whatever the hub's answers.
struct SteadyRun {
  explicit SteadyRun(asio::io_context& io) : go(io, Clock::time_point::max()) {}
  asio::steady_timer go;  // cancelled when the last node has enrolled: the run starts
  size_t enrolled = 0, nodes = 0;
  Clock::time_point start;
  std::vector<double> latencies_ms;  // from when each batch was due, so a slow hub's queue counts
  Clock::time_point last_answer;
  int failures = 0;
  std::function<void()> on_start;  // when the run starts (the hub's CPU is read from then)
};

asio::awaitable<void> steady_node(asio::io_context& io, const sync::HubEndpoint& ep, std::shared_ptr<tls::Context> tls,
                                  std::string identity, std::string node_id, const std::vector<std::string>& batches,
                                  std::chrono::milliseconds period, std::chrono::milliseconds phase, SteadyRun& run) {
  sync::HubConnection c(io.get_executor(), ep, tls);
  sync::HubRequest enrol("POST", "/v1/enroll", std::move(identity));
  auto e = co_await c.request(std::move(enrol));
  if (!e || e->status != 200) ++run.failures;
  if (++run.enrolled == run.nodes) {
    run.start = Clock::now() + std::chrono::milliseconds(200);
    if (run.on_start) run.on_start();
    run.go.cancel();
  } else {
    boost::system::error_code ignored;
    co_await run.go.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (!e || e->status != 200) co_return;
  asio::steady_timer due(io);
  for (size_t i = 0; i < batches.size(); ++i) {
    const auto at = run.start + phase + period * static_cast<int64_t>(i);
    due.expires_at(at);
    co_await due.async_wait(asio::use_awaitable);
    sync::HubRequest req("POST", "/v1/nodes/" + node_id + "/records", batches[i], "application/octet-stream");
    req.timeout = std::chrono::minutes(5);
    auto r = co_await c.request(std::move(req));
    if (!r || r->status != 200) {
      ++run.failures;
      co_return;
    }
    run.last_answer = std::max(run.last_answer, Clock::now());
    run.latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - at).count());
  }
}

// BM_hub_ingest_steady (above): 4 batches a node.
void BM_hub_ingest_steady(benchmark::State& state, HubStore store) {
  const int64_t nodes = scaled(state.range(0), 20);
  const double offered = static_cast<double>(scaled(state.range(1), 2000));  // small: a batch a second
  const auto period = std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(nodes) * 100.0 / offered * 1000.0));
  for (auto _ : state) {
    std::unique_ptr<testing::PostgresServer> postgres;
    std::string database;
    if (store != HubStore::sqlite && !start_postgres(state, postgres, database)) break;
    HubProcess hub("steady", database);
    testing::SoftAk ak;
    auto log = make_log(hub.dir / "node-log", ak, 396, 99);
    const std::vector<std::string> batches = upload_batches(*log);
    auto tls = sync::HubConnection::make_tls(hub.endpoint);
    OUTPOST_CHECK(tls.has_value(), "tls");
    asio::io_context io;
    SteadyRun run(io);
    run.nodes = static_cast<size_t>(nodes);
    std::mt19937_64 rng(7);
    std::uniform_int_distribution<int64_t> phase_ms(0, period.count() - 1);
    for (int64_t i = 0; i < nodes; ++i) {
      auto id = testing::soft_identity(ak.pub());
      asio::co_spawn(io, steady_node(io, hub.endpoint, *tls, id.to_json(), id.node_id, batches, period,
                                     std::chrono::milliseconds(phase_ms(rng)), run),
                     asio::detached);
    }
    double cpu_at_start = 0;
    run.on_start = [&] { cpu_at_start = hub.cpu_seconds(); };
    io.run();
    if (run.latencies_ms.empty()) {
      state.SkipWithError("no upload was answered");
      break;
    }
    const double secs = std::chrono::duration<double>(run.last_answer - run.start).count();
    state.SetIterationTime(secs);
    if (run.failures) state.SkipWithError((std::to_string(run.failures) + " uploads failed").c_str());
    const double records = static_cast<double>(run.latencies_ms.size()) * 100.0;
    state.counters["offered_records_per_s"] = offered;
    state.counters["records_per_s"] = records / secs;
    percentiles(state, run.latencies_ms, "upload_");
    state.counters["hub_cpu_s"] = hub.cpu_seconds() - cpu_at_start;  // the uploads' part: enrolments came before
  }
}

// The console at N nodes, each with a batch of 100 records (a tenth of them denies): time to
// answer the fleet page, a node's page, the rollout and a search for denies, over one
// keep-alive connection as an operator (p50/p99 of 20 loads each; page sizes).
void BM_console(benchmark::State& state) {
  const int64_t nodes = scaled(state.range(0), 20);
  for (auto _ : state) {
    HubProcess hub("console");
    testing::SoftAk ak;
    auto log = make_log(hub.dir / "node-log", ak, 99, 99);
    std::string batch;
    OUTPOST_CHECK(offline_cache::read_audit_frames(log->dir(), 1, log->last_seq(), [&](const offline_cache::AuditFrame& f) {
      batch.append(as_chars(f.frame));
      return true;
    }).has_value(), "read frames");
    std::vector<attestation::NodeIdentity> ids;
    for (int64_t i = 0; i < nodes; ++i) ids.push_back(testing::soft_identity(ak.pub()));
    auto tls = sync::HubConnection::make_tls(hub.endpoint);
    OUTPOST_CHECK(tls.has_value(), "tls");
    {
      asio::io_context io;
      std::vector<double> ignored;
      int failures = 0;
      const std::vector<std::string> batches{batch};  // outlives the coroutines, which hold a reference
      for (const auto& id : ids) {
        asio::co_spawn(io, upload_node(io, hub.endpoint, *tls, id.to_json(), id.node_id, batches, ignored, failures), asio::detached);
      }
      io.run();
      OUTPOST_CHECK(failures == 0, "seed the fleet");
    }
    auto v1 = testing::sign_bundle(testing::make_bundle({.version = 1}), {&hub.iam});
    OUTPOST_CHECK(sync::hub_request_blocking(hub.as("iam"), {"POST", "/v1/bundles", std::string(as_chars(v1)), "application/octet-stream"})
                      .has_value(), "publish");
    const std::vector<std::pair<std::string, std::string>> pages = {
        {"fleet", "/console"}, {"node", "/console/nodes/" + ids.front().node_id}, {"bundles", "/console/bundles"},
        {"denies", "/console/decisions?verdict=deny"}};
    asio::io_context io;
    double total = 0;
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      sync::HubConnection c(io.get_executor(), hub.as("operator"), *tls);
      for (const auto& [name, path] : pages) {
        std::vector<double> ms;
        size_t bytes = 0;
        for (int i = 0; i < 21; ++i) {
          const auto t0 = Clock::now();
          auto r = co_await c.request({"GET", path});
          OUTPOST_CHECK(r.has_value() && r->status == 200, "console page");
          if (i == 0) continue;  // the first warms the bundle cache
          ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
          bytes = r->body.size();
        }
        for (double x : ms) total += x / 1000.0;
        percentiles(state, ms, name + "_");
        state.counters[name + "_KB"] = static_cast<double>(bytes) / 1024.0;
      }
    }, asio::detached);
    io.run();
    state.SetIterationTime(total);
    state.counters["nodes"] = static_cast<double>(nodes);
  }
}

void BM_publish_latency(benchmark::State& state) {
  const int64_t pollers = scaled(state.range(0), std::min<int64_t>(state.range(0), 10));
  for (auto _ : state) {
    HubProcess hub("publish");
    auto tls = sync::HubConnection::make_tls(hub.endpoint);
    OUTPOST_CHECK(tls.has_value(), "tls");
    auto v1 = testing::sign_bundle(testing::make_bundle({.version = 1}), {&hub.iam});
    auto v2 = testing::sign_bundle(testing::make_bundle({.version = 2}), {&hub.iam});
    const sync::HubEndpoint iam = hub.as("iam"), operator_ = hub.as("operator");
    auto first = sync::hub_request_blocking(iam, {"POST", "/v1/bundles", std::string(as_chars(v1)), "application/octet-stream"});
    OUTPOST_CHECK(first.has_value() && first->status == 200, "publish v1");
    auto got = sync::hub_request_blocking(iam, {"GET", "/v1/bundle"});
    const std::string etag = got->header("etag");
    asio::io_context io;
    std::vector<double> latencies;
    int connected = 0, failures = 0;
    Clock::time_point published{};
    for (int64_t i = 0; i < pollers; ++i) {
      asio::co_spawn(io, [&]() -> asio::awaitable<void> {
        sync::HubConnection c(io.get_executor(), operator_, *tls);
        auto hello = co_await c.request({"GET", "/v1/nodes"});  // connected and handshaken before the poll
        if (!hello) {
          ++failures;
          co_return;
        }
        ++connected;
        sync::HubRequest req("GET", "/v1/bundle?wait=55");
        req.headers["If-None-Match"] = etag;
        req.timeout = std::chrono::seconds(70);
        auto r = co_await c.request(std::move(req));
        if (!r || r->status != 200) {
          ++failures;
          co_return;
        }
        latencies.push_back(std::chrono::duration<double, std::milli>(Clock::now() - published).count());
      }, asio::detached);
    }
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      asio::steady_timer t(io);
      while (connected + failures < pollers) {
        t.expires_after(std::chrono::milliseconds(20));
        co_await t.async_wait(asio::use_awaitable);
      }
      t.expires_after(std::chrono::milliseconds(300));  // every poll request has reached the hub
      co_await t.async_wait(asio::use_awaitable);
      sync::HubConnection c(io.get_executor(), iam, *tls);
      published = Clock::now();
      auto r = co_await c.request({"POST", "/v1/bundles", std::string(as_chars(v2)), "application/octet-stream"});
      if (!r || r->status != 200) ++failures;
    }, asio::detached);
    io.run();
    if (failures) state.SkipWithError((std::to_string(failures) + " pollers failed").c_str());
    state.SetIterationTime(latencies.empty() ? 0 : *std::max_element(latencies.begin(), latencies.end()) / 1000.0);
    state.counters["pollers"] = static_cast<double>(pollers);
    percentiles(state, latencies, "");
    state.counters["hub_peak_rss_MB"] = static_cast<double>(hub.peak_rss_kb()) / 1024.0;
  }
}

// Enough descriptors for 1,000 connections on each side.
[[maybe_unused]] const bool kFiles = [] {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
  return true;
}();

}  // namespace

BENCHMARK(BM_backlog_sync)->Args({100000, 100})->Args({100000, 1000})->Args({1000000, 1000})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_hub_ingest, sqlite, HubStore::sqlite)->Args({1000, 200})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_hub_ingest, postgres, HubStore::postgres)->Args({1000, 200})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_hub_ingest, postgres_two, HubStore::postgres_two)->Args({1000, 200})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_hub_ingest_steady, sqlite, HubStore::sqlite)->Args({1000, 20000})->Args({1000, 30000})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_hub_ingest_steady, postgres, HubStore::postgres)->Args({1000, 20000})->Args({1000, 30000})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_console)->Arg(1000)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_publish_latency)->Arg(1)->Arg(100)->Arg(1000)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
