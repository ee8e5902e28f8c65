#include "outpost/base/log.h"

#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <ctime>

namespace outpost::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::info)};
std::atomic<int> g_format{static_cast<int>(Format::human)};

const char* level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "?";
}

std::string timestamp() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms % 1000));
  return buf;
}

bool needs_quotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

}  // namespace

void configure(Level min_level, Format format) {
  g_level = static_cast<int>(min_level);
  g_format = static_cast<int>(format);
}

void configure_from_env() {
  Level level = static_cast<Level>(g_level.load());
  Format format = static_cast<Format>(g_format.load());
  if (const char* l = std::getenv("OUTPOST_LOG")) {
    std::string_view s(l);
    if (s == "debug") level = Level::debug;
    else if (s == "info") level = Level::info;
    else if (s == "warn") level = Level::warn;
    else if (s == "error") level = Level::error;
  }
  if (const char* f = std::getenv("OUTPOST_LOG_FORMAT")) {
    format = std::string_view(f) == "json" ? Format::json : Format::human;
  }
  configure(level, format);
}

bool enabled(Level level) { return static_cast<int>(level) >= g_level.load(); }

std::string render(Level level, std::string_view event, std::initializer_list<Field> fields,
                   Format format) {
  if (format == Format::json) {
    boost::json::object o;
    o["ts"] = timestamp();
    o["level"] = level_name(level);
    o["event"] = event;
    for (const auto& f : fields) o[f.key] = f.value;
    return boost::json::serialize(o) + "\n";
  }
  std::string line = timestamp();
  line += ' ';
  line += level_name(level);
  line.append(6 - std::string_view(level_name(level)).size(), ' ');
  line += event;
  for (const auto& f : fields) {
    line += ' ';
    line += f.key;
    line += '=';
    if (needs_quotes(f.value)) {
      line += boost::json::serialize(boost::json::string(f.value));
    } else {
      line += f.value;
    }
  }
  line += '\n';
  return line;
}

void write(Level level, std::string_view event, std::initializer_list<Field> fields) {
  if (!enabled(level)) return;
  std::string rec = render(level, event, fields, static_cast<Format>(g_format.load()));
  // One write(2) per record keeps lines whole between threads and processes.
  ssize_t n = ::write(STDERR_FILENO, rec.data(), rec.size());
  (void)n;
}

}  // namespace outpost::log
