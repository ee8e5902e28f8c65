// Per-operation TPM latency through outpost's seam, beside the same operations done with
// tpm2-tools (one process per operation, as an operator's script would run them) in the same
// run against the same swtpm. Needs OUTPOST_TCTI (scripts/bench.sh starts a swtpm).
//
// Each benchmark times only the operation (manual time) and reports p50/p99 in microseconds
// as counters beside Google Benchmark's mean. swtpm serves one client at a time, so the
// outpost benchmarks open their own connection and close it before the tools run.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/boards/board.h"
#include "outpost/firmware_hooks/runtime_log.h"

extern char** environ;

namespace {

using namespace outpost;
using namespace outpost::attestation;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kCounter = 0x01000100;
constexpr uint32_t kBenchRuntimePcr = 16;

struct Env {
  std::string tcti;
  boards::BoardProfile board;
  std::filesystem::path dir;
  NodeIdentity id;
  KeyBlob blob;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_tpm: %s\n", what.c_str());
  std::exit(1);
}

Env& env() {
  static Env e = [] {
    Env v;
    const char* t = std::getenv("OUTPOST_TCTI");
    if (t == nullptr) die("OUTPOST_TCTI is not set (run scripts/bench.sh)");
    v.tcti = t;
    v.board = *boards::load_board("sim");
    char tmpl[] = "/tmp/outpost-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) die("mkdtemp");
    v.dir = tmpl;
    auto tpm = Tpm::connect(v.tcti);
    if (!tpm) die(tpm.error().message());
    ProvisionOptions opts{v.board.name, v.board.trust_domain,
                          {v.board.srk_handle, v.board.ek_handle, v.board.ak_handle}};
    auto p = provision_node(**tpm, v.dir / "state", opts);
    if (!p) die(p.error().message());
    v.id = p->identity;
    auto blob = (*tpm)->create_signing_key(v.board.srk_handle);
    if (!blob) die(blob.error().message());
    v.blob = *blob;
    if (auto c = (*tpm)->ensure_counter(kCounter); !c) die(c.error().message());
    // Files the tools read: the key blob halves, a digest, a nonce.
    auto w = [&](const char* name, ByteView data) {
      if (!write_file_atomic(v.dir / name, data)) die(std::string("write ") + name);
    };
    w("key.pub", v.blob.public_area);
    w("key.priv", v.blob.private_area);
    Digest d = sha256(std::string_view("benchmark"));
    w("digest.bin", d);
    return v;
  }();
  return e;
}

void run(const std::vector<std::string>& argv) {
  std::vector<char*> a;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  if (posix_spawnp(&pid, a[0], &fa, nullptr, a.data(), environ) != 0) die("cannot start " + argv[0]);
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die(argv[0] + " failed");
}

template <class Op, class Cleanup>
void timed_tool(benchmark::State& state, Op op, Cleanup cleanup);

template <class Op>
void timed(benchmark::State& state, Op op) {
  timed_tool(state, op, [] {});
}

std::unique_ptr<Tpm> connect() {
  auto tpm = Tpm::connect(env().tcti);
  if (!tpm) die(tpm.error().message());
  return std::move(*tpm);
}

template <class T>
const T& must(const Result<T>& r) {
  if (!r) die(r.error().message());
  return *r;
}

// ---- outpost ----

void BM_outpost_create_agent_key(benchmark::State& state) {
  auto tpm = connect();
  timed(state, [&] { must(tpm->create_signing_key(env().board.srk_handle)); });
}
void BM_outpost_load_flush(benchmark::State& state) {
  auto tpm = connect();
  timed(state, [&] { auto k = tpm->load(env().board.srk_handle, env().blob); must(k); });
}
void BM_outpost_sign(benchmark::State& state) {
  auto tpm = connect();
  auto key = tpm->load(env().board.srk_handle, env().blob);
  Digest d = sha256(std::string_view("benchmark"));
  timed(state, [&] { must(tpm->sign(must(key), d)); });
}
void BM_outpost_certify(benchmark::State& state) {
  auto tpm = connect();
  auto key = tpm->load(env().board.srk_handle, env().blob);
  Digest q = agent_qualifying_data("bench", sha256(std::string_view("binary")));
  timed(state, [&] { must(tpm->certify(must(key), env().board.ak_handle, q)); });
}
void BM_outpost_quote(benchmark::State& state) {
  auto tpm = connect();
  auto sel = must(parse_pcr_selection(env().board.quote_selection()));
  Bytes nonce(20, 0x5a);
  timed(state, [&] { must(tpm->quote(env().board.ak_handle, sel, nonce)); });
}
void BM_outpost_nv_increment(benchmark::State& state) {
  auto tpm = connect();
  timed(state, [&] { must(tpm->increment_counter(kCounter)); });
}
void BM_outpost_read_clock(benchmark::State& state) {
  auto tpm = connect();
  timed(state, [&] { must(tpm->read_clock()); });
}

// The runtime measurement log: one new measurement (flock, re-read and parse the log, append,
// fdatasync, PCR_Extend), and one already in the log (no TPM command). The log grows by one
// entry per iteration, as it would with that many distinct agents.
void BM_outpost_runtime_measure(benchmark::State& state) {
  auto tpm = connect();
  // One log for the whole run, on PCR 16 (the debug PCR), which nothing else here extends: the
  // fixture's PCR 23 carries other tests' extends, and a log that does not explain its PCR is
  // refused.
  const auto log = env().dir / "runtime.log";
  auto opened = firmware_hooks::RuntimeLogWriter::open(log, *tpm, kBenchRuntimePcr);
  if (!opened) die(opened.error().message());
  auto& w = *opened;
  static uint64_t i = 1000;  // new names each run of the benchmark
  timed(state, [&] {
    must(w->measure(firmware_hooks::runtime_kind::agent, "agent-" + std::to_string(i++), sha256(std::string_view("b"))));
  });
}
void BM_outpost_runtime_measure_unchanged(benchmark::State& state) {
  auto tpm = connect();
  const auto log = env().dir / "runtime.log";
  auto opened = firmware_hooks::RuntimeLogWriter::open(log, *tpm, kBenchRuntimePcr);
  if (!opened) die(opened.error().message());
  auto& w = *opened;
  for (int i = 0; i < 20; ++i) {
    must(w->measure(firmware_hooks::runtime_kind::agent, "agent-" + std::to_string(i), sha256(std::string_view("b"))));
  }
  timed(state, [&] { must(w->measure(firmware_hooks::runtime_kind::agent, "agent-7", sha256(std::string_view("b")))); });
}
// A responder's check of a 1,000-entry log against a quoted value (no TPM).
void BM_verify_runtime_log_1000(benchmark::State& state) {
  firmware_hooks::RuntimeLog log;
  std::string text = firmware_hooks::format_runtime_header(log.header) + "\n";
  for (uint64_t i = 1; i <= 1000; ++i) {
    firmware_hooks::RuntimeMeasurement m;
    m.seq = i;
    m.kind = "agent";
    m.name = "agent-" + std::to_string(i);
    m.digest = sha256(m.name);
    m.template_hash = firmware_hooks::runtime_template_hash(m.kind, m.name, m.digest);
    m.time = "2026-11-28T00:00:00Z";
    text += firmware_hooks::format_runtime_entry(m) + "\n";
  }
  auto parsed = must(firmware_hooks::parse_runtime_log(text));
  Digest v = firmware_hooks::replay_runtime_log(parsed);
  PcrValues quoted{{hash_alg::sha256, {{23u, Bytes(v.begin(), v.end())}}}};
  timed(state, [&] {
    auto log2 = must(firmware_hooks::parse_runtime_log(text));
    auto verdict = firmware_hooks::verify_runtime_log(log2, quoted, std::nullopt, {});
    if (!verdict.ok()) die("runtime log does not verify");
  });
}

// ---- tpm2-tools, one process per operation ----

std::string path(const char* name) { return (env().dir / name).string(); }
void flush_transients() { run({"tpm2_flushcontext", "-T", env().tcti, "-t"}); }

// Runs `op` timed, then `cleanup` untimed; reports p50 and p99.
template <class Op, class Cleanup>
void timed_tool(benchmark::State& state, Op op, Cleanup cleanup) {
  std::vector<double> us;
  for (auto _ : state) {
    auto t0 = Clock::now();
    op();
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(s);
    us.push_back(s * 1e6);
    cleanup();
  }
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
}

void BM_tools_create_agent_key(benchmark::State& state) {
  const std::string& t = env().tcti;
  timed_tool(state, [&] {
    run({"tpm2_create", "-T", t, "-C", hex32(env().board.srk_handle), "-G", "ecc256:ecdsa-sha256", "-u",
         path("t.pub"), "-r", path("t.priv")});
  }, flush_transients);
}
void BM_tools_load_flush(benchmark::State& state) {
  const std::string& t = env().tcti;
  timed_tool(state, [&] {
    run({"tpm2_load", "-T", t, "-C", hex32(env().board.srk_handle), "-u", path("key.pub"), "-r", path("key.priv"),
         "-c", path("key.ctx")});
    run({"tpm2_flushcontext", "-T", t, "-t"});
  }, [] {});
}
void load_tool_key() {
  run({"tpm2_load", "-T", env().tcti, "-C", hex32(env().board.srk_handle), "-u", path("key.pub"), "-r",
       path("key.priv"), "-c", path("key.ctx")});
  flush_transients();  // key.ctx is a saved context; each tool loads it again
}
void BM_tools_sign(benchmark::State& state) {
  load_tool_key();
  timed_tool(state, [&] {
    run({"tpm2_sign", "-T", env().tcti, "-c", path("key.ctx"), "-g", "sha256", "-d", "-o", path("sig.bin"),
         path("digest.bin")});
  }, flush_transients);
}
void BM_tools_certify(benchmark::State& state) {
  load_tool_key();
  timed_tool(state, [&] {
    run({"tpm2_certify", "-T", env().tcti, "-c", path("key.ctx"), "-C", hex32(env().board.ak_handle), "-g", "sha256",
         "-o", path("cert.attest"), "-s", path("cert.sig")});
  }, flush_transients);
}
void BM_tools_quote(benchmark::State& state) {
  timed_tool(state, [&] {
    run({"tpm2_quote", "-T", env().tcti, "-c", hex32(env().board.ak_handle), "-l", env().board.quote_selection(), "-q",
         "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a", "-m", path("q.attest"), "-s", path("q.sig"), "-o",
         path("q.pcrs")});
  }, flush_transients);
}
void BM_tools_nv_increment(benchmark::State& state) {
  timed_tool(state, [&] { run({"tpm2_nvincrement", "-T", env().tcti, "-C", hex32(kCounter), hex32(kCounter)}); }, [] {});
}
void BM_tools_pcr_extend(benchmark::State& state) {
  timed_tool(state, [&] {
    run({"tpm2_pcrextend", "-T", env().tcti,
         "23:sha256=0000000000000000000000000000000000000000000000000000000000000001"});
  }, [] {});
}
void BM_tools_read_clock(benchmark::State& state) {
  timed_tool(state, [&] { run({"tpm2_readclock", "-T", env().tcti}); }, [] {});
}

int iterations(int dflt) {
  const char* s = std::getenv("OUTPOST_BENCH_ITERATIONS");
  return s ? std::max(1, std::atoi(s)) : dflt;
}

#define OUTPOST_BENCH(fn, n) BENCHMARK(fn)->UseManualTime()->Iterations(iterations(n))->Unit(benchmark::kMicrosecond)
OUTPOST_BENCH(BM_outpost_create_agent_key, 200);
OUTPOST_BENCH(BM_tools_create_agent_key, 50);
OUTPOST_BENCH(BM_outpost_load_flush, 200);
OUTPOST_BENCH(BM_tools_load_flush, 50);
OUTPOST_BENCH(BM_outpost_sign, 200);
OUTPOST_BENCH(BM_tools_sign, 50);
OUTPOST_BENCH(BM_outpost_certify, 200);
OUTPOST_BENCH(BM_tools_certify, 50);
OUTPOST_BENCH(BM_outpost_quote, 200);
OUTPOST_BENCH(BM_tools_quote, 50);
OUTPOST_BENCH(BM_outpost_nv_increment, 200);
OUTPOST_BENCH(BM_tools_nv_increment, 50);
OUTPOST_BENCH(BM_outpost_read_clock, 200);
OUTPOST_BENCH(BM_tools_read_clock, 50);
OUTPOST_BENCH(BM_outpost_runtime_measure, 200);
OUTPOST_BENCH(BM_tools_pcr_extend, 50);
OUTPOST_BENCH(BM_outpost_runtime_measure_unchanged, 200);
OUTPOST_BENCH(BM_verify_runtime_log_1000, 50);

}  // namespace

int main(int argc, char** argv) {
  outpost::log::configure(outpost::log::Level::warn, outpost::log::Format::human);
  outpost::log::configure_from_env();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
