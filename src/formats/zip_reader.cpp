#include "formats/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <map>
#include <optional>

#include "core/error.h"
#include "formats/parse_util.h"

namespace starling {

// Zip fields are read with memcpy, which is only right on a little-endian host.
static_assert(std::endian::native == std::endian::little,
              "zip reading assumes a little-endian host");

namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kMaxCommentSize = 0xFFFF;
constexpr uint32_t kSaturated32 = 0xFFFFFFFF;  // "see the zip64 field"
constexpr uint16_t kSaturated16 = 0xFFFF;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kFlagDataDescriptor = 0x0008;
constexpr uint16_t kFlagStrongEncryption = 0x0040;
constexpr uint16_t kZip64ExtraId = 0x0001;

const char* CompressionName(uint16_t method) {
  switch (method) {
    case 8: return "deflate";
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "lzma";
    case 93: return "zstd";
    case 95: return "xz";
    case 99: return "AES encryption";
    default: return "unknown";
  }
}

// Reads the zip64 extended information extra field: the 64-bit values of exactly those fields
// whose 32-bit (or 16-bit) central directory value is saturated, in the order the spec fixes.
void ReadZip64Extra(std::string_view extra, const std::string& where, uint64_t* uncompressed,
                    uint64_t* compressed, uint64_t* local_offset, uint32_t* disk) {
  size_t q = 0;
  while (extra.size() - q >= 4) {
    const uint16_t id = Le16(extra.data() + q);
    const uint16_t len = Le16(extra.data() + q + 2);
    if (len > extra.size() - q - 4) {
      Fail(where, ": extra field ", Hex(id), " of ", len, " bytes runs past the ", extra.size(),
           "-byte extra data");
    }
    if (id == kZip64ExtraId) {
      const std::string_view z = extra.substr(q + 4, len);
      size_t r = 0;
      auto take = [&](uint64_t* value, size_t bytes, const char* what) {
        if (z.size() - r < bytes) {
          Fail(where, ": the zip64 extra field (", z.size(), " bytes) lacks the ", what);
        }
        uint64_t v = 0;
        std::memcpy(&v, z.data() + r, bytes);
        *value = v;
        r += bytes;
      };
      if (*uncompressed == kSaturated32) take(uncompressed, 8, "uncompressed size");
      if (*compressed == kSaturated32) take(compressed, 8, "compressed size");
      if (*local_offset == kSaturated32) take(local_offset, 8, "local header offset");
      if (*disk == kSaturated16) {
        uint64_t d = 0;
        take(&d, 4, "disk number");
        *disk = static_cast<uint32_t>(d);
      }
      return;
    }
    q += 4 + size_t{len};
  }
  Fail(where, ": a size, offset or disk number is saturated (0xFFFFFFFF) but there is no zip64 ",
       "extra field");
}

}  // namespace

uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

std::vector<ZipEntry> ReadStoredZip(std::string_view bytes, const std::string& src,
                                    bool check_crc) {
  const char* base = bytes.data();
  const uint64_t file_size = bytes.size();
  if (file_size > 0 && static_cast<uint8_t>(base[0]) == 0x80) {
    Fail(src, ": a bare pickle, not a zip archive: the legacy torch.save format (PyTorch < 1.6) ",
         "is not supported; re-save it with a current PyTorch, or convert it to safetensors");
  }
  if (file_size < kEndSize) {
    Fail(src, ": file is ", file_size, " bytes long, too short for a zip archive (torch.save ",
         "writes one)");
  }

  // The end record sits in the last 22 bytes + a comment of up to 64 KiB; its comment length
  // must reach exactly to the end of the file.
  const uint64_t lowest =
      file_size - kEndSize > kMaxCommentSize ? file_size - kEndSize - kMaxCommentSize : 0;
  std::optional<uint64_t> end_offset;
  for (uint64_t pos = file_size - kEndSize;; --pos) {
    if (Le32(base + pos) == kEndSig && pos + kEndSize + Le16(base + pos + 20) == file_size) {
      end_offset = pos;
      break;
    }
    if (pos == lowest) break;
  }
  if (!end_offset) {
    Fail(src, ": no zip end-of-central-directory record in the last ", file_size - lowest,
         " bytes: not a zip archive, or a truncated one");
  }
  const uint64_t eocd = *end_offset;
  const char* e = base + eocd;
  const uint16_t disk = Le16(e + 4);
  const uint16_t cd_disk = Le16(e + 6);
  uint64_t entries_here = Le16(e + 8);
  uint64_t entries = Le16(e + 10);
  uint64_t cd_size = Le32(e + 12);
  uint64_t cd_offset = Le32(e + 16);
  uint64_t cd_limit = eocd;  // the central directory must end by here
  bool zip64 = false;

  if (eocd >= kZip64LocatorSize && Le32(e - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint64_t locator = eocd - kZip64LocatorSize;
    const char* l = base + locator;
    const uint32_t record_disk = Le32(l + 4);
    const uint64_t record = Le64(l + 8);
    const uint32_t disks = Le32(l + 16);
    const std::string where = Concat(src, ": zip64 end record locator at offset ", locator);
    if (record_disk != 0 || disks > 1) {
      Fail(where, ": multi-disk archives are not supported (", disks, " disks)");
    }
    if (record > locator || locator - record < kZip64EndSize) {
      Fail(where, ": it points to offset ", record, ", which leaves no room for the ",
           kZip64EndSize, "-byte zip64 end record before the locator");
    }
    const char* z = base + record;
    const std::string rwhere = Concat(src, ": zip64 end record at offset ", record);
    if (Le32(z) != kZip64EndSig) Fail(rwhere, ": bad signature ", Hex(Le32(z)));
    const uint64_t record_size = Le64(z + 4);  // what follows this field
    if (record_size < kZip64EndSize - 12 || record_size > locator - record - 12) {
      Fail(rwhere, ": its size ", record_size, " does not fit between ", kZip64EndSize - 12,
           " and the locator at offset ", locator);
    }
    if (Le32(z + 16) != 0 || Le32(z + 20) != 0) {
      Fail(rwhere, ": multi-disk archives are not supported");
    }
    const uint64_t z_here = Le64(z + 24), z_entries = Le64(z + 32);
    const uint64_t z_cd_size = Le64(z + 40), z_cd_offset = Le64(z + 48);
    // The short fields must agree with the zip64 ones unless saturated: two readers must not
    // see two different archives.
    auto agree = [&](uint64_t narrow, uint64_t saturated, uint64_t wide, const char* what) {
      if (narrow != saturated && narrow != wide) {
        Fail(src, ": the zip end record says ", what, " = ", narrow, ", the zip64 end record says ",
             wide);
      }
    };
    agree(entries_here, kSaturated16, z_here, "entries on this disk");
    agree(entries, kSaturated16, z_entries, "entry count");
    agree(cd_size, kSaturated32, z_cd_size, "central directory size");
    agree(cd_offset, kSaturated32, z_cd_offset, "central directory offset");
    entries_here = z_here;
    entries = z_entries;
    cd_size = z_cd_size;
    cd_offset = z_cd_offset;
    cd_limit = record;
    zip64 = true;
  }
  const bool disk_ok = disk == 0 || (zip64 && disk == kSaturated16);
  const bool cd_disk_ok = cd_disk == 0 || (zip64 && cd_disk == kSaturated16);
  if (!disk_ok || !cd_disk_ok || entries_here != entries) {
    Fail(src, ": zip end record at offset ", eocd, ": multi-disk archives are not supported (disk ",
         disk, ", central directory on disk ", cd_disk, ", ", entries_here, " of ", entries,
         " entries here)");
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
    Fail(src, ": the zip central directory (", cd_size, " bytes at offset ", cd_offset,
         ") does not end before the end record at offset ", cd_limit);
  }
  if (entries > cd_size / kCentralHeaderSize) {
    Fail(src, ": ", entries, " zip entries cannot fit in a central directory of ", cd_size,
         " bytes");
  }

  std::vector<ZipEntry> out;
  out.reserve(entries);
  std::map<std::string_view, size_t> names;
  const uint64_t cd_end = cd_offset + cd_size;
  uint64_t p = cd_offset;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::string where = Concat(src, ": zip central directory entry ", i, " (offset ", p, ")");
    if (cd_end - p < kCentralHeaderSize)
      Fail(where, ": runs past the end of the central directory");
    const char* c = base + p;
    if (Le32(c) != kCentralHeaderSig) Fail(where, ": bad signature ", Hex(Le32(c)));
    const uint16_t flags = Le16(c + 8);
    const uint16_t method = Le16(c + 10);
    const uint32_t crc = Le32(c + 16);
    uint64_t compressed = Le32(c + 20);
    uint64_t uncompressed = Le32(c + 24);
    const uint64_t name_len = Le16(c + 28), extra_len = Le16(c + 30), comment_len = Le16(c + 32);
    uint32_t disk_start = Le16(c + 34);
    uint64_t local_offset = Le32(c + 42);
    if (cd_end - p - kCentralHeaderSize < name_len + extra_len + comment_len) {
      Fail(where, ": its name, extra field and comment (", name_len + extra_len + comment_len,
           " bytes) run past the end of the central directory");
    }
    const std::string_view name(c + kCentralHeaderSize, name_len);
    const std::string_view extra(c + kCentralHeaderSize + name_len, extra_len);
    const std::string named = Concat(where, " ", Quoted(name));
    if (compressed == kSaturated32 || uncompressed == kSaturated32 ||
        local_offset == kSaturated32 || disk_start == kSaturated16) {
      ReadZip64Extra(extra, named, &uncompressed, &compressed, &local_offset, &disk_start);
    }
    if (name.empty()) Fail(where, ": empty name");
    if (name.find('\0') != std::string_view::npos) Fail(named, ": the name holds a NUL byte");
    if ((flags & (kFlagEncrypted | kFlagStrongEncryption)) != 0) {
      Fail(named, ": encrypted entries are not supported");
    }
    if (method != 0) {
      Fail(named, ": compression method ", method, " (", CompressionName(method),
           ") is not supported: torch.save stores entries uncompressed (method 0)");
    }
    if (compressed != uncompressed) {
      Fail(named, ": a stored entry, but its compressed size ", compressed,
           " differs from its size ", uncompressed);
    }
    if (disk_start != 0) Fail(named, ": starts on disk ", disk_start, " (multi-disk archive)");
    const auto [it, inserted] = names.emplace(name, out.size());
    if (!inserted) Fail(named, ": duplicate name (also entry ", it->second, ")");
    out.push_back(ZipEntry{name, local_offset, 0, uncompressed, crc});
    p += kCentralHeaderSize + name_len + extra_len + comment_len;
  }
  if (p != cd_end) {
    Fail(src, ": the zip central directory is ", cd_size, " bytes, but its ", entries,
         " entries take ", p - cd_offset);
  }

  // Local headers: their own name and extra lengths place the data (torch pads the extra field
  // so that data starts 64-byte aligned). With flag bit 3 the local sizes are zero and the
  // central directory's are the real ones.
  for (ZipEntry& entry : out) {
    const std::string where = Concat(src, ": zip entry ", Quoted(entry.name),
                                     " (local header at offset ", entry.local_offset, ")");
    if (entry.local_offset > cd_offset || cd_offset - entry.local_offset < kLocalHeaderSize) {
      Fail(where, ": the local header does not lie before the central directory (offset ",
           cd_offset, ")");
    }
    const char* l = base + entry.local_offset;
    if (Le32(l) != kLocalHeaderSig) Fail(where, ": bad local header signature ", Hex(Le32(l)));
    const uint16_t flags = Le16(l + 6);
    const uint16_t method = Le16(l + 8);
    const uint32_t compressed = Le32(l + 18), uncompressed = Le32(l + 22);
    const uint64_t name_len = Le16(l + 26), extra_len = Le16(l + 28);
    if (method != 0) {
      Fail(where, ": the local header says compression method ", method, " (",
           CompressionName(method), "); torch.save stores entries uncompressed (method 0)");
    }
    if ((flags & (kFlagEncrypted | kFlagStrongEncryption)) != 0) {
      Fail(where, ": encrypted entries are not supported");
    }
    if (cd_offset - entry.local_offset - kLocalHeaderSize < name_len + extra_len) {
      Fail(where, ": the local header's name and extra field run into the central directory");
    }
    const std::string_view local_name(l + kLocalHeaderSize, name_len);
    if (local_name != entry.name) {
      Fail(where, ": the local header names it ", Quoted(local_name));
    }
    if ((flags & kFlagDataDescriptor) == 0) {
      for (const uint32_t local_size : {compressed, uncompressed}) {
        if (local_size != kSaturated32 && local_size != entry.size) {
          Fail(where, ": the local header says ", local_size, " bytes, the central directory says ",
               entry.size);
        }
      }
    }
    entry.data_offset = entry.local_offset + kLocalHeaderSize + name_len + extra_len;
    if (entry.size > cd_offset - entry.data_offset) {
      Fail(where, ": its ", entry.size, " bytes at offset ", entry.data_offset,
           " run into the central directory at offset ", cd_offset);
    }
  }

  // No two entries may share bytes: each entry's header and data end before the next header.
  std::vector<const ZipEntry*> order;
  order.reserve(out.size());
  for (const ZipEntry& entry : out) order.push_back(&entry);
  std::sort(order.begin(), order.end(),
            [](const ZipEntry* a, const ZipEntry* b) { return a->local_offset < b->local_offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const ZipEntry& prev = *order[k - 1];
    const ZipEntry& next = *order[k];
    if (next.local_offset < prev.data_offset + prev.size) {
      Fail(src, ": zip entries ", Quoted(prev.name), " (bytes ", prev.local_offset, "..",
           prev.data_offset + prev.size, ") and ", Quoted(next.name), " (local header at offset ",
           next.local_offset, ") overlap");
    }
  }

  if (check_crc) {
    for (const ZipEntry& entry : out) {
      const uint32_t actual = Crc32(bytes.substr(entry.data_offset, entry.size));
      if (actual != entry.crc32) {
        Fail(src, ": zip entry ", Quoted(entry.name), " (", entry.size, " bytes at offset ",
             entry.data_offset, "): its CRC-32 is ", Hex(actual),
             " but the central directory says ", Hex(entry.crc32),
             ": the file is corrupt (re-download or re-save it)");
      }
    }
  }
  return out;
}

}  // namespace starling
