// The Prometheus text exposition (base/metrics.h) and outpostd's loopback endpoint for it
// (daemon/metrics_http.h): the format as Prometheus' parser reads it, cumulative buckets,
// escaping, the bounded label sets, and a real HTTP exchange on a free loopback port.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>

#include "daemon/config.h"
#include "daemon/metrics_http.h"
#include "outpost/base/metrics.h"
#include "test_support.h"

using namespace outpost;

namespace {

bool name_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

// A metric name at `at`, moved past it; "" when there is none.
std::string read_name(const std::string& line, size_t& at) {
  const size_t start = at;
  while (at < line.size() && name_char(line[at], at == start)) ++at;
  return line.substr(start, at - start);
}

// One sample line as Prometheus' text parser reads it: name, optional {label="value",...} with
// \\, \" and \n the only escapes, a space, a float (or +Inf, -Inf, NaN). Its name, or "".
std::string sample_name(const std::string& line) {
  size_t at = 0;
  std::string name = read_name(line, at);
  if (name.empty()) return "";
  if (at < line.size() && line[at] == '{') {
    ++at;
    for (bool first = true;; first = false) {
      if (at < line.size() && line[at] == '}' && first) break;
      if (!first) {
        if (at >= line.size()) return "";
        if (line[at] == '}') break;
        if (line[at++] != ',') return "";
      }
      const size_t label_start = at;
      while (at < line.size() && name_char(line[at], at == label_start) && line[at] != ':') ++at;
      if (at == label_start || at + 1 >= line.size() || line[at] != '=' || line[at + 1] != '"') return "";
      at += 2;
      for (;;) {
        if (at >= line.size()) return "";
        if (line[at] == '"') break;
        if (line[at] == '\\') {
          if (at + 1 >= line.size() || (line[at + 1] != '\\' && line[at + 1] != '"' && line[at + 1] != 'n')) return "";
          ++at;
        }
        ++at;
      }
      ++at;  // the closing quote
    }
    ++at;  // the closing brace
  }
  if (at >= line.size() || line[at] != ' ') return "";
  const std::string value = line.substr(at + 1);
  if (value == "+Inf" || value == "-Inf" || value == "NaN") return name;
  char* end = nullptr;
  std::strtod(value.c_str(), &end);
  return !value.empty() && end == value.c_str() + value.size() ? name : "";
}

// Every line of an exposition is a HELP, a TYPE or a sample of the family declared just
// before it (text format 0.0.4); returns the first line that is not, or "".
std::string bad_line(const std::string& text) {
  std::istringstream in(text);
  std::string family;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("# HELP ")) {
      size_t at = 7;
      if (read_name(line, at).empty() || at >= line.size() || line[at] != ' ') return line;
      continue;
    }
    if (line.starts_with("# TYPE ")) {
      size_t at = 7;
      family = read_name(line, at);
      const std::string type = at < line.size() ? line.substr(at + 1) : "";
      if (family.empty() || (type != "counter" && type != "gauge" && type != "histogram")) return line;
      continue;
    }
    const std::string name = sample_name(line);
    if (name.empty()) return line;
    if (name != family && name != family + "_bucket" && name != family + "_sum" && name != family + "_count") return line;
  }
  return "";
}

}  // namespace

TEST_CASE("the exposition writes families, escaped labels and cumulative histograms", "[metrics]") {
  metrics::Histogram h;
  h.observe_ns(5'000);          // 5 µs: the first bucket
  h.observe_ns(300'000);        // 300 µs: le=0.0005
  h.observe_ns(20'000'000'000); // 20 s: only +Inf
  metrics::CounterFamily decisions({"agent", "verdict"});
  decisions.add({"coder", "allowed_by_rule"}, 3);
  decisions.add({"odd \"one\"\\\n", "denied"});
  metrics::Writer w;
  w.family("outpost_x_seconds", "histogram", "A help text with a \\ and a\nnewline");
  w.histogram("outpost_x_seconds", {{"route", "records"}}, h.snapshot());
  w.family("outpost_decisions_total", "counter", "Decisions");
  w.counters("outpost_decisions_total", decisions);
  w.family("outpost_up", "gauge", "Up");
  w.sample("outpost_up", {}, 1);
  w.sample("outpost_up", {{"x", "y"}}, 0.25);
  const std::string text = w.take();
  INFO(text);
  CHECK(bad_line(text).empty());
  CHECK_THAT(text, Catch::Contains("# HELP outpost_x_seconds A help text with a \\\\ and a\\nnewline\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_bucket{route=\"records\",le=\"1e-05\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_bucket{route=\"records\",le=\"0.00025\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_bucket{route=\"records\",le=\"0.0005\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_bucket{route=\"records\",le=\"10\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_bucket{route=\"records\",le=\"+Inf\"} 3\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_count{route=\"records\"} 3\n"));
  CHECK_THAT(text, Catch::Contains("outpost_x_seconds_sum{route=\"records\"} 20.000305\n"));
  CHECK_THAT(text, Catch::Contains("outpost_decisions_total{agent=\"coder\",verdict=\"allowed_by_rule\"} 3\n"));
  CHECK_THAT(text, Catch::Contains("outpost_decisions_total{agent=\"odd \\\"one\\\"\\\\\\n\",verdict=\"denied\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("outpost_up 1\noutpost_up{x=\"y\"} 0.25\n"));
}

TEST_CASE("a counter family keeps a bounded number of label sets", "[metrics]") {
  metrics::CounterFamily f({"rule"}, 3);
  for (int i = 0; i < 10; ++i) f.add({"r" + std::to_string(i)});
  f.add({"r0"}, 5);
  uint64_t total = 0, other = 0;
  const auto all = f.snapshot();
  CHECK(all.size() == 4);  // three, and the one everything past them folds into
  for (const auto& [values, n] : all) {
    REQUIRE(values.size() == 1);
    total += n;
    if (values[0] == "_other") other = n;
  }
  CHECK(total == 15);
  CHECK(other == 7);
}

TEST_CASE("outpostd's metrics listener answers GET /metrics on loopback and nothing else", "[metrics]") {
  boost::asio::io_context io;
  auto listener = daemon::MetricsListener::start(io, "127.0.0.1:0", [] { return std::string("outpost_up 1\n"); });
  REQUIRE(listener);
  const uint16_t port = (*listener)->port();
  REQUIRE(port != 0);
  auto guard = boost::asio::make_work_guard(io);
  std::thread loop([&] { io.run(); });
  auto exchange = [&](const std::string& request) { return testing::loopback_exchange(port, request); };
  const std::string ok = exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_THAT(ok, Catch::StartsWith("HTTP/1.1 200 OK\r\n"));
  CHECK_THAT(ok, Catch::Contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  CHECK_THAT(ok, Catch::EndsWith("\r\n\r\noutpost_up 1\n"));
  CHECK_THAT(exchange("GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n"), Catch::StartsWith("HTTP/1.1 404"));
  CHECK_THAT(exchange("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), Catch::StartsWith("HTTP/1.1 405"));
  CHECK(exchange("not http\r\n\r\n").empty());  // closed without an answer
  listener->reset();
  guard.reset();
  io.stop();
  loop.join();

  // Only loopback addresses, in the config as in the listener.
  CHECK_FALSE(daemon::MetricsListener::start(io, "0.0.0.0:9464", [] { return std::string(); }));
  CHECK_FALSE(daemon::MetricsListener::start(io, "192.0.2.1:9464", [] { return std::string(); }));
  CHECK(daemon::parse_daemon_config("metrics: {listen: \"[::1]:9464\"}\n", "t.yaml"));
  CHECK_FALSE(daemon::parse_daemon_config("metrics: {listen: \"0.0.0.0:9464\"}\n", "t.yaml"));
  CHECK_FALSE(daemon::parse_daemon_config("metrics: {listen: \"127.0.0.1\"}\n", "t.yaml"));
  CHECK_FALSE(daemon::parse_daemon_config("metrics: {listen: \"127.0.0.1:70000\"}\n", "t.yaml"));
}
