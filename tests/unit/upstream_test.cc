// Remote MCP servers (runtime/upstream/): the Streamable HTTP client's logic, the OAuth client
// above its HTTP seam, and HttpUpstream in process against a small HTTP server on loopback
// (the e2e tests run the official server-everything behind outpostd).
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include "outpost/base/beast_http.h"
#include <boost/json.hpp>

#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "daemon/config.h"
#include "outpost/base/errors.h"
#include "upstream/http_upstream.h"
#include "upstream/oauth.h"
#include "upstream/streamable_http.h"

using namespace outpost;
using namespace outpost::upstream;
namespace json = boost::json;

TEST_CASE("MCP server URLs are parsed and normalised", "[upstream]") {
  auto u = parse_upstream_url("https://MCP.Example.com/mcp");
  REQUIRE(u);
  CHECK(u->tls);
  CHECK(u->host == "mcp.example.com");
  CHECK(u->port == 443);
  CHECK(u->target == "/mcp");
  CHECK(u->authority == "mcp.example.com");
  CHECK(u->text == "https://mcp.example.com/mcp");
  CHECK_FALSE(u->is_ip);

  auto v = parse_upstream_url("http://127.0.0.1:8931?x=1");
  REQUIRE(v);
  CHECK_FALSE(v->tls);
  CHECK(v->is_ip);
  CHECK(v->port == 8931);
  CHECK(v->target == "/?x=1");
  CHECK(v->authority == "127.0.0.1:8931");

  auto w = parse_upstream_url("https://[::1]:8443/mcp");
  REQUIRE(w);
  CHECK(w->host == "::1");
  CHECK(w->authority == "[::1]:8443");

  for (const char* bad : {"ftp://x/", "https://user:pw@host/mcp", "https://host:0/", "https://host:70000/",
                          "https://[::1/", "https://ho st/", "https:///mcp", "https://host/#frag", "https://h_st/"}) {
    INFO(bad);
    auto r = parse_upstream_url(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("MCP server URL") != std::string::npos);
  }
  for (const char* bad : {"http://.:", "http://./mcp", "https://../x", "https://.example.com/mcp", "https://a..b/mcp", "https://x..?:"}) {
    INFO(bad);
    CHECK_FALSE(parse_upstream_url(bad));
  }
}

TEST_CASE("SSE events are parsed in any split", "[upstream]") {
  const std::string stream =
      "\xEF\xBB\xBF: keep-alive\r\n"
      "event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
      "data:{\"b\":2}\n\n"
      "retry: 100\rdata: x\r\r"
      "data: unfinished";
  // Every split point gives the same events.
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    SseParser p(1 << 16);
    std::vector<SseParser::Event> ev;
    REQUIRE(p.feed(std::string_view(stream).substr(0, cut), ev));
    REQUIRE(p.feed(std::string_view(stream).substr(cut), ev));
    INFO("cut at " << cut);
    REQUIRE(ev.size() == 3);
    CHECK(ev[0].type == "message");
    CHECK(ev[0].data == "{\"a\":\n1}");
    CHECK(ev[0].id == "7");
    CHECK(ev[1].data == "{\"b\":2}");
    CHECK(ev[2].data == "x");
    CHECK(p.last_event_id() == "7");
  }
  // Byte by byte.
  SseParser p(1 << 16);
  std::vector<SseParser::Event> ev;
  for (char c : stream) REQUIRE(p.feed(std::string_view(&c, 1), ev));
  CHECK(ev.size() == 3);
}

TEST_CASE("an SSE event past the limit is an error, not a growing buffer", "[upstream]") {
  SseParser p(64);
  std::vector<SseParser::Event> ev;
  auto r = p.feed("data: " + std::string(100, 'x'), ev);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("longer than 64") != std::string::npos);
  SseParser q(64);
  std::string many;
  for (int i = 0; i < 20; ++i) many += "data: 0123456789\n";
  REQUIRE_FALSE(q.feed(many, ev));
}

TEST_CASE("outgoing lines are classified for their POST and headers", "[upstream]") {
  auto call = classify_outgoing(R"({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{}}})");
  REQUIRE(call);
  CHECK(call->request);
  CHECK_FALSE(call->initialize);
  CHECK(call->id == json::value(4));
  CHECK(call->method == "tools/call");
  CHECK(call->name == "echo");

  auto read = classify_outgoing(R"({"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"test://static/1"}})");
  REQUIRE(read);
  CHECK(read->name == "test://static/1");

  auto init = classify_outgoing(R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{}})");
  REQUIRE(init);
  CHECK(init->initialize);

  auto note = classify_outgoing(R"({"jsonrpc":"2.0","method":"notifications/initialized"})");
  REQUIRE(note);
  CHECK_FALSE(note->request);

  auto response = classify_outgoing(R"({"jsonrpc":"2.0","id":9,"result":{}})");
  REQUIRE(response);
  CHECK_FALSE(response->request);
  CHECK(response->method.empty());

  CHECK_FALSE(classify_outgoing("[1,2]"));
  CHECK_FALSE(classify_outgoing("{"));

  // The call-scoped credential the broker put in _meta, for a credential header.
  auto minted = classify_outgoing(R"({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","_meta":{"outpost/credential":"h.c.s"}}})");
  REQUIRE(minted);
  CHECK(minted->credential == "h.c.s");
  CHECK(call->credential.empty());
}

TEST_CASE("Mcp-Name is sent plain or in MCP 2026-07-28's base64 form; credential headers are checked", "[upstream]") {
  CHECK(mcp_name_header("echo") == "echo");
  CHECK(mcp_name_header("file:///a b") == "file:///a b");
  CHECK(mcp_name_header("Hello, \xe4\xb8\x96\xe7\x95\x8c") == "=?base64?SGVsbG8sIOS4lueVjA==?=");
  CHECK(mcp_name_header(" padded ") == "=?base64?IHBhZGRlZCA=?=");
  CHECK(mcp_name_header("line1\nline2") == "=?base64?bGluZTEKbGluZTI=?=");
  CHECK(mcp_name_header("=?base64?literal?=") == "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=");

  CHECK(credential_header_name("X-Outpost-Credential").value() == "X-Outpost-Credential");
  CHECK(credential_header_name("authorization").value() == "Authorization");
  CHECK_FALSE(credential_header_name(""));
  CHECK_FALSE(credential_header_name("X Bad"));
  CHECK_FALSE(credential_header_name("X-A\r\nInjected: 1"));
  CHECK_FALSE(credential_header_name("Host"));
  CHECK_FALSE(credential_header_name("mcp-session-id"));
  CHECK_FALSE(credential_header_name("Content-Length"));
}

TEST_CASE("a url server's credential_header is parsed and checked in the manifest", "[upstream]") {
  const std::string head = "name: a\ncommand: /bin/true\nmcp_servers:\n  r:\n    url: https://mcp.example/mcp\n";
  auto m = daemon::parse_manifest(head + "    credential_header: X-Outpost-Credential\n", "m.yaml", "/");
  REQUIRE(m);
  REQUIRE(m->mcp_servers.size() == 1);
  CHECK(m->mcp_servers[0].credential_header == "X-Outpost-Credential");
  auto bearer = daemon::parse_manifest(head + "    credential_header: authorization\n", "m.yaml", "/");
  REQUIRE(bearer);
  CHECK(bearer->mcp_servers[0].credential_header == "Authorization");
  // Authorization carries auth's token when there is one; the transport's own headers never.
  auto both = daemon::parse_manifest(head + "    auth: {type: bearer, secret: tok}\n    credential_header: Authorization\n", "m.yaml", "/");
  REQUIRE_FALSE(both);
  CHECK_THAT(both.error().message(), Catch::Contains("Authorization carries auth's token"));
  CHECK_FALSE(daemon::parse_manifest(head + "    credential_header: Mcp-Session-Id\n", "m.yaml", "/"));
  CHECK_FALSE(daemon::parse_manifest("name: a\ncommand: /bin/true\nmcp_servers:\n  s: {command: /bin/true, credential_header: X-C}\n", "m.yaml", "/"));
}

TEST_CASE("header values with CR, LF or control bytes are refused", "[upstream]") {
  CHECK(header_safe("tools/call"));
  CHECK_FALSE(header_safe("a\r\nX-Evil: 1"));
  CHECK_FALSE(header_safe(std::string("a\0b", 3)));
  CHECK_FALSE(header_safe(std::string(2000, 'a')));
}

TEST_CASE("a server's body becomes one line per message", "[upstream]") {
  std::string out;
  bool answered = false;
  std::string version;
  REQUIRE(append_messages("{\n \"jsonrpc\": \"2.0\",\n \"id\": 1,\n \"result\": {\"protocolVersion\": \"2025-06-18\"}\n}",
                          json::value(1), out, answered, &version));
  CHECK(answered);
  CHECK(version == "2025-06-18");
  CHECK(out == "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\"}}\n");

  out.clear();
  answered = false;
  // A batch: a progress notification and then the answer; a request of the server with the
  // same id is not the answer.
  REQUIRE(append_messages(R"([{"jsonrpc":"2.0","method":"notifications/progress","params":{}},)"
                          R"({"jsonrpc":"2.0","id":2,"method":"sampling/createMessage"},)"
                          R"({"jsonrpc":"2.0","id":2,"result":{}}])",
                          json::value(2), out, answered));
  CHECK(answered);
  CHECK(std::count(out.begin(), out.end(), '\n') == 3);

  answered = false;
  REQUIRE(append_messages(R"({"jsonrpc":"2.0","id":"2","result":{}})", json::value(2), out, answered));
  CHECK_FALSE(answered);  // "2" is not 2
  REQUIRE(append_messages("   ", json::value(2), out, answered));
  CHECK_FALSE(append_messages("not json", json::value(2), out, answered));
  CHECK_FALSE(append_messages("[1]", json::value(2), out, answered));
  CHECK_FALSE(append_messages("\"text\"", json::value(2), out, answered));
}

TEST_CASE("an unanswered request gets an answer of its kind", "[upstream]") {
  auto call = classify_outgoing(R"({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo"}})");
  REQUIRE(call);
  json::value v = json::parse(failure_line(*call, "the server is gone"));
  CHECK(v.at("id") == json::value(4));
  CHECK(v.at("result").at("isError") == json::value(true));
  CHECK(std::string(v.at("result").at("content").at(0).at("text").as_string()).find("the server is gone") != std::string::npos);

  auto list = classify_outgoing(R"({"jsonrpc":"2.0","id":"x","method":"tools/list"})");
  REQUIRE(list);
  json::value e = json::parse(failure_line(*list, "refused"));
  CHECK(e.at("error").at("code") == json::value(-32603));
}

// ---- OAuth ----

TEST_CASE("authorization server metadata: the RFC 8414 URL, the issuer check, the endpoint", "[upstream][oauth]") {
  CHECK(metadata_url("https://as.example.com") == "https://as.example.com/.well-known/oauth-authorization-server");
  CHECK(metadata_url("https://as.example.com/tenant1/") ==
        "https://as.example.com/.well-known/oauth-authorization-server/tenant1");

  auto m = parse_as_metadata(R"({"issuer":"https://as.example.com","token_endpoint":"https://as.example.com/token",)"
                             R"("token_endpoint_auth_methods_supported":["client_secret_post"]})",
                             "https://as.example.com");
  REQUIRE(m);
  CHECK(m->token_endpoint == "https://as.example.com/token");
  CHECK_FALSE(m->basic);

  auto mixup = parse_as_metadata(R"({"issuer":"https://evil.example.com","token_endpoint":"https://evil.example.com/t"})",
                                 "https://as.example.com");
  REQUIRE_FALSE(mixup);
  CHECK(mixup.error().message().find("evil.example.com") != std::string::npos);

  auto plain = parse_as_metadata(R"({"issuer":"https://as.example.com","token_endpoint":"http://as.example.com/token"})",
                                 "https://as.example.com");
  REQUIRE_FALSE(plain);
  CHECK(plain.error().message().find("plain HTTP") != std::string::npos);
  CHECK(parse_as_metadata(R"({"issuer":"http://127.0.0.1:9","token_endpoint":"http://127.0.0.1:9/token"})",
                          "http://127.0.0.1:9"));
  // A server that takes no client secret: parsed (a public client needs none), and a client
  // with a secret is refused when it comes to authenticate (below).
  auto jwt_only = parse_as_metadata(R"({"issuer":"https://a","token_endpoint":"https://a/t",)"
                                    R"("token_endpoint_auth_methods_supported":["private_key_jwt"]})",
                                    "https://a");
  REQUIRE(jwt_only);
  CHECK_FALSE(jwt_only->secret_auth);
  int64_t now = 0;
  TokenSource confidential(
      AuthSpec{AuthSpec::Kind::oauth, "s", "https://a", "c", "", AuthSpec::Grant::client_credentials, ""}, "https://mcp.test/mcp",
      [](std::string_view) -> Result<std::string> { return std::string("x"); },
      [](const HttpExchange&) -> Result<HttpAnswer> {
        return HttpAnswer{200, "application/json",
                          R"({"issuer":"https://a","token_endpoint":"https://a/t","token_endpoint_auth_methods_supported":["private_key_jwt"]})"};
      },
      [&] { return now; });
  auto refused = confidential.authorization(false);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("neither client_secret_basic nor client_secret_post") != std::string::npos);
  CHECK_FALSE(parse_as_metadata("[]", "https://a"));
  // A server for public clients alone names only "none": parsed, and a confidential client is
  // refused when it comes to authenticate (TokenSource), not here.
  auto public_only = parse_as_metadata(
      R"({"issuer":"https://as.test","token_endpoint":"https://as.test/t","token_endpoint_auth_methods_supported":["none"]})",
      "https://as.test");
  REQUIRE(public_only);
  CHECK_FALSE(public_only->secret_auth);
  auto plain_auth = parse_as_metadata(
      R"({"issuer":"https://as.test","token_endpoint":"https://as.test/t","authorization_endpoint":"http://as.test/a"})", "https://as.test");
  REQUIRE_FALSE(plain_auth);
  CHECK(plain_auth.error().message().find("authorization_endpoint") != std::string::npos);
}

TEST_CASE("token responses: the token, its life, the server's refusal", "[upstream][oauth]") {
  auto t = parse_token_response(200, R"({"access_token":"abc","token_type":"Bearer","expires_in":120})", 1000);
  REQUIRE(t);
  CHECK(t->value == "abc");
  CHECK(t->expires_at == 1120);
  auto d = parse_token_response(200, R"({"access_token":"abc","token_type":"bearer"})", 1000);
  REQUIRE(d);
  CHECK(d->expires_at == 1300);

  auto refused = parse_token_response(400, R"({"error":"invalid_client","error_description":"client disabled"})", 0);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("invalid_client (client disabled)") != std::string::npos);
  CHECK_FALSE(parse_token_response(200, R"({"access_token":"abc","token_type":"mac"})", 0));
  CHECK_FALSE(parse_token_response(200, R"({"access_token":"a\r\nb","token_type":"Bearer"})", 0));
  CHECK_FALSE(parse_token_response(200, R"({"access_token":"abc","token_type":"Bearer","expires_in":0})", 0));
  CHECK_FALSE(parse_token_response(200, R"({"access_token":"abc","token_type":"Bearer","expires_in":"x"})", 0));
  CHECK_FALSE(parse_token_response(200, "<html>", 0));
  CHECK(form_encode("a b&c=d/é") == "a+b%26c%3Dd%2F%C3%A9");
}

namespace {

// An authorization server above the HTTP seam: it records what it was asked.
struct FakeAs {
  std::vector<HttpExchange> seen;
  int64_t life = 100;
  bool refuse = false;
  int issued = 0;
  Result<HttpAnswer> operator()(const HttpExchange& x) {
    seen.push_back(x);
    if (x.url == "https://as.test/.well-known/oauth-authorization-server") {
      return HttpAnswer{200, "application/json", R"({"issuer":"https://as.test","token_endpoint":"https://as.test/token"})"};
    }
    if (x.url == "https://as.test/token") {
      if (refuse) return HttpAnswer{401, "application/json", R"({"error":"invalid_client"})"};
      ++issued;
      return HttpAnswer{200, "application/json",
                        R"({"access_token":"tok)" + std::to_string(issued) + R"(","token_type":"Bearer","expires_in":)" +
                            std::to_string(life) + "}"};
    }
    return HttpAnswer{404, "", ""};
  }
};

}  // namespace

TEST_CASE("the OAuth client fetches, caches, refreshes before expiry and after a 401", "[upstream][oauth]") {
  FakeAs as;
  int64_t now = 10'000;
  AuthSpec spec{AuthSpec::Kind::oauth, "client-secret", "https://as.test", "node-7", "mcp:tools", AuthSpec::Grant::client_credentials, ""};
  TokenSource src(
      spec, "https://mcp.test/mcp",
      [](std::string_view name) -> Result<std::string> {
        if (name != "client-secret") return fail(errc::not_found, "no such secret");
        return std::string("s3cret");
      },
      [&](const HttpExchange& x) { return as(x); }, [&] { return now; });

  auto a = src.authorization(false);
  REQUIRE(a);
  CHECK(*a == "Bearer tok1");
  REQUIRE(as.seen.size() == 2);
  const HttpExchange& post = as.seen[1];
  CHECK(post.method == "POST");
  CHECK(post.body == "grant_type=client_credentials&resource=https%3A%2F%2Fmcp.test%2Fmcp&scope=mcp%3Atools");
  bool basic = false;
  for (const auto& [k, v] : post.headers) {
    if (k == "Authorization") basic = v == "Basic bm9kZS03OnMzY3JldA==";  // base64("node-7:s3cret")
  }
  CHECK(basic);

  now += 50;  // within its life: cached, metadata not read again
  CHECK(*src.authorization(false) == "Bearer tok1");
  CHECK(as.seen.size() == 2);
  now += 45;  // 95 s of 100: inside the margin (a tenth of the life), so a new one
  CHECK(*src.authorization(false) == "Bearer tok2");
  CHECK(as.seen.size() == 3);
  CHECK(*src.authorization(true) == "Bearer tok3");  // the server said 401

  as.refuse = true;
  auto refused = src.authorization(true);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("HTTP 401: invalid_client") != std::string::npos);
  CHECK(src.stats().fetched == 3);
  CHECK(src.stats().failed == 1);
  // The refused token is not served afterwards either.
  REQUIRE_FALSE(src.authorization(false));
}

TEST_CASE("the OAuth client refuses a mix-up and reports a missing secret", "[upstream][oauth]") {
  int64_t now = 0;
  TokenSource mixed(
      AuthSpec{AuthSpec::Kind::oauth, "s", "https://other.test", "c", "", AuthSpec::Grant::client_credentials, ""}, "https://mcp.test/mcp",
      [](std::string_view) -> Result<std::string> { return std::string("x"); },
      [](const HttpExchange&) -> Result<HttpAnswer> {
        return HttpAnswer{200, "application/json", R"({"issuer":"https://as.test","token_endpoint":"https://as.test/token"})"};
      },
      [&] { return now; });
  auto r = mixed.authorization(false);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("RFC 8414") != std::string::npos);

  TokenSource bearer(
      AuthSpec{AuthSpec::Kind::bearer, "api-token", "", "", "", AuthSpec::Grant::client_credentials, ""}, "https://mcp.test/mcp",
      [](std::string_view name) -> Result<std::string> { return fail(errc::not_found, std::string(name) + " is not sealed"); },
      nullptr, [&] { return now; });
  auto b = bearer.authorization(false);
  REQUIRE_FALSE(b);
  CHECK(b.error().message().find("bearer token api-token") != std::string::npos);

  TokenSource none(AuthSpec{}, "https://mcp.test/mcp", nullptr, nullptr, [&] { return now; });
  CHECK(none.authorization(false)->empty());
}

TEST_CASE("the OAuth login: PKCE S256, the state checked once, refresh tokens sealed and rotated", "[upstream][oauth]") {
  int64_t now = 1'000;
  std::map<std::string, std::string> sealed;  // the TPM's store, for this test
  std::vector<HttpExchange> seen;
  std::string challenge;
  int refreshes = 0;
  auto http = [&](const HttpExchange& x) -> Result<HttpAnswer> {
    seen.push_back(x);
    if (x.method == "GET") {
      return HttpAnswer{200, "application/json",
                        R"({"issuer":"https://as.test","token_endpoint":"https://as.test/token",)"
                        R"("authorization_endpoint":"https://as.test/authorize","code_challenge_methods_supported":["S256"]})"};
    }
    if (x.body.find("grant_type=authorization_code") == 0) {
      return HttpAnswer{200, "application/json", R"({"access_token":"a1","token_type":"Bearer","expires_in":100,"refresh_token":"r1"})"};
    }
    ++refreshes;
    const std::string next = "r" + std::to_string(refreshes + 1);
    return HttpAnswer{200, "application/json",
                      R"({"access_token":"a)" + std::to_string(refreshes + 1) + R"(","token_type":"Bearer","expires_in":100,"refresh_token":")" + next + "\"}"};
  };
  AuthSpec spec{AuthSpec::Kind::oauth, "", "https://as.test", "node-7", "", AuthSpec::Grant::authorization_code, "oauth-refresh-x"};
  TokenSource src(
      spec, "https://mcp.test/mcp",
      [&](std::string_view name) -> Result<std::string> {
        auto it = sealed.find(std::string(name));
        if (it == sealed.end()) return fail(errc::not_found, "no secret " + std::string(name));
        return it->second;
      },
      http, [&] { return now; },
      [&](std::string_view name, std::string_view value) -> Result<void> {
        sealed[std::string(name)] = std::string(value);
        return ok();
      });

  // Before the login: a clear refusal that says what to do.
  auto before = src.authorization(false);
  REQUIRE_FALSE(before);
  CHECK(before.error().message().find("outpost mcp login") != std::string::npos);
  CHECK_FALSE(src.begin_login("https://not-loopback.test/cb"));

  auto url = src.begin_login("http://127.0.0.1:5555/callback");
  REQUIRE(url);
  CHECK(url->rfind("https://as.test/authorize?response_type=code&client_id=node-7&redirect_uri=http%3A%2F%2F127.0.0.1%3A5555%2Fcallback", 0) == 0);
  CHECK(url->find("&code_challenge_method=S256&") != std::string::npos);
  CHECK(url->find("&resource=https%3A%2F%2Fmcp.test%2Fmcp") != std::string::npos);
  const size_t c = url->find("code_challenge=") + 15;
  challenge = url->substr(c, url->find('&', c) - c);
  const size_t st = url->find("&state=") + 7;
  const std::string state = url->substr(st, url->find('&', st) - st);

  // A wrong state ends the login: the right one afterwards is refused too.
  CHECK_FALSE(src.finish_login("code-1", "forged"));
  CHECK_FALSE(src.finish_login("code-1", state));
  // A new login: its state, and its challenge kept for the token endpoint's check.
  auto begin = [&]() -> std::string {
    auto u = src.begin_login("http://127.0.0.1:5555/callback");
    REQUIRE(u);
    const size_t s = u->find("&state=") + 7, ch = u->find("code_challenge=") + 15;
    challenge = u->substr(ch, u->find('&', ch) - ch);
    return u->substr(s, u->find('&', s) - s);
  };
  // RFC 9207: an iss that is not the server's is a mix-up, and ends the login too.
  CHECK_THAT(src.finish_login("code-2", begin(), "https://evil.test").error().message(), Catch::Contains("mix-up"));
  REQUIRE(src.finish_login("code-2", begin(), "https://as.test"));
  // The exchange carried the verifier whose SHA-256 is the challenge (RFC 7636 §4.6).
  const HttpExchange& exchange = seen.back();
  CHECK(exchange.body.find("grant_type=authorization_code&code=code-2&redirect_uri=") == 0);
  const size_t v = exchange.body.find("code_verifier=") + 14;
  const std::string verifier = exchange.body.substr(v, exchange.body.find('&', v) - v);
  CHECK(verifier.size() == 43);
  const Digest d = sha256(verifier);
  CHECK(base64url_encode(ByteView(d.data(), d.size())) == challenge);
  CHECK(exchange.body.find("client_id=node-7") != std::string::npos);  // a public client
  CHECK(sealed.at("oauth-refresh-x") == "r1");
  CHECK(*src.authorization(false) == "Bearer a1");

  // Expired: the refresh grant with the sealed token; the rotated one is sealed in its place.
  now += 200;
  CHECK(*src.authorization(false) == "Bearer a2");
  CHECK(seen.back().body.find("grant_type=refresh_token&refresh_token=r1&") == 0);
  CHECK(sealed.at("oauth-refresh-x") == "r2");
  CHECK(*src.authorization(true) == "Bearer a3");
  CHECK(seen.back().body.find("refresh_token=r2&") != std::string::npos);
  CHECK(sealed.at("oauth-refresh-x") == "r3");

  // A server without S256 is refused for a login.
  TokenSource plain(
      spec, "https://mcp.test/mcp", [](std::string_view) -> Result<std::string> { return std::string(); },
      [](const HttpExchange&) -> Result<HttpAnswer> {
        return HttpAnswer{200, "application/json",
                          R"({"issuer":"https://as.test","token_endpoint":"https://as.test/token","authorization_endpoint":"https://as.test/a"})"};
      },
      [&] { return now; });
  auto no_pkce = plain.begin_login("http://127.0.0.1:5555/callback");
  REQUIRE_FALSE(no_pkce);
  CHECK(no_pkce.error().message().find("S256") != std::string::npos);
}

// ---- HttpUpstream in process ----

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

// A Streamable HTTP server of a few lines: tools/call answered as SSE with a progress event
// first, everything else as JSON; a session id from initialize, required afterwards; a bearer
// token checked, the first one refused once.
struct MiniServer {
  boost::asio::io_context io;
  tcp::acceptor acceptor{io, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0)};
  std::thread thread;
  std::mutex mu;
  std::vector<std::map<std::string, std::string>> requests;  // headers of each POST, plus "body"
  std::atomic<bool> deleted{false}, stopping{false};
  std::vector<std::thread> served;
  std::string good_token = "Bearer t2";
  bool modern = false;  // a server of MCP 2026-07-28 only: server/discover, no sessions

  uint16_t port() const { return acceptor.local_endpoint().port(); }
  void start() {
    thread = std::thread([this] {
      for (;;) {
        tcp::socket s(io);
        boost::system::error_code ec;
        acceptor.accept(s, ec);
        if (ec || stopping) return;
        served.emplace_back([this, s = std::move(s)]() mutable { serve(std::move(s)); });
      }
    });
  }
  void serve(tcp::socket s) {
    beast::flat_buffer buf;
    for (;;) {
      http::request<http::string_body> req;
      boost::system::error_code ec;
      http::read(s, buf, req, ec);
      if (ec) return;
      std::map<std::string, std::string> h;
      for (const auto& f : req) h[std::string(f.name_string())] = std::string(f.value());
      h["body"] = req.body();
      h["method"] = std::string(req.method_string());
      {
        std::lock_guard lock(mu);
        requests.push_back(h);
      }
      http::response<http::string_body> res;
      res.version(11);
      res.keep_alive(true);
      if (req.method() == http::verb::delete_) {
        deleted = true;
        res.result(http::status::ok);
      } else if (h["Authorization"] != good_token) {
        res.result(http::status::unauthorized);
        res.set(http::field::www_authenticate, "Bearer");
      } else {
        json::value m = json::parse(req.body());
        const std::string method(m.at("method").as_string());
        if (modern) {
          res.result(http::status::ok);
          res.set(http::field::content_type, "application/json");
          json::object result;
          if (method == "server/discover") {
            result = {{"resultType", "complete"}, {"supportedVersions", {"2026-07-28"}},
                      {"capabilities", {{"tools", {{"listChanged", true}}}, {"logging", json::object{}}}},
                      {"_meta", {{"io.modelcontextprotocol/serverInfo", {{"name", "mini"}, {"version", "2"}}}}}};
          } else if (method == "tools/call" && m.at("params").at("name") == "ask") {
            result = {{"resultType", "input_required"}, {"inputRequests", {{"q", {{"method", "elicitation/create"}}}}}};
          } else {
            result = {{"resultType", "complete"}, {"content", json::array{{{"type", "text"}, {"text", "modern"}}}}};
          }
          if (!m.as_object().contains("id") || method == "initialize") {
            res.result(http::status::bad_request);
          } else {
            res.body() = json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", m.at("id")}, {"result", result}});
          }
        } else if (!m.as_object().contains("id")) {
          res.result(http::status::accepted);
        } else if (method == "initialize") {
          res.result(http::status::ok);
          res.set("Mcp-Session-Id", "sess-1");
          res.set(http::field::content_type, "application/json");
          res.body() = json::serialize(json::object{
              {"jsonrpc", "2.0"}, {"id", m.at("id")}, {"result", {{"protocolVersion", "2025-06-18"}, {"capabilities", json::object{}}}}});
        } else if (h["Mcp-Session-Id"] != "sess-1") {
          res.result(http::status::bad_request);
        } else if (method == "tools/call") {
          res.result(http::status::ok);
          res.set(http::field::content_type, "text/event-stream");
          res.body() = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n"
                       "data: " +
                       json::serialize(json::object{{"jsonrpc", "2.0"},
                                                    {"id", m.at("id")},
                                                    {"result", {{"content", json::array{{{"type", "text"}, {"text", "hi"}}}}}}}) +
                       "\n\n";
        } else if (method == "fail") {
          res.result(http::status::internal_server_error);
        } else {
          res.result(http::status::ok);
          res.set(http::field::content_type, "application/json");
          res.body() = json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", m.at("id")}, {"result", json::object{}}});
        }
      }
      res.prepare_payload();
      http::write(s, res, ec);
      if (ec) return;
    }
  }
  // After the client closed its connections (each serve() then ends).
  ~MiniServer() {
    stopping = true;
    boost::system::error_code ec;
    tcp::socket wake(io);
    wake.connect(acceptor.local_endpoint(), ec);
    if (thread.joinable()) thread.join();
    for (auto& t : served) t.join();
  }
};

std::string read_lines(int fd, size_t n) {
  std::string got;
  char buf[4096];
  while (static_cast<size_t>(std::count(got.begin(), got.end(), '\n')) < n) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r <= 0) break;
    got.append(buf, static_cast<size_t>(r));
  }
  return got;
}

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t w = ::write(fd, s.data() + off, s.size() - off);
    REQUIRE(w > 0);
    off += static_cast<size_t>(w);
  }
}

}  // namespace

TEST_CASE("HttpUpstream carries stdio lines over Streamable HTTP: session, SSE, 401 retry, headers", "[upstream]") {
  MiniServer server;
  server.start();
  auto url = parse_upstream_url("http://127.0.0.1:" + std::to_string(server.port()) + "/mcp");
  REQUIRE(url);
  std::atomic<int> connects{0};
  std::atomic<bool> refreshed{false};
  UpstreamHooks hooks;
  hooks.connect = [&](const std::string& host, uint16_t port, const std::string&) -> Result<tcp::endpoint> {
    ++connects;
    return tcp::endpoint(boost::asio::ip::make_address(host), port);
  };
  hooks.authorization = [&](bool refresh) -> Result<std::string> {
    if (refresh) refreshed = true;  // the first is refused: one retry, then the new one serves
    return std::string(refreshed ? "Bearer t2" : "Bearer t1");
  };
  UpstreamOptions options;
  options.credential_header = "X-Outpost-Credential";
  HttpUpstream up(*url, options, hooks);
  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  Result<void> ran = ok();
  std::thread carrier([&] { ran = up.run(in[0], out[1]); });

  write_all(in[1], R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}})" "\n");
  std::string got = read_lines(out[0], 1);
  CHECK(got.find("\"protocolVersion\":\"2025-06-18\"") != std::string::npos);
  write_all(in[1], R"({"jsonrpc":"2.0","method":"notifications/initialized"})" "\n"
                   R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"outpost/credential":"eyJh.eyJi.c2ln"}}})" "\n"
                   R"({"jsonrpc":"2.0","id":2,"method":"fail"})" "\n");
  got = read_lines(out[0], 3);
  CHECK(got.find("notifications/progress") != std::string::npos);
  CHECK(got.find(R"("text":"hi")") != std::string::npos);
  CHECK(got.find(R"("id":2,"error")") != std::string::npos);
  CHECK(got.find("HTTP 500") != std::string::npos);
  ::close(in[1]);
  carrier.join();
  CHECK(ran);
  CHECK(read_lines(out[0], 1).empty());  // closed at the end
  ::close(out[0]);

  CHECK(server.deleted);  // the session ended with DELETE
  std::lock_guard lock(server.mu);
  bool saw_call = false;
  for (const auto& h : server.requests) {
    if (h.count("Mcp-Method") && h.at("Mcp-Method") == "tools/call") {
      saw_call = true;
      CHECK(h.at("Mcp-Name") == "echo");
      CHECK(h.at("X-Outpost-Credential") == "eyJh.eyJi.c2ln");  // beside Authorization's token
      CHECK(h.at("Authorization").rfind("Bearer t", 0) == 0);
      CHECK(h.at("Mcp-Session-Id") == "sess-1");
      CHECK(h.at("MCP-Protocol-Version") == "2025-06-18");
      CHECK(h.at("Accept").find("text/event-stream") != std::string::npos);
    }
  }
  CHECK(saw_call);
  CHECK(up.stats().retried_401 == 1);
  CHECK(up.stats().sse_streams >= 1);
  CHECK(connects.load() >= 1);
}

TEST_CASE("HttpUpstream speaks MCP 2026-07-28 to a server that answers server/discover with it", "[upstream]") {
  MiniServer server;
  server.modern = true;
  server.good_token = "Bearer t";
  server.start();
  auto url = parse_upstream_url("http://127.0.0.1:" + std::to_string(server.port()) + "/mcp");
  REQUIRE(url);
  UpstreamHooks hooks;
  hooks.connect = [&](const std::string& host, uint16_t port, const std::string&) -> Result<tcp::endpoint> {
    return tcp::endpoint(boost::asio::ip::make_address(host), port);
  };
  hooks.authorization = [&](bool) -> Result<std::string> { return std::string("Bearer t"); };
  HttpUpstream up(*url, UpstreamOptions{}, hooks);
  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  Result<void> ran = ok();
  std::thread carrier([&] { ran = up.run(in[0], out[1]); });

  // The agent's initialize is answered from the discovery: its revision, the server's identity,
  // the capabilities outpostd carries (no list changes: no subscriptions/listen).
  write_all(in[1], R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"roots":{}},"clientInfo":{"name":"agent-x","version":"1"}}})" "\n");
  const json::value init = json::parse(read_lines(out[0], 1));
  CHECK(init.at("id") == 0);
  CHECK(init.at("result").at("protocolVersion") == "2025-06-18");
  CHECK(init.at("result").at("serverInfo").at("name") == "mini");
  CHECK(init.at("result").at("capabilities").at("tools").as_object().empty());
  CHECK_FALSE(init.at("result").at("capabilities").as_object().contains("logging"));
  write_all(in[1], R"({"jsonrpc":"2.0","method":"notifications/initialized"})" "\n"
                   R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"n":123456789012345678901234567890},"_meta":{"progressToken":7}}})" "\n");
  CHECK_THAT(read_lines(out[0], 1), Catch::Contains(R"("text":"modern")"));
  write_all(in[1], R"({"jsonrpc":"2.0","id":2,"method":"ping"})" "\n");
  CHECK_THAT(read_lines(out[0], 1), Catch::Contains(R"({"jsonrpc":"2.0","id":2,"result":{}})"));
  // An input request the agent's revision cannot take: a failed call with the reason.
  write_all(in[1], R"({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"ask","arguments":{}}})" "\n");
  const std::string asked = read_lines(out[0], 1);
  CHECK_THAT(asked, Catch::Contains("input required"));
  CHECK_THAT(asked, Catch::Contains(R"("isError":true)"));
  ::close(in[1]);
  carrier.join();
  CHECK(ran);
  ::close(out[0]);
  CHECK(up.stats().modern == 1);

  std::lock_guard lock(server.mu);
  std::vector<std::string> methods;
  for (const auto& h : server.requests) {
    INFO(h.at("body"));
    CHECK(h.at("MCP-Protocol-Version") == "2026-07-28");
    CHECK(h.count("Mcp-Session-Id") == 0);
    const json::value body = json::parse(h.at("body"));
    methods.push_back(std::string(body.at("method").as_string()));
    const json::object& meta = body.at("params").at("_meta").as_object();
    CHECK(meta.at("io.modelcontextprotocol/protocolVersion") == "2026-07-28");
    CHECK(meta.at("io.modelcontextprotocol/clientCapabilities").as_object().empty());
  }
  // Nothing but requests, no initialize, no ping; the call as the agent wrote it, envelope
  // added to its own _meta, its number unrounded, the agent's clientInfo.
  CHECK(methods == std::vector<std::string>{"server/discover", "tools/call", "tools/call"});
  const std::string& call = server.requests[1].at("body");
  CHECK_THAT(call, Catch::Contains("123456789012345678901234567890"));
  CHECK_THAT(call, Catch::Contains(R"("progressToken":7)"));
  CHECK(json::parse(call).at("params").at("_meta").at("io.modelcontextprotocol/clientInfo").at("name") == "agent-x");
  CHECK(server.requests[1].at("Mcp-Name") == "echo");
  CHECK_FALSE(server.deleted);  // no session to end
}

TEST_CASE("HttpUpstream answers every request when the server cannot be reached", "[upstream]") {
  auto url = parse_upstream_url("http://127.0.0.1:9/mcp");
  REQUIRE(url);
  UpstreamHooks hooks;
  hooks.connect = [](const std::string& host, uint16_t, const std::string&) -> Result<tcp::endpoint> {
    return fail(errc::verification_failed, "egress to " + host + " refused by rule deny-all");
  };
  hooks.authorization = [](bool) -> Result<std::string> { return std::string(); };
  HttpUpstream up(*url, UpstreamOptions{}, hooks);
  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  std::thread carrier([&] { (void)up.run(in[0], out[1]); });
  write_all(in[1], R"({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo"}})" "\n");
  std::string got = read_lines(out[0], 1);
  ::close(in[1]);
  carrier.join();
  ::close(out[0]);
  json::value v = json::parse(got);
  CHECK(v.at("id") == json::value(5));
  CHECK(v.at("result").at("isError") == json::value(true));
  CHECK(got.find("refused by rule deny-all") != std::string::npos);
}
