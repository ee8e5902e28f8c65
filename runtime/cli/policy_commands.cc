// The IAM's and operator's policy commands: keygen, trust, bundle, decide, policy test, status.
#include <yaml-cpp/yaml.h>

#include <boost/json.hpp>
#include <chrono>
#include <iostream>

#include "cli.h"
#include "daemon/api.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/offline_cache/bundle.h"
#include "outpost/offline_cache/bundle_store.h"
#include "outpost/offline_cache/trust.h"
#include "policy/compiler.h"
#include "policy/engine.h"
#include "outpost/base/time.h"
#include "policy/labels.h"
#include "policy/request_json.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;
using offline_cache::SignedBundle;
using offline_cache::TrustRoot;

Error usage_error(std::string message) { return Error(make_error_code(errc::invalid_argument), std::move(message)); }

Result<SignedBundle> read_bundle(const std::string& path) {
  OUTPOST_TRY(Bytes bytes, read_file(path, offline_cache::kMaxBundleBytes));
  Result<SignedBundle> b = SignedBundle::parse(std::move(bytes));
  if (!b) return fail(b.error().wrap(path));
  return b;
}

Result<TrustRoot> read_trust(const std::filesystem::path& path) {
  OUTPOST_TRY(std::string text, read_text_file(path, 1 << 20));
  Result<TrustRoot> root = TrustRoot::parse(text);
  if (!root) return fail(root.error().wrap(path.string()));
  return root;
}

Result<EcPrivateKey> read_private_key(const std::string& path) {
  OUTPOST_TRY(std::string pem, read_text_file(path, 64 << 10));
  Result<EcPrivateKey> key = EcPrivateKey::from_pem(pem);
  if (!key) return fail(key.error().wrap(path));
  return key;
}

std::filesystem::path node_trust_path(const std::filesystem::path& state) { return state / "trust" / "root.json"; }

// ---- keygen ----

int keygen(const Args& args) {
  po::options_description d("keygen");
  d.add_options()("out,o", po::value<std::string>()->required(), "private key file (PEM); the public key goes to OUT.pub");
  auto vm = parse(args, "outpost keygen --out key.pem", d);
  if (!vm) return kExitOk;
  const std::string out = (*vm)["out"].as<std::string>();
  if (file_exists(out)) return report(usage_error(out + " exists; refusing to overwrite a key"));
  auto key = EcPrivateKey::generate();
  if (!key) return report(key.error());
  auto pem = key->to_pem();
  if (!pem) return report(pem.error());
  if (auto w = write_file_atomic(out, *pem, 0600); !w) return report(w.error());
  if (auto w = write_file_atomic(out + ".pub", key->public_key().to_pem(), 0644); !w) return report(w.error());
  std::cout << "key id " << key->public_key().thumbprint() << "\nprivate key " << out << " (mode 0600)\npublic key  "
            << out << ".pub\n";
  return kExitOk;
}

// ---- trust ----

int trust_init(const Args& args, bool rotate) {
  po::options_description d(rotate ? "trust rotate" : "trust init");
  d.add_options()("key", po::value<std::vector<std::string>>()->multitoken()->required(), "root public keys (PEM)")(
      "threshold", po::value<uint32_t>()->required(), "signatures needed")(
      "out,o", po::value<std::string>()->required(), "trust file to write");
  if (rotate) d.add_options()("from", po::value<std::string>()->required(), "the current trust file");
  auto vm = parse(args, rotate ? "outpost trust rotate --from T --key PUB.pem... --threshold K -o NEW"
                               : "outpost trust init --key PUB.pem... --threshold K -o T",
                  d);
  if (!vm) return kExitOk;
  std::vector<EcPublicKey> keys;
  for (const auto& path : (*vm)["key"].as<std::vector<std::string>>()) {
    auto pem = read_text_file(path, 64 << 10);
    if (!pem) return report(pem.error());
    auto k = EcPublicKey::from_pem(*pem);
    if (!k) return report(k.error().wrap(path));
    keys.push_back(*k);
  }
  uint64_t version = 1;
  if (rotate) {
    auto from = read_trust((*vm)["from"].as<std::string>());
    if (!from) return report(from.error());
    version = from->version + 1;
  }
  auto root = TrustRoot::create(std::move(keys), (*vm)["threshold"].as<uint32_t>(), version);
  if (!root) return report(root.error());
  if (auto w = write_file_atomic((*vm)["out"].as<std::string>(), root->to_json()); !w) return report(w.error());
  std::cout << "root v" << root->version << ": " << root->keys.size() << " keys, threshold " << root->threshold << "\n";
  if (rotate) std::cout << "sign it with a threshold of the old keys and of the new (outpost trust sign)\n";
  return kExitOk;
}

int trust_sign(const Args& args) {
  po::options_description d("trust sign");
  d.add_options()("file", po::value<std::string>()->required(), "trust file")(
      "key", po::value<std::string>()->required(), "private key (PEM)");
  auto vm = parse(args, "outpost trust sign T --key K", d, {"file"});
  if (!vm) return kExitOk;
  const std::string path = (*vm)["file"].as<std::string>();
  auto root = read_trust(path);
  if (!root) return report(root.error());
  auto key = read_private_key((*vm)["key"].as<std::string>());
  if (!key) return report(key.error());
  if (auto s = root->sign(*key); !s) return report(s.error());
  if (auto w = write_file_atomic(path, root->to_json()); !w) return report(w.error());
  std::cout << "root v" << root->version << " signed by " << key->public_key().thumbprint() << " ("
            << root->signatures.size() << " signatures)\n";
  return kExitOk;
}

// Node side: pin the first root, or walk a rotation chain to a newer one.
int trust_install(const Args& args, bool update) {
  po::options_description d(update ? "trust update" : "trust pin");
  add_node_options(d);
  d.add_options()("file", po::value<std::vector<std::string>>()->required(), "trust file(s)");
  auto vm = parse(args, update ? "outpost trust update ROOT_N+1.json [ROOT_N+2.json...] --state DIR"
                               : "outpost trust pin ROOT.json --state DIR",
                  d, {"file", "file", "file", "file", "file", "file", "file", "file"});
  if (!vm) return kExitOk;
  auto ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  const auto target = node_trust_path(ctx->state_dir);
  std::vector<TrustRoot> chain;
  for (const auto& f : (*vm)["file"].as<std::vector<std::string>>()) {
    auto r = read_trust(f);
    if (!r) return report(r.error());
    chain.push_back(std::move(*r));
  }
  TrustRoot result;
  if (!update) {
    if (chain.size() != 1) return report(usage_error("trust pin takes one trust file"));
    if (file_exists(target)) {
      auto current = read_trust(target);
      if (current && current->canonical() == chain[0].canonical()) {
        std::cout << "root v" << current->version << " is already pinned\n";
        return kExitOk;
      }
      return report(usage_error("a trust root is already pinned in " + target.string() +
                                "; a new one must come as a signed rotation (outpost trust update)"));
    }
    result = chain[0];
  } else {
    auto current = read_trust(target);
    if (!current) return report(current.error());
    auto walked = offline_cache::walk_rotations(*current, chain);
    if (!walked) return report(walked.error().wrap("trust update"));
    result = *walked;
  }
  if (auto e = ensure_directory(target.parent_path(), 0700); !e) return report(e.error());
  if (auto w = write_file_atomic(target, result.to_json()); !w) return report(w.error());
  std::cout << "trust root v" << result.version << " (" << result.keys.size() << " keys, threshold "
            << result.threshold << ") in " << target.string() << "\n";
  return kExitOk;
}

// ---- bundle ----

int bundle_build(const Args& args) {
  po::options_description d("bundle build");
  d.add_options()("policy", po::value<std::string>()->required(), "policy source (YAML)")(
      "out,o", po::value<std::string>()->required(), "bundle file to write")(
      "version", po::value<uint64_t>(), "override the source's version");
  auto vm = parse(args, "outpost bundle build POLICY.yaml -o B [--version N]", d, {"policy"});
  if (!vm) return kExitOk;
  policy::CompileOptions opts;
  opts.now = unix_now();
  if (vm->count("version")) opts.version_override = (*vm)["version"].as<uint64_t>();
  auto compiled = policy::compile_policy_file((*vm)["policy"].as<std::string>(), opts);
  if (!compiled) return report(compiled.error());
  for (const auto& w : compiled->warnings) std::cerr << "outpost: warning: " << w << "\n";
  Bytes bundle = SignedBundle::assemble(compiled->payload, {});
  // The engine must accept what the compiler produced; check before anyone signs it.
  auto parsed = SignedBundle::parse(bundle);
  if (!parsed) return report(parsed.error().wrap("internal: the compiled bundle does not parse"));
  auto engine = policy::Engine::build(parsed->payload());
  if (!engine) return report(engine.error().wrap("internal: the compiled bundle does not load"));
  if (auto w = write_file_atomic((*vm)["out"].as<std::string>(), bundle); !w) return report(w.error());
  std::cout << "bundle v" << compiled->version << " written to " << (*vm)["out"].as<std::string>() << " ("
            << bundle.size() << " bytes, " << engine->get()->rule_count() << " rules, unsigned; "
            << compiled->warnings.size() << " warnings)\n";
  return kExitOk;
}

int bundle_sign(const Args& args) {
  po::options_description d("bundle sign");
  d.add_options()("bundle", po::value<std::string>()->required(), "bundle file (signed in place unless --out)")(
      "key", po::value<std::string>()->required(), "private key (PEM)")("out,o", po::value<std::string>(), "output");
  auto vm = parse(args, "outpost bundle sign B --key K [-o OUT]", d, {"bundle"});
  if (!vm) return kExitOk;
  const std::string in = (*vm)["bundle"].as<std::string>();
  auto b = read_bundle(in);
  if (!b) return report(b.error());
  auto key = read_private_key((*vm)["key"].as<std::string>());
  if (!key) return report(key.error());
  auto signed_bytes = b->add_signature(*key);
  if (!signed_bytes) return report(signed_bytes.error());
  const std::string out = vm->count("out") ? (*vm)["out"].as<std::string>() : in;
  if (auto w = write_file_atomic(out, *signed_bytes); !w) return report(w.error());
  std::cout << "bundle v" << b->version() << " signed by " << key->public_key().thumbprint() << " ("
            << b->signatures().size() + 1 << " signatures)\n";
  return kExitOk;
}

json::object describe(const SignedBundle& b) {
  const fb::Bundle& x = b.bundle();
  json::object o;
  o["version"] = x.version();
  o["issuer"] = x.issuer() ? x.issuer()->str() : "";
  o["issued_at"] = format_rfc3339_utc(x.issued_at());
  o["not_before"] = format_rfc3339_utc(x.not_before());
  o["not_after"] = format_rfc3339_utc(x.not_after());
  o["max_offline_seconds"] = x.max_offline();
  o["on_expiry"] = x.on_expiry() == fb::OnExpiry::SafeSet ? "safe_set" : "deny_all";
  auto names = [](const auto* v) {
    json::array a;
    if (v) {
      for (const auto* s : *v) a.emplace_back(s->str());
    }
    return a;
  };
  json::object scope;
  if (x.scope()) {
    scope["fleets"] = names(x.scope()->fleets());
    scope["boards"] = names(x.scope()->boards());
    scope["nodes"] = names(x.scope()->nodes());
  }
  o["scope"] = std::move(scope);
  json::array agents;
  if (x.agents()) {
    for (const auto* a : *x.agents()) agents.emplace_back(a->name()->str());
  }
  o["agents"] = std::move(agents);
  json::array tools;
  if (x.tools()) {
    for (const auto* t : *x.tools()) tools.emplace_back(t->server()->str() + "/" + t->name()->str());
  }
  o["tools"] = std::move(tools);
  o["rules"] = x.rules() ? x.rules()->size() : 0;
  o["flow_rules"] = x.flow_rules() ? x.flow_rules()->size() : 0;
  o["safe_set_rules"] = x.safe_set() ? x.safe_set()->size() : 0;
  o["revoked_agents"] = names(x.revoked_agents());
  json::array sigs;
  for (const auto& s : b.signatures()) sigs.emplace_back(s.key_id);
  o["signatures"] = std::move(sigs);
  o["sha256"] = hex_encode(sha256(b.bytes()));
  return o;
}

int bundle_inspect(const Args& args) {
  po::options_description d("bundle inspect");
  d.add_options()("bundle", po::value<std::string>()->required(), "bundle file")("json", "print JSON");
  auto vm = parse(args, "outpost bundle inspect B [--json]", d, {"bundle"});
  if (!vm) return kExitOk;
  auto b = read_bundle((*vm)["bundle"].as<std::string>());
  if (!b) return report(b.error());
  json::object o = describe(*b);
  if (vm->count("json")) {
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  for (const auto& kv : o) {
    std::string key(kv.key());
    key.resize(std::max<size_t>(key.size(), 20), ' ');
    std::cout << key << (kv.value().is_string() ? std::string(kv.value().as_string()) : json::serialize(kv.value()))
              << "\n";
  }
  return kExitOk;
}

int bundle_verify(const Args& args) {
  po::options_description d("bundle verify");
  d.add_options()("bundle", po::value<std::string>()->required(), "bundle file")(
      "trust", po::value<std::string>()->required(), "trust file");
  auto vm = parse(args, "outpost bundle verify B --trust T", d, {"bundle"});
  if (!vm) return kExitOk;
  auto b = read_bundle((*vm)["bundle"].as<std::string>());
  if (!b) return report(b.error());
  auto root = read_trust((*vm)["trust"].as<std::string>());
  if (!root) return report(root.error());
  if (auto v = offline_cache::verify_bundle_signatures(*b, *root); !v) return report(v.error());
  auto engine = policy::Engine::build(b->payload());
  if (!engine) return report(engine.error().wrap("bundle does not load"));
  const int64_t now = unix_now();
  std::cout << "bundle v" << b->version() << ": signatures meet root v" << root->version << "'s threshold of "
            << root->threshold << "; valid " << format_rfc3339_utc(b->bundle().not_before()) << " to "
            << format_rfc3339_utc(b->bundle().not_after())
            << (now > b->bundle().not_after() ? " (EXPIRED)" : now < b->bundle().not_before() ? " (NOT YET VALID)" : "")
            << "\n";
  return kExitOk;
}

struct NodeStore {
  NodeContext ctx;
  attestation::NodeIdentity id;
  TrustRoot root;
  std::unique_ptr<attestation::Tpm> tpm;
};

Result<NodeStore> open_node_store(const po::variables_map& vm) {
  NodeStore n;
  OUTPOST_TRY(n.ctx, resolve_node(vm));
  OUTPOST_TRY(n.id, attestation::load_identity(n.ctx.state_dir));
  Result<TrustRoot> root = read_trust(node_trust_path(n.ctx.state_dir));
  if (!root) return fail(root.error().wrap("no trust root pinned (outpost trust pin ROOT.json)"));
  n.root = std::move(*root);
  OUTPOST_TRY(n.tpm, connect_tpm(n.ctx));
  OUTPOST_TRY_VOID(attestation::check_tpm_matches(*n.tpm, n.id));
  return n;
}

// The fleet the hub put the node in; one that cannot be read is reported, and installs are
// then checked as for a node in no fleet.
std::string fleet_of(const NodeStore& n) {
  auto f = offline_cache::read_node_fleet(n.ctx.state_dir);
  if (!f) {
    std::fprintf(stderr, "outpost: %s\n", f.error().message().c_str());
    return {};
  }
  return *f;
}

offline_cache::BundleStore store_of(NodeStore& n) {
  return offline_cache::BundleStore(n.ctx.state_dir, n.id, n.ctx.board.rollback_counter_index,
                                    offline_cache::NodeScope{n.id.node_id, n.id.board, fleet_of(n)});
}

void print_status(const offline_cache::BundleStatus& s, int64_t now) {
  std::cout << "bundle        v" << s.version << (s.in_force ? " (in force)" : " (NOT in force)") << "\n";
  if (!s.in_force) {
    std::cout << "why           " << s.reason << "\n"
              << "behaviour     " << (s.safe_set ? "signed safe set" : "deny all") << "\n";
  }
  std::cout << "installed     " << format_rfc3339_utc(s.installed_at) << " (" << (now - s.installed_at)
            << " s ago)\n"
            << "valid         " << format_rfc3339_utc(s.not_before) << " to "
            << format_rfc3339_utc(s.not_after) << " (" << std::max<int64_t>(0, s.life_left) << " s left)\n"
            << "offline       " << s.offline_left << " s of " << s.max_offline << " s left (last contact "
            << format_rfc3339_utc(s.last_contact) << ")\n";
}

json::object status_json(const offline_cache::BundleStatus& s) {
  json::object o;
  o["version"] = s.version;
  o["in_force"] = s.in_force;
  o["reason"] = s.reason;
  o["behaviour"] = s.in_force ? "policy" : s.safe_set ? "safe_set" : "deny_all";
  o["installed_at"] = format_rfc3339_utc(s.installed_at);
  o["not_before"] = format_rfc3339_utc(s.not_before);
  o["not_after"] = format_rfc3339_utc(s.not_after);
  o["life_left_seconds"] = std::max<int64_t>(0, s.life_left);
  o["offline_left_seconds"] = s.offline_left;
  o["max_offline_seconds"] = s.max_offline;
  o["last_contact"] = format_rfc3339_utc(s.last_contact);
  return o;
}

int bundle_install(const Args& args) {
  po::options_description d("bundle install");
  add_node_options(d);
  d.add_options()("bundle", po::value<std::string>()->required(), "signed bundle file")(
      "accept-missing-state", "the node's disk was rebuilt on purpose: accept a state directory with no record");
  auto vm = parse(args, "outpost bundle install B [--state DIR] [--tcti T] [--accept-missing-state]", d, {"bundle"});
  if (!vm) return kExitOk;
  auto bytes = read_file((*vm)["bundle"].as<std::string>(), offline_cache::kMaxBundleBytes);
  if (!bytes) return report(bytes.error());
  // While outpostd runs it owns the TPM: the install goes through it (and reaches its agents).
  if (auto ctx = resolve_node(*vm); ctx && !vm->count("accept-missing-state")) {
    const std::filesystem::path socket = daemon::default_socket(ctx->state_dir);
    if (daemon_running(socket)) {
      auto v = install_through_daemon(socket, *bytes);
      if (!v) return report(v.error());
      std::cout << "installed bundle v" << *v << " through outpostd\n";
      return kExitOk;
    }
  }
  auto n = open_node_store(*vm);
  if (!n) return report(n.error());
  auto store = store_of(*n);
  const int64_t now = unix_now();
  offline_cache::BundleStore::InstallOptions opts;
  opts.accept_missing_state = vm->count("accept-missing-state") > 0;
  auto installed = store.install(*n->tpm, std::move(*bytes), n->root, now, opts);
  if (!installed) return report(installed.error().wrap("bundle install refused"));
  std::cout << "installed bundle v" << installed->state.version << " (rollback counter "
            << installed->state.counter << ")\n";
  print_status(installed->status, now);
  return kExitOk;
}

// ---- decide and policy test ----

Result<json::value> yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return json::value(nullptr);
    case YAML::NodeType::Scalar: {
      const std::string& s = n.Scalar();
      if (n.Tag() != "!") {  // plain scalars may be numbers or booleans; quoted ones are strings
        if (s == "true") return json::value(true);
        if (s == "false") return json::value(false);
        if (s == "null" || s == "~") return json::value(nullptr);
        boost::system::error_code ec;
        json::value v = json::parse(s, ec);
        if (!ec && v.is_number()) return v;
      }
      return json::value(s);
    }
    case YAML::NodeType::Sequence: {
      json::array a;
      for (const auto& e : n) {
        OUTPOST_TRY(json::value v, yaml_to_json(e));
        a.push_back(std::move(v));
      }
      return json::value(std::move(a));
    }
    case YAML::NodeType::Map: {
      json::object o;
      for (const auto& kv : n) {
        if (!kv.first.IsScalar()) return fail(errc::invalid_argument, "a mapping key is not a string");
        OUTPOST_TRY(json::value v, yaml_to_json(kv.second));
        o[kv.first.Scalar()] = std::move(v);
      }
      return json::value(std::move(o));
    }
  }
  return json::value(nullptr);
}

Result<std::shared_ptr<const policy::Engine>> engine_of(const std::string& bundle_path,
                                                        const std::optional<std::string>& trust) {
  OUTPOST_TRY(SignedBundle b, read_bundle(bundle_path));
  if (trust) {
    OUTPOST_TRY(TrustRoot root, read_trust(*trust));
    OUTPOST_TRY_VOID(offline_cache::verify_bundle_signatures(b, root));
  }
  return policy::Engine::build(b.payload());
}

Result<policy::Mode> mode_of(const std::string& s) {
  if (s == "normal") return policy::Mode::normal;
  if (s == "safe_set") return policy::Mode::safe_set;
  if (s == "deny_all") return policy::Mode::deny_all;
  return fail(errc::invalid_argument, "mode must be normal, safe_set or deny_all");
}

json::object decision_json(const policy::Engine& e, const policy::Decision& d, const policy::Request& q) {
  json::object o;
  o["decision"] = d.allow ? "allow" : "deny";
  o["verdict"] = policy::verdict_name(d.verdict);
  json::array rules;
  for (uint8_t i = 0; i < d.rule_count; ++i) rules.emplace_back(e.rule_id(d, d.rules[i]));
  o["rules"] = std::move(rules);
  json::array shadow;
  for (uint8_t i = 0; i < d.shadow_count; ++i) shadow.emplace_back(e.rule_id(d, d.shadow[i]));
  o["shadow_rules"] = std::move(shadow);
  o["bundle_version"] = d.bundle_version;
  o["credential_ttl"] = d.credential_ttl;
  o["reason"] = e.explain(d, q);
  return o;
}

json::object egress_decision_json(const policy::Engine& e, const policy::EgressDecision& d, const policy::EgressRequest& q) {
  json::object o;
  o["decision"] = d.allow ? "allow" : "deny";
  o["verdict"] = policy::verdict_name(d.verdict);
  json::array rules;
  if (d.rule >= 0) rules.emplace_back(e.egress_rule_id(d.rule));
  if (d.flow >= 0) rules.emplace_back(e.flow_rule_id(d.flow));
  o["rules"] = std::move(rules);
  json::array shadow;
  for (uint8_t i = 0; i < d.shadow_count; ++i) shadow.emplace_back(e.egress_rule_id(static_cast<int32_t>(d.shadow[i])));
  o["shadow_rules"] = std::move(shadow);
  if (!d.address_class.empty()) o["address_class"] = d.address_class;
  o["bundle_version"] = d.bundle_version;
  o["reason"] = e.explain_egress(d, q);
  return o;
}

int decide(const Args& args) {
  po::options_description d("decide");
  add_node_options(d);
  d.add_options()("bundle", po::value<std::string>(), "bundle file (default: the node's installed bundle)")(
      "request", po::value<std::string>()->required(), "request (JSON; - for standard input)")(
      "trust", po::value<std::string>(), "also verify the bundle's signatures")(
      "mode", po::value<std::string>(), "normal, safe_set or deny_all (default: normal, or what the node's bundle "
                                        "status dictates)")("json", "print JSON");
  auto vm = parse(args, "outpost decide [--bundle B] --request R.json [--trust T] [--json]", d);
  if (!vm) return kExitOk;
  std::shared_ptr<const policy::Engine> engine;
  policy::Mode mode = policy::Mode::normal;
  if (vm->count("bundle")) {
    std::optional<std::string> trust;
    if (vm->count("trust")) trust = (*vm)["trust"].as<std::string>();
    auto e = engine_of((*vm)["bundle"].as<std::string>(), trust);
    if (!e) return report(e.error());
    engine = *e;
  } else {
    // The node's own view: the installed bundle, re-verified, with its on-expiry behaviour.
    auto n = open_node_store(*vm);
    if (!n) return report(n.error());
    auto store = store_of(*n);
    auto loaded = store.load(*n->tpm, n->root, unix_now());
    if (!loaded) return report(loaded.error());
    auto e = policy::Engine::build(loaded->bundle.payload());
    if (!e) return report(e.error());
    engine = *e;
    if (!loaded->status.in_force) mode = loaded->status.safe_set ? policy::Mode::safe_set : policy::Mode::deny_all;
  }
  if (vm->count("mode")) {
    auto m = mode_of((*vm)["mode"].as<std::string>());
    if (!m) return report(m.error());
    mode = *m;
  }
  std::string path = (*vm)["request"].as<std::string>();
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    auto t = read_text_file(path, 16 << 20);
    if (!t) return report(t.error());
    text = std::move(*t);
  }
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return report(usage_error(path + ": not JSON: " + ec.message()));
  auto req = policy::OwnedRequest::parse(v, unix_now());
  if (!req) return report(req.error().wrap(path));
  policy::Decision dec = engine->decide((*req)->get(), mode);
  json::object o = decision_json(*engine, dec, (*req)->get());
  if (vm->count("json")) {
    std::cout << json::serialize(o) << "\n";
  } else {
    std::cout << (dec.allow ? "ALLOW" : "DENY ") << "  " << std::string(o["reason"].as_string()) << "\n";
  }
  return kExitOk;  // a deny is an answer, not a failure
}

int policy_test(const Args& args) {
  po::options_description d("policy test");
  d.add_options()("cases", po::value<std::string>()->required(), "test cases (YAML)")(
      "bundle", po::value<std::string>()->required(), "bundle file")(
      "trust", po::value<std::string>(), "also verify the bundle's signatures");
  auto vm = parse(args, "outpost policy test CASES.yaml --bundle B [--trust T]", d, {"cases"});
  if (!vm) return kExitOk;
  std::optional<std::string> trust;
  if (vm->count("trust")) trust = (*vm)["trust"].as<std::string>();
  auto engine = engine_of((*vm)["bundle"].as<std::string>(), trust);
  if (!engine) return report(engine.error());
  const std::string path = (*vm)["cases"].as<std::string>();
  auto text = read_text_file(path, 16 << 20);
  if (!text) return report(text.error());
  YAML::Node root;
  try {
    root = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    return report(usage_error(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg));
  }
  YAML::Node cases = root.IsMap() ? root["cases"] : YAML::Node();
  if (!cases || !cases.IsSequence()) return report(usage_error(path + ": expected a mapping with a \"cases\" list"));
  int passed = 0, failed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const YAML::Node c = cases[i];
    const std::string where = path + ":" + std::to_string(c.Mark().line + 1);
    const bool egress = c.IsMap() && c["egress"];
    if (!c.IsMap() || !(c["request"] || egress) || !c["expect"] || !c["expect"].IsScalar()) {
      return report(usage_error(where + ": a case needs \"request\" (a tool call) or \"egress\" (a connection) and \"expect: allow|deny\""));
    }
    const std::string name = c["name"] && c["name"].IsScalar() ? c["name"].Scalar() : "case " + std::to_string(i + 1);
    const std::string expect = c["expect"].Scalar();
    if (expect != "allow" && expect != "deny") return report(usage_error(where + ": expect must be allow or deny"));
    auto mode = mode_of(c["mode"] && c["mode"].IsScalar() ? c["mode"].Scalar() : "normal");
    if (!mode) return report(mode.error().wrap(where));
    auto request_json = yaml_to_json(egress ? c["egress"] : c["request"]);
    if (!request_json) return report(request_json.error().wrap(where));
    bool allowed = false;
    std::vector<std::string> got_rules;
    json::object detail;
    if (egress) {
      auto req = policy::OwnedEgressRequest::parse(*request_json, unix_now());
      if (!req) return report(req.error().wrap(where));
      policy::EgressDecision dec = (*engine)->decide_egress((*req)->get(), *mode);
      allowed = dec.allow;
      if (dec.rule >= 0) got_rules.push_back((*engine)->egress_rule_id(dec.rule));
      if (dec.flow >= 0) got_rules.push_back((*engine)->flow_rule_id(dec.flow));
      detail = egress_decision_json(**engine, dec, (*req)->get());
    } else {
      auto req = policy::OwnedRequest::parse(*request_json, unix_now());
      if (!req) return report(req.error().wrap(where));
      policy::Decision dec = (*engine)->decide((*req)->get(), *mode);
      allowed = dec.allow;
      for (uint8_t k = 0; k < dec.rule_count; ++k) got_rules.push_back((*engine)->rule_id(dec, dec.rules[k]));
      detail = decision_json(**engine, dec, (*req)->get());
    }
    bool ok = allowed == (expect == "allow");
    std::vector<std::string> want_rules;
    if (c["rules"] && c["rules"].IsSequence()) {
      for (const auto& r : c["rules"]) want_rules.push_back(r.as<std::string>(""));
    }
    if (!want_rules.empty() && want_rules != got_rules) ok = false;
    if (ok) {
      ++passed;
      std::cout << "ok    " << name << "\n";
      continue;
    }
    ++failed;
    std::cout << "FAIL  " << name << " (" << where << ")\n"
              << "      " << (egress ? "egress    " : "request   ") << json::serialize(*request_json) << "\n"
              << "      expected  " << expect;
    if (!want_rules.empty()) {
      std::cout << " by";
      for (const auto& r : want_rules) std::cout << " " << r;
    }
    std::cout << "\n      actual    " << json::serialize(detail) << "\n";
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 ? kExitOk : kExitFailure;
}

// ---- status ----

int status(const Args& args) {
  po::options_description d("status");
  add_node_options(d);
  d.add_options()("json", "print JSON");
  auto vm = parse(args, "outpost status [--state DIR] [--json]", d);
  if (!vm) return kExitOk;
  // While outpostd runs it owns the TPM and knows the agents: ask it.
  if (auto ctx = resolve_node(*vm)) {
    const std::filesystem::path socket = daemon::default_socket(ctx->state_dir);
    if (daemon_running(socket)) {
      auto r = daemon::call_api(socket, {{"op", "status"}});
      if (!r) return report(r.error());
      r->erase("ok");
      if (vm->count("json")) {
        std::cout << json::serialize(*r) << "\n";
        return kExitOk;
      }
      std::cout << "node          " << std::string(r->at("node_id").as_string()) << " (board "
                << std::string(r->at("board").as_string()) << "), served by outpostd\n";
      if (r->at("bundle").is_object()) {
        const auto& b = r->at("bundle").as_object();
        std::cout << "bundle        v" << b.at("version").to_number<uint64_t>() << ", mode " << std::string(b.at("mode").as_string())
                  << ", valid until " << std::string(b.at("not_after").as_string()) << ", offline budget left "
                  << b.at("offline_left_s").to_number<int64_t>() / 3600 << " h"
                  << (b.at("reason").as_string().empty() ? "" : " (" + std::string(b.at("reason").as_string()) + ")") << "\n";
      } else {
        std::cout << "bundle        none installed: every tool call is denied\n";
      }
      if (const auto* t = r->if_contains("tpm"); t != nullptr && t->is_object()) {
        const auto& o = t->as_object();
        std::cout << "tpm           " << (o.at("connected").as_bool() ? "connected" : "RECONNECTING");
        if (o.at("reconnects").to_number<uint64_t>() > 0 || !o.at("last_error").as_string().empty()) {
          std::cout << " (" << o.at("reconnects").to_number<uint64_t>() << " reconnects; last failure "
                    << std::string(o.at("last_failure").as_string()) << ": " << std::string(o.at("last_error").as_string()) << ")";
        }
        std::cout << "\n";
      }
      if (const auto* sb = r->if_contains("sandbox"); sb != nullptr && sb->is_object() && !sb->as_object().at("isolation").as_bool()) {
        std::cout << "sandbox       AGENTS NOT LAUNCHED: isolation needs " << std::string(sb->as_object().at("missing").as_string()) << "\n";
      }
      if (const auto* eg = r->if_contains("egress"); eg != nullptr && eg->is_object()) {
        for (const auto& [name, e] : eg->as_object()) {
          std::cout << "egress        " << std::string(name) << ": " << e.at("allowed").to_number<uint64_t>() << " allowed, "
                    << e.at("refused").to_number<uint64_t>() << " refused, " << e.at("open").to_number<uint64_t>() << " open\n";
        }
      }
      std::cout << "agents        " << r->at("agents").to_number<int64_t>() << ", MCP connections " << r->at("connections").to_number<int64_t>()
                << ", audit records " << r->at("decisions").to_number<int64_t>() << "\n";
      if (const auto* a = r->if_contains("audit"); a != nullptr && a->is_object()) {
        const auto& o = a->as_object();
        std::cout << "audit log     " << o.at("durable_seq").to_number<uint64_t>() << " records durable, last checkpoint at "
                  << o.at("checkpoint_seq").to_number<uint64_t>() << ", " << o.at("disk_bytes").to_number<uint64_t>() / 1024
                  << " KiB of " << o.at("budget_bytes").to_number<uint64_t>() / 1024 << " KiB";
        if (!o.at("refusing").as_string().empty()) {
          std::cout << "; REFUSING RECORDS: " << std::string(o.at("refusing").as_string())
                    << (o.at("agents_paused").as_bool() ? " (agents paused)" : "");
        }
        std::cout << "\n";
      }
      if (const auto* sv = r->if_contains("sync"); sv != nullptr && sv->is_object()) {
        const auto& o = sv->as_object();
        const std::string contact(o.at("last_contact").as_string()), error(o.at("last_error").as_string());
        std::cout << "hub           " << std::string(o.at("hub").as_string()) << ": backlog "
                  << o.at("backlog").to_number<uint64_t>() << " records (acknowledged through "
                  << o.at("acked_seq").to_number<uint64_t>() << "), last contact " << (contact.empty() ? "never" : contact);
        if (const auto* att = o.if_contains("last_attested"); att && att->is_string() && !att->as_string().empty()) {
          std::cout << ", attested " << std::string(att->as_string());
        }
        if (const auto* f = o.if_contains("fleet"); f && f->is_string() && !f->as_string().empty()) {
          std::cout << ", fleet " << std::string(f->as_string());
        }
        if (!error.empty()) {
          std::cout << "; failing: " << error << " (next attempt " << std::string(o.at("next_attempt").as_string()) << ")";
        }
        std::cout << "\n";
      } else {
        std::cout << "hub           none configured (records stay on this node)\n";
      }
      return kExitOk;
    }
  }
  auto n = open_node_store(*vm);
  if (!n) return report(n.error());
  auto store = store_of(*n);
  const int64_t now = unix_now();
  auto loaded = store.load(*n->tpm, n->root, now);
  auto tpm_info = n->tpm->read_clock();
  if (vm->count("json")) {
    json::object o;
    o["node_id"] = n->id.node_id;
    o["spiffe_id"] = n->id.spiffe_id;
    o["tpm"] = tpm_info ? "ok" : tpm_info.error().message();
    o["trust_root_version"] = n->root.version;
    if (loaded) {
      o["bundle"] = status_json(loaded->status);
    } else {
      o["bundle"] = nullptr;
      o["bundle_error"] = loaded.error().message();
    }
    std::cout << json::serialize(o) << "\n";
    return loaded || loaded.error().is(errc::not_found) ? kExitOk : kExitFailure;
  }
  std::cout << "node          " << n->id.spiffe_id << "\n"
            << "tpm           " << (tpm_info ? "answering" : tpm_info.error().message()) << "\n"
            << "trust root    v" << n->root.version << " (threshold " << n->root.threshold << " of "
            << n->root.keys.size() << ")\n";
  if (!loaded) {
    std::cout << "bundle        none: " << loaded.error().message() << "\n";
    return loaded.error().is(errc::not_found) ? kExitOk : kExitFailure;
  }
  print_status(loaded->status, now);
  return kExitOk;
}

}  // namespace

int keygen_command(const Args& args) { return keygen(args); }

int trust_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost trust init|rotate|sign|pin|update [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "init") return trust_init(rest, false);
  if (args[0] == "rotate") return trust_init(rest, true);
  if (args[0] == "sign") return trust_sign(rest);
  if (args[0] == "pin") return trust_install(rest, false);
  if (args[0] == "update") return trust_install(rest, true);
  throw UsageError("unknown trust command \"" + args[0] + "\" (init, rotate, sign, pin, update)");
}

int bundle_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost bundle build|sign|inspect|verify|install|publish [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "build") return bundle_build(rest);
  if (args[0] == "sign") return bundle_sign(rest);
  if (args[0] == "inspect") return bundle_inspect(rest);
  if (args[0] == "verify") return bundle_verify(rest);
  if (args[0] == "install") return bundle_install(rest);
  if (args[0] == "publish") return bundle_publish_command(rest);
  throw UsageError("unknown bundle command \"" + args[0] + "\" (build, sign, inspect, verify, install, publish)");
}

int decide_command(const Args& args) { return decide(args); }

int policy_command(const Args& args) {
  if (args.empty() || args[0] != "test") throw UsageError("usage: outpost policy test CASES.yaml --bundle B");
  return policy_test(Args(args.begin() + 1, args.end()));
}

int status_command(const Args& args) { return status(args); }

// outpostd's Prometheus exposition, as its metrics listener serves it (docs/daemon.md,
// "Metrics"): for node_exporter's textfile collector, or a look by hand.
int metrics_command(const Args& args) {
  po::options_description d("metrics");
  add_node_options(d);
  auto vm = parse(args, "outpost metrics [--state DIR]", d);
  if (!vm) return kExitOk;
  auto ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  const std::filesystem::path socket = daemon::default_socket(ctx->state_dir);
  if (!daemon_running(socket)) return report(Error(make_error_code(errc::not_found), "outpostd is not running (no " + socket.string() + ")"));
  auto r = daemon::call_api(socket, {{"op", "metrics"}});
  if (!r) return report(r.error());
  std::cout << std::string(r->at("text").as_string());
  return kExitOk;
}

}  // namespace outpost::cli
