// Byte positions in JSON text, so that a message can gain members without being written out
// again: what its author wrote (numbers of any size, key order, escapes) reaches the reader as
// written. The text must be JSON that Boost.JSON has accepted already: these functions find
// positions in it (Boost.JSON's DOM keeps none); they do not validate.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace outpost {

// Where the value of member `key` of the object that starts at `object_at` (its '{') begins:
// of its last occurrence, the one Boost.JSON (and JavaScript) keep. Empty when the object has
// no such member or `object_at` is not at an object.
std::optional<size_t> json_member_offset(std::string_view text, size_t object_at, std::string_view key);

// `text` with `members` (e.g. `"a":1,"b":"x"`: whole members, no outer comma) first in the
// object that starts at `object_at`, with a comma after them unless the object was empty.
std::string json_insert_members(std::string_view text, size_t object_at, std::string_view members);

}  // namespace outpost
