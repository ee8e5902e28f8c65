// TLS 1.2 by mbedTLS over a Boost.Asio TCP socket, for outpost-hub (server) and the node's sync
// client and the responder CLI (clients).
//
// mbedTLS works on memory: its send callback appends ciphertext to an outgoing buffer and its
// receive callback takes from an incoming one (MBEDTLS_ERR_SSL_WANT_READ when it is empty);
// Stream moves those buffers over the socket with Asio's asynchronous operations, as C++20
// coroutines. Stream is a Beast AsyncReadStream and AsyncWriteStream, so beast::http::async_read
// and async_write work on it unchanged.
//
// Only ECDHE-ECDSA with AES-GCM and P-256 certificates, TLS 1.2 exactly (a client may ask for
// the public web's defaults instead: ClientConfig::web). A client
// authenticates the server by a CA (with the host name checked against the certificate's
// subjectAltName dNSName entries) and/or by a pin: the SHA-256 of the server certificate's
// SubjectPublicKeyInfo, which survives re-issuing the certificate for the same key.
//
// Threading: a Context and its Streams belong to one thread (one io_context run by one
// thread): mbedTLS's RNG in the Context is not locked. One read and one write may be pending
// on a Stream at a time, not two of either.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <boost/system/error_code.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/result.h"

namespace outpost::tls {

struct ServerConfig {
  std::string cert_chain_pem;  // the server certificate first, then its issuers
  std::string key_pem;
};

struct ClientConfig {
  std::string ca_pem;       // empty: no CA check (a pin is then required)
  std::string pin_sha256;   // hex SHA-256 of the server's SubjectPublicKeyInfo; empty: no pin
  std::string server_name;  // checked against the certificate when ca_pem is given
  // The public web's defaults instead of the fleet's narrow profile: mbedTLS's default TLS 1.2
  // suites, curves and signature hashes (RSA and ECDSA certificates), for remote MCP servers
  // and OAuth endpoints. ca_pem may then be a whole bundle such as the system's: certificates
  // mbedTLS cannot read are skipped, as long as one is read.
  bool web = false;
};

class Context {
 public:
  static Result<std::shared_ptr<Context>> server(const ServerConfig& config);
  static Result<std::shared_ptr<Context>> client(const ClientConfig& config);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit Context(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Stream {
 public:
  using executor_type = boost::asio::any_io_executor;
  using result_type = std::pair<boost::system::error_code, std::size_t>;

  Stream(boost::asio::ip::tcp::socket socket, std::shared_ptr<Context> context);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  executor_type get_executor() { return socket_.get_executor(); }
  boost::asio::ip::tcp::socket& socket() { return socket_; }

  // Runs the handshake; for a client also checks the CA and host name and the pin. The error
  // says which check failed.
  boost::asio::awaitable<Result<void>> handshake();
  // Sends close_notify (best effort) and closes the socket.
  boost::asio::awaitable<void> shutdown();

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, boost::asio::mutable_buffer buffer) {
          start(read_some(buffer), std::move(handler));
        },
        token, first_buffer(buffers));
  }

  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    // One TLS record per call: gather up to a record's worth from the sequence.
    size_t n = boost::asio::buffer_copy(boost::asio::buffer(gather_), buffers);
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, size_t length) {
          start(write_some(length), std::move(handler));
        },
        token, n);
  }

 private:
  template <class Buffers>
  static boost::asio::mutable_buffer first_buffer(const Buffers& buffers) {
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      boost::asio::mutable_buffer b(*it);
      if (b.size() > 0) return b;
    }
    return {};
  }
  template <class Handler>
  void start(boost::asio::awaitable<result_type> op, Handler handler) {
    boost::asio::co_spawn(socket_.get_executor(), std::move(op),
                          [h = std::move(handler)](std::exception_ptr e, result_type r) mutable {
                            if (e) r = {boost::asio::error::operation_aborted, 0};
                            std::move(h)(r.first, r.second);
                          });
  }

  boost::asio::awaitable<result_type> read_some(boost::asio::mutable_buffer buffer);
  boost::asio::awaitable<result_type> write_some(size_t length);
  // Sends what mbedTLS has queued / reads more ciphertext from the socket.
  boost::asio::awaitable<boost::system::error_code> flush();
  boost::asio::awaitable<boost::system::error_code> fill();

  static int bio_send(void* self, const unsigned char* data, size_t length);
  static int bio_recv(void* self, unsigned char* data, size_t length);

  struct Ssl;
  boost::asio::ip::tcp::socket socket_;
  std::shared_ptr<Context> context_;
  std::unique_ptr<Ssl> ssl_;
  Bytes in_, out_;
  size_t in_pos_ = 0;
  std::vector<uint8_t> gather_ = std::vector<uint8_t>(16384);
};

// Closes a socket when a deadline passes, which ends whatever operation is pending on it (the
// coroutines here have no per-operation timeouts of their own). Cancelled when destroyed.
class SocketDeadline {
 public:
  SocketDeadline(boost::asio::ip::tcp::socket& socket, std::chrono::steady_clock::time_point deadline)
      : timer_(socket.get_executor()), state_(std::make_shared<State>()) {
    timer_.expires_at(deadline);
    // The handler may already be queued when the destructor cancels the timer (cancel() cannot
    // recall it); it then finds `armed` cleared and leaves the socket, which may be gone, alone.
    timer_.async_wait([&socket, state = state_](const boost::system::error_code& ec) {
      if (ec || !state->armed) return;
      state->fired = true;
      boost::system::error_code ignored;
      socket.close(ignored);
    });
  }
  SocketDeadline(boost::asio::ip::tcp::socket& socket, std::chrono::steady_clock::duration after)
      : SocketDeadline(socket, std::chrono::steady_clock::now() + after) {}
  ~SocketDeadline() {
    state_->armed = false;
    timer_.cancel();
  }
  SocketDeadline(const SocketDeadline&) = delete;
  SocketDeadline& operator=(const SocketDeadline&) = delete;
  bool fired() const { return state_->fired; }

 private:
  struct State {
    bool armed = true;
    bool fired = false;
  };
  boost::asio::steady_timer timer_;
  std::shared_ptr<State> state_;
};

// SHA-256 of a certificate's SubjectPublicKeyInfo (first certificate of a PEM), hex: the pin
// a node keeps for its hub.
Result<std::string> spki_pin_of_certificate(std::string_view cert_pem);

// A development PKI for the sim setup (`outpost-hub init`): a CA, and a server certificate it
// issues for `names` (each becomes a subjectAltName dNSName; names that are IPv4 addresses
// also an iPAddress). P-256 keys, SHA-256 signatures.
struct DevPki {
  std::string ca_cert_pem, ca_key_pem;
  std::string server_cert_pem, server_key_pem;
};
Result<DevPki> make_dev_pki(const std::string& organisation, const std::vector<std::string>& names, int valid_days);

}  // namespace outpost::tls
