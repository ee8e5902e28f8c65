#include "outpost/base/time.h"

#include <charconv>
#include <chrono>
#include <ctime>

namespace outpost {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::optional<int64_t> parse_rfc3339_utc(std::string_view s) {
  // YYYY-MM-DDTHH:MM:SSZ
  if (s.size() != 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
      s[16] != ':' || (s[19] != 'Z' && s[19] != 'z')) {
    return std::nullopt;
  }
  auto num = [&](size_t at, size_t len, int lo, int hi) -> std::optional<int> {
    int v = 0;
    auto [p, ec] = std::from_chars(s.data() + at, s.data() + at + len, v);
    if (ec != std::errc() || p != s.data() + at + len || v < lo || v > hi) return std::nullopt;
    return v;
  };
  auto year = num(0, 4, 1970, 9999), mon = num(5, 2, 1, 12), day = num(8, 2, 1, 31), hour = num(11, 2, 0, 23),
       min = num(14, 2, 0, 59), sec = num(17, 2, 0, 59);
  if (!year || !mon || !day || !hour || !min || !sec) return std::nullopt;
  std::tm tm{};
  tm.tm_year = *year - 1900;
  tm.tm_mon = *mon - 1;
  tm.tm_mday = *day;
  tm.tm_hour = *hour;
  tm.tm_min = *min;
  tm.tm_sec = *sec;
  std::time_t t = timegm(&tm);
  // timegm normalises 31 February into March: reject dates that do not round-trip.
  std::tm back{};
  gmtime_r(&t, &back);
  if (back.tm_mday != *day || back.tm_mon != *mon - 1) return std::nullopt;
  return static_cast<int64_t>(t);
}

std::string format_rfc3339_utc(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace outpost
