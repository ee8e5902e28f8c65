#include "outpost/boards/board.h"

#include <yaml-cpp/yaml.h>

#include <set>

#include "builtin_profiles.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::boards {
namespace {

struct Ctx {
  std::string source;
  std::string where(const YAML::Node& n) const {
    const YAML::Mark m = n.Mark();
    return source + ":" + std::to_string(m.line + 1);
  }
};

Error bad(const Ctx& c, const YAML::Node& n, const std::string& what) {
  return Error(make_error_code(errc::invalid_argument), c.where(n) + ": " + what);
}

Result<void> only_fields(const Ctx& c, const YAML::Node& map, std::string_view path,
                         std::initializer_list<std::string_view> allowed) {
  if (!map.IsMap()) return fail(bad(c, map, std::string(path) + " must be a mapping"));
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) return fail(bad(c, kv.first, std::string(path) + " has a key that is not a string"));
    std::string key = kv.first.as<std::string>();
    bool known = false;
    for (auto a : allowed) known = known || a == key;
    if (!known) return fail(bad(c, kv.first, "unknown field \"" + std::string(path) + "." + key + "\""));
  }
  return ok();
}

Result<YAML::Node> required(const Ctx& c, const YAML::Node& map, const char* key, std::string_view path) {
  YAML::Node n = map[key];
  if (!n) return fail(bad(c, map, "missing field \"" + std::string(path) + "." + key + "\""));
  return n;
}

Result<std::string> str(const Ctx& c, const YAML::Node& map, const char* key, std::string_view path) {
  OUTPOST_TRY(YAML::Node n, required(c, map, key, path));
  if (!n.IsScalar()) return fail(bad(c, n, std::string(path) + "." + key + " must be a string"));
  return n.as<std::string>();
}

Result<uint32_t> u32(const Ctx& c, const YAML::Node& map, const char* key, std::string_view path) {
  OUTPOST_TRY(YAML::Node n, required(c, map, key, path));
  try {
    // yaml-cpp reads 0x... as hex for integer conversions.
    return n.as<uint32_t>();
  } catch (const YAML::Exception&) {
    return fail(bad(c, n, std::string(path) + "." + key + " must be an unsigned 32-bit number"));
  }
}

}  // namespace

std::string BoardProfile::quote_selection() const {
  std::string s = pcr_bank + ":";
  for (size_t i = 0; i < quote_pcrs.size(); ++i) s += (i ? "," : "") + std::to_string(quote_pcrs[i]);
  return s;
}

namespace {

Result<BoardProfile> parse_board_node(const Ctx& c, const YAML::Node& root) {
  BoardProfile b;
  OUTPOST_TRY_VOID(only_fields(c, root, "board", {"name", "description", "tpm", "paths", "identity"}));
  OUTPOST_TRY(b.name, str(c, root, "name", "board"));
  OUTPOST_TRY(b.description, str(c, root, "description", "board"));

  OUTPOST_TRY(YAML::Node tpm, required(c, root, "tpm", "board"));
  OUTPOST_TRY_VOID(only_fields(c, tpm, "tpm", {"tcti", "pcr_bank", "quote_pcrs", "runtime_pcr", "handles", "nv"}));
  OUTPOST_TRY(b.tcti, str(c, tpm, "tcti", "tpm"));
  OUTPOST_TRY(b.pcr_bank, str(c, tpm, "pcr_bank", "tpm"));
  if (b.pcr_bank != "sha1" && b.pcr_bank != "sha256" && b.pcr_bank != "sha384") {
    return fail(bad(c, tpm["pcr_bank"], "tpm.pcr_bank must be sha1, sha256 or sha384"));
  }
  OUTPOST_TRY(YAML::Node pcrs, required(c, tpm, "quote_pcrs", "tpm"));
  if (!pcrs.IsSequence() || pcrs.size() == 0) {
    return fail(bad(c, pcrs, "tpm.quote_pcrs must be a non-empty list"));
  }
  std::set<uint32_t> seen;
  for (const auto& p : pcrs) {
    uint32_t v = 0;
    try {
      v = p.as<uint32_t>();
    } catch (const YAML::Exception&) {
      return fail(bad(c, p, "tpm.quote_pcrs entries must be PCR numbers"));
    }
    if (v > 23 || !seen.insert(v).second) return fail(bad(c, p, "tpm.quote_pcrs: PCR " + std::to_string(v) +
                                                                   " is out of range (0..23) or repeated"));
  }
  b.quote_pcrs.assign(seen.begin(), seen.end());
  OUTPOST_TRY(b.runtime_pcr, u32(c, tpm, "runtime_pcr", "tpm"));
  if (b.runtime_pcr > 23) return fail(bad(c, tpm["runtime_pcr"], "tpm.runtime_pcr must be 0..23"));

  OUTPOST_TRY(YAML::Node handles, required(c, tpm, "handles", "tpm"));
  OUTPOST_TRY_VOID(only_fields(c, handles, "tpm.handles", {"srk", "ek", "ak"}));
  OUTPOST_TRY(b.srk_handle, u32(c, handles, "srk", "tpm.handles"));
  OUTPOST_TRY(b.ek_handle, u32(c, handles, "ek", "tpm.handles"));
  OUTPOST_TRY(b.ak_handle, u32(c, handles, "ak", "tpm.handles"));
  for (auto [h, field] : {std::pair{b.srk_handle, "srk"}, {b.ek_handle, "ek"}, {b.ak_handle, "ak"}}) {
    if ((h >> 24) != 0x81 || h >= 0x81800000) {
      return fail(bad(c, handles[field], std::string("tpm.handles.") + field +
                                             " must be an owner-range persistent handle (0x81000000..0x817fffff)"));
    }
  }
  if (b.srk_handle == b.ek_handle || b.srk_handle == b.ak_handle || b.ek_handle == b.ak_handle) {
    return fail(bad(c, handles, "tpm.handles must be three different handles"));
  }
  OUTPOST_TRY(YAML::Node nv, required(c, tpm, "nv", "tpm"));
  OUTPOST_TRY_VOID(only_fields(c, nv, "tpm.nv", {"rollback_counter"}));
  OUTPOST_TRY(b.rollback_counter_index, u32(c, nv, "rollback_counter", "tpm.nv"));
  if ((b.rollback_counter_index >> 24) != 0x01 || b.rollback_counter_index >= 0x01400000) {
    return fail(bad(c, nv["rollback_counter"], "tpm.nv.rollback_counter must be an owner NV index (0x01000000..0x013fffff)"));
  }

  OUTPOST_TRY(YAML::Node paths, required(c, root, "paths", "board"));
  OUTPOST_TRY_VOID(only_fields(c, paths, "paths", {"state_dir"}));
  OUTPOST_TRY(b.state_dir, str(c, paths, "state_dir", "paths"));
  OUTPOST_TRY(YAML::Node identity, required(c, root, "identity", "board"));
  OUTPOST_TRY_VOID(only_fields(c, identity, "identity", {"trust_domain"}));
  OUTPOST_TRY(b.trust_domain, str(c, identity, "trust_domain", "identity"));
  return b;
}

}  // namespace

Result<BoardProfile> parse_board(std::string_view yaml, std::string_view source) {
  Ctx c{std::string(source)};
  // yaml-cpp reports by exception; none may leave this function.
  try {
    return parse_board_node(c, YAML::Load(std::string(yaml)));
  } catch (const YAML::Exception& e) {
    return fail(errc::invalid_argument, c.source + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

Result<BoardProfile> load_board(std::string_view name_or_path) {
  const bool is_path = name_or_path.find('/') != std::string_view::npos ||
                       (name_or_path.size() > 5 && name_or_path.substr(name_or_path.size() - 5) == ".yaml");
  if (is_path) {
    OUTPOST_TRY(std::string text, read_text_file(std::string(name_or_path), 1 << 20));
    return parse_board(text, name_or_path);
  }
  for (const auto& p : detail::builtin_profiles()) {
    if (p.name == name_or_path) return parse_board(p.yaml, "boards/profiles/" + std::string(p.name) + ".yaml");
  }
  std::string known;
  for (const auto& n : builtin_board_names()) known += (known.empty() ? "" : ", ") + n;
  return fail(errc::not_found, "unknown board \"" + std::string(name_or_path) + "\" (built in: " + known + ")");
}

std::vector<std::string> builtin_board_names() {
  std::vector<std::string> out;
  for (const auto& p : detail::builtin_profiles()) out.emplace_back(p.name);
  return out;
}

}  // namespace outpost::boards
