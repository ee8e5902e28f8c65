// The CLI's outpost-hub verbs: `bundle publish` (central IAM), `evidence pull` (responder) and
// `fleet list|move` (operator), over HTTPS (sync/hub_client.h), with the role's credential
// from --token-file or $OUTPOST_HUB_TOKEN (never an argument: ps shows those). The hub is authenticated by --ca (its CA; the URL's host is
// checked) or --pin (its key's SHA-256, as `outpost-hub init` prints it).
#include <boost/json.hpp>
#include <cstdio>
#include <cctype>
#include <cstdlib>

#include "cli.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"
#include "sync/hub_client.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;

void add_hub_options(po::options_description& d) {
  d.add_options()("hub", po::value<std::string>()->required(), "the hub, https://host:port")(
      "ca", po::value<std::string>(), "the CA that issued the hub's certificate (PEM)")(
      "pin", po::value<std::string>(), "SHA-256 of the hub's public key (hex)")(
      "token-file", po::value<std::string>(), "the credential of your role (else $OUTPOST_HUB_TOKEN)");
}

Result<sync::HubEndpoint> hub_endpoint(const po::variables_map& vm) {
  OUTPOST_TRY(sync::HubEndpoint ep, sync::parse_hub_url(vm["hub"].as<std::string>()));
  if (vm.count("ca")) { OUTPOST_TRY(ep.ca_pem, read_text_file(vm["ca"].as<std::string>(), 1 << 20)); }
  if (vm.count("pin")) ep.pin_sha256 = vm["pin"].as<std::string>();
  if (ep.ca_pem.empty() && ep.pin_sha256.empty()) {
    return fail(errc::invalid_argument, "give --ca or --pin: the hub must be authenticated");
  }
  // Never on the command line, where other users see it (ps): a file, or the environment.
  if (vm.count("token-file")) {
    OUTPOST_TRY(ep.bearer_token, read_text_file(vm["token-file"].as<std::string>(), 4096));
  } else if (const char* env = std::getenv("OUTPOST_HUB_TOKEN")) {
    ep.bearer_token = env;
  }
  while (!ep.bearer_token.empty() && std::isspace(static_cast<unsigned char>(ep.bearer_token.back()))) ep.bearer_token.pop_back();
  while (!ep.bearer_token.empty() && std::isspace(static_cast<unsigned char>(ep.bearer_token.front()))) ep.bearer_token.erase(0, 1);
  return ep;
}

// RFC 3339 (UTC) or Unix milliseconds.
Result<int64_t> time_ms(const std::string& text) {
  if (auto t = parse_rfc3339_utc(text)) return *t * 1000;
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) return std::stoll(text);
  return fail(errc::invalid_argument, "\"" + text + "\": give RFC 3339 UTC (2026-11-28T10:00:00Z) or Unix milliseconds");
}

}  // namespace

int bundle_publish_command(const Args& args) {
  po::options_description d("bundle publish");
  add_hub_options(d);
  d.add_options()("bundle", po::value<std::string>()->required(), "the signed bundle");
  auto vm = parse(args, "outpost bundle publish B --hub URL (--ca CA.pem | --pin HEX) [--token-file T]", d, {"bundle"});
  if (!vm) return kExitOk;
  auto ep = hub_endpoint(*vm);
  if (!ep) return report(ep.error());
  auto bytes = read_file((*vm)["bundle"].as<std::string>(), 64u << 20);
  if (!bytes) return report(bytes.error());
  sync::HubRequest req("POST", "/v1/bundles", std::string(as_chars(*bytes)), "application/vnd.outpost.bundle");
  auto r = sync::hub_request_blocking(*ep, std::move(req));
  if (!r) return report(r.error());
  if (r->status != 200) return report(sync::hub_error(*r, "publish"));
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  uint64_t version = !ec && v.is_object() && v.as_object().contains("version") ? v.as_object().at("version").to_number<uint64_t>() : 0;
  std::printf("published bundle v%llu to %s\n", static_cast<unsigned long long>(version), ep->url().c_str());
  return kExitOk;
}

int evidence_pull_command(const Args& args) {
  po::options_description d("evidence pull");
  add_hub_options(d);
  d.add_options()("node", po::value<std::string>()->required(), "the node id")(
      "out", po::value<std::string>()->required(), "where to write the package")(
      "since", po::value<std::string>(), "records from this time (RFC 3339 or Unix ms)")(
      "until", po::value<std::string>(), "records up to this time (then on to the next checkpoint)");
  auto vm = parse(args, "outpost evidence pull --hub URL --node N --out PKG [--since T] [--until T] (--ca CA.pem | --pin HEX) [--token-file T]", d);
  if (!vm) return kExitOk;
  auto ep = hub_endpoint(*vm);
  if (!ep) return report(ep.error());
  std::string target = "/v1/nodes/" + (*vm)["node"].as<std::string>() + "/evidence";
  char sep = '?';
  for (const char* name : {"since", "until"}) {
    if (!vm->count(name)) continue;
    auto t = time_ms((*vm)[name].as<std::string>());
    if (!t) return report(t.error().wrap(std::string("--") + name));
    target += sep + std::string(name) + "=" + std::to_string(*t);
    sep = '&';
  }
  sync::HubRequest req("GET", target);
  req.timeout = std::chrono::minutes(10);
  auto r = sync::hub_request_blocking(*ep, std::move(req));
  if (!r) return report(r.error());
  if (r->status != 200) return report(sync::hub_error(*r, "evidence pull"));
  const std::string out = (*vm)["out"].as<std::string>();
  auto w = write_file_atomic(out, r->body, 0644);
  if (!w) return report(w.error());
  std::printf("wrote %s (%zu bytes) from %s; check it with: outpost evidence verify %s --trust AK.pem\n", out.c_str(),
              r->body.size(), ep->url().c_str(), out.c_str());
  return kExitOk;
}

// `outpost fleet list`: the hub's nodes by fleet (operator or responder).
int fleet_list_command(const Args& args) {
  po::options_description d("fleet list");
  add_hub_options(d);
  d.add_options()("json", po::bool_switch(), "the hub's answer as it is");
  auto vm = parse(args, "outpost fleet list --hub URL (--ca CA.pem | --pin HEX) [--token-file T] [--json]", d);
  if (!vm) return kExitOk;
  auto ep = hub_endpoint(*vm);
  if (!ep) return report(ep.error());
  auto r = sync::hub_request_blocking(*ep, sync::HubRequest("GET", "/v1/nodes"));
  if (!r) return report(r.error());
  if (r->status != 200) return report(sync::hub_error(*r, "fleet list"));
  if ((*vm)["json"].as<bool>()) {
    std::fputs(r->body.c_str(), stdout);
    return kExitOk;
  }
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  if (ec || !v.is_array()) return report(Error(make_error_code(errc::corrupt), "fleet list: the hub's answer is not a list"));
  std::printf("%-34s %-20s %12s  %s\n", "NODE", "FLEET", "ACKED SEQ", "LAST CONTACT");
  for (const auto& n : v.as_array()) {
    if (!n.is_object()) continue;
    const auto& o = n.as_object();
    const auto str = [&](const char* k) { return o.contains(k) && o.at(k).is_string() ? std::string(o.at(k).as_string()) : std::string(); };
    const auto num = [&](const char* k) { return o.contains(k) && o.at(k).is_number() ? o.at(k).to_number<int64_t>() : int64_t{0}; };
    const int64_t contact = num("last_contact_ms");
    std::printf("%-34s %-20s %12lld  %s\n", str("node_id").c_str(), str("fleet").empty() ? "-" : str("fleet").c_str(),
                static_cast<long long>(num("acked_seq")), contact > 0 ? format_rfc3339_utc(contact / 1000).c_str() : "never");
  }
  return kExitOk;
}

// `outpost fleet move N --to F`: the hub serves node N the bundles of fleet F (operator).
int fleet_move_command(const Args& args) {
  po::options_description d("fleet move");
  add_hub_options(d);
  d.add_options()("node", po::value<std::string>()->required(), "the node id")(
      "to", po::value<std::string>()->required(), "the fleet (\"\" for none)");
  auto vm = parse(args, "outpost fleet move N --to FLEET --hub URL (--ca CA.pem | --pin HEX) [--token-file T]", d, {"node"});
  if (!vm) return kExitOk;
  auto ep = hub_endpoint(*vm);
  if (!ep) return report(ep.error());
  const std::string node = (*vm)["node"].as<std::string>(), fleet = (*vm)["to"].as<std::string>();
  auto r = sync::hub_request_blocking(*ep, sync::HubRequest("PUT", "/v1/nodes/" + node + "/fleet",
                                                            json::serialize(json::object{{"fleet", fleet}})));
  if (!r) return report(r.error());
  if (r->status != 200) return report(sync::hub_error(*r, "fleet move"));
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  std::string previous = !ec && v.is_object() && v.as_object().contains("previous") && v.as_object().at("previous").is_string()
                             ? std::string(v.as_object().at("previous").as_string())
                             : std::string();
  std::printf("node %s: fleet %s -> %s; the node hears of it at its bundle poll\n", node.c_str(),
              previous.empty() ? "(none)" : previous.c_str(), fleet.empty() ? "(none)" : fleet.c_str());
  // The node installs only what is newer than its bundle in force: say so when the new fleet
  // has nothing newer, since the old fleet's policy then stays in force there.
  if (!ec && v.is_object()) {
    if (const auto* w = v.as_object().if_contains("warning"); w && w->is_string()) {
      std::fprintf(stderr, "outpost: warning: %s\n", std::string(w->as_string()).c_str());
    }
  }
  return kExitOk;
}

}  // namespace outpost::cli
