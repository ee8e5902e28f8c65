// Names people write in policy and requests: sensitivity levels. (Times: outpost/base/time.h.)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace outpost::policy {

// public 0, internal 1, confidential 2, secret 3.
std::optional<uint8_t> sensitivity_from_name(std::string_view name);
std::string_view sensitivity_name(uint8_t level);  // "level-7" style names are not produced: > 3 is "secret+"

}  // namespace outpost::policy
