// Board profiles: what differs between the devices outpost runs on (TPM access, PCR bank
// and selection, persistent handles and NV indices, paths). Profiles are YAML; the ones in
// boards/profiles/ are compiled into the binaries, so `--board sim` needs no file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "outpost/base/result.h"

namespace outpost::boards {

struct BoardProfile {
  std::string name;
  std::string description;
  std::string tcti;
  std::string pcr_bank = "sha256";
  std::vector<uint32_t> quote_pcrs;
  uint32_t runtime_pcr = 23;
  uint32_t srk_handle = 0;
  uint32_t ek_handle = 0;
  uint32_t ak_handle = 0;
  uint32_t rollback_counter_index = 0;
  std::string state_dir;
  std::string trust_domain;

  // "sha256:0,1,...,23", the selection quotes use.
  std::string quote_selection() const;
};

// Parses a profile; errors name the source, line and field. Unknown fields are errors.
Result<BoardProfile> parse_board(std::string_view yaml, std::string_view source);

// A built-in profile by name, or a profile file when `name_or_path` contains a '/' or ends
// in ".yaml".
Result<BoardProfile> load_board(std::string_view name_or_path);

std::vector<std::string> builtin_board_names();

}  // namespace outpost::boards
