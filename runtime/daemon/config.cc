#include "daemon/config.h"

#include <yaml-cpp/yaml.h>

#include <set>

#include "daemon/metrics_http.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "upstream/streamable_http.h"

namespace outpost::daemon {
namespace fs = std::filesystem;

namespace {

// Strict reading of one YAML document: every error names "SOURCE:LINE: field.path".
class Reader {
 public:
  explicit Reader(std::string_view source) : source_(source) {}

  Error bad(const YAML::Node& n, const std::string& what) const {
    return Error(make_error_code(errc::invalid_argument),
                 source_ + ":" + std::to_string(n.Mark().line + 1) + ": " + what);
  }
  Result<void> fields(const YAML::Node& map, const std::string& path, const std::set<std::string>& allowed) const {
    if (!map.IsMap()) return fail(bad(map, path + " must be a mapping"));
    for (const auto& kv : map) {
      if (!kv.first.IsScalar()) return fail(bad(kv.first, path + " has a key that is not a string"));
      if (!allowed.count(kv.first.Scalar())) return fail(bad(kv.first, "unknown field " + path + "." + kv.first.Scalar()));
    }
    return ok();
  }
  Result<std::string> text(const YAML::Node& n, const std::string& path) const {
    if (!n.IsScalar()) return fail(bad(n, path + " must be a string"));
    return n.Scalar();
  }
  template <class T>
  Result<T> number(const YAML::Node& n, const std::string& path) const {
    try {
      if (!n.IsScalar()) throw YAML::Exception(n.Mark(), "");
      return n.as<T>();
    } catch (const YAML::Exception&) {
      return fail(bad(n, path + " must be a non-negative integer"));
    }
  }
  Result<std::vector<std::string>> texts(const YAML::Node& n, const std::string& path) const {
    if (!n.IsSequence()) return fail(bad(n, path + " must be a list"));
    std::vector<std::string> out;
    for (size_t i = 0; i < n.size(); ++i) {
      OUTPOST_TRY(std::string s, text(n[i], path + "[" + std::to_string(i) + "]"));
      out.push_back(std::move(s));
    }
    return out;
  }
  Result<std::vector<std::pair<std::string, std::string>>> env_map(const YAML::Node& n, const std::string& path) const {
    if (!n.IsMap()) return fail(bad(n, path + " must be a mapping of NAME: value"));
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& kv : n) {
      OUTPOST_TRY(std::string k, text(kv.first, path));
      OUTPOST_TRY(std::string v, text(kv.second, path + "." + k));
      out.emplace_back(std::move(k), std::move(v));
    }
    return out;
  }

 private:
  std::string source_;
};

Result<YAML::Node> load_yaml(std::string_view yaml, std::string_view source) {
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) return fail(make_error_code(errc::invalid_argument), std::string(source) + ": not a YAML mapping");
    return root;
  } catch (const YAML::Exception& e) {
    return fail(make_error_code(errc::invalid_argument),
                std::string(source) + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

fs::path resolve(const fs::path& base, const std::string& p) {
  fs::path path(p);
  return (path.is_absolute() ? path : base / path).lexically_normal();
}

}  // namespace

Result<DaemonConfig> parse_daemon_config(std::string_view yaml, std::string_view source) {
  OUTPOST_TRY(YAML::Node root, load_yaml(yaml, source));
  Reader r(source);
  DaemonConfig c;
  OUTPOST_TRY_VOID(r.fields(root, "outpostd", {"board", "state_dir", "tcti", "socket", "inbox", "api", "limits", "sandbox",
                                               "inbox_poll_ms", "life_check_s", "audit", "hub", "egress", "metrics"}));
  if (YAML::Node m = root["metrics"]) {
    OUTPOST_TRY_VOID(r.fields(m, "metrics", {"listen"}));
    if (m["listen"]) {
      OUTPOST_TRY(c.metrics_listen, r.text(m["listen"], "metrics.listen"));
      // Metrics name agents and rules: a loopback address only (a scraper on the node, or an
      // SSH tunnel); anything wider is an operator's reverse proxy's job, with its own auth.
      const auto endpoint = loopback_endpoint(c.metrics_listen);
      if (!endpoint || endpoint->port() == 0) {
        return fail(r.bad(m["listen"], "metrics.listen must be a loopback address and port, as 127.0.0.1:9464 or [::1]:9464"));
      }
    }
  }
  if (root["board"]) { OUTPOST_TRY(c.board, r.text(root["board"], "board")); }
  if (root["state_dir"]) { OUTPOST_TRY(std::string s, r.text(root["state_dir"], "state_dir")); c.state_dir = s; }
  if (root["tcti"]) { OUTPOST_TRY(c.tcti, r.text(root["tcti"], "tcti")); }
  if (root["socket"]) { OUTPOST_TRY(std::string s, r.text(root["socket"], "socket")); c.socket = s; }
  if (root["inbox"]) { OUTPOST_TRY(std::string s, r.text(root["inbox"], "inbox")); c.inbox = s; }
  if (root["inbox_poll_ms"]) { OUTPOST_TRY(c.inbox_poll_ms, r.number<uint32_t>(root["inbox_poll_ms"], "inbox_poll_ms")); }
  if (root["life_check_s"]) { OUTPOST_TRY(c.life_check_s, r.number<uint32_t>(root["life_check_s"], "life_check_s")); }
  if (YAML::Node audit = root["audit"]) {
    OUTPOST_TRY_VOID(r.fields(audit, "audit", {"durable_decisions", "deny_records_per_s", "deny_records_burst",
                                               "agent_pause_percent"}));
    if (audit["deny_records_per_s"]) { OUTPOST_TRY(c.deny_records_per_s, r.number<uint32_t>(audit["deny_records_per_s"], "audit.deny_records_per_s")); }
    if (audit["deny_records_burst"]) { OUTPOST_TRY(c.deny_records_burst, r.number<uint32_t>(audit["deny_records_burst"], "audit.deny_records_burst")); }
    if (audit["agent_pause_percent"]) {
      OUTPOST_TRY(c.audit_agent_pause_percent, r.number<uint32_t>(audit["agent_pause_percent"], "audit.agent_pause_percent"));
      if (c.audit_agent_pause_percent == 0 || c.audit_agent_pause_percent > 100) {
        return fail(r.bad(audit["agent_pause_percent"], "audit.agent_pause_percent must be 1 to 100"));
      }
    }
    if (audit["durable_decisions"]) {
      OUTPOST_TRY(std::string d, r.text(audit["durable_decisions"], "audit.durable_decisions"));
      if (d != "true" && d != "false") return fail(r.bad(audit["durable_decisions"], "audit.durable_decisions must be true or false"));
      c.durable_decisions = d == "true";
    }
  }
  if (YAML::Node h = root["hub"]) {
    OUTPOST_TRY_VOID(r.fields(h, "hub", {"url", "pin_sha256", "ca", "batch_records", "batch_bytes", "bandwidth_bytes_per_s",
                                         "backoff_initial_ms", "backoff_max_ms", "idle_poll_ms", "bundle_wait_s", "attest_interval_s"}));
    auto& hub = c.hub;
    if (!h["url"]) return fail(r.bad(h, "hub.url is required"));
    OUTPOST_TRY(hub.url, r.text(h["url"], "hub.url"));
    if (h["pin_sha256"]) { OUTPOST_TRY(hub.pin_sha256, r.text(h["pin_sha256"], "hub.pin_sha256")); }
    if (h["ca"]) { OUTPOST_TRY(std::string ca, r.text(h["ca"], "hub.ca")); hub.ca = ca; }
    if (hub.pin_sha256.empty() && hub.ca.empty()) return fail(r.bad(h, "hub: pin_sha256 or ca is required (the hub must be authenticated)"));
    if (h["batch_records"]) { OUTPOST_TRY(hub.batch_records, r.number<uint32_t>(h["batch_records"], "hub.batch_records")); }
    if (h["batch_bytes"]) { OUTPOST_TRY(hub.batch_bytes, r.number<uint64_t>(h["batch_bytes"], "hub.batch_bytes")); }
    if (h["bandwidth_bytes_per_s"]) { OUTPOST_TRY(hub.bandwidth_bytes_per_s, r.number<uint64_t>(h["bandwidth_bytes_per_s"], "hub.bandwidth_bytes_per_s")); }
    if (h["backoff_initial_ms"]) { OUTPOST_TRY(hub.backoff_initial_ms, r.number<uint32_t>(h["backoff_initial_ms"], "hub.backoff_initial_ms")); }
    if (h["backoff_max_ms"]) { OUTPOST_TRY(hub.backoff_max_ms, r.number<uint32_t>(h["backoff_max_ms"], "hub.backoff_max_ms")); }
    if (h["idle_poll_ms"]) { OUTPOST_TRY(hub.idle_poll_ms, r.number<uint32_t>(h["idle_poll_ms"], "hub.idle_poll_ms")); }
    if (h["bundle_wait_s"]) { OUTPOST_TRY(hub.bundle_wait_s, r.number<uint32_t>(h["bundle_wait_s"], "hub.bundle_wait_s")); }
    if (h["attest_interval_s"]) {
      OUTPOST_TRY(hub.attest_interval_s, r.number<uint32_t>(h["attest_interval_s"], "hub.attest_interval_s"));
    }
    if (hub.batch_records == 0 || hub.batch_bytes == 0 || hub.backoff_initial_ms == 0 || hub.backoff_max_ms < hub.backoff_initial_ms) {
      return fail(r.bad(h, "hub: batch sizes and backoff must be positive, backoff_max_ms at least backoff_initial_ms"));
    }
  }
  if (YAML::Node api = root["api"]) {
    OUTPOST_TRY_VOID(r.fields(api, "api", {"allow_uids", "allow_gids", "max_connections", "max_connections_per_uid",
                                           "max_connections_per_agent", "request_timeout_ms"}));
    if (api["max_connections"]) { OUTPOST_TRY(c.api_max_connections, r.number<uint32_t>(api["max_connections"], "api.max_connections")); }
    if (api["max_connections_per_uid"]) {
      OUTPOST_TRY(c.api_max_connections_per_uid, r.number<uint32_t>(api["max_connections_per_uid"], "api.max_connections_per_uid"));
    }
    if (api["max_connections_per_agent"]) {
      OUTPOST_TRY(c.api_max_connections_per_agent, r.number<uint32_t>(api["max_connections_per_agent"], "api.max_connections_per_agent"));
    }
    if (api["request_timeout_ms"]) { OUTPOST_TRY(c.api_request_timeout_ms, r.number<uint32_t>(api["request_timeout_ms"], "api.request_timeout_ms")); }
    if (c.api_max_connections == 0 || c.api_max_connections_per_uid == 0 || c.api_max_connections_per_agent == 0 ||
        c.api_request_timeout_ms == 0) {
      return fail(r.bad(api, "api: connection limits and request_timeout_ms must be positive"));
    }
    auto ids = [&](const char* key, std::vector<uint32_t>& out) -> Result<void> {
      if (!api[key]) return ok();
      if (!api[key].IsSequence()) return fail(r.bad(api[key], std::string("api.") + key + " must be a list"));
      out.clear();
      for (const auto& n : api[key]) {
        OUTPOST_TRY(uint32_t id, r.number<uint32_t>(n, std::string("api.") + key));
        out.push_back(id);
      }
      return ok();
    };
    OUTPOST_TRY_VOID(ids("allow_uids", c.allow_uids));
    OUTPOST_TRY_VOID(ids("allow_gids", c.allow_gids));
  }
  if (YAML::Node l = root["limits"]) {
    OUTPOST_TRY_VOID(r.fields(l, "limits", {"max_agents", "max_binary_bytes", "max_line_bytes", "max_log_bytes"}));
    if (l["max_agents"]) { OUTPOST_TRY(c.max_agents, r.number<uint32_t>(l["max_agents"], "limits.max_agents")); }
    if (l["max_binary_bytes"]) { OUTPOST_TRY(c.max_binary_bytes, r.number<uint64_t>(l["max_binary_bytes"], "limits.max_binary_bytes")); }
    if (l["max_line_bytes"]) { OUTPOST_TRY(c.max_line_bytes, r.number<uint64_t>(l["max_line_bytes"], "limits.max_line_bytes")); }
    if (l["max_log_bytes"]) { OUTPOST_TRY(c.max_log_bytes, r.number<uint64_t>(l["max_log_bytes"], "limits.max_log_bytes")); }
    if (c.max_line_bytes < (1u << 20)) return fail(r.bad(l, "limits.max_line_bytes must be at least 1 MiB"));
  }
  if (YAML::Node e = root["egress"]) {
    OUTPOST_TRY_VOID(r.fields(e, "egress", {"port", "mcp_port", "idle_timeout_s", "max_connections"}));
    if (e["mcp_port"]) {
      OUTPOST_TRY(uint32_t port, r.number<uint32_t>(e["mcp_port"], "egress.mcp_port"));
      if (port == 0 || port > 65535) return fail(r.bad(e["mcp_port"], "egress.mcp_port must be 1-65535"));
      c.mcp_port = static_cast<uint16_t>(port);
    }
    if (e["port"]) {
      OUTPOST_TRY(uint32_t port, r.number<uint32_t>(e["port"], "egress.port"));
      if (port == 0 || port > 65535) return fail(r.bad(e["port"], "egress.port must be 1-65535"));
      c.egress_port = static_cast<uint16_t>(port);
    }
    if (e["idle_timeout_s"]) { OUTPOST_TRY(c.egress_idle_timeout_s, r.number<uint32_t>(e["idle_timeout_s"], "egress.idle_timeout_s")); }
    if (e["max_connections"]) { OUTPOST_TRY(c.egress_max_connections, r.number<uint32_t>(e["max_connections"], "egress.max_connections")); }
    if (c.mcp_port == c.egress_port) return fail(r.bad(e, "egress: port and mcp_port must differ"));
    if (c.egress_idle_timeout_s == 0 || c.egress_max_connections == 0) {
      return fail(r.bad(e, "egress: idle_timeout_s and max_connections must be positive"));
    }
  }
  if (YAML::Node s = root["sandbox"]) {
    OUTPOST_TRY_VOID(r.fields(s, "sandbox", {"system_read_only", "agent_uid_base", "agent_uid_count", "agent_max_processes"}));
    if (s["agent_max_processes"]) {
      OUTPOST_TRY(c.agent_max_processes, r.number<uint32_t>(s["agent_max_processes"], "sandbox.agent_max_processes"));
      if (c.agent_max_processes == 0) return fail(r.bad(s["agent_max_processes"], "sandbox.agent_max_processes must be positive"));
    }
    if (s["agent_uid_base"]) { OUTPOST_TRY(c.agent_uid_base, r.number<uint32_t>(s["agent_uid_base"], "sandbox.agent_uid_base")); }
    if (s["agent_uid_count"]) { OUTPOST_TRY(c.agent_uid_count, r.number<uint32_t>(s["agent_uid_count"], "sandbox.agent_uid_count")); }
    if (c.agent_uid_base < 1000 || c.agent_uid_count == 0 || uint64_t{c.agent_uid_base} + c.agent_uid_count > 0x80000000ull) {
      return fail(r.bad(s, "sandbox: agent_uid_base must be at least 1000 and the range must end at 2147483648 or below"));
    }
    if (s["system_read_only"]) {
      OUTPOST_TRY(auto paths, r.texts(s["system_read_only"], "sandbox.system_read_only"));
      c.system_read_only.assign(paths.begin(), paths.end());
      for (const auto& p : c.system_read_only) {
        if (!p.is_absolute()) return fail(r.bad(s, "sandbox.system_read_only: " + p.string() + " is not absolute"));
      }
    }
  }
  return c;
}

Result<DaemonConfig> load_daemon_config(const fs::path& file) {
  OUTPOST_TRY(std::string text, read_text_file(file, 1 << 20));
  OUTPOST_TRY(DaemonConfig c, parse_daemon_config(text, file.string()));
  std::error_code ec;
  c.source_file = fs::canonical(file, ec);
  if (ec) c.source_file = fs::absolute(file);
  c.source_text = std::move(text);
  return c;
}

Result<AgentManifest> parse_manifest(std::string_view yaml, std::string_view source, const fs::path& base_dir) {
  OUTPOST_TRY(YAML::Node root, load_yaml(yaml, source));
  Reader r(source);
  AgentManifest m;
  m.source = std::string(yaml);
  m.base_dir = base_dir;
  OUTPOST_TRY_VOID(r.fields(root, "agent", {"name", "command", "args", "binary", "workdir", "read_only", "env_allow", "env",
                                            "task", "restart", "mcp_servers"}));
  if (!root["name"]) return fail(r.bad(root, "missing field agent.name"));
  OUTPOST_TRY(m.name, r.text(root["name"], "name"));
  if (!root["command"]) return fail(r.bad(root, "missing field agent.command"));
  OUTPOST_TRY(std::string command, r.text(root["command"], "command"));
  m.command = resolve(base_dir, command);
  if (root["args"]) { OUTPOST_TRY(m.args, r.texts(root["args"], "args")); }
  if (root["binary"]) { OUTPOST_TRY(std::string b, r.text(root["binary"], "binary")); m.binary = resolve(base_dir, b); }
  else m.binary = m.command;
  if (root["workdir"]) { OUTPOST_TRY(std::string w, r.text(root["workdir"], "workdir")); m.workdir = resolve(base_dir, w); }
  if (root["read_only"]) {
    OUTPOST_TRY(auto ro, r.texts(root["read_only"], "read_only"));
    for (const auto& p : ro) m.read_only.push_back(resolve(base_dir, p));
  }
  if (root["env_allow"]) { OUTPOST_TRY(m.env_allow, r.texts(root["env_allow"], "env_allow")); }
  if (root["env"]) { OUTPOST_TRY(m.env, r.env_map(root["env"], "env")); }
  if (root["task"]) { OUTPOST_TRY(m.task, r.text(root["task"], "task")); }
  if (root["restart"]) {
    OUTPOST_TRY(std::string s, r.text(root["restart"], "restart"));
    if (s == "never") m.restart = RestartPolicy::never;
    else if (s == "on-failure") m.restart = RestartPolicy::on_failure;
    else if (s == "always") m.restart = RestartPolicy::always;
    else return fail(r.bad(root["restart"], "restart must be never, on-failure or always"));
  }
  if (YAML::Node servers = root["mcp_servers"]) {
    if (!servers.IsMap()) return fail(r.bad(servers, "mcp_servers must be a mapping of NAME: {command, args, ...}"));
    for (const auto& kv : servers) {
      McpServerSpec s;
      OUTPOST_TRY(s.name, r.text(kv.first, "mcp_servers"));
      const std::string path = "mcp_servers." + s.name;
      const YAML::Node& n = kv.second;
      OUTPOST_TRY_VOID(r.fields(n, path, {"command", "args", "env_allow", "env", "secrets", "cwd", "local", "url", "ca", "auth",
                                              "credential_header"}));
      if (n["local"]) {
        OUTPOST_TRY(std::string l, r.text(n["local"], path + ".local"));
        if (l != "true" && l != "false") return fail(r.bad(n["local"], path + ".local must be true or false"));
        s.local = l == "true";
      }
      if (static_cast<int>(s.local) + static_cast<int>(static_cast<bool>(n["command"])) + static_cast<int>(static_cast<bool>(n["url"])) != 1) {
        return fail(r.bad(n, path + " needs one of a command, local: true or a url"));
      }
      if (n["url"]) {
        for (const char* k : {"args", "env_allow", "env", "secrets", "cwd"}) {
          if (n[k]) return fail(r.bad(n[k], path + "." + k + " is for a server outpostd starts, not a url"));
        }
        OUTPOST_TRY(s.url, r.text(n["url"], path + ".url"));
        if (auto u = upstream::parse_upstream_url(s.url); !u) return fail(r.bad(n["url"], path + ".url: " + u.error().message()));
        if (n["ca"]) { OUTPOST_TRY(std::string c, r.text(n["ca"], path + ".ca")); s.ca = resolve(base_dir, c); }
        if (const YAML::Node& a = n["auth"]) {
          OUTPOST_TRY_VOID(r.fields(a, path + ".auth", {"type", "secret", "issuer", "client_id", "scope", "grant"}));
          if (!a["type"]) return fail(r.bad(a, path + ".auth needs type (bearer or oauth)"));
          OUTPOST_TRY(std::string type, r.text(a["type"], path + ".auth.type"));
          if (a["secret"]) { OUTPOST_TRY(s.auth.secret, r.text(a["secret"], path + ".auth.secret")); }
          if (type == "bearer") {
            s.auth.kind = upstream::AuthSpec::Kind::bearer;
            if (a["issuer"] || a["client_id"] || a["scope"] || a["grant"]) return fail(r.bad(a, path + ".auth: a bearer token takes only secret"));
            if (s.auth.secret.empty()) return fail(r.bad(a, path + ".auth: a bearer token needs secret (its sealed name)"));
          } else if (type == "oauth") {
            s.auth.kind = upstream::AuthSpec::Kind::oauth;
            if (!a["issuer"] || !a["client_id"]) return fail(r.bad(a, path + ".auth: oauth needs issuer and client_id"));
            OUTPOST_TRY(s.auth.issuer, r.text(a["issuer"], path + ".auth.issuer"));
            OUTPOST_TRY(s.auth.client_id, r.text(a["client_id"], path + ".auth.client_id"));
            if (a["scope"]) { OUTPOST_TRY(s.auth.scope, r.text(a["scope"], path + ".auth.scope")); }
            std::string grant = "client_credentials";
            if (a["grant"]) { OUTPOST_TRY(grant, r.text(a["grant"], path + ".auth.grant")); }
            if (grant == "authorization_code") {
              s.auth.grant = upstream::AuthSpec::Grant::authorization_code;  // secret optional: a public client
            } else if (grant != "client_credentials") {
              return fail(r.bad(a["grant"], path + ".auth.grant must be client_credentials or authorization_code"));
            } else if (s.auth.secret.empty()) {
              return fail(r.bad(a, path + ".auth: the client credentials grant needs secret (the sealed client secret)"));
            }
            auto u = upstream::parse_upstream_url(s.auth.issuer);
            if (!u || (!u->tls && u->host != "localhost" && u->host.rfind("127.", 0) != 0)) {
              return fail(r.bad(a["issuer"], path + ".auth.issuer must be an https URL (http only to loopback)"));
            }
          } else {
            return fail(r.bad(a["type"], path + ".auth.type must be bearer or oauth"));
          }
        }
        if (n["credential_header"]) {
          OUTPOST_TRY(std::string h, r.text(n["credential_header"], path + ".credential_header"));
          auto name = upstream::credential_header_name(h);
          if (!name) return fail(r.bad(n["credential_header"], path + "." + name.error().message()));
          if (*name == "Authorization" && s.auth.kind != upstream::AuthSpec::Kind::none) {
            return fail(r.bad(n["credential_header"], path + ".credential_header: Authorization carries auth's token already"));
          }
          s.credential_header = std::move(*name);
        }
        m.mcp_servers.push_back(std::move(s));
        continue;
      } else if (n["ca"] || n["auth"] || n["credential_header"]) {
        return fail(r.bad(n, path + ": ca, auth and credential_header are for a url server"));
      }
      if (!s.local) {
        OUTPOST_TRY(std::string cmd, r.text(n["command"], path + ".command"));
        s.command = resolve(base_dir, cmd);
      }
      if (n["args"]) { OUTPOST_TRY(s.args, r.texts(n["args"], path + ".args")); }
      if (n["env_allow"]) { OUTPOST_TRY(s.env_allow, r.texts(n["env_allow"], path + ".env_allow")); }
      if (n["env"]) { OUTPOST_TRY(s.env, r.env_map(n["env"], path + ".env")); }
      if (n["cwd"]) { OUTPOST_TRY(std::string c, r.text(n["cwd"], path + ".cwd")); s.cwd = resolve(base_dir, c); }
      if (n["secrets"]) {
        if (!n["secrets"].IsSequence()) return fail(r.bad(n["secrets"], path + ".secrets must be a list"));
        for (const auto& sn : n["secrets"]) {
          OUTPOST_TRY_VOID(r.fields(sn, path + ".secrets[]", {"name", "env"}));
          if (!sn["name"] || !sn["env"]) return fail(r.bad(sn, path + ".secrets[] needs name and env"));
          SecretRef ref;
          OUTPOST_TRY(ref.name, r.text(sn["name"], path + ".secrets[].name"));
          OUTPOST_TRY(ref.env, r.text(sn["env"], path + ".secrets[].env"));
          s.secrets.push_back(std::move(ref));
        }
      }
      m.mcp_servers.push_back(std::move(s));
    }
  }
  return m;
}

}  // namespace outpost::daemon
