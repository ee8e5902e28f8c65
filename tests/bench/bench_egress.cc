// The egress proxy's cost (runtime/egress/proxy.h), in one run beside the direct path: TCP
// connection set-up to an echo server, direct vs through the proxy (CONNECT, the policy's
// decisions, the ClientHello check, the upstream connect, the first byte back), as p50/p99;
// a bulk transfer (1 GiB by default, OUTPOST_BENCH_BYTES) direct vs tunnelled; and the CPU the
// proxy's event-loop thread spends per connection. In process on the host's loopback (no agent
// namespace: that costs nothing per connection); decision records go to memory, so the
// durable record's fdatasync (bench_audit) comes on top when audit.durable_decisions is on.
// And the DNS stub: a lookup's REFUSED round trip beside a query to a port nobody listens on
// (what a resolver meets in a namespace without the stub), and the answer's own cost.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <benchmark/benchmark.h>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "egress/client_hello.h"
#include "egress/dns_stub.h"
#include "egress/proxy.h"
#include "policy/compiler.h"
#include "policy/engine.h"

using namespace outpost;
using Clock = std::chrono::steady_clock;

namespace {

int listen_loopback(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(fd, 512);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int connect_to(uint32_t addr, uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) std::abort();
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}
int connect_loopback(uint16_t port) { return connect_to(INADDR_LOOPBACK, port); }

// A link of a fixed rate: a veth pair to a network namespace of the benchmark's own, shaped by
// tc's token bucket, with the sink behind it at 10.213.0.2. Each link benchmark sets the rate
// it measures (set_rate): 1 and 10 Gbit/s, and OUTPOST_BENCH_LINK_MBIT if set.
// Both paths cross it once: the proxy's upstream leg, or the client directly. Needs root and
// iproute2; skipped (state.SkipWithError) without them.
constexpr uint32_t kLinkSink = (10u << 24) | (213u << 16) | 2u;
struct Link {
  bool ok = false;
  std::string rate;
  int listen_fd = -1;
  Link() {
    rate = "1gbit";
    const std::string setup =
        "ip netns del outpost-bench 2>/dev/null; ip link del obench0 2>/dev/null; "
        "ip netns add outpost-bench && ip link add obench0 type veth peer name obench1 && "
        "ip link set obench1 netns outpost-bench && ip addr add 10.213.0.1/30 dev obench0 && ip link set obench0 up && "
        "ip -n outpost-bench addr add 10.213.0.2/30 dev obench1 && ip -n outpost-bench link set obench1 up && "
        "ip -n outpost-bench link set lo up && "
        "tc qdisc add dev obench0 root tbf rate " + rate + " burst 512kb latency 20ms";
    if (std::system(setup.c_str()) != 0) return;
    // The sink's listener, made in the namespace by a thread that moves there alone.
    std::thread([this] {
      int ns = ::open("/run/netns/outpost-bench", O_RDONLY | O_CLOEXEC);
      if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) return;
      ::close(ns);
      listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(kLinkSink);
      if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd, 64) != 0) listen_fd = -1;
    }).join();
    ok = listen_fd >= 0;
  }
  bool set_rate(const std::string& r) {
    if (r == rate) return true;
    const std::string change = "tc qdisc change dev obench0 root tbf rate " + r + " burst 512kb latency 20ms";
    if (std::system(change.c_str()) != 0) return false;
    rate = r;
    return true;
  }
  ~Link() { (void)std::system("ip netns del outpost-bench 2>/dev/null; ip link del obench0 2>/dev/null"); }
};

void send_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0) std::abort();
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void read_exactly(int fd, size_t n) {
  char buf[65536];
  while (n > 0) {
    ssize_t r = ::recv(fd, buf, std::min(n, sizeof buf), 0);
    if (r <= 0) std::abort();
    n -= static_cast<size_t>(r);
  }
}

void read_head(int fd) {
  std::string s;
  char c;
  while (s.size() < 4 || s.compare(s.size() - 4, 4, "\r\n\r\n") != 0) {
    if (::recv(fd, &c, 1, 0) != 1) std::abort();
    s += c;
  }
  if (s.compare(0, 12, "HTTP/1.1 200") != 0) std::abort();
}

// A server thread per connection: echo (first bytes back) or sink (reads to EOF, then one byte).
struct Server {
  uint16_t port = 0;
  int fd;
  bool echo;
  std::atomic<bool> stop{false};
  std::thread thread;
  explicit Server(bool e, int listen_fd = -1) : fd(listen_fd >= 0 ? listen_fd : listen_loopback(port)), echo(e) {
    if (listen_fd >= 0) {
      sockaddr_in a{};
      socklen_t len = sizeof a;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
      port = ntohs(a.sin_port);
    }
    thread = std::thread([this] {
      while (!stop) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        std::thread([this, c] {
          std::vector<char> buf(echo ? (64 << 10) : (1 << 20));
          for (;;) {
            ssize_t n = ::recv(c, buf.data(), buf.size(), 0);
            if (n <= 0) break;
            if (echo) send_all(c, buf.data(), static_cast<size_t>(n));
          }
          if (!echo) send_all(c, "k", 1);
          ::close(c);
        }).detach();
      }
    });
  }
  ~Server() {
    stop = true;
    thread.join();
    ::close(fd);
  }
};

struct Rig {
  Link link;
  Server echo{true}, sink{false};
  std::unique_ptr<Server> far_sink = link.ok ? std::make_unique<Server>(false, link.listen_fd) : nullptr;
  std::shared_ptr<const policy::Engine> engine;
  std::unique_ptr<egress::Proxy> proxy;
  uint16_t port = 0;
  uint16_t dns_port = 0;  // the stub's socket, as sandbox/network.cc makes it, on a free port
  std::vector<uint8_t> hello = egress::build_client_hello("localhost");
  Rig() {
    const std::string e = std::to_string(echo.port), s = std::to_string(sink.port);
    const std::string f = far_sink ? std::to_string(far_sink->port) : "1";
    const std::string yaml = "version: 1\nvalid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}\n"
                             "tools: [{server: notes, name: add}]\nagents: [{name: bench, tools: [\"notes/*\"]}]\negress:\n"
                             "  - id: local\n    effect: allow\n    destinations: [{host: localhost, ports: [" + e + ", " + s +
                             "]}, {cidr: 127.0.0.1/32, ports: [" + e + ", " + s + "]}, {cidr: 10.213.0.2/32, ports: [" + f + "]}]\n";
    auto compiled = policy::compile_policy(yaml, "bench.yaml", {});
    if (!compiled) std::abort();
    engine = *policy::Engine::build(compiled->payload);
    egress::ProxyHooks h;
    h.policy = [this] { return broker::PolicyView{engine, policy::Mode::normal, 0}; };
    h.record = [](const egress::EgressRecord&) -> Result<void> { return {}; };
    h.closed = [](const egress::EgressClose&) {};
    h.secret = [](std::string_view) -> Result<std::string> { return std::string(); };
    egress::ProxyOptions o;
    o.max_connections_per_agent = 4096;
    if (const char* b = std::getenv("OUTPOST_BENCH_BUFFER")) o.buffer_bytes = std::strtoull(b, nullptr, 10);
    proxy = std::move(*egress::Proxy::start(o, std::move(h)));
    sandbox::UniqueFd listener(listen_loopback(port));
    sandbox::UniqueFd dns(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int one = 1;
    ::setsockopt(dns.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    socklen_t len = sizeof a;
    if (::bind(dns.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) std::abort();
    ::getsockname(dns.get(), reinterpret_cast<sockaddr*>(&a), &len);
    dns_port = ntohs(a.sin_port);
    proxy->serve(egress::Proxy::Binding{"bench", "bench", std::make_shared<broker::SessionState>(), std::move(listener),
                                        std::move(dns)});
  }
  // A tunnel through the proxy to `to`, its ClientHello sent.
  int tunnel(uint16_t to, const std::string& host = "localhost") {
    int c = connect_loopback(port);
    const std::string req = "CONNECT " + host + ":" + std::to_string(to) + " HTTP/1.1\r\n\r\n";
    send_all(c, req.data(), req.size());
    read_head(c);
    const bool ip = !host.empty() && host.find_first_not_of("0123456789.") == std::string::npos;
    const auto h = egress::build_client_hello(ip ? "" : host);  // no SNI for an address
    send_all(c, h.data(), h.size());
    return c;
  }
};

Rig& rig() {
  static Rig r;
  return r;
}

// CPU seconds of the proxy's event-loop thread (named outpost-egress).
double loop_cpu_seconds() {
  DIR* d = ::opendir("/proc/self/task");
  double out = 0;
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    const std::string task = std::string("/proc/self/task/") + e->d_name;
    std::ifstream comm(task + "/comm");
    std::string name;
    if (!std::getline(comm, name) || name != "outpost-egress") continue;
    std::ifstream stat(task + "/stat");
    std::string line;
    std::getline(stat, line);
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    out += static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  if (d) ::closedir(d);
  return out;
}

void report(benchmark::State& state, std::vector<double>& us) {
  std::sort(us.begin(), us.end());
  if (us.empty()) return;
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
}

// Set-up to the first byte back: direct connect + the hello echoed.
void BM_setup_direct(benchmark::State& state) {
  Rig& r = rig();
  std::vector<double> us;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    int c = connect_loopback(r.echo.port);
    send_all(c, r.hello.data(), r.hello.size());
    read_exactly(c, r.hello.size());
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    ::close(c);
  }
  report(state, us);
}
BENCHMARK(BM_setup_direct)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Through the proxy to a name (resolved by outpostd: getaddrinfo on Asio's resolver thread,
// which inherits the loop's name and so counts in loop_cpu) or to an address (no resolution).
void setup_proxy(benchmark::State& state, const std::string& host) {
  Rig& r = rig();
  std::vector<double> us;
  const double cpu0 = loop_cpu_seconds();
  for (auto _ : state) {
    const auto t0 = Clock::now();
    int c = r.tunnel(r.echo.port, host);
    read_exactly(c, host == "localhost" ? r.hello.size() : egress::build_client_hello("").size());
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    ::close(c);
  }
  report(state, us);
  state.counters["loop_cpu_us_per_conn"] = (loop_cpu_seconds() - cpu0) * 1e6 / static_cast<double>(state.iterations());
}
// A resolver's query over a connected UDP socket to 127.0.0.1:port, until its answer (the
// stub's REFUSED) or its error (ECONNREFUSED from the port-unreachable) comes back.
void lookup(benchmark::State& state, bool stub) {
  Rig& r = rig();
  uint16_t closed_port = 0;
  {
    int probe = listen_loopback(closed_port);  // a port just freed: nobody listens for UDP there
    ::close(probe);
  }
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(stub ? r.dns_port : closed_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) std::abort();
  const auto q = egress::build_dns_query(0x4242, "api.example.com", 28);
  std::vector<double> us;
  uint8_t buf[512];
  const double cpu0 = loop_cpu_seconds();
  for (auto _ : state) {
    const auto t0 = Clock::now();
    if (::send(fd, q.data(), q.size(), 0) < 0 && errno != ECONNREFUSED) std::abort();
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (stub ? n <= 12 || buf[3] != egress::kDnsRefused : n >= 0 || errno != ECONNREFUSED) {
      state.SkipWithError("unexpected answer");
      break;
    }
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  ::close(fd);
  report(state, us);
  if (stub) state.counters["loop_cpu_us_per_query"] = (loop_cpu_seconds() - cpu0) * 1e6 / static_cast<double>(state.iterations());
}
void BM_lookup_no_listener(benchmark::State& state) { lookup(state, false); }
void BM_lookup_dns_stub(benchmark::State& state) { lookup(state, true); }
BENCHMARK(BM_lookup_no_listener)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_lookup_dns_stub)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_dns_answer(benchmark::State& state) {
  const auto q = egress::build_dns_query(0x4242, "api.example.com", 28);
  for (auto _ : state) benchmark::DoNotOptimize(egress::answer_dns_query(q));
}
BENCHMARK(BM_dns_answer);

void BM_setup_proxy(benchmark::State& state) { setup_proxy(state, "localhost"); }
void BM_setup_proxy_address(benchmark::State& state) { setup_proxy(state, "127.0.0.1"); }
BENCHMARK(BM_setup_proxy)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_setup_proxy_address)->UseRealTime()->Unit(benchmark::kMicrosecond);

uint64_t transfer_bytes() {
  const char* env = std::getenv("OUTPOST_BENCH_BYTES");
  return env ? std::strtoull(env, nullptr, 10) : (1ull << 30);
}

void transfer(benchmark::State& state, bool through_proxy, bool over_link) {
  Rig& r = rig();
  if (over_link && !r.far_sink) {
    state.SkipWithError("no shaped link (needs root and iproute2)");
    return;
  }
  if (over_link && !r.link.set_rate(std::to_string(state.range(0)) + "mbit")) {
    state.SkipWithError("tc qdisc change failed");
    return;
  }
  const uint64_t total = transfer_bytes();
  std::vector<char> chunk(1 << 20, 'x');
  const double cpu0 = loop_cpu_seconds();
  for (auto _ : state) {
    int c = over_link ? (through_proxy ? r.tunnel(r.far_sink->port, "10.213.0.2") : connect_to(kLinkSink, r.far_sink->port))
                      : (through_proxy ? r.tunnel(r.sink.port) : connect_loopback(r.sink.port));
    for (uint64_t sent = 0; sent < total; sent += chunk.size()) send_all(c, chunk.data(), std::min<uint64_t>(chunk.size(), total - sent));
    ::shutdown(c, SHUT_WR);
    read_exactly(c, 1);
    ::close(c);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * total));
  if (through_proxy) {
    state.counters["loop_cpu_s_per_GiB"] =
        (loop_cpu_seconds() - cpu0) / (static_cast<double>(state.iterations() * total) / (1ull << 30));
  }
  if (over_link) state.SetLabel("link " + r.link.rate);
}
// Loopback, unshaped: what the two cores here can move, the proxy's copy included.
void BM_transfer_direct(benchmark::State& state) { transfer(state, false, false); }
void BM_transfer_proxy(benchmark::State& state) { transfer(state, true, false); }
// Over a link of a fixed rate, as an agent's traffic leaves a node.
void BM_transfer_link_direct(benchmark::State& state) { transfer(state, false, true); }
void BM_transfer_link_proxy(benchmark::State& state) { transfer(state, true, true); }
BENCHMARK(BM_transfer_direct)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_transfer_proxy)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);
// Link rates in Mbit/s: 1 and 10 GbE, the NICs of edge nodes, and OUTPOST_BENCH_LINK_MBIT if set
// (25000 finds where this machine's proxy stops keeping up). Each run sets its rate first.
void link_rates(benchmark::internal::Benchmark* b) {
  std::vector<int64_t> rates = {1000, 10000};
  if (const char* env = std::getenv("OUTPOST_BENCH_LINK_MBIT")) rates.push_back(std::strtoll(env, nullptr, 10));
  for (int64_t r : rates) b->Arg(r);
}
BENCHMARK(BM_transfer_link_direct)->Apply(link_rates)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK(BM_transfer_link_proxy)->Apply(link_rates)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(2);

}  // namespace

BENCHMARK_MAIN();
