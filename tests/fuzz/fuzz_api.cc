// outpostd's API socket reader (runtime/daemon/api.h): whatever bytes a local peer sends, split
// however the socket delivers them, recv_message returns one parsed line or an error, within
// its size and descriptor limits, and never crashes.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/api.h"

using namespace outpost;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 60000) return 0;  // within one socket buffer, so the write below cannot block
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  // The first byte picks where the peer splits its writes: the reader must join them.
  const size_t split = size > 1 ? data[0] % size : size;
  if (split > 0) (void)!::write(sv[1], data, split);
  if (size > split) (void)!::write(sv[1], data + split, size - split);
  ::shutdown(sv[1], SHUT_WR);
  std::vector<int> fds;
  auto msg = daemon::recv_message(sv[0], &fds, 4096, 2, 1000);
  if (msg) (void)msg->kind();
  for (int fd : fds) ::close(fd);
  ::close(sv[0]);
  ::close(sv[1]);
  return 0;
}
