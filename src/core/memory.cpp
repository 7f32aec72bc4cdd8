#include "core/memory.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

#include "core/error.h"

namespace starling {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

// "Key:   123 kB" from a /proc file, in bytes; 0 when absent.
uint64_t ProcKilobytes(const char* path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream in(line.substr(key.size() + 1));
    uint64_t kb = 0;
    in >> kb;
    return kb * 1024;
  }
  return 0;
}

// A file holding one number ("max" or an absurd value: no limit); false when absent.
bool ReadNumber(const std::string& path, uint64_t* value) {
  std::ifstream f(path);
  std::string text;
  if (!(f >> text) || text == "max") return false;
  try {
    *value = std::stoull(text);
  } catch (const std::exception&) {
    return false;
  }
  return *value < (uint64_t{1} << 60);  // cgroup v1 writes ~2^63 for "no limit"
}

}  // namespace

MemoryBudget AvailableMemory() {
  MemoryBudget best;
  auto consider = [&](uint64_t bytes, const char* source) {
    if (best.bytes == 0 || bytes < best.bytes) best = {bytes, source};
  };
  if (const uint64_t available = ProcKilobytes("/proc/meminfo", "MemAvailable")) {
    consider(available, "MemAvailable in /proc/meminfo");
  }
  uint64_t limit = 0, used = 0;
  if (ReadNumber("/sys/fs/cgroup/memory.max", &limit)) {  // cgroup v2, as a container sees it
    ReadNumber("/sys/fs/cgroup/memory.current", &used);
    consider(limit > used ? limit - used : 1, "the room under the cgroup's memory.max");
  } else if (ReadNumber("/sys/fs/cgroup/memory/memory.limit_in_bytes", &limit)) {  // v1
    ReadNumber("/sys/fs/cgroup/memory/memory.usage_in_bytes", &used);
    consider(limit > used ? limit - used : 1, "the room under the cgroup's memory limit");
  }
  rlimit as{};
  if (::getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    const uint64_t mapped = ProcKilobytes("/proc/self/status", "VmSize");
    const auto cap = static_cast<uint64_t>(as.rlim_cur);
    consider(cap > mapped ? cap - mapped : 1, "the room under ulimit -v (RLIMIT_AS)");
  }
  return best;
}

HugePageBuffer::HugePageBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  mapped_ = (size + page - 1) / page * page;
  // Over-map by one huge page and trim, so that the buffer starts on a 2 MiB boundary.
  void* p = ::mmap(nullptr, mapped_ + kHugePage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) Fail("cannot allocate ", size, " bytes: ", std::strerror(errno));
  const auto base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > base) ::munmap(p, aligned - base);
  const uintptr_t end = base + mapped_ + kHugePage;
  if (end > aligned + mapped_) {
    ::munmap(reinterpret_cast<void*>(aligned + mapped_), end - aligned - mapped_);
  }
  data_ = reinterpret_cast<uint8_t*>(aligned);
  // Huge pages for the whole 2 MiB pages only: a huge page over the tail would make resident up
  // to 2 MiB that the buffer does not use. (A hint: without THP, normal pages.)
  const size_t whole = size / kHugePage * kHugePage;
  if (whole > 0) ::madvise(data_, whole, MADV_HUGEPAGE);
}

HugePageBuffer::~HugePageBuffer() {
  if (data_ != nullptr) ::munmap(data_, mapped_);
}

HugePageBuffer::HugePageBuffer(HugePageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

HugePageBuffer& HugePageBuffer::operator=(HugePageBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, mapped_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

}  // namespace starling
