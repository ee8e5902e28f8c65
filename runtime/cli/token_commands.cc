// outpost token verify: checks a call-scoped credential offline, for tool authors.
#include <unistd.h>

#include <boost/json.hpp>
#include <iostream>

#include "cli.h"
#include "credentials/jws.h"
#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/time.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// The token from the argument or, for "-", from stdin (bounded: verify() refuses anything
// over its limit anyway, so one byte more than that is enough to say so).
Result<std::string> read_token(const std::string& arg) {
  if (arg != "-") return std::string(trim(arg));
  std::string in;
  char buf[4096];
  while (in.size() <= credentials::kMaxTokenBytes + 64) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error("read the token from stdin", errno);
    if (n == 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  return std::string(trim(in));
}

// A PEM SubjectPublicKeyInfo or a JWK, whichever the file holds.
Result<EcPublicKey> read_key(const std::filesystem::path& path) {
  OUTPOST_TRY(std::string text, read_text_file(path, 64 << 10));
  Result<EcPublicKey> key = trim(text).starts_with("{") ? EcPublicKey::from_jwk(text) : EcPublicKey::from_pem(text);
  if (!key) return fail(key.error().wrap("read the public key in " + path.string()));
  return key;
}

std::string relative(int64_t t, int64_t now) {
  int64_t d = t - now;
  std::string span = std::to_string(std::abs(d) / 60) + "m " + std::to_string(std::abs(d) % 60) + "s";
  return d >= 0 ? "in " + span : span + " ago";
}

void print_claims(const credentials::CallClaims& c, int64_t now) {
  std::cout << "issuer        " << c.iss << "\n"
            << "subject       " << c.sub << "\n"
            << "audience      " << c.aud << "\n"
            << "agent         " << c.agent << "\n"
            << "task          " << c.task << "\n"
            << "args sha256   " << c.args_sha256 << "\n"
            << "bundle        version " << c.bundle_version << "\n"
            << "issued        " << format_rfc3339_utc(c.iat) << "\n"
            << "not before    " << format_rfc3339_utc(c.nbf) << "\n"
            << "expires       " << format_rfc3339_utc(c.exp) << " (" << relative(c.exp, now) << ")\n"
            << "jti           " << c.jti << "\n";
}

// With --agent, the claims must also name that agent (and the node, when its identity is in
// the state directory).
Result<void> check_subject(const credentials::CallClaims& c, const std::string& agent,
                           const std::filesystem::path& state) {
  if (c.agent != agent) {
    return fail(errc::verification_failed, "token is for agent \"" + c.agent + "\", not \"" + agent + "\"");
  }
  if (!file_exists(state / "node.json")) return ok();
  OUTPOST_TRY(attestation::NodeIdentity id, attestation::load_identity(state));
  if (c.iss != id.spiffe_id) {
    return fail(errc::verification_failed, "token issuer " + c.iss + " is not this node, " + id.spiffe_id);
  }
  if (c.sub != id.agent_spiffe_id(agent)) {
    return fail(errc::verification_failed, "token subject " + c.sub + " is not " + id.agent_spiffe_id(agent));
  }
  return ok();
}

int verify(const Args& args) {
  po::options_description d("token verify");
  d.add_options()("token", po::value<std::string>()->required(), "the token, or - to read it from stdin")(
      "key", po::value<std::string>(), "the agent's public key: PEM or JWK file")(
      "state", po::value<std::string>(), "state directory holding agents/NAME/key.pem (default: OUTPOST_STATE)")(
      "agent", po::value<std::string>(), "agent name: use its key from the state directory")(
      "audience", po::value<std::string>(), "require this audience (the tool, \"server/tool\")")(
      "json", "print the result as JSON");
  auto vm = parse(args,
                  "outpost token verify TOKEN [--key PEM_FILE | --state DIR --agent NAME] [--audience A] [--json]", d,
                  {"token"});
  if (!vm) return kExitOk;
  if (vm->count("key") == vm->count("agent")) throw UsageError("give exactly one of --key and --agent");
  if (vm->count("state") && !vm->count("agent")) throw UsageError("--state goes with --agent");
  const bool as_json = vm->count("json") > 0;
  const int64_t now = unix_now();

  auto run = [&]() -> Result<credentials::CallClaims> {
    OUTPOST_TRY(std::string token, read_token((*vm)["token"].as<std::string>()));
    EcPublicKey key;
    std::string agent;
    std::filesystem::path state;
    if (vm->count("key")) {
      OUTPOST_TRY(key, read_key((*vm)["key"].as<std::string>()));
    } else {
      agent = (*vm)["agent"].as<std::string>();
      OUTPOST_TRY_VOID(attestation::AgentKeyStore::validate_name(agent));
      OUTPOST_TRY(NodeContext ctx, resolve_node(*vm));
      state = ctx.state_dir;
      OUTPOST_TRY(key, read_key(state / "agents" / agent / "key.pem"));
    }
    const std::string audience = vm->count("audience") ? (*vm)["audience"].as<std::string>() : std::string();
    OUTPOST_TRY(credentials::CallClaims claims, credentials::verify(token, key, now, audience));
    if (!agent.empty()) OUTPOST_TRY_VOID(check_subject(claims, agent, state));
    return claims;
  };
  Result<credentials::CallClaims> claims = run();
  if (as_json) {
    json::object o;
    o["valid"] = claims.has_value();
    if (claims) {
      o["claims"] = claims->to_json();
    } else {
      o["error"] = claims.error().message();
    }
    std::cout << json::serialize(o) << "\n";
  }
  if (!claims) return report(claims.error());
  if (!as_json) {
    print_claims(*claims, now);
    std::cout << "valid\n";
  }
  return kExitOk;
}

}  // namespace

int token_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost token verify TOKEN [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "verify") return verify(rest);
  throw UsageError("unknown token command \"" + args[0] + "\" (verify)");
}

}  // namespace outpost::cli
