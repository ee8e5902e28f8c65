#include "outpost/boards/board.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>

#include "builtin_profiles.h"
#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::boards {
namespace {

// The highest Landlock ABI this code knows (runtime/sandbox/sandbox.h lists them).
constexpr uint32_t kMaxLandlockAbi = 7;

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

std::string field(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : std::string(path) + "." + std::string(key);
}

// Refuses keys outside `allowed` and keys given twice (yaml-cpp keeps both silently).
Result<void> only_fields(const Ctx& c, const YAML::Node& map, std::string_view path,
                         std::initializer_list<std::string_view> allowed) {
  if (!map.IsMap()) return fail(bad(c, map, std::string(path) + " must be a mapping"));
  std::set<std::string> seen;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) return fail(bad(c, kv.first, std::string(path) + " has a key that is not a string"));
    std::string key = kv.first.as<std::string>();
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return fail(bad(c, kv.first, "unknown field \"" + field(path, key) + "\""));
    }
    if (!seen.insert(key).second) return fail(bad(c, kv.first, "field \"" + field(path, key) + "\" given twice"));
  }
  return ok();
}

Result<YAML::Node> required(const Ctx& c, const YAML::Node& map, const char* key, std::string_view path) {
  YAML::Node n = map[key];
  if (!n) return fail(bad(c, map, "missing field \"" + field(path, key) + "\""));
  return n;
}

Result<std::string> str(const Ctx& c, const YAML::Node& n, std::string_view name) {
  if (!n.IsScalar() || n.Scalar().empty()) return fail(bad(c, n, std::string(name) + " must be a non-empty string"));
  return n.Scalar();
}

Result<std::string> required_str(const Ctx& c, const YAML::Node& map, const char* key, std::string_view path) {
  OUTPOST_TRY(YAML::Node n, required(c, map, key, path));
  return str(c, n, field(path, key));
}

Result<uint32_t> u32(const Ctx& c, const YAML::Node& n, std::string_view name) {
  try {
    // yaml-cpp reads 0x... as hex for integer conversions.
    if (n.IsScalar()) return n.as<uint32_t>();
  } catch (const YAML::Exception&) {
  }
  return fail(bad(c, n, std::string(name) + " must be an unsigned 32-bit number"));
}

Result<bool> boolean(const Ctx& c, const YAML::Node& n, std::string_view name) {
  try {
    if (n.IsScalar()) return n.as<bool>();
  } catch (const YAML::Exception&) {
  }
  return fail(bad(c, n, std::string(name) + " must be true or false"));
}

// A byte count: a plain number or one with a binary suffix ("256MiB", "2 GiB").
Result<uint64_t> bytes(const Ctx& c, const YAML::Node& n, std::string_view name) {
  const Error err = bad(c, n, std::string(name) + " must be a size in bytes, e.g. 268435456 or 256MiB");
  if (!n.IsScalar()) return fail(err);
  const std::string& s = n.Scalar();
  size_t i = 0;
  uint64_t v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    if (v > (UINT64_MAX - 9) / 10) return fail(err);
    v = v * 10 + static_cast<uint64_t>(s[i++] - '0');
  }
  if (i == 0) return fail(err);
  while (i < s.size() && s[i] == ' ') ++i;
  const std::string suffix = s.substr(i);
  int shift = -1;
  if (suffix.empty() || suffix == "B") shift = 0;
  if (suffix == "KiB") shift = 10;
  if (suffix == "MiB") shift = 20;
  if (suffix == "GiB") shift = 30;
  if (suffix == "TiB") shift = 40;
  if (shift < 0 || v > (UINT64_MAX >> shift)) return fail(err);
  return v << shift;
}

std::string range(uint32_t first, uint32_t last) { return hex32(first) + ".." + hex32(last); }

// Names the registry range an NV index fell in, for an error that says what to do instead.
std::string nv_range_name(uint32_t index) {
  if (index >= 0x01000000 && index <= 0x013FFFFF) return "the TPM manufacturer's range " + range(0x01000000, 0x013FFFFF);
  if (index >= 0x01400000 && index <= 0x017FFFFF) return "the platform manufacturer's range " + range(0x01400000, 0x017FFFFF);
  if (index >= 0x01C00000 && index <= 0x01FFFFFF) return "the TCG-reserved range " + range(0x01C00000, 0x01FFFFFF) + " (EK certificates and others)";
  return "no NV index range at all (NV indices are " + range(0x01000000, 0x01FFFFFF) + ")";
}

bool absolute_path(const std::string& p) { return !p.empty() && p[0] == '/'; }

Result<void> parse_tpm(const Ctx& c, const YAML::Node& tpm, BoardProfile& b) {
  OUTPOST_TRY_VOID(only_fields(c, tpm, "tpm", {"tcti", "setup_hint", "pcr_bank", "quote_pcrs", "runtime_pcr", "handles", "nv"}));
  OUTPOST_TRY(b.tcti, required_str(c, tpm, "tcti", "tpm"));
  if (b.tcti.find_first_of(" \t\r\n") != std::string::npos) {
    return fail(bad(c, tpm["tcti"], "tpm.tcti must not contain white space"));
  }
  if (YAML::Node hint = tpm["setup_hint"]) {
    OUTPOST_TRY(b.setup_hint, str(c, hint, "tpm.setup_hint"));
  }
  OUTPOST_TRY(b.pcr_bank, required_str(c, tpm, "pcr_bank", "tpm"));
  if (b.pcr_bank != "sha1" && b.pcr_bank != "sha256" && b.pcr_bank != "sha384") {
    return fail(bad(c, tpm["pcr_bank"], "tpm.pcr_bank must be sha1, sha256 or sha384"));
  }

  OUTPOST_TRY(YAML::Node pcrs, required(c, tpm, "quote_pcrs", "tpm"));
  if (!pcrs.IsSequence() || pcrs.size() == 0) return fail(bad(c, pcrs, "tpm.quote_pcrs must be a non-empty list"));
  std::set<uint32_t> seen;
  for (const auto& p : pcrs) {
    OUTPOST_TRY(uint32_t v, u32(c, p, "tpm.quote_pcrs entries"));
    if (v > 23) return fail(bad(c, p, "tpm.quote_pcrs: PCR " + std::to_string(v) + " is out of range (0..23)"));
    if (!seen.insert(v).second) return fail(bad(c, p, "tpm.quote_pcrs: PCR " + std::to_string(v) + " is repeated"));
  }
  b.quote_pcrs.assign(seen.begin(), seen.end());

  if (YAML::Node rp = tpm["runtime_pcr"]) {
    OUTPOST_TRY(b.runtime_pcr, u32(c, rp, "tpm.runtime_pcr"));
    // PFP: 0..7 hold the firmware's measurements (extending them breaks the boot log's replay);
    // 17..22 are DRTM PCRs that locality 0 cannot extend.
    if (b.runtime_pcr > 23) return fail(bad(c, rp, "tpm.runtime_pcr must be 0..23"));
    if (b.runtime_pcr <= 7) return fail(bad(c, rp, "tpm.runtime_pcr must not be a firmware PCR (0..7)"));
    if (b.runtime_pcr >= 17 && b.runtime_pcr <= 22) {
      return fail(bad(c, rp, "tpm.runtime_pcr must not be a DRTM PCR (17..22): software cannot extend those"));
    }
  }
  if (!seen.count(b.runtime_pcr)) {
    return fail(bad(c, pcrs, "tpm.quote_pcrs must include the runtime PCR " + std::to_string(b.runtime_pcr) +
                                 ", or quotes would not cover what outpost measures"));
  }

  OUTPOST_TRY(YAML::Node handles, required(c, tpm, "handles", "tpm"));
  OUTPOST_TRY_VOID(only_fields(c, handles, "tpm.handles", {"srk", "ek", "ak"}));
  struct Want {
    const char* key;
    uint32_t* out;
    uint32_t first, last;
    const char* range_name;
  };
  for (const Want& w : {Want{"srk", &b.srk_handle, handle_range::srk_first, handle_range::srk_last, "the owner's storage-key range"},
                        Want{"ek", &b.ek_handle, handle_range::endorsement_first, handle_range::endorsement_last, "the endorsement range"},
                        Want{"ak", &b.ak_handle, handle_range::endorsement_first, handle_range::endorsement_last, "the endorsement range"}}) {
    OUTPOST_TRY(YAML::Node n, required(c, handles, w.key, "tpm.handles"));
    OUTPOST_TRY(*w.out, u32(c, n, field("tpm.handles", w.key)));
    if (*w.out < w.first || *w.out > w.last) {
      return fail(bad(c, n, "tpm.handles." + std::string(w.key) + " " + hex32(*w.out) + " must be in " + w.range_name +
                                " " + range(w.first, w.last)));
    }
  }
  if (b.ek_handle == b.ak_handle) return fail(bad(c, handles, "tpm.handles.ek and tpm.handles.ak must differ"));

  OUTPOST_TRY(YAML::Node nv, required(c, tpm, "nv", "tpm"));
  OUTPOST_TRY_VOID(only_fields(c, nv, "tpm.nv", {"rollback_counter"}));
  OUTPOST_TRY(YAML::Node counter, required(c, nv, "rollback_counter", "tpm.nv"));
  OUTPOST_TRY(b.rollback_counter_index, u32(c, counter, "tpm.nv.rollback_counter"));
  const uint32_t i = b.rollback_counter_index;
  if (i < handle_range::nv_owner_first || i > handle_range::nv_owner_last) {
    return fail(bad(c, counter, "tpm.nv.rollback_counter " + hex32(i) + " is in " + nv_range_name(i) +
                                    "; use the owner range " + range(handle_range::nv_owner_first, handle_range::nv_owner_last)));
  }
  return ok();
}

Result<void> parse_optional_sections(const Ctx& c, const YAML::Node& root, BoardProfile& b) {
  if (YAML::Node budgets = root["budgets"]) {
    OUTPOST_TRY_VOID(only_fields(c, budgets, "budgets", {"audit_log", "memory"}));
    // Floors, not targets: below these outpostd cannot do its job at all.
    if (YAML::Node n = budgets["audit_log"]) {
      OUTPOST_TRY(b.audit_log_bytes, bytes(c, n, "budgets.audit_log"));
      if (b.audit_log_bytes < (1u << 20)) return fail(bad(c, n, "budgets.audit_log must be at least 1MiB"));
    }
    if (YAML::Node n = budgets["memory"]) {
      OUTPOST_TRY(b.memory_bytes, bytes(c, n, "budgets.memory"));
      if (b.memory_bytes < (16u << 20)) return fail(bad(c, n, "budgets.memory must be at least 16MiB"));
    }
  }
  if (YAML::Node cp = root["checkpoint"]) {
    OUTPOST_TRY_VOID(only_fields(c, cp, "checkpoint", {"every_records", "every_seconds", "on_deny"}));
    if (YAML::Node n = cp["every_records"]) {
      OUTPOST_TRY(b.checkpoint.every_records, u32(c, n, "checkpoint.every_records"));
      if (b.checkpoint.every_records == 0) return fail(bad(c, n, "checkpoint.every_records must be at least 1"));
    }
    if (YAML::Node n = cp["every_seconds"]) {
      OUTPOST_TRY(b.checkpoint.every_seconds, u32(c, n, "checkpoint.every_seconds"));
      if (b.checkpoint.every_seconds == 0 || b.checkpoint.every_seconds > 86400) {
        return fail(bad(c, n, "checkpoint.every_seconds must be 1..86400"));
      }
    }
    if (YAML::Node n = cp["on_deny"]) {
      OUTPOST_TRY(b.checkpoint.on_deny, boolean(c, n, "checkpoint.on_deny"));
    }
  }
  if (YAML::Node sb = root["sandbox"]) {
    OUTPOST_TRY_VOID(only_fields(c, sb, "sandbox", {"landlock_min_abi"}));
    if (YAML::Node n = sb["landlock_min_abi"]) {
      OUTPOST_TRY(b.landlock_min_abi, u32(c, n, "sandbox.landlock_min_abi"));
      if (b.landlock_min_abi < 1 || b.landlock_min_abi > kMaxLandlockAbi) {
        return fail(bad(c, n, "sandbox.landlock_min_abi must be 1.." + std::to_string(kMaxLandlockAbi)));
      }
    }
  }
  return ok();
}

// SPIFFE trust domain names: lowercase letters, digits, '.', '-' and '_'.
bool valid_trust_domain(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
  });
}

bool valid_board_name(const std::string& s) {
  return !s.empty() && s[0] != '-' && s[0] != '.' && std::all_of(s.begin(), s.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
  });
}

Result<BoardProfile> parse_board_node(const Ctx& c, const YAML::Node& root) {
  BoardProfile b;
  OUTPOST_TRY_VOID(only_fields(c, root, "board", {"name", "description", "tpm", "boot", "paths", "budgets", "checkpoint",
                                                   "sandbox", "identity"}));
  OUTPOST_TRY(b.name, required_str(c, root, "name", "board"));
  if (!valid_board_name(b.name)) {
    return fail(bad(c, root["name"], "board.name may hold only lowercase letters, digits, '.', '-' and '_'"));
  }
  OUTPOST_TRY(b.description, required_str(c, root, "description", "board"));

  OUTPOST_TRY(YAML::Node tpm, required(c, root, "tpm", "board"));
  OUTPOST_TRY_VOID(parse_tpm(c, tpm, b));

  OUTPOST_TRY(YAML::Node boot, required(c, root, "boot", "board"));
  OUTPOST_TRY_VOID(only_fields(c, boot, "boot", {"event_log"}));
  OUTPOST_TRY(std::string log, required_str(c, boot, "event_log", "boot"));
  if (log != "none" && !absolute_path(log)) {
    return fail(bad(c, boot["event_log"], "boot.event_log must be an absolute path, or none when the firmware does not measure boot"));
  }
  b.event_log = log == "none" ? "" : log;

  OUTPOST_TRY(YAML::Node paths, required(c, root, "paths", "board"));
  OUTPOST_TRY_VOID(only_fields(c, paths, "paths", {"state_dir", "config_dir"}));
  OUTPOST_TRY(b.state_dir, required_str(c, paths, "state_dir", "paths"));
  if (!absolute_path(b.state_dir)) return fail(bad(c, paths["state_dir"], "paths.state_dir must be an absolute path"));
  if (YAML::Node n = paths["config_dir"]) {
    OUTPOST_TRY(b.config_dir, str(c, n, "paths.config_dir"));
    if (!absolute_path(b.config_dir)) return fail(bad(c, n, "paths.config_dir must be an absolute path"));
  }
  if (b.config_dir == b.state_dir) return fail(bad(c, paths, "paths.state_dir and paths.config_dir must differ"));

  OUTPOST_TRY_VOID(parse_optional_sections(c, root, b));

  OUTPOST_TRY(YAML::Node identity, required(c, root, "identity", "board"));
  OUTPOST_TRY_VOID(only_fields(c, identity, "identity", {"trust_domain"}));
  OUTPOST_TRY(b.trust_domain, required_str(c, identity, "trust_domain", "identity"));
  if (!valid_trust_domain(b.trust_domain)) {
    return fail(bad(c, identity["trust_domain"],
                    "identity.trust_domain may hold only lowercase letters, digits, '.', '-' and '_' (SPIFFE)"));
  }
  return b;
}

}  // namespace

std::string BoardProfile::quote_selection() const {
  std::string s = pcr_bank + ":";
  for (size_t i = 0; i < quote_pcrs.size(); ++i) s += (i ? "," : "") + std::to_string(quote_pcrs[i]);
  return s;
}

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
