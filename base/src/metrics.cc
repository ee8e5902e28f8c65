#include "outpost/base/metrics.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace outpost::metrics {

void Histogram::observe_ns(uint64_t ns) {
  const double s = static_cast<double>(ns) / 1e9;  // correctly rounded: 10000 ns is exactly the 1e-05 bound
  size_t i = 0;
  while (i < kBounds.size() && s > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    s.count += s.buckets[i];
  }
  s.sum_seconds = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

void CounterFamily::add(const std::vector<std::string_view>& values, uint64_t n) {
  std::string key;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) key += '\0';
    key += values[i];
  }
  std::lock_guard lock(mu_);
  auto it = series_.find(key);
  if (it == series_.end()) {
    if (series_.size() >= max_series_) {
      key.clear();
      for (size_t i = 0; i < names_.size(); ++i) key += i > 0 ? std::string_view("\0_other", 7) : std::string_view("_other");
    }
    it = series_.try_emplace(std::move(key), 0).first;
  }
  it->second += n;
}

std::vector<std::pair<std::vector<std::string>, uint64_t>> CounterFamily::snapshot() const {
  std::vector<std::pair<std::vector<std::string>, uint64_t>> out;
  std::lock_guard lock(mu_);
  out.reserve(series_.size());
  for (const auto& [key, n] : series_) {
    std::vector<std::string> values;
    size_t start = 0;
    for (;;) {
      const size_t end = key.find('\0', start);
      values.emplace_back(key.substr(start, end == std::string::npos ? std::string::npos : end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
    out.emplace_back(std::move(values), n);
  }
  return out;
}

namespace {

// Label values escape backslash, double quote and line feed; HELP text backslash and line feed.
void escaped(std::string& out, std::string_view v, bool quote) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

void number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == std::floor(v) && std::fabs(v) < 9e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", v);
    out += buf;
  } else {
    char buf[32];  // the shortest text that reads back as the same double
    const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
    out.append(buf, r.ptr);
  }
}

}  // namespace

void Writer::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  escaped(out_, help, false);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void Writer::series(std::string_view name, const Labels& labels, std::string_view extra_name, std::string_view extra_value) {
  out_ += name;
  if (!labels.empty() || !extra_name.empty()) {
    out_ += '{';
    bool first = true;
    auto one = [&](std::string_view k, std::string_view v) {
      if (!first) out_ += ',';
      first = false;
      out_ += k;
      out_ += "=\"";
      escaped(out_, v, true);
      out_ += '"';
    };
    for (const auto& [k, v] : labels) one(k, v);
    if (!extra_name.empty()) one(extra_name, extra_value);
    out_ += '}';
  }
  out_ += ' ';
}

void Writer::sample(std::string_view name, const Labels& labels, double value) {
  series(name, labels);
  number(out_, value);
  out_ += '\n';
}

void Writer::histogram(std::string_view name, const Labels& labels, const Histogram::Snapshot& s) {
  const std::string bucket = std::string(name) + "_bucket";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < s.buckets.size(); ++i) {
    cumulative += s.buckets[i];
    std::string le;
    if (i < Histogram::kBounds.size()) {
      number(le, Histogram::kBounds[i]);
    } else {
      le = "+Inf";
    }
    series(bucket, labels, "le", le);
    number(out_, static_cast<double>(cumulative));
    out_ += '\n';
  }
  sample(std::string(name) + "_sum", labels, s.sum_seconds);
  sample(std::string(name) + "_count", labels, static_cast<double>(cumulative));
}

void Writer::counters(std::string_view name, const CounterFamily& family) {
  for (const auto& [values, n] : family.snapshot()) {
    Labels labels;
    for (size_t i = 0; i < values.size() && i < family.label_names().size(); ++i) labels.emplace_back(family.label_names()[i], values[i]);
    sample(name, labels, static_cast<double>(n));
  }
}

}  // namespace outpost::metrics
