// outpost-hub's console: server-rendered HTML pages for operators and responders (docs/hub.md
// "Console"). No script, no CDN, no build step: each page is one HTML document with its style
// inline, answered under a Content-Security-Policy that allows nothing else. Everything a node
// wrote (agent names, reasons, hosts) is escaped; these functions only render what hub.cc
// gathered from the store.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/hub/store.h"
#include "outpost/offline_cache/audit_log.h"

namespace outpost::hub::console {

// HTML text and attribute values (quoted).
std::string escape(std::string_view text);
// A query or form value: percent-encoded, and back ('+' is a space when decoding).
std::string url_encode(std::string_view text);
std::string url_decode(std::string_view text);

// The whole document: a header with the pages' links and who is signed in, then `body`.
std::string document(std::string_view title, std::string_view body, std::string_view who);

struct FleetNode {
  NodeRow node;
  std::string board;
  uint64_t alerts = 0;
  uint64_t newest_for_node = 0;           // the newest bundle the hub serves it (0: none)
  std::optional<int64_t> offline_left_s;  // estimated from its last contact; nullopt: bundle unknown here
};
struct FleetView {
  std::vector<FleetNode> nodes;
  uint64_t newest_version = 0;  // the newest bundle published
  int64_t now_ms = 0;
  std::string fleet;            // the fleet shown ("": all)
  std::vector<std::string> fleets;
};
std::string fleet_page(const FleetView& view);

struct NodeView {
  FleetNode node;
  std::vector<AlertRow> alerts;
  std::vector<offline_cache::AuditRecord> records;  // the newest, decoded from their frames
  uint64_t records_held = 0;
  std::string evidence;       // what the hub holds of the node's evidence state, in a sentence
  bool may_download = false;  // the viewer is a responder
  int64_t now_ms = 0;
};
std::string node_page(const NodeView& view);

struct BundleRollout {
  uint64_t version = 0;
  std::string sha256, published_at, scope;
  size_t admitted = 0;  // nodes whose scope admits it and are served it (it is their newest)
  size_t running = 0;   // nodes that report it in force
};
std::string bundles_page(const std::vector<BundleRollout>& bundles, size_t nodes);

std::string decisions_page(const RecordQuery& query, std::string_view since, std::string_view until,
                           const std::vector<FoundRecord>& found);

std::string login_page(std::string_view error);

}  // namespace outpost::hub::console
