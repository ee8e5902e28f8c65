// outpost eventlog show | replay: the firmware's boot event log, listed and replayed.
#include <boost/json.hpp>
#include <cstdio>
#include <iostream>

#include "cli.h"
#include "outpost/base/files.h"
#include "outpost/firmware_hooks/eventlog.h"

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

std::string format_name(fh::LogFormat f) { return f == fh::LogFormat::crypto_agile ? "crypto-agile" : "sha1"; }

int show(const Args& args) {
  auto vm = parse(args, "outpost eventlog show [FILE] [--json]", file_options("eventlog show"), {"file"});
  if (!vm) return kExitOk;
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

}  // namespace

int eventlog_command(const Args& args) {
  if (args.empty()) throw UsageError("usage: outpost eventlog show|replay [FILE] [--help]");
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "show") return show(rest);
  if (args[0] == "replay") return replay(rest);
  throw UsageError("unknown eventlog command \"" + args[0] + "\" (show, replay)");
}

}  // namespace outpost::cli
