// The egress proxy's look at a CONNECT tunnel's first bytes: the TLS ClientHello's server_name,
// so that a tunnel whose SNI is not the CONNECT host is refused. Nothing is decrypted or
// intercepted; the bytes are relayed unchanged once the check passes.
//
// scan_client_hello() parses untrusted bytes: every length is checked against the one that
// encloses it, nothing is read outside `bytes`, and it allocates only the returned strings and,
// when the ClientHello is fragmented over several records, one reassembly buffer of at most
// kMaxClientHelloBody + 4 bytes. Pure functions; safe to call from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace outpost::egress {

// The largest ClientHello body reassembled (the 4-byte handshake header aside). Real hellos,
// post-quantum key shares included, are under 2 KiB; anything longer is refused as malformed.
inline constexpr size_t kMaxClientHelloBody = 16 * 1024;

// What the first bytes of a CONNECT tunnel say.
enum class HelloStatus {
  need_more,  // a valid prefix so far: read more and scan the whole buffer again
  not_tls,    // not a TLS handshake at all (plain HTTP, SSLv2, another protocol)
  malformed,  // TLS-shaped but a length, type or value is wrong
  no_sni,     // a complete, valid ClientHello without a server_name extension
  sni,        // a complete, valid ClientHello naming `sni`
};

struct HelloScan {
  HelloStatus status = HelloStatus::need_more;
  // The host_name, lower-cased, one trailing dot removed, when status == sni. An IP literal is
  // returned as it is: the caller decides what to make of it.
  std::string sni;
  // For sni and no_sni: the bytes, from the start of the buffer, of the TLS records that carry
  // the ClientHello (the last record ends where the ClientHello does). 0 otherwise.
  size_t record_bytes = 0;
  // For sni and no_sni: the hello carries an Encrypted ClientHello (or the older ESNI)
  // extension, so the name in the clear may not be the server it is for.
  bool encrypted_client_hello = false;
  // For not_tls and malformed: a short reason ("record type 0x17, not a handshake").
  std::string error;
};

// Scans a buffer that starts at the tunnel's first byte. Call again with the longer buffer
// after need_more; the caller bounds how long it waits and how much it buffers.
HelloScan scan_client_hello(std::span<const uint8_t> bytes);

// A syntactically valid TLS 1.2/1.3-style ClientHello record carrying `sni` (empty: no SNI
// extension), for tests and benchmarks; deterministic given the inputs. `sni` is written as
// given, unchecked, so tests can build hellos the scanner must refuse; it must be shorter than
// kMaxClientHelloBody - 512 bytes. One record unless the hello outgrows 2^14 bytes. `ech`
// adds an encrypted_client_hello extension (its payload filler, not a real encryption).
std::vector<uint8_t> build_client_hello(std::string_view sni, bool ech = false);

}  // namespace outpost::egress
