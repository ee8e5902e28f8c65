#include "broker/http_endpoint.h"

#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"
#include "outpost/base/json_text.h"
#include "outpost/base/log.h"
#include "outpost/base/tls.h"
#include "upstream/streamable_http.h"

namespace outpost::broker {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
// The stateless revision first (what server/discover offers), then the session ones.
constexpr const char* kModern = "2026-07-28";
constexpr const char* kVersions[] = {kModern, "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"};
constexpr int kHeaderMismatch = -32020;
constexpr int kInvalidParams = -32602;
constexpr int kMethodNotFound = -32601;
constexpr const char* kVersionKey = "io.modelcontextprotocol/protocolVersion";
constexpr const char* kCapabilitiesKey = "io.modelcontextprotocol/clientCapabilities";

// A revision of the stateless era: 2026-07-28 or a later date (revisions are dates, so they
// order as strings).
bool modern_revision(std::string_view v) {
  if (v.size() != 10 || v[4] != '-' || v[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (!std::isdigit(static_cast<unsigned char>(v[i]))) return false;
  }
  return v >= std::string_view(kModern);
}

// Mcp-Name and Mcp-Param-* carry a value that is not plain header text as "=?base64?…?=".
std::optional<std::string> header_value(std::string_view v) {
  constexpr std::string_view kOpen = "=?base64?", kClose = "?=";
  if (v.size() < kOpen.size() + kClose.size() || v.substr(0, kOpen.size()) != kOpen || v.substr(v.size() - kClose.size()) != kClose) {
    return std::string(v);
  }
  auto decoded = base64_decode(v.substr(kOpen.size(), v.size() - kOpen.size() - kClose.size()));
  if (!decoded) return std::nullopt;
  return std::string(decoded->begin(), decoded->end());
}

std::string complete_result_of(std::string_view line, const json::object& message, bool cacheable) {
  const json::value* result = message.contains("method") ? nullptr : message.if_contains("result");
  if (result == nullptr || !result->is_object()) return std::string(line);
  const json::object& r = result->as_object();
  std::string fields;
  auto add = [&](const char* key, const char* value) {
    if (r.contains(key)) return;
    if (!fields.empty()) fields += ',';
    fields += '"';
    fields += key;
    fields += "\":";
    fields += value;
  };
  add("resultType", "\"complete\"");
  if (cacheable) {
    add("ttlMs", "0");
    add("cacheScope", "\"private\"");
  }
  const size_t top = line.find_first_not_of(" \t\r\n");
  const std::optional<size_t> at = top == std::string_view::npos ? std::nullopt : json_member_offset(line, top, "result");
  if (fields.empty() || !at || line[*at] != '{') return std::string(line);
  return json_insert_members(line, *at, fields);
}

// Results a 2026-07-28 client may cache (CacheableResult): lists and reads.
bool cacheable_method(std::string_view m) {
  return m == "tools/list" || m == "prompts/list" || m == "resources/list" || m == "resources/templates/list" ||
         m == "resources/read";
}

// What 2026-07-28 removed, or this endpoint does not carry to a 2025-era relay connection.
bool modern_method_not_carried(std::string_view m) {
  return m == "ping" || m == "logging/setLevel" || m == "subscriptions/listen" || m == "resources/subscribe" ||
         m == "resources/unsubscribe" || m.substr(0, 6) == "tasks/" || m == "initialize";
}

// Wakes one coroutine of the loop that waits for a change (the loop is single-threaded, so a
// change made while the waiter is suspended is never missed).
struct Signal {
  explicit Signal(asio::io_context& io) : timer(io) {}
  asio::awaitable<void> wait() {
    timer.expires_at(Clock::time_point::max());
    (void)co_await timer.async_wait(kTuple);
  }
  asio::awaitable<void> wait_until(Clock::time_point t) {
    timer.expires_at(t);
    (void)co_await timer.async_wait(kTuple);
  }
  void notify() { timer.cancel(); }
  asio::steady_timer timer;
};

// The server's messages for one open stream: a POST's (ends with its response) or the GET's.
struct Outbox {
  explicit Outbox(asio::io_context& io) : signal(io) {}
  std::deque<std::string> lines;
  bool done = false;  // the response is in `lines`, or the session ended
  Signal signal;
  // A 2026-07-28 request's: its response is marked complete (and cacheable, for lists), and
  // its id is what a cancellation names when its stream goes away unanswered.
  bool modern = false, cacheable = false, exclusive = false;
  std::string id_key;
  // MCP 2026-07-28's multi round-trip requests: the answers the agent has given so far (its
  // inputResponses and requestState), by key, and how many requests the server made of this
  // run of the call.
  json::object known;
  int asked = 0;
  void push(std::string line, bool last) {
    lines.push_back(std::move(line));
    done = done || last;
    signal.notify();
  }
};

std::string rpc_error(const json::value& id, int code, const std::string& message) {
  return json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", message}}}});
}

// MCP 2026-07-28's "unsupported protocol version" error: the versions this endpoint speaks, so
// a client that probed with a newer one falls back to a session (the SDKs do).
constexpr int kUnsupportedProtocolVersion = -32022;
constexpr const char* kSpoken = ": this endpoint speaks 2026-07-28 (stateless) and 2025-11-25, 2025-06-18, 2025-03-26, 2024-11-05 (sessions)";
// Relay connections for 2026-07-28 requests per agent and server: a second is opened only for a
// request whose id (or progress token) is in flight on the first, from another client.
constexpr size_t kStatelessConnections = 4;
std::string unsupported_version(const json::value& id, std::string_view requested, const std::string& message) {
  json::array supported;
  for (const char* v : kVersions) supported.emplace_back(v);
  return json::serialize(json::object{
      {"jsonrpc", "2.0"},
      {"id", id},
      {"error", {{"code", kUnsupportedProtocolVersion}, {"message", message},
                 {"data", {{"supported", std::move(supported)}, {"requested", std::string(requested.substr(0, 40))}}}}}});
}

bool valid_server_name(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

bool accepts(std::string_view accept, std::string_view type) {
  return accept.find(type) != std::string_view::npos || accept.find("*/*") != std::string_view::npos;
}

}  // namespace

bool supported_protocol_version(std::string_view version) {
  for (const char* v : kVersions) {
    if (version == v) return true;
  }
  return false;
}

std::string complete_result(std::string_view line, bool cacheable) {
  boost::system::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec || !v.is_object()) return std::string(line);
  return complete_result_of(line, v.as_object(), cacheable);
}

PostCheck check_post(std::string_view body, std::string_view mcp_method, std::string_view mcp_name,
                     std::string_view protocol_version) {
  PostCheck c;
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) {
    c.rpc_code = -32700;
    c.why = "the body is not JSON: " + ec.message();
    return c;
  }
  if (v.is_array()) {
    c.why = "JSON-RPC batches are not accepted (MCP 2025-06-18 and later): one message per POST";
    return c;
  }
  const json::object* o = v.if_object();
  const json::value* version = o != nullptr ? o->if_contains("jsonrpc") : nullptr;
  if (version == nullptr || *version != "2.0") {
    c.why = "not a JSON-RPC 2.0 message";
    return c;
  }
  const json::value* method = o->if_contains("method");
  const json::value* id = o->if_contains("id");
  if (method != nullptr && !method->is_string()) {
    c.why = "method is not a string";
    return c;
  }
  if (id != nullptr && !id->is_string() && !id->is_int64() && !id->is_uint64()) {
    c.why = "id must be a string or an integer";
    return c;
  }
  if (method == nullptr && (id == nullptr || (!o->contains("result") && !o->contains("error")))) {
    c.why = "neither a request, a notification nor a response";
    return c;
  }
  c.method = method != nullptr ? std::string(method->as_string()) : std::string();
  c.request = method != nullptr && id != nullptr;
  c.initialize = c.request && c.method == "initialize";
  if (id != nullptr) c.id_key = json::serialize(*id);
  const json::object* params = nullptr;
  const json::object* meta = nullptr;
  if (const json::value* p = o->if_contains("params")) params = p->if_object();
  if (params != nullptr) {
    if (const json::value* m = params->if_contains("_meta"); m != nullptr && m->is_object()) {
      meta = &m->as_object();
      if (const json::value* token = meta->if_contains("progressToken")) c.progress_key = json::serialize(*token);
    }
  }
  const char* named_by = c.method == "tools/call" || c.method == "prompts/get" ? "name"
                         : c.method == "resources/read"                          ? "uri"
                                                                                 : nullptr;

  // The era: 2026-07-28 or later named by the body's _meta or by the header (each must then
  // agree with the other). `initialize` is the session era's own handshake whatever it carries.
  const json::value* body_version = meta != nullptr ? meta->if_contains(kVersionKey) : nullptr;
  const bool body_modern = body_version != nullptr && body_version->is_string() && modern_revision(body_version->as_string());
  c.modern = !c.initialize && (body_modern || modern_revision(protocol_version));
  if (c.modern) {
    c.rpc_code = kHeaderMismatch;
    if (c.method.empty()) {
      c.rpc_code = -32600;
      c.why = "a 2026-07-28 client sends requests and notifications only, never a response";
      return c;
    }
    if (protocol_version.empty()) {
      c.why = "MCP-Protocol-Version is required on a 2026-07-28 request";
      return c;
    }
    // A notification's _meta need not name its version (2026-07-28 defines none over HTTP).
    if (c.request && body_version == nullptr) {
      c.rpc_code = kInvalidParams;
      c.why = std::string("params._meta[\"") + kVersionKey + "\"] (a string) is required on a 2026-07-28 request";
      return c;
    }
    if (body_version != nullptr && (!body_version->is_string() || body_version->as_string() != protocol_version)) {
      c.why = "the headers and the body disagree: MCP-Protocol-Version is \"" + std::string(protocol_version.substr(0, 40)) +
              "\" but params._meta names " + json::serialize(*body_version).substr(0, 40);
      return c;
    }
    c.version = std::string(protocol_version);
    if (c.version != kModern) {
      c.unsupported = true;  // answered with the versions served (-32022); nothing else to check
      c.ok = true;
      c.rpc_code = -32022;
      return c;
    }
    if (c.request) {
      if (const json::value* caps = meta->if_contains(kCapabilitiesKey); caps == nullptr || !caps->is_object()) {
        c.rpc_code = kInvalidParams;
        c.why = std::string("params._meta[\"") + kCapabilitiesKey + "\"] (an object) is required on a 2026-07-28 request";
        return c;
      }
    }
    if (c.request && mcp_method.empty()) {
      c.why = "Mcp-Method is required on a 2026-07-28 request";
      return c;
    }
    if (c.request && named_by != nullptr && mcp_name.empty()) {
      c.why = "Mcp-Name is required on a 2026-07-28 " + c.method + " request";
      return c;
    }
  }
  // MCP 2026-07-28's routing headers: a gateway decides on them, so they must say what the
  // body says (in either era, when sent).
  c.rpc_code = kHeaderMismatch;
  if (!mcp_method.empty() && mcp_method != c.method) {
    c.why = "the headers and the body disagree: Mcp-Method is \"" + std::string(mcp_method.substr(0, 100)) +
            "\" but the body's method is \"" + c.method.substr(0, 100) + "\"";
    return c;
  }
  if (!mcp_name.empty()) {
    if (named_by == nullptr) {
      c.why = "the headers and the body disagree: Mcp-Name is given for " + (c.method.empty() ? "a response" : c.method.substr(0, 100)) +
              ", which names nothing";
      return c;
    }
    const std::optional<std::string> name = header_value(mcp_name);
    const json::value* named = params != nullptr ? params->if_contains(named_by) : nullptr;
    if (!name || named == nullptr || !named->is_string() || named->as_string() != *name) {
      c.why = "the headers and the body disagree: Mcp-Name is \"" + std::string(mcp_name.substr(0, 100)) + "\" but the body's params." +
              named_by + " is " + (named != nullptr ? json::serialize(*named).substr(0, 100) : std::string("missing"));
      return c;
    }
  }
  c.rpc_code = -32600;
  // The body as the agent wrote it, on one line: in valid JSON a raw CR or LF can only be
  // whitespace (inside strings they are escaped), so spaces in their place change nothing, and
  // numbers and strings reach the server byte for byte as on the stdio road.
  c.line.assign(body);
  std::replace(c.line.begin(), c.line.end(), '\r', ' ');
  std::replace(c.line.begin(), c.line.end(), '\n', ' ');
  c.ok = true;
  return c;
}

struct HttpEndpoint::Impl {
  Impl(HttpEndpointOptions o, HttpEndpointHooks h) : options(o), hooks(std::move(h)), work(io.get_executor()), pool(2) {}

  struct AgentEntry;
  struct Session;

  // The relay connections that carry one agent's 2026-07-28 requests to one server, for one set
  // of client capabilities outpostd declares on them (none, or the agent's elicitation,
  // sampling and roots); loop only.
  struct StatelessPool {
    std::vector<std::weak_ptr<Session>> sessions;  // owned by `sessions` of the endpoint
    bool opening = false;
    std::vector<std::shared_ptr<Signal>> waiting;  // for a connection to open or come free
    json::object declared;                          // the capabilities of its handshake
    json::object handshake;                         // the server's InitializeResult
    void wake() {
      for (auto& w : waiting) w->notify();
      waiting.clear();
    }
  };

  struct Session {
    Session(asio::io_context& io, std::string i, std::shared_ptr<AgentEntry> a, std::string s, HttpChannel c)
        : id(std::move(i)), agent(std::move(a)), server(std::move(s)), channel(std::move(c)), in(io), out(io) {}
    std::string id;
    std::shared_ptr<AgentEntry> agent;
    std::string server, version;
    bool stateless = false;  // the endpoint's own connection for 2026-07-28 requests
    std::weak_ptr<StatelessPool> pool;
    std::shared_ptr<Outbox> exclusive;          // a call that could ask: nothing else goes beside it
    std::unordered_set<std::string> abandoned;  // requests whose stream closed before their answer
    bool retired = false;                       // takes nothing new; ends once nothing is in flight
    HttpChannel channel;
    asio::posix::stream_descriptor in, out;  // from_relay, to_relay
    std::string pending_write;
    bool writing = false, ended = false;
    std::unordered_map<std::string, std::shared_ptr<Outbox>> by_id, by_progress;
    std::vector<std::weak_ptr<Outbox>> posts;  // open POST streams, oldest first
    std::shared_ptr<Outbox> get_stream;
    std::deque<std::string> unclaimed;
    size_t streams_open = 0;
    Clock::time_point used = Clock::now();
  };

  struct AgentEntry {
    AgentEntry(asio::io_context& io, std::string a) : agent(std::move(a)), acceptor(io), slot_free(io) {}
    std::string agent;
    tcp::acceptor acceptor;
    std::atomic<bool> stopped{false};
    std::unordered_set<tcp::socket*> conns;  // loop only
    Signal slot_free;                        // a connection ended, or the agent stopped
    size_t sessions_open = 0;                // loop only
    size_t opening = 0;                      // sessions being opened on the pool; loop only
    // By server and declared capabilities; loop only.
    std::unordered_map<std::string, std::shared_ptr<StatelessPool>> stateless;
    std::atomic<uint64_t> sessions{0}, requests{0}, refused{0}, open_sessions{0};
  };

  const HttpEndpointOptions options;
  const HttpEndpointHooks hooks;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::thread_pool pool;
  std::thread loop;
  std::optional<asio::steady_timer> sweeper;

  mutable std::mutex mu;  // agents
  std::unordered_map<std::string, std::shared_ptr<AgentEntry>> agents;
  std::unordered_map<std::string, std::shared_ptr<Session>> sessions;  // loop only

  template <class F>
  asio::awaitable<std::invoke_result_t<F>> off_loop(F fn) {
    std::optional<std::invoke_result_t<F>> out;
    co_await asio::co_spawn(
        pool.get_executor(),
        [&]() -> asio::awaitable<void> {
          out.emplace(fn());
          co_return;
        },
        asio::use_awaitable);
    co_return std::move(*out);
  }

  // ---- sessions ----

  void end_session(std::shared_ptr<Session> s, const std::string& why) {  // by value: it erases the map's copy
    if (s->ended) return;
    s->ended = true;
    boost::system::error_code ignored;
    s->in.close(ignored);
    s->out.close(ignored);
    s->channel.control.reset();  // the relay ends, and the server behind it
    for (auto& [key, box] : s->by_id) {
      box->push(rpc_error(json::parse(key), -32000, "the MCP connection ended: " + why), true);
    }
    s->by_id.clear();
    s->by_progress.clear();
    if (s->get_stream) {
      s->get_stream->done = true;
      s->get_stream->signal.notify();
    }
    sessions.erase(s->id);
    --s->agent->sessions_open;
    s->agent->open_sessions.fetch_sub(1);
    if (auto p = s->pool.lock()) p->wake();
  }

  // False when the relay is not keeping up (the server stopped reading): the agent is told to
  // come back later rather than outpostd holding its messages without bound.
  bool send_line(const std::shared_ptr<Session>& s, std::string line) {
    if (s->pending_write.size() + line.size() > 2 * options.max_body) return false;
    s->pending_write += line;
    s->pending_write += '\n';
    if (s->writing) return true;
    s->writing = true;
    asio::co_spawn(io, writer(s), asio::detached);
    return true;
  }

  asio::awaitable<void> writer(std::shared_ptr<Session> s) {
    while (!s->pending_write.empty() && !s->ended) {
      std::string chunk = std::move(s->pending_write);
      s->pending_write.clear();
      auto [ec, n] = co_await asio::async_write(s->out, asio::buffer(chunk), kTuple);
      if (ec) {
        end_session(s, "the relay stopped reading");
        break;
      }
    }
    s->writing = false;
  }

  // A request nobody waits for any more (its stream went away, or the agent cancelled it): its
  // late messages are dropped, and the session can go idle.
  void forget(const std::shared_ptr<Session>& s, const std::shared_ptr<Outbox>& box) {
    if (s->exclusive == box) s->exclusive.reset();
    for (auto* map : {&s->by_id, &s->by_progress}) {
      for (auto it = map->begin(); it != map->end();) it = it->second == box ? map->erase(it) : std::next(it);
    }
    box->done = true;
    box->signal.notify();
    if (auto p = s->pool.lock()) p->wake();
  }
  void cancel(const std::shared_ptr<Session>& s, std::string_view body) {
    boost::system::error_code ec;
    json::value v = json::parse(body, ec);
    if (ec || !v.is_object()) return;
    const json::value* params = v.as_object().if_contains("params");
    const json::value* rid = params != nullptr && params->is_object() ? params->as_object().if_contains("requestId") : nullptr;
    if (rid == nullptr) return;
    auto it = s->by_id.find(json::serialize(*rid));
    if (it == s->by_id.end()) return;
    std::shared_ptr<Outbox> box = it->second;
    // The cancelled request's stream ends with an error of its own: no answer will come.
    box->push(rpc_error(*rid, -32800, "cancelled by the agent"), true);
    forget(s, box);
  }

  // A 2026-07-28 request whose stream closed before its answer: closing is its cancellation
  // (that revision has no notifications/cancelled over HTTP), passed on to the server. A call
  // that could ask ends its connection instead (a later question of its run must not reach the
  // next call); any other request's id stays taken on the connection until the server answers
  // it, and a connection with many such ends once idle.
  void abandon(const std::shared_ptr<Session>& s, const std::shared_ptr<Outbox>& box) {
    const bool open = box->modern && !box->done && !s->ended && s->by_id.count(box->id_key) != 0;
    forget(s, box);
    if (!open) return;
    if (box->exclusive) {
      end_session(s, "the agent closed the stream of a call that could ask it for input");
      return;
    }
    boost::system::error_code ec;
    json::value id = json::parse(box->id_key, ec);
    if (ec) return;
    (void)send_line(s, json::serialize(json::object{{"jsonrpc", "2.0"}, {"method", "notifications/cancelled"},
                                                    {"params", {{"requestId", id}, {"reason", "the agent closed the request's stream"}}}}));
    s->abandoned.insert(box->id_key);
    if (s->abandoned.size() > 64) s->retired = true;
    if (s->retired && s->by_id.empty()) end_session(s, "retired: the agent abandoned many requests on it");
  }

  // The server asks the client something on a connection for 2026-07-28 requests, where
  // outpostd is the client. 2026-07-28 has no server-to-client requests: a server asks by
  // answering the call with an input request, which the agent answers on a retry (MRTR). A
  // 2025-era server asks mid-call instead, so outpostd ends this run of the call (cancelled
  // upstream) and answers the agent with the question; the agent's retry is a new call, decided
  // and recorded like the first, and when its run asks the same question (the n-th of the run)
  // outpostd answers with what the agent gave. Only a call alone on its connection can ask
  // (stateless_session), so the question is that call's.
  void ask(const std::shared_ptr<Session>& s, const json::object& msg) {
    const json::value& id = msg.at("id");
    const json::value& method = msg.at("method");
    auto reply_with = [&](json::object member) {
      json::object r{{"jsonrpc", "2.0"}, {"id", id}};
      for (auto& [k, v] : member) r[k] = std::move(v);
      (void)send_line(s, json::serialize(r));
    };
    if (method == "ping") return reply_with({{"result", json::object{}}});
    // What the question needs the client to have declared (outpostd declared it for the agent).
    const char* needs = method == "elicitation/create"      ? "elicitation"
                        : method == "sampling/createMessage" ? "sampling"
                        : method == "roots/list"             ? "roots"
                                                             : nullptr;
    auto mine = s->pool.lock();
    std::shared_ptr<Outbox> box = s->exclusive;
    if (needs == nullptr || mine == nullptr || !mine->declared.contains(needs) || box == nullptr || s->by_id.size() != 1) {
      return reply_with({{"error", {{"code", kMethodNotFound}, {"message", "outpostd cannot put this to the agent (MCP 2026-07-28 client)"}}}});
    }
    const std::string key = "outpost-" + std::to_string(++box->asked);
    if (const json::value* given = box->known.if_contains(key)) return reply_with({{"result", *given}});
    // Ask the agent. This run of the call ends here, with its connection (and the server's
    // process behind it, for a stdio server): nothing of it can reach a later call.
    json::object question{{"method", method}};
    if (const json::value* params = msg.if_contains("params")) question["params"] = *params;
    json::object result{{"resultType", "input_required"},
                        {"inputRequests", {{key, std::move(question)}}},
                        {"requestState", base64url_encode(as_bytes(json::serialize(box->known)))}};
    const std::string line = json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", json::parse(box->id_key)}, {"result", std::move(result)}});
    forget(s, box);
    box->push(line, true);
    end_session(s, "the call's run ended in a question for the agent (MCP 2026-07-28 input required)");
  }

  // The server's messages, each to the stream that waits for it.
  void route(const std::shared_ptr<Session>& s, std::string line) {
    boost::system::error_code ec;
    json::value v = json::parse(line, ec);
    const json::object* o = ec ? nullptr : v.if_object();
    // Only messages go to the agent, and as one SSE data line each: a bare CR would end the
    // line early and let a server forge an event of its own after it.
    if (o == nullptr) return;
    std::replace(line.begin(), line.end(), '\r', ' ');
    if (o != nullptr && !o->contains("method")) {
      if (const json::value* id = o->if_contains("id")) {
        const std::string key = json::serialize(*id);
        if (s->abandoned.erase(key) != 0) return;  // the agent gave up on it
        auto it = s->by_id.find(key);
        if (it == s->by_id.end()) return;  // its POST has gone: nobody to answer
        std::shared_ptr<Outbox> box = it->second;
        s->by_id.erase(it);
        for (auto p = s->by_progress.begin(); p != s->by_progress.end();) p = p->second == box ? s->by_progress.erase(p) : std::next(p);
        if (s->exclusive == box) s->exclusive.reset();
        box->push(box->modern ? complete_result_of(line, *o, box->cacheable) : std::move(line), true);
        if (auto p = s->pool.lock()) p->wake();
        if (s->retired && s->by_id.empty()) end_session(s, "retired: the agent abandoned many requests on it");
        return;
      }
    }
    if (s->stateless && o->contains("method") && o->contains("id")) {
      ask(s, *o);
      return;
    }
    if (o != nullptr && o->contains("method") && o->at("method") == "notifications/progress") {
      if (const json::value* params = o->if_contains("params"); params != nullptr && params->is_object()) {
        if (const json::value* token = params->as_object().if_contains("progressToken")) {
          auto it = s->by_progress.find(json::serialize(*token));
          if (it != s->by_progress.end()) {
            it->second->push(std::move(line), false);
            return;
          }
        }
      }
    }
    // 2026-07-28 has no stream for what relates to no request: dropped.
    if (s->stateless) return;
    // Unclaimed: the GET stream, else the newest open POST stream, else held for a GET.
    if (s->get_stream) {
      s->get_stream->push(std::move(line), false);
      return;
    }
    while (!s->posts.empty()) {
      if (auto box = s->posts.back().lock(); box && !box->done) {
        box->push(std::move(line), false);
        return;
      }
      s->posts.pop_back();
    }
    if (s->unclaimed.size() >= options.max_unclaimed) s->unclaimed.pop_front();
    s->unclaimed.push_back(std::move(line));
  }

  asio::awaitable<void> reader(std::shared_ptr<Session> s) {
    std::string pending;
    std::vector<char> buf(64 << 10);
    for (;;) {
      auto [ec, n] = co_await s->in.async_read_some(asio::buffer(buf), kTuple);
      if (ec || s->ended) break;
      pending.append(buf.data(), n);
      size_t start = 0;
      for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
        route(s, pending.substr(start, nl - start));
      }
      pending.erase(0, start);
      if (pending.size() > options.max_line) {
        end_session(s, "a message of the server is longer than " + std::to_string(options.max_line) + " bytes");
        co_return;
      }
    }
    end_session(s, "the server's side closed");
  }

  asio::awaitable<void> sweep() {
    for (;;) {
      sweeper->expires_after(std::chrono::seconds(15));
      auto [ec] = co_await sweeper->async_wait(kTuple);
      if (ec) co_return;
      std::vector<std::shared_ptr<Session>> idle;
      for (auto& [id, s] : sessions) {
        if (s->streams_open == 0 && s->by_id.empty() && Clock::now() - s->used > options.idle_session) idle.push_back(s);
      }
      for (auto& s : idle) end_session(s, "idle");
    }
  }

  // ---- HTTP ----

  using Request = http::request<http::string_body>;

  asio::awaitable<bool> reply(tcp::socket& sock, const Request& req, http::status status, std::string body,
                              const std::string& session = "", AgentEntry* a = nullptr,
                              const char* content_type = "application/json") {
    http::response<http::string_body> res{status, req.version()};
    res.set(http::field::server, "outpostd");
    if (!body.empty()) res.set(http::field::content_type, content_type);
    if (!session.empty()) res.set("Mcp-Session-Id", session);
    res.body() = std::move(body);
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    if (a != nullptr) {
      a->requests.fetch_add(1);
      if (static_cast<unsigned>(status) >= 400) a->refused.fetch_add(1);
    }
    auto [ec, n] = co_await http::async_write(sock, res, kTuple);
    co_return !ec && req.keep_alive();
  }

  asio::awaitable<bool> refuse(tcp::socket& sock, const Request& req, AgentEntry& a, http::status status, int code,
                               const std::string& why, const json::value& id = nullptr) {
    co_return co_await reply(sock, req, status, rpc_error(id, code, why), "", &a);
  }

  // Streams a POST's messages until its response, as an event stream (what the reference SDK
  // server sends too). When the response is all there is, the stream is one sized body written
  // at once, as cheap as a JSON body.
  asio::awaitable<bool> answer(std::shared_ptr<tcp::socket> shared, const Request& req, AgentEntry& a, std::shared_ptr<Session> s,
                               std::shared_ptr<Outbox> box, const std::string& session_header) {
    tcp::socket& sock = *shared;
    ++s->streams_open;
    // An agent that goes away while it waits (a closed event stream, an abandoned call) is seen
    // at once, not at the next message: the socket turns readable (EOF) while nothing is asked.
    auto gone = std::make_shared<bool>(false);
    asio::co_spawn(
        io,
        [shared, box, gone]() -> asio::awaitable<void> {
          auto [ec] = co_await shared->async_wait(tcp::socket::wait_read, kTuple);
          if (ec == asio::error::operation_aborted) co_return;
          *gone = true;
          box->signal.notify();
        },
        asio::detached);
    struct StopWatch {
      tcp::socket& s;
      ~StopWatch() {
        boost::system::error_code ignored;
        s.cancel(ignored);
      }
    } stop_watch{sock};
    while (box->lines.empty() && !box->done && !*gone) co_await box->signal.wait();
    if (*gone) {
      abandon(s, box);
      --s->streams_open;
      co_return false;
    }
    if (box->done && box->lines.size() == 1) {
      --s->streams_open;
      s->used = Clock::now();
      co_return co_await reply(sock, req, http::status::ok, "event: message\ndata: " + box->lines.front() + "\n\n", session_header,
                               &a, "text/event-stream");
    }
    http::response<http::empty_body> res{http::status::ok, req.version()};
    res.set(http::field::server, "outpostd");
    res.set(http::field::content_type, "text/event-stream");
    res.set(http::field::cache_control, "no-cache");
    if (!session_header.empty()) res.set("Mcp-Session-Id", session_header);
    res.chunked(true);
    res.keep_alive(req.keep_alive());
    a.requests.fetch_add(1);
    http::response_serializer<http::empty_body> sr{res};
    auto [hec, hn] = co_await http::async_write_header(sock, sr, kTuple);
    bool ok = !hec;
    while (ok && !*gone) {
      while (ok && !box->lines.empty()) {
        std::string event = "event: message\ndata: " + box->lines.front() + "\n\n";
        box->lines.pop_front();
        auto [ec, n] = co_await asio::async_write(sock, http::make_chunk(asio::buffer(event)), kTuple);
        ok = !ec;
      }
      if (!ok || box->done || *gone) break;
      co_await box->signal.wait();
    }
    ok = ok && !*gone;
    if (ok) {
      auto [ec, n] = co_await asio::async_write(sock, http::make_chunk_last(), kTuple);
      ok = !ec;
    }
    if (!ok) abandon(s, box);  // the agent went away: later messages for it are dropped
    --s->streams_open;
    s->used = Clock::now();
    co_return ok && req.keep_alive();
  }

  // ---- opening relay connections ----

  // A relay connection, or why there is none: `status` 503 (try again) or 200 (the relay's
  // refusal, a JSON-RPC error); an empty `why` when the agent stopped meanwhile.
  struct Opened {
    std::shared_ptr<Session> session;
    http::status status = http::status::ok;
    std::string why;
  };

  asio::awaitable<bool> refuse_open(tcp::socket& sock, const Request& req, AgentEntry& a, const json::value& id, const Opened& o) {
    if (o.why.empty()) co_return false;
    if (o.status != http::status::ok) co_return co_await refuse(sock, req, a, o.status, -32000, o.why, id);
    co_return co_await reply(sock, req, http::status::ok, rpc_error(id, -32000, o.why), "", &a);
  }

  asio::awaitable<Opened> open_session(std::shared_ptr<AgentEntry> agent, const std::string& server) {
    AgentEntry& a = *agent;
    if (a.sessions_open >= options.max_sessions_per_agent) {
      // The least recently used idle session makes room (clients seldom DELETE theirs).
      std::shared_ptr<Session> lru;
      for (auto& [sid_, other] : sessions) {
        if (other->agent->agent != a.agent || other->streams_open > 0 || !other->by_id.empty()) continue;
        if (!lru || other->used < lru->used) lru = other;
      }
      if (!lru) {
        co_return Opened{nullptr, http::status::service_unavailable,
                         "agent " + a.agent + " has " + std::to_string(a.sessions_open) + " busy MCP sessions open already"};
      }
      end_session(lru, "the agent opened more sessions than it may keep");
    }
    // Opening blocks a pool thread (a server may be started): two at a time per agent, so one
    // agent's slow server cannot hold up every other agent's sessions.
    if (a.opening >= 2) {
      co_return Opened{nullptr, http::status::service_unavailable, "agent " + a.agent + " is opening MCP sessions already: try again"};
    }
    ++a.sessions_open;  // reserved while the relay is opened
    ++a.opening;
    auto opened = co_await off_loop([&] { return hooks.open(a.agent, server); });
    --a.opening;
    --a.sessions_open;
    if (!opened) co_return Opened{nullptr, http::status::ok, opened.error().message()};
    if (a.stopped) co_return Opened{};  // the channel closes with `opened`: the relay ends
    uint8_t raw[16];
    random_bytes(std::span<uint8_t>(raw, sizeof raw));
    auto s = std::make_shared<Session>(io, hex_encode(ByteView(raw, sizeof raw)), agent, server, std::move(*opened));
    boost::system::error_code ec;
    s->in.assign(s->channel.from_relay.get(), ec);
    if (!ec) {
      s->channel.from_relay.release();
      s->out.assign(s->channel.to_relay.get(), ec);
      if (!ec) s->channel.to_relay.release();
    }
    if (ec) co_return Opened{nullptr, http::status::ok, "MCP connection: " + ec.message()};
    sessions[s->id] = s;
    ++a.sessions_open;
    a.sessions.fetch_add(1);
    a.open_sessions.fetch_add(1);
    asio::co_spawn(io, reader(s), asio::detached);
    co_return Opened{s, http::status::ok, {}};
  }

  // outpostd's own 2025-11-25 handshake on a new connection for 2026-07-28 requests, declaring
  // the capabilities of its pool: the server asks nothing of a client that cannot answer.
  asio::awaitable<Result<json::object>> handshake(const std::shared_ptr<Session>& s, const json::object& declared) {
    const std::string key = "\"outpost-handshake\"";
    auto box = std::make_shared<Outbox>(io);
    s->by_id[key] = box;
    (void)send_line(s, json::serialize(json::object{
                           {"jsonrpc", "2.0"},
                           {"id", "outpost-handshake"},
                           {"method", "initialize"},
                           {"params", {{"protocolVersion", "2025-11-25"}, {"capabilities", declared},
                                       {"clientInfo", {{"name", "outpostd"}, {"version", "0.1.0"}}}}}}));
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (box->lines.empty() && !box->done && Clock::now() < deadline) co_await box->signal.wait_until(deadline);
    s->by_id.erase(key);
    boost::system::error_code ec;
    json::value answer = box->lines.empty() ? json::value() : json::parse(box->lines.back(), ec);
    const json::value* result = !ec && answer.is_object() ? answer.as_object().if_contains("result") : nullptr;
    if (result == nullptr || !result->is_object() || !result->as_object().contains("protocolVersion")) {
      std::string why = box->lines.empty() ? std::string("no answer in 30 s") : box->lines.back().substr(0, 300);
      co_return fail(errc::unsupported, "the MCP server did not take outpostd's initialize: " + why);
    }
    if (const json::value* pv = result->as_object().if_contains("protocolVersion"); pv->is_string()) {
      s->version = std::string(pv->as_string());
    }
    (void)send_line(s, R"({"jsonrpc":"2.0","method":"notifications/initialized"})");
    co_return result->as_object();
  }

  // What a 2026-07-28 request needs of its connection.
  struct Want {
    json::object declared;   // the client capabilities a server could use on it
    bool exclusive = false;  // a call that could ask: alone on its connection
    bool any = false;        // server/discover: any connection of the pool
  };

  // A connection of the agent to `server` for a 2026-07-28 request: one of the pool for its
  // declared capabilities on which its id and progress token are not in flight (for a call that
  // could ask, one with nothing in flight), opened when there is none (at most
  // kStatelessConnections; a call that could ask waits up to 30 s for one to come free).
  asio::awaitable<Opened> stateless_session(std::shared_ptr<AgentEntry> agent, const std::string& server, const PostCheck& c,
                                            const Want& want, std::shared_ptr<StatelessPool>& st) {
    const std::string pool_key = server + "\n" + json::serialize(want.declared);
    auto& slot = agent->stateless[pool_key];
    if (!slot) {
      slot = std::make_shared<StatelessPool>();
      slot->declared = want.declared;
    }
    st = slot;
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    for (;;) {
      std::erase_if(st->sessions, [](const std::weak_ptr<Session>& w) {
        auto s = w.lock();
        return !s || s->ended;
      });
      for (auto& w : st->sessions) {
        std::shared_ptr<Session> s = w.lock();
        const bool free_id = s->by_id.count(c.id_key) == 0 && s->abandoned.count(c.id_key) == 0 &&
                             (c.progress_key.empty() || s->by_progress.count(c.progress_key) == 0);
        const bool fits = want.any || (!s->retired && !s->exclusive &&
                                       (want.exclusive ? s->by_id.empty() && s->abandoned.empty() : free_id));
        if (fits) co_return Opened{s, http::status::ok, {}};
      }
      if (!st->opening && st->sessions.size() < kStatelessConnections) break;
      if (!st->opening && !want.exclusive) {
        co_return Opened{nullptr, http::status::service_unavailable,
                         "agent " + agent->agent + " has " + std::to_string(st->sessions.size()) + " requests with id " +
                             c.id_key.substr(0, 40) + " in flight to " + server + " already"};
      }
      if (Clock::now() >= deadline) {
        co_return Opened{nullptr, http::status::service_unavailable,
                         "agent " + agent->agent + " has " + std::to_string(st->sessions.size()) + " calls to " + server +
                             " that could ask it for input in flight already: try again"};
      }
      auto me = std::make_shared<Signal>(io);
      st->waiting.push_back(me);
      co_await me->wait_until(deadline);
      if (agent->stopped) co_return Opened{};
    }
    st->opening = true;
    Opened o = co_await open_session(agent, server);
    if (o.session) {
      o.session->stateless = true;
      o.session->pool = st;
      Result<json::object> shook = co_await handshake(o.session, st->declared);
      if (shook) {
        st->handshake = std::move(*shook);
        st->sessions.push_back(o.session);
      } else {
        end_session(o.session, shook.error().message());
        o = Opened{nullptr, http::status::ok, shook.error().message()};
      }
    }
    st->opening = false;
    st->wake();
    if (!o.session && st->sessions.empty()) agent->stateless.erase(pool_key);  // (a server it may not have)
    co_return o;
  }

  // server/discover, from the handshake: the capabilities this endpoint carries to a
  // 2026-07-28 client (no list-change or resource subscriptions: subscriptions/listen is not
  // carried; no logging or tasks).
  static std::string discover_result(const json::value& id, const json::object& handshake) {
    json::object caps = upstream::carried_capabilities(handshake.if_contains("capabilities"));
    json::array versions;
    for (const char* v : kVersions) versions.emplace_back(v);
    json::object result{{"resultType", "complete"}, {"supportedVersions", std::move(versions)}, {"capabilities", std::move(caps)},
                        {"ttlMs", 0}, {"cacheScope", "private"}};
    if (const json::value* i = handshake.if_contains("instructions"); i != nullptr && i->is_string()) result["instructions"] = *i;
    if (const json::value* info = handshake.if_contains("serverInfo"); info != nullptr && info->is_object()) {
      result["_meta"] = json::object{{"io.modelcontextprotocol/serverInfo", *info}};
    }
    return json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
  }

  asio::awaitable<bool> stateless_post(std::shared_ptr<tcp::socket> shared, const Request& req, std::shared_ptr<AgentEntry> agent,
                                       const std::string& server, const PostCheck& c) {
    tcp::socket& sock = *shared;
    AgentEntry& a = *agent;
    const json::value id = c.id_key.empty() ? json::value(nullptr) : json::parse(c.id_key);
    if (c.unsupported) {
      co_return co_await reply(sock, req, http::status::bad_request,
                               unsupported_version(id, c.version, "MCP " + c.version.substr(0, 40) + " is not served here" + kSpoken), "", &a);
    }
    // A notification relates to no request of this era (2026-07-28 defines none over HTTP).
    if (!c.request) co_return co_await reply(sock, req, http::status::accepted, "", "", &a);
    if (modern_method_not_carried(c.method)) {
      co_return co_await reply(sock, req, http::status::not_found,
                               rpc_error(id, kMethodNotFound, "Method not found: " + c.method.substr(0, 100) +
                                                                  " is not served to MCP 2026-07-28 requests here"),
                               "", &a);
    }
    // What the request declares and carries (check_post has parsed it whole already).
    const json::value message = json::parse(c.line);
    const json::object& params = message.as_object().at("params").as_object();
    Want want;
    want.any = c.method == "server/discover";
    // Declared as the agent did, reduced to what selects a server's behaviour (a few pools at
    // most, whatever the agent writes there).
    const json::object& caps = params.at("_meta").at(kCapabilitiesKey).as_object();
    struct Kept {
      const char* capability;
      const char* subs[2];
    };
    static constexpr Kept kKept[] = {{"elicitation", {"form", "url"}}, {"sampling", {"tools", "context"}}, {"roots", {nullptr, nullptr}}};
    for (const Kept& k : kKept) {
      const json::value* v = caps.if_contains(k.capability);
      if (v == nullptr || !v->is_object()) continue;
      json::object kept;
      for (const char* sub : k.subs) {
        if (sub != nullptr && v->as_object().contains(sub)) kept[sub] = json::object();
      }
      want.declared[k.capability] = std::move(kept);
    }
    want.exclusive = !want.declared.empty() && (c.method == "tools/call" || c.method == "prompts/get" || c.method == "resources/read");
    json::object known;
    if (const json::value* state = params.if_contains("requestState")) {
      // Ours, from an earlier round: the answers given so far.
      std::optional<json::object> earlier;
      if (auto raw = state->is_string() ? base64url_decode(state->as_string()) : base64url_decode("!")) {
        boost::system::error_code ec;
        json::value v = json::parse(std::string_view(reinterpret_cast<const char*>(raw->data()), raw->size()), ec);
        if (!ec && v.is_object()) earlier = std::move(v.as_object());
      }
      if (!earlier) {
        co_return co_await reply(sock, req, http::status::bad_request,
                                 rpc_error(id, kInvalidParams, "params.requestState is not one outpostd gave"), "", &a);
      }
      known = std::move(*earlier);
    }
    if (const json::value* given = params.if_contains("inputResponses"); given != nullptr && given->is_object()) {
      for (const auto& [k, v] : given->as_object()) known[k] = v;
    }
    std::shared_ptr<StatelessPool> st;
    Opened o = co_await stateless_session(agent, server, c, want, st);
    if (!o.session) co_return co_await refuse_open(sock, req, a, id, o);
    std::shared_ptr<Session> s = o.session;
    s->used = Clock::now();
    if (want.any) co_return co_await reply(sock, req, http::status::ok, discover_result(id, st->handshake), "", &a);
    // The agent may have gone while its request waited for a connection: then it is not sent.
    char probe;
    const ssize_t peeked = ::recv(sock.native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) co_return false;
    auto box = std::make_shared<Outbox>(io);
    box->modern = true;
    box->cacheable = cacheable_method(c.method);
    box->exclusive = want.exclusive;
    box->id_key = c.id_key;
    box->known = std::move(known);
    if (want.exclusive) s->exclusive = box;
    s->by_id[c.id_key] = box;
    if (!c.progress_key.empty()) s->by_progress[c.progress_key] = box;
    if (!send_line(s, c.line)) {
      forget(s, box);
      co_return co_await refuse(sock, req, a, http::status::service_unavailable, -32000, "the MCP server is not reading: try again later");
    }
    co_return co_await answer(shared, req, a, s, box, "");
  }

  // ---- the session era ----

  asio::awaitable<bool> post(std::shared_ptr<tcp::socket> shared, const Request& req, std::shared_ptr<AgentEntry> agent,
                             const std::string& server) {
    tcp::socket& sock = *shared;
    AgentEntry& a = *agent;
    if (!accepts(req[http::field::accept], "application/json") || !accepts(req[http::field::accept], "text/event-stream")) {
      co_return co_await refuse(sock, req, a, http::status::not_acceptable, -32600,
                                "Accept must name application/json and text/event-stream");
    }
    if (req[http::field::content_type].substr(0, 16) != "application/json") {
      co_return co_await refuse(sock, req, a, http::status::unsupported_media_type, -32600, "Content-Type must be application/json");
    }
    const std::string_view version = req["MCP-Protocol-Version"];
    const PostCheck c = check_post(req.body(), req["Mcp-Method"], req["Mcp-Name"], version);
    if (!c.ok) {
      // The request's own id when it has one (the revision's examples answer so).
      const json::value failed_id = c.request && !c.id_key.empty() ? json::parse(c.id_key) : json::value(nullptr);
      co_return co_await refuse(sock, req, a, http::status::bad_request, c.rpc_code, c.why, failed_id);
    }
    if (c.modern) co_return co_await stateless_post(shared, req, agent, server, c);
    const std::string_view sid = req["Mcp-Session-Id"];
    std::string line = c.line;
    const json::value id = c.id_key.empty() ? json::value(nullptr) : json::parse(c.id_key);

    std::shared_ptr<Session> s;
    if (c.initialize) {
      if (!sid.empty()) {
        co_return co_await refuse(sock, req, a, http::status::bad_request, -32600, "initialize opens a session: it carries no Mcp-Session-Id");
      }
      Opened opened = co_await open_session(agent, server);
      if (!opened.session) co_return co_await refuse_open(sock, req, a, id, opened);
      s = opened.session;
    } else {
      if (!version.empty() && !supported_protocol_version(version)) {
        co_return co_await reply(sock, req, http::status::bad_request,
                                 unsupported_version(id, version, "unsupported MCP-Protocol-Version " + std::string(version.substr(0, 40)) + kSpoken),
                                 "", &a);
      }
      if (sid.empty()) {
        co_return co_await refuse(sock, req, a, http::status::bad_request, -32600, "no Mcp-Session-Id: initialize first");
      }
      auto it = sessions.find(std::string(sid));
      if (it == sessions.end() || it->second->stateless || it->second->agent->agent != a.agent || it->second->server != server) {
        co_return co_await refuse(sock, req, a, http::status::not_found, -32001, "no such MCP session (it ended): initialize again");
      }
      s = it->second;
    }
    s->used = Clock::now();
    if (!c.request) {
      if (c.method == "notifications/cancelled") cancel(s, req.body());
      if (!send_line(s, std::move(line))) {
        co_return co_await refuse(sock, req, a, http::status::service_unavailable, -32000, "the MCP server is not reading: try again later");
      }
      co_return co_await reply(sock, req, http::status::accepted, "", "", &a);
    }
    if (s->by_id.count(c.id_key) != 0) {
      co_return co_await refuse(sock, req, a, http::status::bad_request, -32600, "a request with id " + c.id_key + " is open already");
    }
    auto box = std::make_shared<Outbox>(io);
    s->by_id[c.id_key] = box;
    if (!c.progress_key.empty()) s->by_progress[c.progress_key] = box;
    std::erase_if(s->posts, [](const std::weak_ptr<Outbox>& w) {
      auto b = w.lock();
      return !b || b->done;
    });
    s->posts.push_back(box);
    if (!send_line(s, std::move(line))) {
      forget(s, box);
      co_return co_await refuse(sock, req, a, http::status::service_unavailable, -32000, "the MCP server is not reading: try again later");
    }
    if (!c.initialize) co_return co_await answer(shared, req, a, s, box, "");
    // The session's version: what the server answered (the relay passes the answer as it is).
    while (box->lines.empty() && !box->done) co_await box->signal.wait();
    if (!box->lines.empty()) {
      boost::system::error_code ec;
      json::value answered = json::parse(box->lines.back(), ec);
      if (!ec && answered.is_object()) {
        if (const json::value* r = answered.as_object().if_contains("result"); r != nullptr && r->is_object()) {
          if (const json::value* pv = r->as_object().if_contains("protocolVersion"); pv != nullptr && pv->is_string()) {
            s->version = std::string(pv->as_string());
          }
        }
      }
    }
    co_return co_await answer(shared, req, a, s, box, s->id);
  }

  asio::awaitable<bool> get(std::shared_ptr<tcp::socket> shared, const Request& req, AgentEntry& a, const std::string& server) {
    tcp::socket& sock = *shared;
    if (modern_revision(req["MCP-Protocol-Version"])) {
      co_return co_await refuse(sock, req, a, http::status::method_not_allowed, -32600,
                                "MCP 2026-07-28 has no GET stream (and outpost does not carry subscriptions/listen)");
    }
    if (!accepts(req[http::field::accept], "text/event-stream")) {
      co_return co_await refuse(sock, req, a, http::status::not_acceptable, -32600, "Accept must name text/event-stream");
    }
    if (req["Mcp-Session-Id"].empty()) {
      co_return co_await refuse(sock, req, a, http::status::bad_request, -32600, "no Mcp-Session-Id: initialize first");
    }
    auto it = sessions.find(std::string(req["Mcp-Session-Id"]));
    if (it == sessions.end() || it->second->stateless || it->second->agent->agent != a.agent || it->second->server != server) {
      co_return co_await refuse(sock, req, a, http::status::not_found, -32001, "no such MCP session (it ended): initialize again");
    }
    std::shared_ptr<Session> s = it->second;
    if (s->get_stream) {
      co_return co_await refuse(sock, req, a, http::status::conflict, -32600, "the session's event stream is open already");
    }
    auto box = std::make_shared<Outbox>(io);
    for (auto& line : s->unclaimed) box->lines.push_back(std::move(line));
    s->unclaimed.clear();
    s->get_stream = box;
    const bool keep = co_await answer(shared, req, a, s, box, "");
    if (s->get_stream == box) s->get_stream.reset();
    co_return keep;
  }

  asio::awaitable<bool> remove(tcp::socket& sock, const Request& req, AgentEntry& a, const std::string& server) {
    if (modern_revision(req["MCP-Protocol-Version"])) {
      co_return co_await refuse(sock, req, a, http::status::method_not_allowed, -32600, "MCP 2026-07-28 has no sessions to DELETE");
    }
    if (req["Mcp-Session-Id"].empty()) {
      co_return co_await refuse(sock, req, a, http::status::bad_request, -32600, "no Mcp-Session-Id");
    }
    auto it = sessions.find(std::string(req["Mcp-Session-Id"]));
    if (it == sessions.end() || it->second->stateless || it->second->agent->agent != a.agent || it->second->server != server) {
      co_return co_await refuse(sock, req, a, http::status::not_found, -32001, "no such MCP session");
    }
    end_session(it->second, "ended by the agent");
    co_return co_await reply(sock, req, http::status::ok, "", "", &a);
  }

  // Host and Origin must name this endpoint as the agent reaches it (DNS rebinding).
  bool local_origin(const Request& req) const {
    const std::string port = std::to_string(options.port);
    auto is_local = [&](std::string_view authority) {
      return authority == "127.0.0.1:" + port || authority == "localhost:" + port || authority == "[::1]:" + port ||
             (options.port == 80 && (authority == "127.0.0.1" || authority == "localhost"));
    };
    if (!is_local(req[http::field::host])) return false;
    const std::string_view origin = req[http::field::origin];
    if (origin.empty()) return true;
    return origin.substr(0, 7) == "http://" && is_local(origin.substr(7));
  }

  asio::awaitable<void> connection(std::shared_ptr<AgentEntry> a, std::shared_ptr<tcp::socket> sock) {
    a->conns.insert(sock.get());
    boost::beast::flat_buffer buffer;
    for (bool keep = true; keep && !a->stopped;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(64 << 10);
      parser.body_limit(options.max_body);
      boost::system::error_code ec;
      {
        tls::SocketDeadline dog(*sock, options.head_timeout);
        std::tie(ec, std::ignore) = co_await http::async_read(*sock, buffer, parser, kTuple);
      }
      if (ec == http::error::body_limit) {
        Request r;
        r.version(11);
        r.keep_alive(false);
        (void)co_await refuse(*sock, r, *a, http::status::payload_too_large, -32600,
                              "a message longer than " + std::to_string(options.max_body) + " bytes");
        break;
      }
      if (ec) break;
      Request req = parser.release();
      const std::string_view target = req.target();
      const std::string_view path = target.substr(0, target.find('?'));
      const std::string server = path.substr(0, 5) == "/mcp/" ? std::string(path.substr(5)) : std::string();
      if (!local_origin(req)) {
        keep = co_await refuse(*sock, req, *a, http::status::forbidden, -32600,
                               "Host or Origin does not name this endpoint (127.0.0.1:" + std::to_string(options.port) + ")");
      } else if (!valid_server_name(server)) {
        keep = co_await refuse(*sock, req, *a, http::status::not_found, -32600, "the MCP endpoint is /mcp/SERVER");
      } else if (req.method() == http::verb::post) {
        keep = co_await post(sock, req, a, server);
      } else if (req.method() == http::verb::get) {
        keep = co_await get(sock, req, *a, server);
      } else if (req.method() == http::verb::delete_) {
        keep = co_await remove(*sock, req, *a, server);
      } else {
        keep = co_await refuse(*sock, req, *a, http::status::method_not_allowed, -32600, "POST, GET or DELETE");
      }
    }
    a->conns.erase(sock.get());
    a->slot_free.notify();
    boost::system::error_code ignored;
    sock->close(ignored);
  }

  // At the agent's connection cap the loop stops accepting until one of its connections ends:
  // a client opening one more (undici frees a socket a tick after its response, so a burst of
  // answers can briefly want cap + 1) waits in the listener's backlog instead of being closed
  // unread, which it would report as a failed request. Connections may be held for good (event
  // streams, long calls), so the wait lasts head_timeout at most: then the next connection is
  // taken and answered 503 with Retry-After, and counted as refused.
  asio::awaitable<void> accept_loop(std::shared_ptr<AgentEntry> a) {
    for (;;) {
      const auto until = Clock::now() + options.head_timeout;
      while (a->conns.size() >= options.max_connections_per_agent && !a->stopped && Clock::now() < until) {
        co_await a->slot_free.wait_until(until);
      }
      auto [ec, sock] = co_await a->acceptor.async_accept(kTuple);
      if (a->stopped || ec == asio::error::operation_aborted || !a->acceptor.is_open()) co_return;
      if (ec) {
        asio::steady_timer t(io, std::chrono::milliseconds(100));
        co_await t.async_wait(kTuple);
        continue;
      }
      if (a->conns.size() >= options.max_connections_per_agent) {
        // A fresh socket's send buffer takes these bytes at once; the client may still see a
        // reset if it had written its request, which it reports as a failure all the same.
        static constexpr std::string_view kBusy =
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        // Counted before the answer goes out: whoever reads the 503 then sees it counted.
        a->refused.fetch_add(1);
        boost::system::error_code ignored;
        sock.non_blocking(true, ignored);
        sock.send(asio::buffer(kBusy.data(), kBusy.size()), 0, ignored);
        sock.shutdown(tcp::socket::shutdown_send, ignored);
        sock.close(ignored);
        continue;
      }
      sock.set_option(tcp::no_delay(true), ec);
      asio::co_spawn(io, connection(a, std::make_shared<tcp::socket>(std::move(sock))), asio::detached);
    }
  }

};

HttpEndpoint::HttpEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HttpEndpoint>> HttpEndpoint::start(HttpEndpointOptions options, HttpEndpointHooks hooks) {
  auto impl = std::make_unique<Impl>(options, std::move(hooks));
  Impl* p = impl.get();
  p->sweeper.emplace(p->io);
  asio::co_spawn(p->io, p->sweep(), asio::detached);
  try {
    p->loop = std::thread([p] {
      ::pthread_setname_np(::pthread_self(), "outpost-mcphttp");
      p->io.run();
    });
  } catch (const std::system_error& e) {
    return fail(make_error_code(errc::io), std::string("MCP endpoint thread: ") + e.what());
  }
  return std::unique_ptr<HttpEndpoint>(new HttpEndpoint(std::move(impl)));
}

HttpEndpoint::~HttpEndpoint() {
  std::vector<std::string> names;
  {
    std::lock_guard lock(impl_->mu);
    for (const auto& [name, a] : impl_->agents) names.push_back(name);
  }
  for (const auto& n : names) stop_agent(n);
  asio::post(impl_->io, [p = impl_.get()] { p->sweeper->cancel(); });
  impl_->work.reset();
  // Sessions end on the loop (stop_agent above); then nothing is left to run.
  const auto give_up = Clock::now() + std::chrono::seconds(2);
  while (!impl_->io.stopped() && Clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  impl_->io.stop();
  if (impl_->loop.joinable()) impl_->loop.join();
  impl_->pool.join();
}

void HttpEndpoint::serve(const std::string& agent, sandbox::UniqueFd listener) {
  stop_agent(agent);
  // Registered here, not on the loop: a stop_agent that follows at once must find it.
  auto a = std::make_shared<Impl::AgentEntry>(impl_->io, agent);
  {
    std::lock_guard lock(impl_->mu);
    impl_->agents[agent] = a;
  }
  asio::post(impl_->io, [p = impl_.get(), a, fd = listener.release()] {
    boost::system::error_code ec;
    if (a->stopped) {
      ::close(fd);
      return;
    }
    a->acceptor.assign(tcp::v4(), fd, ec);
    if (ec) {
      ::close(fd);
      log::error("outpostd", {{"msg", "MCP endpoint for agent " + a->agent + ": " + ec.message()}});
      return;
    }
    asio::co_spawn(p->io, p->accept_loop(a), asio::detached);
  });
}

void HttpEndpoint::stop_agent(const std::string& agent) {
  std::shared_ptr<Impl::AgentEntry> a;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->agents.find(agent);
    if (it == impl_->agents.end()) return;
    a = it->second;  // kept (stopped) for its counters until the agent is served again
  }
  if (a->stopped.exchange(true)) return;
  asio::post(impl_->io, [p = impl_.get(), a] {
    boost::system::error_code ec;
    a->acceptor.close(ec);
    a->slot_free.notify();
    for (tcp::socket* s : a->conns) s->close(ec);
    std::vector<std::shared_ptr<Impl::Session>> mine;
    for (auto& [id, s] : p->sessions) {
      if (s->agent == a) mine.push_back(s);
    }
    for (auto& s : mine) p->end_session(s, "the agent stopped");
  });
}

HttpEndpoint::Counters HttpEndpoint::counters(const std::string& agent) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->agents.find(agent);
  if (it == impl_->agents.end()) return {};
  const Impl::AgentEntry& a = *it->second;
  return Counters{a.sessions.load(), a.requests.load(), a.refused.load(), a.open_sessions.load()};
}

}  // namespace outpost::broker
