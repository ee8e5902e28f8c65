#include "postgres_server.h"

#include <libpq-fe.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <vector>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "processes.h"

namespace outpost::testing {
namespace fs = std::filesystem;
namespace {

constexpr uid_t kNobody = 65534;
constexpr int kStartSeconds = 120;  // a generous bound for a loaded 2-core machine

// The start of a command line that runs a server program: as nobody when this process is root
// (postgres will not run as root), with SIGINT sent to it if the thread starting it dies.
std::vector<std::string> server_command(const std::string& program) {
  std::vector<std::string> argv = {"/usr/bin/setpriv"};
  if (::geteuid() == 0) argv.insert(argv.end(), {"--reuid=65534", "--regid=65534", "--clear-groups"});
  argv.insert(argv.end(), {"--pdeathsig", "INT", "--", std::string(OUTPOST_PG_BINDIR) + "/" + program});
  return argv;
}

// The end of a server log, for an error message.
std::string log_tail(const fs::path& log) {
  auto text = read_text_file(log);
  if (!text) return "(no log: " + text.error().message() + ")";
  const size_t keep = 1500;
  return text->size() > keep ? "..." + text->substr(text->size() - keep) : *text;
}

// Waits (bounded) for the child `pid` to end; its exit status.
Result<int> wait_exit(int pid, int seconds, const std::string& what) {
  std::optional<int> status;
  if (!eventually([&] { return (status = exit_status(pid)).has_value(); }, seconds, 20)) {
    stop_child(pid, SIGKILL, 5000);
    return fail(errc::timeout, what + " did not finish within " + std::to_string(seconds) + " s");
  }
  return *status;
}

struct ConnFinish {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using Conn = std::unique_ptr<PGconn, ConnFinish>;
struct ResultClear {
  void operator()(PGresult* r) const { PQclear(r); }
};

Result<Conn> connect(const std::string& uri) {
  Conn c(PQconnectdb(uri.c_str()));
  if (!c || PQstatus(c.get()) != CONNECTION_OK) {
    return fail(errc::io, "connect to " + uri + ": " + (c ? PQerrorMessage(c.get()) : "out of memory"));
  }
  return c;
}

Result<std::string> run(PGconn* c, const std::string& sql) {
  std::unique_ptr<PGresult, ResultClear> r(PQexec(c, sql.c_str()));
  const ExecStatusType s = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
    return fail(errc::io, sql + ": " + (r ? PQresultErrorMessage(r.get()) : PQerrorMessage(c)));
  }
  if (s == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 && PQnfields(r.get()) > 0) return std::string(PQgetvalue(r.get(), 0, 0));
  return std::string();
}

}  // namespace

Result<std::unique_ptr<PostgresServer>> PostgresServer::start(const Options& options) {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  std::string dir = (options.parent / "outpost-pg-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) return errno_error("mkdtemp " + dir, errno);  // mode 0700
  server->dir_ = dir;
  if (::geteuid() == 0 && ::chown(dir.c_str(), kNobody, kNobody) != 0) return errno_error("chown nobody " + dir, errno);
  OUTPOST_TRY_VOID(server->init_cluster());
  OUTPOST_TRY_VOID(server->serve(options));
  return server;
}

PostgresServer::~PostgresServer() { stop(); }

Result<void> PostgresServer::init_cluster() {
  const fs::path log = dir_ / "initdb.log";
  auto argv = server_command("initdb");
  argv.insert(argv.end(), {"-D", (dir_ / "data").string(), "-A", "trust", "-U", "outpost", "-E", "UTF8", "--no-locale",
                           "--no-sync"});
  OUTPOST_TRY(int pid, spawn_logged(argv, log));
  OUTPOST_TRY(int status, wait_exit(pid, kStartSeconds, "initdb"));
  if (status != 0) {
    return fail(errc::io, "initdb exited with " + std::to_string(status) + " (when root, nobody must be able to reach " +
                              dir_.string() + "): " + log_tail(log));
  }
  return ok();
}

Result<void> PostgresServer::serve(const Options& options) {
  const fs::path log = dir_ / "postgres.log";
  // The port is free when picked but may be taken before postgres binds it: then try another.
  for (int attempt = 0; attempt < 20; ++attempt) {
    OUTPOST_TRY(port_, free_loopback_port());
    std::error_code ec;
    fs::remove(log, ec);
    auto argv = server_command("postgres");
    argv.insert(argv.end(), {"-D", (dir_ / "data").string(), "-k", dir_.string(), "-h", "127.0.0.1", "-p", std::to_string(port_)});
    if (!options.fsync) argv.push_back("-F");
    OUTPOST_TRY(pid_, spawn_logged(argv, log));
    // Asked through the Unix socket in our own directory: only our server answers there (a
    // server of someone else's that took the port would answer on TCP).
    const std::string ping = "host=" + dir_.string() + " port=" + std::to_string(port_) + " user=outpost dbname=postgres";
    std::optional<int> exited;
    const bool answered = eventually(
        [&] { return (exited = exit_status(pid_)).has_value() || PQping(ping.c_str()) == PQPING_OK; }, kStartSeconds);
    if (answered && !exited) return ok();
    if (!exited) {
      stop_child(pid_, SIGKILL, 5000);
      pid_ = -1;
      return fail(errc::timeout, "postgres did not accept connections within " + std::to_string(kStartSeconds) + " s: " + log_tail(log));
    }
    pid_ = -1;
    const std::string tail = log_tail(log);
    if (tail.find("could not bind") == std::string::npos && tail.find("could not create any TCP/IP sockets") == std::string::npos) {
      return fail(errc::io, "postgres exited with " + std::to_string(*exited) + ": " + tail);
    }
  }
  return fail(errc::io, "postgres could not bind any of 20 free loopback ports");
}

std::string PostgresServer::uri(const std::string& database) const {
  return "postgresql://outpost@127.0.0.1:" + std::to_string(port_) + "/" + database;
}

Result<void> PostgresServer::create_database(const std::string& name) {
  OUTPOST_TRY(auto c, connect(uri()));
  char* quoted = PQescapeIdentifier(c.get(), name.data(), name.size());
  if (quoted == nullptr) return fail(errc::invalid_argument, "database name " + name + ": " + PQerrorMessage(c.get()));
  const std::string sql = std::string("CREATE DATABASE ") + quoted;
  PQfreemem(quoted);
  OUTPOST_TRY(auto r, run(c.get(), sql));
  (void)r;
  return ok();
}

Result<std::string> PostgresServer::query(const std::string& database, const std::string& sql) {
  OUTPOST_TRY(auto c, connect(uri(database)));
  return run(c.get(), sql);
}

void PostgresServer::stop() {
  if (pid_ > 0) {
    stop_child(pid_, SIGINT, 60000);  // fast shutdown: clients are disconnected, no waiting for them
    pid_ = -1;
  }
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    dir_.clear();
  }
}

}  // namespace outpost::testing
