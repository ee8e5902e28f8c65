// What the hub makes of text a node or a browser sent before it reaches a page or PostgreSQL:
// hub::search_text (the search columns), a decision's detail read for them
// (hub::fill_search_columns), and the console's url_decode and escape. The first byte picks
// the length limit. Whatever the bytes: search_text gives well-formed UTF-8 with no NUL within
// the limit, and escape leaves no markup character.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "console.h"
#include "outpost/hub/ingest.h"

using namespace outpost;

namespace {

// RFC 3629 well-formedness, written apart from the code under test.
bool well_formed(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c == 0 ? 0 : c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xc0) != 0x80) return false;
      cp = cp << 6 | (b & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t limit = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);

  const std::string clean = hub::search_text(text, limit);
  if (clean.size() > limit || !well_formed(clean)) std::abort();

  offline_cache::AuditRecord r;
  r.kind = offline_cache::RecordKind::decision;
  r.event = text;
  r.agent = text;
  r.detail = text;
  hub::RecordRow row;
  hub::fill_search_columns(r, row);
  for (const std::string* s : {&row.agent, &row.event, &row.subject, &row.verdict, &row.reason}) {
    if (!well_formed(*s)) std::abort();
  }
  if (!row.verdict.empty() && row.verdict != "allow" && row.verdict != "deny") std::abort();

  const std::string escaped = hub::console::escape(hub::console::url_decode(text));
  if (escaped.find_first_of("<>\"'") != std::string::npos) std::abort();
  if (hub::console::url_decode(hub::console::url_encode(text)) != text) std::abort();
  return 0;
}
