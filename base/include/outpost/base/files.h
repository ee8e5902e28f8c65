// File helpers for state that must survive power loss. write_file_atomic() is the only way
// outpost replaces a file: temp file in the same directory, write, fsync, rename over the
// target, fsync the directory. A reader sees the old or the new content, never a mix, and a
// failure (a full disk, say) leaves the old file as it was.
#pragma once

#include <filesystem>
#include <string>

#include "outpost/base/bytes.h"
#include "outpost/base/result.h"

namespace outpost {

// Reads a whole file; refuses files larger than `max_bytes` (untrusted input stays bounded).
Result<Bytes> read_file(const std::filesystem::path& path, size_t max_bytes = 64 << 20);
Result<std::string> read_text_file(const std::filesystem::path& path, size_t max_bytes = 64 << 20);

Result<void> write_file_atomic(const std::filesystem::path& path, ByteView data, unsigned mode = 0644);
inline Result<void> write_file_atomic(const std::filesystem::path& path, std::string_view text,
                                      unsigned mode = 0644) {
  return write_file_atomic(path, as_bytes(text), mode);
}

// Creates the directory (and parents) with `mode` when missing; fsyncs the parent of every
// directory it creates.
Result<void> ensure_directory(const std::filesystem::path& path, unsigned mode = 0700);

// fsync(2) of a directory: makes a file created or renamed in it survive power loss.
Result<void> fsync_directory(const std::filesystem::path& dir);

bool file_exists(const std::filesystem::path& path);

}  // namespace outpost
