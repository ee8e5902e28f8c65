// The agent-facing MCP endpoint (runtime/broker/http_endpoint.h): the header/body agreement
// check, and the endpoint in process on a loopback listener, with a scripted relay behind its
// open() hook in place of outpostd's (the e2e tests run the official SDK client through the
// real relay to the official servers).
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include "outpost/base/beast_http.h"
#include <boost/json.hpp>

#include "broker/http_endpoint.h"
#include "outpost/base/errors.h"
#include "test_support.h"

using namespace outpost;
using namespace outpost::broker;
namespace json = boost::json;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

TEST_CASE("a POST's headers must agree with its body", "[http-endpoint]") {
  const std::string call = R"({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"progressToken":"p1"}}})";
  PostCheck c = check_post(call, "", "");
  REQUIRE(c.ok);
  CHECK(c.request);
  CHECK(c.method == "tools/call");
  CHECK(c.id_key == "7");
  CHECK(c.progress_key == "\"p1\"");
  CHECK(c.line.find('\n') == std::string::npos);
  CHECK(check_post(call, "tools/call", "echo").ok);

  c = check_post(call, "tools/list", "");
  CHECK_FALSE(c.ok);
  CHECK(c.status == 400);
  CHECK_THAT(c.why, Catch::Contains("Mcp-Method is \"tools/list\""));
  c = check_post(call, "tools/call", "delete_everything");
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.why, Catch::Contains("Mcp-Name is \"delete_everything\""));
  c = check_post(R"({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}})", "resources/read", "file:///b");
  CHECK_FALSE(c.ok);
  CHECK(check_post(R"({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}})", "resources/read", "file:///a").ok);
  c = check_post(R"({"jsonrpc":"2.0","id":1,"method":"ping"})", "ping", "x");
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.why, Catch::Contains("names nothing"));

  // A pretty-printed body is one line for the relay.
  c = check_post("{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"notifications/initialized\"\n}", "", "");
  REQUIRE(c.ok);
  CHECK_FALSE(c.request);
  CHECK(c.line.find_first_of("\r\n") == std::string::npos);
  CHECK(json::parse(c.line) == json::parse(R"({"jsonrpc":"2.0","method":"notifications/initialized"})"));
  // Numbers and strings reach the server as the agent wrote them (no rounding through a double).
  c = check_post(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"n","arguments":{"big":123456789012345678901234567890,"f":0.1}}})", "", "");
  REQUIRE(c.ok);
  CHECK(c.line.find("123456789012345678901234567890") != std::string::npos);
  CHECK(c.line.find("0.1}") != std::string::npos);
  c = check_post(R"({"jsonrpc":"2.0","id":"s-1","result":{}})", "", "");
  REQUIRE(c.ok);
  CHECK(c.method.empty());
  CHECK(c.id_key == "\"s-1\"");

  CHECK(check_post("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", "", "").why.find("batches") != std::string::npos);
  CHECK(check_post("{", "", "").rpc_code == -32700);
  CHECK_FALSE(check_post(R"({"id":1,"method":"ping"})", "", "").ok);
  CHECK_FALSE(check_post(R"({"jsonrpc":"2.0","id":{"a":1},"method":"ping"})", "", "").ok);
  CHECK_FALSE(check_post(R"({"jsonrpc":"2.0","id":1})", "", "").ok);
  CHECK(supported_protocol_version("2025-11-25"));
  CHECK(supported_protocol_version("2025-03-26"));
  CHECK(supported_protocol_version("2026-07-28"));
  CHECK_FALSE(supported_protocol_version("2026-07-29"));
  CHECK_FALSE(supported_protocol_version(""));
}

TEST_CASE("a 2026-07-28 POST carries its version, capabilities and routing headers alike", "[http-endpoint]") {
  const std::string meta = R"("_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}})";
  const std::string call = R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},)" + meta + "}}";
  PostCheck c = check_post(call, "tools/call", "echo", "2026-07-28");
  REQUIRE(c.ok);
  CHECK(c.modern);
  CHECK_FALSE(c.unsupported);
  CHECK(c.version == "2026-07-28");
  // Mcp-Name in the base64 sentinel form ("echo"), and a wrong one.
  CHECK(check_post(call, "tools/call", "=?base64?ZWNobw==?=", "2026-07-28").ok);
  c = check_post(call, "tools/call", "=?base64?ZWNob3g=?=", "2026-07-28");
  CHECK_FALSE(c.ok);
  CHECK(c.rpc_code == -32020);
  // Required headers: Mcp-Method always, Mcp-Name for what names something, the version.
  c = check_post(call, "", "echo", "2026-07-28");
  CHECK_FALSE(c.ok);
  CHECK(c.rpc_code == -32020);
  CHECK_THAT(c.why, Catch::Contains("Mcp-Method is required"));
  c = check_post(call, "tools/call", "", "2026-07-28");
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.why, Catch::Contains("Mcp-Name is required"));
  c = check_post(call, "tools/call", "echo", "");
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.why, Catch::Contains("MCP-Protocol-Version is required"));
  // The header and the body name one version; the body names one at all; capabilities.
  c = check_post(call, "tools/call", "echo", "2027-01-01");
  CHECK_FALSE(c.ok);
  CHECK(c.rpc_code == -32020);
  c = check_post(R"({"jsonrpc":"2.0","id":1,"method":"tools/list"})", "tools/list", "", "2026-07-28");
  CHECK_FALSE(c.ok);
  CHECK(c.rpc_code == -32602);
  c = check_post(R"({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}})",
                 "tools/list", "", "2026-07-28");
  CHECK_FALSE(c.ok);
  CHECK(c.rpc_code == -32602);
  CHECK_THAT(c.why, Catch::Contains("clientCapabilities"));
  // A later revision is answered with the versions served, not judged further (capabilities
  // and headers are that revision's business).
  c = check_post(R"({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2027-01-01"}}})",
                 "", "", "2027-01-01");
  REQUIRE(c.ok);
  CHECK(c.unsupported);
  // A notification need not name its version in _meta.
  c = check_post(R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}})", "notifications/cancelled", "", "2026-07-28");
  REQUIRE(c.ok);
  CHECK(c.modern);
  // A body naming a session-era version is of that era.
  CHECK_FALSE(check_post(R"({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}}})",
                         "", "", "")
                  .modern);
  // No responses from a 2026-07-28 client; initialize stays the session era's.
  CHECK_FALSE(check_post(R"({"jsonrpc":"2.0","id":1,"result":{"_meta":{}}})", "", "", "2026-07-28").ok);
  c = check_post(R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25"}})", "initialize", "", "2026-07-28");
  REQUIRE(c.ok);
  CHECK_FALSE(c.modern);
}

TEST_CASE("a 2025-era result is marked complete for a 2026-07-28 client, byte for byte otherwise", "[http-endpoint]") {
  CHECK(complete_result(R"({"jsonrpc":"2.0","id":1,"result":{}})", false) == R"({"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}})");
  CHECK(complete_result(R"({"jsonrpc":"2.0","id":1,"result":{"tools":[]}})", true) ==
        R"({"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","ttlMs":0,"cacheScope":"private","tools":[]}})");
  // Whatever precedes the result (strings with braces and escaped quotes, nested values) is
  // skipped, and numbers stay as written.
  const std::string odd = R"({"id":"a}\"b","x":{"result":[1,{"y":"}"}]}, "result" : {"n":123456789012345678901234567890,"f":0.10}})";
  const std::string marked = complete_result(odd, false);
  CHECK(marked.find(R"("result" : {"resultType":"complete","n":123456789012345678901234567890,"f":0.10})") != std::string::npos);
  CHECK(json::parse(marked).at("x").at("result").as_array().size() == 2);
  // A key spelled with an escape is the same key.
  CHECK(json::parse(complete_result(R"({"id":1,"result":{}})", false)).at("result").at("resultType") == "complete");
  // Fields the result has are left alone; errors, requests and non-objects pass unchanged.
  CHECK(complete_result(R"({"id":1,"result":{"resultType":"input_required"}})", false) == R"({"id":1,"result":{"resultType":"input_required"}})");
  CHECK(complete_result(R"({"id":1,"error":{"code":-1,"message":"x"}})", true) == R"({"id":1,"error":{"code":-1,"message":"x"}})");
  CHECK(complete_result(R"({"id":1,"method":"m","result":{}})", true) == R"({"id":1,"method":"m","result":{}})");
  CHECK(complete_result(R"({"id":1,"result":[]})", true) == R"({"id":1,"result":[]})");
  CHECK(complete_result("not json", true) == "not json");
  // Duplicate keys: the last one is the result Boost.JSON (and JavaScript) keep, and is marked.
  CHECK(json::parse(complete_result(R"({"id":1,"result":{},"result":{"a":1}})", false)).at("result").at("resultType") == "complete");
  CHECK(json::parse(complete_result(R"({"id":1,"result":{"x":1},"result":{ }})", false)).at("result").at("resultType") == "complete");
}

namespace {

// A relay of a few lines behind open(): answers initialize, ping and tools/call (with a progress
// notification first when the call asks for progress), and sends a log notification of its own
// after notifications/initialized (no request claims it: the GET stream's).
struct ScriptedRelay {
  std::mutex mu;
  std::vector<std::string> received;
  std::vector<std::thread> threads;
  std::atomic<int> opened{0}, ended{0};

  Result<HttpChannel> open(const std::string& agent, const std::string& server) {
    if (server == "missing") return fail(errc::not_found, "agent " + agent + " has no MCP server \"missing\"");
    // Called on the endpoint's pool: no Catch assertions here.
    int ctl[2], in[2], out[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0 || ::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
      return fail(errno_error("scripted relay", errno));
    }
    ++opened;
    threads.emplace_back([this, r = in[0], w = out[1], c = ctl[0]] {
      std::string pending;
      char buf[4096];
      for (;;) {
        const ssize_t n = ::read(r, buf, sizeof buf);
        if (n <= 0) break;
        pending.append(buf, static_cast<size_t>(n));
        for (size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
          const std::string line = pending.substr(0, nl);
          pending.erase(0, nl + 1);
          {
            std::lock_guard lock(mu);
            received.push_back(line);
          }
          const json::object m = json::parse(line).as_object();
          std::string reply;
          const std::string method = m.contains("method") ? std::string(m.at("method").as_string()) : "";
          if (method == "initialize") {
            reply = json::serialize(json::object{
                {"jsonrpc", "2.0"},
                {"id", m.at("id")},
                {"result", {{"protocolVersion", "2025-06-18"},
                            {"capabilities", {{"tools", {{"listChanged", true}}}, {"logging", json::object{}}}},
                            {"instructions", "be brief"},
                            {"serverInfo", {{"name", "scripted"}, {"version", "1"}}}}}});
          } else if (method == "notifications/initialized") {
            reply = R"({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}})";
          } else if (method == "tools/call") {
            const auto& params = m.at("params").as_object();
            if (params.at("name") == "slow") std::this_thread::sleep_for(std::chrono::milliseconds(400));
            if (params.at("name") == "ask") reply = R"({"jsonrpc":"2.0","id":"srv-1","method":"roots/list"})" "\n";
            if (params.contains("_meta") && params.at("_meta").as_object().contains("progressToken")) {
              reply += json::serialize(json::object{{"jsonrpc", "2.0"}, {"method", "notifications/progress"},
                                                    {"params", {{"progressToken", params.at("_meta").at("progressToken")}, {"progress", 1}}}}) + "\n";
            }
            reply += json::serialize(json::object{
                {"jsonrpc", "2.0"}, {"id", m.at("id")},
                {"result", {{"content", json::array{{{"type", "text"}, {"text", "called " + std::string(params.at("name").as_string())}}}}}}});
          } else if (m.contains("id") && !method.empty()) {
            reply = json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", m.at("id")}, {"result", json::object{}}});
          }
          if (!reply.empty()) {
            reply += "\n";
            (void)!::write(w, reply.data(), reply.size());
          }
        }
      }
      ::close(r);
      ::close(w);
      ::close(c);
      ++ended;
    });
    return HttpChannel{sandbox::UniqueFd(ctl[1]), sandbox::UniqueFd(in[1]), sandbox::UniqueFd(out[0])};
  }
  ~ScriptedRelay() {
    for (auto& t : threads) t.join();
  }
};

struct Answer {
  unsigned status = 0;
  std::string content_type, session, body;
};

Answer exchange(uint16_t port, http::verb verb, const std::string& path, const std::map<std::string, std::string>& headers,
                const std::string& body = "") {
  boost::asio::io_context io;
  tcp::socket s(io);
  s.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
  // A test that goes wrong gets no answer (status 0) after 10 s instead of hanging.
  const timeval limit{10, 0};
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  http::request<http::string_body> req{verb, path, 11};
  req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  req.prepare_payload();
  http::write(s, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  boost::system::error_code ec;
  http::read(s, buf, res, ec);
  Answer a;
  if (ec) return a;
  a.status = res.result_int();
  a.content_type = std::string(res[http::field::content_type]);
  a.session = std::string(res["Mcp-Session-Id"]);
  a.body = res.body();
  return a;
}

// The endpoint in process for "agent-a", on a loopback listener, the scripted relay behind it.
struct EndpointUnderTest {
  ScriptedRelay relay;
  uint16_t port = 0;
  std::unique_ptr<HttpEndpoint> endpoint;
  explicit EndpointUnderTest(HttpEndpointOptions o = {}) {
    int listener = testing::listen_on_loopback(port);
    o.port = port;
    HttpEndpointHooks h;
    h.open = [this](const std::string& a, const std::string& s) { return relay.open(a, s); };
    auto started = HttpEndpoint::start(o, h);
    REQUIRE(started);
    endpoint = std::move(*started);
    endpoint->serve("agent-a", sandbox::UniqueFd(listener));
  }
};

const std::map<std::string, std::string> kPost = {{"Content-Type", "application/json"},
                                                   {"Accept", "application/json, text/event-stream"}};

std::map<std::string, std::string> with(std::map<std::string, std::string> h, const std::string& k, const std::string& v) {
  h[k] = v;
  return h;
}

}  // namespace

TEST_CASE("the MCP endpoint carries an HTTP agent's session through the relay", "[http-endpoint]") {
  EndpointUnderTest t;
  ScriptedRelay& relay = t.relay;
  const uint16_t port = t.port;
  auto& endpoint = t.endpoint;
  const std::string path = "/mcp/everything";

  // initialize: a session, answered (as an event stream of one event) with its id.
  Answer init = exchange(port, http::verb::post, path, kPost,
                         R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})");
  REQUIRE(init.status == 200);
  CHECK(init.content_type == "text/event-stream");
  CHECK(init.body.rfind("event: message\ndata: {", 0) == 0);
  REQUIRE(init.session.size() == 32);
  CHECK_THAT(init.body, Catch::Contains("\"protocolVersion\":\"2025-06-18\""));
  auto session = with(with(kPost, "Mcp-Session-Id", init.session), "MCP-Protocol-Version", "2025-06-18");

  // The GET stream opens, then takes the server's unclaimed notification.
  auto get_headers = std::map<std::string, std::string>{{"Accept", "text/event-stream"}, {"Mcp-Session-Id", init.session}};
  auto stream = std::async(std::launch::async, [&] { return exchange(port, http::verb::get, path, get_headers); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(exchange(port, http::verb::post, path, session, R"({"jsonrpc":"2.0","method":"notifications/initialized"})").status == 202);

  // A call with progress: an event stream with the progress first, then the response.
  Answer call = exchange(port, http::verb::post, path, with(with(session, "Mcp-Method", "tools/call"), "Mcp-Name", "echo"),
                         R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"progressToken":9}}})");
  REQUIRE(call.status == 200);
  CHECK(call.content_type == "text/event-stream");
  const size_t progress = call.body.find("notifications/progress"), result = call.body.find("called echo");
  CHECK(progress != std::string::npos);
  CHECK(result != std::string::npos);
  CHECK(progress < result);
  CHECK(call.body.find("data: {") != std::string::npos);

  // Without progress: one event, the response.
  Answer plain = exchange(port, http::verb::post, path, session,
                          R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{}}})");
  CHECK(plain.status == 200);
  CHECK(plain.content_type == "text/event-stream");
  CHECK_THAT(plain.body, Catch::Contains("\"id\":2"));
  CHECK(plain.body.find("event: message") == plain.body.rfind("event: message"));

  // Refusals, each before anything reaches the relay.
  const size_t before = [&] {
    std::lock_guard lock(relay.mu);
    return relay.received.size();
  }();
  Answer mismatch = exchange(port, http::verb::post, path, with(with(session, "Mcp-Method", "tools/call"), "Mcp-Name", "echo"),
                             R"({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get-env","arguments":{}}})");
  CHECK(mismatch.status == 400);
  CHECK_THAT(mismatch.body, Catch::Contains("disagree"));
  CHECK(exchange(port, http::verb::post, path, kPost, R"({"jsonrpc":"2.0","id":4,"method":"ping"})").status == 400);
  CHECK(exchange(port, http::verb::post, path, with(kPost, "Mcp-Session-Id", "0123"), R"({"jsonrpc":"2.0","id":4,"method":"ping"})").status == 404);
  CHECK(exchange(port, http::verb::post, "/mcp/other", session, R"({"jsonrpc":"2.0","id":4,"method":"ping"})").status == 404);
  Answer later = exchange(port, http::verb::post, path, with(session, "MCP-Protocol-Version", "2024-01-01"),
                          R"({"jsonrpc":"2.0","id":5,"method":"tools/list"})");
  CHECK(later.status == 400);
  // MCP 2026-07-28's unsupported-version error, naming what is served.
  CHECK(json::parse(later.body).at("error").at("code") == -32022);
  CHECK(json::parse(later.body).at("error").at("data").at("supported").as_array().size() == 5);
  CHECK(exchange(port, http::verb::post, path, with(session, "MCP-Protocol-Version", "2024-01-01"), R"({"jsonrpc":"2.0","id":6,"method":"ping"})")
            .status == 400);
  CHECK(exchange(port, http::verb::post, path, with(session, "Origin", "http://evil.example"), R"({"jsonrpc":"2.0","id":7,"method":"ping"})")
            .status == 403);
  CHECK(exchange(port, http::verb::post, path, with(session, "Accept", "application/json"), R"({"jsonrpc":"2.0","id":8,"method":"ping"})")
            .status == 406);
  CHECK(exchange(port, http::verb::post, path, session, "[1,2]").status == 400);
  CHECK(exchange(port, http::verb::get, path, {{"Accept", "text/event-stream"}}).status == 400);
  {
    std::lock_guard lock(relay.mu);
    CHECK(relay.received.size() == before);
  }
  // An unknown server: the relay's refusal, as a JSON-RPC error to initialize.
  Answer missing = exchange(port, http::verb::post, "/mcp/missing", kPost,
                            R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})");
  CHECK(missing.status == 200);
  CHECK_THAT(missing.body, Catch::Contains("has no MCP server"));
  CHECK(missing.session.empty());

  // DELETE ends the session: the relay sees its end, the GET stream closes, the id is gone.
  CHECK(exchange(port, http::verb::delete_, path, {{"Mcp-Session-Id", init.session}}).status == 200);
  REQUIRE(stream.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  Answer events = stream.get();
  CHECK(events.status == 200);
  CHECK(events.content_type == "text/event-stream");
  CHECK_THAT(events.body, Catch::Contains("notifications/message"));
  CHECK(exchange(port, http::verb::post, path, session, R"({"jsonrpc":"2.0","id":9,"method":"ping"})").status == 404);
  for (int i = 0; i < 100 && relay.ended.load() < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(relay.ended.load() == 1);
  const auto counters = endpoint->counters("agent-a");
  CHECK(counters.sessions == 1);
  CHECK(counters.open_sessions == 0);
  CHECK(counters.refused >= 9);
  endpoint.reset();
}

TEST_CASE("the MCP endpoint serves 2026-07-28's stateless requests on relay connections of its own", "[http-endpoint]") {
  // As in outpostd: a relay that writes after the endpoint ended its connection gets EPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  EndpointUnderTest t;
  ScriptedRelay& relay = t.relay;
  const uint16_t port = t.port;
  auto& endpoint = t.endpoint;
  const std::string path = "/mcp/everything";
  const auto modern = with(kPost, "MCP-Protocol-Version", "2026-07-28");
  auto body = [](const std::string& id, const std::string& method, const std::string& params = "", const std::string& meta = "",
                 const std::string& caps = R"({"elicitation":{}})") {
    return R"({"jsonrpc":"2.0","id":)" + id + R"(,"method":")" + method + R"(","params":{)" + params + (params.empty() ? "" : ",") +
           R"("_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":)" + caps +
           meta + "}}}";
  };
  auto received = [&] {
    std::lock_guard lock(relay.mu);
    return relay.received;
  };

  // server/discover: answered from outpostd's own handshake, which declared no capabilities.
  Answer discover = exchange(port, http::verb::post, path, with(modern, "Mcp-Method", "server/discover"), body("\"d\"", "server/discover"));
  REQUIRE(discover.status == 200);
  CHECK(discover.content_type == "application/json");
  CHECK(discover.session.empty());
  const json::value d = json::parse(discover.body);
  CHECK(d.at("id") == "d");
  const json::object& dr = d.at("result").as_object();
  CHECK(dr.at("resultType") == "complete");
  CHECK(dr.at("supportedVersions").as_array().front() == "2026-07-28");
  CHECK(dr.at("capabilities").at("tools").as_object().empty());  // no listChanged: not carried
  CHECK_FALSE(dr.at("capabilities").as_object().contains("logging"));
  CHECK(dr.at("instructions") == "be brief");
  CHECK(dr.at("_meta").at("io.modelcontextprotocol/serverInfo").at("name") == "scripted");
  CHECK(dr.at("cacheScope") == "private");
  {
    const auto lines = received();
    REQUIRE(lines.size() == 2);
    const json::value init = json::parse(lines[0]);
    CHECK(init.at("method") == "initialize");
    // What outpostd can put to the agent: its elicitation (MRTR), nothing else it declared.
    CHECK(init.at("params").at("capabilities") == json::parse(R"({"elicitation":{}})"));
    CHECK(json::parse(lines[1]).at("method") == "notifications/initialized");
  }

  // A call with progress: its progress, then its result marked complete; the server's log
  // notification of the handshake went nowhere.
  Answer call = exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "echo"),
                         body("1", "tools/call", R"("name":"echo","arguments":{})", R"(,"progressToken":9)"));
  REQUIRE(call.status == 200);
  CHECK(call.content_type == "text/event-stream");
  CHECK(call.session.empty());
  CHECK(call.body.find("notifications/progress") < call.body.find("\"resultType\":\"complete\""));
  CHECK_THAT(call.body, Catch::Contains("called echo"));
  CHECK(call.body.find("notifications/message") == std::string::npos);
  // The agent's line reached the relay as written (its own _meta included).
  CHECK_THAT(received().back(), Catch::Contains("\"progressToken\":9"));

  Answer list = exchange(port, http::verb::post, path, with(modern, "Mcp-Method", "tools/list"), body("2", "tools/list"));
  REQUIRE(list.status == 200);
  CHECK_THAT(list.body, Catch::Contains(R"("result":{"resultType":"complete","ttlMs":0,"cacheScope":"private"})"));

  // The server asks what the agent did not declare: answered by outpostd (-32601), the call
  // still answered.
  Answer ask = exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "ask"),
                        body("3", "tools/call", R"("name":"ask","arguments":{})"));
  CHECK_THAT(ask.body, Catch::Contains("called ask"));
  CHECK(ask.body.find("roots/list") == std::string::npos);
  bool answered = false;
  for (int i = 0; i < 100 && !answered; ++i) {
    for (const auto& l : received()) answered = answered || (l.find("\"srv-1\"") != std::string::npos && l.find("-32601") != std::string::npos);
    if (!answered) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(answered);

  // The server asks what the agent declared (roots): the call's answer is MCP 2026-07-28's
  // input request, and the run ends with its connection; the agent's retry, a new call, runs
  // again on a new one and the same question is answered with what the agent gave.
  const std::string roots = R"({"roots":{}})";
  Answer input = exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "ask"),
                          body("10", "tools/call", R"("name":"ask","arguments":{})", "", roots));
  REQUIRE(input.status == 200);
  const size_t data = input.body.find("data: ");
  REQUIRE(data != std::string::npos);
  const json::value asked = json::parse(input.body.substr(data + 6));
  CHECK(asked.at("id") == 10);
  const json::object& ir = asked.at("result").as_object();
  CHECK(ir.at("resultType") == "input_required");
  CHECK(ir.at("inputRequests").at("outpost-1").at("method") == "roots/list");
  const std::string state(ir.at("requestState").as_string());
  for (int i = 0; i < 100 && relay.ended.load() < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(relay.ended.load() == 1);
  Answer retried = exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "ask"),
                            body("11", "tools/call",
                                 R"("name":"ask","arguments":{},"inputResponses":{"outpost-1":{"roots":[{"uri":"file:///w"}]}},"requestState":")" + state + "\"",
                                 "", roots));
  CHECK_THAT(retried.body, Catch::Contains("called ask"));
  CHECK_THAT(retried.body, Catch::Contains("\"resultType\":\"complete\""));
  bool given = false;
  for (int i = 0; i < 100 && !given; ++i) {
    for (const auto& l : received()) given = given || (l.find("\"srv-1\"") != std::string::npos && l.find("file:///w") != std::string::npos);
    if (!given) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(given);
  // A requestState outpostd did not give is refused.
  Answer forged = exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "ask"),
                           body("12", "tools/call", R"("name":"ask","arguments":{},"requestState":"not-ours")", "", roots));
  CHECK(forged.status == 400);
  CHECK(json::parse(forged.body).at("error").at("code") == -32602);

  // Refusals, before anything reaches the relay.
  const size_t before = received().size();
  Answer removed = exchange(port, http::verb::post, path, with(modern, "Mcp-Method", "ping"), body("4", "ping"));
  CHECK(removed.status == 404);
  CHECK(json::parse(removed.body).at("error").at("code") == -32601);
  Answer no_name = exchange(port, http::verb::post, path, with(modern, "Mcp-Method", "tools/call"),
                            body("5", "tools/call", R"("name":"echo","arguments":{})"));
  CHECK(no_name.status == 400);
  CHECK(json::parse(no_name.body).at("error").at("code") == -32020);
  CHECK(json::parse(no_name.body).at("id") == 5);
  Answer newer = exchange(port, http::verb::post, path, with(with(kPost, "MCP-Protocol-Version", "2027-01-01"), "Mcp-Method", "tools/list"),
                          R"({"jsonrpc":"2.0","id":6,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2027-01-01","io.modelcontextprotocol/clientCapabilities":{}}}})");
  CHECK(newer.status == 400);
  CHECK(json::parse(newer.body).at("error").at("code") == -32022);
  CHECK(json::parse(newer.body).at("error").at("data").at("requested") == "2027-01-01");
  CHECK(json::parse(newer.body).at("id") == 6);
  CHECK(exchange(port, http::verb::get, path, {{"Accept", "text/event-stream"}, {"MCP-Protocol-Version", "2026-07-28"}}).status == 405);
  CHECK(received().size() == before);

  // Two clients of the agent with one id in flight: the second goes to a second connection.
  REQUIRE(relay.opened.load() == 3);
  auto slow = std::async(std::launch::async, [&] {
    return exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "slow"),
                    body("42", "tools/call", R"("name":"slow","arguments":{})"));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Answer same_id = exchange(port, http::verb::post, path, with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "echo"),
                            body("42", "tools/call", R"("name":"echo","arguments":{})"));
  CHECK_THAT(same_id.body, Catch::Contains("called echo"));
  CHECK_THAT(slow.get().body, Catch::Contains("called slow"));
  CHECK(relay.opened.load() == 4);

  // A request whose stream closes before its answer is cancelled upstream; a call that could
  // ask the agent ends its connection instead (nothing of its run may reach a later call).
  auto walk_away = [&](const std::string& id, const std::string& caps) {
    boost::asio::io_context io;
    tcp::socket sock(io);
    sock.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
    http::request<http::string_body> req{http::verb::post, path, 11};
    req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
    for (const auto& [k, v] : with(with(modern, "Mcp-Method", "tools/call"), "Mcp-Name", "slow")) req.set(k, v);
    req.body() = body(id, "tools/call", R"("name":"slow","arguments":{})", "", caps);
    req.prepare_payload();
    http::write(sock, req);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  };
  const int ended_before = relay.ended.load();
  walk_away("\"asking\"", R"({"elicitation":{}})");
  for (int i = 0; i < 100 && relay.ended.load() == ended_before; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(relay.ended.load() == ended_before + 1);
  walk_away("\"gone\"", "{}");
  bool cancelled = false;
  for (int i = 0; i < 200 && !cancelled; ++i) {
    for (const auto& l : received()) cancelled = cancelled || (l.find("notifications/cancelled") != std::string::npos && l.find("\"gone\"") != std::string::npos);
    if (!cancelled) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(cancelled);

  // The endpoint's connections are not sessions an agent can name.
  CHECK(exchange(port, http::verb::delete_, path, {{"Mcp-Session-Id", "whatever"}}).status == 404);
  const auto counters = endpoint->counters("agent-a");
  // Two for the agent's elicitation, two for its roots (the run that asked ended with its
  // own), one for no capabilities.
  CHECK(counters.sessions == 5);
  endpoint.reset();
  for (int i = 0; i < 100 && relay.ended.load() < 5; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(relay.ended.load() == 5);
}

TEST_CASE("the MCP endpoint holds a connection past its cap in the backlog, never closes it unread", "[http-endpoint]") {
  HttpEndpointOptions o;
  o.max_connections_per_agent = 2;
  EndpointUnderTest t(o);
  boost::asio::io_context io;
  std::vector<tcp::socket> idle;
  for (int i = 0; i < 2; ++i) {
    idle.emplace_back(io);
    idle.back().connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), t.port));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // both accepted: the cap is reached
  // A third client's request waits: not answered, and not closed (which a client reports as a
  // failed request).
  auto third = std::async(std::launch::async, [&] { return exchange(t.port, http::verb::post, "/mcp/everything", kPost, R"({"jsonrpc":"2.0","id":4,"method":"ping"})"); });
  CHECK(third.wait_for(std::chrono::milliseconds(300)) == std::future_status::timeout);
  // One connection ends: the waiting one is taken and answered (no session: 400).
  idle.front().close();
  REQUIRE(third.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(third.get().status == 400);
  CHECK(t.endpoint->counters("agent-a").refused == 1);  // the 400; no connection was refused
}

TEST_CASE("the MCP endpoint answers 503 when its cap stays full past the head timeout", "[http-endpoint]") {
  HttpEndpointOptions o;
  o.max_connections_per_agent = 1;
  o.head_timeout = std::chrono::milliseconds(500);
  EndpointUnderTest t(o);
  const std::string path = "/mcp/everything";
  // A session whose event stream holds the agent's one connection for as long as it is open.
  Answer init = exchange(t.port, http::verb::post, path, kPost,
                         R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})");
  REQUIRE(init.status == 200);
  auto get_headers = std::map<std::string, std::string>{{"Accept", "text/event-stream"}, {"Mcp-Session-Id", init.session}};
  auto stream = std::async(std::launch::async, [&] { return exchange(t.port, http::verb::get, path, get_headers); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // The next connection waits up to the head timeout, then is told to come back: never
  // served (a ping without a session would get 400), never left hanging.
  Answer busy = exchange(t.port, http::verb::post, path, kPost, R"({"jsonrpc":"2.0","id":1,"method":"ping"})");
  CHECK((busy.status == 503 || busy.status == 0));  // 0: a reset, when the request was in before the close
  CHECK(t.endpoint->counters("agent-a").refused == 1);
  t.endpoint.reset();  // ends the session and its stream
  CHECK(stream.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
}
