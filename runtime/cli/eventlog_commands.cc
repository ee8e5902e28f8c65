// outpost eventlog show | replay: the firmware's boot event log, listed and replayed.
#include <boost/json.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli.h"
#include "outpost/base/files.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/attestation/verifier.h"
#include "outpost/base/errors.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "outpost/firmware_hooks/runtime_log.h"

namespace outpost::cli {
namespace {

namespace json = boost::json;
namespace fh = firmware_hooks;

constexpr const char* kDefaultLog = "/sys/kernel/security/tpm0/binary_bios_measurements";

Result<fh::EventLog> load(const std::string& path) {
  // securityfs reports size 0 for the log; read_file reads to the end regardless.
  OUTPOST_TRY(Bytes bytes, read_file(path, fh::kMaxLogSize));
  Result<fh::EventLog> log = fh::parse_event_log(bytes);
  if (!log) return fail(log.error().wrap(path));
  return log;
}

po::options_description file_options(const char* name) {
  po::options_description d(name);
  d.add_options()("file", po::value<std::string>()->default_value(kDefaultLog), "the binary event log")(
      "json", "print JSON");
  return d;
}

// outpost's runtime measurement log is JSON lines; a TCG log is binary and never starts with '{'.
bool is_runtime_log(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f && f.peek() == '{';
}

Result<fh::RuntimeLog> load_runtime(const std::string& path) {
  OUTPOST_TRY(std::string text, read_text_file(path, fh::kMaxRuntimeLogBytes));
  Result<fh::RuntimeLog> log = fh::parse_runtime_log(text);
  if (!log) return fail(log.error().wrap(path));
  return log;
}

int show_runtime(const std::string& path, bool as_json) {
  auto log = load_runtime(path);
  if (!log) return report(log.error());
  if (as_json) {
    json::array entries;
    for (const auto& e : log->entries) {
      entries.push_back(json::object{{"seq", e.seq}, {"kind", e.kind}, {"name", e.name}, {"sha256", hex_encode(e.digest)},
                                     {"template", hex_encode(e.template_hash)}, {"time", e.time}});
    }
    json::object o{{"format", "outpost-runtime"}, {"pcr", log->header.pcr}, {"reset_count", log->header.reset_count},
                   {"restart_count", log->header.restart_count}, {"started", log->header.started},
                   {"entries", std::move(entries)}};
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  std::cout << "outpost runtime measurement log, sha256 PCR " << log->header.pcr << ", TPM boot (resetCount "
            << log->header.reset_count << ", restartCount " << log->header.restart_count << "), started "
            << log->header.started << ", " << log->entries.size() << " entries\n";
  for (const auto& e : log->entries) {
    char head[64];
    std::snprintf(head, sizeof head, "%4llu  %-9s", static_cast<unsigned long long>(e.seq), e.kind.c_str());
    std::cout << head << " sha256:" << hex_encode(e.digest).substr(0, 16) << "  " << e.name << "  " << e.time << "\n";
  }
  return kExitOk;
}

int replay_runtime(const std::string& path, bool as_json) {
  auto log = load_runtime(path);
  if (!log) return report(log.error());
  const std::string value = hex_encode(fh::replay_runtime_log(*log));
  if (as_json) {
    json::object pcrs{{std::to_string(log->header.pcr), value}};
    std::cout << json::serialize(json::object{{"sha256", std::move(pcrs)}}) << "\n";
  } else {
    std::cout << "sha256:\n  " << log->header.pcr << " : 0x" << value << "\n";
  }
  return kExitOk;
}

std::string format_name(fh::LogFormat f) { return f == fh::LogFormat::crypto_agile ? "crypto-agile" : "sha1"; }

int show(const Args& args) {
  auto vm = parse(args, "outpost eventlog show [FILE] [--json]", file_options("eventlog show"), {"file"});
  if (!vm) return kExitOk;
  if (is_runtime_log((*vm)["file"].as<std::string>())) return show_runtime((*vm)["file"].as<std::string>(), vm->count("json") > 0);
  auto log = load((*vm)["file"].as<std::string>());
  if (!log) return report(log.error());
  if (vm->count("json")) {
    json::object o;
    o["format"] = format_name(log->format);
    json::array algs;
    if (log->spec_id) {
      for (const auto& a : log->spec_id->algorithms) {
        json::object alg;
        alg["alg"] = fh::alg_name(a.alg);
        alg["digest_size"] = a.digest_size;
        algs.push_back(std::move(alg));
      }
    } else {
      json::object alg;
      alg["alg"] = "sha1";
      alg["digest_size"] = 20;
      algs.push_back(std::move(alg));
    }
    o["algorithms"] = std::move(algs);
    json::array events;
    for (const auto& e : log->events) {
      json::object digests;
      for (const auto& d : e.digests) digests[fh::alg_name(d.alg)] = hex_encode(d.digest);
      json::object ev;
      ev["index"] = e.index;
      ev["offset"] = e.offset;
      ev["pcr"] = e.pcr;
      ev["type"] = fh::event_type_name(e.type);
      ev["type_value"] = e.type;
      ev["digests"] = std::move(digests);
      ev["size"] = e.data.size();
      ev["detail"] = fh::describe_event(e);
      events.push_back(std::move(ev));
    }
    o["events"] = std::move(events);
    std::cout << json::serialize(o) << "\n";
    return kExitOk;
  }
  std::cout << format_name(log->format) << " log, " << log->events.size() << " events, banks";
  for (uint16_t b : log->banks()) std::cout << " " << fh::alg_name(b);
  std::cout << "\n";
  for (const auto& e : log->events) {
    char head[96];
    std::snprintf(head, sizeof head, "%4zu  pcr %2u  %-34s", e.index, e.pcr, fh::event_type_name(e.type).c_str());
    std::cout << head;
    for (const auto& d : e.digests) std::cout << " " << fh::alg_name(d.alg) << ":" << hex_encode(d.digest).substr(0, 8);
    std::cout << "  " << fh::describe_event(e) << "\n";
  }
  return kExitOk;
}

int replay(const Args& args) {
  auto vm = parse(args, "outpost eventlog replay [FILE] [--json]", file_options("eventlog replay"), {"file"});
  if (!vm) return kExitOk;
  if (is_runtime_log((*vm)["file"].as<std::string>())) return replay_runtime((*vm)["file"].as<std::string>(), vm->count("json") > 0);
  auto log = load((*vm)["file"].as<std::string>());
  if (!log) return report(log.error());
  auto replayed = fh::replay(*log);
  if (!replayed) return report(replayed.error().wrap("replay"));
  // Only PCRs the log touches (an extend or a startup locality), only banks with any: the
  // same selection tpm2_eventlog prints.
  const bool as_json = vm->count("json") > 0;
  json::object o;
  for (const auto& entry : *replayed) {
    const fh::BankReplay& bank = entry.second;
    json::object pcrs;
    for (uint32_t i = 0; i < fh::kPcrCount; ++i) {
      if (bank.pcrs[i].touched()) pcrs[std::to_string(i)] = hex_encode(bank.pcrs[i].value);
    }
    if (pcrs.empty()) continue;
    if (as_json) {
      o[fh::alg_name(bank.alg)] = std::move(pcrs);
      continue;
    }
    std::cout << fh::alg_name(bank.alg) << ":\n";
    for (const auto& p : pcrs) {
      char index[8];
      std::snprintf(index, sizeof index, "%3s", std::string(p.key()).c_str());
      std::cout << "  " << index << " : " << p.value().as_string().c_str() << "\n";
    }
  }
  if (as_json) std::cout << json::serialize(o) << "\n";
  return kExitOk;
}

std::string_view verdict_name(fh::PcrComparison::Verdict v) {
  switch (v) {
    case fh::PcrComparison::Verdict::match: return "match";
    case fh::PcrComparison::Verdict::log_has_extra: return "log_has_extra";
    case fh::PcrComparison::Verdict::no_prefix_matches: return "no_prefix_matches";
    case fh::PcrComparison::Verdict::bank_not_in_log: return "bank_not_in_log";
  }
  return "?";
}

// --expect agent/NAME=HEX | outpostd=HEX | config=HEX
Result<fh::RuntimeExpectations> parse_expectations(const std::vector<std::string>& items) {
  fh::RuntimeExpectations out;
  for (const auto& item : items) {
    size_t eq = item.find('=');
    if (eq == std::string::npos) return fail(errc::invalid_argument, "--expect " + item + ": want WHAT=SHA256HEX");
    auto bytes = hex_decode(item.substr(eq + 1));
    if (!bytes || bytes->size() != 32) return fail(errc::invalid_argument, "--expect " + item + ": not a SHA-256 in hex");
    Digest d;
    std::copy(bytes->begin(), bytes->end(), d.begin());
    std::string what = item.substr(0, eq);
    if (what == "outpostd") {
      out.outpostd = d;
    } else if (what == "config") {
      out.config = d;
    } else if (what.starts_with("agent/") && what.size() > 6) {
      out.agents[what.substr(6)].push_back(d);
    } else {
      return fail(errc::invalid_argument, "--expect " + item + ": WHAT is agent/NAME, outpostd or config");
    }
  }
  return out;
}

// The responder's check of a node's launches and boot against one quote, offline.
int verify(const Args& args) {
  po::options_description d("eventlog verify");
  d.add_options()("quote", po::value<std::string>()->required(), "quote directory (outpost attest quote --out)")(
      "ak", po::value<std::string>()->required(), "the node's AK public key, PEM")(
      "nonce", po::value<std::string>()->required(), "the nonce the quote must carry, hex")(
      "runtime", po::value<std::string>(), "the runtime measurement log (<state>/measurements/runtime.log)")(
      "boot", po::value<std::string>(), "the TCG boot event log (binary_bios_measurements)")(
      "expect", po::value<std::vector<std::string>>()->composing(),
      "a reference measurement: agent/NAME=SHA256 (repeat to accept several), outpostd=SHA256 or config=SHA256")(
      "json", "print the result as JSON");
  auto vm = parse(args,
                  "outpost eventlog verify --quote DIR --ak ak.pem --nonce HEX [--runtime LOG] [--boot LOG] "
                  "[--expect agent/NAME=SHA256]... [--json]",
                  d);
  if (!vm) return kExitOk;
  if (!vm->count("runtime") && !vm->count("boot")) throw UsageError("give --runtime LOG, --boot LOG or both");
  auto nonce = parse_nonce((*vm)["nonce"].as<std::string>());
  if (!nonce) return report(nonce.error());
  auto expected = parse_expectations(vm->count("expect") ? (*vm)["expect"].as<std::vector<std::string>>()
                                                         : std::vector<std::string>{});
  if (!expected) return report(expected.error());
  auto checked = read_and_verify_quote((*vm)["quote"].as<std::string>(), (*vm)["ak"].as<std::string>(), *nonce);
  if (!checked) return report(checked.error());
  const attestation::QuoteFiles* files = &checked->files;
  const attestation::ParsedAttest* quote = &checked->attest;

  const bool as_json = vm->count("json") > 0;
  bool all_ok = true;
  json::object out{{"quote", json::object{{"verified", true}, {"pcrs", attestation::format_pcr_selection(quote->pcr_select)},
                                          {"reset_count", quote->clock.reset_count},
                                          {"restart_count", quote->clock.restart_count}}}};
  if (!as_json) {
    std::cout << "quote         verified (AK signature, nonce, PCR digest), pcrs "
              << attestation::format_pcr_selection(quote->pcr_select) << "\n";
  }
  uint32_t runtime_pcr = 23;
  if (vm->count("runtime")) {
    auto log = load_runtime((*vm)["runtime"].as<std::string>());
    if (!log) return report(log.error());
    runtime_pcr = log->header.pcr;
    fh::RuntimeVerdict v = fh::verify_runtime_log(*log, files->pcrs, quote->clock, *expected);
    all_ok = all_ok && v.ok();
    json::array problems, unreferenced;
    for (const auto& p : v.problems) problems.emplace_back(p);
    for (const auto& u : v.unreferenced) unreferenced.emplace_back(u);
    out["runtime"] = json::object{{"ok", v.ok()}, {"pcr", runtime_pcr}, {"entries", log->entries.size()},
                                  {"replayed", hex_encode(v.replayed)}, {"quoted", hex_encode(v.quoted)},
                                  {"replay_matches", v.replay_matches}, {"problems", std::move(problems)},
                                  {"unreferenced_agents", std::move(unreferenced)}};
    if (!as_json) {
      std::cout << "runtime log   " << (v.ok() ? "ok" : "FAIL") << ": " << log->entries.size()
                << " entries replay sha256 PCR " << runtime_pcr << (v.replay_matches ? " to the quoted value" : "") << "\n";
      for (const auto& p : v.problems) std::cout << "  - " << p << "\n";
      for (const auto& u : v.unreferenced) std::cout << "  note: agent \"" << u << "\" has no reference measurement\n";
    }
  }
  if (vm->count("boot")) {
    auto log = load((*vm)["boot"].as<std::string>());
    if (!log) return report(log.error());
    auto replayed = fh::replay(*log);
    if (!replayed) return report(replayed.error().wrap("replay"));
    // The boot log vouches for the firmware's PCRs, not for the runtime PCR outpost extends.
    attestation::PcrValues boot_pcrs = files->pcrs;
    for (auto& bank : boot_pcrs) bank.values.erase(runtime_pcr);
    auto cmp = fh::compare_with_quote(*log, *replayed, boot_pcrs);
    if (!cmp) return report(cmp.error());
    all_ok = all_ok && cmp->all_match();
    json::array pcrs;
    for (const auto& c : cmp->pcrs) {
      json::object p{{"bank", fh::alg_name(c.alg)}, {"pcr", c.pcr}, {"verdict", verdict_name(c.verdict)}};
      if (c.first_divergent_event) p["first_divergent_event"] = *c.first_divergent_event;
      pcrs.push_back(std::move(p));
    }
    out["boot"] = json::object{{"ok", cmp->all_match()}, {"pcrs", std::move(pcrs)}};
    if (!as_json) {
      std::cout << "boot log      " << (cmp->all_match() ? "ok" : "FAIL") << ": " << log->events.size() << " events\n";
      for (const auto& c : cmp->pcrs) {
        if (c.verdict == fh::PcrComparison::Verdict::match) continue;
        std::cout << "  - " << fh::alg_name(c.alg) << " PCR " << c.pcr << ": " << verdict_name(c.verdict);
        if (c.first_divergent_event) {
          const auto& e = log->events[*c.first_divergent_event];
          std::cout << ", first divergent event " << e.index << " (" << fh::event_type_name(e.type) << ": "
                    << fh::describe_event(e) << ")";
        }
        std::cout << "\n";
      }
    }
  }
  out["ok"] = all_ok;
  if (as_json) std::cout << json::serialize(out) << "\n";
  if (!all_ok && !as_json) std::cerr << "outpost: error: the logs do not match the quote (see above)\n";
  return all_ok ? kExitOk : kExitFailure;
}

}  // namespace

int eventlog_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost eventlog show|replay [FILE] | verify --quote DIR … [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "show") return show(rest);
  if (args[0] == "replay") return replay(rest);
  if (args[0] == "verify") return verify(rest);
  throw UsageError("unknown eventlog command \"" + args[0] + "\" (show, replay, verify)");
}

}  // namespace outpost::cli
