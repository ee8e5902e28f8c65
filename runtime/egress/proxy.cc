#include "egress/proxy.h"

#include <fcntl.h>
#include <ifaddrs.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>
#include <mutex>
#include <sstream>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include "egress/client_hello.h"
#include "egress/dns_stub.h"
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/log.h"
#include "outpost/base/time.h"

namespace outpost::egress {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace json = boost::json;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

using Target = ProxyTarget;

bool name_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'; }

// "host:port" or "[v6]:port" (CONNECT's authority form, or the authority of a URL with a
// default port). Refuses userinfo, empty labels and anything that is not a name or an address.
std::optional<Target> parse_authority(std::string_view a, uint16_t default_port) {
  Target t;
  std::string_view host, port;
  if (a.starts_with('[')) {
    size_t close = a.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = a.substr(1, close - 1);
    std::string_view rest = a.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return std::nullopt;
      port = rest.substr(1);
    }
    boost::system::error_code ec;
    auto addr = asio::ip::make_address_v6(std::string(host), ec);
    if (ec || addr.scope_id() != 0) return std::nullopt;
    // IPv4-mapped is the IPv4 address it carries, for every rule and check after this.
    t.host = addr.is_v4_mapped() ? asio::ip::make_address_v4(asio::ip::v4_mapped, addr).to_string() : addr.to_string();
    t.is_ip = true;
  } else {
    size_t colon = a.rfind(':');
    host = colon == std::string_view::npos ? a : a.substr(0, colon);
    if (colon != std::string_view::npos) port = a.substr(colon + 1);
    if (host.empty() || host.size() > 253) return std::nullopt;
    for (char c : host) {
      char l = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
      if (!name_char(l)) return std::nullopt;
      t.host += l;
    }
    if (t.host.back() == '.') t.host.pop_back();
    if (t.host.empty() || t.host.front() == '.' || t.host.back() == '.' || t.host.find("..") != std::string::npos) {
      return std::nullopt;
    }
    boost::system::error_code ec;
    auto addr = asio::ip::make_address_v4(t.host, ec);
    t.is_ip = !ec;
    if (t.is_ip) {
      t.host = addr.to_string();
    } else {
      // Not a dotted quad, but a number getaddrinfo would read as an address (2130706433,
      // 127.1, 0x7f.1): neither a name nor an address a rule could mean. No top-level domain
      // is all digits or hexadecimal with 0x.
      const std::string_view last = std::string_view(t.host).substr(t.host.rfind('.') + 1);
      if (std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; }) || last.starts_with("0x")) {
        return std::nullopt;
      }
    }
  }
  if (port.empty()) {
    if (default_port == 0) return std::nullopt;
    t.port = default_port;
  } else {
    if (port.size() > 5) return std::nullopt;
    uint32_t p = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return std::nullopt;
      p = p * 10 + static_cast<uint32_t>(c - '0');
    }
    if (p == 0 || p > 65535) return std::nullopt;
    t.port = static_cast<uint16_t>(p);
  }
  return t;
}

// "http://host[:port]/path?query" (absolute-form, RFC 9112 §3.2.2).
std::optional<Target> parse_absolute(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.size() < kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(url[i])) != kScheme[i]) return std::nullopt;
  }
  url.remove_prefix(kScheme.size());
  size_t end = url.find_first_of("/?#");
  std::string_view authority = url.substr(0, end);
  if (authority.find('@') != std::string_view::npos) return std::nullopt;
  auto t = parse_authority(authority, 80);
  if (!t) return std::nullopt;
  std::string_view rest = end == std::string_view::npos ? std::string_view() : url.substr(end);
  if (size_t hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  t->path = rest.empty() || rest[0] != '/' ? "/" + std::string(rest) : std::string(rest);
  return t;
}

}  // namespace

std::optional<ProxyTarget> parse_proxy_target(std::string_view target, bool connect) {
  return connect ? parse_authority(target, 0) : parse_absolute(target);
}

namespace {

std::string authority_of(const Target& t) {
  std::string h = t.host.find(':') != std::string::npos ? "[" + t.host + "]" : t.host;
  return h + ":" + std::to_string(t.port);
}

// A header value or reason text on one line of printable ASCII.
std::string one_line(std::string_view s, size_t max = 400) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max) break;
    out += (c >= 0x20 && c < 0x7f) ? c : ' ';
  }
  return out;
}

asio::ip::address unmapped(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}

std::string kind_name(fb::EgressKind k) { return k == fb::EgressKind::Model ? "model" : "api"; }

}  // namespace

std::string egress_json(const EgressRecord& r) {
  json::object o;
  o["kind"] = "egress";
  o["id"] = r.id;
  o["time"] = format_rfc3339_utc(r.time);
  o["agent"] = r.agent;
  o["task"] = r.task;
  o["method"] = r.method;
  o["host"] = r.host;
  o["port"] = r.port;
  if (!r.address.empty()) o["address"] = r.address;
  if (!r.sni.empty()) o["sni"] = r.sni;
  if (!r.path.empty()) o["path"] = r.path;
  o["allow"] = r.allow;
  o["verdict"] = r.verdict;
  if (!r.rule.empty()) o["rule"] = r.rule;
  o["reason"] = r.reason;
  if (!r.kind.empty()) o["egress_kind"] = r.kind;
  if (!r.address_class.empty()) o["address_class"] = r.address_class;
  o["bundle_version"] = r.bundle_version;
  if (!r.injected_header.empty()) o["injected_header"] = r.injected_header;
  return json::serialize(o);
}

std::string egress_close_json(const EgressClose& c) {
  json::object o;
  o["kind"] = "egress_close";
  o["id"] = c.id;
  o["time"] = format_rfc3339_utc(c.time);
  o["agent"] = c.agent;
  o["host"] = c.host;
  o["port"] = c.port;
  if (!c.rule.empty()) o["rule"] = c.rule;
  o["bytes_up"] = c.bytes_up;
  o["bytes_down"] = c.bytes_down;
  o["duration_ms"] = c.duration_ms;
  o["end"] = c.end;
  return json::serialize(o);
}

// ---- the proxy ----

namespace {

struct Budget {
  int64_t window_start = 0;
  uint64_t used = 0;
};

// What outlives one launch of an agent: its rate counters and byte budgets (a restart must not
// refill them). Loop only.
struct AgentLimits {
  policy::RateLimiter rates{1024};
  std::unordered_map<std::string, Budget> budgets;  // by rule id
};

struct Conn;

// One agent's binding: its listener, its connections and its counters. Everything but the
// counters and `stopped` is touched on the event loop only.
struct AgentEntry {
  AgentEntry(asio::io_context& io, std::string a, std::string t, std::shared_ptr<broker::SessionState> f,
             std::shared_ptr<AgentLimits> l)
      : agent(std::move(a)), task(std::move(t)), flow(std::move(f)), limits(std::move(l)), acceptor(io) {}
  const std::string agent, task;
  const std::shared_ptr<broker::SessionState> flow;
  const std::shared_ptr<AgentLimits> limits;
  tcp::acceptor acceptor;
  std::optional<asio::ip::udp::socket> dns;  // the namespace's DNS stub, if it has one
  std::unordered_map<uint64_t, std::weak_ptr<Conn>> conns;
  std::atomic<bool> stopped{false};
  std::atomic<uint64_t> allowed{0}, refused{0}, open{0}, bytes_up{0}, bytes_down{0}, dns_refused{0};
  // The DNS records' rate: this second's count, and the queries not recorded one by one since
  // the last record. Loop only.
  int64_t dns_second = 0;
  uint32_t dns_recorded = 0;
  uint64_t dns_unrecorded = 0;
};

struct Conn {
  Conn(asio::io_context& io, tcp::socket c) : client(std::move(c)), upstream(io), resolver(io), timer(io) {}
  tcp::socket client, upstream;
  tcp::resolver resolver;
  asio::steady_timer timer;
  Clock::time_point deadline;
  bool done = false;
  bool closed = false;        // close() ran: nothing may be opened or sent any more
  uint64_t total = 0;         // bytes both ways, for a per-connection budget
  std::string end;            // why it ended, when outpostd ended it
  // Set once the allow is recorded: the close record is then owed, however the handler ends.
  std::optional<EgressClose> owed_close;
  void close() {
    closed = true;
    boost::system::error_code ec;
    resolver.cancel();
    client.close(ec);
    upstream.close(ec);
  }
};

std::string host_header(const ProxyTarget& t) {
  const std::string h = t.host.find(':') != std::string::npos ? "[" + t.host + "]" : t.host;
  return t.port == 80 ? h : h + ":" + std::to_string(t.port);
}

}  // namespace

struct Proxy::Impl {
  Impl(ProxyOptions o, ProxyHooks h) : options(o), hooks(std::move(h)), work(asio::make_work_guard(io)), pool(2) {
    uint32_t salt;
    random_bytes(std::span(reinterpret_cast<uint8_t*>(&salt), sizeof salt));
    next_id = static_cast<uint64_t>(salt) << 32;
  }

  const ProxyOptions options;
  const ProxyHooks hooks;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::thread_pool pool;  // the hooks that block
  std::thread loop;

  mutable std::mutex mu;  // agents
  std::unordered_map<std::string, std::shared_ptr<AgentEntry>> agents;
  uint64_t next_id;  // loop only
  std::unordered_map<std::string, std::shared_ptr<AgentLimits>> limits;  // by agent, loop only
  std::atomic<uint64_t> open_total{0};
  uint64_t bodies_in_flight = 0;  // plain HTTP request bytes held, all agents; loop only


  // Runs fn on the pool (the hooks block: fdatasync, the TPM) and resumes on the loop. A
  // coroutine spawned on the pool's executor, not a post: a post's handler would run on the
  // awaiting coroutine's own executor, the loop.
  template <class F>
  asio::awaitable<std::invoke_result_t<F>> off_loop(F fn) {
    using R = std::invoke_result_t<F>;
    std::optional<R> out;
    co_await asio::co_spawn(
        pool.get_executor(),
        [&]() -> asio::awaitable<void> {
          out.emplace(fn());
          co_return;
        },
        asio::use_awaitable);
    co_return std::move(*out);
  }

  asio::awaitable<void> accept_loop(std::shared_ptr<AgentEntry> a);
  // Answers the namespace's DNS stub socket until the agent stops.
  asio::awaitable<void> dns_loop(std::shared_ptr<AgentEntry> a);
  // One datagram answered: 1; none waiting: 0; a socket error: -1.
  int answer_dns(AgentEntry& a, std::span<uint8_t> buf);
  // The record of the queries not yet recorded one by one, if any, when the agent stops (while
  // it runs, the next recorded query carries the count).
  void record_unrecorded_dns(AgentEntry& a);
  void record_dns(AgentEntry& a, std::string host, std::string reason);
  asio::awaitable<void> watchdog(std::shared_ptr<Conn> c);
  asio::awaitable<void> handle(std::shared_ptr<AgentEntry> a, std::shared_ptr<Conn> c, std::string id);
  // Copies from one side to the other until EOF, counting and charging; `still_allowed` is
  // asked at most every 250 ms and ends the connection when it says why.
  asio::awaitable<void> pump(AgentEntry& a, Conn& c, tcp::socket& from, tcp::socket& to, bool up, uint64_t& count,
                             const std::string& rule, uint64_t budget, uint32_t window,
                             const std::function<std::string()>& still_allowed);
  asio::awaitable<void> refuse(AgentEntry& a, Conn& c, EgressRecord rec, http::status status);
  void record_detached(std::shared_ptr<AgentEntry> a, EgressRecord rec);
  // Charges n bytes to the connection and the rule's window; false (and the connection closed)
  // past the budget.
  bool charge(AgentEntry& a, Conn& c, const std::string& rule, uint64_t budget, uint32_t window, uint64_t n);
  // Bytes the rule's window has left (UINT64_MAX without a budget).
  uint64_t budget_left(AgentEntry& a, const Conn& c, const std::string& rule, uint64_t budget, uint32_t window);
};

void Proxy::Impl::record_detached(std::shared_ptr<AgentEntry> a, EgressRecord rec) {
  a->refused.fetch_add(1);
  asio::post(pool, [this, rec = std::move(rec)] { (void)hooks.record(rec); });
}

asio::awaitable<void> Proxy::Impl::accept_loop(std::shared_ptr<AgentEntry> a) {
  for (;;) {
    auto [ec, sock] = co_await a->acceptor.async_accept(kTuple);
    if (a->stopped || ec == asio::error::operation_aborted || !a->acceptor.is_open()) co_return;
    if (ec) {
      // EMFILE and friends: back off rather than spin; the listener stays.
      asio::steady_timer t(io, std::chrono::milliseconds(100));
      co_await t.async_wait(kTuple);
      continue;
    }
    const bool agent_full = a->open.load() >= options.max_connections_per_agent;
    if (agent_full || open_total.load() >= options.max_connections) {
      const std::string why = agent_full ? "too many open egress connections of agent " + a->agent
                                         : "too many open egress connections on this node";
      const std::string busy = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
                               "X-Outpost-Verdict: too_many_connections\r\nX-Outpost-Reason: " + why + "\r\n\r\n";
      boost::system::error_code wec;
      sock.non_blocking(true, wec);
      asio::write(sock, asio::buffer(busy), wec);
      EgressRecord rec;
      rec.time = unix_now();
      rec.agent = a->agent;
      rec.task = a->task;
      rec.verdict = "too_many_connections";
      rec.reason = why;
      record_detached(a, std::move(rec));
      continue;
    }
    sock.set_option(tcp::no_delay(true), ec);
    auto c = std::make_shared<Conn>(io, std::move(sock));
    const uint64_t n = next_id++;
    char id[24];
    std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(n));
    a->conns[n] = c;
    a->open.fetch_add(1);
    open_total.fetch_add(1);
    asio::co_spawn(io, watchdog(c), asio::detached);
    asio::co_spawn(io, handle(a, c, id), [this, a, c, n](std::exception_ptr) {
      c->done = true;
      c->timer.cancel();
      c->close();
      a->conns.erase(n);
      a->open.fetch_sub(1);
      open_total.fetch_sub(1);
      // An allowed connection that ended any other way (an exception) still gets its close.
      if (c->owed_close) {
        EgressClose close = std::move(*c->owed_close);
        c->owed_close.reset();
        close.time = unix_now();
        if (close.end.empty()) close.end = "error";
        asio::post(pool, [this, close = std::move(close)] { hooks.closed(close); });
      }
    });
  }
}

asio::awaitable<void> Proxy::Impl::dns_loop(std::shared_ptr<AgentEntry> a) {
  std::vector<uint8_t> buf(4096);  // a query is tens of bytes; a longer one is read truncated
  for (;;) {
    auto [ec] = co_await a->dns->async_wait(asio::socket_base::wait_read, kTuple);
    if (a->stopped || ec == asio::error::operation_aborted || !a->dns->is_open()) co_return;
    if (ec) {
      asio::steady_timer t(io, std::chrono::milliseconds(100));
      co_await t.async_wait(kTuple);
      continue;
    }
    // A batch, then back to the loop's other work: a flood of queries cannot starve tunnels.
    int got = 1;
    for (int i = 0; i < 64 && got > 0 && !a->stopped; ++i) got = answer_dns(*a, buf);
    if (got < 0) {  // logged; wait before trying the socket again rather than spin on it
      asio::steady_timer t(io, std::chrono::milliseconds(100));
      co_await t.async_wait(kTuple);
    }
  }
}

void Proxy::Impl::record_dns(AgentEntry& a, std::string host, std::string reason) {
  EgressRecord rec;
  char id[24];
  std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(next_id++));
  rec.id = id;
  rec.time = options.clock();
  rec.agent = a.agent;
  rec.task = a.task;
  rec.method = "DNS";
  rec.host = std::move(host);
  rec.port = 53;
  rec.verdict = "dns_refused";
  rec.reason = std::move(reason);
  if (const auto view = hooks.policy(); view.engine) rec.bundle_version = view.engine->version();
  asio::post(pool, [this, rec = std::move(rec)] { (void)hooks.record(rec); });
}

void Proxy::Impl::record_unrecorded_dns(AgentEntry& a) {
  if (a.dns_unrecorded == 0) return;
  record_dns(a, "(queries not recorded one by one)",
             std::to_string(a.dns_unrecorded) + " more queries refused past " + std::to_string(kDnsRecordsPerSecond) +
                 " records a second, not recorded one by one");
  a.dns_unrecorded = 0;
}

// One datagram, if there is one: read it with the address it was sent to, answer from there.
int Proxy::Impl::answer_dns(AgentEntry& a, std::span<uint8_t> buf) {
  sockaddr_in from{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in_pktinfo))];
  iovec iov{buf.data(), buf.size()};
  msghdr m{};
  m.msg_name = &from;
  m.msg_namelen = sizeof from;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  const int fd = a.dns->native_handle();
  const ssize_t n = ::recvmsg(fd, &m, MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    ::outpost::log::warn("outpostd", {{"msg", "DNS stub of agent " + a.agent + ": " + errno_error("recvmsg", errno).message()}});
    return -1;
  }
  const in_pktinfo* to = nullptr;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) to = reinterpret_cast<const in_pktinfo*>(CMSG_DATA(c));
  }
  DnsAnswer answer = answer_dns_query(std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)));
  if (answer.reply.empty() || m.msg_namelen != sizeof from || from.sin_family != AF_INET) return 1;  // not a query: dropped
  a.dns_refused.fetch_add(1);

  alignas(cmsghdr) char out_control[CMSG_SPACE(sizeof(in_pktinfo))] = {};
  iovec out_iov{answer.reply.data(), answer.reply.size()};
  msghdr out{};
  out.msg_name = &from;
  out.msg_namelen = sizeof from;
  out.msg_iov = &out_iov;
  out.msg_iovlen = 1;
  if (to != nullptr) {  // the source the query was sent to: a resolver drops an answer from elsewhere
    out.msg_control = out_control;
    out.msg_controllen = sizeof out_control;
    cmsghdr* c = CMSG_FIRSTHDR(&out);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
    in_pktinfo pi{};
    pi.ipi_spec_dst = to->ipi_addr;
    std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
  }
  (void)::sendmsg(fd, &out, MSG_DONTWAIT | MSG_NOSIGNAL);  // a full socket buffer drops it, as UDP may

  const int64_t now = options.clock();
  if (now != a.dns_second) {
    a.dns_second = now;
    a.dns_recorded = 0;
  }
  if (a.dns_recorded >= kDnsRecordsPerSecond) {
    ++a.dns_unrecorded;
    return 1;
  }
  ++a.dns_recorded;
  std::string reason = answer.rcode == kDnsRefused
                           ? "names are resolved by outpostd for the egress proxy (HTTPS_PROXY), not in the agent's "
                             "namespace: its DNS stub answers every query REFUSED"
                           : "a malformed or unsupported DNS message (answered with rcode " + std::to_string(answer.rcode) + ")";
  if (a.dns_unrecorded > 0) {
    reason += "; " + std::to_string(a.dns_unrecorded) + " more queries since the last record, refused unrecorded";
    a.dns_unrecorded = 0;
  }
  record_dns(a, answer.name.empty() ? "(malformed query)" : answer.name, std::move(reason));
  return 1;
}

// Closes the connection once its deadline passes; stages and traffic move the deadline on.
asio::awaitable<void> Proxy::Impl::watchdog(std::shared_ptr<Conn> c) {
  while (!c->done) {
    c->timer.expires_at(c->deadline);
    co_await c->timer.async_wait(kTuple);
    if (c->done) co_return;
    if (Clock::now() >= c->deadline) {
      if (c->end.empty()) c->end = "idle";
      c->close();
      co_return;
    }
  }
}

uint64_t Proxy::Impl::budget_left(AgentEntry& a, const Conn& c, const std::string& rule, uint64_t budget, uint32_t window) {
  if (budget == 0) return UINT64_MAX;
  if (window == 0) return c.total >= budget ? 0 : budget - c.total;
  Budget& b = a.limits->budgets[rule];
  const int64_t now = unix_now();
  const int64_t start = now - now % window;
  if (b.window_start != start) b = Budget{start, 0};
  return b.used >= budget ? 0 : budget - b.used;
}

bool Proxy::Impl::charge(AgentEntry& a, Conn& c, const std::string& rule, uint64_t budget, uint32_t window, uint64_t n) {
  const uint64_t left = budget_left(a, c, rule, budget, window);
  c.total += n;
  if (budget > 0 && window > 0) a.limits->budgets[rule].used += n;
  if (n <= left) return true;
  c.end = "byte budget exhausted";
  c.close();
  return false;
}

asio::awaitable<void> Proxy::Impl::pump(AgentEntry& a, Conn& c, tcp::socket& from, tcp::socket& to, bool up,
                                        uint64_t& count, const std::string& rule, uint64_t budget, uint32_t window,
                                        const std::function<std::string()>& still_allowed) {
  // splice(2) through a pipe: the bytes move socket to socket inside the kernel, never through
  // a buffer of ours (a copy each way less; the tunnel's throughput is the kernel's).
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    c.end = "pipe: " + std::string(std::strerror(errno));
    c.close();
    co_return;
  }
  sandbox::UniqueFd pipe_out(pipe_fds[0]), pipe_in(pipe_fds[1]);
  (void)::fcntl(pipe_in.get(), F_SETPIPE_SZ, static_cast<int>(options.buffer_bytes));
  boost::system::error_code ec;
  from.native_non_blocking(true, ec);
  to.native_non_blocking(true, ec);
  auto checked = Clock::now();
  for (;;) {
    if (c.closed) co_return;
    const ssize_t n = ::splice(from.native_handle(), nullptr, pipe_in.get(), nullptr, options.buffer_bytes,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      co_await from.async_wait(tcp::socket::wait_read, kTuple);
      continue;
    }
    if (n <= 0) {
      if (n == 0) {
        to.shutdown(tcp::socket::shutdown_send, ec);  // pass the half-close on
      } else {
        c.close();
      }
      co_return;
    }
    const auto now = Clock::now();
    c.deadline = now + options.idle_timeout;
    if (now - checked >= std::chrono::milliseconds(250)) {
      // A tunnel lives under the policy of the moment, not of its opening: a taint picked up
      // since, a new bundle or an expired one ends it.
      checked = now;
      if (std::string why = still_allowed(); !why.empty()) {
        c.end = why;
        c.close();
        co_return;
      }
    }
    if (!charge(a, c, rule, budget, window, static_cast<uint64_t>(n))) co_return;
    count += static_cast<uint64_t>(n);
    (up ? a.bytes_up : a.bytes_down).fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    for (ssize_t left = n; left > 0;) {
      if (c.closed) co_return;
      const ssize_t m = ::splice(pipe_out.get(), nullptr, to.native_handle(), nullptr, static_cast<size_t>(left),
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        co_await to.async_wait(tcp::socket::wait_write, kTuple);
        continue;
      }
      if (m <= 0) {
        c.close();
        co_return;
      }
      left -= m;
    }
  }
}

// Answers a refused request with the reason, after recording it.
asio::awaitable<void> Proxy::Impl::refuse(AgentEntry& a, Conn& c, EgressRecord rec, http::status status) {
  a.refused.fetch_add(1);
  rec.allow = false;
  (void)co_await off_loop([&] { return hooks.record(rec); });  // the refusal is answered either way
  if (c.closed) co_return;
  http::response<http::string_body> res{status, 11};
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.set(http::field::connection, "close");
  res.set("X-Outpost-Verdict", rec.verdict);
  res.set("X-Outpost-Reason", one_line(rec.reason));
  res.body() = "outpost egress: " + one_line(rec.reason, 4000) + "\n";
  res.prepare_payload();
  c.deadline = Clock::now() + options.head_timeout;
  co_await http::async_write(c.client, res, kTuple);
}

asio::awaitable<void> Proxy::Impl::handle(std::shared_ptr<AgentEntry> a, std::shared_ptr<Conn> c, std::string id) {
  const auto started = Clock::now();
  c->deadline = started + options.head_timeout;
  EgressRecord rec;
  rec.id = std::move(id);
  rec.time = unix_now();
  rec.agent = a->agent;
  rec.task = a->task;

  beast::flat_buffer buf;
  http::request_parser<http::empty_body> head;
  head.header_limit(static_cast<uint32_t>(options.max_head_bytes));
  auto [head_ec, head_bytes] = co_await http::async_read_header(c->client, buf, head, kTuple);
  if (head_ec) {
    if (head_ec == asio::error::eof && head_bytes == 0 && buf.size() == 0) co_return;  // connected and left
    rec.verdict = "bad_request";
    rec.reason = c->end == "idle" ? "no request head within " + std::to_string(options.head_timeout.count()) + " ms"
                                  : "not an HTTP proxy request: " + head_ec.message();
    co_await refuse(*a, *c, rec, http::status::bad_request);
    co_return;
  }
  const bool is_connect = head.get().method() == http::verb::connect;
  rec.method = std::string(head.get().method_string());
  const std::string_view raw_target(head.get().target().data(), head.get().target().size());
  std::optional<Target> target = parse_proxy_target(raw_target, is_connect);
  if (!target) {
    rec.verdict = "bad_request";
    rec.reason = is_connect ? "CONNECT needs host:port, not \"" + one_line(raw_target, 100) + "\""
                 : std::string_view(raw_target).starts_with("https:")
                     ? "an https:// URL goes through CONNECT, not as a plain request"
                     : "a proxy request needs an absolute http:// URL with a host name or address, not \"" +
                           one_line(raw_target, 100) + "\"";
    co_await refuse(*a, *c, rec, http::status::bad_request);
    co_return;
  }
  rec.host = target->host;
  rec.port = target->port;
  if (!is_connect) {
    std::string_view p = target->path;
    rec.path = std::string(p.substr(0, p.find('?')));
    // TRACE echoes the request, headers outpostd added included.
    if (head.get().method() == http::verb::trace || rec.method == "TRACK") {
      rec.verdict = "bad_request";
      rec.reason = "TRACE is not forwarded";
      co_await refuse(*a, *c, rec, http::status::method_not_allowed);
      co_return;
    }
  }

  // The decision, first on the name alone: what no rule allows is not even resolved. The
  // policy view is kept for the connection's life: the decision's strings point into it.
  broker::PolicyView view;
  auto decide = [&](std::string_view address, bool own_address, policy::RateLimiter* limiter, EgressRecord& out) {
    view = hooks.policy();
    return decide_destination(view, a->agent, a->task, *a->flow, target->host, target->port, address, own_address, limiter, out);
  };
  policy::EgressDecision d = decide(target->is_ip ? std::string_view(target->host) : std::string_view(), false, nullptr, rec);
  if (!d.allow) {
    co_await refuse(*a, *c, rec, http::status::forbidden);
    co_return;
  }

  // Then on each address it resolves to; the first allowed one is used.
  std::vector<tcp::endpoint> candidates;
  c->deadline = Clock::now() + options.connect_timeout;
  if (target->is_ip) {
    candidates.emplace_back(asio::ip::make_address(target->host), target->port);
  } else {
    // A name with a dot is resolved fully qualified, so no search domain of this host's
    // resolv.conf is tried on it; a single label (localhost, a host of /etc/hosts) as it is.
    const std::string query = target->host.find('.') != std::string::npos ? target->host + "." : target->host;
    auto [res_ec, results] = co_await c->resolver.async_resolve(query, std::to_string(target->port),
                                                                tcp::resolver::numeric_service, kTuple);
    if (c->closed) co_return;
    if (res_ec || results.empty()) {
      rec.verdict = "resolve_failed";
      rec.reason = "cannot resolve " + target->host + ": " + (res_ec ? res_ec.message() : "no address");
      co_await refuse(*a, *c, rec, http::status::bad_gateway);
      co_return;
    }
    for (const auto& r : results) candidates.emplace_back(unmapped(r.endpoint().address()), target->port);
  }
  std::optional<tcp::endpoint> chosen;
  bool chosen_own = false;
  EgressRecord first_refusal;
  for (const auto& ep : candidates) {
    const std::string address = ep.address().to_string();
    const bool own_address = is_own_address(ep.address());
    rec.address = address;
    d = decide(address, own_address, &a->limits->rates, rec);
    if (d.allow) {
      chosen = ep;
      chosen_own = own_address;
      break;
    }
    if (first_refusal.verdict.empty()) first_refusal = rec;
  }
  if (!chosen) {
    co_await refuse(*a, *c, first_refusal, http::status::forbidden);
    co_return;
  }
  const std::string rule = rec.rule;
  const uint64_t budget = d.budget_bytes;
  const uint32_t window = d.budget_window;
  const std::string inject_header(d.inject_header), inject_secret(d.inject_secret), inject_prefix(d.inject_prefix);
  const std::string address = rec.address;
  if (budget_left(*a, *c, rule, budget, window) == 0) {
    rec.verdict = "budget_exhausted";
    rec.reason = "egress rule " + rule + "'s byte budget (" + std::to_string(budget) + " bytes" +
                 (window > 0 ? " per " + std::to_string(window) + " s" : "") + ") is spent";
    co_await refuse(*a, *c, rec, http::status::too_many_requests);
    co_return;
  }
  // What a tunnel is asked at most every 250 ms: still allowed under the policy and session of
  // now? An empty answer is yes.
  auto still_allowed = [&, address, chosen_own]() -> std::string {
    EgressRecord now = rec;
    policy::EgressDecision again = decide(address, chosen_own, nullptr, now);
    if (again.allow) return {};
    a->refused.fetch_add(1);
    now.id = rec.id;
    now.allow = false;
    now.reason = "an open connection re-decided: " + now.reason;
    asio::post(pool, [this, now] { (void)hooks.record(now); });
    return "policy changed: " + now.verdict;
  };

  http::request<http::string_body> upstream_req;  // plain HTTP: the request as it goes out
  uint64_t reserved = 0;                          // its share of bodies_in_flight
  struct Release {
    uint64_t& total;
    uint64_t& mine;
    ~Release() { total -= mine; }
  } release{bodies_in_flight, reserved};
  if (is_connect) {
    // The tunnel is open once the ClientHello names the host asked for.
    static constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection Established\r\n\r\n";
    c->deadline = Clock::now() + options.head_timeout;
    auto [wec, wn] = co_await asio::async_write(c->client, asio::buffer(kEstablished), kTuple);
    if (wec) co_return;
    HelloScan scan = scan_client_hello({static_cast<const uint8_t*>(buf.data().data()), buf.size()});
    bool gone = false;
    while (scan.status == HelloStatus::need_more && buf.size() < 64 * 1024) {
      auto [ec, n] = co_await c->client.async_read_some(buf.prepare(16 * 1024), kTuple);
      if (ec) {
        gone = true;
        break;
      }
      buf.commit(n);
      scan = scan_client_hello({static_cast<const uint8_t*>(buf.data().data()), buf.size()});
    }
    rec.sni = scan.status == HelloStatus::sni ? scan.sni : "";
    std::string why;
    if (scan.status != HelloStatus::sni && scan.status != HelloStatus::no_sni) {
      rec.verdict = "not_tls";
      why = "a CONNECT tunnel carries TLS only (" +
            (gone ? std::string(c->end == "idle" ? "no ClientHello in time" : "closed before its ClientHello")
                  : scan.error.empty() ? std::string("no ClientHello") : scan.error) + ")";
    } else if (scan.encrypted_client_hello) {
      // ECH: the outer name could front another site behind the same server.
      rec.verdict = "sni_mismatch";
      why = "an Encrypted ClientHello hides the server it names; the tunnel to " + target->host + " needs it in the clear";
    } else if (target->is_ip ? scan.status == HelloStatus::sni : (scan.status != HelloStatus::sni || scan.sni != target->host)) {
      rec.verdict = "sni_mismatch";
      why = "the ClientHello names " + (rec.sni.empty() ? std::string("no server") : "\"" + one_line(rec.sni, 100) + "\"") +
            ", not the CONNECT host " + target->host;
    }
    if (!why.empty()) {
      rec.allow = false;
      rec.reason = why;
      a->refused.fetch_add(1);
      (void)co_await off_loop([&] { return hooks.record(rec); });
      if (c->closed) co_return;
      // A fatal unrecognized_name alert (RFC 8446 §6.2): the client hears why in TLS terms.
      static constexpr uint8_t kAlert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70};
      co_await asio::async_write(c->client, asio::buffer(kAlert), kTuple);
      co_return;
    }
  } else {
    // Plain HTTP: the whole request (bounded, and bounded again across all agents), forwarded
    // once in origin form with Connection: close; whatever the agent sends after it is not.
    http::request_parser<http::string_body> full(std::move(head));
    full.body_limit(options.max_body_bytes);
    const auto length = full.content_length();
    reserved = length ? *length : options.max_body_bytes;
    if (reserved > options.max_body_bytes || bodies_in_flight + reserved > options.max_bodies_in_flight) {
      reserved = 0;
      rec.verdict = "bad_request";
      rec.reason = length && *length > options.max_body_bytes
                       ? "the request body (" + std::to_string(*length) + " bytes) is over the proxy's limit of " +
                             std::to_string(options.max_body_bytes)
                       : "the proxy holds too many request bodies at once; try again";
      co_await refuse(*a, *c, rec, length && *length > options.max_body_bytes ? http::status::payload_too_large
                                                                              : http::status::service_unavailable);
      co_return;
    }
    bodies_in_flight += reserved;
    if (beast::iequals(full.get()[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      co_await asio::async_write(c->client, asio::buffer(kContinue), kTuple);
    }
    c->deadline = Clock::now() + options.head_timeout;
    auto [ec, n] = co_await http::async_read(c->client, buf, full, kTuple);
    if (ec) {
      rec.verdict = "bad_request";
      rec.reason = "reading the request: " + ec.message();
      co_await refuse(*a, *c, rec, ec == http::error::body_limit ? http::status::payload_too_large : http::status::bad_request);
      co_return;
    }
    upstream_req = full.release();
    http::request<http::string_body>& req = upstream_req;
    if (auto h = req.find(http::field::host); h != req.end()) {
      auto host = parse_authority(std::string_view(h->value().data(), h->value().size()), 80);
      if (!host || host->host != target->host || host->port != target->port) {
        rec.verdict = "host_mismatch";
        rec.reason = "the Host header (" + one_line(std::string_view(h->value().data(), h->value().size()), 100) +
                     ") is not the request's destination " + authority_of(*target);
        co_await refuse(*a, *c, rec, http::status::bad_request);
        co_return;
      }
    }
    // Hop-by-hop headers (RFC 9110 §7.6.1), and those the Connection header names, stay here.
    std::vector<std::string> named;
    for (auto part : http::token_list(req[http::field::connection])) named.emplace_back(part.data(), part.size());
    for (const auto& n2 : named) req.erase(n2);
    for (auto f : {http::field::connection, http::field::proxy_connection, http::field::keep_alive,
                   http::field::proxy_authorization, http::field::proxy_authenticate, http::field::te,
                   http::field::trailer, http::field::transfer_encoding, http::field::upgrade, http::field::expect}) {
      req.erase(f);
    }
    req.target(target->path);
    req.set(http::field::host, host_header(*target));
    req.set(http::field::connection, "close");
    req.prepare_payload();
    // The whole request is charged before it goes: a budget cannot be overrun by one upload.
    const uint64_t request_bytes = req.body().size() + 1024;
    if (request_bytes > budget_left(*a, *c, rule, budget, window)) {
      rec.verdict = "budget_exhausted";
      rec.reason = "the request (" + std::to_string(req.body().size()) + " bytes of body) is over what egress rule " + rule +
                   "'s byte budget has left";
      co_await refuse(*a, *c, rec, http::status::too_many_requests);
      co_return;
    }
    if (!inject_secret.empty()) {
      auto value = co_await off_loop([&] { return hooks.secret(inject_secret); });
      if (c->closed) co_return;
      std::string why;
      if (!value) {
        why = value.error().message();
      } else if (std::any_of(value->begin(), value->end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; })) {
        why = "its value holds control characters (a trailing newline?); seal it again without";
      }
      if (!why.empty()) {
        rec.verdict = "secret_unavailable";
        rec.reason = "egress rule " + rule + " injects secret " + inject_secret + ": " + why;
        if (value) std::fill(value->begin(), value->end(), '\0');
        co_await refuse(*a, *c, rec, http::status::bad_gateway);
        co_return;
      }
      std::string header_value = inject_prefix + *value;
      std::fill(value->begin(), value->end(), '\0');
      req.set(inject_header, header_value);
      std::fill(header_value.begin(), header_value.end(), '\0');
      rec.injected_header = inject_header;
    }
    buf.consume(buf.size());
  }

  // Recorded before anything leaves: an allow that cannot be recorded is a refusal.
  auto recorded = co_await off_loop([&] { return hooks.record(rec); });
  if (!recorded) {
    a->refused.fetch_add(1);
    if (!is_connect && !c->closed) {
      http::response<http::string_body> res{http::status::service_unavailable, 11};
      res.set(http::field::connection, "close");
      res.set("X-Outpost-Verdict", "audit_refused");
      res.set("X-Outpost-Reason", one_line("the audit log refuses records: " + recorded.error().message()));
      res.prepare_payload();
      co_await http::async_write(c->client, res, kTuple);
    }
    co_return;
  }
  a->allowed.fetch_add(1);
  c->owed_close = EgressClose{rec.id, 0, rec.agent, rec.host, rule, rec.port, 0, 0, 0, ""};
  auto finish = [&](std::string end, uint64_t up, uint64_t down) {
    EgressClose close = std::move(*c->owed_close);
    c->owed_close.reset();
    close.time = unix_now();
    close.bytes_up = up;
    close.bytes_down = down;
    close.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
    close.end = std::move(end);
    return close;
  };
  if (c->closed) {  // stopped or timed out while the record was written: nothing goes out
    EgressClose close = finish(c->end.empty() ? "closed" : c->end, 0, 0);
    co_await off_loop([&] {
      hooks.closed(close);
      return 0;
    });
    co_return;
  }
  c->deadline = Clock::now() + options.connect_timeout;
  auto [cec] = co_await c->upstream.async_connect(*chosen, kTuple);
  uint64_t up = 0, down = 0;
  std::string end;
  if (c->closed) {
    end = c->end.empty() ? "closed" : c->end;
  } else if (cec) {
    end = "connect failed: " + cec.message();
    if (!is_connect) {
      http::response<http::string_body> res{http::status::bad_gateway, 11};
      res.set(http::field::connection, "close");
      res.set("X-Outpost-Verdict", "connect_failed");
      res.set("X-Outpost-Reason", one_line(end));
      res.body() = "outpost egress: " + end + "\n";
      res.prepare_payload();
      co_await http::async_write(c->client, res, kTuple);
    }
  } else {
    boost::system::error_code ignored;
    c->upstream.set_option(tcp::no_delay(true), ignored);
    c->deadline = Clock::now() + options.idle_timeout;
    if (is_connect) {
      // The ClientHello (and anything after it) read so far goes first.
      up = buf.size();
      if (charge(*a, *c, rule, budget, window, up)) {
        a->bytes_up.fetch_add(up, std::memory_order_relaxed);
        auto [wec, wn] = co_await asio::async_write(c->upstream, buf.data(), kTuple);
        buf.consume(buf.size());
        if (!wec) {
          co_await (pump(*a, *c, c->client, c->upstream, true, up, rule, budget, window, still_allowed) &&
                    pump(*a, *c, c->upstream, c->client, false, down, rule, budget, window, still_allowed));
        }
      }
    } else {
      auto [wec, wn] = co_await http::async_write(c->upstream, upstream_req, kTuple);
      up = wn;
      a->bytes_up.fetch_add(up, std::memory_order_relaxed);
      c->total += up;
      if (budget > 0 && window > 0) a->limits->budgets[rule].used += up;
      upstream_req = {};  // the body (and the injected header) go now, not after the response
      bodies_in_flight -= reserved;
      reserved = 0;
      if (!wec) co_await pump(*a, *c, c->upstream, c->client, false, down, rule, budget, window, still_allowed);
    }
    end = !c->end.empty() ? c->end : "closed";
  }
  EgressClose close = finish(end, up, down);
  c->done = true;
  c->close();
  co_await off_loop([&] {
    hooks.closed(close);
    return 0;
  });
}

Proxy::Proxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Proxy>> Proxy::start(ProxyOptions options, ProxyHooks hooks) {
  auto impl = std::make_unique<Impl>(options, std::move(hooks));
  Impl* p = impl.get();
  try {
    p->loop = std::thread([p] {
      ::pthread_setname_np(::pthread_self(), "outpost-egress");  // for top -H and the benchmark
      p->io.run();
    });
  } catch (const std::system_error& e) {
    return fail(make_error_code(errc::io), std::string("egress proxy thread: ") + e.what());
  }
  return std::unique_ptr<Proxy>(new Proxy(std::move(impl)));
}

Proxy::~Proxy() {
  std::vector<std::string> names;
  {
    std::lock_guard lock(impl_->mu);
    for (const auto& [name, a] : impl_->agents) names.push_back(name);
  }
  for (const auto& n : names) stop_agent(n);
  // The loop runs the stops just posted (their last records handed to the pool) before anything
  // below can stop it.
  std::promise<void> stopped;
  auto barrier = stopped.get_future();
  asio::post(impl_->io, [&stopped] { stopped.set_value(); });
  barrier.wait_for(std::chrono::seconds(2));
  // The closed connections wind down on the loop (their close records written); whatever is
  // still waiting on a hook after two seconds is dropped with it.
  const auto give_up = Clock::now() + std::chrono::seconds(2);
  while (impl_->open_total.load() > 0 && Clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  impl_->work.reset();
  impl_->io.stop();
  if (impl_->loop.joinable()) impl_->loop.join();
  impl_->pool.join();
}

void Proxy::serve(Binding b) {
  stop_agent(b.agent);
  sandbox::UniqueFd listener = std::move(b.listener);
  sandbox::UniqueFd dns = std::move(b.dns);
  asio::post(impl_->io, [p = impl_.get(), agent = b.agent, task = b.task, flow = b.flow, fd = listener.release(),
                         dns_fd = dns.release()] {
    auto& limits = p->limits[agent];
    if (!limits) limits = std::make_shared<AgentLimits>();
    auto a = std::make_shared<AgentEntry>(p->io, agent, task, flow, limits);
    boost::system::error_code ec;
    a->acceptor.assign(tcp::v4(), fd, ec);
    if (ec) {
      ::close(fd);
      if (dns_fd >= 0) ::close(dns_fd);
      ::outpost::log::error("outpostd", {{"msg", "egress proxy for agent " + agent + ": " + ec.message()}});
      return;
    }
    if (dns_fd >= 0) {
      a->dns.emplace(p->io);
      a->dns->assign(asio::ip::udp::v4(), dns_fd, ec);
      if (ec) {
        ::close(dns_fd);
        a->dns.reset();
        ::outpost::log::error("outpostd", {{"msg", "DNS stub for agent " + agent + ": " + ec.message()}});
      }
    }
    {
      std::lock_guard lock(p->mu);
      p->agents[agent] = a;
    }
    asio::co_spawn(p->io, p->accept_loop(a), asio::detached);
    if (a->dns) asio::co_spawn(p->io, p->dns_loop(a), asio::detached);
  });
}

// Never waits for the loop: callers hold locks the loop's hooks may need.
void Proxy::stop_agent(const std::string& agent) {
  std::shared_ptr<AgentEntry> a;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->agents.find(agent);
    if (it == impl_->agents.end()) return;
    a = it->second;  // kept (stopped) for its counters until the agent is served again
  }
  if (a->stopped.exchange(true)) return;
  asio::post(impl_->io, [a, p = impl_.get()] {
    boost::system::error_code ec;
    a->acceptor.close(ec);
    if (a->dns) a->dns->close(ec);
    p->record_unrecorded_dns(*a);
    for (auto& [id, weak] : a->conns) {
      if (auto c = weak.lock()) {
        if (c->end.empty()) c->end = "agent stopped";
        c->close();
      }
    }
  });
}

Proxy::Counters Proxy::counters(const std::string& agent) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->agents.find(agent);
  if (it == impl_->agents.end()) return {};
  const AgentEntry& a = *it->second;
  return Counters{a.allowed.load(), a.refused.load(), a.open.load(), a.bytes_up.load(), a.bytes_down.load(),
                  a.dns_refused.load()};
}

bool is_own_address(const asio::ip::address& address) {
  static std::mutex mu;
  static std::vector<asio::ip::address> own;
  static Clock::time_point read_at{};
  std::lock_guard lock(mu);
  if (Clock::now() - read_at > std::chrono::seconds(10)) {
    own.clear();
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) == 0) {
      for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
        if (i->ifa_addr == nullptr) continue;
        if (i->ifa_addr->sa_family == AF_INET) {
          const auto* sin = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
          own.push_back(asio::ip::address_v4(ntohl(sin->sin_addr.s_addr)));
        } else if (i->ifa_addr->sa_family == AF_INET6) {
          const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
          asio::ip::address_v6::bytes_type b;
          std::memcpy(b.data(), sin6->sin6_addr.s6_addr, 16);
          own.push_back(unmapped(asio::ip::address_v6(b)));
        }
      }
      ::freeifaddrs(list);
    }
    read_at = Clock::now();
  }
  return std::find(own.begin(), own.end(), unmapped(address)) != own.end();
}

policy::EgressDecision decide_destination(const broker::PolicyView& view, std::string_view agent, std::string_view task,
                                          broker::SessionState& flow, std::string_view host, uint16_t port,
                                          std::string_view address, bool own_address, policy::RateLimiter* limiter,
                                          EgressRecord& out) {
  policy::EgressDecision d;
  d.verdict = policy::Verdict::bundle_not_in_force;
  policy::EgressRequest q;
  q.agent = agent;
  q.task = task;
  q.host = host;
  q.port = port;
  q.address = address;
  q.own_address = own_address;
  q.time = unix_now();
  if (view.engine) {
    auto locked = flow.lock();
    q.history = locked.history();
    q.sensitivity = locked.max_sensitivity();
    d = view.engine->decide_egress(q, view.mode, limiter);
    out.rule = d.rule >= 0 ? view.engine->egress_rule_id(d.rule) : d.flow >= 0 ? view.engine->flow_rule_id(d.flow) : "";
    out.reason = view.engine->explain_egress(d, q);
    out.bundle_version = d.bundle_version;
  } else {
    out.reason = "no policy bundle is in force: deny all";
  }
  out.allow = d.allow;
  out.verdict = std::string(policy::verdict_name(d.verdict));
  out.address_class = std::string(d.address_class);
  out.kind = d.allow ? kind_name(d.kind) : "";
  return d;
}

Result<asio::ip::tcp::endpoint> decide_outbound(const std::function<broker::PolicyView()>& policy, const Outbound& who,
                                               const std::string& host, uint16_t port,
                                               const std::function<Result<void>(const EgressRecord&)>& record) {
  static std::atomic<uint64_t> next{0};
  EgressRecord rec;
  rec.id = "out-" + std::to_string(unix_now()) + "-" + std::to_string(next.fetch_add(1));
  rec.time = unix_now();
  rec.agent = who.agent;
  rec.task = who.task;
  rec.method = who.method;
  rec.path = who.path.substr(0, who.path.find('?'));
  rec.host = host;
  rec.port = port;
  auto refused = [&](const EgressRecord& r) -> Failure {
    (void)record(r);  // refused either way
    return fail(errc::verification_failed, "egress to " + host + ":" + std::to_string(port) + " refused (" + r.verdict +
                                               "): " + r.reason);
  };
  boost::system::error_code ec;
  const asio::ip::address literal = asio::ip::make_address(host, ec);
  const bool is_ip = !ec;
  broker::PolicyView view = policy();
  policy::EgressDecision d = decide_destination(view, who.agent, who.task, *who.flow, host, port,
                                                is_ip ? std::string_view(host) : std::string_view(), false, nullptr, rec);
  if (!d.allow) return refused(rec);
  std::vector<asio::ip::address> candidates;
  if (is_ip) {
    candidates.push_back(unmapped(literal));
  } else {
    asio::io_context io;
    asio::ip::tcp::resolver resolver(io);
    const std::string query = host.find('.') != std::string::npos ? host + "." : host;
    auto results = resolver.resolve(query, std::to_string(port), asio::ip::tcp::resolver::numeric_service, ec);
    if (ec || results.empty()) {
      rec.verdict = "resolve_failed";
      rec.reason = "cannot resolve " + host + ": " + (ec ? ec.message() : "no address");
      rec.allow = false;
      return refused(rec);
    }
    for (const auto& r : results) candidates.push_back(unmapped(r.endpoint().address()));
  }
  EgressRecord first_refusal;
  for (const auto& address : candidates) {
    rec.address = address.to_string();
    const bool own = is_own_address(address);
    view = policy();
    d = decide_destination(view, who.agent, who.task, *who.flow, host, port, rec.address, own, nullptr, rec);
    if (d.allow) {
      if (auto r = record(rec); !r) return fail(r.error().wrap("egress to " + host + ":" + std::to_string(port) + " not recorded"));
      return asio::ip::tcp::endpoint(address, port);
    }
    if (first_refusal.verdict.empty()) first_refusal = rec;
  }
  return refused(first_refusal);
}

}  // namespace outpost::egress
