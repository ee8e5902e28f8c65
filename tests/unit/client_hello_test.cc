// The egress proxy's ClientHello scanner (runtime/egress/client_hello.h): hellos from the
// builder, hellos assembled field by field here so each length can be broken on its own, and one
// captured from a real client.
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "egress/client_hello.h"

namespace outpost::egress {
namespace {

using Bytes = std::vector<uint8_t>;

// The first bytes OpenSSL 3.0.19 sent for `openssl s_client -connect 127.0.0.1:PORT
// -servername example.com`, as a socket listening on PORT read them: one 317-byte record.
const Bytes kOpenSslHello = {
    0x16, 0x03, 0x01, 0x01, 0x38, 0x01, 0x00, 0x01, 0x34, 0x03, 0x03, 0x68, 0x42, 0x97, 0x2d, 0xd1,
    0x35, 0x32, 0x67, 0x12, 0xe8, 0x45, 0x8d, 0xcf, 0x3b, 0x7d, 0xdb, 0xec, 0xfd, 0x16, 0x42, 0x12,
    0xfe, 0xf5, 0x50, 0x6f, 0x0a, 0x33, 0xa5, 0x32, 0xfc, 0x6d, 0xbb, 0x20, 0x68, 0x82, 0x93, 0x1d,
    0x2e, 0x11, 0x9d, 0xed, 0x61, 0xef, 0xde, 0x69, 0x04, 0x2c, 0x7d, 0x31, 0x17, 0x32, 0x02, 0x49,
    0x98, 0x9a, 0xe1, 0x17, 0xba, 0x57, 0x6f, 0xe5, 0x4d, 0x5a, 0x16, 0x1a, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xad,
    0x00, 0x00, 0x00, 0x10, 0x00, 0x0e, 0x00, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65,
    0x2e, 0x63, 0x6f, 0x6d, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16,
    0x00, 0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01,
    0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17,
    0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07,
    0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01,
    0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02,
    0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00,
    0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xe2, 0x19, 0x6f,
    0x4f, 0x84, 0x59, 0x42, 0x31, 0x4d, 0xd5, 0xbd, 0xd2, 0xac, 0xc3, 0xc8, 0xca, 0x28, 0x26, 0x45,
    0x5b, 0x06, 0xe4, 0xfd, 0x7e, 0x30, 0x93, 0x75, 0xbb, 0xf3, 0x2f, 0xec, 0x3e,
};

HelloScan scan(const Bytes& b) { return scan_client_hello(b); }

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
Bytes u16(size_t v) { return {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)}; }
Bytes text(std::string_view s) { return Bytes(s.begin(), s.end()); }
// `content` behind a big-endian length prefix `width` bytes wide.
Bytes vec(size_t width, const Bytes& content) {
  Bytes out;
  for (size_t i = width; i-- > 0;) out.push_back(static_cast<uint8_t>(content.size() >> (8 * i)));
  return cat({out, content});
}

Bytes extension(unsigned type, const Bytes& data) { return cat({u16(type), vec(2, data)}); }
// server_name (RFC 6066 §3) with one host_name entry per name.
Bytes server_name(std::initializer_list<std::string_view> names) {
  Bytes list;
  for (std::string_view n : names) list = cat({list, {0}, vec(2, text(n))});
  return extension(0, vec(2, list));
}
Bytes extensions(std::initializer_list<Bytes> list) { return vec(2, cat(list)); }

// ClientHello body fields (RFC 8446 §4.1.2), each with its length prefix.
const Bytes kVersionRandom = cat({{0x03, 0x03}, Bytes(32, 0xaa)});
const Bytes kSessionId = vec(1, Bytes(32, 0x55));
const Bytes kSuites = vec(2, {0x13, 0x01, 0x13, 0x02});
const Bytes kCompression = vec(1, {0});

Bytes body_with(const Bytes& extensions_block) {
  return cat({kVersionRandom, kSessionId, kSuites, kCompression, extensions_block});
}
Bytes handshake(const Bytes& body, uint8_t type = 1) { return cat({{type}, vec(3, body)}); }
Bytes record(const Bytes& fragment, uint8_t type = 22) { return cat({{type, 0x03, 0x01}, vec(2, fragment)}); }
// Handshake bytes in records: fragments of the sizes given, then the rest in records of 2^14.
Bytes records(const Bytes& hs, std::vector<size_t> sizes = {}) {
  Bytes out;
  size_t off = 0;
  for (size_t n : sizes) {
    out = cat({out, record(Bytes(hs.begin() + off, hs.begin() + off + n))});
    off += n;
  }
  while (off < hs.size()) {
    size_t n = std::min<size_t>(hs.size() - off, 1 << 14);
    out = cat({out, record(Bytes(hs.begin() + off, hs.begin() + off + n))});
    off += n;
  }
  return out;
}
Bytes one_record(const Bytes& body) { return records(handshake(body)); }
// A one-record hello (the builder's, the captured one) cut into fragments of the sizes given.
Bytes refragment(const Bytes& single, std::vector<size_t> sizes) {
  REQUIRE(single.size() == 5 + (size_t{single[3]} << 8 | single[4]));
  return records(Bytes(single.begin() + 5, single.end()), std::move(sizes));
}

void check_sni(const Bytes& b, std::string_view sni, size_t record_bytes) {
  HelloScan s = scan(b);
  INFO(s.error);
  REQUIRE(s.status == HelloStatus::sni);
  CHECK(s.sni == sni);
  CHECK(s.record_bytes == record_bytes);
  CHECK(s.error.empty());
}

std::string malformed_reason(const Bytes& b) {
  HelloScan s = scan(b);
  INFO(s.error);
  REQUIRE(s.status == HelloStatus::malformed);
  CHECK(s.sni.empty());
  CHECK(s.record_bytes == 0);
  CHECK_FALSE(s.error.empty());
  return s.error;
}

void check_every_prefix_needs_more(const Bytes& b) {
  for (size_t n = 0; n < b.size(); ++n) {
    HelloScan s = scan_client_hello(std::span<const uint8_t>(b.data(), n));
    INFO("prefix of " << n << " bytes: " << s.error);
    REQUIRE(s.status == HelloStatus::need_more);
    REQUIRE(s.sni.empty());
    REQUIRE(s.error.empty());
  }
}

}  // namespace

TEST_CASE("a built ClientHello scans back to its name and its whole length", "[egress]") {
  for (std::string_view name : {"example.com", "a", "api.example.co.uk", "_acme-challenge.example.org", "192.0.2.7"}) {
    Bytes hello = build_client_hello(name);
    check_sni(hello, name, hello.size());
  }
  const std::string longest = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                              std::string(63, 'd');
  REQUIRE(longest.size() == 255);
  check_sni(build_client_hello(longest), longest, build_client_hello(longest).size());
  CHECK(build_client_hello("example.com") == build_client_hello("example.com"));
  CHECK(build_client_hello("example.com") != build_client_hello("example.net"));
}

TEST_CASE("the name comes back lower-cased and without its trailing dot", "[egress]") {
  Bytes hello = build_client_hello("ExAmPle.COM");
  check_sni(hello, "example.com", hello.size());
  hello = build_client_hello("Example.com.");
  check_sni(hello, "example.com", hello.size());
}

TEST_CASE("a ClientHello without server_name is no_sni", "[egress]") {
  Bytes hello = build_client_hello("");
  HelloScan s = scan(hello);
  CHECK(s.status == HelloStatus::no_sni);
  CHECK(s.sni.empty());
  CHECK(s.record_bytes == hello.size());
  // TLS 1.2 allows an empty extensions block, or none at all (RFC 5246 §7.4.1.2).
  for (const Bytes& b : {one_record(body_with(vec(2, {}))), one_record(body_with({}))}) {
    s = scan(b);
    CHECK(s.status == HelloStatus::no_sni);
    CHECK(s.record_bytes == b.size());
  }
  s = scan(one_record(body_with(extensions({extension(23, {}), extension(43, {0x02, 0x03, 0x04})}))));
  CHECK(s.status == HelloStatus::no_sni);
}

TEST_CASE("a ClientHello fragmented over two or three records is reassembled", "[egress]") {
  const Bytes hello = build_client_hello("Fragments.example");
  const size_t hs = hello.size() - 5;
  for (size_t cut = 1; cut < hs; ++cut) {
    INFO("first fragment of " << cut << " bytes");
    check_sni(refragment(hello, {cut}), "fragments.example", hello.size() + 5);
  }
  // The handshake header split, the server_name split, three records in all.
  for (std::vector<size_t> cuts : {std::vector<size_t>{1, 2}, {3, 1}, {4, 100}, {100, 10}, {110, 1}}) {
    check_sni(refragment(hello, cuts), "fragments.example", hello.size() + 10);
  }
  check_sni(refragment(kOpenSslHello, {50, 100}), "example.com", kOpenSslHello.size() + 10);
}

TEST_CASE("a ClientHello up to the 16 KiB cap is reassembled, one byte more is malformed", "[egress]") {
  auto padded = [](size_t body_size) {
    const Bytes empty = body_with(extensions({server_name({"big.example"}), extension(21, {})}));
    return body_with(extensions({server_name({"big.example"}), extension(21, Bytes(body_size - empty.size(), 0))}));
  };
  Bytes at_cap = records(handshake(padded(kMaxClientHelloBody)));
  check_sni(at_cap, "big.example", kMaxClientHelloBody + 4 + 10);
  check_sni(records(handshake(padded(kMaxClientHelloBody)), {5000, 5000}), "big.example",
            kMaxClientHelloBody + 4 + 15);
  const std::string why = malformed_reason(records(handshake(padded(kMaxClientHelloBody + 1))));
  CHECK(why.find("cap") != std::string::npos);
  // The header alone is enough to refuse it.
  CHECK(scan(Bytes{22, 3, 1, 0, 4, 1, 0, 0x40, 0x01}).status == HelloStatus::malformed);
}

TEST_CASE("every truncation of a valid ClientHello is need_more", "[egress]") {
  check_every_prefix_needs_more(build_client_hello("example.com"));
  check_every_prefix_needs_more(build_client_hello(""));
  check_every_prefix_needs_more(refragment(build_client_hello("example.com"), {1, 3, 50}));
  check_every_prefix_needs_more(kOpenSslHello);
  check_every_prefix_needs_more(one_record(body_with({})));
}

TEST_CASE("records after the ClientHello are left to the caller", "[egress]") {
  // 0-RTT early data, or whatever the client sends next, starts after record_bytes.
  const Bytes hello = build_client_hello("example.com");
  check_sni(cat({hello, record({1}, 20), record(Bytes(40, 0x99), 23)}), "example.com", hello.size());
  check_sni(cat({kOpenSslHello, {0x17, 0x03}}), "example.com", kOpenSslHello.size());
}

TEST_CASE("a real ClientHello captured from openssl s_client gives its SNI", "[egress]") {
  REQUIRE(kOpenSslHello.size() == 317);
  check_sni(kOpenSslHello, "example.com", 317);
}

TEST_CASE("bytes that are not a TLS handshake are not_tls", "[egress]") {
  auto not_tls = [](const Bytes& b) {
    HelloScan s = scan(b);
    INFO(s.error);
    CHECK(s.status == HelloStatus::not_tls);
    CHECK_FALSE(s.error.empty());
    return s.error;
  };
  CHECK(not_tls(text("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")) == "record type 0x47, not a handshake");
  CHECK(not_tls(text("G")) == "record type 0x47, not a handshake");
  CHECK(not_tls(text("SSH-2.0-OpenSSH_9.2\r\n")).find("not a handshake") != std::string::npos);
  // An SSLv2-compatible CLIENT-HELLO: 2-byte header with the high bit set, msg type 1, version 3.1.
  CHECK(not_tls({0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10}).find("SSLv2") != std::string::npos);
  CHECK(not_tls({0x17, 0x03, 0x03, 0x00, 0x10}) == "record type 0x17, not a handshake");
  CHECK(not_tls({0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}) == "record type 0x15, not a handshake");
  CHECK(not_tls({0x16, 0x02}) == "record version major 2, not 3");
  CHECK(not_tls({0x16, 0x04, 0x01, 0x00, 0x10}) == "record version major 4, not 3");
  CHECK(scan(Bytes{0x16}).status == HelloStatus::need_more);
}

TEST_CASE("a broken record or handshake header is malformed", "[egress]") {
  const Bytes hs = handshake(body_with(extensions({server_name({"example.com"})})));
  CHECK(malformed_reason(cat({{22, 3, 1, 0, 0}, record(hs)})) == "empty handshake record");
  CHECK(malformed_reason(cat({{22, 3, 1, 0x40, 0x01}, Bytes(0x4001, 0)})) == "record length 16385, over 2^14");
  CHECK(malformed_reason(records(handshake(body_with({}), 2))) == "handshake type 2, not ClientHello");
  CHECK(malformed_reason(records(handshake(body_with({}), 2), {1})) == "handshake type 2, not ClientHello");
  CHECK(malformed_reason({22, 3, 1, 0, 50, 2}) == "handshake type 2, not ClientHello");
  // The handshake says more than its records hold and the next record is of another type.
  CHECK(malformed_reason(cat({record(Bytes(hs.begin(), hs.begin() + 20)), record({1, 0}, 21)})) ==
        "record type 0x15 inside the ClientHello");
  CHECK(malformed_reason(cat({record(Bytes(hs.begin(), hs.begin() + 20)), {22, 2, 1, 0, 1}})) ==
        "record version major 2, not 3");
  // The handshake says less than its record holds.
  Bytes shorter = records(hs);
  shorter[8] -= 1;
  CHECK(malformed_reason(shorter) == "a record continues past the end of the ClientHello");
  // Trailing bytes in the ClientHello's last record.
  CHECK(malformed_reason(record(cat({hs, {0}}))) == "a record continues past the end of the ClientHello");
  CHECK(malformed_reason(one_record({})).find("overruns the ClientHello") != std::string::npos);
  CHECK(malformed_reason(one_record(Bytes(20, 3))).find("overruns the ClientHello") != std::string::npos);
}

TEST_CASE("a ClientHello field whose length is wrong is malformed", "[egress]") {
  const Bytes sni = extensions({server_name({"example.com"})});
  CHECK(malformed_reason(one_record(cat({{0x02, 0x00}, Bytes(32, 0), kSessionId, kSuites, kCompression, sni}))) ==
        "ClientHello version major 2, not 3");
  CHECK(malformed_reason(one_record(cat({kVersionRandom, vec(1, Bytes(33, 0)), kSuites, kCompression, sni}))) ==
        "legacy_session_id of 33 bytes, over 32");
  CHECK(malformed_reason(one_record(cat({kVersionRandom, kSessionId, vec(2, {0x13, 0x01, 0x13}), kCompression, sni})))
            .find("cipher_suites length 3") != std::string::npos);
  CHECK(malformed_reason(one_record(cat({kVersionRandom, kSessionId, vec(2, {}), kCompression, sni})))
            .find("cipher_suites length 0") != std::string::npos);
  CHECK(malformed_reason(one_record(cat({kVersionRandom, kSessionId, u16(0x2000), Bytes(8, 0)}))) ==
        "cipher_suites overruns the ClientHello");
  CHECK(malformed_reason(one_record(cat({kVersionRandom, kSessionId, kSuites, vec(1, {}), sni}))) ==
        "no compression methods");
  CHECK(malformed_reason(one_record(cat({kVersionRandom, kSessionId, kSuites, kCompression, {0x00}}))) ==
        "extensions length overruns the ClientHello");
  const Bytes ext = server_name({"example.com"});
  CHECK(malformed_reason(one_record(body_with(cat({u16(ext.size() + 1), ext})))).find("extensions length") !=
        std::string::npos);
  CHECK(malformed_reason(one_record(body_with(cat({u16(ext.size() - 1), ext})))).find("extensions length") !=
        std::string::npos);
  CHECK(malformed_reason(one_record(body_with(vec(2, cat({u16(5), u16(10), Bytes(4, 0)}))))) ==
        "extension data overruns the extensions");
  CHECK(malformed_reason(one_record(body_with(vec(2, {0x00})))) == "extension type overruns the extensions");
}

TEST_CASE("a server_name extension that breaks RFC 6066 is malformed", "[egress]") {
  auto with = [](std::initializer_list<Bytes> exts) { return malformed_reason(one_record(body_with(extensions(exts)))); };
  const Bytes list = cat({{0}, vec(2, text("example.com"))});
  CHECK(with({extension(0, cat({u16(list.size() + 1), list}))}).find("server_name list length") != std::string::npos);
  CHECK(with({extension(0, cat({u16(list.size() - 1), list}))}).find("server_name list length") != std::string::npos);
  CHECK(with({extension(0, {})}) == "server_name list length overruns the extension data");
  CHECK(with({extension(0, vec(2, {}))}) == "empty server_name list");
  CHECK(with({extension(0, vec(2, cat({{0}, u16(20), text("short")})))}) == "host_name overruns the server_name list");
  CHECK(with({extension(0, vec(2, cat({{0}, {0x00}})))}) == "host_name length overruns the server_name list");
  CHECK(with({extension(0, vec(2, cat({{1}, vec(2, text("example.com"))})))}) == "server_name entry of type 1, not host_name");
  CHECK(with({server_name({"a.example", "b.example"})}) == "more than one host_name");
  CHECK(with({server_name({"a.example"}), extension(23, {}), server_name({"a.example"})}) == "duplicate server_name extension");
  CHECK(with({server_name({""})}) == "empty host_name");
  CHECK(with({server_name({std::string(256, 'a')})}) == "host_name of 256 bytes, over 255");
}

TEST_CASE("a host_name outside letters, digits, dot, hyphen and underscore is malformed", "[egress]") {
  auto why = [](std::string_view name) { return malformed_reason(build_client_hello(name)); };
  CHECK(why("exa mple.com") == "host_name byte 0x20 at 3 is not in [A-Za-z0-9._-]");
  CHECK(why(std::string("example.com\0", 12)).find("byte 0x00 at 11") != std::string::npos);
  CHECK(why("b\xc3\xbc" "cher.example").find("byte 0xc3") != std::string::npos);
  CHECK(why("*.example.com").find("byte 0x2a") != std::string::npos);
  CHECK(why("example.com:443").find("byte 0x3a") != std::string::npos);
  CHECK(why("[2001:db8::1]").find("byte 0x5b") != std::string::npos);
  CHECK(why("a/b").find("byte 0x2f") != std::string::npos);
  for (std::string_view empty_label : {".", "..", ".example.com", "example..com", "example.com.."}) {
    INFO(empty_label);
    CHECK(why(empty_label) == "host_name has an empty label");
  }
}

TEST_CASE("a bad length is refused before the rest of the ClientHello arrives", "[egress]") {
  const Bytes bad = one_record(cat({kVersionRandom, vec(1, Bytes(33, 0)), kSuites, kCompression, vec(2, {})}));
  const Bytes prefix(bad.begin(), bad.begin() + 50);
  CHECK(scan(prefix).status == HelloStatus::malformed);
}

TEST_CASE("no single-byte change to a ClientHello reads out of bounds or yields an invalid name", "[egress]") {
  // A small deterministic fuzz (tests/fuzz/fuzz_client_hello.cc is the real one); run under ASan.
  for (const Bytes& base : {build_client_hello("example.com"), refragment(kOpenSslHello, {7, 120})}) {
    for (size_t i = 0; i < base.size(); ++i) {
      for (uint8_t delta : {1, 0x80, 0xff}) {
        Bytes b = base;
        b[i] = static_cast<uint8_t>(b[i] + delta);
        HelloScan s = scan(b);
        if (s.status == HelloStatus::sni) {
          REQUIRE(!s.sni.empty());
          REQUIRE(s.sni.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-_") == std::string::npos);
          REQUIRE(s.record_bytes <= b.size());
        }
        if (s.status == HelloStatus::not_tls || s.status == HelloStatus::malformed) REQUIRE_FALSE(s.error.empty());
      }
    }
  }
}

}  // namespace outpost::egress

TEST_CASE("a ClientHello carrying Encrypted ClientHello is flagged", "[egress]") {
  auto plain = outpost::egress::scan_client_hello(outpost::egress::build_client_hello("api.example.com"));
  CHECK(plain.status == outpost::egress::HelloStatus::sni);
  CHECK_FALSE(plain.encrypted_client_hello);
  auto ech = outpost::egress::scan_client_hello(outpost::egress::build_client_hello("api.example.com", true));
  CHECK(ech.status == outpost::egress::HelloStatus::sni);
  CHECK(ech.sni == "api.example.com");
  CHECK(ech.encrypted_client_hello);
}
