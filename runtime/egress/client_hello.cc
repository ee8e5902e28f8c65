#include "egress/client_hello.h"

#include <algorithm>

#include "outpost/base/check.h"

namespace outpost::egress {
namespace {

// The record layer (RFC 8446 §5.1, RFC 5246 §6.2.1): content type (1 byte),
// legacy_record_version (2), length (2, at most 2^14), then that many bytes of fragment. A
// handshake message may be split over several records of type handshake; records of another
// type must not come between its fragments, and no handshake fragment is empty.
constexpr uint8_t kHandshakeRecord = 22;
constexpr size_t kRecordHeader = 5;
constexpr size_t kMaxRecordFragment = size_t{1} << 14;
// A handshake message (RFC 8446 §4): msg_type (1 byte), length (3), body.
constexpr uint8_t kClientHelloType = 1;
constexpr size_t kHandshakeHeader = 4;
// RFC 6066 §3: extension type server_name is 0, its only name type host_name is 0, and a
// HostName is at most 255 bytes here (a DNS name's limit; the vector allows 2^16-1).
constexpr uint16_t kServerNameExtension = 0;
constexpr uint8_t kHostNameType = 0;
constexpr size_t kMaxHostName = 255;

std::string hex_byte(unsigned v) {
  constexpr char digits[] = "0123456789abcdef";
  return {'0', 'x', digits[(v >> 4) & 0xf], digits[v & 0xf]};
}

HelloScan refuse(HelloStatus status, std::string why) {
  HelloScan s;
  s.status = status;
  s.error = std::move(why);
  return s;
}

// Why a parse of the handshake body stopped early: need_more unless it found something wrong.
struct Stop {
  HelloStatus status = HelloStatus::need_more;
  std::string error;

  bool malformed(std::string why) {
    status = HelloStatus::malformed;
    error = std::move(why);
    return false;
  }
  bool need_more() { return false; }
};

// Field-by-field reading of a length-delimited part of the ClientHello. `end` is where the
// enclosing length says the part ends; only the first `avail` bytes (avail <= end) have arrived.
// A field that crosses `end` is malformed; one that crosses only `avail` has not arrived yet.
// Every read returns false once the scan has stopped, with the reason in `stop`.
class Reader {
 public:
  Reader(const uint8_t* data, size_t avail, size_t end, const char* part, Stop& stop)
      : data_(data), avail_(avail), end_(end), part_(part), stop_(&stop) {}
  // An empty part, for sub() to fill in.
  explicit Reader(Stop& stop) : Reader(nullptr, 0, 0, "", stop) {}

  bool done() const { return pos_ == end_; }
  // Bytes the enclosing length still promises, arrived or not.
  size_t left() const { return end_ - pos_; }

  bool u8(uint8_t& v, const char* field) {
    if (!need(1, field)) return false;
    v = data_[pos_++];
    return true;
  }
  bool u16(uint16_t& v, const char* field) {
    if (!need(2, field)) return false;
    v = static_cast<uint16_t>(data_[pos_] << 8 | data_[pos_ + 1]);
    pos_ += 2;
    return true;
  }
  bool skip(size_t n, const char* field) {
    if (!need(n, field)) return false;
    pos_ += n;
    return true;
  }
  bool bytes(size_t n, std::span<const uint8_t>& out, const char* field) {
    if (!need(n, field)) return false;
    out = {data_ + pos_, n};
    pos_ += n;
    return true;
  }
  // The next `n` bytes as a Reader of their own, named `part`, whether or not they have all
  // arrived; this Reader moves past them.
  bool sub(size_t n, Reader& out, const char* part) {
    if (n > left()) return overrun(part);
    size_t have = pos_ < avail_ ? std::min(n, avail_ - pos_) : 0;
    out = Reader(have > 0 ? data_ + pos_ : data_, have, n, part, *stop_);
    pos_ += n;
    return true;
  }

 private:
  bool need(size_t n, const char* field) {
    if (n > left()) return overrun(field);
    if (pos_ + n > avail_) return stop_->need_more();
    return true;
  }
  bool overrun(const char* field) {
    return stop_->malformed(std::string(field) + " overruns the " + part_);
  }

  const uint8_t* data_;
  size_t avail_;
  size_t end_;
  size_t pos_ = 0;
  const char* part_;
  Stop* stop_;
};

bool host_name_byte(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

// A HostName as the proxy compares it: the allowed bytes only, lower-cased, one trailing dot
// dropped, and no empty label left (so "a..b", ".a" and "a.." are refused).
bool take_host_name(std::span<const uint8_t> name, std::string& out, Stop& stop) {
  for (size_t i = 0; i < name.size(); ++i) {
    if (!host_name_byte(name[i])) {
      return stop.malformed("host_name byte " + hex_byte(name[i]) + " at " + std::to_string(i) +
                            " is not in [A-Za-z0-9._-]");
    }
  }
  out.assign(name.begin(), name.end());
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (out.back() == '.') out.pop_back();
  if (out.empty() || out.front() == '.' || out.back() == '.' || out.find("..") != std::string::npos) {
    out.clear();
    return stop.malformed("host_name has an empty label");
  }
  return true;
}

// extension_data of server_name in a ClientHello (RFC 6066 §3):
//   ServerNameList: server_name_list<1..2^16-1> of ServerName entries,
//   ServerName: name_type (1 byte), then for host_name (0) HostName<1..2^16-1>.
// No other name type is defined, so an entry of another type cannot even be measured; the list
// must not hold two names of one type, which leaves exactly one host_name.
bool parse_server_name(Reader& data, std::string& sni, Stop& stop) {
  uint16_t list_len = 0;
  if (!data.u16(list_len, "server_name list length")) return false;
  if (list_len != data.left()) {
    return stop.malformed("server_name list length " + std::to_string(list_len) + ", but " +
                          std::to_string(data.left()) + " bytes follow");
  }
  if (list_len == 0) return stop.malformed("empty server_name list");
  Reader list(stop);
  if (!data.sub(list_len, list, "server_name list")) return false;
  bool have_host_name = false;
  while (!list.done()) {
    uint8_t type = 0;
    if (!list.u8(type, "name_type")) return false;
    if (type != kHostNameType) {
      return stop.malformed("server_name entry of type " + std::to_string(type) + ", not host_name");
    }
    if (have_host_name) return stop.malformed("more than one host_name");
    uint16_t len = 0;
    if (!list.u16(len, "host_name length")) return false;
    if (len == 0) return stop.malformed("empty host_name");
    if (len > kMaxHostName) {
      return stop.malformed("host_name of " + std::to_string(len) + " bytes, over " +
                            std::to_string(kMaxHostName));
    }
    std::span<const uint8_t> name;
    if (!list.bytes(len, name, "host_name")) return false;
    if (!take_host_name(name, sni, stop)) return false;
    have_host_name = true;
  }
  return true;
}

// The ClientHello body (RFC 8446 §4.1.2):
//   legacy_version (2 bytes), random (32), legacy_session_id<0..32>,
//   cipher_suites<2..2^16-2> (2-byte suites), legacy_compression_methods<1..2^8-1>,
//   extensions<8..2^16-1>
// where a vector's length prefix is as wide as its ceiling needs (RFC 8446 §3.4). A TLS 1.2
// hello may end after the compression methods or carry an empty extensions block
// (RFC 5246 §7.4.1.2). Within a block no extension type may appear twice (RFC 8446 §4.2);
// only server_name is checked for that here, being the one extension read.
// True when the whole body was read and is valid; false with `stop` saying why not.
bool parse_body(Reader& r, std::string& sni, bool& ech, Stop& stop) {
  uint8_t major = 0;
  if (!r.u8(major, "legacy_version") || !r.skip(1, "legacy_version")) return false;
  if (major != 3) return stop.malformed("ClientHello version major " + std::to_string(major) + ", not 3");
  if (!r.skip(32, "random")) return false;
  uint8_t session_id_len = 0;
  if (!r.u8(session_id_len, "legacy_session_id length")) return false;
  if (session_id_len > 32) {
    return stop.malformed("legacy_session_id of " + std::to_string(session_id_len) + " bytes, over 32");
  }
  if (!r.skip(session_id_len, "legacy_session_id")) return false;
  uint16_t suites_len = 0;
  if (!r.u16(suites_len, "cipher_suites length")) return false;
  if (suites_len < 2 || suites_len % 2 != 0) {
    return stop.malformed("cipher_suites length " + std::to_string(suites_len) + ", not a positive even number");
  }
  if (!r.skip(suites_len, "cipher_suites")) return false;
  uint8_t methods_len = 0;
  if (!r.u8(methods_len, "legacy_compression_methods length")) return false;
  if (methods_len == 0) return stop.malformed("no compression methods");
  if (!r.skip(methods_len, "legacy_compression_methods")) return false;
  if (r.done()) return true;  // TLS 1.2 without extensions

  uint16_t extensions_len = 0;
  if (!r.u16(extensions_len, "extensions length")) return false;
  if (extensions_len != r.left()) {
    return stop.malformed("extensions length " + std::to_string(extensions_len) + ", but " +
                          std::to_string(r.left()) + " bytes follow");
  }
  Reader extensions(stop);
  if (!r.sub(extensions_len, extensions, "extensions")) return false;
  bool seen_server_name = false;
  while (!extensions.done()) {
    uint16_t type = 0, len = 0;
    if (!extensions.u16(type, "extension type") || !extensions.u16(len, "extension length")) return false;
    Reader data(stop);
    if (!extensions.sub(len, data, "extension data")) return false;
    if (type != kServerNameExtension) {
      // encrypted_client_hello (draft-ietf-tls-esni-22 §5) and the older encrypted_server_name.
      if (type == 0xfe0d || type == 0xffce) ech = true;
      if (!data.skip(len, "extension data")) return false;
      continue;
    }
    if (seen_server_name) return stop.malformed("duplicate server_name extension");
    seen_server_name = true;
    if (!parse_server_name(data, sni, stop)) return false;
  }
  return true;
}

}  // namespace

HelloScan scan_client_hello(std::span<const uint8_t> in) {
  if (in.empty()) return {};
  // The first record header says whether this is TLS at all. An SSLv2-compatible hello has
  // the high bit of its first byte set (a 2-byte record header); a TLS record header's first
  // byte is a content type, 20..24.
  if (in[0] & 0x80) {
    return refuse(HelloStatus::not_tls, "SSLv2-style record header (first byte " + hex_byte(in[0]) + ")");
  }
  if (in[0] != kHandshakeRecord) {
    return refuse(HelloStatus::not_tls, "record type " + hex_byte(in[0]) + ", not a handshake");
  }
  if (in.size() >= 2 && in[1] != 3) {
    return refuse(HelloStatus::not_tls, "record version major " + std::to_string(in[1]) + ", not 3");
  }

  // Collect the handshake message from the records: in place when one record holds it all
  // (or as much as has arrived), otherwise copied into `joined`. `needed` is the message's
  // full size once its header is known.
  std::span<const uint8_t> hs;
  std::vector<uint8_t> joined;
  size_t needed = 0;
  size_t off = 0;
  size_t records = 0;
  bool complete = false;
  while (off < in.size() && !complete) {
    const size_t have = in.size() - off;
    if (records > 0) {
      if (in[off] != kHandshakeRecord) {
        return refuse(HelloStatus::malformed, "record type " + hex_byte(in[off]) + " inside the ClientHello");
      }
      if (have >= 2 && in[off + 1] != 3) {
        return refuse(HelloStatus::malformed, "record version major " + std::to_string(in[off + 1]) + ", not 3");
      }
    }
    if (have < kRecordHeader) break;
    const size_t len = static_cast<size_t>(in[off + 3]) << 8 | in[off + 4];
    if (len == 0) return refuse(HelloStatus::malformed, "empty handshake record");
    if (len > kMaxRecordFragment) {
      return refuse(HelloStatus::malformed, "record length " + std::to_string(len) + ", over 2^14");
    }
    const std::span<const uint8_t> frag = in.subspan(off + kRecordHeader, std::min(len, have - kRecordHeader));

    // The handshake header may itself be split between records: check it as soon as its
    // bytes are here, before copying anything.
    auto at = [&](size_t i) { return i < hs.size() ? hs[i] : frag[i - hs.size()]; };
    const size_t total = hs.size() + frag.size();
    if (total >= 1 && at(0) != kClientHelloType) {
      return refuse(HelloStatus::malformed, "handshake type " + std::to_string(at(0)) + ", not ClientHello");
    }
    if (needed == 0 && total >= kHandshakeHeader) {
      const size_t body = static_cast<size_t>(at(1)) << 16 | static_cast<size_t>(at(2)) << 8 | at(3);
      if (body > kMaxClientHelloBody) {
        return refuse(HelloStatus::malformed, "ClientHello of " + std::to_string(body) + " bytes, over the " +
                                                  std::to_string(kMaxClientHelloBody) + "-byte cap");
      }
      needed = kHandshakeHeader + body;
    }
    // Nothing may share the ClientHello's last record: a message a key change follows must end
    // on a record boundary (RFC 8446 §5.1), and 0-RTT keys may follow the ClientHello.
    if (needed != 0 && hs.size() + len > needed) {
      return refuse(HelloStatus::malformed, "a record continues past the end of the ClientHello");
    }

    if (records++ == 0) {
      hs = frag;
    } else {
      if (joined.empty()) joined.assign(hs.begin(), hs.end());
      if (needed != 0) joined.reserve(needed);  // all it will hold: see the check above
      joined.insert(joined.end(), frag.begin(), frag.end());
      hs = joined;
    }
    if (frag.size() < len) break;  // the rest of this record has not arrived
    off += kRecordHeader + len;
    complete = needed != 0 && hs.size() == needed;
  }
  if (hs.size() < kHandshakeHeader) return {};

  // Parse what has arrived, so that a bad length is refused without waiting for the rest.
  Stop stop;
  HelloScan out;
  Reader body(hs.data() + kHandshakeHeader, hs.size() - kHandshakeHeader, needed - kHandshakeHeader,
              "ClientHello", stop);
  const bool parsed = parse_body(body, out.sni, out.encrypted_client_hello, stop);
  if (stop.status == HelloStatus::malformed) return refuse(HelloStatus::malformed, std::move(stop.error));
  if (!complete) return {};
  OUTPOST_CHECK(parsed && body.done(), "a complete ClientHello parses to its end or is malformed");
  out.status = out.sni.empty() ? HelloStatus::no_sni : HelloStatus::sni;
  out.record_bytes = off;
  return out;
}

namespace {

// Appends big-endian fields and vectors whose length prefix is filled in when they close.
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : out_(out) {}

  void u8(unsigned v) { out_.push_back(static_cast<uint8_t>(v)); }
  void u16(unsigned v) {
    u8(v >> 8);
    u8(v);
  }
  void bytes(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void text(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }

  // A vector with a `width`-byte length prefix, filled in by close().
  struct Mark {
    size_t start;  // the first byte after the prefix
    size_t width;
  };
  Mark open(size_t width) {
    out_.insert(out_.end(), width, 0);
    return {out_.size(), width};
  }
  void close(Mark m) {
    const size_t len = out_.size() - m.start;
    OUTPOST_CHECK(len < (size_t{1} << (8 * m.width)), "build_client_hello: a vector outgrew its length prefix");
    for (size_t i = 0; i < m.width; ++i) out_[m.start - 1 - i] = static_cast<uint8_t>(len >> (8 * i));
  }

  // An extension: type, then its data in a 2-byte vector.
  template <class Fill>
  void extension(unsigned type, Fill fill) {
    u16(type);
    const Mark data = open(2);
    fill();
    close(data);
  }

 private:
  std::vector<uint8_t>& out_;
};

// Deterministic filler for random, legacy_session_id and the key share: FNV-1a of the name,
// stepped by a 64-bit LCG. Not random at all, which is the point.
class Filler {
 public:
  explicit Filler(std::string_view seed) {
    for (unsigned char c : seed) state_ = (state_ ^ c) * 0x100000001b3ull;
  }
  void fill(Writer& w, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
      w.u8(static_cast<unsigned>(state_ >> 56));
    }
  }

 private:
  uint64_t state_ = 0xcbf29ce484222325ull;
};

}  // namespace

std::vector<uint8_t> build_client_hello(std::string_view sni, bool ech) {
  OUTPOST_CHECK(sni.size() < kMaxClientHelloBody - 512, "build_client_hello: sni too long");
  std::vector<uint8_t> hs;
  Writer w(hs);
  Filler filler(sni);
  // Handshake header, then the body of RFC 8446 §4.1.2, shaped like a current browser's.
  w.u8(kClientHelloType);
  const Writer::Mark body = w.open(3);
  w.u16(0x0303);       // legacy_version: TLS 1.2
  filler.fill(w, 32);  // random
  w.u8(32);            // legacy_session_id, as TLS 1.3 middlebox compatibility sends it
  filler.fill(w, 32);
  const Writer::Mark suites = w.open(2);
  for (unsigned suite : {0x1301u, 0x1302u, 0x1303u, 0xc02bu, 0xc02fu, 0xc02cu, 0xc030u, 0xcca9u, 0xcca8u}) w.u16(suite);
  w.close(suites);
  w.u8(1);  // legacy_compression_methods: null alone
  w.u8(0);

  const Writer::Mark extensions = w.open(2);
  if (!sni.empty()) {
    w.extension(kServerNameExtension, [&] {  // RFC 6066 §3
      const Writer::Mark list = w.open(2);
      w.u8(kHostNameType);
      const Writer::Mark name = w.open(2);
      w.text(sni);
      w.close(name);
      w.close(list);
    });
  }
  if (ech) {
    w.extension(0xfe0d, [&] {  // encrypted_client_hello: an outer hello's, its payload filler
      w.u8(0);                 // ClientHelloType outer
      filler.fill(w, 40);
    });
  }
  w.extension(23, [] {});                // extended_master_secret
  w.extension(0xff01, [&] { w.u8(0); });  // renegotiation_info, empty
  w.extension(10, [&] {                  // supported_groups: x25519, secp256r1, secp384r1
    const Writer::Mark groups = w.open(2);
    for (unsigned g : {0x001du, 0x0017u, 0x0018u}) w.u16(g);
    w.close(groups);
  });
  w.extension(11, [&] {  // ec_point_formats: uncompressed
    w.u8(1);
    w.u8(0);
  });
  w.extension(35, [] {});  // session_ticket, empty
  w.extension(16, [&] {    // application_layer_protocol_negotiation
    const Writer::Mark protocols = w.open(2);
    for (std::string_view p : {"h2", "http/1.1"}) {
      w.u8(static_cast<unsigned>(p.size()));
      w.text(p);
    }
    w.close(protocols);
  });
  w.extension(13, [&] {  // signature_algorithms
    const Writer::Mark algs = w.open(2);
    for (unsigned a : {0x0403u, 0x0804u, 0x0401u, 0x0503u, 0x0805u, 0x0501u, 0x0806u, 0x0601u}) w.u16(a);
    w.close(algs);
  });
  w.extension(43, [&] {  // supported_versions: TLS 1.3, TLS 1.2
    const Writer::Mark versions = w.open(1);
    w.u16(0x0304);
    w.u16(0x0303);
    w.close(versions);
  });
  w.extension(45, [&] {  // psk_key_exchange_modes: psk_dhe_ke
    w.u8(1);
    w.u8(1);
  });
  w.extension(51, [&] {  // key_share: one x25519 share
    const Writer::Mark shares = w.open(2);
    w.u16(0x001d);
    const Writer::Mark key = w.open(2);
    filler.fill(w, 32);
    w.close(key);
    w.close(shares);
  });
  w.close(extensions);
  w.close(body);

  // Records of at most 2^14 bytes, legacy_record_version 0x0301 as clients send it.
  std::vector<uint8_t> out;
  out.reserve(hs.size() + kRecordHeader * (1 + hs.size() / kMaxRecordFragment));
  for (size_t off = 0; off < hs.size(); off += kMaxRecordFragment) {
    const size_t len = std::min(kMaxRecordFragment, hs.size() - off);
    out.insert(out.end(), {kHandshakeRecord, 0x03, 0x01, static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len)});
    out.insert(out.end(), hs.begin() + static_cast<std::ptrdiff_t>(off),
               hs.begin() + static_cast<std::ptrdiff_t>(off + len));
  }
  return out;
}

}  // namespace outpost::egress
