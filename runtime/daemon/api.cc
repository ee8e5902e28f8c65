#include "daemon/api.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "outpost/base/errors.h"

namespace outpost::daemon {
namespace json = boost::json;

Result<void> send_message(int sock, const json::value& msg, const std::vector<int>& fds) {
  std::string line = json::serialize(msg) + "\n";
  size_t off = 0;
  while (off < line.size()) {
    iovec iov{line.data() + off, line.size() - off};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control;
    if (off == 0 && !fds.empty()) {
      control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
      mh.msg_control = control.data();
      mh.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno_error("sendmsg to outpostd", errno));
    }
    off += static_cast<size_t>(n);
  }
  return ok();
}

Result<json::value> recv_message(int sock, std::vector<int>* fds, size_t max, size_t max_fds, int timeout_ms) {
  std::string line;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  size_t fds_taken = 0;
  // Room for the most descriptors one line may bring; none when it may bring none.
  std::vector<char> control(max_fds > 0 ? CMSG_SPACE(sizeof(int) * max_fds) : 0);
  for (;;) {
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      pollfd p{sock, POLLIN, 0};
      int r = left > 0 ? ::poll(&p, 1, static_cast<int>(left)) : 0;
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return fail(errno_error("poll", errno));
      if (r == 0) {
        return fail(make_error_code(errc::timeout), "the request did not arrive whole within " + std::to_string(timeout_ms) + " ms");
      }
    }
    // Peek, then take exactly up to the newline: what follows belongs to the next message.
    iovec iov{buf, sizeof buf};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = ::recvmsg(sock, &mh, MSG_PEEK);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno_error("recvmsg", errno));
    }
    if (n == 0) return fail(make_error_code(errc::io), "the other side closed the connection");
    size_t take = static_cast<size_t>(n);
    if (const void* nl = std::memchr(buf, '\n', take)) take = static_cast<size_t>(static_cast<const char*>(nl) - buf) + 1;
    iovec iov2{buf, take};
    msghdr mh2{};
    mh2.msg_iov = &iov2;
    mh2.msg_iovlen = 1;
    mh2.msg_control = control.empty() ? nullptr : control.data();
    mh2.msg_controllen = control.size();
    n = ::recvmsg(sock, &mh2, MSG_CMSG_CLOEXEC);
    if (n <= 0) return fail(errno_error("recvmsg", errno));
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh2); c != nullptr; c = CMSG_NXTHDR(&mh2, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (fds != nullptr && fds_taken < max_fds) {
          fds->push_back(fd);
          ++fds_taken;
        } else {
          ::close(fd);
        }
      }
    }
    line.append(buf, static_cast<size_t>(n));
    if (line.back() == '\n') break;
    if (line.size() > max) return fail(make_error_code(errc::invalid_argument), "API message over its size limit");
  }
  boost::system::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec) return fail(make_error_code(errc::corrupt), "API message is not JSON: " + ec.message());
  return v;
}

Result<int> connect_api(const std::filesystem::path& socket) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string path = socket.string();
  if (path.size() >= sizeof addr.sun_path) {
    return fail(make_error_code(errc::invalid_argument), "socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(errno_error("socket", errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd);
    return fail(errno_error("connect to outpostd at " + path + " (is outpostd running?)", err));
  }
  return fd;
}

Result<json::object> call_api(const std::filesystem::path& socket, const json::object& request) {
  OUTPOST_TRY(int fd, connect_api(socket));
  auto r = send_message(fd, request);
  // outpostd refuses a peer before reading its request: the refusal may already be waiting
  // even when sending failed because it closed the connection.
  Result<json::value> reply = recv_message(fd);
  ::close(fd);
  if (!r && (!reply || !reply->is_object())) return fail(r.error());
  if (!reply) return fail(reply.error());
  if (!reply->is_object()) return fail(make_error_code(errc::corrupt), "outpostd sent something that is not an object");
  json::object& o = reply->as_object();
  auto ok_it = o.find("ok");
  if (ok_it == o.end() || !ok_it->value().is_bool() || !ok_it->value().get_bool()) {
    auto e = o.find("error");
    std::string text = e != o.end() && e->value().is_string() ? std::string(e->value().get_string()) : "refused";
    return fail(make_error_code(errc::invalid_argument), "outpostd: " + text);
  }
  return std::move(o);
}

std::filesystem::path default_socket(const std::filesystem::path& state_dir) {
  if (const char* s = std::getenv("OUTPOST_SOCKET"); s != nullptr && *s != '\0') return s;
  return state_dir / "outpostd.sock";
}

}  // namespace outpost::daemon
