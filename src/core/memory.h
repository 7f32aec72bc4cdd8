// Large read-mostly buffers (weights copied out of their files) on transparent huge pages.
#pragma once

#include <cstddef>
#include <cstdint>

namespace starling {

// A zero-filled buffer of `size` bytes, 2 MiB aligned, that asks the kernel for transparent
// huge pages over its whole 2 MiB pages (madvise; where THP is "madvise" or "always"). Streaming
// gigabytes of weights through 4 KiB pages costs a TLB miss every 4 KiB; on 2 MiB pages, one per 2
// MiB. Move-only.
class HugePageBuffer {
 public:
  HugePageBuffer() = default;
  explicit HugePageBuffer(size_t size);
  ~HugePageBuffer();
  HugePageBuffer(HugePageBuffer&& other) noexcept;
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept;
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;  // bytes mapped (size rounded up to whole pages)
};

// The memory this process can still take, and what limits it: the smallest of the kernel's
// MemAvailable (/proc/meminfo), the room left under a cgroup's memory limit (v2 memory.max or
// v1 memory.limit_in_bytes) and the room left under `ulimit -v` (RLIMIT_AS). bytes is 0 when
// none of them can be read.
struct MemoryBudget {
  uint64_t bytes = 0;
  const char* source = "";  // e.g. "MemAvailable", "the cgroup's memory.max", "ulimit -v"
};
MemoryBudget AvailableMemory();

}  // namespace starling
