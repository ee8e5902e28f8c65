// The egress proxy (runtime/egress/proxy.h) in process, on the host's loopback: a real
// listener, real upstream servers and the real engine; only the agent's namespace is left out
// (the e2e tests cover that). The hooks record into memory.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "egress/client_hello.h"
#include "egress/dns_stub.h"
#include "egress/proxy.h"
#include "outpost/base/errors.h"
#include "policy/compiler.h"
#include "policy/engine.h"
#include "test_support.h"

using namespace outpost;
using namespace std::chrono_literals;

namespace {

using testing::connect_loopback;

void send_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    s.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads until `until` appears, EOF or the timeout.
std::string read_until(int fd, std::string_view until = {}) {
  std::string out;
  char buf[8192];
  for (;;) {
    if (!until.empty() && out.find(until) != std::string::npos) return out;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// An upstream server: answers a plain HTTP request with "ok" and closes; echoes anything else.
// Keeps what each connection sent.
struct Upstream {
  uint16_t port = 0;
  int fd;
  std::thread thread;
  std::mutex mu;
  std::vector<std::string> received;
  bool stop = false;
  Upstream() : fd(testing::listen_on_loopback(port)) {
    thread = std::thread([this] {
      std::vector<std::thread> conns;
      for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) {
          std::lock_guard lock(mu);
          if (stop) break;
          continue;
        }
        int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        size_t slot;
        {
          std::lock_guard lock(mu);
          slot = received.size();
          received.emplace_back();
        }
        conns.emplace_back([this, c, slot] {
          char buf[65536];
          for (;;) {
            ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) break;
            std::string chunk(buf, static_cast<size_t>(n));
            bool http;
            {
              std::lock_guard lock(mu);
              received[slot] += chunk;
              http = received[slot].starts_with("GET ") && received[slot].find("\r\n\r\n") != std::string::npos;
            }
            if (http) {
              send_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
              break;
            }
            send_all(c, chunk);
          }
          ::close(c);
        });
      }
      for (auto& t : conns) t.join();
    });
  }
  ~Upstream() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    thread.join();
    ::close(fd);
  }
  std::vector<std::string> seen() {
    std::lock_guard lock(mu);
    return received;
  }
};

struct Harness {
  Upstream tunnel, web, tiny;
  std::shared_ptr<const policy::Engine> engine;
  std::shared_ptr<broker::SessionState> flow = std::make_shared<broker::SessionState>();
  std::mutex mu;
  std::vector<egress::EgressRecord> records;
  std::vector<egress::EgressClose> closes;
  bool refuse_records = false;
  std::unique_ptr<egress::Proxy> proxy;
  uint16_t port = 0;
  uint16_t dns_port = 0;  // the DNS stub's, on the host's loopback here (53 in a namespace)
  std::atomic<int64_t> now{1'800'000'000};  // the proxy's clock for DNS records (Unix seconds)

  Harness() {
    const std::string p1 = std::to_string(tunnel.port), p2 = std::to_string(web.port), p3 = std::to_string(tiny.port);
    const std::string yaml = R"(version: 1
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools: [{server: notes, name: add}]
agents: [{name: coder, tools: ["notes/*"]}]
egress:
  - id: tunnel
    effect: allow
    destinations: [{host: localhost, ports: [)" + p1 + R"(]}, {cidr: 127.0.0.1/32, ports: [)" + p1 + R"(]}]
  - id: web
    effect: allow
    kind: model
    destinations: [{host: localhost, ports: [)" + p2 + R"(]}, {cidr: 127.0.0.1/32, ports: [)" + p2 + R"(]}]
    inject: {secret: model-key, prefix: "Bearer "}
  - id: tiny
    effect: allow
    destinations: [{host: localhost, ports: [)" + p3 + R"(]}, {cidr: 127.0.0.1/32, ports: [)" + p3 + R"(]}]
    budget: {bytes: 4KiB}
  - id: loopback-by-name
    effect: allow
    destinations: [{host: localhost, ports: [9]}]
)";
    auto compiled = policy::compile_policy(yaml, "p.yaml", {});
    REQUIRE(compiled);
    auto e = policy::Engine::build(compiled->payload);
    REQUIRE(e);
    engine = *e;
    egress::ProxyHooks h;
    h.policy = [this] { return broker::PolicyView{engine, policy::Mode::normal, 0}; };
    h.record = [this](const egress::EgressRecord& r) -> Result<void> {
      std::lock_guard lock(mu);
      if (refuse_records) return fail(errc::io, "disk full");
      records.push_back(r);
      return {};
    };
    h.closed = [this](const egress::EgressClose& c) {
      std::lock_guard lock(mu);
      closes.push_back(c);
    };
    h.secret = [](std::string_view name) -> Result<std::string> {
      if (name != "model-key") return fail(errc::not_found, "no such secret");
      return std::string("sk-held-by-outpostd");
    };
    egress::ProxyOptions options;
    options.clock = [this] { return now.load(); };
    auto started = egress::Proxy::start(options, std::move(h));
    REQUIRE(started);
    proxy = std::move(*started);
    sandbox::UniqueFd listener(testing::listen_on_loopback(port));
    proxy->serve(egress::Proxy::Binding{"coder", "build", flow, std::move(listener), dns_socket()});
  }
  // As the agent's namespace has it (sandbox/network.cc), on a free port.
  sandbox::UniqueFd dns_socket() {
    sandbox::UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int one = 1;
    REQUIRE(::setsockopt(fd.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof one) == 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    dns_port = ntohs(a.sin_port);
    return fd;
  }
  std::vector<egress::EgressRecord> recorded() {
    std::lock_guard lock(mu);
    return records;
  }
  // The close records, once `n` are there.
  std::vector<egress::EgressClose> closed(size_t n) {
    for (int i = 0; i < 200; ++i) {
      {
        std::lock_guard lock(mu);
        if (closes.size() >= n) return closes;
      }
      std::this_thread::sleep_for(10ms);
    }
    std::lock_guard lock(mu);
    return closes;
  }
};

std::string bytes_of(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

}  // namespace

TEST_CASE("the egress proxy tunnels TLS to an allowed host and checks the SNI", "[egress]") {
  Harness h;
  const std::string target = "localhost:" + std::to_string(h.tunnel.port);
  const std::string hello = bytes_of(egress::build_client_hello("localhost"));
  {
    int c = connect_loopback(h.port);
    send_all(c, "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n");
    CHECK_THAT(read_until(c, "\r\n\r\n"), Catch::StartsWith("HTTP/1.1 200"));
    send_all(c, hello + "ping");
    CHECK(read_until(c, "ping") == hello + "ping");  // echoed by the upstream, byte for byte
    ::close(c);
  }
  auto closes = h.closed(1);
  REQUIRE(closes.size() == 1);
  CHECK(closes[0].bytes_up == hello.size() + 4);
  CHECK(closes[0].bytes_down == hello.size() + 4);
  CHECK(closes[0].rule == "tunnel");
  {
    int c = connect_loopback(h.port);
    send_all(c, "CONNECT " + target + " HTTP/1.1\r\n\r\n");
    CHECK_THAT(read_until(c, "\r\n\r\n"), Catch::StartsWith("HTTP/1.1 200"));
    send_all(c, bytes_of(egress::build_client_hello("evil.example")));
    const std::string alert = read_until(c);
    REQUIRE(alert.size() == 7);
    CHECK(static_cast<uint8_t>(alert[0]) == 0x15);  // a TLS alert record
    CHECK(static_cast<uint8_t>(alert[6]) == 112);   // unrecognized_name
    ::close(c);
  }
  {
    int c = connect_loopback(h.port);
    send_all(c, "CONNECT " + target + " HTTP/1.1\r\n\r\n");
    read_until(c, "\r\n\r\n");
    send_all(c, "GET / HTTP/1.1\r\n\r\n");  // no TLS in a tunnel
    CHECK(read_until(c).size() == 7);
    ::close(c);
  }
  const auto records = h.recorded();
  REQUIRE(records.size() == 3);
  CHECK(records[0].allow);
  CHECK(records[0].sni == "localhost");
  CHECK(records[0].address == "127.0.0.1");
  CHECK(records[1].verdict == "sni_mismatch");
  CHECK(records[1].sni == "evil.example");
  CHECK(records[2].verdict == "not_tls");
  CHECK(h.tunnel.seen().size() == 1);  // the refused tunnels never reached it
}

TEST_CASE("the egress proxy forwards plain HTTP once, with the secret outpostd holds", "[egress]") {
  Harness h;
  const std::string url = "http://localhost:" + std::to_string(h.web.port) + "/v1/chat?x=1";
  int c = connect_loopback(h.port);
  send_all(c, "GET " + url + " HTTP/1.1\r\nHost: localhost:" + std::to_string(h.web.port) +
                  "\r\nAuthorization: Bearer none\r\nProxy-Authorization: x\r\nConnection: keep-alive\r\n\r\n");
  const std::string reply = read_until(c);
  ::close(c);
  CHECK_THAT(reply, Catch::StartsWith("HTTP/1.1 200"));
  CHECK_THAT(reply, Catch::EndsWith("ok"));
  const auto seen = h.web.seen();
  REQUIRE(seen.size() == 1);
  CHECK_THAT(seen[0], Catch::StartsWith("GET /v1/chat?x=1 HTTP/1.1\r\n"));
  CHECK_THAT(seen[0], Catch::Contains("Authorization: Bearer sk-held-by-outpostd\r\n"));
  CHECK_THAT(seen[0], !Catch::Contains("Bearer none"));
  CHECK_THAT(seen[0], !Catch::Contains("Proxy-Authorization"));
  CHECK_THAT(seen[0], Catch::Contains("Connection: close\r\n"));
  const auto records = h.recorded();
  REQUIRE(records.size() == 1);
  CHECK(records[0].method == "GET");
  CHECK(records[0].path == "/v1/chat");
  CHECK(records[0].kind == "model");
  CHECK(records[0].injected_header == "Authorization");
  CHECK_THAT(egress::egress_json(records[0]), !Catch::Contains("sk-held"));
}

TEST_CASE("the egress proxy refuses with the reason, before resolving or connecting", "[egress]") {
  Harness h;
  auto ask = [&](const std::string& request) {
    int c = connect_loopback(h.port);
    send_all(c, request);
    std::string r = read_until(c);
    ::close(c);
    return r;
  };
  std::string r = ask("CONNECT exfil.nowhere.invalid:443 HTTP/1.1\r\n\r\n");
  CHECK_THAT(r, Catch::StartsWith("HTTP/1.1 403"));
  CHECK_THAT(r, Catch::Contains("X-Outpost-Verdict: no_rule_allows"));
  r = ask("CONNECT localhost:9 HTTP/1.1\r\n\r\n");  // allowed by name, but it is loopback
  CHECK_THAT(r, Catch::Contains("X-Outpost-Verdict: address_refused"));
  CHECK_THAT(r, Catch::Contains("loopback"));
  r = ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_THAT(r, Catch::StartsWith("HTTP/1.1 400"));
  r = ask("GET https://localhost/ HTTP/1.1\r\n\r\n");
  CHECK_THAT(r, Catch::Contains("CONNECT"));
  r = ask("GET http://localhost:" + std::to_string(h.web.port) + "/ HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n");
  CHECK_THAT(r, Catch::Contains("X-Outpost-Verdict: host_mismatch"));
  const auto records = h.recorded();
  REQUIRE(records.size() == 5);
  CHECK(records[0].address.empty());  // never resolved
  CHECK(records[1].address == "127.0.0.1");
  CHECK(records[1].address_class == "loopback");
  CHECK(h.web.seen().empty());
  CHECK(h.proxy->counters("coder").refused == 5);

  // An allow the audit log cannot take is a refusal: nothing goes out unrecorded.
  {
    std::lock_guard lock(h.mu);
    h.refuse_records = true;
  }
  int c = connect_loopback(h.port);
  send_all(c, "CONNECT localhost:" + std::to_string(h.tunnel.port) + " HTTP/1.1\r\n\r\n");
  read_until(c, "\r\n\r\n");
  send_all(c, bytes_of(egress::build_client_hello("localhost")));
  CHECK(read_until(c).empty());
  ::close(c);
  CHECK(h.tunnel.seen().empty());
}

TEST_CASE("the egress proxy cuts a connection past its byte budget", "[egress]") {
  Harness h;
  int c = connect_loopback(h.port);
  send_all(c, "CONNECT localhost:" + std::to_string(h.tiny.port) + " HTTP/1.1\r\n\r\n");
  read_until(c, "\r\n\r\n");
  send_all(c, bytes_of(egress::build_client_hello("localhost")) + std::string(16 << 10, 'x'));
  const std::string back = read_until(c);
  ::close(c);
  CHECK(back.size() < (8u << 10));
  auto closes = h.closed(1);
  REQUIRE(closes.size() == 1);
  CHECK(closes[0].end == "byte budget exhausted");
  CHECK(closes[0].bytes_up + closes[0].bytes_down <= (4u << 10) + (64u << 10));
}

TEST_CASE("the egress proxy cuts an open tunnel once the session is tainted", "[egress]") {
  Harness h;
  // A taint rule over every action; the tunnel's host is not trusted.
  const std::string p1 = std::to_string(h.tunnel.port);
  auto compiled = policy::compile_policy(R"(version: 2
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools: [{server: vault, name: read, output_sensitivity: secret}]
agents: [{name: coder, tools: ["vault/*"], clearance: secret}]
egress:
  - id: tunnel
    effect: allow
    destinations: [{host: localhost, ports: [)" + p1 + R"(]}, {cidr: 127.0.0.1/32, ports: [)" + p1 + R"(]}]
flow_rules:
  - {id: no-exfiltration, kind: taint, min_sensitivity: confidential, trusted: [{host: "*.corp.example"}]}
)", "p.yaml", {});
  REQUIRE(compiled);
  h.engine = *policy::Engine::build(compiled->payload);
  int c = connect_loopback(h.port);
  send_all(c, "CONNECT localhost:" + p1 + " HTTP/1.1\r\n\r\n");
  read_until(c, "\r\n\r\n");
  const std::string hello = bytes_of(egress::build_client_hello("localhost"));
  send_all(c, hello + "one");
  CHECK(read_until(c, "one") == hello + "one");
  {  // the agent reads a secret through a tool, on another connection of its session
    auto locked = h.flow->lock();
    locked.remember("vault", "read", 1'800'000'000, 3, nullptr);
  }
  std::this_thread::sleep_for(300ms);
  send_all(c, "two");
  CHECK(read_until(c).find("two") == std::string::npos);  // cut before it went anywhere
  ::close(c);
  auto closes = h.closed(1);
  REQUIRE(closes.size() == 1);
  CHECK(closes[0].end == "policy changed: flow_denied");
  auto records = h.recorded();
  for (int i = 0; i < 200 && records.size() < 2; ++i) {  // the refusal is recorded beside the close
    std::this_thread::sleep_for(10ms);
    records = h.recorded();
  }
  REQUIRE(records.size() == 2);
  CHECK(records[1].verdict == "flow_denied");
  CHECK_THAT(records[1].reason, Catch::StartsWith("an open connection re-decided"));
}

TEST_CASE("the egress proxy refuses numeric host forms and Encrypted ClientHello", "[egress]") {
  CHECK_FALSE(egress::parse_proxy_target("2130706433:80", true));
  CHECK_FALSE(egress::parse_proxy_target("127.1:80", true));
  CHECK_FALSE(egress::parse_proxy_target("0x7f.0x1:80", true));
  CHECK_FALSE(egress::parse_proxy_target("example.com..:443", true));
  CHECK_FALSE(egress::parse_proxy_target("http://u:p@example.com/", false));
  auto mapped = egress::parse_proxy_target("[::ffff:10.0.0.1]:443", true);
  REQUIRE(mapped);
  CHECK(mapped->host == "10.0.0.1");
  auto v6 = egress::parse_proxy_target("http://[2001:DB8::1]/x", false);
  REQUIRE(v6);
  CHECK(v6->host == "2001:db8::1");
  CHECK(v6->port == 80);
  auto name = egress::parse_proxy_target("API.Example.COM.:443", true);
  REQUIRE(name);
  CHECK(name->host == "api.example.com");

  Harness h;
  int c = connect_loopback(h.port);
  send_all(c, "CONNECT localhost:" + std::to_string(h.tunnel.port) + " HTTP/1.1\r\n\r\n");
  read_until(c, "\r\n\r\n");
  send_all(c, bytes_of(egress::build_client_hello("localhost", true)));
  CHECK(read_until(c).size() == 7);  // the alert
  ::close(c);
  const auto records = h.recorded();
  REQUIRE(records.size() == 1);
  CHECK(records[0].verdict == "sni_mismatch");
  CHECK_THAT(records[0].reason, Catch::Contains("Encrypted ClientHello"));
  CHECK(h.tunnel.seen().empty());
}

namespace {

std::vector<uint8_t> bytes(std::initializer_list<int> b) {
  std::vector<uint8_t> v;
  for (int x : b) v.push_back(static_cast<uint8_t>(x));
  return v;
}

// A resolver's exchange with the stub: a connected UDP socket to `address`:port, as glibc's
// res_send uses, so an answer from any other address would not be received.
std::vector<uint8_t> ask(const char* address, uint16_t port, const std::vector<uint8_t>& query) {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, address, &a.sin_addr);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  REQUIRE(::send(fd, query.data(), query.size(), 0) == static_cast<ssize_t>(query.size()));
  std::vector<uint8_t> answer(1024);
  const ssize_t n = ::recv(fd, answer.data(), answer.size(), 0);
  ::close(fd);
  answer.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return answer;
}

}  // namespace

TEST_CASE("the DNS stub answers a query REFUSED with its question, and nothing else", "[dns-stub]") {
  const auto q = egress::build_dns_query(0xbeef, "API.Example.com", 28);
  const auto a = egress::answer_dns_query(q);
  CHECK(a.rcode == egress::kDnsRefused);
  CHECK(a.name == "api.example.com");
  CHECK(a.type == 28);
  REQUIRE(a.reply.size() == q.size());
  CHECK(a.reply[0] == 0xbe);
  CHECK(a.reply[1] == 0xef);
  CHECK(a.reply[2] == 0x81);  // QR, opcode QUERY, RD as asked
  CHECK(a.reply[3] == 5);     // RA clear, REFUSED
  CHECK(std::equal(q.begin() + 4, q.end(), a.reply.begin() + 4));  // QDCOUNT 1, no records, the question

  // A name carrying data is written so that a reader of the audit log sees every byte.
  std::string odd = "a.B";
  odd += '\x01';
  odd += "c d";
  CHECK(egress::answer_dns_query(egress::build_dns_query(1, odd, 16)).name == "a.b\\001c\\032d");
  CHECK(egress::answer_dns_query(egress::build_dns_query(1, "", 2)).name == ".");

  // An EDNS OPT record after the question is left out of the answer.
  auto edns = egress::build_dns_query(7, "example.org", 1);
  edns[11] = 1;  // ARCOUNT
  const auto opt = bytes({0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0});
  const size_t question_end = edns.size();
  edns.insert(edns.end(), opt.begin(), opt.end());
  const auto e = egress::answer_dns_query(edns);
  CHECK(e.rcode == egress::kDnsRefused);
  CHECK(e.reply.size() == question_end);
  CHECK(e.reply[11] == 0);
}

TEST_CASE("the DNS stub drops responses and answers malformed queries FORMERR or NOTIMP", "[dns-stub]") {
  auto q = egress::build_dns_query(1, "example.com", 1);
  CHECK(egress::answer_dns_query(std::span(q).first(11)).reply.empty());  // shorter than a header
  auto response = q;
  response[2] |= 0x80;
  CHECK(egress::answer_dns_query(response).reply.empty());  // never answer an answer: no loops

  auto update = q;
  update[2] = 5 << 3;  // UPDATE
  const auto u = egress::answer_dns_query(update);
  CHECK(u.rcode == egress::kDnsNotImp);
  CHECK(u.reply.size() == 12);
  CHECK(u.name.empty());

  auto two = q;
  two[5] = 2;
  CHECK(egress::answer_dns_query(two).rcode == egress::kDnsFormErr);
  CHECK(egress::answer_dns_query(std::span(q).first(q.size() - 1)).rcode == egress::kDnsFormErr);  // QCLASS cut
  auto pointer = bytes({0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1});
  const auto p = egress::answer_dns_query(pointer);
  CHECK(p.rcode == egress::kDnsFormErr);
  CHECK(p.reply.size() == 12);
  CHECK(p.reply[5] == 0);  // no question echoed
  // 255 octets at most on the wire: 4 labels of 63 are 256 with the root.
  const std::string label(63, 'x');
  CHECK(egress::answer_dns_query(egress::build_dns_query(1, label + "." + label + "." + label + "." + label, 1)).rcode ==
        egress::kDnsFormErr);
  CHECK(egress::answer_dns_query(egress::build_dns_query(1, label + "." + label + "." + label + "." + label.substr(2), 1))
            .rcode == egress::kDnsRefused);
}

TEST_CASE("the proxy's DNS stub answers from the address it was asked at, counts and records", "[dns-stub]") {
  Harness h;
  // 127.0.0.53 is systemd-resolved's stub address: the answer must come from there, not from
  // 127.0.0.1 (the socket is bound to the wildcard; IP_PKTINFO picks the source).
  for (const char* address : {"127.0.0.1", "127.0.0.53"}) {
    INFO(address);
    const auto q = egress::build_dns_query(0x1234, "exfil.example.net", 1);
    const auto a = ask(address, h.dns_port, q);
    REQUIRE(a.size() == q.size());
    CHECK(a[3] == egress::kDnsRefused);
  }
  // The records are written off the loop: wait for `n` of them (a minute at most).
  auto wait_for = [&](size_t n) {
    for (int i = 0; i < 6000 && h.recorded().size() < n; ++i) std::this_thread::sleep_for(10ms);
    return h.recorded();
  };
  auto records = wait_for(2);
  REQUIRE(records.size() == 2);
  CHECK(records[0].method == "DNS");
  CHECK(records[0].host == "exfil.example.net");
  CHECK(records[0].port == 53);
  CHECK(records[0].verdict == "dns_refused");
  CHECK(records[0].time == h.now.load());
  CHECK_FALSE(records[0].allow);
  CHECK(records[0].agent == "coder");
  CHECK(h.proxy->counters("coder").dns_refused == 2);

  // A flood within one second of the proxy's clock: every query answered, 10 recorded.
  for (int i = 0; i < 40; ++i) CHECK(ask("127.0.0.1", h.dns_port, egress::build_dns_query(static_cast<uint16_t>(i), "x.test", 1)).size() > 12);
  CHECK(h.proxy->counters("coder").dns_refused == 42);
  CHECK(wait_for(10).size() == 10);
  // The next second's first record says how many went unrecorded; past its ten, the rest are
  // summed up in one record when the agent stops.
  h.now += 1;
  for (int i = 0; i < 13; ++i) CHECK(ask("127.0.0.1", h.dns_port, egress::build_dns_query(7, "y.test", 1)).size() > 12);
  CHECK(wait_for(20).size() == 20);
  h.proxy->stop_agent("coder");
  records = wait_for(21);
  REQUIRE(records.size() == 21);
  int carried = 0, summed = 0;
  for (const auto& r : records) {
    carried += r.reason.find("; 32 more queries since the last record") != std::string::npos;
    summed += r.host == "(queries not recorded one by one)" && r.reason.starts_with("3 more queries refused");
  }
  CHECK(carried == 1);
  CHECK(summed == 1);
}
