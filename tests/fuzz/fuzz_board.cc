// Board profiles given with --board FILE.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "outpost/boards/board.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)outpost::boards::parse_board(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
  return 0;
}
