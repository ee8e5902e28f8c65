// outpost mcp serve-local --tool NAME=/path/to/exe ...: the MCP server outpostd runs for an
// agent's local command tools (bundle tools of kind local_command). It speaks MCP on stdio like
// any server, so the broker in front of it decides every call exactly as for a remote one; by
// the time a tools/call reaches this process, policy has allowed it.
//
// A tool takes {"args": ["..."]} (policy constrains /args/0, /args/1, ... like any argument)
// and runs its executable — named by the signed bundle, never by the agent — with those
// arguments, no shell, a scrubbed environment, 30 s and 1 MiB of output at most. The result's
// text is the command's stdout (then stderr); a non-zero exit is an isError result.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <map>
#include <string>

#include <boost/json.hpp>

#include "cli.h"
#include "outpost/base/errors.h"
#include "sandbox/sandbox.h"

namespace outpost::cli {
namespace json = boost::json;

namespace {

constexpr size_t kMaxOutput = 1 << 20;
constexpr int kTimeoutMs = 30000;

struct RunResult {
  int status = -1;
  std::string out;
  bool timed_out = false;
};

Result<RunResult> run_tool(const std::string& exe, const std::vector<std::string>& args) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return fail(errno_error("pipe", errno));
  sandbox::SpawnSpec spec;
  spec.argv.push_back(exe);
  spec.argv.insert(spec.argv.end(), args.begin(), args.end());
  OUTPOST_TRY(spec.env, sandbox::scrub_environment({"PATH", "LANG"}, {}));
  spec.stdout_fd = out[1];
  spec.stderr_fd = out[1];
  auto child = sandbox::spawn(spec);
  ::close(out[1]);
  if (!child) {
    ::close(out[0]);
    return fail(child.error());
  }
  RunResult r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  char buf[65536];
  for (;;) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (left <= 0) {
      r.timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    if (r.out.size() < kMaxOutput) r.out.append(buf, std::min(static_cast<size_t>(n), kMaxOutput - r.out.size()));
  }
  ::close(out[0]);
  if (r.timed_out) sandbox::pidfd_signal(child->pidfd.get(), SIGKILL);
  int st = 0;
  ::waitpid(child->pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

json::object reply(const json::value& id, json::object result) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}
json::object error(const json::value& id, int code, std::string message) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", std::move(message)}}}};
}

}  // namespace

int mcp_serve_local(const Args& args) {
  std::map<std::string, std::string> tools;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--tool" && i + 1 < args.size()) {
      const std::string& t = args[++i];
      size_t eq = t.find('=');
      if (eq == std::string::npos || eq == 0 || t.size() <= eq + 1 || t[eq + 1] != '/') {
        throw UsageError("--tool wants NAME=/absolute/path, not \"" + t + "\"");
      }
      tools[t.substr(0, eq)] = t.substr(eq + 1);
    } else {
      throw UsageError("usage: outpost mcp serve-local --tool NAME=/path ...");
    }
  }
  std::ios::sync_with_stdio(false);
  std::string line;
  while (std::getline(std::cin, line)) {
    boost::system::error_code ec;
    json::value v = json::parse(line, ec);
    json::object out;
    if (ec || !v.is_object()) {
      out = error(nullptr, -32700, "Parse error");
    } else {
      const json::object& msg = v.as_object();
      if (!msg.contains("id") || !msg.contains("method")) continue;  // notifications, responses
      const json::value& id = msg.at("id");
      const std::string method = msg.at("method").is_string() ? std::string(msg.at("method").as_string()) : "";
      const json::object* params = msg.contains("params") ? msg.at("params").if_object() : nullptr;
      if (method == "initialize") {
        std::string version = "2025-11-25";
        if (params != nullptr && params->contains("protocolVersion") && params->at("protocolVersion").is_string()) {
          version = std::string(params->at("protocolVersion").as_string());  // we speak what the client asks
        }
        out = reply(id, {{"protocolVersion", version},
                         {"capabilities", {{"tools", json::object{}}}},
                         {"serverInfo", {{"name", "outpost-local-tools"}, {"version", "0.1.0"}}}});
      } else if (method == "ping") {
        out = reply(id, json::object{});
      } else if (method == "tools/list") {
        json::array list;
        for (const auto& [name, exe] : tools) {
          list.push_back(json::object{
              {"name", name},
              {"description", "runs " + exe + " with the given arguments (outpost local command tool)"},
              {"inputSchema",
               {{"type", "object"}, {"properties", {{"args", {{"type", "array"}, {"items", {{"type", "string"}}}}}}}}}});
        }
        out = reply(id, {{"tools", std::move(list)}});
      } else if (method == "tools/call") {
        std::string name = params != nullptr && params->contains("name") && params->at("name").is_string()
                               ? std::string(params->at("name").as_string()) : "";
        auto it = tools.find(name);
        std::vector<std::string> argv;
        bool ok = it != tools.end();
        if (ok && params->contains("arguments") && params->at("arguments").is_object()) {
          const json::object& a = params->at("arguments").as_object();
          if (a.contains("args")) {
            ok = a.at("args").is_array();
            for (const auto& x : ok ? a.at("args").as_array() : json::array{}) {
              if (!x.is_string()) ok = false;
              else argv.emplace_back(x.as_string());
            }
          }
        }
        if (!ok) {
          out = error(id, -32602, "unknown tool or arguments not {\"args\": [strings]}");
        } else {
          auto r = run_tool(it->second, argv);
          std::string text = r ? r->out : r.error().message();
          if (r && r->timed_out) text += "\n[outpost: killed after 30 s]";
          out = reply(id, {{"content", json::array{json::object{{"type", "text"}, {"text", text}}}},
                           {"isError", !r || r->status != 0}});
        }
      } else {
        out = error(id, -32601, "Method not found: " + method);
      }
    }
    std::cout << json::serialize(out) << '\n' << std::flush;
  }
  return kExitOk;
}

}  // namespace outpost::cli
