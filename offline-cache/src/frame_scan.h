// Internal to offline-cache: walking audit frames past damage, for evidence export (a node's
// segments) and evidence verification (a package's records).
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "outpost/base/bytes.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::offline_cache::detail {

// Every whole, valid frame of `bytes` in order, to each(record, frame bytes), with
// record.offset counted from the start of `bytes`. Unlike parse_segment it checks no links
// (the caller's chain check names a break) and does not stop at damage: a stretch that is not
// a valid frame is skipped to the next valid frame and reported to damaged(offset, length,
// torn, what); torn is set when nothing valid follows (an unfinished write at the end). Time
// is linear in the input: the hashing spent on stretches that are not frames is bounded, and
// past the bound the rest is reported as damage, not examined.
void scan_frames(ByteView bytes, std::string_view name, const std::function<void(const AuditRecord&, ByteView)>& each,
                 const std::function<void(uint64_t, uint64_t, bool, const std::string&)>& damaged);

}  // namespace outpost::offline_cache::detail
