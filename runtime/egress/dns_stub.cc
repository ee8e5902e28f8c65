#include "egress/dns_stub.h"

#include <string_view>

namespace outpost::egress {

namespace {

constexpr size_t kHeader = 12;
constexpr size_t kMaxName = 255;  // wire octets, the final zero included (RFC 1035 2.3.4)

uint16_t be16(std::span<const uint8_t> b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

// The reply's header: the query's ID, QR set, its opcode and RD, RA clear, `rcode`; QDCOUNT
// `questions`, no answer, authority or additional record.
std::vector<uint8_t> reply_header(std::span<const uint8_t> q, uint8_t rcode, uint16_t questions) {
  std::vector<uint8_t> r(kHeader, 0);
  r[0] = q[0];
  r[1] = q[1];
  r[2] = static_cast<uint8_t>(0x80 | (q[2] & 0x79));  // QR, opcode (bits 3-6), RD (bit 0)
  r[3] = rcode;
  r[4] = static_cast<uint8_t>(questions >> 8);
  r[5] = static_cast<uint8_t>(questions);
  return r;
}

void append_label(std::string& out, std::span<const uint8_t> label) {
  if (!out.empty()) out += '.';
  for (uint8_t c : label) {
    if (c >= 'A' && c <= 'Z') c = static_cast<uint8_t>(c - 'A' + 'a');
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
      out += static_cast<char>(c);
    } else {
      const char esc[] = {'\\', static_cast<char>('0' + c / 100), static_cast<char>('0' + c / 10 % 10),
                          static_cast<char>('0' + c % 10)};
      out.append(esc, sizeof esc);
    }
  }
}

}  // namespace

DnsAnswer answer_dns_query(std::span<const uint8_t> q) {
  DnsAnswer a;
  if (q.size() < kHeader || (q[2] & 0x80) != 0) return a;  // not a DNS header, or a response
  const uint8_t opcode = (q[2] >> 3) & 0x0f;
  if (opcode != 0) {  // QUERY only: no IQUERY, STATUS, NOTIFY or UPDATE
    a.rcode = kDnsNotImp;
    a.reply = reply_header(q, a.rcode, 0);
    return a;
  }
  a.rcode = kDnsFormErr;
  if (be16(q, 4) != 1) {  // one question, as every resolver sends
    a.reply = reply_header(q, a.rcode, 0);
    return a;
  }
  size_t at = kHeader;
  std::string name;
  for (;;) {
    if (at >= q.size()) break;
    const uint8_t len = q[at];
    if (len == 0) {
      ++at;
      if (at - kHeader > kMaxName || q.size() - at < 4) break;
      a.rcode = kDnsRefused;
      a.type = be16(q, at);
      a.name = name.empty() ? "." : std::move(name);
      at += 4;
      a.reply = reply_header(q, a.rcode, 1);
      a.reply.insert(a.reply.end(), q.begin() + kHeader, q.begin() + static_cast<std::ptrdiff_t>(at));
      return a;
    }
    // A compression pointer (0xc0) has nothing to point back to in a query's first name; 0x40
    // and 0x80 are not label types in use.
    if ((len & 0xc0) != 0 || q.size() - at - 1 < len || at + 1 + len - kHeader >= kMaxName) break;
    append_label(name, q.subspan(at + 1, len));
    at += 1 + len;
  }
  a.reply = reply_header(q, a.rcode, 0);
  return a;
}

std::vector<uint8_t> build_dns_query(uint16_t id, std::string_view name, uint16_t type) {
  std::vector<uint8_t> q = {static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  while (!name.empty()) {
    const size_t dot = name.find('.');
    const std::string_view label = name.substr(0, dot);
    q.push_back(static_cast<uint8_t>(label.size()));
    q.insert(q.end(), label.begin(), label.end());
    name = dot == std::string_view::npos ? std::string_view() : name.substr(dot + 1);
  }
  q.push_back(0);
  q.push_back(static_cast<uint8_t>(type >> 8));
  q.push_back(static_cast<uint8_t>(type));
  q.push_back(0);
  q.push_back(1);  // class IN
  return q;
}

}  // namespace outpost::egress
