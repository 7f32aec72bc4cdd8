// libFuzzer target for the torch.save checkpoint reader (zip + restricted pickle). A
// starling::Error from Parse is the expected answer to bad input; any other exception, a crash,
// a leak or a sanitizer report is a bug. Once a file has parsed, every tensor's bytes must lie
// inside the input, be aligned to the element size, hold exactly product(shape) elements, and be
// readable (each byte is touched so that AddressSanitizer checks the whole range).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "core/dtype.h"
#include "core/error.h"
#include "formats/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::optional<starling::TorchCheckpoint> checkpoint;
  // Without the CRC-32 check, so that mutations reach the pickle and the tensor checks (with
  // it, nearly every one would stop there); then once with it, which must agree or refuse.
  try {
    checkpoint.emplace(starling::TorchCheckpoint::Parse(bytes, "fuzz.bin", false));
  } catch (const starling::Error&) {
    return 0;  // rejected input: the expected outcome for most mutations
  }
  try {
    const starling::TorchCheckpoint checked = starling::TorchCheckpoint::Parse(bytes, "fuzz.bin");
    if (checked.tensors().size() != checkpoint->tensors().size()) __builtin_trap();
  } catch (const starling::Error&) {
  }
  unsigned checksum = 0;
  for (const starling::TorchTensor& tensor : checkpoint->tensors()) {
    const auto* begin = static_cast<const char*>(tensor.data);
    const size_t elem = starling::DTypeSize(tensor.dtype);
    if (begin < bytes.data() || tensor.size_bytes > size ||
        begin + tensor.size_bytes > bytes.data() + size) {
      __builtin_trap();
    }
    if (reinterpret_cast<uintptr_t>(begin) % elem != 0) __builtin_trap();
    uint64_t numel = 1;
    for (const int64_t d : tensor.shape) {
      if (d < 0) __builtin_trap();
      numel *= static_cast<uint64_t>(d);  // cannot overflow: the reader checked the product
    }
    if (numel * elem != tensor.size_bytes) __builtin_trap();
    if (checkpoint->Find(tensor.name) == nullptr ||
        checkpoint->Find(tensor.name)->data != tensor.data) {
      __builtin_trap();
    }
    for (uint64_t k = 0; k < tensor.size_bytes; ++k)
      checksum += static_cast<unsigned char>(begin[k]);
  }
  // Keep the reads from being optimized away.
  volatile unsigned sink = checksum;
  (void)sink;
  return 0;
}
