#include "upstream/http_upstream.h"

#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include "outpost/base/errors.h"
#include "outpost/base/json_text.h"
#include "outpost/base/tls.h"

namespace outpost::upstream {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr const char* kModernRevision = "2026-07-28";

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "text/event-stream; charset=utf-8" -> "text/event-stream"
std::string media_type(std::string_view content_type) {
  std::string_view t = content_type.substr(0, content_type.find(';'));
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  return lower(t);
}

std::string printable(std::string_view s, size_t max) {
  std::string out;
  for (char c : s.substr(0, max)) out.push_back(c >= 0x20 && c < 0x7f ? c : ' ');
  return out;
}

// One HTTP/1.1 connection, plain (loopback only) or TLS. Registered with its owner while it
// lives, so that stop() can close it wherever it is.
struct Conn {
  std::optional<tcp::socket> plain;
  std::unique_ptr<tls::Stream> secure;
  beast::flat_buffer buffer;
  std::set<Conn*>* registry = nullptr;
  ~Conn() {
    if (registry != nullptr) registry->erase(this);
  }
  tcp::socket& socket() { return secure ? secure->socket() : *plain; }
  void close() {
    error_code ignored;
    socket().close(ignored);
  }
};
using ConnPtr = std::unique_ptr<Conn>;
using Parser = http::response_parser<http::buffer_body>;

asio::awaitable<std::tuple<error_code, size_t>> write_request(Conn& c, http::request<http::string_body>& r) {
  if (c.secure) co_return co_await http::async_write(*c.secure, r, kNoThrow);
  co_return co_await http::async_write(*c.plain, r, kNoThrow);
}

template <class P>
asio::awaitable<std::tuple<error_code, size_t>> read_header(Conn& c, P& p) {
  if (c.secure) co_return co_await http::async_read_header(*c.secure, c.buffer, p, kNoThrow);
  co_return co_await http::async_read_header(*c.plain, c.buffer, p, kNoThrow);
}

template <class P>
asio::awaitable<std::tuple<error_code, size_t>> read_more(Conn& c, P& p) {
  if (c.secure) co_return co_await http::async_read(*c.secure, c.buffer, p, kNoThrow);
  co_return co_await http::async_read(*c.plain, c.buffer, p, kNoThrow);
}

// The body after its header, piece by piece into `sink` (which may refuse: the read stops).
asio::awaitable<Result<void>> read_body(Conn& c, Parser& p, const std::function<Result<void>(std::string_view)>& sink) {
  std::vector<char> chunk(16384);
  while (!p.is_done()) {
    p.get().body().data = chunk.data();
    p.get().body().size = chunk.size();
    auto [ec, n] = co_await read_more(c, p);
    if (ec == http::error::need_buffer) ec = {};
    const size_t got = chunk.size() - p.get().body().size;
    if (got > 0) {
      if (auto r = sink(std::string_view(chunk.data(), got)); !r) co_return fail(r.error());
    }
    if (ec) co_return fail(errc::io, "reading the MCP server's answer: " + ec.message());
  }
  co_return ok();
}

// The egress decision (the hook), TCP and TLS, each under the timeout.
asio::awaitable<Result<ConnPtr>> open_conn(const UpstreamUrl& u, const UpstreamHooks& hooks,
                                           const std::shared_ptr<tls::Context>& ctx, std::chrono::milliseconds timeout) {
  auto ex = co_await asio::this_coro::executor;
  auto ep = hooks.connect(u.host, u.port, u.target);
  if (!ep) co_return fail(ep.error());
  if (!u.tls && !ep->address().is_loopback()) {
    co_return fail(errc::verification_failed, "plain HTTP to " + u.authority + " (" + ep->address().to_string() +
                                                  ") is refused: http:// only reaches loopback; use https://");
  }
  tcp::socket s(ex);
  {
    tls::SocketDeadline dog(s, timeout);
    auto [ec] = co_await s.async_connect(*ep, kNoThrow);
    if (ec) {
      co_return fail(errc::io, "connect to " + u.authority + " (" + ep->address().to_string() + "): " +
                                   (dog.fired() ? "timed out" : ec.message()));
    }
  }
  error_code ignored;
  s.set_option(tcp::no_delay(true), ignored);
  auto c = std::make_unique<Conn>();
  if (u.tls) {
    c->secure = std::make_unique<tls::Stream>(std::move(s), ctx);
    tls::SocketDeadline dog(c->secure->socket(), timeout);
    auto hs = co_await c->secure->handshake();
    if (!hs) co_return fail(hs.error().wrap("TLS with " + u.authority + (dog.fired() ? " (timed out)" : "")));
  } else {
    c->plain.emplace(std::move(s));
  }
  co_return c;
}

}  // namespace

Result<std::shared_ptr<tls::Context>> tls_context(const UpstreamUrl& u, const std::string& ca_pem) {
  if (!u.tls) return std::shared_ptr<tls::Context>();
  if (ca_pem.empty()) return fail(errc::invalid_argument, "https://" + u.authority + ": no CA certificates to check it against");
  tls::ClientConfig c;
  c.ca_pem = ca_pem;
  c.server_name = u.host;
  c.web = true;
  return tls::Context::client(c);
}


Result<HttpAnswer> http_exchange(const HttpExchange& x, const UpstreamHooks& hooks, const std::string& ca_pem,
                                 std::chrono::milliseconds timeout, size_t max_body) {
  OUTPOST_TRY(UpstreamUrl u, parse_upstream_url(x.url));
  OUTPOST_TRY(std::shared_ptr<tls::Context> ctx, tls_context(u, ca_pem));
  asio::io_context io;
  std::optional<Result<HttpAnswer>> out;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto c = co_await open_conn(u, hooks, ctx, timeout);
        if (!c) {
          out = fail(c.error());
          co_return;
        }
        Conn& conn = **c;
        http::request<http::string_body> req{http::string_to_verb(x.method), u.target, 11};
        req.set(http::field::host, u.authority);
        req.set(http::field::user_agent, "outpost");
        for (const auto& [k, v] : x.headers) req.set(k, v);
        if (!x.content_type.empty()) req.set(http::field::content_type, x.content_type);
        req.body() = x.body;
        req.prepare_payload();
        req.keep_alive(false);
        tls::SocketDeadline dog(conn.socket(), timeout);
        auto [wec, wn] = co_await write_request(conn, req);
        std::fill(req.body().begin(), req.body().end(), '\0');
        if (wec) {
          out = fail(errc::io, x.url + ": " + (dog.fired() ? "timed out" : wec.message()));
          co_return;
        }
        http::response_parser<http::string_body> p;
        p.body_limit(max_body);
        auto [rec, rn] = co_await read_more(conn, p);
        if (rec) {
          out = fail(errc::io, x.url + ": " + (dog.fired() ? "timed out" : rec.message()));
          co_return;
        }
        HttpAnswer a;
        a.status = p.get().result_int();
        a.content_type = media_type(p.get()[http::field::content_type]);
        a.body = std::move(p.get().body());
        out = std::move(a);
        conn.close();
      },
      asio::detached);
  io.run();
  if (!out) return fail(errc::io, x.url + ": the exchange did not complete");
  return std::move(*out);
}

struct HttpUpstream::Impl {
  Impl(UpstreamUrl u, UpstreamOptions o, UpstreamHooks h) : url(std::move(u)), options(std::move(o)), hooks(std::move(h)) {}

  const UpstreamUrl url;
  const UpstreamOptions options;
  const UpstreamHooks hooks;
  asio::io_context io;
  std::shared_ptr<tls::Context> tls_ctx;
  std::optional<asio::posix::stream_descriptor> in, out;
  std::set<Conn*> live;        // every open connection (idle or in use)
  std::vector<ConnPtr> idle;   // keep-alive connections ready for the next POST
  std::string session_id;      // Mcp-Session-Id, from the answer to initialize
  std::string protocol_version;
  // MCP 2026-07-28: the server answered outpostd's server/discover probe (sent when the agent
  // initializes) with that revision, so every request goes to it stateless, with the envelope.
  bool probed = false, modern = false;
  std::string client_info = R"({"name":"outpostd","version":"0.1.0"})";  // the agent's, once known
  size_t in_flight = 0;
  bool stopping = false;
  std::optional<asio::steady_timer> changed;  // cancelled when in_flight or the writer changes
  std::string out_buffer;
  bool writing = false;
  mutable std::mutex stats_mu;
  Stats stats;

  void count(uint64_t Stats::*field) {
    std::lock_guard lock(stats_mu);
    ++(stats.*field);
  }
  void notify() {
    if (changed) changed->cancel();
  }
  asio::awaitable<void> wait_change() {
    changed->expires_at(asio::steady_timer::time_point::max());
    (void)co_await changed->async_wait(kNoThrow);
  }

  void shut() {
    stopping = true;
    idle.clear();
    for (Conn* c : std::vector<Conn*>(live.begin(), live.end())) c->close();
    error_code ignored;
    if (in) in->close(ignored);
    notify();
  }

  // Lines for the relay, written in order by one writer.
  void emit(std::string lines) {
    if (lines.empty() || stopping) return;
    out_buffer += lines;
    if (writing) return;
    writing = true;
    asio::co_spawn(io, write_loop(), asio::detached);
  }
  asio::awaitable<void> write_loop() {
    while (!out_buffer.empty() && !stopping) {
      std::string chunk = std::move(out_buffer);
      out_buffer.clear();
      auto [ec, n] = co_await asio::async_write(*out, asio::buffer(chunk), kNoThrow);
      if (ec) {
        shut();  // the relay is gone
        break;
      }
    }
    writing = false;
    notify();
  }

  asio::awaitable<Result<ConnPtr>> take(bool& reused) {
    while (!idle.empty()) {
      ConnPtr c = std::move(idle.back());
      idle.pop_back();
      if (c->socket().is_open()) {
        reused = true;
        co_return c;
      }
    }
    reused = false;
    auto c = co_await open_conn(url, hooks, tls_ctx, options.connect_timeout);
    if (!c) co_return fail(c.error());
    if (stopping) {  // stop() came while it was being opened: it was not in `live` to be closed
      (*c)->close();
      co_return fail(errc::io, "stopped");
    }
    (*c)->registry = &live;
    live.insert(c->get());
    count(&Stats::connections);
    co_return std::move(*c);
  }
  void give_back(ConnPtr c, bool keep_alive) {
    if (!keep_alive || stopping || idle.size() >= options.max_idle) return;
    idle.push_back(std::move(c));
  }

  http::request<http::string_body> request(http::verb verb, const std::string& authorization, const Outgoing* msg) {
    http::request<http::string_body> req{verb, url.target, 11};
    req.set(http::field::host, url.authority);
    req.set(http::field::user_agent, "outpost");
    req.set(http::field::accept, "application/json, text/event-stream");
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    if (!session_id.empty() && (msg == nullptr || !msg->initialize)) req.set("Mcp-Session-Id", session_id);
    if (!protocol_version.empty()) req.set("MCP-Protocol-Version", protocol_version);
    if (msg != nullptr && !msg->method.empty() && header_safe(msg->method)) {
      req.set("Mcp-Method", msg->method);
      if (!msg->name.empty()) req.set("Mcp-Name", mcp_name_header(msg->name));
    }
    // The call's credential (a compact JWS: base64url and dots, minted by outpostd).
    if (msg != nullptr && !msg->credential.empty() && !options.credential_header.empty() && msg->credential.size() <= 8192 &&
        std::all_of(msg->credential.begin(), msg->credential.end(),
                    [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; })) {
      if (options.credential_header == "Authorization") {
        if (authorization.empty()) req.set(http::field::authorization, "Bearer " + msg->credential);
      } else {
        req.set(options.credential_header, msg->credential);
      }
    }
    req.keep_alive(true);
    return req;
  }

  // Carries one line; "" when the server took it (and answered it, for a request), else why not.
  asio::awaitable<std::string> send(const std::string& line, const Outgoing& msg, std::string* capture = nullptr) {
    // The answer's lines: to the relay, or to the caller (outpostd's own probe).
    auto deliver = [&](std::string lines) {
      if (capture != nullptr) {
        *capture += lines;
      } else {
        emit(modern ? modern_answers(std::move(lines), msg) : std::move(lines));
      }
    };
    bool fresh_retry = false;
    for (int attempt = 0; attempt < 2;) {
      auto auth = hooks.authorization(attempt == 1);
      if (!auth) co_return "the MCP server's credential could not be obtained: " + auth.error().message();
      bool reused = false;
      auto conn = co_await take(reused);
      if (!conn) co_return "cannot reach the MCP server: " + conn.error().message();
      Conn& c = **conn;
      auto req = request(http::verb::post, *auth, &msg);
      std::fill(auth->begin(), auth->end(), '\0');
      req.set(http::field::content_type, "application/json");
      req.body() = line;
      req.prepare_payload();
      count(&Stats::posts);
      tls::SocketDeadline dog(c.socket(), options.request_timeout);
      auto [wec, wn] = co_await write_request(c, req);
      Parser p;
      p.body_limit(boost::none);  // an event stream is bounded per event (SseParser), not in all
      error_code hec = wec;
      if (!wec) std::tie(hec, std::ignore) = co_await read_header(c, p);
      if (hec) {
        // A kept-alive connection the server had closed meanwhile: once more on a new one. Only
        // when the request cannot have been taken: the write failed, or the connection ended
        // with no answer at once (not a timeout: a tools/call must never run twice).
        const bool closed_idle = wec || hec == http::error::end_of_stream || hec == asio::error::eof ||
                                 hec == asio::error::connection_reset || hec == asio::error::broken_pipe;
        if (reused && !fresh_retry && !stopping && !dog.fired() && closed_idle) {
          fresh_retry = true;
          continue;
        }
        co_return "the MCP server " + url.authority + ": " + (dog.fired() ? "timed out" : hec.message());
      }
      if (stopping) co_return "stopped";
      auto& res = p.get();
      const unsigned status = res.result_int();
      if (status == 401 && attempt == 0) {
        count(&Stats::retried_401);
        ++attempt;  // a fresh credential, once
        continue;
      }
      if (msg.initialize) {
        const std::string_view sid = res["Mcp-Session-Id"];
        if (!sid.empty() && header_safe(sid)) session_id = std::string(sid);
      }
      const std::string type = media_type(res[http::field::content_type]);
      bool answered = false;
      Result<void> body;
      if (status / 100 == 2 && type == "text/event-stream") {
        count(&Stats::sse_streams);
        SseParser sse(options.max_message);
        std::vector<SseParser::Event> events;
        body = co_await read_body(c, p, [&](std::string_view piece) -> Result<void> {
          events.clear();
          OUTPOST_TRY_VOID(sse.feed(piece, events));
          std::string lines;
          for (const auto& e : events) {
            if (e.type != "message") continue;
            OUTPOST_TRY_VOID(append_messages(e.data, msg.request ? msg.id : boost::json::value(), lines, answered,
                                             msg.initialize ? &protocol_version : nullptr));
          }
          deliver(std::move(lines));
          return ok();
        });
      } else {
        std::string text;
        const size_t limit = status / 100 == 2 ? options.max_message : 2048;
        body = co_await read_body(c, p, [&](std::string_view piece) -> Result<void> {
          if (text.size() + piece.size() > limit) {
            if (status / 100 != 2) return ok();  // an error page: its start is enough
            return fail(errc::corrupt, "an answer of the MCP server is longer than " + std::to_string(limit) + " bytes");
          }
          text.append(piece);
          return ok();
        });
        if (status / 100 != 2) {
          std::string why = "the MCP server answered HTTP " + std::to_string(status);
          if (status == 404 && !session_id.empty()) why += " (the server ended the session)";
          if (status == 401) why += " (it refused outpost's credential twice)";
          if (!text.empty()) why += ": " + printable(text, 300);
          co_return why;
        }
        if (body && !text.empty()) {
          if (type != "application/json") co_return "the MCP server answered with Content-Type \"" + printable(type, 100) + "\"";
          std::string lines;
          body = append_messages(text, msg.request ? msg.id : boost::json::value(), lines, answered,
                                 msg.initialize ? &protocol_version : nullptr);
          deliver(std::move(lines));
        }
      }
      if (!body) {
        c.close();
        if (msg.request && !answered) co_return body.error().message();
        co_return "";
      }
      give_back(std::move(*conn), p.keep_alive());
      if (msg.request && !answered) co_return "the MCP server's answer carried no response to the request";
      co_return "";
    }
    co_return "the MCP server refused outpost's credential (HTTP 401)";
  }

  // ---- MCP 2026-07-28 servers ----
  //
  // The agent's client speaks a session revision (its relay carries initialize and the rest);
  // a server that answers outpostd's server/discover with 2026-07-28 is spoken to in that
  // revision instead: outpostd answers the agent's initialize from the discovery, leaves out
  // what the revision removed (notifications, ping, logging/setLevel), and sends every request
  // stateless with the per-request envelope in params._meta, inserted into the agent's bytes.
  // The envelope declares no client capabilities: outpostd does not carry a 2026-07-28
  // server's input requests to a session-era agent, so a server asks for none; one it returns
  // anyway reaches the agent as a failed call with that reason.

  std::string envelope() const {
    return std::string(R"("io.modelcontextprotocol/protocolVersion":")") + kModernRevision +
           R"(","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":)" + client_info;
  }

  // The agent's request with the envelope in its params._meta; empty when it has no room for
  // one (params that are not an object).
  std::string with_envelope(const std::string& line) const {
    const size_t top = line.find_first_not_of(" \t\r\n");
    if (top == std::string::npos) return {};
    const std::optional<size_t> params = json_member_offset(line, top, "params");
    if (!params) return json_insert_members(line, top, R"("params":{"_meta":{)" + envelope() + "}}");
    if (line[*params] != '{') return {};
    const std::optional<size_t> meta = json_member_offset(line, *params, "_meta");
    if (!meta) return json_insert_members(line, *params, R"("_meta":{)" + envelope() + "}");
    if (line[*meta] != '{') return {};
    return json_insert_members(line, *meta, envelope());
  }

  // A result of the stateless revision a session-era agent cannot take: an input request.
  std::string modern_answers(std::string lines, const Outgoing& msg) const {
    if (!msg.request || lines.find("input_required") == std::string::npos) return lines;
    std::string kept;
    size_t start = 0;
    for (size_t nl; (nl = lines.find('\n', start)) != std::string::npos; start = nl + 1) {
      const std::string_view one(lines.data() + start, nl - start);
      boost::system::error_code ec;
      boost::json::value v = boost::json::parse(one, ec);
      const boost::json::object* o = ec ? nullptr : v.if_object();
      const boost::json::value* result = o != nullptr && !o->contains("method") ? o->if_contains("result") : nullptr;
      if (result != nullptr && result->is_object() && result->as_object().contains("resultType") &&
          result->as_object().at("resultType") == "input_required" && o->contains("id") && o->at("id") == msg.id) {
        kept += failure_line(msg, "the MCP server asked for input (MCP 2026-07-28 input required), which outpost does not carry "
                                 "from a 2026-07-28 server to this agent");
      } else {
        kept.append(one).push_back('\n');
      }
    }
    return kept;
  }

  // On the agent's initialize: is the server of the stateless revision? When it is, the agent
  // gets its answer here, from the discovery.
  asio::awaitable<bool> probe(const std::string& init_line, const Outgoing& init) {
    probed = true;
    boost::system::error_code ec;
    const boost::json::value asked = boost::json::parse(init_line, ec);
    const boost::json::object* params = nullptr;
    if (!ec && asked.is_object() && asked.as_object().contains("params")) params = asked.as_object().at("params").if_object();
    if (params != nullptr && params->contains("clientInfo") && params->at("clientInfo").is_object()) {
      client_info = boost::json::serialize(params->at("clientInfo"));
    }
    Outgoing discover;
    discover.request = true;
    discover.id = "outpost-discover";
    discover.method = "server/discover";
    const std::string line = R"({"jsonrpc":"2.0","id":"outpost-discover","method":"server/discover","params":{"_meta":{)" + envelope() + "}}}";
    protocol_version = kModernRevision;
    std::string answer;
    const std::string why = co_await send(line, discover, &answer);
    protocol_version.clear();
    const boost::json::object* result = nullptr;
    boost::json::value answered;
    if (why.empty()) {
      answered = boost::json::parse(answer.substr(0, answer.find('\n')), ec);
      if (!ec && answered.is_object() && answered.as_object().contains("result")) result = answered.as_object().at("result").if_object();
    }
    const boost::json::array* versions = nullptr;
    if (result != nullptr && result->contains("supportedVersions")) versions = result->at("supportedVersions").if_array();
    if (versions == nullptr || std::find(versions->begin(), versions->end(), boost::json::value(kModernRevision)) == versions->end()) {
      co_return false;  // a session-era server (it refused the probe, or offers no 2026-07-28)
    }
    modern = true;
    protocol_version = kModernRevision;
    count(&Stats::modern);
    // The agent's initialize, answered: the revision it asked for when outpostd's relay speaks
    // it, the server's identity and what outpostd carries of its capabilities.
    std::string version = "2025-11-25";
    if (params != nullptr && params->contains("protocolVersion") && params->at("protocolVersion").is_string()) {
      const std::string_view v = params->at("protocolVersion").as_string();
      if (v == "2025-11-25" || v == "2025-06-18" || v == "2025-03-26" || v == "2024-11-05") version = std::string(v);
    }
    boost::json::object caps = carried_capabilities(result->if_contains("capabilities"));
    boost::json::value info = boost::json::object{{"name", url.authority}, {"version", "unknown"}};
    if (const boost::json::value* meta = result->if_contains("_meta"); meta != nullptr && meta->is_object()) {
      if (const boost::json::value* i = meta->as_object().if_contains("io.modelcontextprotocol/serverInfo"); i != nullptr && i->is_object()) info = *i;
    }
    boost::json::object r{{"protocolVersion", version}, {"capabilities", std::move(caps)}, {"serverInfo", std::move(info)}};
    if (const boost::json::value* i = result->if_contains("instructions"); i != nullptr && i->is_string()) r["instructions"] = *i;
    emit(boost::json::serialize(boost::json::object{{"jsonrpc", "2.0"}, {"id", init.id}, {"result", std::move(r)}}) + "\n");
    co_return true;
  }

  // One line of the agent's to a 2026-07-28 server; "" when carried or not to be carried.
  asio::awaitable<std::string> send_modern(const std::string& line, const Outgoing& msg) {
    if (!msg.request) co_return "";  // no notifications or responses in this revision over HTTP
    if (msg.method == "ping" || msg.method == "logging/setLevel") {  // removed: answered here
      emit(boost::json::serialize(boost::json::object{{"jsonrpc", "2.0"}, {"id", msg.id}, {"result", boost::json::object{}}}) + "\n");
      co_return "";
    }
    if (msg.method == "resources/subscribe" || msg.method == "resources/unsubscribe") {
      co_return "the MCP server speaks 2026-07-28, which has no resource subscriptions (outpost does not carry subscriptions/listen)";
    }
    const std::string enveloped = with_envelope(line);
    if (enveloped.empty()) co_return "the request's params are not an object";
    co_return co_await send(enveloped, msg);
  }

  asio::awaitable<void> post(std::string line) {
    auto msg = classify_outgoing(line);
    if (msg) {
      // Mcp-Method and Mcp-Name carry what the agent wrote: a value that cannot be a header
      // (CR, LF, control bytes, over 1 KiB) is refused, never sent (no request smuggling).
      // (No co_await inside a conditional expression: GCC 12 destroys its temporaries twice.)
      std::string why = "the method is not a valid header value (MCP 2026-07-28's Mcp-Method)";
      bool answered_here = false;
      if (header_safe(msg->method) && msg->initialize && !probed) answered_here = co_await probe(line, *msg);
      if (answered_here) {
        why.clear();
      } else if (header_safe(msg->method) && modern) {
        why = co_await send_modern(line, *msg);
      } else if (header_safe(msg->method)) {
        why = co_await send(line, *msg);
      }
      if (!why.empty() && !stopping) {
        count(&Stats::failed);
        if (msg->request) emit(failure_line(*msg, why));
      }
    }
    --in_flight;
    notify();
  }

  // Ends the server's session (Streamable HTTP: DELETE with its id), best effort.
  asio::awaitable<void> end_session() {
    auto auth = hooks.authorization(false);
    if (!auth) co_return;
    bool reused = false;
    auto conn = co_await take(reused);
    if (!conn) co_return;
    auto req = request(http::verb::delete_, *auth, nullptr);
    req.prepare_payload();
    req.keep_alive(false);
    tls::SocketDeadline dog((*conn)->socket(), std::chrono::seconds(2));
    auto [wec, wn] = co_await write_request(**conn, req);
    if (wec) co_return;
    http::response_parser<http::string_body> p;
    p.body_limit(64 << 10);
    (void)co_await read_more(**conn, p);
  }

  asio::awaitable<void> reader() {
    std::vector<char> buf(64 << 10);
    std::string pending;
    for (;;) {
      auto [ec, n] = co_await in->async_read_some(asio::buffer(buf), kNoThrow);
      if (ec || stopping) break;
      pending.append(buf.data(), n);
      size_t start = 0;
      for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
        while (in_flight >= options.max_in_flight && !stopping) co_await wait_change();
        if (stopping) co_return;
        ++in_flight;
        asio::co_spawn(io, post(pending.substr(start, nl - start)), asio::detached);
      }
      pending.erase(0, start);
    }
    // The relay closed the input: the answers still owed come first, then the session's end.
    while (in_flight > 0 && !stopping) co_await wait_change();
    if (!stopping && !session_id.empty()) co_await end_session();
    while (writing && !stopping) co_await wait_change();
    shut();
    error_code ignored;
    out->close(ignored);
  }
};

HttpUpstream::HttpUpstream(UpstreamUrl url, UpstreamOptions options, UpstreamHooks hooks)
    : impl_(std::make_unique<Impl>(std::move(url), std::move(options), std::move(hooks))) {}

HttpUpstream::~HttpUpstream() = default;

Result<void> HttpUpstream::run(int in_fd, int out_fd) {
  Impl& m = *impl_;
  if (m.url.tls && !m.options.tls) {
    ::close(in_fd);
    ::close(out_fd);
    return fail(errc::invalid_argument, "https://" + m.url.authority + ": no TLS context");
  }
  m.tls_ctx = m.options.tls;
  m.in.emplace(m.io, in_fd);
  m.out.emplace(m.io, out_fd);
  m.changed.emplace(m.io);
  asio::co_spawn(m.io, m.reader(), asio::detached);
  m.io.run();
  m.idle.clear();
  return ok();
}

void HttpUpstream::stop() {
  asio::post(impl_->io, [m = impl_.get()] {
    m->shut();
    error_code ignored;
    if (m->out) m->out->close(ignored);
  });
}

HttpUpstream::Stats HttpUpstream::stats() const {
  std::lock_guard lock(impl_->stats_mu);
  return impl_->stats;
}

}  // namespace outpost::upstream
