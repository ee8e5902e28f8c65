// Matching primitives shared by the policy compiler and the decision engine. None allocates:
// they run on the decision hot path.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace outpost::policy {

// Globs: '*' matches any run of characters ('/' included), '?' exactly one; everything else
// is literal. Iterative with single-star backtracking: linear in practice, no recursion.
bool glob_match(std::string_view pattern, std::string_view text);
// A usable glob: 1..256 bytes, printable ASCII or UTF-8, no control characters.
bool glob_valid(std::string_view pattern);
// True when the pattern has no '*' or '?' (an exact name).
bool glob_is_literal(std::string_view pattern);

// An absolute path, percent-decoded once and normalised: "." and empty segments dropped, ".."
// removes the previous segment (never above "/"). Refused (nullopt): relative paths, NUL
// bytes, bad percent escapes, a '%' left after decoding (double encoding), longer than
// kMaxPath. The result points into `buf`.
inline constexpr size_t kMaxPath = 4096;
using PathBuffer = std::array<char, kMaxPath>;
std::optional<std::string_view> normalize_path(std::string_view path, PathBuffer& buf);
// `path` (normalised) is `prefix` (normalised) or below it.
bool path_under(std::string_view path, std::string_view prefix);

// An IPv4 or IPv6 network: "10.0.0.0/8", "2001:db8::/32", or a bare address (/32, /128).
struct Cidr {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};
  uint8_t prefix = 0;
};
std::optional<Cidr> parse_cidr(std::string_view text);
// Whether every address of `inner` lies in `outer`.
bool cidr_covers(const Cidr& outer, const Cidr& inner);
// Whether `host` is an IP literal inside `net` (a name never matches a CIDR).
bool cidr_contains(const Cidr& net, std::string_view host);

// Addresses an agent reaches only when a rule names them by CIDR (docs/policy.md, "Egress"):
// the range an address falls in, most specific first, with its prefix length; a rule's CIDR
// names the address when it contains it and is at least that long. `name` empty: a public
// address. IPv4-mapped IPv6 is classified as the IPv4 address it carries; a NAT64 address
// (64:ff9b::/96) whose embedded IPv4 address is special as that, behind the 96-bit prefix.
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it carries; others as they are.
Cidr unmapped_v4(const Cidr& address);

struct AddressRange {
  std::string_view name;
  uint8_t prefix = 0;
};
AddressRange special_range(const Cidr& address);

}  // namespace outpost::policy
