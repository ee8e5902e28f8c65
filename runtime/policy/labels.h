// Names people write in policy and requests: sensitivity levels and UTC times.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace outpost::policy {

// public 0, internal 1, confidential 2, secret 3.
std::optional<uint8_t> sensitivity_from_name(std::string_view name);
std::string_view sensitivity_name(uint8_t level);  // "level-7" style names are not produced: > 3 is "secret+"

// "2026-11-28T10:00:00Z" (UTC only, no fractions) <-> Unix seconds.
std::optional<int64_t> parse_rfc3339_utc(std::string_view text);
std::string format_rfc3339_utc(int64_t t);

}  // namespace outpost::policy
