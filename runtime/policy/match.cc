#include "match.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "outpost/base/bytes.h"

namespace outpost::policy {

bool glob_match(std::string_view p, std::string_view t) {
  size_t pi = 0, ti = 0;
  size_t star = std::string_view::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

bool glob_valid(std::string_view p) {
  if (p.empty() || p.size() > 256) return false;
  for (unsigned char c : p) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

bool glob_is_literal(std::string_view p) { return p.find_first_of("*?") == std::string_view::npos; }

std::optional<std::string_view> normalize_path(std::string_view path, PathBuffer& buf) {
  // Decode into a scratch area at the end of `buf`, then normalise into its start.
  if (path.empty() || path.size() > kMaxPath / 2) return std::nullopt;
  char* dec = buf.data() + kMaxPath / 2;
  size_t n = 0;
  for (size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '%') {
      if (i + 2 >= path.size()) return std::nullopt;
      int hi = hex_digit_value(path[i + 1]), lo = hex_digit_value(path[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      c = static_cast<char>(hi << 4 | lo);
      if (c == '%') return std::nullopt;  // double encoding: fail closed
      i += 2;
    }
    if (c == '\0') return std::nullopt;
    dec[n++] = c;
  }
  if (dec[0] != '/') return std::nullopt;
  // Normalise segment by segment; `out` never overtakes the decoded input.
  char* out = buf.data();
  size_t len = 0;
  size_t i = 0;
  while (i < n) {
    while (i < n && dec[i] == '/') ++i;
    size_t start = i;
    while (i < n && dec[i] != '/') ++i;
    std::string_view seg(dec + start, i - start);
    if (seg.empty() || seg == ".") continue;
    if (seg == "..") {
      while (len > 0 && out[len - 1] != '/') --len;
      if (len > 0) --len;  // drop the '/' too
      continue;
    }
    out[len++] = '/';
    std::memcpy(out + len, seg.data(), seg.size());
    len += seg.size();
  }
  if (len == 0) out[len++] = '/';
  return std::string_view(out, len);
}

bool path_under(std::string_view path, std::string_view prefix) {
  if (prefix == "/") return !path.empty() && path[0] == '/';
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  return path.size() == prefix.size() || path[prefix.size()] == '/';
}

namespace {
bool parse_ip(std::string_view text, int& family, std::array<uint8_t, 16>& out) {
  char buf[64];
  if (text.empty() || text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  out.fill(0);
  if (inet_pton(AF_INET, buf, out.data()) == 1) {
    family = AF_INET;
    return true;
  }
  if (inet_pton(AF_INET6, buf, out.data()) == 1) {
    family = AF_INET6;
    return true;
  }
  return false;
}
}  // namespace

std::optional<Cidr> parse_cidr(std::string_view text) {
  Cidr c;
  size_t slash = text.find('/');
  if (!parse_ip(text.substr(0, slash), c.family, c.addr)) return std::nullopt;
  int max = c.family == AF_INET ? 32 : 128;
  int prefix = max;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3) return std::nullopt;
    prefix = 0;
    for (char ch : p) {
      if (ch < '0' || ch > '9') return std::nullopt;
      prefix = prefix * 10 + (ch - '0');
    }
    if (prefix > max) return std::nullopt;
  }
  c.prefix = static_cast<uint8_t>(prefix);
  return c;
}

namespace {
bool prefix_equal(const std::array<uint8_t, 16>& addr, const Cidr& net) {
  int full = net.prefix / 8, rest = net.prefix % 8;
  if (std::memcmp(addr.data(), net.addr.data(), static_cast<size_t>(full)) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (addr[static_cast<size_t>(full)] & mask) == (net.addr[static_cast<size_t>(full)] & mask);
}
}  // namespace

bool cidr_covers(const Cidr& outer, const Cidr& inner) {
  return outer.family == inner.family && outer.prefix <= inner.prefix && prefix_equal(inner.addr, outer);
}

bool cidr_contains(const Cidr& net, std::string_view host) {
  int family = 0;
  std::array<uint8_t, 16> addr{};
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (!parse_ip(host, family, addr) || family != net.family) return false;
  return prefix_equal(addr, net);
}

namespace {
struct Special {
  Cidr net;
  std::string_view name;
};
// Most specific first: the first range that contains an address names it. RFC 6890 and the
// IANA special-purpose registries; the two metadata addresses are the cloud providers' (AWS,
// GCP, Azure, OpenStack use 169.254.169.254; AWS's IPv6 one is fd00:ec2::254).
std::vector<Special> make_specials() {
  static constexpr std::pair<std::string_view, std::string_view> kRanges[] = {
      {"169.254.169.254/32", "cloud metadata"}, {"fd00:ec2::254/128", "cloud metadata"},
      {"168.63.129.16/32", "cloud metadata"},  // Azure's wireserver
      {"127.0.0.0/8", "loopback"},             {"::1/128", "loopback"},
      {"0.0.0.0/8", "unspecified"},            {"::/128", "unspecified"},
      {"169.254.0.0/16", "link-local"},        {"fe80::/10", "link-local"},
      {"10.0.0.0/8", "private"},               {"172.16.0.0/12", "private"},
      {"192.168.0.0/16", "private"},           {"fc00::/7", "private"},
      {"100.64.0.0/10", "shared (carrier-grade NAT)"},
      {"192.0.0.0/24", "IETF protocol assignments"},
      {"198.18.0.0/15", "benchmarking"},       {"224.0.0.0/4", "multicast"},
      {"ff00::/8", "multicast"},               {"240.0.0.0/4", "reserved"},
      {"64:ff9b::/96", "NAT64"},               {"64:ff9b:1::/48", "NAT64"},
      {"::/96", "IPv4-compatible"},            {"2002::/16", "6to4"},
      {"2001::/32", "Teredo"},
  };
  std::vector<Special> out;
  for (const auto& [text, name] : kRanges) out.push_back(Special{*parse_cidr(text), name});
  return out;
}
}  // namespace

Cidr unmapped_v4(const Cidr& address) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  Cidr a = address;
  if (a.family == AF_INET6 && std::memcmp(a.addr.data(), kMapped, sizeof kMapped) == 0) {
    a.family = AF_INET;
    std::memmove(a.addr.data(), a.addr.data() + 12, 4);
    std::fill(a.addr.begin() + 4, a.addr.end(), 0);
    a.prefix = a.prefix >= 96 ? static_cast<uint8_t>(a.prefix - 96) : 0;
  }
  return a;
}

AddressRange special_range(const Cidr& address) {
  static const std::vector<Special> specials = make_specials();
  const Cidr a = unmapped_v4(address);
  static constexpr uint8_t kNat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (a.family == AF_INET6 && a.prefix == 128 && std::memcmp(a.addr.data(), kNat64, sizeof kNat64) == 0) {
    // What a DNS64 resolver makes of an IPv4 answer: judged by that answer too.
    Cidr inner;
    inner.family = AF_INET;
    std::memcpy(inner.addr.data(), a.addr.data() + 12, 4);
    inner.prefix = 32;
    if (AddressRange r = special_range(inner); !r.name.empty()) return AddressRange{r.name, static_cast<uint8_t>(96 + r.prefix)};
  }
  for (const auto& s : specials) {
    if (cidr_covers(s.net, a)) return AddressRange{s.name, s.net.prefix};
  }
  return {};
}

}  // namespace outpost::policy
