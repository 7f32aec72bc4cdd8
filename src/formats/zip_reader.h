// A reader for the zip archives torch.save writes (pytorch_model.bin): the central directory,
// then each entry's local header. Only what torch.save writes is accepted: one disk, STORED
// entries, no encryption; ZIP64 sizes and offsets are fine. Every offset and size is checked
// against the file and against the other entries (no two share bytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace starling {

struct ZipEntry {
  std::string_view name;      // points into the file's bytes
  uint64_t local_offset = 0;  // of the local header
  uint64_t data_offset = 0;   // of the entry's bytes
  uint64_t size = 0;
};

// The entries of the archive `bytes`, in central directory order; `source` starts every error
// message.
std::vector<ZipEntry> ReadStoredZip(std::string_view bytes, const std::string& source);

}  // namespace starling
