// Internal to offline-cache: the audit log's segment files, seg-<first seq, 20 digits>.oal.
#pragma once

#include <cstdint>
#include <filesystem>
#include <utility>
#include <vector>

#include "outpost/base/result.h"

namespace outpost::offline_cache::detail {

// The segments in `dir` in sequence order, each with the first sequence number its name
// promises. Other files are ignored.
Result<std::vector<std::pair<uint64_t, std::filesystem::path>>> list_segments(const std::filesystem::path& dir);

}  // namespace outpost::offline_cache::detail
