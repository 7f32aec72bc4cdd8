#include "core/memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace starling {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

}  // namespace

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
