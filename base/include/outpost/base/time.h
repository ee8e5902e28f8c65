// Wall-clock time as outpost writes and reads it: Unix seconds, RFC 3339 in UTC.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace outpost {

int64_t unix_now();
// "2026-11-28T10:00:00Z" (UTC only, whole seconds) <-> Unix seconds. Dates that do not exist
// (31 February) are refused.
std::optional<int64_t> parse_rfc3339_utc(std::string_view text);
std::string format_rfc3339_utc(int64_t t);

}  // namespace outpost
