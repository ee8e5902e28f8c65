// mcp_pump: the baseline for outpost's MCP latency benchmark. A plain byte pump in its own
// process, the least any stdio proxy can cost: no parsing, no policy, just read and write.
//
//   mcp_pump CMD ARGS...
//
// Spawns CMD with pipes on its stdin and stdout (stderr is inherited), then copies our stdin to
// the child's stdin and the child's stdout to our stdout with poll() and a 64 KiB buffer each
// way. EOF on our stdin closes the child's stdin. The pump ends when the child's stdout reaches
// EOF or the child exits (what it had written is copied first), or when our stdout's reader
// goes away (both of the child's pipes are closed then), and exits with the child's
// status (128+N if signal N killed it; 127 if CMD could not be run). SIGTERM, SIGINT and
// SIGHUP are passed on to the child.
//
// Written in C-style C++ so it builds with the project's C++ toolchain alone.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

constexpr size_t kBufSize = 64 * 1024;

volatile sig_atomic_t g_child = 0;
int g_sigchld_pipe[2] = {-1, -1};

void on_sigchld(int) {
  int saved = errno;
  char c = 0;
  if (write(g_sigchld_pipe[1], &c, 1) < 0) {
    // the pipe is full: a wake-up is already pending
  }
  errno = saved;
}

void on_forwarded_signal(int sig) {
  if (g_child > 0) kill(static_cast<pid_t>(g_child), sig);
}

void set_flags(int fd, int fd_flags, int fl_flags) {
  if (fd_flags) fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | fd_flags);
  if (fl_flags) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | fl_flags);
}

// Writes all of buf to a blocking fd. Returns false on an error (EPIPE: reader gone).
bool write_all(int fd, const char* buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Copies what the child's stdout holds now to our stdout. Returns 1 on data, 0 on EOF or an
// error, -1 when nothing is there yet (EAGAIN).
int pump_out(int from, char* buf, bool* out_ok) {
  for (;;) {
    ssize_t n = read(from, buf, kBufSize);
    if (n > 0) {
      if (*out_ok && !write_all(STDOUT_FILENO, buf, static_cast<size_t>(n))) *out_ok = false;
      return 1;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    return 0;
  }
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CMD [ARGS...]\n", argv[0]);
    return 2;
  }

  int to_child[2];
  int from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0 || pipe(g_sigchld_pipe) != 0) {
    perror("mcp_pump: pipe");
    return 1;
  }
  set_flags(g_sigchld_pipe[0], FD_CLOEXEC, O_NONBLOCK);
  set_flags(g_sigchld_pipe[1], FD_CLOEXEC, O_NONBLOCK);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, nullptr);  // a write to a closed pipe fails with EPIPE instead
  sa.sa_handler = on_sigchld;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, nullptr);

  pid_t child = fork();
  if (child < 0) {
    perror("mcp_pump: fork");
    return 1;
  }
  if (child == 0) {
    sa.sa_handler = SIG_DFL;
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, nullptr);
    sigaction(SIGCHLD, &sa, nullptr);
    dup2(to_child[0], STDIN_FILENO);
    dup2(from_child[1], STDOUT_FILENO);
    close(to_child[0]);
    close(to_child[1]);
    close(from_child[0]);
    close(from_child[1]);
    execvp(argv[1], argv + 1);
    fprintf(stderr, "mcp_pump: cannot run %s: %s\n", argv[1], strerror(errno));
    _exit(127);
  }
  g_child = child;
  sa.sa_handler = on_forwarded_signal;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);

  close(to_child[0]);
  close(from_child[1]);
  int child_in = to_child[1];
  int child_out = from_child[0];
  // Our ends of the child's pipes never block: a child that stops reading its stdin while
  // it writes its stdout must not stall the pump. Our own stdin and stdout are shared with
  // whoever started us, so they keep their flags; poll() says when they are ready.
  set_flags(child_in, FD_CLOEXEC, O_NONBLOCK);
  set_flags(child_out, FD_CLOEXEC, O_NONBLOCK);

  static char in_buf[kBufSize];
  static char out_buf[kBufSize];
  size_t in_off = 0;
  size_t in_len = 0;
  bool stdin_open = true;
  bool out_ok = true;  // our stdout still takes data
  bool child_exited = false;
  int status = 0;

  for (;;) {
    if (!stdin_open && in_len == 0 && child_in >= 0) {
      close(child_in);
      child_in = -1;
    }

    struct pollfd fds[3];
    nfds_t nfds = 0;
    int i_stdin = -1;
    int i_child_in = -1;
    fds[nfds].fd = child_out;
    fds[nfds].events = POLLIN;
    const int i_child_out = static_cast<int>(nfds++);
    fds[nfds].fd = g_sigchld_pipe[0];
    fds[nfds].events = POLLIN;
    const int i_sigchld = static_cast<int>(nfds++);
    if (in_len > 0 && child_in >= 0) {
      fds[nfds].fd = child_in;
      fds[nfds].events = POLLOUT;
      i_child_in = static_cast<int>(nfds++);
    } else if (stdin_open && in_len == 0) {
      fds[nfds].fd = STDIN_FILENO;
      fds[nfds].events = POLLIN;
      i_stdin = static_cast<int>(nfds++);
    }

    if (poll(fds, nfds, -1) < 0) {
      if (errno == EINTR) continue;
      perror("mcp_pump: poll");
      break;
    }

    if (fds[i_child_out].revents) {
      if (pump_out(child_out, out_buf, &out_ok) == 0) break;  // the child closed its stdout
      // Nobody reads us any more: close both of the child's pipes, as if it were connected
      // straight to our reader, so its next write fails too, and wait for it.
      if (!out_ok) break;
    }

    if (i_stdin >= 0 && fds[i_stdin].revents) {
      ssize_t n = read(STDIN_FILENO, in_buf, kBufSize);
      if (n > 0) {
        in_off = 0;
        in_len = static_cast<size_t>(n);
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        stdin_open = false;
      }
    }

    if (i_child_in >= 0 && fds[i_child_in].revents) {
      ssize_t n = write(child_in, in_buf + in_off, in_len);
      if (n > 0) {
        in_off += static_cast<size_t>(n);
        in_len -= static_cast<size_t>(n);
      } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
        // the child closed its stdin: what the agent still sends has nowhere to go
        close(child_in);
        child_in = -1;
        stdin_open = false;
        in_len = 0;
      }
    }

    if (fds[i_sigchld].revents) {
      char drain[64];
      while (read(g_sigchld_pipe[0], drain, sizeof drain) > 0) {
      }
      pid_t r = waitpid(child, &status, WNOHANG);
      if (r == child) {
        child_exited = true;
        // copy what the child wrote before it exited; a grandchild holding the pipe open
        // does not keep us alive
        while (pump_out(child_out, out_buf, &out_ok) == 1) {
        }
        break;
      }
    }
  }

  if (child_in >= 0) close(child_in);
  close(child_out);
  if (!child_exited) {
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
  }
  return exit_code(status);
}
