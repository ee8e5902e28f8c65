// A PostgreSQL server of a test's (or a benchmark's) own, from Debian's postgresql-15 binaries:
// a fresh cluster made by initdb in a new directory, served on a free loopback port (and a Unix
// socket in that directory) with trust authentication for the user "outpost", stopped by its
// pid and removed with its directory when this goes away.
//
// postgres refuses to run as root, so when this process is root, initdb and postgres run as
// nobody (setpriv) in a directory nobody owns. The server is also started with a parent-death
// signal (SIGINT, a fast shutdown) so that a test that crashes leaves no server behind; that
// signal follows the *thread* that starts it, so start it from one that outlives the server.
//
// No test framework in here (errors are Results), so that the benchmarks link it too.
// Not thread-safe.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "outpost/base/result.h"

namespace outpost::testing {

class PostgresServer {
 public:
  struct Options {
    // fsync off is for tests only: commits are not flushed, which nothing that must survive a
    // power cut can accept. Benchmarks turn it on to see what production would.
    bool fsync = false;
    // Where the cluster's directory is made; nobody must be able to reach it when root.
    std::filesystem::path parent = "/tmp";
  };

  static Result<std::unique_ptr<PostgresServer>> start(const Options& options);
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // postgresql://outpost@127.0.0.1:PORT/DATABASE
  std::string uri(const std::string& database = "postgres") const;
  // An empty database of that name (one per test case, so cases never see each other's rows).
  Result<void> create_database(const std::string& name);
  // Test plumbing as the superuser on `database` (pg_terminate_backend, pg_stat_activity, ...):
  // the first column of the first row as text, "" when there is none.
  Result<std::string> query(const std::string& database, const std::string& sql);

  int pid() const { return pid_; }
  int port() const { return port_; }
  const std::filesystem::path& dir() const { return dir_; }

  // Fast shutdown (SIGINT), waits for the pid to end, removes the directory. Idempotent.
  void stop();

 private:
  PostgresServer() = default;
  Result<void> init_cluster();
  Result<void> serve(const Options& options);

  std::filesystem::path dir_;
  int pid_ = -1;
  int port_ = 0;
};

}  // namespace outpost::testing
