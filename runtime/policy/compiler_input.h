// Strict reading of policy YAML for the compiler (compiler.cc). Private to runtime/policy.
//
// Every value is reached as a Field that carries its line and its field path, so every error
// reads "FILE:LINE: rules[2].args[0].regex: what is wrong". Mappings reject unknown and
// repeated keys; scalars are parsed here by hand (never by yaml-cpp's throwing conversions),
// and integers must be plain (unquoted) YAML scalars. Everything read is charged to a size
// budget, so that aliases (`*a`) cannot multiply a small source into a huge bundle.
// Not thread-safe: one Reader per compilation.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"

namespace outpost::policy::input {

// The node refuses bundles larger than this (offline_cache::kMaxBundleBytes); the compiler
// stops reading well before its output could exceed it.
inline constexpr size_t kMaxCompiledBytes = 64u << 20;

// A value in the source.
struct Field {
  YAML::Node node;
  std::string path;  // "rules[2].args[0]"; empty for the document itself
  int line = 1;      // 1-based
};

class Reader;

// A mapping whose keys were checked: strings, each allowed, none repeated.
class Map {
 public:
  const Field& self() const { return self_; }
  bool has(std::string_view key) const { return find(key) != nullptr; }
  std::optional<Field> get(std::string_view key) const;
  // The value, or "path.key: missing required field" at the mapping's line.
  Result<Field> require(std::string_view key) const;

 private:
  friend class Reader;
  const Field* find(std::string_view key) const;
  const Reader* reader_ = nullptr;
  Field self_;
  std::vector<std::pair<std::string, Field>> entries_;
};

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  const std::string& source() const { return source_; }
  // "FILE:LINE".
  std::string where(int line) const { return source_ + ":" + std::to_string(line); }
  // "FILE:LINE: path: what" (errc::invalid_argument).
  Failure fail(const Field& at, std::string_view what) const;

  // The document root as a Field (line 1, empty path).
  static Field root(const YAML::Node& doc);

  Result<Map> map(const Field& f, std::initializer_list<std::string_view> allowed);
  Result<std::vector<Field>> list(const Field& f);
  // A list that must have at least one item (an empty list would read as "any").
  Result<std::vector<Field>> nonempty_list(const Field& f, std::string_view empty_means);

  Result<std::string> string(const Field& f, size_t max_bytes = 4096);
  Result<bool> boolean(const Field& f);
  Result<uint64_t> unsigned_int(const Field& f, uint64_t max);
  Result<double> number(const Field& f);  // finite
  // "90s", "5m", "72h", "7d" or integer seconds; > 0 and <= max.
  Result<uint64_t> duration(const Field& f, uint64_t max);
  // Integer bytes or with a binary suffix: "512KiB", "100MiB", "2GiB"; > 0.
  Result<uint64_t> byte_size(const Field& f);
  // "2026-11-01T00:00:00Z" or integer Unix seconds.
  Result<int64_t> time(const Field& f);
  // public 0, internal 1, confidential 2, secret 3.
  Result<uint8_t> sensitivity(const Field& f);
  // mon..sun → bit 0..6.
  Result<uint8_t> day_bit(const Field& f);
  // "HH:MM" → minutes after midnight (0..1439).
  Result<uint16_t> minute_of_day(const Field& f);
  // 64 hex digits → 32 bytes.
  Result<Bytes> digest(const Field& f);
  // A usable glob (policy::glob_valid).
  Result<std::string> glob(const Field& f);
  // [a-z0-9._-]{1,63}, starting with a letter or digit: agent names.
  Result<std::string> agent_name(const Field& f);
  // [A-Za-z0-9._-]{1,128}, starting with a letter or digit: rule ids, tool servers and names.
  Result<std::string> identifier(const Field& f, std::string_view what);
  // RFC 6901: "" or "/..." with '~' only in "~0" and "~1".
  Result<std::string> json_pointer(const Field& f);
  // An absolute path, returned normalised (policy::normalize_path).
  Result<std::string> absolute_path(const Field& f);
  // An RE2 pattern that compiles (default options); returned as written.
  Result<std::string> regex(const Field& f);

  // Charges `bytes` of output to the size budget.
  Result<void> charge(const Field& at, size_t bytes);

 private:
  Result<std::string_view> scalar(const Field& f, std::string_view expected) const;
  Result<std::string_view> plain_scalar(const Field& f, std::string_view expected) const;

  std::string source_;
  size_t charged_ = 0;
  std::map<std::string, std::string, std::less<>> regex_errors_;  // pattern → RE2 error ("" = ok)
};

// A string for an error message: quoted, control characters escaped, long ones shortened.
std::string in_quotes(std::string_view s);

}  // namespace outpost::policy::input
