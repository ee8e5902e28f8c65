// The boot event log parser and replay (firmware-hooks/): the sample logs against
// tpm2_eventlog, logs built here against values computed here, and malformed input.
#include <mbedtls/sha1.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <boost/json.hpp>

#include "outpost/base/crypto.h"
#include "outpost/base/files.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "test_support.h"

using namespace outpost;
using namespace outpost::firmware_hooks;
namespace fs = std::filesystem;

namespace {

constexpr uint16_t kSha1 = 0x0004;
constexpr uint16_t kSha256 = 0x000B;
constexpr uint16_t kSha384 = 0x000C;

// bank name -> PCR -> lower-case hex, as tpm2_eventlog and `outpost eventlog replay` print it.
using PcrTable = std::map<std::string, std::map<uint32_t, std::string>>;

Bytes as_bytes_copy(std::string_view s) {
  auto v = as_bytes(s);
  return Bytes(v.begin(), v.end());
}

// Independent of the library's hashing: mbedTLS SHA-1 called directly, base's SHA-256.
Bytes sha1_of(ByteView data) {
  Bytes out(20);
  REQUIRE(mbedtls_sha1_ret(data.data(), data.size(), out.data()) == 0);
  return out;
}
Bytes sha256_of(ByteView data) {
  Digest d = sha256(data);
  return Bytes(d.begin(), d.end());
}
Bytes hash_of(uint16_t alg, ByteView data) { return alg == kSha1 ? sha1_of(data) : sha256_of(data); }
Bytes concat(const Bytes& a, const Bytes& b) {
  Bytes out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

Bytes utf16(const std::string& ascii, bool nul = true) {
  Bytes out;
  for (char c : ascii) {
    out.push_back(static_cast<uint8_t>(c));
    out.push_back(0);
  }
  if (nul) out.insert(out.end(), {0, 0});
  return out;
}

// Little-endian writer for building logs.
struct Writer {
  Bytes out;
  Writer& u8(uint8_t v) {
    out.push_back(v);
    return *this;
  }
  Writer& u16(uint16_t v) { return u8(v & 0xff).u8(static_cast<uint8_t>(v >> 8)); }
  Writer& u32(uint32_t v) { return u16(v & 0xffff).u16(static_cast<uint16_t>(v >> 16)); }
  Writer& u64(uint64_t v) { return u32(v & 0xffffffffu).u32(static_cast<uint32_t>(v >> 32)); }
  Writer& bytes(ByteView b) {
    out.insert(out.end(), b.begin(), b.end());
    return *this;
  }
};

const std::array<uint8_t, 16> kEfiGlobalVariable = {0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11,
                                                    0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c};

Bytes efi_variable(const std::string& name, const Bytes& data) {
  Writer w;
  w.bytes(kEfiGlobalVariable).u64(name.size()).u64(data.size()).bytes(utf16(name, false)).bytes(data);
  return w.out;
}

// A crypto-agile log built in code. Each event's digest per bank is H(data) unless given.
class LogBuilder {
 public:
  explicit LogBuilder(std::vector<AlgorithmSize> algs, Bytes vendor = {}) : algs_(std::move(algs)) {
    Writer spec;
    spec.bytes(as_bytes(std::string_view("Spec ID Event03\0", 16))).u32(0).u8(0).u8(2).u8(0).u8(2).u32(
        static_cast<uint32_t>(algs_.size()));
    for (const auto& a : algs_) spec.u16(a.alg).u16(a.digest_size);
    spec.u8(static_cast<uint8_t>(vendor.size())).bytes(vendor);
    w_.u32(0).u32(event_type::no_action).bytes(Bytes(20, 0)).u32(static_cast<uint32_t>(spec.out.size())).bytes(spec.out);
  }

  // Returns the new event's index.
  size_t add(uint32_t pcr, uint32_t type, const Bytes& data, std::optional<Bytes> hashed = std::nullopt) {
    w_.u32(pcr).u32(type).u32(static_cast<uint32_t>(algs_.size()));
    for (const auto& a : algs_) {
      Bytes d;
      if (a.alg == kSha1 || a.alg == kSha256) {
        d = type == event_type::no_action ? Bytes(a.digest_size, 0) : hash_of(a.alg, hashed.value_or(data));
      } else {
        d = Bytes(a.digest_size, 0xA5);  // a bank the test does not replay
      }
      w_.u16(a.alg).bytes(d);
    }
    w_.u32(static_cast<uint32_t>(data.size())).bytes(data);
    return ++count_;
  }

  const Bytes& bytes() const { return w_.out; }

 private:
  std::vector<AlgorithmSize> algs_;
  Writer w_;
  size_t count_ = 0;
};

const std::vector<AlgorithmSize> kTwoBanks = {{kSha1, 20}, {kSha256, 32}};

Bytes separator() { return Bytes(4, 0); }

Bytes startup_locality(uint8_t locality) {
  Bytes b(16, 0);
  std::memcpy(b.data(), "StartupLocality", 15);
  b.push_back(locality);
  return b;
}

Bytes image_load_event(const std::string& file) {
  Bytes name = utf16(file);
  Writer path;
  path.u8(4).u8(4).u16(static_cast<uint16_t>(4 + name.size())).bytes(name).u8(0x7f).u8(0xff).u16(4);
  Writer w;
  w.u64(0x7d000000).u64(954368).u64(0).u64(path.out.size()).bytes(path.out);
  return w.out;
}

Bytes load_option(const std::string& description) {
  Writer w;
  w.u32(1).u16(4).bytes(utf16(description)).u8(0x7f).u8(0xff).u16(4);
  return w.out;
}

// The pcrs: section of tpm2_eventlog's output.
PcrTable parse_tpm2_eventlog_pcrs(const std::string& out) {
  PcrTable table;
  std::istringstream in(out);
  std::string line, bank;
  bool in_pcrs = false;
  while (std::getline(in, line)) {
    if (line == "pcrs:") {
      in_pcrs = true;
      continue;
    }
    if (!in_pcrs) continue;
    if (line.rfind("  ", 0) != 0) break;
    if (line.rfind("    ", 0) != 0) {
      bank = line.substr(2, line.find(':') - 2);
      table[bank];
      continue;
    }
    size_t colon = line.find(':');
    size_t hex = line.find("0x", colon);
    REQUIRE(colon != std::string::npos);
    REQUIRE(hex != std::string::npos);
    table[bank][static_cast<uint32_t>(std::stoul(line.substr(4, colon - 4)))] = line.substr(hex + 2);
  }
  return table;
}

std::vector<std::string> yaml_values(const std::string& out, const std::string& key) {
  std::vector<std::string> values;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    size_t at = line.find(key + ": ");
    if (at != std::string::npos && line.find_first_not_of(" -") == at) values.push_back(line.substr(at + key.size() + 2));
  }
  return values;
}

PcrTable table_of(const Replay& r) {
  PcrTable t;
  for (const auto& bank : r) {
    for (uint32_t i = 0; i < kPcrCount; ++i) {
      if (bank.second.pcrs[i].touched()) t[alg_name(bank.first)][i] = hex_encode(bank.second.pcrs[i].value);
    }
  }
  return t;
}

std::vector<fs::path> sample_logs() {
  const fs::path dir = OUTPOST_EVENTLOG_SAMPLES;
  INFO("sample event logs expected in " << dir);
  REQUIRE(fs::is_directory(dir));
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".bin") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(!files.empty());
  return files;
}

Bytes read_sample(const fs::path& p) {
  auto bytes = read_file(p);
  REQUIRE(bytes);
  return *bytes;
}

std::string error_of(ByteView log) {
  auto parsed = parse_event_log(log);
  REQUIRE_FALSE(parsed);
  return parsed.error().message();
}

void put_u32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.at(at + i) = static_cast<uint8_t>(v >> (8 * i));
}

// A log with three events after the Spec ID event: separators into PCR 0 and 7, then one into 4.
LogBuilder small_log() {
  LogBuilder b(kTwoBanks);
  b.add(0, event_type::separator, separator());
  b.add(7, event_type::separator, separator());
  b.add(4, event_type::efi_action, as_bytes_copy("Calling EFI Application from Boot Option"));
  return b;
}

}  // namespace

TEST_CASE("every sample event log parses and replays as tpm2_eventlog does", "[eventlog]") {
  for (const fs::path& p : sample_logs()) {
    INFO(p.filename().string());
    Bytes bytes = read_sample(p);
    auto tool = testing::run_program({"tpm2_eventlog", p.string()});
    auto log = parse_event_log(bytes);
    if (tool.exit_code != 0) {
      // tpm2_eventlog refuses it: so must we.
      CHECK_FALSE(log);
      continue;
    }
    REQUIRE(log);
    std::vector<std::string> types = yaml_values(tool.out, "EventType");
    REQUIRE(types.size() == log->events.size());
    for (size_t i = 0; i < types.size(); ++i) CHECK(event_type_name(log->events[i].type) == types[i]);
    std::vector<std::string> pcrs = yaml_values(tool.out, "PCRIndex");
    REQUIRE(pcrs.size() == log->events.size());
    for (size_t i = 0; i < pcrs.size(); ++i) CHECK(std::to_string(log->events[i].pcr) == pcrs[i]);
    auto replayed = replay(*log);
    REQUIRE(replayed);
    PcrTable expected = parse_tpm2_eventlog_pcrs(tool.out);
    CHECK(table_of(*replayed) == expected);
    for (const auto& e : log->events) (void)describe_event(e);
  }
}

TEST_CASE("the sample logs decode to readable events", "[eventlog]") {
  const fs::path dir = OUTPOST_EVENTLOG_SAMPLES;
  auto uefivar = parse_event_log(read_sample(dir / "event-uefivar.bin"));
  REQUIRE(uefivar);
  REQUIRE(uefivar->format == LogFormat::crypto_agile);
  REQUIRE(uefivar->events.size() == 2);
  CHECK(uefivar->banks() == std::vector<uint16_t>{0x0004, 0x000B, 0x000C, 0x000D});
  CHECK(event_type_name(uefivar->events[1].type) == "EV_EFI_VARIABLE_DRIVER_CONFIG");
  CHECK(describe_event(uefivar->events[1]) == "SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c) 1 byte: 01");

  auto vendor = parse_event_log(read_sample(dir / "specid-vendordata.bin"));
  REQUIRE(vendor);
  REQUIRE(vendor->spec_id);
  CHECK(vendor->spec_id->vendor_info == Bytes{0xde, 0xad, 0xbe, 0xef});
  CHECK(vendor->events.size() == 1);
  auto vendor_replay = replay(*vendor);
  REQUIRE(vendor_replay);
  CHECK(table_of(*vendor_replay).empty());

  auto sha1 = parse_event_log(read_sample(dir / "event-uefi-sha1-log.bin"));
  REQUIRE(sha1);
  CHECK(sha1->format == LogFormat::sha1);
  CHECK_FALSE(sha1->spec_id);
  CHECK(sha1->banks() == std::vector<uint16_t>{0x0004});
  CHECK(describe_event(sha1->events[1]).rfind("SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c)", 0) == 0);
  bool saw_separator = false;
  for (const auto& e : sha1->events) {
    if (e.type == event_type::separator) {
      CHECK(describe_event(e) == "separator 00000000");
      saw_separator = true;
    }
  }
  CHECK(saw_separator);

  auto arch = parse_event_log(read_sample(dir / "event-arch-linux.bin"));
  REQUIRE(arch);
  bool saw_image = false;
  for (const auto& e : arch->events) {
    if (e.type == event_type::efi_boot_services_application) {
      saw_image = true;
      CHECK(describe_event(e).find("(image ") != std::string::npos);
    }
  }
  CHECK(saw_image);
}

TEST_CASE("a generated log replays to independently computed PCRs", "[eventlog]") {
  LogBuilder b(kTwoBanks);
  const Bytes crtm = utf16("1.0");
  const Bytes secure_boot = efi_variable("SecureBoot", {1});
  const Bytes boot0001 = efi_variable("Boot0001", load_option("Fedora"));
  const Bytes image = image_load_event("\\EFI\\BOOT\\BOOTX64.EFI");
  const Bytes image_contents = as_bytes_copy("the PE image itself");
  const Bytes action = as_bytes_copy("Calling EFI Application from Boot Option");

  size_t locality = b.add(0, event_type::no_action, startup_locality(3));
  size_t crtm_i = b.add(0, event_type::s_crtm_version, crtm);
  size_t sb_i = b.add(7, event_type::efi_variable_driver_config, secure_boot);
  std::vector<size_t> separators;
  for (uint32_t pcr = 0; pcr <= 7; ++pcr) separators.push_back(b.add(pcr, event_type::separator, separator()));
  size_t boot_i = b.add(1, event_type::efi_variable_boot, boot0001);
  size_t action_i = b.add(4, event_type::efi_action, action);
  size_t image_i = b.add(4, event_type::efi_boot_services_application, image, image_contents);

  auto log = parse_event_log(b.bytes());
  REQUIRE(log);
  REQUIRE(log->format == LogFormat::crypto_agile);
  REQUIRE(log->events.size() == image_i + 1);
  CHECK(log->banks() == std::vector<uint16_t>{kSha1, kSha256});

  CHECK(event_type_name(log->events[locality].type) == "EV_NO_ACTION");
  CHECK(describe_event(log->events[locality]) == "StartupLocality 3");
  CHECK(describe_event(log->events[0]) == "Spec ID Event03: sha1/20 sha256/32");
  CHECK(event_type_name(log->events[crtm_i].type) == "EV_S_CRTM_VERSION");
  CHECK(describe_event(log->events[crtm_i]) == "\"1.0\"");
  CHECK(event_type_name(log->events[sb_i].type) == "EV_EFI_VARIABLE_DRIVER_CONFIG");
  CHECK(describe_event(log->events[sb_i]) == "SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c) 1 byte: 01");
  CHECK(event_type_name(log->events[separators[0]].type) == "EV_SEPARATOR");
  CHECK(describe_event(log->events[separators[0]]) == "separator 00000000");
  CHECK(event_type_name(log->events[boot_i].type) == "EV_EFI_VARIABLE_BOOT");
  CHECK(describe_event(log->events[boot_i]).rfind("Boot0001 (8be4df61-93ca-11d2-aa0d-00e098032b8c) ", 0) == 0);
  CHECK(describe_event(log->events[boot_i]).find("\"Fedora\"") != std::string::npos);
  CHECK(event_type_name(log->events[action_i].type) == "EV_EFI_ACTION");
  CHECK(describe_event(log->events[action_i]) == "\"Calling EFI Application from Boot Option\"");
  CHECK(event_type_name(log->events[image_i].type) == "EV_EFI_BOOT_SERVICES_APPLICATION");
  CHECK(describe_event(log->events[image_i]) == "\\EFI\\BOOT\\BOOTX64.EFI (image 954368 bytes at 0x7d000000)");
  auto var = decode_efi_variable(log->events[sb_i].data);
  REQUIRE(var);
  CHECK(var->name == "SecureBoot");
  CHECK(var->data == Bytes{1});
  CHECK(format_guid(var->guid) == "8be4df61-93ca-11d2-aa0d-00e098032b8c");

  auto replayed = replay(*log);
  REQUIRE(replayed);
  for (uint16_t alg : {kSha1, kSha256}) {
    INFO(alg_name(alg));
    size_t size = alg == kSha1 ? 20 : 32;
    auto ext = [alg](const Bytes& old, const Bytes& data) { return hash_of(alg, concat(old, hash_of(alg, data))); };
    Bytes pcr0(size, 0);
    pcr0.back() = 3;  // StartupLocality 3
    pcr0 = ext(ext(pcr0, crtm), separator());
    Bytes pcr1 = ext(ext(Bytes(size, 0), separator()), boot0001);
    Bytes pcr4 = ext(ext(ext(Bytes(size, 0), separator()), action), image_contents);
    Bytes pcr7 = ext(ext(Bytes(size, 0), secure_boot), separator());
    Bytes pcr2 = ext(Bytes(size, 0), separator());
    const BankReplay& bank = replayed->at(alg);
    CHECK(bank.pcrs[0].locality == std::optional<uint8_t>(3));
    CHECK(hex_encode(bank.pcrs[0].value) == hex_encode(pcr0));
    CHECK(hex_encode(bank.pcrs[1].value) == hex_encode(pcr1));
    CHECK(hex_encode(bank.pcrs[2].value) == hex_encode(pcr2));
    CHECK(hex_encode(bank.pcrs[4].value) == hex_encode(pcr4));
    CHECK(hex_encode(bank.pcrs[7].value) == hex_encode(pcr7));
    CHECK(bank.pcrs[4].events == std::vector<size_t>{separators[4], action_i, image_i});
    for (uint32_t i = 0; i < kPcrCount; ++i) CHECK(bank.pcrs[i].touched() == (i <= 7));
  }
}

TEST_CASE("a generated log without a locality agrees with tpm2_eventlog", "[eventlog]") {
  LogBuilder b(kTwoBanks);
  b.add(0, event_type::s_crtm_version, utf16("1.0"));
  b.add(7, event_type::efi_variable_driver_config, efi_variable("SecureBoot", {1}));
  for (uint32_t pcr = 0; pcr <= 7; ++pcr) b.add(pcr, event_type::separator, separator());
  b.add(4, event_type::efi_action, as_bytes_copy("Calling EFI Application from Boot Option"));
  testing::TempDir dir;
  const fs::path file = dir / "generated.bin";
  {
    std::ofstream out(file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.bytes().data()), static_cast<std::streamsize>(b.bytes().size()));
  }
  auto tool = testing::run_program({"tpm2_eventlog", file.string()});
  REQUIRE(tool.exit_code == 0);
  auto log = parse_event_log(b.bytes());
  REQUIRE(log);
  auto replayed = replay(*log);
  REQUIRE(replayed);
  CHECK(table_of(*replayed) == parse_tpm2_eventlog_pcrs(tool.out));
}

TEST_CASE("an algorithm the Spec ID event declares but outpost does not know is skipped", "[eventlog]") {
  LogBuilder with(std::vector<AlgorithmSize>{{kSha1, 20}, {0x00B0, 24}, {kSha256, 32}});
  LogBuilder without(kTwoBanks);
  for (LogBuilder* b : {&with, &without}) {
    b->add(0, event_type::post_code, as_bytes_copy("ACPI DATA"));
    b->add(7, event_type::separator, separator());
  }
  auto a = parse_event_log(with.bytes());
  auto b = parse_event_log(without.bytes());
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->events[1].digest(0x00B0) != nullptr);
  CHECK(a->banks() == std::vector<uint16_t>{kSha1, kSha256});
  auto ra = replay(*a);
  auto rb = replay(*b);
  REQUIRE(ra);
  REQUIRE(rb);
  CHECK(table_of(*ra) == table_of(*rb));
  CHECK(describe_event(a->events[1]) == "\"ACPI DATA\"");
}

TEST_CASE("comparing with quoted PCRs names the first divergent event", "[eventlog]") {
  LogBuilder b(kTwoBanks);
  size_t pcr7_first = b.add(7, event_type::efi_variable_driver_config, efi_variable("SecureBoot", {1}));
  size_t pcr7_second = b.add(7, event_type::separator, separator());
  size_t pcr4_first = b.add(4, event_type::separator, separator());
  b.add(4, event_type::efi_action, as_bytes_copy("Calling EFI Application from Boot Option"));
  auto log = parse_event_log(b.bytes());
  REQUIRE(log);
  auto replayed = replay(*log);
  REQUIRE(replayed);
  const BankReplay& bank = replayed->at(kSha256);

  attestation::PcrValues quoted(1);
  quoted[0].hash_alg = kSha256;
  quoted[0].values[4] = bank.pcrs[4].value;
  quoted[0].values[7] = bank.pcrs[7].value;
  quoted[0].values[9] = Bytes(32, 0);
  auto same = compare_with_quote(*log, *replayed, quoted);
  REQUIRE(same);
  CHECK(same->all_match());
  CHECK_FALSE(same->first_divergent_event());

  // The TPM saw only the first event into PCR 7: the second is the first it did not see.
  Bytes after_first = hash_of(kSha256, concat(Bytes(32, 0), hash_of(kSha256, efi_variable("SecureBoot", {1}))));
  quoted[0].values[7] = after_first;
  // PCR 4 holds something no prefix gives: nothing from its first event on can be vouched for.
  quoted[0].values[4] = Bytes(32, 0x42);
  auto differ = compare_with_quote(*log, *replayed, quoted);
  REQUIRE(differ);
  CHECK_FALSE(differ->all_match());
  REQUIRE(differ->pcrs.size() == 3);
  const PcrComparison& c4 = differ->pcrs[0];
  CHECK(c4.pcr == 4);
  CHECK(c4.verdict == PcrComparison::Verdict::no_prefix_matches);
  CHECK(c4.first_divergent_event == std::optional<size_t>(pcr4_first));
  const PcrComparison& c7 = differ->pcrs[1];
  CHECK(c7.pcr == 7);
  CHECK(c7.verdict == PcrComparison::Verdict::log_has_extra);
  CHECK(c7.first_divergent_event == std::optional<size_t>(pcr7_second));
  CHECK(differ->pcrs[2].verdict == PcrComparison::Verdict::match);
  CHECK(differ->first_divergent_event() == std::optional<size_t>(pcr7_second));
  (void)pcr7_first;

  attestation::PcrValues other(1);
  other[0].hash_alg = kSha384;
  other[0].values[0] = Bytes(48, 0);
  auto missing = compare_with_quote(*log, *replayed, other);
  REQUIRE(missing);
  CHECK(missing->pcrs.at(0).verdict == PcrComparison::Verdict::bank_not_in_log);
}

TEST_CASE("every truncation of a log is an error or a shorter valid log", "[eventlog]") {
  std::vector<Bytes> logs = {small_log().bytes()};
  for (const fs::path& p : sample_logs()) logs.push_back(read_sample(p));
  for (const Bytes& full : logs) {
    auto whole = parse_event_log(full);
    if (!whole) continue;
    for (size_t n = 0; n < full.size(); ++n) {
      auto part = parse_event_log(ByteView(full).first(n));
      if (!part) {
        INFO("prefix " << n);
        CHECK_FALSE(part.error().message().empty());
        continue;
      }
      REQUIRE(part->events.size() < whole->events.size());
      for (size_t i = 0; i < part->events.size(); ++i) REQUIRE(part->events[i].data == whole->events[i].data);
      CHECK(replay(*part));
    }
  }
}

TEST_CASE("malformed logs get clear errors", "[eventlog]") {
  const Bytes good = small_log().bytes();
  REQUIRE(parse_event_log(good));
  // Offsets in small_log(): Spec ID record 32 + 37 bytes; each event2 record is
  // 12 + (2+20) + (2+32) + 4 + data.
  const size_t first_event = 32 + 37;
  const size_t record = 12 + 22 + 34 + 4 + 4;

  SECTION("empty") { CHECK(error_of(ByteView()).find("event log is empty") != std::string::npos); }
  SECTION("truncated in the digest list") {
    std::string e = error_of(ByteView(good).first(first_event + 12 + 10));
    CHECK(e.find("event 1 at offset 0x45: truncated sha1 digest") != std::string::npos);
  }
  SECTION("absurd event size") {
    Bytes bad = good;
    put_u32(bad, first_event + 12 + 22 + 34, 0xFFFFFFF0u);
    std::string e = error_of(bad);
    CHECK(e.find("event 1 at offset 0x45: event size 4294967280 exceeds") != std::string::npos);
  }
  SECTION("digest count larger than the algorithms declared") {
    Bytes bad = good;
    put_u32(bad, first_event + record + 8, 3);
    std::string e = error_of(bad);
    CHECK(e.find("event 2 at offset") != std::string::npos);
    CHECK(e.find("digest count 3 exceeds the 2 algorithms") != std::string::npos);
  }
  SECTION("an algorithm not declared in the Spec ID event") {
    Bytes bad = good;
    bad.at(first_event + 12) = 0x12;  // sha1 -> 0x0012 (SM3_256), not declared
    CHECK(error_of(bad).find("digest algorithm alg-0x0012 is not declared in the Spec ID event") != std::string::npos);
  }
  SECTION("PCR index out of range") {
    Bytes bad = good;
    put_u32(bad, first_event, 24);
    CHECK(error_of(bad).find("PCR index 24 out of range") != std::string::npos);
  }
  SECTION("a known algorithm declared with the wrong size") {
    LogBuilder b(std::vector<AlgorithmSize>{{kSha256, 20}});
    CHECK(error_of(b.bytes()).find("sha256 declared with digest size 20, not 32") != std::string::npos);
  }
  SECTION("no algorithms declared") {
    LogBuilder b(std::vector<AlgorithmSize>{});
    CHECK(error_of(b.bytes()).find("declares no algorithms") != std::string::npos);
  }
  SECTION("absurd algorithm count") {
    Bytes bad = good;
    put_u32(bad, 32 + 24, 0x10000);
    CHECK(error_of(bad).find("declares 65536 algorithms") != std::string::npos);
  }
  SECTION("larger than 64 MiB") {
    Bytes huge(kMaxLogSize + 1, 0);
    CHECK(error_of(huge).find("more than the limit") != std::string::npos);
  }
  SECTION("a UEFI variable whose name length runs past the event") {
    LogBuilder b(kTwoBanks);
    Bytes var = efi_variable("SecureBoot", {1});
    for (size_t i = 16; i < 24; ++i) var[i] = 0xFF;
    b.add(7, event_type::efi_variable_driver_config, var);
    auto log = parse_event_log(b.bytes());
    REQUIRE(log);  // the payload is for display; the digests still replay
    CHECK_FALSE(decode_efi_variable(log->events[1].data));
    CHECK(describe_event(log->events[1]).rfind("malformed UEFI_VARIABLE_DATA: UnicodeNameLength", 0) == 0);
  }
  SECTION("StartupLocality after PCR 0 was extended") {
    LogBuilder b(kTwoBanks);
    b.add(0, event_type::separator, separator());
    b.add(0, event_type::no_action, startup_locality(3));
    auto log = parse_event_log(b.bytes());
    REQUIRE(log);
    auto r = replay(*log);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("event 2 at offset") != std::string::npos);
  }
}

TEST_CASE("bank hashes match the published test vectors", "[eventlog]") {
  auto abc = as_bytes(std::string_view("abc"));
  auto h = [&](uint16_t alg) {
    auto r = bank_hash(alg, abc);
    REQUIRE(r);
    return hex_encode(*r);
  };
  CHECK(h(0x0004) == "a9993e364706816aba3e25717850c26c9cd0d89d");
  CHECK(h(0x000B) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(h(0x000C) ==
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
  CHECK(h(0x000D) ==
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643"
        "ce80e2a9ac94fa54ca49f");
  CHECK_FALSE(bank_hash(0x0012, abc));
}

TEST_CASE("outpost eventlog replay --json prints what tpm2_eventlog prints", "[eventlog]") {
  const fs::path file = fs::path(OUTPOST_EVENTLOG_SAMPLES) / "event-arch-linux.bin";
  auto cli = testing::run_outpost({"eventlog", "replay", file.string(), "--json"});
  REQUIRE(cli.exit_code == 0);
  PcrTable printed;
  const boost::json::value parsed = boost::json::parse(cli.out);
  for (const auto& bank : parsed.as_object()) {
    for (const auto& pcr : bank.value().as_object()) {
      printed[std::string(bank.key())][static_cast<uint32_t>(std::stoul(std::string(pcr.key())))] =
          std::string(pcr.value().as_string());
    }
  }
  auto tool = testing::run_program({"tpm2_eventlog", file.string()});
  REQUIRE(tool.exit_code == 0);
  CHECK(printed == parse_tpm2_eventlog_pcrs(tool.out));

  auto show = testing::run_outpost({"eventlog", "show", file.string()});
  REQUIRE(show.exit_code == 0);
  CHECK(show.out.find("SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c)") != std::string::npos);

  testing::TempDir dir;
  const Bytes whole = read_sample(file);
  REQUIRE(write_file_atomic(dir / "cut.bin", ByteView(whole).first(100)));
  auto cut = testing::run_outpost({"eventlog", "show", (dir / "cut.bin").string()});
  CHECK(cut.exit_code == 1);
  CHECK(cut.err.find("event 1 at offset 0x45: truncated sha1 digest") != std::string::npos);
}
