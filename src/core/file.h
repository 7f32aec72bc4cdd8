// Whole-file reads and read-only memory maps. Both report the path on failure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace starling {

// Reads a whole file into memory (for small files: tokenizer.model, JSON).
std::string ReadFile(const std::string& path);

// Reads a file ("-": standard input) block by block, handing each block of up to
// `block_bytes` to `consume` in order: memory stays bounded whatever the file's size.
void ReadFileInBlocks(const std::string& path, size_t block_bytes,
                      const std::function<void(std::string_view)>& consume);

// Reads at most `max_bytes` from the start of a file (to sniff a format's magic).
std::string ReadFilePrefix(const std::string& path, size_t max_bytes);

// Writes a file so that a failure never leaves a truncated one behind: `produce` streams
// the bytes (through the sink it is given) into PATH.tmp, which is then renamed over PATH.
using ByteSink = std::function<void(std::string_view)>;
void WriteFileAtomically(const std::string& path,
                         const std::function<void(const ByteSink&)>& produce);

// Reads a whole stream (stdin) byte for byte.
std::string ReadStdin();

// fsync(2) of a file or directory, so that what was written (or renamed into a directory)
// survives a crash of the machine; throws starling::Error naming the path.
void SyncPath(const std::string& path);

bool FileExists(const std::string& path);
bool IsDirectory(const std::string& path);

// A read-only private mapping of a whole file. Move-only; unmaps on destruction.
// An empty file maps to an empty view.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::string_view bytes() const { return {reinterpret_cast<const char*>(data_), size_}; }
  const std::string& path() const { return path_; }

  // Lets the pages of [data, data + size) (within this mapping) leave the process's resident
  // memory, e.g. after their contents were copied into another layout; the file's page cache
  // keeps them, and reading them again maps them back. Pages partly outside the range stay.
  void DropPages(const void* data, size_t size) const;

 private:
  void Release();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace starling
