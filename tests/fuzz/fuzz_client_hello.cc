// A CONNECT tunnel's first bytes as the egress proxy scans them for the ClientHello's SNI. The
// scan never reads outside the input, its fields agree with its status, a valid hello is valid
// exactly at its own length (one byte short is need_more), and the same bytes used as a name
// for build_client_hello come back as that name, normalised, or are refused.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "egress/client_hello.h"

using namespace outpost::egress;

namespace {

bool valid_sni(std::string_view s) {
  if (s.empty() || s.size() > 255 || s.front() == '.' || s.back() == '.') return false;
  if (s.find("..") != std::string_view::npos) return false;
  return s.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-_") == std::string_view::npos;
}

void check_fields(const HelloScan& s, size_t size) {
  switch (s.status) {
    case HelloStatus::sni:
      if (!valid_sni(s.sni) || !s.error.empty()) __builtin_trap();
      [[fallthrough]];
    case HelloStatus::no_sni:
      // At least a record header, a handshake header and the shortest body: version, random,
      // empty session id, one suite, one compression method.
      if (s.record_bytes < 5 + 4 + 2 + 32 + 1 + 4 + 2 || s.record_bytes > size || !s.error.empty()) __builtin_trap();
      if (s.status == HelloStatus::no_sni && !s.sni.empty()) __builtin_trap();
      return;
    case HelloStatus::need_more:
      if (!s.sni.empty() || s.record_bytes != 0 || !s.error.empty()) __builtin_trap();
      return;
    case HelloStatus::not_tls:
    case HelloStatus::malformed:
      if (!s.sni.empty() || s.record_bytes != 0 || s.error.empty()) __builtin_trap();
      return;
  }
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> in(data, size);
  const HelloScan s = scan_client_hello(in);
  check_fields(s, size);
  if (s.status == HelloStatus::sni || s.status == HelloStatus::no_sni) {
    // Bytes after the hello's records do not matter, and one byte fewer is a valid prefix.
    const HelloScan exact = scan_client_hello(in.first(s.record_bytes));
    if (exact.status != s.status || exact.sni != s.sni || exact.record_bytes != s.record_bytes) __builtin_trap();
    if (scan_client_hello(in.first(s.record_bytes - 1)).status != HelloStatus::need_more) __builtin_trap();
  }
  if (s.status == HelloStatus::sni) {
    const HelloScan again = scan_client_hello(build_client_hello(s.sni));
    if (again.status != HelloStatus::sni || again.sni != s.sni) __builtin_trap();
  }

  // The input as a name: the builder's hello scans to it or is refused as malformed.
  if (size <= 300) {
    const std::string name(reinterpret_cast<const char*>(data), size);
    const std::vector<uint8_t> built = build_client_hello(name);
    const HelloScan b = scan_client_hello(built);
    check_fields(b, built.size());
    if (name.empty()) {
      if (b.status != HelloStatus::no_sni) __builtin_trap();
    } else if (b.status == HelloStatus::sni) {
      std::string expect = name;
      for (char& c : expect) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      }
      if (expect.back() == '.') expect.pop_back();
      if (b.sni != expect || b.record_bytes != built.size()) __builtin_trap();
    } else if (b.status != HelloStatus::malformed) {
      __builtin_trap();
    }
  }
  return 0;
}
