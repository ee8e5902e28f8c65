// outpost node check: validates this device against its board profile, one line per check
// with a verdict (ok, FAIL, warn, skipped) and, for a failure, what to do about it.
//
// Read-only: it writes nothing, creates no TPM object, reads no NV index whose shape it does
// not know (a wrong password could count towards dictionary-attack lockout), and leaves the
// leftovers of other TPM clients alone. docs/boards.md describes every check.
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>

#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "outpost/attestation/node.h"
#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/firmware_hooks/eventlog.h"
#include "sandbox/network.h"
#include "sandbox/sandbox.h"

namespace outpost::cli {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
namespace fh = firmware_hooks;
using attestation::NodeIdentity;
using attestation::PrimaryKey;
using attestation::Tpm;
using boards::BoardProfile;

enum class Verdict { ok, fail, warn, skipped };

struct Check {
  std::string name;
  Verdict verdict;
  std::string detail;
  std::string remedy;  // empty unless there is something to do
};

class Report {
 public:
  void ok(std::string name, std::string detail) { add(std::move(name), Verdict::ok, std::move(detail), {}); }
  void warn(std::string name, std::string detail, std::string remedy = {}) {
    add(std::move(name), Verdict::warn, std::move(detail), std::move(remedy));
  }
  void fail(std::string name, std::string detail, std::string remedy) {
    add(std::move(name), Verdict::fail, std::move(detail), std::move(remedy));
  }
  void skipped(std::string name, std::string detail) { add(std::move(name), Verdict::skipped, std::move(detail), {}); }

  const std::vector<Check>& checks() const { return checks_; }
  size_t count(Verdict v) const {
    return static_cast<size_t>(std::count_if(checks_.begin(), checks_.end(), [v](const Check& c) { return c.verdict == v; }));
  }

 private:
  void add(std::string name, Verdict v, std::string detail, std::string remedy) {
    checks_.push_back(Check{std::move(name), v, std::move(detail), std::move(remedy)});
  }
  std::vector<Check> checks_;
};

const char* verdict_word(Verdict v, bool for_json) {
  switch (v) {
    case Verdict::ok: return "ok";
    case Verdict::fail: return for_json ? "fail" : "FAIL";
    case Verdict::warn: return "warn";
    case Verdict::skipped: return "skipped";
  }
  return "?";
}

std::string mib(uint64_t bytes) {
  if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0) return std::to_string(bytes >> 30) + " GiB";
  return std::to_string(bytes >> 20) + " MiB";
}

std::string pcr_list(const std::vector<uint32_t>& pcrs) {
  std::string s;
  for (uint32_t p : pcrs) s += (s.empty() ? "" : ",") + std::to_string(p);
  return s;
}

// ---- TPM reachability ----

// The device node of a "device:PATH" TCTI ("device" alone means the TCTI's default), or
// nothing for TCTIs that are not a character device.
std::optional<fs::path> device_of(const std::string& tcti) {
  const size_t colon = tcti.find(':');
  if (tcti.substr(0, colon) != "device") return std::nullopt;
  if (colon == std::string::npos || colon + 1 == tcti.size()) return fs::path("/dev/tpm0");
  return fs::path(tcti.substr(colon + 1));
}

std::string tpm_remedy(const NodeContext& ctx) {
  if (device_of(ctx.tcti)) {
    return ctx.board.setup_hint.empty() ? "enable the TPM and load its kernel driver; dmesg | grep -i tpm shows what the kernel found"
                                        : ctx.board.setup_hint;
  }
  const std::string kind = ctx.tcti.substr(0, ctx.tcti.find(':'));
  if (kind == "swtpm" || kind == "mssim") {
    return "nothing answers there: start the simulator (scripts/swtpm.sh start DIR) and pass the TCTI from "
           "DIR/swtpm.env with --tcti";
  }
  return "check the TCTI: --tcti, then OUTPOST_TCTI, then the profile's tpm.tcti";
}

void check_device(const NodeContext& ctx, Report& r) {
  const std::optional<fs::path> dev = device_of(ctx.tcti);
  if (!dev) {
    r.skipped("tpm.device", "\"" + ctx.tcti + "\" is not a device TCTI");
    return;
  }
  struct stat st{};
  if (::stat(dev->c_str(), &st) != 0) {
    const int err = errno;
    r.fail("tpm.device", "no TPM device at " + dev->string() + " (" + std::strerror(err) + ")", tpm_remedy(ctx));
    return;
  }
  if (!S_ISCHR(st.st_mode)) {
    r.fail("tpm.device", dev->string() + " is not a character device", "point the TCTI at the kernel's TPM device (/dev/tpmrm0)");
    return;
  }
  if (::access(dev->c_str(), R_OK | W_OK) != 0) {
    r.fail("tpm.device", "this user (uid " + std::to_string(::getuid()) + ") cannot open " + dev->string() + " for reading and writing",
           "run as root or as the user outpostd runs as; the tpm-udev rules give /dev/tpmrm0 to the group tss");
    return;
  }
  r.ok("tpm.device", dev->string() + " is a character device this user can open");
}

struct Connected {
  std::unique_ptr<Tpm> tpm;
  attestation::TpmInfo info;
};

std::optional<Connected> check_tpm(const NodeContext& ctx, Report& r) {
  // A diagnostic must not flush what another client left loaded.
  auto tpm = Tpm::connect(ctx.tcti, Tpm::Options{.flush_leftovers = false});
  if (!tpm) {
    const bool device_failed = !r.checks().empty() && r.checks().back().name == "tpm.device" &&
                               r.checks().back().verdict == Verdict::fail;
    r.fail("tpm", tpm.error().message(), device_failed ? "see tpm.device" : tpm_remedy(ctx));
    return std::nullopt;
  }
  auto info = (*tpm)->info();
  if (!info) {
    r.fail("tpm", "the TPM at \"" + ctx.tcti + "\" answers but TPM2_GetCapability failed: " + info.error().message(),
           "a TPM that cannot report its properties is not usable; check its firmware and driver (dmesg | grep -i tpm)");
    return std::nullopt;
  }
  r.ok("tpm", "a TPM 2.0 answers on " + ctx.tcti);
  const uint32_t rev = info->spec_revision;  // TPM2_PT_REVISION: 159 is revision 1.59
  r.ok("tpm.info", "TPM 2.0 specification revision " + std::to_string(rev / 100) + "." +
                       (rev % 100 < 10 ? "0" : "") + std::to_string(rev % 100) + ", manufacturer \"" +
                       info->manufacturer + "\", vendor \"" + info->vendor + "\", firmware " + info->firmware);
  return Connected{std::move(*tpm), std::move(*info)};
}

void check_pcr_bank(const BoardProfile& b, const attestation::TpmInfo& info, Report& r) {
  Result<uint16_t> bank = attestation::hash_alg_from_name(b.pcr_bank);
  std::string allocated;
  bool has_bank = false;
  for (uint16_t alg : info.pcr_banks) {
    allocated += (allocated.empty() ? "" : ", ") + std::string(attestation::hash_alg_name(alg));
    has_bank = has_bank || (bank && alg == *bank);
  }
  if (!has_bank) {
    r.fail("tpm.pcr_bank", "the TPM has no PCRs allocated in the " + b.pcr_bank + " bank (allocated: " +
                               (allocated.empty() ? "none" : allocated) + ")",
           "allocate it (tpm2_pcrallocate " + b.pcr_bank +
               ":all needs platform authorization, usually through the firmware setup, and takes effect at the "
               "next boot), or choose an allocated bank in the profile's tpm.pcr_bank");
  } else if (b.pcr_bank != "sha256") {
    r.warn("tpm.pcr_bank", b.pcr_bank + " bank allocated, but outpost extends its runtime measurements into the sha256 "
                                        "bank only: quotes over " + b.pcr_bank + " will not show them",
           "use tpm.pcr_bank: sha256 when the TPM has that bank");
  } else {
    r.ok("tpm.pcr_bank", b.pcr_bank + " bank allocated (allocated: " + allocated + ")");
  }
}

void check_algorithms(Tpm& tpm, Report& r) {
  auto algs = tpm.algorithms();
  if (!algs) {
    r.fail("tpm.algorithms", "cannot list the TPM's algorithms: " + algs.error().message(),
           "a TPM that cannot report its algorithms is not usable; check its firmware");
    return;
  }
  if (auto missing = algs->missing_for_outpost(); !missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    r.fail("tpm.algorithms", "the TPM does not implement " + list,
           "outpost's keys are ECC NIST P-256 with ECDSA and SHA-256 (DESIGN.md \"Trust and keys\"): use a TPM 2.0 "
           "that implements them");
    return;
  }
  r.ok("tpm.algorithms", "ECC NIST P-256, ECDSA and SHA-256 implemented");
}

// ---- what occupies the profile's handles ----

const Bytes& recorded_name(const NodeIdentity& id, PrimaryKey k) {
  return k == PrimaryKey::srk ? id.srk_name : k == PrimaryKey::ek ? id.ek_name : id.ak_name;
}
uint32_t recorded_handle(const NodeIdentity& id, PrimaryKey k) {
  return k == PrimaryKey::srk ? id.handles.srk : k == PrimaryKey::ek ? id.handles.ek : id.handles.ak;
}

void check_handle(Tpm& tpm, const NodeContext& ctx, const std::optional<NodeIdentity>& id, PrimaryKey kind,
                  uint32_t handle, Report& r) {
  const std::string key(primary_key_name(kind));
  std::string lower = key;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const std::string name = "tpm.handle." + lower;
  const std::string h = hex32(handle);
  const bool ours_recorded = id && recorded_handle(*id, kind) == handle;
  const std::string start_over = "if the TPM was cleared or replaced on purpose, move " + ctx.state_dir.string() +
                                 " away and run node init again (the node gets a new identity and must be enrolled "
                                 "again); otherwise put the original TPM back";
  Result<attestation::KeyPublic> k = tpm.read_persistent(handle);
  if (!k && k.error().is(errc::not_found)) {
    if (ours_recorded) {
      r.fail(name, h + " is empty, but node.json records this node's " + key + " there: the TPM was cleared or replaced since node init",
             start_over);
    } else {
      r.ok(name, h + " is free; node init creates the " + key + " there");
    }
    return;
  }
  const std::string evict = "if nothing else uses it, evict it (tpm2_evictcontrol -C o -c " + h +
                            "); otherwise choose a free handle for tpm.handles." + lower + " in a profile of your own";
  // A key outpost cannot even represent (RSA, another curve) is someone else's.
  const bool foreign = !k && k.error().is(errc::unsupported);
  if (!k && !foreign) {
    r.fail(name, "cannot read " + h + ": " + k.error().message(), "check the TPM (see the tpm check)");
    return;
  }
  if (ours_recorded) {
    if (!foreign && k->name == recorded_name(*id, kind)) {
      r.ok(name, h + " holds this node's " + key + " (the name node.json records)");
    } else {
      r.fail(name, h + " holds a key other than the " + key + " node.json records: the TPM was cleared or swapped since node init",
             start_over);
    }
    return;
  }
  if (foreign) {
    r.fail(name, h + " is occupied by something else: " + k.error().message(), evict);
    return;
  }
  if (Result<void> shape = Tpm::check_shape(kind, *k); !shape) {
    r.fail(name, h + " is occupied by something else: " + shape.error().message(), evict);
    return;
  }
  r.ok(name, h + " holds an outpost-shaped " + key + "; node init will reuse it");
}

void check_rollback_counter(Tpm& tpm, const NodeContext& ctx, Report& r) {
  const uint32_t index = ctx.board.rollback_counter_index;
  const std::string name = "tpm.nv.rollback_counter";
  auto pub = tpm.nv_public(index);
  if (!pub && pub.error().is(errc::not_found)) {
    r.ok(name, hex32(index) + " is free; the first bundle install defines outpost's rollback counter there");
    return;
  }
  if (!pub) {
    r.fail(name, "cannot read the public area of NV index " + hex32(index) + ": " + pub.error().message(),
           "check the TPM (see the tpm check)");
    return;
  }
  if (!pub->is_outpost_counter()) {
    r.fail(name, hex32(index) + " is occupied by an NV index of another kind (attributes " + hex32(pub->attributes) + ", " +
                     std::to_string(pub->data_size) + " bytes)",
           "if nothing else uses it, undefine it (tpm2_nvundefine -C o " + hex32(index) +
               "); otherwise choose a free owner index (0x01800000..0x01bfffff) for tpm.nv.rollback_counter in a "
               "profile of your own");
    return;
  }
  auto value = tpm.read_counter(index);
  if (!value) {
    r.fail(name, hex32(index) + " is a counter that cannot be read: " + value.error().message(), "check the TPM");
    return;
  }
  r.ok(name, hex32(index) + " holds outpost's rollback counter (value " + std::to_string(*value) + ")");
}

// ---- boot event log ----

std::optional<fh::EventLog> check_event_log(const NodeContext& ctx, Report& r) {
  const BoardProfile& b = ctx.board;
  if (!b.measured_boot()) {
    r.skipped("boot.event_log", "the board's firmware does not measure boot (boot.event_log: none)");
    return std::nullopt;
  }
  Result<Bytes> bytes = read_file(b.event_log, fh::kMaxLogSize);
  if (!bytes) {
    if (bytes.error().code() == std::errc::permission_denied) {
      r.warn("boot.event_log", b.event_log + " is readable by root only", "run node check as root to check the event log");
    } else if (bytes.error().code() == std::errc::no_such_file_or_directory) {
      r.fail("boot.event_log", "no boot event log at " + b.event_log,
             "the firmware handed over no TCG event log: enable the TPM and measured boot in the firmware setup, and "
             "check that securityfs is mounted (mount -t securityfs securityfs /sys/kernel/security)");
    } else {
      r.fail("boot.event_log", bytes.error().message(), "check the path in the profile's boot.event_log");
    }
    return std::nullopt;
  }
  Result<fh::EventLog> log = fh::parse_event_log(*bytes);
  if (!log) {
    r.fail("boot.event_log", b.event_log + " does not parse: " + log.error().message(),
           "outpost eventlog show " + b.event_log + " shows where; evidence from this node will not verify until the "
           "firmware writes a well-formed log");
    return std::nullopt;
  }
  std::string banks;
  bool has_bank = false;
  for (uint16_t bank : log->banks()) {
    banks += (banks.empty() ? "" : " ") + fh::alg_name(bank);
    has_bank = has_bank || fh::alg_name(bank) == b.pcr_bank;
  }
  const std::string summary = std::string(log->format == fh::LogFormat::crypto_agile ? "crypto-agile" : "SHA-1") +
                              " log, " + std::to_string(log->events.size()) + " events, banks " + banks;
  if (!has_bank) {
    r.fail("boot.event_log", summary + ": no " + b.pcr_bank + " digests to replay quotes against",
           "choose a bank the firmware logs for tpm.pcr_bank in a profile of your own");
    return std::nullopt;
  }
  r.ok("boot.event_log", summary);
  return std::move(*log);
}

// Replays the log and compares it with the TPM's PCRs now, as a verifier would with a quote.
void check_replay(Tpm& tpm, const NodeContext& ctx, const fh::EventLog& log, Report& r) {
  auto replayed = fh::replay(log);
  auto bank = attestation::hash_alg_from_name(ctx.board.pcr_bank);
  if (!replayed || !bank) {
    r.fail("boot.replay", replayed ? bank.error().message() : replayed.error().message(), "report this log to the outpost developers");
    return;
  }
  attestation::PcrSelection sel{*bank, {}};
  if (auto it = replayed->find(*bank); it != replayed->end()) {
    for (uint32_t p : ctx.board.quote_pcrs) {
      // The runtime PCR holds outpost's own measurements, which the firmware's log never has.
      if (p != ctx.board.runtime_pcr && p < it->second.pcrs.size() && it->second.pcrs[p].touched()) sel.pcrs.push_back(p);
    }
  }
  if (sel.pcrs.empty()) {
    r.warn("boot.replay", "the log extends none of the quoted PCRs " + pcr_list(ctx.board.quote_pcrs),
           "check tpm.quote_pcrs against what the firmware measures");
    return;
  }
  auto now = tpm.pcr_read({sel});
  if (!now) {
    r.fail("boot.replay", "cannot read PCRs " + pcr_list(sel.pcrs) + ": " + now.error().message(), "check the TPM");
    return;
  }
  auto cmp = fh::compare_with_quote(log, *replayed, *now);
  if (!cmp) {
    r.fail("boot.replay", cmp.error().message(), "report this log to the outpost developers");
    return;
  }
  if (cmp->all_match()) {
    r.ok("boot.replay", ctx.board.pcr_bank + " PCRs " + pcr_list(sel.pcrs) + " match the log's replay");
    return;
  }
  std::vector<uint32_t> differ;
  for (const auto& c : cmp->pcrs) {
    if (c.verdict != fh::PcrComparison::Verdict::match) differ.push_back(c.pcr);
  }
  const auto first = cmp->first_divergent_event();
  r.fail("boot.replay", ctx.board.pcr_bank + " PCRs " + pcr_list(differ) + " differ from the log's replay" +
                            (first ? " (first event that cannot be vouched for: " + std::to_string(*first) + ")" : ""),
         "something extended these PCRs without logging it, or the log is incomplete: quotes from this node will "
         "not verify against its event log (outpost eventlog replay shows the details)");
}

// ---- the rest of the device ----

void check_landlock(const BoardProfile& b, Report& r) {
  const int abi = sandbox::landlock_abi();
  const std::string need = "the profile needs ABI " + std::to_string(b.landlock_min_abi) + " or later";
  if (abi <= 0) {
    r.fail("sandbox.landlock", "Landlock is not available in this kernel; " + need,
           "boot a kernel built with CONFIG_SECURITY_LANDLOCK=y that has landlock in its LSM list (CONFIG_LSM or the "
           "lsm= boot parameter)");
  } else if (static_cast<uint32_t>(abi) < b.landlock_min_abi) {
    r.fail("sandbox.landlock", "the kernel offers Landlock ABI " + std::to_string(abi) + "; " + need,
           "upgrade the kernel (ABI 4, which restricts TCP connect, came with Linux 6.7)");
  } else if (abi < 4) {
    r.warn("sandbox.landlock", "Landlock ABI " + std::to_string(abi) + ": agents' files are confined but TCP connect is not",
           "a kernel with ABI 4 or later (Linux 6.7) confines TCP too");
  } else {
    r.ok("sandbox.landlock", "Landlock ABI " + std::to_string(abi) + " (" + need + ")");
  }
}

// Whether agents can be isolated here (runtime/sandbox/isolation.h): the privileges, then a
// real isolated launch of /bin/true (namespaces, mounts, ids, seccomp) as nobody.
void check_isolation(Report& r) {
  const std::string missing = sandbox::missing_privileges();
  if (!missing.empty()) {
    r.fail("sandbox.isolation", "agents cannot be isolated: this process lacks " + missing,
           "outpostd needs them to sandbox agents and refuses to launch any without (run it as its systemd unit does, "
           "or as root; docs/daemon.md)");
    return;
  }
  // The network outpostd gives each agent: a namespace of its own with the egress proxy's
  // listener in it (sandbox/network.h); without it agents are not launched.
  auto network = sandbox::make_agent_network(3128);
  if (!network) {
    r.fail("sandbox.egress", "cannot make an agent's network namespace: " + network.error().message(),
           "outpostd refuses to launch agents without one (they would have no egress proxy); the kernel needs network "
           "namespaces (CONFIG_NET_NS) and outpostd CAP_SYS_ADMIN and CAP_NET_ADMIN");
    return;
  }
  r.ok("sandbox.egress", "agents get a network namespace of their own: loopback and the egress proxy alone");
  if (network->dns) {
    std::string at = "loopback";
    for (const auto& a : network->resolver_addresses) at += ", " + a;
    if (!network->resolver_error.empty()) {
      r.warn("sandbox.dns", "a DNS stub answers in each agent's namespace, but " + network->resolver_error,
             "a resolver inside configured at that nameserver fails at once (no route) and goes unrecorded");
    } else {
      r.ok("sandbox.dns", "a DNS stub answers REFUSED in each agent's namespace at " + at + " (names are resolved by outpostd)");
    }
  } else {
    r.warn("sandbox.dns", "no DNS stub in agents' namespaces: " + network->dns_error,
           "resolvers inside still fail at once (port unreachable), but their queries go unrecorded; give outpostd "
           "CAP_NET_BIND_SERVICE as its systemd unit does");
  }
  std::error_code ec;
  const fs::path root = fs::temp_directory_path(ec) / ("outpost-check-" + std::to_string(::getpid()));
  fs::create_directories(root, ec);
  sandbox::IsolationPolicy ip;
  ip.uid = 65534;
  ip.gid = 65534;
  ip.root = root;
  ip.network_namespace = network->ns.get();
  ip.syscalls.allow_inet = true;
  ip.read_only = {"/usr", "/lib", "/lib64", "/bin"};
  ip.devices = {"/dev/null"};
  auto iso = sandbox::Isolation::prepare(ip);
  Result<void> ran = iso ? ok() : Result<void>(fail(iso.error()));
  if (iso) {
    sandbox::SpawnSpec spec;
    spec.argv = {"/bin/true"};
    spec.isolation = &*iso;
    spec.die_with_parent = false;
    auto child = sandbox::spawn(spec);
    if (!child) {
      ran = fail(child.error());
    } else {
      int status = 0;
      ::waitpid(child->pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ran = fail(errc::io, "/bin/true exited with status " + std::to_string(status));
    }
  }
  fs::remove(root, ec);
  if (!ran) {
    r.fail("sandbox.isolation", "an isolated launch failed: " + ran.error().message(),
           "the kernel needs user-less network and mount namespaces, seccomp filters and mount_setattr (Linux 5.12)");
    return;
  }
  r.ok("sandbox.isolation", "agents run in their own namespaces, uid, and seccomp filter, with no capabilities");
}

// The directory itself, or the nearest ancestor that exists.
fs::path existing_ancestor(fs::path p) {
  std::error_code ec;
  while (!p.empty() && !fs::exists(p, ec) && p != p.root_path()) p = p.parent_path();
  return p.empty() ? fs::path(".") : p;
}

void check_state_dir(const fs::path& dir, Report& r) {
  const std::string name = "paths.state_dir";
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) {
      r.fail(name, dir.string() + " exists and is not a directory", "move it away or choose another --state");
      return;
    }
    if (::access(dir.c_str(), R_OK | W_OK | X_OK) != 0) {
      r.fail(name, "this user (uid " + std::to_string(::getuid()) + ") cannot write to " + dir.string(),
             "run as the user outpostd runs as, or give that user the directory (chown)");
      return;
    }
    const auto perms = fs::status(dir, ec).permissions();
    if ((perms & (fs::perms::group_all | fs::perms::others_all)) != fs::perms::none) {
      r.warn(name, dir.string() + " is writable, but others may read or enter it", "chmod 700 " + dir.string());
      return;
    }
    r.ok(name, dir.string() + " is writable");
    return;
  }
  const fs::path parent = existing_ancestor(dir);
  if (::access(parent.c_str(), W_OK | X_OK) != 0) {
    r.fail(name, dir.string() + " does not exist and this user cannot create it in " + parent.string(),
           "create it for the user outpostd runs as: install -d -m 0700 " + dir.string());
    return;
  }
  r.ok(name, dir.string() + " does not exist yet; node init creates it");
}

std::optional<NodeIdentity> check_identity(const NodeContext& ctx, Report& r) {
  const std::string name = "node.identity";
  if (!file_exists(ctx.state_dir / "node.json")) {
    r.skipped(name, "no node.json in " + ctx.state_dir.string() + " (not provisioned yet: outpost node init)");
    return std::nullopt;
  }
  auto id = attestation::load_identity(ctx.state_dir);
  if (!id) {
    r.fail(name, id.error().message(), "restore node.json from a backup, or move the state directory away and run node init again");
    return std::nullopt;
  }
  if (id->board != ctx.board.name) {
    r.warn(name, id->spiffe_id + " was provisioned for board \"" + id->board + "\", not \"" + ctx.board.name + "\"",
           "check against the board it was provisioned for: --board " + id->board);
  } else {
    r.ok(name, id->spiffe_id + " (board " + id->board + ", provisioned " + id->provisioned_at + ")");
  }
  return std::move(*id);
}

void check_budgets(const NodeContext& ctx, Report& r) {
  struct statvfs vfs{};
  const fs::path where = existing_ancestor(ctx.state_dir);
  if (::statvfs(where.c_str(), &vfs) != 0) {
    r.warn("budget.disk", "cannot see the free space at " + where.string() + ": " + std::strerror(errno));
  } else {
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    const std::string what = mib(free_bytes) + " free at " + where.string() + "; the audit log may use up to " +
                             mib(ctx.board.audit_log_bytes);
    if (free_bytes < ctx.board.audit_log_bytes) {
      r.warn("budget.disk", what, "free space there, or lower budgets.audit_log in a profile of your own (when the "
                                  "bound is reached outpostd fails closed)");
    } else {
      r.ok("budget.disk", what);
    }
  }
  uint64_t total_kib = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    if (key == "MemTotal:") {
      meminfo >> total_kib;
      break;
    }
    meminfo.ignore(256, '\n');
  }
  if (total_kib == 0) {
    r.warn("budget.memory", "cannot read MemTotal from /proc/meminfo");
    return;
  }
  const uint64_t total = total_kib << 10;
  const std::string what = "outpostd's budget " + mib(ctx.board.memory_bytes) + " of " + mib(total) + " RAM";
  if (ctx.board.memory_bytes > total / 2) {
    r.warn("budget.memory", what + ": more than half the machine", "lower budgets.memory in a profile of your own");
  } else {
    r.ok("budget.memory", what);
  }
}

void run_checks(const NodeContext& ctx, Report& r) {
  const BoardProfile& b = ctx.board;
  r.ok("profile", b.name + ": " + b.description + " (valid; quotes " + b.quote_selection() + ", runtime PCR " +
                      std::to_string(b.runtime_pcr) + ")");
  const std::optional<NodeIdentity> id = check_identity(ctx, r);
  check_device(ctx, r);
  std::optional<Connected> connected = check_tpm(ctx, r);
  Tpm* tpm = connected ? connected->tpm.get() : nullptr;
  const std::string no_tpm = "no TPM";
  if (tpm) {
    check_pcr_bank(b, connected->info, r);
    check_algorithms(*tpm, r);
    check_handle(*tpm, ctx, id, PrimaryKey::srk, b.srk_handle, r);
    check_handle(*tpm, ctx, id, PrimaryKey::ek, b.ek_handle, r);
    check_handle(*tpm, ctx, id, PrimaryKey::ak, b.ak_handle, r);
    check_rollback_counter(*tpm, ctx, r);
  } else {
    for (const char* n : {"tpm.info", "tpm.pcr_bank", "tpm.algorithms", "tpm.handle.srk", "tpm.handle.ek", "tpm.handle.ak",
                          "tpm.nv.rollback_counter"}) {
      r.skipped(n, no_tpm);
    }
  }
  std::optional<fh::EventLog> log = check_event_log(ctx, r);
  if (!b.measured_boot()) {
    r.skipped("boot.replay", "no boot event log to replay");
  } else if (!log) {
    r.skipped("boot.replay", "no usable boot event log");
  } else if (!tpm) {
    r.skipped("boot.replay", no_tpm);
  } else {
    check_replay(*tpm, ctx, *log, r);
  }
  check_landlock(b, r);
  check_isolation(r);
  check_state_dir(ctx.state_dir, r);
  check_budgets(ctx, r);
}

void print_human(const Report& r, const std::string& heading) {
  std::cout << heading << "\n";
  for (const auto& c : r.checks()) {
    char line[64];
    std::snprintf(line, sizeof line, "%-8s %-24s ", verdict_word(c.verdict, false), c.name.c_str());
    std::cout << line << c.detail << "\n";
    if (!c.remedy.empty()) std::cout << std::string(34, ' ') << "-> " << c.remedy << "\n";
  }
  std::cout << r.count(Verdict::ok) << " ok, " << r.count(Verdict::fail) << " FAIL, " << r.count(Verdict::warn) << " warn, "
            << r.count(Verdict::skipped) << " skipped\n";
}

void print_json(const Report& r) {
  json::array out;
  for (const auto& c : r.checks()) {
    json::object o;
    o["check"] = c.name;
    o["verdict"] = verdict_word(c.verdict, true);
    o["detail"] = c.detail;
    o["remedy"] = c.remedy.empty() ? json::value(nullptr) : json::value(c.remedy);
    out.push_back(std::move(o));
  }
  std::cout << json::serialize(out) << "\n";
}

}  // namespace

int node_check_command(const Args& args) {
  po::options_description d("node check");
  add_node_options(d);
  d.add_options()("json", "print the checks as a JSON array of {check, verdict, detail, remedy}");
  auto vm = parse(args, "outpost node check --board B [--tcti T] [--state DIR] [--json]", d);
  if (!vm) return kExitOk;
  Report r;
  std::string heading = "node check";
  Result<NodeContext> ctx = resolve_node(*vm);
  if (!ctx) {
    std::string known;
    for (const auto& n : boards::builtin_board_names()) known += (known.empty() ? "" : ", ") + n;
    r.fail("profile", ctx.error().message(), "fix the profile (docs/boards.md describes every field) or name a built-in board (" + known + ")");
  } else {
    heading += ": board " + ctx->board.name + ", TCTI " + ctx->tcti + ", state " + ctx->state_dir.string();
    run_checks(*ctx, r);
  }
  if (vm->count("json")) {
    print_json(r);
  } else {
    print_human(r, heading);
  }
  return r.count(Verdict::fail) == 0 ? kExitOk : kExitFailure;
}

}  // namespace outpost::cli
