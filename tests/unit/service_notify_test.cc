// outpostd's side of systemd's notify protocol (runtime/daemon/service_notify.h), against a
// datagram socket the test binds where $NOTIFY_SOCKET points, as systemd does for Type=notify.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <string>

#include "daemon/service_notify.h"
#include "test_support.h"

using namespace outpost;

namespace {

// Sets NOTIFY_SOCKET for one scope and puts back what was there.
struct NotifySocketEnv {
  explicit NotifySocketEnv(const char* value) {
    if (const char* old = std::getenv("NOTIFY_SOCKET")) saved = old, had = true;
    if (value == nullptr) {
      ::unsetenv("NOTIFY_SOCKET");
    } else {
      ::setenv("NOTIFY_SOCKET", value, 1);
    }
  }
  ~NotifySocketEnv() {
    if (had) {
      ::setenv("NOTIFY_SOCKET", saved.c_str(), 1);
    } else {
      ::unsetenv("NOTIFY_SOCKET");
    }
  }
  std::string saved;
  bool had = false;
};

// A datagram socket bound at `name` ('@' first: the abstract namespace), as systemd binds it.
int bind_datagram(const std::string& name) {
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, name.data(), name.size());
  if (name[0] == '@') addr.sun_path[0] = '\0';
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0);
  return fd;
}

std::string receive(int fd) {
  char buf[256];
  const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return n < 0 ? std::string("(nothing)") : std::string(buf, static_cast<size_t>(n));
}

}  // namespace

TEST_CASE("outpostd tells systemd it is ready and stopping, with one datagram to NOTIFY_SOCKET", "[service-notify]") {
  SECTION("not started by systemd: nothing to tell, no error") {
    NotifySocketEnv env(nullptr);
    CHECK(daemon::notify_service_manager("READY=1"));
  }
  SECTION("a socket path") {
    testing::TempDir dir;
    const std::string path = (dir.path() / "notify").string();
    const int fd = bind_datagram(path);
    NotifySocketEnv env(path.c_str());
    REQUIRE(daemon::notify_service_manager("READY=1"));
    CHECK(receive(fd) == "READY=1");
    REQUIRE(daemon::notify_service_manager("STOPPING=1"));
    CHECK(receive(fd) == "STOPPING=1");
    ::close(fd);
  }
  SECTION("an abstract name") {
    const std::string name = "@outpost-notify-test-" + std::to_string(::getpid());
    const int fd = bind_datagram(name);
    NotifySocketEnv env(name.c_str());
    REQUIRE(daemon::notify_service_manager("READY=1"));
    CHECK(receive(fd) == "READY=1");
    ::close(fd);
  }
  SECTION("a value that is neither: a clear error, nothing sent") {
    NotifySocketEnv env("run/systemd/notify");
    auto r = daemon::notify_service_manager("READY=1");
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message(), Catch::Contains("NOTIFY_SOCKET \"run/systemd/notify\""));
  }
  SECTION("a bare '@' and a vsock address: errors") {
    {
      NotifySocketEnv env("@");
      CHECK_FALSE(daemon::notify_service_manager("READY=1"));
    }
    NotifySocketEnv env("vsock:2:1234");
    auto r = daemon::notify_service_manager("READY=1");
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message(), Catch::Contains("AF_VSOCK"));
  }
  SECTION("nobody listening there: the error names the socket") {
    testing::TempDir dir;
    const std::string path = (dir.path() / "gone").string();
    NotifySocketEnv env(path.c_str());
    auto r = daemon::notify_service_manager("READY=1");
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message(), Catch::Contains("sendto NOTIFY_SOCKET " + path));
  }
}
