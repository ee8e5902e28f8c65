#include "compiler_input.h"

#include "outpost/base/time.h"
#include "policy/labels.h"

#include <re2/re2.h>

#include <charconv>
#include <cmath>
#include <ctime>

#include "match.h"
#include "outpost/base/errors.h"

namespace outpost::policy::input {
namespace {

int line_of(const YAML::Node& n, int fallback) {
  const YAML::Mark m = n.Mark();
  return m.is_null() ? fallback : m.line + 1;
}

std::string child_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_lower_alnum(char c) { return is_digit(c) || (c >= 'a' && c <= 'z'); }
bool is_alnum(char c) { return is_lower_alnum(c) || (c >= 'A' && c <= 'Z'); }

// Decimal digits only (no sign, no spaces); nullopt when empty, not digits or above `max`.
std::optional<uint64_t> parse_decimal(std::string_view s, uint64_t max) {
  if (s.empty()) return std::nullopt;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
  }
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v > max) return std::nullopt;
  return v;
}

// Two digits at s[i], s[i+1].
std::optional<int> two_digits(std::string_view s, size_t i) {
  if (i + 1 >= s.size() || !is_digit(s[i]) || !is_digit(s[i + 1])) return std::nullopt;
  return (s[i] - '0') * 10 + (s[i + 1] - '0');
}

}  // namespace

std::string in_quotes(std::string_view s) {
  static constexpr size_t kShown = 80;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kShown) out += "...";
  return out + "\"";
}

// ---- Map -------------------------------------------------------------------------------

const Field* Map::find(std::string_view key) const {
  for (const auto& [k, v] : entries_) {
    if (k == key) return &v;
  }
  return nullptr;
}

std::optional<Field> Map::get(std::string_view key) const {
  const Field* f = find(key);
  if (f == nullptr) return std::nullopt;
  return *f;
}

Result<Field> Map::require(std::string_view key) const {
  const Field* f = find(key);
  if (f != nullptr) return *f;
  Field missing{self_.node, child_path(self_.path, key), self_.line};
  return reader_->fail(missing, "missing required field");
}

// ---- Reader: structure -------------------------------------------------------------------

Failure Reader::fail(const Field& at, std::string_view what) const {
  std::string msg = where(at.line) + ": ";
  if (!at.path.empty()) msg += at.path + ": ";
  msg += what;
  return outpost::fail(errc::invalid_argument, std::move(msg));
}

Field Reader::root(const YAML::Node& doc) { return Field{doc, "", line_of(doc, 1)}; }

Result<Map> Reader::map(const Field& f, std::initializer_list<std::string_view> allowed) {
  if (!f.node.IsMap()) {
    return fail(f, f.path.empty() ? "the policy must be a mapping of fields" : "must be a mapping of fields");
  }
  Map m;
  m.reader_ = this;
  m.self_ = f;
  for (const auto& kv : f.node) {
    const YAML::Node& k = kv.first;
    const int key_line = line_of(k, f.line);
    if (!k.IsScalar()) return fail(Field{k, f.path, key_line}, "a field name must be a plain string");
    const std::string& key = k.Scalar();
    // A field is named at its key's line: a block list or mapping starts on the next line, and
    // a missing value's mark points past the key.
    Field value{kv.second, child_path(f.path, key), key_line};
    bool known = false;
    for (std::string_view a : allowed) known = known || a == key;
    if (!known) return fail(Field{k, child_path(f.path, key), key_line}, "unknown field");
    if (const Field* first = m.find(key)) {
      return fail(Field{k, value.path, key_line}, "field given twice (first at line " + std::to_string(first->line) + ")");
    }
    OUTPOST_TRY_VOID(charge(value, 16));
    m.entries_.emplace_back(key, std::move(value));
  }
  return m;
}

Result<std::vector<Field>> Reader::list(const Field& f) {
  if (!f.node.IsSequence()) return fail(f, "must be a list");
  std::vector<Field> items;
  items.reserve(f.node.size());
  size_t i = 0;
  for (const auto& node : f.node) {
    Field item{node, f.path + "[" + std::to_string(i++) + "]", f.line};
    if (!node.IsNull()) item.line = line_of(node, f.line);
    OUTPOST_TRY_VOID(charge(item, 16));
    items.push_back(std::move(item));
  }
  return items;
}

Result<std::vector<Field>> Reader::nonempty_list(const Field& f, std::string_view empty_means) {
  OUTPOST_TRY(std::vector<Field> items, list(f));
  if (items.empty()) return fail(f, "empty list (omit the field for " + std::string(empty_means) + ")");
  return items;
}

Result<void> Reader::charge(const Field& at, size_t bytes) {
  charged_ += bytes;
  if (charged_ > kMaxCompiledBytes) {
    return fail(at, "the policy is too large: its bundle would exceed " + std::to_string(kMaxCompiledBytes >> 20) +
                        " MiB (are aliases repeating large lists?)");
  }
  return ok();
}

// ---- Reader: scalars -----------------------------------------------------------------------

Result<std::string_view> Reader::scalar(const Field& f, std::string_view expected) const {
  if (!f.node.IsScalar()) {
    const char* got = f.node.IsNull() ? "nothing" : f.node.IsMap() ? "a mapping" : "a list";
    return fail(f, "must be " + std::string(expected) + ", not " + got);
  }
  return std::string_view(f.node.Scalar());
}

Result<std::string_view> Reader::plain_scalar(const Field& f, std::string_view expected) const {
  OUTPOST_TRY(std::string_view s, scalar(f, expected));
  // "?" is yaml-cpp's tag for a plain (unquoted, untagged) scalar; "7" in quotes is a string.
  if (f.node.Tag() != "?") return fail(f, "must be " + std::string(expected) + ", not a quoted or tagged string");
  return s;
}

Result<std::string> Reader::string(const Field& f, size_t max_bytes) {
  OUTPOST_TRY(std::string_view s, scalar(f, "a string"));
  if (s.size() > max_bytes) return fail(f, "longer than " + std::to_string(max_bytes) + " bytes");
  OUTPOST_TRY_VOID(charge(f, s.size()));
  return std::string(s);
}

Result<bool> Reader::boolean(const Field& f) {
  OUTPOST_TRY(std::string_view s, plain_scalar(f, "true or false"));
  if (s == "true") return true;
  if (s == "false") return false;
  return fail(f, "must be true or false, not " + in_quotes(s));
}

Result<uint64_t> Reader::unsigned_int(const Field& f, uint64_t max) {
  OUTPOST_TRY(std::string_view s, plain_scalar(f, "a whole number"));
  auto v = parse_decimal(s, max);
  if (!v) return fail(f, "must be a whole number from 0 to " + std::to_string(max) + ", not " + in_quotes(s));
  return *v;
}

Result<double> Reader::number(const Field& f) {
  OUTPOST_TRY(std::string_view s, plain_scalar(f, "a number"));
  double v = 0;
  // Digits, sign, '.', exponent only: from_chars would also take "inf" and "nan".
  bool shape = !s.empty();
  for (char c : s) shape = shape && (is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E');
  const char* begin = s.data();
  if (shape && *begin == '+') ++begin;
  auto [ptr, ec] = std::from_chars(begin, s.data() + s.size(), v);
  if (!shape || ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) {
    return fail(f, "must be a finite number, not " + in_quotes(s));
  }
  return v;
}

Result<uint64_t> Reader::duration(const Field& f, uint64_t max) {
  OUTPOST_TRY(std::string_view s, plain_scalar(f, "a duration"));
  uint64_t unit = 1;
  std::string_view digits = s;
  if (!s.empty() && !is_digit(s.back())) {
    switch (s.back()) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      default: unit = 0; break;
    }
    digits = s.substr(0, s.size() - 1);
  }
  auto n = unit == 0 ? std::nullopt : parse_decimal(digits, UINT64_MAX / unit);
  if (!n) return fail(f, "must be a duration such as 90s, 5m, 72h, 7d or whole seconds, not " + in_quotes(s));
  const uint64_t seconds = *n * unit;
  if (seconds == 0) return fail(f, "must be a positive duration");
  if (seconds > max) return fail(f, "duration " + in_quotes(s) + " is longer than " + std::to_string(max) + " seconds");
  return seconds;
}

Result<uint64_t> Reader::byte_size(const Field& f) {
  OUTPOST_TRY(std::string_view s, plain_scalar(f, "a size"));
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {{"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30},
                                                                    {"TiB", 1ull << 40}};
  uint64_t unit = 1;
  std::string_view digits = s;
  for (const auto& [suffix, value] : kUnits) {
    if (s.ends_with(suffix)) {
      unit = value;
      digits = s.substr(0, s.size() - suffix.size());
    }
  }
  auto n = parse_decimal(digits, UINT64_MAX / unit);
  if (!n) return fail(f, "must be a size such as 65536, 512KiB, 100MiB or 2GiB, not " + in_quotes(s));
  if (*n == 0) return fail(f, "must be above 0 (omit it for no budget)");
  return *n * unit;
}

Result<int64_t> Reader::time(const Field& f) {
  OUTPOST_TRY(std::string_view s, plain_scalar(f, "a time"));
  if (auto unix_seconds = parse_decimal(s, INT64_MAX)) return static_cast<int64_t>(*unix_seconds);
  if (auto t = parse_rfc3339_utc(s)) return *t;
  return fail(f, "must be an RFC 3339 UTC time such as 2026-11-01T00:00:00Z or Unix seconds, not " + in_quotes(s));
}

Result<uint8_t> Reader::sensitivity(const Field& f) {
  OUTPOST_TRY(std::string_view s, scalar(f, "a sensitivity level"));
  if (auto level = sensitivity_from_name(s)) return *level;
  return fail(f, "must be public, internal, confidential or secret, not " + in_quotes(s));
}

Result<uint8_t> Reader::day_bit(const Field& f) {
  OUTPOST_TRY(std::string_view s, scalar(f, "a day"));
  static constexpr std::string_view kDays[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  for (size_t i = 0; i < std::size(kDays); ++i) {
    if (s == kDays[i]) return static_cast<uint8_t>(1u << i);
  }
  return fail(f, "must be one of mon, tue, wed, thu, fri, sat, sun, not " + in_quotes(s));
}

Result<uint16_t> Reader::minute_of_day(const Field& f) {
  OUTPOST_TRY(std::string_view s, scalar(f, "a time of day"));
  auto h = two_digits(s, 0), m = two_digits(s, 3);
  if (s.size() != 5 || s[2] != ':' || !h || !m || *h > 23 || *m > 59) {
    return fail(f, "must be a time of day from \"00:00\" to \"23:59\", not " + in_quotes(s));
  }
  return static_cast<uint16_t>(*h * 60 + *m);
}

Result<Bytes> Reader::digest(const Field& f) {
  OUTPOST_TRY(std::string_view s, scalar(f, "64 hex digits"));
  bool hex = s.size() == 64;
  for (char c : s) hex = hex && (is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
  if (!hex) return fail(f, "must be a SHA-256 digest in 64 hex digits, not " + in_quotes(s));
  auto bytes = hex_decode(s);
  if (!bytes) return fail(f, "must be a SHA-256 digest in 64 hex digits");
  OUTPOST_TRY_VOID(charge(f, bytes->size()));
  return std::move(*bytes);
}

Result<std::string> Reader::glob(const Field& f) {
  OUTPOST_TRY(std::string s, string(f));
  if (!glob_valid(s)) return fail(f, "not a usable glob " + in_quotes(s) + " (1-256 bytes, no control characters)");
  return s;
}

Result<std::string> Reader::agent_name(const Field& f) {
  OUTPOST_TRY(std::string s, string(f));
  bool good = !s.empty() && s.size() <= 63 && is_lower_alnum(s[0]);
  for (char c : s) good = good && (is_lower_alnum(c) || c == '.' || c == '_' || c == '-');
  if (!good) {
    return fail(f, "agent name " + in_quotes(s) + " must be 1-63 of a-z 0-9 . _ - and start with a letter or digit");
  }
  return s;
}

Result<std::string> Reader::identifier(const Field& f, std::string_view what) {
  OUTPOST_TRY(std::string s, string(f));
  bool good = !s.empty() && s.size() <= 128 && is_alnum(s[0]);
  for (char c : s) good = good && (is_alnum(c) || c == '.' || c == '_' || c == '-');
  if (!good) {
    return fail(f, std::string(what) + " " + in_quotes(s) +
                       " must be 1-128 of A-Z a-z 0-9 . _ - and start with a letter or digit");
  }
  return s;
}

Result<std::string> Reader::json_pointer(const Field& f) {
  OUTPOST_TRY(std::string s, string(f, 1024));
  bool good = s.empty() || s[0] == '/';
  for (size_t i = 0; good && i < s.size(); ++i) {
    if (s[i] == '~') good = i + 1 < s.size() && (s[i + 1] == '0' || s[i + 1] == '1');
  }
  if (!good) {
    return fail(f, "not an RFC 6901 JSON pointer " + in_quotes(s) + " (\"\" or \"/a/b\"; '~' only as ~0 or ~1)");
  }
  return s;
}

Result<std::string> Reader::absolute_path(const Field& f) {
  OUTPOST_TRY(std::string s, string(f, kMaxPath / 2));
  PathBuffer buf;
  auto norm = s.empty() || s[0] != '/' ? std::nullopt : normalize_path(s, buf);
  if (!norm) {
    return fail(f, "not a usable absolute path " + in_quotes(s) + " (must start with '/'; no NUL, bad or double %-escapes)");
  }
  return std::string(*norm);
}

Result<std::string> Reader::regex(const Field& f) {
  OUTPOST_TRY(std::string s, string(f));
  auto cached = regex_errors_.find(s);
  if (cached == regex_errors_.end()) {
    RE2::Options options;
    options.set_log_errors(false);
    RE2 re(s, options);
    cached = regex_errors_.emplace(s, re.ok() ? std::string() : re.error()).first;
  }
  if (!cached->second.empty()) return fail(f, "invalid RE2 pattern " + in_quotes(s) + ": " + cached->second);
  return s;
}

}  // namespace outpost::policy::input
