#include "broker/mcp_session.h"

#include <algorithm>
#include <charconv>
#include <optional>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "credentials/jws.h"
#include "outpost/base/bytes.h"
#include "outpost/base/crypto.h"
#include "outpost/base/time.h"
#include "policy/labels.h"

namespace outpost::broker {

namespace json = boost::json;

namespace {

constexpr int kParseError = -32700;
constexpr int kInvalidRequest = -32600;

void append_line(std::string& out, std::string_view line) {
  out.append(line);
  out.push_back('\n');
}

void append_value(std::string& out, const json::value& v) {
  out += json::serialize(v);
  out.push_back('\n');
}

void append_error(std::string& out, const json::value& id, int code, std::string_view message) {
  json::object err;
  err["code"] = code;
  err["message"] = message;
  json::object msg;
  msg["jsonrpc"] = "2.0";
  msg["id"] = id;
  msg["error"] = std::move(err);
  append_value(out, msg);
}

std::string_view string_at(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || !it->value().is_string()) return {};
  return it->value().get_string();
}

bool is_request(const json::object& o) { return o.contains("method") && o.contains("id"); }

}  // namespace

bool parse_url_destination(std::string_view url, std::string& host, uint16_t& port) {
  size_t sep = url.find("://");
  if (sep == std::string_view::npos || sep == 0) return false;
  std::string scheme(url.substr(0, sep));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  std::string_view rest = url.substr(sep + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);  // userinfo
  std::string_view h = rest, p;
  if (!rest.empty() && rest.front() == '[') {  // [v6]:port
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return false;
    h = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return false;
      p = rest.substr(close + 2);
    }
  } else if (size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    h = rest.substr(0, colon);
    p = rest.substr(colon + 1);
  }
  if (h.empty()) return false;
  unsigned value = 0;
  if (!p.empty()) {
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
    if (ec != std::errc() || end != p.data() + p.size() || value == 0 || value > 65535) return false;
  } else if (scheme == "https" || scheme == "wss") {
    value = 443;
  } else if (scheme == "http" || scheme == "ws") {
    value = 80;
  } else if (scheme == "ssh") {
    value = 22;
  }
  host.assign(h);
  std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
  port = static_cast<uint16_t>(value);
  return true;
}

McpSession::McpSession(Options options, std::function<PolicyView()> policy, DecisionSink* sink,
                       CredentialMinter minter, std::function<int64_t()> clock)
    : options_(std::move(options)),
      policy_(std::move(policy)),
      sink_(sink),
      minter_(std::move(minter)),
      clock_(clock ? std::move(clock) : std::function<int64_t()>(unix_now)),
      state_(options_.state ? options_.state
                            : std::make_shared<SessionState>(SessionState::Limits{.max_history = options_.max_history})) {}

void McpSession::oversized_from_client(std::string& to_client) {
  ++stats_.parse_errors;
  append_error(to_client, nullptr, kParseError, "Parse error: line exceeds the broker's size limit");
}

void McpSession::from_client(std::string_view line, std::string& to_server, std::string& to_client) {
  boost::system::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec) {
    ++stats_.parse_errors;
    append_error(to_client, nullptr, kParseError, "Parse error: " + ec.message());
    return;
  }
  if (v.is_array()) {
    // Refused whole (see the header): one error per element that expects an answer.
    json::array errors;
    for (const auto& e : v.as_array()) {
      if (e.is_object() && e.as_object().contains("id") && e.as_object().contains("method")) {
        json::object err{{"code", kInvalidRequest}, {"message", "JSON-RPC batches are not supported"}};
        errors.push_back(json::object{{"jsonrpc", "2.0"}, {"id", e.as_object().at("id")}, {"error", err}});
      }
    }
    if (v.as_array().empty() || errors.empty()) {
      append_error(to_client, nullptr, kInvalidRequest, "JSON-RPC batches are not supported");
    } else {
      append_value(to_client, errors);
    }
    return;
  }
  if (!v.is_object()) {
    append_error(to_client, nullptr, kInvalidRequest, "Invalid Request: not a JSON-RPC message");
    return;
  }
  const json::object& msg = v.as_object();
  auto id = msg.find("id");
  const bool has_method = msg.contains("method");
  if (!has_method && !msg.contains("result") && !msg.contains("error")) {
    append_error(to_client, id != msg.end() ? id->value() : json::value(nullptr), kInvalidRequest,
                 "Invalid Request: neither a request, a notification nor a response");
    return;
  }
  if (is_request(msg)) {
    std::string_view method = string_at(msg, "method");
    if (method == "tools/call") {
      handle_call(msg, line, to_server, to_client);
      return;
    }
    if (method == "tools/list") pending_lists_.insert(json::serialize(id->value()));
  }
  // Forwarded as sent, behind any call waiting for its commit.
  append_line(holding() ? held_ : to_server, line);
}

void McpSession::release(std::string& to_server, std::string& to_client) {
  if (!holding()) return;
  Result<void> committed = sink_->commit(held_ticket_);
  held_ticket_ = 0;
  if (committed) {
    to_server += held_;
  } else {
    // Nothing goes out unrecorded: each held call is refused, the other lines pass.
    size_t at = 0;
    for (HeldCall& c : held_calls_) {
      to_server.append(held_, at, c.begin - at);
      at = c.end;
      --stats_.calls_allowed;
      c.rec.allow = false;
      c.rec.reason = "the decision could not be recorded: " + committed.error().message();
      deny(c.id, c.rec, to_client);
    }
    to_server.append(held_, at, std::string::npos);
  }
  held_.clear();
  held_calls_.clear();
}

void McpSession::handle_call(const json::object& msg, std::string_view line, std::string& to_server,
                             std::string& to_client) {
  const json::value& id = msg.at("id");
  const json::value* params = msg.if_contains("params");
  const json::object* p = params != nullptr ? params->if_object() : nullptr;
  std::string_view tool = p != nullptr ? string_at(*p, "name") : std::string_view();
  const json::value* args = p != nullptr ? p->if_contains("arguments") : nullptr;
  if (tool.empty() || (args != nullptr && !args->is_object())) {
    append_error(to_client, id, -32602, "Invalid params: tools/call needs a tool name and an arguments object");
    return;
  }

  const int64_t now = clock_();
  PolicyView view = policy_();
  policy::Request req;
  req.agent = options_.agent;
  req.task = options_.task;
  req.server = options_.server;
  req.tool = tool;
  req.args = args;
  req.time = now;
  uint8_t meta_label = 0;
  std::string host;
  if (const json::object* meta = p->if_contains("_meta") ? p->at("_meta").if_object() : nullptr) {
    if (auto label = policy::sensitivity_from_name(string_at(*meta, "outpost/sensitivity"))) meta_label = *label;
  }
  if (args != nullptr) {
    const json::object& a = args->as_object();
    if (auto path = string_at(a, "path"); !path.empty()) req.path = path;
    if (auto url = string_at(a, "url"); !url.empty()) {
      uint16_t port = 0;
      if (parse_url_destination(url, host, port)) {
        req.host = host;
        req.port = port;
      }
    }
  }

  DecisionRecord rec;
  if (auto h = credentials::args_sha256(args != nullptr ? *args : json::value(json::object()))) rec.args_sha256 = *h;

  // From here to remembering the call, no other connection of this agent decides: two of them
  // must not both pass a window limit with one call to spare, nor one go out on an approval
  // whose call then fails. The lock is released as soon as the call is known to be denied.
  SessionState::Locked history = state_->lock();
  req.history = history.history();
  // The data the call can carry: whatever the agent already received, or more if it labels it
  // so in _meta (it can raise the label, never lower it).
  req.sensitivity = std::max(history.max_sensitivity(), meta_label);
  policy::Decision d;
  if (view.engine) {
    d = view.engine->decide(req, view.mode);
  } else {
    d.verdict = policy::Verdict::bundle_not_in_force;
  }
  if (!d.allow) {
    history.unlock();
    req.history = {};
  }

  rec.time = now;
  rec.agent = options_.agent;
  rec.task = options_.task;
  rec.server = options_.server;
  rec.tool = std::string(tool);
  rec.allow = d.allow;
  rec.verdict = std::string(policy::verdict_name(d.verdict));
  rec.bundle_version = d.bundle_version;
  if (view.engine) {
    for (uint8_t i = 0; i < d.rule_count; ++i) rec.rules.push_back(view.engine->rule_id(d, d.rules[i]));
    for (uint8_t i = 0; i < d.shadow_count; ++i) rec.shadow.push_back(view.engine->rule_id(d, d.shadow[i]));
    rec.reason = view.engine->explain(d, req);
  } else {
    rec.reason = "no bundle is in force on this node";
  }

  if (!d.allow) {
    deny(id, rec, to_client);
    return;
  }

  const int64_t ttl = credentials::credential_ttl(d.credential_ttl, now, view.not_after);
  std::optional<std::string> token;
  if (ttl > 0 && minter_) {
    auto minted = minter_(rec, ttl);
    if (!minted) {
      // Fail closed: a call whose rule wants a credential does not go out without one.
      history.unlock();
      rec.allow = false;
      rec.reason = "could not mint the call's credential: " + minted.error().message();
      deny(id, rec, to_client);
      return;
    }
    token = std::move(*minted);
    rec.credential = true;
  }
  uint64_t ticket = 0;
  if (sink_ != nullptr) {
    auto staged = sink_->stage(rec);
    if (!staged) {
      history.unlock();
      rec.allow = false;
      rec.reason = "the decision could not be recorded: " + staged.error().message();
      deny(id, rec, to_client);
      return;
    }
    ticket = *staged;
  }
  ++stats_.calls_allowed;
  // Remembered now, before the record is durable: should the commit fail, the call is refused
  // but still counts in the agent's history (windows and taint only grow stricter).
  history.remember(options_.server, tool, now, view.engine->output_sensitivity(options_.server, tool), args);
  history.unlock();
  std::string& out = ticket != 0 || holding() ? held_ : to_server;
  const size_t begin = out.size();
  if (!token) {
    append_line(out, line);  // forwarded as sent
  } else {
    json::object copy = msg;
    json::value& meta = copy["params"].as_object()["_meta"];
    if (!meta.is_object()) meta = json::object();
    meta.as_object()["outpost/credential"] = *token;
    append_value(out, copy);
  }
  if (ticket != 0) {
    held_calls_.push_back(HeldCall{begin, held_.size(), id, std::move(rec)});
    held_ticket_ = std::max(held_ticket_, ticket);
  }
}

void McpSession::deny(const json::value& id, DecisionRecord& rec, std::string& to_client) {
  ++stats_.calls_denied;
  // A denial that cannot be recorded is still a denial; the sink reports its own failure.
  // Over the agent's deny budget it is counted into a coalesced entry instead (the answer to
  // the client is the same either way).
  if (sink_ != nullptr) {
    if (state_->admit_deny_record()) {
      (void)sink_->record(rec);
    } else {
      state_->coalesce(rec);
    }
  }
  json::object text{{"type", "text"}, {"text", "outpost denied this call: " + rec.reason}};
  json::object result{{"content", json::array{text}}, {"isError", true}};
  append_value(to_client, json::object{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
}

void McpSession::from_server(std::string_view line, std::string& to_client) {
  if (pending_lists_.empty()) {
    append_line(to_client, line);  // nothing to look at: pass the bytes through unparsed
    return;
  }
  boost::system::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec || !v.is_object()) {
    if (ec) ++stats_.server_parse_errors;
    append_line(to_client, line);  // not ours to judge; the client reports it
    return;
  }
  json::object& msg = v.as_object();
  auto id = msg.find("id");
  if (id == msg.end() || msg.contains("method")) {
    append_line(to_client, line);
    return;
  }
  auto pending = pending_lists_.find(json::serialize(id->value()));
  if (pending == pending_lists_.end()) {
    append_line(to_client, line);
    return;
  }
  pending_lists_.erase(pending);
  json::value* result = msg.if_contains("result");
  json::value* tools = result != nullptr && result->is_object() ? result->as_object().if_contains("tools") : nullptr;
  if (tools == nullptr || !tools->is_array()) {
    append_line(to_client, line);
    return;
  }
  PolicyView view = policy_();
  json::array kept;
  for (auto& t : tools->as_array()) {
    const json::object* o = t.if_object();
    std::string_view name = o != nullptr ? string_at(*o, "name") : std::string_view();
    if (view.engine && view.engine->could_allow(options_.agent, options_.server, name, view.mode)) {
      kept.push_back(std::move(t));
    }
  }
  ++stats_.lists_filtered;
  *tools = std::move(kept);
  append_value(to_client, v);
}

}  // namespace outpost::broker
