#include "broker/relay.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>

#include "outpost/base/log.h"

#define OUTPOST_NOTE(level, msg) ::outpost::log::level("outpostd", {{"msg", (msg)}})

namespace outpost::broker {
namespace {

constexpr size_t kReadChunk = 256 << 10;
constexpr size_t kMaxPending = 64 << 20;  // stop reading a side whose peer is not draining

void set_nonblocking(int fd) {
  if (fd < 0) return;
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Bytes waiting for one fd, written from `off`.
struct Outbox {
  std::string data;
  size_t off = 0;
  size_t pending() const { return data.size() - off; }
  // Writes what the fd takes now. False on a write error (the reader is gone).
  bool flush(int fd) {
    while (pending() > 0) {
      ssize_t n = ::write(fd, data.data() + off, pending());
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      return false;
    }
    if (off == data.size()) {
      data.clear();
      off = 0;
    } else if (off > (1u << 20) && off * 2 > data.size()) {
      data.erase(0, off);
      off = 0;
    }
    return true;
  }
};

// Incoming bytes of one direction, cut into lines.
struct Inbox {
  std::string buf;
  size_t scanned = 0;     // bytes of buf already searched for '\n'
  bool discarding = false;  // inside an over-long line: drop until its newline
  bool eof = false;

  // Calls fn(line) for every complete line; on_oversize() once per over-long line.
  template <class Fn, class Over>
  void lines(size_t max_line, Fn&& fn, Over&& on_oversize) {
    size_t start = 0;
    for (;;) {
      const void* nl = std::memchr(buf.data() + scanned, '\n', buf.size() - scanned);
      if (nl == nullptr) break;
      size_t end = static_cast<size_t>(static_cast<const char*>(nl) - buf.data());
      if (discarding) {
        discarding = false;
      } else {
        std::string_view line(buf.data() + start, end - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (!line.empty()) fn(line);
      }
      start = end + 1;
      scanned = start;
    }
    buf.erase(0, start);
    scanned = buf.size();
    if (buf.size() > max_line) {
      if (!discarding) on_oversize();
      discarding = true;
      buf.clear();
      scanned = 0;
    }
    if (eof && !buf.empty()) {  // a last line without its newline
      if (!discarding) fn(std::string_view(buf));
      buf.clear();
      scanned = 0;
    }
  }
};

// Reads what is there now. Returns false on EOF or error. Reads land in a per-thread chunk
// and only the bytes read are appended (resizing the line buffer by a whole chunk first would
// zero-fill it on every read).
bool fill(int fd, Inbox& in) {
  thread_local std::unique_ptr<char[]> chunk(new char[kReadChunk]);
  for (;;) {
    ssize_t n = ::read(fd, chunk.get(), kReadChunk);
    if (n > 0) {
      in.buf.append(chunk.get(), static_cast<size_t>(n));
      if (static_cast<size_t>(n) < kReadChunk) return true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    in.eof = true;
    return false;
  }
}

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

}  // namespace

RelayEnd run_relay(RelayFds& fds, McpSession& session, size_t max_line, RelayTiming* timing) {
  RelayTiming unused;
  RelayTiming& t = timing != nullptr ? *timing : unused;
  set_nonblocking(fds.client_in);
  set_nonblocking(fds.client_out);
  set_nonblocking(fds.server_in);
  set_nonblocking(fds.server_out);
  Inbox from_client, from_server;
  Outbox to_server, to_client;
  bool client_gone = false;  // the agent stopped reading (EPIPE): nothing more can reach it

  for (;;) {
    // Work first: cut lines, decide, write what can be written.
    uint64_t t0 = now_ns();
    if (!from_client.buf.empty() || from_client.eof) {
      ++t.client_batches;
      const uint64_t batch_start = t0;
      bool cut = false;  // a whole line in this batch (not a partial one, not EOF alone)
      from_client.lines(
          max_line,
          [&](std::string_view line) {
            cut = true;
            session.from_client(line, to_server.data, to_client.data);
          },
          [&] { session.oversized_from_client(to_client.data); });
      const uint64_t t1 = now_ns();
      t.decide_ns += t1 - t0;
      // One commit for every call of this batch (the records are durable before the server
      // sees the calls); calls that arrive during the fdatasync make up the next batch.
      session.release(to_server.data, to_client.data);
      t0 = now_ns();
      t.commit_ns += t0 - t1;
      if (cut && t.decide_histogram != nullptr) t.decide_histogram->observe_ns(t1 - batch_start);
      if (cut && t.hold_histogram != nullptr) t.hold_histogram->observe_ns(t0 - batch_start);
    }
    if (!from_server.buf.empty() || from_server.eof) {
      ++t.server_batches;
      from_server.lines(
          max_line * 4, [&](std::string_view line) { session.from_server(line, to_client.data); },
          [&] { OUTPOST_NOTE(warn, "broker: dropped an over-long line from the server"); });
      const uint64_t t1 = now_ns();
      t.response_ns += t1 - t0;
      t0 = t1;
    }
    if (to_server.pending() > 0 && fds.server_in >= 0) {
      const bool ok = to_server.flush(fds.server_in);
      const uint64_t t1 = now_ns();
      t.forward_ns += t1 - t0;
      t0 = t1;
      if (!ok) {
        // The server closed its stdin or died; what it still prints is read below.
        to_server = Outbox{};
        ::close(fds.server_in);
        fds.server_in = -1;
      }
    }
    if (!client_gone && to_client.pending() > 0) {
      if (!to_client.flush(fds.client_out)) client_gone = true;
      t.return_ns += now_ns() - t0;
    }
    if (client_gone) to_client = Outbox{};  // nothing more can reach the agent: drop it
    // The client's EOF reaches the server once everything before it has.
    if (from_client.eof && fds.server_in >= 0 && to_server.pending() == 0) {
      ::close(fds.server_in);
      fds.server_in = -1;
    }
    if (from_server.eof && to_client.pending() == 0) return RelayEnd::finished;
    if (client_gone && from_client.eof && fds.server_in < 0 && from_server.eof) return RelayEnd::finished;

    pollfd p[6];
    int n = 0;
    int ic = -1, is = -1, oc = -1, os = -1, ctl = -1, wk = -1;
    if (!from_client.eof && to_server.pending() < kMaxPending) p[ic = n++] = {fds.client_in, POLLIN, 0};
    if (!from_server.eof && to_client.pending() < kMaxPending) p[is = n++] = {fds.server_out, POLLIN, 0};
    if (to_client.pending() > 0) p[oc = n++] = {fds.client_out, POLLOUT, 0};
    if (to_server.pending() > 0 && fds.server_in >= 0) p[os = n++] = {fds.server_in, POLLOUT, 0};
    if (fds.control >= 0) p[ctl = n++] = {fds.control, POLLIN, 0};
    if (fds.wake >= 0) p[wk = n++] = {fds.wake, POLLIN, 0};
    int r = ::poll(p, static_cast<nfds_t>(n), -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return RelayEnd::io_error;
    }
    if (wk >= 0 && p[wk].revents != 0) return RelayEnd::woken;
    if (ctl >= 0 && p[ctl].revents != 0) {
      char c;
      ssize_t k = ::recv(fds.control, &c, 1, MSG_DONTWAIT | MSG_PEEK);
      if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return RelayEnd::control_closed;
    }
    const uint64_t r0 = now_ns();
    if (ic >= 0 && p[ic].revents != 0) fill(fds.client_in, from_client);
    if (is >= 0 && p[is].revents != 0) fill(fds.server_out, from_server);
    t.read_ns += now_ns() - r0;
    (void)oc;
    (void)os;
  }
}

}  // namespace outpost::broker
