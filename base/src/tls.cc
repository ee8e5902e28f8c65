#include "outpost/base/tls.h"

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include <arpa/inet.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <ctime>

#include "mbedtls_check.h"
#include "outpost/base/errors.h"

namespace outpost::tls {
namespace {

namespace asio = boost::asio;
using detail::mbedtls_check;
using detail::Mpi;
using detail::Pk;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// TLS 1.2 ECDHE-ECDSA with AES-GCM only; P-256 only; SHA-256/384 signatures only.
const int kCiphersuites[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                             MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 0};
const mbedtls_ecp_group_id kCurves[] = {MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE};
const int kSigHashes[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_NONE};

int rng(void*, unsigned char* out, size_t len) {
  random_bytes({out, len});
  return 0;
}

boost::system::error_code to_boost(int mbedtls_rc) {
  return boost::system::error_code(std::error_code(mbedtls_error(mbedtls_rc)));
}

struct Crt {
  Crt() { mbedtls_x509_crt_init(&v); }
  ~Crt() { mbedtls_x509_crt_free(&v); }
  Crt(const Crt&) = delete;
  Crt& operator=(const Crt&) = delete;
  mbedtls_x509_crt v;
};
// mbedTLS parses PEM only with the terminating NUL counted in the length.
Result<void> parse_crt(Crt& crt, std::string_view pem, const char* what) {
  std::string z(pem);
  auto r = mbedtls_check(mbedtls_x509_crt_parse(&crt.v, reinterpret_cast<const unsigned char*>(z.c_str()), z.size() + 1),
                         "mbedtls_x509_crt_parse");
  if (!r) return r.error().wrap(what);
  return ok();
}

std::string spki_pin(const mbedtls_x509_crt& crt) {
  // The certificate's DER keeps the SubjectPublicKeyInfo as parsed: pk_raw.
  return hex_encode(sha256(ByteView(crt.pk_raw.p, crt.pk_raw.len)));
}

}  // namespace

struct Context::Impl {
  bool is_server = false;
  mbedtls_ssl_config conf;
  Crt own_cert, ca;
  Pk own_key;
  std::string pin;
  std::string server_name;
  Impl() { mbedtls_ssl_config_init(&conf); }
  ~Impl() { mbedtls_ssl_config_free(&conf); }

  Result<void> common(int endpoint, bool web = false) {
    OUTPOST_TRY_VOID(mbedtls_check(
        mbedtls_ssl_config_defaults(&conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT),
        "mbedtls_ssl_config_defaults"));
    mbedtls_ssl_conf_min_version(&conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    if (!web) {
      mbedtls_ssl_conf_ciphersuites(&conf, kCiphersuites);
      mbedtls_ssl_conf_curves(&conf, kCurves);
      mbedtls_ssl_conf_sig_hashes(&conf, kSigHashes);
    }
    mbedtls_ssl_conf_rng(&conf, rng, nullptr);
    mbedtls_ssl_conf_renegotiation(&conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    return ok();
  }
};

Context::Context(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Context::~Context() = default;

Result<std::shared_ptr<Context>> Context::server(const ServerConfig& config) {
  auto impl = std::make_unique<Impl>();
  impl->is_server = true;
  OUTPOST_TRY_VOID(impl->common(MBEDTLS_SSL_IS_SERVER));
  OUTPOST_TRY_VOID(parse_crt(impl->own_cert, config.cert_chain_pem, "server certificate"));
  std::string key(config.key_pem);
  auto parsed = mbedtls_check(mbedtls_pk_parse_key(&impl->own_key.ctx, reinterpret_cast<const unsigned char*>(key.c_str()),
                                                   key.size() + 1, nullptr, 0),
                              "mbedtls_pk_parse_key");
  if (!parsed) return parsed.error().wrap("server key");
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_ssl_conf_own_cert(&impl->conf, &impl->own_cert.v, &impl->own_key.ctx),
                                 "mbedtls_ssl_conf_own_cert"));
  return std::shared_ptr<Context>(new Context(std::move(impl)));
}

Result<std::shared_ptr<Context>> Context::client(const ClientConfig& config) {
  if (config.ca_pem.empty() && config.pin_sha256.empty()) {
    return fail(errc::invalid_argument, "TLS client: neither a CA nor a pinned key to authenticate the server");
  }
  if (!config.ca_pem.empty() && config.server_name.empty()) {
    // Any certificate the CA issued would do otherwise, whoever it was issued to.
    return fail(errc::invalid_argument, "TLS client: a CA is given but no server name to check the certificate against");
  }
  auto impl = std::make_unique<Impl>();
  OUTPOST_TRY_VOID(impl->common(MBEDTLS_SSL_IS_CLIENT, config.web));
  if (!config.ca_pem.empty()) {
    if (config.web) {
      // A bundle: mbedtls_x509_crt_parse returns how many certificates it could not read.
      std::string z(config.ca_pem);
      const int rc = mbedtls_x509_crt_parse(&impl->ca.v, reinterpret_cast<const unsigned char*>(z.c_str()), z.size() + 1);
      if (rc < 0 || impl->ca.v.version == 0) {
        auto r = mbedtls_check(rc < 0 ? rc : MBEDTLS_ERR_X509_INVALID_FORMAT, "mbedtls_x509_crt_parse");
        return fail(r.error().wrap("CA bundle"));
      }
    } else {
      OUTPOST_TRY_VOID(parse_crt(impl->ca, config.ca_pem, "CA certificate"));
    }
    mbedtls_ssl_conf_ca_chain(&impl->conf, &impl->ca.v, nullptr);
    mbedtls_ssl_conf_authmode(&impl->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else {
    // The pin alone authenticates: the chain is checked by the pin after the handshake.
    mbedtls_ssl_conf_authmode(&impl->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
  }
  if (!config.pin_sha256.empty()) {
    OUTPOST_TRY(Bytes pin, hex_decode(config.pin_sha256));
    if (pin.size() != 32) return fail(errc::invalid_argument, "TLS pin is not a SHA-256 (64 hex digits)");
    impl->pin = hex_encode(pin);
  }
  impl->server_name = config.server_name;
  return std::shared_ptr<Context>(new Context(std::move(impl)));
}

struct Stream::Ssl {
  mbedtls_ssl_context ctx;
  Ssl() { mbedtls_ssl_init(&ctx); }
  ~Ssl() { mbedtls_ssl_free(&ctx); }
};

Stream::Stream(asio::ip::tcp::socket socket, std::shared_ptr<Context> context)
    : socket_(std::move(socket)), context_(std::move(context)), ssl_(std::make_unique<Ssl>()) {
  int rc = mbedtls_ssl_setup(&ssl_->ctx, &context_->impl().conf);
  OUTPOST_CHECK(rc == 0, "mbedtls_ssl_setup on a valid configuration fails only out of memory");
  if (!context_->impl().is_server && !context_->impl().server_name.empty()) {
    rc = mbedtls_ssl_set_hostname(&ssl_->ctx, context_->impl().server_name.c_str());
    OUTPOST_CHECK(rc == 0, "mbedtls_ssl_set_hostname fails only out of memory");
  }
  mbedtls_ssl_set_bio(&ssl_->ctx, this, &Stream::bio_send, &Stream::bio_recv, nullptr);
}

Stream::~Stream() = default;

int Stream::bio_send(void* self, const unsigned char* data, size_t length) {
  auto* s = static_cast<Stream*>(self);
  s->out_.insert(s->out_.end(), data, data + length);
  return static_cast<int>(length);
}

int Stream::bio_recv(void* self, unsigned char* data, size_t length) {
  auto* s = static_cast<Stream*>(self);
  size_t have = s->in_.size() - s->in_pos_;
  if (have == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  size_t n = std::min(have, length);
  std::memcpy(data, s->in_.data() + s->in_pos_, n);
  s->in_pos_ += n;
  if (s->in_pos_ == s->in_.size()) {
    s->in_.clear();
    s->in_pos_ = 0;
  }
  return static_cast<int>(n);
}

asio::awaitable<boost::system::error_code> Stream::flush() {
  while (!out_.empty()) {
    Bytes pending;
    pending.swap(out_);
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(pending), kNoThrow);
    if (ec) co_return ec;
  }
  co_return boost::system::error_code{};
}

asio::awaitable<boost::system::error_code> Stream::fill() {
  uint8_t buf[16384 + 512];
  auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf), kNoThrow);
  if (ec) co_return ec;
  in_.insert(in_.end(), buf, buf + n);
  co_return boost::system::error_code{};
}

asio::awaitable<Result<void>> Stream::handshake() {
  for (;;) {
    int rc = mbedtls_ssl_handshake(&ssl_->ctx);
    if (auto ec = co_await flush()) co_return fail(errc::io, "TLS handshake: send: " + ec.message());
    if (rc == 0) break;
    if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
      uint32_t flags = mbedtls_ssl_get_verify_result(&ssl_->ctx);
      auto r = mbedtls_check(rc, "mbedtls_ssl_handshake");
      if (flags != 0 && flags != uint32_t(-1)) {
        char info[512];
        mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
        std::string text(info);
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
        for (auto& c : text) if (c == '\n') c = ';';
        co_return r.error().wrap("TLS: server certificate not trusted (" + text + ")");
      }
      co_return r.error().wrap("TLS handshake");
    }
    if (auto ec = co_await fill()) {
      co_return fail(errc::io, "TLS handshake: connection closed by peer (" + ec.message() + ")");
    }
  }
  const Context::Impl& c = context_->impl();
  if (!c.is_server && !c.pin.empty()) {
    const mbedtls_x509_crt* peer = mbedtls_ssl_get_peer_cert(&ssl_->ctx);
    if (peer == nullptr) co_return fail(errc::verification_failed, "TLS: the server sent no certificate");
    std::string got = spki_pin(*peer);
    if (got != c.pin) {
      co_return fail(errc::verification_failed,
                     "TLS: the server's key is not the pinned one (pinned " + c.pin.substr(0, 16) + "…, got " +
                         got.substr(0, 16) + "…)");
    }
  }
  co_return ok();
}

asio::awaitable<void> Stream::shutdown() {
  mbedtls_ssl_close_notify(&ssl_->ctx);
  co_await flush();
  boost::system::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

asio::awaitable<Stream::result_type> Stream::read_some(asio::mutable_buffer buffer) {
  if (buffer.size() == 0) co_return result_type{};
  for (;;) {
    int rc = mbedtls_ssl_read(&ssl_->ctx, static_cast<unsigned char*>(buffer.data()), buffer.size());
    if (rc > 0) co_return result_type{{}, static_cast<size_t>(rc)};
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) co_return result_type{asio::error::eof, 0};
    if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) co_return result_type{to_boost(rc), 0};
    if (auto ec = co_await flush()) co_return result_type{ec, 0};
    if (auto ec = co_await fill()) co_return result_type{ec, 0};
  }
}

asio::awaitable<Stream::result_type> Stream::write_some(size_t length) {
  if (length == 0) co_return result_type{};
  int rc;
  do {
    rc = mbedtls_ssl_write(&ssl_->ctx, gather_.data(), length);
  } while (rc == MBEDTLS_ERR_SSL_WANT_WRITE);
  if (rc < 0) co_return result_type{to_boost(rc), 0};
  if (auto ec = co_await flush()) co_return result_type{ec, 0};
  co_return result_type{{}, static_cast<size_t>(rc)};
}

Result<std::string> spki_pin_of_certificate(std::string_view cert_pem) {
  Crt crt;
  OUTPOST_TRY_VOID(parse_crt(crt, cert_pem, "certificate"));
  return spki_pin(crt.v);
}

// --- development PKI ------------------------------------------------------------------------

namespace {

struct CrtWrite {
  CrtWrite() { mbedtls_x509write_crt_init(&v); }
  ~CrtWrite() { mbedtls_x509write_crt_free(&v); }
  CrtWrite(const CrtWrite&) = delete;
  CrtWrite& operator=(const CrtWrite&) = delete;
  mbedtls_x509write_cert v;
};
Result<void> generate_key(Pk& pk) {
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_pk_setup(&pk.ctx, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)), "mbedtls_pk_setup"));
  return mbedtls_check(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk.ctx), rng, nullptr),
                       "mbedtls_ecp_gen_key");
}

Result<std::string> key_pem(Pk& pk) {
  std::string buf(4096, '\0');
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_pk_write_key_pem(&pk.ctx, reinterpret_cast<unsigned char*>(buf.data()), buf.size()),
                                 "mbedtls_pk_write_key_pem"));
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

std::string x509_time(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char out[16];
  std::strftime(out, sizeof out, "%Y%m%d%H%M%S", &tm);
  return out;
}

// GeneralNames: [2] dNSName for every name, and [7] iPAddress for IPv4 literals. Written
// backwards, as mbedTLS's ASN.1 writer does.
Result<Bytes> subject_alt_names(const std::vector<std::string>& names) {
  Bytes buf(2048);
  unsigned char* start = buf.data();
  unsigned char* p = buf.data() + buf.size();
  size_t len = 0;
  auto put = [&](int rc) -> Result<void> {
    if (rc < 0) return mbedtls_check(rc, "mbedtls_asn1_write");
    len += static_cast<size_t>(rc);
    return ok();
  };
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    in_addr v4{};
    if (inet_pton(AF_INET, it->c_str(), &v4) == 1) {
      OUTPOST_TRY_VOID(put(mbedtls_asn1_write_raw_buffer(&p, start, reinterpret_cast<const unsigned char*>(&v4), 4)));
      OUTPOST_TRY_VOID(put(mbedtls_asn1_write_len(&p, start, 4)));
      OUTPOST_TRY_VOID(put(mbedtls_asn1_write_tag(&p, start, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7)));
    }
    OUTPOST_TRY_VOID(put(mbedtls_asn1_write_raw_buffer(&p, start, reinterpret_cast<const unsigned char*>(it->data()), it->size())));
    OUTPOST_TRY_VOID(put(mbedtls_asn1_write_len(&p, start, it->size())));
    OUTPOST_TRY_VOID(put(mbedtls_asn1_write_tag(&p, start, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)));
  }
  OUTPOST_TRY_VOID(put(mbedtls_asn1_write_len(&p, start, len)));
  OUTPOST_TRY_VOID(put(mbedtls_asn1_write_tag(&p, start, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)));
  return Bytes(p, buf.data() + buf.size());
}

Result<std::string> issue(Pk& subject_key, const std::string& subject, Pk& issuer_key, const std::string& issuer,
                          bool is_ca, const std::vector<std::string>& names, int valid_days) {
  CrtWrite crt;
  mbedtls_x509write_crt_set_version(&crt.v, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(&crt.v, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(&crt.v, &subject_key.ctx);
  mbedtls_x509write_crt_set_issuer_key(&crt.v, &issuer_key.ctx);
  Mpi serial;
  uint8_t serial_bytes[16];
  random_bytes(serial_bytes);
  serial_bytes[0] &= 0x7f;
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_mpi_read_binary(&serial.v, serial_bytes, sizeof serial_bytes), "mbedtls_mpi_read_binary"));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_serial(&crt.v, &serial.v), "mbedtls_x509write_crt_set_serial"));
  int64_t now = static_cast<int64_t>(std::time(nullptr));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_validity(&crt.v, x509_time(now - 3600).c_str(),
                                                                   x509_time(now + int64_t(valid_days) * 86400).c_str()),
                                 "mbedtls_x509write_crt_set_validity"));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_subject_name(&crt.v, subject.c_str()),
                                 "mbedtls_x509write_crt_set_subject_name"));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_issuer_name(&crt.v, issuer.c_str()),
                                 "mbedtls_x509write_crt_set_issuer_name"));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_basic_constraints(&crt.v, is_ca ? 1 : 0, is_ca ? 0 : -1),
                                 "mbedtls_x509write_crt_set_basic_constraints"));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_subject_key_identifier(&crt.v),
                                 "mbedtls_x509write_crt_set_subject_key_identifier"));
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_authority_key_identifier(&crt.v),
                                 "mbedtls_x509write_crt_set_authority_key_identifier"));
  unsigned int usage = is_ca ? (MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN) : MBEDTLS_X509_KU_DIGITAL_SIGNATURE;
  OUTPOST_TRY_VOID(mbedtls_check(mbedtls_x509write_crt_set_key_usage(&crt.v, usage), "mbedtls_x509write_crt_set_key_usage"));
  if (!names.empty()) {
    OUTPOST_TRY(Bytes san, subject_alt_names(names));
    OUTPOST_TRY_VOID(mbedtls_check(
        mbedtls_x509write_crt_set_extension(&crt.v, MBEDTLS_OID_SUBJECT_ALT_NAME, MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                                            0, san.data(), san.size()),
        "mbedtls_x509write_crt_set_extension"));
  }
  std::string buf(8192, '\0');
  OUTPOST_TRY_VOID(mbedtls_check(
      mbedtls_x509write_crt_pem(&crt.v, reinterpret_cast<unsigned char*>(buf.data()), buf.size(), rng, nullptr),
      "mbedtls_x509write_crt_pem"));
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

}  // namespace

Result<DevPki> make_dev_pki(const std::string& organisation, const std::vector<std::string>& names, int valid_days) {
  if (names.empty()) return fail(errc::invalid_argument, "dev PKI: no server name");
  Pk ca_key, server_key;
  OUTPOST_TRY_VOID(generate_key(ca_key));
  OUTPOST_TRY_VOID(generate_key(server_key));
  std::string ca_name = "CN=" + organisation + " development CA,O=" + organisation;
  std::string server_name = "CN=" + names.front() + ",O=" + organisation;
  DevPki pki;
  OUTPOST_TRY(pki.ca_cert_pem, issue(ca_key, ca_name, ca_key, ca_name, true, {}, valid_days));
  OUTPOST_TRY(pki.server_cert_pem, issue(server_key, server_name, ca_key, ca_name, false, names, valid_days));
  OUTPOST_TRY(pki.ca_key_pem, key_pem(ca_key));
  OUTPOST_TRY(pki.server_key_pem, key_pem(server_key));
  return pki;
}

}  // namespace outpost::tls
