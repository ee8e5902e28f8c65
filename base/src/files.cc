#include "outpost/base/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "outpost/base/crypto.h"
#include "outpost/base/errors.h"

namespace outpost {
namespace {

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

}  // namespace

Result<void> fsync_directory(const std::filesystem::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return errno_error("open " + dir.string(), errno);
  if (::fsync(fd.get()) != 0) return errno_error("fsync " + dir.string(), errno);
  return ok();
}

Result<Bytes> read_file(const std::filesystem::path& path, size_t max_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return errno_error("open " + path.string(), errno);
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) return errno_error("stat " + path.string(), errno);
  if (!S_ISREG(st.st_mode)) return fail(errc::invalid_argument, path.string() + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return fail(errc::invalid_argument, path.string() + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  Bytes out;
  out.reserve(static_cast<size_t>(st.st_size));
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error("read " + path.string(), errno);
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      return fail(errc::invalid_argument, path.string() + " grew past " + std::to_string(max_bytes) + " bytes");
    }
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

Result<std::string> read_text_file(const std::filesystem::path& path, size_t max_bytes) {
  OUTPOST_TRY(Bytes b, read_file(path, max_bytes));
  return std::string(b.begin(), b.end());
}

Result<void> write_file_atomic(const std::filesystem::path& path, ByteView data, unsigned mode) {
  std::filesystem::path dir = path.parent_path().empty() ? "." : path.parent_path();
  uint8_t rnd[6];
  random_bytes(rnd);
  std::filesystem::path tmp = dir / ("." + path.filename().string() + ".tmp-" + hex_encode(rnd));
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (fd.get() < 0) return errno_error("create " + tmp.string(), errno);
  auto cleanup_on_error = [&](Error e) {
    ::unlink(tmp.c_str());
    return e;
  };
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return cleanup_on_error(errno_error("write " + tmp.string(), errno));
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return cleanup_on_error(errno_error("fsync " + tmp.string(), errno));
  if (::close(fd.release()) != 0) return cleanup_on_error(errno_error("close " + tmp.string(), errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return cleanup_on_error(errno_error("rename to " + path.string(), errno));
  }
  return fsync_directory(dir);
}

Result<void> ensure_directory(const std::filesystem::path& path, unsigned mode) {
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return fail(errc::invalid_argument, path.string() + " exists and is not a directory");
    return ok();
  }
  std::filesystem::path parent = path.parent_path();
  if (!parent.empty() && parent != path) OUTPOST_TRY_VOID(ensure_directory(parent, mode));
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return errno_error("mkdir " + path.string(), errno);
  }
  return fsync_directory(parent.empty() ? "." : parent);
}

bool file_exists(const std::filesystem::path& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace outpost
