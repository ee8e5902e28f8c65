#include "egress/proxy.h"

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
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
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
    if (ec) return std::nullopt;
    t.host = addr.to_string();
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
    if (t.host.empty() || t.host.front() == '.' || t.host.find("..") != std::string::npos) return std::nullopt;
    boost::system::error_code ec;
    auto addr = asio::ip::make_address_v4(t.host, ec);
    t.is_ip = !ec;
    if (t.is_ip) t.host = addr.to_string();
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

struct Conn;

// One agent's binding: its listener, its connections and its counters. Everything but the
// counters is touched on the event loop only.
struct AgentEntry {
  AgentEntry(asio::io_context& io, std::string a, std::string t, std::shared_ptr<broker::SessionState> f)
      : agent(std::move(a)), task(std::move(t)), flow(std::move(f)), acceptor(io) {}
  const std::string agent, task;
  const std::shared_ptr<broker::SessionState> flow;
  tcp::acceptor acceptor;
  std::unordered_map<uint64_t, std::weak_ptr<Conn>> conns;
  std::unordered_map<std::string, Budget> budgets;  // by rule id
  bool stopped = false;
  std::atomic<uint64_t> allowed{0}, refused{0}, open{0}, bytes_up{0}, bytes_down{0};
};

struct Conn {
  Conn(asio::io_context& io, tcp::socket c) : client(std::move(c)), upstream(io), resolver(io), timer(io) {}
  tcp::socket client, upstream;
  tcp::resolver resolver;
  asio::steady_timer timer;
  Clock::time_point deadline;
  bool done = false;
  uint64_t total = 0;  // bytes both ways, for a per-connection budget
  std::string end;  // why it ended, when outpostd ended it
  void close() {
    boost::system::error_code ec;
    resolver.cancel();
    client.close(ec);
    upstream.close(ec);
  }
};

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
  policy::RateLimiter rates{4096};

  std::vector<asio::ip::address> own;  // this host's addresses, loop only
  Clock::time_point own_read{};

  bool is_own(const asio::ip::address& a) {
    if (Clock::now() - own_read > std::chrono::seconds(10)) {
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
            own.push_back(asio::ip::address_v6(b));
          }
        }
        ::freeifaddrs(list);
      }
      own_read = Clock::now();
    }
    return std::find(own.begin(), own.end(), a) != own.end();
  }

  // Runs fn on the pool and comes back to the loop.
  template <class F>
  asio::awaitable<std::invoke_result_t<F>> off_loop(F fn) {
    co_await asio::post(pool.get_executor(), asio::use_awaitable);
    auto out = fn();
    co_await asio::post(io.get_executor(), asio::use_awaitable);
    co_return out;
  }

  asio::awaitable<void> accept_loop(std::shared_ptr<AgentEntry> a);
  asio::awaitable<void> watchdog(std::shared_ptr<Conn> c);
  asio::awaitable<void> handle(std::shared_ptr<AgentEntry> a, std::shared_ptr<Conn> c, uint64_t id);
  asio::awaitable<void> pump(AgentEntry& a, Conn& c, tcp::socket& from, tcp::socket& to, bool up, uint64_t& count,
                             const std::string& rule, uint64_t budget, uint32_t window);
  asio::awaitable<void> refuse(AgentEntry& a, Conn& c, EgressRecord rec, http::status status);
  bool charge(AgentEntry& a, Conn& c, const std::string& rule, uint64_t budget, uint32_t window, uint64_t n);
};

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
    if (a->open.load() >= options.max_connections_per_agent) {
      static constexpr std::string_view kBusy =
          "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
          "X-Outpost-Reason: too many open egress connections\r\n\r\n";
      boost::system::error_code wec;
      sock.non_blocking(true, wec);
      asio::write(sock, asio::buffer(kBusy), wec);
      a->refused.fetch_add(1);
      continue;
    }
    sock.set_option(tcp::no_delay(true), ec);
    auto c = std::make_shared<Conn>(io, std::move(sock));
    const uint64_t id = next_id++;
    a->conns[id] = c;
    a->open.fetch_add(1);
    asio::co_spawn(io, watchdog(c), asio::detached);
    asio::co_spawn(io, handle(a, c, id), [this, a, c, id](std::exception_ptr) {
      c->done = true;
      c->timer.cancel();
      c->close();
      a->conns.erase(id);
      a->open.fetch_sub(1);
    });
  }
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

bool Proxy::Impl::charge(AgentEntry& a, Conn& c, const std::string& rule, uint64_t budget, uint32_t window,
                         uint64_t n) {
  c.total += n;
  if (budget == 0) return true;
  if (window == 0) {
    if (c.total <= budget) return true;
  } else {
    Budget& b = a.budgets[rule];
    const int64_t now = unix_now();
    const int64_t start = now - now % window;
    if (b.window_start != start) b = Budget{start, 0};
    b.used += n;
    if (b.used <= budget) return true;
  }
  c.end = "byte budget exhausted";
  c.close();
  return false;
}

asio::awaitable<void> Proxy::Impl::pump(AgentEntry& a, Conn& c, tcp::socket& from, tcp::socket& to, bool up,
                                        uint64_t& count, const std::string& rule, uint64_t budget, uint32_t window) {
  std::vector<uint8_t> buf(options.buffer_bytes);
  for (;;) {
    auto [ec, n] = co_await from.async_read_some(asio::buffer(buf), kTuple);
    if (ec) {
      boost::system::error_code ignored;
      if (ec == asio::error::eof) {
        to.shutdown(tcp::socket::shutdown_send, ignored);  // pass the half-close on
      } else {
        c.close();
      }
      co_return;
    }
    c.deadline = Clock::now() + options.idle_timeout;
    count += n;
    (up ? a.bytes_up : a.bytes_down).fetch_add(n, std::memory_order_relaxed);
    if (!charge(a, c, rule, budget, window, n)) co_return;
    auto [wec, written] = co_await asio::async_write(to, asio::buffer(buf.data(), n), kTuple);
    if (wec) {
      c.close();
      co_return;
    }
  }
}

// Answers a refused request with the reason, after recording it.
asio::awaitable<void> Proxy::Impl::refuse(AgentEntry& a, Conn& c, EgressRecord rec, http::status status) {
  a.refused.fetch_add(1);
  (void)co_await off_loop([&] { return hooks.record(rec); });  // a refusal goes out unrecorded rather than not at all
  http::response<http::string_body> res{status, 11};
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.set(http::field::connection, "close");
  res.set("X-Outpost-Verdict", rec.verdict);
  res.set("X-Outpost-Reason", one_line(rec.reason));
  res.body() = "outpost egress: " + rec.reason + "\n";
  res.prepare_payload();
  c.deadline = Clock::now() + options.head_timeout;
  co_await http::async_write(c.client, res, kTuple);
}

asio::awaitable<void> Proxy::Impl::handle(std::shared_ptr<AgentEntry> a, std::shared_ptr<Conn> c, uint64_t id) {
  const auto started = Clock::now();
  c->deadline = started + options.head_timeout;
  char idbuf[24];
  std::snprintf(idbuf, sizeof idbuf, "%016llx", static_cast<unsigned long long>(id));
  EgressRecord rec;
  rec.id = idbuf;
  rec.time = unix_now();
  rec.agent = a->agent;
  rec.task = a->task;

  beast::flat_buffer buf;
  http::request_parser<http::empty_body> head;
  head.header_limit(static_cast<uint32_t>(options.max_head_bytes));
  auto [rec_ec, head_bytes] = co_await http::async_read_header(c->client, buf, head, kTuple);
  if (rec_ec) {
    if (rec_ec == asio::error::eof || c->end == "idle" || rec_ec == asio::error::operation_aborted) co_return;
    rec.verdict = "bad_request";
    rec.reason = "not an HTTP proxy request: " + rec_ec.message();
    a->refused.fetch_add(1);
    http::response<http::string_body> res{http::status::bad_request, 11};
    res.set(http::field::connection, "close");
    res.set("X-Outpost-Reason", one_line(rec.reason));
    res.body() = "outpost egress: " + rec.reason + "\n";
    res.prepare_payload();
    co_await http::async_write(c->client, res, kTuple);
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
                     : "a proxy request needs an absolute http:// URL, not \"" + one_line(raw_target, 100) + "\"";
    co_await refuse(*a, *c, rec, http::status::bad_request);
    co_return;
  }
  rec.host = target->host;
  rec.port = target->port;
  if (!is_connect) {
    std::string_view p = target->path;
    rec.path = std::string(p.substr(0, p.find('?')));
  }

  // The decision, first on the name alone: what no rule allows is not even resolved.
  auto decide = [&](std::string_view address, bool own_address, policy::RateLimiter* limiter) {
    broker::PolicyView view = hooks.policy();
    policy::EgressDecision d;
    d.verdict = policy::Verdict::bundle_not_in_force;
    policy::EgressRequest q;
    q.agent = a->agent;
    q.task = a->task;
    q.host = target->host;
    q.port = target->port;
    q.address = address;
    q.own_address = own_address;
    q.time = unix_now();
    if (view.engine) {
      auto locked = a->flow->lock();
      q.history = locked.history();
      q.sensitivity = locked.max_sensitivity();
      d = view.engine->decide_egress(q, view.mode, limiter);
      rec.rule = d.rule >= 0 ? view.engine->egress_rule_id(d.rule) : d.flow >= 0 ? view.engine->flow_rule_id(d.flow) : "";
      rec.reason = view.engine->explain_egress(d, q);
      rec.bundle_version = d.bundle_version;
    } else {
      rec.reason = "no policy bundle is in force: deny all";
    }
    rec.allow = d.allow;
    rec.verdict = std::string(policy::verdict_name(d.verdict));
    rec.address_class = std::string(d.address_class);
    rec.kind = d.allow ? kind_name(d.kind) : "";
    return d;
  };
  policy::EgressDecision d = decide(target->is_ip ? std::string_view(target->host) : std::string_view(), false, nullptr);
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
    auto [rec_err, results] = co_await c->resolver.async_resolve(target->host, std::to_string(target->port),
                                                                 tcp::resolver::numeric_service, kTuple);
    if (rec_err || results.empty()) {
      rec.allow = false;
      rec.verdict = "resolve_failed";
      rec.reason = "cannot resolve " + target->host + ": " + (rec_err ? rec_err.message() : "no address");
      co_await refuse(*a, *c, rec, http::status::bad_gateway);
      co_return;
    }
    for (const auto& r : results) candidates.emplace_back(unmapped(r.endpoint().address()), target->port);
  }
  std::optional<tcp::endpoint> chosen;
  EgressRecord first_refusal;
  for (const auto& ep : candidates) {
    const std::string address = ep.address().to_string();
    d = decide(address, is_own(ep.address()), &rates);
    rec.address = address;
    if (d.allow) {
      chosen = ep;
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
  if (budget > 0 && window > 0) {
    Budget& b = a->budgets[rule];
    const int64_t now = unix_now();
    if (b.window_start == now - now % window && b.used >= budget) {
      rec.allow = false;
      rec.verdict = "budget_exhausted";
      rec.reason = "egress rule " + rule + "'s byte budget (" + std::to_string(budget) + " bytes per " +
                   std::to_string(window) + " s) is spent";
      co_await refuse(*a, *c, rec, http::status::too_many_requests);
      co_return;
    }
  }

  std::string upstream_head;  // plain HTTP: the request as it goes out
  std::string injected_value;
  if (is_connect) {
    // The tunnel is open once the ClientHello names the host asked for.
    static constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection Established\r\n\r\n";
    c->deadline = Clock::now() + options.head_timeout;
    auto [wec, wn] = co_await asio::async_write(c->client, asio::buffer(kEstablished), kTuple);
    if (wec) co_return;
    HelloScan scan = scan_client_hello({static_cast<const uint8_t*>(buf.data().data()), buf.size()});
    while (scan.status == HelloStatus::need_more && buf.size() < 64 * 1024) {
      auto [ec, n] = co_await c->client.async_read_some(buf.prepare(16 * 1024), kTuple);
      if (ec) co_return;
      buf.commit(n);
      scan = scan_client_hello({static_cast<const uint8_t*>(buf.data().data()), buf.size()});
    }
    rec.sni = scan.status == HelloStatus::sni ? scan.sni : "";
    std::string why;
    if (scan.status == HelloStatus::not_tls || scan.status == HelloStatus::malformed || scan.status == HelloStatus::need_more) {
      rec.verdict = "not_tls";
      why = "a CONNECT tunnel carries TLS only (" + (scan.error.empty() ? std::string("no ClientHello") : scan.error) + ")";
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
      // A fatal unrecognized_name alert (RFC 8446 §6.2): the client hears why in TLS terms.
      static constexpr uint8_t kAlert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70};
      co_await asio::async_write(c->client, asio::buffer(kAlert), kTuple);
      co_return;
    }
  } else {
    // Plain HTTP: the whole request (bounded), forwarded once in origin form with
    // Connection: close; whatever the agent sends after it is not forwarded.
    http::request_parser<http::string_body> full(std::move(head));
    full.body_limit(options.max_body_bytes);
    if (beast::iequals(full.get()[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      co_await asio::async_write(c->client, asio::buffer(kContinue), kTuple);
    }
    c->deadline = Clock::now() + options.head_timeout;
    auto [ec, n] = co_await http::async_read(c->client, buf, full, kTuple);
    if (ec) {
      rec.allow = false;
      rec.verdict = "bad_request";
      rec.reason = "reading the request: " + ec.message();
      co_await refuse(*a, *c, rec, ec == http::error::body_limit ? http::status::payload_too_large : http::status::bad_request);
      co_return;
    }
    http::request<http::string_body> req = full.release();
    if (auto h = req.find(http::field::host); h != req.end()) {
      auto host = parse_authority(std::string_view(h->value().data(), h->value().size()), 80);
      if (!host || host->host != target->host || host->port != target->port) {
        rec.allow = false;
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
    req.set(http::field::host, target->port == 80 ? target->host : authority_of(*target));
    req.set(http::field::connection, "close");
    if (!d.inject_secret.empty()) {
      const std::string secret_name(d.inject_secret);
      auto value = co_await off_loop([&] { return hooks.secret(secret_name); });
      if (!value) {
        rec.allow = false;
        rec.verdict = "secret_unavailable";
        rec.reason = "egress rule " + rule + " injects secret " + secret_name + ": " + value.error().message();
        co_await refuse(*a, *c, rec, http::status::bad_gateway);
        co_return;
      }
      injected_value = std::string(d.inject_prefix) + *value;
      std::fill(value->begin(), value->end(), '\0');
      req.set(std::string_view(d.inject_header), injected_value);
      rec.injected_header = std::string(d.inject_header);
    }
    req.prepare_payload();
    std::ostringstream out;
    out << req;
    upstream_head = out.str();
    if (!injected_value.empty()) {
      std::fill(injected_value.begin(), injected_value.end(), '\0');
      req.set(std::string_view(d.inject_header), "");
    }
    buf.consume(buf.size());
  }

  // Recorded before anything leaves: an allow that cannot be recorded is a refusal.
  auto recorded = co_await off_loop([&] { return hooks.record(rec); });
  if (!recorded) {
    a->refused.fetch_add(1);
    http::response<http::string_body> res{http::status::service_unavailable, 11};
    res.set(http::field::connection, "close");
    res.set("X-Outpost-Reason", one_line("the audit log refuses records: " + recorded.error().message()));
    res.prepare_payload();
    if (!is_connect) co_await http::async_write(c->client, res, kTuple);
    co_return;
  }
  a->allowed.fetch_add(1);

  EgressClose close;
  close.id = rec.id;
  close.agent = rec.agent;
  close.host = rec.host;
  close.port = rec.port;
  close.rule = rule;
  c->deadline = Clock::now() + options.connect_timeout;
  auto [cec] = co_await c->upstream.async_connect(*chosen, kTuple);
  if (cec) {
    close.end = "connect failed: " + cec.message();
    if (!is_connect) {
      http::response<http::string_body> res{http::status::bad_gateway, 11};
      res.set(http::field::connection, "close");
      res.set("X-Outpost-Reason", one_line(close.end));
      res.body() = "outpost egress: " + close.end + "\n";
      res.prepare_payload();
      co_await http::async_write(c->client, res, kTuple);
    }
  } else {
    boost::system::error_code ignored;
    c->upstream.set_option(tcp::no_delay(true), ignored);
    c->deadline = Clock::now() + options.idle_timeout;
    uint64_t up = 0, down = 0;
    if (is_connect) {
      // The ClientHello (and anything after it) read so far goes first.
      up = buf.size();
      a->bytes_up.fetch_add(up, std::memory_order_relaxed);
      auto [wec, wn] = co_await asio::async_write(c->upstream, buf.data(), kTuple);
      buf.consume(buf.size());
      if (!wec && charge(*a, *c, rule, budget, window, up)) {
        co_await (pump(*a, *c, c->client, c->upstream, true, up, rule, budget, window) &&
                  pump(*a, *c, c->upstream, c->client, false, down, rule, budget, window));
      }
    } else {
      up = upstream_head.size();
      a->bytes_up.fetch_add(up, std::memory_order_relaxed);
      auto [wec, wn] = co_await asio::async_write(c->upstream, asio::buffer(upstream_head), kTuple);
      std::fill(upstream_head.begin(), upstream_head.end(), '\0');
      if (!wec && charge(*a, *c, rule, budget, window, up)) {
        co_await pump(*a, *c, c->upstream, c->client, false, down, rule, budget, window);
      }
    }
    close.bytes_up = up;
    close.bytes_down = down;
    close.end = !c->end.empty() ? c->end : "closed";
  }
  close.time = unix_now();
  close.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
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
  // The closed connections wind down on the loop (their close records written); whatever is
  // still waiting on a hook after two seconds is dropped with it.
  const auto give_up = Clock::now() + std::chrono::seconds(2);
  for (;;) {
    uint64_t open = 0;
    {
      std::lock_guard lock(impl_->mu);
      for (const auto& [name, a] : impl_->agents) open += a->open.load();
    }
    if (open == 0 || Clock::now() > give_up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  impl_->work.reset();
  impl_->io.stop();
  if (impl_->loop.joinable()) impl_->loop.join();
  impl_->pool.join();
}

void Proxy::serve(Binding b) {
  stop_agent(b.agent);
  auto a = std::make_shared<AgentEntry>(impl_->io, b.agent, b.task, b.flow);
  boost::system::error_code ec;
  a->acceptor.assign(tcp::v4(), b.listener.release(), ec);
  if (ec) return;
  {
    std::lock_guard lock(impl_->mu);
    impl_->agents[b.agent] = a;
  }
  asio::co_spawn(impl_->io, impl_->accept_loop(a), asio::detached);
}

void Proxy::stop_agent(const std::string& agent) {
  std::shared_ptr<AgentEntry> a;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->agents.find(agent);
    if (it == impl_->agents.end()) return;
    a = it->second;  // kept (stopped) for its counters until the agent is served again
  }
  if (a->stopped) return;
  std::promise<void> done;
  asio::post(impl_->io, [a, &done] {
    a->stopped = true;
    boost::system::error_code ec;
    a->acceptor.close(ec);
    for (auto& [id, weak] : a->conns) {
      if (auto c = weak.lock()) {
        if (c->end.empty()) c->end = "agent stopped";
        c->close();
      }
    }
    done.set_value();
  });
  done.get_future().wait();
}

Proxy::Counters Proxy::counters(const std::string& agent) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->agents.find(agent);
  if (it == impl_->agents.end()) return {};
  const AgentEntry& a = *it->second;
  return Counters{a.allowed.load(), a.refused.load(), a.open.load(), a.bytes_up.load(), a.bytes_down.load()};
}

}  // namespace outpost::egress
