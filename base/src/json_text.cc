#include "outpost/base/json_text.h"

#include <boost/json/parse.hpp>

namespace outpost {

namespace {

bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// From an opening quote to just past its closing one; npos when the text ends first.
size_t skip_string(std::string_view t, size_t i) {
  for (++i; i < t.size(); ++i) {
    if (t[i] == '\\') {
      ++i;
    } else if (t[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// From the first byte of a value to just past it (strings and nested values skipped whole).
size_t skip_value(std::string_view t, size_t i) {
  for (int depth = 0; i < t.size();) {
    const char c = t[i];
    if (c == '"') {
      i = skip_string(t, i);
      if (i == std::string_view::npos) return i;
      if (depth == 0) return i;
      continue;
    }
    if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return i;  // the enclosing object ends: a scalar ended before it
      if (--depth == 0) return i + 1;
    } else if (depth == 0 && (c == ',' || space(c))) {
      return i;
    }
    ++i;
  }
  return i;
}

}  // namespace

std::optional<size_t> json_member_offset(std::string_view t, size_t i, std::string_view key) {
  const size_t n = t.size();
  if (i >= n || t[i] != '{') return std::nullopt;
  ++i;
  std::optional<size_t> found;
  for (;;) {
    while (i < n && space(t[i])) ++i;
    if (i < n && t[i] == '}') return found;
    if (i >= n || t[i] != '"') return std::nullopt;
    const size_t k = i;
    i = skip_string(t, i);
    if (i == std::string_view::npos) return std::nullopt;
    const std::string_view raw = t.substr(k, i - k);
    bool match = false;
    if (raw.find('\\') == std::string_view::npos) {
      match = raw.substr(1, raw.size() - 2) == key;
    } else {  // a key written with escapes: compared as it reads
      boost::system::error_code ec;
      boost::json::value name = boost::json::parse(raw, ec);
      match = !ec && name.is_string() && name.as_string() == key;
    }
    while (i < n && space(t[i])) ++i;
    if (i >= n || t[i] != ':') return std::nullopt;
    ++i;
    while (i < n && space(t[i])) ++i;
    if (i >= n) return std::nullopt;
    if (match) found = i;
    i = skip_value(t, i);
    if (i == std::string_view::npos) return std::nullopt;
    while (i < n && space(t[i])) ++i;
    if (i < n && t[i] == '}') return found;
    if (i >= n || t[i] != ',') return std::nullopt;
    ++i;
  }
}

std::string json_insert_members(std::string_view text, size_t object_at, std::string_view members) {
  std::string out;
  out.reserve(text.size() + members.size() + 1);
  out.append(text.substr(0, object_at + 1)).append(members);
  size_t next = object_at + 1;
  while (next < text.size() && space(text[next])) ++next;
  if (next < text.size() && text[next] != '}') out += ',';
  out.append(text.substr(object_at + 1));
  return out;
}

}  // namespace outpost
