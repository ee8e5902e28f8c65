// The crash tests' writer: appends decision records to an audit log from several threads, each
// waiting for its record to be durable, and prints every acknowledged sequence number on its
// own line (one write(2) each, after the acknowledgement). The test kills it with SIGKILL at a
// random moment and checks that every number it printed is in the log.
//   audit_writer DIR THREADS [MAX_BYTES]
// Exits 3 once every thread has stopped on an error (a full disk), printing the errors.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "outpost/offline_cache/audit_log.h"

using namespace outpost;
using namespace outpost::offline_cache;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: audit_writer DIR THREADS [MAX_BYTES]\n");
    return 2;
  }
  AuditLogOptions options;
  options.segment_bytes = 64 << 10;  // many segments, so kills land on rotations too
  if (argc > 3) options.max_bytes = std::strtoull(argv[3], nullptr, 10);
  auto log = AuditLog::open(argv[1], options);
  if (!log) {
    std::fprintf(stderr, "audit_writer: %s\n", log.error().message().c_str());
    return 1;
  }
  const int threads = std::atoi(argv[2]);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (uint64_t i = 0;; ++i) {
        AuditEntry e;
        e.kind = RecordKind::decision;
        e.event = "decision";
        e.agent = "writer-" + std::to_string(t);
        e.detail = "{\"tool\":\"fs/write_file\",\"allow\":true,\"i\":" + std::to_string(i) + "}";
        auto seq = (*log)->append_durable(std::move(e));
        if (!seq) {
          std::fprintf(stderr, "audit_writer: %s\n", seq.error().message().c_str());
          return;
        }
        const std::string line = std::to_string(*seq) + "\n";
        if (::write(STDOUT_FILENO, line.data(), line.size()) < 0) return;
      }
    });
  }
  for (auto& w : workers) w.join();
  return 3;
}
