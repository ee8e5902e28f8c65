// Durable audit appends (offline-cache/audit_log.h) beside the disk's raw fsync rate, measured in
// the same run on the same filesystem ($OUTPOST_BENCH_DIR, default /var/tmp).
//
//   BM_raw_fdatasync             write 256 bytes + fdatasync, one at a time: the disk's floor
//   BM_durable_writers/T         T threads, each append_durable() in a loop (a caller that waits
//                                for every record): records/s and commit latency p50/p99
//   BM_pipelined/N/R             one producer append()s N records, at R per second (0: as fast
//                                as it can), while a waiter samples commit latency (append ->
//                                durable) every 64th: the group-commit throughput a busy broker
//                                sees, and the latency at a given load
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "outpost/offline_cache/audit_log.h"

namespace {

using namespace outpost;
using namespace outpost::offline_cache;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path bench_dir() {
  const char* d = std::getenv("OUTPOST_BENCH_DIR");
  fs::path base = d ? d : "/var/tmp";
  fs::path dir = base / ("outpost-bench-audit-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

AuditEntry decision(uint64_t i) {
  AuditEntry e;
  e.kind = RecordKind::decision;
  e.event = "decision";
  e.agent = "agent-07";
  e.bundle_version = 12;
  // About the size of a real decision record's detail.
  e.detail = R"({"task":"report","server":"fs","tool":"write_file","allow":true,"verdict":"allow",)"
             R"("rules":["write-allowed"],"args_sha256":"mQ2rYl0cJmGk3m9mE5oXk1bq2q3XzF2oN0ZbV6Jt8yQ","i":)" +
             std::to_string(i) + "}";
  return e;
}

void percentiles(benchmark::State& state, std::vector<double>& us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
}

void BM_raw_fdatasync(benchmark::State& state) {
  const fs::path dir = bench_dir();
  int fd = ::open((dir / "raw").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  std::string rec(256, 'r');
  std::vector<double> us;
  for (auto _ : state) {
    auto t0 = Clock::now();
    if (::write(fd, rec.data(), rec.size()) < 0 || ::fdatasync(fd) != 0) state.SkipWithError("write/fdatasync failed");
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(s);
    us.push_back(s * 1e6);
  }
  ::close(fd);
  percentiles(state, us);
  state.counters["syncs_per_s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  fs::remove_all(dir);
}

void BM_durable_writers(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const uint64_t per_thread = 20000 / static_cast<uint64_t>(threads) + 50;
  for (auto _ : state) {
    const fs::path dir = bench_dir();
    auto log = AuditLog::open(dir, AuditLogOptions{});
    if (!log) {
      state.SkipWithError(log.error().message().c_str());
      return;
    }
    std::vector<std::vector<double>> lat(static_cast<size_t>(threads));
    auto t0 = Clock::now();
    std::vector<std::thread> ws;
    for (int t = 0; t < threads; ++t) {
      ws.emplace_back([&, t] {
        for (uint64_t i = 0; i < per_thread; ++i) {
          auto a = Clock::now();
          if (!(*log)->append_durable(decision(i))) return;
          lat[static_cast<size_t>(t)].push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
        }
      });
    }
    for (auto& w : ws) w.join();
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(s);
    std::vector<double> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    percentiles(state, all);
    state.counters["records_per_s"] = static_cast<double>(all.size()) / s;
    log->reset();
    fs::remove_all(dir);
  }
}

// range(0) records; range(1) records per second offered (0: as fast as the producer can).
void BM_pipelined(benchmark::State& state) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  const double rate = static_cast<double>(state.range(1));
  for (auto _ : state) {
    const fs::path dir = bench_dir();
    auto log = AuditLog::open(dir, AuditLogOptions{8ull << 20, 1ull << 30, {}});
    if (!log) {
      state.SkipWithError(log.error().message().c_str());
      return;
    }
    // Sampled (seq, append time) for the waiter.
    std::mutex mu;
    std::vector<std::pair<uint64_t, Clock::time_point>> samples;
    std::atomic<bool> done{false};
    std::vector<double> lat;
    std::thread waiter([&] {
      size_t next = 0;
      for (;;) {
        std::pair<uint64_t, Clock::time_point> s{0, {}};
        {
          std::lock_guard l(mu);
          if (next < samples.size()) s = samples[next++];
        }
        if (s.first == 0) {
          if (done) {
            std::lock_guard l(mu);
            if (next >= samples.size()) break;
            continue;
          }
          std::this_thread::yield();
          continue;
        }
        if (!(*log)->wait_durable(s.first)) break;
        lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s.second).count());
      }
    });
    auto t0 = Clock::now();
    uint64_t last = 0;
    for (uint64_t i = 0; i < n; ++i) {
      if (rate > 0 && i % 256 == 0) std::this_thread::sleep_until(t0 + std::chrono::duration<double>(i / rate));
      auto a = Clock::now();
      auto seq = (*log)->append(decision(i));
      if (!seq) {
        state.SkipWithError(seq.error().message().c_str());
        break;
      }
      last = *seq;
      if (i % 64 == 0) {
        std::lock_guard l(mu);
        samples.emplace_back(*seq, a);
      }
    }
    (void)(*log)->wait_durable(last);
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    done = true;
    waiter.join();
    state.SetIterationTime(s);
    percentiles(state, lat);
    state.counters["records_per_s"] = static_cast<double>(n) / s;
    state.counters["disk_MB"] = static_cast<double>((*log)->disk_bytes()) / 1e6;
    log->reset();
    fs::remove_all(dir);
  }
}

int iterations(int dflt) {
  const char* s = std::getenv("OUTPOST_BENCH_ITERATIONS");
  return s ? std::max(1, std::atoi(s)) : dflt;
}

BENCHMARK(BM_raw_fdatasync)->UseManualTime()->Iterations(iterations(500))->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_durable_writers)->Arg(1)->Arg(16)->Arg(64)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_pipelined)->Args({200000, 0})->Args({1000000, 0})->Args({300000, 100000})->Args({300000, 50000})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
