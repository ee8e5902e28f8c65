// A real outpost-hub process for the hub's integration tests (outpost_store_tests), from the
// folder `outpost-hub init` made: on a free loopback port, stopped by its pid at the end.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "outpost/base/files.h"
#include "outpost/hub/hub.h"
#include "sync/hub_client.h"
#include "test_support.h"

namespace outpost::testing {

class HubUnderTest {
 public:
  // hub.yaml as init wrote it, listening on 127.0.0.1:0 instead of :8443, with `extra` (YAML
  // lines) after it; the hub's log in `dir`/`name`.log. Another on the same folder later (a
  // restart) appends its `extra` to what the file says then.
  HubUnderTest(const hub::InitResult& init, const std::filesystem::path& dir, const std::string& extra,
               const std::string& name = "hub")
      : folder_(init.config.parent_path()), process_(start(init, dir / (name + ".port"), extra), dir / (name + ".log")) {
    const auto port_file = dir / (name + ".port");
    REQUIRE(eventually([&] { return file_exists(port_file); }, 20));
    at_.host = "127.0.0.1";
    at_.port = static_cast<uint16_t>(std::stoi(value_of(read_text_file(port_file))));
    at_.pin_sha256 = init.pin_sha256;
  }
  const sync::HubEndpoint& at() const { return at_; }
  // The endpoint with the token init wrote for `role` (beside hub.yaml).
  sync::HubEndpoint as(const char* role) const {
    sync::HubEndpoint e = at_;
    e.bearer_token = value_of(read_text_file(folder_ / (std::string(role) + ".token"))).substr(0, 64);
    return e;
  }
  int stop() { return process_.stop(); }

 private:
  static std::vector<std::string> start(const hub::InitResult& init, const std::filesystem::path& port_file,
                                        const std::string& extra) {
    std::string yaml = value_of(read_text_file(init.config));
    if (const auto at = yaml.find("127.0.0.1:8443"); at != std::string::npos) yaml.replace(at, 14, "127.0.0.1:0");
    write_text(init.config, yaml + extra);
    std::filesystem::remove(port_file);
    return {OUTPOST_HUB_BIN, "--config", init.config.string(), "--port-file", port_file.string()};
  }
  std::filesystem::path folder_;  // init's: hub.yaml and the roles' tokens
  Background process_;
  sync::HubEndpoint at_;
};

}  // namespace outpost::testing
