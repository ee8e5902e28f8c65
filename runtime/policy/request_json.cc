#include "request_json.h"

#include <boost/json.hpp>

#include <algorithm>
#include <span>

#include "outpost/base/errors.h"
#include "outpost/base/time.h"
#include "policy/labels.h"

namespace outpost::policy {
namespace {

namespace json = boost::json;

Result<std::string> text(const json::object& o, const char* key, bool required) {
  auto it = o.find(key);
  if (it == o.end()) {
    if (required) return fail(errc::invalid_argument, std::string("request lacks \"") + key + "\"");
    return std::string();
  }
  if (!it->value().is_string()) return fail(errc::invalid_argument, std::string("request: \"") + key + "\" is not a string");
  return std::string(it->value().as_string());
}

Result<int64_t> parse_time(const json::value& v) {
  if (v.is_int64()) return v.as_int64();
  if (v.is_uint64() && v.as_uint64() <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(v.as_uint64());
  if (v.is_string()) {
    if (auto t = parse_rfc3339_utc(v.as_string())) return *t;
  }
  return fail(errc::invalid_argument, "request: a time must be RFC 3339 UTC (2026-11-28T10:00:00Z) or Unix seconds");
}

Result<void> parse_history(const json::object& o, int64_t now, std::deque<std::string>& strings,
                           std::deque<json::value>& values, std::vector<SessionEvent>& history) {
  auto it = o.find("history");
  if (it == o.end()) return {};
  if (!it->value().is_array()) return fail(errc::invalid_argument, "request: \"history\" is not an array");
  for (const auto& e : it->value().as_array()) {
    if (!e.is_object()) return fail(errc::invalid_argument, "request: a history entry is not an object");
    const json::object& eo = e.as_object();
    SessionEvent ev;
    OUTPOST_TRY(std::string es, text(eo, "server", true));
    OUTPOST_TRY(std::string et, text(eo, "tool", true));
    ev.server = strings.emplace_back(std::move(es));
    ev.tool = strings.emplace_back(std::move(et));
    ev.time = now;
    if (auto t = eo.find("time"); t != eo.end()) {
      OUTPOST_TRY(ev.time, parse_time(t->value()));
    }
    if (auto s = eo.find("sensitivity"); s != eo.end()) {
      OUTPOST_TRY(ev.sensitivity, parse_sensitivity(s->value()));
    }
    // What outpostd would have kept of them (history_numbers), so that the CLI decides as it does.
    if (auto a = eo.find("arguments"); a != eo.end()) {
      json::value kept = history_numbers(a->value(), ev.args_incomplete);
      if (!kept.is_null()) ev.args = &values.emplace_back(std::move(kept));
    }
    history.push_back(ev);
  }
  return {};
}

Result<void> check_fields(const json::object& o, std::span<const std::string_view> known) {
  for (const auto& kv : o) {
    if (std::find(known.begin(), known.end(), kv.key()) == known.end()) {
      return fail(errc::invalid_argument, "request: unknown field \"" + std::string(kv.key()) + "\"");
    }
  }
  return {};
}

}  // namespace

Result<uint8_t> parse_sensitivity(const json::value& v) {
  if (v.is_string()) {
    if (auto s = sensitivity_from_name(v.as_string())) return *s;
  } else if (v.is_int64() && v.as_int64() >= 0 && v.as_int64() <= 255) {
    return static_cast<uint8_t>(v.as_int64());
  } else if (v.is_uint64() && v.as_uint64() <= 255) {
    return static_cast<uint8_t>(v.as_uint64());
  }
  return fail(errc::invalid_argument, "a sensitivity must be public, internal, confidential, secret or 0..255");
}

Result<std::unique_ptr<OwnedRequest>> OwnedRequest::parse(const json::value& v, int64_t now) {
  if (!v.is_object()) return fail(errc::invalid_argument, "a request must be a JSON object");
  const json::object& o = v.as_object();
  static constexpr std::string_view kKnown[] = {"agent", "task", "server", "tool", "arguments", "sensitivity",
                                                "destination", "time", "history"};
  OUTPOST_TRY_VOID(check_fields(o, kKnown));
  auto r = std::make_unique<OwnedRequest>();
  auto keep = [&](std::string s) -> std::string_view { return r->strings_.emplace_back(std::move(s)); };
  OUTPOST_TRY(std::string agent, text(o, "agent", true));
  OUTPOST_TRY(std::string task, text(o, "task", false));
  OUTPOST_TRY(std::string server, text(o, "server", true));
  OUTPOST_TRY(std::string tool, text(o, "tool", true));
  Request& q = r->request_;
  q.agent = keep(agent);
  q.task = keep(task);
  q.server = keep(server);
  q.tool = keep(tool);
  q.time = now;
  if (auto it = o.find("arguments"); it != o.end()) q.args = &r->values_.emplace_back(it->value());
  if (auto it = o.find("sensitivity"); it != o.end()) {
    OUTPOST_TRY(q.sensitivity, parse_sensitivity(it->value()));
  }
  if (auto it = o.find("time"); it != o.end()) {
    OUTPOST_TRY(q.time, parse_time(it->value()));
  }
  if (auto it = o.find("destination"); it != o.end()) {
    if (!it->value().is_object()) return fail(errc::invalid_argument, "request: \"destination\" is not an object");
    const json::object& d = it->value().as_object();
    OUTPOST_TRY(std::string host, text(d, "host", true));
    OUTPOST_TRY(std::string path, text(d, "path", false));
    q.host = keep(host);
    q.path = keep(path);
    if (auto p = d.find("port"); p != d.end()) {
      if (!p->value().is_int64() || p->value().as_int64() < 0 || p->value().as_int64() > 65535) {
        return fail(errc::invalid_argument, "request: destination port must be 0..65535");
      }
      q.port = static_cast<uint16_t>(p->value().as_int64());
    }
  }
  OUTPOST_TRY_VOID(parse_history(o, q.time, r->strings_, r->values_, r->history_));
  q.history = r->history_;
  return r;
}

Result<std::unique_ptr<OwnedEgressRequest>> OwnedEgressRequest::parse(const json::value& v, int64_t now) {
  if (!v.is_object()) return fail(errc::invalid_argument, "an egress request must be a JSON object");
  const json::object& o = v.as_object();
  static constexpr std::string_view kKnown[] = {"agent", "task", "host", "port", "address", "own_address",
                                                "sensitivity", "time", "history"};
  OUTPOST_TRY_VOID(check_fields(o, kKnown));
  auto r = std::make_unique<OwnedEgressRequest>();
  auto keep = [&](std::string s) -> std::string_view { return r->strings_.emplace_back(std::move(s)); };
  EgressRequest& q = r->request_;
  OUTPOST_TRY(std::string agent, text(o, "agent", true));
  OUTPOST_TRY(std::string task, text(o, "task", false));
  OUTPOST_TRY(std::string host, text(o, "host", true));
  OUTPOST_TRY(std::string address, text(o, "address", false));
  q.agent = keep(agent);
  q.task = keep(task);
  q.host = keep(host);
  q.address = keep(address);
  q.time = now;
  auto p = o.find("port");
  if (p == o.end() || !p->value().is_int64() || p->value().as_int64() < 1 || p->value().as_int64() > 65535) {
    return fail(errc::invalid_argument, "egress request: \"port\" must be 1..65535");
  }
  q.port = static_cast<uint16_t>(p->value().as_int64());
  if (auto it = o.find("own_address"); it != o.end()) {
    if (!it->value().is_bool()) return fail(errc::invalid_argument, "egress request: \"own_address\" is not true or false");
    q.own_address = it->value().as_bool();
  }
  if (auto it = o.find("sensitivity"); it != o.end()) {
    OUTPOST_TRY(q.sensitivity, parse_sensitivity(it->value()));
  }
  if (auto it = o.find("time"); it != o.end()) {
    OUTPOST_TRY(q.time, parse_time(it->value()));
  }
  OUTPOST_TRY_VOID(parse_history(o, q.time, r->strings_, r->values_, r->history_));
  q.history = r->history_;
  return r;
}

}  // namespace outpost::policy
