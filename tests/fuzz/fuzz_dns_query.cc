// A datagram to the DNS stub in an agent's namespace (runtime/egress/dns_stub.h). The answer
// never reads outside the input; it is either nothing (not a query) or a header that echoes the
// query's ID with QR set and no record, followed, for a REFUSED answer only, by the query's own
// question bytes; an answer fed back is dropped (two stubs cannot loop).
#include <cstddef>
#include <cstdint>
#include <span>

#include "egress/dns_stub.h"

using namespace outpost::egress;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> in(data, size);
  const DnsAnswer a = answer_dns_query(in);
  if (a.reply.empty()) {
    if (size >= 12 && (data[2] & 0x80) == 0) __builtin_trap();  // a query is always answered
    return 0;
  }
  if (a.reply.size() < 12 || a.reply[0] != data[0] || a.reply[1] != data[1] || (a.reply[2] & 0x80) == 0) __builtin_trap();
  if (a.reply[3] != a.rcode || a.reply[6] != 0 || a.reply[7] != 0 || a.reply[8] != 0 || a.reply[9] != 0 || a.reply[10] != 0 ||
      a.reply[11] != 0) {
    __builtin_trap();
  }
  if (a.rcode == kDnsRefused) {
    // One question, the query's bytes from offset 12 up to its end, at most 255 + 4 of them.
    if (a.reply[4] != 0 || a.reply[5] != 1 || a.reply.size() > 12 + 255 + 4 || a.reply.size() > size) __builtin_trap();
    for (size_t i = 12; i < a.reply.size(); ++i) {
      if (a.reply[i] != data[i]) __builtin_trap();
    }
    if (a.name.empty()) __builtin_trap();
  } else {
    if (a.reply.size() != 12 || a.reply[5] != 0 || !a.name.empty()) __builtin_trap();
    if (a.rcode != kDnsFormErr && a.rcode != kDnsNotImp) __builtin_trap();
  }
  if (!answer_dns_query(a.reply).reply.empty()) __builtin_trap();
  return 0;
}
