#include "console.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "outpost/base/bytes.h"
#include "outpost/base/time.h"
#include "outpost/hub/ingest.h"

namespace outpost::hub::console {
namespace {

constexpr int64_t kStaleMs = 15 * 60 * 1000;  // a node not heard from in this long is shown stale

const char* kStyle = R"css(
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto;color:#aab}
main{padding:12px 16px}h1{font-size:20px;margin:4px 0 10px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;width:100%}th,td{border:1px solid #dde;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#a01515;font-weight:600}.warn{color:#8a5a00}.ok{color:#16702a}.mono{font-family:ui-monospace,monospace;font-size:12px}
.summary{display:flex;gap:24px;margin:6px 0 12px}.summary div{background:#fff;border:1px solid #dde;padding:6px 10px}
form.search{display:flex;gap:8px;flex-wrap:wrap;align-items:end;margin-bottom:10px}form.search label{display:flex;flex-direction:column;font-size:12px}
)css";

std::string time_of(int64_t ms) { return ms > 0 ? format_rfc3339_utc(ms / 1000) : std::string("never"); }

// "4 min ago" from a Unix ms, or "never".
std::string ago(int64_t ms, int64_t now_ms) {
  if (ms <= 0) return "never";
  const int64_t s = std::max<int64_t>(0, (now_ms - ms) / 1000);
  if (s < 120) return std::to_string(s) + " s ago";
  if (s < 2 * 3600) return std::to_string(s / 60) + " min ago";
  if (s < 2 * 86400) return std::to_string(s / 3600) + " h ago";
  return std::to_string(s / 86400) + " d ago";
}

std::string duration(int64_t s) {
  if (s <= 0) return "0";
  if (s < 3600) return std::to_string(s / 60) + " min";
  if (s < 2 * 86400) return std::to_string(s / 3600) + " h " + std::to_string(s % 3600 / 60) + " min";
  return std::to_string(s / 86400) + " d " + std::to_string(s % 86400 / 3600) + " h";
}

std::string node_link(const std::string& node_id) {
  return "<a class=\"mono\" href=\"/console/nodes/" + escape(url_encode(node_id)) + "\">" + escape(node_id) + "</a>";
}

std::string cell(std::string_view text, std::string_view cls = {}) {
  return cls.empty() ? "<td>" + escape(text) + "</td>" : "<td class=\"" + std::string(cls) + "\">" + escape(text) + "</td>";
}

// The bundle cell: the version in force, marked when the hub serves the node a newer one.
std::string bundle_cell(uint64_t in_force, uint64_t newest_for_node) {
  if (in_force == 0) return "<td class=\"warn\">none reported</td>";
  std::string t = "v" + std::to_string(in_force);
  if (newest_for_node > in_force) return "<td class=\"warn\">" + t + " (v" + std::to_string(newest_for_node) + " served)</td>";
  return "<td>" + t + "</td>";
}

}  // namespace

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string url_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string url_decode(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(' ');
    } else if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::string document(std::string_view title, std::string_view body, std::string_view who) {
  std::string out = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + escape(title) +
                    " · outpost-hub</title><style>" + kStyle + "</style></head><body><header><strong>outpost-hub</strong>"
                    "<a href=\"/console\">Fleet</a><a href=\"/console/bundles\">Bundles</a>"
                    "<a href=\"/console/decisions\">Decisions</a>";
  if (!who.empty()) out += "<span class=\"who\">" + escape(who) + " · <a href=\"/console/logout\">sign out</a></span>";
  out += "</header><main>";
  out += body;
  out += "</main></body></html>\n";
  return out;
}

std::string fleet_page(const FleetView& v) {
  size_t stale = 0, behind = 0, alerting = 0, never_attested = 0, running_newest = 0;
  for (const auto& n : v.nodes) {
    if (n.node.last_contact_ms <= 0 || v.now_ms - n.node.last_contact_ms > kStaleMs) ++stale;
    if (n.newest_for_node > n.node.bundle_version) ++behind;
    if (n.alerts > 0) ++alerting;
    if (n.node.last_attested_ms <= 0) ++never_attested;
    if (v.newest_version > 0 && n.node.bundle_version == v.newest_version) ++running_newest;
  }
  std::string b = "<h1>Fleet" + (v.fleet.empty() ? std::string() : " " + escape(v.fleet)) + "</h1>";
  b += "<p>Fleets: <a href=\"/console\">all</a>";
  for (const auto& f : v.fleets) b += " · <a href=\"/console?fleet=" + escape(url_encode(f)) + "\">" + escape(f.empty() ? "(none)" : f) + "</a>";
  b += "</p><div class=\"summary\">";
  b += "<div><b id=\"node-count\">" + std::to_string(v.nodes.size()) + "</b> nodes</div>";
  b += "<div class=\"" + std::string(stale ? "bad" : "ok") + "\">" + std::to_string(stale) + " not heard from in 15 min</div>";
  b += "<div class=\"" + std::string(behind ? "warn" : "ok") + "\">" + std::to_string(behind) + " behind the bundle served to them</div>";
  b += "<div class=\"" + std::string(alerting ? "bad" : "ok") + "\">" + std::to_string(alerting) + " with alerts</div>";
  b += "<div>" + std::to_string(never_attested) + " never attested</div>";
  if (v.newest_version > 0) {
    b += "<div>newest bundle v" + std::to_string(v.newest_version) + ": in force on " + std::to_string(running_newest) + " of " +
         std::to_string(v.nodes.size()) + " (<a href=\"/console/bundles\">rollout</a>)</div>";
  }
  b += "</div><table id=\"fleet\"><thead><tr><th>node</th><th>fleet</th><th>board</th><th>last contact</th><th>last good quote</th>"
       "<th>bundle in force</th><th>offline budget left (est.)</th><th>audit backlog</th><th>alerts</th></tr></thead><tbody>";
  for (const auto& n : v.nodes) {
    const bool is_stale = n.node.last_contact_ms <= 0 || v.now_ms - n.node.last_contact_ms > kStaleMs;
    b += "<tr data-node=\"" + escape(n.node.node_id) + "\"><td>" + node_link(n.node.node_id) + "</td>";
    b += cell(n.node.fleet.empty() ? "-" : n.node.fleet) + cell(n.board);
    b += "<td class=\"" + std::string(is_stale ? "bad" : "ok") + "\">" + escape(ago(n.node.last_contact_ms, v.now_ms)) +
         "<br><span class=\"mono\">" + escape(time_of(n.node.last_contact_ms)) + "</span></td>";
    b += "<td class=\"" + std::string(n.node.last_attested_ms > 0 ? "" : "warn") + "\">" + escape(ago(n.node.last_attested_ms, v.now_ms)) + "</td>";
    b += bundle_cell(n.node.bundle_version, n.newest_for_node);
    if (!n.offline_left_s) {
      b += "<td>-</td>";
    } else {
      b += "<td class=\"num " + std::string(*n.offline_left_s <= 0 ? "bad" : *n.offline_left_s < 3600 ? "warn" : "") + "\">" +
           escape(*n.offline_left_s <= 0 ? std::string("spent") : duration(*n.offline_left_s)) + "</td>";
    }
    const uint64_t backlog = n.node.durable_seq > n.node.acked_seq ? n.node.durable_seq - n.node.acked_seq : 0;
    b += "<td class=\"num\">" + std::to_string(backlog) + "</td>";
    b += "<td class=\"num " + std::string(n.alerts ? "bad" : "") + "\">" + std::to_string(n.alerts) + "</td></tr>";
  }
  b += "</tbody></table>";
  return b;
}

std::string node_page(const NodeView& v) {
  const NodeRow& n = v.node.node;
  std::string b = "<h1>Node <span class=\"mono\">" + escape(n.node_id) + "</span></h1><table>";
  auto row = [&](std::string_view k, const std::string& html) { b += "<tr><th>" + escape(k) + "</th><td>" + html + "</td></tr>"; };
  row("fleet", escape(n.fleet.empty() ? "-" : n.fleet));
  row("board", escape(v.node.board));
  row("enrolled", escape(n.enrolled_at));
  row("last contact", escape(ago(n.last_contact_ms, v.now_ms) + " (" + time_of(n.last_contact_ms) + ")"));
  row("last good quote", escape(ago(n.last_attested_ms, v.now_ms)) +
                             (n.last_clock ? " · TPM reset count " + std::to_string(n.last_clock->reset_count) : std::string()));
  row("bundle in force", n.bundle_version ? "v" + std::to_string(n.bundle_version) +
                                                (v.node.newest_for_node > n.bundle_version
                                                     ? " <span class=\"warn\">(v" + std::to_string(v.node.newest_for_node) + " served)</span>"
                                                     : std::string())
                                          : std::string("none reported"));
  row("audit chain", "records 1 to " + std::to_string(n.acked_seq) + " held, each verified link by link and anchored by a checkpoint quote " +
                         "the node's AK signed; the node reported " + std::to_string(n.durable_seq) + " durable");
  row("evidence state", escape(v.evidence));
  row("evidence package", v.may_download ? "<a href=\"/console/nodes/" + escape(url_encode(n.node_id)) +
                                               "/evidence\">download</a> (check it offline: outpost evidence verify PKG --trust AK.pem)"
                                         : std::string("a responder's credential downloads it"));
  b += "</table><h2>Alerts (" + std::to_string(v.node.alerts) + (v.node.alerts > v.alerts.size() ? ", the newest " + std::to_string(v.alerts.size()) + " shown" : std::string()) + ")</h2>";
  if (v.alerts.empty()) {
    b += "<p class=\"ok\">none</p>";
  } else {
    b += "<table id=\"alerts\"><tr><th>at</th><th>kind</th><th>detail</th></tr>";
    for (const auto& a : v.alerts) b += "<tr>" + cell(a.at) + cell(a.kind, "bad") + cell(a.detail) + "</tr>";
    b += "</table>";
  }
  // The newest records, read from their frames: decisions with denies first, then those whose
  // verdict cannot be read (never shown as allowed), then allowed, then the rest.
  std::vector<std::pair<const offline_cache::AuditRecord*, RecordRow>> denied, unknown, allowed, other;
  for (const auto& r : v.records) {
    RecordRow s;
    fill_search_columns(r, s);
    if (r.kind != offline_cache::RecordKind::decision) {
      other.emplace_back(&r, std::move(s));
    } else if (s.verdict == "deny") {
      denied.emplace_back(&r, std::move(s));
    } else if (s.verdict == "allow") {
      allowed.emplace_back(&r, std::move(s));
    } else {
      unknown.emplace_back(&r, std::move(s));
    }
  }
  auto table = [&](const char* id, const char* title, const auto& rows, bool decisions) {
    b += "<h2>" + std::string(title) + " (" + std::to_string(rows.size()) + ")</h2>";
    if (rows.empty()) return;
    b += "<table id=\"" + std::string(id) + "\"><tr><th>seq</th><th>time</th><th>event</th><th>agent</th>";
    b += decisions ? "<th>subject</th><th>verdict</th><th>reason</th></tr>" : "<th>detail</th></tr>";
    for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
      const auto& [r, s] = *it;
      b += "<tr><td class=\"num\">" + std::to_string(r->seq) + "</td>" + cell(time_of(r->time_ms)) + cell(r->event) + cell(r->agent);
      if (decisions) {
        b += cell(s.subject) + cell(s.verdict, s.verdict == "deny" ? "bad" : "ok") + cell(s.reason) + "</tr>";
      } else {
        const std::string detail = r->kind == offline_cache::RecordKind::checkpoint
                                       ? "checkpoint over records to " + std::to_string(r->head_seq)
                                       : r->detail.substr(0, 300);
        b += cell(detail, "mono") + "</tr>";
      }
    }
    b += "</table>";
  };
  b += "<p>The newest " + std::to_string(v.records.size()) + " of " + std::to_string(v.records_held) +
       " records held; search all of them under <a href=\"/console/decisions?node=" + escape(url_encode(n.node_id)) +
       "\">Decisions</a>.</p>";
  table("denied", "Denied", denied, true);
  if (!unknown.empty()) table("unknown", "Verdict unreadable", unknown, true);
  table("allowed", "Allowed", allowed, true);
  table("lifecycle", "Checkpoints and lifecycle", other, false);
  return b;
}

std::string bundles_page(const std::vector<BundleRollout>& bundles, size_t nodes) {
  std::string b = "<h1>Bundles</h1><p>The newest " + std::to_string(bundles.size()) + " published, newest first; " +
                  std::to_string(nodes) + " nodes enrolled. A node is served the newest bundle its scope (id, board, fleet) admits.</p>";
  b += "<table id=\"bundles\"><tr><th>version</th><th>published</th><th>scope</th><th>served to</th><th>in force on</th><th>sha256</th></tr>";
  for (const auto& x : bundles) {
    const int pct = x.admitted ? static_cast<int>(100 * x.running / x.admitted) : 0;
    b += "<tr><td class=\"num\">v" + std::to_string(x.version) + "</td>" + cell(x.published_at) + cell(x.scope.empty() ? "any node" : x.scope) +
         "<td class=\"num\">" + std::to_string(x.admitted) + "</td><td class=\"num " +
         std::string(x.admitted && x.running < x.admitted ? "warn" : "") + "\">" + std::to_string(x.running) +
         (x.admitted ? " (" + std::to_string(pct) + " %)" : std::string()) + "</td>" + cell(x.sha256.substr(0, 16), "mono") + "</tr>";
  }
  b += "</table>";
  return b;
}

std::string decisions_page(const RecordQuery& q, std::string_view since, std::string_view until, const std::vector<FoundRecord>& found) {
  auto field = [](const char* name, const char* label, std::string_view value, const char* hint) {
    return "<label>" + std::string(label) + "<input name=\"" + name + "\" value=\"" + escape(value) + "\" placeholder=\"" + hint + "\"></label>";
  };
  std::string b = "<h1>Decisions</h1><form class=\"search\" method=\"get\" action=\"/console/decisions\">";
  b += field("agent", "agent", q.agent, "any") + field("tool", "tool (server/tool or tool; egress: host)", q.subject, "any");
  b += "<label>verdict<select name=\"verdict\">";
  for (const char* v : {"", "deny", "allow"}) {
    b += "<option value=\"" + std::string(v) + "\"" + (q.verdict == v ? " selected" : "") + ">" + (*v ? v : "any") + "</option>";
  }
  b += "</select></label>" + field("since", "since (RFC 3339)", since, "2026-12-01T00:00:00Z") + field("until", "until", until, "now");
  b += field("node", "node", q.node_id, "any") + "<button type=\"submit\">search</button></form>";
  b += "<p id=\"found\">" + std::to_string(found.size()) + (found.size() >= q.limit ? "+ (the newest " + std::to_string(q.limit) + ")" : std::string()) +
       " found, newest first.</p>";
  if (found.empty()) return b;
  b += "<table id=\"decisions\"><tr><th>time</th><th>node</th><th>seq</th><th>agent</th><th>event</th><th>subject</th><th>verdict</th><th>reason</th></tr>";
  for (const auto& f : found) {
    b += "<tr>" + cell(time_of(f.row.time_ms)) + "<td>" + node_link(f.node_id) + "</td><td class=\"num\">" + std::to_string(f.row.seq) +
         "</td>" + cell(f.row.agent) + cell(f.row.event) + cell(f.row.subject) + cell(f.row.verdict, f.row.verdict == "deny" ? "bad" : "ok") +
         cell(f.row.reason) + "</tr>";
  }
  b += "</table>";
  return b;
}

std::string login_page(std::string_view error) {
  std::string b = "<h1>Sign in</h1>";
  if (!error.empty()) b += "<p class=\"bad\">" + escape(error) + "</p>";
  b += "<form method=\"post\" action=\"/console/login\"><p>An operator's or a responder's token (outpost-hub token, or the "
       "*.token files outpost-hub init wrote):</p><input name=\"token\" type=\"password\" size=\"70\" autocomplete=\"off\"> "
       "<button type=\"submit\">sign in</button></form>";
  return b;
}

}  // namespace outpost::hub::console
