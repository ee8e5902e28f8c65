// The DNS stub in each agent's network namespace (docs/daemon.md, "Egress"): a resolver that
// answers every query REFUSED, so that a client resolving a name itself fails at once instead
// of waiting out its timeouts. Names are resolved by outpostd, for the proxy, after the
// bundle allowed them (DNS carries data too); the stub forwards nothing and resolves nothing.
//
// answer_dns_query() parses untrusted bytes: the 12-byte header and the one question (RFC 1035
// 4.1.1, 4.1.2), every length checked against what is left, nothing read outside `datagram`.
// The answer echoes the header's ID, opcode and RD bit and the question, as resolvers require
// to accept it (glibc's res_send drops an answer whose question differs). Responses (QR set)
// are never answered, so two stubs cannot loop. Pure function; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace outpost::egress {

inline constexpr uint8_t kDnsFormErr = 1;
inline constexpr uint8_t kDnsNotImp = 4;
inline constexpr uint8_t kDnsRefused = 5;

struct DnsAnswer {
  std::vector<uint8_t> reply;  // the datagram to send back; empty: drop the input unanswered
  // The question's name in presentation form, lower case, no trailing dot ("." for the root),
  // bytes outside [a-z0-9-_] written \DDD (RFC 4343): the audit record's. Empty when the
  // question did not parse.
  std::string name;
  uint16_t type = 0;   // QTYPE (1 A, 28 AAAA, ...)
  uint8_t rcode = 0;   // the reply's: kDnsRefused for a well-formed query, else FORMERR/NOTIMP
};

// What the stub answers to one datagram.
DnsAnswer answer_dns_query(std::span<const uint8_t> datagram);

// A standard query for `name` (dotted, no escapes) of `type`, with RD set: for tests, the
// benchmark and the fuzz corpus. Labels longer than 63 bytes are written as given.
std::vector<uint8_t> build_dns_query(uint16_t id, std::string_view name, uint16_t type);

}  // namespace outpost::egress
