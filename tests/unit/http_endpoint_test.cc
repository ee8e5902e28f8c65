// The agent-facing MCP endpoint (runtime/broker/http_endpoint.h): the header/body agreement
// check, and the endpoint in process on a loopback listener, with a scripted relay behind its
// open() hook in place of outpostd's (the e2e tests run the official SDK client through the
// real relay to the official servers).
#include <fcntl.h>
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
#include <boost/beast/http.hpp>
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
  CHECK_FALSE(supported_protocol_version("2026-07-28"));
  CHECK_FALSE(supported_protocol_version(""));
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
            reply = json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", m.at("id")},
                                                 {"result", {{"protocolVersion", "2025-06-18"}, {"capabilities", json::object{}},
                                                             {"serverInfo", {{"name", "scripted"}, {"version", "1"}}}}}});
          } else if (method == "notifications/initialized") {
            reply = R"({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}})";
          } else if (method == "tools/call") {
            const auto& params = m.at("params").as_object();
            if (params.contains("_meta")) {
              reply = json::serialize(json::object{{"jsonrpc", "2.0"}, {"method", "notifications/progress"},
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

const std::map<std::string, std::string> kPost = {{"Content-Type", "application/json"},
                                                   {"Accept", "application/json, text/event-stream"}};

std::map<std::string, std::string> with(std::map<std::string, std::string> h, const std::string& k, const std::string& v) {
  h[k] = v;
  return h;
}

}  // namespace

TEST_CASE("the MCP endpoint carries an HTTP agent's session through the relay", "[http-endpoint]") {
  ScriptedRelay relay;
  uint16_t port = 0;
  int listener = testing::listen_on_loopback(port);
  HttpEndpointOptions o;
  o.port = port;
  HttpEndpointHooks h;
  h.open = [&](const std::string& a, const std::string& s) { return relay.open(a, s); };
  auto endpoint = HttpEndpoint::start(o, h);
  REQUIRE(endpoint);
  (*endpoint)->serve("agent-a", sandbox::UniqueFd(listener));
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
  Answer stateless = exchange(port, http::verb::post, path, with(kPost, "MCP-Protocol-Version", "2026-07-28"),
                              R"({"jsonrpc":"2.0","id":5,"method":"tools/list"})");
  CHECK(stateless.status == 400);
  CHECK_THAT(stateless.body, Catch::Contains("2026-07-28"));
  // MCP 2026-07-28's unsupported-version error, naming what is served: SDKs fall back on it.
  CHECK(json::parse(stateless.body).at("error").at("code") == -32022);
  CHECK(json::parse(stateless.body).at("error").at("data").at("supported").as_array().size() == 4);
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
  const auto counters = (*endpoint)->counters("agent-a");
  CHECK(counters.sessions == 1);
  CHECK(counters.open_sessions == 0);
  CHECK(counters.refused >= 9);
  endpoint->reset();
}
