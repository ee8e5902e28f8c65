// Reading one sample back from a Prometheus text exposition, for tests and benchmarks that
// check what a /metrics page says.
#pragma once

#include <cstdlib>
#include <string>

namespace outpost::testing {

// The value of the unlabelled sample `name` in `text`, or `missing` when it has none.
inline double metric_value(const std::string& text, const std::string& name, double missing = 0) {
  const auto at = text.find("\n" + name + " ");
  return at == std::string::npos ? missing : std::atof(text.c_str() + at + name.size() + 2);
}

}  // namespace outpost::testing
