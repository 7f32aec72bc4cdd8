// A reader for the zip archives torch.save writes (pytorch_model.bin): the central directory,
// then each entry's local header. Only what torch.save writes is accepted: one disk, STORED
// entries, no encryption; ZIP64 sizes and offsets are fine. Every offset and size is checked
// against the file and against the other entries (no two share bytes), and each entry's
// CRC-32 against its bytes, so a corrupted checkpoint is refused rather than loaded with
// changed weights.
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
  uint32_t crc32 = 0;  // as the central directory states it
};

// The entries of the archive `bytes`, in central directory order; `source` starts every error
// message. With `check_crc`, each entry's bytes are checked against its CRC-32 (zlib's crc32:
// about 2 GB/s on one core, so ~7 s for Starling-RM-7B's 13.5 GB, which also pages the file in
// for the first forward pass); the fuzz target turns it off to reach the pickle.
std::vector<ZipEntry> ReadStoredZip(std::string_view bytes, const std::string& source,
                                    bool check_crc = true);

// CRC-32 (ISO-HDLC, as zip and gzip use it) of `bytes`.
uint32_t Crc32(std::string_view bytes);

}  // namespace starling
