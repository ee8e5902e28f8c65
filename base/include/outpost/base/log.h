// Structured logging: an event name plus key=value fields, written to stderr either for
// people ("2026-11-28T10:00:00.123Z info  node.init srk=0x81000001") or as one JSON object
// per line for collectors. Thread-safe: each record is written with one write(2).
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace outpost::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };
enum class Format { human, json };

struct Field {
  std::string_view key;
  std::string value;
};

// Process-wide settings; the defaults are info and human. OUTPOST_LOG=debug|info|warn|error
// and OUTPOST_LOG_FORMAT=json|human are read by configure_from_env().
void configure(Level min_level, Format format);
void configure_from_env();
bool enabled(Level level);

// Renders one record without writing it (used by tests and by write()).
std::string render(Level level, std::string_view event, std::initializer_list<Field> fields,
                   Format format);
void write(Level level, std::string_view event, std::initializer_list<Field> fields = {});

inline void debug(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::debug, e, f); }
inline void info(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::info, e, f); }
inline void warn(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::warn, e, f); }
inline void error(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::error, e, f); }

}  // namespace outpost::log
