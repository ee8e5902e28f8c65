// The runtime measurement log: format, parse, replay, verify. See runtime_log.h.
#include "outpost/firmware_hooks/runtime_log.h"

#include <algorithm>
#include <boost/json.hpp>

#include "outpost/base/bytes.h"
#include "outpost/base/errors.h"

namespace outpost::firmware_hooks {
namespace {

namespace json = boost::json;

constexpr std::string_view kTemplateDomain = "outpost/runtime-measurement/v1";
constexpr size_t kMaxNameBytes = 1024;

Error line_error(size_t line, const std::string& what) {
  return Error(make_error_code(errc::corrupt), "runtime log line " + std::to_string(line) + ": " + what);
}

bool known_kind(std::string_view k) {
  return k == runtime_kind::outpostd || k == runtime_kind::config || k == runtime_kind::bundle ||
         k == runtime_kind::agent;
}

// Printable ASCII or UTF-8 continuation bytes; no control characters, so a name can never
// smuggle a 0x00 into the template and collide with another (kind, name) split.
// Also well-formed UTF-8 (JSON parsers refuse anything else, which would make the log unreadable).
bool printable_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameBytes) return false;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) return false;
      ++i;
      continue;
    }
    size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
    if (len == 0 || (len == 3 && c > 0xef) || i + len > s.size()) return false;
    uint32_t cp = c & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF.
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += len;
  }
  return true;
}

Result<Digest> digest_field(const json::object& o, std::string_view key, size_t line) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr || !v->is_string()) return fail(line_error(line, "missing string field \"" + std::string(key) + "\""));
  auto bytes = hex_decode(v->as_string());
  if (!bytes || bytes->size() != 32) {
    return fail(line_error(line, "\"" + std::string(key) + "\" is not 64 hex digits"));
  }
  Digest d;
  std::copy(bytes->begin(), bytes->end(), d.begin());
  return d;
}

Result<std::string> string_field(const json::object& o, std::string_view key, size_t line) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr || !v->is_string()) return fail(line_error(line, "missing string field \"" + std::string(key) + "\""));
  return std::string(v->as_string());
}

Result<uint64_t> uint_field(const json::object& o, std::string_view key, size_t line, uint64_t max) {
  const json::value* v = o.if_contains(key);
  uint64_t n = 0;
  if (v != nullptr && v->is_uint64()) {
    n = v->as_uint64();
  } else if (v != nullptr && v->is_int64() && v->as_int64() >= 0) {
    n = static_cast<uint64_t>(v->as_int64());
  } else {
    return fail(line_error(line, "missing unsigned integer field \"" + std::string(key) + "\""));
  }
  if (n > max) return fail(line_error(line, "\"" + std::string(key) + "\" out of range"));
  return n;
}

Result<json::object> parse_line(std::string_view text, size_t line, size_t fields) {
  if (text.size() > kMaxRuntimeLogLine) return fail(line_error(line, "longer than " + std::to_string(kMaxRuntimeLogLine) + " bytes"));
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return fail(line_error(line, "not JSON: " + ec.message()));
  if (!v.is_object()) return fail(line_error(line, "not a JSON object"));
  if (v.as_object().size() != fields) {
    return fail(line_error(line, "expected exactly " + std::to_string(fields) + " fields"));
  }
  return std::move(v.as_object());
}

}  // namespace

Result<void> validate_runtime_entry(std::string_view kind, std::string_view name) {
  if (!known_kind(kind)) return fail(make_error_code(errc::invalid_argument), "unknown kind \"" + std::string(kind) + "\"");
  if (!printable_name(name)) {
    return fail(make_error_code(errc::invalid_argument), "name is empty, longer than " + std::to_string(kMaxNameBytes) +
                                                             " bytes, is not UTF-8 or has control characters");
  }
  return ok();
}

Digest runtime_template_hash(std::string_view kind, std::string_view name, const Digest& digest) {
  Bytes data;
  data.reserve(kind.size() + name.size() + 2 + digest.size());
  data.insert(data.end(), kind.begin(), kind.end());
  data.push_back(0);
  data.insert(data.end(), name.begin(), name.end());
  data.push_back(0);
  data.insert(data.end(), digest.begin(), digest.end());
  return domain_hash(kTemplateDomain, data);
}

std::string format_runtime_header(const RuntimeLogHeader& h) {
  json::object o;
  o["outpost_runtime_log"] = 1;
  o["pcr"] = h.pcr;
  o["bank"] = "sha256";
  o["reset_count"] = h.reset_count;
  o["restart_count"] = h.restart_count;
  o["started"] = h.started;
  return json::serialize(o);
}

std::string format_runtime_entry(const RuntimeMeasurement& e) {
  json::object o;
  o["seq"] = e.seq;
  o["kind"] = e.kind;
  o["name"] = e.name;
  o["digest"] = hex_encode(e.digest);
  o["template"] = hex_encode(e.template_hash);
  o["time"] = e.time;
  return json::serialize(o);
}

Result<RuntimeLog> parse_runtime_log(std::string_view text) {
  if (text.size() > kMaxRuntimeLogBytes) {
    return fail(make_error_code(errc::corrupt), "runtime log larger than " + std::to_string(kMaxRuntimeLogBytes) + " bytes");
  }
  if (text.empty()) return fail(make_error_code(errc::corrupt), "runtime log is empty (no header)");
  RuntimeLog log;
  size_t line = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    ++line;
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      return fail(line_error(line, "torn: the last line has no newline (a write that did not finish)"));
    }
    std::string_view l = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line == 1) {
      OUTPOST_TRY(json::object o, parse_line(l, line, 6));
      OUTPOST_TRY(uint64_t version, uint_field(o, "outpost_runtime_log", line, UINT32_MAX));
      if (version != 1) return fail(line_error(line, "unknown log version " + std::to_string(version)));
      OUTPOST_TRY(uint64_t pcr, uint_field(o, "pcr", line, 23));
      OUTPOST_TRY(std::string bank, string_field(o, "bank", line));
      if (bank != "sha256") return fail(line_error(line, "bank \"" + bank + "\" is not supported (sha256)"));
      OUTPOST_TRY(uint64_t reset, uint_field(o, "reset_count", line, UINT32_MAX));
      OUTPOST_TRY(uint64_t restart, uint_field(o, "restart_count", line, UINT32_MAX));
      OUTPOST_TRY(log.header.started, string_field(o, "started", line));
      log.header.pcr = static_cast<uint32_t>(pcr);
      log.header.reset_count = static_cast<uint32_t>(reset);
      log.header.restart_count = static_cast<uint32_t>(restart);
      continue;
    }
    OUTPOST_TRY(json::object o, parse_line(l, line, 6));
    RuntimeMeasurement m;
    m.line = line;
    OUTPOST_TRY(m.seq, uint_field(o, "seq", line, UINT64_MAX));
    if (m.seq != log.entries.size() + 1) {
      return fail(line_error(line, "sequence " + std::to_string(m.seq) + " where " +
                                       std::to_string(log.entries.size() + 1) + " belongs (an entry is missing or repeated)"));
    }
    OUTPOST_TRY(m.kind, string_field(o, "kind", line));
    OUTPOST_TRY(m.name, string_field(o, "name", line));
    if (auto valid = validate_runtime_entry(m.kind, m.name); !valid) {
      return fail(line_error(line, valid.error().message()));
    }
    OUTPOST_TRY(m.digest, digest_field(o, "digest", line));
    OUTPOST_TRY(m.template_hash, digest_field(o, "template", line));
    OUTPOST_TRY(m.time, string_field(o, "time", line));
    if (m.template_hash != runtime_template_hash(m.kind, m.name, m.digest)) {
      return fail(line_error(line, "template hash does not match the entry's kind, name and digest (the entry was edited)"));
    }
    log.entries.push_back(std::move(m));
  }
  return log;
}

Digest replay_runtime_log(const RuntimeLog& log, size_t count) {
  Digest pcr{};
  count = std::min(count, log.entries.size());
  for (size_t i = 0; i < count; ++i) {
    Sha256 h;
    h.update(ByteView(pcr.data(), pcr.size()));
    h.update(ByteView(log.entries[i].template_hash.data(), log.entries[i].template_hash.size()));
    pcr = h.finish();
  }
  return pcr;
}

RuntimeVerdict verify_runtime_log(const RuntimeLog& log, const attestation::PcrValues& quoted,
                                  std::optional<attestation::ClockInfo> quote_clock,
                                  const RuntimeExpectations& expected) {
  RuntimeVerdict v;
  v.replayed = replay_runtime_log(log);
  for (const auto& bank : quoted) {
    if (bank.hash_alg != attestation::hash_alg::sha256) continue;
    auto it = bank.values.find(log.header.pcr);
    if (it == bank.values.end()) continue;
    v.pcr_quoted = true;
    v.quoted = it->second;
  }
  const std::string pcr_name = "sha256 PCR " + std::to_string(log.header.pcr);
  if (!v.pcr_quoted) {
    v.problems.push_back("the quote does not cover " + pcr_name + ", the log's PCR");
  } else if (equal_constant_time(v.quoted, ByteView(v.replayed.data(), v.replayed.size()))) {
    v.replay_matches = true;
  } else {
    for (size_t k = 0; k < log.entries.size(); ++k) {
      Digest prefix = replay_runtime_log(log, k);
      if (std::equal(prefix.begin(), prefix.end(), v.quoted.begin(), v.quoted.end())) {
        v.quoted_prefix = k;
        break;
      }
    }
    if (v.quoted_prefix) {
      const RuntimeMeasurement& next = log.entries[*v.quoted_prefix];
      v.problems.push_back("the quoted " + pcr_name + " covers only the first " + std::to_string(*v.quoted_prefix) +
                           " of " + std::to_string(log.entries.size()) + " entries; entry " + std::to_string(next.seq) +
                           " (" + next.kind + " \"" + next.name + "\") and after are not vouched for by this quote");
    } else {
      v.problems.push_back("the log replays " + pcr_name + " to " + hex_encode(v.replayed) + " but the quote says " +
                           hex_encode(v.quoted) +
                           ": an entry was changed, removed or added, or something else extended the PCR; no entry is vouched for");
    }
  }
  if (quote_clock && (quote_clock->reset_count != log.header.reset_count ||
                      quote_clock->restart_count != log.header.restart_count)) {
    v.boot_matches = false;
    v.problems.push_back("the log belongs to TPM boot (resetCount " + std::to_string(log.header.reset_count) +
                         ", restartCount " + std::to_string(log.header.restart_count) + ") but the quote to (" +
                         std::to_string(quote_clock->reset_count) + ", " + std::to_string(quote_clock->restart_count) + ")");
  }
  auto mismatch = [&](const RuntimeMeasurement& e, const std::vector<Digest>& want) {
    std::string wanted;
    for (const auto& d : want) wanted += (wanted.empty() ? "sha256:" : " or sha256:") + hex_encode(d);
    v.problems.push_back("entry " + std::to_string(e.seq) + " (line " + std::to_string(e.line) + "): " + e.kind + " \"" +
                         e.name + "\" measured sha256:" + hex_encode(e.digest) + ", expected " + wanted);
  };
  for (const auto& e : log.entries) {
    if (e.kind == runtime_kind::agent) {
      auto it = expected.agents.find(e.name);
      if (it == expected.agents.end()) {
        if (std::find(v.unreferenced.begin(), v.unreferenced.end(), e.name) == v.unreferenced.end()) {
          v.unreferenced.push_back(e.name);
        }
      } else if (std::find(it->second.begin(), it->second.end(), e.digest) == it->second.end()) {
        mismatch(e, it->second);
      }
    } else if (e.kind == runtime_kind::outpostd && expected.outpostd && *expected.outpostd != e.digest) {
      mismatch(e, {*expected.outpostd});
    } else if (e.kind == runtime_kind::config && expected.config && *expected.config != e.digest) {
      mismatch(e, {*expected.config});
    }
  }
  return v;
}

}  // namespace outpost::firmware_hooks
