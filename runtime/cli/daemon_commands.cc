// The commands that talk to outpostd over its socket: agent deploy/list/stop/logs, mcp
// connect, and bundle install while the daemon owns the TPM.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>

#include <iomanip>
#include <iostream>

#include <boost/beast/http/empty_body.hpp>
#include "outpost/base/beast_http.h"
#include <boost/json/serialize.hpp>

#include "cli.h"
#include "daemon/api.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "sandbox/sandbox.h"

namespace outpost::cli {
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

void add_socket_option(po::options_description& d) {
  d.add_options()("socket", po::value<std::string>(), "outpostd's socket (default: $OUTPOST_SOCKET, else <state>/outpostd.sock)")(
      "state", po::value<std::string>(), "state directory (default: $OUTPOST_STATE, else the board's)");
}

fs::path socket_of(const po::variables_map& vm) {
  if (vm.count("socket")) return vm["socket"].as<std::string>();
  fs::path state;
  if (vm.count("state")) {
    state = vm["state"].as<std::string>();
  } else if (const char* s = std::getenv("OUTPOST_STATE"); s && *s) {
    state = s;
  } else if (auto b = boards::load_board("sim")) {
    state = b->state_dir;
  }
  return daemon::default_socket(state);
}

int deploy(const Args& args) {
  po::options_description d("agent deploy");
  add_socket_option(d);
  d.add_options()("manifest", po::value<std::string>()->required(), "agent manifest (YAML)");
  auto vm = parse(args, "outpost agent deploy MANIFEST.yaml [--socket S]", d, {"manifest"});
  if (!vm) return kExitOk;
  const fs::path manifest = fs::absolute((*vm)["manifest"].as<std::string>());
  auto text = read_text_file(manifest, 1 << 20);
  if (!text) return report(text.error());
  auto r = daemon::call_api(socket_of(*vm), {{"op", "deploy"}, {"manifest", *text}, {"base_dir", manifest.parent_path().string()}});
  if (!r) return report(r.error());
  std::cout << "deployed; session " << std::string(r->at("session").as_string()) << "\n";
  return kExitOk;
}

int list(const Args& args) {
  po::options_description d("agent list");
  add_socket_option(d);
  d.add_options()("json", "print JSON");
  auto vm = parse(args, "outpost agent list [--json]", d);
  if (!vm) return kExitOk;
  auto r = daemon::call_api(socket_of(*vm), {{"op", "list"}});
  if (!r) return report(r.error());
  if (vm->count("json")) {
    std::cout << json::serialize(r->at("agents")) << "\n";
    return kExitOk;
  }
  std::cout << std::left << std::setw(16) << "NAME" << std::setw(12) << "STATE" << std::setw(9) << "PID" << std::setw(10)
            << "RESTARTS" << "SERVERS\n";
  for (const auto& v : r->at("agents").as_array()) {
    const auto& a = v.as_object();
    std::string servers;
    for (const auto& s : a.at("mcp_servers").as_array()) servers += (servers.empty() ? "" : ",") + std::string(s.as_string());
    std::cout << std::setw(16) << std::string(a.at("name").as_string()) << std::setw(12)
              << std::string(a.at("state").as_string()) << std::setw(9) << a.at("pid").as_int64() << std::setw(10)
              << a.at("restarts").as_int64() << servers << "\n";
  }
  return kExitOk;
}

int stop(const Args& args) {
  po::options_description d("agent stop");
  add_socket_option(d);
  d.add_options()("name", po::value<std::string>()->required(), "agent name");
  auto vm = parse(args, "outpost agent stop NAME", d, {"name"});
  if (!vm) return kExitOk;
  auto r = daemon::call_api(socket_of(*vm), {{"op", "stop"}, {"name", (*vm)["name"].as<std::string>()}});
  if (!r) return report(r.error());
  std::cout << "stopping " << (*vm)["name"].as<std::string>() << "\n";
  return kExitOk;
}

int logs(const Args& args) {
  po::options_description d("agent logs");
  add_socket_option(d);
  d.add_options()("name", po::value<std::string>()->required(), "agent name")(
      "bytes", po::value<int64_t>()->default_value(64 << 10), "how much of the end of the log");
  auto vm = parse(args, "outpost agent logs NAME [--bytes N]", d, {"name"});
  if (!vm) return kExitOk;
  auto r = daemon::call_api(socket_of(*vm), {{"op", "logs"}, {"name", (*vm)["name"].as<std::string>()},
                                             {"bytes", (*vm)["bytes"].as<int64_t>()}});
  if (!r) return report(r.error());
  std::cout << std::string(r->at("log").as_string());
  return kExitOk;
}

// ---- outpost mcp login: the operator's one-time OAuth login for an agent's remote server ----

// The query of a request target as name -> value, percent- and plus-decoded.
std::map<std::string, std::string> query_of(std::string_view target) {
  std::map<std::string, std::string> out;
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return out;
  auto decode = [](std::string_view in) {
    std::string o;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] == '+') {
        o.push_back(' ');
      } else if (in[i] == '%' && i + 2 < in.size() && std::isxdigit(static_cast<unsigned char>(in[i + 1])) &&
                 std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
        o.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
        i += 2;
      } else {
        o.push_back(in[i]);
      }
    }
    return o;
  };
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    const std::string_view pair = rest.substr(0, rest.find('&'));
    rest.remove_prefix(std::min(rest.size(), pair.size() + 1));
    const size_t eq = pair.find('=');
    out[decode(pair.substr(0, eq))] = eq == std::string_view::npos ? "" : decode(pair.substr(eq + 1));
  }
  return out;
}

// Waits on `listener` for the browser's redirect to /callback; its query, or an error at the
// deadline. Other requests (a favicon) get 404 and the wait goes on.
Result<std::map<std::string, std::string>> await_redirect(int listener, std::chrono::steady_clock::time_point deadline) {
  namespace http = boost::beast::http;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return fail(errc::timeout, "no redirect came back before the deadline");
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000))) <= 0) continue;
    const int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    http::request_parser<http::empty_body> parser;
    parser.eager(true);
    std::string head;
    char buf[4096];
    boost::system::error_code ec;
    const auto read_until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!parser.is_header_done() && head.size() < 16384 && std::chrono::steady_clock::now() < read_until) {
      pollfd rp{c, POLLIN, 0};
      if (::poll(&rp, 1, 1000) <= 0) continue;
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
      parser.put(boost::asio::buffer(head.data() + (head.size() - static_cast<size_t>(n)), static_cast<size_t>(n)), ec);
      if (ec && ec != http::error::need_more) break;
    }
    std::string target = parser.is_header_done() ? std::string(parser.get().target()) : std::string();
    const bool callback = target.rfind("/callback", 0) == 0;
    const std::string body = callback ? "outpost: the login came back to the node; you may close this window.\n" : "not found\n";
    const std::string answer = std::string(callback ? "HTTP/1.1 200 OK" : "HTTP/1.1 404 Not Found") +
                               "\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) +
                               "\r\n\r\n" + body;
    (void)!::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
    ::close(c);
    if (callback) return query_of(target);
  }
}

int mcp_login(const Args& args) {
  po::options_description d("mcp login");
  add_socket_option(d);
  d.add_options()("agent", po::value<std::string>()->required(), "the deployed agent")(
      "server", po::value<std::string>()->required(), "its MCP server (a url: server with auth grant authorization_code)")(
      "port", po::value<int>()->default_value(0), "the loopback port of the redirect (0: any free one)")(
      "timeout", po::value<int>()->default_value(300), "seconds to wait for the browser");
  auto vm = parse(args, "outpost mcp login AGENT SERVER [--port P] [--timeout S]", d, {"agent", "server"});
  if (!vm) return kExitOk;
  const std::string agent = (*vm)["agent"].as<std::string>(), server = (*vm)["server"].as<std::string>();
  // The redirect comes back to this process on loopback (RFC 8252 §7.3).
  sandbox::UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(static_cast<uint16_t>((*vm)["port"].as<int>()));
  socklen_t len = sizeof sa;
  if (!listener || ::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(listener.get(), 8) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    return report(errno_error("the redirect's loopback listener", errno));
  }
  const std::string redirect = "http://127.0.0.1:" + std::to_string(ntohs(sa.sin_port)) + "/callback";
  const fs::path socket = socket_of(*vm);
  auto begun = daemon::call_api(socket, {{"op", "oauth_begin"}, {"agent", agent}, {"server", server}, {"redirect_uri", redirect}});
  if (!begun) return report(begun.error());
  std::cout << "Open this URL in a browser on this node (or one whose 127.0.0.1:" << ntohs(sa.sin_port)
            << " is forwarded here):\n  " << std::string(begun->at("url").as_string()) << "\nwaiting for the redirect to "
            << redirect << " ..." << std::endl;
  auto query = await_redirect(listener.get(), std::chrono::steady_clock::now() + std::chrono::seconds((*vm)["timeout"].as<int>()));
  if (!query) return report(query.error());
  if (query->count("error") != 0) {
    return report(Error(make_error_code(errc::verification_failed),
                        "the authorization server refused the login: " + (*query)["error"] +
                            ((*query)["error_description"].empty() ? "" : " (" + (*query)["error_description"] + ")")));
  }
  auto finished = daemon::call_api(socket, {{"op", "oauth_finish"}, {"agent", agent}, {"server", server},
                                            {"code", (*query)["code"]}, {"state", (*query)["state"]},
                                            {"iss", (*query)["iss"]}});
  if (!finished) return report(finished.error());
  std::cout << "logged in: outpostd holds a refresh token for " << agent << "/" << server << ", sealed by the TPM" << std::endl;
  return kExitOk;
}

}  // namespace

int agent_daemon_command(const std::string& sub, const Args& rest) {
  if (sub == "deploy") return deploy(rest);
  if (sub == "list") return list(rest);
  if (sub == "stop") return stop(rest);
  if (sub == "logs") return logs(rest);
  return -1;
}

// outpost mcp connect SERVER: run by the agent as its MCP server. Hands its stdin and stdout to
// outpostd, which brokers them to the real server, then waits for the end and exits with the
// server's status. No bytes of MCP traffic pass through this process.
int mcp_command(const Args& args) {
  if (!args.empty() && args[0] == "serve-local") return mcp_serve_local(Args(args.begin() + 1, args.end()));
  if (!args.empty() && args[0] == "login") return mcp_login(Args(args.begin() + 1, args.end()));
  if (args.empty() || args[0] != "connect") throw UsageError("usage: outpost mcp connect SERVER | outpost mcp login AGENT SERVER");
  po::options_description d("mcp connect");
  add_socket_option(d);
  d.add_options()("server", po::value<std::string>()->required(), "the MCP server's name in the agent's manifest");
  auto vm = parse(Args(args.begin() + 1, args.end()), "outpost mcp connect SERVER", d, {"server"});
  if (!vm) return kExitOk;
  auto fd = daemon::connect_api(socket_of(*vm));
  if (!fd) return report(fd.error());
  json::object req{{"op", "mcp"}, {"server", (*vm)["server"].as<std::string>()}};
  if (auto s = daemon::send_message(*fd, req, {STDIN_FILENO, STDOUT_FILENO}); !s) return report(s.error());
  auto reply = daemon::recv_message(*fd);
  if (!reply) return report(reply.error().wrap("outpostd"));
  const json::object* o = reply->if_object();
  if (o == nullptr || !o->contains("ok") || !o->at("ok").is_bool() || !o->at("ok").get_bool()) {
    std::string text = o != nullptr && o->contains("error") && o->at("error").is_string()
                           ? std::string(o->at("error").get_string()) : "refused";
    return report(Error(make_error_code(errc::verification_failed), "outpostd: " + text));
  }
  // Our copies of the pipes are not needed: outpostd has its own. Closing them means the
  // agent sees EOF as soon as outpostd closes its side and this process exits.
  ::close(STDIN_FILENO);
  ::close(STDOUT_FILENO);
  auto done = daemon::recv_message(*fd);
  if (!done) return kExitFailure;  // outpostd went away
  const json::object* d2 = done->if_object();
  if (d2 != nullptr && d2->contains("status") && d2->at("status").is_int64()) {
    return static_cast<int>(d2->at("status").get_int64() & 0xff);
  }
  return kExitOk;
}

// `bundle install` while outpostd runs: the daemon owns the TPM, so it installs.
Result<uint64_t> install_through_daemon(const fs::path& socket, ByteView bundle) {
  OUTPOST_TRY(json::object r, daemon::call_api(socket, {{"op", "install"}, {"bundle", base64_encode(bundle)}}));
  return static_cast<uint64_t>(r.at("version").to_number<uint64_t>());
}

Result<void> quote_through_daemon(const fs::path& socket, ByteView nonce, const std::string& pcrs, const fs::path& out) {
  OUTPOST_TRY(json::object r, daemon::call_api(socket, {{"op", "quote"}, {"nonce", hex_encode(nonce)}, {"pcrs", pcrs}}));
  auto field = [&](const char* key) -> Result<Bytes> {
    const json::value* v = r.if_contains(key);
    if (v == nullptr || !v->is_string()) return fail(make_error_code(errc::corrupt), std::string("outpostd's reply lacks ") + key);
    return base64_decode(v->as_string());
  };
  attestation::QuoteFiles files;
  OUTPOST_TRY(files.quote.attest, field("attest"));
  OUTPOST_TRY(files.quote.signature, field("signature"));
  OUTPOST_TRY(Bytes pcrs_bin, field("pcrs"));
  OUTPOST_TRY(files.pcrs, attestation::decode_pcrs_tpm2tools(pcrs_bin));
  const json::value* ak = r.if_contains("ak");
  if (ak == nullptr || !ak->is_string()) return fail(make_error_code(errc::corrupt), "outpostd's reply lacks ak");
  OUTPOST_TRY(EcPublicKey key, EcPublicKey::from_pem(ak->as_string()));
  return attestation::write_quote_dir(out, files, key);
}

bool daemon_running(const fs::path& socket) {
  auto fd = daemon::connect_api(socket);
  if (!fd) return false;
  ::close(*fd);
  return true;
}

}  // namespace outpost::cli
