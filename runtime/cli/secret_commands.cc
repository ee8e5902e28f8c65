// outpost secret seal | list: tool secrets sealed by the node's TPM.
//
// `seal` talks to the TPM directly, as `agent key` does, so it runs before outpostd starts or
// while it is stopped (it refuses when outpostd answers on its socket): a TPM without a
// resource manager (swtpm, a board without /dev/tpmrm0) serves one client at a time. `list`
// reads the state directory only.
#include <unistd.h>

#include <boost/json.hpp>
#include <cstring>
#include <iostream>

#include "cli.h"
#include "daemon/api.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/secrets.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;
using attestation::SecretStore;

// Reading one byte more than a secret may hold is enough to report the size; the cap keeps a
// mistaken `--in /dev/zero` bounded.
constexpr size_t kReadCap = SecretStore::kMaxSecretBytes + 1;

// Wipes the plaintext when it goes out of scope, on every path.
struct WipedBytes {
  Bytes bytes;
  ~WipedBytes() { explicit_bzero(bytes.data(), bytes.size()); }
};

Result<void> read_secret(const std::string& source, Bytes& out) {
  if (source != "-") {
    OUTPOST_TRY(out, read_file(source, kReadCap));
    return ok();
  }
  out.reserve(kReadCap + 1);  // no reallocation, so no unwiped copy left behind
  uint8_t buf[4096];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error("read the secret from stdin", errno);
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > kReadCap) {
      explicit_bzero(buf, sizeof buf);
      return fail(errc::invalid_argument, "the secret on stdin is over " + std::to_string(kReadCap) + " bytes");
    }
    out.insert(out.end(), buf, buf + n);
  }
  explicit_bzero(buf, sizeof buf);
  return ok();
}

int seal(const Args& args) {
  po::options_description d("secret seal");
  add_node_options(d);
  d.add_options()("name", po::value<std::string>()->required(), "secret name")(
      "in", po::value<std::string>()->default_value("-"), "file holding the secret, or - for stdin (taken byte for byte)");
  auto vm = parse(args,
                  "outpost secret seal NAME [--in FILE|-]   (run while outpostd is stopped: it talks to the TPM)", d,
                  {"name"});
  if (!vm) return kExitOk;
  const std::string name = (*vm)["name"].as<std::string>();
  if (auto v = SecretStore::validate_name(name); !v) return report(v.error());
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  auto id = attestation::load_identity(ctx->state_dir);
  if (!id) return report(id.error());
  if (const auto socket = daemon::default_socket(ctx->state_dir); daemon_running(socket)) {
    return report(Error(make_error_code(errc::tpm_unavailable),
                        "outpostd is running (" + socket.string() + ") and owns the TPM: stop it, seal, start it again"));
  }

  WipedBytes secret;
  if (auto r = read_secret((*vm)["in"].as<std::string>(), secret.bytes); !r) return report(r.error());
  auto tpm = connect_tpm(*ctx);
  if (!tpm) return report(tpm.error());
  if (auto match = attestation::check_tpm_matches(**tpm, *id); !match) return report(match.error());

  SecretStore store(ctx->state_dir, *id);
  bool replaced = false;
  if (auto r = store.seal(**tpm, name, secret.bytes, &replaced); !r) return report(r.error());
  std::cout << "sealed " << secret.bytes.size() << " bytes as \"" << name << "\" in " << store.path_of(name).string()
            << (replaced ? " (replaced the previous value)" : "") << "\n";
  return kExitOk;
}

int list(const Args& args) {
  po::options_description d("secret list");
  add_node_options(d);
  d.add_options()("json", "print the names as a JSON array");
  auto vm = parse(args, "outpost secret list [--state DIR] [--json]", d);
  if (!vm) return kExitOk;
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  auto id = attestation::load_identity(ctx->state_dir);
  if (!id) return report(id.error());
  auto names = SecretStore(ctx->state_dir, *id).list();
  if (!names) return report(names.error());
  if (vm->count("json")) {
    json::array a;
    for (const auto& n : *names) a.emplace_back(n);
    std::cout << json::serialize(a) << "\n";
    return kExitOk;
  }
  if (names->empty()) std::cout << "no sealed secrets in " << (ctx->state_dir / "secrets").string() << "\n";
  for (const auto& n : *names) std::cout << n << "\n";
  return kExitOk;
}

}  // namespace

int secret_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost secret seal NAME [--in FILE|-] | secret list [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "seal") return seal(rest);
  if (args[0] == "list") return list(rest);
  throw UsageError("unknown secret command \"" + args[0] + "\" (seal, list)");
}

}  // namespace outpost::cli
