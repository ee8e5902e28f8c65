// outpost attest quote | verify
#include <boost/json.hpp>
#include <iostream>

#include "cli.h"
#include "daemon/api.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;

void print_clock(const attestation::ClockInfo& c) {
  std::cout << "clock         " << c.clock << " ms, resetCount " << c.reset_count << ", restartCount "
            << c.restart_count << ", safe " << (c.safe ? "yes" : "no") << "\n";
}

int quote(const Args& args) {
  po::options_description d("attest quote");
  add_node_options(d);
  d.add_options()("nonce", po::value<std::string>()->required(), "qualifying data, hex (1-64 bytes)")(
      "out", po::value<std::string>()->required(), "directory for attest.bin, signature.bin, pcrs.bin, pcrs.yaml, ak.pem")(
      "pcrs", po::value<std::string>(), "PCR selection, e.g. sha256:0,1,23 (default: the board's)");
  auto vm = parse(args, "outpost attest quote --nonce HEX --out DIR [--pcrs SEL]", d);
  if (!vm) return kExitOk;
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) return report(ctx.error());
  auto nonce = parse_nonce((*vm)["nonce"].as<std::string>());
  if (!nonce) return report(nonce.error());
  std::string sel_text = vm->count("pcrs") ? (*vm)["pcrs"].as<std::string>() : ctx->board.quote_selection();
  auto selection = attestation::parse_pcr_selection(sel_text);
  if (!selection) return report(selection.error().wrap("--pcrs"));
  const std::filesystem::path out = (*vm)["out"].as<std::string>();
  if (const auto socket = daemon::default_socket(ctx->state_dir); daemon_running(socket)) {
    if (auto r = quote_through_daemon(socket, *nonce, attestation::format_pcr_selection(*selection), out); !r) {
      return report(r.error().wrap("attest quote (through outpostd)"));
    }
    std::cout << "quote written to " << out.string() << " (taken by outpostd)\n"
              << "pcrs          " << attestation::format_pcr_selection(*selection) << "\n"
              << "nonce         " << hex_encode(*nonce) << "\n";
    return kExitOk;
  }
  auto id = attestation::load_identity(ctx->state_dir);
  if (!id) return report(id.error());
  auto tpm = connect_tpm(*ctx);
  if (!tpm) return report(tpm.error());
  if (auto match = attestation::check_tpm_matches(**tpm, *id); !match) return report(match.error());
  auto q = (*tpm)->quote(id->handles.ak, *selection, *nonce);
  if (!q) return report(q.error().wrap("attest quote"));
  if (auto w = attestation::write_quote_dir(out, {q->signed_attest, q->pcrs}, id->ak_public); !w) {
    return report(w.error());
  }
  auto parsed = attestation::parse_attest(q->signed_attest.attest);
  if (!parsed) return report(parsed.error());
  std::cout << "quote written to " << out.string() << "\n"
            << "pcrs          " << attestation::format_pcr_selection(*selection) << "\n"
            << "nonce         " << hex_encode(*nonce) << "\n";
  print_clock(parsed->clock);
  return kExitOk;
}

}  // namespace

Result<CheckedQuote> read_and_verify_quote(const std::string& dir, const std::string& ak_pem, ByteView nonce) {
  OUTPOST_TRY(std::string pem, read_text_file(ak_pem, 64 << 10));
  auto ak = EcPublicKey::from_pem(pem);
  if (!ak) return fail(ak.error().wrap("--ak"));
  CheckedQuote out;
  OUTPOST_TRY(out.files, attestation::read_quote_dir(dir));
  auto parsed = attestation::verify_quote(out.files.quote, *ak, nonce, out.files.pcrs);
  if (!parsed) return fail(parsed.error().wrap("quote rejected"));
  out.attest = std::move(*parsed);
  return out;
}

namespace {

int verify(const Args& args) {
  po::options_description d("attest verify");
  d.add_options()("dir", po::value<std::string>()->required(), "quote directory")(
      "ak", po::value<std::string>()->required(), "AK public key, PEM")(
      "nonce", po::value<std::string>()->required(), "the nonce the quote must carry, hex")(
      "json", "print the result as JSON");
  auto vm = parse(args, "outpost attest verify DIR --ak ak.pem --nonce HEX [--json]", d, {"dir"});
  if (!vm) return kExitOk;
  auto nonce = parse_nonce((*vm)["nonce"].as<std::string>());
  if (!nonce) return report(nonce.error());
  auto checked = read_and_verify_quote((*vm)["dir"].as<std::string>(), (*vm)["ak"].as<std::string>(), *nonce);
  if (!checked) return report(checked.error());
  const attestation::ParsedAttest* result = &checked->attest;
  if (vm->count("json")) {
    json::object o;
    o["verified"] = true;
    o["pcrs"] = attestation::format_pcr_selection(result->pcr_select);
    o["pcr_digest"] = hex_encode(result->pcr_digest);
    o["nonce"] = hex_encode(result->extra_data);
    o["clock"] = result->clock.clock;
    o["reset_count"] = result->clock.reset_count;
    o["restart_count"] = result->clock.restart_count;
    o["safe"] = result->clock.safe;
    o["firmware_version"] = result->firmware_version;
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  std::cout << "quote verified: signature by the AK, nonce, PCR selection and PCR digest all match\n"
            << "pcrs          " << attestation::format_pcr_selection(result->pcr_select) << "\n"
            << "pcr digest    " << hex_encode(result->pcr_digest) << "\n";
  print_clock(result->clock);
  return kExitOk;
}

}  // namespace

int attest_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost attest quote|verify [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "quote") return quote(rest);
  if (args[0] == "verify") return verify(rest);
  throw UsageError("unknown attest command \"" + args[0] + "\" (quote, verify)");
}

}  // namespace outpost::cli
