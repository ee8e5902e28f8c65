// For swtpm tests that drive attestation:: directly: a connection and a node provisioned on
// the sim board's handles, failing the test with the error's text when either does not work.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <memory>
#include <string>

#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"
#include "outpost/boards/board.h"

namespace outpost::testing {

inline std::unique_ptr<attestation::Tpm> connect_to(const std::string& tcti) {
  auto tpm = attestation::Tpm::connect(tcti);
  INFO((tpm ? std::string() : tpm.error().message()));
  REQUIRE(tpm.has_value());
  return std::move(*tpm);
}

inline attestation::NodeIdentity provision_on(attestation::Tpm& tpm, const std::filesystem::path& state) {
  auto board = boards::load_board("sim");
  REQUIRE(board.has_value());
  auto r = attestation::provision_node(tpm, state,
                                       attestation::ProvisionOptions{board->name, board->trust_domain,
                                                                     {board->srk_handle, board->ek_handle, board->ak_handle}});
  INFO((r ? std::string() : r.error().message()));
  REQUIRE(r.has_value());
  return r->identity;
}

}  // namespace outpost::testing
