#include "core/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>

#include "core/error.h"

namespace starling {

namespace {

// Reads `fd` to its end in blocks; closes it when `owned`, also on errors.
void ReadFdInBlocks(int fd, bool owned, const std::string& name, size_t block_bytes,
                    const std::function<void(std::string_view)>& consume) {
  auto close_fd = [&] {
    if (owned) ::close(fd);
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    close_fd();
    Fail(name, ": not a readable regular file");
  }
  std::string buffer(std::max<size_t>(block_bytes, 1), '\0');
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      close_fd();
      Fail(name, ": read error: ", std::strerror(err));
    }
    if (n == 0) break;
    try {
      consume(std::string_view(buffer.data(), static_cast<size_t>(n)));
    } catch (...) {
      close_fd();
      throw;
    }
  }
  close_fd();
}

}  // namespace

void ReadFileInBlocks(const std::string& path, size_t block_bytes,
                      const std::function<void(std::string_view)>& consume) {
  if (path == "-") {
    ReadFdInBlocks(STDIN_FILENO, false, "standard input", block_bytes, consume);
    return;
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(path, ": cannot open: ", std::strerror(errno));
  ReadFdInBlocks(fd, true, path, block_bytes, consume);
}

std::string ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(path, ": cannot open: ", std::strerror(errno));
  std::string out;
  ReadFdInBlocks(fd, true, path, 1 << 16, [&](std::string_view block) { out.append(block); });
  return out;
}

namespace {
// Opens a file that must be regular (a model, a tokenizer), refusing anything else before a
// read: O_NONBLOCK keeps open() from waiting forever for a FIFO's writer.
int OpenRegularFile(const std::string& path, struct stat* st) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) Fail(path, ": cannot open: ", std::strerror(errno));
  if (::fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    ::close(fd);
    Fail(path, ": not a regular file");
  }
  return fd;
}
}  // namespace

std::string ReadFilePrefix(const std::string& path, size_t max_bytes) {
  struct stat st {};
  const int fd = OpenRegularFile(path, &st);
  std::string out(max_bytes, '\0');
  size_t got = 0;
  while (got < max_bytes) {
    const ssize_t n = ::read(fd, out.data() + got, max_bytes - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

void WriteFileAtomically(const std::string& path,
                         const std::function<void(const ByteSink&)>& produce) {
  const std::string temp = path + ".tmp";
  std::FILE* f = std::fopen(temp.c_str(), "wb");
  if (f == nullptr) Fail(path, ": cannot create ", temp, ": ", std::strerror(errno));
  bool ok = true;
  int write_errno = 0;
  produce([&](std::string_view piece) {
    if (ok && !piece.empty() && std::fwrite(piece.data(), 1, piece.size(), f) != piece.size()) {
      ok = false;
      write_errno = errno;
    }
  });
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    write_errno = errno;
  }
  if (!ok) {
    std::remove(temp.c_str());
    Fail(path, ": write failed: ", std::strerror(write_errno));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(temp.c_str());
    Fail(path, ": cannot rename ", temp, " into place: ", std::strerror(err));
  }
}

std::string ReadStdin() {
  std::cin >> std::noskipws;
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  struct stat st {};
  const int fd = OpenRegularFile(path, &st);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      Fail(path, ": mmap failed: ", std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  Release();
}

void MappedFile::DropPages(const void* data, size_t size) const {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + size;
  const auto map_begin = reinterpret_cast<uintptr_t>(data_);
  if (begin < map_begin || end > map_begin + size_) return;  // not ours
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = end / page * page;
  // MADV_DONTNEED on a private, never-written file mapping only unmaps: the data stays in the
  // file. (Failure leaves the pages resident, which is harmless.)
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(other.data_), size_(other.size_), path_(std::move(other.path_)) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = other.data_;
    size_ = other.size_;
    path_ = std::move(other.path_);
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::Release() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

void SyncPath(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(path, ": cannot open to sync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) Fail(path, ": fsync failed: ", std::strerror(err));
}

}  // namespace starling
