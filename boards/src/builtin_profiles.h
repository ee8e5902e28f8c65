// The profiles in boards/profiles/, compiled in by CMake (see boards/CMakeLists.txt).
#pragma once

#include <span>
#include <string_view>

namespace outpost::boards::detail {

struct BuiltinProfile {
  std::string_view name;
  std::string_view yaml;
};

std::span<const BuiltinProfile> builtin_profiles();

}  // namespace outpost::boards::detail
