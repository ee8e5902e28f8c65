#include "daemon/service_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "outpost/base/errors.h"

namespace outpost::daemon {

Result<void> notify_service_manager(std::string_view state) {
  const char* env = std::getenv("NOTIFY_SOCKET");
  if (env == nullptr || env[0] == '\0') return ok();
  const std::string_view path(env);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.substr(0, 6) == "vsock:") {
    return fail(errc::unsupported, "NOTIFY_SOCKET \"" + std::string(path) + "\": AF_VSOCK addresses are not supported");
  }
  if ((path[0] != '/' && path[0] != '@') || path.size() < 2 || path.size() >= sizeof addr.sun_path) {
    return fail(errc::invalid_argument, "NOTIFY_SOCKET \"" + std::string(path) + "\" is not a Unix socket path or an abstract name");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';  // the abstract namespace: no terminating NUL
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '/' ? 1 : 0));
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(errno_error("socket(AF_UNIX, SOCK_DGRAM) for NOTIFY_SOCKET", errno));
  const ssize_t n = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), len);
  const int err = errno;
  ::close(fd);
  if (n < 0) return fail(errno_error("sendto NOTIFY_SOCKET " + std::string(path), err));
  if (static_cast<size_t>(n) != state.size()) return fail(errc::io, "sendto NOTIFY_SOCKET " + std::string(path) + ": short datagram");
  return ok();
}

}  // namespace outpost::daemon
