#include "outpost/attestation/quote_files.h"

#include <cstdio>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"

namespace outpost::attestation {
namespace {

constexpr size_t kSelectionSlots = 16;  // TPM2_NUM_PCR_BANKS in tpm2-tss
constexpr size_t kSelectionBytes = 4 + kSelectionSlots * 8;
constexpr size_t kDigestsPerList = 8;
constexpr size_t kDigestBuffer = 64;
constexpr size_t kDigestListBytes = 4 + kDigestsPerList * (2 + kDigestBuffer);

void put_le(Bytes& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint32_t get_le(ByteView b, size_t off, int n) {
  uint32_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | b[off + static_cast<size_t>(i)];
  return v;
}

}  // namespace

Bytes encode_pcrs_tpm2tools(const PcrValues& values) {
  Bytes out;
  put_le(out, values.size(), 4);
  for (size_t slot = 0; slot < kSelectionSlots; ++slot) {
    uint8_t select[4] = {0, 0, 0, 0};
    uint16_t alg = 0;
    uint8_t size = 0;
    if (slot < values.size()) {
      alg = values[slot].hash_alg;
      size = 3;
      for (const auto& [pcr, v] : values[slot].values) select[pcr / 8] |= static_cast<uint8_t>(1u << (pcr % 8));
    }
    put_le(out, alg, 2);
    out.push_back(size);
    out.insert(out.end(), select, select + 4);
    out.push_back(0);  // structure padding
  }
  std::vector<const Bytes*> digests;
  for (const auto& bank : values) {
    for (const auto& [pcr, v] : bank.values) digests.push_back(&v);
  }
  size_t lists = (digests.size() + kDigestsPerList - 1) / kDigestsPerList;
  put_le(out, lists, 4);
  for (size_t l = 0; l < lists; ++l) {
    size_t first = l * kDigestsPerList;
    size_t count = std::min(kDigestsPerList, digests.size() - first);
    put_le(out, count, 4);
    for (size_t i = 0; i < kDigestsPerList; ++i) {
      Bytes buf(kDigestBuffer, 0);
      size_t len = 0;
      if (i < count) {
        const Bytes& d = *digests[first + i];
        len = std::min(d.size(), kDigestBuffer);
        std::copy(d.begin(), d.begin() + static_cast<ptrdiff_t>(len), buf.begin());
      }
      put_le(out, len, 2);
      out.insert(out.end(), buf.begin(), buf.end());
    }
  }
  return out;
}

Result<PcrValues> decode_pcrs_tpm2tools(ByteView b) {
  if (b.size() < kSelectionBytes + 4) return fail(errc::corrupt, "PCR file is shorter than its header");
  uint32_t banks = get_le(b, 0, 4);
  if (banks > kSelectionSlots) return fail(errc::corrupt, "PCR file selects " + std::to_string(banks) + " banks");
  PcrValues out;
  std::vector<std::pair<size_t, uint32_t>> order;  // (bank index, pcr) in file order
  for (uint32_t s = 0; s < banks; ++s) {
    size_t off = 4 + s * 8;
    PcrBank bank;
    bank.hash_alg = static_cast<uint16_t>(get_le(b, off, 2));
    uint8_t size = b[off + 2];
    if (hash_alg_digest_size(bank.hash_alg) == 0) {
      return fail(errc::corrupt, "PCR file names unknown hash algorithm " + std::to_string(bank.hash_alg));
    }
    if (size > 4) return fail(errc::corrupt, "PCR file selection is wider than 32 PCRs");
    for (uint32_t byte = 0; byte < size; ++byte) {
      for (uint32_t bit = 0; bit < 8; ++bit) {
        if (b[off + 3 + byte] & (1u << bit)) {
          uint32_t pcr = byte * 8 + bit;
          if (pcr > 23) return fail(errc::corrupt, "PCR file selects PCR " + std::to_string(pcr));
          order.emplace_back(out.size(), pcr);
        }
      }
    }
    for (const auto& other : out) {
      if (other.hash_alg == bank.hash_alg) return fail(errc::corrupt, "PCR file selects a bank twice");
    }
    out.push_back(std::move(bank));
  }
  uint32_t lists = get_le(b, kSelectionBytes, 4);
  size_t expected = kSelectionBytes + 4 + static_cast<size_t>(lists) * kDigestListBytes;
  if (lists > 16 || b.size() != expected) {
    return fail(errc::corrupt, "PCR file is " + std::to_string(b.size()) + " bytes, its header implies " +
                                   std::to_string(expected));
  }
  size_t next = 0;
  for (uint32_t l = 0; l < lists; ++l) {
    size_t off = kSelectionBytes + 4 + l * kDigestListBytes;
    uint32_t count = get_le(b, off, 4);
    if (count > kDigestsPerList) return fail(errc::corrupt, "PCR file digest list holds more than eight digests");
    for (uint32_t i = 0; i < count; ++i) {
      size_t doff = off + 4 + i * (2 + kDigestBuffer);
      uint16_t len = static_cast<uint16_t>(get_le(b, doff, 2));
      if (next >= order.size()) return fail(errc::corrupt, "PCR file has more digests than selected PCRs");
      auto [bank, pcr] = order[next++];
      if (len != hash_alg_digest_size(out[bank].hash_alg)) {
        return fail(errc::corrupt, "PCR file digest for PCR " + std::to_string(pcr) + " has the wrong size");
      }
      out[bank].values[pcr] = Bytes(b.begin() + static_cast<ptrdiff_t>(doff + 2),
                                    b.begin() + static_cast<ptrdiff_t>(doff + 2 + len));
    }
  }
  if (next != order.size()) return fail(errc::corrupt, "PCR file has fewer digests than selected PCRs");
  return out;
}

std::string pcrs_yaml(const PcrValues& values) {
  std::string out = "pcrs:\n";
  for (const auto& bank : values) {
    out += "  " + std::string(hash_alg_name(bank.hash_alg)) + ":\n";
    for (const auto& [pcr, v] : bank.values) {
      char idx[8];
      std::snprintf(idx, sizeof idx, "%-2u", pcr);
      std::string hex = hex_encode(v);
      for (char& c : hex) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      out += "    " + std::string(idx) + ": 0x" + hex + "\n";
    }
  }
  return out;
}

Result<void> write_quote_dir(const std::filesystem::path& dir, const QuoteFiles& files, const EcPublicKey& ak) {
  OUTPOST_TRY_VOID(ensure_directory(dir, 0755));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "attest.bin", files.quote.attest));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "signature.bin", files.quote.signature));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "pcrs.bin", encode_pcrs_tpm2tools(files.pcrs)));
  OUTPOST_TRY_VOID(write_file_atomic(dir / "pcrs.yaml", pcrs_yaml(files.pcrs)));
  return write_file_atomic(dir / "ak.pem", ak.to_pem());
}

Result<QuoteFiles> read_quote_dir(const std::filesystem::path& dir) {
  constexpr size_t kMax = 1 << 20;
  QuoteFiles f;
  OUTPOST_TRY(f.quote.attest, read_file(dir / "attest.bin", kMax));
  OUTPOST_TRY(f.quote.signature, read_file(dir / "signature.bin", kMax));
  OUTPOST_TRY(Bytes pcrs, read_file(dir / "pcrs.bin", kMax));
  Result<PcrValues> values = decode_pcrs_tpm2tools(pcrs);
  if (!values) return fail(values.error().wrap((dir / "pcrs.bin").string()));
  f.pcrs = std::move(*values);
  return f;
}

}  // namespace outpost::attestation
