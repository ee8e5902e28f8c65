// outpost-hub: `outpost-hub --config FILE [--port-file F]` serves; `outpost-hub init DIR` makes
// a development setup (docs/hub.md).
#include <cstdio>
#include <string>
#include <vector>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/hub/hub.h"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: outpost-hub --config FILE [--port-file F]   serve\n"
               "       outpost-hub init DIR [--name HOST]... [--bundle-trust T]\n"
               "                                                  a development CA, certificate, tokens and hub.yaml\n"
               "       outpost-hub token --role operator|responder|iam --name WHO --out FILE\n"
               "                                                  a new credential: the token in FILE (0600), its\n"
               "                                                  hub.yaml entry on stdout\n");
  return 2;
}

int die(const outpost::Error& e) {
  std::fprintf(stderr, "outpost-hub: %s\n", e.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  outpost::log::configure_from_env();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage();
  if (args[0] == "init") {
    if (args.size() < 2) return usage();
    std::vector<std::string> names;
    std::string trust;
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "--name" && i + 1 < args.size()) {
        names.push_back(args[++i]);
      } else if (args[i] == "--bundle-trust" && i + 1 < args.size()) {
        trust = args[++i];
      } else {
        return usage();
      }
    }
    auto r = outpost::hub::init_hub_dir(args[1], names, trust);
    if (!r) return die(r.error());
    std::printf("hub config: %s\nhub key pin (sha256 of the certificate's public key): %s\n", r->config.c_str(),
                r->pin_sha256.c_str());
    return 0;
  }
  if (args[0] == "token") {
    std::string role, name, out;
    for (size_t i = 1; i + 1 < args.size(); i += 2) {
      if (args[i] == "--role") {
        role = args[i + 1];
      } else if (args[i] == "--name") {
        name = args[i + 1];
      } else if (args[i] == "--out") {
        out = args[i + 1];
      } else {
        return usage();
      }
    }
    if (args.size() % 2 == 0 || name.empty() || out.empty() || (role != "operator" && role != "responder" && role != "iam")) {
      return usage();
    }
    if (outpost::file_exists(out)) return die(outpost::Error(make_error_code(outpost::errc::already_exists), out + " exists; a token is never written over"));
    const std::string token = outpost::hub::make_token();
    auto w = outpost::write_file_atomic(out, token + "\n", 0600);
    if (!w) return die(w.error());
    std::printf("# add to hub.yaml's credentials (the token itself is in %s):\n  - name: %s\n    role: %s\n    token_sha256: %s\n",
                out.c_str(), name.c_str(), role.c_str(), outpost::hub::token_sha256(token).c_str());
    return 0;
  }
  std::string config, port_file;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      config = args[++i];
    } else if (args[i] == "--port-file" && i + 1 < args.size()) {
      port_file = args[++i];
    } else {
      return usage();
    }
  }
  if (config.empty()) return usage();
  auto c = outpost::hub::load_hub_config(config);
  if (!c) return die(c.error());
  auto hub = outpost::hub::Hub::create(std::move(*c));
  if (!hub) return die(hub.error());
  if (!port_file.empty()) {
    auto w = outpost::write_file_atomic(port_file, std::to_string((*hub)->port()) + "\n");
    if (!w) return die(w.error());
  }
  auto r = (*hub)->run(true);
  if (!r) return die(r.error());
  return 0;
}
