#include "outpost/firmware_hooks/eventlog.h"

#include <mbedtls/sha1.h>
#include <mbedtls/sha512.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"

namespace outpost::firmware_hooks {
namespace {

namespace alg = attestation::hash_alg;

constexpr size_t kSha1Size = 20;
// TCG_PCR_EVENT: pcrIndex, eventType, digest[20], eventSize.
constexpr size_t kSha1HeaderSize = 4 + 4 + kSha1Size + 4;

constexpr char kSpecIdSignature[16] = "Spec ID Event03";  // with its NUL: 16 bytes
// signature, platformClass, four u8 fields, numberOfAlgorithms.
constexpr size_t kSpecIdFixedSize = 16 + 4 + 4 + 4;
constexpr char kStartupLocalitySignature[16] = "StartupLocality";

// The one place an mbedTLS return code becomes an Error here.
Result<void> mbedtls_check(int rc, const char* function) {
  if (rc == 0) return ok();
  return fail(mbedtls_error(rc), function);
}

std::string hex_offset(size_t offset) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%zx", offset);
  return buf;
}

bool starts_with(ByteView data, const char (&signature)[16]) {
  return data.size() >= sizeof signature && std::memcmp(data.data(), signature, sizeof signature) == 0;
}

// Bounds-checked little-endian reads over a span. Every read either succeeds in full or
// leaves the reader where it was and returns false.
class Reader {
 public:
  Reader(ByteView data, size_t base_offset) : data_(data), base_(base_offset) {}

  size_t offset() const { return base_ + pos_; }  // in the whole log
  size_t left() const { return data_.size() - pos_; }

  bool u8(uint8_t& out) { return little_endian(out); }
  bool u16(uint16_t& out) { return little_endian(out); }
  bool u32(uint32_t& out) { return little_endian(out); }
  bool u64(uint64_t& out) { return little_endian(out); }
  bool take(size_t n, ByteView& out) {
    if (n > left()) return false;
    out = data_.subspan(pos_, n);
    pos_ += n;
    return true;
  }

 private:
  template <class T>
  bool little_endian(T& out) {
    if (sizeof(T) > left()) return false;
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(data_[pos_ + i]) << (8 * i));
    out = v;
    pos_ += sizeof(T);
    return true;
  }

  ByteView data_;
  size_t base_;
  size_t pos_ = 0;
};

Failure corrupt(size_t index, size_t offset, const std::string& what) {
  return fail(errc::corrupt, "event " + std::to_string(index) + " at offset " + hex_offset(offset) + ": " + what);
}

// The Spec ID event's payload, from the start of `data`; *consumed is its length.
Result<SpecIdEvent> parse_spec_id(ByteView data, size_t offset, size_t* consumed) {
  auto bad = [offset](const std::string& what) { return corrupt(0, offset, "Spec ID event: " + what); };
  Reader r(data, offset);
  ByteView signature;
  SpecIdEvent s;
  uint32_t count = 0;
  if (!r.take(16, signature) || !r.u32(s.platform_class) || !r.u8(s.spec_version_minor) ||
      !r.u8(s.spec_version_major) || !r.u8(s.spec_errata) || !r.u8(s.uintn_size) || !r.u32(count)) {
    return bad("truncated before the algorithm list");
  }
  if (count == 0) return bad("declares no algorithms");
  if (count > kMaxAlgorithms) {
    return bad("declares " + std::to_string(count) + " algorithms (at most " + std::to_string(kMaxAlgorithms) + ")");
  }
  for (uint32_t i = 0; i < count; ++i) {
    AlgorithmSize a;
    if (!r.u16(a.alg) || !r.u16(a.digest_size)) return bad("truncated algorithm list");
    if (a.digest_size == 0 || a.digest_size > kMaxDigestSize) {
      return bad(alg_name(a.alg) + " declared with digest size " + std::to_string(a.digest_size));
    }
    size_t known = attestation::hash_alg_digest_size(a.alg);
    if (known != 0 && known != a.digest_size) {
      return bad(alg_name(a.alg) + " declared with digest size " + std::to_string(a.digest_size) + ", not " +
                 std::to_string(known));
    }
    for (const auto& earlier : s.algorithms) {
      if (earlier.alg == a.alg) return bad(alg_name(a.alg) + " declared twice");
    }
    s.algorithms.push_back(a);
  }
  uint8_t vendor_size = 0;
  ByteView vendor;
  if (!r.u8(vendor_size)) return bad("truncated before vendorInfoSize");
  if (!r.take(vendor_size, vendor)) return bad("truncated vendor info");
  s.vendor_info.assign(vendor.begin(), vendor.end());
  *consumed = data.size() - r.left();
  return s;
}

// One TCG_PCR_EVENT (SHA-1 format) record starting at r's position.
Result<Event> parse_sha1_record(Reader& r, size_t index) {
  Event e;
  e.index = index;
  e.offset = r.offset();
  ByteView digest;
  uint32_t size = 0;
  if (r.left() < kSha1HeaderSize) {
    return corrupt(index, e.offset,
                   "truncated header (" + std::to_string(r.left()) + " of " + std::to_string(kSha1HeaderSize) + " bytes)");
  }
  (void)(r.u32(e.pcr) && r.u32(e.type) && r.take(kSha1Size, digest) && r.u32(size));
  if (size > r.left()) {
    return corrupt(index, e.offset,
                   "event size " + std::to_string(size) + " exceeds the " + std::to_string(r.left()) + " bytes left");
  }
  ByteView data;
  (void)r.take(size, data);
  e.digests.push_back({alg::sha1, Bytes(digest.begin(), digest.end())});
  e.data.assign(data.begin(), data.end());
  return e;
}

// One TCG_PCR_EVENT2 record starting at r's position.
Result<Event> parse_event2_record(Reader& r, size_t index, const SpecIdEvent& spec) {
  Event e;
  e.index = index;
  e.offset = r.offset();
  uint32_t count = 0;
  if (!r.u32(e.pcr) || !r.u32(e.type) || !r.u32(count)) {
    return corrupt(index, e.offset, "truncated header (" + std::to_string(r.left()) + " bytes left)");
  }
  if (count > spec.algorithms.size()) {
    return corrupt(index, e.offset,
                   "digest count " + std::to_string(count) + " exceeds the " + std::to_string(spec.algorithms.size()) +
                       " algorithms the Spec ID event declares");
  }
  for (uint32_t i = 0; i < count; ++i) {
    uint16_t id = 0;
    if (!r.u16(id)) return corrupt(index, e.offset, "truncated digest list");
    auto declared = std::find_if(spec.algorithms.begin(), spec.algorithms.end(),
                                 [id](const AlgorithmSize& a) { return a.alg == id; });
    if (declared == spec.algorithms.end()) {
      return corrupt(index, e.offset, "digest algorithm " + alg_name(id) + " is not declared in the Spec ID event");
    }
    if (e.digest(id) != nullptr) return corrupt(index, e.offset, "two " + alg_name(id) + " digests");
    ByteView digest;
    if (!r.take(declared->digest_size, digest)) return corrupt(index, e.offset, "truncated " + alg_name(id) + " digest");
    e.digests.push_back({id, Bytes(digest.begin(), digest.end())});
  }
  uint32_t size = 0;
  if (!r.u32(size)) return corrupt(index, e.offset, "truncated before the event size");
  if (size > r.left()) {
    return corrupt(index, e.offset,
                   "event size " + std::to_string(size) + " exceeds the " + std::to_string(r.left()) + " bytes left");
  }
  ByteView data;
  (void)r.take(size, data);
  e.data.assign(data.begin(), data.end());
  return e;
}

Result<void> check_pcr_index(const Event& e) {
  if (e.pcr < kPcrCount) return ok();
  return corrupt(e.index, e.offset, "PCR index " + std::to_string(e.pcr) + " out of range (0-23)");
}

Result<void> check_event_count(size_t index, size_t offset) {
  if (index < kMaxEvents) return ok();
  return corrupt(index, offset, "more than " + std::to_string(kMaxEvents) + " events");
}

// ---- payload decoding (display only; never affects parsing or replay) ----

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x20 || cp == 0x7f) {
    out += '?';
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// UTF-16LE to UTF-8, stopping at the first NUL; a lone surrogate becomes U+FFFD.
std::string utf16_to_utf8(ByteView data) {
  std::string out;
  size_t n = data.size() / 2;
  for (size_t i = 0; i < n; ++i) {
    uint32_t c = data[2 * i] | (static_cast<uint32_t>(data[2 * i + 1]) << 8);
    if (c == 0) break;
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n) {
      uint32_t lo = data[2 * i + 2] | (static_cast<uint32_t>(data[2 * i + 3]) << 8);
      if (lo >= 0xDC00 && lo <= 0xDFFF) {
        append_utf8(out, 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00));
        ++i;
        continue;
      }
    }
    if (c >= 0xD800 && c <= 0xDFFF) c = 0xFFFD;
    append_utf8(out, c);
  }
  return out;
}

constexpr size_t kMaxDetail = 200;

std::string clip(std::string s) {
  if (s.size() <= kMaxDetail) return s;
  size_t cut = kMaxDetail;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not mid-character
  s.resize(cut);
  return s + "...";
}

std::string short_hex(ByteView data) {
  if (data.size() <= 16) return hex_encode(data);
  return hex_encode(data.first(16)) + "...";
}

bool printable_ascii(ByteView data) {
  return !data.empty() && std::all_of(data.begin(), data.end(), [](uint8_t c) { return c >= 0x20 && c < 0x7f; });
}

// Text in ASCII (trailing NULs and newlines dropped) or UTF-16LE; nullopt when it is neither.
std::optional<std::string> as_text(ByteView data) {
  ByteView t = data;
  while (!t.empty() && (t.back() == 0 || t.back() == '\n')) t = t.first(t.size() - 1);
  if (printable_ascii(t)) return std::string(as_chars(t));
  // UTF-16LE of ASCII characters up to a NUL or the end (an odd trailing byte is ignored:
  // some boot loaders measure a one-byte terminator).
  if (data.size() >= 2 && data[1] == 0 && data[0] >= 0x20 && data[0] < 0x7f) {
    bool utf16 = true;
    for (size_t i = 0; i + 1 < data.size(); i += 2) {
      if (data[i] == 0 && data[i + 1] == 0) break;
      if (data[i + 1] != 0 || data[i] < 0x20 || data[i] >= 0x7f) {
        utf16 = false;
        break;
      }
    }
    if (utf16) return utf16_to_utf8(data);
  }
  return std::nullopt;
}

std::string text_or_bytes(ByteView data) {
  if (data.empty()) return "";
  if (auto t = as_text(data)) return "\"" + *t + "\"";
  return std::to_string(data.size()) + " bytes " + short_hex(data);
}

std::string plural_bytes(uint64_t n) { return std::to_string(n) + (n == 1 ? " byte" : " bytes"); }

std::string hex64(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// EFI_LOAD_OPTION's Description (UEFI spec 3.1.3), the readable name of a Boot#### entry.
std::optional<std::string> load_option_description(ByteView data) {
  if (data.size() < 6) return std::nullopt;
  ByteView desc = data.subspan(6);
  std::string text = utf16_to_utf8(desc);
  if (text.empty()) return std::nullopt;
  return text;
}

std::string describe_variable(const Event& e) {
  auto v = decode_efi_variable(e.data);
  if (!v) return "malformed UEFI_VARIABLE_DATA: " + v.error().context();
  std::string out = v->name + " (" + format_guid(v->guid) + ") " + plural_bytes(v->data.size());
  if (v->name.size() == 8 && v->name.rfind("Boot", 0) == 0 && v->name != "BootNext") {
    if (auto d = load_option_description(v->data)) out += " \"" + *d + "\"";
  } else if (!v->data.empty() && v->data.size() <= 8) {
    out += ": " + hex_encode(v->data);
  }
  return out;
}

// The file path nodes (type 4, subtype 4) of an EFI device path, joined.
std::string device_path_files(ByteView path) {
  std::string files;
  Reader r(path, 0);
  for (int guard = 0; guard < 256 && r.left() >= 4; ++guard) {
    uint8_t type = 0, subtype = 0;
    uint16_t length = 0;
    (void)(r.u8(type) && r.u8(subtype) && r.u16(length));
    ByteView body;
    if (length < 4 || !r.take(length - 4u, body)) break;
    if (type == 0x7F && subtype == 0xFF) break;  // end of the whole path
    if (type == 0x04 && subtype == 0x04) {
      std::string part = utf16_to_utf8(body);
      if (!files.empty() && !part.empty() && part.front() != '\\' && files.back() != '\\') files += '\\';
      files += part;
    }
  }
  return files;
}

std::string describe_image(const Event& e) {
  Reader r(e.data, 0);
  uint64_t location = 0, length = 0, link = 0, path_length = 0;
  if (!r.u64(location) || !r.u64(length) || !r.u64(link) || !r.u64(path_length)) {
    return "malformed UEFI_IMAGE_LOAD_EVENT: " + plural_bytes(e.data.size());
  }
  ByteView path;
  if (path_length > r.left() || !r.take(static_cast<size_t>(path_length), path)) {
    return "malformed UEFI_IMAGE_LOAD_EVENT: device path longer than the event";
  }
  std::string files = device_path_files(path);
  std::string out = files.empty() ? "device path " + plural_bytes(path.size()) : files;
  return out + " (image " + plural_bytes(length) + " at " + hex64(location) + ")";
}

std::string describe_blob(ByteView data, bool with_description) {
  Reader r(data, 0);
  std::string out;
  if (with_description) {
    uint8_t size = 0;
    ByteView desc;
    if (!r.u8(size) || !r.take(size, desc)) return "malformed firmware blob: " + plural_bytes(data.size());
    out = "\"" + std::string(as_text(desc).value_or(short_hex(desc))) + "\" ";
  }
  uint64_t base = 0, length = 0;
  if (!r.u64(base) || !r.u64(length)) return "malformed firmware blob: " + plural_bytes(data.size());
  return out + "blob " + plural_bytes(length) + " at " + hex64(base);
}

std::string describe_handoff_tables(ByteView data, bool with_description) {
  Reader r(data, 0);
  std::string out;
  if (with_description) {
    uint8_t size = 0;
    ByteView desc;
    if (!r.u8(size) || !r.take(size, desc)) return "malformed handoff tables: " + plural_bytes(data.size());
    out = "\"" + std::string(as_text(desc).value_or(short_hex(desc))) + "\" ";
  }
  uint64_t count = 0;
  if (!r.u64(count)) return "malformed handoff tables: " + plural_bytes(data.size());
  out += std::to_string(count) + (count == 1 ? " table" : " tables");
  for (uint64_t i = 0; i < count && i < 8; ++i) {
    ByteView guid;
    uint64_t address = 0;
    if (!r.take(16, guid) || !r.u64(address)) return out + " (truncated)";
    std::array<uint8_t, 16> g{};
    std::copy(guid.begin(), guid.end(), g.begin());
    out += (i == 0 ? ": " : ", ") + format_guid(g);
  }
  return out;
}

std::string describe_gpt(ByteView data) {
  // UEFI_GPT_DATA: the 92-byte EFI_PARTITION_TABLE_HEADER, NumberOfPartitions, the entries.
  Reader r(data, 0);
  ByteView header;
  uint64_t count = 0;
  if (!r.take(92, header) || !r.u64(count)) return "malformed UEFI_GPT_DATA: " + plural_bytes(data.size());
  return "GPT, " + std::to_string(count) + (count == 1 ? " partition" : " partitions");
}

std::string describe_no_action(const Event& e) {
  if (starts_with(e.data, kSpecIdSignature)) {
    size_t consumed = 0;
    auto spec = parse_spec_id(e.data, e.offset, &consumed);
    if (!spec) return "Spec ID Event03 (malformed)";
    std::string out = "Spec ID Event03:";
    for (const auto& a : spec->algorithms) out += " " + alg_name(a.alg) + "/" + std::to_string(a.digest_size);
    if (!spec->vendor_info.empty()) out += ", vendor info " + short_hex(spec->vendor_info);
    return out;
  }
  if (starts_with(e.data, kStartupLocalitySignature)) {
    if (e.data.size() < 17) return "StartupLocality (truncated)";
    return "StartupLocality " + std::to_string(e.data[16]);
  }
  // Other EV_NO_ACTION payloads (SP800-155 Event, NvIndexInstance, ...) start with a
  // NUL-terminated signature.
  size_t nul = std::find(e.data.begin(), e.data.end(), uint8_t{0}) - e.data.begin();
  ByteView sig = ByteView(e.data).first(nul);
  if (nul < e.data.size() && printable_ascii(sig)) {
    return std::string(as_chars(sig)) + " (" + plural_bytes(e.data.size()) + ")";
  }
  return text_or_bytes(e.data);
}

struct TypeName {
  uint32_t type;
  const char* name;
};
constexpr TypeName kTypeNames[] = {
    {event_type::preboot_cert, "EV_PREBOOT_CERT"},
    {event_type::post_code, "EV_POST_CODE"},
    {event_type::unused, "EV_UNUSED"},
    {event_type::no_action, "EV_NO_ACTION"},
    {event_type::separator, "EV_SEPARATOR"},
    {event_type::action, "EV_ACTION"},
    {event_type::event_tag, "EV_EVENT_TAG"},
    {event_type::s_crtm_contents, "EV_S_CRTM_CONTENTS"},
    {event_type::s_crtm_version, "EV_S_CRTM_VERSION"},
    {event_type::cpu_microcode, "EV_CPU_MICROCODE"},
    {event_type::platform_config_flags, "EV_PLATFORM_CONFIG_FLAGS"},
    {event_type::table_of_devices, "EV_TABLE_OF_DEVICES"},
    {event_type::compact_hash, "EV_COMPACT_HASH"},
    {event_type::ipl, "EV_IPL"},
    {event_type::ipl_partition_data, "EV_IPL_PARTITION_DATA"},
    {event_type::nonhost_code, "EV_NONHOST_CODE"},
    {event_type::nonhost_config, "EV_NONHOST_CONFIG"},
    {event_type::nonhost_info, "EV_NONHOST_INFO"},
    {event_type::omit_boot_device_events, "EV_OMIT_BOOT_DEVICE_EVENTS"},
    {event_type::efi_variable_driver_config, "EV_EFI_VARIABLE_DRIVER_CONFIG"},
    {event_type::efi_variable_boot, "EV_EFI_VARIABLE_BOOT"},
    {event_type::efi_boot_services_application, "EV_EFI_BOOT_SERVICES_APPLICATION"},
    {event_type::efi_boot_services_driver, "EV_EFI_BOOT_SERVICES_DRIVER"},
    {event_type::efi_runtime_services_driver, "EV_EFI_RUNTIME_SERVICES_DRIVER"},
    {event_type::efi_gpt_event, "EV_EFI_GPT_EVENT"},
    {event_type::efi_action, "EV_EFI_ACTION"},
    {event_type::efi_platform_firmware_blob, "EV_EFI_PLATFORM_FIRMWARE_BLOB"},
    {event_type::efi_handoff_tables, "EV_EFI_HANDOFF_TABLES"},
    {event_type::efi_platform_firmware_blob2, "EV_EFI_PLATFORM_FIRMWARE_BLOB2"},
    {event_type::efi_handoff_tables2, "EV_EFI_HANDOFF_TABLES2"},
    {event_type::efi_variable_boot2, "EV_EFI_VARIABLE_BOOT2"},
    {event_type::efi_hcrtm_event, "EV_EFI_HCRTM_EVENT"},
    {event_type::efi_variable_authority, "EV_EFI_VARIABLE_AUTHORITY"},
    {event_type::efi_spdm_firmware_blob, "EV_EFI_SPDM_FIRMWARE_BLOB"},
    {event_type::efi_spdm_firmware_config, "EV_EFI_SPDM_FIRMWARE_CONFIG"},
};

bool is_known_bank(uint16_t id) {
  return id == alg::sha1 || id == alg::sha256 || id == alg::sha384 || id == alg::sha512;
}

}  // namespace

std::string event_type_name(uint32_t type) {
  for (const auto& t : kTypeNames) {
    if (t.type == type) return t.name;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "EV_UNKNOWN_0x%08x", type);
  return buf;
}

std::string alg_name(uint16_t id) {
  if (is_known_bank(id)) return std::string(attestation::hash_alg_name(id));
  char buf[16];
  std::snprintf(buf, sizeof buf, "alg-0x%04x", id);
  return buf;
}

const Bytes* Event::digest(uint16_t id) const {
  for (const auto& d : digests) {
    if (d.alg == id) return &d.digest;
  }
  return nullptr;
}

std::vector<uint16_t> EventLog::banks() const {
  std::vector<uint16_t> out;
  if (!spec_id) return {alg::sha1};
  for (const auto& a : spec_id->algorithms) {
    if (is_known_bank(a.alg)) out.push_back(a.alg);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<EventLog> parse_event_log(ByteView bytes) {
  if (bytes.size() > kMaxLogSize) {
    return fail(errc::invalid_argument,
                "event log is " + std::to_string(bytes.size()) + " bytes, more than the limit of " +
                    std::to_string(kMaxLogSize));
  }
  if (bytes.empty()) return fail(errc::corrupt, "event log is empty");
  EventLog log;
  Reader r(bytes, 0);
  OUTPOST_TRY(Event first, parse_sha1_record(r, 0));
  if (first.type == event_type::no_action && starts_with(first.data, kSpecIdSignature)) {
    // Crypto-agile (PFP 10.4.5): the Spec ID event, then TCG_PCR_EVENT2 records.
    if (first.pcr != 0) return corrupt(0, 0, "Spec ID event on PCR " + std::to_string(first.pcr) + ", not 0");
    const Bytes& digest = first.digests.front().digest;
    if (std::any_of(digest.begin(), digest.end(), [](uint8_t b) { return b != 0; })) {
      return corrupt(0, 0, "Spec ID event with a non-zero digest");
    }
    if (first.data.size() < kSpecIdFixedSize) {
      return corrupt(0, 0, "Spec ID event size " + std::to_string(first.data.size()) + " is below its fixed " +
                               std::to_string(kSpecIdFixedSize) + " bytes");
    }
    // The structure, not eventSize, says where the Spec ID event ends, as tpm2_eventlog reads
    // it: some logs leave the vendor info out of eventSize.
    size_t consumed = 0;
    OUTPOST_TRY(log.spec_id, parse_spec_id(bytes.subspan(kSha1HeaderSize), kSha1HeaderSize, &consumed));
    first.data.assign(bytes.begin() + kSha1HeaderSize, bytes.begin() + static_cast<std::ptrdiff_t>(kSha1HeaderSize + consumed));
    r = Reader(bytes.subspan(kSha1HeaderSize + consumed), kSha1HeaderSize + consumed);
    log.format = LogFormat::crypto_agile;
    log.events.push_back(std::move(first));
    while (r.left() > 0) {
      size_t index = log.events.size();
      OUTPOST_TRY_VOID(check_event_count(index, r.offset()));
      OUTPOST_TRY(Event e, parse_event2_record(r, index, *log.spec_id));
      OUTPOST_TRY_VOID(check_pcr_index(e));
      log.events.push_back(std::move(e));
    }
    return log;
  }
  // SHA-1 format throughout (no Spec ID Event03).
  log.format = LogFormat::sha1;
  OUTPOST_TRY_VOID(check_pcr_index(first));
  log.events.push_back(std::move(first));
  while (r.left() > 0) {
    size_t index = log.events.size();
    OUTPOST_TRY_VOID(check_event_count(index, r.offset()));
    OUTPOST_TRY(Event e, parse_sha1_record(r, index));
    OUTPOST_TRY_VOID(check_pcr_index(e));
    log.events.push_back(std::move(e));
  }
  return log;
}

Result<EfiVariable> decode_efi_variable(ByteView data) {
  Reader r(data, 0);
  ByteView guid, name, value;
  uint64_t name_length = 0, data_length = 0;
  if (!r.take(16, guid) || !r.u64(name_length) || !r.u64(data_length)) {
    return fail(errc::corrupt, "UEFI_VARIABLE_DATA header truncated (" + plural_bytes(data.size()) + ")");
  }
  // Compare before multiplying: both lengths are untrusted 64-bit values.
  if (name_length > r.left() / 2 || !r.take(static_cast<size_t>(name_length) * 2, name)) {
    return fail(errc::corrupt, "UnicodeNameLength " + std::to_string(name_length) + " exceeds the event");
  }
  if (data_length > r.left() || !r.take(static_cast<size_t>(data_length), value)) {
    return fail(errc::corrupt, "VariableDataLength " + std::to_string(data_length) + " exceeds the event");
  }
  EfiVariable v;
  std::copy(guid.begin(), guid.end(), v.guid.begin());
  v.name = utf16_to_utf8(name);
  v.data.assign(value.begin(), value.end());
  return v;
}

std::string format_guid(const std::array<uint8_t, 16>& g) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", g[3], g[2],
                g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
  return buf;
}

std::string describe_event(const Event& e) {
  switch (e.type) {
    case event_type::no_action:
      return clip(describe_no_action(e));
    case event_type::separator:
      if (e.data.size() == 4) {
        std::string v = hex_encode(e.data);
        return "separator " + v + (v == "ffffffff" ? " (error)" : "");
      }
      return clip("separator " + text_or_bytes(e.data));
    case event_type::efi_variable_driver_config:
    case event_type::efi_variable_boot:
    case event_type::efi_variable_boot2:
    case event_type::efi_variable_authority:
      return clip(describe_variable(e));
    case event_type::efi_boot_services_application:
    case event_type::efi_boot_services_driver:
    case event_type::efi_runtime_services_driver:
      return clip(describe_image(e));
    case event_type::efi_platform_firmware_blob:
      return describe_blob(e.data, false);
    case event_type::efi_platform_firmware_blob2:
      return clip(describe_blob(e.data, true));
    case event_type::efi_handoff_tables:
      return clip(describe_handoff_tables(e.data, false));
    case event_type::efi_handoff_tables2:
      return clip(describe_handoff_tables(e.data, true));
    case event_type::efi_gpt_event:
      return describe_gpt(e.data);
    case event_type::post_code:
      // A string ("ACPI DATA") or a UEFI_PLATFORM_FIRMWARE_BLOB.
      if (!as_text(e.data) && e.data.size() == 16) return describe_blob(e.data, false);
      return clip(text_or_bytes(e.data));
    default:
      return clip(text_or_bytes(e.data));
  }
}

Result<Bytes> bank_hash(uint16_t id, ByteView data) {
  switch (id) {
    case alg::sha1: {
      Bytes out(20);
      OUTPOST_TRY_VOID(mbedtls_check(mbedtls_sha1_ret(data.data(), data.size(), out.data()), "mbedtls_sha1_ret"));
      return out;
    }
    case alg::sha256: {
      Digest d = sha256(data);
      return Bytes(d.begin(), d.end());
    }
    case alg::sha384:
    case alg::sha512: {
      Bytes out(64);
      int is384 = id == alg::sha384 ? 1 : 0;
      OUTPOST_TRY_VOID(
          mbedtls_check(mbedtls_sha512_ret(data.data(), data.size(), out.data(), is384), "mbedtls_sha512_ret"));
      out.resize(is384 ? 48 : 64);
      return out;
    }
    default:
      return fail(errc::unsupported, "no hash for " + alg_name(id));
  }
}

namespace {

Result<Bytes> extend(uint16_t id, const Bytes& old, const Bytes& digest) {
  Bytes buf;
  buf.reserve(old.size() + digest.size());
  buf.insert(buf.end(), old.begin(), old.end());
  buf.insert(buf.end(), digest.begin(), digest.end());
  return bank_hash(id, buf);
}

bool pcr0_extended(const Replay& r) {
  return std::any_of(r.begin(), r.end(), [](const auto& bank) { return !bank.second.pcrs[0].events.empty(); });
}

bool pcr0_has_locality(const Replay& r) {
  return std::any_of(r.begin(), r.end(), [](const auto& bank) { return bank.second.pcrs[0].locality.has_value(); });
}

void set_pcr0_locality(Replay& r, uint8_t locality) {
  for (auto& bank : r) {
    PcrReplay& p = bank.second.pcrs[0];
    p.locality = locality;
    p.initial.back() = locality;
    p.value = p.initial;
  }
}

}  // namespace

Result<Replay> replay(const EventLog& log) {
  Replay out;
  for (uint16_t id : log.banks()) {
    BankReplay& bank = out[id];
    bank.alg = id;
    for (auto& p : bank.pcrs) {
      p.initial.assign(attestation::hash_alg_digest_size(id), 0);
      p.value = p.initial;
    }
  }
  bool hcrtm = false;
  for (const Event& e : log.events) {
    if (e.type == event_type::no_action) {
      // Not extended (PFP 10.4.5). A StartupLocality event says from which locality
      // TPM2_Startup ran, which is PCR 0's reset value (PFP 10.4.5.3).
      if (log.format == LogFormat::crypto_agile && e.pcr == 0 && starts_with(e.data, kStartupLocalitySignature) &&
          !hcrtm) {
        if (e.data.size() < 17) return corrupt(e.index, e.offset, "StartupLocality event without its locality byte");
        if (pcr0_extended(out)) return corrupt(e.index, e.offset, "StartupLocality after PCR 0 was extended");
        if (pcr0_has_locality(out)) return corrupt(e.index, e.offset, "a second StartupLocality event");
        set_pcr0_locality(out, e.data[16]);
      }
      continue;
    }
    if (e.type == event_type::efi_hcrtm_event && e.pcr == 0 && !hcrtm && !pcr0_extended(out)) {
      // An H-CRTM sequence starts PCR 0 from locality 4 (TPM 2.0 Part 1, H-CRTM).
      hcrtm = true;
      set_pcr0_locality(out, 4);
    }
    for (const auto& d : e.digests) {
      auto bank = out.find(d.alg);
      if (bank == out.end()) continue;  // a declared algorithm outpost cannot hash
      PcrReplay& p = bank->second.pcrs[e.pcr];
      OUTPOST_TRY(p.value, extend(d.alg, p.value, d.digest));
      p.events.push_back(e.index);
    }
  }
  return out;
}

bool QuoteComparison::all_match() const {
  return std::all_of(pcrs.begin(), pcrs.end(),
                     [](const PcrComparison& c) { return c.verdict == PcrComparison::Verdict::match; });
}

std::optional<size_t> QuoteComparison::first_divergent_event() const {
  std::optional<size_t> first;
  for (const auto& c : pcrs) {
    if (c.verdict == PcrComparison::Verdict::match || !c.first_divergent_event) continue;
    if (!first || *c.first_divergent_event < *first) first = c.first_divergent_event;
  }
  return first;
}

Result<QuoteComparison> compare_with_quote(const EventLog& log, const Replay& replayed,
                                           const attestation::PcrValues& quoted) {
  using Verdict = PcrComparison::Verdict;
  QuoteComparison out;
  for (const auto& qbank : quoted) {
    auto bank = replayed.find(qbank.hash_alg);
    for (const auto& q : qbank.values) {
      PcrComparison c;
      c.alg = qbank.hash_alg;
      c.pcr = q.first;
      c.quoted = q.second;
      if (bank == replayed.end()) {
        c.verdict = Verdict::bank_not_in_log;
        out.pcrs.push_back(std::move(c));
        continue;
      }
      if (q.first >= kPcrCount) {
        c.verdict = Verdict::no_prefix_matches;
        out.pcrs.push_back(std::move(c));
        continue;
      }
      const PcrReplay& p = bank->second.pcrs[q.first];
      c.replayed = p.value;
      if (p.value == q.second) {
        out.pcrs.push_back(std::move(c));
        continue;
      }
      // The quoted value may be the replay of a prefix: the TPM saw fewer events than the log.
      Bytes value = p.initial;
      for (size_t k = 0; k < p.events.size(); ++k) {
        if (value == q.second) {
          c.verdict = Verdict::log_has_extra;
          c.first_divergent_event = p.events[k];
          break;
        }
        const Bytes* digest = p.events[k] < log.events.size() ? log.events[p.events[k]].digest(qbank.hash_alg) : nullptr;
        if (digest == nullptr) return fail(errc::invalid_argument, "the replay is not of this event log");
        OUTPOST_TRY(value, extend(qbank.hash_alg, value, *digest));
      }
      if (c.verdict != Verdict::log_has_extra) {
        c.verdict = Verdict::no_prefix_matches;
        if (!p.events.empty()) c.first_divergent_event = p.events.front();
      }
      out.pcrs.push_back(std::move(c));
    }
  }
  return out;
}

}  // namespace outpost::firmware_hooks
