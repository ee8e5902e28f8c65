// What the agent sandbox costs at launch: spawning /bin/true plain, under Landlock, and fully
// isolated (namespaces, the allowlisted mount view, the agent's uid with no capabilities,
// Landlock and seccomp), from clone3 to the reaped exit; and building the pieces in the parent.
// Needs root (isolation does). Agents launch rarely, so this is a budget check, not a hot path.
#include <sys/wait.h>
#include <unistd.h>

#include <benchmark/benchmark.h>
#include <filesystem>
#include <vector>

#include "sandbox/isolation.h"
#include "sandbox/sandbox.h"

namespace fs = std::filesystem;
using namespace outpost::sandbox;

namespace {

const std::vector<fs::path> kSystem = {"/usr", "/bin", "/lib", "/lib64", "/etc"};

fs::path scratch_root() {
  static const fs::path root = [] {
    fs::path p = fs::temp_directory_path() / ("outpost-bench-sandbox-" + std::to_string(::getpid()));
    fs::create_directories(p / "root");
    fs::create_directories(p / "work");
    return p;
  }();
  return root;
}

IsolationPolicy isolation_policy() {
  IsolationPolicy ip;
  ip.uid = ip.gid = 1900000999;
  ip.root = scratch_root() / "root";
  ip.read_only = kSystem;
  ip.read_write = {scratch_root() / "work"};
  ip.devices = {"/dev/null", "/dev/urandom"};
  return ip;
}

void spawn_and_reap(benchmark::State& state, const Ruleset* rs, const Isolation* iso) {
  SpawnSpec spec;
  spec.argv = {"/bin/true"};
  spec.env = {"PATH=/usr/bin:/bin"};
  spec.sandbox = rs;
  spec.isolation = iso;
  spec.die_with_parent = false;
  for (auto _ : state) {
    auto child = spawn(spec);
    if (!child) {
      state.SkipWithError(child.error().message().c_str());
      return;
    }
    int status = 0;
    ::waitpid(child->pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      state.SkipWithError("/bin/true failed");
      return;
    }
  }
}

void BM_spawn_plain(benchmark::State& state) { spawn_and_reap(state, nullptr, nullptr); }

void BM_spawn_landlock(benchmark::State& state) {
  SandboxPolicy p;
  p.read_only = kSystem;
  auto rs = Ruleset::prepare(p);
  if (!rs) return state.SkipWithError(rs.error().message().c_str());
  spawn_and_reap(state, &*rs, nullptr);
}

void BM_spawn_isolated(benchmark::State& state) {
  if (::geteuid() != 0) return state.SkipWithError("isolation needs root");
  SandboxPolicy p;
  p.read_only = kSystem;
  p.read_write = {scratch_root() / "work"};
  auto rs = Ruleset::prepare(p);
  auto iso = Isolation::prepare(isolation_policy());
  if (!rs || !iso) return state.SkipWithError("prepare failed");
  spawn_and_reap(state, &*rs, &*iso);
}

void BM_prepare_isolation(benchmark::State& state) {
  const IsolationPolicy ip = isolation_policy();
  for (auto _ : state) {
    auto iso = Isolation::prepare(ip);
    benchmark::DoNotOptimize(iso);
  }
}

void BM_build_syscall_filter(benchmark::State& state) {
  for (auto _ : state) {
    auto f = SyscallFilter::build(SyscallFilterPolicy{state.range(0) != 0});
    benchmark::DoNotOptimize(f);
  }
}

}  // namespace

BENCHMARK(BM_spawn_plain)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_spawn_landlock)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_spawn_isolated)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_prepare_isolation)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_build_syscall_filter)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::error_code ec;
  fs::remove_all(scratch_root(), ec);
  return 0;
}
