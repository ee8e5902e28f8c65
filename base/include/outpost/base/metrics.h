// Prometheus' text exposition format (version 0.0.4), for outpostd (`outpost metrics`, the
// optional loopback listener) and the hub (`GET /metrics`): docs/daemon.md and docs/hub.md,
// "Metrics". Written here rather than with prometheus-cpp: what is exposed is a few counters,
// gauges and fixed-bucket histograms rendered on demand from state the daemon keeps anyway,
// and the format is lines of text (docs/dependencies.md).
//
// Thread contract: Histogram and CounterFamily are safe to update from any thread; a Writer
// belongs to one.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace outpost::metrics {

using Labels = std::vector<std::pair<std::string_view, std::string_view>>;

// Durations in seconds, in fixed buckets from 10 µs to 10 s. observe() is two relaxed atomic
// adds: cheap enough for every call on the broker's path.
class Histogram {
 public:
  static constexpr std::array<double, 16> kBounds = {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
                                                     5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0, 10.0};
  void observe_ns(uint64_t ns);
  struct Snapshot {
    std::array<uint64_t, kBounds.size() + 1> buckets{};  // per bucket, not cumulative; the last is +Inf
    uint64_t count = 0;
    double sum_seconds = 0;
  };
  Snapshot snapshot() const;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_ns_{0};
};

// Counters whose label values arrive at run time (decisions by agent, verdict and rule).
// At most max_series label sets; past that, new ones are counted under one set whose values
// are all "_other", so a flood of distinct names cannot grow memory without bound.
class CounterFamily {
 public:
  CounterFamily(std::vector<std::string> label_names, size_t max_series = 4096)
      : names_(std::move(label_names)), max_series_(max_series) {}
  // values: one per label name, in order.
  void add(const std::vector<std::string_view>& values, uint64_t n = 1);
  // Every series, label values in order.
  std::vector<std::pair<std::vector<std::string>, uint64_t>> snapshot() const;
  const std::vector<std::string>& label_names() const { return names_; }

 private:
  const std::vector<std::string> names_;
  const size_t max_series_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, uint64_t> series_;  // values joined by '\0'
};

// One exposition, families in the order they are written.
class Writer {
 public:
  // HELP and TYPE lines; type is "counter", "gauge" or "histogram".
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, const Labels& labels, double value);
  // name_bucket{le=...} cumulative, name_sum and name_count.
  void histogram(std::string_view name, const Labels& labels, const Histogram::Snapshot& s);
  // A CounterFamily's series as samples of `name`.
  void counters(std::string_view name, const CounterFamily& family);
  std::string take() { return std::move(out_); }

 private:
  void series(std::string_view name, const Labels& labels, std::string_view extra_name = {}, std::string_view extra_value = {});
  std::string out_;
};

// The Content-Type of an exposition.
inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace outpost::metrics
