#include "labels.h"


namespace outpost::policy {

std::optional<uint8_t> sensitivity_from_name(std::string_view name) {
  if (name == "public") return 0;
  if (name == "internal") return 1;
  if (name == "confidential") return 2;
  if (name == "secret") return 3;
  return std::nullopt;
}

std::string_view sensitivity_name(uint8_t level) {
  switch (level) {
    case 0: return "public";
    case 1: return "internal";
    case 2: return "confidential";
    case 3: return "secret";
    default: return "secret+";
  }
}

}  // namespace outpost::policy
