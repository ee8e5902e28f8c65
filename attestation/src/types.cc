#include "outpost/attestation/types.h"

#include <algorithm>
#include <charconv>

#include "outpost/base/errors.h"

namespace outpost::attestation {
namespace {
struct AlgName {
  uint16_t alg;
  std::string_view name;
  size_t size;
};
constexpr AlgName kAlgs[] = {
    {hash_alg::sha1, "sha1", 20},
    {hash_alg::sha256, "sha256", 32},
    {hash_alg::sha384, "sha384", 48},
    {hash_alg::sha512, "sha512", 64},
};
}  // namespace

std::string_view hash_alg_name(uint16_t alg) {
  for (const auto& a : kAlgs) {
    if (a.alg == alg) return a.name;
  }
  return "unknown-alg";
}

Result<uint16_t> hash_alg_from_name(std::string_view name) {
  for (const auto& a : kAlgs) {
    if (a.name == name) return a.alg;
  }
  return fail(errc::invalid_argument, "unknown hash algorithm \"" + std::string(name) + "\"");
}

size_t hash_alg_digest_size(uint16_t alg) {
  for (const auto& a : kAlgs) {
    if (a.alg == alg) return a.size;
  }
  return 0;
}

Result<PcrSelections> parse_pcr_selection(std::string_view text) {
  PcrSelections out;
  while (!text.empty()) {
    size_t plus = text.find('+');
    std::string_view bank = text.substr(0, plus);
    text = plus == std::string_view::npos ? std::string_view() : text.substr(plus + 1);
    size_t colon = bank.find(':');
    if (colon == std::string_view::npos) {
      return fail(errc::invalid_argument, "PCR selection \"" + std::string(bank) + "\" lacks \"bank:\"");
    }
    PcrSelection sel;
    OUTPOST_TRY(sel.hash_alg, hash_alg_from_name(bank.substr(0, colon)));
    std::string_view list = bank.substr(colon + 1);
    while (!list.empty()) {
      size_t comma = list.find(',');
      std::string_view item = list.substr(0, comma);
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      uint32_t pcr = 0;
      auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), pcr);
      if (ec != std::errc() || ptr != item.data() + item.size() || pcr > 23) {
        return fail(errc::invalid_argument, "bad PCR index \"" + std::string(item) + "\" (0..23)");
      }
      sel.pcrs.push_back(pcr);
    }
    if (sel.pcrs.empty()) return fail(errc::invalid_argument, "PCR selection names a bank with no PCRs");
    std::sort(sel.pcrs.begin(), sel.pcrs.end());
    sel.pcrs.erase(std::unique(sel.pcrs.begin(), sel.pcrs.end()), sel.pcrs.end());
    for (const auto& s : out) {
      if (s.hash_alg == sel.hash_alg) return fail(errc::invalid_argument, "PCR bank selected twice");
    }
    out.push_back(std::move(sel));
  }
  if (out.empty()) return fail(errc::invalid_argument, "empty PCR selection");
  return out;
}

std::string format_pcr_selection(const PcrSelections& sel) {
  std::string out;
  for (const auto& s : sel) {
    if (!out.empty()) out += '+';
    out += hash_alg_name(s.hash_alg);
    out += ':';
    for (size_t i = 0; i < s.pcrs.size(); ++i) {
      if (i) out += ',';
      out += std::to_string(s.pcrs[i]);
    }
  }
  return out;
}

PcrSelections selection_of(const PcrValues& values) {
  PcrSelections out;
  for (const auto& bank : values) {
    PcrSelection s;
    s.hash_alg = bank.hash_alg;
    for (const auto& [pcr, v] : bank.values) s.pcrs.push_back(pcr);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace outpost::attestation
